//! Kubernetes objects checked against the API's published schemas with
//! `scripts/kube-validate.sh` (kubernetes-validate, strict, Kubernetes 1.34), which installs
//! the tool on first use. Where it cannot be installed the check says it was skipped, unless
//! `SETPOINT_REQUIRE_KUBE_VALIDATE=1` (set by `.ci/run`) makes that a failure.

#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

fn script() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/kube-validate.sh")
}

/// Whether a missing kubernetes-validate is a failure rather than a check skipped and said so.
pub fn required() -> bool {
    std::env::var("SETPOINT_REQUIRE_KUBE_VALIDATE").as_deref() == Ok("1")
}

/// Installs the tool (into `.venv-kube/`) if it is not there; false, said plainly, when it
/// cannot be and is not required.
pub fn installed() -> bool {
    let install = Command::new("bash")
        .arg(script())
        .arg("--install")
        .output()
        .unwrap();
    if !install.status.success() {
        assert!(
            !required(),
            "kubernetes-validate could not be installed: {}",
            String::from_utf8_lossy(&install.stderr)
        );
        eprintln!("skipped: kubernetes-validate (and what it brings) could not be installed");
    }
    install.status.success()
}

/// Validates the YAML or JSON files `files`: the tool's report when every object is valid,
/// `None` when the tool could not be installed and is not required; panics with the report
/// when one is not valid.
pub fn validate<P: AsRef<Path>>(files: &[P]) -> Option<String> {
    let out = Command::new("bash")
        .arg(script())
        .args(files.iter().map(AsRef::as_ref))
        .output()
        .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    match out.status.code() {
        Some(0) => Some(report),
        Some(2) if !required() => {
            eprintln!("skipped: kubernetes-validate could not be installed: {report}");
            None
        }
        _ => panic!("not valid Kubernetes 1.34 objects:\n{report}"),
    }
}

/// The documents of a YAML file as JSON, read by the PyYAML that kubernetes-validate brings
/// (`.venv-kube/`); `None` when it is not installed and not required.
pub fn yaml_docs(path: &Path) -> Option<Vec<serde_json::Value>> {
    if !installed() {
        return None;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(root.join(".venv-kube/bin/python"))
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d]))",
        ])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{} is not YAML: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Some(serde_json::from_slice(&out.stdout).unwrap())
}
