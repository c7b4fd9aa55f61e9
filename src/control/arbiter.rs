//! The arbiter: turns requested shares into granted ones that fit the device.
//!
//! Capacity is `1 − reserve`. Every tenant keeps a floor (`min_share`, or less when there
//! are so many tenants that the floors alone would not fit), so nobody stops. Then, in order:
//! inference services get what they asked for, scaled down in proportion when together they
//! ask for more than there is; deadline jobs are served least slack first (earliest-deadline
//! first in effect), each getting what it asked for while capacity lasts — scaling all of them
//! down would make all of them late where serving the most urgent first lets the others catch
//! up; best-effort jobs get what is left, as `leftover` says.

use super::{ControlConfig, JobClass, JobDecision, Leftover, ServiceDecision};

/// Grants shares in place; returns the capacity that was divided. The granted shares
/// always sum to at most the capacity.
pub fn arbitrate(
    cfg: &ControlConfig,
    foreign_load: f64,
    services: &mut [ServiceDecision],
    jobs: &mut [JobDecision],
) -> f64 {
    let foreign = if foreign_load.is_finite() {
        foreign_load.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let capacity = (1.0 - cfg.reserve_frac - foreign).clamp(0.0, 1.0);
    let n = services.len() + jobs.len();
    if n == 0 {
        return capacity;
    }
    let floor = cfg.min_share.min(capacity / n as f64);
    let mut left = capacity - floor * n as f64;

    // Services: above-floor requests, scaled together when they do not fit.
    let want: f64 = services
        .iter()
        .map(|s| (s.requested - floor).max(0.0))
        .sum();
    let scale = if want > left && want > 0.0 {
        left / want
    } else {
        1.0
    };
    for s in services.iter_mut() {
        let extra = (s.requested - floor).max(0.0) * scale;
        s.share = floor + extra;
        left -= extra;
    }
    left = left.max(0.0);

    // Deadline jobs, least slack first; a job with no slack estimate yet comes last.
    let mut order: Vec<usize> = (0..jobs.len())
        .filter(|&i| jobs[i].class == JobClass::Deadline)
        .collect();
    order.sort_by(|&a, &b| {
        let key = |i: usize| jobs[i].slack_s.unwrap_or(f64::INFINITY);
        key(a).total_cmp(&key(b))
    });
    for i in order {
        let extra = (jobs[i].requested - floor).max(0.0).min(left);
        jobs[i].share = floor + extra;
        left -= extra;
    }
    for j in jobs.iter_mut().filter(|j| j.class == JobClass::BestEffort) {
        j.share = floor;
    }

    // What is left.
    let best_effort = jobs
        .iter()
        .filter(|j| j.class == JobClass::BestEffort)
        .count();
    match cfg.leftover {
        Leftover::BestEffort if best_effort > 0 => {
            let each = left / best_effort as f64;
            for j in jobs.iter_mut().filter(|j| j.class == JobClass::BestEffort) {
                j.share += each;
            }
        }
        Leftover::Spread => {
            let total: f64 = services.iter().map(|s| s.share).sum::<f64>()
                + jobs.iter().map(|j| j.share).sum::<f64>();
            if total > 0.0 {
                let k = 1.0 + left / total;
                services.iter_mut().for_each(|s| s.share *= k);
                jobs.iter_mut().for_each(|j| j.share *= k);
            }
        }
        _ => {}
    }
    // Rounding must never push the sum over the capacity.
    let sum: f64 =
        services.iter().map(|s| s.share).sum::<f64>() + jobs.iter().map(|j| j.share).sum::<f64>();
    if sum > capacity {
        let k = capacity / sum;
        services.iter_mut().for_each(|s| s.share *= k);
        jobs.iter_mut().for_each(|j| j.share *= k);
    }
    capacity
}
