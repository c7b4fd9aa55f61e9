//! The training job loop: the rate needed to finish by the deadline, a feed-forward share
//! from the learned rate per unit of share, and a PI correction on the rate error.

use std::collections::VecDeque;

use super::{ControlConfig, JobClass, JobDecision, JobObs, Pi};

/// Seconds of history the measured rate is taken over: long enough to hold several steps of
/// a large model, short enough to see a share change within a second.
const RATE_WINDOW_S: f64 = 1.0;
/// Weight of a new measurement of the rate per unit of share.
const EWMA: f64 = 0.3;
/// Error bounds of the rate loop.
const MAX_ERROR: f64 = 2.0;
/// Most periods of history kept (the window normally holds far fewer).
const MAX_HISTORY: usize = 1024;
/// Epochs of the learning curve used for the fit: the recent trend, not the first jumps.
const FIT_EPOCHS: usize = 8;
/// The power law's exponent assumed while the curve has a single point: error falling as
/// 1/epochs, which the MLPs here beat early on, so one point rarely plans too few epochs by
/// much, and the fit takes over from the second epoch.
const PRIOR_BETA: f64 = 1.0;

/// One job's memory.
#[derive(Debug, Clone, PartialEq)]
pub struct JobState {
    /// The PI loop (correction on top of the feed-forward).
    pub pi: Pi,
    /// Steps per second per unit of share, learned from the measured rate (used only while
    /// no step cost is observed).
    pub rate_per_share: Option<f64>,
    /// Core-seconds per step, a running mean of what the job reports.
    pub step_cost: Option<f64>,
    history: VecDeque<(f64, u64, f64)>,
    feed_forward: f64,
}

impl JobState {
    /// A fresh state for a job now at `share`.
    pub fn new(_share: f64) -> Self {
        JobState {
            pi: Pi::new(0.0),
            rate_per_share: None,
            step_cost: None,
            history: VecDeque::new(),
            feed_forward: 0.0,
        }
    }
}

/// Epochs the job will need in all: for an accuracy target, from a power-law fit
/// `1 − acc(e) ≈ α·e^(−β)` of the recent learning curve (with a single point, β =
/// [`PRIOR_BETA`] through it), at least the next epoch and at most the epoch limit; the limit
/// itself without a target, before the first epoch, or while the curve is not improving
/// (β ≤ 0.05: the target may never be reached).
pub fn expected_epochs(
    curve: &[f64],
    target: Option<f64>,
    epochs_done: u32,
    max_epochs: u32,
) -> f64 {
    let max = max_epochs as f64;
    let Some(target) = target else {
        return max;
    };
    if curve.last().is_some_and(|&a| a >= target) {
        return epochs_done as f64;
    }
    let floor = (epochs_done + 1) as f64;
    let start = curve.len().saturating_sub(FIT_EPOCHS);
    let pts: Vec<(f64, f64)> = curve[start..]
        .iter()
        .enumerate()
        .filter(|&(_, &a)| a < 1.0)
        .map(|(i, &a)| (((start + i + 1) as f64).ln(), (1.0 - a).ln()))
        .collect();
    if pts.is_empty() || target >= 1.0 {
        return max;
    }
    let Some((ln_alpha, beta)) = power_law(&pts) else {
        return max;
    };
    let e = ((ln_alpha - (1.0 - target).ln()) / beta).exp();
    if e.is_finite() {
        e.clamp(floor, max)
    } else {
        max
    }
}

/// `(ln α, β)` of the least-squares line `ln(1 − acc) = ln α − β·ln e` through `pts`
/// (`(ln e, ln(1 − acc))`); through a single point with β = [`PRIOR_BETA`]. None when the
/// error is not falling.
fn power_law(pts: &[(f64, f64)]) -> Option<(f64, f64)> {
    if let [(x, y)] = pts {
        return Some((y + PRIOR_BETA * x, PRIOR_BETA));
    }
    let n = pts.len() as f64;
    let (sx, sy) = pts.iter().fold((0.0, 0.0), |(a, b), p| (a + p.0, b + p.1));
    let (mx, my) = (sx / n, sy / n);
    let (mut sxy, mut sxx) = (0.0, 0.0);
    for &(x, y) in pts {
        sxy += (x - mx) * (y - my);
        sxx += (x - mx) * (x - mx);
    }
    if sxx <= 0.0 {
        return None;
    }
    let beta = -sxy / sxx;
    (beta > 0.05).then_some((my + beta * mx, beta))
}

/// Decides a job's requested share: records the period's progress, learns the rate per unit
/// of share, and (for a deadline job with work left) steers toward the rate the deadline
/// needs with a feed-forward share plus a PI correction.
pub(crate) fn decide(cfg: &ControlConfig, st: &mut JobState, o: &JobObs, now: f64) -> JobDecision {
    record_progress(st, o, now);
    let measured = measured_rate(cfg, st, o);
    let rps = learn_rate_per_share(st, o, measured);
    let expected = expected_epochs(&o.curve, o.target_accuracy, o.epochs_done, o.max_epochs);
    let total = (expected * o.steps_per_epoch as f64).ceil() as u64;
    let remaining = total.saturating_sub(o.steps_done);
    let mut d = JobDecision {
        name: o.name.clone(),
        class: o.class,
        requested: cfg.min_share,
        share: cfg.min_share,
        remaining_steps: remaining,
        expected_epochs: expected,
        required_rate: None,
        measured_rate: measured,
        rate_per_share: rps,
        slack_s: None,
        predicted_finish_in_s: None,
    };
    if o.class == JobClass::BestEffort || remaining == 0 {
        st.feed_forward = 0.0;
        return d;
    }
    let Some(deadline_in) = o.deadline_in_s else {
        return d;
    };
    steer_to_deadline(cfg, st, o, &mut d, deadline_in);
    d
}

/// Appends this period's `(time, steps done, share)` to the history, first clearing it if
/// the clock went back or the step count restarted, and drops what is older than the rate
/// window (or beyond the history's size limit).
fn record_progress(st: &mut JobState, o: &JobObs, now: f64) {
    // A clock that went back (or a restarted count) makes the history meaningless.
    if st
        .history
        .back()
        .is_some_and(|&(t, s, _)| t >= now || s > o.steps_done)
    {
        st.history.clear();
    }
    st.history.push_back((now, o.steps_done, o.share));
    if st.history.len() > MAX_HISTORY {
        st.history.pop_front();
    }
    while st
        .history
        .front()
        .is_some_and(|&(t, _, _)| t < now - RATE_WINDOW_S - 1e-9)
    {
        st.history.pop_front();
    }
}

/// Steps per second over the history window; with a single sample, the steps of this period
/// over its length.
fn measured_rate(cfg: &ControlConfig, st: &JobState, o: &JobObs) -> f64 {
    match (st.history.front(), st.history.back()) {
        (Some(&(t0, s0, _)), Some(&(t1, s1, _))) if t1 > t0 => (s1 - s0) as f64 / (t1 - t0),
        _ => o.steps_in_period as f64 / cfg.period_s,
    }
}

/// Updates the running means of the measured rate per unit of share and of the reported
/// step cost, and returns the rate per unit of share to plan with: cores over step cost when
/// a cost is known, else the measured one.
fn learn_rate_per_share(st: &mut JobState, o: &JobObs, measured: f64) -> Option<f64> {
    let mean_share = st.history.iter().map(|h| h.2).sum::<f64>() / st.history.len().max(1) as f64;
    if measured > 0.0 && mean_share > 0.0 && st.history.len() >= 2 {
        let rps = measured / mean_share;
        st.rate_per_share = Some(match st.rate_per_share {
            Some(old) => old + EWMA * (rps - old),
            None => rps,
        });
    }
    // A share s buys s·cores core-seconds per second; a step costs `step_cost` of them, so
    // the rate per unit of share is cores / step_cost. The cost does not depend on the share
    // (throttled time is not CPU time), so this holds at once after a share change, where a
    // rate measured over a window would lag it. Without a cost, the measured rate per share.
    if let Some(c) = o.step_cost_core_s.filter(|c| c.is_finite() && *c > 0.0) {
        st.step_cost = Some(match st.step_cost {
            Some(old) => old + EWMA * (c - old),
            None => c,
        });
    }
    st.step_cost
        .map(|c| o.cores.max(1) as f64 / c)
        .or(st.rate_per_share)
}

/// Sets a deadline job's slack, required rate and share: all of it once the time left (less
/// the margin) is within a period, else the feed-forward share for the required rate plus
/// the PI correction on the relative rate error, at least the minimum share.
fn steer_to_deadline(
    cfg: &ControlConfig,
    st: &mut JobState,
    o: &JobObs,
    d: &mut JobDecision,
    deadline_in: f64,
) {
    let (remaining, measured, rps) = (d.remaining_steps, d.measured_rate, d.rate_per_share);
    let margin = cfg.deadline_margin_frac * o.allotted_s.unwrap_or(0.0).max(0.0);
    let time_left = deadline_in - margin;
    d.slack_s = rps.map(|r| time_left - remaining as f64 / r);
    if time_left <= cfg.period_s {
        // Out of time: all it can get, and let the arbiter weigh it as most at risk.
        st.feed_forward = 1.0;
        d.required_rate = Some(f64::INFINITY);
        d.requested = 1.0;
        d.share = 1.0;
        return;
    }
    let required = remaining as f64 / time_left;
    d.required_rate = Some(required);
    let ff = match rps {
        Some(r) if r > 0.0 => (required / r).min(1.0),
        _ => 0.5,
    };
    st.feed_forward = ff;
    // The PI corrects what the model misses (parallel overheads, evaluation, other load);
    // with no measured rate yet there is nothing to correct.
    let e = if st.history.len() >= 2 {
        ((required - measured) / required).clamp(-1.0, MAX_ERROR)
    } else {
        0.0
    };
    let lo = cfg.min_share - ff;
    let u = st.pi.step(cfg.job_gains, e, lo.min(0.0), 1.0 - ff);
    d.requested = (ff + u).clamp(cfg.min_share, 1.0);
    d.share = d.requested;
}

/// Seconds to finish at the granted share, from the learned rate.
pub(crate) fn predicted_finish(d: &JobDecision, _o: &JobObs) -> Option<f64> {
    if d.remaining_steps == 0 {
        return Some(0.0);
    }
    d.rate_per_share
        .filter(|r| *r > 0.0 && d.share > 0.0)
        .map(|r| d.remaining_steps as f64 / (r * d.share))
}

/// Tells the loop what the arbiter granted (back-calculation against windup).
pub(crate) fn granted(_cfg: &ControlConfig, st: &mut JobState, share: f64) {
    st.pi.u = share - st.feed_forward;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_power_law_curve_is_extrapolated_to_the_target() {
        // acc(e) = 1 − 0.4·e^(−1): 0.6, 0.8, 0.8667, 0.9, …; 0.96 is reached at e = 10.
        let curve: Vec<f64> = (1..=4).map(|e| 1.0 - 0.4 / e as f64).collect();
        let e = expected_epochs(&curve, Some(0.96), 4, 50);
        assert!((e - 10.0).abs() < 1e-6, "{e}");
        // Bounded by the limit, and by the next epoch.
        assert_eq!(expected_epochs(&curve, Some(0.999), 4, 50), 50.0);
        assert_eq!(expected_epochs(&curve, Some(0.5), 4, 50), 4.0);
        assert_eq!(expected_epochs(&curve, None, 4, 50), 50.0);
        // One point: error falling as 1/e through it (0.6 at e = 1: 0.9 at e = 4).
        let one = expected_epochs(&curve[..1], Some(0.9), 1, 30);
        assert!((one - 4.0).abs() < 1e-9, "{one}");
        // No point yet, or not improving: the limit.
        assert_eq!(expected_epochs(&[], Some(0.9), 0, 30), 30.0);
        assert_eq!(expected_epochs(&[0.5, 0.5, 0.5], Some(0.9), 3, 30), 30.0);
    }
}
