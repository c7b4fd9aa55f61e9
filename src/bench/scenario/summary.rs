//! Summarising a run: the report structs (per policy, per job, the timeline, the ratios of
//! `setpoint` to `static`) and the figures computed from a policy's latencies.

use serde::Serialize;

use super::Scenario;

/// One sample of the timeline.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Seconds after the start.
    pub t_s: f64,
    /// Share per tenant (service first).
    pub shares: Vec<(String, f64)>,
    /// The service's window p99, seconds.
    pub p99_s: Option<f64>,
    /// Device busy fraction.
    pub busy_frac: f64,
    /// The service's arrivals per second over the last control period.
    pub arrival_rate: f64,
    /// The controller's feed-forward share for the service (setpoint only).
    pub feed_forward: Option<f64>,
    /// The controller's measure of compute seconds per request (setpoint only).
    pub cost_per_request_s: Option<f64>,
    /// The service's batch-size limit in force.
    pub batch_limit: usize,
}

/// A job's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct JobOutcome {
    /// Name.
    pub name: String,
    /// Deadline, seconds after the start.
    pub deadline_s: Option<f64>,
    /// Finish, seconds after the start (None: not finished).
    pub finish_s: Option<f64>,
    /// (finish − deadline) / allotted time, in %.
    pub deviation_pct: Option<f64>,
    /// Finished after its deadline, or not at all.
    pub missed: bool,
    /// Refused at admission (with the reason).
    pub refused: Option<String>,
    /// Its final state (none: refused at admission).
    pub state: Option<crate::node::JobState>,
    /// Validation accuracy at the end.
    pub val_accuracy: Option<f64>,
    /// Training epochs it finished in the run.
    pub epochs_done: u32,
    /// Its accuracy target, if any.
    pub target_accuracy: Option<f64>,
    /// It reached its accuracy target before its deadline and stopped there: met early, so
    /// its finish is not a deviation (`deviation_pct` is none).
    pub met_early: bool,
}

/// One policy's figures.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyReport {
    /// `setpoint`, `static` or `none`.
    pub policy: String,
    /// Requests sent.
    pub requests: usize,
    /// Requests refused (queue full).
    pub rejected: usize,
    /// % of requests answered within the SLO.
    pub requests_within_slo_pct: f64,
    /// Evaluation windows with requests.
    pub windows: usize,
    /// % of windows whose p99 met the SLO.
    pub windows_within_slo_pct: f64,
    /// p99 of each evaluation window in order, ms (None for a window without requests).
    pub window_p99_ms: Vec<Option<f64>>,
    /// p99 over the whole run, ms.
    pub p99_ms: f64,
    /// p50 over the whole run, ms.
    pub p50_ms: f64,
    /// Jobs.
    pub jobs: Vec<JobOutcome>,
    /// Mean |deviation| of finished deadline jobs without an accuracy target, %.
    pub mean_abs_deviation_pct: Option<f64>,
    /// Deadline jobs that missed.
    pub deadline_misses: usize,
    /// ∫ Σ granted shares dt of the set-point tenants (the service and the deadline jobs)
    /// while they were active (None under `none`: no shares).
    pub share_seconds: Option<f64>,
    /// ∫ Σ granted shares dt of best-effort jobs: what the leftover policy (or the static
    /// table) gave backfill work, apart from what the set points took.
    pub best_effort_share_seconds: Option<f64>,
    /// Training epochs best-effort jobs finished in the run.
    pub best_effort_epochs: u32,
    /// ∫ share dt per tenant (per replica for a service with several, `NAME@DEVICE`), in
    /// shares of the whole node, in order of first appearance; empty under `none`.
    pub tenant_share_seconds: Vec<(String, f64)>,
    /// Processor time used, in device-seconds (core-seconds / cores).
    pub device_seconds_used: f64,
    /// p99 of the load generator's lateness (scheduled arrival to submission), ms: the
    /// harness's own noise, not counted in the latencies.
    pub generator_late_p99_ms: f64,
    /// Timeline.
    pub timeline: Vec<Sample>,
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// SLO, ms.
    pub slo_p99_ms: f64,
    /// Each policy's run, duration, cores.
    pub duration_s: f64,
    /// Cores divided.
    pub cores: usize,
    /// Per policy.
    pub policies: Vec<PolicyReport>,
    /// setpoint over static, where both ran.
    pub ratios: Option<Ratios>,
}

/// setpoint / static.
#[derive(Debug, Clone, Serialize)]
pub struct Ratios {
    /// Windows over the SLO.
    pub slo_window_violations: Option<f64>,
    /// Requests over the SLO.
    pub slo_request_violations: Option<f64>,
    /// Share-seconds of the set-point tenants.
    pub share_seconds: Option<f64>,
    /// Device-seconds used.
    pub device_seconds: Option<f64>,
}

/// The `q` quantile of sorted values (nearest rank), 0 when there are none.
pub(super) fn quantile(sorted: &[f64], q: f64) -> f64 {
    crate::util::stats::nearest_rank(sorted, q).unwrap_or(0.0)
}

/// One policy's figures from its requests' `(arrival, latency)` seconds, its jobs' outcomes,
/// its timeline and the device-seconds it used.
pub(super) fn summarise(
    s: &Scenario,
    policy: &str,
    latencies: Vec<(f64, f64)>,
    jobs: Vec<JobOutcome>,
    timeline: Vec<Sample>,
    device_seconds_used: f64,
) -> PolicyReport {
    let slo = s.service.slo_p99_ms / 1000.0;
    let per_window = evaluation_windows(s, &latencies, slo);
    let mut all: Vec<f64> = latencies.iter().map(|l| l.1).collect();
    all.sort_by(|a, b| a.total_cmp(b));
    let within = all.iter().filter(|&&l| l <= slo).count();
    let rejected = all.iter().filter(|l| l.is_infinite()).count();
    let (share_seconds, best_effort_share_seconds) = share_integrals(s, policy, &timeline);
    let tenant_share_seconds = if policy == "none" {
        Vec::new()
    } else {
        by_tenant(&timeline)
    };
    let best_effort_epochs = jobs
        .iter()
        .filter(|j| j.deadline_s.is_none())
        .map(|j| j.epochs_done)
        .sum();
    PolicyReport {
        policy: policy.to_string(),
        requests: all.len(),
        rejected,
        requests_within_slo_pct: pct(within, all.len()),
        windows: per_window.windows,
        windows_within_slo_pct: pct(per_window.good_windows, per_window.windows),
        window_p99_ms: per_window.p99_ms,
        p99_ms: 1000.0 * quantile(&all, 0.99),
        p50_ms: 1000.0 * quantile(&all, 0.50),
        deadline_misses: jobs.iter().filter(|j| j.missed).count(),
        mean_abs_deviation_pct: mean_abs_deviation(&jobs),
        jobs,
        share_seconds,
        best_effort_share_seconds,
        best_effort_epochs,
        tenant_share_seconds,
        device_seconds_used,
        generator_late_p99_ms: 0.0,
        timeline,
    }
}

/// The evaluation windows' figures of a run.
struct WindowFigures {
    /// Windows with requests.
    windows: usize,
    /// Windows with requests whose p99 met the SLO.
    good_windows: usize,
    /// p99 of each window in order, ms (None for a window without requests).
    p99_ms: Vec<Option<f64>>,
}

/// Sorts the requests' `(arrival, latency)` seconds into the scenario's evaluation windows
/// and measures each window's p99 against `slo` seconds.
fn evaluation_windows(s: &Scenario, latencies: &[(f64, f64)], slo: f64) -> WindowFigures {
    let window = s.service.window_ms as f64 / 1000.0;
    let n_windows = (s.duration_s / window).ceil() as usize;
    let mut per_window: Vec<Vec<f64>> = vec![Vec::new(); n_windows.max(1)];
    for &(t, l) in latencies {
        let w = ((t / window) as usize).min(per_window.len() - 1);
        per_window[w].push(l);
    }
    let mut windows = 0;
    let mut good_windows = 0;
    let mut window_p99_ms = Vec::with_capacity(per_window.len());
    for w in per_window.iter_mut() {
        if w.is_empty() {
            window_p99_ms.push(None);
            continue;
        }
        w.sort_by(|a, b| a.total_cmp(b));
        windows += 1;
        let p99 = quantile(w, 0.99);
        window_p99_ms.push(Some(1000.0 * p99));
        if p99 <= slo {
            good_windows += 1;
        }
    }
    WindowFigures {
        windows,
        good_windows,
        p99_ms: window_p99_ms,
    }
}

/// ∫ Σ granted shares dt of the set-point tenants and of the best-effort jobs, in that order;
/// none under the `none` policy.
fn share_integrals(s: &Scenario, policy: &str, timeline: &[Sample]) -> (Option<f64>, Option<f64>) {
    if policy == "none" {
        return (None, None);
    }
    let best_effort = |name: &str| {
        s.jobs
            .iter()
            .any(|j| j.name == name && j.deadline_s.is_none())
    };
    let integral = |keep: &dyn Fn(&str) -> bool| -> f64 {
        timeline
            .windows(2)
            .map(|w| {
                let sum: f64 = w[1].shares.iter().filter(|x| keep(&x.0)).map(|x| x.1).sum();
                (w[1].t_s - w[0].t_s) * sum
            })
            .sum()
    };
    (
        Some(integral(&|n| !best_effort(n))),
        Some(integral(&|n| best_effort(n))),
    )
}

/// Mean |deviation| of the finished jobs without an accuracy target, %; none when there are
/// none.
fn mean_abs_deviation(jobs: &[JobOutcome]) -> Option<f64> {
    let finished: Vec<f64> = jobs
        .iter()
        .filter(|j| j.target_accuracy.is_none())
        .filter_map(|j| j.deviation_pct.map(f64::abs))
        .collect();
    (!finished.is_empty()).then(|| finished.iter().sum::<f64>() / finished.len() as f64)
}

/// `a` as a % of `b`; 100 when `b` is 0.
fn pct(a: usize, b: usize) -> f64 {
    if b == 0 {
        100.0
    } else {
        100.0 * a as f64 / b as f64
    }
}

/// ∫ share dt of each tenant of `timeline`, in order of first appearance.
fn by_tenant(timeline: &[Sample]) -> Vec<(String, f64)> {
    let mut out: Vec<(String, f64)> = Vec::new();
    for w in timeline.windows(2) {
        let dt = w[1].t_s - w[0].t_s;
        for (name, share) in &w[1].shares {
            match out.iter_mut().find(|(n, _)| n == name) {
                Some(e) => e.1 += dt * share,
                None => out.push((name.clone(), dt * share)),
            }
        }
    }
    out
}

/// setpoint over static, where both ran.
pub(super) fn ratios(policies: &[PolicyReport]) -> Option<Ratios> {
    let find = |n: &str| policies.iter().find(|p| p.policy == n);
    match (find("setpoint"), find("static")) {
        (Some(a), Some(b)) => {
            let div = |x: f64, y: f64| (y > 0.0).then(|| x / y);
            Some(Ratios {
                slo_window_violations: div(
                    100.0 - a.windows_within_slo_pct,
                    100.0 - b.windows_within_slo_pct,
                ),
                slo_request_violations: div(
                    100.0 - a.requests_within_slo_pct,
                    100.0 - b.requests_within_slo_pct,
                ),
                share_seconds: match (a.share_seconds, b.share_seconds) {
                    (Some(x), Some(y)) => div(x, y),
                    _ => None,
                },
                device_seconds: div(a.device_seconds_used, b.device_seconds_used),
            })
        }
        _ => None,
    }
}
