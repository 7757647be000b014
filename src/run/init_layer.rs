//! The container's init layer, as docker's `-init` layer: the mount points `run` needs
//! (/proc, /sys, /dev, /etc/resolv.conf, /etc/hosts) that the image and the upper lack, made in
//! a small directory mounted as the top lower, so that nothing is written to the upper for them
//! and `diff`/`commit` never see them. A directory it must hold on the way (/etc) takes the
//! attributes the merged tree gives it, and so does its root, so the merged view is unchanged.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::plan::{MountPlan, build};
use crate::union::ino::ROOT_INO;
use crate::union::Union;

use super::rootfs::MOUNT_POINTS;

/// What the merged tree has at a path: its stat, or nothing.
fn probe(union: &Union, path: &str) -> Option<libc::stat> {
    let mut ino = ROOT_INO;
    let mut stat = None;
    for part in path.split('/') {
        let e = union.lookup(ino, part.as_bytes()).ok()?;
        ino = e.stat.st_ino;
        stat = Some(e.stat);
    }
    stat
}

/// Rebuild `dir` with what `lowers` (top first: the upper, then the image's layers) lack. True
/// when it holds anything (else it need not be mounted).
pub fn build(dir: &Path, lowers: &[PathBuf]) -> anyhow::Result<bool> {
    let plan = MountPlan {
        lowers: lowers.to_vec(),
        upper: None,
        mountpoint: PathBuf::new(),
        fsname: String::new(),
        flags: Default::default(),
        threads: 1,
        passthrough: false,
        metacopy: false,
        userxattr: false,
        volatile: false,
        ids: Default::default(),
        label_records: Default::default(),
    };
    let union = build::build_union(&plan)?;
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    std::fs::DirBuilder::new().mode(0o755).create(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut any = false;
    for (path, is_dir) in MOUNT_POINTS {
        if probe(&union, path).is_some() {
            continue;
        }
        let (parent, _) = path.rsplit_once('/').unwrap_or(("", path));
        if !parent.is_empty() {
            make_parent(&union, dir, parent)?;
        }
        let target = dir.join(path);
        if *is_dir {
            std::fs::DirBuilder::new().mode(0o755).create(&target)?;
        } else {
            std::fs::write(&target, b"")?;
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o644))?;
        }
        any = true;
    }
    // Parents last: the files made in them changed their times. The root, as the top layer
    // with a directory, gives the merged root its attributes too.
    for parent in ["etc"] {
        if let (Some(st), true) = (probe(&union, parent), dir.join(parent).is_dir()) {
            copy_attributes(&dir.join(parent), &st)?;
        }
    }
    if let Ok(st) = union.getattr(ROOT_INO, None) {
        copy_attributes(dir, &st)?;
    }
    Ok(any)
}

fn make_parent(union: &Union, dir: &Path, parent: &str) -> anyhow::Result<()> {
    let p = dir.join(parent);
    if p.is_dir() {
        return Ok(());
    }
    match probe(union, parent) {
        Some(st) if st.st_mode & libc::S_IFMT != libc::S_IFDIR => {
            anyhow::bail!("/{parent} in the image is not a directory: cannot bind /etc files into it")
        }
        _ => std::fs::DirBuilder::new().mode(0o755).create(&p).with_context(|| format!("creating {}", p.display())),
    }
}

fn copy_attributes(path: &Path, st: &libc::stat) -> anyhow::Result<()> {
    std::os::unix::fs::lchown(path, Some(st.st_uid), Some(st.st_gid))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(st.st_mode & 0o7777))?;
    let times = std::fs::FileTimes::new()
        .set_accessed(system_time(st.st_atime, st.st_atime_nsec))
        .set_modified(system_time(st.st_mtime, st.st_mtime_nsec));
    std::fs::File::open(path)?.set_times(times)?;
    Ok(())
}

fn system_time(secs: i64, nsec: i64) -> std::time::SystemTime {
    let d = std::time::Duration::new(secs.unsigned_abs(), nsec.clamp(0, 999_999_999) as u32);
    if secs >= 0 { std::time::UNIX_EPOCH + d } else { std::time::UNIX_EPOCH - d }
}
