//! Attributes of merged-view objects (overlayfs' inode.c): the top branch's, with the merged
//! view's inode number and link count.

use crate::sys::{self, SysResult};

use super::Union;
use super::lookup::present;

impl Union {
    pub fn getattr(&self, ino: u64) -> SysResult<libc::stat> {
        let node = self.nodes.get(ino)?;
        let top = node.top()?;
        let mut st = self.stack.get(top.layer)?.stat(&top.path)?;
        present(&mut st, node.ino, node.is_merged_dir());
        Ok(st)
    }

    pub fn readlink(&self, ino: u64) -> SysResult<Vec<u8>> {
        let node = self.nodes.get(ino)?;
        if node.kind != libc::S_IFLNK {
            return Err(sys::Errno::EINVAL);
        }
        let top = node.top()?;
        sys::readlinkat(self.stack.get(top.layer)?.fd(), &top.path)
    }

    /// Space figures of the upper's filesystem (else the top lower's), as overlayfs reports.
    pub fn statfs(&self) -> SysResult<libc::statvfs> {
        sys::fstatvfs(self.stack.statfs_layer().fd())
    }
}
