//! `setpoint kernels check`: every kernel of kernels/ABI.md compiles with NVRTC and assembles
//! with ptxas for sm_90, the PTX cache works, and missing tools give clear errors.
//!
//! NVRTC and ptxas come from `scripts/cuda-tools.sh` (under `.cuda-tools/`), which the tests
//! find by themselves. Where they are absent the tests that need them say they were skipped,
//! unless `SETPOINT_REQUIRE_CUDA_TOOLS=1` (as in CI), where that is a failure.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// kernels/ABI.md, "Files": which module defines which kernels.
const EXPECTED: &[(&str, &[&str])] = &[
    (
        "elementwise",
        &[
            "fill_f32",
            "bias_act",
            "relu_grad",
            "col_sum",
            "sgd_step",
            "adam_step",
            "f32_to_bf16",
            "bf16_to_f32",
        ],
    ),
    ("gemm", &["gemm_f32", "gemm_bf16", "gemm_bf16_simt"]),
    ("gemm_large", &["gemm_bf16_128"]),
    ("gemm_small", &["gemm_bf16_small_m"]),
    ("gemm_wgmma", &["gemm_bf16_wgmma"]),
    ("softmax", &["softmax_xent", "softmax_rows", "sum_partial"]),
];

/// Where NVRTC and ptxas are, as the child process should see them.
struct Tools {
    ld_library_path: String,
    ptxas: PathBuf,
}

fn has_nvrtc(dir: &Path) -> bool {
    ["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"]
        .iter()
        .any(|n| dir.join(n).is_file())
}

/// Whether the loader finds NVRTC without LD_LIBRARY_PATH (ldconfig cache or default dirs).
fn system_has_nvrtc() -> bool {
    let cached = ["ldconfig", "/sbin/ldconfig", "/usr/sbin/ldconfig"]
        .iter()
        .filter_map(|c| Command::new(c).arg("-p").output().ok())
        .any(|o| String::from_utf8_lossy(&o.stdout).contains("libnvrtc.so"));
    cached
        || [
            "/lib",
            "/usr/lib",
            "/lib64",
            "/usr/lib64",
            "/lib/x86_64-linux-gnu",
            "/usr/lib/x86_64-linux-gnu",
            "/lib/aarch64-linux-gnu",
            "/usr/lib/aarch64-linux-gnu",
        ]
        .iter()
        .any(|d| has_nvrtc(Path::new(d)))
}

fn find_tools() -> Option<Tools> {
    let root = Path::new(ROOT);
    let current = std::env::var("LD_LIBRARY_PATH").unwrap_or_default();
    let in_current = current
        .split(':')
        .any(|d| !d.is_empty() && has_nvrtc(Path::new(d)));
    let local_lib = root.join(".cuda-tools/nvidia/cuda_nvrtc/lib");
    let ld_library_path = if in_current || system_has_nvrtc() {
        current
    } else if has_nvrtc(&local_lib) {
        let lib = local_lib.display().to_string();
        if current.is_empty() {
            lib
        } else {
            format!("{lib}:{current}")
        }
    } else {
        return None;
    };
    let from_env = std::env::var_os("PTXAS")
        .map(PathBuf::from)
        .filter(|p| p.is_file());
    let on_path = || {
        std::env::var_os("PATH").and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("ptxas"))
                .find(|p| p.is_file())
        })
    };
    let local =
        || Some(root.join(".cuda-tools/nvidia/cuda_nvcc/bin/ptxas")).filter(|p| p.is_file());
    let ptxas = from_env.or_else(on_path).or_else(local)?;
    Some(Tools {
        ld_library_path,
        ptxas,
    })
}

/// The tools, or `None` after saying the test is skipped; a panic where CI requires them.
fn tools_or_skip() -> Option<Tools> {
    let tools = find_tools();
    if tools.is_none() {
        if std::env::var("SETPOINT_REQUIRE_CUDA_TOOLS").as_deref() == Ok("1") {
            panic!(
                "SETPOINT_REQUIRE_CUDA_TOOLS=1 but NVRTC (libnvrtc.so.12) or ptxas was not \
                 found: run scripts/cuda-tools.sh"
            );
        }
        eprintln!("skipped: NVRTC/ptxas not installed (run scripts/cuda-tools.sh)");
    }
    tools
}

fn setpoint(tools: Option<&Tools>, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_setpoint"));
    cmd.args(args).current_dir(ROOT);
    if let Some(t) = tools {
        cmd.env("LD_LIBRARY_PATH", &t.ld_library_path)
            .env("PTXAS", &t.ptxas);
    }
    cmd
}

fn run(mut cmd: Command) -> Output {
    cmd.output().expect("run setpoint")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON object ({e}):\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&o.stdout),
            stderr(o)
        )
    })
}

/// Module name to the module's JSON object.
fn modules(v: &Value) -> BTreeMap<String, Value> {
    v["modules"]
        .as_array()
        .expect("modules array")
        .iter()
        .map(|m| {
            (
                m["module"].as_str().expect("module name").to_string(),
                m.clone(),
            )
        })
        .collect()
}

/// Module name to where its PTX came from.
fn origins(v: &Value) -> BTreeMap<String, String> {
    modules(v)
        .into_iter()
        .map(|(k, m)| (k, m["ptx_origin"].as_str().unwrap_or("-").to_string()))
        .collect()
}

/// Kernel names from the table in kernels/ABI.md ("## Kernels"): rows that start with
/// `| \`name\``.
fn abi_kernel_names() -> Vec<String> {
    let abi = std::fs::read_to_string(Path::new(ROOT).join("kernels/ABI.md")).expect("ABI.md");
    let section = abi
        .split("## Kernels")
        .nth(1)
        .expect("ABI.md has a Kernels section");
    let section = section.split("\n## ").next().unwrap_or(section);
    section
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .map(str::to_string)
        .collect()
}

#[test]
fn every_abi_kernel_compiles_and_assembles_for_sm_90() {
    let Some(tools) = tools_or_skip() else {
        return;
    };
    let out = run(setpoint(
        Some(&tools),
        &["kernels", "check", "--arch", "sm_90", "--json"],
    ));
    assert!(
        out.status.success(),
        "kernels check failed:\n{}",
        stderr(&out)
    );
    let v = json(&out);
    assert_eq!(v["ok"], true, "{v:#}");
    assert_eq!(v["arch"], "sm_90");
    assert!(v["nvrtc_version"].as_str().is_some(), "{v:#}");
    assert!(v["ptxas"].as_str().is_some(), "{v:#}");

    let mods = modules(&v);
    let mut all = Vec::new();
    for (module, expected) in EXPECTED {
        let m = mods
            .get(*module)
            .unwrap_or_else(|| panic!("module {module} missing from {v:#}"));
        assert_eq!(m["ok"], true, "{module}: {m:#}");
        let kernels = m["kernels"].as_array().expect("kernels array");
        for name in *expected {
            let k = kernels
                .iter()
                .find(|k| k["name"] == *name)
                .unwrap_or_else(|| panic!("{module} lacks kernel {name}: {m:#}"));
            assert_eq!(k["compiled"], true, "{name}: {k:#}");
            assert_eq!(k["assembled"], true, "{name}: {k:#}");
            let regs = k["registers"].as_u64().expect("registers");
            assert!((1..=255).contains(&regs), "{name}: {regs} registers");
            for field in ["smem_bytes", "spill_store_bytes", "spill_load_bytes"] {
                assert!(k[field].as_u64().is_some(), "{name}: {field} in {k:#}");
            }
        }
        all.extend(
            kernels
                .iter()
                .filter_map(|k| k["name"].as_str().map(str::to_string)),
        );
    }
    // The sm_90a module is assembled for sm_90a, where its body is built, without spills.
    let wgmma = &mods["gemm_wgmma"];
    assert_eq!(wgmma["arch"], "sm_90a", "{wgmma:#}");
    assert_eq!(mods["gemm"]["arch"], "sm_90", "{v:#}");
    let k = &wgmma["kernels"][0];
    assert_eq!(k["spill_store_bytes"], 0, "{k:#}");
    assert!(k["registers"].as_u64().is_some_and(|r| r > 64), "{k:#}");

    let abi = abi_kernel_names();
    assert!(abi.len() >= 14, "ABI.md table parsed to {abi:?}");
    for name in &abi {
        assert!(
            all.contains(name),
            "ABI.md kernel {name} not built: {all:?}"
        );
    }
}

#[test]
fn text_report_is_a_table_with_a_summary() {
    let Some(tools) = tools_or_skip() else {
        return;
    };
    let out = run(setpoint(Some(&tools), &["kernels", "check"]));
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("registers") && text.contains("spill_store_bytes"),
        "{text}"
    );
    assert!(
        text.contains("gemm_f32") && text.contains("softmax_xent"),
        "{text}"
    );
    assert!(text.contains("compiled and assembled for sm_90"), "{text}");
}

/// The report says which kernel a bf16 GEMM of each representative shape runs on, and why:
/// the small-m kernel at inference batches on tensor cores, gemm_bf16 past 16 rows,
/// gemm_bf16_128 once its 128 x 128 tiles are at least an H200's SMs, the SIMT twin on an
/// architecture without tensor cores.
#[test]
fn the_report_names_the_gemm_kernel_chosen_for_each_shape() {
    let Some(tools) = tools_or_skip() else {
        return;
    };
    let out = run(setpoint(Some(&tools), &["kernels", "check"]));
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    for line in [
        "  8 x 2048 x 784: gemm_bf16_small_m, 32 tiles: m = 8 <= 16: one row of 16-row tiles, \
         50% padding against 87% in 64-row tiles",
        "  16 x 2048 x 784: gemm_bf16_small_m, 32 tiles:",
        "  32 x 2048 x 784: gemm_bf16, 32 tiles: m = 32 > 16: 16-row tiles would read B 2 times",
        "  4096 x 4096 x 4096: gemm_bf16_128, 1024 tiles: 1024 tiles of 128 x 128 >= 132 SMs",
        "  8192 x 8192 x 8192: gemm_bf16_128, 4096 tiles: 4096 tiles of 128 x 128 >= 132 SMs",
        "  256 x 2048 x 784: gemm_bf16, 128 tiles: m = 256 > 16: 16-row tiles would read B 16 \
         times, 64-row tiles 4 (0% padding); 32 tiles of 128 x 128 would leave SMs idle (32 < \
         132 SMs)",
    ] {
        assert!(text.contains(line), "no line {line:?} in:\n{text}");
    }

    let out = run(setpoint(
        Some(&tools),
        &["kernels", "check", "--arch", "sm_75", "--json"],
    ));
    let v = json(&out);
    let choices = v["bf16_gemm_choices"]
        .as_array()
        .expect("bf16_gemm_choices");
    assert!(!choices.is_empty(), "{v:#}");
    for c in choices {
        assert_eq!(c["kernel"], "gemm_bf16_simt", "{c:#}");
        assert!(
            c["reason"]
                .as_str()
                .is_some_and(|r| r.contains("without tensor cores"))
        );
    }
}

#[test]
fn second_run_reads_the_cache_and_a_corrupt_entry_is_recompiled() {
    let Some(tools) = tools_or_skip() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().to_str().unwrap();
    // A build with nvcc carries PTX for sm_90 and needs no cache there; sm_80 still does.
    let mut arch = "sm_90";
    let check = |arch: &str| {
        let out = run(setpoint(
            Some(&tools),
            &[
                "kernels",
                "check",
                "--json",
                "--arch",
                arch,
                "--cache-dir",
                cache,
            ],
        ));
        assert!(out.status.success(), "{}", stderr(&out));
        origins(&json(&out))
    };
    let mut first = check(arch);
    if first.values().all(|o| o == "prebuilt") {
        eprintln!("note: this build carries nvcc's PTX for sm_90; the cache is checked for sm_80");
        arch = "sm_80";
        first = check(arch);
    }
    assert!(first.values().all(|o| o == "nvrtc"), "{first:?}");
    let kernel_dir = dir.path().join("kernels");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&kernel_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert_eq!(
        files.len(),
        first.len(),
        "one cache file per module: {files:?}"
    );

    let second = check(arch);
    assert!(second.values().all(|o| o == "cache"), "{second:?}");

    // Truncate the gemm entry, as a crash mid-write on a filesystem without atomic rename
    // might; only that module is compiled again, and its entry is whole again afterwards.
    let gemm = files
        .iter()
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("gemm-")
        })
        .expect("gemm cache file");
    let whole = std::fs::read(gemm).unwrap();
    std::fs::write(gemm, &whole[..whole.len() / 2]).unwrap();
    let third = check(arch);
    for (module, origin) in &third {
        let expected = if module == "gemm" { "nvrtc" } else { "cache" };
        assert_eq!(origin, expected, "{module}: {third:?}");
    }
    assert_eq!(std::fs::read(gemm).unwrap(), whole);

    // Garbage that is not even text.
    std::fs::write(gemm, [0xff, 0xfe, 0x00, 0x01]).unwrap();
    assert_eq!(check(arch)["gemm"], "nvrtc");
    assert_eq!(check(arch)["gemm"], "cache");
}

#[test]
fn without_ptxas_it_says_so_and_still_compiles() {
    let Some(tools) = tools_or_skip() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // No $PTXAS, no ptxas on PATH, and a working directory without .cuda-tools.
    let path: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    let path =
        std::env::join_paths(path.into_iter().filter(|d| !d.join("ptxas").is_file())).unwrap();
    let mut cmd = setpoint(Some(&tools), &["kernels", "check", "--json"]);
    cmd.env_remove("PTXAS")
        .env("PATH", path)
        .current_dir(dir.path());
    let out = run(cmd);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("ptxas not found"), "{}", stderr(&out));
    let v = json(&out);
    assert_eq!(v["ok"], true);
    assert!(v["ptxas"].is_null(), "{v:#}");
    for (module, m) in modules(&v) {
        for k in m["kernels"].as_array().unwrap() {
            assert_eq!(k["compiled"], true, "{module}: {k:#}");
            assert_eq!(k["assembled"], false, "{module}: {k:#}");
            assert!(k["registers"].is_null(), "{module}: {k:#}");
        }
    }
}

#[test]
fn missing_nvrtc_is_a_clear_error_not_a_panic() {
    if system_has_nvrtc() {
        eprintln!("skipped: this system has NVRTC in its default library path");
        return;
    }
    let empty = tempfile::tempdir().unwrap();
    let mut cmd = setpoint(None, &["kernels", "check"]);
    cmd.env("LD_LIBRARY_PATH", empty.path()).env_remove("PTXAS");
    let out = run(cmd);
    let err = stderr(&out);
    if out.status.success() {
        // Only a build with nvcc's PTX for sm_90 can check without NVRTC.
        let v = json(&run({
            let mut c = setpoint(None, &["kernels", "check", "--json"]);
            c.env("LD_LIBRARY_PATH", empty.path());
            c
        }));
        assert!(
            origins(&v).values().all(|o| o == "prebuilt"),
            "succeeded without NVRTC: {v:#}"
        );
        return;
    }
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("NVRTC"), "{err}");
    assert!(err.contains("scripts/cuda-tools.sh"), "{err}");
    assert!(
        !err.contains("panicked") && !err.contains("RUST_BACKTRACE"),
        "{err}"
    );
}

#[test]
fn bad_arch_and_missing_ptxas_path_are_usage_errors() {
    let out = run(setpoint(None, &["kernels", "check", "--arch", "hopper"]));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("sm_90"), "{}", stderr(&out));

    let out = run(setpoint(
        None,
        &["kernels", "check", "--ptxas", "/nonexistent/ptxas"],
    ));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("/nonexistent/ptxas"),
        "{}",
        stderr(&out)
    );
}

/// The committed kernels/ptx is what NVRTC makes of the sources now: CI fails when a kernel
/// changes without `setpoint kernels ptx --write`.
#[test]
fn committed_ptx_is_what_nvrtc_makes_of_the_sources() {
    let Some(tools) = tools_or_skip() else {
        return;
    };
    let out = run(setpoint(Some(&tools), &["kernels", "ptx", "--check"]));
    assert!(
        out.status.success(),
        "kernels/ptx differs from what NVRTC makes of kernels/*.cu; run `cargo run -- kernels \
         ptx --write` with NVRTC from scripts/cuda-tools.sh and commit the result:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );

    // A changed line is found and named; a file from another NVRTC cannot be compared.
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(Path::new(ROOT).join("kernels/ptx")).unwrap() {
        let p = entry.unwrap().path();
        std::fs::copy(&p, dir.path().join(p.file_name().unwrap())).unwrap();
    }
    let gemm = dir.path().join("gemm.ptx");
    let text = std::fs::read_to_string(&gemm).unwrap();
    let dir_arg = dir.path().to_str().unwrap();
    std::fs::write(&gemm, text.replacen(".target sm_90", ".target sm_80", 1)).unwrap();
    let out = run(setpoint(
        Some(&tools),
        &["kernels", "ptx", "--check", "--dir", dir_arg],
    ));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("gemm.ptx: differs from line"),
        "{}",
        stderr(&out)
    );
    let other = text.replacen("nvrtc=", "nvrtc=11.", 1);
    std::fs::write(&gemm, other).unwrap();
    let out = run(setpoint(
        Some(&tools),
        &["kernels", "ptx", "--check", "--dir", dir_arg],
    ));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("was made by NVRTC 11."),
        "{}",
        stderr(&out)
    );
}

/// A build with ptxas carries machine code for sm_90 beside the PTX, so a host with only the
/// driver runs the kernels without compiling anything.
#[test]
fn the_binary_carries_ptx_and_when_built_with_ptxas_machine_code() {
    let out = run(setpoint(None, &["kernels", "check", "--json"]));
    let v = json(&out);
    assert_eq!(v["embedded"]["ptx"], "compute_90", "{v:#}");
    let required = std::env::var("SETPOINT_REQUIRE_CUDA_TOOLS").as_deref() == Ok("1");
    if required || !v["embedded"]["sass"].is_null() {
        assert_eq!(v["embedded"]["sass"], "sm_90", "{v:#}");
    } else {
        eprintln!("note: built without ptxas, so no machine code is embedded");
    }
}
