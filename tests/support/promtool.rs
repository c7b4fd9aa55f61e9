//! Prometheus's own linter on a metrics text, when it is installed (`.ci/run` installs it).

use std::io::Write;
use std::process::{Command, Stdio};

/// `promtool check metrics` on `text`; says it was skipped when promtool is not installed.
pub fn promtool_check(text: &str) {
    match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(mut child) => {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "promtool check metrics: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Err(_) => eprintln!("skipped: promtool not found, `promtool check metrics` not run"),
    }
}
