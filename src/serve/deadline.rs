//! Deadlines of the requests callers wait on asynchronously, kept by one thread.
//!
//! A waiter could arm a runtime timer of its own, and did: `tokio::time::timeout_at` per
//! request. But tokio's timer wakes its I/O driver (a write to its eventfd, then an extra
//! return from `epoll_wait`) whenever a new timer is due before the driver's next planned
//! wake-up, which is nearly every request: the one before it was answered and took its timer
//! away. That was about one syscall per request, on the I/O thread that serves them all.
//!
//! Here one thread sleeps until the earliest registered deadline and wakes the waiters whose
//! deadline has passed. Registering and unregistering take a lock and touch an ordered map;
//! the thread is woken only when a deadline arrives that is earlier than the one it sleeps
//! until, which uniform timeouts make rare (later requests have later deadlines). A waiter
//! answered before its deadline unregisters itself, so the thread's planned wake-up may find
//! nothing due: it then sleeps until the new earliest deadline, which bounds its wake-ups to
//! about one per timeout when the waiters are answered in time.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use crate::util::sync::{lock, wait_timeout};

/// A registered deadline: when, and a number that tells apart waiters with the same one.
type Key = (Instant, u64);

/// The deadlines and the thread that watches them.
pub(super) struct Deadlines {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
    /// Signalled when the thread must look again: an earlier deadline, or closing.
    changed: Condvar,
}

#[derive(Default)]
struct State {
    due: BTreeMap<Key, Waker>,
    next_id: u64,
    /// When the thread plans to look next; `None` while it waits for a first deadline.
    planned: Option<Instant>,
    closed: bool,
}

/// The process's deadlines, started on first use.
pub(super) fn global() -> &'static Deadlines {
    static GLOBAL: OnceLock<Deadlines> = OnceLock::new();
    GLOBAL.get_or_init(Deadlines::start)
}

impl Deadlines {
    /// Starts the thread. It stops when this is dropped.
    pub(super) fn start() -> Deadlines {
        let inner = Arc::new(Inner {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        });
        let watched = inner.clone();
        std::thread::Builder::new()
            .name("setpoint-deadlines".into())
            .spawn(move || watched.watch())
            .expect("spawning the deadline thread");
        Deadlines { inner }
    }

    /// A future that completes at `at`.
    pub(super) fn at(&self, at: Instant) -> Expiry<'_> {
        Expiry {
            deadlines: self,
            at,
            key: None,
        }
    }

    /// How many waiters are registered now.
    #[cfg(test)]
    fn registered(&self) -> usize {
        lock(&self.inner.state).due.len()
    }
}

impl Drop for Deadlines {
    fn drop(&mut self) {
        lock(&self.inner.state).closed = true;
        self.inner.changed.notify_one();
    }
}

impl Inner {
    /// The thread's loop: wake what is due, then sleep until the earliest deadline left.
    fn watch(&self) {
        let mut woken = Vec::new();
        let mut state = lock(&self.state);
        while !state.closed {
            let now = Instant::now();
            while let Some(entry) = state.due.first_entry() {
                if entry.key().0 > now {
                    break;
                }
                woken.push(entry.remove());
            }
            state.planned = state.due.first_key_value().map(|(k, _)| k.0);
            if !woken.is_empty() {
                drop(state);
                woken.drain(..).for_each(Waker::wake);
                state = lock(&self.state);
                continue;
            }
            state = match state.planned {
                Some(at) => wait_timeout(&self.changed, state, at - now).0,
                None => self.changed.wait(state).unwrap_or_else(|p| p.into_inner()),
            };
        }
    }
}

/// Completes at its deadline; registered with the thread while it is polled and pending.
pub(super) struct Expiry<'a> {
    deadlines: &'a Deadlines,
    at: Instant,
    key: Option<Key>,
}

impl Future for Expiry<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if Instant::now() >= this.at {
            this.unregister();
            return Poll::Ready(());
        }
        let inner = &this.deadlines.inner;
        let mut state = lock(&inner.state);
        let key = match this.key {
            Some(key) => key,
            None => {
                state.next_id += 1;
                let key = (this.at, state.next_id);
                this.key = Some(key);
                key
            }
        };
        match state.due.get_mut(&key) {
            Some(w) if w.will_wake(cx.waker()) => {}
            Some(w) => w.clone_from(cx.waker()),
            None => {
                state.due.insert(key, cx.waker().clone());
            }
        }
        // The thread sleeps until `planned`; only an earlier deadline needs it awake.
        if state.planned.is_none_or(|p| this.at < p) {
            state.planned = Some(this.at);
            drop(state);
            inner.changed.notify_one();
        }
        Poll::Pending
    }
}

impl Expiry<'_> {
    fn unregister(&mut self) {
        if let Some(key) = self.key.take() {
            lock(&self.deadlines.inner.state).due.remove(&key);
        }
    }
}

impl Drop for Expiry<'_> {
    fn drop(&mut self) {
        self.unregister();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
    }

    #[test]
    fn a_waiter_wakes_at_its_deadline_and_not_before() {
        let d = Deadlines::start();
        let t0 = Instant::now();
        let at = t0 + Duration::from_millis(30);
        runtime().block_on(d.at(at));
        let woke = Instant::now();
        assert!(woke >= at, "woke {:?} before its deadline", at - woke);
        assert_eq!(d.registered(), 0, "an expired waiter leaves nothing behind");
    }

    #[test]
    fn an_earlier_deadline_registered_later_wakes_first() {
        let d = Deadlines::start();
        let t0 = Instant::now();
        let late = d.at(t0 + Duration::from_secs(30));
        let early = t0 + Duration::from_millis(20);
        let order = runtime().block_on(async {
            tokio::select! {
                biased;
                _ = late => "late",
                _ = d.at(early) => "early",
            }
        });
        assert_eq!(order, "early");
        assert!(Instant::now() >= early);
        // The late waiter was dropped with the select: it unregistered itself.
        assert_eq!(d.registered(), 0);
    }

    #[test]
    fn waiters_answered_in_time_unregister_and_the_next_ones_still_wake() {
        let d = Deadlines::start();
        let rt = runtime();
        for _ in 0..100 {
            // Answered at once: polled once (registered), then dropped.
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            tx.send(()).unwrap();
            rt.block_on(async {
                let far = d.at(Instant::now() + Duration::from_secs(60));
                tokio::select! {
                    _ = far => panic!("the far deadline fired"),
                    _ = async {
                        tokio::task::yield_now().await;
                        rx.await.unwrap()
                    } => {}
                }
            });
        }
        assert_eq!(d.registered(), 0);
        // The thread planned its wake for the first far deadline; a near one still fires.
        let at = Instant::now() + Duration::from_millis(10);
        rt.block_on(d.at(at));
        assert!(Instant::now() >= at);
    }

    #[test]
    fn many_waiters_each_wake_at_their_own_deadline() {
        let d = Arc::new(Deadlines::start());
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        let t0 = Instant::now();
        let tasks: Vec<_> = (0..200u64)
            .map(|i| {
                let d = d.clone();
                // Out of order: deadlines from 5 to 54 ms, four waiters on each.
                let at = t0 + Duration::from_millis(5 + (i * 37) % 50);
                rt.spawn(async move {
                    d.at(at).await;
                    Instant::now() >= at
                })
            })
            .collect();
        for t in tasks {
            assert!(rt.block_on(t).unwrap(), "a waiter woke before its deadline");
        }
        assert_eq!(d.registered(), 0);
    }

    #[test]
    fn a_deadline_already_past_completes_without_registering() {
        let d = Deadlines::start();
        let mut expiry = d.at(Instant::now());
        let mut cx = Context::from_waker(Waker::noop());
        assert!(Pin::new(&mut expiry).poll(&mut cx).is_ready());
        // Checked while the future lives: its drop would unregister it anyway.
        assert_eq!(d.registered(), 0);
    }
}
