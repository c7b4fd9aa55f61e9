//! The two custom resources the operator watches, `SetpointJob` and `SetpointService`
//! (`setpoint.dev/v1`), and their CustomResourceDefinitions.
//!
//! A spec holds the same settings as a `[[jobs]]` or `[[services]]` table of the node's
//! config (camelCase here, as Kubernetes spells fields), plus `minShare`: the least share of
//! one device the tenant is guaranteed, which becomes its claim's request. The operator
//! checks a spec with the node's own schema before it creates anything. A spec cannot be
//! changed once created (a CEL rule says so): the tenant it describes is already admitted on
//! a node; delete the object and create it again.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The API group of both kinds.
pub const GROUP: &str = "setpoint.dev";
/// Their version.
pub const VERSION: &str = "v1";

/// A training job that must reach its target accuracy by its deadline, run by one node's
/// setpoint daemon with at least `minShare` of one device.
// Each printcolumn names its own type; clippy takes the repeated `type_ = ` for one
// attribute given twice.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[kube(
    group = "setpoint.dev",
    version = "v1",
    kind = "SetpointJob",
    namespaced,
    status = "SetpointJobStatus",
    derive = "PartialEq",
    shortname = "spjob",
    category = "setpoint",
    doc = "A training job with a deadline and an accuracy target, run by a node's setpoint daemon",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Progress", type_ = "number", json_path = ".status.progress"),
    printcolumn(name = "Slack", type_ = "number", json_path = ".status.slackSeconds"),
    printcolumn(name = "Node", type_ = "string", json_path = ".status.node"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self == oldSelf", "message": "spec is immutable: delete the object and create it again"},
    {"rule": "self.minShare > 0.0", "message": "minShare must be above 0 (a fraction of one device, at most 1)"}
]))]
pub struct SetpointJobSpec {
    /// The least share of one device the job is guaranteed, in (0, 1]: its claim asks for
    /// this much (rounded up to whole SMs, cores or units).
    #[schemars(range(min = 0.0, max = 1.0))]
    pub min_share: f64,
    /// Training data on the node: a path under one of its data directories, or
    /// `synthetic:KIND[:k=v,...]`.
    #[schemars(length(min = 1, max = 4096))]
    pub data: String,
    /// The model: MLP layer widths, input first, output last.
    #[schemars(length(min = 2, max = 128), inner(range(min = 1, max = 65536)))]
    pub layers: Vec<u32>,
    /// When the job must be done: an RFC 3339 time, or a duration (`90m`) counted from the
    /// object's creation. None: best-effort.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub deadline: Option<String>,
    /// Validation accuracy at which the job stops, in (0, 1].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_accuracy: Option<f64>,
    /// Epoch limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epochs: Option<u32>,
    /// Mini-batch size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<u32>,
    /// Optimiser.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optimizer: Option<Optimizer>,
    /// Learning rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr: Option<f64>,
    /// Momentum (`sgd` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub momentum: Option<f64>,
    /// L2 weight decay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight_decay: Option<f64>,
    /// Fraction of the data held out to measure accuracy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_fraction: Option<f64>,
    /// Seed for initialisation, shuffling and the split.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Steps between two checkpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_every_steps: Option<u64>,
    /// No deadline guarantee (always so without a deadline).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best_effort: Option<bool>,
    /// Number format of the matrix products; none: the device's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<Precision>,
}

/// A job's optimiser.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Optimizer {
    /// Adam.
    Adam,
    /// SGD with momentum.
    Sgd,
}

/// The number format of a tenant's matrix products.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// bfloat16 operands, f32 accumulation.
    Bf16,
    /// f32 throughout.
    F32,
}

/// Where a job is, as the operator sees it.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, JsonSchema)]
pub enum JobPhase {
    /// Its pod is not placed yet, or the node has not admitted it yet.
    Pending,
    /// Admitted by a node: loading its data or training.
    Running,
    /// Finished (its target reached or its epoch limit run).
    Completed,
    /// Stopped by an error, cancelled, or refused (the message says why).
    Failed,
}

/// What the operator last measured of a job.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SetpointJobStatus {
    /// Pending, Running, Completed or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<JobPhase>,
    /// The tenant's name on its node (`/v1/jobs/NAME`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// The node that runs it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The job's state as its node says it (`pending`, `loading`, `running`, `completed`,
    /// `failed`, `cancelled`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Fraction of the work done, 0 to 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<f64>,
    /// Deadline minus the estimated finish, seconds (negative: expected late).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slack_seconds: Option<f64>,
    /// Validation accuracy after the last epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<f64>,
    /// Share of its device the node gives it now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share: Option<f64>,
    /// The deadline the node was given (RFC 3339, UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<String>,
    /// How it fared once settled: `deadline met, target reached`, …
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    /// What is happening or what went wrong, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When this status was written (RFC 3339, UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<String>,
}

/// An inference service that must answer within its SLO, served by one or more nodes'
/// setpoint daemons with at least `minShare` of one device each.
// Each printcolumn names its own type; clippy takes the repeated `type_ = ` for one
// attribute given twice.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[kube(
    group = "setpoint.dev",
    version = "v1",
    kind = "SetpointService",
    namespaced,
    status = "SetpointServiceStatus",
    derive = "PartialEq",
    shortname = "spsvc",
    category = "setpoint",
    doc = "An inference service with a response-time SLO, served by nodes' setpoint daemons",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyReplicas"),
    printcolumn(name = "P99-ms", type_ = "number", json_path = ".status.p99Ms"),
    printcolumn(name = "SLO-ms", type_ = "number", json_path = ".spec.slo.p99Ms"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self == oldSelf", "message": "spec is immutable: delete the object and create it again"},
    {"rule": "self.minShare > 0.0", "message": "minShare must be above 0 (a fraction of one device, at most 1)"}
]))]
pub struct SetpointServiceSpec {
    /// The least share of one device each replica is guaranteed, in (0, 1].
    #[schemars(range(min = 0.0, max = 1.0))]
    pub min_share: f64,
    /// The model: the path of a checkpoint file on the nodes.
    #[schemars(length(min = 1, max = 4096))]
    pub checkpoint: String,
    /// The model's layer widths, checked against the checkpoint when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 128), inner(range(min = 1, max = 65536)))]
    pub layers: Option<Vec<u32>>,
    /// The response-time objective.
    pub slo: Slo,
    /// Rows (inference inputs) per second the service is expected to take, all replicas
    /// together; the status shows the measured rate beside it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub expected_rate_per_s: Option<f64>,
    /// Pods (each with its own claim, on distinct nodes) that serve the model; default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 16))]
    pub replicas: Option<u32>,
    /// Requests that may wait in the queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_queue: Option<u32>,
    /// Longest a request may wait for its answer, ms (at least the SLO's p99).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<f64>,
    /// Dynamic batching limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batching: Option<Batching>,
    /// Number format of the matrix products; none: the device's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<Precision>,
}

/// A service's response-time objective.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Slo {
    /// The 99th percentile of response time each window must stay within, ms.
    pub p99_ms: f64,
    /// The window the p99 is measured over, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_ms: Option<u64>,
}

/// A service's dynamic batching limits.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Batching {
    /// Largest batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_batch_size: Option<u32>,
    /// Longest wait for a batch to fill, ms (below the SLO's p99).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_queue_delay_ms: Option<f64>,
}

/// Where a service is, as the operator sees it.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, JsonSchema)]
pub enum ServicePhase {
    /// No replica is serving yet: pods not placed, or models loading.
    Pending,
    /// Every replica serves.
    Ready,
    /// Some replicas serve, not all.
    Degraded,
    /// The spec was refused, or no replica can serve (the message says why).
    Failed,
}

/// What the operator last measured of a service.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SetpointServiceStatus {
    /// Pending, Ready, Degraded or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<ServicePhase>,
    /// The model's name on its nodes (`/v2/models/NAME/infer`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// The Kubernetes Service that routes to the nodes serving it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Replicas that serve now.
    #[serde(default)]
    pub ready_replicas: u32,
    /// The worst replica's p99 over its last window, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99_ms: Option<f64>,
    /// That p99 over the SLO's (above 1: the SLO is missed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99_of_slo: Option<f64>,
    /// Rows per second arriving, all replicas together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_per_s: Option<f64>,
    /// Each replica: its pod, node and measurements.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<ReplicaStatus>,
    /// What is happening or what went wrong, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When this status was written (RFC 3339, UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<String>,
}

/// One replica of a service.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaStatus {
    /// Its pod.
    pub pod: String,
    /// The node serving it, once placed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The service's state on that node (`loading`, `ready`, `failed`), or the pod's phase
    /// before the node knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Its p99 over the last window, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99_ms: Option<f64>,
    /// Rows per second arriving at it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_per_s: Option<f64>,
    /// Share of its device the node gives it now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share: Option<f64>,
}

/// The file under `deploy/kubernetes/crds/` and the YAML of each CustomResourceDefinition, as
/// `setpoint operator --print-crds` prints them and the repository keeps them.
pub fn crd_files() -> Vec<(String, String)> {
    use kube::CustomResourceExt;
    let header = "# Generated from the types in src/kube/operator/crd.rs (`setpoint operator\n\
                  # --print-crds` prints it); edit those, not this file: tests/kube_operator.rs\n\
                  # checks that the two agree.\n";
    [SetpointJob::crd(), SetpointService::crd()]
        .into_iter()
        .map(|crd| {
            let file = format!("{}.yaml", crd.metadata.name.clone().unwrap_or_default());
            // A CRD always serializes; the value is only read back as YAML.
            let value = serde_json::to_value(&crd).unwrap_or_default();
            (
                file,
                format!("{header}{}", super::yaml::documents(&[value])),
            )
        })
        .collect()
}
