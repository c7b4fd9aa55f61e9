//! `DELETE /v1/jobs/{id}`: a job that has not ended is cancelled (it checkpoints and ends
//! `cancelled`, keeping its checkpoint); a job that has ended is removed: its directory
//! leaves the state dir, it is no longer listed, and its name is free for a new job.

use crate::util::sync;
use std::path::Path;
use std::sync::{Arc, MutexGuard};
use std::time::SystemTime;

use super::{Job, JobState, Node, NodeError, ServiceSlot, read, state_dir, write};

/// What a DELETE asks for: `?action=cancel` or `?action=remove` pins it, so a retried
/// cancel cannot remove the job it just cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobDeleteAction {
    /// Only cancel; a job that has ended is a conflict.
    Cancel,
    /// Only remove; a job that has not ended is a conflict.
    Remove,
}

/// Why a job was neither cancelled nor removed (409). The API's answer says what to do
/// instead.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DeleteRefusal {
    /// Only a cancel was asked for, and the job has ended.
    #[error("job {name} has already ended ({state:?})")]
    AlreadyEnded {
        /// The job.
        name: String,
        /// How it ended.
        state: JobState,
    },
    /// Only a removal was asked for, and the job has not ended.
    #[error("job {name} has not ended ({state:?})")]
    NotEnded {
        /// The job.
        name: String,
        /// Its state.
        state: JobState,
    },
    /// A service reads the job's checkpoint.
    #[error("job {name} cannot be removed: model {service} is served from its checkpoint")]
    Served {
        /// The job.
        name: String,
        /// The service.
        service: String,
    },
}

/// What `DELETE /v1/jobs?ended_before=T` did: the jobs removed, and the ended ones kept.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PurgeReport {
    /// The time asked for, RFC 3339: jobs that ended before it were to go.
    pub ended_before: String,
    /// Jobs removed, by name, their files with them.
    pub removed: Vec<String>,
    /// Jobs that ended before the time but were kept, and why (a service reads its
    /// checkpoint).
    pub kept: Vec<KeptJob>,
}

/// An ended job a purge kept.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct KeptJob {
    /// The job.
    pub job: String,
    /// Why it was kept.
    pub reason: String,
}

/// What a DELETE did.
#[derive(Clone)]
pub enum JobDeletion {
    /// The job was asked to stop; it is listed until removed.
    Cancelled(Arc<Job>),
    /// The job had ended and is gone, its files with it.
    Removed(Arc<Job>),
}

impl Node {
    /// Cancels job `name` when it has not ended, removes it when it has; `action` limits
    /// the request to one of the two (None: whichever the job's state calls for).
    pub(crate) fn delete_job(
        &self,
        name: &str,
        action: Option<JobDeleteAction>,
    ) -> Result<JobDeletion, NodeError> {
        let job = self.job(name)?;
        let state = job.state();
        match (action, state.is_terminal()) {
            (Some(JobDeleteAction::Cancel), true) => Err(DeleteRefusal::AlreadyEnded {
                name: name.to_string(),
                state,
            }
            .into()),
            (Some(JobDeleteAction::Remove), false) => Err(DeleteRefusal::NotEnded {
                name: name.to_string(),
                state,
            }
            .into()),
            (_, false) => {
                job.request_cancel();
                Ok(JobDeletion::Cancelled(job))
            }
            (_, true) => {
                self.remove_job(&job)?;
                Ok(JobDeletion::Removed(job))
            }
        }
    }

    /// Removes every job that ended before `before` (running jobs are never touched); one
    /// that cannot be removed is kept and said in the report, and the rest still go.
    pub(crate) fn purge_jobs(&self, before: SystemTime) -> PurgeReport {
        let mut jobs: Vec<Arc<Job>> = read(&self.store.jobs).values().cloned().collect();
        jobs.sort_by(|a, b| a.name.cmp(&b.name));
        let mut report = PurgeReport {
            ended_before: crate::config::format_rfc3339(before),
            removed: Vec::new(),
            kept: Vec::new(),
        };
        for job in jobs {
            let ended_at = job.progress().finished_at;
            if !job.state().is_terminal() || ended_at.is_none_or(|t| t >= before) {
                continue;
            }
            match self.remove_job(&job) {
                Ok(()) => report.removed.push(job.name.clone()),
                Err(e) => report.kept.push(KeptJob {
                    job: job.name.clone(),
                    reason: e.to_string(),
                }),
            }
        }
        if !report.removed.is_empty() {
            tracing::info!(
                removed = report.removed.len(),
                kept = report.kept.len(),
                ended_before = %report.ended_before,
                "ended jobs purged"
            );
        }
        report
    }

    /// Held while a job's directory may be read, written or removed from the API.
    pub(super) fn lock_job_files(&self) -> MutexGuard<'_, ()> {
        sync::lock(&self.store.files)
    }

    /// Removes an ended job: refused while a service reads its checkpoint. Its directory
    /// is renamed out of `jobs/` first (a crash from then on never restores it) and then
    /// deleted; the name is free once this returns.
    fn remove_job(&self, job: &Arc<Job>) -> Result<(), NodeError> {
        let name = &job.name;
        let _files = self.lock_job_files();
        if let Some(service) = self.service_reading(job.dir()) {
            return Err(DeleteRefusal::Served {
                name: name.clone(),
                service,
            }
            .into());
        }
        // An ended job's thread has recorded its outcome and is returning: let it, so that
        // nothing of it touches a directory that is gone, or a new job's of the name.
        job.join();
        let retired = {
            let mut jobs = write(&self.store.jobs);
            if !jobs.get(name).is_some_and(|j| Arc::ptr_eq(j, job)) {
                return Err(NodeError::NotFound(format!("unknown job {name}")));
            }
            let retired = state_dir::retire(&self.state_dir, job.dir()).map_err(|e| {
                NodeError::Internal(format!(
                    "cannot remove job {name}: moving {} out of the jobs directory failed: \
                     {e}; the job is kept",
                    job.dir().display()
                ))
            })?;
            jobs.remove(name);
            retired
        };
        sync::lock(&self.control).forget_job(name);
        if let Some(path) = retired
            && let Err(e) = state_dir::purge(&path)
        {
            // The job is gone already; what is left is deleted at the next start.
            tracing::warn!(job = %name, "cannot delete {}: {e}; the next start deletes it", path.display());
        }
        tracing::info!(job = %name, "job removed");
        Ok(())
    }

    /// The first service (serving, loading, failed, or being reloaded) whose checkpoint lies
    /// in `dir`.
    fn service_reading(&self, dir: &Path) -> Option<String> {
        let services = read(&self.registry.services);
        let slots = services.iter().map(|(name, slot)| {
            let checkpoint = match slot {
                ServiceSlot::Ready(s) => s.config().checkpoint,
                ServiceSlot::Loading(c) | ServiceSlot::Failed(c, _) => c.checkpoint.clone(),
            };
            (name.clone(), checkpoint)
        });
        let loaders = sync::lock(&self.registry.loaders);
        let pending = loaders
            .iter()
            .map(|(name, (_, c))| (name.clone(), c.checkpoint.clone()));
        slots
            .chain(pending)
            .find(|(_, ckpt)| ckpt.as_deref().is_some_and(|c| inside(c, dir)))
            .map(|(name, _)| name)
    }
}

/// True when `path` lies in `dir`, compared as given and with links resolved (a service's
/// checkpoint may name the job's by another path).
fn inside(path: &Path, dir: &Path) -> bool {
    let real = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    path.starts_with(dir) || real(path).starts_with(real(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_is_inside_its_jobs_directory_by_any_path() {
        let d = tempfile::tempdir().unwrap();
        let job = d.path().join("jobs/j");
        std::fs::create_dir_all(&job).unwrap();
        std::fs::write(job.join("checkpoint.ckpt"), b"x").unwrap();
        assert!(inside(&job.join("checkpoint.ckpt"), &job));
        let roundabout = d.path().join("jobs/../jobs/j/checkpoint.ckpt");
        assert!(inside(&roundabout, &job));
        std::os::unix::fs::symlink(job.join("checkpoint.ckpt"), d.path().join("link")).unwrap();
        assert!(inside(&d.path().join("link"), &job));
        // A sibling whose name starts the same is not inside.
        std::fs::create_dir_all(d.path().join("jobs/j2")).unwrap();
        std::fs::write(d.path().join("jobs/j2/checkpoint.ckpt"), b"x").unwrap();
        assert!(!inside(&d.path().join("jobs/j2/checkpoint.ckpt"), &job));
    }
}
