//! One connection: its task polls hyper's connection and watches its timers, so whether a
//! request is in flight and whether an answer still waits to be written are known exactly
//! between two polls.

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
use tokio::net::TcpStream;
use tokio::sync::{Notify, watch};

use super::{ConnectionStats, Limits};

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
pub(super) async fn connection(
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
}
