//! The service handle: starting the batcher thread, reading and tuning its settings and
//! statistics, and stopping it.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::batcher::Worker;
use super::request::Request;
use super::{BatchConfig, ServeError, ServedModel, ServiceStats};
use crate::device::Backend;
use crate::device::lane::Lane;
use crate::model::{Mlp, Workspace};
use crate::util::sync::lock;
use crate::util::window::{LatencyWindow, WindowStats};

/// What the service handle and its batcher thread share.
pub(super) struct Shared {
    pub(super) name: String,
    pub(super) inputs: usize,
    pub(super) outputs: usize,
    pub(super) max_queue: usize,
    pub(super) batch_limit: usize,
    pub(super) max_batch_size: AtomicUsize,
    pub(super) max_queue_delay_us: AtomicU64,
    pub(super) queued: AtomicUsize,
    pub(super) accepting: AtomicBool,
    pub(super) stats: Mutex<ServiceStats>,
    pub(super) window: Mutex<LatencyWindow>,
    pub(super) arrivals: AtomicU64,
    pub(super) batch_log: Mutex<Vec<(usize, f64)>>,
    pub(super) calibration: Mutex<Vec<(usize, f64)>>,
    pub(super) lane: Option<Arc<Lane>>,
}

/// A running inference service.
pub struct InferenceService {
    pub(super) shared: Arc<Shared>,
    pub(super) tx: Option<SyncSender<Request>>,
    pub(super) thread: Option<JoinHandle<()>>,
}

impl InferenceService {
    /// Starts a service named `name` serving `model` on `backend`, on a thread of its own.
    /// The workspace is sized for `config.max_batch_size`: the batch size can later be
    /// lowered and raised again with [`InferenceService::set_max_batch_size`], never above
    /// that.
    pub fn start<B: Backend + 'static>(
        name: &str,
        backend: B,
        model: ServedModel,
        config: BatchConfig,
    ) -> Result<Self, ServeError> {
        Self::start_in_lane(name, backend, model, config, None)
    }

    /// Like [`InferenceService::start`], with every batch run as a unit of work of `lane`:
    /// it waits for the lane's credit and is charged the batcher thread's CPU time.
    pub(crate) fn start_in_lane<B: Backend + 'static>(
        name: &str,
        backend: B,
        model: ServedModel,
        config: BatchConfig,
        lane: Option<Arc<Lane>>,
    ) -> Result<Self, ServeError> {
        let setup = |message: String| ServeError::Setup {
            service: name.to_string(),
            message,
        };
        if config.max_batch_size == 0 || config.max_queue == 0 {
            return Err(setup(
                "max batch size and max queue must be at least 1".into(),
            ));
        }
        let inputs = model.params.layers[0];
        if model.normalizer.mean.len() != inputs {
            return Err(setup(format!(
                "normalisation has {} features, the model takes {inputs}",
                model.normalizer.mean.len()
            )));
        }
        let batch_limit = config.max_batch_size;
        let mlp = Mlp::from_params(&backend, &model.params).map_err(|e| setup(e.to_string()))?;
        let ws = Workspace::new(&backend, &model.params.layers, batch_limit, false)
            .map_err(|e| setup(e.to_string()))?;
        let x_buf = backend
            .alloc(batch_limit * inputs)
            .map_err(|e| setup(e.to_string()))?;
        let shared = Arc::new(Shared {
            name: name.to_string(),
            inputs,
            outputs: mlp.outputs(),
            max_queue: config.max_queue,
            batch_limit,
            max_batch_size: AtomicUsize::new(config.max_batch_size),
            max_queue_delay_us: AtomicU64::new(config.max_queue_delay.as_micros() as u64),
            queued: AtomicUsize::new(0),
            accepting: AtomicBool::new(true),
            stats: Mutex::new(ServiceStats::new(batch_limit)),
            window: Mutex::new(LatencyWindow::new(config.window)),
            arrivals: AtomicU64::new(0),
            batch_log: Mutex::new(Vec::new()),
            calibration: Mutex::new(Vec::new()),
            lane,
        });
        let (tx, rx) = std::sync::mpsc::sync_channel(config.max_queue);
        let worker = Worker {
            shared: shared.clone(),
            backend,
            mlp,
            ws,
            x_buf,
            normalizer: model.normalizer,
            staging: Vec::with_capacity(batch_limit * inputs),
            out: vec![0.0; batch_limit * shared.outputs],
        };
        let thread = std::thread::Builder::new()
            .name(format!("setpoint-svc-{name}"))
            .spawn(move || worker.run(rx))
            .map_err(|e| setup(format!("cannot start batcher thread: {e}")))?;
        Ok(InferenceService {
            shared,
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// The service's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Input width.
    pub fn inputs(&self) -> usize {
        self.shared.inputs
    }

    /// Output width.
    pub fn outputs(&self) -> usize {
        self.shared.outputs
    }

    /// Requests waiting for a batch.
    pub fn queue_len(&self) -> usize {
        self.shared.queued.load(Ordering::Relaxed)
    }

    /// The current batch size limit.
    pub fn max_batch_size(&self) -> usize {
        self.shared.max_batch_size.load(Ordering::Relaxed)
    }

    /// Changes the batch size limit (clamped to 1..=the limit given at start); takes
    /// effect from the next batch.
    pub fn set_max_batch_size(&self, size: usize) {
        self.shared
            .max_batch_size
            .store(size.clamp(1, self.shared.batch_limit), Ordering::Relaxed);
    }

    /// The largest batch size the service was started for: the ceiling of
    /// [`InferenceService::set_max_batch_size`].
    pub fn batch_limit(&self) -> usize {
        self.shared.batch_limit
    }

    /// Changes the span of the latency window; takes effect from the next read.
    pub(crate) fn set_window(&self, span: Duration) {
        lock(&self.shared.window).set_span(span);
    }

    /// Changes the longest wait for a batch to fill; takes effect from the next batch.
    pub fn set_max_queue_delay(&self, delay: Duration) {
        self.shared
            .max_queue_delay_us
            .store(delay.as_micros() as u64, Ordering::Relaxed);
    }

    /// A copy of the statistics.
    pub fn stats(&self) -> ServiceStats {
        lock(&self.shared.stats).clone()
    }

    /// Latency quantiles over the sliding window ending now.
    pub(crate) fn window_stats(&self) -> WindowStats {
        lock(&self.shared.window).stats(Instant::now())
    }

    /// Whether it takes requests (it is not stopping).
    pub(crate) fn is_accepting(&self) -> bool {
        self.shared.accepting.load(Ordering::Acquire)
    }

    /// The (queue, compute) seconds of the requests in the sliding window ending now.
    pub(crate) fn window_samples(&self) -> Vec<(f32, f32)> {
        lock(&self.shared.window).samples(Instant::now())
    }

    /// Requests offered so far, refused ones included.
    pub fn arrivals(&self) -> u64 {
        self.shared.arrivals.load(Ordering::Relaxed)
    }

    /// The batches run since the last call: (rows, seconds of forward pass).
    pub(crate) fn take_batch_log(&self) -> Vec<(usize, f64)> {
        std::mem::take(&mut *lock(&self.shared.batch_log))
    }

    /// The forward-pass times the batcher measured at start for batch sizes 1, 2, 4, … up
    /// to the limit (three runs each, the fastest kept), taken once: what a batch of each size
    /// costs before traffic has shown it.
    pub(crate) fn take_calibration(&self) -> Vec<(usize, f64)> {
        std::mem::take(&mut *lock(&self.shared.calibration))
    }

    /// The lane the service runs in, if any.
    pub fn lane(&self) -> Option<&Arc<Lane>> {
        self.shared.lane.as_ref()
    }

    /// Stops accepting, answers every request already queued, and stops the thread.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.shared.accepting.store(false, Ordering::Release);
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for InferenceService {
    fn drop(&mut self) {
        self.stop();
    }
}
