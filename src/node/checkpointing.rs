//! What a job does when a checkpoint cannot be written (a full disk, too many open files, a
//! read-only remount): pure bookkeeping, tested with scripted times.
//!
//! A periodic checkpoint that fails does not fail the job: training goes on, the error is
//! shown in the job's view and counted, and the next checkpoint (at the next interval) tries
//! again. Only when no checkpoint has been written for `checkpoint_error_timeout_ms` does the
//! job fail, since past that the work a crash would lose keeps growing. The checkpoint a job
//! writes as it ends (completed or cancelled) is tried a few times, with a growing pause,
//! before the job fails.

use std::time::{Duration, Instant};

/// Tries of the checkpoint a job writes as it ends.
pub(crate) const FINAL_TRIES: u32 = 5;

/// The pause before try `n` (1-based) of the final checkpoint: 0.5 s, 1 s, 2 s, 4 s.
pub(crate) fn final_backoff(n: u32) -> Duration {
    Duration::from_millis(500u64 << n.saturating_sub(1).min(6))
}

/// A job's record of failed checkpoint writes.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct CheckpointHealth {
    /// Since when writes have failed, when the last one did.
    pub failing_since: Option<Instant>,
    /// Failed writes so far.
    pub errors: u64,
    /// The last failure, until a write succeeds.
    pub last_error: Option<String>,
}

/// Checkpoint writes have failed for longer than the job tolerates: the job fails.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "no checkpoint could be written for {failing_s} s (checkpoint_error_timeout_ms = \
     {timeout_ms}): {error}"
)]
pub(crate) struct CheckpointStalled {
    /// How long writes have failed, whole seconds.
    pub failing_s: u64,
    /// The tolerance.
    pub timeout_ms: u128,
    /// The last failure.
    pub error: String,
}

impl CheckpointHealth {
    /// Records the outcome of a write at `now`. `Err` (the job must fail) only when writes
    /// have failed for longer than `timeout`.
    pub fn record(
        &mut self,
        outcome: Result<(), &str>,
        now: Instant,
        timeout: Duration,
    ) -> Result<(), CheckpointStalled> {
        let error = match outcome {
            Ok(()) => {
                self.failing_since = None;
                self.last_error = None;
                return Ok(());
            }
            Err(e) => e.to_string(),
        };
        self.errors += 1;
        let since = *self.failing_since.get_or_insert(now);
        self.last_error = Some(error.clone());
        let failing = now.saturating_duration_since(since);
        if failing > timeout {
            return Err(CheckpointStalled {
                failing_s: failing.as_secs(),
                timeout_ms: timeout.as_millis(),
                error,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_tolerated_until_the_timeout_and_a_success_clears_them() {
        let t0 = Instant::now();
        let timeout = Duration::from_secs(60);
        let mut h = CheckpointHealth::default();
        let full = || Err("No space left on device (os error 28)");
        assert_eq!(h.record(full(), t0, timeout), Ok(()));
        assert_eq!(
            h.record(full(), t0 + Duration::from_secs(30), timeout),
            Ok(())
        );
        assert_eq!(h.errors, 2);
        assert!(h.last_error.as_deref().unwrap().contains("No space"));
        // Freed in time: cleared, and the clock starts again at the next failure.
        assert_eq!(
            h.record(Ok(()), t0 + Duration::from_secs(50), timeout),
            Ok(())
        );
        assert_eq!((h.failing_since, h.last_error.clone()), (None, None));
        assert_eq!(
            h.record(full(), t0 + Duration::from_secs(100), timeout),
            Ok(())
        );
        let e = h
            .record(full(), t0 + Duration::from_secs(161), timeout)
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "no checkpoint could be written for 61 s (checkpoint_error_timeout_ms = 60000): \
             No space left on device (os error 28)"
        );
        assert_eq!(h.errors, 4);
    }

    #[test]
    fn the_final_checkpoint_backs_off() {
        let pauses: Vec<u64> = (1..FINAL_TRIES)
            .map(|n| final_backoff(n).as_millis() as u64)
            .collect();
        assert_eq!(pauses, [500, 1000, 2000, 4000]);
    }
}
