//! A job's admission work, loading its data and measuring what a step costs, on a thread of
//! its own. The submitter waits for it under a bound and never past the node's shutdown:
//! a data set that takes too long is refused (the load is stopped at its next read), and a
//! node that is stopping abandons the admission instead of waiting for a load it will not
//! use. The submitter itself runs on a blocking thread (never an async worker), so health
//! checks are answered whatever the load does.

use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::time::{Duration, Instant};

use super::{NodeError, Placement, jobs};
use crate::config::JobConfig;
use crate::data::{Dataset, LoadStop};

/// How long a job's data may take to load at admission (an API submission, a config job at
/// start, a reload). A minute: about as long as HTTP clients and proxies wait for an answer
/// by default, and enough to read gigabytes from a local disk.
pub const DATA_LOAD_TIMEOUT: Duration = Duration::from_secs(60);

/// How often a wait looks at whether the node is stopping.
const SHUTDOWN_POLL: Duration = Duration::from_millis(50);

/// What admission learned: the data and what one step costs on the first device tried.
pub(crate) struct Measured {
    pub(crate) data: Dataset,
    pub(crate) steps_per_epoch: usize,
    pub(crate) step_cost_core_s: f64,
    /// Device memory the job's buffers took (on a GPU).
    pub(crate) device_bytes: Option<u64>,
}

/// What the admission thread reports, in order.
enum Progress {
    /// The data is in memory; the step is being measured.
    Loaded,
    /// The outcome.
    Done(Result<Measured, NodeError>),
}

/// Why a wait ended without an outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Abandoned {
    /// The data did not load within the bound.
    TimedOut,
    /// The node began to stop.
    ShuttingDown,
}

/// Loads `cfg`'s data and measures a step on `placement`, waiting at most `timeout` for the
/// data and, at any point, no longer than until `stopping()` says the node is stopping.
pub(crate) fn load_and_measure(
    cfg: &JobConfig,
    placement: &Placement,
    timeout: Duration,
    stopping: impl Fn() -> bool,
) -> Result<Measured, NodeError> {
    let stop = LoadStop::default();
    // Room for both messages: the thread never waits on a submitter that has gone.
    let (tx, rx) = sync_channel(2);
    spawn_worker(cfg.clone(), placement.clone(), stop.clone(), tx)?;
    let outcome = wait(&rx, timeout, stopping);
    if outcome.is_err() {
        stop.stop();
    }
    let refusal = match outcome {
        Ok(done) => return done,
        Err(Abandoned::TimedOut) => format!(
            "data: {} was not loaded within {} (the bound on loading a job's data at \
             submission); the load was stopped and job {} was not admitted: use a smaller \
             file or one on faster storage",
            cfg.data,
            bound_text(timeout),
            cfg.name
        ),
        Err(Abandoned::ShuttingDown) => format!(
            "the node is shutting down; job {} was not admitted and its data load was stopped",
            cfg.name
        ),
    };
    // Said in the log too: the submitter may be gone (a drained connection, a config job).
    tracing::warn!(job = %cfg.name, "{refusal}");
    Err(NodeError::Unavailable(refusal))
}

/// Starts the admission thread, detached: a submitter that stops waiting does not join it
/// (a read stuck in the kernel cannot be interrupted), and it ends at its next read.
fn spawn_worker(
    cfg: JobConfig,
    placement: Placement,
    stop: LoadStop,
    tx: SyncSender<Progress>,
) -> Result<(), NodeError> {
    std::thread::Builder::new()
        .name("setpoint-admission".into())
        .spawn(move || {
            // A submission reads a whole data set and runs training steps: at background
            // priority, so it does not take the cores from the services beside it. The cost
            // is measured in the thread's CPU time, so waiting for busier threads does not
            // inflate it.
            crate::util::priority::lower_current_thread();
            let data = crate::data::load_with_stop(&cfg.data, &Default::default(), &stop)
                .map_err(|e| NodeError::Invalid(vec![format!("data: {e}")]));
            let done = data.and_then(|data| {
                let _ = tx.send(Progress::Loaded);
                let (steps_per_epoch, step_cost_core_s, device_bytes) =
                    jobs::measure_step_cost(&cfg, &data, &placement)
                        .map_err(|e| NodeError::Invalid(vec![e.to_string()]))?;
                Ok(Measured {
                    data,
                    steps_per_epoch,
                    step_cost_core_s,
                    device_bytes,
                })
            });
            let _ = tx.send(Progress::Done(done));
        })
        .map(drop)
        .map_err(|e| NodeError::Internal(format!("cannot start a thread: {e}")))
}

/// Waits for the admission thread's outcome: at most `timeout` until the data has loaded,
/// then as long as the step takes to measure (bounded by the measurement itself); and not at
/// all once `stopping()` is true.
fn wait(
    rx: &Receiver<Progress>,
    timeout: Duration,
    stopping: impl Fn() -> bool,
) -> Result<Result<Measured, NodeError>, Abandoned> {
    let deadline = Instant::now() + timeout;
    let mut loaded = false;
    loop {
        if stopping() {
            return Err(Abandoned::ShuttingDown);
        }
        let slice = if loaded {
            SHUTDOWN_POLL
        } else {
            match deadline.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => left.min(SHUTDOWN_POLL),
                _ => return Err(Abandoned::TimedOut),
            }
        };
        match rx.recv_timeout(slice) {
            Ok(Progress::Loaded) => loaded = true,
            Ok(Progress::Done(outcome)) => return Ok(outcome),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                return Ok(Err(NodeError::Internal(
                    "the admission thread ended without an answer (it panicked)".into(),
                )));
            }
        }
    }
}

/// `60 s`, or `250 ms` for a bound that is not whole seconds.
fn bound_text(d: Duration) -> String {
    if d.subsec_millis() == 0 && d.as_secs() > 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{} ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    fn measured() -> Measured {
        Measured {
            data: crate::data::load("synthetic:spirals:size=10", &Default::default()).unwrap(),
            steps_per_epoch: 1,
            step_cost_core_s: 0.5,
            device_bytes: None,
        }
    }

    #[test]
    fn the_bound_covers_the_load_and_not_the_measurement() {
        // Nothing loaded within the bound: timed out.
        let (_tx, rx) = sync_channel::<Progress>(2);
        let got = wait(&rx, Duration::from_millis(1), || false).err();
        assert_eq!(got, Some(Abandoned::TimedOut));
        // Loaded in time: the measurement is waited for past the bound.
        let (tx, rx) = sync_channel(2);
        tx.send(Progress::Loaded).unwrap();
        let late = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            tx.send(Progress::Done(Ok(measured()))).unwrap();
        });
        let got = wait(&rx, Duration::from_millis(1), || false).ok().unwrap();
        assert_eq!(got.unwrap().steps_per_epoch, 1);
        late.join().unwrap();
    }

    #[test]
    fn a_stopping_node_is_not_waited_for_and_errors_pass_through() {
        let (tx, rx) = sync_channel::<Progress>(2);
        tx.send(Progress::Loaded).unwrap();
        let stopping = AtomicBool::new(false);
        let setter = std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(20));
                stopping.store(true, Ordering::Release);
            });
            wait(&rx, Duration::from_secs(600), || {
                stopping.load(Ordering::Acquire)
            })
        });
        assert_eq!(setter.err(), Some(Abandoned::ShuttingDown));
        let (tx, rx) = sync_channel(2);
        let refusal = NodeError::Invalid(vec!["data: bad".into()]);
        tx.send(Progress::Done(Err(refusal.clone()))).unwrap();
        let got = wait(&rx, Duration::from_secs(600), || false).ok().unwrap();
        assert_eq!(got.err(), Some(refusal));
        // A thread that died without answering is an internal error, not a hang.
        let (tx, rx) = sync_channel::<Progress>(2);
        drop(tx);
        let got = wait(&rx, Duration::from_secs(600), || false).ok().unwrap();
        assert!(matches!(got, Err(NodeError::Internal(_))));
    }

    #[test]
    fn bounds_are_written_in_their_unit() {
        assert_eq!(bound_text(Duration::from_secs(60)), "60 s");
        assert_eq!(bound_text(Duration::from_millis(250)), "250 ms");
        assert_eq!(bound_text(Duration::from_millis(1500)), "1500 ms");
    }
}
