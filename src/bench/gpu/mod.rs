//! `setpoint gpu-check --section NAME`: one GPU check or measurement per process, written as
//! typed JSON, so that a device check can run each under its own time limit and one fault
//! loses only its own section (`scripts/device-check/`).
//!
//! Sections:
//! - `kernels`: every kernel against the CPU backend, every GEMM layout (transposed operands
//!   included) at several CTA budgets, bf16 on tensor cores and SIMT up to 4096-sized
//!   products;
//! - `gemm`: TFLOP/s of the backend's GEMMs (f32, bf16 on tensor cores) as the trainer gets
//!   them, timed on the GPU (the raw kernels against cuBLAS are the device check's CUDA probe);
//! - `training`: samples/s of the same MLPs on the GPU and on the CPU backend;
//! - `lanes`, `lanes-green`: two busy lanes at shares 0.25 and 0.75 as CTA budgets or as
//!   green-context SM partitions: their throughput ratio and whether each keeps its own rate;
//! - `inference`: p99 of a batched service alone, beside training at the lowest stream
//!   priority, and beside training at the same priority;
//! - `nvml`: setpoint's NVML samples against nvidia-smi's, idle and under a GEMM load.
//!
//! With `dry_run`, a host without a usable GPU records the GPU parts as skipped (the CPU parts
//! still run, briefly) instead of failing: that is how CI exercises the plumbing.

mod gemm;
mod inference;
pub mod kernels;
mod lanes;
mod latency;
mod nvml;
mod training;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use crate::device::cuda::{CudaDevice, GpuInfo};
use crate::util::rng::Rng;

/// Format tag of every section's JSON.
pub(crate) const FORMAT: &str = "setpoint-gpu-check-v1";

/// One part of the GPU check, run as a process of its own (`--section NAME`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Section {
    /// Kernels against the CPU backend.
    Kernels,
    /// The backend's GEMM rates.
    Gemm,
    /// Training samples/s, GPU and CPU.
    Training,
    /// Two lanes with CTA budgets.
    Lanes,
    /// Two lanes on green-context SM partitions.
    LanesGreen,
    /// Inference latency alone and beside training.
    Inference,
    /// NVML against nvidia-smi.
    Nvml,
}

impl Section {
    /// Every section, in the order a device check runs them.
    pub const ALL: [Section; 7] = [
        Section::Kernels,
        Section::Gemm,
        Section::Training,
        Section::Lanes,
        Section::LanesGreen,
        Section::Inference,
        Section::Nvml,
    ];

    /// The name on the command line and in the JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Section::Kernels => "kernels",
            Section::Gemm => "gemm",
            Section::Training => "training",
            Section::Lanes => "lanes",
            Section::LanesGreen => "lanes-green",
            Section::Inference => "inference",
            Section::Nvml => "nvml",
        }
    }
}

/// How a section ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// It ran and every check in it held.
    Pass,
    /// It could not run, or a check in it failed (`reason` says which).
    Fail,
    /// It did not run, for the reason given (only in a dry run).
    Skipped,
}

/// Why a section could not finish.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The GPU could not be opened.
    #[error("no usable GPU {ordinal}: {reason}")]
    NoGpu {
        /// GPU ordinal asked for.
        ordinal: usize,
        /// What the driver or loader said.
        reason: String,
    },
    /// One step of a section failed.
    #[error("{what}: {source}")]
    Step {
        /// The step.
        what: String,
        /// Its error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A worker thread of a section panicked.
    #[error("the {thread} thread panicked")]
    Panicked {
        /// Which thread.
        thread: &'static str,
    },
    /// nvidia-smi or NVML could not be started.
    #[error("nvidia-smi cross-check: {reason}")]
    Smi {
        /// Why.
        reason: crate::bench::smi::CrossCheckError,
    },
}

/// Names the step an error came from.
pub(crate) trait Context<T> {
    /// The error as [`CheckError::Step`] with `what` in front.
    fn ctx(self, what: &str) -> Result<T, CheckError>;
}

impl<T, E: std::error::Error + Send + Sync + 'static> Context<T> for Result<T, E> {
    fn ctx(self, what: &str) -> Result<T, CheckError> {
        self.map_err(|e| CheckError::Step {
            what: what.to_string(),
            source: Box::new(e),
        })
    }
}

/// What a section decided about its own figures.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Verdict {
    /// Every check held.
    Pass,
    /// A check failed, for this reason.
    Fail(String),
}

/// A section's figures: serialisable, judged, summed up in a few lines.
pub(crate) trait Figures: Serialize {
    /// Whether the figures meet the section's checks.
    fn verdict(&self) -> Verdict;
    /// The figures a person reads first, one line each.
    fn headline(&self) -> Vec<String>;
}

/// What the driver says about the GPU a section ran on.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct DeviceFacts {
    /// Name, UUID, compute capability, SMs, memory, stream priority range.
    pub info: GpuInfo,
    /// Most CTAs a lane may launch at once.
    pub max_ctas: usize,
}

/// One section's JSON document.
#[derive(Debug, Serialize)]
pub(crate) struct SectionReport<F> {
    /// [`FORMAT`].
    pub format: &'static str,
    /// Which section.
    pub section: Section,
    /// setpoint's version.
    pub setpoint: &'static str,
    /// How it ended.
    pub status: Status,
    /// Why it failed or was skipped.
    pub reason: Option<String>,
    /// Wall time of the section, seconds.
    pub seconds: f64,
    /// Whether it ran as a dry run.
    pub dry_run: bool,
    /// The GPU, when one was opened.
    pub device: Option<DeviceFacts>,
    /// The lines a person reads first.
    pub headline: Vec<String>,
    /// Every figure, when the section got as far as measuring.
    pub figures: Option<F>,
}

/// What to run.
#[derive(Debug, Clone)]
pub(crate) struct GpuCheckOptions {
    /// Which section.
    pub section: Section,
    /// GPU ordinal.
    pub gpu: usize,
    /// The digits CSV for the small training workload (left out when `None`).
    pub digits: Option<PathBuf>,
    /// Where NVRTC output is cached (shared by the sections of one run).
    pub cache_dir: Option<PathBuf>,
    /// Measured seconds per figure; `None`: the section's own default.
    pub seconds: Option<f64>,
    /// No GPU expected: GPU parts are skipped, CPU parts run briefly, sizes are small.
    pub dry_run: bool,
}

impl GpuCheckOptions {
    /// Measured seconds per figure: `default` on a real run, a tenth of a second in a dry run.
    fn secs(&self, default: f64) -> f64 {
        self.seconds
            .unwrap_or(if self.dry_run { 0.1 } else { default })
    }
}

/// A finished section: its status, headline and JSON text.
#[derive(Debug, Clone)]
pub(crate) struct Finished {
    /// How it ended.
    pub status: Status,
    /// Why it failed or was skipped.
    pub reason: Option<String>,
    /// The lines a person reads first.
    pub headline: Vec<String>,
    /// The whole [`SectionReport`] as pretty JSON.
    pub json: String,
}

/// Opens the GPU, or says why not.
fn open(opts: &GpuCheckOptions) -> Result<Arc<CudaDevice>, CheckError> {
    CudaDevice::open(opts.gpu, opts.cache_dir.as_deref(), None).map_err(|e| CheckError::NoGpu {
        ordinal: opts.gpu,
        reason: e.to_string(),
    })
}

/// Runs one section and renders its report. Never panics on a GPU or driver error: those
/// become a failed (or, in a dry run without a GPU, skipped) section with the reason.
pub(crate) fn run_section(opts: &GpuCheckOptions) -> Finished {
    let started = Instant::now();
    match (open(opts), opts.section) {
        (Ok(dev), _) => on_gpu(opts, started, &dev),
        // Training has a CPU half that runs without a GPU.
        (Err(e), Section::Training) => finish(
            opts,
            started,
            None,
            Some(e.to_string()),
            training::run(opts, None),
        ),
        (Err(e), _) => finish::<()>(opts, started, None, None, Err(e)),
    }
}

fn on_gpu(opts: &GpuCheckOptions, started: Instant, dev: &Arc<CudaDevice>) -> Finished {
    let device = Some(DeviceFacts {
        info: dev.info().clone(),
        max_ctas: dev.max_ctas(),
    });
    match opts.section {
        Section::Kernels => finish(opts, started, device, None, kernels::run(opts, dev)),
        Section::Gemm => finish(opts, started, device, None, gemm::run(opts, dev)),
        Section::Training => finish(opts, started, device, None, training::run(opts, Some(dev))),
        Section::Lanes => finish(opts, started, device, None, lanes::run(opts, dev, false)),
        Section::LanesGreen => finish(opts, started, device, None, lanes::run(opts, dev, true)),
        Section::Inference => finish(opts, started, device, None, inference::run(opts, dev)),
        Section::Nvml => finish(opts, started, device, None, nvml::run(opts, dev)),
    }
}

/// Judges and renders a section. `gpu_missing`: the GPU did not open but the section's CPU
/// part ran.
fn finish<F: Figures>(
    opts: &GpuCheckOptions,
    started: Instant,
    device: Option<DeviceFacts>,
    gpu_missing: Option<String>,
    result: Result<F, CheckError>,
) -> Finished {
    let no_gpu_status = if opts.dry_run {
        Status::Skipped
    } else {
        Status::Fail
    };
    let (status, reason, figures) = match result {
        Err(e @ CheckError::NoGpu { .. }) => (no_gpu_status, Some(e.to_string()), None),
        Err(e) => (Status::Fail, Some(e.to_string()), None),
        Ok(f) => match (gpu_missing, f.verdict()) {
            (Some(why), _) => (
                no_gpu_status,
                Some(format!("{why}; only the CPU part ran")),
                Some(f),
            ),
            (None, Verdict::Pass) => (Status::Pass, None, Some(f)),
            (None, Verdict::Fail(why)) => (Status::Fail, Some(why), Some(f)),
        },
    };
    let headline = figures.as_ref().map(F::headline).unwrap_or_default();
    let report = SectionReport {
        format: FORMAT,
        section: opts.section,
        setpoint: crate::VERSION,
        status,
        reason: reason.clone(),
        seconds: started.elapsed().as_secs_f64(),
        dry_run: opts.dry_run,
        device,
        headline: headline.clone(),
        figures,
    };
    let json = serde_json::to_string_pretty(&report).unwrap_or_else(|e| {
        format!(
            "{{\"format\": \"{FORMAT}\", \"section\": \"{}\", \"status\": \"fail\", \
             \"reason\": \"the report could not be rendered: {}\"}}",
            opts.section.as_str(),
            e.to_string().replace(['"', '\\'], "'")
        )
    });
    Finished {
        status,
        reason,
        headline,
        json,
    }
}

impl Figures for () {
    fn verdict(&self) -> Verdict {
        Verdict::Pass
    }
    fn headline(&self) -> Vec<String> {
        Vec::new()
    }
}

/// `n` standard-normal values.
pub(crate) fn random(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.normal() as f32).collect()
}

/// The GPU opened again as `how` asks: with green contexts (SM partitions), for the sections
/// that compare them with CTA budgets, or with `gemm_bf16_wgmma`, for the rows that measure it.
pub(crate) fn open_as(
    opts: &GpuCheckOptions,
    how: crate::device::cuda::OpenOptions,
) -> Result<Arc<CudaDevice>, crate::device::DeviceError> {
    CudaDevice::open_with(opts.gpu, opts.cache_dir.as_deref(), None, how)
}

/// Green contexts, CTA-budget kernels otherwise.
pub(crate) const GREEN: crate::device::cuda::OpenOptions = crate::device::cuda::OpenOptions {
    green_contexts: true,
    wgmma: false,
    convert_every_gemm: false,
    graphs: false,
};

/// Median of `v` (0 when empty).
pub(crate) fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(dry_run: bool) -> GpuCheckOptions {
        GpuCheckOptions {
            section: Section::Kernels,
            gpu: 0,
            digits: None,
            cache_dir: None,
            seconds: None,
            dry_run,
        }
    }

    fn no_gpu() -> Result<(), CheckError> {
        Err(CheckError::NoGpu {
            ordinal: 0,
            reason: "libcuda.so not found".into(),
        })
    }

    #[test]
    fn a_missing_gpu_is_skipped_in_a_dry_run_and_a_failure_otherwise() {
        let dry = finish(&opts(true), Instant::now(), None, None, no_gpu());
        assert_eq!(dry.status, Status::Skipped);
        let real = finish(&opts(false), Instant::now(), None, None, no_gpu());
        assert_eq!(real.status, Status::Fail);
        assert_eq!(
            real.reason.as_deref(),
            Some("no usable GPU 0: libcuda.so not found")
        );
        let v: serde_json::Value = serde_json::from_str(&real.json).unwrap();
        assert_eq!(v["format"], FORMAT);
        assert_eq!(v["section"], "kernels");
        assert_eq!(v["status"], "fail");
        assert!(v["figures"].is_null());
    }

    #[test]
    fn a_cpu_part_without_the_gpu_keeps_its_figures_and_says_so() {
        let f = kernels::KernelsFigures {
            checks: Vec::new(),
            failed: 0,
            tensor_cores: false,
        };
        let done = finish(
            &opts(true),
            Instant::now(),
            None,
            Some("no usable GPU 0: no driver".into()),
            Ok(f),
        );
        assert_eq!(done.status, Status::Skipped);
        assert!(done.reason.unwrap().ends_with("only the CPU part ran"));
        let v: serde_json::Value = serde_json::from_str(&done.json).unwrap();
        assert_eq!(v["figures"]["failed"], 0);
    }

    #[test]
    fn a_step_error_fails_the_section_with_the_step_named() {
        let err: Result<(), CheckError> =
            Err(std::io::Error::other("device lost")).ctx("reading a buffer back");
        let done = finish(&opts(true), Instant::now(), None, None, err);
        assert_eq!(done.status, Status::Fail);
        assert_eq!(
            done.reason.as_deref(),
            Some("reading a buffer back: device lost")
        );
    }

    #[test]
    fn a_check_out_of_tolerance_fails_the_kernels_section_naming_it() {
        let check = |kernel, err: f64| kernels::KernelCheck {
            kernel,
            case: "64x64x64".into(),
            max_rel_err: err,
            tolerance: 1e-4,
            pass: err <= 1e-4,
        };
        let f = kernels::KernelsFigures {
            checks: vec![check("gemm_f32", 1e-6), check("gemm_bf16", 0.5)],
            failed: 1,
            tensor_cores: true,
        };
        let done = finish(&opts(false), Instant::now(), None, None, Ok(f));
        assert_eq!(done.status, Status::Fail);
        let why = done.reason.unwrap();
        assert!(
            why.starts_with("1 of 2 checks out of tolerance, first gemm_bf16"),
            "{why}"
        );
        assert!(
            done.headline[1].contains("gemm_f32 1%"),
            "{:?}",
            done.headline
        );
        assert!(
            done.headline[1].contains("gemm_bf16 500000%"),
            "{:?}",
            done.headline
        );
    }

    #[test]
    fn max_rel_flags_nans_and_length_mismatches() {
        assert_eq!(kernels::max_rel(&[1.0, 2.0], &[1.0, 2.0]), 0.0);
        assert!((kernels::max_rel(&[3.0], &[1.0]) - 1.0).abs() < 1e-12);
        assert_eq!(kernels::max_rel(&[f32::NAN], &[1.0]), f64::INFINITY);
        assert_eq!(kernels::max_rel(&[1.0], &[1.0, 2.0]), f64::INFINITY);
        assert_eq!(kernels::max_rel(&[f32::NAN], &[f32::NAN]), 0.0);
    }
}
