//! Open files (overlayfs' file.c). A file opened for reading is opened in the layer that holds
//! its top branch; opened for writing, it is copied up first. Every open goes through
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`.

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::{Arc, OnceLock};
use std::sync::atomic::Ordering;

use crate::sys::{self, Errno, SysResult};

use super::Union;
use super::copy_up::CopyUp;
use super::layer::Role;
use super::node::Node;

#[derive(Debug)]
pub struct OpenFile {
    /// The real file as opened.
    file: File,
    /// The upper copy, once a copy-up has moved the file: reads through a handle opened before
    /// see the copy, as on kernel overlayfs (ovl_real_fdget re-opens the real file).
    moved: OnceLock<File>,
    pub node: Arc<Node>,
    pub writable: bool,
    /// Opened on a lower layer of a writable mount, so a copy-up may move it. Only read-only
    /// opens stay on a lower layer (a writable open copies up first). Passed through, such a
    /// handle keeps its lower file (a backing file cannot change under an open handle).
    pub may_move: bool,
}

impl OpenFile {
    /// The real file this handle reads and writes now.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.moved.get().unwrap_or(&self.file).as_fd()
    }
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
            let need = if flags & libc::O_TRUNC != 0 { CopyUp::Truncate } else { CopyUp::Data };
            self.copy_up_node(&node, need)?;
        }
        // Where the data is: for a metacopy file (read-only here), the layer below its copy.
        let data = node.branches().pop().ok_or(Errno::ENOENT)?;
        let layer = self.stack.get(data.layer)?;
        let fd = sys::open_beneath(layer.fd(), &data.path, flags & PASSED_FLAGS)?;
        let may_move = layer.role == Role::Lower && !self.is_read_only();
        Ok(self.add_open_file(node, File::from(fd), writable, may_move))
    }

    fn add_open_file(&self, node: Arc<Node>, file: File, writable: bool, may_move: bool) -> u64 {
        node.open_count.fetch_add(1, Ordering::Relaxed);
        self.files.insert(OpenFile { file, moved: OnceLock::new(), node, writable, may_move })
    }

    /// Create and open a regular file: the new object and its handle.
    pub fn create(&self, parent: u64, name: &[u8], mode: u32, flags: i32, caller: super::dir::Caller) -> SysResult<(super::Entry, u64)> {
        let (entry, made) = self.create_object_open(parent, name, super::dir::NewObject::File { mode }, caller)?;
        let node = self.nodes.get(entry.stat.st_ino)?;
        // The fd from the creation serves, unless the caller asked for flags it lacks (O_NONBLOCK
        // means nothing for a regular file, so `touch` and friends need no second open).
        let special = libc::O_APPEND | libc::O_SYNC | libc::O_DSYNC | libc::O_DIRECT | libc::O_NOATIME;
        let fd = match made {
            Some(fd) if flags & special == 0 => fd,
            _ => {
                let top = node.top()?;
                sys::open_beneath(self.stack.get(top.layer)?.fd(), &top.path, flags & PASSED_FLAGS & !libc::O_TRUNC)?
            }
        };
        Ok((entry, self.add_open_file(node, File::from(fd), wants_write(flags), false)))
    }

    /// The real file behind a handle, following a copy-up that happened since it was opened.
    pub fn current_fd<'a>(&self, open: &'a OpenFile) -> SysResult<BorrowedFd<'a>> {
        // Checked on every read of such a handle: the layer index alone, no path copied.
        let moved_up = || open.node.data_layer().and_then(|l| self.stack.get(l).ok()).is_some_and(|l| l.role != Role::Lower);
        if open.may_move && open.moved.get().is_none() && moved_up() {
            let top = open.node.top()?;
            let fd = sys::open_beneath(self.stack.get(top.layer)?.fd(), &top.path, libc::O_RDONLY)?;
            // Two readers may race here; either copy will do.
            let _ = open.moved.set(File::from(fd));
        }
        Ok(open.fd())
    }

    pub fn read(&self, fh: u64, offset: u64, size: u32) -> SysResult<Vec<u8>> {
        let open = self.files.get(fh)?;
        let fd = self.current_fd(&open)?;
        let size = size as usize;
        let mut buf = Vec::with_capacity(size);
        // A short read is only the end of the file; keep reading until then, as the kernel expects.
        while buf.len() < size {
            let (want, at) = (size - buf.len(), offset as i64 + buf.len() as i64);
            match sys::pread_append(fd, &mut buf, want, at) {
                Ok(0) => break,
                Ok(_) => {}
                Err(Errno(libc::EINTR)) => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(buf)
    }

    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> SysResult<usize> {
        let open = self.files.get(fh)?;
        let mut written = 0;
        while written < data.len() {
            match sys::pwrite(open.fd(), &data[written..], offset as i64 + written as i64) {
                Ok(0) => break,
                Ok(n) => written += n,
                Err(Errno(libc::EINTR)) => continue,
                Err(e) if written == 0 => return Err(e),
                Err(_) => break,
            }
        }
        Ok(written)
    }

    /// fsync/fdatasync reach the real file. Where the upper's filesystem does not order its
    /// metadata (no journal), the name the file has in the upper is synced too: it may come from
    /// a copy-up or create that nothing has synced yet. (On a journaled filesystem the file's own
    /// commit carries every earlier rename and create.)
    pub fn fsync(&self, fh: u64, datasync: bool) -> SysResult<()> {
        let open = self.files.get(fh)?;
        sys::fsync(open.fd(), datasync)?;
        if self.durability == super::copy_up::Durability::Synced {
            let state = open.node.state();
            if let Some(top) = state.branches.first().filter(|b| self.is_upper(std::slice::from_ref(b)) && b.layer == 0) {
                let parent = sys::cstring(&super::util::parent_of(top.path.to_bytes()))?;
                let dir = sys::open_beneath(self.upper()?.fd(), &parent, libc::O_RDONLY | libc::O_DIRECTORY)?;
                sys::fsync(dir.as_fd(), false)?;
            }
        }
        Ok(())
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
        sys::fallocate(self.files.get(fh)?.fd(), mode, offset as i64, length as i64)
    }

    pub fn lseek(&self, fh: u64, offset: i64, whence: i32) -> SysResult<i64> {
        let open = self.files.get(fh)?;
        sys::lseek(self.current_fd(&open)?, offset, whence)
    }

    pub fn copy_file_range(&self, fh_in: u64, off_in: u64, fh_out: u64, off_out: u64, len: u64) -> SysResult<usize> {
        let (input, out) = (self.files.get(fh_in)?, self.files.get(fh_out)?);
        let (mut a, mut b) = (off_in as i64, off_out as i64);
        sys::copy_file_range(self.current_fd(&input)?, &mut a, out.fd(), &mut b, len as usize)
    }

    /// An open file, for the FUSE layer to hand its fd to the kernel for passthrough.
    pub fn open_file(&self, fh: u64) -> SysResult<Arc<OpenFile>> {
        self.files.get(fh)
    }

    pub fn release(&self, fh: u64) {
        self.files.remove(fh);
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
