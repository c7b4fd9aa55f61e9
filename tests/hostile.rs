//! Hostile and clumsy input over the API: one request must never take the node down.

use crate::support::child;
use crate::support::daemon;

use daemon::Daemon;
use serde_json::json;

/// A job whose model would not fit in memory was accepted and aborted the whole process
/// (`memory allocation of 17179869184 bytes failed`); it is refused with 400 and the
/// estimate, and the daemon goes on serving.
#[test]
fn a_job_too_large_for_memory_or_too_deep_is_refused_and_the_node_keeps_serving() {
    let d = Daemon::start(
        r#"
[[services]]
name = "mlp"
layers = [8, 16, 3]
[services.slo]
p99_ms = 50
"#,
    );
    d.wait_ready();
    // Twenty layers of 65,536: about 1.5 TiB with Adam, which no host has.
    let mut layers = vec![64];
    layers.extend(std::iter::repeat_n(65_536, 20));
    layers.push(10);
    let job = |name: &str, layers: &[usize]| {
        json!({"name": name, "data": "synthetic:blobs:size=200", "layers": layers,
               "epochs": 1, "class": "best-effort"})
    };
    let (s, v) = d.send("POST", "/v1/jobs", &job("huge", &layers));
    assert_eq!(s, 400, "{v}");
    let err = v["error"].as_str().unwrap_or_default().to_string() + &v["errors"].to_string();
    assert!(err.contains("the model needs about"), "{v}");
    assert!(
        err.contains("TiB (parameters") && err.contains("left"),
        "{v}"
    );

    // 100,002 layers of width 1 (a 200 KB request) are refused by count.
    let mut deep = vec![64];
    deep.extend(std::iter::repeat_n(1, 100_000));
    deep.push(10);
    let (s, v) = d.send("POST", "/v1/jobs", &job("deep", &deep));
    assert_eq!(
        s,
        400,
        "{}",
        v.to_string().chars().take(300).collect::<String>()
    );
    assert!(
        v.to_string().contains("must have 2 ..= 128 widths"),
        "{}",
        v.to_string().chars().take(300).collect::<String>()
    );

    // Still serving, and the refused names are free.
    assert_eq!(d.get("/v2/health/live").0, 200);
    assert_eq!(d.get("/v2/models/mlp/ready").0, 200);
    assert_eq!(d.get("/v1/jobs/huge").0, 404);
}

/// A request with more rows than `max_queue` could never be queued whole: it used to get 429
/// with `Retry-After: 1` after computing some of its rows, forever. It is refused at once with
/// 400 naming the limit, and nothing is computed for it.
#[test]
fn a_request_with_more_rows_than_the_queue_holds_is_refused_at_once() {
    let d = Daemon::start(
        r#"
[[services]]
name = "mlp"
layers = [4, 8, 3]
max_queue = 16
[services.slo]
p99_ms = 50
"#,
    );
    d.wait_ready();
    let infer = |rows: usize| {
        let data: Vec<f32> = (0..rows * 4).map(|i| (i % 5) as f32).collect();
        json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [rows, 4], "data": data}]})
    };
    // Rows computed so far (Triton's inference_count).
    let computed = || {
        let (_, v) = d.get("/v2/models/mlp/stats");
        v["model_stats"][0]["inference_count"].as_u64().unwrap_or(0)
    };
    let before = computed();
    let (s, v) = d.send("POST", "/v2/models/mlp/infer", &infer(64));
    assert_eq!(s, 400, "{v}");
    let err = v["error"].as_str().unwrap();
    assert!(
        err.contains("the request has 64 rows, but the service queues at most 16 (max_queue)"),
        "{err}"
    );
    assert_eq!(computed(), before, "the refused request ran nothing");
    // A request that fits is answered whole.
    let (s, v) = d.send("POST", "/v2/models/mlp/infer", &infer(16));
    assert_eq!(s, 200, "{v}");
    assert_eq!(computed(), before + 16);
}

/// A service added over the API whose record cannot be written in the state dir was answered
/// 201 and was gone after a restart; it is refused with the reason and not added.
#[test]
fn a_service_that_cannot_be_recorded_is_not_added() {
    let d = Daemon::start("");
    let dir = d.node.state_dir().to_path_buf();
    let ckpt = dir.join("model.ckpt");
    daemon::write_checkpoint(&ckpt, &[4, 8, 3]);
    // services/ becomes a file: nothing can be written under it, whoever runs the test.
    std::fs::remove_dir_all(dir.join("services")).unwrap();
    std::fs::write(dir.join("services"), b"").unwrap();
    let body = json!({"name": "m", "checkpoint": ckpt, "slo": {"p99_ms": 50}});
    let (s, v) = d.send("POST", "/v1/services", &body);
    assert_eq!(s, 500, "{v}");
    let err = v["error"].as_str().unwrap();
    assert!(
        err.starts_with("cannot record service m in the state dir")
            && err.ends_with("it was not added"),
        "{err}"
    );
    assert_eq!(d.get("/v1/services/m").0, 404);
    assert_eq!(d.get("/v2/models/m/ready").0, 404);
}

/// Every error is JSON, the router's own rejections included, and says its cause once.
#[test]
fn every_error_is_json_and_names_the_position_once() {
    let d = Daemon::start("");
    // A path that is not UTF-8 used to be answered in text/plain.
    let r = d
        .agent
        .get(format!("{}/v2/models/%ff", d.url))
        .call()
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let ct = r
        .headers()
        .get("content-type")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(ct, "application/json");
    let v: serde_json::Value = r.into_body().read_json().unwrap();
    assert!(v["error"].as_str().unwrap().contains("UTF-8"), "{v}");
    // Broken JSON: the position once, at the end of serde's message.
    let mut r = d
        .agent
        .post(format!("{}/v1/jobs", d.url))
        .header("content-type", "application/json")
        .send("{\"name\": 3")
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let v: serde_json::Value = r.body_mut().read_json().unwrap();
    assert_eq!(
        v["error"],
        "invalid JSON: EOF while parsing an object at line 1 column 10"
    );
}

/// A checkpoint that cannot be written (a full disk, say) used to fail the job for good;
/// training goes on, the error is shown and counted, a later write clears it, and only a
/// write that fails for longer than `checkpoint_error_timeout_ms` fails the job.
#[test]
fn checkpoint_write_errors_are_retried_while_training_goes_on() {
    let run = |timeout_ms: u64| {
        let d = Daemon::start(&format!("checkpoint_error_timeout_ms = {timeout_ms}\n"));
        let job = json!({"name": "j", "data": "synthetic:blobs:size=4000,features=16,classes=4",
            "layers": [16, 64, 4], "epochs": 1000, "checkpoint_every_steps": 5,
            "class": "best-effort"});
        let (s, v) = d.send("POST", "/v1/jobs", &job);
        assert_eq!(s, 201, "{v}");
        // A directory where the write's temporary file goes: every write fails (EISDIR),
        // whoever runs the test. The daemon is this process.
        let dir = d.node.state_dir().join("jobs/j");
        let blocker = dir.join(format!(".checkpoint.ckpt.tmp.{}", std::process::id()));
        // The daemon may be writing that file at this moment (a checkpoint every 5 steps):
        // it is renamed away within milliseconds, so try again until the directory is made.
        let started = std::time::Instant::now();
        while let Err(e) = std::fs::create_dir_all(&blocker) {
            assert!(
                started.elapsed() < std::time::Duration::from_secs(10),
                "cannot create {}: {e}",
                blocker.display()
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        (d, blocker)
    };

    let (d, blocker) = run(600_000);
    let v = d.poll(std::time::Duration::from_secs(60), "failed writes", || {
        let (_, v) = d.get("/v1/jobs/j");
        (v["checkpoint_errors"].as_u64() >= Some(2)).then_some(v)
    });
    assert_eq!(v["state"], "running", "{v}");
    assert!(
        v["checkpoint_error"]
            .as_str()
            .unwrap()
            .contains("cannot write checkpoint"),
        "{v}"
    );
    let (_, metrics) = d.get("/metrics");
    assert!(
        metrics
            .as_str()
            .unwrap()
            .contains("setpoint_job_checkpoint_errors_total{job=\"j\"}"),
        "{metrics}"
    );
    // The disk has room again: the next write succeeds and the error is cleared.
    std::fs::remove_dir(&blocker).unwrap();
    let v = d.poll(std::time::Duration::from_secs(60), "a write again", || {
        let (_, v) = d.get("/v1/jobs/j");
        v["checkpoint_error"].is_null().then_some(v)
    });
    assert_eq!(v["state"], "running", "{v}");
    assert!(d.node.state_dir().join("jobs/j/checkpoint.ckpt").is_file());
    drop(d);

    // Failing for longer than the timeout fails the job, saying why.
    let (d, _blocker) = run(200);
    let v = d.poll(
        std::time::Duration::from_secs(60),
        "the job to fail",
        || {
            let (_, v) = d.get("/v1/jobs/j");
            (v["state"] == "failed").then_some(v)
        },
    );
    let err = v["error"].as_str().unwrap();
    assert!(
        err.contains("no checkpoint could be written for")
            && err.contains("checkpoint_error_timeout_ms = 200"),
        "{v}"
    );
}

fn resident_bytes(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kib| kib << 10)
}

/// On a node without a GPU, `device.memory_limit_mib` caps what the tenants hold together
/// (the daemon's resident memory): a job that fits alone is admitted, the same job again is
/// refused once the first holds its memory (400), and so is a service of the config file;
/// each refusal names the estimate and the limit, and the daemon keeps serving.
#[test]
fn the_node_memory_limit_is_summed_over_tenants() {
    let dir = tempfile::tempdir().unwrap();
    let port = child::free_port();
    let config = format!(
        "listen = \"127.0.0.1:{port}\"\nstate_dir = {:?}\n[device]\nkind = \"cpu\"\n\
         memory_limit_mib = 1536\n",
        dir.path().join("state")
    );
    let d = child::ChildDaemon::start(&config, port, dir.path(), None);
    // About 0.8 GiB with SGD: parameters, gradients and momentum of 8192 x 8192.
    let job = |name: &str| {
        json!({"name": name, "data": "synthetic:blobs:size=600,features=64,classes=10",
               "layers": [64, 8192, 8192, 10], "epochs": 1, "batch_size": 8,
               "class": "best-effort"})
    };
    let (s, v) = d.post("/v1/jobs", &job("first"));
    assert_eq!(s, 201, "{v}");
    child::poll(
        std::time::Duration::from_secs(120),
        "the first job to hold its memory",
        || (resident_bytes(d.child.id()) > 700 << 20).then_some(()),
    );

    let (s, v) = d.post("/v1/jobs", &job("second"));
    assert_eq!(s, 400, "{v}");
    let err = v["error"].as_str().unwrap_or_default().to_string() + &v["errors"].to_string();
    assert!(
        err.contains("the model needs about")
            && err.contains("cpu under device.memory_limit_mib = 1536 has"),
        "{v}"
    );
    // A service of the config file with a 1 GiB model, which would fit alone (the API's
    // services load checkpoints, read whole): it fails to load, saying why.
    let with_service = format!(
        "{config}[[services]]\nname = \"wide\"\nlayers = [64, 16384, 16384, 10]\n\
         [services.slo]\np99_ms = 50\n"
    );
    std::fs::write(dir.path().join("setpoint.toml"), with_service).unwrap();
    let (s, v) = d.post("/v1/reload", &json!({}));
    assert_eq!(s, 200, "{v}");
    let v = child::poll(
        std::time::Duration::from_secs(60),
        "the service to fail",
        || {
            let (_, v) = d.get_json("/v1/services/wide");
            (v["state"] == "failed").then_some(v)
        },
    );
    let err = v["error"].as_str().unwrap_or_default();
    assert!(
        err.contains("the model needs about") && err.contains("device.memory_limit_mib = 1536"),
        "{v}"
    );
    assert_eq!(d.get_json("/v2/health/live").0, 200);
    assert_eq!(d.get_json("/v1/jobs/second").0, 404);
}

/// Threads that keep a core each busy at normal priority until dropped: another tenant of
/// the host.
struct Hogs {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Hogs {
    fn start(n: usize) -> Hogs {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let threads = (0..n)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        std::hint::spin_loop();
                    }
                })
            })
            .collect();
        Hogs { stop, threads }
    }
}

impl Drop for Hogs {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A job submitted while normal-priority work keeps every core busy is admitted: its data
/// load starts in the background, where it would get no core, is found starved and goes on at
/// normal priority, and the log says so; the steps are measured at normal priority. (The
/// submission waited past any client's timeout when all of it ran in the background.)
#[test]
fn a_job_is_admitted_while_other_work_keeps_every_core_busy() {
    let dir = tempfile::tempdir().unwrap();
    let port = child::free_port();
    let config = format!(
        "listen = \"127.0.0.1:{port}\"\nstate_dir = {:?}\n[device]\nkind = \"cpu\"\n",
        dir.path().join("state")
    );
    let d = child::ChildDaemon::start(&config, port, dir.path(), None);
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let hogs = Hogs::start(2 * cores);
    let started = std::time::Instant::now();
    let (s, v) = d.post(
        "/v1/jobs",
        &json!({"name": "busy", "data": "synthetic:blobs:size=300000,features=32,classes=10",
                "layers": [32, 512, 512, 10], "epochs": 1, "class": "best-effort"}),
    );
    let took = started.elapsed();
    drop(hogs);
    assert_eq!(s, 201, "after {took:?}: {v}");
    let log = d.log_text();
    assert!(
        log.contains("the job's data load is starved of CPU in the background"),
        "admitted in {took:?} without being found starved; log:\n{log}"
    );
    println!("admitted beside {} spinning threads in {took:?}", 2 * cores);
}
