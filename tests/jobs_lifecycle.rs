//! A job's life at its ends, over the API: admission loads its data off the server's
//! threads and under a bound, and a job that has ended can be removed, freeing its name.

use crate::support::daemon;
use crate::support::slow_data;

use std::path::Path;
use std::time::Duration;

use daemon::Daemon;
use serde_json::{Value, json};

fn expect_error(got: (u16, Value), status: u16, message: &str) {
    assert_eq!(got.0, status, "{}", got.1);
    let m = got.1["error"].as_str().unwrap_or_default();
    assert!(m.contains(message), "expected {message:?} in {m:?}");
}

fn wait_state(d: &Daemon, name: &str, state: &str) -> Value {
    d.poll(Duration::from_secs(120), &format!("{name} {state}"), || {
        let (_, v) = d.get(&format!("/v1/jobs/{name}"));
        (v["state"] == state).then_some(v)
    })
}

/// The tests that load the slow file run one at a time, so that counting admission threads
/// counts their own.
static SLOW: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn slow() -> std::sync::MutexGuard<'static, ()> {
    SLOW.lock().unwrap_or_else(|p| p.into_inner())
}

#[test]
fn an_ended_job_is_removed_with_its_files_unless_served_and_its_name_is_free() {
    let d = Daemon::start("");
    let spec = |epochs: u32| {
        json!({"name": "j", "data": "synthetic:blobs:size=300,classes=3,features=8,seed=2",
               "layers": [8, 16, 3], "epochs": epochs, "checkpoint_every_steps": 2,
               "class": "best-effort"})
    };
    let (s, v) = d.send("POST", "/v1/jobs", &spec(2));
    assert_eq!(s, 201, "{v}");
    let done = wait_state(&d, "j", "completed");
    let dir = d.node.state_dir().join("jobs/j");
    // Its outcome is on disk by the time it shows as ended.
    assert!(dir.join("checkpoint.ckpt").exists() && dir.join("outcome.json").exists());
    assert!(d.metrics().contains("setpoint_job_steps_total{job=\"j\"}"));

    // A cancel of an ended job is refused, and says how to remove it.
    expect_error(
        d.send("DELETE", "/v1/jobs/j?action=cancel", &Value::Null),
        409,
        "job j has already ended (Completed); DELETE /v1/jobs/j without action=cancel removes it",
    );
    // Served from its checkpoint, it stays until the service goes.
    let (s, v) = d.send(
        "POST",
        "/v1/jobs/j/serve",
        &json!({"name": "m", "slo": {"p99_ms": 50}}),
    );
    assert_eq!(s, 201, "{v}");
    expect_error(
        d.send("DELETE", "/v1/jobs/j", &Value::Null),
        409,
        "job j cannot be removed: model m is served from its checkpoint; remove the service \
         first (DELETE /v1/services/m)",
    );
    assert_eq!(d.get("/v1/jobs/j").0, 200);
    assert!(dir.join("checkpoint.ckpt").exists());
    assert_eq!(d.send("DELETE", "/v1/services/m", &Value::Null).0, 204);

    // Removed: its final view, then gone from the list, the metrics and the state dir.
    let (s, v) = d.send("DELETE", "/v1/jobs/j", &Value::Null);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["removed"], true, "{v}");
    assert_eq!(
        (&v["name"], &v["state"]),
        (&json!("j"), &json!("completed"))
    );
    assert_eq!(v["steps"], done["steps"]);
    expect_error(d.get("/v1/jobs/j"), 404, "unknown job j");
    assert_eq!(d.get("/v1/jobs").1["jobs"], json!([]));
    let text = d.metrics();
    assert!(!text.contains("=\"j\""), "{text}");
    assert!(!dir.exists());
    let removed = d.node.state_dir().join("removed");
    assert_eq!(std::fs::read_dir(removed).unwrap().count(), 0);
    expect_error(
        d.send("DELETE", "/v1/jobs/j", &Value::Null),
        404,
        "unknown job j",
    );

    // The name is free, for a fresh job: one epoch from step 0, not the old job resumed
    // (which had two epochs done and would stop at once with its steps).
    let (s, v) = d.send("POST", "/v1/jobs", &spec(1));
    assert_eq!(s, 201, "{v}");
    let again = wait_state(&d, "j", "completed");
    assert_eq!(again["epochs_done"], 1, "{again}");
    assert_eq!(
        again["steps"].as_u64().unwrap() * 2,
        done["steps"].as_u64().unwrap(),
        "{again}"
    );
    assert!(again["restore_note"].is_null(), "{again}");
}

#[test]
fn a_job_that_has_not_ended_is_cancelled_not_removed() {
    let d = Daemon::start("");
    let (s, v) = d.send(
        "POST",
        "/v1/jobs",
        &json!({"name": "long", "data": "synthetic:blobs:size=2000,features=16",
                "layers": [16, 64, 10], "epochs": 100000, "checkpoint_every_steps": 5,
                "class": "best-effort"}),
    );
    assert_eq!(s, 201, "{v}");
    expect_error(
        d.send("DELETE", "/v1/jobs/long?action=remove", &Value::Null),
        409,
        "job long has not ended (",
    );
    expect_error(
        d.send("DELETE", "/v1/jobs/long?action=drop", &Value::Null),
        400,
        "unknown variant `drop`, expected `cancel` or `remove`",
    );
    // A plain DELETE cancels, as it always has: 200, the job listed, its checkpoint kept
    // (once it has trained: one cancelled before its first step has none).
    d.poll(Duration::from_secs(60), "a step", || {
        (d.get("/v1/jobs/long").1["steps"].as_u64() > Some(0)).then_some(())
    });
    let (s, v) = d.send("DELETE", "/v1/jobs/long", &Value::Null);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["removed"], false, "{v}");
    let ended = wait_state(&d, "long", "cancelled");
    let ckpt = ended["checkpoint"].as_str().unwrap().to_string();
    assert!(Path::new(&ckpt).exists());
    // Once ended, the pinned removal works.
    let (s, v) = d.send("DELETE", "/v1/jobs/long?action=remove", &Value::Null);
    assert_eq!((s, &v["removed"]), (200, &json!(true)), "{v}");
    assert!(!Path::new(&ckpt).exists());
    assert_eq!(d.get("/v1/jobs/long").0, 404);
}

#[test]
fn a_data_load_past_the_bound_is_refused_stopped_and_frees_the_name() {
    let _one = slow();
    let files = tempfile::tempdir().unwrap();
    let data = files.path().join("slow.csv.gz");
    slow_data::write_slow_csv_gz(&data);
    let d = Daemon::start(&format!("[paths]\ndata_dirs = [{:?}]\n", files.path()));
    d.node.set_data_load_timeout(Duration::from_millis(300));
    let spec = json!({"name": "slow", "data": data, "layers": [2, 2], "epochs": 1,
                      "class": "best-effort"});
    expect_error(
        d.send("POST", "/v1/jobs", &spec),
        503,
        &format!(
            "data: {} was not loaded within 300 ms (the bound on loading a job's data at \
             submission); the load was stopped and job slow was not admitted",
            data.display()
        ),
    );
    assert_eq!(d.get("/v1/jobs/slow").0, 404);
    assert!(!d.node.state_dir().join("jobs/slow").exists());
    // The abandoned load stops at its next read rather than reading on for minutes.
    d.poll(
        Duration::from_secs(60),
        "the stopped load's thread to end",
        || (slow_data::admission_threads("slow") == 0).then_some(()),
    );
    // The name is free.
    let (s, v) = d.send(
        "POST",
        "/v1/jobs",
        &json!({"name": "slow", "data": "synthetic:spirals", "layers": [2, 8, 3],
                "epochs": 1, "class": "best-effort"}),
    );
    assert_eq!(s, 201, "{v}");
}

#[test]
fn a_config_jobs_load_does_not_hold_the_server_and_shutdown_does_not_wait_for_it() {
    let _one = slow();
    let files = tempfile::tempdir().unwrap();
    let data = files.path().join("slow.csv.gz");
    slow_data::write_slow_csv_gz(&data);
    // The harness serves once the node has started: with the load in the start, not at all
    // until it ended.
    let d = Daemon::start(&format!(
        "[paths]\ndata_dirs = [{:?}]\n[[jobs]]\nname = \"slow\"\ndata = {:?}\nlayers = [2, 2]\n",
        files.path(),
        data
    ));
    assert_eq!(d.get("/v2/health/live").0, 200);
    // Its admission is still going on: the name is held, and nothing is listed yet.
    expect_error(
        d.send(
            "POST",
            "/v1/jobs",
            &json!({"name": "slow", "data": "synthetic:spirals", "layers": [2, 3]}),
        ),
        409,
        "a job named slow is being submitted already",
    );
    assert_eq!(d.get("/v1/jobs").1["jobs"], json!([]));
    assert!(slow_data::admission_threads("slow") > 0);
    // Shutdown gives the admission up instead of waiting minutes for the load.
    d.node.shutdown();
    assert!(d.node.jobs().is_empty());
    d.poll(
        Duration::from_secs(60),
        "the stopped load's thread to end",
        || (slow_data::admission_threads("slow") == 0).then_some(()),
    );
}
