//! Why training could not start or go on.

use std::path::PathBuf;

use crate::model::ModelError;
use crate::model::checkpoint::CheckpointError;
use crate::model::footprint::TooLarge;

/// Why training could not start or go on.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The data does not fit the model or the run.
    #[error("{0}")]
    Data(String),
    /// A hyper-parameter is out of range.
    #[error("{0}")]
    Spec(String),
    /// The checkpoint cannot be resumed with this data or these settings.
    #[error("cannot resume from {path}: {reason}")]
    Resume {
        /// The checkpoint.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Reading or writing a checkpoint failed.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// A model or device operation failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The model would not fit in the memory its device has left.
    #[error(transparent)]
    TooLarge(#[from] TooLarge),
    /// The loss stopped being a number.
    #[error("training diverged at epoch {epoch}: the loss is {loss} (try a lower learning rate)")]
    Diverged {
        /// The epoch.
        epoch: u32,
        /// The loss.
        loss: f64,
    },
}

impl From<crate::device::DeviceError> for TrainError {
    fn from(e: crate::device::DeviceError) -> Self {
        TrainError::Model(ModelError::Device(e))
    }
}

impl TrainError {
    /// True when the error comes from what the user gave (exit code 2), false for failures
    /// while running (exit code 1).
    pub fn is_input(&self) -> bool {
        match self {
            TrainError::Data(_)
            | TrainError::Spec(_)
            | TrainError::Resume { .. }
            | TrainError::TooLarge { .. } => true,
            TrainError::Checkpoint(e) => !matches!(e, CheckpointError::Io { .. }),
            TrainError::Model(e) => !matches!(e, ModelError::Device(_)),
            TrainError::Diverged { .. } => false,
        }
    }
}
