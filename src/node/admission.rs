//! A job's admission work, loading its data and measuring what a step costs, on threads of
//! its own. The submitter waits for it under a bound and never past the node's shutdown:
//! a data set that takes too long is refused (the load is stopped at its next read), and a
//! node that is stopping abandons the admission instead of waiting for a load it will not
//! use. The submitter itself runs on a blocking thread (never an async worker), so health
//! checks are answered whatever the load does.
//!
//! The load runs in the background (`SCHED_IDLE`), so reading and parsing a data set takes no
//! core from the services beside it. Someone is waiting for it, though, and a background
//! thread gets nothing while normal-priority work keeps every core busy. So the submitter
//! watches it (`util::starvation`): once it has wanted a core and run under a quarter of the
//! time for a second, the load starts again at normal priority, the first to finish is taken
//! and the other is stopped at its next read. The measured steps then run at normal priority
//! on a thread of their own: they are few (about 200 ms after one for warm-up), and a starved
//! measurement could only be rescued by building the model twice, which would take its memory
//! twice and have two measurements share the device.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::time::{Duration, Instant};

use super::{NodeError, Placement, jobs};
use crate::config::JobConfig;
use crate::data::{Dataset, LoadStop};
use crate::util::starvation::{Judge, Look, Share, Watched};

/// How long a job's data may take to load at admission (an API submission, a config job at
/// start, a reload). A minute: about as long as HTTP clients and proxies wait for an answer
/// by default, and enough to read gigabytes from a local disk.
pub(crate) const DATA_LOAD_TIMEOUT: Duration = Duration::from_secs(60);

/// How often a wait looks at whether the node is stopping and at the loading thread.
const POLL: Duration = Duration::from_millis(50);

/// What admission learned: the data and what one step costs on the first device tried.
pub(crate) struct Measured {
    pub(crate) data: Dataset,
    pub(crate) steps_per_epoch: usize,
    pub(crate) step_cost_core_s: f64,
    /// How many workers a step could use, when the backend knows.
    pub(crate) width: Option<crate::device::Width>,
    /// Device memory the job's buffers took (on a GPU).
    pub(crate) device_bytes: Option<u64>,
}

/// Which of the admission's loading threads a report comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attempt {
    /// The first, in the background.
    Background,
    /// The same load at normal priority, started when the first is starved.
    Normal,
}

/// What the admission's threads report.
enum Progress {
    /// A loading thread runs; how to watch it (None where the platform cannot).
    Started(Attempt, Option<Watched>),
    /// A load's outcome.
    Loaded(Result<Dataset, NodeError>),
    /// The measurement's outcome.
    Measured(Result<Measured, NodeError>),
}

/// Why a wait ended without an outcome.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Abandoned {
    /// The data did not load within the bound; the last window of the thread watched then.
    TimedOut(Option<Share>),
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
    // Room for every message of every thread: none waits on a submitter that has gone.
    let (tx, rx) = sync_channel(5);
    spawn_loader(cfg, &stop, tx.clone(), Attempt::Background)?;
    let again = tx.clone();
    let threads = Threads {
        rescue: || {
            tracing::info!(
                job = %cfg.name,
                "the job's data load is starved of CPU in the background; it goes on at \
                 normal priority"
            );
            spawn_loader(cfg, &stop, again, Attempt::Normal)
        },
        measure: |data| {
            // The other load, if any, is not needed any more.
            stop.stop();
            spawn_measurer(cfg, placement, data, tx)
        },
    };
    let outcome = wait(&rx, timeout, stopping, threads, Watched::look);
    // A load that was not taken stops at its next read.
    stop.stop();
    let refusal = match outcome {
        Ok(done) => return done,
        Err(Abandoned::TimedOut(share)) => timed_out(cfg, timeout, share),
        Err(Abandoned::ShuttingDown) => format!(
            "the node is shutting down; job {} was not admitted and its data load was stopped",
            cfg.name
        ),
    };
    // Said in the log too: the submitter may be gone (a drained connection, a config job).
    tracing::warn!(job = %cfg.name, "{refusal}");
    Err(NodeError::Unavailable(refusal))
}

/// Why a load that overran its bound was refused: busy cores when the thread loading it
/// was starved, or else the storage.
fn timed_out(cfg: &JobConfig, timeout: Duration, share: Option<Share>) -> String {
    let head = format!(
        "data: {} was not loaded within {} (the bound on loading a job's data at submission); \
         the load was stopped and job {} was not admitted",
        cfg.data,
        bound_text(timeout),
        cfg.name
    );
    match share {
        Some(s) if s.starved() => format!(
            "{head}: the node's cores are busy: the load ran {:.0} % of its last {:.1} s, \
             waiting for a core the rest of the time; retry when the node is less loaded",
            s.ran * 100.0,
            s.span.as_secs_f64()
        ),
        _ => format!("{head}: use a smaller file or one on faster storage"),
    }
}

/// Starts a thread that loads the data, detached: a submitter that stops waiting does not
/// join it (a read stuck in the kernel cannot be interrupted), and it ends at its next read.
fn spawn_loader(
    cfg: &JobConfig,
    stop: &LoadStop,
    tx: SyncSender<Progress>,
    attempt: Attempt,
) -> Result<(), NodeError> {
    let (spec, stop) = (cfg.data.clone(), stop.clone());
    spawn(&cfg.name, move || {
        let _ = tx.send(Progress::Started(attempt, Watched::current()));
        if attempt == Attempt::Background {
            crate::util::priority::lower_current_thread();
        }
        let data = caught(|| {
            crate::data::load_with_stop(&spec, &Default::default(), &stop)
                .map_err(|e| NodeError::Invalid(vec![format!("data: {e}")]))
        });
        let _ = tx.send(Progress::Loaded(data));
    })
}

/// Starts the thread that measures a few steps of the job on `data`, at normal priority.
/// The cost is the thread's CPU time (or the GPU's busy time), so waiting for busier threads
/// does not inflate it.
fn spawn_measurer(
    cfg: &JobConfig,
    placement: &Placement,
    data: Dataset,
    tx: SyncSender<Progress>,
) -> Result<(), NodeError> {
    let (job, cfg, placement) = (cfg.name.clone(), cfg.clone(), placement.clone());
    spawn(&job, move || {
        let measured = caught(|| {
            jobs::measure_step_cost(&cfg, &data, &placement)
                .map_err(|e| NodeError::Invalid(vec![e.to_string()]))
        });
        let _ = tx.send(Progress::Measured(measured.map(|m| Measured {
            data,
            steps_per_epoch: m.steps_per_epoch,
            step_cost_core_s: m.cost,
            width: m.width,
            device_bytes: m.device_bytes,
        })));
    })
}

/// Starts an admission thread of job `job`, named `admit-JOB` (as `top -H` shows it, the
/// first 15 bytes).
fn spawn(job: &str, f: impl FnOnce() + Send + 'static) -> Result<(), NodeError> {
    std::thread::Builder::new()
        .name(format!("admit-{job}"))
        .spawn(f)
        .map(drop)
        .map_err(|e| NodeError::Internal(format!("cannot start a thread: {e}")))
}

/// `f`'s outcome, or an internal error if it panicked: the submitter always gets an answer.
fn caught<T>(f: impl FnOnce() -> Result<T, NodeError>) -> Result<T, NodeError> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| {
        Err(NodeError::Internal(
            "the admission thread panicked before answering".into(),
        ))
    })
}

/// What a wait starts: the load again at normal priority, and the measurement.
struct Threads<R, M> {
    rescue: R,
    measure: M,
}

/// Waits for an admission's outcome: at most `timeout` until the data has loaded, then as
/// long as the step takes to measure (bounded by the measurement itself); and not at all
/// once `stopping()` is true. Watches the loading thread with `look` and starts the load
/// again (once) when it is starved, watching the new one from then on.
fn wait<R, M>(
    rx: &Receiver<Progress>,
    timeout: Duration,
    stopping: impl Fn() -> bool,
    threads: Threads<R, M>,
    look: impl Fn(&Watched) -> Option<Look>,
) -> Result<Result<Measured, NodeError>, Abandoned>
where
    R: FnOnce() -> Result<(), NodeError>,
    M: FnOnce(Dataset) -> Result<(), NodeError>,
{
    let deadline = Instant::now() + timeout;
    let (mut rescue, mut measure) = (Some(threads.rescue), Some(threads.measure));
    let mut watched: Option<Watched> = None;
    let mut judge = Judge::default();
    loop {
        if stopping() {
            return Err(Abandoned::ShuttingDown);
        }
        let loading = measure.is_some();
        let slice = if !loading {
            POLL
        } else {
            match deadline.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => left.min(POLL),
                _ => return Err(Abandoned::TimedOut(judge.share())),
            }
        };
        match rx.recv_timeout(slice) {
            // The rescue's thread is watched from its start; the first's until then.
            Ok(Progress::Started(attempt, w)) if attempt == Attempt::Normal || rescue.is_some() => {
                (watched, judge) = (w, Judge::default());
            }
            Ok(Progress::Started(..)) => {}
            Ok(Progress::Loaded(Ok(data))) => {
                if let Some(start) = measure.take() {
                    if let Err(e) = start(data) {
                        return Ok(Err(e));
                    }
                    watched = None;
                }
            }
            // A load that failed before any other finished: the data's error. (One that fails
            // later was stopped once the other's data was taken.)
            Ok(Progress::Loaded(Err(e))) if loading => return Ok(Err(e)),
            Ok(Progress::Loaded(Err(_))) => {}
            Ok(Progress::Measured(outcome)) => return Ok(outcome),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                return Ok(Err(NodeError::Internal(
                    "the admission's threads ended without an answer".into(),
                )));
            }
        }
        if let Some(l) = watched.as_ref().and_then(&look) {
            judge.look(l);
        }
        if judge.starved()
            && let Some(start) = rescue.take()
        {
            match start() {
                Ok(()) => (watched, judge) = (None, Judge::default()),
                // The first load goes on; it is not watched any more.
                Err(e) => tracing::warn!("cannot start the data load again: {e}"),
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
#[path = "admission_tests.rs"]
mod tests;
