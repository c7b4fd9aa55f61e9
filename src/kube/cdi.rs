//! The CDI device a prepared claim gives its pod: a spec file in the runtime's CDI
//! directory whose only edit is the environment that tells the tenant's containers where
//! their node's daemon is and which tenant is theirs.
//!
//! One file per claim, `<driver>-tenant_<uid>.json`, holding one device named by the claim's
//! UID; its fully qualified name, `<driver>/tenant=<uid>`, is what Prepare returns.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::node::TenantKind;

/// The CDI specification version written (environment edits need nothing newer).
pub const CDI_VERSION: &str = "0.6.0";

/// What a tenant's containers are told.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantEnv {
    /// The daemon's URL (`SETPOINT_ENDPOINT`).
    pub endpoint: String,
    /// The tenant's name (`SETPOINT_TENANT`).
    pub tenant: String,
    /// Job or service (`SETPOINT_TENANT_KIND`).
    pub kind: TenantKind,
    /// The node's device it runs on (`SETPOINT_DEVICE`).
    pub device: String,
}

impl TenantEnv {
    /// `KEY=value` lines, as CDI's `containerEdits.env` takes them.
    pub fn lines(&self) -> Vec<String> {
        let kind = match self.kind {
            TenantKind::Job => "job",
            TenantKind::Service => "service",
        };
        vec![
            format!("SETPOINT_ENDPOINT={}", self.endpoint),
            format!("SETPOINT_TENANT={}", self.tenant),
            format!("SETPOINT_TENANT_KIND={kind}"),
            format!("SETPOINT_DEVICE={}", self.device),
        ]
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Spec<'a> {
    cdi_version: &'a str,
    kind: String,
    devices: [SpecDevice<'a>; 1],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SpecDevice<'a> {
    name: &'a str,
    container_edits: Edits,
}

#[derive(Serialize)]
struct Edits {
    env: Vec<String>,
}

/// The CDI kind of the driver's devices.
pub fn kind(driver: &str) -> String {
    format!("{driver}/tenant")
}

/// The fully qualified CDI name of a claim's device.
pub fn device_id(driver: &str, uid: &str) -> String {
    format!("{}={uid}", kind(driver))
}

/// The spec file of a claim.
pub fn spec_path(dir: &Path, driver: &str, uid: &str) -> PathBuf {
    dir.join(format!("{driver}-tenant_{uid}.json"))
}

/// Writes (atomically) the spec of claim `uid`'s device; returns its fully qualified name.
pub fn write(dir: &Path, driver: &str, uid: &str, env: &TenantEnv) -> std::io::Result<String> {
    std::fs::create_dir_all(dir)?;
    let spec = Spec {
        cdi_version: CDI_VERSION,
        kind: kind(driver),
        devices: [SpecDevice {
            name: uid,
            container_edits: Edits { env: env.lines() },
        }],
    };
    let bytes = serde_json::to_vec_pretty(&spec).map_err(std::io::Error::other)?;
    crate::util::fsio::write_atomic(&spec_path(dir, driver, uid), &bytes)?;
    Ok(device_id(driver, uid))
}

/// Removes claim `uid`'s spec; one already gone is not an error.
pub fn remove(dir: &Path, driver: &str, uid: &str) -> std::io::Result<()> {
    match std::fs::remove_file(spec_path(dir, driver, uid)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claims_spec_holds_its_environment_and_goes_away() {
        let dir = tempfile::tempdir().unwrap();
        let env = TenantEnv {
            endpoint: "http://10.0.0.7:8000".into(),
            tenant: "mlp".into(),
            kind: TenantKind::Service,
            device: "cuda:0".into(),
        };
        let id = write(dir.path(), "gpu.setpoint.dev", "u-1", &env).unwrap();
        assert_eq!(id, "gpu.setpoint.dev/tenant=u-1");
        let path = dir.path().join("gpu.setpoint.dev-tenant_u-1.json");
        let spec: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(
            spec,
            serde_json::json!({
                "cdiVersion": "0.6.0",
                "kind": "gpu.setpoint.dev/tenant",
                "devices": [{"name": "u-1", "containerEdits": {"env": [
                    "SETPOINT_ENDPOINT=http://10.0.0.7:8000",
                    "SETPOINT_TENANT=mlp",
                    "SETPOINT_TENANT_KIND=service",
                    "SETPOINT_DEVICE=cuda:0",
                ]}}]
            })
        );
        remove(dir.path(), "gpu.setpoint.dev", "u-1").unwrap();
        assert!(!path.exists());
        remove(dir.path(), "gpu.setpoint.dev", "u-1").unwrap();
    }
}
