//! The GEMM kernels of `kernels/gemm*.cu` (contract: `kernels/ABI.md`) run on the CPU through
//! the host emulation in `kernels/emu/` and are compared with the CPU backend: awkward shapes
//! (sizes 1, primes, one past a tile), every transposition, several grid sizes (which must
//! give the same C bit for bit), tile ranges, k ranges and split-K, and buffers that are not
//! 256-byte aligned. Every launch runs under several schedules of the emulation, which must
//! agree bit for bit (a race between the threads of a block shows as a difference).
//!
//! Every GEMM kernel also runs with its fused epilogue (bias by column, ReLU, a bf16 copy of
//! C), against the CPU backend's GEMM followed by its `bias_act`, alone and as the last of
//! split-K launches.
//!
//! `gemm_bf16` runs with `ldmatrix` and `mma.sync` emulated from their PTX fragment layouts,
//! which checks the kernel's tiling and fragment indexing against those layouts; only a GPU
//! can check the layouts themselves (and it compares `gemm_bf16` with `gemm_bf16_simt`).

use crate::support::emu;
use crate::support::emu_gemm;

use setpoint::device::Gemm;
use setpoint::util::rng::Rng;

use emu::{Harness, SCHEDULES, assert_close, assert_same, position};
use emu_gemm::{
    Epi, GEMM_SHAPES, GemmKernel, Part, check_fused, check_fused_split, check_gemm, describe,
    gemm_cases, gemm_inputs, gemm_launch, reference, whole,
};

fn check(kernel: GemmKernel, cases: &[(Gemm, Part)], seed: u64) {
    if let Err(e) = check_gemm(Harness::main(), SCHEDULES, kernel, cases, &[1, 3, 7], seed) {
        panic!("{e}");
    }
}

#[test]
fn gemm_f32_matches_cpu_on_all_shapes_and_transposes() {
    check(GemmKernel::F32, &whole(&gemm_cases(GEMM_SHAPES)), 1);
}

#[test]
fn gemm_bf16_simt_matches_cpu_on_bf16_inputs() {
    let shapes = [
        (1, 1, 1),
        (17, 63, 65),
        (64, 64, 64),
        (65, 130, 42),
        (3, 5, 0),
    ];
    check(GemmKernel::Bf16Simt, &whole(&gemm_cases(&shapes)), 2);
}

/// The tensor-core kernel with ldmatrix and mma.sync emulated: 128 threads, 32-deep
/// k-slices, 8-element vector loads where the leading dimension is a multiple of 8.
#[test]
fn gemm_bf16_tensor_core_kernel_matches_cpu_under_emulated_mma() {
    let shapes = [
        (1, 1, 1),
        (16, 8, 16),
        (17, 63, 65),
        (64, 64, 64),
        (128, 72, 96),
        (65, 130, 40),
        (130, 136, 72),
    ];
    check(GemmKernel::Bf16TensorCores, &whole(&gemm_cases(&shapes)), 3);
}

/// The small-m tensor-core kernel (16 x 64 tiles, k split across its 4 warps and reduced in
/// a fixed order): the batch sizes it is for and past them (m = 17 and 33 take two and three
/// row tiles), n and k prime or off the tile and the 64-deep k-slice (k = 31: one slice, no
/// warp but the first with data; k = 200: four slices, the last partial), k = 0 (C = beta·C).
#[test]
fn gemm_bf16_small_m_matches_cpu_for_inference_batches() {
    let shapes = [
        (1, 1, 1),
        (1, 67, 97),
        (2, 10, 64),
        (7, 131, 31),
        (8, 64, 128),
        (15, 13, 61),
        (16, 130, 72),
        (16, 8, 16),
        (17, 64, 200),
        (33, 72, 40),
        (8, 5, 0),
    ];
    check(GemmKernel::Bf16SmallM, &whole(&gemm_cases(&shapes)), 5);
}

/// The 128 x 128-tile kernel (8 warps as 2 x 4): m and n of 1, one either side of the tile
/// and past two tiles (127, 128, 129, 257), k empty, of 1, one either side of the 32-deep
/// k-slice and past four slices (0, 1, 31, 32, 33, 130), each value in some shape, every
/// shape with every transposition; grids of 1, 3 and 7 give the same C bit for bit.
#[test]
fn gemm_bf16_128_matches_cpu_around_its_tile_and_slice_edges() {
    let shapes = [
        (1, 257, 33),
        (127, 128, 130),
        (128, 1, 31),
        (129, 129, 32),
        (257, 127, 1),
        (128, 257, 0),
    ];
    check(GemmKernel::Bf16Large, &whole(&gemm_cases(&shapes)), 8);
}

/// An MLP inference layer at batch 8 (784 inputs, as the MNIST model's first layer): 13
/// column tiles of one row tile, 13 k-slices each, every grid giving the same C.
#[test]
fn gemm_bf16_small_m_runs_an_mlp_layer_at_batch_8() {
    let g = Gemm::new(8, 784, 784).tb();
    check(GemmKernel::Bf16SmallM, &[(g, Part::whole(g))], 6);
}

/// At batch 8 the small-m kernel's launches compose as the host cuts them: tile ranges of one
/// row of tiles give exactly the one-launch C, and split-K launches (beta, then 1) add up to
/// the CPU product, with every transposition.
#[test]
fn gemm_bf16_small_m_composes_over_tile_ranges_and_split_k_at_batch_8() {
    let mut rng = Rng::new(7);
    let kernel = GemmKernel::Bf16SmallM;
    for (t, g) in gemm_cases(&[(8, 200, 300)]).into_iter().enumerate() {
        let g = g.scaled(0.75, -0.5);
        assert_eq!(kernel.tiles(g), 4);
        let (a, b, c) = gemm_inputs(&mut rng, kernel, g);
        let what = describe(kernel, g, Part::whole(g));
        let whole = gemm_launch(kernel, g, &a, &b, &c, Part::whole(g))
            .run(1)
            .f32(2);
        let first = Part::whole(g).tile_range(0, 1 + t % 2);
        let rest = Part::whole(g).tile_range(1 + t % 2, 4);
        let half = gemm_launch(kernel, g, &a, &b, &c, first).run(2).f32(2);
        let split = gemm_launch(kernel, g, &a, &b, &half, rest).run(3).f32(2);
        assert_same(&format!("{what}: two tile ranges"), &split, &whole, g.n);

        let want = reference(g, &a, &b, &c, (0, g.k));
        let mut acc = c.clone();
        for (i, w) in [0, 64, 256, 300].windows(2).enumerate() {
            let chunk = if i == 0 { g } else { g.scaled(g.alpha, 1.0) };
            let part = Part::whole(g).k_range(w[0], w[1]);
            acc = gemm_launch(kernel, chunk, &a, &b, &acc, part)
                .run(1 + i as u32)
                .f32(2);
        }
        let tol = |i| want.tol[i];
        assert_close(
            &format!("{what}: split-K at 64, 256"),
            &acc,
            &want.c,
            g.n,
            tol,
        );
    }
}

/// Buffers a few bytes past the 256-byte alignment (as sub-buffers of a larger allocation
/// are), on shapes whose leading dimensions would otherwise allow vector loads: the kernels
/// must fall back to scalar loads and give the same product (the harness's alignment
/// sanitizer aborts on a misaligned vector load).
#[test]
fn gemm_kernels_take_misaligned_buffers_on_odd_shapes() {
    let shapes = [(64, 64, 64), (65, 72, 96), (1, 136, 40)];
    for (i, kernel) in GemmKernel::ALL.into_iter().enumerate() {
        let cases: Vec<(Gemm, Part)> = gemm_cases(&shapes)
            .into_iter()
            .enumerate()
            .map(|(j, g)| {
                let offsets = [[1, 1, 1], [1, 0, 0], [0, 3, 0], [0, 0, 5]][j % 4];
                (g, Part::whole(g).offsets(offsets))
            })
            .collect();
        check(kernel, &cases, 20 + i as u64);
    }
}

/// Each launch sums over its k range only: aligned ranges as the host passes them (k_begin a
/// multiple of 32), ranges that start anywhere (scalar loads), an empty range (C = beta·C),
/// and a range past k (clipped to k).
#[test]
fn gemm_k_ranges_sum_over_their_part_of_k() {
    let ranges = [
        (0, 32),
        (32, 96),
        (96, 130),
        (5, 77),
        (64, 64),
        (96, 1000),
        (0, 130),
    ];
    // Each range with two of the four transpositions, each transposition with three or four
    // ranges.
    let transposed = gemm_cases(&[(70, 65, 130)]);
    let cases: Vec<(Gemm, Part)> = ranges
        .iter()
        .enumerate()
        .flat_map(|(r, &(lo, hi))| {
            [transposed[r % 4], transposed[(r + 2) % 4]]
                .map(|g| (g, Part::whole(g).k_range(lo, hi)))
        })
        .collect();
    for (i, kernel) in GemmKernel::ALL.into_iter().enumerate() {
        check(kernel, &cases, 30 + i as u64);
    }
}

/// Split-K: launches over successive k ranges, beta for the first and 1 for the rest, add up
/// to the one-launch product within the f32 tolerance.
#[test]
fn gemm_split_k_launches_add_up_to_the_whole_product() {
    let mut rng = Rng::new(40);
    let splits: &[&[usize]] = &[&[0, 32, 64, 130], &[0, 96, 130], &[0, 37, 130]];
    for kernel in GemmKernel::ALL {
        for (s, &(alpha, beta)) in [(1.0f32, 0.0f32), (0.75, -0.5), (-1.25, 1.0)]
            .iter()
            .enumerate()
        {
            let mut g = Gemm::new(100, 70, 130).scaled(alpha, beta);
            g.trans_a = s % 2 == 1;
            g.trans_b = s >= 1;
            let (a, b, c) = gemm_inputs(&mut rng, kernel, g);
            let want = reference(g, &a, &b, &c, (0, g.k));
            let bounds = splits[s];
            let mut acc = c.clone();
            for (i, w) in bounds.windows(2).enumerate() {
                // The first launch applies beta to the old C, the others add to it.
                let chunk = if i == 0 { g } else { g.scaled(alpha, 1.0) };
                let part = Part::whole(g).k_range(w[0], w[1]);
                acc = gemm_launch(kernel, chunk, &a, &b, &acc, part)
                    .run(1 + i as u32)
                    .f32(2);
            }
            let what = format!(
                "{} split at {bounds:?}",
                describe(kernel, g, Part::whole(g))
            );
            assert_close(&what, &acc, &want.c, g.n, |i| want.tol[i]);
        }
    }
}

/// A GEMM split into two launches over the tile ranges [0, t/2) and [t/2, t) gives exactly
/// the one-launch result, and the first launch leaves the tiles outside its range alone. With
/// beta != 0 a kernel that ignored the range would apply beta twice.
#[test]
fn gemm_tile_ranges_split_the_product_exactly() {
    let mut rng = Rng::new(4);
    for kernel in GemmKernel::ALL {
        let g = Gemm::new(130, 150, 40).tb().scaled(1.25, 0.5);
        let (m, n) = (g.m, g.n);
        let t = kernel.tiles(g);
        let want_tiles = match kernel {
            GemmKernel::Bf16SmallM => 27,
            GemmKernel::Bf16Large => 4,
            _ => 9,
        };
        assert_eq!(t, want_tiles, "{}", kernel.name());
        let (a, b, c) = gemm_inputs(&mut rng, kernel, g);
        let what = describe(kernel, g, Part::whole(g));
        let whole = gemm_launch(kernel, g, &a, &b, &c, Part::whole(g))
            .run(1)
            .f32(2);

        let first = Part::whole(g).tile_range(0, t / 2);
        let half = gemm_launch(kernel, g, &a, &b, &c, first).run(2).f32(2);
        for i in 0..m * n {
            let tile = kernel.tile_of(g, i);
            let (got, want, which) = if tile < t / 2 {
                (half[i], whole[i], "the one-launch result")
            } else {
                (half[i], c[i], "the old C")
            };
            assert_eq!(
                got.to_bits(),
                want.to_bits(),
                "{what}: after the launch over tiles [0, {}), C{} (tile {tile}) is {got}, not \
                 {which} {want}",
                t / 2,
                position(i, n)
            );
        }
        let second = Part::whole(g).tile_range(t / 2, t);
        let split = gemm_launch(kernel, g, &a, &b, &half, second).run(3).f32(2);
        assert_same(
            &format!(
                "{what}: launches over [0, {}) + [{}, {t}) vs one launch",
                t / 2,
                t / 2
            ),
            &split,
            &whole,
            n,
        );
    }
}

/// The fused epilogue in every kernel's store: C equals the CPU backend's GEMM then its
/// bias_act, the bf16 copy is C rounded to nearest even, and grids agree bit for bit.
#[test]
fn every_gemm_kernel_fuses_bias_relu_and_a_bf16_copy_into_its_store() {
    let shapes = [(17, 63, 65), (65, 130, 40), (5, 7, 0)];
    for (s, kernel) in GemmKernel::ALL.into_iter().enumerate() {
        let cases = whole(&gemm_cases(&shapes));
        if let Err(e) = check_fused(
            Harness::main(),
            SCHEDULES,
            kernel,
            &cases,
            &[1, 3],
            70 + s as u64,
        ) {
            panic!("{e}");
        }
    }
}

/// As the backend runs a layer whose k is cut into launches: the epilogue only on the last
/// k range gives the fused result, every transposition.
#[test]
fn the_epilogue_on_the_last_k_range_completes_a_split_k_product() {
    let mut rng = Rng::new(75);
    for (s, kernel) in GemmKernel::ALL.into_iter().enumerate() {
        for (t, g) in gemm_cases(&[(33, 70, 300)]).into_iter().enumerate() {
            let epi = Epi {
                bias: Some(emu::uniform(&mut rng, g.n, -1.0, 1.0)),
                relu: t % 2 == 0,
                bf16: t < 2,
            };
            let g = g.scaled(0.75, -0.5);
            let seed = 80 + (4 * s + t) as u64;
            if let Err(e) =
                check_fused_split(Harness::main(), kernel, g, &[0, 64, 256, 300], &epi, seed)
            {
                panic!("{e}");
            }
        }
    }
}
