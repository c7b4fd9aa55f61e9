//! The gRPC form of an inference request and its answer: `ModelInferRequest` to the same
//! [`InferRequest`] the HTTP codec makes, and the outputs back to a `ModelInferResponse`.
//! Pure: no I/O.
//!
//! What is accepted, and why (the HTTP codec's rules, in gRPC's terms):
//! - One FP32 input of shape `[N, F]` (`N ≥ 1`) or `[F]`, its values either typed
//!   (`contents.fp32_contents`) or little-endian bytes in `raw_input_contents`, one entry per
//!   input in the order of `inputs` (tritonclient and perf_analyzer send raw bytes).
//! - The answer uses the form the input used: raw bytes in `raw_output_contents` for a raw
//!   input, typed `contents.fp32_contents` otherwise.
//! - `parameters.timeout` is Triton's: the client's timeout in microseconds, a positive
//!   `int64_param` or `uint64_param`. Unknown parameters are ignored; shared-memory tensors and
//!   classification outputs are refused, as over HTTP.
//! - No `outputs` means every output.

use std::collections::HashMap;

use super::pb;
use super::pb::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
use super::pb::model_infer_response::InferOutputTensor;
use crate::api::v2codec::{CodecError, InferRequest, ModelIo};

/// Decodes a gRPC inference request for the model `io` describes.
pub(crate) fn decode_infer(
    msg: pb::ModelInferRequest,
    io: &ModelIo,
) -> Result<InferRequest, CodecError> {
    let timeout_us = timeout_param(&msg.parameters)?;
    let raw = msg.raw_input_contents;
    if !raw.is_empty() && raw.len() != msg.inputs.len() {
        return Err(CodecError::RawCount {
            got: raw.len(),
            inputs: msg.inputs.len(),
        });
    }
    let mut found: Option<(usize, bool, Vec<f32>)> = None;
    for (i, input) in msg.inputs.into_iter().enumerate() {
        if input.name != io.input_name {
            return Err(CodecError::UnknownInput {
                name: input.name,
                expected: io.input_name.clone(),
            });
        }
        if found.is_some() {
            return Err(CodecError::DuplicateInput { name: input.name });
        }
        found = Some(decode_input(input, raw.get(i).map(|b| &b[..]), io)?);
    }
    let Some((rows, unbatched, data)) = found else {
        return Err(CodecError::MissingInput {
            name: io.input_name.clone(),
        });
    };
    let output_requested = check_outputs(&msg.outputs, io)?;
    Ok(InferRequest {
        id: Some(msg.id),
        rows,
        data,
        unbatched,
        output_binary: !raw.is_empty(),
        output_requested,
        timeout_us,
    })
}

/// The request-level `timeout` parameter, in microseconds.
fn timeout_param(params: &HashMap<String, pb::InferParameter>) -> Result<Option<u64>, CodecError> {
    use pb::infer_parameter::ParameterChoice;
    let Some(p) = params.get("timeout") else {
        return Ok(None);
    };
    match &p.parameter_choice {
        Some(ParameterChoice::Int64Param(v)) if *v > 0 => Ok(Some(*v as u64)),
        Some(ParameterChoice::Uint64Param(v)) if *v > 0 => Ok(Some(*v)),
        other => Err(CodecError::InvalidTimeout {
            got: match other {
                Some(ParameterChoice::Int64Param(v)) => v.to_string(),
                Some(ParameterChoice::Uint64Param(v)) => v.to_string(),
                Some(ParameterChoice::DoubleParam(v)) => v.to_string(),
                Some(ParameterChoice::BoolParam(v)) => v.to_string(),
                Some(ParameterChoice::StringParam(v)) => format!("{v:?}"),
                None => "nothing".to_owned(),
            },
        }),
    }
}

/// Checks one input and takes its values, from `contents` or from its raw bytes. Returns
/// (rows, unbatched, values).
fn decode_input(
    input: InferInputTensor,
    raw: Option<&[u8]>,
    io: &ModelIo,
) -> Result<(usize, bool, Vec<f32>), CodecError> {
    let name = input.name;
    if input.parameters.contains_key("shared_memory_region") {
        return Err(CodecError::SharedMemory {
            tensor: "input",
            name,
        });
    }
    if input.datatype != "FP32" {
        let got = if input.datatype.is_empty() {
            "nothing".to_owned()
        } else {
            input.datatype
        };
        return Err(CodecError::Datatype { name, got });
    }
    let (rows, unbatched) = rows_of(&name, &input.shape, io)?;
    let expected = u128::from(rows) * io.features as u128;
    let values = match (input.contents, raw) {
        (Some(_), Some(_)) => return Err(CodecError::ContentsTwice { name }),
        (None, None) => return Err(CodecError::NoContents { name }),
        (Some(c), None) => {
            if c.fp32_contents.len() as u128 != expected {
                return Err(CodecError::ValueCount {
                    name,
                    shape: fmt_shape(&input.shape),
                    expected,
                    got: c.fp32_contents.len(),
                });
            }
            c.fp32_contents
        }
        (None, Some(bytes)) => {
            if bytes.len() as u128 != expected * 4 {
                return Err(CodecError::RawSize {
                    name,
                    got: bytes.len(),
                    expected: expected * 4,
                    shape: fmt_shape(&input.shape),
                });
            }
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        }
    };
    if let Some(index) = values.iter().position(|v| !v.is_finite()) {
        return Err(CodecError::NonFinite { name, index });
    }
    Ok((
        usize::try_from(rows).unwrap_or(usize::MAX),
        unbatched,
        values,
    ))
}

/// The rows a shape holds, and whether it is a single unbatched row (`[F]`).
fn rows_of(name: &str, dims: &[i64], io: &ModelIo) -> Result<(u64, bool), CodecError> {
    let features = i64::try_from(io.features).unwrap_or(i64::MAX);
    match dims {
        [f] if *f == features => Ok((1, true)),
        [0, f] if *f == features => Err(CodecError::NoRows {
            name: name.to_owned(),
            shape: fmt_shape(dims),
        }),
        [n, f] if *n > 0 && *f == features => Ok((*n as u64, false)),
        _ => Err(CodecError::Shape {
            name: name.to_owned(),
            features: io.features,
            got: if dims.is_empty() {
                "nothing".to_owned()
            } else {
                fmt_shape(dims)
            },
        }),
    }
}

/// A shape as the HTTP codec writes it in messages: `[2, 64]` (made only for an error).
fn fmt_shape(dims: &[i64]) -> String {
    let parts: Vec<String> = dims.iter().map(i64::to_string).collect();
    format!("[{}]", parts.join(", "))
}

/// Checks the outputs named are the model's, each once, and plain (no shared memory, no
/// classification). Always true: no outputs means every output.
fn check_outputs(outputs: &[InferRequestedOutputTensor], io: &ModelIo) -> Result<bool, CodecError> {
    use pb::infer_parameter::ParameterChoice;
    let mut named = false;
    for output in outputs {
        let name = &output.name;
        if *name != io.output_name {
            return Err(CodecError::UnknownOutput {
                name: name.clone(),
                expected: io.output_name.clone(),
            });
        }
        if named {
            return Err(CodecError::DuplicateOutput { name: name.clone() });
        }
        named = true;
        if output.parameters.contains_key("shared_memory_region") {
            return Err(CodecError::SharedMemory {
                tensor: "output",
                name: name.clone(),
            });
        }
        let classification =
            output
                .parameters
                .get("classification")
                .and_then(|p| match p.parameter_choice {
                    Some(ParameterChoice::Int64Param(k)) => Some(k != 0),
                    Some(ParameterChoice::Uint64Param(k)) => Some(k != 0),
                    _ => None,
                });
        if classification == Some(true) {
            return Err(CodecError::Classification { name: name.clone() });
        }
    }
    Ok(true)
}

/// The answer to `req` from the model's outputs (`req.rows` rows of `io.classes`), in the
/// form the input came in.
pub(crate) fn encode_infer(
    model: &str,
    version: &str,
    req: &InferRequest,
    probs: &[f32],
    io: &ModelIo,
) -> pb::ModelInferResponse {
    let classes = i64::try_from(io.classes).unwrap_or(i64::MAX);
    let shape = if req.unbatched {
        vec![classes]
    } else {
        vec![req.rows as i64, classes]
    };
    let mut answer = pb::ModelInferResponse {
        model_name: model.to_owned(),
        model_version: version.to_owned(),
        id: req.id.clone().unwrap_or_default(),
        ..Default::default()
    };
    if !req.output_requested {
        return answer;
    }
    let mut tensor = InferOutputTensor {
        name: io.output_name.clone(),
        datatype: "FP32".to_owned(),
        shape,
        ..Default::default()
    };
    if req.output_binary {
        let bytes: Vec<u8> = probs.iter().flat_map(|v| v.to_le_bytes()).collect();
        answer.raw_output_contents.push(bytes);
    } else {
        tensor.contents = Some(pb::InferTensorContents {
            fp32_contents: probs.to_vec(),
            ..Default::default()
        });
    }
    answer.outputs.push(tensor);
    answer
}

#[cfg(test)]
#[path = "codec_tests.rs"]
mod tests;
