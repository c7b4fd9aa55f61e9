//! For `tests/kube_operator.rs`: the objects the operator emits and example custom
//! resources, and their checks against Kubernetes' published schemas and the CRDs.

use std::path::{Path, PathBuf};
use std::process::Command;

use setpoint::kube::operator::Settings;

use super::kube_validate;
use super::support::*;

/// Every kind of object the operator emits, in each mode, as one YAML stream.
pub fn emitted_objects() -> String {
    use setpoint::config::CapacityMode;
    use setpoint::kube::operator::endpoints::{Target, endpoint_slices};
    use setpoint::kube::operator::render::{Owner, job_objects, service_objects};
    use setpoint::kube::operator::{DeviceKind, yaml};
    let units = Settings {
        capacity: CapacityMode::Units,
        ..settings()
    };
    let cpu = Settings {
        device: DeviceKind::Cpu,
        device_class: "setpoint-cpu".into(),
        ..settings()
    };
    let mut docs = Vec::new();
    for (i, s) in [settings(), units, cpu].iter().enumerate() {
        let job = job_objects(&job_cr(&format!("job{i}"), "u", job_spec()), s).unwrap();
        docs.push(serde_json::to_value(&job.template).unwrap());
        docs.push(serde_json::to_value(&job.pod).unwrap());
        let svc = service_cr(&format!("svc{i}"), "u", 2);
        let objs = service_objects(&svc, s).unwrap();
        docs.push(serde_json::to_value(&objs.template).unwrap());
        docs.push(serde_json::to_value(&objs.service).unwrap());
        docs.extend(objs.pods.iter().map(|p| serde_json::to_value(p).unwrap()));
        let targets =
            [("10.0.0.7", "svc-0", true), ("fd00::7", "svc-1", false)].map(|(ip, pod, ready)| {
                Target {
                    address: ip.parse().unwrap(),
                    node: Some("node-a".into()),
                    pod: pod.into(),
                    pod_uid: Some("uid".into()),
                    ready,
                }
            });
        let owner = Owner::of(&svc).unwrap();
        for slice in endpoint_slices(&owner, &targets, 8000) {
            docs.push(serde_json::to_value(&slice).unwrap());
        }
    }
    yaml::documents(&docs)
}

/// A SetpointJob and a SetpointService as a user writes them, and one of each that the CRDs'
/// schemas must refuse (marked by the annotation `expect: invalid`).
pub fn example_custom_resources() -> String {
    r#"---
apiVersion: setpoint.dev/v1
kind: SetpointJob
metadata:
  name: mnist
spec:
  minShare: 0.25
  data: /data/mnist.csv
  layers: [784, 256, 10]
  deadline: 2h
  targetAccuracy: 0.97
  optimizer: adam
  precision: bf16
---
apiVersion: setpoint.dev/v1
kind: SetpointService
metadata:
  name: mlp
spec:
  minShare: 0.1
  checkpoint: /models/mlp.ckpt
  slo:
    p99Ms: 25
  expectedRatePerS: 500
  replicas: 2
  batching:
    maxBatchSize: 32
---
apiVersion: setpoint.dev/v1
kind: SetpointJob
metadata:
  name: too-much
  annotations:
    expect: invalid
spec:
  minShare: 2
  data: /data/mnist.csv
  layers: [784, 10]
---
apiVersion: setpoint.dev/v1
kind: SetpointService
metadata:
  name: no-slo
  annotations:
    expect: invalid
spec:
  minShare: 0.1
  checkpoint: /models/mlp.ckpt
  optimizer: sgd
"#
    .to_string()
}

/// Checks each document of `examples` against the openAPIV3Schema of its kind in `crds`,
/// with the JSON Schema validator kubernetes-validate installs: those annotated
/// `expect: invalid` must fail, the others pass. (The CRDs' CEL rules are the API server's
/// to run; they are not checked here.)
pub fn check_against_crds(crds: &[PathBuf], examples: &Path) {
    let python = repo().join(".venv-kube/bin/python");
    if !kube_validate::installed() || !python.exists() {
        assert!(
            !kube_validate::required(),
            "kubernetes-validate's python is missing"
        );
        return;
    }
    let script = r#"
import sys, yaml, jsonschema
schemas = {}
for path in sys.argv[2:]:
    for crd in yaml.safe_load_all(open(path)):
        for v in crd["spec"]["versions"]:
            api = crd["spec"]["group"] + "/" + v["name"]
            schemas[(api, crd["spec"]["names"]["kind"])] = v["schema"]["openAPIV3Schema"]
bad = []
for doc in yaml.safe_load_all(open(sys.argv[1])):
    schema = schemas[(doc["apiVersion"], doc["kind"])]
    errors = list(jsonschema.Draft4Validator(schema).iter_errors(doc))
    invalid = doc["metadata"].get("annotations", {}).get("expect") == "invalid"
    name = doc["metadata"]["name"]
    if invalid and not errors:
        bad.append(f"{name}: expected to be refused, was accepted")
    if errors and not invalid:
        bad.append(f"{name}: " + "; ".join(e.message for e in errors))
print("\n".join(bad))
sys.exit(1 if bad else 0)
"#;
    let out = Command::new(python)
        .arg("-c")
        .arg(script)
        .arg(examples)
        .args(crds)
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "examples against the CRDs:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
