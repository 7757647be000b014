//! Inode numbers of the merged view.
//!
//! Layers may sit on different filesystems whose inode numbers collide, so the real number alone
//! is not unique. As overlayfs' `xino` does, the number of the filesystem (its position among the
//! layers' distinct devices, counted top to bottom) goes into the high bits:
//! `ino = (fs_index + 1) << 48 | real_ino`. The result depends only on the layer list and the real
//! inode, so it is stable for the life of the mount and across remounts of the same stack. A real
//! inode too large for 48 bits, or a device that is not a layer root's (a mount inside a layer),
//! gets a number from an overflow table instead: still unique, stable for the mount's life.
//!
//! FUSE reserves 1 for the root; every computed number is at least 2^48, so none collides with it.

use std::collections::HashMap;
use std::sync::Mutex;

pub const ROOT_INO: u64 = 1;
const REAL_BITS: u32 = 48;
const MAX_FS_INDEX: u64 = (1 << (64 - REAL_BITS)) - 2;
/// Overflow numbers live under the last, reserved, filesystem index.
const OVERFLOW_BASE: u64 = (MAX_FS_INDEX + 1) << REAL_BITS;

#[derive(Debug)]
pub struct InoMap {
    fs_index: HashMap<u64, u64>,
    overflow: Mutex<HashMap<(u64, u64), u64>>,
}

impl InoMap {
    /// `devs` are the layers' devices, top layer first; repeats share an index.
    pub fn new(devs: impl IntoIterator<Item = u64>) -> InoMap {
        let mut fs_index = HashMap::new();
        for dev in devs {
            let next = fs_index.len() as u64;
            fs_index.entry(dev).or_insert(next);
        }
        InoMap { fs_index, overflow: Mutex::new(HashMap::new()) }
    }

    /// The merged-view inode number of the real object `(dev, ino)`.
    pub fn map(&self, dev: u64, ino: u64) -> u64 {
        if let Some(&idx) = self.fs_index.get(&dev)
            && ino < (1 << REAL_BITS) && idx < MAX_FS_INDEX {
                return ((idx + 1) << REAL_BITS) | ino;
            }
        let mut table = self.overflow.lock().unwrap_or_else(|p| p.into_inner());
        let next = OVERFLOW_BASE + table.len() as u64;
        *table.entry((dev, ino)).or_insert(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_real_ino_on_two_filesystems_differs() {
        let m = InoMap::new([10, 20]);
        assert_ne!(m.map(10, 5), m.map(20, 5));
        assert_eq!(m.map(10, 5), m.map(10, 5));
    }

    #[test]
    fn layers_on_one_filesystem_share_numbers() {
        let m = InoMap::new([10, 10, 20]);
        assert_eq!(m.map(10, 7), (1 << 48) | 7);
        assert_eq!(m.map(20, 7), (2 << 48) | 7);
    }

    #[test]
    fn never_the_root_number() {
        let m = InoMap::new([10]);
        assert_ne!(m.map(10, 1), ROOT_INO);
        assert_ne!(m.map(99, 1), ROOT_INO);
    }

    #[test]
    fn overflow_is_unique_and_stable() {
        let m = InoMap::new([10]);
        let a = m.map(10, u64::MAX);
        let b = m.map(11, 3);
        assert_ne!(a, b);
        assert_eq!(a, m.map(10, u64::MAX));
        assert_eq!(b, m.map(11, 3));
    }
}
