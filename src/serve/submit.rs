//! Admission: checking rows and queueing them, or refusing at once when they are malformed,
//! the queue is full or the service is stopping.

use std::sync::atomic::Ordering;
use std::sync::mpsc::TrySendError;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::request::{Progress, Request};
use super::{InferenceService, Pending, Response, ServeError};
use crate::util::sync::lock;

impl InferenceService {
    /// Queues one input row. Fails at once when the row is malformed, the queue is full or
    /// the service is stopping.
    pub fn submit(&self, input: Vec<f32>) -> Result<Pending, ServeError> {
        self.submit_within(input, None)
    }

    /// Like [`InferenceService::submit`], for a request that must be answered within
    /// `timeout` of now: past it the request is dropped from the queue unrun and answered
    /// [`ServeError::TimedOut`].
    pub fn submit_with_timeout(
        &self,
        input: Vec<f32>,
        timeout: Duration,
    ) -> Result<Pending, ServeError> {
        self.submit_within(input, Some(timeout))
    }

    fn submit_within(
        &self,
        input: Vec<f32>,
        timeout: Option<Duration>,
    ) -> Result<Pending, ServeError> {
        let mut one = self.submit_rows(vec![input], timeout)?;
        Ok(one.remove(0))
    }

    /// Queues every row of one request, or none: a request with more rows than the queue
    /// holds is refused at once ([`ServeError::TooManyRows`]), and one that does not fit in
    /// the room left now is refused ([`ServeError::Overloaded`]) before any row is queued, so
    /// no row is computed for an answer that cannot be given. `timeout` as for
    /// [`InferenceService::submit_with_timeout`].
    pub(crate) fn submit_rows(
        &self,
        rows: Vec<Vec<f32>>,
        timeout: Option<Duration>,
    ) -> Result<Vec<Pending>, ServeError> {
        let service = || self.shared.name.clone();
        let max_queue = self.shared.max_queue;
        if rows.len() > max_queue {
            return Err(ServeError::TooManyRows {
                service: service(),
                rows: rows.len(),
                max_queue,
            });
        }
        for input in &rows {
            self.check_row(input)?;
        }
        let tx = match &self.tx {
            Some(tx) if self.shared.accepting.load(Ordering::Acquire) => tx,
            _ => return Err(ServeError::ShuttingDown { service: service() }),
        };
        let n = rows.len();
        self.shared.arrivals.fetch_add(n as u64, Ordering::Relaxed);
        // Room for the whole request, taken at once.
        let reserved = self
            .shared
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |q| {
                (q + n <= max_queue).then_some(q + n)
            });
        if reserved.is_err() {
            return Err(self.overloaded());
        }
        let enqueued = Instant::now();
        let deadline = timeout.map(|t| (enqueued + t, t));
        let mut pending = Vec::with_capacity(n);
        let progress = Progress::new(n);
        for (i, input) in rows.into_iter().enumerate() {
            let (reply, rx) = oneshot::channel();
            let req = Request {
                input,
                enqueued,
                deadline: deadline.map(|d| d.0),
                reply,
                progress: progress.clone(),
            };
            if let Err(e) = tx.try_send(req) {
                // The rows not sent give their room back; those sent are answered and dropped.
                self.shared.queued.fetch_sub(n - i, Ordering::Relaxed);
                return Err(match e {
                    TrySendError::Full(_) => self.overloaded(),
                    TrySendError::Disconnected(_) => {
                        ServeError::ShuttingDown { service: service() }
                    }
                });
            }
            pending.push(Pending {
                rx,
                service: service(),
                deadline,
            });
        }
        Ok(pending)
    }

    /// Refuses at once, as [`InferenceService::submit_rows`] would, when the queue has no
    /// room for `rows` more rows now: a caller can shed a request this way before it spends
    /// work on decoding it. Room found here is not reserved.
    pub(crate) fn check_room(&self, rows: usize) -> Result<(), ServeError> {
        if !self.is_accepting() {
            return Err(ServeError::ShuttingDown {
                service: self.shared.name.clone(),
            });
        }
        let queued = self.shared.queued.load(Ordering::Acquire);
        if queued + rows > self.shared.max_queue {
            return Err(self.overloaded());
        }
        Ok(())
    }

    /// Counts `rows` of a request whose timeout passed before it could be queued: dropped
    /// unrun, as the batcher drops rows that expire in the queue.
    pub(crate) fn count_expired_unqueued(&self, rows: usize) {
        lock(&self.shared.stats).expired_count += rows as u64;
    }

    /// The checks a row must pass before it is queued.
    fn check_row(&self, input: &[f32]) -> Result<(), ServeError> {
        let service = || self.shared.name.clone();
        if input.len() != self.shared.inputs {
            return Err(ServeError::InputShape {
                service: service(),
                expected: self.shared.inputs,
                got: input.len(),
            });
        }
        if let Some((index, &value)) = input.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(ServeError::NotFinite {
                service: service(),
                index,
                value,
            });
        }
        Ok(())
    }

    /// A refusal for a full queue, counted in the statistics (one per refused request).
    fn overloaded(&self) -> ServeError {
        if let Ok(mut s) = self.shared.stats.lock() {
            s.rejected_count += 1;
        }
        ServeError::Overloaded {
            service: self.shared.name.clone(),
            capacity: self.shared.max_queue,
        }
    }

    /// Submits one row and waits for its answer on the calling thread.
    pub fn infer_blocking(&self, input: Vec<f32>) -> Result<Response, ServeError> {
        self.submit(input)?.wait()
    }
}
