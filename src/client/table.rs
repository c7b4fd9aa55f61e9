//! Plain-text tables and summaries of the daemon's answers, read into its view types, for
//! people; scripts use `--json`.

use serde::Serialize;
use serde_json::Value;

use crate::node::health::DeviceState;
use crate::node::{JobView, ServiceOrigin, ServiceView, StatusView};

pub use crate::util::table::Table;

/// A value as a cell, spelled as the daemon's JSON spells it (strings bare, `1.0` for a
/// float, an enum by its serde name), `null` (an absent option) as `-`.
pub fn cell<T: Serialize + ?Sized>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(Value::Null) | Err(_) => "-".into(),
        Ok(Value::String(s)) => s,
        Ok(other) => other.to_string(),
    }
}

/// An RFC 3339 time to the second, in the zone the command writes times in
/// ([`crate::util::localtime`]: `2026-11-28T17:54:04Z` in UTC), `-` when absent.
pub fn time(t: Option<&str>) -> String {
    t.map_or_else(|| "-".into(), crate::util::localtime::for_people)
}

/// A number with `decimals` places, `-` when absent.
pub(crate) fn num(v: Option<f64>, decimals: usize) -> String {
    v.map(|x| format!("{x:.decimals$}"))
        .unwrap_or_else(|| "-".into())
}

/// A share in [0, 1] as a percentage.
pub(crate) fn pct(x: f64) -> String {
    format!("{:.0}%", 100.0 * x)
}

/// Seconds as a short signed duration (`+9m 58s`, `-12s`), `-` when absent.
pub fn secs(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), crate::util::table::signed_duration)
}

/// Widths as `784,128,10`.
fn layers(l: &[usize]) -> String {
    l.iter().map(usize::to_string).collect::<Vec<_>>().join(",")
}

/// `key  value` lines, the values aligned.
fn key_values(lines: &[(&str, String)]) -> String {
    let width = lines.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (k, v) in lines {
        out.push_str(&format!("{k:<width$}  {v}\n"));
    }
    out
}

/// The jobs of `GET /v1/jobs` as a table.
pub(crate) fn jobs_table(jobs: &[JobView]) -> String {
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
        let ended = j.state.is_terminal();
        t.row(vec![
            j.name.clone(),
            cell(&j.state),
            cell(&j.class),
            format!("{}/{}", j.epochs_done, j.epochs_max),
            num(j.val_accuracy, 4),
            num(j.target_accuracy, 4),
            time(j.deadline.as_deref()),
            if ended { "-".into() } else { secs(j.slack_s) },
            num(Some(j.samples_per_s), 0),
            pct(j.share),
        ]);
    }
    if t.is_empty() {
        return "no jobs\n".into();
    }
    t.render()
}

/// One job (`GET /v1/jobs/ID`) as `key: value` lines.
pub(crate) fn job_details(j: &JobView) -> String {
    let spec = &j.spec;
    let curve: Vec<String> = j.accuracy_curve.iter().map(|&v| num(v, 4)).collect();
    let mut lines = vec![
        ("name", j.name.clone()),
        ("state", cell(&j.state)),
        ("class", cell(&j.class)),
        ("data", spec.data.clone()),
        ("layers", layers(&spec.layers)),
        (
            "optimizer",
            format!("{} (lr {})", cell(&spec.optimizer), cell(&spec.lr)),
        ),
        ("batch size", j.batch_size.to_string()),
        ("precision", cell(&j.precision)),
        (
            "epochs",
            format!(
                "{} of {} ({} steps, {:.0}%)",
                j.epochs_done,
                j.epochs_max,
                j.steps,
                100.0 * j.progress
            ),
        ),
        ("target accuracy", num(j.target_accuracy, 4)),
        ("val accuracy", num(j.val_accuracy, 4)),
        ("train loss", num(j.train_loss, 4)),
        ("deadline", time(j.deadline.as_deref())),
        ("estimated finish", time(j.estimated_finish.as_deref())),
        ("submitted", time(Some(&j.submitted_at))),
        ("started", time(j.started_at.as_deref())),
        ("finished", time(j.finished_at.as_deref())),
    ];
    // An ended job shows how it fared, not live values that are now zero.
    if !j.state.is_terminal() {
        lines.insert(13, ("slack", secs(j.slack_s)));
        lines.insert(
            14,
            (
                "throughput",
                format!(
                    "{} samples/s on {} workers ({} of the device)",
                    num(Some(j.samples_per_s), 0),
                    j.workers,
                    pct(j.share)
                ),
            ),
        );
    }
    if let Some(r) = j.stop_reason {
        lines.push(("stop reason", r.as_str().to_string()));
    }
    if let Some(o) = j.outcome.describe() {
        lines.push(("outcome", o));
    }
    if let Some(e) = &j.error {
        lines.push(("error", e.clone()));
    }
    lines.push(("checkpoint", cell(&j.checkpoint)));
    if !curve.is_empty() {
        lines.push(("accuracy by epoch", curve.join(" ")));
    }
    key_values(&lines)
}

/// The services of `GET /v1/services` as a table.
pub(crate) fn services_table(services: &[ServiceView]) -> String {
    let mut t = Table::new(&[
        "NAME", "STATE", "LAYERS", "SLO P99", "BATCH", "QUEUE", "SHARE", "REQUESTS", "ORIGIN",
    ])
    .right_align(&[3, 4, 5, 6, 7]);
    for s in services {
        t.row(vec![
            s.name.clone(),
            cell(&s.state),
            layers(&s.layers),
            format!("{} ms", cell(&s.slo_p99_ms)),
            s.max_batch_size.to_string(),
            format!("{}/{}", s.queue_len, s.max_queue),
            pct(s.share),
            s.success_count.to_string(),
            origin(s.origin.as_ref()),
        ]);
    }
    if t.is_empty() {
        return "no services\n".into();
    }
    t.render()
}

/// Where a service came from: `config`, `api` or `job NAME`.
fn origin(o: Option<&ServiceOrigin>) -> String {
    match o {
        Some(ServiceOrigin::Job { job }) => format!("job {job}"),
        Some(ServiceOrigin::Config) => "config".into(),
        Some(ServiceOrigin::Api) => "api".into(),
        None => "-".into(),
    }
}

/// A service (`POST /v1/jobs/ID/serve`, `GET /v1/services/NAME`) as `key: value` lines.
pub(crate) fn service_details(s: &ServiceView) -> String {
    let lines = [
        ("name", s.name.clone()),
        ("state", cell(&s.state)),
        ("layers", layers(&s.layers)),
        ("slo", format!("p99 <= {} ms", cell(&s.slo_p99_ms))),
        (
            "batching",
            format!(
                "up to {} rows, waiting up to {} ms",
                s.max_batch_size,
                cell(&s.max_queue_delay_ms)
            ),
        ),
        ("queue", format!("{} of {}", s.queue_len, s.max_queue)),
        ("precision", cell(&s.precision)),
        ("share", pct(s.share)),
        ("requests answered", s.success_count.to_string()),
        ("origin", origin(s.origin.as_ref())),
        ("created", time(s.created_at.as_deref())),
    ];
    let mut lines = lines.to_vec();
    if let Some(e) = &s.error {
        lines.push(("error", e.clone()));
    }
    let mut out = key_values(&lines);
    out.push_str(&format!("infer at /v2/models/{}/infer\n", s.name));
    out
}

/// Where the APIs listen: `http 127.0.0.1:8000, grpc 127.0.0.1:8001` (or `grpc off`).
fn listeners_line(l: &crate::node::Listeners) -> String {
    let addr = |a: &Option<String>| a.clone().unwrap_or_else(|| "off".to_string());
    format!("listening: http {}, grpc {}", addr(&l.http), addr(&l.grpc))
}

/// `GET /v1/status` as text: a summary line, the devices, then one row per tenant.
pub(crate) fn status_text(s: &StatusView) -> String {
    let mut out = format!(
        "setpoint {}, up {}, {}\n{}\n\n",
        s.version,
        secs(Some(s.uptime_s)).trim_start_matches('+'),
        if s.ready { "ready" } else { "not ready" },
        listeners_line(&s.listeners)
    );
    let mut d = Table::new(&["DEVICE", "STATE", "WORKERS", "SHARE ASSIGNED"]).right_align(&[2, 3]);
    let mut failures = String::new();
    for dev in &s.devices {
        d.row(vec![
            dev.name.clone(),
            cell(&dev.health.state),
            dev.workers.to_string(),
            pct(dev.share_assigned),
        ]);
        if dev.health.state == DeviceState::Failed {
            failures.push_str(&format!(
                "{} failed at {}: {}; its tenants were stopped (restart the daemon to use it again)\n",
                dev.name,
                time(dev.health.failed_at.as_deref()),
                cell(&dev.health.reason),
            ));
        }
    }
    out.push_str(&d.render());
    out.push_str(&failures);
    out.push_str(&format!("({})\n\n", s.device_note));
    out.push_str(&tenants_table(s));
    out
}

/// A row under its service for one replica: its device, whether it is up (`seldom`: up, and
/// passed over while few rows are left for it), its part of the
/// rows, its latency and rows per second against the capacity the split planned, its share
/// of its device and its queue.
fn replica_row(r: &crate::node::ReplicaView) -> Vec<String> {
    let p99 = r.p99_ms.map_or("-".into(), |p| format!("p99 {p:.2} ms"));
    let capacity = r
        .capacity_rows_per_s
        .map_or("-".into(), |c| format!("{c:.0}"));
    vec![
        String::new(),
        format!("  on {}", r.device),
        r.state().into(),
        format!("rows {}", pct(r.fraction)),
        format!("{p99}, {:.0} of {capacity} rows/s", r.rows_per_s),
        pct(r.share),
        String::new(),
        r.queue_len.to_string(),
    ]
}

/// The tenants of a status, one row each (and one per replica of a service that has
/// several), or `no tenants`.
fn tenants_table(s: &StatusView) -> String {
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
    for ten in &s.tenants {
        t.row(vec![
            cell(&ten.kind),
            ten.name.clone(),
            cell(&ten.state),
            match &ten.deadline {
                Some(d) => ten.set_point.replace(d.as_str(), &time(Some(d))),
                None => ten.set_point.clone(),
            },
            cell(&ten.measured),
            // The shares of several devices do not add up to one: each replica's is below.
            if ten.replicas.is_empty() {
                pct(ten.share)
            } else {
                "-".into()
            },
            ten.batch_size.to_string(),
            cell(&ten.queue_len),
        ]);
        for r in &ten.replicas {
            t.row(replica_row(r));
        }
    }
    if t.is_empty() {
        "no tenants\n".into()
    } else {
        t.render()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn times_drop_fractions_of_a_second() {
        assert_eq!(
            time(Some("2026-11-28T17:54:04.185832645Z")),
            "2026-11-28T17:54:04Z"
        );
        assert_eq!(
            time(Some("2026-11-28T17:54:04.5+01:00")),
            "2026-11-28T17:54:04+01:00"
        );
        assert_eq!(time(None), "-");
    }

    #[test]
    fn durations_are_short_and_signed() {
        assert_eq!(secs(Some(598.2)), "+9m 58s");
        assert_eq!(secs(Some(-12.0)), "-12s");
        assert_eq!(secs(Some(7300.0)), "+2h 1m");
        assert_eq!(secs(None), "-");
    }

    #[test]
    fn cells_spell_values_as_the_json_does() {
        assert_eq!(cell(&25.0), "25.0");
        assert_eq!(cell(&0.001), "0.001");
        assert_eq!(cell(&Some(3usize)), "3");
        assert_eq!(cell(&None::<String>), "-");
        assert_eq!(cell(&crate::node::TenantKind::Service), "service");
    }

    /// A status answer with `devices` and `tenants`, as the daemon writes it.
    fn status(ready: bool, devices: Value, tenants: Value) -> StatusView {
        serde_json::from_value(json!({
            "version": "0.1.0", "started_at": "2026-11-28T17:54:01Z", "uptime_s": 3.0,
            "ready": ready, "policy": "setpoint", "control_ticks": 30,
            "devices": devices, "device_note": "1 CPU device",
            "gpus": [{"index": 0, "name": "NVIDIA H200", "uuid": "GPU-0",
                      "compute_capability": [9, 0], "sm_count": 132,
                      "total_memory": 150_000_000_000u64, "priority_range": [0, -5],
                      "driver_version": 12080}],
            "gpu_telemetry": [], "tenants": tenants,
            "listeners": {"http": "127.0.0.1:8000", "grpc": null},
        }))
        .unwrap()
    }

    #[test]
    fn a_replica_row_says_down_seldom_or_up() {
        let replica = |up: bool, seldom: bool| -> crate::node::ReplicaView {
            serde_json::from_value(json!({
                "device": "cpu:1", "share": 0.2, "fraction": 0.0, "up": up, "seldom": seldom,
                "queue_len": 0, "rows_per_s": 0.0, "capacity_rows_per_s": 400.0, "rows": 9,
                "p99_ms": 31.5, "precision": "f32",
            }))
            .unwrap()
        };
        assert_eq!(replica_row(&replica(true, false))[2], "up");
        assert_eq!(replica_row(&replica(true, true))[2], "seldom");
        assert_eq!(replica_row(&replica(false, true))[2], "down");
        assert_eq!(
            replica_row(&replica(true, true))[4],
            "p99 31.50 ms, 0 of 400 rows/s"
        );
        // A daemon from before the mark sends none: not seldom.
        let mut old = serde_json::to_value(replica(true, true)).unwrap();
        old.as_object_mut().unwrap().remove("seldom");
        let old: crate::node::ReplicaView = serde_json::from_value(old).unwrap();
        assert!(!old.seldom);
    }

    #[test]
    fn status_lists_devices_and_tenants() {
        let s = status(
            true,
            json!([{"name": "cpu", "workers": 2, "share_assigned": 0.5, "busy_frac": 0.1,
                    "state": "ok", "reason": null, "failed_at": null}]),
            json!([{"kind": "service", "name": "mlp", "state": "ready",
                    "set_point": "p99 <= 25 ms", "measured": null, "share": 0.5,
                    "batch_size": 32, "queue_len": 0, "device": "cpu"}]),
        );
        let text = status_text(&s);
        assert!(text.starts_with("setpoint 0.1.0, up 3s, ready\n"), "{text}");
        assert!(
            text.contains("\nlistening: http 127.0.0.1:8000, grpc off\n"),
            "{text}"
        );
        assert!(text.contains("cpu"), "{text}");
        assert!(text.contains("p99 <= 25 ms"), "{text}");
        assert!(text.contains("50%"), "{text}");
        assert!(text.contains("(1 CPU device)"), "{text}");
        assert!(!text.contains("failed"), "{text}");
    }

    #[test]
    fn status_names_a_failed_device_with_its_reason_and_time() {
        let s = status(
            false,
            json!([
                {"name": "cuda:0", "state": "failed", "workers": 1056, "share_assigned": 0.0,
                 "busy_frac": 0.0, "reason": "CUDA_ERROR_ILLEGAL_ADDRESS",
                 "failed_at": "2026-11-28T17:54:04.1Z"},
                {"name": "cuda:1", "state": "ok", "workers": 1056, "share_assigned": 0.25,
                 "busy_frac": 0.2, "reason": null, "failed_at": null},
            ]),
            json!([]),
        );
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
        assert!(text.contains("no tenants"), "{text}");
    }

    /// A completed job's answer, as the daemon writes it.
    fn job() -> JobView {
        serde_json::from_str(
            r#"{
            "name": "mnist", "state": "completed", "class": "deadline",
            "submitted_at": "2026-11-28T17:54:01.25Z",
            "started_at": "2026-11-28T17:54:02Z", "finished_at": "2026-11-28T17:56:02Z",
            "deadline": "2026-11-28T18:04:01Z", "estimated_finish": "2026-11-28T17:56:02Z",
            "slack_s": 479.0, "target_accuracy": 0.9, "epochs_max": 5, "epochs_done": 3,
            "steps": 1200, "progress": 0.6, "val_accuracy": 0.9123, "train_loss": 0.25,
            "samples_per_s": 0.0, "share": 0.0, "workers": 0, "batch_size": 64,
            "stop_reason": "target_reached", "error": null,
            "outcome": {"deadline": "met", "target": "reached"},
            "checkpoint": "/var/lib/setpoint/jobs/mnist/checkpoint.ckpt",
            "restore_note": null, "checkpoint_error": null, "checkpoint_errors": 0,
            "accuracy_curve": [0.8, null, 0.9123], "expected_epochs": null,
            "required_steps_per_s": null, "steps_per_s": null,
            "spec": {"name": "mnist", "data": "synthetic:blobs", "layers": [784, 128, 10],
                     "optimizer": "adam", "lr": 0.001, "momentum": 0.9, "weight_decay": 0.0,
                     "batch_size": 64, "epochs": 5, "target_accuracy": 0.9,
                     "val_fraction": 0.1, "seed": 7, "deadline": "10m",
                     "checkpoint_every_steps": 500, "best_effort": false}
        }"#,
        )
        .unwrap()
    }

    /// The value of `key` in `key  value` lines.
    fn value_of<'a>(text: &'a str, key: &str) -> Option<&'a str> {
        text.lines()
            .find_map(|l| l.strip_prefix(key).filter(|v| v.starts_with("  ")))
            .map(str::trim_start)
    }

    #[test]
    fn a_job_shows_its_spec_progress_and_outcome() {
        let text = job_details(&job());
        for (key, value) in [
            ("state", "completed"),
            ("class", "deadline"),
            ("layers", "784,128,10"),
            ("optimizer", "adam (lr 0.001)"),
            ("epochs", "3 of 5 (1200 steps, 60%)"),
            ("submitted", "2026-11-28T17:54:01Z"),
            ("stop reason", "target_reached"),
            ("outcome", "deadline met, target reached"),
            ("accuracy by epoch", "0.8000 - 0.9123"),
        ] {
            assert_eq!(value_of(&text, key), Some(value), "{key} in\n{text}");
        }
        assert_eq!(value_of(&text, "error"), None, "{text}");
        // Ended: no slack or throughput, and `-` in the table's SLACK.
        assert_eq!(value_of(&text, "slack"), None, "{text}");
        assert_eq!(value_of(&text, "throughput"), None, "{text}");
        let mut running = job();
        running.state = crate::node::JobState::Running;
        let text = job_details(&running);
        assert_eq!(value_of(&text, "slack"), Some("+7m 59s"), "{text}");
        assert!(value_of(&text, "throughput").is_some(), "{text}");
        let table = jobs_table(&[job()]);
        assert!(table.contains("3/5"), "{table}");
        assert!(table.contains("0.9123"), "{table}");
        assert_eq!(jobs_table(&[]), "no jobs\n");
    }

    #[test]
    fn a_service_shows_its_origin_and_where_to_infer() {
        let s: ServiceView = serde_json::from_value(json!({
            "name": "mnist", "state": "ready", "error": null, "layers": [784, 128, 10],
            "slo_p99_ms": 25.0, "timeout_ms": 250.0, "max_batch_size": 32,
            "max_queue_delay_ms": 2.0, "max_queue": 1024, "queue_len": 0, "share": 0.0,
            "success_count": 0, "origin": {"kind": "job", "job": "mnist"},
            "created_at": "2026-11-28T17:56:03.5Z",
        }))
        .unwrap();
        let text = service_details(&s);
        for (key, value) in [
            ("slo", "p99 <= 25.0 ms"),
            ("batching", "up to 32 rows, waiting up to 2.0 ms"),
            ("origin", "job mnist"),
            ("created", "2026-11-28T17:56:03Z"),
        ] {
            assert_eq!(value_of(&text, key), Some(value), "{key} in\n{text}");
        }
        assert!(
            text.ends_with("infer at /v2/models/mnist/infer\n"),
            "{text}"
        );
    }
}
