//! Extended attributes of merged-view objects: those of the top branch, minus the overlay's own
//! (`trusted.overlay.*`, `user.overlay.*`), which are format, not data. `security.selinux` of a
//! view known to carry no label is ENOTSUP (see [`super::labels`]).

use crate::sys::{self, Errno, SysResult};

use super::Union;
use super::copy_up::CopyUp;
use super::idmap::is_acl_xattr;
use super::whiteout::is_private_xattr;

impl Union {
    pub fn getxattr(&self, ino: u64, name: &[u8]) -> SysResult<Vec<u8>> {
        if is_private_xattr(name) {
            return Err(Errno::ENODATA);
        }
        if let Some(e) = self.labels.short_answer(name) {
            return Err(e);
        }
        let node = self.nodes.get(ino)?;
        let top = node.top()?;
        let value = sys::getxattr_at(self.stack.get(top.layer)?.fd(), &top.path, &sys::cstring(name)?)?;
        Ok(if is_acl_xattr(name) { self.ids.acl_to_kernel(&value) } else { value })
    }

    /// The visible xattr names, NUL-separated, as listxattr(2) returns them.
    pub fn listxattr(&self, ino: u64) -> SysResult<Vec<u8>> {
        let node = self.nodes.get(ino)?;
        let top = node.top()?;
        let raw = sys::listxattr_at(self.stack.get(top.layer)?.fd(), &top.path)?;
        Ok(filter_names(&raw))
    }

    /// Set an xattr (copying the object up first). The overlay's own names are refused, as
    /// overlayfs refuses them.
    pub fn setxattr(&self, ino: u64, name: &[u8], value: &[u8], flags: i32) -> SysResult<()> {
        if is_private_xattr(name) {
            return Err(Errno::EPERM);
        }
        let mapped;
        let value = if is_acl_xattr(name) {
            mapped = self.ids.acl_to_disk(value)?;
            &mapped[..]
        } else {
            value
        };
        let node = self.nodes.get(ino)?;
        self.labels.note_set(name);
        self.copy_up_node(&node, CopyUp::Metadata)?;
        sys::lsetxattr_flags(&self.top_path(ino)?, &sys::cstring(name)?, value, flags)
    }

    /// Remove an xattr. One that does not exist is ENODATA without a copy-up.
    pub fn removexattr(&self, ino: u64, name: &[u8]) -> SysResult<()> {
        if is_private_xattr(name) {
            return Err(Errno::EPERM);
        }
        let cname = sys::cstring(name)?;
        sys::lgetxattr(&self.top_path(ino)?, &cname)?;
        let node = self.nodes.get(ino)?;
        self.copy_up_node(&node, CopyUp::Metadata)?;
        sys::lremovexattr(&self.top_path(ino)?, &cname)
    }

    fn top_path(&self, ino: u64) -> SysResult<sys::ProcPath> {
        let node = self.nodes.get(ino)?;
        let top = node.top()?;
        sys::fd_relative_path(self.stack.get(top.layer)?.fd(), top.path.to_bytes())
    }
}

/// Drop the overlay's private names from a NUL-separated xattr name list.
pub fn filter_names(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    for name in raw.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        if !is_private_xattr(name) {
            out.extend_from_slice(name);
            out.push(0);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_names_are_dropped() {
        let raw = b"user.a\0trusted.overlay.opaque\0security.selinux\0user.overlay.origin\0";
        assert_eq!(filter_names(raw), b"user.a\0security.selinux\0".to_vec());
        assert_eq!(filter_names(b""), Vec::<u8>::new());
    }
}
