//! The HTTP API: the listener, routes, the v2 inference protocol codec, Prometheus metrics.

pub mod drill;
pub mod dto;
pub mod http;
pub mod metrics;
pub mod server;
pub mod v2codec;
