//! In-process benchmarks of the whole node: scripted co-location scenarios.

pub mod gpu;
pub mod report;
pub mod scenario;
pub mod smi;
