//! The wire protocols `setpoint bench http` drives a service with, one worker (one
//! connection, requests back to back) per concurrency slot:
//!
//! - `json`: single-row JSON v2 requests over HTTP/1.1 (the default);
//! - `binary`: the same over HTTP/1.1 with Triton's binary tensor extension, input and output
//!   as raw little-endian f32 after a JSON header (what perf_analyzer sends by default);
//! - `grpc`: unary `ModelInfer` over one HTTP/2 connection, the input as
//!   `raw_input_contents` (as tritonclient.grpc and perf_analyzer `-i grpc` send it);
//! - `grpc-shared`: the same calls, but a level's C of them in flight together on one
//!   HTTP/2 connection (`grpc_mux.rs`), as gRPC clients share a channel;
//! - `grpc-stream`: the same requests as `ModelStreamInfer` messages, each worker's on one
//!   open stream of its own connection (`grpc_stream.rs`), as perf_analyzer `--streaming`
//!   sends them.
//!
//! Both clients are this process's own, so comparing protocols measures the daemon's side
//! with clients of about the same cost, which Triton's clients are not.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::ClientError;
use super::grpc_message::frame;
use super::grpc_mux;
use super::grpc_stream::StreamClient;
use super::grpc_unary::{CallError, Request, UnaryClient};
use super::keepalive::{Failure, KeepAlive, Rendered};
use super::v2::{self, ModelInfo};
use crate::api::grpc::pb;

/// A request encoding and transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// JSON over HTTP/1.1.
    Json,
    /// Binary tensors over HTTP/1.1.
    Binary,
    /// Unary gRPC with raw tensors.
    Grpc,
    /// Unary gRPC with raw tensors, every call of a level on one connection.
    #[serde(rename = "grpc-shared")]
    GrpcShared,
    /// `ModelStreamInfer` with raw tensors, each worker's calls on one open stream.
    #[serde(rename = "grpc-stream")]
    GrpcStream,
}

impl Protocol {
    /// Every protocol, in the order `--protocol` lists them.
    pub const ALL: [Protocol; 5] = [
        Protocol::Json,
        Protocol::Binary,
        Protocol::Grpc,
        Protocol::GrpcShared,
        Protocol::GrpcStream,
    ];

    /// The spelling of `--protocol` and the report.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Json => "json",
            Protocol::Binary => "binary",
            Protocol::Grpc => "grpc",
            Protocol::GrpcShared => "grpc-shared",
            Protocol::GrpcStream => "grpc-stream",
        }
    }

    /// Parses one `--protocol` item.
    pub fn parse(text: &str) -> Result<Protocol, String> {
        Protocol::ALL
            .into_iter()
            .find(|p| p.as_str() == text)
            .ok_or_else(|| {
                format!(
                    "unknown protocol '{text}'; expected json, binary, grpc, grpc-shared or \
                     grpc-stream"
                )
            })
    }

    /// What a request is, for the report.
    pub fn describe(self) -> &'static str {
        match self {
            Protocol::Json => "single-row JSON v2 infer over HTTP/1.1",
            Protocol::Binary => "single-row v2 infer with binary tensors over HTTP/1.1",
            Protocol::Grpc => "single-row ModelInfer with raw tensors over gRPC",
            Protocol::GrpcShared => {
                "single-row ModelInfer with raw tensors over gRPC, a level's calls in flight \
                 together on one connection"
            }
            Protocol::GrpcStream => {
                "single-row ModelStreamInfer messages with raw tensors, one open stream per \
                 connection"
            }
        }
    }

    /// Whether it speaks gRPC.
    pub fn is_grpc(self) -> bool {
        matches!(
            self,
            Protocol::Grpc | Protocol::GrpcShared | Protocol::GrpcStream
        )
    }

    /// How many threads carry a level of `concurrency` calls: one per call, or one for
    /// them all where they share a connection.
    pub(crate) fn workers(self, concurrency: usize) -> usize {
        match self {
            Protocol::GrpcShared => 1,
            _ => concurrency,
        }
    }
}

/// Where and what one worker sends.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// The HTTP infer URL.
    pub url: String,
    /// The gRPC endpoint, `http://HOST:PORT`.
    pub grpc: Option<String>,
}

/// What one worker saw.
#[derive(Debug, Default)]
pub(crate) struct WorkerResult {
    pub latencies_ns: Vec<u64>,
    pub errors: BTreeMap<String, u64>,
}

impl WorkerResult {
    /// An empty result with room for `n` latencies.
    fn with_capacity(n: usize) -> Self {
        WorkerResult {
            latencies_ns: Vec::with_capacity(n),
            ..WorkerResult::default()
        }
    }

    /// A worker that could not start: `why`, once.
    fn could_not_start(why: String) -> Self {
        let mut r = WorkerResult::default();
        r.errors.insert(why, 1);
        r
    }

    fn record(&mut self, counted: bool, took: Duration, outcome: Result<(), String>) {
        if !counted {
            return;
        }
        match outcome {
            Ok(()) => self.latencies_ns.push(took.as_nanos() as u64),
            Err(kind) => *self.errors.entry(kind).or_default() += 1,
        }
    }
}

/// What one worker sends, where, and when it counts.
pub(crate) struct WorkerPlan {
    /// Where it sends.
    pub target: Target,
    /// The model.
    pub info: ModelInfo,
    /// The row every request carries.
    pub row: Vec<f32>,
    /// Requests that start before this are the warm-up, not counted.
    pub warm_end: Instant,
    /// It stops here; requests that finish later are not counted.
    pub end: Instant,
}

impl WorkerPlan {
    /// Whether a request that ran from `t0` to `t1` is counted.
    fn counts(&self, t0: Instant, t1: Instant) -> bool {
        t0 >= self.warm_end && t1 <= self.end
    }
}

/// Runs one worker of `protocol` by `plan` until its end, carrying `calls` calls at once
/// (one, but for `grpc-shared`).
pub(crate) fn worker(protocol: Protocol, plan: WorkerPlan, calls: usize) -> WorkerResult {
    match protocol {
        Protocol::Json | Protocol::Binary => http_worker(protocol, plan),
        Protocol::Grpc => grpc_worker(plan),
        Protocol::GrpcShared => grpc_shared_worker(plan, calls),
        Protocol::GrpcStream => grpc_stream_worker(plan),
    }
}

fn http_worker(protocol: Protocol, plan: WorkerPlan) -> WorkerResult {
    let WorkerPlan {
        target, info, row, ..
    } = &plan;
    let req = match protocol {
        Protocol::Binary => v2::binary_request(info, row, 1),
        _ => v2::EncodedRequest {
            body: v2::json_request(info, row, 1, false),
            header_len: None,
        },
    };
    let (authority, rendered) = match Rendered::post(&target.url, &req.headers(), &req.body) {
        Ok(x) => x,
        Err(e) => return WorkerResult::could_not_start(e),
    };
    let mut r = WorkerResult::with_capacity(4096);
    let mut client = KeepAlive::new(authority);
    closed_loop(&plan, &mut r, || match client.send(&rendered) {
        Ok(200) => Outcome::Ok,
        Ok(status) => Outcome::Refused(status.to_string()),
        Err(failure) => Outcome::Broke(failure),
    });
    r
}

/// What one request came to.
enum Outcome {
    Ok,
    /// The server answered with an error: its name in the report.
    Refused(String),
    /// The transport failed.
    Broke(Failure),
}

impl Outcome {
    /// What the report counts: nothing, or the error's name (a transport failure logged).
    fn recorded(self) -> Result<(), String> {
        match self {
            Outcome::Ok => Ok(()),
            Outcome::Refused(kind) => Err(kind),
            Outcome::Broke(failure) => {
                tracing::debug!("bench: {failure:?}");
                Err(failure.kind().to_string())
            }
        }
    }
}

/// A gRPC call's end as an outcome (the answer's message is not decoded, as the HTTP worker
/// does not parse its body: its framing and grpc-status are checked).
impl<T> From<Result<T, CallError>> for Outcome {
    fn from(result: Result<T, CallError>) -> Self {
        match result {
            Ok(_) => Outcome::Ok,
            Err(e @ (CallError::Status(_) | CallError::InStream(_))) => Outcome::Refused(e.kind()),
            Err(CallError::Unreachable) => Outcome::Broke(Failure::Unreachable),
            Err(CallError::Transport(why)) => Outcome::Broke(Failure::Transport(why)),
        }
    }
}

/// Sends requests back to back with `send` until the plan's end, recording each in `r`.
/// After a transport failure it pauses, so as not to spin against a daemon that went away.
fn closed_loop(plan: &WorkerPlan, r: &mut WorkerResult, mut send: impl FnMut() -> Outcome) {
    loop {
        let t0 = Instant::now();
        if t0 >= plan.end {
            break;
        }
        let outcome = send();
        let t1 = Instant::now();
        if matches!(outcome, Outcome::Broke(_)) {
            std::thread::sleep(Duration::from_millis(10));
        }
        r.record(plan.counts(t0, t1), t1 - t0, outcome.recorded());
    }
}

/// The gRPC request for one row, as tritonclient sends it.
fn grpc_request(info: &ModelInfo, row: &[f32]) -> pb::ModelInferRequest {
    pb::ModelInferRequest {
        model_name: info.name.clone(),
        inputs: vec![pb::model_infer_request::InferInputTensor {
            name: info.input_name.clone(),
            datatype: "FP32".into(),
            shape: vec![1, info.features as i64],
            ..Default::default()
        }],
        raw_input_contents: vec![row.iter().flat_map(|v| v.to_le_bytes()).collect()],
        ..Default::default()
    }
}

/// The worker's gRPC endpoint (`HOST:PORT`) and its call of `path`, rendered once.
fn grpc_call<'a>(plan: &'a WorkerPlan, path: &str) -> Result<(&'a str, Request), String> {
    let endpoint = plan.target.grpc.as_deref().ok_or("no gRPC endpoint")?;
    let authority = endpoint.trim_start_matches("http://").trim_end_matches('/');
    let body = frame(&grpc_request(&plan.info, &plan.row));
    Ok((authority, Request::new(authority, path, body)?))
}

fn grpc_worker(plan: WorkerPlan) -> WorkerResult {
    one_call_at_a_time(plan, MODEL_INFER, UnaryClient::new, UnaryClient::call)
}

/// Requests back to back on one open `ModelStreamInfer` stream (a new one after it ends).
fn grpc_stream_worker(plan: WorkerPlan) -> WorkerResult {
    one_call_at_a_time(
        plan,
        MODEL_STREAM_INFER,
        StreamClient::new,
        StreamClient::call,
    )
}

/// A gRPC worker with one call in flight: the request of `path`, rendered once, sent back
/// to back by `call` on the client `open` makes for the endpoint.
fn one_call_at_a_time<C, T>(
    plan: WorkerPlan,
    path: &str,
    open: impl FnOnce(String) -> C,
    mut call: impl FnMut(&mut C, &Request) -> Result<T, CallError>,
) -> WorkerResult {
    let (authority, req) = match grpc_call(&plan, path) {
        Ok(call) => call,
        Err(e) => return WorkerResult::could_not_start(e),
    };
    let mut r = WorkerResult::with_capacity(4096);
    let mut client = open(authority.to_string());
    closed_loop(&plan, &mut r, || call(&mut client, &req).into());
    r
}

/// `calls` calls in flight on one connection, each counted as the other workers count theirs.
fn grpc_shared_worker(plan: WorkerPlan, calls: usize) -> WorkerResult {
    let (authority, req) = match grpc_call(&plan, MODEL_INFER) {
        Ok(call) => call,
        Err(e) => return WorkerResult::could_not_start(e),
    };
    let mut r = WorkerResult::with_capacity(4096 * calls.max(1));
    // The driver pauses after a transport failure itself.
    grpc_mux::drive(authority, &req, calls.max(1), plan.end, |f| {
        let outcome = Outcome::from(f.outcome).recorded();
        r.record(
            plan.counts(f.started, f.finished),
            f.finished - f.started,
            outcome,
        );
    });
    r
}

/// `ModelInfer`'s path.
const MODEL_INFER: &str = "/inference.GRPCInferenceService/ModelInfer";
/// `ModelStreamInfer`'s path.
const MODEL_STREAM_INFER: &str = "/inference.GRPCInferenceService/ModelStreamInfer";

/// The HTTP infer URL of `model` on `client`'s daemon.
pub(crate) fn infer_url(client: &super::Client, model: &str) -> String {
    client.url(&v2::infer_path(model))
}

/// The daemon's gRPC endpoint: `given`, else the host of its HTTP URL with the port its
/// `/v1/status` reports for `grpc_listen`.
pub(crate) fn grpc_endpoint(
    client: &super::Client,
    given: Option<&str>,
) -> Result<String, ClientError> {
    if let Some(g) = given {
        return Ok(if g.contains("://") {
            g.to_string()
        } else {
            format!("http://{g}")
        });
    }
    let status = client.get("/v1/status")?;
    let listen = status["listeners"]["grpc"].as_str().ok_or_else(|| {
        ClientError::Input(
            "the daemon reports no gRPC listener (grpc_listen is empty or it is older); \
             give --grpc-url HOST:PORT"
                .into(),
        )
    })?;
    Ok(endpoint_on(client.base_url(), listen))
}

/// `http://HOST:PORT` with HOST from `base` (an HTTP URL) and PORT from `listen`
/// (`ADDR:PORT`), so a daemon listening on every address is reached where its HTTP API is.
fn endpoint_on(base: &str, listen: &str) -> String {
    let authority = base
        .split_once("://")
        .map_or(base, |(_, rest)| rest)
        .split('/')
        .next()
        .unwrap_or("");
    let host = match authority.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h,
        _ => authority,
    };
    let port = listen.rsplit_once(':').map_or(listen, |(_, p)| p);
    format!("http://{host}:{port}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocols_parse_by_their_names_and_name_the_choices_otherwise() {
        for p in Protocol::ALL {
            assert_eq!(Protocol::parse(p.as_str()), Ok(p));
        }
        let err = Protocol::parse("http2").unwrap_err();
        assert!(
            err.contains("'http2'")
                && err.contains("json, binary, grpc, grpc-shared or grpc-stream"),
            "{err}"
        );
    }

    #[test]
    fn the_grpc_endpoint_takes_the_http_host_and_the_grpc_port() {
        assert_eq!(
            endpoint_on("http://127.0.0.1:8000", "0.0.0.0:8001"),
            "http://127.0.0.1:8001"
        );
        assert_eq!(
            endpoint_on("http://gpu-7.example:9000/", "[::]:8101"),
            "http://gpu-7.example:8101"
        );
        assert_eq!(
            endpoint_on("http://[::1]:8000", "127.0.0.1:8001"),
            "http://[::1]:8001"
        );
    }

    #[test]
    fn a_grpc_request_carries_the_row_as_raw_little_endian_bytes() {
        let info = ModelInfo {
            name: "mlp".into(),
            input_name: "input".into(),
            features: 2,
            output_name: "probabilities".into(),
            classes: Some(3),
        };
        let req = grpc_request(&info, &[1.0, -2.5]);
        assert_eq!(req.model_name, "mlp");
        assert_eq!(req.inputs[0].shape, vec![1, 2]);
        assert_eq!(req.inputs[0].datatype, "FP32");
        let mut want = 1.0f32.to_le_bytes().to_vec();
        want.extend_from_slice(&(-2.5f32).to_le_bytes());
        assert_eq!(req.raw_input_contents, vec![want]);
    }
}
