//! Small shared pieces: the seeded generator, atomic file writes, order statistics, the
//! Prometheus text format and poison-tolerant locks.

pub mod cputime;
pub mod fds;
pub mod fsio;
pub mod histogram;
pub mod priority;
pub mod prometheus;
pub mod rng;
pub mod stats;
pub mod sync;
pub mod window;
