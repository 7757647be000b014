//! FUSE passthrough (Linux ≥ 6.9): reads and writes of an open file go from the kernel straight
//! to the real file in a layer, without a round trip through this daemon.
//!
//! The kernel's rule (fs/fuse/iomode.c) shapes this table: all passthrough opens of one FUSE
//! inode must name the same backing file, and an inode open in cached mode cannot also be open
//! in passthrough mode. So per inode we keep one registered backing file while any handle uses
//! it. A handle that needs another copy of the file than the one the inode's handles pass
//! through to cannot be served on that inode: passing through to its copy is refused (EBUSY),
//! a plain open fails (the kernel wants FOPEN_PASSTHROUGH on every open of such an inode: EIO),
//! and the one form accepted, the same backing id with FOPEN_DIRECT_IO, sends its reads and
//! writes to this daemon but maps the *old* backing file: a writable shared mapping through it
//! wrote the lower layer's file when tried on 6.18. A passthrough reply may carry no flag but
//! FOPEN_DIRECT_IO and FOPEN_NOFLUSH (the kernel's FOPEN_PASSTHROUGH_MASK). When the
//! kernel refuses a backing file (no privilege, a stacked filesystem) the inode stays in cached
//! mode, served by this daemon, until its last handle closes.
//!
//! A lower file of a writable mount passes through too, as on a read-only mount: its reads run
//! at the kernel's speed and share the lower file's page cache with every other container of
//! the image. When such a file is copied up while handles pass through to its lower copy, the
//! open that needs the copy gets [`Reply::Moved`]: it is sent back (ESTALE) to come again on a
//! new kernel inode (see [`super::nodeids`]), whose handles pass through to the copy. The old
//! handles keep reading the lower copy (README, deliberate differences).
//!
//! On a mount a commit may pause (a store container's, see [`crate::freeze`]) writable handles
//! are served by the daemon too, so that every write passes the freeze gate.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use fuser::{BackingId, FopenFlags};

use crate::union::file::OpenFile;

enum Slot {
    /// `lower`: the backing file is a lower layer's (a copy-up moves the file off it).
    Passthrough { id: Arc<BackingId>, real: (u64, u64), lower: bool, opens: usize },
    Cached { opens: usize },
}

#[derive(Default)]
pub struct Backings {
    enabled: AtomicBool,
    /// Writable handles are served by the daemon (a mount a commit may pause: every write
    /// must pass its gate, which passthrough writes never reach).
    serve_writes: AtomicBool,
    inodes: Mutex<HashMap<u64, Slot>>,
    /// fh → inode, to undo at release.
    handles: Mutex<HashMap<u64, u64>>,
}

/// What an open reply should say.
pub enum Reply {
    /// FOPEN_PASSTHROUGH with this backing id, plus these flags.
    Passthrough(Arc<BackingId>, FopenFlags),
    /// No passthrough; these flags added to the usual ones.
    Plain(FopenFlags),
    /// The inode's handles pass through to another copy of the file (the lower one, before a
    /// copy-up): this handle cannot be served on this kernel inode without reading the wrong
    /// copy, or mapping the lower file writable. Nothing was counted.
    Moved,
}

impl Backings {
    pub fn enable(&self, on: bool) {
        self.enabled.store(on, Ordering::Relaxed);
    }

    pub fn serve_writes(&self, on: bool) {
        self.serve_writes.store(on, Ordering::Relaxed);
    }

    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Decide how handle `fh` of inode `ino`, open on `file`, is served. `register` asks the
    /// kernel for a backing id (the open reply's `open_backing`).
    pub fn open(
        &self,
        ino: u64,
        fh: u64,
        open: &OpenFile,
        register: impl FnOnce(std::os::fd::BorrowedFd<'_>) -> std::io::Result<BackingId>,
    ) -> Reply {
        let Ok(mut inodes) = self.inodes.lock() else { return Reply::Plain(FopenFlags::FOPEN_DIRECT_IO) };
        // The real file's identity, asked only when it decides something.
        let real = || crate::sys::fstat(open.fd()).ok().map(|st| (st.st_dev, st.st_ino));
        let by_daemon = open.writable && self.serve_writes.load(Ordering::Relaxed);
        let reply = match inodes.get_mut(&ino) {
            Some(Slot::Passthrough { id, real: r, opens, .. }) => {
                if real() != Some(*r) {
                    return Reply::Moved;
                }
                *opens += 1;
                let flags = if by_daemon { FopenFlags::FOPEN_DIRECT_IO } else { FopenFlags::empty() };
                Reply::Passthrough(id.clone(), flags)
            }
            Some(Slot::Cached { opens }) => {
                *opens += 1;
                Reply::Plain(FopenFlags::empty())
            }
            // Every file is served by the daemon when the kernel offers no passthrough.
            None => match if self.enabled() && !by_daemon { real() } else { None } {
                None => {
                    inodes.insert(ino, Slot::Cached { opens: 1 });
                    Reply::Plain(FopenFlags::empty())
                }
                Some(real) => match register(open.fd()) {
                    Ok(id) => {
                        let id = Arc::new(id);
                        inodes.insert(ino, Slot::Passthrough { id: id.clone(), real, lower: open.may_move, opens: 1 });
                        Reply::Passthrough(id, FopenFlags::empty())
                    }
                    Err(e) => {
                        if e.raw_os_error() == Some(libc::EPERM) {
                            tracing::info!("FUSE passthrough not permitted ({e}); the daemon serves file I/O");
                            self.enable(false);
                        } else {
                            tracing::debug!("no passthrough for inode {ino}: {e}");
                        }
                        inodes.insert(ino, Slot::Cached { opens: 1 });
                        Reply::Plain(FopenFlags::empty())
                    }
                },
            },
        };
        drop(inodes);
        if let Ok(mut handles) = self.handles.lock() {
            handles.insert(fh, ino);
        }
        reply
    }

    /// Serve handle `fh` on inode `ino` beside handles that pass through to another copy of the
    /// file, when it cannot move to a new inode: the same backing id, with every read and write
    /// sent to this daemon (FOPEN_DIRECT_IO; the kernel accepts no other form). Only for a
    /// read-only handle: this handle's mmap would map the other copy.
    pub fn open_beside(&self, ino: u64, fh: u64) -> Option<Arc<BackingId>> {
        let mut inodes = self.inodes.lock().ok()?;
        let Some(Slot::Passthrough { id, opens, .. }) = inodes.get_mut(&ino) else { return None };
        *opens += 1;
        let id = id.clone();
        drop(inodes);
        self.handles.lock().ok()?.insert(fh, ino);
        Some(id)
    }

    /// Whether handles of inode `ino` pass through to a lower layer's copy of its file.
    pub fn passes_through_lower(&self, ino: u64) -> bool {
        self.inodes.lock().is_ok_and(|i| matches!(i.get(&ino), Some(Slot::Passthrough { lower: true, .. })))
    }

    /// A handle closed: the inode's backing file goes with its last handle.
    pub fn release(&self, fh: u64) {
        let Some(ino) = self.handles.lock().ok().and_then(|mut h| h.remove(&fh)) else { return };
        let Ok(mut inodes) = self.inodes.lock() else { return };
        let last = match inodes.get_mut(&ino) {
            Some(Slot::Passthrough { opens, .. } | Slot::Cached { opens }) => {
                *opens = opens.saturating_sub(1);
                *opens == 0
            }
            None => false,
        };
        if last {
            inodes.remove(&ino);
        }
    }

}
