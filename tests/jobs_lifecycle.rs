//! A job's life at its ends, over the API: admission loads its data off the server's
//! threads and under a bound.

#[path = "support/daemon.rs"]
mod daemon;
#[path = "support/slow_data.rs"]
mod slow_data;

use std::time::Duration;

use daemon::Daemon;
use serde_json::{Value, json};

fn expect_error(got: (u16, Value), status: u16, message: &str) {
    assert_eq!(got.0, status, "{}", got.1);
    let m = got.1["error"].as_str().unwrap_or_default();
    assert!(m.contains(message), "expected {message:?} in {m:?}");
}

/// The tests that load the slow file run one at a time, so that counting admission threads
/// counts their own.
static SLOW: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn slow() -> std::sync::MutexGuard<'static, ()> {
    SLOW.lock().unwrap_or_else(|p| p.into_inner())
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
        || (slow_data::admission_threads() == 0).then_some(()),
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
    assert!(slow_data::admission_threads() > 0);
    // Shutdown gives the admission up instead of waiting minutes for the load.
    d.node.shutdown();
    assert!(d.node.jobs().is_empty());
    d.poll(
        Duration::from_secs(60),
        "the stopped load's thread to end",
        || (slow_data::admission_threads() == 0).then_some(()),
    );
}
