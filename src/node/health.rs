//! Failed devices in the node. A device fails when one of its lanes meets a sticky error (or
//! a fault drill says so); it stays failed until the daemon restarts. Its jobs fail with the
//! device's error at their next operation (their checkpoints stay), its services answer 503
//! naming the device, the control loop gives its tenants nothing, and new tenants go to
//! another device or are refused. Everything here reads the devices' shared health, so every
//! view agrees from the moment a device fails.

use serde::{Deserialize, Serialize};

use super::{DeviceId, LoadedService, Node, NodeError, ServiceView};
use crate::device::DeviceError;
use crate::device::fault::HealthState;

/// Whether a device runs work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceState {
    /// It runs its tenants.
    Ok,
    /// It has failed; nothing runs on it until the daemon restarts.
    Failed,
}

/// A device's health as `/v1/status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceHealthView {
    /// `ok` or `failed`.
    pub state: DeviceState,
    /// The error that failed it.
    pub reason: Option<String>,
    /// When it failed (RFC 3339).
    pub failed_at: Option<String>,
}

impl DeviceHealthView {
    /// The view of `state`.
    pub fn of(state: &HealthState) -> Self {
        match state {
            HealthState::Ok => DeviceHealthView {
                state: DeviceState::Ok,
                reason: None,
                failed_at: None,
            },
            HealthState::Failed(f) => DeviceHealthView {
                state: DeviceState::Failed,
                reason: Some(f.reason.clone()),
                failed_at: Some(crate::config::format_rfc3339(f.at)),
            },
        }
    }
}

/// What a fault drill did to a device.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct DrillView {
    /// The device.
    pub device: String,
    /// Checked operations the device still runs before it fails; none when it failed at once.
    pub after_ops: Option<u64>,
    /// Its health now.
    #[serde(flatten)]
    pub health: DeviceHealthView,
}

/// The devices of `order` that have not failed (`failures[d]` is device `d`'s error, if it
/// has failed), in that order; when every one has, the 503 that names each.
fn usable(
    order: Vec<DeviceId>,
    failures: &[Option<DeviceError>],
) -> Result<Vec<DeviceId>, NodeError> {
    let ok: Vec<DeviceId> = order
        .into_iter()
        .filter(|&d| failures.get(d.index()).is_none_or(|f| f.is_none()))
        .collect();
    if !ok.is_empty() {
        return Ok(ok);
    }
    let why: Vec<String> = failures.iter().flatten().map(|e| e.to_string()).collect();
    Err(NodeError::Unavailable(format!(
        "no device can take a new tenant: {}; restart the daemon to use it again",
        why.join("; ")
    )))
}

/// A serving service's view when its device has failed: failed, with the device's error,
/// holding no share.
fn failed_view(mut view: ServiceView, error: &DeviceError) -> ServiceView {
    view.state = super::services::ServiceState::Failed;
    view.error = Some(error.to_string());
    view.share = 0.0;
    view
}

impl Node {
    /// Device `d`'s error, if it has failed.
    pub(crate) fn device_failure(&self, d: DeviceId) -> Option<DeviceError> {
        self.placement(d).health().failure()
    }

    /// True when device `d` has failed (one atomic load).
    pub(crate) fn device_failed(&self, d: DeviceId) -> bool {
        self.placement(d).health().is_failed()
    }

    /// Device `d`'s health for status.
    pub(crate) fn device_health(&self, d: DeviceId) -> DeviceHealthView {
        DeviceHealthView::of(&self.placement(d).health().state())
    }

    /// The error of the device `svc` runs on, if it has failed: with several replicas,
    /// the first one's, once every one's device has failed (until then it serves).
    pub(crate) fn service_failure(&self, svc: &LoadedService) -> Option<DeviceError> {
        let mut first = None;
        for r in svc.replicas() {
            match self.device_failure(r.device) {
                None => return None,
                Some(e) => {
                    first.get_or_insert(e);
                }
            }
        }
        first
    }

    /// `svc`'s view, failed when its device is.
    pub(crate) fn serving_view(&self, svc: &LoadedService) -> ServiceView {
        match self.service_failure(svc) {
            Some(e) => failed_view(svc.view(), &e),
            None => svc.view(),
        }
    }

    /// The device named `name` (`cuda:0`, `cpu:1`), when it has not failed.
    pub(crate) fn usable_device_named(&self, name: &str) -> Result<DeviceId, NodeError> {
        let d = self
            .devices()
            .find(|&d| self.placement(d).name() == name)
            .ok_or_else(|| NodeError::NotFound(format!("this node has no device {name}")))?;
        match self.placement(d).health().failure() {
            Some(e) => Err(NodeError::Unavailable(format!(
                "device {name} has failed: {e}"
            ))),
            None => Ok(d),
        }
    }

    /// Devices that can take a new tenant, from the least share held to the most; 503
    /// naming every failed device when none can.
    pub(crate) fn usable_devices_by_load(&self) -> Result<Vec<DeviceId>, NodeError> {
        let failures: Vec<Option<DeviceError>> =
            self.devices().map(|d| self.device_failure(d)).collect();
        usable(self.devices_by_load(), &failures)
    }

    /// True while at least one device has not failed.
    pub(crate) fn any_device_ok(&self) -> bool {
        self.devices().any(|d| !self.device_failed(d))
    }

    /// A fault drill: fails the device called `name` as a sticky driver error would, at once
    /// or (with `after_ops`) at its lanes' operation after that many more, with `reason`
    /// noted as a drill's. 404 for an unknown device, 409 for one that has already failed.
    pub(crate) fn drill_device_fault(
        &self,
        name: &str,
        after_ops: Option<u64>,
        reason: &str,
    ) -> Result<DrillView, NodeError> {
        let names: Vec<String> = self.devices().map(|d| self.placement(d).name()).collect();
        let d = self.devices().find(|&d| self.placement(d).name() == name);
        let d = d.ok_or_else(|| {
            NodeError::NotFound(format!(
                "unknown device {name} (this node has: {})",
                names.join(", ")
            ))
        })?;
        if let Some(e) = self.device_failure(d) {
            return Err(NodeError::Conflict(e.to_string()));
        }
        let health = self.placement(d).health();
        let reason = format!("{reason} (injected by a fault drill)");
        tracing::warn!(device = %name, ?after_ops, "fault drill: {reason}");
        match after_ops {
            Some(n) => health.inject_after(n, reason),
            None => health.fail(reason),
        }
        Ok(DrillView {
            device: name.to_string(),
            after_ops,
            health: self.device_health(d),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::fault::Failure;

    fn failed(device: &str) -> Option<DeviceError> {
        Some(DeviceError::Failed {
            device: device.into(),
            reason: "CUDA_ERROR_ILLEGAL_ADDRESS".into(),
        })
    }

    #[test]
    fn new_tenants_go_to_devices_that_have_not_failed() {
        let failures = [None, failed("cuda:1"), None];
        let ids = |v: &[usize]| v.iter().map(|&d| DeviceId(d)).collect::<Vec<_>>();
        assert_eq!(usable(ids(&[1, 2, 0]), &failures).unwrap(), ids(&[2, 0]));
        assert_eq!(usable(ids(&[0]), &[None]).unwrap(), ids(&[0]));
    }

    #[test]
    fn with_every_device_failed_the_refusal_names_each() {
        let all = vec![DeviceId(0), DeviceId(1)];
        let err = usable(all, &[failed("cuda:0"), failed("cuda:1")]).unwrap_err();
        assert!(matches!(err, NodeError::Unavailable(_)), "{err:?}");
        assert_eq!(
            err.to_string(),
            "no device can take a new tenant: device cuda:0 has failed: \
             CUDA_ERROR_ILLEGAL_ADDRESS; its tenants were stopped; device cuda:1 has failed: \
             CUDA_ERROR_ILLEGAL_ADDRESS; its tenants were stopped; restart the daemon to use \
             it again"
        );
    }

    #[test]
    fn health_views_say_ok_or_failed_with_reason_and_time() {
        let ok = serde_json::to_value(DeviceHealthView::of(&HealthState::Ok)).unwrap();
        assert_eq!(
            ok,
            serde_json::json!({"state": "ok", "reason": null, "failed_at": null})
        );
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000);
        let v = DeviceHealthView::of(&HealthState::Failed(Failure {
            reason: "ECC error".into(),
            at,
        }));
        assert_eq!(v.state, DeviceState::Failed);
        assert_eq!(v.reason.as_deref(), Some("ECC error"));
        assert_eq!(
            v.failed_at
                .as_deref()
                .map(|t| crate::config::parse_rfc3339(t).unwrap()),
            Some(at)
        );
    }
}
