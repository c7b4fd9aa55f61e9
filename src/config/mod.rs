//! Node configuration: the TOML file an operator writes (`/etc/setpoint/setpoint.toml`),
//! parsed, validated and printed back as understood.
//!
//! Validation does not stop at the first problem: the file is parsed into a [`toml::Table`]
//! and walked with extraction helpers that record an issue and carry on, so one run of
//! `setpoint check-config` reports every type error, range error, unknown key and cross-field
//! problem, each with its key path (`services[1].slo.p99_ms: must be > 0, got -5`).

mod deadline;
mod kubernetes;
pub mod paths;
mod schema;
mod summary;
mod types;
mod walk;

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;

pub(crate) use deadline::civil_from_days;
pub use deadline::{Deadline, DeadlineError, TimestampError, format_rfc3339, parse_rfc3339};
pub use kubernetes::{CapacityMode, KubernetesConfig, is_dns_subdomain};
pub use types::*;

/// The embedded default configuration: one inference service and one demonstration job.
pub const DEFAULT_CONFIG: &str = include_str!("../../configs/default.toml");

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
pub(crate) struct ConfigCheck {
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
pub(crate) fn check_file(path: Option<&Path>) -> ConfigCheck {
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
pub(crate) fn parse_service_json(
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
