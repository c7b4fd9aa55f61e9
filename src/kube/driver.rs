//! Preparing and unpreparing claims: the kubelet plugin's work, apart from its transport
//! ([`super::plugin`]). Preparing a claim reads it from the API server, checks it
//! ([`super::claims::plan`]), admits its tenant on the allocated device with the node's own
//! admission (the same path and checks as the HTTP API), writes the pod's CDI device and
//! records the claim in the state dir. Unpreparing removes the tenant (a job is cancelled;
//! its checkpoint stays in the state dir), the CDI spec and the record. Both are idempotent,
//! across a restart too, and one claim is handled at a time.

use std::sync::Arc;

use k8s_openapi::api::resource::v1::ResourceClaim;
use serde_json::Value;

use super::cdi::{self, TenantEnv};
use super::claims::{self, Allocated, ClaimRef};
use super::params::TenantSpec;
use super::prepared::{Prepared, PreparedClaims, valid_uid};
use crate::api::dto::{AddService, SubmitJob};
use crate::config::{KubernetesConfig, ReplicaSpec};
use crate::node::{JobDeleteAction, Node, NodeError, TenantKind};

/// The driver's state on this node.
pub struct Driver {
    node: Arc<Node>,
    client: kube::Client,
    cfg: KubernetesConfig,
    node_name: String,
    endpoint: String,
    store: PreparedClaims,
    one_at_a_time: tokio::sync::Mutex<()>,
}

impl Driver {
    /// A driver for `node`, its records under the node's state dir.
    pub fn new(
        node: Arc<Node>,
        client: kube::Client,
        cfg: KubernetesConfig,
        node_name: String,
        endpoint: String,
    ) -> Result<Self, String> {
        let store = PreparedClaims::open(&node.state_dir().join("kubernetes").join("claims"))?;
        Ok(Driver {
            node,
            client,
            cfg,
            node_name,
            endpoint,
            store,
            one_at_a_time: tokio::sync::Mutex::new(()),
        })
    }

    /// The claims prepared here.
    pub fn prepared(&self) -> &PreparedClaims {
        &self.store
    }

    /// The driver's settings.
    pub fn config(&self) -> &KubernetesConfig {
        &self.cfg
    }

    /// Prepares claim `r`: the devices the pod gets, or why it cannot run here.
    pub async fn prepare(&self, r: &ClaimRef) -> Result<Prepared, String> {
        if !valid_uid(&r.uid) {
            return Err(format!("claim {r}: {:?} is not a UID", r.uid));
        }
        let _one = self.one_at_a_time.lock().await;
        if let Some(done) = self.store.get(&r.uid) {
            return Ok(done);
        }
        let claim = kube::Api::<ResourceClaim>::namespaced(self.client.clone(), &r.namespace)
            .get(&r.name)
            .await
            .map_err(|e| format!("cannot read claim {r} from the API server: {e}"))?;
        let names = self.node.device_names();
        let plan = claims::plan(&claim, r, &self.cfg.driver, &self.node_name, &names)?;
        let (kind, tenant) = self.admit(r, plan.tenant, &plan.device).await?;
        match self.record(r, kind, &tenant, &plan.device, plan.allocated) {
            Ok(p) => {
                tracing::info!(claim = %r, tenant = %tenant, device = %p.device, "claim prepared");
                Ok(p)
            }
            Err(e) => {
                // Nothing half done stays: the tenant goes with the record that failed.
                let _ = self.remove_tenant(kind, &tenant).await;
                Err(e)
            }
        }
    }

    /// Unprepares claim `r`; a claim not prepared here (or already unprepared) is done.
    pub async fn unprepare(&self, r: &ClaimRef) -> Result<(), String> {
        let _one = self.one_at_a_time.lock().await;
        let Some(p) = self.store.get(&r.uid) else {
            return Ok(());
        };
        self.remove_tenant(p.kind, &p.tenant).await?;
        cdi::remove(&self.cfg.cdi_dir, &self.cfg.driver, &r.uid)
            .map_err(|e| format!("claim {r}: cannot remove its CDI spec: {e}"))?;
        self.store
            .remove(&r.uid)
            .map_err(|e| format!("claim {r}: cannot remove its record: {e}"))?;
        tracing::info!(claim = %r, tenant = %p.tenant, "claim unprepared");
        Ok(())
    }

    /// Admits the tenant on `device`; its kind and name.
    async fn admit(
        &self,
        r: &ClaimRef,
        spec: TenantSpec,
        device: &str,
    ) -> Result<(TenantKind, String), String> {
        let node = self.node.clone();
        let period = node.config().control_period_ms;
        let device = device.to_string();
        let r2 = r.clone();
        let admitted = tokio::task::spawn_blocking(move || match spec {
            TenantSpec::Job(body) => {
                let SubmitJob(cfg) = SubmitJob::decode(&Value::Object(body))
                    .map_err(|e| format!("claim {r2}: its job: {}", e.message))?;
                let job = node
                    .submit_job_on(cfg, Some(&device))
                    .map_err(|e| refused(&r2, &e))?;
                Ok((TenantKind::Job, job.name.clone()))
            }
            TenantSpec::Service(body) => {
                let AddService(mut cfg) = AddService::decode(&Value::Object(body), period)
                    .map_err(|e| format!("claim {r2}: its service: {}", e.message))?;
                let on = ReplicaSpec::parse(&device)
                    .ok_or_else(|| format!("claim {r2}: device {device} cannot hold a replica"))?;
                cfg.replicas = vec![on];
                let svc = node.add_api_service(cfg).map_err(|e| refused(&r2, &e))?;
                Ok((TenantKind::Service, svc.name().to_string()))
            }
        });
        admitted
            .await
            .map_err(|e| format!("claim {r}: admission stopped: {e}"))?
    }

    /// Writes the CDI spec and the record of a prepared claim.
    fn record(
        &self,
        r: &ClaimRef,
        kind: TenantKind,
        tenant: &str,
        device: &str,
        allocated: Vec<Allocated>,
    ) -> Result<Prepared, String> {
        let env = TenantEnv {
            endpoint: self.endpoint.clone(),
            tenant: tenant.to_string(),
            kind,
            device: device.to_string(),
        };
        let cdi_device = cdi::write(&self.cfg.cdi_dir, &self.cfg.driver, &r.uid, &env)
            .map_err(|e| format!("claim {r}: cannot write its CDI spec: {e}"))?;
        let p = Prepared {
            claim: r.clone(),
            kind,
            tenant: tenant.to_string(),
            device: device.to_string(),
            allocated,
            cdi_device,
        };
        if let Err(e) = self.store.insert(p.clone()) {
            let _ = cdi::remove(&self.cfg.cdi_dir, &self.cfg.driver, &r.uid);
            return Err(format!("claim {r}: cannot record it in the state dir: {e}"));
        }
        Ok(p)
    }

    /// Removes a claim's tenant: a service stops, a job is cancelled (or removed once it has
    /// ended) with its checkpoint kept; one already gone is done.
    async fn remove_tenant(&self, kind: TenantKind, name: &str) -> Result<(), String> {
        let node = self.node.clone();
        let name = name.to_string();
        let removed = tokio::task::spawn_blocking(move || match kind {
            TenantKind::Service => node.remove_service(&name),
            TenantKind::Job => node
                .delete_job(&name, Some(JobDeleteAction::Cancel))
                .map(|_| ()),
        });
        match removed.await.map_err(|e| format!("removal stopped: {e}"))? {
            Ok(()) | Err(NodeError::NotFound(_)) => Ok(()),
            // A job that has ended already holds no capacity; its record and checkpoint stay.
            Err(NodeError::Delete(crate::node::DeleteRefusal::AlreadyEnded { .. })) => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// Why the node did not admit a claim's tenant, for the kubelet (and the pod's events).
fn refused(r: &ClaimRef, e: &NodeError) -> String {
    format!("claim {r}: not admitted on this node: {e}")
}
