//! `setpoint devices`: what the GPUs report, in the shape of `nvidia-smi`.

use std::fmt::Write;

use serde::Serialize;

use super::{GpuSample, TelemetryError, TelemetrySource};
use crate::util::table::Table;

const MIB: f64 = 1024.0 * 1024.0;

#[derive(Serialize)]
struct JsonGpu<'a> {
    #[serde(flatten)]
    sample: &'a GpuSample,
    /// Always empty: the command does not see the daemon's lanes (the key stays, so that
    /// the document keeps its shape).
    lanes: [&'a str; 0],
}

#[derive(Serialize)]
struct JsonReport<'a> {
    /// Whether NVML answered this time.
    nvml_available: bool,
    /// Where the telemetry came from, when it came.
    source: Option<String>,
    /// Why there is no GPU telemetry, when there is none.
    reason: Option<String>,
    gpus: Vec<JsonGpu<'a>>,
    /// Always empty, as [`JsonGpu::lanes`].
    unmatched_lanes: [&'a str; 0],
    /// The CPU backend's size.
    cpu_cores: usize,
}

fn opt(v: Option<f64>, digits: usize, unit: &str) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{v:.digits$}{unit}"),
        _ => "-".to_string(),
    }
}

fn mib(v: Option<u64>) -> String {
    v.map_or("-".to_string(), |b| format!("{:.0}", b as f64 / MIB))
}

/// The GPUs as a table like `nvidia-smi`'s, one row per sample in order.
fn gpu_table(samples: &[GpuSample]) -> Table {
    let mut t = Table::new(&[
        "GPU",
        "NAME",
        "UUID",
        "MEMORY MiB",
        "UTIL",
        "POWER",
        "SM CLOCK",
        "TEMP",
    ]);
    for s in samples {
        t.row(vec![
            s.index.to_string(),
            if s.name.is_empty() {
                "-".into()
            } else {
                s.name.clone()
            },
            if s.uuid.is_empty() {
                "-".into()
            } else {
                s.uuid.clone()
            },
            format!("{} / {}", mib(s.mem_used_bytes), mib(s.mem_total_bytes)),
            opt(s.util_gpu_pct, 0, " %"),
            opt(s.power_w, 1, " W"),
            opt(s.sm_clock_hz.map(|h| h / 1e6), 0, " MHz"),
            opt(s.temperature_c, 0, " C"),
        ]);
    }
    t
}

/// The devices report as one pretty-printed JSON object, ending in `\n`.
fn json_text(
    described: Option<String>,
    reason: Option<String>,
    samples: &[GpuSample],
    cpu_cores: usize,
) -> String {
    let report = JsonReport {
        nvml_available: reason.is_none(),
        source: described,
        reason,
        gpus: samples
            .iter()
            .map(|s| JsonGpu {
                sample: s,
                lanes: [],
            })
            .collect(),
        unmatched_lanes: [],
        cpu_cores,
    };
    let mut text = serde_json::to_string_pretty(&report)
        .unwrap_or_else(|e| format!("{{\"error\": \"cannot encode the report: {e}\"}}"));
    text.push('\n');
    text
}

/// The indented lines under one GPU's table row: throttling, SM load, processes, lanes.
fn gpu_details(out: &mut String, s: &GpuSample) {
    if !s.throttle_reasons.is_empty() {
        let _ = writeln!(out, "     throttled: {}", s.throttle_reasons.join(", "));
    }
    if s.own_util_pct.is_some() || s.foreign_util_pct.is_some() {
        let _ = writeln!(
            out,
            "     sm load: own {}, foreign {}",
            opt(s.own_util_pct, 0, " %"),
            opt(s.foreign_util_pct, 0, " %")
        );
    }
    if s.processes.is_empty() {
        let _ = writeln!(out, "     processes: none");
    }
    for p in &s.processes {
        let _ = writeln!(
            out,
            "     process {}: {} MiB, sm {}{}",
            p.pid,
            mib(p.used_mem_bytes),
            opt(p.sm_util_pct, 0, " %"),
            if p.own { " (this process)" } else { "" }
        );
    }
    let _ = writeln!(out, "     lanes: none");
}

/// Renders the devices report. `source` is the opened telemetry source, or the error that
/// kept it from opening (shown by its `Display`). Each GPU's `lanes: none` line (and the
/// JSON's empty `lanes` lists) say that this command places no lane. Without GPU telemetry the text is one line with the
/// reason and then the CPU backend line (`cpu: N cores`); with it, a table like
/// `nvidia-smi`'s followed by the same CPU line. `json` gives the same content as one
/// pretty-printed JSON object.
pub fn devices_report(
    source: Result<&mut dyn TelemetrySource, TelemetryError>,
    cpu_cores: usize,
    json: bool,
) -> String {
    let (described, read) = match source {
        Ok(src) => {
            let d = src.describe();
            let r = src.sample().map_err(|e| e.to_string());
            (Some(d), r)
        }
        Err(why) => (None, Err(format!("NVML not available: {why}"))),
    };
    let (mut samples, reason) = match read {
        Ok(s) => (s, None),
        Err(r) => (Vec::new(), Some(r)),
    };
    samples.sort_by_key(|s| s.index);

    if json {
        return json_text(described, reason, &samples, cpu_cores);
    }

    let mut out = String::new();
    if let Some(r) = &reason {
        let _ = writeln!(out, "{r}");
    } else if samples.is_empty() {
        let _ = writeln!(
            out,
            "{}: no GPUs",
            described.as_deref().unwrap_or("telemetry")
        );
    } else {
        if let Some(d) = &described {
            let _ = writeln!(out, "{d}");
        }
        let table = gpu_table(&samples);
        let lines = table.lines();
        let _ = writeln!(out, "{}", lines[0]);
        for (s, row) in samples.iter().zip(&lines[1..]) {
            let _ = writeln!(out, "{row}");
            gpu_details(&mut out, s);
        }
    }
    let _ = writeln!(out, "cpu: {cpu_cores} cores");
    out
}
