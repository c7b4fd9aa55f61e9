//! The CUDA backend on a GPU: every kernel against the CPU backend (the same checks
//! `setpoint gpu-check --section kernels` records), stream priorities and the device-memory
//! limit. Without a usable GPU every test prints that it was skipped and why, unless
//! `SETPOINT_REQUIRE_GPU=1` (set it on a GPU host), where that is a failure; the kernels'
//! logic is still checked on the CPU by `tests/kernels_emulated.rs`.

use setpoint::device::Backend;
use setpoint::device::cuda::{CudaDevice, StreamPriority};

#[path = "support/gpu.rs"]
mod gpu;
use gpu::have_gpu;

fn cache_dir(tag: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("setpoint-cuda-{tag}-{}", std::process::id()))
}

#[test]
fn every_kernel_matches_the_cpu_backend() {
    if !have_gpu() {
        return;
    }
    let dev = CudaDevice::open(0, Some(&cache_dir("kernels")), None).unwrap();
    let g = dev.lane_backend(StreamPriority::Normal).unwrap();
    let checks = setpoint::bench::gpu::kernels::kernel_checks(&dev, &g, false).unwrap();
    let failed: Vec<_> = checks.iter().filter(|c| !c.pass).collect();
    assert!(failed.is_empty(), "{failed:#?}");
    assert!(checks.len() > 50, "only {} checks ran", checks.len());
}

#[test]
fn lanes_get_streams_at_the_ends_of_the_priority_range() {
    if !have_gpu() {
        return;
    }
    let dev = CudaDevice::open(0, Some(&cache_dir("prio")), None).unwrap();
    let (least, greatest) = dev.info().priority_range;
    let hi = dev.lane_backend(StreamPriority::Highest).unwrap();
    let lo = dev.lane_backend(StreamPriority::Lowest).unwrap();
    assert_eq!(hi.priority(), greatest);
    assert_eq!(lo.priority(), least);
    // A share is a CTA budget, clamped to what the device holds.
    hi.set_workers(usize::MAX);
    assert_eq!(hi.workers(), dev.max_ctas());
    hi.set_workers(0);
    assert_eq!(hi.workers(), 1);
}

#[test]
fn the_memory_limit_is_an_error_not_a_crash() {
    if !have_gpu() {
        return;
    }
    let dev = CudaDevice::open(0, Some(&cache_dir("mem")), Some(64 << 20)).unwrap();
    let g = dev.lane_backend(StreamPriority::Lowest).unwrap();
    let a = g.alloc(8 << 20).unwrap(); // 32 MiB
    let err = g.alloc(16 << 20).unwrap_err(); // 64 MiB more
    assert!(err.to_string().contains("memory limit"), "{err}");
    drop(a);
    assert_eq!(dev.memory_used(), 0);
    g.alloc(16 << 20).unwrap();
}
