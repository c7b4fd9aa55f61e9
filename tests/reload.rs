//! Reloading the configuration of a running daemon (the real binary): SIGHUP and
//! `POST /v1/reload` apply a changed file as a difference, refuse an invalid one while the
//! daemon keeps serving, leave services added at run time alone, and drop no inference
//! request in flight.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

const TOKEN: &str = "reload-test-token";

use crate::support::child;
use child::{ChildDaemon, free_port, poll};

/// Replaces `path` as an editor should: a new file renamed over the old one.
fn write_config(path: &Path, text: &str) {
    let tmp = path.with_extension("toml.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The daemon binary (see [`ChildDaemon`]) on `config`, its log in `dir`; waits until it is
/// ready.
fn start(config: &Path, dir: &Path, port: u16) -> ChildDaemon {
    let log = dir.join("daemon.log");
    std::fs::File::create(&log).unwrap();
    let d = ChildDaemon::spawn(config, port, &log, None, Duration::from_secs(20));
    poll(Duration::from_secs(30), "the daemon to be ready", || {
        (d.get_json("/v2/health/ready").0 == 200).then_some(())
    });
    d
}

/// A POST, with the bearer `token` when given.
fn post(d: &ChildDaemon, path: &str, token: Option<&str>, body: &Value) -> (u16, Value) {
    d.send("POST", path, Some(body), token)
}

/// One inference row; the HTTP status (0 when the request itself failed).
fn infer(d: &ChildDaemon, model: &str) -> u16 {
    d.infer(model, &[0.1, -0.2, 0.3, 0.4]).0
}

fn hup(d: &ChildDaemon) {
    // SAFETY: signalling a child process this test started and has not reaped.
    assert_eq!(unsafe { libc::kill(d.child.id() as i32, libc::SIGHUP) }, 0);
}

fn metric(d: &ChildDaemon, line_start: &str) -> Option<f64> {
    let (_, text) = d.get("/metrics").unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(line_start))
        .and_then(|v| v.trim().parse().ok())
}

fn slo(d: &ChildDaemon, service: &str) -> Option<f64> {
    d.get_json(&format!("/v1/services/{service}")).1["slo_p99_ms"].as_f64()
}

fn stop_cleanly(d: ChildDaemon) {
    let s = d.terminate(Duration::from_secs(60));
    assert!(s.success(), "the daemon exited with {s:?}");
}

fn header(port: u16, state: &Path, period_ms: u64) -> String {
    format!(
        "listen = \"127.0.0.1:{port}\"\nstate_dir = {state:?}\ncontrol_period_ms = {period_ms}\n\
         auth_token = \"{TOKEN}\"\n"
    )
}

fn service(name: &str, p99_ms: f64, max_queue: usize) -> String {
    format!(
        "\n[[services]]\nname = \"{name}\"\nlayers = [4, 8, 3]\nmax_queue = {max_queue}\n\
         slo = {{ p99_ms = {p99_ms:?} }}\n"
    )
}

#[test]
fn reload_applies_changes_refuses_invalid_files_and_keeps_runtime_services() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let config = dir.path().join("node.toml");
    let port = free_port();
    write_config(
        &config,
        &(header(port, &state, 50) + &service("a", 50.0, 256)),
    );
    let d = start(&config, dir.path(), port);
    assert_eq!(slo(&d, "a"), Some(50.0));

    // SIGHUP: a service added, an SLO changed, the control period changed.
    write_config(
        &config,
        &(header(port, &state, 100) + &service("a", 80.0, 256) + &service("b", 40.0, 256)),
    );
    hup(&d);
    poll(Duration::from_secs(20), "service b and a's new SLO", || {
        (slo(&d, "a") == Some(80.0) && d.get_json("/v2/models/b/ready").0 == 200).then_some(())
    });
    let status = d.get_json("/v1/status").1;
    let tenants: Vec<&str> = status["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(tenants.contains(&"b"), "{status}");
    let a = status["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "a")
        .unwrap();
    assert_eq!(a["set_point"], "p99 <= 80 ms", "{status}");
    poll(Duration::from_secs(10), "the reload counted", || {
        (metric(&d, "setpoint_config_reloads_total{result=\"ok\"}") == Some(1.0)).then_some(())
    });
    assert_eq!(infer(&d, "b"), 200);

    // An invalid file: refused, counted, the running configuration kept, still serving.
    write_config(
        &config,
        &(header(port, &state, 100)
            + &service("a", -5.0, 256)
            + "\n[[services]]\nname = \"c\"\nlayers = [4, 3]\nbogus = 1\n"),
    );
    hup(&d);
    poll(
        Duration::from_secs(20),
        "the refused reload counted",
        || {
            (metric(&d, "setpoint_config_reloads_total{result=\"error\"}") == Some(1.0))
                .then_some(())
        },
    );
    assert_eq!(
        metric(&d, "setpoint_config_last_reload_successful"),
        Some(0.0)
    );
    assert_eq!(slo(&d, "a"), Some(80.0));
    assert_eq!(d.get_json("/v2/models/c/ready").0, 404);
    assert_eq!(d.get_json("/v2/health/ready").0, 200);
    assert_eq!(infer(&d, "a"), 200);
    let log = std::fs::read_to_string(&d.log).unwrap();
    assert!(log.contains("services[0].slo.p99_ms"), "{log}");
    assert!(log.contains("services[1].bogus"), "{log}");

    // POST /v1/reload changes the node: the token is required.
    let (s, v) = post(&d, "/v1/reload", None, &json!({}));
    assert_eq!(s, 401, "{v}");
    let (s, _) = post(&d, "/v1/reload", Some("not-the-token"), &json!({}));
    assert_eq!(s, 401);
    let (s, v) = post(&d, "/v1/reload", Some(TOKEN), &json!({}));
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["result"], "error", "{v}");
    let errors: Vec<&str> = v["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert!(
        errors
            .iter()
            .any(|e| e.contains("services[0].slo.p99_ms") && e.contains("-5")),
        "{v}"
    );
    assert!(
        errors.iter().any(|e| e.contains("services[1].bogus")),
        "{v}"
    );
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("running configuration is kept")
    );
    assert_eq!(
        metric(&d, "setpoint_config_reloads_total{result=\"error\"}"),
        Some(2.0)
    );

    // A service added at run time, from a checkpoint: a reload never removes it.
    let ckpt = dir.path().join("m.ckpt");
    let trained = Command::new(env!("CARGO_BIN_EXE_setpoint"))
        .args([
            "train",
            "--data",
            "synthetic:blobs:size=300,classes=3,features=4",
            "--layers",
            "4,8,3",
            "--epochs",
            "1",
            "--checkpoint",
            ckpt.to_str().unwrap(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(trained.success());
    let (s, v) = post(
        &d,
        "/v1/services",
        Some(TOKEN),
        &json!({"name": "m", "checkpoint": ckpt, "slo": {"p99_ms": 30}}),
    );
    assert_eq!(s, 201, "{v}");

    // A valid file again: b removed, a restart-only setting reported, m untouched.
    let other_port = free_port();
    write_config(
        &config,
        &(header(other_port, &state, 100) + &service("a", 60.0, 256)),
    );
    let (s, v) = post(&d, "/v1/reload", Some(TOKEN), &json!({}));
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["result"], "ok", "{v}");
    assert_eq!(v["services_removed"], json!(["b"]), "{v}");
    assert_eq!(v["services_changed"][0]["name"], "a", "{v}");
    assert_eq!(v["services_changed"][0]["how"], "applied", "{v}");
    // The default timeout (10 x the SLO) follows the SLO, in place too.
    assert_eq!(
        v["services_changed"][0]["changes"],
        json!(["slo.p99_ms: 80.0 -> 60.0", "timeout_ms: 800.0 -> 600.0"]),
        "{v}"
    );
    let restart = v["needs_restart"].to_string();
    assert!(
        restart.contains("listen") && restart.contains(&other_port.to_string()),
        "{v}"
    );
    assert_eq!(d.get_json("/v2/models/b/ready").0, 404);
    assert_eq!(d.get_json("/v2/models/m/ready").0, 200);
    assert_eq!(infer(&d, "m"), 200);
    assert_eq!(slo(&d, "a"), Some(60.0));
    assert_eq!(
        metric(&d, "setpoint_config_last_reload_successful"),
        Some(1.0)
    );
    stop_cleanly(d);
}

#[test]
fn requests_in_flight_during_reloads_all_succeed() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let config = dir.path().join("node.toml");
    let port = free_port();
    let text = |p99: f64, queue: usize, with_b: bool| -> String {
        let mut t = header(port, &state, 50) + &service("a", p99, queue);
        if with_b {
            t += &service("b", 50.0, 256);
        }
        t
    };
    write_config(&config, &text(50.0, 256, true));
    let d = Arc::new(start(&config, dir.path(), port));

    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|i| {
            let d = d.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut a_statuses = Vec::new();
                let mut b_statuses = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    a_statuses.push(d.infer("a", &[0.1, -0.2, 0.3, 0.4]));
                    if i % 2 == 0 {
                        b_statuses.push(d.infer("b", &[0.1, -0.2, 0.3, 0.4]));
                    }
                }
                (a_statuses, b_statuses)
            })
        })
        .collect();

    // Each reload under load: an SLO changed in place, a new batcher for a larger queue,
    // b removed and added back.
    let steps = [
        (80.0, 256, true),
        (80.0, 512, false),
        (40.0, 512, true),
        (40.0, 128, false),
    ];
    for (p99, queue, with_b) in steps {
        write_config(&config, &text(p99, queue, with_b));
        let (s, v) = post(&d, "/v1/reload", Some(TOKEN), &json!({}));
        assert_eq!(s, 200, "{v}");
        poll(Duration::from_secs(20), "the new settings of a", || {
            let cfg = d.get_json("/v2/models/a/config").1;
            (cfg["dynamic_batching"]["default_queue_policy"]["max_queue_size"] == queue
                && slo(&d, "a") == Some(p99))
            .then_some(())
        });
        if with_b {
            poll(Duration::from_secs(20), "b back", || {
                (d.get_json("/v2/models/b/ready").0 == 200).then_some(())
            });
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, Ordering::Relaxed);
    let mut a_total = 0;
    for c in clients {
        let (a, b) = c.join().unwrap();
        a_total += a.len();
        let a_failed: Vec<&(u16, Value)> = a.iter().filter(|s| s.0 != 200).collect();
        assert!(
            a_failed.is_empty(),
            "{} of {} requests to a failed: {a_failed:?}",
            a_failed.len(),
            a.len()
        );
        // b comes and goes: a request either reaches it (and is answered) or finds it gone.
        let b_failed: Vec<&(u16, Value)> = b.iter().filter(|s| s.0 != 200 && s.0 != 404).collect();
        assert!(
            b_failed.is_empty(),
            "{} of {} requests to b failed: {b_failed:?}",
            b_failed.len(),
            b.len()
        );
    }
    assert!(a_total > 20, "too few requests to show anything: {a_total}");
    match Arc::try_unwrap(d) {
        Ok(d) => stop_cleanly(d),
        Err(_) => panic!("a client still holds the daemon"),
    }
}

#[test]
fn a_node_on_the_embedded_default_reloads_nothing_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = setpoint::config::parse(
        "[[services]]\nname = \"a\"\nlayers = [4, 3]\nslo = { p99_ms = 20 }\n",
    )
    .unwrap();
    cfg.state_dir = dir.path().join("state");
    let node = setpoint::node::Node::new(cfg.clone()).unwrap();
    // No source at all: refused, and counted.
    let failure = node.reload().unwrap_err();
    assert!(
        failure.errors[0].contains("no configuration source"),
        "{failure:?}"
    );
    node.set_config_source(setpoint::node::ConfigSource {
        path: None,
        state_dir: Some(cfg.state_dir.clone()),
        ..Default::default()
    });
    let report = node.reload().unwrap();
    assert!(report.is_empty());
    assert!(
        report.note.as_deref().unwrap().contains("embedded default"),
        "{report:?}"
    );
    assert_eq!(node.reload_counts(), (1, 1, true));
    assert_eq!(*node.config(), cfg);
}
