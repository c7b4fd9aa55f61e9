//! The daemon's state: the inference services and training jobs on this node, the state
//! dir that holds their records and checkpoints, and the operations the API exposes.

pub mod checkpointing;
pub mod control;
pub mod devices;
pub mod health;
pub mod intake;
pub mod jobs;
pub mod reload;
mod removal;
pub mod services;
pub mod state_dir;
pub mod systemd;

use crate::util::sync::{self, read, write};
use std::collections::BTreeMap;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::SystemTime;

use serde::Serialize;

use crate::config::{ConfigIssue, Deadline, JobConfig, NodeConfig, ServiceConfig};
use crate::device::cpu::available_cores;
use crate::device::lane::{CorePermits, Lane};
use crate::model::checkpoint::Checkpoint;

pub use control::{Policy, ServiceMeasure};
pub use devices::Placement;
pub use jobs::{Job, JobState, JobView};
pub use reload::{ConfigSource, ReloadFailure, ReloadReport};
pub use removal::{JobDeleteAction, JobDeletion};
pub use services::{Service, ServiceOrigin, ServiceView};

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
    /// The state dir cannot be used (at start: exit 2).
    #[error(transparent)]
    StateDir(#[from] state_dir::StateDirError),
}

impl NodeError {
    fn from_issues(issues: Vec<ConfigIssue>) -> Self {
        NodeError::Invalid(issues.iter().map(|i| i.to_string()).collect())
    }
}

/// A service slot: loading, serving, or failed to load.
#[derive(Clone)]
pub enum ServiceSlot {
    /// Its model is being loaded or trained.
    Loading(ServiceConfig),
    /// Serving.
    Ready(Arc<Service>),
    /// Could not be loaded.
    Failed(ServiceConfig, String),
}

/// The node.
pub struct Node {
    /// The configuration in force; a reload swaps it whole (see [`reload`]).
    config: RwLock<Arc<NodeConfig>>,
    state_dir: PathBuf,
    services: RwLock<BTreeMap<String, ServiceSlot>>,
    jobs: RwLock<BTreeMap<String, Arc<Job>>>,
    /// Names of jobs being admitted (data loading, a step measured): taken at once.
    admitting: Mutex<std::collections::BTreeSet<String>>,
    /// How long a job's data may take to load at admission, milliseconds.
    data_load_timeout_ms: AtomicU64,
    /// Submits the config's jobs at start, off the thread that goes on to serve HTTP.
    config_jobs_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Held while a job's files are removed, and by what reads or records into a job's
    /// directory from the API (a change, a job served, a service from a checkpoint), so
    /// neither finds the directory gone, or another job's, half way.
    job_files: Mutex<()>,
    started_at: SystemTime,
    /// Workers of each device (CPU threads, or a GPU's CTAs), by device index.
    workers: Vec<usize>,
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
    /// Where the configuration is read from on a reload.
    source: Mutex<Option<ConfigSource>>,
    /// Held for the whole of a reload: one at a time.
    reload_lock: Mutex<()>,
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
    last_reload_ok: AtomicBool,
    /// The latest load started for each service name (a ticket and the settings it loads):
    /// a loader whose ticket is no longer here was superseded and publishes nothing.
    loaders: Mutex<HashMap<String, (u64, ServiceConfig)>>,
    next_ticket: AtomicU64,
}

/// GPU samples kept per GPU for correlation (a minute at the default period).
const TELEMETRY_KEEP: usize = 600;

/// The node at a glance.
#[derive(Debug, Clone, Serialize)]
pub struct StatusView {
    /// Version and revision.
    pub version: &'static str,
    /// RFC 3339 start time.
    pub started_at: String,
    /// Seconds since start.
    pub uptime_s: f64,
    /// All services loaded and not shutting down.
    pub ready: bool,
    /// How shares are decided (`setpoint`, `static`, `none`).
    pub policy: &'static str,
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

/// One device.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceView {
    /// The device: `cpu` or `cuda:N`.
    pub name: String,
    /// Workers it offers: CPU threads, or a GPU's CTAs (SMs × resident blocks per SM).
    pub workers: usize,
    /// Sum of tenants' shares.
    pub share_assigned: f64,
    /// Fraction of its workers busy over the last control period.
    pub busy_frac: f64,
    /// `ok`, or `failed` with the reason and when.
    #[serde(flatten)]
    pub health: health::DeviceHealthView,
}

/// One tenant (service or job) and its set point.
#[derive(Debug, Clone, Serialize)]
pub struct TenantView {
    /// `service` or `job`.
    pub kind: &'static str,
    /// Name.
    pub name: String,
    /// State (`ready`, `loading`, `running`, …).
    pub state: String,
    /// What it must meet, in words (`p99 <= 25 ms`, `deadline 2026-…`).
    pub set_point: String,
    /// The measured value against it (`p99 3.2 ms`, `slack 120 s`), when known.
    pub measured: Option<String>,
    /// Share of the device.
    pub share: f64,
    /// Batch size in force.
    pub batch_size: usize,
    /// Requests waiting (services).
    pub queue_len: Option<usize>,
    /// The device it runs on (`cpu`, `cuda:N`); none for a service not serving.
    pub device: Option<String>,
}

impl Node {
    /// A node for `config`: creates the state dir. Tenants start with [`Node::start`].
    pub fn new(config: NodeConfig) -> Result<Arc<Self>, NodeError> {
        let state_dir = config.state_dir.clone();
        let state_lock = state_dir::acquire(&state_dir)?;
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
        let telemetry = match nvml {
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
        };
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
        let log = match &config.control.decision_log {
            Some(path) => Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| {
                        NodeError::Internal(format!(
                            "cannot open the decision log {}: {e}",
                            path.display()
                        ))
                    })?,
            ),
            None => None,
        };
        let controller = crate::control::Controller::new(control_config(&config));
        Ok(Arc::new(Node {
            config: RwLock::new(Arc::new(config)),
            state_dir,
            services: RwLock::new(BTreeMap::new()),
            jobs: RwLock::new(BTreeMap::new()),
            started_at: SystemTime::now(),
            workers,
            shutting_down: AtomicBool::new(false),
            permits: CorePermits::new(cpu_threads),
            control: Mutex::new(control::ControlState::new(controller, log)),
            control_thread: Mutex::new(None),
            devices,
            telemetry: Mutex::new(telemetry),
            _state_lock: state_lock,
            admitting: Mutex::new(Default::default()),
            data_load_timeout_ms: AtomicU64::new(intake::DATA_LOAD_TIMEOUT.as_millis() as u64),
            config_jobs_thread: Mutex::new(None),
            job_files: Mutex::new(()),
            notifier: OnceLock::new(),
            source: Mutex::new(None),
            reload_lock: Mutex::new(()),
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
            last_reload_ok: AtomicBool::new(true),
            loaders: Mutex::new(HashMap::new()),
            next_ticket: AtomicU64::new(1),
        }))
    }

    /// Tells `notifier` of the node's life from now on: the control loop feeds its watchdog
    /// and refreshes its status line. Set before [`Node::start`]; a second call is ignored.
    pub fn set_notifier(&self, notifier: Arc<systemd::Notifier>) {
        let _ = self.notifier.set(notifier);
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
    pub fn poll_telemetry(&self) -> (Vec<crate::telemetry::GpuSample>, u64) {
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
    pub fn started_at(&self) -> SystemTime {
        self.started_at
    }

    /// Workers of the first device: the CPU threads the node divides, or the first GPU's CTAs.
    pub fn cores(&self) -> usize {
        self.workers[0]
    }

    /// How many devices tenants run on (1 on the CPU; each GPU that opened is one).
    pub fn device_count(&self) -> usize {
        self.workers.len()
    }

    /// Workers of device `d` (CPU threads, or the GPU's CTAs).
    pub fn workers_of(&self, d: usize) -> usize {
        self.workers.get(d).copied().unwrap_or(1)
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
    pub fn start_tenants(self: &Arc<Self>) {
        for cfg in self.config().services.clone() {
            write(&self.services).insert(cfg.name.clone(), ServiceSlot::Loading(cfg.clone()));
            self.load_service(cfg, None);
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
        let node = self.clone();
        let spawned = std::thread::Builder::new()
            .name("setpoint-config-jobs".into())
            .spawn(move || {
                for job in fresh {
                    let name = job.name.clone();
                    if let Err(e) = node.submit_job(job) {
                        tracing::error!(job = %name, "cannot start job from config: {e}");
                    }
                }
            });
        match spawned {
            Ok(h) => *sync::lock(&self.config_jobs_thread) = Some(h),
            Err(e) => tracing::error!("cannot start the config's jobs: {e}"),
        }
    }

    /// Bounds how long a job's data may take to load at admission (by default
    /// [`intake::DATA_LOAD_TIMEOUT`]); for tests and embedders.
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
        crate::config::paths::confine(path, &self.config().allowed_dirs())
            .map_err(|e| NodeError::Invalid(vec![format!("{key}: {e}")]))
    }

    /// Checks every file a service reads: its checkpoint or its warm-up data.
    fn confine_service(&self, cfg: &ServiceConfig) -> Result<(), NodeError> {
        if let Some(c) = &cfg.checkpoint {
            self.confine("checkpoint", c)?;
        }
        let warmup = cfg.warmup_data.as_deref();
        for f in warmup
            .map(crate::config::paths::data_files)
            .unwrap_or_default()
        {
            self.confine("warmup_data", &f)?;
        }
        Ok(())
    }

    /// A lane for a new service, on the device with the least share assigned: it starts
    /// with one core (a tenth of a GPU), and the controller brings it to what it needs.
    /// 503 when every device has failed.
    fn service_lane(&self, name: &str) -> Result<Arc<Lane>, NodeError> {
        let d = self.least_loaded_device()?;
        let share = match self.placement(d) {
            Placement::Cpu(_) => 1.0 / self.workers_of(d) as f64,
            Placement::Cuda(_) => 0.1,
        };
        Ok(Arc::new(
            Lane::new(name, self.workers_of(d), share).on_device(d),
        ))
    }

    /// A lane for a job at `share` on device `d`: on the CPU its threads come from the
    /// node's cores and run at background priority under a policy with shares; on a GPU it
    /// is a stream at the device's least priority (the backend's), and its host thread keeps
    /// its priority.
    fn job_lane(&self, name: &str, share: f64, d: usize) -> Arc<Lane> {
        let shares = !matches!(self.policy(), Policy::None);
        let lane = match self.placement(d) {
            Placement::Cpu(_) => {
                let lane = Lane::parallel(name, &self.permits, share);
                lane.set_background(shares);
                lane
            }
            Placement::Cuda(_) => Lane::new(name, self.workers_of(d), share),
        };
        lane.set_enforced(shares);
        Arc::new(lane.on_device(d))
    }

    /// Where device `d`'s tenants run (the first device for an index out of range).
    pub fn placement(&self, d: usize) -> &Placement {
        let p = &self.devices.placements;
        &p[d.min(p.len() - 1)]
    }

    /// The device that has not failed whose tenants hold the least share (the first on a
    /// tie, so a node with one device always answers 0 while it works).
    fn least_loaded_device(&self) -> Result<usize, NodeError> {
        Ok(self.usable_devices_by_load()?[0])
    }

    /// Device indices from the least share held by its tenants' lanes to the most (shares
    /// as they are now, so tenants placed in a row spread out before the next tick).
    fn devices_by_load(&self) -> Vec<usize> {
        let mut held = vec![0.0; self.device_count()];
        let mut add = |lane: &Lane| {
            if let Some(h) = held.get_mut(lane.device()) {
                *h += lane.share();
            }
        };
        for slot in read(&self.services).values() {
            if let ServiceSlot::Ready(s) = slot {
                add(&s.lane);
            }
        }
        for job in read(&self.jobs).values() {
            if !job.state().is_terminal() {
                add(job.lane());
            }
        }
        let load = |d: usize| held[d];
        let mut order: Vec<usize> = (0..self.device_count()).collect();
        order.sort_by(|&a, &b| load(a).total_cmp(&load(b)).then(a.cmp(&b)));
        order
    }

    /// Whether `need_bytes` of buffers fit on device `d` now: under setpoint's memory limit
    /// and in what telemetry sees free there (always on the CPU).
    fn memory_fits(&self, d: usize, need_bytes: u64) -> Result<(), String> {
        let Placement::Cuda(dev) = self.placement(d) else {
            return Ok(());
        };
        let (samples, _) = self.telemetry();
        let check = crate::control::admission::MemoryCheck {
            device: self.placement(d).name(),
            need_bytes,
            limit_free_bytes: dev.memory_limit().saturating_sub(dev.memory_used()),
            device_used_total: samples
                .iter()
                .find(|s| s.uuid == dev.info().uuid)
                .and_then(|s| s.mem_used_bytes.zip(s.mem_total_bytes)),
        };
        crate::control::admission::check_memory(&check).map_err(|e| e.to_string())
    }

    /// The most a service may use of device `d`: one core on the CPU (one batcher thread),
    /// all of a GPU.
    pub fn service_max_share(&self, d: usize) -> f64 {
        match self.placement(d) {
            Placement::Cpu(_) => 1.0 / self.workers_of(d) as f64,
            Placement::Cuda(_) => 1.0,
        }
    }

    /// Loads a service of the config on a thread of its own, in `lane` (a replacement keeps
    /// the lane of the service it replaces) or a new one. The slot is published when it has
    /// loaded, unless a later load of the same name (or its removal) superseded this one.
    fn load_service(self: &Arc<Self>, cfg: ServiceConfig, lane: Option<Arc<Lane>>) {
        let name = cfg.name.clone();
        let ticket = self.next_ticket.fetch_add(1, Ordering::Relaxed);
        sync::lock(&self.loaders).insert(name.clone(), (ticket, cfg.clone()));
        let node = self.clone();
        let loader_cfg = cfg.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("setpoint-load-{name}"))
            .spawn(move || node.load_config_service(loader_cfg, ticket, lane));
        if let Err(e) = spawned {
            self.publish_loaded(
                &name,
                ticket,
                Err(format!("cannot start loader thread: {e}")),
            );
        }
    }

    fn load_config_service(&self, cfg: ServiceConfig, ticket: u64, lane: Option<Arc<Lane>>) {
        if let Err(e) = self.confine_service(&cfg) {
            self.publish_loaded(&cfg.name, ticket, Err(e.to_string()));
            return;
        }
        let lane = match lane.map_or_else(|| self.service_lane(&cfg.name), Ok) {
            Ok(lane) => lane,
            Err(e) => return self.publish_loaded(&cfg.name, ticket, Err(e.to_string())),
        };
        let placement = self.placement(lane.device()).clone();
        let started = services::build_model(&cfg)
            .and_then(|m| Service::start(cfg.clone(), m, ServiceOrigin::Config, lane, &placement))
            .map(Arc::new)
            .map_err(|e| e.to_string());
        self.publish_loaded(&cfg.name, ticket, started);
    }

    /// Publishes what a loader produced, if its ticket is still the latest for the name. A
    /// failed replacement leaves the serving service in place. Whatever is taken out of the
    /// map is dropped after its lock is released (a batcher answers its queue as it stops).
    fn publish_loaded(&self, name: &str, ticket: u64, loaded: Result<Arc<Service>, String>) {
        let mut map = write(&self.services);
        let cfg = {
            let mut loaders = sync::lock(&self.loaders);
            match loaders.get(name) {
                Some((t, cfg)) if *t == ticket => {
                    let cfg = cfg.clone();
                    loaders.remove(name);
                    cfg
                }
                _ => {
                    drop(loaders);
                    drop(map);
                    tracing::info!(service = %name, "a newer configuration superseded this load");
                    return;
                }
            }
        };
        // A node shut down while this loaded drops the service instead of publishing it.
        if self.is_shutting_down() {
            return;
        }
        // A service whose device has failed serves nothing to keep.
        let serving = match map.get(name) {
            Some(ServiceSlot::Ready(s)) => self.service_failure(s).is_none(),
            _ => false,
        };
        let replaced = match loaded {
            Ok(svc) => {
                tracing::info!(service = %name, "service ready");
                map.insert(name.to_string(), ServiceSlot::Ready(svc))
            }
            Err(e) if serving => {
                tracing::error!(
                    service = %name,
                    "cannot apply the new settings: {e}; it keeps serving with the previous ones"
                );
                None
            }
            Err(e) => {
                tracing::error!(service = %name, "cannot start service: {e}");
                map.insert(name.to_string(), ServiceSlot::Failed(cfg, e))
            }
        };
        drop(map);
        drop(replaced);
    }

    /// Forgets the load in progress for `name`, if any: it will publish nothing.
    fn cancel_loader(&self, name: &str) {
        sync::lock(&self.loaders).remove(name);
    }

    /// The settings a load in progress for `name` will bring, if one is.
    fn pending_config(&self, name: &str) -> Option<ServiceConfig> {
        sync::lock(&self.loaders).get(name).map(|(_, c)| c.clone())
    }

    /// True when every service is serving, some device has not failed, and the node is not
    /// stopping. As in Triton's strict readiness, one service that failed to load (or whose
    /// device failed) keeps the node not ready: a load balancer should not send it traffic
    /// it cannot answer.
    pub fn is_ready(&self) -> bool {
        !self.shutting_down.load(Ordering::Acquire)
            && self.any_device_ok()
            && read(&self.services).values().all(|s| match s {
                ServiceSlot::Ready(s) => !self.device_failed(s.lane.device()),
                _ => false,
            })
    }

    /// True once shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    /// The serving service called `name`: 404 when unknown, 503 while loading, failed, or
    /// on a device that has failed.
    pub fn service(&self, name: &str) -> Result<Arc<Service>, NodeError> {
        if self.is_shutting_down() {
            return Err(NodeError::Unavailable("the node is shutting down".into()));
        }
        match read(&self.services).get(name) {
            Some(ServiceSlot::Ready(s)) => match self.service_failure(s) {
                Some(e) => Err(NodeError::Unavailable(format!(
                    "model {name} is not available: {e}"
                ))),
                None => Ok(s.clone()),
            },
            Some(ServiceSlot::Loading(_)) => Err(NodeError::Unavailable(format!(
                "model {name} is loading; retry shortly"
            ))),
            Some(ServiceSlot::Failed(_, e)) => Err(NodeError::Unavailable(format!(
                "model {name} is not available: {e}"
            ))),
            None => Err(NodeError::NotFound(format!("unknown model {name}"))),
        }
    }

    /// Every service slot, by name.
    pub fn service_slots(&self) -> Vec<(String, ServiceSlot)> {
        read(&self.services)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Every serving service.
    pub fn ready_services(&self) -> Vec<Arc<Service>> {
        read(&self.services)
            .values()
            .filter_map(|s| match s {
                ServiceSlot::Ready(s) => Some(s.clone()),
                _ => None,
            })
            .collect()
    }

    /// Views of every service, loading and failed ones included.
    pub fn service_views(&self) -> Vec<ServiceView> {
        self.service_slots()
            .into_iter()
            .map(|(name, slot)| match slot {
                ServiceSlot::Ready(s) => self.serving_view(&s),
                ServiceSlot::Loading(cfg) => pending_view(name, &cfg, "loading", None),
                ServiceSlot::Failed(cfg, e) => pending_view(name, &cfg, "failed", Some(e)),
            })
            .collect()
    }

    /// Adds a service given as JSON (the services API): from `checkpoint` with an SLO.
    pub fn add_service_json(
        self: &Arc<Self>,
        body: &serde_json::Value,
    ) -> Result<Arc<Service>, NodeError> {
        let cfg = crate::config::parse_service_json(body, self.config().control_period_ms)
            .map_err(NodeError::from_issues)?;
        if cfg.checkpoint.is_none() {
            return Err(NodeError::Invalid(vec![
                "checkpoint: required (the path of a checkpoint file on the node)".into(),
            ]));
        }
        if cfg.warmup_data.is_some() {
            return Err(NodeError::Invalid(vec![
                "warmup_data: not accepted through the API; train a job and publish it with POST /v1/jobs/{id}/serve".into(),
            ]));
        }
        // Its checkpoint may be a job's.
        let _files = self.lock_job_files();
        self.add_service(cfg, ServiceOrigin::Api)
    }

    fn add_service(
        self: &Arc<Self>,
        cfg: ServiceConfig,
        origin: ServiceOrigin,
    ) -> Result<Arc<Service>, NodeError> {
        if self.is_shutting_down() {
            return Err(NodeError::Unavailable("the node is shutting down".into()));
        }
        if read(&self.services).contains_key(&cfg.name) {
            return Err(NodeError::Conflict(format!(
                "a service named {} already exists",
                cfg.name
            )));
        }
        self.confine_service(&cfg)?;
        let model = services::build_model(&cfg).map_err(|e| match e {
            services::ServiceBuildError::Model(m) => NodeError::Invalid(vec![m]),
            services::ServiceBuildError::Start(m) => NodeError::Internal(m),
        })?;
        let lane = self.service_lane(&cfg.name)?;
        let placement = self.placement(lane.device()).clone();
        let svc = Arc::new(
            Service::start(cfg.clone(), model, origin, lane, &placement)
                .map_err(|e| NodeError::Internal(e.to_string()))?,
        );
        let mut map = write(&self.services);
        if map.contains_key(&cfg.name) {
            return Err(NodeError::Conflict(format!(
                "a service named {} already exists",
                cfg.name
            )));
        }
        // Recorded before it is listed: a service the state dir does not hold would be gone
        // after a restart, so one that cannot be recorded is not added (and stops here).
        self.persist_service(&svc)?;
        map.insert(cfg.name.clone(), ServiceSlot::Ready(svc.clone()));
        drop(map);
        tracing::info!(service = %cfg.name, "service added");
        Ok(svc)
    }

    /// Records a service added at run time in the state dir.
    fn persist_service(&self, svc: &Service) -> Result<(), NodeError> {
        if svc.origin == ServiceOrigin::Config {
            return Ok(());
        }
        let record = serde_json::json!({
            "config": svc.config(),
            "origin": svc.origin,
        });
        let path = self
            .state_dir
            .join("services")
            .join(format!("{}.json", svc.name()));
        crate::util::fsio::write_atomic(&path, record.to_string().as_bytes()).map_err(|e| {
            NodeError::Internal(format!(
                "cannot record service {} in the state dir ({}: {e}); it was not added",
                svc.name(),
                path.display()
            ))
        })
    }

    /// Stops and removes a service; requests already queued are answered first.
    pub fn remove_service(&self, name: &str) -> Result<(), NodeError> {
        let slot = write(&self.services).remove(name);
        match slot {
            None => Err(NodeError::NotFound(format!("unknown model {name}"))),
            Some(ServiceSlot::Loading(cfg)) => {
                write(&self.services).insert(name.to_string(), ServiceSlot::Loading(cfg));
                Err(NodeError::Conflict(format!(
                    "model {name} is still loading; remove it once it has loaded"
                )))
            }
            Some(slot) => {
                let _ = std::fs::remove_file(
                    self.state_dir.join("services").join(format!("{name}.json")),
                );
                if let ServiceSlot::Ready(svc) = slot {
                    // The batcher stops once the last handle (a request in flight) is gone.
                    drop(svc);
                }
                tracing::info!(service = %name, "service removed");
                Ok(())
            }
        }
    }

    /// Holds `name` while a job of that name is admitted; a second submission of it meanwhile
    /// is a conflict.
    fn take_admission_name(&self, name: &str) -> Result<AdmissionName<'_>, NodeError> {
        let mut names = sync::lock(&self.admitting);
        if !names.insert(name.to_string()) {
            return Err(NodeError::Conflict(format!(
                "a job named {name} is being submitted already"
            )));
        }
        Ok(AdmissionName {
            node: self,
            name: name.to_string(),
        })
    }

    /// Accepts a job given as JSON (the jobs API).
    pub fn submit_job_json(
        self: &Arc<Self>,
        body: &serde_json::Value,
    ) -> Result<Arc<Job>, NodeError> {
        let cfg = crate::config::parse_job_json(body).map_err(NodeError::from_issues)?;
        self.submit_job(cfg)
    }

    /// Accepts a job: loads its data, measures what a step costs, admits it against the
    /// capacity left (a deadline job that cannot make its deadline is refused with the
    /// earliest deadline it could meet), records its spec in the state dir and starts it.
    pub fn submit_job(self: &Arc<Self>, cfg: JobConfig) -> Result<Arc<Job>, NodeError> {
        if self.is_shutting_down() {
            return Err(NodeError::Unavailable("the node is shutting down".into()));
        }
        if read(&self.jobs).contains_key(&cfg.name) {
            return Err(job_exists(&cfg.name));
        }
        // The name is taken now, for as long as admission takes (it loads the data).
        let _admitting = self.take_admission_name(&cfg.name)?;
        for f in crate::config::paths::data_files(&cfg.data) {
            self.confine("data", &f)?;
        }
        let now = SystemTime::now();
        // Devices are tried from the least loaded; the step is measured on the first (the
        // node's GPUs are taken to be alike).
        let order = self.usable_devices_by_load()?;
        tracing::info!(job = %cfg.name, data = %cfg.data, "loading the job's data for admission");
        let measured = intake::load_and_measure(
            &cfg,
            self.placement(order[0]),
            self.data_load_timeout(),
            || self.is_shutting_down(),
        )?;
        let (device, share) = self.place_job(&cfg, now, &measured, &order)?;
        let step_cost = measured.step_cost_core_s;
        let dir = self.state_dir.join("jobs").join(&cfg.name);
        // Under a policy with shares, training runs below inference; with none, everything
        // runs as it comes, from the first step.
        let lane = self.job_lane(&cfg.name, share, device);
        let job = Arc::new(Job::new(
            cfg.clone(),
            dir,
            now,
            lane,
            self.placement(device).clone(),
            Some(step_cost),
        ));
        job.set_checkpoint_timeout_ms(self.config().checkpoint_error_timeout_ms);
        self.enroll_job(&job, now)?;
        if let Err(e) = job.start(Some(measured.data)) {
            write(&self.jobs).remove(&cfg.name);
            return Err(NodeError::Internal(format!("cannot start job thread: {e}")));
        }
        tracing::info!(
            job = %cfg.name,
            steps_per_epoch = measured.steps_per_epoch,
            step_cost_ms = step_cost * 1e3,
            share,
            "job accepted"
        );
        Ok(job)
    }

    /// The device a job goes to and its share there: the first of `order` with the memory
    /// it needs and, for a deadline job under the controller, the capacity to meet its
    /// deadline. Refused (409) with the earliest deadline it could meet, or why it fits
    /// nowhere.
    fn place_job(
        &self,
        cfg: &JobConfig,
        now: SystemTime,
        measured: &intake::Measured,
        order: &[usize],
    ) -> Result<(usize, f64), NodeError> {
        let deadline = if cfg.best_effort {
            None
        } else {
            cfg.deadline.map(|d| d.resolve(now))
        };
        let default_share = self.config().control.reserve_frac.max(0.05);
        // Admission weighs a job against what the controller has committed on a device;
        // under a fixed policy the operator decides what runs.
        let controlled = matches!(self.policy(), Policy::Controller);
        let ctrl = control_config(&self.config());
        let mut no_memory = Vec::new();
        let mut refusal: Option<crate::control::admission::Refusal> = None;
        for &d in order {
            if let Some(need_bytes) = measured.device_bytes
                && let Err(why) = self.memory_fits(d, need_bytes)
            {
                no_memory.push(why);
                continue;
            }
            let Some(deadline) = deadline.filter(|_| controlled) else {
                return Ok((d, default_share));
            };
            let candidate = crate::control::admission::Candidate {
                name: cfg.name.clone(),
                work_core_s: cfg.epochs as f64
                    * measured.steps_per_epoch as f64
                    * measured.step_cost_core_s,
                deadline_in_s: deadline
                    .duration_since(now)
                    .map_or(0.0, |d| d.as_secs_f64()),
                cores: self.workers_of(d),
            };
            match crate::control::admission::admit(&ctrl, &self.last_decisions_of(d), &candidate) {
                Ok(needed) => return Ok((d, needed.max(ctrl.min_share))),
                Err(r) => {
                    if refusal
                        .as_ref()
                        .is_none_or(|b| r.earliest_deadline_in_s < b.earliest_deadline_in_s)
                    {
                        refusal = Some(r);
                    }
                }
            }
        }
        let Some(refusal) = refusal else {
            return Err(NodeError::Conflict(format!(
                "job {} does not fit: {}",
                cfg.name,
                no_memory.join("; ")
            )));
        };
        let earliest = now
            + std::time::Duration::from_secs_f64(refusal.earliest_deadline_in_s.clamp(0.0, 1e9));
        Err(NodeError::Conflict(format!(
            "{}; the earliest deadline it can meet is {} (in {:.0} s): submit it with that \
             deadline or later, or as best-effort",
            refusal.reason,
            crate::config::format_rfc3339(earliest),
            refusal.earliest_deadline_in_s.ceil()
        )))
    }

    /// Lists an admitted job and records its spec in the state dir (it is not listed when
    /// that fails). Refused while the node stops: checked under the lock shutdown reads the
    /// jobs with, so a job is either seen (and stopped) by the shutdown, or never started.
    fn enroll_job(&self, job: &Arc<Job>, submitted_at: SystemTime) -> Result<(), NodeError> {
        let name = &job.name;
        {
            let mut jobs = write(&self.jobs);
            if self.is_shutting_down() {
                return Err(NodeError::Unavailable(format!(
                    "the node is shutting down; job {name} was not admitted"
                )));
            }
            if jobs.contains_key(name) {
                return Err(job_exists(name));
            }
            jobs.insert(name.clone(), job.clone());
        }
        let record = serde_json::json!({
            "spec": job.config,
            "submitted_at": crate::config::format_rfc3339(submitted_at),
        });
        let dir = job.dir();
        let persisted = std::fs::create_dir_all(dir).and_then(|_| {
            crate::util::fsio::write_atomic(&dir.join("job.json"), record.to_string().as_bytes())
        });
        if let Err(e) = persisted {
            write(&self.jobs).remove(name);
            return Err(NodeError::Internal(format!(
                "cannot record job {name} in {}: {e}",
                dir.display()
            )));
        }
        Ok(())
    }

    /// The job called `name`.
    pub fn job(&self, name: &str) -> Result<Arc<Job>, NodeError> {
        read(&self.jobs)
            .get(name)
            .cloned()
            .ok_or_else(|| NodeError::NotFound(format!("unknown job {name}")))
    }

    /// Every job, by name.
    pub fn jobs(&self) -> Vec<Arc<Job>> {
        read(&self.jobs).values().cloned().collect()
    }

    /// Changes a job's deadline, target accuracy or epoch limit (JSON keys `deadline`,
    /// `target_accuracy`, `epochs`; `null` clears a deadline or target).
    pub fn update_job(&self, name: &str, patch: &serde_json::Value) -> Result<Arc<Job>, NodeError> {
        let _files = self.lock_job_files();
        let job = self.job(name)?;
        let obj = patch
            .as_object()
            .ok_or_else(|| NodeError::Invalid(vec!["expected a JSON object".into()]))?;
        let mut errors = Vec::new();
        let mut deadline = None;
        let mut target = None;
        let mut epochs = None;
        for (k, v) in obj {
            match k.as_str() {
                "deadline" => match v {
                    serde_json::Value::Null => deadline = Some(None),
                    serde_json::Value::String(s) => match s.parse::<Deadline>() {
                        Ok(d) => deadline = Some(Some(d.resolve(SystemTime::now()))),
                        Err(e) => errors.push(format!("deadline: {e}")),
                    },
                    _ => errors.push(
                        "deadline: expected a duration such as \"10m\" or an RFC 3339 time, or null"
                            .into(),
                    ),
                },
                "target_accuracy" => match v {
                    serde_json::Value::Null => target = Some(None),
                    v => match v.as_f64() {
                        Some(t) if t > 0.0 && t <= 1.0 => target = Some(Some(t)),
                        _ => errors.push(format!(
                            "target_accuracy: must be a number in (0, 1] or null, got {v}"
                        )),
                    },
                },
                "epochs" => match v.as_u64() {
                    Some(e) if (1..=100_000).contains(&e) => epochs = Some(e as u32),
                    _ => errors.push(format!(
                        "epochs: must be an integer between 1 and 100000, got {v}"
                    )),
                },
                other => errors.push(format!(
                    "{other}: cannot be changed (accepted: deadline, target_accuracy, epochs)"
                )),
            }
        }
        if !errors.is_empty() {
            return Err(NodeError::Invalid(errors));
        }
        if job.state().is_terminal() && (target.is_some() || epochs.is_some()) {
            return Err(NodeError::Conflict(format!(
                "job {name} has ended ({:?}); its target and epochs can no longer change",
                job.state()
            )));
        }
        if let Some(t) = target
            && t.is_some()
            && job.config.val_fraction == 0.0
        {
            return Err(NodeError::Invalid(vec![
                "target_accuracy: the job has no validation set (val_fraction = 0)".into(),
            ]));
        }
        if let Some(d) = deadline {
            job.set_deadline(d);
        }
        if let Some(t) = target {
            job.set_target(t);
        }
        if let Some(e) = epochs {
            job.set_epochs(e);
        }
        // Recorded before the answer, so an acknowledged change survives a restart.
        let path = job.dir().join("changes.json");
        let mut changes: serde_json::Map<String, serde_json::Value> = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        if let Some(d) = deadline {
            changes.insert(
                "deadline".into(),
                d.map(crate::config::format_rfc3339).into(),
            );
        }
        if let Some(t) = target {
            changes.insert("target_accuracy".into(), t.into());
        }
        if let Some(e) = epochs {
            changes.insert("epochs".into(), e.into());
        }
        crate::util::fsio::write_atomic(
            &path,
            serde_json::Value::Object(changes).to_string().as_bytes(),
        )
        .map_err(|e| {
            NodeError::Internal(format!(
                "the change was applied but could not be recorded in {}: {e}",
                path.display()
            ))
        })?;
        Ok(job)
    }

    /// Services added at run time before this start (through the API or from a job), from
    /// the state dir; one whose name the config now uses is left to the config.
    fn restore_services(self: &Arc<Self>) {
        let dir = self.state_dir.join("services");
        let paths = sorted_entries(&dir, |p| p.extension().is_some_and(|x| x == "json"));
        for path in paths {
            let restored = std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| {
                    serde_json::from_slice::<serde_json::Value>(&b).map_err(|e| e.to_string())
                })
                .and_then(|record| {
                    let cfg = crate::config::parse_service_json(
                        &recorded_spec(&record["config"]),
                        self.config().control_period_ms,
                    )
                    .map_err(|issues| NodeError::from_issues(issues).to_string())?;
                    let origin: ServiceOrigin = serde_json::from_value(record["origin"].clone())
                        .map_err(|e| format!("origin: {e}"))?;
                    if self.config().services.iter().any(|c| c.name == cfg.name) {
                        return Err(format!(
                            "the config now defines a service named {}; the config's is used",
                            cfg.name
                        ));
                    }
                    self.add_service(cfg, origin).map_err(|e| e.to_string())
                });
            match restored {
                Ok(svc) => {
                    tracing::info!(service = %svc.name(), "service restored from the state dir")
                }
                Err(e) => tracing::error!("cannot restore the service in {}: {e}", path.display()),
            }
        }
    }

    /// Jobs accepted before this start, from the state dir: those that ended are listed as
    /// they ended; the others resume from their last checkpoint (losing at most one
    /// checkpoint interval). Returns their names.
    fn restore_jobs(self: &Arc<Self>) -> Vec<String> {
        let dir = self.state_dir.join("jobs");
        let paths = sorted_entries(&dir, |p| p.is_dir());
        let mut names = Vec::new();
        for path in paths {
            match self.restore_job(&path) {
                Ok(name) => names.push(name),
                Err(e) => tracing::error!("cannot restore the job in {}: {e}", path.display()),
            }
        }
        names
    }

    fn restore_job(self: &Arc<Self>, dir: &Path) -> Result<String, String> {
        let read_json = |name: &str| -> Result<serde_json::Value, String> {
            let bytes = std::fs::read(dir.join(name)).map_err(|e| format!("{name}: {e}"))?;
            serde_json::from_slice(&bytes).map_err(|e| format!("{name}: {e}"))
        };
        let record = read_json("job.json")?;
        let cfg = crate::config::parse_job_json(&recorded_spec(&record["spec"]))
            .map_err(|issues| format!("job.json: {}", NodeError::from_issues(issues)))?;
        let submitted_at = record["submitted_at"]
            .as_str()
            .and_then(|t| crate::config::parse_rfc3339(t).ok())
            .ok_or("job.json: no valid submitted_at")?;
        if read(&self.jobs).contains_key(&cfg.name) {
            return Err(format!("a job named {} already exists", cfg.name));
        }
        // The allowed directories may have changed since the job was accepted.
        if !dir.join("outcome.json").exists() {
            for f in crate::config::paths::data_files(&cfg.data) {
                self.confine("data", &f).map_err(|e| e.to_string())?;
            }
        }
        let share = self.config().control.reserve_frac.max(0.05);
        let device = self.least_loaded_device().map_err(|e| e.to_string())?;
        let lane = self.job_lane(&cfg.name, share, device);
        let name = cfg.name.clone();
        let job = Arc::new(Job::new(
            cfg,
            dir.to_path_buf(),
            submitted_at,
            lane,
            self.placement(device).clone(),
            None,
        ));
        job.set_checkpoint_timeout_ms(self.config().checkpoint_error_timeout_ms);
        if dir.join("changes.json").exists() {
            let changes = read_json("changes.json")?;
            if let Some(d) = changes.get("deadline") {
                job.set_deadline(
                    d.as_str()
                        .and_then(|t| crate::config::parse_rfc3339(t).ok()),
                );
            }
            if let Some(t) = changes.get("target_accuracy") {
                job.set_target(t.as_f64());
            }
            if let Some(e) = changes.get("epochs").and_then(|e| e.as_u64()) {
                job.set_epochs(e as u32);
            }
        }
        let ended = dir.join("outcome.json").exists();
        if ended {
            job.restore_outcome(&read_json("outcome.json")?)?;
        }
        write(&self.jobs).insert(name.clone(), job.clone());
        if ended {
            tracing::info!(job = %name, state = ?job.state(), "job restored from the state dir");
        } else {
            job.start(None).map_err(|e| {
                write(&self.jobs).remove(&name);
                format!("cannot start the job's thread: {e}")
            })?;
            tracing::info!(job = %name, "job resumed from the state dir");
        }
        Ok(name)
    }

    /// Publishes a completed job's model as an inference service. `body` holds the service
    /// settings (`name`, `slo`, `batching`, `max_queue`); the name defaults to the job's.
    pub fn serve_job(
        self: &Arc<Self>,
        name: &str,
        body: &serde_json::Value,
    ) -> Result<Arc<Service>, NodeError> {
        let _files = self.lock_job_files();
        let job = self.job(name)?;
        if job.state() != JobState::Completed {
            return Err(NodeError::Conflict(format!(
                "job {name} is {:?}; only a completed job can be served",
                job.state()
            )));
        }
        let mut body = match body {
            serde_json::Value::Object(m) => m.clone(),
            serde_json::Value::Null => serde_json::Map::new(),
            _ => return Err(NodeError::Invalid(vec!["expected a JSON object".into()])),
        };
        for key in ["checkpoint", "layers", "warmup_data", "seed"] {
            if body.contains_key(key) {
                return Err(NodeError::Invalid(vec![format!(
                    "{key}: set by the job; not accepted here"
                )]));
            }
        }
        body.entry("name")
            .or_insert_with(|| serde_json::Value::String(name.to_string()));
        let path = job.checkpoint_path();
        body.insert(
            "checkpoint".into(),
            serde_json::Value::String(path.display().to_string()),
        );
        let cfg = crate::config::parse_service_json(
            &serde_json::Value::Object(body),
            self.config().control_period_ms,
        )
        .map_err(NodeError::from_issues)?;
        // The job's checkpoint is known good; check it exists before building.
        Checkpoint::load(&path).map_err(|e| NodeError::Internal(e.to_string()))?;
        self.add_service(
            cfg,
            ServiceOrigin::Job {
                job: name.to_string(),
            },
        )
    }

    /// The share policy in force.
    pub fn policy(&self) -> Policy {
        sync::lock(&self.control).policy.clone()
    }

    /// A job's view with the controller's latest decision about it.
    pub fn job_view(&self, job: &Job) -> JobView {
        let last = self.last_decisions();
        job.view(last.jobs.iter().find(|d| d.name == job.name))
    }

    /// The node at a glance.
    pub fn status(&self) -> StatusView {
        let mut tenants = Vec::new();
        let n = self.device_count();
        let mut share_assigned = vec![0.0; n];
        let svc_device: std::collections::HashMap<String, usize> = self
            .ready_services()
            .iter()
            .map(|s| (s.name().to_string(), s.lane.device().min(n - 1)))
            .collect();
        for view in self.service_views() {
            let d = svc_device.get(&view.name).copied();
            if let Some(d) = d {
                share_assigned[d] += view.share;
            }
            let measured = self.service_measure(&view.name).and_then(|m| {
                (m.window.count > 0).then(|| {
                    format!(
                        "p99 {:.2} ms ({} requests, {:.0}/s)",
                        m.window.total.p99 * 1000.0,
                        m.window.count,
                        m.arrival_rate
                    )
                })
            });
            tenants.push(TenantView {
                kind: "service",
                name: view.name.clone(),
                state: view.state.to_string(),
                set_point: format!("p99 <= {} ms", view.slo_p99_ms),
                measured,
                share: view.share,
                batch_size: view.max_batch_size,
                queue_len: Some(view.queue_len),
                device: d.map(|d| self.placement(d).name()),
            });
        }
        for job in self.jobs() {
            let v = self.job_view(&job);
            let d = job.lane().device().min(n - 1);
            share_assigned[d] += v.share;
            let set_point = match (&v.deadline, v.target_accuracy) {
                (Some(d), Some(t)) => format!("accuracy >= {t} by {d}"),
                (Some(d), None) => format!("{} epochs by {d}", v.epochs_max),
                (None, Some(t)) => format!("accuracy >= {t}, best effort"),
                (None, None) => format!("{} epochs, best effort", v.epochs_max),
            };
            let measured = match (v.val_accuracy, v.slack_s) {
                (Some(a), Some(s)) => Some(format!("accuracy {a:.4}, slack {s:.0} s")),
                (Some(a), None) => Some(format!("accuracy {a:.4}")),
                (None, Some(s)) => Some(format!("slack {s:.0} s")),
                (None, None) => None,
            };
            tenants.push(TenantView {
                kind: "job",
                name: v.name.clone(),
                state: format!("{:?}", v.state).to_lowercase(),
                set_point,
                measured,
                share: v.share,
                batch_size: v.batch_size,
                queue_len: None,
                device: Some(self.placement(d).name()),
            });
        }
        let (_, control_ticks) = self.busy_and_ticks();
        let busy = self.busy_by_device();
        StatusView {
            version: crate::VERSION,
            started_at: crate::config::format_rfc3339(self.started_at),
            uptime_s: self.started_at.elapsed().map_or(0.0, |d| d.as_secs_f64()),
            ready: self.is_ready(),
            policy: sync::lock(&self.control).policy.name(),
            control_ticks,
            gpus: self.devices.gpus.clone(),
            gpu_telemetry: self.telemetry().0,
            device_note: self.devices.note.clone(),
            devices: (0..n)
                .map(|d| DeviceView {
                    name: self.placement(d).name(),
                    workers: self.workers_of(d),
                    share_assigned: share_assigned[d],
                    busy_frac: busy.get(d).copied().unwrap_or(0.0),
                    health: self.device_health(d),
                })
                .collect(),
            tenants,
        }
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
        let slots: Vec<ServiceSlot> = std::mem::take(&mut *write(&self.services))
            .into_values()
            .collect();
        drop(slots);
    }
}

/// The controller's settings for a node config.
pub fn control_config(c: &NodeConfig) -> crate::control::ControlConfig {
    crate::control::ControlConfig {
        period_s: c.control_period_ms as f64 / 1000.0,
        reserve_frac: c.control.reserve_frac,
        leftover: c.control.leftover,
        ..Default::default()
    }
}

fn pending_view(
    name: String,
    cfg: &ServiceConfig,
    state: &'static str,
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
    }
}

/// The entries of `dir` that `keep` accepts, sorted; none (and an error logged) when the
/// directory cannot be read.
fn sorted_entries(dir: &Path, keep: impl Fn(&Path) -> bool) -> Vec<PathBuf> {
    match std::fs::read_dir(dir) {
        Ok(entries) => {
            let mut paths: Vec<PathBuf> = entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| keep(p))
                .collect();
            paths.sort();
            paths
        }
        Err(e) => {
            tracing::error!("cannot read {}: {e}", dir.display());
            Vec::new()
        }
    }
}

/// A job's recorded spec (every field, defaults included) in the form the jobs API accepts:
/// unset options (null) left out, and SGD's momentum only with SGD.
fn recorded_spec(spec: &serde_json::Value) -> serde_json::Value {
    let mut v = spec.clone();
    if let Some(obj) = v.as_object_mut() {
        obj.retain(|_, x| !x.is_null());
        if obj.get("optimizer").and_then(|o| o.as_str()) != Some("sgd") {
            obj.remove("momentum");
        }
    }
    v
}

/// The refusal of a job whose name is taken.
fn job_exists(name: &str) -> NodeError {
    NodeError::Conflict(format!("a job named {name} already exists"))
}

/// A job name held during its admission; given back when dropped.
struct AdmissionName<'a> {
    node: &'a Node,
    name: String,
}

impl Drop for AdmissionName<'_> {
    fn drop(&mut self) {
        sync::lock(&self.node.admitting).remove(&self.name);
    }
}

#[cfg(test)]
mod restore_tests {
    use super::*;

    #[test]
    fn recorded_specs_parse_back_to_the_same_job() {
        let sources = [
            serde_json::json!({"name": "a", "data": "synthetic:blobs", "layers": [64, 10]}),
            serde_json::json!({"name": "b", "data": "synthetic:blobs", "layers": [64, 32, 10],
                "optimizer": "sgd", "momentum": 0.5, "deadline": "10m",
                "target_accuracy": 0.9, "epochs": 7, "checkpoint_every_steps": 3}),
            serde_json::json!({"name": "c", "data": "synthetic:spirals", "layers": [2, 8, 3],
                "deadline": "2030-01-01T00:00:00Z", "class": "best-effort"}),
        ];
        for src in sources {
            let cfg = crate::config::parse_job_json(&src).unwrap();
            let recorded = serde_json::to_value(&cfg).unwrap();
            let back = crate::config::parse_job_json(&recorded_spec(&recorded))
                .unwrap_or_else(|e| panic!("{src}: {e:?}"));
            assert_eq!(back, cfg, "{src}");
        }
    }
}
