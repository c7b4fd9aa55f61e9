//! The gRPC API's calls beyond one answer: a client deadline against the request's timeout,
//! the bearer token, the bidirectional stream, a model that cannot load and a stopping node,
//! and idle connections against long streams.

use std::collections::HashMap;
use std::time::Duration;

use setpoint::api::grpc::pb;
use tonic::Code;

use crate::support::daemon;
use crate::support::grpc;
use daemon::Daemon;
use grpc::*;

/// One unary `ModelInfer` call over a bare HTTP/2 connection with `grpc-timeout: timeout`
/// (tonic's channel would enforce such a deadline itself and answer before setpoint does).
/// Returns `grpc-status` and the decoded `grpc-message`.
async fn infer_with_deadline(
    d: &Daemon,
    msg: pb::ModelInferRequest,
    timeout: &str,
) -> (String, String) {
    use prost::Message;
    let a = raw_call(
        d,
        &[("grpc-timeout", timeout)],
        vec![framed(0, &msg.encode_to_vec())],
    )
    .await;
    (a.status, a.message)
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
        counter(&d.metrics(), "setpoint_grpc_connections_open "),
        1.0
    );
    // Idle past the timeout: the daemon says GOAWAY and closes; the client connects anew.
    d.poll(
        Duration::from_secs(10),
        "the idle connection to be closed",
        || {
            let m = d.metrics();
            (counter(&m, idle) == 1.0 && counter(&m, "setpoint_grpc_connections_open ") == 0.0)
                .then_some(())
        },
    );
    let answer = c.model_infer(raw_request("mlp", 2)).await.unwrap();
    assert_eq!(answer.into_inner().outputs[0].shape, vec![2, 3]);
    let accepted = counter(&d.metrics(), "setpoint_grpc_connections_accepted_total ");
    assert_eq!(accepted, 2.0, "the client reconnected once");

    // A stream whose requests come 3 idle timeouts apart stays open: it is a call in flight.
    let closed_before = counter(&d.metrics(), idle);
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
    assert_eq!(counter(&d.metrics(), idle), closed_before);
}
