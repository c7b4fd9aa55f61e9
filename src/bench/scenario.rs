//! `setpoint bench scenario FILE`: a scripted co-location scenario on the real engine, run
//! under three policies in one invocation — `setpoint` (the controller), `static` (fixed
//! shares an operator would pick) and `none` (no shares) — with the same arrivals and jobs.
//!
//! # File format (TOML)
//!
//! ```toml
//! name = "colocation"            # shown in reports
//! description = "..."            # optional
//! duration_s = 40                # length of each policy's run
//! cores = 2                      # CPU workers the node divides (0 = all)
//! control_period_ms = 100        # the controller's period
//! seed = 1                       # arrivals and request rows
//! reserve_frac = 0.05            # optional, as in the node config
//! leftover = "idle"              # optional: "best-effort" | "idle" | "spread"
//! policies = ["setpoint", "static", "none"]   # optional, which to run, in order
//!
//! [service]                      # one inference service under open-loop Poisson arrivals
//! name = "mlp"
//! layers = [64, 128, 10]
//! warmup_data = "synthetic:blobs"   # trained once, before the policies run
//! slo_p99_ms = 10
//! window_ms = 1000               # SLO window, also the evaluation window
//! max_batch_size = 32
//! max_queue = 4096               # optional
//! arrivals = [                   # piecewise-constant rate, requests/s, from at_s on
//!   { at_s = 0, rate = 500 },
//!   { at_s = 15, rate = 2000 },
//! ]
//! bursts = [ { at_s = 25, duration_s = 1, rate = 5000 } ]   # optional, added on top
//!
//! [[jobs]]                       # training jobs, submitted at start_s
//! name = "train"
//! data = "synthetic:blobs:size=20000"
//! layers = [64, 256, 256, 10]
//! epochs = 4
//! batch_size = 64                # optional
//! target_accuracy = 0.99         # optional
//! start_s = 0                    # optional
//! deadline_s = 30                # seconds after the scenario's start; absent = best-effort
//!
//! [static]                       # shares of the static policy, by tenant name
//! mlp = 0.5
//! train = 0.45
//! ```
//!
//! Unknown keys are errors. A request's latency is the service's response time as the
//! server measures it — from its arrival in the queue to the end of its batch's compute —
//! which is what the SLO is about and what Triton reports as request latency; a request
//! refused because the queue was full counts as over the SLO. The load generator's own
//! lateness (scheduled arrival to submission: timer wake-ups on a loaded machine) is reported
//! beside it, so a reader can tell the harness from the service.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use crate::config::{Deadline, JobConfig, NodeConfig, OptimizerKind, ServiceConfig};
use crate::node::{JobState, Node, Policy};
use crate::util::rng::Rng;

/// Why scenario text is not a valid scenario.
#[derive(Debug, thiserror::Error)]
pub enum InvalidScenario {
    /// Not TOML, or not of the scenario's shape (an unknown policy among them).
    #[error("{}", .0.to_string().trim())]
    Toml(toml::de::Error),
    /// Values out of range or inconsistent, each as `key: what is wrong`.
    #[error("{}", .0.join("; "))]
    Checks(Vec<String>),
}

/// A policy a scenario runs: the names of [`Policy`]'s kinds, the static shares coming
/// from the scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum PolicyName {
    /// The feedback controller ([`Policy::Controller`]).
    Setpoint,
    /// The scenario's fixed shares ([`Policy::Static`]).
    Static,
    /// No shares ([`Policy::None`]).
    None,
}

impl PolicyName {
    /// Every policy, in the default order.
    pub const ALL: [PolicyName; 3] = [PolicyName::Setpoint, PolicyName::Static, PolicyName::None];

    /// As reports and the scenario file name it (what [`Policy::name`] says).
    pub fn name(self) -> &'static str {
        match self {
            PolicyName::Setpoint => "setpoint",
            PolicyName::Static => "static",
            PolicyName::None => "none",
        }
    }

    /// The node's policy, the static shares taken from `s`.
    fn policy(self, s: &Scenario) -> Policy {
        match self {
            PolicyName::Static => Policy::Static {
                shares: s.static_shares.clone(),
                default: 1.0 / (1 + s.jobs.len()) as f64,
            },
            PolicyName::None => Policy::None,
            PolicyName::Setpoint => Policy::Controller,
        }
    }
}

/// A policy name that is none of [`PolicyName::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown policy {0:?} (accepted: setpoint, static, none)")]
pub struct UnknownPolicy(pub String);

impl std::str::FromStr for PolicyName {
    type Err = UnknownPolicy;

    fn from_str(s: &str) -> Result<Self, UnknownPolicy> {
        PolicyName::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| UnknownPolicy(s.to_string()))
    }
}

impl TryFrom<String> for PolicyName {
    type Error = UnknownPolicy;

    fn try_from(s: String) -> Result<Self, UnknownPolicy> {
        s.parse()
    }
}

/// Why a scenario could not run.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The file could not be read.
    #[error("scenario {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not a valid scenario.
    #[error("scenario {path}: {source}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        source: InvalidScenario,
    },
    /// The node failed while running it.
    #[error("scenario run failed: {0}")]
    Run(String),
}

/// A rate from a time on.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateStep {
    /// Seconds after the start.
    pub at_s: f64,
    /// Requests per second.
    pub rate: f64,
}

/// Extra arrivals for a while.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Burst {
    /// Seconds after the start.
    pub at_s: f64,
    /// How long.
    pub duration_s: f64,
    /// Requests per second on top of the base rate.
    pub rate: f64,
}

/// The scenario's inference service.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioService {
    /// Name.
    pub name: String,
    /// MLP widths.
    pub layers: Vec<usize>,
    /// Data the model is trained on before the runs.
    #[serde(default = "default_warmup")]
    pub warmup_data: String,
    /// p99 objective, ms.
    pub slo_p99_ms: f64,
    /// SLO window, ms.
    #[serde(default = "default_window")]
    pub window_ms: u64,
    /// Batch size limit.
    #[serde(default = "default_batch")]
    pub max_batch_size: usize,
    /// Queue bound.
    #[serde(default = "default_queue")]
    pub max_queue: usize,
    /// Base arrival rate over time.
    pub arrivals: Vec<RateStep>,
    /// Bursts on top.
    #[serde(default)]
    pub bursts: Vec<Burst>,
}

fn default_warmup() -> String {
    "synthetic:blobs".into()
}
fn default_window() -> u64 {
    1000
}
fn default_batch() -> usize {
    32
}
fn default_queue() -> usize {
    4096
}

/// A training job of the scenario.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioJob {
    /// Name.
    pub name: String,
    /// Data spec.
    pub data: String,
    /// MLP widths.
    pub layers: Vec<usize>,
    /// Epoch limit.
    pub epochs: u32,
    /// Mini-batch size.
    #[serde(default = "default_job_batch")]
    pub batch_size: usize,
    /// Target validation accuracy.
    #[serde(default)]
    pub target_accuracy: Option<f64>,
    /// Submitted this many seconds after the start.
    #[serde(default)]
    pub start_s: f64,
    /// Deadline, seconds after the start; absent: best-effort.
    #[serde(default)]
    pub deadline_s: Option<f64>,
}

fn default_job_batch() -> usize {
    64
}

/// A scenario file.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Name.
    pub name: String,
    /// What it shows.
    #[serde(default)]
    pub description: String,
    /// Seconds each policy runs.
    pub duration_s: f64,
    /// CPU workers (0 = all).
    #[serde(default)]
    pub cores: usize,
    /// Control period, ms.
    #[serde(default = "default_period")]
    pub control_period_ms: u64,
    /// Seed of arrivals and rows.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Capacity never handed out.
    #[serde(default = "default_reserve")]
    pub reserve_frac: f64,
    /// Where spare capacity goes.
    #[serde(default = "default_leftover")]
    pub leftover: String,
    /// Policies to run, in order.
    #[serde(default = "default_policies")]
    pub policies: Vec<PolicyName>,
    /// The service.
    pub service: ScenarioService,
    /// The jobs.
    #[serde(default)]
    pub jobs: Vec<ScenarioJob>,
    /// Shares of the static policy.
    #[serde(default, rename = "static")]
    pub static_shares: HashMap<String, f64>,
}

fn default_period() -> u64 {
    100
}
fn default_seed() -> u64 {
    1
}
fn default_reserve() -> f64 {
    0.05
}
fn default_leftover() -> String {
    "idle".into()
}
fn default_policies() -> Vec<PolicyName> {
    PolicyName::ALL.to_vec()
}

impl Scenario {
    /// Reads and checks a scenario file.
    pub fn load(path: &Path) -> Result<Self, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text).map_err(|source| ScenarioError::Invalid {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Parses and checks scenario text.
    pub fn parse(text: &str) -> Result<Self, InvalidScenario> {
        let s: Scenario = toml::from_str(text).map_err(InvalidScenario::Toml)?;
        s.check()?;
        Ok(s)
    }

    fn check(&self) -> Result<(), InvalidScenario> {
        let mut errors = Vec::new();
        if !(self.duration_s > 0.0 && self.duration_s <= 3600.0) {
            errors.push(format!(
                "duration_s: must be in (0, 3600], got {}",
                self.duration_s
            ));
        }
        if !(10..=10_000).contains(&self.control_period_ms) {
            errors.push(format!(
                "control_period_ms: must be between 10 and 10000, got {}",
                self.control_period_ms
            ));
        }
        if !(0.0..=0.5).contains(&self.reserve_frac) {
            errors.push(format!(
                "reserve_frac: must be in [0, 0.5], got {}",
                self.reserve_frac
            ));
        }
        if !["best-effort", "idle", "spread"].contains(&self.leftover.as_str()) {
            errors.push(format!(
                "leftover: expected \"best-effort\", \"idle\" or \"spread\", got {:?}",
                self.leftover
            ));
        }
        let svc = &self.service;
        if let Err(e) = crate::model::check_layers(&svc.layers) {
            errors.push(format!("service.layers: {e}"));
        }
        if svc.slo_p99_ms.is_nan() || svc.slo_p99_ms <= 0.0 {
            errors.push(format!(
                "service.slo_p99_ms: must be > 0, got {}",
                svc.slo_p99_ms
            ));
        }
        if svc.arrivals.is_empty() {
            errors.push("service.arrivals: give at least one { at_s, rate }".into());
        }
        for (i, a) in svc.arrivals.iter().enumerate() {
            if !(a.rate >= 0.0 && a.rate <= 1e6 && a.at_s >= 0.0) {
                errors.push(format!(
                    "service.arrivals[{i}]: rate must be in [0, 1e6] and at_s >= 0"
                ));
            }
        }
        for (i, b) in svc.bursts.iter().enumerate() {
            if !(b.rate >= 0.0 && b.rate <= 1e6 && b.at_s >= 0.0 && b.duration_s >= 0.0) {
                errors.push(format!(
                    "service.bursts[{i}]: rate must be in [0, 1e6], at_s and duration_s >= 0"
                ));
            }
        }
        if let Err(e) = crate::data::check_spec(&svc.warmup_data) {
            errors.push(format!("service.warmup_data: {e}"));
        }
        for (i, j) in self.jobs.iter().enumerate() {
            if let Err(e) = crate::model::check_layers(&j.layers) {
                errors.push(format!("jobs[{i}].layers: {e}"));
            }
            if let Err(e) = crate::data::check_spec(&j.data) {
                errors.push(format!("jobs[{i}].data: {e}"));
            }
            if let Some(d) = j.deadline_s
                && d <= j.start_s
            {
                errors.push(format!(
                    "jobs[{i}].deadline_s: must be after start_s ({}), got {d}",
                    j.start_s
                ));
            }
            if j.name == svc.name || self.jobs[..i].iter().any(|o| o.name == j.name) {
                errors.push(format!("jobs[{i}].name: {:?} is used twice", j.name));
            }
        }
        for (k, v) in &self.static_shares {
            if k != &svc.name && !self.jobs.iter().any(|j| &j.name == k) {
                errors.push(format!("static.{k}: no service or job of that name"));
            }
            if !(0.0..=1.0).contains(v) {
                errors.push(format!("static.{k}: a share must be in [0, 1], got {v}"));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(InvalidScenario::Checks(errors))
        }
    }

    /// Base plus burst rate at `t` seconds.
    pub fn rate_at(&self, t: f64) -> f64 {
        let base = self
            .service
            .arrivals
            .iter()
            .filter(|a| a.at_s <= t)
            .max_by(|a, b| a.at_s.total_cmp(&b.at_s))
            .map_or(0.0, |a| a.rate);
        let burst: f64 = self
            .service
            .bursts
            .iter()
            .filter(|b| b.at_s <= t && t < b.at_s + b.duration_s)
            .map(|b| b.rate)
            .sum();
        base + burst
    }

    /// Arrival times of a Poisson process with the scenario's rate over time (thinning).
    pub fn arrival_times(&self) -> Vec<f64> {
        let mut rng = Rng::derived(self.seed, 0xA771);
        let peak = {
            let mut p: f64 = 0.0;
            let mut t = 0.0;
            while t < self.duration_s {
                p = p.max(self.rate_at(t));
                t += 0.01;
            }
            p
        };
        let mut out = Vec::new();
        if peak <= 0.0 {
            return out;
        }
        let mut t = 0.0;
        loop {
            t += -(1.0 - rng.next_f64()).ln() / peak;
            if t >= self.duration_s {
                break;
            }
            if rng.next_f64() * peak < self.rate_at(t) {
                out.push(t);
            }
        }
        out
    }
}

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
    /// Its final state.
    pub state: String,
    /// Validation accuracy at the end.
    pub val_accuracy: Option<f64>,
    /// Training epochs it finished in the run.
    pub epochs_done: u32,
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
    /// Mean |deviation| of finished deadline jobs, %.
    pub mean_abs_deviation_pct: Option<f64>,
    /// Deadline jobs that missed.
    pub deadline_misses: usize,
    /// ∫ Σ granted shares dt while tenants were active (None under `none`: no shares).
    pub share_seconds: Option<f64>,
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
    /// Share-seconds.
    pub share_seconds: Option<f64>,
    /// Device-seconds used.
    pub device_seconds: Option<f64>,
}

/// Trains the service's model once and writes it to `dir/service.ckpt`.
fn prepare_model(s: &Scenario, dir: &Path) -> Result<PathBuf, ScenarioError> {
    let cfg = service_config(s, None);
    let model =
        crate::node::services::build_model(&cfg).map_err(|e| ScenarioError::Run(e.to_string()))?;
    let path = dir.join("service.ckpt");
    crate::model::checkpoint::Checkpoint {
        params: model.params,
        normalizer: model.normalizer,
        training: None,
    }
    .save(&path)
    .map_err(|e| ScenarioError::Run(e.to_string()))?;
    Ok(path)
}

fn service_config(s: &Scenario, checkpoint: Option<PathBuf>) -> ServiceConfig {
    let mut cfg = crate::config::default_config().services[0].clone();
    cfg.name = s.service.name.clone();
    cfg.layers = Some(s.service.layers.clone());
    cfg.warmup_data = if checkpoint.is_some() {
        None
    } else {
        Some(s.service.warmup_data.clone())
    };
    cfg.checkpoint = checkpoint;
    cfg.seed = s.seed;
    cfg.max_queue = s.service.max_queue;
    cfg.slo.p99_ms = s.service.slo_p99_ms;
    cfg.timeout_ms = s.service.slo_p99_ms * 10.0;
    cfg.slo.window_ms = s.service.window_ms;
    cfg.batching.max_batch_size = s.service.max_batch_size;
    cfg.batching.max_queue_delay_ms = 0.0;
    cfg
}

fn node_config(s: &Scenario, checkpoint: &Path, state_dir: &Path) -> NodeConfig {
    let mut c = crate::config::default_config();
    c.state_dir = state_dir.to_path_buf();
    c.control_period_ms = s.control_period_ms;
    c.device.cpu_threads = s.cores;
    c.control.reserve_frac = s.reserve_frac;
    c.control.leftover = match s.leftover.as_str() {
        "best-effort" => crate::config::Leftover::BestEffort,
        "spread" => crate::config::Leftover::Spread,
        _ => crate::config::Leftover::Idle,
    };
    c.control.decision_log = None;
    c.services = vec![service_config(s, Some(checkpoint.to_path_buf()))];
    // The service's model is written beside the run, outside the working directory.
    if let Some(dir) = checkpoint.parent() {
        c.paths.data_dirs.push(dir.to_path_buf());
    }
    c.jobs = Vec::new();
    c
}

fn job_config(j: &ScenarioJob, start: SystemTime) -> JobConfig {
    let mut c = crate::config::default_config().jobs[0].clone();
    c.name = j.name.clone();
    c.data = j.data.clone();
    c.layers = j.layers.clone();
    c.epochs = j.epochs;
    c.batch_size = j.batch_size;
    c.target_accuracy = j.target_accuracy;
    c.optimizer = OptimizerKind::Adam;
    c.lr = 1e-3;
    c.checkpoint_every_steps = 1_000_000;
    c.best_effort = j.deadline_s.is_none();
    c.deadline = j
        .deadline_s
        .map(|d| Deadline::At(start + Duration::from_secs_f64(d)));
    c
}

/// Progress lines while the scenario runs (stderr), unless quiet.
pub type Progress<'a> = &'a mut dyn FnMut(&str);

/// Runs every policy of the scenario and reports.
pub fn run(s: &Scenario, progress: Progress<'_>) -> Result<Report, ScenarioError> {
    run_observed(s, progress, &mut |_| {})
}

/// [`run`], telling `on_phase` when each policy's measured run starts (`Some(policy)`) and
/// ends (`None`), so that samples taken beside it can be attributed.
pub fn run_observed(
    s: &Scenario,
    progress: Progress<'_>,
    on_phase: &mut dyn FnMut(Option<&str>),
) -> Result<Report, ScenarioError> {
    let dir = tempfile::Builder::new()
        .prefix("setpoint-scenario-")
        .tempdir()
        .map_err(|e| ScenarioError::Run(format!("cannot make a temporary directory: {e}")))?;
    progress(&format!(
        "training the service model on {}",
        s.service.warmup_data
    ));
    let ckpt = prepare_model(s, dir.path())?;
    let mut policies = Vec::new();
    for &policy in &s.policies {
        let name = policy.name();
        progress(&format!("running policy {name} for {} s", s.duration_s));
        let state = dir.path().join(name);
        on_phase(Some(name));
        let r = run_policy(s, policy, &ckpt, &state);
        on_phase(None);
        let r = r?;
        progress(&format!(
            "  {name}: {:.1} % of windows and {:.2} % of requests within the SLO, p99 {:.2} ms, {} deadline misses",
            r.windows_within_slo_pct, r.requests_within_slo_pct, r.p99_ms, r.deadline_misses
        ));
        policies.push(r);
    }
    let find = |n: &str| policies.iter().find(|p| p.policy == n);
    let ratios = match (find("setpoint"), find("static")) {
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
    };
    Ok(Report {
        scenario: s.name.clone(),
        slo_p99_ms: s.service.slo_p99_ms,
        duration_s: s.duration_s,
        cores: if s.cores == 0 {
            crate::device::cpu::available_cores()
        } else {
            s.cores
        },
        policies,
        ratios,
    })
}

fn run_policy(
    s: &Scenario,
    policy: PolicyName,
    ckpt: &Path,
    state_dir: &Path,
) -> Result<PolicyReport, ScenarioError> {
    let node = Node::new(node_config(s, ckpt, state_dir))
        .map_err(|e| ScenarioError::Run(e.to_string()))?;
    node.set_policy(policy.policy(s));
    node.start();
    let ready_by = Instant::now() + Duration::from_secs(60);
    while !node.is_ready() {
        if Instant::now() > ready_by {
            node.shutdown();
            return Err(ScenarioError::Run(
                "the service did not become ready in 60 s".into(),
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let svc = node
        .service(&s.service.name)
        .map_err(|e| ScenarioError::Run(e.to_string()))?;
    let features = svc.io.features;
    let mut rng = Rng::derived(s.seed, 0x5E5);
    let rows: Vec<Vec<f32>> = (0..256)
        .map(|_| (0..features).map(|_| rng.normal() as f32).collect())
        .collect();
    // One unmeasured second at the starting rate first, the same for every policy: the
    // first requests of a fresh process pay for page faults and thread start-up.
    warm_up(&svc, &rows, s.rate_at(0.0), s.seed);
    let times = s.arrival_times();
    let t0 = Instant::now();
    let wall0 = SystemTime::now();
    let stop = Arc::new(AtomicBool::new(false));

    // Arrivals: submit on schedule; answers are collected in order by a second thread.
    let (tx, rx) = std::sync::mpsc::channel::<(f64, f64, Option<crate::serve::Pending>)>();
    let gen_svc = svc.clone();
    let gen_stop = stop.clone();
    let generator = std::thread::spawn(move || {
        for (i, &t) in times.iter().enumerate() {
            if gen_stop.load(Ordering::Relaxed) {
                break;
            }
            let due = t0 + Duration::from_secs_f64(t);
            loop {
                let now = Instant::now();
                if now >= due {
                    break;
                }
                let left = due - now;
                if left > Duration::from_micros(200) {
                    std::thread::sleep(left - Duration::from_micros(100));
                } else {
                    std::thread::yield_now();
                }
            }
            let late = t0.elapsed().as_secs_f64() - t;
            let pending = gen_svc.batcher.submit(rows[i % rows.len()].clone()).ok();
            if tx.send((t, late, pending)).is_err() {
                break;
            }
        }
    });
    let collector = std::thread::spawn(move || {
        let mut lat = Vec::new();
        let mut late = Vec::new();
        for (t, l, p) in rx {
            let answer = p.map(|p| p.wait());
            let server_s = match answer {
                Some(Ok(r)) => (r.queue_us + r.compute_us) as f64 / 1e6,
                _ => f64::INFINITY,
            };
            lat.push((t, server_s));
            late.push(l);
        }
        (lat, late)
    });

    // Jobs, each submitted at its time on a thread of its own (admission measures a step).
    let mut starters = Vec::new();
    for j in s.jobs.clone() {
        let node = node.clone();
        starters.push(std::thread::spawn(move || {
            let due = t0 + Duration::from_secs_f64(j.start_s);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            (
                j.name.clone(),
                node.submit_job(job_config(&j, wall0))
                    .err()
                    .map(|e| e.to_string()),
            )
        }));
    }

    // Sample the timeline until the end.
    let mut timeline = Vec::new();
    let mut next = t0;
    let end = t0 + Duration::from_secs_f64(s.duration_s);
    while Instant::now() < end {
        next += Duration::from_millis(100);
        if let Some(w) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(w);
        }
        // Under the controller, the shares of one tick (lanes read one by one could straddle
        // a tick); under a static policy, the lanes' fixed shares.
        let last = node.last_decisions();
        let svc_decision = last.services.iter().find(|x| x.name == s.service.name);
        let shares: Vec<(String, f64)> = if policy == PolicyName::Setpoint {
            let d = &last;
            d.services
                .iter()
                .map(|x| (x.name.clone(), x.share))
                .chain(d.jobs.iter().map(|x| (x.name.clone(), x.share)))
                .collect()
        } else {
            std::iter::once((svc.name().to_string(), svc.lane.share()))
                .chain(
                    node.jobs()
                        .iter()
                        .filter(|j| j.state() == JobState::Running)
                        .map(|j| (j.name.clone(), j.lane().share())),
                )
                .collect()
        };
        let enforced = svc.lane.is_enforced();
        timeline.push(Sample {
            t_s: t0.elapsed().as_secs_f64(),
            shares: if enforced { shares } else { Vec::new() },
            p99_s: node
                .service_measure(&s.service.name)
                .filter(|m| m.window.count > 0)
                .map(|m| m.window.total.p99),
            busy_frac: node.busy_and_ticks().0,
            arrival_rate: node
                .service_measure(&s.service.name)
                .map_or(0.0, |m| m.arrival_rate),
            feed_forward: svc_decision.map(|d| d.feed_forward),
            cost_per_request_s: svc_decision.and_then(|d| d.cost_per_request_s),
            batch_limit: svc.batcher.max_batch_size(),
        });
    }
    stop.store(true, Ordering::Relaxed);
    let _ = generator.join();
    let (latencies, mut lateness) = collector
        .join()
        .map_err(|_| ScenarioError::Run("the answer collector panicked".into()))?;
    lateness.sort_by(|a, b| a.total_cmp(b));
    let generator_late_p99_ms = 1000.0 * quantile(&lateness, 0.99);
    let refusals: HashMap<String, Option<String>> =
        starters.into_iter().filter_map(|h| h.join().ok()).collect();

    // Jobs' outcomes before the node stops them.
    let used_core_s: f64 = svc.lane.usage().core_s
        + node
            .jobs()
            .iter()
            .map(|j| j.lane().usage().core_s)
            .sum::<f64>();
    let jobs: Vec<JobOutcome> = s
        .jobs
        .iter()
        .map(|j| {
            let job = node.job(&j.name).ok();
            let finish_s = job.as_ref().and_then(|job| {
                (job.state() == JobState::Completed)
                    .then(|| job.progress().finished_at)
                    .flatten()
                    .and_then(|f| f.duration_since(wall0).ok())
                    .map(|d| d.as_secs_f64())
            });
            let deviation_pct = match (finish_s, j.deadline_s) {
                (Some(f), Some(d)) => Some(100.0 * (f - d) / (d - j.start_s)),
                _ => None,
            };
            JobOutcome {
                name: j.name.clone(),
                deadline_s: j.deadline_s,
                finish_s,
                deviation_pct,
                missed: j.deadline_s.is_some()
                    && finish_s.zip(j.deadline_s).is_none_or(|(f, d)| f > d),
                refused: refusals.get(&j.name).cloned().flatten(),
                state: job.as_ref().map_or("refused".into(), |j| {
                    format!("{:?}", j.state()).to_lowercase()
                }),
                val_accuracy: job
                    .as_ref()
                    .and_then(|j| j.progress().history.last().and_then(|r| r.val_accuracy)),
                epochs_done: job.as_ref().map_or(0, |j| j.progress().epochs_done),
            }
        })
        .collect();
    let cores = node.workers_of(crate::node::DeviceId::FIRST);
    node.shutdown();

    let mut r = summarise(
        s,
        policy.name(),
        latencies,
        jobs,
        timeline,
        used_core_s / cores as f64,
    );
    r.generator_late_p99_ms = generator_late_p99_ms;
    Ok(r)
}

/// Sends one second of Poisson arrivals at `rate` and waits for the answers.
fn warm_up(svc: &crate::node::LoadedService, rows: &[Vec<f32>], rate: f64, seed: u64) {
    let mut rng = Rng::derived(seed, 0xBA5E);
    let start = Instant::now();
    let mut pending = Vec::new();
    if rate <= 0.0 {
        return;
    }
    let mut t = 0.0;
    loop {
        t += -(1.0 - rng.next_f64()).ln() / rate;
        if t >= 1.0 {
            break;
        }
        if let Some(wait) =
            (start + Duration::from_secs_f64(t)).checked_duration_since(Instant::now())
        {
            std::thread::sleep(wait);
        }
        if let Ok(p) = svc.batcher.submit(rows[pending.len() % rows.len()].clone()) {
            pending.push(p);
        }
    }
    for p in pending {
        let _ = p.wait();
    }
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    crate::util::stats::nearest_rank(sorted, q).unwrap_or(0.0)
}

fn summarise(
    s: &Scenario,
    policy: &str,
    latencies: Vec<(f64, f64)>,
    jobs: Vec<JobOutcome>,
    timeline: Vec<Sample>,
    device_seconds_used: f64,
) -> PolicyReport {
    let slo = s.service.slo_p99_ms / 1000.0;
    let window = s.service.window_ms as f64 / 1000.0;
    let n_windows = (s.duration_s / window).ceil() as usize;
    let mut per_window: Vec<Vec<f64>> = vec![Vec::new(); n_windows.max(1)];
    for &(t, l) in &latencies {
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
    let mut all: Vec<f64> = latencies.iter().map(|l| l.1).collect();
    all.sort_by(|a, b| a.total_cmp(b));
    let within = all.iter().filter(|&&l| l <= slo).count();
    let rejected = all.iter().filter(|l| l.is_infinite()).count();
    let finished: Vec<f64> = jobs
        .iter()
        .filter_map(|j| j.deviation_pct.map(f64::abs))
        .collect();
    let share_seconds = if policy == "none" {
        None
    } else {
        Some(
            timeline
                .windows(2)
                .map(|w| (w[1].t_s - w[0].t_s) * w[1].shares.iter().map(|s| s.1).sum::<f64>())
                .sum(),
        )
    };
    let pct = |a: usize, b: usize| {
        if b == 0 {
            100.0
        } else {
            100.0 * a as f64 / b as f64
        }
    };
    PolicyReport {
        policy: policy.to_string(),
        requests: all.len(),
        rejected,
        requests_within_slo_pct: pct(within, all.len()),
        windows,
        windows_within_slo_pct: pct(good_windows, windows),
        window_p99_ms,
        p99_ms: 1000.0 * quantile(&all, 0.99),
        p50_ms: 1000.0 * quantile(&all, 0.50),
        deadline_misses: jobs.iter().filter(|j| j.missed).count(),
        mean_abs_deviation_pct: (!finished.is_empty())
            .then(|| finished.iter().sum::<f64>() / finished.len() as f64),
        jobs,
        share_seconds,
        device_seconds_used,
        generator_late_p99_ms: 0.0,
        timeline,
    }
}
