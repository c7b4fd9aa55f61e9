//! The node's devices as ResourceSlices (`resource.k8s.io/v1`): what the kube-scheduler
//! allocates claims from. Pure: [`devices`] and [`slices`] turn the node's
//! [`DeviceRoom`]s into API objects; [`super::publish`] sends them.
//!
//! Every device carries attributes (`kind`, `model`, `uuid`, `smCount`, `computeCapability`,
//! `driverVersion`, `greenContexts`) and capacity. The capacity shown is what admission
//! could still give the cluster: the device less the reserve, other processes' load and
//! the tenants the node runs for itself (from its config or its HTTP API). Tenants placed
//! through claims are not taken off it, because the scheduler keeps its own account of
//! what it allocated.
//!
//! - [`CapacityMode::Consumable`]: one device per GPU (and CPU part) with
//!   `allowMultipleAllocations`, its capacity `sms` (whole SMs; `cores` in millicores on the
//!   CPU) and `memory`, each with a request policy so that a claim that names no amount
//!   takes a small default, not the whole device.
//! - [`CapacityMode::Units`]: for clusters without the `DRAConsumableCapacity` gate, each
//!   device is cut into equal unit devices, as many as its room holds, each carrying the
//!   attribute `parent` (the device) so that a claim of several units can keep them on one
//!   device with a `matchAttribute` constraint.
//!
//! A failed device is left out. A slice holds at most [`MAX_DEVICES_PER_SLICE`] devices;
//! more are spread over several slices of the node's one pool.

use std::collections::BTreeMap;

use k8s_openapi::api::resource::v1::{
    CapacityRequestPolicy, CapacityRequestPolicyRange, Device, DeviceAttribute, DeviceCapacity,
    ResourcePool, ResourceSlice, ResourceSliceSpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::config::CapacityMode;
use crate::node::DeviceRoom;

/// The API's limit on devices in one ResourceSlice.
pub const MAX_DEVICES_PER_SLICE: usize = 128;
/// Label on every slice the node publishes, naming the node (to find its own slices).
pub const NODE_LABEL: &str = "gpu.setpoint.dev/node";

/// What the slices are built for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceSpec {
    /// The DRA driver's name.
    pub driver: String,
    /// The node's name (also the pool's).
    pub node: String,
    /// How capacity is shown.
    pub mode: CapacityMode,
    /// Units per device in [`CapacityMode::Units`].
    pub units: u32,
}

/// The name a setpoint device has in the cluster (a DNS label): `cuda:0` → `cuda-0`.
pub fn device_name(setpoint_name: &str) -> String {
    setpoint_name.replace(':', "-")
}

/// The name of unit `i` of a device.
pub fn unit_name(setpoint_name: &str, i: u32) -> String {
    format!("{}-unit-{i}", device_name(setpoint_name))
}

/// The setpoint device a published device (whole or a unit) stands for, given the node's
/// devices: `cuda-0-unit-3` → `cuda:0`.
pub fn setpoint_device<'a>(published: &str, names: &'a [String]) -> Option<&'a str> {
    let whole = match published.rsplit_once("-unit-") {
        Some((base, i)) if i.parse::<u32>().is_ok() => base,
        _ => published,
    };
    names
        .iter()
        .find(|n| device_name(n) == whole)
        .map(String::as_str)
}

/// The devices the rooms are published as.
pub fn devices(spec: &SliceSpec, rooms: &[DeviceRoom]) -> Vec<Device> {
    rooms
        .iter()
        .filter(|r| r.healthy)
        .flat_map(|r| match spec.mode {
            CapacityMode::Consumable => vec![consumable(r)],
            CapacityMode::Units => units(r, spec.units),
        })
        .collect()
}

/// The node's slices for `devices`, in one pool named after the node at `generation`.
pub fn slices(spec: &SliceSpec, devices: Vec<Device>, generation: i64) -> Vec<ResourceSlice> {
    let chunks: Vec<Vec<Device>> = if devices.is_empty() {
        vec![Vec::new()]
    } else {
        devices
            .chunks(MAX_DEVICES_PER_SLICE)
            .map(<[Device]>::to_vec)
            .collect()
    };
    let count = chunks.len() as i64;
    chunks
        .into_iter()
        .enumerate()
        .map(|(i, devices)| ResourceSlice {
            metadata: ObjectMeta {
                name: Some(slice_name(spec, i)),
                labels: Some(BTreeMap::from([(
                    NODE_LABEL.to_string(),
                    spec.node.clone(),
                )])),
                ..ObjectMeta::default()
            },
            spec: ResourceSliceSpec {
                driver: spec.driver.clone(),
                node_name: Some(spec.node.clone()),
                pool: ResourcePool {
                    name: spec.node.clone(),
                    generation,
                    resource_slice_count: count,
                },
                devices: Some(devices),
                ..ResourceSliceSpec::default()
            },
        })
        .collect()
}

/// Slice `i`'s name: the node, the driver and the index, within the API's 253 characters.
pub fn slice_name(spec: &SliceSpec, i: usize) -> String {
    let tail = format!("-{}-{i}", spec.driver);
    let room = 253usize.saturating_sub(tail.len());
    let node: String = spec.node.chars().take(room).collect();
    format!("{}{tail}", node.trim_end_matches(['-', '.']))
}

fn consumable(r: &DeviceRoom) -> Device {
    let mut capacity = BTreeMap::new();
    match &r.gpu {
        Some(_) => {
            let sms = (r.free_share * r.cores + 1e-9).floor().max(0.0) as u64;
            capacity.insert("sms".into(), policy(sms.to_string(), "1", "1", Some("1")));
            capacity.insert(
                "memory".into(),
                policy(r.memory_free.to_string(), "0", "0", None),
            );
        }
        None => {
            let milli = (r.free_share * r.cores * 1000.0 + 1e-6).floor().max(0.0) as u64;
            capacity.insert(
                "cores".into(),
                policy(format!("{milli}m"), "100m", "10m", None),
            );
        }
    }
    Device {
        name: device_name(&r.name),
        attributes: Some(attributes(r)),
        capacity: Some(capacity),
        allow_multiple_allocations: Some(true),
        ..Device::default()
    }
}

fn units(r: &DeviceRoom, n: u32) -> Vec<Device> {
    let n = n.max(1);
    let count = (r.free_share * f64::from(n) + 1e-9)
        .floor()
        .clamp(0.0, f64::from(n)) as u32;
    let mut capacity = BTreeMap::new();
    match &r.gpu {
        Some(_) => {
            let sms = (r.cores / f64::from(n)).floor() as u64;
            capacity.insert("sms".into(), fixed(sms.to_string()));
            capacity.insert(
                "memory".into(),
                fixed((r.memory_total / u64::from(n)).to_string()),
            );
        }
        None => {
            let milli = (r.cores * 1000.0 / f64::from(n)).floor() as u64;
            capacity.insert("cores".into(), fixed(format!("{milli}m")));
        }
    }
    let mut attrs = attributes(r);
    attrs.insert("parent".into(), string(device_name(&r.name)));
    (0..count)
        .map(|i| Device {
            name: unit_name(&r.name, i),
            attributes: Some(attrs.clone()),
            capacity: Some(capacity.clone()),
            ..Device::default()
        })
        .collect()
}

fn attributes(r: &DeviceRoom) -> BTreeMap<String, DeviceAttribute> {
    let mut a = BTreeMap::new();
    a.insert("setpointDevice".into(), string(r.name.clone()));
    match &r.gpu {
        Some(g) => {
            a.insert("kind".into(), string("gpu".into()));
            a.insert("model".into(), string(g.name.clone()));
            a.insert("uuid".into(), string(g.uuid.clone()));
            a.insert("smCount".into(), int(i64::from(g.sm_count)));
            let (major, minor) = g.compute_capability;
            a.insert(
                "computeCapability".into(),
                version(format!("{major}.{minor}.0")),
            );
            let (dmaj, dmin) = (g.driver_version / 1000, g.driver_version % 1000 / 10);
            a.insert("driverVersion".into(), version(format!("{dmaj}.{dmin}.0")));
            a.insert("greenContexts".into(), boolean(r.green_contexts));
        }
        None => {
            a.insert("kind".into(), string("cpu".into()));
        }
    }
    a
}

fn policy(value: String, default: &str, min: &str, step: Option<&str>) -> DeviceCapacity {
    DeviceCapacity {
        value: Quantity(value),
        request_policy: Some(CapacityRequestPolicy {
            default: Some(Quantity(default.into())),
            valid_range: Some(CapacityRequestPolicyRange {
                min: Quantity(min.into()),
                step: step.map(|s| Quantity(s.into())),
                max: None,
            }),
            valid_values: None,
        }),
    }
}

fn fixed(value: String) -> DeviceCapacity {
    DeviceCapacity {
        value: Quantity(value),
        request_policy: None,
    }
}

fn string(s: String) -> DeviceAttribute {
    DeviceAttribute {
        string: Some(s),
        ..DeviceAttribute::default()
    }
}

fn int(i: i64) -> DeviceAttribute {
    DeviceAttribute {
        int: Some(i),
        ..DeviceAttribute::default()
    }
}

fn version(v: String) -> DeviceAttribute {
    DeviceAttribute {
        version: Some(v),
        ..DeviceAttribute::default()
    }
}

fn boolean(b: bool) -> DeviceAttribute {
    DeviceAttribute {
        bool: Some(b),
        ..DeviceAttribute::default()
    }
}

#[cfg(test)]
#[path = "slice_tests.rs"]
pub(crate) mod tests;
