//! The mount-program form, `shalefs -o OPTS MERGED` with no subcommand: what containers/storage
//! (podman, buildah) runs when `storage.conf` names shalefs as `mount_program`, as it runs
//! fuse-overlayfs. The options are fuse-overlayfs' (lowerdir= entries are paths under the
//! graph root's `l/`, symlinks to layers' diff directories); an option shalefs has no use for
//! is warned about on stderr as fuse-overlayfs does, not refused. The mount is served from a
//! daemon, and this process exits 0 only once it is live (runc uses the directory at once).

use std::path::PathBuf;

use clap::Args;

use crate::plan::{MountPlan, MountSpec, daemon, options};

use super::logging;

#[derive(Debug, Args)]
pub struct ProgramArgs {
    /// Mount-program form (as fuse-overlayfs): lowerdir=A:B,upperdir=U,workdir=W,uidmapping=...
    #[arg(short = 'o', value_name = "OPTIONS")]
    pub options: Vec<String>,
    /// Stay in the foreground (mount-program form)
    #[arg(short = 'f')]
    pub foreground: bool,
    /// The mountpoint of the mount-program form
    #[arg(value_name = "MERGED")]
    pub merged: Option<PathBuf>,
}

pub fn run(args: ProgramArgs) -> anyhow::Result<()> {
    let Some(merged) = args.merged.clone() else {
        anyhow::bail!("no command and no mountpoint: see shalefs --help");
    };
    let is_daemon_child = daemon::is_daemon_child();
    if !args.foreground && !is_daemon_child {
        // Checked here first, so that podman shows the reason from our stderr.
        plan(&args, merged, true)?;
        return daemon::spawn(&[]);
    }
    logging::init("info", None, is_daemon_child)?;
    if is_daemon_child {
        daemon::detach();
    }
    daemon::plan_and_serve(is_daemon_child, || plan(&args, merged, false))
}

/// The checked plan; `warn` says the unknown options on stderr (once, in the caller's process).
fn plan(args: &ProgramArgs, merged: PathBuf, warn: bool) -> anyhow::Result<MountPlan> {
    let (opts, _ignored, unknown) = options::parse_lenient(&args.options)?;
    if warn {
        for o in &unknown {
            // fuse-overlayfs' words, which the container tools' users know.
            eprintln!("unknown argument ignored: {o}");
        }
    }
    MountSpec {
        lowers: opts.lowers.iter().map(|l| resolve_lower(l)).collect::<anyhow::Result<_>>()?,
        upper: opts.upper,
        work: opts.work,
        mountpoint: merged,
        fsname: opts.fsname,
        flags: opts.flags,
        metacopy: opts.metacopy,
        userxattr: opts.userxattr,
        volatile: opts.volatile,
        ids: opts.ids,
        ..MountSpec::default()
    }
    .check()
}

/// A lowerdir entry is relative to the graph root's `overlay/` (our working directory) and a
/// symlink to the layer's diff directory: the plan holds the directory itself.
fn resolve_lower(entry: &std::path::Path) -> anyhow::Result<PathBuf> {
    entry.canonicalize().map_err(|e| anyhow::anyhow!("lower layer {}: {e}", entry.display()))
}
