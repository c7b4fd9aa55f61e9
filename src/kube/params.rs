//! The opaque parameters a claim carries for setpoint's driver: the tenant to admit when the
//! claim is prepared. The operator writes them into a ResourceClaimTemplate's
//! `spec.spec.devices.config[].opaque.parameters`; the node reads them back when the kubelet
//! asks it to prepare the claim.
//!
//! ```json
//! {"apiVersion": "gpu.setpoint.dev/v1", "kind": "TenantParameters",
//!  "service": {"name": "mlp", "checkpoint": "/models/mlp.ckpt", "slo": {"p99_ms": 25}}}
//! ```
//!
//! `job` holds a job's spec as `POST /v1/jobs` takes it, `service` a service's as
//! `POST /v1/services` takes it; exactly one of the two.

use serde::{Deserialize, Serialize};

/// `apiVersion` of the parameters.
pub const API_VERSION: &str = "gpu.setpoint.dev/v1";
/// `kind` of the parameters.
pub const KIND: &str = "TenantParameters";

/// The parameters as they travel. The tenant's spec stays JSON here because the node checks
/// it with the same schema as the HTTP API (which names every problem by its key).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantParameters {
    /// [`API_VERSION`].
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    /// [`KIND`].
    pub kind: String,
    /// A training job's spec, as `POST /v1/jobs` takes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<serde_json::Map<String, serde_json::Value>>,
    /// An inference service's spec, as `POST /v1/services` takes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<serde_json::Map<String, serde_json::Value>>,
}

/// Which kind of tenant the parameters ask for, with its spec.
#[derive(Debug, Clone, PartialEq)]
pub enum TenantSpec {
    /// A training job.
    Job(serde_json::Map<String, serde_json::Value>),
    /// An inference service.
    Service(serde_json::Map<String, serde_json::Value>),
}

impl TenantParameters {
    /// Parameters for `spec`.
    pub fn new(spec: TenantSpec) -> Self {
        let (job, service) = match spec {
            TenantSpec::Job(j) => (Some(j), None),
            TenantSpec::Service(s) => (None, Some(s)),
        };
        TenantParameters {
            api_version: API_VERSION.into(),
            kind: KIND.into(),
            job,
            service,
        }
    }

    /// The tenant they ask for, or what is wrong with them.
    pub fn into_spec(self) -> Result<TenantSpec, String> {
        if self.api_version != API_VERSION || self.kind != KIND {
            return Err(format!(
                "parameters are {}/{}; this driver takes apiVersion {API_VERSION:?}, kind {KIND:?}",
                self.api_version, self.kind
            ));
        }
        match (self.job, self.service) {
            (Some(j), None) => Ok(TenantSpec::Job(j)),
            (None, Some(s)) => Ok(TenantSpec::Service(s)),
            (Some(_), Some(_)) => Err("parameters name both a job and a service; give one".into()),
            (None, None) => Err("parameters name no tenant; give \"job\" or \"service\"".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(text: &str) -> Result<TenantSpec, String> {
        serde_json::from_str::<TenantParameters>(text)
            .map_err(|e| e.to_string())?
            .into_spec()
    }

    #[test]
    fn a_job_or_a_service_and_nothing_else() {
        let ok =
            r#"{"apiVersion":"gpu.setpoint.dev/v1","kind":"TenantParameters","job":{"name":"a"}}"#;
        assert!(matches!(spec(ok), Ok(TenantSpec::Job(m)) if m["name"] == "a"));
        let both = r#"{"apiVersion":"gpu.setpoint.dev/v1","kind":"TenantParameters","job":{},"service":{}}"#;
        assert_eq!(
            spec(both).unwrap_err(),
            "parameters name both a job and a service; give one"
        );
        let none = r#"{"apiVersion":"gpu.setpoint.dev/v1","kind":"TenantParameters"}"#;
        assert!(
            spec(none)
                .unwrap_err()
                .contains("give \"job\" or \"service\"")
        );
        let kind = r#"{"apiVersion":"v1","kind":"ConfigMap","job":{}}"#;
        assert!(
            spec(kind)
                .unwrap_err()
                .contains("this driver takes apiVersion")
        );
        let extra = r#"{"apiVersion":"gpu.setpoint.dev/v1","kind":"TenantParameters","gpu":1}"#;
        assert!(spec(extra).unwrap_err().contains("unknown field `gpu`"));
    }

    #[test]
    fn they_travel_as_they_are_read() {
        let mut m = serde_json::Map::new();
        m.insert("name".into(), "svc".into());
        let p = TenantParameters::new(TenantSpec::Service(m.clone()));
        let back: TenantParameters =
            serde_json::from_value(serde_json::to_value(&p).unwrap()).unwrap();
        assert_eq!(back.into_spec(), Ok(TenantSpec::Service(m)));
    }
}
