//! The client commands (`status`, `submit`, `jobs`, `infer`, `bench http`) as a user runs
//! them against a real `setpoint serve` on a loopback port.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_setpoint");

/// A running daemon; stopped (SIGINT, then SIGKILL) when dropped, panics included.
struct Daemon {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
    log: PathBuf,
}

impl Daemon {
    /// Starts `setpoint serve` with no services and no jobs on a free port and waits until
    /// it is ready.
    fn start() -> Daemon {
        let mut last_log = String::new();
        for _attempt in 0..5 {
            let dir = tempfile::tempdir().expect("temp dir");
            let port = free_port();
            let config = dir.path().join("setpoint.toml");
            std::fs::write(
                &config,
                format!(
                    "listen = \"127.0.0.1:{port}\"\nstate_dir = \"{}\"\n",
                    dir.path().join("state").display()
                ),
            )
            .expect("write config");
            let log = dir.path().join("daemon.log");
            let log_file = std::fs::File::create(&log).expect("log file");
            let child = Command::new(BIN)
                .args(["serve", "--grpc-listen", "127.0.0.1:0", "--config"])
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log_file)
                .spawn()
                .expect("start setpoint serve");
            let mut d = Daemon {
                child,
                url: format!("http://127.0.0.1:{port}"),
                _dir: dir,
                log,
            };
            if d.wait_ready(Duration::from_secs(60)) {
                return d;
            }
            // Most likely another process took the port between our probe and the bind.
            last_log = d.log_text();
        }
        panic!("setpoint serve did not become ready after 5 attempts; last log:\n{last_log}");
    }

    fn wait_ready(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(2)))
            .build()
            .into();
        let url = format!("{}/v2/health/ready", self.url);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if let Ok(r) = agent.get(&url).call()
                && r.status() == 200
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs `setpoint ARGS --url URL`.
    fn run(&self, args: &[&str]) -> Output {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--url", &self.url]);
        setpoint(&all)
    }

    /// Runs a command that must succeed and print one JSON document.
    fn json(&self, args: &[&str]) -> Value {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "setpoint {args:?} failed: {}\n{}",
            stderr(&out),
            self.log_text()
        );
        let text = stdout(&out);
        assert_eq!(text.trim().lines().count(), 1, "one line of JSON: {text}");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

use crate::support::child;
use child::free_port;

fn setpoint(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("SETPOINT_URL")
        .output()
        .expect("run setpoint")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Rows of `ROW CLASS PROBABILITY` from `setpoint infer`'s table.
fn infer_rows(text: &str) -> Vec<(usize, usize, f64)> {
    let mut lines = text.lines();
    let header = lines.next().unwrap_or_default();
    assert!(header.contains("CLASS"), "{text}");
    // The last line: the latency the daemon measured and the one seen here.
    let latency = text.lines().last().unwrap_or_default();
    let figure = |after: &str| -> f64 {
        let i = latency.find(after).map(|i| i + after.len());
        let rest = i.map_or("", |i| &latency[i..]);
        rest.split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{latency}"))
    };
    let (daemon, here) = (
        figure("latency: "),
        figure("in the daemon (request to answer), "),
    );
    assert!(daemon > 0.0 && daemon <= here, "{latency}");
    lines
        .filter(|l| !l.starts_with("latency: "))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(f.len(), 3, "{l}");
            (
                f[0].parse().unwrap(),
                f[1].parse().unwrap(),
                f[2].parse().unwrap(),
            )
        })
        .collect()
}

fn output_values(v: &Value) -> Vec<f32> {
    v["outputs"][0]["data"]
        .as_array()
        .unwrap_or_else(|| panic!("no output data: {v}"))
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn wait_for_state(d: &Daemon, job: &str, want: &str, limit: Duration) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let v = d.json(&["jobs", "show", job, "--json"]);
        if v["state"] == want {
            return v;
        }
        assert!(
            v["state"] != "failed",
            "job {job} failed: {v}\n{}",
            d.log_text()
        );
        assert!(
            Instant::now() < deadline,
            "job {job} not {want} within {limit:?}: {v}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_string()
}

#[test]
fn client_commands_drive_a_daemon_end_to_end() {
    let d = Daemon::start();
    let files = tempfile::tempdir().unwrap();

    // status, text and JSON, on an empty node.
    let out = d.run(&["status"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("DEVICE"), "{text}");
    // Where the tenants run and why, under the devices table.
    assert!(
        (text.contains("\ncpu ") && text.contains("\n(no usable GPU ("))
            || (text.contains("\ncuda:") && text.contains("\n(tenants run on GPU ")),
        "{text}"
    );
    assert!(text.contains("no tenants"), "{text}");
    let s = d.json(&["status", "--json"]);
    assert_eq!(s["ready"], true, "{s}");
    let gpu = !s["gpus"].as_array().unwrap().is_empty();
    let device = s["devices"][0]["name"].as_str().unwrap();
    assert!(
        if gpu {
            device.starts_with("cuda:")
        } else {
            device == "cpu"
        },
        "{s}"
    );

    // submit a small job and wait for it.
    let job = d.json(&[
        "submit",
        "--name",
        "t1",
        "--data",
        "synthetic:blobs:size=500,classes=3,features=8",
        "--layers",
        "8,16,3",
        "--target-accuracy",
        "0.9",
        "--epochs",
        "200",
        "--deadline",
        "10m",
        "--seed",
        "3",
        "--json",
    ]);
    assert_eq!(job["name"], "t1", "{job}");
    assert_eq!(
        job["spec"]["layers"],
        serde_json::json!([8, 16, 3]),
        "{job}"
    );
    assert_eq!(job["class"], "deadline", "{job}");
    let done = wait_for_state(&d, "t1", "completed", Duration::from_secs(120));
    assert!(done["val_accuracy"].as_f64().unwrap() >= 0.9, "{done}");

    // jobs list and show, as text.
    let out = d.run(&["jobs"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("t1") && text.contains("completed"), "{text}");
    let list = d.json(&["jobs", "list", "--json"]);
    assert_eq!(list["jobs"].as_array().unwrap().len(), 1, "{list}");
    let out = d.run(&["jobs", "show", "t1"]);
    let text = stdout(&out);
    assert!(text.contains("target_reached"), "{text}");

    // jobs serve publishes the model.
    let svc = d.json(&[
        "jobs",
        "serve",
        "t1",
        "--name",
        "t1m",
        "--slo-p99-ms",
        "50",
        "--max-batch-size",
        "8",
        "--json",
    ]);
    assert_eq!(svc["name"], "t1m", "{svc}");
    assert_eq!(svc["state"], "ready", "{svc}");
    assert_eq!(svc["max_batch_size"], 8, "{svc}");

    // infer --random 4: a table of 4 rows of classes < 3.
    let out = d.run(&["infer", "t1m", "--random", "4"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let rows = infer_rows(&stdout(&out));
    assert_eq!(rows.len(), 4, "{}", stdout(&out));
    for (i, (row, class, p)) in rows.iter().enumerate() {
        assert_eq!(*row, i + 1);
        assert!(*class < 3, "{rows:?}");
        assert!(*p > 1.0 / 3.0 - 1e-6 && *p <= 1.0, "{rows:?}");
    }

    // --json prints the v2 response; --binary gives the same values.
    let v = d.json(&["infer", "t1m", "--random", "4", "--json"]);
    assert_eq!(v["outputs"][0]["shape"], serde_json::json!([4, 3]), "{v}");
    let probs = output_values(&v);
    for row in probs.chunks(3) {
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5, "{row:?}");
    }
    let vb = d.json(&["infer", "t1m", "--random", "4", "--binary", "--json"]);
    assert!(
        vb["outputs"][0]["parameters"]["binary_data_size"].as_u64() == Some(48),
        "{vb}"
    );
    assert_eq!(output_values(&vb), probs);
    let out = d.run(&["infer", "t1m", "--random", "4", "--binary"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(infer_rows(&stdout(&out)), rows);

    // --json-input: rows, and a whole v2 body, JSON and binary.
    let rows_file = write(
        files.path(),
        "rows.json",
        "[[0,0,0,0,0,0,0,0],[1,2,3,4,5,6,7,8]]",
    );
    let out = d.run(&["infer", "t1m", "--json-input", &rows_file]);
    assert!(out.status.success(), "{}", stderr(&out));
    let json_rows = infer_rows(&stdout(&out));
    assert_eq!(json_rows.len(), 2);
    assert!(json_rows.iter().all(|r| r.1 < 3));
    let out = d.run(&["infer", "t1m", "--json-input", &rows_file, "--binary"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(infer_rows(&stdout(&out)), json_rows);
    let body_file = write(
        files.path(),
        "body.json",
        r#"{"id":"x","inputs":[{"name":"input","shape":[2,8],"datatype":"FP32",
            "data":[[0,0,0,0,0,0,0,0],[1,2,3,4,5,6,7,8]]}]}"#,
    );
    let out = d.run(&["infer", "t1m", "--json-input", &body_file]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(infer_rows(&stdout(&out)), json_rows);
    let out = d.run(&["infer", "t1m", "--json-input", &body_file, "--binary"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(infer_rows(&stdout(&out)), json_rows);

    // status now lists the service and the job.
    let text = stdout(&d.run(&["status"]));
    assert!(text.contains("t1m") && text.contains("p99 <= 50"), "{text}");
    assert!(text.contains("job") && text.contains("t1 "), "{text}");

    // Errors: the server's message, exit 2.
    let out = d.run(&["jobs", "show", "nope"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("unknown job nope"),
        "{}",
        stderr(&out)
    );
    let out = d.run(&["infer", "nope", "--random", "1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("unknown model nope"),
        "{}",
        stderr(&out)
    );
    let out = d.run(&[
        "submit",
        "--name",
        "t1",
        "--data",
        "synthetic:blobs",
        "--layers",
        "64,10",
    ]);
    // A conflict with the node's state (409) exits 1.
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("already exists"), "{}", stderr(&out));
    let out = d.run(&[
        "submit",
        "--name",
        "bad",
        "--data",
        "synthetic:blobs",
        "--layers",
        "64,10",
        "--target-accuracy",
        "7",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("target_accuracy"), "{}", stderr(&out));
    let out = d.run(&["jobs", "update", "t1", "--epochs", "5"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("has ended"), "{}", stderr(&out));
    // A deadline the node cannot meet is refused at submission, with the earliest it can.
    let out = d.run(&[
        "submit",
        "--name",
        "too-soon",
        "--data",
        "synthetic:blobs:size=20000",
        "--layers",
        "64,512,512,10",
        "--epochs",
        "200",
        "--deadline",
        "5s",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("the earliest deadline it can meet is"),
        "{}",
        stderr(&out)
    );
    let out = d.run(&["jobs", "update", "t1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("nothing to change"),
        "{}",
        stderr(&out)
    );
    let bad_rows = write(files.path(), "bad.json", "[[1,2,3]]");
    let out = d.run(&["infer", "t1m", "--json-input", &bad_rows]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("takes 8 per row"), "{}", stderr(&out));

    // update and cancel a running job.
    let long = d.json(&[
        "submit",
        "--name",
        "long",
        "--data",
        "synthetic:blobs:size=4000,features=32",
        "--layers",
        "32,256,10",
        "--epochs",
        "100000",
        "--best-effort",
        "--json",
    ]);
    assert_eq!(long["class"], "best-effort", "{long}");
    let up = d.json(&[
        "jobs",
        "update",
        "long",
        "--deadline",
        "1h",
        "--epochs",
        "90000",
        "--json",
    ]);
    assert_eq!(up["epochs_max"], 90000, "{up}");
    assert!(up["deadline"].is_string(), "{up}");
    let up = d.json(&["jobs", "update", "long", "--no-deadline", "--json"]);
    assert!(up["deadline"].is_null(), "{up}");
    // A job that has not ended cannot be removed (409: exit 1); cancelled, it can, once.
    let out = d.run(&["jobs", "rm", "long"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("has not ended"), "{}", stderr(&out));
    let out = d.run(&["jobs", "cancel", "long"]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_for_state(&d, "long", "cancelled", Duration::from_secs(60));
    let out = d.run(&["jobs", "cancel", "long"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("has already ended"),
        "{}",
        stderr(&out)
    );
    let out = d.run(&["jobs", "rm", "long"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with("removed job long"),
        "{}",
        stdout(&out)
    );
    let out = d.run(&["jobs", "show", "long"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));

    // bench http reports requests and the compute-only ratio.
    let b = d.json(&[
        "bench",
        "http",
        "--model",
        "t1m",
        "--duration",
        "1s",
        "--warmup",
        "200ms",
        "--concurrency",
        "1,2",
        "--json",
    ]);
    let levels = b["levels"].as_array().unwrap();
    assert_eq!(levels.len(), 2, "{b}");
    assert_eq!(b["layers"], serde_json::json!([8, 16, 3]), "{b}");
    for (l, c) in levels.iter().zip([1, 2]) {
        assert_eq!(l["concurrency"], c, "{l}");
        assert!(l["requests"].as_u64().unwrap() > 0, "{l}");
        assert!(l["requests_per_s"].as_f64().unwrap() > 0.0, "{l}");
        assert_eq!(l["error_count"], 0, "{l}");
        assert!(l["latency_ms"]["p99"].as_f64().unwrap() > 0.0, "{l}");
        assert!(l["mean_batch_size"].as_f64().unwrap() >= 1.0, "{l}");
        assert!(l["ratio"].as_f64().unwrap() > 0.0, "{l}");
    }
    let out = d.run(&[
        "bench",
        "http",
        "--model",
        "t1m",
        "--duration",
        "300ms",
        "--warmup",
        "0s",
        "--concurrency",
        "1",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("REQ/S"), "{}", stdout(&out));
    let out = d.run(&["bench", "http", "--concurrency", "0"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

#[test]
fn no_daemon_is_one_clear_line_and_exit_1() {
    let url = format!("http://127.0.0.1:{}", free_port());
    let expected = format!(
        "error: cannot reach the daemon at {url}: connection refused; is `setpoint serve` \
         running?\n"
    );
    for args in [
        vec!["status"],
        vec!["jobs"],
        vec!["jobs", "show", "x"],
        vec!["infer", "mlp", "--random", "1"],
        vec!["bench", "http", "--duration", "1s"],
    ] {
        let mut a = args.clone();
        a.extend(["--url", &url]);
        let out = setpoint(&a);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stderr(&out));
        assert_eq!(stderr(&out), expected, "{args:?}");
        assert!(stdout(&out).is_empty(), "{args:?}");
    }
    // SETPOINT_URL says where the daemon is when --url does not.
    let out = Command::new(BIN)
        .args(["status", "--json"])
        .env("SETPOINT_URL", &url)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stderr(&out), expected);
}

#[test]
fn client_usage_errors_exit_2() {
    for args in [
        vec!["infer", "mlp"],
        vec!["infer", "mlp", "--random", "1", "--json-input", "x.json"],
        vec!["jobs", "update", "x", "--deadline", "1h", "--no-deadline"],
        vec!["jobs", "serve", "x"],
        vec!["submit", "--name", "x"],
        vec!["status", "--url", "https://127.0.0.1:1"],
    ] {
        let out = setpoint(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
    }
}
