//! A lane's GEMMs: the fused epilogue a layer's forward step rides on (kernels/ABI.md), the
//! lane's product in its precision, and the launches a product is cut into
//! ([`super::launch::gemm_launches`]).

use super::Kernel;
use super::backend::CudaBackend;
use super::driver::{self, Arg, CuError};
use super::launch::{self, K_CHUNK_F32};
use super::memory::{CudaBf16, CudaBuf};
use super::ops::{int, n32};
use super::tma::gemm_tensor_maps;
use crate::device::{Backend, DeviceError, Gemm, Precision, check_len};

/// What a GEMM's store does besides `alpha`, `beta` (kernels/ABI.md, the GEMM epilogue): a
/// bias by column (a device address; 0 for none) and ReLU, fused into the launch that ends
/// each tile's k range.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct GemmEpilogue {
    /// The bias, `n` elements, or 0.
    pub bias: cudarc::driver::sys::CUdeviceptr,
    /// ReLU after the bias.
    pub relu: bool,
    /// Where a bf16 copy of the stored `C` goes (`m·n` elements, as `C` lies), or 0.
    pub c_bf16: cudarc::driver::sys::CUdeviceptr,
}

impl GemmEpilogue {
    /// The plain product.
    pub const NONE: GemmEpilogue = GemmEpilogue {
        bias: 0,
        relu: false,
        c_bf16: 0,
    };
}

impl CudaBackend {
    /// The lane's GEMM in its precision, with the epilogue `ep`.
    pub(super) fn gemm_with(
        &self,
        g: Gemm,
        a: &CudaBuf,
        b: &CudaBuf,
        c: &mut CudaBuf,
        ep: GemmEpilogue,
    ) -> Result<(), DeviceError> {
        if self.precision() == Precision::Bf16 {
            return self.gemm_mixed(g, a, b, c, ep);
        }
        let (a, b) = ((a.mem().ptr, a.len), (b.mem().ptr, b.len));
        let c = (c.mem_mut().ptr, c.len);
        self.launch_gemm(Kernel::GemmF32, K_CHUNK_F32, g, a, b, c, ep)
    }

    /// `C = alpha·op(A)·op(B) + beta·C` with bf16 inputs on tensor cores (f32 accumulate),
    /// or on the SIMT twin when `tensor_cores` is false.
    pub fn gemm_bf16(
        &self,
        g: Gemm,
        a: &CudaBf16,
        b: &CudaBf16,
        c: &mut CudaBuf,
        tensor_cores: bool,
    ) -> Result<(), DeviceError> {
        let (a, b) = ((a.mem.ptr, a.len), (b.mem.ptr, b.len));
        let c = (c.mem_mut().ptr, c.len);
        self.launch_bf16(g, a, b, c, tensor_cores, GemmEpilogue::NONE)
    }

    /// Runs a GEMM kernel as [`launch::gemm_launches`] cuts it. With CTA budgets every CTA of
    /// a launch computes one tile over at most `k_chunk` of k, so that a higher-priority
    /// kernel sharing the SMs waits for at most one such piece. A product is instead one
    /// launch over all its tiles and all of k, its CTAs (at most the budget) looping over the
    /// tiles, where no such kernel can be waiting: on SM partitions (no other lane runs on
    /// the lane's SMs; on an H200 the cut launches ran a 4096³ bf16 product at 82 TFLOP/s
    /// against 164 in one launch) and on a stream of the device's greatest priority (a
    /// service's, whose products are small: the cuts only added launches to its batches).
    /// The epilogue `ep` rides on the launches that end their tiles' k ranges.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn launch_gemm(
        &self,
        kernel: Kernel,
        k_chunk: usize,
        g: Gemm,
        (a, a_len): (cudarc::driver::sys::CUdeviceptr, usize),
        (b, b_len): (cudarc::driver::sys::CUdeviceptr, usize),
        (cptr, c_len): (cudarc::driver::sys::CUdeviceptr, usize),
        ep: GemmEpilogue,
    ) -> Result<(), DeviceError> {
        let name = kernel.name();
        check_len(name, "a", a_len, g.m * g.k)?;
        check_len(name, "b", b_len, g.k * g.n)?;
        check_len(name, "c", c_len, g.m * g.n)?;
        if g.m == 0 || g.n == 0 {
            return Ok(());
        }
        let (m, n, kk) = (
            int(name, "m", g.m)?,
            int(name, "n", g.n)?,
            int(name, "k", g.k)?,
        );
        int(name, "m·k", g.m * g.k)?;
        int(name, "k·n", g.k * g.n)?;
        int(name, "m·n", g.m * g.n)?;
        let (ta, tb) = (g.trans_a as i32, g.trans_b as i32);
        let whole = self.dev.green.is_some() || self.priority() == self.dev.info().priority_range.1;
        self.run(false, |u| {
            let budget = u.budget;
            let budget = self.dev.budget_for(kernel, budget);
            let (per_launch, k_chunk) = if whole {
                (usize::MAX, g.k.max(1))
            } else {
                (budget, k_chunk)
            };
            u.place.timed(|p| {
                let tile = launch::GemmTile::of(kernel);
                for l in launch::gemm_launches(tile, g.m, g.n, g.k, per_launch, k_chunk) {
                    let beta = if l.first { g.beta } else { 1.0 };
                    let ep = if l.last { ep } else { GemmEpilogue::NONE };
                    let mut args = vec![
                        Arg::Ptr(a),
                        Arg::Ptr(b),
                        Arg::Ptr(cptr),
                        Arg::I32(m),
                        Arg::I32(n),
                        Arg::I32(kk),
                        Arg::I32(ta),
                        Arg::I32(tb),
                        Arg::F32(g.alpha),
                        Arg::F32(beta),
                        n32(l.tiles.start),
                        n32(l.tiles.end),
                        n32(l.k.start),
                        n32(l.k.end),
                        Arg::Ptr(ep.bias),
                        Arg::I32(ep.relu as i32),
                        Arg::Ptr(ep.c_bf16),
                    ];
                    if kernel == Kernel::GemmBf16Wgmma {
                        args.extend(wgmma_maps(&g, (a, b), l.k.clone())?);
                    }
                    p.launch(kernel, launch::grid(l.tiles.len(), budget), &args)?;
                }
                Ok(())
            })
        })
    }
}

/// The two tensor-map parameters of one `gemm_bf16_wgmma` launch over the k range `ks`
/// (kernels/ABI.md), encoded by the driver from [`gemm_tensor_maps`].
fn wgmma_maps(
    g: &Gemm,
    (a, b): (
        cudarc::driver::sys::CUdeviceptr,
        cudarc::driver::sys::CUdeviceptr,
    ),
    ks: std::ops::Range<usize>,
) -> Result<[Arg; 2], CuError> {
    let [map_a, map_b] = gemm_tensor_maps(g, a, b, ks).map_err(|refusal| {
        // The choice checked the operands; a refusal here is a bug, reported, not launched.
        tracing::error!("gemm_bf16_wgmma: {refusal}");
        CuError {
            call: "cuTensorMapEncodeTiled",
            code: cudarc::driver::sys::cudaError_enum::CUDA_ERROR_INVALID_VALUE,
        }
    })?;
    Ok([
        Arg::TensorMap(driver::encode_tensor_map(&map_a)?),
        Arg::TensorMap(driver::encode_tensor_map(&map_b)?),
    ])
}
