//! The gRPC API (`inference.GRPCInferenceService`) over real HTTP/2 on loopback, called with
//! a client generated from the same `.proto`: health and metadata, inference with raw and
//! typed tensors against the HTTP answers, the error codes with HTTP's messages, the message
//! size limit, timeouts and a full queue. Deadlines, the token, the stream, unavailability and
//! idle connections are in `grpc_calls.rs`.

use std::time::Duration;

use setpoint::api::grpc::pb;
use tonic::Code;

use crate::support::daemon;
use crate::support::grpc;
use daemon::Daemon;
use grpc::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_metadata_and_config_answer_as_triton_clients_expect() {
    let d = Daemon::start(SERVICE);
    d.wait_ready();
    let mut c = client(&d).await;
    assert!(
        c.server_live(pb::ServerLiveRequest {})
            .await
            .unwrap()
            .into_inner()
            .live
    );
    assert!(
        c.server_ready(pb::ServerReadyRequest {})
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    let ready = |name: &str, version: &str| pb::ModelReadyRequest {
        name: name.into(),
        version: version.into(),
    };
    assert!(
        c.model_ready(ready("mlp", ""))
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    assert!(
        c.model_ready(ready("mlp", "1"))
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    assert!(
        !c.model_ready(ready("nope", ""))
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    let meta = c
        .server_metadata(pb::ServerMetadataRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(meta.name, "setpoint");
    assert!(meta.extensions.contains(&"statistics".to_string()));

    let m = c
        .model_metadata(pb::ModelMetadataRequest {
            name: "mlp".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(m.versions, vec!["1"]);
    assert_eq!(
        (m.inputs[0].name.as_str(), m.inputs[0].shape.clone()),
        ("input", vec![-1, 8])
    );
    assert_eq!(m.outputs[0].shape, vec![-1, 3]);
    expect_err(
        c.model_metadata(pb::ModelMetadataRequest {
            name: "nope".into(),
            version: String::new(),
        })
        .await,
        Code::NotFound,
        "unknown model nope",
    );
    expect_err(
        c.model_metadata(pb::ModelMetadataRequest {
            name: "mlp".into(),
            version: "2".into(),
        })
        .await,
        Code::NotFound,
        "model mlp has no version 2 (available: 1)",
    );

    let cfg = c
        .model_config(pb::ModelConfigRequest {
            name: "mlp".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .config
        .unwrap();
    assert_eq!(cfg.max_batch_size, 8);
    assert_eq!(cfg.input[0].dims, vec![8]);
    assert_eq!(cfg.input[0].data_type, pb::DataType::TypeFp32 as i32);
    assert_eq!(cfg.parameters["slo_p99_ms"].string_value, "50");
    let Some(pb::model_config::SchedulingChoice::DynamicBatching(b)) = cfg.scheduling_choice else {
        panic!("no dynamic batching in {cfg:?}");
    };
    assert_eq!(b.max_queue_delay_microseconds, 1000);
    assert_eq!(b.default_queue_policy.unwrap().max_queue_size, 64);

    let index = c
        .repository_index(pb::RepositoryIndexRequest {
            repository_name: String::new(),
            ready: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(index.models.len(), 1);
    assert_eq!(
        (
            index.models[0].name.as_str(),
            index.models[0].state.as_str()
        ),
        ("mlp", "READY")
    );

    // Status names both listeners.
    let (_, status) = d.get("/v1/status");
    assert_eq!(
        status["listeners"]["grpc"],
        d.grpc.trim_start_matches("http://")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inference_answers_raw_and_typed_tensors_as_http_does_and_is_counted() {
    let d = Daemon::start(SERVICE);
    d.wait_ready();
    let mut c = client(&d).await;
    for n in [1, 4] {
        let a = c
            .model_infer(raw_request("mlp", n))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (a.model_name.as_str(), a.model_version.as_str()),
            ("mlp", "1")
        );
        assert_eq!(a.id, format!("raw-{n}"));
        assert_eq!(a.outputs[0].name, "probabilities");
        assert_eq!(a.outputs[0].shape, vec![n as i64, 3]);
        assert!(
            a.outputs[0].contents.is_none(),
            "a raw input gets a raw answer"
        );
        let got = raw_floats(&a.raw_output_contents[0]);
        assert_close(&got, &http_probs(&d, n));

        let t = c
            .model_infer(typed_request("mlp", n))
            .await
            .unwrap()
            .into_inner();
        assert!(
            t.raw_output_contents.is_empty(),
            "a typed input gets a typed answer"
        );
        assert_close(&t.outputs[0].contents.clone().unwrap().fp32_contents, &got);
    }
    // An unbatched row ([F]) answers [C].
    let mut one = raw_request("mlp", 1);
    one.inputs[0].shape = vec![8];
    let a = c.model_infer(one).await.unwrap().into_inner();
    assert_eq!(a.outputs[0].shape, vec![3]);

    // Statistics: 1 + 4 rows twice, plus the unbatched row, over gRPC.
    let st = c
        .model_statistics(pb::ModelStatisticsRequest {
            name: "mlp".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let http_rows = 5;
    assert_eq!(st.model_stats[0].inference_count, 2 * 5 + 1 + http_rows);
    let all = c
        .model_statistics(pb::ModelStatisticsRequest::default())
        .await
        .unwrap();
    assert_eq!(all.into_inner().model_stats.len(), 1);
    let metrics = d.metrics();
    assert!(
        metrics.contains(
            "setpoint_inference_request_duration_seconds_count{service=\"mlp\",protocol=\"grpc\"} 5"
        ),
        "{metrics}"
    );
    assert!(metrics.contains(
        "setpoint_inference_request_duration_seconds_count{service=\"mlp\",protocol=\"http\"} 2"
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_invalid_argument_with_the_messages_http_gives() {
    let d = Daemon::start(SERVICE);
    d.wait_ready();
    let mut c = client(&d).await;
    let mut r = raw_request("mlp", 2);
    r.inputs[0].datatype = "INT32".into();
    expect_err(
        c.model_infer(r).await,
        Code::InvalidArgument,
        "input \"input\": expected datatype FP32, got INT32 (accepted: FP32)",
    );
    let mut r = raw_request("mlp", 2);
    r.raw_input_contents[0].pop();
    expect_err(
        c.model_infer(r).await,
        Code::InvalidArgument,
        "raw_input_contents holds 63 bytes, expected 64 bytes for shape [2, 8] FP32",
    );
    let mut r = raw_request("mlp", 2);
    r.inputs[0].shape = vec![2, 5];
    expect_err(
        c.model_infer(r).await,
        Code::InvalidArgument,
        "expected shape [-1, 8], got [2, 5]",
    );
    let mut r = typed_request("mlp", 1);
    r.raw_input_contents.push(vec![0; 32]);
    expect_err(
        c.model_infer(r).await,
        Code::InvalidArgument,
        "both contents and raw_input_contents",
    );
    let mut r = typed_request("mlp", 1);
    r.inputs[0].name = "x".into();
    expect_err(
        c.model_infer(r).await,
        Code::InvalidArgument,
        "unknown input \"x\"",
    );
    let mut r = typed_request("mlp", 1);
    r.inputs[0].contents.as_mut().unwrap().fp32_contents[3] = f32::NAN;
    expect_err(
        c.model_infer(r).await,
        Code::InvalidArgument,
        "value 3 is not a finite number",
    );
    let mut r = typed_request("mlp", 1);
    r.parameters.insert(
        "timeout".into(),
        pb::InferParameter {
            parameter_choice: Some(pb::infer_parameter::ParameterChoice::StringParam(
                "soon".into(),
            )),
        },
    );
    expect_err(
        c.model_infer(r).await,
        Code::InvalidArgument,
        "parameters.timeout: expected a positive integer",
    );
    expect_err(
        c.model_infer(raw_request("nope", 1)).await,
        Code::NotFound,
        "unknown model nope",
    );
    // Malformed requests are counted as HTTP's are.
    assert!(
        d.metrics()
            .contains("setpoint_inference_requests_total{service=\"mlp\",outcome=\"invalid\"} 7")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_timeouts_and_a_full_queue_get_their_codes() {
    // A slow model (64 MB of weights per row), a short queue and a small message limit.
    let d = Daemon::start(
        r#"
max_request_bytes = 4096
[[services]]
name = "slow"
layers = [8, 4096, 4096, 3]
max_queue = 2
[services.slo]
p99_ms = 1000
[services.batching]
max_batch_size = 1
max_queue_delay_ms = 0
"#,
    );
    d.wait_ready();
    let mut c = client(&d).await;
    // 200 rows of 8 floats: 6,400 bytes of tensor, over 4,096.
    expect_err(
        c.model_infer(raw_request("slow", 200)).await,
        Code::ResourceExhausted,
        "exceeds the limit of 4096 bytes (max_request_bytes)",
    );
    // On a stream the same refusal, in the same words, ends the stream.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(raw_request("slow", 200)).await.unwrap();
    let mut answers = c
        .model_stream_infer(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let ended = tokio::time::timeout(Duration::from_secs(30), answers.message())
        .await
        .expect("an answer within 30 s");
    let e = ended.expect_err("the stream ends with an error");
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert_eq!(
        e.message(),
        "request message exceeds the limit of 4096 bytes (max_request_bytes)"
    );
    drop(tx);
    // A client timeout of 1 us cannot be met.
    let mut r = raw_request("slow", 1);
    r.parameters.insert(
        "timeout".into(),
        pb::InferParameter {
            parameter_choice: Some(pb::infer_parameter::ParameterChoice::Int64Param(1)),
        },
    );
    expect_err(
        c.model_infer(r).await,
        Code::DeadlineExceeded,
        "no answer within the request's timeout of 1 us",
    );
    // Twelve at once against a queue of two: some are refused, the rest answered.
    let calls: Vec<_> = (0..12)
        .map(|_| {
            let mut c = c.clone();
            tokio::spawn(async move { c.model_infer(raw_request("slow", 1)).await })
        })
        .collect();
    let mut refused = 0;
    for call in calls {
        match call.await.unwrap() {
            Ok(_) => {}
            Err(e) => {
                assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
                assert!(
                    e.message().contains("queue is full (2 requests waiting)"),
                    "{e:?}"
                );
                refused += 1;
            }
        }
    }
    assert!((1..12).contains(&refused), "{refused} of 12 refused");
}
