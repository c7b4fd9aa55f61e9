//! A lane's mixed-precision GEMM ([`crate::device::Precision::Bf16`]): both f32 operands are
//! converted on the device (`f32_to_bf16`, to nearest even) into the lane's bf16 scratch,
//! which is kept between GEMMs and grown only when a larger product needs it, then
//! multiplied on tensor cores by `gemm_bf16`, or `gemm_bf16_small_m` for few rows (see
//! [`super::choice`]), or by the SIMT twin below sm_80, accumulating and writing f32. Also
//! the conversions between f32 and bf16 buffers.

use cudarc::driver::sys::CUdeviceptr;

use super::Kernel;
use super::backend::CudaBackend;
use super::choice::choose_gemm_at;
use super::driver::Arg;
use super::gemm::GemmEpilogue;
use super::memory::{CudaBf16, CudaBuf, DevMem};
use super::ops::{elementwise, int, n32};
use crate::device::{Backend, DeviceError, Gemm, check_len};

impl CudaBackend {
    /// `C = alpha·op(A)·op(B) + beta·C` with the operands rounded to bf16, then the
    /// epilogue `ep` in the same kernel.
    pub(super) fn gemm_mixed(
        &self,
        g: Gemm,
        a: &CudaBuf,
        b: &CudaBuf,
        c: &mut CudaBuf,
        ep: GemmEpilogue,
    ) -> Result<(), DeviceError> {
        let lens = [g.m * g.k, g.k * g.n];
        check_len("gemm", "a", a.len, lens[0])?;
        check_len("gemm", "b", b.len, lens[1])?;
        let [pa, pb] = self.bf16_scratch(lens)?;
        self.convert(a, lens[0], pa)?;
        self.convert(b, lens[1], pb)?;
        let tensor_cores = self.dev.tensor_cores();
        self.launch_bf16(g, (pa, lens[0]), (pb, lens[1]), c, tensor_cores, ep)
    }

    /// The bf16 GEMM [`choose_gemm_at`] picks for the shape, the device's SMs and the
    /// operands' addresses (`gemm_bf16`, `gemm_bf16_small_m`, `gemm_bf16_128` or, where the
    /// device launches it, `gemm_bf16_wgmma` on tensor cores; the SIMT twin when
    /// `tensor_cores` is false), over bf16 operands at device addresses (with their
    /// lengths), with the epilogue `ep` fused into its store.
    pub(super) fn launch_bf16(
        &self,
        g: Gemm,
        a: (CUdeviceptr, usize),
        b: (CUdeviceptr, usize),
        c: &mut CudaBuf,
        tensor_cores: bool,
        ep: GemmEpilogue,
    ) -> Result<(), DeviceError> {
        let sms = self.dev.info.sm_count as usize;
        let choice = choose_gemm_at(&g, tensor_cores, sms, self.dev.wgmma(), (a.0, b.0));
        self.launch_gemm(choice.kernel, choice.k_chunk, g, a, b, c, ep)
    }

    /// The first `len` elements of `src` as bf16 (to nearest even) at `dst`, which holds at
    /// least `len`.
    fn convert(&self, src: &CudaBuf, len: usize, dst: CUdeviceptr) -> Result<(), DeviceError> {
        int("f32_to_bf16", "len", len)?;
        let s = &src.mem;
        self.run(false, |u| {
            elementwise(u, Kernel::ToBf16, len, |r| {
                vec![
                    Arg::Ptr(s.at(r.start, 4)),
                    Arg::Ptr(dst + (r.start * 2) as CUdeviceptr),
                    n32(r.len()),
                ]
            })
        })
    }

    /// A bf16 buffer (raw bits) converted from `src` on the device (round to nearest even).
    pub(crate) fn to_bf16(&self, src: &CudaBuf, len: usize) -> Result<CudaBf16, DeviceError> {
        check_len("f32_to_bf16", "src", src.len, len)?;
        int("f32_to_bf16", "len", len)?;
        let out = CudaBf16 {
            mem: DevMem::alloc(&self.dev, len * 2)?,
            len,
        };
        self.convert(src, len, out.mem.ptr)?;
        Ok(out)
    }

    /// An f32 buffer converted back from bf16 (exact).
    pub fn from_bf16(&self, src: &CudaBf16, len: usize) -> Result<CudaBuf, DeviceError> {
        check_len("bf16_to_f32", "src", src.len, len)?;
        int("bf16_to_f32", "len", len)?;
        let out = self.alloc(len)?;
        let (s, d) = (&src.mem, &out.mem);
        self.run(false, |u| {
            elementwise(u, Kernel::FromBf16, len, |r| {
                vec![
                    Arg::Ptr(s.at(r.start, 2)),
                    Arg::Ptr(d.at(r.start, 4)),
                    n32(r.len()),
                ]
            })
        })?;
        Ok(out)
    }
}
