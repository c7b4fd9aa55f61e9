//! The split of a service's rows between replicas, closed around a simulated load: the
//! controller's law ([`setpoint::control::split`]) decides each period from what the
//! replicas measured, the dispatcher ([`setpoint::serve::dispatch`]) routes every row by
//! it, and each replica is a single server whose cost per row is fixed, or rises when its
//! rows come seldom. Seeded arrivals and
//! simulated time make the run the same on every machine: what is tested is the law and the
//! dispatcher together, not the host's speed (the daemon's own replicas are tested in
//! `tests/replicas.rs`). A replica's cost is estimated as the node estimates it
//! ([`setpoint::control::replica_cost`]).

use setpoint::control::replica_cost::CostEstimate;
use setpoint::control::split::{LOAD_TARGET, ReplicaObs, Split};
use setpoint::serve::dispatch::Dispatcher;

const PERIOD_S: f64 = 0.1;
const SLO_S: f64 = 0.020;
/// How far back a cooling server's rate is taken.
const WARM_S: f64 = 0.05;

/// One replica: a FIFO single server.
struct Server {
    /// Seconds of work per row (when warm).
    cost_s: f64,
    /// A row's cost when its rows come seldom, and the rate at which it is halfway between:
    /// at `r` rows/s over the last [`WARM_S`] a row costs
    /// `cost + (cold − cost) / (1 + (r/half)^4)`, as a model bigger than the caches does.
    /// None: the same at every rate.
    cold: Option<(f64, f64)>,
    /// When its rows of the last [`WARM_S`] came.
    recent: std::collections::VecDeque<f64>,
    /// When it is next free.
    free_at: f64,
    /// Latencies of the rows answered in the current period.
    latencies: Vec<f64>,
    /// Rows answered over the run.
    rows: u64,
    /// Rows and seconds busy in the current period.
    period_rows: u64,
    period_busy_s: f64,
    estimate: CostEstimate,
    up: bool,
    price: f64,
}

impl Server {
    fn new(cost_s: f64, price: f64) -> Self {
        Server {
            cost_s,
            cold: None,
            recent: std::collections::VecDeque::new(),
            free_at: 0.0,
            latencies: Vec::new(),
            rows: 0,
            period_rows: 0,
            period_busy_s: 0.0,
            estimate: CostEstimate::default(),
            up: true,
            price,
        }
    }

    /// A server whose rows cost `cold_s` each when they come seldom (see [`Server::cold`]),
    /// warm at the start: as if rows had come at `warm_rate` until then.
    fn cooling(cost_s: f64, cold_s: f64, half_rate: f64, warm_rate: f64, price: f64) -> Self {
        let n = (warm_rate * WARM_S) as usize;
        Server {
            cold: Some((cold_s, half_rate)),
            recent: (0..n).map(|i| -(i as f64) / warm_rate).rev().collect(),
            ..Server::new(cost_s, price)
        }
    }

    /// What a row arriving `at` costs.
    fn row_cost(&mut self, at: f64) -> f64 {
        let Some((cold, half)) = self.cold else {
            return self.cost_s;
        };
        while self.recent.front().is_some_and(|&t| t < at - WARM_S) {
            self.recent.pop_front();
        }
        let r = self.recent.len() as f64 / WARM_S;
        self.recent.push_back(at);
        self.cost_s + (cold - self.cost_s) / (1.0 + (r / half).powi(4))
    }

    fn take(&mut self, at: f64) {
        let cost = self.row_cost(at);
        let start = self.free_at.max(at);
        self.free_at = start + cost;
        self.latencies.push(self.free_at - at);
        self.rows += 1;
        self.period_rows += 1;
        self.period_busy_s += cost;
    }

    /// The period's end: its cost is measured, as the node measures a replica's.
    fn observe(&mut self) -> ReplicaObs {
        let rate = self.period_rows as f64 / PERIOD_S;
        let cost = (self.period_rows > 0).then(|| self.period_busy_s / self.period_rows as f64);
        self.estimate.observe(cost, rate);
        let p99_s = self.p99();
        self.period_rows = 0;
        self.period_busy_s = 0.0;
        self.latencies.clear();
        ReplicaObs {
            price: self.price,
            healthy: self.up,
            capacity_rows_per_s: self.estimate.cost().map(|c| LOAD_TARGET / c),
            p99_s,
            rate_rows_per_s: rate,
        }
    }

    fn p99(&mut self) -> Option<f64> {
        p99(&mut self.latencies)
    }
}

/// The nearest-rank 99th percentile of `v` (sorted in place); None when empty.
fn p99(v: &mut [f64]) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    let rank = ((0.99 * v.len() as f64).ceil() as usize).max(1);
    v.get(rank - 1).copied()
}

/// What one run measured: per period, the p99 over every row answered in it and the rows
/// each replica took in it; and the rows each replica took over the run.
struct Run {
    p99_by_period: Vec<f64>,
    rows_by_period: Vec<Vec<u64>>,
    rows: Vec<u64>,
    fractions: Vec<f64>,
}

/// Poisson arrivals at `rate` rows/s for `periods` periods over `servers`, split by the
/// law when `split` is on, else all to the first server.
fn run(servers: &mut [Server], rate: f64, periods: usize, split: bool, seed: u64) -> Run {
    run_phases(servers, &[(periods, rate)], split, seed)
}

/// As [`run`], with the arrival rate changing by phase: `(periods, rows/s)` each.
fn run_phases(servers: &mut [Server], phases: &[(usize, f64)], split: bool, seed: u64) -> Run {
    let mut rng = seed;
    let mut uniform = move || {
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((rng >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    let dispatch = Dispatcher::new(servers.len());
    let mut law = Split::default();
    let mut t = 0.0;
    let mut out = Run {
        p99_by_period: Vec::new(),
        rows_by_period: Vec::new(),
        rows: Vec::new(),
        fractions: Vec::new(),
    };
    let rates = phases.iter().flat_map(|&(n, r)| std::iter::repeat_n(r, n));
    for (p, rate) in rates.enumerate() {
        let end = (p + 1) as f64 * PERIOD_S;
        let mut arrived = 0u64;
        loop {
            t += -uniform().ln() / rate;
            if t >= end {
                t = end;
                break;
            }
            arrived += 1;
            let i = if split {
                dispatch.choose(1).expect("a replica is up")
            } else {
                0
            };
            servers[i].take(t);
        }
        let mut all: Vec<f64> = servers.iter().flat_map(|s| s.latencies.clone()).collect();
        out.p99_by_period.push(p99(&mut all).unwrap_or(0.0));
        out.rows_by_period
            .push(servers.iter().map(|s| s.period_rows).collect());
        let obs: Vec<ReplicaObs> = servers.iter_mut().map(Server::observe).collect();
        let fractions = law.decide(&obs, arrived as f64 / PERIOD_S, SLO_S);
        if split {
            dispatch.set(&fractions);
        }
        out.fractions = fractions;
    }
    out.rows = servers.iter().map(|s| s.rows).collect();
    out
}

/// The worst period's p99 over the last `n` periods.
fn worst_tail(r: &Run, n: usize) -> f64 {
    r.p99_by_period[r.p99_by_period.len() - n..]
        .iter()
        .copied()
        .fold(0.0, f64::max)
}

#[test]
fn two_replicas_hold_the_slo_where_the_fast_one_alone_misses_it() {
    // 1,200 rows/s against a replica that serves 1,000 (1 ms a row): alone, its queue grows
    // without bound. A second replica at 500 rows/s (2 ms a row) takes the overflow.
    let alone = run(&mut [Server::new(0.001, 10.0)], 1200.0, 100, false, 7);
    assert!(
        worst_tail(&alone, 20) > 10.0 * SLO_S,
        "one replica alone: p99 {:.3} s",
        worst_tail(&alone, 20)
    );
    let mut pair = [Server::new(0.001, 10.0), Server::new(0.002, 1.0)];
    let split = run(&mut pair, 1200.0, 100, true, 7);
    let tail = worst_tail(&split, 50);
    assert!(
        tail <= SLO_S,
        "two replicas: worst p99 over the last 50 periods {:.4} s, over the SLO {SLO_S} s; \
         fractions {:?}, rows {:?}",
        tail,
        split.fractions,
        split.rows
    );
}

#[test]
fn the_cheaper_replica_takes_what_it_can_and_the_split_follows_capacity_in_overload() {
    // Under its capacity the cheaper (CPU) replica takes the rows, the dearer (GPU) one
    // only the probe.
    let mut pair = [Server::new(0.0002, 10.0), Server::new(0.002, 1.0)];
    let light = run(&mut pair, 200.0, 60, true, 3);
    assert!(
        light.fractions[1] > 0.85,
        "the cheap replica serves a light load: {:?}",
        light.fractions
    );
    // Past every capacity the rows go in proportion to what each can serve: here 5,000 and
    // 500 rows/s, so 10 : 1 (within the trims' play).
    let mut pair = [Server::new(0.0002, 10.0), Server::new(0.002, 1.0)];
    let heavy = run(&mut pair, 8000.0, 60, true, 3);
    let ratio = heavy.fractions[0] / heavy.fractions[1];
    assert!(
        (6.0..=16.0).contains(&ratio),
        "split {:?}: ratio {ratio:.1}, capacity ratio 10",
        heavy.fractions
    );
}

#[test]
fn a_replica_that_goes_down_gets_no_rows_and_the_other_takes_them() {
    let mut pair = [Server::new(0.001, 1.0), Server::new(0.001, 1.0)];
    let before = run(&mut pair, 1500.0, 30, true, 11);
    assert!(before.rows[1] > 0, "both serve first: {:?}", before.rows);
    pair[1].up = false;
    let rows_down = pair[1].rows;
    // One period to see it: the law cuts it at once.
    let after = run(&mut pair, 900.0, 30, true, 12);
    assert_eq!(after.fractions[1], 0.0, "{:?}", after.fractions);
    // The dispatcher starts on the first replica until the law's first decision, so the
    // down replica took nothing in the second run.
    assert_eq!(after.rows[1], rows_down, "{:?}", after.rows);
}

#[test]
fn after_a_lull_the_cheap_replica_takes_its_rows_again() {
    // The cheap replica's row costs about 2 ms when rows come at 150/s or more (2.7 at
    // 100/s), and up to 30 ms, over the set point, when they come a few a second (its
    // weights out of cache). 300 rows/s arrive, under its capacity of 400; then a lull of
    // 15 for 3 s; then 300 again.
    // The dear replica (a GPU, 0.5 ms a row) should take only what the cheap one serves
    // late.
    let phases = [(40, 300.0), (30, 15.0), (80, 300.0)];
    // The cheap replica is the first, warm: it takes the first period's rows and is
    // measured warm. (Measured first at a probe's rate, or while warming up, it would look
    // dear from the start: the split does not explore a replica's rate beyond the capacity
    // it measured.)
    let mut pair = [
        Server::cooling(0.002, 0.030, 40.0, 300.0, 1.0),
        Server::new(0.0005, 10.0),
    ];
    let r = run_phases(&mut pair, &phases, true, 5);
    let share = |from: usize, to: usize| -> f64 {
        let rows = &r.rows_by_period[from..to];
        let cheap: u64 = rows.iter().map(|p| p[0]).sum();
        let all: u64 = rows.iter().map(|p| p[0] + p[1]).sum();
        cheap as f64 / all.max(1) as f64
    };
    let (before, lull, after) = (share(20, 40), share(50, 70), share(110, 150));
    let shares = format!(
        "cheap replica's share of the rows before {before:.2}, late in the lull {lull:.2}, \
         after {after:.2}; estimate {:?}",
        pair[0].estimate
    );
    assert!(before > 0.85, "{shares}");
    assert!(lull < 0.3, "its rows come too seldom to be fast: {shares}");
    assert!(after > 0.85, "{shares}");
    let tail = worst_tail(&r, 40);
    assert!(
        tail <= SLO_S,
        "worst p99 over the last 40 periods {tail:.4} s"
    );
}
