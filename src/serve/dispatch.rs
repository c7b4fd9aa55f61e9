//! The dispatcher between a service's replicas: which replica takes the next request, so
//! that each one's part of the rows follows the fractions the controller decided
//! ([`crate::control::split`]).
//!
//! It runs on every request, so it takes no lock: the fractions and the rows each replica
//! took since they were set are atomics. A request goes to the replica furthest behind its
//! part, `argmax_i (f_i × (R + r) − R_i)`, where `R_i` is the rows replica `i` took, `R`
//! their sum and `r` the request's rows (deficit round robin by rows). Serially the rows
//! each replica took stay within one request of `f_i × R`; concurrent callers may both
//! read the same counts and pick the same replica, an error of one request each, which the
//! next choices correct. Setting new fractions starts the counts afresh, so the split of
//! each period follows that period's decision.

use std::sync::atomic::{AtomicU64, Ordering};

/// The fractions are held in fixed point, this many parts to one.
const ONE: u64 = 1 << 32;

/// The split of one service's rows between its replicas.
#[derive(Debug)]
pub struct Dispatcher {
    /// Per replica: its fraction of the rows, in parts of [`ONE`].
    parts: Box<[AtomicU64]>,
    /// Per replica: the rows it took since the fractions were set.
    taken: Box<[AtomicU64]>,
}

impl Dispatcher {
    /// A dispatcher over `replicas` replicas, all rows to the first until fractions are set.
    pub fn new(replicas: usize) -> Self {
        let parts: Box<[AtomicU64]> = (0..replicas.max(1)).map(|_| AtomicU64::new(0)).collect();
        parts[0].store(ONE, Ordering::Relaxed);
        Dispatcher {
            taken: (0..parts.len()).map(|_| AtomicU64::new(0)).collect(),
            parts,
        }
    }

    /// Sets the fractions (one per replica; missing ones count as 0, negative or not-a-number
    /// ones as 0; they need not sum to 1) and starts counting rows afresh.
    pub fn set(&self, fractions: &[f64]) {
        for (i, part) in self.parts.iter().enumerate() {
            let f = fractions.get(i).copied().unwrap_or(0.0);
            let f = if f.is_finite() {
                f.clamp(0.0, 1.0)
            } else {
                0.0
            };
            part.store((f * ONE as f64).round() as u64, Ordering::Relaxed);
            self.taken[i].store(0, Ordering::Relaxed);
        }
    }

    /// Cuts replica `i` out of the split (its fraction to 0) without starting the counts
    /// afresh: the others keep their parts relative to each other.
    pub fn cut(&self, i: usize) {
        if let Some(p) = self.parts.get(i) {
            p.store(0, Ordering::Relaxed);
        }
    }

    /// The fractions in force.
    pub fn fractions(&self) -> Vec<f64> {
        self.parts
            .iter()
            .map(|p| p.load(Ordering::Relaxed) as f64 / ONE as f64)
            .collect()
    }

    /// The replica that takes a request of `rows` rows, counted as taken; None when every
    /// fraction is 0 (no replica may take rows).
    pub fn choose(&self, rows: usize) -> Option<usize> {
        let rows = rows.max(1) as u64;
        let total: u64 = self
            .taken
            .iter()
            .map(|t| t.load(Ordering::Relaxed))
            .sum::<u64>()
            + rows;
        let mut best: Option<(usize, i128)> = None;
        for (i, part) in self.parts.iter().enumerate() {
            let p = part.load(Ordering::Relaxed);
            if p == 0 {
                continue;
            }
            // f_i × (R + r) − R_i, in parts of ONE: wide enough for any count of rows.
            let owed = i128::from(p) * i128::from(total)
                - i128::from(self.taken[i].load(Ordering::Relaxed)) * i128::from(ONE);
            if best.is_none_or(|(_, b)| owed > b) {
                best = Some((i, owed));
            }
        }
        let (i, _) = best?;
        self.taken[i].fetch_add(rows, Ordering::Relaxed);
        Some(i)
    }

    /// The rows each replica took since the fractions were set.
    pub fn taken(&self) -> Vec<u64> {
        self.taken
            .iter()
            .map(|t| t.load(Ordering::Relaxed))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn every_row_goes_to_the_first_replica_until_fractions_are_set() {
        let d = Dispatcher::new(3);
        assert!((0..10).all(|_| d.choose(1) == Some(0)));
        assert_eq!(d.taken(), vec![10, 0, 0]);
    }

    #[test]
    fn serially_the_rows_stay_within_one_request_of_the_fractions() {
        let d = Dispatcher::new(3);
        d.set(&[0.5, 0.3, 0.2]);
        let mut rng = 7u64;
        let mut total = 0u64;
        for _ in 0..10_000 {
            rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1);
            let rows = 1 + (rng >> 60) as usize; // 1 ..= 16 rows
            d.choose(rows).unwrap();
            total += rows as u64;
            for (t, f) in d.taken().iter().zip([0.5, 0.3, 0.2]) {
                assert!(
                    (*t as f64 - f * total as f64).abs() <= 16.0,
                    "{:?} of {total}",
                    d.taken()
                );
            }
        }
    }

    #[test]
    fn a_replica_at_zero_gets_nothing_and_all_zero_refuses() {
        let d = Dispatcher::new(2);
        d.set(&[0.0, 1.0]);
        assert!((0..100).all(|_| d.choose(3) == Some(1)));
        d.set(&[0.0, 0.0]);
        assert_eq!(d.choose(1), None);
        d.set(&[f64::NAN, -1.0]);
        assert_eq!(d.choose(1), None);
    }

    #[test]
    fn setting_fractions_starts_the_count_afresh() {
        let d = Dispatcher::new(2);
        d.set(&[1.0, 0.0]);
        for _ in 0..1000 {
            d.choose(1);
        }
        d.set(&[0.5, 0.5]);
        assert_eq!(d.taken(), vec![0, 0]);
        for _ in 0..100 {
            d.choose(1);
        }
        // Without the fresh start, replica 1 would take the next 1,000 rows alone.
        assert_eq!(d.taken(), vec![50, 50]);
        assert_eq!(d.fractions(), vec![0.5, 0.5]);
    }

    #[test]
    fn from_several_threads_the_split_holds_within_a_percent() {
        let d = Arc::new(Dispatcher::new(2));
        d.set(&[0.75, 0.25]);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let d = d.clone();
                std::thread::spawn(move || {
                    for _ in 0..50_000 {
                        d.choose(1).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let taken = d.taken();
        let total = taken.iter().sum::<u64>() as f64;
        assert_eq!(total, 200_000.0);
        assert!((taken[0] as f64 / total - 0.75).abs() < 0.01, "{taken:?}");
    }
}
