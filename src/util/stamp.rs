//! A moment kept in an atomic: one thread stamps it, others ask how long ago it was, with no
//! lock and no timer.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The latest stamp, as nanoseconds from when this was made (which counts as the first).
#[derive(Debug)]
pub struct Stamp {
    epoch: Instant,
    ns: AtomicU64,
}

impl Stamp {
    /// A stamp made now.
    pub fn new() -> Stamp {
        Stamp {
            epoch: Instant::now(),
            ns: AtomicU64::new(0),
        }
    }

    /// Stamps now.
    pub fn touch(&self) {
        let ns = self.epoch.elapsed().as_nanos().min(u128::from(u64::MAX)) as u64;
        self.ns.store(ns, Ordering::Release);
    }

    /// Time since the latest stamp.
    pub fn age(&self) -> Duration {
        let at = Duration::from_nanos(self.ns.load(Ordering::Acquire));
        self.epoch.elapsed().saturating_sub(at)
    }
}

impl Default for Stamp {
    fn default() -> Self {
        Stamp::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_ages_until_it_is_touched() {
        let s = Stamp::new();
        std::thread::sleep(Duration::from_millis(20));
        assert!(s.age() >= Duration::from_millis(20));
        s.touch();
        assert!(s.age() < Duration::from_millis(20));
    }
}
