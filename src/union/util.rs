//! Helpers for writing the upper in overlayfs format (overlayfs' util.c): temporary names in the
//! work directory, whiteouts, opaque and redirect marks, and removing a tree that was moved out.

use std::ffi::{CStr, CString};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::sys::{self, Errno, SysResult};

use super::Union;
use super::layer::{Layer, join};

/// Counter for unique temporary names in the work directory.
static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

impl Union {
    /// The upper layer; EROFS on a mount without one.
    pub(super) fn upper(&self) -> SysResult<&Layer> {
        self.stack.upper().ok_or(Errno::EROFS)
    }

    pub(super) fn work(&self) -> SysResult<&Layer> {
        self.stack.work().ok_or(Errno::EROFS)
    }

    /// The xattr name `<ns>.overlay.<suffix>` in the namespace the upper is written in.
    pub(super) fn upper_xattr_name(&self, suffix: &[u8]) -> SysResult<CString> {
        let prefix: &[u8] = if self.upper()?.formats.trusted_xattrs { b"trusted.overlay." } else { b"user.overlay." };
        sys::cstring(&[prefix, suffix].concat())
    }

    pub(super) fn set_upper_xattr(&self, rel: &CStr, suffix: &[u8], value: &[u8]) -> SysResult<()> {
        let path = sys::fd_relative_path(self.upper()?.fd(), rel.to_bytes())?;
        sys::lsetxattr(&path, &self.upper_xattr_name(suffix)?, value)
    }

    pub(super) fn remove_upper_xattr(&self, rel: &CStr, suffix: &[u8]) -> SysResult<()> {
        let path = sys::fd_relative_path(self.upper()?.fd(), rel.to_bytes())?;
        match sys::lremovexattr(&path, &self.upper_xattr_name(suffix)?) {
            Ok(()) | Err(Errno::ENODATA) => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub(super) fn set_work_xattr(&self, rel: &CStr, suffix: &[u8], value: &[u8]) -> SysResult<()> {
        let path = sys::fd_relative_path(self.work()?.fd(), rel.to_bytes())?;
        sys::lsetxattr(&path, &self.upper_xattr_name(suffix)?, value)
    }

    /// A fresh name in the work directory.
    pub(super) fn temp_name(&self) -> CString {
        let n = TEMP_SEQ.fetch_add(1, Ordering::Relaxed);
        // Digits only: never a NUL.
        CString::new(format!("#{:x}-{n}", std::process::id())).unwrap_or_default()
    }

    /// Make a whiteout at `rel` in the work directory: a character device 0/0 (overlayfs'
    /// own), or, without the privilege to make one, the xattr form.
    pub(super) fn make_whiteout_in_work(&self, rel: &CStr) -> SysResult<()> {
        let work = self.work()?;
        match sys::mknodat(work.fd(), rel, libc::S_IFCHR, 0) {
            Ok(()) => Ok(()),
            Err(Errno::EPERM) => {
                sys::mknodat(work.fd(), rel, libc::S_IFREG, 0)?;
                self.set_work_xattr(rel, b"whiteout", b"")
            }
            Err(e) => Err(e),
        }
    }

    /// Put a whiteout at `rel` in the upper, replacing whatever non-directory is there
    /// atomically (built in the work directory, then renamed into place).
    pub(super) fn whiteout_upper(&self, rel: &CStr) -> SysResult<()> {
        let (work, upper) = (self.work()?, self.upper()?);
        let tmp = self.temp_name();
        self.make_whiteout_in_work(&tmp)?;
        self.mark_for_xwhiteout(&tmp, rel)?;
        if let Err(e) = sys::renameat2(work.fd(), &tmp, upper.fd(), rel, 0) {
            let _ = sys::unlinkat(work.fd(), &tmp, 0);
            return Err(e);
        }
        Ok(())
    }

    /// An xattr-form whiteout (the fallback without mknod privilege) is only honoured in a
    /// directory marked `opaque=x`: mark the parent of `dest`, unless it is opaque already.
    pub(super) fn mark_for_xwhiteout(&self, tmp: &CStr, dest: &CStr) -> SysResult<()> {
        let st = self.work()?.stat(tmp)?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Ok(());
        }
        let parent = sys::cstring(&parent_of(dest.to_bytes()))?;
        if self.upper()?.dir_marks(parent.to_bytes()).opaque {
            return Ok(());
        }
        self.set_upper_xattr(&parent, b"opaque", b"x")
    }

    /// Remove a tree that sits in the work directory (a directory moved out of the upper, which
    /// may still hold whiteouts). Best effort: what cannot be removed is cleaned at next mount.
    pub(super) fn remove_work_tree(&self, rel: &CStr) {
        let Ok(work) = self.work() else { return };
        remove_tree(work, rel.to_bytes());
    }
}

fn remove_tree(layer: &Layer, rel: &[u8]) {
    let Ok(c) = sys::cstring(rel) else { return };
    let Ok(st) = layer.stat(&c) else { return };
    if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
        if let Ok(entries) = layer.read_dir(rel) {
            for (name, _, _) in entries {
                if name != b"." && name != b".." {
                    remove_tree(layer, &join(rel, &name));
                }
            }
        }
        let _ = sys::unlinkat(layer.fd(), &c, libc::AT_REMOVEDIR);
    } else {
        let _ = sys::unlinkat(layer.fd(), &c, 0);
    }
}

/// Empty the work directory at mount: what a crash left there (half-built copy-ups, removed
/// trees not yet deleted) is garbage by construction, since nothing in it is visible.
pub fn clean_work_dir(work: &Layer) {
    if let Ok(entries) = work.read_dir(b".") {
        for (name, _, _) in entries {
            if name != b"." && name != b".." {
                remove_tree(work, &name);
            }
        }
    }
}

/// How copy-ups into `upper` are made durable (see [`super::copy_up::Durability`]): ordered
/// writeback where the filesystem commits metadata in order behind a cache flush — ext4 with a
/// journal, xfs, btrfs — else a full fsync of each copy.
pub fn durability_for(upper: &Layer) -> super::copy_up::Durability {
    use super::copy_up::Durability;
    const EXT4: i64 = 0xEF53;
    const XFS: i64 = 0x5846_5342;
    const BTRFS: i64 = 0x9123_683E;
    match sys::fs_type(upper.fd()) {
        Ok(XFS) | Ok(BTRFS) => Durability::Ordered,
        Ok(EXT4) if has_jbd2_journal(upper.dev) => Durability::Ordered,
        _ => Durability::Synced,
    }
}

/// Whether the ext4 on device `dev` has a journal: jbd2 lists it in /proc/fs/jbd2 as
/// `<disk name>-<journal inode>` (ext2, and ext4 made without one, have none).
fn has_jbd2_journal(dev: u64) -> bool {
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let Ok(uevent) = std::fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/uevent")) else { return false };
    let Some(name) = uevent.lines().find_map(|l| l.strip_prefix("DEVNAME=")) else { return false };
    let prefix = format!("{}-", name.replace('/', "!"));
    std::fs::read_dir("/proc/fs/jbd2")
        .map(|d| d.flatten().any(|e| e.file_name().to_string_lossy().strip_prefix(&prefix).is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))))
        .unwrap_or(false)
}

/// `a/b/c` → `a/b`; `c` → `.`.
pub fn parent_of(rel: &[u8]) -> Vec<u8> {
    match rel.iter().rposition(|&b| b == b'/') {
        Some(i) => rel[..i].to_vec(),
        None => b".".to_vec(),
    }
}

/// `a/b/c` → `c`.
pub fn name_of(rel: &[u8]) -> &[u8] {
    match rel.iter().rposition(|&b| b == b'/') {
        Some(i) => &rel[i + 1..],
        None => rel,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_and_names() {
        assert_eq!(parent_of(b"a/b/c"), b"a/b");
        assert_eq!(parent_of(b"c"), b".");
        assert_eq!(name_of(b"a/b/c"), b"c");
        assert_eq!(name_of(b"c"), b"c");
    }
}
