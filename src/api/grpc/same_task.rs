//! A gRPC connection and its calls, run together in the connection's own task.
//!
//! hyper hands each HTTP/2 stream of a connection to an executor to be run. With a task per
//! call, a call costs two cross-thread wake-ups per request (connection → call, call →
//! connection). Measured with perf_analyzer at concurrency 4, the daemon's CPU time per unary
//! call went from 1.1–1.9× HTTP's to 0.8–1.1× when the calls ran inside the connection's task
//! instead. The calls of one connection then share a thread, as an HTTP/1.1 connection's
//! requests do (the models run on their batchers' threads, not here). Their number is bounded
//! by HTTP/2's concurrent-stream limit (hyper's default, 200).
//!
//! [`Driven`] polls the connection only when it was woken ([`Woken`]), and within one pass
//! runs what is ready without waking its own task again: the calls the connection hands over
//! while it is polled, and the connection after a call has given it an answer to send. At 4
//! connections, skipping the connection's polls that had nothing to do took the I/O
//! thread's user time per call from 22.5 to 19–21 µs, and taking the calls in the same poll
//! to 18–19 µs; the answer's pass was not measured apart.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use futures_util::task::AtomicWaker;

use super::woken::Woken;
use crate::util::sync;

/// One call (HTTP/2 stream) as hyper hands it over to be run.
type Call = Pin<Box<dyn Future<Output = ()> + Send>>;

/// hyper's executor for a connection's calls: it keeps them for the [`Driven`] connection
/// that was built with it.
#[derive(Clone)]
pub(super) struct SameTask(Arc<Handed>);

/// The calls handed over and not yet taken, and the task to wake when one is handed over
/// from outside the connection's poll.
struct Handed {
    calls: Mutex<Vec<Call>>,
    task: AtomicWaker,
}

impl SameTask {
    pub(super) fn new() -> Self {
        SameTask(Arc::new(Handed {
            calls: Mutex::new(Vec::new()),
            task: AtomicWaker::new(),
        }))
    }
}

impl<F: Future<Output = ()> + Send + 'static> hyper::rt::Executor<F> for SameTask {
    fn execute(&self, call: F) {
        sync::lock(&self.0.calls).push(Box::pin(call));
        // No waker is registered while the connection is being polled: the calls it hands
        // over then are taken when its poll returns.
        self.0.task.wake();
    }
}

/// A connection `C` that hands its calls to a [`SameTask`], and those calls: a future that
/// runs the calls and the connection, and resolves when the connection does.
pub(super) struct Driven<C> {
    conn: Woken<C>,
    exec: SameTask,
    running: FuturesUnordered<Call>,
}

impl<C: Future> Driven<C> {
    /// `conn`, which was built with `exec` as its executor.
    pub(super) fn new(conn: C, exec: SameTask) -> Self {
        Driven {
            conn: Woken::new(conn),
            exec,
            running: FuturesUnordered::new(),
        }
    }

    /// The connection, to call its methods (it is polled at the next poll).
    pub(super) fn conn(&mut self) -> Pin<&mut C> {
        self.conn.get_mut()
    }

    /// Once the connection has resolved: runs the calls still going to their end (they
    /// answer into nothing, but finish and are accounted).
    pub(super) async fn finish(mut self) {
        self.take_handed();
        while self.running.next().await.is_some() {}
    }

    /// Moves the calls handed over into the running set; whether there were any.
    fn take_handed(&mut self) -> bool {
        let mut handed = sync::lock(&self.exec.0.calls);
        let any = !handed.is_empty();
        self.running.extend(handed.drain(..));
        any
    }
}

impl<C: Future> Future for Driven<C> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        loop {
            // A call answered here wakes the connection to send its answer, which is polled
            // below in this same pass: that wake need not poll the task again.
            this.conn.hush();
            while let Poll::Ready(Some(())) = this.running.poll_next_unpin(cx) {}
            drop(this.exec.0.task.take());
            let closed = Pin::new(&mut this.conn).poll(cx).is_ready();
            this.exec.0.task.register(cx.waker());
            let handed = this.take_handed();
            if closed {
                return Poll::Ready(());
            }
            if !handed {
                return Poll::Pending;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::rt::Executor;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Wake, Waker};

    #[derive(Default)]
    struct Wakes(AtomicUsize);

    impl Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A connection that hands one call over on each of its first `calls` polls, each call
    /// adding one to `ran`, and resolves once `done` is set.
    struct Conn {
        exec: SameTask,
        calls: usize,
        ran: Arc<AtomicUsize>,
        polls: Arc<AtomicUsize>,
        done: Arc<std::sync::atomic::AtomicBool>,
    }

    impl Future for Conn {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
            self.polls.fetch_add(1, Ordering::SeqCst);
            if self.calls > 0 {
                self.calls -= 1;
                let ran = self.ran.clone();
                self.exec.execute(async move {
                    ran.fetch_add(1, Ordering::SeqCst);
                });
            }
            if self.done.load(Ordering::SeqCst) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        }
    }

    #[test]
    fn calls_handed_over_run_in_the_same_poll_without_waking_the_task() {
        let exec = SameTask::new();
        let (ran, polls) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let conn = Conn {
            exec: exec.clone(),
            calls: 1,
            ran: ran.clone(),
            polls: polls.clone(),
            done: done.clone(),
        };
        let mut driven = Driven::new(conn, exec.clone());
        let wakes = Arc::new(Wakes::default());
        let waker = Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut driven).poll(&mut cx).is_pending());
        assert_eq!(
            ran.load(Ordering::SeqCst),
            1,
            "the call ran in the poll it came in"
        );
        assert_eq!(wakes.0.load(Ordering::SeqCst), 0, "and woke nothing");
        assert_eq!(
            polls.load(Ordering::SeqCst),
            1,
            "the connection was not woken again"
        );
        assert!(Pin::new(&mut driven).poll(&mut cx).is_pending());
        assert_eq!(polls.load(Ordering::SeqCst), 1, "not woken, not polled");
        // A call handed over from outside the connection's poll wakes the task.
        let ran2 = ran.clone();
        exec.execute(async move {
            ran2.fetch_add(1, Ordering::SeqCst);
        });
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
        done.store(true, Ordering::SeqCst);
        driven.conn(); // as graceful shutdown does: the connection is polled next
        assert!(Pin::new(&mut driven).poll(&mut cx).is_ready());
        futures_util::FutureExt::now_or_never(driven.finish()).expect("no call is left waiting");
        assert_eq!(
            ran.load(Ordering::SeqCst),
            2,
            "the call handed over last ran too"
        );
    }
}
