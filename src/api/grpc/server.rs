//! The gRPC listener: HTTP/2 connections served by hyper, each request handed to the
//! generated `GRPCInferenceService` server.
//!
//! tonic's own transport server is not used: it enforces a client's `grpc-timeout` itself and
//! answers `CANCELLED` when it passes, where setpoint answers `DEADLINE_EXCEEDED` with the
//! message HTTP gives, and it fixes the message size limit at start, where setpoint reads
//! `max_request_bytes` from the configuration in force for every request, so a reload
//! applies to the next one.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tonic::codegen::Service;

use super::pb::grpc_inference_service_server::GrpcInferenceServiceServer;
use super::service::Inference;
use crate::api::server::Arrival;
use crate::node::Node;

/// How the gRPC listener stopped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GrpcDrained {
    /// Connections still busy at the drain deadline, closed with their calls unanswered.
    pub connections_cut: usize,
}

/// Serves gRPC on `listener` for `node`, at most `max_connections` at once, until `stop`
/// turns true. Then every connection is told to go away (HTTP/2 GOAWAY: no new calls) and
/// its calls in flight are answered, for `drain()` at most; those still running then are cut.
pub async fn serve(
    listener: TcpListener,
    node: Arc<Node>,
    max_connections: usize,
    mut stop: watch::Receiver<bool>,
    drain: impl Fn() -> Duration,
) -> GrpcDrained {
    let service = Inference::new(node.clone());
    let open = Arc::new(AtomicUsize::new(0));
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = stopped(&mut stop) => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    if open.load(Ordering::Acquire) >= max_connections {
                        tracing::warn!(
                            "gRPC: {max_connections} connections open (http.max_connections); \
                             closing a new one"
                        );
                        continue;
                    }
                    open.fetch_add(1, Ordering::AcqRel);
                    let (service, node, stop, open) =
                        (service.clone(), node.clone(), stop.clone(), open.clone());
                    connections.spawn(async move {
                        connection(stream, service, node, stop).await;
                        open.fetch_sub(1, Ordering::AcqRel);
                    });
                }
                // Out of descriptors, say: wait a moment instead of spinning.
                Err(e) => {
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

/// Serves one connection until the client closes it, or, after `stop`, until its calls in
/// flight are answered.
async fn connection(
    stream: TcpStream,
    service: Inference,
    node: Arc<Node>,
    mut stop: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let handler =
        hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(Arrival(Instant::now()));
            let limit = usize::try_from(node.config().max_request_bytes).unwrap_or(usize::MAX);
            let mut server = GrpcInferenceServiceServer::new(service.clone())
                .max_decoding_message_size(limit)
                .max_encoding_message_size(usize::MAX);
            async move {
                let answer = match server.call(req).await {
                    Ok(a) => a,
                    Err(never) => match never {},
                };
                Ok::<_, Infallible>(too_large(answer, limit))
            }
        });
    let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(stream), handler);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = stopped(&mut stop) => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
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
                m.contains("message%20length%20too%20large")
                    || m.contains("message length too large")
            });
    if !is_size_refusal {
        return answer;
    }
    tonic::Status::resource_exhausted(format!(
        "request message exceeds the limit of {limit} bytes (max_request_bytes)"
    ))
    .into_http()
}
