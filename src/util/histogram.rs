//! Fixed-bucket histograms in the Prometheus style: cumulative export, exact count and sum.

use serde::Serialize;

/// Upper bounds in seconds for latency histograms: 50 µs to 10 s.
pub(crate) const LATENCY_BOUNDS_S: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];

/// Upper bounds for batch-size histograms.
pub(crate) const BATCH_BOUNDS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0,
];

/// Counts of observations at or below each bound, plus the overflow, the count and the sum.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Histogram {
    /// Upper bounds, increasing.
    pub bounds: &'static [f64],
    /// Observations per bucket (not cumulative); one more than `bounds` for +Inf.
    pub counts: Vec<u64>,
    /// Number of observations.
    pub count: u64,
    /// Sum of observations.
    pub sum: f64,
}

impl Histogram {
    /// An empty histogram over `bounds`.
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: vec![0; bounds.len() + 1],
            count: 0,
            sum: 0.0,
        }
    }

    /// Records `n` observations of `value`.
    pub(crate) fn observe_n(&mut self, value: f64, n: u64) {
        let i = self.bounds.partition_point(|&b| b < value);
        self.counts[i] += n;
        self.count += n;
        self.sum += value * n as f64;
    }

    /// Records one observation.
    pub(crate) fn observe(&mut self, value: f64) {
        self.observe_n(value, 1);
    }

    /// Adds `other`'s observations (a histogram over the same bounds; one over others is
    /// added by its buckets' upper bounds, its overflow as overflow).
    pub(crate) fn absorb(&mut self, other: &Histogram) {
        if std::ptr::eq(self.bounds, other.bounds) || self.bounds == other.bounds {
            for (a, b) in self.counts.iter_mut().zip(&other.counts) {
                *a += b;
            }
            self.count += other.count;
            self.sum += other.sum;
            return;
        }
        let (count, sum) = (self.count + other.count, self.sum + other.sum);
        for (i, &n) in other.counts.iter().enumerate() {
            let at = other.bounds.get(i).copied().unwrap_or(f64::INFINITY);
            self.observe_n(at, n);
        }
        (self.count, self.sum) = (count, sum);
    }

    /// The upper bound of the bucket holding quantile `q` (so the true quantile is at most
    /// this), or None when empty. Infinite when it falls in the overflow bucket.
    #[cfg(test)]
    pub fn quantile_bound(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = (q * self.count as f64).ceil().max(1.0) as u64;
        self.cumulative()
            .into_iter()
            .find(|&(_, c)| c >= rank)
            .map(|(b, _)| b)
    }

    /// `(upper bound, cumulative count)` pairs, ending with `(+Inf, count)`.
    pub fn cumulative(&self) -> Vec<(f64, u64)> {
        let mut acc = 0;
        let mut out = Vec::with_capacity(self.counts.len());
        for (i, &c) in self.counts.iter().enumerate() {
            acc += c;
            out.push((self.bounds.get(i).copied().unwrap_or(f64::INFINITY), acc));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_inclusive_upper_bounds_and_cumulative() {
        let mut h = Histogram::new(&[1.0, 2.0]);
        h.observe(0.5);
        h.observe(1.0);
        h.observe(1.5);
        h.observe_n(7.0, 2);
        assert_eq!(h.counts, vec![2, 1, 2]);
        assert_eq!(h.cumulative(), vec![(1.0, 2), (2.0, 3), (f64::INFINITY, 5)]);
        assert_eq!(h.count, 5);
        assert_eq!(h.sum, 17.0);
        assert_eq!(h.quantile_bound(0.4), Some(1.0));
        assert_eq!(h.quantile_bound(0.6), Some(2.0));
        assert_eq!(h.quantile_bound(0.99), Some(f64::INFINITY));
        assert_eq!(Histogram::new(&[1.0]).quantile_bound(0.5), None);
    }
}
