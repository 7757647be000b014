//! The few raw system calls shalefs needs, each wrapped so the rest of the crate never touches
//! `unsafe` or a raw errno. Everything here returns [`Errno`], the errno the kernel gave, so the
//! union layer can hand the exact error back to the caller of the filesystem.
//!
//! Paths below a directory fd may be longer than one system call takes (PATH_MAX): a merged
//! tree may be as deep as the kernel lets a user build it, with `mkdirat` relative to a deep
//! directory. Every `*at` wrapper here names such a path through its parent (see [`deep`]).

mod deep;

pub use deep::{forget_deep_dirs, keep_deep_dirs};
use deep::{Base, PATH_LIMIT, dir_changed, near};

pub mod fuse_dev;
pub mod process;
pub mod uring;

use std::ffi::{CStr, CString, OsStr};
use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// A raw, positive errno value as the kernel returned it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Errno(pub i32);

impl Errno {
    pub const ENOENT: Errno = Errno(libc::ENOENT);
    pub const ENOTDIR: Errno = Errno(libc::ENOTDIR);
    pub const EINVAL: Errno = Errno(libc::EINVAL);
    pub const EIO: Errno = Errno(libc::EIO);
    pub const EROFS: Errno = Errno(libc::EROFS);
    pub const ENAMETOOLONG: Errno = Errno(libc::ENAMETOOLONG);
    pub const ENODATA: Errno = Errno(libc::ENODATA);
    pub const ERANGE: Errno = Errno(libc::ERANGE);
    pub const EBADF: Errno = Errno(libc::EBADF);
    pub const ENOTSUP: Errno = Errno(libc::ENOTSUP);
    pub const ELOOP: Errno = Errno(libc::ELOOP);
    pub const EEXIST: Errno = Errno(libc::EEXIST);
    pub const EISDIR: Errno = Errno(libc::EISDIR);
    pub const ENOTEMPTY: Errno = Errno(libc::ENOTEMPTY);
    pub const EPERM: Errno = Errno(libc::EPERM);
    pub const EXDEV: Errno = Errno(libc::EXDEV);

    /// The errno of the last failed libc call on this thread.
    pub fn last() -> Errno {
        Errno::from(io::Error::last_os_error())
    }
}

impl From<io::Error> for Errno {
    /// An `io::Error` without an OS code has no honest errno; EIO is what the kernel would say.
    fn from(e: io::Error) -> Errno {
        Errno(e.raw_os_error().unwrap_or(libc::EIO))
    }
}

impl From<Errno> for io::Error {
    fn from(e: Errno) -> io::Error {
        io::Error::from_raw_os_error(e.0)
    }
}

impl fmt::Debug for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", io::Error::from_raw_os_error(self.0))
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl std::error::Error for Errno {}

pub type SysResult<T> = Result<T, Errno>;

fn check(ret: libc::c_int) -> SysResult<libc::c_int> {
    if ret < 0 { Err(Errno::last()) } else { Ok(ret) }
}

fn check_size(ret: libc::ssize_t) -> SysResult<usize> {
    if ret < 0 { Err(Errno::last()) } else { Ok(ret as usize) }
}

/// A path as a C string; a NUL byte inside is EINVAL, as the kernel would say.
pub fn cstring(bytes: &[u8]) -> SysResult<CString> {
    CString::new(bytes).map_err(|_| Errno::EINVAL)
}

pub fn path_cstring(path: &Path) -> SysResult<CString> {
    cstring(path.as_os_str().as_bytes())
}

/// Open a directory that will serve as a layer root.
pub fn open_dir(path: &Path) -> SysResult<OwnedFd> {
    let c = path_cstring(path)?;
    // SAFETY: `c` is a valid NUL-terminated string; the returned fd is owned by us.
    let fd = check(unsafe { libc::open(c.as_ptr(), libc::O_DIRECTORY | libc::O_RDONLY | libc::O_CLOEXEC) })?;
    // SAFETY: `fd` was just returned by open(2) and nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Open a lower layer's directory through a private clone of its mount (open_tree with
/// OPEN_TREE_CLONE), as overlayfs takes its layers (clone_private_mount): the daemon's files
/// then pin the clone, not the mount the user sees, so `umount` of the layers' filesystem
/// never fails with EBUSY because of this daemon, even in the moment between the union's
/// unmount and the daemon's exit. Without the privilege (or the system call), a plain open.
pub fn open_dir_private(path: &Path) -> SysResult<OwnedFd> {
    let c = path_cstring(path)?;
    const OPEN_TREE_CLONE: libc::c_uint = 1;
    let flags = OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint;
    // SAFETY: `c` is a valid NUL-terminated string; open_tree returns a new fd or -1.
    let tree = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, c.as_ptr(), flags) };
    if tree < 0 {
        return open_dir(path);
    }
    // SAFETY: open_tree just returned this fd and nobody else owns it.
    let tree = unsafe { OwnedFd::from_raw_fd(tree as RawFd) };
    // A directory fd of the clone's root; the clone lives as long as fds into it do.
    // SAFETY: "." is a valid NUL-terminated string; the returned fd is owned by us.
    let fd = check(unsafe { libc::openat(tree.as_raw_fd(), c".".as_ptr(), libc::O_DIRECTORY | libc::O_RDONLY | libc::O_CLOEXEC) })?;
    // SAFETY: `fd` was just returned by openat(2) and nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A pidfd for process `pid` (pidfd_open), to wait for its exit without a race on PID reuse.
pub fn pidfd_open(pid: u32) -> SysResult<OwnedFd> {
    // SAFETY: pidfd_open has no memory-safety preconditions.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: pidfd_open just returned this fd and nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Wait up to `timeout_ms` for the process behind `pidfd` to exit; whether it did.
pub fn wait_pidfd(pidfd: BorrowedFd<'_>, timeout_ms: i32) -> SysResult<bool> {
    let mut p = libc::pollfd { fd: pidfd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    loop {
        // SAFETY: `p` is one valid pollfd.
        match check(unsafe { libc::poll(&mut p, 1, timeout_ms) }) {
            Ok(n) => return Ok(n > 0),
            Err(Errno(libc::EINTR)) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// lstat relative to a directory fd: never follows a symlink in the last component.
pub fn fstatat(dir: BorrowedFd<'_>, rel: &CStr) -> SysResult<libc::stat> {
    let (base, rel) = near(dir, rel, PATH_LIMIT)?;
    let dir = base.fd();
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `st` is a valid out pointer for one `struct stat`; `rel` is NUL-terminated.
    check(unsafe { libc::fstatat(dir.as_raw_fd(), rel.as_ptr(), st.as_mut_ptr(), libc::AT_SYMLINK_NOFOLLOW) })?;
    // SAFETY: fstatat succeeded, so it filled `st`.
    Ok(unsafe { st.assume_init() })
}

pub fn fstat(fd: BorrowedFd<'_>) -> SysResult<libc::stat> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `st` is a valid out pointer for one `struct stat`.
    check(unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: fstat succeeded, so it filled `st`.
    Ok(unsafe { st.assume_init() })
}

#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
const RESOLVE_NO_SYMLINKS: u64 = 0x04;
const RESOLVE_BENEATH: u64 = 0x08;

/// Open `rel` below `dir` without ever leaving it: no `..` above `dir`, no symlink anywhere on
/// the way (openat2 with RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS). This is what keeps the daemon
/// from being steered outside a layer by a symlink planted in an image.
pub fn open_beneath(dir: BorrowedFd<'_>, rel: &CStr, flags: i32) -> SysResult<OwnedFd> {
    open_beneath_mode(dir, rel, flags, 0)
}

pub fn readlinkat(dir: BorrowedFd<'_>, rel: &CStr) -> SysResult<Vec<u8>> {
    let (base, rel) = near(dir, rel, PATH_LIMIT)?;
    let dir = base.fd();
    let mut buf = vec![0u8; libc::PATH_MAX as usize];
    // SAFETY: `buf` is writable for `buf.len()` bytes; `rel` is NUL-terminated.
    let n = check_size(unsafe {
        libc::readlinkat(dir.as_raw_fd(), rel.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
    })?;
    buf.truncate(n);
    Ok(buf)
}

/// A path through /proc naming a file below a directory fd, for path-only system calls (the
/// xattr family has no `*at` form before Linux 6.13); it holds the fd of a deep parent, if
/// one had to be opened, for as long as the path is used.
pub struct ProcPath {
    path: CString,
    _parent: Option<std::sync::Arc<OwnedFd>>,
}

impl std::ops::Deref for ProcPath {
    type Target = CStr;
    fn deref(&self) -> &CStr {
        &self.path
    }
}

/// The [`ProcPath`] of `rel` below `dir`.
pub fn fd_relative_path(dir: BorrowedFd<'_>, rel: &[u8]) -> SysResult<ProcPath> {
    let rel = cstring(rel)?;
    // `/proc/self/fd/N/` takes room of the path's limit.
    let limit = PATH_LIMIT - 32;
    let (base, name) = near(dir, &rel, limit)?;
    let mut p = format!("/proc/self/fd/{}/", base.fd().as_raw_fd()).into_bytes();
    p.extend_from_slice(name.to_bytes());
    let path = cstring(&p)?;
    let _parent = match base {
        Base::Opened(fd) => Some(std::sync::Arc::new(fd)),
        Base::Kept(fd) => Some(fd),
        Base::Given(_) => None,
    };
    Ok(ProcPath { path, _parent })
}

/// Fill a buffer through `call(ptr, size)`, a get/list-xattr call that returns the length it
/// wrote, or with size 0 the length it needs. Most values are short: a first try with a small
/// buffer needs one system call; a longer one asks for the size, then reads, as often as the
/// value grows in between (ERANGE).
fn read_xattr_value(mut call: impl FnMut(*mut libc::c_void, usize) -> libc::ssize_t) -> SysResult<Vec<u8>> {
    let mut buf = vec![0u8; 256];
    loop {
        match check_size(call(buf.as_mut_ptr().cast(), buf.len())) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(Errno::ERANGE) => {
                let size = check_size(call(std::ptr::null_mut(), 0))?;
                buf = vec![0u8; size.max(1)];
            }
            Err(e) => return Err(e),
        }
    }
}

/// Read one xattr of a file without following a final symlink.
pub fn lgetxattr(path: &CStr, name: &CStr) -> SysResult<Vec<u8>> {
    // SAFETY: `buf` is writable for `size` bytes (or null with size 0); both strings are
    // NUL-terminated.
    read_xattr_value(|buf, size| unsafe { libc::lgetxattr(path.as_ptr(), name.as_ptr(), buf, size) })
}

/// One lgetxattr(2) into `buf`, nothing more (one FUSE request on a FUSE mount): its length.
pub fn lgetxattr_once(path: &CStr, name: &CStr, buf: &mut [u8]) -> SysResult<usize> {
    // SAFETY: `buf` is writable for its length; both strings are NUL-terminated.
    check_size(unsafe { libc::lgetxattr(path.as_ptr(), name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) })
}

/// List the xattr names of a file (NUL-separated) without following a final symlink.
pub fn llistxattr(path: &CStr) -> SysResult<Vec<u8>> {
    // SAFETY: `buf` is writable for `size` bytes (or null with size 0); `path` is NUL-terminated.
    read_xattr_value(|buf, size| unsafe { libc::llistxattr(path.as_ptr(), buf.cast(), size) })
}

/// getxattrat(2) and listxattrat(2), Linux 6.13: the same numbers on every architecture (system
/// calls added since 5.1 share one table).
const SYS_GETXATTRAT: libc::c_long = 464;
const SYS_LISTXATTRAT: libc::c_long = 465;

/// `struct xattr_args` of getxattrat(2).
#[repr(C)]
struct XattrArgs {
    value: u64,
    size: u32,
    flags: u32,
}

/// Whether the `*xattrat` calls exist here: unknown until the first try, then remembered.
static XATTRAT: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(XATTRAT_UNKNOWN);
const XATTRAT_UNKNOWN: u8 = 0;
const XATTRAT_MISSING: u8 = 2;

fn xattrat_result(r: SysResult<Vec<u8>>) -> Option<SysResult<Vec<u8>>> {
    use std::sync::atomic::Ordering;
    match r {
        Err(Errno(libc::ENOSYS)) => {
            XATTRAT.store(XATTRAT_MISSING, Ordering::Relaxed);
            None
        }
        other => {
            XATTRAT.store(1, Ordering::Relaxed);
            Some(other)
        }
    }
}

fn xattrat_missing() -> bool {
    XATTRAT.load(std::sync::atomic::Ordering::Relaxed) == XATTRAT_MISSING
}

/// Read one xattr of `rel` below `dir`, without following a final symlink: one system call on
/// Linux ≥ 6.13, else through the /proc path of `dir` (a walk through procfs more).
pub fn getxattr_at(dir: BorrowedFd<'_>, rel: &CStr, name: &CStr) -> SysResult<Vec<u8>> {
    let (base, rel) = near(dir, rel, PATH_LIMIT)?;
    let (dir, rel) = (base.fd(), &*rel);
    if !xattrat_missing() {
        let result = read_xattr_value(|buf, size| {
            let args = XattrArgs { value: buf as u64, size: size as u32, flags: 0 };
            // SAFETY: `args` points to a writable buffer of `size` bytes (or null with size 0)
            // and outlives the call; both strings are NUL-terminated.
            let ret = unsafe {
                libc::syscall(
                    SYS_GETXATTRAT,
                    dir.as_raw_fd(),
                    rel.as_ptr(),
                    libc::AT_SYMLINK_NOFOLLOW,
                    name.as_ptr(),
                    &args as *const XattrArgs,
                    std::mem::size_of::<XattrArgs>(),
                )
            };
            ret as libc::ssize_t
        });
        if let Some(r) = xattrat_result(result) {
            return r;
        }
    }
    lgetxattr(&fd_relative_path(dir, rel.to_bytes())?, name)
}

/// List the xattr names (NUL-separated) of `rel` below `dir`, without following a final
/// symlink; as [`getxattr_at`].
pub fn listxattr_at(dir: BorrowedFd<'_>, rel: &CStr) -> SysResult<Vec<u8>> {
    let (base, rel) = near(dir, rel, PATH_LIMIT)?;
    let (dir, rel) = (base.fd(), &*rel);
    if !xattrat_missing() {
        let result = read_xattr_value(|buf, size| {
            // SAFETY: `buf` is writable for `size` bytes (or null with size 0); `rel` is
            // NUL-terminated.
            let ret = unsafe {
                libc::syscall(SYS_LISTXATTRAT, dir.as_raw_fd(), rel.as_ptr(), libc::AT_SYMLINK_NOFOLLOW, buf, size)
            };
            ret as libc::ssize_t
        });
        if let Some(r) = xattrat_result(result) {
            return r;
        }
    }
    llistxattr(&fd_relative_path(dir, rel.to_bytes())?)
}

pub fn lsetxattr(path: &CStr, name: &CStr, value: &[u8]) -> SysResult<()> {
    // SAFETY: `value` is readable for its length; both strings are NUL-terminated.
    check(unsafe { libc::lsetxattr(path.as_ptr(), name.as_ptr(), value.as_ptr().cast(), value.len(), 0) })?;
    Ok(())
}

pub fn mknodat(dir: BorrowedFd<'_>, rel: &CStr, mode: libc::mode_t, dev: libc::dev_t) -> SysResult<()> {
    let (base, rel) = near(dir, rel, PATH_LIMIT)?;
    let dir = base.fd();
    // SAFETY: `rel` is NUL-terminated.
    check(unsafe { libc::mknodat(dir.as_raw_fd(), rel.as_ptr(), mode, dev) })?;
    Ok(())
}

pub fn unlinkat(dir: BorrowedFd<'_>, rel: &CStr, flags: i32) -> SysResult<()> {
    if flags & libc::AT_REMOVEDIR != 0 {
        dir_changed(dir, rel.to_bytes());
    }
    let (base, rel) = near(dir, rel, PATH_LIMIT)?;
    let dir = base.fd();
    // SAFETY: `rel` is NUL-terminated.
    check(unsafe { libc::unlinkat(dir.as_raw_fd(), rel.as_ptr(), flags) })?;
    Ok(())
}

pub fn mkdirat(dir: BorrowedFd<'_>, rel: &CStr, mode: libc::mode_t) -> SysResult<()> {
    let (base, rel) = near(dir, rel, PATH_LIMIT)?;
    let dir = base.fd();
    // SAFETY: `rel` is NUL-terminated.
    check(unsafe { libc::mkdirat(dir.as_raw_fd(), rel.as_ptr(), mode) })?;
    Ok(())
}

pub fn fstatvfs(fd: BorrowedFd<'_>) -> SysResult<libc::statvfs> {
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `st` is a valid out pointer for one `struct statvfs`.
    check(unsafe { libc::fstatvfs(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: fstatvfs succeeded, so it filled `st`.
    Ok(unsafe { st.assume_init() })
}

/// Detach a mount from the tree (umount2). `lazy` uses MNT_DETACH, for a mount still busy.
pub fn umount(path: &Path, lazy: bool) -> SysResult<()> {
    let c = path_cstring(path)?;
    let flags = if lazy { libc::MNT_DETACH } else { 0 };
    // SAFETY: `c` is NUL-terminated.
    check(unsafe { libc::umount2(c.as_ptr(), flags) })?;
    Ok(())
}

/// Start a new session so the daemon is not killed with the caller's terminal.
pub fn setsid() -> SysResult<()> {
    // SAFETY: setsid has no memory-safety preconditions.
    check(unsafe { libc::setsid() })?;
    Ok(())
}

/// Point fd `target` (0, 1 or 2) at /dev/null: the daemon lets go of the caller's terminal.
pub fn redirect_to_dev_null(target: RawFd) -> SysResult<()> {
    let null = open_rw(c"/dev/null")?;
    // SAFETY: both fds are valid; dup2 atomically replaces `target`.
    check(unsafe { libc::dup2(null.as_raw_fd(), target) })?;
    Ok(())
}

fn open_rw(path: &CStr) -> SysResult<OwnedFd> {
    // SAFETY: `path` is NUL-terminated; the returned fd is owned by us.
    let fd = check(unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) })?;
    // SAFETY: `fd` was just returned by open(2).
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Whether /dev/fuse can be opened for reading and writing, as a mount needs.
pub fn check_dev_fuse() -> SysResult<()> {
    open_rw(c"/dev/fuse").map(drop)
}

/// The process umask, read without changing it for longer than the call.
pub fn umask_value() -> u32 {
    // SAFETY: umask has no memory-safety preconditions; we restore the old value at once.
    unsafe {
        let old = libc::umask(0o022);
        libc::umask(old);
        old
    }
}

pub fn geteuid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

/// Write one line to syslog (LOG_DAEMON facility), the daemon's log when no file is given.
pub fn syslog(priority: libc::c_int, line: &[u8]) {
    let Ok(msg) = CString::new(line.iter().copied().filter(|&b| b != 0).collect::<Vec<u8>>()) else {
        return;
    };
    // SAFETY: the format string and `msg` are valid NUL-terminated strings.
    unsafe { libc::syslog(libc::LOG_DAEMON | priority, c"%s".as_ptr(), msg.as_ptr()) }
}

pub fn os_str(bytes: &[u8]) -> &OsStr {
    OsStr::from_bytes(bytes)
}

/// [`open_beneath`] with the mode for O_CREAT / O_TMPFILE.
pub fn open_beneath_mode(dir: BorrowedFd<'_>, rel: &CStr, flags: i32, mode: u32) -> SysResult<OwnedFd> {
    let (base, rel) = near(dir, rel, PATH_LIMIT)?;
    openat2(base.fd(), &rel, flags, mode)
}

/// openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS) of a path that fits one call.
fn openat2(dir: BorrowedFd<'_>, rel: &CStr, flags: i32, mode: u32) -> SysResult<OwnedFd> {
    let how = OpenHow {
        flags: (flags | libc::O_CLOEXEC | libc::O_NOFOLLOW) as u64,
        mode: mode as u64,
        resolve: RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS,
    };
    // SAFETY: `how` is a valid open_how of the size we pass; `rel` is NUL-terminated.
    let ret = unsafe {
        libc::syscall(libc::SYS_openat2, dir.as_raw_fd(), rel.as_ptr(), &how as *const OpenHow, std::mem::size_of::<OpenHow>())
    };
    if ret < 0 {
        return Err(Errno::last());
    }
    // SAFETY: openat2 returned a new fd that nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(ret as RawFd) })
}

pub fn renameat2(olddir: BorrowedFd<'_>, old: &CStr, newdir: BorrowedFd<'_>, new: &CStr, flags: u32) -> SysResult<()> {
    // Directories kept open below either name no longer are where their paths say.
    dir_changed(olddir, old.to_bytes());
    dir_changed(newdir, new.to_bytes());
    let (obase, old) = near(olddir, old, PATH_LIMIT)?;
    let (nbase, new) = near(newdir, new, PATH_LIMIT)?;
    let (olddir, newdir) = (obase.fd(), nbase.fd());
    // SAFETY: both names are NUL-terminated; the fds are valid for the call.
    check(unsafe { libc::renameat2(olddir.as_raw_fd(), old.as_ptr(), newdir.as_raw_fd(), new.as_ptr(), flags) })?;
    Ok(())
}

pub fn linkat(olddir: BorrowedFd<'_>, old: &CStr, newdir: BorrowedFd<'_>, new: &CStr) -> SysResult<()> {
    let (obase, old) = near(olddir, old, PATH_LIMIT)?;
    let (nbase, new) = near(newdir, new, PATH_LIMIT)?;
    let (olddir, newdir) = (obase.fd(), nbase.fd());
    // SAFETY: both names are NUL-terminated; the fds are valid for the call.
    check(unsafe { libc::linkat(olddir.as_raw_fd(), old.as_ptr(), newdir.as_raw_fd(), new.as_ptr(), 0) })?;
    Ok(())
}

pub fn symlinkat(target: &CStr, dir: BorrowedFd<'_>, rel: &CStr) -> SysResult<()> {
    let (base, rel) = near(dir, rel, PATH_LIMIT)?;
    let dir = base.fd();
    // SAFETY: both strings are NUL-terminated.
    check(unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), rel.as_ptr()) })?;
    Ok(())
}

/// chown without following a final symlink.
pub fn lchownat(dir: BorrowedFd<'_>, rel: &CStr, uid: u32, gid: u32) -> SysResult<()> {
    let (base, rel) = near(dir, rel, PATH_LIMIT)?;
    let dir = base.fd();
    // SAFETY: `rel` is NUL-terminated.
    check(unsafe { libc::fchownat(dir.as_raw_fd(), rel.as_ptr(), uid, gid, libc::AT_SYMLINK_NOFOLLOW) })?;
    Ok(())
}

pub fn fchmodat(dir: BorrowedFd<'_>, rel: &CStr, mode: u32) -> SysResult<()> {
    let (base, rel) = near(dir, rel, PATH_LIMIT)?;
    let dir = base.fd();
    // SAFETY: `rel` is NUL-terminated.
    check(unsafe { libc::fchmodat(dir.as_raw_fd(), rel.as_ptr(), mode, 0) })?;
    Ok(())
}

/// Set atime and mtime without following a final symlink; `UTIME_NOW`/`UTIME_OMIT` in tv_nsec
/// work as in utimensat(2).
pub fn lutimensat(dir: BorrowedFd<'_>, rel: &CStr, times: [libc::timespec; 2]) -> SysResult<()> {
    let (base, rel) = near(dir, rel, PATH_LIMIT)?;
    let dir = base.fd();
    // SAFETY: `times` points to two timespecs; `rel` is NUL-terminated.
    check(unsafe { libc::utimensat(dir.as_raw_fd(), rel.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) })?;
    Ok(())
}

pub fn lremovexattr(path: &CStr, name: &CStr) -> SysResult<()> {
    // SAFETY: both strings are NUL-terminated.
    check(unsafe { libc::lremovexattr(path.as_ptr(), name.as_ptr()) })?;
    Ok(())
}

/// setxattr with the caller's XATTR_CREATE / XATTR_REPLACE flags.
pub fn lsetxattr_flags(path: &CStr, name: &CStr, value: &[u8], flags: i32) -> SysResult<()> {
    // SAFETY: `value` is readable for its length; both strings are NUL-terminated.
    check(unsafe { libc::lsetxattr(path.as_ptr(), name.as_ptr(), value.as_ptr().cast(), value.len(), flags) })?;
    Ok(())
}

/// Set the process umask. The daemon runs with 0: the kernel has already applied the caller's.
pub fn set_umask(mask: u32) {
    // SAFETY: umask has no memory-safety preconditions.
    unsafe {
        libc::umask(mask);
    }
}

pub fn copy_file_range(fd_in: BorrowedFd<'_>, off_in: &mut i64, fd_out: BorrowedFd<'_>, off_out: &mut i64, len: usize) -> SysResult<usize> {
    // SAFETY: the offsets are valid pointers to i64; the fds are valid for the call.
    check_size(unsafe { libc::copy_file_range(fd_in.as_raw_fd(), off_in, fd_out.as_raw_fd(), off_out, len, 0) })
}

/// sendfile(2) from `fd_in` at `*off_in` to `fd_out` at its file position: an in-kernel copy
/// that works across filesystems, where copy_file_range does not.
pub fn sendfile(fd_out: BorrowedFd<'_>, fd_in: BorrowedFd<'_>, off_in: &mut i64, len: usize) -> SysResult<usize> {
    // SAFETY: `off_in` is a valid pointer to an off_t; the fds are valid for the call.
    check_size(unsafe { libc::sendfile(fd_out.as_raw_fd(), fd_in.as_raw_fd(), off_in, len) })
}

pub fn lseek(fd: BorrowedFd<'_>, offset: i64, whence: i32) -> SysResult<i64> {
    // SAFETY: lseek has no memory-safety preconditions.
    let r = unsafe { libc::lseek(fd.as_raw_fd(), offset, whence) };
    if r < 0 { Err(Errno::last()) } else { Ok(r) }
}

pub fn fallocate(fd: BorrowedFd<'_>, mode: i32, offset: i64, len: i64) -> SysResult<()> {
    // SAFETY: fallocate has no memory-safety preconditions.
    check(unsafe { libc::fallocate(fd.as_raw_fd(), mode, offset, len) })?;
    Ok(())
}

pub fn fsync(fd: BorrowedFd<'_>, datasync: bool) -> SysResult<()> {
    // SAFETY: fsync/fdatasync have no memory-safety preconditions.
    check(unsafe { if datasync { libc::fdatasync(fd.as_raw_fd()) } else { libc::fsync(fd.as_raw_fd()) } })?;
    Ok(())
}

/// Write a file's dirty pages out and wait for them (sync_file_range with WAIT_BEFORE, WRITE
/// and WAIT_AFTER): the data reaches the device and its blocks are allocated, with no journal
/// commit and no cache flush of its own.
pub fn write_out(fd: BorrowedFd<'_>) -> SysResult<()> {
    let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WRITE | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    // SAFETY: sync_file_range has no memory-safety preconditions; 0/0 means the whole file.
    check(unsafe { libc::sync_file_range(fd.as_raw_fd(), 0, 0, flags) })?;
    Ok(())
}

/// Start writing `len` bytes of a file's dirty pages from `offset`, without waiting
/// (sync_file_range with WRITE only).
pub fn start_write_out(fd: BorrowedFd<'_>, offset: i64, len: i64) -> SysResult<()> {
    // SAFETY: sync_file_range has no memory-safety preconditions.
    check(unsafe { libc::sync_file_range(fd.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE) })?;
    Ok(())
}

/// Commit the whole filesystem `fd` is on (syncfs).
pub fn syncfs(fd: BorrowedFd<'_>) -> SysResult<()> {
    // SAFETY: syncfs has no memory-safety preconditions.
    check(unsafe { libc::syncfs(fd.as_raw_fd()) })?;
    Ok(())
}

/// The filesystem type (statfs' f_type magic) of the filesystem `fd` is on.
pub fn fs_type(fd: BorrowedFd<'_>) -> SysResult<i64> {
    let mut st = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: `st` is a valid out pointer for one `struct statfs`.
    check(unsafe { libc::fstatfs(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: fstatfs succeeded, so it filled `st`.
    Ok(unsafe { st.assume_init() }.f_type)
}

pub fn ftruncate(fd: BorrowedFd<'_>, len: u64) -> SysResult<()> {
    let len = i64::try_from(len).map_err(|_| Errno(libc::EFBIG))?;
    // SAFETY: ftruncate has no memory-safety preconditions.
    check(unsafe { libc::ftruncate(fd.as_raw_fd(), len) })?;
    Ok(())
}

pub fn fchown(fd: BorrowedFd<'_>, uid: u32, gid: u32) -> SysResult<()> {
    // SAFETY: fchown has no memory-safety preconditions.
    check(unsafe { libc::fchown(fd.as_raw_fd(), uid, gid) })?;
    Ok(())
}

pub fn fchmod(fd: BorrowedFd<'_>, mode: u32) -> SysResult<()> {
    // SAFETY: fchmod has no memory-safety preconditions.
    check(unsafe { libc::fchmod(fd.as_raw_fd(), mode) })?;
    Ok(())
}

pub fn futimens(fd: BorrowedFd<'_>, times: [libc::timespec; 2]) -> SysResult<()> {
    // SAFETY: `times` points to two timespecs.
    check(unsafe { libc::futimens(fd.as_raw_fd(), times.as_ptr()) })?;
    Ok(())
}

pub fn pread(fd: BorrowedFd<'_>, buf: &mut [u8], offset: i64) -> SysResult<usize> {
    // SAFETY: `buf` is writable for its length.
    check_size(unsafe { libc::pread(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), offset) })
}

pub fn pwrite(fd: BorrowedFd<'_>, buf: &[u8], offset: i64) -> SysResult<usize> {
    // SAFETY: `buf` is readable for its length.
    check_size(unsafe { libc::pwrite(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len(), offset) })
}

/// The atime and mtime of a stat, as utimensat wants them.
pub fn stat_times(st: &libc::stat) -> [libc::timespec; 2] {
    [
        libc::timespec { tv_sec: st.st_atime, tv_nsec: st.st_atime_nsec },
        libc::timespec { tv_sec: st.st_mtime, tv_nsec: st.st_mtime_nsec },
    ]
}

/// Take an advisory lock on a whole file (flock(2)); it lasts until the fd is closed, so a
/// process killed while holding it lets go at once.
pub fn flock(fd: BorrowedFd<'_>, exclusive: bool) -> SysResult<()> {
    let op = if exclusive { libc::LOCK_EX } else { libc::LOCK_SH };
    loop {
        // SAFETY: a plain syscall on a valid fd.
        match check(unsafe { libc::flock(fd.as_raw_fd(), op) }) {
            Err(Errno(libc::EINTR)) => continue,
            r => return r.map(|_| ()),
        }
    }
}

/// Like [`flock`] but fails with EWOULDBLOCK instead of waiting.
pub fn try_flock(fd: BorrowedFd<'_>, exclusive: bool) -> SysResult<()> {
    let op = if exclusive { libc::LOCK_EX } else { libc::LOCK_SH };
    // SAFETY: a plain syscall on a valid fd.
    check(unsafe { libc::flock(fd.as_raw_fd(), op | libc::LOCK_NB) })?;
    Ok(())
}

/// pread into the unused capacity of `buf`, appending what was read: no zero-filling of a
/// buffer the kernel is about to overwrite (reads are the daemon's hot path).
pub fn pread_append(fd: BorrowedFd<'_>, buf: &mut Vec<u8>, max: usize, offset: i64) -> SysResult<usize> {
    buf.reserve(max);
    let spare = buf.spare_capacity_mut();
    let want = max.min(spare.len());
    // SAFETY: `spare` is writable for `want` bytes; pread writes at most that many.
    let n = check_size(unsafe { libc::pread(fd.as_raw_fd(), spare.as_mut_ptr().cast(), want, offset) })?;
    // SAFETY: pread initialised the first `n` bytes of the spare capacity.
    unsafe { buf.set_len(buf.len() + n) };
    Ok(n)
}

/// Make the calling thread background work: it runs only on a CPU nothing else wants
/// (SCHED_IDLE) and its disk reads wait behind everyone else's (the idle I/O class, which
/// mq-deadline and BFQ honour). Either refusal only leaves it at normal priority.
pub fn make_thread_background() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 names the calling thread; `param` is a valid sched_param.
    let _ = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
    const IOPRIO_WHO_PROCESS: libc::c_long = 1;
    const IOPRIO_CLASS_IDLE: libc::c_long = 3;
    const IOPRIO_CLASS_SHIFT: u32 = 13;
    // SAFETY: ioprio_set takes three integers; who 0 is the calling thread.
    let _ = unsafe { libc::syscall(libc::SYS_ioprio_set, IOPRIO_WHO_PROCESS, 0 as libc::c_long, IOPRIO_CLASS_IDLE << IOPRIO_CLASS_SHIFT) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    /// Paths past PATH_MAX below a directory fd work in every wrapper, and the walk that makes
    /// them work never follows a symlink on the way.
    #[test]
    fn paths_longer_than_path_max_work_and_never_cross_a_symlink() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = open_dir(dir.path()).expect("open");
        let comp = vec![b'c'; 200];
        let mut path = Vec::new();
        for _ in 0..45 {
            if !path.is_empty() {
                path.push(b'/');
            }
            path.extend_from_slice(&comp);
            mkdirat(root.as_fd(), &cstring(&path).unwrap(), 0o755).expect("mkdir at depth");
        }
        assert!(path.len() > 2 * PATH_LIMIT);
        let file = cstring(&[path.as_slice(), b"/f"].concat()).unwrap();
        drop(open_beneath_mode(root.as_fd(), &file, libc::O_CREAT | libc::O_WRONLY, 0o600).expect("create deep"));
        fchmodat(root.as_fd(), &file, 0o640).expect("chmod deep");
        assert_eq!(fstatat(root.as_fd(), &file).expect("stat deep").st_mode & 0o777, 0o640);
        let xpath = fd_relative_path(root.as_fd(), file.to_bytes()).expect("proc path");
        lsetxattr(&xpath, c"user.deep", b"v").expect("setxattr deep");
        assert_eq!(getxattr_at(root.as_fd(), &file, c"user.deep"), Ok(b"v".to_vec()));
        let moved = cstring(&[path.as_slice(), b"/g"].concat()).unwrap();
        renameat2(root.as_fd(), &file, root.as_fd(), &moved, 0).expect("rename deep");
        symlinkat(c"g", root.as_fd(), &file).expect("symlink deep");
        assert_eq!(readlinkat(root.as_fd(), &file), Ok(b"g".to_vec()));
        unlinkat(root.as_fd(), &file, 0).expect("unlink deep");
        // A symlink in place of a middle directory: the walk refuses it rather than follow.
        let middle = cstring(&path[..comp.len() * 10 + 9]).unwrap();
        renameat2(root.as_fd(), &middle, root.as_fd(), c"moved-away", 0).expect("move a middle dir");
        symlinkat(c"/", root.as_fd(), &middle).expect("plant a symlink");
        assert_eq!(fstatat(root.as_fd(), &moved).map(drop), Err(Errno::ELOOP));
    }

    /// Deep directories kept open for a root never outlive a rename or removal above them: the
    /// same path then names the new directory, not the moved or removed one.
    #[test]
    fn kept_deep_directories_follow_renames_and_removals() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = open_dir(dir.path()).expect("open");
        keep_deep_dirs(root.as_fd());
        let comp = vec![b'k'; 250];
        let chain = |levels: usize| vec![comp.clone(); levels].join(&b'/');
        for level in 1..=10 {
            mkdirat(root.as_fd(), &cstring(&chain(level)).unwrap(), 0o755).expect("mkdir");
        }
        let file = cstring(&[chain(10).as_slice(), b"/f"].concat()).unwrap();
        drop(open_beneath_mode(root.as_fd(), &file, libc::O_CREAT | libc::O_WRONLY, 0o600).expect("create"));
        let first = fstatat(root.as_fd(), &file).expect("stat").st_ino;
        // Move a directory half-way up away, and build the same path anew.
        renameat2(root.as_fd(), &cstring(&chain(5)).unwrap(), root.as_fd(), c"away", 0).expect("rename");
        assert_eq!(fstatat(root.as_fd(), &file).map(drop), Err(Errno::ENOENT));
        for level in 5..=10 {
            mkdirat(root.as_fd(), &cstring(&chain(level)).unwrap(), 0o755).expect("mkdir again");
        }
        drop(open_beneath_mode(root.as_fd(), &file, libc::O_CREAT | libc::O_WRONLY, 0o600).expect("create again"));
        let second = fstatat(root.as_fd(), &file).expect("stat").st_ino;
        assert_ne!(first, second);
        // Remove the bottom directory and make it again: still the new one.
        unlinkat(root.as_fd(), &file, 0).expect("unlink");
        unlinkat(root.as_fd(), &cstring(&chain(10)).unwrap(), libc::AT_REMOVEDIR).expect("rmdir");
        assert_eq!(fstatat(root.as_fd(), &file).map(drop), Err(Errno::ENOENT));
        mkdirat(root.as_fd(), &cstring(&chain(10)).unwrap(), 0o755).expect("mkdir a third time");
        symlinkat(c"t", root.as_fd(), &file).expect("symlink");
        assert_eq!(readlinkat(root.as_fd(), &file), Ok(b"t".to_vec()));
        forget_deep_dirs(root.as_fd());
    }

    #[test]
    fn xattrs_read_alike_by_dir_fd_and_by_path_short_and_long() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("f"), "").expect("write");
        let fd = open_dir(dir.path()).expect("open");
        let path = fd_relative_path(fd.as_fd(), b"f").expect("path");
        let long = vec![b'v'; 3000];
        lsetxattr(&path, c"user.short", b"s").expect("setxattr (needs user xattrs)");
        lsetxattr(&path, c"user.long", &long).expect("setxattr");
        assert_eq!(getxattr_at(fd.as_fd(), c"f", c"user.short"), Ok(b"s".to_vec()));
        assert_eq!(getxattr_at(fd.as_fd(), c"f", c"user.long"), Ok(long.clone()));
        assert_eq!(lgetxattr(&path, c"user.long"), Ok(long));
        assert_eq!(getxattr_at(fd.as_fd(), c"f", c"user.none"), Err(Errno::ENODATA));
        let mut names: Vec<Vec<u8>> = listxattr_at(fd.as_fd(), c"f").expect("list").split(|&b| b == 0).filter(|n| !n.is_empty()).map(<[u8]>::to_vec).collect();
        names.sort();
        assert_eq!(names, vec![b"user.long".to_vec(), b"user.short".to_vec()]);
        assert_eq!(llistxattr(&path).expect("list").len(), b"user.short\0user.long\0".len());
    }
}
