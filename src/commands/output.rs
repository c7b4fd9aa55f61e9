//! What the client commands share: connecting to the daemon, its errors as exit codes, and
//! writing to standard output.

use std::io::Write;

use anyhow::anyhow;

use super::input_error;
use crate::cli::ClientArgs;
use crate::client::{Client, ClientError};

/// A daemon's refusal (4xx) or unusable input is the user's to fix (exit 2); anything else,
/// an unreachable daemon or a 5xx included, is a failure while running (exit 1).
pub(super) fn client_error(e: ClientError) -> anyhow::Error {
    if e.is_input() {
        input_error(e.to_string())
    } else {
        anyhow!(e)
    }
}

/// A client for the daemon at `--url`.
pub(super) fn connect(args: &ClientArgs) -> anyhow::Result<Client> {
    Client::new(&args.url).map_err(client_error)
}

/// `v` on one line of standard output.
pub(super) fn print_json(v: &serde_json::Value) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{v}")?;
    Ok(())
}

/// `text` on standard output as it is.
pub(super) fn print_text(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    Ok(())
}
