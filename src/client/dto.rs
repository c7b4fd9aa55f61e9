//! What the client sends and the envelopes it reads, as typed values: the `/v1` request
//! bodies of the jobs API, the list answers that wrap the node's views, and the JSON of a v2
//! inference request.
//!
//! The request bodies have the wire's shape, not the server's decoded types
//! ([`crate::api::dto`]): the server reads a job's or a service's settings through the
//! config's schema, which fills every key left out with its default. So an optional field
//! left unset is left out of the body (`skip_serializing_if`), never sent as `null`; only a
//! [`JobPatch`] sends `null`, to clear a deadline or a target.

use serde::{Deserialize, Serialize, Serializer};

use crate::config::OptimizerKind;
use crate::node::{JobView, ServiceView};

/// `POST /v1/jobs`: a job's spec, as a `[[jobs]]` table of the config.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct SubmitJob {
    /// Unique among jobs.
    pub name: String,
    /// Data spec: a path on the node, or `synthetic:KIND[:k=v,...]`.
    pub data: String,
    /// MLP layer widths, input first.
    pub layers: Vec<usize>,
    /// Optimiser.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub optimizer: Option<OptimizerKind>,
    /// Learning rate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lr: Option<f64>,
    /// Mini-batch size.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<usize>,
    /// Epoch limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epochs: Option<u32>,
    /// Target validation accuracy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_accuracy: Option<f64>,
    /// A duration from submission (`10m`) or an RFC 3339 time, as the user wrote it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deadline: Option<String>,
    /// No deadline guarantee; sent only when set.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub best_effort: bool,
    /// Seed for initialisation, shuffling and the split.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Number format of the matrix products.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub precision: Option<crate::device::Precision>,
}

/// `PATCH /v1/jobs/ID`: what to change. `None` leaves a setting as it is; `Some(None)` sends
/// `null`, which clears a deadline or a target.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub(crate) struct JobPatch {
    /// A new deadline (a duration from now such as `10m`, or an RFC 3339 time), or none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deadline: Option<Option<String>>,
    /// A new target validation accuracy, or none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_accuracy: Option<Option<f64>>,
    /// A new epoch limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epochs: Option<u32>,
}

impl JobPatch {
    /// True when it changes nothing.
    pub(crate) fn is_empty(&self) -> bool {
        *self == JobPatch::default()
    }
}

/// `POST /v1/jobs/ID/serve`: the service a completed job is published as; what is left out
/// takes the config's defaults.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct ServeJob {
    /// The service's name; the job's when left out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Its response-time objective.
    pub slo: Slo,
    /// Its batching limits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batching: Option<Batching>,
    /// Number format of its matrix products.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub precision: Option<crate::device::Precision>,
    /// The devices its replicas run on; the daemon's default placement when empty.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<crate::config::ReplicaSpec>,
}

/// A service's `slo` table: the objective only (the window takes its default).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Slo {
    /// Target 99th-percentile latency, milliseconds.
    pub p99_ms: f64,
}

/// A service's `batching` table: the largest batch only.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Batching {
    /// Largest batch the batcher may form.
    pub max_batch_size: usize,
}

/// The answer to `GET /v1/jobs`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub(crate) struct JobList {
    /// Every job, by name.
    pub jobs: Vec<JobView>,
}

/// The answer to `GET /v1/services`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub(crate) struct ServiceList {
    /// Every service, by name.
    pub services: Vec<ServiceView>,
}

/// A v2 inference request's JSON: one FP32 input, one output asked for. With binary tensor
/// data it is the header the values follow.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct InferRequest<'a> {
    /// The input tensor.
    pub inputs: [InferInput<'a>; 1],
    /// The output tensor asked for.
    pub outputs: [InferOutput<'a>; 1],
    /// Whether the output is to come as binary data.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameters: Option<InferParameters>,
}

impl<'a> InferRequest<'a> {
    /// A request for the rows of `data` (row-major, `shape` = `[rows, features]`) inline;
    /// `binary_output` asks for the output as binary data.
    pub(crate) fn inline(
        input: &'a str,
        output: &'a str,
        shape: [usize; 2],
        data: &'a [f32],
        binary_output: bool,
    ) -> Self {
        InferRequest {
            inputs: [InferInput {
                name: input,
                shape,
                datatype: Datatype::Fp32,
                data: Some(data),
                parameters: None,
            }],
            outputs: [InferOutput {
                name: output,
                parameters: None,
            }],
            parameters: binary_output.then_some(InferParameters {
                binary_data_output: true,
            }),
        }
    }

    /// The header of a request whose input follows it as `bytes` bytes of binary data,
    /// asking for the output the same way.
    pub(crate) fn binary(input: &'a str, output: &'a str, shape: [usize; 2], bytes: usize) -> Self {
        InferRequest {
            inputs: [InferInput {
                name: input,
                shape,
                datatype: Datatype::Fp32,
                data: None,
                parameters: Some(BinaryDataSize {
                    binary_data_size: bytes,
                }),
            }],
            outputs: [InferOutput {
                name: output,
                parameters: Some(BinaryData { binary_data: true }),
            }],
            parameters: Some(InferParameters {
                binary_data_output: true,
            }),
        }
    }

    /// The JSON text.
    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        // Strings, numbers and arrays only: writing them cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// A tensor's element type; this client sends FP32 only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) enum Datatype {
    /// 32-bit float.
    #[serde(rename = "FP32")]
    Fp32,
}

/// An input tensor: its values inline (`data`), or their size in the binary data that
/// follows the header (`parameters.binary_data_size`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct InferInput<'a> {
    /// The model's input name.
    pub name: &'a str,
    /// `[rows, features]`.
    pub shape: [usize; 2],
    /// Element type.
    pub datatype: Datatype,
    /// Row-major values, written as f64 (`0.10000000149011612` for `0.1f32`): the exact
    /// value of each f32, whatever way the server reads a number.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "exact_f32s")]
    pub data: Option<&'a [f32]>,
    /// The values' size in the binary data.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameters: Option<BinaryDataSize>,
}

/// `{"binary_data_size": N}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) struct BinaryDataSize {
    /// Bytes.
    pub binary_data_size: usize,
}

/// An output asked for by name.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct InferOutput<'a> {
    /// The model's output name.
    pub name: &'a str,
    /// Whether this output is to come as binary data.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameters: Option<BinaryData>,
}

/// `{"binary_data": true}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) struct BinaryData {
    /// Always true when sent.
    pub binary_data: bool,
}

/// `{"binary_data_output": true}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) struct InferParameters {
    /// Every output as binary data.
    pub binary_data_output: bool,
}

/// Writes f32 values as the f64s they equal (a non-finite one as `null`).
fn exact_f32s<S: Serializer>(data: &Option<&[f32]>, s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(data.unwrap_or_default().iter().map(|&v| f64::from(v)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ReplicaSpec;
    use serde_json::{Value, json};

    fn json_of(v: &impl Serialize) -> Value {
        // Through the text, as the server sees it.
        serde_json::from_str(&serde_json::to_string(v).unwrap()).unwrap()
    }

    #[test]
    fn a_submitted_job_leaves_out_what_is_unset() {
        let mut job = SubmitJob {
            name: "mnist".into(),
            data: "synthetic:blobs".into(),
            layers: vec![4, 8, 3],
            optimizer: None,
            lr: None,
            batch_size: None,
            epochs: None,
            target_accuracy: None,
            deadline: None,
            best_effort: false,
            seed: None,
            precision: None,
        };
        assert_eq!(
            json_of(&job),
            json!({"name": "mnist", "data": "synthetic:blobs", "layers": [4, 8, 3]})
        );
        job.optimizer = Some(OptimizerKind::Sgd);
        job.deadline = Some("10m".into());
        job.best_effort = true;
        job.seed = Some(7);
        job.precision = Some(crate::device::Precision::Bf16);
        assert_eq!(
            json_of(&job),
            json!({"name": "mnist", "data": "synthetic:blobs", "layers": [4, 8, 3],
                   "optimizer": "sgd", "deadline": "10m", "best_effort": true, "seed": 7,
                   "precision": "bf16"})
        );
    }

    #[test]
    fn a_patch_sends_null_to_clear_and_nothing_to_keep() {
        let p = JobPatch {
            deadline: Some(None),
            target_accuracy: None,
            epochs: Some(9),
        };
        assert_eq!(json_of(&p), json!({"deadline": null, "epochs": 9}));
        let p = JobPatch {
            deadline: Some(Some("1h".into())),
            target_accuracy: Some(None),
            epochs: None,
        };
        assert_eq!(
            json_of(&p),
            json!({"deadline": "1h", "target_accuracy": null})
        );
        assert!(JobPatch::default().is_empty());
        assert_eq!(json_of(&JobPatch::default()), json!({}));
    }

    #[test]
    fn serving_a_job_sends_the_slo_and_what_is_set() {
        let s = ServeJob {
            name: None,
            slo: Slo { p99_ms: 25.0 },
            batching: None,
            precision: None,
            replicas: Vec::new(),
        };
        assert_eq!(json_of(&s), json!({"slo": {"p99_ms": 25.0}}));
        let s = ServeJob {
            name: Some("m".into()),
            slo: Slo { p99_ms: 25.0 },
            batching: Some(Batching { max_batch_size: 8 }),
            precision: Some(crate::device::Precision::F32),
            replicas: vec![ReplicaSpec::Gpu, ReplicaSpec::CpuPart(1)],
        };
        assert_eq!(
            json_of(&s),
            json!({"name": "m", "slo": {"p99_ms": 25.0}, "batching": {"max_batch_size": 8},
                   "precision": "f32", "replicas": ["gpu", "cpu:1"]})
        );
    }

    #[test]
    fn an_inference_request_writes_each_f32_exactly() {
        let data = [0.1f32, f32::NAN];
        let r = InferRequest::inline("input", "probabilities", [1, 2], &data, false);
        // What `json!` writes for these values: each f32 widened to f64, NaN as null.
        let widened = json!({
            "inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32",
                        "data": [0.1f32, f32::NAN]}],
            "outputs": [{"name": "probabilities"}],
        });
        assert_eq!(json_of(&r), widened);
        assert_eq!(
            json_of(&r)["inputs"][0]["data"][0].as_f64(),
            Some(0.1f32 as f64)
        );
        let header = InferRequest::binary("input", "probabilities", [1, 2], 8);
        assert_eq!(
            serde_json::from_slice::<Value>(&header.to_bytes()).unwrap(),
            json!({
                "inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32",
                            "parameters": {"binary_data_size": 8}}],
                "outputs": [{"name": "probabilities", "parameters": {"binary_data": true}}],
                "parameters": {"binary_data_output": true},
            })
        );
    }
}
