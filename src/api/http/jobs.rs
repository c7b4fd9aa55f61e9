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
use crate::config::parse_rfc3339;
use crate::node::{JobDeleteAction, JobDeletion, JobView, NodeError};

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

/// `GET /v1/jobs/{id}/events[?after=N][&limit=M]`.
#[derive(Debug, serde::Deserialize)]
pub(super) struct EventsQuery {
    /// Only events numbered above this (0: from the first kept).
    #[serde(default)]
    after: u64,
    /// At most this many (and at most 1000).
    limit: Option<usize>,
}

/// A job's log from event `after` on (see [`crate::node::JobEventPage`]).
pub(super) async fn job_events(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<EventsQuery>,
) -> ApiResult<Response> {
    let job = s.node.job(&id)?;
    Ok(json_response(
        StatusCode::OK,
        &job.event_page(q.after, q.limit),
    ))
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

/// `DELETE /v1/jobs?ended_before=T`.
#[derive(Debug, serde::Deserialize)]
pub(super) struct PurgeQuery {
    ended_before: Option<String>,
}

/// Removes every job that ended before `ended_before` (RFC 3339), as
/// [`crate::node::Node::purge_jobs`] does; 200 with what went and what was kept. Off the
/// async workers: it deletes files.
pub(super) async fn purge_jobs(
    State(s): State<AppState>,
    Query(q): Query<PurgeQuery>,
) -> ApiResult<Response> {
    let Some(text) = q.ended_before else {
        return Err(NodeError::Invalid(vec![
            "ended_before: missing; DELETE /v1/jobs removes the jobs that ended before an \
             RFC 3339 time, such as ?ended_before=2026-12-01T00:00:00Z"
                .into(),
        ])
        .into());
    };
    let before = parse_rfc3339(&text).map_err(|e| {
        NodeError::Invalid(vec![format!(
            "ended_before: {e} in {text:?}; give an RFC 3339 time such as 2026-12-01T00:00:00Z"
        )])
    })?;
    let node = s.node.clone();
    let report = blocking(move || Ok(node.purge_jobs(before))).await?;
    Ok(json_response(StatusCode::OK, &report))
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
