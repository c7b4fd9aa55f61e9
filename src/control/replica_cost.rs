//! A replica's cost per row, which the split prices its capacity at.
//!
//! A row's cost is not the same at every rate. Batches fill as rows come faster, and a model
//! larger than the caches finds its weights there only when its rows come often: a replica
//! sent a row now and then pays for fetching the weights with each one. The cost measured
//! over a period is thus an upper bound on the cost at any higher rate, and no bound at all
//! on it from below. A split that priced a replica's capacity at the cost it showed while it
//! was sent few rows would send it fewer still, and the replica would settle cold, serving a
//! small part of what it could (a load step that follows a lull finds it there).
//!
//! So a period's cost `c`, measured at `r` rows per second, moves the estimate `ĉ` only when
//! `r ≥ REF_FRAC × r̂`, where `r̂` is the rate the estimate stands on: the highest rate it was
//! measured at, forgetting [`REF_DECAY`] of it each period. Then `ĉ ← ĉ + GAIN (c − ĉ)`.
//! Each period `r̂ ← max(REF_DECAY × r̂, r)`. A period far below that rate is left out either
//! way: dearer, it is the lull's cost, not the cost at the rate the replica would be sent;
//! cheaper, it is a handful of rows, whose noise would pull the estimate down to its least
//! draws (and an estimate too low overstates how long a queue the replica clears in time,
//! which the dispatcher goes by). Left out until that rate is forgotten (about 70 periods
//! to halve it): time for the load to come back. A replica whose load stays light is then
//! priced at its light load's cost, as it should be while that is its load.
//!
//! Pure: the node measures each period's rows and CPU time and calls [`CostEstimate::observe`].

/// How much of a period's cost the estimate takes.
pub const GAIN: f64 = 0.3;
/// A period moves the estimate only when its rate was at least this part of the rate the
/// estimate stands on.
pub const REF_FRAC: f64 = 0.5;
/// What the rate the estimate stands on keeps of itself per period.
pub const REF_DECAY: f64 = 0.99;

/// A replica's estimated cost per row (device-seconds; core-seconds on the CPU).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CostEstimate {
    cost: Option<f64>,
    /// Rows per second the estimate stands on.
    ref_rate: f64,
}

impl CostEstimate {
    /// Takes one period: `cost` per row over the `rate` rows per second the replica answered
    /// in it; None when it answered no row (nothing measured, the rate is still forgotten).
    pub fn observe(&mut self, cost: Option<f64>, rate: f64) {
        let rate = if rate.is_finite() { rate.max(0.0) } else { 0.0 };
        let stands_on = self.ref_rate;
        self.ref_rate = (REF_DECAY * self.ref_rate).max(rate);
        let Some(c) = cost.filter(|c| c.is_finite() && *c > 0.0) else {
            return;
        };
        self.cost = match self.cost {
            None => Some(c),
            Some(est) if rate >= REF_FRAC * stands_on => Some(est + GAIN * (c - est)),
            keep => keep,
        };
    }

    /// The estimate; None until a period with rows was observed.
    pub fn cost(&self) -> Option<f64> {
        self.cost
    }

    /// The rate the estimate stands on, rows per second.
    pub fn ref_rate(&self) -> f64 {
        self.ref_rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_period_sets_it_and_later_ones_move_it_by_the_gain() {
        let mut e = CostEstimate::default();
        e.observe(None, 0.0);
        assert_eq!(e.cost(), None, "no rows, nothing measured");
        e.observe(Some(0.004), 100.0);
        assert_eq!(e.cost(), Some(0.004));
        e.observe(Some(0.002), 100.0);
        assert!((e.cost().unwrap() - 0.0034).abs() < 1e-12, "{:?}", e.cost());
        e.observe(Some(0.006), 100.0);
        assert!((e.cost().unwrap() - (0.0034 + 0.3 * 0.0026)).abs() < 1e-12);
    }

    #[test]
    fn a_period_at_a_far_lower_rate_leaves_the_estimate() {
        let mut e = CostEstimate::default();
        e.observe(Some(0.002), 400.0);
        // Sent 60 rows/s, each costs four times as much: not what it would cost at 400.
        for _ in 0..10 {
            e.observe(Some(0.008), 60.0);
        }
        assert_eq!(e.cost(), Some(0.002));
        // Nor does a cheaper one: a few rows' noise.
        e.observe(Some(0.001), 10.0);
        assert_eq!(e.cost(), Some(0.002));
        // At half the rate or more, either counts.
        let mut e = CostEstimate::default();
        e.observe(Some(0.002), 400.0);
        e.observe(Some(0.004), 200.0);
        assert!((e.cost().unwrap() - 0.0026).abs() < 1e-12);
        e.observe(Some(0.001), 200.0);
        assert!((e.cost().unwrap() - (0.0026 - 0.3 * 0.0016)).abs() < 1e-12);
    }

    #[test]
    fn the_rate_it_stands_on_is_forgotten_so_a_lasting_change_is_taken_in_the_end() {
        let mut e = CostEstimate::default();
        e.observe(Some(0.002), 400.0);
        let mut periods = 0;
        while e.cost() == Some(0.002) {
            e.observe(Some(0.008), 60.0);
            periods += 1;
            assert!(periods < 1000, "never taken");
        }
        // The n-th period stands on 400 × 0.99^(n−1), at most 120 (twice 60) from n = 121.
        assert_eq!(periods, 121, "ref rate {}", e.ref_rate());
    }

    #[test]
    fn periods_without_rows_measure_nothing_and_bad_figures_are_ignored() {
        let mut e = CostEstimate::default();
        e.observe(Some(f64::NAN), 0.0);
        e.observe(Some(0.0), 0.0);
        e.observe(Some(-1.0), 0.0);
        assert_eq!(e.cost(), None);
        e.observe(Some(0.003), f64::INFINITY);
        assert_eq!(e.cost(), Some(0.003));
        assert_eq!(e.ref_rate(), 0.0, "an infinite rate counts as none");
    }
}
