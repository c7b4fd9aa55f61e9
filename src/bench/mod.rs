//! Benchmarks of the whole node: scripted co-location scenarios (in process) and a soak of a
//! daemon child under steady mixed load.

pub mod gpu;
pub(crate) mod plot;
pub mod report;
pub mod scenario;
pub mod smi;
pub mod soak;
