//! Why a request goes unanswered: the service's error type, and how a failed forward pass
//! is told to the requests of its batch.

use crate::device::DeviceError;
use crate::model::ModelError;

/// Why a request was not answered with a prediction.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ServeError {
    /// The queue is full.
    #[error("service {service}: queue is full ({capacity} requests waiting); retry later")]
    Overloaded {
        /// The service.
        service: String,
        /// Its queue bound.
        capacity: usize,
    },
    /// A request has more rows than the queue ever holds: it could never be queued whole.
    #[error(
        "service {service}: the request has {rows} rows, but the service queues at most \
         {max_queue} (max_queue); send it in parts of at most {max_queue} rows"
    )]
    TooManyRows {
        /// The service.
        service: String,
        /// Rows in the request.
        rows: usize,
        /// The queue bound.
        max_queue: usize,
    },
    /// The input row has the wrong width.
    #[error("service {service}: input has {got} values, the model takes {expected}")]
    InputShape {
        /// The service.
        service: String,
        /// Model input width.
        expected: usize,
        /// Values given.
        got: usize,
    },
    /// The input holds NaN or an infinity.
    #[error("service {service}: input value {index} is {value}; inputs must be finite numbers")]
    NotFinite {
        /// The service.
        service: String,
        /// Position in the row.
        index: usize,
        /// The value.
        value: f32,
    },
    /// The service is stopping or stopped.
    #[error("service {service}: shutting down")]
    ShuttingDown {
        /// The service.
        service: String,
    },
    /// The forward pass failed.
    #[error("service {service}: inference failed: {message}")]
    Compute {
        /// The service.
        service: String,
        /// The device or model error.
        message: String,
    },
    /// The device the service runs on has failed: nothing runs on it until the daemon
    /// restarts.
    #[error("service {service}: {message}")]
    DeviceFailed {
        /// The service.
        service: String,
        /// The device's error, naming the device and what failed it.
        message: String,
    },
    /// The request's deadline passed before it was answered.
    #[error(
        "service {service}: no answer within the request's timeout of {timeout_us} us; \
         requests still queued at their timeout are dropped unrun"
    )]
    TimedOut {
        /// The service.
        service: String,
        /// The timeout the request ran under, microseconds.
        timeout_us: u64,
    },
    /// The service could not be created.
    #[error("service {service}: {message}")]
    Setup {
        /// The service.
        service: String,
        /// Why.
        message: String,
    },
}

/// What a request learns of a failed forward pass: a device that has failed is told apart
/// from an error of this one batch.
pub(super) fn compute_error(service: &str, e: &ModelError) -> ServeError {
    match e {
        ModelError::Device(d @ DeviceError::Failed { .. }) => ServeError::DeviceFailed {
            service: service.to_string(),
            message: d.to_string(),
        },
        other => ServeError::Compute {
            service: service.to_string(),
            message: other.to_string(),
        },
    }
}
