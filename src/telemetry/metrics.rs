//! GPU telemetry in the Prometheus text exposition format (0.0.4).

use std::fmt::Write;

use super::GpuSample;

/// Escapes a label value: backslash, double quote and line feed.
fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{v}")
    }
}

type Getter = fn(&GpuSample) -> Option<f64>;

/// The per-GPU series: name, type, help, value.
const SERIES: [(&str, &str, &str, Getter); 9] = [
    (
        "setpoint_gpu_utilization_ratio",
        "gauge",
        "Fraction of the last sampling period during which a kernel ran on the GPU (NVML).",
        |s| s.util_gpu_pct.map(|v| v / 100.0),
    ),
    (
        "setpoint_gpu_memory_used_bytes",
        "gauge",
        "Device memory in use.",
        |s| s.mem_used_bytes.map(|v| v as f64),
    ),
    (
        "setpoint_gpu_memory_total_bytes",
        "gauge",
        "Device memory installed.",
        |s| s.mem_total_bytes.map(|v| v as f64),
    ),
    (
        "setpoint_gpu_power_watts",
        "gauge",
        "Power draw of the GPU.",
        |s| s.power_w,
    ),
    (
        "setpoint_gpu_energy_joules_total",
        "counter",
        "Energy used by the GPU since the driver was loaded.",
        |s| s.energy_j,
    ),
    (
        "setpoint_gpu_sm_clock_hertz",
        "gauge",
        "Current SM clock.",
        |s| s.sm_clock_hz,
    ),
    (
        "setpoint_gpu_temperature_celsius",
        "gauge",
        "GPU die temperature.",
        |s| s.temperature_c,
    ),
    (
        "setpoint_gpu_own_utilization_ratio",
        "gauge",
        "SM utilisation of setpoint's own processes on the GPU (NVML per-process statistics).",
        |s| s.own_util_pct.map(|v| v / 100.0),
    ),
    (
        "setpoint_gpu_foreign_utilization_ratio",
        "gauge",
        "SM utilisation of processes setpoint does not own on the GPU (NVML per-process statistics).",
        |s| s.foreign_util_pct.map(|v| v / 100.0),
    ),
];

/// Appends the GPU series of `samples` and the failed-read counter to `out`. A series whose
/// value is unknown is left out; a family with no series at all is left out entirely.
pub fn render_metrics(samples: &[GpuSample], failed_reads: u64, out: &mut String) {
    for (name, kind, help, get) in SERIES {
        let values: Vec<(&GpuSample, f64)> = samples
            .iter()
            .filter_map(|s| get(s).map(|v| (s, v)))
            .collect();
        if values.is_empty() {
            continue;
        }
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (s, v) in values {
            let _ = writeln!(
                out,
                "{name}{{gpu=\"{}\",uuid=\"{}\"}} {}",
                s.index,
                escape(&s.uuid),
                number(v)
            );
        }
    }
    let throttled: Vec<(&GpuSample, &String)> = samples
        .iter()
        .flat_map(|s| s.throttle_reasons.iter().map(move |r| (s, r)))
        .collect();
    if !throttled.is_empty() {
        let name = "setpoint_gpu_throttled";
        let _ = writeln!(
            out,
            "# HELP {name} 1 for each reason currently holding the GPU's clocks down."
        );
        let _ = writeln!(out, "# TYPE {name} gauge");
        for (s, r) in throttled {
            let _ = writeln!(
                out,
                "{name}{{gpu=\"{}\",uuid=\"{}\",reason=\"{}\"}} 1",
                s.index,
                escape(&s.uuid),
                escape(r)
            );
        }
    }
    let name = "setpoint_gpu_telemetry_failed_reads_total";
    let _ = writeln!(
        out,
        "# HELP {name} GPU telemetry reads that failed (the previous sample was kept)."
    );
    let _ = writeln!(out, "# TYPE {name} counter");
    let _ = writeln!(out, "{name} {failed_reads}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape("x\ny"), "x\\ny");
    }

    #[test]
    fn numbers_print_like_prometheus() {
        assert_eq!(number(0.5), "0.5");
        assert_eq!(number(3e9), "3000000000");
        assert_eq!(number(f64::INFINITY), "+Inf");
        assert_eq!(number(f64::NAN), "NaN");
    }
}
