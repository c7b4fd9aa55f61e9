//! GEMM TFLOP/s through the CUDA backend, as the trainer gets them, timed on the GPU by the
//! lane's busy time: with CTA budgets (budgeted, k-split launches) and on green-context SM
//! partitions (one launch per product). The raw kernels against cuBLAS are measured by
//! the device check's CUDA probe, so the two together show what the backend's launching costs.

use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use super::lanes::Mechanism;
use super::{CheckError, Context, Figures, GpuCheckOptions, Verdict, random};
use crate::device::cuda::{CudaBackend, CudaDevice, StreamPriority};
use crate::device::{Backend, Gemm};
use crate::util::rng::Rng;

/// One size.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct GemmRate {
    /// How the lane's share was enforced.
    pub mechanism: Mechanism,
    /// Whether the device was opened with `gemm_bf16_wgmma` (`device.gemm_wgmma`), which
    /// then runs the bf16 products it takes.
    pub wgmma: bool,
    /// m = n = k.
    pub n: usize,
    /// f32 (SIMT) TFLOP/s, GPU-timed mean over the repetitions.
    pub f32_tflops: f64,
    /// bf16 in, f32 out TFLOP/s (tensor cores when the GPU has them).
    pub bf16_tflops: f64,
    /// The same two from wall time around the repetitions (launch overhead included).
    pub f32_wall_tflops: f64,
    /// See `f32_wall_tflops`.
    pub bf16_wall_tflops: f64,
}

/// The `gemm` section's figures.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct GemmFigures {
    /// Repetitions timed per figure (after one untimed).
    pub reps: usize,
    /// Whether the bf16 figures are tensor-core ones.
    pub tensor_cores: bool,
    /// One row per size.
    pub rates: Vec<GemmRate>,
}

impl Figures for GemmFigures {
    fn verdict(&self) -> Verdict {
        let measured = |t: f64| t.is_finite() && t > 0.0;
        let bad = self
            .rates
            .iter()
            .find(|r| !measured(r.f32_tflops) || !measured(r.bf16_tflops));
        match bad {
            Some(r) => Verdict::Fail(format!(
                "no GPU time was measured at {0}x{0}x{0}: the lane's busy time did not grow",
                r.n
            )),
            None => Verdict::Pass,
        }
    }

    fn headline(&self) -> Vec<String> {
        self.rates
            .iter()
            .map(|r| {
                format!(
                    "{0}x{0}x{0} through the backend ({4}{5}): f32 {1:.1} TFLOP/s, bf16{2} {3:.1} TFLOP/s",
                    r.n,
                    r.f32_tflops,
                    if self.tensor_cores {
                        " (tensor cores)"
                    } else {
                        ""
                    },
                    r.bf16_tflops,
                    r.mechanism.label(),
                    if r.wgmma { ", gemm_wgmma" } else { "" }
                )
            })
            .collect()
    }
}

/// Seconds per repetition of `f`: GPU busy time and wall time, both means over `reps`.
fn time_reps(
    g: &CudaBackend,
    reps: usize,
    mut f: impl FnMut() -> Result<(), CheckError>,
) -> Result<(f64, f64), CheckError> {
    f()?;
    g.synchronize().ctx("synchronize")?;
    let busy0 = g.busy_time();
    let wall0 = Instant::now();
    for _ in 0..reps {
        f()?;
    }
    g.synchronize().ctx("synchronize")?;
    let wall = wall0.elapsed().as_secs_f64();
    let busy = (g.busy_time() - busy0).as_secs_f64();
    Ok((busy / reps as f64, wall / reps as f64))
}

pub(super) fn run(
    opts: &GpuCheckOptions,
    dev: &Arc<CudaDevice>,
) -> Result<GemmFigures, CheckError> {
    let sizes: &[usize] = if opts.dry_run {
        &[256]
    } else {
        &[1024, 2048, 4096, 8192]
    };
    let reps = if opts.dry_run { 2 } else { 5 };
    let tensor_cores = dev.tensor_cores();
    let mut rates = rates_on(dev, Mechanism::CtaBudget, sizes, reps)?;
    // Green contexts need a device opened for them; one that cannot be is the CTA rows alone.
    if let Ok(green) = super::open_as(opts, super::GREEN) {
        rates.extend(rates_on(&green, Mechanism::GreenContexts, sizes, reps)?);
    }
    // On compute capability 9.0, the same with gemm_bf16_wgmma taking the products it can.
    if dev.info().compute_capability == (9, 0) {
        let how = crate::device::cuda::OpenOptions {
            wgmma: true,
            ..Default::default()
        };
        let wgmma = super::open_as(opts, how).ctx("opening the GPU with gemm_wgmma")?;
        if wgmma.wgmma() {
            rates.extend(rates_on(&wgmma, Mechanism::CtaBudget, sizes, reps)?);
        }
    }
    Ok(GemmFigures {
        reps,
        tensor_cores,
        rates,
    })
}

/// Each size's rates through one lane of `dev` holding the whole device.
fn rates_on(
    dev: &Arc<CudaDevice>,
    mechanism: Mechanism,
    sizes: &[usize],
    reps: usize,
) -> Result<Vec<GemmRate>, CheckError> {
    let g = dev
        .lane_backend(StreamPriority::Normal)
        .ctx("creating a lane")?;
    g.set_workers(g.max_workers());
    let tensor_cores = dev.tensor_cores();
    let mut rng = Rng::new(3);
    let mut rates = Vec::new();
    for &n in sizes {
        let flop = 2.0 * (n as f64).powi(3);
        let up = "uploading";
        let (ga, gb) = (
            g.upload(&random(&mut rng, n * n)).ctx(up)?,
            g.upload(&random(&mut rng, n * n)).ctx(up)?,
        );
        let mut gc = g.alloc(n * n).ctx(up)?;
        let spec = Gemm::new(n, n, n);
        let (f32_s, f32_wall) =
            time_reps(&g, reps, || g.gemm(spec, &ga, &gb, &mut gc).ctx("gemm_f32"))?;
        let a16 = g.to_bf16(&ga, n * n).ctx("f32_to_bf16")?;
        let b16 = g.to_bf16(&gb, n * n).ctx("f32_to_bf16")?;
        let (bf_s, bf_wall) = time_reps(&g, reps, || {
            g.gemm_bf16(spec, &a16, &b16, &mut gc, tensor_cores)
                .ctx("gemm_bf16")
        })?;
        let tf = |s: f64| if s > 0.0 { flop / s / 1e12 } else { 0.0 };
        rates.push(GemmRate {
            mechanism,
            wgmma: dev.wgmma(),
            n,
            f32_tflops: tf(f32_s),
            bf16_tflops: tf(bf_s),
            f32_wall_tflops: tf(f32_wall),
            bf16_wall_tflops: tf(bf_wall),
        });
    }
    Ok(rates)
}
