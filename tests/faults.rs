//! A device fault stays local: a fault injected into the CPU device's backend fails that
//! device and its tenants (the job with the device's error, its checkpoint kept; the service
//! with 503 naming the device), while the daemon, its API and other devices keep running,
//! and it shuts down cleanly. The daemon is the real binary over HTTP; the fault is injected
//! with the fault drill route, which arms the device's shared health so that the lanes' next
//! backend operation fails, the path a sticky driver error takes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use setpoint::device::fault::DeviceHealth;
use setpoint::device::{CpuBackend, DeviceError};
use setpoint::model::MlpParams;
use setpoint::model::checkpoint::Checkpoint;
use setpoint::serve::{BatchConfig, InferenceService, ServeError, ServedModel};

const TOKEN: &str = "drill-token";
const REASON: &str = "CUDA_ERROR_ILLEGAL_ADDRESS (an illegal memory access was encountered)";
const DATA: &str = "synthetic:blobs:size=2000,classes=3,features=8";

use crate::support::promtool;
use promtool::promtool_check;

use crate::support::child;
use child::{ChildDaemon, free_port, poll};

/// The daemon binary (see [`ChildDaemon`]) on `config`, its log appended to `log`.
fn start(config: &Path, port: u16, log: &Path) -> ChildDaemon {
    ChildDaemon::spawn(config, port, log, None, Duration::from_secs(30))
}

/// A POST, with the node's bearer token when `token`.
fn post(d: &ChildDaemon, path: &str, body: &Value, token: bool) -> (u16, Value) {
    d.send("POST", path, Some(body), token.then_some(TOKEN))
}

fn infer(d: &ChildDaemon) -> (u16, Value) {
    let row: Vec<f32> = (0..8).map(|j| j as f32 * 0.25 - 1.0).collect();
    d.infer("mlp", &row)
}

/// The job `j` as the API shows it.
fn job_view(d: &ChildDaemon) -> Value {
    d.get_json("/v1/jobs/j").1
}

fn terminate(d: ChildDaemon) -> std::process::ExitStatus {
    d.terminate(Duration::from_secs(120))
}

fn checkpoint_step(path: &Path) -> u64 {
    Checkpoint::load(path).unwrap().training.unwrap().meta.step
}

fn write_config(path: &Path, port: u16, state: &Path) {
    std::fs::write(
        path,
        format!(
            r#"listen = "127.0.0.1:{port}"
state_dir = {state:?}
auth_token = "{TOKEN}"

[[services]]
name = "mlp"
layers = [8, 16, 3]
seed = 3
[services.slo]
p99_ms = 50
[services.batching]
max_batch_size = 8
max_queue_delay_ms = 1
"#
        ),
    )
    .unwrap();
}

/// The device's error as every tenant reports it.
fn device_error() -> String {
    format!("device cpu has failed: {REASON} (injected by a fault drill); its tenants were stopped")
}

#[test]
fn a_device_fault_fails_its_tenants_and_the_daemon_keeps_running() {
    let dir = tempfile::tempdir().unwrap();
    let state: PathBuf = dir.path().join("state");
    let config = dir.path().join("node.toml");
    let log = dir.path().join("daemon.log");
    let port = free_port();
    write_config(&config, port, &state);
    let ckpt = state.join("jobs/j/checkpoint.ckpt");

    let d = start(&config, port, &log);
    poll(Duration::from_secs(120), "the service to load", || {
        (d.get_json("/v2/health/ready").0 == 200).then_some(())
    });
    let (s, v) = post(
        &d,
        "/v1/jobs",
        &json!({
            "name": "j",
            "data": DATA,
            "layers": [8, 64, 3],
            "epochs": 100000,
            "checkpoint_every_steps": 5,
            "class": "best-effort",
        }),
        true,
    );
    assert_eq!(s, 201, "{v}");
    poll(
        Duration::from_secs(120),
        "a checkpoint after 10 steps",
        || (ckpt.exists() && checkpoint_step(&ckpt) >= 10).then_some(()),
    );
    let (s, v) = infer(&d);
    assert_eq!(s, 200, "{v}");
    let (s, v) = d.get_json("/v1/status");
    assert_eq!(s, 200);
    assert_eq!(v["devices"][0]["state"], "ok", "{v}");
    assert_eq!(v["devices"][0]["reason"], Value::Null, "{v}");
    let (_, metrics) = d.get_text("/metrics");
    assert!(metrics.contains("setpoint_device_up{device=\"cpu\"} 1\n"));
    // The control loop decides for both tenants while the device works.
    const SVC_DECIDED: &str = "setpoint_tenant_requested_share_ratio{tenant=\"mlp\"";
    const JOB_DECIDED: &str = "setpoint_tenant_requested_share_ratio{tenant=\"j\"";
    poll(
        Duration::from_secs(60),
        "a tick deciding both tenants",
        || {
            let (_, m) = d.get_text("/metrics");
            (m.contains(SVC_DECIDED) && m.contains(JOB_DECIDED)).then_some(())
        },
    );

    // The drill changes the node: it needs the token, and names only devices that exist.
    let (s, v) = post(
        &d,
        "/v1/devices/cpu/fail",
        &json!({"reason": REASON}),
        false,
    );
    assert_eq!(s, 401, "{v}");
    let (s, v) = post(
        &d,
        "/v1/devices/cuda:7/fail",
        &json!({"reason": REASON}),
        true,
    );
    assert_eq!(s, 404, "{v}");
    assert_eq!(v["error"], "unknown device cuda:7 (this node has: cpu)");
    let (s, v) = post(&d, "/v1/devices/cpu/fail", &json!({"after": 0}), true);
    assert_eq!(s, 400, "{v}");
    assert_eq!(
        job_view(&d)["state"],
        "running",
        "a refused drill changed nothing"
    );

    // The fault: the lanes' next backend operation on the CPU device fails, as a sticky
    // driver error would.
    let (s, v) = post(
        &d,
        "/v1/devices/cpu/fail",
        &json!({"reason": REASON, "after_ops": 0}),
        true,
    );
    assert_eq!(s, 202, "{v}");
    assert_eq!(v["device"], "cpu", "{v}");
    assert_eq!(v["after_ops"], 0, "{v}");

    // The job fails with the device's error; its checkpoint stays, and can be resumed.
    let job = poll(Duration::from_secs(60), "the job to fail", || {
        let v = job_view(&d);
        (v["state"] == "failed").then_some(v)
    });
    assert_eq!(job["error"], device_error(), "{job}");
    assert_eq!(job["share"], 0.0, "{job}");
    // The record is written just after the state changes.
    let outcome: Value = poll(Duration::from_secs(30), "the job's outcome record", || {
        let bytes = std::fs::read(state.join("jobs/j/outcome.json")).ok()?;
        serde_json::from_slice(&bytes).ok()
    });
    assert_eq!(outcome["state"], "failed", "{outcome}");
    assert_eq!(outcome["error"], device_error(), "{outcome}");
    let saved = checkpoint_step(&ckpt);
    assert!(saved >= 10, "checkpoint at step {saved}");

    // The service answers 503 naming the device and its error; the daemon still answers.
    let (s, v) = infer(&d);
    assert_eq!(s, 503, "{v}");
    assert_eq!(
        v["error"],
        format!("model mlp is not available: {}", device_error())
    );
    let (s, v) = d.get_json("/v2/models/mlp/ready");
    assert_eq!(s, 503, "{v}");
    assert_eq!(d.get_json("/v2/health/ready").0, 503);
    assert_eq!(d.get_json("/v2/health/live").0, 200);

    // Status and metrics show the device failed, with the reason and when.
    let (s, st) = d.get_json("/v1/status");
    assert_eq!(s, 200);
    let dev = &st["devices"][0];
    assert_eq!(dev["name"], "cpu", "{st}");
    assert_eq!(dev["state"], "failed", "{st}");
    assert_eq!(
        dev["reason"],
        format!("{REASON} (injected by a fault drill)"),
        "{st}"
    );
    let failed_at = setpoint::config::parse_rfc3339(dev["failed_at"].as_str().unwrap()).unwrap();
    assert!(failed_at <= std::time::SystemTime::now());
    assert_eq!(dev["share_assigned"], 0.0, "{st}");
    assert_eq!(st["ready"], false, "{st}");
    let tenants = st["tenants"].as_array().unwrap();
    let svc = tenants.iter().find(|t| t["kind"] == "service").unwrap();
    assert_eq!(svc["state"], "failed", "{st}");
    assert_eq!(svc["share"], 0.0, "{st}");
    let (_, v) = d.get_json("/v1/services/mlp");
    assert_eq!(v["state"], "failed", "{v}");
    assert_eq!(v["error"], device_error(), "{v}");
    let (s, metrics) = d.get_text("/metrics");
    assert_eq!(s, 200);
    assert!(
        metrics.contains("setpoint_device_up{device=\"cpu\"} 0\n"),
        "{metrics}"
    );
    assert!(metrics.contains("setpoint_ready 0\n"), "{metrics}");
    promtool_check(&metrics);
    // The control loop gives the failed device's tenants nothing: after a tick that began
    // once it had failed, they are in no decision.
    let ticks = |d: &ChildDaemon| {
        d.get_json("/v1/status").1["control_ticks"]
            .as_u64()
            .unwrap()
    };
    let failed_by = ticks(&d);
    poll(Duration::from_secs(60), "two more control ticks", || {
        (ticks(&d) >= failed_by + 2).then_some(())
    });
    let (_, metrics) = d.get_text("/metrics");
    assert!(
        !metrics.contains(SVC_DECIDED) && !metrics.contains(JOB_DECIDED),
        "{metrics}"
    );

    // `setpoint status` shows it too.
    let out = Command::new(env!("CARGO_BIN_EXE_setpoint"))
        .args(["status", "--url", &d.url])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let row = text.lines().find(|l| l.starts_with("cpu ")).unwrap();
    assert!(row.contains("failed"), "{text}");
    assert!(
        text.contains(&format!(
            ": {REASON} (injected by a fault drill); its tenants were stopped (restart the \
             daemon to use it again)"
        )),
        "{text}"
    );

    // Nothing new is admitted on it: with no other device, new tenants get 503 naming it.
    let (s, v) = post(
        &d,
        "/v1/jobs",
        &json!({"name": "k", "data": DATA, "layers": [8, 16, 3], "epochs": 1}),
        true,
    );
    assert_eq!(s, 503, "{v}");
    let refusal = format!(
        "no device can take a new tenant: {}; restart the daemon to use it again",
        device_error()
    );
    assert_eq!(v["error"], refusal);
    let model = state.join("model.ckpt");
    std::fs::copy(&ckpt, &model).unwrap();
    let (s, v) = post(
        &d,
        "/v1/services",
        &json!({"name": "m", "checkpoint": model, "slo": {"p99_ms": 50}}),
        true,
    );
    assert_eq!(s, 503, "{v}");
    assert_eq!(v["error"], refusal);
    // A device fails once: the first reason stays.
    let (s, v) = post(
        &d,
        "/v1/devices/cpu/fail",
        &json!({"reason": "again"}),
        true,
    );
    assert_eq!(s, 409, "{v}");
    assert_eq!(v["error"], device_error());
    // A reload cannot bring the service back: no device is left to start it on.
    let (s, v) = post(&d, "/v1/reload", &Value::Null, true);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["services_retried"], json!(["mlp"]), "{v}");
    let v = poll(Duration::from_secs(60), "the retry to fail", || {
        let (_, v) = d.get_json("/v1/services/mlp");
        (v["state"] == "failed" && v["error"] != device_error()).then_some(v)
    });
    assert_eq!(
        v["error"], refusal,
        "the retried load says why it failed: {v}"
    );

    // SIGTERM: the daemon stops cleanly.
    let status = terminate(d);
    assert!(status.success(), "{status:?}");

    // The checkpoint the failed job kept resumes.
    let resumed = dir.path().join("resumed.ckpt");
    let out = Command::new(env!("CARGO_BIN_EXE_setpoint"))
        .args(["train", "--data", DATA, "--json"])
        .arg("--resume")
        .arg(&ckpt)
        .arg("--checkpoint")
        .arg(&resumed)
        .args(["--epochs", &(saved / 25 + 2).to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(checkpoint_step(&resumed) > saved);

    // A restart brings the device and the config's service back; the job stays failed.
    let d = start(&config, port, &log);
    poll(
        Duration::from_secs(120),
        "the restarted node to be ready",
        || (d.get_json("/v2/health/ready").0 == 200).then_some(()),
    );
    let (s, v) = infer(&d);
    assert_eq!(s, 200, "{v}");
    let (_, st) = d.get_json("/v1/status");
    assert_eq!(st["devices"][0]["state"], "ok", "{st}");
    let job = job_view(&d);
    assert_eq!(job["state"], "failed", "{job}");
    assert_eq!(job["error"], device_error(), "{job}");
    let status = terminate(d);
    assert!(status.success(), "{status:?}");
}

fn served_model() -> ServedModel {
    ServedModel {
        params: MlpParams::init(&[8, 16, 3], 3).unwrap(),
        normalizer: setpoint::data::Normalizer::identity(8),
    }
}

#[test]
fn a_batch_on_a_failed_device_answers_503_and_other_devices_keep_serving() {
    let gpu0 = Arc::new(DeviceHealth::new("cuda:0"));
    let gpu1 = Arc::new(DeviceHealth::new("cuda:1"));
    let start = |h: &Arc<DeviceHealth>, name: &str| {
        let backend = CpuBackend::with_health(h.clone(), 1, false).unwrap();
        InferenceService::start(name, backend, served_model(), BatchConfig::default()).unwrap()
    };
    let a = start(&gpu0, "a");
    let b = start(&gpu1, "b");
    let row = vec![0.5f32; 8];
    let before = b.infer_blocking(row.clone()).unwrap();
    a.infer_blocking(row.clone()).unwrap();

    gpu0.inject_after(0, REASON.into());
    let err = a.infer_blocking(row.clone()).unwrap_err();
    let message = format!("device cuda:0 has failed: {REASON}; its tenants were stopped");
    assert_eq!(
        err,
        ServeError::DeviceFailed {
            service: "a".into(),
            message: message.clone()
        }
    );
    let api = setpoint::api::http::ApiError::from(err);
    assert_eq!(api.status.as_u16(), 503);
    assert_eq!(api.message, format!("service a: {message}"));
    // Sticky: the next batch fails the same way, and counts as failed.
    assert!(matches!(
        a.infer_blocking(row.clone()),
        Err(ServeError::DeviceFailed { .. })
    ));
    assert_eq!(a.stats().failure_count, 2);
    assert!(matches!(
        gpu0.check(),
        Err(DeviceError::Failed { device, .. }) if device == "cuda:0"
    ));

    // The other device's service answers as before, bit for bit.
    assert_eq!(b.infer_blocking(row).unwrap().output, before.output);
    assert!(!gpu1.is_failed());
    a.shutdown();
    b.shutdown();
}
