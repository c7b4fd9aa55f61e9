//! `/v1/services`: list, read, add (from a checkpoint) and remove inference services.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::{ApiError, ApiResult, AppState, blocking, json_response, read_json};
use crate::api::dto::AddService;

pub(super) async fn list_services(State(s): State<AppState>) -> Response {
    json_response(StatusCode::OK, &json!({"services": s.node.service_views()}))
}

pub(super) async fn get_service(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    let view = s
        .node
        .service_views()
        .into_iter()
        .find(|v| v.name == name)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("unknown model {name}")))?;
    Ok(json_response(StatusCode::OK, &view))
}

pub(super) async fn add_service(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let body = read_json(body, &headers, s.max_body_bytes()).await?;
    let period_ms = s.node.config().control_period_ms;
    let AddService(cfg) = AddService::decode(&body, period_ms)?;
    let node = s.node.clone();
    let svc = blocking(move || node.add_api_service(cfg)).await?;
    Ok(json_response(StatusCode::CREATED, &svc.view()))
}

pub(super) async fn remove_service(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    let node = s.node.clone();
    blocking(move || node.remove_service(&name)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
