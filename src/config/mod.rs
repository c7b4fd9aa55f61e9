//! Node configuration: the TOML file an operator writes (`/etc/setpoint/setpoint.toml`),
//! parsed, validated and printed back as understood.
//!
//! Validation does not stop at the first problem: the file is parsed into a [`toml::Table`]
//! and walked with extraction helpers that record an issue and carry on, so one run of
//! `setpoint check-config` reports every type error, range error, unknown key and cross-field
//! problem, each with its key path (`services[1].slo.p99_ms: must be > 0, got -5`).

mod deadline;
pub mod paths;
mod schema;
mod summary;
mod walk;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Serialize, Serializer};

pub use deadline::{Deadline, DeadlineError, TimestampError, format_rfc3339, parse_rfc3339};

/// The embedded default configuration: one inference service and one demonstration job.
pub const DEFAULT_CONFIG: &str = include_str!("../../configs/default.toml");

/// Everything the daemon needs to know about this node, every default resolved.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeConfig {
    /// Address the HTTP API listens on.
    pub listen: SocketAddr,
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
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            header_read_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
            max_connections: 1024,
            listen_backlog: 1024,
            reserved_fds: 128,
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
pub use crate::control::Leftover;

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
#[derive(Debug, Clone, PartialEq, Serialize)]
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
}

/// Training optimiser.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
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
    pub fn default_lr(self) -> f64 {
        match self {
            OptimizerKind::Adam => 0.001,
            OptimizerKind::Sgd => 0.05,
        }
    }
}

/// SGD momentum used when a job gives none.
pub const DEFAULT_MOMENTUM: f64 = schema::defaults::MOMENTUM;

/// Weight decay used when a job gives none.
pub const DEFAULT_WEIGHT_DECAY: f64 = schema::defaults::WEIGHT_DECAY;

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
pub const DEFAULT_CHECKPOINT_ERROR_TIMEOUT_MS: u64 = 600_000;

/// One problem found in a config, located by its key path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConfigIssue {
    /// Key path such as `services[1].slo.p99_ms`; empty for the document as a whole.
    #[serde(rename = "key")]
    pub path: String,
    /// What is wrong, lowercase, no trailing period.
    pub message: String,
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The text is not valid TOML; reported once, at the first error.
    #[error(
        "{}toml syntax error at line {line}, column {column}: {message}{}",
        prefix(path.as_deref()),
        excerpt(snippet, *column)
    )]
    Syntax {
        /// The file, when loaded from one.
        path: Option<PathBuf>,
        /// 1-based line of the error.
        line: usize,
        /// 1-based column (in characters) of the error.
        column: usize,
        /// The parser's description.
        message: String,
        /// The offending line, for display.
        snippet: String,
    },
    /// Valid TOML that does not describe a valid node; every issue found.
    #[error("{}", list_issues(path.as_deref(), errors))]
    Invalid {
        /// The file, when loaded from one.
        path: Option<PathBuf>,
        /// Every issue, in document order.
        errors: Vec<ConfigIssue>,
    },
}

impl ConfigError {
    /// The validation issues, empty for I/O and syntax errors.
    pub fn issues(&self) -> &[ConfigIssue] {
        match self {
            ConfigError::Invalid { errors, .. } => errors,
            _ => &[],
        }
    }

    fn with_path(self, p: &Path) -> Self {
        match self {
            ConfigError::Syntax {
                line,
                column,
                message,
                snippet,
                ..
            } => ConfigError::Syntax {
                path: Some(p.to_path_buf()),
                line,
                column,
                message,
                snippet,
            },
            ConfigError::Invalid { errors, .. } => ConfigError::Invalid {
                path: Some(p.to_path_buf()),
                errors,
            },
            io @ ConfigError::Io { .. } => io,
        }
    }
}

fn prefix(path: Option<&Path>) -> String {
    path.map(|p| format!("{}: ", p.display()))
        .unwrap_or_default()
}

fn excerpt(snippet: &str, column: usize) -> String {
    if snippet.is_empty() {
        return String::new();
    }
    format!(
        "\n  | {snippet}\n  | {}^",
        " ".repeat(column.saturating_sub(1))
    )
}

fn list_issues(path: Option<&Path>, errors: &[ConfigIssue]) -> String {
    let p = prefix(path);
    let lines: Vec<String> = errors.iter().map(|e| format!("{p}{e}")).collect();
    lines.join("\n")
}

/// Parses and validates a config, collecting every problem rather than stopping at the first.
pub fn parse(text: &str) -> Result<NodeConfig, ConfigError> {
    parse_with_default_dir(text, None)
}

/// Parses with `paths.data_dirs` defaulting to `dir` (the working directory when `None`).
fn parse_with_default_dir(text: &str, dir: Option<PathBuf>) -> Result<NodeConfig, ConfigError> {
    let table: toml::Table = text.parse().map_err(|e| syntax_error(text, &e))?;
    let mut w = walk::Walker::default();
    let default_dir = dir.unwrap_or_else(|| PathBuf::from("."));
    let cfg = schema::node(&mut w, &table, default_dir);
    if w.issues.is_empty() {
        Ok(cfg)
    } else {
        Err(ConfigError::Invalid {
            path: None,
            errors: w.issues,
        })
    }
}

/// Reads and parses the config at `path`; every error message names the file.
pub fn load(path: &Path) -> Result<NodeConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_with_default_dir(&text, path.parent().map(config_dir)).map_err(|e| e.with_path(path))
}

/// Checks that every data file and checkpoint the config names that exists lies inside the
/// allowed directories (`paths.data_dirs` and the state dir), links followed; `file` is the
/// config file, for messages. Separate from [`load`] because the command line can add
/// directories and move the state dir after the file is read.
pub fn check_paths(cfg: &NodeConfig, file: Option<&Path>) -> Result<(), ConfigError> {
    let issues = paths::config_path_issues(cfg);
    if issues.is_empty() {
        Ok(())
    } else {
        Err(ConfigError::Invalid {
            path: file.map(Path::to_path_buf),
            errors: issues,
        })
    }
}

/// Everything `setpoint check-config` finds in a config, in one pass.
#[derive(Debug, Clone, Serialize)]
pub struct ConfigCheck {
    /// The file, or `(embedded default)`.
    pub file: String,
    /// No errors.
    pub valid: bool,
    /// Every error, with its key path: syntax, values, and files outside the allowed
    /// directories.
    pub errors: Vec<ConfigIssue>,
    /// Files inside the allowed directories that do not exist (yet).
    pub warnings: Vec<ConfigIssue>,
    /// The configuration as understood, defaults included, when it is valid.
    pub config: Option<NodeConfig>,
}

/// Checks the config at `path` (the embedded default when `None`) and reports every error at
/// once: the values' and the paths' together, where [`load`] and [`check_paths`] stop at the
/// first kind that fails.
pub fn check_file(path: Option<&Path>) -> ConfigCheck {
    let file = path.map_or("(embedded default)".into(), |p| p.display().to_string());
    let whole = |message: String| ConfigCheck {
        file: file.clone(),
        valid: false,
        errors: vec![ConfigIssue {
            path: String::new(),
            message,
        }],
        warnings: Vec::new(),
        config: None,
    };
    let text = match path {
        None => DEFAULT_CONFIG.to_string(),
        Some(p) => match std::fs::read_to_string(p) {
            Ok(t) => t,
            Err(source) => return whole(format!("cannot read it: {source}")),
        },
    };
    let table: toml::Table = match text.parse() {
        Ok(t) => t,
        Err(e) => return whole(syntax_error(&text, &e).to_string()),
    };
    let mut w = walk::Walker::default();
    let default_dir = path
        .and_then(Path::parent)
        .map_or_else(|| PathBuf::from("."), config_dir);
    let cfg = schema::node(&mut w, &table, default_dir);
    let (outside, missing) = paths::config_files(&cfg);
    let mut errors = w.issues;
    errors.extend(outside);
    let valid = errors.is_empty();
    ConfigCheck {
        file,
        valid,
        errors,
        warnings: missing,
        config: valid.then_some(cfg),
    }
}

/// The directory a config file is in, as a path that names it from any working directory.
fn config_dir(parent: &Path) -> PathBuf {
    let dir = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf())
}

/// The embedded default configuration, parsed.
pub fn default_config() -> NodeConfig {
    match parse(DEFAULT_CONFIG) {
        Ok(c) => c,
        // The embedded file is checked by the tests; reaching this is a build defect.
        Err(e) => panic!("embedded default config is invalid: {e}"),
    }
}

/// Converts a JSON document (an HTTP request body) into the TOML value the config walker
/// reads, so the jobs and services APIs validate exactly like the config file. JSON `null`
/// means "absent". Returns the issue for a value TOML cannot hold.
fn json_to_toml(v: &serde_json::Value, path: &str) -> Result<Option<toml::Value>, ConfigIssue> {
    use serde_json::Value as J;
    Ok(Some(match v {
        J::Null => return Ok(None),
        J::Bool(b) => toml::Value::Boolean(*b),
        J::Number(n) => match n.as_i64() {
            Some(i) => toml::Value::Integer(i),
            None => match n.as_f64() {
                Some(f) if n.is_f64() => toml::Value::Float(f),
                _ => {
                    return Err(ConfigIssue {
                        path: path.to_string(),
                        message: format!("number {n} is out of range"),
                    });
                }
            },
        },
        J::String(s) => toml::Value::String(s.clone()),
        J::Array(items) => {
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                match json_to_toml(item, &format!("{path}[{i}]"))? {
                    Some(v) => out.push(v),
                    None => {
                        return Err(ConfigIssue {
                            path: format!("{path}[{i}]"),
                            message: "null is not allowed in a list".into(),
                        });
                    }
                }
            }
            toml::Value::Array(out)
        }
        J::Object(map) => {
            let mut t = toml::Table::new();
            for (k, item) in map {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                if let Some(v) = json_to_toml(item, &p)? {
                    t.insert(k.clone(), v);
                }
            }
            toml::Value::Table(t)
        }
    }))
}

fn json_table(v: &serde_json::Value) -> Result<toml::Table, Vec<ConfigIssue>> {
    match json_to_toml(v, "") {
        Ok(Some(toml::Value::Table(t))) => Ok(t),
        Ok(_) => Err(vec![ConfigIssue {
            path: String::new(),
            message: "expected a JSON object".into(),
        }]),
        Err(issue) => Err(vec![issue]),
    }
}

/// Validates a training job given as JSON (the jobs API), with the same keys, defaults and
/// messages as a `[[jobs]]` table of the config file. The API also accepts
/// `"class": "deadline" | "best-effort"` in place of `best_effort`.
pub fn parse_job_json(v: &serde_json::Value) -> Result<JobConfig, Vec<ConfigIssue>> {
    let mut table = json_table(v)?;
    if let Some(class) = table.remove("class") {
        let best_effort = match class.as_str() {
            Some("deadline") => false,
            Some("best-effort") => true,
            _ => {
                return Err(vec![ConfigIssue {
                    path: "class".into(),
                    message: format!("expected \"deadline\" or \"best-effort\", got {}", class),
                }]);
            }
        };
        if table.contains_key("best_effort") {
            return Err(vec![ConfigIssue {
                path: "class".into(),
                message: "give class or best_effort, not both".into(),
            }]);
        }
        table.insert("best_effort".into(), toml::Value::Boolean(best_effort));
    }
    let mut w = walk::Walker::default();
    let job = schema::job(&mut w, &walk::Tbl::root(&table));
    if w.issues.is_empty() {
        Ok(job)
    } else {
        Err(w.issues)
    }
}

/// Validates an inference service given as JSON (the services API), with the same keys,
/// defaults and messages as a `[[services]]` table of the config file.
pub fn parse_service_json(
    v: &serde_json::Value,
    control_period_ms: u64,
) -> Result<ServiceConfig, Vec<ConfigIssue>> {
    let table = json_table(v)?;
    let mut w = walk::Walker::default();
    let svc = schema::service(&mut w, &walk::Tbl::root(&table), Some(control_period_ms));
    if w.issues.is_empty() {
        Ok(svc)
    } else {
        Err(w.issues)
    }
}

fn syntax_error(text: &str, e: &toml::de::Error) -> ConfigError {
    let at = e.span().map_or(0, |s| s.start.min(text.len()));
    let at = (0..=at)
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0);
    let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    let line = text[..at].matches('\n').count() + 1;
    let column = text[line_start..at].chars().count() + 1;
    let line_end = text[line_start..]
        .find('\n')
        .map_or(text.len(), |i| line_start + i);
    ConfigError::Syntax {
        path: None,
        line,
        column,
        message: e.message().trim().to_owned(),
        snippet: text[line_start..line_end].trim_end_matches('\r').to_owned(),
    }
}

#[cfg(test)]
mod tests;
