//! `setpoint status`: the daemon's services, jobs and devices at a glance.

use super::output::{client_error, connect, print_json, print_text};
use crate::cli::StatusArgs;
use crate::client::table;

/// Runs `setpoint status`.
pub fn run(args: StatusArgs) -> anyhow::Result<()> {
    let client = connect(&args.client)?;
    let v = client.get("/v1/status").map_err(client_error)?;
    if args.client.json {
        return print_json(&v);
    }
    print_text(&table::status_text(&v))
}
