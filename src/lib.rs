//! setpoint: a node-level GPU scheduler for training jobs with deadlines and inference
//! services with response-time SLOs. This crate holds the engine (device backends, the MLP,
//! data loaders, the training runner, the inference batcher) and the daemon built on it.

pub mod api;
pub mod bench;
pub mod cli;
pub mod client;
pub mod commands;
pub mod config;
pub mod control;
pub mod daemon;
pub mod data;
pub mod device;
pub mod kernels;
#[cfg(feature = "kubernetes")]
pub mod kube;
pub mod model;
pub mod node;
pub mod serve;
pub mod telemetry;
pub mod train;
pub mod util;

/// Version and source revision, as `setpoint --version` prints them.
pub(crate) const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (rev ",
    env!("SETPOINT_REVISION"),
    ")"
);
