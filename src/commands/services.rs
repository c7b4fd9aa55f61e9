//! `setpoint services` (list, show, remove): the daemon's inference services through its
//! `/v1/services` API.

use serde::Serialize;

use super::output::{client_error, connect, print_answer, print_text};
use crate::cli::{ServicesArgs, ServicesCommand};
use crate::client::dto::ServiceList;
use crate::client::{path_segment, table};

/// What `services remove --json` prints: the daemon answers 204 with no body.
#[derive(Debug, Serialize)]
struct Removed<'a> {
    /// The service removed.
    name: &'a str,
    /// Always true: a refusal is an error instead.
    removed: bool,
}

/// Runs `setpoint services` and its subcommands.
pub fn run(args: ServicesArgs) -> anyhow::Result<()> {
    let client = connect(&args.client)?;
    let json = args.client.json;
    let service_path = |name: &str| format!("/v1/services/{}", path_segment(name));
    match args.command.unwrap_or(ServicesCommand::List) {
        ServicesCommand::List => {
            let path = "/v1/services";
            let v = client.get(path).map_err(client_error)?;
            print_answer(&client, "GET", path, v, json, |l: &ServiceList| {
                table::services_table(&l.services)
            })
        }
        ServicesCommand::Show { name } => {
            let path = service_path(&name);
            let v = client.get(&path).map_err(client_error)?;
            print_answer(&client, "GET", &path, v, json, table::service_details)
        }
        ServicesCommand::Remove { name } => {
            let path = service_path(&name);
            client.delete(&path).map_err(client_error)?;
            if json {
                let removed = Removed {
                    name: &name,
                    removed: true,
                };
                return print_text(&format!("{}\n", serde_json::to_string(&removed)?));
            }
            print_text(&format!(
                "removed service {name}: new requests to /v2/models/{name} get 404, requests \
                 in flight are answered\n"
            ))
        }
    }
}
