//! The CUDA backend on a GPU: every kernel against the CPU backend (the same checks
//! `setpoint gpu-check --section kernels` records), stream priorities and the device-memory
//! limit. Without a usable GPU every test prints that it was skipped and why, unless
//! `SETPOINT_REQUIRE_GPU=1` (set it on a GPU host), where that is a failure; the kernels'
//! logic is still checked on the CPU by `tests/kernels_emulated.rs`.

use setpoint::device::Backend;
use setpoint::device::cuda::{CudaDevice, StreamPriority};

#[path = "support/gpu.rs"]
mod gpu;
use gpu::have_gpu;

fn cache_dir(tag: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("setpoint-cuda-{tag}-{}", std::process::id()))
}

#[test]
fn every_kernel_matches_the_cpu_backend() {
    if !have_gpu() {
        return;
    }
    let dev = CudaDevice::open(0, Some(&cache_dir("kernels")), None).unwrap();
    let g = dev.lane_backend(StreamPriority::Normal).unwrap();
    let checks = setpoint::bench::gpu::kernels::kernel_checks(&dev, &g, false).unwrap();
    let failed: Vec<_> = checks.iter().filter(|c| !c.pass).collect();
    assert!(failed.is_empty(), "{failed:#?}");
    assert!(checks.len() > 50, "only {} checks ran", checks.len());
}

#[test]
fn lanes_get_streams_at_the_ends_of_the_priority_range() {
    if !have_gpu() {
        return;
    }
    let dev = CudaDevice::open(0, Some(&cache_dir("prio")), None).unwrap();
    let (least, greatest) = dev.info().priority_range;
    let hi = dev.lane_backend(StreamPriority::Highest).unwrap();
    let lo = dev.lane_backend(StreamPriority::Lowest).unwrap();
    assert_eq!(hi.priority(), greatest);
    assert_eq!(lo.priority(), least);
    // A share is a CTA budget, clamped to what the device holds.
    hi.set_workers(usize::MAX);
    assert_eq!(hi.workers(), dev.max_ctas());
    hi.set_workers(0);
    assert_eq!(hi.workers(), 1);
}

#[test]
fn the_memory_limit_is_an_error_not_a_crash() {
    if !have_gpu() {
        return;
    }
    let dev = CudaDevice::open(0, Some(&cache_dir("mem")), Some(64 << 20)).unwrap();
    let g = dev.lane_backend(StreamPriority::Lowest).unwrap();
    let a = g.alloc(8 << 20).unwrap(); // 32 MiB
    let err = g.alloc(16 << 20).unwrap_err(); // 64 MiB more
    assert!(err.to_string().contains("memory limit"), "{err}");
    drop(a);
    assert_eq!(dev.memory_used(), 0);
    g.alloc(16 << 20).unwrap();
}

/// A layer's fused forward step (the bias and ReLU in the GEMM's store, on the launch that
/// ends each tile's k range) gives what the GPU's own GEMM then bias_act give, bit for bit,
/// and the CPU backend's within rounding; in f32 and bf16, with k cut into several launches
/// (a lane at the lowest priority) and in one.
#[test]
fn the_fused_layer_step_answers_as_gemm_then_bias_act() {
    use setpoint::device::{Activation, Gemm, Precision};
    if !have_gpu() {
        return;
    }
    let dev = CudaDevice::open(0, Some(&cache_dir("fused")), None).unwrap();
    let mut rng = setpoint::util::rng::Rng::new(90);
    let mut data =
        |n: usize| -> Vec<f32> { (0..n).map(|_| rng.uniform(-1.0, 1.0) as f32).collect() };
    for prio in [StreamPriority::Lowest, StreamPriority::Highest] {
        let g = dev.lane_backend(prio).unwrap();
        for precision in [Precision::F32, Precision::Bf16] {
            g.set_precision(precision);
            for (m, n, k, act) in [
                (8, 10, 784, Activation::Identity),
                (130, 70, 600, Activation::Relu),
                (256, 512, 3000, Activation::Relu),
            ] {
                let what = format!("{m}x{n}x{k} {act:?} {precision:?} {prio:?}");
                let shape = Gemm::new(m, n, k);
                let (a, b, bias) = (data(m * k), data(k * n), data(n));
                let (ga, gb, gbias) = (
                    g.upload(&a).unwrap(),
                    g.upload(&b).unwrap(),
                    g.upload(&bias).unwrap(),
                );
                let mut fused = g.alloc(m * n).unwrap();
                g.gemm_bias_act(shape, &ga, &gb, &mut fused, &gbias, act)
                    .unwrap();
                let mut two = g.alloc(m * n).unwrap();
                g.gemm(shape, &ga, &gb, &mut two).unwrap();
                g.bias_act(&mut two, &gbias, m, n, act).unwrap();
                let (mut got, mut want_gpu) = (vec![0.0; m * n], vec![0.0; m * n]);
                g.read(&fused, &mut got).unwrap();
                g.read(&two, &mut want_gpu).unwrap();
                let same = got
                    .iter()
                    .zip(&want_gpu)
                    .all(|(x, y)| x.to_bits() == y.to_bits());
                assert!(
                    same,
                    "{what}: fused differs from the GPU's gemm then bias_act"
                );
                // The CPU on the operands the GPU multiplied (rounded to bf16 in bf16).
                let bf16 = precision == Precision::Bf16;
                let want = cpu_reference(shape, (&a, &b, &bias), act, bf16);
                let worst = worst_difference(&got, &want);
                assert!(worst <= 1e-5 * k as f32, "{what}: off the CPU by {worst}");
            }
        }
    }
}

/// `gemm_bf16_wgmma` launched by the backend (a device opened with it, the tensor maps
/// encoded per launch, 133,120 bytes of dynamic shared memory): the products the choice
/// gives it, in every transposition the TMA takes, answer as the CPU on the same bf16
/// operands, with the fused bias and ReLU; k cut into several launches (a lane at the
/// lowest priority) and in one (the highest). Only on compute capability 9.0.
#[test]
fn gemm_bf16_wgmma_through_the_backend_matches_the_cpu() {
    use setpoint::device::cuda::choice::choose_gemm_at;
    use setpoint::device::cuda::{Kernel, OpenOptions};
    use setpoint::device::{Activation, Gemm, Precision};
    if !have_gpu() {
        return;
    }
    let opts = OpenOptions {
        wgmma: true,
        ..OpenOptions::default()
    };
    let dev = CudaDevice::open_with(0, Some(&cache_dir("wgmma")), None, opts).unwrap();
    if dev.info().compute_capability != (9, 0) {
        eprintln!(
            "skipped: gemm_bf16_wgmma runs on compute capability 9.0 only, this GPU is {:?}",
            dev.info().compute_capability
        );
        return;
    }
    assert!(dev.wgmma(), "the sm_90a module did not load (see the log)");
    let sms = dev.info().sm_count as usize;
    let mut rng = setpoint::util::rng::Rng::new(91);
    let mut data =
        |n: usize| -> Vec<f32> { (0..n).map(|_| rng.uniform(-1.0, 1.0) as f32).collect() };
    for prio in [StreamPriority::Lowest, StreamPriority::Highest] {
        let g = dev.lane_backend(prio).unwrap();
        g.set_precision(Precision::Bf16);
        for (m, n, k, ta, tb) in [
            (2048, 2048, 320, false, false),
            (2048, 2048, 1100, false, true),
            (1536, 2560, 200, true, false),
            (2048, 1544, 136, true, true),
        ] {
            let mut shape = Gemm::new(m, n, k);
            shape.trans_a = ta;
            shape.trans_b = tb;
            let what = format!("{m}x{n}x{k} ta={ta} tb={tb} {prio:?}");
            let chosen = choose_gemm_at(&shape, true, sms, true, (0, 0));
            assert_eq!(
                chosen.kernel,
                Kernel::GemmBf16Wgmma,
                "{what}: {}",
                chosen.reason
            );
            let (a, b, bias) = (data(m * k), data(k * n), data(n));
            let (ga, gb, gbias) = (
                g.upload(&a).unwrap(),
                g.upload(&b).unwrap(),
                g.upload(&bias).unwrap(),
            );
            let mut got = g.alloc(m * n).unwrap();
            g.gemm_bias_act(shape, &ga, &gb, &mut got, &gbias, Activation::Relu)
                .unwrap();
            let mut got_v = vec![0.0; m * n];
            g.read(&got, &mut got_v).unwrap();
            let want = cpu_reference(shape, (&a, &b, &bias), Activation::Relu, true);
            let worst = worst_difference(&got_v, &want);
            assert!(worst <= 1e-5 * k as f32, "{what}: off the CPU by {worst}");
        }
    }
}

/// The CPU backend's `gemm_bias_act` on `a` and `b` (rounded to bf16 first when `bf16`, as
/// the GPU multiplies them) and `bias`: what a GPU's fused product is compared with.
fn cpu_reference(
    shape: setpoint::device::Gemm,
    (a, b, bias): (&[f32], &[f32], &[f32]),
    act: setpoint::device::Activation,
    bf16: bool,
) -> Vec<f32> {
    let cpu = setpoint::device::CpuBackend::single();
    let round = |v: &[f32]| -> Vec<f32> {
        if bf16 {
            v.iter()
                .map(|&x| half::bf16::from_f32(x).to_f32())
                .collect()
        } else {
            v.to_vec()
        }
    };
    let mut want = cpu.alloc(shape.m * shape.n).unwrap();
    let (ca, cb, cbias) = (
        cpu.upload(&round(a)).unwrap(),
        cpu.upload(&round(b)).unwrap(),
        cpu.upload(bias).unwrap(),
    );
    cpu.gemm_bias_act(shape, &ca, &cb, &mut want, &cbias, act)
        .unwrap();
    let mut out = vec![0.0; shape.m * shape.n];
    cpu.read(&want, &mut out).unwrap();
    out
}

/// The largest absolute difference between `x` and `y`, element by element.
fn worst_difference(x: &[f32], y: &[f32]) -> f32 {
    x.iter()
        .zip(y)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max)
}
