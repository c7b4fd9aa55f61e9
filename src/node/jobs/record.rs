//! The record of how a job ended (`outcome.json` in its directory): written when the job ends,
//! so that a restart lists it as it ended instead of resuming it, and read back to restore it.

use std::path::PathBuf;
use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};

use super::{Job, JobOutcome, JobState, JobStopReason};
use crate::train::StopReason;
use crate::util::sync::lock;

/// Name of the record of how a job ended, in its directory.
pub(crate) const OUTCOME_RECORD: &str = "outcome.json";

/// How a job ended, as recorded in `outcome.json`: a restart lists it as it ended instead of
/// resuming it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct OutcomeRecord {
    /// `completed`, `failed` or `cancelled`.
    #[serde(default)]
    pub state: Option<JobState>,
    /// RFC 3339.
    #[serde(default)]
    pub finished_at: Option<String>,
    /// `target_reached` or `epoch_limit` for a completed job, `deadline_passed` for one
    /// stopped at its deadline.
    #[serde(default)]
    pub stop_reason: Option<String>,
    /// Why it failed.
    #[serde(default)]
    pub error: Option<String>,
    /// Epochs finished.
    #[serde(default)]
    pub epochs_done: Option<u64>,
    /// Optimiser steps taken.
    #[serde(default)]
    pub steps: Option<u64>,
    /// How it fared against its deadline and target, as judged when it ended (absent from
    /// records written before outcomes were recorded: judged again from the rest).
    #[serde(default)]
    pub outcome: Option<JobOutcome>,
}

/// An outcome record whose state is not one a job ends in.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("unknown final state {:?}", .0.map(|s| format!("{s:?}").to_lowercase()))]
pub(crate) struct UnknownFinalState(pub Option<JobState>);

impl Job {
    /// Path of the record of how the job ended (absent while it can still run).
    pub(crate) fn outcome_path(&self) -> PathBuf {
        self.dir.join(OUTCOME_RECORD)
    }

    /// Writes how the job ended, atomically, so that a restart shows it ended instead of
    /// resuming it. Not for a shutdown's interruption.
    pub(super) fn record_outcome(&self, state: JobState) {
        if self.interrupted.load(Ordering::Acquire) {
            return;
        }
        let p = lock(&self.progress).clone();
        let record = OutcomeRecord {
            state: Some(state),
            finished_at: p.finished_at.map(crate::config::format_rfc3339),
            stop_reason: self.stop_reason(&p).map(|r| r.as_str().to_string()),
            error: p.error,
            epochs_done: Some(u64::from(p.epochs_done)),
            steps: Some(p.steps),
            outcome: p.outcome,
        };
        let written = serde_json::to_vec(&record)
            .map_err(std::io::Error::other)
            .and_then(|bytes| crate::util::fsio::write_atomic(&self.outcome_path(), &bytes));
        if let Err(e) = written {
            tracing::error!(job = %self.name, "cannot record the job's outcome: {e}");
        }
    }

    /// Marks a job restored from the state dir as ended the way `record` says.
    pub(crate) fn restore_outcome(&self, record: &OutcomeRecord) -> Result<(), UnknownFinalState> {
        let state = match record.state {
            Some(s) if s.is_terminal() => s,
            other => return Err(UnknownFinalState(other)),
        };
        {
            let mut p = lock(&self.progress);
            p.finished_at = record
                .finished_at
                .as_deref()
                .and_then(|t| crate::config::parse_rfc3339(t).ok());
            let reason = record.stop_reason.as_deref().and_then(JobStopReason::parse);
            p.stop_reason = match reason {
                Some(JobStopReason::TargetReached) => Some(StopReason::TargetReached),
                Some(JobStopReason::EpochLimit) => Some(StopReason::EpochLimit),
                Some(JobStopReason::DeadlinePassed) | None => None,
            };
            if reason == Some(JobStopReason::DeadlinePassed) {
                self.stopped_at_deadline.store(true, Ordering::Release);
            }
            p.outcome = record.outcome;
            p.error = record.error.clone();
            p.epochs_done = record.epochs_done.unwrap_or(0) as u32;
            p.steps = record.steps.unwrap_or(0);
            let ckpt = self.checkpoint_path();
            p.checkpoint = ckpt.exists().then_some(ckpt);
        }
        self.set_state(state);
        Ok(())
    }
}
