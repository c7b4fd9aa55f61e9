//! The client side of the v2 inference protocol: reading a model's metadata, building
//! requests (JSON tensors, or Triton's binary tensor extension) and decoding answers.

use serde_json::Value;

use super::dto::InferRequest;
use super::{Client, ClientError, RawResponse, check_status, path_segment};
use crate::util::rng::Rng;

/// Why a v2 document (model metadata, an answer, an input file, a request body) cannot be
/// used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum V2Error {
    #[error("the model's metadata lists no inputs")]
    NoInputs,
    #[error("the model's input has no name")]
    InputUnnamed,
    #[error("input {input} has datatype {datatype}; this client sends FP32 only")]
    Datatype { input: String, datatype: String },
    #[error("input {input} has shape {shape}; expected [-1, FEATURES]")]
    InputShape { input: String, shape: Value },
    #[error("the model's metadata lists no outputs")]
    NoOutputs,
    #[error("the model's output has no name")]
    OutputUnnamed,
    #[error("Inference-Header-Content-Length {header_len} exceeds the body of {body_len} bytes")]
    HeaderLength { header_len: usize, body_len: usize },
    #[error("invalid JSON response: {0}")]
    ResponseJson(serde_json::Error),
    #[error("the response has no outputs list")]
    NoOutputList,
    #[error("output {output}: binary_data_size {size} exceeds the {left} bytes left")]
    BinaryOverrun {
        output: String,
        size: usize,
        left: usize,
    },
    #[error("output {output}: binary_data_size {size} is not a multiple of 4 (FP32)")]
    BinaryNotFp32 { output: String, size: usize },
    #[error("output {output}: {source}")]
    Output {
        output: String,
        source: Box<V2Error>,
    },
    #[error("{0} bytes of binary data follow the last output")]
    TrailingBinary(usize),
    #[error("expected numbers, found {0}")]
    NotNumbers(Value),
    #[error("invalid JSON: {0}")]
    InputJson(serde_json::Error),
    #[error("expected a list of rows (lists of numbers) or a v2 request body with \"inputs\"")]
    ObjectWithoutInputs,
    #[error("the list of rows is empty")]
    NoRows,
    #[error("row {row}: expected numbers, found {value}")]
    RowNotNumbers { row: usize, value: Value },
    #[error("row {row}: has {got} values, but model {model} takes {features} per row")]
    RowWidth {
        row: usize,
        got: usize,
        model: String,
        features: usize,
    },
    #[error("a flat list is one row: it has {got} values, but model {model} takes {features}")]
    FlatWidth {
        got: usize,
        model: String,
        features: usize,
    },
    #[error("expected a list of rows (lists of numbers), or one row of numbers")]
    MixedList,
    #[error("expected a list of rows (lists of numbers) or a v2 request body")]
    NotRowsOrBody,
    #[error("\"inputs\" must be a list")]
    InputsNotList,
    #[error("\"inputs\" is empty")]
    InputsEmpty,
    #[error("the body refers to binary data it does not hold")]
    BinaryReference,
    #[error("input {input}: {values} values is not a whole number of rows of {features}")]
    NotWholeRows {
        input: String,
        values: usize,
        features: usize,
    },
}

/// What a client needs to know about a served model, from `GET /v2/models/MODEL`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ModelInfo {
    /// Model name.
    pub name: String,
    /// Its input tensor.
    pub input_name: String,
    /// Values per input row.
    pub features: usize,
    /// Its output tensor.
    pub output_name: String,
    /// Values per output row (classes), when the metadata says.
    pub classes: Option<usize>,
}

impl ModelInfo {
    /// Reads a v2 model metadata document: the first input's last dimension is the row
    /// width; the first output is the class probabilities.
    pub(crate) fn from_metadata(meta: &Value) -> Result<Self, V2Error> {
        let name = meta["name"].as_str().unwrap_or_default().to_string();
        let input = meta["inputs"].get(0).ok_or(V2Error::NoInputs)?;
        let input_name = input["name"]
            .as_str()
            .ok_or(V2Error::InputUnnamed)?
            .to_string();
        if let Some(dt) = input["datatype"].as_str()
            && dt != "FP32"
        {
            return Err(V2Error::Datatype {
                input: input_name,
                datatype: dt.to_string(),
            });
        }
        let features = input["shape"]
            .as_array()
            .and_then(|s| s.last())
            .and_then(Value::as_i64)
            .filter(|&f| f > 0)
            .ok_or_else(|| V2Error::InputShape {
                input: input_name.clone(),
                shape: input["shape"].clone(),
            })? as usize;
        let output = meta["outputs"].get(0).ok_or(V2Error::NoOutputs)?;
        let output_name = output["name"]
            .as_str()
            .ok_or(V2Error::OutputUnnamed)?
            .to_string();
        let classes = output["shape"]
            .as_array()
            .and_then(|s| s.last())
            .and_then(Value::as_i64)
            .filter(|&c| c > 0)
            .map(|c| c as usize);
        Ok(ModelInfo {
            name,
            input_name,
            features,
            output_name,
            classes,
        })
    }
}

/// Fetches a model's metadata.
pub(crate) fn model_info(client: &Client, model: &str) -> Result<ModelInfo, ClientError> {
    let path = format!("/v2/models/{}", path_segment(model));
    let meta = client.get(&path)?;
    ModelInfo::from_metadata(&meta).map_err(|message| ClientError::BadResponse {
        method: "GET",
        url: client.url(&path),
        message: message.to_string(),
    })
}

/// A request body ready to send, with its `Inference-Header-Content-Length` when it carries
/// binary tensors.
#[derive(Debug, Clone, PartialEq)]
pub struct EncodedRequest {
    /// The body.
    pub body: Vec<u8>,
    /// Length of the JSON header when binary data follows it.
    pub header_len: Option<usize>,
}

impl EncodedRequest {
    /// The headers its body needs: JSON, or binary data after a JSON header of `header_len`
    /// bytes (Triton's `Inference-Header-Content-Length`).
    pub(crate) fn headers(&self) -> Vec<(&'static str, String)> {
        match self.header_len {
            Some(n) => vec![
                ("content-type", "application/octet-stream".into()),
                ("inference-header-content-length", n.to_string()),
            ],
            None => vec![("content-type", "application/json".into())],
        }
    }
}

/// A JSON request for `rows` rows of `data` (row-major); `binary_output` asks for the
/// output as binary data.
pub(crate) fn json_request(
    info: &ModelInfo,
    data: &[f32],
    rows: usize,
    binary_output: bool,
) -> Vec<u8> {
    let (input, output) = (info.input_name.as_str(), info.output_name.as_str());
    InferRequest::inline(input, output, [rows, info.features], data, binary_output).to_bytes()
}

/// A request with the input as raw little-endian f32 after the JSON header, asking for the
/// output the same way (Triton's binary tensor data extension).
pub(crate) fn binary_request(info: &ModelInfo, data: &[f32], rows: usize) -> EncodedRequest {
    let (input, output) = (info.input_name.as_str(), info.output_name.as_str());
    let header = InferRequest::binary(input, output, [rows, info.features], data.len() * 4);
    let header = header.to_bytes();
    let header_len = header.len();
    let mut body = header;
    body.reserve(data.len() * 4);
    for v in data {
        body.extend_from_slice(&v.to_le_bytes());
    }
    EncodedRequest {
        body,
        header_len: Some(header_len),
    }
}

/// Sends an inference request and checks its status.
pub fn infer(
    client: &Client,
    model: &str,
    req: &EncodedRequest,
) -> Result<RawResponse, ClientError> {
    let path = infer_path(model);
    let owned = req.headers();
    let headers: Vec<(&str, &str)> = owned.iter().map(|(k, v)| (*k, v.as_str())).collect();
    check_status(client.send("POST", &path, Some(&req.body), &headers)?)
}

/// The v2 inference path of `model`.
pub(crate) fn infer_path(model: &str) -> String {
    format!("/v2/models/{}/infer", path_segment(model))
}

/// One output tensor of a response, its values decoded whichever way they came.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct OutputTensor {
    /// Name.
    pub name: String,
    /// Shape as sent.
    pub shape: Vec<i64>,
    /// Values, row-major.
    pub data: Vec<f32>,
    /// True when they came as binary data.
    pub binary: bool,
}

/// A decoded response: its JSON (with binary outputs' values written into `data`, so that it
/// prints as one document) and its outputs.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DecodedResponse {
    /// The response as JSON; binary outputs gain a `data` list beside their
    /// `binary_data_size`.
    pub json: Value,
    /// The output tensors.
    pub outputs: Vec<OutputTensor>,
}

/// Decodes a v2 inference response, JSON or with binary outputs.
pub(crate) fn decode_response(raw: &RawResponse) -> Result<DecodedResponse, V2Error> {
    let (header, mut rest) = match raw.header_len {
        Some(n) if n <= raw.body.len() => (&raw.body[..n], &raw.body[n..]),
        Some(n) => {
            return Err(V2Error::HeaderLength {
                header_len: n,
                body_len: raw.body.len(),
            });
        }
        None => (&raw.body[..], &[][..]),
    };
    let mut json: Value = serde_json::from_slice(header).map_err(V2Error::ResponseJson)?;
    let mut outputs = Vec::new();
    let list = json["outputs"]
        .as_array_mut()
        .ok_or(V2Error::NoOutputList)?;
    for out in list.iter_mut() {
        let name = out["name"].as_str().unwrap_or_default().to_string();
        let shape: Vec<i64> = out["shape"]
            .as_array()
            .map(|s| s.iter().filter_map(Value::as_i64).collect())
            .unwrap_or_default();
        let binary_size = out["parameters"]["binary_data_size"].as_u64();
        let (data, binary) = match binary_size {
            Some(size) => {
                let size = size as usize;
                if size > rest.len() {
                    return Err(V2Error::BinaryOverrun {
                        output: name,
                        size,
                        left: rest.len(),
                    });
                }
                if !size.is_multiple_of(4) {
                    return Err(V2Error::BinaryNotFp32 { output: name, size });
                }
                let (bytes, tail) = rest.split_at(size);
                rest = tail;
                let values: Vec<f32> = bytes
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect();
                out["data"] = Value::Array(values.iter().map(|&v| f32_json(v)).collect());
                (values, true)
            }
            None => {
                let mut values = Vec::new();
                flatten_numbers(&out["data"], &mut values).map_err(|e| V2Error::Output {
                    output: name.clone(),
                    source: Box::new(e),
                })?;
                (values, false)
            }
        };
        outputs.push(OutputTensor {
            name,
            shape,
            data,
            binary,
        });
    }
    if !rest.is_empty() {
        return Err(V2Error::TrailingBinary(rest.len()));
    }
    Ok(DecodedResponse { json, outputs })
}

/// An f32 as JSON with its shortest decimal form (`0.1`, not `0.10000000149011612`), the way
/// the daemon writes JSON outputs; `null` when not finite.
fn f32_json(v: f32) -> Value {
    format!("{v}")
        .parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
        .map_or(Value::Null, Value::Number)
}

/// Appends the numbers of a flat or nested JSON list (`null` reads as NaN).
pub(crate) fn flatten_numbers(v: &Value, out: &mut Vec<f32>) -> Result<(), V2Error> {
    match v {
        Value::Array(items) => {
            for item in items {
                flatten_numbers(item, out)?;
            }
            Ok(())
        }
        Value::Number(n) => {
            out.push(n.as_f64().unwrap_or(f64::NAN) as f32);
            Ok(())
        }
        Value::Null => {
            out.push(f32::NAN);
            Ok(())
        }
        other => Err(V2Error::NotNumbers(other.clone())),
    }
}

/// What an input file holds.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum InputFile {
    /// Rows of numbers, row-major.
    Rows {
        /// `rows * features` values.
        data: Vec<f32>,
        /// Number of rows.
        rows: usize,
    },
    /// A whole v2 request body, sent as it is (or re-encoded for `--binary`).
    Body(Value),
}

/// Reads an input file: a JSON list of rows (lists of numbers), one row as a flat list, or
/// a full v2 request body (an object with `inputs`).
pub(crate) fn parse_input_file(text: &str, info: &ModelInfo) -> Result<InputFile, V2Error> {
    // serde's message ends with the position: "… at line 1 column 10".
    let v: Value = serde_json::from_str(text).map_err(V2Error::InputJson)?;
    match &v {
        Value::Object(m) if m.contains_key("inputs") => Ok(InputFile::Body(v)),
        Value::Object(_) => Err(V2Error::ObjectWithoutInputs),
        Value::Array(items) => {
            if items.is_empty() {
                return Err(V2Error::NoRows);
            }
            let nested = items.iter().all(Value::is_array);
            let flat = items.iter().all(Value::is_number);
            let mut data = Vec::new();
            if nested {
                for (i, row) in items.iter().enumerate() {
                    let before = data.len();
                    for x in row.as_array().into_iter().flatten() {
                        let n = x.as_f64().ok_or_else(|| V2Error::RowNotNumbers {
                            row: i + 1,
                            value: x.clone(),
                        })?;
                        data.push(n as f32);
                    }
                    let got = data.len() - before;
                    if got != info.features {
                        return Err(V2Error::RowWidth {
                            row: i + 1,
                            got,
                            model: info.name.clone(),
                            features: info.features,
                        });
                    }
                }
                Ok(InputFile::Rows {
                    rows: items.len(),
                    data,
                })
            } else if flat {
                data.extend(items.iter().filter_map(Value::as_f64).map(|x| x as f32));
                if data.len() != info.features {
                    return Err(V2Error::FlatWidth {
                        got: data.len(),
                        model: info.name.clone(),
                        features: info.features,
                    });
                }
                Ok(InputFile::Rows { rows: 1, data })
            } else {
                Err(V2Error::MixedList)
            }
        }
        _ => Err(V2Error::NotRowsOrBody),
    }
}

/// Takes the rows out of a full v2 request body (to re-encode it as binary).
pub(crate) fn rows_of_body(body: &Value, info: &ModelInfo) -> Result<(Vec<f32>, usize), V2Error> {
    let inputs = body["inputs"].as_array().ok_or(V2Error::InputsNotList)?;
    let input = inputs
        .iter()
        .find(|i| i["name"].as_str() == Some(info.input_name.as_str()))
        .or_else(|| inputs.first())
        .ok_or(V2Error::InputsEmpty)?;
    if input["parameters"]["binary_data_size"].is_u64() {
        return Err(V2Error::BinaryReference);
    }
    let mut data = Vec::new();
    flatten_numbers(&input["data"], &mut data)?;
    if data.is_empty() || data.len() % info.features != 0 {
        return Err(V2Error::NotWholeRows {
            input: info.input_name.clone(),
            values: data.len(),
            features: info.features,
        });
    }
    let rows = data.len() / info.features;
    Ok((data, rows))
}

/// `rows` rows of standard normal values, from `seed`.
pub(crate) fn random_rows(rows: usize, features: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    (0..rows * features).map(|_| rng.normal() as f32).collect()
}

/// The most probable class of each row of `probs` (`classes` values per row) and its
/// probability; the first one wins a tie.
pub(crate) fn argmax_rows(probs: &[f32], classes: usize) -> Vec<(usize, f32)> {
    if classes == 0 {
        return Vec::new();
    }
    probs
        .chunks(classes)
        .map(|row| {
            let best = crate::util::stats::argmax(row);
            (best, row[best])
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn info() -> ModelInfo {
        ModelInfo::from_metadata(&json!({
            "name": "mlp",
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 3]}],
            "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]}],
        }))
        .unwrap()
    }

    #[test]
    fn metadata_gives_widths_and_names() {
        let i = info();
        assert_eq!(i.features, 3);
        assert_eq!(i.classes, Some(2));
        assert_eq!(i.input_name, "input");
        assert_eq!(i.output_name, "probabilities");
        let bad = json!({"inputs": [{"name": "x", "datatype": "INT8", "shape": [-1, 3]}]});
        assert!(
            ModelInfo::from_metadata(&bad)
                .unwrap_err()
                .to_string()
                .contains("INT8")
        );
    }

    #[test]
    fn binary_request_puts_le_f32_after_the_header() {
        let r = binary_request(&info(), &[1.0, 2.0, 3.0], 1);
        let n = r.header_len.unwrap();
        let header: Value = serde_json::from_slice(&r.body[..n]).unwrap();
        assert_eq!(header["inputs"][0]["parameters"]["binary_data_size"], 12);
        assert_eq!(&r.body[n..n + 4], &1.0f32.to_le_bytes());
        assert_eq!(r.body.len(), n + 12);
    }

    #[test]
    fn binary_and_json_responses_decode_alike() {
        let json_body = br#"{"model_name":"mlp","outputs":[{"name":"p","datatype":"FP32","shape":[1,2],"data":[0.25,0.75]}]}"#;
        let a = decode_response(&RawResponse {
            status: 200,
            header_len: None,
            content_type: None,
            server_us: None,
            body: json_body.to_vec(),
        })
        .unwrap();
        let header = br#"{"model_name":"mlp","outputs":[{"name":"p","datatype":"FP32","shape":[1,2],"parameters":{"binary_data_size":8}}]}"#;
        let mut body = header.to_vec();
        body.extend_from_slice(&0.25f32.to_le_bytes());
        body.extend_from_slice(&0.75f32.to_le_bytes());
        let b = decode_response(&RawResponse {
            status: 200,
            header_len: Some(header.len()),
            content_type: None,
            server_us: None,
            body,
        })
        .unwrap();
        assert_eq!(a.outputs[0].data, b.outputs[0].data);
        assert!(b.outputs[0].binary);
        assert_eq!(b.json["outputs"][0]["data"], json!([0.25, 0.75]));
        assert_eq!(f32_json(0.1), json!(0.1));
        assert_eq!(f32_json(f32::NAN), Value::Null);
    }

    #[test]
    fn input_files_of_rows_one_row_or_a_body() {
        let i = info();
        assert_eq!(
            parse_input_file("[[1,2,3],[4,5,6]]", &i).unwrap(),
            InputFile::Rows {
                data: vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
                rows: 2
            }
        );
        assert_eq!(
            parse_input_file("[1,2,3]", &i).unwrap(),
            InputFile::Rows {
                data: vec![1.0, 2.0, 3.0],
                rows: 1
            }
        );
        let e = parse_input_file("[[1,2]]", &i).unwrap_err().to_string();
        assert!(e.contains("row 1: has 2 values"), "{e}");
        let body = r#"{"inputs":[{"name":"input","shape":[2,3],"datatype":"FP32","data":[[1,2,3],[4,5,6]]}]}"#;
        let InputFile::Body(b) = parse_input_file(body, &i).unwrap() else {
            panic!("expected a body");
        };
        assert_eq!(rows_of_body(&b, &i).unwrap().1, 2);
    }

    #[test]
    fn argmax_takes_the_first_of_a_tie() {
        assert_eq!(
            argmax_rows(&[0.5, 0.5, 0.1, 0.9], 2),
            vec![(0, 0.5), (1, 0.9)]
        );
    }
}
