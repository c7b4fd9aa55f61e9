//! Every kernel on the GPU against the CPU backend: each GEMM layout (transposed operands
//! included) at several CTA budgets, the elementwise, softmax and optimiser kernels, bf16
//! conversions, and the bf16 GEMMs (tensor cores and SIMT) at sizes up to 4096.

use std::sync::Arc;

use serde::Serialize;

use super::{CheckError, Context, Figures, GpuCheckOptions, Verdict, random};
use crate::device::cuda::choice::choose_gemm;
use crate::device::cuda::{CudaBackend, CudaDevice, StreamPriority};
use crate::device::{Activation, AdamParams, Backend, CpuBackend, Gemm, Precision, SgdParams};
use crate::util::rng::Rng;

/// One comparison of a GPU kernel with the CPU backend.
#[derive(Debug, Clone, Serialize)]
pub struct KernelCheck {
    /// Kernel (or pair of kernels) checked.
    pub kernel: &'static str,
    /// Shape and settings, for a person.
    pub case: String,
    /// Largest `|gpu − ref| / (1 + |ref|)`.
    pub max_rel_err: f64,
    /// Allowed.
    pub tolerance: f64,
    /// Within it.
    pub pass: bool,
}

/// The `kernels` section's figures.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct KernelsFigures {
    /// Every comparison.
    pub checks: Vec<KernelCheck>,
    /// How many were out of tolerance.
    pub failed: usize,
    /// Whether the tensor-core GEMM ran (compute capability 8.0 or later).
    pub tensor_cores: bool,
}

impl Figures for KernelsFigures {
    fn verdict(&self) -> Verdict {
        match self.checks.iter().find(|c| !c.pass) {
            None if self.checks.is_empty() => Verdict::Fail("no check ran".into()),
            None => Verdict::Pass,
            Some(first) => Verdict::Fail(format!(
                "{} of {} checks out of tolerance, first {} {} (error {:.3e} > {:.1e})",
                self.failed,
                self.checks.len(),
                first.kernel,
                first.case,
                first.max_rel_err,
                first.tolerance
            )),
        }
    }

    fn headline(&self) -> Vec<String> {
        let mut worst: Vec<(&'static str, f64)> = Vec::new();
        for c in &self.checks {
            let ratio = if c.tolerance > 0.0 {
                c.max_rel_err / c.tolerance
            } else if c.max_rel_err == 0.0 {
                0.0
            } else {
                f64::INFINITY
            };
            match worst.iter_mut().find(|(k, _)| *k == c.kernel) {
                Some(w) => w.1 = w.1.max(ratio),
                None => worst.push((c.kernel, ratio)),
            }
        }
        let mut lines = vec![format!(
            "{} checks, {} out of tolerance; tensor cores {}",
            self.checks.len(),
            self.failed,
            if self.tensor_cores {
                "checked"
            } else {
                "absent"
            }
        )];
        let list: Vec<String> = worst
            .iter()
            .map(|(k, r)| format!("{k} {:.0}%", r * 100.0))
            .collect();
        lines.push(format!(
            "worst error as % of tolerance: {}",
            list.join(", ")
        ));
        lines
    }
}

/// Runs the section: every check on a lane at normal priority.
pub(super) fn run(
    opts: &GpuCheckOptions,
    dev: &Arc<CudaDevice>,
) -> Result<KernelsFigures, CheckError> {
    let g = dev
        .lane_backend(StreamPriority::Normal)
        .ctx("creating a lane")?;
    let checks = kernel_checks(dev, &g, !opts.dry_run)?;
    Ok(KernelsFigures {
        failed: checks.iter().filter(|c| !c.pass).count(),
        tensor_cores: dev.tensor_cores(),
        checks,
    })
}

/// Largest `|a − b| / (1 + |b|)`; infinite when the lengths differ or one side alone is NaN.
pub(crate) fn max_rel(a: &[f32], b: &[f32]) -> f64 {
    if a.len() != b.len() {
        return f64::INFINITY;
    }
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            if x.is_nan() != y.is_nan() {
                f64::INFINITY
            } else {
                ((x - y).abs() / (1.0 + y.abs())) as f64
            }
        })
        .fold(0.0, f64::max)
}

/// Tolerance of a GEMM against the CPU for inner dimension `k`: summation order and fused
/// multiply-adds differ, so the error grows with `k`.
fn gemm_tol(k: usize) -> f64 {
    1e-6 * (k as f64).max(100.0)
}

fn fetch<B: Backend>(b: &B, buf: &B::Buf, n: usize) -> Result<Vec<f32>, CheckError> {
    let mut v = vec![0.0; n];
    b.read(buf, &mut v).ctx("reading a buffer back")?;
    Ok(v)
}

/// The checks so far, and the two backends compared.
struct Checker<'a> {
    g: &'a CudaBackend,
    cpu: CpuBackend,
    rng: Rng,
    out: Vec<KernelCheck>,
}

impl Checker<'_> {
    fn check(&mut self, kernel: &'static str, case: String, gpu: &[f32], cpu: &[f32], tol: f64) {
        let err = max_rel(gpu, cpu);
        self.out.push(KernelCheck {
            kernel,
            case,
            max_rel_err: err,
            tolerance: tol,
            pass: err <= tol,
        });
    }

    fn random(&mut self, n: usize) -> Vec<f32> {
        random(&mut self.rng, n)
    }
}

/// Every kernel on `g` against [`CpuBackend`]. `large` adds products up to 4096 in every
/// layout (a few seconds of CPU time for the references).
pub fn kernel_checks(
    dev: &Arc<CudaDevice>,
    g: &CudaBackend,
    large: bool,
) -> Result<Vec<KernelCheck>, CheckError> {
    let cpu = CpuBackend::new(crate::device::cpu::available_cores()).ctx("cpu backend")?;
    let mut c = Checker {
        g,
        cpu,
        rng: Rng::new(7),
        out: Vec::new(),
    };
    let full = g.max_workers();
    let mut f32_cases: Vec<((usize, usize, usize), Vec<usize>)> =
        [(1, 1, 1), (17, 63, 65), (130, 65, 17), (256, 512, 300)]
            .into_iter()
            .map(|s| (s, vec![1, 3, full]))
            .collect();
    // (8, 784, 784) and (1, 10, 2048) run on gemm_bf16_small_m (see device::cuda::choice).
    let mut bf16_cases = vec![
        (64, 64, 64),
        (130, 65, 200),
        (512, 256, 1024),
        (8, 784, 784),
        (1, 10, 2048),
    ];
    if large {
        f32_cases.push(((1000, 1030, 999), vec![full]));
        f32_cases.push(((1024, 1024, 1024), vec![7, full]));
        bf16_cases.extend([(2048, 2048, 2048), (4096, 512, 4096), (1000, 1030, 999)]);
    }
    for ((m, n, k), budgets) in &f32_cases {
        for &budget in budgets {
            gemm_f32_layouts(&mut c, (*m, *n, *k), budget)?;
        }
    }
    g.set_workers(full);
    elementwise_checks(&mut c)?;
    optimiser_checks(&mut c, full)?;
    let tensor_cores = dev.tensor_cores();
    for &shape in &bf16_cases {
        gemm_bf16_layouts(&mut c, shape, tensor_cores)?;
    }
    Ok(c.out)
}

const LAYOUTS: [(bool, bool); 4] = [(false, false), (true, false), (false, true), (true, true)];

fn gemm_f32_layouts(
    c: &mut Checker,
    (m, n, k): (usize, usize, usize),
    budget: usize,
) -> Result<(), CheckError> {
    let (g, up) = (c.g, "uploading");
    g.set_workers(budget);
    for (ta, tb) in LAYOUTS {
        let (a, b, c0) = (c.random(m * k), c.random(k * n), c.random(m * n));
        let mut spec = Gemm::new(m, n, k).scaled(0.5, 0.25);
        spec.trans_a = ta;
        spec.trans_b = tb;
        let (ga, gb) = (g.upload(&a).ctx(up)?, g.upload(&b).ctx(up)?);
        let mut gc = g.upload(&c0).ctx(up)?;
        let (ca, cb) = (c.cpu.upload(&a).ctx(up)?, c.cpu.upload(&b).ctx(up)?);
        let mut cc = c.cpu.upload(&c0).ctx(up)?;
        g.gemm(spec, &ga, &gb, &mut gc).ctx("gemm_f32 on the GPU")?;
        c.cpu.gemm(spec, &ca, &cb, &mut cc).ctx("gemm on the CPU")?;
        let (gv, cv) = (fetch(g, &gc, m * n)?, fetch(&c.cpu, &cc, m * n)?);
        let case = format!("{m}x{n}x{k} ta={ta} tb={tb} ctas={budget}");
        c.check("gemm_f32", case, &gv, &cv, gemm_tol(k));
    }
    Ok(())
}

fn elementwise_checks(c: &mut Checker) -> Result<(), CheckError> {
    let (g, up) = (c.g, "uploading");
    let (rows, cols) = (37, 10);
    let x = c.random(rows * cols);
    let bias = c.random(cols);
    let (mut gx, gb) = (g.upload(&x).ctx(up)?, g.upload(&bias).ctx(up)?);
    let (mut cx, cb) = (c.cpu.upload(&x).ctx(up)?, c.cpu.upload(&bias).ctx(up)?);
    g.bias_act(&mut gx, &gb, rows, cols, Activation::Relu)
        .ctx("bias_act")?;
    c.cpu
        .bias_act(&mut cx, &cb, rows, cols, Activation::Relu)
        .ctx("bias_act on the CPU")?;
    let (gxv, cxv) = (
        fetch(g, &gx, rows * cols)?,
        fetch(&c.cpu, &cx, rows * cols)?,
    );
    c.check("bias_act", format!("{rows}x{cols} relu"), &gxv, &cxv, 0.0);

    let grad0 = c.random(rows * cols);
    let (mut gg, mut cg) = (g.upload(&grad0).ctx(up)?, c.cpu.upload(&grad0).ctx(up)?);
    g.relu_grad(&mut gg, &gx, rows * cols).ctx("relu_grad")?;
    c.cpu
        .relu_grad(&mut cg, &cx, rows * cols)
        .ctx("relu_grad")?;
    let (a1, a2) = (
        fetch(g, &gg, rows * cols)?,
        fetch(&c.cpu, &cg, rows * cols)?,
    );
    c.check("relu_grad", format!("{}", rows * cols), &a1, &a2, 0.0);

    let (mut gs, mut cs) = (g.alloc(cols).ctx(up)?, c.cpu.alloc(cols).ctx(up)?);
    g.col_sum(&gx, rows, cols, &mut gs).ctx("col_sum")?;
    c.cpu.col_sum(&cx, rows, cols, &mut cs).ctx("col_sum")?;
    let (a1, a2) = (fetch(g, &gs, cols)?, fetch(&c.cpu, &cs, cols)?);
    c.check("col_sum", format!("{rows}x{cols}"), &a1, &a2, 1e-6);
    softmax_checks(c, rows, cols)
}

fn softmax_checks(c: &mut Checker, rows: usize, cols: usize) -> Result<(), CheckError> {
    let (g, up) = (c.g, "uploading");
    let labels: Vec<u32> = (0..rows).map(|i| (i * 7 % cols) as u32).collect();
    let (mut gl, mut cl) = (
        g.alloc_labels(rows).ctx(up)?,
        c.cpu.alloc_labels(rows).ctx(up)?,
    );
    g.write_labels(&mut gl, &labels).ctx(up)?;
    c.cpu.write_labels(&mut cl, &labels).ctx(up)?;
    let logits = c.random(rows * cols);
    let (glog, clog) = (g.upload(&logits).ctx(up)?, c.cpu.upload(&logits).ctx(up)?);
    let mut gb = (
        g.alloc(rows * cols).ctx(up)?,
        g.alloc(rows).ctx(up)?,
        g.alloc(rows).ctx(up)?,
    );
    let mut cb = (
        c.cpu.alloc(rows * cols).ctx(up)?,
        c.cpu.alloc(rows).ctx(up)?,
        c.cpu.alloc(rows).ctx(up)?,
    );
    g.softmax_xent(&glog, &gl, rows, cols, 0.5, &mut gb.0, &mut gb.1, &mut gb.2)
        .ctx("softmax_xent")?;
    c.cpu
        .softmax_xent(&clog, &cl, rows, cols, 0.5, &mut cb.0, &mut cb.1, &mut cb.2)
        .ctx("softmax_xent on the CPU")?;
    for (name, gbuf, cbuf, n) in [
        ("softmax_xent grad", &gb.0, &cb.0, rows * cols),
        ("softmax_xent loss", &gb.1, &cb.1, rows),
        ("softmax_xent correct", &gb.2, &cb.2, rows),
    ] {
        let (a1, a2) = (fetch(g, gbuf, n)?, fetch(&c.cpu, cbuf, n)?);
        c.check(name, format!("{rows}x{cols}"), &a1, &a2, 1e-6);
    }
    let (mut gsm, mut csm) = (g.upload(&logits).ctx(up)?, c.cpu.upload(&logits).ctx(up)?);
    g.softmax(&mut gsm, rows, cols).ctx("softmax_rows")?;
    c.cpu.softmax(&mut csm, rows, cols).ctx("softmax_rows")?;
    let (a1, a2) = (
        fetch(g, &gsm, rows * cols)?,
        fetch(&c.cpu, &csm, rows * cols)?,
    );
    c.check("softmax_rows", format!("{rows}x{cols}"), &a1, &a2, 1e-6);
    Ok(())
}

fn optimiser_checks(c: &mut Checker, full: usize) -> Result<(), CheckError> {
    let (g, up) = (c.g, "uploading");
    let n = 100_003;
    let big = c.random(n);
    let (gbig, cbig) = (g.upload(&big).ctx(up)?, c.cpu.upload(&big).ctx(up)?);
    for budget in [1, full] {
        g.set_workers(budget);
        let s1 = g.sum(&gbig, n).ctx("sum_partial")?;
        let s2 = c.cpu.sum(&cbig, n).ctx("sum on the CPU")?;
        let case = format!("{n} ctas={budget}");
        c.check("sum_partial", case, &[s1 as f32], &[s2 as f32], 1e-6);
    }
    g.set_workers(full);
    let mut gf = g.alloc(n).ctx(up)?;
    g.fill(&mut gf, n, 0.75).ctx("fill_f32")?;
    let filled = fetch(g, &gf, n)?;
    c.check("fill_f32", format!("{n}"), &filled, &vec![0.75; n], 0.0);

    let grad = c.random(n);
    let mut gp = (
        g.upload(&big).ctx(up)?,
        g.upload(&grad).ctx(up)?,
        g.alloc(n).ctx(up)?,
        g.alloc(n).ctx(up)?,
    );
    let mut cp = (
        c.cpu.upload(&big).ctx(up)?,
        c.cpu.upload(&grad).ctx(up)?,
        c.cpu.alloc(n).ctx(up)?,
        c.cpu.alloc(n).ctx(up)?,
    );
    let sgd = SgdParams {
        lr: 0.1,
        momentum: 0.9,
        weight_decay: 1e-4,
    };
    for _ in 0..3 {
        g.sgd_step(&mut gp.0, &gp.1, &mut gp.2, n, sgd)
            .ctx("sgd_step")?;
        c.cpu
            .sgd_step(&mut cp.0, &cp.1, &mut cp.2, n, sgd)
            .ctx("sgd_step on the CPU")?;
    }
    let (a1, a2) = (fetch(g, &gp.0, n)?, fetch(&c.cpu, &cp.0, n)?);
    c.check("sgd_step", format!("{n} x3"), &a1, &a2, 1e-6);
    for t in 1..=3 {
        let adam = AdamParams {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 1e-4,
            t,
        };
        g.adam_step(&mut gp.0, &gp.1, &mut gp.2, &mut gp.3, n, adam)
            .ctx("adam_step")?;
        c.cpu
            .adam_step(&mut cp.0, &cp.1, &mut cp.2, &mut cp.3, n, adam)
            .ctx("adam_step on the CPU")?;
    }
    let (a1, a2) = (fetch(g, &gp.0, n)?, fetch(&c.cpu, &cp.0, n)?);
    c.check("adam_step", format!("{n} x3"), &a1, &a2, 1e-5);

    // bf16 conversions against the `half` crate.
    let g16 = g.to_bf16(&gbig, n).ctx("f32_to_bf16")?;
    let back = g.from_bf16(&g16, n).ctx("bf16_to_f32")?;
    let back = fetch(g, &back, n)?;
    let rounded = round_bf16(&big);
    c.check(
        "f32_to_bf16 + bf16_to_f32",
        format!("{n}"),
        &back,
        &rounded,
        0.0,
    );
    Ok(())
}

fn round_bf16(v: &[f32]) -> Vec<f32> {
    v.iter()
        .map(|&x| half::bf16::from_f32(x).to_f32())
        .collect()
}

/// The bf16 GEMMs in every layout against the CPU on the same rounded inputs.
fn gemm_bf16_layouts(
    c: &mut Checker,
    (m, n, k): (usize, usize, usize),
    tensor_cores: bool,
) -> Result<(), CheckError> {
    let (g, up) = (c.g, "uploading");
    for (ta, tb) in LAYOUTS {
        let (a, b) = (c.random(m * k), c.random(k * n));
        let mut spec = Gemm::new(m, n, k);
        spec.trans_a = ta;
        spec.trans_b = tb;
        let (ga, gb) = (g.upload(&a).ctx(up)?, g.upload(&b).ctx(up)?);
        let a16 = g.to_bf16(&ga, m * k).ctx("f32_to_bf16")?;
        let b16 = g.to_bf16(&gb, k * n).ctx("f32_to_bf16")?;
        let (ar, br) = (round_bf16(&a), round_bf16(&b));
        let (ca, cb) = (c.cpu.upload(&ar).ctx(up)?, c.cpu.upload(&br).ctx(up)?);
        let mut cc = c.cpu.alloc(m * n).ctx(up)?;
        c.cpu.gemm(spec, &ca, &cb, &mut cc).ctx("gemm on the CPU")?;
        let reference = fetch(&c.cpu, &cc, m * n)?;
        let case = format!("{m}x{n}x{k} ta={ta} tb={tb}");
        let mut simt = g.alloc(m * n).ctx(up)?;
        g.gemm_bf16(spec, &a16, &b16, &mut simt, false)
            .ctx("gemm_bf16_simt")?;
        let simt = fetch(g, &simt, m * n)?;
        c.check(
            "gemm_bf16_simt",
            case.clone(),
            &simt,
            &reference,
            gemm_tol(k),
        );
        if tensor_cores {
            let mut tc = g.alloc(m * n).ctx(up)?;
            g.gemm_bf16(spec, &a16, &b16, &mut tc, true)
                .ctx("gemm_bf16 (tensor cores)")?;
            let tc = fetch(g, &tc, m * n)?;
            let sms = g.device().info().sm_count as usize;
            let kernel = choose_gemm(&spec, Precision::Bf16, true, sms).kernel.name();
            c.check(kernel, case, &tc, &reference, gemm_tol(k));
        }
    }
    Ok(())
}
