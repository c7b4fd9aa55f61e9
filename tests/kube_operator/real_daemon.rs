//! The tenant pod's command and the status writer against a real daemon (the binary's own
//! `setpoint::daemon::run` on a loopback port), given the tenants as the node side admits
//! them: the bodies the operator renders into a claim's parameters.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};
use setpoint::kube::operator::render::{job_body, service_body};
use setpoint::kube::operator::status::pass;
use setpoint::kube::operator::{Context, Settings};

use super::daemon::{Daemon, write_checkpoint};
use super::support::*;

fn tenant(d: &Daemon, name: &str, kind: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_setpoint"));
    c.args(["tenant", "--interval", "100ms", "--grace", "2s"])
        .env("SETPOINT_ENDPOINT", &d.url)
        .env("SETPOINT_TENANT", name)
        .env("SETPOINT_TENANT_KIND", kind)
        .env_remove("SETPOINT_AUTH_TOKEN");
    c
}

/// A small job, admitted as the node admits a claim's job.
pub fn admit_job(d: &Daemon) -> setpoint::kube::operator::crd::SetpointJob {
    let mut spec = job_spec();
    spec.data = "synthetic:blobs:size=2000".into();
    spec.layers = vec![64, 32, 10];
    spec.epochs = Some(3);
    (spec.deadline, spec.target_accuracy) = (None, None);
    (spec.optimizer, spec.momentum) = (None, None);
    let job = job_cr("quick", "u-quick", spec);
    let body = job_body(&job.spec, "ml.quick", std::time::UNIX_EPOCH).unwrap();
    let (s, v) = d.send("POST", "/v1/jobs", &Value::Object(body));
    assert_eq!(s, 201, "{v}");
    job
}

/// One status pass over `job`, its pod running on this host: the status written.
pub fn status_of(d: &Daemon, job: setpoint::kube::operator::crd::SetpointJob) -> Value {
    let port: u16 = d.url.rsplit(':').next().unwrap().parse().unwrap();
    let pod: Pod = serde_json::from_value(pod(
        "quick-job",
        "u-quick",
        Some("node-a"),
        json!({"phase": "Running", "hostIP": "127.0.0.1"}),
    ))
    .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let path = "/apis/setpoint.dev/v1/namespaces/ml/setpointjobs/quick/status";
        let (client, server) = scripted(vec![Step::status_any(path)]);
        let settings = Settings {
            daemon_port: port,
            ..settings()
        };
        let ctx = Context::new(client, settings);
        let report = pass(&ctx, &[Arc::new(job)], &[], &[pod]).await;
        drop(ctx);
        let written = server.finish().await;
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        written[0]["status"].clone()
    })
}

/// Follows a job to its end (exit 0), then a service until the node drops it (exit 1).
pub fn follow_a_job_and_a_service() {
    let d = Daemon::start("");
    let job = admit_job(&d);
    let status = status_of(&d, job);
    assert_eq!(status["tenant"], "ml.quick", "{status}");
    assert_eq!(status["node"], "node-a", "{status}");
    let state = status["state"].as_str().unwrap_or_default();
    assert!(
        ["pending", "loading", "running", "completed"].contains(&state),
        "{status}"
    );
    assert!(status["progress"].is_number(), "{status}");

    let out = tenant(&d, "ml.quick", "job").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.starts_with("job ml.quick completed"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let ckpt = d.node.state_dir().join("mlp.ckpt");
    write_checkpoint(&ckpt, &[8, 16, 3]);
    let mut spec = service_spec(1);
    spec.checkpoint = ckpt.display().to_string();
    let body = service_body(&spec, "ml.mlp").unwrap();
    let (s, v) = d.send("POST", "/v1/services", &Value::Object(body));
    assert_eq!(s, 201, "{v}");
    let mut child = tenant(&d, "ml.mlp", "service")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the service's tenant command ended while the node served it"
    );
    let (s, _) = d.send("DELETE", "/v1/services/ml.mlp", &Value::Null);
    assert_eq!(s, 204);
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "still running after the node dropped the service"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("the node no longer knows this tenant"),
        "{stderr}"
    );

    // Outside a prepared pod it says what it needs.
    let out = Command::new(env!("CARGO_BIN_EXE_setpoint"))
        .arg("tenant")
        .env_remove("SETPOINT_ENDPOINT")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("SETPOINT_ENDPOINT is not set"), "{stderr}");
}
