//! The scenario file: its TOML schema with defaults, parsing, the checks of its values and
//! the errors of reading and running one.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::node::Policy;

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
    pub(super) fn policy(self, s: &Scenario) -> Policy {
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
    /// The devices it runs on, a replica on each (as the node config's `replicas`); empty:
    /// one replica on the node's device.
    #[serde(default)]
    pub replicas: Vec<crate::config::ReplicaSpec>,
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
    /// The CPU as several devices, each this fraction of `cores` (the node config's
    /// `device.cpu_split`); empty: one device.
    #[serde(default)]
    pub cpu_split: Vec<f64>,
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
        self.check_run(&mut errors);
        self.check_service(&mut errors);
        self.check_jobs(&mut errors);
        self.check_static(&mut errors);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(InvalidScenario::Checks(errors))
        }
    }

    /// The run's own settings: duration, control period, reserve, leftover.
    fn check_run(&self, errors: &mut Vec<String>) {
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
        let parts_ok = self.cpu_split.iter().all(|&x| x > 0.0 && x <= 1.0)
            && self.cpu_split.iter().sum::<f64>() <= 1.0 + 1e-9;
        if !parts_ok {
            errors.push(format!(
                "cpu_split: each part must be in (0, 1] and together at most 1, got {:?}",
                self.cpu_split
            ));
        }
        if !["best-effort", "idle", "spread"].contains(&self.leftover.as_str()) {
            errors.push(format!(
                "leftover: expected \"best-effort\", \"idle\" or \"spread\", got {:?}",
                self.leftover
            ));
        }
    }

    /// The service: layers, SLO, arrivals, bursts, warm-up data.
    fn check_service(&self, errors: &mut Vec<String>) {
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
        for (i, r) in svc.replicas.iter().enumerate() {
            if let crate::config::ReplicaSpec::CpuPart(n) = r
                && *n as usize >= self.cpu_split.len()
            {
                errors.push(format!(
                    "service.replicas[{i}]: {r} names a part of the CPU, but cpu_split has {} \
                     part(s)",
                    self.cpu_split.len()
                ));
            }
        }
        if let Err(e) = crate::data::check_spec(&svc.warmup_data) {
            errors.push(format!("service.warmup_data: {e}"));
        }
    }

    /// The jobs: layers, data, deadlines, names unique among the tenants.
    fn check_jobs(&self, errors: &mut Vec<String>) {
        let svc = &self.service;
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
    }

    /// The static shares: known tenants, shares in [0, 1].
    fn check_static(&self, errors: &mut Vec<String>) {
        let svc = &self.service;
        for (k, v) in &self.static_shares {
            if k != &svc.name && !self.jobs.iter().any(|j| &j.name == k) {
                errors.push(format!("static.{k}: no service or job of that name"));
            }
            if !(0.0..=1.0).contains(v) {
                errors.push(format!("static.{k}: a share must be in [0, 1], got {v}"));
            }
        }
    }
}
