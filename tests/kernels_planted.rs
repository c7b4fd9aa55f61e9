//! The kernel emulation catches the bugs it is there to catch. Each test plants one bug in a
//! copy of `kernels/` (an exact text edit; an edit whose anchor is no longer in the source
//! fails the test, so the set is kept up to date with the kernels), builds the harness from
//! the copy, and runs a probe that the unmodified kernels pass and the mutant must fail:
//!
//! - a missing `__syncthreads()` in a GEMM and in `sum_partial`, and `gemm_bf16` refilling
//!   the pipeline buffer it is reading (a write-after-read race): caught by running under
//!   several schedules of the emulation, by the NaN that fills shared memory at block start,
//!   or by the comparison with the CPU backend;
//! - `gemm_bf16` reading a slice before its `cp.async` copies have landed (the wait dropped
//!   or too weak): caught by the emulation landing copies at the wait under some schedules
//!   and at issue under others;
//! - a shared-memory swizzle applied by the ldmatrix reads but not by the stores, and two
//!   warps of `gemm_bf16_128` mapped onto the same block of the tile: caught by the
//!   comparison with the CPU backend;
//! - a read of shared memory that no thread of the block wrote: caught by that NaN;
//! - in gemm_bf16_wgmma: a wrong swizzle mode in the wgmma descriptors (caught by the
//!   comparison with the CPU backend); accumulators read before wgmma.wait_group, a stage
//!   released before the wgmma reading it retired, a stage multiplied before its TMA copies
//!   landed (caught by the emulation completing wgmma and TMA at issue under some schedules
//!   and at the wait under others); a consumer that never arrives on the empty barrier
//!   (caught as an mbarrier phase that can never complete);
//! - the GEMM epilogue adding the bias by row instead of by column, and its bf16 copy of C
//!   taken before the ReLU: caught by the comparison with the CPU backend's GEMM then
//!   bias_act, and by the check that the bf16 copy is C rounded;
//! - an out-of-bounds store or load (a bounds check dropped): caught by the guards around
//!   the harness's buffers or the NaN in them;
//! - a vector load from a misaligned address (alignment checks dropped, buffers off the
//!   256-byte alignment or a k range starting anywhere) and an index past a `__shared__`
//!   array: caught by UBSan in the harness build.

use crate::support::emu;
use crate::support::emu_gemm;

use setpoint::device::cpu::CpuBuf;
use setpoint::device::cuda::choice::wgmma_operands;
use setpoint::device::{Backend, CpuBackend, Gemm};
use setpoint::util::rng::Rng;

use emu::{Harness, Launch, SCHEDULES, uniform};
use emu_gemm::{GemmKernel, Part, check_fused, check_gemm, gemm_cases, whole};

/// One planted bug: `(file under kernels/, anchor, replacement)` edits.
type Edits = &'static [(&'static str, &'static str, &'static str)];

/// What the harness or the comparison says when it catches a race between threads.
const RACE: &[&str] = &["give different results", "vs CPU", "differ"];

/// The probe passes on the unmodified kernels and fails on the mutant, with a report that
/// contains one of `signs` (so the bug is caught by the intended check, not by accident).
fn planted(name: &str, edits: Edits, probe: fn(&Harness) -> Result<(), String>, signs: &[&str]) {
    if let Err(e) = probe(Harness::main()) {
        panic!("{name}: the probe fails on the unmodified kernels, so it proves nothing:\n{e}");
    }
    let mutant = Harness::mutant(name, edits);
    match probe(&mutant) {
        Ok(()) => panic!("{name}: the planted bug went unnoticed by the emulated tests"),
        Err(e) => {
            assert!(
                signs.iter().any(|s| e.contains(s)),
                "{name}: the planted bug was caught, but not by the expected check (a report \
                 containing one of {signs:?}):\n{e}"
            );
            println!("{name} caught:\n{e}");
        }
    }
}

fn gemm_probe(kernel: GemmKernel, cases: &[(Gemm, Part)], h: &Harness) -> Result<(), String> {
    check_gemm(h, SCHEDULES, kernel, cases, &[1, 2], 50)
}

/// Several k-slices per tile (three or more 32-deep slices), two tiles, all transpositions.
fn multi_slice_cases() -> Vec<(Gemm, Part)> {
    whole(&gemm_cases(&[(64, 64, 96), (65, 72, 130)]))
}

fn sum_partial_probe(h: &Harness) -> Result<(), String> {
    let mut rng = Rng::new(51);
    let len = 5000;
    let x = uniform(&mut rng, len, -1.0, 1.0);
    let want = CpuBackend::single().sum(&CpuBuf(x.clone()), len).unwrap();
    for grid in [1, 3] {
        let partial = vec![f64::NAN; grid as usize];
        let got = Launch::new("sum_partial")
            .f32s(&x)
            .int(len)
            .f64s(&partial)
            .try_run(h, grid, SCHEDULES)?
            .f64(1);
        let total: f64 = got.iter().sum();
        if (total - want).abs() > 1e-9 || total.is_nan() {
            return Err(format!(
                "sum_partial len={len} grid={grid}: partials add up to {total}, the CPU sum \
                 is {want} (differ)"
            ));
        }
    }
    Ok(())
}

/// The per-slice barrier after the cp.async wait: without it a warp reads other threads'
/// copies of a slice before they have landed, and refills the buffer of the previous slice
/// while slower warps still multiply it.
#[test]
fn a_missing_barrier_in_the_tensor_core_gemm_is_caught() {
    planted(
        "gemm_bf16_no_slice_barrier",
        &[(
            "gemm.cu",
            "cp_async_wait<TC_STAGES - 2>();\n            __syncthreads();\n",
            "cp_async_wait<TC_STAGES - 2>();\n",
        )],
        |h| gemm_probe(GemmKernel::Bf16TensorCores, &multi_slice_cases(), h),
        RACE,
    );
}

/// The barrier at the end of a tile: without it a warp that starts the next tile's prologue
/// refills a buffer other warps still read the last slice from (5 slices of 3 stages end
/// in stage 1, which the prologue fills). One CTA loops over several tiles.
#[test]
fn a_missing_barrier_between_tiles_of_the_tensor_core_gemm_is_caught() {
    planted(
        "gemm_bf16_no_tile_barrier",
        &[(
            "gemm.cu",
            "cp_async_wait<0>();\n        __syncthreads();\n",
            "cp_async_wait<0>();\n",
        )],
        |h| gemm_probe(GemmKernel::Bf16TensorCores, &multi_slice_cases(), h),
        RACE,
    );
}

/// gemm_bf16 multiplying a slice before its cp.async copies have landed: the wait dropped,
/// or waiting for all but the newest TC_STAGES - 1 groups instead of TC_STAGES - 2, which
/// leaves the current slice's group pending. The emulation lands a copy at the wait under
/// some schedules and at issue under others, so the schedules disagree (or NaN from the
/// poisoned shared memory reaches C).
#[test]
fn a_missing_or_too_weak_cp_async_wait_is_caught() {
    planted(
        "gemm_bf16_no_cp_async_wait",
        &[(
            "gemm.cu",
            "            cp_async_wait<TC_STAGES - 2>();\n",
            "",
        )],
        |h| gemm_probe(GemmKernel::Bf16TensorCores, &multi_slice_cases(), h),
        RACE,
    );
    planted(
        "gemm_bf16_weak_cp_async_wait",
        &[(
            "gemm.cu",
            "cp_async_wait<TC_STAGES - 2>();",
            "cp_async_wait<TC_STAGES - 1>();",
        )],
        |h| gemm_probe(GemmKernel::Bf16TensorCores, &multi_slice_cases(), h),
        RACE,
    );
}

/// The k-contiguous store placing a piece at its unswizzled chunk while ldmatrix reads the
/// swizzled one: the fragments mix up k (and outer) indices, and C is wrong.
#[test]
fn a_swizzle_on_one_side_only_is_caught() {
    planted(
        "gemm_bf16_store_unswizzled",
        &[(
            "common.cuh",
            "dst = s + kmaj_at(q / 4, q % 4);",
            "dst = s + q * 8;",
        )],
        |h| gemm_probe(GemmKernel::Bf16TensorCores, &multi_slice_cases(), h),
        &["vs CPU"],
    );
}

/// gemm_bf16_wgmma on shapes the TMA takes, several slices per tile and several tiles per
/// CTA (grid 1 and 2), so the 4-stage ring is refilled.
fn wgmma_probe(h: &Harness) -> Result<(), String> {
    let cases: Vec<(Gemm, Part)> = whole(&gemm_cases(&[(136, 200, 328)]))
        .into_iter()
        .filter(|(g, _)| wgmma_operands(g, 0, 0).is_ok())
        .collect();
    check_gemm(h, SCHEDULES, GemmKernel::Bf16Wgmma, &cases, &[1, 2], 52)
}

/// A descriptor naming the 64-byte swizzle (layout 2) for stages TMA filled with the
/// 128-byte one: the wgmma reads the wrong chunks, and C is wrong.
#[test]
fn a_wrong_swizzle_mode_in_the_wgmma_descriptor_is_caught() {
    planted(
        "gemm_wgmma_descriptor_swizzle",
        &[(
            "gemm_wgmma.cu",
            "(unsigned long long)((sbo >> 4) & 0x3fffu) << 32 | 1ull << 62;",
            "(unsigned long long)((sbo >> 4) & 0x3fffu) << 32 | 2ull << 62;",
        )],
        wgmma_probe,
        &["vs CPU"],
    );
}

/// The accumulators written to C before the wgmma.wait_group that retires the tile's last
/// products: the emulation completes them at issue under some schedules, at the wait under
/// others.
#[test]
fn reading_wgmma_accumulators_before_wait_group_is_caught() {
    planted(
        "gemm_wgmma_store_before_wait",
        &[
            (
                "gemm_wgmma.cu",
                "        wgmma_wait<0>();\n        wgmma_fence_acc(acc);\n        if (w.slices",
                "        wgmma_fence_acc(acc);\n        if (w.slices",
            ),
            (
                "gemm_wgmma.cu",
                "wg_store(c, m, n, m0 + wg * 64, n0, wtid, acc, ep);",
                "wg_store(c, m, n, m0 + wg * 64, n0, wtid, acc, ep);\n        \
                 wgmma_wait<0>();",
            ),
        ],
        wgmma_probe,
        RACE,
    );
}

/// A stage released while the wgmma reading it may still run (waiting for all but two
/// groups instead of all but one): under schedule 2 the producer refills it at once and the
/// wgmma, completed at its wait, reads the next slice.
#[test]
fn releasing_a_stage_before_its_wgmma_retires_is_caught() {
    planted(
        "gemm_wgmma_early_release",
        &[(
            "gemm_wgmma.cu",
            "wgmma_wait<1>();  // slice",
            "wgmma_wait<2>();  // slice",
        )],
        wgmma_probe,
        RACE,
    );
}

/// Consumers multiplying a stage without waiting on its full barrier: the TMA copies land at
/// issue under some schedules and only at a wait under others; where they wait, the producer
/// runs ahead and arrives on a full barrier whose last phase still waits for its bytes.
#[test]
fn multiplying_a_stage_before_its_tma_copies_land_is_caught() {
    planted(
        "gemm_wgmma_no_full_wait",
        &[(
            "gemm_wgmma.cu",
            "            mbar_wait(&sm.full[st], (unsigned)(it / WG_STAGES) & 1u);\n",
            "",
        )],
        wgmma_probe,
        &[
            "give different results",
            "vs CPU",
            "differ",
            "never waited",
            "more arrivals in one phase",
        ],
    );
}

/// Consumers that never release a stage inside a tile: the producer waits for an empty
/// phase that can never complete, and the block fails saying so instead of hanging.
#[test]
fn a_consumer_not_arriving_on_the_empty_barrier_is_caught() {
    planted(
        "gemm_wgmma_no_release",
        &[(
            "gemm_wgmma.cu",
            "            if (s > 0 && wtid == 0) {\n                mbar_arrive(&sm.empty[(it - 1) % WG_STAGES]);\n            }\n",
            "",
        )],
        wgmma_probe,
        &["can never complete"],
    );
}

#[test]
fn a_missing_barrier_in_the_simt_gemm_is_caught() {
    planted(
        "gemm_simt_no_first_barrier",
        &[(
            "gemm.cu",
            "simt_store(sm.b[0], B.k_major, tid, rb);\n        }\n        __syncthreads();\n",
            "simt_store(sm.b[0], B.k_major, tid, rb);\n        }\n",
        )],
        |h| gemm_probe(GemmKernel::F32, &multi_slice_cases(), h),
        RACE,
    );
}

#[test]
fn a_missing_barrier_in_sum_partial_is_caught() {
    planted(
        "sum_partial_no_barrier",
        &[(
            "softmax.cu",
            "    __syncthreads();\n    if (threadIdx.x == 0) {",
            "    if (threadIdx.x == 0) {",
        )],
        sum_partial_probe,
        RACE,
    );
}

/// The pipeline refilling the buffer of the slice being multiplied instead of the one freed
/// by the barrier: a warp that runs ahead (or a copy that lands at issue) overwrites the
/// slice other warps are still reading. The warps of the emulation's plain schedule stay in
/// step through the kernel's ldmatrix and mma.sync, so the schedules that run one warp
/// ahead of the others, or land copies at other moments, are what differ.
#[test]
fn a_refill_of_the_buffer_being_read_is_caught() {
    planted(
        "gemm_bf16_refill_current_buffer",
        &[(
            "gemm.cu",
            "const int st = next % TC_STAGES;",
            "const int st = s % TC_STAGES;",
        )],
        |h| gemm_probe(GemmKernel::Bf16TensorCores, &multi_slice_cases(), h),
        RACE,
    );
}

/// gemm_bf16_128 with its 8 warps mapped onto 2 x 2 column blocks instead of 2 x 4: warps
/// w and w + 2 compute and write the same 64 x 32 block, and columns 64..127 of every tile
/// are never written (they keep the NaN of a beta = 0 C, or the old C).
#[test]
fn two_warps_of_the_large_tile_gemm_writing_one_block_are_caught() {
    planted(
        "gemm_bf16_128_warp_columns_wrap",
        &[(
            "gemm_large.cu",
            "wn = warp % 4 * 32;",
            "wn = warp % 2 * 32;",
        )],
        |h| {
            let g = Gemm::new(130, 100, 40);
            let cases = [
                (g, Part::whole(g)),
                (g.tb().scaled(0.5, 1.0), Part::whole(g)),
            ];
            gemm_probe(GemmKernel::Bf16Large, &cases, h)
        },
        &["vs CPU"],
    );
}

/// Small-m cases: one and two row tiles, several 64-deep k-slices, several column tiles (so
/// that grid 1 takes more than one tile per block), all transpositions.
fn small_m_cases() -> Vec<(Gemm, Part)> {
    whole(&gemm_cases(&[(8, 70, 130), (17, 64, 64)]))
}

/// gemm_bf16_small_m without the barrier between the warps' partial tiles and their sum: a
/// thread sums partials another warp has not written yet (the k-slices or the NaN that fill
/// the shared memory they share), and what it reads depends on the schedule.
#[test]
fn a_missing_barrier_before_the_small_m_reduction_is_caught() {
    planted(
        "gemm_small_m_no_reduction_barrier",
        &[(
            "gemm_small.cu",
            "        sm_put_partial(sm.red[warp], lane, acc);\n        __syncthreads();\n",
            "        sm_put_partial(sm.red[warp], lane, acc);\n",
        )],
        |h| gemm_probe(GemmKernel::Bf16SmallM, &small_m_cases(), h),
        RACE,
    );
}

/// gemm_bf16_small_m without the barrier at the end of a tile: a warp that runs ahead loads
/// its next tile's first slice over the partial tiles (the same shared memory) that other
/// warps are still summing. Only a block with more than one tile, and a schedule that lets
/// one warp run ahead (or the plain order, where thread 0 runs ahead of the rest), shows it.
#[test]
fn a_missing_barrier_after_the_small_m_reduction_is_caught() {
    planted(
        "gemm_small_m_no_tile_end_barrier",
        &[(
            "gemm_small.cu",
            "            store_c(c, m, n, m0 + r, n0 + col, v, ep);\n        }\n        \
             // The next tile's first slice overwrites the partial tiles being read above.\n        \
             __syncthreads();\n",
            "            store_c(c, m, n, m0 + r, n0 + col, v, ep);\n        }\n",
        )],
        |h| gemm_probe(GemmKernel::Bf16SmallM, &small_m_cases(), h),
        RACE,
    );
}

/// store_c without its column check writes a tile's columns past n into the next row, and
/// past the end of C on the last row.
#[test]
fn a_store_past_the_columns_of_c_is_caught() {
    planted(
        "store_c_no_column_check",
        &[("common.cuh", "if (row < m && col < n) {", "if (row < m) {")],
        |h| gemm_probe(GemmKernel::F32, &whole(&gemm_cases(&[(65, 70, 40)])), h),
        &["wrote outside argument 3", "vs CPU"],
    );
}

/// tc_fetch without its row check copies k rows past the k range (past the end of the
/// operand when the range ends at k): the guard's NaN, or the data of a k range that ends
/// before k, shows in C.
#[test]
fn a_load_past_the_rows_of_an_operand_is_caught() {
    planted(
        "tc_fetch_no_row_check",
        &[(
            "common.cuh",
            "const int left = srow < op.rows ? op.cols - scol : 0;",
            "const int left = op.cols - scol;",
        )],
        |h| {
            let g = Gemm::new(64, 72, 40);
            let cases = [
                (g.ta(), Part::whole(g)),
                (g.ta(), Part::whole(g).k_range(0, 33)),
            ];
            gemm_probe(GemmKernel::Bf16TensorCores, &cases, h)
        },
        &["vs CPU"],
    );
}

/// Vector loads chosen on the leading dimension alone, ignoring where the operand starts.
const IGNORE_POINTER_ALIGNMENT: Edits = &[(
    "common.cuh",
    " &&\n             (unsigned long long)op.p % (unsigned long long)(width * (int)sizeof(T)) == 0;",
    ";",
)];

/// With the pointer check dropped, buffers a few bytes off the 256-byte alignment (as
/// sub-buffers are) make the vector loads misaligned, and so does a k range that starts off
/// the vector width (the operands are read from k_begin on): the sanitizer aborts on both.
#[test]
fn a_vector_load_from_a_misaligned_address_is_caught() {
    let name = "vector_loads_ignore_pointer_alignment";
    planted(
        name,
        IGNORE_POINTER_ALIGNMENT,
        |h| {
            let cases: Vec<(Gemm, Part)> = gemm_cases(&[(64, 64, 64)])
                .into_iter()
                .map(|g| (g, Part::whole(g).offsets([1, 1, 0])))
                .collect();
            gemm_probe(GemmKernel::F32, &cases, h)?;
            gemm_probe(GemmKernel::Bf16TensorCores, &cases, h)
        },
        &["misaligned address", "is not 16-byte aligned"],
    );
    // The same mutant (its build is reused), aligned buffers, a k range from 5.
    planted(
        name,
        IGNORE_POINTER_ALIGNMENT,
        |h| {
            let g = Gemm::new(64, 64, 128);
            gemm_probe(
                GemmKernel::Bf16Simt,
                &[(g, Part::whole(g).k_range(5, 77))],
                h,
            )
        },
        &["misaligned address"],
    );
}

/// sum_partial adding up the slots of every warp a block could have (32) instead of the
/// block's 8: the other slots were never written in this block, and read as the NaN the
/// emulation fills shared memory with (they would read as zeros, and pass, without it).
#[test]
fn a_read_of_shared_memory_no_thread_wrote_is_caught() {
    planted(
        "sum_partial_reads_unwritten_slots",
        &[(
            "softmax.cu",
            "for (int w = 0; w < (int)(blockDim.x / WARP_SIZE); ++w) {",
            "for (int w = 0; w < 1024 / WARP_SIZE; ++w) {",
        )],
        sum_partial_probe,
        &["differ"],
    );
}

/// A `__shared__` array too small for the block's warps: the bounds sanitizer aborts.
#[test]
fn an_index_past_a_shared_array_is_caught() {
    planted(
        "sum_partial_short_shared_array",
        &[(
            "softmax.cu",
            "__shared__ double warp_sums[1024 / WARP_SIZE];",
            "__shared__ double warp_sums[4];",
        )],
        sum_partial_probe,
        &["out of bounds"],
    );
}

/// A mutation whose anchor is no longer in the kernels fails loudly instead of testing
/// nothing.
#[test]
#[should_panic(expected = "its anchor occurs 0 times in kernels/gemm.cu")]
fn a_mutation_whose_anchor_is_gone_fails_loudly() {
    Harness::mutant(
        "stale_anchor",
        &[("gemm.cu", "this text is not in the kernel", "")],
    );
}

fn fused_probe(h: &Harness) -> Result<(), String> {
    let cases = whole(&gemm_cases(&[(65, 70, 40)]));
    check_fused(
        h,
        SCHEDULES,
        GemmKernel::Bf16TensorCores,
        &cases,
        &[1, 2],
        52,
    )
}

/// The epilogue's bias indexed by the row of C instead of its column.
#[test]
fn a_bias_added_by_row_in_the_gemm_epilogue_is_caught() {
    planted(
        "gemm_epilogue_bias_by_row",
        &[(
            "common.cuh",
            "            v = v + bias;\n",
            "            v = v + bias_of(ep, n, row);\n",
        )],
        fused_probe,
        &["vs CPU gemm then bias_act"],
    );
}

/// The epilogue's bf16 copy of C taken before the ReLU: C is right, the copy is not.
#[test]
fn a_bf16_copy_taken_before_the_relu_is_caught() {
    planted(
        "gemm_epilogue_bf16_before_relu",
        &[(
            "common.cuh",
            "        if (ep.relu) {\n            v = fmaxf(v, 0.0f);\n        }\n        c[at] = v;\n        \
             if (ep.c_bf16 != nullptr) {\n            ep.c_bf16[at] = float_to_bf16(v);\n        }\n",
            "        if (ep.c_bf16 != nullptr) {\n            ep.c_bf16[at] = float_to_bf16(v);\n        }\n        \
             if (ep.relu) {\n            v = fmaxf(v, 0.0f);\n        }\n        c[at] = v;\n",
        )],
        fused_probe,
        &["the bf16 copy of C"],
    );
}
