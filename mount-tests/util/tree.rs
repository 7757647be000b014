//! Walk a mounted tree into a comparable description, and compare two of them.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirEntryExt, MetadataExt};
use std::path::Path;

/// What a walk records of one object. `ino` is kept for link groups but not compared directly:
/// the two filesystems number their inodes differently.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u64,
    pub size: u64,
    pub mtime: (i64, i64),
    pub rdev: u64,
    pub content: Option<Vec<u8>>,
    pub target: Option<Vec<u8>>,
    /// user.* xattrs other than the overlay's own.
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

#[derive(Debug, Default)]
pub struct Tree {
    pub entries: BTreeMap<Vec<u8>, Entry>,
    pub inos: BTreeMap<Vec<u8>, u64>,
    /// Paths whose readdir d_ino differed from stat's st_ino.
    pub dino_mismatches: Vec<Vec<u8>>,
    /// Names readdir listed but lstat could not find (kernel overlayfs lists a lower whiteout in
    /// a directory that is not merged).
    pub phantoms: Vec<Vec<u8>>,
}

/// All xattrs of a path, without following a final symlink.
pub fn xattrs(path: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut out = BTreeMap::new();
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else { return out };
    let mut names = vec![0u8; 65536];
    // SAFETY: `names` is writable for its length; `c` is NUL-terminated.
    let n = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    if n <= 0 {
        return out;
    }
    names.truncate(n as usize);
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let Ok(cn) = CString::new(name) else { continue };
        let mut val = vec![0u8; 65536];
        // SAFETY: `val` is writable for its length; both strings are NUL-terminated.
        let m = unsafe { libc::lgetxattr(c.as_ptr(), cn.as_ptr(), val.as_mut_ptr().cast(), val.len()) };
        if m >= 0 {
            val.truncate(m as usize);
            out.insert(name.to_vec(), val);
        }
    }
    out
}

fn user_xattrs(path: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
    xattrs(path).into_iter().filter(|(k, _)| k.starts_with(b"user.") && !k.starts_with(b"user.overlay.")).collect()
}

impl Tree {
    pub fn walk(root: &Path) -> Tree {
        let mut tree = Tree::default();
        walk_dir(root, b"", &mut tree);
        tree
    }

    /// Groups of paths sharing one inode (hard links), for non-directories.
    pub fn link_groups(&self) -> BTreeSet<BTreeSet<Vec<u8>>> {
        let mut by_ino: BTreeMap<u64, BTreeSet<Vec<u8>>> = BTreeMap::new();
        for (path, e) in &self.entries {
            if e.mode & libc::S_IFMT != libc::S_IFDIR {
                by_ino.entry(self.inos[path]).or_default().insert(path.clone());
            }
        }
        by_ino.into_values().filter(|g| g.len() > 1).collect()
    }

    /// Distinct objects must have distinct inode numbers: directories never share one.
    pub fn dir_ino_collisions(&self) -> Vec<Vec<u8>> {
        let mut seen: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
        let mut out = Vec::new();
        for (path, e) in &self.entries {
            if e.mode & libc::S_IFMT == libc::S_IFDIR
                && let Some(other) = seen.insert(self.inos[path], path.clone()) {
                    out.push(other);
                    out.push(path.clone());
                }
        }
        out
    }
}

fn walk_dir(dir: &Path, rel: &[u8], tree: &mut Tree) {
    let rd = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()));
    for entry in rd {
        let entry = entry.expect("dir entry");
        let name = entry.file_name();
        let path = entry.path();
        let mut relp = rel.to_vec();
        if !relp.is_empty() {
            relp.push(b'/');
        }
        relp.extend_from_slice(name.as_bytes());
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tree.phantoms.push(relp);
                continue;
            }
            Err(e) => panic!("lstat {}: {e}", path.display()),
        };
        if entry.ino() != meta.ino() {
            tree.dino_mismatches.push(relp.clone());
        }
        let kind = meta.mode() & libc::S_IFMT;
        let content = (kind == libc::S_IFREG).then(|| std::fs::read(&path).expect("read file"));
        let target = (kind == libc::S_IFLNK).then(|| std::fs::read_link(&path).expect("readlink").as_os_str().as_bytes().to_vec());
        let e = Entry {
            mode: meta.mode(),
            uid: meta.uid(),
            gid: meta.gid(),
            nlink: meta.nlink(),
            size: if kind == libc::S_IFDIR { 0 } else { meta.size() },
            mtime: (meta.mtime(), meta.mtime_nsec()),
            rdev: meta.rdev(),
            content,
            target,
            xattrs: user_xattrs(&path),
        };
        tree.inos.insert(relp.clone(), meta.ino());
        tree.entries.insert(relp.clone(), e);
        if kind == libc::S_IFDIR {
            walk_dir(&path, &relp, tree);
        }
    }
}

fn show(p: &[u8]) -> String {
    String::from_utf8_lossy(p).into_owned()
}

/// Panic with a readable list of differences unless `ours` (a shalefs mount) and `oracle` show
/// the same tree, and `ours` keeps shalefs' own promises (d_ino = st_ino, no phantom names,
/// distinct numbers).
pub fn assert_same_tree(ours: &Tree, oracle: &Tree) {
    let mut diffs = content_diffs(ours, oracle);
    for p in &ours.dino_mismatches {
        diffs.push(format!("shalefs readdir d_ino differs from st_ino: {}", show(p)));
    }
    for p in &ours.phantoms {
        diffs.push(format!("shalefs lists a name it cannot stat: {}", show(p)));
    }
    for p in ours.dir_ino_collisions() {
        diffs.push(format!("shalefs gives two directories one inode number: {}", show(&p)));
    }
    report(diffs);
}

/// Like [`assert_same_tree`] for two trees of any origin: only what they show is compared.
pub fn assert_same_content(a: &Tree, b: &Tree) {
    report(content_diffs(a, b));
}

fn report(diffs: Vec<String>) {
    assert!(diffs.is_empty(), "{} differences:\n{}", diffs.len(), diffs.iter().take(30).cloned().collect::<Vec<_>>().join("\n"));
}

fn content_diffs(ours: &Tree, oracle: &Tree) -> Vec<String> {
    let mut diffs = Vec::new();
    for (path, e) in &oracle.entries {
        match ours.entries.get(path) {
            None => diffs.push(format!("missing in shalefs: {}", show(path))),
            Some(o) if o != e => diffs.push(format!("differs: {}\n  shalefs: {o:?}\n  kernel:  {e:?}", show(path))),
            Some(_) => {}
        }
    }
    for path in ours.entries.keys() {
        if !oracle.entries.contains_key(path) {
            diffs.push(format!("only in shalefs: {}", show(path)));
        }
    }
    if ours.link_groups() != oracle.link_groups() {
        diffs.push(format!("hard-link groups differ:\n  shalefs: {:?}\n  kernel:  {:?}", ours.link_groups(), oracle.link_groups()));
    }
    diffs
}
