//! Claims against the node's capacity, end to end in the pure parts: what a node publishes
//! ([`crate::node::Node::device_room`]'s reckoning, [`crate::control::admission::uncommitted_where`]),
//! what a scheduler allocates from it (claims summed up to the published capacity, as the
//! kube-scheduler does with consumable capacity), and what the node admits when the kubelet
//! prepares them ([`crate::control::admission::admit`]). Whatever the node's own tenants,
//! other processes' load and the claims' sizes, the claims never take the device past its
//! capacity, in the scheduler's account or in the node's.

use proptest::prelude::*;

use crate::config::CapacityMode;
use crate::control::admission::{Candidate, admit, uncommitted_where};
use crate::control::{ControlConfig, Decisions, JobClass, JobDecision, ServiceDecision};
use crate::kube::slice::{SliceSpec, devices};

const SMS: f64 = 132.0;
const DEADLINE_S: f64 = 3600.0;

fn job(name: String, share: f64) -> JobDecision {
    JobDecision {
        name,
        class: JobClass::Deadline,
        requested: share,
        share,
        remaining_steps: 1,
        expected_epochs: 1.0,
        required_rate: None,
        measured_rate: 0.0,
        smoothed_rate: None,
        rate_per_share: None,
        slack_s: None,
        predicted_finish_in_s: None,
        past_deadline: None,
        usable_share: 1.0,
    }
}

fn service(name: String, share: f64) -> ServiceDecision {
    ServiceDecision {
        name,
        requested: share,
        share,
        batch_size: 1,
        setpoint_s: 0.01,
        p99_s: None,
        feed_forward: 0.0,
        cost_per_request_s: None,
    }
}

/// The `sms` the node shows for a room of `free` share.
fn published_sms(free: f64) -> f64 {
    let room = crate::kube::slice::tests::gpu(0, free);
    let spec = SliceSpec {
        driver: "gpu.setpoint.dev".into(),
        node: "n".into(),
        mode: CapacityMode::Consumable,
        units: 8,
    };
    let d = devices(&spec, &[room]).remove(0);
    d.capacity.unwrap()["sms"].value.0.parse().unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, rng_seed: proptest::test_runner::RngSeed::Fixed(1934), ..ProptestConfig::default() })]

    #[test]
    fn claims_never_take_a_device_past_its_capacity(
        own_jobs in proptest::collection::vec(0.0f64..0.4, 0..4),
        own_services in proptest::collection::vec(0.0f64..0.3, 0..3),
        foreign in 0.0f64..0.3,
        reserve in 0.0f64..0.2,
        claims in proptest::collection::vec((1u32..60, 0.3f64..1.6), 0..12),
    ) {
        let cfg = ControlConfig { reserve_frac: reserve, ..ControlConfig::default() };
        let mut last = Decisions {
            jobs: own_jobs.iter().enumerate().map(|(i, &s)| job(format!("own-{i}"), s)).collect(),
            services: own_services.iter().enumerate().map(|(i, &s)| service(format!("svc-{i}"), s)).collect(),
            foreign_load: foreign,
            ..Decisions::default()
        };
        let capacity = (1.0 - reserve - foreign).max(0.0);
        let own: f64 = own_jobs.iter().chain(&own_services).sum();
        let is_claim = |n: &str| n.starts_with("claim-");

        // The scheduler's account: claims allocated while they fit in what was published.
        let published = published_sms(uncommitted_where(&cfg, &last, &|n| !is_claim(n)));
        prop_assert!(published <= ((capacity - own).max(0.0) * SMS).floor() + 1e-9);
        let mut allocated = 0.0;
        let mut admitted = 0.0;
        for (i, (sms, need_factor)) in claims.iter().enumerate() {
            let sms = f64::from(*sms);
            if allocated + sms > published {
                continue;
            }
            allocated += sms;
            // Preparing it: its tenant, a deadline job needing about its allocation (more or
            // less than it asked for), admitted by the node against everything it runs.
            let want = sms / SMS * need_factor;
            let usable = DEADLINE_S - cfg.deadline_margin_s(DEADLINE_S);
            let c = Candidate {
                width: None,
                name: format!("claim-{i}"),
                work_core_s: want * SMS * usable,
                deadline_in_s: DEADLINE_S,
                cores: SMS,
            };
            if let Ok(needed) = admit(&cfg, &last, &c) {
                admitted += needed;
                last.jobs.push(job(c.name, needed));
            }
        }
        prop_assert!(allocated <= published);
        prop_assert!(
            admitted <= (capacity - own).max(0.0) + 1e-9,
            "claims admitted {admitted} with {own} held of {capacity}"
        );
    }
}
