//! Training samples/s of the same MLPs on the GPU and on the CPU backend. The workloads are
//! the ones `scripts/peers/torch_bench.py` runs on PyTorch (Adam at 1e-3, no validation
//! split, whole batches), so the device check sets the three side by side.

use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use super::{CheckError, Context, Figures, GpuCheckOptions, Verdict, median};
use crate::data::{DataError, Dataset, LoadOptions};
use crate::device::cuda::{CudaDevice, StreamPriority};
use crate::device::{Backend, CpuBackend, Precision};
use crate::train::{TrainEvent, TrainSpec, Trainer};

/// A training workload shared with the PyTorch peer.
/// The JSON names are the workload names of `torch_bench.py`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) enum Workload {
    /// 64-128-10, batch 64, on the first 1,792 rows of the digits data.
    #[serde(rename = "train-digits")]
    Digits,
    /// 784-1024-1024-10, batch 256, on 4,096 random rows.
    #[serde(rename = "train-big")]
    Big,
    /// 784-4096-4096-10, batch 1024, on 16,384 random rows: a size that fills a GPU.
    #[serde(rename = "train-gpu")]
    GpuSized,
    /// 784-2048-2048-10, batch 256, on 4,096 random rows: the training step the tensor-core
    /// target is stated for (at least PyTorch's rate with bf16 autocast).
    #[serde(rename = "train-mlp2048")]
    Mlp2048,
}

impl Workload {
    /// The name in the JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Workload::Digits => "train-digits",
            Workload::Big => "train-big",
            Workload::GpuSized => "train-gpu",
            Workload::Mlp2048 => "train-mlp2048",
        }
    }

    /// Layers, batch and data (`None`: the digits file).
    fn shape(self) -> (&'static [usize], usize, Option<&'static str>) {
        match self {
            Workload::Digits => (&[64, 128, 10], 64, None),
            Workload::Big => (
                &[784, 1024, 1024, 10],
                256,
                Some("synthetic:blobs:size=4096,classes=10,features=784"),
            ),
            Workload::GpuSized => (
                &[784, 4096, 4096, 10],
                1024,
                Some("synthetic:blobs:size=16384,classes=10,features=784"),
            ),
            Workload::Mlp2048 => (
                &[784, 2048, 2048, 10],
                256,
                Some("synthetic:blobs:size=4096,classes=10,features=784"),
            ),
        }
    }
}

/// One workload's rates.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct TrainingRun {
    /// Which workload.
    pub workload: Workload,
    /// Layer widths, `64-128-10`.
    pub layers: String,
    /// Mini-batch size.
    pub batch: usize,
    /// Training rows.
    pub rows: usize,
    /// On the GPU: median of the measured windows; `None` when it did not run.
    pub gpu_samples_per_s: Option<f64>,
    /// Why the GPU run failed, when it did.
    pub gpu_error: Option<String>,
    /// On the GPU in bf16 (operands converted on every GEMM, `gemm_bf16`); the f32 figure
    /// above is what the CPU and PyTorch's f32 are compared with.
    pub gpu_bf16_samples_per_s: Option<f64>,
    /// Why the GPU's bf16 run failed, when it did.
    pub gpu_bf16_error: Option<String>,
    /// On the GPU in bf16 with each step one CUDA Graph launch (`device.cuda_graphs`), for
    /// what the graphs save against the plain bf16 figure above.
    pub gpu_bf16_graphs_samples_per_s: Option<f64>,
    /// Why the run with graphs failed, when it did.
    pub gpu_bf16_graphs_error: Option<String>,
    /// On the CPU backend with every core; `None` when it did not run.
    pub cpu_samples_per_s: Option<f64>,
    /// Why the CPU run failed, when it did.
    pub cpu_error: Option<String>,
    /// GPU ÷ CPU.
    pub gpu_speedup: Option<f64>,
}

/// The `training` section's figures.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct TrainingFigures {
    /// Measured seconds per figure.
    pub seconds: f64,
    /// CPU worker threads.
    pub cpu_threads: usize,
    /// Why the digits workload is missing, when it is.
    pub digits_note: Option<String>,
    /// One row per workload.
    pub runs: Vec<TrainingRun>,
}

impl Figures for TrainingFigures {
    fn verdict(&self) -> Verdict {
        let errors: Vec<String> = self
            .runs
            .iter()
            .flat_map(|r| {
                [
                    ("GPU", &r.gpu_error),
                    ("GPU in bf16", &r.gpu_bf16_error),
                    ("GPU in bf16 with CUDA Graphs", &r.gpu_bf16_graphs_error),
                    ("CPU", &r.cpu_error),
                ]
                .into_iter()
                .filter_map(move |(side, e)| {
                    e.as_ref()
                        .map(|e| format!("{} on the {side}: {e}", r.workload.as_str()))
                })
            })
            .collect();
        if errors.is_empty() {
            Verdict::Pass
        } else {
            Verdict::Fail(errors.join("; "))
        }
    }

    fn headline(&self) -> Vec<String> {
        let rate = |v: Option<f64>| v.map_or("-".to_string(), |r| format!("{r:.0}"));
        self.runs
            .iter()
            .map(|r| {
                format!(
                    "{} ({} b{}): GPU {} samples/s (bf16 {}, with graphs {}), CPU ({} threads) {}{}",
                    r.workload.as_str(),
                    r.layers,
                    r.batch,
                    rate(r.gpu_samples_per_s),
                    rate(r.gpu_bf16_samples_per_s),
                    rate(r.gpu_bf16_graphs_samples_per_s),
                    self.cpu_threads,
                    rate(r.cpu_samples_per_s),
                    r.gpu_speedup
                        .map_or(String::new(), |s| format!(", GPU/CPU {s:.1}x"))
                )
            })
            .collect()
    }
}

/// Samples/s of training on `backend` at `precision`: 3 unmeasured steps, then 5 windows of
/// `seconds / 5` (each at least one step, the GPU drained at its end); the median window.
pub(super) fn train_rate<B: Backend>(
    backend: B,
    data: &Dataset,
    (layers, batch): (&[usize], usize),
    precision: Precision,
    seconds: f64,
) -> Result<f64, CheckError> {
    let mut spec = TrainSpec::new(layers.to_vec());
    spec.precision = Some(precision);
    spec.batch_size = batch;
    spec.epochs = u32::MAX;
    spec.val_fraction = 0.0;
    let mut t = Trainer::new(backend, spec, data).ctx("setting up the trainer")?;
    let mut quiet = |_: &TrainEvent| {};
    for _ in 0..3 {
        t.step(&mut quiet).ctx("training step")?;
    }
    t.backend().synchronize().ctx("synchronize")?;
    let window = seconds / 5.0;
    let mut rates = Vec::new();
    for _ in 0..5 {
        let start = Instant::now();
        let mut steps = 0u64;
        while steps == 0 || start.elapsed().as_secs_f64() < window {
            t.step(&mut quiet).ctx("training step")?;
            steps += 1;
        }
        t.backend().synchronize().ctx("synchronize")?;
        rates.push(steps as f64 * batch as f64 / start.elapsed().as_secs_f64());
    }
    Ok(median(&mut rates))
}

/// Why a workload's data is not there.
#[derive(Debug, thiserror::Error)]
enum WorkloadDataError {
    #[error("no digits file given (--digits)")]
    NoDigits,
    #[error("loading {spec}: {source}")]
    Load { spec: String, source: DataError },
}

/// The workload's data cut to whole batches, or why it is not there.
fn workload_data(opts: &GpuCheckOptions, w: Workload) -> Result<Dataset, WorkloadDataError> {
    let (_, batch, spec) = w.shape();
    let spec = match (spec, &opts.digits) {
        (Some(s), _) => s.to_string(),
        (None, Some(p)) => p.display().to_string(),
        (None, None) => return Err(WorkloadDataError::NoDigits),
    };
    let data = crate::data::load(&spec, &LoadOptions::default())
        .map_err(|source| WorkloadDataError::Load { spec, source })?;
    let rows = data.rows() - data.rows() % batch;
    Ok(data.subset(&(0..rows).collect::<Vec<_>>()))
}

pub(super) fn run(
    opts: &GpuCheckOptions,
    dev: Option<&Arc<CudaDevice>>,
) -> Result<TrainingFigures, CheckError> {
    let seconds = opts.secs(3.0);
    let cpu_threads = crate::device::cpu::available_cores();
    let mut workloads = vec![Workload::Digits, Workload::Big];
    // A dry run checks the plumbing; the large model would only slow it down.
    if !opts.dry_run {
        workloads.push(Workload::GpuSized);
        workloads.push(Workload::Mlp2048);
    }
    let mut digits_note = None;
    let mut runs = Vec::new();
    // The same GPU opened again with CUDA Graphs, for the bf16 rate with graphs beside it.
    let graphs_opts = crate::device::cuda::OpenOptions {
        graphs: true,
        ..Default::default()
    };
    let graphs = dev.map(|_| super::open_as(opts, graphs_opts).map_err(|e| e.to_string()));
    for w in workloads {
        let data = match workload_data(opts, w) {
            Ok(d) => d,
            Err(why) if w == Workload::Digits => {
                digits_note = Some(why.to_string());
                continue;
            }
            Err(why) => {
                return Err(CheckError::Step {
                    what: format!("data for {}", w.as_str()),
                    source: why.into(),
                });
            }
        };
        let (layers, batch, _) = w.shape();
        let shape = (layers, batch);
        let plain = dev.map(Ok);
        let graphed = graphs.as_ref().map(Result::as_ref);
        let gpu = rate_on(plain, &data, shape, Precision::F32, seconds);
        let (gpu_bf16_samples_per_s, gpu_bf16_error) =
            split(rate_on(plain, &data, shape, Precision::Bf16, seconds));
        let (gpu_bf16_graphs_samples_per_s, gpu_bf16_graphs_error) =
            split(rate_on(graphed, &data, shape, Precision::Bf16, seconds));
        let cpu = CpuBackend::new(cpu_threads)
            .ctx("cpu backend")
            .and_then(|c| train_rate(c, &data, (layers, batch), Precision::F32, seconds));
        let (gpu_rate, gpu_error) = split(gpu);
        let (cpu_rate, cpu_error) = split(Some(cpu));
        runs.push(TrainingRun {
            workload: w,
            layers: crate::model::format_layers(layers),
            batch,
            rows: data.rows(),
            gpu_speedup: gpu_rate.zip(cpu_rate).map(|(g, c)| g / c),
            gpu_samples_per_s: gpu_rate,
            gpu_error,
            gpu_bf16_samples_per_s,
            gpu_bf16_error,
            gpu_bf16_graphs_samples_per_s,
            gpu_bf16_graphs_error,
            cpu_samples_per_s: cpu_rate,
            cpu_error,
        });
    }
    Ok(TrainingFigures {
        seconds,
        cpu_threads,
        digits_note,
        runs,
    })
}

/// [`train_rate`] on a new lane of `dev`: none without a GPU, an error when it did not open.
fn rate_on(
    dev: Option<Result<&Arc<CudaDevice>, &String>>,
    data: &Dataset,
    shape: (&[usize], usize),
    precision: Precision,
    seconds: f64,
) -> Option<Result<f64, CheckError>> {
    let opened = dev?.map_err(|why| CheckError::Step {
        what: "opening the GPU again".into(),
        source: why.clone().into(),
    });
    Some(
        opened
            .and_then(|d| {
                d.lane_backend(StreamPriority::Normal)
                    .ctx("creating a lane")
            })
            .and_then(|g| train_rate(g, data, shape, precision, seconds)),
    )
}

fn split(r: Option<Result<f64, CheckError>>) -> (Option<f64>, Option<String>) {
    match r {
        None => (None, None),
        Some(Ok(v)) => (Some(v), None),
        Some(Err(e)) => (None, Some(e.to_string())),
    }
}
