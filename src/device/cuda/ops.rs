//! The [`Backend`] operations of a GPU lane: arguments checked on the host, then each kernel
//! launched in bounded pieces (see [`super::launch`]) between a pair of timing events.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::backend::{CudaBackend, Unit};
use super::driver::{self, Arg, CuError};
use super::gemm::GemmEpilogue;
use super::launch::{self, chunks, elements_per_launch};
use super::memory::{CudaBuf, CudaLabels, DevMem};
use super::{BLOCK, Kernel};
use crate::device::{
    Activation, AdamParams, Backend, DeviceError, Gemm, Precision, SgdParams, check_labels,
    check_len,
};

/// Partial sums `sum` keeps on the device before it adds them up on the host.
const MAX_PARTIALS: usize = 1024;

pub(super) fn int(op: &'static str, what: &'static str, v: usize) -> Result<i32, DeviceError> {
    i32::try_from(v).map_err(|_| {
        DeviceError::Unavailable(format!(
            "{op}: {what} = {v} is over the kernels' 32-bit limit"
        ))
    })
}

/// `n` as a kernel `int`; lengths were checked against `i32` before launching.
pub(super) fn n32(n: usize) -> Arg {
    Arg::I32(n as i32)
}

/// Launches an element-wise kernel over `0..len` in pieces: `args(range)` gives the
/// arguments of one piece.
pub(super) fn elementwise(
    u: &mut Unit<'_>,
    k: Kernel,
    len: usize,
    args: impl Fn(std::ops::Range<usize>) -> Vec<Arg>,
) -> Result<(), CuError> {
    let per = elements_per_launch(u.budget, BLOCK as usize);
    let budget = u.budget;
    u.place.timed(|p| {
        for r in chunks(len, per) {
            let blocks = r.len().div_ceil(BLOCK as usize);
            p.launch(k, launch::grid(blocks, budget), &args(r))?;
        }
        Ok(())
    })
}

impl CudaBackend {
    /// The lane's partial-sum buffer, allocated on first use; a host vector to read it into.
    fn partials(&self) -> Result<Vec<f64>, DeviceError> {
        self.ensure_partials(MAX_PARTIALS * 8)?;
        Ok(vec![0.0; MAX_PARTIALS])
    }

    /// Queues a copy of `bytes` from host memory at `src` to `dst` through the staging arena.
    fn upload(&self, dst: cudarc::driver::sys::CUdeviceptr, src: &[u8]) -> Result<(), DeviceError> {
        if src.is_empty() {
            return Ok(());
        }
        self.run(false, |u| {
            let region = u.staging.take(src.len(), u.place)?;
            // SAFETY: `region` holds `src.len()` bytes no queued copy uses.
            unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), region, src.len()) };
            u.place
                .timed_copy(|stream| driver::copy_htod(dst, region, src.len(), stream))
        })
    }
}

/// Bytes of a slice of plain numbers.
fn bytes_of<T: bytemuck::Pod>(v: &[T]) -> &[u8] {
    bytemuck::cast_slice(v)
}

impl Backend for CudaBackend {
    type Buf = CudaBuf;
    type Labels = CudaLabels;

    fn name(&self) -> String {
        format!("cuda:{}", self.dev.info.index)
    }

    fn max_workers(&self) -> usize {
        self.dev.max_ctas()
    }

    fn workers(&self) -> usize {
        self.ctas_in_force()
    }

    fn set_workers(&self, workers: usize) {
        self.set_wanted_ctas(workers);
    }

    fn alloc(&self, len: usize) -> Result<CudaBuf, DeviceError> {
        CudaBuf::alloc(&self.dev, len)
    }

    fn len(&self, buf: &CudaBuf) -> usize {
        buf.len
    }

    fn write(&self, dst: &mut CudaBuf, data: &[f32]) -> Result<(), DeviceError> {
        check_len("write", "dst", dst.len, data.len())?;
        self.upload(dst.mem_mut().ptr, bytes_of(data))
    }

    fn read(&self, src: &CudaBuf, out: &mut [f32]) -> Result<(), DeviceError> {
        check_len("read", "src", src.len, out.len())?;
        if out.is_empty() {
            return self.synchronize();
        }
        let bytes = out.len() * 4;
        let ptr = src.mem().ptr;
        let dst = bytemuck::cast_slice_mut::<f32, u8>(out);
        self.run_then(
            |u| {
                let region = u.staging.take(bytes, u.place)?;
                u.place
                    .timed_copy(|stream| driver::copy_dtoh(region, ptr, bytes, stream))?;
                Ok(region)
            },
            |region| {
                // SAFETY: the unit has ended, so the copy into `region` (`bytes` long) is
                // complete, and the lane's lock is still held, so nothing reuses it.
                let got = unsafe { std::slice::from_raw_parts(region, bytes) };
                dst.copy_from_slice(got);
            },
        )
    }

    fn fill(&self, buf: &mut CudaBuf, len: usize, value: f32) -> Result<(), DeviceError> {
        check_len("fill", "buf", buf.len, len)?;
        int("fill", "len", len)?;
        let m = buf.mem_mut();
        self.run(false, |u| {
            elementwise(u, Kernel::Fill, len, |r| {
                vec![Arg::Ptr(m.at(r.start, 4)), n32(r.len()), Arg::F32(value)]
            })
        })
    }

    fn alloc_labels(&self, len: usize) -> Result<CudaLabels, DeviceError> {
        Ok(CudaLabels {
            mem: DevMem::alloc(&self.dev, len * 4)?,
            host: vec![0; len],
        })
    }

    fn write_labels(&self, dst: &mut CudaLabels, labels: &[u32]) -> Result<(), DeviceError> {
        check_len("write_labels", "dst", dst.host.len(), labels.len())?;
        dst.host[..labels.len()].copy_from_slice(labels);
        self.upload(dst.mem.ptr, bytes_of(labels))
    }

    fn set_precision(&self, precision: Precision) {
        self.precision.store(precision.code(), Ordering::Relaxed);
    }

    fn precision(&self) -> Precision {
        Precision::from_code(self.precision.load(Ordering::Relaxed))
    }

    fn default_precision(&self, work: crate::device::Work) -> Precision {
        // Tensor cores from sm_80; serving stays f32 (see `device::precision`).
        if work == crate::device::Work::Training && self.dev.tensor_cores() {
            Precision::Bf16
        } else {
            Precision::F32
        }
    }

    fn gemm(&self, g: Gemm, a: &CudaBuf, b: &CudaBuf, c: &mut CudaBuf) -> Result<(), DeviceError> {
        self.gemm_with(g, a, b, c, GemmEpilogue::NONE)
    }

    /// One kernel: the bias and the activation applied in the GEMM's store.
    fn gemm_bias_act(
        &self,
        g: Gemm,
        a: &CudaBuf,
        b: &CudaBuf,
        c: &mut CudaBuf,
        bias: &CudaBuf,
        act: Activation,
    ) -> Result<(), DeviceError> {
        check_len("gemm_bias_act", "bias", bias.len, g.n)?;
        let ep = GemmEpilogue {
            bias: bias.mem().ptr,
            relu: matches!(act, Activation::Relu),
            c_bf16: 0,
        };
        self.gemm_with(g, a, b, c, ep)
    }

    fn bias_act(
        &self,
        x: &mut CudaBuf,
        bias: &CudaBuf,
        rows: usize,
        cols: usize,
        act: Activation,
    ) -> Result<(), DeviceError> {
        check_len("bias_act", "x", x.len, rows * cols)?;
        check_len("bias_act", "bias", bias.len, cols)?;
        if rows * cols == 0 {
            return Ok(());
        }
        int("bias_act", "rows·cols", rows * cols)?;
        let c = int("bias_act", "cols", cols)?;
        let relu = Arg::I32(matches!(act, Activation::Relu) as i32);
        let (xm, bp) = (x.mem_mut(), bias.mem().ptr);
        self.run(false, |u| {
            // Whole rows per piece, so a column's bias stays where the kernel looks.
            let rows_per = (elements_per_launch(u.budget, BLOCK as usize) / cols).max(1);
            let budget = u.budget;
            u.place.timed(|p| {
                for r in chunks(rows, rows_per) {
                    let blocks = (r.len() * cols).div_ceil(BLOCK as usize);
                    let args = [
                        Arg::Ptr(xm.at(r.start * cols, 4)),
                        Arg::Ptr(bp),
                        n32(r.len()),
                        Arg::I32(c),
                        relu,
                    ];
                    p.launch(Kernel::BiasAct, launch::grid(blocks, budget), &args)?;
                }
                Ok(())
            })
        })
    }

    fn relu_grad(&self, grad: &mut CudaBuf, act: &CudaBuf, len: usize) -> Result<(), DeviceError> {
        check_len("relu_grad", "grad", grad.len, len)?;
        check_len("relu_grad", "act", act.len, len)?;
        int("relu_grad", "len", len)?;
        let (g, a) = (grad.mem_mut(), act.mem());
        self.run(false, |u| {
            elementwise(u, Kernel::ReluGrad, len, |r| {
                vec![
                    Arg::Ptr(g.at(r.start, 4)),
                    Arg::Ptr(a.at(r.start, 4)),
                    n32(r.len()),
                ]
            })
        })
    }

    fn col_sum(
        &self,
        x: &CudaBuf,
        rows: usize,
        cols: usize,
        out: &mut CudaBuf,
    ) -> Result<(), DeviceError> {
        check_len("col_sum", "x", x.len, rows * cols)?;
        check_len("col_sum", "out", out.len, cols)?;
        if cols == 0 {
            return Ok(());
        }
        int("col_sum", "rows·cols", rows * cols)?;
        let args = [
            Arg::Ptr(x.mem().ptr),
            Arg::I32(int("col_sum", "rows", rows)?),
            Arg::I32(int("col_sum", "cols", cols)?),
            Arg::Ptr(out.mem_mut().ptr),
        ];
        // One thread per column over every row (rows are a batch): not cut into pieces.
        self.run(false, |u| {
            let grid = launch::grid(cols.div_ceil(BLOCK as usize), u.budget);
            u.place.timed(|p| p.launch(Kernel::ColSum, grid, &args))
        })
    }

    fn softmax_xent(
        &self,
        logits: &CudaBuf,
        labels: &CudaLabels,
        rows: usize,
        cols: usize,
        grad_scale: f32,
        grad: &mut CudaBuf,
        loss_acc: &mut CudaBuf,
        correct_acc: &mut CudaBuf,
    ) -> Result<(), DeviceError> {
        const OP: &str = "softmax_xent";
        check_len(OP, "logits", logits.len, rows * cols)?;
        check_len(OP, "labels", labels.host.len(), rows)?;
        check_len(OP, "grad", grad.len, rows * cols)?;
        check_len(OP, "loss_acc", loss_acc.len, rows)?;
        check_len(OP, "correct_acc", correct_acc.len, rows)?;
        check_labels(OP, &labels.host, rows, cols)?;
        if cols == 0 || rows == 0 {
            return Ok(());
        }
        int(OP, "rows·cols", rows * cols)?;
        let c = int(OP, "cols", cols)?;
        let (lg, lb, gr, lo, co) = (
            logits.mem(),
            &labels.mem,
            grad.mem_mut(),
            loss_acc.mem_mut(),
            correct_acc.mem_mut(),
        );
        self.run(false, |u| {
            let budget = u.budget;
            u.place.timed(|p| {
                for r in chunks(rows, launch::rows_per_launch(budget)) {
                    let args = [
                        Arg::Ptr(lg.at(r.start * cols, 4)),
                        Arg::Ptr(lb.at(r.start, 4)),
                        n32(r.len()),
                        Arg::I32(c),
                        Arg::F32(grad_scale),
                        Arg::Ptr(gr.at(r.start * cols, 4)),
                        Arg::Ptr(lo.at(r.start, 4)),
                        Arg::Ptr(co.at(r.start, 4)),
                    ];
                    let blocks = r.len().div_ceil(launch::ROWS_PER_BLOCK);
                    p.launch(Kernel::SoftmaxXent, launch::grid(blocks, budget), &args)?;
                }
                Ok(())
            })
        })
    }

    fn softmax(&self, x: &mut CudaBuf, rows: usize, cols: usize) -> Result<(), DeviceError> {
        check_len("softmax", "x", x.len, rows * cols)?;
        if cols == 0 || rows == 0 {
            return Ok(());
        }
        int("softmax", "rows·cols", rows * cols)?;
        let c = int("softmax", "cols", cols)?;
        let xm = x.mem_mut();
        self.run(false, |u| {
            let budget = u.budget;
            u.place.timed(|p| {
                for r in chunks(rows, launch::rows_per_launch(budget)) {
                    let args = [
                        Arg::Ptr(xm.at(r.start * cols, 4)),
                        n32(r.len()),
                        Arg::I32(c),
                    ];
                    let blocks = r.len().div_ceil(launch::ROWS_PER_BLOCK);
                    p.launch(Kernel::SoftmaxRows, launch::grid(blocks, budget), &args)?;
                }
                Ok(())
            })
        })
    }

    fn sum(&self, x: &CudaBuf, len: usize) -> Result<f64, DeviceError> {
        check_len("sum", "x", x.len, len)?;
        if len == 0 {
            return Ok(0.0);
        }
        int("sum", "len", len)?;
        let mut partials = self.partials()?;
        let xm = x.mem();
        let total = self.run(false, |u| {
            let per = elements_per_launch(u.budget, BLOCK as usize);
            let (mut total, mut used) = (0.0f64, 0usize);
            let dev_partials = u.partials.as_ref().map_or(0, |m| m.ptr);
            for r in chunks(len, per) {
                let grid = launch::grid(r.len().div_ceil(BLOCK as usize), u.budget) as usize;
                if used + grid > MAX_PARTIALS {
                    total += read_partials(u, dev_partials, used, &mut partials)?;
                    used = 0;
                }
                let args = [
                    Arg::Ptr(xm.at(r.start, 4)),
                    n32(r.len()),
                    Arg::Ptr(dev_partials + (used * 8) as u64),
                ];
                u.place
                    .timed(|p| p.launch(Kernel::SumPartial, grid as u32, &args))?;
                used += grid;
            }
            Ok(total + read_partials(u, dev_partials, used, &mut partials)?)
        })?;
        self.synchronize()?;
        Ok(total)
    }

    fn sgd_step(
        &self,
        param: &mut CudaBuf,
        grad: &CudaBuf,
        velocity: &mut CudaBuf,
        len: usize,
        hp: SgdParams,
    ) -> Result<(), DeviceError> {
        check_len("sgd_step", "param", param.len, len)?;
        check_len("sgd_step", "grad", grad.len, len)?;
        check_len("sgd_step", "velocity", velocity.len, len)?;
        int("sgd_step", "len", len)?;
        let (p, g, v) = (param.mem_mut(), grad.mem(), velocity.mem_mut());
        self.run(false, |u| {
            elementwise(u, Kernel::Sgd, len, |r| {
                vec![
                    Arg::Ptr(p.at(r.start, 4)),
                    Arg::Ptr(g.at(r.start, 4)),
                    Arg::Ptr(v.at(r.start, 4)),
                    n32(r.len()),
                    Arg::F32(hp.lr),
                    Arg::F32(hp.momentum),
                    Arg::F32(hp.weight_decay),
                ]
            })
        })
    }

    fn adam_step(
        &self,
        param: &mut CudaBuf,
        grad: &CudaBuf,
        m: &mut CudaBuf,
        v: &mut CudaBuf,
        len: usize,
        hp: AdamParams,
    ) -> Result<(), DeviceError> {
        const OP: &str = "adam_step";
        check_len(OP, "param", param.len, len)?;
        check_len(OP, "grad", grad.len, len)?;
        check_len(OP, "m", m.len, len)?;
        check_len(OP, "v", v.len, len)?;
        int(OP, "len", len)?;
        // The same bias corrections as the CPU backend, in f64 on the host.
        let t = hp.t.max(1) as i32;
        let bc1 = 1.0 - f64::from(hp.beta1).powi(t);
        let bc2 = 1.0 - f64::from(hp.beta2).powi(t);
        let step_size = (f64::from(hp.lr) / bc1) as f32;
        let inv_sqrt_bc2 = (1.0 / bc2.sqrt()) as f32;
        let (p, g, mm, vv) = (param.mem_mut(), grad.mem(), m.mem_mut(), v.mem_mut());
        self.run(false, |u| {
            elementwise(u, Kernel::Adam, len, |r| {
                vec![
                    Arg::Ptr(p.at(r.start, 4)),
                    Arg::Ptr(g.at(r.start, 4)),
                    Arg::Ptr(mm.at(r.start, 4)),
                    Arg::Ptr(vv.at(r.start, 4)),
                    n32(r.len()),
                    Arg::F32(hp.beta1),
                    Arg::F32(hp.beta2),
                    Arg::F32(hp.eps),
                    Arg::F32(hp.weight_decay),
                    Arg::F32(step_size),
                    Arg::F32(inv_sqrt_bc2),
                ]
            })
        })
    }

    fn synchronize(&self) -> Result<(), DeviceError> {
        self.end_unit()
    }

    fn repeated<T, E: From<DeviceError>>(
        &self,
        body: impl FnOnce() -> Result<T, E>,
    ) -> Result<T, E> {
        if !self.dev.graphs() {
            return body();
        }
        self.begin_repeat()?;
        let out = body();
        let ended = self.end_repeat(out.is_err());
        let value = out?;
        ended?;
        Ok(value)
    }

    fn memory_scope(&self) -> String {
        self.name()
    }

    fn memory_available(&self) -> Option<u64> {
        Some(
            self.dev
                .memory_limit()
                .saturating_sub(self.dev.memory_used()),
        )
    }

    fn lane_time(&self) -> Duration {
        self.charged()
    }
}

/// Reads `used` partial sums back (draining the stream) and adds them up.
fn read_partials(
    u: &mut Unit<'_>,
    dev: cudarc::driver::sys::CUdeviceptr,
    used: usize,
    host: &mut [f64],
) -> Result<f64, CuError> {
    if used == 0 {
        return Ok(0.0);
    }
    let bytes = used * 8;
    let region = u.staging.take(bytes, u.place)?;
    u.place
        .timed_copy(|stream| driver::copy_dtoh(region, dev, bytes, stream))?;
    u.place.drain()?;
    // SAFETY: the stream drained, so the copy into `region` (`bytes` long) is complete.
    let got = unsafe { std::slice::from_raw_parts(region, bytes) };
    bytemuck::cast_slice_mut::<f64, u8>(&mut host[..used]).copy_from_slice(got);
    Ok(host[..used].iter().sum())
}
