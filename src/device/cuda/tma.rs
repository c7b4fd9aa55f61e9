//! The tensor maps of `gemm_bf16_wgmma` (kernels/gemm_wgmma.cu, kernels/ABI.md): what a launch
//! passes to `cuTensorMapEncodeTiled` for each operand, and when the TMA cannot take an
//! operand at all. Pure arithmetic, tested without a GPU; the emulation tests encode the
//! same parameters (kernels/emu/tma.h), so the kernel runs in CI on exactly these maps.
//!
//! The rules are the CUDA driver's for `cuTensorMapEncodeTiled`: the global address 16-byte
//! aligned and every stride but the innermost (implicitly one element) a multiple of 16 bytes.
//! An operand breaking them runs on `gemm_bf16` or `gemm_bf16_128` instead, which load such
//! operands element by element ([`super::choice::wgmma_operands`]).

use std::fmt;
use std::ops::Range;

use crate::device::Gemm;

/// `CUtensorMapSwizzle`: how TMA permutes the 16-byte chunks of each 128-byte line of a box
/// in shared memory (the values are the driver's enum).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TmaSwizzle {
    /// `CU_TENSOR_MAP_SWIZZLE_NONE`.
    None = 0,
    /// `CU_TENSOR_MAP_SWIZZLE_32B`.
    B32 = 1,
    /// `CU_TENSOR_MAP_SWIZZLE_64B`.
    B64 = 2,
    /// `CU_TENSOR_MAP_SWIZZLE_128B`.
    B128 = 3,
}

/// One 2D bf16 tensor map as `cuTensorMapEncodeTiled` takes it, beside the fixed parts:
/// `CU_TENSOR_MAP_DATA_TYPE_BFLOAT16`, rank 2, element strides (1, 1),
/// `CU_TENSOR_MAP_INTERLEAVE_NONE`, `CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE` (zeros).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TensorMap2d {
    /// `globalAddress`.
    pub address: u64,
    /// `globalDim`: dimension 0 is the contiguous one.
    pub dims: [u64; 2],
    /// `globalStrides[0]`: bytes between consecutive indices of dimension 1.
    pub stride_bytes: u64,
    /// `boxDim`.
    pub box_dims: [u32; 2],
    /// `swizzle`.
    pub swizzle: TmaSwizzle,
}

/// A GEMM operand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operand {
    /// A (m × k, or k × m when transposed).
    A,
    /// B (k × n, or n × k when transposed).
    B,
}

impl fmt::Display for Operand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Operand::A => "A",
            Operand::B => "B",
        })
    }
}

/// Why the TMA cannot take an operand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TmaRefusal {
    /// The operand does not start on a 16-byte boundary (a sub-buffer at an odd offset).
    Misaligned {
        /// Which operand.
        operand: Operand,
        /// Its address modulo 16.
        offset: u64,
    },
    /// Its rows lie a number of bytes apart that is not a multiple of 16.
    RowStride {
        /// Which operand.
        operand: Operand,
        /// Bytes between consecutive rows of its storage.
        bytes: u64,
    },
}

impl fmt::Display for TmaRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            TmaRefusal::Misaligned { operand, offset } => write!(
                f,
                "the TMA cannot take {operand}: it starts {offset} bytes past a 16-byte boundary"
            ),
            TmaRefusal::RowStride { operand, bytes } => write!(
                f,
                "the TMA cannot take {operand}: its rows are {bytes} bytes apart, not a multiple \
                 of 16"
            ),
        }
    }
}

/// The k-slice depth of `gemm_bf16_wgmma`: one 128-byte row of bf16 per stage row.
pub const WGMMA_BK: u32 = 64;
/// Its output tile edge.
pub const WGMMA_TILE: u32 = 128;

/// The map of one operand stored row-major as `rows` × `cols` at `address`, the k range
/// clipped to `k_hi` elements: k-contiguous storage (`k_major`, cols = k) has dims
/// (k_hi, rows) and boxes of 64 (k) × 128; outer-contiguous storage (rows = k) has dims
/// (cols, k_hi) and boxes of 64 × 64 (k), two per stage.
fn operand_map(
    operand: Operand,
    address: u64,
    (rows, cols): (usize, usize),
    k_major: bool,
    k_hi: usize,
) -> Result<TensorMap2d, TmaRefusal> {
    if !address.is_multiple_of(16) {
        return Err(TmaRefusal::Misaligned {
            operand,
            offset: address % 16,
        });
    }
    let row_bytes = cols as u64 * 2;
    if !row_bytes.is_multiple_of(16) {
        return Err(TmaRefusal::RowStride {
            operand,
            bytes: row_bytes,
        });
    }
    // Rows of no elements (k = 0, k contiguous) are read by no copy; the driver still wants
    // a stride of at least one chunk.
    let stride_bytes = row_bytes.max(16);
    let k_dim = k_hi.max(1) as u64;
    let (dims, box_dims) = if k_major {
        ([k_dim, rows.max(1) as u64], [WGMMA_BK, WGMMA_TILE])
    } else {
        ([cols.max(1) as u64, k_dim], [WGMMA_BK, WGMMA_BK])
    };
    Ok(TensorMap2d {
        address,
        dims,
        stride_bytes,
        box_dims,
        swizzle: TmaSwizzle::B128,
    })
}

/// The tensor maps (A, B) of one launch of `gemm_bf16_wgmma` over the k range `ks`, for
/// operands at device addresses `a` and `b`; or why the TMA cannot take one of them. The k
/// extent is clipped to `min(k, ks.end)`, so the TMA's zero fill ends the range (kernels/ABI.md).
pub fn gemm_tensor_maps(
    g: &Gemm,
    a: u64,
    b: u64,
    ks: Range<usize>,
) -> Result<[TensorMap2d; 2], TmaRefusal> {
    let k_hi = ks.end.min(g.k);
    // A is m × k (k contiguous) or, transposed, k × m; B is k × n or, transposed, n × k.
    let a_shape = if g.trans_a { (g.k, g.m) } else { (g.m, g.k) };
    let b_shape = if g.trans_b { (g.n, g.k) } else { (g.k, g.n) };
    Ok([
        operand_map(Operand::A, a, a_shape, !g.trans_a, k_hi)?,
        operand_map(Operand::B, b, b_shape, g.trans_b, k_hi)?,
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_follow_the_storage_of_each_transposition() {
        let g = Gemm::new(200, 136, 72);
        let [a, b] = gemm_tensor_maps(&g, 0x1000, 0x2000, 0..72).unwrap();
        // A: 200 × 72, k contiguous; B: 72 × 136, n contiguous.
        assert_eq!(
            (a.dims, a.stride_bytes, a.box_dims),
            ([72, 200], 144, [64, 128])
        );
        assert_eq!(
            (b.dims, b.stride_bytes, b.box_dims),
            ([136, 72], 272, [64, 64])
        );
        assert_eq!((a.address, b.address), (0x1000, 0x2000));
        assert_eq!(a.swizzle, TmaSwizzle::B128);
        let mut t = g;
        t.trans_a = true;
        t.trans_b = true;
        let [a, b] = gemm_tensor_maps(&t, 0, 0, 0..72).unwrap();
        // A stored 72 × 200 (m contiguous); B stored 136 × 72 (k contiguous).
        assert_eq!(
            (a.dims, a.stride_bytes, a.box_dims),
            ([200, 72], 400, [64, 64])
        );
        assert_eq!(
            (b.dims, b.stride_bytes, b.box_dims),
            ([72, 136], 144, [64, 128])
        );
    }

    #[test]
    fn the_k_extent_ends_at_the_launch_range() {
        let g = Gemm::new(64, 64, 256);
        let [a, b] = gemm_tensor_maps(&g, 0, 0, 64..128).unwrap();
        assert_eq!((a.dims[0], b.dims[1]), (128, 128));
        let [a, _] = gemm_tensor_maps(&g, 0, 0, 192..1000).unwrap();
        assert_eq!(a.dims[0], 256);
        // An empty range still encodes (the kernel loads nothing).
        let [a, b] = gemm_tensor_maps(&Gemm::new(8, 8, 0), 0, 0, 0..0).unwrap();
        assert_eq!((a.dims, b.dims), ([1, 8], [8, 1]));
        assert_eq!((a.stride_bytes, b.stride_bytes), (16, 16));
    }

    #[test]
    fn operands_the_tma_cannot_take_are_refused_by_name() {
        let g = Gemm::new(64, 64, 100);
        assert_eq!(
            gemm_tensor_maps(&g, 0, 0, 0..100),
            Err(TmaRefusal::RowStride {
                operand: Operand::A,
                bytes: 200
            })
        );
        assert_eq!(
            gemm_tensor_maps(&Gemm::new(64, 60, 64), 0, 0, 0..64),
            Err(TmaRefusal::RowStride {
                operand: Operand::B,
                bytes: 120
            })
        );
        let e = gemm_tensor_maps(&Gemm::new(64, 64, 64), 2, 0, 0..64).unwrap_err();
        assert_eq!(
            e,
            TmaRefusal::Misaligned {
                operand: Operand::A,
                offset: 2
            }
        );
        assert_eq!(
            e.to_string(),
            "the TMA cannot take A: it starts 2 bytes past a 16-byte boundary"
        );
        // m = 1 with A transposed: rows of one element, 2 bytes apart.
        let mut t = Gemm::new(1, 64, 64);
        t.trans_a = true;
        assert!(gemm_tensor_maps(&t, 0, 0, 0..64).is_err());
        t.trans_a = false;
        assert!(gemm_tensor_maps(&t, 0, 0x10, 0..64).is_ok());
    }
}
