//! Admission's tests: device memory, a job's width, and the forecast of what frees.

mod memory {
    use super::super::*;

    fn check(
        need_mib: u64,
        limit_free_mib: u64,
        used_total_mib: Option<(u64, u64)>,
    ) -> MemoryCheck {
        MemoryCheck {
            device: "cuda:0".into(),
            need_bytes: need_mib << 20,
            limit_free_bytes: limit_free_mib << 20,
            device_used_total: used_total_mib.map(|(u, t)| (u << 20, t << 20)),
        }
    }

    #[test]
    fn a_job_that_fits_is_admitted() {
        assert_eq!(check_memory(&check(100, 1000, Some((500, 1000)))), Ok(()));
        assert_eq!(check_memory(&check(100, 1000, None)), Ok(()));
    }

    #[test]
    fn memory_pressure_from_other_processes_refuses_with_the_figures() {
        let err = check_memory(&check(600, 80_000, Some((79_500, 80_000))))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("600 MiB") && err.contains("only 500 MiB of 80000 MiB is free"),
            "{err}"
        );
    }

    #[test]
    fn the_configured_limit_refuses_naming_the_key() {
        let err = check_memory(&check(600, 200, Some((0, 80_000))))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("leaves 200 MiB") && err.contains("device.memory_limit_mib"),
            "{err}"
        );
    }
}

mod width {
    use super::super::*;

    #[test]
    fn a_job_narrower_than_the_device_is_refused_what_it_cannot_use() {
        // An empty 2-core device: 0.95 to hand out. 60 core-seconds by a deadline in 60 s
        // (59.4 s after the 1 % margin) need 0.51 of it; a job whose steps run on one
        // thread can use at most 0.5.
        let cfg = ControlConfig::default();
        let last = Decisions::default();
        let c = |width: Option<f64>, deadline: f64| Candidate {
            name: "narrow".into(),
            work_core_s: 60.0,
            deadline_in_s: deadline,
            cores: 2.0,
            width,
        };
        assert!(
            admit(&cfg, &last, &c(None, 60.0)).is_ok(),
            "as wide as the device"
        );
        assert!(admit(&cfg, &last, &c(Some(2.0), 60.0)).is_ok());
        let refusal = admit(&cfg, &last, &c(Some(1.0), 60.0)).unwrap_err();
        assert_eq!(
            refusal.reason,
            "job narrow needs 0.51 of the device until its deadline in 60 s, but its steps \
             use at most 1 of the device's 2 cores (each step is too small to split), so it \
             can use at most 0.50"
        );
        // At half the device, 60 core-seconds take 60 s: the earliest deadline with the margin.
        let want = 60.0 / 0.99;
        assert!(
            (refusal.earliest_deadline_in_s.unwrap() - want).abs() < 1e-6,
            "{:?}",
            refusal.earliest_deadline_in_s
        );
        let admitted = admit(&cfg, &last, &c(Some(1.0), 61.0)).unwrap();
        assert!(admitted <= 0.5, "{admitted}");
        // A job as wide as the device (or of unknown width) that needs more than all of it
        // is refused for the capacity, not for its width.
        for width in [None, Some(2.0)] {
            let refusal = admit(&cfg, &last, &c(width, 20.0)).unwrap_err();
            assert!(
                refusal
                    .reason
                    .starts_with("job narrow needs 1.52 of the device until its deadline in 20 s, but only 0.95 is free"),
                "{}",
                refusal.reason
            );
        }
        assert_eq!(usable_share(Some(1.0), 2.0), 0.5);
        assert_eq!(
            usable_share(Some(4.0), 2.0),
            1.0,
            "never more than the device"
        );
        assert_eq!(usable_share(None, 2.0), 1.0);
        assert_eq!(usable_share(Some(f64::NAN), 2.0), 1.0);
    }
}

mod forecast {
    use super::super::*;
    use crate::control::{JobDecision, ServiceDecision};
    use proptest::prelude::*;

    /// A deadline job needing `need` of the device (at 100 steps/s per unit of share) for
    /// `for_s` seconds more.
    fn running(name: &str, need: f64, for_s: f64) -> JobDecision {
        JobDecision {
            name: name.into(),
            class: JobClass::Deadline,
            requested: need,
            share: need,
            remaining_steps: (need * 100.0 * for_s).round() as u64,
            expected_epochs: 1.0,
            required_rate: Some(need * 100.0),
            measured_rate: need * 100.0,
            smoothed_rate: Some(need * 100.0),
            rate_per_share: Some(100.0),
            slack_s: Some(for_s * (1.0 - need)),
            predicted_finish_in_s: Some(for_s),
            past_deadline: None,
            usable_share: 1.0,
        }
    }

    fn service(requested: f64) -> ServiceDecision {
        ServiceDecision {
            name: "svc".into(),
            requested,
            share: requested,
            batch_size: 8,
            setpoint_s: 0.006,
            p99_s: Some(0.004),
            feed_forward: requested,
            cost_per_request_s: Some(0.001),
        }
    }

    fn candidate(work_core_s: f64, deadline_in_s: f64) -> Candidate {
        Candidate {
            name: "new".into(),
            work_core_s,
            deadline_in_s,
            cores: 2.0,
            width: None,
        }
    }

    #[test]
    fn a_job_that_fits_once_a_running_job_finishes_is_admitted() {
        // Services hold 0.20, a deadline job 0.75 for 5 s more, the reserve 0.05: nothing is
        // free now. A job needing 0.5 s of the whole device (1 core-second of 2) fits in the
        // 0.75 that frees at 5 s: done at 5.67 s, 5.77 s with the margin.
        let cfg = ControlConfig::default();
        let last = Decisions {
            services: vec![service(0.2)],
            jobs: vec![running("busy", 0.75, 5.0)],
            ..Default::default()
        };
        let share = admit(&cfg, &last, &candidate(1.0, 11.0)).unwrap();
        assert_eq!(share, 0.0, "nothing is free now");
        let refusal = admit(&cfg, &last, &candidate(1.0, 5.0)).unwrap_err();
        let want = cfg.deadline_keeping_margin_s(5.0 + 0.5 / 0.75);
        let earliest = refusal.earliest_deadline_in_s.unwrap();
        assert!((earliest - want).abs() < 1e-9, "{earliest} vs {want}");
        assert_eq!(
            refusal.reason,
            "job new needs 0.10 of the device until its deadline in 5 s, but only 0.00 is free \
             (services hold 0.20, deadline jobs 0.75, reserve 0.05), and the deadline jobs \
             finish too late to free the rest in time"
        );
        assert!(admit(&cfg, &last, &candidate(1.0, earliest)).is_ok());
    }

    #[test]
    fn a_job_admitted_below_its_need_is_owed_what_it_was_short() {
        // The job admitted above, now running at its average need (0.09 over 11 s), holds
        // more than there is until the first one finishes: a third job waits for that debt.
        let cfg = ControlConfig::default();
        let (first, second) = (running("busy", 0.75, 5.0), running("admitted", 0.09, 11.0));
        let last = Decisions {
            services: vec![service(0.2)],
            jobs: vec![first, second],
            ..Default::default()
        };
        // 0.09 short for 5 s: 0.45 share-seconds, paid from the 0.66 free at 5 s.
        let refusal = admit(&cfg, &last, &candidate(1.0, 5.5)).unwrap_err();
        let want = cfg.deadline_keeping_margin_s(5.0 + 0.45 / 0.66 + 0.5 / 0.66);
        let earliest = refusal.earliest_deadline_in_s.unwrap();
        assert!((earliest - want).abs() < 1e-9, "{earliest} vs {want}");
    }

    #[test]
    fn services_holding_everything_leave_no_deadline() {
        let cfg = ControlConfig::default();
        let last = Decisions {
            services: vec![service(0.95)],
            ..Default::default()
        };
        let refusal = admit(&cfg, &last, &candidate(1.0, 60.0)).unwrap_err();
        assert_eq!(refusal.earliest_deadline_in_s, None);
        assert!(
            refusal
                .reason
                .ends_with("(services hold 0.95, deadline jobs 0.00, reserve 0.05)"),
            "{}",
            refusal.reason
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 1024,
            rng_seed: proptest::test_runner::RngSeed::Fixed(8812),
            ..ProptestConfig::default()
        })]

        /// A refusal never names a deadline at or before the one refused, and the deadline it
        /// names is admitted as the node stands; what is admitted is never more than is free.
        #[test]
        fn the_earliest_deadline_named_is_admitted(
            services in proptest::collection::vec(0.0f64..0.4, 0..3),
            jobs in proptest::collection::vec((0.01f64..0.8, 0.1f64..300.0, 0.25f64..=1.0), 0..4),
            foreign in 0.0f64..0.3,
            work_core_s in 0.0f64..400.0,
            deadline_in_s in -10.0f64..400.0,
            width in proptest::option::of(1.0f64..=2.0),
        ) {
            let cfg = ControlConfig::default();
            let last = Decisions {
                services: services.iter().map(|&s| service(s)).collect(),
                jobs: jobs
                    .iter()
                    .enumerate()
                    .map(|(i, &(need, for_s, usable))| JobDecision {
                        usable_share: usable,
                        ..running(&format!("j{i}"), need, for_s)
                    })
                    .collect(),
                foreign_load: foreign,
                ..Default::default()
            };
            let c = Candidate { width, ..candidate(work_core_s, deadline_in_s) };
            match admit(&cfg, &last, &c) {
                Ok(share) => {
                    let free = uncommitted_where(&cfg, &last, &|_| true);
                    prop_assert!(share <= free + 1e-12, "{share} of {free} free");
                    prop_assert!(share <= c.usable_share() + 1e-12);
                }
                Err(r) => {
                    if let Some(e) = r.earliest_deadline_in_s {
                        prop_assert!(e > deadline_in_s, "{} named for {deadline_in_s}", e);
                        let again = Candidate { deadline_in_s: e * (1.0 + 1e-9), ..c.clone() };
                        prop_assert!(admit(&cfg, &last, &again).is_ok(), "{e} refused: {}", r.reason);
                    }
                }
            }
        }
    }
}
