//! The multi-layer perceptron: ReLU hidden layers, softmax output, f32 weights, on any
//! [`Backend`]. Forward and backward passes run entirely on the backend's buffers; the host
//! sees parameters only through [`MlpParams`] (initialisation, checkpoints).

pub mod checkpoint;
pub mod footprint;

use crate::device::{Activation, AdamParams, Backend, DeviceError, Gemm, SgdParams};
use crate::util::rng::Rng;

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

/// Parses a layer list such as `64,128,10`.
pub fn parse_layers(text: &str) -> Result<Vec<usize>, ModelError> {
    let mut layers = Vec::new();
    for part in text.split(',') {
        let part = part.trim();
        match part.parse::<usize>() {
            Ok(w) => layers.push(w),
            Err(_) => {
                return Err(ModelError::Layers {
                    layers,
                    reason: format!(
                        "{part:?} is not a positive integer (expected comma-separated widths such as 64,128,10)"
                    ),
                });
            }
        }
    }
    check_layers(&layers)?;
    Ok(layers)
}

/// Most widths a layer list may have, the input and output included.
pub const MAX_LAYERS: usize = 128;
/// Widest layer.
pub const MAX_WIDTH: usize = 65_536;

/// Checks a layer list: at least an input and an output width and at most [`MAX_LAYERS`],
/// every width in `1..=MAX_WIDTH`, the output at least 2 classes. Whether the model fits its
/// device is a separate question ([`footprint`]).
pub fn check_layers(layers: &[usize]) -> Result<(), ModelError> {
    let err = |reason: &str| {
        Err(ModelError::Layers {
            layers: layers.to_vec(),
            reason: reason.to_string(),
        })
    };
    if layers.len() < 2 {
        return err("need at least an input and an output width, such as 64,10");
    }
    if layers.len() > MAX_LAYERS {
        return Err(ModelError::Layers {
            layers: layers[..8].to_vec(),
            reason: format!(
                "{} widths given; at most {MAX_LAYERS} are accepted (input and output included)",
                layers.len()
            ),
        });
    }
    if layers.contains(&0) {
        return err("every width must be at least 1");
    }
    if let Some(w) = layers.iter().find(|&&w| w > MAX_WIDTH) {
        return err(&format!("width {w} is over the limit of {MAX_WIDTH}"));
    }
    if layers[layers.len() - 1] < 2 {
        return err("the output layer needs at least 2 classes");
    }
    Ok(())
}

/// Formats a layer list as `64,128,10`.
pub fn format_layers(layers: &[usize]) -> String {
    layers
        .iter()
        .map(|w| w.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// Host copy of an MLP's parameters: `weights[l]` is `layers[l] × layers[l+1]` row-major,
/// `biases[l]` has `layers[l+1]` entries.
#[derive(Debug, Clone, PartialEq)]
pub struct MlpParams {
    /// Widths, input first.
    pub layers: Vec<usize>,
    /// Weight matrices, one per layer.
    pub weights: Vec<Vec<f32>>,
    /// Bias vectors, one per layer.
    pub biases: Vec<Vec<f32>>,
}

impl MlpParams {
    /// He-uniform weights (`U(±√(6/fan_in))`, suited to ReLU) and zero biases from `seed`.
    pub fn init(layers: &[usize], seed: u64) -> Result<Self, ModelError> {
        check_layers(layers)?;
        let mut rng = Rng::derived(seed, 0x1417);
        let mut weights = Vec::new();
        let mut biases = Vec::new();
        for pair in layers.windows(2) {
            let (fan_in, fan_out) = (pair[0], pair[1]);
            let bound = (6.0 / fan_in as f64).sqrt();
            weights.push(
                (0..fan_in * fan_out)
                    .map(|_| rng.uniform(-bound, bound) as f32)
                    .collect(),
            );
            biases.push(vec![0.0; fan_out]);
        }
        Ok(MlpParams {
            layers: layers.to_vec(),
            weights,
            biases,
        })
    }

    /// Checks that every tensor has the size the layer list implies.
    pub fn validate(&self) -> Result<(), ModelError> {
        check_layers(&self.layers)?;
        let n = self.layers.len() - 1;
        let err = |reason: String| {
            Err(ModelError::Params {
                layers: self.layers.clone(),
                reason,
            })
        };
        if self.weights.len() != n || self.biases.len() != n {
            return err(format!(
                "{} weight and {} bias tensors for {n} layers",
                self.weights.len(),
                self.biases.len()
            ));
        }
        for l in 0..n {
            let (i, o) = (self.layers[l], self.layers[l + 1]);
            if self.weights[l].len() != i * o {
                return err(format!(
                    "layer {l} weights have {} values, expected {i}×{o}",
                    self.weights[l].len()
                ));
            }
            if self.biases[l].len() != o {
                return err(format!(
                    "layer {l} bias has {} values, expected {o}",
                    self.biases[l].len()
                ));
            }
        }
        Ok(())
    }

    /// Total number of parameters.
    pub fn count(&self) -> usize {
        param_count(&self.layers)
    }
}

/// Number of parameters of an MLP with these widths.
pub fn param_count(layers: &[usize]) -> usize {
    layers.windows(2).map(|p| p[0] * p[1] + p[1]).sum()
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
            backend.gemm(
                Gemm::new(rows, layer.fan_out, layer.fan_in),
                input,
                &layer.w,
                out,
            )?;
            let act = if l == last {
                Activation::Identity
            } else {
                Activation::Relu
            };
            backend.bias_act(out, &layer.b, rows, layer.fan_out, act)?;
        }
        Ok(())
    }

    /// Class probabilities for `rows` rows of `x`, left in [`Workspace::output`].
    pub fn predict(
        &self,
        backend: &B,
        ws: &mut Workspace<B>,
        x: &B::Buf,
        rows: usize,
    ) -> Result<(), ModelError> {
        self.forward(backend, ws, x, rows)?;
        let out = ws.acts.len() - 1;
        backend.softmax(&mut ws.acts[out], rows, self.outputs())?;
        Ok(())
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

/// Activations, deltas and loss accumulators for batches of up to `capacity` rows.
pub struct Workspace<B: Backend> {
    layers: Vec<usize>,
    capacity: usize,
    acts: Vec<B::Buf>,
    deltas: Vec<B::Buf>,
    loss_acc: B::Buf,
    correct_acc: B::Buf,
}

impl<B: Backend> Workspace<B> {
    /// Buffers for `layers` and batches of up to `capacity` rows. Training needs
    /// `with_grads`; inference does not allocate the deltas.
    pub fn new(
        backend: &B,
        layers: &[usize],
        capacity: usize,
        with_grads: bool,
    ) -> Result<Self, ModelError> {
        check_layers(layers)?;
        let mut acts = Vec::new();
        let mut deltas = Vec::new();
        for &w in &layers[1..] {
            acts.push(backend.alloc(capacity * w)?);
            if with_grads {
                deltas.push(backend.alloc(capacity * w)?);
            }
        }
        let acc = if with_grads { capacity } else { 0 };
        Ok(Workspace {
            layers: layers.to_vec(),
            capacity,
            acts,
            deltas,
            loss_acc: backend.alloc(acc)?,
            correct_acc: backend.alloc(acc)?,
        })
    }

    /// Largest batch this workspace holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The last layer's output of the latest pass (`rows × classes`): logits after
    /// [`Mlp::forward`], probabilities after [`Mlp::predict`].
    pub fn output(&self) -> &B::Buf {
        &self.acts[self.acts.len() - 1]
    }

    /// Summed loss and correct count accumulated over `rows` rows since the last reset.
    pub fn totals(&self, backend: &B, rows: usize) -> Result<(f64, f64), ModelError> {
        let rows = rows.min(backend.len(&self.loss_acc));
        Ok((
            backend.sum(&self.loss_acc, rows)?,
            backend.sum(&self.correct_acc, rows)?,
        ))
    }

    /// Clears the loss and correctness accumulators.
    pub fn reset_totals(&mut self, backend: &B) -> Result<(), ModelError> {
        let n = backend.len(&self.loss_acc);
        backend.fill(&mut self.loss_acc, n, 0.0)?;
        backend.fill(&mut self.correct_acc, n, 0.0)?;
        Ok(())
    }

    /// Host copies of the accumulators (for checkpoints).
    pub fn read_totals(&self, backend: &B) -> Result<(Vec<f32>, Vec<f32>), ModelError> {
        let n = backend.len(&self.loss_acc);
        let mut loss = vec![0.0; n];
        let mut correct = vec![0.0; n];
        backend.read(&self.loss_acc, &mut loss)?;
        backend.read(&self.correct_acc, &mut correct)?;
        Ok((loss, correct))
    }

    /// Restores the accumulators from host copies.
    pub fn write_totals(
        &mut self,
        backend: &B,
        loss: &[f32],
        correct: &[f32],
    ) -> Result<(), ModelError> {
        backend.write(&mut self.loss_acc, loss)?;
        backend.write(&mut self.correct_acc, correct)?;
        Ok(())
    }
}

/// Parameter gradients.
pub struct Grads<B: Backend> {
    w: Vec<B::Buf>,
    b: Vec<B::Buf>,
}

impl<B: Backend> Grads<B> {
    /// Zeroed gradient buffers for `layers`.
    pub fn new(backend: &B, layers: &[usize]) -> Result<Self, ModelError> {
        let mut w = Vec::new();
        let mut b = Vec::new();
        for p in layers.windows(2) {
            w.push(backend.alloc(p[0] * p[1])?);
            b.push(backend.alloc(p[1])?);
        }
        Ok(Grads { w, b })
    }

    /// Host copy, in the layout of [`MlpParams`].
    pub fn to_params(&self, backend: &B, layers: &[usize]) -> Result<MlpParams, ModelError> {
        download(backend, layers, self.w.iter().zip(&self.b))
    }
}

/// Reads per-layer (weight, bias) buffers of an MLP with `layers` into host memory.
fn download<'a, B: Backend + 'a>(
    backend: &B,
    layers: &[usize],
    tensors: impl Iterator<Item = (&'a B::Buf, &'a B::Buf)>,
) -> Result<MlpParams, ModelError> {
    let mut weights = Vec::new();
    let mut biases = Vec::new();
    for (p, (wb, bb)) in layers.windows(2).zip(tensors) {
        let mut w = vec![0.0; p[0] * p[1]];
        backend.read(wb, &mut w)?;
        let mut b = vec![0.0; p[1]];
        backend.read(bb, &mut b)?;
        weights.push(w);
        biases.push(b);
    }
    Ok(MlpParams {
        layers: layers.to_vec(),
        weights,
        biases,
    })
}

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

enum OptimizerKindState<B: Backend> {
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
    step: u64,
    kind: OptimizerKindState<B>,
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
    pub fn from_host(
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
    pub fn to_host(&self, backend: &B) -> Result<OptimizerHost, ModelError> {
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
