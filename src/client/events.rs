//! A job's events as lines for people (`setpoint jobs logs`): the time, what happened in one
//! word, and its figures.

use super::table::{pct, time};
use crate::node::{JobEvent, JobEventKind, JobOutcome, JobState, JobStopReason};

/// Width of the word that says what happened, so that the details line up.
const WHAT: usize = 11;

/// One line, without its newline: `2026-12-03T13:04:31Z  epoch       3/50  loss 0.4123 …`.
pub fn event_line(e: &JobEvent) -> String {
    let (what, detail) = describe(&e.kind);
    let at = time(Some(&e.at));
    if detail.is_empty() {
        format!("{at}  {what}")
    } else {
        format!("{at}  {what:<WHAT$} {detail}")
    }
}

/// What happened in a word, and its details.
fn describe(kind: &JobEventKind) -> (String, String) {
    use JobEventKind as K;
    let word = |w: &str| w.to_string();
    match kind {
        K::Submitted {
            device,
            share,
            deadline,
            target_accuracy,
            epochs,
        } => (
            word("submitted"),
            submitted(device, *share, deadline, *target_accuracy, *epochs),
        ),
        K::Loading => (word("loading"), "its data".into()),
        K::Running {
            epochs_done,
            steps,
            batches_per_epoch,
            precision,
        } => (
            word("running"),
            running(*epochs_done, *steps, *batches_per_epoch, *precision),
        ),
        K::Epoch {
            epoch,
            epochs_max,
            train_loss,
            val_accuracy,
            share,
            samples_per_s,
        } => (
            word("epoch"),
            epoch_figures(
                *epoch,
                *epochs_max,
                *train_loss,
                *val_accuracy,
                *share,
                *samples_per_s,
            ),
        ),
        K::Share { from, to } => (word("share"), format!("{} -> {}", pct(*from), pct(*to))),
        K::Updated {
            deadline,
            target_accuracy,
            epochs,
        } => (word("updated"), updated(deadline, target_accuracy, epochs)),
        K::CancelRequested => (
            word("cancelling"),
            "asked to stop: it stops after its current step".into(),
        ),
        K::DeadlinePassed { stopped } => (word("deadline"), deadline_passed(*stopped)),
        K::CheckpointFailed { error } => (word("checkpoint"), format!("failed: {error}")),
        K::CheckpointRecovered => (word("checkpoint"), "written again".into()),
        K::Interrupted => (
            word("interrupted"),
            "the daemon stopped; the job resumes from its last checkpoint at the next start".into(),
        ),
        K::Restored { state } => (word("restored"), restored(state)),
        K::Ended {
            state,
            stop_reason,
            error,
            outcome,
        } => (state.to_string(), ended(state, stop_reason, error, outcome)),
    }
}

/// `resumed after epoch 3 (step 30) in bf16, 10 steps per epoch`.
fn running(
    epochs_done: u32,
    steps: u64,
    batches_per_epoch: usize,
    precision: Option<crate::device::Precision>,
) -> String {
    let from = if steps == 0 {
        "from the start".to_string()
    } else {
        format!("resumed after epoch {epochs_done} (step {steps})")
    };
    let inp = precision.map_or_else(String::new, |p| format!(" in {p}"));
    format!("{from}{inp}, {batches_per_epoch} steps per epoch")
}

/// `3/50  loss 0.4123  accuracy 0.9000  share 60%  1234 samples/s`.
fn epoch_figures(
    epoch: u32,
    epochs_max: u32,
    train_loss: f64,
    val_accuracy: Option<f64>,
    share: f64,
    samples_per_s: f64,
) -> String {
    let acc = val_accuracy.map_or_else(|| "-".into(), |a| format!("{a:.4}"));
    format!(
        "{epoch}/{epochs_max}  loss {train_loss:.4}  accuracy {acc}  share {}  \
         {samples_per_s:.0} samples/s",
        pct(share)
    )
}

/// What became of a job whose deadline passed: stopped, or run on as best-effort.
fn deadline_passed(stopped: bool) -> String {
    if stopped {
        "passed: stopped (control.past_deadline = \"stop\")".into()
    } else {
        "passed: runs on as best-effort".into()
    }
}

/// How the daemon's start restored a job in `state`.
fn restored(state: &JobState) -> String {
    match state {
        JobState::Pending => "by the daemon's start: it resumes".into(),
        other => format!("by the daemon's start, {other}"),
    }
}

/// Why a job ended: its error if it failed, else how it fared against its deadline and
/// target, else why it stopped.
fn ended(
    state: &JobState,
    stop_reason: &Option<JobStopReason>,
    error: &Option<String>,
    outcome: &JobOutcome,
) -> String {
    match (state, error, outcome.describe()) {
        (JobState::Failed, Some(e), _) => e.clone(),
        (_, _, Some(o)) => o,
        _ => stop_reason.map_or_else(String::new, |r| r.as_str().replace('_', " ")),
    }
}

/// `on cpu at share 35%: accuracy >= 0.95 by …, at most 50 epochs`.
fn submitted(
    device: &str,
    share: f64,
    deadline: &Option<String>,
    target: Option<f64>,
    epochs: u32,
) -> String {
    let deadline = deadline.as_deref();
    let goal = match (target, deadline) {
        (Some(t), Some(d)) => format!("accuracy >= {t} by {}", time(Some(d))),
        (None, Some(d)) => format!("{epochs} epochs by {}", time(Some(d))),
        (Some(t), None) => format!("accuracy >= {t}, best effort"),
        (None, None) => format!("{epochs} epochs, best effort"),
    };
    let limit = if target.is_some() {
        format!(", at most {epochs} epochs")
    } else {
        String::new()
    };
    format!("on {device} at share {}: {goal}{limit}", pct(share))
}

/// `deadline 2026-…, target none, epochs 20`: what changed.
fn updated(
    deadline: &Option<Option<String>>,
    target: &Option<Option<f64>>,
    epochs: &Option<u32>,
) -> String {
    let mut parts = Vec::new();
    if let Some(d) = deadline {
        parts.push(format!(
            "deadline {}",
            d.as_deref().map_or("none".into(), |d| time(Some(d)))
        ));
    }
    if let Some(t) = target {
        parts.push(format!(
            "target {}",
            t.map_or("none".into(), |t| t.to_string())
        ));
    }
    if let Some(e) = epochs {
        parts.push(format!("epochs {e}"));
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::{DeadlineOutcome, JobOutcome, TargetOutcome};

    fn line(kind: JobEventKind) -> String {
        event_line(&JobEvent {
            seq: 1,
            at: "2026-12-03T13:04:29.5Z".into(),
            kind,
        })
    }

    #[test]
    fn each_event_reads_as_a_line() {
        assert_eq!(
            line(JobEventKind::Submitted {
                device: "cpu".into(),
                share: 0.35,
                deadline: Some("2026-12-03T13:34:29.25Z".into()),
                target_accuracy: Some(0.95),
                epochs: 50,
            }),
            "2026-12-03T13:04:29Z  submitted   on cpu at share 35%: accuracy >= 0.95 by \
             2026-12-03T13:34:29Z, at most 50 epochs"
        );
        assert_eq!(
            line(JobEventKind::Epoch {
                epoch: 3,
                epochs_max: 50,
                train_loss: 0.41234,
                val_accuracy: Some(0.9),
                share: 0.6,
                samples_per_s: 1234.4,
            }),
            "2026-12-03T13:04:29Z  epoch       3/50  loss 0.4123  accuracy 0.9000  share 60%  \
             1234 samples/s"
        );
        assert_eq!(
            line(JobEventKind::Running {
                epochs_done: 3,
                steps: 30,
                batches_per_epoch: 10,
                precision: Some(crate::device::Precision::Bf16),
            }),
            "2026-12-03T13:04:29Z  running     resumed after epoch 3 (step 30) in bf16, 10 steps \
             per epoch"
        );
        assert_eq!(
            line(JobEventKind::Updated {
                deadline: Some(None),
                target_accuracy: Some(Some(0.9)),
                epochs: None
            }),
            "2026-12-03T13:04:29Z  updated     deadline none, target 0.9"
        );
        assert_eq!(
            line(JobEventKind::Share {
                from: 0.3,
                to: 0.45
            }),
            "2026-12-03T13:04:29Z  share       30% -> 45%"
        );
    }

    #[test]
    fn an_end_says_how_the_job_fared() {
        let outcome = JobOutcome {
            deadline: Some(DeadlineOutcome::Met),
            target: Some(TargetOutcome::Reached),
        };
        assert_eq!(
            line(JobEventKind::Ended {
                state: JobState::Completed,
                stop_reason: None,
                error: None,
                outcome,
            }),
            "2026-12-03T13:04:29Z  completed   deadline met, target reached"
        );
        assert_eq!(
            line(JobEventKind::Ended {
                state: JobState::Failed,
                stop_reason: None,
                error: Some("cannot load data: no such file".into()),
                outcome: JobOutcome::default(),
            }),
            "2026-12-03T13:04:29Z  failed      cannot load data: no such file"
        );
        assert_eq!(
            line(JobEventKind::Loading),
            "2026-12-03T13:04:29Z  loading     its data"
        );
    }
}
