//! Copy-up (overlayfs' copy_up.c): before the first change of an object that lives in a lower
//! layer, it is copied to the upper — data (holes kept; `copy_file_range`, which reflinks where
//! the filesystem can), owner, mode, times, xattrs — with its parent directories copied first.
//!
//! A copy is built under a temporary name in the work directory and renamed into place, so a
//! crash never leaves a half-copied object visible; the parent's times are restored afterwards,
//! as overlayfs does. A copy-up holds the lock of the object it copies, and no other.

use std::collections::HashMap;
use std::ffi::CStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use crate::sys::{self, Errno, SysResult};

use super::Union;
use super::layer::{Layer, METACOPY_XATTR, Role, WORK_LAYER, join};
use super::lookup::{Found, ORIGIN_XATTR};
use super::node::{Branch, Node};
use super::util::parent_of;
use super::whiteout::is_private_xattr;

/// What a copy-up is for, which decides how much of a regular file is copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyUp {
    /// The file is about to be written: data and metadata.
    Data,
    /// The file is about to be truncated to zero: its old data would be thrown away at once.
    Truncate,
    /// Only metadata changes (mode, owner, times, xattrs, a rename): with `metacopy=on` a
    /// regular file's data stays below, as overlayfs' metacopy does.
    Metadata,
}

/// How a copy-up reaches the disk before its rename makes it visible (issue 14; overlayfs
/// fsyncs every copy-up unless mounted `volatile`). The danger is the rename surviving a power
/// cut while the copy's data does not: the copy would then hide the lower data it copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// `-o volatile`: nothing is synced; a crash can leave copies that hide their lower data.
    Volatile,
    /// The copy's data is written out and waited for before the rename (sync_file_range); the
    /// filesystem's journal then commits the copy's metadata and the rename in order, and every
    /// commit flushes the disk cache before its commit record, so no commit can hold the rename
    /// without the data being on stable media (ext4's auto_da_alloc relies on the same order).
    /// No journal commit per copy-up. For ext4 with a journal, xfs and btrfs.
    Ordered,
    /// fsync of the copy before the rename, and of the parent after a directory's rename: for
    /// filesystems that promise no order between metadata updates.
    Synced,
}

impl Durability {
    /// Make the copy open as `fd` (a regular file or a directory) durable as far as this
    /// policy needs, before it is renamed into place or its metacopy mark is removed.
    fn before_visible(self, fd: Option<BorrowedFd<'_>>) -> SysResult<()> {
        let Some(fd) = fd else { return Ok(()) };
        match self {
            Durability::Volatile => Ok(()),
            // Metadata needs nothing (the journal orders it), nor does a directory.
            Durability::Ordered => match sys::write_out(fd) {
                Err(Errno(libc::ESPIPE)) => Ok(()),
                r => r,
            },
            Durability::Synced => sys::fsync(fd, false),
        }
    }
}

/// Lower files with more than one link, by inode: every path of each, in one layer.
pub type AliasMap = HashMap<u64, Vec<Vec<u8>>>;

/// Moved directories of one layer: (its path in the layer, the path its redirect names in the
/// layers below).
pub type Moves = Vec<(Vec<u8>, Vec<u8>)>;

/// What one walk of a lower layer finds (lowers never change, so it is done once, on the
/// first need): its hard-linked files and its moved directories.
#[derive(Debug, Default)]
pub struct LayerLinks {
    pub aliases: AliasMap,
    pub moves: Moves,
}

/// What a copied regular file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Content {
    Data,
    /// The size, without data: a metacopy.
    Sparse,
    Empty,
}

/// `overlay.metacopy` as overlayfs writes it without an fs-verity digest: empty. (With a
/// digest it is a header and the digest; any value marks a metacopy.)
const METACOPY_VALUE: [u8; 0] = [];

fn kind_of(st: &libc::stat) -> u32 {
    st.st_mode & libc::S_IFMT
}

impl Union {
    /// Whether the top branch of `branches` is in the upper (or is an orphan in the work dir).
    pub(super) fn is_upper(&self, branches: &[Branch]) -> bool {
        branches.first().is_some_and(|b| self.is_upper_layer(b.layer))
    }

    fn is_upper_layer(&self, layer: u16) -> bool {
        layer == WORK_LAYER || (layer == 0 && self.stack.upper().is_some())
    }

    /// Walk the merged view from the root to `path`.
    pub(super) fn resolve(&self, path: &[u8]) -> SysResult<Found> {
        self.resolve_in(path, true)
    }

    /// Walk from the root to `path` in the merged view, or (`with_upper` false) in the view of
    /// the lowers alone, as it was before this upper changed anything.
    fn resolve_in(&self, path: &[u8], with_upper: bool) -> SysResult<Found> {
        let root = self.nodes.get(super::ino::ROOT_INO)?.state();
        let mut branches = root.branches;
        if !with_upper {
            branches.retain(|b| !self.is_upper(std::slice::from_ref(b)));
        }
        let mut dir_path = root.path;
        let mut found = None;
        for part in path.split(|&b| b == b'/').filter(|c| !c.is_empty() && *c != b".") {
            let f = self.find(&dir_path, &branches, part)?.ok_or(Errno::ENOENT)?;
            dir_path = f.path.clone();
            branches = f.branches.clone();
            found = Some(f);
        }
        found.ok_or(Errno::EINVAL)
    }

    /// Make sure the directory at merged path `dir` exists in the upper, copying it (and its
    /// parents first) from the layer that shows it. Returns its attributes in the upper.
    ///
    /// One walk of the merged view from the root copies every missing directory on the way, so
    /// a deep lower tree costs one lookup per level, not one walk from the root per level.
    pub(super) fn ensure_upper_dir(&self, dir: &CStr) -> SysResult<libc::stat> {
        let upper = self.upper()?;
        let as_dir = |st: libc::stat| if kind_of(&st) == libc::S_IFDIR { Ok(st) } else { Err(Errno::ENOTDIR) };
        if let Ok(st) = upper.stat(dir) {
            return as_dir(st);
        }
        let parts: Vec<&[u8]> = dir.to_bytes().split(|&b| b == b'/').filter(|c| !c.is_empty() && *c != b".").collect();
        // The deepest ancestor the upper has already; the root always is there.
        let mut have = parts.len().saturating_sub(1);
        while have > 0 {
            match upper.stat(&sys::cstring(&parts[..have].join(&b'/'))?) {
                Ok(st) => {
                    as_dir(st)?;
                    break;
                }
                Err(_) => have -= 1,
            }
        }
        let root = self.nodes.get(super::ino::ROOT_INO)?.state();
        let (mut dir_path, mut branches) = (root.path, root.branches);
        for (i, part) in parts.iter().enumerate() {
            let found = self.find(&dir_path, &branches, part)?.ok_or(Errno::ENOENT)?;
            if found.kind != libc::S_IFDIR {
                return Err(Errno::ENOTDIR);
            }
            if i >= have {
                match self.copy_up_found(&found, CopyUp::Metadata) {
                    // Another request copied it up first: either way it is there now.
                    Ok(()) | Err(Errno::EEXIST) | Err(Errno::ENOTEMPTY) => {}
                    Err(e) => return Err(e),
                }
            }
            (dir_path, branches) = (found.path, found.branches);
        }
        as_dir(upper.stat(dir)?)
    }

    /// Copy a node up, as far as `need` asks, if it is not in the upper that far yet.
    /// Whether a change to `ino` would copy it up first, or a write its data (a metacopy file):
    /// a request that may take as long as copying the file. Directories copy up no data.
    pub fn needs_copy_up(&self, ino: u64) -> bool {
        let Ok(node) = self.nodes.get(ino) else { return false };
        if node.is_dir() {
            return false;
        }
        self.stack.upper().is_some() && (node.is_metacopy() || !node.top_layer().is_some_and(|l| self.is_upper_layer(l)))
    }

    pub(super) fn copy_up_node(&self, node: &Node, need: CopyUp) -> SysResult<()> {
        let _locked = node.copy_up.lock().unwrap_or_else(|p| p.into_inner());
        let state = node.state();
        if state.branches.is_empty() {
            return Err(Errno::ENOENT);
        }
        if self.is_upper(&state.branches) {
            if need != CopyUp::Metadata && node.is_metacopy() {
                return self.copy_up_metacopy_data(node, need);
            }
            return Ok(());
        }
        self.upper()?;
        if node.is_dir() {
            return self.ensure_upper_dir(&state.path).map(drop);
        }
        let lower = state.branches[0].clone();
        let path = self.visible_name(node, &state.path, &lower)?;
        self.ensure_upper_dir(&sys::cstring(&parent_of(path.to_bytes()))?)?;
        let found = Found { ino: node.ino, kind: node.kind(), stat: self.stack.get(lower.layer)?.stat(&lower.path)?, path, branches: state.branches };
        self.copy_up_found(&found, need)?;
        if node.kind() == libc::S_IFREG && found.stat.st_nlink > 1 {
            self.copy_up_aliases(&lower, &found)?;
        }
        Ok(())
    }

    /// Where the merged view shows this node now: its last known name, or — that name was
    /// removed, or a directory above it moved — any other name the merged view shows its lower
    /// object by (its own lower path or another hard link's, seen through moved directories).
    fn visible_name(&self, node: &Node, path: &CStr, lower: &Branch) -> SysResult<std::ffi::CString> {
        if self.resolve(path.to_bytes()).is_ok_and(|f| f.ino == node.ino) {
            return Ok(path.to_owned());
        }
        let names = self.merged_names(node.ino, node.kind(), lower)?;
        let name = names.into_iter().next().ok_or(Errno::ENOENT)?;
        sys::cstring(&name)
    }

    /// Every name under which the merged view shows the lower object `lower` (whose merged
    /// inode number is `ino`): each of its lower paths — a hard-linked file has several — as
    /// the layers above spell it after their directory moves, kept where a lookup finds this
    /// very object.
    pub(super) fn merged_names(&self, ino: u64, kind: u32, lower: &Branch) -> SysResult<Vec<Vec<u8>>> {
        let mut names: Vec<Vec<u8>> = Vec::new();
        for spelling in self.lower_spellings(kind, lower)? {
            for name in self.names_of(lower.layer, &spelling, ino, true)? {
                if !names.contains(&name) {
                    names.push(name);
                }
            }
        }
        Ok(names)
    }

    /// How many of the lower object's own paths (a hard-linked file has several) the lowers
    /// show but the merged view no longer does: removed, renamed over or hidden in this mount.
    /// A path still shown costs one lookup per candidate; only a missing one is looked for in
    /// the lowers' view too.
    pub(super) fn names_removed(&self, ino: u64, kind: u32, lower: &Branch) -> SysResult<u64> {
        let mut removed = 0;
        for spelling in self.lower_spellings(kind, lower)? {
            if self.names_of(lower.layer, &spelling, ino, true)?.is_empty() && !self.names_of(lower.layer, &spelling, ino, false)?.is_empty() {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// The paths of the lower object in its own layer: its branch path, and for a file with
    /// several links the others.
    fn lower_spellings(&self, kind: u32, lower: &Branch) -> SysResult<Vec<Vec<u8>>> {
        let layer = self.stack.get(lower.layer)?;
        let mut spellings = vec![lower.path.to_bytes().to_vec()];
        if kind == libc::S_IFREG && layer.role == Role::Lower {
            let real = layer.stat(&lower.path)?;
            if real.st_nlink > 1 {
                let links = self.layer_links(lower.layer)?;
                spellings.extend(links.aliases.get(&real.st_ino).into_iter().flatten().filter(|p| p.as_slice() != lower.path.to_bytes()).cloned());
            }
        }
        Ok(spellings)
    }

    /// Where the view (merged, or the lowers' alone) shows the path `spelling` of `layer` as the
    /// object `ino`.
    fn names_of(&self, layer: u16, spelling: &[u8], ino: u64, with_upper: bool) -> SysResult<Vec<Vec<u8>>> {
        Ok(self.shown_at(layer, spelling, with_upper)?.into_iter().filter(|n| self.resolve_in(n, with_upper).is_ok_and(|f| f.ino == ino)).collect())
    }

    /// The merged paths at which a path of layer `layer` may show: the path itself, and where
    /// each layer above, nearest first, moved a directory on the way (a redirect names the path
    /// in the layers below it). Candidates only: the caller looks each up.
    fn shown_at(&self, layer: u16, path: &[u8], with_upper: bool) -> SysResult<Vec<Vec<u8>>> {
        let mut names = vec![path.to_vec()];
        for above in (0..layer).rev() {
            let moves = match self.stack.get(above)?.role {
                Role::Upper if with_upper => self.upper_moves(),
                Role::Upper => continue,
                _ => self.layer_links(above)?.moves.clone(),
            };
            let mut more = Vec::new();
            for name in &names {
                for (dir, target) in moves.iter() {
                    if let Some(new) = super::dir::replace_prefix(name, target, dir) {
                        more.push(new);
                    }
                }
            }
            for m in more {
                if !names.contains(&m) {
                    names.push(m);
                }
            }
        }
        Ok(names)
    }

    /// Copy the object `found` (a directory: itself only) to `found.path` in the upper.
    pub(super) fn copy_up_found(&self, found: &Found, need: CopyUp) -> SysResult<()> {
        let src = found.branches.first().ok_or(Errno::ENOENT)?;
        if self.is_upper(&found.branches) {
            return Ok(());
        }
        let (upper, work) = (self.upper()?, self.work()?);
        let src_layer = self.stack.get(src.layer)?;
        let st = src_layer.stat(&src.path)?;
        let metacopy = self.wants_metacopy(&st, need);
        let content = match need {
            CopyUp::Truncate => Content::Empty,
            _ if metacopy => Content::Sparse,
            _ => Content::Data,
        };
        // A metacopy lower (once a metacopy=on upper) holds no data: that is in the layer its
        // chain of redirects ends in, the last branch (overlayfs: ovl_path_lowerdata).
        let data = match found.branches.last() {
            Some(d) if kind_of(&st) == libc::S_IFREG && found.branches.len() > 1 => d,
            _ => src,
        };
        let data_src = (self.stack.get(data.layer)?, data.path.as_c_str());
        let tmp = self.temp_name();
        let result = self.build_copy(src_layer, &src.path, &st, &tmp, content, data_src).and_then(|copy| {
            if metacopy {
                self.set_work_xattr(&tmp, METACOPY_XATTR, &METACOPY_VALUE)?;
            }
            // A directory reached through a moved parent gets no redirect of its own, as on
            // overlayfs: a lookup finds its lower parts through the parent's, layer by layer. An
            // absolute one would be read from the root of every layer below, where a middle
            // layer (once an upper) may have moved or replaced that path.
            if kind_of(&st) != libc::S_IFDIR {
                self.set_work_xattr(&tmp, ORIGIN_XATTR, found.ino.to_string().as_bytes())?;
            }
            sys::lutimensat(work.fd(), &tmp, sys::stat_times(&st))?;
            self.durability.before_visible(copy.as_ref().map(|f| f.as_fd()))?;
            let parent = sys::cstring(&parent_of(found.path.to_bytes()))?;
            let parent_times = upper.stat(&parent).map(|p| sys::stat_times(&p));
            sys::renameat2(work.fd(), &tmp, upper.fd(), &found.path, libc::RENAME_NOREPLACE)?;
            if let Ok(times) = parent_times {
                let _ = sys::lutimensat(upper.fd(), &parent, times);
            }
            if kind_of(&st) == libc::S_IFDIR && self.durability == Durability::Synced {
                // What is copied into it next depends on its name being there.
                sys::fsync(sys::open_beneath(upper.fd(), &parent, libc::O_RDONLY | libc::O_DIRECTORY)?.as_fd(), false)?;
            }
            Ok(())
        });
        if let Err(e) = result {
            self.remove_work_tree(&tmp);
            return Err(e);
        }
        let branch = Branch { layer: 0, path: found.path.clone(), xattr_whiteouts: false };
        if let Some(node) = self.nodes.find(found.ino) {
            node.update(|s| {
                if found.kind == libc::S_IFDIR || metacopy {
                    // A directory stays merged; a metacopy file keeps reading the data below.
                    if s.branches.first().is_none_or(|b| b.layer != 0) {
                        s.branches.insert(0, branch);
                    }
                } else {
                    s.branches = vec![branch];
                }
                s.path = found.path.clone();
            });
        }
        Ok(())
    }

    /// Whether a copy-up for `need` of the object `st` leaves its data below. Hard-linked files
    /// are copied whole, so that the names linked to the copy never depend on a lower path.
    fn wants_metacopy(&self, st: &libc::stat, need: CopyUp) -> bool {
        self.metacopy && need == CopyUp::Metadata && kind_of(st) == libc::S_IFREG && st.st_nlink <= 1
    }

    /// The second half of a metacopy file's copy-up, before its first write: the data is copied
    /// into the upper file in place (overlayfs does the same), and only then is the metacopy mark
    /// removed, so a crash in between leaves the file reading the lower data still. The upper's
    /// times are kept: the copy is not a change the user made.
    fn copy_up_metacopy_data(&self, node: &Node, need: CopyUp) -> SysResult<()> {
        let state = node.state();
        let (Some(top), Some(data)) = (state.branches.first(), state.branches.last()) else { return Err(Errno::ENOENT) };
        let upper = self.upper()?;
        let out = sys::open_beneath(upper.fd(), &top.path, libc::O_WRONLY)?;
        let times = sys::stat_times(&sys::fstat(out.as_fd())?);
        if need == CopyUp::Data {
            let data_layer = self.stack.get(data.layer)?;
            let input = sys::open_beneath(data_layer.fd(), &data.path, libc::O_RDONLY)?;
            copy_data(input.as_fd(), out.as_fd(), sys::fstat(input.as_fd())?.st_size as u64)?;
        } else {
            sys::ftruncate(out.as_fd(), 0)?;
        }
        sys::futimens(out.as_fd(), times)?;
        self.durability.before_visible(Some(out.as_fd()))?;
        // The redirect of a moved metacopy file pointed at its data; the data is here now.
        self.remove_upper_xattr(&top.path, b"redirect")?;
        self.remove_upper_xattr(&top.path, METACOPY_XATTR)?;
        node.update(|s| s.branches.truncate(1));
        Ok(())
    }

    /// Build the copy of one object at `tmp` in the work directory, with owner, mode and xattrs.
    /// A regular file's data is read from `data` (the object itself, or where a metacopy's is).
    /// Returns the copy, open, if it is a regular file or a directory (for syncing it).
    fn build_copy(&self, src_layer: &Layer, src: &CStr, st: &libc::stat, tmp: &CStr, content: Content, data: (&Layer, &CStr)) -> SysResult<Option<OwnedFd>> {
        let work = self.work()?;
        let mut copy = None;
        match kind_of(st) {
            libc::S_IFDIR => {
                sys::mkdirat(work.fd(), tmp, 0o700)?;
                copy = Some(sys::open_beneath(work.fd(), tmp, libc::O_RDONLY | libc::O_DIRECTORY)?);
            }
            libc::S_IFREG => {
                let out = sys::open_beneath_mode(work.fd(), tmp, libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY, 0o600)?;
                match content {
                    Content::Data => {
                        let input = sys::open_beneath(data.0.fd(), data.1, libc::O_RDONLY)?;
                        copy_data(input.as_fd(), out.as_fd(), st.st_size as u64)?;
                    }
                    // A metacopy has the size of its data and no blocks (overlayfs: ovl_set_size).
                    Content::Sparse => sys::ftruncate(out.as_fd(), st.st_size as u64)?,
                    Content::Empty => {}
                }
                copy = Some(out);
            }
            libc::S_IFLNK => {
                let target = sys::readlinkat(src_layer.fd(), src)?;
                sys::symlinkat(&sys::cstring(&target)?, work.fd(), tmp)?;
            }
            kind => sys::mknodat(work.fd(), tmp, kind | 0o600, st.st_rdev)?,
        }
        self.copy_xattrs(src_layer, src, tmp)?;
        sys::lchownat(work.fd(), tmp, st.st_uid, st.st_gid)?;
        // After the chown, which clears set-uid/set-gid bits.
        if kind_of(st) != libc::S_IFLNK {
            sys::fchmodat(work.fd(), tmp, st.st_mode & 0o7777)?;
        }
        Ok(copy)
    }

    /// Every xattr but the overlay's own goes with the copy.
    fn copy_xattrs(&self, src_layer: &Layer, src: &CStr, tmp: &CStr) -> SysResult<()> {
        let from = sys::fd_relative_path(src_layer.fd(), src.to_bytes())?;
        let to = sys::fd_relative_path(self.work()?.fd(), tmp.to_bytes())?;
        let names = match sys::llistxattr(&from) {
            Ok(n) => n,
            Err(Errno::ENOTSUP) => return Ok(()),
            Err(e) => return Err(e),
        };
        for name in names.split(|&b| b == 0).filter(|n| !n.is_empty() && !is_private_xattr(n)) {
            let cname = sys::cstring(name)?;
            let Ok(value) = sys::lgetxattr(&from, &cname) else { continue };
            self.labels.note_set(name);
            match sys::lsetxattr(&to, &cname, &value) {
                Ok(()) => {}
                // Some namespaces cannot be set on some objects (user.* on a symlink) or by us.
                Err(Errno::ENOTSUP) | Err(Errno::EPERM) => tracing::debug!("copy-up: xattr {:?} not copied", String::from_utf8_lossy(name)),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Hard links survive copy-up: the other visible names of a lower file are linked to its
    /// upper copy at once, so the upper holds one file under all of them (as overlayfs' index
    /// gives, but in a form any overlayfs can mount).
    fn copy_up_aliases(&self, lower: &Branch, found: &Found) -> SysResult<()> {
        if self.stack.get(lower.layer)?.role != Role::Lower {
            return Ok(());
        }
        let upper = self.upper()?;
        // Only names that still show this very file: the lower paths, or where moved
        // (redirected) directories show them now. The copy's own name is in the upper now.
        for name in self.merged_names(found.ino, found.kind, lower)? {
            let name = sys::cstring(&name)?;
            if name == found.path || self.resolve(name.to_bytes()).is_ok_and(|f| self.is_upper(&f.branches)) {
                continue;
            }
            self.ensure_upper_dir(&sys::cstring(&parent_of(name.to_bytes()))?)?;
            match sys::linkat(upper.fd(), &found.path, upper.fd(), &name) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The moved directories of the upper, walked for once on the first need and kept up to
    /// date by every change that makes, moves or removes one (see [`Self::note_upper_move`]).
    pub(super) fn upper_moves(&self) -> Moves {
        let mut known = self.upper_moves.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = known.as_ref() {
            return m.clone();
        }
        let mut out = Moves::new();
        if let Ok(upper) = self.upper() {
            collect_moves(upper, b".", &mut out);
        }
        *known = Some(out.clone());
        out
    }

    /// A directory of the upper got a redirect (`target`, resolved) at merged path `dir`.
    pub(super) fn note_upper_move(&self, dir: &[u8], target: &[u8]) {
        if let Some(m) = self.upper_moves.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            m.retain(|(d, _)| d.as_slice() != dir);
            m.push((dir.to_vec(), target.to_vec()));
        }
    }

    /// Paths of the upper moved (`exchange`: swapped), or removed (`to` None): the moved
    /// directories at and under them follow.
    pub(super) fn upper_paths_moved(&self, from: &[u8], to: Option<&[u8]>, exchange: bool) {
        let mut known = self.upper_moves.lock().unwrap_or_else(|p| p.into_inner());
        let Some(m) = known.as_mut() else { return };
        match to {
            None => m.retain(|(d, _)| super::dir::replace_prefix(d, from, b"").is_none()),
            Some(to) => {
                for (d, _) in m.iter_mut() {
                    let moved = super::dir::replace_prefix(d, from, to).or_else(|| if exchange { super::dir::replace_prefix(d, to, from) } else { None });
                    if let Some(new) = moved {
                        *d = new;
                    }
                }
            }
        }
    }

    /// The hard links and moved directories of a lower layer, found by one walk on first need.
    pub(super) fn layer_links(&self, layer_index: u16) -> SysResult<Arc<LayerLinks>> {
        let mut cache = self.aliases.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = cache.get(&layer_index) {
            return Ok(m.clone());
        }
        let layer = self.stack.get(layer_index)?;
        let mut links = LayerLinks::default();
        collect_links(layer, b".", &mut links);
        links.aliases.retain(|_, v| v.len() > 1);
        let links = Arc::new(links);
        cache.insert(layer_index, links.clone());
        Ok(links)
    }
}

/// The directories of `layer` below `dir` that have a redirect: (path, the path it names).
fn collect_moves(layer: &Layer, dir: &[u8], out: &mut Moves) {
    let Ok(entries) = layer.read_dir(dir) else { return };
    for (name, kind, _) in entries {
        if kind == libc::S_IFDIR {
            let rel = join(dir, &name);
            note_redirect(layer, dir, &rel, out);
            collect_moves(layer, &rel, out);
        }
    }
}

fn note_redirect(layer: &Layer, dir: &[u8], rel: &[u8], out: &mut Moves) {
    if let Some(r) = sys::cstring(rel).ok().and_then(|c| layer.dir_info(c.to_bytes()).1)
        && let Some((d, n)) = super::lookup::redirect_target(dir, &r)
    {
        out.push((rel.to_vec(), join(&d, &n)));
    }
}

fn collect_links(layer: &Layer, dir: &[u8], links: &mut LayerLinks) {
    let Ok(entries) = layer.read_dir(dir) else { return };
    for (name, kind, ino) in entries {
        let rel = join(dir, &name);
        match kind {
            libc::S_IFDIR => {
                note_redirect(layer, dir, &rel, &mut links.moves);
                collect_links(layer, &rel, links)
            }
            libc::S_IFREG => {
                let nlink = sys::cstring(&rel).ok().and_then(|c| layer.stat(&c).ok()).map_or(1, |s| s.st_nlink);
                if nlink > 1 {
                    links.aliases.entry(ino).or_default().push(rel);
                }
            }
            _ => {}
        }
    }
}

/// Copy `size` bytes, keeping holes: only the data extents are copied (SEEK_DATA/SEEK_HOLE),
/// with copy_file_range (a reflink where the filesystem shares extents), else — a lower on
/// another filesystem than the upper, usually — with sendfile, an in-kernel copy too, and
/// read/write as the last resort.
pub fn copy_data(input: BorrowedFd<'_>, out: BorrowedFd<'_>, size: u64) -> SysResult<()> {
    let size = size as i64;
    let mut offset = 0i64;
    while offset < size {
        let data = match sys::lseek(input, offset, libc::SEEK_DATA) {
            Ok(d) => d,
            Err(Errno(libc::ENXIO)) => break,
            // No hole support: the whole rest is data.
            Err(Errno::EINVAL) => offset,
            Err(e) => return Err(e),
        };
        let hole = sys::lseek(input, data, libc::SEEK_HOLE).unwrap_or(size).min(size);
        copy_range(input, out, data, hole - data)?;
        offset = hole;
    }
    sys::ftruncate(out, size as u64)
}

/// The copy goes in steps of this many bytes, and the writeback of each starts as soon as it is
/// copied: the sync before the copy's rename then finds little left to write (a 1 GiB copy-up
/// waited 0.4–0.6 s for its data at the end, 0.02 s this way), and no GiB of dirty pages builds up.
const WRITE_BEHIND: i64 = 32 << 20;

fn write_behind(out: BorrowedFd<'_>, offset: i64, len: usize) {
    // Only a head start for the sync that follows; that sync reports any error.
    let _ = sys::start_write_out(out, offset, len as i64);
}

fn copy_range(input: BorrowedFd<'_>, out: BorrowedFd<'_>, start: i64, len: i64) -> SysResult<()> {
    let (mut off_in, mut off_out, mut left) = (start, start, len);
    while left > 0 {
        let chunk = left.min(WRITE_BEHIND) as usize;
        match sys::copy_file_range(input, &mut off_in, out, &mut off_out, chunk) {
            Ok(0) => return Ok(()),
            Ok(n) => {
                left -= n as i64;
                write_behind(out, off_out - n as i64, n);
            }
            Err(Errno::EXDEV) | Err(Errno::EINVAL) | Err(Errno(libc::ENOSYS)) | Err(Errno(libc::EOPNOTSUPP)) => {
                return copy_by_sendfile(input, out, off_in, left);
            }
            Err(Errno(libc::EINTR)) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn copy_by_sendfile(input: BorrowedFd<'_>, out: BorrowedFd<'_>, start: i64, len: i64) -> SysResult<()> {
    sys::lseek(out, start, libc::SEEK_SET)?;
    let (mut off_in, end) = (start, start + len);
    while off_in < end {
        let chunk = (end - off_in).min(WRITE_BEHIND) as usize;
        let from = off_in;
        match sys::sendfile(out, input, &mut off_in, chunk) {
            Ok(0) => return Ok(()),
            Ok(n) => write_behind(out, from, n),
            Err(Errno(libc::EINTR)) => continue,
            Err(Errno::EINVAL) | Err(Errno(libc::ENOSYS)) => return copy_by_reading(input, out, off_in, end - off_in),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn copy_by_reading(input: BorrowedFd<'_>, out: BorrowedFd<'_>, start: i64, len: i64) -> SysResult<()> {
    let mut buf = vec![0u8; 1 << 20];
    let (mut off, end) = (start, start + len);
    while off < end {
        let want = ((end - off) as usize).min(buf.len());
        let n = sys::pread(input, &mut buf[..want], off)?;
        if n == 0 {
            break;
        }
        let mut written = 0;
        while written < n {
            written += sys::pwrite(out, &buf[written..n], off + written as i64)?;
        }
        off += n as i64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileExt, MetadataExt};

    /// A lower on tmpfs, the copy on the disk: copy_file_range refuses (EXDEV) and the copy goes
    /// through sendfile, still keeping the hole.
    #[test]
    fn data_copies_across_filesystems_keep_holes() {
        let src_dir = tempfile::tempdir_in("/dev/shm").expect("tmpfs dir");
        let dst_dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).expect("disk dir");
        let dev = |p: &std::path::Path| std::fs::metadata(p).expect("stat").dev();
        assert_ne!(dev(src_dir.path()), dev(dst_dir.path()), "the test needs two filesystems");
        let src = std::fs::File::create(src_dir.path().join("f")).expect("create");
        src.write_all_at(&[7u8; 4096], 0).expect("write");
        src.write_all_at(&[9u8; 4096], 8 << 20).expect("write");
        let input = std::fs::File::open(src_dir.path().join("f")).expect("open");
        let out = std::fs::File::create(dst_dir.path().join("f")).expect("create");
        let size = input.metadata().expect("stat").len();
        copy_data(input.as_fd(), out.as_fd(), size).expect("copy");
        let copied = std::fs::read(dst_dir.path().join("f")).expect("read");
        assert_eq!(copied.len() as u64, size);
        assert!(copied[..4096].iter().all(|&b| b == 7) && copied[8 << 20..].iter().all(|&b| b == 9));
        assert!(copied[4096..8 << 20].iter().all(|&b| b == 0));
        let blocks = out.metadata().expect("stat").blocks();
        assert!(blocks * 512 < 1 << 20, "the 8 MiB hole was written out: {blocks} blocks");
    }
}
