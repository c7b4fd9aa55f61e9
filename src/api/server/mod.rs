//! The HTTP listener: accepts connections up to a cap, closes those that idle or send their
//! request head too slowly, survives running out of descriptors, and on stop drains the
//! requests in flight without waiting for connections that have none.
//!
//! Each connection runs in one task that polls hyper's connection and watches its timers, so
//! whether a request is in flight and whether an answer still waits to be written are known
//! exactly between two polls: a connection is only ever closed with nothing owed to its
//! client (the drain deadline aside).

mod connection;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

pub use connection::Arrival;
use connection::connection;

use crate::config::HttpConfig;

/// How long connections may wait and how many may be open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// From opening (or the first byte of a kept-alive connection's next request) to the end
    /// of the request head.
    pub header_read_timeout: Duration,
    /// From an answer's end to the next request's first byte.
    pub idle_timeout: Duration,
    /// Connections open at once.
    pub max_connections: usize,
}

impl Limits {
    /// The configured timeouts, with the connection cap in force (see
    /// [`crate::util::fds::connection_budget`]).
    pub fn new(http: &HttpConfig, max_connections: usize) -> Self {
        Limits {
            header_read_timeout: Duration::from_millis(http.header_read_timeout_ms),
            idle_timeout: Duration::from_millis(http.idle_timeout_ms),
            max_connections,
        }
    }
}

/// Counters of the listener, for `/metrics`.
#[derive(Debug, Default)]
pub struct ConnectionStats {
    /// Connections open now.
    pub open: AtomicU64,
    /// The cap in force.
    pub limit: AtomicU64,
    /// Connections accepted and served.
    pub accepted: AtomicU64,
    /// Connections answered 503 and closed because the cap was reached.
    pub refused: AtomicU64,
    /// Connections closed after `idle_timeout_ms` without a request.
    pub idle_closed: AtomicU64,
    /// Connections closed for not sending a request head within `header_read_timeout_ms`.
    pub header_timeouts: AtomicU64,
    /// `accept` calls that failed; those for want of descriptors are retried after a pause.
    pub accept_errors: AtomicU64,
    /// Requests being handled or answered now, over all connections.
    pub requests_in_flight: AtomicU64,
    /// Refused connections being answered now.
    refusing: AtomicU64,
}

/// How a stop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    /// Requests still in flight when the drain timeout passed; their connections were
    /// closed. 0 when every request was answered.
    pub requests_cut: u64,
}

/// Binds a listening socket with the given backlog (the kernel caps it at
/// `net.core.somaxconn`).
pub fn bind(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// Serves `app` on `listener` until `stop` resolves, then drains: new connections are
/// refused, connections with no request in flight are closed, and the rest are waited for
/// up to `drain_timeout()` (read when the stop comes), after which they are closed.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    stats: Arc<ConnectionStats>,
    stop: impl Future<Output = ()>,
    drain_timeout: impl FnOnce() -> Duration,
) -> Drained {
    stats
        .limit
        .store(limits.max_connections as u64, Ordering::Relaxed);
    let (draining, drain_rx) = watch::channel(false);
    let mut conns = JoinSet::new();
    accept_until(&listener, &mut conns, &app, limits, &stats, &drain_rx, stop).await;
    // Closing the socket turns new connections away at once.
    drop(listener);
    let _ = draining.send(true);
    let wait = drain_timeout();
    let all_closed = async { while conns.join_next().await.is_some() {} };
    if tokio::time::timeout(wait, all_closed).await.is_ok() {
        return Drained { requests_cut: 0 };
    }
    let requests_cut = stats.requests_in_flight.load(Ordering::Relaxed);
    conns.abort_all();
    while conns.join_next().await.is_some() {}
    Drained { requests_cut }
}

/// The accept loop, until `stop` resolves.
async fn accept_until(
    listener: &TcpListener,
    conns: &mut JoinSet<()>,
    app: &Router,
    limits: Limits,
    stats: &Arc<ConnectionStats>,
    drain_rx: &watch::Receiver<bool>,
    stop: impl Future<Output = ()>,
) {
    tokio::pin!(stop);
    let mut pause = Backoff::default();
    let mut cap_warned: Option<Instant> = None;
    let mut exhaustion_warned: Option<Instant> = None;
    loop {
        while conns.try_join_next().is_some() {}
        let accepted = tokio::select! {
            _ = &mut stop => return,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((tcp, _)) => {
                pause.reset();
                if stats.open.load(Ordering::Relaxed) >= limits.max_connections as u64 {
                    refuse(tcp, stats);
                    if due(&mut cap_warned) {
                        tracing::warn!(
                            max_connections = limits.max_connections,
                            "connection cap reached: new connections are answered 503 \
                             (http.max_connections)"
                        );
                    }
                    continue;
                }
                stats.open.fetch_add(1, Ordering::Relaxed);
                stats.accepted.fetch_add(1, Ordering::Relaxed);
                let open = OpenGuard(stats.clone());
                let conn = connection(tcp, app.clone(), limits, stats.clone(), drain_rx.clone());
                conns.spawn(async move {
                    conn.await;
                    drop(open);
                });
            }
            Err(e) => {
                stats.accept_errors.fetch_add(1, Ordering::Relaxed);
                if !crate::util::fds::is_exhaustion(&e) {
                    tracing::debug!("accept failed: {e}");
                    continue;
                }
                let wait = pause.next();
                if due(&mut exhaustion_warned) {
                    tracing::warn!(
                        "cannot accept connections: {e}; retrying in {} ms",
                        wait.as_millis()
                    );
                }
                tokio::select! {
                    _ = &mut stop => return,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

/// Whether a rate-limited warning may be logged now (at most one per 10 s).
fn due(last: &mut Option<Instant>) -> bool {
    let now = Instant::now();
    if last.is_some_and(|t| now.duration_since(t) < Duration::from_secs(10)) {
        return false;
    }
    *last = Some(now);
    true
}

/// The pause after an `accept` that failed for want of descriptors: 10 ms, doubling to 1 s.
#[derive(Debug, Default)]
struct Backoff {
    next_ms: u64,
}

impl Backoff {
    fn next(&mut self) -> Duration {
        let ms = self.next_ms.clamp(10, 1000);
        self.next_ms = (ms * 2).min(1000);
        Duration::from_millis(ms)
    }

    fn reset(&mut self) {
        self.next_ms = 0;
    }
}

const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: application/json\r\nretry-after: 1\r\nconnection: close\r\n\
content-length: 77\r\n\r\n\
{\"error\":\"too many open connections (http.max_connections); try again later\"}";

/// Refusals being written at once; past this a refused connection is closed at once.
const MAX_REFUSING: u64 = 8;

/// Descriptors the listener may hold beyond its connection cap: refusals being written, and
/// the one being accepted. Counted against the descriptor limit with the reserve.
pub(crate) const FD_OVERHEAD: usize = MAX_REFUSING as usize + 2;

/// Answers 503 without reading the request, and closes. The request is read and dropped
/// for up to a second first, so that closing does not reset the connection before the
/// client has read the answer.
fn refuse(tcp: TcpStream, stats: &Arc<ConnectionStats>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stats.refused.fetch_add(1, Ordering::Relaxed);
    if stats.refusing.fetch_add(1, Ordering::AcqRel) >= MAX_REFUSING {
        stats.refusing.fetch_sub(1, Ordering::AcqRel);
        let _ = tcp.try_write(REFUSAL);
        return;
    }
    let stats = stats.clone();
    tokio::spawn(async move {
        let mut tcp = tcp;
        let answer = async {
            tcp.write_all(REFUSAL).await?;
            tcp.shutdown().await?;
            let mut sink = [0u8; 4096];
            while tcp.read(&mut sink).await? > 0 {}
            Ok::<_, std::io::Error>(())
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), answer).await;
        stats.refusing.fetch_sub(1, Ordering::AcqRel);
    });
}

/// Counts a connection open until dropped (also when its task is aborted).
struct OpenGuard(Arc<ConnectionStats>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pause_after_exhaustion_doubles_to_a_second_and_resets() {
        let mut b = Backoff::default();
        let ms: Vec<u128> = (0..9).map(|_| b.next().as_millis()).collect();
        assert_eq!(ms, [10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        b.reset();
        assert_eq!(b.next(), Duration::from_millis(10));
    }

    #[test]
    fn the_refusal_is_a_complete_json_503() {
        let text = std::str::from_utf8(REFUSAL).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 503 "));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert!(v["error"].as_str().unwrap().contains("max_connections"));
    }

    /// Connections that complete while nobody accepts, out of `tries`.
    fn queued(backlog: u32, tries: usize) -> usize {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let listener = rt
            .block_on(async { bind(([127, 0, 0, 1], 0).into(), backlog) })
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let mut held = Vec::new();
        for _ in 0..tries {
            if let Ok(s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
                held.push(s);
            }
        }
        held.len()
    }

    #[test]
    fn the_listen_backlog_is_the_configured_one() {
        // Linux completes backlog + 1 handshakes before anything is accepted, then drops SYNs.
        let small = queued(2, 10);
        assert!(
            (2..=4).contains(&small),
            "{small} of 10 queued with backlog 2"
        );
        assert_eq!(queued(64, 10), 10);
    }
}
