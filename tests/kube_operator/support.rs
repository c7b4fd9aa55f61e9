//! For `tests/kube_operator.rs`: a scripted API server behind `kube::Client`, a stand-in
//! for a node's daemon, the custom resources and pods the tests use, the objects they expect,
//! and the schema checks.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use http::{Request, Response};
use kube::client::Body;
use serde_json::{Value, json};
use setpoint::kube::operator::Settings;
use setpoint::kube::operator::crd::{
    Batching, Optimizer, SetpointJob, SetpointJobSpec, SetpointService, SetpointServiceSpec, Slo,
};

/// The repository's root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The operator's settings in these tests.
pub fn settings() -> Settings {
    Settings {
        tenant_image: "setpoint:test".into(),
        ..Settings::default()
    }
}

/// 2027-01-15T08:00:00Z, when every custom resource here was created.
pub const CREATED: i64 = 1_800_000_000;

fn meta(name: &str, uid: &str) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
    serde_json::from_value(json!({
        "name": name, "namespace": "ml", "uid": uid, "generation": 1,
        "creationTimestamp": "2027-01-15T08:00:00Z"}))
    .unwrap()
}

pub fn job_spec() -> SetpointJobSpec {
    SetpointJobSpec {
        min_share: 0.25,
        data: "synthetic:blobs".into(),
        layers: vec![64, 128, 10],
        deadline: Some("2h".into()),
        target_accuracy: Some(0.9),
        epochs: Some(20),
        batch_size: None,
        optimizer: Some(Optimizer::Sgd),
        lr: None,
        momentum: Some(0.9),
        weight_decay: None,
        val_fraction: None,
        seed: None,
        checkpoint_every_steps: None,
        best_effort: None,
        precision: None,
    }
}

pub fn service_spec(replicas: u32) -> SetpointServiceSpec {
    SetpointServiceSpec {
        min_share: 0.1,
        checkpoint: "/models/mlp.ckpt".into(),
        layers: None,
        slo: Slo {
            p99_ms: 25.0,
            window_ms: None,
        },
        expected_rate_per_s: Some(500.0),
        replicas: Some(replicas),
        max_queue: None,
        timeout_ms: None,
        batching: Some(Batching {
            max_batch_size: Some(16),
            max_queue_delay_ms: None,
        }),
        precision: None,
    }
}

/// A job as the API server hands it out.
pub fn job_cr(name: &str, uid: &str, spec: SetpointJobSpec) -> SetpointJob {
    let mut j = SetpointJob::new(name, spec);
    j.metadata = meta(name, uid);
    j
}

/// A service as the API server hands it out.
pub fn service_cr(name: &str, uid: &str, replicas: u32) -> SetpointService {
    let mut s = SetpointService::new(name, service_spec(replicas));
    s.metadata = meta(name, uid);
    s
}

/// The labels of a `kind` (`job`, `service`) named `name`.
pub fn labels(kind: &str, name: &str) -> Value {
    json!({"app.kubernetes.io/managed-by": "setpoint-operator", format!("setpoint.dev/{kind}"): name})
}

/// The owner reference to a custom resource.
pub fn owner(kind: &str, name: &str, uid: &str) -> Value {
    json!({"apiVersion": "setpoint.dev/v1", "kind": kind, "name": name, "uid": uid,
           "controller": true, "blockOwnerDeletion": true})
}

/// A tenant pod owned by `owner_uid`, placed on `node`, with `status`.
pub fn pod(name: &str, owner_uid: &str, node: Option<&str>, status: Value) -> Value {
    let (kind, key) = if name.contains("-svc-") {
        ("SetpointService", "service")
    } else {
        ("SetpointJob", "job")
    };
    let owner_name = name.split("-svc-").next().unwrap().trim_end_matches("-job");
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "ml", "uid": format!("pod-uid-{name}"),
            "creationTimestamp": "2027-01-15T08:00:01Z",
            "labels": labels(key, owner_name),
            "ownerReferences": [owner(kind, owner_name, owner_uid)]},
        "spec": {"nodeName": node, "containers": [{"name": "tenant", "image": "setpoint:test"}]},
        "status": status})
}

/// An event about pod `pod`, `t` seconds after the objects were created.
pub fn event(pod: &str, type_: &str, reason: &str, message: &str, t: i64) -> Value {
    let at = setpoint::config::format_rfc3339(
        std::time::UNIX_EPOCH + Duration::from_secs((CREATED + t) as u64),
    );
    json!({"apiVersion": "v1", "kind": "Event",
        "metadata": {"name": format!("{pod}.{t}"), "namespace": "ml"},
        "involvedObject": {"kind": "Pod", "name": pod, "namespace": "ml",
                           "uid": format!("pod-uid-{pod}")},
        "type": type_, "reason": reason, "message": message, "lastTimestamp": at})
}

/// A status patch of `kind` with `status`.
pub fn status_body(kind: &str, status: Value) -> Value {
    json!({"apiVersion": "setpoint.dev/v1", "kind": kind, "status": status})
}

/// The claim template of job `mnist` (created 08:00, deadline `2h`), sms mode.
pub fn expected_job_template() -> Value {
    json!({"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaimTemplate",
        "metadata": {"name": "mnist-job", "namespace": "ml", "labels": labels("job", "mnist"),
                     "ownerReferences": [owner("SetpointJob", "mnist", "u-job")]},
        "spec": {"metadata": {"labels": labels("job", "mnist")}, "spec": {"devices": {
            "requests": [{"name": "tenant", "exactly": {
                "deviceClassName": "setpoint-gpu", "allocationMode": "ExactCount", "count": 1,
                "capacity": {"requests": {"sms": "33"}}}}],
            "config": [{"requests": ["tenant"], "opaque": {"driver": "gpu.setpoint.dev",
                "parameters": {"apiVersion": "gpu.setpoint.dev/v1", "kind": "TenantParameters",
                    "job": {"name": "ml.mnist", "data": "synthetic:blobs",
                            "layers": [64, 128, 10], "deadline": "2027-01-15T10:00:00Z",
                            "target_accuracy": 0.9, "epochs": 20, "optimizer": "sgd",
                            "momentum": 0.9}}}}]}}}})
}

/// The pod of job `mnist`.
pub fn expected_job_pod() -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "mnist-job", "namespace": "ml", "labels": labels("job", "mnist"),
            "annotations": {"setpoint.dev/tenant": "ml.mnist"},
            "ownerReferences": [owner("SetpointJob", "mnist", "u-job")]},
        "spec": {
            "containers": [{"name": "tenant", "image": "setpoint:test",
                "command": ["setpoint", "tenant"],
                "resources": {"claims": [{"name": "setpoint"}],
                              "requests": {"cpu": "10m", "memory": "16Mi"},
                              "limits": {"memory": "64Mi"}},
                "terminationMessagePolicy": "FallbackToLogsOnError",
                "securityContext": {"allowPrivilegeEscalation": false,
                                    "readOnlyRootFilesystem": true}}],
            "resourceClaims": [{"name": "setpoint", "resourceClaimTemplateName": "mnist-job"}],
            "restartPolicy": "Never", "automountServiceAccountToken": false,
            "enableServiceLinks": false}})
}

/// The EndpointSlice `name` of service `mlp`.
pub fn expected_slice(kind: &str, name: &str, port: u16, endpoints: Value) -> Value {
    let mut l = labels("service", "mlp");
    l["kubernetes.io/service-name"] = json!("mlp");
    l["endpointslice.kubernetes.io/managed-by"] = json!("setpoint-operator.setpoint.dev");
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": "ml", "labels": l,
                     "ownerReferences": [owner("SetpointService", "mlp", "u-svc")]},
        "addressType": kind, "endpoints": endpoints,
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}]})
}

/// What a request must be.
enum Check {
    /// Server-side apply by the operator, with this body (`None`: any body).
    Apply(Option<Value>),
    /// Server-side apply of a status, with this body less its `updatedAt`.
    Status(Value),
    /// Server-side apply of a status, any body.
    StatusAny,
    /// A read.
    Get,
    /// A deletion.
    Delete,
}

/// One request the scripted API server expects, and its answer.
pub struct Step {
    method: &'static str,
    target: String,
    check: Check,
    reply: Option<Value>,
}

impl Step {
    pub fn apply(path: &str, body: Value) -> Step {
        Step {
            method: "PATCH",
            target: path.into(),
            check: Check::Apply(Some(body)),
            reply: None,
        }
    }
    pub fn apply_any(path: &str) -> Step {
        Step {
            method: "PATCH",
            target: path.into(),
            check: Check::Apply(None),
            reply: None,
        }
    }
    /// A status patch whose body the test looks at afterwards.
    pub fn status_any(path: &str) -> Step {
        Step {
            method: "PATCH",
            target: path.into(),
            check: Check::StatusAny,
            reply: None,
        }
    }
    pub fn status(path: &str, body: Value) -> Step {
        Step {
            method: "PATCH",
            target: path.into(),
            check: Check::Status(body),
            reply: None,
        }
    }
    pub fn get(target: &str, reply: Value) -> Step {
        Step {
            method: "GET",
            target: target.into(),
            check: Check::Get,
            reply: Some(reply),
        }
    }
    pub fn delete(path: &str, reply: Value) -> Step {
        Step {
            method: "DELETE",
            target: path.into(),
            check: Check::Delete,
            reply: Some(reply),
        }
    }

    /// Checks `req` against the step; the request's body (JSON, or null) and the answer.
    async fn check(self, i: usize, req: Request<Body>) -> (Value, Value) {
        let what = format!("request {i} ({} {})", self.method, self.target);
        assert_eq!(req.method().as_str(), self.method, "{what}: {}", req.uri());
        let (path, query) = split(&req.uri().to_string());
        let (want_path, mut want_query) = split(&self.target);
        assert_eq!(path, want_path, "{what}");
        let ctype = req
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string());
        let bytes = req.into_body().collect_bytes().await.unwrap();
        let body: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        if matches!(
            self.check,
            Check::Apply(_) | Check::Status(_) | Check::StatusAny
        ) {
            assert_eq!(
                ctype.as_deref(),
                Some("application/apply-patch+yaml"),
                "{what}"
            );
            want_query.insert("fieldManager".into(), "setpoint-operator".into());
            want_query.insert("force".into(), "true".into());
        }
        assert_eq!(query, want_query, "{what}: query");
        let reply = match self.check {
            Check::Apply(Some(want)) => {
                assert_eq!(body, want, "{what}: the applied object");
                body.clone()
            }
            Check::Apply(None) => body.clone(),
            Check::Status(want) => {
                let mut got = body.clone();
                let at = got["status"]
                    .as_object_mut()
                    .and_then(|s| s.remove("updatedAt"));
                assert!(
                    at.as_ref().and_then(Value::as_str).is_some(),
                    "{what}: updatedAt"
                );
                assert_eq!(got, want, "{what}: the status");
                with_spec(&body)
            }
            Check::StatusAny => with_spec(&body),
            Check::Get | Check::Delete => self.reply.unwrap_or(Value::Null),
        };
        (body, reply)
    }
}

/// A whole object around a status patch, as the API server answers one.
fn with_spec(patch: &Value) -> Value {
    let mut v = patch.clone();
    let spec = if patch["kind"] == "SetpointJob" {
        serde_json::to_value(job_spec()).unwrap()
    } else {
        serde_json::to_value(service_spec(1)).unwrap()
    };
    v["metadata"] = json!({"name": "x", "namespace": "ml"});
    v["spec"] = spec;
    v
}

fn split(target: &str) -> (String, BTreeMap<String, String>) {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let pairs = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (k.to_string(), v.to_string())
        })
        .collect();
    (path.to_string(), pairs)
}

/// The scripted API server's task; [`Server::finish`] waits for it and hands back the bodies
/// it was sent.
pub struct Server {
    task: tokio::task::JoinHandle<Vec<Value>>,
}

impl Server {
    /// Waits until the client is gone (drop it first) and every step was taken; panics with
    /// the server's complaint if a request was not as scripted.
    pub async fn finish(self) -> Vec<Value> {
        match self.task.await {
            Ok(bodies) => bodies,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
}

/// A client whose requests must follow `steps`, in order, and nothing more.
pub fn scripted(steps: Vec<Step>) -> (kube::Client, Server) {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let task = tokio::spawn(async move {
        let mut bodies = Vec::new();
        for (i, step) in steps.into_iter().enumerate() {
            let expected = format!("{} {}", step.method, step.target);
            let next = tokio::time::timeout(Duration::from_secs(10), handle.next_request());
            let (req, send) = match next.await {
                Ok(Some(r)) => r,
                Ok(None) => panic!("request {i}: none came (expected {expected})"),
                Err(_) => panic!("request {i}: none came within 10 s (expected {expected})"),
            };
            let (body, reply) = step.check(i, req).await;
            bodies.push(body);
            let answer = Response::builder()
                .status(200)
                .header("content-type", "application/json")
                .body(Body::from(serde_json::to_vec(&reply).unwrap()))
                .unwrap();
            send.send_response(answer);
        }
        if let Some((req, _)) = handle.next_request().await {
            panic!("a request out of script: {} {}", req.method(), req.uri());
        }
        bodies
    });
    (kube::Client::new(service, "default"), Server { task })
}

/// A node's daemon as the status writer reads it: `/v1/status` with three tenants, and the
/// failed job's view.
pub struct FakeDaemon {
    pub port: u16,
}

impl FakeDaemon {
    pub async fn start() -> FakeDaemon {
        use axum::routing::get;
        let app = axum::Router::new()
            .route("/v1/status", get(|| async { axum::Json(node_status()) }))
            .route(
                "/v1/jobs/ml.broken",
                get(|| async {
                    axum::Json(json!({"name": "ml.broken", "state": "failed",
                        "error": "data: cannot open /data/missing.csv (no such file)"}))
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        FakeDaemon { port }
    }
}

/// The tenants, as the daemon's own types write them.
fn node_status() -> Value {
    use setpoint::node::{JobOutcome, TenantFigures, TenantKind, TenantState, TenantView};
    let view = |kind, name: &str, state, measured: &str, share, figures| TenantView {
        kind,
        name: name.into(),
        state,
        set_point: String::new(),
        deadline: None,
        measured: (!measured.is_empty()).then(|| measured.to_string()),
        share,
        batch_size: 32,
        queue_len: None,
        device: Some("cuda:0".into()),
        outcome: None::<JobOutcome>,
        replicas: vec![],
        figures,
    };
    let mut mnist = view(
        TenantKind::Job,
        "ml.mnist",
        TenantState::Running,
        "slack +2m 0s",
        0.3,
        TenantFigures {
            progress: Some(0.42131),
            slack_s: Some(120.46),
            accuracy: Some(0.81234),
            target_accuracy: Some(0.9),
            ..TenantFigures::default()
        },
    );
    mnist.deadline = Some("2027-01-15T10:00:00Z".into());
    let broken = view(
        TenantKind::Job,
        "ml.broken",
        TenantState::Failed,
        "",
        0.0,
        TenantFigures {
            progress: Some(0.0),
            ..TenantFigures::default()
        },
    );
    let mlp = view(
        TenantKind::Service,
        "ml.mlp",
        TenantState::Ready,
        "p99 3.2 ms",
        0.05,
        TenantFigures {
            slo_p99_ms: Some(25.0),
            p99_ms: Some(3.2),
            rows_per_s: Some(120.0),
            ..TenantFigures::default()
        },
    );
    json!({"version": "test", "tenants": [mlp, mnist, broken]})
}
