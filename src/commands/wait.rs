//! `setpoint jobs wait`: polls a job's view until it ends and turns how it fared into the
//! exit code (like `kubectl wait` or `ray job wait`).

use std::time::{Duration, Instant};

use super::output::{client_error, print_json, print_text};
use super::{Exit, input_error};
use crate::cli::JobsWaitArgs;
use crate::client::{Client, path_segment};
use crate::node::{DeadlineOutcome, JobState, JobView, TargetOutcome};

/// The exit code of a job that ended without meeting its set points.
pub const EXIT_MISSED: u8 = 1;
/// The exit code of a wait that timed out before the job ended.
pub const EXIT_TIMEOUT: u8 = 3;

/// The longest pause between two polls.
const MAX_POLL: Duration = Duration::from_secs(2);

/// `setpoint jobs wait`: blocks until the job ends, then prints its final state and outcome
/// (its view with `--json`).
pub(super) fn run(client: &Client, a: JobsWaitArgs, json: bool) -> anyhow::Result<()> {
    let limit = a.timeout.as_deref().map(parse_timeout).transpose()?;
    let path = format!("/v1/jobs/{}", path_segment(&a.id));
    let start = Instant::now();
    let mut pause = Duration::from_millis(100);
    loop {
        let answer = client.get(&path).map_err(client_error)?;
        let job: JobView = client
            .read_answer("GET", &path, answer.clone())
            .map_err(client_error)?;
        if job.state.is_terminal() {
            if json {
                print_json(&answer)?;
            } else {
                print_text(&format!("{}\n", final_line(&job)))?;
            }
            return verdict(&job);
        }
        if let Some(limit) = limit {
            let waited = start.elapsed();
            if waited >= limit {
                return Err(anyhow::Error::new(Exit {
                    code: EXIT_TIMEOUT,
                    message: format!(
                        "job {} is still {} after waiting {}",
                        job.name,
                        crate::client::table::cell(&job.state),
                        humantime::format_duration(limit)
                    ),
                }));
            }
            pause = pause.min(limit - waited);
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(MAX_POLL);
    }
}

/// `--timeout` as a duration; the error says what is accepted.
fn parse_timeout(text: &str) -> anyhow::Result<Duration> {
    humantime::parse_duration(text.trim()).map_err(|e| {
        input_error(format!(
            "--timeout: invalid duration {text:?} ({e}); give one such as 30s, 10m or 1h 30m"
        ))
    })
}

/// `job NAME STATE: OUTCOME` (or the stop reason or error when nothing was judged).
pub(crate) fn final_line(j: &JobView) -> String {
    let state = crate::client::table::cell(&j.state);
    let detail = match (j.state, &j.error, j.outcome.describe()) {
        (JobState::Failed, Some(e), _) => Some(e.clone()),
        (_, _, Some(o)) => Some(o),
        _ => j.stop_reason.map(|r| r.as_str().replace('_', " ")),
    };
    match detail {
        Some(d) => format!("job {} {state}: {d}", j.name),
        None => format!("job {} {state}", j.name),
    }
}

/// Ok for a completed job that met what it was set (deadline met, target reached, where it
/// has them); an [`Exit`] with [`EXIT_MISSED`] otherwise.
fn verdict(j: &JobView) -> anyhow::Result<()> {
    let missed = j.outcome.deadline == Some(DeadlineOutcome::Missed)
        || j.outcome.target == Some(TargetOutcome::Missed);
    if j.state == JobState::Completed && !missed {
        return Ok(());
    }
    let why = if j.state == JobState::Completed {
        "missed its set points"
    } else {
        "did not complete"
    };
    Err(anyhow::Error::new(Exit {
        code: EXIT_MISSED,
        message: format!("job {} {why}", j.name),
    }))
}
