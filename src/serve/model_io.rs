//! What a served model looks like from outside, whatever protocol carries its requests: its
//! one input and one output tensor, and the version it is served as.

/// Name of the one input tensor of every served model.
pub const INPUT_NAME: &str = "input";
/// Name of the one output tensor: class probabilities.
pub const OUTPUT_NAME: &str = "probabilities";
/// The only model version served.
pub const MODEL_VERSION: &str = "1";

/// What a protocol codec needs to know about a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelIo {
    /// Name of the model's single input tensor.
    pub input_name: String,
    /// Values per input row (`F`).
    pub features: usize,
    /// Name of the model's single output tensor.
    pub output_name: String,
    /// Values per output row (`C`).
    pub classes: usize,
}

impl ModelIo {
    /// The tensors of an MLP classifier of widths `layers` (input first, classes last).
    pub(crate) fn for_layers(layers: &[usize]) -> Self {
        ModelIo {
            input_name: INPUT_NAME.to_string(),
            features: layers.first().copied().unwrap_or(0),
            output_name: OUTPUT_NAME.to_string(),
            classes: layers.last().copied().unwrap_or(0),
        }
    }
}
