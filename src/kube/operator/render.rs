//! What the operator creates for a custom resource, as pure functions of it and the
//! operator's settings: the tenant's body as the node's API takes it, the
//! ResourceClaimTemplate that carries it, the tenant pods, and for a service the Kubernetes
//! Service with its EndpointSlices. Every object is owned by the custom resource, so deleting
//! it deletes them.

use std::collections::BTreeMap;
use std::time::SystemTime;

use k8s_openapi::api::core::v1::{
    Affinity, Container, Pod, PodAffinityTerm, PodAntiAffinity, PodResourceClaim, PodSpec,
    ResourceClaim, ResourceRequirements, SecurityContext, Service, ServicePort, ServiceSpec,
};
use k8s_openapi::api::resource::v1::{
    CapacityRequirements, DeviceClaim, DeviceClaimConfiguration, DeviceConstraint, DeviceRequest,
    ExactDeviceRequest, OpaqueDeviceConfiguration, ResourceClaimSpec, ResourceClaimTemplate,
    ResourceClaimTemplateSpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Resource;
use serde_json::{Map, Value, json};

use super::crd::{SetpointJob, SetpointJobSpec, SetpointService, SetpointServiceSpec};
use super::names;
use super::settings::{DeviceKind, Settings};
use crate::config::CapacityMode;
use crate::kube::params::{TenantParameters, TenantSpec};

/// The field manager of every object the operator applies.
pub const MANAGER: &str = "setpoint-operator";
/// `app.kubernetes.io/managed-by` on everything the operator creates.
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// The label that names a job's objects.
pub const JOB_LABEL: &str = "setpoint.dev/job";
/// The label that names a service's objects.
pub const SERVICE_LABEL: &str = "setpoint.dev/service";
/// The annotation on a tenant pod with the tenant's name on its node.
pub const TENANT_ANNOTATION: &str = "setpoint.dev/tenant";
/// The pod's claim, as its container names it.
pub const CLAIM_NAME: &str = "setpoint";
/// The claim's one device request.
pub const REQUEST_NAME: &str = "tenant";

/// Why a custom resource cannot be turned into objects; said in its status.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RenderError {
    /// The spec is refused by the node's schema or by the operator.
    #[error("spec is invalid: {0}")]
    Spec(String),
    /// The object lacks what the API server always sets.
    #[error("{0} has no {1} (objects are read from the API server, which sets it)")]
    Metadata(String, &'static str),
}

/// Who owns the objects: the custom resource's identity.
#[derive(Debug, Clone, PartialEq)]
pub struct Owner {
    /// `setpoint.dev/v1`.
    pub api_version: String,
    /// `SetpointJob` or `SetpointService`.
    pub kind: String,
    /// Its name.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// Its uid.
    pub uid: String,
    /// When it was created.
    pub created: SystemTime,
}

impl Owner {
    /// The identity of `obj`, which must come from the API server.
    pub fn of<K: Resource<DynamicType = ()>>(obj: &K) -> Result<Owner, RenderError> {
        let meta = obj.meta();
        let name = meta.name.clone().unwrap_or_default();
        let what = format!("{} {name:?}", K::kind(&()));
        let missing = |field| RenderError::Metadata(what.clone(), field);
        let created = meta
            .creation_timestamp
            .as_ref()
            .ok_or_else(|| missing("metadata.creationTimestamp"))?;
        let secs = u64::try_from(created.0.as_second()).unwrap_or(0);
        Ok(Owner {
            api_version: K::api_version(&()).into_owned(),
            kind: K::kind(&()).into_owned(),
            namespace: meta
                .namespace
                .clone()
                .ok_or_else(|| missing("metadata.namespace"))?,
            uid: meta.uid.clone().ok_or_else(|| missing("metadata.uid"))?,
            created: SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs),
            name,
        })
    }

    /// The reference every owned object carries: the controller, blocking the owner's
    /// deletion until the object is gone.
    pub fn reference(&self) -> OwnerReference {
        OwnerReference {
            api_version: self.api_version.clone(),
            kind: self.kind.clone(),
            name: self.name.clone(),
            uid: self.uid.clone(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }
    }

    /// The tenant's name on its node.
    pub fn tenant(&self) -> String {
        names::tenant_name(&self.namespace, &self.name)
    }

    /// The labels of every object it owns; `key` is [`JOB_LABEL`] or [`SERVICE_LABEL`].
    pub fn labels(&self, key: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            (MANAGED_BY.to_string(), MANAGER.to_string()),
            (key.to_string(), names::dns_label(&self.name)),
        ])
    }

    /// Metadata for an owned object named `name`.
    fn meta(&self, name: String, key: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(name),
            namespace: Some(self.namespace.clone()),
            labels: Some(self.labels(key)),
            owner_references: Some(vec![self.reference()]),
            ..ObjectMeta::default()
        }
    }
}

/// A job's objects.
#[derive(Debug, Clone, PartialEq)]
pub struct JobObjects {
    /// The claim template with the job's parameters.
    pub template: ResourceClaimTemplate,
    /// The pod that holds the claim while the job runs.
    pub pod: Pod,
}

/// A service's objects (its EndpointSlices follow its pods:
/// [`super::endpoints::endpoint_slices`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceObjects {
    /// The claim template with the service's parameters; each pod gets a claim from it.
    pub template: ResourceClaimTemplate,
    /// One pod per replica.
    pub pods: Vec<Pod>,
    /// The Kubernetes Service clients call.
    pub service: Service,
}

/// The names of a job's template and pod.
pub fn job_pod_name(owner_name: &str) -> String {
    names::dns_label_with(owner_name, "job")
}

/// The name of a service's claim template.
pub fn service_template_name(owner_name: &str) -> String {
    names::dns_label_with(owner_name, "svc")
}

/// The name of a service's replica `i`.
pub fn service_pod_name(owner_name: &str, i: u32) -> String {
    names::dns_label_with(owner_name, &format!("svc-{i}"))
}

/// The name of the Kubernetes Service of a service.
pub fn service_name(owner_name: &str) -> String {
    names::dns_label(owner_name)
}

/// Everything a job needs.
pub fn job_objects(job: &SetpointJob, settings: &Settings) -> Result<JobObjects, RenderError> {
    let owner = Owner::of(job)?;
    let body = job_body(&job.spec, &owner.tenant(), owner.created)?;
    let name = job_pod_name(&owner.name);
    let template = claim_template(
        &owner,
        name.clone(),
        JOB_LABEL,
        job.spec.min_share,
        TenantSpec::Job(body),
        settings,
    )?;
    let pod = tenant_pod(&owner, name.clone(), &name, JOB_LABEL, settings, false);
    Ok(JobObjects { template, pod })
}

/// Everything a service needs.
pub fn service_objects(
    svc: &SetpointService,
    settings: &Settings,
) -> Result<ServiceObjects, RenderError> {
    let owner = Owner::of(svc)?;
    let body = service_body(&svc.spec, &owner.tenant())?;
    let template_name = service_template_name(&owner.name);
    let template = claim_template(
        &owner,
        template_name.clone(),
        SERVICE_LABEL,
        svc.spec.min_share,
        TenantSpec::Service(body),
        settings,
    )?;
    let pods = (0..replicas(&svc.spec))
        .map(|i| {
            let name = service_pod_name(&owner.name, i);
            tenant_pod(&owner, name, &template_name, SERVICE_LABEL, settings, true)
        })
        .collect();
    let service = Service {
        metadata: owner.meta(service_name(&owner.name), SERVICE_LABEL),
        spec: Some(ServiceSpec {
            // No selector: the EndpointSlices the operator writes point at the nodes.
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: i32::from(settings.daemon_port),
                target_port: Some(IntOrString::Int(i32::from(settings.daemon_port))),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            type_: Some("ClusterIP".into()),
            ..ServiceSpec::default()
        }),
        status: None,
    };
    Ok(ServiceObjects {
        template,
        pods,
        service,
    })
}

/// A service's replicas (1 when not given).
pub fn replicas(spec: &SetpointServiceSpec) -> u32 {
    spec.replicas.unwrap_or(1)
}

/// A job's spec as `POST /v1/jobs` takes it, checked with the node's schema. A deadline
/// given as a duration counts from `created`, so that the node is given the same instant
/// whenever and wherever the pod starts.
pub fn job_body(
    spec: &SetpointJobSpec,
    tenant: &str,
    created: SystemTime,
) -> Result<Map<String, Value>, RenderError> {
    check_share(spec.min_share)?;
    let deadline = match &spec.deadline {
        Some(text) => {
            let d: crate::config::Deadline = text
                .parse()
                .map_err(|e| RenderError::Spec(format!("deadline: {e}")))?;
            Some(crate::config::format_rfc3339(d.resolve(created)))
        }
        None => None,
    };
    let body = json!({
        "name": tenant,
        "data": spec.data,
        "layers": spec.layers,
        "deadline": deadline,
        "target_accuracy": spec.target_accuracy,
        "epochs": spec.epochs,
        "batch_size": spec.batch_size,
        "optimizer": spec.optimizer,
        "lr": spec.lr,
        "momentum": spec.momentum,
        "weight_decay": spec.weight_decay,
        "val_fraction": spec.val_fraction,
        "seed": spec.seed,
        "checkpoint_every_steps": spec.checkpoint_every_steps,
        "best_effort": spec.best_effort,
        "precision": spec.precision,
    });
    let body = without_nulls(body);
    crate::config::parse_job_json(&Value::Object(body.clone())).map_err(issues)?;
    Ok(body)
}

/// A service's spec as `POST /v1/services` takes it, checked with the node's schema (at the
/// default control period; the node checks the SLO window against its own again).
pub fn service_body(
    spec: &SetpointServiceSpec,
    tenant: &str,
) -> Result<Map<String, Value>, RenderError> {
    check_share(spec.min_share)?;
    if !(1..=16).contains(&replicas(spec)) {
        return Err(RenderError::Spec(format!(
            "replicas: must be between 1 and 16, got {}",
            replicas(spec)
        )));
    }
    let batching = spec.batching.as_ref().map(|b| {
        without_nulls(json!({
            "max_batch_size": b.max_batch_size,
            "max_queue_delay_ms": b.max_queue_delay_ms,
        }))
    });
    let body = json!({
        "name": tenant,
        "checkpoint": spec.checkpoint,
        "layers": spec.layers,
        "slo": without_nulls(json!({"p99_ms": spec.slo.p99_ms, "window_ms": spec.slo.window_ms})),
        "max_queue": spec.max_queue,
        "timeout_ms": spec.timeout_ms,
        "batching": batching,
        "precision": spec.precision,
    });
    let body = without_nulls(body);
    let period = crate::config::default_config().control_period_ms;
    crate::config::parse_service_json(&Value::Object(body.clone()), period).map_err(issues)?;
    Ok(body)
}

fn check_share(share: f64) -> Result<(), RenderError> {
    if share > 0.0 && share <= 1.0 {
        Ok(())
    } else {
        Err(RenderError::Spec(format!(
            "minShare: must be a fraction of one device in (0, 1], got {share}"
        )))
    }
}

/// The node's issues, named by the spec's keys as the user wrote them.
fn issues(list: Vec<crate::config::ConfigIssue>) -> RenderError {
    let lines: Vec<String> = list
        .iter()
        .map(|i| match i.path.as_str() {
            "" => i.message.clone(),
            path => format!("{}: {}", camel_path(path), i.message),
        })
        .collect();
    RenderError::Spec(lines.join("; "))
}

/// `slo.p99_ms` as the spec spells it: `slo.p99Ms`.
fn camel_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut upper = false;
    for c in path.chars() {
        match c {
            '_' => upper = true,
            c if upper => {
                out.push(c.to_ascii_uppercase());
                upper = false;
            }
            c => out.push(c),
        }
    }
    out
}

/// `v`'s object without its `null` members (a key left out takes the node's default).
fn without_nulls(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m.into_iter().filter(|(_, v)| !v.is_null()).collect(),
        _ => Map::new(),
    }
}

/// What one claim asks of a device for `share` of it.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// Part of one shared device's capacity: `sms` or `cores`.
    Capacity {
        /// The capacity's name.
        name: &'static str,
        /// How much, as a Kubernetes quantity.
        quantity: String,
    },
    /// Whole units of one device (all with the same parent).
    Units(u32),
}

/// The request for `share` of one device: never less than the share, never more than the
/// whole device.
pub fn request(share: f64, settings: &Settings) -> Request {
    // A product such as 0.3 × 8 lands a hair above 2.4; without the slack, ceil could round
    // an exact share up one unit.
    let up = |x: f64| (x - 1e-9).ceil().max(1.0);
    match (settings.capacity, settings.device) {
        (CapacityMode::Units, _) => {
            let units = settings.units_per_device;
            Request::Units(up(share * f64::from(units)).min(f64::from(units)) as u32)
        }
        (CapacityMode::Consumable, DeviceKind::Gpu) => {
            let sms = settings.sms_per_device;
            let n = up(share * f64::from(sms)).min(f64::from(sms)) as u32;
            Request::Capacity {
                name: "sms",
                quantity: n.to_string(),
            }
        }
        (CapacityMode::Consumable, DeviceKind::Cpu) => {
            let millis = settings.cores_per_device * 1000;
            let n = up(share * f64::from(millis)).min(f64::from(millis)) as u32;
            Request::Capacity {
                name: "cores",
                quantity: format!("{n}m"),
            }
        }
    }
}

fn claim_template(
    owner: &Owner,
    name: String,
    key: &str,
    share: f64,
    tenant: TenantSpec,
    settings: &Settings,
) -> Result<ResourceClaimTemplate, RenderError> {
    let mut exact = ExactDeviceRequest {
        device_class_name: settings.device_class.clone(),
        allocation_mode: Some("ExactCount".into()),
        count: Some(1),
        ..ExactDeviceRequest::default()
    };
    let mut constraints = None;
    match request(share, settings) {
        Request::Capacity { name, quantity } => {
            exact.capacity = Some(CapacityRequirements {
                requests: Some(BTreeMap::from([(name.to_string(), Quantity(quantity))])),
            });
        }
        Request::Units(n) => {
            exact.count = Some(i64::from(n));
            constraints = Some(vec![DeviceConstraint {
                requests: Some(vec![REQUEST_NAME.into()]),
                match_attribute: Some(format!("{}/parent", settings.driver)),
                ..DeviceConstraint::default()
            }]);
        }
    }
    let parameters = serde_json::to_value(TenantParameters::new(tenant))
        .map_err(|e| RenderError::Spec(format!("cannot write the claim's parameters: {e}")))?;
    let labels = owner.labels(key);
    Ok(ResourceClaimTemplate {
        metadata: owner.meta(name, key),
        spec: ResourceClaimTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some(labels),
                ..ObjectMeta::default()
            }),
            spec: ResourceClaimSpec {
                devices: Some(DeviceClaim {
                    requests: Some(vec![DeviceRequest {
                        name: REQUEST_NAME.into(),
                        exactly: Some(exact),
                        ..DeviceRequest::default()
                    }]),
                    constraints,
                    config: Some(vec![DeviceClaimConfiguration {
                        requests: Some(vec![REQUEST_NAME.into()]),
                        opaque: Some(OpaqueDeviceConfiguration {
                            driver: settings.driver.clone(),
                            parameters: RawExtension(parameters),
                        }),
                    }]),
                }),
            },
        },
    })
}

/// A pod that holds one claim from `template` and runs `setpoint tenant`, which follows the
/// tenant on its node. A service's replicas keep off each other's nodes: a node serves one
/// tenant of a name.
fn tenant_pod(
    owner: &Owner,
    name: String,
    template: &str,
    key: &str,
    settings: &Settings,
    spread: bool,
) -> Pod {
    let mut metadata = owner.meta(name, key);
    metadata.annotations = Some(BTreeMap::from([(
        TENANT_ANNOTATION.to_string(),
        owner.tenant(),
    )]));
    let affinity = spread.then(|| Affinity {
        pod_anti_affinity: Some(PodAntiAffinity {
            required_during_scheduling_ignored_during_execution: Some(vec![PodAffinityTerm {
                label_selector: Some(LabelSelector {
                    match_labels: Some(BTreeMap::from([(
                        key.to_string(),
                        names::dns_label(&owner.name),
                    )])),
                    ..LabelSelector::default()
                }),
                topology_key: "kubernetes.io/hostname".into(),
                ..PodAffinityTerm::default()
            }]),
            ..PodAntiAffinity::default()
        }),
        ..Affinity::default()
    });
    let container = tenant_container(settings);
    Pod {
        metadata,
        spec: Some(PodSpec {
            containers: vec![container],
            resource_claims: Some(vec![PodResourceClaim {
                name: CLAIM_NAME.into(),
                resource_claim_template_name: Some(template.to_string()),
                ..PodResourceClaim::default()
            }]),
            // A job's pod ends with its job; a service's failed pod is replaced by the
            // operator, which gets it a new claim (a restart in place would keep a claim
            // whose tenant the node may have dropped).
            restart_policy: Some("Never".into()),
            affinity,
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            ..PodSpec::default()
        }),
        status: None,
    }
}

/// The container of a tenant pod: `setpoint tenant`, holding the pod's claim, small and
/// locked down (it only reads its node's daemon).
fn tenant_container(settings: &Settings) -> Container {
    Container {
        name: "tenant".into(),
        image: Some(settings.tenant_image.clone()),
        command: Some(vec!["setpoint".into(), "tenant".into()]),
        resources: Some(ResourceRequirements {
            claims: Some(vec![ResourceClaim {
                name: CLAIM_NAME.into(),
                ..ResourceClaim::default()
            }]),
            requests: Some(BTreeMap::from([
                ("cpu".to_string(), Quantity("10m".into())),
                ("memory".to_string(), Quantity("16Mi".into())),
            ])),
            limits: Some(BTreeMap::from([(
                "memory".to_string(),
                Quantity("64Mi".into()),
            )])),
        }),
        // The tenant's last words (why it failed) become the pod's termination message.
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            ..SecurityContext::default()
        }),
        ..Container::default()
    }
}

#[cfg(test)]
#[path = "render_tests.rs"]
mod tests;
