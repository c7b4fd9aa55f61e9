//! A job's view for the API: its state, progress and rates, its finish estimate and slack,
//! and how it fared against its set points.

use std::time::SystemTime;

use super::{Job, JobProgress, JobState, JobView};
use crate::config::format_rfc3339;
use crate::control::JobClass;
use crate::util::sync::lock;

impl Job {
    /// A snapshot for the API.
    pub fn view(&self, decision: Option<&crate::control::JobDecision>) -> JobView {
        let state = self.state();
        let p = lock(&self.progress).clone();
        let target = *lock(&self.target);
        let epochs_max = *lock(&self.epochs);
        let deadline = self.deadline();
        let last = p.history.last();
        let total_steps = epochs_max as u64 * p.batches_per_epoch as u64;
        let estimate = self.finish_estimate(state, &p, decision);
        let slack_s = match (deadline, estimate.at) {
            (Some(d), Some(f)) => Some(match d.duration_since(f) {
                Ok(ahead) => ahead.as_secs_f64(),
                Err(late) => -late.duration().as_secs_f64(),
            }),
            _ => None,
        };
        let outcome = self.outcome_of(state, &p);
        let running = matches!(state, JobState::Running | JobState::Loading);
        JobView {
            name: self.name.clone(),
            state,
            // A deadline job whose deadline passed runs on as best-effort (or is stopped).
            class: if self.config.best_effort || outcome.deadline_missed() {
                JobClass::BestEffort
            } else {
                JobClass::Deadline
            },
            submitted_at: format_rfc3339(self.submitted_at),
            started_at: p.started_at.map(format_rfc3339),
            finished_at: p.finished_at.map(format_rfc3339),
            deadline: deadline.map(format_rfc3339),
            estimated_finish: estimate.at.map(format_rfc3339),
            slack_s,
            outcome,
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
            usable_share: decision.map(|d| d.usable_share).filter(|_| running),
            batch_size: self.config.batch_size,
            precision: p.precision,
            stop_reason: self.stop_reason(&p),
            error: p.error.clone(),
            checkpoint: p.checkpoint.as_ref().map(|c| c.display().to_string()),
            restore_note: p.restore_note.clone(),
            checkpoint_error: p.checkpoint_health.last_error.clone(),
            checkpoint_errors: p.checkpoint_health.errors,
            accuracy_curve: p.history.iter().map(|r| r.val_accuracy).collect(),
            expected_epochs: decision.map(|d| d.expected_epochs),
            remaining_steps: estimate.remaining_steps,
            required_steps_per_s: decision
                .and_then(|d| d.required_rate)
                .filter(|r| r.is_finite()),
            steps_per_s: decision.map(|d| d.measured_rate),
            smoothed_steps_per_s: estimate.rate,
            spec: self.config.clone(),
        }
    }

    /// When a running job should finish: the steps left for the epochs it is expected to need
    /// (the controller's learning-curve estimate with a target, else the epoch limit) over its
    /// rate smoothed over about 20 s ([`crate::control::rate`]; the job's own recent rate
    /// until the controller has measured two periods). An ended job finished when it did.
    fn finish_estimate(
        &self,
        state: JobState,
        p: &JobProgress,
        decision: Option<&crate::control::JobDecision>,
    ) -> FinishEstimate {
        if state.is_terminal() {
            return FinishEstimate {
                at: p.finished_at,
                ..FinishEstimate::default()
            };
        }
        if state != JobState::Running || p.batches_per_epoch == 0 {
            return FinishEstimate::default();
        }
        let remaining = decision.map_or_else(
            || {
                let curve: Vec<f64> = p
                    .history
                    .iter()
                    .map(|r| r.val_accuracy.unwrap_or(0.0))
                    .collect();
                let expected = crate::control::training::expected_epochs(
                    &curve,
                    self.target(),
                    p.epochs_done,
                    self.epochs(),
                );
                let total = (expected * p.batches_per_epoch as f64).ceil() as u64;
                total.saturating_sub(p.steps)
            },
            |d| d.remaining_steps,
        );
        let rate = decision
            .and_then(|d| d.smoothed_rate)
            .or((p.steps_per_s > 0.0).then_some(p.steps_per_s));
        let at = crate::control::rate::predicted_finish(remaining, rate)
            .filter(|s| s.is_finite() && *s < 1e9)
            .map(|s| SystemTime::now() + std::time::Duration::from_secs_f64(s));
        FinishEstimate {
            remaining_steps: Some(remaining),
            rate,
            at,
        }
    }
}

/// A job's finish estimate and what it was made from.
#[derive(Debug, Clone, Copy, Default)]
struct FinishEstimate {
    remaining_steps: Option<u64>,
    rate: Option<f64>,
    at: Option<SystemTime>,
}
