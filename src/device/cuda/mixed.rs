//! A lane's mixed-precision GEMM ([`crate::device::Precision::Bf16`]): both f32 operands are
//! read as bf16 (converted on the device by `f32_to_bf16`, to nearest even), from the
//! buffer's own bf16 copy where [`super::shadow`] keeps one (a model's weights), else
//! converted into the lane's bf16 scratch, which is kept between GEMMs and grown only when
//! a larger product needs it; then multiplied on tensor cores by `gemm_bf16`, or
//! `gemm_bf16_small_m` for few rows (see [`super::choice`]), or by the SIMT twin below
//! sm_80, accumulating and writing f32. Also the conversions between f32 and bf16 buffers.

use std::sync::Arc;

use cudarc::driver::sys::CUdeviceptr;

use super::Kernel;
use super::backend::CudaBackend;
use super::choice::choose_gemm_at;
use super::driver::Arg;
use super::gemm::GemmEpilogue;
use super::memory::{Bf16Copy, CudaBf16, CudaBuf, DevMem};
use super::ops::{elementwise, int, n32};
use super::shadow::Read;
use crate::device::{Backend, DeviceError, Gemm, check_len};

/// A bf16 operand's address, with the copy's memory it lies in (none for the scratch).
type Operand = (CUdeviceptr, Option<Arc<DevMem>>);

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
        // One operand read twice (AᵀA, say) is converted once, for the longer prefix.
        let (pa, pb) = if std::ptr::eq(a, b) {
            let both = self.as_bf16(a, lens[0].max(lens[1]), 0)?;
            (both.clone(), both)
        } else {
            (self.as_bf16(a, lens[0], 0)?, self.as_bf16(b, lens[1], 1)?)
        };
        let tensor_cores = self.dev.tensor_cores();
        let (cptr, c_copy) = self.store_target(c, g.m * g.n)?;
        let c_bf16 = c_copy.as_ref().map_or(0, |m| m.ptr);
        let ep = GemmEpilogue { c_bf16, ..ep };
        let c_len = c.len;
        let (a, b) = ((pa.0, lens[0]), (pb.0, lens[1]));
        let done = self.launch_bf16(g, a, b, (cptr, c_len), tensor_cores, ep);
        if done.is_err() {
            c.parts_mut().1.state.failed();
        }
        done
    }

    /// Where a bf16 GEMM writing the first `len` elements of `c` stores them: `c`'s memory
    /// and, where [`Shadow::store`](super::shadow::Shadow::store) keeps one, the bf16 copy its
    /// epilogue stores beside them. The write is recorded in the copy's state.
    fn store_target(&self, c: &mut CudaBuf, len: usize) -> Result<Operand, DeviceError> {
        let (mem, copy) = c.parts_mut();
        let ptr = mem.ptr;
        let ours = self.dev.bf16_copies() && copy.lane.is_none_or(|lane| lane == self.id);
        if !ours || !copy.state.store(len) {
            copy.state.written();
            return Ok((ptr, None));
        }
        Ok((ptr, self.copy_memory(copy, len)?))
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
        c: (CUdeviceptr, usize),
        tensor_cores: bool,
        ep: GemmEpilogue,
    ) -> Result<(), DeviceError> {
        let sms = self.dev.info.sm_count as usize;
        let choice = choose_gemm_at(&g, tensor_cores, sms, self.dev.wgmma(), (a.0, b.0));
        self.launch_gemm(choice.kernel, choice.k_chunk, g, a, b, c, ep)
    }

    /// The first `len` elements of `buf` as bf16 at a device address: the buffer's own copy
    /// where [`Shadow`](super::shadow::Shadow) keeps one (converted into first unless it
    /// holds them already), else the lane's scratch `slot`, converted into. Another lane's
    /// copy, or one another thread holds at the moment, is neither read nor filled here.
    /// With the address, the copy's memory, to be kept until the GEMM reading it is queued.
    fn as_bf16(&self, buf: &CudaBuf, len: usize, slot: usize) -> Result<Operand, DeviceError> {
        if self.dev.bf16_copies()
            && let Some(mut copy) = buf.try_bf16_copy()
            && copy.lane.is_none_or(|lane| lane == self.id)
        {
            let read = copy.state.read(len);
            if let (Read::Reuse, Some(mem)) = (read, &copy.mem) {
                return Ok((mem.ptr, Some(mem.clone())));
            }
            if read != Read::Scratch
                && let Some(mem) = self.copy_memory(&mut copy, len)?
            {
                if let Err(e) = self.convert(buf, len, mem.ptr) {
                    copy.state.failed();
                    return Err(e);
                }
                return Ok((mem.ptr, Some(mem)));
            }
        }
        let ptr = self.bf16_scratch(slot, len)?;
        self.convert(buf, len, ptr)?;
        Ok((ptr, None))
    }

    /// The copy's memory, allocated (or grown) first for what
    /// [`Shadow::capacity`](super::shadow::Shadow::capacity) asks, now this lane's; `None`,
    /// and no copy, when it cannot be allocated (the device's memory limit, say), which is
    /// not an error: the caller goes on without it.
    fn copy_memory(
        &self,
        copy: &mut Bf16Copy,
        len: usize,
    ) -> Result<Option<Arc<DevMem>>, DeviceError> {
        let bytes = copy.state.capacity().max(len).max(1) * 2;
        if copy.mem.as_ref().is_none_or(|m| m.bytes() < bytes) {
            // A queued GEMM still naming the old memory holds it; the last holder frees it
            // (the driver waits for work using it). Launches a repeated body recorded are
            // not queued yet, so they are queued first.
            if copy.mem.is_some() {
                self.flush_recorded()?;
            }
            copy.mem = None;
            match DevMem::alloc(&self.dev, bytes) {
                Ok(mem) => copy.mem = Some(Arc::new(mem)),
                Err(e) => {
                    tracing::debug!("no bf16 copy of a {len}-element buffer: {e}");
                    copy.state.no_memory();
                    return Ok(None);
                }
            }
        }
        copy.lane = Some(self.id);
        Ok(copy.mem.clone())
    }

    /// The first `len` elements of `src` as bf16 (to nearest even) at `dst`, which holds at
    /// least `len`.
    fn convert(&self, src: &CudaBuf, len: usize, dst: CUdeviceptr) -> Result<(), DeviceError> {
        int("f32_to_bf16", "len", len)?;
        let s = src.mem();
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
        let mut out = self.alloc(len)?;
        let (s, d) = (&src.mem, out.mem_mut());
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
