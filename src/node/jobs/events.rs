//! A job's log: what happened to it, in order (accepted, loading, running, each epoch, its
//! share moving, a user's changes, checkpoint trouble, how it ended), each event numbered so
//! that a client can follow it by asking for what came after the last number it saw
//! (`GET /v1/jobs/{id}/events?after=N`, `setpoint jobs logs ID --follow`).
//!
//! Events are kept in memory (the last [`KEEP`]) and appended, one JSON object a line, to
//! `events.jsonl` in the job's directory, so that the log survives a restart. The file is
//! the log's history, not a record the job depends on: a write that fails is said once in
//! the daemon's log and the job goes on, and a line torn by a crash is skipped when read.

use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::{JobOutcome, JobState, JobStopReason};
use crate::util::sync::lock;

/// The log's file, in the job's directory.
pub(crate) const EVENTS_FILE: &str = "events.jsonl";

/// Events kept in memory; older ones are read from the file by no one (a client gets the
/// last [`KEEP`]).
pub const KEEP: usize = 10_000;

/// Lines the file may grow to; past it, events are kept in memory only. Epoch events come
/// once an epoch and share events when the share moves by [`SHARE_STEP`], so a job meets
/// the bound only after tens of thousands of epochs.
const FILE_LINES: u64 = 100_000;

/// How far a job's share must move from the last share logged to be logged again.
pub const SHARE_STEP: f64 = 0.1;

/// One event of a job's log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobEvent {
    /// Its number in the job's log, from 1, without gaps.
    pub seq: u64,
    /// When it happened, RFC 3339.
    pub at: String,
    /// What happened.
    #[serde(flatten)]
    pub kind: JobEventKind,
}

/// What happened to a job, by the `event` field of its JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum JobEventKind {
    /// Admitted: where it runs, at what share, and what it must meet.
    Submitted {
        /// `cpu` or `cuda:N`.
        device: String,
        /// The share it was admitted at.
        share: f64,
        /// RFC 3339.
        deadline: Option<String>,
        /// Target validation accuracy.
        target_accuracy: Option<f64>,
        /// Epoch limit.
        epochs: u32,
    },
    /// Loading its data.
    Loading,
    /// Taking steps: from the start, or from a checkpoint (`epochs_done` > 0).
    Running {
        /// Epochs already done (resumed from a checkpoint when > 0).
        epochs_done: u32,
        /// Steps already taken.
        steps: u64,
        /// Steps per epoch.
        batches_per_epoch: usize,
        /// The number format of its matrix products.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        precision: Option<crate::device::Precision>,
    },
    /// An epoch ended.
    Epoch {
        /// 1-based.
        epoch: u32,
        /// The epoch limit in force.
        epochs_max: u32,
        /// Mean training loss over the epoch.
        train_loss: f64,
        /// Validation accuracy after it.
        val_accuracy: Option<f64>,
        /// The lane's share when it ended.
        share: f64,
        /// Training samples per second, recent.
        samples_per_s: f64,
    },
    /// The controller moved its share by at least [`SHARE_STEP`].
    Share {
        /// The share logged last.
        from: f64,
        /// The share now.
        to: f64,
    },
    /// A user changed its deadline, target or epoch limit (`null`: cleared).
    Updated {
        /// The new deadline, RFC 3339, when it changed.
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            deserialize_with = "crate::node::store::nullable"
        )]
        deadline: Option<Option<String>>,
        /// The new target, when it changed.
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            deserialize_with = "crate::node::store::nullable"
        )]
        target_accuracy: Option<Option<f64>>,
        /// The new epoch limit, when it changed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        epochs: Option<u32>,
    },
    /// A user asked it to stop; it stops after its current step.
    CancelRequested,
    /// Its deadline passed before it finished.
    DeadlinePassed {
        /// True when it was stopped (`control.past_deadline = "stop"`), false when it runs
        /// on as best-effort.
        stopped: bool,
    },
    /// A checkpoint could not be written (the first failure of a run of them).
    CheckpointFailed {
        /// Why.
        error: String,
    },
    /// A checkpoint was written again after failures.
    CheckpointRecovered,
    /// The daemon stopped; the job resumes from its last checkpoint at the next start.
    Interrupted,
    /// The daemon started again and found the job in its state dir.
    Restored {
        /// Its state then (`pending` when it resumes).
        state: JobState,
    },
    /// It ended.
    Ended {
        /// `completed`, `failed` or `cancelled`.
        state: JobState,
        /// Why it stopped.
        stop_reason: Option<JobStopReason>,
        /// Why it failed.
        error: Option<String>,
        /// How it fared against its deadline and target.
        outcome: JobOutcome,
    },
}

/// A page of a job's log, as `GET /v1/jobs/{id}/events?after=N` answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobEventPage {
    /// The job.
    pub job: String,
    /// The events numbered above `after`, oldest first.
    pub events: Vec<JobEvent>,
    /// The number the next event will have: ask for `after = next - 1` to follow on.
    pub next: u64,
    /// True once the job has ended: its last event is in the log, and no more will come.
    pub ended: bool,
}

/// Events one answer carries at most.
pub const PAGE: usize = 1000;

/// A job's log: the last [`KEEP`] events, and the file they are appended to.
#[derive(Debug)]
pub struct JobLog {
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    events: VecDeque<JobEvent>,
    next_seq: u64,
    file: PathBuf,
    lines: u64,
    write_failed: bool,
    last_share: Option<f64>,
}

impl JobLog {
    /// The log of the job in `dir`: what its file holds (nothing for a new job).
    pub fn open(dir: &Path) -> JobLog {
        let file = dir.join(EVENTS_FILE);
        let all = read_events(&file);
        let lines = all.len() as u64;
        let next_seq = all.last().map_or(1, |e| e.seq + 1);
        let skip = all.len().saturating_sub(KEEP);
        JobLog {
            inner: Mutex::new(Inner {
                events: all.into_iter().skip(skip).collect(),
                next_seq,
                file,
                lines,
                write_failed: false,
                last_share: None,
            }),
        }
    }

    /// Adds an event, now.
    pub fn push(&self, kind: JobEventKind) {
        let mut inner = lock(&self.inner);
        inner.push(kind, SystemTime::now());
    }

    /// Logs `share` when it moved by at least [`SHARE_STEP`] from the share logged last (the
    /// first share seen is taken as the starting point, not logged).
    pub fn note_share(&self, share: f64) {
        let mut inner = lock(&self.inner);
        match inner.last_share {
            None => inner.last_share = Some(share),
            Some(from) if (share - from).abs() >= SHARE_STEP - 1e-9 => {
                inner.last_share = Some(share);
                inner.push(Share { from, to: share }, SystemTime::now());
            }
            Some(_) => {}
        }
    }

    /// The events numbered above `after`, oldest first, at most `limit` of them; and the
    /// number the next event will have.
    pub fn since(&self, after: u64, limit: usize) -> (Vec<JobEvent>, u64) {
        let inner = lock(&self.inner);
        let events = inner
            .events
            .iter()
            .filter(|e| e.seq > after)
            .take(limit)
            .cloned()
            .collect();
        (events, inner.next_seq)
    }
}

use JobEventKind::Share;

impl Inner {
    fn push(&mut self, kind: JobEventKind, at: SystemTime) {
        let event = JobEvent {
            seq: self.next_seq,
            at: crate::config::format_rfc3339(at),
            kind,
        };
        self.next_seq += 1;
        self.append(&event);
        if self.events.len() == KEEP {
            self.events.pop_front();
        }
        self.events.push_back(event);
    }

    /// Appends `event` to the file as one line, in one write; a failure is said once.
    fn append(&mut self, event: &JobEvent) {
        if self.lines >= FILE_LINES {
            return;
        }
        let written = serde_json::to_string(event)
            .map_err(std::io::Error::other)
            .and_then(|mut line| {
                line.push('\n');
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.file)?
                    .write_all(line.as_bytes())
            });
        match written {
            Ok(()) => self.lines += 1,
            Err(e) if !self.write_failed => {
                self.write_failed = true;
                tracing::warn!(
                    file = %self.file.display(),
                    "cannot append to the job's event log: {e}; events are kept in memory"
                );
            }
            Err(_) => {}
        }
    }
}

/// The events in `file`, in order; lines that do not read (one torn by a crash) are
/// skipped, and so is an event whose number does not follow the one before.
fn read_events(file: &Path) -> Vec<JobEvent> {
    let Ok(text) = std::fs::read_to_string(file) else {
        return Vec::new();
    };
    let mut out: Vec<JobEvent> = Vec::new();
    for line in text.lines() {
        if let Ok(e) = serde_json::from_str::<JobEvent>(line)
            && out.last().is_none_or(|last| e.seq > last.seq)
        {
            out.push(e);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn epoch(n: u32) -> JobEventKind {
        JobEventKind::Epoch {
            epoch: n,
            epochs_max: 10,
            train_loss: 0.5,
            val_accuracy: Some(0.9),
            share: 0.3,
            samples_per_s: 100.0,
        }
    }

    #[test]
    fn events_are_numbered_and_read_back_after_a_restart() {
        let d = tempfile::tempdir().unwrap();
        let log = JobLog::open(d.path());
        log.push(JobEventKind::Loading);
        log.push(epoch(1));
        let (events, next) = log.since(0, 100);
        assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(next, 3);
        assert_eq!(log.since(1, 100).0, events[1..]);
        // A crash tore the last line: it is skipped, and numbering goes on after the last
        // whole one.
        let path = d.path().join(EVENTS_FILE);
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"{\"seq\":3,\"at\":\"2026-").unwrap();
        let again = JobLog::open(d.path());
        assert_eq!(again.since(0, 100).0, events);
        again.push(JobEventKind::Interrupted);
        let (after, next) = again.since(2, 100);
        assert_eq!(after.len(), 1);
        assert_eq!((after[0].seq, next), (3, 4));
    }

    #[test]
    fn the_json_names_each_event() {
        let e = JobEvent {
            seq: 7,
            at: "2026-12-03T13:04:29Z".into(),
            kind: JobEventKind::Updated {
                deadline: Some(None),
                target_accuracy: None,
                epochs: Some(20),
            },
        };
        let text = serde_json::to_string(&e).unwrap();
        assert_eq!(
            text,
            r#"{"seq":7,"at":"2026-12-03T13:04:29Z","event":"updated","deadline":null,"epochs":20}"#
        );
        assert_eq!(serde_json::from_str::<JobEvent>(&text).unwrap(), e);
    }

    #[test]
    fn a_share_is_logged_when_it_moves_by_a_step() {
        let d = tempfile::tempdir().unwrap();
        let log = JobLog::open(d.path());
        for s in [0.30, 0.35, 0.39, 0.40, 0.45, 0.25] {
            log.note_share(s);
        }
        let moves: Vec<(f64, f64)> = log
            .since(0, 100)
            .0
            .into_iter()
            .map(|e| match e.kind {
                JobEventKind::Share { from, to } => (from, to),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(moves, [(0.30, 0.40), (0.40, 0.25)]);
    }

    #[test]
    fn memory_keeps_the_last_events_and_a_limit_bounds_an_answer() {
        let d = tempfile::tempdir().unwrap();
        let log = JobLog::open(d.path());
        for n in 0..(KEEP as u32 + 5) {
            log.push(epoch(n));
        }
        let (all, next) = log.since(0, usize::MAX);
        assert_eq!(all.len(), KEEP);
        assert_eq!(all[0].seq, 6);
        assert_eq!(next, KEEP as u64 + 6);
        assert_eq!(log.since(0, 3).0.len(), 3);
        // A restart reads the same last events from the file.
        let again = JobLog::open(d.path());
        assert_eq!(again.since(0, usize::MAX).0, all);
    }
}
