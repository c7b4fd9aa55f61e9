//! The gRPC API (`inference.GRPCInferenceService`) over real HTTP/2 on loopback, called with
//! a client generated from the same `.proto`: health and metadata, inference with raw and
//! typed tensors against the HTTP answers, the error codes with HTTP's messages, the message
//! size limit, the bearer token, the stream, statistics and metrics.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::json;
use setpoint::api::grpc::pb;
use setpoint::api::grpc::pb::grpc_inference_service_client::GrpcInferenceServiceClient;
use tonic::Code;
use tonic::transport::Channel;

#[path = "support/daemon.rs"]
mod daemon;
use daemon::Daemon;

const SERVICE: &str = r#"
[[services]]
name = "mlp"
layers = [8, 16, 3]
seed = 3
max_queue = 64
[services.slo]
p99_ms = 50
[services.batching]
max_batch_size = 8
max_queue_delay_ms = 1
"#;

type Client = GrpcInferenceServiceClient<Channel>;

async fn client(d: &Daemon) -> Client {
    let channel = Channel::from_shared(d.grpc.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    GrpcInferenceServiceClient::new(channel)
}

fn row(i: usize) -> Vec<f32> {
    (0..8).map(|j| ((i * 8 + j) % 7) as f32 - 3.0).collect()
}

fn rows(n: usize) -> Vec<f32> {
    (0..n).flat_map(row).collect()
}

fn input(shape: Vec<i64>) -> pb::model_infer_request::InferInputTensor {
    pb::model_infer_request::InferInputTensor {
        name: "input".into(),
        datatype: "FP32".into(),
        shape,
        ..Default::default()
    }
}

/// A request for `n` rows with raw little-endian bytes, as tritonclient sends it.
fn raw_request(model: &str, n: usize) -> pb::ModelInferRequest {
    let bytes: Vec<u8> = rows(n).iter().flat_map(|v| v.to_le_bytes()).collect();
    pb::ModelInferRequest {
        model_name: model.into(),
        id: format!("raw-{n}"),
        inputs: vec![input(vec![n as i64, 8])],
        raw_input_contents: vec![bytes],
        ..Default::default()
    }
}

/// The same rows as typed `fp32_contents`.
fn typed_request(model: &str, n: usize) -> pb::ModelInferRequest {
    let mut i = input(vec![n as i64, 8]);
    i.contents = Some(pb::InferTensorContents {
        fp32_contents: rows(n),
        ..Default::default()
    });
    pb::ModelInferRequest {
        model_name: model.into(),
        id: format!("typed-{n}"),
        inputs: vec![i],
        ..Default::default()
    }
}

fn raw_floats(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// The HTTP answer for the same rows, for comparison.
fn http_probs(d: &Daemon, n: usize) -> Vec<f32> {
    let body = json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [n, 8], "data": rows(n)}]});
    let (status, v) = d.send("POST", "/v2/models/mlp/infer", &body);
    assert_eq!(status, 200, "{v}");
    v["outputs"][0]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn metrics(d: &Daemon) -> String {
    let mut r = d.agent.get(format!("{}/metrics", d.url)).call().unwrap();
    r.body_mut().read_to_string().unwrap()
}

fn assert_close(a: &[f32], b: &[f32]) {
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() <= 1e-6, "{a:?} vs {b:?}");
    }
}

fn expect_err<T: std::fmt::Debug>(
    r: Result<tonic::Response<T>, tonic::Status>,
    code: Code,
    words: &str,
) {
    let e = r.expect_err("an error");
    assert_eq!(e.code(), code, "{e:?}");
    assert!(
        e.message().contains(words),
        "{:?} lacks {words:?}",
        e.message()
    );
}

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
    let metrics = metrics(&d);
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
        metrics(&d)
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

/// One unary `ModelInfer` call over a bare HTTP/2 connection with `grpc-timeout: timeout`
/// (tonic's channel would enforce such a deadline itself and answer before setpoint does).
/// Returns `grpc-status` and the decoded `grpc-message`.
async fn infer_with_deadline(
    d: &Daemon,
    msg: pb::ModelInferRequest,
    timeout: &str,
) -> (String, String) {
    use http_body_util::{BodyExt, Full};
    use hyper::body::Bytes;
    use prost::Message;
    let addr = d.grpc.trim_start_matches("http://").to_owned();
    let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let payload = msg.encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_be_bytes());
    frame.extend_from_slice(&payload);
    let req = hyper::Request::post(format!(
        "http://{addr}/inference.GRPCInferenceService/ModelInfer"
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .header("grpc-timeout", timeout)
    .body(Full::new(Bytes::from(frame)))
    .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let mut fields = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap();
    if let Some(trailers) = body.trailers() {
        fields.extend(trailers.clone());
    }
    let field = |k: &str| {
        let v = fields.get(k).map_or("", |v| v.to_str().unwrap());
        // grpc-message is percent-encoded.
        let mut out = Vec::new();
        let b = v.as_bytes();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%'
                && i + 2 < b.len()
                && let Ok(x) = u8::from_str_radix(&v[i + 1..i + 3], 16)
            {
                out.push(x);
                i += 3;
                continue;
            }
            out.push(b[i]);
            i += 1;
        }
        String::from_utf8(out).unwrap()
    };
    (field("grpc-status"), field("grpc-message"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_that_passes_is_named_as_the_deadline_and_a_parameter_as_the_parameter() {
    let d = Daemon::start(SERVICE);
    d.wait_ready();
    // tritonclient.grpc's client_timeout: only the call's deadline, 1 us, which cannot be met.
    let (status, message) = infer_with_deadline(&d, raw_request("mlp", 1), "1u").await;
    assert_eq!(status, "4", "DEADLINE_EXCEEDED: {message}");
    assert!(
        message.contains(
            "no answer within the request's timeout of 1 us (the client's deadline (grpc-timeout))"
        ),
        "{message}"
    );
    // A shorter parameters.timeout under a long deadline is named as the parameter.
    let mut r = raw_request("mlp", 1);
    r.parameters.insert(
        "timeout".into(),
        pb::InferParameter {
            parameter_choice: Some(pb::infer_parameter::ParameterChoice::Int64Param(1)),
        },
    );
    let (status, message) = infer_with_deadline(&d, r, "10S").await;
    assert_eq!(status, "4", "DEADLINE_EXCEEDED: {message}");
    assert!(
        message.contains("timeout of 1 us (the client's parameters.timeout)"),
        "{message}"
    );
    // A deadline that can be met is: the answer comes.
    let (status, message) = infer_with_deadline(&d, raw_request("mlp", 1), "10S").await;
    assert_eq!(status, "0", "OK: {message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_that_would_change_the_node_need_the_token_and_the_rest_do_not() {
    let d = Daemon::start(&format!("auth_token = \"s3cret\"\n{SERVICE}"));
    d.wait_ready();
    let mut c = client(&d).await;
    let load = || pb::RepositoryModelLoadRequest {
        model_name: "mlp".into(),
        ..Default::default()
    };
    expect_err(
        c.repository_model_load(load()).await,
        Code::Unauthenticated,
        "RepositoryModelLoad: this node requires \"authorization: Bearer TOKEN\" metadata",
    );
    let with = |token: &str| {
        let mut r = tonic::Request::new(load());
        r.metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        r
    };
    expect_err(
        c.repository_model_load(with("wrong")).await,
        Code::Unauthenticated,
        "not the node's",
    );
    expect_err(
        c.repository_model_load(with("s3cret")).await,
        Code::Unimplemented,
        "RepositoryModelLoad is not served by setpoint: models are setpoint services",
    );
    expect_err(
        c.system_shared_memory_register(pb::SystemSharedMemoryRegisterRequest::default())
            .await,
        Code::Unauthenticated,
        "SystemSharedMemoryRegister",
    );
    // Reads and inference need no token, as over HTTP.
    assert!(c.model_infer(raw_request("mlp", 1)).await.is_ok());
    let shm = c
        .system_shared_memory_status(pb::SystemSharedMemoryStatusRequest::default())
        .await;
    assert!(shm.unwrap().into_inner().regions.is_empty());
    expect_err(
        c.trace_setting(pb::TraceSettingRequest::default()).await,
        Code::Unimplemented,
        "TraceSetting is not served by setpoint",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_answers_every_request_by_id_and_goes_on_after_an_error() {
    let d = Daemon::start(SERVICE);
    d.wait_ready();
    let mut c = client(&d).await;
    let mut requests: Vec<pb::ModelInferRequest> = (1..=6)
        .map(|n| {
            let mut r = raw_request("mlp", n);
            r.id = format!("s{n}");
            r
        })
        .collect();
    requests[2].inputs[0].datatype = "FP16".into();
    let expected: HashMap<String, usize> = requests
        .iter()
        .map(|r| (r.id.clone(), r.inputs[0].shape[0] as usize))
        .collect();
    let outbound = tokio_stream::iter(requests);
    let mut answers = c.model_stream_infer(outbound).await.unwrap().into_inner();
    let mut seen = HashMap::new();
    while let Some(a) = tokio::time::timeout(Duration::from_secs(30), answers.message())
        .await
        .expect("an answer within 30 s")
        .unwrap()
    {
        let r = a.infer_response.unwrap();
        seen.insert(r.id.clone(), (a.error_message, r));
    }
    assert_eq!(seen.len(), 6, "{seen:?}");
    for (id, n) in expected {
        let (error, r) = &seen[&id];
        if id == "s3" {
            assert!(
                error.contains("expected datatype FP32, got FP16"),
                "{error}"
            );
            continue;
        }
        assert!(error.is_empty(), "{id}: {error}");
        assert_close(&raw_floats(&r.raw_output_contents[0]), &http_probs(&d, n));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_that_cannot_load_and_a_stopping_node_answer_unavailable() {
    let d = Daemon::start(&format!(
        "{SERVICE}\n[[services]]\nname = \"broken\"\ncheckpoint = \"/no/such/model.ckpt\"\n[services.slo]\np99_ms = 10\n"
    ));
    d.poll(
        Duration::from_secs(30),
        "the broken service to fail",
        || {
            d.get("/v1/services").1["services"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s["name"] == "broken" && s["state"] == "failed")
                .then_some(())
        },
    );
    d.poll(Duration::from_secs(30), "the good service", || {
        (d.get("/v2/models/mlp/ready").0 == 200).then_some(())
    });
    let mut c = client(&d).await;
    assert!(
        !c.server_ready(pb::ServerReadyRequest {})
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    expect_err(
        c.model_infer(raw_request("broken", 1)).await,
        Code::Unavailable,
        "/no/such/model.ckpt",
    );
    let index = c
        .repository_index(pb::RepositoryIndexRequest::default())
        .await
        .unwrap()
        .into_inner();
    let broken = index.models.iter().find(|m| m.name == "broken").unwrap();
    assert_eq!(broken.state, "UNAVAILABLE");
    assert!(broken.reason.contains("/no/such/model.ckpt"), "{broken:?}");
    // Shutting down: every model answers UNAVAILABLE.
    d.node.shutdown();
    expect_err(
        c.model_infer(raw_request("mlp", 1)).await,
        Code::Unavailable,
        "shutting down",
    );
}

/// `SERVICE` with connections closed after 400 ms without a call in flight.
fn idle_config() -> String {
    format!("[http]\nidle_timeout_ms = 400\n{SERVICE}")
}

fn counter(text: &str, line_start: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(line_start))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no `{line_start}` in /metrics"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_is_closed_and_a_long_stream_is_not() {
    let d = Daemon::start(&idle_config());
    d.wait_ready();
    let idle = r#"setpoint_grpc_connections_closed_total{reason="idle"}"#;
    let mut c = client(&d).await;
    c.model_infer(raw_request("mlp", 1)).await.unwrap();
    assert_eq!(
        counter(&metrics(&d), "setpoint_grpc_connections_open "),
        1.0
    );
    // Idle past the timeout: the daemon says GOAWAY and closes; the client connects anew.
    d.poll(
        Duration::from_secs(10),
        "the idle connection to be closed",
        || {
            let m = metrics(&d);
            (counter(&m, idle) == 1.0 && counter(&m, "setpoint_grpc_connections_open ") == 0.0)
                .then_some(())
        },
    );
    let answer = c.model_infer(raw_request("mlp", 2)).await.unwrap();
    assert_eq!(answer.into_inner().outputs[0].shape, vec![2, 3]);
    let accepted = counter(&metrics(&d), "setpoint_grpc_connections_accepted_total ");
    assert_eq!(accepted, 2.0, "the client reconnected once");

    // A stream whose requests come 3 idle timeouts apart stays open: it is a call in flight.
    let closed_before = counter(&metrics(&d), idle);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut answers = c
        .model_stream_infer(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    for n in 1..=3 {
        let mut r = raw_request("mlp", n);
        r.id = format!("late-{n}");
        tx.send(r).await.unwrap();
        let a = tokio::time::timeout(Duration::from_secs(30), answers.message())
            .await
            .expect("an answer within 30 s")
            .unwrap()
            .expect("the stream is still open");
        assert_eq!(a.error_message, "");
        assert_eq!(a.infer_response.unwrap().id, format!("late-{n}"));
        tokio::time::sleep(Duration::from_millis(1200)).await;
    }
    drop(tx);
    assert_eq!(counter(&metrics(&d), idle), closed_before);
}
