//! Per-batch buffers on the backend: activations, deltas and loss accumulators, and the
//! gradients of one step.

use super::{MlpParams, ModelError, check_layers};
use crate::device::Backend;

/// Activations, deltas and loss accumulators for batches of up to `capacity` rows.
pub struct Workspace<B: Backend> {
    pub(super) layers: Vec<usize>,
    pub(super) capacity: usize,
    pub(super) acts: Vec<B::Buf>,
    pub(super) deltas: Vec<B::Buf>,
    pub(super) loss_acc: B::Buf,
    pub(super) correct_acc: B::Buf,
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
    pub(crate) fn reset_totals(&mut self, backend: &B) -> Result<(), ModelError> {
        let n = backend.len(&self.loss_acc);
        backend.fill(&mut self.loss_acc, n, 0.0)?;
        backend.fill(&mut self.correct_acc, n, 0.0)?;
        Ok(())
    }

    /// Host copies of the accumulators (for checkpoints).
    pub(crate) fn read_totals(&self, backend: &B) -> Result<(Vec<f32>, Vec<f32>), ModelError> {
        let n = backend.len(&self.loss_acc);
        let mut loss = vec![0.0; n];
        let mut correct = vec![0.0; n];
        backend.read(&self.loss_acc, &mut loss)?;
        backend.read(&self.correct_acc, &mut correct)?;
        Ok((loss, correct))
    }

    /// Restores the accumulators from host copies.
    pub(crate) fn write_totals(
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
    pub(super) w: Vec<B::Buf>,
    pub(super) b: Vec<B::Buf>,
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
pub(super) fn download<'a, B: Backend + 'a>(
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
