//! The controller: pure logic, `(state, observations) → decisions`, with no I/O, no clocks
//! and no threads, so it is tested on scripted plants and costs microseconds per tick.
//!
//! Every control period the daemon observes each tenant and calls [`Controller::tick`]:
//!
//! - **Inference services** ([`inference`]): a PI loop on the normalised error of the
//!   window's p99 latency against a set point below the SLO, plus feed-forward from arrival
//!   rate × measured cost per request; a batch-size limit from a service-time model learned
//!   online.
//! - **Training jobs** ([`training`]): the rate needed to finish the remaining work by the
//!   deadline, feed-forward from the measured rate per unit of share, and a PI loop on the rate
//!   error; remaining work for an accuracy target from a power-law fit of the learning curve,
//!   bounded by the epoch limit. A job whose deadline has passed is demoted to best-effort, or
//!   marked to be stopped, as [`PastDeadline`] says. Its finish is predicted from its rate
//!   smoothed over about 20 s ([`rate`]), not from the share of the moment.
//! - **The arbiter** ([`arbiter`]): services first, then deadline jobs (least slack first),
//!   then best-effort jobs; the total never exceeds `1 − reserve`.
//! - **Admission** ([`admission`]): a deadline job that cannot finish on what the tenants
//!   leave it, now or as the running deadline jobs finish ([`forecast`]), is refused with the
//!   earliest deadline it could meet.

pub mod admission;
pub mod arbiter;
pub(crate) mod forecast;
pub mod inference;
pub mod pi;
pub mod rate;
pub mod replica_cost;
pub mod split;
pub mod training;

use std::collections::HashMap;

use serde::Serialize;

pub use pi::{Pi, PiGains};

/// Where capacity no tenant needs goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Leftover {
    /// To best-effort jobs, equally.
    BestEffort,
    /// Nowhere: the device idles (and saves its energy).
    Idle,
    /// To every tenant, in proportion to its share.
    Spread,
}

impl Leftover {
    /// The spelling used in the config file and in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Leftover::BestEffort => "best-effort",
            Leftover::Idle => "idle",
            Leftover::Spread => "spread",
        }
    }
}

impl std::fmt::Display for Leftover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What becomes of a deadline job whose deadline passes before it finishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PastDeadline {
    /// It runs on as a best-effort job, on capacity no set point needs.
    BestEffort,
    /// It is stopped (cancelled, keeping its checkpoint).
    Stop,
}

impl PastDeadline {
    /// The spelling used in the config file and in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            PastDeadline::BestEffort => "best-effort",
            PastDeadline::Stop => "stop",
        }
    }
}

impl std::fmt::Display for PastDeadline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The smallest share any tenant is given: a lane never stops entirely, so its progress and
/// latency stay measurable.
pub const MIN_SHARE: f64 = 0.01;

/// The controller's settings.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ControlConfig {
    /// Control period, seconds.
    pub period_s: f64,
    /// Capacity never handed out, in [0, 0.5].
    pub reserve_frac: f64,
    /// Where unneeded capacity goes.
    pub leftover: Leftover,
    /// Latency set point as a fraction of the SLO: the loops aim below the objective so that
    /// noise and steps stay under it.
    pub latency_setpoint_frac: f64,
    /// Target utilisation of a service's share by its arrivals, for the feed-forward.
    pub service_utilisation: f64,
    /// Gains of the service loops.
    pub service_gains: PiGains,
    /// Gains of the job loops.
    pub job_gains: PiGains,
    /// Smallest share any tenant gets.
    pub min_share: f64,
    /// Jobs aim to finish this fraction of their allotted time before the deadline, and at
    /// least one control period before it (see [`ControlConfig::deadline_margin_s`]).
    pub deadline_margin_frac: f64,
    /// What becomes of a deadline job whose deadline has passed.
    pub past_deadline: PastDeadline,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            period_s: 0.1,
            reserve_frac: 0.05,
            leftover: Leftover::BestEffort,
            latency_setpoint_frac: 0.6,
            service_utilisation: 0.6,
            service_gains: PiGains { kp: 0.05, ki: 0.03 },
            job_gains: PiGains { kp: 0.05, ki: 0.02 },
            min_share: MIN_SHARE,
            deadline_margin_frac: 0.01,
            past_deadline: PastDeadline::BestEffort,
        }
    }
}

impl ControlConfig {
    /// How long before its deadline a job with `allotted_s` seconds from submission to
    /// deadline aims to finish: `deadline_margin_frac` of them, at least one period.
    pub fn deadline_margin_s(&self, allotted_s: f64) -> f64 {
        (self.deadline_margin_frac * allotted_s.max(0.0)).max(self.period_s)
    }

    /// The earliest deadline, from now, by which a job that needs `busy_s` seconds of work
    /// keeps its margin: the inverse of [`ControlConfig::deadline_margin_s`].
    pub fn deadline_keeping_margin_s(&self, busy_s: f64) -> f64 {
        (busy_s / (1.0 - self.deadline_margin_frac)).max(busy_s + self.period_s)
    }
}

/// One inference service as measured over the last period.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ServiceObs {
    /// Name.
    pub name: String,
    /// Response-time objective (p99), seconds.
    pub slo_s: f64,
    /// p99 of request latency (queue + compute) over the SLO window; None without samples.
    pub p99_s: Option<f64>,
    /// Requests that arrived during the last period, per second.
    pub arrival_rate: f64,
    /// Requests waiting now.
    pub queue_len: usize,
    /// Batches run during the last period: (rows, compute seconds).
    pub batches: Vec<(usize, f64)>,
    /// Batch times measured apart from traffic (a calibration at start): they teach the
    /// service-time model but not the cost of the requests served.
    pub calibration: Vec<(usize, f64)>,
    /// Largest batch the service can run.
    pub batch_limit: usize,
    /// The share it ran at during the last period.
    pub share: f64,
    /// The most share it can use (its workers over the device's).
    pub max_share: f64,
    /// What the device can do per second at share 1, in cores (CTAs on a GPU); a part of
    /// the CPU may have less than one.
    pub cores: f64,
}

/// Whether a job has a deadline to meet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum JobClass {
    /// Must finish by its deadline.
    Deadline,
    /// Runs on what is left.
    BestEffort,
}

/// One training job as measured over the last period.
#[derive(Debug, Clone, PartialEq)]
pub struct JobObs {
    /// Name.
    pub name: String,
    /// Deadline or best-effort.
    pub class: JobClass,
    /// Seconds from now to the deadline (negative once passed).
    pub deadline_in_s: Option<f64>,
    /// Seconds from submission to the deadline.
    pub allotted_s: Option<f64>,
    /// Optimiser steps taken.
    pub steps_done: u64,
    /// Steps in one epoch.
    pub steps_per_epoch: u64,
    /// Epochs finished.
    pub epochs_done: u32,
    /// Epoch limit.
    pub max_epochs: u32,
    /// Target validation accuracy.
    pub target_accuracy: Option<f64>,
    /// Validation accuracy after each finished epoch.
    pub curve: Vec<f64>,
    /// Steps taken during the last period.
    pub steps_in_period: u64,
    /// The share it ran at during the last period.
    pub share: f64,
    /// Processor core-seconds per step, measured (None before its first steps).
    pub step_cost_core_s: Option<f64>,
    /// What the device can do per second at share 1, in cores (CTAs on a GPU); a part of
    /// the CPU may have less than one.
    pub cores: f64,
    /// The most workers (cores) its steps can use at once, when known: a step too small for
    /// more than one thread cannot use more than one core, whatever its share. A deadline
    /// job is granted no more than `width / cores` of the device (see
    /// [`JobObs::usable_share`]).
    pub width: Option<f64>,
}

impl JobObs {
    /// The most share its steps can use: `width / cores`, at most 1; all of the device when
    /// its width is not known.
    pub fn usable_share(&self) -> f64 {
        admission::usable_share(self.width, self.cores)
    }
}

/// Everything observed this period.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Observations {
    /// Seconds since an arbitrary origin; only differences matter.
    pub now_s: f64,
    /// Inference services.
    pub services: Vec<ServiceObs>,
    /// Running training jobs.
    pub jobs: Vec<JobObs>,
    /// Fraction of the device busy with work of processes setpoint does not own (from
    /// NVML's per-process samples on a GPU, from `/proc/stat` on the CPU; 0 when unknown).
    /// It is not handed out.
    pub foreign_load: f64,
    /// The foreign load takes what the services leave, not theirs (see
    /// [`arbiter::Foreign::behind_services`]): set on the CPU.
    pub foreign_behind_services: bool,
    /// Why the device runs slower than it could (thermal or power throttling), as the
    /// telemetry reports it; shown beside the decisions it explains.
    pub throttling: Vec<String>,
}

/// What the controller decided for a service.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServiceDecision {
    /// Name.
    pub name: String,
    /// Share the loop asked for.
    pub requested: f64,
    /// Share granted by the arbiter.
    pub share: f64,
    /// Batch size limit.
    pub batch_size: usize,
    /// The latency set point, seconds.
    pub setpoint_s: f64,
    /// The measured p99, seconds.
    pub p99_s: Option<f64>,
    /// Feed-forward part of the request.
    pub feed_forward: f64,
    /// Measured cost of one request, core-seconds.
    pub cost_per_request_s: Option<f64>,
}

/// What the controller decided for a job.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobDecision {
    /// Name.
    pub name: String,
    /// Deadline or best-effort: best-effort too for a deadline job whose deadline has passed.
    pub class: JobClass,
    /// Share the loop asked for.
    pub requested: f64,
    /// Share granted by the arbiter.
    pub share: f64,
    /// Steps still to take (estimated for an accuracy target).
    pub remaining_steps: u64,
    /// Epochs expected in all, from the learning curve (or the limit).
    pub expected_epochs: f64,
    /// Steps per second needed to finish by the deadline (minus the margin).
    pub required_rate: Option<f64>,
    /// Steps per second measured over the last second (what the loop steers on).
    pub measured_rate: f64,
    /// Steps per second smoothed over about 20 s (see [`rate`]); None before two periods.
    pub smoothed_rate: Option<f64>,
    /// Steps per second per unit of share, learned.
    pub rate_per_share: Option<f64>,
    /// Seconds to spare if the job ran on all of the device it can use from now; the arbiter
    /// serves the smallest first.
    pub slack_s: Option<f64>,
    /// Predicted finish, seconds from now: the remaining steps over the smoothed rate.
    pub predicted_finish_in_s: Option<f64>,
    /// Set once the job's deadline has passed with work left: what the policy does with it
    /// (demoted to best-effort, or to be stopped by the node).
    pub past_deadline: Option<PastDeadline>,
    /// The most share its steps can use ([`JobObs::usable_share`]).
    pub usable_share: f64,
}

/// One tick's decisions.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct Decisions {
    /// When, in the observations' clock.
    pub now_s: f64,
    /// Per service.
    pub services: Vec<ServiceDecision>,
    /// Per job.
    pub jobs: Vec<JobDecision>,
    /// Capacity that may be handed out (`1 − reserve − foreign load`).
    pub capacity: f64,
    /// Foreign load this tick (see [`Observations::foreign_load`]).
    pub foreign_load: f64,
    /// Throttling this tick (see [`Observations::throttling`]).
    pub throttling: Vec<String>,
    /// Sum of granted shares.
    pub assigned: f64,
}

impl Decisions {
    /// One view of several devices' decisions: their tenants together, capacity, foreign
    /// load and assigned share summed (in devices), throttling of the first.
    pub fn merged(per_device: &[Decisions]) -> Decisions {
        let mut out = per_device.first().cloned().unwrap_or_default();
        for d in per_device.iter().skip(1) {
            out.services.extend(d.services.iter().cloned());
            out.jobs.extend(d.jobs.iter().cloned());
            out.capacity += d.capacity;
            out.foreign_load += d.foreign_load;
            out.assigned += d.assigned;
        }
        out
    }
}

/// The controller's memory between ticks.
#[derive(Debug, Clone, Default)]
pub struct Controller {
    cfg: ControlConfig,
    /// Per (device index, service): a service with replicas has a loop on each device.
    services: HashMap<(usize, String), inference::ServiceState>,
    jobs: HashMap<String, training::JobState>,
}

impl Controller {
    /// A controller with `cfg`.
    pub fn new(cfg: ControlConfig) -> Self {
        Controller {
            cfg,
            services: HashMap::new(),
            jobs: HashMap::new(),
        }
    }

    /// Its settings.
    pub fn config(&self) -> &ControlConfig {
        &self.cfg
    }

    /// Changes its settings from the next tick on (a configuration reload); each tenant's
    /// loop keeps its state.
    pub(crate) fn set_config(&mut self, cfg: ControlConfig) {
        self.cfg = cfg;
    }

    /// One control period: each tenant's loop asks for a share, the arbiter grants them.
    /// Tenants absent from `obs` are forgotten. Names must be unique within services and
    /// within jobs.
    pub fn tick(&mut self, obs: &Observations) -> Decisions {
        self.tick_devices(std::slice::from_ref(obs))
            .pop()
            .unwrap_or_default()
    }

    /// One control period of a node with several devices: `obs[d]` observes the tenants on
    /// device `d`, and each device's capacity is arbitrated on its own (a share is a share
    /// of the tenant's device). Tenants absent from every device's observations are
    /// forgotten. A job's name must be unique across devices; a service may be observed on
    /// several (its replicas), with a loop of its own on each.
    pub fn tick_devices(&mut self, obs: &[Observations]) -> Vec<Decisions> {
        let out: Vec<Decisions> = obs
            .iter()
            .enumerate()
            .map(|(d, o)| self.decide_device(d, o))
            .collect();
        let services: usize = obs.iter().map(|o| o.services.len()).sum();
        let jobs: usize = obs.iter().map(|o| o.jobs.len()).sum();
        // Every observed tenant now has an entry, so the maps hold exactly the live ones
        // unless some left: only then is it worth building a set to forget them.
        if self.services.len() > services {
            let live: std::collections::HashSet<(usize, &str)> = obs
                .iter()
                .enumerate()
                .flat_map(|(d, o)| o.services.iter().map(move |s| (d, s.name.as_str())))
                .collect();
            self.services
                .retain(|(d, name), _| live.contains(&(*d, name.as_str())));
        }
        if self.jobs.len() > jobs {
            let live: std::collections::HashSet<&str> = obs
                .iter()
                .flat_map(|o| o.jobs.iter().map(|j| j.name.as_str()))
                .collect();
            self.jobs.retain(|k, _| live.contains(k.as_str()));
        }
        out
    }

    fn decide_device(&mut self, device: usize, obs: &Observations) -> Decisions {
        let mut services: Vec<ServiceDecision> = obs
            .services
            .iter()
            .map(|s| {
                let st = self
                    .services
                    .entry((device, s.name.clone()))
                    .or_insert_with(|| inference::ServiceState::new(s.share));
                inference::decide(&self.cfg, st, s)
            })
            .collect();
        let mut jobs: Vec<JobDecision> = obs
            .jobs
            .iter()
            .map(|j| {
                let st = self
                    .jobs
                    .entry(j.name.clone())
                    .or_insert_with(|| training::JobState::new(j.share));
                training::decide(&self.cfg, st, j, obs.now_s)
            })
            .collect();
        let foreign = arbiter::Foreign {
            load: obs.foreign_load,
            behind_services: obs.foreign_behind_services,
        };
        let capacity = arbiter::arbitrate(&self.cfg, foreign, &mut services, &mut jobs);
        for d in &services {
            if let Some(st) = self.services.get_mut(&(device, d.name.clone())) {
                inference::granted(&self.cfg, st, d.share);
            }
        }
        for d in &jobs {
            if let Some(st) = self.jobs.get_mut(&d.name) {
                training::granted(&self.cfg, st, d.share);
            }
        }
        let assigned = services.iter().map(|s| s.share).sum::<f64>()
            + jobs.iter().map(|j| j.share).sum::<f64>();
        Decisions {
            now_s: obs.now_s,
            services,
            jobs,
            capacity,
            assigned,
            foreign_load: obs.foreign_load,
            throttling: obs.throttling.clone(),
        }
    }
}
