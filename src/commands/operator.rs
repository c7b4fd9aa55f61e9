//! `setpoint operator`: the Kubernetes operator ([`crate::kube::operator`]).

use std::io::Write;

use anyhow::Context as _;

use super::input_error;
use crate::cli::{CapacityArg, DeviceArg, OperatorArgs};
use crate::config::CapacityMode;
use crate::kube::operator::{DeviceKind, OperatorError, Settings, crd};

/// Runs the operator until SIGTERM or Ctrl-C, or prints the CRDs.
pub fn run(args: OperatorArgs) -> anyhow::Result<()> {
    if args.print_crds {
        let mut out = std::io::stdout().lock();
        for (_, text) in crd::crd_files() {
            out.write_all(text.as_bytes())?;
        }
        return Ok(());
    }
    let settings = settings(args);
    settings.check().map_err(input_error)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("setpoint-operator")
        .build()
        .context("cannot start the async runtime")?;
    runtime
        .block_on(crate::kube::operator::run(settings))
        .map_err(|e| match e {
            OperatorError::Settings(m) => input_error(m),
            e => anyhow::Error::new(e),
        })
}

/// The operator's settings from its flags.
fn settings(a: OperatorArgs) -> Settings {
    let defaults = Settings::default();
    let device = match a.device {
        DeviceArg::Gpu => DeviceKind::Gpu,
        DeviceArg::Cpu => DeviceKind::Cpu,
    };
    let class = match device {
        DeviceKind::Gpu => "setpoint-gpu",
        DeviceKind::Cpu => "setpoint-cpu",
    };
    Settings {
        driver: a.driver,
        device_class: a.device_class.unwrap_or_else(|| class.to_string()),
        device,
        capacity: match a.capacity {
            CapacityArg::Consumable => CapacityMode::Consumable,
            CapacityArg::Units => CapacityMode::Units,
        },
        sms_per_device: a.sms_per_device,
        units_per_device: a.units_per_device,
        cores_per_device: a.cores_per_device,
        tenant_image: a.tenant_image.unwrap_or(defaults.tenant_image),
        daemon_port: a.daemon_port,
        status_interval: a.status_interval,
        namespace: a.namespace,
    }
}
