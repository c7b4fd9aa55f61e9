//! Reloading the configuration while the daemon runs (SIGHUP, `POST /v1/reload`).
//!
//! A reload reads the file given with `--config` again, applies the command-line and
//! environment overrides exactly as at start, and validates the result with the same rules.
//! An invalid file changes nothing: the running configuration stays, every error is logged
//! and returned, and the failure is counted. A valid one is applied as a difference:
//!
//! - **Settings** that apply live: `control_period_ms`, `control.reserve_frac`,
//!   `control.leftover`, `control.past_deadline`, `control.cpu_foreign_load`, `auth_token`,
//!   `max_request_bytes`, `drain_timeout_ms`.
//! - **Settings that need a restart** (`listen`, `state_dir`, `[http]`, `[device]`, `[kubernetes]`,
//!   `control.decision_log`) keep their running values and are reported as such.
//! - **Services of the file**: a new one is loaded beside the others; one no longer in the
//!   file is removed (new requests get 404, requests already in flight are answered); a
//!   changed one takes a new SLO, `window_ms`, `timeout_ms`, `max_queue_delay_ms` or a smaller
//!   `max_batch_size` in place, and for any other change (model, `max_queue`, a larger batch)
//!   a replacement is loaded while the old one keeps serving, then takes its place. A
//!   service that failed to load, or whose device failed, is tried again (on a device that
//!   has not failed).
//! - **Jobs of the file**: one whose name the node does not know is submitted (admission
//!   applies). A job already accepted keeps its spec and keeps running when it leaves the
//!   file: update it through the jobs API or cancel it; the reload says so.
//! - **Services and jobs added at run time** (the API, a served job) are never touched by a
//!   reload. A file service whose name such a service holds is not started, and says why.
//!
//! With no `--config` the daemon runs on its embedded default, which cannot change: a reload
//! changes nothing and says so.

mod diff;
mod source;

pub use diff::{effective_config, json_diff};
use diff::{from_file, log_report, settings_diff};
use source::check_token_rule;
pub use source::{ConfigSource, SourceError};

use crate::util::sync;
use std::borrow::Cow;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use super::{LoadedService, Node, ServiceOrigin, ServiceSlot, TenantKind, TenantState, write};
use crate::config::{NodeConfig, ServiceConfig};

/// A reload that changed nothing because the configuration was refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReloadFailure {
    /// The file read.
    pub source: String,
    /// Every problem found, each naming its key.
    pub errors: Vec<String>,
}

/// One service whose settings changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceChange {
    /// The service.
    pub name: String,
    /// `applied` (in place) or `replacing` (a new batcher is loading; the old one serves
    /// until it is ready).
    pub how: Cow<'static, str>,
    /// `key: old -> new` for every setting that changed.
    pub changes: Vec<String>,
}

/// What a reload did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReloadReport {
    /// The file read.
    pub source: String,
    /// Node settings applied: `key: old -> new`.
    pub settings: Vec<String>,
    /// Settings that differ in the file but take effect only at the next start; the running
    /// values are kept.
    pub needs_restart: Vec<String>,
    /// Services of the file now loading.
    pub services_added: Vec<String>,
    /// Services removed (no longer in the file).
    pub services_removed: Vec<String>,
    /// Services whose settings changed.
    pub services_changed: Vec<ServiceChange>,
    /// Services that had failed to load and are tried again.
    pub services_retried: Vec<String>,
    /// Jobs of the file submitted.
    pub jobs_submitted: Vec<String>,
    /// What the file asks that a reload does not do, and why.
    pub not_applied: Vec<String>,
    /// What could not be applied although the file is valid (a job refused by admission).
    pub failed: Vec<String>,
    /// A remark on the reload as a whole (no config file).
    pub note: Option<String>,
}

impl ReloadReport {
    /// True when nothing changed.
    pub fn is_empty(&self) -> bool {
        self.settings.is_empty()
            && self.services_added.is_empty()
            && self.services_removed.is_empty()
            && self.services_changed.is_empty()
            && self.services_retried.is_empty()
            && self.jobs_submitted.is_empty()
    }
}

/// Where reloads read the configuration, and how they went.
pub(crate) struct ReloadState {
    /// Where the configuration is read from on a reload.
    source: Mutex<Option<ConfigSource>>,
    /// Held for the whole of a reload: one at a time.
    one_at_a_time: Mutex<()>,
    ok: AtomicU64,
    failed: AtomicU64,
    last_ok: AtomicBool,
}

impl Default for ReloadState {
    fn default() -> Self {
        ReloadState {
            source: Mutex::new(None),
            one_at_a_time: Mutex::new(()),
            ok: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            last_ok: AtomicBool::new(true),
        }
    }
}

impl Node {
    /// Records where the configuration came from, so that [`Node::reload`] can read it again.
    pub fn set_config_source(&self, source: ConfigSource) {
        *sync::lock(&self.reloads.source) = Some(source);
    }

    /// Reloads the configuration from its source (see the module notes). Reloads run one at
    /// a time. The service manager hears `RELOADING=1` before and `READY=1` after, whatever
    /// the outcome.
    pub fn reload(self: &Arc<Self>) -> Result<ReloadReport, ReloadFailure> {
        let _one_at_a_time = sync::lock(&self.reloads.one_at_a_time);
        let notifier = self.notifier();
        if let Some(n) = &notifier {
            n.reloading();
        }
        let source = sync::lock(&self.reloads.source).clone();
        let outcome = match &source {
            None => Err((
                "(none)".to_string(),
                vec!["this node has no configuration source to reload from".to_string()],
            )),
            Some(source) if source.path.is_none() => Ok(ReloadReport {
                source: source.describe(),
                note: Some(
                    "no --config: the daemon runs on its embedded default, which cannot \
                     change; nothing was reloaded (start it with --config FILE to change \
                     settings without a restart)"
                        .into(),
                ),
                ..Default::default()
            }),
            Some(source) => {
                let described = source.describe();
                tracing::info!(source = %described, "reloading the configuration");
                source
                    .load()
                    .and_then(|new| {
                        let (effective, needs_restart) = effective_config(&self.config(), &new);
                        // The running address with the file's token must obey the token rule.
                        check_token_rule(&effective)?;
                        Ok((effective, needs_restart))
                    })
                    .map(|(effective, needs_restart)| {
                        let mut report = self.apply_config(effective);
                        report.source = described.clone();
                        report.needs_restart = needs_restart;
                        report
                    })
                    .map_err(|e| (described, e.messages()))
            }
        };
        let result = match outcome {
            Ok(report) => {
                self.reloads.ok.fetch_add(1, Ordering::Relaxed);
                self.reloads.last_ok.store(true, Ordering::Relaxed);
                log_report(&report);
                Ok(report)
            }
            Err((source, errors)) => {
                self.reloads.failed.fetch_add(1, Ordering::Relaxed);
                self.reloads.last_ok.store(false, Ordering::Relaxed);
                for err in &errors {
                    tracing::error!("reload refused, the running configuration is kept: {err}");
                }
                Err(ReloadFailure { source, errors })
            }
        };
        if let Some(n) = &notifier {
            n.ready(&self.status_line());
        }
        result
    }

    /// Configuration reloads so far: (applied, refused), and whether the last one applied.
    pub fn reload_counts(&self) -> (u64, u64, bool) {
        (
            self.reloads.ok.load(Ordering::Relaxed),
            self.reloads.failed.load(Ordering::Relaxed),
            self.reloads.last_ok.load(Ordering::Relaxed),
        )
    }

    /// Applies a validated configuration whose restart-only settings equal the running ones
    /// (see [`effective_config`]) and says what changed.
    pub(crate) fn apply_config(self: &Arc<Self>, new: NodeConfig) -> ReloadReport {
        let old = self.config();
        let mut report = ReloadReport {
            settings: settings_diff(&old, &new),
            ..Default::default()
        };
        *write(&self.config) = Arc::new(new.clone());
        for job in super::read(&self.store.jobs).values() {
            job.set_checkpoint_timeout_ms(new.checkpoint_error_timeout_ms);
        }
        sync::lock(&self.control)
            .controller
            .set_config(super::control_config(&new));

        self.apply_services(&new, &mut report);
        self.apply_jobs(&old, &new, &mut report);
        report
    }

    fn apply_services(self: &Arc<Self>, new: &NodeConfig, report: &mut ReloadReport) {
        let wanted: BTreeSet<&str> = new.services.iter().map(|s| s.name.as_str()).collect();
        self.remove_unwanted_services(&wanted, report);
        for cfg in &new.services {
            self.apply_service(cfg, report);
        }
    }

    /// Removes the file's services it no longer lists, outside the map's lock: dropping the
    /// last handle of a service waits for its batcher to answer what it had queued.
    fn remove_unwanted_services(&self, wanted: &BTreeSet<&str>, report: &mut ReloadReport) {
        let mut removed = Vec::new();
        {
            let mut map = write(&self.registry.services);
            let gone: Vec<String> = map
                .iter()
                .filter(|(name, slot)| !wanted.contains(name.as_str()) && from_file(slot))
                .map(|(name, _)| name.clone())
                .collect();
            for name in gone {
                self.cancel_loader(&name);
                if let Some(slot) = map.remove(&name) {
                    removed.push(slot);
                }
                report.services_removed.push(name);
            }
        }
        drop(removed);
        for name in &report.services_removed {
            tracing::info!(service = %name, "service removed: no longer in the configuration");
        }
    }

    /// Adds, retries, changes or replaces the service `cfg` describes.
    fn apply_service(self: &Arc<Self>, cfg: &ServiceConfig, report: &mut ReloadReport) {
        let slot = super::read(&self.registry.services).get(&cfg.name).cloned();
        match slot {
            None => {
                self.load_service(cfg.clone(), Vec::new());
                report.services_added.push(cfg.name.clone());
            }
            Some(ServiceSlot::Ready(svc)) if svc.origin != ServiceOrigin::Config => {
                report.not_applied.push(format!(
                    "service {}: the name is held by a service added at run time; remove \
                     it (DELETE /v1/services/{}) and reload to start the file's",
                    cfg.name, cfg.name
                ));
            }
            Some(ServiceSlot::Ready(svc)) if self.service_failure(&svc).is_some() => {
                self.load_service(cfg.clone(), Vec::new());
                report.services_retried.push(cfg.name.clone());
            }
            Some(ServiceSlot::Ready(svc)) => self.change_serving(&svc, cfg, report),
            Some(ServiceSlot::Loading(current)) => {
                if &current != cfg {
                    let changes = json_diff(&current, cfg);
                    write(&self.registry.services)
                        .insert(cfg.name.clone(), ServiceSlot::Loading(cfg.clone()));
                    self.load_service(cfg.clone(), Vec::new());
                    report.services_changed.push(ServiceChange {
                        name: cfg.name.clone(),
                        how: "replacing".into(),
                        changes,
                    });
                }
            }
            Some(ServiceSlot::Failed(..)) => {
                write(&self.registry.services)
                    .insert(cfg.name.clone(), ServiceSlot::Loading(cfg.clone()));
                self.load_service(cfg.clone(), Vec::new());
                report.services_retried.push(cfg.name.clone());
            }
        }
    }

    /// Applies `cfg` to a serving service: live when it can be, else by a replacement that
    /// keeps its lane.
    fn change_serving(
        self: &Arc<Self>,
        svc: &Arc<LoadedService>,
        cfg: &ServiceConfig,
        report: &mut ReloadReport,
    ) {
        let current = svc.config();
        // A replacement may be loading from an earlier reload: compare with what it will
        // bring.
        let pending = self.pending_config(&cfg.name);
        let baseline = pending.as_ref().unwrap_or(&current);
        if baseline == cfg {
            return;
        }
        let changes = json_diff(baseline, cfg);
        let how = if pending.is_none() && svc.can_apply_live(cfg) {
            svc.apply_live(cfg);
            "applied"
        } else {
            self.load_service(
                cfg.clone(),
                svc.replicas().iter().map(|r| r.lane.clone()).collect(),
            );
            "replacing"
        };
        report.services_changed.push(ServiceChange {
            name: cfg.name.clone(),
            how: how.into(),
            changes,
        });
    }

    fn apply_jobs(self: &Arc<Self>, old: &NodeConfig, new: &NodeConfig, report: &mut ReloadReport) {
        for cfg in &new.jobs {
            match self.job(&cfg.name) {
                Err(_) => match self.submit_job(cfg.clone()) {
                    Ok(_) => report.jobs_submitted.push(cfg.name.clone()),
                    Err(e) => {
                        tracing::error!(job = %cfg.name, "cannot start job from the configuration: {e}");
                        report.failed.push(format!("job {}: {e}", cfg.name));
                    }
                },
                Ok(_) => match old.job(&cfg.name) {
                    Some(before) if before != cfg => report.not_applied.push(format!(
                        "job {}: changed in the file ({}); an accepted job keeps its spec: \
                         update its deadline, target_accuracy or epochs through the jobs API, \
                         or cancel it and submit it anew",
                        cfg.name,
                        json_diff(before, cfg).join(", "),
                    )),
                    Some(_) => {}
                    None => report.not_applied.push(format!(
                        "job {}: a job of that name was accepted before; the file's is not \
                         submitted",
                        cfg.name
                    )),
                },
            }
        }
        for before in &old.jobs {
            if new.job(&before.name).is_none()
                && let Ok(job) = self.job(&before.name)
                && !job.state().is_terminal()
            {
                report.not_applied.push(format!(
                    "job {}: no longer in the file; it keeps running (cancel it with DELETE \
                     /v1/jobs/{})",
                    before.name, before.name
                ));
            }
        }
    }

    /// One line for the service manager's status: tenants, their states, the share given.
    pub(crate) fn status_line(&self) -> String {
        let st = self.status();
        let of_kind = |k: TenantKind| st.tenants.iter().filter(move |t| t.kind == k);
        let services: Vec<_> = of_kind(TenantKind::Service).collect();
        let ready = services
            .iter()
            .filter(|t| t.state == TenantState::Ready)
            .count();
        let jobs: Vec<_> = of_kind(TenantKind::Job).collect();
        let running = jobs
            .iter()
            .filter(|t| t.state == TenantState::Running)
            .count();
        let share: f64 = st.devices.iter().map(|d| d.share_assigned).sum();
        let plural = |n: usize, one: &str, many: &str| {
            if n == 1 {
                format!("{n} {one}")
            } else {
                format!("{n} {many}")
            }
        };
        format!(
            "{} ({ready} ready), {} ({running} running); {:.0}% of the {} assigned; {}",
            plural(services.len(), "service", "services"),
            plural(jobs.len(), "job", "jobs"),
            share * 100.0,
            st.devices.first().map_or("device", |d| d.name.as_str()),
            if self.is_shutting_down() {
                "stopping"
            } else if st.ready {
                "ready"
            } else {
                "not ready"
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> NodeConfig {
        crate::config::parse(text).unwrap()
    }

    #[test]
    fn restart_only_settings_keep_their_running_values_and_are_reported() {
        let running = parse("listen = \"127.0.0.1:8000\"\nstate_dir = \"a\"\n");
        let new = parse(
            "listen = \"127.0.0.1:9000\"\nstate_dir = \"b\"\ncontrol_period_ms = 50\n\
             [device]\ncpu_threads = 3\n",
        );
        let (eff, restart) = effective_config(&running, &new);
        assert_eq!(eff.listen, running.listen);
        assert_eq!(eff.state_dir, running.state_dir);
        assert_eq!(eff.device, running.device);
        assert_eq!(eff.control_period_ms, 50);
        let text = restart.join("\n");
        assert!(
            text.contains("listen: running 127.0.0.1:8000, the file says 127.0.0.1:9000"),
            "{text}"
        );
        assert!(
            text.contains("state_dir: running a, the file says b"),
            "{text}"
        );
        assert!(
            text.contains("device.cpu_threads: running 0, the file says 3"),
            "{text}"
        );
        assert_eq!(restart.len(), 3, "{text}");
    }

    #[test]
    fn settings_diff_names_each_key_and_never_shows_the_token() {
        let old = parse("auth_token = \"secret-one\"\n");
        let new = parse(
            "auth_token = \"secret-two\"\ncontrol_period_ms = 200\n[control]\nleftover = \"idle\"\n",
        );
        let d = settings_diff(&old, &new);
        assert!(
            d.contains(&"control_period_ms: 100 -> 200".to_string()),
            "{d:?}"
        );
        assert!(
            d.contains(&"control.leftover: best-effort -> idle".to_string()),
            "{d:?}"
        );
        assert!(d.contains(&"auth_token: changed".to_string()), "{d:?}");
        assert!(!d.join(" ").contains("secret"), "{d:?}");
        assert!(settings_diff(&old, &old).is_empty());
    }

    #[test]
    fn the_token_rule_holds_for_the_running_address() {
        let running = parse("listen = \"0.0.0.0:8000\"\nauth_token = \"t\"\n");
        let new = parse("listen = \"127.0.0.1:8000\"\n");
        let (eff, _) = effective_config(&running, &new);
        assert!(check_token_rule(&eff).is_err());
    }

    #[test]
    fn source_errors_list_every_issue_with_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n.toml");
        std::fs::write(
            &path,
            "control_period_ms = 1\n[[services]]\nname = \"a\"\nlayers = [4, 2]\nslo = { p99_ms = -5 }\n",
        )
        .unwrap();
        let src = ConfigSource {
            path: Some(path.clone()),
            ..Default::default()
        };
        let errs = src.load().unwrap_err().messages();
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(
            errs.iter()
                .all(|e| e.starts_with(&path.display().to_string()))
        );
        assert!(
            errs.iter().any(|e| e.contains("services[0].slo.p99_ms")),
            "{errs:?}"
        );
        assert!(
            errs.iter().any(|e| e.contains("control_period_ms")),
            "{errs:?}"
        );
        let missing = ConfigSource {
            path: Some(dir.path().join("absent.toml")),
            ..Default::default()
        };
        let errs = missing.load().unwrap_err().messages();
        assert!(errs[0].contains("cannot read config file"), "{errs:?}");
        // The OS's reason is kept, not dropped.
        assert!(errs[0].contains("No such file or directory"), "{errs:?}");
    }
}
