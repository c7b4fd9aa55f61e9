//! What defines a training run, and the optimiser defaults a run gets when it names none.

use std::path::PathBuf;

use super::TrainError;
use crate::device::{AdamParams, SgdParams};
use crate::model::Optimizer;
use crate::model::checkpoint::TrainConfigMeta;

/// Everything that defines a training run.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainSpec {
    /// Layer widths, input first.
    pub layers: Vec<usize>,
    /// Optimiser and hyper-parameters (Adam's `t` is ignored).
    pub optimizer: Optimizer,
    /// Mini-batch size.
    pub batch_size: usize,
    /// Epoch limit.
    pub epochs: u32,
    /// Stop once validation accuracy reaches this.
    pub target_accuracy: Option<f64>,
    /// Fraction of rows held out for validation.
    pub val_fraction: f64,
    /// Seed of the initial weights, the split and the shuffles.
    pub seed: u64,
    /// Where to write checkpoints.
    pub checkpoint: Option<PathBuf>,
    /// Write a checkpoint every this many steps (0: only at the end).
    pub checkpoint_every_steps: u64,
    /// The GEMMs' number format; none for the backend's default
    /// ([`crate::device::Backend::default_precision`]). The weights, optimiser state and
    /// checkpoints are f32 either way.
    pub precision: Option<crate::device::Precision>,
}

impl TrainSpec {
    /// A spec with the product's defaults: Adam at 1e-3, batch 64, 50 epochs, 20 %
    /// validation, seed 1.
    pub fn new(layers: Vec<usize>) -> Self {
        TrainSpec {
            layers,
            optimizer: Optimizer::Adam(default_adam(1e-3)),
            batch_size: 64,
            epochs: 50,
            target_accuracy: None,
            val_fraction: 0.2,
            seed: 1,
            checkpoint: None,
            checkpoint_every_steps: 0,
            precision: None,
        }
    }

    pub(super) fn check(&self) -> Result<(), TrainError> {
        crate::model::check_layers(&self.layers)?;
        let bad = |m: String| Err(TrainError::Spec(m));
        if self.batch_size == 0 || self.batch_size > 1 << 20 {
            return bad(format!(
                "batch size must be between 1 and 1048576, got {}",
                self.batch_size
            ));
        }
        if self.epochs == 0 {
            return bad("epochs must be at least 1".into());
        }
        if let Some(t) = self.target_accuracy
            && !(t > 0.0 && t <= 1.0)
        {
            return bad(format!("target accuracy must be in (0, 1], got {t}"));
        }
        if !(0.0..1.0).contains(&self.val_fraction) {
            return bad(format!(
                "validation fraction must be in [0, 1), got {}",
                self.val_fraction
            ));
        }
        let lr = match self.optimizer {
            Optimizer::Sgd(h) => {
                if !(0.0..1.0).contains(&h.momentum) {
                    return bad(format!("momentum must be in [0, 1), got {}", h.momentum));
                }
                h.lr
            }
            Optimizer::Adam(h) => h.lr,
        };
        if !(lr > 0.0 && lr.is_finite()) {
            return bad(format!("learning rate must be > 0, got {lr}"));
        }
        Ok(())
    }

    pub(super) fn meta(&self, workers: usize) -> TrainConfigMeta {
        let (lr, momentum, beta1, beta2, eps, weight_decay) = match self.optimizer {
            Optimizer::Sgd(h) => (h.lr, h.momentum, 0.0, 0.0, 0.0, h.weight_decay),
            Optimizer::Adam(h) => (h.lr, 0.0, h.beta1, h.beta2, h.eps, h.weight_decay),
        };
        TrainConfigMeta {
            optimizer: self.optimizer.name().to_string(),
            lr,
            momentum,
            beta1,
            beta2,
            eps,
            weight_decay,
            batch_size: self.batch_size,
            epochs: self.epochs,
            target_accuracy: self.target_accuracy,
            val_fraction: self.val_fraction,
            seed: self.seed,
            workers,
        }
    }

    /// The spec a checkpoint was written with (checkpoint path and interval unset).
    pub(crate) fn from_meta(layers: &[usize], m: &TrainConfigMeta) -> Result<Self, TrainError> {
        let optimizer = match m.optimizer.as_str() {
            "sgd" => Optimizer::Sgd(SgdParams {
                lr: m.lr,
                momentum: m.momentum,
                weight_decay: m.weight_decay,
            }),
            "adam" => Optimizer::Adam(AdamParams {
                lr: m.lr,
                beta1: m.beta1,
                beta2: m.beta2,
                eps: m.eps,
                weight_decay: m.weight_decay,
                t: 0,
            }),
            other => {
                return Err(TrainError::Spec(format!(
                    "unknown optimizer {other:?} (accepted: adam, sgd)"
                )));
            }
        };
        Ok(TrainSpec {
            layers: layers.to_vec(),
            optimizer,
            batch_size: m.batch_size,
            epochs: m.epochs,
            target_accuracy: m.target_accuracy,
            val_fraction: m.val_fraction,
            seed: m.seed,
            checkpoint: None,
            checkpoint_every_steps: 0,
            precision: None,
        })
    }
}

/// Adam with PyTorch's default moments and ε at learning rate `lr`.
pub fn default_adam(lr: f32) -> AdamParams {
    AdamParams {
        lr,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.0,
        t: 0,
    }
}

/// SGD with momentum at the defaults a job gets when its config gives none (learning rate,
/// momentum and weight decay as [`crate::config`] defines them).
pub fn default_sgd() -> SgdParams {
    use crate::config::{DEFAULT_MOMENTUM, DEFAULT_WEIGHT_DECAY, OptimizerKind};
    SgdParams {
        lr: OptimizerKind::Sgd.default_lr() as f32,
        momentum: DEFAULT_MOMENTUM as f32,
        weight_decay: DEFAULT_WEIGHT_DECAY as f32,
    }
}
