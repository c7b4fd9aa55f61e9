//! The daemon's `/v1` answers read back into the node's view types (as the command-line
//! client reads them) and written out again give the same JSON: every field the daemon
//! writes has a typed home, spelled the same both ways.

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use setpoint::node::{JobView, ServiceView, StatusView};

use crate::support::daemon;
use daemon::Daemon;

const SERVICE: &str = r#"
[[services]]
name = "mlp"
layers = [8, 16, 3]
seed = 3
[services.slo]
p99_ms = 50
"#;

/// `v` through `T` and back.
fn round_trip<T: DeserializeOwned + Serialize>(what: &str, v: &Value) -> Value {
    let typed: T = serde_json::from_value(v.clone())
        .unwrap_or_else(|e| panic!("{what} does not read as its view: {e}\n{v}"));
    serde_json::to_value(&typed).unwrap()
}

fn assert_round_trips<T: DeserializeOwned + Serialize>(what: &str, v: &Value) {
    assert_eq!(&round_trip::<T>(what, v), v, "{what}");
}

#[test]
fn every_v1_answer_reads_back_into_its_view_unchanged() {
    let d = Daemon::start(SERVICE);
    d.wait_ready();
    let spec = json!({
        "name": "blobs",
        "data": "synthetic:blobs:size=300,classes=3,features=8,seed=4",
        "layers": [8, 16, 3],
        "epochs": 2,
        "deadline": "5m",
        "checkpoint_every_steps": 5,
    });
    let (s, v) = d.send("POST", "/v1/jobs", &spec);
    assert_eq!(s, 201, "{v}");
    assert_round_trips::<JobView>("a submitted job", &v);
    let done = d.poll(Duration::from_secs(60), "the job to complete", || {
        let (_, v) = d.get("/v1/jobs/blobs");
        (v["state"] == "completed").then_some(v)
    });
    assert_eq!(done["stop_reason"], "epoch_limit");
    assert_round_trips::<JobView>("a completed job", &done);
    let (s, v) = d.send(
        "POST",
        "/v1/jobs/blobs/serve",
        &json!({"name": "blobs-svc", "slo": {"p99_ms": 20}}),
    );
    assert_eq!(s, 201, "{v}");
    assert_round_trips::<ServiceView>("a service published from a job", &v);
    let (_, v) = d.get("/v1/services/mlp");
    assert_round_trips::<ServiceView>("a service from the config", &v);
    let (_, list) = d.get("/v1/jobs");
    for j in list["jobs"].as_array().unwrap() {
        assert_round_trips::<JobView>("a listed job", j);
    }
    let (_, status) = d.get("/v1/status");
    assert_eq!(status["policy"], "setpoint");
    assert_eq!(status["tenants"].as_array().unwrap().len(), 3, "{status}");
    assert_round_trips::<StatusView>("the status", &status);
    // The service goes first: a job whose model is served cannot be removed. A removal's
    // answer is the job's last view and `removed`, which the view leaves out.
    let (s, v) = d.send("DELETE", "/v1/services/blobs-svc", &Value::Null);
    assert_eq!(s, 204, "{v}");
    let (s, v) = d.send("DELETE", "/v1/jobs/blobs?action=remove", &Value::Null);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["removed"], true);
    let mut job = v.clone();
    job.as_object_mut().unwrap().remove("removed");
    assert_eq!(round_trip::<JobView>("a removed job", &v), job);
}
