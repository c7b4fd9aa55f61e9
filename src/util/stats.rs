//! Order statistics shared by every report: one definition of a percentile.

/// The nearest-rank `q`-quantile of `sorted` (ascending): the smallest value with at least a
/// fraction `q` of the values at or below it. `None` when there are no values. `q` is clamped
/// to `[0, 1]`; `q = 0` gives the minimum.
pub(crate) fn nearest_rank<T: Copy>(sorted: &[T], q: f64) -> Option<T> {
    nearest_rank_index(sorted.len(), q).map(|i| sorted[i])
}

/// The index in `n` sorted values of their nearest-rank `q`-quantile ([`nearest_rank`]);
/// `None` when `n` is 0.
pub(crate) fn nearest_rank_index(n: usize, q: f64) -> Option<usize> {
    if n == 0 {
        return None;
    }
    let q = if q.is_nan() { 1.0 } else { q.clamp(0.0, 1.0) };
    let rank = (q * n as f64).ceil() as usize;
    Some(rank.clamp(1, n) - 1)
}

/// Index of the largest value; the first of a tie, 0 for an empty slice.
pub fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_matches_the_definition() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(nearest_rank(&v, 0.50), Some(50));
        assert_eq!(nearest_rank(&v, 0.99), Some(99));
        assert_eq!(nearest_rank(&v, 0.995), Some(100));
        assert_eq!(nearest_rank(&v, 0.0), Some(1));
        assert_eq!(nearest_rank(&v, 1.0), Some(100));
        assert_eq!(nearest_rank(&[7.5f64], 0.5), Some(7.5));
        assert_eq!(nearest_rank::<u64>(&[], 0.5), None);
        // Three samples: p50 is the second, p99 the third.
        assert_eq!(nearest_rank(&[1, 2, 3], 0.5), Some(2));
        assert_eq!(nearest_rank(&[1, 2, 3], 0.99), Some(3));
    }

    #[test]
    fn argmax_takes_the_first_of_a_tie() {
        assert_eq!(argmax(&[0.1, 0.7, 0.7, 0.2]), 1);
        assert_eq!(argmax(&[]), 0);
    }
}
