//! The controller on scripted plants (first-order models with delay), the arbiter's
//! invariants under random inputs, and admission.

use setpoint::control::admission::{Candidate, admit};
use setpoint::control::arbiter::arbitrate;
use setpoint::control::{
    ControlConfig, Controller, Decisions, JobClass, JobDecision, JobObs, Leftover, Observations,
    ServiceDecision, ServiceObs,
};
use setpoint::util::rng::Rng;

const CORES: usize = 2;
const PERIOD: f64 = 0.1;

/// An inference service as a queue: one worker, `cost` seconds of compute per request,
/// served at `share·cores` of a core. Latency p99 is the M/M/1 sojourn quantile
/// `ln(100)/(μ − λ)` plus the backlog's drain time; the controller sees it through a
/// first-order lag (the sliding window) one period late.
struct ServicePlant {
    cost: f64,
    backlog: f64,
    seen_p99: f64,
    pending: f64,
    lag: f64,
}

impl ServicePlant {
    fn new(cost: f64) -> Self {
        ServicePlant {
            cost,
            backlog: 0.0,
            seen_p99: 0.0,
            pending: 0.0,
            lag: 0.5,
        }
    }

    /// Advances one period at `share` under `rate` arrivals/s; returns the true p99.
    fn step(&mut self, share: f64, rate: f64) -> f64 {
        let mu = (share * CORES as f64).min(1.0) / self.cost;
        self.backlog = (self.backlog + (rate - mu) * PERIOD).max(0.0);
        let p99 = if mu > rate {
            (100f64).ln() / (mu - rate) + self.backlog / mu
        } else {
            1.0 + self.backlog / mu
        };
        // What the controller sees now is last period's value, smoothed.
        self.seen_p99 += self.lag * (self.pending - self.seen_p99);
        self.pending = p99;
        p99
    }

    fn obs(&self, share: f64, rate: f64) -> ServiceObs {
        let rows = (rate * PERIOD).round() as usize;
        ServiceObs {
            name: "svc".into(),
            slo_s: 0.025,
            p99_s: (self.seen_p99 > 0.0).then_some(self.seen_p99),
            arrival_rate: rate,
            queue_len: self.backlog as usize,
            batches: vec![(1, self.cost); rows],
            calibration: vec![],
            batch_limit: 32,
            share,
            max_share: 0.5,
            cores: CORES as f64,
        }
    }
}

fn run_service(ctrl: &mut Controller, plant: &mut ServicePlant, rates: &[f64]) -> Vec<(f64, f64)> {
    let mut share = 0.05;
    let mut out = Vec::new();
    for (k, &rate) in rates.iter().enumerate() {
        let obs = Observations {
            now_s: k as f64 * PERIOD,
            services: vec![plant.obs(share, rate)],
            jobs: vec![],
            ..Default::default()
        };
        let d = ctrl.tick(&obs);
        share = d.services[0].share;
        let p99 = plant.step(share, rate);
        out.push((share, p99));
    }
    out
}

fn direction_changes(xs: &[f64]) -> usize {
    let d: Vec<f64> = xs
        .windows(2)
        .map(|w| w[1] - w[0])
        .filter(|d| d.abs() > 1e-4)
        .collect();
    d.windows(2)
        .filter(|w| w[0].signum() != w[1].signum())
        .count()
}

#[test]
fn a_service_settles_on_its_latency_set_point_without_oscillating() {
    let cfg = ControlConfig::default();
    let setpoint = cfg.latency_setpoint_frac * 0.025;
    let mut ctrl = Controller::new(cfg);
    let mut plant = ServicePlant::new(0.001);
    let trace = run_service(&mut ctrl, &mut plant, &[200.0; 150]);
    if std::env::var("SHOW_TRACE").is_ok() {
        for (k, t) in trace.iter().enumerate() {
            eprintln!("{k} share {:.4} p99 {:.2} ms", t.0, t.1 * 1e3);
        }
    }
    // Settled within 40 periods (4 s) and stays within ±15 % of the set point.
    let settle = trace
        .iter()
        .rposition(|&(_, p)| (p - setpoint).abs() > 0.15 * setpoint)
        .map_or(0, |i| i + 1);
    assert!(
        settle <= 40,
        "settled after {settle} periods: {:?}",
        &trace[..50]
    );
    // Never over the SLO once settled; no limit cycle on the steady load.
    let tail: Vec<f64> = trace[100..].iter().map(|t| t.0).collect();
    assert!(trace[40..].iter().all(|&(_, p)| p < 0.025));
    let (lo, hi) = tail
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), &x| (a.min(x), b.max(x)));
    assert!(hi - lo < 0.005, "share still moves {lo:.4}..{hi:.4}");
    assert!(direction_changes(&tail) <= 2, "{tail:?}");
    // Least share that meets the set point: μ − λ = ln(100)/setpoint.
    let ideal = (200.0 + (100f64).ln() / setpoint) * 0.001 / CORES as f64;
    assert!(
        (tail[tail.len() - 1] - ideal).abs() < 0.1 * ideal,
        "{} vs {ideal}",
        tail[tail.len() - 1]
    );
}

#[test]
fn a_load_step_is_met_with_bounded_overshoot_and_settles_again() {
    let cfg = ControlConfig::default();
    let setpoint = cfg.latency_setpoint_frac * 0.025;
    let mut ctrl = Controller::new(cfg);
    let mut plant = ServicePlant::new(0.001);
    let mut rates = vec![200.0; 100];
    rates.extend(vec![400.0; 100]);
    let trace = run_service(&mut ctrl, &mut plant, &rates);
    // The feed-forward sees the arrivals at once: the step never breaks the SLO.
    let peak = trace[100..].iter().map(|t| t.1).fold(0.0, f64::max);
    assert!(peak < 0.025, "p99 peaked at {peak} after the step");
    let settle = trace[100..]
        .iter()
        .rposition(|&(_, p)| (p - setpoint).abs() > 0.15 * setpoint)
        .map_or(0, |i| i + 1);
    assert!(settle <= 40, "settled {settle} periods after the step");
    // Share overshoot over its final value is bounded.
    let final_share = trace[199].0;
    let max_share = trace[100..].iter().map(|t| t.0).fold(0.0, f64::max);
    assert!(
        max_share <= final_share * 1.3,
        "{max_share} vs {final_share}"
    );
}

#[test]
fn a_service_saturates_at_what_it_can_use_and_recovers_at_once() {
    let mut ctrl = Controller::new(ControlConfig::default());
    let mut plant = ServicePlant::new(0.001);
    // 1500 requests/s at 1 ms each is more than one worker can serve: saturated at 0.5.
    let mut rates = vec![1500.0; 50];
    rates.extend(vec![100.0; 60]);
    let trace = run_service(&mut ctrl, &mut plant, &rates);
    assert!((trace[49].0 - 0.5).abs() < 1e-9, "{}", trace[49].0);
    // No windup: once the overload ends the share falls within a few periods of the
    // backlog draining, instead of staying pinned while an integrator unwinds.
    let drained = trace[50..].iter().position(|t| t.1 < 0.02).unwrap() + 50;
    let fell = trace[drained..].iter().position(|t| t.0 < 0.4).unwrap();
    assert!(
        fell <= 10,
        "share held high {fell} periods after the backlog drained"
    );
}

/// A job whose rate is `rate_per_share × share` steps/s with ±`noise` multiplicative
/// jitter, seen through a one-period delay. With `cost_bias`, the job also reports a step
/// cost that far off the truth (0.8: it looks 20 % cheaper than it is), which the
/// feed-forward trusts and the PI must correct.
fn run_job(
    cfg: ControlConfig,
    steps: u64,
    deadline_s: f64,
    noise: f64,
    seed: u64,
    cost_bias: Option<f64>,
) -> (f64, Vec<f64>) {
    let mut ctrl = Controller::new(cfg);
    let mut rng = Rng::new(seed);
    let rate_per_share = 400.0;
    let (mut done, mut share, mut t) = (0.0f64, 0.05, 0.0);
    let mut shares = Vec::new();
    while (done as u64) < steps && t < 3.0 * deadline_s {
        let obs = Observations {
            now_s: t,
            services: vec![],
            jobs: vec![JobObs {
                name: "job".into(),
                class: JobClass::Deadline,
                deadline_in_s: Some(deadline_s - t),
                allotted_s: Some(deadline_s),
                steps_done: done as u64,
                steps_per_epoch: steps,
                epochs_done: 0,
                max_epochs: 1,
                target_accuracy: None,
                curve: vec![],
                steps_in_period: 0,
                share,
                step_cost_core_s: cost_bias.map(|b| b * CORES as f64 / rate_per_share),
                cores: CORES as f64,
                width: None,
            }],
            ..Default::default()
        };
        let d = ctrl.tick(&obs);
        share = d.jobs[0].share;
        shares.push(share);
        let jitter = 1.0 + noise * (2.0 * rng.next_f64() - 1.0);
        done += rate_per_share * share * jitter * PERIOD;
        t += PERIOD;
    }
    // Finish time within the last period, by interpolation.
    let over = done - steps as f64;
    let last_rate = rate_per_share * share;
    (t - over / last_rate, shares)
}

#[test]
fn a_job_finishes_on_its_deadline_with_the_least_share() {
    let cfg = ControlConfig::default();
    let margin = cfg.deadline_margin_frac;
    // 8000 steps at 400 steps/s per unit share: 20 s at the whole device; deadline 60 s.
    for (seed, noise, bias) in [
        (1, 0.0, None),
        (2, 0.1, None),
        (3, 0.2, None),
        (4, 0.0, Some(1.0)),
        (5, 0.1, Some(0.8)),
        (6, 0.1, Some(1.25)),
    ] {
        let (finish, shares) = run_job(cfg.clone(), 8000, 60.0, noise, seed, bias);
        let deviation = (finish - 60.0).abs() / 60.0;
        assert!(
            finish <= 60.0,
            "missed: finished at {finish:.2} s (noise {noise})"
        );
        assert!(
            deviation <= 0.02,
            "deviation {:.2} % (noise {noise}, cost bias {bias:?}, aim {:.0} % early)",
            100.0 * deviation,
            100.0 * margin
        );
        // The share it settles on is about the least that does it: 1/3 of the device.
        let mid = shares[shares.len() / 2];
        assert!(
            (mid - 1.0 / 3.0).abs() < 0.06,
            "share {mid} (noise {noise})"
        );
    }
}

#[test]
fn a_deadline_change_takes_effect_at_the_next_period() {
    let mut ctrl = Controller::new(ControlConfig::default());
    let job = |deadline_in: f64, done: u64| JobObs {
        name: "job".into(),
        class: JobClass::Deadline,
        deadline_in_s: Some(deadline_in),
        allotted_s: Some(100.0),
        steps_done: done,
        steps_per_epoch: 10_000,
        epochs_done: 0,
        max_epochs: 1,
        target_accuracy: None,
        curve: vec![],
        steps_in_period: 40,
        share: 0.5,
        step_cost_core_s: None,
        cores: CORES as f64,
        width: None,
    };
    let mut last = None;
    for k in 0..30 {
        let obs = Observations {
            now_s: k as f64 * PERIOD,
            services: vec![],
            jobs: vec![job(100.0 - k as f64 * PERIOD, 40 * k)],
            ..Default::default()
        };
        last = Some(ctrl.tick(&obs).jobs[0].share);
    }
    let before = last.unwrap();
    // The deadline moves 4× closer: the very next decision asks for much more.
    let obs = Observations {
        now_s: 3.0,
        services: vec![],
        jobs: vec![job(24.0, 1200)],
        ..Default::default()
    };
    let after = ctrl.tick(&obs).jobs[0].share;
    assert!(after > 2.5 * before, "{before} → {after}");
}

#[test]
fn an_impossible_deadline_saturates_and_a_relaxed_one_recovers_without_windup() {
    let mut ctrl = Controller::new(ControlConfig::default());
    let obs = |t: f64, deadline_in: f64, done: u64, share: f64| Observations {
        now_s: t,
        services: vec![],
        jobs: vec![JobObs {
            name: "job".into(),
            class: JobClass::Deadline,
            deadline_in_s: Some(deadline_in),
            allotted_s: Some(50.0),
            steps_done: done,
            steps_per_epoch: 100_000,
            epochs_done: 0,
            max_epochs: 1,
            target_accuracy: None,
            curve: vec![],
            steps_in_period: 0,
            share,
            step_cost_core_s: None,
            cores: CORES as f64,
            width: None,
        }],
        ..Default::default()
    };
    let mut share = 0.5;
    let mut done = 0;
    for k in 0..50 {
        let d = ctrl.tick(&obs(
            k as f64 * PERIOD,
            10.0 - k as f64 * PERIOD,
            done,
            share,
        ));
        share = d.jobs[0].share;
        done += (400.0 * share * PERIOD) as u64;
    }
    assert!(
        share >= 0.95 - 1e-9,
        "an infeasible deadline asks for everything: {share}"
    );
    // Deadline moved far out: the request drops to what is needed right away.
    let d = ctrl.tick(&obs(5.0, 10_000.0, done, share));
    assert!(d.jobs[0].share < 0.1, "{}", d.jobs[0].share);
}

fn random_decisions(rng: &mut Rng) -> (Vec<ServiceDecision>, Vec<JobDecision>) {
    let ns = rng.below(6) as usize;
    let nj = rng.below(8) as usize;
    let services = (0..ns)
        .map(|i| ServiceDecision {
            name: format!("s{i}"),
            requested: rng.uniform(0.0, 0.8),
            share: 0.0,
            batch_size: 1,
            setpoint_s: 0.01,
            p99_s: None,
            feed_forward: 0.0,
            cost_per_request_s: None,
        })
        .collect();
    let jobs = (0..nj)
        .map(|i| JobDecision {
            name: format!("j{i}"),
            class: if rng.below(3) == 0 {
                JobClass::BestEffort
            } else {
                JobClass::Deadline
            },
            requested: rng.uniform(0.0, 1.0),
            share: 0.0,
            remaining_steps: 10,
            expected_epochs: 1.0,
            required_rate: None,
            measured_rate: 0.0,
            smoothed_rate: None,
            rate_per_share: None,
            slack_s: (rng.below(4) > 0).then(|| rng.uniform(-10.0, 100.0)),
            predicted_finish_in_s: None,
            past_deadline: None,
            usable_share: if rng.below(2) == 0 {
                1.0
            } else {
                rng.uniform(0.05, 1.0)
            },
        })
        .collect();
    (services, jobs)
}

#[test]
fn the_arbiter_keeps_its_invariants_under_random_requests() {
    let mut rng = Rng::new(77);
    for trial in 0..5000 {
        let leftover = [Leftover::BestEffort, Leftover::Idle, Leftover::Spread][trial % 3];
        let cfg = ControlConfig {
            reserve_frac: rng.uniform(0.0, 0.5),
            leftover,
            ..ControlConfig::default()
        };
        let (mut s, mut j) = random_decisions(&mut rng);
        // Foreign load (other processes on the device) is never handed out.
        let foreign = if trial % 4 == 0 {
            rng.uniform(0.0, 1.2)
        } else {
            0.0
        };
        let cap = arbitrate(&cfg, foreign, &mut s, &mut j);
        assert!(
            (cap - (1.0 - cfg.reserve_frac - foreign).clamp(0.0, 1.0)).abs() < 1e-12,
            "trial {trial}: capacity {cap} with reserve {} and foreign load {foreign}",
            cfg.reserve_frac
        );
        let n = s.len() + j.len();
        let floor = cfg.min_share.min(cap / n.max(1) as f64);
        let sum: f64 =
            s.iter().map(|x| x.share).sum::<f64>() + j.iter().map(|x| x.share).sum::<f64>();
        assert!(
            sum <= cap + 1e-9,
            "trial {trial}: sum {sum} > capacity {cap}"
        );
        assert!(cap <= 1.0);
        for x in s.iter().map(|x| x.share).chain(j.iter().map(|x| x.share)) {
            assert!(
                x >= floor * (1.0 - 1e-9) - 1e-12,
                "trial {trial}: share {x} under floor {floor}"
            );
        }
        if leftover == Leftover::Spread {
            continue;
        }
        // Class order: a deadline job above its floor means every service got its request.
        let job_extra = j
            .iter()
            .any(|x| x.class == JobClass::Deadline && x.share > floor + 1e-9);
        if job_extra {
            for x in &s {
                assert!(
                    x.share >= x.requested.max(floor) - 1e-9,
                    "trial {trial}: service cut while a job got extra"
                );
            }
        }
        // Least slack first among deadline jobs, what they can use first: a job that got
        // anything above its floor means every job with less slack got all it asked for up
        // to what it can use; a job that got more than it can use means every deadline job
        // got what it can use, and every one with less slack all it asked for.
        let dl: Vec<&JobDecision> = j.iter().filter(|x| x.class == JobClass::Deadline).collect();
        let usable = |x: &JobDecision| x.requested.min(x.usable_share).max(floor);
        for a in &dl {
            let beyond = a.share > usable(a) + 1e-9;
            if a.share <= floor + 1e-9 {
                continue;
            }
            for b in &dl {
                let sa = a.slack_s.unwrap_or(f64::INFINITY);
                let sb = b.slack_s.unwrap_or(f64::INFINITY);
                let want = match (beyond, sb < sa) {
                    (true, true) => b.requested.max(floor),
                    (true, false) | (false, true) => usable(b),
                    (false, false) => continue,
                };
                assert!(
                    b.share >= want - 1e-9,
                    "trial {trial}: {} (slack {sb}) short of {want} while {} (slack {sa}) got {}",
                    b.name,
                    a.name,
                    a.share
                );
            }
        }
        // Best-effort jobs get more than the floor only when every deadline job got its
        // request, and only under leftover = best-effort.
        for x in j.iter().filter(|x| x.class == JobClass::BestEffort) {
            if x.share > floor + 1e-9 {
                assert_eq!(leftover, Leftover::BestEffort);
                for d in &dl {
                    assert!(d.share >= d.requested.max(floor) - 1e-9);
                }
            }
        }
    }
}

#[test]
fn admission_refuses_an_infeasible_job_with_the_reason_and_the_earliest_deadline() {
    let cfg = ControlConfig::default();
    let last = Decisions {
        now_s: 0.0,
        services: vec![ServiceDecision {
            name: "svc".into(),
            requested: 0.3,
            share: 0.3,
            batch_size: 8,
            setpoint_s: 0.015,
            p99_s: Some(0.01),
            feed_forward: 0.2,
            cost_per_request_s: Some(0.001),
        }],
        jobs: vec![JobDecision {
            name: "running".into(),
            class: JobClass::Deadline,
            requested: 0.4,
            share: 0.4,
            remaining_steps: 1000,
            expected_epochs: 1.0,
            required_rate: Some(10.0),
            measured_rate: 10.0,
            smoothed_rate: Some(10.0),
            rate_per_share: Some(25.0),
            slack_s: Some(50.0),
            predicted_finish_in_s: Some(100.0),
            past_deadline: None,
            usable_share: 1.0,
        }],
        capacity: 0.95,
        assigned: 0.7,
        ..Default::default()
    };
    // 0.25 of 2 cores is free: 60 core-seconds need 120 s at 0.25.
    let c = |deadline: f64| Candidate {
        name: "new".into(),
        work_core_s: 60.0,
        deadline_in_s: deadline,
        cores: CORES as f64,
        width: None,
    };
    let ok = admit(&cfg, &last, &c(200.0)).unwrap();
    assert!((ok - 60.0 / 2.0 / (200.0 * 0.99)).abs() < 1e-9);
    let refusal = admit(&cfg, &last, &c(60.0)).unwrap_err();
    assert!(
        refusal.reason.starts_with(
            "job new needs 0.51 of the device until its deadline in 60 s, but only 0.25 is free"
        ),
        "{}",
        refusal.reason
    );
    assert!(
        refusal
            .reason
            .contains("services hold 0.30, deadline jobs 0.40, reserve 0.05")
    );
    // 30 core-s of wall work at 0.25 free takes 120 s, but the running job frees 0.4 at
    // 100 s: 25 by 100 s, the last 5 at 0.65 → about 107.7 s, plus the 1 % margin.
    let want = (100.0 + 5.0 / 0.65) / 0.99;
    let earliest = refusal.earliest_deadline_in_s.unwrap();
    assert!((earliest - want).abs() < 1e-6, "{earliest} vs {want}");
    assert!(earliest > 60.0);
    // A deadline the capacity free now does not meet (0.2525 needed over 120 s), but the
    // capacity the running job frees at 100 s does: admitted at what is free now.
    let now_free = admit(&cfg, &last, &c(120.0)).unwrap();
    assert!((now_free - 0.25).abs() < 1e-9, "{now_free}");
    // A deadline already past is said to be past, not "in 0 s".
    let refusal = admit(&cfg, &last, &c(-30.0)).unwrap_err();
    assert_eq!(
        refusal.reason,
        "job new's deadline is in the past (30 s ago)"
    );
    assert!(refusal.earliest_deadline_in_s.unwrap() > 0.0);

    // Load from processes setpoint does not own is not handed out: with 0.2 of the device
    // busy elsewhere, a deadline in 150 s no longer fits (0.05 free, 0.20 needed; 5 done
    // by 100 s, the rest at 0.45 from then: about 157 s with the margin).
    assert!(admit(&cfg, &last, &c(150.0)).is_ok());
    let busy = Decisions {
        foreign_load: 0.2,
        ..last.clone()
    };
    let refusal = admit(&cfg, &busy, &c(150.0)).unwrap_err();
    assert!(
        refusal.reason.contains("only 0.05 is free")
            && refusal.reason.ends_with(
                "reserve 0.05, other processes 0.20), and the deadline jobs finish too late \
                 to free the rest in time"
            ),
        "{}",
        refusal.reason
    );
    let want = (100.0 + 25.0 / 0.45) / 0.99;
    let earliest = refusal.earliest_deadline_in_s.unwrap();
    assert!((earliest - want).abs() < 1e-6, "{earliest} vs {want}");
}

/// A best-effort job that would take the whole device, named `name`.
fn greedy_job(name: &str, share: f64) -> JobObs {
    JobObs {
        name: name.into(),
        class: JobClass::BestEffort,
        deadline_in_s: None,
        allotted_s: None,
        steps_done: 10,
        steps_per_epoch: 1000,
        epochs_done: 0,
        max_epochs: 100,
        target_accuracy: None,
        curve: vec![],
        steps_in_period: 10,
        share,
        step_cost_core_s: Some(0.001),
        cores: CORES as f64,
        width: None,
    }
}

#[test]
fn each_device_is_arbitrated_on_its_own_and_tenants_are_kept_across_devices() {
    let cfg = ControlConfig {
        leftover: Leftover::BestEffort,
        ..Default::default()
    };
    let mut ctrl = Controller::new(cfg.clone());
    let plant = ServicePlant::new(0.001);
    let devices = |a_share: f64, b_share: f64, svc_share: f64| {
        vec![
            Observations {
                services: vec![plant.obs(svc_share, 100.0)],
                jobs: vec![greedy_job("a", a_share)],
                ..Default::default()
            },
            Observations {
                jobs: vec![greedy_job("b", b_share)],
                // Another process takes 30 % of the second GPU.
                foreign_load: 0.3,
                ..Default::default()
            },
        ]
    };
    let (mut a, mut b, mut s) = (0.05, 0.05, 0.05);
    let mut last = Vec::new();
    for _ in 0..50 {
        last = ctrl.tick_devices(&devices(a, b, s));
        assert_eq!(last.len(), 2);
        s = last[0].services[0].share;
        a = last[0].jobs[0].share;
        b = last[1].jobs[0].share;
        // Each device hands out at most its own capacity.
        assert!(
            last[0].assigned <= 1.0 - cfg.reserve_frac + 1e-9,
            "{:?}",
            last[0]
        );
        assert!(
            last[1].assigned <= 1.0 - cfg.reserve_frac - 0.3 + 1e-9,
            "{:?}",
            last[1]
        );
    }
    // The job alone on the second device gets its capacity, not what is left on the first.
    assert!(
        (b - (1.0 - cfg.reserve_frac - 0.3)).abs() < 0.02,
        "b {b}, decisions {last:?}"
    );
    assert!(a + s <= 1.0 - cfg.reserve_frac + 1e-9);
    let merged = Decisions::merged(&last);
    assert_eq!(merged.jobs.len(), 2);
    assert_eq!(merged.services.len(), 1);
    assert!((merged.assigned - last[0].assigned - last[1].assigned).abs() < 1e-12);
    // A tenant moving between the observations of two devices keeps its loop's state; one
    // gone from every device is forgotten (its next appearance starts from its share).
    let moved = ctrl.tick_devices(&[
        Observations {
            jobs: vec![greedy_job("b", b)],
            ..Default::default()
        },
        Observations::default(),
    ]);
    assert_eq!(moved[0].jobs[0].name, "b");
    assert!(moved[1].jobs.is_empty() && moved[1].services.is_empty());
}

#[test]
fn a_service_on_two_devices_has_a_loop_on_each() {
    // Replicas of one service: 300 requests/s reach the first device, none the second. Each
    // loop follows its own device's load, so the idle replica drifts down to the floor while
    // the loaded one holds what its load needs.
    let mut ctrl = Controller::new(ControlConfig::default());
    let (mut busy, mut idle) = (ServicePlant::new(0.002), ServicePlant::new(0.002));
    let (mut s0, mut s1) = (0.05, 0.5);
    let mut last = Vec::new();
    for _ in 0..100 {
        busy.step(s0, 300.0);
        idle.step(s1, 0.0);
        last = ctrl.tick_devices(&[
            Observations {
                services: vec![busy.obs(s0, 300.0)],
                ..Default::default()
            },
            Observations {
                // No request, no latency sample.
                services: vec![ServiceObs {
                    p99_s: None,
                    ..idle.obs(s1, 0.0)
                }],
                ..Default::default()
            },
        ]);
        s0 = last[0].services[0].share;
        s1 = last[1].services[0].share;
    }
    // 300/s at 2 ms is 0.6 core: 0.3 of a 2-core device, at least.
    assert!(s0 >= 0.3, "loaded replica {s0}: {last:?}");
    assert!(s1 <= 0.05, "idle replica {s1}: {last:?}");
    assert!(last[1].services[0].feed_forward < 1e-9, "{last:?}");
}
