//! The scenario's arrivals: the request rate over time (rate steps plus bursts) and the
//! Poisson arrival times drawn from it.

use super::Scenario;
use crate::util::rng::Rng;

impl Scenario {
    /// Base plus burst rate at `t` seconds.
    pub(crate) fn rate_at(&self, t: f64) -> f64 {
        let base = self
            .service
            .arrivals
            .iter()
            .filter(|a| a.at_s <= t)
            .max_by(|a, b| a.at_s.total_cmp(&b.at_s))
            .map_or(0.0, |a| a.rate);
        let burst: f64 = self
            .service
            .bursts
            .iter()
            .filter(|b| b.at_s <= t && t < b.at_s + b.duration_s)
            .map(|b| b.rate)
            .sum();
        base + burst
    }

    /// Arrival times of a Poisson process with the scenario's rate over time (thinning).
    pub fn arrival_times(&self) -> Vec<f64> {
        let mut rng = Rng::derived(self.seed, 0xA771);
        let peak = {
            let mut p: f64 = 0.0;
            let mut t = 0.0;
            while t < self.duration_s {
                p = p.max(self.rate_at(t));
                t += 0.01;
            }
            p
        };
        let mut out = Vec::new();
        if peak <= 0.0 {
            return out;
        }
        let mut t = 0.0;
        loop {
            t += -(1.0 - rng.next_f64()).ln() / peak;
            if t >= self.duration_s {
                break;
            }
            if rng.next_f64() * peak < self.rate_at(t) {
                out.push(t);
            }
        }
        out
    }
}
