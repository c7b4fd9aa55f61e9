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

/// A bf16 lane keeps a weight's bf16 copy between products (src/device/cuda/shadow.rs):
/// every product answers as the CPU on the weights as they are now, through the reads that
/// convert into the scratch, fill the copy and reuse it, and after each way of writing the
/// weights (an upload, the optimiser, a fill). A second lane reading the same weights does
/// not touch the first one's copy.
#[test]
fn a_weights_bf16_copy_follows_every_write() {
    use setpoint::device::{Activation, AdamParams, Gemm, Precision};
    if !have_gpu() {
        return;
    }
    let dev = CudaDevice::open(0, Some(&cache_dir("shadow")), None).unwrap();
    let g = dev.lane_backend(StreamPriority::Highest).unwrap();
    let other = dev.lane_backend(StreamPriority::Lowest).unwrap();
    for lane in [&g, &other] {
        lane.set_precision(Precision::Bf16);
    }
    let (m, n, k) = (8, 96, 200);
    let shape = Gemm::new(m, n, k);
    let mut rng = setpoint::util::rng::Rng::new(92);
    let mut data =
        |n: usize| -> Vec<f32> { (0..n).map(|_| rng.uniform(-1.0, 1.0) as f32).collect() };
    let (x, zero) = (data(m * k), vec![0.0; n]);
    let (gx, gzero) = (g.upload(&x).unwrap(), g.upload(&zero).unwrap());
    let mut w = g.upload(&data(k * n)).unwrap();
    let check = |lane: &setpoint::device::cuda::CudaBackend,
                 w: &setpoint::device::cuda::CudaBuf,
                 what: &str| {
        let mut out = lane.alloc(m * n).unwrap();
        lane.gemm_bias_act(shape, &gx, w, &mut out, &gzero, Activation::Identity)
            .unwrap();
        let (mut got, mut now) = (vec![0.0; m * n], vec![0.0; k * n]);
        lane.read(&out, &mut got).unwrap();
        lane.read(w, &mut now).unwrap();
        let want = cpu_reference(shape, (&x, &now, &zero), Activation::Identity, true);
        let worst = worst_difference(&got, &want);
        assert!(worst <= 1e-5 * k as f32, "{what}: off the CPU by {worst}");
    };
    let before = dev.memory_used();
    for read in 0..4 {
        check(&g, &w, &format!("read {read}"));
    }
    // The lane's scratch holds one bf16 product's worth of the weights; a copy kept beside
    // them is as much again.
    assert!(
        dev.memory_used() >= before + 2 * (k * n * 2) as u64,
        "no bf16 copy was kept: {} bytes before, {} after",
        before,
        dev.memory_used()
    );
    g.write(&mut w, &data(k * n)).unwrap();
    check(&g, &w, "after an upload");
    check(&g, &w, "after an upload, again");
    let grad = g.upload(&data(k * n)).unwrap();
    let (mut m1, mut v1) = (g.alloc(k * n).unwrap(), g.alloc(k * n).unwrap());
    let hp = AdamParams {
        lr: 0.05,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.0,
        t: 1,
    };
    g.adam_step(&mut w, &grad, &mut m1, &mut v1, k * n, hp)
        .unwrap();
    check(&g, &w, "after an Adam step");
    check(&other, &w, "another lane");
    g.fill(&mut w, k * n, 0.375).unwrap();
    check(&g, &w, "after a fill");
    check(&other, &w, "another lane after a fill");
}

/// A bf16 lane's GEMM stores the bf16 copy of the activations it writes once the next
/// layer is seen reading them (src/device/cuda/shadow.rs, the epilogue's `c_bf16`): over
/// several batches, the second layer answers as the CPU on the first layer's output as the
/// GPU stored it in f32, and after that output is rewritten in place (as the ReLU's
/// derivative rewrites a gradient) the second layer reads the new values.
#[test]
fn a_layers_stored_bf16_activations_are_what_the_next_layer_reads() {
    use setpoint::device::{Activation, Gemm, Precision};
    if !have_gpu() {
        return;
    }
    let dev = CudaDevice::open(0, Some(&cache_dir("store")), None).unwrap();
    let mut rng = setpoint::util::rng::Rng::new(93);
    let mut data =
        |n: usize| -> Vec<f32> { (0..n).map(|_| rng.uniform(-1.0, 1.0) as f32).collect() };
    for prio in [StreamPriority::Lowest, StreamPriority::Highest] {
        let g = dev.lane_backend(prio).unwrap();
        g.set_precision(Precision::Bf16);
        let (m, k, h_n, n) = (16, 300, 200, 64);
        let (l1, l2) = (Gemm::new(m, h_n, k), Gemm::new(m, n, h_n));
        let (w1, b1, w2, zero) = (data(k * h_n), data(h_n), data(h_n * n), vec![0.0; n]);
        let (gw1, gb1, gw2, gzero) = (
            g.upload(&w1).unwrap(),
            g.upload(&b1).unwrap(),
            g.upload(&w2).unwrap(),
            g.upload(&zero).unwrap(),
        );
        let mut h = g.alloc(m * h_n).unwrap();
        let mut y = g.alloc(m * n).unwrap();
        let second_layer = |h: &setpoint::device::cuda::CudaBuf,
                            y: &mut setpoint::device::cuda::CudaBuf,
                            what: &str| {
            g.gemm_bias_act(l2, h, &gw2, y, &gzero, Activation::Identity)
                .unwrap();
            let (mut hv, mut got) = (vec![0.0; m * h_n], vec![0.0; m * n]);
            g.read(h, &mut hv).unwrap();
            g.read(y, &mut got).unwrap();
            let want = cpu_reference(l2, (&hv, &w2, &zero), Activation::Identity, true);
            let worst = worst_difference(&got, &want);
            assert!(
                worst <= 1e-5 * h_n as f32,
                "{prio:?} {what}: off by {worst}"
            );
        };
        for batch in 0..4 {
            let x = g.upload(&data(m * k)).unwrap();
            g.gemm_bias_act(l1, &x, &gw1, &mut h, &gb1, Activation::Relu)
                .unwrap();
            second_layer(&h, &mut y, &format!("batch {batch}"));
        }
        let act = g.upload(&data(m * h_n)).unwrap();
        g.relu_grad(&mut h, &act, m * h_n).unwrap();
        second_layer(&h, &mut y, "after h was rewritten in place");
    }
}

/// GPU 0 opened twice: with CUDA Graphs (`device.cuda_graphs`) and without.
fn graph_and_plain_devices(tag: &str) -> [std::sync::Arc<CudaDevice>; 2] {
    use setpoint::device::cuda::OpenOptions;
    let opts = OpenOptions {
        graphs: true,
        ..OpenOptions::default()
    };
    let graphs = CudaDevice::open_with(0, Some(&cache_dir(tag)), None, opts).unwrap();
    let plain = CudaDevice::open(0, Some(&cache_dir(&format!("{tag}-plain"))), None).unwrap();
    [graphs, plain]
}

/// A new lane at the highest priority on each of `devs`, at `precision`.
fn lanes_on(
    devs: &[std::sync::Arc<CudaDevice>; 2],
    precision: setpoint::device::Precision,
) -> [setpoint::device::cuda::CudaBackend; 2] {
    devs.each_ref().map(|dev| {
        let lane = dev.lane_backend(StreamPriority::Highest).unwrap();
        lane.set_precision(precision);
        lane
    })
}

/// Inference batches queued as CUDA Graphs answer as the same batches launched kernel by
/// kernel, bit for bit, in f32 and bf16, with the batch size changing between them; each
/// size seen twice is built into a graph and replayed after.
#[test]
fn graphed_batches_answer_as_plain_launches() {
    use setpoint::device::Precision;
    use setpoint::model::{Mlp, Workspace};
    if !have_gpu() {
        return;
    }
    let layers = [784, 512, 256, 10];
    let sizes = [1, 8, 1, 8, 8, 64, 1, 64, 8, 3];
    let devs = graph_and_plain_devices("graph-infer");
    for precision in [Precision::F32, Precision::Bf16] {
        let lanes = lanes_on(&devs, precision);
        let answers = lanes.each_ref().map(|lane| {
            let mlp = Mlp::init(lane, &layers, 7).unwrap();
            let mut ws = Workspace::new(lane, &layers, 64, false).unwrap();
            let mut x = lane.alloc(64 * 784).unwrap();
            let mut rng = setpoint::util::rng::Rng::new(5);
            let mut got = Vec::new();
            for rows in sizes {
                let input: Vec<f32> = (0..rows * 784)
                    .map(|_| rng.uniform(-1.0, 1.0) as f32)
                    .collect();
                lane.write(&mut x, &input).unwrap();
                mlp.predict(lane, &mut ws, &x, rows).unwrap();
                let mut out = vec![0.0; rows * 10];
                lane.read(ws.output(), &mut out).unwrap();
                got.extend(out.iter().map(|v| v.to_bits()));
            }
            got
        });
        assert!(
            answers[0] == answers[1],
            "{precision:?}: graphs changed the answers"
        );
        let counts = lanes[0].graph_counts();
        eprintln!("{precision:?}: {counts:?}");
        if precision == Precision::F32 {
            // Sizes 1, 8 and 64 are built on their second batch; 1 and 8 are replayed after.
            assert_eq!((counts.built, counts.replayed), (3, 3), "{counts:?}");
        } else {
            // The first batches convert the weights (into the scratch, then into a copy of
            // their own), so their kernels differ from the later batches'.
            assert!(counts.built >= 1 && counts.replayed >= 1, "{counts:?}");
        }
        assert_eq!(lanes[1].graph_counts().built, 0);
    }
}

/// On green-context SM partitions (a lease per unit of work, each partition's stream with its
/// graphs), a batch answers the same, bit for bit, launched plainly (its first time), built
/// into a graph (its second) and replayed (after), in f32 and bf16.
#[test]
fn graphed_batches_on_green_contexts_repeat_their_first_answer() {
    use setpoint::device::Precision;
    use setpoint::device::cuda::OpenOptions;
    use setpoint::model::{Mlp, Workspace};
    if !have_gpu() {
        return;
    }
    let opts = OpenOptions {
        green_contexts: true,
        graphs: true,
        ..OpenOptions::default()
    };
    let dev = match CudaDevice::open_with(0, Some(&cache_dir("graph-green")), None, opts) {
        Ok(dev) => dev,
        Err(why) => {
            eprintln!("skipped: green contexts do not open here ({why})");
            return;
        }
    };
    let layers = [784, 512, 256, 10];
    for precision in [Precision::F32, Precision::Bf16] {
        let lane = dev.lane_backend(StreamPriority::Highest).unwrap();
        lane.set_precision(precision);
        let mlp = Mlp::init(&lane, &layers, 11).unwrap();
        let mut ws = Workspace::new(&lane, &layers, 8, false).unwrap();
        let mut rng = setpoint::util::rng::Rng::new(12);
        let input: Vec<f32> = (0..8 * 784)
            .map(|_| rng.uniform(-1.0, 1.0) as f32)
            .collect();
        let x = lane.upload(&input).unwrap();
        let mut answers = Vec::new();
        for _ in 0..6 {
            mlp.predict(&lane, &mut ws, &x, 8).unwrap();
            let mut out = vec![0.0f32; 8 * 10];
            lane.read(ws.output(), &mut out).unwrap();
            answers.push(out.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
        }
        let counts = lane.graph_counts();
        eprintln!("{precision:?} on green contexts: {counts:?}");
        assert!(
            counts.replayed >= 1,
            "{precision:?}: never replayed: {counts:?}"
        );
        for (i, a) in answers.iter().enumerate() {
            assert!(
                *a == answers[0],
                "{precision:?}: batch {i} differs from the first"
            );
        }
    }
}

/// Training steps queued as CUDA Graphs (forward, backward and optimiser in one) end with the
/// same parameters as steps launched kernel by kernel, bit for bit: with Adam, whose bias
/// corrections change every step (graph nodes given new arguments), and with SGD; in f32 and
/// bf16, over epochs whose last batch is short.
#[test]
fn graphed_training_steps_end_where_plain_ones_do() {
    use setpoint::device::Precision;
    use setpoint::model::Optimizer;
    use setpoint::train::{TrainSpec, Trainer, default_adam, default_sgd};
    if !have_gpu() {
        return;
    }
    let data = setpoint::data::load(
        "synthetic:blobs:size=1000,classes=10,features=64",
        &Default::default(),
    )
    .unwrap();
    let devs = graph_and_plain_devices("graph-train");
    for precision in [Precision::F32, Precision::Bf16] {
        for optimizer in [
            Optimizer::Adam(default_adam(1e-3)),
            Optimizer::Sgd(default_sgd()),
        ] {
            let mut run = TrainSpec::new(vec![64, 256, 128, 10]);
            run.optimizer = optimizer;
            run.batch_size = 48;
            run.epochs = 3;
            run.precision = Some(precision);
            let lanes = lanes_on(&devs, precision);
            let mut counts = None;
            let params = lanes.map(|lane| {
                let mut t = Trainer::new(lane, run.clone(), &data).unwrap();
                t.run(&mut |_| {}).unwrap();
                counts.get_or_insert(t.backend().graph_counts());
                t.params().unwrap()
            });
            let what = format!("{precision:?} {optimizer:?}");
            assert!(
                params[0] == params[1],
                "{what}: graphs changed the training"
            );
            let counts = counts.unwrap();
            eprintln!("{what}: {counts:?}");
            assert!(counts.built >= 1, "{what}: {counts:?}");
            assert!(counts.replayed >= 20, "{what}: {counts:?}");
        }
    }
}

/// A repeated body that reads a result half-way (its first half then queued plainly) or
/// fails half-way (what it queued before failing still runs) leaves what the same work
/// leaves without graphs.
#[test]
fn a_body_broken_by_a_read_or_an_error_still_runs_all_it_asked_for() {
    use setpoint::device::{DeviceError, Gemm, Precision};
    if !have_gpu() {
        return;
    }
    let (m, n, k) = (16, 64, 96);
    let mut rng = setpoint::util::rng::Rng::new(3);
    let a: Vec<f32> = (0..m * k).map(|_| rng.uniform(-1.0, 1.0) as f32).collect();
    let b: Vec<f32> = (0..k * n).map(|_| rng.uniform(-1.0, 1.0) as f32).collect();
    let lanes = lanes_on(&graph_and_plain_devices("graph-broken"), Precision::F32);
    let results = lanes.each_ref().map(|lane| {
        let (ga, gb) = (lane.upload(&a).unwrap(), lane.upload(&b).unwrap());
        let (mut c1, mut c2) = (lane.alloc(m * n).unwrap(), lane.alloc(m * n).unwrap());
        let mut half = vec![0.0; m * n];
        let mut seen = Vec::new();
        for round in 0..3 {
            lane.repeated(|| -> Result<(), DeviceError> {
                lane.gemm(Gemm::new(m, n, k), &ga, &gb, &mut c1)?;
                lane.gemm(Gemm::new(m, n, k).scaled(2.0, 1.0), &ga, &gb, &mut c1)?;
                lane.read(&c1, &mut half)?;
                lane.gemm(Gemm::new(m, n, k).scaled(1.0, 1.0), &ga, &gb, &mut c2)?;
                lane.gemm(Gemm::new(m, n, k), &ga, &gb, &mut c2)
            })
            .unwrap();
            seen.extend(half.iter().map(|v| v.to_bits()));
            let failed = lane.repeated(|| -> Result<(), DeviceError> {
                lane.gemm(Gemm::new(m, n, k).scaled(1.0, 1.0), &ga, &gb, &mut c2)?;
                lane.gemm(Gemm::new(m, n, k).scaled(1.0, 1.0), &ga, &gb, &mut c2)?;
                // The wrong shape for `a`: refused before anything is launched.
                lane.gemm(Gemm::new(m + 1, n, k), &ga, &gb, &mut c1)
            });
            assert!(failed.is_err(), "round {round}");
            let mut out = vec![0.0; m * n];
            lane.read(&c2, &mut out).unwrap();
            seen.extend(out.iter().map(|v| v.to_bits()));
        }
        seen
    });
    assert!(
        results[0] == results[1],
        "a broken body lost or reordered work"
    );
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
