//! Whether a GPU test runs: a usable GPU, or a skip that says why — a failure instead where
//! `SETPOINT_REQUIRE_GPU=1` (set it on a GPU host, so that a broken driver cannot pass as a
//! skipped test).

#![allow(dead_code)]

/// True when the CUDA backend finds a usable GPU. Without one: prints that the test is
/// skipped and why and returns false, or panics under `SETPOINT_REQUIRE_GPU=1`.
pub fn have_gpu() -> bool {
    match setpoint::device::cuda::probe() {
        Err(why) if std::env::var("SETPOINT_REQUIRE_GPU").as_deref() == Ok("1") => {
            panic!("SETPOINT_REQUIRE_GPU=1 but no GPU is usable: {why}")
        }
        Err(why) => {
            eprintln!(
                "skipped: no usable GPU ({why}); SETPOINT_REQUIRE_GPU=1 makes this a failure"
            );
            false
        }
        Ok(_) => true,
    }
}
