//! `setpoint status --watch` against the real daemon binary: frames one after another when
//! standard output is a pipe, NDJSON with `--json`, and its options refused when wrong.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::support::child;
use child::{ChildDaemon, cli_at, free_port, poll, stderr_of, stdout_of};

/// The daemon with one service (`mlp`, p99 ≤ 25 ms) and one long job, ready.
fn start(dir: &Path) -> ChildDaemon {
    let port = free_port();
    let config = dir.join("setpoint.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{port}\"\nstate_dir = \"{}\"\n\
             [[services]]\nname = \"mlp\"\nlayers = [4, 3]\n[services.slo]\np99_ms = 25\n",
            dir.join("state").display()
        ),
    )
    .unwrap();
    let d = ChildDaemon::spawn(
        &config,
        port,
        &dir.join("daemon.log"),
        None,
        Duration::from_secs(20),
    );
    poll(Duration::from_secs(60), "the daemon to be ready", || {
        (d.get_json("/v2/health/ready").0 == 200).then_some(())
    });
    d.submit(
        "trainer",
        &[
            "--data",
            "synthetic:blobs:size=300,classes=3,features=8",
            "--layers",
            "8,16,3",
            "--epochs",
            "2",
        ],
    );
    d
}

/// `setpoint ARGS --url URL`, standard output a pipe.
#[test]
fn watch_prints_count_frames_and_ndjson() {
    let dir = tempfile::tempdir().unwrap();
    let d = start(dir.path());
    let args = ["status", "--watch", "--count", "2", "--interval", "0.2"];
    let out = cli_at(&d.url, &args, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    let text = stdout_of(&out);
    assert!(
        !text.contains('\x1b'),
        "no escape codes into a pipe: {text:?}"
    );
    let headers = text.lines().filter(|l| l.starts_with("setpoint ")).count();
    assert_eq!(headers, 2, "two frames, one header each:\n{text}");
    // Frames follow one another, a blank line between them.
    let second = text.find("\n\nsetpoint ").expect("a second frame") + 2;
    assert!(text.starts_with("setpoint "), "{text}");
    for frame in [&text[..second], &text[second..]] {
        assert!(frame.contains("SERVICE"), "{frame}");
        assert!(frame.lines().any(|l| l.starts_with("mlp ")), "{frame}");
        assert!(frame.contains("/ 25 ms"), "{frame}");
        assert!(frame.lines().any(|l| l.starts_with("trainer ")), "{frame}");
        assert!(frame.lines().any(|l| l.starts_with("cpu ")), "{frame}");
    }
    for l in text.lines() {
        assert!(l.chars().count() <= 100, "{l}");
    }

    let mut json_args = args.to_vec();
    json_args.push("--json");
    let out = cli_at(&d.url, &json_args, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    let lines: Vec<String> = stdout_of(&out).lines().map(str::to_string).collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    for l in &lines {
        let v: Value = serde_json::from_str(l).unwrap();
        assert_eq!(v["tenants"][0]["name"], "mlp", "{v}");
        assert_eq!(v["tenants"][0]["slo_p99_ms"], 25.0, "{v}");
        assert_eq!(v["tenants"][1]["name"], "trainer", "{v}");
    }
}

#[test]
fn watch_options_are_checked() {
    let url = format!("http://127.0.0.1:{}", free_port());
    for bad in [
        &["--interval", "0"][..],
        &["--interval", "-1"],
        &["--count", "0"],
    ] {
        let mut args = vec!["status", "--watch"];
        args.extend(bad);
        let out = cli_at(&url, &args, &[]);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr_of(&out));
    }
    let out = cli_at(&url, &["status", "--watch", "--interval", "0"], &[]);
    assert!(
        stderr_of(&out).contains("greater than 0"),
        "{}",
        stderr_of(&out)
    );
    let out = cli_at(&url, &["status", "--count", "2"], &[]);
    assert_eq!(out.status.code(), Some(2), "--count needs --watch");
    // Nothing listens there: the first refresh fails as `setpoint status` does.
    let out = cli_at(&url, &["status", "--watch", "--count", "3"], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains("cannot reach the daemon"),
        "{}",
        stderr_of(&out)
    );
    assert_eq!(stdout_of(&out), "");
}
