//! The HTTP API: the Open Inference Protocol v2 (as KServe and Triton speak it), the jobs and
//! services API under `/v1`, node status and Prometheus metrics. Every error is JSON
//! `{"error": "..."}` with a status that says what kind of error it is.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use super::v2codec::{self, CodecError};
use crate::node::services::MODEL_VERSION;
use crate::node::{Node, NodeError, Service};
use crate::serve::ServeError;

/// An error answer: a status and a message.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// What went wrong, for the client.
    pub message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, v2codec::encode_error(&self.message)).into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"setpoint\""),
            );
        }
        r
    }
}

impl From<NodeError> for ApiError {
    fn from(e: NodeError) -> Self {
        let status = match &e {
            NodeError::NotFound(_) => StatusCode::NOT_FOUND,
            NodeError::Conflict(_) => StatusCode::CONFLICT,
            NodeError::Invalid(_) => StatusCode::BAD_REQUEST,
            NodeError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            NodeError::Internal(_) | NodeError::StateDir(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}

impl From<CodecError> for ApiError {
    fn from(e: CodecError) -> Self {
        ApiError::new(
            StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST),
            e.to_string(),
        )
    }
}

impl From<ServeError> for ApiError {
    fn from(e: ServeError) -> Self {
        let status = match &e {
            ServeError::Overloaded { .. } => StatusCode::TOO_MANY_REQUESTS,
            ServeError::InputShape { .. }
            | ServeError::NotFinite { .. }
            | ServeError::TooManyRows { .. } => StatusCode::BAD_REQUEST,
            ServeError::ShuttingDown { .. } | ServeError::DeviceFailed { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ServeError::TimedOut { .. } => StatusCode::GATEWAY_TIMEOUT,
            ServeError::Compute { .. } | ServeError::Setup { .. } => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        ApiError::new(status, e.to_string())
    }
}

pub(crate) type ApiResult<T> = Result<T, ApiError>;

/// State shared by the handlers.
#[derive(Clone)]
pub struct AppState {
    /// The node.
    pub node: Arc<Node>,
    /// Compressed request bodies being decompressed at once, at most one per core: each may
    /// grow to `max_request_bytes`, so this bounds the memory they take together.
    pub decompressing: Arc<tokio::sync::Semaphore>,
    /// The listener's counters, for `/metrics`.
    pub connections: Arc<super::server::ConnectionStats>,
    /// Large inference bodies being decoded at once, at most one per core, on blocking
    /// threads: the async workers that answer health checks never spend a decode's time.
    pub decoding: Arc<tokio::sync::Semaphore>,
}

impl AppState {
    /// Largest accepted request body, as the config in force says (a reload may change it).
    pub(crate) fn max_body_bytes(&self) -> usize {
        usize::try_from(self.node.config().max_request_bytes).unwrap_or(usize::MAX)
    }
}

/// The router with every route; `/metrics` shows `connections`, the listener's counters.
pub fn router(node: Arc<Node>, connections: Arc<super::server::ConnectionStats>) -> Router {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let state = AppState {
        node,
        decompressing: Arc::new(tokio::sync::Semaphore::new(cores)),
        connections,
        decoding: Arc::new(tokio::sync::Semaphore::new(cores)),
    };
    Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2/models/stats", get(all_model_stats))
        .route("/v2/models/{model}", get(model_metadata))
        .route("/v2/models/{model}/versions/{version}", get(model_metadata))
        .route("/v2/models/{model}/ready", get(model_ready))
        .route(
            "/v2/models/{model}/versions/{version}/ready",
            get(model_ready),
        )
        .route("/v2/models/{model}/config", get(model_config))
        .route(
            "/v2/models/{model}/versions/{version}/config",
            get(model_config),
        )
        .route("/v2/models/{model}/stats", get(model_stats))
        .route(
            "/v2/models/{model}/versions/{version}/stats",
            get(model_stats),
        )
        .route("/v2/models/{model}/infer", post(infer))
        .route("/v2/models/{model}/versions/{version}/infer", post(infer))
        .route("/v1/status", get(status))
        .route("/v1/reload", post(reload))
        .route("/v1/jobs", get(list_jobs).post(submit_job))
        .route(
            "/v1/jobs/{id}",
            get(get_job).patch(update_job).delete(delete_job),
        )
        .route("/v1/jobs/{id}/serve", post(serve_job))
        .route("/v1/services", get(list_services).post(add_service))
        .route(
            "/v1/services/{name}",
            get(get_service).delete(remove_service),
        )
        .route("/v1/devices/{name}/fail", post(super::drill::fail_device))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_token,
        ))
        .layer(axum::middleware::map_response(json_errors))
        .with_state(state)
}

/// Every error answer is JSON (`{"error": …}`): the extractors' own rejections (a path that is
/// not UTF-8, say) come as plain text and are rewrapped here, keeping their status and
/// headers.
async fn json_errors(resp: Response) -> Response {
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json || !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_lowercase()
    } else {
        text
    };
    let mut r = ApiError::new(status, message).into_response();
    parts.headers.remove(header::CONTENT_TYPE);
    parts.headers.remove(header::CONTENT_LENGTH);
    for (k, v) in parts.headers.iter() {
        r.headers_mut().entry(k).or_insert(v.clone());
    }
    r
}

/// With `auth_token` set, every request that changes the node (any method but GET and HEAD,
/// except inference, which changes nothing) must carry `Authorization: Bearer TOKEN`.
async fn require_token(
    State(st): State<AppState>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    let config = st.node.config();
    let Some(token) = config.auth_token.as_deref() else {
        return next.run(req).await;
    };
    let reads = matches!(
        *req.method(),
        axum::http::Method::GET | axum::http::Method::HEAD
    );
    let infer = req.method() == axum::http::Method::POST && req.uri().path().ends_with("/infer");
    if reads || infer {
        return next.run(req).await;
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(g) if constant_time_eq(g.as_bytes(), token.as_bytes()) => next.run(req).await,
        Some(_) => ApiError::new(
            StatusCode::UNAUTHORIZED,
            format!(
                "{} {}: the bearer token is not the node's",
                req.method(),
                req.uri().path()
            ),
        )
        .into_response(),
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            format!(
                "{} {}: this node requires \"Authorization: Bearer TOKEN\" on requests that change it",
                req.method(),
                req.uri().path()
            ),
        )
        .into_response(),
    }
}

/// Compares without returning early, so the time taken does not tell how much matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() ^ b.len()) as u8 | ((a.len() ^ b.len()) >> 8) as u8;
    for (i, &x) in a.iter().enumerate() {
        diff |= x ^ b.get(i % b.len().max(1)).copied().unwrap_or(0);
    }
    diff == 0 && a.len() == b.len()
}

async fn not_found(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no route for {} {}", req.method(), req.uri().path()),
    )
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "method {} is not allowed on {}",
            req.method(),
            req.uri().path()
        ),
    )
}

/// Reads a whole body, refusing more than `limit` bytes with 413.
pub(crate) async fn read_body(body: Body, headers: &HeaderMap, limit: usize) -> ApiResult<Bytes> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body exceeds the limit of {limit} bytes (max_request_bytes)"),
        )
    };
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > limit as u64
    {
        return Err(too_large());
    }
    match axum::body::to_bytes(body, limit).await {
        Ok(b) => Ok(b),
        Err(e) => {
            let inner = e.into_inner();
            if inner
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                Err(too_large())
            } else {
                Err(ApiError::bad_request(format!(
                    "cannot read request body: {inner}"
                )))
            }
        }
    }
}

/// Parses a JSON body; an empty body is `null`.
pub(crate) fn parse_json(bytes: &[u8]) -> ApiResult<Value> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    // serde's message ends with the position: "… at line 1 column 10".
    serde_json::from_slice(bytes).map_err(|e| ApiError::bad_request(format!("invalid JSON: {e}")))
}

pub(crate) fn json_response(status: StatusCode, v: &impl serde::Serialize) -> Response {
    match serde_json::to_vec(v) {
        Ok(body) => {
            let mut r = (status, body).into_response();
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r
        }
        Err(e) => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode response: {e}"),
        )
        .into_response(),
    }
}

/// A model path, with or without `/versions/{version}`.
#[derive(Debug, serde::Deserialize)]
struct ModelPath {
    model: String,
    version: Option<String>,
}

impl ModelPath {
    /// The serving service the path names: 404 for an unknown model or version, 503 while
    /// it loads.
    fn service(&self, node: &Node) -> ApiResult<Arc<Service>> {
        let svc = node.service(&self.model)?;
        match &self.version {
            Some(v) if v != MODEL_VERSION => Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!(
                    "model {} has no version {v} (available: {MODEL_VERSION})",
                    self.model
                ),
            )),
            _ => Ok(svc),
        }
    }
}

/// Runs blocking node work (thread joins, checkpoint reads, model builds) off the async
/// workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, NodeError> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(ApiError::from)
}

// ---------------------------------------------------------------- v2: server

async fn server_metadata() -> Response {
    json_response(
        StatusCode::OK,
        &json!({
            "name": "setpoint",
            "version": env!("CARGO_PKG_VERSION"),
            "extensions": ["binary_tensor_data", "model_configuration", "statistics"],
        }),
    )
}

async fn live() -> Response {
    json_response(StatusCode::OK, &json!({"live": true}))
}

async fn ready(State(s): State<AppState>) -> Response {
    let ready = s.node.is_ready();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_response(status, &json!({"ready": ready}))
}

// ---------------------------------------------------------------- v2: models

fn metadata_json(svc: &Service) -> Value {
    json!({
        "name": svc.name(),
        "versions": [MODEL_VERSION],
        "platform": "setpoint_mlp",
        "inputs": [{"name": svc.io.input_name, "datatype": "FP32", "shape": [-1, svc.io.features]}],
        "outputs": [{"name": svc.io.output_name, "datatype": "FP32", "shape": [-1, svc.io.classes]}],
    })
}

async fn model_metadata(
    State(s): State<AppState>,
    Path(p): Path<ModelPath>,
) -> ApiResult<Response> {
    let svc = p.service(&s.node)?;
    Ok(json_response(StatusCode::OK, &metadata_json(&svc)))
}

async fn model_ready(State(s): State<AppState>, Path(p): Path<ModelPath>) -> ApiResult<Response> {
    p.service(&s.node)?;
    Ok(json_response(
        StatusCode::OK,
        &json!({"name": p.model, "ready": true}),
    ))
}

fn config_json(svc: &Service) -> Value {
    let config = svc.config();
    json!({
        "name": svc.name(),
        "platform": "setpoint_mlp",
        "backend": "setpoint",
        "max_batch_size": svc.inner.max_batch_size(),
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

async fn model_config(State(s): State<AppState>, Path(p): Path<ModelPath>) -> ApiResult<Response> {
    let svc = p.service(&s.node)?;
    Ok(json_response(StatusCode::OK, &config_json(&svc)))
}

fn duration(count: u64, ns: u64) -> Value {
    json!({"count": count, "ns": ns})
}

/// Triton's statistics extension for one model.
fn stats_json(svc: &Service) -> Value {
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
        "inference_count": n,
        "execution_count": st.batch_count,
        "inference_stats": {
            "success": duration(n, st.queue_ns + st.compute_ns()),
            "fail": duration(
                st.failure_count + st.rejected_count + svc.invalid_count() + svc.timeout_count(),
                0,
            ),
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

async fn model_stats(State(s): State<AppState>, Path(p): Path<ModelPath>) -> ApiResult<Response> {
    let svc = p.service(&s.node)?;
    Ok(json_response(
        StatusCode::OK,
        &json!({"model_stats": [stats_json(&svc)]}),
    ))
}

async fn all_model_stats(State(s): State<AppState>) -> Response {
    let stats: Vec<Value> = s
        .node
        .ready_services()
        .iter()
        .map(|s| stats_json(s))
        .collect();
    json_response(StatusCode::OK, &json!({"model_stats": stats}))
}

// ---------------------------------------------------------------- v2: inference

async fn infer(
    State(s): State<AppState>,
    Path(p): Path<ModelPath>,
    req: Request,
) -> ApiResult<Response> {
    let (parts, body) = req.into_parts();
    // The timeout counts from the request's first byte, as the listener saw it.
    let start = parts
        .extensions
        .get::<super::server::Arrival>()
        .map_or_else(Instant::now, |a| a.0);
    let headers = parts.headers;
    let svc = p.service(&s.node)?;
    let bytes = read_body(body, &headers, s.max_body_bytes()).await?;
    let result = match decompress(&s.decompressing, s.max_body_bytes(), &headers, bytes).await {
        Ok(bytes) => decode_and_run(&s.decoding, &svc, &headers, bytes, start).await,
        Err(e) => Err(e),
    };
    match &result {
        Ok(_) => svc.observe_request(start.elapsed().as_secs_f64()),
        Err(e) if e.status == StatusCode::BAD_REQUEST => svc.count_invalid(),
        Err(e) if e.status == StatusCode::GATEWAY_TIMEOUT => svc.count_timeout(),
        Err(_) => {}
    }
    result
}

/// The timeout a request runs under: the service's `timeout_ms`, or the client's
/// `parameters.timeout` when that is shorter (a longer one is clamped, as Triton's
/// `allow_timeout_override` only lets a request shorten its queue policy's timeout).
/// Returns the timeout and whether the client's was clamped.
pub fn request_timeout(service: Duration, client_us: Option<u64>) -> (Duration, bool) {
    match client_us {
        Some(us) if Duration::from_micros(us) <= service => (Duration::from_micros(us), false),
        Some(_) => (service, true),
        None => (service, false),
    }
}

/// The 504 answer to a request that ran out of time, saying which timeout applied.
fn timed_out(svc: &Service, timeout: Duration, client_us: Option<u64>, clamped: bool) -> ApiError {
    let us = timeout.as_micros();
    let which = match client_us {
        Some(c) if clamped => format!(
            "the service's timeout_ms = {}; the client's parameters.timeout of {c} us is longer and was clamped to it",
            svc.timeout_ms()
        ),
        Some(_) => "the client's parameters.timeout".to_string(),
        None => format!("the service's timeout_ms = {}", svc.timeout_ms()),
    };
    ApiError::new(
        StatusCode::GATEWAY_TIMEOUT,
        format!(
            "model {}: no answer within the request's timeout of {us} us ({which}); \
             a request still queued at its timeout is dropped without being run",
            svc.name()
        ),
    )
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
    let rows = req
        .data
        .chunks_exact(io.features)
        .take(req.rows)
        .map(<[f32]>::to_vec)
        .collect();
    Ok(Decoded { req, rows })
}

/// Decodes `body`: a large one on a blocking thread, holding one of `slots`, waited for no
/// later than `deadline` (past it the request is answered 504 undecoded).
async fn decode_off_runtime(
    slots: &Arc<tokio::sync::Semaphore>,
    svc: &Arc<Service>,
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
    svc: &Arc<Service>,
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
    svc.inner.check_room(1)?;
    let Decoded { req, rows } =
        decode_off_runtime(slots, svc, body, header_len, start + svc.timeout()).await?;
    let (timeout, clamped) = request_timeout(svc.timeout(), req.timeout_us);
    // The timeout counts from the request's arrival, reading and decoding included.
    let left = timeout.saturating_sub(start.elapsed());
    if left.is_zero() {
        svc.inner.count_expired_unqueued(rows.len());
        return Err(timed_out(svc, timeout, req.timeout_us, clamped));
    }
    let pending = svc.inner.submit_rows(rows, Some(left))?;
    let mut probs = Vec::with_capacity(req.rows * svc.io.classes);
    for p in pending {
        match p.recv().await {
            Ok(answer) => probs.extend_from_slice(&answer.output),
            Err(ServeError::TimedOut { .. }) => {
                return Err(timed_out(svc, timeout, req.timeout_us, clamped));
            }
            Err(e) => return Err(e.into()),
        }
    }
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

// ---------------------------------------------------------------- v1: node, jobs, services

async fn status(State(s): State<AppState>) -> Response {
    json_response(StatusCode::OK, &s.node.status())
}

/// Reloads the configuration file: 200 with what changed, 400 with every error (the running
/// configuration is kept).
async fn reload(State(s): State<AppState>) -> ApiResult<Response> {
    if s.node.is_shutting_down() {
        return Err(NodeError::Unavailable("the node is shutting down".into()).into());
    }
    let node = s.node.clone();
    let outcome = tokio::task::spawn_blocking(move || node.reload())
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the reload failed: {e}"),
            )
        })?;
    Ok(match outcome {
        Ok(report) => {
            let mut v = serde_json::to_value(&report).unwrap_or(Value::Null);
            if let Some(o) = v.as_object_mut() {
                o.insert("result".into(), json!("ok"));
                o.insert("changed".into(), json!(!report.is_empty()));
            }
            json_response(StatusCode::OK, &v)
        }
        Err(failure) => {
            let n = failure.errors.len();
            json_response(
                StatusCode::BAD_REQUEST,
                &json!({
                    "error": format!(
                        "configuration not reloaded: {n} problem{} in {}; the running configuration is kept",
                        if n == 1 { "" } else { "s" },
                        failure.source
                    ),
                    "result": "error",
                    "source": failure.source,
                    "errors": failure.errors,
                }),
            )
        }
    })
}

async fn list_jobs(State(s): State<AppState>) -> Response {
    let jobs: Vec<_> = s.node.jobs().iter().map(|j| s.node.job_view(j)).collect();
    json_response(StatusCode::OK, &json!({"jobs": jobs}))
}

async fn submit_job(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let bytes = read_body(body, &headers, s.max_body_bytes()).await?;
    let spec = parse_json(&bytes)?;
    let node = s.node.clone();
    let job = blocking(move || node.submit_job_json(&spec)).await?;
    Ok(json_response(StatusCode::CREATED, &s.node.job_view(&job)))
}

async fn get_job(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult<Response> {
    let job = s.node.job(&id)?;
    Ok(json_response(StatusCode::OK, &s.node.job_view(&job)))
}

async fn update_job(
    State(s): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let bytes = read_body(body, &headers, s.max_body_bytes()).await?;
    let patch = parse_json(&bytes)?;
    let job = s.node.update_job(&id, &patch)?;
    Ok(json_response(StatusCode::OK, &s.node.job_view(&job)))
}

/// `DELETE /v1/jobs/{id}[?action=cancel|remove]`.
#[derive(Debug, serde::Deserialize)]
struct DeleteJobQuery {
    action: Option<crate::node::JobDeleteAction>,
}

/// A DELETE's answer: the job's view (for a removal, its last) and whether it was removed
/// (`false`: cancelled, it stops after its current step and stays listed).
#[derive(serde::Serialize)]
struct DeleteJobAnswer {
    #[serde(flatten)]
    job: crate::node::JobView,
    removed: bool,
}

/// Cancels a job that has not ended, removes one that has (see [`Node::delete_job`]); both
/// answer 200. Off the async workers: a removal waits for the job's thread and deletes files.
async fn delete_job(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<DeleteJobQuery>,
) -> ApiResult<Response> {
    let node = s.node.clone();
    let done = blocking(move || node.delete_job(&id, q.action)).await?;
    let (job, removed) = match done {
        crate::node::JobDeletion::Cancelled(j) => (j, false),
        crate::node::JobDeletion::Removed(j) => (j, true),
    };
    let answer = DeleteJobAnswer {
        job: s.node.job_view(&job),
        removed,
    };
    Ok(json_response(StatusCode::OK, &answer))
}

async fn serve_job(
    State(s): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let bytes = read_body(body, &headers, s.max_body_bytes()).await?;
    let spec = parse_json(&bytes)?;
    let node = s.node.clone();
    let svc = blocking(move || node.serve_job(&id, &spec)).await?;
    Ok(json_response(StatusCode::CREATED, &svc.view()))
}

async fn list_services(State(s): State<AppState>) -> Response {
    json_response(StatusCode::OK, &json!({"services": s.node.service_views()}))
}

async fn get_service(State(s): State<AppState>, Path(name): Path<String>) -> ApiResult<Response> {
    let view = s
        .node
        .service_views()
        .into_iter()
        .find(|v| v.name == name)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("unknown model {name}")))?;
    Ok(json_response(StatusCode::OK, &view))
}

async fn add_service(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let bytes = read_body(body, &headers, s.max_body_bytes()).await?;
    let spec = parse_json(&bytes)?;
    let node = s.node.clone();
    let svc = blocking(move || node.add_service_json(&spec)).await?;
    Ok(json_response(StatusCode::CREATED, &svc.view()))
}

async fn remove_service(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    let node = s.node.clone();
    blocking(move || node.remove_service(&name)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn metrics(State(s): State<AppState>) -> Response {
    let text = super::metrics::render(&s.node, &s.connections);
    let mut r = (StatusCode::OK, text).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_timeout_can_shorten_the_services_never_lengthen_it() {
        let svc = Duration::from_millis(250);
        assert_eq!(request_timeout(svc, None), (svc, false));
        assert_eq!(
            request_timeout(svc, Some(1_000)),
            (Duration::from_millis(1), false)
        );
        assert_eq!(request_timeout(svc, Some(250_000)), (svc, false));
        assert_eq!(request_timeout(svc, Some(250_001)), (svc, true));
        assert_eq!(request_timeout(svc, Some(u64::MAX)), (svc, true));
    }

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
