//! Build script. Records the source revision in the version string (`setpoint --version`),
//! so an operator can tell which build a host runs, and prepares the CUDA kernels.
//!
//! Kernels (`kernels/*.cu`, see `kernels/ABI.md`): each file is one module named by its stem.
//! Its `#include "common.cuh"` is resolved textually (the only include the ABI allows), so the
//! daemon can hand the source to NVRTC with no include path. Each module's committed PTX,
//! `kernels/ptx/<module>.ptx` (see `src/kernels/aot.rs`), is embedded when its header says it
//! was made from this very source; a stale or missing one is left out with a warning, and the
//! daemon compiles that module with NVRTC at run time instead. When ptxas is found
//! (`$PTXAS`, beside `$NVCC`, on `PATH`, or `.cuda-tools/` from `scripts/cuda-tools.sh`) the
//! embedded PTX is also assembled into machine code for `sm_90` (`sm_90a` for a module whose
//! source has a line `// setpoint-module-target: sm_90a`, whose PTX is for `compute_90a`)
//! and embedded; a ptxas
//! failure is a warning, or an error with `SETPOINT_REQUIRE_SASS=1` (the device bundle sets
//! it). No CUDA tool is needed to build. The crate includes `$OUT_DIR/kernels.rs`, a table
//! with one entry per module (see `src/kernels/mod.rs`).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The one header a kernel source may include (kernels/ABI.md, "Includes").
const COMMON_HEADER: &str = "common.cuh";
/// The committed PTX's virtual architecture and the machine code made from it.
const PTX_ARCH: &str = "compute_90";
const SASS_ARCH: &str = "sm_90";
/// The same for modules whose source says `// setpoint-module-target: sm_90a` (Hopper's
/// architecture-specific features; `ModuleTarget` in src/kernels/mod.rs).
const PTX_ARCH_90A: &str = "compute_90a";
const SASS_ARCH_90A: &str = "sm_90a";
const TARGET_LINE: &str = "// setpoint-module-target:";
/// The first words of a committed PTX file's header line (src/kernels/aot.rs).
const PTX_TAG: &str = "// setpoint-kernel";
/// Where scripts/cuda-tools.sh installs ptxas.
const LOCAL_PTXAS: &str = ".cuda-tools/nvidia/cuda_nvcc/bin/ptxas";

fn main() {
    revision();
    if let Err(e) = protos() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
    if let Err(e) = kernels() {
        // Cargo shows a failing build script's stderr; say what broke and stop the build.
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

/// The gRPC service (`proto/grpc_service.proto`, the Open Inference Protocol as Triton
/// defines it) as Rust: parsed by protox, a protobuf compiler in pure Rust, so no `protoc`
/// is needed; the code goes to `$OUT_DIR/inference.rs` (see `src/api/grpc/mod.rs`).
fn protos() -> Result<(), String> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(["grpc_service.proto"], ["proto"])
        .map_err(|e| format!("proto/grpc_service.proto: {e}"))?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .build_transport(false)
        // tonic's prost codec with buffers sized for inference messages.
        .codec_path("crate::api::grpc::buffers::InferenceCodec")
        .compile_fds(fds)
        .map_err(|e| format!("generating the gRPC code: {e}"))?;
    if std::env::var_os("CARGO_FEATURE_KUBERNETES").is_some() {
        kubelet_protos()?;
    }
    Ok(())
}

/// The kubelet's plugin services (`proto/kubelet/`), for the `kubernetes` feature: the DRA
/// plugin service and plugin registration, server and client (the tests play the kubelet).
fn kubelet_protos() -> Result<(), String> {
    let files = ["kubelet/dra_v1.proto", "kubelet/pluginregistration.proto"];
    let fds = protox::compile(files, ["proto"]).map_err(|e| format!("proto/kubelet: {e}"))?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .build_transport(false)
        .compile_fds(fds)
        .map_err(|e| format!("generating the kubelet plugin code: {e}"))
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
    /// Built for sm_90a rather than for every architecture.
    sm90a: bool,
    /// The resolved source, written under OUT_DIR.
    source_path: PathBuf,
    /// The committed PTX, when it was made from this source.
    ptx_path: Option<PathBuf>,
    /// Machine code ptxas made of it, under OUT_DIR.
    sass_path: Option<PathBuf>,
}

fn kernels() -> Result<(), String> {
    let manifest_dir = PathBuf::from(env("CARGO_MANIFEST_DIR")?);
    let out_dir = PathBuf::from(env("OUT_DIR")?);
    let kernel_dir = manifest_dir.join("kernels");
    for var in ["PTXAS", "NVCC", "SETPOINT_REQUIRE_SASS"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    // The directories themselves, so that a new file is picked up.
    println!("cargo:rerun-if-changed=kernels");
    println!("cargo:rerun-if-changed=kernels/ptx");
    println!("cargo:rerun-if-changed=kernels/{COMMON_HEADER}");
    println!("cargo:rerun-if-changed={LOCAL_PTXAS}");

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
    let require_sass = std::env::var("SETPOINT_REQUIRE_SASS").is_ok_and(|v| v == "1");
    let ptxas = find_ptxas(&manifest_dir);
    if require_sass && ptxas.is_none() {
        return Err(
            "SETPOINT_REQUIRE_SASS=1 but no ptxas was found ($PTXAS, beside $NVCC, \
                    PATH, .cuda-tools/); run scripts/cuda-tools.sh"
                .into(),
        );
    }
    let gen_dir = out_dir.join("kernels");
    std::fs::create_dir_all(&gen_dir)
        .map_err(|e| format!("cannot create {}: {e}", gen_dir.display()))?;

    let mut modules = Vec::new();
    for cu in &cu_files {
        println!("cargo:rerun-if-changed={}", cu.display());
        let name = module_name(cu)?;
        let text = read(cu)?;
        let sm90a = module_target(&text, &name)?;
        let (ptx_arch, sass_arch) = if sm90a {
            (PTX_ARCH_90A, SASS_ARCH_90A)
        } else {
            (PTX_ARCH, SASS_ARCH)
        };
        let resolved = resolve_includes(&text, &name, header.as_deref())?;
        let source_path = gen_dir.join(format!("{name}.cu"));
        write_if_changed(&source_path, &resolved)?;
        let ptx_path = committed_ptx(&kernel_dir, &name, &resolved, ptx_arch)?;
        let sass_path = match (&ptx_path, &ptxas) {
            (Some(ptx), Some(ptxas)) => {
                let target = (name.as_str(), sass_arch);
                assemble(ptxas, ptx, &gen_dir, target, require_sass)?
            }
            _ => None,
        };
        modules.push(Module {
            name,
            sm90a,
            source_path,
            ptx_path,
            sass_path,
        });
    }
    write_if_changed(&out_dir.join("kernels.rs"), &render_table(&modules))
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

/// Whether the source asks to be built for sm_90a (a line `// setpoint-module-target:
/// sm_90a`); any other target named there is an error.
fn module_target(text: &str, module: &str) -> Result<bool, String> {
    let Some(line) = text
        .lines()
        .find(|l| l.trim_start().starts_with(TARGET_LINE))
    else {
        return Ok(false);
    };
    match line.trim_start()[TARGET_LINE.len()..].trim() {
        "sm_90a" => Ok(true),
        other => Err(format!(
            "kernels/{module}.cu: module target {other:?} is not known (only sm_90a is)"
        )),
    }
}

/// `kernels/ptx/<module>.ptx` when its header says it was made from `resolved` for
/// `ptx_arch`; `None`, with a warning, when it is missing or stale.
fn committed_ptx(
    kernel_dir: &Path,
    module: &str,
    resolved: &str,
    ptx_arch: &str,
) -> Result<Option<PathBuf>, String> {
    let path = kernel_dir.join("ptx").join(format!("{module}.ptx"));
    println!("cargo:rerun-if-changed={}", path.display());
    let regenerate = "regenerate kernels/ptx with `cargo run -- kernels ptx --write` \
                      (NVRTC from scripts/cuda-tools.sh)";
    let Ok(text) = std::fs::read_to_string(&path) else {
        println!(
            "cargo:warning=kernels/ptx/{module}.ptx is missing: the binary will compile \
             {module} with NVRTC at run time; {regenerate}"
        );
        return Ok(None);
    };
    let want = format!(
        "module={module} arch={ptx_arch} source-fnv64={:016x} ",
        fnv64(resolved.as_bytes())
    );
    let first = text.lines().next().unwrap_or("");
    let matches = first
        .strip_prefix(PTX_TAG)
        .is_some_and(|rest| rest.trim_start().starts_with(&want));
    if matches {
        Ok(Some(path))
    } else {
        println!(
            "cargo:warning=kernels/ptx/{module}.ptx was made from another version of \
             kernels/{module}.cu and is not embedded: the binary will compile {module} with \
             NVRTC at run time; {regenerate}"
        );
        Ok(None)
    }
}

/// 64-bit FNV-1a, as `src/kernels/cache.rs` computes it for the PTX header.
fn fnv64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// ptxas from `$PTXAS`, beside `$NVCC`, on `PATH`, or from `.cuda-tools/`.
fn find_ptxas(manifest_dir: &Path) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("PTXAS").filter(|v| !v.is_empty()) {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Some(p)
        } else {
            search_path(&p)
        };
    }
    if let Some(nvcc) = std::env::var_os("NVCC").filter(|v| !v.is_empty()) {
        let beside = PathBuf::from(nvcc).with_file_name("ptxas");
        if beside.is_file() {
            return Some(beside);
        }
    }
    search_path(Path::new("ptxas")).or_else(|| {
        let local = manifest_dir.join(LOCAL_PTXAS);
        local.is_file().then_some(local)
    })
}

fn search_path(name: &Path) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Assembles the committed PTX of `module` for `sass_arch` (`target` is both). A failure is
/// a warning (the binary then carries the PTX only), or an error when `required`.
fn assemble(
    ptxas: &Path,
    ptx: &Path,
    gen_dir: &Path,
    (module, sass_arch): (&str, &str),
    required: bool,
) -> Result<Option<PathBuf>, String> {
    let cubin = gen_dir.join(format!("{module}.{sass_arch}.cubin"));
    let result = Command::new(ptxas)
        .arg(format!("-arch={sass_arch}"))
        .arg("-o")
        .arg(&cubin)
        .arg(ptx)
        .output();
    let failure = match result {
        Ok(o) if o.status.success() && cubin.is_file() => return Ok(Some(cubin)),
        Ok(o) => format!(
            "{} ({}): {}{}",
            ptxas.display(),
            o.status,
            String::from_utf8_lossy(&o.stdout).trim(),
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => format!("cannot run {}: {e}", ptxas.display()),
    };
    let msg =
        format!("ptxas could not assemble kernels/ptx/{module}.ptx for {sass_arch}: {failure}");
    if required {
        return Err(msg);
    }
    println!("cargo:warning={msg}; the binary carries its PTX only");
    Ok(None)
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

/// The Rust table the crate includes: `SOURCES`, `PREBUILT_ARCH` and `SASS_ARCH`
/// (src/kernels/mod.rs).
fn render_table(modules: &[Module]) -> String {
    let mut s = String::from("// Generated by build.rs from kernels/*.cu; do not edit.\n\n");
    s.push_str("/// One entry per `kernels/*.cu`, in file-name order.\n");
    s.push_str("pub(crate) static SOURCES: &[KernelSource] = &[\n");
    let opt = |p: &Option<PathBuf>, mac: &str| match p {
        Some(p) => format!("Some({mac}!({:?}))", p.display().to_string()),
        None => "None".to_string(),
    };
    for m in modules {
        let source = m.source_path.display().to_string();
        let _ = writeln!(
            s,
            "    KernelSource {{\n        module: {:?},\n        source: include_str!({source:?}),\n        prebuilt_ptx: {},\n        prebuilt_sass: {},\n        target: ModuleTarget::{},\n    }},",
            m.name,
            opt(&m.ptx_path, "include_str"),
            opt(&m.sass_path, "include_bytes"),
            if m.sm90a { "Sm90a" } else { "Portable" },
        );
    }
    s.push_str("];\n\n");
    let arch = |any: bool, a: &str| {
        if any {
            format!("Some({a:?})")
        } else {
            "None".into()
        }
    };
    let _ = writeln!(
        s,
        "/// The virtual architecture of the embedded PTX.\npub(crate) const PREBUILT_ARCH: Option<&str> = {};",
        arch(
            modules.iter().any(|m| !m.sm90a && m.ptx_path.is_some()),
            PTX_ARCH
        )
    );
    let _ = writeln!(
        s,
        "/// The architecture of the embedded machine code.\npub(crate) const SASS_ARCH: Option<&str> = {};",
        arch(
            modules.iter().any(|m| !m.sm90a && m.sass_path.is_some()),
            SASS_ARCH
        )
    );
    s
}
