//! Listing a merged directory (overlayfs' readdir.c).
//!
//! Each layer's directory is read top to bottom; a name seen in a higher layer (as an entry or as
//! a whiteout) hides the same name below. Whiteouts, opaque markers and AUFS bookkeeping are never
//! listed — not even a whiteout in the bottom layer that hides nothing, which kernel overlayfs
//! shows in a directory that is not merged. Every listed name is then looked up, so that `d_ino`
//! equals what `stat` says (overlayfs does the same for merged directories).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use crate::sys::SysResult;

use super::Union;
use super::layer::join_c;
use super::lookup::Found;
use super::node::{Branch, Node};
use super::whiteout::{self, DirMarks, OciName};

/// One entry of a listing, fully looked up.
#[derive(Debug, Clone)]
pub struct Listed {
    pub name: Vec<u8>,
    pub found: Found,
}

/// An open directory: its node, and the listing taken at the first read (or at a rewind).
#[derive(Debug)]
pub struct OpenDir {
    pub node: Arc<Node>,
    listing: Mutex<Option<Arc<Vec<Listed>>>>,
}

impl OpenDir {
    pub fn new(node: Arc<Node>) -> OpenDir {
        OpenDir { node, listing: Mutex::new(None) }
    }
}

/// A name that survives the merge, and the index of the branch it was first seen in: no higher
/// branch has it, so its lookup may start there.
#[derive(Debug, PartialEq, Eq)]
pub struct Visible {
    pub name: Vec<u8>,
    pub from: usize,
}

impl Union {
    /// The names a merged directory shows, in layer order (upper first).
    pub fn visible_names(&self, dir: &[Branch]) -> SysResult<Vec<Visible>> {
        let mut hidden: HashSet<Vec<u8>> = HashSet::new();
        let mut out = Vec::new();
        for (index, branch) in dir.iter().enumerate() {
            let layer = self.stack.get(branch.layer)?;
            let dir_path = branch.path.to_bytes();
            let marks = DirMarks { opaque: false, xattr_whiteouts: branch.xattr_whiteouts };
            // OCI whiteouts hide names in lower layers only, never a sibling in their own layer.
            let mut hidden_below: Vec<Vec<u8>> = Vec::new();
            for (name, kind, _ino) in layer.read_dir(dir_path)? {
                if name == b"." || name == b".." {
                    continue;
                }
                if layer.formats.oci {
                    match whiteout::classify_oci_name(&name) {
                        OciName::Plain => {}
                        OciName::Whiteout(target) => {
                            hidden_below.push(target.to_vec());
                            continue;
                        }
                        OciName::Opaque | OciName::Meta => continue,
                    }
                }
                if hidden.contains(&name) {
                    continue;
                }
                if self.is_listed_whiteout(layer, &branch.path, &name, kind, marks)? {
                    hidden.insert(name);
                    continue;
                }
                hidden.insert(name.clone());
                out.push(Visible { name, from: index });
            }
            hidden.extend(hidden_below);
        }
        Ok(out)
    }

    /// Only entries whose type could be a whiteout are stat'ed: char devices, and zero-size
    /// regular files in a directory marked as holding xattr whiteouts.
    fn is_listed_whiteout(
        &self,
        layer: &super::layer::Layer,
        dir: &std::ffi::CStr,
        name: &[u8],
        kind: u32,
        marks: DirMarks,
    ) -> SysResult<bool> {
        let candidate = kind == 0 || kind == libc::S_IFCHR || (marks.xattr_whiteouts && kind == libc::S_IFREG);
        if !candidate {
            return Ok(false);
        }
        let rel = join_c(dir, name)?;
        match layer.stat(&rel) {
            Ok(st) => Ok(layer.is_whiteout(&rel, &st, marks)),
            // Gone since the listing: treat as not there.
            Err(_) => Ok(true),
        }
    }

    /// The full listing of a directory: every visible name, looked up.
    pub fn list_dir(&self, dir: &Node) -> SysResult<Vec<Listed>> {
        let state = dir.state();
        let mut out = Vec::new();
        for v in self.visible_names(&state.branches)? {
            if let Some(found) = self.find(&state.path, &state.branches[v.from..], &v.name)? {
                out.push(Listed { name: v.name, found });
            }
        }
        Ok(out)
    }

    /// The listing of an open directory, taken afresh when read from the start (so a rewind sees
    /// changes, as POSIX asks of rewinddir) and kept for reads that continue it.
    pub fn dir_listing(&self, fh: u64, offset: u64) -> SysResult<(Arc<OpenDir>, Arc<Vec<Listed>>)> {
        let open = self.dirs.get(fh)?;
        let mut slot = open.listing.lock().unwrap_or_else(|p| p.into_inner());
        let listing = match slot.as_ref() {
            Some(l) if offset != 0 => l.clone(),
            _ => {
                let l = Arc::new(self.list_dir(&open.node)?);
                *slot = Some(l.clone());
                l
            }
        };
        drop(slot);
        Ok((open, listing))
    }
}
