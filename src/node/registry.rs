//! The service registry: each service's slot (loading, serving, failed), its loads on
//! threads of their own, services added through the API or from a job, and their records in
//! the state dir.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use crate::config::ServiceConfig;
use crate::device::lane::Lane;
use crate::model::checkpoint::Checkpoint;
use crate::util::sync::{self, read, write};

use super::services::{self, LoadedService, ServiceOrigin};
use super::store::ServiceRecord;
use super::{JobState, Node, NodeError};

/// The services on the node.
#[derive(Default)]
pub(super) struct ServiceRegistry {
    /// Every service's slot, by name.
    pub(super) services: RwLock<BTreeMap<String, ServiceSlot>>,
    /// The latest load started for each service name (a ticket and the settings it loads):
    /// a loader whose ticket is no longer here was superseded and publishes nothing.
    pub(super) loaders: Mutex<HashMap<String, (u64, ServiceConfig)>>,
    /// The last ticket handed out.
    pub(super) last_ticket: AtomicU64,
}

/// Why a service of the config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LoadError {
    /// The node refused it (a file outside the allowed directories, no device works).
    #[error(transparent)]
    Refused(#[from] NodeError),
    /// Its model could not be built, or its batcher started.
    #[error(transparent)]
    Build(#[from] services::ServiceBuildError),
    /// Its loader thread could not start.
    #[error("cannot start loader thread: {0}")]
    Thread(std::io::Error),
}

/// A service slot: loading, serving, or failed to load.
#[derive(Clone)]
pub enum ServiceSlot {
    /// Its model is being loaded or trained.
    Loading(ServiceConfig),
    /// Serving.
    Ready(Arc<LoadedService>),
    /// Could not be loaded.
    Failed(ServiceConfig, String),
}

impl Node {
    /// Checks every file a service reads: its checkpoint or its warm-up data.
    pub(super) fn confine_service(&self, cfg: &ServiceConfig) -> Result<(), NodeError> {
        if let Some(c) = &cfg.checkpoint {
            self.confine("checkpoint", c)?;
        }
        let warmup = cfg.warmup_data.as_deref();
        for f in warmup
            .map(crate::config::paths::data_files)
            .unwrap_or_default()
        {
            self.confine("warmup_data", &f)?;
        }
        Ok(())
    }

    /// Loads a service of the config on a thread of its own, in `lanes` (a replacement keeps
    /// the lanes of the service it replaces, on the devices it still runs on) or new ones. The slot is published when it has
    /// loaded, unless a later load of the same name (or its removal) superseded this one.
    pub(super) fn load_service(self: &Arc<Self>, cfg: ServiceConfig, lanes: Vec<Arc<Lane>>) {
        let name = cfg.name.clone();
        let ticket = self.registry.last_ticket.fetch_add(1, Ordering::Relaxed) + 1;
        sync::lock(&self.registry.loaders).insert(name.clone(), (ticket, cfg.clone()));
        let node = self.clone();
        let loader_cfg = cfg.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("setpoint-load-{name}"))
            .spawn(move || node.load_config_service(loader_cfg, ticket, lanes));
        if let Err(e) = spawned {
            self.publish_loaded(&name, ticket, Err(LoadError::Thread(e)));
        }
    }

    pub(super) fn load_config_service(
        &self,
        cfg: ServiceConfig,
        ticket: u64,
        lanes: Vec<Arc<Lane>>,
    ) {
        let loaded = self.build_config_service(&cfg, &lanes);
        self.publish_loaded(&cfg.name, ticket, loaded);
    }

    fn build_config_service(
        &self,
        cfg: &ServiceConfig,
        lanes: &[Arc<Lane>],
    ) -> Result<Arc<LoadedService>, LoadError> {
        self.confine_service(cfg)?;
        let devices = self.replica_devices(cfg)?;
        let model = services::build_model(cfg)?;
        let replicas = self.start_replicas(cfg, &model, &devices, lanes)?;
        let svc = LoadedService::start(cfg.clone(), &model, ServiceOrigin::Config, replicas)?;
        Ok(Arc::new(svc))
    }

    /// Publishes what a loader produced, if its ticket is still the latest for the name. A
    /// failed replacement leaves the serving service in place. Whatever is taken out of the
    /// map is dropped after its lock is released (a batcher answers its queue as it stops).
    pub(super) fn publish_loaded(
        &self,
        name: &str,
        ticket: u64,
        loaded: Result<Arc<LoadedService>, LoadError>,
    ) {
        let mut map = write(&self.registry.services);
        let cfg = {
            let mut loaders = sync::lock(&self.registry.loaders);
            match loaders.get(name) {
                Some((t, cfg)) if *t == ticket => {
                    let cfg = cfg.clone();
                    loaders.remove(name);
                    cfg
                }
                _ => {
                    drop(loaders);
                    drop(map);
                    tracing::info!(service = %name, "a newer configuration superseded this load");
                    return;
                }
            }
        };
        // A node shut down while this loaded drops the service instead of publishing it.
        if self.is_shutting_down() {
            return;
        }
        // A service whose device has failed serves nothing to keep.
        let serving = match map.get(name) {
            Some(ServiceSlot::Ready(s)) => self.service_failure(s).is_none(),
            _ => false,
        };
        let replaced = match loaded {
            Ok(svc) => {
                tracing::info!(service = %name, "service ready");
                map.insert(name.to_string(), ServiceSlot::Ready(svc))
            }
            Err(e) if serving => {
                tracing::error!(
                    service = %name,
                    "cannot apply the new settings: {e}; it keeps serving with the previous ones"
                );
                None
            }
            Err(e) => {
                tracing::error!(service = %name, "cannot start service: {e}");
                map.insert(name.to_string(), ServiceSlot::Failed(cfg, e.to_string()))
            }
        };
        drop(map);
        drop(replaced);
    }

    /// Forgets the load in progress for `name`, if any: it will publish nothing.
    pub(super) fn cancel_loader(&self, name: &str) {
        sync::lock(&self.registry.loaders).remove(name);
    }

    /// The settings a load in progress for `name` will bring, if one is.
    pub(super) fn pending_config(&self, name: &str) -> Option<ServiceConfig> {
        sync::lock(&self.registry.loaders)
            .get(name)
            .map(|(_, c)| c.clone())
    }

    /// The serving service called `name`: 404 when unknown, 503 while loading, failed, or
    /// on a device that has failed.
    pub fn service(&self, name: &str) -> Result<Arc<LoadedService>, NodeError> {
        if self.is_shutting_down() {
            return Err(NodeError::Unavailable("the node is shutting down".into()));
        }
        match read(&self.registry.services).get(name) {
            Some(ServiceSlot::Ready(s)) => match self.service_failure(s) {
                Some(e) => Err(NodeError::Unavailable(format!(
                    "model {name} is not available: {e}"
                ))),
                None => Ok(s.clone()),
            },
            Some(ServiceSlot::Loading(_)) => Err(NodeError::Unavailable(format!(
                "model {name} is loading; retry shortly"
            ))),
            Some(ServiceSlot::Failed(_, e)) => Err(NodeError::Unavailable(format!(
                "model {name} is not available: {e}"
            ))),
            None => Err(NodeError::NotFound(format!("unknown model {name}"))),
        }
    }

    /// Every service slot, by name.
    pub(crate) fn service_slots(&self) -> Vec<(String, ServiceSlot)> {
        read(&self.registry.services)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Every serving service.
    pub(crate) fn ready_services(&self) -> Vec<Arc<LoadedService>> {
        read(&self.registry.services)
            .values()
            .filter_map(|s| match s {
                ServiceSlot::Ready(s) => Some(s.clone()),
                _ => None,
            })
            .collect()
    }

    /// Adds a service from a checkpoint on the node (the services API); its settings were
    /// validated by the caller.
    pub(crate) fn add_api_service(
        self: &Arc<Self>,
        cfg: ServiceConfig,
    ) -> Result<Arc<LoadedService>, NodeError> {
        // Its checkpoint may be a job's.
        let _files = self.lock_job_files();
        self.add_service(cfg, ServiceOrigin::Api)
    }

    pub(super) fn add_service(
        self: &Arc<Self>,
        cfg: ServiceConfig,
        origin: ServiceOrigin,
    ) -> Result<Arc<LoadedService>, NodeError> {
        if self.is_shutting_down() {
            return Err(NodeError::Unavailable("the node is shutting down".into()));
        }
        if read(&self.registry.services).contains_key(&cfg.name) {
            return Err(NodeError::Conflict(format!(
                "a service named {} already exists",
                cfg.name
            )));
        }
        self.confine_service(&cfg)?;
        let model = services::build_model(&cfg).map_err(|e| match e {
            services::ServiceBuildError::Model(m) => NodeError::Invalid(vec![m]),
            services::ServiceBuildError::Start(m) => NodeError::Internal(m),
        })?;
        let devices = self.replica_devices(&cfg)?;
        let svc = self
            .start_replicas(&cfg, &model, &devices, &[])
            .and_then(|replicas| LoadedService::start(cfg.clone(), &model, origin, replicas))
            .map(Arc::new)
            .map_err(|e| NodeError::Internal(e.to_string()))?;
        let mut map = write(&self.registry.services);
        if map.contains_key(&cfg.name) {
            return Err(NodeError::Conflict(format!(
                "a service named {} already exists",
                cfg.name
            )));
        }
        // Recorded before it is listed: a service the state dir does not hold would be gone
        // after a restart, so one that cannot be recorded is not added (and stops here).
        self.persist_service(&svc)?;
        map.insert(cfg.name.clone(), ServiceSlot::Ready(svc.clone()));
        drop(map);
        tracing::info!(service = %cfg.name, "service added");
        Ok(svc)
    }

    /// Records a service added at run time in the state dir.
    pub(super) fn persist_service(&self, svc: &LoadedService) -> Result<(), NodeError> {
        if svc.origin == ServiceOrigin::Config {
            return Ok(());
        }
        let config = svc.config();
        let record = ServiceRecord {
            config: &config,
            origin: &svc.origin,
        };
        let path = self
            .state_dir
            .join("services")
            .join(format!("{}.json", svc.name()));
        let written = serde_json::to_vec(&record)
            .map_err(std::io::Error::other)
            .and_then(|bytes| crate::util::fsio::write_atomic(&path, &bytes));
        written.map_err(|e| {
            NodeError::Internal(format!(
                "cannot record service {} in the state dir ({}: {e}); it was not added",
                svc.name(),
                path.display()
            ))
        })
    }

    /// Stops and removes a service; requests already queued are answered first.
    pub(crate) fn remove_service(&self, name: &str) -> Result<(), NodeError> {
        let slot = write(&self.registry.services).remove(name);
        match slot {
            None => Err(NodeError::NotFound(format!("unknown model {name}"))),
            Some(ServiceSlot::Loading(cfg)) => {
                write(&self.registry.services).insert(name.to_string(), ServiceSlot::Loading(cfg));
                Err(NodeError::Conflict(format!(
                    "model {name} is still loading; remove it once it has loaded"
                )))
            }
            Some(slot) => {
                let _ = std::fs::remove_file(
                    self.state_dir.join("services").join(format!("{name}.json")),
                );
                if let ServiceSlot::Ready(svc) = slot {
                    // The batcher stops once the last handle (a request in flight) is gone.
                    drop(svc);
                }
                tracing::info!(service = %name, "service removed");
                Ok(())
            }
        }
    }

    /// The checkpoint of job `name`, if it can be served: 404 for an unknown job, 409 for
    /// one that has not completed.
    pub(crate) fn servable_checkpoint(&self, name: &str) -> Result<PathBuf, NodeError> {
        let job = self.job(name)?;
        if job.state() != JobState::Completed {
            return Err(NodeError::Conflict(format!(
                "job {name} is {:?}; only a completed job can be served",
                job.state()
            )));
        }
        Ok(job.checkpoint_path())
    }

    /// Publishes completed job `name`'s model as an inference service with settings `cfg`
    /// (whose checkpoint is the job's, see [`Node::servable_checkpoint`]).
    pub(crate) fn serve_job(
        self: &Arc<Self>,
        name: &str,
        cfg: ServiceConfig,
    ) -> Result<Arc<LoadedService>, NodeError> {
        let _files = self.lock_job_files();
        let path = self.servable_checkpoint(name)?;
        // The job's checkpoint is known good; check it exists before building.
        Checkpoint::load(&path).map_err(|e| NodeError::Internal(e.to_string()))?;
        self.add_service(
            cfg,
            ServiceOrigin::Job {
                job: name.to_string(),
            },
        )
    }
}
