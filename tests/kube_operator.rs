//! The operator (`setpoint operator`, `src/kube/operator/`) against a scripted API server:
//! each test lists the requests the reconcile loop or the status writer must make (method,
//! path, query, and for server-side apply the whole patch) with the answers to give, and fails
//! on any request out of script. The status writer reads a real HTTP server standing for a
//! node's daemon. The objects the operator emits and the committed manifests are checked
//! against Kubernetes' published schemas (`scripts/kube-validate.sh`).
#![cfg(feature = "kubernetes")]

use crate::support::daemon;
use crate::support::kube_validate;
#[path = "kube_operator/real_daemon.rs"]
mod real_daemon;
#[path = "kube_operator/scenario.rs"]
mod scenario;
#[path = "kube_operator/schema.rs"]
mod schema;
#[path = "kube_operator/support.rs"]
mod support;

use std::sync::Arc;

use scenario::*;
use schema::*;
use serde_json::json;
use setpoint::kube::operator::crd::{JobPhase, SetpointJob, SetpointJobStatus};
use setpoint::kube::operator::reconcile::{reconcile_job, reconcile_service};
use setpoint::kube::operator::status::pass;
use setpoint::kube::operator::{Context, Settings};
use support::*;

#[test]
fn the_committed_crds_are_what_the_code_generates() {
    let dir = repo().join("deploy/kubernetes/crds");
    let files = setpoint::kube::operator::crd::crd_files();
    assert_eq!(files.len(), 2);
    for (name, text) in files {
        let path = dir.join(&name);
        if std::env::var_os("SETPOINT_UPDATE_CRDS").is_some() {
            std::fs::write(&path, &text).unwrap();
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == text,
            "deploy/kubernetes/crds/{name} differs from the CRD src/kube/operator/crd.rs \
             generates; write it again with `SETPOINT_UPDATE_CRDS=1 cargo test --features \
             kubernetes --test integration kube_operator::`"
        );
    }
}

#[tokio::test]
async fn a_job_is_applied_as_its_claim_template_and_its_pod() {
    let job = Arc::new(job_cr("mnist", "u-job", job_spec()));
    let steps = vec![
        Step::apply(
            "/apis/resource.k8s.io/v1/namespaces/ml/resourceclaimtemplates/mnist-job",
            expected_job_template(),
        ),
        Step::apply("/api/v1/namespaces/ml/pods/mnist-job", expected_job_pod()),
    ];
    let (client, server) = scripted(steps);
    let ctx = Arc::new(Context::new(client, settings()));
    let action = reconcile_job(job, ctx.clone()).await;
    drop(ctx);
    server.finish().await;
    assert_eq!(
        action.unwrap(),
        kube::runtime::controller::Action::requeue(std::time::Duration::from_secs(600))
    );
}

#[tokio::test]
async fn a_job_the_node_schema_refuses_gets_its_reason_in_its_status_and_nothing_else() {
    let mut spec = job_spec();
    spec.target_accuracy = Some(1.5);
    let job = Arc::new(job_cr("bad", "u-bad", spec));
    let steps = vec![Step::status(
        "/apis/setpoint.dev/v1/namespaces/ml/setpointjobs/bad/status",
        json!({"apiVersion": "setpoint.dev/v1", "kind": "SetpointJob", "status": {
            "phase": "Failed",
            "message": "spec is invalid: targetAccuracy: must be <= 1, got 1.5"}}),
    )];
    let (client, server) = scripted(steps);
    let ctx = Arc::new(Context::new(client, settings()));
    let r = reconcile_job(job, ctx.clone()).await;
    drop(ctx);
    server.finish().await;
    r.unwrap();
}

#[tokio::test]
async fn a_job_that_ended_is_not_started_again() {
    let mut job = job_cr("done", "u-done", job_spec());
    job.status = Some(SetpointJobStatus {
        phase: Some(JobPhase::Completed),
        ..SetpointJobStatus::default()
    });
    let (client, server) = scripted(vec![]);
    let ctx = Arc::new(Context::new(client, settings()));
    let r = reconcile_job(Arc::new(job), ctx.clone()).await;
    drop(ctx);
    server.finish().await;
    r.unwrap();
}

#[tokio::test]
async fn a_service_gets_its_template_service_and_pods_and_a_failed_pod_is_replaced() {
    let svc = Arc::new(service_cr("mlp", "u-svc", 2));
    let failed = pod(
        "mlp-svc-1",
        "u-svc",
        Some("node-b"),
        json!({"phase": "Failed", "hostIP": "10.0.0.2"}),
    );
    let steps = vec![
        Step::apply_any("/apis/resource.k8s.io/v1/namespaces/ml/resourceclaimtemplates/mlp-svc"),
        Step::apply(
            "/api/v1/namespaces/ml/services/mlp",
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {
                "name": "mlp", "namespace": "ml", "labels": labels("service", "mlp"),
                "ownerReferences": [owner("SetpointService", "mlp", "u-svc")]},
              "spec": {"type": "ClusterIP", "ports": [
                {"name": "http", "port": 8000, "targetPort": 8000, "protocol": "TCP"}]}}),
        ),
        Step::get(
            "/api/v1/namespaces/ml/pods?labelSelector=setpoint.dev%2Fservice%3Dmlp",
            json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": [failed]}),
        ),
        Step::delete("/api/v1/namespaces/ml/pods/mlp-svc-1", failed.clone()),
        Step::apply_any("/api/v1/namespaces/ml/pods/mlp-svc-0"),
    ];
    let (client, server) = scripted(steps);
    let ctx = Arc::new(Context::new(client, settings()));
    let r = reconcile_service(svc, ctx.clone()).await;
    drop(ctx);
    let seen = server.finish().await;
    r.unwrap();
    let template = &seen[0];
    assert_eq!(
        template["spec"]["spec"]["devices"]["config"][0]["opaque"]["parameters"],
        json!({"apiVersion": "gpu.setpoint.dev/v1", "kind": "TenantParameters",
               "service": {"name": "ml.mlp", "checkpoint": "/models/mlp.ckpt",
                           "slo": {"p99_ms": 25.0}, "batching": {"max_batch_size": 16}}})
    );
    let delete = &seen[3];
    assert_eq!(delete["preconditions"]["uid"], "pod-uid-mlp-svc-1");
    let pod0 = &seen[4];
    assert_eq!(
        pod0["spec"]["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
            [0]["topologyKey"],
        "kubernetes.io/hostname"
    );
}

#[tokio::test]
async fn the_status_writer_reads_the_node_and_writes_what_changed() {
    let daemon = FakeDaemon::start().await;
    let settings = Settings {
        daemon_port: daemon.port,
        ..settings()
    };
    let mut jobs = vec![
        job_cr("mnist", "u-mnist", job_spec()),
        job_cr("late", "u-late", job_spec()),
        job_cr("broken", "u-broken", job_spec()),
        // Refused by the reconciler: the writer leaves its status alone.
        job_cr("bad", "u-bad", {
            let mut spec = job_spec();
            spec.target_accuracy = Some(1.5);
            spec
        }),
    ];
    let mut services = [service_cr("mlp", "u-svc", 2)];
    let pods = &status_pods();
    let (client, server) = scripted(first_pass(daemon.port));
    let ctx = Context::new(client, settings);
    let as_arcs = |v: &[SetpointJob]| v.iter().cloned().map(Arc::new).collect::<Vec<_>>();
    let report = pass(
        &ctx,
        &as_arcs(&jobs),
        &[Arc::new(services[0].clone())],
        pods,
    )
    .await;
    drop(ctx);
    let written = server.finish().await;
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(report.written, 4);

    // The next pass finds the same state: nothing is written, nothing applied, save the
    // events of the pod that still waits.
    jobs[0].status = Some(serde_json::from_value(written[0]["status"].clone()).unwrap());
    jobs[1].status = Some(serde_json::from_value(written[2]["status"].clone()).unwrap());
    jobs[2].status = Some(serde_json::from_value(written[3]["status"].clone()).unwrap());
    services[0].status = Some(serde_json::from_value(written[6]["status"].clone()).unwrap());
    let (client, server) = scripted(second_pass());
    let mut ctx = Context::new(
        client,
        Settings {
            daemon_port: daemon.port,
            ..self::settings()
        },
    );
    // The slices were applied by the first pass's context; this one remembers them too.
    ctx.slices = std::sync::Mutex::new(
        [("ml/mlp-ipv4", &written[4]), ("ml/mlp-ipv6", &written[5])]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
    );
    let report = pass(
        &ctx,
        &as_arcs(&jobs),
        &[Arc::new(services[0].clone())],
        pods,
    )
    .await;
    drop(ctx);
    server.finish().await;
    assert_eq!(report.written, 0, "{:?}", report.errors);
}

#[test]
fn every_object_the_operator_emits_and_every_manifest_validates() {
    let dir = tempfile::tempdir().unwrap();
    let emitted = dir.path().join("emitted.yaml");
    std::fs::write(&emitted, emitted_objects()).unwrap();
    let root = repo();
    let mut files = vec![emitted];
    files.push(root.join("deploy/kubernetes/operator.yaml"));
    for (name, _) in setpoint::kube::operator::crd::crd_files() {
        files.push(root.join("deploy/kubernetes/crds").join(name));
    }
    let Some(out) = kube_validate::validate(&files) else {
        return;
    };
    // A kind the tool has no schema for is only warned about: none may pass unchecked.
    assert!(!out.contains("WARN"), "{out}");
}

#[test]
fn example_objects_validate_against_the_crds() {
    let dir = tempfile::tempdir().unwrap();
    let mut crds = Vec::new();
    for (name, text) in setpoint::kube::operator::crd::crd_files() {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        crds.push(path);
    }
    let examples = dir.path().join("examples.yaml");
    std::fs::write(&examples, example_custom_resources()).unwrap();
    check_against_crds(&crds, &examples);
}

#[test]
fn the_tenant_command_and_the_status_writer_follow_a_real_daemon() {
    real_daemon::follow_a_job_and_a_service();
}
