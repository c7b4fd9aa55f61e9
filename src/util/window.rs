//! Latency samples over a sliding time window, for quantiles the controller steers by.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde::Serialize;

/// Most samples a window keeps; beyond it the oldest go first (at 50,000 requests per
/// second over a 1 s window the quantiles are then over the last second all the same).
const MAX_SAMPLES: usize = 65_536;

/// Quantiles of one quantity.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Quantiles {
    /// Median, seconds.
    pub p50: f64,
    /// 95th percentile, seconds.
    pub p95: f64,
    /// 99th percentile, seconds.
    pub p99: f64,
}

/// Quantiles over the window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct WindowStats {
    /// Samples in the window.
    pub count: usize,
    /// Request latency: queue plus compute.
    pub total: Quantiles,
    /// Time waiting in the queue.
    pub queue: Quantiles,
    /// Time computing.
    pub compute: Quantiles,
}

/// Samples of (queue, compute) seconds with their time, over the last `span`.
#[derive(Debug, Clone)]
pub(crate) struct LatencyWindow {
    span: Duration,
    samples: VecDeque<(Instant, f32, f32)>,
}

/// Nearest-rank p50, p95 and p99 of `v`, by selection rather than a sort: the control loop
/// reads up to 65,536 samples of each quantity every period, and sorting them was about 2 %
/// of the daemon's CPU at 30,000 requests per second (`perf record`). Each selection leaves
/// the ranks above it in the tail, so the next one searches only there.
fn quantiles(mut v: Vec<f32>) -> Quantiles {
    let n = v.len();
    if n == 0 {
        return Quantiles::default();
    }
    let mut from = 0;
    let mut at = |q: f64| {
        let i = crate::util::stats::nearest_rank_index(n, q).unwrap_or(0);
        v[from..].select_nth_unstable_by(i - from, |a, b| a.total_cmp(b));
        from = i;
        f64::from(v[i])
    };
    Quantiles {
        p50: at(0.50),
        p95: at(0.95),
        p99: at(0.99),
    }
}

impl LatencyWindow {
    /// An empty window of `span`.
    pub fn new(span: Duration) -> Self {
        LatencyWindow {
            span,
            samples: VecDeque::new(),
        }
    }

    /// Changes the window's length; samples older than the new span leave at the next read.
    pub(crate) fn set_span(&mut self, span: Duration) {
        self.span = span;
    }

    /// Adds one request that finished at `at`.
    pub fn push(&mut self, at: Instant, queue_s: f64, compute_s: f64) {
        if self.samples.len() >= MAX_SAMPLES {
            self.samples.pop_front();
        }
        self.samples
            .push_back((at, queue_s as f32, compute_s as f32));
    }

    fn evict(&mut self, now: Instant) {
        while self
            .samples
            .front()
            .is_some_and(|s| now.saturating_duration_since(s.0) > self.span)
        {
            self.samples.pop_front();
        }
    }

    /// Quantiles of the samples within the window ending at `now`.
    pub fn stats(&mut self, now: Instant) -> WindowStats {
        self.evict(now);
        WindowStats::of(self.samples.iter().map(|s| (s.1, s.2)))
    }

    /// The (queue, compute) seconds of the samples within the window ending at `now`.
    pub(crate) fn samples(&mut self, now: Instant) -> Vec<(f32, f32)> {
        self.evict(now);
        self.samples.iter().map(|s| (s.1, s.2)).collect()
    }
}

impl WindowStats {
    /// Quantiles of (queue, compute) samples, those of several windows together.
    pub(crate) fn of(samples: impl Iterator<Item = (f32, f32)> + Clone) -> Self {
        WindowStats {
            count: samples.clone().count(),
            total: quantiles(samples.clone().map(|s| s.0 + s.1).collect()),
            queue: quantiles(samples.clone().map(|s| s.0).collect()),
            compute: quantiles(samples.map(|s| s.1).collect()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selected_quantiles_are_the_sorted_nearest_ranks() {
        let mut rng = crate::util::rng::Rng::new(7);
        for n in (1..200).chain([1000, 4097]) {
            // Few distinct values at small n, so that ties are common.
            let distinct = if n % 2 == 0 { 5 } else { 1000 };
            let v: Vec<f32> = (0..n).map(|_| rng.below(distinct) as f32 * 0.25).collect();
            let mut sorted = v.clone();
            sorted.sort_unstable_by(|a, b| a.total_cmp(b));
            let want = |q| crate::util::stats::nearest_rank(&sorted, q).map(f64::from);
            let got = quantiles(v);
            assert_eq!(
                (Some(got.p50), Some(got.p95), Some(got.p99)),
                (want(0.50), want(0.95), want(0.99)),
                "n = {n}"
            );
        }
        assert_eq!(quantiles(Vec::new()), Quantiles::default());
    }

    #[test]
    fn quantiles_are_nearest_rank_over_the_window_only() {
        let t0 = Instant::now();
        let mut w = LatencyWindow::new(Duration::from_secs(1));
        // An old sample that falls out of the window.
        w.push(t0, 10.0, 0.0);
        for i in 1..=100 {
            w.push(t0 + Duration::from_millis(500), 0.0, i as f64 / 1000.0);
        }
        let s = w.stats(t0 + Duration::from_millis(1200));
        assert_eq!(s.count, 100);
        assert!((s.compute.p50 - 0.050).abs() < 1e-6);
        assert!((s.compute.p99 - 0.099).abs() < 1e-6);
        assert!((s.total.p95 - 0.095).abs() < 1e-6);
        assert_eq!(s.queue.p99, 0.0);
        assert_eq!(w.stats(t0 + Duration::from_secs(3)).count, 0);
    }
}
