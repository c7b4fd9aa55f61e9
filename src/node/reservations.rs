//! Deadline jobs admitted that the controller has not decided for yet.
//!
//! Admission weighs a job against its device's last decisions, and a job admitted since is
//! not in them until the next control tick finds it. So each admission leaves here the
//! decision the controller would make for the job (its need until its deadline, see
//! [`crate::control::admission::reserved`]), and the admissions that follow count it, until
//! the device's decisions hold the job or the job is gone (refused after all, removed,
//! ended). An admission holds the ledger's lock from its first look at the decisions to
//! its reservation, so two submissions at once are weighed one after the other.

use crate::control::{Decisions, JobDecision};

use super::DeviceId;

/// A job admitted on a device, as the controller will see it.
#[derive(Debug, Clone)]
pub(super) struct Reserved {
    pub(super) device: DeviceId,
    pub(super) decision: JobDecision,
}

/// Adds the reservations on `device` to its decisions `last`, first dropping from `held`
/// those the decisions hold already (the controller has seen the job) and those whose job
/// `alive` says is gone.
pub(super) fn count_in(
    held: &mut Vec<Reserved>,
    device: DeviceId,
    last: &mut Decisions,
    alive: impl Fn(&str) -> bool,
) {
    held.retain(|r| {
        alive(&r.decision.name)
            && !(r.device == device && last.jobs.iter().any(|j| j.name == r.decision.name))
    });
    last.jobs.extend(
        held.iter()
            .filter(|r| r.device == device)
            .map(|r| r.decision.clone()),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::JobClass;

    fn decision(name: &str) -> JobDecision {
        JobDecision {
            name: name.into(),
            class: JobClass::Deadline,
            requested: 0.3,
            share: 0.3,
            remaining_steps: 100,
            expected_epochs: 1.0,
            required_rate: Some(3.0),
            measured_rate: 0.0,
            smoothed_rate: None,
            rate_per_share: Some(10.0),
            slack_s: None,
            predicted_finish_in_s: None,
            past_deadline: None,
            usable_share: 1.0,
        }
    }

    fn names(d: &Decisions) -> Vec<&str> {
        d.jobs.iter().map(|j| j.name.as_str()).collect()
    }

    #[test]
    fn a_reservation_counts_until_the_controller_sees_the_job_or_it_is_gone() {
        let (gpu0, gpu1) = (DeviceId(0), DeviceId(1));
        let mut held = vec![
            Reserved {
                device: gpu0,
                decision: decision("a"),
            },
            Reserved {
                device: gpu1,
                decision: decision("b"),
            },
            Reserved {
                device: gpu0,
                decision: decision("gone"),
            },
        ];
        // Device 0's decisions know neither `a` nor `gone`; `gone` was refused after all.
        let mut last = Decisions::default();
        count_in(&mut held, gpu0, &mut last, |n| n != "gone");
        assert_eq!(names(&last), ["a"]);
        assert_eq!(held.len(), 2);
        // The controller has decided for `a`: its reservation goes, the decision stays.
        let mut last = Decisions {
            jobs: vec![JobDecision {
                share: 0.5,
                ..decision("a")
            }],
            ..Default::default()
        };
        count_in(&mut held, gpu0, &mut last, |_| true);
        assert_eq!(names(&last), ["a"]);
        assert_eq!(last.jobs[0].share, 0.5);
        // `b` counts on its own device only.
        assert_eq!(held.len(), 1);
        let mut last = Decisions::default();
        count_in(&mut held, gpu1, &mut last, |_| true);
        assert_eq!(names(&last), ["b"]);
    }
}
