//! Small shared pieces: the seeded generator, atomic file writes, order statistics, the
//! Prometheus text format, poison-tolerant locks, a lock-free time stamp, the text-table
//! printer and times for people.

pub mod cputime;
pub mod fds;
pub mod fsio;
pub mod histogram;
pub mod localtime;
pub mod priority;
pub mod prometheus;
pub mod rng;
pub mod stamp;
pub mod starvation;
pub mod stats;
pub mod sync;
pub mod table;
pub mod window;
