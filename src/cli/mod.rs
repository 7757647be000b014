//! Command-line parsing and dispatch; one module per command.

pub mod commit;
pub mod containers;
pub mod diff;
pub mod export;
pub mod images;
pub mod import;
pub mod load;
pub mod logging;
pub mod mount;
pub mod program;
pub mod progress;
pub mod pull;
pub mod save;
pub mod push;
pub mod run;
pub mod umount;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "shalefs", version, about = "Container image layers as one merged directory, through FUSE")]
// Not `args_conflicts_with_subcommands`: clap counts the global `--root` as such an argument,
// which refused `shalefs --root DIR pull ...`; the mount-program form is kept apart in `run`.
#[command(arg_required_else_help = true)]
pub struct Cli {
    /// The image store (default: $SHALEFS_ROOT, else /var/lib/shalefs)
    #[arg(long, global = true, value_name = "DIR")]
    pub root: Option<std::path::PathBuf>,
    /// `shalefs -o OPTS MERGED`: the mount-program form podman and buildah call
    #[command(flatten)]
    pub program: program::ProgramArgs,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Mount an image (as a new container), a container, or a stack of layer directories
    Mount(mount::MountArgs),
    /// Unmount a shalefs mount
    Umount(umount::UmountArgs),
    /// Pull an image from a registry into the store
    Pull(pull::PullArgs),
    /// Write images to an archive (docker-archive, oci-archive) or an OCI layout directory
    Save(save::SaveArgs),
    /// Read images from an archive or OCI layout into the store
    Load(load::LoadArgs),
    /// Push an image from the store to a registry
    Push(push::PushArgs),
    /// List the images in the store
    Images(images::ImagesArgs),
    /// Show an image's details as JSON
    Inspect(images::InspectArgs),
    /// Show the history of an image
    History(images::HistoryArgs),
    /// Give an image another name
    Tag(images::TagArgs),
    /// Remove images (untag; delete layers nothing else uses)
    Rmi(images::RmiArgs),
    /// Delete unnamed images and unused layers
    Prune,
    /// List containers
    Ps,
    /// Remove containers and their upper directories
    Rm(containers::RmArgs),
    /// Show what a container changed (A/C/D lines)
    Diff(diff::DiffArgs),
    /// Make an image of a container's changes
    Commit(commit::CommitArgs),
    /// Write a container's merged tree as a tar
    Export(export::ExportArgs),
    /// Make a one-layer image of a rootfs tar
    Import(import::ImportArgs),
    /// Run a command in a new container of an image (or in an existing one), as docker run
    Run(run::RunArgs),
    /// The container side of `run` (started by it, not by hand)
    #[command(name = "run-init", hide = true)]
    RunInit,
}

/// An exit code a command chooses (`run` passes on its command's), with what to print first.
#[derive(Debug)]
pub struct Exit {
    pub code: u8,
    pub message: Option<String>,
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.message {
            Some(m) => f.write_str(m),
            None => write!(f, "exit status {}", self.code),
        }
    }
}

impl std::error::Error for Exit {}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    let root = cli.root;
    let Some(command) = cli.command else { return program::run(cli.program) };
    let p = &cli.program;
    if p.merged.is_some() || !p.options.is_empty() || p.foreground {
        anyhow::bail!("-o, -f and MERGED belong to the mount-program form `shalefs -o OPTS MERGED`, not to a subcommand");
    }
    match command {
        Command::Mount(args) => mount::run(args, root),
        Command::Umount(args) => umount::run(args),
        Command::Pull(args) => pull::run(args, root),
        Command::Save(args) => save::run(args, root),
        Command::Load(args) => load::run(args, root),
        Command::Push(args) => push::run(args, root),
        Command::Images(args) => images::images(args, root),
        Command::Inspect(args) => images::inspect(args, root),
        Command::History(args) => images::history(args, root),
        Command::Tag(args) => images::tag(args, root),
        Command::Rmi(args) => images::rmi(args, root),
        Command::Prune => images::prune(root),
        Command::Ps => containers::ps(root),
        Command::Rm(args) => containers::rm(args, root),
        Command::Diff(args) => diff::run(args, root),
        Command::Commit(args) => commit::run(args, root),
        Command::Export(args) => export::run(args, root),
        Command::Import(args) => import::run(args, root),
        Command::Run(args) => run::run(args, root),
        Command::RunInit => run::init(),
    }
}
