//! `setpoint kernels ptx --write | --check`: the PTX files under `kernels/ptx` against what
//! NVRTC makes of the sources.

use anyhow::{Context, anyhow};

use crate::cli::KernelsPtxArgs;
use crate::commands::input_error;
use crate::kernels::{self, KernelError};

/// Runs `setpoint kernels ptx`.
pub(super) fn run(a: KernelsPtxArgs) -> anyhow::Result<()> {
    use kernels::aot::{self, Comparison};
    let sources = kernels::sources();
    if sources.is_empty() {
        return Err(KernelError::NoSources.into());
    }
    if a.write {
        std::fs::create_dir_all(&a.dir)
            .with_context(|| format!("cannot create {}", a.dir.display()))?;
    }
    let mut differ = Vec::new();
    let mut other_nvrtc = None;
    for s in sources {
        let fresh = aot::render(s)?;
        let path = aot::path(&a.dir, s.module);
        if a.write {
            crate::util::fsio::write_atomic(&path, fresh.as_bytes())
                .with_context(|| format!("cannot write {}", path.display()))?;
            println!("wrote {} ({} bytes)", path.display(), fresh.len());
            continue;
        }
        match aot::compare(&a.dir, s.module, &fresh) {
            Comparison::Same => println!("{}: same", path.display()),
            Comparison::Missing => differ.push(format!("{}: missing", path.display())),
            Comparison::Differs { line } => {
                differ.push(format!("{}: differs from line {line}", path.display()))
            }
            Comparison::OtherNvrtc { file } => other_nvrtc = Some(file),
        }
    }
    if let Some(file) = other_nvrtc {
        return Err(input_error(format!(
            "{} was made by NVRTC {file} and this is NVRTC {}; compare with that version \
             (scripts/cuda-tools.sh installs the pinned one)",
            a.dir.display(),
            kernels::nvrtc::version()?
        )));
    }
    if !differ.is_empty() {
        return Err(anyhow!(
            "{} differ from what NVRTC makes of the sources: {}; run `setpoint kernels ptx \
             --write` and commit the result",
            a.dir.display(),
            differ.join("; ")
        ));
    }
    Ok(())
}
