//! Merged-view objects and the tables that hold them: nodes by inode number (with the kernel's
//! lookup counts), open files and open directories by handle.

use std::collections::HashMap;
use std::ffi::CString;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use crate::sys::{Errno, SysResult};

/// Where an object of the merged view lives in one layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Branch {
    pub layer: u16,
    /// Path relative to the layer root; `.` for the root.
    pub path: CString,
    /// For a directory: it may hold xattr-form whiteouts (`overlay.opaque=x`).
    pub xattr_whiteouts: bool,
}

/// One object of the merged view. A directory has a branch in every layer it is merged from,
/// top first; a metacopy file its metadata-only copy and the layers down to its data; any other
/// object has exactly one, the topmost.
#[derive(Debug)]
pub struct Node {
    pub ino: u64,
    /// S_IFMT bits. They change only when the number is reused for a new object: an upper
    /// filesystem reuses a deleted file's inode number, maybe before the kernel forgot it.
    kind: AtomicU32,
    pub parent: AtomicU64,
    state: RwLock<NodeState>,
    lookups: AtomicU64,
    /// Held while this object is copied up: a copy-up locks only the object it copies.
    pub copy_up: Mutex<()>,
    /// Open file handles: an unlinked object that is still open is kept in the work directory.
    pub open_count: AtomicU64,
    /// Told to the kernel with the inode number. A number that comes back for another object
    /// (the upper filesystem reused a deleted inode's number) gets a new generation, so the
    /// kernel drops its cached inode of the dead object instead of reusing it.
    generation: AtomicU64,
}

/// Generations are unique for the life of the daemon.
static NEXT_GENERATION: AtomicU64 = AtomicU64::new(1);

#[derive(Debug, Clone)]
pub struct NodeState {
    /// The path in the merged view, relative to the root (`.` for the root). It is also the
    /// object's path in the upper layer, once it is there.
    pub path: CString,
    pub branches: Vec<Branch>,
}

impl Node {
    pub fn new(ino: u64, kind: u32, parent: u64, path: CString, branches: Vec<Branch>) -> Node {
        Node {
            ino,
            kind: AtomicU32::new(kind),
            parent: AtomicU64::new(parent),
            state: RwLock::new(NodeState { path, branches }),
            lookups: AtomicU64::new(0),
            copy_up: Mutex::new(()),
            open_count: AtomicU64::new(0),
            generation: AtomicU64::new(NEXT_GENERATION.fetch_add(1, Ordering::Relaxed)),
        }
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    pub fn kind(&self) -> u32 {
        self.kind.load(Ordering::Relaxed)
    }

    pub fn set_kind(&self, kind: u32) {
        self.kind.store(kind, Ordering::Relaxed);
    }

    pub fn is_dir(&self) -> bool {
        self.kind() == libc::S_IFDIR
    }

    pub fn state(&self) -> NodeState {
        self.state.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn set_state(&self, state: NodeState) {
        *self.state.write().unwrap_or_else(|p| p.into_inner()) = state;
    }

    pub fn update<R>(&self, f: impl FnOnce(&mut NodeState) -> R) -> R {
        f(&mut self.state.write().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn path(&self) -> CString {
        self.state.read().unwrap_or_else(|p| p.into_inner()).path.clone()
    }

    pub fn branches(&self) -> Vec<Branch> {
        self.state.read().unwrap_or_else(|p| p.into_inner()).branches.clone()
    }

    /// The topmost branch: where attributes, data and xattrs come from. ENOENT once the object
    /// was removed from the merged view.
    pub fn top(&self) -> SysResult<Branch> {
        self.state.read().unwrap_or_else(|p| p.into_inner()).branches.first().cloned().ok_or(Errno::ENOENT)
    }

    /// The layer of the topmost branch, none once the object was removed.
    pub fn top_layer(&self) -> Option<u16> {
        self.state.read().unwrap_or_else(|p| p.into_inner()).branches.first().map(|b| b.layer)
    }

    /// The layer a regular file's data is read from: its top branch, or for a metacopy file
    /// the lowest branch, which holds the data.
    pub fn data_layer(&self) -> Option<u16> {
        let state = self.state.read().unwrap_or_else(|p| p.into_inner());
        if self.is_dir() { state.branches.first() } else { state.branches.last() }.map(|b| b.layer)
    }

    /// A regular file copied up without its data (overlayfs' metacopy): attributes come from the
    /// top branch, data from the last.
    pub fn is_metacopy(&self) -> bool {
        self.kind() == libc::S_IFREG && self.state.read().unwrap_or_else(|p| p.into_inner()).branches.len() > 1
    }

    /// A directory is "merged" when more than one layer contributes to it.
    pub fn is_merged_dir(&self) -> bool {
        self.is_dir() && self.state.read().unwrap_or_else(|p| p.into_inner()).branches.len() > 1
    }
}

/// Nodes the kernel holds references to, by inode number.
#[derive(Debug, Default)]
pub struct NodeTable {
    nodes: RwLock<HashMap<u64, Arc<Node>>>,
}

impl NodeTable {
    pub fn get(&self, ino: u64) -> SysResult<Arc<Node>> {
        // A number the kernel no longer holds (or never got) is stale: ESTALE as in NFS/FUSE.
        self.nodes.read().unwrap_or_else(|p| p.into_inner()).get(&ino).cloned().ok_or(Errno(libc::ESTALE))
    }

    /// Every node, for the rare operations that must visit them all (a directory rename).
    pub fn all(&self) -> Vec<Arc<Node>> {
        self.nodes.read().unwrap_or_else(|p| p.into_inner()).values().cloned().collect()
    }

    /// The node under `ino`, if the kernel holds it.
    pub fn find(&self, ino: u64) -> Option<Arc<Node>> {
        self.nodes.read().unwrap_or_else(|p| p.into_inner()).get(&ino).cloned()
    }

    /// Insert the root with a lookup count that never drops to zero.
    pub fn insert_root(&self, node: Node) {
        node.lookups.store(1, Ordering::Relaxed);
        self.nodes.write().unwrap_or_else(|p| p.into_inner()).insert(node.ino, Arc::new(node));
    }

    /// Hand a node to the kernel: count one more lookup, inserting it if it is new. A node
    /// already known under this number (a hard link reached by another name) is reused.
    pub fn remember(&self, node: Node) -> Arc<Node> {
        let mut nodes = self.nodes.write().unwrap_or_else(|p| p.into_inner());
        let entry = nodes.entry(node.ino).or_insert_with(|| Arc::new(node));
        // The object this number named was removed: this is another object.
        if entry.state.read().unwrap_or_else(|p| p.into_inner()).branches.is_empty() {
            entry.generation.store(NEXT_GENERATION.fetch_add(1, Ordering::Relaxed), Ordering::Relaxed);
        }
        entry.lookups.fetch_add(1, Ordering::Relaxed);
        entry.clone()
    }

    /// The kernel dropped `n` references; the node goes when none are left, and is returned.
    pub fn forget(&self, ino: u64, n: u64) -> Option<Arc<Node>> {
        let mut nodes = self.nodes.write().unwrap_or_else(|p| p.into_inner());
        let node = nodes.get(&ino)?;
        // Counts change only under the write lock, so load-then-store is not a race.
        let left = node.lookups.load(Ordering::Relaxed).saturating_sub(n);
        node.lookups.store(left, Ordering::Relaxed);
        if left == 0 && ino != super::ino::ROOT_INO { nodes.remove(&ino) } else { None }
    }

    pub fn len(&self) -> usize {
        self.nodes.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Open files or directories by handle number.
#[derive(Debug)]
pub struct HandleTable<T> {
    next: AtomicU64,
    items: RwLock<HashMap<u64, Arc<T>>>,
}

impl<T> Default for HandleTable<T> {
    fn default() -> Self {
        HandleTable { next: AtomicU64::new(1), items: RwLock::new(HashMap::new()) }
    }
}

impl<T> HandleTable<T> {
    pub fn insert(&self, item: T) -> u64 {
        let fh = self.next.fetch_add(1, Ordering::Relaxed);
        self.items.write().unwrap_or_else(|p| p.into_inner()).insert(fh, Arc::new(item));
        fh
    }

    pub fn get(&self, fh: u64) -> SysResult<Arc<T>> {
        self.items.read().unwrap_or_else(|p| p.into_inner()).get(&fh).cloned().ok_or(Errno::EBADF)
    }

    pub fn remove(&self, fh: u64) {
        self.items.write().unwrap_or_else(|p| p.into_inner()).remove(&fh);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(ino: u64) -> Node {
        Node::new(ino, libc::S_IFREG, 1, c"x".to_owned(), vec![])
    }

    #[test]
    fn forget_removes_after_last_reference() {
        let t = NodeTable::default();
        t.remember(node(5));
        t.remember(node(5));
        t.forget(5, 1);
        assert!(t.get(5).is_ok());
        t.forget(5, 1);
        assert!(t.get(5).is_err());
    }

    #[test]
    fn root_is_never_forgotten() {
        let t = NodeTable::default();
        t.insert_root(Node::new(1, libc::S_IFDIR, 1, c".".to_owned(), vec![]));
        t.forget(1, 10);
        assert!(t.get(1).is_ok());
    }

    #[test]
    fn handles_are_distinct() {
        let h: HandleTable<u32> = HandleTable::default();
        let a = h.insert(1);
        let b = h.insert(2);
        assert_ne!(a, b);
        assert_eq!(*h.get(b).unwrap(), 2);
        h.remove(a);
        assert!(h.get(a).is_err());
    }
}
