//! Listing a merged directory (overlayfs' readdir.c).
//!
//! Each layer's directory is read top to bottom; a name seen in a higher layer (as an entry or as
//! a whiteout) hides the same name below. Whiteouts, opaque markers and AUFS bookkeeping are never
//! listed — not even a whiteout in the bottom layer that hides nothing, which kernel overlayfs
//! shows in a directory that is not merged. Every listed name is then looked up, so that `d_ino`
//! equals what `stat` says (overlayfs does the same for merged directories).

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use crate::sys::{Errno, SysResult};

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

/// Listings being read. Directories are read without open handles (the kernel skips
/// OPENDIR/RELEASEDIR when told it may), so a read from the start takes a snapshot, and the
/// offsets it hands out name the snapshot: a read that continues one sees the same entries at the
/// same positions, however the directory changed since, and two readers never mix snapshots.
/// A snapshot goes when its last entry has been read, or when newer ones push it out.
#[derive(Debug, Default)]
pub struct Snapshots {
    next: AtomicU32,
    held: Mutex<VecDeque<Snapshot>>,
}

#[derive(Debug)]
struct Snapshot {
    ino: u64,
    id: u32,
    listing: Arc<Vec<Listed>>,
}

/// At most this many snapshots, and entries in all of them, are kept.
const MAX_SNAPSHOTS: usize = 64;
const MAX_SNAPSHOT_ENTRIES: usize = 250_000;

/// A directory offset: the snapshot's id in the high half, the position in the low half (1 after
/// `.`, 2 after `..`, 3 + i after entry i). Below 2^63, as the kernel's loff_t needs.
pub fn dir_offset(id: u32, position: u64) -> u64 {
    ((id as u64) << 32) | (position & 0xffff_ffff)
}

fn split_offset(offset: u64) -> (u32, u64) {
    ((offset >> 32) as u32, offset & 0xffff_ffff)
}

impl Snapshots {
    fn take(&self, ino: u64, listing: Vec<Listed>) -> (u32, Arc<Vec<Listed>>) {
        // Ids stay below 2^31 and are never 0 (offset 0 means "from the start").
        let id = self.next.fetch_add(1, Ordering::Relaxed) % 0x7fff_ffff + 1;
        let listing = Arc::new(listing);
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        held.push_back(Snapshot { ino, id, listing: listing.clone() });
        while held.len() > MAX_SNAPSHOTS || (held.len() > 1 && held.iter().map(|s| s.listing.len()).sum::<usize>() > MAX_SNAPSHOT_ENTRIES) {
            held.pop_front();
        }
        (id, listing)
    }

    fn find(&self, ino: u64, id: u32) -> Option<Arc<Vec<Listed>>> {
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        held.iter().find(|s| s.ino == ino && s.id == id).map(|s| s.listing.clone())
    }

    /// Drop a snapshot whose reader reached its end.
    pub fn finished(&self, id: u32) {
        self.held.lock().unwrap_or_else(|p| p.into_inner()).retain(|s| s.id != id);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.held.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// A part of a listing to hand out: the directory, the snapshot and where in it to start.
#[derive(Debug)]
pub struct DirRead {
    pub node: Arc<Node>,
    pub id: u32,
    pub listing: Arc<Vec<Listed>>,
    /// The position the read continues after (0: from the start, before `.`).
    pub position: u64,
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

    /// The listing of directory `ino` for a read at `offset`: a fresh snapshot when read from
    /// the start (so a rewind sees changes, as POSIX asks of rewinddir), else the snapshot the
    /// offset names. One pushed out already is taken afresh and read on from the same position.
    pub fn dir_listing(&self, ino: u64, offset: u64) -> SysResult<DirRead> {
        let node = self.nodes.get(ino)?;
        if !node.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        let (id, position) = split_offset(offset);
        if let Some(listing) = (offset != 0).then(|| self.snapshots.find(ino, id)).flatten() {
            return Ok(DirRead { node, id, listing, position });
        }
        let mut listed = self.list_dir(&node)?;
        for l in &mut listed {
            if let Some(top) = l.found.branches.first().cloned() {
                self.count_merged_names(l.found.ino, l.found.kind, &top, &mut l.found.stat);
            }
            self.ids.show(&mut l.found.stat);
        }
        let (id, listing) = self.snapshots.take(ino, listed);
        Ok(DirRead { node, id, listing, position })
    }

    /// A reader is done with a snapshot.
    pub fn dir_read_done(&self, id: u32) {
        self.snapshots.finished(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_carry_the_snapshot_and_the_position() {
        let off = dir_offset(0x7fff_ffff, 3 + 100_000);
        assert!(off < 1 << 63);
        assert_eq!(split_offset(off), (0x7fff_ffff, 100_003));
    }

    #[test]
    fn snapshots_are_bounded() {
        let s = Snapshots::default();
        let ids: Vec<u32> = (0..MAX_SNAPSHOTS as u64 + 10).map(|ino| s.take(ino, Vec::new()).0).collect();
        assert_eq!(s.len(), MAX_SNAPSHOTS);
        assert!(s.find(0, ids[0]).is_none());
        let last = *ids.last().unwrap_or(&0);
        assert!(s.find(MAX_SNAPSHOTS as u64 + 9, last).is_some());
        s.finished(last);
        assert_eq!(s.len(), MAX_SNAPSHOTS - 1);
    }
}
