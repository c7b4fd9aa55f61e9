//! GPU telemetry in the node, from a scripted source (no GPU here): read every control
//! period, shown in /v1/status and /metrics, throttling carried beside the decisions, a
//! failed read skipped; and the sampler's foreign load lowering what the controller hands out.

use setpoint::control::{ControlConfig, Controller, Observations};
use setpoint::node::Node;
use setpoint::telemetry::{Sampler, ScriptedSource};

fn script() -> ScriptedSource {
    ScriptedSource::from_file(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/telemetry/script.toml"
    )))
    .unwrap()
}

#[test]
fn the_node_reads_telemetry_each_tick_and_shows_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = setpoint::config::parse("").unwrap();
    cfg.state_dir = dir.path().to_path_buf();
    let node = Node::new(cfg).unwrap();
    node.set_telemetry_source(Box::new(script()));

    // Step 1: a steady load.
    let d = node.control_tick();
    assert!(d.throttling.is_empty(), "{:?}", d.throttling);
    let status = serde_json::to_value(node.status()).unwrap();
    assert_eq!(status["gpu_telemetry"][0]["util_gpu_pct"], 50.0);
    let metrics = setpoint::api::metrics::render(&node);
    assert!(
        metrics.contains(
            "setpoint_gpu_utilization_ratio{gpu=\"0\",uuid=\"GPU-0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0\"} 0.5"
        ),
        "{metrics}"
    );

    // Step 2: a failed read is skipped; the previous sample stays and the failure counts.
    node.control_tick();
    let (samples, failed) = node.telemetry();
    assert_eq!(failed, 1);
    assert_eq!(samples[0].util_gpu_pct, Some(50.0));
    let metrics = setpoint::api::metrics::render(&node);
    assert!(
        metrics.contains("setpoint_gpu_telemetry_failed_reads_total 1"),
        "{metrics}"
    );

    // Step 3: power capping shows beside the decisions.
    let d = node.control_tick();
    assert_eq!(d.throttling, vec!["gpu0: sw_power_cap".to_string()]);
    assert_eq!(node.telemetry().0[0].util_gpu_pct, Some(95.0));
}

#[test]
fn foreign_load_from_the_sampler_lowers_the_capacity_handed_out() {
    let mut sampler = Sampler::new(Box::new(script()), 16);
    sampler.poll();
    // pid 5151 is not ours: 20 % of the GPU is busy elsewhere.
    let foreign = sampler.foreign_load(0);
    assert!((foreign - 0.2).abs() < 1e-9, "{foreign}");
    let mut ctrl = Controller::new(ControlConfig::default());
    let idle = ctrl.tick(&Observations::default());
    let busy = ctrl.tick(&Observations {
        foreign_load: foreign,
        ..Default::default()
    });
    assert!((idle.capacity - 0.95).abs() < 1e-9, "{}", idle.capacity);
    assert!((busy.capacity - 0.75).abs() < 1e-9, "{}", busy.capacity);
    assert!((busy.foreign_load - 0.2).abs() < 1e-9);
}
