//! How a service is set up: its batching limits and the model it serves.

use std::time::Duration;

use crate::data::Normalizer;
use crate::model::MlpParams;

/// Batching limits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchConfig {
    /// Largest batch one forward pass takes.
    pub max_batch_size: usize,
    /// Longest the first request of a batch waits for others.
    pub max_queue_delay: Duration,
    /// Requests that may wait; more are refused.
    pub max_queue: usize,
    /// Span of the sliding window latency quantiles are taken over.
    pub window: Duration,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_batch_size: 32,
            max_queue_delay: Duration::ZERO,
            max_queue: 1024,
            window: Duration::from_secs(1),
        }
    }
}

/// A model to serve: parameters plus the input standardisation they were trained with.
#[derive(Debug, Clone, PartialEq)]
pub struct ServedModel {
    /// Parameters.
    pub params: MlpParams,
    /// Standardisation applied to every input row.
    pub normalizer: Normalizer,
}
