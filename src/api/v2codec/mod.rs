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

mod decode;
mod encode;
mod wire;

pub use crate::serve::ModelIo;
pub use decode::{decode_content_encoding, decode_infer, parse_header_len};
pub use encode::{encode_error, encode_infer};

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

impl InferRequest {
    /// The request's rows of `features` values each, one vector per row, as the batcher
    /// takes them.
    pub fn row_vecs(&self, features: usize) -> Vec<Vec<f32>> {
        self.data
            .chunks_exact(features)
            .take(self.rows)
            .map(<[f32]>::to_vec)
            .collect()
    }
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
    /// gRPC: `raw_input_contents` does not hold one entry per input.
    #[error(
        "raw_input_contents has {got} entries for {inputs} inputs (send one per input, in the \
         order of the inputs, or none)"
    )]
    RawCount {
        /// Entries sent.
        got: usize,
        /// Inputs in the request.
        inputs: usize,
    },
    /// gRPC: an input's `raw_input_contents` entry disagrees with its shape.
    #[error(
        "input {name:?}: raw_input_contents holds {got} bytes, expected {expected} bytes for \
         shape {shape} FP32"
    )]
    RawSize {
        /// The input.
        name: String,
        /// Bytes sent.
        got: usize,
        /// Bytes the shape needs.
        expected: u128,
        /// The shape sent, formatted.
        shape: String,
    },
    /// gRPC: an input given both as typed `contents` and in `raw_input_contents`.
    #[error("input {name:?}: both contents and raw_input_contents are given (send one)")]
    ContentsTwice {
        /// The input.
        name: String,
    },
    /// gRPC: an input with neither typed `contents` nor `raw_input_contents`.
    #[error("input {name:?}: no data (send contents.fp32_contents or raw_input_contents)")]
    NoContents {
        /// The input.
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
