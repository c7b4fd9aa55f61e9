//! How a job fared against its set points: whether it met its deadline and whether it reached
//! its target accuracy. Shown in the job's view and its status row, and recorded in
//! `outcome.json` when the job ends, so a restart shows it as it was judged.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::JobState;
use crate::train::StopReason;

/// Why a job stopped, as its view and its record say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStopReason {
    /// Validation accuracy reached the target.
    TargetReached,
    /// The epoch limit was reached.
    EpochLimit,
    /// Its deadline passed and the node stopped it (`control.past_deadline = "stop"`).
    DeadlinePassed,
}

impl JobStopReason {
    /// The spelling of the view and of `outcome.json`.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStopReason::TargetReached => "target_reached",
            JobStopReason::EpochLimit => "epoch_limit",
            JobStopReason::DeadlinePassed => "deadline_passed",
        }
    }

    /// The reason `s` spells, if any.
    pub(crate) fn parse(s: &str) -> Option<Self> {
        [
            JobStopReason::TargetReached,
            JobStopReason::EpochLimit,
            JobStopReason::DeadlinePassed,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
    }
}

impl From<StopReason> for JobStopReason {
    fn from(r: StopReason) -> Self {
        match r {
            StopReason::TargetReached => JobStopReason::TargetReached,
            StopReason::EpochLimit => JobStopReason::EpochLimit,
        }
    }
}

/// A job against its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeadlineOutcome {
    /// It completed by its deadline.
    Met,
    /// The deadline passed before it ended (it may still be running, demoted to best-effort).
    Missed,
}

/// A job against its target accuracy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetOutcome {
    /// It completed because its validation accuracy reached the target.
    Reached,
    /// It completed at its epoch limit below the target.
    Missed,
}

/// How a job fared; each part is `None` while it is not settled (no deadline or target, a
/// deadline still ahead, a job still running, or one cancelled or failed before the deadline).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobOutcome {
    /// `met` or `missed`.
    #[serde(default)]
    pub deadline: Option<DeadlineOutcome>,
    /// `reached` or `missed`.
    #[serde(default)]
    pub target: Option<TargetOutcome>,
}

/// What a job's outcome is judged from.
#[derive(Debug, Clone, Copy)]
pub(crate) struct OutcomeFacts {
    pub state: JobState,
    pub deadline: Option<SystemTime>,
    pub target: Option<f64>,
    pub finished_at: Option<SystemTime>,
    pub stop_reason: Option<StopReason>,
    pub now: SystemTime,
}

impl JobOutcome {
    /// Judges a job: the deadline is missed once it passes before the job ends, met when the
    /// job completed by it; the target is reached or missed when the job completed (at its
    /// target, or at its epoch limit).
    pub(crate) fn judge(f: &OutcomeFacts) -> JobOutcome {
        let deadline = f.deadline.and_then(|d| {
            let end = if f.state.is_terminal() {
                f.finished_at?
            } else {
                f.now
            };
            if end > d {
                Some(DeadlineOutcome::Missed)
            } else {
                (f.state == JobState::Completed).then_some(DeadlineOutcome::Met)
            }
        });
        let target = match (f.target, f.state, f.stop_reason) {
            (Some(_), JobState::Completed, Some(StopReason::TargetReached)) => {
                Some(TargetOutcome::Reached)
            }
            (Some(_), JobState::Completed, Some(StopReason::EpochLimit)) => {
                Some(TargetOutcome::Missed)
            }
            _ => None,
        };
        JobOutcome { deadline, target }
    }

    /// The outcome in words (`deadline missed, target reached`); None when nothing is settled.
    pub fn describe(&self) -> Option<String> {
        let parts: Vec<&str> = [
            self.deadline.map(|d| match d {
                DeadlineOutcome::Met => "deadline met",
                DeadlineOutcome::Missed => "deadline missed",
            }),
            self.target.map(|t| match t {
                TargetOutcome::Reached => "target reached",
                TargetOutcome::Missed => "target missed",
            }),
        ]
        .into_iter()
        .flatten()
        .collect();
        (!parts.is_empty()).then(|| parts.join(", "))
    }

    /// True once the deadline has been missed.
    pub fn deadline_missed(&self) -> bool {
        self.deadline == Some(DeadlineOutcome::Missed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn facts(state: JobState) -> OutcomeFacts {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        OutcomeFacts {
            state,
            deadline: Some(t0 + Duration::from_secs(60)),
            target: Some(0.9),
            finished_at: None,
            stop_reason: None,
            now: t0,
        }
    }

    #[test]
    fn a_running_job_misses_its_deadline_once_it_passes() {
        let mut f = facts(JobState::Running);
        assert_eq!(JobOutcome::judge(&f), JobOutcome::default());
        f.now += Duration::from_secs(61);
        let o = JobOutcome::judge(&f);
        assert_eq!(o.deadline, Some(DeadlineOutcome::Missed));
        assert_eq!(o.target, None, "not settled while it runs");
        assert_eq!(o.describe().as_deref(), Some("deadline missed"));
    }

    #[test]
    fn a_completed_job_is_judged_by_when_and_why_it_stopped() {
        let mut f = facts(JobState::Completed);
        f.finished_at = Some(f.now + Duration::from_secs(30));
        f.stop_reason = Some(StopReason::TargetReached);
        let o = JobOutcome::judge(&f);
        assert_eq!(
            o.describe().as_deref(),
            Some("deadline met, target reached")
        );
        f.finished_at = Some(f.now + Duration::from_secs(90));
        f.stop_reason = Some(StopReason::EpochLimit);
        let o = JobOutcome::judge(&f);
        assert_eq!(
            o.describe().as_deref(),
            Some("deadline missed, target missed")
        );
        let json = serde_json::to_value(o).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"deadline": "missed", "target": "missed"})
        );
        assert_eq!(serde_json::from_value::<JobOutcome>(json).unwrap(), o);
        // Without a deadline or target, nothing to judge.
        f.deadline = None;
        f.target = None;
        assert_eq!(JobOutcome::judge(&f).describe(), None);
    }

    #[test]
    fn stop_reasons_are_spelled_alike_everywhere() {
        for r in [
            JobStopReason::TargetReached,
            JobStopReason::EpochLimit,
            JobStopReason::DeadlinePassed,
        ] {
            assert_eq!(serde_json::to_value(r).unwrap(), r.as_str());
            assert_eq!(JobStopReason::parse(r.as_str()), Some(r));
        }
        for r in [StopReason::TargetReached, StopReason::EpochLimit] {
            assert_eq!(JobStopReason::from(r).as_str(), r.as_str());
        }
    }

    #[test]
    fn a_job_cancelled_before_its_deadline_neither_met_nor_missed_it() {
        let mut f = facts(JobState::Cancelled);
        f.finished_at = Some(f.now + Duration::from_secs(10));
        assert_eq!(JobOutcome::judge(&f), JobOutcome::default());
        f.finished_at = Some(f.now + Duration::from_secs(70));
        assert!(JobOutcome::judge(&f).deadline_missed());
    }
}
