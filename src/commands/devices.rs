//! `setpoint devices`: the GPUs NVML sees and the CPU cores, as text or JSON.

use crate::cli::DevicesArgs;
use crate::telemetry::{NvmlSource, TelemetrySource, devices_report};

/// Runs `setpoint devices`.
pub fn run(a: DevicesArgs) -> anyhow::Result<()> {
    let cores = a
        .cpu_threads
        .filter(|&n| n > 0)
        .unwrap_or_else(crate::device::cpu::available_cores);
    let mut opened = NvmlSource::open();
    let source = match opened.as_mut() {
        Ok(s) => Ok(s as &mut dyn TelemetrySource),
        Err(why) => Err(why.clone()),
    };
    let text = devices_report(source, cores, a.json);
    print!("{text}");
    if !text.ends_with('\n') {
        println!();
    }
    Ok(())
}
