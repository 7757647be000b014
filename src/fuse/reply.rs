//! Conversions from the union's plain values to fuser's reply types.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{Errno as FuseErrno, FileAttr, FileType, INodeNo, ReplyXattr};

use crate::sys::Errno;

/// The errno for a reply; each error is logged at debug level, after the request fuser logged.
pub fn errno(e: Errno) -> FuseErrno {
    tracing::debug!("reply error: {e}");
    FuseErrno::from_i32(e.0)
}

pub fn file_type(kind: u32) -> FileType {
    match kind & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        _ => FileType::RegularFile,
    }
}

/// A time from stat's seconds and nanoseconds; times before 1970 are kept, not clamped.
fn system_time(sec: i64, nsec: i64) -> SystemTime {
    let nsec = nsec.clamp(0, 999_999_999) as u32;
    if sec >= 0 {
        UNIX_EPOCH + Duration::new(sec as u64, nsec)
    } else {
        UNIX_EPOCH - Duration::from_secs(sec.unsigned_abs()) + Duration::new(0, nsec)
    }
}

pub fn file_attr(st: &libc::stat) -> FileAttr {
    FileAttr {
        ino: INodeNo(st.st_ino),
        size: st.st_size as u64,
        blocks: st.st_blocks as u64,
        atime: system_time(st.st_atime, st.st_atime_nsec),
        mtime: system_time(st.st_mtime, st.st_mtime_nsec),
        ctime: system_time(st.st_ctime, st.st_ctime_nsec),
        crtime: UNIX_EPOCH,
        kind: file_type(st.st_mode),
        perm: (st.st_mode & 0o7777) as u16,
        nlink: st.st_nlink as u32,
        uid: st.st_uid,
        gid: st.st_gid,
        // The kernel's 32-bit encoding of a device number is the low half of glibc's dev_t.
        rdev: st.st_rdev as u32,
        blksize: st.st_blksize as u32,
        flags: 0,
    }
}

/// The attributes of a negative entry: node 0 means "no such name" to the kernel.
pub fn negative_entry() -> FileAttr {
    // SAFETY: libc::stat is plain data; all zeroes is a valid value.
    let st: libc::stat = unsafe { std::mem::zeroed() };
    file_attr(&st)
}

/// Answer a getxattr/listxattr: the size when asked for it (size 0), ERANGE when the caller's
/// buffer is too small, else the bytes.
pub fn xattr(reply: ReplyXattr, value: &[u8], size: u32) {
    if size == 0 {
        reply.size(value.len() as u32);
    } else if value.len() > size as usize {
        reply.error(FuseErrno::ERANGE);
    } else {
        reply.data(value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_before_epoch_survive() {
        let t = system_time(-10, 500);
        assert_eq!(UNIX_EPOCH.duration_since(t).unwrap(), Duration::new(9, 999_999_500));
        assert_eq!(system_time(5, 7).duration_since(UNIX_EPOCH).unwrap(), Duration::new(5, 7));
    }

    #[test]
    fn types_from_mode() {
        assert_eq!(file_type(libc::S_IFDIR | 0o755), FileType::Directory);
        assert_eq!(file_type(libc::S_IFCHR), FileType::CharDevice);
        assert_eq!(file_type(libc::S_IFREG | 0o4755), FileType::RegularFile);
    }
}
