//! The shipped operations files: `configs/setpoint-alerts.yml` passes `promtool check rules`,
//! and every metric its expressions and `configs/grafana-dashboard.json`'s targets name is a
//! family a live daemon exports (with a scripted GPU, so the GPU families are there too).
//!
//! Without promtool the rules check prints that it was skipped; with
//! `SETPOINT_REQUIRE_PROMTOOL=1` (as CI sets) it fails instead.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::support::daemon;
use daemon::Daemon;

fn shipped(name: &str) -> (PathBuf, String) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("configs")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (path, text)
}

fn promtool_found() -> bool {
    let found = Command::new("promtool")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found && std::env::var("SETPOINT_REQUIRE_PROMTOOL").as_deref() == Ok("1") {
        panic!(
            "promtool is missing and SETPOINT_REQUIRE_PROMTOOL=1: install Prometheus's promtool"
        );
    }
    found
}

fn check_rules(path: &Path) -> (bool, String) {
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(path)
        .output()
        .expect("run promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn the_alerting_rules_pass_promtool() {
    if !promtool_found() {
        eprintln!(
            "skipped: promtool is not installed (set SETPOINT_REQUIRE_PROMTOOL=1 to fail instead)"
        );
        return;
    }
    let (path, text) = shipped("setpoint-alerts.yml");
    let (ok, out) = check_rules(&path);
    assert!(ok, "promtool check rules: {out}");
    assert!(out.contains("SUCCESS: 6 rules found"), "{out}");
    // The check can fail: a broken expression is reported.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yml");
    std::fs::write(
        &bad,
        text.replace("setpoint_device_up == 0", "setpoint_device_up =="),
    )
    .unwrap();
    let (ok, out) = check_rules(&bad);
    assert!(!ok, "a broken expression passed: {out}");
}

/// Names in a PromQL expression that look like setpoint metrics.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(at) = rest.find("setpoint_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

/// The expressions of the alerting rules (the `expr:` blocks, folded lines included).
fn rule_exprs(text: &str) -> Vec<String> {
    let mut exprs = Vec::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let Some(value) = line.trim().strip_prefix("expr:") else {
            continue;
        };
        let mut expr = value.trim().trim_start_matches('|').to_string();
        let indent = line.len() - line.trim_start().len();
        while let Some(next) = lines.peek() {
            let deeper = next.len() - next.trim_start().len() > indent;
            if next.trim().is_empty() || !deeper {
                break;
            }
            expr.push(' ');
            expr.push_str(next.trim());
            lines.next();
        }
        exprs.push(expr);
    }
    exprs
}

fn dashboard_exprs(dash: &Value) -> Vec<String> {
    let mut exprs = Vec::new();
    for panel in dash["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().into_iter().flatten() {
            exprs.push(t["expr"].as_str().unwrap().to_string());
        }
    }
    exprs
}

/// The families a metrics text declares, and the sample names each may have.
fn exported(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let Some(decl) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let mut parts = decl.split_whitespace();
        let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
            continue;
        };
        names.insert(name.to_string());
        if kind == "histogram" {
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{name}{suffix}"));
            }
        }
    }
    names
}

fn scripted_gpu() -> setpoint::telemetry::ScriptedSource {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/telemetry/script.toml");
    setpoint::telemetry::ScriptedSource::from_file(&path).unwrap()
}

#[test]
fn every_metric_the_alerts_and_the_dashboard_use_is_exported() {
    let (_, rules) = shipped("setpoint-alerts.yml");
    let (_, dash) = shipped("grafana-dashboard.json");
    let dash: Value = serde_json::from_str(&dash).expect("the dashboard is JSON");
    let rule_exprs = rule_exprs(&rules);
    assert_eq!(rule_exprs.len(), 6, "{rule_exprs:#?}");
    let dash_exprs = dashboard_exprs(&dash);
    assert!(dash_exprs.len() > 15, "{dash_exprs:#?}");

    let d = Daemon::start(
        "[[services]]\nname = \"mlp\"\nlayers = [8, 16, 3]\n[services.slo]\np99_ms = 50\n",
    );
    d.node.set_telemetry_source(Box::new(scripted_gpu()));
    d.wait_ready();
    // The control loop reads the GPU at its next tick.
    let have = d.poll(Duration::from_secs(30), "GPU families", || {
        let (_, text) = d.get("/metrics");
        let have = exported(text.as_str().unwrap());
        have.contains("setpoint_gpu_power_watts").then_some(have)
    });

    let mut missing = Vec::new();
    for (source, exprs) in [("rules", &rule_exprs), ("dashboard", &dash_exprs)] {
        for expr in exprs {
            for name in metric_names(expr) {
                if !have.contains(&name) {
                    missing.push(format!("{source}: {name} in {expr}"));
                }
            }
        }
    }
    assert!(missing.is_empty(), "not exported: {missing:#?}");
    // The check can fail: a name the daemon does not export is caught.
    assert!(!have.contains("setpoint_gpu_power_watt"));
}
