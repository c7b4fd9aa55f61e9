//! `setpoint gpu-check`: every GPU measurement the project needs, in one run on a host with an
//! NVIDIA GPU (no toolchain needed there), written as JSON.
//!
//! Sections, each recorded with its own error if it fails so that one failure does not hide
//! the others:
//! - `device`: what the driver reports, the CTA budget range and stream priorities;
//! - `kernels`: every kernel against the CPU backend (f32 tight, bf16 relaxed), at several
//!   CTA budgets, and the tensor-core GEMM against its SIMT twin;
//! - `gemm`: TFLOP/s of the project's GEMMs against cuBLAS (through cudarc) at 1024³ … 8192³,
//!   f32 and bf16, timed by CUDA events, median of repetitions;
//! - `training`: samples/s of the same training run on the GPU and on the CPU backend;
//! - `lanes`: two lanes busy at shares 0.25 and 0.75 and their throughput ratio;
//! - `inference`: p99 of a batched service alone, beside a training lane at the lowest
//!   stream priority, and beside one at the same priority.

use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Value, json};

use crate::data::Dataset;
use crate::device::cuda::{CudaBackend, CudaDevice, StreamPriority};
use crate::device::{Activation, AdamParams, Backend, CpuBackend, Gemm, SgdParams};
use crate::model::{Mlp, Workspace};
use crate::train::{TrainSpec, Trainer};
use crate::util::rng::Rng;

/// One comparison of a GPU kernel with the reference.
#[derive(Debug, Clone, Serialize)]
pub struct KernelCheck {
    /// Kernel.
    pub kernel: String,
    /// Shape and settings.
    pub case: String,
    /// Largest `|gpu − ref| / (1 + |ref|)`.
    pub max_rel_err: f64,
    /// Allowed.
    pub tolerance: f64,
    /// Within it.
    pub pass: bool,
}

fn random(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.normal() as f32).collect()
}

fn max_rel(a: &[f32], b: &[f32]) -> f64 {
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

fn fetch<B: Backend>(b: &B, buf: &B::Buf, n: usize) -> Result<Vec<f32>, String> {
    let mut v = vec![0.0; n];
    b.read(buf, &mut v).map_err(|e| e.to_string())?;
    Ok(v)
}

fn check(
    out: &mut Vec<KernelCheck>,
    kernel: &str,
    case: String,
    gpu: &[f32],
    cpu: &[f32],
    tol: f64,
) {
    let err = max_rel(gpu, cpu);
    out.push(KernelCheck {
        kernel: kernel.into(),
        case,
        max_rel_err: err,
        tolerance: tol,
        pass: err <= tol,
    });
}

/// Every kernel on `g` against [`CpuBackend`], on awkward shapes and at several CTA budgets.
pub fn kernel_checks(g: &CudaBackend) -> Result<Vec<KernelCheck>, String> {
    let e = |e: crate::device::DeviceError| e.to_string();
    let cpu = CpuBackend::single();
    let mut rng = Rng::new(7);
    let mut out = Vec::new();
    let full = g.max_workers();
    for &(m, n, k) in &[(1, 1, 1), (17, 63, 65), (130, 65, 17), (256, 512, 300)] {
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            for budget in [1, 3, full] {
                g.set_workers(budget);
                let (a, b, c0) = (
                    random(&mut rng, m * k),
                    random(&mut rng, k * n),
                    random(&mut rng, m * n),
                );
                let mut spec = Gemm::new(m, n, k).scaled(0.5, 0.25);
                spec.trans_a = ta;
                spec.trans_b = tb;
                let (ga, gb) = (g.upload(&a).map_err(e)?, g.upload(&b).map_err(e)?);
                let mut gc = g.upload(&c0).map_err(e)?;
                let (ca, cb) = (cpu.upload(&a).map_err(e)?, cpu.upload(&b).map_err(e)?);
                let mut cc = cpu.upload(&c0).map_err(e)?;
                g.gemm(spec, &ga, &gb, &mut gc).map_err(e)?;
                cpu.gemm(spec, &ca, &cb, &mut cc).map_err(e)?;
                check(
                    &mut out,
                    "gemm_f32",
                    format!("{m}x{n}x{k} ta={ta} tb={tb} ctas={budget}"),
                    &fetch(g, &gc, m * n)?,
                    &fetch(&cpu, &cc, m * n)?,
                    1e-5 * (k as f64).max(8.0),
                );
            }
        }
    }
    g.set_workers(full);

    let (rows, cols) = (37, 10);
    let x = random(&mut rng, rows * cols);
    let bias = random(&mut rng, cols);
    let (mut gx, gb) = (g.upload(&x).map_err(e)?, g.upload(&bias).map_err(e)?);
    let (mut cx, cb) = (cpu.upload(&x).map_err(e)?, cpu.upload(&bias).map_err(e)?);
    g.bias_act(&mut gx, &gb, rows, cols, Activation::Relu)
        .map_err(e)?;
    cpu.bias_act(&mut cx, &cb, rows, cols, Activation::Relu)
        .map_err(e)?;
    let (gxv, cxv) = (fetch(g, &gx, rows * cols)?, fetch(&cpu, &cx, rows * cols)?);
    check(
        &mut out,
        "bias_act",
        format!("{rows}x{cols} relu"),
        &gxv,
        &cxv,
        0.0,
    );

    let grad0 = random(&mut rng, rows * cols);
    let (mut gg, mut cg) = (g.upload(&grad0).map_err(e)?, cpu.upload(&grad0).map_err(e)?);
    g.relu_grad(&mut gg, &gx, rows * cols).map_err(e)?;
    cpu.relu_grad(&mut cg, &cx, rows * cols).map_err(e)?;
    let (a1, a2) = (fetch(g, &gg, rows * cols)?, fetch(&cpu, &cg, rows * cols)?);
    check(
        &mut out,
        "relu_grad",
        format!("{}", rows * cols),
        &a1,
        &a2,
        0.0,
    );

    let (mut gs, mut cs) = (g.alloc(cols).map_err(e)?, cpu.alloc(cols).map_err(e)?);
    g.col_sum(&gx, rows, cols, &mut gs).map_err(e)?;
    cpu.col_sum(&cx, rows, cols, &mut cs).map_err(e)?;
    let (a1, a2) = (fetch(g, &gs, cols)?, fetch(&cpu, &cs, cols)?);
    check(
        &mut out,
        "col_sum",
        format!("{rows}x{cols}"),
        &a1,
        &a2,
        1e-6,
    );

    let labels: Vec<u32> = (0..rows).map(|i| (i * 7 % cols) as u32).collect();
    let (mut gl, mut cl) = (
        g.alloc_labels(rows).map_err(e)?,
        cpu.alloc_labels(rows).map_err(e)?,
    );
    g.write_labels(&mut gl, &labels).map_err(e)?;
    cpu.write_labels(&mut cl, &labels).map_err(e)?;
    let logits = random(&mut rng, rows * cols);
    let (glog, clog) = (
        g.upload(&logits).map_err(e)?,
        cpu.upload(&logits).map_err(e)?,
    );
    let mut gbufs = (
        g.alloc(rows * cols).map_err(e)?,
        g.alloc(rows).map_err(e)?,
        g.alloc(rows).map_err(e)?,
    );
    let mut cbufs = (
        cpu.alloc(rows * cols).map_err(e)?,
        cpu.alloc(rows).map_err(e)?,
        cpu.alloc(rows).map_err(e)?,
    );
    g.softmax_xent(
        &glog,
        &gl,
        rows,
        cols,
        0.5,
        &mut gbufs.0,
        &mut gbufs.1,
        &mut gbufs.2,
    )
    .map_err(e)?;
    cpu.softmax_xent(
        &clog,
        &cl,
        rows,
        cols,
        0.5,
        &mut cbufs.0,
        &mut cbufs.1,
        &mut cbufs.2,
    )
    .map_err(e)?;
    for (name, gb, cb, n) in [
        ("softmax_xent grad", &gbufs.0, &cbufs.0, rows * cols),
        ("softmax_xent loss", &gbufs.1, &cbufs.1, rows),
        ("softmax_xent correct", &gbufs.2, &cbufs.2, rows),
    ] {
        let (a1, a2) = (fetch(g, gb, n)?, fetch(&cpu, cb, n)?);
        check(&mut out, name, format!("{rows}x{cols}"), &a1, &a2, 1e-6);
    }
    let (mut gsm, mut csm) = (
        g.upload(&logits).map_err(e)?,
        cpu.upload(&logits).map_err(e)?,
    );
    g.softmax(&mut gsm, rows, cols).map_err(e)?;
    cpu.softmax(&mut csm, rows, cols).map_err(e)?;
    let (a1, a2) = (
        fetch(g, &gsm, rows * cols)?,
        fetch(&cpu, &csm, rows * cols)?,
    );
    check(
        &mut out,
        "softmax_rows",
        format!("{rows}x{cols}"),
        &a1,
        &a2,
        1e-6,
    );

    let n = 100_003;
    let big = random(&mut rng, n);
    let (gbig, cbig) = (g.upload(&big).map_err(e)?, cpu.upload(&big).map_err(e)?);
    for budget in [1, full] {
        g.set_workers(budget);
        let (s1, s2) = (g.sum(&gbig, n).map_err(e)?, cpu.sum(&cbig, n).map_err(e)?);
        check(
            &mut out,
            "sum_partial",
            format!("{n} ctas={budget}"),
            &[s1 as f32],
            &[s2 as f32],
            1e-6,
        );
    }
    g.set_workers(full);
    let mut gf = g.alloc(n).map_err(e)?;
    g.fill(&mut gf, n, 0.75).map_err(e)?;
    check(
        &mut out,
        "fill_f32",
        format!("{n}"),
        &fetch(g, &gf, n)?,
        &vec![0.75; n],
        0.0,
    );

    let grad = random(&mut rng, n);
    let mut gp = (
        g.upload(&big).map_err(e)?,
        g.upload(&grad).map_err(e)?,
        g.alloc(n).map_err(e)?,
        g.alloc(n).map_err(e)?,
    );
    let mut cp = (
        cpu.upload(&big).map_err(e)?,
        cpu.upload(&grad).map_err(e)?,
        cpu.alloc(n).map_err(e)?,
        cpu.alloc(n).map_err(e)?,
    );
    let sgd = SgdParams {
        lr: 0.1,
        momentum: 0.9,
        weight_decay: 1e-4,
    };
    for _ in 0..3 {
        g.sgd_step(&mut gp.0, &gp.1, &mut gp.2, n, sgd).map_err(e)?;
        cpu.sgd_step(&mut cp.0, &cp.1, &mut cp.2, n, sgd)
            .map_err(e)?;
    }
    let (a1, a2) = (fetch(g, &gp.0, n)?, fetch(&cpu, &cp.0, n)?);
    check(&mut out, "sgd_step", format!("{n} x3"), &a1, &a2, 1e-6);
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
            .map_err(e)?;
        cpu.adam_step(&mut cp.0, &cp.1, &mut cp.2, &mut cp.3, n, adam)
            .map_err(e)?;
    }
    let (a1, a2) = (fetch(g, &gp.0, n)?, fetch(&cpu, &cp.0, n)?);
    check(&mut out, "adam_step", format!("{n} x3"), &a1, &a2, 1e-5);

    // bf16: conversions against the `half` crate, GEMMs against the CPU on rounded inputs,
    // and the tensor-core GEMM against its SIMT twin.
    let g16 = g.to_bf16(&gbig, n).map_err(e)?;
    let back = g.from_bf16(&g16, n).map_err(e)?;
    let rounded: Vec<f32> = big
        .iter()
        .map(|&v| half::bf16::from_f32(v).to_f32())
        .collect();
    check(
        &mut out,
        "f32_to_bf16 + bf16_to_f32",
        format!("{n}"),
        &fetch(g, &back, n)?,
        &rounded,
        0.0,
    );
    for &(m, n, k) in &[(64, 64, 64), (130, 65, 200), (512, 256, 1024)] {
        let (a, b) = (random(&mut rng, m * k), random(&mut rng, k * n));
        let ar: Vec<f32> = a
            .iter()
            .map(|&v| half::bf16::from_f32(v).to_f32())
            .collect();
        let br: Vec<f32> = b
            .iter()
            .map(|&v| half::bf16::from_f32(v).to_f32())
            .collect();
        let (ga, gb) = (g.upload(&a).map_err(e)?, g.upload(&b).map_err(e)?);
        let (a16, b16) = (
            g.to_bf16(&ga, m * k).map_err(e)?,
            g.to_bf16(&gb, k * n).map_err(e)?,
        );
        let (ca, cb) = (cpu.upload(&ar).map_err(e)?, cpu.upload(&br).map_err(e)?);
        let mut cc = cpu.alloc(m * n).map_err(e)?;
        cpu.gemm(Gemm::new(m, n, k), &ca, &cb, &mut cc).map_err(e)?;
        let reference = fetch(&cpu, &cc, m * n)?;
        let mut simt = g.alloc(m * n).map_err(e)?;
        g.gemm_bf16(Gemm::new(m, n, k), &a16, &b16, &mut simt, false)
            .map_err(e)?;
        let simt = fetch(g, &simt, m * n)?;
        check(
            &mut out,
            "gemm_bf16_simt",
            format!("{m}x{n}x{k}"),
            &simt,
            &reference,
            1e-5 * k as f64,
        );
        if g.device().info().compute_capability.0 >= 8 {
            let mut tc = g.alloc(m * n).map_err(e)?;
            g.gemm_bf16(Gemm::new(m, n, k), &a16, &b16, &mut tc, true)
                .map_err(e)?;
            let tc = fetch(g, &tc, m * n)?;
            check(
                &mut out,
                "gemm_bf16 (tensor cores) vs simt twin",
                format!("{m}x{n}x{k}"),
                &tc,
                &simt,
                1e-5 * k as f64,
            );
        }
    }
    Ok(out)
}

/// Median of `reps` timed runs of `f` on `g`, in seconds of GPU time (CUDA events).
fn time_on_stream(
    g: &CudaBackend,
    reps: usize,
    mut f: impl FnMut() -> Result<(), String>,
) -> Result<f64, String> {
    f()?;
    g.synchronize().map_err(|e| e.to_string())?;
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        let before = g.busy_time();
        f()?;
        g.synchronize().map_err(|e| e.to_string())?;
        times.push((g.busy_time() - before).as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// GEMM TFLOP/s of the project's kernels at `n³` (cuBLAS is timed by the device check's
/// CUDA C++ probe).
pub fn gemm_bench(g: &CudaBackend, sizes: &[usize], reps: usize) -> Result<Value, String> {
    let e = |e: crate::device::DeviceError| e.to_string();
    let mut rows = Vec::new();
    let mut rng = Rng::new(3);
    g.set_workers(g.max_workers());
    for &n in sizes {
        let flop = 2.0 * (n as f64).powi(3);
        let a = random(&mut rng, n * n);
        let b = random(&mut rng, n * n);
        let (ga, gb) = (g.upload(&a).map_err(e)?, g.upload(&b).map_err(e)?);
        let mut gc = g.alloc(n * n).map_err(e)?;
        let spec = Gemm::new(n, n, n);
        let ours_f32 = time_on_stream(g, reps, || g.gemm(spec, &ga, &gb, &mut gc).map_err(e))?;
        let (a16, b16) = (
            g.to_bf16(&ga, n * n).map_err(e)?,
            g.to_bf16(&gb, n * n).map_err(e)?,
        );
        let tc = g.device().info().compute_capability.0 >= 8;
        let ours_bf16 = time_on_stream(g, reps, || {
            g.gemm_bf16(spec, &a16, &b16, &mut gc, tc).map_err(e)
        })?;
        let tf = |s: f64| flop / s / 1e12;
        rows.push(json!({
            "n": n,
            "f32_tflops": tf(ours_f32),
            "bf16_tflops": tf(ours_bf16),
            "bf16_tensor_cores": tc,
        }));
    }
    Ok(Value::Array(rows))
}

/// Samples/s of `steps` training steps (after 5 unmeasured ones) on `backend`.
fn train_rate<B: Backend>(
    backend: B,
    data: &Dataset,
    layers: &[usize],
    batch: usize,
    seconds: f64,
) -> Result<f64, String> {
    let mut spec = TrainSpec::new(layers.to_vec());
    spec.batch_size = batch;
    spec.epochs = u32::MAX / 2;
    let mut t = Trainer::new(backend, spec, data).map_err(|e| e.to_string())?;
    let mut quiet = |_: &crate::train::TrainEvent| {};
    for _ in 0..5 {
        t.step(&mut quiet).map_err(|e| e.to_string())?;
    }
    t.backend().synchronize().map_err(|e| e.to_string())?;
    let start = Instant::now();
    let mut steps = 0u64;
    while start.elapsed().as_secs_f64() < seconds {
        t.step(&mut quiet).map_err(|e| e.to_string())?;
        steps += 1;
    }
    t.backend().synchronize().map_err(|e| e.to_string())?;
    Ok(steps as f64 * batch as f64 / start.elapsed().as_secs_f64())
}

/// Training samples/s on the GPU and on the CPU backend for one data set and model.
pub fn training_bench(
    dev: &std::sync::Arc<CudaDevice>,
    name: &str,
    data: &Dataset,
    layers: &[usize],
    batch: usize,
    seconds: f64,
) -> Result<Value, String> {
    let g = dev
        .lane_backend(StreamPriority::Normal)
        .map_err(|e| e.to_string())?;
    let gpu = train_rate(g, data, layers, batch, seconds)?;
    let cpu_backend =
        CpuBackend::new(crate::device::cpu::available_cores()).map_err(|e| e.to_string())?;
    let cpu = train_rate(cpu_backend, data, layers, batch, seconds)?;
    Ok(json!({
        "data": name,
        "layers": crate::model::format_layers(layers),
        "batch": batch,
        "gpu_samples_per_s": gpu,
        "cpu_samples_per_s": cpu,
        "speedup": gpu / cpu,
    }))
}

/// Two lanes busy with GEMMs for `seconds` at CTA budgets from shares 0.25 and 0.75.
pub fn lanes_bench(
    dev: &std::sync::Arc<CudaDevice>,
    n: usize,
    seconds: f64,
) -> Result<Value, String> {
    let shares = [0.25, 0.75];
    let results: Vec<Result<u64, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = shares
            .iter()
            .map(|&share| {
                s.spawn(move || -> Result<u64, String> {
                    let e = |e: crate::device::DeviceError| e.to_string();
                    let g = dev.lane_backend(StreamPriority::Normal).map_err(e)?;
                    g.set_workers(((share * g.max_workers() as f64).ceil() as usize).max(1));
                    let mut rng = Rng::new(9);
                    let a = g.upload(&random(&mut rng, n * n)).map_err(e)?;
                    let b = g.upload(&random(&mut rng, n * n)).map_err(e)?;
                    let mut c = g.alloc(n * n).map_err(e)?;
                    let start = Instant::now();
                    let mut done = 0u64;
                    while start.elapsed().as_secs_f64() < seconds {
                        g.gemm(Gemm::new(n, n, n), &a, &b, &mut c).map_err(e)?;
                        g.synchronize().map_err(e)?;
                        done += 1;
                    }
                    Ok(done)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("lane thread panicked".into()))
            })
            .collect()
    });
    let a = results[0].clone()?;
    let b = results[1].clone()?;
    let total = (a + b).max(1) as f64;
    Ok(json!({
        "gemm_n": n,
        "seconds": seconds,
        "shares": shares,
        "gemms": [a, b],
        "throughput_fractions": [a as f64 / total, b as f64 / total],
        "ratio_high_to_low": b as f64 / a.max(1) as f64,
    }))
}

/// p99 (ms) of batches of `batch` rows through `layers` issued every `gap`, for `seconds`.
fn serve_p99(
    g: &CudaBackend,
    layers: &[usize],
    batch: usize,
    gap: Duration,
    seconds: f64,
) -> Result<(f64, f64, usize), String> {
    let e = |e: crate::device::DeviceError| e.to_string();
    let model = Mlp::init(g, layers, 1).map_err(|e| e.to_string())?;
    let mut ws = Workspace::new(g, layers, batch, false).map_err(|e| e.to_string())?;
    let mut rng = Rng::new(2);
    let x = g.upload(&random(&mut rng, batch * layers[0])).map_err(e)?;
    let mut out = vec![0f32; batch * layers[layers.len() - 1]];
    let mut lat = Vec::new();
    let start = Instant::now();
    let mut next = start;
    while start.elapsed().as_secs_f64() < seconds {
        next += gap;
        if let Some(w) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(w);
        }
        let t0 = Instant::now();
        model
            .predict(g, &mut ws, &x, batch)
            .map_err(|e| e.to_string())?;
        g.read(ws.output(), &mut out).map_err(e)?;
        lat.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    lat.sort_by(f64::total_cmp);
    let q = |p: f64| lat[((p * lat.len() as f64).ceil() as usize).clamp(1, lat.len()) - 1];
    Ok((q(0.99), q(0.5), lat.len()))
}

/// Inference p99 alone, beside a training lane at the lowest priority, and beside one at the
/// same priority.
pub fn inference_bench(dev: &std::sync::Arc<CudaDevice>, seconds: f64) -> Result<Value, String> {
    let layers = [784usize, 1024, 1024, 10];
    let batch = 8;
    let gap = Duration::from_millis(2);
    let svc = dev
        .lane_backend(StreamPriority::Highest)
        .map_err(|e| e.to_string())?;
    let alone = serve_p99(&svc, &layers, batch, gap, seconds)?;
    let mut runs =
        vec![json!({"case": "alone", "p99_ms": alone.0, "p50_ms": alone.1, "batches": alone.2})];
    for (case, prio) in [
        (
            "beside training, training at the lowest priority",
            StreamPriority::Lowest,
        ),
        ("beside training, same priority", StreamPriority::Highest),
    ] {
        let stop = std::sync::atomic::AtomicBool::new(false);
        let r = std::thread::scope(|s| {
            let trainer = s.spawn(|| -> Result<u64, String> {
                let g = dev.lane_backend(prio).map_err(|e| e.to_string())?;
                let data = crate::data::load(
                    "synthetic:blobs:size=100000,features=784,classes=10",
                    &Default::default(),
                )
                .map_err(|e| e.to_string())?;
                let mut spec = TrainSpec::new(vec![784, 4096, 4096, 10]);
                spec.batch_size = 1024;
                spec.epochs = u32::MAX / 2;
                let mut t = Trainer::new(g, spec, &data).map_err(|e| e.to_string())?;
                let mut quiet = |_: &crate::train::TrainEvent| {};
                let mut steps = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    t.step(&mut quiet).map_err(|e| e.to_string())?;
                    steps += 1;
                }
                Ok(steps)
            });
            std::thread::sleep(Duration::from_secs(2));
            let r = serve_p99(&svc, &layers, batch, gap, seconds);
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            let steps = trainer
                .join()
                .unwrap_or_else(|_| Err("trainer panicked".into()));
            r.and_then(|r| steps.map(|s| (r, s)))
        })?;
        let ((p99, p50, n), steps) = r;
        runs.push(json!({
            "case": case,
            "p99_ms": p99,
            "p50_ms": p50,
            "batches": n,
            "training_steps": steps,
            "p99_vs_alone": p99 / alone.0,
        }));
    }
    Ok(json!({"layers": "784,1024,1024,10", "batch": batch, "interval_ms": 2, "runs": runs}))
}

/// What to run.
#[derive(Debug, Clone)]
pub struct GpuCheckOptions {
    /// GPU ordinal.
    pub gpu: usize,
    /// The digits CSV for the small training run, if present.
    pub digits: Option<std::path::PathBuf>,
    /// Shorter runs and GEMMs up to 4096³ only.
    pub quick: bool,
    /// Where NVRTC output is cached.
    pub cache_dir: Option<std::path::PathBuf>,
}

/// Runs every section in turn and returns the whole report. A section that fails records its
/// error and the next one runs.
pub fn run(opts: &GpuCheckOptions, progress: &mut dyn FnMut(&str)) -> Value {
    let mut report = serde_json::Map::new();
    report.insert("setpoint".into(), json!(crate::VERSION));
    let dev = match CudaDevice::open(opts.gpu, opts.cache_dir.as_deref(), None) {
        Ok(d) => d,
        Err(e) => {
            report.insert(
                "error".into(),
                json!(format!("cannot open GPU {}: {e}", opts.gpu)),
            );
            return Value::Object(report);
        }
    };
    report.insert(
        "device".into(),
        json!({"info": dev.info(), "max_ctas": dev.max_ctas()}),
    );
    // nvidia-smi beside the whole run, aligned with our NVML samples, one phase per section.
    let mut cross = match super::smi::CrossCheck::start(100) {
        Ok(c) => Some(c),
        Err(e) => {
            report.insert("nvidia_smi".into(), json!({ "error": e }));
            None
        }
    };
    let mut section = |name: &str, f: &mut dyn FnMut() -> Result<Value, String>| {
        if let Some(c) = cross.as_mut() {
            c.begin_phase(name);
        }
        progress(&format!("{name} ..."));
        let started = Instant::now();
        let v = f().unwrap_or_else(|e| json!({ "error": e }));
        progress(&format!("{name}: {:.1} s", started.elapsed().as_secs_f64()));
        report.insert(name.to_string(), v);
    };
    section("kernels", &mut || {
        let g = dev
            .lane_backend(StreamPriority::Normal)
            .map_err(|e| e.to_string())?;
        let checks = kernel_checks(&g)?;
        let failed = checks.iter().filter(|c| !c.pass).count();
        Ok(json!({"checks": checks, "failed": failed}))
    });
    let sizes: &[usize] = if opts.quick {
        &[1024, 2048, 4096]
    } else {
        &[1024, 2048, 4096, 8192]
    };
    section("gemm", &mut || {
        let g = dev
            .lane_backend(StreamPriority::Normal)
            .map_err(|e| e.to_string())?;
        gemm_bench(&g, sizes, if opts.quick { 3 } else { 7 })
    });
    let secs = if opts.quick { 3.0 } else { 8.0 };
    section("training", &mut || {
        let mut runs = Vec::new();
        if let Some(path) = &opts.digits {
            let spec = path.display().to_string();
            let data = crate::data::load(&spec, &Default::default()).map_err(|e| e.to_string())?;
            runs.push(training_bench(
                &dev,
                "digits",
                &data,
                &[64, 128, 10],
                64,
                secs,
            )?);
        }
        let data = crate::data::load(
            "synthetic:blobs:size=200000,features=784,classes=10",
            &Default::default(),
        )
        .map_err(|e| e.to_string())?;
        runs.push(training_bench(
            &dev,
            "synthetic:blobs:size=200000,features=784",
            &data,
            &[784, 2048, 2048, 10],
            512,
            secs,
        )?);
        Ok(Value::Array(runs))
    });
    section("lanes", &mut || lanes_bench(&dev, 2048, secs));
    // The same two lanes with shares as SM partitions (device.share_mechanism = "green").
    section("lanes_green", &mut || {
        let green = CudaDevice::open_with(opts.gpu, opts.cache_dir.as_deref(), None, true)
            .map_err(|e| e.to_string())?;
        let mut v = lanes_bench(&green, 2048, secs)?;
        v["green_groups_sms"] = json!(green.green_groups());
        Ok(v)
    });
    section("inference", &mut || inference_bench(&dev, secs));
    if let Some(c) = cross.take() {
        let r = c.finish();
        report.insert("nvidia_smi_text".into(), json!(r.correlation.render_text()));
        report.insert("nvidia_smi".into(), json!(r));
    }
    Value::Object(report)
}
