//! The inference service core: a bounded request queue and a dynamic batcher.
//!
//! Callers submit one row at a time; a dedicated thread takes the first waiting request,
//! gathers more until the batch is full or the first request has waited `max_queue_delay`,
//! runs one forward pass for the whole batch on the backend and answers each request with
//! its own row. A full queue refuses at once ([`ServeError::Overloaded`]) instead of letting
//! latency grow without bound. Requests already queued when the service shuts down are still
//! answered.
//!
//! A request may carry a deadline. One whose deadline passes while it waits is taken out of
//! the queue before it is batched, so no compute is spent on it, and answered with
//! [`ServeError::TimedOut`]; an async waiter ([`Pending::recv`]) stops waiting at the deadline
//! itself, so a caller never gets a late answer even while a long batch is running.

pub mod model_io;
pub use model_io::{INPUT_NAME, MODEL_VERSION, ModelIo, OUTPUT_NAME};

use crate::util::sync::lock;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::data::Normalizer;
use crate::device::lane::Lane;
use crate::device::{Backend, DeviceError};
use crate::model::{Mlp, MlpParams, ModelError, Workspace};
use crate::util::histogram::{BATCH_BOUNDS, Histogram, LATENCY_BOUNDS_S};
use crate::util::window::{LatencyWindow, WindowStats};

/// Why a request was not answered with a prediction.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ServeError {
    /// The queue is full.
    #[error("service {service}: queue is full ({capacity} requests waiting); retry later")]
    Overloaded {
        /// The service.
        service: String,
        /// Its queue bound.
        capacity: usize,
    },
    /// A request has more rows than the queue ever holds: it could never be queued whole.
    #[error(
        "service {service}: the request has {rows} rows, but the service queues at most \
         {max_queue} (max_queue); send it in parts of at most {max_queue} rows"
    )]
    TooManyRows {
        /// The service.
        service: String,
        /// Rows in the request.
        rows: usize,
        /// The queue bound.
        max_queue: usize,
    },
    /// The input row has the wrong width.
    #[error("service {service}: input has {got} values, the model takes {expected}")]
    InputShape {
        /// The service.
        service: String,
        /// Model input width.
        expected: usize,
        /// Values given.
        got: usize,
    },
    /// The input holds NaN or an infinity.
    #[error("service {service}: input value {index} is {value}; inputs must be finite numbers")]
    NotFinite {
        /// The service.
        service: String,
        /// Position in the row.
        index: usize,
        /// The value.
        value: f32,
    },
    /// The service is stopping or stopped.
    #[error("service {service}: shutting down")]
    ShuttingDown {
        /// The service.
        service: String,
    },
    /// The forward pass failed.
    #[error("service {service}: inference failed: {message}")]
    Compute {
        /// The service.
        service: String,
        /// The device or model error.
        message: String,
    },
    /// The device the service runs on has failed: nothing runs on it until the daemon
    /// restarts.
    #[error("service {service}: {message}")]
    DeviceFailed {
        /// The service.
        service: String,
        /// The device's error, naming the device and what failed it.
        message: String,
    },
    /// The request's deadline passed before it was answered.
    #[error(
        "service {service}: no answer within the request's timeout of {timeout_us} us; \
         requests still queued at their timeout are dropped unrun"
    )]
    TimedOut {
        /// The service.
        service: String,
        /// The timeout the request ran under, microseconds.
        timeout_us: u64,
    },
    /// The service could not be created.
    #[error("service {service}: {message}")]
    Setup {
        /// The service.
        service: String,
        /// Why.
        message: String,
    },
}

/// Batching limits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchConfig {
    /// Largest batch one forward pass takes.
    pub max_batch_size: usize,
    /// Longest the first request of a batch waits for others.
    pub max_queue_delay: Duration,
    /// Requests that may wait; more are refused.
    pub max_queue: usize,
    /// Span of the sliding window latency quantiles are taken over.
    pub window: Duration,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_batch_size: 32,
            max_queue_delay: Duration::ZERO,
            max_queue: 1024,
            window: Duration::from_secs(1),
        }
    }
}

/// Most batches kept for the controller between two of its reads.
const BATCH_LOG_CAP: usize = 4096;

/// One answered request.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    /// Class probabilities.
    pub output: Vec<f32>,
    /// Time from submission to the start of its batch's forward pass.
    pub queue_us: u64,
    /// Time of its batch's forward pass, input staging and output copy included.
    pub compute_us: u64,
    /// Rows in its batch.
    pub batch_size: usize,
}

/// Durations of one batch's phases.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct PhaseNs {
    /// Gathering, normalising and copying inputs to the device.
    pub input_ns: u64,
    /// The forward pass.
    pub infer_ns: u64,
    /// Copying outputs back and splitting them per request.
    pub output_ns: u64,
}

/// Statistics of the batches of one size (Triton's `batch_stats`).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct BatchSizeStats {
    /// Batches of this size run.
    pub count: u64,
    /// Summed phase durations of those batches.
    pub ns: PhaseNs,
}

/// Cumulative statistics of a service.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ServiceStats {
    /// Requests answered with a prediction.
    pub success_count: u64,
    /// Requests that failed in the forward pass.
    pub failure_count: u64,
    /// Requests refused because the queue was full.
    pub rejected_count: u64,
    /// Requests taken out of the queue unrun because their deadline had passed.
    pub expired_count: u64,
    /// Forward passes run.
    pub batch_count: u64,
    /// Sum over successful requests of their queue time, in ns.
    pub queue_ns: u64,
    /// Sum over successful requests of their batch's phase durations (each request counts
    /// its whole batch's, as Triton reports them).
    pub compute: PhaseNs,
    /// Per batch size (index = size; index 0 unused).
    pub batch_sizes: Vec<BatchSizeStats>,
    /// Queue time of successful requests, seconds.
    pub queue_hist: Histogram,
    /// Compute time (all phases) of successful requests, seconds.
    pub compute_hist: Histogram,
    /// Sizes of the batches run.
    pub batch_hist: Histogram,
    /// When the last batch finished, in ms since the Unix epoch (0 = never).
    pub last_inference_ms: u64,
}

impl ServiceStats {
    fn new(batch_limit: usize) -> Self {
        ServiceStats {
            success_count: 0,
            failure_count: 0,
            rejected_count: 0,
            expired_count: 0,
            batch_count: 0,
            queue_ns: 0,
            compute: PhaseNs::default(),
            batch_sizes: vec![BatchSizeStats::default(); batch_limit + 1],
            queue_hist: Histogram::new(LATENCY_BOUNDS_S),
            compute_hist: Histogram::new(LATENCY_BOUNDS_S),
            batch_hist: Histogram::new(BATCH_BOUNDS),
            last_inference_ms: 0,
        }
    }

    /// Summed compute time of successful requests, all phases, in ns.
    pub fn compute_ns(&self) -> u64 {
        self.compute.input_ns + self.compute.infer_ns + self.compute.output_ns
    }
}

struct Request {
    input: Vec<f32>,
    enqueued: Instant,
    deadline: Option<Instant>,
    reply: oneshot::Sender<Result<Response, ServeError>>,
}

struct Shared {
    name: String,
    inputs: usize,
    outputs: usize,
    max_queue: usize,
    batch_limit: usize,
    max_batch_size: AtomicUsize,
    max_queue_delay_us: AtomicU64,
    queued: AtomicUsize,
    accepting: AtomicBool,
    stats: Mutex<ServiceStats>,
    window: Mutex<LatencyWindow>,
    arrivals: AtomicU64,
    batch_log: Mutex<Vec<(usize, f64)>>,
    calibration: Mutex<Vec<(usize, f64)>>,
    lane: Option<Arc<Lane>>,
}

/// A model to serve: parameters plus the input standardisation they were trained with.
#[derive(Debug, Clone, PartialEq)]
pub struct ServedModel {
    /// Parameters.
    pub params: MlpParams,
    /// Standardisation applied to every input row.
    pub normalizer: Normalizer,
}

/// A running inference service.
pub struct InferenceService {
    shared: Arc<Shared>,
    tx: Option<SyncSender<Request>>,
    thread: Option<JoinHandle<()>>,
}

/// An answer still to come.
pub struct Pending {
    rx: oneshot::Receiver<Result<Response, ServeError>>,
    service: String,
    /// When to stop waiting, and the timeout it came from.
    deadline: Option<(Instant, Duration)>,
}

impl Pending {
    /// Waits on the calling thread. Must not be called from inside an async runtime; use
    /// [`Pending::recv`] there. A request with a deadline is answered
    /// [`ServeError::TimedOut`] when the batcher reaches it after its deadline; a batch
    /// running meanwhile is waited for.
    pub fn wait(self) -> Result<Response, ServeError> {
        let service = self.service;
        self.rx
            .blocking_recv()
            .unwrap_or(Err(ServeError::ShuttingDown { service }))
    }

    /// Waits asynchronously, at most until the request's deadline.
    pub async fn recv(self) -> Result<Response, ServeError> {
        let service = self.service;
        match self.deadline {
            None => self
                .rx
                .await
                .unwrap_or(Err(ServeError::ShuttingDown { service })),
            Some((at, timeout)) => {
                match tokio::time::timeout_at(tokio::time::Instant::from_std(at), self.rx).await {
                    Ok(answer) => answer.unwrap_or(Err(ServeError::ShuttingDown { service })),
                    Err(_) => Err(ServeError::TimedOut {
                        service,
                        timeout_us: timeout.as_micros() as u64,
                    }),
                }
            }
        }
    }
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

    /// Queues one input row. Fails at once when the row is malformed, the queue is full or
    /// the service is stopping.
    pub fn submit(&self, input: Vec<f32>) -> Result<Pending, ServeError> {
        self.submit_within(input, None)
    }

    /// Like [`InferenceService::submit`], for a request that must be answered within
    /// `timeout` of now: past it the request is dropped from the queue unrun and answered
    /// [`ServeError::TimedOut`].
    pub fn submit_with_timeout(
        &self,
        input: Vec<f32>,
        timeout: Duration,
    ) -> Result<Pending, ServeError> {
        self.submit_within(input, Some(timeout))
    }

    fn submit_within(
        &self,
        input: Vec<f32>,
        timeout: Option<Duration>,
    ) -> Result<Pending, ServeError> {
        let mut one = self.submit_rows(vec![input], timeout)?;
        Ok(one.remove(0))
    }

    /// Queues every row of one request, or none: a request with more rows than the queue
    /// holds is refused at once ([`ServeError::TooManyRows`]), and one that does not fit in
    /// the room left now is refused ([`ServeError::Overloaded`]) before any row is queued, so
    /// no row is computed for an answer that cannot be given. `timeout` as for
    /// [`InferenceService::submit_with_timeout`].
    pub(crate) fn submit_rows(
        &self,
        rows: Vec<Vec<f32>>,
        timeout: Option<Duration>,
    ) -> Result<Vec<Pending>, ServeError> {
        let service = || self.shared.name.clone();
        let max_queue = self.shared.max_queue;
        if rows.len() > max_queue {
            return Err(ServeError::TooManyRows {
                service: service(),
                rows: rows.len(),
                max_queue,
            });
        }
        for input in &rows {
            self.check_row(input)?;
        }
        let tx = match &self.tx {
            Some(tx) if self.shared.accepting.load(Ordering::Acquire) => tx,
            _ => return Err(ServeError::ShuttingDown { service: service() }),
        };
        let n = rows.len();
        self.shared.arrivals.fetch_add(n as u64, Ordering::Relaxed);
        // Room for the whole request, taken at once.
        let reserved = self
            .shared
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |q| {
                (q + n <= max_queue).then_some(q + n)
            });
        if reserved.is_err() {
            return Err(self.overloaded());
        }
        let enqueued = Instant::now();
        let deadline = timeout.map(|t| (enqueued + t, t));
        let mut pending = Vec::with_capacity(n);
        for (i, input) in rows.into_iter().enumerate() {
            let (reply, rx) = oneshot::channel();
            let req = Request {
                input,
                enqueued,
                deadline: deadline.map(|d| d.0),
                reply,
            };
            if let Err(e) = tx.try_send(req) {
                // The rows not sent give their room back; those sent are answered and dropped.
                self.shared.queued.fetch_sub(n - i, Ordering::Relaxed);
                return Err(match e {
                    TrySendError::Full(_) => self.overloaded(),
                    TrySendError::Disconnected(_) => {
                        ServeError::ShuttingDown { service: service() }
                    }
                });
            }
            pending.push(Pending {
                rx,
                service: service(),
                deadline,
            });
        }
        Ok(pending)
    }

    /// Refuses at once, as [`InferenceService::submit_rows`] would, when the queue has no
    /// room for `rows` more rows now: a caller can shed a request this way before it spends
    /// work on decoding it. Room found here is not reserved.
    pub(crate) fn check_room(&self, rows: usize) -> Result<(), ServeError> {
        if !self.shared.accepting.load(Ordering::Acquire) {
            return Err(ServeError::ShuttingDown {
                service: self.shared.name.clone(),
            });
        }
        let queued = self.shared.queued.load(Ordering::Acquire);
        if queued + rows > self.shared.max_queue {
            return Err(self.overloaded());
        }
        Ok(())
    }

    /// Counts `rows` of a request whose timeout passed before it could be queued: dropped
    /// unrun, as the batcher drops rows that expire in the queue.
    pub(crate) fn count_expired_unqueued(&self, rows: usize) {
        lock(&self.shared.stats).expired_count += rows as u64;
    }

    /// The checks a row must pass before it is queued.
    fn check_row(&self, input: &[f32]) -> Result<(), ServeError> {
        let service = || self.shared.name.clone();
        if input.len() != self.shared.inputs {
            return Err(ServeError::InputShape {
                service: service(),
                expected: self.shared.inputs,
                got: input.len(),
            });
        }
        if let Some((index, &value)) = input.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(ServeError::NotFinite {
                service: service(),
                index,
                value,
            });
        }
        Ok(())
    }

    /// A refusal for a full queue, counted in the statistics (one per refused request).
    fn overloaded(&self) -> ServeError {
        if let Ok(mut s) = self.shared.stats.lock() {
            s.rejected_count += 1;
        }
        ServeError::Overloaded {
            service: self.shared.name.clone(),
            capacity: self.shared.max_queue,
        }
    }

    /// Submits one row and waits for its answer on the calling thread.
    pub fn infer_blocking(&self, input: Vec<f32>) -> Result<Response, ServeError> {
        self.submit(input)?.wait()
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

/// What a request learns of a failed forward pass: a device that has failed is told apart
/// from an error of this one batch.
fn compute_error(service: &str, e: &ModelError) -> ServeError {
    match e {
        ModelError::Device(d @ DeviceError::Failed { .. }) => ServeError::DeviceFailed {
            service: service.to_string(),
            message: d.to_string(),
        },
        other => ServeError::Compute {
            service: service.to_string(),
            message: other.to_string(),
        },
    }
}

struct Worker<B: Backend> {
    shared: Arc<Shared>,
    backend: B,
    mlp: Mlp<B>,
    ws: Workspace<B>,
    x_buf: B::Buf,
    normalizer: Normalizer,
    staging: Vec<f32>,
    out: Vec<f32>,
}

impl<B: Backend> Worker<B> {
    /// Times the forward pass at batch sizes 1, 2, 4, … up to the limit, on zero inputs.
    fn calibrate(&mut self) {
        let limit = self.shared.batch_limit;
        let mut sizes: Vec<usize> = std::iter::successors(Some(1usize), |b| Some(b * 2))
            .take_while(|&b| b < limit)
            .collect();
        sizes.push(limit);
        let zeros = vec![0.0f32; limit * self.shared.inputs];
        let mut out = Vec::new();
        for rows in sizes {
            let mut best = f64::INFINITY;
            for _ in 0..3 {
                let t0 = Instant::now();
                let ok = self
                    .backend
                    .write(&mut self.x_buf, &zeros[..rows * self.shared.inputs])
                    .is_ok()
                    && self
                        .mlp
                        .predict(&self.backend, &mut self.ws, &self.x_buf, rows)
                        .is_ok()
                    && self.backend.synchronize().is_ok();
                if !ok {
                    return;
                }
                best = best.min(t0.elapsed().as_secs_f64());
            }
            out.push((rows, best));
        }
        *lock(&self.shared.calibration) = out;
    }

    fn run(mut self, rx: Receiver<Request>) {
        self.calibrate();
        let mut batch: Vec<Request> = Vec::with_capacity(self.shared.batch_limit);
        while let Ok(first) = rx.recv() {
            let Some(first) = self.live(first) else {
                continue;
            };
            let delay =
                Duration::from_micros(self.shared.max_queue_delay_us.load(Ordering::Relaxed));
            let max = self.shared.max_batch_size.load(Ordering::Relaxed);
            let deadline = first.enqueued + delay;
            batch.push(first);
            while batch.len() < max {
                match rx.try_recv() {
                    Ok(r) => {
                        batch.extend(self.live(r));
                        continue;
                    }
                    Err(TryRecvError::Disconnected) => break,
                    Err(TryRecvError::Empty) => {}
                }
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                match rx.recv_timeout(deadline - now) {
                    Ok(r) => batch.extend(self.live(r)),
                    Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
                }
            }
            // Waiting for the batch to fill may have run some out of time.
            let now = Instant::now();
            let mut i = 0;
            while i < batch.len() {
                if batch[i].deadline.is_some_and(|d| d <= now) {
                    let r = batch.remove(i);
                    self.expire(r);
                } else {
                    i += 1;
                }
            }
            if batch.is_empty() {
                continue;
            }
            self.shared.queued.fetch_sub(batch.len(), Ordering::Relaxed);
            self.run_batch(&mut batch);
        }
    }

    /// Passes a request on, or answers it [`ServeError::TimedOut`] when its deadline has
    /// passed: it leaves the queue without being run.
    fn live(&self, r: Request) -> Option<Request> {
        let Some(deadline) = r.deadline else {
            return Some(r);
        };
        if deadline > Instant::now() {
            return Some(r);
        }
        self.expire(r);
        None
    }

    /// Takes a request whose deadline has passed out of the queue unrun and answers it.
    fn expire(&self, r: Request) {
        self.shared.queued.fetch_sub(1, Ordering::Relaxed);
        lock(&self.shared.stats).expired_count += 1;
        let timeout_us = r.deadline.map_or(0, |d| {
            d.saturating_duration_since(r.enqueued).as_micros() as u64
        });
        // A waiter that already stopped at its deadline is not an error.
        let _ = r.reply.send(Err(ServeError::TimedOut {
            service: self.shared.name.clone(),
            timeout_us,
        }));
    }

    fn run_batch(&mut self, batch: &mut Vec<Request>) {
        // A lane's share sets how many workers a batch may use (large batches parallelise).
        if let Some(lane) = &self.shared.lane {
            self.backend.set_workers(lane.workers());
        }
        let start = Instant::now();
        let cpu0 = self.backend.lane_time();
        let rows = batch.len();
        let result = self.forward(batch);
        let end = Instant::now();
        let compute_us = (end - start).as_micros() as u64;
        let compute_s = (end - start).as_secs_f64();
        if let Some(lane) = &self.shared.lane {
            let cpu = self.backend.lane_time();
            lane.charge(end - start, cpu.saturating_sub(cpu0));
        }
        if result.is_ok() {
            let mut log = lock(&self.shared.batch_log);
            if log.len() < BATCH_LOG_CAP {
                log.push((rows, compute_s));
            }
            drop(log);
            let mut w = lock(&self.shared.window);
            for r in batch.iter() {
                let q = start.saturating_duration_since(r.enqueued).as_secs_f64();
                w.push(end, q, compute_s);
            }
        }
        // Statistics first, so a caller who has its answer also sees it counted.
        {
            let mut stats = match self.shared.stats.lock() {
                Ok(s) => s,
                Err(poisoned) => poisoned.into_inner(),
            };
            stats.batch_count += 1;
            stats.batch_hist.observe(rows as f64);
            stats.last_inference_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            match &result {
                Ok(ph) => {
                    if let Some(b) = stats.batch_sizes.get_mut(rows) {
                        b.count += 1;
                        b.ns.input_ns += ph.input_ns;
                        b.ns.infer_ns += ph.infer_ns;
                        b.ns.output_ns += ph.output_ns;
                    }
                    let n = rows as u64;
                    stats.success_count += n;
                    stats.compute.input_ns += ph.input_ns * n;
                    stats.compute.infer_ns += ph.infer_ns * n;
                    stats.compute.output_ns += ph.output_ns * n;
                    stats.compute_hist.observe_n(compute_s, n);
                    for r in batch.iter() {
                        let q = start.saturating_duration_since(r.enqueued);
                        stats.queue_ns += q.as_nanos() as u64;
                        stats.queue_hist.observe(q.as_secs_f64());
                    }
                }
                Err(_) => stats.failure_count += rows as u64,
            }
        }
        let outputs = self.shared.outputs;
        for (r, req) in batch.drain(..).enumerate() {
            let answer = match &result {
                Ok(_) => Ok(Response {
                    output: self.out[r * outputs..(r + 1) * outputs].to_vec(),
                    queue_us: start.saturating_duration_since(req.enqueued).as_micros() as u64,
                    compute_us,
                    batch_size: rows,
                }),
                Err(e) => Err(compute_error(&self.shared.name, e)),
            };
            // A caller that stopped waiting is not an error.
            let _ = req.reply.send(answer);
        }
    }

    fn forward(&mut self, batch: &[Request]) -> Result<PhaseNs, ModelError> {
        let t0 = Instant::now();
        let rows = batch.len();
        self.staging.clear();
        for req in batch {
            self.staging.extend_from_slice(&req.input);
        }
        self.normalizer.apply(&mut self.staging);
        self.backend.write(&mut self.x_buf, &self.staging)?;
        let t1 = Instant::now();
        self.mlp
            .predict(&self.backend, &mut self.ws, &self.x_buf, rows)?;
        self.backend.synchronize()?;
        let t2 = Instant::now();
        let n = rows * self.shared.outputs;
        self.backend.read(self.ws.output(), &mut self.out[..n])?;
        let t3 = Instant::now();
        Ok(PhaseNs {
            input_ns: (t1 - t0).as_nanos() as u64,
            infer_ns: (t2 - t1).as_nanos() as u64,
            output_ns: (t3 - t2).as_nanos() as u64,
        })
    }
}
