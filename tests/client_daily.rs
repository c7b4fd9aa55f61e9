//! The everyday client commands against the real daemon binary: `jobs wait` and its exit
//! codes, `services` (list, show, remove), `reload` and the cancel answer.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::support::child;
use child::{ChildDaemon, free_port, poll, stderr_of, stdout_of};

/// The daemon on a config file in `dir` that a test may rewrite; waits until it is ready.
fn start(dir: &Path) -> (ChildDaemon, std::path::PathBuf) {
    let port = free_port();
    let config = dir.join("setpoint.toml");
    std::fs::write(&config, base_config(dir, port)).unwrap();
    let log = dir.join("daemon.log");
    let d = ChildDaemon::spawn(&config, port, &log, None, Duration::from_secs(20));
    poll(Duration::from_secs(30), "the daemon to be ready", || {
        (d.get_json("/v2/health/ready").0 == 200).then_some(())
    });
    (d, config)
}

fn base_config(dir: &Path, port: u16) -> String {
    format!(
        "listen = \"127.0.0.1:{port}\"\nstate_dir = \"{}\"\n",
        dir.join("state").display()
    )
}

#[test]
fn jobs_wait_exits_by_how_the_job_fared() {
    let dir = tempfile::tempdir().unwrap();
    let (d, _) = start(dir.path());
    let blobs = "synthetic:blobs:size=500,classes=3,features=8";
    d.submit(
        "ok",
        &[
            "--data",
            blobs,
            "--layers",
            "8,16,3",
            "--target-accuracy",
            "0.9",
            "--epochs",
            "200",
            "--deadline",
            "10m",
        ],
    );
    let text = d.cli_expect(0, &["jobs", "wait", "ok", "--timeout", "2m"]);
    assert_eq!(text, "job ok completed: deadline met, target reached\n");
    let v: Value =
        serde_json::from_str(&d.cli_expect(0, &["jobs", "wait", "ok", "--json"])).unwrap();
    assert_eq!(v["state"], "completed", "{v}");

    // Completed at its epoch limit below its target: ended, set point missed, exit 1.
    d.submit(
        "short",
        &[
            "--data",
            "synthetic:spirals:size=300",
            "--layers",
            "2,2,3",
            "--epochs",
            "1",
            "--target-accuracy",
            "1.0",
        ],
    );
    let out = d.cli(&["jobs", "wait", "short"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    assert_eq!(stdout_of(&out), "job short completed: target missed\n");
    assert!(
        stderr_of(&out).contains("job short missed its set points"),
        "{}",
        stderr_of(&out)
    );

    // Still running when the timeout passes: exit 3; cancelled: exit 1.
    d.submit(
        "long",
        &[
            "--data",
            "synthetic:blobs:size=4000,features=32",
            "--layers",
            "32,256,10",
            "--epochs",
            "100000",
            "--best-effort",
        ],
    );
    let out = d.cli(&["jobs", "wait", "long", "--timeout", "1s"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr_of(&out));
    assert!(stdout_of(&out).is_empty(), "{}", stdout_of(&out));
    assert!(
        stderr_of(&out).contains("after waiting 1s"),
        "{}",
        stderr_of(&out)
    );
    let text = d.cli_expect(0, &["jobs", "cancel", "long"]);
    assert!(text.starts_with("cancelling job long"), "{text}");
    let state = text.lines().find(|l| l.starts_with("state ")).unwrap();
    assert!(state.ends_with(" cancelling"), "{text}");
    let out = d.cli(&["jobs", "wait", "long", "--timeout", "1m"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    assert!(
        stdout_of(&out).starts_with("job long cancelled"),
        "{}",
        stdout_of(&out)
    );
    assert!(
        stderr_of(&out).contains("did not complete"),
        "{}",
        stderr_of(&out)
    );

    // No such job, or a timeout that is not a duration: exit 2.
    let out = d.cli(&["jobs", "wait", "nope"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains("unknown job nope"),
        "{}",
        stderr_of(&out)
    );
    let out = d.cli(&["jobs", "wait", "ok", "--timeout", "soon"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains("--timeout: invalid duration \"soon\""),
        "{}",
        stderr_of(&out)
    );
}

#[test]
fn services_are_listed_shown_and_removed() {
    let dir = tempfile::tempdir().unwrap();
    let (d, _) = start(dir.path());
    assert_eq!(d.cli_expect(0, &["services"]), "no services\n");
    let v: Value = serde_json::from_str(&d.cli_expect(0, &["services", "--json"])).unwrap();
    assert_eq!(v["services"], serde_json::json!([]), "{v}");

    d.submit(
        "t1",
        &[
            "--data",
            "synthetic:blobs:size=300,classes=3,features=8",
            "--layers",
            "8,16,3",
            "--epochs",
            "2",
        ],
    );
    d.cli_expect(0, &["jobs", "wait", "t1", "--timeout", "2m"]);
    d.cli_expect(
        0,
        &["jobs", "serve", "t1", "--name", "t1m", "--slo-p99-ms", "50"],
    );

    let text = d.cli_expect(0, &["services", "list"]);
    let header = text.lines().next().unwrap();
    assert!(
        header.starts_with("NAME") && header.contains("SLO P99"),
        "{text}"
    );
    let row = text.lines().nth(1).unwrap();
    for part in ["t1m", "ready", "8,16,3", "50.0 ms", "job t1"] {
        assert!(row.contains(part), "{part} in {text}");
    }
    let v: Value = serde_json::from_str(&d.cli_expect(0, &["services", "--json"])).unwrap();
    assert_eq!(v["services"][0]["name"], "t1m", "{v}");
    let text = d.cli_expect(0, &["services", "show", "t1m"]);
    assert!(text.contains("p99 <= 50.0 ms"), "{text}");
    assert!(text.ends_with("infer at /v2/models/t1m/infer\n"), "{text}");
    let v: Value =
        serde_json::from_str(&d.cli_expect(0, &["services", "show", "t1m", "--json"])).unwrap();
    assert_eq!(v["slo_p99_ms"], 50.0, "{v}");

    let out = d.cli(&["services", "show", "nope"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains("unknown model nope"),
        "{}",
        stderr_of(&out)
    );

    let text = d.cli_expect(0, &["services", "remove", "t1m"]);
    assert!(text.starts_with("removed service t1m"), "{text}");
    assert_eq!(d.cli_expect(0, &["services"]), "no services\n");
    assert_eq!(d.infer("t1m", &[0.0; 8]).0, 404);
    let out = d.cli(&["services", "rm", "t1m", "--json"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr_of(&out));
    d.cli_expect(
        0,
        &["jobs", "serve", "t1", "--name", "t1m", "--slo-p99-ms", "50"],
    );
    let v: Value =
        serde_json::from_str(&d.cli_expect(0, &["services", "rm", "t1m", "--json"])).unwrap();
    assert_eq!(v, serde_json::json!({"name": "t1m", "removed": true}));

    // --replicas reaches the daemon: a device the node lacks is refused with those it has,
    // and a form no device has is refused before anything is sent.
    let serve = |replicas: &str| {
        let args = ["jobs", "serve", "t1", "--name", "t1r", "--slo-p99-ms", "50"];
        d.cli(&[&args[..], &["--replicas", replicas]].concat())
    };
    let out = serve("cpu,cuda:3");
    assert_eq!(out.status.code(), Some(2), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains("replicas: this node has no device cuda:3 (it has cpu)"),
        "{}",
        stderr_of(&out)
    );
    let out = serve("gpu,tpu");
    assert_eq!(out.status.code(), Some(2), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains(
            "invalid value 'tpu' for '--replicas <DEVICES>': expected \"gpu\", \"gpu:*\", \"cuda:N\", \"cpu\", \"cpu:*\" or \"cpu:N\""
        ),
        "{}",
        stderr_of(&out)
    );
    let out = serve("cpu");
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    assert_eq!(d.infer("t1r", &[0.0; 8]).0, 200);
}

#[test]
fn reload_prints_what_changed_and_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let (d, config) = start(dir.path());
    let base = base_config(dir.path(), d.port);
    let text = d.cli_expect(0, &["reload"]);
    assert!(text.ends_with("nothing changed\n"), "{text}");

    std::fs::write(&config, format!("{base}control_period_ms = 250\n")).unwrap();
    let text = d.cli_expect(0, &["reload"]);
    assert!(text.starts_with("reloaded "), "{text}");
    let settings = text.split("settings applied:\n").nth(1).unwrap_or_default();
    assert!(
        settings.starts_with("  control_period_ms: ") && settings.contains("-> 250"),
        "{text}"
    );
    assert!(!text.contains("nothing changed"), "{text}");

    std::fs::write(&config, format!("{base}control_period_ms = 0\n")).unwrap();
    let out = d.cli(&["reload"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr_of(&out));
    let err = stderr_of(&out);
    assert!(
        err.contains("configuration not reloaded: 1 problem"),
        "{err}"
    );
    let problem = err.lines().nth(1).unwrap_or_default();
    assert!(
        problem.starts_with("  ")
            && problem.ends_with("control_period_ms: must be between 10 and 10000, got 0"),
        "{err}"
    );

    std::fs::write(&config, format!("{base}control_period_ms = 300\n")).unwrap();
    let v: Value = serde_json::from_str(&d.cli_expect(0, &["reload", "--json"])).unwrap();
    assert_eq!(v["result"], "ok", "{v}");
    assert_eq!(v["changed"], true, "{v}");
    assert!(v["settings"][0].as_str().unwrap().contains("300"), "{v}");
}
