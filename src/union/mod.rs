//! The overlay rules on plain directories: no FUSE types here. Every operation takes inode
//! numbers, names and handles, and returns a `Result` carrying the errno the caller should see.
//!
//! The split follows kernel overlayfs' `fs/overlayfs/`:
//! - [`layer`] — the layer stack (super.c/params.c)
//! - [`whiteout`] — whiteout and opaque encodings, as pure functions
//! - [`lookup`] — finding a name across layers (namei.c)
//! - [`readdir`] — merged directory listings (readdir.c)
//! - [`attr`] — attributes (inode.c)
//! - [`xattr`] — extended attributes, with the overlay's own hidden
//! - [`labels`] — whether any layer carries SELinux labels, found by a background scan
//! - [`file`] — open files and reads (file.c)
//! - [`copy_up`] — copy-up, whole or metadata only (copy_up.c)
//! - [`dir`] — directory operations (dir.c)
//! - [`util`] — writing the upper in overlayfs format (util.c)
//! - [`idmap`] — owners shifted between disk and kernel (uidmapping=/gidmapping=)
//! - [`ino`] — inode numbers that are unique across filesystems (xino)
//! - [`node`] — the node and handle tables
//! - [`view`] — a read-only merged view walked by path, for diff, commit and export

pub mod attr;
pub mod copy_up;
pub mod dir;
pub mod file;
pub mod idmap;
pub mod ino;
pub mod labels;
pub mod layer;
pub mod lookup;
pub mod node;
pub mod readdir;
pub mod whiteout;
pub mod util;
pub mod view;
pub mod xattr;

#[cfg(test)]
mod tests;

use std::sync::Arc;

pub use crate::sys::{Errno, SysResult};

use file::OpenFile;
use ino::{InoMap, ROOT_INO};
use layer::LayerStack;
use lookup::Found;
use node::{HandleTable, Node, NodeState, NodeTable};
use readdir::Snapshots;

/// What the kernel is told of an object it looks up or creates.
#[derive(Debug, Clone, Copy)]
pub struct Entry {
    pub stat: libc::stat,
    pub generation: u64,
}

/// One mounted union: its layers, and the objects the kernel currently holds.
#[derive(Debug)]
pub struct Union {
    stack: LayerStack,
    inos: InoMap,
    nodes: NodeTable,
    files: HandleTable<OpenFile>,
    /// Directory listings being read.
    snapshots: Snapshots,
    /// Per lower layer, its hard-linked files, built when one of them is first copied up.
    aliases: std::sync::Mutex<std::collections::HashMap<u16, Arc<copy_up::LayerLinks>>>,
    /// The upper's moved directories, once a hard-linked lower file needed them: walked for
    /// once, then kept up to date by each rename, copy-up and removal.
    upper_moves: std::sync::Mutex<Option<copy_up::Moves>>,
    /// `metacopy=on`: a metadata change copies a regular file's metadata only, its data stays
    /// below until the file is opened for writing (overlayfs' metacopy feature; off by default,
    /// as there).
    metacopy: bool,
    /// How copy-ups are made durable before they become visible (`volatile`: not at all).
    durability: copy_up::Durability,
    /// How owners on disk show through the mount, and back (identity unless asked).
    ids: idmap::IdMapping,
    /// Whether the merged view carries `security.selinux` labels at all.
    labels: Arc<labels::Labels>,
}

impl Union {
    pub fn new(stack: LayerStack) -> SysResult<Union> {
        let inos = InoMap::new(stack.iter().map(|l| l.dev));
        let union = Union {
            stack,
            inos,
            nodes: NodeTable::default(),
            files: HandleTable::default(),
            snapshots: Snapshots::default(),
            aliases: Default::default(),
            upper_moves: Default::default(),
            metacopy: false,
            durability: copy_up::Durability::Synced,
            ids: idmap::IdMapping::default(),
            labels: Arc::default(),
        };
        let mut union = union;
        if let Some(upper) = union.stack.upper() {
            union.durability = util::durability_for(upper);
        }
        let branches = union.root_branches()?;
        union.nodes.insert_root(Node::new(ROOT_INO, libc::S_IFDIR, ROOT_INO, c".".to_owned(), branches));
        Ok(union)
    }

    /// Turn metadata-only copy-up on or off (before the mount serves requests).
    pub fn set_metacopy(&mut self, on: bool) {
        self.metacopy = on;
    }

    /// The mount is gone: close every file and layer now, before the slower teardown (dropping
    /// the node tables), so the layers' filesystems are free the moment the daemon says so.
    pub fn release_all(&mut self) {
        self.labels.stop();
        self.files = HandleTable::default();
        self.snapshots = Snapshots::default();
        self.stack.release();
    }

    /// `volatile`: copy-ups are not synced (overlayfs' option of that name).
    pub fn set_volatile(&mut self) {
        self.durability = copy_up::Durability::Volatile;
    }

    /// How copy-ups are made durable on this mount.
    pub fn durability(&self) -> copy_up::Durability {
        self.durability
    }

    /// Shift owners between disk and kernel (before the mount serves requests).
    pub fn set_id_mapping(&mut self, ids: idmap::IdMapping) {
        self.ids = ids;
    }

    /// A scan of this mount's layers for SELinux labels, to run in a thread of its own once
    /// the mount is live (see [`labels`]).
    pub fn label_scan(&self) -> SysResult<labels::LabelScan> {
        let mut lowers = Vec::new();
        let mut upper = None;
        for layer in self.stack.iter() {
            match layer.role {
                layer::Role::Upper => upper = Some(layer.duplicate()?),
                _ => lowers.push(layer.duplicate()?),
            }
        }
        Ok(labels::LabelScan::new(self.labels.clone(), lowers, upper))
    }

    pub fn labels(&self) -> &labels::Labels {
        &self.labels
    }

    pub fn stack(&self) -> &LayerStack {
        &self.stack
    }

    pub fn is_read_only(&self) -> bool {
        self.stack.upper().is_none()
    }

    pub fn node(&self, ino: u64) -> SysResult<Arc<Node>> {
        self.nodes.get(ino)
    }

    /// Look `name` up in directory `parent` and hand the result to the kernel (one more lookup
    /// reference). ENOENT when the merged view has no such name.
    pub fn lookup(&self, parent: u64, name: &[u8]) -> SysResult<Entry> {
        let dir = self.nodes.get(parent)?;
        if !dir.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        let state = dir.state();
        let mut found = self.find(&state.path, &state.branches, name)?.ok_or(Errno::ENOENT)?;
        if let Some(top) = found.branches.first().cloned() {
            self.count_merged_names(found.ino, found.kind, &top, &mut found.stat);
        }
        Ok(self.entry(parent, &found))
    }

    /// Register `found` (one more kernel reference) and say what the kernel is to be told.
    pub fn entry(&self, parent: u64, found: &Found) -> Entry {
        let node = self.remember(parent, found);
        let mut stat = found.stat;
        self.ids.show(&mut stat);
        Entry { stat, generation: node.generation() }
    }

    /// Register an object found by lookup or readdirplus: the kernel now holds one more
    /// reference to its inode number.
    pub fn remember(&self, parent: u64, found: &Found) -> Arc<Node> {
        let node = self.nodes.remember(Node::new(found.ino, found.kind, parent, found.path.clone(), found.branches.clone()));
        // A node already known may have been reached by another name or moved, or its number
        // reused for a new object: the fresh lookup is the truth.
        node.set_kind(found.kind);
        node.set_state(NodeState { path: found.path.clone(), branches: found.branches.clone() });
        node
    }

    /// The kernel let go of `n` references. A removed object that was kept in the work
    /// directory because it was open goes for good with the last one.
    pub fn forget(&self, ino: u64, n: u64) {
        if let Some(node) = self.nodes.forget(ino, n)
            && let Ok(top) = node.top()
                && top.layer == layer::WORK_LAYER {
                    self.remove_work_tree(&top.path);
                }
    }

    /// How many objects the kernel holds: for tests and for the daemon's own accounting.
    pub fn live_nodes(&self) -> usize {
        self.nodes.len()
    }
}
