//! In-process benchmarks of the whole node: scripted co-location scenarios.

pub mod report;
pub mod scenario;
