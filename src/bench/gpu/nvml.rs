//! setpoint's NVML samples against nvidia-smi's, taken side by side while the GPU is idle,
//! busy with GEMMs, and idle again: whether the two agree on utilisation and memory.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{CheckError, Context, Figures, GpuCheckOptions, Verdict, random};
use crate::bench::smi::{CrossCheck, CrossCheckReport, MEMORY_AGREEMENT_FRAC, UTIL_AGREEMENT_PCT};
use crate::device::cuda::{CudaDevice, StreamPriority};
use crate::device::{Backend, Gemm};
use crate::util::rng::Rng;

/// Sampling interval of both sides, ms.
pub(crate) const INTERVAL_MS: u64 = 100;

/// The `nvml` section's figures.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct NvmlFigures {
    /// Seconds of each phase: idle, busy, idle.
    pub phase_seconds: [f64; 3],
    /// Sampling interval, ms.
    pub interval_ms: u64,
    /// The comparison.
    pub cross_check: CrossCheckReport,
}

impl Figures for NvmlFigures {
    fn verdict(&self) -> Verdict {
        let c = &self.cross_check;
        if c.correlation.matched == 0 {
            return Verdict::Fail(format!(
                "no NVML sample paired with an nvidia-smi row ({} ours, {} nvidia-smi)",
                c.correlation.our_samples, c.correlation.smi_rows
            ));
        }
        let mut why = Vec::new();
        if c.utilization_agrees == Some(false) {
            why.push(format!(
                "utilisation differs by more than {UTIL_AGREEMENT_PCT} points on average"
            ));
        }
        if c.memory_agrees == Some(false) {
            why.push(format!(
                "memory used differs by more than {:.0}% of the memory on average",
                MEMORY_AGREEMENT_FRAC * 100.0
            ));
        }
        if why.is_empty() {
            Verdict::Pass
        } else {
            Verdict::Fail(why.join("; "))
        }
    }

    fn headline(&self) -> Vec<String> {
        let c = &self.cross_check.correlation;
        let mut lines = vec![format!(
            "{} NVML samples, {} nvidia-smi rows, {} paired",
            c.our_samples, c.smi_rows, c.matched
        )];
        let fields: Vec<String> = c
            .fields
            .iter()
            .map(|f| match f.mean_abs_diff {
                Some(d) => format!("{} {d:.2} {}", f.field, f.unit),
                None => format!("{} -", f.field),
            })
            .collect();
        lines.push(format!("mean |NVML - nvidia-smi|: {}", fields.join(", ")));
        lines
    }
}

pub(super) fn run(
    opts: &GpuCheckOptions,
    dev: &Arc<CudaDevice>,
) -> Result<NvmlFigures, CheckError> {
    let phase_seconds = if opts.dry_run {
        [0.3, 0.5, 0.3]
    } else {
        [1.5, 4.0, 1.5]
    };
    let g = dev
        .lane_backend(StreamPriority::Normal)
        .ctx("creating a lane")?;
    let n = 2048;
    let mut rng = Rng::new(5);
    let a = g.upload(&random(&mut rng, n * n)).ctx("uploading")?;
    let b = g.upload(&random(&mut rng, n * n)).ctx("uploading")?;
    let mut c = g.alloc(n * n).ctx("uploading")?;
    let mut cross = CrossCheck::start(INTERVAL_MS).map_err(|reason| CheckError::Smi { reason })?;
    cross.begin_phase("idle");
    std::thread::sleep(Duration::from_secs_f64(phase_seconds[0]));
    cross.begin_phase("gemm");
    let start = Instant::now();
    let load = (|| {
        while start.elapsed().as_secs_f64() < phase_seconds[1] {
            g.gemm(Gemm::new(n, n, n), &a, &b, &mut c).ctx("gemm_f32")?;
            g.synchronize().ctx("synchronize")?;
        }
        Ok::<(), CheckError>(())
    })();
    cross.begin_phase("idle-after");
    std::thread::sleep(Duration::from_secs_f64(phase_seconds[2]));
    let cross_check = cross.finish();
    load?;
    Ok(NvmlFigures {
        phase_seconds,
        interval_ms: INTERVAL_MS,
        cross_check,
    })
}
