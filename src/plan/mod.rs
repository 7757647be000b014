//! The mount plan: one path from "these layers, this upper, these options" to a live mount, for
//! every command that mounts (`shalefs mount`, `shalefs run`, and the mount-program form podman
//! and buildah call).
//!
//! A caller fills a [`MountSpec`] (its own parsing of flags, images or containers done), and
//! [`MountSpec::check`] validates it into a [`MountPlan`] before anything is touched: every path
//! exists with the right kind, the upper and work directories fit together, /dev/fuse opens.
//! Then [`serve::mount`] builds the [`Union`](crate::union::Union) and makes the mount live, and
//! [`serve::serve`] serves it until it is unmounted; [`daemon`] runs that in a background
//! process that reports once the mount is live.
//!
//! - [`options`]: the overlayfs `-o` spelling (`lowerdir=A:B,upperdir=U,workdir=W,...`);
//! - [`build`]: the union from a plan (upper format probe, work directory);
//! - [`serve`]: the FUSE mount and its serving loop;
//! - [`daemon`]: serving from a detached child, readiness reported over a pipe;
//! - [`container`]: the layers, upper and mount name of a container in the store;
//! - [`labels`]: the background scan of the layers for SELinux labels, its results kept in
//!   the store for store layers.

pub mod build;
pub mod container;
pub mod daemon;
pub mod labels;
pub mod options;
pub mod serve;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::fuse::session::{self, MountFlags};
use crate::sys;
use crate::union::idmap::IdMapping;

/// What a caller asks to mount, before any check. Fields left at their default mean: no upper
/// (read-only), fsname "shalefs", the default thread count, passthrough where the kernel allows.
#[derive(Debug, Default, Clone)]
pub struct MountSpec {
    /// Lower layer directories, top first.
    pub lowers: Vec<PathBuf>,
    pub upper: Option<PathBuf>,
    pub work: Option<PathBuf>,
    pub mountpoint: PathBuf,
    pub fsname: Option<String>,
    pub flags: MountFlags,
    pub threads: Option<usize>,
    /// Serve reads and writes in the daemon even where FUSE passthrough would work.
    pub no_passthrough: bool,
    pub metacopy: bool,
    /// Write the upper's overlay xattrs as `user.overlay.*` even when `trusted.*` would work.
    pub userxattr: bool,
    /// `-o volatile`: copy-ups are not made durable.
    pub volatile: bool,
    /// Owners shifted between disk and kernel (identity by default).
    pub ids: IdMapping,
    /// Lowers that are store layers (which never change) → the file that keeps each one's
    /// label scan, so it is scanned once (see `union::labels`).
    pub label_records: HashMap<PathBuf, PathBuf>,
}

/// A checked mount: every path exists and has the right kind; nothing later sees raw flags.
#[derive(Debug, Clone)]
pub struct MountPlan {
    pub lowers: Vec<PathBuf>,
    pub upper: Option<UpperPlan>,
    pub mountpoint: PathBuf,
    pub fsname: String,
    pub flags: MountFlags,
    pub threads: usize,
    pub passthrough: bool,
    pub metacopy: bool,
    pub userxattr: bool,
    pub volatile: bool,
    pub ids: IdMapping,
    pub label_records: HashMap<PathBuf, PathBuf>,
}

#[derive(Debug, Clone)]
pub struct UpperPlan {
    pub upper: PathBuf,
    pub work: PathBuf,
}

impl MountSpec {
    /// Validate into a plan; the first thing wrong is the error, naming the path.
    pub fn check(self) -> anyhow::Result<MountPlan> {
        if self.lowers.is_empty() {
            anyhow::bail!("no lower layer: give IMAGE, --container NAME, --lower DIR or -o lowerdir=DIR[:DIR...]");
        }
        let upper = match (self.upper, self.work) {
            (None, None) => None,
            (Some(_), None) => anyhow::bail!("an upper directory needs a work directory (--work or workdir=)"),
            (None, Some(_)) => anyhow::bail!("a work directory was given without an upper directory"),
            (Some(upper), Some(work)) => Some(check_upper(&upper, &work)?),
        };
        for lower in &self.lowers {
            check_dir("lower layer", lower)?;
        }
        check_mountpoint(&self.mountpoint)?;
        // Absolute, as a daemon serves from `/` (not to keep the caller's directory busy).
        let mountpoint = std::fs::canonicalize(&self.mountpoint).unwrap_or(self.mountpoint);
        sys::check_dev_fuse().map_err(|e| anyhow::anyhow!("cannot open /dev/fuse: {e} (is the fuse module loaded?)"))?;
        let mut flags = self.flags;
        if upper.is_none() {
            flags.read_only = true;
        }
        Ok(MountPlan {
            lowers: self.lowers,
            upper,
            mountpoint,
            fsname: self.fsname.unwrap_or_else(|| "shalefs".into()),
            flags,
            threads: self.threads.unwrap_or_else(session::default_threads),
            passthrough: !self.no_passthrough,
            metacopy: self.metacopy,
            userxattr: self.userxattr,
            volatile: self.volatile,
            ids: self.ids,
            label_records: self.label_records,
        })
    }
}

pub fn check_dir(what: &str, path: &Path) -> anyhow::Result<std::fs::Metadata> {
    let meta = std::fs::metadata(path).map_err(|e| anyhow::anyhow!("{what} {}: {e}", path.display()))?;
    if !meta.is_dir() {
        anyhow::bail!("{what} {}: not a directory", path.display());
    }
    Ok(meta)
}

/// A mountpoint must be an empty directory.
pub fn check_mountpoint(path: &Path) -> anyhow::Result<()> {
    check_dir("mountpoint", path)?;
    let mut entries = std::fs::read_dir(path).map_err(|e| anyhow::anyhow!("mountpoint {}: {e}", path.display()))?;
    if entries.next().is_some() {
        anyhow::bail!("mountpoint {}: not an empty directory", path.display());
    }
    Ok(())
}

/// The upper and work directories must be on one filesystem (copy-up renames from one to the
/// other), and neither inside the other.
fn check_upper(upper: &Path, work: &Path) -> anyhow::Result<UpperPlan> {
    use std::os::unix::fs::MetadataExt;
    let u = check_dir("upper directory", upper)?;
    let w = check_dir("work directory", work)?;
    if u.dev() != w.dev() {
        anyhow::bail!("upper {} and work {} are on different filesystems", upper.display(), work.display());
    }
    let (cu, cw) = (upper.canonicalize()?, work.canonicalize()?);
    if cu.starts_with(&cw) || cw.starts_with(&cu) {
        anyhow::bail!("upper {} and work {} must not contain each other", upper.display(), work.display());
    }
    Ok(UpperPlan { upper: upper.to_path_buf(), work: work.to_path_buf() })
}
