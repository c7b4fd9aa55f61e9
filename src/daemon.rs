//! The daemon's life from a bound listener to a stopped node, as one function the binary and
//! the tests both call: start the node, serve its HTTP API, reload on SIGHUP where the caller
//! listens for it, and at the stop signal drain the requests in flight (for the node's
//! `drain_timeout_ms` at most), then checkpoint jobs and drain services.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::api::server::{self, ConnectionStats, Limits};
use crate::node::Node;
use crate::node::heartbeat::{self, Heartbeat};
use crate::node::systemd::Notifier;

/// SIGHUP as a stream of hangups, where the platform has it.
#[cfg(unix)]
pub(crate) type Hangups = tokio::signal::unix::Signal;
/// SIGHUP as a stream of hangups, where the platform has it.
#[cfg(not(unix))]
pub(crate) type Hangups = ();

/// What stopped the daemon short of a clean shutdown.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The HTTP server task panicked or was cancelled.
    #[error("http server task failed: {0}")]
    Server(tokio::task::JoinError),
    /// The node's shutdown (checkpoints, service drains) panicked.
    #[error("shutdown failed: {0}")]
    Shutdown(tokio::task::JoinError),
    /// The Kubernetes driver could not start (`[kubernetes]`).
    #[error("kubernetes: {0}")]
    Kubernetes(String),
}

/// How the daemon is run besides its node and listener.
pub struct Options<S> {
    /// The listener's connection cap and timeouts.
    pub limits: Limits,
    /// Resolves when the daemon is to stop (a signal, a test's channel).
    pub stop: S,
    /// SIGHUP, when the caller listens for it: every hangup reloads the configuration.
    pub hangups: Option<Hangups>,
    /// systemd notifications (`READY=1`, `STOPPING=1`); disabled outside systemd.
    pub notifier: Arc<Notifier>,
    /// The gRPC API's listener, when `grpc_listen` is set.
    pub grpc: Option<TcpListener>,
}

/// Runs `node` behind `listener` until `options.stop` resolves, then drains and shuts the node
/// down. Returns once the node is stopped.
pub async fn run<S>(
    node: Arc<Node>,
    listener: TcpListener,
    options: Options<S>,
) -> Result<(), DaemonError>
where
    S: Future<Output = ()> + Send + 'static,
{
    let Options {
        limits,
        stop,
        hangups,
        notifier,
        grpc,
    } = options;
    node.set_notifier(notifier.clone());
    if let Some(interval) = notifier.watchdog_interval() {
        let beat = Heartbeat::new();
        node.set_api_heartbeat(beat.clone());
        tokio::spawn(beat.run(heartbeat::period(interval)));
    }
    announce(&node, &listener, grpc.as_ref(), limits, &notifier);
    #[cfg(feature = "kubernetes")]
    if let (Some(k), Ok(addr)) = (node.config().kubernetes.clone(), listener.local_addr()) {
        crate::kube::start(node.clone(), k, addr)
            .await
            .map_err(DaemonError::Kubernetes)?;
    }
    node.start();
    let serving = spawn_servers(&node, listener, grpc, limits, stop, &notifier);
    if let Some(hangups) = hangups {
        tokio::spawn(reload_on_hangup_task(hangups, node.clone()));
    }
    // The socket is bound and the server task runs: connections are accepted from here on.
    notifier.ready(&node.status_line());
    await_drained(&node, serving).await?;
    tracing::info!("stopping: checkpointing jobs and draining services");
    tokio::task::spawn_blocking(move || node.shutdown())
        .await
        .map_err(DaemonError::Shutdown)?;
    tracing::info!("stopped");
    Ok(())
}

/// Logs the start-up line and records the listeners' addresses on the node.
fn announce(
    node: &Node,
    listener: &TcpListener,
    grpc: Option<&TcpListener>,
    limits: Limits,
    notifier: &Notifier,
) {
    tracing::info!(
        version = crate::VERSION,
        listen = %listener.local_addr().map_or_else(|e| e.to_string(), |a| a.to_string()),
        grpc_listen = %grpc.and_then(|l| l.local_addr().ok()).map_or_else(|| "off".to_string(), |a| a.to_string()),
        state_dir = %node.state_dir().display(),
        workers = node.workers_of(crate::node::DeviceId::FIRST),
        max_connections = limits.max_connections,
        systemd = notifier.is_enabled(),
        "setpoint serving"
    );
    node.set_listeners(crate::node::Listeners {
        http: listener.local_addr().ok().map(|a| a.to_string()),
        grpc: grpc
            .and_then(|l| l.local_addr().ok())
            .map(|a| a.to_string()),
    });
}

/// The server tasks of a running daemon.
struct Serving {
    /// The HTTP API's server task.
    http: tokio::task::JoinHandle<server::Drained>,
    /// The gRPC API's server task, when `grpc_listen` is set.
    grpc: Option<tokio::task::JoinHandle<crate::api::grpc::GrpcDrained>>,
}

/// Spawns the gRPC server (when it has a listener), then the HTTP server; both stop on `stop`,
/// which also tells systemd the daemon is stopping.
fn spawn_servers<S>(
    node: &Arc<Node>,
    listener: TcpListener,
    grpc: Option<TcpListener>,
    limits: Limits,
    stop: S,
    notifier: &Arc<Notifier>,
) -> Serving
where
    S: Future<Output = ()> + Send + 'static,
{
    let connections = Arc::new(ConnectionStats::default());
    let grpc_connections = Arc::new(ConnectionStats::default());
    let app = crate::api::http::router(node.clone(), connections.clone(), grpc_connections.clone());
    let stopping = notifier.clone();
    let drain_node = node.clone();
    // One stop signal for both listeners.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let grpc_serving = grpc.map(|l| {
        let drain_node = node.clone();
        tokio::spawn(crate::api::grpc::serve(
            l,
            node.clone(),
            limits,
            grpc_connections,
            stop_rx.clone(),
            move || Duration::from_millis(drain_node.config().drain_timeout_ms),
        ))
    });
    let serving = tokio::spawn(server::serve(
        listener,
        app,
        limits,
        connections,
        async move {
            stop.await;
            stopping.stopping();
            let _ = stop_tx.send(true);
        },
        // After the stop signal the requests in flight are answered, for drain_timeout_ms at
        // most (read when the signal comes: a reload may have changed it); those still
        // running then are failed by closing their connections.
        move || Duration::from_millis(drain_node.config().drain_timeout_ms),
    ));
    Serving {
        http: serving,
        grpc: grpc_serving,
    }
}

/// Waits for the HTTP server, then the gRPC server, to finish draining, and warns about the
/// connections each had to cut.
async fn await_drained(node: &Node, serving: Serving) -> Result<(), DaemonError> {
    let drained = serving.http.await.map_err(DaemonError::Server)?;
    if let Some(grpc) = serving.grpc {
        let cut = grpc.await.map_err(DaemonError::Server)?.connections_cut;
        if cut > 0 {
            tracing::warn!(
                "{cut} gRPC connections still busy {} ms after the stop signal \
                 (drain_timeout_ms): closed them",
                node.config().drain_timeout_ms
            );
        }
    }
    if drained.requests_cut > 0 {
        tracing::warn!(
            "{} requests still in flight {} ms after the stop signal (drain_timeout_ms): \
             closed their connections",
            drained.requests_cut,
            node.config().drain_timeout_ms
        );
    }
    Ok(())
}

/// SIGHUP as a stream, to be installed before anything slow so that a hangup never ends the
/// process; `None` (logged) when it cannot be listened for.
pub(crate) fn hangup_stream() -> Option<Hangups> {
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

/// Resolves on Ctrl-C (SIGINT) or SIGTERM. Both are listened for from the call on (inside a
/// runtime), so one that comes right after `READY=1` stops the daemon cleanly instead of
/// killing it.
pub(crate) fn shutdown_signal() -> impl Future<Output = ()> {
    #[cfg(unix)]
    let (int, term) = {
        use tokio::signal::unix::{SignalKind, signal};
        (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        )
    };
    async move {
        #[cfg(unix)]
        let (ctrl_c, term) = (wait_for(int, "Ctrl-C"), wait_for(term, "SIGTERM"));
        #[cfg(not(unix))]
        let ctrl_c = async {
            if let Err(e) = tokio::signal::ctrl_c().await {
                tracing::error!("cannot listen for Ctrl-C: {e}");
                std::future::pending::<()>().await;
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            _ = ctrl_c => tracing::info!("received Ctrl-C"),
            _ = term => tracing::info!("received SIGTERM"),
        }
    }
}

/// Waits for the signal `sig` was registered for; never resolves when it could not be.
#[cfg(unix)]
async fn wait_for(sig: std::io::Result<tokio::signal::unix::Signal>, name: &str) {
    match sig {
        Ok(mut s) => {
            s.recv().await;
        }
        Err(e) => {
            tracing::error!("cannot listen for {name}: {e}");
            std::future::pending::<()>().await;
        }
    }
}
