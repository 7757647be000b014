//! The `shalefs` binary: parse, dispatch, print the error chain once, pick the exit code.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = shalefs::cli::Cli::parse();
    match shalefs::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => match e.downcast_ref::<shalefs::cli::Exit>() {
            Some(exit) => {
                if let Some(m) = &exit.message {
                    eprintln!("shalefs: {m}");
                }
                ExitCode::from(exit.code)
            }
            None => {
                eprintln!("shalefs: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}
