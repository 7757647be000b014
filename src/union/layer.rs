//! One layer directory and the stack of them (overlayfs' super.c/params.c): which layers there
//! are, in what order, and which whiteout encodings each is read in.
//!
//! Objects inside a layer are named by a path relative to the layer root and reached through the
//! root's fd (`fstatat`, `openat2(RESOLVE_BENEATH)`), so nothing outside the layer is reachable.
//! A path of any length works: `sys` reaches a deep one through its parent, kept open for the
//! layer's root (`sys::keep_deep_dirs`), so a call deep down costs what one near the root does.

use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::sys::{self, Errno, SysResult};

use super::whiteout::{self, DirMarks};

/// Whether a layer is the writable upper or one of the read-only lowers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Upper,
    Lower,
    /// The work directory: where copy-ups are built and removed objects wait to go.
    Work,
}

/// Which encodings of whiteouts and opaque directories are honoured in a layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Formats {
    /// `.wh.NAME` files and `.wh..wh..opq` markers.
    pub oci: bool,
    /// `trusted.overlay.*` xattrs.
    pub trusted_xattrs: bool,
    /// `user.overlay.*` xattrs (overlayfs' `userxattr`).
    pub user_xattrs: bool,
}

impl Formats {
    /// Lowers come from anywhere (image unpackers, podman's storage, another overlay's upper):
    /// every encoding is read.
    pub const LOWER: Formats = Formats { oci: true, trusted_xattrs: true, user_xattrs: true };
    /// The upper is written by shalefs alone, in overlayfs format; only that is interpreted, so
    /// a user may create a file called `.wh.foo` there, as on kernel overlayfs.
    pub const UPPER_TRUSTED: Formats = Formats { oci: false, trusted_xattrs: true, user_xattrs: false };
    pub const UPPER_USER: Formats = Formats { oci: false, trusted_xattrs: false, user_xattrs: true };
}

#[derive(Debug)]
pub struct Layer {
    pub path: PathBuf,
    pub root: OwnedFd,
    pub dev: u64,
    pub role: Role,
    pub formats: Formats,
    /// The OCI markers of each directory of a lower layer, read once with one readdir: a
    /// lookup then asks no `stat` of `.wh.NAME` or `.wh..wh..opq` (lowers never change).
    oci_dirs: std::sync::RwLock<std::collections::HashMap<Vec<u8>, std::sync::Arc<OciDir>>>,
}

/// The OCI whiteout markers in one directory of a layer.
#[derive(Debug, Default)]
struct OciDir {
    /// Names hidden by a `.wh.NAME` file.
    whiteouts: std::collections::HashSet<Vec<u8>>,
    /// A `.wh..wh..opq` marker is present.
    opaque: bool,
}

impl Layer {
    /// Open a layer directory; a symlink to the directory is followed once, here, and never again.
    pub fn open(path: &Path, role: Role, formats: Formats) -> anyhow::Result<Layer> {
        let kind = if role == Role::Upper { "upper directory" } else { "lower layer" };
        let meta = std::fs::metadata(path).map_err(|e| anyhow::anyhow!("{kind} {}: {e}", path.display()))?;
        if !meta.is_dir() {
            anyhow::bail!("{kind} {}: not a directory", path.display());
        }
        // A lower is held through a private clone of its mount, as overlayfs holds its layers.
        let open = if role == Role::Lower { sys::open_dir_private } else { sys::open_dir };
        let root = open(path).map_err(|e| anyhow::anyhow!("{kind} {}: {e}", path.display()))?;
        let st = sys::fstat(root.as_fd()).map_err(|e| anyhow::anyhow!("{kind} {}: {e}", path.display()))?;
        // A merged tree may be deeper than one system call's path: keep deep directories open.
        sys::keep_deep_dirs(root.as_fd());
        Ok(Layer { path: path.to_path_buf(), root, dev: st.st_dev, role, formats, oci_dirs: Default::default() })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.root.as_fd()
    }

    /// Another handle on this layer (a duplicate of its root fd, with deep directories kept
    /// for it alone), for a walk in another thread.
    pub fn duplicate(&self) -> SysResult<Layer> {
        let root = self.root.try_clone()?;
        sys::keep_deep_dirs(root.as_fd());
        Ok(Layer { path: self.path.clone(), root, dev: self.dev, role: self.role, formats: self.formats, oci_dirs: Default::default() })
    }

    pub fn stat(&self, rel: &CStr) -> SysResult<libc::stat> {
        sys::fstatat(self.fd(), rel)
    }

    /// Whether an entry that exists is a whiteout in this layer's encodings.
    /// `dir_marks` are the marks of the directory holding it.
    pub fn is_whiteout(&self, rel: &CStr, st: &libc::stat, dir_marks: DirMarks) -> bool {
        if whiteout::is_whiteout_device(st.st_mode, st.st_rdev) {
            return true;
        }
        dir_marks.xattr_whiteouts
            && whiteout::may_be_xattr_whiteout(st.st_mode, st.st_size)
            && self.overlay_xattr(rel, b"whiteout").is_some()
    }

    /// Read `overlay.<suffix>` in the namespaces this layer honours (trusted first).
    pub fn overlay_xattr(&self, rel: &CStr, suffix: &[u8]) -> Option<Vec<u8>> {
        let prefixes = [
            (self.formats.trusted_xattrs, whiteout::TRUSTED_PREFIX),
            (self.formats.user_xattrs, whiteout::USER_PREFIX),
        ];
        for (enabled, prefix) in prefixes {
            if !enabled {
                continue;
            }
            let Ok(name) = sys::cstring(&[prefix, suffix].concat()) else { continue };
            if let Ok(v) = sys::getxattr_at(self.fd(), rel, &name) {
                return Some(v);
            }
        }
        None
    }

    /// A regular file whose data is in a layer below (`overlay.metacopy`, written by a
    /// metadata-only copy-up under `metacopy=on`).
    pub fn is_metacopy(&self, rel: &CStr) -> bool {
        self.overlay_xattr(rel, METACOPY_XATTR).is_some()
    }

    /// The opaque / xattr-whiteout marks of a directory in this layer.
    pub fn dir_marks(&self, dir_rel: &[u8]) -> DirMarks {
        self.dir_info(dir_rel).0
    }

    /// A directory's marks and its redirect, if any. One listxattr says whether the directory
    /// has overlay xattrs at all (most have none), so the values are read only when there.
    pub fn dir_info(&self, dir_rel: &[u8]) -> (DirMarks, Option<Vec<u8>>) {
        let Ok(c) = sys::cstring(dir_rel) else { return (DirMarks::default(), None) };
        let (mut marks, mut redirect) = (DirMarks::default(), None);
        if self.has_overlay_xattrs(&c) {
            marks = self.overlay_xattr(&c, b"opaque").map(|v| whiteout::parse_opaque_value(&v)).unwrap_or_default();
            if !marks.opaque {
                redirect = self.overlay_xattr(&c, b"redirect");
            }
        }
        if self.formats.oci && !marks.opaque {
            marks.opaque = self.has_oci_opaque_marker(dir_rel);
        }
        (marks, redirect)
    }

    /// Whether the object has any xattr in an overlay namespace this layer honours.
    fn has_overlay_xattrs(&self, rel: &CStr) -> bool {
        // Unreadable list: assume there may be some, and ask for each.
        self.overlay_names(rel).is_none_or(|names| !names.is_empty())
    }

    /// The overlay xattrs an object has in the namespaces this layer honours, as suffixes
    /// (`opaque`, `metacopy`, ...), from one listxattr; `None` when the list cannot be read.
    pub fn overlay_names(&self, rel: &CStr) -> Option<Vec<Vec<u8>>> {
        let names = sys::listxattr_at(self.fd(), rel).ok()?;
        let prefixes = [
            (self.formats.trusted_xattrs, whiteout::TRUSTED_PREFIX),
            (self.formats.user_xattrs, whiteout::USER_PREFIX),
        ];
        Some(
            names
                .split(|&b| b == 0)
                .filter_map(|n| prefixes.iter().filter(|(on, _)| *on).find_map(|(_, p)| n.strip_prefix(*p)))
                .map(<[u8]>::to_vec)
                .collect(),
        )
    }

    /// Whether an OCI whiteout `.wh.NAME` for `name` sits in directory `dir_rel` of this layer.
    pub fn has_oci_whiteout(&self, dir_rel: &[u8], name: &[u8]) -> bool {
        if !self.formats.oci {
            return false;
        }
        if let Some(dir) = self.oci_dir(dir_rel) {
            return dir.whiteouts.contains(name);
        }
        let wh = join(dir_rel, &whiteout::oci_whiteout_name(name));
        sys::cstring(&wh).is_ok_and(|c| self.stat(&c).is_ok())
    }

    /// Whether directory `dir_rel` of this layer holds a `.wh..wh..opq` marker.
    fn has_oci_opaque_marker(&self, dir_rel: &[u8]) -> bool {
        if let Some(dir) = self.oci_dir(dir_rel) {
            return dir.opaque;
        }
        let marker = join(dir_rel, whiteout::OCI_OPAQUE_MARKER);
        sys::cstring(&marker).is_ok_and(|m| self.stat(&m).is_ok())
    }

    /// The OCI markers of a directory of a lower layer, from the cache or one readdir. None
    /// for the upper (which changes) or when the directory cannot be read.
    fn oci_dir(&self, dir_rel: &[u8]) -> Option<std::sync::Arc<OciDir>> {
        if self.role != Role::Lower {
            return None;
        }
        if let Some(d) = self.oci_dirs.read().ok()?.get(dir_rel) {
            return Some(d.clone());
        }
        let dir = match self.read_dir(dir_rel) {
            Ok(entries) => {
                let mut d = OciDir::default();
                for (name, _, _) in entries {
                    if name.as_slice() == whiteout::OCI_OPAQUE_MARKER {
                        d.opaque = true;
                    } else if let Some(hidden) = name.strip_prefix(b".wh.".as_slice()) {
                        d.whiteouts.insert(hidden.to_vec());
                    }
                }
                d
            }
            // Not a directory here: nothing in it to hide.
            Err(Errno::ENOENT) | Err(Errno::ENOTDIR) => OciDir::default(),
            Err(_) => return None,
        };
        let dir = std::sync::Arc::new(dir);
        self.oci_dirs.write().ok()?.insert(dir_rel.to_vec(), dir.clone());
        Some(dir)
    }

    /// Walk `dir` from this layer's root one component at a time, as overlayfs follows a
    /// redirect.
    pub fn walk_dir_path(&self, dir: &[u8]) -> PathWalk {
        let mut prefix: Vec<u8> = b".".to_vec();
        let mut opaque_on_way = false;
        for part in dir.split(|&b| b == b'/').filter(|c| !c.is_empty() && *c != b".") {
            let parent_marks = self.dir_marks(&prefix);
            let next = join(&prefix, part);
            if self.has_oci_whiteout(&prefix, part) {
                return PathWalk::Blocked;
            }
            let Ok(c) = sys::cstring(&next) else { return PathWalk::Blocked };
            let st = match self.stat(&c) {
                Ok(st) => st,
                Err(_) => return PathWalk::Missing,
            };
            if st.st_mode & libc::S_IFMT != libc::S_IFDIR || self.is_whiteout(&c, &st, parent_marks) {
                return PathWalk::Blocked;
            }
            opaque_on_way |= self.dir_marks(&next).opaque;
            prefix = next;
        }
        PathWalk::Dir { opaque_on_way }
    }

    /// The raw entries of a directory of this layer: name, d_type as S_IFMT bits (0 if the
    /// filesystem does not say), d_ino.
    pub fn read_dir(&self, dir_rel: &[u8]) -> SysResult<Vec<(Vec<u8>, u32, u64)>> {
        use std::os::unix::fs::DirEntryExt;
        let path = sys::fd_relative_path(self.fd(), dir_rel)?;
        let path = Path::new(sys::os_str(path.to_bytes()));
        let mut out = Vec::new();
        for entry in std::fs::read_dir(path)? {
            let entry = entry?;
            let mode = match entry.file_type() {
                Ok(t) => file_type_bits(t),
                Err(_) => 0,
            };
            out.push((entry.file_name().as_bytes().to_vec(), mode, entry.ino()));
        }
        Ok(out)
    }
}

impl Drop for Layer {
    fn drop(&mut self) {
        sys::forget_deep_dirs(self.root.as_fd());
    }
}

fn file_type_bits(t: std::fs::FileType) -> u32 {
    use std::os::unix::fs::FileTypeExt;
    if t.is_dir() {
        libc::S_IFDIR
    } else if t.is_file() {
        libc::S_IFREG
    } else if t.is_symlink() {
        libc::S_IFLNK
    } else if t.is_char_device() {
        libc::S_IFCHR
    } else if t.is_block_device() {
        libc::S_IFBLK
    } else if t.is_fifo() {
        libc::S_IFIFO
    } else if t.is_socket() {
        libc::S_IFSOCK
    } else {
        0
    }
}

/// What a walk down a path in one layer met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathWalk {
    /// A component is missing: this layer has nothing there; look further down.
    Missing,
    /// A non-directory or whiteout on the way: nothing there, here or below.
    Blocked,
    /// All directories; one of them opaque means nothing below this layer shows.
    Dir { opaque_on_way: bool },
}

/// `dir/name` for paths relative to a layer root, where the root itself is `.`.
pub fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    if dir == b"." {
        return name.to_vec();
    }
    let mut v = Vec::with_capacity(dir.len() + 1 + name.len());
    v.extend_from_slice(dir);
    v.push(b'/');
    v.extend_from_slice(name);
    v
}

pub fn join_c(dir: &CStr, name: &[u8]) -> SysResult<CString> {
    sys::cstring(&join(dir.to_bytes(), name))
}

/// The layers of one mount, top first: the upper (if any) at index 0, then the lowers from top
/// to bottom. The work directory, when there is an upper, is reachable as [`WORK_LAYER`] but is
/// never part of the merge.
#[derive(Debug)]
pub struct LayerStack {
    layers: Vec<Layer>,
    work: Option<Layer>,
}

/// `overlay.metacopy`: set on an upper file that holds metadata only.
pub const METACOPY_XATTR: &[u8] = b"metacopy";

/// The layer index that names the work directory in a [`super::node::Branch`].
pub const WORK_LAYER: u16 = u16::MAX;

impl LayerStack {
    pub fn new(upper: Option<Layer>, lowers: Vec<Layer>) -> anyhow::Result<LayerStack> {
        Self::with_work(upper, None, lowers)
    }

    pub fn with_work(upper: Option<Layer>, work: Option<Layer>, lowers: Vec<Layer>) -> anyhow::Result<LayerStack> {
        if upper.is_some() != work.is_some() {
            anyhow::bail!("an upper layer needs a work directory, and a work directory an upper layer");
        }
        if lowers.is_empty() && upper.is_none() {
            anyhow::bail!("no layers: give at least one lower layer");
        }
        let mut layers: Vec<Layer> = upper.into_iter().collect();
        layers.extend(lowers);
        if layers.len() >= WORK_LAYER as usize {
            anyhow::bail!("too many layers: {} (at most {})", layers.len(), WORK_LAYER - 1);
        }
        Ok(LayerStack { layers, work })
    }

    pub fn get(&self, index: u16) -> SysResult<&Layer> {
        if index == WORK_LAYER {
            return self.work.as_ref().ok_or(Errno::EIO);
        }
        self.layers.get(index as usize).ok_or(Errno::EIO)
    }

    pub fn work(&self) -> Option<&Layer> {
        self.work.as_ref()
    }

    /// Close every layer (the mount is gone); requests after this get EIO.
    pub fn release(&mut self) {
        self.layers.clear();
        self.work = None;
    }

    pub fn len(&self) -> usize {
        self.layers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Layer> {
        self.layers.iter()
    }

    pub fn upper(&self) -> Option<&Layer> {
        self.layers.first().filter(|l| l.role == Role::Upper)
    }

    /// The layer whose filesystem statfs reports: the upper, else the top lower (as overlayfs).
    pub fn statfs_layer(&self) -> &Layer {
        &self.layers[0]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_handles_root() {
        assert_eq!(join(b".", b"etc"), b"etc");
        assert_eq!(join(b"etc", b"passwd"), b"etc/passwd");
    }
}
