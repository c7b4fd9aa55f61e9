//! `setpoint operator` and `setpoint tenant`: the workload side of setpoint in a Kubernetes
//! cluster (built with the `kubernetes` feature).

use std::time::Duration;

use clap::{Args, ValueEnum};

/// `setpoint operator`.
#[derive(Debug, Args)]
pub struct OperatorArgs {
    /// Print the CustomResourceDefinitions of SetpointJob and SetpointService as YAML and
    /// exit.
    #[arg(long)]
    pub print_crds: bool,
    /// The DRA driver's name, as the nodes publish it.
    #[arg(long, value_name = "NAME", default_value = "gpu.setpoint.dev")]
    pub driver: String,
    /// What the claims ask for: GPUs, or the CPU of nodes without one.
    #[arg(long, value_enum, default_value_t = DeviceArg::Gpu)]
    pub device: DeviceArg,
    /// The DeviceClass the claims name [default: setpoint-gpu, or setpoint-cpu with
    /// --device cpu].
    #[arg(long, value_name = "NAME")]
    pub device_class: Option<String>,
    /// How the nodes publish their capacity (their `kubernetes.capacity`): `consumable`
    /// (a claim takes part of a shared device) or `units` (whole units of one device).
    #[arg(long, value_enum, default_value_t = CapacityArg::Consumable)]
    pub capacity: CapacityArg,
    /// SMs taken as one whole GPU: a share s asks for ceil(s × this) `sms`.
    #[arg(long, value_name = "N", default_value_t = 132)]
    pub sms_per_device: u32,
    /// Cores taken as one whole CPU device: a share s asks for ceil(s × this) `cores`.
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub cores_per_device: u32,
    /// Units each device is cut into in `units` mode: a share s asks for ceil(s × this).
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub units_per_device: u32,
    /// The image of the tenant pods; it must hold the `setpoint` binary on its PATH
    /// [default: setpoint:VERSION].
    #[arg(long, value_name = "IMAGE")]
    pub tenant_image: Option<String>,
    /// The port of the nodes' daemons (HTTP), at each node's address.
    #[arg(long, value_name = "PORT", default_value_t = 8000)]
    pub daemon_port: u16,
    /// How often each tenant's measured state is written to its object's status.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = duration)]
    pub status_interval: Duration,
    /// Watch one namespace only [default: all].
    #[arg(long, value_name = "NAMESPACE")]
    pub namespace: Option<String>,
}

/// `--device`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DeviceArg {
    /// GPUs (capacity `sms`).
    Gpu,
    /// The CPU (capacity `cores`).
    Cpu,
}

/// `--capacity`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CapacityArg {
    /// Part of one shared device.
    Consumable,
    /// Whole units of one device.
    Units,
}

/// `setpoint tenant`.
#[derive(Debug, Args)]
pub struct TenantArgs {
    /// Time between two reads of the tenant.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = duration)]
    pub interval: Duration,
    /// How long the node's daemon may be unreachable before the pod gives up (exit 1).
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = duration)]
    pub grace: Duration,
}

fn duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("{e}; give a duration such as 500ms, 5s or 1m"))
}
