//! Where a service batch's time goes on a GPU lane alone: the `inference` section's service
//! model at batch 1 and 8, in f32 and bf16 (and bf16 converting both operands on every GEMM,
//! on a device opened to keep no bf16 copies), with a gap between batches (as a service sees
//! them) and back to back, with and without the read-back, and the time the host takes to
//! queue a batch's work. Differences between the rows place the time: queueing (launches
//! through the driver), the GPU's work, the synchronisation and copy of the read-back, and
//! what an idle gap costs.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::inference::SERVICE_LAYERS;
use super::lanes::Mechanism;
use super::{CheckError, Context, random};
use crate::device::cuda::CudaBackend;
use crate::device::{Backend, Precision};
use crate::model::{Mlp, Workspace};
use crate::util::rng::Rng;
use crate::util::stats::nearest_rank;

/// One way of issuing batches.
#[derive(Debug, Clone, Copy)]
struct Probe {
    batch: usize,
    precision: Precision,
    gap_ms: u64,
    read_back: bool,
}

/// One probe's latencies.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct LatencyRow {
    /// How the lane's share was enforced.
    pub mechanism: Mechanism,
    /// Rows per batch.
    pub batch: usize,
    /// `f32` or `bf16`.
    pub precision: &'static str,
    /// In bf16, whether buffers kept bf16 copies (else both operands were converted on
    /// every GEMM: `OpenOptions::convert_every_gemm`).
    pub bf16_copies: bool,
    /// Whether each batch went out as one CUDA Graph launch once its size repeated
    /// (`OpenOptions::graphs`).
    pub cuda_graphs: bool,
    /// Gap between batches, ms (0: back to back).
    pub gap_ms: u64,
    /// Whether each batch ends by reading its output back (else by synchronising).
    pub read_back: bool,
    /// Median batch latency, ms, to the output on the host (or the synchronisation).
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Median host time to queue the batch's work, ms (before waiting for it).
    pub queue_p50_ms: f64,
    /// Batches measured.
    pub batches: usize,
}

impl LatencyRow {
    /// One headline line.
    pub fn line(&self) -> String {
        format!(
            "{}, b{} {}{}{} {} {}: p50 {:.3} ms (queueing {:.3} ms), p99 {:.3} ms",
            self.mechanism.label(),
            self.batch,
            self.precision,
            if self.precision == Precision::Bf16.as_str() && !self.bf16_copies {
                " (converted every GEMM)"
            } else {
                ""
            },
            if self.cuda_graphs {
                " (CUDA Graphs)"
            } else {
                ""
            },
            if self.gap_ms == 0 {
                "back to back".to_string()
            } else {
                format!("every {} ms", self.gap_ms)
            },
            if self.read_back {
                "read back"
            } else {
                "synchronised"
            },
            self.p50_ms,
            self.queue_p50_ms,
            self.p99_ms
        )
    }
}

fn quantile(sorted: &[f64], p: f64) -> f64 {
    nearest_rank(sorted, p).unwrap_or(0.0)
}

/// Batches through the service model as `probe` says, for `seconds`.
fn measure(
    g: &CudaBackend,
    mechanism: Mechanism,
    probe: Probe,
    seconds: f64,
) -> Result<LatencyRow, CheckError> {
    g.set_precision(probe.precision);
    let layers = &SERVICE_LAYERS;
    let model = Mlp::init(g, layers, 1).ctx("service model")?;
    let mut ws = Workspace::new(g, layers, probe.batch, false).ctx("service workspace")?;
    let mut rng = Rng::new(2);
    let x = g
        .upload(&random(&mut rng, probe.batch * layers[0]))
        .ctx("uploading")?;
    let mut out = vec![0f32; probe.batch * layers[layers.len() - 1]];
    // Warm-up: modules loaded, scratch allocated, clocks up.
    for _ in 0..20 {
        model.predict(g, &mut ws, &x, probe.batch).ctx("predict")?;
        g.read(ws.output(), &mut out).ctx("reading the output")?;
    }
    let (mut lat, mut queue) = (Vec::new(), Vec::new());
    let start = Instant::now();
    let mut next = start;
    while start.elapsed().as_secs_f64() < seconds {
        if probe.gap_ms > 0 {
            next += Duration::from_millis(probe.gap_ms);
            if let Some(w) = next.checked_duration_since(Instant::now()) {
                std::thread::sleep(w);
            }
        }
        let t0 = Instant::now();
        model.predict(g, &mut ws, &x, probe.batch).ctx("predict")?;
        queue.push(t0.elapsed().as_secs_f64() * 1000.0);
        if probe.read_back {
            g.read(ws.output(), &mut out).ctx("reading the output")?;
        } else {
            g.synchronize().ctx("synchronize")?;
        }
        lat.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    lat.sort_by(f64::total_cmp);
    queue.sort_by(f64::total_cmp);
    Ok(LatencyRow {
        mechanism,
        batch: probe.batch,
        precision: probe.precision.as_str(),
        bf16_copies: g.device().bf16_copies(),
        cuda_graphs: g.device().graphs(),
        gap_ms: probe.gap_ms,
        read_back: probe.read_back,
        p50_ms: quantile(&lat, 0.5),
        p99_ms: quantile(&lat, 0.99),
        queue_p50_ms: quantile(&queue, 0.5),
        batches: lat.len(),
    })
}

/// The probes on `g` (a service lane alone) in `precisions`, `seconds` each: every one, or
/// with `brief` only those with a gap and read-back; `g`'s precision is restored.
pub(super) fn breakdown(
    g: &CudaBackend,
    mechanism: Mechanism,
    (precisions, brief): (&[Precision], bool),
    seconds: f64,
) -> Result<Vec<LatencyRow>, CheckError> {
    let before = g.precision();
    let mut rows = Vec::new();
    let ways: &[(u64, bool)] = if brief {
        &[(2, true)]
    } else {
        &[(2, true), (0, true), (0, false)]
    };
    for batch in [1, 8] {
        for &precision in precisions {
            for &(gap_ms, read_back) in ways {
                let probe = Probe {
                    batch,
                    precision,
                    gap_ms,
                    read_back,
                };
                rows.push(measure(g, mechanism, probe, seconds)?);
            }
        }
    }
    g.set_precision(before);
    Ok(rows)
}
