//! The CPU backend: the reference semantics every other backend is tested against.
//!
//! GEMM goes through the `gemm` crate; everything else is a plain loop the compiler
//! vectorises. Work is split across at most `workers()` threads of a pool the backend owns,
//! so a lane's worker budget is a real limit. Elementwise work is split into fixed chunks
//! and reductions run in a fixed order, so results are bit-identical for the same worker
//! budget. Every operation first checks the device's health (one atomic load while it is
//! healthy), so a device failed by one lane stops every lane at its next operation, and a
//! fault injected into it (see [`super::fault`]) surfaces exactly as a driver's would.

use crate::util::sync;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rayon::prelude::*;

use super::fault::DeviceHealth;
use super::precision::rounded;
use super::{
    Activation, AdamParams, Backend, DeviceError, Gemm, Precision, SgdParams, Width, check_labels,
    check_len,
};
use crate::util::cputime::ThreadClock;

/// Below this many elements an elementwise operation runs on the calling thread: handing
/// work to the pool costs more than it saves.
const PAR_MIN_ELEMS: usize = 1 << 15;

/// Below this many multiply-adds (m·n·k) a GEMM runs on the calling thread. Handing a
/// small product to the pool costs a cross-thread wake-up that exceeds the work: a batch-64
/// 128→10 layer ran five times slower on two workers than on one.
const PAR_MIN_GEMM_MACS: usize = 1 << 21;

/// An `f32` buffer in host memory.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CpuBuf(pub Vec<f32>);

/// The CPU backend.
pub struct CpuBackend {
    pool: Option<rayon::ThreadPool>,
    pool_clocks: Arc<Mutex<Vec<ThreadClock>>>,
    max_workers: usize,
    workers: AtomicUsize,
    health: Arc<DeviceHealth>,
    /// [`Precision`] as its code; bf16 is emulated by rounding the operands.
    precision: AtomicU8,
    /// Whether an operation was handed to the pool since [`Backend::take_width`] last looked.
    wide: AtomicBool,
}

impl std::fmt::Debug for CpuBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpuBackend")
            .field("max_workers", &self.max_workers)
            .field("workers", &self.workers())
            .finish()
    }
}

/// The health of a backend that is no lane of a shared device.
fn private_health() -> Arc<DeviceHealth> {
    Arc::new(DeviceHealth::new("cpu"))
}

/// Number of CPU cores this process may use.
pub fn available_cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

impl CpuBackend {
    /// A backend with a pool of `max_workers` threads (0 = one per available core), using
    /// all of them until [`Backend::set_workers`] says otherwise. Its health is its own.
    pub fn new(max_workers: usize) -> Result<Self, DeviceError> {
        Self::with_health(private_health(), max_workers, false)
    }

    /// A lane of the CPU device whose health is `health` (shared by every lane of it): like
    /// [`CpuBackend::new`], or [`CpuBackend::background`] when `background`; with
    /// `max_workers = 1`, like [`CpuBackend::single`].
    pub fn with_health(
        health: Arc<DeviceHealth>,
        max_workers: usize,
        background: bool,
    ) -> Result<Self, DeviceError> {
        let max_workers = if max_workers == 0 {
            available_cores()
        } else {
            max_workers
        };
        let pool_clocks = Arc::new(Mutex::new(Vec::new()));
        let clocks = pool_clocks.clone();
        let pool = if max_workers > 1 {
            Some(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(max_workers)
                    .thread_name(|i| format!("setpoint-cpu-{i}"))
                    .start_handler(move |_| {
                        super::denormals::flush_on_this_thread();
                        if background {
                            crate::util::priority::lower_current_thread();
                        }
                        if let Some(c) = ThreadClock::current() {
                            sync::lock(&clocks).push(c);
                        }
                    })
                    .build()
                    .map_err(|e| DeviceError::Unavailable(format!("cpu thread pool: {e}")))?,
            )
        } else {
            None
        };
        Ok(CpuBackend {
            pool,
            pool_clocks,
            max_workers,
            workers: AtomicUsize::new(max_workers),
            health,
            precision: AtomicU8::new(Precision::F32.code()),
            wide: AtomicBool::new(false),
        })
    }

    /// A single-threaded backend. Its health is its own.
    pub fn single() -> Self {
        CpuBackend {
            pool: None,
            pool_clocks: Arc::new(Mutex::new(Vec::new())),
            max_workers: 1,
            workers: AtomicUsize::new(1),
            health: private_health(),
            precision: AtomicU8::new(Precision::F32.code()),
            wide: AtomicBool::new(false),
        }
    }

    /// The health of the device this backend is a lane of.
    pub fn health(&self) -> &Arc<DeviceHealth> {
        &self.health
    }

    /// CPU time used so far by the backend's pool threads (work handed to the pool; work on
    /// the calling thread is the caller's to measure).
    pub fn pool_cpu_time(&self) -> Duration {
        sync::lock(&self.pool_clocks)
            .iter()
            .filter_map(|c| c.read())
            .sum()
    }

    /// Runs `f` with the pool as rayon's current pool when more than one worker may be used,
    /// and returns how many workers it may use. Every operation large enough for the pool
    /// comes here, whatever its budget, so it marks the work as wide.
    fn run<R: Send>(&self, f: impl FnOnce(usize) -> R + Send) -> R {
        self.wide.store(true, Ordering::Relaxed);
        let w = self.workers();
        match &self.pool {
            Some(pool) if w > 1 => pool.install(|| f(w)),
            _ => f(1),
        }
    }

    /// What every operation does first: the calling thread flushes subnormal floats (see
    /// [`super::denormals`]), and the device must be healthy.
    fn enter(&self) -> Result<(), DeviceError> {
        super::denormals::flush_on_this_thread();
        self.health.check()
    }

    /// Chunk length that splits `len` elements over `w` workers.
    fn chunk(len: usize, w: usize) -> usize {
        len.div_ceil(w).max(1)
    }
}

impl Backend for CpuBackend {
    type Buf = CpuBuf;
    type Labels = Vec<u32>;

    fn name(&self) -> String {
        "cpu".to_string()
    }

    fn max_workers(&self) -> usize {
        self.max_workers
    }

    fn workers(&self) -> usize {
        self.workers.load(Ordering::Relaxed)
    }

    fn set_workers(&self, workers: usize) {
        self.workers
            .store(workers.clamp(1, self.max_workers), Ordering::Relaxed);
    }

    fn set_precision(&self, precision: Precision) {
        self.precision.store(precision.code(), Ordering::Relaxed);
    }

    fn precision(&self) -> Precision {
        Precision::from_code(self.precision.load(Ordering::Relaxed))
    }

    fn default_precision(&self, _work: crate::device::Work) -> Precision {
        Precision::F32
    }

    fn worker_cpu_time(&self) -> Duration {
        self.pool_cpu_time()
    }

    fn take_width(&self) -> Option<Width> {
        let wide = self.wide.swap(false, Ordering::Relaxed);
        Some(if wide { Width::All } else { Width::One })
    }

    fn synchronize(&self) -> Result<(), DeviceError> {
        self.enter()
    }

    fn alloc(&self, len: usize) -> Result<CpuBuf, DeviceError> {
        self.enter()?;
        Ok(CpuBuf(vec![0.0; len]))
    }

    fn upload(&self, data: &[f32]) -> Result<CpuBuf, DeviceError> {
        self.enter()?;
        Ok(CpuBuf(data.to_vec()))
    }

    fn len(&self, buf: &CpuBuf) -> usize {
        buf.0.len()
    }

    fn write(&self, dst: &mut CpuBuf, data: &[f32]) -> Result<(), DeviceError> {
        self.enter()?;
        check_len("write", "dst", dst.0.len(), data.len())?;
        dst.0[..data.len()].copy_from_slice(data);
        Ok(())
    }

    fn read(&self, src: &CpuBuf, out: &mut [f32]) -> Result<(), DeviceError> {
        self.enter()?;
        check_len("read", "src", src.0.len(), out.len())?;
        out.copy_from_slice(&src.0[..out.len()]);
        Ok(())
    }

    fn fill(&self, buf: &mut CpuBuf, len: usize, value: f32) -> Result<(), DeviceError> {
        self.enter()?;
        check_len("fill", "buf", buf.0.len(), len)?;
        buf.0[..len].fill(value);
        Ok(())
    }

    fn alloc_labels(&self, len: usize) -> Result<Vec<u32>, DeviceError> {
        self.enter()?;
        Ok(vec![0; len])
    }

    fn write_labels(&self, dst: &mut Vec<u32>, labels: &[u32]) -> Result<(), DeviceError> {
        self.enter()?;
        check_len("write_labels", "dst", dst.len(), labels.len())?;
        dst[..labels.len()].copy_from_slice(labels);
        Ok(())
    }

    fn gemm(&self, g: Gemm, a: &CpuBuf, b: &CpuBuf, c: &mut CpuBuf) -> Result<(), DeviceError> {
        self.enter()?;
        let Gemm { m, n, k, .. } = g;
        check_len("gemm", "a", a.0.len(), m * k)?;
        check_len("gemm", "b", b.0.len(), k * n)?;
        check_len("gemm", "c", c.0.len(), m * n)?;
        if m == 0 || n == 0 {
            return Ok(());
        }
        if k == 0 {
            // An empty inner product is zero; gemm would leave C untouched.
            let c = &mut c.0[..m * n];
            if g.beta == 0.0 {
                c.fill(0.0);
            } else {
                c.iter_mut().for_each(|x| *x *= g.beta);
            }
            return Ok(());
        }
        // Strides of op(A) (m × k) and op(B) (k × n) over row-major storage.
        let (a_rs, a_cs) = if g.trans_a { (1, m) } else { (k, 1) };
        let (b_rs, b_cs) = if g.trans_b { (1, k) } else { (n, 1) };
        // bf16, emulated: the operands rounded as the GPU's conversion rounds them.
        let bf16 = (self.precision() == Precision::Bf16)
            .then(|| (rounded(&a.0[..m * k]), rounded(&b.0[..k * n])));
        let (a, b) = match &bf16 {
            Some((a, b)) => (a.as_slice(), b.as_slice()),
            None => (&a.0[..], &b.0[..]),
        };
        let (ap, bp) = (a.as_ptr() as usize, b.as_ptr() as usize);
        let cp = c.0.as_mut_ptr() as usize;
        let small = m * n * k < PAR_MIN_GEMM_MACS;
        let call = |w: usize| {
            let parallelism = if w > 1 {
                gemm::Parallelism::Rayon(w)
            } else {
                gemm::Parallelism::None
            };
            // SAFETY: the lengths of a, b and c were checked above against the shapes and
            // strides passed here, so every element gemm touches is inside its buffer; c is
            // borrowed mutably and a, b immutably, so they cannot alias. The pointers travel as
            // usize only to cross into the pool's closure; the borrows outlive the call.
            unsafe {
                gemm::gemm(
                    m,
                    n,
                    k,
                    cp as *mut f32,
                    1,
                    n as isize,
                    g.beta != 0.0,
                    ap as *const f32,
                    a_cs as isize,
                    a_rs as isize,
                    bp as *const f32,
                    b_cs as isize,
                    b_rs as isize,
                    g.beta,
                    g.alpha,
                    false,
                    false,
                    false,
                    parallelism,
                );
            }
        };
        if small {
            call(1);
        } else {
            self.run(call);
        }
        Ok(())
    }

    fn bias_act(
        &self,
        x: &mut CpuBuf,
        bias: &CpuBuf,
        rows: usize,
        cols: usize,
        act: Activation,
    ) -> Result<(), DeviceError> {
        self.enter()?;
        check_len("bias_act", "x", x.0.len(), rows * cols)?;
        check_len("bias_act", "bias", bias.0.len(), cols)?;
        if rows == 0 || cols == 0 {
            return Ok(());
        }
        let bias = &bias.0[..cols];
        let kernel = |block: &mut [f32]| {
            for row in block.chunks_exact_mut(cols) {
                match act {
                    Activation::Identity => {
                        row.iter_mut().zip(bias).for_each(|(v, b)| *v += b);
                    }
                    Activation::Relu => {
                        row.iter_mut()
                            .zip(bias)
                            .for_each(|(v, b)| *v = (*v + b).max(0.0));
                    }
                }
            }
        };
        let x = &mut x.0[..rows * cols];
        if rows * cols < PAR_MIN_ELEMS {
            kernel(x);
        } else {
            self.run(|w| {
                let rows_per = rows.div_ceil(w);
                x.par_chunks_mut(rows_per * cols).for_each(kernel);
            });
        }
        Ok(())
    }

    fn relu_grad(&self, grad: &mut CpuBuf, act: &CpuBuf, len: usize) -> Result<(), DeviceError> {
        self.enter()?;
        check_len("relu_grad", "grad", grad.0.len(), len)?;
        check_len("relu_grad", "act", act.0.len(), len)?;
        let kernel = |(g, a): (&mut [f32], &[f32])| {
            g.iter_mut().zip(a).for_each(|(g, a)| {
                if *a <= 0.0 {
                    *g = 0.0;
                }
            });
        };
        let (g, a) = (&mut grad.0[..len], &act.0[..len]);
        if len < PAR_MIN_ELEMS {
            kernel((g, a));
        } else {
            self.run(|w| {
                let c = Self::chunk(len, w);
                g.par_chunks_mut(c).zip(a.par_chunks(c)).for_each(kernel);
            });
        }
        Ok(())
    }

    fn col_sum(
        &self,
        x: &CpuBuf,
        rows: usize,
        cols: usize,
        out: &mut CpuBuf,
    ) -> Result<(), DeviceError> {
        self.enter()?;
        check_len("col_sum", "x", x.0.len(), rows * cols)?;
        check_len("col_sum", "out", out.0.len(), cols)?;
        let out = &mut out.0[..cols];
        out.fill(0.0);
        if cols == 0 {
            return Ok(());
        }
        for row in x.0[..rows * cols].chunks_exact(cols) {
            out.iter_mut().zip(row).for_each(|(o, v)| *o += v);
        }
        Ok(())
    }

    fn softmax_xent(
        &self,
        logits: &CpuBuf,
        labels: &Vec<u32>,
        rows: usize,
        cols: usize,
        grad_scale: f32,
        grad: &mut CpuBuf,
        loss_acc: &mut CpuBuf,
        correct_acc: &mut CpuBuf,
    ) -> Result<(), DeviceError> {
        self.enter()?;
        const OP: &str = "softmax_xent";
        check_len(OP, "logits", logits.0.len(), rows * cols)?;
        check_len(OP, "labels", labels.len(), rows)?;
        check_len(OP, "grad", grad.0.len(), rows * cols)?;
        check_len(OP, "loss_acc", loss_acc.0.len(), rows)?;
        check_len(OP, "correct_acc", correct_acc.0.len(), rows)?;
        check_labels(OP, labels, rows, cols)?;
        if cols == 0 {
            return Ok(());
        }
        let scale = grad_scale as f64;
        for (r, &label) in labels[..rows].iter().enumerate() {
            let z = &logits.0[r * cols..(r + 1) * cols];
            let g = &mut grad.0[r * cols..(r + 1) * cols];
            let label = label as usize;
            let (mut arg, mut max) = (0usize, z[0]);
            for (c, &v) in z.iter().enumerate().skip(1) {
                if v > max {
                    max = v;
                    arg = c;
                }
            }
            let max = max as f64;
            let denom: f64 = z.iter().map(|&v| (v as f64 - max).exp()).sum();
            let log_denom = denom.ln();
            for c in 0..cols {
                let p = (z[c] as f64 - max).exp() / denom;
                let y = if c == label { 1.0 } else { 0.0 };
                g[c] = (scale * (p - y)) as f32;
            }
            loss_acc.0[r] += (log_denom - (z[label] as f64 - max)) as f32;
            if arg == label {
                correct_acc.0[r] += 1.0;
            }
        }
        Ok(())
    }

    fn softmax(&self, x: &mut CpuBuf, rows: usize, cols: usize) -> Result<(), DeviceError> {
        self.enter()?;
        check_len("softmax", "x", x.0.len(), rows * cols)?;
        if cols == 0 {
            return Ok(());
        }
        for row in x.0[..rows * cols].chunks_exact_mut(cols) {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let denom: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
            for v in row.iter_mut() {
                *v = ((*v as f64 - max).exp() / denom) as f32;
            }
        }
        Ok(())
    }

    fn sum(&self, x: &CpuBuf, len: usize) -> Result<f64, DeviceError> {
        self.enter()?;
        check_len("sum", "x", x.0.len(), len)?;
        Ok(x.0[..len].iter().map(|&v| v as f64).sum())
    }

    fn sgd_step(
        &self,
        param: &mut CpuBuf,
        grad: &CpuBuf,
        velocity: &mut CpuBuf,
        len: usize,
        hp: SgdParams,
    ) -> Result<(), DeviceError> {
        self.enter()?;
        const OP: &str = "sgd_step";
        check_len(OP, "param", param.0.len(), len)?;
        check_len(OP, "grad", grad.0.len(), len)?;
        check_len(OP, "velocity", velocity.0.len(), len)?;
        let kernel = |((p, v), g): ((&mut [f32], &mut [f32]), &[f32])| {
            for i in 0..p.len() {
                let gi = g[i] + hp.weight_decay * p[i];
                v[i] = hp.momentum * v[i] + gi;
                p[i] -= hp.lr * v[i];
            }
        };
        let (p, v, g) = (&mut param.0[..len], &mut velocity.0[..len], &grad.0[..len]);
        if len < PAR_MIN_ELEMS {
            kernel(((p, v), g));
        } else {
            self.run(|w| {
                let c = Self::chunk(len, w);
                p.par_chunks_mut(c)
                    .zip(v.par_chunks_mut(c))
                    .zip(g.par_chunks(c))
                    .for_each(kernel);
            });
        }
        Ok(())
    }

    fn adam_step(
        &self,
        param: &mut CpuBuf,
        grad: &CpuBuf,
        m: &mut CpuBuf,
        v: &mut CpuBuf,
        len: usize,
        hp: AdamParams,
    ) -> Result<(), DeviceError> {
        self.enter()?;
        const OP: &str = "adam_step";
        check_len(OP, "param", param.0.len(), len)?;
        check_len(OP, "grad", grad.0.len(), len)?;
        check_len(OP, "m", m.0.len(), len)?;
        check_len(OP, "v", v.0.len(), len)?;
        let t = hp.t.max(1) as i32;
        let bc1 = 1.0 - (hp.beta1 as f64).powi(t);
        let bc2 = 1.0 - (hp.beta2 as f64).powi(t);
        let step_size = (hp.lr as f64 / bc1) as f32;
        let inv_sqrt_bc2 = (1.0 / bc2.sqrt()) as f32;
        let (b1, b2, eps, wd) = (hp.beta1, hp.beta2, hp.eps, hp.weight_decay);
        type Chunks<'a> = (((&'a mut [f32], &'a mut [f32]), &'a mut [f32]), &'a [f32]);
        let kernel = |(((p, m), v), g): Chunks| {
            for i in 0..p.len() {
                let gi = g[i] + wd * p[i];
                m[i] = b1 * m[i] + (1.0 - b1) * gi;
                v[i] = b2 * v[i] + (1.0 - b2) * gi * gi;
                let denom = v[i].sqrt() * inv_sqrt_bc2 + eps;
                p[i] -= step_size * m[i] / denom;
            }
        };
        let (p, mm, vv, g) = (
            &mut param.0[..len],
            &mut m.0[..len],
            &mut v.0[..len],
            &grad.0[..len],
        );
        if len < PAR_MIN_ELEMS {
            kernel((((p, mm), vv), g));
        } else {
            self.run(|w| {
                let c = Self::chunk(len, w);
                p.par_chunks_mut(c)
                    .zip(mm.par_chunks_mut(c))
                    .zip(vv.par_chunks_mut(c))
                    .zip(g.par_chunks(c))
                    .for_each(kernel);
            });
        }
        Ok(())
    }
}
