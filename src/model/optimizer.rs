//! Optimisers (SGD with momentum, Adam) and their state on the backend and on the host.

use super::ModelError;
use crate::device::{AdamParams, Backend, DeviceError, SgdParams};

/// Which optimiser and its hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Optimizer {
    /// SGD with momentum.
    Sgd(SgdParams),
    /// Adam.
    Adam(AdamParams),
}

impl Optimizer {
    /// The name used on the command line and in checkpoints.
    pub fn name(&self) -> &'static str {
        match self {
            Optimizer::Sgd(_) => "sgd",
            Optimizer::Adam(_) => "adam",
        }
    }
}

/// As a user writes it: `adam (lr 0.001, betas 0.9/0.999, eps 1e-8, weight decay 0)`,
/// `sgd (lr 0.01, momentum 0.9, weight decay 0)`.
impl std::fmt::Display for Optimizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Optimizer::Sgd(h) => write!(
                f,
                "sgd (lr {}, momentum {}, weight decay {})",
                h.lr, h.momentum, h.weight_decay
            ),
            Optimizer::Adam(h) => write!(
                f,
                "adam (lr {}, betas {}/{}, eps {:e}, weight decay {})",
                h.lr, h.beta1, h.beta2, h.eps, h.weight_decay
            ),
        }
    }
}

pub(super) enum OptimizerKindState<B: Backend> {
    Sgd {
        velocity: Vec<B::Buf>,
        hp: SgdParams,
    },
    Adam {
        m: Vec<B::Buf>,
        v: Vec<B::Buf>,
        hp: AdamParams,
    },
}

/// Optimiser state on the backend: one slot per parameter tensor, in the order weight 0,
/// bias 0, weight 1, bias 1, …
pub struct OptimizerState<B: Backend> {
    pub(super) step: u64,
    pub(super) kind: OptimizerKindState<B>,
}

/// Host copy of the optimiser state: `slots[s][t]` is slot `s` (velocity for SGD; m then v
/// for Adam) of tensor `t` in the order weight 0, bias 0, weight 1, …
#[derive(Debug, Clone, PartialEq)]
pub struct OptimizerHost {
    /// Updates applied so far.
    pub step: u64,
    /// State tensors.
    pub slots: Vec<Vec<Vec<f32>>>,
}

fn tensor_sizes(layers: &[usize]) -> Vec<usize> {
    layers
        .windows(2)
        .flat_map(|p| [p[0] * p[1], p[1]])
        .collect()
}

impl<B: Backend> OptimizerState<B> {
    /// Zero state for `layers`.
    pub fn new(backend: &B, layers: &[usize], opt: Optimizer) -> Result<Self, ModelError> {
        let zeros = |backend: &B| -> Result<Vec<B::Buf>, DeviceError> {
            tensor_sizes(layers)
                .into_iter()
                .map(|n| backend.alloc(n))
                .collect()
        };
        let kind = match opt {
            Optimizer::Sgd(hp) => OptimizerKindState::Sgd {
                velocity: zeros(backend)?,
                hp,
            },
            Optimizer::Adam(hp) => OptimizerKindState::Adam {
                m: zeros(backend)?,
                v: zeros(backend)?,
                hp,
            },
        };
        Ok(OptimizerState { step: 0, kind })
    }

    /// Restores state from a host copy.
    pub(crate) fn from_host(
        backend: &B,
        layers: &[usize],
        opt: Optimizer,
        host: &OptimizerHost,
    ) -> Result<Self, ModelError> {
        let sizes = tensor_sizes(layers);
        let want_slots = match opt {
            Optimizer::Sgd(_) => 1,
            Optimizer::Adam(_) => 2,
        };
        let bad = |reason: String| ModelError::Params {
            layers: layers.to_vec(),
            reason,
        };
        if host.slots.len() != want_slots {
            return Err(bad(format!(
                "optimizer {} needs {want_slots} state slots, found {}",
                opt.name(),
                host.slots.len()
            )));
        }
        let mut bufs = Vec::new();
        for slot in &host.slots {
            if slot.len() != sizes.len() || slot.iter().zip(&sizes).any(|(t, &n)| t.len() != n) {
                return Err(bad("optimizer state tensors have the wrong sizes".into()));
            }
            bufs.push(
                slot.iter()
                    .map(|t| backend.upload(t))
                    .collect::<Result<Vec<_>, _>>()?,
            );
        }
        let kind = match opt {
            Optimizer::Sgd(hp) => OptimizerKindState::Sgd {
                velocity: bufs.remove(0),
                hp,
            },
            Optimizer::Adam(hp) => {
                let m = bufs.remove(0);
                let v = bufs.remove(0);
                OptimizerKindState::Adam { m, v, hp }
            }
        };
        Ok(OptimizerState {
            step: host.step,
            kind,
        })
    }

    /// Host copy of the state.
    pub(crate) fn to_host(&self, backend: &B) -> Result<OptimizerHost, ModelError> {
        let read = |bufs: &Vec<B::Buf>| -> Result<Vec<Vec<f32>>, DeviceError> {
            bufs.iter()
                .map(|b| {
                    let mut v = vec![0.0; backend.len(b)];
                    backend.read(b, &mut v)?;
                    Ok(v)
                })
                .collect()
        };
        let slots = match &self.kind {
            OptimizerKindState::Sgd { velocity, .. } => vec![read(velocity)?],
            OptimizerKindState::Adam { m, v, .. } => vec![read(m)?, read(v)?],
        };
        Ok(OptimizerHost {
            step: self.step,
            slots,
        })
    }

    /// Updates applied so far.
    pub fn step(&self) -> u64 {
        self.step
    }
}
