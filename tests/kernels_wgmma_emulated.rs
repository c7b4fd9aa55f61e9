//! `gemm_bf16_wgmma` (kernels/gemm_wgmma.cu: wgmma fed by TMA, sm_90a) and the emulation of
//! the sm_90 primitives it runs on (kernels/emu/mbarrier.h, tma.h, wgmma.h), on the CPU:
//!
//! - the primitives alone, through the test kernels of kernels/emu/hopper_probe.h: mbarrier
//!   phases and their parity, a phase that can never complete failing the block by name, TMA
//!   boxes with their out-of-bounds zeros under every swizzle (checked against the swizzle
//!   computed here from the PTX ISA's rule), wgmma on a known product for every swizzle and
//!   both operand majors, and reads before the waits making the schedules disagree;
//! - the kernel against the CPU backend: awkward shapes, every transposition the TMA takes,
//!   grids that must give the same C bit for bit, tile ranges, k ranges and split-K, under
//!   every schedule of the emulation; and with its fused epilogue (bias, ReLU, a bf16 copy
//!   of C) against the CPU backend's GEMM then bias_act, alone and after split-K.
//!
//! The layouts (swizzle, descriptors, accumulator fragment) come from the PTX ISA and CUTLASS
//! (see the headers); only a GPU can confirm the hardware follows them as emulated.

use crate::support::emu;
use crate::support::emu_gemm;

use setpoint::device::Gemm;
use setpoint::device::cuda::choice::wgmma_operands;
use setpoint::device::cuda::tma::{TensorMap2d, TmaSwizzle};
use setpoint::util::rng::Rng;

use emu::{Harness, Launch, SCHEDULES, assert_close, assert_same, round_to_bf16, uniform};
use emu_gemm::{
    Epi, GemmKernel, Part, check_fused, check_fused_split, check_gemm, describe, gemm_cases,
    gemm_inputs, gemm_launch, reference,
};

const WGMMA: GemmKernel = GemmKernel::Bf16Wgmma;

/// Every case of `shapes` in every transposition whose operands the TMA can take (with
/// aligned buffers); each shape must keep at least one.
fn tma_cases(shapes: &[(usize, usize, usize)]) -> Vec<(Gemm, Part)> {
    let cases: Vec<(Gemm, Part)> = gemm_cases(shapes)
        .into_iter()
        .filter(|g| wgmma_operands(g, 0, 0).is_ok())
        .map(|g| (g, Part::whole(g)))
        .collect();
    for &(m, n, k) in shapes {
        assert!(
            cases.iter().any(|(g, _)| (g.m, g.n, g.k) == (m, n, k)),
            "{m}x{n}x{k}: the TMA takes no transposition of it"
        );
    }
    cases
}

fn check(cases: &[(Gemm, Part)], grids: &[u32], seed: u64) {
    if let Err(e) = check_gemm(Harness::main(), SCHEDULES, WGMMA, cases, grids, seed) {
        panic!("{e}");
    }
}

/// Sizes of 1, primes and one past the 128-wide tile where the storage allows the TMA (a
/// transposition whose rows would not be a multiple of 16 bytes apart is left out: the host
/// runs another kernel for it), k one slice, several slices and a partial one, k = 0.
#[test]
fn gemm_bf16_wgmma_matches_cpu_on_awkward_shapes_and_every_transposition_the_tma_takes() {
    let shapes = [
        (1, 1, 8),
        (1, 17, 72),
        (17, 1, 8),
        (129, 257, 136),
        (136, 8, 64),
        (8, 136, 200),
        (128, 128, 64),
        (200, 264, 72),
        (8, 16, 0),
    ];
    check(&tma_cases(&shapes), &[1, 3, 7], 60);
}

/// Several tiles per CTA and several rounds of the 4-stage ring, every transposition.
#[test]
fn gemm_bf16_wgmma_runs_the_ring_over_many_tiles_and_slices() {
    check(&tma_cases(&[(264, 392, 328)]), &[1, 2, 5], 61);
}

/// Launches over tile ranges compose to the one-launch C exactly; launches over k ranges
/// (the maps' k extent clipped to each range's end, as the host encodes them) add up to the
/// CPU product.
#[test]
fn gemm_bf16_wgmma_composes_over_tile_ranges_and_k_ranges() {
    let mut rng = Rng::new(62);
    for (t, g) in tma_cases(&[(264, 136, 200)]).into_iter().enumerate() {
        let g = g.0.scaled(0.75, -0.5);
        let tiles = WGMMA.tiles(g);
        assert_eq!(tiles, 6);
        let (a, b, c) = gemm_inputs(&mut rng, WGMMA, g);
        let what = describe(WGMMA, g, Part::whole(g));
        let whole = gemm_launch(WGMMA, g, &a, &b, &c, Part::whole(g))
            .run(1)
            .f32(2);
        let cut = 1 + t % 4;
        let first = Part::whole(g).tile_range(0, cut);
        let half = gemm_launch(WGMMA, g, &a, &b, &c, first).run(2).f32(2);
        let rest = Part::whole(g).tile_range(cut, tiles);
        let split = gemm_launch(WGMMA, g, &a, &b, &half, rest).run(3).f32(2);
        assert_same(&format!("{what}: tiles cut at {cut}"), &split, &whole, g.n);

        let want = reference(g, &a, &b, &c, (0, g.k));
        let mut acc = c.clone();
        for (i, w) in [0, 64, 77, 200].windows(2).enumerate() {
            let chunk = if i == 0 { g } else { g.scaled(g.alpha, 1.0) };
            let part = Part::whole(g).k_range(w[0], w[1]);
            acc = gemm_launch(WGMMA, chunk, &a, &b, &acc, part)
                .run(1 + i as u32)
                .f32(2);
        }
        let tol = |i| want.tol[i];
        assert_close(
            &format!("{what}: split-K at 64, 77"),
            &acc,
            &want.c,
            g.n,
            tol,
        );
    }
}

/// k ranges that start anywhere (TMA coordinates need no alignment), an empty one, one past k.
#[test]
fn gemm_bf16_wgmma_sums_over_its_k_range_only() {
    let cases: Vec<(Gemm, Part)> = tma_cases(&[(136, 72, 136)])
        .into_iter()
        .zip([(5, 77), (64, 64), (96, 1000), (0, 64)])
        .map(|((g, p), (lo, hi))| (g, p.k_range(lo, hi)))
        .collect();
    check(&cases, &[1, 2], 63);
}

// ---------------------------------------------------------------------------------------------
// The primitives.

fn mbarrier_probe(mode: usize) -> Launch {
    Launch::new("emu_mbarrier_probe")
        .u32s(&[0xdead; 64 * 4])
        .int(mode)
}

#[test]
fn mbarrier_phases_complete_on_their_arrivals_and_waits_follow_their_parity() {
    let out = mbarrier_probe(0).run(1);
    let bits = out.u32(0);
    for t in 0..64 {
        let got = &bits[4 * t..4 * t + 4];
        // A fresh barrier's parity-1 phase counts as complete; the arrives return the phase
        // they arrived in (0, then 1); both waits returned.
        assert_eq!(got, [1, 0, 1, 7], "thread {t}");
    }
}

#[test]
fn an_mbarrier_phase_that_can_never_complete_fails_the_block_by_name() {
    for schedule in SCHEDULES {
        let err = match mbarrier_probe(1).try_run(Harness::main(), 1, &[*schedule]) {
            Ok(_) => panic!("schedule {schedule}: a wait on missing bytes went unnoticed"),
            Err(e) => e,
        };
        assert!(
            err.contains("wait in mbarrier.try_wait.parity")
                && err.contains("can never complete")
                && err.contains("lacks 0 of its 1 arrivals and 64 transaction bytes"),
            "{err}"
        );
    }
    let err = mbarrier_probe(2).run_failing(1);
    assert!(err.contains("lacks 1 of its 65 arrivals"), "{err}");
    let err = mbarrier_probe(3).run_failing(1);
    assert!(err.contains("more arrivals in one phase"), "{err}");
    let err = mbarrier_probe(4).run_failing(1);
    assert!(err.contains("was not initialised"), "{err}");
}

/// The shared-memory offset where TMA puts byte `offset` of a box (from a 1024-byte-aligned
/// destination): the PTX ISA's swizzle, 16-byte chunk bits [4, 4+B) XOR line bits [7, 7+B).
fn swizzled(offset: usize, span: usize) -> usize {
    let mask = span / 16 - 1;
    offset ^ (((offset >> 7) & mask) << 4)
}

/// A 40 x 70 bf16 matrix (rows 160 bytes apart: dims (70, 40) padded to 80) whose elements
/// encode their coordinates.
fn coordinate_matrix() -> (Vec<u16>, TensorMap2d) {
    let (rows, ld) = (40usize, 80usize);
    let v = (0..rows * ld)
        .map(|i| (1 + (i / ld) * 100 + i % ld) as u16)
        .collect();
    let map = TensorMap2d {
        address: 0,
        dims: [70, rows as u64],
        stride_bytes: (ld * 2) as u64,
        box_dims: [8, 8],
        swizzle: TmaSwizzle::None,
    };
    (v, map)
}

fn tma_probe(src: &[u16], map: &TensorMap2d, at: (i64, i64), mode: usize) -> Launch {
    let bytes = (map.box_dims[0] * map.box_dims[1] * 2) as usize;
    let c = |v: i64| i32::try_from(v).unwrap();
    Launch::new("emu_tma_probe")
        .u16s(src)
        .u16s(&vec![0xdead; bytes / 2])
        .int_signed(c(at.0))
        .int_signed(c(at.1))
        .int(bytes)
        .int(mode)
        .tensor_map(1, map)
}

#[test]
fn a_tma_box_lands_swizzled_with_zeros_outside_the_tensor() {
    let (src, base) = coordinate_matrix();
    for (swizzle, span) in [
        (TmaSwizzle::None, 16),
        (TmaSwizzle::B32, 32),
        (TmaSwizzle::B64, 64),
        (TmaSwizzle::B128, 128),
    ] {
        let inner = if span == 16 { 24 } else { span / 2 };
        let map = TensorMap2d {
            box_dims: [inner as u32, 16],
            swizzle,
            ..base
        };
        // Inside, across the right edge (x past 70), across the bottom, and before the start.
        for at in [(0i64, 0i64), (8, 3), (64, 30), (-8, -5)] {
            let got = tma_probe(&src, &map, at, 0).run(1).u16(1);
            for y in 0..16i64 {
                for x in 0..inner as i64 {
                    let (gx, gy) = (at.0 + x, at.1 + y);
                    let inside = (0..70).contains(&gx) && (0..40).contains(&gy);
                    let want = if inside {
                        src[(gy * 80 + gx) as usize]
                    } else {
                        0
                    };
                    let offset = ((y * inner as i64 + x) * 2) as usize;
                    let at_byte = swizzled(offset, span);
                    assert_eq!(
                        got[at_byte / 2],
                        want,
                        "swizzle {span}B, box at {at:?}, element ({x}, {y})"
                    );
                }
            }
        }
    }
}

#[test]
fn reading_a_tma_box_before_its_barrier_makes_the_schedules_disagree() {
    let (src, map) = coordinate_matrix();
    let err = match tma_probe(&src, &map, (0, 0), 1).try_run(Harness::main(), 1, SCHEDULES) {
        Ok(_) => panic!("a read before mbarrier.try_wait went unnoticed"),
        Err(e) => e,
    };
    assert!(err.contains("give different results"), "{err}");
}

/// The wgmma probe: D = A (64 x 64) * B (64 x 128) with operands through TMA boxes of the
/// swizzle `span` (0: none) and descriptors of the matching canonical layout.
fn wgmma_probe(span: usize, ta: bool, tb: bool, mode: usize, a: &[f32], b: &[f32]) -> Launch {
    let e = if span == 0 { 8 } else { span / 2 } as u32;
    let swizzle = match span {
        128 => TmaSwizzle::B128,
        64 => TmaSwizzle::B64,
        32 => TmaSwizzle::B32,
        _ => TmaSwizzle::None,
    };
    // Storage (rows x cols, cols contiguous) and the box of each operand.
    let map = |rows: usize, cols: usize, k_major: bool| TensorMap2d {
        address: 0,
        dims: [cols as u64, rows as u64],
        stride_bytes: (cols * 2) as u64,
        box_dims: if k_major { [e, rows as u32] } else { [e, 64] },
        swizzle,
    };
    let ma = if ta {
        map(64, 64, false)
    } else {
        map(64, 64, true)
    };
    let mb = if tb {
        map(128, 64, true)
    } else {
        map(64, 128, false)
    };
    Launch::new("emu_wgmma_probe")
        .u16s(&emu::to_bf16_bits(a))
        .u16s(&emu::to_bf16_bits(b))
        .f32s(&vec![f32::NAN; 64 * 128])
        .int(span)
        .flag(ta)
        .flag(tb)
        .int(mode)
        .tensor_map(1, &ma)
        .tensor_map(2, &mb)
}

#[test]
fn wgmma_computes_a_known_product_under_every_swizzle_and_operand_major() {
    let mut rng = Rng::new(64);
    for span in [0, 32, 64, 128] {
        for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
            let a = round_to_bf16(&uniform(&mut rng, 64 * 64, -1.0, 1.0));
            let b = round_to_bf16(&uniform(&mut rng, 64 * 128, -1.0, 1.0));
            let mut g = Gemm::new(64, 128, 64);
            g.trans_a = ta;
            g.trans_b = tb;
            let got = wgmma_probe(span, ta, tb, 0, &a, &b).run(1).f32(2);
            let want = reference(g, &a, &b, &vec![0.0; 64 * 128], (0, 64));
            let what = format!("wgmma probe, swizzle {span}B, trans_a={ta} trans_b={tb}");
            assert_close(&what, &got, &want.c, 128, |i| want.tol[i]);
        }
    }
}

#[test]
fn reading_wgmma_accumulators_before_wait_group_makes_the_schedules_disagree() {
    let mut rng = Rng::new(65);
    let a = round_to_bf16(&uniform(&mut rng, 64 * 64, -1.0, 1.0));
    let b = round_to_bf16(&uniform(&mut rng, 64 * 128, -1.0, 1.0));
    let probe = wgmma_probe(128, false, true, 1, &a, &b);
    let err = match probe.try_run(Harness::main(), 1, SCHEDULES) {
        Ok(_) => panic!("accumulators read before wgmma.wait_group went unnoticed"),
        Err(e) => e,
    };
    assert!(err.contains("give different results"), "{err}");
}

/// A refused encode says why, as the driver would refuse it: rows 2 bytes apart.
#[test]
fn the_emulated_encode_refuses_what_the_tma_cannot_address() {
    let (src, base) = coordinate_matrix();
    let map = TensorMap2d {
        stride_bytes: 2,
        ..base
    };
    let err = tma_probe(&src, &map, (0, 0), 0).run_failing(1);
    assert!(
        err.contains("cuTensorMapEncodeTiled refuses") && err.contains("multiple of 16"),
        "{err}"
    );
}

/// The fused epilogue in wgmma's store from registers: C as the CPU backend's GEMM then its
/// bias_act, the bf16 copy as C rounded, grids bit for bit; then as the last of k ranges.
#[test]
fn gemm_bf16_wgmma_fuses_bias_relu_and_a_bf16_copy_into_its_store() {
    let cases = tma_cases(&[(129, 136, 72), (8, 136, 200), (8, 16, 0)]);
    if let Err(e) = check_fused(Harness::main(), SCHEDULES, WGMMA, &cases, &[1, 3], 63) {
        panic!("{e}");
    }
    let mut rng = Rng::new(64);
    for (t, (g, _)) in tma_cases(&[(136, 136, 200)]).into_iter().enumerate() {
        let epi = Epi {
            bias: Some(uniform(&mut rng, g.n, -1.0, 1.0)),
            relu: t % 2 == 0,
            bf16: t < 2,
        };
        let g = g.scaled(0.75, -0.5);
        let split = check_fused_split(
            Harness::main(),
            WGMMA,
            g,
            &[0, 64, 77, 200],
            &epi,
            65 + t as u64,
        );
        if let Err(e) = split {
            panic!("{e}");
        }
    }
}
