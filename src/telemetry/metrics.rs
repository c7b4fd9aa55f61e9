//! GPU telemetry in the Prometheus text exposition format (0.0.4).

use super::GpuSample;
use crate::util::prometheus::{self, Empty, Family, Row, Samples};

/// Every per-GPU series of `s` with a known value, labelled by GPU index and UUID.
fn per_gpu(samples: &[GpuSample], out: &mut Samples<'_>, get: fn(&GpuSample) -> Option<f64>) {
    for s in samples {
        if let Some(v) = get(s) {
            out.add(&[("gpu", &s.index.to_string()), ("uuid", &s.uuid)], v);
        }
    }
}

/// The per-GPU families; a family none of whose GPUs has a value is left out.
const GPU: [Row<[GpuSample]>; 10] = [
    (
        Family::gauge(
            "setpoint_gpu_utilization_ratio",
            "Fraction of the last sampling period during which a kernel ran on the GPU (NVML).",
        ),
        |g, o| per_gpu(g, o, |s| s.util_gpu_pct.map(|v| v / 100.0)),
    ),
    (
        Family::gauge("setpoint_gpu_memory_used_bytes", "Device memory in use."),
        |g, o| per_gpu(g, o, |s| s.mem_used_bytes.map(|v| v as f64)),
    ),
    (
        Family::gauge(
            "setpoint_gpu_memory_total_bytes",
            "Device memory installed.",
        ),
        |g, o| per_gpu(g, o, |s| s.mem_total_bytes.map(|v| v as f64)),
    ),
    (
        Family::gauge("setpoint_gpu_power_watts", "Power draw of the GPU."),
        |g, o| per_gpu(g, o, |s| s.power_w),
    ),
    (
        Family::counter(
            "setpoint_gpu_energy_joules_total",
            "Energy used by the GPU since the driver was loaded.",
        ),
        |g, o| per_gpu(g, o, |s| s.energy_j),
    ),
    (
        Family::gauge("setpoint_gpu_sm_clock_hertz", "Current SM clock."),
        |g, o| per_gpu(g, o, |s| s.sm_clock_hz),
    ),
    (
        Family::gauge("setpoint_gpu_temperature_celsius", "GPU die temperature."),
        |g, o| per_gpu(g, o, |s| s.temperature_c),
    ),
    (
        Family::gauge(
            "setpoint_gpu_own_utilization_ratio",
            "SM utilisation of setpoint's own processes on the GPU (NVML per-process statistics).",
        ),
        |g, o| per_gpu(g, o, |s| s.own_util_pct.map(|v| v / 100.0)),
    ),
    (
        Family::gauge(
            "setpoint_gpu_foreign_utilization_ratio",
            "SM utilisation of processes setpoint does not own on the GPU (NVML per-process statistics).",
        ),
        |g, o| per_gpu(g, o, |s| s.foreign_util_pct.map(|v| v / 100.0)),
    ),
    (
        Family::gauge(
            "setpoint_gpu_throttled",
            "1 for each reason currently holding the GPU's clocks down.",
        ),
        |g, o| {
            for s in g {
                for r in &s.throttle_reasons {
                    let gpu = s.index.to_string();
                    o.add(&[("gpu", &gpu), ("uuid", &s.uuid), ("reason", r)], 1.0);
                }
            }
        },
    ),
];

const FAILED_READS: Family = Family::counter(
    "setpoint_gpu_telemetry_failed_reads_total",
    "GPU telemetry reads that failed (the previous sample was kept).",
);

/// Appends the GPU series of `samples` and the failed-read counter to `out`. A series whose
/// value is unknown is left out; a family with no series at all is left out entirely.
pub fn render_metrics(samples: &[GpuSample], failed_reads: u64, out: &mut String) {
    prometheus::table(out, &GPU, samples, Empty::Omit);
    prometheus::family(out, &FAILED_READS, Empty::Keep, |o| {
        o.add(&[], failed_reads as f64)
    });
}
