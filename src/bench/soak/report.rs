//! The soak's report: what it measured of the process, the requests, the job and the probes.

use std::collections::BTreeMap;

use serde::Serialize;

use super::descriptors::FdChange;
use super::{Lateness, ProbeSummary, Sustainable};

/// The process's resources at one moment.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ProcSample {
    /// Seconds since the load started (negative: before).
    pub t_s: f64,
    /// Resident memory (`VmRSS`), bytes.
    pub rss_bytes: u64,
    /// Open file descriptors.
    pub fds: u64,
}

/// What became of the requests.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Outcomes {
    /// Requests sent.
    pub sent: u64,
    /// Answered 200.
    pub ok: u64,
    /// Answered 429 (queue full).
    pub rejected_429: u64,
    /// Answered 504 (the request's timeout passed).
    pub timeout_504: u64,
    /// Any other status, by status.
    pub other: BTreeMap<u16, u64>,
    /// No answer: the connection failed or broke.
    pub transport_errors: u64,
    /// Requests sent more than 10 ms after they were due (every connection was busy, or
    /// the generator fell behind).
    pub late_starts: u64,
    /// Requests due but never sent: every connection was busy for a second past their due
    /// time, or the load ended first. Not in `sent`.
    pub skipped: u64,
}

/// One latency window.
#[derive(Debug, Clone, Serialize)]
pub struct Window {
    /// Start, seconds since the load started.
    pub t_s: f64,
    /// Requests sent in it.
    pub requests: u64,
    /// Of those, answered 200.
    pub ok: u64,
    /// Median latency of its 200 answers, ms.
    pub p50_ms: Option<f64>,
    /// 99th percentile, ms.
    pub p99_ms: Option<f64>,
    /// Its p99 is over the SLO.
    pub over_slo: bool,
}

/// SLO violations over the run.
#[derive(Debug, Clone, Serialize)]
pub struct SloReport {
    /// The service's p99 objective, ms.
    pub p99_ms: f64,
    /// Windows with at least one answer.
    pub windows: usize,
    /// Windows whose p99 was over the objective.
    pub windows_over: usize,
    /// 200 answers slower than the objective.
    pub requests_over: u64,
    /// Of all 200 answers.
    pub requests_over_frac: f64,
}

/// The training job's progress over the run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct JobProgress {
    /// Its name.
    pub name: String,
    /// Steps when the load started.
    pub steps_start: u64,
    /// Steps when it ended.
    pub steps_end: u64,
    /// Epochs done at the end.
    pub epochs_end: u64,
    /// State at the end.
    pub state: String,
    /// Validation accuracy at the end.
    pub val_accuracy: Option<f64>,
}

/// Reads of the daemon's status and metrics during the run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Reads {
    /// `/v1/status` answered.
    pub status_ok: u64,
    /// `/metrics` answered.
    pub metrics_ok: u64,
    /// Reads that failed.
    pub failed: u64,
}

/// The soak's result.
#[derive(Debug, Clone, Serialize)]
pub struct SoakReport {
    /// Length of the load, seconds.
    pub duration_s: f64,
    /// Requests per second sent for.
    pub rate_per_s: f64,
    /// Rows per request.
    pub rows: usize,
    /// Connections the requests went over.
    pub connections: usize,
    /// The rate the service sustained within its SLO before the load, when the rate was
    /// asked as a multiple of it.
    pub sustainable: Option<Sustainable>,
    /// The multiple asked for, if any.
    pub rate_multiple: Option<f64>,
    /// The service loaded.
    pub model: String,
    /// Its timeout, ms.
    pub timeout_ms: f64,
    /// The address the daemon listened on.
    pub listen: String,
    /// Seconds from start to the daemon's readiness.
    pub ready_s: f64,
    /// Resources when the load started.
    pub start: ProcSample,
    /// Resources when it ended.
    pub end: ProcSample,
    /// Descriptors open when the load ended and not when it started, with their targets.
    pub fds_opened: Vec<FdChange>,
    /// Descriptors open when the load started and closed by its end.
    pub fds_closed: Vec<FdChange>,
    /// Peak resident memory over the process's life (`VmHWM`), bytes.
    pub peak_rss_bytes: u64,
    /// One sample a second.
    pub samples: Vec<ProcSample>,
    /// What became of the requests.
    pub requests: Outcomes,
    /// Latency of every 200 answer over the run, ms: p50, p99, max.
    pub latency_ms: [f64; 3],
    /// Windows of `window_s`.
    pub window_s: f64,
    /// Per window.
    pub windows: Vec<Window>,
    /// Violations.
    pub slo: SloReport,
    /// The training job.
    pub job: JobProgress,
    /// Status and metrics reads.
    pub reads: Reads,
    /// Probes of the health and metrics routes, every `probe_every_ms`.
    pub probes: Vec<ProbeSummary>,
    /// Interval of the probes, ms.
    pub probe_every_ms: f64,
    /// How late the answers were against their timeout.
    pub lateness: Lateness,
    /// The daemon's exit code after SIGTERM.
    pub daemon_exit_code: Option<i32>,
}
