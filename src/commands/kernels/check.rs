//! `setpoint kernels check`: every kernel module compiled by NVRTC (or taken from the
//! binary), its kernels found in the PTX, and with ptxas the module assembled and its
//! resources read. The report is [`super::render`]'s.

use std::path::{Path, PathBuf};

use anyhow::anyhow;

use super::render;
use crate::cli::KernelsCheckArgs;
use crate::commands::output::{print_json, print_text};
use crate::kernels::{self, CudaArch, KernelError, KernelResources, KernelSource, PtxOrigin};

/// One kernel module's outcome in `kernels check`.
pub(super) struct ModuleCheck {
    /// The module's name.
    pub module: &'static str,
    /// What it was compiled for (sm_90a for an sm_90a module checked for sm_90).
    pub arch: CudaArch,
    /// Where its PTX came from, once it loaded.
    pub origin: Option<PtxOrigin>,
    /// Size of its PTX.
    pub ptx_bytes: usize,
    /// What NVRTC said.
    pub nvrtc_log: String,
    /// Kernel names: the source's `extern "C" __global__` functions, then any other PTX entry.
    pub kernels: Vec<String>,
    /// From ptxas, when it ran and succeeded.
    pub resources: Option<Vec<KernelResources>>,
    /// What ptxas warned about.
    pub ptxas_warnings: Vec<String>,
    /// Why the module failed, if it did.
    pub error: Option<String>,
}

/// The tools the check ran with, as the report names them.
pub(super) struct Toolchain {
    /// The target.
    pub arch: CudaArch,
    /// NVRTC's version, when it was loaded.
    pub nvrtc_version: Option<String>,
    /// The ptxas found, if any.
    pub ptxas: Option<PathBuf>,
    /// Its version, when it said.
    pub ptxas_version: Option<String>,
}

/// Runs `setpoint kernels check`.
pub(super) fn run(a: KernelsCheckArgs) -> anyhow::Result<()> {
    let arch = CudaArch::parse(&a.arch)?;
    let sources = kernels::sources();
    if sources.is_empty() {
        return Err(KernelError::NoSources.into());
    }
    let ptxas = kernels::find_ptxas(a.ptxas.as_deref())?;
    let all_prebuilt = sources.iter().all(|s| {
        s.prebuilt_ptx.is_some() && s.target.arch_for(&arch).compute() == s.target.aot_arch()
    });
    // Without NVRTC nothing below can work; say so once rather than once per module.
    let nvrtc_version = if all_prebuilt {
        kernels::nvrtc::version().ok()
    } else {
        Some(kernels::nvrtc::version()?)
    };
    let ptxas_version = ptxas.as_deref().and_then(kernels::ptxas_version);
    let tools = Toolchain {
        arch,
        nvrtc_version,
        ptxas,
        ptxas_version,
    };
    let checks = check_all(sources, a.cache_dir.as_deref(), &tools);
    if a.json {
        print_json(&render::json(&checks, &tools))?;
        if tools.ptxas.is_none() {
            eprintln!("{}", render::no_ptxas_note());
        }
    } else {
        print_text(&render::text(&checks, &tools))?;
    }
    match failure(&checks, a.json) {
        Some(msg) => Err(anyhow!(msg)),
        None => Ok(()),
    }
}

/// Checks the modules side by side: they are independent, and NVRTC and ptxas take seconds
/// on the larger ones.
fn check_all(
    sources: &'static [KernelSource],
    cache: Option<&Path>,
    tools: &Toolchain,
) -> Vec<ModuleCheck> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = sources
            .iter()
            .map(|s| {
                let (arch, ptxas) = (&tools.arch, tools.ptxas.as_deref());
                (s, scope.spawn(move || check_module(s, cache, arch, ptxas)))
            })
            .collect();
        handles
            .into_iter()
            .map(|(s, h)| {
                h.join().unwrap_or_else(|_| ModuleCheck {
                    error: Some("the check of this module panicked".into()),
                    ..empty_check(s, &tools.arch)
                })
            })
            .collect()
    })
}

/// The error message when a module failed: which ones, and with `--json` (where the report
/// holds the details) each one's error again, where people look.
fn failure(checks: &[ModuleCheck], json: bool) -> Option<String> {
    let failed = checks.iter().filter(|c| c.error.is_some()).count();
    if failed == 0 {
        return None;
    }
    let names: Vec<&str> = checks
        .iter()
        .filter(|c| c.error.is_some())
        .map(|c| c.module)
        .collect();
    let mut msg = format!(
        "{failed} of {} kernel modules failed: {}",
        checks.len(),
        names.join(", ")
    );
    if json {
        for c in checks.iter().filter(|c| c.error.is_some()) {
            msg.push_str(&format!(
                "\n{}: {}",
                c.module,
                c.error.as_deref().unwrap_or("")
            ));
        }
    }
    Some(msg)
}

/// A module not checked yet for `arch`: its source's kernels, nothing else.
fn empty_check(s: &KernelSource, arch: &CudaArch) -> ModuleCheck {
    ModuleCheck {
        module: s.module,
        arch: s.target.arch_for(arch),
        origin: None,
        ptx_bytes: 0,
        nvrtc_log: String::new(),
        kernels: kernels::kernel_names(s.source),
        resources: None,
        ptxas_warnings: Vec::new(),
        error: None,
    }
}

/// Loads one module (NVRTC, the cache or the binary), checks its kernels are in the PTX and
/// with ptxas assembles it.
fn check_module(
    s: &'static KernelSource,
    cache_dir: Option<&Path>,
    arch: &CudaArch,
    ptxas: Option<&Path>,
) -> ModuleCheck {
    let mut c = empty_check(s, arch);
    let loaded = match kernels::load_module(s, cache_dir, arch) {
        Ok(l) => l,
        Err(e) => {
            c.error = Some(e.to_string());
            return c;
        }
    };
    c.origin = Some(loaded.origin);
    c.ptx_bytes = loaded.ptx.len();
    c.nvrtc_log = loaded.nvrtc_log;
    let entries = kernels::ptx_entries(&loaded.ptx);
    let absent: Vec<&str> = c
        .kernels
        .iter()
        .filter(|k| !entries.contains(k))
        .map(String::as_str)
        .collect();
    if !absent.is_empty() {
        c.error = Some(format!(
            "the PTX lacks kernels the source declares extern \"C\" __global__: {}",
            absent.join(", ")
        ));
        return c;
    }
    for e in entries {
        if !c.kernels.contains(&e) {
            c.kernels.push(e);
        }
    }
    if c.kernels.is_empty() {
        c.error = Some("the module defines no extern \"C\" __global__ kernel".into());
        return c;
    }
    if let Some(ptxas) = ptxas {
        match kernels::ptxas_assemble(&loaded.ptx, &c.arch, ptxas) {
            Ok(r) => {
                c.resources = Some(r.kernels);
                c.ptxas_warnings = r.warnings;
            }
            Err(e) => c.error = Some(e.to_string()),
        }
    }
    c
}
