//! Inference latency on a high-priority lane: alone, beside a training lane at the lowest
//! stream priority, and beside one at the same priority. The gap between the last two is what
//! stream priority buys a service.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{CheckError, Context, Figures, GpuCheckOptions, Verdict, random};
use crate::data::LoadOptions;
use crate::device::Backend;
use crate::device::Precision;
use crate::device::cuda::{CudaBackend, CudaDevice, OpenOptions, StreamPriority};
use crate::model::{Mlp, Workspace};
use crate::train::{TrainEvent, TrainSpec, Trainer};
use crate::util::rng::Rng;

/// Service model widths.
pub(crate) const SERVICE_LAYERS: [usize; 4] = [784, 1024, 1024, 10];
/// Rows per request batch.
pub(crate) const SERVICE_BATCH: usize = 8;
/// Gap between request batches, milliseconds.
pub(crate) const INTERVAL_MS: u64 = 2;
/// Training model beside the service.
pub(crate) const TRAINING_LAYERS: [usize; 4] = [784, 4096, 4096, 10];
/// Its batch.
pub(crate) const TRAINING_BATCH: usize = 1024;

/// Where the service ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Case {
    /// Nothing else on the GPU.
    Alone,
    /// Beside training on a lowest-priority stream.
    BesideTrainingLowPriority,
    /// Beside training on a stream of the service's own (highest) priority.
    BesideTrainingSamePriority,
}

impl Case {
    fn label(self) -> &'static str {
        match self {
            Case::Alone => "alone",
            Case::BesideTrainingLowPriority => "beside training at the lowest priority",
            Case::BesideTrainingSamePriority => "beside training at the same priority",
        }
    }
}

/// One case's latencies.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct InferenceRun {
    /// Which case.
    pub case: Case,
    /// Median batch latency, ms (forward pass, softmax and read-back).
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Batches measured.
    pub batches: usize,
    /// Training steps taken beside the service.
    pub training_steps: Option<u64>,
    /// p99 ÷ p99 alone.
    pub p99_vs_alone: Option<f64>,
}

/// The `inference` section's figures.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct InferenceFigures {
    /// Service widths, `784-1024-1024-10`.
    pub service_layers: String,
    /// Rows per batch.
    pub batch: usize,
    /// Gap between batches, ms.
    pub interval_ms: u64,
    /// Training widths.
    pub training_layers: String,
    /// Training batch.
    pub training_batch: usize,
    /// Measured seconds per case.
    pub seconds: f64,
    /// One row per case.
    pub runs: Vec<InferenceRun>,
    /// The service alone at batch 1 and 8, f32 and bf16, with and without gaps and read-back;
    /// bf16 also with both operands converted on every GEMM, as before buffers kept copies.
    pub breakdown: Vec<super::latency::LatencyRow>,
}

impl Figures for InferenceFigures {
    fn verdict(&self) -> Verdict {
        match self.runs.iter().find(|r| r.batches == 0) {
            Some(r) => Verdict::Fail(format!("no batch was served {}", r.case.label())),
            None => Verdict::Pass,
        }
    }

    fn headline(&self) -> Vec<String> {
        let breakdown = self
            .breakdown
            .iter()
            .map(|r| format!("alone, {}", r.line()));
        self.runs
            .iter()
            .map(|r| {
                format!(
                    "{}: p99 {:.3} ms, p50 {:.3} ms over {} batches{}",
                    r.case.label(),
                    r.p99_ms,
                    r.p50_ms,
                    r.batches,
                    r.p99_vs_alone
                        .map_or(String::new(), |x| format!(" ({x:.2}x alone)"))
                )
            })
            .chain(breakdown)
            .collect()
    }
}

/// p99, p50 (ms) and count of batches through the service model issued every
/// [`INTERVAL_MS`] for `seconds`.
fn serve(g: &CudaBackend, seconds: f64) -> Result<(f64, f64, usize), CheckError> {
    let layers = &SERVICE_LAYERS;
    let model = Mlp::init(g, layers, 1).ctx("service model")?;
    let mut ws = Workspace::new(g, layers, SERVICE_BATCH, false).ctx("service workspace")?;
    let mut rng = Rng::new(2);
    let x = g
        .upload(&random(&mut rng, SERVICE_BATCH * layers[0]))
        .ctx("uploading")?;
    let mut out = vec![0f32; SERVICE_BATCH * layers[layers.len() - 1]];
    let mut lat = Vec::new();
    let start = Instant::now();
    let mut next = start;
    while start.elapsed().as_secs_f64() < seconds {
        next += Duration::from_millis(INTERVAL_MS);
        if let Some(w) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(w);
        }
        let t0 = Instant::now();
        model
            .predict(g, &mut ws, &x, SERVICE_BATCH)
            .ctx("predict")?;
        g.read(ws.output(), &mut out).ctx("reading the output")?;
        lat.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    if lat.is_empty() {
        return Ok((0.0, 0.0, 0));
    }
    lat.sort_by(f64::total_cmp);
    let q = |p: f64| lat[((p * lat.len() as f64).ceil() as usize).clamp(1, lat.len()) - 1];
    Ok((q(0.99), q(0.5), lat.len()))
}

/// Training steps on a lane at `prio` until `stop`.
fn train_until(
    dev: &Arc<CudaDevice>,
    prio: StreamPriority,
    stop: &AtomicBool,
) -> Result<u64, CheckError> {
    let g = dev.lane_backend(prio).ctx("creating the training lane")?;
    let spec_text = "synthetic:blobs:size=16384,features=784,classes=10";
    let data = crate::data::load(spec_text, &LoadOptions::default()).ctx("training data")?;
    let mut spec = TrainSpec::new(TRAINING_LAYERS.to_vec());
    // f32, as the figures this check has always reported.
    spec.precision = Some(crate::device::Precision::F32);
    spec.batch_size = TRAINING_BATCH;
    spec.epochs = u32::MAX;
    spec.val_fraction = 0.0;
    let mut t = Trainer::new(g, spec, &data).ctx("setting up the trainer")?;
    let mut quiet = |_: &TrainEvent| {};
    let mut steps = 0;
    while !stop.load(Ordering::Relaxed) {
        t.step(&mut quiet).ctx("training step")?;
        steps += 1;
    }
    t.backend().synchronize().ctx("synchronize")?;
    Ok(steps)
}

/// The service beside training at `prio`, after the training has warmed up.
fn beside(
    dev: &Arc<CudaDevice>,
    svc: &CudaBackend,
    prio: StreamPriority,
    warmup: Duration,
    seconds: f64,
) -> Result<((f64, f64, usize), u64), CheckError> {
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let trainer = s.spawn(|| train_until(dev, prio, &stop));
        std::thread::sleep(warmup);
        let r = serve(svc, seconds);
        stop.store(true, Ordering::Relaxed);
        let steps = trainer
            .join()
            .unwrap_or(Err(CheckError::Panicked { thread: "training" }));
        Ok((r?, steps?))
    })
}

/// The latency rows ([`super::latency::breakdown`]) of a new service lane on `dev`.
fn breakdown_on(
    dev: &Arc<CudaDevice>,
    mechanism: super::lanes::Mechanism,
    ways: (&[Precision], bool),
    seconds: f64,
) -> Result<Vec<super::latency::LatencyRow>, CheckError> {
    let lane = dev
        .lane_backend(StreamPriority::Highest)
        .ctx("creating a service lane")?;
    super::latency::breakdown(&lane, mechanism, ways, seconds)
}

pub(super) fn run(
    opts: &GpuCheckOptions,
    dev: &Arc<CudaDevice>,
) -> Result<InferenceFigures, CheckError> {
    let seconds = opts.secs(4.0);
    let warmup = Duration::from_secs_f64(if opts.dry_run { 0.1 } else { 1.5 });
    let svc = dev
        .lane_backend(StreamPriority::Highest)
        .ctx("creating the service lane")?;
    let alone = serve(&svc, seconds)?;
    let mut runs = vec![InferenceRun {
        case: Case::Alone,
        p99_ms: alone.0,
        p50_ms: alone.1,
        batches: alone.2,
        training_steps: None,
        p99_vs_alone: None,
    }];
    for (case, prio) in [
        (Case::BesideTrainingLowPriority, StreamPriority::Lowest),
        (Case::BesideTrainingSamePriority, StreamPriority::Highest),
    ] {
        let ((p99, p50, n), steps) = beside(dev, &svc, prio, warmup, seconds)?;
        runs.push(InferenceRun {
            case,
            p99_ms: p99,
            p50_ms: p50,
            batches: n,
            training_steps: Some(steps),
            p99_vs_alone: (alone.0 > 0.0).then(|| p99 / alone.0),
        });
    }
    let cta = super::lanes::Mechanism::CtaBudget;
    let both = [Precision::F32, Precision::Bf16];
    let mut breakdown = super::latency::breakdown(&svc, cta, (&both, false), opts.secs(1.0))?;
    let secs = opts.secs(1.0);
    // bf16 as it ran before buffers kept bf16 copies, for the difference they make.
    let how = OpenOptions {
        convert_every_gemm: true,
        ..OpenOptions::default()
    };
    let converting = super::open_as(opts, how).ctx("opening the GPU again")?;
    breakdown.extend(breakdown_on(
        &converting,
        cta,
        (&[Precision::Bf16], false),
        secs,
    )?);
    // Each batch as one CUDA Graph launch, against the plain rows above.
    let how = OpenOptions {
        graphs: true,
        ..OpenOptions::default()
    };
    let graphed = super::open_as(opts, how).ctx("opening the GPU with CUDA Graphs")?;
    breakdown.extend(breakdown_on(&graphed, cta, (&both, false), secs)?);
    // The same service on green-context SM partitions, leased per batch, when they open.
    if let Ok(green) = super::open_as(opts, super::GREEN) {
        let mechanism = super::lanes::Mechanism::GreenContexts;
        breakdown.extend(breakdown_on(&green, mechanism, (&both, true), secs)?);
    }
    Ok(InferenceFigures {
        service_layers: crate::model::format_layers(&SERVICE_LAYERS),
        batch: SERVICE_BATCH,
        interval_ms: INTERVAL_MS,
        training_layers: crate::model::format_layers(&TRAINING_LAYERS),
        training_batch: TRAINING_BATCH,
        seconds,
        runs,
        breakdown,
    })
}
