//! The control tick: every period, observe every tenant, decide, apply to the lanes.

use crate::util::sync;
use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use serde::Serialize;

use super::jobs::{Job, JobProgress};
use super::{DeviceId, JobState, LoadedService, Node, Placement};
use crate::control::{Controller, Decisions, JobClass, JobObs, Observations};
use crate::util::window::WindowStats;

/// How shares are decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Policy {
    /// The feedback controller.
    Controller,
    /// Fixed shares by tenant name, as an operator would set them; tenants not named get
    /// `default`.
    Static {
        /// Share per tenant.
        shares: HashMap<String, f64>,
        /// Share of tenants not named.
        default: f64,
    },
    /// No shares: every lane runs unthrottled on every worker, as work comes.
    None,
}

impl Policy {
    /// Name used in reports.
    pub fn name(&self) -> &'static str {
        match self {
            Policy::Controller => "setpoint",
            Policy::Static { .. } => "static",
            Policy::None => "none",
        }
    }
}

/// What a tenant had done at the last tick.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Prev {
    /// Requests offered (a service, a replica).
    pub(super) arrivals: u64,
    /// Steps taken (a job); rows answered (a service, a replica).
    pub(super) steps: u64,
    /// Core-seconds its lane used.
    pub(super) core_s: f64,
}

/// Per-service measurements of the last tick, for status and metrics.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceMeasure {
    /// Latency quantiles over the SLO window.
    pub window: WindowStats,
    /// Arrivals per second over the last period.
    pub arrival_rate: f64,
    /// Requests answered per second over the last period.
    pub throughput: f64,
}

/// The control loop's memory.
pub(crate) struct ControlState {
    pub(crate) controller: Controller,
    pub(crate) policy: Policy,
    pub(crate) last: Decisions,
    pub(crate) ticks: u64,
    pub(crate) busy_frac: f64,
    pub(crate) busy_by_device: Vec<f64>,
    pub(crate) per_device: Vec<Decisions>,
    pub(crate) measures: HashMap<String, ServiceMeasure>,
    pub(super) prev: HashMap<TenantKey, Prev>,
    /// The split of each service's rows between its replicas.
    pub(super) split: super::replica_control::SplitState,
    /// Other processes' load on the CPU, once a tick has read it.
    cpu_load: Option<crate::telemetry::cpu_load::CpuLoadSource>,
    last_tick: Option<Instant>,
    started: Instant,
    log: Option<std::io::BufWriter<std::fs::File>>,
}

impl ControlState {
    pub(crate) fn new(controller: Controller, log: Option<std::fs::File>) -> Self {
        ControlState {
            controller,
            policy: Policy::Controller,
            last: Decisions::default(),
            ticks: 0,
            busy_frac: 0.0,
            busy_by_device: Vec::new(),
            per_device: Vec::new(),
            measures: HashMap::new(),
            prev: HashMap::new(),
            split: Default::default(),
            cpu_load: None,
            last_tick: None,
            started: Instant::now(),
            log: log.map(std::io::BufWriter::new),
        }
    }

    /// Forgets a removed job: what was measured of it and the last tick's decisions about
    /// it, so that neither the views and metrics until the next tick nor a new job of its
    /// name (its admission, its usage) see the old one.
    pub(crate) fn forget_job(&mut self, name: &str) {
        self.prev.remove(&TenantKey::Job(name.to_string()));
        for d in std::iter::once(&mut self.last).chain(self.per_device.iter_mut()) {
            d.jobs.retain(|j| j.name != name);
        }
    }
}

/// One decision-log line.
#[derive(Serialize)]
struct LogLine<'a> {
    t_s: f64,
    unix_ms: u128,
    policy: &'static str,
    busy_frac: f64,
    decisions: &'a Decisions,
    /// The split of each service with replicas: its rows' fractions, replica by replica.
    #[serde(skip_serializing_if = "HashMap::is_empty")]
    splits: &'a HashMap<String, Vec<f64>>,
}

/// A tenant the control loop remembers between ticks: services and jobs have names of
/// their own (a service and a job may share one).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum TenantKey {
    /// An inference service.
    Service(String),
    /// A training job.
    Job(String),
    /// Replica `.1` of a service.
    Replica(String, usize),
}

/// The clock of one tick.
pub(super) struct TickClock {
    /// Seconds since the previous tick (the control period before the first).
    pub(super) period_s: f64,
    /// Seconds since the loop started.
    pub(super) now_s: f64,
    /// Wall-clock time, for deadlines.
    pub(super) wall_now: SystemTime,
}

/// What one tick observed, by device: the observations the controller decides on and the
/// tenants they are of, in the same order as the decisions that come back (a service by
/// its replica on that device).
pub(super) struct Round {
    pub(super) obs: Vec<Observations>,
    pub(super) services: Vec<Vec<(Arc<LoadedService>, usize)>>,
    pub(super) running: Vec<Vec<Arc<Job>>>,
    pub(super) used_core_s: Vec<f64>,
}

impl Round {
    fn new(n: usize) -> Self {
        Round {
            obs: vec![Observations::default(); n],
            services: vec![Vec::new(); n],
            running: vec![Vec::new(); n],
            used_core_s: vec![0.0; n],
        }
    }
}

impl Node {
    /// One control period: observes every serving service and running job, decides their
    /// shares and batch sizes by the policy in force, and applies them to the lanes.
    pub fn control_tick(self: &Arc<Self>) -> Decisions {
        // GPU telemetry first (NVML reads block briefly), outside the control state's lock.
        let (gpu_samples, _) = self.poll_telemetry();
        let mut st = sync::lock(&self.control);
        let clock = self.tick_clock(&mut st);
        let round = self.observe(&mut st, &clock, &gpu_samples);
        let per_device = st.controller.tick_devices(&round.obs);
        apply(&st.policy, &round, &per_device);
        let decisions = Decisions::merged(&per_device);
        st.ticks += 1;
        log_decisions(&mut st, &clock, &decisions);
        st.last = decisions.clone();
        st.per_device = per_device;
        decisions
    }

    fn tick_clock(&self, st: &mut ControlState) -> TickClock {
        let now = Instant::now();
        let period_s = st
            .last_tick
            .map(|t| now.saturating_duration_since(t).as_secs_f64())
            .unwrap_or(self.config().control_period_ms as f64 / 1000.0)
            .max(1e-3);
        st.last_tick = Some(now);
        TickClock {
            period_s,
            now_s: now.saturating_duration_since(st.started).as_secs_f64(),
            wall_now: SystemTime::now(),
        }
    }

    /// Observes every tenant, one set of observations per device: each device's capacity is
    /// arbitrated alone. Throttling is shown beside the decisions it explains. Foreign load
    /// lowers the capacity the arbiter hands out: NVML's on the GPU the tenants run on, and
    /// other processes' CPU time on the CPU's devices (each part of the CPU losing the same
    /// fraction; taken from what the services leave, since they run at normal priority)
    /// unless `control.cpu_foreign_load` is off.
    fn observe(
        &self,
        st: &mut ControlState,
        clock: &TickClock,
        gpu_samples: &[crate::telemetry::GpuSample],
    ) -> Round {
        let throttling: Vec<String> = gpu_samples
            .iter()
            .flat_map(|g| {
                g.throttle_reasons
                    .iter()
                    .map(move |r| format!("gpu{}: {r}", g.index))
            })
            .collect();
        let n = self.device_count();
        let mut round = Round::new(n);
        let cpu_foreign = self.cpu_foreign_load(st);
        for (d, obs) in self.devices().zip(round.obs.iter_mut()) {
            obs.now_s = clock.now_s;
            obs.throttling = throttling.clone();
            let placement = self.placement(d);
            (obs.foreign_load, obs.foreign_behind_services) = match placement {
                Placement::Cpu(_) => (cpu_foreign, true),
                Placement::Cuda(_) => (foreign_load(placement.gpu_uuid(), gpu_samples), false),
            };
        }
        for svc in self.ready_services() {
            self.observe_service(st, clock, &mut round, svc);
        }
        for job in self.jobs() {
            self.observe_job(st, clock, &mut round, job);
        }
        st.busy_by_device = self
            .devices()
            .map(|d| {
                let capacity = clock.period_s * self.capacity_of(d);
                (round.used_core_s[d.index()] / capacity).clamp(0.0, 1.0)
            })
            .collect();
        st.busy_frac = st.busy_by_device.iter().sum::<f64>() / n as f64;
        round
    }

    /// Other processes' load on the CPU, as a fraction of the cores the node's CPU devices
    /// have (0 when `control.cpu_foreign_load` is off or the node has no CPU device).
    fn cpu_foreign_load(&self, st: &mut ControlState) -> f64 {
        if !self.config().control.cpu_foreign_load {
            st.cpu_load = None;
            return 0.0;
        }
        let cores: f64 = self
            .devices()
            .filter(|&d| matches!(self.placement(d), Placement::Cpu(_)))
            .map(|d| self.capacity_of(d))
            .sum();
        if cores <= 0.0 {
            return 0.0;
        }
        st.cpu_load
            .get_or_insert_with(|| crate::telemetry::cpu_load::CpuLoadSource::new(cores))
            .sample()
    }

    fn observe_job(
        &self,
        st: &mut ControlState,
        clock: &TickClock,
        round: &mut Round,
        job: Arc<Job>,
    ) {
        let d = self.device_of(job.lane());
        if self.device_failed(d) {
            return;
        }
        let p = job.progress();
        let usage = job.lane().usage();
        let now = Prev {
            arrivals: 0,
            steps: p.steps,
            core_s: usage.core_s,
        };
        let prev = st
            .prev
            .insert(TenantKey::Job(job.name.clone()), now)
            .unwrap_or_default();
        round.used_core_s[d.index()] += usage.core_s - prev.core_s;
        if job.state() != JobState::Running || p.batches_per_epoch == 0 {
            return;
        }
        let steps = p.steps.saturating_sub(prev.steps);
        let measured_cost = (steps > 0).then(|| (usage.core_s - prev.core_s) / steps as f64);
        let period = JobPeriod {
            wall_now: clock.wall_now,
            steps,
            measured_cost,
            cores: self.capacity_of(d),
        };
        round.obs[d.index()].jobs.push(job_obs(&job, &p, &period));
        round.running[d.index()].push(job);
    }

    /// The share policy in force.
    pub fn policy(&self) -> Policy {
        sync::lock(&self.control).policy.clone()
    }

    /// Sets how shares are decided from the next tick on.
    pub(crate) fn set_policy(&self, policy: Policy) {
        sync::lock(&self.control).policy = policy;
    }

    /// The last tick's decisions, every device's together.
    pub(crate) fn last_decisions(&self) -> Decisions {
        sync::lock(&self.control).last.clone()
    }

    /// The last tick's decisions for device `d` (empty before the first tick).
    pub(crate) fn last_decisions_of(&self, d: DeviceId) -> Decisions {
        sync::lock(&self.control)
            .per_device
            .get(d.index())
            .cloned()
            .unwrap_or_default()
    }

    /// Other processes' load on each device over the last period, by device index.
    pub(crate) fn foreign_by_device(&self) -> Vec<f64> {
        sync::lock(&self.control)
            .per_device
            .iter()
            .map(|d| d.foreign_load)
            .collect()
    }

    /// Fraction of each device's workers busy over the last period, by device index.
    pub(crate) fn busy_by_device(&self) -> Vec<f64> {
        sync::lock(&self.control).busy_by_device.clone()
    }

    /// The last tick's measurement of service `name`.
    pub(crate) fn service_measure(&self, name: &str) -> Option<ServiceMeasure> {
        sync::lock(&self.control).measures.get(name).cloned()
    }

    /// Fraction of the device's cores busy over the last period, and ticks so far.
    pub(crate) fn busy_and_ticks(&self) -> (f64, u64) {
        let st = sync::lock(&self.control);
        (st.busy_frac, st.ticks)
    }

    /// Runs the control tick every `control_period_ms` (read again after every tick, so a
    /// reload changes it) until the node shuts down. The service manager's watchdog is fed
    /// from here, between ticks, at the interval it asked for: a loop that stops ticking
    /// stops feeding it, and systemd restarts the daemon. The status line is refreshed here
    /// too.
    pub(crate) fn control_loop(self: Arc<Self>) {
        let notifier = self.notifier().filter(|n| n.is_enabled());
        let watchdog = notifier.as_ref().and_then(|n| n.watchdog_interval());
        let period = || std::time::Duration::from_millis(self.config().control_period_ms);
        let start = Instant::now();
        let mut next_tick = start + period();
        let mut next_ping = start;
        let mut next_status = start + STATUS_EVERY;
        let mut deaf = false;
        while !self.is_shutting_down() {
            let mut wake = next_tick;
            if watchdog.is_some() {
                wake = wake.min(next_ping);
            }
            if notifier.is_some() {
                wake = wake.min(next_status);
            }
            let now = Instant::now();
            if wake > now {
                std::thread::sleep(wake - now);
            }
            if self.is_shutting_down() {
                break;
            }
            if Instant::now() >= next_tick {
                // A late tick does not try to catch up: the next one is a period after it.
                next_tick = Instant::now().max(next_tick) + period();
                self.control_tick();
            }
            if let Some(n) = &notifier {
                let now = Instant::now();
                if let Some(interval) = watchdog
                    && now >= next_ping
                {
                    if super::heartbeat::answers(self.api_heartbeat(), interval, &mut deaf) {
                        n.watchdog();
                    }
                    next_ping = now + interval;
                }
                if now >= next_status {
                    n.status(&self.status_line());
                    next_status = now + STATUS_EVERY;
                }
            }
        }
    }
}

/// Applies the decisions (or the fixed policy) to the lanes observed. A job whose deadline
/// has passed is stopped, or demoted, as `control.past_deadline` says, whatever the policy
/// (under a fixed policy a demotion changes nothing but the log).
fn apply(policy: &Policy, round: &Round, per_device: &[Decisions]) {
    for (d, decisions) in per_device.iter().enumerate() {
        for (job, dec) in round.running[d].iter().zip(&decisions.jobs) {
            if let Some(what) = dec.past_deadline {
                job.past_deadline(what);
            }
        }
    }
    let all_lanes = || {
        round
            .services
            .iter()
            .flatten()
            .map(|(s, i)| &s.replicas()[*i].lane)
            .chain(round.running.iter().flatten().map(|j| j.lane()))
    };
    match policy {
        Policy::Controller => {
            for (d, decisions) in per_device.iter().enumerate() {
                for ((svc, i), dec) in round.services[d].iter().zip(&decisions.services) {
                    let r = &svc.replicas()[*i];
                    r.lane.set_enforced(true);
                    r.lane.set_share(dec.share);
                    r.batcher.set_max_batch_size(dec.batch_size);
                }
                for (job, dec) in round.running[d].iter().zip(&decisions.jobs) {
                    job.lane().set_enforced(true);
                    job.lane().set_share(dec.share);
                    job.events().note_share(dec.share);
                }
            }
        }
        Policy::Static { shares, default } => {
            for lane in all_lanes() {
                lane.set_enforced(true);
                lane.set_share(shares.get(lane.name()).copied().unwrap_or(*default));
            }
        }
        Policy::None => {
            for lane in all_lanes() {
                lane.set_enforced(false);
            }
        }
    }
}

/// Appends the tick's decisions to the decision log, if one is kept; a log that cannot be
/// written is turned off.
fn log_decisions(st: &mut ControlState, clock: &TickClock, decisions: &Decisions) {
    let policy = st.policy.name();
    let busy_frac = st.busy_frac;
    let splits = &st.split.last;
    let Some(log) = st.log.as_mut() else { return };
    let line = LogLine {
        t_s: clock.now_s,
        unix_ms: clock
            .wall_now
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis()),
        policy,
        busy_frac,
        decisions,
        splits,
    };
    let written = serde_json::to_writer(&mut *log, &line)
        .map_err(std::io::Error::other)
        .and_then(|_| log.write_all(b"\n"))
        .and_then(|_| log.flush());
    if let Err(e) = written {
        tracing::warn!("cannot write the decision log: {e}; it is turned off");
        st.log = None;
    }
}

/// What a job did over the last period.
struct JobPeriod {
    wall_now: SystemTime,
    steps: u64,
    measured_cost: Option<f64>,
    cores: f64,
}

/// A running job as the controller sees it.
fn job_obs(job: &Job, p: &JobProgress, period: &JobPeriod) -> JobObs {
    let secs_to = |t: SystemTime| match t.duration_since(period.wall_now) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    };
    let deadline = job.deadline();
    JobObs {
        name: job.name.clone(),
        class: if job.config.best_effort || deadline.is_none() {
            JobClass::BestEffort
        } else {
            JobClass::Deadline
        },
        deadline_in_s: deadline.map(secs_to),
        allotted_s: deadline.map(|d| match d.duration_since(job.submitted_at) {
            Ok(a) => a.as_secs_f64(),
            Err(_) => 0.0,
        }),
        steps_done: p.steps,
        steps_per_epoch: p.batches_per_epoch as u64,
        epochs_done: p.epochs_done,
        max_epochs: job.epochs(),
        target_accuracy: job.target(),
        curve: p
            .history
            .iter()
            .map(|r| r.val_accuracy.unwrap_or(0.0))
            .collect(),
        steps_in_period: period.steps,
        share: job.lane().share(),
        step_cost_core_s: period
            .measured_cost
            .filter(|c| *c > 0.0)
            .or(job.estimated_step_cost()),
        cores: period.cores,
        width: job.lane().width().map(|w| w as f64),
    }
}

/// How often the service manager's status line is refreshed.
const STATUS_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// The share of the GPU `uuid` that other processes used in the latest sample (0 without a
/// GPU, without a sample of it, or when the driver has no per-process statistics).
pub(crate) fn foreign_load(uuid: Option<&str>, samples: &[crate::telemetry::GpuSample]) -> f64 {
    let Some(uuid) = uuid else { return 0.0 };
    samples
        .iter()
        .find(|s| s.uuid == uuid)
        .and_then(|s| s.foreign_util_pct)
        .filter(|p| p.is_finite())
        .map_or(0.0, |p| (p / 100.0).clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::GpuSample;

    #[test]
    fn foreign_load_is_read_from_the_gpu_tenants_run_on() {
        let mut a = GpuSample::empty(0, "GPU-a", "test", 0.0);
        a.foreign_util_pct = Some(30.0);
        let mut b = GpuSample::empty(1, "GPU-b", "test", 0.0);
        b.foreign_util_pct = Some(80.0);
        let samples = [a, b];
        assert_eq!(
            foreign_load(None, &samples),
            0.0,
            "CPU tenants: nothing subtracted"
        );
        assert!((foreign_load(Some("GPU-a"), &samples) - 0.30).abs() < 1e-12);
        assert!((foreign_load(Some("GPU-b"), &samples) - 0.80).abs() < 1e-12);
        assert_eq!(
            foreign_load(Some("GPU-c"), &samples),
            0.0,
            "no sample of it"
        );
        let mut nan = GpuSample::empty(0, "GPU-a", "test", 0.0);
        nan.foreign_util_pct = Some(f64::NAN);
        assert_eq!(foreign_load(Some("GPU-a"), &[nan]), 0.0);
    }
}
