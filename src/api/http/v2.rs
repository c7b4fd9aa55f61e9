//! The Open Inference Protocol v2: server and model metadata, readiness, statistics and
//! inference.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{ApiError, ApiResult, AppState, json_response, read_body};
use crate::api::inference::{ClientTimeout, account, run_rows, served_model, timed_out};
use crate::api::v2codec;
use crate::node::{LoadedService, Node};
use crate::serve::{MODEL_VERSION, Protocol, ServeError};

/// A model path, with or without `/versions/{version}`.
#[derive(Debug, serde::Deserialize)]
pub(super) struct ModelPath {
    model: String,
    version: Option<String>,
}

impl ModelPath {
    /// The serving service the path names: 404 for an unknown model or version, 503 while
    /// it loads.
    fn service(&self, node: &Node) -> ApiResult<Arc<LoadedService>> {
        served_model(node, &self.model, self.version.as_deref())
    }
}

pub(super) async fn server_metadata() -> Response {
    json_response(
        StatusCode::OK,
        &json!({
            "name": "setpoint",
            "version": env!("CARGO_PKG_VERSION"),
            "extensions": ["binary_tensor_data", "model_configuration", "statistics"],
        }),
    )
}

pub(super) async fn live() -> Response {
    json_response(StatusCode::OK, &json!({"live": true}))
}

pub(super) async fn ready(State(s): State<AppState>) -> Response {
    let ready = s.node.is_ready();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_response(status, &json!({"ready": ready}))
}

// ---------------------------------------------------------------- v2: models

fn metadata_json(svc: &LoadedService) -> Value {
    json!({
        "name": svc.name(),
        "versions": [MODEL_VERSION],
        "platform": "setpoint_mlp",
        "inputs": [{"name": svc.io.input_name, "datatype": "FP32", "shape": [-1, svc.io.features]}],
        "outputs": [{"name": svc.io.output_name, "datatype": "FP32", "shape": [-1, svc.io.classes]}],
    })
}

pub(super) async fn model_metadata(
    State(s): State<AppState>,
    Path(p): Path<ModelPath>,
) -> ApiResult<Response> {
    let svc = p.service(&s.node)?;
    Ok(json_response(StatusCode::OK, &metadata_json(&svc)))
}

pub(super) async fn model_ready(
    State(s): State<AppState>,
    Path(p): Path<ModelPath>,
) -> ApiResult<Response> {
    p.service(&s.node)?;
    Ok(json_response(
        StatusCode::OK,
        &json!({"name": p.model, "ready": true}),
    ))
}

fn config_json(svc: &LoadedService) -> Value {
    let config = svc.config();
    json!({
        "name": svc.name(),
        "platform": "setpoint_mlp",
        "backend": "setpoint",
        "max_batch_size": svc.max_batch_size(),
        "input": [{"name": svc.io.input_name, "data_type": "TYPE_FP32", "dims": [svc.io.features]}],
        "output": [{"name": svc.io.output_name, "data_type": "TYPE_FP32", "dims": [svc.io.classes]}],
        "dynamic_batching": {
            "max_queue_delay_microseconds": (config.batching.max_queue_delay_ms * 1000.0).round() as u64,
            "default_queue_policy": {"max_queue_size": config.max_queue},
        },
        "instance_group": [{"name": svc.name(), "kind": "KIND_CPU", "count": 1}],
        "version_policy": {"latest": {"num_versions": 1}},
        "parameters": {"slo_p99_ms": {"string_value": config.slo.p99_ms.to_string()}},
    })
}

pub(super) async fn model_config(
    State(s): State<AppState>,
    Path(p): Path<ModelPath>,
) -> ApiResult<Response> {
    let svc = p.service(&s.node)?;
    Ok(json_response(StatusCode::OK, &config_json(&svc)))
}

fn duration(count: u64, ns: u64) -> Value {
    json!({"count": count, "ns": ns})
}

/// Triton's statistics extension for one model.
fn stats_json(svc: &LoadedService) -> Value {
    let st = svc.stats();
    let batch_stats: Vec<Value> = st
        .batch_sizes
        .iter()
        .enumerate()
        .filter(|(size, b)| *size > 0 && b.count > 0)
        .map(|(size, b)| {
            json!({
                "batch_size": size,
                "compute_input": duration(b.count, b.ns.input_ns),
                "compute_infer": duration(b.count, b.ns.infer_ns),
                "compute_output": duration(b.count, b.ns.output_ns),
            })
        })
        .collect();
    let n = st.success_count;
    json!({
        "name": svc.name(),
        "version": MODEL_VERSION,
        "last_inference": st.last_inference_ms,
        "inference_count": st.success_rows,
        "execution_count": st.batch_count,
        "inference_stats": {
            "success": duration(n, st.queue_ns + st.compute_ns()),
            "fail": duration(svc.failed_count(&st), 0),
            "queue": duration(n, st.queue_ns),
            "compute_input": duration(n, st.compute.input_ns),
            "compute_infer": duration(n, st.compute.infer_ns),
            "compute_output": duration(n, st.compute.output_ns),
            "cache_hit": duration(0, 0),
            "cache_miss": duration(0, 0),
        },
        "batch_stats": batch_stats,
    })
}

pub(super) async fn model_stats(
    State(s): State<AppState>,
    Path(p): Path<ModelPath>,
) -> ApiResult<Response> {
    let svc = p.service(&s.node)?;
    Ok(json_response(
        StatusCode::OK,
        &json!({"model_stats": [stats_json(&svc)]}),
    ))
}

pub(super) async fn all_model_stats(State(s): State<AppState>) -> Response {
    let stats: Vec<Value> = s
        .node
        .ready_services()
        .iter()
        .map(|s| stats_json(s))
        .collect();
    json_response(StatusCode::OK, &json!({"model_stats": stats}))
}

// ---------------------------------------------------------------- v2: inference

pub(super) async fn infer(
    State(s): State<AppState>,
    Path(p): Path<ModelPath>,
    req: Request,
) -> ApiResult<Response> {
    let entered = Instant::now();
    let (parts, body) = req.into_parts();
    // The timeout counts from the request's first byte, as the listener saw it.
    let start = parts
        .extensions
        .get::<crate::api::server::Arrival>()
        .map_or_else(Instant::now, |a| a.0);
    let headers = parts.headers;
    // The body is read before the model is looked up: an answer sent with the body unread
    // leaves the connection unusable, and a client that reuses it (a pooled keep-alive
    // connection) would see it closed under its next request.
    let bytes = read_body(body, &headers, s.max_body_bytes()).await?;
    let svc = p.service(&s.node)?;
    let mut result = match decompress(&s.decompressing, s.max_body_bytes(), &headers, bytes).await {
        Ok(bytes) => decode_and_run(&s.decoding, &svc, &headers, bytes, start).await,
        Err(e) => Err(e),
    };
    if let Ok(answer) = &mut result {
        let us = entered.elapsed().as_micros().to_string();
        if let Ok(v) = axum::http::HeaderValue::from_str(&us) {
            answer
                .headers_mut()
                .insert(crate::api::SERVER_TIME_HEADER, v);
        }
    }
    account(&svc, Protocol::Http, start, result.as_ref().err());
    result
}

/// The body with its `Content-Encoding` undone, off the async workers: a compressed body
/// is inflated on a blocking thread, at most one per core at once; past that the request is
/// refused with 429 (retry later) rather than queued, so neither memory nor the async workers
/// answering health checks are held by a burst of large bodies.
async fn decompress(
    slots: &Arc<tokio::sync::Semaphore>,
    limit: usize,
    headers: &HeaderMap,
    bytes: Bytes,
) -> ApiResult<Bytes> {
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(|e| e.trim().to_string())
        .unwrap_or_default();
    if encoding.is_empty() || encoding.eq_ignore_ascii_case("identity") {
        return Ok(bytes);
    }
    let permit = slots.clone().try_acquire_owned().map_err(|_| {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too many compressed request bodies are being decompressed at once; retry later, \
             or send it uncompressed",
        )
    })?;
    let inflated = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        v2codec::decode_content_encoding(Some(&encoding), &bytes, limit)
            .map(|c| Bytes::from(c.into_owned()))
    })
    .await
    .map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("decompression: {e}"),
        )
    })?;
    Ok(inflated?)
}

/// Bodies at least this large are decoded on a blocking thread; smaller ones cost less than
/// the hand-off.
const DECODE_OFF_RUNTIME_BYTES: usize = 16 * 1024;

/// A decoded request, its rows split for the batcher.
struct Decoded {
    req: v2codec::InferRequest,
    rows: Vec<Vec<f32>>,
}

fn decode(io: &v2codec::ModelIo, body: &[u8], header_len: Option<usize>) -> ApiResult<Decoded> {
    let req = v2codec::decode_infer(body, header_len, io)?;
    let rows = req.row_vecs(io.features);
    Ok(Decoded { req, rows })
}

/// Decodes `body`: a large one on a blocking thread, holding one of `slots`, waited for no
/// later than `deadline` (past it the request is answered 504 undecoded).
async fn decode_off_runtime(
    slots: &Arc<tokio::sync::Semaphore>,
    svc: &Arc<LoadedService>,
    body: Bytes,
    header_len: Option<usize>,
    deadline: Instant,
) -> ApiResult<Decoded> {
    if body.len() < DECODE_OFF_RUNTIME_BYTES {
        return decode(&svc.io, &body, header_len);
    }
    let at = tokio::time::Instant::from_std(deadline);
    let permit = match tokio::time::timeout_at(at, slots.clone().acquire_owned()).await {
        Ok(Ok(p)) => p,
        Ok(Err(_)) => {
            return Err(ServeError::ShuttingDown {
                service: svc.name().into(),
            }
            .into());
        }
        Err(_) => return Err(timed_out(svc, svc.timeout(), None, false)),
    };
    let io = svc.io.clone();
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        decode(&io, &body, header_len)
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("decoding: {e}")))?
}

async fn decode_and_run(
    slots: &Arc<tokio::sync::Semaphore>,
    svc: &Arc<LoadedService>,
    headers: &HeaderMap,
    body: Bytes,
    start: Instant,
) -> ApiResult<Response> {
    let header_len = headers
        .get("inference-header-content-length")
        .map(|v| v2codec::parse_header_len(v.as_bytes()))
        .transpose()?;
    // Shed first: a request that finds the queue full is refused before any work is spent
    // decoding it, so refusals stay cheap however many come.
    svc.check_room(1)?;
    let Decoded { req, rows } =
        decode_off_runtime(slots, svc, body, header_len, start + svc.timeout()).await?;
    let client_timeout = req.timeout_us.map(ClientTimeout::Parameter);
    let probs = run_rows(svc, rows, client_timeout, start).await?;
    let (out, header_len) = v2codec::encode_infer(svc.name(), MODEL_VERSION, &req, &probs, &svc.io);
    let mut r = (StatusCode::OK, out).into_response();
    let h = r.headers_mut();
    match header_len {
        Some(n) => {
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            h.insert("inference-header-content-length", HeaderValue::from(n));
        }
        None => {
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn compressed_bodies_are_inflated_off_the_runtime_within_their_slots() {
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(b"{\"inputs\": []}").unwrap();
        let body = Bytes::from(gz.finish().unwrap());
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        let one = Arc::new(tokio::sync::Semaphore::new(1));
        let out = decompress(&one, 1 << 20, &headers, body.clone())
            .await
            .unwrap();
        assert_eq!(&out[..], b"{\"inputs\": []}");
        // Its slot is given back; with every slot taken, the request is refused with 429.
        assert_eq!(one.available_permits(), 1);
        let held = one.clone().try_acquire_owned().unwrap();
        let e = decompress(&one, 1 << 20, &headers, body.clone())
            .await
            .unwrap_err();
        assert_eq!(e.status, StatusCode::TOO_MANY_REQUESTS);
        assert!(
            e.message.contains("being decompressed at once"),
            "{}",
            e.message
        );
        drop(held);
        // An uncompressed body takes no slot.
        let none = Arc::new(tokio::sync::Semaphore::new(0));
        let plain = decompress(&none, 1 << 20, &HeaderMap::new(), Bytes::from_static(b"x")).await;
        assert_eq!(&plain.unwrap()[..], b"x");
    }
}
