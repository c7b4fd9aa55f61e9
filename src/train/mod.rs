//! The training runner: mini-batch steps on a backend, validation accuracy each epoch, a stop
//! at the target accuracy or the epoch limit, and checkpoints every N steps and at the end.
//!
//! A run is a pure function of its data, its hyper-parameters, its seed and its worker
//! budget: the split, the initial weights and each epoch's shuffle all derive from the seed,
//! so a run resumed from a checkpoint continues bit for bit as if it had never stopped.

use std::path::PathBuf;
use std::time::Instant;

use crate::data::{Dataset, Normalizer};
use crate::device::Backend;
use crate::model::checkpoint::{
    Checkpoint, DataFingerprint, EpochRecord, TrainingMeta, TrainingState,
};
use crate::model::footprint::{Purpose, check_fit};
use crate::model::{Grads, Mlp, MlpParams, ModelError, OptimizerState, Workspace};
use crate::util::rng::Rng;

mod error;
mod report;
mod resume;
mod spec;
mod split;

pub use error::TrainError;
pub use report::{StopReason, TrainEvent, TrainReport};
pub use spec::{TrainSpec, default_adam, default_sgd};
use split::{empty_like, fingerprint, prepare_data};

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
pub(crate) fn check_fits<B: Backend>(backend: &B, spec: &TrainSpec) -> Result<(), TrainError> {
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
        backend.set_precision(
            spec.precision
                .unwrap_or_else(|| backend.default_precision(crate::device::Work::Training)),
        );
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
    pub(crate) fn set_target_accuracy(&mut self, target: Option<f64>) -> Result<(), TrainError> {
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
    pub(crate) fn set_epochs(&mut self, epochs: u32) -> Result<(), TrainError> {
        if epochs == 0 {
            return Err(TrainError::Spec("epochs must be at least 1".into()));
        }
        self.spec.epochs = epochs;
        self.reevaluate_finish();
        Ok(())
    }

    /// Mini-batches in one epoch.
    pub(crate) fn batches_per_epoch(&self) -> usize {
        self.train.rows().div_ceil(self.spec.batch_size)
    }

    /// Training rows.
    pub(crate) fn train_rows(&self) -> usize {
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
        // The step's kernels are one repeated body: on a GPU with CUDA Graphs, one graph
        // launch once a step of this size has been seen.
        let (model, ws, grads, opt) = (
            &mut self.model,
            &mut self.ws,
            &mut self.grads,
            &mut self.opt,
        );
        let (backend, x, y) = (&self.backend, &self.x_buf, &self.y_buf);
        backend.repeated(|| -> Result<(), ModelError> {
            model.forward_backward(backend, ws, x, y, rows, grads)?;
            model.apply(backend, grads, opt)
        })?;
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
    pub(crate) fn evaluate_val(&mut self) -> Result<f64, TrainError> {
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
            if every > 0 && self.opt.step().is_multiple_of(every) && self.finished.is_none() {
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
