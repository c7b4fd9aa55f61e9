//! The watch frame drawn from fixed status answers.

use serde_json::json;

use super::*;

/// A status with one service over its SLO, jobs ahead of and behind their deadlines, an
/// ended job and a service with a long name.
fn fixture(p99_ms: f64, share: f64) -> StatusView {
    serde_json::from_value(json!({
        "version": "0.1.0",
        "started_at": "2026-12-03T16:00:00.123456Z",
        "uptime_s": 75.4,
        "ready": true,
        "policy": "setpoint",
        "control_ticks": 754,
        "devices": [{"name": "cpu", "workers": 8, "share_assigned": 0.75,
                     "busy_frac": 0.5, "state": "ok", "reason": null, "failed_at": null}],
        "gpus": [],
        "device_note": "no GPU",
        "gpu_telemetry": [],
        "tenants": [
            {"kind": "service", "name": "iris", "state": "ready",
             "set_point": "p99 <= 20 ms", "measured": "p99 30.00 ms", "share": 0.25,
             "batch_size": 8, "queue_len": 0, "device": "cpu", "outcome": null,
             "slo_p99_ms": 20.0, "p99_ms": p99_ms, "rows_per_s": 120.0},
            {"kind": "service",
             "name": "a-service-with-a-name-far-too-long-for-its-column", "state": "loading",
             "set_point": "p99 <= 25 ms", "measured": null, "share": 0.0, "batch_size": 8,
             "queue_len": 0, "device": null, "outcome": null, "slo_p99_ms": 25.0},
            {"kind": "job", "name": "ahead", "state": "running",
             "set_point": "accuracy >= 0.9 by …", "measured": null, "share": share,
             "batch_size": 32, "queue_len": null, "device": "cpu",
             "outcome": {"deadline": null, "target": null},
             "progress": 0.4, "slack_s": 125.0, "accuracy": 0.8123, "target_accuracy": 0.9},
            {"kind": "job", "name": "behind", "state": "running",
             "set_point": "5 epochs by …", "measured": null, "share": 0.5,
             "batch_size": 32, "queue_len": null, "device": "cpu",
             "outcome": {"deadline": null, "target": null},
             "progress": 0.2, "slack_s": -42.0},
            {"kind": "job", "name": "done", "state": "completed",
             "set_point": "5 epochs, best effort", "measured": null, "share": 0.0,
             "batch_size": 32, "queue_len": null, "device": "cpu",
             "outcome": {"deadline": null, "target": null},
             "progress": 1.0, "accuracy": 0.95}
        ]
    }))
    .unwrap()
}

fn line_of<'a>(frame: &'a str, start: &str) -> &'a str {
    frame
        .lines()
        .find(|l| l.starts_with(start))
        .unwrap_or_else(|| panic!("no line starting {start:?} in\n{frame}"))
}

#[test]
fn every_line_fits_the_width() {
    let mut h = WatchHistory::new();
    for i in 0..70 {
        h.record(fixture(10.0 + i as f64, 0.1));
    }
    for width in [DEFAULT_WIDTH, 60] {
        let f = frame(&h, width);
        for l in f.lines() {
            assert!(l.chars().count() <= width, "{} > {width}: {l}", l.len());
        }
    }
    assert_eq!(h.series(TenantKind::Service, "iris").len(), HISTORY);
}

#[test]
fn a_service_over_its_slo_has_a_full_bar_and_a_mark() {
    let mut h = WatchHistory::new();
    h.record(fixture(30.0, 0.25));
    let f = frame(&h, DEFAULT_WIDTH);
    let l = line_of(&f, "iris ");
    assert!(l.contains("30.00 / 20 ms"), "{l}");
    assert!(
        l.contains(&format!("{}! 150%", "█".repeat(BAR_CELLS))),
        "{l}"
    );
    assert!(l.contains("120/s"), "{l}");
    // p99 (30) above the SLO (20): the sparkline's top is the p99 itself.
    assert!(l.contains(" █ "), "{l}");
}

#[test]
fn a_service_under_its_slo_has_a_partial_bar() {
    let mut h = WatchHistory::new();
    h.record(fixture(5.0, 0.25));
    h.record(fixture(10.0, 0.25));
    let f = frame(&h, DEFAULT_WIDTH);
    let l = line_of(&f, "iris ");
    // 10 of 20 ms: half the bar; recent p99 5 and 10 of 20: levels 2 (▃... rounded) and 4.
    assert!(l.contains("█████░░░░░   50%"), "{l}");
    assert!(l.contains(&sparkline(&[5.0, 10.0], 20.0)), "{l}");
    assert_eq!(sparkline(&[5.0, 10.0], 20.0).trim_end(), "▃▅");
}

#[test]
fn jobs_show_progress_slack_and_accuracy() {
    let mut h = WatchHistory::new();
    h.record(fixture(10.0, 0.25));
    let f = frame(&h, DEFAULT_WIDTH);
    let ahead = line_of(&f, "ahead ");
    assert!(ahead.contains("running"), "{ahead}");
    assert!(ahead.contains("████░░░░░░  40%"), "{ahead}");
    assert!(ahead.contains("+2m 5s"), "{ahead}");
    assert!(ahead.contains("0.812 / 0.9"), "{ahead}");
    assert!(ahead.ends_with(" 25%"), "{ahead}");
    let behind = line_of(&f, "behind ");
    assert!(behind.contains("██░░░░░░░░  20%"), "{behind}");
    assert!(behind.contains("-42s"), "{behind}");
    let done = line_of(&f, "done ");
    assert!(done.contains("completed"), "{done}");
    assert!(done.contains("██████████ 100%"), "{done}");
    assert!(!done.contains('+') && !done.contains("-4"), "{done}");
}

#[test]
fn a_long_name_is_cut_with_an_ellipsis() {
    let mut h = WatchHistory::new();
    h.record(fixture(10.0, 0.25));
    let f = frame(&h, DEFAULT_WIDTH);
    let l = line_of(&f, "a-service-with-");
    assert!(l.starts_with("a-service-with-… loading"), "{l}");
    assert!(l.contains("- / 25 ms"), "{l}");
}

#[test]
fn the_header_and_devices_are_drawn() {
    let mut h = WatchHistory::new();
    h.record(fixture(10.0, 0.25));
    let f = frame(&h, DEFAULT_WIDTH);
    assert!(f.starts_with("setpoint 0.1.0, up 1m 15s, ready, started 2026-12-03T16:00:00Z"));
    let cpu = line_of(&f, "cpu ");
    assert!(cpu.contains("████████░░  75%   50%"), "{cpu}");
}

#[test]
fn a_job_sparkline_follows_its_share() {
    let mut h = WatchHistory::new();
    for share in [0.0, 0.5, 1.0] {
        h.record(fixture(10.0, share));
    }
    assert_eq!(h.series(TenantKind::Job, "ahead"), vec![0.0, 0.5, 1.0]);
    let f = frame(&h, DEFAULT_WIDTH);
    assert!(line_of(&f, "ahead ").contains("▁▅█"));
}

#[test]
fn an_error_is_shown_above_the_last_status_and_cleared_by_the_next() {
    let mut h = WatchHistory::new();
    assert!(frame(&h, DEFAULT_WIDTH).contains("waiting"));
    h.record(fixture(10.0, 0.25));
    h.record_error("cannot reach the daemon".into());
    let f = frame(&h, DEFAULT_WIDTH);
    assert!(f.starts_with("! cannot reach the daemon (retrying)\n"));
    assert!(f.contains("iris"));
    h.record(fixture(10.0, 0.25));
    assert!(!frame(&h, DEFAULT_WIDTH).contains("retrying"));
}

#[test]
fn bars_and_sparklines_round_and_cap() {
    assert_eq!(bar(0.0), "░".repeat(10));
    assert_eq!(bar(0.34), "███░░░░░░░");
    assert_eq!(bar(7.0), "█".repeat(10));
    assert_eq!(bar(f64::NAN), "░".repeat(10));
    let many: Vec<f64> = (0..30).map(f64::from).collect();
    let s = sparkline(&many, 29.0);
    assert_eq!(s.chars().count(), SPARK_CELLS);
    assert!(s.ends_with('█'));
    assert_eq!(sparkline(&[], 1.0), " ".repeat(SPARK_CELLS));
    assert_eq!(fit("abcdef", 4), "abc…");
    assert_eq!(fit("abc", 4), "abc");
}
