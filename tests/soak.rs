//! `setpoint bench soak` through the real command line: a short soak of a daemon child, and
//! the settings it refuses.

use std::process::Command;

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_setpoint");

#[test]
fn a_short_soak_reports_the_process_the_requests_and_the_job() {
    let out = Command::new(BIN)
        .args([
            "bench",
            "soak",
            "--duration",
            "4s",
            "--rate",
            "40",
            "--job-data",
            "synthetic:blobs:size=4000",
            "--listen",
            "127.0.0.1:0",
            "--progress-every",
            "1s",
            "--json",
        ])
        .env_remove("SETPOINT_AUTH_TOKEN")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}: {stderr}", out.status);
    let r: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));

    // stderr is not a terminal here: a plain status line every second of the load.
    let status: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("soak: ") && l.contains(" s  sent "))
        .collect();
    assert!(status.len() >= 2, "{stderr}");
    assert!(
        status
            .iter()
            .all(|l| l.split_once("/4 s  sent ").is_some_and(|(head, _)| head
                .strip_prefix("soak: ")
                .is_some_and(|n| n.parse::<u32>().is_ok_and(|n| n <= 4)))),
        "{stderr}"
    );
    for part in [
        "answered ",
        "errors ",
        "p99 ",
        "rss ",
        " MiB  fds ",
        "job steps ",
    ] {
        assert!(status[0].contains(part), "{part}: {stderr}");
    }
    assert!(stderr.contains("soak: starting the daemon"), "{stderr}");
    let listen = r["listen"].as_str().unwrap();
    assert!(
        listen.starts_with("127.0.0.1:") && !listen.ends_with(":0"),
        "{listen}"
    );
    // What the report names as opened and closed over the load accounts for the change in
    // the count (the end sample waits up to 2 s for the daemon to close its ends of the
    // load's connections; on a busy machine some may still be named here, and counted).
    let opened = r["fds_opened"].as_array().unwrap().len() as i64;
    let closed = r["fds_closed"].as_array().unwrap().len() as i64;
    let fds = |at: &str| r[at]["fds"].as_i64().unwrap();
    assert_eq!(
        fds("end") - fds("start"),
        opened - closed,
        "start {} end {}: opened {} closed {}",
        r["start"],
        r["end"],
        r["fds_opened"],
        r["fds_closed"]
    );

    for at in ["start", "end"] {
        assert!(r[at]["rss_bytes"].as_u64().unwrap() > 0, "{at}: {}", r[at]);
        assert!(r[at]["fds"].as_u64().unwrap() > 0, "{at}: {}", r[at]);
    }
    assert!(r["peak_rss_bytes"].as_u64().unwrap() >= r["end"]["rss_bytes"].as_u64().unwrap());
    assert!(r["samples"].as_array().unwrap().len() >= 2);

    let q = &r["requests"];
    let sent = q["sent"].as_u64().unwrap();
    let ok = q["ok"].as_u64().unwrap();
    assert!(ok > 0, "{q}");
    // 4 s at 40/s: every request due before the end is sent, and each has one outcome.
    assert_eq!(sent, 160, "{q}");
    let other: u64 = q["other"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(
        ok + q["rejected_429"].as_u64().unwrap()
            + q["timeout_504"].as_u64().unwrap()
            + other
            + q["transport_errors"].as_u64().unwrap(),
        sent,
        "{q}"
    );

    let windows = r["windows"].as_array().unwrap();
    assert_eq!(windows.len(), 4);
    let per_window: u64 = windows
        .iter()
        .map(|w| w["requests"].as_u64().unwrap())
        .sum();
    assert_eq!(per_window, sent);
    for w in windows.iter().filter(|w| w["ok"].as_u64().unwrap() > 0) {
        let (p50, p99) = (w["p50_ms"].as_f64().unwrap(), w["p99_ms"].as_f64().unwrap());
        assert!(p50 > 0.0 && p50 <= p99, "{w}");
    }
    assert_eq!(r["slo"]["p99_ms"].as_f64(), Some(25.0));
    assert_eq!(r["timeout_ms"].as_f64(), Some(250.0));
    let over = r["slo"]["windows_over"].as_u64().unwrap();
    assert!(over <= r["slo"]["windows"].as_u64().unwrap());

    let job = &r["job"];
    assert_eq!(job["name"], "soak");
    assert!(
        job["steps_end"].as_u64().unwrap() > job["steps_start"].as_u64().unwrap(),
        "the job did not progress: {job}"
    );
    assert!(r["reads"]["status_ok"].as_u64().unwrap() >= 1);
    assert!(r["reads"]["metrics_ok"].as_u64().unwrap() >= 1);
    // The probes of health and metrics ran all along, and every answer's lateness against
    // its timeout was measured; at 40 requests/s nothing is late.
    let probes = r["probes"].as_array().unwrap();
    let paths: Vec<&str> = probes.iter().map(|p| p["path"].as_str().unwrap()).collect();
    assert_eq!(paths, ["/v2/health/live", "/metrics"]);
    for p in probes {
        assert!(p["count"].as_u64().unwrap() >= 10, "{p}");
        assert_eq!(p["failed"], 0, "{p}");
        assert!(
            p["p50_ms"].as_f64().unwrap() <= p["p99_ms"].as_f64().unwrap(),
            "{p}"
        );
    }
    let late = &r["lateness"];
    assert_eq!(late["timeout_ms"].as_f64(), Some(250.0));
    assert_eq!(late["period_ms"].as_f64(), Some(100.0));
    assert_eq!(late["over_timeout_and_period"], 0, "{late}");
    assert_eq!(r["rows"], 1);
    assert_eq!(q["skipped"], 0, "{q}");
    assert_eq!(r["daemon_exit_code"], 0);
}

#[test]
fn an_overload_soak_answers_every_request_and_measures_lateness() {
    // 32-row requests at a multiple of the rate the service sustains: the ramp measures it
    // first, and every request sent gets one outcome.
    let out = Command::new(BIN)
        .args([
            "bench",
            "soak",
            "--duration",
            "3s",
            "--rate",
            "3x",
            "--rows",
            "32",
            "--connections",
            "32",
            "--job-data",
            "synthetic:blobs:size=4000",
            "--json",
        ])
        .env_remove("SETPOINT_AUTH_TOKEN")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}: {stderr}", out.status);
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    let sustainable = r["sustainable"]["requests_per_s"].as_f64().unwrap();
    assert!(sustainable > 0.0, "{}", r["sustainable"]);
    assert_eq!(r["rate_multiple"].as_f64(), Some(3.0));
    let rate = r["rate_per_s"].as_f64().unwrap();
    assert!(
        (rate - 3.0 * sustainable).abs() < 1e-6 * rate,
        "{rate} {sustainable}"
    );
    assert_eq!(r["rows"], 32);
    let q = &r["requests"];
    let sum: u64 = ["ok", "rejected_429", "timeout_504", "transport_errors"]
        .iter()
        .map(|k| q[k].as_u64().unwrap())
        .sum::<u64>()
        + q["other"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_u64().unwrap())
            .sum::<u64>();
    assert_eq!(sum, q["sent"].as_u64().unwrap(), "{q}");
    assert!(q["sent"].as_u64().unwrap() > 0, "{q}");
    assert!(r["lateness"]["all_ms"][2].as_f64().unwrap() > 0.0);
}

#[test]
fn bad_settings_are_refused_before_anything_starts() {
    for (args, want) in [
        (
            &["--rate", "0"][..],
            "--rate: must be > 0 and <= 100000 requests/s, got 0",
        ),
        (&["--rate", "0x"][..], "--rate: a multiple must be > 0"),
        (
            &["--duration", "soon"][..],
            "--duration: expected a duration such as 10s",
        ),
        (
            &["--duration", "0s"][..],
            "--duration and --window must be more than zero",
        ),
        (
            &["--job-layers", "64,x"][..],
            "\"x\" is not a positive integer",
        ),
        (
            &["--listen", "localhost"][..],
            "--listen: expected IP:PORT, such as 127.0.0.1:8080",
        ),
        (
            &["--progress-every", "500ms"][..],
            "--progress-every: must be at least 1s",
        ),
    ] {
        let out = Command::new(BIN)
            .args(["bench", "soak"])
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(want), "{args:?}: {stderr}");
    }
}

#[test]
fn an_unknown_model_is_refused_naming_it() {
    let out = Command::new(BIN)
        .args(["bench", "soak", "--duration", "2s", "--model", "nosuch"])
        .env_remove("SETPOINT_AUTH_TOKEN")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("nosuch"), "{stderr}");
}

#[test]
fn a_listen_address_in_use_is_refused_naming_it() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = Command::new(BIN)
        .args(["bench", "soak", "--duration", "2s", "--listen", &addr])
        .env_remove("SETPOINT_AUTH_TOKEN")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("--listen {addr}: cannot listen there (")),
        "{stderr}"
    );
    assert!(stderr.contains("or port 0 for any free one"), "{stderr}");
}
