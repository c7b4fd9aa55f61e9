//! The job store: the jobs on the node, their records in the state dir (the spec as
//! accepted, the changes made since), and the changes a user makes.
//!
//! A job's directory holds `job.json` ([`JobRecord`]: its spec and when it was submitted),
//! `changes.json` ([`ChangesRecord`]: what was changed since, when anything was) and, once it
//! has ended, `outcome.json` (see [`super::jobs`]). A restart reads them back
//! ([`super::restore`]).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use serde::{Deserialize, Deserializer, Serialize};

use crate::config::{JobConfig, ServiceConfig, format_rfc3339, parse_rfc3339};
use crate::util::sync::{read, write};

use super::jobs::{Job, JobEventKind};
use super::services::ServiceOrigin;
use super::{Node, NodeError};

/// The jobs on the node.
#[derive(Default)]
pub(super) struct JobStore {
    /// Every job, by name.
    pub(super) jobs: RwLock<BTreeMap<String, Arc<Job>>>,
    /// Names of jobs being admitted (data loading, a step measured): taken at once.
    pub(super) admitting: Mutex<BTreeSet<String>>,
    /// Deadline jobs admitted that the controller has not decided for yet; its lock is
    /// held for a whole admission.
    pub(super) reserved: Mutex<Vec<super::reservations::Reserved>>,
    /// Held while a job's files are removed, and by what reads or records into a job's
    /// directory from the API (a change, a job served, a service from a checkpoint), so
    /// neither finds the directory gone, or another job's, half way.
    pub(super) files: Mutex<()>,
}

/// Name of a job's record in its directory.
pub(crate) const JOB_RECORD: &str = "job.json";
/// Name of the record of a job's changes in its directory.
pub(crate) const CHANGES_RECORD: &str = "changes.json";

/// A job's record: its spec (every field, defaults included) and when it was submitted.
#[derive(Debug, Clone, Serialize)]
pub struct JobRecord {
    /// The spec as accepted.
    pub spec: JobConfig,
    /// RFC 3339.
    pub submitted_at: String,
}

/// A job's record as read back: the spec is validated again (the schema may have changed
/// since it was written).
#[derive(Debug, Deserialize)]
pub(crate) struct StoredJobRecord {
    #[serde(default)]
    pub(crate) spec: serde_json::Value,
    #[serde(default)]
    pub(crate) submitted_at: Option<String>,
}

/// A service added at run time, as recorded in `services/NAME.json`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ServiceRecord<'a> {
    /// Its validated settings.
    pub config: &'a ServiceConfig,
    /// Where its model came from.
    pub origin: &'a ServiceOrigin,
}

/// A service's record as read back.
#[derive(Debug, Deserialize)]
pub(crate) struct StoredServiceRecord {
    #[serde(default)]
    pub(crate) config: serde_json::Value,
    pub(crate) origin: ServiceOrigin,
}

/// Changes to a running job: a key left out (`None`) is left as it is; `Some(None)` clears a
/// deadline or a target.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct JobChanges {
    /// A new deadline, or none.
    pub deadline: Option<Option<SystemTime>>,
    /// A new target validation accuracy, or none.
    pub target_accuracy: Option<Option<f64>>,
    /// A new epoch limit.
    pub epochs: Option<u32>,
}

/// Every change made to a job since it was submitted, the latest of each kind: what a
/// restart applies over its spec. `null` records a cleared deadline or target.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct ChangesRecord {
    /// RFC 3339, or null.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "nullable"
    )]
    pub deadline: Option<Option<String>>,
    /// In (0, 1], or null.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "nullable"
    )]
    pub target_accuracy: Option<Option<f64>>,
    /// The epoch limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epochs: Option<u32>,
}

/// A key that is present, `null` included: `Some(None)` for `null`.
pub(crate) fn nullable<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

impl ChangesRecord {
    /// Adds `changes` over what was recorded.
    fn merge(&mut self, changes: &JobChanges) {
        if let Some(d) = changes.deadline {
            self.deadline = Some(d.map(format_rfc3339));
        }
        if let Some(t) = changes.target_accuracy {
            self.target_accuracy = Some(t);
        }
        if let Some(e) = changes.epochs {
            self.epochs = Some(e);
        }
    }

    /// The changes to apply to a restored job.
    pub(crate) fn changes(&self) -> JobChanges {
        JobChanges {
            deadline: self
                .deadline
                .as_ref()
                .map(|d| d.as_deref().and_then(|t| parse_rfc3339(t).ok())),
            target_accuracy: self.target_accuracy,
            epochs: self.epochs,
        }
    }
}

/// Why a record in the state dir could not be read or written.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StoreError {
    /// The file could not be read or written.
    #[error("{file}: {source}")]
    Io {
        /// Its name.
        file: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not the record it should be.
    #[error("{file}: {message}")]
    Invalid {
        /// Its name.
        file: String,
        /// What is wrong.
        message: String,
    },
}

impl StoreError {
    /// `file` is not the record it should be: `message` says why.
    pub(crate) fn invalid(file: &str, message: impl std::fmt::Display) -> Self {
        StoreError::Invalid {
            file: file.to_string(),
            message: message.to_string(),
        }
    }
}

/// Reads and parses the record `file` of `dir`.
pub(crate) fn read_record<T: serde::de::DeserializeOwned>(
    dir: &Path,
    file: &str,
) -> Result<T, StoreError> {
    let bytes = std::fs::read(dir.join(file)).map_err(|source| StoreError::Io {
        file: file.to_string(),
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|e| StoreError::invalid(file, e))
}

/// Applies `changes` to `job` (not recorded).
pub(crate) fn apply_changes(job: &Job, changes: &JobChanges) {
    if let Some(d) = changes.deadline {
        job.set_deadline(d);
    }
    if let Some(t) = changes.target_accuracy {
        job.set_target(t);
    }
    if let Some(e) = changes.epochs {
        job.set_epochs(e);
    }
}

impl Node {
    /// Lists an admitted job and records its spec in the state dir (it is not listed when
    /// that fails). Refused while the node stops: checked under the lock shutdown reads the
    /// jobs with, so a job is either seen (and stopped) by the shutdown, or never started.
    pub(super) fn enroll_job(
        &self,
        job: &Arc<Job>,
        submitted_at: SystemTime,
    ) -> Result<(), NodeError> {
        let name = &job.name;
        {
            let mut jobs = write(&self.store.jobs);
            if self.is_shutting_down() {
                return Err(NodeError::Unavailable(format!(
                    "the node is shutting down; job {name} was not admitted"
                )));
            }
            if jobs.contains_key(name) {
                return Err(super::intake::job_exists(name));
            }
            jobs.insert(name.clone(), job.clone());
        }
        let record = JobRecord {
            spec: job.config.clone(),
            submitted_at: format_rfc3339(submitted_at),
        };
        let dir = job.dir();
        let persisted = std::fs::create_dir_all(dir).and_then(|_| {
            let bytes = serde_json::to_vec(&record).map_err(std::io::Error::other)?;
            crate::util::fsio::write_atomic(&dir.join(JOB_RECORD), &bytes)
        });
        if let Err(e) = persisted {
            write(&self.store.jobs).remove(name);
            return Err(NodeError::Internal(format!(
                "cannot record job {name} in {}: {e}",
                dir.display()
            )));
        }
        Ok(())
    }

    /// The job called `name`.
    pub fn job(&self, name: &str) -> Result<Arc<Job>, NodeError> {
        read(&self.store.jobs)
            .get(name)
            .cloned()
            .ok_or_else(|| NodeError::NotFound(format!("unknown job {name}")))
    }

    /// Every job, by name.
    pub fn jobs(&self) -> Vec<Arc<Job>> {
        read(&self.store.jobs).values().cloned().collect()
    }

    /// Changes a job's deadline, target accuracy or epoch limit, and records the change in
    /// the state dir before returning (blocking: run it off the async workers). An earlier
    /// deadline goes through admission first (see [`Node::admit_deadline_change`]): refused,
    /// nothing changes.
    pub(crate) fn update_job(
        &self,
        name: &str,
        changes: JobChanges,
    ) -> Result<Arc<Job>, NodeError> {
        let _files = self.lock_job_files();
        let job = self.job(name)?;
        if job.state().is_terminal()
            && (changes.target_accuracy.is_some() || changes.epochs.is_some())
        {
            return Err(NodeError::Conflict(format!(
                "job {name} has ended ({:?}); its target and epochs can no longer change",
                job.state()
            )));
        }
        if let Some(Some(_)) = changes.target_accuracy
            && job.config.val_fraction == 0.0
        {
            return Err(NodeError::Invalid(vec![
                "target_accuracy: the job has no validation set (val_fraction = 0)".into(),
            ]));
        }
        // A new deadline is admitted as a submission's is; a refused one changes nothing.
        if let Some(Some(deadline)) = changes.deadline {
            self.admit_deadline_change(&job, deadline)?;
        }
        apply_changes(&job, &changes);
        job.events().push(JobEventKind::Updated {
            deadline: changes.deadline.map(|d| d.map(format_rfc3339)),
            target_accuracy: changes.target_accuracy,
            epochs: changes.epochs,
        });
        // Recorded before the answer, so an acknowledged change survives a restart.
        let path = job.dir().join(CHANGES_RECORD);
        let mut record: ChangesRecord = read_record(job.dir(), CHANGES_RECORD).unwrap_or_default();
        record.merge(&changes);
        let written = serde_json::to_vec(&record)
            .map_err(std::io::Error::other)
            .and_then(|bytes| crate::util::fsio::write_atomic(&path, &bytes));
        written.map_err(|e| {
            NodeError::Internal(format!(
                "the change was applied but could not be recorded in {}: {e}",
                path.display()
            ))
        })?;
        Ok(job)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_records_keep_a_cleared_value_apart_from_an_unchanged_one() {
        let old = r#"{"deadline": null, "epochs": 12}"#;
        let mut r: ChangesRecord = serde_json::from_str(old).unwrap();
        assert_eq!(r.deadline, Some(None));
        assert_eq!(r.target_accuracy, None);
        r.merge(&JobChanges {
            target_accuracy: Some(Some(0.5)),
            ..Default::default()
        });
        let v: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"deadline": null, "target_accuracy": 0.5, "epochs": 12})
        );
        assert_eq!(r.changes().deadline, Some(None));
        assert_eq!(r.changes().epochs, Some(12));
    }
}
