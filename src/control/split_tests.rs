use super::*;

const SETPOINT_S: f64 = 0.020;

/// A replica answering at its capacity (loaded: a p99 over the set point is its queue).
fn replica(price: f64, capacity: Option<f64>, p99_ms: Option<f64>) -> ReplicaObs {
    ReplicaObs {
        price,
        healthy: true,
        capacity_rows_per_s: capacity,
        p99_s: p99_ms.map(|m| m / 1000.0),
        rate_rows_per_s: capacity.unwrap_or(0.0),
    }
}

/// The fractions after `periods` identical periods.
fn settle(obs: &[ReplicaObs], lambda: f64, periods: usize) -> Vec<f64> {
    let mut s = Split::default();
    let mut f = Vec::new();
    for _ in 0..periods {
        f = s.decide(obs, lambda, SETPOINT_S);
    }
    f
}

fn assert_near(got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(want) {
        assert!(
            (g - w).abs() <= tol,
            "got {got:?}, want {want:?} within {tol}"
        );
    }
}

#[test]
fn the_cheaper_replica_takes_every_row_it_can_serve() {
    // The CPU (price 1) can serve 500 rows/s within the SLO; 300 arrive: the GPU gets none.
    let obs = [
        replica(10.0, Some(5000.0), Some(2.0)),
        replica(1.0, Some(500.0), Some(5.0)),
    ];
    assert_near(&settle(&obs, 300.0, 20), &[0.0, 1.0], 1e-4);
}

#[test]
fn the_dearer_replica_takes_the_overflow() {
    // 1,000 rows/s against 300 the CPU can serve: the GPU takes the other 700.
    let obs = [
        replica(10.0, Some(5000.0), Some(2.0)),
        replica(1.0, Some(300.0), Some(5.0)),
    ];
    assert_near(&settle(&obs, 1000.0, 20), &[0.7, 0.3], 1e-3);
}

#[test]
fn past_every_capacity_the_rows_follow_the_capacity_ratio() {
    // 2,000 rows/s against 1,000 + 500: both saturate, 2:1.
    let obs = [
        replica(10.0, Some(1000.0), Some(5.0)),
        replica(1.0, Some(500.0), Some(5.0)),
    ];
    assert_near(&settle(&obs, 2000.0, 30), &[2.0 / 3.0, 1.0 / 3.0], 1e-3);
}

#[test]
fn an_unhealthy_replica_is_cut_at_once_and_comes_back_when_healthy() {
    let mut obs = vec![
        replica(10.0, Some(5000.0), Some(2.0)),
        replica(1.0, Some(300.0), Some(5.0)),
    ];
    let mut s = Split::default();
    for _ in 0..20 {
        s.decide(&obs, 1000.0, SETPOINT_S);
    }
    obs[0].healthy = false;
    assert_eq!(s.decide(&obs, 1000.0, SETPOINT_S), vec![0.0, 1.0]);
    obs[0].healthy = true;
    let mut f = Vec::new();
    for _ in 0..20 {
        f = s.decide(&obs, 1000.0, SETPOINT_S);
    }
    assert_near(&f, &[0.7, 0.3], 1e-3);
    obs[0].healthy = false;
    obs[1].healthy = false;
    assert_eq!(s.decide(&obs, 1000.0, SETPOINT_S), vec![0.0, 0.0]);
}

#[test]
fn a_replica_over_its_setpoint_sheds_rows_to_the_other() {
    // The CPU's capacity estimate says 600 rows/s, but at its share of 500 it answers in 40 ms
    // against a 20 ms set point: its trim shrinks and the GPU takes more.
    let mut s = Split::default();
    let good = [
        replica(10.0, Some(5000.0), Some(2.0)),
        replica(1.0, Some(600.0), Some(5.0)),
    ];
    let mut f = Vec::new();
    for _ in 0..20 {
        f = s.decide(&good, 1000.0, SETPOINT_S);
    }
    assert_near(&f, &[0.4, 0.6], 1e-3);
    let slow = [
        replica(10.0, Some(5000.0), Some(2.0)),
        replica(1.0, Some(600.0), Some(40.0)),
    ];
    let g = s.decide(&slow, 1000.0, SETPOINT_S);
    assert!(
        g[1] < f[1],
        "the slow replica still takes {} (was {})",
        g[1],
        f[1]
    );
    assert!((s.trim(1).unwrap() - 0.5).abs() < 1e-9);
    // Back under the set point, the trim creeps back, a step per period.
    s.decide(&good, 1000.0, SETPOINT_S);
    assert!((s.trim(1).unwrap() - (0.5 + TRIM_STEP)).abs() < 1e-9);
}

#[test]
fn a_replica_not_yet_measured_probes_and_the_first_one_takes_the_rest() {
    let obs = [replica(10.0, None, None), replica(1.0, None, None)];
    let f = settle(&obs, 100.0, 20);
    assert_near(
        &f,
        &[PROBE_FRAC / (1.0 + PROBE_FRAC), 1.0 / (1.0 + PROBE_FRAC)],
        1e-4,
    );
    let obs = [
        replica(10.0, Some(5000.0), Some(2.0)),
        replica(1.0, None, None),
    ];
    assert_near(
        &settle(&obs, 100.0, 20),
        &[1.0 - PROBE_FRAC, PROBE_FRAC],
        1e-4,
    );
}

#[test]
fn with_nothing_arriving_the_cheapest_replica_is_the_one_ready() {
    let obs = [
        replica(10.0, Some(5000.0), None),
        replica(1.0, Some(300.0), None),
    ];
    assert_near(&settle(&obs, 0.0, 20), &[0.0, 1.0], 1e-4);
}

/// A small seeded generator, so that the property below is the same on every run.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[test]
fn on_a_steady_load_the_split_settles_without_oscillating_and_stays_a_distribution() {
    let mut rng = Lcg(18);
    for case in 0..500 {
        let n = 1 + (rng.next() * 4.0) as usize;
        let obs: Vec<ReplicaObs> = (0..n)
            .map(|_| ReplicaObs {
                price: (rng.next() * 4.0).floor(),
                healthy: rng.next() > 0.2,
                capacity_rows_per_s: (rng.next() > 0.2).then(|| rng.next() * 2000.0),
                p99_s: Some(rng.next() * 0.015),
                rate_rows_per_s: rng.next() * 2000.0,
            })
            .collect();
        let lambda = rng.next() * 3000.0;
        let mut s = Split::default();
        let mut prev: Vec<f64> = Vec::new();
        let mut last_step = f64::INFINITY;
        for period in 0..40 {
            let f = s.decide(&obs, lambda, SETPOINT_S);
            let sum: f64 = f.iter().sum();
            let any_healthy = obs.iter().any(|o| o.healthy);
            assert!(
                (any_healthy && (sum - 1.0).abs() < 1e-9) || (!any_healthy && sum == 0.0),
                "case {case} period {period}: {f:?} sums to {sum}"
            );
            for (x, o) in f.iter().zip(&obs) {
                assert!((0.0..=1.0 + 1e-12).contains(x), "case {case}: {f:?}");
                assert!(
                    o.healthy || *x == 0.0,
                    "case {case}: an unhealthy replica got {x}"
                );
            }
            if !prev.is_empty() {
                let step: f64 = f.iter().zip(&prev).map(|(a, b)| (a - b).abs()).sum();
                // Each period's move is at most the previous one's (after the trims settle).
                if period > 25 {
                    assert!(
                        step <= last_step + 1e-12,
                        "case {case} period {period}: {step} after {last_step}"
                    );
                }
                last_step = step;
            }
            prev = f;
        }
        assert!(last_step < 1e-6, "case {case}: still moving by {last_step}");
    }
}

#[test]
fn a_cut_trim_is_not_cut_again_until_the_window_turns_over() {
    // The p99 stays at twice the set point (the window still holds the rows sent before the
    // cut): without a hold the trim is halved every period; with a hold of 4 periods, once
    // per 4.
    let over = [replica(1.0, Some(1000.0), Some(40.0))];
    let mut every = Split::default();
    let mut held = Split::with_hold(4);
    for _ in 0..4 {
        every.decide(&over, 500.0, SETPOINT_S);
        held.decide(&over, 500.0, SETPOINT_S);
    }
    assert!((every.trim(0).unwrap() - 0.0625).abs() < 1e-9, "{every:?}");
    assert!((held.trim(0).unwrap() - 0.5).abs() < 1e-9, "{held:?}");
    held.decide(&over, 500.0, SETPOINT_S);
    assert!((held.trim(0).unwrap() - 0.25).abs() < 1e-9, "{held:?}");
    // Under the set point it grows back every period, hold or not.
    let under = [replica(1.0, Some(1000.0), Some(5.0))];
    held.decide(&under, 500.0, SETPOINT_S);
    assert!((held.trim(0).unwrap() - 0.30).abs() < 1e-9, "{held:?}");
}

#[test]
fn a_replica_slow_because_it_is_sent_few_rows_keeps_its_trim_and_waits_for_more_rows() {
    // The CPU could serve 400 rows/s (a row takes 2 ms of its share), but sent 60 it
    // answers in 40 ms: its rows come too seldom to find its weights in cache. Its trim is
    // kept, and while only 60 rows/s arrive the GPU takes them.
    let gpu = replica(10.0, Some(5000.0), Some(2.0));
    let seldom = ReplicaObs {
        rate_rows_per_s: 60.0,
        ..replica(1.0, Some(400.0), Some(40.0))
    };
    let mut s = Split::default();
    let mut f = Vec::new();
    for _ in 0..20 {
        f = s.decide(&[gpu.clone(), seldom.clone()], 60.0, SETPOINT_S);
    }
    assert_near(&f, &[1.0, 0.0], 1e-4);
    assert_eq!((s.trim(1), s.seldom(1)), (Some(1.0), Some(true)));
    // 1,000 rows/s: more than half its capacity is left for it, so it is filled again, to
    // its whole capacity.
    for _ in 0..20 {
        f = s.decide(&[gpu.clone(), seldom.clone()], 1000.0, SETPOINT_S);
    }
    assert_near(&f, &[0.6, 0.4], 1e-3);
    // Under the set point it is no longer marked; loaded and over it, its trim is cut.
    let within = replica(1.0, Some(400.0), Some(5.0));
    s.decide(&[gpu.clone(), within], 1000.0, SETPOINT_S);
    assert_eq!(s.seldom(1), Some(false));
    let loaded = replica(1.0, Some(400.0), Some(40.0));
    s.decide(&[gpu, loaded], 1000.0, SETPOINT_S);
    assert!((s.trim(1).unwrap() - 0.5).abs() < 1e-9, "{:?}", s.trim(1));
    assert_eq!(s.seldom(1), Some(false));
}

#[test]
fn a_replica_whose_rows_alone_outlast_the_setpoint_is_cut_however_few_it_gets() {
    // Capacity 20 rows/s at a load of 0.8: a row takes 40 ms of its device's time, over the
    // 20 ms set point at any rate. Fewer rows mean fewer late ones: the trim is cut.
    let slow = [ReplicaObs {
        rate_rows_per_s: 1.0,
        ..replica(1.0, Some(20.0), Some(45.0))
    }];
    let mut s = Split::default();
    s.decide(&slow, 100.0, SETPOINT_S);
    assert!((s.trim(0).unwrap() - 0.5).abs() < 1e-9, "{:?}", s.trim(0));
    assert_eq!(s.seldom(0), Some(false));
}
