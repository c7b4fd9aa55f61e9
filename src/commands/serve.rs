//! `setpoint serve`: the daemon. Loads the configuration, binds the listener, starts the node
//! and serves its HTTP API through [`crate::api::server::serve`] (the one start-and-drain
//! function the tests' daemons use too), reloads on SIGHUP, and on Ctrl-C or SIGTERM drains
//! the requests in flight, then checkpoints jobs and drains services.

use std::sync::Arc;

use anyhow::{Context, anyhow};

use super::input_error;
use crate::api::server::{self, ConnectionStats, Limits};
use crate::cli::ServeArgs;
use crate::config::{HttpConfig, NodeConfig};
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
        state_dir: args.state_dir,
        data_dirs: args.data_dirs,
        env_token,
    };
    let config = source.load().map_err(|e| match e {
        crate::node::reload::SourceError::Config(c) => anyhow!(c),
        crate::node::reload::SourceError::Setting(m) => input_error(m),
    })?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("setpoint-http")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve_task(config, source))
}

/// The daemon's life on the async runtime: bind, start the node, serve until a stop signal,
/// drain, shut the node down.
async fn serve_task(config: NodeConfig, source: ConfigSource) -> anyhow::Result<()> {
    let notifier = Arc::new(Notifier::from_env());
    // Before anything slow: SIGHUP's default action would end the process.
    let hangups = hangup_stream();
    let listen = config.listen;
    let http = config.http.clone();
    let listener = server::bind(listen, http.listen_backlog)
        .with_context(|| format!("cannot listen on {listen}"))?;
    let limits = connection_limits(&http)?;
    let node = Node::new(config).map_err(|e| anyhow!(e))?;
    node.set_config_source(source);
    node.set_notifier(notifier.clone());
    tracing::info!(
        version = crate::VERSION,
        listen = %listener.local_addr().unwrap_or(listen),
        state_dir = %node.state_dir().display(),
        workers = node.cores(),
        max_connections = limits.max_connections,
        systemd = notifier.is_enabled(),
        "setpoint serving"
    );
    node.start();
    let connections = Arc::new(ConnectionStats::default());
    let app = crate::api::http::router(node.clone(), connections.clone());
    let stopping = notifier.clone();
    let drain_node = node.clone();
    let serving = tokio::spawn(server::serve(
        listener,
        app,
        limits,
        connections,
        async move {
            shutdown_signal().await;
            stopping.stopping();
        },
        // After the stop signal the requests in flight are answered, for drain_timeout_ms at
        // most (read when the signal comes: a reload may have changed it); those still
        // running then are failed by closing their connections.
        move || std::time::Duration::from_millis(drain_node.config().drain_timeout_ms),
    ));
    if let Some(hangups) = hangups {
        tokio::spawn(reload_on_hangup_task(hangups, node.clone()));
    }
    // The socket is bound and the server task runs: connections are accepted from here on.
    notifier.ready(&node.status_line());
    let drained = serving.await.context("http server task failed")?;
    if drained.requests_cut > 0 {
        tracing::warn!(
            "{} requests still in flight {} ms after the stop signal (drain_timeout_ms): \
             closed their connections",
            drained.requests_cut,
            node.config().drain_timeout_ms
        );
    }
    tracing::info!("stopping: checkpointing jobs and draining services");
    tokio::task::spawn_blocking(move || node.shutdown())
        .await
        .context("shutdown failed")?;
    tracing::info!("stopped");
    Ok(())
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

#[cfg(unix)]
type Hangups = tokio::signal::unix::Signal;
#[cfg(not(unix))]
type Hangups = ();

/// SIGHUP as a stream, installed before anything slow so that a hangup never ends the
/// process; `None` (logged) when it cannot be listened for.
fn hangup_stream() -> Option<Hangups> {
    #[cfg(unix)]
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::error!("cannot listen for SIGHUP: {e}; reload with POST /v1/reload");
            None
        }
    }
    #[cfg(not(unix))]
    None
}

/// Reloads the configuration on every SIGHUP, one reload at a time; the outcome is logged.
#[cfg(unix)]
async fn reload_on_hangup_task(mut hangups: Hangups, node: Arc<Node>) {
    while hangups.recv().await.is_some() {
        tracing::info!("received SIGHUP");
        let node = node.clone();
        // The reload reads files and may load data for new jobs: off the async threads.
        if let Err(e) = tokio::task::spawn_blocking(move || node.reload()).await {
            tracing::error!("the reload failed: {e}");
        }
    }
}

#[cfg(not(unix))]
async fn reload_on_hangup_task(_: Hangups, _: Arc<Node>) {}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!("cannot listen for Ctrl-C: {e}");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!("cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("received Ctrl-C"),
        _ = term => tracing::info!("received SIGTERM"),
    }
}
