//! Inference services in the daemon: a model, its SLO and batching limits, and the running
//! batcher that serves it.

use crate::util::sync;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::config::{ServiceConfig, format_rfc3339};
use crate::data::{self, LoadOptions, Normalizer};
use crate::device::{CpuBackend, Precision};
use crate::model::MlpParams;
use crate::model::checkpoint::Checkpoint;
use crate::model::footprint::{Purpose, check_fit};
use crate::serve::dispatch::Dispatcher;
use crate::serve::{ModelIo, Protocol, ServeError, ServedModel, ServiceStats};
use crate::train::{TrainEvent, TrainSpec, Trainer};
use crate::util::histogram::{Histogram, LATENCY_BOUNDS_S};

use super::replicas::{Replica, ReplicaView};

/// Where a service's model came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum ServiceOrigin {
    /// The node's config file.
    Config,
    /// Published from a finished training job.
    Job {
        /// The job.
        job: String,
    },
    /// Added through the API from a checkpoint file.
    Api,
}

/// The node's record of a loaded inference service: its settings, where its model came
/// from, and the batcher that serves it.
pub struct LoadedService {
    /// Its name, fixed for its life.
    name: String,
    /// Its validated settings; a reload may change those that apply live
    /// ([`LoadedService::apply_live`]).
    config: std::sync::RwLock<ServiceConfig>,
    /// Layer widths of its model.
    pub layers: Vec<usize>,
    /// Tensor names and widths for the inference protocol.
    pub io: ModelIo,
    /// Where the model came from.
    pub origin: ServiceOrigin,
    /// When it started serving.
    pub created_at: SystemTime,
    /// Its replicas, one per device it runs on; at least one.
    replicas: Vec<Replica>,
    /// Which replica takes each request, by the fractions the controller decided.
    dispatch: Dispatcher,
    /// End-to-end latency of successful inference requests (arrival to answer), seconds,
    /// one histogram per protocol ([`Protocol::index`]).
    request_hist: [Mutex<Histogram>; 2],
    /// Requests refused before reaching the batcher (malformed input).
    invalid: Mutex<u64>,
    /// Requests answered with a timeout.
    timeouts: AtomicU64,
}

/// Where a service is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceState {
    /// Serving.
    Ready,
    /// Its model is being loaded or trained.
    Loading,
    /// It could not be loaded, or its device failed.
    Failed,
}

/// The API's view of a service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceView {
    /// Name, as used in URLs.
    pub name: String,
    /// `ready`, `loading` or `failed`.
    pub state: ServiceState,
    /// Why it failed to load.
    pub error: Option<String>,
    /// Model widths.
    pub layers: Vec<usize>,
    /// Response-time objective, ms.
    pub slo_p99_ms: f64,
    /// Longest a request may wait for its answer, ms.
    pub timeout_ms: f64,
    /// Current batch size limit.
    pub max_batch_size: usize,
    /// Longest wait for a batch to fill, ms.
    pub max_queue_delay_ms: f64,
    /// Queue bound.
    pub max_queue: usize,
    /// Requests waiting.
    pub queue_len: usize,
    /// Share of the device it runs at.
    pub share: f64,
    /// Requests answered.
    pub success_count: u64,
    /// Where the model came from.
    pub origin: Option<ServiceOrigin>,
    /// When it started serving.
    pub created_at: Option<String>,
    /// The number format its matrix products run in (`f32`, `bf16`), while it serves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<Precision>,
    /// Its replicas, when it has more than one: each one's device, share, part of the rows,
    /// rows per second and latency.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<ReplicaView>,
}

/// Why a service could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ServiceBuildError {
    /// The model could not be loaded or trained.
    #[error("{0}")]
    Model(String),
    /// The batcher could not start.
    #[error("{0}")]
    Start(String),
}

/// Loads or builds the model a service config describes: from its checkpoint, else
/// initialised from its seed and, with `warmup_data`, trained on that data first.
pub(crate) fn build_model(cfg: &ServiceConfig) -> Result<ServedModel, ServiceBuildError> {
    let model_err = |m: String| ServiceBuildError::Model(format!("service {}: {m}", cfg.name));
    if let Some(path) = &cfg.checkpoint {
        let ckpt = Checkpoint::load(path).map_err(|e| model_err(e.to_string()))?;
        if let Some(layers) = &cfg.layers {
            ckpt.check_layers(layers, path)
                .map_err(|e| model_err(e.to_string()))?;
        }
        return Ok(ServedModel {
            params: ckpt.params,
            normalizer: ckpt.normalizer,
        });
    }
    let layers = cfg
        .layers
        .clone()
        .ok_or_else(|| model_err("needs layers or a checkpoint".into()))?;
    // Nothing is allocated for a model the host could not hold: it would abort the process.
    let purpose = Purpose::Inference {
        batch: cfg.batching.max_batch_size,
    };
    check_fit(
        &layers,
        purpose,
        &crate::device::host_memory_scope(),
        crate::device::host_memory_headroom(),
    )
    .map_err(|e| model_err(e.to_string()))?;
    match &cfg.warmup_data {
        None => Ok(ServedModel {
            params: MlpParams::init(&layers, cfg.seed).map_err(|e| model_err(e.to_string()))?,
            normalizer: Normalizer::identity(layers[0]),
        }),
        Some(spec) => {
            let data = data::load(spec, &LoadOptions::default())
                .map_err(|e| model_err(format!("warm-up data: {e}")))?;
            let mut ts = TrainSpec::new(layers);
            ts.seed = cfg.seed;
            ts.epochs = 20;
            ts.target_accuracy = Some(0.95);
            let mut t = Trainer::new(CpuBackend::single(), ts, &data)
                .map_err(|e| model_err(format!("warm-up training: {e}")))?;
            let report = t
                .run(&mut |_: &TrainEvent| {})
                .map_err(|e| model_err(format!("warm-up training: {e}")))?;
            tracing::info!(
                service = %cfg.name,
                epochs = report.epochs,
                val_accuracy = format_args!("{:.4}", report.val_accuracy.unwrap_or(0.0)),
                "warm-up training done"
            );
            Ok(ServedModel {
                params: t.params().map_err(|e| model_err(e.to_string()))?,
                normalizer: t.normalizer().clone(),
            })
        }
    }
}

impl LoadedService {
    /// Starts serving `model` under `cfg`, on `replicas` (at least one).
    pub fn start(
        cfg: ServiceConfig,
        model: &ServedModel,
        origin: ServiceOrigin,
        replicas: Vec<Replica>,
    ) -> Result<Self, ServiceBuildError> {
        if replicas.is_empty() {
            return Err(ServiceBuildError::Start(format!(
                "service {}: no replica started",
                cfg.name
            )));
        }
        let layers = model.params.layers.clone();
        let io = ModelIo::for_layers(&layers);
        Ok(LoadedService {
            name: cfg.name.clone(),
            config: std::sync::RwLock::new(cfg),
            layers,
            io,
            origin,
            created_at: SystemTime::now(),
            dispatch: Dispatcher::new(replicas.len()),
            replicas,
            request_hist: Protocol::ALL.map(|_| Mutex::new(Histogram::new(LATENCY_BOUNDS_S))),
            invalid: Mutex::new(0),
            timeouts: AtomicU64::new(0),
        })
    }

    /// Its replicas, in the order `replicas` named their devices.
    pub fn replicas(&self) -> &[Replica] {
        &self.replicas
    }

    /// The first replica: the one every row goes to until the controller splits them, and
    /// the one whose limits (the same on every replica) answer for the service.
    pub fn primary(&self) -> &Replica {
        &self.replicas[0]
    }

    /// The replica that takes a request of `rows` rows, by the split in force; a replica
    /// found down (its device failed) is cut from the split at once and another chosen. A
    /// replica whose queue is already longer than it answers within the latency set point
    /// (a load step the split has not followed yet) passes the request to the replica whose
    /// queue drains first, when one is not backlogged too. `DeviceFailed` (503) when none is
    /// up.
    pub(crate) fn choose(&self, rows: usize) -> Result<&Replica, ServeError> {
        if self.replicas.len() == 1 {
            return Ok(&self.replicas[0]);
        }
        for _ in 0..self.replicas.len() {
            let Some(i) = self.dispatch.choose(rows) else {
                break;
            };
            let chosen = &self.replicas[i];
            if chosen.is_up() {
                if chosen.is_backlogged()
                    && let Some(other) = Replica::relief(&self.replicas, i)
                {
                    return Ok(other);
                }
                return Ok(chosen);
            }
            self.dispatch.cut(i);
        }
        // Nothing in the split is up: any replica that is, else the service is down.
        self.replicas
            .iter()
            .find(|r| r.is_up())
            .ok_or_else(|| ServeError::DeviceFailed {
                service: self.name.clone(),
                message: format!(
                    "no replica can take requests: {} failed or stopped",
                    self.device_names().join(", ")
                ),
            })
    }

    /// Refuses at once, as a submission would, when no replica has room for `rows` more
    /// rows now (see [`crate::serve::InferenceService::check_room`]).
    pub(crate) fn check_room(&self, rows: usize) -> Result<(), ServeError> {
        let mut first = None;
        for r in &self.replicas {
            match r.batcher.check_room(rows) {
                Ok(()) => return Ok(()),
                Err(e) => {
                    first.get_or_insert(e);
                }
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// The names of the devices its replicas run on.
    pub fn device_names(&self) -> Vec<String> {
        self.replicas
            .iter()
            .map(|r| r.device_name.clone())
            .collect()
    }

    /// Sets the fractions of the rows each replica takes (the controller's split).
    pub(crate) fn set_split(&self, fractions: &[f64]) {
        self.dispatch.set(fractions);
    }

    /// The fractions of the rows each replica takes now.
    pub fn split(&self) -> Vec<f64> {
        self.dispatch.fractions()
    }

    /// Name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its settings in force.
    pub fn config(&self) -> ServiceConfig {
        sync::read(&self.config).clone()
    }

    /// True when `new` differs from the settings in force only in what can change while the
    /// service runs: the SLO (`p99_ms`, `window_ms`), `timeout_ms`, `max_queue_delay_ms`,
    /// and `max_batch_size` up to the batch size the service was started for. Anything else
    /// (the model, `max_queue`, a larger batch) needs a new batcher.
    pub(crate) fn can_apply_live(&self, new: &ServiceConfig) -> bool {
        let cur = self.config();
        let mut same = new.clone();
        same.slo = cur.slo.clone();
        same.timeout_ms = cur.timeout_ms;
        same.batching = cur.batching.clone();
        same == cur && new.batching.max_batch_size <= self.batch_limit()
    }

    /// Applies `new` to the running service (see [`LoadedService::can_apply_live`]): the
    /// controller reads the SLO and batch limit from the next period, the batcher its queue
    /// delay and window from the next batch, the next request its timeout. Requests in
    /// flight are not disturbed.
    pub(crate) fn apply_live(&self, new: &ServiceConfig) {
        let mut cfg = sync::write(&self.config);
        for b in self.replicas.iter().map(|r| &r.batcher) {
            if new.batching.max_batch_size < b.max_batch_size() {
                b.set_max_batch_size(new.batching.max_batch_size);
            }
            b.set_max_queue_delay(Duration::from_secs_f64(
                new.batching.max_queue_delay_ms / 1000.0,
            ));
            b.set_window(Duration::from_millis(new.slo.window_ms));
        }
        *cfg = new.clone();
    }

    /// Records one successful request's end-to-end latency.
    pub(crate) fn observe_request(&self, protocol: Protocol, seconds: f64) {
        sync::lock(&self.request_hist[protocol.index()]).observe(seconds);
    }

    /// Counts a request refused as malformed.
    pub(crate) fn count_invalid(&self) {
        *sync::lock(&self.invalid) += 1;
    }

    /// Requests refused as malformed.
    pub(crate) fn invalid_count(&self) -> u64 {
        *sync::lock(&self.invalid)
    }

    /// Counts a request answered with a timeout.
    pub(crate) fn count_timeout(&self) {
        self.timeouts.fetch_add(1, Ordering::Relaxed);
    }

    /// Requests answered with a timeout.
    pub(crate) fn timeout_count(&self) -> u64 {
        self.timeouts.load(Ordering::Relaxed)
    }

    /// Requests that failed, as Triton's statistics count them (`fail`), given `st`, the
    /// batcher's statistics: failed in the batcher, refused by a full queue, malformed, or
    /// timed out.
    pub(crate) fn failed_count(&self, st: &ServiceStats) -> u64 {
        st.failure_count + st.rejected_count + self.invalid_count() + self.timeout_count()
    }

    /// The longest a request may wait for its answer (`timeout_ms`).
    pub fn timeout(&self) -> Duration {
        Duration::from_secs_f64(self.timeout_ms() / 1000.0)
    }

    /// The service's `timeout_ms` in force.
    pub fn timeout_ms(&self) -> f64 {
        sync::read(&self.config).timeout_ms
    }

    /// End-to-end latency histogram of the requests that came over `protocol`.
    pub(crate) fn request_hist(&self, protocol: Protocol) -> Histogram {
        sync::lock(&self.request_hist[protocol.index()]).clone()
    }

    /// Batcher statistics, every replica's together.
    pub fn stats(&self) -> ServiceStats {
        let mut st = self.replicas[0].batcher.stats();
        for r in &self.replicas[1..] {
            st.absorb(&r.batcher.stats());
        }
        st
    }

    /// Requests waiting, in every replica's queue.
    pub fn queue_len(&self) -> usize {
        self.replicas.iter().map(|r| r.batcher.queue_len()).sum()
    }

    /// Requests offered so far, refused ones included, to every replica.
    pub fn arrivals(&self) -> u64 {
        self.replicas.iter().map(|r| r.batcher.arrivals()).sum()
    }

    /// The batch size limit in force: the largest among its replicas'.
    pub fn max_batch_size(&self) -> usize {
        self.replicas
            .iter()
            .map(|r| r.batcher.max_batch_size())
            .max()
            .unwrap_or(1)
    }

    /// The largest batch every replica was started for.
    pub fn batch_limit(&self) -> usize {
        self.replicas
            .iter()
            .map(|r| r.batcher.batch_limit())
            .min()
            .unwrap_or(1)
    }

    /// Latency quantiles over the SLO window, every replica's requests together.
    pub(crate) fn window_stats(&self) -> crate::util::window::WindowStats {
        if let [one] = &self.replicas[..] {
            return one.batcher.window_stats();
        }
        let samples: Vec<(f32, f32)> = self
            .replicas
            .iter()
            .flat_map(|r| r.batcher.window_samples())
            .collect();
        crate::util::window::WindowStats::of(samples.iter().copied())
    }

    /// Each replica's view.
    pub fn replica_views(&self) -> Vec<ReplicaView> {
        let split = self.split();
        self.replicas
            .iter()
            .zip(split)
            .map(|(r, fraction)| r.view(fraction))
            .collect()
    }

    /// The share it holds: its replicas' lanes' shares together.
    pub fn share(&self) -> f64 {
        self.replicas.iter().map(|r| r.lane.share()).sum()
    }

    /// A snapshot for the API.
    pub fn view(&self) -> ServiceView {
        let config = self.config();
        ServiceView {
            name: self.name.clone(),
            state: ServiceState::Ready,
            error: None,
            layers: self.layers.clone(),
            slo_p99_ms: config.slo.p99_ms,
            timeout_ms: config.timeout_ms,
            max_batch_size: self.max_batch_size(),
            max_queue_delay_ms: config.batching.max_queue_delay_ms,
            max_queue: config.max_queue,
            queue_len: self.queue_len(),
            share: self.share(),
            success_count: self.stats().success_count,
            origin: Some(self.origin.clone()),
            created_at: Some(format_rfc3339(self.created_at)),
            precision: Some(self.primary().precision),
            replicas: if self.replicas.len() > 1 {
                self.replica_views()
            } else {
                Vec::new()
            },
        }
    }
}
