//! The inference service core: a bounded request queue and a dynamic batcher.
//!
//! Callers submit one row at a time; a dedicated thread takes the first waiting request,
//! gathers more until the batch is full or the first request has waited `max_queue_delay`,
//! runs one forward pass for the whole batch on the backend and answers each request with
//! its own row. A full queue refuses at once ([`ServeError::Overloaded`]) instead of letting
//! latency grow without bound. Requests already queued when the service shuts down are still
//! answered.
//!
//! A request may carry a deadline. One whose deadline passes while it waits is taken out of
//! the queue before it is batched, so no compute is spent on it, and answered with
//! [`ServeError::TimedOut`]; an async waiter ([`Pending::recv`]) stops waiting at the deadline
//! itself, so a caller never gets a late answer even while a long batch is running.

mod batcher;
mod config;
mod deadline;
pub mod dispatch;
mod error;
pub mod model_io;
mod protocol;
mod request;
mod service;
mod stats;
mod submit;

pub use config::{BatchConfig, ServedModel};
pub use error::ServeError;
pub use model_io::{INPUT_NAME, MODEL_VERSION, ModelIo, OUTPUT_NAME};
pub use protocol::Protocol;
pub use request::{Pending, Response};
pub use service::InferenceService;
pub use stats::{BatchSizeStats, PhaseNs, ServiceStats};
