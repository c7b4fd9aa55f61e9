//! `--nvidia-smi`: nvidia-smi sampled beside a benchmark, aligned with setpoint's own NVML
//! samples and the benchmark's phases; the agreement of the two, and energy per phase.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::Serialize;

use crate::telemetry::{
    Correlation, GpuSample, NvmlSource, Phase, Sampler, SkippedLines, SmiError, SmiRecorder,
    TelemetryError, correlate, unix_now_s,
};

/// Why the cross-check could not start.
#[derive(Debug, thiserror::Error)]
pub enum CrossCheckError {
    #[error("{0}")]
    Nvml(#[from] TelemetryError),
    #[error("{0}")]
    Smi(#[from] SmiError),
    #[error("cannot start the NVML sampler: {0}")]
    Sampler(std::io::Error),
}

/// Utilisation may differ from nvidia-smi's by this many points on average.
pub(crate) const UTIL_AGREEMENT_PCT: f64 = 5.0;
/// Memory used may differ by this fraction of the GPU's memory on average.
pub(crate) const MEMORY_AGREEMENT_FRAC: f64 = 0.01;

/// nvidia-smi and setpoint's NVML sampler, both running until [`CrossCheck::finish`].
pub(crate) struct CrossCheck {
    recorder: SmiRecorder,
    stop: Arc<AtomicBool>,
    sampler: std::thread::JoinHandle<Vec<GpuSample>>,
    phases: Vec<Phase>,
    open: Option<(String, f64)>,
}

/// What a cross-check found.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct CrossCheckReport {
    /// Per field agreement and per phase energy.
    pub correlation: Correlation,
    /// nvidia-smi lines that were not rows.
    pub skipped: SkippedLines,
    /// Mean |difference| of utilisation within [`UTIL_AGREEMENT_PCT`].
    pub utilization_agrees: Option<bool>,
    /// Mean |difference| of memory used within [`MEMORY_AGREEMENT_FRAC`] of the memory.
    pub memory_agrees: Option<bool>,
}

impl CrossCheck {
    /// Starts nvidia-smi (`-lms interval_ms`) and an NVML sampler at the same interval.
    pub fn start(interval_ms: u64) -> Result<CrossCheck, CrossCheckError> {
        let source = NvmlSource::open()?;
        let recorder = SmiRecorder::start(interval_ms)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let sampler = std::thread::Builder::new()
            .name("setpoint-nvml-sampler".into())
            .spawn(move || {
                let mut s = Sampler::new(Box::new(source), 1);
                let mut all = Vec::new();
                let mut last = f64::NEG_INFINITY;
                while !flag.load(Ordering::Relaxed) {
                    for g in s.poll() {
                        // A failed read leaves the previous samples current: keep each once.
                        if g.at_unix_s > last {
                            all.push(g.clone());
                        }
                    }
                    last = s.latest().iter().map(|g| g.at_unix_s).fold(last, f64::max);
                    std::thread::sleep(Duration::from_millis(interval_ms.max(10)));
                }
                all
            })
            .map_err(CrossCheckError::Sampler)?;
        Ok(CrossCheck {
            recorder,
            stop,
            sampler,
            phases: Vec::new(),
            open: None,
        })
    }

    /// Starts a phase (ending the one open, if any).
    pub(crate) fn begin_phase(&mut self, name: &str) {
        self.end_phase();
        self.open = Some((name.to_string(), unix_now_s()));
    }

    /// Ends the open phase.
    pub(crate) fn end_phase(&mut self) {
        if let Some((name, start)) = self.open.take() {
            self.phases.push(Phase {
                name,
                start_unix_s: start,
                end_unix_s: unix_now_s(),
            });
        }
    }

    /// Stops both and compares them.
    pub fn finish(mut self) -> CrossCheckReport {
        self.end_phase();
        self.stop.store(true, Ordering::Relaxed);
        let ours = self.sampler.join().unwrap_or_default();
        let (rows, skipped) = self.recorder.stop();
        let correlation = correlate(&rows, &ours, &self.phases);
        let field = |name: &str| {
            correlation
                .fields
                .iter()
                .find(|f| f.field == name)
                .and_then(|f| f.mean_abs_diff)
        };
        let total_mib = ours
            .iter()
            .filter_map(|g| g.mem_total_bytes)
            .max()
            .map(|b| b as f64 / (1024.0 * 1024.0));
        CrossCheckReport {
            utilization_agrees: field("utilization").map(|d| d <= UTIL_AGREEMENT_PCT),
            memory_agrees: field("memory_used")
                .zip(total_mib)
                .map(|(d, t)| d <= MEMORY_AGREEMENT_FRAC * t),
            correlation,
            skipped,
        }
    }
}
