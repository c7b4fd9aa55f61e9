//! `setpoint status`: the daemon's services, jobs and devices at a glance.

use super::output::{client_error, connect, print_answer};
use crate::cli::StatusArgs;
use crate::client::table;
use crate::node::StatusView;

/// Runs `setpoint status`.
pub fn run(args: StatusArgs) -> anyhow::Result<()> {
    let client = connect(&args.client)?;
    let path = "/v1/status";
    let v = client.get(path).map_err(client_error)?;
    print_answer(
        &client,
        "GET",
        path,
        v,
        args.client.json,
        |s: &StatusView| table::status_text(s),
    )
}
