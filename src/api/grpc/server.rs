//! The gRPC listener: HTTP/2 connections served by hyper, each request handed to the
//! generated `GRPCInferenceService` server.
//!
//! A connection with no call in flight for `http.idle_timeout_ms` is sent GOAWAY and closed,
//! as an idle HTTP/1.1 connection is; a call counts as in flight until its answer's last
//! frame is sent, so a long stream is never cut for idling. The listener's counters
//! ([`ConnectionStats`]) are shown by `/metrics` as `setpoint_grpc_connections_*`.
//!
//! tonic's own transport server is not used: it enforces a client's `grpc-timeout` itself and
//! answers `CANCELLED` when it passes, where setpoint answers `DEADLINE_EXCEEDED` with the
//! message HTTP gives, and it fixes the message size limit at start, where setpoint reads
//! `max_request_bytes` from the configuration in force for every request, so a reload
//! applies to the next one.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::body::{Bytes, Frame, SizeHint};

use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tonic::codegen::Service;

use super::pb::grpc_inference_service_server::GrpcInferenceServiceServer;
use super::same_task::{Driven, SameTask};
use super::service::Inference;
use super::unary;
use crate::api::server::{Arrival, ConnectionStats, Limits};
use crate::node::Node;
use crate::util::stamp::Stamp;

/// How the gRPC listener stopped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GrpcDrained {
    /// Connections still busy at the drain deadline, closed with their calls unanswered.
    pub connections_cut: usize,
}

/// Serves gRPC on `listener` for `node` until `stop` turns true, at most
/// `limits.max_connections` connections at once, closing those idle for
/// `limits.idle_timeout`; `stats` counts them. After `stop` every connection is told to go
/// away (HTTP/2 GOAWAY: no new calls) and its calls in flight are answered, for `drain()` at
/// most; those still running then are cut.
pub async fn serve(
    listener: TcpListener,
    node: Arc<Node>,
    limits: Limits,
    stats: Arc<ConnectionStats>,
    mut stop: watch::Receiver<bool>,
    drain: impl Fn() -> Duration,
) -> GrpcDrained {
    let service = Inference::new(node);
    let max_connections = limits.max_connections;
    stats.limit.store(max_connections as u64, Ordering::Relaxed);
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = stopped(&mut stop) => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    if stats.open.load(Ordering::Acquire) >= max_connections as u64 {
                        stats.refused.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(
                            "gRPC: {max_connections} connections open (http.max_connections); \
                             closing a new one"
                        );
                        continue;
                    }
                    stats.open.fetch_add(1, Ordering::AcqRel);
                    stats.accepted.fetch_add(1, Ordering::Relaxed);
                    let (service, stop, stats) = (service.clone(), stop.clone(), stats.clone());
                    connections.spawn(async move {
                        connection(stream, service, stop, limits.idle_timeout, &stats).await;
                        stats.open.fetch_sub(1, Ordering::AcqRel);
                    });
                }
                // Out of descriptors, say: wait a moment instead of spinning.
                Err(e) => {
                    stats.accept_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!("gRPC: cannot accept a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    let deadline = tokio::time::Instant::now() + drain();
    while !connections.is_empty() {
        if tokio::time::timeout_at(deadline, connections.join_next())
            .await
            .is_err()
        {
            let cut = connections.len();
            connections.abort_all();
            return GrpcDrained {
                connections_cut: cut,
            };
        }
    }
    GrpcDrained::default()
}

/// Serves one connection until the client closes it, or, after `stop` or `idle_timeout`
/// without a call in flight, until its calls in flight are answered.
async fn connection(
    stream: TcpStream,
    service: Inference,
    mut stop: watch::Receiver<bool>,
    idle_timeout: Duration,
    stats: &ConnectionStats,
) {
    let _ = stream.set_nodelay(true);
    let calls = Arc::new(Activity::new());
    let activity = calls.clone();
    let handler =
        hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            let call = InFlight::start(&calls);
            let arrived = Instant::now();
            let limit = service.max_request_bytes();
            let mut server = GrpcInferenceServiceServer::new(service.clone())
                .max_decoding_message_size(limit)
                .max_encoding_message_size(usize::MAX);
            let direct = unary::serves(&req).then(|| service.clone());
            if direct.is_none() {
                req.extensions_mut().insert(Arrival(arrived));
            }
            // Boxed here so that hyper moves a pointer, not the call's whole state (tonic's
            // and the service's futures), on its way to the executor.
            Box::pin(async move {
                let answer = match direct {
                    Some(svc) => unary::model_infer(svc, req, arrived, limit, server).await,
                    None => match server.call(req).await {
                        Ok(a) => a,
                        Err(never) => match never {},
                    },
                };
                let answer = too_large(answer, limit)
                    .map(|body| tonic::body::Body::new(Counted { body, _call: call }));
                Ok::<_, Infallible>(answer)
            })
        });
    let exec = SameTask::new();
    // No `date` header: gRPC clients do not read it (Triton's gRPC server sends none), and
    // hyper would read the clock, allocate the value and HPACK-encode it for every answer.
    let conn = hyper::server::conn::http2::Builder::new(exec.clone())
        .auto_date_header(false)
        .serve_connection(TokioIo::new(stream), handler);
    let mut conn = Driven::new(conn, exec);
    let idle = idle_for(&activity, idle_timeout);
    tokio::pin!(idle);
    let mut closing = false;
    loop {
        tokio::select! {
            biased;
            _ = &mut conn => break,
            _ = stopped(&mut stop), if !closing => {
                closing = true;
                conn.conn().graceful_shutdown();
            }
            _ = idle.as_mut(), if !closing => {
                closing = true;
                stats.idle_closed.fetch_add(1, Ordering::Relaxed);
                conn.conn().graceful_shutdown();
            }
        }
    }
    // The connection is closed: calls still running answer into nothing, but they finish
    // (and are accounted) before the connection counts as gone.
    conn.finish().await;
}

/// A connection's calls in flight and when the count last changed, for its idle timeout.
/// Kept in atomics and read by a coarse periodic check, so that a call arms no timer: a timer
/// armed per call (as a timeout restarted whenever the count fell to zero) woke the runtime's
/// I/O driver on every call, which at one connection cost about as much CPU as the call.
struct Activity {
    in_flight: AtomicUsize,
    /// When `in_flight` last changed.
    changed: Stamp,
}

impl Activity {
    fn new() -> Self {
        Activity {
            in_flight: AtomicUsize::new(0),
            changed: Stamp::new(),
        }
    }

    fn touch(&self) {
        self.changed.touch();
    }

    /// Whether no call has been in flight for at least `timeout`.
    fn idle_for(&self, timeout: Duration) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0 && self.changed.age() >= timeout
    }
}

/// Resolves once no call has been in flight on a connection for `timeout`, checked every
/// quarter of it (at least every 10 ms): a connection is closed between 1 and 1.25 timeouts
/// after its last call.
async fn idle_for(activity: &Activity, timeout: Duration) {
    let mut tick = tokio::time::interval((timeout / 4).max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if activity.idle_for(timeout) {
            return;
        }
    }
}

/// One call in flight on a connection: counted from its arrival until its answer's body is
/// dropped, that is sent to its end or abandoned.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn start(calls: &Arc<Activity>) -> Self {
        calls.in_flight.fetch_add(1, Ordering::AcqRel);
        calls.touch();
        InFlight(calls.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An answer's body that keeps its call counted while it is being sent.
struct Counted {
    body: tonic::body::Body,
    _call: InFlight,
}

impl http_body::Body for Counted {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Resolves once `stop` is true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// tonic refuses a message over the limit with `OUT_OF_RANGE` and its own words; HTTP says
/// 413 with `max_request_bytes` named. The answer is rewritten to `RESOURCE_EXHAUSTED` with
/// HTTP's message, so both transports say the same. (Only a refusal before the call's
/// handler, as for a unary call, can be rewritten; on a stream it ends the stream as tonic
/// words it.)
fn too_large(
    answer: axum::http::Response<tonic::body::Body>,
    limit: usize,
) -> axum::http::Response<tonic::body::Body> {
    let headers = answer.headers();
    let is_size_refusal = headers.get("grpc-status").is_some_and(|v| v == "11")
        && headers
            .get("grpc-message")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|m| {
                m.contains("message%20length%20too%20large") || is_tonic_size_message(m)
            });
    if !is_size_refusal {
        return answer;
    }
    size_refusal(limit).into_http()
}

/// Whether `message` is tonic's refusal of a message over the decoding limit.
fn is_tonic_size_message(message: &str) -> bool {
    message.contains("message length too large")
}

/// A request message over `limit` bytes, refused with HTTP's words for the same limit.
pub(super) fn size_refusal(limit: usize) -> tonic::Status {
    tonic::Status::resource_exhausted(format!(
        "request message exceeds the limit of {limit} bytes (max_request_bytes)"
    ))
}

/// `status` as a stream ends with it: tonic's refusal of an oversize message becomes
/// [`size_refusal`], anything else stays as it is.
pub(super) fn stream_error(status: tonic::Status, limit: usize) -> tonic::Status {
    if status.code() == tonic::Code::OutOfRange && is_tonic_size_message(status.message()) {
        size_refusal(limit)
    } else {
        status
    }
}
