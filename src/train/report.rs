//! What a run tells its caller: progress events, why it stopped, its final report.

use std::path::PathBuf;

use crate::model::checkpoint::EpochRecord;

/// Something that happened during a run, for progress displays.
#[derive(Debug, Clone, PartialEq)]
pub enum TrainEvent {
    /// One optimiser step finished.
    Step {
        /// Steps so far.
        step: u64,
        /// The epoch in progress (1-based).
        epoch: u32,
        /// Mini-batches of this epoch done.
        batch: usize,
        /// Mini-batches per epoch.
        batches_per_epoch: usize,
    },
    /// An epoch finished and was evaluated.
    Epoch(EpochRecord),
    /// A checkpoint was written.
    Checkpoint {
        /// Where.
        path: PathBuf,
        /// At which step.
        step: u64,
    },
}

/// Why a run stopped; serde spells it as [`StopReason::as_str`] does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// Validation accuracy reached the target.
    TargetReached,
    /// The epoch limit was reached.
    EpochLimit,
}

impl StopReason {
    /// Name used in reports and checkpoints.
    pub fn as_str(&self) -> &'static str {
        match self {
            StopReason::TargetReached => "target_reached",
            StopReason::EpochLimit => "epoch_limit",
        }
    }

    pub(super) fn parse(s: &str) -> Option<Self> {
        match s {
            "target_reached" => Some(StopReason::TargetReached),
            "epoch_limit" => Some(StopReason::EpochLimit),
            _ => None,
        }
    }
}

/// The outcome of a run.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TrainReport {
    /// Epochs completed.
    pub epochs: u32,
    /// Optimiser steps taken.
    pub steps: u64,
    /// Mean training loss of the last epoch.
    pub train_loss: Option<f64>,
    /// Training accuracy of the last epoch.
    pub train_accuracy: Option<f64>,
    /// Validation accuracy after the last epoch.
    pub val_accuracy: Option<f64>,
    /// Why it stopped (`target_reached`, `epoch_limit`), or None while unfinished.
    pub stop_reason: Option<String>,
    /// Seconds of training in this session.
    pub wall_s: f64,
    /// Training samples per second in this session.
    pub samples_per_s: f64,
    /// The last checkpoint written, if any.
    pub checkpoint: Option<PathBuf>,
    /// Every finished epoch.
    pub history: Vec<EpochRecord>,
}

#[cfg(test)]
mod tests {
    use super::StopReason;

    #[test]
    fn serde_spells_a_stop_reason_as_its_name() {
        for r in [StopReason::TargetReached, StopReason::EpochLimit] {
            let text = serde_json::to_string(&r).unwrap();
            assert_eq!(text, format!("\"{}\"", r.as_str()));
            assert_eq!(serde_json::from_str::<StopReason>(&text).unwrap(), r);
            assert_eq!(StopReason::parse(r.as_str()), Some(r));
        }
    }
}
