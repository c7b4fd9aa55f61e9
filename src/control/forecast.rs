//! Admission's forecast: when a deadline job asking to be admitted would finish on a device,
//! given what the device's tenants hold now and for how long.
//!
//! The law, in shares of the device and seconds from now:
//!
//! - Services hold what they asked for, for good. The room left for jobs is `R`: the
//!   capacity (one less the reserve and other processes' load) less the services.
//! - Each running deadline job *i* holds `sᵢ`, the share its required rate needs (at most the
//!   whole device, as admission counts it), for as long as its remaining steps take at that
//!   share (at most what it can use), `uᵢ`: a job paced to its deadline holds its share until
//!   about its deadline, a job behind holds the whole device until it catches up. A job whose
//!   rate per unit of share is not known yet holds its share until its predicted finish, or for
//!   good when there is none.
//! - Over each stretch between two of those ends the free share is `f = R − Σ sᵢ` over the jobs
//!   still holding. Where it is negative the jobs hold more than there is (one admitted on this
//!   forecast starts below its need): what they are short, `−f · t`, is owed to them, and the
//!   first capacity that frees pays it back before the candidate gets any.
//! - The candidate takes what is free, up to the share its steps can use, until its work
//!   (seconds at the whole device) is done.
//!
//! The floor every tenant keeps (`min_share`) is not counted on: a job admitted on the floor
//! alone would have taken it from the others. The forecast is optimistic only where the
//! tenants change: a service asking for more, a job's rate falling.

use super::{JobClass, JobDecision};

/// A share a running job holds until a time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Hold {
    /// Share of the device.
    pub share: f64,
    /// Until when, seconds from now (infinite: for good).
    pub until_s: f64,
}

/// What the deadline jobs of `jobs` hold and until when (best-effort jobs hold nothing), each
/// holding the share `need` says it needs.
pub(crate) fn holds(jobs: &[JobDecision], need: impl Fn(&JobDecision) -> f64) -> Vec<Hold> {
    jobs.iter()
        .filter(|j| j.class == JobClass::Deadline)
        .map(|j| {
            let share = need(j).max(0.0);
            let runs_at = share.min(j.usable_share);
            let until = match j.rate_per_share {
                Some(rps) if rps.is_finite() && rps > 0.0 && runs_at > 0.0 => {
                    j.remaining_steps as f64 / (runs_at * rps)
                }
                _ => j.predicted_finish_in_s.unwrap_or(f64::INFINITY),
            };
            Hold {
                share,
                until_s: if until.is_nan() {
                    f64::INFINITY
                } else {
                    until.max(0.0)
                },
            }
        })
        .collect()
}

/// Seconds from now until a candidate with `work_s` seconds of work at the whole device
/// finishes, taking what `holds` leave of `room` up to `usable`; `None` when it never does
/// (what is held for good leaves it nothing).
pub(crate) fn finish_in_s(room: f64, holds: &[Hold], work_s: f64, usable: f64) -> Option<f64> {
    let mut ends: Vec<Hold> = holds.to_vec();
    ends.sort_by(|a, b| a.until_s.total_cmp(&b.until_s));
    let mut held: f64 = ends.iter().map(|h| h.share).sum();
    let mut left = Left {
        debt: 0.0,
        work: work_s.max(0.0),
    };
    let mut t = 0.0;
    let last = Hold {
        share: 0.0,
        until_s: f64::INFINITY,
    };
    for end in ends.iter().chain(std::iter::once(&last)) {
        if end.until_s > t {
            if let Some(dt) = left.stretch(room - held, end.until_s - t, usable) {
                return Some(t + dt);
            }
            t = end.until_s;
        }
        if !t.is_finite() {
            return None;
        }
        held -= end.share;
    }
    None
}

/// What is still to be done at a point of the forecast.
struct Left {
    /// Share-seconds the running jobs are owed.
    debt: f64,
    /// The candidate's work, seconds at the whole device.
    work: f64,
}

impl Left {
    /// Runs a stretch of `len` seconds with `free` share: the debt first, then the candidate
    /// at up to `usable`. Returns the seconds into the stretch at which the candidate
    /// finishes, if it does.
    fn stretch(&mut self, free: f64, len: f64, usable: f64) -> Option<f64> {
        if free < 0.0 {
            self.debt += -free * len;
            return None;
        }
        if free == 0.0 {
            return None;
        }
        let paying = self.debt / free;
        if paying >= len {
            self.debt -= free * len;
            return None;
        }
        self.debt = 0.0;
        let rate = free.min(usable);
        if rate <= 0.0 {
            return None;
        }
        let running = self.work / rate;
        if paying + running <= len {
            return Some(paying + running);
        }
        self.work -= rate * (len - paying);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hold(share: f64, until_s: f64) -> Hold {
        Hold { share, until_s }
    }

    /// Asserts a finish within rounding of `want`.
    #[track_caller]
    fn finishes(got: Option<f64>, want: f64) {
        let t = got.unwrap_or_else(|| panic!("never finishes, want {want}"));
        assert!((t - want).abs() < 1e-9, "{t} vs {want}");
    }

    #[test]
    fn the_candidate_takes_what_is_free_as_jobs_finish() {
        // Nothing held: work over the share it can use.
        finishes(finish_in_s(0.8, &[], 4.0, 1.0), 5.0);
        finishes(finish_in_s(0.8, &[], 4.0, 0.5), 8.0);
        // 0.6 of 0.8 held for 10 s: 2 done at 0.2 by then, the last 2 at 0.8.
        finishes(finish_in_s(0.8, &[hold(0.6, 10.0)], 4.0, 1.0), 12.5);
        // Done before the hold ends.
        finishes(finish_in_s(0.8, &[hold(0.6, 10.0)], 1.0, 1.0), 5.0);
        // Two holds ending apart, in either order.
        let two = [hold(0.3, 10.0), hold(0.4, 4.0)];
        // 0.1 free for 4 s (0.4), then 0.5 for 6 s (3.0), then 0.8: 0.6 left takes 0.75 s.
        finishes(finish_in_s(0.8, &two, 4.0, 1.0), 10.75);
    }

    #[test]
    fn what_the_jobs_are_short_is_paid_back_first() {
        // 0.75 of room, held 0.95 for 5 s: the jobs are 1.0 share-second short. From 5 s
        // 0.55 is free (0.2 held till 20 s): the debt takes 1/0.55 s, then the candidate
        // runs at 0.55.
        let holds = [hold(0.75, 5.0), hold(0.2, 20.0)];
        finishes(finish_in_s(0.75, &holds, 1.1, 1.0), 5.0 + 1.0 / 0.55 + 2.0);
        // With room for both there is no debt: it starts at 5 s, at 0.75.
        finishes(finish_in_s(0.95, &holds, 1.1, 1.0), 5.0 + 1.1 / 0.75);
    }

    #[test]
    fn what_is_held_for_good_may_leave_nothing() {
        assert_eq!(
            finish_in_s(0.5, &[hold(0.5, f64::INFINITY)], 1.0, 1.0),
            None
        );
        assert_eq!(finish_in_s(0.0, &[], 1.0, 1.0), None);
        assert_eq!(
            finish_in_s(0.5, &[hold(0.6, f64::INFINITY)], 1.0, 1.0),
            None
        );
        // Held for good but some left: the candidate runs on that.
        finishes(
            finish_in_s(0.5, &[hold(0.25, f64::INFINITY)], 1.0, 1.0),
            4.0,
        );
        // No work: done at once.
        finishes(finish_in_s(0.5, &[], 0.0, 1.0), 0.0);
    }

    #[test]
    fn a_job_holds_its_need_for_as_long_as_its_steps_take_at_it() {
        let job = |required: Option<f64>, rps: Option<f64>, usable: f64| JobDecision {
            name: "j".into(),
            class: JobClass::Deadline,
            requested: 0.3,
            share: 0.3,
            remaining_steps: 1000,
            expected_epochs: 1.0,
            required_rate: required,
            measured_rate: 10.0,
            smoothed_rate: Some(10.0),
            rate_per_share: rps,
            slack_s: None,
            predicted_finish_in_s: Some(77.0),
            past_deadline: None,
            usable_share: usable,
        };
        let need = crate::control::admission::job_need;
        // 10 steps/s needed at 50 steps/s per share: 0.2 for 100 s.
        let h = holds(&[job(Some(10.0), Some(50.0), 1.0)], need);
        assert_eq!(h, vec![hold(0.2, 100.0)]);
        // Behind (needs more than the device): all of it, for as long as that takes.
        let h = holds(&[job(Some(100.0), Some(50.0), 1.0)], need);
        assert_eq!(h, vec![hold(1.0, 20.0)]);
        // ... at what it can use.
        let h = holds(&[job(Some(100.0), Some(50.0), 0.5)], need);
        assert_eq!(h, vec![hold(1.0, 40.0)]);
        // No rate per share yet: its predicted finish.
        let h = holds(&[job(None, None, 1.0)], need);
        assert_eq!(h, vec![hold(0.3, 77.0)]);
        // Best-effort jobs hold nothing.
        let mut be = job(Some(10.0), Some(50.0), 1.0);
        be.class = JobClass::BestEffort;
        assert!(holds(&[be], need).is_empty());
    }
}
