//! The training runner: mini-batch steps on a backend, validation accuracy each epoch, a stop
//! at the target accuracy or the epoch limit, and checkpoints every N steps and at the end.
//!
//! A run is a pure function of its data, its hyper-parameters, its seed and its worker
//! budget: the split, the initial weights and each epoch's shuffle all derive from the seed,
//! so a run resumed from a checkpoint continues bit for bit as if it had never stopped.

use std::path::PathBuf;
use std::time::Instant;

use crate::data::{Dataset, Normalizer};
use crate::device::{AdamParams, Backend, SgdParams};
use crate::model::checkpoint::{
    Checkpoint, CheckpointError, DataFingerprint, EpochRecord, TrainConfigMeta, TrainingMeta,
    TrainingState,
};
use crate::model::footprint::{Purpose, TooLarge, check_fit};
use crate::model::{
    Grads, Mlp, MlpParams, ModelError, Optimizer, OptimizerState, Workspace, format_layers,
};
use crate::util::rng::Rng;

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
        }
    }

    fn check(&self) -> Result<(), TrainError> {
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

    fn meta(&self, workers: usize) -> TrainConfigMeta {
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
    pub fn from_meta(layers: &[usize], m: &TrainConfigMeta) -> Result<Self, TrainError> {
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

/// Why a run stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

    fn parse(s: &str) -> Option<Self> {
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

/// A training run on a backend.
pub struct Trainer<B: Backend> {
    backend: B,
    spec: TrainSpec,
    model: Mlp<B>,
    opt: OptimizerState<B>,
    grads: Grads<B>,
    ws: Workspace<B>,
    eval_ws: Workspace<B>,
    x_buf: B::Buf,
    y_buf: B::Labels,
    staging_x: Vec<f32>,
    staging_y: Vec<u32>,
    train: Dataset,
    val: Dataset,
    normalizer: Normalizer,
    fingerprint: DataFingerprint,
    perm: Vec<usize>,
    perm_epoch: Option<u32>,
    epochs_done: u32,
    batch_in_epoch: usize,
    history: Vec<EpochRecord>,
    finished: Option<StopReason>,
    prior_wall_s: f64,
    session_start: Instant,
    session_samples: u64,
    last_checkpoint: Option<PathBuf>,
    last_checkpoint_step: u64,
}

const EVAL_ROWS: usize = 512;

/// Refuses a run whose model, optimiser state and batch would not fit in what `backend`'s
/// device has left, before anything is allocated.
pub fn check_fits<B: Backend>(backend: &B, spec: &TrainSpec) -> Result<(), TrainError> {
    let purpose = Purpose::Training {
        batch: spec.batch_size.max(EVAL_ROWS),
        optimizer: spec.optimizer,
    };
    check_fit(
        &spec.layers,
        purpose,
        &backend.memory_scope(),
        backend.memory_available(),
    )?;
    Ok(())
}

impl<B: Backend> Trainer<B> {
    /// Starts a new run: splits `data`, fits the normalisation on the training part and
    /// initialises the model from the seed.
    pub fn new(backend: B, spec: TrainSpec, data: &Dataset) -> Result<Self, TrainError> {
        spec.check()?;
        check_fits(&backend, &spec)?;
        let (train, val) = prepare_data(&spec, data)?;
        let normalizer = Normalizer::fit(&train);
        let params = MlpParams::init(&spec.layers, spec.seed)?;
        let opt = OptimizerState::new(&backend, &spec.layers, spec.optimizer)?;
        Self::assemble(backend, spec, train, val, normalizer, &params, opt)
    }

    /// Resumes the run saved in `ckpt` on the same `data`. `spec` must describe the same
    /// run; the epoch limit, target, checkpoint path and interval may differ.
    pub fn resume(
        backend: B,
        spec: TrainSpec,
        data: &Dataset,
        ckpt: Checkpoint,
        ckpt_path: &std::path::Path,
    ) -> Result<Self, TrainError> {
        spec.check()?;
        check_fits(&backend, &spec)?;
        let resume_err = |reason: String| TrainError::Resume {
            path: ckpt_path.to_path_buf(),
            reason,
        };
        ckpt.check_layers(&spec.layers, ckpt_path)?;
        let Some(state) = ckpt.training else {
            return Err(resume_err(
                "it holds a model only, with no training state".into(),
            ));
        };
        let saved = TrainSpec::from_meta(&spec.layers, &state.meta.config)?;
        let differs = |what: &str, a: String, b: String| {
            resume_err(format!(
                "{what} was {a} in the checkpoint and is {b} now; resume with the same value"
            ))
        };
        if saved.optimizer != spec.optimizer {
            return Err(differs(
                "the optimizer",
                format!("{:?}", saved.optimizer),
                format!("{:?}", spec.optimizer),
            ));
        }
        if saved.batch_size != spec.batch_size {
            return Err(differs(
                "the batch size",
                saved.batch_size.to_string(),
                spec.batch_size.to_string(),
            ));
        }
        if saved.seed != spec.seed {
            return Err(differs(
                "the seed",
                saved.seed.to_string(),
                spec.seed.to_string(),
            ));
        }
        if saved.val_fraction != spec.val_fraction {
            return Err(differs(
                "the validation fraction",
                saved.val_fraction.to_string(),
                spec.val_fraction.to_string(),
            ));
        }
        if state.meta.config.workers != backend.workers() {
            tracing::warn!(
                saved = state.meta.config.workers,
                now = backend.workers(),
                "resuming with a different worker budget: results will not be bit-identical \
                 to an uninterrupted run"
            );
        }
        let (mut train, mut val) = prepare_data(&spec, data)?;
        // The fingerprint is of the raw rows, so take it before normalising. The source is
        // only a name: the same file reached by another path is the same data.
        let fp = fingerprint(&train, &val);
        let saved_fp = &state.meta.data;
        if (fp.train_rows, fp.val_rows, fp.features, fp.crc)
            != (
                saved_fp.train_rows,
                saved_fp.val_rows,
                saved_fp.features,
                saved_fp.crc,
            )
        {
            return Err(resume_err(format!(
                "it was trained on {} ({} training rows, {} features, crc {:08x}) but the data \
                 given is {} ({} training rows, {} features, crc {:08x})",
                state.meta.data.source,
                state.meta.data.train_rows,
                state.meta.data.features,
                state.meta.data.crc,
                fp.source,
                fp.train_rows,
                fp.features,
                fp.crc
            )));
        }
        // The saved normalisation, not a refit: a refit would equal it, but the saved
        // statistics are what the weights were trained against.
        let normalizer = ckpt.normalizer;
        normalizer.apply(&mut train.x);
        normalizer.apply(&mut val.x);
        let opt =
            OptimizerState::from_host(&backend, &spec.layers, spec.optimizer, &state.optimizer)?;
        let mut t = Self::assemble_normalised(
            backend,
            spec,
            train,
            val,
            normalizer,
            fp,
            &ckpt.params,
            opt,
        )?;
        let m = &state.meta;
        let batches = t.batches_per_epoch();
        if m.batch_in_epoch > batches {
            return Err(resume_err(format!(
                "it is at batch {} of an epoch that has {batches}",
                m.batch_in_epoch
            )));
        }
        if state.loss_acc.len() != t.spec.batch_size || state.correct_acc.len() != t.spec.batch_size
        {
            return Err(resume_err(
                "its loss accumulators have the wrong size".into(),
            ));
        }
        t.ws.write_totals(&t.backend, &state.loss_acc, &state.correct_acc)?;
        t.epochs_done = m.epochs_done;
        t.batch_in_epoch = m.batch_in_epoch;
        t.history = m.history.clone();
        t.prior_wall_s = m.wall_s;
        t.last_checkpoint_step = m.step;
        t.finished = m.finished.as_deref().and_then(StopReason::parse);
        // A larger epoch limit or an unmet new target reopens a finished run.
        t.reevaluate_finish();
        Ok(t)
    }

    fn assemble(
        backend: B,
        spec: TrainSpec,
        mut train: Dataset,
        mut val: Dataset,
        normalizer: Normalizer,
        params: &MlpParams,
        opt: OptimizerState<B>,
    ) -> Result<Self, TrainError> {
        let fp = fingerprint(&train, &val);
        normalizer.apply(&mut train.x);
        normalizer.apply(&mut val.x);
        Self::assemble_normalised(backend, spec, train, val, normalizer, fp, params, opt)
    }

    #[allow(clippy::too_many_arguments)]
    fn assemble_normalised(
        backend: B,
        spec: TrainSpec,
        train: Dataset,
        val: Dataset,
        normalizer: Normalizer,
        fingerprint: DataFingerprint,
        params: &MlpParams,
        opt: OptimizerState<B>,
    ) -> Result<Self, TrainError> {
        let cap = spec.batch_size;
        let model = Mlp::from_params(&backend, params)?;
        let grads = Grads::new(&backend, &spec.layers)?;
        let ws = Workspace::new(&backend, &spec.layers, cap, true)?;
        let eval_ws = Workspace::new(&backend, &spec.layers, EVAL_ROWS, false)?;
        let x_buf = backend.alloc(cap.max(EVAL_ROWS) * spec.layers[0])?;
        let y_buf = backend.alloc_labels(cap)?;
        Ok(Trainer {
            staging_x: Vec::with_capacity(cap.max(EVAL_ROWS) * spec.layers[0]),
            staging_y: Vec::with_capacity(cap),
            backend,
            spec,
            model,
            opt,
            grads,
            ws,
            eval_ws,
            x_buf,
            y_buf,
            train,
            val,
            normalizer,
            fingerprint,
            perm: Vec::new(),
            perm_epoch: None,
            epochs_done: 0,
            batch_in_epoch: 0,
            history: Vec::new(),
            finished: None,
            prior_wall_s: 0.0,
            session_start: Instant::now(),
            session_samples: 0,
            last_checkpoint: None,
            last_checkpoint_step: 0,
        })
    }

    /// The backend the run uses.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The run's spec.
    pub fn spec(&self) -> &TrainSpec {
        &self.spec
    }

    /// Optimiser steps taken.
    pub fn steps(&self) -> u64 {
        self.opt.step()
    }

    /// Epochs completed.
    pub fn epochs_done(&self) -> u32 {
        self.epochs_done
    }

    /// Why the run stopped, or None while it goes on.
    pub fn finished(&self) -> Option<StopReason> {
        self.finished
    }

    /// Mini-batches of the current epoch already taken.
    pub fn batch_in_epoch(&self) -> usize {
        self.batch_in_epoch
    }

    /// Changes the target accuracy while the run goes on; a target already met finishes the
    /// run, and a raised one reopens a run that had stopped at the old target.
    pub fn set_target_accuracy(&mut self, target: Option<f64>) -> Result<(), TrainError> {
        let old = self.spec.target_accuracy;
        self.spec.target_accuracy = target;
        if let Err(e) = self.spec.check() {
            self.spec.target_accuracy = old;
            return Err(e);
        }
        if target.is_some() && self.val.rows() == 0 {
            self.spec.target_accuracy = old;
            return Err(TrainError::Spec(
                "a target accuracy needs a validation set: set a validation fraction above 0"
                    .into(),
            ));
        }
        self.reevaluate_finish();
        Ok(())
    }

    /// Changes the epoch limit while the run goes on.
    pub fn set_epochs(&mut self, epochs: u32) -> Result<(), TrainError> {
        if epochs == 0 {
            return Err(TrainError::Spec("epochs must be at least 1".into()));
        }
        self.spec.epochs = epochs;
        self.reevaluate_finish();
        Ok(())
    }

    /// Mini-batches in one epoch.
    pub fn batches_per_epoch(&self) -> usize {
        self.train.rows().div_ceil(self.spec.batch_size)
    }

    /// Training rows.
    pub fn train_rows(&self) -> usize {
        self.train.rows()
    }

    /// Finished epochs.
    pub fn history(&self) -> &[EpochRecord] {
        &self.history
    }

    /// The model's current parameters.
    pub fn params(&self) -> Result<MlpParams, TrainError> {
        Ok(self.model.to_params(&self.backend)?)
    }

    /// The normalisation fitted on the training data.
    pub fn normalizer(&self) -> &Normalizer {
        &self.normalizer
    }

    fn reevaluate_finish(&mut self) {
        let last_val = self.history.last().and_then(|r| r.val_accuracy);
        let target_met = match (self.spec.target_accuracy, last_val) {
            (Some(t), Some(v)) => v >= t,
            _ => false,
        };
        self.finished = if target_met {
            Some(StopReason::TargetReached)
        } else if self.epochs_done >= self.spec.epochs {
            Some(StopReason::EpochLimit)
        } else {
            None
        };
    }

    fn epoch_perm(&mut self) -> &[usize] {
        let epoch = self.epochs_done;
        if self.perm_epoch != Some(epoch) {
            self.perm.clear();
            self.perm.extend(0..self.train.rows());
            Rng::derived(self.spec.seed, 0xE90C_0000 + epoch as u64).shuffle(&mut self.perm);
            self.perm_epoch = Some(epoch);
        }
        &self.perm
    }

    /// Takes one optimiser step; at the end of an epoch also evaluates and decides whether
    /// the run is finished. Returns the epoch record when an epoch ended. Does nothing once
    /// the run is finished.
    pub fn step(
        &mut self,
        on_event: &mut dyn FnMut(&TrainEvent),
    ) -> Result<Option<EpochRecord>, TrainError> {
        if self.finished.is_some() {
            return Ok(None);
        }
        let bs = self.spec.batch_size;
        let n = self.train.rows();
        let features = self.train.features;
        let start = self.batch_in_epoch * bs;
        let end = (start + bs).min(n);
        let rows = end - start;
        self.epoch_perm();
        self.staging_x.clear();
        self.staging_y.clear();
        let labels = self.train.labels.as_deref().unwrap_or(&[]);
        for &i in &self.perm[start..end] {
            self.staging_x.extend_from_slice(self.train.row(i));
            self.staging_y.push(labels[i]);
        }
        self.backend.write(&mut self.x_buf, &self.staging_x)?;
        self.backend
            .write_labels(&mut self.y_buf, &self.staging_y)?;
        debug_assert_eq!(self.staging_x.len(), rows * features);
        self.model.forward_backward(
            &self.backend,
            &mut self.ws,
            &self.x_buf,
            &self.y_buf,
            rows,
            &mut self.grads,
        )?;
        self.model
            .apply(&self.backend, &self.grads, &mut self.opt)?;
        self.batch_in_epoch += 1;
        self.session_samples += rows as u64;
        let batches = self.batches_per_epoch();
        on_event(&TrainEvent::Step {
            step: self.opt.step(),
            epoch: self.epochs_done + 1,
            batch: self.batch_in_epoch,
            batches_per_epoch: batches,
        });
        if self.batch_in_epoch < batches {
            return Ok(None);
        }
        // End of epoch: read the accumulated loss, evaluate, decide.
        let (loss_sum, correct) = self.ws.totals(&self.backend, bs)?;
        self.ws.reset_totals(&self.backend)?;
        let epoch = self.epochs_done + 1;
        let train_loss = loss_sum / n as f64;
        if !train_loss.is_finite() {
            return Err(TrainError::Diverged {
                epoch,
                loss: train_loss,
            });
        }
        let val_accuracy = if self.val.rows() > 0 {
            Some(self.evaluate_val()?)
        } else {
            None
        };
        let record = EpochRecord {
            epoch,
            train_loss,
            train_accuracy: correct / n as f64,
            val_accuracy,
            step: self.opt.step(),
        };
        self.history.push(record.clone());
        self.epochs_done = epoch;
        self.batch_in_epoch = 0;
        self.reevaluate_finish();
        on_event(&TrainEvent::Epoch(record.clone()));
        Ok(Some(record))
    }

    /// Accuracy on the validation set.
    pub fn evaluate_val(&mut self) -> Result<f64, TrainError> {
        let val = std::mem::replace(&mut self.val, empty_like(&self.train));
        let result = self.accuracy(&val);
        self.val = val;
        result
    }

    /// Accuracy of the current model on normalised, labelled `data`.
    fn accuracy(&mut self, data: &Dataset) -> Result<f64, TrainError> {
        let labels = data.labels.as_deref().unwrap_or(&[]);
        let classes = self.model.outputs();
        let mut logits = vec![0.0f32; EVAL_ROWS * classes];
        let mut correct = 0usize;
        for start in (0..data.rows()).step_by(EVAL_ROWS) {
            let end = (start + EVAL_ROWS).min(data.rows());
            let rows = end - start;
            let f = data.features;
            self.backend
                .write(&mut self.x_buf, &data.x[start * f..end * f])?;
            self.model
                .forward(&self.backend, &mut self.eval_ws, &self.x_buf, rows)?;
            self.backend
                .read(self.eval_ws.output(), &mut logits[..rows * classes])?;
            for r in 0..rows {
                if crate::util::stats::argmax(&logits[r * classes..(r + 1) * classes])
                    == labels[start + r] as usize
                {
                    correct += 1;
                }
            }
        }
        Ok(if data.rows() == 0 {
            0.0
        } else {
            correct as f64 / data.rows() as f64
        })
    }

    /// Builds a checkpoint of the run as it stands.
    pub fn checkpoint(&self) -> Result<Checkpoint, TrainError> {
        let (loss_acc, correct_acc) = self.ws.read_totals(&self.backend)?;
        Ok(Checkpoint {
            params: self.model.to_params(&self.backend)?,
            normalizer: self.normalizer.clone(),
            training: Some(TrainingState {
                meta: TrainingMeta {
                    config: self.spec.meta(self.backend.workers()),
                    data: self.fingerprint.clone(),
                    step: self.opt.step(),
                    epochs_done: self.epochs_done,
                    batch_in_epoch: self.batch_in_epoch,
                    history: self.history.clone(),
                    finished: self.finished.map(|r| r.as_str().to_string()),
                    wall_s: self.prior_wall_s + self.session_start.elapsed().as_secs_f64(),
                },
                optimizer: self.opt.to_host(&self.backend)?,
                loss_acc,
                correct_acc,
            }),
        })
    }

    /// Writes a checkpoint to the spec's path, if it has one.
    pub fn save_checkpoint(
        &mut self,
        on_event: &mut dyn FnMut(&TrainEvent),
    ) -> Result<(), TrainError> {
        let Some(path) = self.spec.checkpoint.clone() else {
            return Ok(());
        };
        self.checkpoint()?.save(&path)?;
        self.last_checkpoint = Some(path.clone());
        self.last_checkpoint_step = self.opt.step();
        on_event(&TrainEvent::Checkpoint {
            path,
            step: self.opt.step(),
        });
        Ok(())
    }

    /// Runs until the run is finished, writing checkpoints every
    /// `checkpoint_every_steps` steps and at the end.
    pub fn run(
        &mut self,
        on_event: &mut dyn FnMut(&TrainEvent),
    ) -> Result<TrainReport, TrainError> {
        self.session_start = Instant::now();
        self.session_samples = 0;
        let every = self.spec.checkpoint_every_steps;
        while self.finished.is_none() {
            self.step(on_event)?;
            if every > 0 && self.opt.step() % every == 0 && self.finished.is_none() {
                self.save_checkpoint(on_event)?;
            }
        }
        if self.spec.checkpoint.is_some() {
            self.save_checkpoint(on_event)?;
        }
        Ok(self.report())
    }

    /// The run's figures so far.
    pub fn report(&self) -> TrainReport {
        let wall_s = self.session_start.elapsed().as_secs_f64();
        let last = self.history.last();
        TrainReport {
            epochs: self.epochs_done,
            steps: self.opt.step(),
            train_loss: last.map(|r| r.train_loss),
            train_accuracy: last.map(|r| r.train_accuracy),
            val_accuracy: last.and_then(|r| r.val_accuracy),
            stop_reason: self.finished.map(|r| r.as_str().to_string()),
            wall_s,
            samples_per_s: if wall_s > 0.0 {
                self.session_samples as f64 / wall_s
            } else {
                0.0
            },
            checkpoint: self.last_checkpoint.clone(),
            history: self.history.clone(),
        }
    }
}

fn empty_like(d: &Dataset) -> Dataset {
    Dataset {
        features: d.features,
        x: Vec::new(),
        labels: Some(Vec::new()),
        source: d.source.clone(),
    }
}

/// Checks `data` against the model and splits it (raw, not normalised).
fn prepare_data(spec: &TrainSpec, data: &Dataset) -> Result<(Dataset, Dataset), TrainError> {
    let layers = &spec.layers;
    let Some(labels) = &data.labels else {
        return Err(TrainError::Data(format!(
            "{}: training needs labelled data, and this data has no label column",
            data.source
        )));
    };
    if data.features != layers[0] {
        return Err(TrainError::Data(format!(
            "{}: the data has {} features but layers {} take {} inputs (make the first width {})",
            data.source,
            data.features,
            format_layers(layers),
            layers[0],
            data.features
        )));
    }
    let classes = layers[layers.len() - 1];
    if let Some((row, &label)) = labels
        .iter()
        .enumerate()
        .find(|&(_, &l)| l as usize >= classes)
    {
        return Err(TrainError::Data(format!(
            "{}: label {label} in data row {} is outside the model's {classes} classes \
             (layers {}; labels must be 0..{})",
            data.source,
            row + 1,
            format_layers(layers),
            classes - 1
        )));
    }
    if data.rows() < 2 {
        return Err(TrainError::Data(format!(
            "{}: needs at least 2 rows to train, found {}",
            data.source,
            data.rows()
        )));
    }
    let (train, val) = crate::data::split(data, spec.val_fraction, spec.seed)
        .map_err(|e| TrainError::Data(e.to_string()))?;
    if spec.target_accuracy.is_some() && val.rows() == 0 {
        return Err(TrainError::Spec(
            "a target accuracy needs a validation set: set a validation fraction above 0".into(),
        ));
    }
    Ok((train, val))
}

fn fingerprint(train: &Dataset, val: &Dataset) -> DataFingerprint {
    let mut h = crc32fast::Hasher::new();
    h.update(bytemuck::cast_slice(&train.x));
    if let Some(l) = &train.labels {
        h.update(bytemuck::cast_slice(l));
    }
    DataFingerprint {
        source: train.source.clone(),
        train_rows: train.rows(),
        val_rows: val.rows(),
        features: train.features,
        crc: h.finalize(),
    }
}
