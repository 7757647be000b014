//! FUSE over io_uring, the unsafe half: the uapi structs of `include/uapi/linux/fuse.h` (ABI
//! 7.42, Linux 6.14+) as `#[repr(C)]`, one io_uring with 128-byte SQEs per queue, the
//! `IORING_OP_URING_CMD` submissions on the /dev/fuse fd, and the per-entry header and payload
//! buffers the kernel writes requests into and reads replies from. The protocol logic (which
//! command when, what a request means) is in [`crate::fuse::uring`].

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::os::fd::{AsRawFd, BorrowedFd};

use io_uring::{IoUring, cqueue, opcode, squeue, types};

use super::{Errno, SysResult};

/// `cmd_op` of the SQE: hand the kernel an entry's buffers; it completes with the first request.
pub const FUSE_IO_URING_CMD_REGISTER: u32 = 1;
/// `cmd_op` of the SQE: the reply is in the entry's buffers; complete with the next request.
pub const FUSE_IO_URING_CMD_COMMIT_AND_FETCH: u32 = 2;
pub const FUSE_URING_IN_OUT_HEADER_SZ: usize = 128;
pub const FUSE_URING_OP_IN_OUT_SZ: usize = 128;
/// The kernel takes exactly two iovecs per entry: the header buffer, then the payload buffer.
const FUSE_URING_IOV_SEGS: u32 = 2;

/// `struct fuse_uring_ent_in_out`: the trailer of the header buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FuseUringEntInOut {
    pub flags: u64,
    /// The request's `unique`; echoed in [`FuseUringCmdReq::commit_id`] to commit its reply.
    pub commit_id: u64,
    /// Bytes of the payload buffer in use, in either direction.
    pub payload_sz: u32,
    pub padding: u32,
    pub reserved: u64,
}

/// `struct fuse_uring_req_header`: iov[0] of every entry.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct FuseUringReqHeader {
    /// `struct fuse_in_header` on fetch, `struct fuse_out_header` on commit.
    pub in_out: [u8; FUSE_URING_IN_OUT_HEADER_SZ],
    /// The request's first argument (`in_args[0]`, the per-opcode struct), when it has one.
    pub op_in: [u8; FUSE_URING_OP_IN_OUT_SZ],
    pub ring_ent_in_out: FuseUringEntInOut,
}

/// `struct fuse_uring_cmd_req`: the start of the SQE's 80-byte command area.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FuseUringCmdReq {
    pub flags: u64,
    pub commit_id: u64,
    pub qid: u16,
    pub padding: [u8; 6],
}

impl FuseUringCmdReq {
    fn to_cmd_area(self) -> [u8; 80] {
        let mut cmd = [0u8; 80];
        cmd[0..8].copy_from_slice(&self.flags.to_ne_bytes());
        cmd[8..16].copy_from_slice(&self.commit_id.to_ne_bytes());
        cmd[16..18].copy_from_slice(&self.qid.to_ne_bytes());
        cmd
    }
}

/// One ring entry's memory: the header buffer, the payload buffer and the iovec pair naming
/// them. The kernel writes into both buffers while the entry's command is in flight, so they
/// are raw allocations (no Rust reference to them lives across a submission); the accessors
/// are for the time the entry is in userspace, between a completion and the next commit.
pub struct EntryBuffers {
    header: *mut FuseUringReqHeader,
    payload: *mut u8,
    payload_len: usize,
    iov: Box<[libc::iovec; 2]>,
}

// The buffers are plain memory owned by this value; the queue thread that owns it is the only
// one touching them (the kernel only between submit and completion).
unsafe impl Send for EntryBuffers {}

impl EntryBuffers {
    pub fn new(payload_len: usize) -> SysResult<EntryBuffers> {
        let header_layout = Layout::new::<FuseUringReqHeader>();
        let payload_layout = Layout::from_size_align(payload_len.max(1), 4096).map_err(|_| Errno::EINVAL)?;
        // SAFETY: both layouts have a non-zero size.
        let header = unsafe { alloc_zeroed(header_layout) } as *mut FuseUringReqHeader;
        let payload = unsafe { alloc_zeroed(payload_layout) };
        if header.is_null() || payload.is_null() {
            // SAFETY: whichever succeeded was allocated with its layout above.
            unsafe {
                if !header.is_null() {
                    dealloc(header as *mut u8, header_layout);
                }
                if !payload.is_null() {
                    dealloc(payload, payload_layout);
                }
            }
            return Err(Errno(libc::ENOMEM));
        }
        let iov = Box::new([
            libc::iovec { iov_base: header as *mut libc::c_void, iov_len: size_of::<FuseUringReqHeader>() },
            libc::iovec { iov_base: payload as *mut libc::c_void, iov_len: payload_len },
        ]);
        Ok(EntryBuffers { header, payload, payload_len, iov })
    }

    pub fn header(&self) -> &FuseUringReqHeader {
        // SAFETY: allocated and zeroed in new(), alive until drop; the kernel does not write it
        // while the entry is in userspace, which is when the queue calls this.
        unsafe { &*self.header }
    }

    pub fn header_mut(&mut self) -> &mut FuseUringReqHeader {
        // SAFETY: as header(); &mut self makes the borrow unique on our side.
        unsafe { &mut *self.header }
    }

    /// The whole payload buffer (its used length is in the header's `payload_sz`).
    pub fn payload(&self) -> &[u8] {
        // SAFETY: payload_len bytes allocated in new(); see header().
        unsafe { std::slice::from_raw_parts(self.payload, self.payload_len) }
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        // SAFETY: as payload().
        unsafe { std::slice::from_raw_parts_mut(self.payload, self.payload_len) }
    }
}

impl Drop for EntryBuffers {
    fn drop(&mut self) {
        // SAFETY: allocated in new() with these layouts. The queue drops its entries only after
        // their commands completed (or with the ring, whose teardown ends them first).
        unsafe {
            dealloc(self.header as *mut u8, Layout::new::<FuseUringReqHeader>());
            if let Ok(l) = Layout::from_size_align(self.payload_len.max(1), 4096) {
                dealloc(self.payload, l);
            }
        }
    }
}

/// One completion: the entry it belongs to (its `user_data`) and the result (0, or -errno).
#[derive(Clone, Copy, Debug)]
pub struct Completion {
    pub entry: u64,
    pub result: i32,
}

/// An io_uring with 128-byte SQEs (`IORING_SETUP_SQE128`, which the FUSE commands need for
/// their command area), owned by one queue thread.
pub struct Ring {
    ring: IoUring<squeue::Entry128, cqueue::Entry>,
}

impl Ring {
    pub fn new(entries: u32) -> SysResult<Ring> {
        let ring = IoUring::<squeue::Entry128, cqueue::Entry>::builder()
            // One thread submits and reaps: let the kernel run completions' task work when we
            // enter, not by interrupting us.
            .setup_single_issuer()
            .setup_coop_taskrun()
            .build(entries)?;
        Ok(Ring { ring })
    }

    /// Queues `FUSE_IO_URING_CMD_REGISTER` of `bufs` for queue `qid` on the /dev/fuse `dev`.
    /// `bufs` must stay alive and in place until the entry's last completion.
    pub fn push_register(&mut self, dev: BorrowedFd<'_>, qid: u16, entry: u64, bufs: &EntryBuffers) -> SysResult<()> {
        let req = FuseUringCmdReq { qid, ..Default::default() };
        let sqe = opcode::UringCmd80::new(types::Fd(dev.as_raw_fd()), FUSE_IO_URING_CMD_REGISTER)
            .cmd(req.to_cmd_area())
            .addr(Some(bufs.iov.as_ptr() as u64))
            .build()
            .user_data(entry);
        self.push(with_len(sqe, FUSE_URING_IOV_SEGS))
    }

    /// Queues `FUSE_IO_URING_CMD_COMMIT_AND_FETCH` of the reply to request `commit_id`, which
    /// the entry's buffers now hold.
    pub fn push_commit(&mut self, dev: BorrowedFd<'_>, qid: u16, entry: u64, commit_id: u64) -> SysResult<()> {
        let req = FuseUringCmdReq { qid, commit_id, ..Default::default() };
        let sqe = opcode::UringCmd80::new(types::Fd(dev.as_raw_fd()), FUSE_IO_URING_CMD_COMMIT_AND_FETCH)
            .cmd(req.to_cmd_area())
            .build()
            .user_data(entry);
        self.push(sqe)
    }

    fn push(&mut self, sqe: squeue::Entry128) -> SysResult<()> {
        let mut sq = self.ring.submission();
        // SAFETY: the only pointer in our SQEs is a register's iovec array, which lives in its
        // EntryBuffers as long as the entry does (push_register's contract).
        unsafe { sq.push(&sqe) }.map_err(|_| Errno(libc::EBUSY))
    }

    /// Submits what was pushed and waits for at least `want` completions; EINTR is a return.
    pub fn submit_and_wait(&mut self, want: usize) -> SysResult<()> {
        match self.ring.submit_and_wait(want) {
            Ok(_) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// The completions that arrived, oldest first.
    pub fn reap(&mut self, out: &mut Vec<Completion>) {
        out.extend(self.ring.completion().map(|c| Completion { entry: c.user_data(), result: c.result() }));
    }
}

/// Sets the SQE's `len` (offset 24), which `UringCmd80` has no setter for and the kernel reads
/// as the number of iovecs of a REGISTER.
fn with_len(sqe: squeue::Entry128, len: u32) -> squeue::Entry128 {
    // SAFETY: Entry128 is #[repr(C)] (a 64-byte io_uring_sqe, then 64 bytes), 128 plain bytes
    // with no invalid bit patterns; transmute checks the sizes.
    let mut bytes: [u8; 128] = unsafe { std::mem::transmute(sqe) };
    bytes[SQE_LEN_OFFSET..SQE_LEN_OFFSET + 4].copy_from_slice(&len.to_ne_bytes());
    unsafe { std::mem::transmute(bytes) }
}

/// `offsetof(struct io_uring_sqe, len)`.
const SQE_LEN_OFFSET: usize = 24;

/// How many CPUs the kernel may ever bring up (`num_possible_cpus()`): FUSE over io_uring has a
/// queue for each, and uses the ring only once every one has an entry registered.
pub fn possible_cpus() -> SysResult<usize> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/possible")?;
    count_cpu_list(text.trim()).ok_or(Errno::EINVAL)
}

/// Counts a kernel CPU list such as `0-3,8,10-11`.
pub fn count_cpu_list(list: &str) -> Option<usize> {
    let mut n = 0;
    for part in list.split(',').filter(|p| !p.is_empty()) {
        n += match part.split_once('-') {
            Some((a, b)) => b.parse::<usize>().ok()?.checked_sub(a.parse::<usize>().ok()?)? + 1,
            None => {
                part.parse::<usize>().ok()?;
                1
            }
        };
    }
    (n > 0).then_some(n)
}

/// Runs the calling thread on `cpu` only (a queue's thread beside the CPU its requests come
/// from, as libfuse does).
pub fn pin_to_cpu(cpu: usize) -> SysResult<()> {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu).map_err(|e| Errno(e as i32))?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).map_err(|e| Errno(e as i32))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::offset_of;

    /// Sizes and offsets as include/uapi/linux/fuse.h (7.42) lays them out.
    #[test]
    fn uapi_layouts_match_the_kernel() {
        assert_eq!(size_of::<FuseUringEntInOut>(), 32);
        assert_eq!(offset_of!(FuseUringEntInOut, commit_id), 8);
        assert_eq!(offset_of!(FuseUringEntInOut, payload_sz), 16);
        assert_eq!(offset_of!(FuseUringEntInOut, reserved), 24);
        assert_eq!(size_of::<FuseUringReqHeader>(), 288);
        assert_eq!(offset_of!(FuseUringReqHeader, op_in), 128);
        assert_eq!(offset_of!(FuseUringReqHeader, ring_ent_in_out), 256);
        assert_eq!(size_of::<FuseUringCmdReq>(), 24);
        assert_eq!(offset_of!(FuseUringCmdReq, commit_id), 8);
        assert_eq!(offset_of!(FuseUringCmdReq, qid), 16);
        assert_eq!(size_of::<squeue::Entry128>(), 128);
    }

    #[test]
    fn cmd_area_holds_the_request_at_its_uapi_offsets() {
        let cmd = FuseUringCmdReq { flags: 0, commit_id: 0x1122, qid: 7, padding: [0; 6] }.to_cmd_area();
        assert_eq!(u64::from_ne_bytes(cmd[8..16].try_into().unwrap()), 0x1122);
        assert_eq!(u16::from_ne_bytes(cmd[16..18].try_into().unwrap()), 7);
        assert!(cmd[18..].iter().all(|&b| b == 0));
    }

    /// The register SQE carries the iovec count in `len` and the command in the SQE's cmd area
    /// (offset 48), which is where fs/fuse/dev_uring.c reads them.
    #[test]
    fn register_sqe_has_len_addr_and_cmd_in_place() {
        let cmd = FuseUringCmdReq { qid: 3, commit_id: 9, ..Default::default() }.to_cmd_area();
        let sqe = opcode::UringCmd80::new(types::Fd(5), FUSE_IO_URING_CMD_REGISTER).cmd(cmd).addr(Some(0xabcd)).build();
        let sqe = with_len(sqe, 2);
        let bytes: [u8; 128] = unsafe { std::mem::transmute(sqe) };
        assert_eq!(bytes[0], opcode::UringCmd80::CODE);
        assert_eq!(i32::from_ne_bytes(bytes[4..8].try_into().unwrap()), 5);
        assert_eq!(u32::from_ne_bytes(bytes[8..12].try_into().unwrap()), FUSE_IO_URING_CMD_REGISTER);
        assert_eq!(u64::from_ne_bytes(bytes[16..24].try_into().unwrap()), 0xabcd);
        assert_eq!(u32::from_ne_bytes(bytes[24..28].try_into().unwrap()), 2);
        assert_eq!(u64::from_ne_bytes(bytes[56..64].try_into().unwrap()), 9);
        assert_eq!(u16::from_ne_bytes(bytes[64..66].try_into().unwrap()), 3);
    }

    #[test]
    fn cpu_lists_count_like_the_kernel_prints_them() {
        assert_eq!(count_cpu_list("0"), Some(1));
        assert_eq!(count_cpu_list("0-1"), Some(2));
        assert_eq!(count_cpu_list("0-3,8,10-11"), Some(7));
        assert_eq!(count_cpu_list(""), None);
        assert_eq!(count_cpu_list("3-1"), None);
    }
}
