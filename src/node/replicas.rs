//! A service's replicas: a lane and a batcher on each device the service runs on, all
//! serving the same weights, and which devices a service's `replicas` names.
//!
//! The rows of a service are split between its replicas by the controller
//! ([`crate::control::split`]), each period, and by the service's dispatcher
//! ([`crate::serve::dispatch`]) between periods. A replica whose device has failed takes no
//! rows from the moment the failure is seen, not from the next period.

use std::sync::Arc;

use serde::Serialize;

use crate::config::{ReplicaSpec, ServiceConfig};
use crate::device::lane::Lane;
use crate::device::{Backend, CpuBackend, Precision, Work};
use crate::serve::{BatchConfig, InferenceService, ServedModel};

use super::services::ServiceBuildError;
use super::{DeviceId, Node, NodeError, Placement};

/// One replica of a service: its lane and batcher on one device.
pub struct Replica {
    /// The device it runs on.
    pub device: DeviceId,
    /// That device's name (`cpu`, `cpu:1`, `cuda:0`).
    pub device_name: String,
    /// Its lane.
    pub lane: Arc<Lane>,
    /// Its batcher.
    pub batcher: InferenceService,
    /// The number format of its matrix products.
    pub precision: Precision,
    /// Its device's health (shared by the device's lanes), read on every dispatch.
    health: Arc<crate::device::fault::DeviceHealth>,
    /// Rows answered per second over the last control period (an `f64`'s bits).
    rate: std::sync::atomic::AtomicU64,
    /// Rows per second the split last planned it could serve within the SLO (an `f64`'s
    /// bits; NaN until measured).
    capacity: std::sync::atomic::AtomicU64,
    /// The most requests its queue holds and still answers within the latency set point
    /// at that capacity (`u64::MAX` until measured): past it, a request goes elsewhere.
    queue_bound: std::sync::atomic::AtomicU64,
    /// Whether the split passes it over while few rows are left for it
    /// ([`crate::control::split::Split::seldom`]).
    seldom: std::sync::atomic::AtomicBool,
}

impl Replica {
    /// Starts a replica of service `cfg` serving `model` in `lane`, on `placement` (device
    /// `device`).
    pub(crate) fn start(
        cfg: &ServiceConfig,
        model: ServedModel,
        batch: BatchConfig,
        lane: Arc<Lane>,
        (device, placement): (DeviceId, &Placement),
    ) -> Result<Self, ServiceBuildError> {
        let start_err = |e: String| ServiceBuildError::Start(format!("service {}: {e}", cfg.name));
        let (batcher, precision) = match placement {
            // One worker: a batch split over several threads stalls whenever one of them is
            // descheduled, and latency lanes share their cores with everything else; measured
            // in the co-location scenario, two workers made the tail worse than one.
            Placement::Cpu(part) => serve_on(
                cfg,
                CpuBackend::with_health(part.health.clone(), 1, false)
                    .map_err(|e| start_err(e.to_string()))?,
                model,
                batch,
                &lane,
            ),
            // On a GPU a service is a stream at the device's greatest priority, so its
            // kernels are scheduled ahead of training's queued blocks.
            Placement::Cuda(dev) => serve_on(
                cfg,
                dev.lane_backend(crate::device::cuda::StreamPriority::Highest)
                    .map_err(|e| start_err(e.to_string()))?,
                model,
                batch,
                &lane,
            ),
        }
        .map_err(|e| ServiceBuildError::Start(e.to_string()))?;
        Ok(Replica {
            device,
            device_name: placement.name(),
            lane,
            batcher,
            precision,
            health: placement.health().clone(),
            rate: std::sync::atomic::AtomicU64::new(0),
            capacity: std::sync::atomic::AtomicU64::new(f64::NAN.to_bits()),
            queue_bound: std::sync::atomic::AtomicU64::new(u64::MAX),
            seldom: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Whether it can take rows: its device has not failed and its batcher accepts them
    /// (one atomic load each).
    pub fn is_up(&self) -> bool {
        !self.health.is_failed() && self.batcher.is_accepting()
    }

    /// Records the rows it answered per second over the last control period.
    pub(crate) fn set_rate(&self, rows_per_s: f64) {
        self.rate
            .store(rows_per_s.to_bits(), std::sync::atomic::Ordering::Relaxed);
    }

    /// The rows it answered per second over the last control period.
    pub fn rate(&self) -> f64 {
        f64::from_bits(self.rate.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Records whether the split marked it seldom: late while sent few rows, so passed
    /// over while few rows are left for it.
    pub(crate) fn set_seldom(&self, seldom: bool) {
        self.seldom
            .store(seldom, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether the split marked it seldom at the last control period.
    pub fn is_seldom(&self) -> bool {
        self.seldom.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Records the rows per second the split planned it could serve within the SLO (None:
    /// not measured, or down), and so the queue it answers within `setpoint_s`.
    pub(crate) fn set_capacity(&self, rows_per_s: Option<f64>, setpoint_s: f64) {
        use std::sync::atomic::Ordering::Relaxed;
        let bits = rows_per_s.unwrap_or(f64::NAN).to_bits();
        self.capacity.store(bits, Relaxed);
        let bound = rows_per_s.map_or(u64::MAX, |c| (c * setpoint_s).ceil().max(1.0) as u64);
        self.queue_bound.store(bound, Relaxed);
    }

    /// Whether its queue is longer than it answers within the latency set point (two
    /// atomic loads): a load step the split has not followed yet.
    pub(crate) fn is_backlogged(&self) -> bool {
        let bound = self.queue_bound.load(std::sync::atomic::Ordering::Relaxed);
        self.batcher.queue_len() as u64 > bound
    }

    /// Seconds its queue takes to drain at its planned capacity (0 with an empty queue,
    /// infinite with a queue and no capacity known).
    fn expected_wait(&self) -> f64 {
        let queued = self.batcher.queue_len() as f64;
        match self.capacity() {
            _ if queued == 0.0 => 0.0,
            Some(c) if c > 0.0 => queued / c,
            _ => f64::INFINITY,
        }
    }

    /// Of `replicas`, the one up and not backlogged whose queue drains first, other than
    /// `not`.
    pub(crate) fn relief(replicas: &[Replica], not: usize) -> Option<&Replica> {
        replicas
            .iter()
            .enumerate()
            .filter(|&(j, r)| j != not && r.is_up() && !r.is_backlogged())
            .map(|(_, r)| r)
            .min_by(|a, b| a.expected_wait().total_cmp(&b.expected_wait()))
    }

    /// The rows per second the split last planned it could serve within the SLO.
    pub fn capacity(&self) -> Option<f64> {
        let c = f64::from_bits(self.capacity.load(std::sync::atomic::Ordering::Relaxed));
        c.is_finite().then_some(c)
    }

    /// Its view, with `fraction`, its part of the service's rows.
    pub fn view(&self, fraction: f64) -> ReplicaView {
        let window = self.batcher.window_stats();
        ReplicaView {
            device: self.device_name.clone(),
            share: self.lane.share(),
            fraction,
            up: self.is_up(),
            queue_len: self.batcher.queue_len(),
            rows_per_s: self.rate(),
            capacity_rows_per_s: self.capacity(),
            seldom: self.is_seldom(),
            rows: self.batcher.stats().success_rows,
            p99_ms: (window.count > 0).then_some(window.total.p99 * 1000.0),
            precision: self.precision,
        }
    }
}

/// Starts `cfg`'s batcher on `backend` in `lane`, in the precision `cfg` asks for (else
/// the backend's default for serving); returns it with that precision.
fn serve_on<B: Backend + 'static>(
    cfg: &ServiceConfig,
    backend: B,
    model: ServedModel,
    batch: BatchConfig,
    lane: &Arc<Lane>,
) -> Result<(InferenceService, Precision), crate::serve::ServeError> {
    backend.set_precision(
        cfg.precision
            .unwrap_or(backend.default_precision(Work::Serving)),
    );
    let precision = backend.precision();
    InferenceService::start_in_lane(&cfg.name, backend, model, batch, Some(lane.clone()))
        .map(|b| (b, precision))
}

/// One replica as status shows it.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct ReplicaView {
    /// The device it runs on.
    pub device: String,
    /// The share of that device its lane runs at.
    pub share: f64,
    /// The fraction of the service's rows the controller sends it.
    pub fraction: f64,
    /// Whether it takes rows (its device works and its batcher runs).
    pub up: bool,
    /// Requests waiting in its queue.
    pub queue_len: usize,
    /// Rows answered per second over the last control period.
    pub rows_per_s: f64,
    /// Rows per second the controller plans it can serve within the SLO (its device's
    /// share for it over its cost per row, at a load of 0.8, trimmed by its latency); the
    /// split fills the cheaper replicas up to it. None until measured, and while down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity_rows_per_s: Option<f64>,
    /// Whether the split passes it over while fewer rows than half its capacity are left
    /// for it: its p99 was over the latency set point while it answered less than that, so
    /// its rows came too seldom to be fast (weights out of cache, batches of one). It is
    /// filled again when more rows come, and unmarked once its p99 is within the set point.
    #[serde(default)]
    pub seldom: bool,
    /// Rows answered since it started.
    pub rows: u64,
    /// 99th-percentile latency over the SLO window, ms; none without requests.
    pub p99_ms: Option<f64>,
    /// The number format of its matrix products.
    pub precision: Precision,
}

impl ReplicaView {
    /// `down` (its device failed or its batcher stopped), `seldom` (up, and passed over
    /// while few rows are left for it) or `up`.
    pub fn state(&self) -> &'static str {
        match (self.up, self.seldom) {
            (false, _) => "down",
            (true, true) => "seldom",
            (true, false) => "up",
        }
    }
}

/// A device as replica resolution sees it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Candidate {
    /// Its name (`cpu`, `cpu:N`, `cuda:N`).
    pub name: String,
    /// Whether it is a GPU.
    pub gpu: bool,
    /// Whether it has failed.
    pub failed: bool,
    /// Share its tenants hold now.
    pub load: f64,
}

/// The devices (indices into `devices`) that `specs` names, in the order named, each once.
/// `"gpu"` and `"cpu"` take the working device of their kind with the least load; `"gpu:*"`
/// and `"cpu:*"` every working one. A device named outright must exist and work. When
/// nothing is left (only GPUs named, on a node without a working one), the replicas fall
/// back to `fallback`, the device a service without `replicas` would get, as the daemon
/// falls back to the CPU without a GPU.
pub(crate) fn resolve(
    specs: &[ReplicaSpec],
    devices: &[Candidate],
    fallback: impl FnOnce() -> Result<usize, NodeError>,
) -> Result<Vec<usize>, NodeError> {
    let mut out: Vec<usize> = Vec::new();
    let working = |gpu: bool| {
        let mut v: Vec<usize> = (0..devices.len())
            .filter(|&i| devices[i].gpu == gpu && !devices[i].failed)
            .collect();
        v.sort_by(|&a, &b| devices[a].load.total_cmp(&devices[b].load).then(a.cmp(&b)));
        v
    };
    for spec in specs {
        match *spec {
            ReplicaSpec::Gpu | ReplicaSpec::Cpu => {
                let gpu = *spec == ReplicaSpec::Gpu;
                if let Some(i) = working(gpu).into_iter().find(|i| !out.contains(i)) {
                    out.push(i);
                }
            }
            ReplicaSpec::AllGpus | ReplicaSpec::AllCpus => {
                let gpu = *spec == ReplicaSpec::AllGpus;
                let mut all: Vec<usize> = working(gpu);
                all.sort_unstable();
                out.extend(
                    all.into_iter()
                        .filter(|i| !out.contains(i))
                        .collect::<Vec<_>>(),
                );
            }
            ReplicaSpec::Cuda(_) | ReplicaSpec::CpuPart(_) => {
                let name = spec.to_string();
                let Some(i) = devices.iter().position(|d| d.name == name) else {
                    let names: Vec<&str> = devices.iter().map(|d| d.name.as_str()).collect();
                    return Err(NodeError::Invalid(vec![format!(
                        "replicas: this node has no device {name} (it has {})",
                        names.join(", ")
                    )]));
                };
                if devices[i].failed {
                    return Err(NodeError::Unavailable(format!(
                        "replicas: device {name} has failed; nothing runs on it until the \
                         daemon restarts"
                    )));
                }
                if !out.contains(&i) {
                    out.push(i);
                }
            }
        }
    }
    if out.is_empty() {
        let only_gpus = specs
            .iter()
            .all(|s| matches!(s, ReplicaSpec::Gpu | ReplicaSpec::AllGpus));
        if !only_gpus {
            return Err(NodeError::Unavailable(
                "replicas: every device they name has failed".into(),
            ));
        }
        out.push(fallback()?);
    }
    Ok(out)
}

impl Node {
    /// The devices a service's replicas go on (see [`resolve`]): by default one, the
    /// device with the least share held.
    pub(super) fn replica_devices(&self, cfg: &ServiceConfig) -> Result<Vec<DeviceId>, NodeError> {
        if cfg.replicas.is_empty() {
            return Ok(vec![self.least_loaded_device()?]);
        }
        let load = self.share_held();
        let devices: Vec<Candidate> = self
            .devices()
            .map(|d| Candidate {
                name: self.placement(d).name(),
                gpu: self.placement(d).is_gpu(),
                failed: self.device_failed(d),
                load: load[d.index()],
            })
            .collect();
        let picked = resolve(&cfg.replicas, &devices, || {
            self.least_loaded_device().map(|d| d.index())
        })?;
        if picked.len() < cfg.replicas.len() {
            let names: Vec<String> = picked.iter().map(|&i| devices[i].name.clone()).collect();
            tracing::info!(
                service = %cfg.name,
                "replicas {:?} resolve to {} on this node",
                cfg.replicas.iter().map(ToString::to_string).collect::<Vec<_>>(),
                names.join(", ")
            );
        }
        Ok(picked.into_iter().map(DeviceId).collect())
    }

    /// Starts one replica of `cfg` serving `model` on each of `devices`, in the lane given
    /// for that device (a replacement keeps the lanes of the service it replaces) or a new
    /// one.
    pub(super) fn start_replicas(
        &self,
        cfg: &ServiceConfig,
        model: &ServedModel,
        devices: &[DeviceId],
        lanes: &[Arc<Lane>],
    ) -> Result<Vec<Replica>, ServiceBuildError> {
        let batch = batch_config(cfg);
        devices
            .iter()
            .map(|&d| {
                let lane = lanes
                    .iter()
                    .find(|l| l.device() == d.index())
                    .cloned()
                    .unwrap_or_else(|| self.service_lane_on(&cfg.name, d));
                Replica::start(cfg, model.clone(), batch, lane, (d, self.placement(d)))
            })
            .collect()
    }
}

/// The batcher's settings for service `cfg`.
pub(super) fn batch_config(cfg: &ServiceConfig) -> BatchConfig {
    BatchConfig {
        max_batch_size: cfg.batching.max_batch_size,
        max_queue_delay: std::time::Duration::from_secs_f64(
            cfg.batching.max_queue_delay_ms / 1000.0,
        ),
        max_queue: cfg.max_queue,
        window: std::time::Duration::from_millis(cfg.slo.window_ms),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(name: &str, gpu: bool, failed: bool, load: f64) -> Candidate {
        Candidate {
            name: name.into(),
            gpu,
            failed,
            load,
        }
    }

    fn specs(s: &[&str]) -> Vec<ReplicaSpec> {
        s.iter().map(|x| ReplicaSpec::parse(x).unwrap()).collect()
    }

    fn no_fallback() -> Result<usize, NodeError> {
        panic!("no fallback expected")
    }

    #[test]
    fn gpu_and_cpu_take_the_least_loaded_working_device_of_their_kind() {
        let devices = [
            dev("cuda:0", true, false, 0.8),
            dev("cuda:1", true, false, 0.2),
            dev("cuda:2", true, true, 0.0),
            dev("cpu", false, false, 0.5),
        ];
        assert_eq!(
            resolve(&specs(&["gpu", "cpu"]), &devices, no_fallback).unwrap(),
            vec![1, 3]
        );
        // Every working GPU, in index order, then the CPU; a device named twice counts once.
        assert_eq!(
            resolve(&specs(&["gpu:*", "cuda:1", "cpu"]), &devices, no_fallback).unwrap(),
            vec![0, 1, 3]
        );
    }

    #[test]
    fn a_device_named_outright_must_exist_and_work() {
        let devices = [
            dev("cuda:0", true, true, 0.0),
            dev("cpu", false, false, 0.0),
        ];
        let err = resolve(&specs(&["cuda:3"]), &devices, no_fallback).unwrap_err();
        assert_eq!(
            err.to_string(),
            "replicas: this node has no device cuda:3 (it has cuda:0, cpu)"
        );
        let err = resolve(&specs(&["cuda:0", "cpu"]), &devices, no_fallback).unwrap_err();
        assert!(matches!(err, NodeError::Unavailable(_)), "{err}");
        assert!(err.to_string().contains("cuda:0 has failed"), "{err}");
    }

    #[test]
    fn only_gpus_on_a_node_without_one_fall_back_and_a_split_cpu_is_named_by_part() {
        let devices = [
            dev("cpu:0", false, false, 0.5),
            dev("cpu:1", false, false, 0.1),
        ];
        assert_eq!(
            resolve(&specs(&["gpu"]), &devices, || Ok(0)).unwrap(),
            vec![0]
        );
        assert_eq!(
            resolve(&specs(&["gpu", "cpu"]), &devices, no_fallback).unwrap(),
            vec![1],
            "the GPU is skipped, the CPU part with the least load taken"
        );
        assert_eq!(
            resolve(&specs(&["cpu:*"]), &devices, no_fallback).unwrap(),
            vec![0, 1]
        );
        assert_eq!(
            resolve(&specs(&["cpu:1", "cpu:0"]), &devices, no_fallback).unwrap(),
            vec![1, 0]
        );
        let failed = [
            dev("cpu:0", false, true, 0.0),
            dev("cpu:1", false, true, 0.0),
        ];
        let err = resolve(&specs(&["cpu", "gpu"]), &failed, no_fallback).unwrap_err();
        assert!(err.to_string().contains("every device"), "{err}");
    }
}
