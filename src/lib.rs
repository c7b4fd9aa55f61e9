//! setpoint: a node-level GPU scheduler for training jobs with deadlines and inference
//! services with response-time SLOs. This crate holds the engine (device backends, the MLP,
//! data loaders, the training runner, the inference batcher) and the daemon built on it.

pub mod config;
pub mod data;
pub mod util;
