//! `setpoint jobs logs ID [--follow]`: a job's events, then, with `--follow`, those that
//! come, until the job ends (like `kubectl logs -f` or `ray job logs --follow`).

use std::io::Write;
use std::time::Duration;

use super::output::client_error;
use crate::cli::JobsLogsArgs;
use crate::client::events::event_line;
use crate::client::{Client, ClientError, path_segment};
use crate::node::{JOB_EVENT_PAGE, JobEvent, JobEventPage};

/// How often a follower asks for new events.
const FOLLOW_EVERY: Duration = Duration::from_millis(500);

/// How long a follower keeps trying a daemon it lost (a restart takes seconds).
const RECONNECT_FOR: Duration = Duration::from_secs(120);

/// Prints the job's events (the last `--tail` of them), one a line (JSON objects with
/// `--json`); with `--follow`, goes on until the job has ended and its last event is out.
pub(super) fn run(client: &Client, a: JobsLogsArgs, json: bool) -> anyhow::Result<()> {
    let base = format!("/v1/jobs/{}/events", path_segment(&a.id));
    let mut after = 0;
    let mut backlog = Vec::new();
    let ended = loop {
        let page = fetch(client, &base, after)?;
        after = page.next - 1;
        let full = page.events.len() >= JOB_EVENT_PAGE;
        backlog.extend(page.events);
        if !full {
            break page.ended;
        }
    };
    let skip = a.tail.map_or(0, |n| backlog.len().saturating_sub(n));
    print(&backlog[skip..], json)?;
    if !a.follow || ended {
        return Ok(());
    }
    let mut lost_since = None;
    loop {
        std::thread::sleep(FOLLOW_EVERY);
        let page = match fetch(client, &base, after) {
            Ok(p) => p,
            Err(e) if is_unreachable(&e) => {
                // Said once when the daemon is lost; an error once it has been gone too long.
                let since = *lost_since.get_or_insert_with(|| {
                    eprintln!("{e:#}; trying again for {}s", RECONNECT_FOR.as_secs());
                    std::time::Instant::now()
                });
                if since.elapsed() > RECONNECT_FOR {
                    return Err(e);
                }
                continue;
            }
            Err(e) => return Err(e),
        };
        lost_since = None;
        after = page.next - 1;
        print(&page.events, json)?;
        if page.ended && page.events.len() < JOB_EVENT_PAGE {
            return Ok(());
        }
    }
}

/// The events after `after`.
fn fetch(client: &Client, base: &str, after: u64) -> anyhow::Result<JobEventPage> {
    let path = format!("{base}?after={after}");
    let answer = client.get(&path).map_err(client_error)?;
    client
        .read_answer("GET", &path, answer)
        .map_err(client_error)
}

/// True for an error that says the daemon could not be reached (it may be restarting).
fn is_unreachable(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref::<ClientError>(),
        Some(ClientError::Unreachable { .. } | ClientError::Transport { .. })
    )
}

/// `events` on standard output, flushed so that a follower sees each as it comes.
fn print(events: &[JobEvent], json: bool) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    for e in events {
        if json {
            writeln!(out, "{}", serde_json::to_string(e)?)?;
        } else {
            writeln!(out, "{}", event_line(e))?;
        }
    }
    out.flush()?;
    Ok(())
}
