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

/// Other processes' load on a device (a fraction of it) and whose capacity it takes.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Foreign {
    /// The load; taken as none when not finite.
    pub load: f64,
    /// It takes what the services leave, not theirs: on the CPU, where services run at
    /// normal priority beside other processes and training in the background (`SCHED_IDLE`)
    /// gets what both leave. On a GPU, other processes' contexts time-slice with all of
    /// setpoint's work, and their load comes off the capacity before anyone's share.
    pub behind_services: bool,
}

impl From<f64> for Foreign {
    fn from(load: f64) -> Foreign {
        Foreign {
            load,
            behind_services: false,
        }
    }
}

/// Grants shares in place; returns the capacity that was divided. The granted shares
/// always sum to at most the capacity: one less the reserve and the foreign load, or, when
/// the foreign load is behind the services, less only the part of it the services left room
/// for.
pub fn arbitrate(
    cfg: &ControlConfig,
    foreign: impl Into<Foreign>,
    services: &mut [ServiceDecision],
    jobs: &mut [JobDecision],
) -> f64 {
    let foreign = foreign.into();
    let load = if foreign.load.is_finite() {
        foreign.load.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let (ahead, behind) = if foreign.behind_services {
        (0.0, load)
    } else {
        (load, 0.0)
    };
    let capacity = (1.0 - cfg.reserve_frac - ahead).clamp(0.0, 1.0);
    let n = services.len() + jobs.len();
    if n == 0 {
        return (capacity - behind).max(0.0);
    }
    let floor = cfg.min_share.min(capacity / n as f64);
    let left = capacity - floor * n as f64;
    let left = grant_services(services, floor, left).max(0.0);
    let taken = behind.min(left);
    let left = grant_jobs(jobs, floor, left - taken);
    share_leftover(cfg.leftover, services, jobs, left);
    fit_capacity(services, jobs, capacity - taken);
    capacity - taken
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

#[cfg(test)]
mod tests {
    use super::*;

    fn service(requested: f64) -> ServiceDecision {
        ServiceDecision {
            name: "svc".into(),
            requested,
            share: requested,
            batch_size: 1,
            setpoint_s: 0.01,
            p99_s: None,
            feed_forward: requested,
            cost_per_request_s: None,
        }
    }

    fn job(class: JobClass, requested: f64) -> JobDecision {
        JobDecision {
            name: "job".into(),
            class,
            requested,
            share: requested,
            remaining_steps: 100,
            expected_epochs: 1.0,
            required_rate: None,
            measured_rate: 0.0,
            smoothed_rate: None,
            rate_per_share: None,
            slack_s: Some(1.0),
            predicted_finish_in_s: None,
            past_deadline: None,
            usable_share: 1.0,
        }
    }

    #[test]
    fn foreign_load_behind_the_services_takes_from_the_jobs_only() {
        let cfg = ControlConfig::default();
        let grant = |foreign: Foreign| {
            let mut s = [service(0.5)];
            let mut j = [job(JobClass::Deadline, 0.6)];
            let cap = arbitrate(&cfg, foreign, &mut s, &mut j);
            (cap, s[0].share, j[0].share)
        };
        // On a GPU 0.3 of foreign load comes off first: 0.65 for 0.5 + 0.6 asked; the
        // service gets its 0.5, the job what is left.
        let (cap, svc, jb) = grant(Foreign::from(0.3));
        assert!((cap - 0.65).abs() < 1e-12, "{cap}");
        assert!(
            (svc - 0.5).abs() < 1e-12 && (jb - 0.15).abs() < 1e-12,
            "{svc} {jb}"
        );
        // Behind the services, the same: the job keeps what the services and others leave.
        let behind = |load| Foreign {
            load,
            behind_services: true,
        };
        let (cap, svc, jb) = grant(behind(0.3));
        assert!((cap - 0.65).abs() < 1e-12, "{cap}");
        assert!(
            (svc - 0.5).abs() < 1e-12 && (jb - 0.15).abs() < 1e-12,
            "{svc} {jb}"
        );
        // Where the others take more than the services leave, the services keep their 0.5
        // (on a GPU they are cut to 0.35) and the job has its floor.
        let (cap, svc, jb) = grant(behind(0.6));
        assert!((svc - 0.5).abs() < 1e-12, "{svc}");
        assert!((jb - cfg.min_share).abs() < 1e-12, "{jb}");
        assert!((cap - (svc + jb)).abs() < 1e-12, "{cap}");
        let (cap, svc, _) = grant(Foreign::from(0.6));
        assert!((cap - 0.35).abs() < 1e-12 && svc < 0.35, "{cap} {svc}");
    }
}
