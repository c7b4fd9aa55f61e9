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
/// the whole device.
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
    let holds = d.requested > cfg.min_share && d.requested < 1.0;
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
fn steer_to_deadline(
    cfg: &ControlConfig,
    st: &mut JobState,
    o: &JobObs,
    d: &mut JobDecision,
    deadline_in: f64,
) {
    let (remaining, measured, rps) = (d.remaining_steps, d.measured_rate, d.rate_per_share);
    let margin = cfg.deadline_margin_s(o.allotted_s.unwrap_or(0.0));
    let time_left = deadline_in - margin;
    d.slack_s = rps.map(|r| time_left - remaining as f64 / r);
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
/// fraction of `time_left` at the whole device less the reserve, else the rate that runs them
/// by the deadline less the margin. Zero without a target or a rate to plan with.
fn worst_case_rate(cfg: &ControlConfig, o: &JobObs, rps: Option<f64>, time_left: f64) -> f64 {
    let (Some(_), Some(rps)) = (o.target_accuracy, rps.filter(|r| *r > 0.0)) else {
        return 0.0;
    };
    let limit = (o.max_epochs as u64 * o.steps_per_epoch).saturating_sub(o.steps_done) as f64;
    let fastest = rps * (1.0 - cfg.reserve_frac).max(cfg.min_share);
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
        // At the limit, with the curve still climbing: the limit, not a panic.
        assert_eq!(expected_epochs(&curve, Some(0.999), 4, 4), 4.0);
        assert_eq!(expected_epochs(&curve, Some(0.96), 4, 4), 4.0);
    }

    use crate::control::{Controller, Observations, PastDeadline};

    const PERIOD: f64 = 0.1;

    /// A job of `epochs` epochs of `per_epoch` steps at `done` steps, seen at `share`, with a
    /// step cost that (on 2 cores) claims 364 steps/s per unit of share.
    fn job(name: &str, class: JobClass, deadline_in: Option<f64>, done: u64, share: f64) -> JobObs {
        JobObs {
            name: name.into(),
            class,
            deadline_in_s: deadline_in,
            allotted_s: deadline_in.map(|_| 600.0),
            steps_done: done,
            steps_per_epoch: 25,
            epochs_done: (done / 25) as u32,
            max_epochs: 400,
            target_accuracy: None,
            curve: vec![],
            steps_in_period: 2,
            share,
            step_cost_core_s: Some(2.0 / 364.0),
            cores: 2.0,
        }
    }

    #[test]
    fn the_finish_is_predicted_from_the_measured_rate_whatever_the_share() {
        // The job: best-effort, 400 epochs of 25 steps, at step 790, running at 20
        // steps/s on the leftover (0.95 of the device) while its step cost claims 364 steps/s
        // per unit of share. 9,210 steps at 20 steps/s: about 460 s, not 27 s.
        let mut ctrl = Controller::new(ControlConfig::default());
        let mut last = None;
        for k in 0..=50u64 {
            let obs = Observations {
                now_s: k as f64 * PERIOD,
                jobs: vec![job("be", JobClass::BestEffort, None, 790 + 2 * k, 0.95)],
                ..Default::default()
            };
            last = Some(ctrl.tick(&obs).jobs[0].clone());
        }
        let d = last.unwrap();
        assert!(
            (d.share - 0.95).abs() < 1e-9,
            "it holds the leftover: {}",
            d.share
        );
        assert!((d.smoothed_rate.unwrap() - 20.0).abs() < 1e-9);
        assert_eq!(d.remaining_steps, 10_000 - 890);
        let want = (10_000 - 890) as f64 / 20.0;
        assert!(
            (d.predicted_finish_in_s.unwrap() - want).abs() < 1e-6,
            "{d:?}"
        );
        // With a target, the remaining steps are the learning curve's: acc(e) = 1 − 0.4/e
        // reaches 0.96 at epoch 10, so 10 × 25 steps in all.
        let mut with_target = job("t", JobClass::BestEffort, None, 100, 0.5);
        with_target.target_accuracy = Some(0.96);
        with_target.curve = (1..=4).map(|e| 1.0 - 0.4 / e as f64).collect();
        with_target.epochs_done = 4;
        let mut st = JobState::new(0.5);
        let cfg = ControlConfig::default();
        decide(&cfg, &mut st, &with_target, 0.0);
        with_target.steps_done = 105;
        let d = decide(&cfg, &mut st, &with_target, 1.0);
        assert_eq!(d.remaining_steps, 250 - 105);
        assert!((d.predicted_finish_in_s.unwrap() - 145.0 / 5.0).abs() < 1e-9);
    }

    #[test]
    fn an_on_track_jobs_predicted_finish_holds_still_while_its_loop_corrects() {
        // A deadline job paced by its loop with ±30 % jitter on its progress each period: the
        // slack (time to the deadline less the predicted finish) stays within a few seconds
        // over the middle of its run, where one period's rate would swing it by minutes.
        let mut ctrl = Controller::new(ControlConfig::default());
        let mut rng = crate::util::rng::Rng::new(9);
        let (steps, deadline) = (100_000u64, 600.0);
        let (mut done, mut share) = (0.0f64, 0.05);
        let mut slack = Vec::new();
        for k in 0..(deadline / PERIOD) as u64 {
            let t = k as f64 * PERIOD;
            let mut o = job(
                "d",
                JobClass::Deadline,
                Some(deadline - t),
                done as u64,
                share,
            );
            (o.steps_per_epoch, o.max_epochs, o.epochs_done) = (steps, 1, 0);
            o.allotted_s = Some(deadline);
            let d = ctrl.tick(&Observations {
                now_s: t,
                jobs: vec![o],
                ..Default::default()
            });
            share = d.jobs[0].share;
            if (100.0..500.0).contains(&t) {
                slack.push(deadline - t - d.jobs[0].predicted_finish_in_s.unwrap());
            }
            let jitter = 1.0 + 0.3 * (2.0 * rng.next_f64() - 1.0);
            done += 364.0 * share * jitter * PERIOD;
        }
        let lo = slack.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = slack.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        assert!(
            hi - lo < 15.0 && lo > -10.0,
            "slack from {lo:.1} s to {hi:.1} s"
        );
    }

    #[test]
    fn a_change_of_plan_moves_the_estimate_with_it_instead_of_swinging() {
        // A job aiming at 95 % on data that caps it near 92 %: after its first epoch the
        // one-point fit expects two epochs in all (the loop slows it to the least share, and
        // it still runs ahead: it is early), after its second, whose accuracy fell, the limit
        // again (the loop speeds it up fourfold). From that change on the estimate starts
        // from the new plan: the slack of a job that keeps its plan stays within two minutes
        // of the margin (6 s of 600) through the loop's transient, where a smoothed rate
        // that had to catch up with the new share from the old one strayed by 1,500 s.
        let curve = [0.9194, 0.9145, 0.9167, 0.9141, 0.9164];
        let mut ctrl = Controller::new(ControlConfig::default());
        let mut rng = crate::util::rng::Rng::new(3);
        let (per_epoch, deadline) = (625u64, 600.0);
        let (mut done, mut share) = (0.0f64, 0.1);
        let (mut worst, mut after_flip) = (0.0f64, 0);
        for k in 0..(200.0 / PERIOD) as u64 {
            let t = k as f64 * PERIOD;
            let epochs = (done as u64 / per_epoch) as usize;
            let mut o = job(
                "aim",
                JobClass::Deadline,
                Some(deadline - t),
                done as u64,
                share,
            );
            o.allotted_s = Some(deadline);
            (o.steps_per_epoch, o.max_epochs, o.epochs_done) = (per_epoch, 40, epochs as u32);
            o.target_accuracy = Some(0.95);
            o.curve = curve[..epochs.min(curve.len())].to_vec();
            // As measured at admission: it claims 1,460 steps/s per unit of share.
            o.step_cost_core_s = Some(2.0 / 1460.0);
            let d = ctrl.tick(&Observations {
                now_s: t,
                jobs: vec![o],
                ..Default::default()
            });
            share = d.jobs[0].share;
            // Judged while the loop holds the job to a plan: above the least share.
            if t > 3.0 && d.jobs[0].requested > ControlConfig::default().min_share {
                let slack = deadline - t - d.jobs[0].predicted_finish_in_s.unwrap();
                worst = worst.max((slack - 6.0).abs());
                after_flip += usize::from(epochs >= 2);
            }
            // It runs at 1,050 (evaluation, the lane's overheads).
            done += 1050.0 * share * (1.0 + 0.2 * (2.0 * rng.next_f64() - 1.0)) * PERIOD;
        }
        assert!(
            done as u64 > 3 * per_epoch,
            "it ran past its first epochs: {done}"
        );
        assert!(
            after_flip > 300,
            "judged after the change of plan: {after_flip} periods"
        );
        assert!(worst < 120.0, "slack strayed {worst:.0} s from the margin");
    }

    #[test]
    fn a_job_past_its_deadline_gives_way_to_one_that_can_still_make_its_own() {
        for policy in [PastDeadline::BestEffort, PastDeadline::Stop] {
            let cfg = ControlConfig {
                past_deadline: policy,
                ..ControlConfig::default()
            };
            let mut ctrl = Controller::new(cfg);
            let mut last = None;
            let (mut done, mut share) = (0.0f64, 0.5);
            for k in 0..20u64 {
                let t = k as f64 * PERIOD;
                // `late` passed its deadline 5 s ago with most of its work left; `due` needs
                // about 0.6 of the device to make its deadline.
                let late = job(
                    "late",
                    JobClass::Deadline,
                    Some(-5.0 - t),
                    100 + 30 * k,
                    0.5,
                );
                let mut due = job(
                    "due",
                    JobClass::Deadline,
                    Some(60.0 - t),
                    done as u64,
                    share,
                );
                (due.steps_per_epoch, due.max_epochs) = (13_000, 1);
                let d = ctrl.tick(&Observations {
                    now_s: t,
                    jobs: vec![late, due],
                    ..Default::default()
                });
                share = d.jobs[1].share;
                done += 364.0 * share * PERIOD;
                last = Some(d);
            }
            let d = last.unwrap();
            let (late, due) = (&d.jobs[0], &d.jobs[1]);
            assert_eq!(late.class, JobClass::BestEffort, "{policy}: demoted");
            assert_eq!(late.past_deadline, Some(policy));
            assert!(late.requested <= ControlConfig::default().min_share + 1e-12);
            assert_eq!(due.past_deadline, None);
            assert!(due.share > 0.5, "{policy}: {}", due.share);
            assert!(
                (due.share - due.requested).abs() < 1e-9,
                "the job that can make it gets all it asks for"
            );
            assert!(
                late.share <= d.capacity - due.share + 1e-9,
                "only the leftover"
            );
        }
    }

    /// Runs one deadline job of `epochs` × `per_epoch` steps under the controller until it
    /// ends (at `deadline` or when `curve(epoch)` reaches `target`), its progress
    /// `true_rps` × share per second; returns when it finished and its peak share over
    /// the first `early_s` seconds and the rate per unit of share it was last planned with.
    fn run_alone(
        (epochs, per_epoch, deadline): (u32, u64, f64),
        target: Option<f64>,
        curve: &dyn Fn(u32) -> f64,
        true_rps: f64,
        early_s: f64,
    ) -> (Option<f64>, f64, Option<f64>) {
        let mut ctrl = Controller::new(ControlConfig::default());
        let mut planned_rps = None;
        let (mut done, mut share, mut early_peak) = (0.0f64, 0.1, 0.0f64);
        for k in 0..(2.0 * deadline / PERIOD) as u64 {
            let t = k as f64 * PERIOD;
            let epochs_done = ((done as u64 / per_epoch) as u32).min(epochs);
            let accs: Vec<f64> = (1..=epochs_done).map(curve).collect();
            if epochs_done == epochs || target.is_some_and(|g| accs.last() >= Some(&g)) {
                return (Some(t), early_peak, planned_rps);
            }
            let mut o = job(
                "j",
                JobClass::Deadline,
                Some(deadline - t),
                done as u64,
                share,
            );
            (o.steps_per_epoch, o.max_epochs, o.epochs_done) = (per_epoch, epochs, epochs_done);
            (o.target_accuracy, o.curve, o.allotted_s) = (target, accs, Some(deadline));
            let d = ctrl.tick(&Observations {
                now_s: t,
                jobs: vec![o],
                ..Default::default()
            });
            share = d.jobs[0].share;
            planned_rps = d.jobs[0].rate_per_share;
            if t < early_s {
                early_peak = early_peak.max(share);
            }
            done += true_rps * share * PERIOD;
        }
        (None, early_peak, planned_rps)
    }

    #[test]
    fn a_curve_that_promises_the_target_too_soon_still_leaves_time_for_the_limit() {
        // 0.85 and 0.89 after two epochs: the fit expects 0.9 within the third, and the job
        // is slowed to match. The curve then stalls and reaches 0.9 only at the limit, the
        // tenth epoch, as the scenario bench's noisy-blobs jobs did (one finished 21 % late
        // when it was paced to the curve alone). Ten epochs take 11 s at the whole device
        // and 100 s are allotted: the job keeps the limit within reach and makes it.
        let curve = |e: u32| {
            [
                0.85, 0.89, 0.891, 0.892, 0.893, 0.894, 0.895, 0.896, 0.897, 0.9,
            ][e as usize - 1]
        };
        let (finish, early_peak, _) = run_alone((10, 380, 100.0), Some(0.9), &curve, 364.0, 20.0);
        let finish = finish.expect("finished");
        assert!(finish <= 100.0 - 1.0, "finished at {finish:.1} s");
        // Early on it was paced to the curve, not rushed to the limit.
        assert!(early_peak < 0.3, "early share {early_peak:.2}");
    }

    #[test]
    fn a_job_slower_than_its_step_cost_says_is_planned_at_its_measured_rate() {
        // The step cost claims 364 steps/s per unit of share; the job makes half that (its
        // epoch-end evaluations are not in the step cost). Planned on the cost alone, half
        // of its share would come from the PI's correction for the whole run, and be lost
        // from the slack and from what admission counts it as needing.
        let (finish, _, rps) = run_alone((1, 9_100, 100.0), None, &|_| 0.0, 182.0, 0.0);
        let finish = finish.expect("finished");
        assert!((97.0..=99.9).contains(&finish), "finished at {finish:.1} s");
        let rps = rps.expect("a rate per share");
        assert!(
            (rps - 182.0).abs() < 182.0 * 0.05,
            "planned with {rps:.1} steps/s"
        );
    }
}
