//! `setpoint serve`: loads the configuration, binds the listener with its connection limits,
//! and runs the daemon ([`crate::daemon::run`], the one start-and-stop function the tests'
//! daemons run too) until Ctrl-C or SIGTERM.

use std::sync::Arc;

use anyhow::{Context, anyhow};

use super::input_error;
use crate::api::server::{self, Limits};
use crate::cli::ServeArgs;
use crate::config::{HttpConfig, NodeConfig};
use crate::daemon;
use crate::node::systemd::Notifier;
use crate::node::{ConfigSource, Node};

/// Runs `setpoint serve` until a stop signal, then shuts down in order.
pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    // The environment may carry the token, so it need not sit in a config file.
    let env_token = std::env::var("SETPOINT_AUTH_TOKEN")
        .ok()
        .filter(|t| !t.is_empty());
    let source = ConfigSource {
        path: args.config,
        listen: args.listen,
        grpc_listen: args.grpc_listen.map(|g| g.0),
        state_dir: args.state_dir,
        data_dirs: args.data_dirs,
        env_token,
    };
    let config = source.load().map_err(|e| match e {
        crate::node::reload::SourceError::Config(c) => anyhow!(c),
        crate::node::reload::SourceError::Setting(m) => input_error(m),
    })?;
    if cfg!(not(feature = "kubernetes")) && config.kubernetes.is_some() {
        return Err(input_error(
            "[kubernetes]: this setpoint was built without Kubernetes support; build it with \
             `cargo build --release --features kubernetes`, or remove the section"
                .to_string(),
        ));
    }
    let io_threads = config
        .http
        .io_thread_count(crate::device::cpu::available_cores());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(io_threads)
        .enable_all()
        .thread_name("setpoint-http")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve_task(config, source))
}

/// Binds the listener and runs the daemon ([`crate::daemon::run`]) until Ctrl-C or SIGTERM.
async fn serve_task(config: NodeConfig, source: ConfigSource) -> anyhow::Result<()> {
    let notifier = Arc::new(Notifier::from_env());
    // Before anything slow: SIGHUP's default action would end the process.
    let hangups = daemon::hangup_stream();
    let listen = config.listen;
    let http = config.http.clone();
    let listener = server::bind(listen, http.listen_backlog)
        .with_context(|| format!("cannot listen on {listen}"))?;
    let grpc = match config.grpc_listen {
        Some(addr) => Some(server::bind(addr, http.listen_backlog).with_context(|| {
            format!("cannot listen on {addr} (grpc_listen; \"\" turns gRPC off)")
        })?),
        None => None,
    };
    let limits = connection_limits(&http)?;
    let node = Node::new(config).map_err(|e| anyhow!(e))?;
    node.set_config_source(source);
    let options = daemon::Options {
        limits,
        stop: daemon::shutdown_signal(),
        hangups,
        notifier,
        grpc,
    };
    Ok(daemon::run(node, listener, options).await?)
}

/// The listener's limits: the configured cap, lowered to what the descriptor limit leaves
/// after `http.reserved_fds` (the soft limit is raised to the hard one first).
fn connection_limits(http: &HttpConfig) -> anyhow::Result<Limits> {
    use crate::util::fds;
    let fds = fds::raise_limit();
    let reserved = http.reserved_fds + server::FD_OVERHEAD;
    let Some(budget) = fds::connection_budget(fds, http.max_connections, reserved) else {
        return Err(input_error(format!(
            "no file descriptor is left for connections: the open-file limit is {}, {} are \
             open, http.reserved_fds keeps {} and refusals take {}; raise the limit \
             (LimitNOFILE= in the unit, ulimit -n) or lower http.reserved_fds",
            fds.limit.unwrap_or(0),
            fds.open.unwrap_or(0),
            http.reserved_fds,
            server::FD_OVERHEAD
        )));
    };
    if budget.lowered {
        tracing::warn!(
            "http.max_connections lowered from {} to {}: the open-file limit is {}, {} are \
             open, http.reserved_fds keeps {} for state and checkpoint files and refusals \
             take {}",
            http.max_connections,
            budget.max_connections,
            fds.limit.unwrap_or(0),
            fds.open.unwrap_or(0),
            http.reserved_fds,
            server::FD_OVERHEAD
        );
    }
    Ok(Limits::new(http, budget.max_connections))
}
