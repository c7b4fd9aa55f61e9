//! Training jobs in the daemon: each runs on a thread of its own (its lane), checkpoints into
//! the state dir, publishes its progress after every step, and honours cancellation and
//! changes of deadline or target between steps.

use crate::util::sync::lock;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use crate::config::{JobConfig, OptimizerKind, format_rfc3339};
use crate::data::{self, Dataset, LoadOptions, LoadStop};
use crate::device::cuda::StreamPriority;
use crate::device::lane::Lane;
use crate::device::{Backend, CpuBackend, SgdParams};
use crate::model::Optimizer;
use crate::model::checkpoint::{Checkpoint, CheckpointError, EpochRecord};
use crate::train::{StopReason, TrainEvent, TrainSpec, Trainer, default_adam};

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Accepted, its thread not started yet.
    Pending,
    /// Loading its data.
    Loading,
    /// Taking optimiser steps.
    Running,
    /// Finished: it reached its target, or its epoch limit.
    Completed,
    /// Stopped by an error.
    Failed,
    /// Cancelled by a user; its last checkpoint is kept.
    Cancelled,
}

impl JobState {
    /// True once the job will take no more steps.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Completed | JobState::Failed | JobState::Cancelled
        )
    }
}

/// Progress a job publishes as it runs.
#[derive(Debug, Clone, Default)]
pub struct JobProgress {
    pub(crate) epochs_done: u32,
    pub(crate) steps: u64,
    pub(crate) batches_per_epoch: usize,
    pub(crate) batch_in_epoch: usize,
    pub(crate) history: Vec<EpochRecord>,
    pub(crate) steps_per_s: f64,
    pub(crate) samples_per_s: f64,
    pub(crate) started_at: Option<SystemTime>,
    pub(crate) finished_at: Option<SystemTime>,
    pub(crate) stop_reason: Option<StopReason>,
    pub(crate) error: Option<String>,
    pub(crate) checkpoint: Option<PathBuf>,
    /// What happened at restore when the latest checkpoint could not be used.
    pub(crate) restore_note: Option<String>,
    /// Failed checkpoint writes.
    pub(crate) checkpoint_health: super::checkpointing::CheckpointHealth,
    pub(crate) workers: usize,
    pub(crate) train_rows: usize,
}

/// Changes a user asked for, applied by the job's thread before its next step.
#[derive(Debug, Clone, Default)]
struct Pending {
    target: Option<Option<f64>>,
    epochs: Option<u32>,
}

/// A training job.
pub struct Job {
    /// Unique name, also its id in the API.
    pub name: String,
    /// The accepted spec.
    pub config: JobConfig,
    /// When it was accepted.
    pub submitted_at: SystemTime,
    dir: PathBuf,
    deadline: Mutex<Option<SystemTime>>,
    target: Mutex<Option<f64>>,
    epochs: Mutex<u32>,
    state: Mutex<JobState>,
    progress: Mutex<JobProgress>,
    pending: Mutex<Pending>,
    cancel: AtomicBool,
    /// Stops the job's data load (a job resumed at start loads on its own thread) when it is
    /// cancelled or the node stops.
    load_stop: LoadStop,
    /// Stopped by the node's shutdown, not by a user: no outcome is recorded, so a restart
    /// resumes it.
    interrupted: AtomicBool,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    lane: Arc<Lane>,
    placement: super::Placement,
    est_step_cost_core_s: Option<f64>,
    /// How long checkpoint writes may fail before the job fails (the node's
    /// `checkpoint_error_timeout_ms`, applied again by a reload).
    checkpoint_timeout_ms: std::sync::atomic::AtomicU64,
}

/// The API's view of a job.
#[derive(Debug, Clone, Serialize)]
pub struct JobView {
    /// Name and id.
    pub name: String,
    /// Lifecycle state.
    pub state: JobState,
    /// `deadline` or `best-effort`.
    pub class: &'static str,
    /// RFC 3339 times.
    pub submitted_at: String,
    /// When its first step ran.
    pub started_at: Option<String>,
    /// When it stopped.
    pub finished_at: Option<String>,
    /// The deadline, if any.
    pub deadline: Option<String>,
    /// Estimated time of finishing at the current rate, bounded by the epoch limit.
    pub estimated_finish: Option<String>,
    /// Deadline minus estimated finish, in seconds (negative: expected late).
    pub slack_s: Option<f64>,
    /// Target validation accuracy.
    pub target_accuracy: Option<f64>,
    /// Epoch limit.
    pub epochs_max: u32,
    /// Epochs finished.
    pub epochs_done: u32,
    /// Optimiser steps taken.
    pub steps: u64,
    /// Fraction of the epoch limit done.
    pub progress: f64,
    /// Validation accuracy after the last epoch.
    pub val_accuracy: Option<f64>,
    /// Training loss of the last epoch.
    pub train_loss: Option<f64>,
    /// Training samples per second, recent.
    pub samples_per_s: f64,
    /// Share of the device it runs at.
    pub share: f64,
    /// Worker threads it runs with.
    pub workers: usize,
    /// Mini-batch size.
    pub batch_size: usize,
    /// `target_reached` or `epoch_limit` once completed.
    pub stop_reason: Option<&'static str>,
    /// Why it failed.
    pub error: Option<String>,
    /// Its checkpoint file.
    pub checkpoint: Option<String>,
    /// Set when the job resumed from its previous checkpoint because the latest was
    /// damaged: what was wrong and where it resumed.
    pub restore_note: Option<String>,
    /// Why the last checkpoint write failed, while writes fail (training goes on).
    pub checkpoint_error: Option<String>,
    /// Failed checkpoint writes so far.
    pub checkpoint_errors: u64,
    /// Accuracy after each finished epoch.
    pub accuracy_curve: Vec<Option<f64>>,
    /// Epochs the controller expects the job to need (from the learning curve for an
    /// accuracy target, else the limit).
    pub expected_epochs: Option<f64>,
    /// Steps per second needed to meet the deadline.
    pub required_steps_per_s: Option<f64>,
    /// Steps per second over the last second.
    pub steps_per_s: Option<f64>,
    /// The accepted spec.
    pub spec: JobConfig,
}

impl Job {
    pub(crate) fn new(
        config: JobConfig,
        dir: PathBuf,
        submitted_at: SystemTime,
        lane: Arc<Lane>,
        placement: super::Placement,
        est_step_cost_core_s: Option<f64>,
    ) -> Self {
        let deadline = config.deadline.map(|d| d.resolve(submitted_at));
        Job {
            name: config.name.clone(),
            target: Mutex::new(config.target_accuracy),
            epochs: Mutex::new(config.epochs),
            config,
            submitted_at,
            dir,
            deadline: Mutex::new(deadline),
            state: Mutex::new(JobState::Pending),
            progress: Mutex::new(JobProgress::default()),
            pending: Mutex::new(Pending::default()),
            cancel: AtomicBool::new(false),
            load_stop: LoadStop::default(),
            interrupted: AtomicBool::new(false),
            thread: Mutex::new(None),
            lane,
            placement,
            est_step_cost_core_s,
            checkpoint_timeout_ms: std::sync::atomic::AtomicU64::new(
                crate::config::DEFAULT_CHECKPOINT_ERROR_TIMEOUT_MS,
            ),
        }
    }

    /// How long checkpoint writes may fail before the job fails, milliseconds.
    pub(crate) fn set_checkpoint_timeout_ms(&self, ms: u64) {
        self.checkpoint_timeout_ms.store(ms, Ordering::Relaxed);
    }

    /// The job's lane.
    pub fn lane(&self) -> &Arc<Lane> {
        &self.lane
    }

    /// Core-seconds per step, as measured at admission (None when not measured).
    pub fn estimated_step_cost(&self) -> Option<f64> {
        self.est_step_cost_core_s
    }

    /// The epoch limit now in force.
    pub fn epochs(&self) -> u32 {
        *lock(&self.epochs)
    }

    /// The target accuracy now in force.
    pub fn target(&self) -> Option<f64> {
        *lock(&self.target)
    }

    /// A copy of the published progress.
    pub fn progress(&self) -> JobProgress {
        lock(&self.progress).clone()
    }

    /// The job's directory in the state dir.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// The job's checkpoint file.
    pub fn checkpoint_path(&self) -> PathBuf {
        self.dir.join("checkpoint.ckpt")
    }

    /// The checkpoint before the latest, kept to resume from when the latest is damaged.
    pub fn previous_checkpoint_path(&self) -> PathBuf {
        self.dir.join("checkpoint.prev.ckpt")
    }

    /// The checkpoint to resume from: the latest, or the previous one when the latest is
    /// damaged (which is logged and noted in the job's view). `None`: start afresh.
    fn checkpoint_to_resume(&self) -> Result<Option<(Checkpoint, PathBuf)>, String> {
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
            return Err(format!("cannot resume: {damage}"));
        }
        let c = Checkpoint::load(&previous).map_err(|e| {
            format!("cannot resume: {damage}; the previous checkpoint is no better: {e}")
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
    fn note_lost_checkpoints(&self) {
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

    /// Current state.
    pub fn state(&self) -> JobState {
        *lock(&self.state)
    }

    fn set_state(&self, s: JobState) {
        *lock(&self.state) = s;
    }

    /// The deadline now in force.
    pub fn deadline(&self) -> Option<SystemTime> {
        *lock(&self.deadline)
    }

    /// Changes the deadline; takes effect at once.
    pub fn set_deadline(&self, deadline: Option<SystemTime>) {
        *lock(&self.deadline) = deadline;
    }

    /// Changes the target accuracy; applied before the job's next step.
    pub fn set_target(&self, target: Option<f64>) {
        *lock(&self.target) = target;
        lock(&self.pending).target = Some(target);
    }

    /// Changes the epoch limit; applied before the job's next step.
    pub fn set_epochs(&self, epochs: u32) {
        *lock(&self.epochs) = epochs;
        lock(&self.pending).epochs = Some(epochs);
    }

    /// Asks the job to stop after its current step, keeping a checkpoint.
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::Release);
        self.load_stop.stop();
    }

    /// Stops the job for the node's shutdown: it checkpoints and stops like a cancel, but
    /// records no outcome, so the next start resumes it from that checkpoint.
    pub(crate) fn interrupt(&self) {
        self.interrupted.store(true, Ordering::Release);
        self.cancel.store(true, Ordering::Release);
        self.load_stop.stop();
    }

    /// Path of the record of how the job ended (absent while it can still run).
    pub(crate) fn outcome_path(&self) -> PathBuf {
        self.dir.join("outcome.json")
    }

    /// Ends the job in `state`: records the outcome first, then shows it, so that whoever
    /// sees the job ended (a client about to remove it, a crash just after) finds the record
    /// already on disk.
    fn finish(&self, state: JobState) {
        self.record_outcome(state);
        self.set_state(state);
    }

    /// Writes how the job ended, atomically, so that a restart shows it ended instead of
    /// resuming it. Not for a shutdown's interruption.
    fn record_outcome(&self, state: JobState) {
        if self.interrupted.load(Ordering::Acquire) {
            return;
        }
        let p = lock(&self.progress).clone();
        let record = serde_json::json!({
            "state": state,
            "finished_at": p.finished_at.map(crate::config::format_rfc3339),
            "stop_reason": p.stop_reason.map(|r| r.as_str()),
            "error": p.error,
            "epochs_done": p.epochs_done,
            "steps": p.steps,
        });
        if let Err(e) =
            crate::util::fsio::write_atomic(&self.outcome_path(), record.to_string().as_bytes())
        {
            tracing::error!(job = %self.name, "cannot record the job's outcome: {e}");
        }
    }

    /// Marks a job restored from the state dir as ended the way `record` says.
    pub(crate) fn restore_outcome(&self, record: &serde_json::Value) -> Result<(), String> {
        let state = match record["state"].as_str() {
            Some("completed") => JobState::Completed,
            Some("failed") => JobState::Failed,
            Some("cancelled") => JobState::Cancelled,
            other => return Err(format!("unknown final state {other:?}")),
        };
        {
            let mut p = lock(&self.progress);
            p.finished_at = record["finished_at"]
                .as_str()
                .and_then(|t| crate::config::parse_rfc3339(t).ok());
            p.stop_reason = match record["stop_reason"].as_str() {
                Some("target_reached") => Some(StopReason::TargetReached),
                Some("epoch_limit") => Some(StopReason::EpochLimit),
                _ => None,
            };
            p.error = record["error"].as_str().map(str::to_string);
            p.epochs_done = record["epochs_done"].as_u64().unwrap_or(0) as u32;
            p.steps = record["steps"].as_u64().unwrap_or(0);
            let ckpt = self.checkpoint_path();
            p.checkpoint = ckpt.exists().then_some(ckpt);
        }
        self.set_state(state);
        Ok(())
    }

    /// Waits for the job's thread to end.
    pub fn join(&self) {
        let handle = lock(&self.thread).take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }

    /// A snapshot for the API.
    pub fn view(&self, decision: Option<&crate::control::JobDecision>) -> JobView {
        let state = self.state();
        let p = lock(&self.progress).clone();
        let target = *lock(&self.target);
        let epochs_max = *lock(&self.epochs);
        let deadline = self.deadline();
        let last = p.history.last();
        let total_steps = epochs_max as u64 * p.batches_per_epoch as u64;
        let remaining_steps = total_steps.saturating_sub(p.steps);
        // The controller's prediction (learning curve, granted share) when it has one; else
        // the epoch limit at the recent rate.
        let from_controller = decision
            .and_then(|d| d.predicted_finish_in_s)
            .filter(|s| s.is_finite() && *s >= 0.0 && *s < 1e9);
        let estimated_finish = match (state, from_controller) {
            (JobState::Running, Some(secs)) => {
                Some(SystemTime::now() + std::time::Duration::from_secs_f64(secs))
            }
            (JobState::Running, None) if p.steps_per_s > 0.0 => Some(
                SystemTime::now()
                    + std::time::Duration::from_secs_f64(remaining_steps as f64 / p.steps_per_s),
            ),
            (s, _) if s.is_terminal() => p.finished_at,
            _ => None,
        };
        let slack_s = match (deadline, estimated_finish) {
            (Some(d), Some(f)) => Some(match d.duration_since(f) {
                Ok(ahead) => ahead.as_secs_f64(),
                Err(late) => -late.duration().as_secs_f64(),
            }),
            _ => None,
        };
        let running = matches!(state, JobState::Running | JobState::Loading);
        JobView {
            name: self.name.clone(),
            state,
            class: if self.config.best_effort {
                "best-effort"
            } else {
                "deadline"
            },
            submitted_at: format_rfc3339(self.submitted_at),
            started_at: p.started_at.map(format_rfc3339),
            finished_at: p.finished_at.map(format_rfc3339),
            deadline: deadline.map(format_rfc3339),
            estimated_finish: estimated_finish.map(format_rfc3339),
            slack_s,
            target_accuracy: target,
            epochs_max,
            epochs_done: p.epochs_done,
            steps: p.steps,
            progress: if total_steps == 0 {
                0.0
            } else {
                (p.steps as f64 / total_steps as f64).min(1.0)
            },
            val_accuracy: last.and_then(|r| r.val_accuracy),
            train_loss: last.map(|r| r.train_loss),
            samples_per_s: if running { p.samples_per_s } else { 0.0 },
            share: if running { self.lane.share() } else { 0.0 },
            workers: if running { self.lane.workers() } else { 0 },
            batch_size: self.config.batch_size,
            stop_reason: p.stop_reason.map(|r| r.as_str()),
            error: p.error.clone(),
            checkpoint: p.checkpoint.as_ref().map(|c| c.display().to_string()),
            restore_note: p.restore_note.clone(),
            checkpoint_error: p.checkpoint_health.last_error.clone(),
            checkpoint_errors: p.checkpoint_health.errors,
            accuracy_curve: p.history.iter().map(|r| r.val_accuracy).collect(),
            expected_epochs: decision.map(|d| d.expected_epochs),
            required_steps_per_s: decision
                .and_then(|d| d.required_rate)
                .filter(|r| r.is_finite()),
            steps_per_s: decision.map(|d| d.measured_rate),
            spec: self.config.clone(),
        }
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

    fn fail(&self, message: String) {
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
    fn end_cancelled(&self) {
        lock(&self.progress).finished_at = Some(SystemTime::now());
        self.finish(JobState::Cancelled);
    }

    fn run(self: Arc<Self>, data: Option<Dataset>) {
        if self.cancel.load(Ordering::Acquire) {
            return self.end_cancelled();
        }
        self.set_state(JobState::Loading);
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
            super::Placement::Cpu(health) => {
                match CpuBackend::with_health(health.clone(), self.lane.cores(), background) {
                    Ok(b) => self.train(b, &data),
                    Err(e) => self.fail(e.to_string()),
                }
            }
            // Training is a stream at the device's least priority: inference's kernels are
            // scheduled ahead of its queued blocks.
            super::Placement::Cuda(dev) => match dev.lane_backend(StreamPriority::Lowest) {
                Ok(b) => self.train(b, &data),
                Err(e) => self.fail(e.to_string()),
            },
        }
    }

    /// Trains on `backend` from the job's checkpoint, if any, until it stops.
    fn train<B: Backend>(&self, backend: B, data: &Dataset) {
        let spec = self.train_spec();
        let trainer = match self.checkpoint_to_resume() {
            Ok(Some((ckpt, path))) => Trainer::resume(backend, spec, data, ckpt, &path),
            Ok(None) => Trainer::new(backend, spec, data),
            Err(e) => return self.fail(e),
        };
        let mut trainer = match trainer {
            Ok(t) => t,
            Err(e) => return self.fail(e.to_string()),
        };
        {
            let mut p = lock(&self.progress);
            p.batches_per_epoch = trainer.batches_per_epoch();
            p.steps = trainer.steps();
            p.epochs_done = trainer.epochs_done();
            p.history = trainer.history().to_vec();
            p.started_at = Some(SystemTime::now());
            p.workers = trainer.backend().workers();
            p.train_rows = trainer.train_rows();
        }
        self.set_state(JobState::Running);
        if let Err(e) = self.step_loop(&mut trainer) {
            self.fail(e);
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

    fn step_loop<B: Backend>(&self, trainer: &mut Trainer<B>) -> Result<(), String> {
        let every = self.config.checkpoint_every_steps;
        let mut no_events = |_: &TrainEvent| {};
        let mut window_start = (Instant::now(), trainer.steps());
        let rows = trainer.train_rows();
        let batch = trainer.spec().batch_size;
        loop {
            let pending = std::mem::take(&mut *lock(&self.pending));
            if let Some(target) = pending.target {
                trainer
                    .set_target_accuracy(target)
                    .map_err(|e| e.to_string())?;
            }
            if let Some(epochs) = pending.epochs {
                trainer.set_epochs(epochs).map_err(|e| e.to_string())?;
            }
            // Between steps, whatever the backend checks: the job stops at the first step
            // boundary after its device fails, even where a lane's operations do not check.
            if let Some(e) = self.placement.health().failure() {
                return Err(e.to_string());
            }
            if self.cancel.load(Ordering::Acquire) {
                self.save_final(trainer)?;
                let mut p = lock(&self.progress);
                p.finished_at = Some(SystemTime::now());
                drop(p);
                self.finish(JobState::Cancelled);
                return Ok(());
            }
            if let Some(reason) = trainer.finished() {
                self.save_final(trainer)?;
                let mut p = lock(&self.progress);
                p.stop_reason = Some(reason);
                p.finished_at = Some(SystemTime::now());
                drop(p);
                self.finish(JobState::Completed);
                tracing::info!(job = %self.name, reason = reason.as_str(), "job completed");
                return Ok(());
            }
            // One step is one unit of work of the lane: it waits for the lane's credit, runs
            // on the workers (threads, or CTAs) the share allows, and is charged what it used.
            // On a GPU the step is waited for, so that its busy time is known and the queue of
            // a lane never runs ahead of its share.
            self.lane.acquire();
            let workers = self.lane.take_workers();
            trainer.backend().set_workers(workers.n);
            let cpu0 = trainer.backend().lane_time();
            let t0 = Instant::now();
            let result = trainer.step(&mut no_events).and_then(|r| {
                trainer.backend().synchronize()?;
                Ok(r)
            });
            let wall = t0.elapsed();
            let cpu = (trainer.backend().lane_time()).saturating_sub(cpu0);
            self.lane.give_workers(workers);
            self.lane.charge(wall, cpu);
            let epoch = result.map_err(|e| e.to_string())?;
            let steps = trainer.steps();
            if every > 0 && steps % every == 0 {
                self.save_periodic(trainer)?;
            }
            let elapsed = window_start.0.elapsed().as_secs_f64();
            let mut p = lock(&self.progress);
            p.steps = steps;
            p.epochs_done = trainer.epochs_done();
            p.batch_in_epoch = trainer.batch_in_epoch();
            if let Some(record) = epoch {
                p.history.push(record);
            }
            // Rates over windows of at least 0.5 s, so one slow step does not swing them.
            if elapsed >= 0.5 {
                let done = (steps - window_start.1) as f64;
                let rate = done / elapsed;
                p.steps_per_s = if p.steps_per_s == 0.0 {
                    rate
                } else {
                    0.5 * p.steps_per_s + 0.5 * rate
                };
                p.samples_per_s = p.steps_per_s * batch.min(rows) as f64;
                window_start = (Instant::now(), steps);
            } else if p.steps_per_s == 0.0 && elapsed > 0.0 {
                let done = (steps - window_start.1) as f64;
                p.steps_per_s = done / elapsed;
                p.samples_per_s = p.steps_per_s * batch.min(rows) as f64;
            }
        }
    }

    fn save<B: Backend>(&self, trainer: &mut Trainer<B>) -> Result<(), String> {
        trainer
            .checkpoint()
            .map_err(|e| e.to_string())
            .and_then(|c| {
                c.save_keeping_previous(&self.checkpoint_path(), &self.previous_checkpoint_path())
                    .map_err(|e| e.to_string())
            })
            .map_err(|e| format!("cannot write checkpoint: {e}"))?;
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
    /// have failed for longer than the timeout (see [`super::checkpointing`]).
    fn save_periodic<B: Backend>(&self, trainer: &mut Trainer<B>) -> Result<(), String> {
        let outcome = self.save(trainer);
        self.record_checkpoint(outcome)
    }

    /// The checkpoint a job writes as it ends: tried [`super::checkpointing::FINAL_TRIES`]
    /// times with a growing pause, then the job fails.
    fn save_final<B: Backend>(&self, trainer: &mut Trainer<B>) -> Result<(), String> {
        use super::checkpointing::{FINAL_TRIES, final_backoff};
        let mut last = Ok(());
        for n in 1..=FINAL_TRIES {
            if n > 1 {
                std::thread::sleep(final_backoff(n - 1));
            }
            last = self.save(trainer);
            let failed = last.is_err();
            self.record_checkpoint(last.clone())?;
            if !failed {
                return Ok(());
            }
        }
        last
    }

    fn record_checkpoint(&self, outcome: Result<(), String>) -> Result<(), String> {
        if let Err(e) = &outcome {
            tracing::warn!(job = %self.name, "{e}; training goes on and the next checkpoint tries again");
        }
        let timeout = Duration::from_millis(self.checkpoint_timeout_ms.load(Ordering::Relaxed));
        lock(&self.progress)
            .checkpoint_health
            .record(outcome, Instant::now(), timeout)
    }

    /// `checkpointed`: the step of the last checkpoint written.
    fn checkpointed_path(&self) -> PathBuf {
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
    }
}

/// Steps per epoch of the job on `data`, and what one step costs in worker-seconds of the
/// device the job will run on: processor time on one CPU worker, or GPU busy time × the
/// device's CTAs (a step measured with the whole GPU). Measured by running a few steps of it
/// (at least 3, at most 20 or about 200 ms) after one for warm-up. Fails with the training
/// error when the data does not fit the job (wrong width, labels out of range), or with the
/// device's error (for instance the memory limit). On a GPU also returns the device memory
/// the job's buffers took.
pub(crate) fn measure_step_cost(
    c: &JobConfig,
    data: &Dataset,
    placement: &super::Placement,
) -> Result<(usize, f64, Option<u64>), crate::train::TrainError> {
    match placement {
        super::Placement::Cpu(health) => {
            let backend = CpuBackend::with_health(health.clone(), 1, false)?;
            let (steps, cost) = measure_on(backend, c, data, || {})?;
            Ok((steps, cost, None))
        }
        super::Placement::Cuda(dev) => {
            let before = dev.memory_used();
            let mut peak = before;
            let backend = dev.lane_backend(StreamPriority::Normal)?;
            let (steps, cost) = measure_on(backend, c, data, || {
                peak = peak.max(dev.memory_used());
            })?;
            Ok((steps, cost, Some(peak.saturating_sub(before))))
        }
    }
}

/// Measures on `backend`; `probe` runs once the trainer's buffers exist.
fn measure_on<B: Backend>(
    backend: B,
    c: &JobConfig,
    data: &Dataset,
    mut probe: impl FnMut(),
) -> Result<(usize, f64), crate::train::TrainError> {
    let spec = train_spec(c, u32::MAX, None, None);
    let mut t = Trainer::new(backend, spec, data)?;
    let steps_per_epoch = t.batches_per_epoch();
    let mut quiet = |_: &TrainEvent| {};
    t.step(&mut quiet)?;
    t.backend().synchronize()?;
    let c0 = t.backend().lane_time();
    let t0 = Instant::now();
    let mut n = 0u32;
    while n < 3 || (n < 20 && t0.elapsed() < std::time::Duration::from_millis(200)) {
        t.step(&mut quiet)?;
        t.backend().synchronize()?;
        n += 1;
    }
    let cost = t.backend().lane_time().saturating_sub(c0).as_secs_f64() / n as f64;
    probe();
    Ok((steps_per_epoch, cost))
}
