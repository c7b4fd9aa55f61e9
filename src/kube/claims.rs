//! What preparing a claim means for this node, read from the ResourceClaim the kubelet names:
//! which of the node's devices the scheduler allocated, and the tenant its parameters ask
//! for. Pure: [`plan`] checks the claim and says what is wrong with it in words.

use k8s_openapi::api::resource::v1::{DeviceAllocationResult, ResourceClaim};
use serde::{Deserialize, Serialize};

use super::params::{TenantParameters, TenantSpec};
use super::slice::setpoint_device;

/// A claim as the kubelet names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ClaimRef {
    /// Its namespace.
    pub namespace: String,
    /// Its UID.
    pub uid: String,
    /// Its name.
    pub name: String,
}

impl std::fmt::Display for ClaimRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// One device the scheduler allocated to the claim from this node's pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocated {
    /// The claim's request it serves.
    pub request: String,
    /// The pool (the node's name).
    pub pool: String,
    /// The device as published (`cuda-0`, `cuda-0-unit-3`).
    pub device: String,
}

/// What preparing the claim does.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The allocated devices of this driver.
    pub allocated: Vec<Allocated>,
    /// The node's device the tenant runs on (`cuda:0`, `cpu`).
    pub device: String,
    /// The tenant to admit.
    pub tenant: TenantSpec,
}

/// Checks `claim` against what the kubelet asked (`r`) and this node (`driver`, `node`,
/// the node's device names), and reads its tenant.
pub fn plan(
    claim: &ResourceClaim,
    r: &ClaimRef,
    driver: &str,
    node: &str,
    devices: &[String],
) -> Result<Plan, String> {
    let uid = claim.metadata.uid.as_deref().unwrap_or_default();
    if uid != r.uid {
        return Err(format!(
            "claim {r} has UID {uid:?}, the kubelet asked for {:?} (it was deleted and made again)",
            r.uid
        ));
    }
    let result = claim
        .status
        .as_ref()
        .and_then(|s| s.allocation.as_ref())
        .and_then(|a| a.devices.as_ref())
        .ok_or_else(|| format!("claim {r} is not allocated"))?;
    let allocated = allocated_here(result, r, driver, node)?;
    let mut on: Vec<&str> = Vec::new();
    for a in &allocated {
        let d = setpoint_device(&a.device, devices).ok_or_else(|| {
            format!(
                "claim {r} was allocated device {}, which this node does not have (its devices: {})",
                a.device,
                devices.join(", ")
            )
        })?;
        if !on.contains(&d) {
            on.push(d);
        }
    }
    if on.len() > 1 {
        return Err(format!(
            "claim {r} was allocated parts of {}; a tenant runs on one device (constrain its \
             requests with matchAttribute \"{driver}/parent\")",
            on.join(" and ")
        ));
    }
    Ok(Plan {
        tenant: tenant(result, r, driver)?,
        device: on[0].to_string(),
        allocated,
    })
}

/// The results of `driver`, all from this node's pool.
fn allocated_here(
    result: &DeviceAllocationResult,
    r: &ClaimRef,
    driver: &str,
    node: &str,
) -> Result<Vec<Allocated>, String> {
    let mut out = Vec::new();
    for x in result
        .results
        .iter()
        .flatten()
        .filter(|x| x.driver == driver)
    {
        if x.pool != node {
            return Err(format!(
                "claim {r} was allocated {} from pool {}, not from this node ({node})",
                x.device, x.pool
            ));
        }
        out.push(Allocated {
            request: x.request.clone(),
            pool: x.pool.clone(),
            device: x.device.clone(),
        });
    }
    if out.is_empty() {
        return Err(format!("claim {r} has no device of driver {driver}"));
    }
    Ok(out)
}

/// The tenant of the last opaque configuration for `driver` (a claim's own configuration
/// comes after its class's, and a later one overrides an earlier one).
fn tenant(
    result: &DeviceAllocationResult,
    r: &ClaimRef,
    driver: &str,
) -> Result<TenantSpec, String> {
    let raw = result
        .config
        .iter()
        .flatten()
        .filter_map(|c| c.opaque.as_ref())
        .rfind(|o| o.driver == driver)
        .ok_or_else(|| {
            format!(
                "claim {r} has no parameters for driver {driver}: give the tenant as an opaque \
                 configuration ({{\"apiVersion\": \"{}\", \"kind\": \"{}\", \"job\" or \
                 \"service\": ...}})",
                super::params::API_VERSION,
                super::params::KIND
            )
        })?;
    let params: TenantParameters = serde_json::from_value(raw.parameters.0.clone())
        .map_err(|e| format!("claim {r}: its parameters: {e}"))?;
    params.into_spec().map_err(|e| format!("claim {r}: {e}"))
}

#[cfg(test)]
#[path = "claims_tests.rs"]
mod tests;
