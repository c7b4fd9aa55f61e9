//! The arbiter: turns requested shares into granted ones that fit the device.
//!
//! Capacity is `1 − reserve`. Every tenant keeps a floor (`min_share`, or less when there
//! are so many tenants that the floors alone would not fit), so nobody stops. Then, in order:
//! inference services get what they asked for, scaled down in proportion when together they
//! ask for more than there is; deadline jobs are served least slack first (earliest-deadline
//! first in effect), each getting what it asked for while capacity lasts — scaling all of them
//! down would make all of them late where serving the most urgent first lets the others catch
//! up; best-effort jobs get what is left, as `leftover` says.
//!
//! A deadline job is first granted no more than it can use (its `usable_share`: a step too
//! small to split uses one core, whatever its share); only once every deadline job has had
//! that does the rest of its request come, in the same order, before best-effort jobs. A job
//! behind at all it can use still asks for more: its threads compete for the cores with the
//! best-effort jobs' (training runs in the background), so the less they are granted, the
//! more cores it gets; but that never comes out of another deadline job's share.

use super::{ControlConfig, JobClass, JobDecision, Leftover, ServiceDecision};

/// Grants shares in place; returns the capacity that was divided. The granted shares
/// always sum to at most the capacity.
pub fn arbitrate(
    cfg: &ControlConfig,
    foreign_load: f64,
    services: &mut [ServiceDecision],
    jobs: &mut [JobDecision],
) -> f64 {
    let capacity = capacity(cfg, foreign_load);
    let n = services.len() + jobs.len();
    if n == 0 {
        return capacity;
    }
    let floor = cfg.min_share.min(capacity / n as f64);
    let left = capacity - floor * n as f64;
    let left = grant_services(services, floor, left).max(0.0);
    let left = grant_jobs(jobs, floor, left);
    share_leftover(cfg.leftover, services, jobs, left);
    fit_capacity(services, jobs, capacity);
    capacity
}

/// The share there is to divide: one less the reserve and the foreign load (taken as none
/// when not finite), within `[0, 1]`.
fn capacity(cfg: &ControlConfig, foreign_load: f64) -> f64 {
    let foreign = if foreign_load.is_finite() {
        foreign_load.clamp(0.0, 1.0)
    } else {
        0.0
    };
    (1.0 - cfg.reserve_frac - foreign).clamp(0.0, 1.0)
}

/// Services: each gets the floor plus its above-floor request, all of these scaled together
/// when they do not fit in `left`. Returns what is left (possibly a rounding hair below 0).
fn grant_services(services: &mut [ServiceDecision], floor: f64, mut left: f64) -> f64 {
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
    left
}

/// Jobs: deadline jobs, least slack first (a job with no slack estimate yet comes last), each
/// get the floor plus as much of their above-floor request, up to what they can use, as
/// `left` still holds; then, in the same order, as much of the rest of their requests as is
/// left. Best-effort jobs get the floor. Returns what is left.
fn grant_jobs(jobs: &mut [JobDecision], floor: f64, mut left: f64) -> f64 {
    let mut order: Vec<usize> = (0..jobs.len())
        .filter(|&i| jobs[i].class == JobClass::Deadline)
        .collect();
    order.sort_by(|&a, &b| {
        let key = |i: usize| jobs[i].slack_s.unwrap_or(f64::INFINITY);
        key(a).total_cmp(&key(b))
    });
    for &i in &order {
        let usable = jobs[i].requested.min(jobs[i].usable_share);
        let extra = (usable - floor).max(0.0).min(left);
        jobs[i].share = floor + extra;
        left -= extra;
    }
    for &i in &order {
        let extra = (jobs[i].requested - jobs[i].share).max(0.0).min(left);
        jobs[i].share += extra;
        left -= extra;
    }
    for j in jobs.iter_mut().filter(|j| j.class == JobClass::BestEffort) {
        j.share = floor;
    }
    left
}

/// Hands out what is left as `leftover` says: evenly to the best-effort jobs (if any), or to
/// every tenant in proportion to its share.
fn share_leftover(
    leftover: Leftover,
    services: &mut [ServiceDecision],
    jobs: &mut [JobDecision],
    left: f64,
) {
    let best_effort = jobs
        .iter()
        .filter(|j| j.class == JobClass::BestEffort)
        .count();
    match leftover {
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
}

/// Scales every share down together when rounding pushed their sum over the capacity.
fn fit_capacity(services: &mut [ServiceDecision], jobs: &mut [JobDecision], capacity: f64) {
    let sum: f64 =
        services.iter().map(|s| s.share).sum::<f64>() + jobs.iter().map(|j| j.share).sum::<f64>();
    if sum > capacity {
        let k = capacity / sum;
        services.iter_mut().for_each(|s| s.share *= k);
        jobs.iter_mut().for_each(|j| j.share *= k);
    }
}
