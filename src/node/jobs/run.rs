//! A job's thread: it loads its data (when admission has not), resumes from its checkpoint,
//! takes steps at its lane's share, checkpoints, and ends the way its outcome is recorded.

use crate::util::sync::lock;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use super::{Job, JobEventKind, JobState};
use crate::config::{JobConfig, OptimizerKind};
use crate::data::{self, Dataset, LoadOptions};
use crate::device::cuda::StreamPriority;
use crate::device::{Backend, CpuBackend, SgdParams, Width};
use crate::model::Optimizer;
use crate::model::checkpoint::{Checkpoint, CheckpointError, EpochRecord};
use crate::train::{TrainEvent, TrainSpec, Trainer, default_adam};

/// Why a job's thread failed the job; the message is the job's `error`.
#[derive(Debug, thiserror::Error)]
pub(crate) enum JobError {
    /// The latest checkpoint is damaged and there is no previous one.
    #[error("cannot resume: {damage}")]
    Resume {
        /// What is wrong with the latest.
        damage: String,
    },
    /// Both checkpoints are damaged.
    #[error("cannot resume: {damage}; the previous checkpoint is no better: {previous}")]
    ResumeNeither {
        /// What is wrong with the latest.
        damage: String,
        /// What is wrong with the previous one.
        previous: String,
    },
    /// A checkpoint could not be written.
    #[error("cannot write checkpoint: {0}")]
    Checkpoint(String),
    /// Checkpoint writes have failed for longer than the job tolerates.
    #[error(transparent)]
    Stalled(#[from] crate::node::checkpointing::CheckpointStalled),
    /// A step, or a change of target or epochs, failed.
    #[error(transparent)]
    Train(#[from] crate::train::TrainError),
    /// The job's device has failed.
    #[error(transparent)]
    Device(crate::device::DeviceError),
}

impl Job {
    /// The checkpoint to resume from: the latest, or the previous one when the latest is
    /// damaged (which is logged and noted in the job's view). `None`: start afresh.
    pub(super) fn checkpoint_to_resume(&self) -> Result<Option<(Checkpoint, PathBuf)>, JobError> {
        let latest = self.checkpoint_path();
        let previous = self.previous_checkpoint_path();
        let damage = match Checkpoint::load(&latest) {
            Ok(c) => return Ok(Some((c, latest))),
            Err(CheckpointError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound && !previous.exists() =>
            {
                self.note_lost_checkpoints();
                return Ok(None);
            }
            Err(e) => e,
        };
        if !previous.exists() {
            return Err(JobError::Resume {
                damage: damage.to_string(),
            });
        }
        let c = Checkpoint::load(&previous).map_err(|e| JobError::ResumeNeither {
            damage: damage.to_string(),
            previous: e.to_string(),
        })?;
        let step = c.training.as_ref().map_or(0, |t| t.meta.step);
        let note = format!(
            "the latest checkpoint could not be used ({damage}); resumed from the previous one, \
             at step {step}"
        );
        tracing::warn!(job = %self.name, "{note}");
        lock(&self.progress).restore_note = Some(note);
        Ok(Some((c, previous)))
    }

    /// When checkpoints were written but none is left, says so in the log and the job's
    /// view: training starts again from step 0.
    pub(super) fn note_lost_checkpoints(&self) {
        let Ok(text) = std::fs::read_to_string(self.checkpointed_path()) else {
            return;
        };
        let step = text.trim();
        let note = format!(
            "both checkpoints are missing (the last was written at step {step}); training \
             starts again from step 0"
        );
        tracing::warn!(job = %self.name, "{note}");
        lock(&self.progress).restore_note = Some(note);
    }

    /// Starts the job's thread; `data` is the data set when admission already loaded it.
    pub(crate) fn start(self: &Arc<Self>, data: Option<Dataset>) -> std::io::Result<()> {
        let job = self.clone();
        let handle = std::thread::Builder::new()
            .name(format!("setpoint-job-{}", self.name))
            .spawn(move || job.run(data))?;
        *lock(&self.thread) = Some(handle);
        Ok(())
    }

    pub(super) fn fail(&self, message: String) {
        // On a failed device the device's error is the cause, whatever the step that met it
        // reported (a checkpoint that could not be read back, say).
        let message = match self.placement.health().failure() {
            Some(device) if message != device.to_string() => {
                tracing::warn!(job = %self.name, "on a failed device: {message}");
                device.to_string()
            }
            _ => message,
        };
        tracing::error!(job = %self.name, "{message}");
        {
            let mut p = lock(&self.progress);
            p.error = Some(message);
            p.finished_at = Some(SystemTime::now());
        }
        self.finish(JobState::Failed);
    }

    /// Ends the job as cancelled before it trained (a shutdown's interruption records no
    /// outcome).
    pub(super) fn end_cancelled(&self) {
        lock(&self.progress).finished_at = Some(SystemTime::now());
        self.finish(JobState::Cancelled);
    }

    pub(super) fn run(self: Arc<Self>, data: Option<Dataset>) {
        if self.cancel.load(Ordering::Acquire) {
            return self.end_cancelled();
        }
        self.set_state(JobState::Loading);
        self.log.push(JobEventKind::Loading);
        // Training, and loading its data, run at background priority, so inference batches
        // preempt them at once (the CPU's analogue of a low-priority stream).
        let background = self.lane.is_background();
        if background {
            crate::util::priority::lower_current_thread();
        }
        let data = match data {
            Some(d) => d,
            None => {
                let opts = LoadOptions::default();
                match data::load_with_stop(&self.config.data, &opts, &self.load_stop) {
                    Ok(d) => d,
                    Err(_) if self.cancel.load(Ordering::Acquire) => return self.end_cancelled(),
                    Err(e) => return self.fail(format!("cannot load data: {e}")),
                }
            }
        };
        match &self.placement {
            crate::node::Placement::Cpu(part) => {
                match CpuBackend::with_health(part.health.clone(), self.lane.cores(), background) {
                    Ok(b) => self.train(b, &data),
                    Err(e) => self.fail(e.to_string()),
                }
            }
            // Training is a stream at the device's least priority: inference's kernels are
            // scheduled ahead of its queued blocks.
            crate::node::Placement::Cuda(dev) => match dev.lane_backend(StreamPriority::Lowest) {
                Ok(b) => self.train(b, &data),
                Err(e) => self.fail(e.to_string()),
            },
        }
    }

    /// Trains on `backend` from the job's checkpoint, if any, until it stops.
    pub(super) fn train<B: Backend>(&self, backend: B, data: &Dataset) {
        let spec = self.train_spec();
        let trainer = match self.checkpoint_to_resume() {
            Ok(Some((ckpt, path))) => Trainer::resume(backend, spec, data, ckpt, &path),
            Ok(None) => Trainer::new(backend, spec, data),
            Err(e) => return self.fail(e.to_string()),
        };
        let mut trainer = match trainer {
            Ok(t) => t,
            Err(e) => return self.fail(e.to_string()),
        };
        self.log.push(JobEventKind::Running {
            epochs_done: trainer.epochs_done(),
            steps: trainer.steps(),
            batches_per_epoch: trainer.batches_per_epoch(),
            precision: Some(trainer.backend().precision()),
        });
        {
            let mut p = lock(&self.progress);
            p.batches_per_epoch = trainer.batches_per_epoch();
            p.steps = trainer.steps();
            p.epochs_done = trainer.epochs_done();
            p.history = trainer.history().to_vec();
            p.started_at = Some(SystemTime::now());
            p.workers = trainer.backend().workers();
            p.train_rows = trainer.train_rows();
            p.precision = Some(trainer.backend().precision());
        }
        self.set_state(JobState::Running);
        if let Err(e) = self.step_loop(&mut trainer) {
            self.fail(e.to_string());
        }
    }

    pub(crate) fn train_spec(&self) -> TrainSpec {
        train_spec(
            &self.config,
            *lock(&self.epochs),
            *lock(&self.target),
            Some(self.checkpoint_path()),
        )
    }

    pub(super) fn step_loop<B: Backend>(&self, trainer: &mut Trainer<B>) -> Result<(), JobError> {
        let every = self.config.checkpoint_every_steps;
        let mut window_start = (Instant::now(), trainer.steps());
        loop {
            self.apply_pending(trainer)?;
            // Between steps, whatever the backend checks: the job stops at the first step
            // boundary after its device fails, even where a lane's operations do not check.
            if let Some(e) = self.placement.health().failure() {
                return Err(JobError::Device(e));
            }
            if self.end_if_done(trainer)? {
                return Ok(());
            }
            let epoch = self.one_step(trainer)?;
            let steps = trainer.steps();
            if every > 0 && steps.is_multiple_of(every) {
                self.save_periodic(trainer)?;
            }
            self.publish_progress(trainer, epoch, &mut window_start);
        }
    }

    /// Applies the target and epoch limit a user changed since the last step.
    fn apply_pending<B: Backend>(&self, trainer: &mut Trainer<B>) -> Result<(), JobError> {
        let pending = std::mem::take(&mut *lock(&self.pending));
        if let Some(target) = pending.target {
            trainer.set_target_accuracy(target)?;
        }
        if let Some(epochs) = pending.epochs {
            trainer.set_epochs(epochs)?;
        }
        Ok(())
    }

    /// Ends the job, checkpointed, when it was cancelled or has finished; true if it ended.
    fn end_if_done<B: Backend>(&self, trainer: &mut Trainer<B>) -> Result<bool, JobError> {
        if self.cancel.load(Ordering::Acquire) {
            self.save_final(trainer)?;
            lock(&self.progress).finished_at = Some(SystemTime::now());
            self.finish(JobState::Cancelled);
            return Ok(true);
        }
        let Some(reason) = trainer.finished() else {
            return Ok(false);
        };
        self.save_final(trainer)?;
        let mut p = lock(&self.progress);
        p.stop_reason = Some(reason);
        p.finished_at = Some(SystemTime::now());
        drop(p);
        self.finish(JobState::Completed);
        tracing::info!(job = %self.name, reason = reason.as_str(), "job completed");
        Ok(true)
    }

    /// One step, as one unit of work of the lane: it waits for the lane's credit, runs on
    /// the workers (threads, or CTAs) the share allows, and is charged what it used. On a GPU
    /// the step is waited for, so that its busy time is known and the queue of a lane never
    /// runs ahead of its share.
    fn one_step<B: Backend>(
        &self,
        trainer: &mut Trainer<B>,
    ) -> Result<Option<EpochRecord>, JobError> {
        self.lane.acquire();
        let workers = self.lane.take_workers();
        trainer.backend().set_workers(workers.n);
        let cpu0 = trainer.backend().lane_time();
        let t0 = Instant::now();
        let (result, width) = step_waited(trainer);
        let wall = t0.elapsed();
        let cpu = (trainer.backend().lane_time()).saturating_sub(cpu0);
        // The width of a step, not of the evaluation that ends an epoch: a step runs every
        // time, the evaluation once an epoch.
        if let (Some(w), Ok(None)) = (width, &result) {
            self.lane.note_width(w);
        }
        self.lane.give_workers(workers);
        self.lane.charge(wall, cpu);
        Ok(result?)
    }

    /// Publishes the progress after a step: steps, epochs, and rates over windows of at
    /// least 0.5 s, so one slow step does not swing them.
    fn publish_progress<B: Backend>(
        &self,
        trainer: &Trainer<B>,
        epoch: Option<EpochRecord>,
        window_start: &mut (Instant, u64),
    ) {
        let rows = trainer.train_rows();
        let batch = trainer.spec().batch_size;
        let steps = trainer.steps();
        let elapsed = window_start.0.elapsed().as_secs_f64();
        let mut p = lock(&self.progress);
        p.steps = steps;
        p.epochs_done = trainer.epochs_done();
        p.batch_in_epoch = trainer.batch_in_epoch();
        if let Some(record) = &epoch {
            p.history.push(record.clone());
        }
        if elapsed >= 0.5 {
            let done = (steps - window_start.1) as f64;
            let rate = done / elapsed;
            p.steps_per_s = if p.steps_per_s == 0.0 {
                rate
            } else {
                0.5 * p.steps_per_s + 0.5 * rate
            };
            p.samples_per_s = p.steps_per_s * batch.min(rows) as f64;
            *window_start = (Instant::now(), steps);
        } else if p.steps_per_s == 0.0 && elapsed > 0.0 {
            let done = (steps - window_start.1) as f64;
            p.steps_per_s = done / elapsed;
            p.samples_per_s = p.steps_per_s * batch.min(rows) as f64;
        }
        let samples_per_s = p.samples_per_s;
        drop(p);
        if let Some(r) = epoch {
            self.log.push(JobEventKind::Epoch {
                epoch: r.epoch,
                epochs_max: self.epochs(),
                train_loss: r.train_loss,
                val_accuracy: r.val_accuracy,
                share: self.lane.share(),
                samples_per_s,
            });
        }
    }

    pub(super) fn save<B: Backend>(&self, trainer: &mut Trainer<B>) -> Result<(), JobError> {
        trainer
            .checkpoint()
            .map_err(|e| e.to_string())
            .and_then(|c| {
                c.save_keeping_previous(&self.checkpoint_path(), &self.previous_checkpoint_path())
                    .map_err(|e| e.to_string())
            })
            .map_err(JobError::Checkpoint)?;
        lock(&self.progress).checkpoint = Some(self.checkpoint_path());
        // The step checkpointed, kept apart from the checkpoints: a restart that finds both
        // checkpoints gone can then say what was lost instead of starting over silently.
        let step = trainer.steps().to_string();
        if let Err(e) = crate::util::fsio::write_atomic(&self.checkpointed_path(), step.as_bytes())
        {
            tracing::warn!(job = %self.name, "cannot record the checkpointed step: {e}");
        }
        Ok(())
    }

    /// A checkpoint at the interval: a failure is recorded and training goes on, until writes
    /// have failed for longer than the timeout (see [`crate::node::checkpointing`]).
    pub(super) fn save_periodic<B: Backend>(
        &self,
        trainer: &mut Trainer<B>,
    ) -> Result<(), JobError> {
        let outcome = self.save(trainer);
        self.record_checkpoint(&outcome)
    }

    /// The checkpoint a job writes as it ends: tried [`crate::node::checkpointing::FINAL_TRIES`]
    /// times with a growing pause, then the job fails.
    pub(super) fn save_final<B: Backend>(&self, trainer: &mut Trainer<B>) -> Result<(), JobError> {
        use crate::node::checkpointing::{FINAL_TRIES, final_backoff};
        let mut last = Ok(());
        for n in 1..=FINAL_TRIES {
            if n > 1 {
                std::thread::sleep(final_backoff(n - 1));
            }
            last = self.save(trainer);
            self.record_checkpoint(&last)?;
            if last.is_ok() {
                return Ok(());
            }
        }
        last
    }

    pub(super) fn record_checkpoint(&self, outcome: &Result<(), JobError>) -> Result<(), JobError> {
        let message = outcome.as_ref().err().map(|e| e.to_string());
        if let Some(e) = &message {
            tracing::warn!(job = %self.name, "{e}; training goes on and the next checkpoint tries again");
        }
        let timeout = Duration::from_millis(self.checkpoint_timeout_ms.load(Ordering::Relaxed));
        let outcome = message.as_deref().map_or(Ok(()), Err);
        let was_failing = lock(&self.progress).checkpoint_health.last_error.is_some();
        match (&message, was_failing) {
            (Some(error), false) => self.log.push(JobEventKind::CheckpointFailed {
                error: error.clone(),
            }),
            (None, true) => self.log.push(JobEventKind::CheckpointRecovered),
            _ => {}
        }
        lock(&self.progress)
            .checkpoint_health
            .record(outcome, Instant::now(), timeout)?;
        Ok(())
    }

    /// `checkpointed`: the step of the last checkpoint written.
    pub(super) fn checkpointed_path(&self) -> PathBuf {
        self.dir.join("checkpointed")
    }
}

/// The training run a job config describes.
pub(crate) fn train_spec(
    c: &JobConfig,
    epochs: u32,
    target: Option<f64>,
    checkpoint: Option<PathBuf>,
) -> TrainSpec {
    let optimizer = match c.optimizer {
        OptimizerKind::Adam => Optimizer::Adam(crate::device::AdamParams {
            weight_decay: c.weight_decay as f32,
            ..default_adam(c.lr as f32)
        }),
        OptimizerKind::Sgd => Optimizer::Sgd(SgdParams {
            lr: c.lr as f32,
            momentum: c.momentum as f32,
            weight_decay: c.weight_decay as f32,
        }),
    };
    TrainSpec {
        layers: c.layers.clone(),
        optimizer,
        batch_size: c.batch_size,
        epochs,
        target_accuracy: target,
        val_fraction: c.val_fraction,
        seed: c.seed,
        checkpoint,
        checkpoint_every_steps: c.checkpoint_every_steps,
        precision: c.precision,
    }
}

/// Steps per epoch of the job on `data`, and what one step costs in worker-seconds of the
/// device the job will run on: processor time on one CPU worker, or GPU busy time × the
/// device's CTAs (a step measured with the whole GPU). Measured by running a few steps of it
/// (at least 3, at most 20 or about 200 ms) after one for warm-up. Fails with the training
/// error when the data does not fit the job (wrong width, labels out of range), or with the
/// device's error (for instance the memory limit). Also returns how many workers a step
/// could use (on the CPU), and on a GPU the device memory the job's buffers took.
pub(crate) fn measure_step_cost(
    c: &JobConfig,
    data: &Dataset,
    placement: &crate::node::Placement,
) -> Result<StepMeasure, crate::train::TrainError> {
    match placement {
        crate::node::Placement::Cpu(part) => {
            let backend = CpuBackend::with_health(part.health.clone(), 1, false)?;
            measure_on(backend, c, data, || {})
        }
        crate::node::Placement::Cuda(dev) => {
            let before = dev.memory_used();
            let mut peak = before;
            let backend = dev.lane_backend(StreamPriority::Normal)?;
            let m = measure_on(backend, c, data, || {
                peak = peak.max(dev.memory_used());
            })?;
            let device_bytes = Some(peak.saturating_sub(before));
            Ok(StepMeasure { device_bytes, ..m })
        }
    }
}

/// What [`measure_step_cost`] measured of a job's steps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct StepMeasure {
    pub(crate) steps_per_epoch: usize,
    /// Worker-seconds per step.
    pub(crate) cost: f64,
    /// How many workers a step could use, when the backend knows.
    pub(crate) width: Option<crate::device::Width>,
    /// Device memory the job's buffers took (on a GPU).
    pub(crate) device_bytes: Option<u64>,
}

/// One step of `t`, waited for (a GPU's queue drained), and how many workers its operations
/// could use ([`Backend::take_width`]; an epoch-ending step's evaluation included).
fn step_waited<B: Backend>(
    t: &mut Trainer<B>,
) -> (
    Result<Option<EpochRecord>, crate::train::TrainError>,
    Option<Width>,
) {
    let _ = t.backend().take_width();
    let result = t.step(&mut |_: &TrainEvent| {}).and_then(|r| {
        t.backend().synchronize()?;
        Ok(r)
    });
    (result, t.backend().take_width())
}

/// Measures on `backend`; `probe` runs once the trainer's buffers exist.
fn measure_on<B: Backend>(
    backend: B,
    c: &JobConfig,
    data: &Dataset,
    mut probe: impl FnMut(),
) -> Result<StepMeasure, crate::train::TrainError> {
    let spec = train_spec(c, u32::MAX, None, None);
    let mut t = Trainer::new(backend, spec, data)?;
    let steps_per_epoch = t.batches_per_epoch();
    step_waited(&mut t).0?;
    let c0 = t.backend().lane_time();
    let t0 = Instant::now();
    let mut n = 0u32;
    // Steps that end an epoch evaluate too: the width is that of the others, if any.
    let (mut width, mut ended) = (None, None);
    while n < 3 || (n < 20 && t0.elapsed() < std::time::Duration::from_millis(200)) {
        let (epoch, w) = step_waited(&mut t);
        match epoch? {
            None => width = width.max(w),
            Some(_) => ended = ended.max(w),
        }
        n += 1;
    }
    let cost = t.backend().lane_time().saturating_sub(c0).as_secs_f64() / n as f64;
    probe();
    Ok(StepMeasure {
        steps_per_epoch,
        cost,
        width: width.or(ended),
        device_bytes: None,
    })
}
