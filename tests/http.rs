//! The daemon over real HTTP on loopback: every v2 endpoint, binary tensors both ways, the
//! error statuses, the jobs and services API end to end, and the metrics text.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::daemon;
use crate::support::promtool;
use daemon::Daemon;

use daemon::SERVICE;

fn row(i: usize) -> Vec<f32> {
    (0..8).map(|j| ((i * 8 + j) % 7) as f32 - 3.0).collect()
}

fn infer_json(rows: &[Vec<f32>]) -> Value {
    let flat: Vec<f32> = rows.iter().flatten().copied().collect();
    json!({"id": "req-1", "inputs": [{"name": "input", "datatype": "FP32", "shape": [rows.len(), 8], "data": flat}]})
}

fn probs(resp: &Value) -> Vec<f32> {
    resp["outputs"][0]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect()
}

#[test]
fn server_and_model_endpoints_answer_as_kserve_and_triton_clients_expect() {
    let d = Daemon::start(SERVICE);
    d.wait_ready();
    let (s, v) = d.get("/v2");
    assert_eq!(s, 200);
    assert_eq!(v["name"], "setpoint");
    let ext: Vec<&str> = v["extensions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert!(ext.contains(&"binary_tensor_data") && ext.contains(&"statistics"));
    assert_eq!(d.get("/v2/health/live").0, 200);
    assert_eq!(d.get("/v2/health/ready"), (200, json!({"ready": true})));

    for path in ["/v2/models/mlp", "/v2/models/mlp/versions/1"] {
        let (s, v) = d.get(path);
        assert_eq!(s, 200, "{path}");
        assert_eq!(v["name"], "mlp");
        assert_eq!(v["versions"], json!(["1"]));
        assert_eq!(
            v["inputs"],
            json!([{"name": "input", "datatype": "FP32", "shape": [-1, 8]}])
        );
        assert_eq!(
            v["outputs"],
            json!([{"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]}])
        );
    }
    for path in ["/v2/models/mlp/ready", "/v2/models/mlp/versions/1/ready"] {
        assert_eq!(d.get(path).0, 200, "{path}");
    }
    for path in ["/v2/models/mlp/config", "/v2/models/mlp/versions/1/config"] {
        let (s, v) = d.get(path);
        assert_eq!(s, 200);
        assert_eq!(v["name"], "mlp");
        assert_eq!(v["max_batch_size"], 8);
        assert_eq!(
            v["input"],
            json!([{"name": "input", "data_type": "TYPE_FP32", "dims": [8]}])
        );
        assert_eq!(
            v["output"],
            json!([{"name": "probabilities", "data_type": "TYPE_FP32", "dims": [3]}])
        );
        assert_eq!(v["dynamic_batching"]["max_queue_delay_microseconds"], 1000);
    }
    let (s, v) = d.get("/v2/models/mlp/versions/2");
    assert_eq!(s, 404);
    assert_eq!(v["error"], "model mlp has no version 2 (available: 1)");
}

#[test]
fn inference_in_json_and_binary_both_ways_with_batches() {
    let d = Daemon::start(SERVICE);
    d.wait_ready();
    let rows: Vec<Vec<f32>> = (0..4).map(row).collect();

    // JSON, batch 4, through both paths.
    let (s, v) = d.send("POST", "/v2/models/mlp/infer", &infer_json(&rows));
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["id"], "req-1");
    assert_eq!(v["model_name"], "mlp");
    assert_eq!(v["outputs"][0]["shape"], json!([4, 3]));
    let p = probs(&v);
    assert_eq!(p.len(), 12);
    for r in 0..4 {
        let sum: f32 = p[r * 3..r * 3 + 3].iter().sum();
        assert!((sum - 1.0).abs() < 1e-5);
    }
    let (s, v1) = d.send(
        "POST",
        "/v2/models/mlp/versions/1/infer",
        &infer_json(&rows[..1]),
    );
    assert_eq!(s, 200);
    assert_eq!(
        probs(&v1),
        p[..3].to_vec(),
        "a row's answer does not depend on its batch"
    );

    // Binary input and binary output, as tritonclient sends them.
    let header = json!({
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [4, 8], "parameters": {"binary_data_size": 128}}],
        "outputs": [{"name": "probabilities", "parameters": {"binary_data": true}}],
    })
    .to_string();
    let mut body = header.clone().into_bytes();
    for r in &rows {
        for v in r {
            body.extend_from_slice(&v.to_le_bytes());
        }
    }
    let mut resp = d
        .agent
        .post(format!("{}/v2/models/mlp/infer", d.url))
        .header("Inference-Header-Content-Length", header.len().to_string())
        .header("Content-Type", "application/octet-stream")
        .send(&body[..])
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let hlen: usize = resp
        .headers()
        .get("inference-header-content-length")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let bytes = resp.body_mut().read_to_vec().unwrap();
    let head: Value = serde_json::from_slice(&bytes[..hlen]).unwrap();
    assert_eq!(head["outputs"][0]["parameters"]["binary_data_size"], 48);
    assert!(head["outputs"][0].get("data").is_none());
    let out: Vec<f32> = bytes[hlen..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(out, p, "binary and JSON answers agree");

    // JSON input, binary output asked at request level.
    let mut req = infer_json(&rows);
    req["parameters"] = json!({"binary_data_output": true});
    let mut resp = d
        .agent
        .post(format!("{}/v2/models/mlp/infer", d.url))
        .send_json(&req)
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let hlen: usize = resp
        .headers()
        .get("inference-header-content-length")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let bytes = resp.body_mut().read_to_vec().unwrap();
    assert_eq!(bytes.len(), hlen + 48);

    // Statistics count what was served.
    let (s, v) = d.get("/v2/models/mlp/stats");
    assert_eq!(s, 200);
    let st = &v["model_stats"][0];
    assert_eq!(st["name"], "mlp");
    assert_eq!(st["version"], "1");
    // Triton counts requests in `success`, rows in `inference_count`.
    assert_eq!(st["inference_count"], 4 + 1 + 4 + 4);
    assert_eq!(st["inference_stats"]["success"]["count"], 4);
    assert!(
        st["inference_stats"]["compute_infer"]["ns"]
            .as_u64()
            .unwrap()
            > 0
    );
    let batched: u64 = st["batch_stats"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["batch_size"].as_u64().unwrap() * b["compute_infer"]["count"].as_u64().unwrap())
        .sum();
    assert_eq!(batched, 13);
    assert_eq!(d.get("/v2/models/stats").1["model_stats"][0]["name"], "mlp");
}

fn expect_error(got: (u16, Value), status: u16, message: &str) {
    assert_eq!(got.0, status, "{}", got.1);
    let m = got.1["error"].as_str().unwrap_or_default();
    assert!(m.contains(message), "expected {message:?} in {m:?}");
}

#[test]
fn errors_have_their_status_and_say_what_was_wrong() {
    let d = Daemon::start(&format!("max_request_bytes = 2048\n{SERVICE}"));
    d.wait_ready();
    let infer = "/v2/models/mlp/infer";
    expect_error(
        d.send("POST", "/v2/models/nope/infer", &infer_json(&[row(0)])),
        404,
        "unknown model nope",
    );
    expect_error(
        d.get("/v2/nothing/here"),
        404,
        "no route for GET /v2/nothing/here",
    );
    let mut bad = infer_json(&[row(0)]);
    bad["inputs"][0]["shape"] = json!([1, 7]);
    expect_error(
        d.send("POST", infer, &bad),
        400,
        "input \"input\": expected shape [-1, 8], got [1, 7]",
    );
    let mut bad = infer_json(&[row(0)]);
    bad["inputs"][0]["datatype"] = json!("INT64");
    expect_error(
        d.send("POST", infer, &bad),
        400,
        "expected datatype FP32, got INT64 (accepted: FP32)",
    );
    let mut bad = infer_json(&[row(0)]);
    bad["inputs"][0]["name"] = json!("x");
    expect_error(
        d.send("POST", infer, &bad),
        400,
        "unknown input \"x\" (the model takes \"input\")",
    );
    let mut r = d
        .agent
        .post(format!("{}{infer}", d.url))
        .send("{\"inputs\": [")
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert!(
        r.body_mut()
            .read_to_string()
            .unwrap()
            .contains("invalid JSON")
    );

    // Over the body limit.
    let big: Vec<Vec<f32>> = (0..40).map(row).collect();
    expect_error(
        d.send("POST", infer, &infer_json(&big)),
        413,
        "exceeds the limit of 2048 bytes",
    );
    // Non-finite inputs: NaN in binary data, and a JSON number beyond f32's range, each
    // named by its row-major index.
    let header = json!({
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 8], "parameters": {"binary_data_size": 64}}],
    })
    .to_string();
    let mut body = header.clone().into_bytes();
    for i in 0..16 {
        let v = if i == 11 { f32::NAN } else { i as f32 };
        body.extend_from_slice(&v.to_le_bytes());
    }
    let mut r = d
        .agent
        .post(format!("{}{infer}", d.url))
        .header("Inference-Header-Content-Length", header.len().to_string())
        .send(&body[..])
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let v: Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
    assert_eq!(
        v["error"], "input \"input\": value 11 is not a finite number",
        "{v}"
    );
    let mut bad = infer_json(&[row(0)]);
    bad["inputs"][0]["data"][2] = json!(1e39);
    expect_error(
        d.send("POST", infer, &bad),
        400,
        "input \"input\": value 2 is not a finite number",
    );
    // Wrong method.
    expect_error(
        d.send("DELETE", "/v2/health/live", &Value::Null),
        405,
        "not allowed",
    );
    // The node keeps serving after all that.
    assert_eq!(d.send("POST", infer, &infer_json(&[row(0)])).0, 200);
    let (_, m) = d.get("/metrics");
    assert!(
        m.as_str()
            .unwrap()
            .contains("setpoint_inference_requests_total{service=\"mlp\",outcome=\"invalid\"} 6")
    );
}

#[test]
fn a_full_queue_answers_429_with_retry_after_while_health_stays_up() {
    // A slow model (64 MB of weights per row) and a short queue.
    let d = Daemon::start(
        r#"
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
    let url = format!("{}/v2/models/slow/infer", d.url);
    let body = infer_json(&[row(1)]).to_string();
    let results: Vec<(u16, Option<String>, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..12)
            .map(|_| {
                let agent = d.agent.clone();
                let url = url.clone();
                let body = body.clone();
                s.spawn(move || {
                    let mut r = agent.post(&url).send(&body).unwrap();
                    let retry = r
                        .headers()
                        .get("retry-after")
                        .map(|v| v.to_str().unwrap().to_string());
                    (
                        r.status().as_u16(),
                        retry,
                        r.body_mut().read_to_string().unwrap(),
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ok = results.iter().filter(|r| r.0 == 200).count();
    let full: Vec<_> = results.iter().filter(|r| r.0 == 429).collect();
    assert_eq!(ok + full.len(), 12, "{results:?}");
    assert!(!full.is_empty(), "no 429 among {results:?}");
    assert!(ok >= 1);
    for r in full {
        assert_eq!(r.1.as_deref(), Some("1"));
        assert!(
            r.2.contains("queue is full (2 requests waiting)"),
            "{}",
            r.2
        );
    }
    assert_eq!(d.get("/v2/health/ready").0, 200);
}

fn with_timeout(rows: &[Vec<f32>], timeout: Value) -> Value {
    let mut v = infer_json(rows);
    v["parameters"] = json!({ "timeout": timeout });
    v
}

/// One sample of the metrics text, by its name and labels as written.
fn metric(d: &Daemon, sample: &str) -> f64 {
    let (_, text) = d.get("/metrics");
    let text = text.as_str().unwrap().to_string();
    text.lines()
        .find_map(|l| l.strip_prefix(sample).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no sample {sample} in\n{text}"))
}

#[test]
fn a_request_out_of_time_is_answered_504_and_never_run() {
    let d = Daemon::start(SERVICE);
    d.wait_ready();
    let path = "/v2/models/mlp/infer";
    let (s, _) = d.send("POST", path, &infer_json(&[row(0)]));
    assert_eq!(s, 200);
    let (_, before) = d.get("/v2/models/mlp/stats");
    let before = &before["model_stats"][0];
    // 1 us has passed before the request reaches the queue: it is dropped unrun.
    for i in 0..3 {
        let got = d.send("POST", path, &with_timeout(&[row(i), row(i + 1)], json!(1)));
        expect_error(
            got,
            504,
            "model mlp: no answer within the request's timeout of 1 us (the client's parameters.timeout)",
        );
    }
    // Both rows of each request leave the queue unrun, once the batcher reaches them.
    d.poll(Duration::from_secs(30), "expired rows", || {
        (metric(&d, "setpoint_inference_expired_total{service=\"mlp\"}") == 6.0).then_some(())
    });
    let (_, after) = d.get("/v2/models/mlp/stats");
    let after = &after["model_stats"][0];
    assert_eq!(after["inference_count"], before["inference_count"]);
    assert_eq!(after["execution_count"], before["execution_count"]);
    assert_eq!(
        after["inference_stats"]["fail"]["count"].as_u64().unwrap(),
        before["inference_stats"]["fail"]["count"].as_u64().unwrap() + 3
    );
    assert_eq!(
        metric(
            &d,
            "setpoint_inference_requests_total{service=\"mlp\",outcome=\"timeout\"}"
        ),
        3.0
    );
    // A timeout within the service's (10 x 50 ms) is honoured; the request is served.
    let (s, v) = d.send("POST", path, &with_timeout(&[row(1)], json!(400_000)));
    assert_eq!(s, 200, "{v}");
    let (_, svc) = d.get("/v1/services/mlp");
    assert_eq!(svc["timeout_ms"], json!(500.0));
}

#[test]
fn a_client_timeout_above_the_services_is_clamped_to_it() {
    // A service whose own timeout (1 us) no request can meet: a client asking for 5 s still
    // runs under 1 us.
    let d = Daemon::start(
        r#"
[[services]]
name = "mlp"
layers = [8, 16, 3]
timeout_ms = 0.001
[services.slo]
p99_ms = 0.001
"#,
    );
    d.wait_ready();
    let path = "/v2/models/mlp/infer";
    let got = d.send("POST", path, &with_timeout(&[row(0)], json!(5_000_000)));
    expect_error(
        got,
        504,
        "no answer within the request's timeout of 1 us (the service's timeout_ms = 0.001; \
         the client's parameters.timeout of 5000000 us is longer and was clamped to it)",
    );
    let got = d.send("POST", path, &infer_json(&[row(0)]));
    expect_error(
        got,
        504,
        "timeout of 1 us (the service's timeout_ms = 0.001)",
    );
    d.poll(Duration::from_secs(30), "expired rows", || {
        (metric(&d, "setpoint_inference_expired_total{service=\"mlp\"}") == 2.0).then_some(())
    });
    assert_eq!(
        metric(
            &d,
            "setpoint_inference_requests_total{service=\"mlp\",outcome=\"success\"}"
        ),
        0.0
    );
}

#[test]
fn a_timeout_that_is_not_a_positive_integer_is_refused_naming_the_parameter() {
    let d = Daemon::start(SERVICE);
    d.wait_ready();
    let path = "/v2/models/mlp/infer";
    for bad in [
        json!(0),
        json!(-5),
        json!(1.5),
        json!("100"),
        json!(null),
        json!(true),
    ] {
        let got = d.send("POST", path, &with_timeout(&[row(0)], bad.clone()));
        expect_error(
            got,
            400,
            &format!(
                "parameters.timeout: expected a positive integer number of microseconds, got {bad}"
            ),
        );
    }
    let (s, _) = d.send("POST", path, &with_timeout(&[row(0)], json!(1_000_000)));
    assert_eq!(s, 200);
    assert_eq!(d.get("/v2/health/ready").0, 200);
}

#[test]
fn on_a_loaded_service_a_tiny_timeout_gets_504_while_the_rest_are_served() {
    let d = Daemon::start(
        r#"
[[services]]
name = "slow"
layers = [8, 4096, 4096, 3]
max_queue = 64
[services.slo]
p99_ms = 1000
[services.batching]
max_batch_size = 1
"#,
    );
    d.wait_ready();
    let url = format!("{}/v2/models/slow/infer", d.url);
    let plain = infer_json(&[row(1)]).to_string();
    let tiny = with_timeout(&[row(2)], json!(1)).to_string();
    let results: Vec<(bool, u16, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..12)
            .map(|i| {
                let agent = d.agent.clone();
                let url = url.clone();
                let is_tiny = i % 3 == 2;
                let body = if is_tiny { tiny.clone() } else { plain.clone() };
                s.spawn(move || {
                    let mut r = agent.post(&url).send(&body).unwrap();
                    (
                        is_tiny,
                        r.status().as_u16(),
                        r.body_mut().read_to_string().unwrap(),
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (is_tiny, status, body) in &results {
        if *is_tiny {
            assert_eq!(*status, 504, "{body}");
            assert!(
                body.contains("no answer within the request's timeout of 1 us"),
                "{body}"
            );
        } else {
            assert_eq!(*status, 200, "{body}");
        }
    }
    d.poll(Duration::from_secs(60), "expired rows", || {
        (metric(&d, "setpoint_inference_expired_total{service=\"slow\"}") == 4.0).then_some(())
    });
    assert_eq!(
        metric(
            &d,
            "setpoint_inference_requests_total{service=\"slow\",outcome=\"success\"}"
        ),
        8.0
    );
}

#[test]
fn a_service_that_cannot_load_keeps_the_node_unready_and_answers_503() {
    let d = Daemon::start(&format!(
        "{SERVICE}\n[[services]]\nname = \"broken\"\ncheckpoint = \"/no/such/model.ckpt\"\n[services.slo]\np99_ms = 10\n"
    ));
    let slot_failed = || {
        d.get("/v1/services").1["services"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["name"] == "broken" && s["state"] == "failed")
    };
    d.poll(
        Duration::from_secs(30),
        "the broken service to fail",
        || slot_failed().then_some(()),
    );
    d.poll(Duration::from_secs(30), "the good service", || {
        (d.get("/v2/models/mlp/ready").0 == 200).then_some(())
    });
    assert_eq!(d.get("/v2/health/ready"), (503, json!({"ready": false})));
    expect_error(
        d.get("/v2/models/broken/ready"),
        503,
        "model broken is not available",
    );
    expect_error(
        d.send("POST", "/v2/models/broken/infer", &infer_json(&[row(0)])),
        503,
        "/no/such/model.ckpt",
    );
    // Shutting down: every model answers 503.
    d.node.shutdown();
    expect_error(
        d.send("POST", "/v2/models/mlp/infer", &infer_json(&[row(0)])),
        503,
        "shutting down",
    );
    assert_eq!(d.get("/v2/health/ready").0, 503);
}

#[test]
fn a_job_trains_then_serves_its_model_over_http() {
    let d = Daemon::start("");
    d.wait_ready();
    let spec = json!({
        "name": "blobs",
        "data": "synthetic:blobs:size=600,classes=3,features=8,seed=4",
        "layers": [8, 32, 3],
        "target_accuracy": 0.9,
        "epochs": 40,
        "deadline": "5m",
        "checkpoint_every_steps": 5,
    });
    let (s, v) = d.send("POST", "/v1/jobs", &spec);
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["name"], "blobs");
    assert_eq!(v["class"], "deadline");
    assert!(v["deadline"].is_string());
    // Same name again is a conflict; a bad spec names its keys.
    expect_error(
        d.send("POST", "/v1/jobs", &spec),
        409,
        "a job named blobs already exists",
    );
    expect_error(
        d.send("POST", "/v1/jobs", &json!({"name": "x", "data": "synthetic:blobs", "layers": [64, 10], "lr": -1, "epoch": 3})),
        400,
        "epoch: unknown key",
    );
    expect_error(
        d.send(
            "POST",
            "/v1/jobs",
            &json!({"name": "x", "data": "synthetic:blobs", "layers": [64, 10], "lr": -1}),
        ),
        400,
        "lr: must be > 0, got -1",
    );
    let done = d.poll(Duration::from_secs(60), "the job to complete", || {
        let (_, v) = d.get("/v1/jobs/blobs");
        (v["state"] == "completed").then_some(v)
    });
    assert_eq!(done["stop_reason"], "target_reached");
    assert!(done["val_accuracy"].as_f64().unwrap() >= 0.9);
    assert!(done["steps"].as_u64().unwrap() > 0);
    assert!(done["slack_s"].as_f64().unwrap() > 0.0);
    assert_eq!(
        done["accuracy_curve"].as_array().unwrap().len() as u64,
        done["epochs_done"].as_u64().unwrap()
    );
    let ckpt = done["checkpoint"].as_str().unwrap().to_string();
    assert!(std::path::Path::new(&ckpt).exists());
    let (_, list) = d.get("/v1/jobs");
    assert_eq!(list["jobs"][0]["name"], "blobs");

    // Cancel a finished job: a conflict (a plain DELETE would remove it).
    expect_error(
        d.send("DELETE", "/v1/jobs/blobs?action=cancel", &Value::Null),
        409,
        "has already ended",
    );
    expect_error(d.get("/v1/jobs/none"), 404, "unknown job none");

    // Publish it and infer with the trained model.
    let (s, v) = d.send(
        "POST",
        "/v1/jobs/blobs/serve",
        &json!({"name": "blobs-svc", "slo": {"p99_ms": 20}}),
    );
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["origin"], json!({"kind": "job", "job": "blobs"}));
    let data = setpoint::data::load(
        "synthetic:blobs:size=600,classes=3,features=8,seed=4",
        &Default::default(),
    )
    .unwrap();
    let rows: Vec<Vec<f32>> = (0..50).map(|i| data.row(i).to_vec()).collect();
    let (s, v) = d.send("POST", "/v2/models/blobs-svc/infer", &infer_json(&rows));
    assert_eq!(s, 200, "{v}");
    let p = probs(&v);
    let labels = data.labels.as_ref().unwrap();
    let correct = (0..50)
        .filter(|&r| setpoint::util::stats::argmax(&p[r * 3..r * 3 + 3]) == labels[r] as usize)
        .count();
    assert!(correct >= 40, "the served model got {correct} of 50 right");
    // Its answers are the checkpoint's, computed here independently.
    let local = setpoint::model::checkpoint::Checkpoint::load(std::path::Path::new(&ckpt)).unwrap();
    let be = setpoint::device::CpuBackend::single();
    let mlp = setpoint::model::Mlp::from_params(&be, &local.params).unwrap();
    let mut ws = setpoint::model::Workspace::new(&be, &[8, 32, 3], 1, false).unwrap();
    let mut x = rows[0].clone();
    local.normalizer.apply(&mut x);
    use setpoint::device::Backend;
    let xb = be.upload(&x).unwrap();
    mlp.predict(&be, &mut ws, &xb, 1).unwrap();
    let mut want = vec![0.0; 3];
    be.read(ws.output(), &mut want).unwrap();
    for (g, w) in p[..3].iter().zip(&want) {
        assert!((g - w).abs() < 1e-6);
    }
    // Serving the same job under the same name again conflicts; removing works.
    expect_error(
        d.send(
            "POST",
            "/v1/jobs/blobs/serve",
            &json!({"name": "blobs-svc", "slo": {"p99_ms": 20}}),
        ),
        409,
        "already exists",
    );
    assert_eq!(
        d.send("DELETE", "/v1/services/blobs-svc", &Value::Null).0,
        204
    );
    assert_eq!(d.get("/v2/models/blobs-svc").0, 404);
}

#[test]
fn a_deadline_the_node_cannot_meet_is_refused_with_the_earliest_it_can() {
    let d = Daemon::start("");
    let (s, v) = d.send(
        "POST",
        "/v1/jobs",
        &json!({
            "name": "big",
            "data": "synthetic:blobs:size=20000",
            "layers": [64, 512, 512, 10],
            "epochs": 200,
            "deadline": "5s",
        }),
    );
    assert_eq!(s, 409, "{v}");
    let msg = v["error"].as_str().unwrap();
    assert!(msg.starts_with("job big needs "), "{msg}");
    assert!(
        msg.contains("of the device until its deadline in 5 s"),
        "{msg}"
    );
    assert!(
        msg.contains("the earliest deadline it can meet is "),
        "{msg}"
    );
    // Nothing was recorded or started.
    assert_eq!(d.get("/v1/jobs/big").0, 404);
    // The same job as best-effort is accepted.
    let (s, v) = d.send(
        "POST",
        "/v1/jobs",
        &json!({
            "name": "big",
            "data": "synthetic:blobs:size=20000",
            "layers": [64, 512, 512, 10],
            "epochs": 200,
            "class": "best-effort",
        }),
    );
    assert_eq!(s, 201, "{v}");
    assert_eq!(d.send("DELETE", "/v1/jobs/big", &Value::Null).0, 200);
}

#[test]
fn a_running_job_can_be_changed_and_cancelled_keeping_its_checkpoint() {
    let d = Daemon::start("");
    let (s, v) = d.send(
        "POST",
        "/v1/jobs",
        &json!({
            "name": "long",
            "data": "synthetic:blobs:size=4000,classes=10,features=64",
            "layers": [64, 256, 256, 10],
            "epochs": 1000,
            "checkpoint_every_steps": 10,
            "class": "best-effort",
        }),
    );
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["class"], "best-effort");
    d.poll(Duration::from_secs(60), "the job to take 20 steps", || {
        let (_, v) = d.get("/v1/jobs/long");
        (v["steps"].as_u64().unwrap_or(0) >= 20).then_some(())
    });
    let (s, v) = d.send(
        "PATCH",
        "/v1/jobs/long",
        &json!({"deadline": "1h", "epochs": 2000}),
    );
    assert_eq!(s, 200, "{v}");
    assert!(v["deadline"].is_string());
    assert_eq!(v["epochs_max"], 2000);
    expect_error(
        d.send("PATCH", "/v1/jobs/long", &json!({"layers": [1, 2]})),
        400,
        "layers: cannot be changed (accepted: deadline, target_accuracy, epochs)",
    );
    expect_error(
        d.send("PATCH", "/v1/jobs/long", &json!({"target_accuracy": 2})),
        400,
        "target_accuracy: must be a number in (0, 1] or null, got 2",
    );
    let (s, _) = d.send("DELETE", "/v1/jobs/long", &Value::Null);
    assert_eq!(s, 200);
    let v = d.poll(Duration::from_secs(30), "the job to stop", || {
        let (_, v) = d.get("/v1/jobs/long");
        (v["state"] == "cancelled").then_some(v)
    });
    let ckpt = v["checkpoint"].as_str().unwrap();
    let saved = setpoint::model::checkpoint::Checkpoint::load(std::path::Path::new(ckpt)).unwrap();
    assert_eq!(
        saved.training.unwrap().meta.step,
        v["steps"].as_u64().unwrap(),
        "the checkpoint holds the last step taken"
    );
}

/// Checks Prometheus text exposition: every sample is `name{labels} value`, declared by a
/// TYPE line, histogram buckets are cumulative and end at +Inf with the count.
fn check_exposition(text: &str) -> usize {
    let mut types = std::collections::HashMap::new();
    let mut samples = 0;
    let mut last_bucket: Option<(String, f64)> = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split(' ');
            let (name, kind) = (it.next().unwrap(), it.next().unwrap());
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            assert!(
                types.insert(name.to_string(), kind.to_string()).is_none(),
                "duplicate TYPE {name}"
            );
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        assert!(
            !line.starts_with('#') && !line.is_empty(),
            "stray line {line:?}"
        );
        let (series, value) = line.rsplit_once(' ').unwrap();
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        let name = series.split('{').next().unwrap();
        assert!(name.starts_with("setpoint_"), "{name}");
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{name}"
        );
        if let Some(labels) = series.strip_prefix(name)
            && !labels.is_empty()
        {
            assert!(labels.starts_with('{') && labels.ends_with('}'), "{line}");
        }
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|b| types.get(*b).map(String::as_str) == Some("histogram"))
            })
            .unwrap_or(name);
        let kind = types
            .get(base)
            .unwrap_or_else(|| panic!("{name} has no TYPE"));
        if kind == "counter" {
            assert!(
                name.ends_with("_total"),
                "counter {name} must end in _total"
            );
        }
        if name.ends_with("_bucket") {
            let key = series.split(",le=").next().unwrap().to_string();
            if let Some((k, prev)) = &last_bucket
                && *k == key
            {
                assert!(value >= *prev, "buckets not cumulative in {line}");
            }
            last_bucket = Some((key, value));
        }
        samples += 1;
    }
    samples
}

#[test]
fn metrics_parse_as_prometheus_text() {
    let d = Daemon::start(SERVICE);
    d.wait_ready();
    for i in 0..5 {
        d.send("POST", "/v2/models/mlp/infer", &infer_json(&[row(i)]));
    }
    let mut r = d.agent.get(format!("{}/metrics", d.url)).call().unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(
        r.headers()
            .get("content-type")
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let text = r.body_mut().read_to_string().unwrap();
    assert!(check_exposition(&text) > 50);
    assert!(
        text.contains("setpoint_inference_requests_total{service=\"mlp\",outcome=\"success\"} 5")
    );
    assert!(text.contains("setpoint_inference_rows_total{service=\"mlp\",outcome=\"success\"} 5"));
    assert!(text.contains(
        "setpoint_inference_request_duration_seconds_count{service=\"mlp\",protocol=\"http\"} 5"
    ));
    assert!(text.contains(
        "setpoint_inference_queue_duration_seconds_bucket{service=\"mlp\",le=\"+Inf\"} 5"
    ));
    assert!(text.contains("setpoint_process_start_time_seconds "));
    let cpu = text
        .lines()
        .find_map(|l| l.strip_prefix("setpoint_process_cpu_seconds_total "))
        .and_then(|v| v.parse::<f64>().ok());
    assert!(cpu.is_some_and(|s| s > 0.0), "process CPU: {cpu:?}");
    assert!(text.contains("setpoint_tenant_share_ratio{tenant=\"mlp\",kind=\"service\"}"));

    // Prometheus's own linter, when it is installed (.ci/run installs it).
    promtool::promtool_check(&text);
}

#[test]
fn status_shows_every_tenant_with_its_set_point() {
    let d = Daemon::start(setpoint::config::DEFAULT_CONFIG);
    d.wait_ready();
    let (s, v) = d.get("/v1/status");
    assert_eq!(s, 200);
    assert_eq!(v["ready"], true);
    // Where tenants run and why, probed at start: on a host without a GPU, the reason; with
    // one, on it.
    let note = v["device_note"].as_str().unwrap();
    if v["gpus"].as_array().unwrap().is_empty() {
        assert_eq!(v["devices"][0]["name"], "cpu");
        assert!(note.starts_with("no usable GPU ("), "{note}");
        assert!(note.ends_with("running on the CPU backend"), "{note}");
    } else {
        assert_eq!(v["devices"][0]["name"], "cuda:0");
        assert!(note.starts_with("tenants run on GPU 0 ("), "{note}");
    }
    // The config's job is admitted beside the server's start, not before it.
    let v = d.poll(Duration::from_secs(60), "the demo job", || {
        let (_, v) = d.get("/v1/status");
        let listed = v["tenants"].as_array()?.iter().any(|t| t["name"] == "demo");
        listed.then_some(v)
    });
    let tenants = v["tenants"].as_array().unwrap();
    let svc = tenants.iter().find(|t| t["name"] == "mlp").unwrap();
    assert_eq!(svc["kind"], "service");
    assert_eq!(svc["set_point"], "p99 <= 25 ms");
    let job = tenants.iter().find(|t| t["name"] == "demo").unwrap();
    assert_eq!(job["kind"], "job");
    let sp = job["set_point"].as_str().unwrap();
    assert!(sp.starts_with("accuracy >= 0.95 by "), "{sp}");
    // The deadline to the second, as in the tables: `…T16:05:13Z`, no nanoseconds.
    let at = sp.trim_start_matches("accuracy >= 0.95 by ");
    assert_eq!(at.len(), "2026-12-02T16:05:13Z".len(), "{sp}");
    assert!(at.ends_with('Z') && !at.contains('.'), "{sp}");
}

#[test]
fn with_a_token_changes_need_it_and_reads_and_inference_do_not() {
    let d = Daemon::start("auth_token = \"s3cret-token\"\n");
    let url = |p: &str| format!("{}{p}", d.url);
    let job = json!({"name": "x", "data": "synthetic:blobs", "layers": [64, 10]});
    // No token: 401, saying what is needed, with the scheme in WWW-Authenticate.
    let mut r = d.agent.post(url("/v1/jobs")).send_json(&job).unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.headers().get("www-authenticate").unwrap(),
        "Bearer realm=\"setpoint\""
    );
    let body: Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
    assert_eq!(
        body["error"],
        "POST /v1/jobs: this node requires \"Authorization: Bearer TOKEN\" on requests that change it"
    );
    // A wrong token, and a DELETE: refused too, and nothing changed.
    let mut r = d
        .agent
        .delete(url("/v1/jobs/x"))
        .header("authorization", "Bearer s3cret-tokeN")
        .call()
        .unwrap();
    assert_eq!(r.status(), 401);
    let body: Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
    assert_eq!(
        body["error"],
        "DELETE /v1/jobs/x: the bearer token is not the node's"
    );
    assert_eq!(d.get("/v1/jobs").1["jobs"].as_array().unwrap().len(), 0);
    // Reads and inference need no token (an unknown model answers 404, not 401).
    assert_eq!(d.get("/v1/status").0, 200);
    assert_eq!(d.get("/metrics").0, 200);
    let r = d
        .agent
        .post(url("/v2/models/nope/infer"))
        .send_json(infer_json(&[row(0)]))
        .unwrap();
    assert_eq!(r.status(), 404);
    // The right token passes.
    let r = d
        .agent
        .post(url("/v1/jobs"))
        .header("authorization", "Bearer s3cret-token")
        .send_json(&job)
        .unwrap();
    assert_eq!(r.status(), 201);
}

#[test]
fn jobs_and_services_can_only_read_files_inside_the_data_dirs() {
    let root = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(root.path()).unwrap();
    let data = root.join("data");
    let secret = root.join("secret");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::create_dir_all(&secret).unwrap();
    let csv: String = (0..40)
        .map(|i| format!("{i},{},{}\n", i % 7, i % 2))
        .collect();
    std::fs::write(data.join("ok.csv"), &csv).unwrap();
    std::fs::write(secret.join("s.csv"), &csv).unwrap();
    std::os::unix::fs::symlink(secret.join("s.csv"), data.join("link.csv")).unwrap();
    let d = Daemon::start(&format!(
        "[paths]\ndata_dirs = [{:?}]\n",
        data.display().to_string()
    ));
    let job = |name: &str, path: &Path| json!({"name": name, "data": path, "layers": [2, 4, 2], "epochs": 1, "class": "best-effort"});
    let refused = [
        ("dotdot", data.join("../secret/s.csv")),
        ("link", data.join("link.csv")),
        ("absolute", secret.join("s.csv")),
    ];
    for (name, path) in &refused {
        let (s, v) = d.send("POST", "/v1/jobs", &job(name, path));
        assert_eq!(s, 400, "{name}: {v}");
        let m = v["error"].as_str().unwrap();
        assert!(m.starts_with(&format!("data: {} ", path.display())), "{m}");
        assert!(m.contains("is outside the directories"), "{m}");
        assert!(m.contains(&data.display().to_string()), "{m}");
        assert!(m.contains(&d.node.state_dir().display().to_string()), "{m}");
        assert_eq!(
            d.get(&format!("/v1/jobs/{name}")).0,
            404,
            "{name} was accepted"
        );
    }
    // A relative path is the client's word for a file on the daemon's side: the refusal
    // says where the daemon looked for it, and how an operator would allow it.
    let (s, v) = d.send(
        "POST",
        "/v1/jobs",
        &job("relative", Path::new("no-such-dir/x.csv")),
    );
    assert_eq!(s, 400, "{v}");
    let m = v["error"].as_str().unwrap();
    let cwd = std::env::current_dir().unwrap();
    assert!(
        m.contains(&format!(
            "resolved against the daemon's working directory, {}",
            cwd.display()
        )),
        "{m}"
    );
    assert!(m.contains("--data-dir"), "{m}");
    // IDX images inside whose conventional labels file (found beside them) links outside.
    let images = data.join("t10k-images-idx3-ubyte");
    std::fs::write(&images, [0u8, 0, 8, 3, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1]).unwrap();
    std::fs::write(secret.join("labels"), [0u8, 0, 8, 1, 0, 0, 0, 0]).unwrap();
    let labels = data.join("t10k-labels-idx1-ubyte");
    std::os::unix::fs::symlink(secret.join("labels"), &labels).unwrap();
    let (s, v) = d.send("POST", "/v1/jobs", &job("idx", &images));
    assert_eq!(s, 400, "{v}");
    let m = v["error"].as_str().unwrap();
    assert!(
        m.starts_with(&format!("data: {} ", labels.display())) && m.contains("is outside"),
        "{m}"
    );
    // A checkpoint outside is refused before it is read.
    let (s, v) = d.send(
        "POST",
        "/v1/services",
        &json!({"name": "m", "checkpoint": secret.join("s.csv"), "slo": {"p99_ms": 50}}),
    );
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error"].as_str().unwrap().starts_with("checkpoint: "),
        "{v}"
    );
    // Inside, reached through "..", is fine.
    let (s, v) = d.send(
        "POST",
        "/v1/jobs",
        &job("inside", &data.join("../data/ok.csv")),
    );
    assert_eq!(s, 201, "{v}");
}

#[test]
fn under_many_times_the_load_it_can_serve_health_and_status_stay_fast_and_admitted_requests_meet_the_slo()
 {
    // A few hundred rows/s of capacity (a 4096-wide model, batch 1); 32 clients that retry
    // 2 ms after each 429 offer more than 10 times that for 2 s. The queue holds 4 requests,
    // so an admitted request waits for at most 4 others: well within its 1 s SLO.
    let d = Daemon::start(
        r#"
[[services]]
name = "slow"
layers = [8, 4096, 4096, 3]
max_queue = 4
[services.slo]
p99_ms = 1000
[services.batching]
max_batch_size = 1
max_queue_delay_ms = 0
"#,
    );
    d.wait_ready();
    let url = format!("{}/v2/models/slow/infer", d.url);
    let body = infer_json(&[row(1)]).to_string();
    let run_for = Duration::from_secs(2);
    let start = Instant::now();
    let (answers, probes) = std::thread::scope(|s| {
        let clients: Vec<_> = (0..32)
            .map(|_| {
                let agent = d.agent.clone();
                let (url, body) = (url.clone(), body.clone());
                s.spawn(move || {
                    let mut out = Vec::new();
                    while start.elapsed() < run_for {
                        let t = Instant::now();
                        let r = agent.post(&url).send(&body).unwrap();
                        let status = r.status().as_u16();
                        out.push((status, t.elapsed()));
                        if status == 429 {
                            std::thread::sleep(Duration::from_millis(2));
                        }
                    }
                    out
                })
            })
            .collect();
        // Health and status, every 50 ms while the flood lasts.
        let mut probes = Vec::new();
        while start.elapsed() < run_for {
            for path in ["/v2/health/ready", "/v1/status"] {
                let t = Instant::now();
                let (status, _) = d.get(path);
                probes.push((path, status, t.elapsed()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let answers: Vec<(u16, Duration)> = clients
            .into_iter()
            .flat_map(|c| c.join().unwrap())
            .collect();
        (answers, probes)
    });
    let ok: Vec<Duration> = answers.iter().filter(|a| a.0 == 200).map(|a| a.1).collect();
    let refused = answers.iter().filter(|a| a.0 == 429).count();
    let other: Vec<_> = answers
        .iter()
        .filter(|a| a.0 != 200 && a.0 != 429)
        .collect();
    let slowest_probe = probes.iter().map(|p| p.2).max().unwrap();
    eprintln!(
        "{} answered, {refused} refused with 429, slowest admitted {:?}, {} probes, slowest {slowest_probe:?}",
        ok.len(),
        ok.iter().max(),
        probes.len()
    );
    assert!(other.is_empty(), "{other:?}");
    assert!(
        !ok.is_empty() && refused > 10 * ok.len(),
        "{} ok, {refused} refused",
        ok.len()
    );
    // Admitted requests met the SLO: answered, never late.
    assert!(
        ok.iter().all(|l| *l <= Duration::from_millis(1000)),
        "{:?}",
        ok.iter().max()
    );
    assert!(probes.iter().all(|p| p.1 == 200), "{probes:?}");
    // Health and status are answered by the HTTP runtime, not behind the flooded queue: a
    // bound far above their normal microseconds, far below the flood's queueing.
    assert!(slowest_probe < Duration::from_millis(500), "{probes:?}");
}

/// Sends `head_and_body` over a fresh connection, the first byte alone and the rest `gap`
/// later; the status of the answer.
fn send_split(url: &str, head_and_body: &[u8], gap: Duration) -> u16 {
    use std::io::{Read, Write};
    let addr = url.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(&head_and_body[..1]).unwrap();
    std::thread::sleep(gap);
    s.write_all(&head_and_body[1..]).unwrap();
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    head.split(' ').nth(1).unwrap().parse().unwrap()
}

#[test]
fn a_request_whose_timeout_passed_while_it_arrived_is_answered_504_unrun() {
    // The timeout counts from the request's first byte, not from when a handler gets to it:
    // a request that took longer than its timeout to arrive is answered 504 without being
    // queued or computed (before, its clock started at the handler and it was answered 200,
    // later than its timeout).
    let d = Daemon::start(
        r#"
[[services]]
name = "m"
layers = [8, 16, 3]
timeout_ms = 200
[services.slo]
p99_ms = 50
"#,
    );
    d.wait_ready();
    let body = infer_json(&[row(1)]).to_string();
    let req = format!(
        "POST /v2/models/m/infer HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    );
    // In time, the same request is answered.
    assert_eq!(send_split(&d.url, req.as_bytes(), Duration::ZERO), 200);
    let (_, before) = d.get("/v2/models/m/stats");
    let gap = Duration::from_millis(200 + 300);
    assert_eq!(send_split(&d.url, req.as_bytes(), gap), 504);
    let (_, after) = d.get("/v2/models/m/stats");
    let count = |v: &Value| v["model_stats"][0]["inference_count"].as_u64().unwrap();
    assert_eq!(count(&after), count(&before), "{after}");
}

#[test]
fn a_request_that_finds_the_queue_full_is_refused_before_it_is_decoded() {
    // While a flood keeps the queue of a slow service full, a malformed body is answered 429
    // (the queue was checked first) at least once: a refusal spends no decoding. Before, every
    // malformed body was decoded first and answered 400.
    let d = Daemon::start(
        r#"
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
    let url = format!("{}/v2/models/slow/infer", d.url);
    let body = infer_json(&[row(1)]).to_string();
    let run_for = Duration::from_secs(3);
    let start = Instant::now();
    let statuses = std::thread::scope(|s| {
        for _ in 0..8 {
            let (agent, url, body) = (d.agent.clone(), url.clone(), body.clone());
            s.spawn(move || {
                while start.elapsed() < run_for {
                    let _ = agent.post(&url).send(&body);
                }
            });
        }
        let mut statuses = Vec::new();
        while start.elapsed() < run_for {
            let r = d.agent.post(&url).send("{\"inputs\": [not json").unwrap();
            statuses.push(r.status().as_u16());
            std::thread::sleep(Duration::from_millis(5));
        }
        statuses
    });
    assert!(
        statuses.iter().all(|&s| s == 400 || s == 429),
        "{statuses:?}"
    );
    assert!(statuses.contains(&429), "{statuses:?}");
}

/// Reads one answer with a `content-length` from `s`: its status line and whether the server
/// said it will close the connection.
fn read_one_answer(s: &mut std::net::TcpStream) -> (String, bool) {
    use std::io::BufRead;
    let mut r = std::io::BufReader::new(s);
    let mut status = String::new();
    r.read_line(&mut status).unwrap();
    let (mut len, mut close) = (0usize, false);
    loop {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        let l = line.trim().to_ascii_lowercase();
        if l.is_empty() {
            break;
        }
        if let Some(v) = l.strip_prefix("content-length:") {
            len = v.trim().parse().unwrap();
        }
        close |= l == "connection: close";
    }
    let mut body = vec![0u8; len];
    std::io::Read::read_exact(&mut r, &mut body).unwrap();
    (status.trim().to_string(), close)
}

#[test]
fn a_request_to_a_missing_model_leaves_its_keep_alive_connection_usable() {
    use std::io::Write;
    let d = Daemon::start(SERVICE);
    let addr = d.url.trim_start_matches("http://").to_string();
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    // A body of some size, as a pooled client sends it to a model that was just removed.
    let body = serde_json::to_string(&infer_json(&vec![row(1); 64])).unwrap();
    let head = |path: &str| {
        format!(
            "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
             content-length: {}\r\n\r\n",
            body.len()
        )
    };
    // The head first and the body a moment later, as a client's two writes can arrive: the
    // answer must not be sent with the body unread.
    s.write_all(head("/v2/models/gone/infer").as_bytes())
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    s.write_all(body.as_bytes()).unwrap();
    let (status, close) = read_one_answer(&mut s);
    assert!(status.contains(" 404 "), "{status}");
    assert!(!close, "the 404 closed the connection");
    // The next request on the same connection is answered.
    s.write_all((head("/v2/models/mlp/infer") + &body).as_bytes())
        .unwrap();
    let (status, _) = read_one_answer(&mut s);
    assert!(status.contains(" 200 "), "{status}");
}
