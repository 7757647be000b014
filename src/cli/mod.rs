//! Command-line parsing and dispatch; one module per command.

pub mod logging;
pub mod mount;
pub mod mount_opts;
pub mod umount;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "shalefs", version, about = "Container image layers as one merged directory, through FUSE")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Mount a stack of layer directories (and an optional upper) as one merged tree
    Mount(mount::MountArgs),
    /// Unmount a shalefs mount
    Umount(umount::UmountArgs),
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Mount(args) => mount::run(args),
        Command::Umount(args) => umount::run(args),
    }
}
