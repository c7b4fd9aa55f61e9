//! Request and response codec for the Open Inference Protocol v2 (KServe v2, Triton HTTP),
//! including Triton's binary tensor data extension. Pure: no I/O, no HTTP types.
//!
//! The served models are MLP classifiers with one FP32 input `[batch, F]` and one FP32
//! output `[batch, C]`, described by [`ModelIo`].
//!
//! What is accepted, and why:
//! - The input `shape` is `[N, F]` with `N ≥ 1`, or `[F]` for a single unbatched row (the
//!   output shape is then `[C]`). `data` is a flat list (the protocol's form) or lists nested
//!   exactly as the shape; JSON integers are accepted as values.
//! - Binary inputs (`parameters.binary_data_size`) are little-endian f32 following the JSON
//!   header, in the order the inputs appear in it; the header's length comes from the
//!   `Inference-Header-Content-Length` header. Bytes left over after the last tensor are an
//!   error, so a wrong header length is reported instead of silently misread.
//! - Binary outputs are chosen by the request-level `parameters.binary_data_output` or the
//!   output's own `parameters.binary_data`, which overrides it (Triton's rule). tritonclient
//!   and perf_analyzer ask for binary outputs this way by default.
//! - An absent or empty `outputs` list means every output, as Triton treats it.
//! - For forward compatibility, unknown top-level keys, unknown tensor keys and unknown
//!   parameters (`sequence_id`, `priority`, custom ones) are ignored. Shared-memory
//!   tensors and classification outputs cannot be served, and ignoring them would answer
//!   something other than what was asked, so they are rejected.
//! - The request-level `parameters.timeout` is Triton's: the client's timeout in
//!   microseconds, a positive integer; anything else is an error naming the parameter. The
//!   caller clamps it to the service's own timeout.
//! - An `id`, even an empty one (perf_analyzer always sends `"id":""`), is echoed back.
//!
//! Responses put no `parameters` object on JSON outputs: Triton's C++ client (perf_analyzer)
//! treats any output `parameters` as a binary output and fails without `binary_data_size`.
//! Output values that are not finite are written as `null`, JSON having no NaN.

use std::borrow::Cow;
use std::fmt;
use std::io::{Read, Write};

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

/// What the codec needs to know about a model.
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

/// A decoded request: `rows` rows of `features` values each, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct InferRequest {
    /// The request's `id`, echoed back; `Some("")` when the client sent an empty id.
    pub id: Option<String>,
    /// Number of rows in `data` (1 when `unbatched`).
    pub rows: usize,
    /// `rows * features` finite values, row-major.
    pub data: Vec<f32>,
    /// The input shape was `[F]` rather than `[N, F]`, so the output shape is `[C]`.
    pub unbatched: bool,
    /// Answer the output as binary data (request-level `binary_data_output`, or the
    /// output's `binary_data`, which takes precedence).
    pub output_binary: bool,
    /// Put the output tensor in the response. Always true after [`decode_infer`] (an absent
    /// or empty `outputs` list means every output, one naming anything else is an error);
    /// false only for hand-built requests, giving `"outputs":[]`.
    pub output_requested: bool,
    /// The client's timeout in microseconds (request-level `parameters.timeout`), when given.
    pub timeout_us: Option<u64>,
}

/// Why a request body could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The JSON header is not well-formed JSON.
    #[error("invalid JSON at line {line} column {column}: {message}")]
    Json {
        /// 1-based line of the error.
        line: usize,
        /// 1-based column of the error.
        column: usize,
        /// What the parser found.
        message: String,
    },
    /// The JSON is well-formed but a field has the wrong type or is missing.
    #[error("invalid request at line {line} column {column}: {message}")]
    Schema {
        /// 1-based line of the error.
        line: usize,
        /// 1-based column of the error.
        column: usize,
        /// What was wrong.
        message: String,
    },
    /// The `Inference-Header-Content-Length` header is not a number.
    #[error("invalid Inference-Header-Content-Length {value:?}: expected a byte count")]
    HeaderLenInvalid {
        /// The header's value, lossily decoded.
        value: String,
    },
    /// The `Inference-Header-Content-Length` header is larger than the body.
    #[error(
        "Inference-Header-Content-Length {header_bytes} exceeds the body of {body_bytes} bytes"
    )]
    HeaderLenBeyondBody {
        /// The header's value.
        header_bytes: usize,
        /// The body's length.
        body_bytes: usize,
    },
    /// An input the model does not have.
    #[error("unknown input {name:?} (the model takes {expected:?})")]
    UnknownInput {
        /// The name sent.
        name: String,
        /// The model's input.
        expected: String,
    },
    /// The model's input is not in the request.
    #[error("missing input {name:?}")]
    MissingInput {
        /// The model's input.
        name: String,
    },
    /// The same input appears twice.
    #[error("input {name:?} is given more than once")]
    DuplicateInput {
        /// The input.
        name: String,
    },
    /// An output the model does not produce.
    #[error("unknown output {name:?} (the model produces {expected:?})")]
    UnknownOutput {
        /// The name requested.
        name: String,
        /// The model's output.
        expected: String,
    },
    /// The same output is requested twice.
    #[error("output {name:?} is requested more than once")]
    DuplicateOutput {
        /// The output.
        name: String,
    },
    /// The input's datatype is not FP32 (or missing).
    #[error("input {name:?}: expected datatype FP32, got {got} (accepted: FP32)")]
    Datatype {
        /// The input.
        name: String,
        /// The datatype sent, or `nothing`.
        got: String,
    },
    /// The input's shape is neither `[N, F]` nor `[F]`.
    #[error("input {name:?}: expected shape [-1, {features}], got {got}")]
    Shape {
        /// The input.
        name: String,
        /// The model's row width.
        features: usize,
        /// The shape sent, formatted, or `nothing`.
        got: String,
    },
    /// The input's shape has no rows.
    #[error("input {name:?}: shape {shape} has no rows (send at least one)")]
    NoRows {
        /// The input.
        name: String,
        /// The shape sent, formatted.
        shape: String,
    },
    /// `data` holds a different number of values than the shape needs.
    #[error("input {name:?}: shape {shape} needs {expected} values, got {got}")]
    ValueCount {
        /// The input.
        name: String,
        /// The shape sent, formatted.
        shape: String,
        /// Values the shape needs.
        expected: u128,
        /// Values sent.
        got: usize,
    },
    /// `data` is not a list of numbers.
    #[error("input {name:?}: data must be a flat or nested list of numbers")]
    NotNumbers {
        /// The input.
        name: String,
    },
    /// `data` is nested, but not as the shape says.
    #[error(
        "input {name:?}: data nested as {nesting} does not match shape {shape} \
         (send a flat list or lists nested as the shape)"
    )]
    Nesting {
        /// The input.
        name: String,
        /// The nesting found, formatted, or `ragged lists`.
        nesting: String,
        /// The shape sent, formatted.
        shape: String,
    },
    /// A value is NaN or infinite (binary data, or a JSON number beyond f32's range).
    #[error("input {name:?}: value {index} is not a finite number")]
    NonFinite {
        /// The input.
        name: String,
        /// Row-major index of the first such value.
        index: usize,
    },
    /// Neither `data` nor `binary_data_size` was given.
    #[error("input {name:?}: no data (send data or parameters.binary_data_size)")]
    NoData {
        /// The input.
        name: String,
    },
    /// Both `data` and `binary_data_size` were given.
    #[error("input {name:?}: both data and parameters.binary_data_size are given (send one)")]
    DataTwice {
        /// The input.
        name: String,
    },
    /// `binary_data_size` disagrees with the shape.
    #[error(
        "input {name:?}: binary_data_size {got}, expected {expected} bytes for shape {shape} FP32"
    )]
    BinarySize {
        /// The input.
        name: String,
        /// The size sent.
        got: u64,
        /// Bytes the shape needs.
        expected: u128,
        /// The shape sent, formatted.
        shape: String,
    },
    /// Binary input data without an `Inference-Header-Content-Length` header.
    #[error(
        "input {name:?}: binary_data_size is given but the Inference-Header-Content-Length \
         header is missing"
    )]
    HeaderLenMissing {
        /// The input.
        name: String,
    },
    /// The body ends before the input's binary data does.
    #[error(
        "input {name:?}: binary data needs {needed} bytes, only {available} follow the JSON header"
    )]
    BinaryTruncated {
        /// The input.
        name: String,
        /// Bytes the input declares.
        needed: u64,
        /// Bytes left in the body.
        available: usize,
    },
    /// Bytes after the last binary tensor (or after a JSON-only header).
    #[error("binary data has {extra} bytes after the last tensor")]
    TrailingBytes {
        /// Bytes left over.
        extra: usize,
    },
    /// A shared-memory tensor; this server reads tensors from the body only.
    #[error(
        "{tensor} {name:?}: shared memory is not supported (send the data in the request body)"
    )]
    SharedMemory {
        /// `input` or `output`.
        tensor: &'static str,
        /// The tensor.
        name: String,
    },
    /// A request-level `parameters.timeout` that is not a positive integer.
    #[error("parameters.timeout: expected a positive integer number of microseconds, got {got}")]
    InvalidTimeout {
        /// The value sent, as JSON.
        got: String,
    },
    /// A classification output (`parameters.classification`), which this server does not make.
    #[error("output {name:?}: classification is not supported (request the output itself)")]
    Classification {
        /// The output.
        name: String,
    },
    /// A `Content-Encoding` other than identity, gzip and deflate.
    #[error("unsupported Content-Encoding {encoding:?} (accepted: identity, gzip, deflate)")]
    UnsupportedEncoding {
        /// The header's value.
        encoding: String,
    },
    /// A compressed body that does not decompress.
    #[error("invalid {encoding} body: {message}")]
    Decompress {
        /// `gzip` or `deflate`.
        encoding: &'static str,
        /// What the decompressor reported.
        message: String,
    },
    /// A compressed body larger than allowed once decompressed.
    #[error("decompressed body exceeds {limit_bytes} bytes")]
    DecompressedTooLarge {
        /// The limit.
        limit_bytes: usize,
    },
}

impl CodecError {
    /// The HTTP status to answer with: 415 for an unsupported `Content-Encoding`, 413 for a
    /// body too large once decompressed, 400 otherwise.
    pub fn status(&self) -> u16 {
        match self {
            CodecError::UnsupportedEncoding { .. } => 415,
            CodecError::DecompressedTooLarge { .. } => 413,
            _ => 400,
        }
    }

    fn from_json(e: &serde_json::Error) -> Self {
        let (line, column) = (e.line(), e.column());
        let full = e.to_string();
        let suffix = format!(" at line {line} column {column}");
        let message = full.strip_suffix(&suffix).unwrap_or(&full).to_owned();
        match e.classify() {
            serde_json::error::Category::Data => CodecError::Schema {
                line,
                column,
                message,
            },
            _ => CodecError::Json {
                line,
                column,
                message,
            },
        }
    }
}

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
    let (json, binary) = match header_len {
        None => (body, None),
        Some(n) if n > body.len() => {
            return Err(CodecError::HeaderLenBeyondBody {
                header_bytes: n,
                body_bytes: body.len(),
            });
        }
        Some(n) => {
            let (json, rest) = body.split_at(n);
            (json, Some(rest))
        }
    };
    let wire: WireRequest<'_> =
        serde_json::from_slice(json).map_err(|e| CodecError::from_json(&e))?;

    let mut binary_rest = binary.unwrap_or(&[]);
    let mut decoded: Option<(usize, bool, Vec<f32>)> = None;
    for input in wire.inputs.into_iter().flatten() {
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
    let Some((rows, unbatched, data)) = decoded else {
        return Err(CodecError::MissingInput {
            name: io.input_name.clone(),
        });
    };
    if !binary_rest.is_empty() {
        return Err(CodecError::TrailingBytes {
            extra: binary_rest.len(),
        });
    }

    let params = wire.parameters.unwrap_or_default();
    let timeout_us = match params.timeout {
        None => None,
        Some(v) => match v.as_u64() {
            Some(us) if us > 0 => Some(us),
            _ => return Err(CodecError::InvalidTimeout { got: v.to_string() }),
        },
    };
    let mut output_binary = params.binary_data_output.unwrap_or(false);
    let mut named = false;
    for output in wire.outputs.iter().flatten() {
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
        if let Some(params) = &output.parameters {
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
    }

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
    let features = i64::try_from(io.features).unwrap_or(i64::MAX);
    let (rows, unbatched) = match shape.as_slice() {
        [f] if *f == features => (1, true),
        [0, f] if *f == features => {
            return Err(CodecError::NoRows {
                name: name.to_owned(),
                shape: shape.to_string(),
            });
        }
        [n, f] if *n > 0 && *f == features => (*n as u64, false),
        _ => {
            return Err(CodecError::Shape {
                name: name.to_owned(),
                features: io.features,
                got: shape.to_string(),
            });
        }
    };
    // Kept as u128 so no shape can overflow it; memory is only ever sized from bytes present.
    let expected_values = u128::from(rows) * io.features as u128;

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
        (Some(data), None) => {
            if data.not_numbers {
                return Err(CodecError::NotNumbers {
                    name: name.to_owned(),
                });
            }
            let nesting = data.nesting();
            if data.ragged || (nesting.rank > 1 && nesting != shape) {
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
            if data.values.len() as u128 != expected_values {
                return Err(CodecError::ValueCount {
                    name: name.to_owned(),
                    shape: shape.to_string(),
                    expected: expected_values,
                    got: data.values.len(),
                });
            }
            data.values
        }
        (None, Some(size)) => {
            if !have_header_len {
                return Err(CodecError::HeaderLenMissing {
                    name: name.to_owned(),
                });
            }
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
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
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

/// Encodes a response. `probs` holds `req.rows * io.classes` values, row-major. Returns the
/// body and, when binary output was asked for, `Some(json_header_len)` to send as the
/// `Inference-Header-Content-Length` response header (the body is then the JSON header
/// followed by the output's little-endian f32 bytes; send it as `application/octet-stream`,
/// otherwise as `application/json`).
pub fn encode_infer(
    model_name: &str,
    model_version: &str,
    req: &InferRequest,
    probs: &[f32],
    io: &ModelIo,
) -> (Vec<u8>, Option<usize>) {
    debug_assert_eq!(
        probs.len(),
        req.rows * io.classes,
        "probs must be rows * classes"
    );
    let binary = req.output_requested && req.output_binary;
    let per_value = if binary { 4 } else { 14 };
    let mut buf = Vec::with_capacity(
        160 + model_name.len()
            + model_version.len()
            + io.output_name.len()
            + req.id.as_ref().map_or(0, String::len)
            + probs.len() * per_value,
    );
    buf.extend_from_slice(b"{\"model_name\":");
    push_json(&mut buf, model_name);
    buf.extend_from_slice(b",\"model_version\":");
    push_json(&mut buf, model_version);
    if let Some(id) = &req.id {
        buf.extend_from_slice(b",\"id\":");
        push_json(&mut buf, id.as_str());
    }
    buf.extend_from_slice(b",\"outputs\":[");
    if req.output_requested {
        buf.extend_from_slice(b"{\"name\":");
        push_json(&mut buf, io.output_name.as_str());
        buf.extend_from_slice(b",\"datatype\":\"FP32\",\"shape\":[");
        if req.unbatched {
            push_display(&mut buf, io.classes);
        } else {
            push_display(&mut buf, req.rows);
            buf.push(b',');
            push_display(&mut buf, io.classes);
        }
        buf.push(b']');
        if binary {
            buf.extend_from_slice(b",\"parameters\":{\"binary_data_size\":");
            push_display(&mut buf, std::mem::size_of_val(probs));
            buf.push(b'}');
        } else {
            buf.extend_from_slice(b",\"data\":");
            push_json(&mut buf, probs);
        }
        buf.push(b'}');
    }
    buf.extend_from_slice(b"]}");
    if !binary {
        return (buf, None);
    }
    let header_len = buf.len();
    if cfg!(target_endian = "little") {
        buf.extend_from_slice(bytemuck::cast_slice(probs));
    } else {
        for v in probs {
            buf.extend_from_slice(&v.to_le_bytes());
        }
    }
    (buf, Some(header_len))
}

/// The protocol's error body, `{"error": message}`, which tritonclient shows to its user.
pub fn encode_error(message: &str) -> Vec<u8> {
    let mut buf = Vec::with_capacity(message.len() + 16);
    buf.extend_from_slice(b"{\"error\":");
    push_json(&mut buf, message);
    buf.push(b'}');
    buf
}

fn push_json<T: Serialize + ?Sized>(buf: &mut Vec<u8>, value: &T) {
    // Strings and f32 slices always serialize, and writing to a Vec cannot fail.
    let written = serde_json::to_writer(&mut *buf, value);
    debug_assert!(written.is_ok());
}

fn push_display(buf: &mut Vec<u8>, value: usize) {
    // Writing to a Vec cannot fail.
    let written = write!(buf, "{value}");
    debug_assert!(written.is_ok());
}

// ---- wire types ------------------------------------------------------------------------

#[derive(Deserialize)]
struct WireRequest<'a> {
    #[serde(borrow)]
    id: Option<JsonStr<'a>>,
    parameters: Option<WireRequestParams>,
    #[serde(borrow)]
    inputs: Option<Vec<WireInput<'a>>>,
    #[serde(borrow)]
    outputs: Option<Vec<WireOutput<'a>>>,
}

#[derive(Deserialize, Default)]
struct WireRequestParams {
    binary_data_output: Option<bool>,
    /// Any JSON value, `null` included, so that every wrong one is reported.
    #[serde(default, deserialize_with = "any_value")]
    timeout: Option<serde_json::Value>,
}

fn any_value<'de, D: Deserializer<'de>>(d: D) -> Result<Option<serde_json::Value>, D::Error> {
    serde_json::Value::deserialize(d).map(Some)
}

#[derive(Deserialize)]
struct WireInput<'a> {
    #[serde(borrow)]
    name: JsonStr<'a>,
    #[serde(borrow)]
    datatype: Option<JsonStr<'a>>,
    shape: Option<Dims>,
    parameters: Option<WireInputParams>,
    data: Option<FlatData>,
}

#[derive(Deserialize, Default)]
struct WireInputParams {
    binary_data_size: Option<u64>,
    shared_memory_region: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct WireOutput<'a> {
    #[serde(borrow)]
    name: JsonStr<'a>,
    parameters: Option<WireOutputParams>,
}

#[derive(Deserialize)]
struct WireOutputParams {
    binary_data: Option<bool>,
    classification: Option<u64>,
    shared_memory_region: Option<IgnoredAny>,
}

/// A JSON string borrowed from the body unless it has escapes.
struct JsonStr<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for JsonStr<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = JsonStr<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(JsonStr(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(JsonStr(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(JsonStr(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

const MAX_RANK: usize = 8;

/// A tensor shape or data nesting held inline (no allocation); dimensions past
/// `MAX_RANK` are counted but not kept.
#[derive(Clone, Copy, Default)]
struct Dims {
    dims: [i64; MAX_RANK],
    rank: usize,
}

impl Dims {
    fn as_slice(&self) -> &[i64] {
        &self.dims[..self.rank.min(MAX_RANK)]
    }
}

impl PartialEq for Dims {
    fn eq(&self, other: &Self) -> bool {
        self.rank == other.rank && self.as_slice() == other.as_slice()
    }
}

impl fmt::Display for Dims {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, d) in self.as_slice().iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{d}")?;
        }
        if self.rank > MAX_RANK {
            write!(f, ", ... ({} dimensions)", self.rank)?;
        }
        f.write_str("]")
    }
}

impl<'de> Deserialize<'de> for Dims {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Dims;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("shape as a list of integers")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Dims, A::Error> {
                let mut out = Dims::default();
                while let Some(d) = seq.next_element::<i64>()? {
                    if out.rank < MAX_RANK {
                        out.dims[out.rank] = d;
                    }
                    out.rank += 1;
                }
                Ok(out)
            }
        }
        d.deserialize_seq(V)
    }
}

/// `data`, flattened row-major into f32 while parsing, with its nesting recorded so it can
/// be checked against the shape once the shape is known (keys come in any order).
struct FlatData {
    values: Vec<f32>,
    /// Length of the lists at each depth (`-1`: none seen yet at that depth).
    list_lens: [i64; MAX_RANK],
    /// Depth of the numbers (all must be at one depth).
    leaf_depth: Option<usize>,
    ragged: bool,
    not_numbers: bool,
}

impl FlatData {
    fn nesting(&self) -> Dims {
        let mut out = Dims::default();
        for &len in self.list_lens.iter().take_while(|&&l| l >= 0) {
            out.dims[out.rank] = len;
            out.rank += 1;
        }
        out
    }

    fn push_number(&mut self, depth: usize, v: f32) {
        if depth == 0 {
            self.not_numbers = true;
            return;
        }
        match self.leaf_depth {
            None => self.leaf_depth = Some(depth),
            Some(d) if d != depth => self.ragged = true,
            Some(_) => {}
        }
        self.values.push(v);
    }
}

impl<'de> Deserialize<'de> for FlatData {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut out = FlatData {
            // Enough for typical single-row requests without regrowing.
            values: Vec::with_capacity(128),
            list_lens: [-1; MAX_RANK],
            leaf_depth: None,
            ragged: false,
            not_numbers: false,
        };
        Node {
            sink: &mut out,
            depth: 0,
        }
        .deserialize(d)?;
        Ok(out)
    }
}

/// One JSON value inside `data`, at `depth` lists deep.
struct Node<'s> {
    sink: &'s mut FlatData,
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for Node<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Node<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of numbers")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let sink = self.sink;
        let mut len: i64 = 0;
        while seq
            .next_element_seed(Node {
                sink: &mut *sink,
                depth: self.depth + 1,
            })?
            .is_some()
        {
            len += 1;
        }
        match sink.list_lens.get_mut(self.depth) {
            Some(slot) if *slot < 0 => *slot = len,
            Some(slot) if *slot != len => sink.ragged = true,
            Some(_) => {}
            None => sink.ragged = true,
        }
        Ok(())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.sink.push_number(self.depth, v as f32);
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.sink.push_number(self.depth, v as f32);
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.sink.push_number(self.depth, v as f32);
        Ok(())
    }

    // Anything else is recorded rather than failed on, so the error can name the input
    // (its name may come after `data` in the object).
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        self.sink.not_numbers = true;
        Ok(())
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        self.sink.not_numbers = true;
        Ok(())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.sink.not_numbers = true;
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.sink.not_numbers = true;
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io() -> ModelIo {
        ModelIo {
            input_name: "input".into(),
            features: 3,
            output_name: "probabilities".into(),
            classes: 2,
        }
    }

    fn decode(json: &str) -> Result<InferRequest, CodecError> {
        decode_infer(json.as_bytes(), None, &io())
    }

    #[test]
    fn names_are_borrowed_unless_escaped() {
        let w: WireOutput<'_> = serde_json::from_str(r#"{"name":"probabilities"}"#).unwrap();
        assert!(matches!(w.name.0, Cow::Borrowed("probabilities")));
        let w: WireOutput<'_> = serde_json::from_str(r#"{"name":"prob\u0061bilities"}"#).unwrap();
        assert!(matches!(w.name.0, Cow::Owned(ref s) if s == "probabilities"));
    }

    #[test]
    fn data_nesting_is_recorded() {
        let d: FlatData = serde_json::from_str("[[1,2,3],[4,5,6]]").unwrap();
        assert_eq!(d.values, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        assert_eq!(d.nesting().as_slice(), [2, 3]);
        assert!(!d.ragged && !d.not_numbers);

        for ragged in ["[[1,2],[3]]", "[1,[2,3]]", "[[[1]],[2]]"] {
            let d: FlatData = serde_json::from_str(ragged).unwrap();
            assert!(d.ragged, "{ragged}");
        }
        for bad in [
            "5",
            "[1,\"2\"]",
            "[true]",
            "[null]",
            "[{\"a\":1}]",
            "{\"a\":[1]}",
        ] {
            let d: FlatData = serde_json::from_str(bad).unwrap();
            assert!(d.not_numbers, "{bad}");
        }
        let d: FlatData = serde_json::from_str("[[[[[[[[[1]]]]]]]]]").unwrap();
        assert!(d.ragged, "nesting deeper than MAX_RANK");
    }

    #[test]
    fn dims_display_and_rank_overflow() {
        let d: Dims = serde_json::from_str("[2, -1]").unwrap();
        assert_eq!(d.to_string(), "[2, -1]");
        let d: Dims = serde_json::from_str("[1,2,3,4,5,6,7,8,9,10]").unwrap();
        assert_eq!(d.rank, 10);
        assert_eq!(
            d.to_string(),
            "[1, 2, 3, 4, 5, 6, 7, 8, ... (10 dimensions)]"
        );
        assert!(serde_json::from_str::<Dims>("[2.5]").is_err());
    }

    #[test]
    fn json_error_keeps_position_out_of_message() {
        let e = decode("{\"inputs\": [").unwrap_err();
        match e {
            CodecError::Json {
                line,
                column,
                ref message,
            } => {
                assert_eq!((line, column), (1, 12));
                assert!(!message.contains("at line"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        let e = decode(r#"{"inputs":[{"name":"input","shape":"x"}]}"#).unwrap_err();
        assert!(matches!(e, CodecError::Schema { .. }), "{e:?}");
        assert!(
            e.to_string()
                .starts_with("invalid request at line 1 column"),
            "{e}"
        );
    }

    #[test]
    fn huge_shape_does_not_overflow_or_allocate() {
        let e = decode(
            r#"{"inputs":[{"name":"input","shape":[9223372036854775807,3],"datatype":"FP32","data":[1,2,3]}]}"#,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "input \"input\": shape [9223372036854775807, 3] needs 27670116110564327421 values, got 3"
        );
        let body = br#"{"inputs":[{"name":"input","shape":[9223372036854775807,3],"datatype":"FP32","parameters":{"binary_data_size":12}}]}"#;
        let e = decode_infer(body, Some(body.len()), &io()).unwrap_err();
        assert!(matches!(e, CodecError::BinarySize { .. }), "{e:?}");
    }

    #[test]
    fn header_len_parsing() {
        assert_eq!(parse_header_len(b"123").unwrap(), 123);
        assert_eq!(parse_header_len(b" 7 ").unwrap(), 7);
        for bad in [&b""[..], b"-1", b"+1", b"1e3", b"abc", b"\xff"] {
            let e = parse_header_len(bad).unwrap_err();
            assert_eq!(e.status(), 400);
        }
        assert_eq!(
            parse_header_len(b"abc").unwrap_err().to_string(),
            "invalid Inference-Header-Content-Length \"abc\": expected a byte count"
        );
    }
}
