//! Helpers for the gRPC API tests: a client of the daemon's gRPC endpoint, requests with raw
//! and typed tensors, the same rows over HTTP, /metrics, and error checks.

#![allow(dead_code)]

use serde_json::json;
use setpoint::api::grpc::pb;
use setpoint::api::grpc::pb::grpc_inference_service_client::GrpcInferenceServiceClient;
use tonic::Code;
use tonic::transport::Channel;

use super::daemon::Daemon;

pub use super::daemon::SERVICE;

pub type Client = GrpcInferenceServiceClient<Channel>;

pub async fn client(d: &Daemon) -> Client {
    let channel = Channel::from_shared(d.grpc.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    GrpcInferenceServiceClient::new(channel)
}

pub fn row(i: usize) -> Vec<f32> {
    (0..8).map(|j| ((i * 8 + j) % 7) as f32 - 3.0).collect()
}

pub fn rows(n: usize) -> Vec<f32> {
    (0..n).flat_map(row).collect()
}

pub fn input(shape: Vec<i64>) -> pb::model_infer_request::InferInputTensor {
    pb::model_infer_request::InferInputTensor {
        name: "input".into(),
        datatype: "FP32".into(),
        shape,
        ..Default::default()
    }
}

/// A request for `n` rows with raw little-endian bytes, as tritonclient sends it.
pub fn raw_request(model: &str, n: usize) -> pb::ModelInferRequest {
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
pub fn typed_request(model: &str, n: usize) -> pb::ModelInferRequest {
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

pub fn raw_floats(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// The HTTP answer for the same rows, for comparison.
pub fn http_probs(d: &Daemon, n: usize) -> Vec<f32> {
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

pub fn assert_close(a: &[f32], b: &[f32]) {
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() <= 1e-6, "{a:?} vs {b:?}");
    }
}

pub fn expect_err<T: std::fmt::Debug>(
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

/// What a bare HTTP/2 call was answered: `grpc-status`, the decoded `grpc-message`, and the
/// body's bytes.
pub struct RawAnswer {
    pub status: String,
    pub message: String,
    pub body: Vec<u8>,
}

/// `payload` with gRPC's prefix: the compressed flag `flag` and its length.
pub fn framed(flag: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![flag];
    frame.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// One unary `ModelInfer` call over a bare HTTP/2 connection (no client of tonic's in the
/// way), with `headers` besides gRPC's own and the body sent as one DATA frame per chunk.
pub async fn raw_call(d: &Daemon, headers: &[(&str, &str)], chunks: Vec<Vec<u8>>) -> RawAnswer {
    use http_body_util::{BodyExt, StreamBody};
    use hyper::body::{Bytes, Frame};
    let addr = d.grpc.trim_start_matches("http://").to_owned();
    let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let frames = chunks
        .into_iter()
        .map(|c| Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from(c))));
    let mut req = hyper::Request::post(format!(
        "http://{addr}/inference.GRPCInferenceService/ModelInfer"
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(StreamBody::new(futures_util::stream::iter(frames)))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let mut fields = resp.headers().clone();
    let collected = resp.into_body().collect().await.unwrap();
    if let Some(trailers) = collected.trailers() {
        fields.extend(trailers.clone());
    }
    let field = |k: &str| fields.get(k).map_or("", |v| v.to_str().unwrap()).to_owned();
    RawAnswer {
        status: field("grpc-status"),
        message: percent_decoded(&field("grpc-message")),
        body: collected.to_bytes().to_vec(),
    }
}

/// `v` with its `%XX` escapes decoded, as grpc-message is sent.
fn percent_decoded(v: &str) -> String {
    let b = v.as_bytes();
    let mut out = Vec::new();
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
}
