//! Open files (overlayfs' file.c). A file opened for reading is opened in the layer that holds
//! its top branch; opened for writing, it is copied up first. Every open goes through
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`.

use std::fs::File;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::sys::{self, Errno, SysResult};

use super::Union;
use super::node::Node;
use super::readdir::OpenDir;

#[derive(Debug)]
pub struct OpenFile {
    pub file: File,
    pub node: Arc<Node>,
    pub writable: bool,
}

impl Drop for OpenFile {
    fn drop(&mut self) {
        self.node.open_count.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Flags that will change the file.
pub fn wants_write(flags: i32) -> bool {
    flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0
}

/// Open flags that mean something for the real file; creation flags were handled already.
const PASSED_FLAGS: i32 = libc::O_ACCMODE
    | libc::O_APPEND
    | libc::O_NONBLOCK
    | libc::O_DIRECT
    | libc::O_NOATIME
    | libc::O_TRUNC
    | libc::O_SYNC
    | libc::O_DSYNC;

impl Union {
    pub fn open(&self, ino: u64, flags: i32) -> SysResult<u64> {
        let node = self.nodes.get(ino)?;
        if node.is_dir() {
            return Err(Errno::EISDIR);
        }
        let writable = wants_write(flags);
        if writable {
            // O_TRUNC throws the data away: copy only the metadata.
            self.copy_up_node(&node, flags & libc::O_TRUNC == 0)?;
        }
        let top = node.top()?;
        let fd = sys::open_beneath(self.stack.get(top.layer)?.fd(), &top.path, flags & PASSED_FLAGS)?;
        Ok(self.add_open_file(node, File::from(fd), writable))
    }

    fn add_open_file(&self, node: Arc<Node>, file: File, writable: bool) -> u64 {
        node.open_count.fetch_add(1, Ordering::Relaxed);
        self.files.insert(OpenFile { file, node, writable })
    }

    /// Create and open a regular file: the new object and its handle.
    pub fn create(&self, parent: u64, name: &[u8], mode: u32, flags: i32, caller: super::dir::Caller) -> SysResult<(super::Entry, u64)> {
        let (entry, made) = self.create_object_open(parent, name, super::dir::NewObject::File { mode }, caller)?;
        let node = self.nodes.get(entry.stat.st_ino)?;
        // The fd from the creation serves, unless the caller asked for flags it lacks.
        let special = libc::O_APPEND | libc::O_SYNC | libc::O_DSYNC | libc::O_DIRECT | libc::O_NOATIME | libc::O_NONBLOCK;
        let fd = match made {
            Some(fd) if flags & special == 0 => fd,
            _ => {
                let top = node.top()?;
                sys::open_beneath(self.stack.get(top.layer)?.fd(), &top.path, flags & PASSED_FLAGS & !libc::O_TRUNC)?
            }
        };
        Ok((entry, self.add_open_file(node, File::from(fd), wants_write(flags))))
    }

    pub fn read(&self, fh: u64, offset: u64, size: u32) -> SysResult<Vec<u8>> {
        let open = self.files.get(fh)?;
        let mut buf = vec![0u8; size as usize];
        let mut filled = 0;
        // A short read is only the end of the file; keep reading until then, as the kernel expects.
        while filled < buf.len() {
            match sys::pread(open.file.as_fd(), &mut buf[filled..], offset as i64 + filled as i64) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(Errno(libc::EINTR)) => continue,
                Err(e) => return Err(e),
            }
        }
        buf.truncate(filled);
        Ok(buf)
    }

    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> SysResult<usize> {
        let open = self.files.get(fh)?;
        let mut written = 0;
        while written < data.len() {
            match sys::pwrite(open.file.as_fd(), &data[written..], offset as i64 + written as i64) {
                Ok(0) => break,
                Ok(n) => written += n,
                Err(Errno(libc::EINTR)) => continue,
                Err(e) if written == 0 => return Err(e),
                Err(_) => break,
            }
        }
        Ok(written)
    }

    pub fn fsync(&self, fh: u64, datasync: bool) -> SysResult<()> {
        sys::fsync(self.files.get(fh)?.file.as_fd(), datasync)
    }

    /// fsync of a directory: only an upper directory has anything to flush.
    pub fn fsyncdir(&self, ino: u64, datasync: bool) -> SysResult<()> {
        let node = self.nodes.get(ino)?;
        let top = node.top()?;
        if !self.is_upper(std::slice::from_ref(&top)) {
            return Ok(());
        }
        let fd = sys::open_beneath(self.stack.get(top.layer)?.fd(), &top.path, libc::O_RDONLY | libc::O_DIRECTORY)?;
        sys::fsync(fd.as_fd(), datasync)
    }

    pub fn fallocate(&self, fh: u64, offset: u64, length: u64, mode: i32) -> SysResult<()> {
        sys::fallocate(self.files.get(fh)?.file.as_fd(), mode, offset as i64, length as i64)
    }

    pub fn lseek(&self, fh: u64, offset: i64, whence: i32) -> SysResult<i64> {
        sys::lseek(self.files.get(fh)?.file.as_fd(), offset, whence)
    }

    pub fn copy_file_range(&self, fh_in: u64, off_in: u64, fh_out: u64, off_out: u64, len: u64) -> SysResult<usize> {
        let (input, out) = (self.files.get(fh_in)?, self.files.get(fh_out)?);
        let (mut a, mut b) = (off_in as i64, off_out as i64);
        sys::copy_file_range(input.file.as_fd(), &mut a, out.file.as_fd(), &mut b, len as usize)
    }

    pub fn release(&self, fh: u64) {
        self.files.remove(fh);
    }

    pub fn opendir(&self, ino: u64) -> SysResult<u64> {
        let node = self.nodes.get(ino)?;
        if !node.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        Ok(self.dirs.insert(OpenDir::new(node)))
    }

    pub fn releasedir(&self, fh: u64) {
        self.dirs.remove(fh);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_intents() {
        assert!(!wants_write(libc::O_RDONLY));
        assert!(wants_write(libc::O_WRONLY));
        assert!(wants_write(libc::O_RDWR));
        assert!(wants_write(libc::O_RDONLY | libc::O_TRUNC));
    }
}
