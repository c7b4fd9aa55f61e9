//! Small shared pieces: the seeded generator and atomic file writes.

pub mod cputime;
pub mod fds;
pub mod fsio;
pub mod histogram;
pub mod priority;
pub mod rng;
pub mod window;
