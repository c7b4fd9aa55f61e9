//! The smoothed rate a job's finish is estimated from, and the estimate itself.
//!
//! The job loop steers on the rate measured over the last second, which must see a share
//! change at once. A finish estimate from that rate (or from the share the arbiter granted
//! this period) swings with every correction of the loop, so the estimate uses a rate
//! smoothed over a longer window. Each control period `k` of length `Δt_k` in which the job
//! took `n_k` steps contributes its rate `n_k / Δt_k`:
//!
//! ```text
//! a_k = exp(−Δt_k / τ)
//! S_k = a_k · S_{k−1} + (1 − a_k) · n_k / Δt_k
//! W_k = a_k · W_{k−1} + (1 − a_k)
//! r_k = S_k / W_k                      (S_0 = W_0 = 0)
//! ```
//!
//! So `r_k` is a mean of the periods' rates weighted by their lengths and by `e^(−age/τ)`:
//! the steps of the last `τ` seconds or so over their time. Dividing by `W_k` makes a young
//! job's rate the plain mean of what it has run so far instead of a value pulled toward zero.
//! With `τ` = [`RATE_TAU_S`] the estimate of a job paced at a steady rate moves by a few per
//! cent when its loop corrects its share, and follows a lasting change of rate (a share
//! granted to a best-effort job, another job finishing) within about `τ`.
//!
//! A change of plan (the job loop's, see `training::estimate_finish`: the rate a deadline job
//! must keep moves by more than a factor of 2 because its expected epochs or its deadline
//! changed) is followed by a change of share, so the rate measured before it says little
//! about the rate after it. The memory then starts again from the planned rate `p`, counted
//! as if it had been measured for [`PRIOR_S`]:
//!
//! ```text
//! W = 1 − exp(−PRIOR_S / τ),   S = p · W
//! ```
//!
//! so the estimate says the job is on its new plan until the periods that follow, which
//! outweigh the prior after about [`PRIOR_S`], say otherwise. The prior also damps the loop's
//! own transient, the seconds in which it overshoots the new rate and settles.
//!
//! The finish estimate is the remaining steps (for the epochs the job is expected to need:
//! the learning-curve estimate with an accuracy target, else the epoch limit) over `r_k`.

/// Time constant of the smoothed rate, seconds.
pub const RATE_TAU_S: f64 = 20.0;
/// Seconds of measurement a planned rate counts for when the memory starts again: long enough
/// to ride out the loop's transient after a change of plan, short against [`RATE_TAU_S`].
pub const PRIOR_S: f64 = 5.0;

/// A job's rate smoothed over about [`RATE_TAU_S`] (see the module's law).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct SmoothedRate {
    sum: f64,
    weight: f64,
    last: Option<(f64, u64)>,
}

impl SmoothedRate {
    /// Records that the job had taken `steps` steps at time `now_s` and returns the smoothed
    /// rate, steps per second (None until two observations span some time). A clock that went
    /// back or a step count that went back starts the memory again; the first observation
    /// only marks where counting starts, so steps taken before it (a job resumed at step
    /// 5,000) are never counted as one period's.
    pub fn update(&mut self, now_s: f64, steps: u64) -> Option<f64> {
        match self.last {
            Some((t, s)) if now_s > t && steps >= s => {
                let dt = now_s - t;
                let a = (-dt / RATE_TAU_S).exp();
                self.sum = a * self.sum + (1.0 - a) * (steps - s) as f64 / dt;
                self.weight = a * self.weight + (1.0 - a);
            }
            Some((t, s)) if now_s == t && steps == s => {}
            Some(_) => *self = SmoothedRate::default(),
            None => {}
        }
        self.last = Some((now_s, steps));
        self.rate()
    }

    /// Starts the memory again from `planned` steps per second, counted as [`PRIOR_S`] of
    /// measurement; the point counting starts from is kept.
    pub fn restart(&mut self, planned: f64) {
        let w = 1.0 - (-PRIOR_S / RATE_TAU_S).exp();
        self.sum = planned * w;
        self.weight = w;
    }

    /// The smoothed rate, steps per second, when known.
    pub fn rate(&self) -> Option<f64> {
        (self.weight > 0.0).then(|| self.sum / self.weight)
    }
}

/// Seconds until a job with `remaining_steps` to take finishes at `rate` steps per second:
/// none while the rate is unknown or zero; zero with nothing left to take.
pub fn predicted_finish(remaining_steps: u64, rate: Option<f64>) -> Option<f64> {
    if remaining_steps == 0 {
        return Some(0.0);
    }
    rate.filter(|r| r.is_finite() && *r > 0.0)
        .map(|r| remaining_steps as f64 / r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_steady_rate_is_measured_exactly_from_the_second_observation() {
        let mut r = SmoothedRate::default();
        assert_eq!(
            r.update(0.0, 790),
            None,
            "the first observation only marks the start"
        );
        for k in 1..=50u64 {
            let got = r.update(k as f64 * 0.1, 790 + 2 * k).unwrap();
            assert!((got - 20.0).abs() < 1e-9, "period {k}: {got}");
        }
    }

    #[test]
    fn the_issues_best_effort_job_finishes_in_about_eight_minutes() {
        // 400 epochs of 25 steps, at step 790, at 20 steps/s: 9,210 steps in 460.5 s.
        let mut r = SmoothedRate::default();
        r.update(0.0, 790);
        let rate = r.update(1.0, 810);
        let left = 400 * 25 - 810;
        assert!((predicted_finish(left, rate).unwrap() - 459.5).abs() < 1e-9);
        assert_eq!(predicted_finish(0, None), Some(0.0));
        assert_eq!(predicted_finish(10, None), None);
        assert_eq!(predicted_finish(10, Some(0.0)), None);
    }

    #[test]
    fn a_noisy_rate_is_smoothed_and_a_lasting_change_is_followed_within_tau() {
        let mut r = SmoothedRate::default();
        let mut steps = 0;
        r.update(0.0, 0);
        // Alternating 10 and 30 steps/s every 0.1 s (a loop correcting its share): the
        // smoothed rate stays within a few per cent of 20.
        for k in 1..=600u64 {
            steps += if k % 2 == 0 { 1 } else { 3 };
            let got = r.update(k as f64 * 0.1, steps).unwrap();
            if k > 20 {
                assert!((got - 20.0).abs() < 1.0, "period {k}: {got}");
            }
        }
        // The rate steps to 40 steps/s: after τ the estimate is most of the way there.
        let t0 = 60.0;
        let mut got = 0.0;
        for k in 1..=(RATE_TAU_S as u64 * 10) {
            steps += 4;
            got = r.update(t0 + k as f64 * 0.1, steps).unwrap();
        }
        let expected = 40.0 - 20.0 * (-1.0f64).exp();
        assert!((got - expected).abs() < 0.5, "{got} vs {expected}");
    }

    #[test]
    fn a_restart_starts_from_the_plan_and_the_measurements_soon_outweigh_it() {
        let mut r = SmoothedRate::default();
        r.update(0.0, 0);
        for k in 1..=100u64 {
            r.update(k as f64 * 0.1, 10 * k);
        }
        assert!((r.rate().unwrap() - 100.0).abs() < 1e-9);
        // The plan moves to 400 steps/s, and the job only manages 300: the estimate moves
        // from the plan toward what is measured as the law says.
        r.restart(400.0);
        assert_eq!(r.rate(), Some(400.0));
        let law = |t: f64| {
            let (w0, a) = (1.0 - (-PRIOR_S / RATE_TAU_S).exp(), (-t / RATE_TAU_S).exp());
            (400.0 * w0 * a + 300.0 * (1.0 - a)) / (w0 * a + 1.0 - a)
        };
        let mut steps = 1000;
        for k in 1..=(3.0 * PRIOR_S * 10.0) as u64 {
            steps += 30;
            let got = r.update(10.0 + k as f64 * 0.1, steps).unwrap();
            assert!((got - law(k as f64 * 0.1)).abs() < 1e-6, "{got}");
        }
        assert!(law(PRIOR_S) < 350.0 && law(3.0 * PRIOR_S) < 320.0);
    }

    #[test]
    fn a_count_or_clock_that_goes_back_starts_again() {
        let mut r = SmoothedRate::default();
        r.update(0.0, 100);
        assert!(r.update(1.0, 110).is_some());
        assert_eq!(r.update(2.0, 5), None, "the count restarted");
        assert_eq!(r.update(3.0, 25), Some(20.0));
        assert_eq!(r.update(1.0, 30), None, "the clock went back");
        assert_eq!(
            r.update(1.0, 30),
            None,
            "a repeated observation changes nothing"
        );
    }
}
