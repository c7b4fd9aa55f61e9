//! Reloading the configuration of a running daemon (the real binary): SIGHUP and
//! `POST /v1/reload` apply a changed file as a difference, refuse an invalid one while the
//! daemon keeps serving, leave services added at run time alone, and drop no inference
//! request in flight.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const TOKEN: &str = "reload-test-token";

#[path = "support/child.rs"]
mod child;
use child::{ChildDaemon, free_port};

/// The daemon binary (see [`ChildDaemon`]) with this file's requests and signals.
struct Daemon(ChildDaemon);

impl std::ops::Deref for Daemon {
    type Target = ChildDaemon;

    fn deref(&self) -> &ChildDaemon {
        &self.0
    }
}

/// Replaces `path` as an editor should: a new file renamed over the old one.
fn write_config(path: &Path, text: &str) {
    let tmp = path.with_extension("toml.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn poll<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Daemon {
    fn start(config: &Path, dir: &Path, port: u16) -> Daemon {
        let log = dir.join("daemon.log");
        std::fs::File::create(&log).unwrap();
        let d = Daemon(ChildDaemon::spawn(
            config,
            port,
            &log,
            None,
            Duration::from_secs(20),
        ));
        poll(Duration::from_secs(30), "the daemon to be ready", || {
            (d.get("/v2/health/ready").0 == 200).then_some(())
        });
        d
    }

    fn get(&self, path: &str) -> (u16, Value) {
        match self.agent.get(&format!("{}{path}", self.url)).call() {
            Ok(r) => {
                let s = r.status().as_u16();
                (s, r.into_body().read_json().unwrap_or(Value::Null))
            }
            Err(_) => (0, Value::Null),
        }
    }

    fn text(&self, path: &str) -> String {
        self.agent
            .get(&format!("{}{path}", self.url))
            .call()
            .unwrap()
            .into_body()
            .read_to_string()
            .unwrap()
    }

    fn post(&self, path: &str, token: Option<&str>, body: &Value) -> (u16, Value) {
        let mut req = self.agent.post(&format!("{}{path}", self.url));
        if let Some(t) = token {
            req = req.header("Authorization", &format!("Bearer {t}"));
        }
        let r = req.send_json(body).unwrap();
        let s = r.status().as_u16();
        (s, r.into_body().read_json().unwrap_or(Value::Null))
    }

    /// One inference row; the HTTP status (0 when the request itself failed).
    fn infer(&self, model: &str) -> u16 {
        let body = json!({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32",
                                      "data": [0.1, -0.2, 0.3, 0.4]}]});
        match self
            .agent
            .post(&format!("{}/v2/models/{model}/infer", self.url))
            .send_json(&body)
        {
            Ok(r) => r.status().as_u16(),
            Err(_) => 0,
        }
    }

    fn hup(&self) {
        // SAFETY: signalling a child process this test started and has not reaped.
        assert_eq!(
            unsafe { libc::kill(self.0.child.id() as i32, libc::SIGHUP) },
            0
        );
    }

    fn metric(&self, line_start: &str) -> Option<f64> {
        self.text("/metrics")
            .lines()
            .find_map(|l| l.strip_prefix(line_start))
            .and_then(|v| v.trim().parse().ok())
    }

    fn slo(&self, service: &str) -> Option<f64> {
        self.get(&format!("/v1/services/{service}")).1["slo_p99_ms"].as_f64()
    }

    fn stop(self) {
        let s = self.0.terminate(Duration::from_secs(60));
        assert!(s.success(), "the daemon exited with {s:?}");
    }
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
    let d = Daemon::start(&config, dir.path(), port);
    assert_eq!(d.slo("a"), Some(50.0));

    // SIGHUP: a service added, an SLO changed, the control period changed.
    write_config(
        &config,
        &(header(port, &state, 100) + &service("a", 80.0, 256) + &service("b", 40.0, 256)),
    );
    d.hup();
    poll(Duration::from_secs(20), "service b and a's new SLO", || {
        (d.slo("a") == Some(80.0) && d.get("/v2/models/b/ready").0 == 200).then_some(())
    });
    let status = d.get("/v1/status").1;
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
        (d.metric("setpoint_config_reloads_total{result=\"ok\"}") == Some(1.0)).then_some(())
    });
    assert_eq!(d.infer("b"), 200);

    // An invalid file: refused, counted, the running configuration kept, still serving.
    write_config(
        &config,
        &(header(port, &state, 100)
            + &service("a", -5.0, 256)
            + "\n[[services]]\nname = \"c\"\nlayers = [4, 3]\nbogus = 1\n"),
    );
    d.hup();
    poll(
        Duration::from_secs(20),
        "the refused reload counted",
        || (d.metric("setpoint_config_reloads_total{result=\"error\"}") == Some(1.0)).then_some(()),
    );
    assert_eq!(
        d.metric("setpoint_config_last_reload_successful"),
        Some(0.0)
    );
    assert_eq!(d.slo("a"), Some(80.0));
    assert_eq!(d.get("/v2/models/c/ready").0, 404);
    assert_eq!(d.get("/v2/health/ready").0, 200);
    assert_eq!(d.infer("a"), 200);
    let log = std::fs::read_to_string(&d.log).unwrap();
    assert!(log.contains("services[0].slo.p99_ms"), "{log}");
    assert!(log.contains("services[1].bogus"), "{log}");

    // POST /v1/reload changes the node: the token is required.
    let (s, v) = d.post("/v1/reload", None, &json!({}));
    assert_eq!(s, 401, "{v}");
    let (s, _) = d.post("/v1/reload", Some("not-the-token"), &json!({}));
    assert_eq!(s, 401);
    let (s, v) = d.post("/v1/reload", Some(TOKEN), &json!({}));
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
        d.metric("setpoint_config_reloads_total{result=\"error\"}"),
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
    let (s, v) = d.post(
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
    let (s, v) = d.post("/v1/reload", Some(TOKEN), &json!({}));
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
    assert_eq!(d.get("/v2/models/b/ready").0, 404);
    assert_eq!(d.get("/v2/models/m/ready").0, 200);
    assert_eq!(d.infer("m"), 200);
    assert_eq!(d.slo("a"), Some(60.0));
    assert_eq!(
        d.metric("setpoint_config_last_reload_successful"),
        Some(1.0)
    );
    d.stop();
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
    let d = Arc::new(Daemon::start(&config, dir.path(), port));

    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|i| {
            let d = d.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut a_statuses = Vec::new();
                let mut b_statuses = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    a_statuses.push(d.infer("a"));
                    if i % 2 == 0 {
                        b_statuses.push(d.infer("b"));
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
        let (s, v) = d.post("/v1/reload", Some(TOKEN), &json!({}));
        assert_eq!(s, 200, "{v}");
        poll(Duration::from_secs(20), "the new settings of a", || {
            let cfg = d.get("/v2/models/a/config").1;
            (cfg["dynamic_batching"]["default_queue_policy"]["max_queue_size"] == queue
                && d.slo("a") == Some(p99))
            .then_some(())
        });
        if with_b {
            poll(Duration::from_secs(20), "b back", || {
                (d.get("/v2/models/b/ready").0 == 200).then_some(())
            });
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, Ordering::Relaxed);
    let mut a_total = 0;
    for c in clients {
        let (a, b) = c.join().unwrap();
        a_total += a.len();
        let a_failed: Vec<u16> = a.iter().copied().filter(|&s| s != 200).collect();
        assert!(
            a_failed.is_empty(),
            "{} of {} requests to a failed: {a_failed:?}",
            a_failed.len(),
            a.len()
        );
        // b comes and goes: a request either reaches it (and is answered) or finds it gone.
        let b_failed: Vec<u16> = b
            .iter()
            .copied()
            .filter(|&s| s != 200 && s != 404)
            .collect();
        assert!(
            b_failed.is_empty(),
            "{} of {} requests to b failed: {b_failed:?}",
            b_failed.len(),
            b.len()
        );
    }
    assert!(a_total > 20, "too few requests to show anything: {a_total}");
    match Arc::try_unwrap(d) {
        Ok(d) => d.stop(),
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
