//! The configuration's types: the node, its device, listener, control and paths, and the
//! services and jobs it starts with.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize, Serializer};

use super::{Deadline, schema};

/// Everything the daemon needs to know about this node, every default resolved.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeConfig {
    /// Address the HTTP API listens on.
    pub listen: SocketAddr,
    /// Address the gRPC API (the Open Inference Protocol's `GRPCInferenceService`) listens
    /// on; `None` (an empty `grpc_listen`) turns it off.
    pub grpc_listen: Option<SocketAddr>,
    /// Directory for checkpoints, job records and other state; a relative path is relative to
    /// the process working directory.
    pub state_dir: PathBuf,
    /// Controller period in milliseconds, 10..=10000.
    pub control_period_ms: u64,
    /// Bearer token required by the HTTP API; `None` leaves the API open. Never serialised in
    /// clear: JSON shows `"(set)"` or `null`.
    #[serde(serialize_with = "serialize_secret")]
    pub auth_token: Option<String>,
    /// Largest accepted HTTP request body, 1 KiB ..= 1 GiB.
    pub max_request_bytes: u64,
    /// How long a stop waits for HTTP requests in flight before failing them (closing their
    /// connections), milliseconds, 0 ..= 3,600,000.
    pub drain_timeout_ms: u64,
    /// How long a job's checkpoint writes may fail (a full disk, say) while it trains on
    /// before it fails, milliseconds, 0 ..= 86,400,000.
    pub checkpoint_error_timeout_ms: u64,
    /// Connection limits and timeouts of the HTTP listener.
    pub http: HttpConfig,
    /// Which device to run on and how to divide it.
    pub device: DeviceConfig,
    /// Controller and arbiter settings.
    pub control: ControlConfig,
    /// Where jobs and services may read data and checkpoints from.
    pub paths: PathsConfig,
    /// Inference services started with the node.
    pub services: Vec<ServiceConfig>,
    /// Training jobs submitted at start.
    pub jobs: Vec<JobConfig>,
    /// The node's part in a Kubernetes cluster; `None` without a `[kubernetes]` section.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<super::KubernetesConfig>,
}

fn serialize_secret<S: Serializer>(v: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(_) => s.serialize_str("(set)"),
        None => s.serialize_none(),
    }
}

/// Device selection and partitioning.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeviceConfig {
    /// Which backend to use.
    pub kind: DeviceKind,
    /// Which GPUs the node may use.
    pub gpus: GpuSelection,
    /// Refuse to start when no GPU is usable instead of falling back to the CPU.
    pub require_gpu: bool,
    /// CPU worker threads; 0 means all available cores.
    pub cpu_threads: usize,
    /// How a GPU share is enforced.
    pub share_mechanism: ShareMechanism,
    /// Device memory setpoint's buffers may use on a GPU, MiB; `None`: all of it.
    pub memory_limit_mib: Option<u64>,
    /// The CPU as several devices (`cpu:0`, `cpu:1`, ...), each this fraction of its cores;
    /// empty: one CPU device, `cpu`. Each part is in (0, 1], together at most 1.
    pub cpu_split: Vec<f64>,
    /// On compute capability 9.0, launch `gemm_bf16_wgmma` (wgmma fed by TMA) for the large
    /// bf16 products it takes. Off by default: the kernel has not yet run on a GPU.
    pub gemm_wgmma: bool,
    /// On a GPU, queue each inference batch and training step as one CUDA Graph launch when
    /// it repeats an earlier one's kernels. Off by default: not yet run on a GPU.
    pub cuda_graphs: bool,
}

/// Which backend runs the work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    /// CUDA when a usable GPU is found, else the CPU.
    Auto,
    /// The CPU only.
    Cpu,
    /// CUDA GPUs.
    Cuda,
}

/// Which GPUs the node may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GpuSelection {
    /// Every GPU the driver reports.
    All,
    /// These device indices (non-empty, unique).
    Indices(Vec<u32>),
}

impl Serialize for GpuSelection {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            GpuSelection::All => s.serialize_str("all"),
            GpuSelection::Indices(v) => v.serialize(s),
        }
    }
}

/// How a lane's GPU share is enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ShareMechanism {
    /// Green contexts where the driver has them, else CTA budgets.
    Auto,
    /// Cap the grid of every kernel launch at the lane's CTA budget.
    Cta,
    /// SM partitions from green contexts (CUDA >= 12.4).
    Green,
}

/// The HTTP listener: how many connections it holds and how long it waits on each.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HttpConfig {
    /// A connection that has not sent a whole request head this long after it opened (or
    /// after the first byte of its next request) is closed, milliseconds, 100 ..= 600,000.
    pub header_read_timeout_ms: u64,
    /// A keep-alive connection with no request this long after its last answer is closed,
    /// milliseconds, 100 ..= 3,600,000.
    pub idle_timeout_ms: u64,
    /// Connections open at once, 1 ..= 1,000,000; past it a new one is answered 503 and
    /// closed. Lowered at start to what the descriptor limit allows after `reserved_fds`.
    pub max_connections: usize,
    /// Connections the kernel may queue before they are accepted (`listen` backlog),
    /// 1 ..= 65,535; the kernel caps it at `net.core.somaxconn`.
    pub listen_backlog: u32,
    /// File descriptors kept free of connections, for state, checkpoint and data files,
    /// 16 ..= 65,536.
    pub reserved_fds: usize,
    /// Threads of the async runtime that runs both listeners' connections (not the models,
    /// which run on their batchers' threads), 1 ..= 256; 0 = one per 8 cores, at least one
    /// ([`HttpConfig::io_thread_count`]).
    pub io_threads: usize,
}

impl HttpConfig {
    /// The runtime's threads on a host of `cores`: `io_threads`, or with 0 one per 8 cores
    /// and at least one. On 2 cores, one thread instead of two cut the daemon's CPU per
    /// single-connection request from 60-63 to 47-51 µs over HTTP and from 114-134 to 62 µs
    /// over gRPC (a request then never hops between two runtime threads), and raised
    /// throughput at every concurrency measured (1, 4, 16).
    pub fn io_thread_count(&self, cores: usize) -> usize {
        if self.io_threads > 0 {
            self.io_threads
        } else {
            (cores / 8).max(1)
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            header_read_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
            max_connections: 1024,
            listen_backlog: 1024,
            reserved_fds: 128,
            io_threads: 0,
        }
    }
}

/// Controller and arbiter settings.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ControlConfig {
    /// Fraction of each device never handed out, 0.0 ..= 0.5.
    pub reserve_frac: f64,
    /// What happens to capacity no set point needs.
    pub leftover: Leftover,
    /// What becomes of a deadline job whose deadline passes before it finishes.
    pub past_deadline: PastDeadline,
    /// Whether other processes' load on the CPU is taken off the CPU device's capacity (they
    /// take their cores from training first); on a GPU, NVML's foreign load always is.
    pub cpu_foreign_load: bool,
    /// JSON-lines log of every controller decision; `None` = off.
    pub decision_log: Option<PathBuf>,
}

/// Directories that the data and checkpoint paths jobs and services name must lie in.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PathsConfig {
    /// Directories jobs and services may read from, besides the state dir (always allowed).
    /// Relative entries are relative to the daemon's working directory. Default: the config
    /// file's directory, or the working directory for the embedded default.
    pub data_dirs: Vec<PathBuf>,
}

impl NodeConfig {
    /// Every directory data and checkpoints may be read from: `paths.data_dirs`, then the
    /// state dir.
    pub fn allowed_dirs(&self) -> Vec<PathBuf> {
        let mut dirs = self.paths.data_dirs.clone();
        dirs.push(self.state_dir.clone());
        dirs
    }
}

/// Where capacity left over after every set point is met goes: the controller's own type.
pub use crate::control::{Leftover, PastDeadline};

/// One inference service.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServiceConfig {
    /// Unique among services; `[A-Za-z0-9_.-]`, 1..=64 characters; appears in URLs.
    pub name: String,
    /// MLP layer widths, input first; `None` when the shape comes from the checkpoint.
    pub layers: Option<Vec<usize>>,
    /// Weights to load instead of initialising; its shape is checked against `layers` later.
    pub checkpoint: Option<PathBuf>,
    /// Initialisation seed when there is no checkpoint.
    pub seed: u64,
    /// Data spec to train on at start when there is no checkpoint.
    pub warmup_data: Option<String>,
    /// Capacity of the bounded request queue, 1..=1_000_000.
    pub max_queue: usize,
    /// Longest a request may wait for its answer, ms: >= `slo.p99_ms` and <= 3600000;
    /// by default 10 × `slo.p99_ms`. A request still queued at its timeout is dropped unrun
    /// and answered 504; a client may ask for less (v2 `parameters.timeout`), never more.
    pub timeout_ms: f64,
    /// The response-time objective.
    pub slo: SloConfig,
    /// Dynamic batching limits.
    pub batching: BatchingConfig,
    /// The number format of its matrix products; none for the device's default (f32).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub precision: Option<crate::device::Precision>,
    /// The devices it runs on, a replica on each; empty: one replica on the device with the
    /// least share held.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<ReplicaSpec>,
}

/// Where a service's replica runs, as `replicas` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReplicaSpec {
    /// `"gpu"`: the GPU with the least share held (none on a node without a GPU).
    Gpu,
    /// `"gpu:*"`: every GPU.
    AllGpus,
    /// `"cuda:N"`: GPU N.
    Cuda(u32),
    /// `"cpu"`: the CPU, or with `device.cpu_split` its part with the least share held.
    Cpu,
    /// `"cpu:*"`: every part of the CPU.
    AllCpus,
    /// `"cpu:N"`: part N of the CPU (`device.cpu_split`).
    CpuPart(u32),
}

impl ReplicaSpec {
    /// What `replicas` accepts, for error messages.
    pub const ACCEPTED: &'static str =
        "\"gpu\", \"gpu:*\", \"cuda:N\", \"cpu\", \"cpu:*\" or \"cpu:N\"";

    /// Parses one entry of `replicas`.
    pub fn parse(s: &str) -> Option<Self> {
        let index = |n: &str| {
            n.parse::<u32>()
                .ok()
                .filter(|_| n.bytes().all(|b| b.is_ascii_digit()))
        };
        Some(match s {
            "gpu" => ReplicaSpec::Gpu,
            "gpu:*" => ReplicaSpec::AllGpus,
            "cpu" => ReplicaSpec::Cpu,
            "cpu:*" => ReplicaSpec::AllCpus,
            _ => {
                if let Some(n) = s.strip_prefix("cuda:") {
                    ReplicaSpec::Cuda(index(n)?)
                } else if let Some(n) = s.strip_prefix("cpu:") {
                    ReplicaSpec::CpuPart(index(n)?)
                } else {
                    return None;
                }
            }
        })
    }
}

impl fmt::Display for ReplicaSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReplicaSpec::Gpu => f.write_str("gpu"),
            ReplicaSpec::AllGpus => f.write_str("gpu:*"),
            ReplicaSpec::Cuda(n) => write!(f, "cuda:{n}"),
            ReplicaSpec::Cpu => f.write_str("cpu"),
            ReplicaSpec::AllCpus => f.write_str("cpu:*"),
            ReplicaSpec::CpuPart(n) => write!(f, "cpu:{n}"),
        }
    }
}

/// Reads an entry as [`ReplicaSpec::parse`] does (scenario files and stored records; the
/// node config goes through its schema), naming what is accepted when it is none of them.
impl<'de> Deserialize<'de> for ReplicaSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ReplicaSpec::parse(&s).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "unknown replica device {s:?} (accepted: {})",
                ReplicaSpec::ACCEPTED
            ))
        })
    }
}

impl Serialize for ReplicaSpec {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A response-time service-level objective.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SloConfig {
    /// Target 99th-percentile latency in milliseconds, > 0 and <= 60000.
    pub p99_ms: f64,
    /// Window the quantile is measured over, >= the control period and <= 600000 ms.
    pub window_ms: u64,
}

/// Dynamic batching limits for one service.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BatchingConfig {
    /// Largest batch the batcher may form, 1..=4096.
    pub max_batch_size: usize,
    /// Longest a request waits for a batch to fill, >= 0 and < `slo.p99_ms`.
    pub max_queue_delay_ms: f64,
}

/// One training job.
///
/// `Deserialize` reads back what `Serialize` writes (a job's `spec` in the daemon's answers,
/// every default resolved); a job's spec from a user goes through the schema instead
/// ([`super::parse_job_json`]), which fills defaults and names every problem by its key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobConfig {
    /// Unique among jobs; same rules as service names.
    pub name: String,
    /// Data spec: a path, or `synthetic:KIND[:k=v,...]`.
    pub data: String,
    /// MLP layer widths, input first.
    pub layers: Vec<usize>,
    /// Optimiser.
    pub optimizer: OptimizerKind,
    /// Learning rate, > 0 and <= 10.
    pub lr: f64,
    /// SGD momentum, 0 ..< 1 (unused by Adam).
    pub momentum: f64,
    /// L2 weight decay, >= 0.
    pub weight_decay: f64,
    /// Mini-batch size, 1..=65536.
    pub batch_size: usize,
    /// Maximum number of epochs, 1..=100000.
    pub epochs: u32,
    /// Stop once validation accuracy reaches this; `None` runs every epoch.
    pub target_accuracy: Option<f64>,
    /// Fraction of the data held out for validation, 0 ..< 1.
    pub val_fraction: f64,
    /// Seed for initialisation, shuffling and the split.
    pub seed: u64,
    /// When the job must finish; `None` for a best-effort job.
    pub deadline: Option<Deadline>,
    /// Checkpoint period in optimiser steps, 1..=10_000_000.
    pub checkpoint_every_steps: u64,
    /// No deadline guarantee; always true when `deadline` is `None`.
    pub best_effort: bool,
    /// The GEMMs' number format; none for the device's default (f32).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<crate::device::Precision>,
}

/// Training optimiser.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// Adam (default learning rate 0.001).
    Adam,
    /// SGD with momentum (default learning rate 0.05).
    Sgd,
}

impl DeviceKind {
    /// The spelling used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceKind::Auto => "auto",
            DeviceKind::Cpu => "cpu",
            DeviceKind::Cuda => "cuda",
        }
    }
}

impl ShareMechanism {
    /// The spelling used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            ShareMechanism::Auto => "auto",
            ShareMechanism::Cta => "cta",
            ShareMechanism::Green => "green",
        }
    }
}

impl OptimizerKind {
    /// The spelling used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            OptimizerKind::Adam => "adam",
            OptimizerKind::Sgd => "sgd",
        }
    }

    /// The learning rate used when the config gives none.
    pub(crate) fn default_lr(self) -> f64 {
        match self {
            OptimizerKind::Adam => 0.001,
            OptimizerKind::Sgd => 0.05,
        }
    }
}

/// SGD momentum used when a job gives none.
pub(crate) const DEFAULT_MOMENTUM: f64 = schema::defaults::MOMENTUM;

/// Weight decay used when a job gives none.
pub(crate) const DEFAULT_WEIGHT_DECAY: f64 = schema::defaults::WEIGHT_DECAY;

macro_rules! display_as_str {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    )*};
}
display_as_str!(DeviceKind, ShareMechanism, OptimizerKind);

impl NodeConfig {
    /// The service called `name`, if any.
    pub fn service(&self, name: &str) -> Option<&ServiceConfig> {
        self.services.iter().find(|s| s.name == name)
    }

    /// The job called `name`, if any.
    pub fn job(&self, name: &str) -> Option<&JobConfig> {
        self.jobs.iter().find(|j| j.name == name)
    }
}

/// The default of `checkpoint_error_timeout_ms`: ten minutes.
pub(crate) const DEFAULT_CHECKPOINT_ERROR_TIMEOUT_MS: u64 = 600_000;
