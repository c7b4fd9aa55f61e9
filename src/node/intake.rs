//! Admitting a job: its name held while it is admitted, its data loaded and a step measured
//! (`admission.rs`), the device and share it gets, and its start.

use std::sync::Arc;
use std::time::SystemTime;

use super::admission::{Measured, load_and_measure};
use super::jobs::{Job, JobEventKind};
use super::reservations::{self, Reserved};
use super::{DeviceId, Node, NodeError, Policy, control_config};
use crate::config::JobConfig;
use crate::util::sync::{self, read, write};

impl Node {
    /// Holds `name` while a job of that name is admitted; a second submission of it meanwhile
    /// is a conflict.
    pub(super) fn take_admission_name(&self, name: &str) -> Result<AdmissionName<'_>, NodeError> {
        let mut names = sync::lock(&self.store.admitting);
        if !names.insert(name.to_string()) {
            return Err(NodeError::Conflict(format!(
                "a job named {name} is being submitted already"
            )));
        }
        Ok(AdmissionName {
            node: self,
            name: name.to_string(),
        })
    }

    /// Accepts a job: loads its data, measures what a step costs, admits it against the
    /// capacity left (a deadline job that cannot make its deadline is refused with the
    /// earliest deadline it could meet), records its spec in the state dir and starts it.
    pub(crate) fn submit_job(self: &Arc<Self>, cfg: JobConfig) -> Result<Arc<Job>, NodeError> {
        self.submit_job_on(cfg, None)
    }

    /// [`Node::submit_job`] on the device named `on` (`cuda:0`, `cpu`), when given: a
    /// cluster scheduler's allocation. The pin is not recorded: after a restart the job goes
    /// where the node places it.
    pub(crate) fn submit_job_on(
        self: &Arc<Self>,
        cfg: JobConfig,
        on: Option<&str>,
    ) -> Result<Arc<Job>, NodeError> {
        self.submit(cfg, on, None)
    }

    /// Takes the names of the config's jobs at the node's start, before their admissions
    /// run on a thread of their own, so that a submission of one of those names meanwhile is
    /// a conflict, as during any admission. [`Node::held_admission_name`] gives each back.
    pub(super) fn hold_admission_names(&self, names: impl IntoIterator<Item = String>) {
        sync::lock(&self.store.admitting).extend(names);
    }

    /// The guard of a name [`Node::hold_admission_names`] took: dropped, it frees the name.
    pub(super) fn held_admission_name(&self, name: &str) -> AdmissionName<'_> {
        AdmissionName {
            node: self,
            name: name.to_string(),
        }
    }

    /// [`Node::submit_job`] of a job whose name `held` holds already.
    pub(super) fn submit_held(
        self: &Arc<Self>,
        cfg: JobConfig,
        held: AdmissionName<'_>,
    ) -> Result<Arc<Job>, NodeError> {
        self.submit(cfg, None, Some(held))
    }

    fn submit(
        self: &Arc<Self>,
        cfg: JobConfig,
        on: Option<&str>,
        held: Option<AdmissionName<'_>>,
    ) -> Result<Arc<Job>, NodeError> {
        if self.is_shutting_down() {
            return Err(NodeError::Unavailable("the node is shutting down".into()));
        }
        if read(&self.store.jobs).contains_key(&cfg.name) {
            return Err(job_exists(&cfg.name));
        }
        // The name is taken now, for as long as admission takes (it loads the data).
        let _admitting = match held {
            Some(name) => name,
            None => self.take_admission_name(&cfg.name)?,
        };
        for f in crate::config::paths::data_files(&cfg.data) {
            self.confine("data", &f)?;
        }
        let now = SystemTime::now();
        // Devices are tried from the least loaded; the step is measured on the first (the
        // node's GPUs are taken to be alike).
        let order = match on {
            None => self.usable_devices_by_load()?,
            Some(name) => vec![self.usable_device_named(name)?],
        };
        tracing::info!(job = %cfg.name, data = %cfg.data, "loading the job's data for admission");
        let measured = load_and_measure(
            &cfg,
            self.placement(order[0]),
            self.data_load_timeout(),
            || self.is_shutting_down(),
        )?;
        let (device, share) = self.place_job(&cfg, now, &measured, &order)?;
        let step_cost = measured.step_cost_core_s;
        let dir = self.state_dir.join("jobs").join(&cfg.name);
        // Under a policy with shares, training runs below inference; with none, everything
        // runs as it comes, from the first step.
        let lane = self.job_lane(&cfg.name, share, device);
        if let Some(w) = measured.width {
            lane.note_width(w);
        }
        let job = Arc::new(Job::new(
            cfg.clone(),
            dir,
            now,
            lane,
            self.placement(device).clone(),
            Some(step_cost),
        ));
        job.set_checkpoint_timeout_ms(self.config().checkpoint_error_timeout_ms);
        self.enroll_job(&job, now)?;
        job.events().push(JobEventKind::Submitted {
            device: self.placement(device).name(),
            share,
            deadline: job.deadline().map(crate::config::format_rfc3339),
            target_accuracy: job.target(),
            epochs: job.epochs(),
        });
        if let Err(e) = job.start(Some(measured.data)) {
            write(&self.store.jobs).remove(&cfg.name);
            return Err(NodeError::Internal(format!("cannot start job thread: {e}")));
        }
        tracing::info!(
            job = %cfg.name,
            steps_per_epoch = measured.steps_per_epoch,
            step_cost_ms = format_args!("{:.3}", step_cost * 1e3),
            share = format_args!("{share:.3}"),
            "job accepted"
        );
        Ok(job)
    }

    /// The device a job goes to and its share there: the first of `order` with the memory
    /// it needs and, for a deadline job under the controller, the capacity to meet its
    /// deadline. Refused (409) with the earliest deadline it could meet, or why it fits
    /// nowhere.
    pub(super) fn place_job(
        &self,
        cfg: &JobConfig,
        now: SystemTime,
        measured: &Measured,
        order: &[DeviceId],
    ) -> Result<(DeviceId, f64), NodeError> {
        let deadline = if cfg.best_effort {
            None
        } else {
            cfg.deadline.map(|d| d.resolve(now))
        };
        let default_share = self.config().control.reserve_frac.max(0.05);
        // Admission weighs a job against what the controller has committed on a device;
        // under a fixed policy the operator decides what runs.
        let controlled = matches!(self.policy(), Policy::Controller);
        let ctrl = control_config(&self.config());
        let mut no_memory = Vec::new();
        let mut refusal: Option<crate::control::admission::Refusal> = None;
        // Held until this job's reservation is made: admissions are weighed one at a time.
        let mut ledger = sync::lock(&self.store.reserved);
        for &d in order {
            if let Some(need_bytes) = measured.device_bytes
                && let Err(why) = self.memory_fits(d, need_bytes)
            {
                no_memory.push(why);
                continue;
            }
            let Some(deadline) = deadline.filter(|_| controlled) else {
                return Ok((d, default_share));
            };
            let candidate = crate::control::admission::Candidate {
                name: cfg.name.clone(),
                work_core_s: cfg.epochs as f64
                    * measured.steps_per_epoch as f64
                    * measured.step_cost_core_s,
                deadline_in_s: deadline
                    .duration_since(now)
                    .map_or(0.0, |d| d.as_secs_f64()),
                cores: self.capacity_of(d),
                width: measured.width.map(|w| w.workers(self.workers_of(d)) as f64),
            };
            let last = self.decisions_reserved(d, &mut ledger);
            match crate::control::admission::admit(&ctrl, &last, &candidate) {
                Ok(needed) => {
                    let share = needed.max(ctrl.min_share);
                    let steps = cfg.epochs as u64 * measured.steps_per_epoch as u64;
                    ledger.push(Reserved {
                        device: d,
                        decision: crate::control::admission::reserved(
                            &ctrl, &candidate, steps, share,
                        ),
                    });
                    return Ok((d, share));
                }
                Err(r) => {
                    if refusal
                        .as_ref()
                        .is_none_or(|b| earliest_or_never(&r) < earliest_or_never(b))
                    {
                        refusal = Some(r);
                    }
                }
            }
        }
        let Some(refusal) = refusal else {
            return Err(NodeError::Conflict(format!(
                "job {} does not fit: {}",
                cfg.name,
                no_memory
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ")
            )));
        };
        Err(refused(
            &refusal,
            now,
            Advice {
                later: "submit it with that deadline or later, or as best-effort",
                without: "submit it as best-effort, or later",
            },
        ))
    }

    /// Admits a change of a job's deadline as a submission is admitted: a deadline job under
    /// the controller whose new deadline is earlier than the one in force (or that had none,
    /// or whose deadline has passed) is checked against the capacity the other tenants hold,
    /// its own being free for it; its work is the steps it has left for the epochs the
    /// controller expects it to need, at its measured cost per step. Refused (409) with the
    /// earliest deadline it could meet. A later deadline only lowers what the job needs, and a
    /// job whose steps are not known yet (still loading its data) cannot be weighed: both are
    /// admitted.
    pub(super) fn admit_deadline_change(
        &self,
        job: &Job,
        deadline: SystemTime,
    ) -> Result<(), NodeError> {
        let now = SystemTime::now();
        let relaxed = job
            .deadline()
            .is_some_and(|old| old > now && deadline >= old);
        let controlled = matches!(self.policy(), Policy::Controller);
        if job.config.best_effort || job.state().is_terminal() || relaxed || !controlled {
            return Ok(());
        }
        let d = self.device_of(job.lane());
        let cores = self.capacity_of(d);
        let mut ledger = sync::lock(&self.store.reserved);
        let mut last = self.decisions_reserved(d, &mut ledger);
        let own = last
            .jobs
            .iter()
            .position(|j| j.name == job.name)
            .map(|i| last.jobs.remove(i));
        let p = job.progress();
        let remaining = own.as_ref().map_or_else(
            || (job.epochs() as u64 * p.batches_per_epoch as u64).saturating_sub(p.steps),
            |o| o.remaining_steps,
        );
        let cost = own
            .as_ref()
            .and_then(|o| o.rate_per_share)
            .filter(|r| r.is_finite() && *r > 0.0)
            .map(|r| crate::control::admission::positive(cores) / r)
            .or(job.estimated_step_cost());
        let (Some(cost), true) = (cost, p.batches_per_epoch > 0) else {
            return Ok(());
        };
        let candidate = crate::control::admission::Candidate {
            name: job.name.clone(),
            work_core_s: remaining as f64 * cost,
            deadline_in_s: deadline
                .duration_since(now)
                .map_or_else(|e| -e.duration().as_secs_f64(), |d| d.as_secs_f64()),
            cores,
            width: job.lane().width().map(|w| w as f64),
        };
        let ctrl = control_config(&self.config());
        crate::control::admission::admit(&ctrl, &last, &candidate)
            .map(drop)
            .map_err(|r| {
                refused(
                    &r,
                    now,
                    Advice {
                        later: "change it to that deadline or later, or clear it (null) to \
                                run the job as best-effort; it keeps its deadline meanwhile",
                        without: "clear it (null) to run the job as best-effort; it keeps \
                                  its deadline meanwhile",
                    },
                )
            })
    }
}

impl Node {
    /// What admission weighs on device `d`: its last decisions (see
    /// [`Node::admission_decisions`]) with the jobs admitted there that the controller has
    /// not decided for yet, from the ledger `held`.
    pub(super) fn decisions_reserved(
        &self,
        d: DeviceId,
        held: &mut Vec<Reserved>,
    ) -> crate::control::Decisions {
        let mut last = self.admission_decisions(d);
        reservations::count_in(held, d, &mut last, |n| self.job_may_run(n));
        last
    }

    /// Whether job `name` is being admitted, or is on the node and has not ended: whether a
    /// reservation for it may still be needed.
    fn job_may_run(&self, name: &str) -> bool {
        sync::lock(&self.store.admitting).contains(name)
            || read(&self.store.jobs)
                .get(name)
                .is_some_and(|j| !j.state().is_terminal())
    }
}

/// A refusal's earliest deadline, infinite when there is none (for comparing devices).
fn earliest_or_never(r: &crate::control::admission::Refusal) -> f64 {
    r.earliest_deadline_in_s.unwrap_or(f64::INFINITY)
}

/// What a refused job can do instead: `later` with the earliest deadline it can meet, else
/// `without` (there is none while the device is held as it is).
struct Advice {
    later: &'static str,
    without: &'static str,
}

/// The 409 for a deadline admission refused: the reason, the earliest deadline the job could
/// meet (as a time and in seconds from `now`), and what to do.
fn refused(
    refusal: &crate::control::admission::Refusal,
    now: SystemTime,
    advice: Advice,
) -> NodeError {
    let Some(in_s) = refusal.earliest_deadline_in_s else {
        return NodeError::Conflict(format!(
            "{}; no deadline can be met while the services hold what they do: {}",
            refusal.reason, advice.without
        ));
    };
    let earliest = now + std::time::Duration::from_secs_f64(in_s.clamp(0.0, 1e9));
    NodeError::Conflict(format!(
        "{}; the earliest deadline it can meet is {} (in {:.0} s): {}",
        refusal.reason,
        crate::config::format_rfc3339(earliest),
        in_s.ceil(),
        advice.later
    ))
}

/// The refusal of a job whose name is taken.
pub(super) fn job_exists(name: &str) -> NodeError {
    NodeError::Conflict(format!("a job named {name} already exists"))
}

/// A job name held during its admission; given back when dropped.
pub(super) struct AdmissionName<'a> {
    node: &'a Node,
    name: String,
}

impl Drop for AdmissionName<'_> {
    fn drop(&mut self) {
        sync::lock(&self.node.store.admitting).remove(&self.name);
    }
}
