//! What the client commands share: connecting to the daemon, its errors as exit codes, and
//! writing to standard output.

use std::io::Write;

use anyhow::anyhow;
use serde::de::DeserializeOwned;

use super::input_error;
use crate::cli::{ClientArgs, TimesArg};
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

/// A client for the daemon at `--url`; text output from here on writes times in the zone
/// `--times` asks for (local on a terminal, UTC otherwise).
pub(super) fn connect(args: &ClientArgs) -> anyhow::Result<Client> {
    use crate::util::localtime::{Zone, set_zone};
    use std::io::IsTerminal;
    set_zone(match args.times {
        Some(TimesArg::Utc) => Zone::Utc,
        Some(TimesArg::Local) => Zone::Local,
        None if std::io::stdout().is_terminal() => Zone::Local,
        None => Zone::Utc,
    });
    Client::new(&args.url).map_err(client_error)
}

/// `v` on one line of standard output.
pub(super) fn print_json(v: &serde_json::Value) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{v}")?;
    Ok(())
}

/// The daemon's answer to `method path`: with `--json` (`json`), as it came; else read as
/// `T` (an answer that does not fit is an error naming the request) and written by `text`.
pub(super) fn print_answer<T: DeserializeOwned>(
    client: &Client,
    method: &'static str,
    path: &str,
    answer: serde_json::Value,
    json: bool,
    text: impl FnOnce(&T) -> String,
) -> anyhow::Result<()> {
    if json {
        return print_json(&answer);
    }
    let typed: T = client
        .read_answer(method, path, answer)
        .map_err(client_error)?;
    print_text(&text(&typed))
}

/// `text` on standard output as it is.
pub(super) fn print_text(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    Ok(())
}
