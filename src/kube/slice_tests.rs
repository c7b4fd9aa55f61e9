use proptest::prelude::*;

use super::*;
use crate::device::cuda::GpuInfo;

/// A room on an H200 (132 SMs) with `free_share` of it free.
pub(crate) fn gpu(index: usize, free_share: f64) -> DeviceRoom {
    DeviceRoom {
        name: format!("cuda:{index}"),
        gpu: Some(GpuInfo {
            index,
            name: "NVIDIA H200".into(),
            uuid: format!("GPU-{index:08x}"),
            compute_capability: (9, 0),
            sm_count: 132,
            total_memory: 150_000_000_000,
            priority_range: (0, -5),
            driver_version: 13000,
        }),
        green_contexts: true,
        cores: 132.0,
        free_share,
        memory_total: 150_000_000_000,
        memory_free: 100_000_000_000,
        healthy: true,
    }
}

fn cpu(name: &str, cores: f64, free_share: f64) -> DeviceRoom {
    DeviceRoom {
        name: name.into(),
        gpu: None,
        green_contexts: false,
        cores,
        free_share,
        memory_total: 0,
        memory_free: 0,
        healthy: true,
    }
}

fn spec(mode: CapacityMode) -> SliceSpec {
    SliceSpec {
        driver: "gpu.setpoint.dev".into(),
        node: "node-a".into(),
        mode,
        units: 8,
    }
}

fn capacity(d: &Device, key: &str) -> String {
    d.capacity.as_ref().unwrap()[key].value.0.clone()
}

fn attr(d: &Device, key: &str) -> DeviceAttribute {
    d.attributes.as_ref().unwrap()[key].clone()
}

#[test]
fn a_gpu_shows_whole_sms_of_its_room_and_its_attributes() {
    let d = &devices(&spec(CapacityMode::Consumable), &[gpu(0, 0.5)])[0];
    assert_eq!(d.name, "cuda-0");
    assert_eq!(d.allow_multiple_allocations, Some(true));
    assert_eq!(capacity(d, "sms"), "66");
    assert_eq!(capacity(d, "memory"), "100000000000");
    let policy = d.capacity.as_ref().unwrap()["sms"]
        .request_policy
        .clone()
        .unwrap();
    assert_eq!(policy.default, Some(Quantity("1".into())));
    assert_eq!(attr(d, "kind").string.as_deref(), Some("gpu"));
    assert_eq!(attr(d, "model").string.as_deref(), Some("NVIDIA H200"));
    assert_eq!(attr(d, "smCount").int, Some(132));
    assert_eq!(
        attr(d, "computeCapability").version.as_deref(),
        Some("9.0.0")
    );
    assert_eq!(attr(d, "driverVersion").version.as_deref(), Some("13.0.0"));
    assert_eq!(attr(d, "greenContexts").bool, Some(true));
    assert_eq!(attr(d, "setpointDevice").string.as_deref(), Some("cuda:0"));
}

#[test]
fn the_cpu_shows_millicores_and_no_memory() {
    let d = &devices(&spec(CapacityMode::Consumable), &[cpu("cpu:1", 0.6, 0.5)])[0];
    assert_eq!(d.name, "cpu-1");
    assert_eq!(capacity(d, "cores"), "300m");
    assert!(!d.capacity.as_ref().unwrap().contains_key("memory"));
    assert_eq!(attr(d, "kind").string.as_deref(), Some("cpu"));
}

#[test]
fn units_are_as_many_as_the_room_holds_and_name_their_parent() {
    let ds = devices(
        &spec(CapacityMode::Units),
        &[gpu(1, 0.40), cpu("cpu", 2.0, 1.0)],
    );
    let names: Vec<&str> = ds.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "cuda-1-unit-0",
            "cuda-1-unit-1",
            "cuda-1-unit-2",
            "cpu-unit-0",
            "cpu-unit-1",
            "cpu-unit-2",
            "cpu-unit-3",
            "cpu-unit-4",
            "cpu-unit-5",
            "cpu-unit-6",
            "cpu-unit-7",
        ]
    );
    assert_eq!(capacity(&ds[0], "sms"), "16");
    assert_eq!(capacity(&ds[3], "cores"), "250m");
    assert_eq!(attr(&ds[0], "parent").string.as_deref(), Some("cuda-1"));
    assert_eq!(ds[0].allow_multiple_allocations, None);
}

#[test]
fn a_failed_device_is_left_out() {
    let mut failed = gpu(0, 0.9);
    failed.healthy = false;
    let ds = devices(&spec(CapacityMode::Consumable), &[failed, gpu(1, 0.9)]);
    assert_eq!(ds.len(), 1);
    assert_eq!(ds[0].name, "cuda-1");
}

#[test]
fn published_names_lead_back_to_the_device() {
    let names = vec!["cuda:0".to_string(), "cuda:10".into(), "cpu:1".into()];
    assert_eq!(setpoint_device("cuda-0", &names), Some("cuda:0"));
    assert_eq!(setpoint_device("cuda-10-unit-7", &names), Some("cuda:10"));
    assert_eq!(setpoint_device("cpu-1-unit-0", &names), Some("cpu:1"));
    assert_eq!(setpoint_device("cuda-1", &names), None);
    assert_eq!(setpoint_device("cuda-0-unit-x", &names), None);
}

#[test]
fn a_node_without_devices_still_has_its_pool() {
    let s = slices(&spec(CapacityMode::Consumable), Vec::new(), 7);
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].spec.pool.resource_slice_count, 1);
    assert_eq!(s[0].spec.pool.generation, 7);
    assert_eq!(
        s[0].metadata.name.as_deref(),
        Some("node-a-gpu.setpoint.dev-0")
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, rng_seed: proptest::test_runner::RngSeed::Fixed(19), ..ProptestConfig::default() })]

    /// What is shown never exceeds the device, nor the room admission left on it.
    #[test]
    fn capacity_is_never_more_than_the_room(
        shares in proptest::collection::vec(0.0f64..=1.0, 1..20),
        units in 2u32..=64,
        consumable in any::<bool>(),
    ) {
        let rooms: Vec<DeviceRoom> = shares.iter().enumerate().map(|(i, &s)| {
            if i % 3 == 2 { cpu(&format!("cpu:{i}"), 1.5, s) } else { gpu(i, s) }
        }).collect();
        let mode = if consumable { CapacityMode::Consumable } else { CapacityMode::Units };
        let sp = SliceSpec { units, ..spec(mode) };
        let ds = devices(&sp, &rooms);
        for r in &rooms {
            let base = device_name(&r.name);
            let mine: Vec<&Device> = ds.iter().filter(|d| {
                d.name == base || d.name.strip_prefix(&format!("{base}-unit-")).is_some()
            }).collect();
            let (key, scale) = if r.gpu.is_some() { ("sms", 1.0) } else { ("cores", 1000.0) };
            let total: f64 = mine.iter().map(|d| {
                capacity(d, key).trim_end_matches('m').parse::<f64>().unwrap()
            }).sum();
            prop_assert!(total <= r.free_share * r.cores * scale + 1e-6,
                "{}: {total} shown for a room of {}", r.name, r.free_share * r.cores * scale);
            if consumable {
                prop_assert_eq!(mine.len(), 1);
            } else {
                prop_assert!(mine.len() as u32 <= units);
            }
        }
        let names: std::collections::HashSet<&str> = ds.iter().map(|d| d.name.as_str()).collect();
        prop_assert_eq!(names.len(), ds.len());
    }

    /// Slices hold every device once, in order, at most 128 each, all counted in the pool.
    #[test]
    fn slices_hold_every_device_once(n in 0usize..400, generation in 1i64..1_000_000) {
        let rooms: Vec<DeviceRoom> = (0..n.div_ceil(8)).map(|i| gpu(i, 1.0)).collect();
        let sp = spec(CapacityMode::Units);
        let ds: Vec<Device> = devices(&sp, &rooms).into_iter().take(n).collect();
        let s = slices(&sp, ds.clone(), generation);
        prop_assert_eq!(s.len(), n.div_ceil(MAX_DEVICES_PER_SLICE).max(1));
        let back: Vec<Device> = s.iter().flat_map(|x| x.spec.devices.clone().unwrap()).collect();
        prop_assert_eq!(back, ds);
        for x in &s {
            prop_assert!(x.spec.devices.as_ref().unwrap().len() <= MAX_DEVICES_PER_SLICE);
            prop_assert_eq!(x.spec.pool.resource_slice_count, s.len() as i64);
            prop_assert_eq!(x.spec.pool.generation, generation);
            prop_assert_eq!(x.spec.node_name.as_deref(), Some("node-a"));
        }
    }
}
