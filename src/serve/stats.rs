//! Cumulative statistics of a service: counts, summed phase timings and histograms.

use super::request::Outcome;
use crate::util::histogram::{BATCH_BOUNDS, Histogram, LATENCY_BOUNDS_S};

/// Durations of one batch's phases.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct PhaseNs {
    /// Gathering, normalising and copying inputs to the device.
    pub input_ns: u64,
    /// The forward pass.
    pub infer_ns: u64,
    /// Copying outputs back and splitting them per request.
    pub output_ns: u64,
}

impl PhaseNs {
    fn add(&mut self, o: &PhaseNs) {
        self.input_ns += o.input_ns;
        self.infer_ns += o.infer_ns;
        self.output_ns += o.output_ns;
    }
}

/// Statistics of the batches of one size (Triton's `batch_stats`).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct BatchSizeStats {
    /// Batches of this size run.
    pub count: u64,
    /// Summed phase durations of those batches.
    pub ns: PhaseNs,
}

/// Cumulative statistics of a service.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ServiceStats {
    /// Requests answered with a prediction for every row (Triton's `success.count`).
    pub success_count: u64,
    /// Requests with a row that failed in the forward pass.
    pub failure_count: u64,
    /// Rows computed in successful forward passes (Triton's `inference_count`).
    pub success_rows: u64,
    /// Rows whose forward pass failed.
    pub failure_rows: u64,
    /// Requests refused because the queue was full.
    pub rejected_count: u64,
    /// Rows taken out of the queue unrun because their deadline had passed.
    pub expired_count: u64,
    /// Forward passes run (Triton's `execution_count`).
    pub batch_count: u64,
    /// Sum over successful requests of their queue time (to their first batch), in ns.
    pub queue_ns: u64,
    /// Sum over successful requests of their batches' phase durations (each request counts
    /// its whole batch's, as Triton reports them).
    pub compute: PhaseNs,
    /// Per batch size (index = size; index 0 unused).
    pub batch_sizes: Vec<BatchSizeStats>,
    /// Queue time of successful requests, seconds.
    pub queue_hist: Histogram,
    /// Compute time (all phases) of successful requests, seconds.
    pub compute_hist: Histogram,
    /// Sizes of the batches run.
    pub batch_hist: Histogram,
    /// When the last batch finished, in ms since the Unix epoch (0 = never).
    pub last_inference_ms: u64,
}

impl ServiceStats {
    /// Adds `other`'s counts, times and histograms: the statistics of a service's replicas
    /// together.
    pub(crate) fn absorb(&mut self, other: &ServiceStats) {
        self.success_count += other.success_count;
        self.failure_count += other.failure_count;
        self.success_rows += other.success_rows;
        self.failure_rows += other.failure_rows;
        self.rejected_count += other.rejected_count;
        self.expired_count += other.expired_count;
        self.batch_count += other.batch_count;
        self.queue_ns += other.queue_ns;
        self.compute.add(&other.compute);
        if self.batch_sizes.len() < other.batch_sizes.len() {
            self.batch_sizes
                .resize(other.batch_sizes.len(), BatchSizeStats::default());
        }
        for (a, b) in self.batch_sizes.iter_mut().zip(&other.batch_sizes) {
            a.count += b.count;
            a.ns.add(&b.ns);
        }
        self.queue_hist.absorb(&other.queue_hist);
        self.compute_hist.absorb(&other.compute_hist);
        self.batch_hist.absorb(&other.batch_hist);
        self.last_inference_ms = self.last_inference_ms.max(other.last_inference_ms);
    }

    pub(super) fn new(batch_limit: usize) -> Self {
        ServiceStats {
            success_count: 0,
            failure_count: 0,
            success_rows: 0,
            failure_rows: 0,
            rejected_count: 0,
            expired_count: 0,
            batch_count: 0,
            queue_ns: 0,
            compute: PhaseNs::default(),
            batch_sizes: vec![BatchSizeStats::default(); batch_limit + 1],
            queue_hist: Histogram::new(LATENCY_BOUNDS_S),
            compute_hist: Histogram::new(LATENCY_BOUNDS_S),
            batch_hist: Histogram::new(BATCH_BOUNDS),
            last_inference_ms: 0,
        }
    }

    /// Counts a request whose last row has been answered.
    pub(super) fn record_request(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Success {
                queue_ns,
                compute,
                compute_s,
            } => {
                self.success_count += 1;
                self.queue_ns += queue_ns;
                self.queue_hist.observe(queue_ns as f64 * 1e-9);
                self.compute.input_ns += compute.input_ns;
                self.compute.infer_ns += compute.infer_ns;
                self.compute.output_ns += compute.output_ns;
                self.compute_hist.observe(compute_s);
            }
            Outcome::Failure => self.failure_count += 1,
            // The caller answers it as a timeout and counts it there.
            Outcome::Expired => {}
        }
    }

    /// Summed compute time of successful requests, all phases, in ns.
    pub fn compute_ns(&self) -> u64 {
        self.compute.input_ns + self.compute.infer_ns + self.compute.output_ns
    }
}
