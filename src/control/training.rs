//! The training job loop: the rate needed to finish by the deadline, a feed-forward share
//! from the learned rate per unit of share, and a PI correction on the rate error. A job whose
//! deadline has passed is demoted to best-effort (or marked to be stopped), as
//! [`super::PastDeadline`] says; its finish is estimated from its smoothed rate ([`super::rate`]).

use std::collections::VecDeque;

use super::rate::{SmoothedRate, predicted_finish};
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
/// A change of the rate a job's deadline needs by more than this factor is a change of plan
/// (see [`estimate_finish`]).
const PLAN_CHANGE: f64 = 2.0;
/// Epochs of the learning curve used for the fit: the recent trend, not the first jumps.
const FIT_EPOCHS: usize = 8;
/// The power law's exponent assumed while the curve has a single point: error falling as
/// 1/epochs, which the MLPs here beat early on, so one point rarely plans too few epochs by
/// much, and the fit takes over from the second epoch.
const PRIOR_BETA: f64 = 1.0;
/// A job with an accuracy target is paced to its learning curve only while its epoch limit
/// could still be run by the deadline in this fraction of the time left, at the whole device
/// less the reserve. Past that point it is paced to the limit: a curve that promised the
/// target too soon must not leave the rest of the work to the last seconds.
const WORST_CASE_FRAC: f64 = 0.5;

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
    /// The rate the finish is estimated from.
    smoothed: SmoothedRate,
    /// The rate the deadline needed last period, if any.
    last_required: Option<f64>,
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
            smoothed: SmoothedRate::default(),
            last_required: None,
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
    // At least the epoch under way, and never past the limit (a job that has just run its
    // last epoch is still observed running for a moment).
    let floor = ((epochs_done + 1) as f64).min(max);
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
/// needs with a feed-forward share plus a PI correction. A deadline job past its deadline is
/// demoted to best-effort (see [`past_deadline`]). The predicted finish is the remaining
/// steps over the smoothed rate, whatever share is granted (see [`estimate_finish`]).
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
        smoothed_rate: None,
        rate_per_share: rps,
        slack_s: None,
        predicted_finish_in_s: None,
        past_deadline: None,
        usable_share: o.usable_share(),
    };
    match o.deadline_in_s {
        _ if o.class == JobClass::BestEffort || remaining == 0 => st.feed_forward = 0.0,
        Some(deadline_in) if deadline_in <= 0.0 => past_deadline(cfg, st, &mut d),
        Some(deadline_in) => steer_to_deadline(cfg, st, o, &mut d, deadline_in),
        None => {}
    }
    estimate_finish(cfg, st, &mut d, o.steps_done, now);
    d
}

/// Records the period in the smoothed rate and predicts the finish from it. When the job's
/// plan changes — the rate its deadline needs moves by more than [`PLAN_CHANGE`] times from
/// one period to the next (its expected epochs or its deadline changed), or it gets a plan at
/// all — the loop is about to change its share, and the rate before says little about the
/// rate after: the smoothed rate starts again from the new rate (see
/// [`SmoothedRate::restart`]), as long as the loop can hold the job to it: its request is
/// above the least share (at the least share the job runs faster than planned) and below
/// all it can use (its usable share).
fn estimate_finish(
    cfg: &ControlConfig,
    st: &mut JobState,
    d: &mut JobDecision,
    steps: u64,
    now: f64,
) {
    st.smoothed.update(now, steps);
    let required = d.required_rate.filter(|r| r.is_finite() && *r > 0.0);
    let changed = match (st.last_required, required) {
        (Some(old), Some(new)) => new > old * PLAN_CHANGE || new * PLAN_CHANGE < old,
        (None, Some(_)) => true,
        (_, None) => false,
    };
    let holds = d.requested > cfg.min_share && d.requested < d.usable_share;
    if let (true, true, Some(new)) = (changed, holds, required) {
        st.smoothed.restart(new);
    }
    st.last_required = required;
    d.smoothed_rate = st.smoothed.rate();
    d.predicted_finish_in_s = predicted_finish(d.remaining_steps, d.smoothed_rate);
}

/// A deadline job whose deadline has passed with work left: it asks for no more than the
/// floor and is arbitrated as best-effort (leftover capacity only), so it never takes the
/// device from jobs that can still make their deadlines; under [`PastDeadline::Stop`] the
/// decision also tells the node to stop it.
fn past_deadline(cfg: &ControlConfig, st: &mut JobState, d: &mut JobDecision) {
    st.feed_forward = 0.0;
    d.class = JobClass::BestEffort;
    d.past_deadline = Some(cfg.past_deadline);
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
    // Plan with the lower of the two once both are known: the step cost leaves out what a
    // job does between steps (its evaluation at each epoch end, the lane's waits), which the
    // measured rate holds, and a plan that expects too much runs late to the end.
    let from_cost = st
        .step_cost
        .map(|c| super::admission::positive(o.cores) / c);
    match (from_cost, st.rate_per_share) {
        (Some(c), Some(m)) => Some(c.min(m)),
        (c, m) => c.or(m),
    }
}

/// Sets a deadline job's slack, required rate and share: the feed-forward share for the
/// rate that finishes the remaining steps by the deadline less the margin, plus the PI
/// correction on the relative rate error, at least the minimum share. The margin is
/// `deadline_margin_frac` of the job's allotted time, at least one control period: a job paced
/// to the deadline itself finishes on either side of it by the noise of its last periods. A
/// job that reaches the margin with work left asks for the whole device (the arbiter weighs
/// it as most at risk; once the deadline passes it is demoted).
///
/// Its slack is reckoned at its usable share ([`JobObs::usable_share`]): a job whose steps
/// run on one thread of two cores can make up time only at half the device, however much it
/// asks for. The arbiter grants no deadline job more than it can use until every deadline
/// job has had what it can use (see [`super::arbiter`]).
fn steer_to_deadline(
    cfg: &ControlConfig,
    st: &mut JobState,
    o: &JobObs,
    d: &mut JobDecision,
    deadline_in: f64,
) {
    let (remaining, measured, rps) = (d.remaining_steps, d.measured_rate, d.rate_per_share);
    let top = d.usable_share.max(cfg.min_share);
    let margin = cfg.deadline_margin_s(o.allotted_s.unwrap_or(0.0));
    let time_left = deadline_in - margin;
    d.slack_s = rps.map(|r| time_left - remaining as f64 / (r * top));
    if time_left <= cfg.period_s {
        st.feed_forward = 1.0;
        d.required_rate = Some(f64::INFINITY);
        d.requested = 1.0;
        d.share = 1.0;
        return;
    }
    let required = (remaining as f64 / time_left).max(worst_case_rate(cfg, o, rps, time_left));
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

/// The rate a job with an accuracy target must keep so that its epoch limit stays within
/// reach (see [`WORST_CASE_FRAC`]): zero while the limit's remaining steps take at most that
/// fraction of `time_left` at the whole device less the reserve (or all it can use, if
/// less), else the rate that runs them
/// by the deadline less the margin. Zero without a target or a rate to plan with.
fn worst_case_rate(cfg: &ControlConfig, o: &JobObs, rps: Option<f64>, time_left: f64) -> f64 {
    let (Some(_), Some(rps)) = (o.target_accuracy, rps.filter(|r| *r > 0.0)) else {
        return 0.0;
    };
    let limit = (o.max_epochs as u64 * o.steps_per_epoch).saturating_sub(o.steps_done) as f64;
    let fastest = rps
        * (1.0 - cfg.reserve_frac)
            .min(o.usable_share())
            .max(cfg.min_share);
    if limit / fastest <= WORST_CASE_FRAC * time_left {
        0.0
    } else {
        limit / time_left
    }
}

/// Tells the loop what the arbiter granted (back-calculation against windup).
pub(crate) fn granted(_cfg: &ControlConfig, st: &mut JobState, share: f64) {
    st.pi.u = share - st.feed_forward;
}

#[cfg(test)]
#[path = "training_tests.rs"]
mod tests;
