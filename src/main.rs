//! The `shalefs` binary: parse, dispatch, print the error chain once, pick the exit code.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = shalefs::cli::Cli::parse();
    match shalefs::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shalefs: {e:#}");
            ExitCode::FAILURE
        }
    }
}
