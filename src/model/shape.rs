//! A model's shape (its layer widths: parsed, bounded, printed) and its parameters on the
//! host.

use super::ModelError;
use crate::util::rng::Rng;

/// Parses a layer list such as `64,128,10`.
pub fn parse_layers(text: &str) -> Result<Vec<usize>, ModelError> {
    let mut layers = Vec::new();
    for part in text.split(',') {
        let part = part.trim();
        match part.parse::<usize>() {
            Ok(w) => layers.push(w),
            Err(_) => {
                return Err(ModelError::Layers {
                    layers,
                    reason: format!(
                        "{part:?} is not a positive integer (expected comma-separated widths such as 64,128,10)"
                    ),
                });
            }
        }
    }
    check_layers(&layers)?;
    Ok(layers)
}

/// Most widths a layer list may have, the input and output included.
pub const MAX_LAYERS: usize = 128;
/// Widest layer.
pub const MAX_WIDTH: usize = 65_536;

// A label the loaders accept always has an output unit to go to.
const _: () = assert!(MAX_WIDTH == crate::data::MAX_CLASSES);

/// Checks a layer list: at least an input and an output width and at most [`MAX_LAYERS`],
/// every width in `1..=MAX_WIDTH`, the output at least 2 classes. Whether the model fits its
/// device is a separate question ([`footprint`]).
pub fn check_layers(layers: &[usize]) -> Result<(), ModelError> {
    let err = |reason: &str| {
        Err(ModelError::Layers {
            layers: layers.to_vec(),
            reason: reason.to_string(),
        })
    };
    if layers.len() < 2 {
        return err("need at least an input and an output width, such as 64,10");
    }
    if layers.len() > MAX_LAYERS {
        return Err(ModelError::Layers {
            layers: layers[..8].to_vec(),
            reason: format!(
                "{} widths given; at most {MAX_LAYERS} are accepted (input and output included)",
                layers.len()
            ),
        });
    }
    if layers.contains(&0) {
        return err("every width must be at least 1");
    }
    if let Some(w) = layers.iter().find(|&&w| w > MAX_WIDTH) {
        return err(&format!("width {w} is over the limit of {MAX_WIDTH}"));
    }
    if layers[layers.len() - 1] < 2 {
        return err("the output layer needs at least 2 classes");
    }
    Ok(())
}

/// Formats a layer list as `64,128,10`.
pub fn format_layers(layers: &[usize]) -> String {
    layers
        .iter()
        .map(|w| w.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// Host copy of an MLP's parameters: `weights[l]` is `layers[l] × layers[l+1]` row-major,
/// `biases[l]` has `layers[l+1]` entries.
#[derive(Debug, Clone, PartialEq)]
pub struct MlpParams {
    /// Widths, input first.
    pub layers: Vec<usize>,
    /// Weight matrices, one per layer.
    pub weights: Vec<Vec<f32>>,
    /// Bias vectors, one per layer.
    pub biases: Vec<Vec<f32>>,
}

impl MlpParams {
    /// He-uniform weights (`U(±√(6/fan_in))`, suited to ReLU) and zero biases from `seed`.
    pub fn init(layers: &[usize], seed: u64) -> Result<Self, ModelError> {
        check_layers(layers)?;
        let mut rng = Rng::derived(seed, 0x1417);
        let mut weights = Vec::new();
        let mut biases = Vec::new();
        for pair in layers.windows(2) {
            let (fan_in, fan_out) = (pair[0], pair[1]);
            let bound = (6.0 / fan_in as f64).sqrt();
            weights.push(
                (0..fan_in * fan_out)
                    .map(|_| rng.uniform(-bound, bound) as f32)
                    .collect(),
            );
            biases.push(vec![0.0; fan_out]);
        }
        Ok(MlpParams {
            layers: layers.to_vec(),
            weights,
            biases,
        })
    }

    /// Checks that every tensor has the size the layer list implies.
    pub(crate) fn validate(&self) -> Result<(), ModelError> {
        check_layers(&self.layers)?;
        let n = self.layers.len() - 1;
        let err = |reason: String| {
            Err(ModelError::Params {
                layers: self.layers.clone(),
                reason,
            })
        };
        if self.weights.len() != n || self.biases.len() != n {
            return err(format!(
                "{} weight and {} bias tensors for {n} layers",
                self.weights.len(),
                self.biases.len()
            ));
        }
        for l in 0..n {
            let (i, o) = (self.layers[l], self.layers[l + 1]);
            if self.weights[l].len() != i * o {
                return err(format!(
                    "layer {l} weights have {} values, expected {i}×{o}",
                    self.weights[l].len()
                ));
            }
            if self.biases[l].len() != o {
                return err(format!(
                    "layer {l} bias has {} values, expected {o}",
                    self.biases[l].len()
                ));
            }
        }
        Ok(())
    }

    /// Total number of parameters.
    pub fn count(&self) -> usize {
        param_count(&self.layers)
    }
}

/// Number of parameters of an MLP with these widths.
pub fn param_count(layers: &[usize]) -> usize {
    layers.windows(2).map(|p| p[0] * p[1] + p[1]).sum()
}
