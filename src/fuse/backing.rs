//! FUSE passthrough (Linux ≥ 6.9): reads and writes of an open file go from the kernel straight
//! to the real file in a layer, without a round trip through this daemon.
//!
//! The kernel's rule (fs/fuse/iomode.c) shapes this table: all passthrough opens of one FUSE
//! inode must name the same backing file, and an inode open in cached mode cannot also be open
//! in passthrough mode. So per inode we keep one registered backing file while any handle uses
//! it. When a file open read-only on its lower copy is opened for writing (and so copied up),
//! the new handle cannot pass through to the upper copy while the old one is open: it names the
//! same backing id with FOPEN_DIRECT_IO, which makes the kernel send its reads and writes to
//! this daemon (the only mixed form the kernel accepts: a plain FOPEN_DIRECT_IO open fails
//! with EIO while the inode passes through, tried on 6.18). Its mmap maps the old backing file,
//! which is why that file must never be a lower layer's: a writable shared mapping would write
//! the layer. A passthrough reply may carry no flag but
//! FOPEN_DIRECT_IO and FOPEN_NOFLUSH (the kernel's FOPEN_PASSTHROUGH_MASK). When the
//! kernel refuses a backing file (no privilege, a stacked filesystem) the inode stays in cached
//! mode, served by this daemon, until its last handle closes.
//!
//! A lower file of a writable mount is never passed through: once copied up, a handle opened
//! before must read the upper copy (kernel overlayfs re-opens the real file), a backing file
//! cannot change under an open handle, and the writer's handle would map the lower file (above). The daemon serves it, with the page cache kept
//! across opens (a lower file's content changes only through this daemon, after copy-up).
//!
//! On a mount a commit may pause (a store container's, see [`crate::freeze`]) writable handles
//! are served by the daemon too, so that every write passes the freeze gate.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use fuser::{BackingId, FopenFlags};

use crate::union::file::OpenFile;

enum Slot {
    Passthrough { id: Arc<BackingId>, real: (u64, u64), opens: usize },
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
            Some(Slot::Passthrough { id, real: r, opens }) => {
                *opens += 1;
                // Another copy of the file (it was copied up): the daemon serves this handle.
                let flags = if !by_daemon && real() == Some(*r) { FopenFlags::empty() } else { FopenFlags::FOPEN_DIRECT_IO };
                Reply::Passthrough(id.clone(), flags)
            }
            Some(Slot::Cached { opens }) => {
                *opens += 1;
                Reply::Plain(FopenFlags::empty())
            }
            // A lower file of a writable mount is served by the daemon (see `OpenFile::may_move`),
            // as is every file when the kernel offers no passthrough.
            None => match if self.enabled() && !open.may_move && !by_daemon { real() } else { None } {
                None => {
                    inodes.insert(ino, Slot::Cached { opens: 1 });
                    Reply::Plain(FopenFlags::empty())
                }
                Some(real) => match register(open.fd()) {
                    Ok(id) => {
                        let id = Arc::new(id);
                        inodes.insert(ino, Slot::Passthrough { id: id.clone(), real, opens: 1 });
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
