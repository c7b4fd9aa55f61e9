//! Decoding: a request's `Content-Encoding`, its JSON header and its binary tensors.

use std::borrow::Cow;
use std::io::Read;

use super::wire::{Dims, FlatData, WireInput, WireOutput, WireRequest};
use super::{CodecError, InferRequest, ModelIo};

/// Parses an `Inference-Header-Content-Length` header value.
pub fn parse_header_len(value: &[u8]) -> Result<usize, CodecError> {
    std::str::from_utf8(value)
        .ok()
        .map(str::trim)
        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| CodecError::HeaderLenInvalid {
            value: String::from_utf8_lossy(value).into_owned(),
        })
}

/// Undoes a request's `Content-Encoding` (tritonclient can gzip or deflate request bodies).
/// `None`, `identity` and an empty value borrow the body; gzip and deflate (zlib) are
/// decompressed, refusing more than `limit_bytes` of output. Decode the result with
/// [`decode_infer`]: `Inference-Header-Content-Length` counts uncompressed bytes.
pub fn decode_content_encoding<'a>(
    encoding: Option<&str>,
    body: &'a [u8],
    limit_bytes: usize,
) -> Result<Cow<'a, [u8]>, CodecError> {
    let name = encoding.map(str::trim).unwrap_or("");
    let (label, reader): (&'static str, Box<dyn Read + 'a>) =
        if name.is_empty() || name.eq_ignore_ascii_case("identity") {
            return Ok(Cow::Borrowed(body));
        } else if name.eq_ignore_ascii_case("gzip") || name.eq_ignore_ascii_case("x-gzip") {
            ("gzip", Box::new(flate2::read::GzDecoder::new(body)))
        } else if name.eq_ignore_ascii_case("deflate") {
            ("deflate", Box::new(flate2::read::ZlibDecoder::new(body)))
        } else {
            return Err(CodecError::UnsupportedEncoding {
                encoding: name.to_owned(),
            });
        };
    let mut out = Vec::new();
    let cap = u64::try_from(limit_bytes)
        .unwrap_or(u64::MAX)
        .saturating_add(1);
    reader
        .take(cap)
        .read_to_end(&mut out)
        .map_err(|e| CodecError::Decompress {
            encoding: label,
            message: e.to_string(),
        })?;
    if out.len() > limit_bytes {
        return Err(CodecError::DecompressedTooLarge { limit_bytes });
    }
    Ok(Cow::Owned(out))
}

/// Decodes a request body. `header_len` is the value of the `Inference-Header-Content-Length`
/// header when present (`None`: the whole body is JSON).
pub fn decode_infer(
    body: &[u8],
    header_len: Option<usize>,
    io: &ModelIo,
) -> Result<InferRequest, CodecError> {
    let (json, binary) = split_body(body, header_len)?;
    let wire: WireRequest<'_> =
        serde_json::from_slice(json).map_err(|e| CodecError::from_json(&e))?;
    let (rows, unbatched, data) = decode_inputs(wire.inputs, binary, io)?;
    let params = wire.parameters.unwrap_or_default();
    let timeout_us = match params.timeout {
        None => None,
        Some(v) => match v.as_u64() {
            Some(us) if us > 0 => Some(us),
            _ => return Err(CodecError::InvalidTimeout { got: v.to_string() }),
        },
    };
    let default_binary = params.binary_data_output.unwrap_or(false);
    let output_binary = decode_outputs(wire.outputs.as_deref(), default_binary, io)?;
    Ok(InferRequest {
        id: wire.id.map(|s| s.0.into_owned()),
        rows,
        data,
        unbatched,
        output_binary,
        output_requested: true,
        timeout_us,
    })
}

/// The JSON header and, with a header length, the binary tensors after it.
fn split_body(
    body: &[u8],
    header_len: Option<usize>,
) -> Result<(&[u8], Option<&[u8]>), CodecError> {
    match header_len {
        None => Ok((body, None)),
        Some(n) if n > body.len() => Err(CodecError::HeaderLenBeyondBody {
            header_bytes: n,
            body_bytes: body.len(),
        }),
        Some(n) => {
            let (json, rest) = body.split_at(n);
            Ok((json, Some(rest)))
        }
    }
}

/// The model's one input, from `inputs`: (rows, unbatched, values); every binary byte must
/// be taken.
fn decode_inputs(
    inputs: Option<Vec<WireInput<'_>>>,
    binary: Option<&[u8]>,
    io: &ModelIo,
) -> Result<(usize, bool, Vec<f32>), CodecError> {
    let mut binary_rest = binary.unwrap_or(&[]);
    let mut decoded: Option<(usize, bool, Vec<f32>)> = None;
    for input in inputs.into_iter().flatten() {
        let name = input.name.0.as_ref();
        if name != io.input_name {
            return Err(CodecError::UnknownInput {
                name: name.to_owned(),
                expected: io.input_name.clone(),
            });
        }
        if decoded.is_some() {
            return Err(CodecError::DuplicateInput {
                name: name.to_owned(),
            });
        }
        decoded = Some(decode_input(input, binary.is_some(), &mut binary_rest, io)?);
    }
    let Some(decoded) = decoded else {
        return Err(CodecError::MissingInput {
            name: io.input_name.clone(),
        });
    };
    if !binary_rest.is_empty() {
        return Err(CodecError::TrailingBytes {
            extra: binary_rest.len(),
        });
    }
    Ok(decoded)
}

/// Whether the output is asked for in binary (`default` unless the output says), after
/// checking the outputs named are the model's.
fn decode_outputs(
    outputs: Option<&[WireOutput<'_>]>,
    default: bool,
    io: &ModelIo,
) -> Result<bool, CodecError> {
    let mut output_binary = default;
    let mut named = false;
    for output in outputs.into_iter().flatten() {
        let name = output.name.0.as_ref();
        if name != io.output_name {
            return Err(CodecError::UnknownOutput {
                name: name.to_owned(),
                expected: io.output_name.clone(),
            });
        }
        if named {
            return Err(CodecError::DuplicateOutput {
                name: name.to_owned(),
            });
        }
        named = true;
        let Some(params) = &output.parameters else {
            continue;
        };
        if params.shared_memory_region.is_some() {
            return Err(CodecError::SharedMemory {
                tensor: "output",
                name: name.to_owned(),
            });
        }
        if params.classification.is_some_and(|k| k != 0) {
            return Err(CodecError::Classification {
                name: name.to_owned(),
            });
        }
        if let Some(b) = params.binary_data {
            output_binary = b;
        }
    }
    Ok(output_binary)
}

/// Checks one input against the model and takes its values, from `data` or from the front
/// of `binary`. Returns (rows, unbatched, values).
fn decode_input(
    input: WireInput<'_>,
    have_header_len: bool,
    binary: &mut &[u8],
    io: &ModelIo,
) -> Result<(usize, bool, Vec<f32>), CodecError> {
    let name = input.name.0.as_ref();
    let params = input.parameters.unwrap_or_default();
    if params.shared_memory_region.is_some() {
        return Err(CodecError::SharedMemory {
            tensor: "input",
            name: name.to_owned(),
        });
    }
    match input.datatype.as_ref().map(|d| d.0.as_ref()) {
        Some("FP32") => {}
        other => {
            return Err(CodecError::Datatype {
                name: name.to_owned(),
                got: other.unwrap_or("nothing").to_owned(),
            });
        }
    }
    let Some(shape) = input.shape else {
        return Err(CodecError::Shape {
            name: name.to_owned(),
            features: io.features,
            got: "nothing".to_owned(),
        });
    };
    let (rows, unbatched) = rows_of(name, &shape, io)?;
    // Kept as u128 so no shape can overflow it; memory is only ever sized from bytes present.
    let expected = u128::from(rows) * io.features as u128;
    let values = match (input.data, params.binary_data_size) {
        (Some(_), Some(_)) => {
            return Err(CodecError::DataTwice {
                name: name.to_owned(),
            });
        }
        (None, None) => {
            return Err(CodecError::NoData {
                name: name.to_owned(),
            });
        }
        (Some(data), None) => json_values(name, data, &shape, expected)?,
        (None, Some(size)) => {
            if !have_header_len {
                return Err(CodecError::HeaderLenMissing {
                    name: name.to_owned(),
                });
            }
            binary_values(name, size, binary, &shape, expected)?
        }
    };
    if let Some(index) = values.iter().position(|v| !v.is_finite()) {
        return Err(CodecError::NonFinite {
            name: name.to_owned(),
            index,
        });
    }
    let rows = usize::try_from(rows).unwrap_or(usize::MAX);
    Ok((rows, unbatched, values))
}

/// The rows a shape holds, and whether it is a single unbatched row (`[F]`).
fn rows_of(name: &str, shape: &Dims, io: &ModelIo) -> Result<(u64, bool), CodecError> {
    let features = i64::try_from(io.features).unwrap_or(i64::MAX);
    match shape.as_slice() {
        [f] if *f == features => Ok((1, true)),
        [0, f] if *f == features => Err(CodecError::NoRows {
            name: name.to_owned(),
            shape: shape.to_string(),
        }),
        [n, f] if *n > 0 && *f == features => Ok((*n as u64, false)),
        _ => Err(CodecError::Shape {
            name: name.to_owned(),
            features: io.features,
            got: shape.to_string(),
        }),
    }
}

/// The values of a JSON `data`, checked against the shape.
fn json_values(
    name: &str,
    data: FlatData,
    shape: &Dims,
    expected: u128,
) -> Result<Vec<f32>, CodecError> {
    if data.not_numbers {
        return Err(CodecError::NotNumbers {
            name: name.to_owned(),
        });
    }
    let nesting = data.nesting();
    if data.ragged || (nesting.rank > 1 && nesting != *shape) {
        return Err(CodecError::Nesting {
            name: name.to_owned(),
            nesting: if data.ragged {
                "ragged lists".to_owned()
            } else {
                nesting.to_string()
            },
            shape: shape.to_string(),
        });
    }
    if data.values.len() as u128 != expected {
        return Err(CodecError::ValueCount {
            name: name.to_owned(),
            shape: shape.to_string(),
            expected,
            got: data.values.len(),
        });
    }
    Ok(data.values)
}

/// `size` bytes of little-endian f32 taken from the front of `binary`.
fn binary_values(
    name: &str,
    size: u64,
    binary: &mut &[u8],
    shape: &Dims,
    expected_values: u128,
) -> Result<Vec<f32>, CodecError> {
    let expected_bytes = expected_values * 4;
    if u128::from(size) != expected_bytes {
        return Err(CodecError::BinarySize {
            name: name.to_owned(),
            got: size,
            expected: expected_bytes,
            shape: shape.to_string(),
        });
    }
    let available = binary.len();
    let take = usize::try_from(size)
        .ok()
        .filter(|&n| n <= available)
        .ok_or_else(|| CodecError::BinaryTruncated {
            name: name.to_owned(),
            needed: size,
            available,
        })?;
    let (bytes, rest) = binary.split_at(take);
    *binary = rest;
    Ok(bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}
