//! Which devices the node runs on: the CUDA driver is probed (never assumed) and the reason
//! for every fallback to the CPU is logged and shown in `/v1/status`.

use std::path::Path;
use std::sync::Arc;

use serde::Serialize;

use crate::config::{DeviceConfig, DeviceKind, GpuSelection, ShareMechanism};
use crate::control::admission::{MemoryCheck, MemoryRefused, check_memory};
use crate::device::DeviceError;
use crate::device::cuda::{self, CudaDevice, GpuInfo};
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

/// Where the node's tenants run.
#[derive(Debug, Clone)]
pub enum Placement {
    /// The CPU backend: lanes are threads, shares are worker budgets and CPU time; every
    /// lane's backend shares the device's health.
    Cpu(Arc<DeviceHealth>),
    /// One GPU: lanes are streams (inference at the device's greatest priority, training at
    /// its least), shares are CTA budgets, work is charged by busy time from CUDA events.
    Cuda(Arc<CudaDevice>),
}

impl Placement {
    /// Workers the device offers: CPU threads, or SMs × resident blocks per SM on a GPU.
    pub fn workers(&self, cpu_threads: usize) -> usize {
        match self {
            Placement::Cpu(_) => cpu_threads,
            Placement::Cuda(dev) => dev.max_ctas(),
        }
    }

    /// The device's name in status and metrics: `cpu` or `cuda:N`.
    pub fn name(&self) -> String {
        match self {
            Placement::Cpu(_) => "cpu".into(),
            Placement::Cuda(dev) => format!("cuda:{}", dev.info().index),
        }
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
            Placement::Cpu(health) => health,
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
    /// Where they run: the CPU, or each GPU that opened (a device each, with its own lanes
    /// and capacity).
    #[serde(skip)]
    pub placements: Vec<Placement>,
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
        let open = || CudaDevice::open_with(g.index, Some(cache_dir), limit, green);
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
    let cpu = |gpus: Vec<GpuInfo>, note: String| DeviceReport {
        backend: "cpu",
        gpus,
        note,
        placements: vec![Placement::Cpu(Arc::new(DeviceHealth::new("cpu")))],
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
    Ok(cuda_report(gpus, opened, &failed, &fallbacks))
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
                "GPU {} ({}, {}, {} CTAs; shares as {mechanism})",
                i.index,
                i.name,
                i.uuid,
                d.max_ctas()
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
    /// A lane for a new service, on the device with the least share assigned: it starts
    /// with one core (a tenth of a GPU), and the controller brings it to what it needs.
    /// 503 when every device has failed.
    pub(super) fn service_lane(&self, name: &str) -> Result<Arc<Lane>, NodeError> {
        let d = self.least_loaded_device()?;
        let share = match self.placement(d) {
            Placement::Cpu(_) => 1.0 / self.workers_of(d) as f64,
            Placement::Cuda(_) => 0.1,
        };
        Ok(Arc::new(
            Lane::new(name, self.workers_of(d), share).on_device(d.0),
        ))
    }

    /// A lane for a job at `share` on device `d`: on the CPU its threads come from the
    /// node's cores and run at background priority under a policy with shares; on a GPU it
    /// is a stream at the device's least priority (the backend's), and its host thread keeps
    /// its priority.
    pub(super) fn job_lane(&self, name: &str, share: f64, d: DeviceId) -> Arc<Lane> {
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
        Arc::new(lane.on_device(d.0))
    }

    /// Every device of the node, in order.
    pub fn devices(&self) -> impl Iterator<Item = DeviceId> + use<> {
        (0..self.device_count()).map(DeviceId)
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
    /// as they are now, so tenants placed in a row spread out before the next tick).
    pub(super) fn devices_by_load(&self) -> Vec<DeviceId> {
        let mut held = vec![0.0; self.device_count()];
        let mut add = |lane: &Lane| {
            if let Some(h) = held.get_mut(lane.device()) {
                *h += lane.share();
            }
        };
        for slot in read(&self.registry.services).values() {
            if let ServiceSlot::Ready(s) = slot {
                add(&s.lane);
            }
        }
        for job in read(&self.store.jobs).values() {
            if !job.state().is_terminal() {
                add(job.lane());
            }
        }
        let load = |d: DeviceId| held[d.0];
        let mut order: Vec<DeviceId> = self.devices().collect();
        order.sort_by(|&a, &b| load(a).total_cmp(&load(b)).then(a.cmp(&b)));
        order
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

    /// The most a service may use of device `d`: one core on the CPU (one batcher thread),
    /// all of a GPU.
    pub(crate) fn service_max_share(&self, d: DeviceId) -> f64 {
        match self.placement(d) {
            Placement::Cpu(_) => 1.0 / self.workers_of(d) as f64,
            Placement::Cuda(_) => 1.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu(index: usize) -> GpuInfo {
        GpuInfo {
            index,
            name: "test".into(),
            uuid: format!("GPU-{index}"),
            compute_capability: (9, 0),
            sm_count: 132,
            total_memory: 1 << 30,
            priority_range: (0, -5),
            driver_version: 12080,
        }
    }

    fn config(kind: DeviceKind, require_gpu: bool) -> DeviceConfig {
        DeviceConfig {
            kind,
            gpus: GpuSelection::All,
            require_gpu,
            cpu_threads: 0,
            share_mechanism: ShareMechanism::Auto,
            memory_limit_mib: None,
        }
    }

    fn failing_open(_: &GpuInfo, green: bool) -> Result<Arc<CudaDevice>, DeviceError> {
        Err(DeviceError::Unavailable(if green {
            "green contexts on GPU 0: the driver supports CUDA 12.2; green contexts need 12.4 or newer".into()
        } else {
            "out of memory".into()
        }))
    }

    #[test]
    fn without_a_gpu_auto_falls_back_and_cuda_refuses() {
        let auto = decide(
            &config(DeviceKind::Auto, false),
            Err("libcuda not found".into()),
            failing_open,
        )
        .unwrap();
        assert_eq!(auto.backend, "cpu");
        assert!(matches!(auto.placements[..], [Placement::Cpu(_)]));
        assert!(auto.note.contains("libcuda not found"), "{}", auto.note);
        for cfg in [
            config(DeviceKind::Cuda, false),
            config(DeviceKind::Auto, true),
        ] {
            let err = decide(&cfg, Err("libcuda not found".into()), failing_open).unwrap_err();
            let msg = err.to_string();
            assert!(
                msg.contains("libcuda not found") && msg.contains("device.kind = \"auto\""),
                "{msg}"
            );
        }
        let cpu = decide(
            &config(DeviceKind::Cpu, false),
            Ok(vec![gpu(0)]),
            failing_open,
        )
        .unwrap();
        assert_eq!(cpu.backend, "cpu");
    }

    #[test]
    fn a_gpu_that_cannot_be_opened_is_named_with_the_reason() {
        let auto = decide(
            &config(DeviceKind::Auto, false),
            Ok(vec![gpu(0), gpu(1)]),
            failing_open,
        )
        .unwrap();
        assert_eq!(auto.backend, "cpu");
        assert_eq!(auto.gpus.len(), 2, "the GPUs are still reported");
        assert!(
            auto.note.contains(
                "cannot open them (GPU 0 (test): device unavailable: out of memory; GPU 1 (test): \
                 device unavailable: out of memory)"
            ),
            "{}",
            auto.note
        );
        let err = decide(
            &config(DeviceKind::Cuda, false),
            Ok(vec![gpu(0)]),
            failing_open,
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("cannot open any selected GPU (GPU 0 (test): device unavailable"),
            "{err}"
        );
    }

    #[test]
    fn green_contexts_that_cannot_be_built_refuse_to_start_even_under_auto() {
        let mut cfg = config(DeviceKind::Auto, false);
        cfg.share_mechanism = ShareMechanism::Green;
        let err = decide(&cfg, Ok(vec![gpu(0)]), failing_open)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("share_mechanism = \"green\"")
                && err.contains("need 12.4")
                && err.contains("\"cta\""),
            "{err}"
        );
        // Without a GPU the setting has nothing to act on.
        let ok = decide(&cfg, Err("no driver".into()), failing_open).unwrap();
        assert_eq!(ok.backend, "cpu");
    }

    #[test]
    fn auto_asks_for_green_contexts_first_and_cta_never_does() {
        for (mechanism, want) in [
            (ShareMechanism::Auto, vec![(0, true), (0, false)]),
            (ShareMechanism::Cta, vec![(0, false)]),
        ] {
            let mut cfg = config(DeviceKind::Auto, false);
            cfg.share_mechanism = mechanism;
            let mut calls = Vec::new();
            let report = decide(&cfg, Ok(vec![gpu(0)]), |g: &GpuInfo, green: bool| {
                calls.push((g.index, green));
                failing_open(g, green)
            })
            .unwrap();
            assert_eq!(calls, want, "{mechanism:?}");
            // When CTA budgets fail too, the GPU is reported with the plain open's reason.
            assert!(
                report.note.contains("out of memory") && !report.note.contains("need 12.4"),
                "{}",
                report.note
            );
        }
    }

    #[test]
    fn a_selection_of_missing_gpus_names_them() {
        let err = select(vec![gpu(0)], &GpuSelection::Indices(vec![0, 2])).unwrap_err();
        assert!(err.contains("GPU 2") && err.contains("reports 1"), "{err}");
        let ok = select(vec![gpu(0), gpu(1)], &GpuSelection::Indices(vec![1])).unwrap();
        assert_eq!(ok.len(), 1);
        assert_eq!(ok[0].index, 1);
    }
}
