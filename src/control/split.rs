//! The split of a service's rows between its replicas, one decision per control period.
//!
//! A service may run as several replicas, each a lane on its own device (a GPU, the CPU).
//! The law, after ROMA's GPU/CPU dispatch, holds the SLO with the least of the dearest device:
//!
//! 1. **Capacity.** Replica `i` can serve `c_i = trim_i × k_i` rows per second within the
//!    SLO, where `k_i` is what its device could give it (the share it may have × cores ÷ its
//!    measured cost per row, times a load target below 1 so that its queue stays short) and
//!    `trim_i ∈ [TRIM_MIN, 1]` is learned from its latency: each period its p99 is over the
//!    set point, `trim_i ← trim_i × max(½, set point ÷ p99)` (multiplicative decrease); each
//!    period it is under, `trim_i ← min(1, trim_i + TRIM_STEP)` (additive increase). AIMD
//!    settles on a steady load and backs off within a period of a burst. The p99 is taken
//!    over the SLO window, which outlasts a period: after a cut the trim is not cut again
//!    until the window has turned over ([`Split::with_hold`] periods), so that the latency
//!    of rows sent before the cut does not cut it again.
//!
//!    A p99 over the set point cuts the trim only while the replica was loaded, answering
//!    at least [`LOADED_FRAC`] of `k_i`, or when a row alone takes longer than the set point
//!    at its measured cost (`LOAD_TARGET ÷ k_i` of its device's time). Otherwise its queue
//!    is short, and what makes its rows slow is that they come seldom: a model's weights
//!    out of cache, batches of one. Fewer rows would make that worse, and a trim cut for it
//!    would keep the replica at a rate it is slow at after the load has come back. Such a
//!    replica is marked *seldom* instead (its trim kept), until its p99 is under the set
//!    point again. Its cost is estimated so that a lull does not make it look dear either
//!    ([`super::replica_cost`]).
//! 2. **Fill, cheapest first.** The arriving rows `λ` go to the healthy replicas in order of
//!    their device's price (the CPU before a GPU), each up to its capacity: the GPU takes only
//!    what the cheaper replicas cannot serve within the SLO, so its share is not bought for
//!    rows the CPU could answer. Past every capacity, the excess is spread in proportion to
//!    capacity (all replicas saturate together rather than one alone). A replica marked
//!    seldom is passed over while the rows left for it are under [`LOADED_FRAC`] of its
//!    capacity, the rate it would be slow at, and filled as the others once they are more.
//! 3. **Probing.** A healthy replica not yet measured gets [`PROBE_FRAC`] of the rows, so
//!    that its cost is learned; a replica that is not healthy (stopped answering, device
//!    failed) gets nothing until it is healthy again.
//! 4. **Smoothing.** The fractions move halfway to the target each period, so a noisy rate
//!    does not throw rows back and forth; a replica that turns unhealthy is cut at once, and
//!    so is the excess of a replica whose rows at the last fractions would exceed its
//!    capacity (a load step must not queue on the smaller device for several periods).
//!
//! Pure: no clocks, no I/O; the node observes, calls [`Split::decide`] and hands the fractions
//! to the service's dispatcher.

/// Fraction of the rows a healthy replica gets while its capacity is unknown.
pub const PROBE_FRAC: f64 = 0.05;
/// The least a replica's capacity trim goes down to.
pub const TRIM_MIN: f64 = 0.05;
/// How much the trim grows back per period with the latency under the set point.
pub const TRIM_STEP: f64 = 0.05;
/// How far the fractions move toward the target per period.
pub const SMOOTHING: f64 = 0.5;
/// The load a replica's capacity is planned at: below 1, so that its queue stays short.
pub const LOAD_TARGET: f64 = 0.8;
/// A replica answering at least this part of its capacity is loaded: its latency over the
/// set point is then taken to be queueing, and cuts its trim.
pub const LOADED_FRAC: f64 = 0.5;

/// One replica as observed over the last period.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaObs {
    /// What a unit of its device's share costs the node, relative to the others: cheaper
    /// replicas are filled first. Equal prices fill in the order given.
    pub price: f64,
    /// Whether it answers: false once its device failed or its batcher stopped.
    pub healthy: bool,
    /// Rows per second its device could serve for it at the share it may have, before the
    /// latency trim; None until its cost per row has been measured.
    pub capacity_rows_per_s: Option<f64>,
    /// p99 of its requests' latency in the SLO window; None without samples.
    pub p99_s: Option<f64>,
    /// Rows per second it answered over the period.
    pub rate_rows_per_s: f64,
}

/// What a replica's latency over the last period says.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Latency {
    /// No samples.
    Unknown,
    /// Its p99 is within the set point.
    Within,
    /// Its p99 (seconds) is over the set point and fewer rows would make it faster.
    Queueing(f64),
    /// Its p99 is over the set point though it was sent few rows.
    Seldom,
}

impl ReplicaObs {
    fn latency(&self, setpoint_s: f64) -> Latency {
        let Some(p) = self.p99_s else {
            return Latency::Unknown;
        };
        if setpoint_s <= 0.0 || p <= setpoint_s {
            return Latency::Within;
        }
        match self.capacity_rows_per_s {
            Some(k)
                if k > 0.0
                    && self.rate_rows_per_s < LOADED_FRAC * k
                    && LOAD_TARGET / k <= setpoint_s =>
            {
                Latency::Seldom
            }
            _ => Latency::Queueing(p),
        }
    }
}

/// The split's memory between periods, for one service.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Split {
    /// Per replica: the latency trim of its capacity.
    trim: Vec<f64>,
    /// Per replica: the fractions decided last period.
    fractions: Vec<f64>,
    /// Per replica: periods left before its trim may be cut again.
    held: Vec<u32>,
    /// Per replica: over the set point while sent few rows, not yet under it since.
    seldom: Vec<bool>,
    /// Periods a cut holds the trim from the next cut.
    hold: u32,
}

impl Split {
    /// A split whose trims, once cut, are not cut again for `periods` periods (the SLO
    /// window in periods); [`Split::default`] cuts every period.
    pub fn with_hold(periods: u32) -> Self {
        Split {
            hold: periods,
            ..Split::default()
        }
    }

    /// The fractions of the arriving rows each replica takes (summing to 1, or all 0 when no
    /// replica is healthy), from this period's observations, the rows per second arriving
    /// and the latency set point in seconds.
    pub fn decide(
        &mut self,
        obs: &[ReplicaObs],
        arrival_rows_per_s: f64,
        setpoint_s: f64,
    ) -> Vec<f64> {
        self.resize(obs.len());
        for (i, o) in obs.iter().enumerate() {
            self.learn(i, o.latency(setpoint_s), setpoint_s);
        }
        let lambda = arrival_rows_per_s.max(0.0);
        let target = target(obs, &self.trim, &self.seldom, lambda);
        let mut next: Vec<f64> = self
            .fractions
            .iter()
            .zip(&target)
            .zip(obs.iter().zip(&self.trim))
            .map(|((&prev, &t), (o, trim))| {
                let over = o
                    .capacity_rows_per_s
                    .is_some_and(|c| prev * lambda > c * trim);
                if !o.healthy {
                    0.0
                } else if t < prev && over {
                    t
                } else {
                    prev + SMOOTHING * (t - prev)
                }
            })
            .collect();
        normalise(&mut next, &target);
        self.fractions.clone_from(&next);
        next
    }

    /// A replica's capacity trim now.
    pub fn trim(&self, replica: usize) -> Option<f64> {
        self.trim.get(replica).copied()
    }

    /// Whether a replica is marked seldom: passed over while few rows are left for it.
    pub fn seldom(&self, replica: usize) -> Option<bool> {
        self.seldom.get(replica).copied()
    }

    /// Replica `i`'s trim and mark after a period whose latency said `latency`.
    fn learn(&mut self, i: usize, latency: Latency, setpoint_s: f64) {
        let (trim, held) = (&mut self.trim[i], &mut self.held[i]);
        match latency {
            Latency::Unknown => {}
            Latency::Within => {
                *trim = (*trim + TRIM_STEP).min(1.0);
                self.seldom[i] = false;
            }
            Latency::Queueing(p) => {
                if *held == 0 {
                    *trim = (*trim * (setpoint_s / p).max(0.5)).max(TRIM_MIN);
                    *held = self.hold;
                }
                self.seldom[i] = false;
            }
            Latency::Seldom => self.seldom[i] = true,
        }
        *held = held.saturating_sub(1);
    }

    fn resize(&mut self, n: usize) {
        if self.trim.len() != n {
            // A replica added or removed: start over rather than shift the memory.
            self.trim = vec![1.0; n];
            self.fractions = vec![0.0; n];
            self.held = vec![0; n];
            self.seldom = vec![false; n];
        }
    }
}

/// The fractions this period's observations call for, before smoothing.
fn target(obs: &[ReplicaObs], trim: &[f64], seldom: &[bool], lambda: f64) -> Vec<f64> {
    let mut out = vec![0.0; obs.len()];
    let healthy: Vec<usize> = (0..obs.len()).filter(|&i| obs[i].healthy).collect();
    if healthy.is_empty() {
        return out;
    }
    let unmeasured: Vec<usize> = healthy
        .iter()
        .copied()
        .filter(|&i| obs[i].capacity_rows_per_s.is_none())
        .collect();
    if unmeasured.len() == healthy.len() {
        // Nothing measured yet: the cheapest replica takes the rows, the others probe.
        let first = cheapest(obs, &healthy);
        for &i in &healthy {
            out[i] = if i == first { 1.0 } else { PROBE_FRAC };
        }
        normalise_in_place(&mut out);
        return out;
    }
    let probing = PROBE_FRAC * unmeasured.len() as f64;
    for &i in &unmeasured {
        out[i] = PROBE_FRAC;
    }
    let mut measured: Vec<usize> = healthy
        .iter()
        .copied()
        .filter(|&i| obs[i].capacity_rows_per_s.is_some())
        .collect();
    measured.sort_by(|&a, &b| by_price(obs, a, b));
    let cap = |i: usize| obs[i].capacity_rows_per_s.unwrap_or(0.0).max(0.0) * trim[i];
    let left = (1.0 - probing).max(0.0);
    if lambda <= 0.0 {
        // Nothing arriving: the rows to come are few, so a replica marked seldom waits.
        let ready = measured
            .iter()
            .find(|&&i| !seldom[i])
            .unwrap_or(&measured[0]);
        out[*ready] += left;
        return out;
    }
    let mut rows = lambda * left;
    for &i in &measured {
        if seldom[i] && rows < LOADED_FRAC * cap(i) {
            continue;
        }
        let take = rows.min(cap(i));
        out[i] += take / lambda;
        rows -= take;
    }
    if rows > 0.0 {
        let total: f64 = measured.iter().map(|&i| cap(i)).sum();
        for &i in &measured {
            let part = if total > 0.0 {
                cap(i) / total
            } else {
                1.0 / measured.len() as f64
            };
            out[i] += rows * part / lambda;
        }
    }
    out
}

/// The healthy replica with the least price (the first of equals).
fn cheapest(obs: &[ReplicaObs], healthy: &[usize]) -> usize {
    healthy
        .iter()
        .copied()
        .min_by(|&a, &b| by_price(obs, a, b))
        .unwrap_or(0)
}

/// Replicas in the order they are filled: cheaper first, equals in the order given.
fn by_price(obs: &[ReplicaObs], a: usize, b: usize) -> std::cmp::Ordering {
    obs[a].price.total_cmp(&obs[b].price).then(a.cmp(&b))
}

/// Scales `f` to sum to 1; when it sums to 0, takes `fallback` instead.
fn normalise(f: &mut [f64], fallback: &[f64]) {
    if f.iter().sum::<f64>() <= 0.0 {
        f.copy_from_slice(fallback);
    }
    normalise_in_place(f);
}

fn normalise_in_place(f: &mut [f64]) {
    let sum: f64 = f.iter().sum();
    if sum > 0.0 {
        for x in f.iter_mut() {
            *x /= sum;
        }
    }
}

#[cfg(test)]
#[path = "split_tests.rs"]
mod tests;
