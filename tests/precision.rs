//! Mixed precision on the CPU backend, which emulates bf16: the GEMM rounds its operands as
//! the GPU's conversion does and accumulates in f32; training in bf16 learns the digits as
//! well as f32 does; checkpoints stay f32 and move between precisions; the spec's key is
//! checked like every other.

use setpoint::data::{self, Dataset, LoadOptions};
use setpoint::device::precision::round_bf16;
use setpoint::device::{Backend, CpuBackend, Gemm, Precision, Work};
use setpoint::train::{TrainSpec, Trainer};
use setpoint::util::rng::Rng;

fn digits() -> Dataset {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/data/digits.csv.gz");
    data::load(path, &LoadOptions::default()).expect("digits data set")
}

/// `C = op(A)·op(B)` on `be` at `precision`.
fn product(be: &CpuBackend, precision: Precision, g: Gemm, a: &[f32], b: &[f32]) -> Vec<f32> {
    be.set_precision(precision);
    let (ab, bb) = (be.upload(a).unwrap(), be.upload(b).unwrap());
    let mut c = be.alloc(g.m * g.n).unwrap();
    be.gemm(g, &ab, &bb, &mut c).unwrap();
    let mut out = vec![0.0; g.m * g.n];
    be.read(&c, &mut out).unwrap();
    out
}

#[test]
fn a_bf16_gemm_multiplies_the_rounded_operands_in_f32() {
    let be = CpuBackend::single();
    let mut rng = Rng::new(11);
    let (m, n, k) = (33, 17, 129);
    let a: Vec<f32> = (0..m * k).map(|_| rng.normal() as f32).collect();
    let b: Vec<f32> = (0..k * n).map(|_| rng.normal() as f32).collect();
    for g in [Gemm::new(m, n, k), Gemm::new(m, n, k).ta().tb()] {
        let bf16 = product(&be, Precision::Bf16, g, &a, &b);
        let ra: Vec<f32> = a.iter().map(|&x| round_bf16(x)).collect();
        let rb: Vec<f32> = b.iter().map(|&x| round_bf16(x)).collect();
        // The same kernel on operands rounded beforehand: bit for bit the same.
        assert_eq!(bf16, product(&be, Precision::F32, g, &ra, &rb));
        // And not the f32 product: the rounding happened.
        let f32 = product(&be, Precision::F32, g, &a, &b);
        assert_ne!(bf16, f32);
        // Within what 8 bits of mantissa allow: each product off by at most about 2^-8 of
        // its size, so the sum by 2^-8 of the sum of magnitudes.
        for i in 0..m {
            for j in 0..n {
                let av = |r: usize| {
                    if g.trans_a {
                        a[r * m + i]
                    } else {
                        a[i * k + r]
                    }
                };
                let bw = |r: usize| {
                    if g.trans_b {
                        b[j * k + r]
                    } else {
                        b[r * n + j]
                    }
                };
                let mag: f64 = (0..k).map(|r| f64::from((av(r) * bw(r)).abs())).sum();
                let err = f64::from((bf16[i * n + j] - f32[i * n + j]).abs());
                assert!(err <= mag / 128.0, "({i}, {j}): {err} against {mag}");
            }
        }
    }
    assert_eq!(be.precision(), Precision::F32);
    for work in [Work::Training, Work::Serving] {
        assert_eq!(be.default_precision(work), Precision::F32, "{work:?}");
    }
}

/// Validation accuracy and last training loss of 30 epochs on the digits at `precision`.
fn digits_run(data: &Dataset, seed: u64, precision: Option<Precision>) -> (f64, f64) {
    let mut spec = TrainSpec::new(vec![64, 128, 10]);
    spec.epochs = 30;
    spec.seed = seed;
    spec.precision = precision;
    let mut t = Trainer::new(CpuBackend::single(), spec, data).unwrap();
    let want = precision.unwrap_or(Precision::F32);
    assert_eq!(t.backend().precision(), want);
    let r = t.run(&mut |_| {}).unwrap();
    (r.val_accuracy.unwrap(), r.train_loss.unwrap())
}

#[test]
fn digits_in_bf16_match_f32_within_half_a_point() {
    let data = digits();
    let seeds = 1..=5u64;
    let mut diffs = Vec::new();
    for seed in seeds {
        let (acc32, loss32) = digits_run(&data, seed, None);
        let (acc16, loss16) = digits_run(&data, seed, Some(Precision::Bf16));
        eprintln!(
            "seed {seed}: f32 {acc32:.4} (loss {loss32:.5}), bf16 {acc16:.4} (loss {loss16:.5})"
        );
        assert_ne!(loss32, loss16, "bf16 ran as f32");
        assert!(acc16 > 0.95, "seed {seed}: bf16 reached {acc16}");
        diffs.push(acc16 - acc32);
    }
    let mean = diffs.iter().sum::<f64>() / diffs.len() as f64;
    assert!(mean.abs() <= 0.005, "bf16 minus f32, per seed: {diffs:?}");
}

#[test]
fn a_bf16_checkpoint_is_f32_and_resumes_in_either_precision() {
    let data = digits();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run.ckpt");
    let mut spec = TrainSpec::new(vec![64, 32, 10]);
    spec.epochs = 2;
    spec.precision = Some(Precision::Bf16);
    spec.checkpoint = Some(path.clone());
    let mut t = Trainer::new(CpuBackend::single(), spec.clone(), &data).unwrap();
    t.run(&mut |_| {}).unwrap();
    let master = t.params().unwrap();
    // The weights kept are the f32 master weights, not bf16 roundings of them.
    assert!(
        master.weights[0].iter().any(|&w| round_bf16(w) != w),
        "the master weights look rounded to bf16"
    );
    for precision in [Precision::F32, Precision::Bf16] {
        let ckpt = setpoint::model::checkpoint::Checkpoint::load(&path).unwrap();
        assert!(
            ckpt.params.weights[0].iter().any(|&w| round_bf16(w) != w),
            "the checkpoint's weights look rounded to bf16"
        );
        let mut again = spec.clone();
        again.epochs = 3;
        again.precision = Some(precision);
        let mut t = Trainer::resume(CpuBackend::single(), again, &data, ckpt, &path).unwrap();
        assert_eq!(t.backend().precision(), precision);
        let r = t.run(&mut |_| {}).unwrap();
        assert_eq!(r.epochs, 3);
    }
}

#[test]
fn the_precision_key_takes_bf16_or_f32() {
    let job = |p: serde_json::Value| {
        setpoint::config::parse_job_json(&serde_json::json!({
            "name": "j", "data": "synthetic:blobs", "layers": [4, 8, 3], "precision": p
        }))
    };
    assert_eq!(job("bf16".into()).unwrap().precision, Some(Precision::Bf16));
    assert_eq!(job("f32".into()).unwrap().precision, Some(Precision::F32));
    let issues = job("fp16".into()).unwrap_err();
    assert_eq!(issues.len(), 1, "{issues:?}");
    assert_eq!(issues[0].path, "precision");
    assert_eq!(
        issues[0].message,
        "must be one of \"bf16\", \"f32\", got \"fp16\""
    );
}

use crate::support::child;

#[test]
fn a_job_and_a_service_run_in_the_precision_they_ask_for() {
    let dir = tempfile::tempdir().unwrap();
    let port = child::free_port();
    let config = format!(
        "listen = \"127.0.0.1:{port}\"\nstate_dir = \"{}\"\n\n[[services]]\nname = \"half\"\n\
         layers = [8, 16, 3]\nwarmup_data = \"synthetic:blobs:size=300,classes=3,features=8\"\n\
         precision = \"bf16\"\nslo = {{ p99_ms = 50 }}\n",
        dir.path().join("state").display()
    );
    let d = child::ChildDaemon::start(&config, port, dir.path(), None);
    child::poll(std::time::Duration::from_secs(30), "the service", || {
        (d.get_json("/v2/models/half/ready").0 == 200).then_some(())
    });
    let (_, svc) = d.get_json("/v1/services/half");
    assert_eq!(svc["precision"], "bf16", "{svc}");
    let (s, v) = d.infer("half", &[0.5; 8]);
    assert_eq!(s, 200, "{v}");
    let blobs = "synthetic:blobs:size=500,classes=3,features=8";
    for (name, extra) in [("bf", &["--precision", "bf16"][..]), ("plain", &[][..])] {
        let mut args = vec!["--data", blobs, "--layers", "8,16,3", "--epochs", "3"];
        args.extend(extra);
        d.submit(name, &args);
        d.cli_expect(0, &["jobs", "wait", name]);
    }
    let (_, bf) = d.get_json("/v1/jobs/bf");
    assert_eq!(
        (&bf["precision"], &bf["spec"]["precision"]),
        (&"bf16".into(), &"bf16".into())
    );
    // Asked for nothing on the CPU: f32, and the spec says nothing was asked.
    let (_, plain) = d.get_json("/v1/jobs/plain");
    assert_eq!(plain["precision"], "f32", "{plain}");
    assert!(plain["spec"].get("precision").is_none(), "{plain}");
    // Published from a job, a service takes the option too.
    let text = d.cli_expect(
        0,
        &[
            "jobs",
            "serve",
            "plain",
            "--slo-p99-ms",
            "50",
            "--precision",
            "bf16",
        ],
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("precision") && l.ends_with("bf16")),
        "{text}"
    );
    let log = d.cli_expect(0, &["jobs", "logs", "bf"]);
    assert!(log.contains("running     from the start in bf16"), "{log}");
    let out = d.cli(&[
        "submit",
        "--name",
        "x",
        "--data",
        blobs,
        "--layers",
        "8,3",
        "--precision",
        "fp16",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        child::stderr_of(&out).contains("'fp16'"),
        "{}",
        child::stderr_of(&out)
    );
}
