//! `setpoint train`: trains an MLP in the foreground, with a progress bar on a terminal (or
//! one line per epoch), and prints the report as text or JSON.

use std::io::{IsTerminal, Write};

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use super::{cpu_backend, input_error, load_options};
use crate::cli::{OptimizerArg, TrainArgs};
use crate::data::{self, Dataset};
use crate::device::Backend;
use crate::model::checkpoint::Checkpoint;
use crate::model::{Optimizer, format_layers, parse_layers};
use crate::train::{TrainEvent, TrainReport, TrainSpec, Trainer, default_adam, default_sgd};

/// Runs `setpoint train`.
pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    let data = data::load(&args.data, &load_options(&args.data_args))?;
    let backend = cpu_backend(args.threads)?;
    let explicit_layers = args.layers.as_deref().map(parse_layers).transpose()?;
    let mut trainer = match &args.resume {
        Some(resume) => {
            let ckpt = Checkpoint::load(resume)?;
            let layers = explicit_layers.unwrap_or_else(|| ckpt.params.layers.clone());
            let Some(state) = &ckpt.training else {
                return Err(input_error(format!(
                    "cannot resume from {}: it holds a model only, with no training state",
                    resume.display()
                )));
            };
            let mut spec = TrainSpec::from_meta(&layers, &state.meta.config)?;
            apply_overrides(&mut spec, &args)?;
            if args.checkpoint.is_none() && !args.json {
                eprintln!(
                    "resuming from {0}; checkpoints are written back to {0} (--checkpoint PATH \
                     writes them elsewhere)",
                    resume.display()
                );
            }
            spec.checkpoint = Some(args.checkpoint.clone().unwrap_or_else(|| resume.clone()));
            spec.checkpoint_every_steps = args.checkpoint_every;
            let saved_workers = state.meta.config.workers;
            if saved_workers != backend.workers() {
                eprintln!(
                    "note: the run was saved with {saved_workers} worker thread(s) and resumes \
                     with {}; its results will not be bit-identical to an uninterrupted run \
                     (--threads {saved_workers} keeps them so)",
                    backend.workers()
                );
            }
            Trainer::resume(backend, spec, &data, ckpt, resume)?
        }
        None => {
            let layers = match explicit_layers {
                Some(l) => l,
                None => default_layers(&data)?,
            };
            let mut spec = TrainSpec::new(layers);
            apply_overrides(&mut spec, &args)?;
            spec.checkpoint = args.checkpoint.clone();
            spec.checkpoint_every_steps = args.checkpoint_every;
            Trainer::new(backend, spec, &data)?
        }
    };
    let epochs_before = trainer.epochs_done();
    let report = run_with_progress(&mut trainer, args.json)?;
    if args.resume.is_some() && report.epochs == epochs_before && !args.json {
        eprintln!(
            "nothing ran: the checkpoint has already run {epochs_before} epoch(s) and the \
             epoch limit is {}; raise --epochs to train on",
            trainer.spec().epochs
        );
    }
    print_train_report(&report, &trainer, &args)
}

/// `FEATURES,128,CLASSES` for the data.
fn default_layers(data: &Dataset) -> anyhow::Result<Vec<usize>> {
    let classes = data.classes().max(2);
    Ok(vec![data.features, 128, classes])
}

/// Applies the hyper-parameters given on the command line to `spec`.
fn apply_overrides(spec: &mut TrainSpec, args: &TrainArgs) -> anyhow::Result<()> {
    if let Some(b) = args.batch_size {
        spec.batch_size = b;
    }
    if let Some(e) = args.epochs {
        spec.epochs = e;
    }
    if let Some(t) = args.target_accuracy {
        spec.target_accuracy = Some(t);
    }
    if let Some(v) = args.val_fraction {
        spec.val_fraction = v;
    }
    if let Some(s) = args.seed {
        spec.seed = s;
    }
    if let Some(p) = args.precision {
        spec.precision = Some(p.into());
    }
    let opt_given = args.optimizer.is_some()
        || args.lr.is_some()
        || args.momentum.is_some()
        || args.weight_decay.is_some();
    if opt_given {
        spec.optimizer = optimizer_override(spec.optimizer, args)?;
    }
    Ok(())
}

/// The optimiser `--optimizer`, `--lr`, `--momentum` and `--weight-decay` ask for: the
/// current one with those changed when the kind stays, the kind's defaults otherwise.
fn optimizer_override(current: Optimizer, args: &TrainArgs) -> anyhow::Result<Optimizer> {
    let kind = args.optimizer.unwrap_or(match current {
        Optimizer::Sgd(_) => OptimizerArg::Sgd,
        Optimizer::Adam(_) => OptimizerArg::Adam,
    });
    Ok(match kind {
        OptimizerArg::Adam => {
            let mut hp = match current {
                Optimizer::Adam(hp) => hp,
                Optimizer::Sgd(_) => default_adam(1e-3),
            };
            if let Some(lr) = args.lr {
                hp.lr = lr;
            }
            if let Some(wd) = args.weight_decay {
                hp.weight_decay = wd;
            }
            if args.momentum.is_some() {
                return Err(input_error(
                    "--momentum applies to --optimizer sgd only (adam uses its own moments)",
                ));
            }
            Optimizer::Adam(hp)
        }
        OptimizerArg::Sgd => {
            let mut hp = match current {
                Optimizer::Sgd(hp) => hp,
                Optimizer::Adam(_) => default_sgd(),
            };
            if let Some(lr) = args.lr {
                hp.lr = lr;
            }
            if let Some(m) = args.momentum {
                hp.momentum = m;
            }
            if let Some(wd) = args.weight_decay {
                hp.weight_decay = wd;
            }
            Optimizer::Sgd(hp)
        }
    })
}

/// Runs the trainer, showing progress on standard error.
fn run_with_progress<B: Backend>(
    trainer: &mut Trainer<B>,
    json: bool,
) -> anyhow::Result<TrainReport> {
    let epochs = trainer.spec().epochs;
    let batches = trainer.batches_per_epoch() as u64;
    let bar = if std::io::stderr().is_terminal() {
        let bar = ProgressBar::new(epochs as u64 * batches);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} steps  {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_position(trainer.epochs_done() as u64 * batches);
        Some(bar)
    } else {
        None
    };
    let mut on_event = |ev: &TrainEvent| match ev {
        TrainEvent::Step { .. } => {
            if let Some(bar) = &bar {
                bar.inc(1);
            }
        }
        TrainEvent::Epoch(r) => {
            let val = r
                .val_accuracy
                .map(|v| format!("{v:.4}"))
                .unwrap_or_else(|| "-".into());
            let line = format!(
                "epoch {}/{epochs}  loss {:.4}  train_acc {:.4}  val_acc {val}  step {}",
                r.epoch, r.train_loss, r.train_accuracy, r.step
            );
            match &bar {
                Some(bar) => bar.set_message(line),
                None if !json => eprintln!("{line}"),
                None => {}
            }
        }
        TrainEvent::Checkpoint { path, step } => {
            tracing::info!(path = %path.display(), step, "checkpoint written");
        }
    };
    let result = trainer.run(&mut on_event);
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    Ok(result?)
}

/// Prints the report: one JSON line with `--json`, a few lines of text otherwise.
fn print_train_report<B: Backend>(
    report: &TrainReport,
    trainer: &Trainer<B>,
    args: &TrainArgs,
) -> anyhow::Result<()> {
    let spec = trainer.spec();
    let mut out = std::io::stdout().lock();
    if args.json {
        let v = json!({
            "epochs": report.epochs,
            "steps": report.steps,
            "train_loss": report.train_loss,
            "train_accuracy": report.train_accuracy,
            "val_accuracy": report.val_accuracy,
            "stop_reason": report.stop_reason,
            "wall_s": report.wall_s,
            "samples_per_s": report.samples_per_s,
            "checkpoint": report.checkpoint,
            "layers": spec.layers,
            "optimizer": spec.optimizer.name(),
            "optimizer_settings": optimizer_settings(&spec.optimizer),
            "epoch_limit": spec.epochs,
            "target_accuracy": spec.target_accuracy,
            "val_fraction": spec.val_fraction,
            "batch_size": spec.batch_size,
            "seed": spec.seed,
            "precision": trainer.backend().precision(),
            "threads": trainer.backend().workers(),
            "data": args.data,
            "history": report.history,
        });
        writeln!(out, "{v}")?;
        return Ok(());
    }
    let fmt = |v: Option<f64>| v.map(|v| format!("{v:.4}")).unwrap_or_else(|| "-".into());
    writeln!(
        out,
        "trained {} ({}, {} epochs, {} steps) in {:.2} s, {:.0} samples/s",
        format_layers(&spec.layers),
        trainer.backend().precision(),
        report.epochs,
        report.steps,
        report.wall_s,
        report.samples_per_s
    )?;
    writeln!(
        out,
        "train loss {}, train accuracy {}, validation accuracy {}",
        fmt(report.train_loss),
        fmt(report.train_accuracy),
        fmt(report.val_accuracy)
    )?;
    let reason = match report.stop_reason.as_deref() {
        Some("target_reached") => "target accuracy reached",
        Some("epoch_limit") => "epoch limit reached",
        _ => "unfinished",
    };
    writeln!(out, "stopped: {reason}")?;
    if let Some(c) = &report.checkpoint {
        writeln!(out, "checkpoint: {}", c.display())?;
    }
    Ok(())
}

/// The optimiser's hyper-parameters as `--json` reports them, each as its shortest decimal
/// (`0.001`, not the `f32`'s widened `0.0010000000474974513`).
fn optimizer_settings(o: &Optimizer) -> serde_json::Value {
    let n = |x: f32| x.to_string().parse::<f64>().unwrap_or(f64::from(x));
    match o {
        Optimizer::Sgd(h) => json!({
            "lr": n(h.lr),
            "momentum": n(h.momentum),
            "weight_decay": n(h.weight_decay),
        }),
        Optimizer::Adam(h) => json!({
            "lr": n(h.lr),
            "beta1": n(h.beta1),
            "beta2": n(h.beta2),
            "eps": n(h.eps),
            "weight_decay": n(h.weight_decay),
        }),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};
    use crate::device::SgdParams;

    fn train_args(flags: &[&str]) -> TrainArgs {
        let argv = ["setpoint", "train"].iter().chain(flags);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Train(a) => a,
            other => panic!("not train: {other:?}"),
        }
    }

    #[test]
    fn switching_to_sgd_takes_the_config_defaults_and_the_flags_given() {
        let adam = Optimizer::Adam(default_adam(1e-3));
        let sgd = optimizer_override(adam, &train_args(&["--optimizer", "sgd"])).unwrap();
        let defaults = SgdParams {
            lr: 0.05,
            momentum: 0.9,
            weight_decay: 0.0,
        };
        assert_eq!(sgd, Optimizer::Sgd(defaults));
        let tuned = optimizer_override(adam, &train_args(&["--optimizer", "sgd", "--lr", "0.1"]));
        assert_eq!(
            tuned.unwrap(),
            Optimizer::Sgd(SgdParams {
                lr: 0.1,
                ..defaults
            })
        );
    }

    #[test]
    fn momentum_with_adam_is_an_input_error() {
        let adam = Optimizer::Adam(default_adam(1e-3));
        let e = optimizer_override(adam, &train_args(&["--momentum", "0.5"])).unwrap_err();
        assert!(e.is::<crate::commands::InputError>(), "{e}");
    }
}
