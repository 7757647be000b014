//! The FUSE transport probe: a tiny filesystem (the root and one empty file, `file`) served by
//! our own transport, over /dev/fuse alone ("classic") or over FUSE-over-io_uring ("ring"), to
//! measure what one request costs on each (examples/fuse_transport_probe.rs,
//! scripts/bench-transport) and to test the ring end to end (mount-tests). It counts every
//! request by opcode and by the path it arrived on.
//!
//! Entries and the root's attributes are cached for an hour, `file`'s attributes not at all, so
//! each `stat` of `file` is one GETATTR and each `lgetxattr` one GETXATTR (answered ENODATA,
//! which the kernel never caches). `fresh` is a new inode at every lookup, so looking at it
//! makes the kernel send FORGETs.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, bail};

use super::uring::{self, Queue};
use super::wire::{self, Attr, InitIn, InitOut, Reply, Request};
use crate::sys::{self, fuse_dev};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// Requests read from /dev/fuse, replies written to it.
    Classic,
    /// FUSE_OVER_IO_URING granted at INIT, a queue per possible CPU; /dev/fuse beside it.
    Ring,
}

impl Transport {
    pub fn name(self) -> &'static str {
        match self {
            Transport::Classic => "classic",
            Transport::Ring => "ring",
        }
    }
}

/// Where a request arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    Dev,
    Ring,
}

const MAX_WRITE: u32 = 128 * 1024;
const MAX_PAGES: u16 = 32;
const ENTRIES_PER_QUEUE: usize = 2;
const ROOT: u64 = 1;
const FILE: u64 = 2;
pub const FILE_NAME: &str = "file";
/// A name whose every LOOKUP finds a new inode, never cached: each look at it makes the kernel
/// forget the inode it had, which shows where FORGETs arrive.
pub const FRESH_NAME: &str = "fresh";
const FIRST_FRESH: u64 = 1000;
const OPCODES: usize = 64;

/// Requests by opcode (opcodes ≥ 63 share the last slot) and by arrival path.
pub struct Counts {
    dev: [AtomicU64; OPCODES],
    ring: [AtomicU64; OPCODES],
}

impl Counts {
    fn new() -> Counts {
        Counts { dev: std::array::from_fn(|_| AtomicU64::new(0)), ring: std::array::from_fn(|_| AtomicU64::new(0)) }
    }

    fn note(&self, via: Via, opcode: u32) {
        let slot = (opcode as usize).min(OPCODES - 1);
        let table = if via == Via::Dev { &self.dev } else { &self.ring };
        table[slot].fetch_add(1, Ordering::Relaxed);
    }

    /// How many requests with `opcode` arrived on `via` so far.
    pub fn get(&self, via: Via, opcode: u32) -> u64 {
        let table = if via == Via::Dev { &self.dev } else { &self.ring };
        table[(opcode as usize).min(OPCODES - 1)].load(Ordering::Relaxed)
    }

    /// `(opcode, on /dev/fuse, on the ring)` for every opcode seen.
    pub fn table(&self) -> Vec<(u32, u64, u64)> {
        (0..OPCODES)
            .map(|i| (i as u32, self.dev[i].load(Ordering::Relaxed), self.ring[i].load(Ordering::Relaxed)))
            .filter(|&(_, d, r)| d + r > 0)
            .collect()
    }
}

/// The name of an opcode the probe may see, for reports.
pub fn opcode_name(op: u32) -> String {
    match op {
        wire::FUSE_LOOKUP => "LOOKUP".into(),
        wire::FUSE_FORGET => "FORGET".into(),
        wire::FUSE_GETATTR => "GETATTR".into(),
        wire::FUSE_OPEN => "OPEN".into(),
        wire::FUSE_RELEASE => "RELEASE".into(),
        wire::FUSE_GETXATTR => "GETXATTR".into(),
        wire::FUSE_FLUSH => "FLUSH".into(),
        wire::FUSE_INIT => "INIT".into(),
        wire::FUSE_INTERRUPT => "INTERRUPT".into(),
        wire::FUSE_DESTROY => "DESTROY".into(),
        wire::FUSE_BATCH_FORGET => "BATCH_FORGET".into(),
        52 => "STATX".into(),
        n => format!("opcode {n}"),
    }
}

/// The filesystem the probe serves; shared by every transport thread.
struct ProbeFs {
    counts: Arc<Counts>,
    want_ring: bool,
    next_fresh: AtomicU64,
    /// Told once, when INIT has been answered: whether the ring was granted.
    init_done: Mutex<Option<mpsc::Sender<bool>>>,
}

impl ProbeFs {
    fn handle(&self, via: Via, req: &Request, body: &mut Vec<u8>) -> Reply {
        let h = req.header;
        self.counts.note(via, h.opcode);
        match h.opcode {
            wire::FUSE_INIT => self.init(req, body),
            wire::FUSE_LOOKUP if h.nodeid == ROOT && req.name() == Some(FILE_NAME.as_bytes()) => {
                wire::entry_out(body, &file_attr(), 3600, 0);
                Reply::Data
            }
            wire::FUSE_LOOKUP if h.nodeid == ROOT && req.name() == Some(FRESH_NAME.as_bytes()) => {
                let ino = self.next_fresh.fetch_add(1, Ordering::Relaxed);
                wire::entry_out(body, &Attr { ino, ..file_attr() }, 0, 0);
                Reply::Data
            }
            wire::FUSE_LOOKUP => Reply::Error(libc::ENOENT),
            wire::FUSE_GETATTR => match h.nodeid {
                ROOT => {
                    // The root's attributes stay cached, so a path walk through it (the
                    // permission check of default_permissions) asks nothing.
                    wire::attr_out(body, &root_attr(), 3600);
                    Reply::Data
                }
                FILE => {
                    wire::attr_out(body, &file_attr(), 0);
                    Reply::Data
                }
                ino if ino >= FIRST_FRESH => {
                    wire::attr_out(body, &Attr { ino, ..file_attr() }, 0);
                    Reply::Data
                }
                _ => Reply::Error(libc::ENOENT),
            },
            wire::FUSE_GETXATTR => Reply::Error(libc::ENODATA),
            wire::FUSE_OPEN => {
                wire::open_out(body, 0);
                Reply::Data
            }
            wire::FUSE_RELEASE | wire::FUSE_DESTROY => Reply::Data,
            wire::FUSE_FORGET | wire::FUSE_BATCH_FORGET | wire::FUSE_INTERRUPT => Reply::Nothing,
            _ => Reply::Error(libc::ENOSYS),
        }
    }

    fn init(&self, req: &Request, body: &mut Vec<u8>) -> Reply {
        let Some(kernel) = InitIn::parse(req.arg) else { return Reply::Error(libc::EIO) };
        if kernel.major != wire::FUSE_KERNEL_VERSION {
            return Reply::Error(libc::EPROTO);
        }
        let ring = self.want_ring && kernel.flags & wire::FUSE_OVER_IO_URING != 0;
        let mut flags = wire::FUSE_INIT_EXT | wire::FUSE_MAX_PAGES;
        if ring {
            flags |= wire::FUSE_OVER_IO_URING;
        }
        InitOut {
            minor: kernel.minor.min(wire::FUSE_KERNEL_MINOR_VERSION),
            max_readahead: kernel.max_readahead,
            flags: flags & kernel.flags,
            max_background: 16,
            max_write: MAX_WRITE,
            max_pages: MAX_PAGES,
        }
        .encode(body);
        if let Ok(mut tx) = self.init_done.lock()
            && let Some(tx) = tx.take()
        {
            // The reply is written after we return; a REGISTER that comes first is refused
            // with EAGAIN and tried again (Queue::serve).
            let _ = tx.send(ring);
        }
        Reply::Data
    }
}

fn root_attr() -> Attr {
    Attr { ino: ROOT, size: 0, mode: libc::S_IFDIR | 0o755, nlink: 2, uid: 0, gid: 0 }
}

fn file_attr() -> Attr {
    Attr { ino: FILE, size: 0, mode: libc::S_IFREG | 0o644, nlink: 1, uid: 0, gid: 0 }
}

/// Where the probe's server threads run.
#[derive(Clone, Copy, Debug)]
pub struct Placement {
    /// Readers of /dev/fuse (one is enough beside a ring).
    pub dev_threads: usize,
    /// Pin every /dev/fuse reader to this CPU.
    pub dev_cpu: Option<usize>,
    /// Pin each ring queue's thread to its queue's CPU, as libfuse does.
    pub pin_queues: bool,
}

impl Default for Placement {
    fn default() -> Placement {
        Placement { dev_threads: 1, dev_cpu: None, pin_queues: true }
    }
}

/// A mounted probe. Dropping it unmounts (lazily, if it must) so no test leaves it behind.
pub struct Probe {
    mountpoint: PathBuf,
    transport: Transport,
    counts: Arc<Counts>,
    threads: Vec<JoinHandle<Result<(), sys::Errno>>>,
    mounted: bool,
}

impl Probe {
    /// Mounts the probe on `mountpoint` (as root) and serves it on `transport`, with
    /// `dev_threads` readers of /dev/fuse (one is enough beside a ring). Returns once INIT is
    /// answered and, for the ring, every queue has its entries registered. Fails if the ring
    /// was asked for and the kernel did not offer it (enable_uring off, or a kernel < 6.14).
    pub fn mount(mountpoint: &Path, transport: Transport, dev_threads: usize) -> anyhow::Result<Probe> {
        Probe::mount_with(mountpoint, transport, &Placement { dev_threads, ..Placement::default() })
    }

    /// [`Probe::mount`] with the server's threads placed as `place` says (the measurements of
    /// what locality is worth).
    pub fn mount_with(mountpoint: &Path, transport: Transport, place: &Placement) -> anyhow::Result<Probe> {
        let (dev_threads, dev_cpu, pin_queues) = (place.dev_threads, place.dev_cpu, place.pin_queues);
        let dev = Arc::new(fuse_dev::open_dev_fuse().context("opening /dev/fuse")?);
        fuse_dev::mount_fuse(std::os::fd::AsFd::as_fd(&*dev), "shalefs-probe", mountpoint)
            .with_context(|| format!("mounting the probe on {}", mountpoint.display()))?;
        let counts = Arc::new(Counts::new());
        let (tx, rx) = mpsc::channel();
        let fs = Arc::new(ProbeFs { counts: counts.clone(), want_ring: transport == Transport::Ring,
            next_fresh: AtomicU64::new(FIRST_FRESH),
            init_done: Mutex::new(Some(tx)) });
        let mut probe = Probe { mountpoint: mountpoint.to_path_buf(), transport, counts, threads: Vec::new(), mounted: true };
        for _ in 0..dev_threads.max(1) {
            let (dev, fs) = (dev.clone(), fs.clone());
            let buf_len = MAX_WRITE as usize + 4096;
            probe.threads.push(std::thread::spawn(move || {
                if let Some(cpu) = dev_cpu {
                    sys::uring::pin_to_cpu(cpu)?;
                }
                uring::serve_dev(&dev, buf_len, |r, b| fs.handle(Via::Dev, r, b))
            }));
        }
        let granted = rx.recv_timeout(Duration::from_secs(10)).context("the kernel sent no FUSE_INIT")?;
        if transport == Transport::Ring {
            if !granted {
                bail!("the kernel did not offer FUSE_OVER_IO_URING at INIT (is {} 1?)", uring::ENABLE_URING);
            }
            probe.start_queues(&dev, &fs, pin_queues)?;
        }
        Ok(probe)
    }

    /// One thread per possible CPU, pinned to it (unless `pin` is false), each with its queue's entries registered
    /// before this returns.
    fn start_queues(&mut self, dev: &Arc<OwnedFd>, fs: &Arc<ProbeFs>, pin: bool) -> anyhow::Result<()> {
        let queues = uring::queue_count().context("counting the possible CPUs")?;
        let payload = uring::payload_len(MAX_WRITE, MAX_PAGES, page_size());
        let (ready_tx, ready_rx) = mpsc::channel();
        for qid in 0..queues {
            let (dev, fs, ready) = (dev.clone(), fs.clone(), ready_tx.clone());
            self.threads.push(std::thread::spawn(move || {
                // A CPU that is possible but offline cannot be pinned to; its queue still
                // must exist.
                if pin {
                    let _ = sys::uring::pin_to_cpu(qid);
                }
                let mut queue = match Queue::new(dev, qid as u16, ENTRIES_PER_QUEUE, payload) {
                    Ok(q) => q,
                    Err(e) => {
                        let _ = ready.send(Err(e));
                        return Err(e);
                    }
                };
                let registered = queue.register();
                let _ = ready.send(registered);
                registered?;
                queue.serve(|r, b| fs.handle(Via::Ring, r, b))
            }));
        }
        for _ in 0..queues {
            match ready_rx.recv_timeout(Duration::from_secs(10)) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => bail!("registering a FUSE io_uring queue: {e}"),
                Err(_) => bail!("a FUSE io_uring queue did not register in 10 s"),
            }
        }
        Ok(())
    }

    pub fn transport(&self) -> Transport {
        self.transport
    }

    pub fn counts(&self) -> &Counts {
        &self.counts
    }

    /// The probe's file, whose GETATTR and GETXATTR the measurements loop on.
    pub fn file(&self) -> PathBuf {
        self.mountpoint.join(FILE_NAME)
    }

    /// The name that is a new inode at every look (see [`FRESH_NAME`]).
    pub fn fresh(&self) -> PathBuf {
        self.mountpoint.join(FRESH_NAME)
    }

    /// Unmounts and waits for every transport thread to end; their first error is the result.
    pub fn unmount(mut self) -> anyhow::Result<Arc<Counts>> {
        sys::umount(&self.mountpoint, false).with_context(|| format!("unmounting {}", self.mountpoint.display()))?;
        self.mounted = false;
        let mut first = Ok(());
        for t in self.threads.drain(..) {
            match t.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => first = first.and(Err(anyhow::anyhow!("a {} transport thread failed: {e}", self.transport.name()))),
                Err(_) => first = first.and(Err(anyhow::anyhow!("a {} transport thread panicked", self.transport.name()))),
            }
        }
        first.map(|()| self.counts.clone())
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        if self.mounted && sys::umount(&self.mountpoint, false).is_err() {
            let _ = sys::umount(&self.mountpoint, true);
        }
    }
}

fn page_size() -> usize {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE).ok().flatten().map_or(4096, |n| n as usize)
}
