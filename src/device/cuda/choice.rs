//! Which GEMM kernel a product runs on, and why: a pure function of the shape, the lane's
//! precision and whether the GPU has tensor cores, so that the backend, `setpoint kernels
//! check` and the tests all see the same choice without a GPU.
//!
//! For bf16 on tensor cores the choice is between `gemm_bf16` (64 × 64 tiles) and
//! `gemm_bf16_small_m` (16 × 64 tiles, the tile's k split across the CTA's four warps). Up
//! to [`SMALL_M_MAX`] rows both have a single row of tiles, so both read A and B from global
//! memory the same number of times, and the small tile computes 4× fewer padding rows: at
//! m = 8, 50 % of its tile is padding against 87.5 % of gemm_bf16's, and each warp
//! multiplies a quarter of k instead of a quarter of the (mostly empty) tile. Past 16 rows
//! the small kernel needs `ceil(m / 16)` rows of tiles, each reading all of B again, where
//! gemm_bf16 reads B once up to m = 64; whether the saved padding pays for that is for a
//! measurement on a GPU to say, so the threshold stays where the arithmetic is one-sided.
//!
//! Past that, `gemm_bf16_128` (128 × 128 tiles, 8 warps) reads each k-slice of A and B once
//! for 4× the products of a 64 × 64 tile, halving the operand traffic per multiply-add, but
//! makes 4× fewer tiles: a product with fewer 128 × 128 tiles than the GPU has SMs would
//! leave SMs idle that 64 × 64 tiles keep busy. So it runs when its tiles are at least the
//! SM count (one tile a CTA per launch, so at least one CTA an SM), and `gemm_bf16`
//! otherwise.
//!
//! On sm_90a, where the device was opened with it (`device.gemm_wgmma`), `gemm_bf16_wgmma`
//! (wgmma fed by TMA, kernels/gemm_wgmma.cu) takes the products [`choose_gemm`] gives
//! `gemm_bf16_128`, when the TMA can address their operands ([`wgmma_operands`]); an
//! operand it cannot (a base off a 16-byte boundary, rows not a multiple of 16 bytes apart)
//! keeps `gemm_bf16_128`, which loads such operands element by element, and [`TmaRefusal`]
//! says why ([`choose_gemm_at`]). Its tiles are `gemm_bf16_128`'s, so the same tile count
//! decides; whether it should also take the smaller products is for a GPU's measurements
//! to say. `setpoint kernels check` shows the rule for sm_90.

use std::fmt;

use super::Kernel;
use super::launch::{GemmTile, K_CHUNK_BF16, K_CHUNK_BF16_LARGE, K_CHUNK_F32};
use super::tma::{TmaRefusal, gemm_tensor_maps};
use crate::device::{Gemm, Precision};

/// The largest m that runs on `gemm_bf16_small_m`: one row of its 16-row tiles.
pub const SMALL_M_MAX: usize = 16;

/// SMs of an H200 (the GPU the README's figures are for): `setpoint kernels check` shows the
/// choices for it, with no GPU to ask.
pub const H200_SMS: usize = 132;

/// Why a kernel was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GemmReason {
    /// The lane computes in f32.
    F32Precision,
    /// bf16 on a GPU without tensor cores (below sm_80).
    NoTensorCores,
    /// bf16 with at most [`SMALL_M_MAX`] rows.
    SmallM {
        /// Rows of C.
        m: usize,
    },
    /// bf16 with more than [`SMALL_M_MAX`] rows and fewer 128 × 128 tiles than SMs.
    LargeM {
        /// Rows of C.
        m: usize,
        /// Tiles of the product in 128 × 128 tiles.
        large_tiles: usize,
        /// SMs of the GPU.
        sms: usize,
    },
    /// bf16 with more than [`SMALL_M_MAX`] rows and at least one 128 × 128 tile per SM.
    LargeTiles {
        /// Tiles of the product in 128 × 128 tiles.
        large_tiles: usize,
        /// SMs of the GPU.
        sms: usize,
    },
    /// As [`GemmReason::LargeTiles`], on sm_90a with the TMA able to take both operands.
    Wgmma {
        /// Tiles of the product in 128 × 128 tiles.
        large_tiles: usize,
        /// SMs of the GPU.
        sms: usize,
    },
}

/// Percent of the rows of `rows`-row tiles that lie past m (padding), rounded down.
fn padding_percent(m: usize, rows: usize) -> usize {
    let covered = m.div_ceil(rows).max(1) * rows;
    (covered - m) * 100 / covered
}

impl fmt::Display for GemmReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (small, square) = (GemmTile::SMALL_M.rows, GemmTile::SQUARE.rows);
        match *self {
            GemmReason::F32Precision => write!(f, "f32 precision: the f32 SIMT kernel"),
            GemmReason::NoTensorCores => {
                write!(f, "bf16 without tensor cores (below sm_80): the SIMT twin")
            }
            GemmReason::SmallM { m } => write!(
                f,
                "m = {m} <= {SMALL_M_MAX}: one row of 16-row tiles, {}% padding against {}% \
                 in 64-row tiles, k split across the CTA's 4 warps",
                padding_percent(m, small),
                padding_percent(m, square)
            ),
            GemmReason::LargeM {
                m,
                large_tiles,
                sms,
            } => write!(
                f,
                "m = {m} > {SMALL_M_MAX}: 16-row tiles would read B {} times, 64-row tiles \
                 {} ({}% padding); {large_tiles} tiles of 128 x 128 would leave SMs idle \
                 ({large_tiles} < {sms} SMs)",
                m.div_ceil(small),
                m.div_ceil(square),
                padding_percent(m, square)
            ),
            GemmReason::LargeTiles { large_tiles, sms } => write!(
                f,
                "{large_tiles} tiles of 128 x 128 >= {sms} SMs: every SM has a tile, and each \
                 k-slice read serves 4x the products of a 64 x 64 tile"
            ),
            GemmReason::Wgmma { large_tiles, sms } => write!(
                f,
                "{large_tiles} tiles of 128 x 128 >= {sms} SMs, and the TMA takes both \
                 operands: wgmma on sm_90a, k-slices loaded by TMA"
            ),
        }
    }
}

/// A GEMM kernel for a product, with the k chunk of its launches and why it was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GemmChoice {
    /// The kernel.
    pub kernel: Kernel,
    /// Inner-dimension chunk of one launch (see [`super::launch`]).
    pub k_chunk: usize,
    /// Why.
    pub reason: GemmReason,
}

impl GemmChoice {
    /// Output tiles of the product on this kernel.
    pub fn tiles(&self, g: &Gemm) -> usize {
        GemmTile::of(self.kernel).count(g.m, g.n)
    }
}

/// The kernel for `g` at `precision`, on a GPU with or without tensor cores and with `sms`
/// SMs.
pub fn choose_gemm(g: &Gemm, precision: Precision, tensor_cores: bool, sms: usize) -> GemmChoice {
    let large_tiles = GemmTile::LARGE.count(g.m, g.n);
    let (kernel, k_chunk, reason) = match precision {
        Precision::F32 => (Kernel::GemmF32, K_CHUNK_F32, GemmReason::F32Precision),
        Precision::Bf16 if !tensor_cores => {
            (Kernel::GemmBf16Simt, K_CHUNK_F32, GemmReason::NoTensorCores)
        }
        Precision::Bf16 if g.m <= SMALL_M_MAX => (
            Kernel::GemmBf16SmallM,
            K_CHUNK_BF16,
            GemmReason::SmallM { m: g.m },
        ),
        Precision::Bf16 if large_tiles >= sms => (
            Kernel::GemmBf16Large,
            K_CHUNK_BF16_LARGE,
            GemmReason::LargeTiles { large_tiles, sms },
        ),
        Precision::Bf16 => (
            Kernel::GemmBf16,
            K_CHUNK_BF16,
            GemmReason::LargeM {
                m: g.m,
                large_tiles,
                sms,
            },
        ),
    };
    GemmChoice {
        kernel,
        k_chunk,
        reason,
    }
}

/// [`choose_gemm`] for bf16 on a device that launches `gemm_bf16_wgmma` or not (`wgmma`),
/// with A and B at device addresses `a` and `b`: a product given `gemm_bf16_128` runs on
/// `gemm_bf16_wgmma` when the TMA can take both operands.
pub fn choose_gemm_at(
    g: &Gemm,
    tensor_cores: bool,
    sms: usize,
    wgmma: bool,
    (a, b): (u64, u64),
) -> GemmChoice {
    let choice = choose_gemm(g, Precision::Bf16, tensor_cores, sms);
    match choice.reason {
        GemmReason::LargeTiles { large_tiles, sms } if wgmma && wgmma_operands(g, a, b).is_ok() => {
            GemmChoice {
                kernel: Kernel::GemmBf16Wgmma,
                k_chunk: K_CHUNK_BF16_LARGE,
                reason: GemmReason::Wgmma { large_tiles, sms },
            }
        }
        _ => choice,
    }
}

/// Whether `gemm_bf16_wgmma` can take the operands of `g` stored at device addresses `a` and
/// `b`: the TMA's rules for its tensor maps ([`super::tma::gemm_tensor_maps`]); the error
/// says which operand it cannot take and why, and the product stays on [`choose_gemm`]'s
/// kernel.
pub fn wgmma_operands(g: &Gemm, a: u64, b: u64) -> Result<(), TmaRefusal> {
    gemm_tensor_maps(g, a, b, 0..g.k).map(|_| ())
}

/// Products `setpoint kernels check` shows the sm_90a rule for: (m, n, k, transpose A,
/// transpose B, A's offset in bytes from a 256-byte-aligned allocation).
pub const WGMMA_EXAMPLES: &[(usize, usize, usize, bool, bool, u64)] = &[
    (4096, 4096, 4096, false, false, 0),
    (2048, 784, 2048, false, true, 0),
    (4096, 4096, 4095, false, false, 0),
    (1001, 4096, 4096, true, false, 0),
    (4096, 4096, 4096, false, false, 2),
];

/// Shapes `setpoint kernels check` shows the choice for: the MLP's layers (784 → 2048 →
/// 10) at inference batches and a training batch, and large square products.
pub const REPRESENTATIVE_SHAPES: &[(usize, usize, usize)] = &[
    (1, 2048, 784),
    (8, 2048, 784),
    (16, 2048, 784),
    (32, 2048, 784),
    (256, 2048, 784),
    (8, 10, 2048),
    (4096, 4096, 4096),
    (8192, 8192, 8192),
];

#[cfg(test)]
mod tests {
    use super::*;

    fn kernel(m: usize, precision: Precision, tensor_cores: bool) -> Kernel {
        choose_gemm(&Gemm::new(m, 784, 2048), precision, tensor_cores, H200_SMS).kernel
    }

    #[test]
    fn small_batches_take_the_small_m_kernel_on_tensor_cores() {
        for m in [1, 2, 8, 15, 16] {
            assert_eq!(
                kernel(m, Precision::Bf16, true),
                Kernel::GemmBf16SmallM,
                "m={m}"
            );
        }
        // n = 784 is 7 columns of 128: 4096 rows make 32 x 7 = 224 large tiles.
        for m in [17, 32, 64, 2048] {
            assert_eq!(kernel(m, Precision::Bf16, true), Kernel::GemmBf16, "m={m}");
        }
        assert_eq!(kernel(4096, Precision::Bf16, true), Kernel::GemmBf16Large);
    }

    #[test]
    fn precision_and_tensor_cores_come_first() {
        for m in [1, 16, 4096] {
            assert_eq!(kernel(m, Precision::F32, true), Kernel::GemmF32);
            assert_eq!(kernel(m, Precision::F32, false), Kernel::GemmF32);
            assert_eq!(kernel(m, Precision::Bf16, false), Kernel::GemmBf16Simt);
        }
        let c = choose_gemm(&Gemm::new(8, 8, 8), Precision::Bf16, false, H200_SMS);
        assert_eq!(c.k_chunk, K_CHUNK_F32);
        assert_eq!(c.reason, GemmReason::NoTensorCores);
    }

    #[test]
    fn the_reason_gives_the_padding_arithmetic() {
        let g = Gemm::new(8, 2048, 784);
        let c = choose_gemm(&g, Precision::Bf16, true, H200_SMS);
        assert_eq!(c.tiles(&g), 32);
        assert_eq!(
            c.reason.to_string(),
            "m = 8 <= 16: one row of 16-row tiles, 50% padding against 87% in 64-row tiles, \
             k split across the CTA's 4 warps"
        );
        let g = Gemm::new(33, 2048, 784);
        let c = choose_gemm(&g, Precision::Bf16, true, H200_SMS);
        assert_eq!(c.tiles(&g), 32);
        assert_eq!(
            c.reason.to_string(),
            "m = 33 > 16: 16-row tiles would read B 3 times, 64-row tiles 1 (48% padding); 16 \
             tiles of 128 x 128 would leave SMs idle (16 < 132 SMs)"
        );
        assert_eq!(padding_percent(64, 64), 0);
        assert_eq!(padding_percent(1, 16), 93);
    }

    #[test]
    fn wgmma_takes_only_operands_the_tma_can_address() {
        let g = Gemm::new(4096, 4096, 4096);
        assert_eq!(wgmma_operands(&g, 0, 256), Ok(()));
        let e = wgmma_operands(&g, 2, 0).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the TMA cannot take A: it starts 2 bytes past a 16-byte boundary"
        );
        let e = wgmma_operands(&Gemm::new(4096, 4096, 4095), 0, 0).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the TMA cannot take A: its rows are 8190 bytes apart, not a multiple of 16"
        );
        // B transposed is n × k: k = 4095 breaks it too; A transposed is k × m.
        let mut t = Gemm::new(1001, 4096, 4096).ta();
        assert!(wgmma_operands(&t, 0, 0).is_err());
        t.m = 1000;
        assert_eq!(wgmma_operands(&t, 0, 0), Ok(()));
    }

    #[test]
    fn large_tiles_run_when_every_sm_gets_one() {
        let choice = |m, n, sms| choose_gemm(&Gemm::new(m, n, 512), Precision::Bf16, true, sms);
        // 11 x 12 = 132 tiles of 128 x 128: exactly one an SM; 11 x 11 = 121 leave 11 idle.
        let c = choice(1408, 1536, H200_SMS);
        assert_eq!(c.kernel, Kernel::GemmBf16Large);
        assert_eq!(c.tiles(&Gemm::new(1408, 1536, 512)), 132);
        assert_eq!(c.k_chunk, K_CHUNK_BF16_LARGE);
        assert_eq!(
            c.reason,
            GemmReason::LargeTiles {
                large_tiles: 132,
                sms: 132
            }
        );
        let c = choice(1408, 1408, H200_SMS);
        assert_eq!(c.kernel, Kernel::GemmBf16);
        assert_eq!(c.tiles(&Gemm::new(1408, 1408, 512)), 484);
        assert_eq!(c.k_chunk, K_CHUNK_BF16);
        // A smaller GPU takes the large tiles sooner; one row of them past the small-m
        // bound still needs as many tiles as SMs.
        assert_eq!(choice(1408, 1408, 108).kernel, Kernel::GemmBf16Large);
        assert_eq!(
            choice(17, 128 * 132, H200_SMS).kernel,
            Kernel::GemmBf16Large
        );
        assert_eq!(
            choice(16, 128 * 132, H200_SMS).kernel,
            Kernel::GemmBf16SmallM
        );
        // f32 and GPUs without tensor cores never take it.
        let g = Gemm::new(8192, 8192, 8192);
        assert_eq!(
            choose_gemm(&g, Precision::F32, true, H200_SMS).kernel,
            Kernel::GemmF32
        );
        assert_eq!(
            choose_gemm(&g, Precision::Bf16, false, H200_SMS).kernel,
            Kernel::GemmBf16Simt
        );
        let c = choose_gemm(&g, Precision::Bf16, true, H200_SMS);
        assert_eq!(
            c.reason.to_string(),
            "4096 tiles of 128 x 128 >= 132 SMs: every SM has a tile, and each k-slice read \
             serves 4x the products of a 64 x 64 tile"
        );
    }

    #[test]
    fn wgmma_takes_large_tile_products_only_where_launched_and_addressable() {
        let big = Gemm::new(4096, 4096, 4096);
        let c = choose_gemm_at(&big, true, H200_SMS, true, (0, 256));
        assert_eq!(c.kernel, Kernel::GemmBf16Wgmma);
        assert_eq!(c.tiles(&big), 32 * 32);
        assert!(
            c.reason.to_string().contains("wgmma on sm_90a"),
            "{}",
            c.reason
        );
        // Not opened with it: gemm_bf16_128 as before.
        let off = choose_gemm_at(&big, true, H200_SMS, false, (0, 256));
        assert_eq!(off.kernel, Kernel::GemmBf16Large);
        // An operand the TMA cannot take (A 2 bytes off a boundary; k odd).
        assert_eq!(
            choose_gemm_at(&big, true, H200_SMS, true, (2, 0)).kernel,
            Kernel::GemmBf16Large
        );
        let odd_k = Gemm::new(4096, 4096, 4095);
        assert_eq!(
            choose_gemm_at(&odd_k, true, H200_SMS, true, (0, 0)).kernel,
            Kernel::GemmBf16Large
        );
        // Products the tile count gives the 64-row kernels keep them.
        for (m, n, k) in [(8, 2048, 784), (256, 2048, 784)] {
            let g = Gemm::new(m, n, k);
            assert_eq!(
                choose_gemm_at(&g, true, H200_SMS, true, (0, 0)),
                choose_gemm(&g, Precision::Bf16, true, H200_SMS)
            );
        }
    }
}
