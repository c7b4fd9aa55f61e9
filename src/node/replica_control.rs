//! The control tick's part for services: each replica observed on its own device (where
//! the arbiter gives it a share and a batch size like any service), and the split of a
//! service's rows between its replicas decided from what they measured
//! ([`crate::control::split`]).

use std::collections::HashMap;
use std::sync::Arc;

use super::control::{ControlState, Prev, Round, ServiceMeasure, TenantKey, TickClock};
use super::{DeviceId, LoadedService, Node, Replica};
use crate::config::ServiceConfig;
use crate::control::ServiceObs;
use crate::control::admission::uncommitted_but;
use crate::control::inference::{
    ServiceTimeModel, batch_totals, batched_cost, device_speed, largest_batch,
};
use crate::control::replica_cost::CostEstimate;
use crate::control::split::{LOAD_TARGET, ReplicaObs, Split};

/// The price of a device's share in the split: the CPU is filled before a GPU, whose
/// share is what the node spends on its tenants.
fn price(gpu: bool) -> f64 {
    if gpu { 10.0 } else { 1.0 }
}

/// What the split remembers between periods.
#[derive(Default)]
pub(crate) struct SplitState {
    /// Per service: the split's memory.
    splits: HashMap<String, Split>,
    /// Per replica (service, index): its cost per row, device-seconds (core-seconds on the
    /// CPU), estimated over the periods.
    costs: HashMap<(String, usize), CostEstimate>,
    /// Per replica: its batches' time by size, learned as the controller learns a service's.
    models: HashMap<(String, usize), ServiceTimeModel>,
    /// Per replica: the requests waiting at the last tick (the rows it had answered are in
    /// the control state's `prev`).
    queued: HashMap<(String, usize), usize>,
    /// Per service: the split decided at the last tick, for the decision log.
    pub(crate) last: HashMap<String, Vec<f64>>,
}

/// One replica over the last period.
struct ReplicaPeriod {
    rows: u64,
    /// Rows per second answered.
    rate: f64,
    core_s: f64,
    stalled: bool,
    /// What a row would cost in the largest batch the SLO allows (the batch the replica
    /// reaches once a backlog forms) over what it cost in this period's batches, at most 1:
    /// the capacity is priced at that batch, so that it does not swing with the load's.
    batched: f64,
    /// p99 of its latency window, seconds; None without samples.
    p99_s: Option<f64>,
}

impl Node {
    /// Observes service `svc`: its measure over every replica, and each replica as a
    /// service on its device; then decides its split when it has more than one replica.
    pub(super) fn observe_service(
        &self,
        st: &mut ControlState,
        clock: &TickClock,
        round: &mut Round,
        svc: Arc<LoadedService>,
    ) {
        let name = svc.name().to_string();
        let arrivals = svc.arrivals();
        // Every replica's statistics merged once: rows and requests answered.
        let stats = svc.stats();
        let success = stats.success_rows;
        let key = TenantKey::Service(name.clone());
        let now = Prev {
            arrivals,
            steps: success,
            core_s: 0.0,
        };
        // A service seen for the first time starts counting now: what it did before (a
        // warm-up, a load test before the loop started) is not this period's load.
        let prev = st.prev.insert(key, now).unwrap_or(now);
        let measure = ServiceMeasure {
            window: svc.window_stats(),
            arrival_rate: arrivals.saturating_sub(prev.arrivals) as f64 / clock.period_s,
            throughput: success.saturating_sub(prev.steps) as f64 / clock.period_s,
        };
        st.measures.insert(name.clone(), measure.clone());
        let config = svc.config();
        let mut obs = Vec::with_capacity(svc.replicas().len());
        for (i, r) in svc.replicas().iter().enumerate() {
            let period = self.observe_replica(st, clock, round, (&svc, &config), i);
            obs.push(self.replica_obs(st, &name, i, r, period));
        }
        if obs.len() > 1 {
            let requests = stats.success_count;
            let rows_per_request = if requests > 0 {
                (success as f64 / requests as f64).max(1.0)
            } else {
                1.0
            };
            let lambda = measure.arrival_rate * rows_per_request;
            // The replicas' latency is held to the set point each service's loop aims at
            // (a fraction of the SLO), so that their merged p99 stays within the SLO.
            let setpoint_s =
                st.controller.config().latency_setpoint_frac * config.slo.p99_ms / 1000.0;
            // The trim's cut holds while the SLO window holds the latency it reacted to.
            let window_s = config.slo.window_ms as f64 / 1000.0;
            let hold = (window_s / clock.period_s.max(1e-3)).ceil().clamp(0.0, 1e4) as u32;
            let split = st
                .split
                .splits
                .entry(name.clone())
                .or_insert_with(|| Split::with_hold(hold));
            let fractions = split.decide(&obs, lambda, setpoint_s);
            for (i, o) in obs.iter().enumerate() {
                let planned = match (o.healthy, o.capacity_rows_per_s) {
                    (true, Some(c)) => Some(c * split.trim(i).unwrap_or(1.0)),
                    _ => None,
                };
                svc.replicas()[i].set_capacity(planned, setpoint_s);
                svc.replicas()[i].set_seldom(split.seldom(i).unwrap_or(false));
            }
            svc.set_split(&fractions);
            st.split.last.insert(name, fractions);
        }
    }

    /// Observes replica `i` of `svc` as a service on its device (unless the device failed:
    /// its lane keeps its share and it is left out of the decisions) and returns what it
    /// did over the period.
    fn observe_replica(
        &self,
        st: &mut ControlState,
        clock: &TickClock,
        round: &mut Round,
        (svc, config): (&Arc<LoadedService>, &ServiceConfig),
        i: usize,
    ) -> Option<ReplicaPeriod> {
        let r = &svc.replicas()[i];
        let d = r.device;
        let usage = r.lane.usage();
        let arrivals = r.batcher.arrivals();
        let rows = r.batcher.stats().success_rows;
        let queue_len = r.batcher.queue_len();
        let key = TenantKey::Replica(svc.name().to_string(), i);
        let now = Prev {
            arrivals,
            steps: rows,
            core_s: usage.core_s,
        };
        let prev = st.prev.insert(key, now).unwrap_or(now);
        let queued_before = st
            .split
            .queued
            .insert((svc.name().to_string(), i), queue_len)
            .unwrap_or_default();
        let rows_now = rows.saturating_sub(prev.steps);
        let core_s = (usage.core_s - prev.core_s).max(0.0);
        let rate = rows_now as f64 / clock.period_s;
        r.set_rate(rate);
        round.used_core_s[d.index()] += core_s;
        if self.device_failed(d) {
            return None;
        }
        let window = r.batcher.window_stats();
        let batches = r.batcher.take_batch_log();
        let calibration = r.batcher.take_calibration();
        let model = st
            .split
            .models
            .entry((svc.name().to_string(), i))
            .or_default();
        let speed = device_speed(self.service_max_share(d), self.capacity_of(d));
        let batched = batched_factor(model, &calibration, &batches, config, speed);
        let period = ReplicaPeriod {
            rows: rows_now,
            rate,
            core_s,
            stalled: queued_before > 0 && queue_len > 0 && rows == prev.steps,
            batched,
            p99_s: (window.count > 0).then_some(window.total.p99),
        };
        round.obs[d.index()].services.push(ServiceObs {
            name: svc.name().to_string(),
            slo_s: config.slo.p99_ms / 1000.0,
            p99_s: period.p99_s,
            arrival_rate: arrivals.saturating_sub(prev.arrivals) as f64 / clock.period_s,
            queue_len,
            batches,
            calibration,
            batch_limit: config.batching.max_batch_size,
            share: r.lane.share(),
            // On the CPU one batcher thread can use one core at most; a GPU lane all of it.
            max_share: self.service_max_share(d),
            cores: self.capacity_of(d),
        });
        round.services[d.index()].push((svc.clone(), i));
        Some(period)
    }

    /// Replica `i` of service `name` as the split sees it: its price, whether it answers,
    /// the rows per second it could serve at the share it may have, and its latency.
    fn replica_obs(
        &self,
        st: &mut ControlState,
        name: &str,
        i: usize,
        r: &Replica,
        period: Option<ReplicaPeriod>,
    ) -> ReplicaObs {
        let d: DeviceId = r.device;
        let key = (name.to_string(), i);
        let healthy = r.is_up() && period.as_ref().is_some_and(|p| !p.stalled);
        let rate = period.as_ref().map_or(0.0, |p| p.rate);
        if let Some(p) = period.as_ref() {
            let cost = (p.rows > 0 && p.core_s > 0.0).then(|| p.core_s / p.rows as f64 * p.batched);
            st.split
                .costs
                .entry(key.clone())
                .or_default()
                .observe(cost, rate);
        }
        let budget = self.service_max_share(d) * self.capacity_of(d);
        let cost = st.split.costs.get(&key).and_then(CostEstimate::cost);
        ReplicaObs {
            price: price(self.placement(d).is_gpu()),
            healthy,
            capacity_rows_per_s: cost.map(|c| LOAD_TARGET * budget / c),
            p99_s: period.and_then(|p| p.p99_s),
            rate_rows_per_s: rate,
        }
    }
}

impl Node {
    /// The last decisions on device `d` as admission weighs them: a service with replicas
    /// elsewhere keeps on `d` only the share for the rows its other replicas could not take
    /// (their capacity within the SLO less what they serve now), so a deadline job can be
    /// admitted on a GPU because the service can overflow to the CPU. A replica whose
    /// capacity is not measured yet counts for nothing.
    pub(super) fn admission_decisions(&self, d: DeviceId) -> crate::control::Decisions {
        let mut last = self.last_decisions_of(d);
        let services = self.ready_services();
        let st = crate::util::sync::lock(&self.control);
        for dec in &mut last.services {
            let Some(svc) = services.iter().find(|s| s.name() == dec.name) else {
                continue;
            };
            let Some(here) = svc.replicas().iter().position(|r| r.device == d) else {
                continue;
            };
            let spare: f64 = svc
                .replicas()
                .iter()
                .enumerate()
                .filter(|&(i, r)| i != here && r.is_up())
                .filter_map(|(i, r)| {
                    let cap = r.capacity()?;
                    let cost = st.split.costs.get(&(svc.name().to_string(), i))?.cost()?;
                    // What the replica's device has left once its other tenants' commitments
                    // are met, in rows per second at this replica's cost.
                    let there = st.per_device.get(r.device.index())?;
                    let free = uncommitted_but(st.controller.config(), there, svc.name());
                    let room = free * self.capacity_of(r.device) / cost;
                    Some(spare_rows(cap, LOAD_TARGET * room, r.rate()))
                })
                .sum();
            dec.requested *= kept(svc.replicas()[here].rate(), spare);
        }
        last
    }
}

/// Feeds a replica's batches to its time `model` and returns [`ReplicaPeriod::batched`]:
/// the predicted time per row at the largest batch the SLO allows over the time per row of
/// this period's batches (1 without batches). `speed` is the device's relative to a core
/// ([`crate::control::inference::device_speed`]).
fn batched_factor(
    model: &mut ServiceTimeModel,
    calibration: &[(usize, f64)],
    batches: &[(usize, f64)],
    config: &ServiceConfig,
    speed: f64,
) -> f64 {
    for &(b, t) in calibration.iter().chain(batches) {
        model.observe(b, t);
    }
    let (rows, secs) = batch_totals(batches);
    let b_cap = largest_batch(
        model,
        config.batching.max_batch_size,
        config.slo.p99_ms / 1000.0 * speed,
    );
    match batched_cost(model, b_cap) {
        Some(at_cap) if rows > 0 && secs > 0.0 => (at_cap / (secs / rows as f64)).clamp(0.01, 1.0),
        _ => 1.0,
    }
}

/// Rows per second a replica could still take: up to its capacity within the SLO, and no
/// more than the `room` its device's other tenants leave it, less the `rate` it serves now.
fn spare_rows(capacity: f64, room: f64, rate: f64) -> f64 {
    (capacity.min(room) - rate).max(0.0)
}

/// The part of a replica's share admission keeps committed when it serves `rate` rows per
/// second and its service's other replicas could take `spare` more within the SLO.
fn kept(rate: f64, spare: f64) -> f64 {
    if rate > 0.0 {
        ((rate - spare) / rate).clamp(0.0, 1.0)
    } else if spare > 0.0 {
        0.0
    } else {
        1.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admission_keeps_only_the_share_for_rows_the_other_replicas_cannot_take() {
        assert_eq!(kept(1000.0, 0.0), 1.0, "no spare elsewhere: all of it");
        assert_eq!(kept(1000.0, 250.0), 0.75);
        assert_eq!(kept(1000.0, 4000.0), 0.0, "the others could take every row");
        assert_eq!(kept(0.0, 10.0), 0.0, "idle here, room elsewhere");
        assert_eq!(kept(0.0, 0.0), 1.0, "nothing known: as committed");
    }

    #[test]
    fn a_replica_spares_no_more_than_its_device_leaves_it() {
        assert_eq!(
            spare_rows(1000.0, 5000.0, 200.0),
            800.0,
            "its capacity binds"
        );
        assert_eq!(
            spare_rows(1000.0, 300.0, 200.0),
            100.0,
            "the device's room binds"
        );
        assert_eq!(
            spare_rows(1000.0, 100.0, 200.0),
            0.0,
            "no room: nothing spare"
        );
        let service = |name: &str, requested: f64| crate::control::ServiceDecision {
            name: name.into(),
            requested,
            share: requested,
            batch_size: 1,
            setpoint_s: 0.01,
            p99_s: None,
            feed_forward: 0.0,
            cost_per_request_s: None,
        };
        let d = crate::control::Decisions {
            capacity: 0.95,
            services: vec![service("mlp", 0.3), service("other", 0.2)],
            ..Default::default()
        };
        let cfg = crate::control::ControlConfig::default();
        assert!((uncommitted_but(&cfg, &d, "mlp") - 0.75).abs() < 1e-12);
    }

    #[test]
    fn the_cpu_is_filled_before_a_gpu() {
        assert!(price(false) < price(true));
    }
}
