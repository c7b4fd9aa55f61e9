//! ptxas: assembling PTX for a GPU architecture and reading its `-v` resource report.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Serialize;

use super::{CudaArch, KernelError, LOCAL_PTXAS, names::ptx_entries};

// ptxas

/// What ptxas allotted one kernel (`ptxas -v`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct KernelResources {
    /// Kernel (entry function) name.
    pub kernel: String,
    /// Registers per thread.
    pub registers: u32,
    /// Static shared memory per block.
    pub smem_bytes: u64,
    /// Named barriers used (ptxas 12 and later report it).
    pub barriers: Option<u32>,
    /// Stack frame per thread.
    pub stack_frame_bytes: u64,
    /// Register spill stores per thread.
    pub spill_store_bytes: u64,
    /// Register spill loads per thread.
    pub spill_load_bytes: u64,
}

/// What one ptxas run reported.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PtxasReport {
    /// One entry per kernel, in the order ptxas compiled them.
    pub kernels: Vec<KernelResources>,
    /// `ptxas warning` lines.
    pub warnings: Vec<String>,
}

/// Assembles `ptx` for `arch` with `ptxas -v` and returns each kernel's registers, shared
/// memory and spills.
pub fn ptxas_report(
    ptx: &str,
    arch: &str,
    ptxas: &Path,
) -> Result<Vec<KernelResources>, KernelError> {
    let arch = CudaArch::parse(arch)?;
    ptxas_assemble(ptx, &arch, ptxas).map(|r| r.kernels)
}

/// [`ptxas_report`] with ptxas's warnings.
pub fn ptxas_assemble(
    ptx: &str,
    arch: &CudaArch,
    ptxas: &Path,
) -> Result<PtxasReport, KernelError> {
    let run_err = |source: io::Error| KernelError::PtxasRun {
        path: ptxas.to_path_buf(),
        source,
    };
    let dir = tempfile::tempdir().map_err(run_err)?;
    let input = dir.path().join("module.ptx");
    std::fs::write(&input, ptx).map_err(run_err)?;
    let output = Command::new(ptxas)
        .arg(format!("-arch={}", arch.sm()))
        .arg("-v")
        .arg("-o")
        .arg(dir.path().join("module.cubin"))
        .arg(&input)
        .output()
        .map_err(run_err)?;
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    if !output.status.success() {
        return Err(KernelError::Ptxas {
            path: ptxas.to_path_buf(),
            status: output.status.to_string(),
            output: text.trim_end().to_string(),
        });
    }
    let report = parse_ptxas_output(&text);
    let missing: Vec<String> = ptx_entries(ptx)
        .into_iter()
        .filter(|e| !report.kernels.iter().any(|k| &k.kernel == e))
        .collect();
    if !missing.is_empty() {
        return Err(KernelError::PtxasReport {
            missing: missing.join(", "),
            output: text.trim_end().to_string(),
        });
    }
    Ok(report)
}

/// Parses `ptxas -v` output:
///
/// ```text
/// ptxas info    : Compiling entry function 'tiled' for 'sm_90'
/// ptxas info    : Function properties for tiled
///     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
/// ptxas info    : Used 19 registers, used 1 barriers, 16384 bytes smem
/// ```
///
/// Properties of non-entry (device) functions are ignored; unknown fields are skipped, so
/// older and newer ptxas releases parse alike.
pub fn parse_ptxas_output(text: &str) -> PtxasReport {
    let mut report = PtxasReport::default();
    // The kernel the next "Used …" line belongs to, and the one the next stack line does.
    let mut current: Option<usize> = None;
    let mut properties_of: Option<usize> = None;
    for line in text.lines() {
        let trimmed = line.trim();
        if let Some(rest) = trimmed.strip_prefix("ptxas warning") {
            let msg = rest.trim_start().trim_start_matches(':').trim();
            report.warnings.push(msg.to_string());
            continue;
        }
        let Some(info) = trimmed.strip_prefix("ptxas info") else {
            if trimmed.contains("bytes stack frame")
                && let Some(k) = properties_of.take()
            {
                apply_fields(&mut report.kernels[k], trimmed);
            }
            continue;
        };
        let info = info.trim_start().trim_start_matches(':').trim();
        if let Some(rest) = info.strip_prefix("Compiling entry function") {
            let name = quoted(rest).unwrap_or_else(|| rest.trim().to_string());
            report.kernels.push(KernelResources {
                kernel: name,
                ..Default::default()
            });
            current = Some(report.kernels.len() - 1);
            properties_of = None;
        } else if let Some(rest) = info.strip_prefix("Function properties for") {
            let name = rest.trim();
            properties_of = current.filter(|&k| report.kernels[k].kernel == name);
        } else if info.starts_with("Used")
            && let Some(k) = current
        {
            apply_fields(&mut report.kernels[k], info);
        }
    }
    report
}

/// The text between the first pair of single quotes.
fn quoted(text: &str) -> Option<String> {
    let start = text.find('\'')? + 1;
    let len = text[start..].find('\'')?;
    Some(text[start..start + len].to_string())
}

/// Applies comma-separated `N unit` fields (`Used 19 registers`, `16384 bytes smem`,
/// `used 1 barriers`, `8 bytes spill stores`) to `k`.
fn apply_fields(k: &mut KernelResources, line: &str) {
    for field in line.split(',') {
        let words: Vec<&str> = field.split_whitespace().collect();
        let Some(pos) = words.iter().position(|w| w.parse::<u64>().is_ok()) else {
            continue;
        };
        let Ok(n) = words[pos].parse::<u64>() else {
            continue;
        };
        match words[pos + 1..].join(" ").as_str() {
            "registers" => k.registers = u32::try_from(n).unwrap_or(u32::MAX),
            "barriers" => k.barriers = Some(u32::try_from(n).unwrap_or(u32::MAX)),
            "bytes smem" => k.smem_bytes = n,
            "bytes stack frame" => k.stack_frame_bytes = n,
            "bytes spill stores" => k.spill_store_bytes = n,
            "bytes spill loads" => k.spill_load_bytes = n,
            _ => {}
        }
    }
}

/// The ptxas to use: `explicit` (from `--ptxas` or `$PTXAS`), which must exist; else
/// `ptxas` on `PATH`; else [`LOCAL_PTXAS`] under the current directory. `None` when there is
/// none.
pub fn find_ptxas(explicit: Option<&Path>) -> Result<Option<PathBuf>, KernelError> {
    if let Some(p) = explicit {
        return if p.is_file() {
            Ok(Some(p.to_path_buf()))
        } else {
            Err(KernelError::PtxasMissing {
                path: p.to_path_buf(),
            })
        };
    }
    if let Some(path) = std::env::var_os("PATH")
        && let Some(found) = std::env::split_paths(&path)
            .map(|d| d.join("ptxas"))
            .find(|p| p.is_file())
    {
        return Ok(Some(found));
    }
    let local = Path::new(LOCAL_PTXAS);
    Ok(local
        .is_file()
        .then(|| std::path::absolute(local).unwrap_or_else(|_| local.to_path_buf())))
}

/// `ptxas --version`'s release, such as `V12.9.86`; `None` when it does not say.
pub fn ptxas_version(ptxas: &Path) -> Option<String> {
    let out = Command::new(ptxas).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().rev().find(|l| l.contains("release"))?;
    line.split(", ")
        .find(|w| w.starts_with('V'))
        .map(|w| w.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Real `ptxas -arch=sm_90 -v` output (CUDA 12.9.86) for three kernels: one with shared
    /// memory and a barrier, one that spills, one empty.
    const PTXAS_OUTPUT: &str = "\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function 'empty_k' for 'sm_90'
ptxas info    : Function properties for empty_k
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 4 registers, used 0 barriers
ptxas info    : Compile time = 1.499 ms
ptxas info    : Compiling entry function 'spilly' for 'sm_90'
ptxas info    : Function properties for spilly
    56 bytes stack frame, 108 bytes spill stores, 112 bytes spill loads
ptxas info    : Used 64 registers, used 0 barriers, 56 bytes cumulative stack size
ptxas info    : Compile time = 228.577 ms
ptxas info    : Compiling entry function 'tiled' for 'sm_90'
ptxas info    : Function properties for tiled
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 19 registers, used 1 barriers, 16384 bytes smem
ptxas info    : Compile time = 3.734 ms
";

    #[test]
    fn parses_real_ptxas_output() {
        let r = parse_ptxas_output(PTXAS_OUTPUT);
        assert!(r.warnings.is_empty());
        assert_eq!(
            r.kernels,
            vec![
                KernelResources {
                    kernel: "empty_k".into(),
                    registers: 4,
                    barriers: Some(0),
                    ..Default::default()
                },
                KernelResources {
                    kernel: "spilly".into(),
                    registers: 64,
                    barriers: Some(0),
                    smem_bytes: 0,
                    stack_frame_bytes: 56,
                    spill_store_bytes: 108,
                    spill_load_bytes: 112,
                },
                KernelResources {
                    kernel: "tiled".into(),
                    registers: 19,
                    barriers: Some(1),
                    smem_bytes: 16384,
                    ..Default::default()
                },
            ]
        );
    }

    #[test]
    fn parses_older_ptxas_and_skips_device_functions() {
        let text = "\
ptxas info    : 0 bytes gmem
ptxas info    : Function properties for _Z6helperf
    8 bytes stack frame, 4 bytes spill stores, 4 bytes spill loads
ptxas info    : Compiling entry function 'k' for 'sm_80'
ptxas info    : Function properties for k
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 8 registers, 2048 bytes smem, 360 bytes cmem[0]
ptxas warning : Registers are spilled to local memory in function 'k'
";
        let r = parse_ptxas_output(text);
        assert_eq!(r.kernels.len(), 1);
        let k = &r.kernels[0];
        assert_eq!((k.registers, k.smem_bytes, k.barriers), (8, 2048, None));
        assert_eq!((k.spill_store_bytes, k.spill_load_bytes), (0, 0));
        assert_eq!(
            r.warnings,
            vec!["Registers are spilled to local memory in function 'k'".to_string()]
        );
    }
}
