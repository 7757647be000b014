//! Unpack an OCI layer tar into an empty directory, in the format the union reads from a lower
//! and kernel overlayfs can mount: `.wh.NAME` becomes a 0/0 character device named NAME,
//! `.wh..wh..opq` becomes `trusted.overlay.opaque=y` on its directory. (In this per-layer form
//! the opaque marker only hides lower layers, so where it sits in the tar does not matter.)
//!
//! The tar is hostile until proven otherwise. The `tar` crate only parses; every file system
//! change is made here, relative to a directory fd, with each path walked one component at a
//! time through `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`: a `..` component, a symlink
//! planted earlier in the layer (relative, absolute, or `/.`), or a hard link naming something
//! outside the layer all fail with an error that names the entry. Absolute names are taken
//! relative to the layer root, as docker does. Ownership is set before the mode so that
//! set-uid bits survive; directory times are set last, once nothing more is created in them.

use std::ffi::{CStr, CString};
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use anyhow::{Context, anyhow, bail};

use super::tarsplit::{Recorder, RecordingReader};
use crate::sys::{self, Errno};

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
const OPAQUE_XATTR: &CStr = c"trusted.overlay.opaque";

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Most entries one layer may hold.
    pub max_entries: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_entries: 10_000_000 }
    }
}

#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub entries: u64,
    pub file_bytes: u64,
    /// Directories the tar needed but did not list (`.` for the root), made 0755 root:root.
    /// Tools such as umoci leave out unchanged parents; their attributes belong to the layers
    /// below, which the store applies once those are present.
    pub implicit_dirs: Vec<String>,
}

/// Unpack the tar read from `tar` into `dest`, an empty directory. Returns the reader, so the
/// caller can drain what follows the end-of-archive blocks (it counts in the DiffID).
pub fn unpack<R: Read>(tar: R, dest: &Path, limits: Limits) -> anyhow::Result<(Stats, R)> {
    let (stats, rest) = unpack_entries(tar, dest, limits, None)?;
    Ok((stats, rest.into_inner()))
}

/// [`unpack`], keeping a record of the tar stream from which [`tarsplit::Rebuild`] gives the
/// exact tar back. The tar is read to its end here, trailing bytes included, so that the
/// record holds all of it; the record is closed before this returns.
pub fn unpack_recorded<R: Read>(tar: R, dest: &Path, limits: Limits, record: Recorder) -> anyhow::Result<(Stats, R)> {
    let (stats, mut rest) = unpack_entries(tar, dest, limits, Some(record.clone()))?;
    io::copy(&mut rest, &mut io::sink()).context("reading the end of the layer tar")?;
    let rest = rest.into_inner();
    record.finish().context("writing the layer's tar record")?;
    Ok((stats, rest))
}

fn unpack_entries<R: Read>(tar: R, dest: &Path, limits: Limits, record: Option<Recorder>) -> anyhow::Result<(Stats, RecordingReader<R>)> {
    let root = sys::open_dir(dest).map_err(|e| anyhow!("opening {}: {e}", dest.display()))?;
    let tar = RecordingReader::new(tar, record.clone());
    let mut unpacker = Unpacker {
        root,
        is_root: sys::geteuid() == 0,
        stats: Stats::default(),
        dirs: Vec::new(),
        implicit: std::collections::BTreeSet::new(),
        saw_root: false,
        record,
    };
    let mut archive = tar::Archive::new(tar);
    for entry in archive.entries().context("reading the layer tar")? {
        let mut entry = entry.context("reading the layer tar")?;
        unpacker.stats.entries += 1;
        if unpacker.stats.entries > limits.max_entries {
            bail!("layer has more than {} entries", limits.max_entries);
        }
        let raw = entry.path_bytes().into_owned();
        unpacker.entry(&mut entry, &raw).with_context(|| format!("layer entry {:?}", String::from_utf8_lossy(&raw)))?;
    }
    unpacker.set_dir_times()?;
    let mut stats = unpacker.stats;
    if !unpacker.saw_root {
        stats.implicit_dirs.push(".".into());
    }
    stats.implicit_dirs.extend(unpacker.implicit.into_iter().filter_map(|p| String::from_utf8(p).ok()));
    Ok((stats, archive.into_inner()))
}

struct Unpacker {
    root: OwnedFd,
    is_root: bool,
    stats: Stats,
    /// Directories whose times are set at the end: (path components, mtime).
    dirs: Vec<(Vec<Vec<u8>>, libc::timespec)>,
    /// Parents created because an entry needed them, until an entry names them.
    implicit: std::collections::BTreeSet<Vec<u8>>,
    saw_root: bool,
    /// The tar-split record being written, if any.
    record: Option<Recorder>,
}

/// The metadata of an entry that survives unpacking.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: libc::timespec,
    xattrs: Vec<(CString, Vec<u8>)>,
}

impl Unpacker {
    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>, raw: &[u8]) -> anyhow::Result<()> {
        let components = split_path(raw)?;
        let kind = entry.header().entry_type();
        let meta = read_meta(entry)?;
        let Some((name, parents)) = components.split_last() else {
            // The layer root itself (`./`): only a directory may describe it.
            if kind.is_dir() {
                self.saw_root = true;
                self.apply_meta(self.root.as_fd(), c".", &meta, false)?;
                self.dirs.push((Vec::new(), meta.mtime));
            }
            return Ok(());
        };
        let is_marker = name.as_slice() == OPAQUE_MARKER || name.starts_with(WHITEOUT_PREFIX);
        let parent = match self.make_parents(parents) {
            Ok(parent) => parent,
            // umoci, replacing a directory by a file, writes the file and then a whiteout below
            // it (`dir`, then `dir/.wh.child`): the file already hides all that the whiteout
            // would, so it is skipped (umoci unpacks it the same way). A symlink on the way is
            // still refused by make_parents' walk.
            Err(_) if is_marker && self.under_non_directory(parents) => {
                tracing::debug!("skipping {:?}: its directory is not a directory in this layer", String::from_utf8_lossy(raw));
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        if name.as_slice() == OPAQUE_MARKER {
            let path = sys::fd_relative_path(parent.as_fd(), b".")?;
            return sys::lsetxattr(&path, OPAQUE_XATTR, b"y").map_err(|e| anyhow!("marking the directory opaque: {e}"));
        }
        if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
            if hidden.starts_with(WHITEOUT_PREFIX) {
                // Other `.wh..wh.` names are aufs bookkeeping (`.wh..wh.plnk`…), not content.
                return Ok(());
            }
            if hidden.is_empty() || hidden == b"." || hidden == b".." {
                bail!("a whiteout must name a file, not {:?}", String::from_utf8_lossy(hidden));
            }
            let hidden_path = join_path(parents, hidden);
            let hidden = sys::cstring(hidden)?;
            self.clear(parent.as_fd(), &hidden, false, &hidden_path)?;
            return sys::mknodat(parent.as_fd(), &hidden, libc::S_IFCHR, 0).map_err(|e| anyhow!("creating the whiteout: {e}"));
        }
        let cname = sys::cstring(name)?;
        let is_dir = kind.is_dir();
        let path = components.join(&b'/');
        self.clear(parent.as_fd(), &cname, is_dir, &path)?;
        match kind {
            tar::EntryType::Directory => {
                match sys::mkdirat(parent.as_fd(), &cname, 0o700) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => bail!("mkdir: {e}"),
                }
                self.apply_meta(parent.as_fd(), &cname, &meta, false)?;
                self.implicit.remove(&components.join(&b'/'));
                self.dirs.push((components.clone(), meta.mtime));
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let fd = sys::open_beneath_mode(parent.as_fd(), &cname, libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY, 0o600)
                    .map_err(|e| anyhow!("create: {e}"))?;
                let mut file = std::fs::File::from(fd);
                if let Some(record) = &self.record {
                    record.file_content(entry.raw_file_position(), entry.size(), &path)?;
                }
                let n = io::copy(entry, &mut file).context("writing the file")?;
                self.stats.file_bytes += n;
                self.apply_meta(parent.as_fd(), &cname, &meta, false)?;
            }
            tar::EntryType::Symlink => {
                let target = entry.link_name_bytes().ok_or_else(|| anyhow!("symlink without a target"))?;
                let target = sys::cstring(&target)?;
                sys::symlinkat(&target, parent.as_fd(), &cname).map_err(|e| anyhow!("symlink: {e}"))?;
                self.apply_meta(parent.as_fd(), &cname, &meta, true)?;
            }
            tar::EntryType::Link => {
                let target = entry.link_name_bytes().ok_or_else(|| anyhow!("hard link without a target"))?;
                self.hard_link(&target, parent.as_fd(), &cname)?;
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                let (fmt, dev) = match kind {
                    tar::EntryType::Char => (libc::S_IFCHR, device(entry)?),
                    tar::EntryType::Block => (libc::S_IFBLK, device(entry)?),
                    _ => (libc::S_IFIFO, 0),
                };
                if fmt != libc::S_IFIFO && !self.is_root {
                    tracing::warn!("skipping device node {:?}: creating devices needs root", String::from_utf8_lossy(raw));
                    return Ok(());
                }
                sys::mknodat(parent.as_fd(), &cname, fmt | 0o600, dev).map_err(|e| anyhow!("mknod: {e}"))?;
                self.apply_meta(parent.as_fd(), &cname, &meta, false)?;
            }
            other => tracing::warn!("skipping tar entry {:?} of unsupported type {other:?}", String::from_utf8_lossy(raw)),
        }
        Ok(())
    }

    /// Open the directory holding an entry, creating missing parents (0755, as docker does).
    /// Each step refuses symlinks, so nothing planted in the layer can redirect it.
    fn make_parents(&mut self, parents: &[Vec<u8>]) -> anyhow::Result<OwnedFd> {
        let mut dir = sys::open_beneath(self.root.as_fd(), c".", libc::O_DIRECTORY | libc::O_RDONLY)?;
        for (i, comp) in parents.iter().enumerate() {
            let c = sys::cstring(comp)?;
            let next = match sys::open_beneath(dir.as_fd(), &c, libc::O_DIRECTORY | libc::O_RDONLY) {
                Err(Errno::ENOENT) => {
                    sys::mkdirat(dir.as_fd(), &c, 0o755).map_err(|e| anyhow!("creating a parent directory: {e}"))?;
                    self.implicit.insert(parents[..=i].join(&b'/'));
                    sys::open_beneath(dir.as_fd(), &c, libc::O_DIRECTORY | libc::O_RDONLY)
                }
                r => r,
            };
            dir = next.map_err(|e| parent_error(&parents[..=i], e))?;
        }
        Ok(dir)
    }

    /// Whether `parents` runs into a non-directory of this layer that is not a symlink (a walk
    /// that refuses symlinks says ENOTDIR only for those).
    fn under_non_directory(&self, parents: &[Vec<u8>]) -> bool {
        let Ok(mut dir) = sys::open_beneath(self.root.as_fd(), c".", libc::O_DIRECTORY | libc::O_RDONLY) else { return false };
        for comp in parents {
            let Ok(c) = sys::cstring(comp) else { return false };
            match sys::open_beneath(dir.as_fd(), &c, libc::O_DIRECTORY | libc::O_RDONLY) {
                Ok(next) => dir = next,
                Err(Errno::ENOTDIR) => {
                    let kind = sys::fstatat(dir.as_fd(), &c).map(|st| st.st_mode & libc::S_IFMT);
                    return kind.is_ok_and(|k| k != libc::S_IFDIR && k != libc::S_IFLNK);
                }
                Err(_) => return false,
            }
        }
        false
    }

    /// Open the existing directory at `parents` without creating anything.
    fn open_parents(&self, parents: &[Vec<u8>]) -> anyhow::Result<OwnedFd> {
        let mut dir = sys::open_beneath(self.root.as_fd(), c".", libc::O_DIRECTORY | libc::O_RDONLY)?;
        for (i, comp) in parents.iter().enumerate() {
            let c = sys::cstring(comp)?;
            dir = sys::open_beneath(dir.as_fd(), &c, libc::O_DIRECTORY | libc::O_RDONLY)
                .map_err(|e| parent_error(&parents[..=i], e))?;
        }
        Ok(dir)
    }

    /// Make room for a new entry: a later entry of the same name replaces an earlier one, as
    /// when tar extracts; a directory stays when a directory replaces it.
    fn clear(&self, parent: BorrowedFd<'_>, name: &CStr, new_is_dir: bool, path: &[u8]) -> anyhow::Result<()> {
        let st = match sys::fstatat(parent, name) {
            Ok(st) => st,
            Err(Errno::ENOENT) => return Ok(()),
            Err(e) => bail!("stat of an earlier entry: {e}"),
        };
        let old_is_dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
        if old_is_dir && new_is_dir {
            return Ok(());
        }
        if let Some(record) = &self.record
            && record.displace(parent, name, path)?
        {
            return Ok(());
        }
        if old_is_dir {
            // std's remove_dir_all never follows symlinks inside the tree.
            let path = sys::fd_relative_path(parent, name.to_bytes())?;
            std::fs::remove_dir_all(sys::os_str(path.to_bytes())).context("replacing a directory")?;
        } else {
            sys::unlinkat(parent, name, 0).map_err(|e| anyhow!("replacing an earlier entry: {e}"))?;
        }
        Ok(())
    }

    fn hard_link(&self, target: &[u8], parent: BorrowedFd<'_>, name: &CStr) -> anyhow::Result<()> {
        let comps = split_path(target).context("hard link target")?;
        let Some((tname, tparents)) = comps.split_last() else {
            bail!("hard link to the layer root");
        };
        let tdir = self.open_parents(tparents).context("hard link target")?;
        let tname = sys::cstring(tname)?;
        let st = sys::fstatat(tdir.as_fd(), &tname)
            .map_err(|e| anyhow!("hard link target {:?} is not in this layer: {e}", String::from_utf8_lossy(target)))?;
        if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
            bail!("hard link to a directory");
        }
        sys::linkat(tdir.as_fd(), &tname, parent, name).map_err(|e| anyhow!("link: {e}"))
    }

    /// chown, then chmod (chown clears set-uid), then xattrs; times for non-directories.
    fn apply_meta(&self, parent: BorrowedFd<'_>, name: &CStr, meta: &Meta, symlink: bool) -> anyhow::Result<()> {
        if self.is_root {
            sys::lchownat(parent, name, meta.uid, meta.gid).map_err(|e| anyhow!("chown: {e}"))?;
        }
        if !symlink {
            sys::fchmodat(parent, name, meta.mode & 0o7777).map_err(|e| anyhow!("chmod: {e}"))?;
        }
        if !meta.xattrs.is_empty() {
            let path = sys::fd_relative_path(parent, name.to_bytes())?;
            for (k, v) in &meta.xattrs {
                sys::lsetxattr(&path, k, v).map_err(|e| anyhow!("setting xattr {}: {e}", k.to_string_lossy()))?;
            }
        }
        sys::lutimensat(parent, name, [meta.mtime, meta.mtime]).map_err(|e| anyhow!("setting times: {e}"))?;
        Ok(())
    }

    /// Creating entries changed their directories' mtimes; put back what the tar said,
    /// deepest first.
    fn set_dir_times(&mut self) -> anyhow::Result<()> {
        let mut dirs = std::mem::take(&mut self.dirs);
        dirs.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        for (path, mtime) in dirs {
            // A directory replaced by a later entry is gone or no longer a directory: skip it.
            let Ok(fd) = self.open_parents(&path) else { continue };
            sys::futimens(fd.as_fd(), [mtime, mtime]).map_err(|e| anyhow!("setting directory times: {e}"))?;
        }
        Ok(())
    }
}

fn join_path(parents: &[Vec<u8>], name: &[u8]) -> Vec<u8> {
    let mut p = parents.join(&b'/');
    if !p.is_empty() {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

fn parent_error(path: &[Vec<u8>], e: Errno) -> anyhow::Error {
    let shown = String::from_utf8_lossy(&path.join(&b'/')).into_owned();
    match e {
        Errno::ELOOP | Errno::EXDEV => anyhow!("{shown:?} is a symlink: refusing to write through it"),
        Errno::ENOTDIR => anyhow!("{shown:?} is not a directory"),
        e => anyhow!("{shown:?}: {e}"),
    }
}

/// The components of a tar path, relative to the layer root: empty and `.` components
/// dropped, a leading `/` ignored, `..` refused.
fn split_path(raw: &[u8]) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    for comp in raw.split(|&b| b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => bail!("path has a '..' component"),
            c if c.contains(&0) => bail!("path has a NUL byte"),
            c => out.push(c.to_vec()),
        }
    }
    Ok(out)
}

fn device<R: Read>(entry: &tar::Entry<'_, R>) -> anyhow::Result<libc::dev_t> {
    let h = entry.header();
    let major = h.device_major().context("device major")?.unwrap_or(0);
    let minor = h.device_minor().context("device minor")?.unwrap_or(0);
    Ok(libc::makedev(major, minor))
}

/// Mode, owner, mtime and xattrs, with PAX records (`uid`, `gid`, `mtime`, `SCHILY.xattr.*`)
/// taking precedence over the ustar fields.
fn read_meta<R: Read>(entry: &mut tar::Entry<'_, R>) -> anyhow::Result<Meta> {
    let h = entry.header();
    let mut meta = Meta {
        mode: h.mode().context("mode")?,
        uid: h.uid().context("uid")?.try_into().context("uid out of range")?,
        gid: h.gid().context("gid")?.try_into().context("gid out of range")?,
        mtime: libc::timespec { tv_sec: h.mtime().unwrap_or(0) as libc::time_t, tv_nsec: 0 },
        xattrs: Vec::new(),
    };
    let Some(pax) = entry.pax_extensions().context("PAX header")? else {
        return Ok(meta);
    };
    for ext in pax {
        let ext = ext.context("PAX record")?;
        let key = ext.key_bytes();
        let value = ext.value_bytes();
        let text = || std::str::from_utf8(value).ok().map(str::trim);
        match key {
            b"uid" => meta.uid = text().and_then(|v| v.parse().ok()).context("PAX uid is not a number")?,
            b"gid" => meta.gid = text().and_then(|v| v.parse().ok()).context("PAX gid is not a number")?,
            b"mtime" => meta.mtime = parse_pax_time(text().context("PAX mtime")?)?,
            _ => {
                if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                    if name.starts_with(b"trusted.overlay.") || name.starts_with(b"user.overlay.") {
                        // Overlay metadata belongs to the store's encoding, never to a layer's
                        // content: an opaque or redirect xattr smuggled in a tar is dropped.
                        tracing::warn!("dropping overlay xattr {:?} from a layer tar", String::from_utf8_lossy(name));
                        continue;
                    }
                    meta.xattrs.push((sys::cstring(name)?, value.to_vec()));
                }
            }
        }
    }
    Ok(meta)
}

fn parse_pax_time(s: &str) -> anyhow::Result<libc::timespec> {
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    let tv_sec: i64 = secs.parse().with_context(|| format!("bad PAX time {s:?}"))?;
    let digits: String = frac.chars().take(9).collect();
    let tv_nsec = if digits.is_empty() {
        0
    } else {
        let n: i64 = digits.parse().with_context(|| format!("bad PAX time {s:?}"))?;
        n * 10i64.pow(9 - digits.len() as u32)
    };
    Ok(libc::timespec { tv_sec: tv_sec as libc::time_t, tv_nsec: tv_nsec as _ })
}
