//! Which devices the node runs on: the CUDA driver is probed (never assumed) and the reason
//! for every fallback to the CPU is logged and shown in `/v1/status`.

use std::path::Path;
use std::sync::Arc;

use serde::Serialize;

use crate::config::{DeviceConfig, DeviceKind, GpuSelection, ShareMechanism};
use crate::control::admission::{MemoryCheck, MemoryRefused, check_memory};
use crate::device::DeviceError;
use crate::device::cuda::{self, CudaDevice, GpuInfo, OpenOptions};
use crate::device::fault::DeviceHealth;
use crate::telemetry::NvmlSource;

use super::{Node, NodeError, Policy, ServiceSlot};
use crate::device::lane::Lane;
use crate::util::sync::read;

/// One of the node's devices, by its position among them (`cuda:N` need not be position
/// N). Only the node hands them out, from its own list or from a lane it placed, so every
/// one names a device the node has: none needs checking, or clamping, where it is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeviceId(pub(super) usize);

impl DeviceId {
    /// The first device: the CPU, or the first GPU that opened (a node always has one).
    pub(crate) const FIRST: DeviceId = DeviceId(0);

    /// Its position among the node's devices.
    pub fn index(self) -> usize {
        self.0
    }
}

/// The CPU as one of the node's devices: all of its cores, or a part of them
/// (`device.cpu_split`), each part a device of its own named `cpu:N`.
#[derive(Debug, Clone)]
pub struct CpuPart {
    /// Its health, shared by every lane on it; its name is the device's.
    pub health: Arc<DeviceHealth>,
    /// Its fraction of the CPU's cores: 1 for the whole CPU.
    pub fraction: f64,
}

impl CpuPart {
    /// The whole CPU, `cpu`.
    pub fn whole() -> Self {
        CpuPart {
            health: Arc::new(DeviceHealth::new("cpu")),
            fraction: 1.0,
        }
    }

    /// The CPU's devices for `split` (fractions of its cores): the whole CPU when empty.
    pub fn split(split: &[f64]) -> Vec<Self> {
        if split.is_empty() {
            return vec![CpuPart::whole()];
        }
        split
            .iter()
            .enumerate()
            .map(|(i, &fraction)| CpuPart {
                health: Arc::new(DeviceHealth::new(format!("cpu:{i}"))),
                fraction,
            })
            .collect()
    }
}

/// Where the node's tenants run.
#[derive(Debug, Clone)]
pub enum Placement {
    /// The CPU backend: lanes are threads, shares are worker budgets and CPU time; every
    /// lane's backend shares the device's health.
    Cpu(CpuPart),
    /// One GPU: lanes are streams (inference at the device's greatest priority, training at
    /// its least), shares are CTA budgets, work is charged by busy time from CUDA events.
    Cuda(Arc<CudaDevice>),
}

impl Placement {
    /// Workers the device offers: CPU threads (its part of them, at least one), or SMs ×
    /// resident blocks per SM on a GPU.
    pub fn workers(&self, cpu_threads: usize) -> usize {
        match self {
            Placement::Cpu(part) => ((part.fraction * cpu_threads as f64 - 1e-9).ceil() as usize)
                .clamp(1, cpu_threads.max(1)),
            Placement::Cuda(dev) => dev.max_ctas(),
        }
    }

    /// What the device can do per second in its workers' units: core-seconds on the CPU
    /// (its part of the cores, which may be a fraction of one), CTA-seconds on a GPU.
    pub fn capacity(&self, cpu_threads: usize) -> f64 {
        match self {
            Placement::Cpu(part) => part.fraction * cpu_threads.max(1) as f64,
            Placement::Cuda(dev) => dev.max_ctas() as f64,
        }
    }

    /// The device's name in status and metrics: `cpu` (or `cpu:N`, a part of it) or `cuda:N`.
    pub fn name(&self) -> String {
        match self {
            Placement::Cpu(part) => part.health.device().to_string(),
            Placement::Cuda(dev) => format!("cuda:{}", dev.info().index),
        }
    }

    /// Whether it is a GPU.
    pub fn is_gpu(&self) -> bool {
        matches!(self, Placement::Cuda(_))
    }

    /// The GPU's UUID, when tenants run on one.
    pub(crate) fn gpu_uuid(&self) -> Option<&str> {
        match self {
            Placement::Cpu(_) => None,
            Placement::Cuda(dev) => Some(&dev.info().uuid),
        }
    }

    /// The device's health, shared by every lane on it.
    pub fn health(&self) -> &Arc<DeviceHealth> {
        match self {
            Placement::Cpu(part) => &part.health,
            Placement::Cuda(dev) => dev.health(),
        }
    }
}

/// What the node found at start.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceReport {
    /// The backend the daemon's tenants run on (`cpu` or `cuda`).
    pub backend: &'static str,
    /// GPUs the driver reports, among those the config selects.
    pub gpus: Vec<GpuInfo>,
    /// Why the tenants run where they do, in one line.
    pub note: String,
    /// Where they run: the CPU (or its parts), or each GPU that opened, each a device with
    /// its own lanes and capacity; on a node with GPUs, the CPU follows them.
    #[serde(skip)]
    pub placements: Vec<Placement>,
    /// How many of the placements, from the first, take tenants by default: every GPU on a
    /// node with GPUs (the CPU after them takes only the replicas that name it), else every
    /// part of the CPU.
    #[serde(skip)]
    pub primary: usize,
}

/// Probes the GPUs `cfg` asks about and decides where tenants run: on every selected GPU
/// that opens (its kernels compiled with NVRTC and cached under `cache_dir`), each a device
/// of its own, else on the CPU. Refuses (503-class `Unavailable`) when the config requires a
/// GPU and none can be used.
///
/// With `nvml`, each GPU is opened inside a handshake that learns the daemon's host pid from
/// NVML's process lists (`telemetry::OwnPids::learn_around`), for telling own GPU load from
/// foreign inside a container.
pub fn resolve(
    cfg: &DeviceConfig,
    cache_dir: &Path,
    mut nvml: Option<&mut NvmlSource>,
) -> Result<DeviceReport, NodeError> {
    if cfg.kind == DeviceKind::Cpu {
        // Nothing is probed or opened: `decide` answers "cpu" before it would open a GPU.
        return decide(cfg, Ok(Vec::new()), |_, _| {
            Err(DeviceError::Unavailable("not probed".into()))
        });
    }
    let found = cuda::probe()
        .map_err(|e| e.to_string())
        .and_then(|all| select(all, &cfg.gpus));
    let limit = cfg.memory_limit_mib.map(|m| m << 20);
    decide(cfg, found, |g, green| {
        let opts = OpenOptions {
            green_contexts: green,
            wgmma: cfg.gemm_wgmma,
            convert_every_gemm: false,
            graphs: cfg.cuda_graphs,
        };
        let open = || CudaDevice::open_with(g.index, Some(cache_dir), limit, opts);
        let Some(nvml) = nvml.as_deref_mut() else {
            return open();
        };
        let own = nvml.own();
        let (opened, outcome) = own.learn_around(Some(nvml), open);
        tracing::debug!(gpu = g.index, "own host pid handshake: {outcome:?}");
        opened
    })
}

/// The decision [`resolve`] makes, given what the probe found and a way to open a GPU.
fn decide(
    cfg: &DeviceConfig,
    found: Result<Vec<GpuInfo>, String>,
    open: impl FnMut(&GpuInfo, bool) -> Result<Arc<CudaDevice>, DeviceError>,
) -> Result<DeviceReport, NodeError> {
    let cpu = |gpus: Vec<GpuInfo>, note: String| {
        let placements: Vec<Placement> = CpuPart::split(&cfg.cpu_split)
            .into_iter()
            .map(Placement::Cpu)
            .collect();
        DeviceReport {
            backend: "cpu",
            gpus,
            note: note + &split_note(&placements),
            primary: placements.len(),
            placements,
        }
    };
    if cfg.kind == DeviceKind::Cpu {
        return Ok(cpu(Vec::new(), "device.kind = \"cpu\"".into()));
    }
    let wants_gpu = cfg.kind == DeviceKind::Cuda || cfg.require_gpu;
    let required = "the config requires one (device.kind = \"cuda\" or device.require_gpu = \
                    true); set device.kind = \"auto\" to run on the CPU instead";
    let gpus = match found {
        Ok(gpus) if !gpus.is_empty() => gpus,
        Ok(_) if wants_gpu => {
            return Err(NodeError::Unavailable(format!(
                "no usable GPU: the selection is empty; {required}"
            )));
        }
        Ok(_) => {
            return Ok(cpu(
                Vec::new(),
                "no GPU selected; running on the CPU backend".into(),
            ));
        }
        Err(why) if wants_gpu => {
            return Err(NodeError::Unavailable(format!(
                "no usable GPU: {why}; {required}"
            )));
        }
        Err(why) => {
            return Ok(cpu(
                Vec::new(),
                format!("no usable GPU ({why}); running on the CPU backend"),
            ));
        }
    };
    let (opened, failed, fallbacks) = open_all(&gpus, cfg.share_mechanism, open)?;
    if opened.is_empty() {
        let why = failed.join("; ");
        return if wants_gpu {
            Err(NodeError::Unavailable(format!(
                "cannot open any selected GPU ({why}); {required}"
            )))
        } else {
            Ok(cpu(
                gpus,
                format!("found GPUs but cannot open them ({why}); running on the CPU backend"),
            ))
        };
    }
    let mut report = cuda_report(gpus, opened, &failed, &fallbacks);
    let cpu: Vec<Placement> = CpuPart::split(&cfg.cpu_split)
        .into_iter()
        .map(Placement::Cpu)
        .collect();
    let names: Vec<String> = cpu.iter().map(Placement::name).collect();
    report.note += &format!("; {} for the replicas that name it", names.join(", "));
    report.placements.extend(cpu);
    Ok(report)
}

/// The status note's words on a split CPU: its parts and their fractions.
fn split_note(placements: &[Placement]) -> String {
    if placements.len() < 2 {
        return String::new();
    }
    let parts: Vec<String> = placements
        .iter()
        .map(|p| match p {
            Placement::Cpu(part) => format!("{} ({:.0} %)", p.name(), part.fraction * 100.0),
            Placement::Cuda(_) => p.name(),
        })
        .collect();
    format!("; the CPU split into {}", parts.join(", "))
}

/// GPUs opened, GPUs that failed to open (with the reason) and, under `"auto"`, GPUs whose
/// green contexts could not be built and that run on CTA budgets instead (with the reason).
type Opened = (Vec<Arc<CudaDevice>>, Vec<String>, Vec<String>);

/// Opens each of `gpus` with the share mechanism asked for. `"green"` refuses the start when
/// a GPU cannot build its green contexts; `"auto"` asks for them and falls back to CTA
/// budgets on that GPU alone (measured on an H200: green contexts kept each of two lanes at
/// 97-98 % of its rate alone, CTA budgets let the smaller lane fall to 50 %); `"cta"` never
/// builds them.
fn open_all(
    gpus: &[GpuInfo],
    mechanism: ShareMechanism,
    mut open: impl FnMut(&GpuInfo, bool) -> Result<Arc<CudaDevice>, DeviceError>,
) -> Result<Opened, NodeError> {
    let mut opened = Vec::new();
    let mut failed = Vec::new();
    let mut fallbacks = Vec::new();
    for g in gpus {
        let first = open(g, mechanism != ShareMechanism::Cta);
        let result = match (first, mechanism) {
            (Err(e), ShareMechanism::Green) => {
                return Err(NodeError::Unavailable(format!(
                    "cannot open GPU {} ({}) with device.share_mechanism = \"green\": {e}; \
                     use \"cta\" or \"auto\" (CTA budgets where green contexts fail) instead",
                    g.index, g.name
                )));
            }
            (Err(e), ShareMechanism::Auto) => {
                let plain = open(g, false);
                if plain.is_ok() {
                    fallbacks.push(format!("GPU {}: {e}", g.index));
                }
                plain
            }
            (result, _) => result,
        };
        match result {
            Ok(dev) => opened.push(dev),
            Err(e) => failed.push(format!("GPU {} ({}): {e}", g.index, g.name)),
        }
    }
    Ok((opened, failed, fallbacks))
}

/// The report of a node running on the GPUs `opened` (at least one).
fn cuda_report(
    gpus: Vec<GpuInfo>,
    opened: Vec<Arc<CudaDevice>>,
    failed: &[String],
    fallbacks: &[String],
) -> DeviceReport {
    let names: Vec<String> = opened
        .iter()
        .map(|d| {
            let i = d.info();
            let mechanism = match d.green_groups() {
                Some(g) => format!(
                    "SM partitions: green contexts over {} groups of {} SMs, leased disjointly",
                    g.len(),
                    g.first().copied().unwrap_or(0)
                ),
                None => "CTA budgets".into(),
            };
            format!(
                "GPU {} ({}, {}, {} CTAs; shares as {mechanism}{})",
                i.index,
                i.name,
                i.uuid,
                d.max_ctas(),
                if d.graphs() {
                    "; batches and steps as CUDA Graphs"
                } else {
                    ""
                }
            )
        })
        .collect();
    let mut notes = String::new();
    if !fallbacks.is_empty() {
        notes += &format!(
            "; green contexts unavailable, CTA budgets instead: {}",
            fallbacks.join("; ")
        );
    }
    if !failed.is_empty() {
        notes += &format!("; not opened: {}", failed.join("; "));
    }
    DeviceReport {
        backend: "cuda",
        note: format!("tenants run on {}{notes}", names.join(", ")),
        gpus,
        primary: opened.len(),
        placements: opened.into_iter().map(Placement::Cuda).collect(),
    }
}

/// The GPUs `sel` names, or which named ones do not exist.
fn select(all: Vec<GpuInfo>, sel: &GpuSelection) -> Result<Vec<GpuInfo>, String> {
    match sel {
        GpuSelection::All => Ok(all),
        GpuSelection::Indices(ix) => {
            let missing: Vec<String> = ix
                .iter()
                .filter(|&&i| !all.iter().any(|g| g.index == i as usize))
                .map(|i| i.to_string())
                .collect();
            if !missing.is_empty() {
                return Err(format!(
                    "device.gpus names GPU {} but the driver reports {} GPU(s)",
                    missing.join(", "),
                    all.len()
                ));
            }
            Ok(all
                .into_iter()
                .filter(|g| ix.contains(&(g.index as u32)))
                .collect())
        }
    }
}

impl Node {
    /// A lane for a service (or one of its replicas) on device `d`, at one core (a tenth of
    /// a GPU).
    pub(super) fn service_lane_on(&self, name: &str, d: DeviceId) -> Arc<Lane> {
        let share = match self.placement(d) {
            Placement::Cpu(_) => self.service_max_share(d),
            Placement::Cuda(_) => 0.1,
        };
        let lane = Lane::new(name, self.workers_of(d), share).with_capacity(self.capacity_of(d));
        Arc::new(self.lane_on(lane, d))
    }

    /// A lane for a job at `share` on device `d`: on the CPU its threads come from the
    /// node's cores and run at background priority under a policy with shares; on a GPU it
    /// is a stream at the device's least priority (the backend's), and its host thread keeps
    /// its priority.
    pub(super) fn job_lane(&self, name: &str, share: f64, d: DeviceId) -> Arc<Lane> {
        let shares = !matches!(self.policy(), Policy::None);
        let lane = match self.placement(d) {
            Placement::Cpu(_) => {
                let lane =
                    Lane::parallel(name, &self.permits, share).with_capacity(self.capacity_of(d));
                lane.set_background(shares);
                lane
            }
            Placement::Cuda(_) => Lane::new(name, self.workers_of(d), share),
        };
        lane.set_enforced(shares);
        Arc::new(self.lane_on(lane, d))
    }

    /// Every device of the node, in order.
    pub fn devices(&self) -> impl Iterator<Item = DeviceId> + use<> {
        (0..self.device_count()).map(DeviceId)
    }

    /// The devices that take tenants by default: the GPUs on a node with GPUs (not the
    /// CPU after them), else every part of the CPU.
    pub(crate) fn primary_devices(&self) -> impl Iterator<Item = DeviceId> + use<> {
        (0..self.devices.primary.clamp(1, self.device_count())).map(DeviceId)
    }

    /// The device a lane the node placed runs on.
    pub(crate) fn device_of(&self, lane: &Lane) -> DeviceId {
        debug_assert!(
            lane.device() < self.device_count(),
            "a lane the node did not place"
        );
        DeviceId(lane.device())
    }

    /// Where device `d`'s tenants run.
    pub(crate) fn placement(&self, d: DeviceId) -> &Placement {
        &self.devices.placements[d.0]
    }

    /// The device that has not failed whose tenants hold the least share (the first on a
    /// tie, so a node with one device always answers 0 while it works).
    pub(super) fn least_loaded_device(&self) -> Result<DeviceId, NodeError> {
        Ok(self.usable_devices_by_load()?[0])
    }

    /// Device indices from the least share held by its tenants' lanes to the most (shares
    /// as they are now, so tenants placed in a row spread out before the next tick), among
    /// the devices that take tenants by default.
    pub(super) fn devices_by_load(&self) -> Vec<DeviceId> {
        let held = self.share_held();
        let load = |d: DeviceId| held[d.0];
        let mut order: Vec<DeviceId> = self.primary_devices().collect();
        order.sort_by(|&a, &b| load(a).total_cmp(&load(b)).then(a.cmp(&b)));
        order
    }

    /// The share the tenants' lanes hold on each device now, by device index.
    pub(super) fn share_held(&self) -> Vec<f64> {
        let mut held = vec![0.0; self.device_count()];
        let mut add = |lane: &Lane| {
            if let Some(h) = held.get_mut(lane.device()) {
                *h += lane.share();
            }
        };
        for slot in read(&self.registry.services).values() {
            if let ServiceSlot::Ready(s) = slot {
                for r in s.replicas() {
                    add(&r.lane);
                }
            }
        }
        for job in read(&self.store.jobs).values() {
            if !job.state().is_terminal() {
                add(job.lane());
            }
        }
        held
    }

    /// Whether `need_bytes` of buffers fit on device `d` now: under setpoint's memory limit
    /// and in what telemetry sees free there (always on the CPU); if not, why, with the
    /// figures.
    pub(super) fn memory_fits(&self, d: DeviceId, need_bytes: u64) -> Result<(), MemoryRefused> {
        let Placement::Cuda(dev) = self.placement(d) else {
            return Ok(());
        };
        let (samples, _) = self.telemetry();
        let check = MemoryCheck {
            device: self.placement(d).name(),
            need_bytes,
            limit_free_bytes: dev.memory_limit().saturating_sub(dev.memory_used()),
            device_used_total: samples
                .iter()
                .find(|s| s.uuid == dev.info().uuid)
                .and_then(|s| s.mem_used_bytes.zip(s.mem_total_bytes)),
        };
        check_memory(&check)
    }

    /// The most a service may use of device `d`: one core on the CPU (one batcher thread;
    /// all of a part of the CPU smaller than a core), all of a GPU.
    pub(crate) fn service_max_share(&self, d: DeviceId) -> f64 {
        match self.placement(d) {
            Placement::Cpu(_) => (1.0 / self.capacity_of(d)).min(1.0),
            Placement::Cuda(_) => 1.0,
        }
    }
}

#[cfg(test)]
#[path = "devices_tests.rs"]
mod tests;
