use super::*;
use crate::kube::operator::crd::{Optimizer, Slo};
use crate::kube::operator::names::is_dns_label;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use proptest::prelude::*;

fn meta(name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: Some("ml".into()),
        uid: Some("uid-1".into()),
        creation_timestamp: Some(Time(
            k8s_openapi::jiff::Timestamp::from_second(1_800_000_000).unwrap(),
        )),
        ..ObjectMeta::default()
    }
}

pub(crate) fn job_spec() -> SetpointJobSpec {
    SetpointJobSpec {
        min_share: 0.25,
        data: "synthetic:blobs".into(),
        layers: vec![64, 128, 10],
        deadline: Some("2h".into()),
        target_accuracy: Some(0.9),
        epochs: Some(20),
        batch_size: None,
        optimizer: Some(Optimizer::Sgd),
        lr: None,
        momentum: Some(0.9),
        weight_decay: None,
        val_fraction: None,
        seed: None,
        checkpoint_every_steps: None,
        best_effort: None,
        precision: None,
    }
}

fn service_spec() -> SetpointServiceSpec {
    SetpointServiceSpec {
        min_share: 0.1,
        checkpoint: "/models/mlp.ckpt".into(),
        layers: None,
        slo: Slo {
            p99_ms: 25.0,
            window_ms: None,
        },
        expected_rate_per_s: Some(500.0),
        replicas: Some(2),
        max_queue: None,
        timeout_ms: None,
        batching: None,
        precision: None,
    }
}

fn job(name: &str, spec: SetpointJobSpec) -> SetpointJob {
    let mut j = SetpointJob::new(name, spec);
    j.metadata = meta(name);
    j
}

#[test]
fn a_job_becomes_a_template_with_its_body_and_a_pod_that_holds_it() {
    let objs = job_objects(&job("mnist", job_spec()), &Settings::default()).unwrap();
    let t = serde_json::to_value(&objs.template).unwrap();
    let devices = &t["spec"]["spec"]["devices"];
    assert_eq!(
        devices["requests"][0]["exactly"]["capacity"]["requests"]["sms"],
        "33"
    );
    let params = &devices["config"][0]["opaque"]["parameters"];
    assert_eq!(params["kind"], "TenantParameters");
    assert_eq!(
        params["job"],
        json!({"name": "ml.mnist", "data": "synthetic:blobs", "layers": [64, 128, 10],
               "deadline": "2027-01-15T10:00:00Z", "target_accuracy": 0.9, "epochs": 20,
               "optimizer": "sgd", "momentum": 0.9})
    );
    let p = serde_json::to_value(&objs.pod).unwrap();
    assert_eq!(
        p["spec"]["resourceClaims"][0]["resourceClaimTemplateName"],
        "mnist-job"
    );
    assert_eq!(
        p["spec"]["containers"][0]["resources"]["claims"][0]["name"],
        "setpoint"
    );
    assert_eq!(p["metadata"]["annotations"][TENANT_ANNOTATION], "ml.mnist");
}

#[test]
fn the_node_schema_refuses_a_bad_spec_by_the_spec_keys() {
    let mut spec = job_spec();
    spec.target_accuracy = Some(1.5);
    spec.optimizer = None;
    let e = job_objects(&job("j", spec), &Settings::default()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "spec is invalid: momentum: only used with optimizer = \"sgd\"; remove it or set \
         optimizer = \"sgd\"; targetAccuracy: must be <= 1, got 1.5"
    );
    let mut spec = job_spec();
    spec.deadline = Some("soon".into());
    let e = job_objects(&job("j", spec), &Settings::default()).unwrap_err();
    assert!(
        e.to_string().starts_with("spec is invalid: deadline: "),
        "{e}"
    );
    let mut spec = job_spec();
    spec.min_share = 0.0;
    let e = job_objects(&job("j", spec), &Settings::default()).unwrap_err();
    assert!(
        e.to_string().contains("minShare: must be a fraction"),
        "{e}"
    );
}

#[test]
fn a_service_gets_one_pod_per_replica_apart_and_a_service_without_selector() {
    let mut svc = SetpointService::new("mlp", service_spec());
    svc.metadata = meta("mlp");
    let objs = service_objects(&svc, &Settings::default()).unwrap();
    assert_eq!(objs.pods.len(), 2);
    let names: Vec<_> = objs.pods.iter().map(|p| p.metadata.name.clone()).collect();
    assert_eq!(
        names,
        [Some("mlp-svc-0".to_string()), Some("mlp-svc-1".to_string())]
    );
    let p = serde_json::to_value(&objs.pods[1]).unwrap();
    let term = &p["spec"]["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        [0];
    assert_eq!(term["labelSelector"]["matchLabels"][SERVICE_LABEL], "mlp");
    let s = serde_json::to_value(&objs.service).unwrap();
    assert!(s["spec"].get("selector").is_none());
    assert_eq!(s["spec"]["ports"][0]["port"], 8000);
    let t = serde_json::to_value(&objs.template).unwrap();
    assert_eq!(
        t["spec"]["spec"]["devices"]["config"][0]["opaque"]["parameters"]["service"],
        json!({"name": "ml.mlp", "checkpoint": "/models/mlp.ckpt", "slo": {"p99_ms": 25.0}})
    );
}

#[test]
fn units_mode_asks_for_units_of_one_parent() {
    let settings = Settings {
        capacity: CapacityMode::Units,
        ..Settings::default()
    };
    let objs = job_objects(&job("j", job_spec()), &settings).unwrap();
    let t = serde_json::to_value(&objs.template).unwrap();
    let devices = &t["spec"]["spec"]["devices"];
    assert_eq!(devices["requests"][0]["exactly"]["count"], 2);
    assert!(devices["requests"][0]["exactly"].get("capacity").is_none());
    assert_eq!(
        devices["constraints"][0]["matchAttribute"],
        "gpu.setpoint.dev/parent"
    );
    let cpu = Settings {
        device: DeviceKind::Cpu,
        device_class: "setpoint-cpu".into(),
        ..Settings::default()
    };
    assert_eq!(
        request(0.3, &cpu),
        Request::Capacity {
            name: "cores",
            quantity: "2400m".into()
        }
    );
}

fn settings_strategy() -> impl Strategy<Value = Settings> {
    (
        any::<bool>(),
        any::<bool>(),
        1u32..200,
        2u32..=64,
        1u32..128,
    )
        .prop_map(|(units, cpu, sms, n, cores)| Settings {
            capacity: if units {
                CapacityMode::Units
            } else {
                CapacityMode::Consumable
            },
            device: if cpu {
                DeviceKind::Cpu
            } else {
                DeviceKind::Gpu
            },
            sms_per_device: sms,
            units_per_device: n,
            cores_per_device: cores,
            ..Settings::default()
        })
}

proptest! {
    #[test]
    fn a_request_is_never_below_the_share_nor_above_one_device(
        share in 0.0001f64..=1.0, s in settings_strategy()
    ) {
        let (got, whole) = match request(share, &s) {
            Request::Units(k) => (f64::from(k), f64::from(s.units_per_device)),
            Request::Capacity { name: "sms", quantity } => {
                (quantity.parse::<f64>().unwrap(), f64::from(s.sms_per_device))
            }
            Request::Capacity { quantity, .. } => (
                quantity.trim_end_matches('m').parse::<f64>().unwrap(),
                f64::from(s.cores_per_device * 1000),
            ),
        };
        prop_assert!(got / whole >= share - 1e-6, "{got}/{whole} < {share}");
        prop_assert!(got <= whole && got >= 1.0);
        // And no more than one step above it.
        prop_assert!((got - 1.0) / whole < share);
    }

    #[test]
    fn every_object_is_owned_and_named_as_kubernetes_requires(
        name in "[a-z0-9]([-.a-z0-9]{0,100}[a-z0-9])?", replicas in 1u32..=16
    ) {
        let mut svc = SetpointService::new(&name, SetpointServiceSpec {
            replicas: Some(replicas), ..service_spec()
        });
        svc.metadata = meta(&name);
        let objs = service_objects(&svc, &Settings::default()).unwrap();
        let mut metas = vec![&objs.template.metadata, &objs.service.metadata];
        metas.extend(objs.pods.iter().map(|p| &p.metadata));
        for m in metas {
            let n = m.name.as_deref().unwrap();
            prop_assert!(is_dns_label(n), "{n}");
            let owners = m.owner_references.as_ref().unwrap();
            prop_assert_eq!(owners.len(), 1);
            prop_assert_eq!(&owners[0].uid, "uid-1");
            prop_assert_eq!(owners[0].controller, Some(true));
            for v in m.labels.as_ref().unwrap().values() {
                prop_assert!(v.len() <= 63);
            }
        }
        let j = job(&name, job_spec());
        let objs = job_objects(&j, &Settings::default()).unwrap();
        prop_assert!(is_dns_label(objs.pod.metadata.name.as_deref().unwrap()));
        let params = &objs.template.spec.spec.devices.as_ref().unwrap().config.as_ref().unwrap()[0];
        let tenant = params.opaque.as_ref().unwrap().parameters.0["job"]["name"].as_str().unwrap();
        prop_assert!(crate::kube::operator::names::is_tenant_name(tenant));
    }
}
