//! Containers back into layers: one walk of a container's upper (cost proportional to the
//! upper, not the image) that says what changed in the merged view ([`changes`], for `diff`)
//! and writes those changes as an OCI layer tar ([`write_tar`], for `commit`), plus a walk of
//! a whole merged view for `export`.
//!
//! The upper is read in the format shalefs writes it (overlayfs'): a 0/0 device or xattr
//! whiteout becomes `.wh.NAME`; an opaque directory `.wh..wh..opq`, written only where a
//! directory lies below; a renamed directory (a redirect) is written in full at its new path
//! (its old path has a whiteout of its own); a metacopy file is written with its data from
//! below. Objects are read through a [`View`] of the container (upper over its lowers), so the
//! tar holds what the mount shows, and a second view of the lowers alone says what was there
//! before. Names an OCI layer cannot hold (a user's own `.wh.x`) are refused by name.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::path::PathBuf;

use anyhow::{Context, anyhow, bail};

use crate::sys::{self, Errno};
use crate::union::layer::{Formats, Layer, Role, join};
use crate::union::view::{Obj, View};

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";

/// What happened to a path of the merged view, as `docker diff` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Change {
    Added,
    Changed,
    Deleted,
}

impl Change {
    pub fn letter(self) -> char {
        match self {
            Change::Added => 'A',
            Change::Changed => 'C',
            Change::Deleted => 'D',
        }
    }
}

/// One step of the walk, in the order a tar holds them (a directory before its contents).
/// Paths are relative to the root, without a leading `/`; the root is the empty path.
#[derive(Debug, Clone)]
pub enum Op {
    /// An object of the merged view, written to the layer; `change` is what `diff` reports
    /// (none for a directory that is only on the way to a change).
    Entry { path: Vec<u8>, obj: Obj, change: Option<Change> },
    /// A name deleted from below: `.wh.NAME` in the layer, `D` in the diff.
    Whiteout { path: Vec<u8> },
    /// A directory whose lower contents are hidden: `.wh..wh..opq` in it.
    Opaque { dir: Vec<u8> },
    /// A name below an opaque or replaced directory that is gone from the merged view: `D`
    /// in the diff, nothing in the layer (the opaque marker hides it).
    Gone { path: Vec<u8> },
}

/// A container's layers: its upper (in the formats it is written in) and its lowers, top first.
pub struct Source {
    pub upper: PathBuf,
    pub upper_formats: Formats,
    pub lowers: Vec<PathBuf>,
}

/// The views a walk reads: the container as mounted, and its lowers alone (the "before").
pub struct Walker {
    pub merged: View,
    below: View,
    upper: Layer,
}

impl Walker {
    pub fn open(src: &Source) -> anyhow::Result<Walker> {
        let mut layers = vec![(src.upper.clone(), src.upper_formats)];
        layers.extend(src.lowers.iter().map(|l| (l.clone(), Formats::LOWER)));
        Ok(Walker {
            merged: View::open(&layers)?,
            below: View::open(&layers[1..])?,
            upper: Layer::open(&src.upper, Role::Upper, src.upper_formats)?,
        })
    }

    /// Every change in the upper, as the ops a layer is written from.
    pub fn ops(&self) -> anyhow::Result<Vec<Op>> {
        let mut ops = Vec::new();
        let (m, b) = (self.merged.root().map_err(io_err)?, self.below.root().map_err(io_err)?);
        if meta_differs(&m.stat, &b.stat) {
            ops.push(Op::Entry { path: Vec::new(), obj: m, change: None });
        }
        self.walk_dir(b"", &m, Some(&b), true, &mut ops)?;
        Ok(ops)
    }

    /// The upper directory at `rel`: `before` is what the lowers have at that path, `merged`
    /// whether it shows the lowers' contents too (a merged directory). Returns whether a name
    /// in it was added or deleted (which makes it changed, as docker counts it).
    fn walk_dir(&self, rel: &[u8], dir: &Obj, before: Option<&Obj>, merged: bool, ops: &mut Vec<Op>) -> anyhow::Result<bool> {
        let rel_c = if rel.is_empty() { b".".to_vec() } else { rel.to_vec() };
        let marks = self.upper.dir_marks(&rel_c);
        let mut names: Vec<Vec<u8>> =
            self.upper.read_dir(&rel_c).map_err(|e| anyhow!("reading the upper directory /{}: {e}", show(rel)))?.into_iter().map(|e| e.0).filter(|n| n != b"." && n != b"..").collect();
        names.sort();
        let mut added_or_deleted = false;
        for name in names {
            let path = join_rel(rel, &name);
            let crel = sys::cstring(&join(&rel_c, &name))?;
            let st = match self.upper.stat(&crel) {
                Ok(st) => st,
                Err(Errno::ENOENT) => continue,
                Err(e) => bail!("reading /{}: {e}", show(&path)),
            };
            let was = match before.filter(|b| b.is_dir()) {
                Some(b) => self.below.lookup(b.ino, &name).map_err(|e| anyhow!("reading /{} below: {e}", show(&path)))?,
                None => None,
            };
            if self.upper.is_whiteout(&crel, &st, marks) {
                // A whiteout in a directory that is not merged hides nothing.
                if merged && was.is_some() {
                    ops.push(Op::Whiteout { path });
                    added_or_deleted = true;
                }
                continue;
            }
            check_name(&path)?;
            let Some(obj) = self.merged.lookup(dir.ino, &name).map_err(|e| anyhow!("reading /{}: {e}", show(&path)))? else { continue };
            let change = if was.is_some() { Change::Changed } else { Change::Added };
            added_or_deleted |= change == Change::Added;
            if !obj.is_dir() {
                ops.push(Op::Entry { path, obj, change: Some(change) });
                continue;
            }
            let (dmarks, redirect) = self.upper.dir_info(crel.to_bytes());
            let was_dir = was.filter(|w| w.is_dir());
            let stays_merged = merged && was_dir.is_some() && !dmarks.opaque && redirect.is_none();
            if stays_merged {
                let at = ops.len();
                ops.push(Op::Entry { path: path.clone(), obj, change: None });
                let inner = self.walk_dir(&path, &obj, was_dir.as_ref(), true, ops)?;
                let own = was_dir.is_some_and(|w| meta_differs(&obj.stat, &w.stat));
                if (inner || own)
                    && let Op::Entry { change, .. } = &mut ops[at]
                {
                    *change = Some(Change::Changed);
                }
                continue;
            }
            ops.push(Op::Entry { path: path.clone(), obj, change: Some(change) });
            if merged && let Some(w) = &was_dir {
                ops.push(Op::Opaque { dir: path.clone() });
                let now: std::collections::HashSet<Vec<u8>> =
                    self.merged.children(obj.ino).map_err(io_err)?.into_iter().map(|c| c.0).collect();
                for (gone, _) in self.below.children(w.ino).map_err(io_err)? {
                    if !now.contains(&gone) {
                        ops.push(Op::Gone { path: join_rel(&path, &gone) });
                    }
                }
            }
            if redirect.is_some() {
                // Moved here: everything in it is new at this path, whatever the upper holds.
                self.whole_tree(&path, &obj, Some(Change::Added), ops)?;
            } else {
                self.walk_dir(&path, &obj, was.as_ref(), false, ops)?;
            }
        }
        Ok(added_or_deleted)
    }

    /// Every object below directory `dir` of the merged view, as entries with `change`.
    pub fn whole_tree(&self, rel: &[u8], dir: &Obj, change: Option<Change>, ops: &mut Vec<Op>) -> anyhow::Result<()> {
        for (name, obj) in self.merged.children(dir.ino).map_err(|e| anyhow!("reading /{}: {e}", show(rel)))? {
            let path = join_rel(rel, &name);
            check_name(&path)?;
            ops.push(Op::Entry { path: path.clone(), obj, change });
            if obj.is_dir() {
                self.whole_tree(&path, &obj, change, ops)?;
            }
        }
        Ok(())
    }
}

/// The `diff` lines: sorted by path, as docker prints them.
pub fn changes(ops: &[Op]) -> Vec<(Change, String)> {
    let mut out: Vec<(Change, String)> = ops
        .iter()
        .filter_map(|op| match op {
            Op::Entry { path, change: Some(c), .. } => Some((*c, path)),
            Op::Whiteout { path } | Op::Gone { path } => Some((Change::Deleted, path)),
            _ => None,
        })
        .map(|(c, p)| (c, format!("/{}", String::from_utf8_lossy(p))))
        .collect();
    out.sort_by(|a, b| a.1.cmp(&b.1));
    out
}

/// A directory's own attributes as `diff` compares them (docker: mode, size, mtime; owner too).
fn meta_differs(a: &libc::stat, b: &libc::stat) -> bool {
    a.st_mode != b.st_mode
        || a.st_uid != b.st_uid
        || a.st_gid != b.st_gid
        || a.st_mtime != b.st_mtime
        || a.st_mtime_nsec != b.st_mtime_nsec
}

/// A name OCI cannot carry: any entry whose name starts with `.wh.` reads as a whiteout.
fn check_name(path: &[u8]) -> anyhow::Result<()> {
    let name = path.rsplit(|&b| b == b'/').next().unwrap_or(path);
    if name.starts_with(WHITEOUT_PREFIX) {
        bail!(
            "/{} cannot be committed: an OCI layer reads a name starting with \".wh.\" as a whiteout (rename or remove it)",
            show(path)
        );
    }
    Ok(())
}

fn join_rel(dir: &[u8], name: &[u8]) -> Vec<u8> {
    if dir.is_empty() { name.to_vec() } else { [dir, b"/", name].concat() }
}

fn show(path: &[u8]) -> String {
    String::from_utf8_lossy(path).into_owned()
}

fn io_err(e: Errno) -> anyhow::Error {
    anyhow!("{e}")
}

// ---- the tar ----

/// How entries are written.
#[derive(Debug, Clone, Copy, Default)]
pub struct TarOptions {
    /// `--timestamp`: no entry time later than this (seconds since the epoch).
    pub clamp: Option<i64>,
}

/// Which xattrs a layer keeps: user's, file capabilities and POSIX ACLs (the overlay's own
/// never reach here; SELinux labels and other `trusted.*`/`security.*` are the host's).
fn kept_xattr(name: &[u8]) -> bool {
    name.starts_with(b"user.")
        || name == b"security.capability"
        || name == b"system.posix_acl_access"
        || name == b"system.posix_acl_default"
}

/// Write `ops` as a tar (ustar, with PAX records for xattrs, long names, sub-second times and
/// large ids) to `out`, reading objects from `view`; hard links of one object become tar hard
/// links to its first name. Returns `out` after the end-of-archive blocks.
pub fn write_tar<W: Write>(view: &View, ops: &[Op], out: W, opts: TarOptions) -> anyhow::Result<W> {
    let mut tar = tar::Builder::new(out);
    let mut first_name: HashMap<u64, Vec<u8>> = HashMap::new();
    for op in ops {
        match op {
            Op::Entry { path, obj, .. } => {
                write_entry(&mut tar, view, path, obj, &mut first_name, opts).with_context(|| format!("writing /{} to the layer", show(path)))?
            }
            Op::Whiteout { path } => {
                let (dir, name) = split_last(path);
                let wh = join_rel(dir, &[WHITEOUT_PREFIX, name].concat());
                write_marker(&mut tar, &wh, opts).with_context(|| format!("writing the whiteout of /{}", show(path)))?;
            }
            Op::Opaque { dir } => {
                write_marker(&mut tar, &join_rel(dir, OPAQUE_MARKER), opts).with_context(|| format!("writing the opaque marker of /{}", show(dir)))?
            }
            Op::Gone { .. } => {}
        }
    }
    tar.into_inner().context("finishing the layer tar")
}

fn split_last(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (b"", path),
    }
}

/// A whiteout or opaque marker: an empty regular file, as docker and containerd write them.
fn write_marker<W: Write>(tar: &mut tar::Builder<W>, path: &[u8], opts: TarOptions) -> anyhow::Result<()> {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_size(0);
    h.set_mtime(opts.clamp.unwrap_or(0).max(0) as u64);
    let mut pax = Pax::default();
    set_name(&mut h, &mut pax, path, false)?;
    pax.write(tar)?;
    h.set_cksum();
    tar.append(&h, io::empty())?;
    Ok(())
}

fn write_entry<W: Write>(
    tar: &mut tar::Builder<W>,
    view: &View,
    path: &[u8],
    obj: &Obj,
    first_name: &mut HashMap<u64, Vec<u8>>,
    opts: TarOptions,
) -> anyhow::Result<()> {
    let st = &obj.stat;
    let kind = obj.kind();
    let mut h = tar::Header::new_ustar();
    let mut pax = Pax::default();
    let shown = if path.is_empty() { b".".to_vec() } else { path.to_vec() };
    if kind != libc::S_IFDIR && st.st_nlink > 1 {
        if let Some(target) = first_name.get(&obj.ino) {
            h.set_entry_type(tar::EntryType::Link);
            set_common(&mut h, &mut pax, st, opts);
            set_name(&mut h, &mut pax, &shown, false)?;
            set_link(&mut h, &mut pax, target)?;
            pax.write(tar)?;
            h.set_size(0);
            h.set_cksum();
            tar.append(&h, io::empty())?;
            return Ok(());
        }
        first_name.insert(obj.ino, shown.clone());
    }
    set_common(&mut h, &mut pax, st, opts);
    set_name(&mut h, &mut pax, &shown, kind == libc::S_IFDIR)?;
    for (k, v) in view.xattrs(obj.ino).map_err(|e| anyhow!("reading xattrs: {e}"))? {
        if kept_xattr(&k) {
            pax.records.push(([b"SCHILY.xattr.".as_slice(), &k].concat(), v));
        }
    }
    let mut data: Box<dyn Read> = Box::new(io::empty());
    h.set_size(0);
    match kind {
        libc::S_IFDIR => h.set_entry_type(tar::EntryType::Directory),
        libc::S_IFREG => {
            h.set_entry_type(tar::EntryType::Regular);
            let size = st.st_size as u64;
            h.set_size(size);
            let file = view.open_data(obj.ino).map_err(|e| anyhow!("opening: {e}"))?;
            data = Box::new(Exact { inner: file.take(size), left: size });
        }
        libc::S_IFLNK => {
            h.set_entry_type(tar::EntryType::Symlink);
            let target = view.readlink(obj.ino).map_err(|e| anyhow!("readlink: {e}"))?;
            set_link(&mut h, &mut pax, &target)?;
        }
        libc::S_IFCHR | libc::S_IFBLK => {
            h.set_entry_type(if kind == libc::S_IFCHR { tar::EntryType::Char } else { tar::EntryType::Block });
            h.set_device_major(libc::major(st.st_rdev))?;
            h.set_device_minor(libc::minor(st.st_rdev))?;
        }
        libc::S_IFIFO => h.set_entry_type(tar::EntryType::Fifo),
        _ => {
            // A tar cannot hold a socket; GNU tar and docker leave them out too.
            tracing::warn!("leaving out socket /{}", show(path));
            return Ok(());
        }
    }
    pax.write(tar)?;
    h.set_cksum();
    tar.append(&h, data)?;
    Ok(())
}

/// Mode, owner and time (clamped); ids beyond ustar's octal fields go to PAX records.
fn set_common(h: &mut tar::Header, pax: &mut Pax, st: &libc::stat, opts: TarOptions) {
    h.set_mode(st.st_mode & 0o7777);
    const MAX_ID: u32 = 0o7777777;
    h.set_uid(st.st_uid.min(MAX_ID) as u64);
    h.set_gid(st.st_gid.min(MAX_ID) as u64);
    if st.st_uid > MAX_ID {
        pax.records.push((b"uid".to_vec(), st.st_uid.to_string().into_bytes()));
    }
    if st.st_gid > MAX_ID {
        pax.records.push((b"gid".to_vec(), st.st_gid.to_string().into_bytes()));
    }
    let (mut secs, mut nsec) = (st.st_mtime, st.st_mtime_nsec);
    if let Some(c) = opts.clamp
        && secs >= c
    {
        (secs, nsec) = (c, 0);
    }
    h.set_mtime(secs.max(0) as u64);
    if nsec != 0 && secs >= 0 {
        pax.records.push((b"mtime".to_vec(), format!("{secs}.{nsec:09}").into_bytes()));
    }
}

/// The name field holds 100 bytes; longer names (or ones ending in a `/` that does not fit)
/// go in a PAX `path` record.
fn set_name(h: &mut tar::Header, pax: &mut Pax, path: &[u8], dir: bool) -> anyhow::Result<()> {
    let mut name = path.to_vec();
    if dir && name != b"." {
        name.push(b'/');
    } else if dir {
        name = b"./".to_vec();
    }
    let field = &mut h.as_old_mut().name;
    if name.len() <= field.len() {
        field[..name.len()].copy_from_slice(&name);
    } else {
        let cut = field.len();
        field.copy_from_slice(&name[..cut]);
        pax.records.push((b"path".to_vec(), name));
    }
    Ok(())
}

fn set_link(h: &mut tar::Header, pax: &mut Pax, target: &[u8]) -> anyhow::Result<()> {
    let field = &mut h.as_old_mut().linkname;
    if target.len() <= field.len() {
        field[..target.len()].copy_from_slice(target);
    } else {
        let cut = field.len();
        field.copy_from_slice(&target[..cut]);
        pax.records.push((b"linkpath".to_vec(), target.to_vec()));
    }
    Ok(())
}

/// The PAX extended header of the next entry.
#[derive(Default)]
struct Pax {
    records: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Pax {
    fn write<W: Write>(&self, tar: &mut tar::Builder<W>) -> io::Result<()> {
        if self.records.is_empty() {
            return Ok(());
        }
        let mut body = Vec::new();
        for (k, v) in &self.records {
            body.extend_from_slice(&pax_record(k, v));
        }
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::XHeader);
        let name = b"PaxHeaders/entry";
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(body.len() as u64);
        h.set_cksum();
        tar.append(&h, body.as_slice())
    }
}

/// `LEN key=value\n`, where LEN counts the whole record, its own digits included.
fn pax_record(key: &[u8], value: &[u8]) -> Vec<u8> {
    let rest = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = rest + 1;
    while len != rest + len.to_string().len() {
        len = rest + len.to_string().len();
    }
    let mut out = format!("{len} ").into_bytes();
    out.extend_from_slice(key);
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
    out
}

/// A file's data, exactly as many bytes as its header says: a file that shrank while it was
/// read is an error, not a corrupt tar.
struct Exact<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && self.left > 0 && !buf.is_empty() {
            return Err(io::Error::other(format!("file shrank while it was read ({} bytes missing)", self.left)));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// `export`: every object of a merged view, as entries (the root not among them, as docker's).
pub fn whole_view(view: &View) -> anyhow::Result<Vec<Op>> {
    let mut ops = Vec::new();
    let root = view.root().map_err(io_err)?;
    walk_view(view, b"", &root, &mut ops)?;
    Ok(ops)
}

fn walk_view(view: &View, rel: &[u8], dir: &Obj, ops: &mut Vec<Op>) -> anyhow::Result<()> {
    for (name, obj) in view.children(dir.ino).map_err(|e| anyhow!("reading /{}: {e}", show(rel)))? {
        let path = join_rel(rel, &name);
        ops.push(Op::Entry { path: path.clone(), obj, change: None });
        if obj.is_dir() {
            walk_view(view, &path, &obj, ops)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_record_length_counts_its_own_digits() {
        assert_eq!(pax_record(b"path", b"abc"), b"12 path=abc\n".to_vec());
        let long = vec![b'x'; 95];
        let r = pax_record(b"path", &long);
        let len: usize = std::str::from_utf8(r.split(|&b| b == b' ').next().unwrap()).unwrap().parse().unwrap();
        assert_eq!(len, r.len());
    }

    #[test]
    fn whiteout_names_are_refused_by_name() {
        let e = check_name(b"etc/.wh.x").unwrap_err().to_string();
        assert!(e.contains("/etc/.wh.x"), "{e}");
        assert!(check_name(b"etc/x.wh.").is_ok());
    }
}
