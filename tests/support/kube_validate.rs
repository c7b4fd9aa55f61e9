//! Kubernetes objects checked against the API's published schemas with
//! `scripts/kube-validate.sh` (kubernetes-validate, strict, Kubernetes 1.34), which installs
//! the tool on first use. Where it cannot be installed the check says it was skipped, unless
//! `SETPOINT_REQUIRE_KUBE_VALIDATE=1` (set by `.ci/run`) makes that a failure.

#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

/// Validates the YAML or JSON files `files`; panics with the tool's report when one is not
/// valid.
pub fn validate(files: &[&Path]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/kube-validate.sh");
    let out = Command::new("bash")
        .arg(script)
        .args(files)
        .output()
        .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    match out.status.code() {
        Some(0) => {}
        Some(2) if std::env::var("SETPOINT_REQUIRE_KUBE_VALIDATE").as_deref() != Ok("1") => {
            eprintln!("skipped: kubernetes-validate could not be installed: {report}");
        }
        _ => panic!("{files:?} are not valid Kubernetes 1.34 objects:\n{report}"),
    }
}

/// The documents of a YAML file as JSON, read by the PyYAML that kubernetes-validate brings
/// (`.venv-kube/`); `None`, with a line saying so, when it is not installed and not required.
pub fn yaml_docs(path: &Path) -> Option<Vec<serde_json::Value>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let install = Command::new("bash")
        .arg(root.join("scripts/kube-validate.sh"))
        .arg("--install")
        .output()
        .unwrap();
    if !install.status.success() {
        assert!(
            std::env::var("SETPOINT_REQUIRE_KUBE_VALIDATE").as_deref() != Ok("1"),
            "kubernetes-validate could not be installed: {}",
            String::from_utf8_lossy(&install.stderr)
        );
        eprintln!("skipped: kubernetes-validate (and its YAML reader) could not be installed");
        return None;
    }
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
