//! Finding a name across the layers (overlayfs' namei.c).
//!
//! The rules, top layer first:
//! - a whiteout (in any encoding the layer honours) hides the name in every layer below;
//! - a non-directory hides everything below it; a directory above hides a non-directory below;
//! - a directory is merged with the same-named directories below it, until one of them is opaque
//!   (or, OCI form, has a `.wh.NAME` beside it in its own layer), or a layer holds a whiteout or
//!   a non-directory under that name.

use std::ffi::CStr;

use crate::sys::{Errno, SysResult};

use super::Union;
use super::layer::join_c;
use super::node::Branch;

/// Longest name a directory entry may have (NAME_MAX).
pub const NAME_MAX: usize = 255;

/// What a lookup found: the object's branches and the attributes the merged view shows.
#[derive(Debug, Clone)]
pub struct Found {
    pub ino: u64,
    pub kind: u32,
    /// Attributes of the top branch, with st_ino and st_nlink as the merged view shows them.
    pub stat: libc::stat,
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

impl Union {
    /// Look `name` up below the directory whose branches are `parent`, without registering it.
    /// `None` means it does not exist in the merged view.
    pub fn find(&self, parent: &[Branch], name: &[u8]) -> SysResult<Option<Found>> {
        check_name(name)?;
        let mut branches: Vec<Branch> = Vec::new();
        let mut top: Option<libc::stat> = None;
        // The real object whose number the merged object takes: the top non-directory, or the
        // lowest directory of a merge, which stays the same when the directory is copied up.
        let mut identity = (0u64, 0u64);

        for pb in parent {
            let layer = self.stack.get(pb.layer)?;
            let rel = join_c(&pb.path, name)?;
            let st = match layer.stat(&rel) {
                Ok(st) => st,
                Err(e) if e == Errno::ENOENT || e == Errno::ENOTDIR => {
                    if layer.has_oci_whiteout(pb.path.to_bytes(), name) {
                        break;
                    }
                    continue;
                }
                Err(e) => return Err(e),
            };
            let parent_marks = super::whiteout::DirMarks { opaque: false, xattr_whiteouts: pb.xattr_whiteouts };
            if layer.is_whiteout(&rel, &st, parent_marks) {
                break;
            }
            if !is_dir(&st) {
                if top.is_none() {
                    identity = (st.st_dev, st.st_ino);
                    top = Some(st);
                    branches.push(Branch { layer: pb.layer, path: rel, xattr_whiteouts: false });
                }
                break;
            }
            let marks = layer.dir_marks(rel.to_bytes());
            let ends_merge = marks.opaque || layer.has_oci_whiteout(pb.path.to_bytes(), name);
            identity = (st.st_dev, st.st_ino);
            if top.is_none() {
                top = Some(st);
            }
            branches.push(Branch { layer: pb.layer, path: rel, xattr_whiteouts: marks.xattr_whiteouts });
            if ends_merge {
                break;
            }
        }

        let Some(mut stat) = top else { return Ok(None) };
        let ino = self.inos.map(identity.0, identity.1);
        let kind = stat.st_mode & libc::S_IFMT;
        present(&mut stat, ino, kind == libc::S_IFDIR && branches.len() > 1);
        Ok(Some(Found { ino, kind, stat, branches }))
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
}
