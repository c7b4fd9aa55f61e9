//! The status writer: every `--status-interval` it reads each tenant's state from its node's
//! daemon (one `GET /v1/status` per node), turns it with what the pods say into each custom
//! resource's status, and patches the status subresource where it changed (server-side
//! apply, so a field the operator no longer sets is cleared). A service's EndpointSlices
//! follow the same reading: a replica is routed to once its node says the model serves.

use std::sync::Arc;
use std::time::SystemTime;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::Store;
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde_json::json;

use super::crd::{
    JobPhase, ReplicaStatus, ServicePhase, SetpointJob, SetpointJobStatus, SetpointService,
    SetpointServiceStatus,
};
use super::endpoints::{Target, endpoint_slices};
use super::observe::{self, Observation};
use super::reconcile::{Context, OperatorError, apply, owned_by};
use super::render::{self, MANAGER, Owner, RenderError, replicas, service_name};
use crate::node::{TenantKind, TenantState};

/// Writes statuses every interval until the operator stops.
pub async fn writer_task(
    ctx: Arc<Context>,
    jobs: Store<SetpointJob>,
    services: Store<SetpointService>,
    pods: Store<Pod>,
) {
    let mut tick = tokio::time::interval(ctx.settings.status_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let pods: Vec<Pod> = pods.state().iter().map(|p| p.as_ref().clone()).collect();
        let report = pass(&ctx, &jobs.state(), &services.state(), &pods).await;
        for e in &report.errors {
            tracing::warn!("status: {e}");
        }
    }
}

/// What one pass did.
#[derive(Debug, Default)]
pub struct PassReport {
    /// Statuses patched.
    pub written: usize,
    /// What could not be written, one line each.
    pub errors: Vec<String>,
}

/// One pass over every job and service, with `pods` the operator's pods.
pub async fn pass(
    ctx: &Context,
    jobs: &[Arc<SetpointJob>],
    services: &[Arc<SetpointService>],
    pods: &[Pod],
) -> PassReport {
    let nodes = observe::read_nodes(&ctx.reader, observe::hosts(pods.iter())).await;
    let mut report = PassReport::default();
    // A refused spec's status is the reconciler's (it says why); nothing runs to measure.
    for job in jobs {
        if render::job_objects(job, &ctx.settings).is_err() {
            continue;
        }
        let owned = newest(pods.iter().filter(|p| owned_by(*p, job.uid().as_deref())));
        let tenant = tenant_of(job.as_ref());
        let obs = match owned {
            Some(p) => Some(
                observe::observe(
                    &ctx.client,
                    &ctx.reader,
                    &nodes,
                    p,
                    TenantKind::Job,
                    &tenant,
                )
                .await,
            ),
            None => None,
        };
        let status = job_status(&tenant, obs.as_ref(), job.status.as_ref());
        note(
            &mut report,
            write_if_changed(ctx, job.as_ref(), &status, job.status.as_ref()).await,
        );
    }
    for svc in services {
        if render::service_objects(svc, &ctx.settings).is_err() {
            continue;
        }
        let tenant = tenant_of(svc.as_ref());
        let mut seen = Vec::new();
        let mut owned: Vec<&Pod> = pods
            .iter()
            .filter(|p| owned_by(*p, svc.uid().as_deref()))
            .collect();
        owned.sort_by_key(|p| p.name_any());
        for p in owned {
            seen.push(
                observe::observe(
                    &ctx.client,
                    &ctx.reader,
                    &nodes,
                    p,
                    TenantKind::Service,
                    &tenant,
                )
                .await,
            );
        }
        let status = service_status(svc, &tenant, &seen);
        if let Err(e) = route(ctx, svc, &seen).await {
            report.errors.push(e.to_string());
        }
        note(
            &mut report,
            write_if_changed(ctx, svc.as_ref(), &status, svc.status.as_ref()).await,
        );
    }
    report
}

fn note(report: &mut PassReport, r: Result<bool, OperatorError>) {
    match r {
        Ok(true) => report.written += 1,
        Ok(false) => {}
        Err(e) => report.errors.push(e.to_string()),
    }
}

/// The most recently created of `pods`.
fn newest<'a>(pods: impl Iterator<Item = &'a Pod>) -> Option<&'a Pod> {
    pods.max_by_key(|p| p.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

fn tenant_of<K: Resource<DynamicType = ()>>(obj: &K) -> String {
    super::names::tenant_name(&obj.namespace().unwrap_or_default(), &obj.name_any())
}

/// Rounds a figure to `places` decimals, so that noise below what anyone reads does not
/// rewrite the status. Dividing by a power of ten, not multiplying by its inverse, gives the
/// nearest double to the decimal (3.2, not 3.2000000000000002).
fn round(v: Option<f64>, places: i32) -> Option<f64> {
    let scale = 10f64.powi(places);
    v.filter(|x| x.is_finite())
        .map(|x| (x * scale).round() / scale)
}

/// A tenant state as the API spells it (`running`, `ready`).
fn state_word(s: TenantState) -> String {
    serde_json::to_value(s)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// A job's status from its pod and node, keeping what was last known where neither says
/// more now (a node forgets a tenant whose claim was released).
pub fn job_status(
    tenant: &str,
    obs: Option<&Observation>,
    previous: Option<&SetpointJobStatus>,
) -> SetpointJobStatus {
    let mut s = previous.cloned().unwrap_or_default();
    s.updated_at = None;
    s.tenant = Some(tenant.to_string());
    let Some(o) = obs else {
        if !matches!(s.phase, Some(JobPhase::Completed | JobPhase::Failed)) {
            s.phase = Some(JobPhase::Pending);
            s.message = Some("waiting for the tenant pod to be created".into());
        }
        return s;
    };
    s.node = o.node.clone().or(s.node);
    if let Some(v) = &o.view {
        s.state = Some(state_word(v.state));
        s.progress = round(v.figures.progress, 4);
        s.slack_seconds = round(v.figures.slack_s, 1);
        s.accuracy = round(v.figures.accuracy, 4);
        s.share = round(Some(v.share), 4);
        s.deadline = v.deadline.clone();
        s.outcome = v.outcome.and_then(|x| x.describe());
    }
    let node_phase = o.view.as_ref().map(|v| match v.state {
        TenantState::Completed => JobPhase::Completed,
        TenantState::Failed | TenantState::Cancelled => JobPhase::Failed,
        _ => JobPhase::Running,
    });
    let measured = o.view.as_ref().and_then(|v| v.measured.clone());
    (s.phase, s.message) =
        match o.phase.as_str() {
            "Pending" => (
                Some(JobPhase::Pending),
                Some(o.waiting.clone().unwrap_or_else(|| {
                    "waiting for a node to allocate and prepare its claim".into()
                })),
            ),
            "Running" => (
                node_phase
                    .or(s.phase.filter(|p| *p != JobPhase::Pending))
                    .or(Some(JobPhase::Running)),
                o.problem().or(measured),
            ),
            "Succeeded" => (
                Some(JobPhase::Completed),
                measured.or(o.ended.clone()).or(Some("completed".into())),
            ),
            "Failed" => (
                Some(JobPhase::Failed),
                o.problem().or(Some("the tenant pod failed".into())),
            ),
            other => (
                Some(JobPhase::Pending),
                Some(format!("the tenant pod is {other}")),
            ),
        };
    s
}

/// A service's status from its replicas' pods and nodes.
pub fn service_status(
    svc: &SetpointService,
    tenant: &str,
    seen: &[Observation],
) -> SetpointServiceStatus {
    let wanted = replicas(&svc.spec);
    let ready: Vec<&Observation> = seen.iter().filter(|o| o.serving()).collect();
    let ready_count = ready.len() as u32;
    let p99 = ready
        .iter()
        .filter_map(|o| o.view.as_ref()?.figures.p99_ms)
        .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))));
    let rates: Vec<f64> = seen
        .iter()
        .filter_map(|o| o.view.as_ref()?.figures.rows_per_s)
        .collect();
    let failed = seen.iter().filter(|o| o.failed()).count() as u32;
    let phase = if ready_count >= wanted {
        ServicePhase::Ready
    } else if ready_count > 0 {
        ServicePhase::Degraded
    } else if failed >= wanted {
        ServicePhase::Failed
    } else {
        ServicePhase::Pending
    };
    let problems: Vec<String> = seen
        .iter()
        .filter_map(|o| Some(format!("{}: {}", o.pod, o.problem()?)))
        .collect();
    SetpointServiceStatus {
        phase: Some(phase),
        tenant: Some(tenant.to_string()),
        service: Some(service_name(&svc.name_any())),
        ready_replicas: ready_count,
        p99_ms: round(p99, 2),
        p99_of_slo: round(p99.map(|p| p / svc.spec.slo.p99_ms), 3),
        rate_per_s: round((!rates.is_empty()).then(|| rates.iter().sum()), 1),
        replicas: seen.iter().map(replica_status).collect(),
        message: if problems.is_empty() {
            (seen.len() < wanted as usize)
                .then(|| "waiting for the tenant pods to be created".into())
        } else {
            Some(problems.join("; "))
        },
        updated_at: None,
    }
}

fn replica_status(o: &Observation) -> ReplicaStatus {
    let v = o.view.as_ref();
    ReplicaStatus {
        pod: o.pod.clone(),
        node: o.node.clone(),
        state: Some(v.map_or_else(|| o.phase.to_ascii_lowercase(), |v| state_word(v.state))),
        p99_ms: round(v.and_then(|v| v.figures.p99_ms), 2),
        rate_per_s: round(v.and_then(|v| v.figures.rows_per_s), 1),
        share: round(v.map(|v| v.share), 4),
    }
}

/// Applies the service's EndpointSlices where they changed since last applied.
async fn route(
    ctx: &Context,
    svc: &SetpointService,
    seen: &[Observation],
) -> Result<(), OperatorError> {
    let owner = Owner::of(svc)?;
    let targets: Vec<Target> = seen
        .iter()
        .filter(|o| o.phase == "Running")
        .filter_map(|o| {
            Some(Target {
                address: o.host?,
                node: o.node.clone(),
                pod: o.pod.clone(),
                pod_uid: o.pod_uid.clone(),
                ready: o.serving(),
            })
        })
        .collect();
    for slice in endpoint_slices(&owner, &targets, ctx.settings.daemon_port) {
        let key = format!("{}/{}", owner.namespace, slice.name_any());
        let value = serde_json::to_value(&slice).unwrap_or_default();
        let same = crate::util::sync::lock(&ctx.slices).get(&key) == Some(&value);
        if !same {
            apply(&ctx.client, &slice).await?;
            crate::util::sync::lock(&ctx.slices).insert(key, value);
        }
    }
    Ok(())
}

/// Patches `obj`'s status to `status` unless it already says that (the time aside); true
/// when written.
async fn write_if_changed<K, S>(
    ctx: &Context,
    obj: &K,
    status: &S,
    current: Option<&S>,
) -> Result<bool, OperatorError>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + serde::de::DeserializeOwned
        + Clone
        + std::fmt::Debug,
    S: Serialize + Clone + PartialEq + Stamped,
{
    let unchanged = current.is_some_and(|c| {
        let mut c = c.clone();
        c.set_updated_at(None);
        c == *status
    });
    if unchanged {
        return Ok(false);
    }
    let mut status = status.clone();
    status.set_updated_at(Some(crate::config::format_rfc3339(SystemTime::now())));
    write_status(&ctx.client, obj, &status).await?;
    Ok(true)
}

/// A status with an `updatedAt`.
pub trait Stamped {
    /// Sets it.
    fn set_updated_at(&mut self, at: Option<String>);
}

impl Stamped for SetpointJobStatus {
    fn set_updated_at(&mut self, at: Option<String>) {
        self.updated_at = at;
    }
}

impl Stamped for SetpointServiceStatus {
    fn set_updated_at(&mut self, at: Option<String>) {
        self.updated_at = at;
    }
}

/// Applies `status` to `obj`'s status subresource.
pub async fn write_status<K, S>(
    client: &kube::Client,
    obj: &K,
    status: &S,
) -> Result<(), OperatorError>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + serde::de::DeserializeOwned
        + Clone
        + std::fmt::Debug,
    S: Serialize,
{
    let api: Api<K> = Api::namespaced(client.clone(), &obj.namespace().unwrap_or_default());
    let patch = json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    let params = PatchParams::apply(MANAGER).force();
    api.patch_status(&obj.name_any(), &params, &Patch::Apply(&patch))
        .await
        .map(|_| ())
        .map_err(|source| OperatorError::Kube {
            action: "patch the status of",
            what: format!(
                "{} {}/{}",
                K::kind(&()),
                obj.namespace().unwrap_or_default(),
                obj.name_any()
            ),
            source,
        })
}

/// Says in a job's status why it was refused.
pub async fn refuse_job(
    client: &kube::Client,
    job: &SetpointJob,
    e: &RenderError,
) -> Result<(), OperatorError> {
    let status = SetpointJobStatus {
        phase: Some(JobPhase::Failed),
        message: Some(e.to_string()),
        updated_at: Some(crate::config::format_rfc3339(SystemTime::now())),
        ..SetpointJobStatus::default()
    };
    write_status(client, job, &status).await
}

/// Says in a service's status why it was refused.
pub async fn refuse_service(
    client: &kube::Client,
    svc: &SetpointService,
    e: &RenderError,
) -> Result<(), OperatorError> {
    let status = SetpointServiceStatus {
        phase: Some(ServicePhase::Failed),
        message: Some(e.to_string()),
        updated_at: Some(crate::config::format_rfc3339(SystemTime::now())),
        ..SetpointServiceStatus::default()
    };
    write_status(client, svc, &status).await
}
