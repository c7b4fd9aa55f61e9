//! What travels through the queue: a queued request, its answer, and the handle a caller
//! waits on for it.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::{PhaseNs, ServeError};

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
    /// The progress of the request the row belongs to, shared by all its rows.
    pub(super) progress: Arc<Mutex<Progress>>,
}

/// How a whole request ended, once its last row is answered.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Outcome {
    /// Every row was computed.
    Success {
        /// Time from submission to the start of the request's first batch.
        queue_ns: u64,
        /// Summed phase durations of the distinct batches its rows ran in.
        compute: PhaseNs,
        /// Summed compute seconds of those batches.
        compute_s: f64,
    },
    /// At least one row failed in the forward pass.
    Failure,
    /// At least one row was dropped unrun at its deadline (the caller counts the timeout).
    Expired,
}

/// What one row's batch did to it.
#[derive(Debug, Clone, Copy)]
pub(super) enum RowEnd {
    /// Computed in batch number `batch`, started `queue_ns` after submission.
    Done {
        batch: u64,
        queue_ns: u64,
        phases: PhaseNs,
        compute_s: f64,
    },
    /// Its batch's forward pass failed.
    Failed,
    /// Dropped unrun at its deadline.
    Expired,
}

/// A request's progress through the batcher: its rows may run in several batches.
#[derive(Debug)]
pub(super) struct Progress {
    remaining: usize,
    failed: bool,
    expired: bool,
    first_queue_ns: Option<u64>,
    last_batch: Option<u64>,
    compute: PhaseNs,
    compute_s: f64,
}

impl Progress {
    /// A request of `rows` rows, none answered yet.
    pub(super) fn new(rows: usize) -> Arc<Mutex<Progress>> {
        Arc::new(Mutex::new(Progress {
            remaining: rows,
            failed: false,
            expired: false,
            first_queue_ns: None,
            last_batch: None,
            compute: PhaseNs::default(),
            compute_s: 0.0,
        }))
    }

    /// Records one row's end; the request's outcome once it was the last row.
    pub(super) fn row_end(&mut self, end: RowEnd) -> Option<Outcome> {
        match end {
            RowEnd::Done {
                batch,
                queue_ns,
                phases,
                compute_s,
            } => {
                self.first_queue_ns.get_or_insert(queue_ns);
                // Rows of one request in the same batch count that batch once.
                if self.last_batch != Some(batch) {
                    self.last_batch = Some(batch);
                    self.compute.input_ns += phases.input_ns;
                    self.compute.infer_ns += phases.infer_ns;
                    self.compute.output_ns += phases.output_ns;
                    self.compute_s += compute_s;
                }
            }
            RowEnd::Failed => self.failed = true,
            RowEnd::Expired => self.expired = true,
        }
        self.remaining = self.remaining.saturating_sub(1);
        if self.remaining > 0 {
            return None;
        }
        Some(if self.failed {
            Outcome::Failure
        } else if self.expired {
            Outcome::Expired
        } else {
            Outcome::Success {
                queue_ns: self.first_queue_ns.unwrap_or(0),
                compute: self.compute,
                compute_s: self.compute_s,
            }
        })
    }
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
                // The answer first: one that came by the deadline is not a timeout.
                let mut rx = self.rx;
                let mut expiry = super::deadline::global().at(at);
                let answer = std::future::poll_fn(|cx| {
                    if let Poll::Ready(answer) = Pin::new(&mut rx).poll(cx) {
                        return Poll::Ready(Some(answer));
                    }
                    Pin::new(&mut expiry).poll(cx).map(|()| None)
                })
                .await;
                match answer {
                    Some(answer) => answer.unwrap_or(Err(ServeError::ShuttingDown { service })),
                    None => Err(ServeError::TimedOut {
                        service,
                        timeout_us: timeout.as_micros() as u64,
                    }),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(batch: u64, queue_ns: u64) -> RowEnd {
        RowEnd::Done {
            batch,
            queue_ns,
            phases: PhaseNs {
                input_ns: 1,
                infer_ns: 10,
                output_ns: 100,
            },
            compute_s: 0.5,
        }
    }

    #[test]
    fn a_request_ends_with_its_last_row_and_counts_each_batch_once() {
        let p = Progress::new(3);
        let mut p = p.lock().unwrap();
        assert_eq!(p.row_end(done(7, 5)), None);
        assert_eq!(p.row_end(done(7, 5)), None);
        let Some(Outcome::Success {
            queue_ns,
            compute,
            compute_s,
        }) = p.row_end(done(8, 9))
        else {
            panic!("not a success");
        };
        assert_eq!(queue_ns, 5, "queue time runs to its first batch");
        assert_eq!(compute.infer_ns, 20, "two distinct batches");
        assert!((compute_s - 1.0).abs() < 1e-12);
    }

    #[test]
    fn a_failed_or_expired_row_decides_the_outcome() {
        let p = Progress::new(2);
        let mut p = p.lock().unwrap();
        assert_eq!(p.row_end(RowEnd::Failed), None);
        assert_eq!(p.row_end(done(1, 1)), Some(Outcome::Failure));
        let q = Progress::new(2);
        let mut q = q.lock().unwrap();
        assert_eq!(q.row_end(RowEnd::Expired), None);
        assert_eq!(q.row_end(done(1, 1)), Some(Outcome::Expired));
    }
}
