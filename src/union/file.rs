//! Open files and reads (overlayfs' file.c). A file is opened in the layer that holds its top
//! branch; the open goes through `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use crate::sys::{self, Errno, SysResult};

use super::Union;
use super::readdir::OpenDir;

#[derive(Debug)]
pub struct OpenFile {
    pub file: File,
}

/// Flags that would change the file: refused until the write path exists for this mount.
fn wants_write(flags: i32) -> bool {
    flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0
}

impl Union {
    pub fn open(&self, ino: u64, flags: i32) -> SysResult<u64> {
        let node = self.nodes.get(ino)?;
        if node.is_dir() {
            return Err(Errno(libc::EISDIR));
        }
        if wants_write(flags) {
            return Err(Errno::EROFS);
        }
        let top = node.top()?;
        // Keep only flags that mean something for the read side of the real file.
        let pass = flags & (libc::O_NONBLOCK | libc::O_DIRECT | libc::O_NOATIME);
        let fd = sys::open_beneath(self.stack.get(top.layer)?.fd(), &top.path, libc::O_RDONLY | pass)?;
        Ok(self.files.insert(OpenFile { file: File::from(fd) }))
    }

    pub fn file(&self, fh: u64) -> SysResult<Arc<OpenFile>> {
        self.files.get(fh)
    }

    pub fn read(&self, fh: u64, offset: u64, size: u32) -> SysResult<Vec<u8>> {
        let open = self.files.get(fh)?;
        let mut buf = vec![0u8; size as usize];
        let mut filled = 0;
        // A short read is only the end of the file; keep reading until then, as the kernel expects.
        while filled < buf.len() {
            match open.file.read_at(&mut buf[filled..], offset + filled as u64) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            }
        }
        buf.truncate(filled);
        Ok(buf)
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
