//! The batcher: the thread that gathers queued requests into batches, runs one forward
//! pass per batch and answers each request with its row.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::time::{Duration, Instant};

use super::error::compute_error;
use super::request::{Request, RowEnd};
use super::service::Shared;
use super::{PhaseNs, Response, ServeError};
use crate::data::Normalizer;
use crate::device::Backend;
use crate::model::{Mlp, ModelError, Workspace};
use crate::util::sync::lock;

/// Most batches kept for the controller between two of its reads.
const BATCH_LOG_CAP: usize = 4096;

/// The batcher thread's state: the model on its backend and the buffers a batch uses.
pub(super) struct Worker<B: Backend> {
    pub(super) shared: Arc<Shared>,
    pub(super) backend: B,
    pub(super) mlp: Mlp<B>,
    pub(super) ws: Workspace<B>,
    pub(super) x_buf: B::Buf,
    pub(super) normalizer: Normalizer,
    pub(super) staging: Vec<f32>,
    pub(super) out: Vec<f32>,
}

impl<B: Backend> Worker<B> {
    /// Times the forward pass at batch sizes 1, 2, 4, … up to the limit, on zero inputs.
    fn calibrate(&mut self) {
        let limit = self.shared.batch_limit;
        let mut sizes: Vec<usize> = std::iter::successors(Some(1usize), |b| Some(b * 2))
            .take_while(|&b| b < limit)
            .collect();
        sizes.push(limit);
        let zeros = vec![0.0f32; limit * self.shared.inputs];
        let mut out = Vec::new();
        for rows in sizes {
            let mut best = f64::INFINITY;
            for _ in 0..3 {
                let t0 = Instant::now();
                let ok = self
                    .backend
                    .write(&mut self.x_buf, &zeros[..rows * self.shared.inputs])
                    .is_ok()
                    && self
                        .mlp
                        .predict(&self.backend, &mut self.ws, &self.x_buf, rows)
                        .is_ok()
                    && self.backend.synchronize().is_ok();
                if !ok {
                    return;
                }
                best = best.min(t0.elapsed().as_secs_f64());
            }
            out.push((rows, best));
        }
        *lock(&self.shared.calibration) = out;
    }

    /// Calibrates, then batches and runs requests until the queue is closed and empty.
    pub(super) fn run(mut self, rx: Receiver<Request>) {
        self.calibrate();
        let mut batch: Vec<Request> = Vec::with_capacity(self.shared.batch_limit);
        while let Ok(first) = rx.recv() {
            let Some(first) = self.live(first) else {
                continue;
            };
            // On a part of the CPU the batch waits for the part's time; what arrives
            // meanwhile joins it.
            if let Some(lane) = &self.shared.lane {
                lane.pace();
            }
            let delay =
                Duration::from_micros(self.shared.max_queue_delay_us.load(Ordering::Relaxed));
            let max = self.shared.max_batch_size.load(Ordering::Relaxed);
            let deadline = first.enqueued + delay;
            batch.push(first);
            while batch.len() < max {
                match rx.try_recv() {
                    Ok(r) => {
                        batch.extend(self.live(r));
                        continue;
                    }
                    Err(TryRecvError::Disconnected) => break,
                    Err(TryRecvError::Empty) => {}
                }
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                match rx.recv_timeout(deadline - now) {
                    Ok(r) => batch.extend(self.live(r)),
                    Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
                }
            }
            // Waiting for the batch to fill may have run some out of time.
            let now = Instant::now();
            let mut i = 0;
            while i < batch.len() {
                if batch[i].deadline.is_some_and(|d| d <= now) {
                    let r = batch.remove(i);
                    self.expire(r);
                } else {
                    i += 1;
                }
            }
            if batch.is_empty() {
                continue;
            }
            self.shared.queued.fetch_sub(batch.len(), Ordering::Relaxed);
            self.run_batch(&mut batch);
        }
    }

    /// Passes a request on, or answers it [`ServeError::TimedOut`] when its deadline has
    /// passed: it leaves the queue without being run.
    fn live(&self, r: Request) -> Option<Request> {
        let Some(deadline) = r.deadline else {
            return Some(r);
        };
        if deadline > Instant::now() {
            return Some(r);
        }
        self.expire(r);
        None
    }

    /// Takes a request whose deadline has passed out of the queue unrun and answers it.
    fn expire(&self, r: Request) {
        self.shared.queued.fetch_sub(1, Ordering::Relaxed);
        let mut stats = lock(&self.shared.stats);
        stats.expired_count += 1;
        if let Some(outcome) = lock(&r.progress).row_end(RowEnd::Expired) {
            stats.record_request(outcome);
        }
        drop(stats);
        let timeout_us = r.deadline.map_or(0, |d| {
            d.saturating_duration_since(r.enqueued).as_micros() as u64
        });
        // A waiter that already stopped at its deadline is not an error.
        let _ = r.reply.send(Err(ServeError::TimedOut {
            service: self.shared.name.clone(),
            timeout_us,
        }));
    }

    fn run_batch(&mut self, batch: &mut Vec<Request>) {
        // A lane's share sets how many workers a batch may use (large batches parallelise).
        if let Some(lane) = &self.shared.lane {
            self.backend.set_workers(lane.workers());
        }
        let start = Instant::now();
        let cpu0 = self.backend.lane_time();
        let rows = batch.len();
        let result = self.forward(batch);
        let end = Instant::now();
        let compute_us = (end - start).as_micros() as u64;
        let compute_s = (end - start).as_secs_f64();
        if let Some(lane) = &self.shared.lane {
            let cpu = self.backend.lane_time();
            lane.charge(end - start, cpu.saturating_sub(cpu0));
        }
        if result.is_ok() {
            self.record_timings(batch, start, end, compute_s);
        }
        // Statistics first, so a caller who has its answer also sees it counted.
        self.record_stats(batch, start, compute_s, &result);
        let outputs = self.shared.outputs;
        for (r, req) in batch.drain(..).enumerate() {
            let answer = match &result {
                Ok(_) => Ok(Response {
                    output: self.out[r * outputs..(r + 1) * outputs].to_vec(),
                    queue_us: start.saturating_duration_since(req.enqueued).as_micros() as u64,
                    compute_us,
                    batch_size: rows,
                }),
                Err(e) => Err(compute_error(&self.shared.name, e)),
            };
            // A caller that stopped waiting is not an error.
            let _ = req.reply.send(answer);
        }
    }

    /// Logs a successful batch for the controller and its requests' latencies in the window.
    fn record_timings(&self, batch: &[Request], start: Instant, end: Instant, compute_s: f64) {
        let mut log = lock(&self.shared.batch_log);
        if log.len() < BATCH_LOG_CAP {
            log.push((batch.len(), compute_s));
        }
        drop(log);
        let mut w = lock(&self.shared.window);
        for r in batch.iter() {
            let q = start.saturating_duration_since(r.enqueued).as_secs_f64();
            w.push(end, q, compute_s);
        }
    }

    /// Counts a batch, successful or not, in the service's statistics, and every request
    /// whose last row it answered.
    fn record_stats(
        &self,
        batch: &[Request],
        start: Instant,
        compute_s: f64,
        result: &Result<PhaseNs, ModelError>,
    ) {
        let rows = batch.len();
        let mut stats = match self.shared.stats.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        stats.batch_count += 1;
        let batch_no = stats.batch_count;
        stats.batch_hist.observe(rows as f64);
        stats.last_inference_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        match result {
            Ok(ph) => {
                if let Some(b) = stats.batch_sizes.get_mut(rows) {
                    b.count += 1;
                    b.ns.input_ns += ph.input_ns;
                    b.ns.infer_ns += ph.infer_ns;
                    b.ns.output_ns += ph.output_ns;
                }
                stats.success_rows += rows as u64;
            }
            Err(_) => stats.failure_rows += rows as u64,
        }
        for r in batch {
            let end = match result {
                Ok(phases) => RowEnd::Done {
                    batch: batch_no,
                    queue_ns: start.saturating_duration_since(r.enqueued).as_nanos() as u64,
                    phases: *phases,
                    compute_s,
                },
                Err(_) => RowEnd::Failed,
            };
            if let Some(outcome) = lock(&r.progress).row_end(end) {
                stats.record_request(outcome);
            }
        }
    }

    fn forward(&mut self, batch: &[Request]) -> Result<PhaseNs, ModelError> {
        let t0 = Instant::now();
        let rows = batch.len();
        self.staging.clear();
        for req in batch {
            self.staging.extend_from_slice(&req.input);
        }
        self.normalizer.apply(&mut self.staging);
        self.backend.write(&mut self.x_buf, &self.staging)?;
        let t1 = Instant::now();
        self.mlp
            .predict(&self.backend, &mut self.ws, &self.x_buf, rows)?;
        self.backend.synchronize()?;
        let t2 = Instant::now();
        let n = rows * self.shared.outputs;
        self.backend.read(self.ws.output(), &mut self.out[..n])?;
        let t3 = Instant::now();
        Ok(PhaseNs {
            input_ns: (t1 - t0).as_nanos() as u64,
            infer_ns: (t2 - t1).as_nanos() as u64,
            output_ns: (t3 - t2).as_nanos() as u64,
        })
    }
}
