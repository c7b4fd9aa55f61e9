//! Whether a thread is starved of CPU: it wants a core and does not get one. A thread in the
//! background (`SCHED_IDLE`, see `priority.rs`) gets only the cycles nobody else wants, so
//! while the cores are kept busy by normal-priority work (another process on the host, or
//! the daemon's own services under sustained load) it can wait for minutes. Work that
//! someone is waiting for, such as a job's admission, watches its thread with a [`Judge`] and
//! moves to normal priority once the thread is starved.
//!
//! The law: over the last [`WINDOW`], the thread was runnable (state `R`: running or waiting
//! for a core) in at least [`WANTING`] of the looks taken at it, and its CPU time grew by less
//! than [`RAN_UNDER`] of the wall time. A thread that sleeps on I/O is not runnable, so slow
//! storage is never taken for a busy CPU.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::cputime::ThreadClock;

/// How far back a judgement looks, and how long a thread must be watched before one.
pub(crate) const WINDOW: Duration = Duration::from_secs(1);
/// The share of looks in which the thread must have been runnable.
pub(crate) const WANTING: f64 = 0.8;
/// The share of the wall time under which its CPU time must have grown.
pub(crate) const RAN_UNDER: f64 = 0.25;

/// A thread that can be looked at from another thread of the process.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Watched {
    clock: ThreadClock,
    tid: i64,
}

impl Watched {
    /// The calling thread, where the platform lets it be watched (Linux).
    pub(crate) fn current() -> Option<Self> {
        #[cfg(target_os = "linux")]
        {
            // SAFETY: gettid takes no arguments and cannot fail.
            let tid = unsafe { libc::syscall(libc::SYS_gettid) };
            Some(Watched {
                clock: ThreadClock::current()?,
                tid,
            })
        }
        #[cfg(not(target_os = "linux"))]
        {
            None
        }
    }

    /// One look at the thread now; None once it has exited or where it cannot be read.
    pub(crate) fn look(&self) -> Option<Look> {
        let stat = std::fs::read_to_string(format!("/proc/self/task/{}/stat", self.tid)).ok()?;
        Some(Look {
            at: Instant::now(),
            runnable: runnable(&stat)?,
            cpu: self.clock.read()?,
        })
    }
}

/// Whether a `/proc/…/stat` line says the thread is runnable. The state follows the command
/// name, which is in parentheses and may itself hold spaces and parentheses.
fn runnable(stat: &str) -> Option<bool> {
    let after = &stat[stat.rfind(')')? + 1..];
    Some(after.split_whitespace().next()? == "R")
}

/// What one look at a thread saw.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Look {
    pub(crate) at: Instant,
    pub(crate) runnable: bool,
    /// The CPU time the thread had used by then.
    pub(crate) cpu: Duration,
}

/// What the looks of the last window add up to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Share {
    /// The wall time the looks span.
    pub(crate) span: Duration,
    /// The thread's CPU time over that span, as a share of it.
    pub(crate) ran: f64,
    /// The share of looks in which it was runnable.
    pub(crate) wanting: f64,
}

impl Share {
    /// Whether the thread wanted a core and did not get one (the module's law).
    pub(crate) fn starved(&self) -> bool {
        self.wanting >= WANTING && self.ran < RAN_UNDER
    }
}

/// Keeps the looks at one thread over the last [`WINDOW`] and judges them.
#[derive(Debug, Default)]
pub(crate) struct Judge {
    looks: VecDeque<Look>,
}

impl Judge {
    /// Adds a look, which must not be older than the last one.
    pub(crate) fn look(&mut self, l: Look) {
        self.looks.push_back(l);
        // Keep the newest look at or before the window's start, so the window stays spanned.
        while self.looks.len() > 2 && l.at.duration_since(self.looks[1].at) >= WINDOW {
            self.looks.pop_front();
        }
    }

    /// The last window's share; None until the looks span a whole window.
    pub(crate) fn share(&self) -> Option<Share> {
        let (first, last) = (self.looks.front()?, self.looks.back()?);
        let span = last.at.duration_since(first.at);
        if span < WINDOW {
            return None;
        }
        let ran = last.cpu.saturating_sub(first.cpu).as_secs_f64() / span.as_secs_f64();
        // The first look stands for the moment the window opens, not for a look inside it.
        let inside = self.looks.iter().skip(1);
        let wanting = inside.clone().filter(|l| l.runnable).count() as f64 / inside.count() as f64;
        Some(Share { span, ran, wanting })
    }

    /// Whether the thread is starved, by the last window's share.
    pub(crate) fn starved(&self) -> bool {
        self.share().is_some_and(|s| s.starved())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn looks(start: Instant, every_ms: u64, seq: &[(bool, u64)]) -> Judge {
        let mut j = Judge::default();
        for (i, &(runnable, cpu_ms)) in seq.iter().enumerate() {
            j.look(Look {
                at: start + Duration::from_millis(every_ms * i as u64),
                runnable,
                cpu: Duration::from_millis(cpu_ms),
            });
        }
        j
    }

    #[test]
    fn a_thread_waiting_for_a_core_is_starved_once_a_window_is_spanned() {
        let t0 = Instant::now();
        // Runnable throughout, 2 ms of CPU a look of 100 ms.
        let seq: Vec<_> = (0..=10).map(|i| (true, 2 * i)).collect();
        let j = looks(t0, 100, &seq[..10]);
        assert_eq!(j.share(), None, "0.9 s is not a window");
        assert!(!j.starved());
        let j = looks(t0, 100, &seq);
        let s = j.share().unwrap();
        assert_eq!(s.span, WINDOW);
        assert!((s.ran - 0.02).abs() < 1e-9, "{s:?}");
        assert_eq!(s.wanting, 1.0);
        assert!(j.starved());
    }

    #[test]
    fn a_running_or_sleeping_thread_is_not_starved() {
        let t0 = Instant::now();
        // Running: runnable, and its CPU time keeps up with the clock.
        let running: Vec<_> = (0..=10).map(|i| (true, 100 * i)).collect();
        assert!(!looks(t0, 100, &running).starved());
        // Half a core is enough not to be starved.
        let half: Vec<_> = (0..=10).map(|i| (true, 50 * i)).collect();
        assert!(!looks(t0, 100, &half).starved());
        // Sleeping on a read: no CPU, but not runnable either (slow storage).
        let sleeping: Vec<_> = (0..=10).map(|i| (i % 5 == 0, i)).collect();
        let j = looks(t0, 100, &sleeping);
        assert!(j.share().unwrap().wanting < WANTING);
        assert!(!j.starved());
    }

    #[test]
    fn only_the_last_window_counts() {
        let t0 = Instant::now();
        // Starved for 2 s, then running for 1.5 s: no longer starved.
        let mut seq: Vec<_> = (0..=20).map(|i| (true, i)).collect();
        seq.extend((1..=15).map(|i| (true, 20 + 100 * i)));
        let j = looks(t0, 100, &seq);
        assert!(!j.starved(), "{:?}", j.share());
        assert_eq!(j.share().unwrap().span, WINDOW);
        // Running for 2 s, then starved for 1 s: starved.
        let mut seq: Vec<_> = (0..=20).map(|i| (true, 100 * i)).collect();
        seq.extend((1..=10).map(|i| (true, 2000 + i)));
        assert!(looks(t0, 100, &seq).starved());
    }

    #[test]
    fn the_state_is_read_after_the_command_name() {
        assert_eq!(runnable("12 (setpoint) R 1 2 3"), Some(true));
        assert_eq!(runnable("12 (a) S (b) R) S 1 2"), Some(false));
        assert_eq!(runnable("12 (x) D 1"), Some(false));
        assert_eq!(runnable("garbage"), None);
    }

    #[test]
    fn a_busy_thread_is_seen_running_and_an_exited_one_is_not_seen() {
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            tx.send(Watched::current()).unwrap();
            // Spins until told to stop.
            while done_rx.try_recv().is_err() {
                std::hint::spin_loop();
            }
        });
        let Some(w) = rx.recv().unwrap() else {
            println!("skipped: threads cannot be watched on this platform");
            t.join().unwrap();
            return;
        };
        let first = w.look().expect("a live thread can be looked at");
        // On a busy machine the spinning thread may wait a while for a core.
        let deadline = Instant::now() + Duration::from_secs(30);
        let second = loop {
            std::thread::sleep(Duration::from_millis(10));
            let l = w.look().unwrap();
            if l.cpu > first.cpu || Instant::now() > deadline {
                break l;
            }
        };
        assert!(second.cpu > first.cpu, "{first:?} {second:?}");
        assert!(second.at > first.at);
        done_tx.send(()).unwrap();
        t.join().unwrap();
        assert_eq!(w.look(), None);
    }
}
