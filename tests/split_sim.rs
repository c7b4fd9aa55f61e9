//! The split of a service's rows between replicas, closed around a simulated load: the
//! controller's law ([`setpoint::control::split`]) decides each period from what the
//! replicas measured, the dispatcher ([`setpoint::serve::dispatch`]) routes every row by
//! it, and each replica is a single server with a fixed cost per row. Seeded arrivals and
//! simulated time make the run the same on every machine: what is tested is the law and the
//! dispatcher together, not the host's speed (the daemon's own replicas are tested in
//! `tests/replicas.rs`).

use setpoint::control::split::{ReplicaObs, Split};
use setpoint::serve::dispatch::Dispatcher;

const PERIOD_S: f64 = 0.1;
const SLO_S: f64 = 0.020;
/// The capacity the node plans a replica at, as its load target does.
const LOAD_TARGET: f64 = 0.8;

/// One replica: a FIFO single server.
struct Server {
    /// Seconds of work per row.
    cost_s: f64,
    /// When it is next free.
    free_at: f64,
    /// Latencies of the rows answered in the current period.
    latencies: Vec<f64>,
    /// Rows answered and seconds busy, over the run (its cost as measured).
    rows: u64,
    busy_s: f64,
    up: bool,
    price: f64,
}

impl Server {
    fn new(cost_s: f64, price: f64) -> Self {
        Server {
            cost_s,
            free_at: 0.0,
            latencies: Vec::new(),
            rows: 0,
            busy_s: 0.0,
            up: true,
            price,
        }
    }

    fn take(&mut self, at: f64) {
        let start = self.free_at.max(at);
        self.free_at = start + self.cost_s;
        self.latencies.push(self.free_at - at);
        self.rows += 1;
        self.busy_s += self.cost_s;
    }

    fn p99(&mut self) -> Option<f64> {
        if self.latencies.is_empty() {
            return None;
        }
        self.latencies.sort_by(f64::total_cmp);
        let rank = ((0.99 * self.latencies.len() as f64).ceil() as usize).max(1);
        Some(self.latencies[rank - 1])
    }
}

/// What one run measured: per period, the p99 over every row answered in it; and the rows
/// each replica took.
struct Run {
    p99_by_period: Vec<f64>,
    rows: Vec<u64>,
    fractions: Vec<f64>,
}

/// Poisson arrivals at `rate` rows/s for `periods` periods over `servers`, split by the
/// law when `split` is on, else all to the first server.
fn run(servers: &mut [Server], rate: f64, periods: usize, split: bool, seed: u64) -> Run {
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
        rows: Vec::new(),
        fractions: Vec::new(),
    };
    for p in 0..periods {
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
        all.sort_by(f64::total_cmp);
        let rank = ((0.99 * all.len() as f64).ceil() as usize).max(1);
        out.p99_by_period
            .push(all.get(rank - 1).copied().unwrap_or(0.0));
        let obs: Vec<ReplicaObs> = servers
            .iter_mut()
            .map(|s| ReplicaObs {
                price: s.price,
                healthy: s.up,
                capacity_rows_per_s: (s.rows > 0).then(|| LOAD_TARGET * s.rows as f64 / s.busy_s),
                p99_s: s.p99(),
            })
            .collect();
        let fractions = law.decide(&obs, arrived as f64 / PERIOD_S, SLO_S);
        if split {
            dispatch.set(&fractions);
        }
        out.fractions = fractions;
        for s in servers.iter_mut() {
            s.latencies.clear();
        }
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
