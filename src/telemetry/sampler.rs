//! The daemon's view of the GPUs, refreshed once per control period.

use std::collections::{BTreeMap, VecDeque};

use super::{GpuSample, TelemetrySource};

/// A failed read is logged on the first failure and then on every `WARN_EVERY`-th one, so a
/// host whose NVML has gone away does not flood the log at the control period's rate.
pub const WARN_EVERY: u64 = 100;

/// Polls a [`TelemetrySource`] and keeps the last good read plus a short history per GPU.
pub struct Sampler {
    source: Box<dyn TelemetrySource>,
    keep: usize,
    latest: Vec<GpuSample>,
    history: BTreeMap<u32, VecDeque<GpuSample>>,
    reads: u64,
    failed_reads: u64,
    consecutive_failures: u64,
    last_error: Option<String>,
}

impl Sampler {
    /// A sampler over `source` keeping the last `keep` samples of each GPU (at least 1).
    pub fn new(source: Box<dyn TelemetrySource>, keep: usize) -> Sampler {
        Sampler {
            source,
            keep: keep.max(1),
            latest: Vec::new(),
            history: BTreeMap::new(),
            reads: 0,
            failed_reads: 0,
            consecutive_failures: 0,
            last_error: None,
        }
    }

    /// Reads the source once and returns the current samples, one per GPU by index. A failed
    /// read is counted, logged (rate-limited, see [`WARN_EVERY`]) and skipped: the previous
    /// good samples stay current. A good read replaces the current set entirely.
    pub fn poll(&mut self) -> &[GpuSample] {
        self.reads += 1;
        match self.source.sample() {
            Ok(mut samples) => {
                if self.consecutive_failures > 0 {
                    tracing::info!(
                        failed = self.consecutive_failures,
                        "GPU telemetry read again after failed reads"
                    );
                }
                self.consecutive_failures = 0;
                samples.sort_by_key(|s| s.index);
                samples.dedup_by_key(|s| s.index);
                for s in &samples {
                    let ring = self.history.entry(s.index).or_default();
                    if ring.len() == self.keep {
                        ring.pop_front();
                    }
                    ring.push_back(s.clone());
                }
                self.latest = samples;
            }
            Err(e) => {
                self.failed_reads += 1;
                self.consecutive_failures += 1;
                let msg = e.to_string();
                if self.failed_reads == 1 || self.failed_reads.is_multiple_of(WARN_EVERY) {
                    tracing::warn!(
                        failed_reads = self.failed_reads,
                        source = %self.source.describe(),
                        "GPU telemetry read failed: {msg}; keeping the previous sample \
                         (logged on the first failure and every {WARN_EVERY}th)"
                    );
                }
                self.last_error = Some(msg);
            }
        }
        &self.latest
    }

    /// The current samples (the last good read), ordered by GPU index.
    pub fn latest(&self) -> &[GpuSample] {
        &self.latest
    }

    /// The current sample of GPU `gpu`.
    pub fn current(&self, gpu: u32) -> Option<&GpuSample> {
        self.latest.iter().find(|s| s.index == gpu)
    }

    /// The recent samples of GPU `gpu`, oldest first (at most `keep`).
    pub fn history(&self, gpu: u32) -> impl Iterator<Item = &GpuSample> {
        self.history.get(&gpu).into_iter().flatten()
    }

    /// Every recent sample of every GPU, by GPU then time (for correlation).
    pub fn all_history(&self) -> Vec<GpuSample> {
        self.history.values().flatten().cloned().collect()
    }

    /// Load on GPU `gpu` from processes that are not ours, as a fraction 0..1; 0 when unknown.
    pub fn foreign_load(&self, gpu: u32) -> f64 {
        self.current(gpu)
            .and_then(|s| s.foreign_util_pct)
            .filter(|v| v.is_finite())
            .map_or(0.0, |v| (v / 100.0).clamp(0.0, 1.0))
    }

    /// Free device memory of GPU `gpu`, bytes, when known.
    pub fn memory_free_bytes(&self, gpu: u32) -> Option<u64> {
        self.current(gpu)?.memory_free_bytes()
    }

    /// Why GPU `gpu`'s clocks are held down now (empty when nothing is, or unknown).
    pub fn throttling(&self, gpu: u32) -> Vec<String> {
        self.current(gpu)
            .map(|s| s.throttle_reasons.clone())
            .unwrap_or_default()
    }

    /// Reads attempted.
    pub fn reads(&self) -> u64 {
        self.reads
    }

    /// Reads that failed since the sampler was made (the metrics counter).
    pub fn failed_reads(&self) -> u64 {
        self.failed_reads
    }

    /// Failed reads since the last good one.
    pub fn consecutive_failures(&self) -> u64 {
        self.consecutive_failures
    }

    /// The message of the most recent failed read, if any read ever failed.
    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    /// Where the samples come from.
    pub fn describe(&self) -> String {
        self.source.describe()
    }
}
