//! The inference service loop: share from feed-forward plus PI on latency, and the batch
//! size limit from a service-time model learned online.

use std::collections::BTreeMap;

use super::{ControlConfig, Pi, ServiceDecision, ServiceObs};

/// How far an error may pull in one period: latency many times the set point is one
/// overload, not a reason to jump to the whole device at once.
const MAX_ERROR: f64 = 3.0;
/// Error used when the window holds no request: drift down slowly.
const IDLE_ERROR: f64 = -0.25;
/// A service's share never drops below its load times this, so its queue stays stable.
const LOAD_FLOOR: f64 = 1.1;
/// A batch's predicted time may take at most this fraction of the SLO.
const BATCH_TIME_FRAC: f64 = 0.5;
/// Weight of a new measurement in the running averages.
const EWMA: f64 = 0.2;

/// Mean service time of batches by size, learned from what the service ran.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServiceTimeModel {
    /// size → (mean seconds, weight).
    per_size: BTreeMap<usize, (f64, f64)>,
}

impl ServiceTimeModel {
    /// Adds one batch of `rows` that took `secs`.
    pub(crate) fn observe(&mut self, rows: usize, secs: f64) {
        if rows == 0 || !secs.is_finite() || secs < 0.0 {
            return;
        }
        let e = self.per_size.entry(rows).or_insert((secs, 0.0));
        e.1 += 1.0;
        let w = (1.0 / e.1).max(EWMA);
        e.0 += w * (secs - e.0);
    }

    /// Predicted seconds for a batch of `rows`: the mean for sizes seen, else a least-squares
    /// line `a + b·rows` through the sizes seen (cost per row alone with only one size).
    pub fn predict(&self, rows: usize) -> Option<f64> {
        if let Some(&(m, _)) = self.per_size.get(&rows) {
            return Some(m);
        }
        let n = self.per_size.len();
        if n == 0 {
            return None;
        }
        if n == 1 {
            let (&b, &(m, _)) = self.per_size.iter().next()?;
            return Some(m / b as f64 * rows as f64);
        }
        let (mut sw, mut sx, mut sy, mut sxx, mut sxy) = (0.0, 0.0, 0.0, 0.0, 0.0);
        for (&b, &(m, w)) in &self.per_size {
            let x = b as f64;
            sw += w;
            sx += w * x;
            sy += w * m;
            sxx += w * x * x;
            sxy += w * x * m;
        }
        let den = sw * sxx - sx * sx;
        if den.abs() < 1e-12 {
            return Some(sy / sw);
        }
        let slope = ((sw * sxy - sx * sy) / den).max(0.0);
        let icept = ((sy - slope * sx) / sw).max(0.0);
        Some(icept + slope * rows as f64)
    }
}

/// One service's memory.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceState {
    /// The PI loop (its output is the correction on top of the feed-forward).
    pub pi: Pi,
    /// Batch service times.
    pub model: ServiceTimeModel,
    /// Running mean of compute seconds per request.
    pub cost_per_request: Option<f64>,
    /// Running mean of arrivals per second.
    pub arrival_rate: f64,
    feed_forward: f64,
}

impl ServiceState {
    /// A fresh state for a service now at `share`.
    pub fn new(_share: f64) -> Self {
        ServiceState {
            pi: Pi::new(0.0),
            model: ServiceTimeModel::default(),
            cost_per_request: None,
            arrival_rate: 0.0,
            feed_forward: 0.0,
        }
    }
}

/// Decides a service's requested share and batch size.
pub(crate) fn decide(
    cfg: &ControlConfig,
    st: &mut ServiceState,
    o: &ServiceObs,
) -> ServiceDecision {
    let cores = super::admission::positive(o.cores);
    let (rows, secs) = batch_totals(&o.batches);
    for &(b, t) in o.calibration.iter().chain(&o.batches) {
        st.model.observe(b, t);
    }
    if rows > 0 {
        let c = secs / rows as f64;
        st.cost_per_request = Some(match st.cost_per_request {
            Some(old) => old + EWMA * (c - old),
            None => c,
        });
    }
    // Arrivals rise at once (a step must be met now) and fall slowly (a lull is not a trend).
    st.arrival_rate = if o.arrival_rate >= st.arrival_rate {
        o.arrival_rate
    } else {
        st.arrival_rate + EWMA * (o.arrival_rate - st.arrival_rate)
    };
    let max_share = o.max_share.clamp(cfg.min_share, 1.0);
    // A request's cost depends on the batch it rides in: under load, batches fill and a row
    // costs a fraction of what it costs alone. The load is priced at the largest batch the
    // latency budget allows (at full speed), which is what the batcher reaches once a
    // backlog forms; the latency loop corrects the rest.
    let b_cap = batch_size(cfg, st, o);
    let batched_cost = batched_cost(&st.model, b_cap);
    let cost = match (st.cost_per_request, batched_cost) {
        (Some(c), Some(b)) => Some(c.min(b)),
        (c, b) => c.or(b),
    };
    let load_share = cost.unwrap_or(0.0) * st.arrival_rate / cores;
    let ff = (load_share / cfg.service_utilisation).min(max_share);
    st.feed_forward = ff;
    let floor = (load_share * LOAD_FLOOR).clamp(cfg.min_share, max_share);
    let setpoint = cfg.latency_setpoint_frac * o.slo_s;
    let e = match o.p99_s {
        Some(p99) if setpoint > 0.0 => ((p99 - setpoint) / setpoint).clamp(-1.0, MAX_ERROR),
        _ => IDLE_ERROR,
    };
    let u = st.pi.step(cfg.service_gains, e, floor - ff, max_share - ff);
    let requested = (ff + u).clamp(floor, max_share);
    ServiceDecision {
        name: o.name.clone(),
        requested,
        share: requested,
        batch_size: b_cap,
        setpoint_s: setpoint,
        p99_s: o.p99_s,
        feed_forward: ff,
        cost_per_request_s: st.cost_per_request,
    }
}

/// The largest batch whose predicted time fits in `BATCH_TIME_FRAC` of the SLO. The share
/// does not slow a batch down once it runs (the lane's credit decides when the next one
/// starts), so the share plays no part here; but a device that offers less than one core
/// (a part of the CPU) does: a batch of `t` seconds occupies it for `t / speed`.
fn batch_size(_cfg: &ControlConfig, st: &ServiceState, o: &ServiceObs) -> usize {
    largest_batch(
        &st.model,
        o.batch_limit,
        o.slo_s * device_speed(o.max_share, o.cores),
    )
}

/// How fast a service's device runs its batcher thread, relative to a core, when the
/// service may have `max_share` of its `cores`: 1, or less on a part of the CPU smaller than
/// one core.
pub(crate) fn device_speed(max_share: f64, cores: f64) -> f64 {
    (max_share * cores).clamp(1e-3, 1.0)
}

/// Rows and seconds of `batches` (rows, seconds) together.
pub(crate) fn batch_totals(batches: &[(usize, f64)]) -> (usize, f64) {
    batches
        .iter()
        .fold((0usize, 0.0f64), |(r, s), &(b, t)| (r + b, s + t))
}

/// Predicted seconds per row in a batch of `rows`, from `model`.
pub(crate) fn batched_cost(model: &ServiceTimeModel, rows: usize) -> Option<f64> {
    let rows = rows.max(1);
    model.predict(rows).map(|t| t / rows as f64)
}

/// The largest batch, at most `limit`, whose time `model` predicts to fit in
/// `BATCH_TIME_FRAC` of `slo_s`: `limit` while nothing is known, 1 when none fits.
pub(crate) fn largest_batch(model: &ServiceTimeModel, limit: usize, slo_s: f64) -> usize {
    let limit = limit.max(1);
    let budget = BATCH_TIME_FRAC * slo_s;
    if model.predict(1).is_none() {
        return limit;
    }
    // Predicted time grows with the batch, so a binary search finds the largest that fits.
    let fits = |b: usize| model.predict(b).is_some_and(|t| t <= budget);
    if !fits(1) {
        return 1;
    }
    let (mut lo, mut hi) = (1, limit);
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        if fits(mid) {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    lo
}

/// Tells the loop what the arbiter granted, so its state follows the actual share
/// (back-calculation: no windup while the arbiter holds it below its request).
pub(crate) fn granted(_cfg: &ControlConfig, st: &mut ServiceState, share: f64) {
    st.pi.u = share - st.feed_forward;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_interpolates_a_line_through_the_sizes_seen() {
        let mut m = ServiceTimeModel::default();
        assert_eq!(m.predict(4), None);
        m.observe(2, 0.003);
        assert!((m.predict(4).unwrap() - 0.006).abs() < 1e-12);
        for _ in 0..20 {
            m.observe(1, 0.002);
            m.observe(8, 0.009);
        }
        // Through (1, 2 ms), (2, 3 ms), (8, 9 ms): about 1 ms + 1 ms per row.
        let p = m.predict(16).unwrap();
        assert!((p - 0.017).abs() < 0.002, "{p}");
        assert_eq!(m.predict(8), Some(0.009));
    }
}
