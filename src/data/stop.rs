//! Stopping a load part way: a data set being read for a job that was cancelled, whose
//! admission timed out, or whose node is stopping is abandoned at the loader's next read
//! instead of being read to its end.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// A token a load checks before each read; once stopped, the load fails with
/// [`STOPPED`]. Clones share the one flag.
#[derive(Debug, Clone, Default)]
pub struct LoadStop(Arc<AtomicBool>);

/// What a stopped load's reads fail with.
pub const STOPPED: &str = "the load was stopped before the end of the file";

impl LoadStop {
    /// Stops every load reading with this token (or a clone of it) at its next read.
    pub fn stop(&self) {
        self.0.store(true, Ordering::Release);
    }

    /// True once [`LoadStop::stop`] was called.
    pub(crate) fn is_stopped(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// A reader that fails once its token is stopped. Placed under the buffer the parsers read
/// from (and above decompression), so it is checked once per buffer refill: a few KiB of
/// text, however compressed the file is.
pub(super) struct Stoppable<R> {
    inner: R,
    stop: LoadStop,
}

impl<R> Stoppable<R> {
    pub(super) fn new(inner: R, stop: &LoadStop) -> Self {
        Stoppable {
            inner,
            stop: stop.clone(),
        }
    }
}

impl<R: io::Read> io::Read for Stoppable<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.stop.is_stopped() {
            // Not `Interrupted`: readers retry that kind by themselves.
            return Err(io::Error::other(STOPPED));
        }
        self.inner.read(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn reads_fail_once_stopped_and_clones_share_the_flag() {
        let token = LoadStop::default();
        let mut r = Stoppable::new(&b"abcdef"[..], &token);
        let mut buf = [0u8; 2];
        assert_eq!(r.read(&mut buf).unwrap(), 2);
        token.clone().stop();
        assert!(token.is_stopped());
        let e = r.read(&mut buf).unwrap_err();
        assert_eq!(e.to_string(), STOPPED);
        assert_ne!(e.kind(), io::ErrorKind::Interrupted);
    }
}
