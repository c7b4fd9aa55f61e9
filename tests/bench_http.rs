//! `setpoint bench http --protocol ... --rounds N` against a daemon serving HTTP and gRPC:
//! the protocols take turns within each round, each level is counted, gRPC's endpoint is
//! found through `/v1/status`, the comparison is printed, and bad arguments are refused with
//! what is accepted.

use std::process::{Command, Output};

use crate::support::daemon;
use daemon::Daemon;

const BIN: &str = env!("CARGO_BIN_EXE_setpoint");

const SERVICE: &str = r#"
[[services]]
name = "mlp"
layers = [8, 16, 3]
seed = 3
[services.slo]
p99_ms = 50
"#;

fn bench(d: &Daemon, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(["bench", "http", "--url", &d.url, "--model", "mlp"])
        .args(args)
        .output()
        .expect("run setpoint")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn protocols_take_turns_within_each_round_and_are_compared() {
    let d = Daemon::start(SERVICE);
    d.wait_ready();
    let short = [
        "--duration",
        "300ms",
        "--warmup",
        "100ms",
        "--concurrency",
        "1",
        "--protocol",
        "binary,grpc",
        "--rounds",
        "2",
    ];
    let out = bench(&d, &[&short[..], &["--json"]].concat());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let b: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let levels = b["levels"].as_array().unwrap();
    let seen: Vec<(String, u64)> = levels
        .iter()
        .map(|l| {
            let p = l["protocol"].as_str().unwrap().to_string();
            (p, l["round"].as_u64().unwrap())
        })
        .collect();
    // In the order given, then reversed, so that neither always runs first.
    let want = [("binary", 1), ("grpc", 1), ("grpc", 2), ("binary", 2)];
    assert_eq!(seen, want.map(|(p, r)| (p.to_string(), r)), "{b}");
    for l in levels {
        assert_eq!(l["error_count"], 0, "{l}");
        assert!(l["requests"].as_u64().unwrap() > 0, "{l}");
        // The daemon's CPU time per request, from its /metrics at both ends of the window.
        let cpu = l["daemon_cpu_us_per_request"].as_f64();
        assert!(cpu.is_some_and(|us| us > 0.0 && us < 1e6), "{l}");
        // The load generator's own, from its process CPU clock over the same window.
        let own = l["client_cpu_us_per_request"].as_f64();
        assert!(own.is_some_and(|us| us > 0.0 && us < 1e6), "{l}");
    }
    assert_eq!(b["grpc_url"], serde_json::json!(d.grpc), "{b}");

    let out = bench(&d, &short);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report = text(&out.stdout);
    assert!(report.contains("against binary"), "{report}");
    assert!(
        report.contains("concurrency   1: grpc ") && report.contains("over 2 round(s)"),
        "{report}"
    );
    assert!(report.contains("; daemon CPU per request "), "{report}");
}

/// The daemon's gRPC connections accepted so far, from its /metrics.
fn grpc_connections_accepted(d: &Daemon) -> u64 {
    let (status, body) = d.get("/metrics");
    assert_eq!(status, 200);
    let text = body.as_str().expect("the exposition as text").to_string();
    text.lines()
        .find_map(|l| l.strip_prefix("setpoint_grpc_connections_accepted_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .expect("setpoint_grpc_connections_accepted_total") as u64
}

#[test]
fn grpc_shared_carries_a_levels_calls_on_one_connection_and_grpc_and_grpc_stream_one_each() {
    let d = Daemon::start(SERVICE);
    d.wait_ready();
    let run = |protocol: &str| {
        let before = grpc_connections_accepted(&d);
        let args = [
            "--duration",
            "300ms",
            "--warmup",
            "100ms",
            "--concurrency",
            "3",
            "--protocol",
            protocol,
            "--json",
        ];
        let out = bench(&d, &args);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let b: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let level = &b["levels"][0];
        assert_eq!(level["protocol"], protocol, "{b}");
        assert_eq!(level["error_count"], 0, "{level}");
        assert!(level["requests"].as_u64().unwrap() > 0, "{level}");
        grpc_connections_accepted(&d) - before
    };
    assert_eq!(run("grpc-shared"), 1);
    assert_eq!(run("grpc"), 3);
    // Each stream worker keeps its one stream, and its connection, for the whole run.
    assert_eq!(run("grpc-stream"), 3);
}

#[test]
fn bad_protocol_arguments_say_what_is_accepted() {
    let d = Daemon::start(SERVICE);
    d.wait_ready();
    for (args, message) in [
        (
            vec!["--protocol", "http2"],
            "--protocol: unknown protocol 'http2'; expected json, binary, grpc, grpc-shared or \
             grpc-stream",
        ),
        (
            vec!["--protocol", "grpc,grpc"],
            "--protocol: 'grpc' is given twice",
        ),
        (vec!["--rounds", "0"], "--rounds: expected 1 to 100, got 0"),
    ] {
        let out = bench(&d, &args);
        assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
        assert!(text(&out.stderr).contains(message), "{}", text(&out.stderr));
    }
}
