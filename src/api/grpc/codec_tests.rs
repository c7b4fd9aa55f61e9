use super::*;
use crate::api::v2codec::CodecError;
use pb::infer_parameter::ParameterChoice;

fn io() -> ModelIo {
    ModelIo::for_layers(&[2, 4, 3])
}

fn input(shape: Vec<i64>, values: Vec<f32>) -> InferInputTensor {
    InferInputTensor {
        name: "input".into(),
        datatype: "FP32".into(),
        shape,
        contents: Some(pb::InferTensorContents {
            fp32_contents: values,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn request(inputs: Vec<InferInputTensor>) -> pb::ModelInferRequest {
    pb::ModelInferRequest {
        model_name: "m".into(),
        id: "r1".into(),
        inputs,
        ..Default::default()
    }
}

fn param(p: ParameterChoice) -> pb::InferParameter {
    pb::InferParameter {
        parameter_choice: Some(p),
    }
}

#[test]
fn typed_and_raw_inputs_decode_to_the_same_rows() {
    let typed = decode_infer(
        request(vec![input(vec![2, 2], vec![1.0, 2.0, 3.0, 4.0])]),
        &io(),
    );
    let typed = typed.unwrap();
    assert_eq!(
        (typed.rows, typed.unbatched, typed.output_binary),
        (2, false, false)
    );
    let mut raw_input = input(vec![2, 2], vec![]);
    raw_input.contents = None;
    let mut raw = request(vec![raw_input]);
    raw.raw_input_contents = vec![
        [1.0f32, 2.0, 3.0, 4.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
    ];
    let raw = decode_infer(raw, &io()).unwrap();
    assert_eq!(raw.data, typed.data);
    assert!(raw.output_binary);
    assert_eq!(raw.id.as_deref(), Some("r1"));
}

#[test]
fn each_malformed_request_names_what_is_wrong() {
    let e = |r: pb::ModelInferRequest| decode_infer(r, &io()).unwrap_err();
    assert_eq!(
        e(request(vec![])),
        CodecError::MissingInput {
            name: "input".into()
        }
    );
    let two = vec![
        input(vec![1, 2], vec![1.0; 2]),
        input(vec![1, 2], vec![1.0; 2]),
    ];
    assert_eq!(
        e(request(two)),
        CodecError::DuplicateInput {
            name: "input".into()
        }
    );
    let mut r = request(vec![input(vec![1, 2], vec![1.0; 2])]);
    r.raw_input_contents = vec![vec![0; 8], vec![0; 8]];
    assert_eq!(e(r), CodecError::RawCount { got: 2, inputs: 1 });
    let r = request(vec![input(vec![0, 2], vec![])]);
    assert!(matches!(e(r), CodecError::NoRows { .. }));
    let r = request(vec![input(vec![1, 2], vec![1.0; 3])]);
    assert_eq!(
        e(r).to_string(),
        "input \"input\": shape [1, 2] needs 2 values, got 3"
    );
    let mut empty = input(vec![1, 2], vec![]);
    empty.contents = None;
    assert_eq!(
        e(request(vec![empty])),
        CodecError::NoContents {
            name: "input".into()
        }
    );
    let mut shm = input(vec![1, 2], vec![1.0; 2]);
    shm.parameters.insert(
        "shared_memory_region".into(),
        param(ParameterChoice::StringParam("r".into())),
    );
    assert!(matches!(
        e(request(vec![shm])),
        CodecError::SharedMemory {
            tensor: "input",
            ..
        }
    ));
}

#[test]
fn outputs_must_be_the_models_once_and_plain() {
    let out = |name: &str| InferRequestedOutputTensor {
        name: name.into(),
        ..Default::default()
    };
    let with = |outputs: Vec<InferRequestedOutputTensor>| {
        let mut r = request(vec![input(vec![1, 2], vec![1.0; 2])]);
        r.outputs = outputs;
        decode_infer(r, &io())
    };
    assert!(with(vec![out("probabilities")]).is_ok());
    assert!(matches!(
        with(vec![out("logits")]),
        Err(CodecError::UnknownOutput { .. })
    ));
    let twice = vec![out("probabilities"), out("probabilities")];
    assert!(matches!(
        with(twice),
        Err(CodecError::DuplicateOutput { .. })
    ));
    let mut classified = out("probabilities");
    classified.parameters.insert(
        "classification".into(),
        param(ParameterChoice::Int64Param(2)),
    );
    assert!(matches!(
        with(vec![classified]),
        Err(CodecError::Classification { .. })
    ));
    // binary_data is HTTP's; over gRPC it changes nothing.
    let mut binary = out("probabilities");
    binary.parameters.insert(
        "binary_data".into(),
        param(ParameterChoice::BoolParam(true)),
    );
    assert!(!with(vec![binary]).unwrap().output_binary);
}

#[test]
fn the_timeout_parameter_is_a_positive_integer_of_microseconds() {
    let with = |p: ParameterChoice| {
        let mut r = request(vec![input(vec![1, 2], vec![1.0; 2])]);
        r.parameters.insert("timeout".into(), param(p));
        decode_infer(r, &io()).map(|r| r.timeout_us)
    };
    assert_eq!(with(ParameterChoice::Int64Param(1500)), Ok(Some(1500)));
    assert_eq!(with(ParameterChoice::Uint64Param(7)), Ok(Some(7)));
    assert_eq!(
        with(ParameterChoice::Int64Param(0)),
        Err(CodecError::InvalidTimeout { got: "0".into() })
    );
    assert_eq!(
        with(ParameterChoice::DoubleParam(1.5)),
        Err(CodecError::InvalidTimeout { got: "1.5".into() })
    );
}

#[test]
fn answers_take_the_form_of_the_input() {
    let mut req = decode_infer(request(vec![input(vec![2], vec![1.0, 2.0])]), &io()).unwrap();
    let probs = [0.25f32, 0.5, 0.25];
    let typed = encode_infer("m", "1", &req, &probs, &io());
    assert_eq!(typed.outputs[0].shape, vec![3]);
    assert_eq!(
        typed.outputs[0].contents.as_ref().unwrap().fp32_contents,
        probs
    );
    assert!(typed.raw_output_contents.is_empty());
    req.output_binary = true;
    let raw = encode_infer("m", "1", &req, &probs, &io());
    assert!(raw.outputs[0].contents.is_none());
    let bytes: Vec<u8> = probs.iter().flat_map(|v| v.to_le_bytes()).collect();
    assert_eq!(raw.raw_output_contents, vec![bytes]);
    assert_eq!((raw.id.as_str(), raw.model_name.as_str()), ("r1", "m"));
}
