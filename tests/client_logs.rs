//! A job's log (`setpoint jobs logs`, `GET /v1/jobs/{id}/events`) against the real daemon:
//! followed to the end, after a restart, and as JSON; removing ended jobs by age
//! (`setpoint jobs rm --ended-before`, `DELETE /v1/jobs?ended_before=`); and times in the
//! local zone.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::support::child;
use child::{ChildDaemon, free_port, poll, stderr_of, stdout_of};

/// The daemon on state dir `dir/state`, listening on `port`; waits until it is ready.
fn start(dir: &Path, port: u16) -> ChildDaemon {
    let config = format!(
        "listen = \"127.0.0.1:{port}\"\nstate_dir = \"{}\"\n",
        dir.join("state").display()
    );
    let d = ChildDaemon::start(&config, port, dir, None);
    poll(Duration::from_secs(30), "the daemon to be ready", || {
        (d.get_json("/v2/health/ready").0 == 200).then_some(())
    });
    d
}

/// A small job that reaches its target in a few epochs.
const QUICK: &[&str] = &[
    "--data",
    "synthetic:blobs:size=500,classes=3,features=8",
    "--layers",
    "8,16,3",
    "--target-accuracy",
    "0.9",
    "--epochs",
    "200",
    "--deadline",
    "10m",
];

/// A best-effort job that runs until it is cancelled.
const LONG: &[&str] = &[
    "--data",
    "synthetic:blobs:size=4000,features=32",
    "--layers",
    "32,256,10",
    "--epochs",
    "100000",
    "--best-effort",
];

/// The events of `name` as JSON objects, one a line.
fn events_json(d: &ChildDaemon, name: &str) -> Vec<Value> {
    d.cli_expect(0, &["jobs", "logs", name, "--json"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn a_followed_log_shows_every_epoch_and_how_the_job_ended() {
    let dir = tempfile::tempdir().unwrap();
    let d = start(dir.path(), free_port());
    d.submit("quick", QUICK);
    // Followed from the start, it ends by itself when the job has ended.
    let text = d.cli_expect(0, &["jobs", "logs", "quick", "--follow", "--times", "utc"]);
    let (_, job) = d.get_json("/v1/jobs/quick");
    assert_eq!(job["state"], "completed", "{job}");
    let words: Vec<&str> = text
        .lines()
        .map(|l| l.split_whitespace().nth(1).unwrap())
        // The controller may move the share by a step at any point.
        .filter(|w| *w != "share")
        .collect();
    let epochs = job["epochs_done"].as_u64().unwrap() as usize;
    let mut expected = vec!["submitted", "loading", "running"];
    expected.extend(std::iter::repeat_n("epoch", epochs));
    expected.push("completed");
    assert_eq!(words, expected, "{text}");
    assert!(
        text.lines()
            .next()
            .unwrap()
            .contains("submitted   on cpu at share")
            && text.contains("accuracy >= 0.9 by "),
        "{text}"
    );
    // The last epoch's line carries the accuracy the job reports.
    let last_epoch = text.lines().rev().find(|l| l.contains("  epoch ")).unwrap();
    let acc = format!("accuracy {:.4}", job["val_accuracy"].as_f64().unwrap());
    assert!(
        last_epoch.contains(&format!("{epochs}/200")),
        "{last_epoch}"
    );
    assert!(last_epoch.contains(&acc), "{last_epoch} vs {acc}");
    assert!(
        text.trim_end()
            .ends_with("completed   deadline met, target reached"),
        "{text}"
    );
    // As JSON: numbered from 1 without gaps, the last one the end.
    let events = events_json(&d, "quick");
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=events.len() as u64).collect::<Vec<_>>());
    let last = events.last().unwrap();
    assert_eq!(
        (&last["event"], &last["state"]),
        (&"ended".into(), &"completed".into())
    );
    // --tail, and the API's `after`.
    let tail = d.cli_expect(0, &["jobs", "logs", "quick", "--tail", "2"]);
    assert_eq!(tail.lines().count(), 2, "{tail}");
    let (s, page) = d.get_json(&format!("/v1/jobs/quick/events?after={}", seqs.len() - 1));
    assert_eq!(s, 200, "{page}");
    assert_eq!(page["events"].as_array().unwrap().len(), 1, "{page}");
    assert_eq!(
        (&page["ended"], &page["next"]),
        (&true.into(), &(seqs.len() + 1).into())
    );
    // An unknown job, a bad number.
    let out = d.cli(&["jobs", "logs", "nope"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains("unknown job nope"),
        "{}",
        stderr_of(&out)
    );
    let (s, v) = d.get_json("/v1/jobs/quick/events?after=soon");
    assert_eq!(s, 400, "{v}");
}

#[test]
fn a_log_survives_a_restart_and_says_what_happened_around_it() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let d = start(dir.path(), port);
    d.submit("long", LONG);
    poll(Duration::from_secs(60), "an epoch", || {
        (d.get_json("/v1/jobs/long").1["epochs_done"].as_u64() >= Some(1)).then_some(())
    });
    d.cli_expect(0, &["jobs", "update", "long", "--epochs", "90000"]);
    let before = events_json(&d, "long");
    assert!(d.terminate(Duration::from_secs(60)).success());

    let d = start(dir.path(), port);
    poll(Duration::from_secs(60), "the job to run again", || {
        let events = events_json(&d, "long");
        events
            .iter()
            .skip(before.len())
            .any(|e| e["event"] == "running")
            .then_some(events)
    });
    let after = events_json(&d, "long");
    // What was logged before the restart is there, as it was.
    assert_eq!(after[..before.len()], before[..]);
    let kinds: Vec<&str> = after.iter().map(|e| e["event"].as_str().unwrap()).collect();
    let updated = after.iter().find(|e| e["event"] == "updated").unwrap();
    assert_eq!(updated["epochs"], 90000, "{updated}");
    let interrupted = kinds.iter().position(|k| *k == "interrupted").unwrap();
    assert_eq!(
        kinds[interrupted + 1..interrupted + 3],
        ["restored", "loading"],
        "{kinds:?}"
    );
    let resumed = after.iter().rposition(|e| e["event"] == "running").unwrap();
    assert!(
        after[resumed]["steps"].as_u64() > Some(0),
        "{:?}",
        after[resumed]
    );
    let text = d.cli_expect(0, &["jobs", "logs", "long", "--tail", "30"]);
    assert!(text.contains("resumed after epoch"), "{text}");
    assert!(
        text.contains("the job resumes from its last checkpoint"),
        "{text}"
    );
    // A cancel is logged when asked and when done (an epoch or a share move may come
    // between the two: the job stops after its current step).
    let before = events_json(&d, "long").len();
    d.cli_expect(0, &["jobs", "cancel", "long"]);
    d.cli_expect(1, &["jobs", "wait", "long"]);
    let text = d.cli_expect(0, &["jobs", "logs", "long"]);
    let after: Vec<&str> = text.lines().skip(before).collect();
    assert!(
        after
            .iter()
            .any(|l| l.contains("cancelling  asked to stop")),
        "{text}"
    );
    assert!(after.last().unwrap().ends_with("cancelled"), "{text}");
    assert_eq!(
        after.iter().filter(|l| l.contains("cancel")).count(),
        2,
        "{text}"
    );
}

#[test]
fn ended_jobs_are_removed_by_age_and_running_ones_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let d = start(dir.path(), free_port());
    d.submit("a", QUICK);
    d.submit("b", QUICK);
    d.submit("running", LONG);
    d.cli_expect(0, &["jobs", "wait", "a"]);
    d.cli_expect(0, &["jobs", "wait", "b"]);
    let jobs = dir.path().join("state/jobs");
    assert!(jobs.join("a/events.jsonl").exists());
    // Nothing ended that long ago.
    let text = d.cli_expect(0, &["jobs", "rm", "--ended-before", "2020-01-01T00:00:00Z"]);
    assert_eq!(text, "no job ended before 2020-01-01T00:00:00Z\n");
    // Every ended job: a and b go, with their files; the running job stays.
    let text = d.cli_expect(0, &["jobs", "rm", "--ended-before", "0s", "--times", "utc"]);
    assert!(
        text.starts_with("removed 2 jobs that ended before ") && text.ends_with(": a, b\n"),
        "{text}"
    );
    assert!(!jobs.join("a").exists() && !jobs.join("b").exists());
    let (_, list) = d.get_json("/v1/jobs");
    let names: Vec<&str> = list["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["running"]);
    // Bad input: what was wrong and what is accepted.
    let out = d.cli(&["jobs", "rm", "--ended-before", "last week"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out)
            .contains("--ended-before: \"last week\" is neither an RFC 3339 time nor an age"),
        "{}",
        stderr_of(&out)
    );
    let out = d.cli(&["jobs", "rm"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr_of(&out));
    assert!(
        stderr_of(&out).contains("--ended-before"),
        "{}",
        stderr_of(&out)
    );
    let (s, v) = d.send("DELETE", "/v1/jobs", None, None);
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("ended_before: missing"),
        "{v}"
    );
    let (s, v) = d.send("DELETE", "/v1/jobs?ended_before=yesterday", None, None);
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("give an RFC 3339 time"),
        "{v}"
    );
    d.cli_expect(0, &["jobs", "cancel", "running"]);
}

#[test]
fn times_are_written_in_the_zone_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let d = start(dir.path(), free_port());
    d.submit("t", QUICK);
    let (_, job) = d.get_json("/v1/jobs/t");
    let submitted = job["submitted_at"].as_str().unwrap();
    let to_second = &submitted[..19];
    // UTC: as the daemon writes it, to the second.
    let utc = d.cli_expect(0, &["jobs", "show", "t", "--times", "utc"]);
    assert!(utc.contains(&format!("{to_second}Z")), "{utc}");
    // A zone at +05:30 (a POSIX TZ string, which needs no zone files).
    let out = d.cli_env(
        &["jobs", "show", "t", "--times", "local"],
        &[("TZ", "IST-5:30")],
    );
    let local = stdout_of(&out);
    assert!(!local.contains(&format!("{to_second}Z")), "{local}");
    let line = local.lines().find(|l| l.starts_with("submitted")).unwrap();
    assert!(line.ends_with("+05:30"), "{local}");
    let out = d.cli_env(&["status", "--times", "local"], &[("TZ", "IST-5:30")]);
    let status = stdout_of(&out);
    let row = status
        .lines()
        .find(|l| l.contains("accuracy >= 0.9 by"))
        .unwrap();
    assert!(row.contains("+05:30"), "{status}");
    // A pipe gets UTC when nothing is asked for.
    let out = d.cli_env(&["jobs", "show", "t"], &[("TZ", "IST-5:30")]);
    assert!(
        stdout_of(&out).contains(&format!("{to_second}Z")),
        "{}",
        stdout_of(&out)
    );
    d.cli_expect(0, &["jobs", "wait", "t"]);
}
