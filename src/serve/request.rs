//! What travels through the queue: a queued request, its answer, and the handle a caller
//! waits on for it.

use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::ServeError;

/// One answered request.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    /// Class probabilities.
    pub output: Vec<f32>,
    /// Time from submission to the start of its batch's forward pass.
    pub queue_us: u64,
    /// Time of its batch's forward pass, input staging and output copy included.
    pub compute_us: u64,
    /// Rows in its batch.
    pub batch_size: usize,
}

/// One row waiting in the queue, with the channel its answer goes back on.
pub(super) struct Request {
    pub(super) input: Vec<f32>,
    pub(super) enqueued: Instant,
    pub(super) deadline: Option<Instant>,
    pub(super) reply: oneshot::Sender<Result<Response, ServeError>>,
}

/// An answer still to come.
pub struct Pending {
    pub(super) rx: oneshot::Receiver<Result<Response, ServeError>>,
    pub(super) service: String,
    /// When to stop waiting, and the timeout it came from.
    pub(super) deadline: Option<(Instant, Duration)>,
}

impl Pending {
    /// Waits on the calling thread. Must not be called from inside an async runtime; use
    /// [`Pending::recv`] there. A request with a deadline is answered
    /// [`ServeError::TimedOut`] when the batcher reaches it after its deadline; a batch
    /// running meanwhile is waited for.
    pub fn wait(self) -> Result<Response, ServeError> {
        let service = self.service;
        self.rx
            .blocking_recv()
            .unwrap_or(Err(ServeError::ShuttingDown { service }))
    }

    /// Waits asynchronously, at most until the request's deadline.
    pub async fn recv(self) -> Result<Response, ServeError> {
        let service = self.service;
        match self.deadline {
            None => self
                .rx
                .await
                .unwrap_or(Err(ServeError::ShuttingDown { service })),
            Some((at, timeout)) => {
                match tokio::time::timeout_at(tokio::time::Instant::from_std(at), self.rx).await {
                    Ok(answer) => answer.unwrap_or(Err(ServeError::ShuttingDown { service })),
                    Err(_) => Err(ServeError::TimedOut {
                        service,
                        timeout_us: timeout.as_micros() as u64,
                    }),
                }
            }
        }
    }
}
