//! `setpoint reload`: asks the daemon to read its configuration file again (`POST
//! /v1/reload`) and prints what changed, or every problem that kept the file from being
//! applied.

use serde::{Deserialize, Serialize};

use super::input_error;
use super::output::{client_error, connect, print_text};
use crate::cli::ReloadArgs;
use crate::client::{Client, ClientError, check_status};
use crate::node::ReloadReport;

/// The body of `POST /v1/reload`: the daemon reads nothing from it.
#[derive(Debug, Serialize)]
struct Empty {}

/// The daemon's answer to a configuration it refused (400).
#[derive(Debug, Deserialize)]
struct Refused {
    /// One line saying why.
    error: String,
    /// Every problem, each naming its key.
    #[serde(default)]
    errors: Vec<String>,
}

/// Runs `setpoint reload`.
pub fn run(args: ReloadArgs) -> anyhow::Result<()> {
    let client = connect(&args.client)?;
    let path = "/v1/reload";
    let body = serde_json::to_vec(&Empty {})?;
    let raw = client
        .send(
            "POST",
            path,
            Some(&body),
            &[("content-type", "application/json")],
        )
        .map_err(client_error)?;
    if raw.status == 400 {
        return Err(refused(&client, path, &raw.body, args.client.json));
    }
    let raw = check_status(raw).map_err(client_error)?;
    if args.client.json {
        return print_text(&format!("{}\n", String::from_utf8_lossy(&raw.body).trim()));
    }
    let report: ReloadReport = serde_json::from_slice(&raw.body).map_err(|e| {
        client_error(ClientError::BadResponse {
            method: "POST",
            url: client.url(path),
            message: e.to_string(),
        })
    })?;
    print_text(&report_text(&report))
}

/// A refused reload as an input error listing every problem (exit 2); with `--json` the
/// daemon's answer is printed first, as it came.
fn refused(client: &Client, path: &str, body: &[u8], json: bool) -> anyhow::Error {
    if json {
        let _ = print_text(&format!("{}\n", String::from_utf8_lossy(body).trim()));
    }
    match serde_json::from_slice::<Refused>(body) {
        Ok(r) if r.errors.is_empty() => input_error(r.error),
        Ok(r) => input_error(format!("{}:\n  {}", r.error, r.errors.join("\n  "))),
        Err(e) => client_error(ClientError::BadResponse {
            method: "POST",
            url: client.url(path),
            message: format!("a 400 answer that is not the daemon's: {e}"),
        }),
    }
}

/// What a reload did, one section per kind of change, only those with something in them.
pub(crate) fn report_text(r: &ReloadReport) -> String {
    let mut out = format!("reloaded {}\n", r.source);
    let lists: [(&str, &[String]); 8] = [
        ("settings applied", &r.settings),
        ("needs a restart (running values kept)", &r.needs_restart),
        ("services added", &r.services_added),
        ("services removed", &r.services_removed),
        ("services retried", &r.services_retried),
        ("jobs submitted", &r.jobs_submitted),
        ("not applied", &r.not_applied),
        ("failed", &r.failed),
    ];
    let mut changed = false;
    for (title, items) in lists {
        if items.is_empty() {
            continue;
        }
        changed = true;
        out.push_str(&format!("{title}:\n"));
        for i in items {
            out.push_str(&format!("  {i}\n"));
        }
    }
    if !r.services_changed.is_empty() {
        changed = true;
        out.push_str("services changed:\n");
        for c in &r.services_changed {
            out.push_str(&format!("  {} ({})\n", c.name, c.how));
            for line in &c.changes {
                out.push_str(&format!("    {line}\n"));
            }
        }
    }
    if let Some(n) = &r.note {
        out.push_str(&format!("note: {n}\n"));
    }
    if !changed {
        out.push_str("nothing changed\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::reload::ServiceChange;

    #[test]
    fn a_report_lists_only_what_changed() {
        let empty = ReloadReport {
            source: "node.toml".into(),
            ..ReloadReport::default()
        };
        assert_eq!(report_text(&empty), "reloaded node.toml\nnothing changed\n");
        let r = ReloadReport {
            source: "node.toml".into(),
            settings: vec!["control_period_ms: 100 -> 200".into()],
            services_changed: vec![ServiceChange {
                name: "mlp".into(),
                how: "applied".into(),
                changes: vec!["slo.p99_ms: 25.0 -> 30.0".into()],
            }],
            ..ReloadReport::default()
        };
        assert_eq!(
            report_text(&r),
            "reloaded node.toml\nsettings applied:\n  control_period_ms: 100 -> 200\n\
             services changed:\n  mlp (applied)\n    slo.p99_ms: 25.0 -> 30.0\n"
        );
    }
}
