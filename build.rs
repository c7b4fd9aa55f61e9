//! Build script. Records the source revision in the version string (`setpoint --version`),
//! so an operator can tell which build a host runs. The CUDA kernels will be compiled here
//! too once they exist.

use std::process::Command;

fn main() {
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
        if std::path::Path::new(p).exists() {
            println!("cargo:rerun-if-changed={p}");
        }
    }
}
