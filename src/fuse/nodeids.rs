//! The node ids the kernel knows files by: the union's inode number, except for a file split off
//! at a copy-up while FUSE passthrough readers held its lower copy.
//!
//! A passthrough handle reads one backing file for its whole life, and all passthrough handles
//! of a kernel inode share that file (fs/fuse/iomode.c). So when a lower file that readers pass
//! through to is copied up, the copy cannot be served by the same kernel inode: the daemon
//! answers the open (or truncate) that needs the copy with ESTALE, the VFS looks the name up
//! again (LOOKUP_REVAL), and the lookup now answers a fresh node id, an *alias*. The kernel makes
//! a new inode for it, whose handles pass through to the upper copy, while the old inode keeps
//! its readers on the lower copy. Both ids name the same union node: requests on an alias are
//! translated back here, and the file's `st_ino` stays the union's (an alias entry carries no
//! cached attributes, so the kernel asks for them and learns the real number).
//!
//! Union inode numbers are at least 2^48 or the root's 1 (see [`crate::union::ino`]); aliases
//! count up from 2 and are never reused.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Default)]
pub struct NodeIds {
    /// Whether any alias was ever made: until then every id is the union's, without a lock.
    any: AtomicBool,
    inner: Mutex<Aliases>,
}

#[derive(Default)]
struct Aliases {
    /// Union inode → the alias the kernel gets for it from now on.
    current: HashMap<u64, u64>,
    /// Alias → its union inode.
    aliases: HashMap<u64, u64>,
    last: u64,
    /// The last node and process sent back.
    sent_back: Option<(u64, u32)>,
}

impl NodeIds {
    /// The union inode a kernel node id names.
    pub fn union(&self, nodeid: u64) -> u64 {
        if !self.any.load(Ordering::Acquire) {
            return nodeid;
        }
        self.inner.lock().ok().and_then(|a| a.aliases.get(&nodeid).copied()).unwrap_or(nodeid)
    }

    /// The node id to hand the kernel for union inode `ino` in an entry: `Some(alias)` when the
    /// file was split off.
    ///
    /// An alias outlives the kernel's references to it: the kernel forgets the alias its
    /// revalidating lookup was answered before it looks the name up again, and that second
    /// lookup must get the alias too, not the old node. So a file keeps its alias for the life
    /// of the mount (the kernel may make a new inode of it after forgetting it, as of any id).
    pub fn entry(&self, ino: u64) -> Option<u64> {
        if !self.any.load(Ordering::Acquire) {
            return None;
        }
        let mut a = self.inner.lock().ok()?;
        let alias = a.current.get(&ino).copied()?;
        // A lookup answered with the alias: whatever comes next on the old node is no retry.
        a.sent_back = None;
        Some(alias)
    }

    /// Whether to send an open (or truncate) by process `pid` of union inode `ino` on kernel node
    /// `nodeid` back to look the name up again (ESTALE), splitting the file off that node if it
    /// was not yet: later lookups get an alias. No when this process was just sent back from
    /// this node and came again on it: its VFS retries once, and a re-open through
    /// /proc/PID/fd (or a cached dentry no lookup replaces) lands on the same inode.
    pub fn send_back(&self, nodeid: u64, ino: u64, pid: u32) -> bool {
        let Ok(mut a) = self.inner.lock() else { return false };
        let retry = a.sent_back.replace((nodeid, pid)) == Some((nodeid, pid));
        if a.current.get(&ino).is_some_and(|&alias| alias != nodeid) {
            return !retry;
        }
        a.last += 1;
        let alias = a.last + 1;
        a.aliases.insert(alias, ino);
        a.current.insert(ino, alias);
        self.any.store(true, Ordering::Release);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: u64 = 5 << 48 | 42;

    #[test]
    fn ids_are_the_unions_until_a_split() {
        let ids = NodeIds::default();
        assert_eq!(ids.union(FILE), FILE);
        assert_eq!(ids.entry(FILE), None);
    }

    #[test]
    fn a_split_file_is_looked_up_by_its_alias_from_then_on() {
        let ids = NodeIds::default();
        assert!(ids.send_back(FILE, FILE, 10));
        let alias = ids.entry(FILE).expect("an alias after the split");
        assert!((2..1 << 48).contains(&alias), "aliases stay clear of union numbers and the root");
        assert_eq!(ids.union(alias), FILE);
        assert_eq!(ids.union(FILE), FILE, "the old node still names the file");
        assert_eq!(ids.entry(FILE), Some(alias), "for the life of the mount, never the old node again");
    }

    #[test]
    fn a_retry_that_comes_back_on_the_old_node_is_not_sent_back_again() {
        let ids = NodeIds::default();
        assert!(ids.send_back(FILE, FILE, 10));
        assert!(!ids.send_back(FILE, FILE, 10), "the same process on the old node again, no lookup between: served there");
        assert!(ids.send_back(FILE, FILE, 11), "another process on the old node (a cached dentry): sent back");
        let alias = ids.entry(FILE).expect("alias");
        assert!(ids.send_back(FILE, FILE, 11), "after a lookup, the same process again: sent back");
        assert_eq!(ids.entry(FILE), Some(alias), "to the same alias");
        assert!(ids.send_back(alias, FILE, 11), "the alias's own inode may split again");
        let next = ids.entry(FILE).expect("a newer alias");
        assert_ne!(next, alias);
        assert_eq!(ids.union(alias), FILE, "the older alias still names the file");
    }
}
