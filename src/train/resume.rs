//! Resuming a run from its checkpoint: the same run on the same data, continued from the
//! saved step, or a clear error naming what differs.

use std::path::Path;

use super::{StopReason, TrainError, TrainSpec, Trainer, fingerprint, prepare_data};
use crate::data::Dataset;
use crate::device::Backend;
use crate::model::OptimizerState;
use crate::model::checkpoint::{Checkpoint, DataFingerprint, TrainingState};

impl<B: Backend> Trainer<B> {
    /// Resumes the run saved in `ckpt` on the same `data`. `spec` must describe the same
    /// run; the epoch limit, target, checkpoint path and interval may differ.
    pub fn resume(
        backend: B,
        spec: TrainSpec,
        data: &Dataset,
        ckpt: Checkpoint,
        ckpt_path: &Path,
    ) -> Result<Self, TrainError> {
        spec.check()?;
        super::check_fits(&backend, &spec)?;
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
        same_run(&saved, &spec).map_err(resume_err)?;
        let (mut train, mut val) = prepare_data(&spec, data)?;
        // The fingerprint is of the raw rows, so take it before normalising. The source is
        // only a name: the same file reached by another path is the same data.
        let fp = fingerprint(&train, &val);
        same_data(&state.meta.data, &fp).map_err(resume_err)?;
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
        t.restore_progress(&state).map_err(|e| match e {
            Progress::Invalid(reason) => resume_err(reason),
            Progress::Train(e) => e,
        })?;
        Ok(t)
    }

    /// Puts the saved position, accumulators and history back.
    fn restore_progress(&mut self, state: &TrainingState) -> Result<(), Progress> {
        let m = &state.meta;
        let batches = self.batches_per_epoch();
        if m.batch_in_epoch > batches {
            return Err(Progress::Invalid(format!(
                "it is at batch {} of an epoch that has {batches}",
                m.batch_in_epoch
            )));
        }
        let n = self.spec.batch_size;
        if state.loss_acc.len() != n || state.correct_acc.len() != n {
            return Err(Progress::Invalid(
                "its loss accumulators have the wrong size".into(),
            ));
        }
        self.ws
            .write_totals(&self.backend, &state.loss_acc, &state.correct_acc)
            .map_err(|e| Progress::Train(e.into()))?;
        self.epochs_done = m.epochs_done;
        self.batch_in_epoch = m.batch_in_epoch;
        self.history = m.history.clone();
        self.prior_wall_s = m.wall_s;
        self.last_checkpoint_step = m.step;
        self.finished = m.finished.as_deref().and_then(StopReason::parse);
        // A larger epoch limit or an unmet new target reopens a finished run.
        self.reevaluate_finish();
        Ok(())
    }
}

/// Why the saved progress could not be put back.
enum Progress {
    /// The checkpoint's progress does not fit the run.
    Invalid(String),
    /// The backend failed.
    Train(TrainError),
}

/// The hyper-parameters a resumed run must keep: the message names the first that differs.
fn same_run(saved: &TrainSpec, now: &TrainSpec) -> Result<(), String> {
    let differs = |what: &str, a: String, b: String| {
        Err(format!(
            "{what} was {a} in the checkpoint and is {b} now; resume with the same value"
        ))
    };
    if saved.optimizer != now.optimizer {
        return differs(
            "the optimizer",
            saved.optimizer.to_string(),
            now.optimizer.to_string(),
        );
    }
    if saved.batch_size != now.batch_size {
        return differs(
            "the batch size",
            saved.batch_size.to_string(),
            now.batch_size.to_string(),
        );
    }
    if saved.seed != now.seed {
        return differs("the seed", saved.seed.to_string(), now.seed.to_string());
    }
    if saved.val_fraction != now.val_fraction {
        return differs(
            "the validation fraction",
            saved.val_fraction.to_string(),
            now.val_fraction.to_string(),
        );
    }
    Ok(())
}

/// The data a resumed run is given must be the data it was trained on (rows, features, CRC;
/// the source is only a name).
fn same_data(saved: &DataFingerprint, now: &DataFingerprint) -> Result<(), String> {
    let key = |f: &DataFingerprint| (f.train_rows, f.val_rows, f.features, f.crc);
    if key(saved) == key(now) {
        return Ok(());
    }
    Err(format!(
        "it was trained on {} ({} training rows, {} features, crc {:08x}) but the data given is \
         {} ({} training rows, {} features, crc {:08x})",
        saved.source,
        saved.train_rows,
        saved.features,
        saved.crc,
        now.source,
        now.train_rows,
        now.features,
        now.crc
    ))
}
