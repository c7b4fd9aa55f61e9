//! The device check's plumbing on a host without a GPU: `scripts/device-check/prepare.sh
//! --dry-run` bundles the debug binaries cargo built, and the bundle's `run.sh --dry-run` runs
//! every section with one forced to fail and one forced to hang. What a person gets back is
//! checked: at most 8 files (none over 16 MiB), a summary that names every section, a
//! report.json that parses, the injected failure and time-out recorded, and the sections after
//! them still run. Also: a bundle over the size limit is refused with the sizes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde::Deserialize;

/// Every section, in run order (scripts/device-check/run.py).
const SECTIONS: [&str; 17] = [
    "env",
    "kernels-check",
    "probe-build",
    "kernels",
    "gemm-vs-cublas",
    "gemm",
    "training",
    "torch",
    "lanes",
    "lanes-green",
    "inference",
    "nvml",
    "daemon",
    "gpu-tests",
    "replicas",
    "memcheck",
    "racecheck",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Status {
    Pass,
    Fail,
    Skipped,
    Timeout,
}

#[derive(Debug, Deserialize)]
struct SectionRecord {
    name: String,
    status: Status,
    reason: Option<String>,
    exit_code: Option<i32>,
    injected: Option<String>,
    /// The section's own JSON document, as it wrote it.
    figures: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
struct Report {
    format: String,
    dry_run: bool,
    complete: bool,
    outputs: Vec<String>,
    sections: Vec<SectionRecord>,
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    eprintln!(
        "{cmd:?}: {}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The newest `cuda_backend` test binary cargo built beside this one, if any: the bundle's
/// GPU tests, which say "skipped" without a GPU.
fn gpu_test_binary() -> Option<PathBuf> {
    let deps = std::env::current_exe().ok()?.parent()?.to_path_buf();
    std::fs::read_dir(deps)
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            name.starts_with("cuda_backend-") && !name.contains('.')
        })
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .max()
        .map(|(_, p)| p)
}

fn prepare(dir: &Path, extra: &[&str]) -> Output {
    let mut cmd = Command::new("bash");
    cmd.arg(root().join("scripts/device-check/prepare.sh"))
        .args([
            "--dry-run",
            "--bin",
            env!("CARGO_BIN_EXE_setpoint"),
            "--dir",
        ])
        .arg(dir)
        .args(extra);
    if let Some(t) = gpu_test_binary() {
        cmd.arg("--test-bin").arg(t);
    }
    run(&mut cmd)
}

fn files_under(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let m = e.metadata().unwrap();
        if m.is_dir() {
            out.extend(files_under(&e.path()));
        } else {
            out.push((e.path(), m.len()));
        }
    }
    out
}

#[test]
fn a_bundle_over_the_size_limit_is_refused_with_the_sizes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("too-big");
    let out = prepare(&dir, &["--max-mib", "1"]);
    assert!(!out.status.success(), "a 1 MiB limit was accepted");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refused"), "{err}");
    assert!(
        err.contains("MiB of 1 MiB"),
        "the sizes were not printed: {err}"
    );
    assert!(
        !dir.exists(),
        "a refused bundle was left at {}",
        dir.display()
    );
}

#[test]
fn a_dry_run_records_every_section_and_survives_a_failure_and_a_hang() {
    let tmp = tempfile::tempdir().unwrap();
    let bundle = tmp.path().join("bundle");
    let prepared = prepare(&bundle, &[]);
    assert!(prepared.status.success(), "prepare failed");
    let err = String::from_utf8_lossy(&prepared.stderr);
    assert!(err.contains("MiB of 64 MiB"), "no size printed: {err}");
    for f in [
        "MANIFEST.json",
        "bin/setpoint",
        "run.sh",
        "probe/probe.cu",
        "probe/gemm.cu",
    ] {
        assert!(bundle.join(f).exists(), "{f} missing from the bundle");
    }

    let out_dir = tmp.path().join("out");
    let ran = run(Command::new("bash")
        .arg(bundle.join("run.sh"))
        .args(["--dry-run", "--out"])
        .arg(&out_dir)
        .args(["--inject", "kernels=fail", "--inject", "gemm=hang"])
        .args(["--timeout", "gemm=2", "--budget-s", "150"]));
    // An injected failure makes the run's exit status say so.
    assert_eq!(ran.status.code(), Some(1), "run.sh exit status");

    let files = files_under(&out_dir);
    assert!(
        files.len() <= 8,
        "{} files came back: {files:?}",
        files.len()
    );
    for (path, len) in &files {
        assert!(*len <= 16 << 20, "{} is {len} bytes", path.display());
    }
    let names: Vec<String> = files
        .iter()
        .map(|(p, _)| p.file_name().unwrap().to_string_lossy().to_string())
        .collect();
    for want in [
        "summary.txt",
        "report.json",
        "nvidia-smi.csv",
        "device-check.tar.gz",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} missing: {names:?}");
    }

    let text = std::fs::read_to_string(out_dir.join("report.json")).unwrap();
    let report: Report = serde_json::from_str(&text).expect("report.json parses");
    assert_eq!(report.format, "setpoint-device-check-v1");
    assert!(report.dry_run && report.complete);
    assert!(report.outputs.len() <= 8);
    let by_name: BTreeMap<&str, &SectionRecord> = report
        .sections
        .iter()
        .map(|s| (s.name.as_str(), s))
        .collect();
    let summary = std::fs::read_to_string(out_dir.join("summary.txt")).unwrap();
    for name in SECTIONS {
        assert!(
            by_name.contains_key(name),
            "{name} missing from report.json"
        );
        assert!(
            summary.lines().any(|l| l.starts_with(&format!("{name} "))),
            "{name} missing from the summary:\n{summary}"
        );
    }
    assert_eq!(report.sections.len(), SECTIONS.len());

    let kernels = by_name["kernels"];
    assert_eq!(kernels.status, Status::Fail);
    assert_eq!(kernels.injected.as_deref(), Some("fail"));
    assert!(
        kernels.reason.as_deref().unwrap_or("").contains("injected"),
        "{kernels:?}"
    );
    let gemm = by_name["gemm"];
    assert_eq!(gemm.status, Status::Timeout, "{gemm:?}");
    assert_eq!(gemm.exit_code, Some(124));
    assert!(summary.contains("TIMEOUT") && summary.contains("FAIL"));

    // The sections after the hang ran: the daemon served on the CPU, the training section
    // measured the CPU backend and recorded the GPU half as skipped.
    assert_eq!(by_name["env"].status, Status::Pass);
    assert_eq!(
        by_name["daemon"].status,
        Status::Pass,
        "{:?}",
        by_name["daemon"]
    );
    let training = by_name["training"];
    assert_eq!(training.status, Status::Skipped, "{training:?}");
    let doc = training.figures.as_ref().expect("training wrote its JSON");
    assert_eq!(doc["format"], "setpoint-gpu-check-v1");
    let runs = doc["figures"]["runs"].as_array().expect("training runs");
    assert!(!runs.is_empty());
    for r in runs {
        assert!(r["cpu_samples_per_s"].as_f64().unwrap_or(0.0) > 0.0, "{r}");
        assert!(r["gpu_samples_per_s"].is_null(), "{r}");
    }
    // Whatever did not run says why.
    for s in &report.sections {
        if matches!(s.status, Status::Skipped | Status::Fail | Status::Timeout) {
            assert!(
                s.reason.as_deref().is_some_and(|r| !r.is_empty()),
                "{} has no reason: {s:?}",
                s.name
            );
        }
    }

    let listing = run(Command::new("tar")
        .arg("-tzf")
        .arg(out_dir.join("device-check.tar.gz")));
    assert!(listing.status.success());
    let listing = String::from_utf8_lossy(&listing.stdout);
    for f in [
        "device-check/sections/env.json",
        "device-check/sections/kernels.err",
        "device-check/sections/daemon.json",
        "device-check/daemon/serve.log",
    ] {
        assert!(listing.lines().any(|l| l == f), "{f} not in the tarball");
    }
}
