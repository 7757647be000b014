//! Attributes of merged-view objects (overlayfs' inode.c): the top branch's, with the merged
//! view's inode number and link count; changes copy the object up first.

use crate::sys::{self, Errno, SysResult};

use super::Union;
use super::copy_up::CopyUp;
use super::lookup::present;

/// A time to set: now, or a given moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetTime {
    Now,
    At(i64, i64),
}

/// The changes of one setattr; `None` leaves a field as it is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<SetTime>,
    pub mtime: Option<SetTime>,
}

fn timespec(t: Option<SetTime>) -> libc::timespec {
    match t {
        None => libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_OMIT },
        Some(SetTime::Now) => libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_NOW },
        Some(SetTime::At(s, ns)) => libc::timespec { tv_sec: s, tv_nsec: ns },
    }
}

impl Union {
    /// Attributes of `ino`; with an open handle, of the file behind it (which answers even
    /// after the name is gone).
    pub fn getattr(&self, ino: u64, fh: Option<u64>) -> SysResult<libc::stat> {
        let node = self.nodes.get(ino)?;
        let top = node.top();
        // A metacopy file's handle reads the data below; its attributes are the copy's.
        let metacopy = node.is_metacopy();
        let mut st = match fh.filter(|_| !metacopy).and_then(|fh| self.files.get(fh).ok()) {
            Some(open) => sys::fstat(self.current_fd(&open)?)?,
            None => {
                let top = top.as_ref().map_err(|e| *e)?;
                self.stack.get(top.layer)?.stat(&top.path)?
            }
        };
        if metacopy && let Some(data) = node.branches().last() {
            // Space used is the data's, as overlayfs reports it.
            st.st_blocks = self.stack.get(data.layer)?.stat(&data.path)?.st_blocks;
        }
        present(&mut st, node.ino, node.is_merged_dir());
        if let Ok(top) = &top {
            self.count_merged_names(node.ino, node.kind(), top, &mut st);
        }
        // Removed but still open: kept in the work directory, and has no name.
        if top.is_ok_and(|t| t.layer == super::layer::WORK_LAYER) {
            st.st_nlink = 0;
        }
        self.ids.show(&mut st);
        Ok(st)
    }

    /// st_nlink of a hard-linked lower file that was never copied up: the lower's count less
    /// the names this mount removed (unlinked, renamed over, hidden) — what overlayfs
    /// (index=on) reports, which also keeps counting names the lowers themselves hide. Only
    /// lower files with several links, on a mount with an upper, pay for it: a lookup of each
    /// of their names (and of a missing one without the upper too), and on the first one, one
    /// walk of the layer for its hard links and moved directories.
    pub(super) fn count_merged_names(&self, ino: u64, kind: u32, top: &super::node::Branch, st: &mut libc::stat) {
        if kind != libc::S_IFREG || st.st_nlink <= 1 || self.stack.upper().is_none() || self.is_upper(std::slice::from_ref(top)) {
            return;
        }
        if let Ok(removed) = self.names_removed(ino, kind, top) {
            st.st_nlink = st.st_nlink.saturating_sub(removed);
        }
    }

    pub fn setattr(&self, ino: u64, change: SetAttr, fh: Option<u64>) -> SysResult<libc::stat> {
        let node = self.nodes.get(ino)?;
        // The new owners as they are written (EINVAL for an id the mapping lacks), checked
        // before anything is copied up.
        let (uid, gid) = self.ids.chown_to_disk(change.uid, change.gid)?;
        // A truncation to zero needs none of the old data; without a size, no data at all.
        let need = match change.size {
            Some(0) => CopyUp::Truncate,
            Some(_) => CopyUp::Data,
            None => CopyUp::Metadata,
        };
        self.copy_up_node(&node, need)?;
        let top = node.top()?;
        let layer = self.stack.get(top.layer)?;
        if uid.is_some() || gid.is_some() {
            // -1 leaves an id unchanged, as chown(2) says.
            sys::lchownat(layer.fd(), &top.path, uid.unwrap_or(u32::MAX), gid.unwrap_or(u32::MAX))?;
        }
        if let Some(mode) = change.mode {
            sys::fchmodat(layer.fd(), &top.path, mode & 0o7777)?;
        }
        if let Some(size) = change.size {
            match fh.and_then(|fh| self.files.get(fh).ok()).filter(|f| f.writable) {
                Some(open) => sys::ftruncate(open.fd(), size)?,
                None => {
                    if node.kind() != libc::S_IFREG {
                        return Err(if node.is_dir() { Errno::EISDIR } else { Errno::EINVAL });
                    }
                    let fd = sys::open_beneath(layer.fd(), &top.path, libc::O_WRONLY)?;
                    sys::ftruncate(std::os::fd::AsFd::as_fd(&fd), size)?;
                }
            }
        }
        if change.atime.is_some() || change.mtime.is_some() {
            sys::lutimensat(layer.fd(), &top.path, [timespec(change.atime), timespec(change.mtime)])?;
        }
        self.getattr(ino, fh)
    }

    pub fn readlink(&self, ino: u64) -> SysResult<Vec<u8>> {
        let node = self.nodes.get(ino)?;
        if node.kind() != libc::S_IFLNK {
            return Err(Errno::EINVAL);
        }
        let top = node.top()?;
        sys::readlinkat(self.stack.get(top.layer)?.fd(), &top.path)
    }

    /// Space figures of the upper's filesystem (else the top lower's), as overlayfs reports.
    pub fn statfs(&self) -> SysResult<libc::statvfs> {
        sys::fstatvfs(self.stack.statfs_layer().fd())
    }
}
