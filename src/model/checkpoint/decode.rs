//! Decoding a checkpoint file: checking its frame (magic, version, length, checksum),
//! cutting its data into the tensors its header lists, and taking the model and training
//! state out of them, each with an error that names what is wrong.

use std::path::Path;

use super::{
    CheckpointError, FIXED_LEN, FORMAT_VERSION, Header, MAGIC, MAX_HEADER_BYTES, TrainingMeta,
    TrainingState,
};
use crate::model::{MlpParams, OptimizerHost};

/// The tensors of a checkpoint by name: shape and values, each taken out once.
pub(super) type TensorTable = std::collections::HashMap<String, (Vec<usize>, Vec<f32>)>;

/// A [`CheckpointError::Malformed`] for the file at `path`.
pub(super) fn malformed(path: &Path, reason: String) -> CheckpointError {
    CheckpointError::Malformed {
        path: path.to_path_buf(),
        reason,
    }
}

/// Checks the fixed fields, the length and the checksum of a checkpoint; returns the header
/// length and the bytes the checksum covers.
pub(super) fn check_frame<'a>(
    bytes: &'a [u8],
    path: &Path,
) -> Result<(usize, &'a [u8]), CheckpointError> {
    let p = || path.to_path_buf();
    // A file cut short inside the magic is a truncated checkpoint, not another format.
    if bytes.len() < MAGIC.len() && MAGIC.starts_with(bytes) {
        return Err(CheckpointError::Truncated {
            path: p(),
            expected: FIXED_LEN as u64,
            actual: bytes.len() as u64,
        });
    }
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return Err(CheckpointError::BadMagic { path: p() });
    }
    if bytes.len() < FIXED_LEN {
        return Err(CheckpointError::Truncated {
            path: p(),
            expected: FIXED_LEN as u64,
            actual: bytes.len() as u64,
        });
    }
    let version = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    if version != FORMAT_VERSION {
        return Err(CheckpointError::Version {
            path: p(),
            found: version,
        });
    }
    let header_len = u32::from_le_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]) as usize;
    let mut total = [0u8; 8];
    total.copy_from_slice(&bytes[16..24]);
    let total = u64::from_le_bytes(total);
    if (bytes.len() as u64) < total {
        return Err(CheckpointError::Truncated {
            path: p(),
            expected: total,
            actual: bytes.len() as u64,
        });
    }
    if (bytes.len() as u64) > total {
        return Err(malformed(
            path,
            format!(
                "{} bytes of trailing data after the {total} the header describes",
                bytes.len() as u64 - total
            ),
        ));
    }
    let total = total as usize;
    if total < FIXED_LEN + 4 {
        return Err(malformed(
            path,
            format!("length field {total} is too small"),
        ));
    }
    let body = &bytes[..total - 4];
    let stored = u32::from_le_bytes([
        bytes[total - 4],
        bytes[total - 3],
        bytes[total - 2],
        bytes[total - 1],
    ]);
    let computed = crc32fast::hash(body);
    if stored != computed {
        return Err(CheckpointError::Checksum {
            path: p(),
            stored,
            computed,
        });
    }
    Ok((header_len, body))
}

/// Parses the JSON header and cuts the tensor data into the tensors its table lists.
pub(super) fn read_sections(
    body: &[u8],
    header_len: usize,
    path: &Path,
) -> Result<(Header, TensorTable), CheckpointError> {
    if header_len > MAX_HEADER_BYTES || FIXED_LEN + header_len > body.len() {
        return Err(malformed(
            path,
            format!("header length {header_len} does not fit in the file"),
        ));
    }
    let header: Header = serde_json::from_slice(&body[FIXED_LEN..FIXED_LEN + header_len])
        .map_err(|e| malformed(path, format!("header is not valid: {e}")))?;
    let mut data = &body[FIXED_LEN + header_len..];
    let mut tensors = TensorTable::new();
    for t in &header.tensors {
        let n = t
            .shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .filter(|n| n.checked_mul(4).is_some_and(|b| b <= data.len()))
            .ok_or_else(|| {
                malformed(
                    path,
                    format!(
                        "tensor {} of shape {:?} does not fit in the file",
                        t.name, t.shape
                    ),
                )
            })?;
        let (head, rest) = data.split_at(n * 4);
        if tensors
            .insert(t.name.clone(), (t.shape.clone(), read_f32_le(head)))
            .is_some()
        {
            return Err(malformed(
                path,
                format!("tensor {} is listed twice", t.name),
            ));
        }
        data = rest;
    }
    if !data.is_empty() {
        return Err(malformed(
            path,
            format!(
                "{} bytes of tensor data are not in the tensor table",
                data.len()
            ),
        ));
    }
    Ok((header, tensors))
}

/// Takes tensor `name` out of the table. Each tensor must have exactly the shape the model
/// gives it, so a damaged table cannot pass off one tensor's values as another's.
pub(super) fn take_tensor(
    tensors: &mut TensorTable,
    path: &Path,
    name: &str,
    shape: &[usize],
) -> Result<Vec<f32>, CheckpointError> {
    let (found, values) = tensors
        .remove(name)
        .ok_or_else(|| malformed(path, format!("tensor {name} is missing")))?;
    if found != shape {
        return Err(malformed(
            path,
            format!("tensor {name} has shape {found:?}, the model needs {shape:?}"),
        ));
    }
    Ok(values)
}

/// Takes the weights and biases of a model of widths `layers` out of the table.
pub(super) fn read_params(
    layers: Vec<usize>,
    tensors: &mut TensorTable,
    path: &Path,
) -> Result<MlpParams, CheckpointError> {
    crate::model::check_layers(&layers).map_err(|e| malformed(path, format!("model: {e}")))?;
    let mut weights = Vec::new();
    let mut biases = Vec::new();
    for l in 0..layers.len() - 1 {
        let (i, o) = (layers[l], layers[l + 1]);
        weights.push(take_tensor(tensors, path, &format!("w{l}"), &[i, o])?);
        biases.push(take_tensor(tensors, path, &format!("b{l}"), &[o])?);
    }
    let params = MlpParams {
        layers,
        weights,
        biases,
    };
    params
        .validate()
        .map_err(|e| malformed(path, format!("model: {e}")))?;
    Ok(params)
}

/// Takes the optimizer state and metric accumulators of a run described by `meta` out of
/// the table.
pub(super) fn read_training(
    meta: TrainingMeta,
    layers: &[usize],
    tensors: &mut TensorTable,
    path: &Path,
) -> Result<TrainingState, CheckpointError> {
    let slots_n = match meta.config.optimizer.as_str() {
        "sgd" => 1,
        "adam" => 2,
        other => return Err(malformed(path, format!("unknown optimizer {other:?}"))),
    };
    let sizes: Vec<usize> = layers
        .windows(2)
        .flat_map(|p| [p[0] * p[1], p[1]])
        .collect();
    let mut slots = Vec::new();
    for s in 0..slots_n {
        let mut slot = Vec::new();
        for (i, &n) in sizes.iter().enumerate() {
            slot.push(take_tensor(tensors, path, &format!("opt{s}.{i}"), &[n])?);
        }
        slots.push(slot);
    }
    let batch = meta.config.batch_size;
    Ok(TrainingState {
        optimizer: OptimizerHost {
            step: meta.step,
            slots,
        },
        loss_acc: take_tensor(tensors, path, "acc.loss", &[batch])?,
        correct_acc: take_tensor(tensors, path, "acc.correct", &[batch])?,
        meta,
    })
}

fn read_f32_le(bytes: &[u8]) -> Vec<f32> {
    let mut out = vec![0f32; bytes.len() / 4];
    if cfg!(target_endian = "little") {
        // The destination is f32-aligned; the source bytes need not be.
        bytemuck::cast_slice_mut::<f32, u8>(&mut out).copy_from_slice(bytes);
    } else {
        for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
            *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        }
    }
    out
}
