//! Subnormal floats on the CPU threads that train and serve.
//!
//! A run that converges drives its gradients and Adam's moments toward zero, and once values
//! fall below `f32::MIN_POSITIVE` (about 1.2e-38) each multiply-add on them takes a microcode
//! assist on x86, tens of times the cycles of a normal one. A 32-128-10 model at batch 32
//! took 34 µs a step over its first 20 epochs and 72 µs on average over 100 (`setpoint
//! train`, one thread), and about 120 µs in a daemon's lane late in a run: its deadline was
//! planned at the cost admission measured on the first steps. GPUs flush such values in
//! their tensor cores, and ML frameworks offer the same on the CPU (PyTorch's
//! `torch.set_flush_denormal`). So every thread that runs the CPU backend's operations
//! flushes them to zero, as inputs (DAZ) and as results (FTZ): a value that small changes no
//! weight of an `f32` model that matters.

use std::cell::Cell;

thread_local! {
    static FLUSHING: Cell<bool> = const { Cell::new(false) };
}

/// Makes the calling thread treat subnormal `f32`/`f64` inputs as zero and flush subnormal
/// results to zero, once per thread (later calls cost a thread-local read). A no-op on
/// targets other than x86-64 and AArch64.
pub fn flush_on_this_thread() {
    if FLUSHING.with(Cell::get) {
        return;
    }
    set_flush_mode();
    FLUSHING.with(|f| f.set(true));
}

#[cfg(target_arch = "x86_64")]
fn set_flush_mode() {
    /// MXCSR's flush-to-zero (bit 15) and denormals-are-zero (bit 6).
    const FTZ_DAZ: u32 = 0x8040;
    let mut csr: u32 = 0;
    // SAFETY: stmxcsr stores the 32-bit MXCSR into `csr`, a valid, aligned, writable u32;
    // ldmxcsr loads it back with two mode bits set, which every x86-64 CPU with SSE2 (all of
    // them) accepts: no reserved bit is touched.
    unsafe {
        std::arch::asm!("stmxcsr [{}]", in(reg) &mut csr, options(nostack, preserves_flags));
        csr |= FTZ_DAZ;
        std::arch::asm!("ldmxcsr [{}]", in(reg) &csr, options(nostack, preserves_flags));
    }
}

#[cfg(target_arch = "aarch64")]
fn set_flush_mode() {
    /// FPCR's flush-to-zero bit.
    const FZ: u64 = 1 << 24;
    let mut fpcr: u64;
    // SAFETY: reading and writing FPCR is allowed at EL0; only the FZ mode bit changes.
    unsafe {
        std::arch::asm!("mrs {}, fpcr", out(reg) fpcr, options(nomem, nostack));
        fpcr |= FZ;
        std::arch::asm!("msr fpcr, {}", in(reg) fpcr, options(nomem, nostack));
    }
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn set_flush_mode() {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hint::black_box;

    /// A subnormal times one, and the smallest normal value halved, on the calling thread.
    fn products() -> (f32, f32) {
        let sub = black_box(f32::MIN_POSITIVE / 4.0);
        (
            black_box(sub) * black_box(1.0),
            black_box(f32::MIN_POSITIVE) * black_box(0.5),
        )
    }

    #[test]
    fn a_flushing_thread_turns_subnormals_into_zero_and_others_do_not() {
        let (before, after) = std::thread::spawn(|| {
            // Through black_box, so that the products are taken before the mode changes (the
            // compiler does not know that the mode changes them).
            let before = black_box(products());
            flush_on_this_thread();
            flush_on_this_thread();
            (before, products())
        })
        .join()
        .unwrap();
        assert!(before.0 > 0.0 && before.1 > 0.0, "{before:?}");
        if cfg!(any(target_arch = "x86_64", target_arch = "aarch64")) {
            assert_eq!(after, (0.0, 0.0));
        }
        // The mode is the thread's own: a new thread starts without it.
        let fresh = std::thread::spawn(|| black_box(products())).join().unwrap();
        assert!(fresh.0 > 0.0, "{fresh:?}");
    }
}
