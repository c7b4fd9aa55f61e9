//! The HTTP API: the listener, routes, the v2 inference protocol codec, Prometheus metrics.

pub mod drill;
pub mod dto;
pub mod grpc;
pub mod http;
pub(crate) mod inference;
pub mod metrics;
pub mod server;
pub mod v2codec;

/// The header an inference answer carries its server-side time in: microseconds from the
/// request's headers to its answer (reading the body, decoding, queueing, computing and
/// encoding), so a client can tell the daemon's time from the network's.
pub const SERVER_TIME_HEADER: &str = "setpoint-server-time-us";
