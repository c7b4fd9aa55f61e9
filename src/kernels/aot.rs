//! The PTX kept in the repository (`kernels/ptx/<module>.ptx`), which the binary embeds so
//! that a host without NVRTC runs the kernels.
//!
//! Each file is NVRTC's output for [`AOT_ARCH`] (for an sm_90a module, compute_90a: see
//! [`super::ModuleTarget`]) after one header line:
//!
//! ```text
//! // setpoint-kernel module=gemm arch=compute_90 source-fnv64=0123456789abcdef nvrtc=12.9
//! ```
//!
//! `source-fnv64` hashes the module's resolved source (what NVRTC compiles), so `build.rs`
//! embeds a file only when it was made from the source being built, and leaves a stale one
//! out with a warning (the daemon then compiles that module with NVRTC at start).
//! `setpoint kernels ptx --write` regenerates the files; `--check`, which CI runs with the
//! pinned NVRTC, fails when they differ from what NVRTC makes of the sources now.

use std::path::{Path, PathBuf};

use super::{CudaArch, KernelError, KernelSource, cache::fnv64, nvrtc};

/// The virtual architecture of the committed PTX: Hopper, and through the driver's JIT every
/// newer GPU.
pub(crate) const AOT_ARCH: &str = "compute_90";

/// Where the committed PTX lives, relative to the repository root.
pub(crate) const AOT_DIR: &str = "kernels/ptx";

const TAG: &str = "// setpoint-kernel";

/// The header line of a committed PTX file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The module (file stem of its source).
    pub module: String,
    /// `compute_XX`.
    pub arch: String,
    /// FNV-1a of the resolved source it was compiled from.
    pub source_fnv64: u64,
    /// NVRTC's `major.minor`.
    pub nvrtc: String,
}

impl Header {
    /// The header of PTX made now from `module` by NVRTC `nvrtc` for `arch`.
    pub(crate) fn for_source(module: &KernelSource, arch: &CudaArch, nvrtc: &str) -> Self {
        Header {
            module: module.module.to_string(),
            arch: arch.compute(),
            source_fnv64: fnv64(module.source.as_bytes()),
            nvrtc: nvrtc.to_string(),
        }
    }

    /// The line, without its newline.
    pub fn line(&self) -> String {
        format!(
            "{TAG} module={} arch={} source-fnv64={:016x} nvrtc={}",
            self.module, self.arch, self.source_fnv64, self.nvrtc
        )
    }

    /// The header of a committed file's text, when its first line is one.
    pub fn parse(text: &str) -> Option<Header> {
        let first = text.lines().next()?;
        let mut words = first.strip_prefix(TAG)?.split_whitespace();
        let mut field = |name: &str| words.next()?.strip_prefix(name).map(str::to_string);
        let module = field("module=")?;
        let arch = field("arch=")?;
        let source_fnv64 = u64::from_str_radix(&field("source-fnv64=")?, 16).ok()?;
        let nvrtc = field("nvrtc=")?;
        Some(Header {
            module,
            arch,
            source_fnv64,
            nvrtc,
        })
    }
}

/// How one committed file compares with what NVRTC makes now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Comparison {
    /// Identical.
    Same,
    /// The file is not there.
    Missing,
    /// Different text; the first differing line (1-based) of the file.
    Differs { line: usize },
    /// Made by another NVRTC, whose output cannot be compared with this one's.
    OtherNvrtc { file: String },
}

/// The text of `DIR/<module>.ptx` as NVRTC makes it now: the header line, then the PTX.
pub fn render(module: &KernelSource) -> Result<String, KernelError> {
    let arch = CudaArch::parse(module.target.aot_arch())?;
    let version = nvrtc::version()?;
    let (ptx, _log) = nvrtc::compile_with_log(module, &arch)?;
    let header = Header::for_source(module, &arch, &version);
    Ok(format!("{}\n{ptx}", header.line()))
}

/// The committed file of `module` under `dir`.
pub fn path(dir: &Path, module: &str) -> PathBuf {
    dir.join(format!("{module}.ptx"))
}

/// Compares the file under `dir` with `fresh` (from [`render`]).
pub fn compare(dir: &Path, module: &str, fresh: &str) -> Comparison {
    let Ok(old) = std::fs::read_to_string(path(dir, module)) else {
        return Comparison::Missing;
    };
    if old == fresh {
        return Comparison::Same;
    }
    let (old_h, new_h) = (Header::parse(&old), Header::parse(fresh));
    if let (Some(o), Some(n)) = (&old_h, &new_h)
        && o.nvrtc != n.nvrtc
    {
        return Comparison::OtherNvrtc {
            file: o.nvrtc.clone(),
        };
    }
    let line = old
        .lines()
        .zip(fresh.lines())
        .position(|(a, b)| a != b)
        .unwrap_or_else(|| old.lines().count().min(fresh.lines().count()))
        + 1;
    Comparison::Differs { line }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: KernelSource = KernelSource {
        module: "gemm",
        source: "extern \"C\" __global__ void k() {}",
        prebuilt_ptx: None,
        prebuilt_sass: None,
        target: crate::kernels::ModuleTarget::Portable,
    };

    #[test]
    fn header_round_trips() {
        let h = Header::for_source(&M, &CudaArch::parse(AOT_ARCH).unwrap(), "12.9");
        let text = format!("{}\n.version 8.8\n", h.line());
        assert_eq!(Header::parse(&text), Some(h.clone()));
        assert!(
            h.line()
                .starts_with("// setpoint-kernel module=gemm arch=compute_90 ")
        );
        assert_eq!(Header::parse(".version 8.8\n"), None);
        assert_eq!(
            Header::parse("// setpoint-kernel module=gemm arch=x\n"),
            None
        );
    }

    #[test]
    fn comparison_names_the_first_different_line() {
        let dir = tempfile::tempdir().unwrap();
        let h = Header::for_source(&M, &CudaArch::parse(AOT_ARCH).unwrap(), "12.9");
        let fresh = format!("{}\na\nb\nc\n", h.line());
        assert_eq!(compare(dir.path(), "gemm", &fresh), Comparison::Missing);
        std::fs::write(path(dir.path(), "gemm"), &fresh).unwrap();
        assert_eq!(compare(dir.path(), "gemm", &fresh), Comparison::Same);
        std::fs::write(path(dir.path(), "gemm"), format!("{}\na\nX\nc\n", h.line())).unwrap();
        assert_eq!(
            compare(dir.path(), "gemm", &fresh),
            Comparison::Differs { line: 3 }
        );
        let older = Header {
            nvrtc: "12.4".into(),
            ..h
        };
        std::fs::write(path(dir.path(), "gemm"), format!("{}\na\n", older.line())).unwrap();
        assert_eq!(
            compare(dir.path(), "gemm", &fresh),
            Comparison::OtherNvrtc {
                file: "12.4".into()
            }
        );
    }
}
