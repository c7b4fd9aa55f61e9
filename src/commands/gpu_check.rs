//! `setpoint gpu-check --section NAME`: runs one section of the GPU check
//! ([`crate::bench::gpu`]), writes its JSON and prints its headline.

use anyhow::{Context, anyhow};

use super::input_error;
use crate::bench::gpu::{self, Status};
use crate::cli::GpuCheckArgs;

/// Runs `setpoint gpu-check`.
pub fn run(a: GpuCheckArgs) -> anyhow::Result<()> {
    if let Some(s) = a.seconds
        && !(s.is_finite() && s > 0.0 && s <= 3600.0)
    {
        return Err(input_error(format!(
            "--seconds must be a number of seconds above 0 and at most 3600, got {s}"
        )));
    }
    let section = a.section;
    let opts = gpu::GpuCheckOptions {
        section,
        gpu: a.gpu,
        digits: a.digits,
        cache_dir: a.cache_dir,
        seconds: a.seconds,
        dry_run: a.dry_run,
    };
    let done = gpu::run_section(&opts);
    if let Some(dir) = a.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    crate::util::fsio::write_atomic(&a.out, done.json.as_bytes())
        .with_context(|| format!("cannot write {}", a.out.display()))?;
    let status = match done.status {
        Status::Pass => "pass",
        Status::Fail => "fail",
        Status::Skipped => "skipped",
    };
    println!("{}: {status}", section.as_str());
    if let Some(why) = &done.reason {
        println!("  reason: {why}");
    }
    for line in &done.headline {
        println!("  {line}");
    }
    match done.status {
        Status::Pass | Status::Skipped => Ok(()),
        Status::Fail => Err(anyhow!(
            "gpu-check {} failed: {}; see {}",
            section.as_str(),
            done.reason.as_deref().unwrap_or("no reason recorded"),
            a.out.display()
        )),
    }
}
