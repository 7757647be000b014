//! The FUSE wire format, the part a transport of our own needs (fuser's decoder is private):
//! the request header, where a request's first argument sits on each transport, and the
//! replies the transport probe sends. Plain bytes in native order, as the kernel's structs of
//! include/uapi/linux/fuse.h lay them out; no `unsafe`.

pub const FUSE_LOOKUP: u32 = 1;
pub const FUSE_FORGET: u32 = 2;
pub const FUSE_GETATTR: u32 = 3;
pub const FUSE_OPEN: u32 = 14;
pub const FUSE_RELEASE: u32 = 18;
pub const FUSE_GETXATTR: u32 = 22;
pub const FUSE_FLUSH: u32 = 25;
pub const FUSE_INIT: u32 = 26;
pub const FUSE_INTERRUPT: u32 = 36;
pub const FUSE_DESTROY: u32 = 38;
pub const FUSE_BATCH_FORGET: u32 = 42;

/// `FUSE_INIT_EXT`: the init structs carry `flags2`, the upper 32 flag bits.
pub const FUSE_INIT_EXT: u64 = 1 << 30;
pub const FUSE_MAX_PAGES: u64 = 1 << 22;
/// `FUSE_OVER_IO_URING` (flags2 bit 9): offered by the kernel when enable_uring is on; answered,
/// the connection serves requests on the ring once every queue has an entry registered.
pub const FUSE_OVER_IO_URING: u64 = 1 << 41;

pub const FUSE_KERNEL_VERSION: u32 = 7;
/// The minor version whose structs this module writes (7.42 added FUSE over io_uring).
pub const FUSE_KERNEL_MINOR_VERSION: u32 = 42;

pub const IN_HEADER_LEN: usize = 40;
pub const OUT_HEADER_LEN: usize = 16;

/// `struct fuse_in_header`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InHeader {
    pub len: u32,
    pub opcode: u32,
    pub unique: u64,
    pub nodeid: u64,
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
}

impl InHeader {
    pub fn parse(b: &[u8]) -> Option<InHeader> {
        Some(InHeader {
            len: u32_at(b, 0)?,
            opcode: u32_at(b, 4)?,
            unique: u64_at(b, 8)?,
            nodeid: u64_at(b, 16)?,
            uid: u32_at(b, 24)?,
            gid: u32_at(b, 28)?,
            pid: u32_at(b, 32)?,
        })
    }
}

/// Bytes of a request's first argument (the kernel's `in_args[0]`, the per-opcode struct). On
/// /dev/fuse it follows the header directly; on the ring it sits in the header buffer's
/// `op_in` and only the rest is in the payload (fs/fuse/dev_uring.c, fuse_uring_args_to_ring).
/// Opcodes whose first argument is empty (LOOKUP's is, its name comes second) have 0.
pub fn first_arg_len(opcode: u32) -> usize {
    match opcode {
        FUSE_GETATTR => 16,                     // fuse_getattr_in
        FUSE_OPEN => 8,                         // fuse_open_in
        FUSE_RELEASE => 24,                     // fuse_release_in
        FUSE_GETXATTR => 8,                     // fuse_getxattr_in
        FUSE_FLUSH => 24,                       // fuse_flush_in
        FUSE_INIT => 64,                        // fuse_init_in (with FUSE_INIT_EXT fields)
        FUSE_FORGET | FUSE_INTERRUPT => 8,      // fuse_forget_in, fuse_interrupt_in
        FUSE_BATCH_FORGET => 8,                 // fuse_batch_forget_in
        _ => 0,
    }
}

/// One request as a handler sees it, whichever transport brought it.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    pub header: InHeader,
    /// The first argument ([`first_arg_len`] bytes, fewer if the request was shorter).
    pub arg: &'a [u8],
    /// The rest: names, values, data.
    pub data: &'a [u8],
}

impl<'a> Request<'a> {
    /// A request as read(2) from /dev/fuse returned it.
    pub fn from_dev(buf: &'a [u8]) -> Option<Request<'a>> {
        let header = InHeader::parse(buf)?;
        let body = buf.get(IN_HEADER_LEN..(header.len as usize).min(buf.len()))?;
        let (arg, data) = body.split_at(first_arg_len(header.opcode).min(body.len()));
        Some(Request { header, arg, data })
    }

    /// A request from a ring entry: `in_out` and `op_in` of its header buffer and the used
    /// part of its payload buffer.
    pub fn from_ring(in_out: &[u8], op_in: &'a [u8], payload: &'a [u8]) -> Option<Request<'a>> {
        let header = InHeader::parse(in_out)?;
        let arg = op_in.get(..first_arg_len(header.opcode).min(op_in.len()))?;
        Some(Request { header, arg, data: payload })
    }

    /// The NUL-terminated name at the start of `data` (LOOKUP's name, GETXATTR's after its arg).
    pub fn name(&self) -> Option<&'a [u8]> {
        let end = self.data.iter().position(|&b| b == 0)?;
        Some(&self.data[..end])
    }
}

/// What a handler answers; the body, if any, is in the buffer it was handed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply {
    /// A reply with the body written (possibly empty, as RELEASE's).
    Data,
    /// An error reply: a positive errno.
    Error(i32),
    /// No reply at all (FORGET, BATCH_FORGET, INTERRUPT).
    Nothing,
}

/// `struct fuse_out_header` of a reply with `body_len` bytes after it; `error` is a positive
/// errno or 0.
pub fn out_header(unique: u64, error: i32, body_len: usize) -> [u8; OUT_HEADER_LEN] {
    let mut h = [0u8; OUT_HEADER_LEN];
    h[0..4].copy_from_slice(&((OUT_HEADER_LEN + body_len) as u32).to_ne_bytes());
    h[4..8].copy_from_slice(&(-error).to_ne_bytes());
    h[8..16].copy_from_slice(&unique.to_ne_bytes());
    h
}

/// `struct fuse_init_in`, the fields a server decides on.
#[derive(Clone, Copy, Debug)]
pub struct InitIn {
    pub major: u32,
    pub minor: u32,
    pub max_readahead: u32,
    /// `flags | flags2 << 32` (flags2 only with FUSE_INIT_EXT).
    pub flags: u64,
}

impl InitIn {
    pub fn parse(arg: &[u8]) -> Option<InitIn> {
        let lo = u32_at(arg, 12)? as u64;
        let hi = if lo & FUSE_INIT_EXT != 0 { u32_at(arg, 16).unwrap_or(0) as u64 } else { 0 };
        Some(InitIn { major: u32_at(arg, 0)?, minor: u32_at(arg, 4)?, max_readahead: u32_at(arg, 8)?, flags: lo | hi << 32 })
    }
}

/// `struct fuse_init_out` (64 bytes).
#[derive(Clone, Copy, Debug)]
pub struct InitOut {
    pub minor: u32,
    pub max_readahead: u32,
    pub flags: u64,
    pub max_background: u16,
    pub max_write: u32,
    pub max_pages: u16,
}

impl InitOut {
    pub fn encode(&self, out: &mut Vec<u8>) {
        put32(out, FUSE_KERNEL_VERSION);
        put32(out, self.minor);
        put32(out, self.max_readahead);
        put32(out, self.flags as u32);
        out.extend_from_slice(&self.max_background.to_ne_bytes());
        out.extend_from_slice(&self.max_background.to_ne_bytes()); // congestion_threshold
        put32(out, self.max_write);
        put32(out, 1); // time_gran
        out.extend_from_slice(&self.max_pages.to_ne_bytes());
        out.extend_from_slice(&0u16.to_ne_bytes()); // map_alignment
        put32(out, (self.flags >> 32) as u32);
        put32(out, 0); // max_stack_depth
        out.extend_from_slice(&[0u8; 24]); // request_timeout, unused[11]
    }
}

/// `struct fuse_attr`, the fields the probe's tiny tree has.
#[derive(Clone, Copy, Debug)]
pub struct Attr {
    pub ino: u64,
    pub size: u64,
    pub mode: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
}

impl Attr {
    fn encode(&self, out: &mut Vec<u8>) {
        put64(out, self.ino);
        put64(out, self.size);
        put64(out, self.size.div_ceil(512)); // blocks
        out.extend_from_slice(&[0u8; 24 + 12]); // atime, mtime, ctime and their nsecs
        put32(out, self.mode);
        put32(out, self.nlink);
        put32(out, self.uid);
        put32(out, self.gid);
        put32(out, 0); // rdev
        put32(out, 4096); // blksize
        put32(out, 0); // flags
    }
}

/// `struct fuse_entry_out`: LOOKUP's reply.
pub fn entry_out(out: &mut Vec<u8>, attr: &Attr, entry_valid_s: u64, attr_valid_s: u64) {
    put64(out, attr.ino);
    put64(out, 0); // generation
    put64(out, entry_valid_s);
    put64(out, attr_valid_s);
    put32(out, 0);
    put32(out, 0);
    attr.encode(out);
}

/// `struct fuse_attr_out`: GETATTR's reply.
pub fn attr_out(out: &mut Vec<u8>, attr: &Attr, attr_valid_s: u64) {
    put64(out, attr_valid_s);
    put32(out, 0);
    put32(out, 0);
    attr.encode(out);
}

/// `struct fuse_open_out`: OPEN's reply.
pub fn open_out(out: &mut Vec<u8>, fh: u64) {
    put64(out, fh);
    put32(out, 0);
    put32(out, 0);
}

fn put32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_ne_bytes());
}

fn put64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_ne_bytes());
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(opcode: u32, len: u32) -> Vec<u8> {
        let mut b = Vec::new();
        put32(&mut b, len);
        put32(&mut b, opcode);
        put64(&mut b, 77);
        put64(&mut b, 1);
        b.extend_from_slice(&[0u8; 16]);
        b
    }

    #[test]
    fn getxattr_from_dev_splits_its_struct_from_the_name() {
        let mut b = header(FUSE_GETXATTR, 40 + 8 + 17);
        b.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0]);
        b.extend_from_slice(b"security.selinux\0");
        let r = Request::from_dev(&b).unwrap();
        assert_eq!(r.header.unique, 77);
        assert_eq!(r.arg.len(), 8);
        assert_eq!(r.name(), Some(&b"security.selinux"[..]));
    }

    #[test]
    fn lookup_from_ring_has_no_arg_and_the_name_in_the_payload() {
        let h = header(FUSE_LOOKUP, 40 + 5);
        let op_in = [0xffu8; 128];
        let r = Request::from_ring(&h, &op_in, b"file\0").unwrap();
        assert!(r.arg.is_empty());
        assert_eq!(r.name(), Some(&b"file"[..]));
    }

    #[test]
    fn a_request_shorter_than_its_header_is_refused() {
        assert!(Request::from_dev(&[0u8; 20]).is_none());
    }

    #[test]
    fn reply_structs_have_the_uapi_sizes() {
        let a = Attr { ino: 1, size: 0, mode: 0o40755, nlink: 2, uid: 0, gid: 0 };
        let mut v = Vec::new();
        entry_out(&mut v, &a, 1, 0);
        assert_eq!(v.len(), 128);
        v.clear();
        attr_out(&mut v, &a, 0);
        assert_eq!(v.len(), 104);
        v.clear();
        InitOut { minor: 42, max_readahead: 0, flags: FUSE_OVER_IO_URING | FUSE_INIT_EXT, max_background: 16, max_write: 4096, max_pages: 1 }
            .encode(&mut v);
        assert_eq!(v.len(), 64);
        assert_eq!(u32::from_ne_bytes(v[32..36].try_into().unwrap()), 1 << 9, "flags2 at offset 32");
        assert_eq!(u32::from_ne_bytes(v[20..24].try_into().unwrap()), 4096, "max_write at offset 20");
        assert_eq!(out_header(5, libc::ENODATA, 0)[4..8], (-libc::ENODATA).to_ne_bytes());
    }

    #[test]
    fn init_in_reads_flags2_only_with_init_ext() {
        let mut arg = vec![0u8; 64];
        arg[12..16].copy_from_slice(&(FUSE_INIT_EXT as u32).to_ne_bytes());
        arg[16..20].copy_from_slice(&(1u32 << 9).to_ne_bytes());
        assert!(InitIn::parse(&arg).unwrap().flags & FUSE_OVER_IO_URING != 0);
        arg[12..16].copy_from_slice(&0u32.to_ne_bytes());
        assert!(InitIn::parse(&arg).unwrap().flags & FUSE_OVER_IO_URING == 0);
    }
}
