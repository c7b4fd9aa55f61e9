//! What the status writer sees of one tenant pod: its phase and node, what its node's daemon
//! says of the tenant, and, when something is wrong, why (the scheduler's condition, the
//! kubelet's warning events such as a failed Prepare, the container's last words).

use std::collections::HashMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::ListParams;
use kube::{Api, ResourceExt};

use super::node_read::{NodeAnswer, NodeReader};
use crate::node::{TenantKind, TenantState, TenantView};

/// One tenant pod as seen in one pass.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observation {
    /// Its name.
    pub pod: String,
    /// Its uid.
    pub pod_uid: Option<String>,
    /// `Pending`, `Running`, `Succeeded`, `Failed` (or `Unknown`).
    pub phase: String,
    /// The node it was placed on.
    pub node: Option<String>,
    /// That node's address.
    pub host: Option<IpAddr>,
    /// The tenant as its node shows it.
    pub view: Option<TenantView>,
    /// Why the node could not be read, or does not know the tenant.
    pub read_error: Option<String>,
    /// Why the tenant failed, as its node says it.
    pub error: Option<String>,
    /// Why a pending pod waits: the scheduler's word or the kubelet's latest warning.
    pub waiting: Option<String>,
    /// How an ended pod ended: its container's message, or the pod's.
    pub ended: Option<String>,
}

impl Observation {
    /// Whether the node serves the tenant (a service ready, a job admitted and not ended).
    pub fn serving(&self) -> bool {
        self.phase == "Running"
            && self
                .view
                .as_ref()
                .is_some_and(|v| matches!(v.state, TenantState::Ready))
    }

    /// Whether the tenant failed, by its node's word or its pod's end.
    pub fn failed(&self) -> bool {
        self.phase == "Failed"
            || self
                .view
                .as_ref()
                .is_some_and(|v| matches!(v.state, TenantState::Failed | TenantState::Cancelled))
    }

    /// What went wrong or what the pod waits for, first what matters most.
    pub fn problem(&self) -> Option<String> {
        self.error
            .clone()
            .or_else(|| self.read_error.clone())
            .or_else(|| self.waiting.clone())
            .or_else(|| {
                (self.phase == "Failed")
                    .then(|| self.ended.clone())
                    .flatten()
            })
    }
}

/// The addresses of the nodes whose daemons should be read: those of running pods.
pub fn hosts<'a>(pods: impl Iterator<Item = &'a Pod>) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = pods
        .filter(|p| super::reconcile::pod_phase(p) == Some("Running"))
        .filter_map(host)
        .collect();
    out.sort();
    out.dedup();
    out
}

fn host(p: &Pod) -> Option<IpAddr> {
    p.status.as_ref()?.host_ip.as_deref()?.parse().ok()
}

/// Reads every node in `hosts` at once.
pub async fn read_nodes(reader: &NodeReader, hosts: Vec<IpAddr>) -> HashMap<IpAddr, NodeAnswer> {
    let reads = hosts
        .into_iter()
        .map(|h| async move { (h, reader.tenants(h).await) });
    futures_util::future::join_all(reads)
        .await
        .into_iter()
        .collect()
}

/// What is known of `pod`, whose tenant is `kind` `tenant`.
pub async fn observe(
    client: &kube::Client,
    reader: &NodeReader,
    nodes: &HashMap<IpAddr, NodeAnswer>,
    pod: &Pod,
    kind: TenantKind,
    tenant: &str,
) -> Observation {
    let mut o = Observation {
        pod: pod.name_any(),
        pod_uid: pod.uid(),
        phase: super::reconcile::pod_phase(pod)
            .unwrap_or("Pending")
            .to_string(),
        node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
        host: host(pod),
        ..Observation::default()
    };
    if let (Some(h), "Running" | "Succeeded") = (o.host, o.phase.as_str()) {
        match nodes.get(&h) {
            Some(Ok(tenants)) => {
                o.view = tenants.get(&(kind, tenant.to_string())).cloned();
                if o.view.is_none() && o.phase == "Running" {
                    o.read_error = Some(format!(
                        "node {} does not list tenant {tenant}",
                        o.node.as_deref().unwrap_or("?")
                    ));
                }
            }
            Some(Err(e)) => o.read_error = Some(e.clone()),
            None => {}
        }
    }
    if let (Some(h), true) = (o.host, o.failed() && o.view.is_some()) {
        o.error = reader.error(h, kind, tenant).await;
    }
    if o.phase == "Pending" {
        o.waiting = waiting(client, pod).await;
    }
    if matches!(o.phase.as_str(), "Failed" | "Succeeded") {
        o.ended = ended(pod);
    }
    o
}

/// Why a pending pod waits: not scheduled (the scheduler's message: no node could allocate
/// its claim), or scheduled and not started (the kubelet's latest warning: a Prepare the node
/// refused names the reason there).
async fn waiting(client: &kube::Client, pod: &Pod) -> Option<String> {
    let status = pod.status.as_ref();
    let unscheduled = status
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .find(|c| c.type_ == "PodScheduled" && c.status == "False");
    if let Some(c) = unscheduled {
        let why = c.message.clone().or_else(|| c.reason.clone())?;
        return Some(format!("not scheduled: {why}"));
    }
    let events: Api<Event> = Api::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
    let selector = format!(
        "involvedObject.kind=Pod,involvedObject.name={}",
        pod.name_any()
    );
    let list = match events.list(&ListParams::default().fields(&selector)).await {
        Ok(l) => l,
        Err(e) => return Some(format!("cannot read the pod's events: {e}")),
    };
    let uid = pod.uid();
    list.items
        .into_iter()
        .filter(|e| e.type_.as_deref() == Some("Warning"))
        .filter(|e| uid.is_none() || e.involved_object.uid == uid)
        .max_by_key(|e| {
            e.last_timestamp
                .as_ref()
                .map(|t| t.0)
                .or(e.event_time.as_ref().map(|t| t.0))
        })
        .map(|e| {
            format!(
                "{}: {}",
                e.reason.unwrap_or_default(),
                e.message.unwrap_or_default()
            )
        })
}

/// How an ended pod ended: its container's termination message (its last log lines when it
/// failed), else the pod's own message or reason.
fn ended(pod: &Pod) -> Option<String> {
    let status = pod.status.as_ref()?;
    let terminated = status
        .container_statuses
        .iter()
        .flatten()
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref())
        .next();
    if let Some(t) = terminated {
        let text = t
            .message
            .as_deref()
            .map(str::trim)
            .filter(|m| !m.is_empty())
            .map(str::to_string)
            .unwrap_or_else(|| {
                format!(
                    "exited {} ({})",
                    t.exit_code,
                    t.reason.as_deref().unwrap_or("no reason given")
                )
            });
        return Some(last_line(&text));
    }
    status.message.clone().or_else(|| status.reason.clone())
}

/// The last non-empty line of `text` (a log's verdict), at most 512 characters.
fn last_line(text: &str) -> String {
    let line = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or(text)
        .trim();
    line.chars().take(512).collect()
}
