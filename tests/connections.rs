//! The HTTP listener holds against idle, slow and too many connections: idle keep-alive
//! connections and those that send their request head too slowly are closed, connections
//! past the cap are answered 503 while the others are served, descriptors stay in reserve
//! for checkpoints, and a stop answers the requests in flight without waiting for idle
//! connections.

use crate::support::child;
use crate::support::daemon;

use std::io::Write;
use std::time::{Duration, Instant};

use child::{ChildDaemon, closed_by_peer, free_port, get_on, poll, read_answer};
use daemon::Daemon;
use serde_json::json;

fn metric(text: &str, sample: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sample {sample} in\n{text}"))
}

fn raw(d: &Daemon) -> std::net::TcpStream {
    let s = std::net::TcpStream::connect(d.url.trim_start_matches("http://")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s
}

#[test]
fn idle_and_slow_connections_are_closed_and_counted() {
    let d = Daemon::start("[http]\nheader_read_timeout_ms = 300\nidle_timeout_ms = 800\n");

    // Connected, nothing sent: the first request head is owed from the start.
    let mut silent = raw(&d);
    // Half a head, never finished.
    let mut half = raw(&d);
    half.write_all(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let t0 = Instant::now();
    assert!(
        closed_by_peer(&mut silent),
        "a silent connection stayed open"
    );
    assert!(closed_by_peer(&mut half), "a half-sent head stayed open");
    assert!(
        t0.elapsed() >= Duration::from_millis(250),
        "closed too soon"
    );

    // Requests every 200 ms, well inside the idle timeout, keep a connection open...
    let mut busy = raw(&d);
    for _ in 0..8 {
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(get_on(&mut busy, "/v2/health/live").0, 200);
    }
    // ...and with none, it is closed after idle_timeout_ms, not before.
    let idle_from = Instant::now();
    assert!(closed_by_peer(&mut busy), "an idle connection stayed open");
    assert!(idle_from.elapsed() >= Duration::from_millis(700));

    let (_, text) = d.get("/metrics");
    let text = text.as_str().unwrap().to_owned();
    let closed = |r: &str| {
        metric(
            &text,
            &format!("setpoint_http_connections_closed_total{{reason=\"{r}\"}}"),
        )
    };
    assert!(closed("header_timeout") >= 2.0, "{text}");
    assert!(closed("idle") >= 1.0, "{text}");
}

#[test]
fn past_the_cap_new_connections_get_503_and_the_others_are_served() {
    let d = Daemon::start("[http]\nmax_connections = 3\nheader_read_timeout_ms = 60000\n");
    let mut held: Vec<_> = (0..3).map(|_| raw(&d)).collect();
    // The three are accepted before the fourth comes.
    std::thread::sleep(Duration::from_millis(300));
    let mut fourth = raw(&d);
    fourth
        .write_all(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let (status, body) = read_answer(&mut fourth);
    assert_eq!(status, 503, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("http.max_connections"),
        "{v}"
    );
    assert!(closed_by_peer(&mut fourth));

    // The held ones are served, and when one closes a new client gets in.
    assert_eq!(get_on(&mut held[0], "/v2/health/live").0, 200);
    held.pop();
    let (_, text) = poll(Duration::from_secs(30), "a free connection slot", || {
        let (s, v) = d.get("/metrics");
        (s == 200).then_some((s, v))
    });
    let text = text.as_str().unwrap();
    assert!(
        metric(
            text,
            "setpoint_http_connections_closed_total{reason=\"refused\"}"
        ) >= 1.0
    );
    assert_eq!(metric(text, "setpoint_http_connections_max"), 3.0);
}

const SERVICE: &str = r#"
[[services]]
name = "mlp"
layers = [8, 16, 3]
seed = 3
timeout_ms = 60000
[services.slo]
p99_ms = 50
"#;

/// A stop used to wait the whole drain timeout for connections that had sent half a head,
/// and to log them as requests in flight. Now idle ones are closed at once, a request whose
/// body is still arriving is answered, and new connections are refused.
#[test]
fn a_stop_answers_requests_in_flight_and_does_not_wait_for_idle_connections() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = format!(
        "listen = \"127.0.0.1:{port}\"\nstate_dir = {:?}\ndrain_timeout_ms = 120000\n{SERVICE}",
        dir.path().join("state")
    );
    let mut d = ChildDaemon::start(&config, port, dir.path(), None);
    poll(Duration::from_secs(60), "the service to load", || {
        (d.get("/v2/health/ready").ok()?.0 == 200).then_some(())
    });
    let mut idle: Vec<_> = (0..3).map(|_| d.connect()).collect();
    idle[0]
        .write_all(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let mut kept = d.connect();
    assert_eq!(get_on(&mut kept, "/v2/health/live").0, 200);

    // An inference request whose body has not all arrived when the stop comes.
    let body = json!({"inputs": [{"name": "input", "shape": [1, 8], "datatype": "FP32",
        "data": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]}]})
    .to_string();
    let (first, rest) = body.as_bytes().split_at(20);
    let mut slow = d.connect();
    write!(
        slow,
        "POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    slow.write_all(first).unwrap();
    std::thread::sleep(Duration::from_millis(500));

    let stop = Instant::now();
    d.signal_term();
    for s in idle.iter_mut().chain([&mut kept]) {
        assert!(
            closed_by_peer(s),
            "a connection with nothing in flight was kept"
        );
    }
    poll(
        Duration::from_secs(30),
        "new connections to be refused",
        || {
            std::net::TcpStream::connect(("127.0.0.1", d.port))
                .is_err()
                .then_some(())
        },
    );
    slow.write_all(rest).unwrap();
    let (status, answer) = read_answer(&mut slow);
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("\"outputs\""), "{answer}");

    let exit = d.wait_exit(Duration::from_secs(100));
    assert!(exit.success(), "{exit:?}");
    // Far inside the 120 s drain timeout, which the idle connections used to take whole.
    assert!(stop.elapsed() < Duration::from_secs(100));
    let log = d.log_text();
    assert!(!log.contains("still in flight"), "{log}");
}

/// With the open-file limit reached by connections, a job used to fail with "cannot write
/// checkpoint ... Too many open files". Now the cap is lowered to what the limit leaves
/// after the reserve, connections past it are refused, and checkpoints go on.
#[test]
fn descriptors_stay_in_reserve_for_checkpoints_when_connections_flood() {
    setpoint::util::fds::raise_limit();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let state = dir.path().join("state");
    let config = format!(
        r#"listen = "127.0.0.1:{port}"
state_dir = {state:?}
[http]
reserved_fds = 64
header_read_timeout_ms = 120000
idle_timeout_ms = 120000
[[jobs]]
name = "j"
data = "synthetic:blobs:size=4000,features=16,classes=4"
layers = [16, 32, 4]
epochs = 100000
checkpoint_every_steps = 20
best_effort = true
"#
    );
    let d = ChildDaemon::start(&config, port, dir.path(), Some(256));
    let log = d.log_text();
    assert!(
        log.contains("http.max_connections lowered from 1024"),
        "{log}"
    );

    let step = |d: &ChildDaemon| d.get_json("/v1/jobs/j").1["steps"].as_u64().unwrap_or(0);
    poll(Duration::from_secs(60), "the job to train", || {
        (step(&d) > 0).then_some(())
    });
    // More connections than the process has descriptors.
    let flood: Vec<_> = (0..400)
        .filter_map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).ok())
        .collect();
    let ckpt = state.join("jobs/j/checkpoint.ckpt");
    let written = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let before = written(&ckpt);
    poll(
        Duration::from_secs(60),
        "a checkpoint while flooded",
        || (written(&ckpt) > before).then_some(()),
    );
    drop(flood);
    let v = poll(Duration::from_secs(60), "the api after the flood", || {
        let (s, v) = d.get_json("/v1/jobs/j");
        (s == 200).then_some(v)
    });
    assert_eq!(v["state"], "running", "{v}");
    assert!(v["checkpoint_error"].is_null(), "{v}");
    let (_, metrics) = d.get("/metrics").unwrap();
    assert!(
        metric(
            &metrics,
            "setpoint_http_connections_closed_total{reason=\"refused\"}"
        ) > 0.0,
        "{metrics}"
    );
    let log = d.log_text();
    assert!(!log.contains("Too many open files"), "{log}");
}
