//! The HTTP listener: accepts connections up to a cap, closes those that idle or send their
//! request head too slowly, survives running out of descriptors, and on stop drains the
//! requests in flight without waiting for connections that have none.
//!
//! Each connection runs in one task that polls hyper's connection and watches its timers, so
//! whether a request is in flight and whether an answer still waits to be written are known
//! exactly between two polls: a connection is only ever closed with nothing owed to its
//! client (the drain deadline aside).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;

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
pub const FD_OVERHEAD: usize = MAX_REFUSING as usize + 2;

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

const NONE: u64 = u64::MAX;

/// When the listener read the first byte of a request (to the millisecond, rounded down), in
/// its extensions: a request's timeout counts from here, not from when a handler got to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arrival(pub Instant);

/// What one connection is doing, shared by its socket, its requests and its task.
struct Activity {
    born: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds from `born` to when the connection last went idle.
    idle_since: AtomicU64,
    /// Milliseconds from `born` to the first byte of a request head read while idle; `NONE`
    /// when no head is being read.
    head_since: AtomicU64,
    /// Whether the last write or flush could not go through (the client reads slowly).
    write_blocked: AtomicBool,
    changed: Notify,
}

/// Why a connection was closed by the listener.
enum Expiry {
    Idle,
    Header,
}

impl Activity {
    fn new() -> Self {
        Activity {
            born: Instant::now(),
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            // A new connection owes its first request head from the start.
            head_since: AtomicU64::new(0),
            write_blocked: AtomicBool::new(false),
            changed: Notify::new(),
        }
    }

    /// When the request being read began to arrive: its head's first byte (a connection's
    /// first request: the connection's opening), or now when that is not known.
    fn arrival(&self) -> Instant {
        match self.head_since.load(Ordering::Acquire) {
            NONE => Instant::now(),
            ms => self.born + Duration::from_millis(ms),
        }
    }

    fn now_ms(&self) -> u64 {
        self.born.elapsed().as_millis() as u64
    }

    /// When the connection expires, and why; `None` while a request is in flight.
    fn deadline(&self, limits: &Limits) -> Option<(Instant, Expiry)> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let at = |ms: u64, d: Duration| self.born + Duration::from_millis(ms) + d;
        match self.head_since.load(Ordering::Acquire) {
            NONE => Some((
                at(self.idle_since.load(Ordering::Acquire), limits.idle_timeout),
                Expiry::Idle,
            )),
            head => Some((at(head, limits.header_read_timeout), Expiry::Header)),
        }
    }

    /// Whether the connection owes its client nothing: no request in flight and no answer
    /// stuck behind a slow reader.
    fn quiet(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0 && !self.write_blocked.load(Ordering::Acquire)
    }

    fn bytes_read(&self) {
        if self.in_flight.load(Ordering::Acquire) == 0
            && self.head_since.load(Ordering::Acquire) == NONE
        {
            self.head_since.store(self.now_ms(), Ordering::Release);
            self.changed.notify_one();
        }
    }
}

/// One request in flight, from its head to the end of its answer's body.
struct RequestGuard {
    activity: Arc<Activity>,
    stats: Arc<ConnectionStats>,
}

impl RequestGuard {
    fn begin(activity: &Arc<Activity>, stats: &Arc<ConnectionStats>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        stats.requests_in_flight.fetch_add(1, Ordering::Relaxed);
        activity.changed.notify_one();
        RequestGuard {
            activity: activity.clone(),
            stats: stats.clone(),
        }
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.stats
            .requests_in_flight
            .fetch_sub(1, Ordering::Relaxed);
        let a = &self.activity;
        if a.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            a.head_since.store(NONE, Ordering::Release);
            a.idle_since.store(a.now_ms(), Ordering::Release);
        }
        a.changed.notify_one();
    }
}

/// An answer's body that holds its request's guard until hyper has taken the last frame.
struct Tracked {
    inner: Body,
    _guard: RequestGuard,
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The socket, telling the connection's [`Activity`] when a request head starts to arrive
/// and whether writes go through.
struct Watched {
    tcp: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.tcp).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.activity.bytes_read();
        }
        r
    }
}

impl Watched {
    fn note<T>(&self, r: Poll<T>) -> Poll<T> {
        self.activity
            .write_blocked
            .store(r.is_pending(), Ordering::Release);
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.tcp).poll_write(cx, buf);
        this.note(r)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.tcp).poll_flush(cx);
        this.note(r)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.tcp).poll_write_vectored(cx, bufs);
        this.note(r)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }
}

/// Serves one connection until it ends, expires, or the drain finds it quiet.
async fn connection(
    tcp: TcpStream,
    app: Router,
    limits: Limits,
    stats: Arc<ConnectionStats>,
    mut drain: watch::Receiver<bool>,
) {
    // Answers are small and latency-bound: send them without waiting to coalesce segments.
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!("cannot set TCP_NODELAY: {e}");
    }
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Watched {
        tcp,
        activity: activity.clone(),
    });
    let inner = TowerToHyperService::new(app);
    let (svc_activity, svc_stats) = (activity.clone(), stats.clone());
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(Arrival(svc_activity.arrival()));
        let guard = RequestGuard::begin(&svc_activity, &svc_stats);
        let answer = hyper::service::Service::call(&inner, req);
        async move {
            let r = answer.await?;
            Ok::<_, std::convert::Infallible>(r.map(|b| {
                Body::new(Tracked {
                    inner: b,
                    _guard: guard,
                })
            }))
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.keep_alive(true).header_read_timeout(None);
    let conn = builder.serve_connection(io, svc);
    tokio::pin!(conn);
    let mut draining = *drain.borrow();
    if draining {
        conn.as_mut().graceful_shutdown();
    }
    loop {
        if draining && activity.quiet() {
            return;
        }
        let deadline = activity.deadline(&limits);
        let sleep_until = deadline
            .as_ref()
            .map_or_else(|| Instant::now() + limits.idle_timeout, |(at, _)| *at);
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!("connection ended: {e}");
                }
                return;
            }
            _ = activity.changed.notified() => {}
            _ = tokio::time::sleep_until(sleep_until.into()), if deadline.is_some() => {
                if let Some((at, why)) = activity.deadline(&limits)
                    && Instant::now() >= at
                {
                    let counter = match why {
                        Expiry::Idle => &stats.idle_closed,
                        Expiry::Header => &stats.header_timeouts,
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
            _ = drain.changed(), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
        }
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

    #[test]
    fn a_connection_owes_its_first_head_then_idles_between_requests() {
        let limits = Limits {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 1,
        };
        let a = Arc::new(Activity::new());
        let stats = Arc::new(ConnectionStats::default());
        let (at, why) = a.deadline(&limits).unwrap();
        assert!(matches!(why, Expiry::Header));
        assert!(at <= a.born + Duration::from_secs(10));
        let guard = RequestGuard::begin(&a, &stats);
        assert!(a.deadline(&limits).is_none(), "no expiry in flight");
        assert!(!a.quiet());
        assert_eq!(stats.requests_in_flight.load(Ordering::Relaxed), 1);
        drop(guard);
        assert!(a.quiet());
        let (at, why) = a.deadline(&limits).unwrap();
        assert!(matches!(why, Expiry::Idle));
        assert!(at >= a.born + Duration::from_secs(60));
        a.bytes_read();
        assert!(matches!(a.deadline(&limits).unwrap().1, Expiry::Header));
        assert_eq!(stats.requests_in_flight.load(Ordering::Relaxed), 0);
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
