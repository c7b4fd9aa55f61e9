//! `setpoint kernels`: `ptx` (write or compare the PTX the binary embeds) and `check`
//! (compile, and with ptxas assemble, every kernel module; `check.rs` checks, `render.rs`
//! reports).

mod check;
mod ptx;
mod render;

use crate::cli::{KernelsArgs, KernelsCommand};

/// Runs `setpoint kernels` and its subcommands.
pub fn run(args: KernelsArgs) -> anyhow::Result<()> {
    match args.command {
        KernelsCommand::Check(a) => check::run(a),
        KernelsCommand::Ptx(a) => ptx::run(a),
    }
}
