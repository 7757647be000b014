//! `shalefs umount`: detach a shalefs mount; its daemon then exits by itself.

use std::path::PathBuf;

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

pub fn run(args: UmountArgs) -> anyhow::Result<()> {
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
