//! Inside the helper's own mount namespace: the container's mounts under the merged tree —
//! `/proc`, `/sys` (read-only), a small `/dev` on tmpfs (null, zero, full, random, urandom, tty,
//! a new devpts instance with `/dev/ptmx`, shm, the std streams), the host's resolv.conf and
//! hosts bound in read-only — then `pivot_root` into it and the old root detached.
//!
//! Every mount point is checked not to be a symlink before anything is mounted on it, so an
//! image cannot steer a mount onto a path outside its tree.

use std::os::unix::fs::{symlink, FileTypeExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::stat::{Mode, SFlag, makedev, mknod};

/// The mount points the container needs in its tree; those the image lacks are supplied by
/// the container's init layer (see `cli/run.rs`), so nothing is written to the upper.
pub const MOUNT_POINTS: &[(&str, bool)] = &[("proc", true), ("sys", true), ("dev", true), ("etc/resolv.conf", false), ("etc/hosts", false)];

pub struct RootfsSpec<'a> {
    pub root: &'a Path,
    pub read_only: bool,
}

fn do_mount(src: &str, target: &Path, fstype: Option<&str>, f: MsFlags, data: Option<&str>) -> anyhow::Result<()> {
    mount(Some(src), target, fstype, f, data).with_context(|| format!("mounting {src} on {}", target.display()))
}

/// `root/rel`, refused when any component on the way is a symlink (or missing) and when the
/// last one is not of the wanted kind.
fn mount_point(root: &Path, rel: &str, dir: bool) -> anyhow::Result<PathBuf> {
    let mut p = root.to_path_buf();
    let parts: Vec<&str> = rel.split('/').collect();
    for (i, part) in parts.iter().enumerate() {
        p.push(part);
        let meta = std::fs::symlink_metadata(&p).with_context(|| format!("mount point /{rel} in the image"))?;
        let last = i + 1 == parts.len();
        if meta.file_type().is_symlink() {
            bail!("mount point /{rel} in the image: /{} is a symlink", parts[..=i].join("/"));
        }
        if !last && !meta.is_dir() || last && dir != meta.is_dir() {
            bail!("mount point /{rel} in the image is not a {}", if last && !dir { "file" } else { "directory" });
        }
    }
    Ok(p)
}

pub fn setup(spec: &RootfsSpec<'_>) -> anyhow::Result<()> {
    let root = spec.root;
    // Nothing done here may reach the parent's namespace (and pivot_root wants it so).
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>).context("making the mount namespace private")?;
    let common = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    do_mount("proc", &mount_point(root, "proc", true)?, Some("proc"), common, None)?;
    do_mount("sysfs", &mount_point(root, "sys", true)?, Some("sysfs"), common | MsFlags::MS_RDONLY, None)?;
    setup_dev(&mount_point(root, "dev", true)?)?;
    for file in ["etc/resolv.conf", "etc/hosts"] {
        let host = Path::new("/").join(file);
        if !host.exists() {
            continue;
        }
        match mount_point(root, file, false) {
            Ok(target) => bind_read_only(&host, &target)?,
            // An image whose /etc/resolv.conf is a symlink keeps its own (as a warning).
            Err(e) => tracing::warn!("{e:#}: not bound from the host"),
        }
    }
    if spec.read_only {
        mount(Some(root), root, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY, None::<&str>)
            .context("making the root read-only")?;
    }
    enter(root)
}

fn bind_read_only(src: &Path, target: &Path) -> anyhow::Result<()> {
    mount(Some(src), target, None::<&str>, MsFlags::MS_BIND, None::<&str>).with_context(|| format!("binding {} into the container", src.display()))?;
    mount(None::<&str>, target, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV, None::<&str>)
        .with_context(|| format!("making {} read-only", target.display()))
}

/// Character devices of /dev, as docker's default set: (name, major, minor).
const DEVICES: &[(&str, u64, u64)] = &[("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9), ("tty", 5, 0)];

fn setup_dev(dev: &Path) -> anyhow::Result<()> {
    do_mount("tmpfs", dev, Some("tmpfs"), MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME, Some("mode=755,size=65536k"))?;
    for (name, major, minor) in DEVICES {
        let path = dev.join(name);
        mknod(&path, SFlag::S_IFCHR, Mode::from_bits_truncate(0o666), makedev(*major, *minor)).with_context(|| format!("mknod {}", path.display()))?;
        // The umask applied to mknod's mode; the nodes are for everyone.
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o666))?;
        debug_assert!(std::fs::symlink_metadata(&path).map(|m| m.file_type().is_char_device()).unwrap_or(false));
    }
    std::fs::create_dir(dev.join("pts"))?;
    do_mount("devpts", &dev.join("pts"), Some("devpts"), MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC, Some("newinstance,ptmxmode=0666,mode=0620"))?;
    std::fs::create_dir(dev.join("shm"))?;
    do_mount("shm", &dev.join("shm"), Some("tmpfs"), MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC, Some("mode=1777,size=65536k"))?;
    for (link, target) in [("ptmx", "pts/ptmx"), ("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")] {
        symlink(target, dev.join(link)).with_context(|| format!("symlink /dev/{link}"))?;
    }
    Ok(())
}

/// pivot_root into `root` with the old root stacked on it, then detach the old root: the
/// container sees only its own tree (the `pivot_root(".", ".")` form, as runc uses).
fn enter(root: &Path) -> anyhow::Result<()> {
    nix::unistd::chdir(root).with_context(|| format!("entering {}", root.display()))?;
    nix::unistd::pivot_root(".", ".").context("pivot_root into the container")?;
    umount2(".", MntFlags::MNT_DETACH).context("detaching the old root")?;
    nix::unistd::chdir("/").context("chdir /")?;
    Ok(())
}
