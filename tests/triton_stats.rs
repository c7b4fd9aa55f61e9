//! Triton's statistics as Triton counts them: requests in `success`, rows in
//! `inference_count`, model executions in `execution_count` and per executed batch size in
//! `batch_stats`; the same split in the Prometheus counters.

use serde_json::{Value, json};

use crate::support::daemon;
use crate::support::promtool;
use daemon::Daemon;

// A batch fills to 4 rows long before the queue delay: each request of 4 rows is one batch.
const SERVICE: &str = r#"
[[services]]
name = "mlp"
layers = [8, 16, 3]
seed = 5
max_queue = 64
[services.slo]
p99_ms = 500
[services.batching]
max_batch_size = 4
max_queue_delay_ms = 200
"#;

fn batch_of_four(k: usize) -> Value {
    let data: Vec<f32> = (0..32).map(|j| ((k * 32 + j) % 5) as f32 - 2.0).collect();
    json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [4, 8], "data": data}]})
}

fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no sample {name} in\n{text}"))
}

#[test]
fn three_batch_four_requests_count_three_requests_twelve_rows_three_executions() {
    let d = Daemon::start(SERVICE);
    d.wait_ready();
    for k in 0..3 {
        let (s, v) = d.send("POST", "/v2/models/mlp/infer", &batch_of_four(k));
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["outputs"][0]["shape"], json!([4, 3]));
    }
    let (s, v) = d.get("/v2/models/mlp/stats");
    assert_eq!(s, 200);
    let st = &v["model_stats"][0];
    assert_eq!(st["inference_stats"]["success"]["count"], 3, "{st}");
    assert_eq!(st["inference_stats"]["queue"]["count"], 3, "{st}");
    assert_eq!(st["inference_stats"]["compute_infer"]["count"], 3, "{st}");
    assert_eq!(st["inference_stats"]["fail"]["count"], 0, "{st}");
    assert_eq!(st["inference_count"], 12, "{st}");
    assert_eq!(st["execution_count"], 3, "{st}");
    let batches = st["batch_stats"].as_array().unwrap();
    assert_eq!(batches.len(), 1, "{st}");
    let b = &batches[0];
    assert_eq!(b["batch_size"], 4);
    for phase in ["compute_input", "compute_infer", "compute_output"] {
        assert_eq!(b[phase]["count"], 3, "{phase}: {st}");
    }
    assert!(b["compute_infer"]["ns"].as_u64().unwrap() > 0, "{st}");
    // A request's compute time is its batch's: the sums agree.
    assert_eq!(
        st["inference_stats"]["compute_infer"]["ns"],
        b["compute_infer"]["ns"]
    );

    let (_, text) = d.get("/metrics");
    let text = text.as_str().unwrap().to_string();
    let svc = "service=\"mlp\"";
    for (name, want) in [
        (
            format!("setpoint_inference_requests_total{{{svc},outcome=\"success\"}}"),
            3.0,
        ),
        (
            format!("setpoint_inference_requests_total{{{svc},outcome=\"failure\"}}"),
            0.0,
        ),
        (
            format!("setpoint_inference_rows_total{{{svc},outcome=\"success\"}}"),
            12.0,
        ),
        (
            format!("setpoint_inference_rows_total{{{svc},outcome=\"failure\"}}"),
            0.0,
        ),
        (format!("setpoint_inference_batches_total{{{svc}}}"), 3.0),
        (format!("setpoint_inference_batch_size_count{{{svc}}}"), 3.0),
        (format!("setpoint_inference_batch_size_sum{{{svc}}}"), 12.0),
        (
            format!("setpoint_inference_queue_duration_seconds_count{{{svc}}}"),
            3.0,
        ),
        (
            format!("setpoint_inference_compute_duration_seconds_count{{{svc}}}"),
            3.0,
        ),
    ] {
        assert_eq!(sample(&text, &name), want, "{name}");
    }
    promtool::promtool_check(&text);
}
