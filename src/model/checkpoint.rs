//! The checkpoint file format, version 1.
//!
//! ```text
//! offset  size  field
//! 0       8     magic "SETPOINT"
//! 8       4     format version, u32 little-endian (1)
//! 12      4     header length H in bytes, u32 LE
//! 16      8     total file length in bytes, u64 LE
//! 24      H     header: UTF-8 JSON (layers, tensor table with names and shapes, training state)
//! 24+H    …     tensor data: f32 little-endian, in the order of the tensor table
//! end-4   4     CRC-32 (IEEE) of every byte before it, u32 LE
//! ```
//!
//! Files are written atomically (temporary file, fsync, rename), so a reader sees the previous
//! checkpoint or the new one. A truncated file, a flipped bit, or a file from another model is
//! refused with an error that says which.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

mod decode;

use decode::{check_frame, malformed, read_params, read_sections, read_training, take_tensor};

use super::{MlpParams, OptimizerHost, format_layers};
use crate::data::Normalizer;

/// File magic.
pub(crate) const MAGIC: &[u8; 8] = b"SETPOINT";
/// The format version this build writes and reads.
pub(crate) const FORMAT_VERSION: u32 = 1;
const FIXED_LEN: usize = 24;
/// Largest header accepted; a larger value means a corrupted length field.
const MAX_HEADER_BYTES: usize = 64 << 20;

/// Why a checkpoint could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The file could not be read or written.
    #[error("checkpoint {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Not a checkpoint of this product.
    #[error("checkpoint {path}: not a setpoint checkpoint (bad magic bytes)")]
    BadMagic {
        /// The file.
        path: PathBuf,
    },
    /// Written by a format this build does not read.
    #[error(
        "checkpoint {path}: format version {found} is not supported (this build reads version {FORMAT_VERSION})"
    )]
    Version {
        /// The file.
        path: PathBuf,
        /// Version in the file.
        found: u32,
    },
    /// Shorter than its header says.
    #[error(
        "checkpoint {path}: truncated: the file has {actual} bytes, its header says {expected}"
    )]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Bytes the header promises.
        expected: u64,
        /// Bytes present.
        actual: u64,
    },
    /// The checksum does not match the contents.
    #[error(
        "checkpoint {path}: checksum mismatch (stored {stored:08x}, computed {computed:08x}): the file is corrupted"
    )]
    Checksum {
        /// The file.
        path: PathBuf,
        /// CRC in the file.
        stored: u32,
        /// CRC of the contents.
        computed: u32,
    },
    /// The header or tensor table is inconsistent.
    #[error("checkpoint {path}: {reason}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The checkpoint holds a different model than the one asked for.
    #[error(
        "checkpoint {path}: holds a model with layers {found}, but layers {expected} were asked for"
    )]
    WrongModel {
        /// The file.
        path: PathBuf,
        /// Layers in the file.
        found: String,
        /// Layers asked for.
        expected: String,
    },
}

/// Hyper-parameters of the run that wrote a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfigMeta {
    /// `adam` or `sgd`.
    pub optimizer: String,
    /// Learning rate.
    pub lr: f32,
    /// SGD momentum.
    pub momentum: f32,
    /// Adam β1.
    pub beta1: f32,
    /// Adam β2.
    pub beta2: f32,
    /// Adam ε.
    pub eps: f32,
    /// L2 weight decay.
    pub weight_decay: f32,
    /// Mini-batch size.
    pub batch_size: usize,
    /// Epoch limit.
    pub epochs: u32,
    /// Stop when validation accuracy reaches this.
    pub target_accuracy: Option<f64>,
    /// Fraction held out for validation.
    pub val_fraction: f64,
    /// Seed of initialisation, split and shuffles.
    pub seed: u64,
    /// Worker budget the run used; bit-identical resumption needs the same.
    pub workers: usize,
}

/// One finished epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// 1-based epoch number.
    pub epoch: u32,
    /// Mean training loss over the epoch.
    pub train_loss: f64,
    /// Training accuracy over the epoch.
    pub train_accuracy: f64,
    /// Validation accuracy after the epoch (None without a validation set).
    pub val_accuracy: Option<f64>,
    /// Optimiser steps taken by the end of the epoch.
    pub step: u64,
}

/// What the run was trained on, to refuse resuming on other data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataFingerprint {
    /// Path or spec.
    pub source: String,
    /// Training rows.
    pub train_rows: usize,
    /// Validation rows.
    pub val_rows: usize,
    /// Features per row.
    pub features: usize,
    /// CRC-32 of the training features and labels.
    pub crc: u32,
}

/// Where a training run stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingMeta {
    /// Hyper-parameters.
    pub config: TrainConfigMeta,
    /// The data.
    pub data: DataFingerprint,
    /// Optimiser steps taken.
    pub step: u64,
    /// Epochs completed.
    pub epochs_done: u32,
    /// Mini-batches of the current epoch already taken.
    pub batch_in_epoch: usize,
    /// Finished epochs.
    pub history: Vec<EpochRecord>,
    /// Why the run stopped, when it has.
    pub finished: Option<String>,
    /// Seconds spent training before this checkpoint, over all sessions.
    pub wall_s: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct TensorEntry {
    name: String,
    shape: Vec<usize>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Header {
    layers: Vec<usize>,
    tensors: Vec<TensorEntry>,
    training: Option<TrainingMeta>,
}

/// Everything a checkpoint holds.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    /// Model parameters.
    pub params: MlpParams,
    /// Input standardisation fitted on the training data.
    pub normalizer: Normalizer,
    /// Training state, for resumption (absent in an export of a model alone).
    pub training: Option<TrainingState>,
}

/// Training state that goes with the model in a checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainingState {
    /// Counters, history and hyper-parameters.
    pub meta: TrainingMeta,
    /// Optimiser state.
    pub optimizer: OptimizerHost,
    /// Per-row loss accumulators of the epoch in progress.
    pub loss_acc: Vec<f32>,
    /// Per-row correctness accumulators of the epoch in progress.
    pub correct_acc: Vec<f32>,
}

impl Checkpoint {
    /// Encodes the checkpoint.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut tensors: Vec<(String, Vec<usize>, &[f32])> = Vec::new();
        let layers = &self.params.layers;
        for l in 0..self.params.weights.len() {
            tensors.push((
                format!("w{l}"),
                vec![layers[l], layers[l + 1]],
                &self.params.weights[l],
            ));
            tensors.push((format!("b{l}"), vec![layers[l + 1]], &self.params.biases[l]));
        }
        tensors.push((
            "norm.mean".into(),
            vec![self.normalizer.mean.len()],
            &self.normalizer.mean,
        ));
        tensors.push((
            "norm.std".into(),
            vec![self.normalizer.std.len()],
            &self.normalizer.std,
        ));
        if let Some(t) = &self.training {
            for (s, slot) in t.optimizer.slots.iter().enumerate() {
                for (i, tensor) in slot.iter().enumerate() {
                    tensors.push((format!("opt{s}.{i}"), vec![tensor.len()], tensor));
                }
            }
            tensors.push(("acc.loss".into(), vec![t.loss_acc.len()], &t.loss_acc));
            tensors.push((
                "acc.correct".into(),
                vec![t.correct_acc.len()],
                &t.correct_acc,
            ));
        }
        let header = Header {
            layers: layers.clone(),
            tensors: tensors
                .iter()
                .map(|(name, shape, _)| TensorEntry {
                    name: name.clone(),
                    shape: shape.clone(),
                })
                .collect(),
            training: self.training.as_ref().map(|t| t.meta.clone()),
        };
        // Serialising plain structs of numbers and strings cannot fail.
        let header = serde_json::to_vec(&header).unwrap_or_default();
        let data_len: usize = tensors.iter().map(|(_, _, d)| d.len() * 4).sum();
        let total = FIXED_LEN + header.len() + data_len + 4;
        let mut out = Vec::with_capacity(total);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&(header.len() as u32).to_le_bytes());
        out.extend_from_slice(&(total as u64).to_le_bytes());
        out.extend_from_slice(&header);
        for (_, _, data) in &tensors {
            extend_f32_le(&mut out, data);
        }
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Writes the checkpoint atomically.
    pub fn save(&self, path: &Path) -> Result<(), CheckpointError> {
        crate::util::fsio::write_atomic(path, &self.to_bytes()).map_err(|source| {
            CheckpointError::Io {
                path: path.to_path_buf(),
                source,
            }
        })
    }

    /// Writes the checkpoint atomically to `path`, keeping the checkpoint it replaces as
    /// `previous` when that one is intact, so that a damaged latest file still leaves a good
    /// one to resume from. A crash leaves a whole checkpoint at `path` or, between the two
    /// renames, only at `previous`; a damaged old one is not kept, so `previous` stays good.
    pub(crate) fn save_keeping_previous(
        &self,
        path: &Path,
        previous: &Path,
    ) -> Result<(), CheckpointError> {
        let keep = match std::fs::read(path) {
            Ok(bytes) => match Self::from_bytes(&bytes, path) {
                Ok(_) => Some(previous),
                Err(e) => {
                    tracing::warn!("{e}; it is replaced and the previous checkpoint kept");
                    None
                }
            },
            Err(_) => None,
        };
        crate::util::fsio::write_atomic_keeping(path, &self.to_bytes(), keep).map_err(|source| {
            CheckpointError::Io {
                path: path.to_path_buf(),
                source,
            }
        })
    }

    /// Reads and verifies a checkpoint.
    pub fn load(path: &Path) -> Result<Self, CheckpointError> {
        let bytes = std::fs::read(path).map_err(|source| CheckpointError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_bytes(&bytes, path)
    }

    /// Decodes and verifies a checkpoint; `path` is used in messages.
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Self, CheckpointError> {
        let (header_len, body) = check_frame(bytes, path)?;
        let (header, mut tensors) = read_sections(body, header_len, path)?;
        let params = read_params(header.layers.clone(), &mut tensors, path)?;
        let features = params.layers[0];
        let normalizer = Normalizer {
            mean: take_tensor(&mut tensors, path, "norm.mean", &[features])?,
            std: take_tensor(&mut tensors, path, "norm.std", &[features])?,
        };
        let training = match header.training {
            None => None,
            Some(meta) => Some(read_training(meta, &params.layers, &mut tensors, path)?),
        };
        if let Some(name) = tensors.keys().min() {
            return Err(malformed(
                path,
                format!(
                    "tensor {name} is not part of this model (layers {})",
                    format_layers(&params.layers)
                ),
            ));
        }
        Ok(Checkpoint {
            params,
            normalizer,
            training,
        })
    }

    /// Refuses a checkpoint whose layers differ from `expected`.
    pub fn check_layers(&self, expected: &[usize], path: &Path) -> Result<(), CheckpointError> {
        if self.params.layers != expected {
            return Err(CheckpointError::WrongModel {
                path: path.to_path_buf(),
                found: format_layers(&self.params.layers),
                expected: format_layers(expected),
            });
        }
        Ok(())
    }
}

fn extend_f32_le(out: &mut Vec<u8>, data: &[f32]) {
    if cfg!(target_endian = "little") {
        out.extend_from_slice(bytemuck::cast_slice(data));
    } else {
        for v in data {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
}
