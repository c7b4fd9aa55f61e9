//! Jobs against their deadlines and targets, over the API: a deadline change goes through
//! admission, a job past its deadline is demoted (or stopped), outcomes are shown and
//! recorded, and the estimated finish follows the job's own rate.

use crate::support::daemon;

use std::time::{Duration, SystemTime};

use daemon::Daemon;
use serde_json::{Value, json};

fn expect_error(got: (u16, Value), status: u16, message: &str) -> String {
    assert_eq!(got.0, status, "{}", got.1);
    let m = got.1["error"].as_str().unwrap_or_default().to_string();
    assert!(m.contains(message), "expected {message:?} in {m:?}");
    m
}

fn job(d: &Daemon, name: &str) -> Value {
    d.get(&format!("/v1/jobs/{name}")).1
}

fn wait_for(d: &Daemon, name: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    d.poll(Duration::from_secs(120), &format!("{name}: {what}"), || {
        let v = job(d, name);
        check(&v).then_some(v)
    })
}

/// The row of `/v1/status` for tenant `name`.
fn tenant(d: &Daemon, name: &str) -> Value {
    let (_, v) = d.get("/v1/status");
    v["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no tenant {name} in {v}"))
}

fn time(v: &Value) -> SystemTime {
    setpoint::config::parse_rfc3339(v.as_str().unwrap()).unwrap()
}

#[test]
fn a_deadline_change_the_node_cannot_meet_is_refused_and_the_job_keeps_its_own() {
    let d = Daemon::start("");
    let (s, v) = d.send(
        "POST",
        "/v1/jobs",
        &json!({
            "name": "big",
            "data": "synthetic:blobs:size=20000",
            "layers": [64, 512, 512, 10],
            "epochs": 200,
            "deadline": "1h",
        }),
    );
    assert_eq!(s, 201, "{v}");
    let before = wait_for(&d, "big", "a decision of the controller", |v| {
        v["state"] == "running" && v["smoothed_steps_per_s"].is_number()
    });
    // Five seconds for 200 epochs of this model: refused as a submission would be, with the
    // earliest deadline it could meet.
    let asked = SystemTime::now();
    let msg = expect_error(
        d.send("PATCH", "/v1/jobs/big", &json!({"deadline": "5s"})),
        409,
        "of the device until its deadline in 5 s",
    );
    assert!(msg.starts_with("job big needs "), "{msg}");
    // Refused for the capacity: its products are split, so its width is not the reason.
    assert!(
        msg.contains(" is free (") && !msg.contains("too small to split"),
        "{msg}"
    );
    let earliest = msg
        .split("the earliest deadline it can meet is ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_else(|| panic!("no earliest deadline in {msg:?}"));
    let earliest = setpoint::config::parse_rfc3339(earliest).unwrap();
    assert!(earliest > asked + Duration::from_secs(5), "{msg}");
    assert!(msg.contains("change it to that deadline or later"), "{msg}");
    // Refused, nothing changed: the job keeps its deadline and its class.
    let after = job(&d, "big");
    assert_eq!(after["deadline"], before["deadline"]);
    assert_eq!(after["class"], "deadline");
    assert!(after["outcome"]["deadline"].is_null(), "{after}");
    // A later deadline only lowers what it needs: accepted. So is clearing it.
    let (s, v) = d.send("PATCH", "/v1/jobs/big", &json!({"deadline": "2h"}));
    assert_eq!(s, 200, "{v}");
    assert!(time(&v["deadline"]) > time(&before["deadline"]));
    let (s, v) = d.send("PATCH", "/v1/jobs/big", &json!({"deadline": null}));
    assert_eq!(s, 200, "{v}");
    assert!(v["deadline"].is_null());
    assert_eq!(d.send("DELETE", "/v1/jobs/big", &Value::Null).0, 200);
}

/// A deadline job admitted for 20 epochs due in 3 s, then given far more epochs than it can
/// take by then (an epoch limit is not admitted again), so its deadline passes as it runs.
fn submit_late_job(d: &Daemon) {
    let (s, v) = d.send(
        "POST",
        "/v1/jobs",
        &json!({
            "name": "late",
            "data": "synthetic:blobs:size=2000",
            "layers": [64, 256, 256, 10],
            "epochs": 20,
            "deadline": "3s",
            "checkpoint_every_steps": 50,
        }),
    );
    assert_eq!(s, 201, "{v}");
    let (s, v) = d.send("PATCH", "/v1/jobs/late", &json!({"epochs": 100000}));
    assert_eq!(s, 200, "{v}");
}

#[test]
fn a_job_past_its_deadline_runs_on_as_best_effort_and_says_it_missed() {
    let d = Daemon::start("");
    submit_late_job(&d);
    let v = wait_for(&d, "late", "its deadline to pass", |v| {
        v["outcome"]["deadline"] == "missed"
    });
    // Demoted, not stopped: it runs on as best-effort, with no rate to keep up.
    assert_eq!(v["state"], "running", "{v}");
    assert_eq!(v["class"], "best-effort", "{v}");
    let v = wait_for(&d, "late", "a decision after its deadline", |v| {
        v["required_steps_per_s"].is_null() && v["smoothed_steps_per_s"].is_number()
    });
    assert_eq!(v["class"], "best-effort");
    assert!(v["slack_s"].as_f64().unwrap() < 0.0, "{v}");
    let row = tenant(&d, "late");
    assert_eq!(row["outcome"]["deadline"], "missed", "{row}");
    assert!(
        row["measured"]
            .as_str()
            .unwrap()
            .ends_with("deadline missed"),
        "{row}"
    );
    assert_eq!(d.send("DELETE", "/v1/jobs/late", &Value::Null).0, 200);
    let v = wait_for(&d, "late", "the cancel", |v| v["state"] == "cancelled");
    assert_eq!(
        v["outcome"]["deadline"], "missed",
        "a cancel after it stays missed"
    );
}

#[test]
fn under_past_deadline_stop_a_late_job_is_stopped_and_its_outcome_survives_a_restart() {
    let d = Daemon::start("[control]\npast_deadline = \"stop\"\n");
    submit_late_job(&d);
    let v = wait_for(&d, "late", "it to stop", |v| v["state"] == "cancelled");
    assert_eq!(v["stop_reason"], "deadline_passed", "{v}");
    assert_eq!(v["outcome"]["deadline"], "missed", "{v}");
    assert!(time(&v["finished_at"]) > time(&v["deadline"]), "{v}");
    assert!(v["checkpoint"].is_string(), "its checkpoint is kept");
    let row = tenant(&d, "late");
    assert_eq!(row["state"], "cancelled");
    assert!(
        row["measured"]
            .as_str()
            .unwrap()
            .contains("deadline missed"),
        "{row}"
    );
    // The outcome is recorded: a node started on a copy of the state dir lists the job as
    // it ended.
    let src = d.node.state_dir().join("jobs/late");
    let restarted = tempfile::tempdir().unwrap();
    let dst = restarted.path().join("jobs/late");
    std::fs::create_dir_all(&dst).unwrap();
    for f in ["job.json", "changes.json", "outcome.json"] {
        std::fs::copy(src.join(f), dst.join(f)).unwrap();
    }
    let recorded: Value =
        serde_json::from_slice(&std::fs::read(dst.join("outcome.json")).unwrap()).unwrap();
    assert_eq!(recorded["outcome"]["deadline"], "missed", "{recorded}");
    drop(d);
    let mut cfg = setpoint::config::parse("").unwrap();
    cfg.state_dir = restarted.path().to_path_buf();
    let node = setpoint::node::Node::new(cfg).unwrap();
    node.start();
    let again = node.job("late").unwrap().view(None);
    node.shutdown();
    assert_eq!(again.state, setpoint::node::JobState::Cancelled);
    assert_eq!(
        again.stop_reason,
        Some(setpoint::node::JobStopReason::DeadlinePassed)
    );
    assert!(again.outcome.deadline_missed(), "{:?}", again.outcome);
}

#[test]
fn a_job_that_ends_below_its_target_says_the_target_was_missed() {
    let d = Daemon::start("");
    // Noisy clusters hold "short" well below its target; clean ones take "easy" past its.
    for (name, target, noise) in [("short", 0.999, 4), ("easy", 0.5, 1)] {
        let (s, v) = d.send(
            "POST",
            "/v1/jobs",
            &json!({
                "name": name,
                "data": format!("synthetic:blobs:size=600,classes=3,features=8,noise={noise}"),
                "layers": [8, 16, 3],
                "epochs": 20,
                "target_accuracy": target,
                "class": "best-effort",
            }),
        );
        assert_eq!(s, 201, "{v}");
    }
    let v = wait_for(&d, "short", "it to complete", |v| v["state"] == "completed");
    assert_eq!(v["stop_reason"], "epoch_limit", "{v}");
    assert!(v["val_accuracy"].as_f64().unwrap() < 0.999);
    assert_eq!(v["outcome"]["target"], "missed", "{v}");
    assert!(v["outcome"]["deadline"].is_null());
    let row = tenant(&d, "short");
    assert_eq!(row["outcome"]["target"], "missed", "{row}");
    assert!(
        row["measured"].as_str().unwrap().ends_with("target missed"),
        "{row}"
    );
    let v = wait_for(&d, "easy", "it to complete", |v| v["state"] == "completed");
    assert_eq!(v["stop_reason"], "target_reached", "{v}");
    assert_eq!(v["outcome"]["target"], "reached", "{v}");
    assert!(
        tenant(&d, "easy")["measured"]
            .as_str()
            .unwrap()
            .ends_with("target reached")
    );
}

/// Checks a running job's estimated finish against the rate it reports: the steps it has
/// left for the epochs it is expected to need, over its smoothed rate.
fn check_estimate(v: &Value, steps_per_epoch: u64) {
    let asked = SystemTime::now();
    let rate = v["smoothed_steps_per_s"].as_f64().unwrap();
    let remaining = v["remaining_steps"].as_u64().unwrap();
    assert!(rate > 0.0, "{v}");
    // The steps left are those of the expected epochs (the limit without a target), counted
    // at the controller's last tick, a few steps before this view.
    let expected = (v["expected_epochs"].as_f64().unwrap() * steps_per_epoch as f64).ceil();
    let counted = remaining as f64 + v["steps"].as_f64().unwrap();
    assert!(
        counted >= expected - 0.5 && counted <= expected + rate * 5.0 + 5.0,
        "{remaining} steps left at step {} of {expected}: {v}",
        v["steps"]
    );
    let finish = time(&v["estimated_finish"]);
    let in_s = finish
        .duration_since(asked)
        .map_or_else(|e| -e.duration().as_secs_f64(), |d| d.as_secs_f64());
    let want = remaining as f64 / rate;
    assert!(
        (in_s - want).abs() <= 2.0,
        "finish in {in_s:.1} s, {remaining} steps at {rate:.1} steps/s is {want:.1} s: {v}"
    );
}

#[test]
fn the_estimated_finish_is_the_steps_left_over_the_jobs_own_rate() {
    let d = Daemon::start("");
    // 3,200 training rows in batches of 64: 50 steps an epoch. One job best-effort without a
    // target (the leftover share), one a deadline job with a target it may not reach.
    for (name, extra) in [
        ("plain", json!({"class": "best-effort", "epochs": 100000})),
        (
            "aimed",
            json!({"deadline": "1h", "epochs": 2000, "target_accuracy": 0.999}),
        ),
    ] {
        let mut spec = json!({
            "name": name,
            "data": "synthetic:blobs:size=4000,noise=1.5",
            "layers": [64, 64, 10],
        });
        spec.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let (s, v) = d.send("POST", "/v1/jobs", &spec);
        assert_eq!(s, 201, "{v}");
    }
    for name in ["plain", "aimed"] {
        let v = wait_for(&d, name, "a smoothed rate and a learning curve", |v| {
            v["smoothed_steps_per_s"].is_number()
                && v["expected_epochs"].is_number()
                && v["epochs_done"].as_u64() >= Some(3)
        });
        check_estimate(&v, 50);
    }
    let plain = job(&d, "plain");
    assert_eq!(plain["expected_epochs"], 100000.0, "no target: the limit");
    check_estimate(&plain, 50);
    // Seconds later, still its own rate's estimate.
    std::thread::sleep(Duration::from_secs(2));
    check_estimate(&job(&d, "aimed"), 50);
}

#[test]
fn a_job_whose_steps_use_one_core_is_refused_a_deadline_that_needs_more_and_says_so() {
    // 32-128-10 at batch 32: every product is too small to split, so a step runs on one of
    // the two cores whatever the job's share. 2,000 epochs by a deadline in 3 s would need
    // more than the whole device; it is refused naming what the job can use, with the
    // earliest deadline reckoned at that half.
    let d = Daemon::start("[device]\ncpu_threads = 2\n");
    let narrow = |name: &str, deadline: &str| {
        json!({
            "name": name,
            "data": "synthetic:blobs:size=16000,features=32",
            "layers": [32, 128, 10],
            "batch_size": 32,
            "epochs": 2000,
            "deadline": deadline,
        })
    };
    let asked = SystemTime::now();
    let msg = expect_error(
        d.send("POST", "/v1/jobs", &narrow("tight", "3s")),
        409,
        "but its steps use at most 1 of the device's 2 cores (each step is too small to \
         split), so it can use at most 0.50",
    );
    let earliest = msg
        .split("the earliest deadline it can meet is ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_else(|| panic!("no earliest deadline in {msg:?}"));
    assert!(
        setpoint::config::parse_rfc3339(earliest).unwrap() > asked + Duration::from_secs(3),
        "{msg}"
    );
    // With time to spare it is admitted, and its view says how much of the device it can use.
    let (s, v) = d.send("POST", "/v1/jobs", &narrow("loose", "1h"));
    assert_eq!(s, 201, "{v}");
    let v = wait_for(&d, "loose", "its usable share", |v| {
        v["usable_share"].is_number()
    });
    assert_eq!(v["usable_share"], 0.5, "{v}");
    // A job whose products are split over the pool can use the whole device.
    let (s, v) = d.send(
        "POST",
        "/v1/jobs",
        &json!({
            "name": "wide",
            "data": "synthetic:blobs:size=4000",
            "layers": [64, 512, 512, 10],
            "batch_size": 128,
            "epochs": 1000,
        }),
    );
    assert_eq!(s, 201, "{v}");
    let v = wait_for(&d, "wide", "its usable share", |v| {
        v["usable_share"].is_number()
    });
    assert_eq!(v["usable_share"], 1.0, "{v}");
}

/// The share of the device a refusal says the job needs (`job NAME needs 0.73 of the
/// device ...`).
fn needs(msg: &str) -> f64 {
    msg.split(" needs ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no need in {msg:?}"))
}

#[test]
fn two_deadline_jobs_submitted_at_once_are_weighed_one_after_the_other() {
    let d = Daemon::start("");
    let spec = |name: &str, deadline: String| {
        json!({
            "name": name,
            "data": "synthetic:blobs:size=4000",
            "layers": [64, 256, 256, 10],
            "epochs": 240,
            "deadline": deadline,
        })
    };
    // Two jobs submitted at once, as `spec` makes them, each with the deadline `deadline`:
    // the daemon's two answers. Their data loads and steps are measured side by side.
    let both = |prefix: &str, deadline: &str| -> Vec<(u16, Value)> {
        std::thread::scope(|s| {
            let sent: Vec<_> = ["a", "b"]
                .map(|n| {
                    let body = spec(&format!("{prefix}{n}"), deadline.to_string());
                    let d = &d;
                    s.spawn(move || d.send("POST", "/v1/jobs", &body))
                })
                .into_iter()
                .collect();
            sent.into_iter().map(|h| h.join().unwrap()).collect()
        })
    };
    // The job's work, in seconds of the whole device, from what two probes submitted at once
    // need by a deadline in 1 s (0.9 s after the margin): measured side by side, as the two
    // jobs below are (on a busy machine a step measured beside another came to at least
    // 1.3-1.5 times one measured alone). Then the first whole second from 4 s at which a job
    // needs 0.72 of the device or less (more than 0.5): either of two such jobs fits in the
    // 0.95 there is, not both, with room for the measurements' spread either way.
    let work_s = both("probe-", "1s")
        .iter()
        .map(|(status, body)| {
            assert_eq!(*status, 409, "{body}");
            needs(body["error"].as_str().unwrap()) * 0.9
        })
        .fold(0.0, f64::max);
    let margin = |t: f64| setpoint::control::ControlConfig::default().deadline_margin_s(t);
    let need_by = |t: f64| work_s / (t - margin(t));
    let deadline_s = (4..).map(f64::from).find(|&t| need_by(t) <= 0.72).unwrap();
    let need = need_by(deadline_s);
    assert!(
        need > 0.5,
        "{work_s} s of work: {need} of the device in {deadline_s} s"
    );
    // Both at once: they reach admission within moments of each other, before the
    // controller has seen either.
    let answers = both("", &format!("{deadline_s}s"));
    let statuses: Vec<u16> = answers.iter().map(|a| a.0).collect();
    assert!(
        statuses == [201, 409] || statuses == [409, 201],
        "one admitted, one refused: {answers:?}"
    );
    let refused = answers.iter().find(|a| a.0 == 409).unwrap();
    let msg = refused.1["error"].as_str().unwrap();
    // Refused for the share the other holds (all of the device where both steps were
    // measured slower side by side, on a busy machine), with a deadline it could meet instead.
    let held: f64 = msg
        .split("deadline jobs ")
        .nth(1)
        .and_then(|rest| rest.split([',', ')']).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no deadline jobs' share in {msg:?}"));
    assert!(
        held > 0.0 && msg.contains("the earliest deadline it can meet is "),
        "{msg}"
    );
    for n in ["a", "b"] {
        d.send("DELETE", &format!("/v1/jobs/{n}"), &Value::Null);
    }
}
