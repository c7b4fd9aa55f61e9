//! `setpoint submit` and `setpoint jobs` (list, show, update, cancel, rm, serve, wait): the
//! daemon's training jobs through its `/v1/jobs` API.

use super::input_error;
use super::output::{client_error, connect, print_answer, print_json, print_text};
use crate::cli::{JobsArgs, JobsCommand, JobsServeArgs, JobsUpdateArgs, OptimizerArg, SubmitArgs};
use crate::client::dto::{Batching, JobList, JobPatch, ServeJob, Slo, SubmitJob};
use crate::client::{Client, path_segment, table};
use crate::config::OptimizerKind;
use crate::model::parse_layers;
use crate::node::{JobView, ServiceView};

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
        JobsCommand::Rm { id } => {
            let path = format!("{}?action=remove", job_path(&id));
            let v = client.delete(&path).map_err(client_error)?;
            if json {
                return print_json(&v);
            }
            print_text(&format!(
                "removed job {id}: its record and checkpoints are deleted and its name is free\n"
            ))
        }
        JobsCommand::Serve(a) => jobs_serve(&client, a, json),
        JobsCommand::Wait(a) => super::wait::run(&client, a, json),
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
