//! The HTTP API: the Open Inference Protocol v2 (as KServe and Triton speak it), the jobs and
//! services API under `/v1`, node status and Prometheus metrics. Every error is JSON
//! `{"error": "..."}` with a status that says what kind of error it is.

mod errors;
mod jobs;
mod services;
mod v2;

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

pub use errors::ApiError;
pub(crate) use errors::ApiResult;
use errors::{json_errors, method_not_allowed, not_found};
use jobs::{
    delete_job, get_job, job_events, list_jobs, purge_jobs, serve_job, submit_job, update_job,
};
use services::{add_service, get_service, list_services, remove_service};
use v2::{
    all_model_stats, infer, live, model_config, model_metadata, model_ready, model_stats, ready,
    server_metadata,
};

use crate::node::{Node, NodeError};

/// State shared by the handlers.
#[derive(Clone)]
pub(crate) struct AppState {
    /// The node.
    pub node: Arc<Node>,
    /// Compressed request bodies being decompressed at once, at most one per core: each may
    /// grow to `max_request_bytes`, so this bounds the memory they take together.
    pub decompressing: Arc<tokio::sync::Semaphore>,
    /// The listener's counters, for `/metrics`.
    pub connections: Arc<super::server::ConnectionStats>,
    /// The gRPC listener's counters, for `/metrics`.
    pub grpc_connections: Arc<super::server::ConnectionStats>,
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

/// The router with every route; `/metrics` shows `connections` and `grpc_connections`, the
/// HTTP and gRPC listeners' counters.
pub fn router(
    node: Arc<Node>,
    connections: Arc<super::server::ConnectionStats>,
    grpc_connections: Arc<super::server::ConnectionStats>,
) -> Router {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let state = AppState {
        node,
        decompressing: Arc::new(tokio::sync::Semaphore::new(cores)),
        connections,
        grpc_connections,
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
        .route(
            "/v1/jobs",
            get(list_jobs).post(submit_job).delete(purge_jobs),
        )
        .route(
            "/v1/jobs/{id}",
            get(get_job).patch(update_job).delete(delete_job),
        )
        .route("/v1/jobs/{id}/events", get(job_events))
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
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() ^ b.len()) as u8 | ((a.len() ^ b.len()) >> 8) as u8;
    for (i, &x) in a.iter().enumerate() {
        diff |= x ^ b.get(i % b.len().max(1)).copied().unwrap_or(0);
    }
    diff == 0 && a.len() == b.len()
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

/// Reads a whole body (see [`read_body`]) and parses it as JSON (see [`parse_json`]).
pub(crate) async fn read_json(body: Body, headers: &HeaderMap, limit: usize) -> ApiResult<Value> {
    parse_json(&read_body(body, headers, limit).await?)
}

/// Parses a JSON body; an empty body is `null`.
fn parse_json(bytes: &[u8]) -> ApiResult<Value> {
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

/// Runs blocking node work (thread joins, checkpoint reads, model builds) off the async
/// workers.
pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, NodeError> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(ApiError::from)
}

// ---------------------------------------------------------------- v1: node

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

async fn metrics(State(s): State<AppState>) -> Response {
    let grpc = s.node.config().grpc_listen.is_some();
    let text = super::metrics::render(
        &s.node,
        &s.connections,
        grpc.then_some(&*s.grpc_connections),
    );
    let mut r = (StatusCode::OK, text).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}
