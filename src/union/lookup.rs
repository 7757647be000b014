//! Finding a name across the layers (overlayfs' namei.c).
//!
//! The rules, top layer first:
//! - a whiteout (in any encoding the layer honours) hides the name in every layer below;
//! - a non-directory hides everything below it; a directory above hides a non-directory below;
//! - a directory is merged with the same-named directories below it, until one of them is opaque
//!   (or, OCI form, has a `.wh.NAME` beside it in its own layer), or a layer holds a whiteout or
//!   a non-directory under that name.

use std::ffi::{CStr, CString};

use crate::sys::{self, Errno, SysResult};

use super::Union;
use super::layer::{METACOPY_XATTR, PathWalk, Role, join, join_c};
use super::node::Branch;
use super::whiteout::DirMarks;

/// Longest name a directory entry may have (NAME_MAX).
pub const NAME_MAX: usize = 255;

/// What a lookup found: the object's branches and the attributes the merged view shows.
#[derive(Debug, Clone)]
pub struct Found {
    pub ino: u64,
    pub kind: u32,
    /// Attributes of the top branch, with st_ino and st_nlink as the merged view shows them.
    pub stat: libc::stat,
    /// Path in the merged view (and in the upper).
    pub path: CString,
    pub branches: Vec<Branch>,
}

/// Names the kernel may send us: never empty, `.`, `..`, or with a slash; at most NAME_MAX.
pub fn check_name(name: &[u8]) -> SysResult<()> {
    if name.len() > NAME_MAX {
        return Err(Errno::ENAMETOOLONG);
    }
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') {
        return Err(Errno::EINVAL);
    }
    Ok(())
}

fn is_dir(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

/// One place to look for the name: a directory in one layer, and the name within it.
struct Candidate {
    layer: u16,
    dir: Vec<u8>,
    name: Vec<u8>,
    xattr_whiteouts: bool,
    /// The directory comes from a redirect, not from a lookup: its components are unchecked.
    redirected: bool,
}

/// Where the layers below a directory with `overlay.redirect` look for it (overlayfs'
/// redirect_dir): an absolute redirect names a path from the layer root, a relative one a name
/// beside the directory itself.
pub fn redirect_target(dir_of_entry: &[u8], redirect: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    let full = match redirect.strip_prefix(b"/") {
        Some(abs) => abs.to_vec(),
        None => join(dir_of_entry, redirect),
    };
    let full: Vec<u8> = full.split(|&b| b == b'/').filter(|c| !c.is_empty()).collect::<Vec<_>>().join(&b'/');
    if full.is_empty() || full.split(|&b| b == b'/').any(|c| c == b"." || c == b"..") {
        return None;
    }
    match full.iter().rposition(|&b| b == b'/') {
        Some(i) => Some((full[..i].to_vec(), full[i + 1..].to_vec())),
        None => Some((b".".to_vec(), full)),
    }
}

impl Union {
    /// Look `name` up below the directory at `parent_path` whose branches are `parent`, without
    /// registering it. `None` means it does not exist in the merged view.
    pub fn find(&self, parent_path: &CStr, parent: &[Branch], name: &[u8]) -> SysResult<Option<Found>> {
        check_name(name)?;
        let mut queue: std::collections::VecDeque<Candidate> = parent
            .iter()
            .map(|b| Candidate {
                layer: b.layer,
                dir: b.path.to_bytes().to_vec(),
                name: name.to_vec(),
                xattr_whiteouts: b.xattr_whiteouts,
                redirected: false,
            })
            .collect();
        let mut branches: Vec<Branch> = Vec::new();
        let mut top: Option<libc::stat> = None;
        // The real object whose number the merged object takes: the top non-directory, or the
        // lowest directory of a merge, which stays the same when the directory is copied up.
        let mut identity = (0u64, 0u64);
        let mut origin: Option<u64> = None;
        // The top is a metadata-only copy (overlayfs' metacopy): its data is the regular file
        // of the same name (or of its redirect) in a layer below, which is looked for next.
        let mut wants_data = false;

        while let Some(c) = queue.pop_front() {
            let layer = self.stack.get(c.layer)?;
            // A redirect is followed one component at a time from the layer root, as overlayfs
            // does: through directories only, never a symlink (which could lead out of the
            // layer). A non-directory or whiteout on the way hides the path here and in every
            // layer below; an opaque directory on the way, in every layer below.
            let mut last_layer = false;
            if c.redirected {
                // A directory on the way moved in this layer: the layers below know the rest
                // of the path by the name its redirect gives (overlayfs: ovl_check_redirect on
                // each element of an absolute lookup).
                if let Some(below) = respelled_below(layer, &c.dir) {
                    for q in queue.iter_mut().filter(|q| q.redirected && q.dir == c.dir) {
                        q.dir = below.clone();
                    }
                }
                match layer.walk_dir_path(&c.dir) {
                    PathWalk::Missing => continue,
                    PathWalk::Blocked => break,
                    PathWalk::Dir { opaque_on_way } => last_layer = opaque_on_way,
                }
            }
            let rel = sys::cstring(&join(&c.dir, &c.name))?;
            let st = match layer.stat(&rel) {
                Ok(st) => st,
                Err(e) if e == Errno::ENOENT || e == Errno::ENOTDIR => {
                    if last_layer || layer.has_oci_whiteout(&c.dir, &c.name) {
                        break;
                    }
                    continue;
                }
                Err(e) => return Err(e),
            };
            let parent_marks = DirMarks { opaque: false, xattr_whiteouts: c.xattr_whiteouts };
            if layer.is_whiteout(&rel, &st, parent_marks) {
                break;
            }
            if wants_data {
                // Only a regular file can hold a metacopy's data (overlayfs: EIO otherwise).
                if st.st_mode & libc::S_IFMT != libc::S_IFREG {
                    tracing::warn!("metacopy {:?}: the layer below has no regular file", rel);
                    return Err(Errno::EIO);
                }
                if let Some(t) = top.as_mut() {
                    // Space used is the data's, as overlayfs reports for a metacopy file.
                    t.st_blocks = st.st_blocks;
                }
                wants_data = self.metacopy_in(layer, &rel)?;
                // A metacopy here too (a lower that was once a metacopy=on upper): its data is
                // further down, where this layer's own redirect says, if it has one.
                let redirect = if wants_data { layer.overlay_xattr(&rel, b"redirect") } else { None };
                branches.push(Branch { layer: c.layer, path: rel, xattr_whiteouts: false });
                if let Some(q) = redirect.as_deref().and_then(|r| self.redirected_candidates(&c, r, parent)) {
                    queue = q;
                }
                if wants_data {
                    continue;
                }
                break;
            }
            if !is_dir(&st) {
                // Below a directory: ends the merge, shows nothing.
                if top.is_some() {
                    break;
                }
                identity = (st.st_dev, st.st_ino);
                // An upper file's overlay xattrs, listed at once: most have none, and then none
                // needs asking for.
                let listed = if layer.role == Role::Upper { layer.overlay_names(&rel) } else { None };
                let may_have = |suffix: &[u8]| listed.as_ref().is_none_or(|names| names.iter().any(|n| n == suffix));
                if layer.role == Role::Upper && may_have(ORIGIN_XATTR) {
                    origin = layer.overlay_xattr(&rel, ORIGIN_XATTR).and_then(|v| parse_origin(&v));
                }
                top = Some(st);
                let regular = st.st_mode & libc::S_IFMT == libc::S_IFREG;
                wants_data = regular && may_have(METACOPY_XATTR) && self.metacopy_in(layer, &rel)?;
                // A moved metacopy file: the layers below hold its data under the old path.
                let redirect = if wants_data && may_have(b"redirect") { layer.overlay_xattr(&rel, b"redirect") } else { None };
                branches.push(Branch { layer: c.layer, path: rel, xattr_whiteouts: false });
                if let Some(q) = redirect.as_deref().and_then(|r| self.redirected_candidates(&c, r, parent)) {
                    queue = q;
                }
                if wants_data {
                    continue;
                }
                break;
            }
            let (marks, redirect) = layer.dir_info(rel.to_bytes());
            let ends_merge = marks.opaque || last_layer || layer.has_oci_whiteout(&c.dir, &c.name);
            identity = (st.st_dev, st.st_ino);
            if top.is_none() {
                top = Some(st);
            }
            let redirect = if ends_merge { None } else { redirect };
            branches.push(Branch { layer: c.layer, path: rel, xattr_whiteouts: marks.xattr_whiteouts });
            if ends_merge {
                break;
            }
            // A moved directory: the layers below hold it under its old path.
            if let Some(q) = redirect.as_deref().and_then(|r| self.redirected_candidates(&c, r, parent)) {
                queue = q;
            }
        }
        if wants_data {
            // overlayfs fails such a lookup too: the file's contents are lost.
            tracing::warn!("metacopy {:?}: no layer below holds its data", join(parent_path.to_bytes(), name));
            return Err(Errno::EIO);
        }

        let Some(mut stat) = top else { return Ok(None) };
        let ino = origin.unwrap_or_else(|| self.inos.map(identity.0, identity.1));
        let kind = stat.st_mode & libc::S_IFMT;
        present(&mut stat, ino, kind == libc::S_IFDIR && branches.len() > 1);
        let path = join_c(parent_path, name)?;
        Ok(Some(Found { ino, kind, stat, path, branches }))
    }

    /// Whether the regular file `rel` of `layer` is a metacopy. The upper is always asked: a
    /// metacopy there on a mount without `metacopy=on` is refused (EPERM), as overlayfs refuses
    /// to follow it. Lowers are asked only with `metacopy=on`; image layers hold none, and the
    /// question costs a syscall per file on every lookup.
    fn metacopy_in(&self, layer: &super::layer::Layer, rel: &CStr) -> SysResult<bool> {
        if layer.role != Role::Upper && !self.metacopy {
            return Ok(false);
        }
        let found = layer.is_metacopy(rel);
        if found && !self.metacopy {
            tracing::warn!("{:?} is a metacopy file: mount with -o metacopy=on to read it", rel);
            return Err(Errno::EPERM);
        }
        Ok(found)
    }

    /// Where the layers below candidate `c` look for an object with redirect `r`. An absolute
    /// redirect is a path from each layer's root. A relative one (overlayfs writes it for a
    /// rename within one directory) is a name in the same parent, as each layer below finds
    /// that parent: through the parent's branches, or the path `c` was reached by.
    fn redirected_candidates(&self, c: &Candidate, r: &[u8], parent: &[Branch]) -> Option<std::collections::VecDeque<Candidate>> {
        let (dir, name) = redirect_target(&c.dir, r)?;
        if r.starts_with(b"/") || r.contains(&b'/') || c.redirected {
            return Some(self.candidates_below(c.layer, dir, name));
        }
        Some(
            parent
                .iter()
                .filter(|b| b.layer > c.layer && b.layer != super::layer::WORK_LAYER)
                .map(|b| Candidate { layer: b.layer, dir: b.path.to_bytes().to_vec(), name: name.clone(), xattr_whiteouts: b.xattr_whiteouts, redirected: false })
                .collect(),
        )
    }

    /// Where the layers below `layer` hold an object a redirect names: `dir/name`, reached from
    /// each layer's root.
    fn candidates_below(&self, layer: u16, dir: Vec<u8>, name: Vec<u8>) -> std::collections::VecDeque<Candidate> {
        ((layer as usize + 1)..self.stack.len())
            .map(|l| Candidate { layer: l as u16, dir: dir.clone(), name: name.clone(), xattr_whiteouts: false, redirected: true })
            .collect()
    }

    /// The branches of the root: every layer, top first, each at its root.
    pub(super) fn root_branches(&self) -> SysResult<Vec<Branch>> {
        let dot: &CStr = c".";
        self.stack
            .iter()
            .enumerate()
            .map(|(i, layer)| {
                let marks = layer.dir_marks(b".");
                Ok(Branch { layer: i as u16, path: dot.to_owned(), xattr_whiteouts: marks.xattr_whiteouts })
            })
            .collect()
    }
}

/// How the layers below `layer` spell directory `dir` of it, if a directory on the way (itself
/// included) has a redirect there; `None` when they spell it the same.
fn respelled_below(layer: &super::layer::Layer, dir: &[u8]) -> Option<Vec<u8>> {
    let (mut here, mut below) = (b".".to_vec(), b".".to_vec());
    let mut moved = false;
    for part in dir.split(|&b| b == b'/').filter(|c| !c.is_empty() && *c != b".") {
        here = join(&here, part);
        let next = match layer.dir_info(&here).1.and_then(|r| redirect_target(&below, &r)) {
            Some((d, n)) => {
                moved = true;
                join(&d, &n)
            }
            None => join(&below, part),
        };
        below = next;
    }
    moved.then_some(below)
}

/// The upper xattr (`<ns>.overlay.` + this) that keeps a copied-up object's inode number, so
/// that st_ino does not change at copy-up nor across remounts. Kernel overlayfs ignores it.
pub const ORIGIN_XATTR: &[u8] = b"shalefs.ino";

pub fn parse_origin(v: &[u8]) -> Option<u64> {
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// Turn a real stat into what the merged view shows: our inode number, and st_nlink 1 for a
/// merged directory, whose link count no single layer knows (overlayfs' ovl_getattr does the
/// same; `find` reads 1 as "count unknown" and does not take shortcuts).
pub fn present(stat: &mut libc::stat, ino: u64, merged_dir: bool) {
    stat.st_ino = ino;
    if merged_dir {
        stat.st_nlink = 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert_eq!(check_name(&[b'a'; 256]), Err(Errno::ENAMETOOLONG));
        assert!(check_name(&[b'a'; 255]).is_ok());
        assert_eq!(check_name(b"a/b"), Err(Errno::EINVAL));
        assert_eq!(check_name(b".."), Err(Errno::EINVAL));
    }

    #[test]
    fn redirects_resolve_absolute_and_relative() {
        assert_eq!(redirect_target(b"a/b", b"/x/y"), Some((b"x".to_vec(), b"y".to_vec())));
        assert_eq!(redirect_target(b"a/b", b"old"), Some((b"a/b".to_vec(), b"old".to_vec())));
        assert_eq!(redirect_target(b".", b"old"), Some((b".".to_vec(), b"old".to_vec())));
        assert_eq!(redirect_target(b".", b"/top"), Some((b".".to_vec(), b"top".to_vec())));
        assert_eq!(redirect_target(b"a", b"/../etc"), None);
        assert_eq!(redirect_target(b"a", b"/"), None);
    }
}
