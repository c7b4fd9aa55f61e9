//! The v2 inference protocol codec against requests shaped like tritonclient's and
//! perf_analyzer's, and against every error it reports.

use std::io::Write;

use serde_json::{Value, json};
use setpoint::api::v2codec::*;

fn io() -> ModelIo {
    ModelIo {
        input_name: "input".into(),
        features: 64,
        output_name: "probabilities".into(),
        classes: 10,
    }
}

/// A small model, for readable literals.
fn small() -> ModelIo {
    ModelIo {
        input_name: "input".into(),
        features: 3,
        output_name: "probabilities".into(),
        classes: 2,
    }
}

fn values(n: usize) -> Vec<f32> {
    (0..n).map(|i| i as f32 * 0.25 - 3.0).collect()
}

/// A body as tritonclient builds it: compact JSON header, then each binary input's bytes.
fn binary_body(header: &Value, tensors: &[&[f32]]) -> (Vec<u8>, usize) {
    let mut body = serde_json::to_vec(header).unwrap();
    let header_len = body.len();
    for t in tensors {
        for v in *t {
            body.extend_from_slice(&v.to_le_bytes());
        }
    }
    (body, header_len)
}

fn decode_json(model: &ModelIo, body: &Value) -> Result<InferRequest, CodecError> {
    decode_infer(&serde_json::to_vec(body).unwrap(), None, model)
}

/// Decodes expecting failure; returns (status, message).
fn fail(model: &ModelIo, body: &[u8], header_len: Option<usize>) -> (u16, String) {
    match decode_infer(body, header_len, model) {
        Ok(r) => panic!("expected an error, decoded {r:?}"),
        Err(e) => (e.status(), e.to_string()),
    }
}

fn fail_json(model: &ModelIo, body: &Value) -> (u16, String) {
    fail(model, &serde_json::to_vec(body).unwrap(), None)
}

/// Splits a response into its parsed JSON header and its binary tail.
fn split_response(body: &[u8], header_len: Option<usize>) -> (Value, Vec<f32>) {
    let n = header_len.unwrap_or(body.len());
    let header: Value = serde_json::from_slice(&body[..n]).unwrap();
    let tail = body[n..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!((body.len() - n) % 4, 0);
    (header, tail)
}

// ---- decoding: JSON ----------------------------------------------------------------------

#[test]
fn json_flat_single_row() {
    let x = values(64);
    let r = decode_json(
        &io(),
        &json!({"inputs":[{"name":"input","shape":[1,64],"datatype":"FP32","data":x}]}),
    )
    .unwrap();
    assert_eq!(r.rows, 1);
    assert_eq!(r.data, x);
    assert!(!r.unbatched && !r.output_binary && r.output_requested);
    assert_eq!(r.id, None);
}

#[test]
fn json_nested_single_row() {
    let x = values(64);
    let r = decode_json(
        &io(),
        &json!({"inputs":[{"name":"input","shape":[1,64],"datatype":"FP32","data":[x]}]}),
    )
    .unwrap();
    assert_eq!((r.rows, r.data), (1, x));
}

#[test]
fn json_flat_and_nested_batch_of_four() {
    let x = values(4 * 64);
    let nested: Vec<Vec<f32>> = x.chunks(64).map(<[f32]>::to_vec).collect();
    for data in [json!(x), json!(nested)] {
        let r = decode_json(
            &io(),
            &json!({"inputs":[{"name":"input","shape":[4,64],"datatype":"FP32","data":data}]}),
        )
        .unwrap();
        assert_eq!(r.rows, 4);
        assert_eq!(r.data, x);
        assert!(!r.unbatched);
    }
}

#[test]
fn unbatched_shape_is_one_row() {
    let x = values(64);
    let r = decode_json(
        &io(),
        &json!({"inputs":[{"name":"input","shape":[64],"datatype":"FP32","data":x}]}),
    )
    .unwrap();
    assert_eq!((r.rows, r.unbatched), (1, true));
    assert_eq!(r.data, x);
    let (body, hl) = encode_infer("m", "1", &r, &values(10), &io());
    assert_eq!(hl, None);
    let (v, _) = split_response(&body, hl);
    assert_eq!(v["outputs"][0]["shape"], json!([10]));
}

#[test]
fn integers_and_mixed_numbers_in_data() {
    let r = decode_json(
        &small(),
        &json!({"inputs":[{"name":"input","shape":[2,3],"datatype":"FP32","data":[1, -2, 3.5, 0, 18446744073709551615u64, -0.0]}]}),
    )
    .unwrap();
    assert_eq!(
        r.data,
        [1.0, -2.0, 3.5, 0.0, 18446744073709551615u64 as f32, -0.0]
    );
}

#[test]
fn keys_in_any_order_and_escaped_strings() {
    let body = br#"{"outputs":[{"name":"prob\u0061bilities"}],"inputs":[{"data":[1,2,3],"datatype":"FP32","shape":[1,3],"name":"in\u0070ut"}],"id":"a\"b\\c\n"}"#;
    let r = decode_infer(body, None, &small()).unwrap();
    assert_eq!(r.data, [1.0, 2.0, 3.0]);
    assert_eq!(r.id.as_deref(), Some("a\"b\\c\n"));
    let (out, _) = encode_infer("m\"x", "1", &r, &[0.25, 0.75], &small());
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["id"], "a\"b\\c\n");
    assert_eq!(v["model_name"], "m\"x");
}

#[test]
fn id_is_echoed_when_present_even_empty() {
    let m = small();
    for (id, expect) in [
        (Some("req-7"), Some("req-7")),
        (Some(""), Some("")),
        (None, None),
    ] {
        let mut req =
            json!({"inputs":[{"name":"input","shape":[1,3],"datatype":"FP32","data":[1,2,3]}]});
        if let Some(id) = id {
            req["id"] = json!(id);
        }
        let r = decode_json(&m, &req).unwrap();
        assert_eq!(r.id.as_deref(), expect);
        let (body, _) = encode_infer("m", "1", &r, &[0.5, 0.5], &m);
        let v: Value = serde_json::from_slice(&body).unwrap();
        match expect {
            Some(s) => assert_eq!(v["id"], json!(s)),
            None => assert!(v.get("id").is_none(), "{v}"),
        }
    }
}

#[test]
fn unknown_keys_and_parameters_are_ignored() {
    let r = decode_json(
        &small(),
        &json!({
            "id": "x",
            "model_name": "ignored",
            "future_field": {"nested": [1, 2]},
            "parameters": {"sequence_id": 5, "sequence_start": true, "sequence_end": false,
                           "priority": 1, "timeout": 1000, "custom": "yes"},
            "inputs": [{"name":"input","shape":[1,3],"datatype":"FP32","data":[1,2,3],
                        "parameters": {"custom": 1}, "extra": null}],
            "outputs": [{"name":"probabilities","parameters":{"binary_data": false, "custom": [1]},
                         "extra": 1}]
        }),
    )
    .unwrap();
    assert_eq!(r.data, [1.0, 2.0, 3.0]);
    assert!(!r.output_binary);
}

#[test]
fn outputs_absent_or_empty_mean_all_outputs() {
    let m = small();
    for outputs in [
        None,
        Some(json!([])),
        Some(json!([{"name":"probabilities"}])),
    ] {
        let mut req =
            json!({"inputs":[{"name":"input","shape":[1,3],"datatype":"FP32","data":[1,2,3]}]});
        if let Some(o) = outputs {
            req["outputs"] = o;
        }
        let r = decode_json(&m, &req).unwrap();
        assert!(r.output_requested && !r.output_binary);
    }
}

// ---- decoding: binary --------------------------------------------------------------------

#[test]
fn binary_input_single_row_tritonclient_style() {
    let x = values(64);
    // What tritonclient.http sends for InferInput.set_data_from_numpy(x) and
    // InferRequestedOutput("probabilities") (binary_data defaults to true).
    let header = json!({
        "inputs":[{"name":"input","shape":[1,64],"datatype":"FP32",
                   "parameters":{"binary_data_size":256}}],
        "outputs":[{"name":"probabilities","parameters":{"binary_data":true}}]
    });
    let (body, hl) = binary_body(&header, &[&x]);
    let r = decode_infer(&body, Some(hl), &io()).unwrap();
    assert_eq!((r.rows, r.unbatched, r.output_binary), (1, false, true));
    assert_eq!(r.data, x);
}

#[test]
fn binary_input_batch_of_four_perf_analyzer_style() {
    let x = values(4 * 64);
    // perf_analyzer's C++ client: always an id (empty), no outputs, so binary_data_output.
    let header = json!({
        "id":"",
        "parameters":{"binary_data_output":true},
        "inputs":[{"name":"input","datatype":"FP32","shape":[4,64],
                   "parameters":{"binary_data_size":1024}}]
    });
    let (body, hl) = binary_body(&header, &[&x]);
    let r = decode_infer(&body, Some(hl), &io()).unwrap();
    assert_eq!(r.rows, 4);
    assert_eq!(r.data, x);
    assert_eq!(r.id.as_deref(), Some(""));
    assert!(r.output_binary);
}

#[test]
fn header_length_equal_to_a_json_only_body_is_fine() {
    let body = serde_json::to_vec(
        &json!({"inputs":[{"name":"input","shape":[1,3],"datatype":"FP32","data":[1,2,3]}]}),
    )
    .unwrap();
    let r = decode_infer(&body, Some(body.len()), &small()).unwrap();
    assert_eq!(r.data, [1.0, 2.0, 3.0]);
}

#[test]
fn binary_output_selection() {
    let m = small();
    let cases = [
        (json!({"binary_data_output": true}), None, true),
        (json!({"binary_data_output": false}), None, false),
        (json!({}), Some(json!({"binary_data": true})), true),
        (json!({}), Some(json!({"binary_data": false})), false),
        // The output's own setting overrides the request-level one, both ways.
        (
            json!({"binary_data_output": true}),
            Some(json!({"binary_data": false})),
            false,
        ),
        (
            json!({"binary_data_output": false}),
            Some(json!({"binary_data": true})),
            true,
        ),
        // An output without binary_data follows the request-level setting.
        (json!({"binary_data_output": true}), Some(json!({})), true),
    ];
    for (params, out_params, expect) in cases {
        let mut req = json!({"parameters": params,
            "inputs":[{"name":"input","shape":[1,3],"datatype":"FP32","data":[1,2,3]}]});
        if let Some(p) = out_params {
            req["outputs"] = json!([{"name":"probabilities","parameters":p}]);
        }
        let r = decode_json(&m, &req).unwrap();
        assert_eq!(r.output_binary, expect, "{req}");
    }
}

// ---- encoding ----------------------------------------------------------------------------

#[test]
fn json_response_exact_bytes() {
    let m = small();
    let r = decode_json(
        &m,
        &json!({"id":"r1","inputs":[{"name":"input","shape":[2,3],"datatype":"FP32","data":[1,2,3,4,5,6]}]}),
    )
    .unwrap();
    let (body, hl) = encode_infer("mlp", "3", &r, &[0.25, 0.75, 1.0, 0.0], &m);
    assert_eq!(hl, None);
    assert_eq!(
        std::str::from_utf8(&body).unwrap(),
        r#"{"model_name":"mlp","model_version":"3","id":"r1","outputs":[{"name":"probabilities","datatype":"FP32","shape":[2,2],"data":[0.25,0.75,1.0,0.0]}]}"#
    );
}

#[test]
fn json_response_round_trips_every_f32_exactly() {
    let m = io();
    let x = values(4 * 64);
    let r = decode_json(
        &m,
        &json!({"inputs":[{"name":"input","shape":[4,64],"datatype":"FP32","data":x}]}),
    )
    .unwrap();
    let probs: Vec<f32> = (0..40)
        .map(|i| 1.0 / (i as f32 + 3.0) + 1e-9 * i as f32)
        .collect();
    let (body, hl) = encode_infer("mlp", "1", &r, &probs, &m);
    let (v, tail) = split_response(&body, hl);
    assert!(tail.is_empty());
    let out = &v["outputs"][0];
    assert_eq!(out["shape"], json!([4, 10]));
    assert!(
        out.get("parameters").is_none(),
        "no parameters on JSON outputs: {out}"
    );
    let back: Vec<f32> = out["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect();
    assert_eq!(back, probs);
}

#[test]
fn binary_response_round_trips() {
    let m = io();
    let x = values(4 * 64);
    let header = json!({"parameters":{"binary_data_output":true},
        "inputs":[{"name":"input","shape":[4,64],"datatype":"FP32","parameters":{"binary_data_size":1024}}]});
    let (body, hl) = binary_body(&header, &[&x]);
    let r = decode_infer(&body, Some(hl), &m).unwrap();
    let probs: Vec<f32> = (0..40).map(|i| (i as f32).sin().abs()).collect();
    let (out, out_hl) = encode_infer("mlp", "1", &r, &probs, &m);
    let n = out_hl.expect("binary output has a header length");
    assert_eq!(out.len(), n + 160);
    let (v, tail) = split_response(&out, out_hl);
    assert_eq!(tail, probs);
    assert_eq!(
        v,
        json!({"model_name":"mlp","model_version":"1","outputs":[{"name":"probabilities",
            "datatype":"FP32","shape":[4,10],"parameters":{"binary_data_size":160}}]})
    );
}

#[test]
fn json_in_binary_out_and_binary_in_json_out() {
    let m = small();
    // JSON in, binary out.
    let r = decode_json(
        &m,
        &json!({"inputs":[{"name":"input","shape":[1,3],"datatype":"FP32","data":[1,2,3]}],
                "outputs":[{"name":"probabilities","parameters":{"binary_data":true}}]}),
    )
    .unwrap();
    let (out, hl) = encode_infer("m", "1", &r, &[0.1, 0.9], &m);
    let (v, tail) = split_response(&out, hl);
    assert!(hl.is_some());
    assert_eq!(tail, [0.1, 0.9]);
    assert_eq!(v["outputs"][0]["parameters"]["binary_data_size"], 8);
    assert!(v["outputs"][0].get("data").is_none());

    // Binary in, JSON out.
    let header = json!({"inputs":[{"name":"input","shape":[3],"datatype":"FP32","parameters":{"binary_data_size":12}}],
        "outputs":[{"name":"probabilities","parameters":{"binary_data":false}}]});
    let (body, bhl) = binary_body(&header, &[&[4.0, 5.0, 6.0]]);
    let r = decode_infer(&body, Some(bhl), &m).unwrap();
    assert_eq!(
        (r.data.as_slice(), r.unbatched),
        (&[4.0, 5.0, 6.0][..], true)
    );
    let (out, hl) = encode_infer("m", "1", &r, &[0.1, 0.9], &m);
    assert_eq!(hl, None);
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["outputs"][0]["shape"], json!([2]));
    assert_eq!(v["outputs"][0]["data"], json!([0.1, 0.9]));
}

#[test]
fn output_not_requested_gives_empty_outputs() {
    let m = small();
    let r = InferRequest {
        id: None,
        rows: 1,
        data: vec![1.0, 2.0, 3.0],
        unbatched: false,
        output_binary: true,
        output_requested: false,
        timeout_us: None,
    };
    let (out, hl) = encode_infer("m", "1", &r, &[0.5, 0.5], &m);
    assert_eq!(hl, None);
    assert_eq!(
        std::str::from_utf8(&out).unwrap(),
        r#"{"model_name":"m","model_version":"1","outputs":[]}"#
    );
}

#[test]
fn error_body_is_the_protocol_shape() {
    let e = CodecError::MissingInput {
        name: "in\"put".into(),
    };
    let v: Value = serde_json::from_slice(&encode_error(&e.to_string())).unwrap();
    assert_eq!(v, json!({"error": "missing input \"in\\\"put\""}));
}

// ---- errors ------------------------------------------------------------------------------

#[test]
fn datatype_errors() {
    let (s, m) = fail_json(
        &io(),
        &json!({"inputs":[{"name":"input","shape":[1,64],"datatype":"FP64","data":values(64)}]}),
    );
    assert_eq!(
        (s, m.as_str()),
        (
            400,
            r#"input "input": expected datatype FP32, got FP64 (accepted: FP32)"#
        )
    );
    let (s, m) = fail_json(
        &io(),
        &json!({"inputs":[{"name":"input","shape":[1,64],"data":values(64)}]}),
    );
    assert_eq!(
        (s, m.as_str()),
        (
            400,
            r#"input "input": expected datatype FP32, got nothing (accepted: FP32)"#
        )
    );
}

#[test]
fn shape_errors() {
    let cases = [
        (
            json!([2, 63]),
            r#"input "input": expected shape [-1, 64], got [2, 63]"#,
        ),
        (
            json!([63]),
            r#"input "input": expected shape [-1, 64], got [63]"#,
        ),
        (
            json!([1, 1, 64]),
            r#"input "input": expected shape [-1, 64], got [1, 1, 64]"#,
        ),
        (
            json!([-1, 64]),
            r#"input "input": expected shape [-1, 64], got [-1, 64]"#,
        ),
        (
            json!([]),
            r#"input "input": expected shape [-1, 64], got []"#,
        ),
        (
            json!([0, 64]),
            r#"input "input": shape [0, 64] has no rows (send at least one)"#,
        ),
    ];
    for (shape, msg) in cases {
        let (s, m) = fail_json(
            &io(),
            &json!({"inputs":[{"name":"input","shape":shape,"datatype":"FP32","data":[]}]}),
        );
        assert_eq!((s, m.as_str()), (400, msg));
    }
    let (s, m) = fail_json(
        &io(),
        &json!({"inputs":[{"name":"input","datatype":"FP32","data":[]}]}),
    );
    assert_eq!(
        (s, m.as_str()),
        (
            400,
            r#"input "input": expected shape [-1, 64], got nothing"#
        )
    );
}

#[test]
fn value_count_errors() {
    let (s, m) = fail_json(
        &io(),
        &json!({"inputs":[{"name":"input","shape":[2,64],"datatype":"FP32","data":values(127)}]}),
    );
    assert_eq!(
        (s, m.as_str()),
        (
            400,
            r#"input "input": shape [2, 64] needs 128 values, got 127"#
        )
    );
    let (s, m) = fail_json(
        &io(),
        &json!({"inputs":[{"name":"input","shape":[64],"datatype":"FP32","data":[]}]}),
    );
    assert_eq!(
        (s, m.as_str()),
        (400, r#"input "input": shape [64] needs 64 values, got 0"#)
    );
}

#[test]
fn name_errors() {
    let (s, m) = fail_json(
        &small(),
        &json!({"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","data":[1,2,3]}]}),
    );
    assert_eq!(
        (s, m.as_str()),
        (400, r#"unknown input "x" (the model takes "input")"#)
    );
    for req in [json!({}), json!({"inputs": []}), json!({"inputs": null})] {
        let (s, m) = fail_json(&small(), &req);
        assert_eq!((s, m.as_str()), (400, r#"missing input "input""#), "{req}");
    }
    let row = json!({"name":"input","shape":[1,3],"datatype":"FP32","data":[1,2,3]});
    let (s, m) = fail_json(&small(), &json!({"inputs":[row, row]}));
    assert_eq!(
        (s, m.as_str()),
        (400, r#"input "input" is given more than once"#)
    );
    let (s, m) = fail_json(&small(), &json!({"inputs":[row], "outputs":[{"name":"y"}]}));
    assert_eq!(
        (s, m.as_str()),
        (
            400,
            r#"unknown output "y" (the model produces "probabilities")"#
        )
    );
    let (s, m) = fail_json(
        &small(),
        &json!({"inputs":[row], "outputs":[{"name":"probabilities"},{"name":"logits"}]}),
    );
    assert_eq!(
        (s, m.as_str()),
        (
            400,
            r#"unknown output "logits" (the model produces "probabilities")"#
        )
    );
    let (s, m) = fail_json(
        &small(),
        &json!({"inputs":[row], "outputs":[{"name":"probabilities"},{"name":"probabilities"}]}),
    );
    assert_eq!(
        (s, m.as_str()),
        (400, r#"output "probabilities" is requested more than once"#)
    );
}

#[test]
fn data_errors() {
    let m3 = small();
    let bad_data = [
        json!("1,2,3"),
        json!(5),
        json!([1, "2", 3]),
        json!([1, null, 3]),
        json!([true, 1, 2]),
        json!({"a": [1, 2, 3]}),
        json!([[1], {"a": 2}, 3]),
    ];
    for data in bad_data {
        let (s, m) = fail_json(
            &m3,
            &json!({"inputs":[{"data":data,"name":"input","shape":[1,3],"datatype":"FP32"}]}),
        );
        assert_eq!(
            (s, m.as_str()),
            (
                400,
                r#"input "input": data must be a flat or nested list of numbers"#
            ),
            "{data}"
        );
    }
    let (s, m) = fail_json(
        &m3,
        &json!({"inputs":[{"name":"input","shape":[2,3],"datatype":"FP32","data":[[1,2],[3,4],[5,6]]}]}),
    );
    assert_eq!(
        (s, m.as_str()),
        (
            400,
            r#"input "input": data nested as [3, 2] does not match shape [2, 3] (send a flat list or lists nested as the shape)"#
        )
    );
    let (s, m) = fail_json(
        &m3,
        &json!({"inputs":[{"name":"input","shape":[2,3],"datatype":"FP32","data":[[1,2,3],[4,5]]}]}),
    );
    assert_eq!(
        (s, m.as_str()),
        (
            400,
            r#"input "input": data nested as ragged lists does not match shape [2, 3] (send a flat list or lists nested as the shape)"#
        )
    );
    let (s, m) = fail_json(
        &m3,
        &json!({"inputs":[{"name":"input","shape":[1,3],"datatype":"FP32"}]}),
    );
    assert_eq!(
        (s, m.as_str()),
        (
            400,
            r#"input "input": no data (send data or parameters.binary_data_size)"#
        )
    );
    let (s, m) = fail_json(
        &m3,
        &json!({"inputs":[{"name":"input","shape":[1,3],"datatype":"FP32","data":[1,2,3],"parameters":{"binary_data_size":12}}]}),
    );
    assert_eq!(
        (s, m.as_str()),
        (
            400,
            r#"input "input": both data and parameters.binary_data_size are given (send one)"#
        )
    );
    // Beyond f32's range: not finite once converted.
    let body =
        br#"{"inputs":[{"name":"input","shape":[1,3],"datatype":"FP32","data":[1,2,1e39]}]}"#;
    let (s, m) = fail(&m3, body, None);
    assert_eq!(
        (s, m.as_str()),
        (400, r#"input "input": value 2 is not a finite number"#)
    );
}

#[test]
fn non_finite_binary_values() {
    let m3 = small();
    let header = json!({"inputs":[{"name":"input","shape":[2,3],"datatype":"FP32","parameters":{"binary_data_size":24}}]});
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let (body, hl) = binary_body(&header, &[&[0.0, 1.0, 2.0, bad, 4.0, 5.0]]);
        let (s, m) = fail(&m3, &body, Some(hl));
        assert_eq!(
            (s, m.as_str()),
            (400, r#"input "input": value 3 is not a finite number"#)
        );
    }
}

#[test]
fn malformed_json() {
    let (s, m) = fail(&small(), b"{\"in", None);
    assert_eq!(s, 400);
    assert_eq!(
        m,
        "invalid JSON at line 1 column 4: EOF while parsing a string"
    );
    let (s, m) = fail(&small(), b"{\"inputs\" 1}", None);
    assert_eq!(
        (s, m.as_str()),
        (400, "invalid JSON at line 1 column 11: expected `:`")
    );
    let (s, m) = fail(&small(), b"", None);
    assert_eq!(
        (s, m.as_str()),
        (
            400,
            "invalid JSON at line 1 column 0: EOF while parsing a value"
        )
    );
    // Well-formed, wrong types: named as a request problem, still with the position.
    let (s, m) = fail(&small(), br#"{"inputs":{"name":"input"}}"#, None);
    assert_eq!(s, 400);
    assert!(
        m.starts_with(
            "invalid request at line 1 column 10: invalid type: map, expected a sequence"
        ),
        "{m}"
    );
    let (s, m) = fail(&small(), br#"{"inputs":[{"shape":[1,3]}]}"#, None);
    assert_eq!(s, 400);
    assert!(
        m.starts_with("invalid request at line 1 column") && m.contains("missing field `name`"),
        "{m}"
    );
    let (s, m) = fail(
        &small(),
        br#"{"inputs":[{"name":"input","shape":[1.5,3]}]}"#,
        None,
    );
    assert_eq!(s, 400);
    assert!(m.starts_with("invalid request"), "{m}");
    // Binary bytes after JSON without a header length: the JSON parser sees them.
    let (s, m) = fail(&small(), b"{\"inputs\":[]}\x00\x00\x80\x3f", None);
    assert_eq!(s, 400);
    assert!(
        m.starts_with("invalid JSON at line 1 column 14: trailing characters"),
        "{m}"
    );
}

#[test]
fn header_length_errors() {
    let m3 = small();
    let body = br#"{"inputs":[{"name":"input","shape":[1,3],"datatype":"FP32","data":[1,2,3]}]}"#;
    let (s, m) = fail(&m3, body, Some(999));
    assert_eq!(
        (s, m.as_str()),
        (
            400,
            format!(
                "Inference-Header-Content-Length 999 exceeds the body of {} bytes",
                body.len()
            )
            .as_str()
        )
    );
    // A header length shorter than the JSON cuts it.
    let (s, m) = fail(&m3, body, Some(10));
    assert_eq!(s, 400);
    assert!(m.starts_with("invalid JSON at line 1 column 10"), "{m}");
    // Binary input without the header.
    let header = json!({"inputs":[{"name":"input","shape":[1,3],"datatype":"FP32","parameters":{"binary_data_size":12}}]});
    let (s, m) = fail_json(&m3, &header);
    assert_eq!(
        (s, m.as_str()),
        (
            400,
            r#"input "input": binary_data_size is given but the Inference-Header-Content-Length header is missing"#
        )
    );
}

#[test]
fn binary_size_errors() {
    let m = io();
    let header = json!({"inputs":[{"name":"input","shape":[2,64],"datatype":"FP32","parameters":{"binary_data_size":100}}]});
    let (body, hl) = binary_body(&header, &[&values(25)]);
    let (s, msg) = fail(&m, &body, Some(hl));
    assert_eq!(
        (s, msg.as_str()),
        (
            400,
            r#"input "input": binary_data_size 100, expected 512 bytes for shape [2, 64] FP32"#
        )
    );

    // Truncated: the header promises 512 bytes, the body holds 508.
    let header = json!({"inputs":[{"name":"input","shape":[2,64],"datatype":"FP32","parameters":{"binary_data_size":512}}]});
    let (body, hl) = binary_body(&header, &[&values(127)]);
    let (s, msg) = fail(&m, &body, Some(hl));
    assert_eq!(
        (s, msg.as_str()),
        (
            400,
            r#"input "input": binary data needs 512 bytes, only 508 follow the JSON header"#
        )
    );
    let (s, msg) = fail(&m, &body[..hl], Some(hl));
    assert_eq!(
        (s, msg.as_str()),
        (
            400,
            r#"input "input": binary data needs 512 bytes, only 0 follow the JSON header"#
        )
    );

    // Extra bytes after the tensor.
    let (body, hl) = binary_body(&header, &[&values(128), &[1.0, 2.0, 3.0]]);
    let (s, msg) = fail(&m, &body, Some(hl));
    assert_eq!(
        (s, msg.as_str()),
        (400, "binary data has 12 bytes after the last tensor")
    );

    // Extra bytes after a JSON-only header.
    let json_only =
        json!({"inputs":[{"name":"input","shape":[1,3],"datatype":"FP32","data":[1,2,3]}]});
    let (body, hl) = binary_body(&json_only, &[&[1.0]]);
    let (s, msg) = fail(&small(), &body, Some(hl));
    assert_eq!(
        (s, msg.as_str()),
        (400, "binary data has 4 bytes after the last tensor")
    );
}

#[test]
fn unsupported_features_are_refused() {
    let m3 = small();
    let (s, m) = fail_json(
        &m3,
        &json!({"inputs":[{"name":"input","shape":[1,3],"datatype":"FP32",
            "parameters":{"shared_memory_region":"r0","shared_memory_byte_size":12}}]}),
    );
    assert_eq!(
        (s, m.as_str()),
        (
            400,
            r#"input "input": shared memory is not supported (send the data in the request body)"#
        )
    );
    let row = json!({"name":"input","shape":[1,3],"datatype":"FP32","data":[1,2,3]});
    let (s, m) = fail_json(
        &m3,
        &json!({"inputs":[row],"outputs":[{"name":"probabilities","parameters":{"shared_memory_region":"o","shared_memory_byte_size":8}}]}),
    );
    assert_eq!(
        (s, m.as_str()),
        (
            400,
            r#"output "probabilities": shared memory is not supported (send the data in the request body)"#
        )
    );
    let (s, m) = fail_json(
        &m3,
        &json!({"inputs":[row],"outputs":[{"name":"probabilities","parameters":{"classification":3,"binary_data":true}}]}),
    );
    assert_eq!(
        (s, m.as_str()),
        (
            400,
            r#"output "probabilities": classification is not supported (request the output itself)"#
        )
    );
    // classification 0 means "not requested", as tritonclient's default.
    decode_json(
        &m3,
        &json!({"inputs":[row],"outputs":[{"name":"probabilities","parameters":{"classification":0}}]}),
    )
    .unwrap();
}

#[test]
fn every_error_is_a_client_error_except_encoding() {
    assert_eq!(
        CodecError::UnsupportedEncoding {
            encoding: "br".into()
        }
        .status(),
        415
    );
    assert_eq!(
        CodecError::DecompressedTooLarge { limit_bytes: 1 }.status(),
        413
    );
    assert_eq!(CodecError::TrailingBytes { extra: 1 }.status(), 400);
}

// ---- content encoding --------------------------------------------------------------------

#[test]
fn compressed_bodies() {
    let m = io();
    let x = values(64);
    let header = json!({"inputs":[{"name":"input","shape":[1,64],"datatype":"FP32","parameters":{"binary_data_size":256}}]});
    let (body, hl) = binary_body(&header, &[&x]);

    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&body).unwrap();
    let gz = gz.finish().unwrap();
    let mut zl = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    zl.write_all(&body).unwrap();
    let zl = zl.finish().unwrap();

    for (enc, compressed) in [("gzip", &gz), ("deflate", &zl), ("GZIP", &gz)] {
        let plain = decode_content_encoding(Some(enc), compressed, 1 << 20).unwrap();
        assert_eq!(&*plain, &body[..]);
        let r = decode_infer(&plain, Some(hl), &m).unwrap();
        assert_eq!(r.data, x);
    }
    for enc in [None, Some("identity"), Some("")] {
        let plain = decode_content_encoding(enc, &body, 1).unwrap();
        assert!(matches!(plain, std::borrow::Cow::Borrowed(_)));
    }

    let e = decode_content_encoding(Some("br"), &body, 1 << 20).unwrap_err();
    assert_eq!(
        (e.status(), e.to_string().as_str()),
        (
            415,
            r#"unsupported Content-Encoding "br" (accepted: identity, gzip, deflate)"#
        )
    );
    let e = decode_content_encoding(Some("gzip"), &gz, body.len() - 1).unwrap_err();
    assert_eq!(
        (e.status(), e.to_string()),
        (
            413,
            format!("decompressed body exceeds {} bytes", body.len() - 1)
        )
    );
    decode_content_encoding(Some("gzip"), &gz, body.len()).unwrap();
    let e = decode_content_encoding(Some("gzip"), b"not gzip at all", 1 << 20).unwrap_err();
    assert_eq!(e.status(), 400);
    assert!(e.to_string().starts_with("invalid gzip body: "), "{e}");
}

#[test]
fn non_finite_outputs_are_written_as_null() {
    let m = small();
    let r = decode_json(
        &m,
        &json!({"inputs":[{"name":"input","shape":[1,3],"datatype":"FP32","data":[1,2,3]}]}),
    )
    .unwrap();
    let (out, _) = encode_infer("m", "1", &r, &[f32::NAN, 1.0], &m);
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["outputs"][0]["data"], json!([null, 1.0]));
}

#[test]
fn the_timeout_parameter_is_a_positive_integer_of_microseconds() {
    let m = small();
    let body = |params: Value| json!({"parameters": params, "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]});
    let r = decode_json(&m, &body(json!({"timeout": 250_000}))).unwrap();
    assert_eq!(r.timeout_us, Some(250_000));
    // Beside Triton's other request parameters, which are ignored.
    let r = decode_json(
        &m,
        &body(json!({"binary_data_output": true, "priority": 1, "timeout": 1})),
    )
    .unwrap();
    assert_eq!((r.timeout_us, r.output_binary), (Some(1), true));
    let r = decode_json(&m, &body(json!({}))).unwrap();
    assert_eq!(r.timeout_us, None);
    for (bad, shown) in [
        (json!(0), "0"),
        (json!(-1), "-1"),
        (json!(2.5), "2.5"),
        (json!("100"), "\"100\""),
        (json!(null), "null"),
        (json!([5]), "[5]"),
    ] {
        assert_eq!(
            fail_json(&m, &body(json!({ "timeout": bad }))),
            (
                400,
                format!(
                    "parameters.timeout: expected a positive integer number of microseconds, got {shown}"
                )
            )
        );
    }
}
