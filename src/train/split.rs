//! The run's data: checked against the model, split into training and validation, and
//! fingerprinted so that a resumed run can tell it is the same data.

use super::{TrainError, TrainSpec};
use crate::data::Dataset;
use crate::model::checkpoint::DataFingerprint;
use crate::model::format_layers;

pub(super) fn empty_like(d: &Dataset) -> Dataset {
    Dataset {
        features: d.features,
        x: Vec::new(),
        labels: Some(Vec::new()),
        source: d.source.clone(),
    }
}

/// Checks `data` against the model and splits it (raw, not normalised).
pub(super) fn prepare_data(
    spec: &TrainSpec,
    data: &Dataset,
) -> Result<(Dataset, Dataset), TrainError> {
    let layers = &spec.layers;
    let Some(labels) = &data.labels else {
        return Err(TrainError::Data(format!(
            "{}: training needs labelled data, and this data has no label column",
            data.source
        )));
    };
    if data.features != layers[0] {
        return Err(TrainError::Data(format!(
            "{}: the data has {} features but layers {} take {} inputs (make the first width {})",
            data.source,
            data.features,
            format_layers(layers),
            layers[0],
            data.features
        )));
    }
    let classes = layers[layers.len() - 1];
    if let Some((row, &label)) = labels
        .iter()
        .enumerate()
        .find(|&(_, &l)| l as usize >= classes)
    {
        return Err(TrainError::Data(format!(
            "{}: label {label} in data row {} is outside the model's {classes} classes \
             (layers {}; labels must be 0..{})",
            data.source,
            row + 1,
            format_layers(layers),
            classes - 1
        )));
    }
    if data.rows() < 2 {
        return Err(TrainError::Data(format!(
            "{}: needs at least 2 rows to train, found {}",
            data.source,
            data.rows()
        )));
    }
    let (train, val) = crate::data::split(data, spec.val_fraction, spec.seed)
        .map_err(|e| TrainError::Data(e.to_string()))?;
    if spec.target_accuracy.is_some() && val.rows() == 0 {
        return Err(TrainError::Spec(
            "a target accuracy needs a validation set: set a validation fraction above 0".into(),
        ));
    }
    Ok((train, val))
}

pub(super) fn fingerprint(train: &Dataset, val: &Dataset) -> DataFingerprint {
    let mut h = crc32fast::Hasher::new();
    h.update(bytemuck::cast_slice(&train.x));
    if let Some(l) = &train.labels {
        h.update(bytemuck::cast_slice(l));
    }
    DataFingerprint {
        source: train.source.clone(),
        train_rows: train.rows(),
        val_rows: val.rows(),
        features: train.features,
        crc: h.finalize(),
    }
}
