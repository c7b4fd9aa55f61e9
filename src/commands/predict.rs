//! `setpoint predict`: runs a checkpoint's model over data and prints its accuracy (labelled
//! data) or one prediction per row.

use std::io::Write;
use std::path::Path;

use serde_json::json;

use super::{cpu_backend, input_error, load_options};
use crate::cli::{DataArgs, PredictArgs};
use crate::data::{self, Dataset, LabelColumn, LoadOptions};
use crate::device::Backend;
use crate::model::checkpoint::Checkpoint;
use crate::model::{Mlp, Workspace};
use crate::util::stats::argmax;

/// Rows the model runs at once.
const CHUNK: usize = 512;

/// Runs `setpoint predict`.
pub fn run(args: PredictArgs) -> anyhow::Result<()> {
    let ckpt = Checkpoint::load(&args.checkpoint)?;
    let layers = ckpt.params.layers.clone();
    let (inputs, classes) = (layers[0], layers[layers.len() - 1]);
    let mut data = load_for_model(&args.data, &args.data_args, inputs)?;
    if data.features != inputs {
        return Err(input_error(format!(
            "{}: the data has {} features, the model in {} takes {inputs}",
            args.data,
            data.features,
            args.checkpoint.display()
        )));
    }
    check_labels(&data, &args.data, classes)?;
    ckpt.normalizer.apply(&mut data.x);
    let predictions = predict_rows(&ckpt, &data, args.threads)?;
    print_predictions(&predictions, &data, args.json)
}

/// Loads data for a model taking `inputs` features: labelled when it has one more column
/// (or a named label column), unlabelled when it has exactly `inputs`.
fn load_for_model(spec: &str, args: &DataArgs, inputs: usize) -> anyhow::Result<Dataset> {
    let is_csv =
        !spec.starts_with("synthetic:") && !Path::new(spec).to_string_lossy().contains("idx");
    if args.label_column.is_some() || !is_csv {
        return Ok(data::load(spec, &load_options(args))?);
    }
    let raw = data::load(
        spec,
        &LoadOptions {
            label: LabelColumn::None,
            labels_path: args.labels.clone(),
        },
    )?;
    if raw.features == inputs {
        Ok(raw)
    } else if raw.features == inputs + 1 {
        Ok(data::load(spec, &load_options(args))?)
    } else {
        Err(input_error(format!(
            "{spec}: has {} columns, but the model takes {inputs} features (give {inputs} \
             columns, or {} with the label last)",
            raw.features,
            inputs + 1
        )))
    }
}

/// Refuses labels the model cannot predict.
fn check_labels(data: &Dataset, spec: &str, classes: usize) -> anyhow::Result<()> {
    if let Some(labels) = &data.labels
        && let Some((row, &l)) = labels
            .iter()
            .enumerate()
            .find(|&(_, &l)| l as usize >= classes)
    {
        return Err(input_error(format!(
            "{spec}: label {l} in data row {} is outside the model's {classes} classes",
            row + 1
        )));
    }
    Ok(())
}

/// The predicted class of each row and its probability.
fn predict_rows(
    ckpt: &Checkpoint,
    data: &Dataset,
    threads: usize,
) -> anyhow::Result<Vec<(usize, f32)>> {
    let layers = &ckpt.params.layers;
    let (inputs, classes) = (layers[0], layers[layers.len() - 1]);
    let backend = cpu_backend(threads)?;
    let model = Mlp::from_params(&backend, &ckpt.params)?;
    let mut ws = Workspace::new(&backend, layers, CHUNK, false)?;
    let mut x = backend.alloc(CHUNK * inputs)?;
    let mut probs = vec![0.0f32; CHUNK * classes];
    let mut predictions: Vec<(usize, f32)> = Vec::with_capacity(data.rows());
    for start in (0..data.rows()).step_by(CHUNK) {
        let end = (start + CHUNK).min(data.rows());
        let rows = end - start;
        backend.write(&mut x, &data.x[start * inputs..end * inputs])?;
        model.predict(&backend, &mut ws, &x, rows)?;
        backend.read(ws.output(), &mut probs[..rows * classes])?;
        for r in 0..rows {
            let row = &probs[r * classes..(r + 1) * classes];
            let c = argmax(row);
            predictions.push((c, row[c]));
        }
    }
    Ok(predictions)
}

/// Prints the accuracy (labelled data) or the predictions, as text or one JSON line.
fn print_predictions(
    predictions: &[(usize, f32)],
    data: &Dataset,
    json: bool,
) -> anyhow::Result<()> {
    let correct = data.labels.as_ref().map(|labels| {
        predictions
            .iter()
            .zip(labels)
            .filter(|(p, l)| p.0 == **l as usize)
            .count()
    });
    let rows = data.rows();
    let accuracy = correct.map(|c| {
        if rows == 0 {
            0.0
        } else {
            c as f64 / rows as f64
        }
    });
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if json {
        let preds: Vec<_> = predictions
            .iter()
            .map(|(c, p)| json!({"class": c, "probability": p}))
            .collect();
        let v = json!({
            "rows": rows,
            "labelled": data.labels.is_some(),
            "correct": correct,
            "accuracy": accuracy,
            "predictions": preds,
        });
        writeln!(out, "{v}")?;
    } else if let (Some(c), Some(a)) = (correct, accuracy) {
        writeln!(out, "accuracy {a:.4} ({c} of {rows} rows)")?;
    } else {
        writeln!(out, "row,class,probability")?;
        for (i, (c, p)) in predictions.iter().enumerate() {
            writeln!(out, "{},{c},{p:.6}", i + 1)?;
        }
    }
    out.flush()?;
    Ok(())
}
