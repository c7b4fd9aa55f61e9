//! The time a part of the CPU offers (`device.cpu_split`), shared by every lane on it.
//!
//! A part that is a fraction `f` of a CPU of `N` cores stands for a device of its own, slower
//! than the whole CPU: together its lanes may use `f·N` core-seconds per second, however many
//! threads they run and whatever the other parts do. Each lane's own token bucket holds it to
//! its share of the part; this budget holds the part to its size, as the device's hardware
//! would.
//!
//! It emulates the priority the whole CPU gets from the operating system's scheduler (a
//! service's batcher runs at normal priority, training below it) with two token buckets, both
//! refilled at `f·N`:
//!
//! - **latency**, charged by the latency lanes (a service's batches) only, which wait on it:
//!   inference sees the part as if training were not there, as a preempting thread would;
//! - **all**, charged by every lane, on which the parallel lanes (training steps) wait:
//!   training gets what inference left.
//!
//! Over any interval longer than the buckets' burst, inference on the part uses at most
//! `f·N`, and inference and training together at most `f·N` plus one unit of training work.

use super::lane::Bucket;
use crate::util::sync;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The budget of one part of the CPU.
#[derive(Debug)]
pub struct PartBudget {
    /// Core-seconds per second the part offers.
    capacity: f64,
    latency: Mutex<Bucket>,
    all: Mutex<Bucket>,
}

/// Which of a part's lanes a unit of work comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkKind {
    /// A service's batch: waits only for the latency work before it.
    Latency,
    /// A training step: waits for every lane's work before it.
    Parallel,
}

impl PartBudget {
    /// The budget of a part that offers `capacity` core-seconds per second (> 0).
    pub fn new(capacity: f64) -> Arc<Self> {
        let capacity = if capacity.is_finite() && capacity > 0.0 {
            capacity
        } else {
            f64::MIN_POSITIVE
        };
        Arc::new(PartBudget {
            capacity,
            latency: Mutex::new(Bucket::new()),
            all: Mutex::new(Bucket::new()),
        })
    }

    /// Core-seconds per second the part offers.
    pub fn capacity(&self) -> f64 {
        self.capacity
    }

    /// How long work of `kind` must wait for the part's credit (zero: it may start now).
    pub fn wait_time(&self, kind: WorkKind) -> Duration {
        let bucket = match kind {
            WorkKind::Latency => &self.latency,
            WorkKind::Parallel => &self.all,
        };
        sync::lock(bucket).wait_time(self.capacity)
    }

    /// Charges `core_s` core-seconds of work of `kind`.
    pub fn charge(&self, kind: WorkKind, core_s: f64) {
        if kind == WorkKind::Latency {
            sync::lock(&self.latency).charge(self.capacity, core_s);
        }
        sync::lock(&self.all).charge(self.capacity, core_s);
    }

    /// Blocks until work of `kind` may start; returns how long it waited. Waits in slices
    /// of at most 10 ms.
    pub fn wait(&self, kind: WorkKind) -> Duration {
        let start = std::time::Instant::now();
        loop {
            let wait = self.wait_time(kind);
            if wait.is_zero() {
                return start.elapsed();
            }
            std::thread::sleep(wait.min(Duration::from_millis(10)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_work_waits_only_for_latency_work_and_training_for_all() {
        // Half a core: 10 ms of work leaves 10 ms / 0.5 = 20 ms of debt, less the burst
        // banked while idle (none here: the buckets start empty).
        let part = PartBudget::new(0.5);
        part.charge(WorkKind::Parallel, 0.010);
        assert_eq!(part.wait_time(WorkKind::Latency), Duration::ZERO);
        let w = part.wait_time(WorkKind::Parallel);
        assert!(
            w > Duration::from_millis(15) && w <= Duration::from_millis(20),
            "{w:?}"
        );
        part.charge(WorkKind::Latency, 0.010);
        let l = part.wait_time(WorkKind::Latency);
        assert!(
            l > Duration::from_millis(15) && l <= Duration::from_millis(20),
            "{l:?}"
        );
        // Training now owes for both.
        let w = part.wait_time(WorkKind::Parallel);
        assert!(
            w > Duration::from_millis(35) && w <= Duration::from_millis(40),
            "{w:?}"
        );
        let waited = part.wait(WorkKind::Latency);
        assert!(waited >= Duration::from_millis(15), "{waited:?}");
        assert_eq!(part.wait_time(WorkKind::Latency), Duration::ZERO);
    }

    #[test]
    fn a_part_is_held_to_its_capacity_over_time() {
        // A quarter of a core, 2 ms units of latency work back to back for 0.2 s of waiting:
        // at most capacity × elapsed + the burst (50 ms × 0.25) of work gets through.
        let part = PartBudget::new(0.25);
        let t0 = std::time::Instant::now();
        let mut done = 0.0;
        while t0.elapsed() < Duration::from_millis(200) {
            part.wait(WorkKind::Latency);
            part.charge(WorkKind::Latency, 0.002);
            done += 0.002;
        }
        let allowed = 0.25 * t0.elapsed().as_secs_f64() + 0.25 * 0.05 + 0.002;
        assert!(
            done <= allowed,
            "{done} core-s of work in {:?}",
            t0.elapsed()
        );
    }
}
