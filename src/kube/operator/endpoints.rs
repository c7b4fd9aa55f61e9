//! The EndpointSlices behind a service's Kubernetes Service: one endpoint per replica, at its
//! node's address and the daemon's port, ready when the node says the model serves.
//!
//! Why the nodes and not the pods: the daemon on the node is the server (v2 inference, binary
//! tensors, batching, the SLO it measures), and the tenant pod only holds the claim. Routing
//! through the pod would add a proxy hop and a copy to every request, and the p99 the node
//! measures would no longer be the one clients see. The Service has no selector, so the
//! EndpointSlice controller leaves these slices to the operator.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::names;
use super::render::{Owner, SERVICE_LABEL, service_name};

/// `endpointslice.kubernetes.io/managed-by` of the operator's slices (not the EndpointSlice
/// controller's, which would otherwise take them over).
pub const SLICE_MANAGER: &str = "setpoint-operator.setpoint.dev";

/// One replica as a route target.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// Its node's address (the pod's `status.hostIP`).
    pub address: IpAddr,
    /// Its node.
    pub node: Option<String>,
    /// Its pod's name.
    pub pod: String,
    /// Its pod's uid.
    pub pod_uid: Option<String>,
    /// Whether the node serves the model now.
    pub ready: bool,
}

/// The name of the slice of one address family.
pub fn slice_name(owner_name: &str, family: &str) -> String {
    names::dns_label_with(owner_name, family)
}

/// The two slices (IPv4 and IPv6; either may be empty) for `targets`, the daemons listening
/// on `port`.
pub fn endpoint_slices(owner: &Owner, targets: &[Target], port: u16) -> [EndpointSlice; 2] {
    [("IPv4", "ipv4"), ("IPv6", "ipv6")].map(|(kind, family)| {
        let endpoints = targets
            .iter()
            .filter(|t| t.address.is_ipv4() == (family == "ipv4"))
            .map(|t| endpoint(owner, t))
            .collect();
        let mut labels = owner.labels(SERVICE_LABEL);
        labels.extend(BTreeMap::from([
            (
                "kubernetes.io/service-name".to_string(),
                service_name(&owner.name),
            ),
            (
                "endpointslice.kubernetes.io/managed-by".to_string(),
                SLICE_MANAGER.to_string(),
            ),
        ]));
        EndpointSlice {
            metadata: ObjectMeta {
                name: Some(slice_name(&owner.name, family)),
                namespace: Some(owner.namespace.clone()),
                labels: Some(labels),
                owner_references: Some(vec![owner.reference()]),
                ..ObjectMeta::default()
            },
            address_type: kind.into(),
            endpoints,
            ports: Some(vec![EndpointPort {
                name: Some("http".into()),
                port: Some(i32::from(port)),
                protocol: Some("TCP".into()),
                ..EndpointPort::default()
            }]),
        }
    })
}

fn endpoint(owner: &Owner, t: &Target) -> Endpoint {
    Endpoint {
        addresses: vec![t.address.to_string()],
        conditions: Some(EndpointConditions {
            ready: Some(t.ready),
            serving: Some(t.ready),
            terminating: Some(false),
        }),
        node_name: t.node.clone(),
        target_ref: Some(ObjectReference {
            kind: Some("Pod".into()),
            name: Some(t.pod.clone()),
            namespace: Some(owner.namespace.clone()),
            uid: t.pod_uid.clone(),
            ..ObjectReference::default()
        }),
        ..Endpoint::default()
    }
}
