//! Build script. Records the source revision in the version string (`setpoint --version`),
//! so an operator can tell which build a host runs, and prepares the CUDA kernels.
//!
//! Kernels (`kernels/*.cu`, see `kernels/ABI.md`): each file is one module named by its stem.
//! Its `#include "common.cuh"` is resolved textually (the only include the ABI allows), so the
//! daemon can hand the source to NVRTC with no include path. When `nvcc` is on the build host
//! (`$NVCC`, else `PATH`) the resolved source is also compiled to PTX for
//! `compute_$SETPOINT_CUDA_ARCH` (default 90) and embedded; a failing nvcc fails the build.
//! Without nvcc, which is the usual case, only the sources are embedded and the daemon
//! compiles them with NVRTC at run time. Either way the crate includes
//! `$OUT_DIR/kernels.rs`, a table with one entry per module (see `src/kernels/mod.rs`).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The one header a kernel source may include (kernels/ABI.md, "Includes").
const COMMON_HEADER: &str = "common.cuh";
const DEFAULT_ARCH: &str = "90";

fn main() {
    revision();
    if let Err(e) = kernels() {
        // Cargo shows a failing build script's stderr; say what broke and stop the build.
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn revision() {
    let rev = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=SETPOINT_REVISION={rev}");
    println!("cargo:rerun-if-changed=build.rs");
    // Rebuild the version string when the checked-out revision changes.
    for p in [".git/HEAD", ".git/refs/heads"] {
        if Path::new(p).exists() {
            println!("cargo:rerun-if-changed={p}");
        }
    }
}

/// One kernel module as the build prepared it.
struct Module {
    name: String,
    /// The resolved source, written under OUT_DIR.
    source_path: PathBuf,
    /// PTX from nvcc, written under OUT_DIR.
    ptx_path: Option<PathBuf>,
}

fn kernels() -> Result<(), String> {
    let manifest_dir = PathBuf::from(env("CARGO_MANIFEST_DIR")?);
    let out_dir = PathBuf::from(env("OUT_DIR")?);
    let kernel_dir = manifest_dir.join("kernels");
    println!("cargo:rerun-if-env-changed=SETPOINT_CUDA_ARCH");
    println!("cargo:rerun-if-env-changed=NVCC");
    // The directory itself, so that a new .cu file is picked up.
    println!("cargo:rerun-if-changed=kernels");
    println!("cargo:rerun-if-changed=kernels/{COMMON_HEADER}");

    let arch = cuda_arch()?;
    let mut cu_files = Vec::new();
    if kernel_dir.is_dir() {
        let entries = std::fs::read_dir(&kernel_dir)
            .map_err(|e| format!("cannot list {}: {e}", kernel_dir.display()))?;
        for entry in entries {
            let path = entry
                .map_err(|e| format!("cannot list {}: {e}", kernel_dir.display()))?
                .path();
            if path.extension().is_some_and(|x| x == "cu") && path.is_file() {
                cu_files.push(path);
            }
        }
    }
    cu_files.sort();

    let header_path = kernel_dir.join(COMMON_HEADER);
    let header = if header_path.is_file() {
        Some(read(&header_path)?)
    } else {
        None
    };
    let nvcc = find_nvcc()?;
    let gen_dir = out_dir.join("kernels");
    std::fs::create_dir_all(&gen_dir)
        .map_err(|e| format!("cannot create {}: {e}", gen_dir.display()))?;

    let mut modules = Vec::new();
    for cu in &cu_files {
        println!("cargo:rerun-if-changed={}", cu.display());
        let name = module_name(cu)?;
        let resolved = resolve_includes(&read(cu)?, &name, header.as_deref())?;
        let source_path = gen_dir.join(format!("{name}.cu"));
        write_if_changed(&source_path, &resolved)?;
        let ptx_path = match &nvcc {
            Some(nvcc) => Some(run_nvcc(nvcc, &source_path, &gen_dir, &name, &arch)?),
            None => None,
        };
        modules.push(Module {
            name,
            source_path,
            ptx_path,
        });
    }
    let table = render_table(&modules, nvcc.as_ref().map(|_| arch.as_str()));
    write_if_changed(&out_dir.join("kernels.rs"), &table)
}

fn env(name: &str) -> Result<String, String> {
    std::env::var(name).map_err(|_| format!("{name} is not set (is this run by cargo?)"))
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// Writes only on a change, so an unchanged kernel does not look new to cargo.
fn write_if_changed(path: &Path, text: &str) -> Result<(), String> {
    if std::fs::read_to_string(path).is_ok_and(|old| old == text) {
        return Ok(());
    }
    std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// The virtual architecture number from `SETPOINT_CUDA_ARCH`: `90`, `sm_90`, `compute_90`
/// and `90a` forms are accepted.
fn cuda_arch() -> Result<String, String> {
    let raw = match std::env::var("SETPOINT_CUDA_ARCH") {
        Ok(v) if !v.trim().is_empty() => v.trim().to_string(),
        _ => return Ok(DEFAULT_ARCH.to_string()),
    };
    let number = raw
        .strip_prefix("compute_")
        .or_else(|| raw.strip_prefix("sm_"))
        .unwrap_or(&raw);
    let digits = number.trim_end_matches(['a', 'f']);
    let suffix = &number[digits.len()..];
    if digits.len() < 2 || !digits.bytes().all(|b| b.is_ascii_digit()) || suffix.len() > 1 {
        return Err(format!(
            "SETPOINT_CUDA_ARCH={raw:?} is not a CUDA architecture; use a number such as 90 \
             (or sm_90, compute_90)"
        ));
    }
    Ok(number.to_string())
}

/// The module name: the file stem, which becomes a Rust string and a cache file name.
fn module_name(cu: &Path) -> Result<String, String> {
    let stem = cu.file_stem().and_then(|s| s.to_str()).unwrap_or("");
    let ok = !stem.is_empty()
        && stem
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(stem.to_string())
    } else {
        Err(format!(
            "{}: kernel file names must be lowercase letters, digits and '_' (the stem is the \
             module name)",
            cu.display()
        ))
    }
}

/// Replaces `#include "common.cuh"` with the header's text, between `#line` markers so that
/// compiler messages still name the original file and line. Any other include is refused:
/// NVRTC runs with no include path.
fn resolve_includes(text: &str, module: &str, header: Option<&str>) -> Result<String, String> {
    let file = format!("{module}.cu");
    let mut out = String::with_capacity(text.len() + header.map_or(0, str::len) + 128);
    let mut included = false;
    for (idx, line) in text.lines().enumerate() {
        let lineno = idx + 1;
        let Some(target) = include_target(line) else {
            out.push_str(line);
            out.push('\n');
            continue;
        };
        if target != COMMON_HEADER {
            return Err(format!(
                "kernels/{file}:{lineno}: #include {target:?} is not allowed: a kernel may \
                 include \"{COMMON_HEADER}\" only (kernels/ABI.md, Includes)"
            ));
        }
        let Some(header) = header else {
            return Err(format!(
                "kernels/{file}:{lineno}: includes \"{COMMON_HEADER}\", but kernels/{COMMON_HEADER} \
                 does not exist"
            ));
        };
        if included {
            // Include guards would make a second copy empty; skipping it keeps the line map.
            let _ = writeln!(out, "#line {} \"{file}\"", lineno + 1);
            continue;
        }
        included = true;
        let _ = writeln!(out, "#line 1 \"{COMMON_HEADER}\"");
        for (hidx, hline) in header.lines().enumerate() {
            if let Some(nested) = include_target(hline) {
                return Err(format!(
                    "kernels/{COMMON_HEADER}:{}: #include {nested:?} is not allowed: the \
                     header is pasted into each kernel source and may include nothing",
                    hidx + 1
                ));
            }
            // Inlined into the main file, `#pragma once` would draw a warning.
            if is_pragma_once(hline) {
                out.push('\n');
            } else {
                out.push_str(hline);
                out.push('\n');
            }
        }
        let _ = writeln!(out, "#line {} \"{file}\"", lineno + 1);
    }
    Ok(out)
}

/// `Some(target)` when the line is an `#include` directive.
fn include_target(line: &str) -> Option<String> {
    let rest = line.trim_start().strip_prefix('#')?.trim_start();
    let rest = rest.strip_prefix("include")?.trim();
    let target = rest
        .strip_prefix('"')
        .and_then(|r| r.split('"').next())
        .or_else(|| rest.strip_prefix('<').and_then(|r| r.split('>').next()))
        .unwrap_or(rest);
    Some(target.to_string())
}

fn is_pragma_once(line: &str) -> bool {
    let Some(rest) = line.trim_start().strip_prefix('#') else {
        return false;
    };
    let mut words = rest.split_whitespace();
    words.next() == Some("pragma") && words.next() == Some("once")
}

/// nvcc from `$NVCC` (which must then exist) or from `PATH`.
fn find_nvcc() -> Result<Option<PathBuf>, String> {
    if let Some(v) = std::env::var_os("NVCC").filter(|v| !v.is_empty()) {
        let p = PathBuf::from(&v);
        if p.components().count() > 1 {
            return if p.is_file() {
                Ok(Some(p))
            } else {
                Err(format!("NVCC={} does not exist", p.display()))
            };
        }
        return match search_path(&p) {
            Some(found) => Ok(Some(found)),
            None => Err(format!("NVCC={} is not on PATH", p.display())),
        };
    }
    Ok(search_path(Path::new("nvcc")))
}

fn search_path(name: &Path) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Compiles one resolved source to PTX; on failure the error carries nvcc's own output.
fn run_nvcc(
    nvcc: &Path,
    source: &Path,
    gen_dir: &Path,
    module: &str,
    arch: &str,
) -> Result<PathBuf, String> {
    let ptx = gen_dir.join(format!("{module}.ptx"));
    let mut cmd = Command::new(nvcc);
    cmd.arg("-ptx")
        .arg(format!("-arch=compute_{arch}"))
        .arg("-std=c++17")
        .arg("-o")
        .arg(&ptx)
        .arg(source);
    let output = cmd
        .output()
        .map_err(|e| format!("cannot run {}: {e}", nvcc.display()))?;
    if !output.status.success() {
        return Err(format!(
            "nvcc failed on kernels/{module}.cu ({}; command: {cmd:?}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    // Warnings are worth seeing at build time.
    let stderr = String::from_utf8_lossy(&output.stderr);
    for line in stderr.lines().filter(|l| !l.trim().is_empty()) {
        println!("cargo:warning=nvcc {module}.cu: {line}");
    }
    let text = read(&ptx)?;
    if !text.contains(".entry") && !text.contains(".version") {
        return Err(format!(
            "nvcc wrote no PTX for kernels/{module}.cu to {}",
            ptx.display()
        ));
    }
    Ok(ptx)
}

/// The Rust table the crate includes: `SOURCES` and `PREBUILT_ARCH` (src/kernels/mod.rs).
fn render_table(modules: &[Module], prebuilt_arch: Option<&str>) -> String {
    let mut s = String::from("// Generated by build.rs from kernels/*.cu; do not edit.\n\n");
    s.push_str("/// One entry per `kernels/*.cu`, in file-name order.\n");
    s.push_str("pub(crate) static SOURCES: &[KernelSource] = &[\n");
    for m in modules {
        let source = m.source_path.display().to_string();
        let ptx = match &m.ptx_path {
            Some(p) => format!("Some(include_str!({:?}))", p.display().to_string()),
            None => "None".to_string(),
        };
        let _ = writeln!(
            s,
            "    KernelSource {{\n        module: {:?},\n        source: include_str!({source:?}),\n        prebuilt_ptx: {ptx},\n    }},",
            m.name
        );
    }
    s.push_str("];\n\n");
    s.push_str(
        "/// The virtual architecture (`compute_XX`) of the prebuilt PTX, when nvcc made it.\n",
    );
    match prebuilt_arch {
        Some(a) if !modules.is_empty() => {
            let _ = writeln!(
                s,
                "pub(crate) const PREBUILT_ARCH: Option<&str> = Some({:?});",
                format!("compute_{a}")
            );
        }
        _ => s.push_str("pub(crate) const PREBUILT_ARCH: Option<&str> = None;\n"),
    }
    s
}
