use super::*;

const DRIVER: &str = "gpu.setpoint.dev";

fn claim(results: serde_json::Value, config: serde_json::Value) -> ResourceClaim {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {"name": "svc-claim", "namespace": "ml", "uid": "u-1"},
        "spec": {"devices": {"requests": [{"name": "share", "exactly": {"deviceClassName": "setpoint-gpu"}}]}},
        "status": {"allocation": {"devices": {"results": results, "config": config}}}
    }))
    .unwrap()
}

fn result(device: &str, pool: &str) -> serde_json::Value {
    serde_json::json!({"request": "share", "driver": DRIVER, "pool": pool, "device": device})
}

fn service_config(source: &str, name: &str) -> serde_json::Value {
    serde_json::json!({"source": source, "opaque": {"driver": DRIVER, "parameters": {
        "apiVersion": "gpu.setpoint.dev/v1", "kind": "TenantParameters",
        "service": {"name": name, "checkpoint": "/models/m.ckpt"}}}})
}

fn r() -> ClaimRef {
    ClaimRef {
        namespace: "ml".into(),
        uid: "u-1".into(),
        name: "svc-claim".into(),
    }
}

fn names() -> Vec<String> {
    vec!["cuda:0".into(), "cuda:1".into(), "cpu".into()]
}

#[test]
fn a_claim_on_one_device_plans_its_tenant_there() {
    let c = claim(
        serde_json::json!([
            result("cuda-1-unit-0", "node-a"),
            result("cuda-1-unit-5", "node-a")
        ]),
        serde_json::json!([
            service_config("FromClass", "class-default"),
            service_config("FromClaim", "mine")
        ]),
    );
    let p = plan(&c, &r(), DRIVER, "node-a", &names()).unwrap();
    assert_eq!(p.device, "cuda:1");
    assert_eq!(p.allocated.len(), 2);
    assert_eq!(p.allocated[1].device, "cuda-1-unit-5");
    // The claim's own configuration, the later one, wins.
    assert!(matches!(p.tenant, TenantSpec::Service(m) if m["name"] == "mine"));
}

#[test]
fn what_is_wrong_with_a_claim_is_said() {
    let ok_config = serde_json::json!([service_config("FromClaim", "s")]);
    let two = claim(
        serde_json::json!([
            result("cuda-0-unit-0", "node-a"),
            result("cuda-1-unit-0", "node-a")
        ]),
        ok_config.clone(),
    );
    let e = plan(&two, &r(), DRIVER, "node-a", &names()).unwrap_err();
    assert!(e.contains("parts of cuda:0 and cuda:1"), "{e}");
    assert!(
        e.contains("matchAttribute \"gpu.setpoint.dev/parent\""),
        "{e}"
    );

    let elsewhere = claim(
        serde_json::json!([result("cuda-0", "node-b")]),
        ok_config.clone(),
    );
    let e = plan(&elsewhere, &r(), DRIVER, "node-a", &names()).unwrap_err();
    assert_eq!(
        e,
        "claim ml/svc-claim was allocated cuda-0 from pool node-b, not from this node (node-a)"
    );

    let unknown = claim(
        serde_json::json!([result("cuda-7", "node-a")]),
        ok_config.clone(),
    );
    let e = plan(&unknown, &r(), DRIVER, "node-a", &names()).unwrap_err();
    assert!(
        e.contains(
            "device cuda-7, which this node does not have (its devices: cuda:0, cuda:1, cpu)"
        ),
        "{e}"
    );

    let no_params = claim(
        serde_json::json!([result("cuda-0", "node-a")]),
        serde_json::json!([]),
    );
    let e = plan(&no_params, &r(), DRIVER, "node-a", &names()).unwrap_err();
    assert!(
        e.starts_with("claim ml/svc-claim has no parameters for driver gpu.setpoint.dev"),
        "{e}"
    );

    let other_driver = claim(
        serde_json::json!([{"request": "x", "driver": "gpu.nvidia.com", "pool": "node-a", "device": "gpu-0"}]),
        ok_config.clone(),
    );
    let e = plan(&other_driver, &r(), DRIVER, "node-a", &names()).unwrap_err();
    assert_eq!(
        e,
        "claim ml/svc-claim has no device of driver gpu.setpoint.dev"
    );

    let mut stale = r();
    stale.uid = "u-0".into();
    let c = claim(serde_json::json!([result("cuda-0", "node-a")]), ok_config);
    let e = plan(&c, &stale, DRIVER, "node-a", &names()).unwrap_err();
    assert!(
        e.contains("has UID \"u-1\", the kubelet asked for \"u-0\""),
        "{e}"
    );

    let bad = claim(
        serde_json::json!([result("cuda-0", "node-a")]),
        serde_json::json!([{"source": "FromClaim", "opaque": {"driver": DRIVER, "parameters": {"apiVersion": "gpu.setpoint.dev/v1", "kind": "TenantParameters"}}}]),
    );
    let e = plan(&bad, &r(), DRIVER, "node-a", &names()).unwrap_err();
    assert!(e.contains("parameters name no tenant"), "{e}");
}

#[test]
fn an_unallocated_claim_is_refused() {
    let mut c = claim(serde_json::json!([]), serde_json::json!([]));
    c.status = None;
    let e = plan(&c, &r(), DRIVER, "node-a", &names()).unwrap_err();
    assert_eq!(e, "claim ml/svc-claim is not allocated");
}
