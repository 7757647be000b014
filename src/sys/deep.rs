//! Reaching paths of any depth below a directory fd.
//!
//! One system call takes a path of at most PATH_MAX bytes, and walks every component of it.
//! A path longer than that is named through its parent directory, opened by a walk in pieces
//! that each fit one call ([`near`]). Below the roots that ask for it ([`keep_deep_dirs`]: the
//! layers of a mount), the parents of deep paths are also kept open, so that the next call
//! in the same directory or one level away — how deep trees are made and removed — starts
//! from there instead of walking from the root again: the cost of a call does not grow with
//! depth. A kept directory is dropped when it, or a directory above it, is renamed or removed
//! through these wrappers ([`dir_changed`]); layers change through them only.
//!
//! Shorter paths than [`DEEP_PATH`] are passed as they are: nothing changes for them.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::ffi::CStr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};

use super::{Errno, SysResult, cstring, openat2};

/// The longest path one system call takes: PATH_MAX counts the terminating NUL.
pub(super) const PATH_LIMIT: usize = libc::PATH_MAX as usize - 1;

/// Paths longer than this, below a root that keeps deep directories, start from a kept one.
const DEEP_PATH: usize = 1024;

/// How many deep directories are kept open at most; the least recently used goes first.
const KEEP: usize = 256;

/// A directory a path is resolved from: the caller's, one opened on the way to a long path,
/// or one kept open for deep paths.
pub enum Base<'a> {
    Given(BorrowedFd<'a>),
    Opened(OwnedFd),
    Kept(Arc<OwnedFd>),
}

impl Base<'_> {
    pub fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Base::Given(fd) => *fd,
            Base::Opened(fd) => fd.as_fd(),
            Base::Kept(fd) => fd.as_fd(),
        }
    }
}

#[derive(Default)]
struct Kept {
    /// The roots that keep deep directories (by fd number, registered while they are open).
    roots: HashSet<RawFd>,
    /// (root, path below it) → the directory and when it was last used.
    dirs: HashMap<(RawFd, Vec<u8>), (Arc<OwnedFd>, u64)>,
    /// The directory used last: its parent is the likely next one when a tree is removed.
    last: Option<(RawFd, Vec<u8>)>,
    clock: u64,
}

static KEPT: Mutex<Option<Kept>> = Mutex::new(None);

fn with_kept<R>(f: impl FnOnce(&mut Kept) -> R) -> R {
    let mut guard = KEPT.lock().unwrap_or_else(|p| p.into_inner());
    f(guard.get_or_insert_with(Kept::default))
}

/// Keep the parents of deep paths below `root` open until [`forget_deep_dirs`].
pub fn keep_deep_dirs(root: BorrowedFd<'_>) {
    with_kept(|k| k.roots.insert(root.as_raw_fd()));
}

/// `root` is about to close: let go of everything kept below it.
pub fn forget_deep_dirs(root: BorrowedFd<'_>) {
    let fd = root.as_raw_fd();
    with_kept(|k| {
        k.roots.remove(&fd);
        k.dirs.retain(|(r, _), _| *r != fd);
        if k.last.as_ref().is_some_and(|(r, _)| *r == fd) {
            k.last = None;
        }
    });
}

/// The directory `rel` below `root` was renamed, replaced or removed: what was kept at or
/// below it is no longer there.
pub(super) fn dir_changed(root: BorrowedFd<'_>, rel: &[u8]) {
    let fd = root.as_raw_fd();
    let mut guard = KEPT.lock().unwrap_or_else(|p| p.into_inner());
    let Some(k) = guard.as_mut() else { return };
    if k.dirs.is_empty() || !k.roots.contains(&fd) {
        return;
    }
    let below = |p: &[u8]| p == rel || p.strip_prefix(rel).is_some_and(|rest| rest.first() == Some(&b'/'));
    k.dirs.retain(|(r, p), _| *r != fd || !below(p));
    if k.last.as_ref().is_some_and(|(r, p)| *r == fd && below(p)) {
        k.last = None;
    }
}

/// Where `rel` below `dir` can be named to one system call whose path may be `limit` bytes:
/// `dir` and `rel` themselves when `rel` fits (and is not deep below a root that keeps deep
/// directories); else `rel`'s parent directory and its last component. The parent is reached
/// through directories only (RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS), so never outside `dir`.
pub fn near<'a>(dir: BorrowedFd<'a>, rel: &'a CStr, limit: usize) -> SysResult<(Base<'a>, Cow<'a, CStr>)> {
    let bytes = rel.to_bytes();
    let deep = bytes.len() > DEEP_PATH && is_kept_root(dir);
    if bytes.len() <= limit && !deep {
        return Ok((Base::Given(dir), Cow::Borrowed(rel)));
    }
    let Some(slash) = bytes.iter().rposition(|&b| b == b'/') else {
        // One component longer than a path may be: the kernel's answer, as a single call.
        return if bytes.len() <= limit { Ok((Base::Given(dir), Cow::Borrowed(rel))) } else { Err(Errno::ENAMETOOLONG) };
    };
    let name = Cow::Owned(cstring(&bytes[slash + 1..])?);
    let parent = &bytes[..slash];
    if deep {
        return Ok((Base::Kept(kept_dir(dir, parent)?), name));
    }
    Ok((Base::Opened(walk_to_dir(dir, parent, PATH_LIMIT)?), name))
}

fn is_kept_root(dir: BorrowedFd<'_>) -> bool {
    let guard = KEPT.lock().unwrap_or_else(|p| p.into_inner());
    guard.as_ref().is_some_and(|k| k.roots.contains(&dir.as_raw_fd()))
}

/// The directory `path` below the kept root `root`: kept already; or one level from a kept
/// parent, ancestor or child (a tree made or removed level by level); or walked from the root.
fn kept_dir(root: BorrowedFd<'_>, path: &[u8]) -> SysResult<Arc<OwnedFd>> {
    let r = root.as_raw_fd();
    let start = with_kept(|k| {
        k.clock += 1;
        let now = k.clock;
        if let Some((fd, used)) = k.dirs.get_mut(&(r, path.to_vec())) {
            *used = now;
            return Start::Here(fd.clone());
        }
        // A child of `path` used last: `path` is its `..`.
        if let Some((lr, lp)) = &k.last
            && *lr == r
            && lp.strip_prefix(path).is_some_and(|rest| rest.first() == Some(&b'/') && !rest[1..].contains(&b'/'))
            && let Some((fd, _)) = k.dirs.get(&(r, lp.clone()))
        {
            return Start::Child(fd.clone());
        }
        // The nearest kept ancestor a few levels up.
        let mut end = path.len();
        for _ in 0..8 {
            let Some(i) = path[..end].iter().rposition(|&b| b == b'/') else { break };
            end = i;
            if let Some((fd, _)) = k.dirs.get(&(r, path[..end].to_vec())) {
                return Start::Ancestor(fd.clone(), end + 1);
            }
        }
        Start::Root
    });
    let fd = match start {
        Start::Here(fd) => {
            with_kept(|k| k.last = Some((r, path.to_vec())));
            return Ok(fd);
        }
        Start::Child(child) => open_parent(child.as_fd())?,
        Start::Ancestor(anc, from) => walk_to_dir(anc.as_fd(), &path[from..], PATH_LIMIT)?,
        Start::Root => walk_to_dir(root, path, PATH_LIMIT)?,
    };
    let fd = Arc::new(fd);
    with_kept(|k| {
        // The root may have been let go of meanwhile: then keep nothing.
        if !k.roots.contains(&r) {
            return;
        }
        if k.dirs.len() >= KEEP
            && let Some(oldest) = k.dirs.iter().min_by_key(|(_, (_, used))| *used).map(|(key, _)| key.clone())
        {
            k.dirs.remove(&oldest);
        }
        k.clock += 1;
        k.dirs.insert((r, path.to_vec()), (fd.clone(), k.clock));
        k.last = Some((r, path.to_vec()));
    });
    Ok(fd)
}

enum Start {
    Here(Arc<OwnedFd>),
    Child(Arc<OwnedFd>),
    Ancestor(Arc<OwnedFd>, usize),
    Root,
}

/// The parent of a kept directory. It is still at its path (renames and removals drop what
/// is kept below them), so its `..` is the directory that path names: inside the root.
fn open_parent(dir: BorrowedFd<'_>) -> SysResult<OwnedFd> {
    // SAFETY: the string is NUL-terminated; the returned fd is owned by us.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), c"..".as_ptr(), libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: `fd` was just returned by openat and nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Open the directory `path` below `dir` (O_PATH), resolving at most `limit` bytes per call.
pub(super) fn walk_to_dir(dir: BorrowedFd<'_>, path: &[u8], limit: usize) -> SysResult<OwnedFd> {
    let mut cur: Option<OwnedFd> = None;
    let mut rest = path;
    loop {
        while let Some(r) = rest.strip_prefix(b"/") {
            rest = r;
        }
        if rest.is_empty() {
            return match cur {
                Some(fd) => Ok(fd),
                None => open_path_dir(dir, c"."),
            };
        }
        let end = if rest.len() <= limit {
            rest.len()
        } else {
            rest[..=limit].iter().rposition(|&b| b == b'/').filter(|&i| i > 0).ok_or(Errno::ENAMETOOLONG)?
        };
        let base = cur.as_ref().map_or(dir, |f| f.as_fd());
        let next = open_path_dir(base, &cstring(&rest[..end])?)?;
        cur = Some(next);
        rest = &rest[end..];
    }
}

fn open_path_dir(dir: BorrowedFd<'_>, rel: &CStr) -> SysResult<OwnedFd> {
    openat2(dir, rel, libc::O_PATH | libc::O_DIRECTORY, 0)
}
