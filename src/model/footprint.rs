//! How much memory a model needs on its device, computed from its shape before anything is
//! allocated, so that admission can refuse what does not fit instead of the allocator
//! aborting the process.
//!
//! The figures follow what the model code allocates: parameters (`Mlp`), their gradients
//! (`Grads`), the optimiser state (`OptimizerState`: one tensor set for SGD's velocity, two
//! for Adam's moments), the workspace (`Workspace`: activations of every layer after the
//! input for a full batch, the same again for the deltas when training, and the per-row loss
//! and accuracy accumulators), and the batch's inputs and labels. A host copy of the
//! parameters (checkpoints, publishing) is counted too.

use serde::Serialize;

use super::Optimizer;

/// What a model is for, which decides what it allocates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Purpose {
    /// Training with `optimizer` on batches of `batch` rows.
    Training {
        /// Rows per step.
        batch: usize,
        /// The optimiser, whose state is counted.
        optimizer: Optimizer,
    },
    /// Serving batches of up to `batch` rows.
    Inference {
        /// Largest batch.
        batch: usize,
    },
}

/// Bytes a model needs, by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Footprint {
    /// Weights and biases.
    pub params_bytes: u64,
    /// Their gradients (training).
    pub grads_bytes: u64,
    /// Optimiser state (training).
    pub optimizer_bytes: u64,
    /// Activations, deltas and accumulators at the batch size.
    pub workspace_bytes: u64,
    /// The batch's inputs and labels.
    pub batch_bytes: u64,
    /// A host copy of the parameters.
    pub host_copy_bytes: u64,
    /// All of the above.
    pub total_bytes: u64,
}

/// The footprint of an MLP of `layers` for `purpose`, or `None` when it does not even fit in
/// 64-bit arithmetic (which no device holds either).
pub fn footprint(layers: &[usize], purpose: Purpose) -> Option<Footprint> {
    const F32: u64 = 4;
    let params = layers.windows(2).try_fold(0u64, |acc, p| {
        let (i, o) = (p[0] as u64, p[1] as u64);
        acc.checked_add(i.checked_mul(o)?.checked_add(o)?)
    })?;
    let widths: u64 = layers
        .iter()
        .skip(1)
        .try_fold(0u64, |a, &w| a.checked_add(w as u64))?;
    let inputs = *layers.first()? as u64;
    let (batch, training, opt_sets) = match purpose {
        Purpose::Training { batch, optimizer } => {
            let sets = match optimizer {
                Optimizer::Sgd(_) => 1,
                Optimizer::Adam(_) => 2,
            };
            (batch as u64, true, sets)
        }
        Purpose::Inference { batch } => (batch as u64, false, 0),
    };
    let params_bytes = params.checked_mul(F32)?;
    let grads_bytes = if training { params_bytes } else { 0 };
    let optimizer_bytes = params_bytes.checked_mul(opt_sets)?;
    let per_row = if training {
        // Activations and deltas of each layer, and the loss and accuracy accumulators.
        widths.checked_mul(2)?.checked_add(2)?
    } else {
        widths
    };
    let workspace_bytes = batch.checked_mul(per_row)?.checked_mul(F32)?;
    let batch_bytes = batch
        .checked_mul(inputs.checked_add(1)?)?
        .checked_mul(F32)?;
    let host_copy_bytes = params_bytes;
    let total_bytes = [
        grads_bytes,
        optimizer_bytes,
        workspace_bytes,
        batch_bytes,
        host_copy_bytes,
    ]
    .iter()
    .try_fold(params_bytes, |a, &b| a.checked_add(b))?;
    Some(Footprint {
        params_bytes,
        grads_bytes,
        optimizer_bytes,
        workspace_bytes,
        batch_bytes,
        host_copy_bytes,
        total_bytes,
    })
}

/// A model that would not fit in the memory its device has left.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "the model needs about {} ({}) but {} has {} left; use fewer or narrower layers or a \
     smaller batch",
    human_bytes(footprint.total_bytes),
    footprint.detail(),
    device,
    human_bytes(*available_bytes)
)]
pub struct TooLarge {
    /// What it would allocate.
    pub footprint: Footprint,
    /// The device.
    pub device: String,
    /// What is left there.
    pub available_bytes: u64,
}

/// Refuses `layers` for `purpose` when what they would allocate exceeds `available` bytes
/// on `device` (nothing is refused when `available` is unknown).
pub(crate) fn check_fit(
    layers: &[usize],
    purpose: Purpose,
    device: &str,
    available: Option<u64>,
) -> Result<(), TooLarge> {
    let Some(available_bytes) = available else {
        return Ok(());
    };
    let footprint = footprint(layers, purpose).unwrap_or(Footprint {
        params_bytes: u64::MAX,
        grads_bytes: 0,
        optimizer_bytes: 0,
        workspace_bytes: 0,
        batch_bytes: 0,
        host_copy_bytes: 0,
        total_bytes: u64::MAX,
    });
    if footprint.total_bytes <= available_bytes {
        return Ok(());
    }
    Err(TooLarge {
        footprint,
        device: device.to_string(),
        available_bytes,
    })
}

impl Footprint {
    /// `parameters 16.0 GiB, gradients …` for messages: each nonzero part.
    pub fn detail(&self) -> String {
        [
            ("parameters", self.params_bytes),
            ("gradients", self.grads_bytes),
            ("optimizer state", self.optimizer_bytes),
            ("activations", self.workspace_bytes),
            ("batch", self.batch_bytes),
            ("host copy", self.host_copy_bytes),
        ]
        .iter()
        .filter(|(_, b)| *b > 0)
        .map(|(n, b)| format!("{n} {}", human_bytes(*b)))
        .collect::<Vec<_>>()
        .join(", ")
    }
}

/// `1.5 GiB`, `12.0 MiB`, `512 B`: a size for messages.
pub(crate) fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::{AdamParams, SgdParams};

    fn adam() -> Optimizer {
        Optimizer::Adam(AdamParams {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            t: 1,
        })
    }

    #[test]
    fn counts_what_the_model_code_allocates() {
        // 64-128-10: 64·128 + 128 + 128·10 + 10 = 9,610 parameters.
        let f = footprint(
            &[64, 128, 10],
            Purpose::Training {
                batch: 32,
                optimizer: adam(),
            },
        )
        .unwrap();
        assert_eq!(f.params_bytes, 9_610 * 4);
        assert_eq!(f.grads_bytes, f.params_bytes);
        assert_eq!(f.optimizer_bytes, 2 * f.params_bytes);
        // 32 rows × (2 × (128 + 10) + 2) floats.
        assert_eq!(f.workspace_bytes, 32 * 278 * 4);
        assert_eq!(f.batch_bytes, 32 * 65 * 4);
        assert_eq!(f.total_bytes, 9_610 * 4 * 5 + 32 * 278 * 4 + 32 * 65 * 4);
        let sgd = Optimizer::Sgd(SgdParams {
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 0.0,
        });
        let s = footprint(
            &[64, 128, 10],
            Purpose::Training {
                batch: 32,
                optimizer: sgd,
            },
        )
        .unwrap();
        assert_eq!(s.optimizer_bytes, f.params_bytes);
        let i = footprint(&[64, 128, 10], Purpose::Inference { batch: 32 }).unwrap();
        assert_eq!((i.grads_bytes, i.optimizer_bytes), (0, 0));
        assert_eq!(i.workspace_bytes, 32 * 138 * 4);
    }

    #[test]
    fn the_request_that_aborted_the_daemon_is_measured_not_allocated() {
        // 64-65536-65536-10 with Adam: over 64 GiB before any activation.
        let f = footprint(
            &[64, 65_536, 65_536, 10],
            Purpose::Training {
                batch: 32,
                optimizer: adam(),
            },
        )
        .unwrap();
        assert!(f.total_bytes > 64 << 30, "{}", human_bytes(f.total_bytes));
        assert_eq!(
            footprint(&[usize::MAX, usize::MAX], Purpose::Inference { batch: 1 }),
            None
        );
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(3 << 29), "1.5 GiB");
    }
}
