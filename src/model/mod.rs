//! The multi-layer perceptron: ReLU hidden layers, softmax output, f32 weights, on any
//! [`Backend`]. Forward and backward passes run entirely on the backend's buffers; the host
//! sees parameters only through [`MlpParams`] (initialisation, checkpoints).

pub mod checkpoint;
pub mod footprint;
mod optimizer;
mod shape;
mod workspace;

use optimizer::OptimizerKindState;
pub use optimizer::{Optimizer, OptimizerHost, OptimizerState};
pub use shape::{
    MAX_LAYERS, MAX_WIDTH, MlpParams, check_layers, format_layers, param_count, parse_layers,
};
use workspace::download;
pub use workspace::{Grads, Workspace};

use crate::device::{Activation, AdamParams, Backend, DeviceError, Gemm};

/// Problems with a model's shape or parameters.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The layer list is not usable.
    #[error("invalid layers {layers:?}: {reason}")]
    Layers {
        /// The widths given.
        layers: Vec<usize>,
        /// Why they were refused.
        reason: String,
    },
    /// Parameters do not fit the layer list.
    #[error("parameters do not match layers {layers:?}: {reason}")]
    Params {
        /// The widths.
        layers: Vec<usize>,
        /// What does not match.
        reason: String,
    },
    /// A device operation failed.
    #[error(transparent)]
    Device(#[from] DeviceError),
}

/// One dense layer on the backend.
struct Layer<B: Backend> {
    fan_in: usize,
    fan_out: usize,
    w: B::Buf,
    b: B::Buf,
}

/// An MLP whose parameters live on a backend.
pub struct Mlp<B: Backend> {
    layers: Vec<usize>,
    params: Vec<Layer<B>>,
}

impl<B: Backend> Mlp<B> {
    /// Uploads host parameters to `backend`.
    pub fn from_params(backend: &B, params: &MlpParams) -> Result<Self, ModelError> {
        params.validate()?;
        let mut layers = Vec::new();
        for l in 0..params.weights.len() {
            layers.push(Layer {
                fan_in: params.layers[l],
                fan_out: params.layers[l + 1],
                w: backend.upload(&params.weights[l])?,
                b: backend.upload(&params.biases[l])?,
            });
        }
        Ok(Mlp {
            layers: params.layers.clone(),
            params: layers,
        })
    }

    /// A freshly initialised model (see [`MlpParams::init`]).
    pub fn init(backend: &B, layers: &[usize], seed: u64) -> Result<Self, ModelError> {
        Self::from_params(backend, &MlpParams::init(layers, seed)?)
    }

    /// Downloads the parameters.
    pub fn to_params(&self, backend: &B) -> Result<MlpParams, ModelError> {
        download(
            backend,
            &self.layers,
            self.params.iter().map(|l| (&l.w, &l.b)),
        )
    }

    /// Widths, input first.
    pub fn layers(&self) -> &[usize] {
        &self.layers
    }

    /// Input width.
    pub fn inputs(&self) -> usize {
        self.layers[0]
    }

    /// Number of classes.
    pub fn outputs(&self) -> usize {
        self.layers[self.layers.len() - 1]
    }

    /// Forward pass of `rows` rows of `x` (at most `ws.capacity()`), leaving each layer's
    /// output in the workspace; the last one holds the logits.
    pub fn forward(
        &self,
        backend: &B,
        ws: &mut Workspace<B>,
        x: &B::Buf,
        rows: usize,
    ) -> Result<(), ModelError> {
        self.check_ws(ws, rows)?;
        let last = self.params.len() - 1;
        for (l, layer) in self.params.iter().enumerate() {
            let (before, rest) = ws.acts.split_at_mut(l);
            let input = if l == 0 { x } else { &before[l - 1] };
            let out = &mut rest[0];
            let act = if l == last {
                Activation::Identity
            } else {
                Activation::Relu
            };
            // One kernel on a GPU: the bias and activation ride on the GEMM's store.
            backend.gemm_bias_act(
                Gemm::new(rows, layer.fan_out, layer.fan_in),
                input,
                &layer.w,
                out,
                &layer.b,
                act,
            )?;
        }
        Ok(())
    }

    /// Class probabilities for `rows` rows of `x`, left in [`Workspace::output`]. One
    /// [`Backend::repeated`] body: on a GPU with CUDA Graphs, a batch size seen before is one
    /// graph launch.
    pub fn predict(
        &self,
        backend: &B,
        ws: &mut Workspace<B>,
        x: &B::Buf,
        rows: usize,
    ) -> Result<(), ModelError> {
        backend.repeated(|| {
            self.forward(backend, ws, x, rows)?;
            let out = ws.acts.len() - 1;
            backend.softmax(&mut ws.acts[out], rows, self.outputs())?;
            Ok(())
        })
    }

    /// Forward, loss and backward for one batch: fills `grads` with the gradient of the mean
    /// cross-entropy over the `rows` rows, and adds each row's loss and correctness to the
    /// workspace accumulators.
    pub fn forward_backward(
        &self,
        backend: &B,
        ws: &mut Workspace<B>,
        x: &B::Buf,
        labels: &B::Labels,
        rows: usize,
        grads: &mut Grads<B>,
    ) -> Result<(), ModelError> {
        self.forward(backend, ws, x, rows)?;
        self.loss_backward(backend, ws, x, labels, rows, grads)
    }

    /// Loss and backward pass, given a forward pass already in `ws`.
    fn loss_backward(
        &self,
        backend: &B,
        ws: &mut Workspace<B>,
        x: &B::Buf,
        labels: &B::Labels,
        rows: usize,
        grads: &mut Grads<B>,
    ) -> Result<(), ModelError> {
        let n = self.params.len();
        if rows == 0 {
            return Ok(());
        }
        backend.softmax_xent(
            &ws.acts[n - 1],
            labels,
            rows,
            self.outputs(),
            1.0 / rows as f32,
            &mut ws.deltas[n - 1],
            &mut ws.loss_acc,
            &mut ws.correct_acc,
        )?;
        for l in (0..n).rev() {
            let layer = &self.params[l];
            let input = if l == 0 { x } else { &ws.acts[l - 1] };
            // dW = inputᵀ · δ
            backend.gemm(
                Gemm::new(layer.fan_in, layer.fan_out, rows).ta(),
                input,
                &ws.deltas[l],
                &mut grads.w[l],
            )?;
            backend.col_sum(&ws.deltas[l], rows, layer.fan_out, &mut grads.b[l])?;
            if l > 0 {
                // δ_{l-1} = (δ_l · Wᵀ) ⊙ relu'(a_{l-1})
                let (lower, upper) = ws.deltas.split_at_mut(l);
                backend.gemm(
                    Gemm::new(rows, layer.fan_in, layer.fan_out).tb(),
                    &upper[0],
                    &layer.w,
                    &mut lower[l - 1],
                )?;
                backend.relu_grad(&mut lower[l - 1], &ws.acts[l - 1], rows * layer.fan_in)?;
            }
        }
        Ok(())
    }

    fn check_ws(&self, ws: &Workspace<B>, rows: usize) -> Result<(), ModelError> {
        if ws.layers != self.layers || rows > ws.capacity {
            return Err(ModelError::Params {
                layers: self.layers.clone(),
                reason: format!(
                    "workspace is for layers {:?} and {} rows, asked for {rows} rows",
                    ws.layers, ws.capacity
                ),
            });
        }
        Ok(())
    }

    /// Applies one optimiser update with the gradients in `grads`.
    pub fn apply(
        &mut self,
        backend: &B,
        grads: &Grads<B>,
        opt: &mut OptimizerState<B>,
    ) -> Result<(), ModelError> {
        opt.step += 1;
        for (l, layer) in self.params.iter_mut().enumerate() {
            let nw = layer.fan_in * layer.fan_out;
            let nb = layer.fan_out;
            match &mut opt.kind {
                OptimizerKindState::Sgd { velocity, hp } => {
                    let (vw, vb) = velocity.split_at_mut(2 * l + 1);
                    backend.sgd_step(&mut layer.w, &grads.w[l], &mut vw[2 * l], nw, *hp)?;
                    backend.sgd_step(&mut layer.b, &grads.b[l], &mut vb[0], nb, *hp)?;
                }
                OptimizerKindState::Adam { m, v, hp } => {
                    let hp = AdamParams { t: opt.step, ..*hp };
                    let (mw, mb) = m.split_at_mut(2 * l + 1);
                    let (vw, vb) = v.split_at_mut(2 * l + 1);
                    backend.adam_step(
                        &mut layer.w,
                        &grads.w[l],
                        &mut mw[2 * l],
                        &mut vw[2 * l],
                        nw,
                        hp,
                    )?;
                    backend.adam_step(&mut layer.b, &grads.b[l], &mut mb[0], &mut vb[0], nb, hp)?;
                }
            }
        }
        Ok(())
    }
}
