//! The schema: which keys exist, their defaults, ranges and cross-field rules.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use toml::{Table, Value};

use super::walk::{Bound, Field, Tbl, Walker, kind};
use super::{
    BatchingConfig, ControlConfig, Deadline, DeviceConfig, DeviceKind, GpuSelection, HttpConfig,
    JobConfig, Leftover, NodeConfig, OptimizerKind, PastDeadline, PathsConfig, ServiceConfig,
    ShareMechanism, SloConfig,
};

mod kubernetes;
mod tenants;
use tenants::check_unique;
pub(super) use tenants::{job, service};

const ROOT_KEYS: &[&str] = &[
    "listen",
    "grpc_listen",
    "state_dir",
    "control_period_ms",
    "auth_token",
    "max_request_bytes",
    "drain_timeout_ms",
    "checkpoint_error_timeout_ms",
    "http",
    "device",
    "control",
    "paths",
    "services",
    "jobs",
    "kubernetes",
];
const DEVICE_KEYS: &[&str] = &[
    "kind",
    "gpus",
    "require_gpu",
    "cpu_threads",
    "share_mechanism",
    "memory_limit_mib",
    "cpu_split",
    "gemm_wgmma",
    "cuda_graphs",
];
const HTTP_KEYS: &[&str] = &[
    "header_read_timeout_ms",
    "idle_timeout_ms",
    "max_connections",
    "listen_backlog",
    "reserved_fds",
    "io_threads",
];
const CONTROL_KEYS: &[&str] = &[
    "reserve_frac",
    "leftover",
    "past_deadline",
    "cpu_foreign_load",
    "decision_log",
];
const PATHS_KEYS: &[&str] = &["data_dirs"];
const SERVICE_KEYS: &[&str] = &[
    "name",
    "layers",
    "checkpoint",
    "seed",
    "warmup_data",
    "max_queue",
    "timeout_ms",
    "slo",
    "batching",
    "precision",
    "replicas",
];
const SLO_KEYS: &[&str] = &["p99_ms", "window_ms"];
const BATCHING_KEYS: &[&str] = &["max_batch_size", "max_queue_delay_ms"];
const JOB_KEYS: &[&str] = &[
    "name",
    "data",
    "layers",
    "optimizer",
    "lr",
    "momentum",
    "weight_decay",
    "batch_size",
    "epochs",
    "target_accuracy",
    "val_fraction",
    "seed",
    "deadline",
    "checkpoint_every_steps",
    "best_effort",
    "precision",
];

/// Defaults, shared with the documentation in `configs/setpoint.toml`.
pub(super) mod defaults {
    use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

    pub(crate) const LISTEN: SocketAddr =
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 8000));
    pub(crate) const GRPC_LISTEN: SocketAddr =
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 8001));
    pub(crate) const STATE_DIR: &str = "state";
    pub(crate) const CONTROL_PERIOD_MS: u64 = 100;
    pub(crate) const MAX_REQUEST_BYTES: u64 = 16 * 1024 * 1024;
    pub(crate) const DRAIN_TIMEOUT_MS: u64 = 30_000;
    pub(crate) const RESERVE_FRAC: f64 = 0.05;
    pub(crate) const SEED: u64 = 1;
    pub(crate) const MAX_QUEUE: usize = 1024;
    pub(crate) const WINDOW_MS: u64 = 1000;
    pub(crate) const MAX_BATCH_SIZE: usize = 32;
    pub(crate) const MAX_QUEUE_DELAY_MS: f64 = 0.0;
    /// A service's request timeout, when not given, is this many times its p99 SLO.
    pub(crate) const TIMEOUT_SLO_MULTIPLE: f64 = 10.0;
    pub(crate) const MOMENTUM: f64 = 0.9;
    pub(crate) const WEIGHT_DECAY: f64 = 0.0;
    pub(crate) const BATCH_SIZE: usize = 64;
    pub(crate) const EPOCHS: u32 = 50;
    pub(crate) const VAL_FRACTION: f64 = 0.2;
    pub(crate) const CHECKPOINT_EVERY_STEPS: u64 = 500;
}

const MIN_CONTROL_PERIOD_MS: i64 = 10;
const MAX_WINDOW_MS: i64 = 600_000;
const MAX_TIMEOUT_MS: f64 = 3_600_000.0;
const MAX_NAME_LEN: usize = 64;

/// Walks the whole document. The result holds placeholders wherever an issue was recorded;
/// it is only handed out when there are none.
pub(super) fn node(w: &mut Walker, table: &Table, default_data_dir: PathBuf) -> NodeConfig {
    let root = Tbl::root(table);
    w.check_keys(&root, ROOT_KEYS);

    let listen = listen(w, &root);
    let grpc_listen = grpc_listen(w, &root);
    let state_dir = state_dir(w, &root);
    let control_period = w
        .int::<u64>(
            &root,
            "control_period_ms",
            MIN_CONTROL_PERIOD_MS,
            Some(10_000),
        )
        .or(defaults::CONTROL_PERIOD_MS);
    let auth_token = auth_token(w, &root);
    let max_request_bytes = w
        .int::<u64>(&root, "max_request_bytes", 1024, Some(1 << 30))
        .or(defaults::MAX_REQUEST_BYTES);
    let drain_timeout_ms = w
        .int::<u64>(&root, "drain_timeout_ms", 0, Some(3_600_000))
        .or(defaults::DRAIN_TIMEOUT_MS);
    let checkpoint_error_timeout_ms = w
        .int::<u64>(&root, "checkpoint_error_timeout_ms", 0, Some(86_400_000))
        .or(super::DEFAULT_CHECKPOINT_ERROR_TIMEOUT_MS);

    // A section of the wrong type was reported; walking an empty one yields the defaults.
    let empty = Table::new();
    let t = w.section(&root, "http", &empty);
    let http = http(w, &t.unwrap_or(Tbl::root(&empty)));
    let t = w.section(&root, "device", &empty);
    let device = device(w, &t.unwrap_or(Tbl::root(&empty)));
    let t = w.section(&root, "control", &empty);
    let control = control(w, &t.unwrap_or(Tbl::root(&empty)));
    let t = w.section(&root, "paths", &empty);
    let paths = paths(w, &t.unwrap_or(Tbl::root(&empty)), default_data_dir);
    let kubernetes = match w.table(&root, "kubernetes") {
        Field::Ok(t) => Some(kubernetes::kubernetes(w, &t)),
        _ => None,
    };

    let services: Vec<ServiceConfig> = w
        .tables(&root, "services")
        .iter()
        .map(|(_, t)| service(w, t, control_period))
        .collect();
    check_unique(w, "services", "service", services.iter().map(|s| &s.name));

    let jobs: Vec<JobConfig> = w
        .tables(&root, "jobs")
        .iter()
        .map(|(_, t)| job(w, t))
        .collect();
    check_unique(w, "jobs", "job", jobs.iter().map(|j| &j.name));

    NodeConfig {
        listen: listen.unwrap_or(defaults::LISTEN),
        grpc_listen: grpc_listen.unwrap_or(Some(defaults::GRPC_LISTEN)),
        state_dir: state_dir.unwrap_or_default(),
        control_period_ms: control_period.unwrap_or(defaults::CONTROL_PERIOD_MS),
        auth_token,
        max_request_bytes: max_request_bytes.unwrap_or(defaults::MAX_REQUEST_BYTES),
        drain_timeout_ms: drain_timeout_ms.unwrap_or(defaults::DRAIN_TIMEOUT_MS),
        checkpoint_error_timeout_ms: checkpoint_error_timeout_ms
            .unwrap_or(super::DEFAULT_CHECKPOINT_ERROR_TIMEOUT_MS),
        http,
        device,
        control,
        paths,
        services,
        jobs,
        kubernetes,
    }
}

/// The root's `listen` address (the default when absent); `None` when wrong (reported).
fn listen(w: &mut Walker, root: &Tbl<'_>) -> Option<SocketAddr> {
    match w.string(root, "listen") {
        Field::Absent => Some(defaults::LISTEN),
        Field::Bad => None,
        Field::Ok(s) => s.parse::<SocketAddr>().ok().or_else(|| {
            w.issue(
                "listen",
                format!(
                    "expected a socket address like \"127.0.0.1:8000\" or \"[::1]:8000\" (an IP, not a host name), got {s:?}"
                ),
            );
            None
        }),
    }
}

/// The root's `grpc_listen` address: the default when absent, `Some(None)` when empty (gRPC
/// off); `None` when wrong (reported).
fn grpc_listen(w: &mut Walker, root: &Tbl<'_>) -> Option<Option<SocketAddr>> {
    match w.string(root, "grpc_listen") {
        Field::Absent => Some(Some(defaults::GRPC_LISTEN)),
        Field::Bad => None,
        Field::Ok("") => Some(None),
        Field::Ok(s) => match s.parse::<SocketAddr>() {
            Ok(a) => Some(Some(a)),
            Err(_) => {
                w.issue(
                    "grpc_listen",
                    format!(
                        "expected a socket address like \"127.0.0.1:8001\" or \"[::1]:8001\" (an IP, not a host name), or \"\" to turn gRPC off, got {s:?}"
                    ),
                );
                None
            }
        },
    }
}

/// The root's `state_dir` (the default when absent); `None` when empty or wrong (reported).
fn state_dir(w: &mut Walker, root: &Tbl<'_>) -> Option<PathBuf> {
    match w.string(root, "state_dir") {
        Field::Ok("") => {
            w.issue("state_dir", "must not be empty");
            None
        }
        f => f.or(defaults::STATE_DIR).map(PathBuf::from),
    }
}

fn paths(w: &mut Walker, t: &Tbl<'_>, default_dir: PathBuf) -> PathsConfig {
    w.check_keys(t, PATHS_KEYS);
    let path = t.key("data_dirs");
    let data_dirs = match t.get("data_dirs") {
        None => vec![default_dir],
        Some(Value::Array(items)) => {
            let mut dirs = Vec::with_capacity(items.len());
            for (i, v) in items.iter().enumerate() {
                match v {
                    Value::String(s) if !s.is_empty() => dirs.push(PathBuf::from(s)),
                    Value::String(_) => w.issue(format!("{path}[{i}]"), "must not be empty"),
                    v => w.issue(
                        format!("{path}[{i}]"),
                        format!("expected a string (a directory), got {}", kind(v)),
                    ),
                }
            }
            dirs
        }
        Some(v) => {
            w.issue(
                path,
                format!("expected an array of directories, got {}", kind(v)),
            );
            Vec::new()
        }
    };
    PathsConfig { data_dirs }
}

fn auth_token(w: &mut Walker, root: &Tbl<'_>) -> Option<String> {
    let s = w.opt_string(root, "auth_token").given()?;
    // The token goes into an HTTP header; the message never echoes it.
    if !s.bytes().all(|b| b.is_ascii_graphic()) {
        w.issue(
            "auth_token",
            "must be printable ascii without spaces or control characters",
        );
        return None;
    }
    Some(s.to_owned())
}

fn http(w: &mut Walker, t: &Tbl<'_>) -> HttpConfig {
    w.check_keys(t, HTTP_KEYS);
    let d = HttpConfig::default();
    HttpConfig {
        header_read_timeout_ms: w
            .int::<u64>(t, "header_read_timeout_ms", 100, Some(600_000))
            .or(d.header_read_timeout_ms)
            .unwrap_or(d.header_read_timeout_ms),
        idle_timeout_ms: w
            .int::<u64>(t, "idle_timeout_ms", 100, Some(3_600_000))
            .or(d.idle_timeout_ms)
            .unwrap_or(d.idle_timeout_ms),
        max_connections: w
            .int::<usize>(t, "max_connections", 1, Some(1_000_000))
            .or(d.max_connections)
            .unwrap_or(d.max_connections),
        listen_backlog: w
            .int::<u32>(t, "listen_backlog", 1, Some(65_535))
            .or(d.listen_backlog)
            .unwrap_or(d.listen_backlog),
        reserved_fds: w
            .int::<usize>(t, "reserved_fds", 16, Some(65_536))
            .or(d.reserved_fds)
            .unwrap_or(d.reserved_fds),
        io_threads: w
            .int::<usize>(t, "io_threads", 0, Some(256))
            .or(d.io_threads)
            .unwrap_or(d.io_threads),
    }
}

fn device(w: &mut Walker, t: &Tbl<'_>) -> DeviceConfig {
    w.check_keys(t, DEVICE_KEYS);
    let kind = w
        .choice(
            t,
            "kind",
            &[
                ("auto", DeviceKind::Auto),
                ("cpu", DeviceKind::Cpu),
                ("cuda", DeviceKind::Cuda),
            ],
        )
        .or(DeviceKind::Auto);
    let gpus = gpus(w, t);
    let require_gpu = w.boolean(t, "require_gpu").or(false);
    if require_gpu == Some(true) && kind == Some(DeviceKind::Cpu) {
        w.issue(
            t.key("require_gpu"),
            "cannot be true with kind = \"cpu\"; set kind to \"auto\" or \"cuda\"",
        );
    }
    let cpu_threads = w.int::<usize>(t, "cpu_threads", 0, Some(1024)).or(0);
    let share_mechanism = w
        .choice(
            t,
            "share_mechanism",
            &[
                ("auto", ShareMechanism::Auto),
                ("cta", ShareMechanism::Cta),
                ("green", ShareMechanism::Green),
            ],
        )
        .or(ShareMechanism::Auto);
    let memory_limit_mib = w.int::<u64>(t, "memory_limit_mib", 0, Some(1 << 24)).or(0);
    let cpu_split = cpu_split(w, t);
    let gemm_wgmma = w.boolean(t, "gemm_wgmma").or(false);
    let cuda_graphs = w.boolean(t, "cuda_graphs").or(false);
    DeviceConfig {
        kind: kind.unwrap_or(DeviceKind::Auto),
        gpus: gpus.unwrap_or(GpuSelection::All),
        require_gpu: require_gpu.unwrap_or(false),
        cpu_threads: cpu_threads.unwrap_or(0),
        share_mechanism: share_mechanism.unwrap_or(ShareMechanism::Auto),
        memory_limit_mib: memory_limit_mib.filter(|&m| m > 0),
        cpu_split,
        gemm_wgmma: gemm_wgmma.unwrap_or(false),
        cuda_graphs: cuda_graphs.unwrap_or(false),
    }
}

/// Most parts `device.cpu_split` may cut the CPU into.
const MAX_CPU_PARTS: usize = 16;

/// `device.cpu_split`: fractions of the CPU's cores, each in (0, 1], together at most 1;
/// empty when absent or wrong (reported).
fn cpu_split(w: &mut Walker, t: &Tbl<'_>) -> Vec<f64> {
    let key = t.key("cpu_split");
    let Field::Ok(items) = w.array(
        t,
        "cpu_split",
        "an array of fractions of the CPU such as [0.75, 0.25]",
    ) else {
        return Vec::new();
    };
    let mut parts = Vec::with_capacity(items.len());
    for (i, v) in items.iter().enumerate() {
        let x = match v {
            Value::Float(x) => Some(*x),
            Value::Integer(x) => Some(*x as f64),
            _ => None,
        };
        match x {
            Some(x) if x > 0.0 && x <= 1.0 => parts.push(x),
            _ => w.issue(
                format!("{key}[{i}]"),
                format!("expected a fraction in (0, 1], got {v}"),
            ),
        }
    }
    if parts.len() != items.len() {
        return Vec::new();
    }
    let sum: f64 = parts.iter().sum();
    if items.is_empty() || items.len() > MAX_CPU_PARTS || sum > 1.0 + 1e-9 {
        w.issue(
            key,
            format!(
                "expected 1 to {MAX_CPU_PARTS} fractions summing to at most 1, got {} summing \
                 to {sum}",
                items.len()
            ),
        );
        return Vec::new();
    }
    parts
}

fn gpus(w: &mut Walker, t: &Tbl<'_>) -> Option<GpuSelection> {
    let path = t.key("gpus");
    match t.get("gpus") {
        None => Some(GpuSelection::All),
        Some(Value::String(s)) if s == "all" => Some(GpuSelection::All),
        Some(Value::String(s)) => {
            w.issue(
                path,
                format!("expected \"all\" or an array of gpu indices, got {s:?}"),
            );
            None
        }
        Some(Value::Array(a)) if a.is_empty() => {
            w.issue(
                path,
                "must not be empty (use kind = \"cpu\" to run without a gpu)",
            );
            None
        }
        Some(Value::Array(_)) => {
            let ids = w
                .int_array::<u32>(t, "gpus", 0, Some(i64::from(u32::MAX)))
                .given()?;
            let mut first: HashMap<u32, usize> = HashMap::new();
            let mut dup = false;
            for (i, id) in ids.iter().enumerate() {
                if let Some(j) = first.get(id) {
                    w.issue(
                        format!("{path}[{i}]"),
                        format!("duplicate gpu index {id} (also {path}[{j}])"),
                    );
                    dup = true;
                } else {
                    first.insert(*id, i);
                }
            }
            (!dup).then_some(GpuSelection::Indices(ids))
        }
        Some(v) => {
            w.issue(
                path,
                format!(
                    "expected \"all\" or an array of gpu indices, got {}",
                    kind(v)
                ),
            );
            None
        }
    }
}

fn control(w: &mut Walker, t: &Tbl<'_>) -> ControlConfig {
    w.check_keys(t, CONTROL_KEYS);
    let reserve_frac = w
        .float(t, "reserve_frac", Bound::Incl(0.0), Bound::Incl(0.5))
        .or(defaults::RESERVE_FRAC);
    let leftover = w
        .choice(
            t,
            "leftover",
            &[
                ("best-effort", Leftover::BestEffort),
                ("idle", Leftover::Idle),
                ("spread", Leftover::Spread),
            ],
        )
        .or(Leftover::BestEffort);
    let past_deadline = w
        .choice(
            t,
            "past_deadline",
            &[
                ("best-effort", PastDeadline::BestEffort),
                ("stop", PastDeadline::Stop),
            ],
        )
        .or(PastDeadline::BestEffort);
    let cpu_foreign_load = w.boolean(t, "cpu_foreign_load").or(true);
    let decision_log = w.opt_string(t, "decision_log").given().map(PathBuf::from);
    ControlConfig {
        reserve_frac: reserve_frac.unwrap_or(defaults::RESERVE_FRAC),
        leftover: leftover.unwrap_or(Leftover::BestEffort),
        past_deadline: past_deadline.unwrap_or(PastDeadline::BestEffort),
        cpu_foreign_load: cpu_foreign_load.unwrap_or(true),
        decision_log,
    }
}
