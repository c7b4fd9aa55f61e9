//! Plain-text tables and summaries of the daemon's JSON, for people; scripts use `--json`.

use serde_json::Value;

pub use crate::util::table::Table;

/// A JSON value as a cell: strings bare, `null` as `-`.
pub fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// An RFC 3339 time to the second (`2026-11-28T17:54:04Z`), `-` when absent.
pub fn time(v: &Value) -> String {
    let Some(t) = v.as_str() else {
        return cell(v);
    };
    match t.find('.') {
        Some(dot) => {
            let frac_end = t[dot + 1..]
                .find(|c: char| !c.is_ascii_digit())
                .map_or(t.len(), |i| dot + 1 + i);
            format!("{}{}", &t[..dot], &t[frac_end..])
        }
        None => t.to_string(),
    }
}

/// A number with `decimals` places, `-` when absent.
pub(crate) fn num(v: &Value, decimals: usize) -> String {
    v.as_f64()
        .map(|x| format!("{x:.decimals$}"))
        .unwrap_or_else(|| "-".into())
}

/// A share in [0, 1] as a percentage.
pub(crate) fn pct(v: &Value) -> String {
    v.as_f64()
        .map(|x| format!("{:.0}%", 100.0 * x))
        .unwrap_or_else(|| "-".into())
}

/// Seconds as a short signed duration (`+9m 58s`, `-12s`).
pub fn secs(v: &Value) -> String {
    let Some(s) = v.as_f64() else {
        return "-".into();
    };
    let sign = if s < 0.0 { "-" } else { "+" };
    let t = s.abs().round() as u64;
    let (h, m, sec) = (t / 3600, (t / 60) % 60, t % 60);
    if h > 0 {
        format!("{sign}{h}h {m}m")
    } else if m > 0 {
        format!("{sign}{m}m {sec}s")
    } else {
        format!("{sign}{sec}s")
    }
}

/// The jobs of `GET /v1/jobs` as a table.
pub(crate) fn jobs_table(jobs: &[Value]) -> String {
    let mut t = Table::new(&[
        "NAME",
        "STATE",
        "CLASS",
        "EPOCHS",
        "VAL ACC",
        "TARGET",
        "DEADLINE",
        "SLACK",
        "SAMPLES/S",
        "SHARE",
    ])
    .right_align(&[3, 4, 5, 7, 8, 9]);
    for j in jobs {
        t.row(vec![
            cell(&j["name"]),
            cell(&j["state"]),
            cell(&j["class"]),
            format!("{}/{}", cell(&j["epochs_done"]), cell(&j["epochs_max"])),
            num(&j["val_accuracy"], 4),
            num(&j["target_accuracy"], 4),
            time(&j["deadline"]),
            secs(&j["slack_s"]),
            num(&j["samples_per_s"], 0),
            pct(&j["share"]),
        ]);
    }
    if t.is_empty() {
        return "no jobs\n".into();
    }
    t.render()
}

/// One job (`GET /v1/jobs/ID`) as `key: value` lines.
pub(crate) fn job_details(j: &Value) -> String {
    let spec = &j["spec"];
    let layers = spec["layers"]
        .as_array()
        .map(|l| l.iter().map(cell).collect::<Vec<_>>().join(","))
        .unwrap_or_else(|| "-".into());
    let curve = j["accuracy_curve"]
        .as_array()
        .map(|c| c.iter().map(|v| num(v, 4)).collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    let mut lines = vec![
        ("name", cell(&j["name"])),
        ("state", cell(&j["state"])),
        ("class", cell(&j["class"])),
        ("data", cell(&spec["data"])),
        ("layers", layers),
        (
            "optimizer",
            format!("{} (lr {})", cell(&spec["optimizer"]), cell(&spec["lr"])),
        ),
        ("batch size", cell(&j["batch_size"])),
        (
            "epochs",
            format!(
                "{} of {} ({} steps, {:.0}%)",
                cell(&j["epochs_done"]),
                cell(&j["epochs_max"]),
                cell(&j["steps"]),
                100.0 * j["progress"].as_f64().unwrap_or(0.0)
            ),
        ),
        ("target accuracy", num(&j["target_accuracy"], 4)),
        ("val accuracy", num(&j["val_accuracy"], 4)),
        ("train loss", num(&j["train_loss"], 4)),
        ("deadline", time(&j["deadline"])),
        ("estimated finish", time(&j["estimated_finish"])),
        ("slack", secs(&j["slack_s"])),
        (
            "throughput",
            format!(
                "{} samples/s on {} workers ({} of the device)",
                num(&j["samples_per_s"], 0),
                cell(&j["workers"]),
                pct(&j["share"])
            ),
        ),
        ("submitted", time(&j["submitted_at"])),
        ("started", time(&j["started_at"])),
        ("finished", time(&j["finished_at"])),
    ];
    if !j["stop_reason"].is_null() {
        lines.push(("stop reason", cell(&j["stop_reason"])));
    }
    if !j["error"].is_null() {
        lines.push(("error", cell(&j["error"])));
    }
    lines.push(("checkpoint", cell(&j["checkpoint"])));
    if !curve.is_empty() {
        lines.push(("accuracy by epoch", curve));
    }
    let width = lines.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (k, v) in lines {
        out.push_str(&format!("{k:<width$}  {v}\n"));
    }
    out
}

/// A service (`POST /v1/jobs/ID/serve`, `GET /v1/services/NAME`) as `key: value` lines.
pub(crate) fn service_details(s: &Value) -> String {
    let layers = s["layers"]
        .as_array()
        .map(|l| l.iter().map(cell).collect::<Vec<_>>().join(","))
        .unwrap_or_else(|| "-".into());
    let origin = match s["origin"]["kind"].as_str() {
        Some("job") => format!("job {}", cell(&s["origin"]["job"])),
        Some(k) => k.to_string(),
        None => "-".into(),
    };
    let lines = [
        ("name", cell(&s["name"])),
        ("state", cell(&s["state"])),
        ("layers", layers),
        ("slo", format!("p99 <= {} ms", cell(&s["slo_p99_ms"]))),
        (
            "batching",
            format!(
                "up to {} rows, waiting up to {} ms",
                cell(&s["max_batch_size"]),
                cell(&s["max_queue_delay_ms"])
            ),
        ),
        (
            "queue",
            format!("{} of {}", cell(&s["queue_len"]), cell(&s["max_queue"])),
        ),
        ("origin", origin),
        ("created", time(&s["created_at"])),
    ];
    let width = lines.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (k, v) in lines {
        out.push_str(&format!("{k:<width$}  {v}\n"));
    }
    if let Some(name) = s["name"].as_str() {
        out.push_str(&format!("infer at /v2/models/{name}/infer\n"));
    }
    out
}

/// `GET /v1/status` as text: a summary line, the devices, then one row per tenant.
pub(crate) fn status_text(s: &Value) -> String {
    let mut out = format!(
        "setpoint {}, up {}, {}\n\n",
        cell(&s["version"]),
        secs(&s["uptime_s"]).trim_start_matches('+'),
        if s["ready"].as_bool() == Some(true) {
            "ready"
        } else {
            "not ready"
        }
    );
    let mut d = Table::new(&["DEVICE", "STATE", "WORKERS", "SHARE ASSIGNED"]).right_align(&[2, 3]);
    let mut failures = String::new();
    for dev in s["devices"].as_array().into_iter().flatten() {
        d.row(vec![
            cell(&dev["name"]),
            cell(&dev["state"]),
            cell(&dev["workers"]),
            pct(&dev["share_assigned"]),
        ]);
        if dev["state"].as_str() == Some("failed") {
            failures.push_str(&format!(
                "{} failed at {}: {}; its tenants were stopped (restart the daemon to use it again)\n",
                cell(&dev["name"]),
                time(&dev["failed_at"]),
                cell(&dev["reason"]),
            ));
        }
    }
    out.push_str(&d.render());
    out.push_str(&failures);
    if let Some(note) = s["device_note"].as_str() {
        out.push_str(&format!("({note})\n"));
    }
    out.push('\n');
    let mut t = Table::new(&[
        "KIND",
        "NAME",
        "STATE",
        "SET POINT",
        "MEASURED",
        "SHARE",
        "BATCH",
        "QUEUE",
    ])
    .right_align(&[5, 6, 7]);
    for ten in s["tenants"].as_array().into_iter().flatten() {
        t.row(vec![
            cell(&ten["kind"]),
            cell(&ten["name"]),
            cell(&ten["state"]),
            cell(&ten["set_point"]),
            cell(&ten["measured"]),
            pct(&ten["share"]),
            cell(&ten["batch_size"]),
            cell(&ten["queue_len"]),
        ]);
    }
    if t.is_empty() {
        out.push_str("no tenants\n");
    } else {
        out.push_str(&t.render());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn times_drop_fractions_of_a_second() {
        assert_eq!(
            time(&json!("2026-11-28T17:54:04.185832645Z")),
            "2026-11-28T17:54:04Z"
        );
        assert_eq!(
            time(&json!("2026-11-28T17:54:04.5+01:00")),
            "2026-11-28T17:54:04+01:00"
        );
        assert_eq!(time(&Value::Null), "-");
    }

    #[test]
    fn durations_are_short_and_signed() {
        assert_eq!(secs(&json!(598.2)), "+9m 58s");
        assert_eq!(secs(&json!(-12.0)), "-12s");
        assert_eq!(secs(&json!(7300)), "+2h 1m");
        assert_eq!(secs(&Value::Null), "-");
    }

    #[test]
    fn status_lists_devices_and_tenants() {
        let s = json!({
            "version": "0.1.0", "uptime_s": 3.0, "ready": true,
            "devices": [{"name": "cpu", "workers": 2, "share_assigned": 0.5}],
            "tenants": [{"kind": "service", "name": "mlp", "state": "ready",
                         "set_point": "p99 <= 25 ms", "measured": null, "share": 0.5,
                         "batch_size": 32, "queue_len": 0}],
        });
        let text = status_text(&s);
        assert!(text.contains("cpu"), "{text}");
        assert!(text.contains("p99 <= 25 ms"), "{text}");
        assert!(text.contains("50%"), "{text}");
        assert!(!text.contains("failed"), "{text}");
    }

    #[test]
    fn status_names_a_failed_device_with_its_reason_and_time() {
        let s = json!({
            "version": "0.1.0", "uptime_s": 3.0, "ready": false,
            "devices": [
                {"name": "cuda:0", "state": "failed", "workers": 1056, "share_assigned": 0.0,
                 "reason": "CUDA_ERROR_ILLEGAL_ADDRESS", "failed_at": "2026-11-28T17:54:04.1Z"},
                {"name": "cuda:1", "state": "ok", "workers": 1056, "share_assigned": 0.25,
                 "reason": null, "failed_at": null},
            ],
            "tenants": [],
        });
        let text = status_text(&s);
        let rows: Vec<&str> = text.lines().filter(|l| l.starts_with("cuda:")).collect();
        assert!(
            rows[0].contains("failed") && rows[1].contains("ok"),
            "{text}"
        );
        assert!(
            text.contains(
                "cuda:0 failed at 2026-11-28T17:54:04Z: CUDA_ERROR_ILLEGAL_ADDRESS; its tenants \
                 were stopped"
            ),
            "{text}"
        );
        assert!(text.contains("not ready"), "{text}");
    }
}
