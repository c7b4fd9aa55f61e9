//! Restore at start: the jobs and the services added at run time that the state dir holds
//! from before this start.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use crate::config::JobConfig;
use crate::util::sync::{read, write};

use super::jobs::{Job, JobEventKind, OUTCOME_RECORD, OutcomeRecord};
use super::services::LoadedService;
use super::store::{
    CHANGES_RECORD, ChangesRecord, JOB_RECORD, StoreError, StoredJobRecord, StoredServiceRecord,
    apply_changes, read_record,
};
use super::{Node, NodeError};

/// Why something in the state dir was not restored.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RestoreError {
    /// Its record could not be read.
    #[error(transparent)]
    Record(#[from] StoreError),
    /// The node refused it (its files are outside the allowed directories, no device works).
    #[error(transparent)]
    Refused(#[from] NodeError),
    /// Its name is taken.
    #[error("{0}")]
    NameTaken(String),
    /// Its thread could not start.
    #[error("cannot start the job's thread: {0}")]
    Thread(std::io::Error),
}

impl Node {
    /// Services added at run time before this start (through the API or from a job), from
    /// the state dir; one whose name the config now uses is left to the config.
    pub(super) fn restore_services(self: &Arc<Self>) {
        let dir = self.state_dir.join("services");
        let paths = sorted_entries(&dir, |p| p.extension().is_some_and(|x| x == "json"));
        for path in paths {
            match self.restore_service(&path) {
                Ok(svc) => {
                    tracing::info!(service = %svc.name(), "service restored from the state dir")
                }
                Err(e) => tracing::error!("cannot restore the service in {}: {e}", path.display()),
            }
        }
    }

    pub(super) fn restore_service(
        self: &Arc<Self>,
        path: &Path,
    ) -> Result<Arc<LoadedService>, RestoreError> {
        let file = path
            .file_name()
            .map_or_else(String::new, |f| f.to_string_lossy().into_owned());
        let dir = path.parent().unwrap_or(Path::new("."));
        let record: StoredServiceRecord = read_record(dir, &file)?;
        let cfg = crate::config::parse_service_json(
            &recorded_spec(&record.config),
            self.config().control_period_ms,
        )
        .map_err(|issues| StoreError::invalid(&file, NodeError::from_issues(issues)))?;
        if self.config().services.iter().any(|c| c.name == cfg.name) {
            return Err(RestoreError::NameTaken(format!(
                "the config now defines a service named {}; the config's is used",
                cfg.name
            )));
        }
        Ok(self.add_service(cfg, record.origin)?)
    }

    /// Jobs accepted before this start, from the state dir: those that ended are listed as
    /// they ended; the others resume from their last checkpoint (losing at most one
    /// checkpoint interval). Returns their names.
    pub(super) fn restore_jobs(self: &Arc<Self>) -> Vec<String> {
        let dir = self.state_dir.join("jobs");
        let paths = sorted_entries(&dir, |p| p.is_dir());
        let mut names = Vec::new();
        for path in paths {
            match self.restore_job(&path) {
                Ok(name) => names.push(name),
                Err(e) => tracing::error!("cannot restore the job in {}: {e}", path.display()),
            }
        }
        names
    }

    pub(super) fn restore_job(self: &Arc<Self>, dir: &Path) -> Result<String, RestoreError> {
        let (cfg, submitted_at) = read_job_record(dir)?;
        if read(&self.store.jobs).contains_key(&cfg.name) {
            return Err(RestoreError::NameTaken(format!(
                "a job named {} already exists",
                cfg.name
            )));
        }
        let ended = dir.join(OUTCOME_RECORD).exists();
        // The allowed directories may have changed since the job was accepted.
        if !ended {
            for f in crate::config::paths::data_files(&cfg.data) {
                self.confine("data", &f)?;
            }
        }
        let share = self.config().control.reserve_frac.max(0.05);
        let device = self.least_loaded_device()?;
        let lane = self.job_lane(&cfg.name, share, device);
        let name = cfg.name.clone();
        let job = Arc::new(Job::new(
            cfg,
            dir.to_path_buf(),
            submitted_at,
            lane,
            self.placement(device).clone(),
            None,
        ));
        job.set_checkpoint_timeout_ms(self.config().checkpoint_error_timeout_ms);
        if dir.join(CHANGES_RECORD).exists() {
            let changes: ChangesRecord = read_record(dir, CHANGES_RECORD)?;
            apply_changes(&job, &changes.changes());
        }
        if ended {
            let outcome: OutcomeRecord = read_record(dir, OUTCOME_RECORD)?;
            job.restore_outcome(&outcome)
                .map_err(|e| StoreError::invalid(OUTCOME_RECORD, e))?;
        }
        job.events()
            .push(JobEventKind::Restored { state: job.state() });
        write(&self.store.jobs).insert(name.clone(), job.clone());
        if ended {
            tracing::info!(job = %name, state = %job.state(), "job restored from the state dir");
        } else {
            job.start(None).map_err(|e| {
                write(&self.store.jobs).remove(&name);
                RestoreError::Thread(e)
            })?;
            tracing::info!(job = %name, "job resumed from the state dir");
        }
        Ok(name)
    }
}

/// A job's spec, validated again, and when it was submitted, from its record in `dir`.
fn read_job_record(dir: &Path) -> Result<(JobConfig, SystemTime), StoreError> {
    let record: StoredJobRecord = read_record(dir, JOB_RECORD)?;
    let cfg = crate::config::parse_job_json(&recorded_spec(&record.spec))
        .map_err(|issues| StoreError::invalid(JOB_RECORD, NodeError::from_issues(issues)))?;
    let submitted_at = record
        .submitted_at
        .as_deref()
        .and_then(|t| crate::config::parse_rfc3339(t).ok())
        .ok_or_else(|| StoreError::invalid(JOB_RECORD, "no valid submitted_at"))?;
    Ok((cfg, submitted_at))
}

/// The entries of `dir` that `keep` accepts, sorted; none (and an error logged) when the
/// directory cannot be read.
fn sorted_entries(dir: &Path, keep: impl Fn(&Path) -> bool) -> Vec<PathBuf> {
    match std::fs::read_dir(dir) {
        Ok(entries) => {
            let mut paths: Vec<PathBuf> = entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| keep(p))
                .collect();
            paths.sort();
            paths
        }
        Err(e) => {
            tracing::error!("cannot read {}: {e}", dir.display());
            Vec::new()
        }
    }
}

/// A job's recorded spec (every field, defaults included) in the form the jobs API accepts:
/// unset options (null) left out, and SGD's momentum only with SGD.
fn recorded_spec(spec: &serde_json::Value) -> serde_json::Value {
    let mut v = spec.clone();
    if let Some(obj) = v.as_object_mut() {
        obj.retain(|_, x| !x.is_null());
        if obj.get("optimizer").and_then(|o| o.as_str()) != Some("sgd") {
            obj.remove("momentum");
        }
    }
    v
}

#[cfg(test)]
mod restore_tests {
    use super::*;

    #[test]
    fn recorded_specs_parse_back_to_the_same_job() {
        let sources = [
            serde_json::json!({"name": "a", "data": "synthetic:blobs", "layers": [64, 10]}),
            serde_json::json!({"name": "b", "data": "synthetic:blobs", "layers": [64, 32, 10],
                "optimizer": "sgd", "momentum": 0.5, "deadline": "10m",
                "target_accuracy": 0.9, "epochs": 7, "checkpoint_every_steps": 3}),
            serde_json::json!({"name": "c", "data": "synthetic:spirals", "layers": [2, 8, 3],
                "deadline": "2030-01-01T00:00:00Z", "class": "best-effort"}),
        ];
        for src in sources {
            let cfg = crate::config::parse_job_json(&src).unwrap();
            let recorded = serde_json::to_value(&cfg).unwrap();
            let back = crate::config::parse_job_json(&recorded_spec(&recorded))
                .unwrap_or_else(|e| panic!("{src}: {e:?}"));
            assert_eq!(back, cfg, "{src}");
        }
    }
}
