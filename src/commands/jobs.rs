//! `setpoint submit` and `setpoint jobs` (list, show, update, cancel, rm, serve): the
//! daemon's training jobs through its `/v1/jobs` API.

use serde_json::json;

use super::input_error;
use super::output::{client_error, connect, print_json, print_text};
use crate::cli::{JobsArgs, JobsCommand, JobsServeArgs, JobsUpdateArgs, OptimizerArg, SubmitArgs};
use crate::client::{Client, path_segment, table};
use crate::model::parse_layers;

/// Runs `setpoint submit`.
pub fn submit(args: SubmitArgs) -> anyhow::Result<()> {
    let client = connect(&args.client)?;
    let layers = parse_layers(&args.layers)?;
    let mut body = serde_json::Map::new();
    body.insert("name".into(), json!(args.name));
    body.insert("data".into(), json!(args.data));
    body.insert("layers".into(), json!(layers));
    if let Some(o) = args.optimizer {
        let name = match o {
            OptimizerArg::Adam => "adam",
            OptimizerArg::Sgd => "sgd",
        };
        body.insert("optimizer".into(), json!(name));
    }
    if let Some(lr) = args.lr {
        body.insert("lr".into(), json!(lr));
    }
    if let Some(b) = args.batch_size {
        body.insert("batch_size".into(), json!(b));
    }
    if let Some(e) = args.epochs {
        body.insert("epochs".into(), json!(e));
    }
    if let Some(t) = args.target_accuracy {
        body.insert("target_accuracy".into(), json!(t));
    }
    if let Some(d) = &args.deadline {
        body.insert("deadline".into(), json!(d));
    }
    if args.best_effort {
        body.insert("best_effort".into(), json!(true));
    }
    if let Some(s) = args.seed {
        body.insert("seed".into(), json!(s));
    }
    let job = client
        .post("/v1/jobs", &serde_json::Value::Object(body))
        .map_err(client_error)?;
    if args.client.json {
        return print_json(&job);
    }
    print_text(&format!(
        "submitted job {}\n{}",
        table::cell(&job["name"]),
        table::job_details(&job)
    ))
}

/// Runs `setpoint jobs` and its subcommands.
pub fn run(args: JobsArgs) -> anyhow::Result<()> {
    let client = connect(&args.client)?;
    let json = args.client.json;
    let job_path = |id: &str| format!("/v1/jobs/{}", path_segment(id));
    match args.command.unwrap_or(JobsCommand::List) {
        JobsCommand::List => {
            let v = client.get("/v1/jobs").map_err(client_error)?;
            if json {
                return print_json(&v);
            }
            let list = v["jobs"].as_array().cloned().unwrap_or_default();
            print_text(&table::jobs_table(&list))
        }
        JobsCommand::Show { id } => {
            let v = client.get(&job_path(&id)).map_err(client_error)?;
            if json {
                return print_json(&v);
            }
            print_text(&table::job_details(&v))
        }
        JobsCommand::Update(u) => jobs_update(&client, u, json),
        JobsCommand::Cancel { id } => {
            let path = format!("{}?action=cancel", job_path(&id));
            let v = client.delete(&path).map_err(client_error)?;
            if json {
                return print_json(&v);
            }
            print_text(&format!(
                "cancelled job {id}: it stops after its current step and keeps its last \
                 checkpoint\n{}",
                table::job_details(&v)
            ))
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
    }
}

/// `setpoint jobs update`: changes a job's deadline, target or epochs.
fn jobs_update(client: &Client, u: JobsUpdateArgs, json: bool) -> anyhow::Result<()> {
    let mut patch = serde_json::Map::new();
    if let Some(d) = &u.deadline {
        patch.insert("deadline".into(), json!(d));
    }
    if u.no_deadline {
        patch.insert("deadline".into(), serde_json::Value::Null);
    }
    if let Some(t) = u.target_accuracy {
        patch.insert("target_accuracy".into(), json!(t));
    }
    if u.no_target {
        patch.insert("target_accuracy".into(), serde_json::Value::Null);
    }
    if let Some(e) = u.epochs {
        patch.insert("epochs".into(), json!(e));
    }
    if patch.is_empty() {
        return Err(input_error(
            "nothing to change: give --deadline, --no-deadline, --target-accuracy, \
             --no-target or --epochs",
        ));
    }
    let v = client
        .patch(
            &format!("/v1/jobs/{}", path_segment(&u.id)),
            &serde_json::Value::Object(patch),
        )
        .map_err(client_error)?;
    if json {
        return print_json(&v);
    }
    print_text(&format!("updated job {}\n{}", u.id, table::job_details(&v)))
}

/// `setpoint jobs serve`: serves a job's model as an inference service.
fn jobs_serve(client: &Client, a: JobsServeArgs, json: bool) -> anyhow::Result<()> {
    let mut body = serde_json::Map::new();
    if let Some(n) = &a.name {
        body.insert("name".into(), json!(n));
    }
    body.insert("slo".into(), json!({"p99_ms": a.slo_p99_ms}));
    if let Some(b) = a.max_batch_size {
        body.insert("batching".into(), json!({"max_batch_size": b}));
    }
    let v = client
        .post(
            &format!("/v1/jobs/{}/serve", path_segment(&a.id)),
            &serde_json::Value::Object(body),
        )
        .map_err(client_error)?;
    if json {
        return print_json(&v);
    }
    print_text(&format!(
        "serving job {} as model {}\n{}",
        a.id,
        table::cell(&v["name"]),
        table::service_details(&v)
    ))
}
