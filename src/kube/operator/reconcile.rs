//! The controllers: for each `SetpointJob` and `SetpointService`, apply what [`render`] says
//! it needs (server-side apply, field manager `setpoint-operator`), replace a service's failed
//! pods, and refuse a spec the node's schema refuses by saying why in its status. Next to
//! them runs the status writer ([`super::status`]).

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::resource::v1::ResourceClaimTemplate;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, Preconditions};
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::crd::{JobPhase, SetpointJob, SetpointService};
use super::node_read::NodeReader;
use super::render::{self, MANAGED_BY, MANAGER, RenderError, SERVICE_LABEL};
use super::settings::Settings;
use super::{names, status};

/// What the reconcilers and the status writer share.
pub struct Context {
    /// The API server.
    pub client: kube::Client,
    /// The operator's flags.
    pub settings: Settings,
    /// The nodes' daemons.
    pub reader: NodeReader,
    /// The EndpointSlices last applied, so that an unchanged one is not sent again.
    pub slices: std::sync::Mutex<std::collections::HashMap<String, serde_json::Value>>,
}

impl Context {
    /// A context for `client` and `settings`.
    pub fn new(client: kube::Client, settings: Settings) -> Self {
        Context {
            reader: NodeReader::new(settings.daemon_port),
            client,
            settings,
            slices: Default::default(),
        }
    }
}

/// Why the operator, or one of its calls, failed.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    /// A call to the API server failed.
    #[error("{action} {what}: {source}")]
    Kube {
        /// `apply`, `list`, `delete`, `patch the status of`, …
        action: &'static str,
        /// The object, `kind namespace/name`.
        what: String,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
    /// An object could not be rendered.
    #[error(transparent)]
    Render(#[from] RenderError),
    /// A flag is wrong.
    #[error("{0}")]
    Settings(String),
    /// No client could be made for the API server.
    #[error("cannot reach the Kubernetes API server ({0}); run in a cluster or set KUBECONFIG")]
    Connect(#[source] kube::Error),
}

/// `kind namespace/name` of `obj`.
fn what<K: Resource<DynamicType = ()>>(obj: &K) -> String {
    format!(
        "{} {}/{}",
        K::kind(&()),
        obj.namespace().unwrap_or_default(),
        obj.name_any()
    )
}

/// Applies `obj` in its namespace: creates it, or makes the fields the operator owns what
/// they are here (taking them from any other manager).
pub async fn apply<K>(client: &kube::Client, obj: &K) -> Result<(), OperatorError>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Serialize
        + DeserializeOwned
        + Clone
        + Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), &obj.namespace().unwrap_or_default());
    let params = PatchParams::apply(MANAGER).force();
    api.patch(&obj.name_any(), &params, &Patch::Apply(obj))
        .await
        .map(|_| ())
        .map_err(|source| OperatorError::Kube {
            action: "apply",
            what: what(obj),
            source,
        })
}

/// Brings a job's objects to what its spec says. A job that ended is left alone, even when
/// its pod is gone (a completed job is not run again).
pub async fn reconcile_job(
    job: Arc<SetpointJob>,
    ctx: Arc<Context>,
) -> Result<Action, OperatorError> {
    let phase = job.status.as_ref().and_then(|s| s.phase);
    if matches!(phase, Some(JobPhase::Completed | JobPhase::Failed)) {
        return Ok(Action::await_change());
    }
    let objs = match render::job_objects(&job, &ctx.settings) {
        Ok(o) => o,
        Err(e) => {
            status::refuse_job(&ctx.client, &job, &e).await?;
            return Ok(Action::await_change());
        }
    };
    apply(&ctx.client, &objs.template).await?;
    apply(&ctx.client, &objs.pod).await?;
    Ok(Action::requeue(Duration::from_secs(600)))
}

/// Brings a service's objects to what its spec says, replacing pods that failed (each new
/// pod gets a new claim, which the node prepares again).
pub async fn reconcile_service(
    svc: Arc<SetpointService>,
    ctx: Arc<Context>,
) -> Result<Action, OperatorError> {
    let objs = match render::service_objects(&svc, &ctx.settings) {
        Ok(o) => o,
        Err(e) => {
            status::refuse_service(&ctx.client, &svc, &e).await?;
            return Ok(Action::await_change());
        }
    };
    apply(&ctx.client, &objs.template).await?;
    apply(&ctx.client, &objs.service).await?;
    let ns = svc.namespace().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let selector = format!("{SERVICE_LABEL}={}", names::dns_label(&svc.name_any()));
    let existing = pods
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|source| OperatorError::Kube {
            action: "list the pods of",
            what: what(svc.as_ref()),
            source,
        })?;
    let uid = svc.uid();
    let mut leaving = Vec::new();
    for p in existing
        .items
        .iter()
        .filter(|p| owned_by(*p, uid.as_deref()))
    {
        if p.metadata.deletion_timestamp.is_some() {
            leaving.push(p.name_any());
        } else if pod_phase(p) == Some("Failed") {
            delete_pod(&pods, p).await?;
            leaving.push(p.name_any());
        }
    }
    // A pod on its way out is created again once it is gone (its deletion wakes this up).
    for pod in objs
        .pods
        .iter()
        .filter(|p| !leaving.contains(&p.name_any()))
    {
        apply(&ctx.client, pod).await?;
    }
    Ok(Action::requeue(Duration::from_secs(600)))
}

async fn delete_pod(pods: &Api<Pod>, p: &Pod) -> Result<(), OperatorError> {
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: p.uid(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    tracing::info!(pod = %p.name_any(), "replacing a failed service pod");
    match pods.delete(&p.name_any(), &params).await {
        Ok(_) => Ok(()),
        // Gone already, or replaced meanwhile: nothing left to do.
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(()),
        Err(source) => Err(OperatorError::Kube {
            action: "delete",
            what: what(p),
            source,
        }),
    }
}

/// Whether `obj`'s controller is the object with `uid`.
pub fn owned_by<K: Resource>(obj: &K, uid: Option<&str>) -> bool {
    uid.is_some()
        && obj
            .meta()
            .owner_references
            .iter()
            .flatten()
            .any(|o| o.controller == Some(true) && Some(o.uid.as_str()) == uid)
}

/// A pod's phase.
pub fn pod_phase(p: &Pod) -> Option<&str> {
    p.status.as_ref()?.phase.as_deref()
}

/// After a failed reconcile: logged, and tried again in a while.
fn error_policy<K: Resource<DynamicType = ()>>(
    obj: Arc<K>,
    e: &OperatorError,
    _: Arc<Context>,
) -> Action {
    // Each variant's text names its cause already.
    tracing::warn!(object = %what(obj.as_ref()), "reconcile failed: {e}");
    Action::requeue(Duration::from_secs(15))
}

/// The APIs to watch: one namespace's, or every namespace's.
fn api<K>(client: &kube::Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Runs the operator until SIGTERM or Ctrl-C: both controllers and the status writer.
pub async fn run(settings: Settings) -> Result<(), OperatorError> {
    settings.check().map_err(OperatorError::Settings)?;
    let client = kube::Client::try_default()
        .await
        .map_err(OperatorError::Connect)?;
    let ctx = Arc::new(Context::new(client.clone(), settings));
    let ns = ctx.settings.namespace.as_deref();
    let ours = watcher::Config::default().labels(&format!("{MANAGED_BY}={MANAGER}"));
    let config = ControllerConfig::default().debounce(Duration::from_secs(1));

    let jobs = Controller::new(api::<SetpointJob>(&client, ns), watcher::Config::default())
        .owns(api::<Pod>(&client, ns), ours.clone())
        .owns(api::<ResourceClaimTemplate>(&client, ns), ours.clone())
        .with_config(config.clone())
        .shutdown_on_signal();
    let services = Controller::new(
        api::<SetpointService>(&client, ns),
        watcher::Config::default(),
    )
    .owns(api::<Pod>(&client, ns), ours.clone())
    .owns(api::<ResourceClaimTemplate>(&client, ns), ours.clone())
    .owns(api::<Service>(&client, ns), ours.clone())
    .with_config(config)
    .shutdown_on_signal();
    let job_store = jobs.store();
    let service_store = services.store();
    let (pod_store, pod_writer) = reflector::store();
    let pod_watch = watcher(api::<Pod>(&client, ns), ours)
        .default_backoff()
        .reflect(pod_writer)
        .for_each(|_| std::future::ready(()));

    let jobs = jobs
        .run(reconcile_job, error_policy, ctx.clone())
        .for_each(|_| std::future::ready(()));
    let services = services
        .run(reconcile_service, error_policy, ctx.clone())
        .for_each(|_| std::future::ready(()));
    let writer = status::writer_task(ctx.clone(), job_store, service_store, pod_store);
    tracing::info!(
        namespace = ns.unwrap_or("(all)"),
        driver = %ctx.settings.driver,
        "setpoint operator started"
    );
    // The controllers end on SIGTERM; the watch and the writer go with them.
    tokio::select! {
        _ = futures_util::future::join(jobs, services) => {}
        _ = pod_watch => {}
        _ = writer => {}
    }
    tracing::info!("setpoint operator stopped");
    Ok(())
}
