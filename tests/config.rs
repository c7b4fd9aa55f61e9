//! Node configuration: parsing, validation messages, defaults and the printed summary.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use setpoint::config::*;

/// Every issue of an invalid config, as displayed.
fn issues(text: &str) -> Vec<String> {
    match parse(text) {
        Ok(_) => panic!("expected the config to be invalid:\n{text}"),
        Err(ConfigError::Invalid { errors, .. }) => errors.iter().map(|e| e.to_string()).collect(),
        Err(e) => panic!("expected validation issues, got: {e}"),
    }
}

/// Asserts that exactly one issue is reported, and returns it.
fn one_issue(text: &str) -> String {
    let all = issues(text);
    assert_eq!(
        all.len(),
        1,
        "expected one issue, got {all:#?}\nfor:\n{text}"
    );
    all.into_iter().next().unwrap_or_default()
}

fn ok(text: &str) -> NodeConfig {
    match parse(text) {
        Ok(c) => c,
        Err(e) => panic!("expected a valid config, got:\n{e}\nfor:\n{text}"),
    }
}

const SERVICE: &str = r#"
[[services]]
name = "mlp"
layers = [4, 3]
[services.slo]
p99_ms = 25
"#;

const JOB: &str = r#"
[[jobs]]
name = "j"
data = "synthetic:blobs"
layers = [4, 3]
"#;

fn service_with(extra: &str) -> String {
    format!("[[services]]\nname = \"mlp\"\nlayers = [4, 3]\n{extra}\n[services.slo]\np99_ms = 25\n")
}

fn job_with(extra: &str) -> String {
    format!("{JOB}{extra}\n")
}

fn example_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/setpoint.toml")
}

// ---------------------------------------------------------------------------------------------
// Defaults and shipped files

#[test]
fn default_config_is_valid_with_expected_values() {
    let c = default_config();
    assert_eq!(parse(DEFAULT_CONFIG).unwrap(), c);
    assert_eq!(c.listen, "127.0.0.1:8000".parse::<SocketAddr>().unwrap());
    assert_eq!(c.state_dir, PathBuf::from("state"));
    assert_eq!(c.control_period_ms, 100);
    assert_eq!(c.auth_token, None);
    assert_eq!(c.max_request_bytes, 16 * 1024 * 1024);
    assert_eq!(
        c.device,
        DeviceConfig {
            kind: DeviceKind::Auto,
            gpus: GpuSelection::All,
            require_gpu: false,
            cpu_threads: 0,
            share_mechanism: ShareMechanism::Auto,
            memory_limit_mib: None,
            cpu_split: Vec::new(),
            gemm_wgmma: false,
            cuda_graphs: false,
        }
    );
    assert_eq!(
        c.control,
        ControlConfig {
            reserve_frac: 0.05,
            leftover: Leftover::BestEffort,
            past_deadline: PastDeadline::BestEffort,
            cpu_foreign_load: true,
            decision_log: None
        }
    );

    assert_eq!(c.services.len(), 1);
    assert_eq!(
        c.services[0],
        ServiceConfig {
            name: "mlp".into(),
            layers: Some(vec![64, 128, 10]),
            checkpoint: None,
            seed: 1,
            warmup_data: Some("synthetic:blobs".into()),
            max_queue: 1024,
            timeout_ms: 250.0,
            slo: SloConfig {
                p99_ms: 25.0,
                window_ms: 1000
            },
            batching: BatchingConfig {
                max_batch_size: 32,
                max_queue_delay_ms: 0.0
            },
            precision: None,
            replicas: Vec::new(),
        }
    );

    assert_eq!(c.jobs.len(), 1);
    assert_eq!(
        c.jobs[0],
        JobConfig {
            name: "demo".into(),
            data: "synthetic:blobs:size=50000,noise=1.2".into(),
            layers: vec![64, 512, 512, 10],
            optimizer: OptimizerKind::Adam,
            lr: 0.001,
            momentum: 0.9,
            weight_decay: 0.0,
            batch_size: 64,
            epochs: 40,
            target_accuracy: Some(0.95),
            val_fraction: 0.2,
            seed: 1,
            deadline: Some(Deadline::In(Duration::from_secs(600))),
            checkpoint_every_steps: 500,
            best_effort: false,
            precision: None,
        }
    );
    assert!(c.service("mlp").is_some());
    assert!(c.job("demo").is_some());
    assert!(c.job("mlp").is_none());
}

#[test]
fn example_file_is_valid() {
    let c = load(&example_path()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.services.len(), 1);
    assert_eq!(c.jobs.len(), 2);
    assert_eq!(c.jobs[1].optimizer, OptimizerKind::Sgd);
    assert!(c.jobs[1].best_effort);
}

/// The example claims to show every key at its default: check that against an empty file and
/// against minimal service and job tables.
#[test]
fn example_file_shows_the_real_defaults() {
    let ex = load(&example_path()).unwrap();
    let bare = ok("");
    assert_eq!(ex.listen, bare.listen);
    assert_eq!(ex.state_dir, bare.state_dir);
    assert_eq!(ex.control_period_ms, bare.control_period_ms);
    assert_eq!(ex.auth_token, bare.auth_token);
    assert_eq!(ex.max_request_bytes, bare.max_request_bytes);
    assert_eq!(ex.device, bare.device);
    assert_eq!(ex.control, bare.control);

    let minimal = ok(r#"
[[services]]
name = "mlp"
layers = [64, 128, 10]
warmup_data = "synthetic:blobs"
slo = { p99_ms = 25 }

[[jobs]]
name = "demo"
data = "synthetic:blobs"
layers = [64, 128, 10]
target_accuracy = 0.95
deadline = "10m"

[[jobs]]
name = "demo-sgd"
data = "synthetic:blobs"
layers = [64, 128, 10]
optimizer = "sgd"
epochs = 20
"#);
    assert_eq!(ex.services, minimal.services);
    assert_eq!(ex.jobs, minimal.jobs);
}

#[test]
fn empty_file_gives_defaults_and_no_tenants() {
    let c = ok("");
    assert!(c.services.is_empty());
    assert!(c.jobs.is_empty());
    assert_eq!(c.control_period_ms, 100);
    assert_eq!(c.device.kind, DeviceKind::Auto);
}

// ---------------------------------------------------------------------------------------------
// Every error, with its key path

#[test]
fn several_errors_in_one_file_are_all_reported_in_order() {
    let text = r#"
listen = "localhost:8000"
control_period_ms = 5
max_request_bytes = 10
colour = "blue"

[device]
kind = "gpu"
cpu_threads = -1

[control]
reserve_frac = 0.7

[[services]]
name = "mlp"
layers = [64, 0, 10]
[services.slo]
p95_ms = 20

[[services]]
name = "b"
layers = [4, 3]
[services.slo]
p99_ms = -5

[[services]]
name = "mlp"
layers = [4, 3]
[services.slo]
p99_ms = 10

[[jobs]]
name = "demo"
data = "synthetic:blobs"
layers = [4, 3]
lr = "fast"
epochs = 0
"#;
    assert_eq!(
        issues(text),
        vec![
            "colour: unknown key (accepted: listen, grpc_listen, state_dir, control_period_ms, auth_token, max_request_bytes, drain_timeout_ms, checkpoint_error_timeout_ms, http, device, control, paths, services, jobs, kubernetes)",
            "listen: expected a socket address like \"127.0.0.1:8000\" or \"[::1]:8000\" (an IP, not a host name), got \"localhost:8000\"",
            "control_period_ms: must be between 10 and 10000, got 5",
            "max_request_bytes: must be between 1024 and 1073741824, got 10",
            "device.kind: must be one of \"auto\", \"cpu\", \"cuda\", got \"gpu\"",
            "device.cpu_threads: must be between 0 and 1024, got -1",
            "control.reserve_frac: must be between 0 and 0.5, got 0.7",
            "services[0].layers[1]: must be between 1 and 65536, got 0",
            "services[0].slo.p95_ms: unknown key (accepted: p99_ms, window_ms)",
            "services[0].slo.p99_ms: missing required key",
            "services[1].slo.p99_ms: must be > 0, got -5",
            "services[2].name: duplicate service name \"mlp\" (also services[0])",
            "jobs[0].lr: expected a number, got a string",
            "jobs[0].epochs: must be between 1 and 100000, got 0",
        ]
    );
}

#[test]
fn invalid_display_lists_every_issue_one_per_line() {
    let e = parse("control_period_ms = 5\nmax_request_bytes = 1\n").unwrap_err();
    assert_eq!(e.issues().len(), 2);
    assert_eq!(
        e.to_string(),
        "control_period_ms: must be between 10 and 10000, got 5\n\
         max_request_bytes: must be between 1024 and 1073741824, got 1"
    );
}

#[test]
fn range_errors_name_the_key_and_the_bound() {
    let cases: Vec<(String, &str)> = vec![
        ("control_period_ms = 10001".into(), "control_period_ms: must be between 10 and 10000, got 10001"),
        ("max_request_bytes = 1073741825".into(), "max_request_bytes: must be between 1024 and 1073741824, got 1073741825"),
        ("[device]\ncpu_threads = 1025".into(), "device.cpu_threads: must be between 0 and 1024, got 1025"),
        ("[device]\ngpus = [0, -1]".into(), "device.gpus[1]: must be between 0 and 4294967295, got -1"),
        ("[control]\nreserve_frac = -0.1".into(), "control.reserve_frac: must be between 0 and 0.5, got -0.1"),
        (service_with("max_queue = 0"), "services[0].max_queue: must be between 1 and 1000000, got 0"),
        (service_with("max_queue = 1000001"), "services[0].max_queue: must be between 1 and 1000000, got 1000001"),
        (service_with("seed = -1"), "services[0].seed: must be >= 0, got -1"),
        (service_with("layers = [4, 65537]").replacen("layers = [4, 3]\n", "", 1), "services[0].layers[1]: must be between 1 and 65536, got 65537"),
        ("[[services]]\nname = \"a\"\nlayers = [4]\nslo = { p99_ms = 5 }".into(), "services[0].layers: must have 2 ..= 128 widths (input and output included), got 1"),
        ("[[services]]\nname = \"a\"\nlayers = [4, 3]\nslo = { p99_ms = 60001 }".into(), "services[0].slo.p99_ms: must be <= 60000, got 60001"),
        ("[[services]]\nname = \"a\"\nlayers = [4, 3]\nslo = { p99_ms = 0 }".into(), "services[0].slo.p99_ms: must be > 0, got 0"),
        ("[[services]]\nname = \"a\"\nlayers = [4, 3]\nslo = { p99_ms = 5, window_ms = 600001 }".into(), "services[0].slo.window_ms: must be between 0 and 600000, got 600001"),
        ("[[services]]\nname = \"a\"\nlayers = [4, 3]\nslo = { p99_ms = 5 }\nbatching = { max_batch_size = 0 }".into(), "services[0].batching.max_batch_size: must be between 1 and 4096, got 0"),
        ("[[services]]\nname = \"a\"\nlayers = [4, 3]\nslo = { p99_ms = 5 }\nbatching = { max_batch_size = 4097 }".into(), "services[0].batching.max_batch_size: must be between 1 and 4096, got 4097"),
        ("[[services]]\nname = \"a\"\nlayers = [4, 3]\nslo = { p99_ms = 5 }\nbatching = { max_queue_delay_ms = -1 }".into(), "services[0].batching.max_queue_delay_ms: must be >= 0, got -1"),
        (job_with("lr = 0"), "jobs[0].lr: must be > 0, got 0"),
        (job_with("lr = 10.5"), "jobs[0].lr: must be <= 10, got 10.5"),
        (job_with("optimizer = \"sgd\"\nmomentum = 1"), "jobs[0].momentum: must be < 1, got 1"),
        (job_with("optimizer = \"sgd\"\nmomentum = -0.5"), "jobs[0].momentum: must be >= 0, got -0.5"),
        (job_with("weight_decay = -1e-4"), "jobs[0].weight_decay: must be >= 0, got -0.0001"),
        (job_with("batch_size = 0"), "jobs[0].batch_size: must be between 1 and 65536, got 0"),
        (job_with("batch_size = 65537"), "jobs[0].batch_size: must be between 1 and 65536, got 65537"),
        (job_with("epochs = 100001"), "jobs[0].epochs: must be between 1 and 100000, got 100001"),
        (job_with("target_accuracy = 0"), "jobs[0].target_accuracy: must be > 0, got 0"),
        (job_with("target_accuracy = 1.5"), "jobs[0].target_accuracy: must be <= 1, got 1.5"),
        (job_with("val_fraction = 1"), "jobs[0].val_fraction: must be < 1, got 1"),
        (job_with("val_fraction = -0.2"), "jobs[0].val_fraction: must be >= 0, got -0.2"),
        (job_with("seed = -3"), "jobs[0].seed: must be >= 0, got -3"),
        (job_with("checkpoint_every_steps = 0"), "jobs[0].checkpoint_every_steps: must be between 1 and 10000000, got 0"),
        (job_with("checkpoint_every_steps = 10000001"), "jobs[0].checkpoint_every_steps: must be between 1 and 10000000, got 10000001"),
        (job_with("layers = []").replacen("layers = [4, 3]\n", "", 1), "jobs[0].layers: must have 2 ..= 128 widths (input and output included), got 0"),
        (job_with(&format!("layers = [{}3]", "1, ".repeat(128))).replacen("layers = [4, 3]\n", "", 1), "jobs[0].layers: must have 2 ..= 128 widths (input and output included), got 129"),
    ];
    for (text, want) in cases {
        assert_eq!(one_issue(&text), want, "for:\n{text}");
    }
}

#[test]
fn boundary_values_are_accepted() {
    let c = ok(&format!(
        "control_period_ms = 10\nmax_request_bytes = 1024\n[device]\ncpu_threads = 1024\n\
         [control]\nreserve_frac = 0.5\n\
         [[services]]\nname = \"a\"\nlayers = [1, 65536]\nmax_queue = 1000000\nseed = 0\n\
         slo = {{ p99_ms = 60000, window_ms = 10 }}\nbatching = {{ max_batch_size = 4096, max_queue_delay_ms = 0 }}\n\
         {JOB}lr = 10\nbatch_size = 65536\nepochs = 100000\ntarget_accuracy = 1\nval_fraction = 0.999\n\
         checkpoint_every_steps = 10000000\nseed = 9223372036854775807\nweight_decay = 0\n"
    ));
    assert_eq!(c.control_period_ms, 10);
    assert_eq!(c.services[0].slo.window_ms, 10);
    assert_eq!(c.jobs[0].seed, i64::MAX as u64);
    assert_eq!(c.jobs[0].target_accuracy, Some(1.0));
}

#[test]
fn type_errors_name_expected_and_found() {
    let cases: Vec<(String, &str)> = vec![
        (
            "control_period_ms = 100.5".into(),
            "control_period_ms: expected an integer, got a float",
        ),
        (
            "control_period_ms = \"100\"".into(),
            "control_period_ms: expected an integer, got a string",
        ),
        (
            "listen = 8000".into(),
            "listen: expected a string, got an integer",
        ),
        (
            "state_dir = []".into(),
            "state_dir: expected a string, got an array",
        ),
        (
            "auth_token = true".into(),
            "auth_token: expected a string, got a boolean",
        ),
        (
            "device = 3".into(),
            "device: expected a table, got an integer",
        ),
        (
            "[device]\nrequire_gpu = \"yes\"".into(),
            "device.require_gpu: expected a boolean, got a string",
        ),
        (
            "[device]\ngpus = 0".into(),
            "device.gpus: expected \"all\" or an array of gpu indices, got an integer",
        ),
        (
            "[device]\ngpus = \"first\"".into(),
            "device.gpus: expected \"all\" or an array of gpu indices, got \"first\"",
        ),
        (
            "[device]\ngpus = [\"0\"]".into(),
            "device.gpus[0]: expected an integer, got a string",
        ),
        (
            "[control]\nreserve_frac = \"5%\"".into(),
            "control.reserve_frac: expected a number, got a string",
        ),
        (
            "[control]\nleftover = \"share\"".into(),
            "control.leftover: must be one of \"best-effort\", \"idle\", \"spread\", got \"share\"",
        ),
        (
            "[control]\npast_deadline = \"cancel\"".into(),
            "control.past_deadline: must be one of \"best-effort\", \"stop\", got \"cancel\"",
        ),
        (
            "[device]\nshare_mechanism = \"mps\"".into(),
            "device.share_mechanism: must be one of \"auto\", \"cta\", \"green\", got \"mps\"",
        ),
        (
            "[services]\nname = \"a\"".into(),
            "services: expected an array of tables ([[services]]), got a table",
        ),
        (
            "jobs = [1]".into(),
            "jobs[0]: expected a table, got an integer",
        ),
        (
            service_with("slo = 25").replacen("[services.slo]\np99_ms = 25\n", "", 1),
            "services[0].slo: expected a table, got an integer",
        ),
        (
            service_with("batching = []"),
            "services[0].batching: expected a table, got an array",
        ),
        (
            service_with("max_queue = 1.0"),
            "services[0].max_queue: expected an integer, got a float",
        ),
        (
            service_with("layers = \"64,10\"").replacen("layers = [4, 3]\n", "", 1),
            "services[0].layers: expected an array of integers, got a string",
        ),
        (
            service_with("layers = [4, 3.5]").replacen("layers = [4, 3]\n", "", 1),
            "services[0].layers[1]: expected an integer, got a float",
        ),
        (
            service_with("name = 7").replacen("name = \"mlp\"\n", "", 1),
            "services[0].name: expected a string, got an integer",
        ),
        (
            job_with("optimizer = \"lbfgs\""),
            "jobs[0].optimizer: must be one of \"adam\", \"sgd\", got \"lbfgs\"",
        ),
        (
            job_with("best_effort = 1"),
            "jobs[0].best_effort: expected a boolean, got an integer",
        ),
        (
            job_with("deadline = 600"),
            "jobs[0].deadline: expected a duration like \"10m\" or an RFC 3339 timestamp like \"2026-11-28T14:30:00Z\", got an integer",
        ),
        (
            job_with("target_accuracy = nan"),
            "jobs[0].target_accuracy: must be a finite number, got NaN",
        ),
        (
            job_with("weight_decay = inf"),
            "jobs[0].weight_decay: must be a finite number, got inf",
        ),
    ];
    for (text, want) in cases {
        assert_eq!(one_issue(&text), want, "for:\n{text}");
    }
}

#[test]
fn integers_are_accepted_where_floats_are_expected() {
    let c = ok(&format!(
        "[control]\nreserve_frac = 0\n[[services]]\nname = \"a\"\nlayers = [4, 3]\n\
         slo = {{ p99_ms = 25 }}\nbatching = {{ max_queue_delay_ms = 3 }}\n{JOB}lr = 1\n"
    ));
    assert_eq!(c.control.reserve_frac, 0.0);
    assert_eq!(c.services[0].slo.p99_ms, 25.0);
    assert_eq!(c.services[0].batching.max_queue_delay_ms, 3.0);
    assert_eq!(c.jobs[0].lr, 1.0);
}

#[test]
fn unknown_keys_are_reported_everywhere_with_the_accepted_list() {
    let text = format!(
        "[device]\ngpu = 0\n[control]\nperiod = 1\n\
         [[services]]\nname = \"a\"\nlayers = [4, 3]\nbatch = 1\n\"odd key\" = 2\n\
         slo = {{ p99_ms = 5 }}\nbatching = {{ size = 3 }}\n{JOB}learning_rate = 0.1\n"
    );
    assert_eq!(
        issues(&text),
        vec![
            "device.gpu: unknown key (accepted: kind, gpus, require_gpu, cpu_threads, share_mechanism, memory_limit_mib, cpu_split, gemm_wgmma, cuda_graphs)",
            "control.period: unknown key (accepted: reserve_frac, leftover, past_deadline, cpu_foreign_load, decision_log)",
            "services[0].batch: unknown key (accepted: name, layers, checkpoint, seed, warmup_data, max_queue, timeout_ms, slo, batching, precision, replicas)",
            "services[0].\"odd key\": unknown key (accepted: name, layers, checkpoint, seed, warmup_data, max_queue, timeout_ms, slo, batching, precision, replicas)",
            "services[0].batching.size: unknown key (accepted: max_batch_size, max_queue_delay_ms)",
            "jobs[0].learning_rate: unknown key (accepted: name, data, layers, optimizer, lr, momentum, weight_decay, batch_size, epochs, target_accuracy, val_fraction, seed, deadline, checkpoint_every_steps, best_effort, precision)",
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// Names, required keys, cross-field rules

#[test]
fn duplicate_names_are_reported_against_the_first() {
    let text = format!(
        "{SERVICE}{SERVICE}{SERVICE}{JOB}{JOB}[[jobs]]\nname = \"k\"\ndata = \"d\"\nlayers = [2, 2]\n{JOB}"
    );
    assert_eq!(
        issues(&text),
        vec![
            "services[1].name: duplicate service name \"mlp\" (also services[0])",
            "services[2].name: duplicate service name \"mlp\" (also services[0])",
            "jobs[1].name: duplicate job name \"j\" (also jobs[0])",
            "jobs[3].name: duplicate job name \"j\" (also jobs[0])",
        ]
    );
}

#[test]
fn a_service_and_a_job_may_share_a_name() {
    let c = ok(&format!(
        "{SERVICE}[[jobs]]\nname = \"mlp\"\ndata = \"d\"\nlayers = [2, 2]\n"
    ));
    assert_eq!(c.services[0].name, c.jobs[0].name);
}

#[test]
fn names_must_be_url_and_file_safe() {
    for bad in ["a b", "a/b", "héllo", "", ".", ".."] {
        let text =
            format!("[[services]]\nname = {bad:?}\nlayers = [4, 3]\nslo = {{ p99_ms = 5 }}\n");
        let got = one_issue(&text);
        assert!(got.starts_with("services[0].name: must "), "{bad:?}: {got}");
    }
    let long = "x".repeat(65);
    let got = one_issue(&format!(
        "[[jobs]]\nname = \"{long}\"\ndata = \"d\"\nlayers = [2, 2]\n"
    ));
    assert_eq!(
        got,
        format!("jobs[0].name: must be 1 to 64 characters from A-Z a-z 0-9 _ . -, got \"{long}\"")
    );
    assert_eq!(
        one_issue("[[jobs]]\nname = \"\"\ndata = \"d\"\nlayers = [2, 2]\n"),
        "jobs[0].name: must not be empty"
    );
    assert_eq!(
        one_issue("[[jobs]]\nname = \"..\"\ndata = \"d\"\nlayers = [2, 2]\n"),
        "jobs[0].name: must not be \"..\" (it names a directory)"
    );
    let c = ok(&format!(
        "[[jobs]]\nname = \"{}\"\ndata = \"d\"\nlayers = [2, 2]\n[[jobs]]\nname = \"A-z_0.9\"\ndata = \"d\"\nlayers = [2, 2]\n",
        "y".repeat(64)
    ));
    assert_eq!(c.jobs[1].name, "A-z_0.9");
}

#[test]
fn missing_required_keys_are_each_reported() {
    assert_eq!(
        issues("[[services]]\n[[jobs]]\n"),
        vec![
            "services[0].name: missing required key",
            "services[0].layers: missing required key (required unless checkpoint is set)",
            "services[0].slo.p99_ms: missing required key",
            "jobs[0].name: missing required key",
            "jobs[0].data: missing required key",
            "jobs[0].layers: missing required key",
        ]
    );
    assert_eq!(
        one_issue(
            "[[services]]\nname = \"a\"\nlayers = [2, 2]\n[services.slo]\nwindow_ms = 1000\n"
        ),
        "services[0].slo.p99_ms: missing required key"
    );
    assert_eq!(
        one_issue(&job_with("").replace("synthetic:blobs", "")),
        "jobs[0].data: must not be empty"
    );
}

#[test]
fn a_service_needs_layers_or_a_checkpoint() {
    let only_ckpt =
        ok("[[services]]\nname = \"a\"\ncheckpoint = \"models/a.ckpt\"\nslo = { p99_ms = 5 }\n");
    assert_eq!(only_ckpt.services[0].layers, None);
    assert_eq!(
        only_ckpt.services[0].checkpoint,
        Some(PathBuf::from("models/a.ckpt"))
    );

    let both = ok(
        "[[services]]\nname = \"a\"\nlayers = [4, 3]\ncheckpoint = \"a.ckpt\"\nslo = { p99_ms = 5 }\n",
    );
    assert_eq!(both.services[0].layers, Some(vec![4, 3]));
    assert!(both.services[0].checkpoint.is_some());

    assert_eq!(
        one_issue("[[services]]\nname = \"a\"\ncheckpoint = \"\"\nslo = { p99_ms = 5 }\n"),
        "services[0].layers: missing required key (required unless checkpoint is set)"
    );
    assert_eq!(
        one_issue(
            "[[services]]\nname = \"a\"\ncheckpoint = \"a.ckpt\"\nwarmup_data = \"synthetic:blobs\"\nslo = { p99_ms = 5 }\n"
        ),
        "services[0].warmup_data: only used when there is no checkpoint; remove warmup_data or checkpoint"
    );
}

#[test]
fn max_queue_delay_must_be_below_the_slo() {
    let svc = |p99: &str, delay: &str| {
        format!(
            "[[services]]\nname = \"a\"\nlayers = [4, 3]\nslo = {{ p99_ms = {p99} }}\n{delay}\n"
        )
    };
    assert_eq!(
        one_issue(&svc("25", "batching = { max_queue_delay_ms = 30 }")),
        "services[0].batching.max_queue_delay_ms: must be < slo.p99_ms (25), got 30"
    );
    assert_eq!(
        one_issue(&svc("25", "batching = { max_queue_delay_ms = 25 }")),
        "services[0].batching.max_queue_delay_ms: must be < slo.p99_ms (25), got 25"
    );
    // The default delay (0) fits under any SLO.
    assert_eq!(
        ok(&svc("1.5", "")).services[0].batching.max_queue_delay_ms,
        0.0
    );
    assert_eq!(
        ok(&svc("25", "batching = { max_queue_delay_ms = 24.9 }")).services[0]
            .batching
            .max_queue_delay_ms,
        24.9
    );
    // An invalid SLO is reported once, without a spurious cross-check.
    assert_eq!(
        one_issue(&svc("-1", "batching = { max_queue_delay_ms = 30 }")),
        "services[0].slo.p99_ms: must be > 0, got -1"
    );
}

#[test]
fn a_service_timeout_defaults_to_ten_slos_and_may_not_undercut_the_slo() {
    let svc = |p99: &str, timeout: &str| {
        format!(
            "[[services]]\nname = \"a\"\nlayers = [4, 3]\n{timeout}\nslo = {{ p99_ms = {p99} }}\n"
        )
    };
    assert_eq!(ok(&svc("25", "")).services[0].timeout_ms, 250.0);
    assert_eq!(ok(&svc("0.5", "")).services[0].timeout_ms, 5.0);
    assert_eq!(
        ok(&svc("25", "timeout_ms = 25")).services[0].timeout_ms,
        25.0
    );
    assert_eq!(
        ok(&svc("25", "timeout_ms = 60000")).services[0].timeout_ms,
        60000.0
    );
    assert_eq!(ok(&svc("60000", "")).services[0].timeout_ms, 600_000.0);
    assert_eq!(
        one_issue(&svc("25", "timeout_ms = 10")),
        "services[0].timeout_ms: must be >= slo.p99_ms (25), got 10"
    );
    assert_eq!(
        one_issue(&svc("25", "timeout_ms = 0")),
        "services[0].timeout_ms: must be > 0, got 0"
    );
    assert!(
        one_issue(&svc("25", "timeout_ms = \"1s\""))
            .starts_with("services[0].timeout_ms: expected a number"),
    );
    assert!(
        one_issue(&svc("25", "timeout_ms = 4000000"))
            .starts_with("services[0].timeout_ms: must be <= 3600000"),
    );
}

#[test]
fn slo_window_must_cover_a_control_period() {
    let svc = |top: &str, window: &str| {
        format!(
            "{top}\n[[services]]\nname = \"a\"\nlayers = [4, 3]\nslo = {{ p99_ms = 5{window} }}\n"
        )
    };
    assert_eq!(
        one_issue(&svc("", ", window_ms = 50")),
        "services[0].slo.window_ms: must be >= control_period_ms (100), got 50"
    );
    assert_eq!(
        one_issue(&svc("control_period_ms = 2000", "")),
        "services[0].slo.window_ms: must be >= control_period_ms (2000), got 1000 (the default)"
    );
    assert_eq!(
        ok(&svc("control_period_ms = 250", ", window_ms = 250")).services[0]
            .slo
            .window_ms,
        250
    );
    // With a broken control period, the window is checked against the smallest legal one.
    assert_eq!(
        issues(&svc("control_period_ms = 1", ", window_ms = 5")),
        vec![
            "control_period_ms: must be between 10 and 10000, got 1",
            "services[0].slo.window_ms: must be >= 10, got 5",
        ]
    );
}

#[test]
fn optimizer_sets_the_default_learning_rate_and_momentum_is_sgd_only() {
    let c = ok(&format!(
        "{JOB}{}",
        JOB.replace("\"j\"", "\"k\"") + "optimizer = \"sgd\"\n"
    ));
    assert_eq!(c.jobs[0].optimizer, OptimizerKind::Adam);
    assert_eq!(c.jobs[0].lr, 0.001);
    assert_eq!(c.jobs[1].optimizer, OptimizerKind::Sgd);
    assert_eq!(c.jobs[1].lr, 0.05);
    assert_eq!(c.jobs[1].momentum, 0.9);
    assert_eq!(
        ok(&job_with("optimizer = \"sgd\"\nmomentum = 0\nlr = 0.2")).jobs[0].momentum,
        0.0
    );
    assert_eq!(
        one_issue(&job_with("momentum = 0.5")),
        "jobs[0].momentum: only used with optimizer = \"sgd\"; remove it or set optimizer = \"sgd\""
    );
}

#[test]
fn validation_fraction_is_needed_for_a_target_accuracy() {
    assert_eq!(
        one_issue(&job_with("target_accuracy = 0.9\nval_fraction = 0")),
        "jobs[0].val_fraction: must be > 0 when target_accuracy is set (accuracy is measured on the held-out fraction), got 0"
    );
    let c = ok(&job_with("val_fraction = 0"));
    assert_eq!(c.jobs[0].val_fraction, 0.0);
    assert_eq!(c.jobs[0].target_accuracy, None);
}

#[test]
fn a_job_without_a_deadline_is_best_effort() {
    let c = ok(JOB);
    assert_eq!(c.jobs[0].deadline, None);
    assert!(c.jobs[0].best_effort);
    assert!(ok(&job_with("best_effort = true")).jobs[0].best_effort);
    assert!(!ok(&job_with("deadline = \"1h\"")).jobs[0].best_effort);
    assert!(ok(&job_with("deadline = \"1h\"\nbest_effort = true")).jobs[0].best_effort);
    assert_eq!(
        one_issue(&job_with("best_effort = false")),
        "jobs[0].best_effort: false needs a deadline (a job without one is best-effort); set deadline or remove best_effort"
    );
}

#[test]
fn device_rules() {
    let c = ok(
        "[device]\nkind = \"cuda\"\ngpus = [2, 0]\nrequire_gpu = true\ncpu_threads = 8\nshare_mechanism = \"green\"\nmemory_limit_mib = 4096\ncpu_split = [0.75, 0.25]\ngemm_wgmma = true\ncuda_graphs = true\n",
    );
    assert_eq!(
        c.device,
        DeviceConfig {
            kind: DeviceKind::Cuda,
            gpus: GpuSelection::Indices(vec![2, 0]),
            require_gpu: true,
            cpu_threads: 8,
            share_mechanism: ShareMechanism::Green,
            memory_limit_mib: Some(4096),
            cpu_split: vec![0.75, 0.25],
            gemm_wgmma: true,
            cuda_graphs: true,
        }
    );
    assert_eq!(
        ok("[device]\nmemory_limit_mib = 0\n")
            .device
            .memory_limit_mib,
        None,
        "0 means all of the GPU's memory"
    );
    assert!(
        one_issue("[device]\nmemory_limit_mib = -1\n").starts_with("device.memory_limit_mib"),
        "{}",
        one_issue("[device]\nmemory_limit_mib = -1\n")
    );
    assert_eq!(
        one_issue("[device]\ngpus = [0, 1, 0]\n"),
        "device.gpus[2]: duplicate gpu index 0 (also device.gpus[0])"
    );
    assert_eq!(
        one_issue("[device]\ngpus = []\n"),
        "device.gpus: must not be empty (use kind = \"cpu\" to run without a gpu)"
    );
    assert_eq!(
        one_issue("[device]\nkind = \"cpu\"\nrequire_gpu = true\n"),
        "device.require_gpu: cannot be true with kind = \"cpu\"; set kind to \"auto\" or \"cuda\""
    );
}

#[test]
fn top_level_values() {
    let c = ok(
        "listen = \"[::1]:9000\"\nstate_dir = \"/var/lib/setpoint\"\nauth_token = \"s3cret\"\n\
                [control]\nleftover = \"spread\"\ndecision_log = \"decisions.jsonl\"\n",
    );
    assert_eq!(c.listen, "[::1]:9000".parse::<SocketAddr>().unwrap());
    assert_eq!(c.state_dir, PathBuf::from("/var/lib/setpoint"));
    assert_eq!(c.auth_token.as_deref(), Some("s3cret"));
    assert_eq!(c.control.leftover, Leftover::Spread);
    assert_eq!(
        c.control.decision_log,
        Some(PathBuf::from("decisions.jsonl"))
    );
    assert_eq!(ok("auth_token = \"\"").auth_token, None);
    assert_eq!(
        one_issue("state_dir = \"\""),
        "state_dir: must not be empty"
    );
}

#[test]
fn a_bad_auth_token_is_reported_without_echoing_it() {
    let got = one_issue("auth_token = \"my secret\"");
    assert_eq!(
        got,
        "auth_token: must be printable ascii without spaces or control characters"
    );
    assert!(!got.contains("secret"));
}

// ---------------------------------------------------------------------------------------------
// Deadlines

#[test]
fn deadlines_relative_and_absolute() {
    let d = |s: &str| ok(&job_with(&format!("deadline = {s}"))).jobs[0].deadline;
    assert_eq!(d("\"90s\""), Some(Deadline::In(Duration::from_secs(90))));
    assert_eq!(d("\"10m\""), Some(Deadline::In(Duration::from_secs(600))));
    assert_eq!(d("\"2h\""), Some(Deadline::In(Duration::from_secs(7200))));
    assert_eq!(
        d("\"1h 30m\""),
        Some(Deadline::In(Duration::from_secs(5400)))
    );
    let at = Some(Deadline::At(
        UNIX_EPOCH + Duration::from_secs(1_795_876_200),
    ));
    assert_eq!(d("\"2026-11-28T14:30:00Z\""), at);
    assert_eq!(d("\"2026-11-28T15:30:00+01:00\""), at);
    // An unquoted TOML datetime means the same.
    assert_eq!(d("2026-11-28T14:30:00Z"), at);
    assert_eq!(d("2026-11-28T10:30:00-04:00"), at);
}

#[test]
fn deadline_garbage_names_the_accepted_forms() {
    assert_eq!(
        one_issue(&job_with("deadline = \"soon\"")),
        "jobs[0].deadline: expected a duration like \"90s\", \"10m\" or \"2h\", or an RFC 3339 timestamp like \"2026-11-28T14:30:00Z\", got \"soon\""
    );
    let got = one_issue(&job_with("deadline = \"2026-11-31T14:30:00Z\""));
    assert!(got.starts_with("jobs[0].deadline: invalid RFC 3339 timestamp \"2026-11-31T14:30:00Z\": day 31 out of range"), "{got}");
    let got = one_issue(&job_with("deadline = \"2026-11-28T14:30:00\""));
    assert!(got.contains("missing UTC offset"), "{got}");
    let got = one_issue(&job_with("deadline = 2026-11-28T14:30:00"));
    assert!(
        got.contains("no UTC offset") && got.starts_with("jobs[0].deadline: "),
        "{got}"
    );
    let got = one_issue(&job_with("deadline = 2026-11-28"));
    assert!(got.contains("expected a full timestamp"), "{got}");
    assert_eq!(
        one_issue(&job_with("deadline = \"0s\"")),
        "jobs[0].deadline: a relative deadline must be > 0, got \"0s\""
    );
}

#[test]
fn deadline_resolves_against_submission_time() {
    let submitted = UNIX_EPOCH + Duration::from_secs(1_000_000);
    assert_eq!(
        Deadline::In(Duration::from_secs(600)).resolve(submitted),
        submitted + Duration::from_secs(600)
    );
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(5);
    assert_eq!(Deadline::At(at).resolve(submitted), at);
    assert_eq!("10m".parse::<Deadline>().unwrap().to_string(), "10m");
}

// ---------------------------------------------------------------------------------------------
// Syntax and I/O errors

#[test]
fn a_syntax_error_is_reported_once_with_line_and_column() {
    let text = "listen = \"127.0.0.1:8000\"\ncontrol_period_ms = 100\nstate_dir = state\n";
    match parse(text) {
        Err(ConfigError::Syntax {
            line,
            column,
            ref message,
            ..
        }) => {
            assert_eq!(line, 3);
            assert_eq!(column, 13);
            assert!(!message.is_empty());
        }
        other => panic!("expected a syntax error, got {other:?}"),
    }
    let shown = parse(text).unwrap_err().to_string();
    assert!(
        shown.starts_with("toml syntax error at line 3, column 13: "),
        "{shown}"
    );
    assert!(shown.contains("state_dir = state"), "{shown}");
}

#[test]
fn a_repeated_key_is_a_syntax_error() {
    let e = parse("listen = \"127.0.0.1:1\"\nlisten = \"127.0.0.1:2\"\n").unwrap_err();
    assert!(matches!(e, ConfigError::Syntax { line: 2, .. }), "{e:?}");
}

#[test]
fn load_prefixes_every_message_with_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.toml");
    std::fs::write(&path, "control_period_ms = 5\nmax_request_bytes = 1\n").unwrap();
    let shown = load(&path).unwrap_err().to_string();
    let p = path.display();
    assert_eq!(
        shown,
        format!(
            "{p}: control_period_ms: must be between 10 and 10000, got 5\n\
             {p}: max_request_bytes: must be between 1024 and 1073741824, got 1"
        )
    );

    std::fs::write(&path, "[device\n").unwrap();
    let shown = load(&path).unwrap_err().to_string();
    assert!(
        shown.starts_with(&format!("{p}: toml syntax error at line 1")),
        "{shown}"
    );

    let missing = dir.path().join("absent.toml");
    let e = load(&missing).unwrap_err();
    assert!(matches!(e, ConfigError::Io { .. }));
    assert!(e.to_string().contains("absent.toml"), "{e}");
    assert!(std::error::Error::source(&e).is_some());
}

// ---------------------------------------------------------------------------------------------
// Printing back

#[test]
fn summary_shows_every_resolved_value() {
    let s = default_config().summary();
    for want in [
        "listen = \"127.0.0.1:8000\"",
        "state_dir = \"state\"",
        "control_period_ms = 100",
        "# auth_token: (not set",
        "max_request_bytes = 16777216",
        "[device]",
        "kind = \"auto\"",
        "gpus = \"all\"",
        "require_gpu = false",
        "cpu_threads = 0",
        "share_mechanism = \"auto\"",
        "[control]",
        "reserve_frac = 0.05",
        "leftover = \"best-effort\"",
        "past_deadline = \"best-effort\"",
        "[[services]]",
        "name = \"mlp\"",
        "layers = [64, 128, 10]",
        "warmup_data = \"synthetic:blobs\"",
        "max_queue = 1024",
        "p99_ms = 25.0",
        "window_ms = 1000",
        "max_batch_size = 32",
        "max_queue_delay_ms = 0.0",
        "[[jobs]]",
        "name = \"demo\"",
        "data = \"synthetic:blobs:size=50000,noise=1.2\"",
        "optimizer = \"adam\"",
        "lr = 0.001",
        "weight_decay = 0.0",
        "batch_size = 64",
        "epochs = 40",
        "target_accuracy = 0.95",
        "val_fraction = 0.2",
        "deadline = \"10m\"",
        "checkpoint_every_steps = 500",
        "best_effort = false",
    ] {
        assert!(s.contains(want), "summary lacks {want:?}:\n{s}");
    }
}

#[test]
fn summary_never_shows_the_token() {
    let c = ok("auth_token = \"s3cret-token\"");
    let s = c.summary();
    assert!(s.contains("(set)"), "{s}");
    assert!(!s.contains("s3cret"), "{s}");
    let json = serde_json::to_value(&c).unwrap();
    assert_eq!(json["auth_token"], "(set)");
    assert_eq!(
        serde_json::to_value(ok("")).unwrap()["auth_token"],
        serde_json::Value::Null
    );
}

/// The summary is itself a config that means the same thing.
#[test]
fn summary_parses_back_to_the_same_config() {
    let rich = ok(r#"
listen = "0.0.0.0:9100"
state_dir = "/var/lib/setpoint dir"
control_period_ms = 50
[device]
kind = "cuda"
gpus = [1, 0]
cpu_threads = 3
share_mechanism = "cta"
cpu_split = [0.5, 0.25]
[control]
reserve_frac = 0.125
leftover = "idle"
decision_log = "log \"quoted\".jsonl"
[[services]]
name = "ckpt-only"
checkpoint = "m.ckpt"
slo = { p99_ms = 7.25, window_ms = 500 }
batching = { max_batch_size = 1, max_queue_delay_ms = 0 }
[[services]]
name = "plain"
layers = [3, 3]
replicas = ["gpu:*", "cpu:1", "cuda:2"]
slo = { p99_ms = 100 }
[[jobs]]
name = "abs"
data = "data/train.csv"
layers = [8, 4, 2]
optimizer = "sgd"
lr = 1e-5
momentum = 0.5
weight_decay = 3e-4
deadline = "2026-11-28T14:30:00.125+02:00"
[[jobs]]
name = "free"
data = "synthetic:spirals:size=100"
layers = [2, 2]
epochs = 7
val_fraction = 0
"#);
    for c in [default_config(), load(&example_path()).unwrap(), rich] {
        let s = c.summary();
        let back = parse(&s).unwrap_or_else(|e| panic!("summary does not parse: {e}\n{s}"));
        assert_eq!(back, c, "summary:\n{s}");
    }
}

#[test]
fn json_output_uses_config_spellings() {
    let v = serde_json::to_value(default_config()).unwrap();
    assert_eq!(v["listen"], "127.0.0.1:8000");
    assert_eq!(v["device"]["gpus"], "all");
    assert_eq!(v["device"]["kind"], "auto");
    assert_eq!(v["control"]["leftover"], "best-effort");
    assert_eq!(v["services"][0]["slo"]["p99_ms"], 25.0);
    assert_eq!(v["jobs"][0]["deadline"], "10m");
    assert_eq!(v["jobs"][0]["optimizer"], "adam");
    let c = ok("[device]\ngpus = [0, 3]\n");
    assert_eq!(
        serde_json::to_value(c).unwrap()["device"]["gpus"],
        serde_json::json!([0, 3])
    );
}

#[test]
fn data_specs_are_checked_by_the_loaders_rules() {
    let text = r#"
[[services]]
name = "a"
layers = [64, 10]
warmup_data = "synthetic:moons"
[services.slo]
p99_ms = 10

[[jobs]]
name = "j"
data = "synthetic:blobs:size=abc"
layers = [64, 10]
"#;
    assert_eq!(
        issues(text),
        vec![
            "services[0].warmup_data: invalid data spec \"synthetic:moons\": unknown synthetic kind \"moons\"; accepted: blobs, spirals".to_string(),
            "jobs[0].data: invalid data spec \"synthetic:blobs:size=abc\": size: \"abc\" is not a whole number".to_string(),
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// Path confinement

#[test]
fn data_dirs_default_to_the_config_files_directory_and_are_validated() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("node.toml");
    std::fs::write(&file, "").unwrap();
    let c = load(&file).unwrap();
    assert_eq!(
        c.paths.data_dirs,
        vec![std::fs::canonicalize(dir.path()).unwrap()]
    );
    // The embedded default has no file: the working directory.
    assert_eq!(ok("").paths.data_dirs, vec![PathBuf::from(".")]);
    let c = ok("[paths]\ndata_dirs = [\"/srv/data\", \"rel\"]\n");
    assert_eq!(
        c.paths.data_dirs,
        vec![PathBuf::from("/srv/data"), PathBuf::from("rel")]
    );
    assert_eq!(
        c.allowed_dirs(),
        vec![
            PathBuf::from("/srv/data"),
            PathBuf::from("rel"),
            PathBuf::from("state")
        ]
    );
    assert_eq!(
        issues("[paths]\ndata_dirs = [\"\", 3]\n"),
        vec![
            "paths.data_dirs[0]: must not be empty",
            "paths.data_dirs[1]: expected a string (a directory), got an integer",
        ]
    );
    assert_eq!(
        one_issue("[paths]\ndata_dirs = \"/srv\"\n"),
        "paths.data_dirs: expected an array of directories, got a string"
    );
}

#[test]
fn files_outside_the_data_dirs_are_config_errors_naming_the_key() {
    let root = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(root.path()).unwrap();
    let data = root.join("data");
    let secret = root.join("secret");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::create_dir_all(&secret).unwrap();
    std::fs::write(data.join("ok.csv"), "1,2,0\n3,4,1\n").unwrap();
    std::fs::write(secret.join("s.csv"), "1,2,0\n3,4,1\n").unwrap();
    std::os::unix::fs::symlink(secret.join("s.csv"), data.join("link.csv")).unwrap();
    let job = |name: &str, data: &Path| {
        format!(
            "[[jobs]]\nname = \"{name}\"\ndata = {:?}\nlayers = [2, 2]\n",
            data.display().to_string()
        )
    };
    let file = root.join("node.toml");
    let text = format!(
        "state_dir = {:?}\n[paths]\ndata_dirs = [{:?}]\n{}{}{}{}\n\
         [[services]]\nname = \"s\"\ncheckpoint = {:?}\nslo = {{ p99_ms = 5 }}\n",
        root.join("state").display().to_string(),
        data.display().to_string(),
        job("inside", &data.join("ok.csv")),
        job("dotdot", &data.join("../secret/s.csv")),
        job("link", &data.join("link.csv")),
        job("missing", &data.join("not-yet.csv")),
        secret.join("s.csv").display().to_string(),
    );
    std::fs::write(&file, &text).unwrap();
    let cfg = load(&file).unwrap();
    let e = check_paths(&cfg, Some(&file)).unwrap_err();
    let got: Vec<(String, String)> = e
        .issues()
        .iter()
        .map(|i| (i.path.clone(), i.message.clone()))
        .collect();
    let keys: Vec<&str> = got.iter().map(|(k, _)| k.as_str()).collect();
    // A file that does not exist yet is left to the loader, which names it when it runs.
    assert_eq!(
        keys,
        ["services[0].checkpoint", "jobs[1].data", "jobs[2].data"]
    );
    for (_, m) in &got {
        assert!(m.contains("is outside the directories"), "{m}");
        assert!(m.contains(&data.display().to_string()), "{m}");
        assert!(m.contains(&root.join("state").display().to_string()), "{m}");
    }
    // The link is refused without telling where it leads.
    assert!(
        got[2].1.contains("(through a symbolic link)"),
        "{}",
        got[2].1
    );
    assert!(!got[2].1.contains("secret"), "{}", got[2].1);
    assert!(
        e.to_string()
            .starts_with(&format!("{}: services[0].checkpoint: ", file.display())),
        "{e}"
    );
    // Adding the directory (as `serve --data-dir` does) allows them.
    let mut cfg = cfg;
    cfg.paths.data_dirs.push(secret.clone());
    check_paths(&cfg, Some(&file)).unwrap();
}

#[test]
fn grpc_listen_defaults_to_8001_and_empty_turns_it_off() {
    assert_eq!(ok("").grpc_listen, Some("127.0.0.1:8001".parse().unwrap()));
    assert_eq!(
        ok("grpc_listen = \"[::1]:9001\"").grpc_listen,
        Some("[::1]:9001".parse().unwrap())
    );
    assert_eq!(ok("grpc_listen = \"\"").grpc_listen, None);
    assert_eq!(
        issues("grpc_listen = \"localhost:8001\""),
        vec![
            "grpc_listen: expected a socket address like \"127.0.0.1:8001\" or \"[::1]:8001\" (an IP, not a host name), or \"\" to turn gRPC off, got \"localhost:8001\""
        ]
    );
    assert_eq!(
        issues("grpc_listen = 8001"),
        vec!["grpc_listen: expected a string, got an integer"]
    );
}

#[test]
fn replicas_and_cpu_split_name_what_is_wrong_and_what_is_accepted() {
    let c = ok(
        "[device]\ncpu_split = [0.75, 0.25]\n[[services]]\nname = \"s\"\nlayers = [2, 2]\n\
                replicas = [\"gpu\", \"cpu\"]\nslo = { p99_ms = 10 }\n",
    );
    assert_eq!(c.device.cpu_split, vec![0.75, 0.25]);
    assert_eq!(
        c.services[0]
            .replicas
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        vec!["gpu", "cpu"]
    );
    let svc = |replicas: &str| {
        issues(&format!(
            "[[services]]\nname = \"s\"\nlayers = [2, 2]\nreplicas = {replicas}\nslo = {{ p99_ms = 10 }}\n"
        ))
    };
    assert_eq!(
        svc(r#"["gpu", "tpu:0", "cpu:x"]"#),
        vec![
            "services[0].replicas[1]: expected \"gpu\", \"gpu:*\", \"cuda:N\", \"cpu\", \"cpu:*\" or \"cpu:N\", got \"tpu:0\"",
            "services[0].replicas[2]: expected \"gpu\", \"gpu:*\", \"cuda:N\", \"cpu\", \"cpu:*\" or \"cpu:N\", got \"cpu:x\"",
        ]
    );
    assert_eq!(
        svc(r#"["cpu", "cpu"]"#),
        vec!["services[0].replicas[1]: cpu is named twice"]
    );
    assert!(svc("[]")[0].starts_with("services[0].replicas: expected an array of 1 to 16 devices"));
    assert!(svc("\"gpu\"")[0].starts_with("services[0].replicas: expected an array"));
    let dev = |split: &str| issues(&format!("[device]\ncpu_split = {split}\n"));
    assert_eq!(
        dev("[0.75, 0.5]"),
        vec![
            "device.cpu_split: expected 1 to 16 fractions summing to at most 1, got 2 summing to 1.25"
        ]
    );
    assert_eq!(
        dev("[0.5, 0, -1]"),
        vec![
            "device.cpu_split[1]: expected a fraction in (0, 1], got 0",
            "device.cpu_split[2]: expected a fraction in (0, 1], got -1",
        ]
    );
    assert!(dev("0.5")[0].starts_with("device.cpu_split: expected an array of fractions"));
}
