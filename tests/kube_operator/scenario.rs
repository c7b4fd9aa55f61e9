//! The status writer's scenario for `tests/kube_operator.rs`: three jobs (one training on
//! its node, one whose claim the node refused to prepare, one failed) and a service with
//! one replica serving and one not placed; the requests the writer must make.

use k8s_openapi::api::core::v1::Pod;
use serde_json::json;

use super::support::*;

/// The kubelet's warning on the pod of job `late`.
const LATE_WARNING: &str = "Failed to prepare dynamic resources: prepare claim \
                            ml/late-job-setpoint-x: admission refused job ml.late: deadline \
                            cannot be met";

const LATE_EVENTS: &str = "/api/v1/namespaces/ml/events?fieldSelector=involvedObject.kind%3DPod%2CinvolvedObject.name%3Dlate-job";

/// The pods of the scenario.
pub fn status_pods() -> Vec<Pod> {
    [
        pod(
            "mnist-job",
            "u-mnist",
            Some("node-a"),
            json!({"phase": "Running", "hostIP": "127.0.0.1"}),
        ),
        pod(
            "late-job",
            "u-late",
            Some("node-a"),
            json!({"phase": "Pending"}),
        ),
        pod(
            "broken-job",
            "u-broken",
            Some("node-a"),
            json!({"phase": "Running", "hostIP": "127.0.0.1"}),
        ),
        pod(
            "mlp-svc-0",
            "u-svc",
            Some("node-a"),
            json!({"phase": "Running", "hostIP": "127.0.0.1"}),
        ),
        pod(
            "mlp-svc-1",
            "u-svc",
            None,
            json!({"phase": "Pending", "conditions": [{"type": "PodScheduled",
                "status": "False", "reason": "Unschedulable",
                "message": "0/2 nodes are available: 2 cannot allocate all claims."}]}),
        ),
    ]
    .into_iter()
    .map(|v| serde_json::from_value(v).unwrap())
    .collect()
}

/// What the first pass must do, the daemons listening on `port`.
pub fn first_pass(port: u16) -> Vec<Step> {
    vec![
        Step::status(
            "/apis/setpoint.dev/v1/namespaces/ml/setpointjobs/mnist/status",
            status_body(
                "SetpointJob",
                json!({
                "phase": "Running", "tenant": "ml.mnist", "node": "node-a", "state": "running",
                "progress": 0.4213, "slackSeconds": 120.5, "accuracy": 0.8123, "share": 0.3,
                "deadline": "2027-01-15T10:00:00Z", "message": "slack +2m 0s"}),
            ),
        ),
        Step::get(
            LATE_EVENTS,
            json!({"apiVersion": "v1", "kind": "EventList", "metadata": {}, "items": [
                event("late-job", "Normal", "Scheduled", "assigned ml/late-job to node-b", 10),
                event("late-job", "Warning", "FailedPrepareDynamicResources", LATE_WARNING, 20),
            ]}),
        ),
        Step::status(
            "/apis/setpoint.dev/v1/namespaces/ml/setpointjobs/late/status",
            status_body(
                "SetpointJob",
                json!({
                "phase": "Pending", "tenant": "ml.late", "node": "node-a",
                "message": format!("FailedPrepareDynamicResources: {LATE_WARNING}")}),
            ),
        ),
        Step::status(
            "/apis/setpoint.dev/v1/namespaces/ml/setpointjobs/broken/status",
            status_body(
                "SetpointJob",
                json!({
                "phase": "Failed", "tenant": "ml.broken", "node": "node-a", "state": "failed",
                "progress": 0.0, "share": 0.0,
                "message": "data: cannot open /data/missing.csv (no such file)"}),
            ),
        ),
        Step::apply(
            "/apis/discovery.k8s.io/v1/namespaces/ml/endpointslices/mlp-ipv4",
            expected_slice(
                "IPv4",
                "mlp-ipv4",
                port,
                json!([{
                "addresses": ["127.0.0.1"], "nodeName": "node-a",
                "conditions": {"ready": true, "serving": true, "terminating": false},
                "targetRef": {"kind": "Pod", "name": "mlp-svc-0", "namespace": "ml",
                              "uid": "pod-uid-mlp-svc-0"}}]),
            ),
        ),
        Step::apply(
            "/apis/discovery.k8s.io/v1/namespaces/ml/endpointslices/mlp-ipv6",
            expected_slice("IPv6", "mlp-ipv6", port, json!([])),
        ),
        Step::status(
            "/apis/setpoint.dev/v1/namespaces/ml/setpointservices/mlp/status",
            status_body(
                "SetpointService",
                json!({
                "phase": "Degraded", "tenant": "ml.mlp", "service": "mlp", "readyReplicas": 1,
                "p99Ms": 3.2, "p99OfSlo": 0.128, "ratePerS": 120.0,
                "replicas": [
                    {"pod": "mlp-svc-0", "node": "node-a", "state": "ready", "p99Ms": 3.2,
                     "ratePerS": 120.0, "share": 0.05},
                    {"pod": "mlp-svc-1", "state": "pending"}],
                "message": "mlp-svc-1: not scheduled: 0/2 nodes are available: 2 cannot \
                            allocate all claims."}),
            ),
        ),
    ]
}

/// What the second pass must do, finding the same state: read the waiting pod's events.
pub fn second_pass() -> Vec<Step> {
    vec![Step::get(
        LATE_EVENTS,
        json!({"apiVersion": "v1", "kind": "EventList", "metadata": {}, "items": [
            event("late-job", "Warning", "FailedPrepareDynamicResources", LATE_WARNING, 20)]}),
    )]
}
