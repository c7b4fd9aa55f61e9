//! The operator's settings: what its flags say about the cluster (the driver and its device
//! class, how devices publish their capacity), the tenant pods and the nodes' daemons.

use std::time::Duration;

use crate::config::CapacityMode;

/// Which kind of device the claims ask for, which names the capacity a consumable request
/// takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    /// GPUs: capacity `sms`.
    Gpu,
    /// The CPU of a node without GPUs: capacity `cores`.
    Cpu,
}

/// Everything the renderers and the loops need to know beyond the custom resource.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// The DRA driver's name (`gpu.setpoint.dev`).
    pub driver: String,
    /// The DeviceClass the claims ask for.
    pub device_class: String,
    /// What that class's devices are.
    pub device: DeviceKind,
    /// How the nodes publish their capacity.
    pub capacity: CapacityMode,
    /// SMs taken as one whole GPU when a share becomes an `sms` request.
    pub sms_per_device: u32,
    /// Units a device is cut into, in `units` mode.
    pub units_per_device: u32,
    /// Cores taken as one whole CPU device when a share becomes a `cores` request.
    pub cores_per_device: u32,
    /// The image of the tenant pods (it must hold the `setpoint` binary).
    pub tenant_image: String,
    /// The port the nodes' daemons serve their HTTP API on, at the node's address.
    pub daemon_port: u16,
    /// How often the measured state is written back.
    pub status_interval: Duration,
    /// The namespace to watch; `None`: all.
    pub namespace: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            driver: "gpu.setpoint.dev".into(),
            device_class: "setpoint-gpu".into(),
            device: DeviceKind::Gpu,
            capacity: CapacityMode::Consumable,
            sms_per_device: 132,
            units_per_device: 8,
            cores_per_device: 8,
            tenant_image: format!("setpoint:{}", env!("CARGO_PKG_VERSION")),
            daemon_port: 8000,
            status_interval: Duration::from_secs(5),
            namespace: None,
        }
    }
}

impl Settings {
    /// What is wrong with the settings, naming the flag and what it accepts.
    pub fn check(&self) -> Result<(), String> {
        if self.sms_per_device == 0 || self.cores_per_device == 0 {
            return Err("--sms-per-device and --cores-per-device must be at least 1".into());
        }
        if !(2..=64).contains(&self.units_per_device) {
            return Err(format!(
                "--units-per-device must be between 2 and 64 (as the nodes' units_per_device), got {}",
                self.units_per_device
            ));
        }
        if self.status_interval < Duration::from_millis(500) {
            return Err("--status-interval must be at least 500ms".into());
        }
        let subdomain = |s: &str| {
            !s.is_empty()
                && s.len() <= 253
                && s.split('.').all(|l| {
                    !l.is_empty()
                        && !l.starts_with('-')
                        && !l.ends_with('-')
                        && l.chars()
                            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                })
        };
        if !subdomain(&self.driver) {
            return Err(format!(
                "--driver must be a DNS subdomain such as gpu.setpoint.dev, got {:?}",
                self.driver
            ));
        }
        if !subdomain(&self.device_class) {
            return Err(format!(
                "--device-class must be a DeviceClass's name (a DNS subdomain), got {:?}",
                self.device_class
            ));
        }
        if self.tenant_image.trim().is_empty() {
            return Err("--tenant-image must name an image".into());
        }
        Ok(())
    }
}
