//! The node side of the Kubernetes driver, end to end on this machine: the daemon binary
//! (built with the `kubernetes` feature) beside a fake API server and a fake kubelet. The
//! kubelet registers the plugin over its socket, prepares claims (a service, a job, claims
//! that cannot run here), the daemon is killed and started again, and the kubelet prepares
//! and unprepares again: answers, the tenants on the node, the CDI specs and the records in
//! the state dir are checked at each step, and the ResourceSlice the node publishes.

#![cfg(feature = "kubernetes")]

use crate::support::child;
use crate::support::daemon;
use crate::support::kube_fake;
use crate::support::kube_validate;

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use setpoint::kube::pb::dra::{Claim, NodePrepareResourcesRequest, NodeUnprepareResourcesRequest};
use setpoint::kube::pb::registration::{InfoRequest, RegistrationStatus};

use child::{ChildDaemon, free_port, poll};
use kube_fake::{ApiState, api_server, claim};

const SVC_UID: &str = "0000aaaa-0000-4000-8000-000000000001";
const JOB_UID: &str = "0000aaaa-0000-4000-8000-000000000002";
const TIGHT_UID: &str = "0000aaaa-0000-4000-8000-000000000003";
const AWAY_UID: &str = "0000aaaa-0000-4000-8000-000000000004";
const GONE_UID: &str = "0000aaaa-0000-4000-8000-000000000005";

fn params(kind: &str, spec: Value) -> Value {
    json!({"apiVersion": "gpu.setpoint.dev/v1", "kind": "TenantParameters", kind: spec})
}

fn config(port: u16, dir: &Path, api: &str) -> String {
    format!(
        r#"listen = "127.0.0.1:{port}"
state_dir = "{d}/state"
[device]
kind = "cpu"
[paths]
data_dirs = ["{d}/models"]
[kubernetes]
node_name = "node-a"
api_server = "{api}"
registry_dir = "{d}/registry"
plugin_dir = "{d}/plugins"
cdi_dir = "{d}/cdi"
tenant_endpoint = "http://10.0.0.7:{port}"
"#,
        d = dir.display()
    )
}

fn add_claims(api: &ApiState, models: &Path) {
    let mut claims = api.claims.lock().unwrap();
    let svc = params(
        "service",
        json!({"name": "kmlp", "checkpoint": models.join("m.ckpt"), "slo": {"p99_ms": 50}}),
    );
    let job = params(
        "job",
        json!({"name": "ktrain", "data": "synthetic:blobs:size=3000,classes=3,features=8,seed=2",
               "layers": [8, 64, 3], "epochs": 100000}),
    );
    // Far more work than five seconds hold on this node: refused by admission.
    let tight = params(
        "job",
        json!({"name": "ktight", "data": "synthetic:blobs:size=20000", "layers": [64, 512, 512, 10],
               "epochs": 200, "deadline": "5s"}),
    );
    for (name, uid, pool, p) in [
        ("svc", SVC_UID, "node-a", svc.clone()),
        ("job", JOB_UID, "node-a", job),
        ("tight", TIGHT_UID, "node-a", tight),
        ("away", AWAY_UID, "node-b", svc),
    ] {
        claims.insert(
            ("ml".into(), name.into()),
            claim("ml", name, uid, pool, &["cpu"], p),
        );
    }
}

fn claim_ref(name: &str, uid: &str) -> Claim {
    Claim {
        namespace: "ml".into(),
        uid: uid.into(),
        name: name.into(),
    }
}

fn all_claims() -> Vec<Claim> {
    vec![
        claim_ref("svc", SVC_UID),
        claim_ref("job", JOB_UID),
        claim_ref("tight", TIGHT_UID),
        claim_ref("away", AWAY_UID),
        claim_ref("gone", GONE_UID),
    ]
}

#[test]
fn a_kubelet_registers_prepares_and_unprepares_claims_across_a_restart() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (api_url, api) = api_server(&rt);
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    std::fs::create_dir_all(&models).unwrap();
    daemon::write_checkpoint(&models.join("m.ckpt"), &[8, 16, 3]);
    add_claims(&api, &models);
    let port = free_port();
    let d = ChildDaemon::start(&config(port, dir.path(), &api_url), port, dir.path(), None);
    let reg_sock = dir.path().join("registry/gpu.setpoint.dev-reg.sock");
    let dra_sock = dir.path().join("plugins/gpu.setpoint.dev/dra.sock");

    // Registration: what the kubelet's plugin watcher asks.
    let info = rt.block_on(async {
        let mut reg = kube_fake::registration(&reg_sock).await;
        let info = reg.get_info(InfoRequest {}).await.unwrap().into_inner();
        reg.notify_registration_status(RegistrationStatus {
            plugin_registered: true,
            error: String::new(),
        })
        .await
        .unwrap();
        info
    });
    assert_eq!(info.r#type, "DRAPlugin");
    assert_eq!(info.name, "gpu.setpoint.dev");
    assert_eq!(info.endpoint, dra_sock.display().to_string());
    assert_eq!(info.supported_versions, ["v1.DRAPlugin"]);

    let prepare = |claims: Vec<Claim>| {
        rt.block_on(async {
            let mut dra = kube_fake::dra(&dra_sock).await;
            dra.node_prepare_resources(NodePrepareResourcesRequest { claims })
                .await
                .unwrap()
                .into_inner()
        })
    };
    let unprepare = |claims: Vec<Claim>| {
        rt.block_on(async {
            let mut dra = kube_fake::dra(&dra_sock).await;
            dra.node_unprepare_resources(NodeUnprepareResourcesRequest { claims })
                .await
                .unwrap()
                .into_inner()
        })
    };

    let first = prepare(all_claims());
    assert_eq!(first.claims.len(), 5, "one answer per claim: {first:?}");
    let svc = &first.claims[SVC_UID];
    assert_eq!(svc.error, "");
    assert_eq!(svc.devices.len(), 1);
    assert_eq!(svc.devices[0].pool_name, "node-a");
    assert_eq!(svc.devices[0].device_name, "cpu");
    assert_eq!(svc.devices[0].request_names, ["share"]);
    assert_eq!(
        svc.devices[0].cdi_device_ids,
        [format!("gpu.setpoint.dev/tenant={SVC_UID}")]
    );
    assert_eq!(first.claims[JOB_UID].error, "");
    let tight = &first.claims[TIGHT_UID].error;
    assert!(
        tight.starts_with("claim ml/tight: not admitted on this node: "),
        "{tight}"
    );
    assert!(tight.contains("earliest deadline"), "{tight}");
    assert_eq!(
        first.claims[AWAY_UID].error,
        "claim ml/away was allocated cpu from pool node-b, not from this node (node-a)"
    );
    let gone = &first.claims[GONE_UID].error;
    assert!(
        gone.starts_with("cannot read claim ml/gone from the API server: "),
        "{gone}"
    );
    assert!(gone.contains("not found"), "{gone}");

    // The tenants run, and the pod's CDI device tells it where and who.
    assert_eq!(d.get("/v2/models/kmlp/ready").unwrap().0, 200);
    assert_eq!(d.infer("kmlp", &[0.1; 8]).0, 200);
    let (s, job) = d.get_json("/v1/jobs/ktrain");
    assert_eq!(s, 200, "{job}");
    assert_eq!(d.get("/v1/jobs/ktight").unwrap().0, 404);
    let cdi = dir
        .path()
        .join(format!("cdi/gpu.setpoint.dev-tenant_{SVC_UID}.json"));
    let spec: Value = serde_json::from_slice(&std::fs::read(&cdi).unwrap()).unwrap();
    assert_eq!(spec["kind"], "gpu.setpoint.dev/tenant");
    assert_eq!(spec["devices"][0]["name"], SVC_UID);
    let env = spec["devices"][0]["containerEdits"]["env"].clone();
    assert_eq!(
        env,
        json!([
            format!("SETPOINT_ENDPOINT=http://10.0.0.7:{port}"),
            "SETPOINT_TENANT=kmlp",
            "SETPOINT_TENANT_KIND=service",
            "SETPOINT_DEVICE=cpu"
        ])
    );
    let records = dir.path().join("state/kubernetes/claims");
    assert!(records.join(format!("{SVC_UID}.json")).exists());
    assert!(!records.join(format!("{TIGHT_UID}.json")).exists());

    // A killed daemon comes back knowing what it prepared: the kubelet's retry is answered
    // from the record, without asking the API server again, and the service still serves.
    let reads_before = api.count("GET", "/resourceclaims/svc");
    d.kill9();
    let log = dir.path().join("daemon.log");
    let d = ChildDaemon::spawn(
        &dir.path().join("setpoint.toml"),
        port,
        &log,
        None,
        Duration::from_secs(60),
    );
    poll(
        Duration::from_secs(30),
        "the plugin's socket after the restart",
        || rt.block_on(tokio::net::UnixStream::connect(&dra_sock)).ok(),
    );
    let again = prepare(vec![claim_ref("svc", SVC_UID)]);
    assert_eq!(
        again.claims[SVC_UID], *svc,
        "the same answer after a restart"
    );
    assert_eq!(api.count("GET", "/resourceclaims/svc"), reads_before);
    assert_eq!(d.get("/v2/models/kmlp/ready").unwrap().0, 200);

    // Unprepare: the service goes, the job is cancelled with its files kept, the CDI spec
    // and the records go; a second unprepare, and one of a claim never prepared, are done.
    let done = unprepare(vec![
        claim_ref("svc", SVC_UID),
        claim_ref("job", JOB_UID),
        claim_ref("gone", GONE_UID),
    ]);
    assert!(done.claims.values().all(|c| c.error.is_empty()), "{done:?}");
    assert_eq!(done.claims.len(), 3);
    assert_eq!(d.get("/v2/models/kmlp/ready").unwrap().0, 404);
    poll(Duration::from_secs(30), "the job to be cancelled", || {
        let (_, j) = d.get_json("/v1/jobs/ktrain");
        (j["state"] == "cancelled").then_some(())
    });
    assert!(
        dir.path().join("state/jobs/ktrain").exists(),
        "the job's files stay"
    );
    assert!(!cdi.exists());
    assert_eq!(std::fs::read_dir(&records).unwrap().count(), 0);
    let twice = unprepare(vec![claim_ref("svc", SVC_UID)]);
    assert_eq!(twice.claims[SVC_UID].error, "");
}

#[test]
fn the_node_publishes_its_devices_as_a_resource_slice() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (api_url, api) = api_server(&rt);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let text = config(port, dir.path(), &api_url) + "capacity = \"units\"\nunits_per_device = 4\n";
    let d = ChildDaemon::start(&text, port, dir.path(), None);
    let slice = poll(Duration::from_secs(30), "a ResourceSlice", || {
        api.slices
            .lock()
            .unwrap()
            .get("node-a-gpu.setpoint.dev-0")
            .cloned()
    });
    assert_eq!(slice["apiVersion"], "resource.k8s.io/v1");
    assert_eq!(slice["kind"], "ResourceSlice");
    assert_eq!(
        slice["metadata"]["labels"]["gpu.setpoint.dev/node"],
        "node-a"
    );
    assert_eq!(slice["spec"]["driver"], "gpu.setpoint.dev");
    assert_eq!(slice["spec"]["nodeName"], "node-a");
    assert_eq!(slice["spec"]["pool"]["name"], "node-a");
    assert_eq!(slice["spec"]["pool"]["resourceSliceCount"], 1);
    let devices = slice["spec"]["devices"].as_array().unwrap();
    // The reserve (0.1 by default) leaves three of the four units of an idle CPU.
    let names: Vec<&str> = devices
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["cpu-unit-0", "cpu-unit-1", "cpu-unit-2"]);
    assert_eq!(devices[0]["attributes"]["kind"]["string"], "cpu");
    assert_eq!(devices[0]["attributes"]["parent"]["string"], "cpu");
    assert!(api.count("PATCH", "fieldManager=setpoint-node") >= 1);
    assert!(api.count("PATCH", "force=true") >= 1);
    // Written for the schema check of the objects the node emits.
    let out = dir.path().join("slice.json");
    std::fs::write(&out, serde_json::to_vec_pretty(&slice).unwrap()).unwrap();
    kube_validate::validate(&[&out]);
    drop(d);
}

/// Slices for a GPU node in both capacity modes, as the builder makes them, against the
/// schema (the daemon test above publishes a CPU node's).
#[test]
fn gpu_slices_in_both_modes_are_valid_objects() {
    use setpoint::config::CapacityMode;
    use setpoint::device::cuda::GpuInfo;
    use setpoint::kube::slice::{SliceSpec, devices, slices};
    use setpoint::node::DeviceRoom;

    let gpu = |index: usize| DeviceRoom {
        name: format!("cuda:{index}"),
        gpu: Some(GpuInfo {
            index,
            name: "NVIDIA H200".into(),
            uuid: format!("GPU-5e1f0000-0000-0000-0000-00000000000{index}"),
            compute_capability: (9, 0),
            sm_count: 132,
            total_memory: 150_000_000_000,
            priority_range: (0, -5),
            driver_version: 13000,
        }),
        green_contexts: true,
        cores: 132.0,
        free_share: 0.8,
        memory_total: 150_000_000_000,
        memory_free: 120_000_000_000,
        healthy: true,
    };
    let rooms = [gpu(0), gpu(1)];
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for mode in [CapacityMode::Consumable, CapacityMode::Units] {
        let spec = SliceSpec {
            driver: "gpu.setpoint.dev".into(),
            node: "gpu-node-1".into(),
            mode,
            units: 8,
        };
        for (i, s) in slices(&spec, devices(&spec, &rooms), 1_764_800_000)
            .iter()
            .enumerate()
        {
            let path = dir.path().join(format!("{mode:?}-{i}.json"));
            std::fs::write(&path, serde_json::to_vec_pretty(s).unwrap()).unwrap();
            files.push(path);
        }
    }
    let refs: Vec<&Path> = files.iter().map(|p| p.as_path()).collect();
    kube_validate::validate(&refs);
}
