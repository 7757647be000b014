//! The /dev/fuse device without a library: open it, mount(2) a "fuse" filesystem served on it
//! (as root, no fusermount3), read requests and write replies. The FUSE transport probe and a
//! future io_uring transport use these; the regular mounts go through fuser.

use std::io::IoSlice;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

use super::{Errno, SysResult, check, open_rw, path_cstring};

/// Opens /dev/fuse for a new connection.
pub fn open_dev_fuse() -> SysResult<OwnedFd> {
    open_rw(c"/dev/fuse")
}

/// mount(2) of a "fuse" filesystem on `target`, served on `dev`: root directory, owned by
/// root, every user allowed, permissions checked by the kernel from the attributes we report.
pub fn mount_fuse(dev: BorrowedFd<'_>, source: &str, target: &Path) -> SysResult<()> {
    let data = format!(
        "fd={},rootmode={:o},user_id=0,group_id=0,allow_other,default_permissions",
        dev.as_raw_fd(),
        libc::S_IFDIR
    );
    let data = super::cstring(data.as_bytes())?;
    let source = super::cstring(source.as_bytes())?;
    let target = path_cstring(target)?;
    // SAFETY: all three strings are NUL-terminated and outlive the call.
    check(unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            c"fuse".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            data.as_ptr() as *const libc::c_void,
        )
    })?;
    Ok(())
}

/// One request from the device into `buf` (which must hold the largest request the
/// connection allows). ENODEV once the filesystem is unmounted.
pub fn read_request(dev: BorrowedFd<'_>, buf: &mut [u8]) -> SysResult<usize> {
    // SAFETY: `buf` is valid for writes of its length.
    let n = unsafe { libc::read(dev.as_raw_fd(), buf.as_mut_ptr() as *mut libc::c_void, buf.len()) };
    if n < 0 { Err(Errno::last()) } else { Ok(n as usize) }
}

/// One reply (out header, then the body) in a single write, as the device wants it.
pub fn write_reply(dev: BorrowedFd<'_>, header: &[u8], body: &[u8]) -> SysResult<()> {
    let iov = [IoSlice::new(header), IoSlice::new(body)];
    let n = if body.is_empty() { 1 } else { 2 };
    // SAFETY: IoSlice is ABI-compatible with iovec; both slices outlive the call.
    let r = unsafe { libc::writev(dev.as_raw_fd(), iov.as_ptr() as *const libc::iovec, n) };
    if r < 0 { Err(Errno::last()) } else { Ok(()) }
}
