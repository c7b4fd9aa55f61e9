//! The daemon's state: the inference services and training jobs on this node, the state
//! dir that holds their records and checkpoints, and the operations the API exposes.

mod admission;
pub mod checkpointing;
pub mod control;
pub mod devices;
pub mod health;
pub mod heartbeat;
pub mod intake;
pub mod jobs;
mod registry;
pub mod reload;
mod removal;
mod replica_control;
pub mod replicas;
mod reservations;
mod restore;
mod room;
pub mod services;
pub mod state_dir;
pub mod store;
pub mod systemd;
pub mod views;

use crate::util::sync::{self, read, write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::SystemTime;

use crate::config::{ConfigIssue, NodeConfig};
use crate::device::cpu::available_cores;
use crate::device::lane::CorePermits;

pub use control::{Policy, ServiceMeasure};
pub use devices::{DeviceId, Placement};
pub use jobs::{
    DeadlineOutcome, JOB_EVENT_PAGE, Job, JobEvent, JobEventKind, JobEventPage, JobOutcome,
    JobState, JobStopReason, JobView, TargetOutcome,
};
pub use registry::ServiceSlot;
pub use reload::{ConfigSource, ReloadFailure, ReloadReport};
pub use removal::{DeleteRefusal, JobDeleteAction, JobDeletion, KeptJob, PurgeReport};
pub use replicas::{Replica, ReplicaView};
pub use room::DeviceRoom;
pub use services::{LoadedService, ServiceOrigin, ServiceView};
pub use store::{JobChanges, JobRecord};
pub use views::{
    DeviceView, Listeners, PolicyKind, StatusView, TenantFigures, TenantKind, TenantState,
    TenantView,
};

/// Why a node operation was refused; each maps to one HTTP status.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum NodeError {
    /// No such service or job (404).
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with the node's state (409).
    #[error("{0}")]
    Conflict(String),
    /// The request is malformed or invalid (400); every problem, one per line.
    #[error("{}", .0.join("; "))]
    Invalid(Vec<String>),
    /// Not possible now: loading, or shutting down (503).
    #[error("{0}")]
    Unavailable(String),
    /// Something failed on the node's side (500).
    #[error("{0}")]
    Internal(String),
    /// A job was neither cancelled nor removed (409).
    #[error(transparent)]
    Delete(#[from] removal::DeleteRefusal),
    /// The state dir cannot be used (at start: exit 2).
    #[error(transparent)]
    StateDir(#[from] state_dir::StateDirError),
}

impl NodeError {
    fn from_issues(issues: Vec<ConfigIssue>) -> Self {
        NodeError::Invalid(issues.iter().map(|i| i.to_string()).collect())
    }
}

/// The node.
pub struct Node {
    /// The configuration in force; a reload swaps it whole (see [`reload`]).
    config: RwLock<Arc<NodeConfig>>,
    state_dir: PathBuf,
    /// The services: their slots and the loads in progress.
    registry: registry::ServiceRegistry,
    /// The jobs, the names being admitted, and the lock on their files.
    store: store::JobStore,
    /// How long a job's data may take to load at admission, milliseconds.
    data_load_timeout_ms: AtomicU64,
    /// Submits the config's jobs at start, off the thread that goes on to serve HTTP.
    config_jobs_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    started_at: SystemTime,
    /// The addresses the APIs listen on, once bound.
    listeners: RwLock<Listeners>,
    /// Workers of each device (CPU threads, or a GPU's CTAs), by device index.
    workers: Vec<usize>,
    /// What each device can do per second in its workers' units (see
    /// [`Placement::capacity`]), by device index.
    capacity: Vec<f64>,
    /// The budget of each device that is a part of the CPU smaller than the whole (shared by
    /// its lanes), by device index; None on a whole CPU and on a GPU.
    parts: Vec<Option<Arc<crate::device::part::PartBudget>>>,
    shutting_down: AtomicBool,
    permits: Arc<CorePermits>,
    control: Mutex<control::ControlState>,
    control_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    devices: devices::DeviceReport,
    /// NVML (or a scripted stand-in), read once per control period; None without GPUs.
    telemetry: Mutex<Option<crate::telemetry::Sampler>>,
    /// The state dir's lock, held while the node lives.
    _state_lock: state_dir::StateDirLock,
    /// The service manager (systemd), told of readiness, reloads and the control loop's life.
    notifier: OnceLock<Arc<systemd::Notifier>>,
    /// The API runtime's heartbeat, which gates the watchdog; set where a watchdog is armed.
    api_heartbeat: OnceLock<Arc<heartbeat::Heartbeat>>,
    /// Where reloads read the configuration, and how they went.
    reloads: reload::ReloadState,
}

/// GPU samples kept per GPU for correlation (a minute at the default period).
const TELEMETRY_KEEP: usize = 600;

impl Node {
    /// A node for `config`: creates the state dir. Tenants start with [`Node::start`].
    pub fn new(config: NodeConfig) -> Result<Arc<Self>, NodeError> {
        let state_dir = config.state_dir.clone();
        let state_lock = state_dir::acquire(&state_dir)?;
        log_recovered(&state_lock);
        // NVML first, so that the daemon's host pid can be learned around its first CUDA
        // context (see telemetry::OwnPids): in a container its own pid is not NVML's.
        let mut nvml = match config.device.kind {
            crate::config::DeviceKind::Cpu => Err(None),
            _ => crate::telemetry::NvmlSource::open().map_err(Some),
        };
        let devices = devices::resolve(
            &config.device,
            &state_dir.join("kernels"),
            nvml.as_mut().ok(),
        )?;
        tracing::info!(backend = devices.backend, "devices: {}", devices.note);
        // On a node without a GPU the memory limit caps the daemon's resident memory: what
        // the host's tenants hold together.
        if devices
            .placements
            .iter()
            .all(|p| matches!(p, Placement::Cpu(_)))
        {
            crate::device::set_host_memory_limit(config.device.memory_limit_mib.map(|m| m << 20));
        }
        let telemetry = sampler(nvml, &devices);
        let cpu_threads = if config.device.cpu_threads > 0 {
            config.device.cpu_threads
        } else {
            available_cores()
        };
        let workers: Vec<usize> = devices
            .placements
            .iter()
            .map(|p| p.workers(cpu_threads))
            .collect();
        let capacity: Vec<f64> = devices
            .placements
            .iter()
            .map(|p| p.capacity(cpu_threads))
            .collect();
        let parts = devices
            .placements
            .iter()
            .zip(&capacity)
            .map(|(p, &c)| match p {
                Placement::Cpu(part) if part.fraction < 1.0 => {
                    Some(crate::device::part::PartBudget::new(c))
                }
                _ => None,
            })
            .collect();
        let log = open_decision_log(&config)?;
        let controller = crate::control::Controller::new(control_config(&config));
        Ok(Arc::new(Node {
            config: RwLock::new(Arc::new(config)),
            state_dir,
            registry: registry::ServiceRegistry::default(),
            store: store::JobStore::default(),
            started_at: SystemTime::now(),
            listeners: RwLock::new(Listeners::default()),
            workers,
            capacity,
            parts,
            shutting_down: AtomicBool::new(false),
            permits: CorePermits::new(cpu_threads),
            control: Mutex::new(control::ControlState::new(controller, log)),
            control_thread: Mutex::new(None),
            devices,
            telemetry: Mutex::new(telemetry),
            _state_lock: state_lock,
            data_load_timeout_ms: AtomicU64::new(admission::DATA_LOAD_TIMEOUT.as_millis() as u64),
            config_jobs_thread: Mutex::new(None),
            notifier: OnceLock::new(),
            api_heartbeat: OnceLock::new(),
            reloads: reload::ReloadState::default(),
        }))
    }

    /// Tells `notifier` of the node's life from now on: the control loop feeds its watchdog
    /// and refreshes its status line. Set before [`Node::start`]; a second call is ignored.
    pub(crate) fn set_notifier(&self, notifier: Arc<systemd::Notifier>) {
        let _ = self.notifier.set(notifier);
    }

    /// Feeds the watchdog only while `beat` is fresh ([`heartbeat::fresh`]). Set before
    /// [`Node::start`]; a second call is ignored.
    pub(crate) fn set_api_heartbeat(&self, beat: Arc<heartbeat::Heartbeat>) {
        let _ = self.api_heartbeat.set(beat);
    }

    /// The API runtime's heartbeat, when one was set.
    pub(crate) fn api_heartbeat(&self) -> Option<&heartbeat::Heartbeat> {
        self.api_heartbeat.get().map(|b| &**b)
    }

    /// The service manager's notifier, when one was set.
    pub fn notifier(&self) -> Option<Arc<systemd::Notifier>> {
        self.notifier.get().cloned()
    }

    /// Reads GPU telemetry from `source` from now on (a scripted source in tests and on
    /// hosts whose telemetry comes from elsewhere).
    pub fn set_telemetry_source(&self, source: Box<dyn crate::telemetry::TelemetrySource>) {
        *sync::lock(&self.telemetry) = Some(crate::telemetry::Sampler::new(source, TELEMETRY_KEEP));
    }

    /// Reads the telemetry source once (a failed read keeps the previous samples) and
    /// returns the current samples and the failed reads so far.
    pub(crate) fn poll_telemetry(&self) -> (Vec<crate::telemetry::GpuSample>, u64) {
        let mut t = sync::lock(&self.telemetry);
        match t.as_mut() {
            Some(s) => {
                let samples = s.poll().to_vec();
                (samples, s.failed_reads())
            }
            None => (Vec::new(), 0),
        }
    }

    /// The latest GPU samples without reading the source, and the failed reads so far.
    pub fn telemetry(&self) -> (Vec<crate::telemetry::GpuSample>, u64) {
        let t = sync::lock(&self.telemetry);
        match t.as_ref() {
            Some(s) => (s.latest().to_vec(), s.failed_reads()),
            None => (Vec::new(), 0),
        }
    }

    /// The configuration in force (after a reload, the reloaded one, with the settings that
    /// need a restart kept at their running values).
    pub fn config(&self) -> Arc<NodeConfig> {
        read(&self.config).clone()
    }

    /// The state dir.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// When the node started.
    pub(crate) fn started_at(&self) -> SystemTime {
        self.started_at
    }

    /// How many devices tenants run on (1 on the CPU; each GPU that opened is one).
    pub(crate) fn device_count(&self) -> usize {
        self.workers.len()
    }

    /// Workers of device `d` (CPU threads, or the GPU's CTAs).
    pub(crate) fn workers_of(&self, d: DeviceId) -> usize {
        self.workers[d.index()]
    }

    /// What device `d` can do per second at share 1, in its workers' units: its workers,
    /// or on a part of the CPU its fraction of the cores (which may be less than one).
    pub(crate) fn capacity_of(&self, d: DeviceId) -> f64 {
        self.capacity[d.index()]
    }

    /// `lane` on device `d`, held to the part's time when `d` is a part of the CPU.
    pub(crate) fn lane_on(
        &self,
        lane: crate::device::lane::Lane,
        d: DeviceId,
    ) -> crate::device::lane::Lane {
        let lane = lane.on_device(d.index());
        match &self.parts[d.index()] {
            Some(part) => lane.on_part(part.clone()),
            None => lane,
        }
    }

    /// Starts the config's services (each loads on a thread of its own), submits its jobs,
    /// and starts the control loop.
    pub fn start(self: &Arc<Self>) {
        self.start_tenants();
        let node = self.clone();
        match std::thread::Builder::new()
            .name("setpoint-control".into())
            .spawn(move || node.control_loop())
        {
            Ok(h) => *sync::lock(&self.control_thread) = Some(h),
            Err(e) => tracing::error!("cannot start the control loop: {e}; shares stay fixed"),
        }
    }

    /// Starts the config's services and submits its jobs, without the control loop (tests
    /// and benchmarks step it with [`Node::control_tick`]). Services load on threads of their
    /// own, jobs in the state dir are restored before this returns, and the config's other
    /// jobs are admitted one after another on a thread of their own: loading their data must
    /// not hold up the HTTP server's start (see [`intake`]).
    pub(crate) fn start_tenants(self: &Arc<Self>) {
        for cfg in self.config().services.clone() {
            write(&self.registry.services)
                .insert(cfg.name.clone(), ServiceSlot::Loading(cfg.clone()));
            self.load_service(cfg, Vec::new());
        }
        self.restore_services();
        let restored = self.restore_jobs();
        let mut fresh = Vec::new();
        for job in self.config().jobs.clone() {
            if restored.contains(&job.name) {
                tracing::info!(job = %job.name, "job from the config found in the state dir; not submitted again");
            } else {
                fresh.push(job);
            }
        }
        if fresh.is_empty() {
            return;
        }
        // Their names are held from now, before the API serves: the thread that admits them
        // may not run before the first submissions arrive.
        let names: Vec<String> = fresh.iter().map(|j| j.name.clone()).collect();
        self.hold_admission_names(names.iter().cloned());
        let node = self.clone();
        let spawned = std::thread::Builder::new()
            .name("setpoint-config-jobs".into())
            .spawn(move || {
                for job in fresh {
                    let name = job.name.clone();
                    let held = node.held_admission_name(&name);
                    if let Err(e) = node.submit_held(job, held) {
                        tracing::error!(job = %name, "cannot start job from config: {e}");
                    }
                }
            });
        match spawned {
            Ok(h) => *sync::lock(&self.config_jobs_thread) = Some(h),
            Err(e) => {
                for name in &names {
                    drop(self.held_admission_name(name));
                }
                tracing::error!("cannot start the config's jobs: {e}");
            }
        }
    }

    /// Bounds how long a job's data may take to load at admission (by default
    /// [`admission::DATA_LOAD_TIMEOUT`]); for tests and embedders.
    pub fn set_data_load_timeout(&self, timeout: std::time::Duration) {
        let ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        self.data_load_timeout_ms.store(ms, Ordering::Relaxed);
    }

    fn data_load_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.data_load_timeout_ms.load(Ordering::Relaxed))
    }

    /// Refuses a file a job or service names that lies outside the allowed directories
    /// (`paths.data_dirs` and the state dir), links followed; `key` names the setting.
    fn confine(&self, key: &str, path: &Path) -> Result<PathBuf, NodeError> {
        crate::config::paths::confine(path, &self.config().allowed_dirs()).map_err(|e| {
            // A client's relative path means nothing on its own side: say where it went.
            let base = match std::env::current_dir() {
                Ok(d) if path.is_relative() => format!(
                    " (a relative path is resolved against the daemon's working directory, {})",
                    d.display()
                ),
                _ => String::new(),
            };
            NodeError::Invalid(vec![format!("{key}: {e}{base}")])
        })
    }

    /// True when every service is serving, some device has not failed, and the node is not
    /// stopping. As in Triton's strict readiness, one service that failed to load (or whose
    /// device failed) keeps the node not ready: a load balancer should not send it traffic
    /// it cannot answer.
    pub(crate) fn is_ready(&self) -> bool {
        !self.shutting_down.load(Ordering::Acquire)
            && self.any_device_ok()
            && read(&self.registry.services).values().all(|s| match s {
                ServiceSlot::Ready(s) => self.service_failure(s).is_none(),
                _ => false,
            })
    }

    /// True once shutdown has begun.
    pub(crate) fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    /// Stops the node: refuses new work, cancels running jobs (each writes a checkpoint)
    /// and stops the services after answering what they had queued.
    pub fn shutdown(&self) {
        if self.shutting_down.swap(true, Ordering::AcqRel) {
            return;
        }
        // Its admission in progress sees the flag within a poll and gives up.
        let config_jobs = sync::lock(&self.config_jobs_thread).take();
        if let Some(t) = config_jobs {
            let _ = t.join();
        }
        let jobs = self.jobs();
        for job in &jobs {
            if !job.state().is_terminal() {
                // Checkpoint and stop, recording no outcome: the next start resumes it.
                job.interrupt();
            }
        }
        for job in &jobs {
            job.join();
        }
        let control = sync::lock(&self.control_thread).take();
        if let Some(t) = control {
            let _ = t.join();
        }
        let slots: Vec<ServiceSlot> = std::mem::take(&mut *write(&self.registry.services))
            .into_values()
            .collect();
        drop(slots);
    }
}

/// Logs what the state dir's lock cleaned up after a crash.
fn log_recovered(state_lock: &state_dir::StateDirLock) {
    for path in &state_lock.swept {
        tracing::warn!(
            path = %path.display(),
            "removed a temporary file left by a write that did not finish (a crash)"
        );
    }
    for path in &state_lock.purged {
        tracing::warn!(
            path = %path.display(),
            "deleted the files of a removed job whose deletion a crash interrupted"
        );
    }
}

/// The GPU telemetry sampler over `nvml`, when the node runs on GPUs and NVML opened.
fn sampler(
    nvml: Result<crate::telemetry::NvmlSource, Option<crate::telemetry::TelemetryError>>,
    devices: &devices::DeviceReport,
) -> Option<crate::telemetry::Sampler> {
    match nvml {
        _ if devices.gpus.is_empty() => None,
        Ok(src) => Some(crate::telemetry::Sampler::new(
            Box::new(src),
            TELEMETRY_KEEP,
        )),
        Err(e) => {
            if let Some(e) = e {
                tracing::warn!("GPU telemetry off: {e}");
            }
            None
        }
    }
}

/// The decision log the config names, opened for appending.
fn open_decision_log(config: &NodeConfig) -> Result<Option<std::fs::File>, NodeError> {
    let Some(path) = &config.control.decision_log else {
        return Ok(None);
    };
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map(Some)
        .map_err(|e| {
            NodeError::Internal(format!(
                "cannot open the decision log {}: {e}",
                path.display()
            ))
        })
}

/// The controller's settings for a node config.
pub(crate) fn control_config(c: &NodeConfig) -> crate::control::ControlConfig {
    crate::control::ControlConfig {
        period_s: c.control_period_ms as f64 / 1000.0,
        reserve_frac: c.control.reserve_frac,
        leftover: c.control.leftover,
        past_deadline: c.control.past_deadline,
        ..Default::default()
    }
}
