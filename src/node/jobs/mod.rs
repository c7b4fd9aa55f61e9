//! Training jobs in the daemon: each runs on a thread of its own (its lane), checkpoints into
//! the state dir, publishes its progress after every step, and honours cancellation and
//! changes of deadline or target between steps.

mod events;
mod outcome;
mod record;
mod run;
mod view;

pub use events::{JobEvent, JobEventKind, JobEventPage, JobLog, PAGE as JOB_EVENT_PAGE};
pub(crate) use outcome::OutcomeFacts;
pub use outcome::{DeadlineOutcome, JobOutcome, JobStopReason, TargetOutcome};
pub(crate) use record::{OUTCOME_RECORD, OutcomeRecord};

pub(crate) use run::measure_step_cost;

use crate::util::sync::lock;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::config::JobConfig;
use crate::control::JobClass;
use crate::data::LoadStop;
use crate::device::lane::Lane;
use crate::model::checkpoint::EpochRecord;
use crate::train::StopReason;

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
    /// Cancelled by a user, or stopped at its deadline (`control.past_deadline = "stop"`);
    /// its last checkpoint is kept.
    Cancelled,
}

/// The state as the API spells it (`running`, `cancelled`), for logs and messages.
impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            JobState::Pending => "pending",
            JobState::Loading => "loading",
            JobState::Running => "running",
            JobState::Completed => "completed",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        })
    }
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
    /// How it fared, judged when it ended.
    pub(crate) outcome: Option<JobOutcome>,
    /// The number format its matrix products run in, once it runs.
    pub(crate) precision: Option<crate::device::Precision>,
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
    /// Stopped because its deadline passed (`control.past_deadline = "stop"`).
    stopped_at_deadline: AtomicBool,
    /// Its demotion past its deadline has been logged.
    demotion_logged: AtomicBool,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    lane: Arc<Lane>,
    placement: super::Placement,
    est_step_cost_core_s: Option<f64>,
    /// How long checkpoint writes may fail before the job fails (the node's
    /// `checkpoint_error_timeout_ms`, applied again by a reload).
    checkpoint_timeout_ms: std::sync::atomic::AtomicU64,
    /// What happened to it, in order.
    log: JobLog,
}

/// The API's view of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobView {
    /// Name and id.
    pub name: String,
    /// Lifecycle state.
    pub state: JobState,
    /// `deadline` or `best-effort`.
    #[serde(deserialize_with = "job_class")]
    pub class: JobClass,
    /// RFC 3339 times.
    pub submitted_at: String,
    /// When its first step ran.
    pub started_at: Option<String>,
    /// When it stopped.
    pub finished_at: Option<String>,
    /// The deadline, if any.
    pub deadline: Option<String>,
    /// Estimated time of finishing: the steps left for the epochs the job is expected to
    /// need over `smoothed_steps_per_s`; for an ended job, when it finished.
    pub estimated_finish: Option<String>,
    /// Deadline minus estimated finish, in seconds (negative: expected late).
    pub slack_s: Option<f64>,
    /// How it fared against its deadline and target so far (absent from an older daemon's
    /// answers: nothing settled).
    #[serde(default)]
    pub outcome: JobOutcome,
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
    /// The most share its steps can use, while it runs: `width / cores` on the CPU (a step
    /// too small to split uses one core), 1 when wider or not known.
    #[serde(default)]
    pub usable_share: Option<f64>,
    /// Mini-batch size.
    pub batch_size: usize,
    /// The number format its matrix products run in (`f32`, `bf16`), once it has started:
    /// the spec's `precision`, or the device's default.
    #[serde(default)]
    pub precision: Option<crate::device::Precision>,
    /// `target_reached` or `epoch_limit` once completed; `deadline_passed` when stopped at
    /// its deadline (`control.past_deadline = "stop"`).
    pub stop_reason: Option<JobStopReason>,
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
    /// Steps left for the epochs the job is expected to need (while it runs).
    pub remaining_steps: Option<u64>,
    /// Steps per second needed to meet the deadline.
    pub required_steps_per_s: Option<f64>,
    /// Steps per second over the last second.
    pub steps_per_s: Option<f64>,
    /// Steps per second the finish estimate divides by: smoothed over about 20 s.
    pub smoothed_steps_per_s: Option<f64>,
    /// The accepted spec.
    pub spec: JobConfig,
}

/// Reads a job's class as [`JobClass`] serialises it (`deadline`, `best-effort`): the
/// controller, pure, does not deserialise.
fn job_class<'de, D: serde::Deserializer<'de>>(d: D) -> Result<JobClass, D::Error> {
    const NAMES: [&str; 2] = ["deadline", "best-effort"];
    match String::deserialize(d)?.as_str() {
        "deadline" => Ok(JobClass::Deadline),
        "best-effort" => Ok(JobClass::BestEffort),
        other => Err(serde::de::Error::unknown_variant(other, &NAMES)),
    }
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
        let log = JobLog::open(&dir);
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
            stopped_at_deadline: AtomicBool::new(false),
            demotion_logged: AtomicBool::new(false),
            thread: Mutex::new(None),
            lane,
            placement,
            est_step_cost_core_s,
            checkpoint_timeout_ms: std::sync::atomic::AtomicU64::new(
                crate::config::DEFAULT_CHECKPOINT_ERROR_TIMEOUT_MS,
            ),
            log,
        }
    }

    /// The job's log of events.
    pub fn events(&self) -> &JobLog {
        &self.log
    }

    /// The events numbered above `after`, at most `limit` (and [`events::PAGE`]) of them.
    pub fn event_page(&self, after: u64, limit: Option<usize>) -> JobEventPage {
        // Read the state first: a job seen ended has logged how it ended.
        let ended = self.state().is_terminal();
        let (events, next) = self
            .log
            .since(after, limit.unwrap_or(events::PAGE).min(events::PAGE));
        JobEventPage {
            job: self.name.clone(),
            events,
            next,
            ended,
        }
    }

    /// A user's cancel: logged, then asked of the job (see [`Job::cancel`]).
    pub(crate) fn request_cancel(&self) {
        if !self.cancel.load(Ordering::Acquire) {
            self.log.push(JobEventKind::CancelRequested);
        }
        self.cancel();
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
    pub(crate) fn estimated_step_cost(&self) -> Option<f64> {
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
    pub(crate) fn checkpoint_path(&self) -> PathBuf {
        self.dir.join("checkpoint.ckpt")
    }

    /// The checkpoint before the latest, kept to resume from when the latest is damaged.
    pub(crate) fn previous_checkpoint_path(&self) -> PathBuf {
        self.dir.join("checkpoint.prev.ckpt")
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
    pub(crate) fn set_deadline(&self, deadline: Option<SystemTime>) {
        *lock(&self.deadline) = deadline;
    }

    /// Changes the target accuracy; applied before the job's next step.
    pub(crate) fn set_target(&self, target: Option<f64>) {
        *lock(&self.target) = target;
        lock(&self.pending).target = Some(target);
    }

    /// Changes the epoch limit; applied before the job's next step.
    pub(crate) fn set_epochs(&self, epochs: u32) {
        *lock(&self.epochs) = epochs;
        lock(&self.pending).epochs = Some(epochs);
    }

    /// Asks the job to stop after its current step, keeping a checkpoint.
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::Release);
        self.load_stop.stop();
    }

    /// Stops the job because its deadline has passed (`control.past_deadline = "stop"`): it
    /// stops like a cancel and its stop reason says why. True the first time only.
    fn stop_at_deadline(&self) -> bool {
        if self.stopped_at_deadline.swap(true, Ordering::AcqRel) {
            return false;
        }
        self.cancel();
        true
    }

    /// Applies what the controller decided for a job whose deadline has passed: stops it, or
    /// says once in the log that it runs on as best-effort.
    pub(crate) fn past_deadline(&self, policy: crate::control::PastDeadline) {
        use crate::control::PastDeadline;
        match policy {
            PastDeadline::Stop => {
                if self.stop_at_deadline() {
                    self.log
                        .push(JobEventKind::DeadlinePassed { stopped: true });
                    tracing::warn!(
                        job = %self.name,
                        "its deadline has passed: stopped (control.past_deadline = \"stop\")"
                    );
                }
            }
            PastDeadline::BestEffort => {
                if !self.demotion_logged.swap(true, Ordering::AcqRel) {
                    self.log
                        .push(JobEventKind::DeadlinePassed { stopped: false });
                    tracing::warn!(
                        job = %self.name,
                        "its deadline has passed: it runs on as best-effort \
                         (control.past_deadline = \"best-effort\")"
                    );
                }
            }
        }
    }

    /// Why the job stopped, as its view and record say: the trainer's reason, or
    /// `deadline_passed` for a job stopped at its deadline.
    fn stop_reason(&self, p: &JobProgress) -> Option<JobStopReason> {
        p.stop_reason.map(JobStopReason::from).or_else(|| {
            self.stopped_at_deadline
                .load(Ordering::Acquire)
                .then_some(JobStopReason::DeadlinePassed)
        })
    }

    /// How the job in `state` with progress `p` fares against its deadline and target (see
    /// [`JobOutcome::judge`]): for an ended job, as judged when it ended.
    fn outcome_of(&self, state: JobState, p: &JobProgress) -> JobOutcome {
        if state.is_terminal()
            && let Some(o) = p.outcome
        {
            return o;
        }
        JobOutcome::judge(&OutcomeFacts {
            state,
            deadline: self.deadline(),
            target: self.target(),
            finished_at: p.finished_at,
            stop_reason: p.stop_reason,
            now: SystemTime::now(),
        })
    }

    /// Stops the job for the node's shutdown: it checkpoints and stops like a cancel, but
    /// records no outcome, so the next start resumes it from that checkpoint.
    pub(crate) fn interrupt(&self) {
        self.interrupted.store(true, Ordering::Release);
        self.cancel.store(true, Ordering::Release);
        self.load_stop.stop();
    }

    /// Ends the job in `state`: records the outcome first, then shows it, so that whoever
    /// sees the job ended (a client about to remove it, a crash just after) finds the record
    /// already on disk.
    fn finish(&self, state: JobState) {
        let p = lock(&self.progress).clone();
        let outcome = self.outcome_of(state, &p);
        lock(&self.progress).outcome = Some(outcome);
        self.record_outcome(state);
        self.log.push(if self.interrupted.load(Ordering::Acquire) {
            JobEventKind::Interrupted
        } else {
            JobEventKind::Ended {
                state,
                stop_reason: self.stop_reason(&p),
                error: p.error.clone(),
                outcome,
            }
        });
        self.set_state(state);
    }

    /// Waits for the job's thread to end.
    pub fn join(&self) {
        let handle = lock(&self.thread).take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_class_reads_back_as_it_is_written() {
        for class in [JobClass::Deadline, JobClass::BestEffort] {
            let v = serde_json::to_value(class).unwrap();
            assert_eq!(job_class(v).unwrap(), class);
        }
        assert!(job_class(serde_json::json!("urgent")).is_err());
    }
}
