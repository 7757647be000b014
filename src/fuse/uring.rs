//! A FUSE transport of our own, the part a full one would grow from: the per-CPU queues of
//! FUSE over io_uring (Linux 6.14+, Documentation/filesystems/fuse-io-uring.rst) and the
//! /dev/fuse loop beside them, each handing [`wire::Request`]s to one handler and sending its
//! [`wire::Reply`]. The kernel still sends INIT, FORGET, INTERRUPT (and, until every queue has
//! an entry, everything) over /dev/fuse, so a ring connection runs both.
//!
//! A queue's life: REGISTER each entry's header and payload buffers; each completion is a
//! request in the entry's buffers; the reply goes back into them and COMMIT_AND_FETCH sends it
//! and waits for the next. Unmounting ends every entry with -ENOTCONN.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;

use super::wire::{self, Reply, Request};
use crate::sys::uring::{Completion, EntryBuffers, FUSE_URING_IN_OUT_HEADER_SZ, Ring};
use crate::sys::{self, Errno, fuse_dev};

/// The module parameter that lets a FUSE server ask for io_uring at INIT.
pub const ENABLE_URING: &str = "/sys/module/fuse/parameters/enable_uring";

/// Whether this kernel has FUSE over io_uring at all (CONFIG_FUSE_IO_URING).
pub fn kernel_has_uring() -> bool {
    Path::new(ENABLE_URING).exists()
}

/// Sets enable_uring for as long as it lives, and puts the value it found back when dropped.
pub struct EnableUring {
    prior: bool,
}

impl EnableUring {
    pub fn set(on: bool) -> io::Result<EnableUring> {
        let prior = read_enable_uring()?;
        write_enable_uring(on)?;
        Ok(EnableUring { prior })
    }

    /// The value found before this guard changed it.
    pub fn prior(&self) -> bool {
        self.prior
    }
}

impl Drop for EnableUring {
    fn drop(&mut self) {
        if let Err(e) = write_enable_uring(self.prior) {
            tracing::warn!("could not restore {ENABLE_URING} to {}: {e}", self.prior);
        }
    }
}

pub fn read_enable_uring() -> io::Result<bool> {
    let v = std::fs::read_to_string(ENABLE_URING)?;
    Ok(matches!(v.trim(), "Y" | "1"))
}

fn write_enable_uring(on: bool) -> io::Result<()> {
    std::fs::write(ENABLE_URING, if on { "1" } else { "0" })
}

/// The payload buffer an entry must have: the kernel refuses a REGISTER with less than
/// max(FUSE_MIN_READ_BUFFER, max_write, max_pages × page size) (fuse_uring_create).
pub fn payload_len(max_write: u32, max_pages: u16, page_size: usize) -> usize {
    const FUSE_MIN_READ_BUFFER: usize = 8192;
    FUSE_MIN_READ_BUFFER.max(max_write as usize).max(max_pages as usize * page_size)
}

/// One queue: its io_uring, its entries, the qid the kernel knows it by. Owned by one thread.
pub struct Queue {
    qid: u16,
    dev: Arc<OwnedFd>,
    ring: Ring,
    entries: Vec<EntryBuffers>,
    /// Entries whose command has not ended with an error (registered or committed).
    live: usize,
    /// Entries that have carried a request (so their REGISTER was accepted).
    served: Vec<bool>,
    body: Vec<u8>,
    done: Vec<Completion>,
}

impl Queue {
    pub fn new(dev: Arc<OwnedFd>, qid: u16, depth: usize, payload_len: usize) -> Result<Queue, Errno> {
        let ring = Ring::new((depth as u32).next_power_of_two().max(2))?;
        let entries = (0..depth).map(|_| EntryBuffers::new(payload_len)).collect::<Result<Vec<_>, _>>()?;
        Ok(Queue { qid, dev, ring, served: vec![false; entries.len()], entries, live: 0, body: Vec::with_capacity(payload_len), done: Vec::new() })
    }

    /// Registers every entry. The kernel starts using the ring once every queue has one; a
    /// REGISTER it refuses shows as an error completion in [`Queue::serve`].
    pub fn register(&mut self) -> Result<(), Errno> {
        for (i, bufs) in self.entries.iter().enumerate() {
            self.ring.push_register(self.dev.as_fd(), self.qid, i as u64, bufs)?;
            self.live += 1;
        }
        self.ring.submit_and_wait(0)
    }

    /// Serves requests until the connection ends (every entry completed with -ENOTCONN). An
    /// entry refused for another reason ends the queue with that errno once the rest ended.
    pub fn serve(&mut self, mut handle: impl FnMut(&Request, &mut Vec<u8>) -> Reply) -> Result<(), Errno> {
        let mut failure = None;
        while self.live > 0 {
            self.ring.submit_and_wait(1)?;
            let mut done = std::mem::take(&mut self.done);
            self.ring.reap(&mut done);
            for c in done.drain(..) {
                let i = c.entry as usize;
                if c.result == -libc::EAGAIN && !self.served.get(i).copied().unwrap_or(true) {
                    // REGISTER before the INIT reply was processed: the connection is not
                    // initialized yet (fuse_uring_cmd). Try again shortly.
                    std::thread::sleep(std::time::Duration::from_millis(1));
                    self.ring.push_register(self.dev.as_fd(), self.qid, c.entry, &self.entries[i])?;
                    continue;
                }
                if c.result < 0 {
                    self.live -= 1;
                    if !is_connection_end(-c.result) {
                        failure.get_or_insert(Errno(-c.result));
                    }
                    continue;
                }
                if let Some(s) = self.served.get_mut(i) {
                    *s = true;
                }
                self.answer(i, &mut handle)?;
            }
            self.done = done;
        }
        failure.map_or(Ok(()), Err)
    }

    /// Handles the request in entry `i`, writes the reply into the entry and queues its commit.
    fn answer(&mut self, i: usize, handle: &mut impl FnMut(&Request, &mut Vec<u8>) -> Reply) -> Result<(), Errno> {
        let Queue { entries, body, ring, dev, qid, .. } = self;
        let bufs = entries.get_mut(i).ok_or(Errno::EIO)?;
        let hdr = bufs.header();
        let commit_id = hdr.ring_ent_in_out.commit_id;
        let used = (hdr.ring_ent_in_out.payload_sz as usize).min(bufs.payload().len());
        body.clear();
        let (unique, reply) = match Request::from_ring(&hdr.in_out, &hdr.op_in, &bufs.payload()[..used]) {
            Some(req) => (req.header.unique, handle(&req, body)),
            None => (commit_id, Reply::Error(libc::EIO)),
        };
        let error = match reply {
            Reply::Data if body.len() > bufs.payload().len() => libc::EIO,
            Reply::Data => 0,
            Reply::Error(e) => e,
            // Every ring request wants an answer: the kernel sends the no-reply kinds
            // (FORGET, INTERRUPT) over /dev/fuse.
            Reply::Nothing => libc::EIO,
        };
        let len = if error == 0 { body.len() } else { 0 };
        bufs.payload_mut()[..len].copy_from_slice(&body[..len]);
        let h = bufs.header_mut();
        h.in_out = [0; FUSE_URING_IN_OUT_HEADER_SZ];
        h.in_out[..wire::OUT_HEADER_LEN].copy_from_slice(&wire::out_header(unique, error, len));
        h.ring_ent_in_out.payload_sz = len as u32;
        ring.push_commit(dev.as_fd(), *qid, i as u64, commit_id)
    }
}

impl Drop for Queue {
    fn drop(&mut self) {
        // An entry still registered may be written by the kernel until the ring's own teardown
        // ends it, which closing the ring starts but does not wait for: such buffers are
        // leaked rather than freed under the kernel.
        if self.live > 0 {
            std::mem::forget(std::mem::take(&mut self.entries));
        }
    }
}

/// How a command ends when the connection goes away (unmount, abort, the ring closing).
fn is_connection_end(errno: i32) -> bool {
    matches!(errno, libc::ENOTCONN | libc::ECONNABORTED | libc::ECANCELED | libc::ENODEV)
}

/// Serves /dev/fuse until the filesystem is unmounted (ENODEV): read a request, hand it to
/// `handle`, write its reply. `buf_len` must hold the largest request (max_write + a page).
pub fn serve_dev(dev: &OwnedFd, buf_len: usize, mut handle: impl FnMut(&Request, &mut Vec<u8>) -> Reply) -> Result<(), Errno> {
    let mut buf = vec![0u8; buf_len];
    let mut body = Vec::with_capacity(buf_len);
    loop {
        let n = match fuse_dev::read_request(dev.as_fd(), &mut buf) {
            Ok(n) => n,
            Err(Errno(libc::ENODEV)) => return Ok(()),
            // Interrupted, or a request that was withdrawn while we read.
            Err(Errno(libc::EINTR | libc::EAGAIN | libc::ENOENT)) => continue,
            Err(e) => return Err(e),
        };
        let Some(req) = Request::from_dev(&buf[..n]) else { return Err(Errno::EIO) };
        body.clear();
        let unique = req.header.unique;
        let sent = match handle(&req, &mut body) {
            Reply::Nothing => continue,
            Reply::Data => fuse_dev::write_reply(dev.as_fd(), &wire::out_header(unique, 0, body.len()), &body),
            Reply::Error(e) => fuse_dev::write_reply(dev.as_fd(), &wire::out_header(unique, e, 0), &[]),
        };
        match sent {
            // ENOENT: the request was interrupted and is gone; ENODEV: unmounted meanwhile.
            Ok(()) | Err(Errno(libc::ENOENT)) => {}
            Err(Errno(libc::ENODEV)) => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

/// The CPUs there are queues for (one per possible CPU, qid = CPU number).
pub fn queue_count() -> Result<usize, Errno> {
    sys::uring::possible_cpus()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_is_at_least_the_kernels_minimum_and_max_write() {
        assert_eq!(payload_len(4096, 1, 4096), 8192);
        assert_eq!(payload_len(131072, 32, 4096), 131072);
        assert_eq!(payload_len(4096, 256, 4096), 1 << 20);
    }
}
