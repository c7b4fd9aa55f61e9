//! The API runtime's heartbeat: the systemd watchdog is fed only while it beats.
//!
//! The watchdog is fed by the control loop, a thread of its own; the HTTP and gRPC servers
//! run on the async runtime. A runtime whose threads are all stuck (a deadlock, a call that
//! never returns on one of them) would leave the daemon ticking but deaf, and the watchdog
//! fed. So a task on the runtime stamps the time every [`period`] of the watchdog's interval,
//! and the control loop withholds `WATCHDOG=1` while the stamp is older than the interval
//! ([`fresh`]): systemd then restarts the daemon within the watchdog's timeout. The task runs
//! only where a watchdog is armed.

use std::sync::Arc;
use std::time::Duration;

use crate::util::stamp::Stamp;

/// The latest beat.
#[derive(Debug)]
pub struct Heartbeat {
    last: Stamp,
}

impl Heartbeat {
    /// A heartbeat that has just beaten.
    pub fn new() -> Arc<Heartbeat> {
        Arc::new(Heartbeat { last: Stamp::new() })
    }

    /// Stamps now.
    pub fn beat(&self) {
        self.last.touch();
    }

    /// Time since the latest beat.
    pub fn age(&self) -> Duration {
        self.last.age()
    }

    /// Beats every `every`, on the runtime that polls it, for as long as it is polled.
    pub async fn run(self: Arc<Self>, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.beat();
        }
    }
}

/// How often to beat for a watchdog fed every `interval`: a quarter of it, at most a second,
/// so a runtime that answers is never near the limit.
pub fn period(interval: Duration) -> Duration {
    (interval / 4).min(Duration::from_secs(1))
}

/// Whether a heartbeat `age` old still counts as the runtime answering, for a watchdog fed
/// every `interval`: no older than the interval.
pub fn fresh(age: Duration, interval: Duration) -> bool {
    age <= interval
}

/// Whether the runtime answers, by `beat`, for a watchdog fed every `interval` (true without
/// a heartbeat); logs when it goes stale and when it beats again (`deaf` carries which it was
/// at the last call).
pub(crate) fn answers(beat: Option<&Heartbeat>, interval: Duration, deaf: &mut bool) -> bool {
    let Some(beat) = beat else {
        return true;
    };
    let age = beat.age();
    let is_fresh = fresh(age, interval);
    if !is_fresh {
        tracing::error!(
            "the HTTP and gRPC runtime has not run for {:.1} s (limit {:.1} s): not feeding \
             systemd's watchdog, which restarts the daemon",
            age.as_secs_f64(),
            interval.as_secs_f64()
        );
    } else if *deaf {
        tracing::warn!("the HTTP and gRPC runtime runs again; feeding systemd's watchdog");
    }
    *deaf = !is_fresh;
    is_fresh
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn the_beat_is_a_quarter_of_the_interval_at_most_a_second() {
        assert_eq!(
            period(Duration::from_millis(200)),
            Duration::from_millis(50)
        );
        assert_eq!(period(Duration::from_secs(15)), Duration::from_secs(1));
        assert!(fresh(Duration::from_secs(15), Duration::from_secs(15)));
        assert!(!fresh(
            Duration::from_millis(15_001),
            Duration::from_secs(15)
        ));
    }

    #[test]
    fn the_watchdog_is_fed_while_the_beat_is_fresh_and_without_a_heartbeat() {
        let interval = Duration::from_millis(30);
        let mut deaf = false;
        assert!(answers(None, interval, &mut deaf));
        let h = Heartbeat::new();
        assert!(answers(Some(&h), interval, &mut deaf));
        std::thread::sleep(interval * 2);
        assert!(!answers(Some(&h), interval, &mut deaf));
        assert!(deaf, "stale is remembered, so the recovery is logged once");
        h.beat();
        assert!(answers(Some(&h), interval, &mut deaf));
        assert!(!deaf);
    }

    /// A real runtime of one thread: its heartbeat stays fresh while the thread is free, goes
    /// stale while a task holds the thread, and is fresh again once it lets go.
    #[test]
    fn a_runtime_whose_thread_is_held_stops_beating() {
        let interval = Duration::from_millis(200);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_time()
            .build()
            .unwrap();
        let h = Heartbeat::new();
        rt.spawn(h.clone().run(period(interval)));
        std::thread::sleep(interval * 2);
        assert!(fresh(h.age(), interval), "a free runtime: {:?}", h.age());
        let (held_tx, held_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        rt.spawn(async move {
            held_tx.send(()).unwrap();
            // Holds the runtime's only thread, as a call that never returns would.
            release_rx.recv().unwrap();
        });
        held_rx.recv().unwrap();
        std::thread::sleep(interval * 2);
        assert!(!fresh(h.age(), interval), "held: {:?}", h.age());
        release_tx.send(()).unwrap();
        let end = Instant::now() + Duration::from_secs(10);
        while !fresh(h.age(), interval) {
            assert!(Instant::now() < end, "no beat after the thread was let go");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
