//! A future polled only after its own waker was woken.
//!
//! A task that drives several futures (a connection and its calls, in one `select!`) polls
//! every one of them whenever any of them wakes it. For hyper's HTTP/2 connection that is not
//! free: each poll looks at the socket, the stream queues and the expired resets, even when
//! only a call was woken by its batcher. [`Woken`] gives the future a waker of its own, and
//! skips the poll while it has not been woken since the last one; the future cannot tell the
//! difference, since polling a future that was not woken must not be needed for it to make
//! progress.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

/// `F`, polled only when woken (and on its first poll).
pub(super) struct Woken<F> {
    inner: Pin<Box<F>>,
    signal: Arc<Signal>,
    /// The waker handed to `inner`: made once, it wakes `signal`.
    waker: Waker,
}

/// Whether the inner future was woken since its last poll, and the task to wake then.
struct Signal {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Signal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl<F: Future> Woken<F> {
    pub(super) fn new(inner: F) -> Self {
        let signal = Arc::new(Signal {
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        Woken {
            inner: Box::pin(inner),
            waker: Waker::from(signal.clone()),
            signal,
        }
    }

    /// Until the next poll, a wake of the inner future only marks it woken and wakes no
    /// task: for a task that polls it later in the same pass anyway.
    pub(super) fn hush(&self) {
        drop(self.signal.task.take());
    }

    /// The inner future, to call its methods: it is polled at the next poll, since a method
    /// may give it work without waking it.
    pub(super) fn get_mut(&mut self) -> Pin<&mut F> {
        self.signal.woken.store(true, Ordering::Release);
        self.inner.as_mut()
    }
}

impl<F: Future> Future for Woken<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        // Registered before the mark is read: a wake after the read wakes the task.
        this.signal.task.register(cx.waker());
        if !this.signal.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let mut own = Context::from_waker(&this.waker);
        this.inner.as_mut().poll(&mut own)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Counts its polls; ready once `ready` is set, after waking its waker.
    struct Probe {
        polls: Arc<AtomicUsize>,
        wake_next: Arc<std::sync::Mutex<Option<Waker>>>,
    }

    impl Future for Probe {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.polls.fetch_add(1, Ordering::SeqCst);
            *self.wake_next.lock().unwrap() = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    #[test]
    fn it_is_polled_first_then_only_after_its_waker_woke() {
        let polls = Arc::new(AtomicUsize::new(0));
        let saved = Arc::new(std::sync::Mutex::new(None::<Waker>));
        let mut woken = Woken::new(Probe {
            polls: polls.clone(),
            wake_next: saved.clone(),
        });
        let outer = Arc::new(Counter::default());
        let outer_waker = Waker::from(outer.clone());
        let mut cx = Context::from_waker(&outer_waker);
        assert!(Pin::new(&mut woken).poll(&mut cx).is_pending());
        assert_eq!(
            polls.load(Ordering::SeqCst),
            1,
            "the first poll goes through"
        );
        assert!(Pin::new(&mut woken).poll(&mut cx).is_pending());
        assert!(Pin::new(&mut woken).poll(&mut cx).is_pending());
        assert_eq!(polls.load(Ordering::SeqCst), 1, "not woken: not polled");
        saved.lock().unwrap().take().unwrap().wake();
        assert_eq!(outer.0.load(Ordering::SeqCst), 1, "its wake wakes the task");
        assert!(Pin::new(&mut woken).poll(&mut cx).is_pending());
        assert_eq!(polls.load(Ordering::SeqCst), 2, "woken: polled once");
        assert!(Pin::new(&mut woken).poll(&mut cx).is_pending());
        assert_eq!(polls.load(Ordering::SeqCst), 2);
        // Hushed, a wake marks it and wakes no task; it is polled at the next poll.
        woken.hush();
        saved.lock().unwrap().take().unwrap().wake();
        assert_eq!(
            outer.0.load(Ordering::SeqCst),
            1,
            "a hushed wake wakes no task"
        );
        assert!(Pin::new(&mut woken).poll(&mut cx).is_pending());
        assert_eq!(polls.load(Ordering::SeqCst), 3, "but it is polled");
        saved.lock().unwrap().take().unwrap().wake();
        assert_eq!(
            outer.0.load(Ordering::SeqCst),
            2,
            "the poll registered the task again"
        );
    }

    #[derive(Default)]
    struct Counter(AtomicUsize);

    impl Wake for Counter {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}
