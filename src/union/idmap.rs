//! Owner mapping between the ids on disk and the ids the kernel sees through the mount, as
//! fuse-overlayfs' `uidmapping=`/`gidmapping=`/`squash_to_*`: podman hands a container's id map
//! to the mount program, so layers stored with the image's own ids (0 for root) show to a
//! container in a user namespace as its mapped ids, without chowning the layers.
//!
//! A range `DISK:KERNEL:LEN` shows the on-disk ids DISK..DISK+LEN as KERNEL..KERNEL+LEN. Every id
//! read from disk (stat, readdirplus, POSIX ACL entries) goes disk → kernel; an on-disk id no
//! range covers shows as the overflow id (65534), as the kernel shows an id its user namespace
//! does not map. Every id the kernel passes in (the caller of a create, a chown, an ACL written)
//! goes kernel → disk; one no range covers is EINVAL for a chown or an ACL (as chown(2) says of an
//! id the namespace cannot represent). A caller outside the mapping creates objects owned by the
//! overflow id, as fuse-overlayfs does: podman itself, as host root, makes mount targets in a
//! container's tree before the container's own ids ever touch it.
//! `squash_to_uid`/`squash_to_gid` make every object show as owned by that id; writes still map.

use crate::sys::{Errno, SysResult};

/// The id the kernel shows for one it cannot map (`/proc/sys/kernel/overflowuid`'s default).
pub const OVERFLOW_ID: u32 = 65534;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    pub disk: u32,
    pub kernel: u32,
    pub len: u32,
}

/// One direction-pair of ranges (uids or gids). No ranges: the identity.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdMap {
    ranges: Vec<IdRange>,
}

fn within(id: u32, start: u32, len: u32) -> Option<u32> {
    let off = id.checked_sub(start)?;
    (off < len).then_some(off)
}

impl IdMap {
    pub fn new(ranges: Vec<IdRange>) -> IdMap {
        IdMap { ranges }
    }

    /// `DISK:KERNEL:LEN[:DISK:KERNEL:LEN...]`, with podman's leading `:` allowed (`:0:100000:65536`)
    /// and `,` between ranges as fuse-overlayfs' man page writes it.
    pub fn parse(s: &str) -> Result<IdMap, String> {
        let fields: Vec<&str> = s.split([':', ',']).filter(|f| !f.is_empty()).collect();
        if fields.is_empty() || !fields.len().is_multiple_of(3) {
            return Err(format!("{s:?}: expected ID:MAPPED-ID:LENGTH triples"));
        }
        let mut ranges = Vec::new();
        for t in fields.chunks(3) {
            let n = |f: &str| f.parse::<u32>().map_err(|_| format!("{s:?}: {f:?} is not an id"));
            let r = IdRange { disk: n(t[0])?, kernel: n(t[1])?, len: n(t[2])? };
            if r.len == 0 || r.disk.checked_add(r.len - 1).is_none() || r.kernel.checked_add(r.len - 1).is_none() {
                return Err(format!("{s:?}: range {}:{}:{} is empty or past the largest id", t[0], t[1], t[2]));
            }
            ranges.push(r);
        }
        Ok(IdMap { ranges })
    }

    pub fn is_identity(&self) -> bool {
        self.ranges.is_empty()
    }

    /// An id read from disk, as the kernel is to see it.
    pub fn to_kernel(&self, disk: u32) -> u32 {
        if self.ranges.is_empty() {
            return disk;
        }
        self.ranges.iter().find_map(|r| within(disk, r.disk, r.len).map(|o| r.kernel + o)).unwrap_or(OVERFLOW_ID)
    }

    /// An id the kernel passed in, as it is to be written on disk; None when no range covers it.
    pub fn to_disk(&self, kernel: u32) -> Option<u32> {
        if self.ranges.is_empty() {
            return Some(kernel);
        }
        self.ranges.iter().find_map(|r| within(kernel, r.kernel, r.len).map(|o| r.disk + o))
    }
}

/// Everything a mount does to owners.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdMapping {
    pub uids: IdMap,
    pub gids: IdMap,
    pub squash_uid: Option<u32>,
    pub squash_gid: Option<u32>,
}

/// The POSIX ACL xattrs, whose entries carry ids (`posix_acl_xattr.h`).
pub fn is_acl_xattr(name: &[u8]) -> bool {
    name == b"system.posix_acl_access" || name == b"system.posix_acl_default"
}

const ACL_VERSION: u32 = 2;
const ACL_USER: u16 = 0x02;
const ACL_GROUP: u16 = 0x08;

impl IdMapping {
    pub fn is_identity(&self) -> bool {
        self.uids.is_identity() && self.gids.is_identity() && self.squash_uid.is_none() && self.squash_gid.is_none()
    }

    /// The owners of a stat from disk, as the kernel is to see them.
    pub fn show(&self, st: &mut libc::stat) {
        st.st_uid = self.squash_uid.unwrap_or_else(|| self.uids.to_kernel(st.st_uid));
        st.st_gid = self.squash_gid.unwrap_or_else(|| self.gids.to_kernel(st.st_gid));
    }

    /// The caller of a create, as the owner to write: the overflow id when unmapped.
    pub fn caller_to_disk(&self, uid: u32, gid: u32) -> (u32, u32) {
        (self.uids.to_disk(uid).unwrap_or(OVERFLOW_ID), self.gids.to_disk(gid).unwrap_or(OVERFLOW_ID))
    }

    /// The ids of a chown (None: unchanged), as they are to be written: EINVAL when unmapped.
    pub fn chown_to_disk(&self, uid: Option<u32>, gid: Option<u32>) -> SysResult<(Option<u32>, Option<u32>)> {
        let map = |id: Option<u32>, m: &IdMap| id.map(|i| m.to_disk(i).ok_or(Errno::EINVAL)).transpose();
        Ok((map(uid, &self.uids)?, map(gid, &self.gids)?))
    }

    /// A POSIX ACL xattr value read from disk, its user and group entries mapped for the kernel.
    /// A value that is not a well-formed ACL passes unchanged (the kernel will refuse it).
    pub fn acl_to_kernel(&self, value: &[u8]) -> Vec<u8> {
        let squash = (self.squash_uid, self.squash_gid);
        self.map_acl(value, |tag, id| {
            Some(match tag {
                ACL_USER => squash.0.unwrap_or_else(|| self.uids.to_kernel(id)),
                _ => squash.1.unwrap_or_else(|| self.gids.to_kernel(id)),
            })
        })
        .unwrap_or_else(|| value.to_vec())
    }

    /// A POSIX ACL xattr value the kernel passes in, mapped for disk: EINVAL when an entry's id
    /// is unmapped.
    pub fn acl_to_disk(&self, value: &[u8]) -> SysResult<Vec<u8>> {
        let mut bad = false;
        let out = self.map_acl(value, |tag, id| {
            let m = if tag == ACL_USER { &self.uids } else { &self.gids };
            let mapped = m.to_disk(id);
            bad |= mapped.is_none();
            mapped
        });
        match out {
            Some(v) if !bad => Ok(v),
            Some(_) => Err(Errno::EINVAL),
            None => Ok(value.to_vec()),
        }
    }

    /// Rewrite the id of every ACL_USER/ACL_GROUP entry of an ACL xattr value (a u32 version, then
    /// 8-byte entries: u16 tag, u16 perm, u32 id, little endian). None: not an ACL value, or
    /// `f` refused an id.
    fn map_acl(&self, value: &[u8], mut f: impl FnMut(u16, u32) -> Option<u32>) -> Option<Vec<u8>> {
        let (head, entries) = value.split_at_checked(4)?;
        if u32::from_le_bytes(head.try_into().ok()?) != ACL_VERSION || entries.len() % 8 != 0 {
            return None;
        }
        let mut out = value.to_vec();
        for (i, e) in entries.chunks_exact(8).enumerate() {
            let tag = u16::from_le_bytes([e[0], e[1]]);
            if tag == ACL_USER || tag == ACL_GROUP {
                let id = u32::from_le_bytes([e[4], e[5], e[6], e[7]]);
                let at = 4 + i * 8 + 4;
                out[at..at + 4].copy_from_slice(&f(tag, id).unwrap_or(id).to_le_bytes());
            }
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn podman() -> IdMapping {
        let m = IdMap::parse(":0:100000:65536").unwrap();
        IdMapping { uids: m.clone(), gids: m, ..Default::default() }
    }

    #[test]
    fn parses_podman_and_fuse_overlayfs_spellings() {
        let want = vec![IdRange { disk: 0, kernel: 1000, len: 1 }, IdRange { disk: 1, kernel: 110000, len: 65536 }];
        assert_eq!(IdMap::parse(":0:1000:1:1:110000:65536").unwrap().ranges, want);
        assert_eq!(IdMap::parse("0:1000:1,1:110000:65536").unwrap().ranges, want);
        assert_eq!(IdMap::parse("0:1000:1:1:110000:65536").unwrap().ranges, want);
    }

    #[test]
    fn bad_mappings_are_refused() {
        for bad in ["", ":", "0:1000", "0:1000:1:2", "a:1:1", "0:1:0", "4294967295:0:2", "0:-1:1"] {
            assert!(IdMap::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn disk_ids_show_shifted_and_unmapped_as_overflow() {
        let m = podman();
        assert_eq!(m.uids.to_kernel(0), 100000);
        assert_eq!(m.uids.to_kernel(65535), 165535);
        assert_eq!(m.uids.to_kernel(65536), OVERFLOW_ID);
        let mut st = a_stat();
        st.st_uid = 1;
        st.st_gid = 70000;
        m.show(&mut st);
        assert_eq!((st.st_uid, st.st_gid), (100001, OVERFLOW_ID));
    }

    #[test]
    fn kernel_ids_go_back_to_disk_ids() {
        let m = podman();
        assert_eq!(m.caller_to_disk(100000, 100005), (0, 5));
        assert_eq!(m.caller_to_disk(0, 100000), (OVERFLOW_ID, 0));
        assert_eq!(m.chown_to_disk(Some(100007), None), Ok((Some(7), None)));
        assert_eq!(m.chown_to_disk(None, Some(99999)), Err(Errno::EINVAL));
        assert_eq!(m.chown_to_disk(Some(165536), None), Err(Errno::EINVAL));
    }

    #[test]
    fn several_ranges_each_map_their_own_part() {
        let m = IdMap::parse("0:1000:1:1:110000:65536").unwrap();
        assert_eq!((m.to_kernel(0), m.to_kernel(1), m.to_kernel(2)), (1000, 110000, 110001));
        assert_eq!((m.to_disk(1000), m.to_disk(110001), m.to_disk(1001)), (Some(0), Some(2), None));
    }

    #[test]
    fn identity_maps_nothing() {
        let m = IdMapping::default();
        assert!(m.is_identity());
        assert_eq!(m.caller_to_disk(5, 6), (5, 6));
        assert_eq!(m.uids.to_kernel(123456), 123456);
    }

    #[test]
    fn squash_shows_one_owner_and_writes_still_map() {
        let mut m = podman();
        m.squash_uid = Some(0);
        m.squash_gid = Some(42);
        let mut st = a_stat();
        st.st_uid = 5;
        st.st_gid = 5;
        m.show(&mut st);
        assert_eq!((st.st_uid, st.st_gid), (0, 42));
        assert_eq!(m.chown_to_disk(Some(100003), None), Ok((Some(3), None)));
    }

    fn acl(entries: &[(u16, u16, u32)]) -> Vec<u8> {
        let mut v = ACL_VERSION.to_le_bytes().to_vec();
        for (tag, perm, id) in entries {
            v.extend(tag.to_le_bytes());
            v.extend(perm.to_le_bytes());
            v.extend(id.to_le_bytes());
        }
        v
    }

    #[test]
    fn acl_user_and_group_entries_map_both_ways() {
        let m = podman();
        const OBJ: u16 = 0x01;
        let disk = acl(&[(OBJ, 6, u32::MAX), (ACL_USER, 4, 7), (ACL_GROUP, 4, 8), (0x20, 7, u32::MAX)]);
        let kernel = acl(&[(OBJ, 6, u32::MAX), (ACL_USER, 4, 100007), (ACL_GROUP, 4, 100008), (0x20, 7, u32::MAX)]);
        assert_eq!(m.acl_to_kernel(&disk), kernel);
        assert_eq!(m.acl_to_disk(&kernel), Ok(disk));
        assert_eq!(m.acl_to_disk(&acl(&[(ACL_USER, 4, 5)])), Err(Errno::EINVAL));
        assert_eq!(m.acl_to_kernel(&acl(&[(ACL_USER, 4, 70000)])), acl(&[(ACL_USER, 4, OVERFLOW_ID)]));
        // Not an ACL: left alone.
        assert_eq!(m.acl_to_kernel(b"abc"), b"abc".to_vec());
    }

    /// A real stat to change the owners of.
    fn a_stat() -> libc::stat {
        let root = std::fs::File::open("/").unwrap();
        crate::sys::fstat(std::os::fd::AsFd::as_fd(&root)).unwrap()
    }
}
