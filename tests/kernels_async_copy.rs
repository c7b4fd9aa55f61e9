//! The emulation of `cp.async` (`kernels/emu/async_copy.h`) through its test kernel
//! `emu_cp_async_probe` (`kernels/emu/async_copy_probe.h`, built into the harness only): a
//! copy lands its `src-size` bytes and zeros after them; a read of the destination before
//! the wait that retires the copy shows as schedules disagreeing; a group never waited for,
//! a misaligned source and a source in shared memory are reported by name.

use crate::support::emu;

use emu::{Harness, Launch, SCHEDULES};

const THREADS: usize = 32;

/// The probe with each thread's 16-byte copy from `src` at `offset` elements, `sizes[t]`
/// bytes of it from the source.
fn probe(src: &[u16], sizes: &[u32], offset: usize, mode: usize) -> Launch {
    Launch::new("emu_cp_async_probe")
        .u16s(src)
        .u32s(sizes)
        .u16s(&[0xdead; THREADS * 8])
        .int(offset)
        .int(mode)
}

fn source() -> Vec<u16> {
    (0..THREADS * 8 + 8).map(|i| 0x3f00 + i as u16).collect()
}

#[test]
fn a_copy_lands_src_size_bytes_and_zeros_after_them() {
    let src = source();
    // Every src-size from 0 to 16 bytes, odd ones included.
    let sizes: Vec<u32> = (0..THREADS as u32).map(|t| t % 17).collect();
    let got = probe(&src, &sizes, 0, 0).run(1).u16(2);
    for t in 0..THREADS {
        // Thread t writes out the chunk thread t + 1 copied.
        let from = (t + 1) % THREADS;
        for j in 0..8 {
            let bytes = src[8 * from + j].to_le_bytes();
            let keep = |b: usize| (2 * j + b) < sizes[from] as usize;
            let want = u16::from_le_bytes([
                if keep(0) { bytes[0] } else { 0 },
                if keep(1) { bytes[1] } else { 0 },
            ]);
            assert_eq!(
                got[8 * t + j],
                want,
                "chunk of thread {from}, element {j}, src-size {}",
                sizes[from]
            );
        }
    }
}

#[test]
fn reading_a_copy_before_its_wait_makes_the_schedules_disagree() {
    let sizes = vec![16; THREADS];
    let err = match probe(&source(), &sizes, 0, 1).try_run(Harness::main(), 1, SCHEDULES) {
        Ok(_) => panic!("a read before cp.async.wait_group went unnoticed"),
        Err(e) => e,
    };
    assert!(err.contains("give different results"), "{err}");
}

#[test]
fn a_group_never_waited_for_fails_the_block() {
    let sizes = vec![16; THREADS];
    for schedule in SCHEDULES {
        let err = match probe(&source(), &sizes, 0, 2).try_run(Harness::main(), 1, &[*schedule]) {
            Ok(_) => panic!("schedule {schedule}: a pending cp.async group went unnoticed"),
            Err(e) => e,
        };
        assert!(err.contains("cp.async group never waited"), "{err}");
    }
}

#[test]
fn a_misaligned_source_is_reported() {
    let sizes = vec![16; THREADS];
    let err = probe(&source(), &sizes, 1, 0).run_failing(1);
    assert!(
        err.contains("cp.async: global source") && err.contains("is not 16-byte aligned"),
        "{err}"
    );
}

#[test]
fn a_source_in_shared_memory_is_reported() {
    let sizes = vec![16; THREADS];
    let err = probe(&source(), &sizes, 0, 3).run_failing(1);
    assert!(
        err.contains("is in shared memory, not a global address"),
        "{err}"
    );
}
