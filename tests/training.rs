//! The MLP and the training runner end to end on the CPU backend: gradients against finite
//! differences, real learning on the digits data, determinism, checkpoints and resumption.

use std::path::{Path, PathBuf};

use setpoint::data::{self, Dataset, LoadOptions};
use setpoint::device::{Backend, CpuBackend, SgdParams, Width};
use setpoint::model::checkpoint::{Checkpoint, CheckpointError};
use setpoint::model::{Grads, Mlp, MlpParams, Optimizer, Workspace};
use setpoint::train::{StopReason, TrainError, TrainSpec, Trainer};
use setpoint::util::rng::Rng;

fn digits() -> Dataset {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/data/digits.csv.gz");
    data::load(path, &LoadOptions::default()).expect("digits data set")
}

fn no_events() -> impl FnMut(&setpoint::train::TrainEvent) {
    |_| {}
}

/// Mean cross-entropy of `params` on (x, labels), computed on the host in f64 from the
/// backend's logits.
fn mean_loss(be: &CpuBackend, params: &MlpParams, x: &[f32], labels: &[u32]) -> f64 {
    let rows = labels.len();
    let classes = *params.layers.last().unwrap();
    let model = Mlp::from_params(be, params).unwrap();
    let mut ws = Workspace::new(be, &params.layers, rows, false).unwrap();
    let xb = be.upload(x).unwrap();
    model.forward(be, &mut ws, &xb, rows).unwrap();
    let mut logits = vec![0.0; rows * classes];
    be.read(ws.output(), &mut logits).unwrap();
    let mut total = 0.0;
    for r in 0..rows {
        let z: Vec<f64> = logits[r * classes..(r + 1) * classes]
            .iter()
            .map(|&v| v as f64)
            .collect();
        let max = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = z.iter().map(|v| (v - max).exp()).sum::<f64>().ln() + max;
        total += lse - z[labels[r] as usize];
    }
    total / rows as f64
}

#[test]
fn gradients_match_finite_differences() {
    let be = CpuBackend::single();
    let layers = [5, 7, 6, 3];
    let params = MlpParams::init(&layers, 42).unwrap();
    let rows = 6;
    let mut rng = Rng::new(4);
    let x: Vec<f32> = (0..rows * layers[0]).map(|_| rng.normal() as f32).collect();
    let labels: Vec<u32> = (0..rows).map(|r| (r % 3) as u32).collect();

    let model = Mlp::from_params(&be, &params).unwrap();
    let mut ws = Workspace::new(&be, &layers, rows, true).unwrap();
    let mut grads = Grads::new(&be, &layers).unwrap();
    let xb = be.upload(&x).unwrap();
    let mut lb = be.alloc_labels(rows).unwrap();
    be.write_labels(&mut lb, &labels).unwrap();
    model
        .forward_backward(&be, &mut ws, &xb, &lb, rows, &mut grads)
        .unwrap();
    let analytic = grads.to_params(&be, &layers).unwrap();

    // The accumulated loss is the summed cross-entropy: it must agree with the host's.
    let (loss_sum, _) = ws.totals(&be, rows).unwrap();
    let host = mean_loss(&be, &params, &x, &labels);
    assert!((loss_sum / rows as f64 - host).abs() < 1e-5);

    let h = 1e-3f32;
    let mut checked = 0;
    let mut worst: f64 = 0.0;
    for l in 0..layers.len() - 1 {
        for which in 0..2 {
            let n = if which == 0 {
                params.weights[l].len()
            } else {
                params.biases[l].len()
            };
            for i in 0..n {
                let mut plus = params.clone();
                let mut minus = params.clone();
                let (p, m, a) = if which == 0 {
                    (
                        &mut plus.weights[l][i],
                        &mut minus.weights[l][i],
                        analytic.weights[l][i],
                    )
                } else {
                    (
                        &mut plus.biases[l][i],
                        &mut minus.biases[l][i],
                        analytic.biases[l][i],
                    )
                };
                *p += h;
                *m -= h;
                let numeric = (mean_loss(&be, &plus, &x, &labels)
                    - mean_loss(&be, &minus, &x, &labels))
                    / (2.0 * h as f64);
                let err = (numeric - a as f64).abs();
                worst = worst.max(err / (1e-3 + (a as f64).abs()));
                assert!(
                    err <= 2e-3 + 2e-2 * (a as f64).abs(),
                    "layer {l} {} {i}: analytic {a}, numeric {numeric}",
                    if which == 0 { "weight" } else { "bias" }
                );
                checked += 1;
            }
        }
    }
    assert_eq!(checked, setpoint::model::param_count(&layers));
    eprintln!("checked {checked} gradients, worst relative error {worst:.2e}");
}

#[test]
fn digits_reach_95_percent_validation_accuracy() {
    let data = digits();
    assert_eq!((data.rows(), data.features, data.classes()), (1797, 64, 10));
    let mut spec = TrainSpec::new(vec![64, 128, 10]);
    spec.epochs = 60;
    spec.target_accuracy = Some(0.95);
    let start = std::time::Instant::now();
    let mut t = Trainer::new(CpuBackend::single(), spec, &data).unwrap();
    let report = t.run(&mut no_events()).unwrap();
    let acc = report.val_accuracy.unwrap();
    eprintln!(
        "digits: {acc:.4} after {} epochs in {:.2} s",
        report.epochs,
        start.elapsed().as_secs_f64()
    );
    assert!(acc >= 0.95, "validation accuracy {acc}");
    assert_eq!(report.stop_reason.as_deref(), Some("target_reached"));
    assert!(report.epochs < 60);
    // Every epoch is recorded, losses fall overall.
    assert_eq!(report.history.len() as u32, report.epochs);
    assert!(report.history.last().unwrap().train_loss < report.history[0].train_loss / 4.0);
}

#[test]
fn sgd_learns_digits_too() {
    let data = digits();
    let mut spec = TrainSpec::new(vec![64, 64, 10]);
    spec.optimizer = Optimizer::Sgd(SgdParams {
        lr: 0.05,
        momentum: 0.9,
        weight_decay: 0.0,
    });
    spec.epochs = 40;
    spec.target_accuracy = Some(0.93);
    let mut t = Trainer::new(CpuBackend::single(), spec, &data).unwrap();
    let report = t.run(&mut no_events()).unwrap();
    assert!(report.val_accuracy.unwrap() >= 0.93, "{report:?}");
}

/// The embedded default config's demonstration job meets its own target: trained as the
/// daemon trains it (its data, model and optimiser settings), it passes its target accuracy
/// well within its epoch limit (in its first epoch, measured; three are allowed here).
#[test]
fn the_default_configs_demo_job_reaches_its_target() {
    let cfg = setpoint::config::parse(setpoint::config::DEFAULT_CONFIG).unwrap();
    let job = cfg.jobs.iter().find(|j| j.name == "demo").unwrap();
    let target = job.target_accuracy.unwrap();
    assert_eq!(job.optimizer, setpoint::config::OptimizerKind::Adam);
    assert_eq!((job.weight_decay, job.seed), (0.0, 1));
    let data = data::load(&job.data, &LoadOptions::default()).unwrap();
    let mut spec = TrainSpec::new(job.layers.clone());
    spec.optimizer = Optimizer::Adam(setpoint::train::default_adam(job.lr as f32));
    spec.batch_size = job.batch_size;
    spec.val_fraction = job.val_fraction;
    spec.seed = job.seed;
    spec.target_accuracy = Some(target);
    spec.epochs = job.epochs.min(3);
    let mut t = Trainer::new(CpuBackend::single(), spec, &data).unwrap();
    let report = t.run(&mut no_events()).unwrap();
    let acc = report.val_accuracy.unwrap();
    eprintln!("demo: {acc:.4} after {} epochs", report.epochs);
    assert_eq!(
        report.stop_reason.as_deref(),
        Some("target_reached"),
        "{report:?}"
    );
    assert!(acc >= target);
}

fn small_spec() -> TrainSpec {
    let mut spec = TrainSpec::new(vec![64, 32, 10]);
    spec.epochs = 4;
    spec.batch_size = 50; // 1437 training rows: a partial last batch every epoch
    spec
}

#[test]
fn same_seed_and_threads_give_bit_identical_runs() {
    let data = digits();
    for threads in [1, 2] {
        let run = |seed: u64| {
            let mut spec = small_spec();
            spec.seed = seed;
            let mut t = Trainer::new(CpuBackend::new(threads).unwrap(), spec, &data).unwrap();
            let report = t.run(&mut no_events()).unwrap();
            (t.params().unwrap(), report.history)
        };
        let (a, ha) = run(7);
        let (b, hb) = run(7);
        assert_eq!(a, b, "threads={threads}");
        assert_eq!(ha, hb);
        let (c, _) = run(8);
        assert_ne!(a, c);
    }
}

fn tmp(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}

#[test]
fn resume_continues_exactly_where_it_stopped() {
    let data = digits();
    let dir = tempfile::tempdir().unwrap();
    for optimizer in ["adam", "sgd"] {
        let mut spec = small_spec();
        if optimizer == "sgd" {
            spec.optimizer = Optimizer::Sgd(SgdParams {
                lr: 0.05,
                momentum: 0.9,
                weight_decay: 1e-4,
            });
        }
        // Uninterrupted.
        let mut full = Trainer::new(CpuBackend::single(), spec.clone(), &data).unwrap();
        let full_report = full.run(&mut no_events()).unwrap();
        let full_params = full.params().unwrap();

        // Interrupted mid-epoch (step 41 of 29-step epochs), saved, dropped, resumed.
        let path = tmp(dir.path(), &format!("{optimizer}.ckpt"));
        let mut spec2 = spec.clone();
        spec2.checkpoint = Some(path.clone());
        let mut first = Trainer::new(CpuBackend::single(), spec2.clone(), &data).unwrap();
        while first.steps() < 41 {
            first.step(&mut no_events()).unwrap();
        }
        first.save_checkpoint(&mut no_events()).unwrap();
        drop(first);

        let ckpt = Checkpoint::load(&path).unwrap();
        let meta = &ckpt.training.as_ref().unwrap().meta;
        assert_eq!(
            (meta.step, meta.epochs_done, meta.batch_in_epoch),
            (41, 1, 12)
        );
        let mut resumed = Trainer::resume(CpuBackend::single(), spec2, &data, ckpt, &path).unwrap();
        let resumed_report = resumed.run(&mut no_events()).unwrap();
        assert_eq!(resumed.params().unwrap(), full_params, "{optimizer}");
        assert_eq!(resumed_report.history, full_report.history);
        assert_eq!(resumed_report.steps, full_report.steps);

        // The final checkpoint says the run is finished; resuming it does nothing more.
        let done = Checkpoint::load(&path).unwrap();
        let mut again = Trainer::resume(
            CpuBackend::single(),
            {
                let mut s = spec.clone();
                s.checkpoint = Some(path.clone());
                s
            },
            &data,
            done,
            &path,
        )
        .unwrap();
        assert_eq!(again.finished(), Some(StopReason::EpochLimit));
        assert_eq!(
            again.run(&mut no_events()).unwrap().steps,
            full_report.steps
        );
    }
}

#[test]
fn a_larger_epoch_limit_reopens_a_finished_run() {
    let data = digits();
    let dir = tempfile::tempdir().unwrap();
    let path = tmp(dir.path(), "a.ckpt");
    let mut spec = small_spec();
    spec.epochs = 2;
    spec.checkpoint = Some(path.clone());
    Trainer::new(CpuBackend::single(), spec.clone(), &data)
        .unwrap()
        .run(&mut no_events())
        .unwrap();
    spec.epochs = 3;
    let ckpt = Checkpoint::load(&path).unwrap();
    let mut t = Trainer::resume(CpuBackend::single(), spec, &data, ckpt, &path).unwrap();
    assert_eq!(t.finished(), None);
    let r = t.run(&mut no_events()).unwrap();
    assert_eq!(r.epochs, 3);
}

#[test]
fn checkpoint_round_trip_preserves_everything() {
    let data = digits();
    let dir = tempfile::tempdir().unwrap();
    let path = tmp(dir.path(), "rt.ckpt");
    let mut spec = small_spec();
    spec.epochs = 1;
    spec.checkpoint = Some(path.clone());
    let mut t = Trainer::new(CpuBackend::single(), spec, &data).unwrap();
    t.run(&mut no_events()).unwrap();
    let in_memory = t.checkpoint().unwrap();
    let loaded = Checkpoint::load(&path).unwrap();
    // wall time differs between the two snapshots; everything else must match.
    let mut a = in_memory.clone();
    let mut b = loaded.clone();
    a.training.as_mut().unwrap().meta.wall_s = 0.0;
    b.training.as_mut().unwrap().meta.wall_s = 0.0;
    assert_eq!(a, b);
    assert_eq!(loaded.params, t.params().unwrap());
    // Bytes → checkpoint → bytes is stable.
    assert_eq!(
        Checkpoint::from_bytes(&loaded.to_bytes(), &path).unwrap(),
        loaded
    );
    // No temporary files are left next to it.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, vec!["rt.ckpt".to_string()]);
}

fn saved_checkpoint(dir: &Path) -> (PathBuf, Vec<u8>) {
    let data = digits();
    let path = tmp(dir, "c.ckpt");
    let mut spec = small_spec();
    spec.epochs = 1;
    spec.checkpoint = Some(path.clone());
    Trainer::new(CpuBackend::single(), spec, &data)
        .unwrap()
        .run(&mut no_events())
        .unwrap();
    let bytes = std::fs::read(&path).unwrap();
    (path, bytes)
}

#[test]
fn corrupted_truncated_and_foreign_checkpoints_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (path, bytes) = saved_checkpoint(dir.path());
    let bad = tmp(dir.path(), "bad.ckpt");

    // One flipped bit in the tensor data.
    let mut flipped = bytes.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x10;
    std::fs::write(&bad, &flipped).unwrap();
    let err = Checkpoint::load(&bad).unwrap_err();
    assert!(matches!(err, CheckpointError::Checksum { .. }), "{err}");
    assert!(err.to_string().contains("checksum mismatch"), "{err}");
    assert!(err.to_string().contains("the file is corrupted"), "{err}");

    // Truncated at several points, including inside the fixed header.
    for cut in [bytes.len() - 1, bytes.len() / 2, 30, 20] {
        std::fs::write(&bad, &bytes[..cut]).unwrap();
        let err = Checkpoint::load(&bad).unwrap_err();
        assert!(
            matches!(err, CheckpointError::Truncated { .. }),
            "{cut}: {err}"
        );
        assert!(err.to_string().contains("truncated"), "{err}");
    }

    // Not a checkpoint at all.
    std::fs::write(&bad, b"hello, world").unwrap();
    let err = Checkpoint::load(&bad).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "checkpoint {}: not a setpoint checkpoint (bad magic bytes)",
            bad.display()
        )
    );

    // A future format version.
    let mut future = bytes.clone();
    future[8] = 9;
    std::fs::write(&bad, &future).unwrap();
    let err = Checkpoint::load(&bad).unwrap_err();
    assert!(
        err.to_string()
            .contains("format version 9 is not supported (this build reads version 1)"),
        "{err}"
    );

    // Missing file.
    let err = Checkpoint::load(&tmp(dir.path(), "none.ckpt")).unwrap_err();
    assert!(matches!(err, CheckpointError::Io { .. }));

    // From another model.
    let ckpt = Checkpoint::load(&path).unwrap();
    let err = ckpt.check_layers(&[64, 128, 10], &path).unwrap_err();
    assert!(
        err.to_string()
            .contains("holds a model with layers 64,32,10, but layers 64,128,10 were asked for"),
        "{err}"
    );
    let mut spec = small_spec();
    spec.layers = vec![64, 128, 10];
    let err = Trainer::resume(CpuBackend::single(), spec, &digits(), ckpt, &path)
        .err()
        .unwrap();
    assert!(matches!(
        err,
        TrainError::Checkpoint(CheckpointError::WrongModel { .. })
    ));
}

#[test]
fn resume_refuses_other_data_and_other_hyperparameters() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = saved_checkpoint(dir.path());
    let data = digits();

    let mut other = data.clone();
    other.x[0] += 1.0;
    let err = Trainer::resume(
        CpuBackend::single(),
        small_spec(),
        &other,
        Checkpoint::load(&path).unwrap(),
        &path,
    )
    .err()
    .unwrap();
    assert!(err.is_input());
    assert!(err.to_string().contains("but the data given is"), "{err}");

    let mut spec = small_spec();
    spec.batch_size = 64;
    let err = Trainer::resume(
        CpuBackend::single(),
        spec,
        &data,
        Checkpoint::load(&path).unwrap(),
        &path,
    )
    .err()
    .unwrap();
    assert!(
        err.to_string()
            .contains("the batch size was 50 in the checkpoint and is 64 now"),
        "{err}"
    );
}

#[test]
fn data_that_does_not_fit_the_model_is_refused_clearly() {
    let data = digits();
    let err = Trainer::new(
        CpuBackend::single(),
        TrainSpec::new(vec![32, 16, 10]),
        &data,
    )
    .err()
    .unwrap();
    assert!(err.is_input());
    assert!(
        err.to_string()
            .contains("the data has 64 features but layers 32,16,10 take 32 inputs"),
        "{err}"
    );
    let err = Trainer::new(CpuBackend::single(), TrainSpec::new(vec![64, 16, 8]), &data)
        .err()
        .unwrap();
    assert!(
        err.to_string()
            .contains("is outside the model's 8 classes (layers 64,16,8; labels must be 0..7)"),
        "{err}"
    );
    let mut spec = TrainSpec::new(vec![64, 16, 10]);
    spec.batch_size = 0;
    let err = Trainer::new(CpuBackend::single(), spec, &data)
        .err()
        .unwrap();
    assert_eq!(
        err.to_string(),
        "batch size must be between 1 and 1048576, got 0"
    );
}

#[test]
fn checkpoints_are_written_every_n_steps() {
    let data = digits();
    let dir = tempfile::tempdir().unwrap();
    let path = tmp(dir.path(), "every.ckpt");
    let mut spec = small_spec();
    spec.epochs = 2;
    spec.checkpoint = Some(path.clone());
    spec.checkpoint_every_steps = 10;
    let mut t = Trainer::new(CpuBackend::single(), spec, &data).unwrap();
    let mut written = Vec::new();
    t.run(&mut |ev| {
        if let setpoint::train::TrainEvent::Checkpoint { step, .. } = ev {
            written.push(*step);
        }
    })
    .unwrap();
    // 29 steps per epoch, 58 in all: every 10 steps, then the end.
    assert_eq!(written, vec![10, 20, 30, 40, 50, 58]);
}

/// One training step's forward and backward pass of a `layers` model on `rows` random rows.
fn one_pass(be: &CpuBackend, layers: &[usize], rows: usize) {
    let params = MlpParams::init(layers, 3).unwrap();
    let model = Mlp::from_params(be, &params).unwrap();
    let mut ws = Workspace::new(be, layers, rows, true).unwrap();
    let mut grads = Grads::new(be, layers).unwrap();
    let mut rng = Rng::new(5);
    let x: Vec<f32> = (0..rows * layers[0]).map(|_| rng.normal() as f32).collect();
    let classes = *layers.last().unwrap() as u32;
    let labels: Vec<u32> = (0..rows as u32).map(|r| r % classes).collect();
    let xb = be.upload(&x).unwrap();
    let mut lb = be.alloc_labels(rows).unwrap();
    be.write_labels(&mut lb, &labels).unwrap();
    model
        .forward_backward(be, &mut ws, &xb, &lb, rows, &mut grads)
        .unwrap();
}

#[test]
fn a_step_too_small_for_the_pool_is_one_worker_wide() {
    // The controller grants a job no more share than its step can use: a small model's step
    // runs on the calling thread whatever the budget, a large one's on the whole pool.
    let be = CpuBackend::new(2).unwrap();
    one_pass(&be, &[32, 128, 10], 32);
    assert_eq!(be.take_width(), Some(Width::One), "32-128-10 at batch 32");
    one_pass(&be, &[64, 512, 512, 10], 128);
    assert_eq!(
        be.take_width(),
        Some(Width::All),
        "64-512-512-10 at batch 128"
    );
    // Counting starts again at each look, and a smaller budget does not narrow it: the width
    // is what the work could use, not what it was given.
    assert_eq!(
        be.take_width(),
        Some(Width::One),
        "nothing ran since the last look"
    );
    be.set_workers(1);
    one_pass(&be, &[64, 512, 512, 10], 128);
    assert_eq!(be.take_width(), Some(Width::All));
    // Admission measures on a one-worker backend: it still tells a wide step from a narrow one.
    let one = CpuBackend::single();
    one_pass(&one, &[64, 512, 512, 10], 128);
    assert_eq!(one.take_width(), Some(Width::All));
    one_pass(&one, &[32, 128, 10], 32);
    assert_eq!(one.take_width(), Some(Width::One));
}
