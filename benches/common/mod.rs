//! Workloads shared by the criterion benches (`train`) and the peer probe (`probe`), so that
//! both measure exactly the same thing as `scripts/peers/torch_bench.py` does on PyTorch.
//!
//! Training runs use Adam at 1e-3 (PyTorch's defaults otherwise), no validation split and a
//! data set cut to a whole number of batches, so every [`Trainer::step`] is one full batch
//! and the end of an epoch costs only the reshuffle.

use anyhow::{Context, Result};
use setpoint::data::{self, Dataset, LoadOptions};
use setpoint::device::cpu::CpuBuf;
use setpoint::device::{Backend, CpuBackend};
use setpoint::model::{Mlp, Workspace};
use setpoint::train::{TrainSpec, Trainer};
use setpoint::util::rng::Rng;

/// The real data set kept beside the project.
pub const DIGITS_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/data/digits.csv.gz");

/// Digits MLP widths.
pub const DIGITS_LAYERS: [usize; 3] = [64, 128, 10];
/// Digits batch size.
pub const DIGITS_BATCH: usize = 64;
/// Large MLP widths.
pub const BIG_LAYERS: [usize; 4] = [784, 1024, 1024, 10];
/// Large MLP batch size.
pub const BIG_BATCH: usize = 256;
/// Random data for the large MLP: 16 batches of 256.
pub const BIG_DATA: &str = "synthetic:blobs:size=4096,classes=10,features=784";

/// A backend with a two-thread pool limited to `threads` workers, the way a lane's budget is
/// enforced in the product.
pub fn backend(threads: usize) -> Result<CpuBackend> {
    let backend = CpuBackend::new(2).context("creating the cpu backend")?;
    backend.set_workers(threads);
    Ok(backend)
}

/// The first `rows - rows % batch` rows of `data`.
fn whole_batches(data: &Dataset, batch: usize) -> Dataset {
    let rows = data.rows() - data.rows() % batch;
    data.subset(&(0..rows).collect::<Vec<_>>())
}

fn trainer(
    data: &Dataset,
    layers: &[usize],
    batch: usize,
    threads: usize,
) -> Result<Trainer<CpuBackend>> {
    let mut spec = TrainSpec::new(layers.to_vec());
    spec.batch_size = batch;
    spec.epochs = u32::MAX;
    spec.val_fraction = 0.0;
    let data = whole_batches(data, batch);
    Trainer::new(backend(threads)?, spec, &data).context("setting up the trainer")
}

/// The digits run: 64-128-10, batch 64, on the first 1,792 rows of `digits.csv.gz`.
pub fn digits_trainer(threads: usize) -> Result<Trainer<CpuBackend>> {
    let data = data::load(DIGITS_PATH, &LoadOptions::default()).with_context(|| {
        format!("loading {DIGITS_PATH} (the shared data set beside the project)")
    })?;
    trainer(&data, &DIGITS_LAYERS, DIGITS_BATCH, threads)
}

/// The large run: 784-1024-1024-10, batch 256, on 4,096 random rows.
pub fn big_trainer(threads: usize) -> Result<Trainer<CpuBackend>> {
    let data = data::load(BIG_DATA, &LoadOptions::default()).context("generating blobs")?;
    trainer(&data, &BIG_LAYERS, BIG_BATCH, threads)
}

/// One training step; a failure here is a bug in the engine, not a measurement problem.
pub fn train_step(t: &mut Trainer<CpuBackend>) {
    if let Err(e) = t.step(&mut |_| {}) {
        panic!("training step failed: {e}");
    }
}

/// Inference on the digits MLP: `Mlp::predict` (forward pass and softmax) on a workspace
/// sized for the largest batch.
pub struct Forward {
    backend: CpuBackend,
    model: Mlp<CpuBackend>,
    ws: Workspace<CpuBackend>,
    x: CpuBuf,
}

impl Forward {
    /// Largest batch [`Forward::run`] takes.
    pub const MAX_ROWS: usize = 64;

    /// A freshly initialised 64-128-10 model and standard-normal inputs.
    pub fn new(threads: usize) -> Result<Forward> {
        let backend = backend(threads)?;
        let model = Mlp::init(&backend, &DIGITS_LAYERS, 1)?;
        let ws = Workspace::new(&backend, &DIGITS_LAYERS, Self::MAX_ROWS, false)?;
        let mut rng = Rng::new(7);
        let x: Vec<f32> = (0..Self::MAX_ROWS * DIGITS_LAYERS[0])
            .map(|_| rng.normal() as f32)
            .collect();
        let x = backend.upload(&x)?;
        Ok(Forward {
            backend,
            model,
            ws,
            x,
        })
    }

    /// Class probabilities for the first `rows` rows.
    pub fn run(&mut self, rows: usize) {
        if let Err(e) = self
            .model
            .predict(&self.backend, &mut self.ws, &self.x, rows)
        {
            panic!("forward pass failed: {e}");
        }
        std::hint::black_box(self.ws.output());
    }
}
