//! Where a reload reads the configuration: the file, the overrides given at start, and the
//! rule that a token is required off loopback.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::config::{ConfigError, NodeConfig};

/// Where the daemon's configuration comes from, and what overrides it.
#[derive(Debug, Clone, Default)]
pub struct ConfigSource {
    /// The file given with `--config`; `None` for the embedded default.
    pub path: Option<PathBuf>,
    /// `--listen`, over the file's `listen`.
    pub listen: Option<SocketAddr>,
    /// `--grpc-listen`, over the file's `grpc_listen` (`Some(None)`: gRPC off).
    pub grpc_listen: Option<Option<SocketAddr>>,
    /// `--state-dir`, over the file's `state_dir`.
    pub state_dir: Option<PathBuf>,
    /// `--data-dir`s, added to the file's `paths.data_dirs`.
    pub data_dirs: Vec<PathBuf>,
    /// `SETPOINT_AUTH_TOKEN` as read at start; used when the file sets no `auth_token`.
    pub env_token: Option<String>,
}

/// Why a configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The file cannot be read, or is not a valid configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The settings together are refused (e.g. no token beyond loopback).
    #[error("{0}")]
    Setting(String),
}

impl SourceError {
    /// Every problem, one per entry, each naming its key.
    pub fn messages(&self) -> Vec<String> {
        match self {
            SourceError::Config(e) if !e.issues().is_empty() => {
                let file = match e {
                    ConfigError::Invalid { path: Some(p), .. } => format!("{}: ", p.display()),
                    _ => String::new(),
                };
                e.issues().iter().map(|i| format!("{file}{i}")).collect()
            }
            other => vec![other.to_string()],
        }
    }
}

impl ConfigSource {
    /// What the source names: the file, or `(embedded default)`.
    pub fn describe(&self) -> String {
        match &self.path {
            Some(p) => p.display().to_string(),
            None => "(embedded default)".into(),
        }
    }

    /// Reads and validates the configuration, with the overrides applied; the same at start
    /// and at every reload.
    pub fn load(&self) -> Result<NodeConfig, SourceError> {
        let mut config = match &self.path {
            Some(path) => crate::config::load(path)?,
            None => crate::config::default_config(),
        };
        if let Some(listen) = self.listen {
            config.listen = listen;
        }
        if let Some(grpc) = self.grpc_listen {
            config.grpc_listen = grpc;
        }
        if let Some(dir) = &self.state_dir {
            config.state_dir = dir.clone();
        }
        config
            .paths
            .data_dirs
            .extend(self.data_dirs.iter().cloned());
        crate::config::check_paths(&config, self.path.as_deref())?;
        if config.auth_token.is_none()
            && let Some(token) = &self.env_token
        {
            // The token goes into an HTTP header; the message never echoes it.
            if !token.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(SourceError::Setting(
                    "SETPOINT_AUTH_TOKEN: must be printable ascii without spaces or control \
                     characters"
                        .into(),
                ));
            }
            config.auth_token = Some(token.clone());
        }
        check_token_rule(&config)?;
        Ok(config)
    }
}

pub(super) fn check_token_rule(config: &NodeConfig) -> Result<(), SourceError> {
    if !config.listen.ip().is_loopback() && config.auth_token.is_none() {
        return Err(SourceError::Setting(format!(
            "listen = {}: beyond loopback the API needs a bearer token; set auth_token in the \
             config or SETPOINT_AUTH_TOKEN, or listen on 127.0.0.1",
            config.listen
        )));
    }
    Ok(())
}
