//! `setpoint submit` and `setpoint jobs` (list, show, update, cancel, rm, logs, serve, wait): the
//! daemon's training jobs through its `/v1/jobs` API.

use super::input_error;
use super::output::{client_error, connect, print_answer, print_json, print_text};
use std::time::SystemTime;

use crate::cli::{
    JobsArgs, JobsCommand, JobsRmArgs, JobsServeArgs, JobsUpdateArgs, OptimizerArg, SubmitArgs,
};
use crate::client::dto::{Batching, JobList, JobPatch, ServeJob, Slo, SubmitJob};
use crate::client::{Client, path_segment, table};
use crate::config::{OptimizerKind, format_rfc3339};
use crate::model::parse_layers;
use crate::node::{JobView, PurgeReport, ServiceView};

/// Runs `setpoint submit`.
pub fn submit(args: SubmitArgs) -> anyhow::Result<()> {
    let client = connect(&args.client)?;
    let body = SubmitJob {
        layers: parse_layers(&args.layers)?,
        name: args.name,
        data: args.data,
        optimizer: args.optimizer.map(|o| match o {
            OptimizerArg::Adam => OptimizerKind::Adam,
            OptimizerArg::Sgd => OptimizerKind::Sgd,
        }),
        lr: args.lr,
        batch_size: args.batch_size,
        epochs: args.epochs,
        target_accuracy: args.target_accuracy,
        deadline: args.deadline,
        best_effort: args.best_effort,
        seed: args.seed,
        precision: args.precision.map(Into::into),
    };
    let path = "/v1/jobs";
    let job = client.post(path, &body).map_err(client_error)?;
    print_answer(
        &client,
        "POST",
        path,
        job,
        args.client.json,
        |j: &JobView| format!("submitted job {}\n{}", j.name, table::job_details(j)),
    )
}

/// Runs `setpoint jobs` and its subcommands.
pub fn run(args: JobsArgs) -> anyhow::Result<()> {
    let client = connect(&args.client)?;
    let json = args.client.json;
    let job_path = |id: &str| format!("/v1/jobs/{}", path_segment(id));
    match args.command.unwrap_or(JobsCommand::List) {
        JobsCommand::List => {
            let path = "/v1/jobs";
            let v = client.get(path).map_err(client_error)?;
            print_answer(&client, "GET", path, v, json, |l: &JobList| {
                table::jobs_table(&l.jobs)
            })
        }
        JobsCommand::Show { id } => {
            let path = job_path(&id);
            let v = client.get(&path).map_err(client_error)?;
            print_answer(&client, "GET", &path, v, json, table::job_details)
        }
        JobsCommand::Update(u) => jobs_update(&client, u, json),
        JobsCommand::Cancel { id } => {
            let path = format!("{}?action=cancel", job_path(&id));
            let v = client.delete(&path).map_err(client_error)?;
            print_answer(&client, "DELETE", &path, v, json, |j: &JobView| {
                // The answer is the view as the cancel found it: still running until its
                // current step ends.
                let what = if j.state.is_terminal() {
                    "cancelled job"
                } else {
                    "cancelling job"
                };
                let state = if j.state.is_terminal() {
                    "cancelled"
                } else {
                    "cancelling"
                };
                let details: String = table::job_details(j)
                    .lines()
                    .map(|l| match l.strip_prefix("state ") {
                        Some(rest) => format!(
                            "state {}{state}\n",
                            " ".repeat(rest.len() - rest.trim_start().len())
                        ),
                        None => format!("{l}\n"),
                    })
                    .collect();
                format!(
                    "{what} {id}: it stops after its current step and keeps its last \
                     checkpoint\n{details}"
                )
            })
        }
        JobsCommand::Rm(JobsRmArgs {
            id: Some(id),
            ended_before: None,
        }) => {
            let path = format!("{}?action=remove", job_path(&id));
            let v = client.delete(&path).map_err(client_error)?;
            if json {
                return print_json(&v);
            }
            print_text(&format!(
                "removed job {id}: its record, checkpoints and log are deleted and its name is \
                 free\n"
            ))
        }
        JobsCommand::Rm(a) => purge(&client, a, json),
        JobsCommand::Logs(a) => super::logs::run(&client, a, json),
        JobsCommand::Serve(a) => jobs_serve(&client, a, json),
        JobsCommand::Wait(a) => super::wait::run(&client, a, json),
    }
}

/// `setpoint jobs rm --ended-before T`: removes the jobs that ended before `T`.
fn purge(client: &Client, a: JobsRmArgs, json: bool) -> anyhow::Result<()> {
    // clap asks for exactly one of ID and --ended-before.
    let text = a.ended_before.unwrap_or_default();
    let before = ended_before(&text, SystemTime::now())?;
    let path = format!(
        "/v1/jobs?ended_before={}",
        path_segment(&format_rfc3339(before))
    );
    let v = client.delete(&path).map_err(client_error)?;
    print_answer(client, "DELETE", &path, v, json, |r: &PurgeReport| {
        let mut out = match r.removed.len() {
            0 => format!(
                "no job ended before {}\n",
                table::time(Some(&r.ended_before))
            ),
            n => format!(
                "removed {n} job{} that ended before {}: {}\n",
                if n == 1 { "" } else { "s" },
                table::time(Some(&r.ended_before)),
                r.removed.join(", ")
            ),
        };
        for k in &r.kept {
            out.push_str(&format!("kept job {}: {}\n", k.job, k.reason));
        }
        out
    })
}

/// `--ended-before`: an RFC 3339 time, or an age before `now` (`7d`, `12h`, `0s`).
fn ended_before(text: &str, now: SystemTime) -> anyhow::Result<SystemTime> {
    let text = text.trim();
    if let Ok(t) = crate::config::parse_rfc3339(text) {
        return Ok(t);
    }
    match humantime::parse_duration(text) {
        Ok(age) => Ok(now.checked_sub(age).unwrap_or(SystemTime::UNIX_EPOCH)),
        Err(e) => Err(input_error(format!(
            "--ended-before: {text:?} is neither an RFC 3339 time nor an age ({e}); give one \
             such as 2026-12-01T00:00:00Z, 7d or 12h"
        ))),
    }
}

/// `setpoint jobs update`: changes a job's deadline, target or epochs.
fn jobs_update(client: &Client, u: JobsUpdateArgs, json: bool) -> anyhow::Result<()> {
    // clap refuses `--deadline` with `--no-deadline`, and `--target-accuracy` with
    // `--no-target`.
    let patch = JobPatch {
        deadline: if u.no_deadline {
            Some(None)
        } else {
            u.deadline.map(Some)
        },
        target_accuracy: if u.no_target {
            Some(None)
        } else {
            u.target_accuracy.map(Some)
        },
        epochs: u.epochs,
    };
    if patch.is_empty() {
        return Err(input_error(
            "nothing to change: give --deadline, --no-deadline, --target-accuracy, \
             --no-target or --epochs",
        ));
    }
    let path = format!("/v1/jobs/{}", path_segment(&u.id));
    let v = client.patch(&path, &patch).map_err(client_error)?;
    print_answer(client, "PATCH", &path, v, json, |j: &JobView| {
        format!("updated job {}\n{}", u.id, table::job_details(j))
    })
}

/// `setpoint jobs serve`: serves a job's model as an inference service.
fn jobs_serve(client: &Client, a: JobsServeArgs, json: bool) -> anyhow::Result<()> {
    let body = ServeJob {
        name: a.name,
        slo: Slo {
            p99_ms: a.slo_p99_ms,
        },
        batching: a.max_batch_size.map(|b| Batching { max_batch_size: b }),
        precision: a.precision.map(Into::into),
        replicas: a.replicas,
    };
    let path = format!("/v1/jobs/{}/serve", path_segment(&a.id));
    let v = client.post(&path, &body).map_err(client_error)?;
    print_answer(client, "POST", &path, v, json, |s: &ServiceView| {
        format!(
            "serving job {} as model {}\n{}",
            a.id,
            s.name,
            table::service_details(s)
        )
    })
}
