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

use std::fmt;

use super::Kernel;
use super::launch::{GemmTile, K_CHUNK_BF16, K_CHUNK_F32};
use crate::device::{Gemm, Precision};

/// The largest m that runs on `gemm_bf16_small_m`: one row of its 16-row tiles.
pub const SMALL_M_MAX: usize = 16;

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
    /// bf16 with more than [`SMALL_M_MAX`] rows.
    LargeM {
        /// Rows of C.
        m: usize,
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
            GemmReason::LargeM { m } => write!(
                f,
                "m = {m} > {SMALL_M_MAX}: 16-row tiles would read B {} times, 64-row tiles \
                 {} ({}% padding)",
                m.div_ceil(small),
                m.div_ceil(square),
                padding_percent(m, square)
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

/// The kernel for `g` at `precision`, on a GPU with or without tensor cores.
pub fn choose_gemm(g: &Gemm, precision: Precision, tensor_cores: bool) -> GemmChoice {
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
        Precision::Bf16 => (
            Kernel::GemmBf16,
            K_CHUNK_BF16,
            GemmReason::LargeM { m: g.m },
        ),
    };
    GemmChoice {
        kernel,
        k_chunk,
        reason,
    }
}

/// Shapes `setpoint kernels check` shows the choice for: the MLP's layers (784 → 2048 →
/// 10) at inference batches and a training batch, and a large square product.
pub const REPRESENTATIVE_SHAPES: &[(usize, usize, usize)] = &[
    (1, 2048, 784),
    (8, 2048, 784),
    (16, 2048, 784),
    (32, 2048, 784),
    (256, 2048, 784),
    (8, 10, 2048),
    (4096, 4096, 4096),
];

#[cfg(test)]
mod tests {
    use super::*;

    fn kernel(m: usize, precision: Precision, tensor_cores: bool) -> Kernel {
        choose_gemm(&Gemm::new(m, 784, 2048), precision, tensor_cores).kernel
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
        for m in [17, 32, 64, 4096] {
            assert_eq!(kernel(m, Precision::Bf16, true), Kernel::GemmBf16, "m={m}");
        }
    }

    #[test]
    fn precision_and_tensor_cores_come_first() {
        for m in [1, 16, 4096] {
            assert_eq!(kernel(m, Precision::F32, true), Kernel::GemmF32);
            assert_eq!(kernel(m, Precision::F32, false), Kernel::GemmF32);
            assert_eq!(kernel(m, Precision::Bf16, false), Kernel::GemmBf16Simt);
        }
        let c = choose_gemm(&Gemm::new(8, 8, 8), Precision::Bf16, false);
        assert_eq!(c.k_chunk, K_CHUNK_F32);
        assert_eq!(c.reason, GemmReason::NoTensorCores);
    }

    #[test]
    fn the_reason_gives_the_padding_arithmetic() {
        let g = Gemm::new(8, 2048, 784);
        let c = choose_gemm(&g, Precision::Bf16, true);
        assert_eq!(c.tiles(&g), 32);
        assert_eq!(
            c.reason.to_string(),
            "m = 8 <= 16: one row of 16-row tiles, 50% padding against 87% in 64-row tiles, \
             k split across the CTA's 4 warps"
        );
        let g = Gemm::new(33, 2048, 784);
        let c = choose_gemm(&g, Precision::Bf16, true);
        assert_eq!(c.tiles(&g), 32);
        assert_eq!(
            c.reason.to_string(),
            "m = 33 > 16: 16-row tiles would read B 3 times, 64-row tiles 1 (48% padding)"
        );
        assert_eq!(padding_percent(64, 64), 0);
        assert_eq!(padding_percent(1, 16), 93);
    }
}
