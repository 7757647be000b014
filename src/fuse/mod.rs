//! The FUSE glue: `impl fuser::Filesystem` for a [`Union`]. Each method converts its arguments,
//! calls the union once, and replies once; all overlay logic lives in [`crate::union`].

pub mod reply;
pub mod session;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::time::Duration;

use fuser::{
    Errno as FuseErrno, FileHandle, Filesystem, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig, OpenFlags,
    ReplyAttr, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs,
    ReplyXattr, Request,
};

use crate::union::Union;
use reply::{errno, file_attr, file_type};

/// The filesystem a session serves.
pub struct ShaleFs {
    union: Union,
    /// How long the kernel may cache entries and attributes without asking again.
    ttl: Duration,
}

impl ShaleFs {
    pub fn new(union: Union, ttl: Duration) -> ShaleFs {
        ShaleFs { union, ttl }
    }

    /// Lowers never change under a mount, and without an upper nothing else can either: the
    /// kernel may keep file pages across opens.
    fn open_flags(&self) -> FopenFlags {
        if self.union.is_read_only() { FopenFlags::FOPEN_KEEP_CACHE } else { FopenFlags::empty() }
    }
}

impl Filesystem for ShaleFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let wanted = InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_READDIRPLUS_AUTO
            | InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_CACHE_SYMLINKS;
        // Each flag the kernel lacks is only a lost optimisation.
        let supported = wanted & config.capabilities();
        let _ = config.add_capabilities(supported);
        let _ = config.set_max_readahead(1 << 20);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.union.lookup(parent.0, name.as_bytes()) {
            Ok(st) => reply.entry(&self.ttl, &file_attr(&st), Generation(0)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.union.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.union.getattr(ino.0) {
            Ok(st) => reply.attr(&self.ttl, &file_attr(&st)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.union.readlink(ino.0) {
            Ok(target) => reply.data(&target),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.union.open(ino.0, flags.0) {
            Ok(fh) => reply.opened(FileHandle(fh), self.open_flags()),
            Err(e) => reply.error(errno(e)),
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
        match self.union.read(fh.0, offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(errno(e)),
        }
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
        self.union.release(fh.0);
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.union.opendir(ino.0) {
            Ok(fh) => reply.opened(FileHandle(fh), self.open_flags()),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let (open, listing) = match self.union.dir_listing(fh.0, offset) {
            Ok(v) => v,
            Err(e) => return reply.error(errno(e)),
        };
        let parent = open.node.parent.load(std::sync::atomic::Ordering::Relaxed);
        // Offsets: 1 after ".", 2 after "..", 3 + i after listing[i].
        let dots = [(ino.0, b".".as_slice()), (parent, b"..".as_slice())];
        for (i, (dot_ino, name)) in dots.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(*dot_ino), i as u64 + 1, fuser::FileType::Directory, OsStr::from_bytes(name)) {
                return reply.ok();
            }
        }
        let start = (offset as usize).saturating_sub(2);
        for (i, entry) in listing.iter().enumerate().skip(start) {
            let kind = file_type(entry.found.kind);
            if reply.add(INodeNo(entry.found.ino), i as u64 + 3, kind, OsStr::from_bytes(&entry.name)) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(&self, _req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectoryPlus) {
        let (open, listing) = match self.union.dir_listing(fh.0, offset) {
            Ok(v) => v,
            Err(e) => return reply.error(errno(e)),
        };
        let parent = open.node.parent.load(std::sync::atomic::Ordering::Relaxed);
        // The kernel takes no lookup reference for "." and "..", so they are not remembered.
        for (i, dot_ino) in [ino.0, parent].into_iter().enumerate().skip(offset as usize) {
            let Ok(st) = self.union.getattr(dot_ino).or_else(|_| self.union.getattr(ino.0)) else { continue };
            let name: &[u8] = if i == 0 { b"." } else { b".." };
            if reply.add(INodeNo(dot_ino), i as u64 + 1, OsStr::from_bytes(name), &self.ttl, &file_attr(&st), Generation(0)) {
                return reply.ok();
            }
        }
        let start = (offset as usize).saturating_sub(2);
        for (i, entry) in listing.iter().enumerate().skip(start) {
            let attr = file_attr(&entry.found.stat);
            let name = OsStr::from_bytes(&entry.name);
            if reply.add(INodeNo(entry.found.ino), i as u64 + 3, name, &self.ttl, &attr, Generation(0)) {
                break;
            }
            self.union.remember(ino.0, &entry.found);
        }
        reply.ok();
    }

    fn releasedir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        self.union.releasedir(fh.0);
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

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        match self.union.getxattr(ino.0, name.as_bytes()) {
            Ok(value) => reply::xattr(reply, &value, size),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.union.listxattr(ino.0) {
            Ok(names) => reply::xattr(reply, &names, size),
            Err(e) => reply.error(errno(e)),
        }
    }

    // Until the write path lands, a mount with an upper directory is shown but not changed.
    fn setattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        _mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<std::time::SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<std::time::SystemTime>,
        _chgtime: Option<std::time::SystemTime>,
        _bkuptime: Option<std::time::SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        reply.error(FuseErrno::EROFS);
    }
}
