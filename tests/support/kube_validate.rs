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
