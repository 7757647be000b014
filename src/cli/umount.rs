//! `shalefs umount`: detach a shalefs mount and wait until its daemon has exited, so that the
//! layers' and the upper's filesystems are free when this returns (plain `umount` returns as
//! soon as the kernel lets go, while the daemon may still be closing its files).

use std::path::PathBuf;

use std::os::fd::AsFd;

use clap::Args;

use crate::sys::{self, Errno};

#[derive(Debug, Args)]
pub struct UmountArgs {
    /// Detach now even if busy; the daemon goes when the last user lets go (MNT_DETACH)
    #[arg(short = 'l', long)]
    pub lazy: bool,
    /// The mountpoint to unmount
    pub mountpoint: PathBuf,
}

/// How long to wait for the daemon once its mount is gone.
const DAEMON_EXIT_TIMEOUT_MS: i32 = 30_000;

pub fn run(args: UmountArgs) -> anyhow::Result<()> {
    let daemon = serving_daemon(&args.mountpoint);
    detach(&args)?;
    let Some(pidfd) = daemon else { return Ok(()) };
    // After a lazy unmount the daemon stays until the last user lets go: nothing to wait for.
    if args.lazy {
        return Ok(());
    }
    match sys::wait_pidfd(pidfd.as_fd(), DAEMON_EXIT_TIMEOUT_MS) {
        Ok(true) => Ok(()),
        Ok(false) => anyhow::bail!(
            "unmounted {}, but its daemon has not exited after {} s",
            args.mountpoint.display(),
            DAEMON_EXIT_TIMEOUT_MS / 1000
        ),
        Err(e) => anyhow::bail!("unmounted {}; waiting for its daemon: {e}", args.mountpoint.display()),
    }
}

/// A pidfd of the daemon serving the shalefs mount at `mp` (it tells its PID on the root), taken
/// before the unmount so the PID cannot be reused meanwhile. None for other mounts, a dead
/// daemon, or a caller without the privilege to ask.
fn serving_daemon(mp: &std::path::Path) -> Option<std::os::fd::OwnedFd> {
    let path = sys::path_cstring(mp).ok()?;
    let name = sys::cstring(crate::fuse::DAEMON_PID_XATTR.as_bytes()).ok()?;
    let value = sys::lgetxattr(&path, &name).ok()?;
    let (pid, ns) = std::str::from_utf8(&value).ok()?.split_once(' ')?;
    let ours = crate::fuse::daemon_identity();
    // Only a daemon in our PID namespace can be waited for by its PID.
    if ours.split_once(' ').map(|(_, n)| n) != Some(ns) {
        return None;
    }
    sys::pidfd_open(pid.parse().ok()?).ok()
}

fn detach(args: &UmountArgs) -> anyhow::Result<()> {
    let mp = &args.mountpoint;
    match sys::umount(mp, args.lazy) {
        Ok(()) => Ok(()),
        // Not root: the set-uid helper may unmount a FUSE mount its user owns.
        Err(Errno(libc::EPERM)) => {
            let status = std::process::Command::new("fusermount3")
                .arg("-u")
                .args(args.lazy.then_some("-z"))
                .arg(mp)
                .status()
                .map_err(|e| anyhow::anyhow!("unmounting {}: running fusermount3: {e}", mp.display()))?;
            if !status.success() {
                anyhow::bail!("unmounting {}: fusermount3 failed ({status})", mp.display());
            }
            Ok(())
        }
        Err(Errno(libc::EINVAL)) => anyhow::bail!("unmounting {}: not a mount point", mp.display()),
        Err(Errno(libc::EBUSY)) => anyhow::bail!("unmounting {}: busy (use --lazy to detach anyway)", mp.display()),
        Err(e) => anyhow::bail!("unmounting {}: {e}", mp.display()),
    }
}
