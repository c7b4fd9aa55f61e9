//! Small shared pieces: the seeded generator, atomic file writes, order statistics, the
//! Prometheus text format, poison-tolerant locks and the text-table printer.

pub mod cputime;
pub mod fds;
pub mod fsio;
pub mod histogram;
pub mod priority;
pub mod prometheus;
pub mod rng;
pub mod stats;
pub mod sync;
pub mod table;
pub mod window;
