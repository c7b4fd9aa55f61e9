//! Crash safety of the daemon binary: a job survives SIGKILL (resumed from its last
//! checkpoint, its acknowledged changes kept) and SIGTERM (checkpointed and resumed), and a
//! job that was cancelled stays cancelled after a restart; a removed job stays removed, and
//! a data load in progress does not hold the daemon past its drain.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use setpoint::model::checkpoint::Checkpoint;

use crate::support::slow_data;

use crate::support::child;
use child::{ChildDaemon, free_port, poll};

/// The tests here restart daemons on a fixed port; run side by side, one test's free port
/// can be taken by the other's daemon while the first is down, and its restart would then
/// talk to the wrong daemon. So they run one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// The daemon binary (see [`ChildDaemon`], which kills it when a test fails) on `config`,
/// its log appended to `log`: restarted on the same configuration, state directory and log.
fn start(config: &Path, log: &Path) -> ChildDaemon {
    let text = std::fs::read_to_string(config).unwrap();
    let port: u16 = text
        .lines()
        .find_map(|l| l.strip_prefix("listen = \"127.0.0.1:"))
        .and_then(|p| p.trim_end_matches('"').parse().ok())
        .unwrap();
    ChildDaemon::spawn(config, port, log, None, Duration::from_secs(10))
}

/// The job `j` as the API shows it.
fn job(d: &ChildDaemon) -> Value {
    d.send("GET", "/v1/jobs/j", None, None).1
}

fn terminate(d: ChildDaemon) -> std::process::ExitStatus {
    d.terminate(Duration::from_secs(60))
}

fn checkpoint_step(path: &Path) -> u64 {
    let c = setpoint::model::checkpoint::Checkpoint::load(path).unwrap();
    c.training.unwrap().meta.step
}

#[test]
fn jobs_survive_sigkill_and_sigterm_and_cancelled_jobs_stay_cancelled() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let state: PathBuf = dir.path().join("state");
    let config = dir.path().join("node.toml");
    let log = dir.path().join("daemon.log");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{}\"\nstate_dir = {:?}\n",
            free_port(),
            state
        ),
    )
    .unwrap();
    let ckpt = state.join("jobs/j/checkpoint.ckpt");

    let d = start(&config, &log);
    let (s, v) = d.send(
        "POST",
        "/v1/jobs",
        Some(&json!({
            "name": "j",
            "data": "synthetic:blobs:size=4000,classes=10,features=64",
            "layers": [64, 256, 256, 10],
            "epochs": 1000,
            "checkpoint_every_steps": 10,
            "class": "best-effort",
        })),
        None,
    );
    assert_eq!(s, 201, "{v}");
    poll(
        Duration::from_secs(60),
        "a checkpoint after 30 steps",
        || (ckpt.exists() && checkpoint_step(&ckpt) >= 30).then_some(()),
    );
    let (s, v) = d.send("PATCH", "/v1/jobs/j", Some(&json!({"epochs": 900})), None);
    assert_eq!(s, 200, "{v}");
    // A service added through the API, from a copy of the job's checkpoint.
    let model = dir.path().join("model.ckpt");
    std::fs::copy(&ckpt, &model).unwrap();
    let (s, v) = d.send(
        "POST",
        "/v1/services",
        Some(&json!({"name": "m", "checkpoint": model, "slo": {"p99_ms": 50}})),
        None,
    );
    assert_eq!(s, 201, "{v}");
    let before = job(&d)["steps"].as_u64().unwrap();

    // SIGKILL: nothing is flushed; the job comes back from its last checkpoint, with the
    // acknowledged change, losing at most one checkpoint interval.
    d.kill9();
    let saved = checkpoint_step(&ckpt);
    assert!(
        saved + 10 >= before.saturating_sub(10),
        "{saved} vs {before}"
    );
    let d = start(&config, &log);
    let v = poll(Duration::from_secs(60), "the job to resume", || {
        let v = job(&d);
        (v["state"] == "running" && v["steps"].as_u64() > Some(saved)).then_some(v)
    });
    assert_eq!(v["epochs_max"], 900, "{v}");
    assert!(v["steps"].as_u64().unwrap() > saved);
    poll(Duration::from_secs(30), "the restored service", || {
        (d.send("GET", "/v2/models/m/ready", None, None).0 == 200).then_some(())
    });

    // SIGTERM: the job checkpoints, the daemon exits 0, and the job resumes where it was.
    let status = terminate(d);
    assert!(status.success(), "{status:?}");
    let at_stop = checkpoint_step(&ckpt);
    assert!(at_stop > saved);
    let d = start(&config, &log);
    poll(
        Duration::from_secs(60),
        "the job to resume after SIGTERM",
        || {
            let v = job(&d);
            (v["state"] == "running" && v["steps"].as_u64() >= Some(at_stop)).then_some(())
        },
    );

    // A cancel is an outcome: after a crash the job is listed as cancelled, not resumed.
    let (s, _) = d.send("DELETE", "/v1/jobs/j", None, None);
    assert_eq!(s, 200);
    poll(Duration::from_secs(30), "the job to stop", || {
        (job(&d)["state"] == "cancelled").then_some(())
    });
    d.kill9();
    let d = start(&config, &log);
    std::thread::sleep(Duration::from_millis(500));
    let v = job(&d);
    assert_eq!(v["state"], "cancelled", "{v}");
    let steps = v["steps"].as_u64().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        job(&d)["steps"].as_u64().unwrap(),
        steps,
        "a cancelled job took steps"
    );
    d.kill9();
}

#[test]
fn a_corrupt_latest_checkpoint_falls_back_to_the_previous_one() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let state: PathBuf = dir.path().join("state");
    let config = dir.path().join("node.toml");
    let log = dir.path().join("daemon.log");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{}\"\nstate_dir = {:?}\n",
            free_port(),
            state
        ),
    )
    .unwrap();
    let ckpt = state.join("jobs/j/checkpoint.ckpt");
    let prev = state.join("jobs/j/checkpoint.prev.ckpt");

    let d = start(&config, &log);
    let (s, v) = d.send(
        "POST",
        "/v1/jobs",
        Some(&json!({
            "name": "j",
            "data": "synthetic:blobs:size=4000,classes=10,features=64",
            "layers": [64, 256, 256, 10],
            "epochs": 1000,
            "checkpoint_every_steps": 10,
            "class": "best-effort",
        })),
        None,
    );
    assert_eq!(s, 201, "{v}");
    poll(Duration::from_secs(60), "two checkpoints", || {
        (prev.exists() && ckpt.exists() && checkpoint_step(&prev) >= 10).then_some(())
    });
    d.kill9();
    let prev_step = checkpoint_step(&prev);
    let latest_step = checkpoint_step(&ckpt);
    // Equal when the kill came between keeping the old latest and writing the new one.
    assert!(latest_step >= prev_step, "{latest_step} vs {prev_step}");

    // Damage the latest as a torn write or a bad disk would: one flipped byte in its tensors.
    // It is written as a new file: a kill between keeping the old latest (a hard link) and
    // writing the new one leaves both names on one inode, and an in-place write would damage
    // the previous checkpoint too.
    let mut bytes = std::fs::read(&ckpt).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    let damaged = ckpt.with_extension("damaged");
    std::fs::write(&damaged, &bytes).unwrap();
    std::fs::rename(&damaged, &ckpt).unwrap();

    let d = start(&config, &log);
    let v = poll(Duration::from_secs(60), "the job to resume", || {
        let v = job(&d);
        (v["state"] == "running" && v["steps"].as_u64() > Some(prev_step)).then_some(v)
    });
    let note = v["restore_note"].as_str().unwrap_or_default();
    assert!(note.contains("checksum mismatch"), "{v}");
    assert!(
        note.contains(&format!(
            "resumed from the previous one, at step {prev_step}"
        )),
        "{note}"
    );
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("the latest checkpoint could not be used"),
        "{logged}"
    );
    // Checkpointing goes on, and the damaged file is replaced without being kept.
    poll(Duration::from_secs(60), "a new checkpoint", || {
        Checkpoint::load(&ckpt)
            .ok()
            .filter(|c| c.training.as_ref().unwrap().meta.step > latest_step)
            .map(|_| ())
    });
    assert!(checkpoint_step(&prev) >= prev_step);
    d.kill9();

    // Both checkpoints gone: the job starts again from step 0, and says so.
    let last = checkpoint_step(&ckpt);
    std::fs::remove_file(&ckpt).unwrap();
    std::fs::remove_file(&prev).unwrap();
    let d = start(&config, &log);
    let v = poll(Duration::from_secs(60), "the job to start over", || {
        let v = job(&d);
        (v["state"] == "running").then_some(v)
    });
    let note = v["restore_note"].as_str().unwrap_or_default();
    assert!(
        note.starts_with("both checkpoints are missing (the last was written at step ")
            && note.ends_with("training starts again from step 0"),
        "{v}"
    );
    let written: u64 = note
        .split("step ")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .and_then(|s| s.parse().ok())
        .unwrap();
    // The record trails the checkpoint by one write: a kill between them leaves the one before.
    assert!(written > 0 && written <= last, "{written} vs {last}");
    assert!(
        std::fs::read_to_string(&log)
            .unwrap()
            .contains("both checkpoints are missing"),
    );
    d.kill9();
}

#[test]
fn sigterm_fails_requests_still_running_after_the_drain_timeout_and_exits_0() {
    let _one_at_a_time = serial();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("node.toml");
    let log = dir.path().join("serve.log");
    // A model slow enough per row (three 4096-wide layers, batch 1) that a queue of tens of
    // requests takes far longer than the drain timeout to answer.
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{port}\"\nstate_dir = {:?}\ndrain_timeout_ms = 50\n\
             [[services]]\nname = \"slow\"\nlayers = [8, 4096, 4096, 4096, 3]\nmax_queue = 1000\n\
             slo = {{ p99_ms = 60000 }}\nbatching = {{ max_batch_size = 1, max_queue_delay_ms = 0 }}\n",
            dir.path().join("state")
        ),
    )
    .unwrap();
    let d = start(&config, &log);
    poll(Duration::from_secs(60), "the service to load", || {
        (d.send("GET", "/v2/health/ready", None, None).0 == 200).then_some(())
    });
    let url = format!("{}/v2/models/slow/infer", d.url);
    let body = json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 8],
        "data": [0.5, 0.25, 0.0, 1.0, -1.0, 2.0, 0.125, 3.0]}]});
    let senders: Vec<_> = (0..80)
        .map(|_| {
            let url = url.clone();
            let body = body.clone();
            std::thread::spawn(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .timeout_global(Some(Duration::from_secs(60)))
                    .build()
                    .into();
                agent
                    .post(&url)
                    .send_json(&body)
                    .map(|r| r.status().as_u16())
                    .map_err(|e| e.to_string())
            })
        })
        .collect();
    poll(Duration::from_secs(30), "a queue of 40 requests", || {
        let (_, s) = d.send("GET", "/v1/status", None, None);
        let queued = s["tenants"]
            .as_array()?
            .iter()
            .find(|t| t["name"] == "slow")?["queue_len"]
            .as_u64()?;
        (queued >= 40).then_some(())
    });
    let status = terminate(d);
    assert!(status.success(), "exit status {status:?}");
    let results: Vec<_> = senders.into_iter().map(|t| t.join().unwrap()).collect();
    let failed = results.iter().filter(|r| r.is_err()).count();
    assert!(
        results.iter().all(|r| matches!(r, Ok(200) | Err(_))),
        "{results:?}"
    );
    assert!(
        failed > 0,
        "every request was answered; the drain timeout was not reached: {results:?}"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("requests still in flight 50 ms after the stop signal (drain_timeout_ms): closed their connections"),
        "{text}"
    );
    assert!(text.contains("stopped"), "{text}");
}

fn small_job(epochs: u32) -> Value {
    json!({"name": "j", "data": "synthetic:blobs:size=300,classes=3,features=8,seed=2",
           "layers": [8, 16, 3], "epochs": epochs, "class": "best-effort"})
}

#[test]
fn a_removed_job_stays_removed_after_a_restart_and_its_name_is_free() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let state: PathBuf = dir.path().join("state");
    let config = dir.path().join("node.toml");
    let log = dir.path().join("daemon.log");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{}\"\nstate_dir = {:?}\n",
            free_port(),
            state
        ),
    )
    .unwrap();
    let d = start(&config, &log);
    let (s, v) = d.send("POST", "/v1/jobs", Some(&small_job(2)), None);
    assert_eq!(s, 201, "{v}");
    let done = poll(Duration::from_secs(60), "the job to complete", || {
        let v = job(&d);
        (v["state"] == "completed").then_some(v)
    });
    // A copy of its directory, to stand for a removal a crash cut short after its rename.
    let job_dir = state.join("jobs/j");
    let cut_short = state.join("removed/j.1.0");
    std::fs::create_dir_all(&cut_short).unwrap();
    for f in ["job.json", "outcome.json", "checkpoint.ckpt"] {
        std::fs::copy(job_dir.join(f), cut_short.join(f)).unwrap();
    }
    let (s, v) = d.send("DELETE", "/v1/jobs/j", None, None);
    assert_eq!((s, &v["removed"]), (200, &json!(true)), "{v}");
    assert!(!job_dir.exists());
    d.kill9();

    // After a restart the job is not back, and what the crash left is deleted.
    let d = start(&config, &log);
    assert_eq!(d.send("GET", "/v1/jobs/j", None, None).0, 404);
    assert_eq!(d.send("GET", "/v1/jobs", None, None).1["jobs"], json!([]));
    assert!(!cut_short.exists());
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("deleted the files of a removed job whose deletion a crash interrupted"),
        "{logged}"
    );
    // The name takes a fresh job: one epoch from step 0, not the old one's checkpoint.
    let (s, v) = d.send("POST", "/v1/jobs", Some(&small_job(1)), None);
    assert_eq!(s, 201, "{v}");
    let again = poll(Duration::from_secs(60), "the new job to complete", || {
        let v = job(&d);
        (v["state"] == "completed").then_some(v)
    });
    assert_eq!(
        again["steps"].as_u64().unwrap() * 2,
        done["steps"].as_u64().unwrap(),
        "{again}"
    );
    assert!(again["restore_note"].is_null(), "{again}");
    d.kill9();
}

#[test]
fn sigterm_during_a_slow_data_load_exits_after_the_drain_admitting_nothing() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let state: PathBuf = dir.path().join("state");
    let config = dir.path().join("node.toml");
    let log = dir.path().join("daemon.log");
    // Beside the config file: a directory data may be read from.
    let data = dir.path().join("slow.csv.gz");
    slow_data::write_slow_csv_gz(&data);
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{}\"\nstate_dir = {:?}\ndrain_timeout_ms = 200\n",
            free_port(),
            state
        ),
    )
    .unwrap();
    let d = start(&config, &log);
    let spec = json!({"name": "slow", "data": data, "layers": [2, 2], "class": "best-effort"});
    let url = format!("{}/v1/jobs", d.url);
    let body = spec.clone();
    let submission = std::thread::spawn(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(600)))
            .build()
            .into();
        agent
            .post(&url)
            .send_json(&body)
            .map(|r| r.status().as_u16())
            .map_err(|e| e.to_string())
    });
    poll(Duration::from_secs(30), "the load to start", || {
        let logged = std::fs::read_to_string(&log).unwrap_or_default();
        logged
            .contains("loading the job's data for admission")
            .then_some(())
    });
    // While it loads the node answers, and the name is held.
    assert_eq!(d.send("GET", "/v2/health/live", None, None).0, 200);
    let (s, v) = d.send("POST", "/v1/jobs", Some(&spec), None);
    assert_eq!(s, 409, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap_or_default()
            .contains("a job named slow is being submitted already"),
        "{v}"
    );
    // The load would take minutes; the daemon stops after the drain instead.
    let status = terminate(d);
    assert!(status.success(), "{status:?}");
    let answer = submission.join().unwrap();
    assert!(matches!(answer, Err(_) | Ok(503)), "{answer:?}");
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("closed their connections"), "{logged}");
    // Given up for the shutdown, not at the bound on loading.
    assert!(
        logged.contains("the node is shutting down; job slow was not admitted"),
        "{logged}"
    );
    assert!(logged.contains("stopped"), "{logged}");
    assert!(!state.join("jobs/slow").exists());
}
