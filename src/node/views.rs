//! What the API and the service manager see of the node: its status, its devices, every
//! tenant with its set point, and the jobs' and services' views.

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::control::ServiceMeasure;
use super::jobs::{Job, JobOutcome, JobState, JobView};
use super::services::{ServiceOrigin, ServiceState, ServiceView};
use super::{DeviceId, Node, Policy, ServiceSlot, health};
use crate::config::ServiceConfig;
use crate::control::JobDecision;
use crate::util::sync;

/// The node at a glance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusView {
    /// Version and revision.
    pub version: String,
    /// The addresses the APIs listen on.
    #[serde(default)]
    pub listeners: Listeners,
    /// RFC 3339 start time.
    pub started_at: String,
    /// Seconds since start.
    pub uptime_s: f64,
    /// All services loaded and not shutting down.
    pub ready: bool,
    /// How shares are decided (`setpoint`, `static`, `none`).
    pub policy: PolicyKind,
    /// Control periods run so far.
    pub control_ticks: u64,
    /// Devices and their tenants.
    pub devices: Vec<DeviceView>,
    /// GPUs the driver reports (among those the config selects).
    pub gpus: Vec<crate::device::cuda::GpuInfo>,
    /// Why tenants run on the backend they run on, in one line.
    pub device_note: String,
    /// The latest GPU telemetry (NVML), one sample per GPU; empty without GPUs.
    pub gpu_telemetry: Vec<crate::telemetry::GpuSample>,
    /// Every tenant: services first, then jobs.
    pub tenants: Vec<TenantView>,
}

/// The addresses the daemon's APIs listen on, as bound.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listeners {
    /// The HTTP API (`listen`).
    pub http: Option<String>,
    /// The gRPC API (`grpc_listen`); `None` when it is off.
    pub grpc: Option<String>,
}

impl Node {
    /// Records the addresses the APIs listen on, for status.
    pub fn set_listeners(&self, listeners: Listeners) {
        *crate::util::sync::write(&self.listeners) = listeners;
    }
}

/// Which share policy is in force, as status names it ([`Policy::name`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicyKind {
    /// The feedback controller.
    #[serde(rename = "setpoint")]
    Controller,
    /// Fixed shares.
    Static,
    /// No shares.
    None,
}

impl From<&Policy> for PolicyKind {
    fn from(p: &Policy) -> Self {
        match p {
            Policy::Controller => PolicyKind::Controller,
            Policy::Static { .. } => PolicyKind::Static,
            Policy::None => PolicyKind::None,
        }
    }
}

/// One device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceView {
    /// The device: `cpu` or `cuda:N`.
    pub name: String,
    /// Workers it offers: CPU threads, or a GPU's CTAs (SMs × resident blocks per SM).
    pub workers: usize,
    /// Sum of tenants' shares.
    pub share_assigned: f64,
    /// Fraction of its workers busy over the last control period.
    pub busy_frac: f64,
    /// Other processes' load on it, as a fraction of it, taken off what the controller hands
    /// out: NVML's on a GPU, other processes' CPU time on the CPU (see
    /// `control.cpu_foreign_load`).
    #[serde(default)]
    pub foreign_load: f64,
    /// `ok`, or `failed` with the reason and when.
    #[serde(flatten)]
    pub health: health::DeviceHealthView,
}

/// What kind of tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TenantKind {
    /// An inference service.
    Service,
    /// A training job.
    Job,
}

/// Where a tenant is in its life: a service's state or a job's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TenantState {
    /// A service serving.
    Ready,
    /// A service loading its model, or a job loading its data.
    Loading,
    /// A service that could not load, or a job stopped by an error.
    Failed,
    /// A job accepted, its thread not started.
    Pending,
    /// A job taking steps.
    Running,
    /// A job that finished.
    Completed,
    /// A job cancelled by a user.
    Cancelled,
}

impl From<ServiceState> for TenantState {
    fn from(s: ServiceState) -> Self {
        match s {
            ServiceState::Ready => TenantState::Ready,
            ServiceState::Loading => TenantState::Loading,
            ServiceState::Failed => TenantState::Failed,
        }
    }
}

impl From<JobState> for TenantState {
    fn from(s: JobState) -> Self {
        match s {
            JobState::Pending => TenantState::Pending,
            JobState::Loading => TenantState::Loading,
            JobState::Running => TenantState::Running,
            JobState::Completed => TenantState::Completed,
            JobState::Failed => TenantState::Failed,
            JobState::Cancelled => TenantState::Cancelled,
        }
    }
}

/// One tenant (service or job) and its set point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TenantView {
    /// `service` or `job`.
    pub kind: TenantKind,
    /// Name.
    pub name: String,
    /// State (`ready`, `loading`, `running`, …).
    pub state: TenantState,
    /// What it must meet, in words (`p99 <= 25 ms`, `accuracy >= 0.95 by 2026-…`).
    pub set_point: String,
    /// A job's deadline as written in `set_point` (RFC 3339 to the second, UTC), so that a
    /// client can show it in another zone; none for a service or a job without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<String>,
    /// The measured value against it (`p99 3.2 ms`, `slack +2m 0s`), when known.
    pub measured: Option<String>,
    /// Share of the device.
    pub share: f64,
    /// Batch size in force.
    pub batch_size: usize,
    /// Requests waiting (services).
    pub queue_len: Option<usize>,
    /// The device it runs on (`cpu`, `cuda:N`); none for a service not serving.
    pub device: Option<String>,
    /// How a job fared against its deadline and target (none for a service); also said in
    /// words at the end of `measured`.
    pub outcome: Option<JobOutcome>,
    /// A service's replicas when it has several: each one's device, share, part of the
    /// rows, rows per second and latency.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<crate::node::ReplicaView>,
    /// The figures behind `set_point` and `measured`, for a client that draws them.
    #[serde(flatten)]
    pub figures: TenantFigures,
}

/// A tenant's set point and measurement as numbers: what `setpoint status --watch` draws.
/// Each is absent when it does not apply or is not known yet (and from an older daemon).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TenantFigures {
    /// A service's response-time objective, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slo_p99_ms: Option<f64>,
    /// A service's p99 over its last window, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p99_ms: Option<f64>,
    /// A service's arrival rate, rows (inference inputs) per second, refused ones included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows_per_s: Option<f64>,
    /// A job's fraction done: of the steps it is expected to need while it runs (the steps
    /// its finish estimate counts), of its epoch limit otherwise; 1 once completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<f64>,
    /// A running job's deadline minus its estimated finish, s (negative: expected late).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slack_s: Option<f64>,
    /// A job's validation accuracy after its last epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<f64>,
    /// A job's target accuracy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_accuracy: Option<f64>,
}
/// What status reads of the control loop, taken under its lock once.
struct ControlSnapshot {
    policy: PolicyKind,
    ticks: u64,
    busy_by_device: Vec<f64>,
    foreign_by_device: Vec<f64>,
    measures: HashMap<String, ServiceMeasure>,
    jobs: Vec<JobDecision>,
}

impl Node {
    fn control_snapshot(&self) -> ControlSnapshot {
        let st = sync::lock(&self.control);
        ControlSnapshot {
            policy: PolicyKind::from(&st.policy),
            ticks: st.ticks,
            busy_by_device: st.busy_by_device.clone(),
            foreign_by_device: st.per_device.iter().map(|d| d.foreign_load).collect(),
            measures: st.measures.clone(),
            jobs: st.last.jobs.clone(),
        }
    }

    /// Views of every service, loading and failed ones included.
    pub(crate) fn service_views(&self) -> Vec<ServiceView> {
        self.service_slots()
            .into_iter()
            .map(|(name, slot)| match slot {
                ServiceSlot::Ready(s) => self.serving_view(&s),
                ServiceSlot::Loading(cfg) => pending_view(name, &cfg, ServiceState::Loading, None),
                ServiceSlot::Failed(cfg, e) => {
                    pending_view(name, &cfg, ServiceState::Failed, Some(e))
                }
            })
            .collect()
    }

    /// A job's view with the controller's latest decision about it.
    pub(crate) fn job_view(&self, job: &Job) -> JobView {
        let decision = sync::lock(&self.control)
            .last
            .jobs
            .iter()
            .find(|d| d.name == job.name)
            .cloned();
        job.view(decision.as_ref())
    }

    /// Every job's view, by name, with the controller's latest decisions.
    pub(crate) fn job_views(&self) -> Vec<JobView> {
        let decisions = sync::lock(&self.control).last.jobs.clone();
        views_of(&self.jobs(), &decisions)
    }

    /// The node at a glance.
    pub fn status(&self) -> StatusView {
        let ctl = self.control_snapshot();
        let n = self.device_count();
        let mut share_assigned = vec![0.0; n];
        let svc_devices: HashMap<String, Vec<(DeviceId, f64)>> = self
            .ready_services()
            .iter()
            .map(|s| {
                // A failed device's lanes hold nothing there any more.
                let on = s.replicas().iter().map(|r| {
                    let held = if self.device_failed(r.device) {
                        0.0
                    } else {
                        r.lane.share()
                    };
                    (r.device, held)
                });
                (s.name().to_string(), on.collect())
            })
            .collect();
        let mut tenants = Vec::new();
        for view in self.service_views() {
            let on = svc_devices.get(&view.name).cloned().unwrap_or_default();
            for &(d, share) in &on {
                share_assigned[d.index()] += share;
            }
            let names: Vec<String> = on.iter().map(|&(d, _)| self.placement(d).name()).collect();
            let device = (!names.is_empty()).then(|| names.join("+"));
            tenants.push(service_tenant(&view, ctl.measures.get(&view.name), device));
        }
        for job in self.jobs() {
            let d = self.device_of(job.lane());
            let v = job.view(ctl.jobs.iter().find(|x| x.name == job.name));
            share_assigned[d.index()] += v.share;
            tenants.push(job_tenant(&v, self.placement(d).name()));
        }
        StatusView {
            version: crate::VERSION.to_string(),
            listeners: crate::util::sync::read(&self.listeners).clone(),
            started_at: crate::config::format_rfc3339(self.started_at),
            uptime_s: self.started_at.elapsed().map_or(0.0, |d| d.as_secs_f64()),
            ready: self.is_ready(),
            policy: ctl.policy,
            control_ticks: ctl.ticks,
            gpus: self.devices.gpus.clone(),
            gpu_telemetry: self.telemetry().0,
            device_note: self.devices.note.clone(),
            devices: self
                .devices()
                .map(|d| DeviceView {
                    name: self.placement(d).name(),
                    workers: self.workers_of(d),
                    share_assigned: share_assigned[d.index()],
                    busy_frac: ctl.busy_by_device.get(d.index()).copied().unwrap_or(0.0),
                    foreign_load: ctl.foreign_by_device.get(d.index()).copied().unwrap_or(0.0),
                    health: self.device_health(d),
                })
                .collect(),
            tenants,
        }
    }
}

/// The views of `jobs`, each with its decision among `decisions`.
fn views_of(jobs: &[Arc<Job>], decisions: &[JobDecision]) -> Vec<JobView> {
    jobs.iter()
        .map(|j| j.view(decisions.iter().find(|d| d.name == j.name)))
        .collect()
}

/// A service as a tenant: its SLO and the p99 measured over its window.
fn service_tenant(
    view: &ServiceView,
    measure: Option<&ServiceMeasure>,
    device: Option<String>,
) -> TenantView {
    let measured = measure.filter(|m| m.window.count > 0).map(|m| {
        format!(
            "p99 {:.2} ms ({} rows, {:.0} rows/s)",
            m.window.total.p99 * 1000.0,
            m.window.count,
            m.arrival_rate
        )
    });
    TenantView {
        kind: TenantKind::Service,
        name: view.name.clone(),
        state: view.state.into(),
        set_point: format!("p99 <= {} ms", view.slo_p99_ms),
        deadline: None,
        measured,
        share: view.share,
        batch_size: view.max_batch_size,
        queue_len: Some(view.queue_len),
        device,
        outcome: None,
        replicas: if view.replicas.len() > 1 {
            view.replicas.clone()
        } else {
            Vec::new()
        },
        figures: TenantFigures {
            slo_p99_ms: Some(view.slo_p99_ms),
            p99_ms: measure
                .filter(|m| m.window.count > 0)
                .map(|m| m.window.total.p99 * 1000.0),
            rows_per_s: measure.map(|m| m.arrival_rate),
            ..TenantFigures::default()
        },
    }
}

/// How far a job is: a completed job is done (one that reached its target early included);
/// a running one has taken `steps` of `steps + remaining_steps`, the steps its finish
/// estimate counts (its learning curve's expected epochs, for a target); otherwise the
/// fraction of its epoch limit done.
fn job_progress(v: &JobView) -> f64 {
    if v.state == crate::node::JobState::Completed {
        return 1.0;
    }
    match v.remaining_steps {
        Some(left) if !v.state.is_terminal() && v.steps + left > 0 => {
            v.steps as f64 / (v.steps + left) as f64
        }
        _ => v.progress,
    }
}

/// A job as a tenant: its deadline or target, and its accuracy, slack and outcome.
fn job_tenant(v: &JobView, device: String) -> TenantView {
    let deadline = v.deadline.as_deref().map(crate::util::table::to_the_second);
    let set_point = match (&deadline, v.target_accuracy) {
        (Some(d), Some(t)) => format!("accuracy >= {t} by {d}"),
        (Some(d), None) => format!("{} epochs by {d}", v.epochs_max),
        (None, Some(t)) => format!("accuracy >= {t}, best effort"),
        (None, None) => format!("{} epochs, best effort", v.epochs_max),
    };
    let parts: Vec<String> = [
        v.val_accuracy.map(|a| format!("accuracy {a:.4}")),
        v.slack_s
            .filter(|_| !v.state.is_terminal())
            .map(|s| format!("slack {}", crate::util::table::signed_duration(s))),
        v.outcome.describe(),
    ]
    .into_iter()
    .flatten()
    .collect();
    let measured = (!parts.is_empty()).then(|| parts.join(", "));
    TenantView {
        kind: TenantKind::Job,
        name: v.name.clone(),
        state: v.state.into(),
        set_point,
        deadline,
        measured,
        share: v.share,
        batch_size: v.batch_size,
        queue_len: None,
        device: Some(device),
        outcome: Some(v.outcome),
        replicas: Vec::new(),
        figures: TenantFigures {
            progress: Some(job_progress(v)),
            slack_s: v.slack_s.filter(|_| !v.state.is_terminal()),
            accuracy: v.val_accuracy,
            target_accuracy: v.target_accuracy,
            ..TenantFigures::default()
        },
    }
}

fn pending_view(
    name: String,
    cfg: &ServiceConfig,
    state: ServiceState,
    error: Option<String>,
) -> ServiceView {
    ServiceView {
        name,
        state,
        error,
        layers: cfg.layers.clone().unwrap_or_default(),
        slo_p99_ms: cfg.slo.p99_ms,
        timeout_ms: cfg.timeout_ms,
        max_batch_size: cfg.batching.max_batch_size,
        max_queue_delay_ms: cfg.batching.max_queue_delay_ms,
        max_queue: cfg.max_queue,
        queue_len: 0,
        share: 0.0,
        success_count: 0,
        origin: Some(ServiceOrigin::Config),
        created_at: None,
        precision: None,
        replicas: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_policy_kind_is_spelled_as_the_policy_names_itself() {
        let policies = [
            Policy::Controller,
            Policy::Static {
                shares: HashMap::new(),
                default: 0.5,
            },
            Policy::None,
        ];
        for p in &policies {
            let kind = PolicyKind::from(p);
            let text = serde_json::to_string(&kind).unwrap();
            assert_eq!(text, format!("\"{}\"", p.name()));
            assert_eq!(serde_json::from_str::<PolicyKind>(&text).unwrap(), kind);
        }
    }
}
