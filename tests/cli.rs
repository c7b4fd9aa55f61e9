//! The `setpoint` command as a user runs it: outputs, messages and exit codes.

use std::path::Path;
use std::process::{Command, Output};

const DIGITS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/data/digits.csv.gz");

fn setpoint(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_setpoint"))
        .args(args)
        .output()
        .expect("run setpoint")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn train_json_prints_exactly_one_object_and_writes_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("d.ckpt");
    let out = setpoint(&[
        "train",
        "--data",
        DIGITS,
        "--layers",
        "64,128,10",
        "--target-accuracy",
        "0.95",
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert_eq!(text.lines().count(), 1, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    for key in [
        "epochs",
        "steps",
        "train_loss",
        "val_accuracy",
        "wall_s",
        "samples_per_s",
        "checkpoint",
    ] {
        assert!(!v[key].is_null(), "missing {key}: {v}");
    }
    assert!(v["val_accuracy"].as_f64().unwrap() >= 0.95);
    assert_eq!(v["stop_reason"], "target_reached");
    assert_eq!(v["checkpoint"], ckpt.to_str().unwrap());
    assert!(ckpt.exists());

    // The checkpoint predicts the labelled file with its stored normalisation.
    let out = setpoint(&[
        "predict",
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "--data",
        DIGITS,
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["rows"], 1797);
    assert!(v["accuracy"].as_f64().unwrap() > 0.95, "{}", v["accuracy"]);
}

#[test]
fn predict_gives_one_prediction_per_row_on_unlabelled_data() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("m.ckpt");
    let out = setpoint(&[
        "train",
        "--data",
        "synthetic:blobs:size=300,classes=3,features=4",
        "--epochs",
        "3",
        "--checkpoint",
        ckpt.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("trained 4,128,3"), "{}", stdout(&out));
    let csv = dir.path().join("rows.csv");
    std::fs::write(&csv, "0.1,0.2,0.3,0.4\n-1,2,-3,4\n5,5,5,5\n").unwrap();
    let out = setpoint(&[
        "predict",
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "--data",
        csv.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "row,class,probability");
    assert_eq!(lines.len(), 4, "{text}");
    for (i, line) in lines[1..].iter().enumerate() {
        let f: Vec<&str> = line.split(',').collect();
        assert_eq!(f[0], (i + 1).to_string());
        assert!(f[1].parse::<usize>().unwrap() < 3);
        let p: f64 = f[2].parse().unwrap();
        assert!(p > 1.0 / 3.0 - 1e-6 && p <= 1.0);
    }
}

#[test]
fn resume_from_the_cli_continues_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("r.ckpt");
    let c = ckpt.to_str().unwrap();
    let first = setpoint(&[
        "train",
        "--data",
        DIGITS,
        "--epochs",
        "2",
        "--checkpoint",
        c,
        "--json",
    ]);
    assert!(first.status.success(), "{}", stderr(&first));
    let out = setpoint(&[
        "train", "--data", DIGITS, "--resume", c, "--epochs", "4", "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["epochs"], 4);
    assert_eq!(v["history"].as_array().unwrap().len(), 4);
    // Every setting the run used, as a user would write it.
    assert_eq!(v["epoch_limit"], 4);
    assert_eq!(v["val_fraction"], 0.2, "{v}");
    assert_eq!(v["target_accuracy"], serde_json::Value::Null);
    assert_eq!(v["optimizer_settings"]["lr"], 0.001, "{v}");
    assert_eq!(v["optimizer_settings"]["beta2"], 0.999, "{v}");
    // A resume whose epoch limit is reached says that nothing ran, and where checkpoints go.
    let again = setpoint(&["train", "--data", DIGITS, "--resume", c, "--epochs", "4"]);
    assert!(again.status.success(), "{}", stderr(&again));
    let err = stderr(&again);
    assert!(
        err.contains("nothing ran: the checkpoint has already run 4 epoch(s)"),
        "{err}"
    );
    assert!(
        err.contains(&format!("checkpoints are written back to {c}")),
        "{err}"
    );
    assert!(
        !err.contains("bit-identical"),
        "same threads: no note\n{err}"
    );
    // Same run uninterrupted gives the same figures.
    let full = setpoint(&["train", "--data", DIGITS, "--epochs", "4", "--json"]);
    let f: serde_json::Value = serde_json::from_str(&stdout(&full)).unwrap();
    assert_eq!(f["history"], v["history"]);
    // A different learning rate is refused.
    let out = setpoint(&["train", "--data", DIGITS, "--resume", c, "--lr", "0.5"]);
    assert_eq!(out.status.code(), Some(2));
    // Named as settings, not as the program's data structures.
    let err = stderr(&out);
    assert!(
        err.contains("the optimizer was adam (lr 0.001, betas"),
        "{err}"
    );
    assert!(err.contains("and is adam (lr 0.5, betas"), "{err}");
    assert!(!err.contains("AdamParams"), "{err}");
}

fn expect_input_error(args: &[&str], needle: &str) {
    let out = setpoint(args);
    assert_eq!(
        out.status.code(),
        Some(2),
        "args {args:?}\nstderr: {}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains(needle),
        "args {args:?}: expected {needle:?} in\n{}",
        stderr(&out)
    );
}

#[test]
fn bad_input_exits_2_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let bad_csv = dir.path().join("bad.csv");
    std::fs::write(&bad_csv, "1,2,3\n4,5,6\n7,8\n").unwrap();
    let bad = bad_csv.to_str().unwrap();
    expect_input_error(
        &["train", "--data", bad],
        &format!("{bad}:3: expected 3 columns, got 2"),
    );
    let nan_csv = dir.path().join("nan.csv");
    std::fs::write(&nan_csv, "1,2,0\n4,x,1\n").unwrap();
    expect_input_error(
        &["train", "--data", nan_csv.to_str().unwrap()],
        "column 2: not a number: \"x\"",
    );
    expect_input_error(
        &["train", "--data", DIGITS, "--layers", "32,10"],
        "the data has 64 features but layers 32,10 take 32 inputs",
    );
    expect_input_error(
        &["train", "--data", DIGITS, "--layers", "64,x,10"],
        "\"x\" is not a positive integer",
    );
    expect_input_error(
        &["train", "--data", DIGITS, "--layers", "64,128,5"],
        "outside the model's 5 classes",
    );
    expect_input_error(
        &["train", "--data", "synthetic:moons"],
        "unknown synthetic kind \"moons\"",
    );
    expect_input_error(
        &["train", "--data", "/no/such/file.csv"],
        "/no/such/file.csv",
    );
    expect_input_error(
        &["train", "--data", DIGITS, "--target-accuracy", "1.5"],
        "target accuracy must be in (0, 1], got 1.5",
    );
    expect_input_error(
        &["train", "--optimizer", "rmsprop"],
        "invalid value 'rmsprop'",
    );
    expect_input_error(&["frobnicate"], "unrecognized subcommand");
}

#[test]
fn broken_checkpoints_exit_2_and_say_why() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("c.ckpt");
    let c = ckpt.to_str().unwrap();
    let out = setpoint(&[
        "train",
        "--data",
        DIGITS,
        "--epochs",
        "1",
        "--checkpoint",
        c,
    ]);
    assert!(out.status.success());
    let bytes = std::fs::read(&ckpt).unwrap();

    let torn = dir.path().join("torn.ckpt");
    std::fs::write(&torn, &bytes[..bytes.len() * 2 / 3]).unwrap();
    expect_input_error(
        &[
            "predict",
            "--checkpoint",
            torn.to_str().unwrap(),
            "--data",
            DIGITS,
        ],
        "truncated",
    );
    let mut flipped = bytes.clone();
    let i = flipped.len() - 100;
    flipped[i] ^= 1;
    let corrupt = dir.path().join("corrupt.ckpt");
    std::fs::write(&corrupt, &flipped).unwrap();
    expect_input_error(
        &[
            "predict",
            "--checkpoint",
            corrupt.to_str().unwrap(),
            "--data",
            DIGITS,
        ],
        "checksum mismatch",
    );
    expect_input_error(
        &[
            "train", "--data", DIGITS, "--resume", c, "--layers", "64,32,10",
        ],
        "holds a model with layers 64,128,10, but layers 64,32,10 were asked for",
    );
    // Data of the wrong width for the model.
    let narrow = dir.path().join("narrow.csv");
    std::fs::write(&narrow, "1,2,3\n").unwrap();
    expect_input_error(
        &[
            "predict",
            "--checkpoint",
            c,
            "--data",
            narrow.to_str().unwrap(),
        ],
        "has 3 columns, but the model takes 64 features",
    );
}

#[test]
fn check_config_prints_what_it_understood_or_every_error() {
    let out = setpoint(&["check-config"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("(embedded default): valid"), "{text}");
    assert!(text.contains("name = \"mlp\""), "{text}");
    assert!(text.contains("control_period_ms = 100"), "{text}");

    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/setpoint.toml");
    let out = setpoint(&["check-config", example.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["valid"], true, "{v}");
    assert!(v["config"]["services"].is_array());

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "control_period_ms = 5\n[[services]]\nname = \"a\"\nlayers = [4, 2]\n[services.slo]\np99_ms = -5\n",
    )
    .unwrap();
    let out = setpoint(&["check-config", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("control_period_ms: must be between 10 and 10000, got 5"),
        "{err}"
    );
    assert!(
        err.contains("services[0].slo.p99_ms: must be > 0, got -5"),
        "{err}"
    );

    // One pass: a file outside the allowed directories is reported with the value errors,
    // not after they are fixed; a missing file inside is a warning; --json says it all.
    std::fs::write(
        &bad,
        "control_period_ms = 5\n[[jobs]]\nname = \"j\"\ndata = \"/etc/passwd\"\nlayers = [4, 2]\n\
         [[jobs]]\nname = \"k\"\ndata = \"later.csv\"\nlayers = [4, 2]\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_setpoint"))
        .args(["check-config", bad.to_str().unwrap(), "--json"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["valid"], false);
    assert!(v["config"].is_null());
    let keys: Vec<&str> = v["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["control_period_ms", "jobs[0].data"], "{v}");
    assert!(
        v["errors"][1]["message"]
            .as_str()
            .unwrap()
            .contains("is outside"),
        "{v}"
    );
    assert_eq!(v["warnings"][0]["key"], "jobs[1].data", "{v}");
    assert!(
        v["warnings"][0]["message"]
            .as_str()
            .unwrap()
            .contains("later.csv"),
        "{v}"
    );
    let out = setpoint(&["check-config", "/nonexistent/x.toml", "--json"]);
    assert_eq!(out.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["errors"][0]["key"], "");
    assert!(
        v["errors"][0]["message"]
            .as_str()
            .unwrap()
            .starts_with("cannot read it: "),
        "{v}"
    );
}

#[test]
fn version_names_the_revision() {
    let out = setpoint(&["--version"]);
    assert!(out.status.success());
    assert!(
        stdout(&out).starts_with("setpoint 0.1.0 (rev "),
        "{}",
        stdout(&out)
    );
}

#[test]
fn serve_refuses_to_start_when_the_config_requires_a_gpu_it_cannot_use() {
    if let Ok(gpus) = setpoint::device::cuda::probe() {
        eprintln!(
            "skipped: {} GPU(s) usable here; this test checks the refusal on a host without one",
            gpus.len()
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("gpu.toml");
    std::fs::write(
        &cfg,
        format!(
            "listen = \"127.0.0.1:0\"\nstate_dir = {:?}\n[device]\nkind = \"cuda\"\n",
            dir.path().join("state")
        ),
    )
    .unwrap();
    let out = setpoint(&[
        "serve",
        "--grpc-listen",
        "",
        "--config",
        cfg.to_str().unwrap(),
    ]);
    assert!(!out.status.success(), "serve started: {}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("no usable GPU"), "{err}");
    assert!(err.contains("device.kind = \"auto\""), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn devices_says_why_there_is_no_gpu_and_names_the_cpu_backend() {
    let out = setpoint(&["devices", "--cpu-threads", "3"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    if setpoint::telemetry::NvmlSource::open().is_err() {
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].starts_with("NVML not available: "), "{text}");
        assert!(lines[0].contains("libnvidia-ml"), "{text}");
    } else {
        eprintln!("NVML is present: the table is checked by the GPU check instead");
    }
    assert_eq!(lines.last(), Some(&"cpu: 3 cores"), "{text}");
    let out = setpoint(&["devices", "--json"]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert!(v["cpu_cores"].as_u64().unwrap() >= 1);
    if v["nvml_available"] == false {
        assert!(
            v["reason"]
                .as_str()
                .unwrap()
                .starts_with("NVML not available: ")
        );
        assert!(v["gpus"].as_array().unwrap().is_empty());
    }
}

#[test]
fn bench_with_nvidia_smi_says_what_is_missing_on_a_host_without_a_driver() {
    if setpoint::telemetry::NvmlSource::open().is_ok() {
        eprintln!("skipped: this host has NVML; the GPU check covers --nvidia-smi");
        return;
    }
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/configs/scenarios/quick.toml");
    let out = setpoint(&["bench", "scenario", file, "--nvidia-smi"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("--nvidia-smi: ") && err.contains("libnvidia-ml"),
        "{err}"
    );
}

#[test]
fn serve_refuses_to_listen_beyond_loopback_without_a_token() {
    let out = Command::new(env!("CARGO_BIN_EXE_setpoint"))
        .args([
            "serve",
            "--listen",
            "0.0.0.0:0",
            "--grpc-listen",
            "127.0.0.1:0",
        ])
        .env_remove("SETPOINT_AUTH_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("listen = 0.0.0.0:0: beyond loopback the API needs a bearer token"),
        "{err}"
    );
}

/// A model that would not fit in memory is refused with its estimate before anything is
/// allocated (it used to abort the process with exit 134), and so is a list of thousands of
/// layers.
#[test]
fn models_too_large_for_memory_or_too_deep_are_refused_before_allocating() {
    let data = "synthetic:blobs:size=200";
    // 64-65536-65536-10 is 80 GiB with Adam; twenty such layers, about 1.5 TiB, fit nowhere.
    let wide = format!("64,{}10", "65536,".repeat(20));
    let out = setpoint(&["train", "--data", data, "--layers", &wide, "--epochs", "1"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("the model needs about"), "{err}");
    assert!(
        err.contains("TiB (parameters") && err.contains("cpu has"),
        "{err}"
    );
    assert!(!err.contains("memory allocation"), "{err}");

    let deep = format!("64,{}10", "1,".repeat(200));
    let out = setpoint(&["train", "--data", data, "--layers", &deep, "--epochs", "1"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("202 widths given; at most 128"),
        "{}",
        stderr(&out)
    );
}

/// Two daemons used to share a state dir, resuming and checkpointing the same jobs: the
/// second is refused with exit 2 and the holder's pid; a state dir that cannot be created is
/// exit 2 with the reason.
#[test]
fn a_state_dir_is_held_by_one_daemon_and_an_unusable_one_is_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, "listen = \"127.0.0.1:0\"\n").unwrap();
    let serve = |state: &Path| {
        Command::new(env!("CARGO_BIN_EXE_setpoint"))
            .args([
                "serve",
                "--grpc-listen",
                "",
                "--config",
                cfg.to_str().unwrap(),
            ])
            .arg("--state-dir")
            .arg(state)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut first = serve(&state);
    // The lock file names the holder once it has the dir.
    let lock = state.join("setpoint.lock");
    let t0 = std::time::Instant::now();
    while std::fs::read_to_string(&lock).map_or(true, |s| s.trim().is_empty()) {
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(30),
            "no lock file"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let second = exits_within(serve(&state), 30);
    let _ = first.kill();
    let _ = first.wait();
    let err = stderr(&second);
    assert_eq!(second.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!(
            "is in use by another setpoint daemon (pid {})",
            first.id()
        )),
        "{err}"
    );

    // A state dir below a regular file cannot be created, whoever runs this.
    let under_file = cfg.join("state");
    let out = exits_within(serve(&under_file), 30);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("cannot create") && err.contains("--state-dir"),
        "{err}"
    );
}

/// The child's output once it exits; a child still running after `secs` is killed and the
/// test fails (a daemon that should have refused to start).
fn exits_within(mut child: std::process::Child, secs: u64) -> Output {
    let t0 = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t0.elapsed() > std::time::Duration::from_secs(secs) {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("still running after {secs} s:\n{}", stderr(&out));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}
