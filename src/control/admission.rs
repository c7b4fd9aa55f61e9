//! Admission: a deadline job that cannot finish in time on what the device's tenants leave it
//! (now, or as the running deadline jobs finish: see [`super::forecast`]) is refused at
//! submission, with the reason and the earliest deadline it could meet.

use super::{ControlConfig, Decisions, JobClass, JobDecision};

/// A job asking to be admitted.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// Name.
    pub name: String,
    /// Processor core-seconds its whole run needs (steps × measured cost per step).
    pub work_core_s: f64,
    /// Seconds from now to its deadline.
    pub deadline_in_s: f64,
    /// What the device can do per second at share 1, in cores (CTAs on a GPU).
    pub cores: f64,
    /// The most cores its steps can use at once, when known (see
    /// [`super::JobObs::width`]): a narrower job cannot go faster with more share.
    pub width: Option<f64>,
}

impl Candidate {
    /// The most share its steps can use.
    fn usable_share(&self) -> f64 {
        usable_share(self.width, self.cores)
    }
}

/// The most share a job whose steps can use `width` cores at once can use of a device of
/// `cores`: `width / cores`, at most 1; all of it when the width is not known.
pub(crate) fn usable_share(width: Option<f64>, cores: f64) -> f64 {
    match width {
        Some(w) if w.is_finite() && w > 0.0 => (w / positive(cores)).min(1.0),
        _ => 1.0,
    }
}

/// Why a job was refused.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    /// What does not fit, in words.
    pub reason: String,
    /// The earliest deadline, in seconds from now, the job could meet as the node is now;
    /// `None` when none: what the tenants hold for good (services) leaves it nothing.
    pub earliest_deadline_in_s: Option<f64>,
}

/// `x` when it is a positive number, else 1 (a device offers something).
pub(crate) fn positive(x: f64) -> f64 {
    if x.is_finite() && x > 0.0 { x } else { 1.0 }
}

/// Capacity committed to tenants that must be served, by the last decisions: services at
/// what they asked for, deadline jobs at the share their required rate needs (not their
/// request of the moment, which a loop catching up or settling pushes up and down),
/// best-effort jobs at nothing; only the tenants `counted` accepts (by name) are counted.
fn committed(last: &Decisions, counted: &dyn Fn(&str) -> bool) -> (f64, f64) {
    let services: f64 = last
        .services
        .iter()
        .filter(|s| counted(&s.name))
        .map(|s| s.requested)
        .sum();
    let jobs: f64 = last
        .jobs
        .iter()
        .filter(|j| j.class == JobClass::Deadline && counted(&j.name))
        .map(job_need)
        .sum();
    (services, jobs)
}

/// The device's capacity to hand out: all of it less the reserve and other processes' load.
fn capacity(cfg: &ControlConfig, last: &Decisions) -> f64 {
    (1.0 - cfg.reserve_frac - foreign(last)).clamp(0.0, 1.0)
}

/// Other processes' load on the device, as the last decisions saw it.
fn foreign(last: &Decisions) -> f64 {
    if last.foreign_load.is_finite() {
        last.foreign_load.clamp(0.0, 1.0)
    } else {
        0.0
    }
}

/// The share of a device its last decisions leave uncommitted, service `name`'s own
/// commitment not counted: what that service could still be given there.
pub(crate) fn uncommitted_but(cfg: &ControlConfig, last: &Decisions, name: &str) -> f64 {
    uncommitted_where(cfg, last, &|n| n != name)
}

/// The share of a device its last decisions leave uncommitted, counting only the tenants
/// `counted` accepts (by name).
pub(crate) fn uncommitted_where(
    cfg: &ControlConfig,
    last: &Decisions,
    counted: &dyn Fn(&str) -> bool,
) -> f64 {
    let (svc, jobs) = committed(last, counted);
    (capacity(cfg, last) - svc - jobs).max(0.0)
}

/// The share a deadline job needs to keep its required rate, when both are known.
pub(super) fn job_need(j: &JobDecision) -> f64 {
    match (j.required_rate, j.rate_per_share) {
        (Some(req), Some(rps)) if req.is_finite() && rps > 0.0 => (req / rps).min(1.0),
        _ => j.requested,
    }
}

/// Admits `c` when it can finish before its deadline (less the margin the job loop aims at)
/// on what the device's tenants leave it: at once when the share it needs is free now, else
/// when the [`forecast`](super::forecast) has it finish in time on what frees as the running
/// deadline jobs finish. Returns the share it can have now (what it needs, or what is free
/// when that is less).
pub fn admit(cfg: &ControlConfig, last: &Decisions, c: &Candidate) -> Result<f64, Refusal> {
    let foreign = foreign(last);
    let capacity = capacity(cfg, last);
    let (svc, jobs) = committed(last, &|_| true);
    let available = (capacity - svc - jobs).max(0.0);
    let (svc, jobs) = (svc.max(0.0), jobs.max(0.0));
    let cores = positive(c.cores);
    // Aim at the same margin the job loop will aim at.
    let usable_s = c.deadline_in_s - cfg.deadline_margin_s(c.deadline_in_s);
    let needed = if usable_s > 0.0 {
        c.work_core_s / cores / usable_s
    } else {
        f64::INFINITY
    };
    let usable = c.usable_share();
    if needed <= available && needed <= usable {
        return Ok(needed);
    }
    let earliest = earliest_deadline(cfg, last, c, capacity - svc);
    if needed <= usable && earliest.is_some_and(|e| e <= c.deadline_in_s) {
        return Ok(needed.min(available));
    }
    // Only a job narrower than the device is refused for its width; one that needs more
    // than the whole device is refused for the capacity, as any other.
    if usable < 1.0 && needed > usable && needed.is_finite() {
        return Err(Refusal {
            reason: format!(
                "job {} needs {needed:.2} of the device until its deadline in {:.0} s, but its \
                 steps use at most {} of the device's {} cores (each step is too small to \
                 split), so it can use at most {usable:.2}",
                c.name,
                c.deadline_in_s,
                c.width.unwrap_or(1.0),
                positive(c.cores),
            ),
            earliest_deadline_in_s: earliest,
        });
    }
    if c.deadline_in_s <= 0.0 {
        return Err(Refusal {
            reason: format!(
                "job {}'s deadline is in the past ({:.0} s ago)",
                c.name, -c.deadline_in_s
            ),
            earliest_deadline_in_s: earliest,
        });
    }
    Err(Refusal {
        reason: format!(
            "job {} needs {} of the device until its deadline in {:.0} s, but only {:.2} is free \
             (services hold {svc:.2}, deadline jobs {jobs:.2}, reserve {:.2}{}){}",
            c.name,
            if needed.is_finite() {
                format!("{needed:.2}")
            } else {
                "more than all".into()
            },
            c.deadline_in_s,
            available,
            cfg.reserve_frac,
            if foreign > 0.0 {
                format!(", other processes {foreign:.2}")
            } else {
                String::new()
            },
            if jobs > 0.0 && needed <= capacity - svc {
                ", and the deadline jobs finish too late to free the rest in time"
            } else {
                ""
            },
        ),
        earliest_deadline_in_s: earliest,
    })
}

/// The decision the controller would make for `c` once admitted with `share`, its work
/// being `steps` steps: it needs the share that finishes them by its deadline less the
/// margin, and holds it until then. Admission counts it until the controller has decided
/// for the job itself. What admission does not read (the rates measured) is zero.
pub fn reserved(cfg: &ControlConfig, c: &Candidate, steps: u64, share: f64) -> JobDecision {
    let usable_s = c.deadline_in_s - cfg.deadline_margin_s(c.deadline_in_s);
    let busy_s = c.work_core_s / positive(c.cores);
    // Steps a second at the whole device; the required rate finishes them in time.
    let rate_per_share = (busy_s > 0.0).then(|| steps as f64 / busy_s);
    JobDecision {
        name: c.name.clone(),
        class: JobClass::Deadline,
        requested: share,
        share,
        remaining_steps: steps,
        expected_epochs: 0.0,
        required_rate: (usable_s > 0.0).then(|| steps as f64 / usable_s),
        measured_rate: 0.0,
        smoothed_rate: None,
        rate_per_share,
        slack_s: None,
        predicted_finish_in_s: rate_per_share.is_none().then_some(0.0),
        past_deadline: None,
        usable_share: c.usable_share(),
    }
}

/// Earliest deadline the candidate could meet (with the job loop's margin), from the
/// [`forecast`](super::forecast) of what frees in `room` (the capacity less the services) as
/// the running deadline jobs finish; `None` when nothing ever leaves it enough.
fn earliest_deadline(
    cfg: &ControlConfig,
    last: &Decisions,
    c: &Candidate,
    room: f64,
) -> Option<f64> {
    let holds = super::forecast::holds(&last.jobs, job_need);
    let work_s = c.work_core_s / positive(c.cores);
    super::forecast::finish_in_s(room, &holds, work_s, c.usable_share())
        .map(|t| cfg.deadline_keeping_margin_s(t))
}

/// Device memory a job would add to a GPU, against what is free there.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct MemoryCheck {
    /// The device, for messages (`cuda:0`).
    pub device: String,
    /// Bytes the job's buffers took when its step was measured.
    pub need_bytes: u64,
    /// Bytes setpoint may still allocate under its configured limit.
    pub limit_free_bytes: u64,
    /// Bytes in use on the device by every process, and installed, from telemetry (NVML);
    /// `None` when telemetry has no reading.
    pub device_used_total: Option<(u64, u64)>,
}

/// Refuses a job whose buffers would not fit in the device memory free now: under
/// setpoint's limit, and on the device as telemetry sees it (other processes included).
pub(crate) fn check_memory(m: &MemoryCheck) -> Result<(), MemoryRefused> {
    let need_mib = m.need_bytes.div_ceil(1 << 20);
    if m.need_bytes > m.limit_free_bytes {
        return Err(MemoryRefused::OverLimit {
            device: m.device.clone(),
            need_mib,
            free_mib: m.limit_free_bytes >> 20,
        });
    }
    if let Some((used, total)) = m.device_used_total {
        let free = total.saturating_sub(used);
        if m.need_bytes > free {
            return Err(MemoryRefused::DeviceFull {
                device: m.device.clone(),
                need_mib,
                free_mib: free >> 20,
                total_mib: total >> 20,
            });
        }
    }
    Ok(())
}

/// Why a job's buffers do not fit, with the figures.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum MemoryRefused {
    /// More than setpoint's configured limit leaves.
    #[error(
        "its buffers need {need_mib} MiB of device memory on {device}, and setpoint's limit leaves {free_mib} MiB (device.memory_limit_mib)"
    )]
    OverLimit {
        device: String,
        need_mib: u64,
        free_mib: u64,
    },
    /// More than is free on the device, other processes included.
    #[error(
        "its buffers need {need_mib} MiB of device memory on {device}, and only {free_mib} MiB of {total_mib} MiB is free there (other processes included)"
    )]
    DeviceFull {
        device: String,
        need_mib: u64,
        free_mib: u64,
        total_mib: u64,
    },
}

#[cfg(test)]
#[path = "admission_tests.rs"]
mod tests;
