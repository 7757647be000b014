//! Directory operations (overlayfs' dir.c): create, mknod, mkdir, symlink, link, unlink, rmdir,
//! rename. Every change lands in the upper; a name that still exists below after a removal gets
//! a whiteout; a directory created where a whiteout was is opaque; a moved directory that has
//! lower parts records where they are (`overlay.redirect`, as with `redirect_dir=on`).

use std::ffi::{CStr, CString};
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::sys::{self, Errno, SysResult};

use super::{Entry, Union};
use super::copy_up::CopyUp;
use super::layer::{WORK_LAYER, join, join_c};
use super::lookup::{Found, check_name};
use super::node::{Branch, Node, NodeState};

/// overlayfs' default `redirect_max`: the longest absolute redirect a move may write.
const REDIRECT_MAX: usize = 256;

/// Who asks: new objects belong to them.
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
}

/// What a new object is and how to make it at a place.
pub enum NewObject<'a> {
    File { mode: u32 },
    Node { mode: u32, rdev: u64 },
    Dir { mode: u32 },
    Symlink { target: &'a [u8] },
}

impl NewObject<'_> {
    fn kind(&self) -> u32 {
        match self {
            NewObject::File { .. } => libc::S_IFREG,
            NewObject::Node { mode, .. } => mode & libc::S_IFMT,
            NewObject::Dir { .. } => libc::S_IFDIR,
            NewObject::Symlink { .. } => libc::S_IFLNK,
        }
    }

    fn perm(&self) -> u32 {
        match self {
            NewObject::File { mode } | NewObject::Node { mode, .. } | NewObject::Dir { mode } => mode & 0o7777,
            NewObject::Symlink { .. } => 0o777,
        }
    }

    /// Make the object at `rel` below `dir`; a regular file comes back open for reading and
    /// writing, so that a create needs no second open.
    fn make(&self, dir: BorrowedFd<'_>, rel: &CStr) -> SysResult<Option<OwnedFd>> {
        match self {
            NewObject::File { mode } => {
                sys::open_beneath_mode(dir, rel, libc::O_CREAT | libc::O_EXCL | libc::O_RDWR, mode & 0o7777).map(Some)
            }
            NewObject::Node { mode, rdev } => sys::mknodat(dir, rel, *mode, *rdev).map(|()| None),
            NewObject::Dir { mode } => sys::mkdirat(dir, rel, mode & 0o7777).map(|()| None),
            NewObject::Symlink { target } => sys::symlinkat(&sys::cstring(target)?, dir, rel).map(|()| None),
        }
    }
}

impl Union {
    fn dir_node(&self, ino: u64) -> SysResult<(Arc<Node>, NodeState)> {
        let node = self.nodes.get(ino)?;
        if !node.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        let state = node.state();
        if state.branches.is_empty() {
            return Err(Errno::ENOENT);
        }
        Ok((node, state))
    }

    /// Whether a layer below the upper shows `name` in this directory: then removing it from the
    /// upper would let it reappear, and a whiteout must stay in its place.
    fn lower_shows(&self, dir: &NodeState, name: &[u8]) -> SysResult<bool> {
        let lowers: Vec<Branch> = dir.branches.iter().filter(|b| !self.is_upper(std::slice::from_ref(b))).cloned().collect();
        Ok(self.find(&dir.path, &lowers, name)?.is_some())
    }

    /// Create `name` in `parent`, owned by the caller; returns the new object, registered.
    pub fn create_object(&self, parent: u64, name: &[u8], obj: NewObject<'_>, caller: Caller) -> SysResult<Entry> {
        self.create_object_open(parent, name, obj, caller).map(|(entry, _)| entry)
    }

    /// [`Self::create_object`], and for a regular file an fd open on it for reading and writing.
    pub(super) fn create_object_open(
        &self,
        parent: u64,
        name: &[u8],
        obj: NewObject<'_>,
        caller: Caller,
    ) -> SysResult<(Entry, Option<OwnedFd>)> {
        check_name(name)?;
        if let NewObject::Node { mode, rdev: 0 } = obj {
            // A user-made 0/0 device would read as a whiteout: overlayfs refuses it too.
            if mode & libc::S_IFMT == libc::S_IFCHR {
                return Err(Errno::EPERM);
            }
        }
        let (_, pstate) = self.dir_node(parent)?;
        if self.find(&pstate.path, &pstate.branches, name)?.is_some() {
            return Err(Errno::EEXIST);
        }
        let (owner, caller_gid) = self.ids.caller_to_disk(caller.uid, caller.gid);
        let parent_st = self.ensure_upper_dir(&pstate.path)?;
        let (upper, work) = (self.upper()?, self.work()?);
        let target = join_c(&pstate.path, name)?;
        // BSD group semantics in a set-gid directory, as every Linux filesystem gives.
        let sgid_dir = parent_st.st_mode & libc::S_ISGID != 0;
        let gid = if sgid_dir { parent_st.st_gid } else { caller_gid };
        let is_dir = obj.kind() == libc::S_IFDIR;
        // Nothing shows under this name, so anything in the upper here is a whiteout.
        let over_whiteout = upper.stat(&target).is_ok();
        let (dir_fd, place) = if over_whiteout { (work.fd(), self.temp_name()) } else { (upper.fd(), target.clone()) };
        let fd = obj.make(dir_fd, &place)?;
        let finish = || -> SysResult<()> {
            sys::lchownat(dir_fd, &place, owner, gid)?;
            let mut perm = obj.perm();
            if is_dir && sgid_dir {
                perm |= libc::S_ISGID;
            }
            // chown clears set-uid/set-gid bits: put them back.
            if obj.kind() != libc::S_IFLNK && perm & 0o6000 != 0 {
                sys::fchmodat(dir_fd, &place, perm)?;
            }
            if over_whiteout {
                if is_dir {
                    // A directory where a whiteout was hides what is below (overlayfs: opaque).
                    self.set_work_xattr(&place, b"opaque", b"y")?;
                    sys::renameat2(work.fd(), &place, upper.fd(), &target, libc::RENAME_EXCHANGE)?;
                    self.remove_work_tree(&place);
                } else {
                    sys::renameat2(work.fd(), &place, upper.fd(), &target, 0)?;
                }
            }
            Ok(())
        };
        if let Err(e) = finish() {
            let _ = sys::unlinkat(dir_fd, &place, if is_dir { libc::AT_REMOVEDIR } else { 0 });
            return Err(e);
        }
        // A new object lives in the upper only and has its own number: no need to look it up
        // across the layers again.
        let mut stat = upper.stat(&target)?;
        let ino = self.inos.map(stat.st_dev, stat.st_ino);
        super::lookup::present(&mut stat, ino, false);
        let branches = vec![Branch { layer: 0, path: target.clone(), xattr_whiteouts: false }];
        let found = Found { ino, kind: obj.kind(), stat, path: target, branches };
        Ok((self.entry(parent, &found), fd))
    }

    /// A new hard link `newname` in `newparent` to the object `ino` (copied up first).
    pub fn link(&self, ino: u64, newparent: u64, newname: &[u8]) -> SysResult<Entry> {
        check_name(newname)?;
        let node = self.nodes.get(ino)?;
        if node.is_dir() {
            return Err(Errno::EPERM);
        }
        let (pnode, pstate) = self.dir_node(newparent)?;
        if self.find(&pstate.path, &pstate.branches, newname)?.is_some() {
            return Err(Errno::EEXIST);
        }
        self.copy_up_for_link(&node)?;
        self.ensure_upper_dir(&pstate.path)?;
        let (upper, work) = (self.upper()?, self.work()?);
        let top = node.top()?;
        let src_layer = self.stack.get(top.layer)?;
        let target = join_c(&pstate.path, newname)?;
        if upper.stat(&target).is_ok() {
            // Over a whiteout: link beside it in the work dir, then swap it in.
            let tmp = self.temp_name();
            sys::linkat(src_layer.fd(), &top.path, work.fd(), &tmp)?;
            if let Err(e) = sys::renameat2(work.fd(), &tmp, upper.fd(), &target, 0) {
                let _ = sys::unlinkat(work.fd(), &tmp, 0);
                return Err(e);
            }
        } else {
            sys::linkat(src_layer.fd(), &top.path, upper.fd(), &target)?;
        }
        let pstate = pnode.state();
        let found = self.find(&pstate.path, &pstate.branches, newname)?.ok_or(Errno::EIO)?;
        Ok(self.entry(newparent, &found))
    }

    /// Get a file ready for another name. With `metacopy=on` a regular file stays metadata
    /// only, as on overlayfs (ovl_link copies up without data): its data is found through an
    /// absolute redirect, which every name of the upper inode shares, naming it as the next
    /// layer down spells it. Otherwise it is copied whole.
    fn copy_up_for_link(&self, node: &Node) -> SysResult<()> {
        if !self.metacopy || node.kind() != libc::S_IFREG {
            return self.copy_up_node(node, CopyUp::Data);
        }
        self.copy_up_node(node, CopyUp::Metadata)?;
        if !node.is_metacopy() {
            return Ok(());
        }
        let top = node.top()?;
        if self.upper()?.overlay_xattr(&top.path, b"redirect").is_none() {
            let below = self.spelled_below(&top.path)?;
            self.set_upper_xattr(&top.path, b"redirect", &absolute_bytes(&below))?;
        }
        Ok(())
    }

    /// How the layer just below the upper spells the object at merged path `path`, which is in
    /// the upper with its parents (overlayfs' ovl_get_redirect): its own redirect if it has
    /// one, else its parent's spelling and its name. Layers further down apply their own
    /// redirects in turn.
    fn spelled_below(&self, path: &CStr) -> SysResult<Vec<u8>> {
        let upper = self.upper()?;
        let (mut here, mut below) = (b".".to_vec(), b".".to_vec());
        for part in path.to_bytes().split(|&b| b == b'/').filter(|c| !c.is_empty() && *c != b".") {
            here = join(&here, part);
            let redirect = upper.overlay_xattr(&sys::cstring(&here)?, b"redirect");
            below = match redirect.and_then(|r| super::lookup::redirect_target(&below, &r)) {
                Some((d, n)) => join(&d, &n),
                None => join(&below, part),
            };
        }
        Ok(below)
    }

    pub fn unlink(&self, parent: u64, name: &[u8]) -> SysResult<()> {
        self.remove(parent, name, false)
    }

    pub fn rmdir(&self, parent: u64, name: &[u8]) -> SysResult<()> {
        self.remove(parent, name, true)
    }

    fn remove(&self, parent: u64, name: &[u8], dir: bool) -> SysResult<()> {
        check_name(name)?;
        let (_pnode, pstate) = self.dir_node(parent)?;
        let found = self.find(&pstate.path, &pstate.branches, name)?.ok_or(Errno::ENOENT)?;
        match (dir, found.kind == libc::S_IFDIR) {
            (true, false) => return Err(Errno::ENOTDIR),
            (false, true) => return Err(Errno::EISDIR),
            _ => {}
        }
        self.upper()?;
        if dir && !self.list_found(&found)?.is_empty() {
            return Err(Errno::ENOTEMPTY);
        }
        let needs_whiteout = self.lower_shows(&pstate, name)?;
        self.ensure_upper_dir(&pstate.path)?;
        let live = self.nodes.find(found.ino);
        if self.is_upper(&found.branches) {
            self.remove_upper_entry(&found, dir, needs_whiteout, live.as_deref())?;
        } else {
            self.whiteout_upper(&found.path)?;
            self.name_gone_from_lower(&found);
        }
        Ok(())
    }

    /// A lower object lost a name. The kernel's node for it is gone with it — unless it is a
    /// file with other names, which lives on through them (its lower branch stays valid).
    fn name_gone_from_lower(&self, found: &Found) {
        if let Some(n) = self.nodes.find(found.ino)
            && (found.kind == libc::S_IFDIR || found.stat.st_nlink <= 1) {
                n.update(|s| s.branches.clear());
            }
    }

    /// Take an upper entry out of the tree, leaving a whiteout if a lower name would show.
    fn remove_upper_entry(&self, found: &Found, dir: bool, needs_whiteout: bool, live: Option<&Node>) -> SysResult<()> {
        let (upper, work) = (self.upper()?, self.work()?);
        let open = live.is_some_and(|n| n.open_count.load(Ordering::Relaxed) > 0);
        if dir {
            self.upper_paths_moved(found.path.to_bytes(), None, false);
        }
        // An upper directory that holds nothing, not even whiteouts, goes at once (as overlayfs'
        // rmdir of a pure upper directory): no move to the work directory, which costs the
        // kernel a walk up the whole tree to check the move is legal.
        if dir && !needs_whiteout && sys::unlinkat(upper.fd(), &found.path, libc::AT_REMOVEDIR).is_ok() {
            if let Some(n) = live {
                n.update(|s| s.branches.clear());
            }
            return Ok(());
        }
        if dir || (open && found.stat.st_nlink <= 1) {
            // A directory may still hold whiteouts, and an open file must stay reachable for
            // fchmod/futimens by inode: move it to the work directory.
            let tmp = self.temp_name();
            if needs_whiteout {
                self.make_whiteout_in_work(&tmp)?;
                self.mark_for_xwhiteout(&tmp, &found.path)?;
                sys::renameat2(upper.fd(), &found.path, work.fd(), &tmp, libc::RENAME_EXCHANGE)?;
            } else {
                sys::renameat2(upper.fd(), &found.path, work.fd(), &tmp, 0)?;
            }
            match live {
                Some(n) if !dir => n.update(|s| {
                    s.branches = vec![Branch { layer: WORK_LAYER, path: tmp.clone(), xattr_whiteouts: false }];
                    s.path = tmp.clone();
                }),
                _ => {
                    self.remove_work_tree(&tmp);
                    if let Some(n) = live {
                        n.update(|s| s.branches.clear());
                    }
                }
            }
            return Ok(());
        }
        let real_ino = upper.stat(&found.path)?.st_ino;
        if needs_whiteout {
            self.whiteout_upper(&found.path)?;
        } else {
            sys::unlinkat(upper.fd(), &found.path, 0)?;
        }
        if let Some(n) = live {
            let other_name = if found.stat.st_nlink > 1 { self.upper_name_of(real_ino) } else { None };
            n.update(|s| match other_name {
                // The node knew the file by the name just removed: move it to one that is left.
                Some(other) if s.path == found.path => {
                    s.branches = vec![Branch { layer: 0, path: other.clone(), xattr_whiteouts: false }];
                    s.path = other;
                }
                Some(_) => {}
                None => s.branches.clear(),
            });
        }
        Ok(())
    }

    /// Another name in the upper of the non-directory with real inode `ino` (the upper is
    /// searched: this is needed only when a name of a hard-linked object the kernel holds is
    /// removed).
    fn upper_name_of(&self, ino: u64) -> Option<CString> {
        fn walk(layer: &super::layer::Layer, dir: &[u8], ino: u64) -> Option<Vec<u8>> {
            for (name, kind, d_ino) in layer.read_dir(dir).ok()? {
                let rel = join(dir, &name);
                if kind != libc::S_IFDIR && d_ino == ino {
                    return Some(rel);
                }
                if kind == libc::S_IFDIR
                    && let Some(found) = walk(layer, &rel, ino) {
                        return Some(found);
                    }
            }
            None
        }
        walk(self.upper().ok()?, b".", ino).and_then(|p| CString::new(p).ok())
    }

    /// The entries of a directory found by lookup, as readdir shows them.
    fn list_found(&self, found: &Found) -> SysResult<Vec<super::readdir::Listed>> {
        let tmp = Node::new(found.ino, found.kind, 0, found.path.clone(), found.branches.clone());
        self.list_dir(&tmp)
    }

    /// rename(2) with RENAME_NOREPLACE and RENAME_EXCHANGE. RENAME_WHITEOUT is refused (EINVAL),
    /// as on overlayfs.
    pub fn rename(&self, parent: u64, name: &[u8], newparent: u64, newname: &[u8], flags: u32) -> SysResult<()> {
        check_name(name)?;
        check_name(newname)?;
        if flags & !(libc::RENAME_NOREPLACE | libc::RENAME_EXCHANGE) != 0
            || flags & libc::RENAME_NOREPLACE != 0 && flags & libc::RENAME_EXCHANGE != 0
        {
            return Err(Errno::EINVAL);
        }
        let exchange = flags & libc::RENAME_EXCHANGE != 0;
        // A scan of the upper for labels that this rename overlaps starts again.
        let _renaming = self.labels.renaming();
        let (_, ps) = self.dir_node(parent)?;
        let (npnode, nps) = self.dir_node(newparent)?;
        let src = self.find(&ps.path, &ps.branches, name)?.ok_or(Errno::ENOENT)?;
        let dst = self.find(&nps.path, &nps.branches, newname)?;
        if flags & libc::RENAME_NOREPLACE != 0 && dst.is_some() {
            return Err(Errno::EEXIST);
        }
        if exchange && dst.is_none() {
            return Err(Errno::ENOENT);
        }
        if let Some(d) = &dst {
            if d.ino == src.ino {
                // Two names of one file: rename(2) does nothing.
                return Ok(());
            }
            if !exchange {
                let (sdir, ddir) = (src.kind == libc::S_IFDIR, d.kind == libc::S_IFDIR);
                if sdir && !ddir {
                    return Err(Errno::ENOTDIR);
                }
                if !sdir && ddir {
                    return Err(Errno::EISDIR);
                }
                if ddir && !self.list_found(d)?.is_empty() {
                    return Err(Errno::ENOTEMPTY);
                }
            }
        }
        self.upper()?;
        // Whether a lower shows each name: a whiteout must stay at the source (plain rename), and
        // a moved directory must not merge with what a lower has at its new name.
        let src_side_lower = self.lower_shows(&ps, name)?;
        let dst_side_lower = self.lower_shows(&nps, newname)?;
        let src_lower_shows = !exchange && src_side_lower;
        if parent != newparent {
            self.check_redirect_fits(&src)?;
            if let (true, Some(d)) = (exchange, &dst) {
                self.check_redirect_fits(d)?;
            }
        }
        self.prepare_to_move(&src, dst_side_lower)?;
        if let (true, Some(d)) = (exchange, &dst) {
            self.prepare_to_move(d, src_side_lower)?;
        }
        self.ensure_upper_dir(&nps.path)?;
        let upper = self.upper()?;
        let new_path = join_c(&nps.path, newname)?;
        if exchange {
            sys::renameat2(upper.fd(), &src.path, upper.fd(), &new_path, libc::RENAME_EXCHANGE)?;
        } else {
            if let Some(d) = &dst {
                if self.is_upper(&d.branches) {
                    self.remove_upper_entry(d, d.kind == libc::S_IFDIR, false, self.nodes.find(d.ino).as_deref())?;
                } else {
                    self.name_gone_from_lower(d);
                }
            }
            self.move_in_upper(&src.path, &new_path, src_lower_shows, src.kind == libc::S_IFDIR)?;
        }
        self.renamed(&src.path, &new_path, exchange);
        if let Some(n) = self.nodes.find(src.ino) {
            n.parent.store(npnode.ino, Ordering::Relaxed);
        }
        if let (true, Some(d)) = (exchange, &dst)
            && let Some(n) = self.nodes.find(d.ino) {
                n.parent.store(parent, Ordering::Relaxed);
            }
        Ok(())
    }

    /// A directory with lower parts that moves to another directory records their path in an
    /// absolute redirect. overlayfs refuses one longer than its `redirect_max` (256 by default)
    /// with EXDEV, and `mv` then copies the tree instead: the same here, so that deep moves
    /// behave alike (a rename within one directory needs only a name there, and always works).
    fn check_redirect_fits(&self, obj: &Found) -> SysResult<()> {
        if obj.kind != libc::S_IFDIR {
            return Ok(());
        }
        match obj.branches.iter().find(|b| !self.is_upper(std::slice::from_ref(b))) {
            Some(b) if b.path.to_bytes().len() + 1 > REDIRECT_MAX => Err(Errno::EXDEV),
            _ => Ok(()),
        }
    }

    /// Get an object ready to move: in the upper, and for a directory a record of where its
    /// lower parts are (redirect) or, if it has none, opacity where a lower would show through.
    fn prepare_to_move(&self, obj: &Found, lower_at_target: bool) -> SysResult<()> {
        if obj.kind == libc::S_IFDIR {
            let lower = obj.branches.iter().find(|b| !self.is_upper(std::slice::from_ref(b)));
            // An upper in user.overlay.* form is what overlayfs writes with `userxattr`, which
            // implies redirect_dir=nofollow: a directory with lower parts cannot move (EXDEV;
            // mv copies it instead), so that kernel overlayfs can mount the upper too.
            if lower.is_some() && !self.upper()?.formats.trusted_xattrs {
                return Err(Errno(libc::EXDEV));
            }
            self.ensure_upper_dir(&obj.path)?;
            match lower {
                Some(_) => {
                    let below = self.spelled_below(&obj.path)?;
                    self.set_upper_xattr(&obj.path, b"redirect", &dir_redirect(&below, obj.path.to_bytes())?)?;
                    self.note_upper_move(obj.path.to_bytes(), &below);
                }
                None if lower_at_target => self.set_upper_xattr(&obj.path, b"opaque", b"y")?,
                None => {}
            }
            Ok(())
        } else {
            match self.nodes.find(obj.ino) {
                Some(n) => self.copy_up_node(&n, CopyUp::Metadata)?,
                None => {
                    let _ = self.ensure_upper_dir(&sys::cstring(&super::util::parent_of(obj.path.to_bytes()))?);
                    self.copy_up_found(obj, CopyUp::Metadata)?
                }
            }
            // A moved metacopy file finds its data through a redirect, as with overlayfs'
            // metacopy: where the next layer down has it, spelled as that layer spells it
            // (that layer may be a metacopy too, with a redirect of its own, and the data's
            // path there may be whited out).
            if obj.kind == libc::S_IFREG && self.upper()?.is_metacopy(&obj.path) {
                let below = self.spelled_below(&obj.path)?;
                self.set_upper_xattr(&obj.path, b"redirect", &absolute_bytes(&below))?;
            }
            Ok(())
        }
    }

    /// Rename inside the upper, leaving a whiteout at the old name if a lower shows it there.
    fn move_in_upper(&self, from: &CStr, to: &CStr, whiteout: bool, is_dir: bool) -> SysResult<()> {
        let upper = self.upper()?;
        // Whatever the upper still has at the target is a whiteout (a real entry was removed
        // already). A directory cannot replace it by rename: swap the two instead, which puts
        // the whiteout at the old name, where it is wanted or removed.
        if is_dir && upper.stat(to).is_ok() {
            sys::renameat2(upper.fd(), from, upper.fd(), to, libc::RENAME_EXCHANGE)?;
            if !whiteout {
                sys::unlinkat(upper.fd(), from, 0)?;
            }
            return Ok(());
        }
        if whiteout {
            match sys::renameat2(upper.fd(), from, upper.fd(), to, libc::RENAME_WHITEOUT) {
                Ok(()) => return Ok(()),
                // No privilege to make the device: rename, then the fallback whiteout.
                Err(Errno::EPERM) | Err(Errno::EINVAL) => {}
                Err(e) => return Err(e),
            }
            sys::renameat2(upper.fd(), from, upper.fd(), to, 0)?;
            return self.whiteout_upper(from);
        }
        sys::renameat2(upper.fd(), from, upper.fd(), to, 0)
    }

    /// After a rename, the nodes under the moved paths have new merged (and upper) paths.
    /// Lower branches stay: a moved directory finds them through its redirect.
    fn renamed(&self, from: &CStr, to: &CStr, exchange: bool) {
        let (a, b) = (from.to_bytes(), to.to_bytes());
        self.upper_paths_moved(a, Some(b), exchange);
        for node in self.nodes.all() {
            node.update(|s| {
                let p = s.path.to_bytes();
                let moved = if let Some(new) = replace_prefix(p, a, b) {
                    Some(new)
                } else if exchange {
                    replace_prefix(p, b, a)
                } else {
                    None
                };
                if let Some(new) = moved.and_then(|n| CString::new(n).ok()) {
                    if let Some(up) = s.branches.first_mut().filter(|br| br.layer == 0 && br.path == s.path) {
                        up.path = new.clone();
                    }
                    s.path = new;
                }
            });
        }
    }
}

/// A redirect naming `path` from the layer root (overlayfs' absolute form).
fn absolute_bytes(path: &[u8]) -> Vec<u8> {
    [b"/".as_slice(), path].concat()
}

/// The redirect of a directory whose lower parts are at `lower`, moved from merged path `from`:
/// absolute (`/` + the lower path), or, when that is longer than overlayfs' `redirect_max` and
/// the move stays in the directory where the lower parts are, the old name alone (overlayfs'
/// relative redirect, resolved beside the directory). A long one elsewhere was refused before.
fn dir_redirect(lower: &[u8], from: &[u8]) -> SysResult<Vec<u8>> {
    if lower.len() < REDIRECT_MAX {
        return Ok([b"/".as_slice(), lower].concat());
    }
    let (parent, name) = (super::util::parent_of(lower), super::util::name_of(lower));
    if parent == super::util::parent_of(from) { Ok(name.to_vec()) } else { Err(Errno::EXDEV) }
}

/// `prefix` or `prefix/rest` → `new` or `new/rest`.
pub(super) fn replace_prefix(path: &[u8], prefix: &[u8], new: &[u8]) -> Option<Vec<u8>> {
    if path == prefix {
        return Some(new.to_vec());
    }
    let rest = path.strip_prefix(prefix)?.strip_prefix(b"/")?;
    Some(join(new, rest))
}

#[cfg(test)]
mod tests {
    use super::replace_prefix;

    #[test]
    fn prefixes_move_whole_components_only() {
        assert_eq!(replace_prefix(b"a/b", b"a", b"x"), Some(b"x/b".to_vec()));
        assert_eq!(replace_prefix(b"a", b"a", b"x/y"), Some(b"x/y".to_vec()));
        assert_eq!(replace_prefix(b"ab/c", b"a", b"x"), None);
    }
}
