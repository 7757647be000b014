//! The FUSE glue: `impl fuser::Filesystem` for a [`Union`]. Each method converts its arguments,
//! calls the union once, and replies once; all overlay logic lives in [`crate::union`].

pub mod backing;
pub mod nodeids;
pub mod offload;
pub mod probe;
pub mod reply;
pub mod session;
pub mod uring;
pub mod wire;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use fuser::{
    FileHandle, Filesystem, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig, OpenFlags,
    ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen,
    ReplyStatfs, ReplyWrite, ReplyXattr, Request,
};

use crate::union::file::OpenFile;
use crate::union::{Entry, Union};
use crate::union::readdir::{DirRead, Listed, dir_offset};
use crate::union::attr::{SetAttr, SetTime};
use crate::union::dir::{Caller, NewObject};
use reply::{errno, file_attr, file_type};

/// The filesystem a session serves. Its [`Core`] answers every request: the quick ones on the
/// threads that read them, the slow ones on a pool (see [`offload`]).
pub struct ShaleFs {
    core: Arc<Core>,
    pub(super) slow: offload::Pool,
    /// Dropped with the filesystem when fuser's session ends, which wakes [`session::serve`].
    session_end: Option<std::sync::mpsc::Sender<()>>,
}

pub struct Core {
    union: Union,
    /// How long the kernel may cache entries and attributes without asking again.
    ttl: Duration,
    /// Ask the kernel for FUSE passthrough of file I/O.
    want_passthrough: bool,
    backings: backing::Backings,
    /// Kernel node ids ↔ union inodes (they differ only for files split off at a copy-up).
    ids: nodeids::NodeIds,
    /// The kernel can do without OPENDIR and RELEASEDIR (Linux ≥ 5.1): two round trips fewer
    /// per directory read, and it caches listings as if FOPEN_CACHE_DIR had been answered.
    no_opendir: AtomicBool,
    /// Held by every changing request, so a commit can pause them (see [`crate::freeze`]).
    gate: OnceLock<crate::freeze::Gate>,
}

impl std::ops::Deref for ShaleFs {
    type Target = Core;
    fn deref(&self) -> &Core {
        &self.core
    }
}

impl ShaleFs {
    pub fn new(union: Union, ttl: Duration, want_passthrough: bool) -> ShaleFs {
        let core = Core {
            union,
            ttl,
            want_passthrough,
            backings: backing::Backings::default(),
            ids: nodeids::NodeIds::default(),
            no_opendir: AtomicBool::new(false),
            gate: OnceLock::new(),
        };
        ShaleFs { core: Arc::new(core), slow: offload::Pool::default(), session_end: None }
    }

    /// Let a commit pause this mount's changes. Writable handles are then served by the
    /// daemon (not passed through), so that every write passes the gate.
    pub fn with_gate(self, gate: crate::freeze::Gate) -> ShaleFs {
        let _ = self.core.gate.set(gate);
        self.core.backings.serve_writes(true);
        self
    }

    /// Answer a changing request here, or on the pool while a commit holds the mount frozen:
    /// there it waits for the thaw (passing the gate itself) while this thread goes on with
    /// reads. A freeze that begins between the look and the gate holds this thread until the
    /// thaw, as it held any thread before.
    fn changing(&self, answer: impl FnOnce(&Core) + Send + 'static) {
        if self.gate.get().is_some_and(|g| g.is_frozen()) { self.slowly(answer) } else { answer(self) }
    }

    /// Answer on the pool: a request that may take as long as the disk.
    fn slowly(&self, answer: impl FnOnce(&Core) + Send + 'static) {
        let core = self.core.clone();
        self.slow.run(move || answer(&core));
    }
}

impl Core {
    /// Wait while a commit holds the mount frozen; held for one changing request.
    fn enter(&self) -> Option<std::sync::RwLockReadGuard<'_, ()>> {
        self.gate.get().map(|g| g.enter())
    }

    /// How to answer an open or a create of handle `fh` of union inode `ino` on kernel node
    /// `nodeid`: the backing file to pass through to, when the kernel allows it, and the open
    /// flags. `register` is the reply's `open_backing`.
    ///
    /// A handle that needs the upper copy of a file whose kernel inode passes through to its
    /// lower copy is answered ESTALE: the VFS then looks the name up again and opens a new
    /// kernel inode for the file (see [`nodeids`]). When its retry comes back on the same inode
    /// (a re-open through /proc/PID/fd), a read-only handle is served by this daemon beside the
    /// others; a writable one is refused with ETXTBSY, as its mmap would map the lower file.
    fn open_answer(
        &self,
        pid: u32,
        nodeid: u64,
        ino: u64,
        fh: u64,
        register: impl FnOnce(std::os::fd::BorrowedFd<'_>) -> std::io::Result<fuser::BackingId>,
    ) -> Result<(Option<std::sync::Arc<fuser::BackingId>>, FopenFlags), crate::sys::Errno> {
        let Ok(open) = self.union.open_file(fh) else { return Ok((None, self.open_flags(None))) };
        match self.backings.open(nodeid, fh, &open, register) {
            backing::Reply::Passthrough(id, extra) => Ok((Some(id), Self::passthrough_flags() | extra)),
            backing::Reply::Plain(extra) => Ok((None, self.open_flags(Some(&open)) | extra)),
            backing::Reply::Moved => {
                let send_back = self.ids.send_back(nodeid, ino, pid);
                if !send_back && !open.writable
                    && let Some(id) = self.backings.open_beside(nodeid, fh)
                {
                    return Ok((Some(id), Self::passthrough_flags() | FopenFlags::FOPEN_DIRECT_IO));
                }
                drop(open);
                self.union.release(fh);
                Err(if send_back { crate::sys::Errno(libc::ESTALE) } else { crate::sys::Errno(libc::ETXTBSY) })
            }
        }
    }

    /// Flags for an open file the daemon serves. No FLUSH on close: shalefs handles no lock
    /// requests (the kernel keeps POSIX locks itself), so a flush would be a round trip that
    /// does nothing. A lower file's content changes only through this daemon (after a copy-up,
    /// whose writes update the page cache as they pass), so its pages may outlive the open;
    /// an upper file may also have been written through passthrough, which bypasses them.
    fn open_flags(&self, open: Option<&OpenFile>) -> FopenFlags {
        let lower = self.union.is_read_only() || open.is_some_and(|o| o.may_move);
        let keep = if lower { FopenFlags::FOPEN_KEEP_CACHE } else { FopenFlags::empty() };
        FopenFlags::FOPEN_NOFLUSH | keep
    }

    /// The flags of a passthrough open: the kernel refuses any outside FOPEN_PASSTHROUGH_MASK
    /// (KEEP_CACHE has no meaning there: the page cache is the backing file's).
    fn passthrough_flags() -> FopenFlags {
        FopenFlags::FOPEN_NOFLUSH
    }

    /// Every change to a directory goes through this daemon, and the kernel drops its cached
    /// listing of a directory it changed: it may cache listings (readdir from the page cache).
    fn opendir_flags(&self) -> FopenFlags {
        FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE
    }
}

/// One entry of a directory read: `.` or `..` (with its inode number), or a listed entry.
enum Dirent<'a> {
    Dot(u64, &'a [u8]),
    Entry(&'a Listed),
}

/// The entries of a read after its position, each with its own position: 1 for `.`, 2 for `..`,
/// 3 + i for entry i of the listing.
fn positions(read: &DirRead) -> impl Iterator<Item = (u64, Dirent<'_>)> {
    let parent = read.node.parent.load(std::sync::atomic::Ordering::Relaxed);
    let dots = [(1, Dirent::Dot(read.node.ino, b".".as_slice())), (2, Dirent::Dot(parent, b"..".as_slice()))];
    let entries = read.listing.iter().enumerate().map(|(i, e)| (i as u64 + 3, Dirent::Entry(e)));
    dots.into_iter().chain(entries).skip(read.position as usize)
}

/// Answered on the root of every shalefs mount (to root only, as any `trusted.` xattr, and not
/// listed): `PID PIDNS`, the PID of the daemon serving it and the inode of its PID namespace
/// (a PID means nothing in another namespace).
pub const DAEMON_PID_XATTR: &str = "trusted.shalefs.daemon-pid";

pub fn daemon_identity() -> String {
    use std::os::unix::fs::MetadataExt;
    let ns = std::fs::metadata("/proc/self/ns/pid").map_or(0, |m| m.ino());
    format!("{} {ns}", std::process::id())
}

impl Filesystem for ShaleFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let wanted = InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_READDIRPLUS_AUTO
            | InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_CACHE_SYMLINKS
            // O_TRUNC arrives with open, so a truncating open copies up no data.
            | InitFlags::FUSE_ATOMIC_O_TRUNC
            // The kernel checks POSIX ACLs (read from the layers' real files) as kernel overlayfs
            // does, and caches each inode's ACLs — "none" included — instead of asking for
            // system.posix_acl_* on every `ls -l`. The umask is still applied by the kernel
            // (no FUSE_DONT_MASK).
            | InitFlags::FUSE_POSIX_ACL;
        // Each flag the kernel lacks is only a lost optimisation.
        let supported = wanted & config.capabilities();
        self.no_opendir.store(config.capabilities().contains(InitFlags::FUSE_NO_OPENDIR_SUPPORT), Ordering::Relaxed);
        let _ = config.add_capabilities(supported);
        let _ = config.set_max_readahead(1 << 20);
        // Passthrough to files on an ordinary filesystem: stack depth 1 (so this mount can in
        // turn be a layer of kernel overlayfs).
        if self.want_passthrough && config.capabilities().contains(InitFlags::FUSE_PASSTHROUGH) {
            let ok = config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok() && config.set_max_stack_depth(1).is_ok();
            self.backings.enable(ok);
            tracing::debug!("FUSE passthrough {}", if ok { "on" } else { "refused" });
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.union.lookup(self.ids.union(parent.0), name.as_bytes()) {
            // A name that is not there is answered with node 0 and a timeout: the kernel keeps
            // a negative dentry (as it does on kernel overlayfs) instead of asking again — a
            // program probing for files that do not exist (python's imports) asks once. A name
            // can only appear through this mount, which replaces that dentry.
            Err(e) if e == crate::sys::Errno::ENOENT => reply.entry(&self.ttl, &reply::negative_entry(), Generation(0)),
            r => self.reply_entry(r, reply),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.union.forget(self.ids.union(ino.0), nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.union.getattr(self.ids.union(ino.0), _fh.map(|f| f.0)) {
            Ok(st) => reply.attr(&self.ttl, &file_attr(&st)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.union.readlink(self.ids.union(ino.0)) {
            Ok(target) => reply.data(&target),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let (pid, union_ino) = (req.pid(), self.ids.union(ino.0));
        let open = move |core: &Core| core.open_file(pid, ino.0, union_ino, flags.0, reply);
        match crate::union::file::wants_write(flags.0) {
            // A writable open copies up first: a change, and maybe a long one.
            true if self.union.needs_copy_up(union_ino) => self.slowly(open),
            true => self.changing(open),
            false => open(self),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyData,
    ) {
        self.slowly(move |core| match core.union.read(fh.0, offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(errno(e)),
        });
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _owner: fuser::LockOwner, reply: ReplyEmpty) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.backings.release(fh.0);
        self.union.release(fh.0);
        reply.ok();
    }

    /// Directories need no handle (listings are snapshots named by their offsets): a kernel that
    /// can skip OPENDIR is told so by ENOSYS, once; an older one gets handle 0.
    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if self.no_opendir.load(Ordering::Relaxed) {
            return reply.error(errno(crate::sys::Errno(libc::ENOSYS)));
        }
        reply.opened(FileHandle(0), self.opendir_flags());
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let read = match self.union.dir_listing(self.ids.union(ino.0), offset) {
            Ok(v) => v,
            Err(e) => return reply.error(errno(e)),
        };
        let mut added = false;
        for (position, entry) in positions(&read) {
            let (ino, kind, name) = match entry {
                Dirent::Dot(dot_ino, name) => (dot_ino, fuser::FileType::Directory, name),
                Dirent::Entry(e) => (e.found.ino, file_type(e.found.kind), e.name.as_slice()),
            };
            if reply.add(INodeNo(ino), dir_offset(read.id, position), kind, OsStr::from_bytes(name)) {
                break;
            }
            added = true;
        }
        if !added {
            self.union.dir_read_done(read.id);
        }
        reply.ok();
    }

    fn readdirplus(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectoryPlus) {
        let read = match self.union.dir_listing(self.ids.union(ino.0), offset) {
            Ok(v) => v,
            Err(e) => return reply.error(errno(e)),
        };
        let mut added = false;
        for (position, entry) in positions(&read) {
            let offset = dir_offset(read.id, position);
            let full = match entry {
                // The kernel takes no lookup reference for "." and "..", so they are not remembered.
                Dirent::Dot(dot_ino, name) => {
                    let Ok(st) = self.union.getattr(dot_ino, None).or_else(|_| self.union.getattr(self.ids.union(ino.0), None)) else { continue };
                    reply.add(INodeNo(dot_ino), offset, OsStr::from_bytes(name), &self.ttl, &file_attr(&st), Generation(0))
                }
                Dirent::Entry(e) => {
                    // Each entry handed over is a lookup reference; one that did not fit is given back.
                    let generation = Generation(self.union.remember(self.ids.union(ino.0), &e.found).generation());
                    let (attr, ttl) = self.entry_attr(&e.found.stat, self.ids.entry(e.found.ino));
                    let full = reply.add(INodeNo(e.found.ino), offset, OsStr::from_bytes(&e.name), &ttl, &attr, generation);
                    if full {
                        self.union.forget(e.found.ino, 1);
                    }
                    full
                }
            };
            if full {
                break;
            }
            added = true;
        }
        if !added {
            self.union.dir_read_done(read.id);
        }
        reply.ok();
    }

    fn releasedir(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.union.statfs() {
            Ok(s) => reply.statfs(
                s.f_blocks,
                s.f_bfree,
                s.f_bavail,
                s.f_files,
                s.f_ffree,
                s.f_bsize as u32,
                crate::union::lookup::NAME_MAX as u32,
                s.f_frsize as u32,
            ),
            Err(e) => reply.error(errno(e)),
        }
    }

    /// FUSE over /dev/fuse gets no DESTROY (only fuseblk does); this runs when the kernel
    /// ended the session (ENODEV on the device) and every worker has stopped.
    fn destroy(&mut self) {
        self.slow.stop();
        match Arc::get_mut(&mut self.core) {
            Some(core) => core.union.release_all(),
            None => tracing::warn!("files of the mount stay open until its last request is answered"),
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        // `shalefs umount` asks which process serves the mount, to wait for its exit.
        if ino.0 == crate::union::ino::ROOT_INO && name.as_bytes() == DAEMON_PID_XATTR.as_bytes() {
            return reply::xattr(reply, daemon_identity().as_bytes(), size);
        }
        match self.union.getxattr(self.ids.union(ino.0), name.as_bytes()) {
            Ok(value) => reply::xattr(reply, &value, size),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.union.listxattr(self.ids.union(ino.0)) {
            Ok(names) => reply::xattr(reply, &names, size),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<fuser::TimeOrNow>,
        mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<std::time::SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<std::time::SystemTime>,
        _chgtime: Option<std::time::SystemTime>,
        _bkuptime: Option<std::time::SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let (pid, union_ino) = (_req.pid(), self.ids.union(ino.0));
        let change = SetAttr { mode, uid, gid, size, atime: atime.map(set_time), mtime: mtime.map(set_time) };
        let fh = fh.map(|f| f.0);
        // A copy-up, or a truncate (which may free many blocks), can take a while.
        if size.is_some() || self.union.needs_copy_up(union_ino) {
            return self.slowly(move |core| core.set_attr(pid, ino.0, union_ino, change, fh, reply));
        }
        self.changing(move |core| core.set_attr(pid, ino.0, union_ino, change, fh, reply))
    }

    fn mknod(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, _umask: u32, rdev: u32, reply: ReplyEntry) {
        let (parent, name, caller) = (self.ids.union(parent.0), name.as_bytes().to_vec(), caller(req));
        self.changing(move |core| {
            let _gate = core.enter();
            let obj = match mode & libc::S_IFMT {
                libc::S_IFREG | 0 => NewObject::File { mode: mode & 0o7777 },
                _ => NewObject::Node { mode, rdev: rdev as u64 },
            };
            core.reply_entry(core.union.create_object(parent, &name, obj, caller), reply);
        });
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, _umask: u32, reply: ReplyEntry) {
        let (parent, name, caller) = (self.ids.union(parent.0), name.as_bytes().to_vec(), caller(req));
        self.changing(move |core| {
            let _gate = core.enter();
            core.reply_entry(core.union.create_object(parent, &name, NewObject::Dir { mode }, caller), reply);
        });
    }

    fn symlink(&self, req: &Request, parent: INodeNo, link_name: &OsStr, target: &Path, reply: ReplyEntry) {
        let (parent, name, caller) = (self.ids.union(parent.0), link_name.as_bytes().to_vec(), caller(req));
        let target = target.as_os_str().as_bytes().to_vec();
        self.changing(move |core| {
            let _gate = core.enter();
            core.reply_entry(core.union.create_object(parent, &name, NewObject::Symlink { target: &target }, caller), reply);
        });
    }

    fn link(&self, _req: &Request, ino: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        let (ino, newparent, newname) = (self.ids.union(ino.0), self.ids.union(newparent.0), newname.as_bytes().to_vec());
        let link = move |core: &Core| {
            let _gate = core.enter();
            core.reply_entry(core.union.link(ino, newparent, &newname), reply);
        };
        // Linking a lower file copies it up first.
        if self.union.needs_copy_up(ino) { self.slowly(link) } else { self.changing(link) }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let (parent, name) = (self.ids.union(parent.0), name.as_bytes().to_vec());
        self.changing(move |core| {
            let _gate = core.enter();
            reply_empty(core.union.unlink(parent, &name), reply);
        });
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let (parent, name) = (self.ids.union(parent.0), name.as_bytes().to_vec());
        self.changing(move |core| {
            let _gate = core.enter();
            reply_empty(core.union.rmdir(parent, &name), reply);
        });
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: fuser::RenameFlags,
        reply: ReplyEmpty,
    ) {
        // A lower file renamed is copied up first.
        let (parent, name, newparent, newname) = (self.ids.union(parent.0), name.as_bytes().to_vec(), self.ids.union(newparent.0), newname.as_bytes().to_vec());
        self.slowly(move |core| {
            let _gate = core.enter();
            reply_empty(core.union.rename(parent, &name, newparent, &newname, flags.bits()), reply);
        });
    }

    fn create(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, _umask: u32, flags: i32, reply: ReplyCreate) {
        let (pid, parent, name, caller) = (req.pid(), self.ids.union(parent.0), name.as_bytes().to_vec(), caller(req));
        self.changing(move |core| core.create_file(pid, parent, &name, (mode, flags), caller, reply));
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: fuser::WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyWrite,
    ) {
        let data = data.to_vec();
        self.slowly(move |core| {
            let _gate = core.enter();
            match core.union.write(fh.0, offset, &data) {
                Ok(n) => reply.written(n as u32),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    /// No ioctl is served: the answer a regular file gives to a terminal ioctl (programs such as
    /// python ask isatty() of every file they open). fuser's default would log a warning for
    /// each one.
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        reply.error(fuser::Errno::ENOTTY);
    }

    fn fsync(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, datasync: bool, reply: ReplyEmpty) {
        self.slowly(move |core| reply_empty(core.union.fsync(fh.0, datasync), reply));
    }

    fn fsyncdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, datasync: bool, reply: ReplyEmpty) {
        let ino = self.ids.union(ino.0);
        self.slowly(move |core| reply_empty(core.union.fsyncdir(ino, datasync), reply));
    }

    fn setxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, value: &[u8], flags: i32, _position: u32, reply: ReplyEmpty) {
        let (ino, name, value) = (self.ids.union(ino.0), name.as_bytes().to_vec(), value.to_vec());
        let set = move |core: &Core| {
            let _gate = core.enter();
            reply_empty(core.union.setxattr(ino, &name, &value, flags), reply);
        };
        if self.union.needs_copy_up(ino) { self.slowly(set) } else { self.changing(set) }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let (ino, name) = (self.ids.union(ino.0), name.as_bytes().to_vec());
        let remove = move |core: &Core| {
            let _gate = core.enter();
            reply_empty(core.union.removexattr(ino, &name), reply);
        };
        if self.union.needs_copy_up(ino) { self.slowly(remove) } else { self.changing(remove) }
    }

    fn fallocate(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, offset: u64, length: u64, mode: i32, reply: ReplyEmpty) {
        self.slowly(move |core| {
            let _gate = core.enter();
            reply_empty(core.union.fallocate(fh.0, offset, length, mode), reply);
        });
    }

    fn lseek(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, offset: i64, whence: i32, reply: ReplyLseek) {
        match self.union.lseek(fh.0, offset, whence) {
            Ok(off) => reply.offset(off),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        _ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: fuser::CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        self.slowly(move |core| {
            let _gate = core.enter();
            match core.union.copy_file_range(fh_in.0, offset_in, fh_out.0, offset_out, len) {
                Ok(n) => reply.written(n as u32),
                Err(e) => reply.error(errno(e)),
            }
        });
    }
}

impl Core {
    /// OPEN of kernel node `nodeid` (union inode `ino`) by process `pid`.
    fn open_file(&self, pid: u32, nodeid: u64, ino: u64, flags: i32, reply: ReplyOpen) {
        // A writable open copies up: a change like any other.
        let _gate = crate::union::file::wants_write(flags).then(|| self.enter());
        match self.union.open(ino, flags) {
            Ok(fh) => match self.open_answer(pid, nodeid, ino, fh, |fd| reply.open_backing(fd)) {
                Ok((Some(id), flags)) => reply.opened_passthrough(FileHandle(fh), flags, &id),
                Ok((None, flags)) => reply.opened(FileHandle(fh), flags),
                Err(e) => reply.error(errno(e)),
            },
            Err(e) => reply.error(errno(e)),
        }
    }

    /// CREATE of `name` in union directory `parent`, with `(mode, open flags)`, by process
    /// `pid`.
    fn create_file(&self, pid: u32, parent: u64, name: &[u8], (mode, flags): (u32, i32), caller: Caller, reply: ReplyCreate) {
        let _gate = self.enter();
        match self.union.create(parent, name, mode, flags, caller) {
            Ok((e, fh)) => {
                let (alias, generation) = (self.ids.entry(e.stat.st_ino), Generation(e.generation));
                let (attr, ttl) = self.entry_attr(&e.stat, alias);
                match self.open_answer(pid, attr.ino.0, e.stat.st_ino, fh, |fd| reply.open_backing(fd)) {
                    Ok((Some(id), flags)) => reply.created_passthrough(&ttl, &attr, generation, FileHandle(fh), flags, &id),
                    Ok((None, flags)) => reply.created(&ttl, &attr, generation, FileHandle(fh), flags),
                    Err(err) => {
                        // No entry reaches the kernel: give back the reference it would have held.
                        self.union.forget(e.stat.st_ino, 1);
                        reply.error(errno(err));
                    }
                }
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    /// SETATTR of kernel node `nodeid` (union inode `ino`) by process `pid`.
    fn set_attr(&self, pid: u32, nodeid: u64, ino: u64, change: SetAttr, fh: Option<u64>, reply: ReplyAttr) {
        let _gate = self.enter();
        // A truncate by name of a file whose inode passes through to its lower copy changes data
        // that inode cannot show: sent back to come again on a new inode, as an open is.
        if change.size.is_some() && fh.is_none() && self.backings.passes_through_lower(nodeid) && self.ids.send_back(nodeid, ino, pid) {
            return reply.error(errno(crate::sys::Errno(libc::ESTALE)));
        }
        match self.union.setattr(ino, change, fh) {
            Ok(st) => reply.attr(&self.ttl, &file_attr(&st)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn reply_entry(&self, r: crate::sys::SysResult<Entry>, reply: ReplyEntry) {
        match r {
            Ok(e) => {
                let (attr, attr_ttl) = self.entry_attr(&e.stat, self.ids.entry(e.stat.st_ino));
                reply.entry_with_ttls(&attr_ttl, &self.ttl, &attr, Generation(e.generation))
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    /// The attributes of an entry for the kernel, and how long it may keep them. fuser takes a
    /// file's node id from its attributes, so an alias entry carries the alias there — and no
    /// time to keep them: the kernel asks GETATTR first, whose answer has the real `st_ino`.
    fn entry_attr(&self, st: &libc::stat, alias: Option<u64>) -> (fuser::FileAttr, Duration) {
        let mut attr = file_attr(st);
        match alias {
            Some(alias) => {
                attr.ino = INodeNo(alias);
                (attr, Duration::ZERO)
            }
            None => (attr, self.ttl),
        }
    }
}

fn reply_empty(r: crate::sys::SysResult<()>, reply: ReplyEmpty) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(e)),
    }
}

fn caller(req: &Request) -> Caller {
    Caller { uid: req.uid(), gid: req.gid() }
}

fn set_time(t: fuser::TimeOrNow) -> SetTime {
    match t {
        fuser::TimeOrNow::Now => SetTime::Now,
        fuser::TimeOrNow::SpecificTime(t) => match t.duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => SetTime::At(d.as_secs() as i64, d.subsec_nanos() as i64),
            Err(e) => {
                let d = e.duration();
                // Before 1970: whole seconds down, nanoseconds up, as timespec wants.
                let (mut s, mut ns) = (-(d.as_secs() as i64), -(d.subsec_nanos() as i64));
                if ns < 0 {
                    s -= 1;
                    ns += 1_000_000_000;
                }
                SetTime::At(s, ns)
            }
        },
    }
}
