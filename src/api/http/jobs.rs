//! `/v1/jobs`: submit, list, read, change, cancel or remove a training job, and publish a
//! completed one as a service.

use std::time::SystemTime;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::json;

use super::{ApiResult, AppState, blocking, json_response, read_json};
use crate::api::dto::{JobPatch, ServeJob, SubmitJob};
use crate::node::{JobDeleteAction, JobDeletion, JobView};

pub(super) async fn list_jobs(State(s): State<AppState>) -> Response {
    let jobs = s.node.job_views();
    json_response(StatusCode::OK, &json!({"jobs": jobs}))
}

pub(super) async fn submit_job(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let body = read_json(body, &headers, s.max_body_bytes()).await?;
    let SubmitJob(cfg) = SubmitJob::decode(&body)?;
    let node = s.node.clone();
    let job = blocking(move || node.submit_job(cfg)).await?;
    Ok(json_response(StatusCode::CREATED, &s.node.job_view(&job)))
}

pub(super) async fn get_job(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let job = s.node.job(&id)?;
    Ok(json_response(StatusCode::OK, &s.node.job_view(&job)))
}

/// Changes a job's deadline, target or epoch limit. Off the async workers: the change is
/// recorded (written and synced) in the state dir before the answer.
pub(super) async fn update_job(
    State(s): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let body = read_json(body, &headers, s.max_body_bytes()).await?;
    // An unknown job is a 404 whatever the body says.
    s.node.job(&id)?;
    let patch = JobPatch::decode(&body)?;
    let changes = patch.changes(SystemTime::now());
    let node = s.node.clone();
    let job = blocking(move || node.update_job(&id, changes)).await?;
    Ok(json_response(StatusCode::OK, &s.node.job_view(&job)))
}

/// `DELETE /v1/jobs/{id}[?action=cancel|remove]`.
#[derive(Debug, serde::Deserialize)]
pub(super) struct DeleteJobQuery {
    action: Option<JobDeleteAction>,
}

/// A DELETE's answer: the job's view (for a removal, its last) and whether it was removed
/// (`false`: cancelled, it stops after its current step and stays listed).
#[derive(serde::Serialize)]
struct DeleteJobAnswer {
    #[serde(flatten)]
    job: JobView,
    removed: bool,
}

/// Cancels a job that has not ended, removes one that has (see
/// [`crate::node::Node::delete_job`]); both answer 200. Off the async workers: a removal
/// waits for the job's thread and deletes files.
pub(super) async fn delete_job(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<DeleteJobQuery>,
) -> ApiResult<Response> {
    let node = s.node.clone();
    let done = blocking(move || node.delete_job(&id, q.action)).await?;
    let (job, removed) = match done {
        JobDeletion::Cancelled(j) => (j, false),
        JobDeletion::Removed(j) => (j, true),
    };
    let answer = DeleteJobAnswer {
        job: s.node.job_view(&job),
        removed,
    };
    Ok(json_response(StatusCode::OK, &answer))
}

/// Publishes a completed job's model as an inference service.
pub(super) async fn serve_job(
    State(s): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let body = read_json(body, &headers, s.max_body_bytes()).await?;
    // An unknown job is a 404, one not completed a 409, whatever the body says.
    let checkpoint = s.node.servable_checkpoint(&id)?;
    let settings = ServeJob::decode(&body)?;
    let cfg = settings.into_config(&id, &checkpoint, s.node.config().control_period_ms)?;
    let node = s.node.clone();
    let svc = blocking(move || node.serve_job(&id, cfg)).await?;
    Ok(json_response(StatusCode::CREATED, &svc.view()))
}
