//! Inference services in the daemon: a model, its SLO and batching limits, and the running
//! batcher that serves it.

use crate::util::sync;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::config::{ServiceConfig, format_rfc3339};
use crate::data::{self, LoadOptions, Normalizer};
use crate::device::lane::Lane;
use crate::device::{Backend, CpuBackend, Precision};
use crate::model::MlpParams;
use crate::model::checkpoint::Checkpoint;
use crate::model::footprint::{Purpose, check_fit};
use crate::serve::{BatchConfig, InferenceService, ModelIo, Protocol, ServedModel, ServiceStats};
use crate::train::{TrainEvent, TrainSpec, Trainer};
use crate::util::histogram::{Histogram, LATENCY_BOUNDS_S};
use std::sync::Arc;

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
    /// The batcher.
    pub batcher: InferenceService,
    /// The lane it runs in.
    pub lane: Arc<Lane>,
    /// End-to-end latency of successful inference requests (arrival to answer), seconds,
    /// one histogram per protocol ([`Protocol::index`]).
    request_hist: [Mutex<Histogram>; 2],
    /// Requests refused before reaching the batcher (malformed input).
    invalid: Mutex<u64>,
    /// Requests answered with a timeout.
    timeouts: AtomicU64,
    /// The number format of its matrix products.
    precision: Precision,
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
    /// Starts serving `model` under `cfg`.
    pub fn start(
        cfg: ServiceConfig,
        model: ServedModel,
        origin: ServiceOrigin,
        lane: Arc<Lane>,
        placement: &super::Placement,
    ) -> Result<Self, ServiceBuildError> {
        let layers = model.params.layers.clone();
        let io = ModelIo::for_layers(&layers);
        let batch = BatchConfig {
            max_batch_size: cfg.batching.max_batch_size,
            max_queue_delay: Duration::from_secs_f64(cfg.batching.max_queue_delay_ms / 1000.0),
            max_queue: cfg.max_queue,
            window: Duration::from_millis(cfg.slo.window_ms),
        };
        let precision;
        let batcher = match placement {
            // One worker: a batch split over several threads stalls whenever one of them is
            // descheduled, and latency lanes share their cores with everything else; measured
            // in the co-location scenario, two workers made the tail worse than one.
            super::Placement::Cpu(health) => {
                let backend = CpuBackend::with_health(health.clone(), 1, false)
                    .map_err(|e| ServiceBuildError::Start(format!("service {}: {e}", cfg.name)))?;
                backend.set_precision(
                    cfg.precision
                        .unwrap_or(backend.default_precision(crate::device::Work::Serving)),
                );
                precision = backend.precision();
                InferenceService::start_in_lane(
                    &cfg.name,
                    backend,
                    model,
                    batch,
                    Some(lane.clone()),
                )
            }
            // On a GPU a service is a stream at the device's greatest priority, so its
            // kernels are scheduled ahead of training's queued blocks.
            super::Placement::Cuda(dev) => {
                let backend = dev
                    .lane_backend(crate::device::cuda::StreamPriority::Highest)
                    .map_err(|e| ServiceBuildError::Start(format!("service {}: {e}", cfg.name)))?;
                backend.set_precision(
                    cfg.precision
                        .unwrap_or(backend.default_precision(crate::device::Work::Serving)),
                );
                precision = backend.precision();
                InferenceService::start_in_lane(
                    &cfg.name,
                    backend,
                    model,
                    batch,
                    Some(lane.clone()),
                )
            }
        }
        .map_err(|e| ServiceBuildError::Start(e.to_string()))?;
        Ok(LoadedService {
            name: cfg.name.clone(),
            config: std::sync::RwLock::new(cfg),
            layers,
            io,
            origin,
            created_at: SystemTime::now(),
            batcher,
            lane,
            request_hist: Protocol::ALL.map(|_| Mutex::new(Histogram::new(LATENCY_BOUNDS_S))),
            invalid: Mutex::new(0),
            timeouts: AtomicU64::new(0),
            precision,
        })
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
        same == cur && new.batching.max_batch_size <= self.batcher.batch_limit()
    }

    /// Applies `new` to the running service (see [`LoadedService::can_apply_live`]): the
    /// controller reads the SLO and batch limit from the next period, the batcher its queue
    /// delay and window from the next batch, the next request its timeout. Requests in
    /// flight are not disturbed.
    pub(crate) fn apply_live(&self, new: &ServiceConfig) {
        let mut cfg = sync::write(&self.config);
        if new.batching.max_batch_size < self.batcher.max_batch_size() {
            self.batcher.set_max_batch_size(new.batching.max_batch_size);
        }
        self.batcher.set_max_queue_delay(Duration::from_secs_f64(
            new.batching.max_queue_delay_ms / 1000.0,
        ));
        self.batcher
            .set_window(Duration::from_millis(new.slo.window_ms));
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

    /// Batcher statistics.
    pub fn stats(&self) -> ServiceStats {
        self.batcher.stats()
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
            max_batch_size: self.batcher.max_batch_size(),
            max_queue_delay_ms: config.batching.max_queue_delay_ms,
            max_queue: config.max_queue,
            queue_len: self.batcher.queue_len(),
            share: self.lane.share(),
            success_count: self.batcher.stats().success_count,
            origin: Some(self.origin.clone()),
            created_at: Some(format_rfc3339(self.created_at)),
            precision: Some(self.precision),
        }
    }
}
