//! Per-feature standardisation, fitted on training rows only and applied to every row the
//! model sees.

use super::Dataset;

/// Per-feature standardisation statistics, fitted on training data only.
#[derive(Debug, Clone, PartialEq)]
pub struct Normalizer {
    /// Per-feature mean.
    pub mean: Vec<f32>,
    /// Per-feature population standard deviation (1 for constant features).
    pub std: Vec<f32>,
}

impl Normalizer {
    /// Below this a feature is treated as constant and only centred, not scaled.
    const MIN_STD: f64 = 1e-6;

    /// Fits mean and population standard deviation per feature, accumulated in f64. A
    /// constant feature (std below 1e-6) gets std 1 so it maps to 0 rather than to NaN. An
    /// empty data set gives the identity.
    pub fn fit(ds: &Dataset) -> Normalizer {
        let f = ds.features;
        let rows = ds.rows();
        if rows == 0 {
            return Normalizer::identity(f);
        }
        let mut sum = vec![0.0f64; f];
        for row in ds.x.chunks_exact(f) {
            for (s, &v) in sum.iter_mut().zip(row) {
                *s += f64::from(v);
            }
        }
        let mean: Vec<f64> = sum.iter().map(|s| s / rows as f64).collect();
        // Two passes rather than sum of squares: no cancellation for large, tightly spread values.
        let mut sq = vec![0.0f64; f];
        for row in ds.x.chunks_exact(f) {
            for ((s, &v), m) in sq.iter_mut().zip(row).zip(&mean) {
                let d = f64::from(v) - m;
                *s += d * d;
            }
        }
        let std = sq
            .iter()
            .map(|s| {
                let sd = (s / rows as f64).sqrt();
                if sd < Self::MIN_STD { 1.0 } else { sd as f32 }
            })
            .collect();
        Normalizer {
            mean: mean.iter().map(|&m| m as f32).collect(),
            std,
        }
    }

    /// Mean 0, std 1: leaves data unchanged.
    pub fn identity(features: usize) -> Normalizer {
        Normalizer {
            mean: vec![0.0; features],
            std: vec![1.0; features],
        }
    }

    /// Standardises `x` in place as `(x - mean) / std`; `x` is `rows * features`, row-major.
    ///
    /// # Panics
    /// When `x.len()` is not a multiple of [`Normalizer::features`]: callers check shapes first.
    pub fn apply(&self, x: &mut [f32]) {
        let f = self.features();
        if f == 0 {
            assert!(
                x.is_empty(),
                "normalizer has no features but data is not empty"
            );
            return;
        }
        assert!(
            x.len().is_multiple_of(f),
            "data length {} is not a multiple of the normalizer's {f} features",
            x.len()
        );
        for row in x.chunks_exact_mut(f) {
            for ((v, m), s) in row.iter_mut().zip(&self.mean).zip(&self.std) {
                *v = (*v - m) / s;
            }
        }
    }

    /// Number of features.
    pub fn features(&self) -> usize {
        self.mean.len()
    }
}
