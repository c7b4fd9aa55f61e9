//! How one operation is cut into launches so that no CTA of a launch runs long: pure
//! arithmetic, tested without a GPU.
//!
//! Stream priority decides which waiting CTA the block scheduler starts next; it does not
//! preempt CTAs already running. So an inference kernel queued at the highest priority
//! beside a training lane waits, at worst, for one CTA of the training kernel already
//! running on an SM to finish. The backend bounds that by giving every CTA of a launch at
//! most one piece of work:
//!
//! - a GEMM launch gives each CTA one output tile (64 × 64, 16 × 64 for the small-m kernel
//!   or 128 × 128 for the large-tile kernel, see [`GemmTile`]) over at most [`K_CHUNK_F32`] (SIMT
//!   kernels) or [`K_CHUNK_BF16`] (tensor cores) of the inner dimension; a longer k runs as
//!   successive launches that add into C (split-K in stream order, so no atomics and the same
//!   result every run);
//! - element-wise kernels get at most [`ITEMS_PER_THREAD`] elements a thread per launch, and
//!   row kernels (softmax) at most [`ROW_PASSES`] rows a warp.
//!
//! [`cta_time_us`] turns that into the worst-case wait in microseconds from the cost of the
//! piece, which the README states for an H200.

use std::ops::Range;

use super::Kernel;

/// Output tile edge of the 64 × 64 GEMM kernels (ABI.md).
pub const TILE: usize = 64;

/// The output tile of a GEMM kernel (ABI.md): tiles are numbered row-major over C, so the
/// host's tile ranges must count them with the kernel's own geometry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GemmTile {
    /// Rows of C a tile covers.
    pub rows: usize,
    /// Columns of C a tile covers.
    pub cols: usize,
}

impl GemmTile {
    /// `gemm_f32`, `gemm_bf16_simt` and `gemm_bf16`.
    pub const SQUARE: GemmTile = GemmTile {
        rows: TILE,
        cols: TILE,
    };
    /// `gemm_bf16_small_m`.
    pub const SMALL_M: GemmTile = GemmTile {
        rows: 16,
        cols: TILE,
    };
    /// `gemm_bf16_128`.
    pub const LARGE: GemmTile = GemmTile {
        rows: 2 * TILE,
        cols: 2 * TILE,
    };

    /// The tile of a GEMM kernel (the 64 × 64 one for every other kernel).
    pub fn of(kernel: Kernel) -> GemmTile {
        match kernel {
            Kernel::GemmBf16SmallM => GemmTile::SMALL_M,
            Kernel::GemmBf16Large | Kernel::GemmBf16Wgmma => GemmTile::LARGE,
            _ => GemmTile::SQUARE,
        }
    }

    /// Tiles covering an `m × n` C.
    pub fn count(self, m: usize, n: usize) -> usize {
        m.div_ceil(self.rows) * n.div_ceil(self.cols)
    }
}
/// Inner-dimension chunk of one launch of the SIMT GEMMs (`gemm_f32`, `gemm_bf16_simt`).
pub(crate) const K_CHUNK_F32: usize = 256;
/// Inner-dimension chunk of one launch of the tensor-core GEMMs with 64-row tiles
/// (`gemm_bf16`, `gemm_bf16_small_m`).
pub(crate) const K_CHUNK_BF16: usize = 2048;
/// Inner-dimension chunk of one launch of `gemm_bf16_128`: a 128 × 128 tile over 512 of k
/// is as many multiply-adds as a 64 × 64 tile over [`K_CHUNK_BF16`], so a CTA's piece, and
/// the wait it can cause, stays the same size.
pub(crate) const K_CHUNK_BF16_LARGE: usize = K_CHUNK_BF16 / 4;
/// Elements one thread of an element-wise kernel handles in one launch, at most.
pub(crate) const ITEMS_PER_THREAD: usize = 16;
/// Rows one warp of a softmax kernel handles in one launch, at most.
pub(crate) const ROW_PASSES: usize = 4;
/// Rows one 256-thread block of the softmax kernels handles at once (one row per warp).
pub(crate) const ROWS_PER_BLOCK: usize = 8;

/// One GEMM launch: tiles `[tile_begin, tile_end)` over `[k_begin, k_end)`; `first` when it
/// is the first chunk of its tiles (which applies the caller's `beta`; later chunks add),
/// `last` when it is the last (which applies a fused epilogue: kernels/ABI.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GemmLaunch {
    /// First tile.
    pub tiles: Range<usize>,
    /// The k range.
    pub k: Range<usize>,
    /// The first chunk of these tiles.
    pub first: bool,
    /// The last chunk of these tiles.
    pub last: bool,
}

/// The launches of an `m × n × k` GEMM in `tile`s for a lane of `budget` CTAs, tile ranges
/// outermost (each range's chunks back to back, while its C tiles are warm in L2). A `k` of
/// 0 is one launch per tile range over the empty range (C = beta·C).
pub(crate) fn gemm_launches(
    tile: GemmTile,
    m: usize,
    n: usize,
    k: usize,
    budget: usize,
    k_chunk: usize,
) -> impl Iterator<Item = GemmLaunch> {
    let tiles = tile.count(m, n);
    let per_launch = budget.max(1);
    let k_chunk = k_chunk.max(1);
    let chunks = k.div_ceil(k_chunk).max(1);
    (0..tiles.div_ceil(per_launch)).flat_map(move |t| {
        let tiles = t * per_launch..((t + 1) * per_launch).min(tiles);
        (0..chunks).map(move |c| GemmLaunch {
            tiles: tiles.clone(),
            k: (c * k_chunk).min(k)..((c + 1) * k_chunk).min(k),
            first: c == 0,
            last: c + 1 == chunks,
        })
    })
}

/// A CTA budget counted in CTAs of kernels that fit `per_sm` per SM, as CTAs of a kernel
/// that fits `resident`: the same SMs' worth, at least one; unchanged when the kernel fits at
/// least as many or its occupancy is unknown (0).
pub(crate) fn scaled_budget(budget: usize, resident: u32, per_sm: u32) -> usize {
    if resident == 0 || resident >= per_sm {
        return budget.max(1);
    }
    (budget.saturating_mul(resident as usize))
        .div_ceil(per_sm as usize)
        .max(1)
}

/// Ranges of at most `per_launch` items covering `0..len`.
pub fn chunks(len: usize, per_launch: usize) -> impl Iterator<Item = Range<usize>> {
    let per = per_launch.max(1);
    (0..len.div_ceil(per)).map(move |i| i * per..((i + 1) * per).min(len))
}

/// Elements of an element-wise kernel one launch of `budget` CTAs of `block` threads takes.
pub(crate) fn elements_per_launch(budget: usize, block: usize) -> usize {
    budget.max(1) * block * ITEMS_PER_THREAD
}

/// Rows of a softmax kernel one launch of `budget` CTAs takes.
pub(crate) fn rows_per_launch(budget: usize) -> usize {
    budget.max(1) * ROWS_PER_BLOCK * ROW_PASSES
}

/// CTAs for `blocks` blocks of work under a budget: at most the budget, at least one.
pub fn grid(blocks: usize, budget: usize) -> u32 {
    blocks.clamp(1, budget.max(1)).min(u32::MAX as usize) as u32
}

/// How long one GEMM CTA's piece of work takes, µs, when `resident` CTAs share its SM and
/// the SM does `fma_per_clock` fused multiply-adds a cycle at `clock_hz` with `efficiency`
/// of that peak: `64 · 64 · k_chunk · resident / (fma_per_clock · efficiency · clock)`.
/// This is the longest a high-priority kernel waits for an SM slot behind a GEMM.
#[cfg(test)]
pub fn cta_time_us(
    k_chunk: usize,
    resident: u32,
    fma_per_clock: f64,
    efficiency: f64,
    clock_hz: f64,
) -> f64 {
    let fmas = (TILE * TILE * k_chunk) as f64 * f64::from(resident.max(1));
    fmas / (fma_per_clock * efficiency * clock_hz) * 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kernel_that_fits_fewer_per_sm_gets_the_same_sms_worth_of_ctas() {
        // 4 per SM is the unit; gemm_bf16_128 fits 1.
        assert_eq!(scaled_budget(528, 1, 4), 132);
        assert_eq!(scaled_budget(132, 1, 4), 33);
        assert_eq!(scaled_budget(5, 1, 4), 2);
        assert_eq!(scaled_budget(1, 1, 4), 1);
        assert_eq!(scaled_budget(10, 2, 4), 5);
        // As many or more per SM, or unknown: unchanged.
        assert_eq!(scaled_budget(10, 4, 4), 10);
        assert_eq!(scaled_budget(10, 8, 4), 10);
        assert_eq!(scaled_budget(10, 0, 4), 10);
        assert_eq!(scaled_budget(0, 1, 4), 1);
    }

    #[test]
    fn on_a_partition_a_product_is_one_launch_over_every_tile_and_all_of_k() {
        for &(m, n, k) in &[(1usize, 1usize, 1usize), (4096, 4096, 4096), (130, 65, 600)] {
            for tile in [GemmTile::SQUARE, GemmTile::LARGE, GemmTile::SMALL_M] {
                let launches: Vec<_> = gemm_launches(tile, m, n, k, usize::MAX, k).collect();
                assert_eq!(
                    launches,
                    vec![GemmLaunch {
                        tiles: 0..tile.count(m, n),
                        k: 0..k,
                        first: true,
                        last: true
                    }],
                    "{m}x{n}x{k} in {tile:?}"
                );
            }
        }
    }

    #[test]
    fn every_tile_gets_every_k_exactly_once_and_no_cta_more_than_one_tile() {
        for &(m, n, k, budget, chunk) in &[
            (1usize, 1usize, 1usize, 1usize, 256usize),
            (130, 65, 600, 3, 256),
            (64, 64, 256, 100, 256),
            (200, 300, 0, 4, 256),
            (1000, 1000, 5000, 132, 2048),
        ] {
            let tiles = m.div_ceil(TILE) * n.div_ceil(TILE);
            let mut cover = vec![0usize; tiles];
            let mut firsts = vec![0usize; tiles];
            // The last chunk of a tile (the one a fused epilogue rides on) ends k, and no
            // launch touches the tile after it.
            let mut done = vec![false; tiles];
            for l in gemm_launches(GemmTile::SQUARE, m, n, k, budget, chunk) {
                assert!(l.tiles.len() <= budget, "{l:?}");
                assert!(l.k.len() <= chunk);
                assert!(!l.last || l.k.end == k, "{l:?}");
                for t in l.tiles.clone() {
                    assert!(!done[t], "{l:?} after the last chunk of tile {t}");
                    cover[t] += l.k.len();
                    firsts[t] += usize::from(l.first);
                    done[t] = l.last;
                }
            }
            assert!(cover.iter().all(|&c| c == k), "{m}x{n}x{k}");
            assert!(firsts.iter().all(|&f| f == 1), "{m}x{n}x{k}");
            assert!(done.iter().all(|&d| d), "{m}x{n}x{k}");
        }
    }

    #[test]
    fn small_m_launches_count_16_by_64_tiles() {
        // m = 8: one row of tiles (gemm_bf16 would also have one, 87.5 % of it padding);
        // m = 33: three rows of 16; n = 784: 13 columns of 64.
        assert_eq!(GemmTile::of(Kernel::GemmBf16SmallM).count(8, 784), 13);
        assert_eq!(GemmTile::of(Kernel::GemmBf16SmallM).count(33, 784), 39);
        assert_eq!(GemmTile::of(Kernel::GemmBf16).count(33, 784), 13);
        let launches: Vec<GemmLaunch> =
            gemm_launches(GemmTile::SMALL_M, 33, 130, 100, 5, 64).collect();
        // 3 × 3 = 9 tiles in launches of at most 5, each over k in two chunks.
        let ranges: Vec<(Range<usize>, Range<usize>, bool)> = launches
            .into_iter()
            .map(|l| (l.tiles, l.k, l.first))
            .collect();
        assert_eq!(
            ranges,
            vec![
                (0..5, 0..64, true),
                (0..5, 64..100, false),
                (5..9, 0..64, true),
                (5..9, 64..100, false),
            ]
        );
    }

    #[test]
    fn chunked_k_starts_on_32_for_the_kernels_vector_loads() {
        for l in gemm_launches(GemmTile::SQUARE, 300, 300, 10_000, 7, K_CHUNK_F32) {
            assert_eq!(l.k.start % 32, 0);
        }
        for l in gemm_launches(GemmTile::SQUARE, 300, 300, 10_000, 7, K_CHUNK_BF16) {
            assert_eq!(l.k.start % 32, 0);
        }
    }

    #[test]
    fn element_chunks_cover_once_and_respect_the_bound() {
        let per = elements_per_launch(3, 256);
        assert_eq!(per, 3 * 256 * ITEMS_PER_THREAD);
        let ranges: Vec<_> = chunks(per * 2 + 5, per).collect();
        assert_eq!(ranges, vec![0..per, per..2 * per, 2 * per..2 * per + 5]);
        assert_eq!(chunks(0, per).count(), 0);
        assert_eq!(rows_per_launch(2), 2 * ROWS_PER_BLOCK * ROW_PASSES);
        assert_eq!(grid(0, 10), 1);
        assert_eq!(grid(50, 10), 10);
        assert_eq!(grid(5, 0), 1);
    }

    #[test]
    fn the_wait_bound_follows_the_tile_cost() {
        // An H200 SM: 128 f32 FMA a cycle at 1.98 GHz; two resident gemm_f32 CTAs at full
        // efficiency: 64·64·256·2 / 128 = 16,384 cycles, about 8.3 µs.
        let t = cta_time_us(K_CHUNK_F32, 2, 128.0, 1.0, 1.98e9);
        assert!((t - 8.275).abs() < 0.01, "{t}");
        // Half the efficiency doubles it.
        assert!((cta_time_us(K_CHUNK_F32, 2, 128.0, 0.5, 1.98e9) - 2.0 * t).abs() < 1e-9);
    }
}
