//! `setpoint check-config`: validates a node configuration file and prints what was
//! understood (or the errors, as text or JSON).

use std::io::Write;

use anyhow::Context;

use super::input_error;
use crate::cli::CheckConfigArgs;

/// Runs `setpoint check-config`.
pub fn run(args: CheckConfigArgs) -> anyhow::Result<()> {
    let check = crate::config::check_file(args.file.as_deref());
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(
            out,
            "{}",
            serde_json::to_string(&check).context("cannot render the check as JSON")?
        )?;
        if !check.valid {
            let n = check.errors.len();
            return Err(input_error(format!(
                "{}: {n} error{} (listed in the JSON)",
                check.file,
                if n == 1 { "" } else { "s" }
            )));
        }
        return Ok(());
    }
    for w in &check.warnings {
        eprintln!("warning: {w}");
    }
    match check.config {
        Some(cfg) => {
            writeln!(out, "{}: valid", check.file)?;
            write!(out, "{}", cfg.summary())?;
            Ok(())
        }
        None => Err(crate::config::ConfigError::Invalid {
            path: args.file.clone(),
            errors: check.errors,
        }
        .into()),
    }
}
