//! SELinux labels in the merged view: whether any layer carries `security.selinux` at all, and
//! so how a getxattr of that name is answered.
//!
//! `ls -l` asks every file for its label (coreutils' `lgetfilecon`, through a libselinux that
//! asks even with SELinux off). ENODATA ("this file has none") makes it ask the next file
//! again; ENOTSUP ("this filesystem holds none") it remembers per `st_dev`, so one request
//! serves a whole tree. A host with SELinux on answers these reads in its LSM and never asks
//! the daemon. shalefs answers ENOTSUP only once a scan of every layer — the lowers and the
//! upper — found no object with the label, and never again once one gets it through the mount
//! (setxattr, a copy-up carrying one): before that, and after, the stored answer (ENODATA or
//! the value). A program that was told ENOTSUP and stopped asking can so never miss a label.
//!
//! The scan ([`LabelScan::run`]) runs in the background once the mount is live, on duplicates
//! of the layers' root fds (deep paths reached through `sys` as for the mount's own), and
//! ends soon after the mount goes ([`Labels::stop`], from `Union::release_all`). Lowers
//! from the store never change, so their results are kept through a [`ScanCache`] (the mount
//! plan backs it by the store) and each is scanned once; other lowers and the upper are
//! scanned at each mount. A rename in the upper while it is scanned (the only change that
//! can carry an unscanned object into a scanned directory) makes the scan start again.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering::SeqCst};

use crate::sys::{self, Errno, SysResult};

use super::layer::{Layer, join};

/// The SELinux label's xattr.
pub const SELINUX_XATTR: &[u8] = b"security.selinux";

/// What is known of the labels of the whole merged view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabelState {
    /// Not scanned yet (or the scan could not finish): answered as stored.
    Unknown,
    /// No layer holds one: getxattr of `security.selinux` is ENOTSUP.
    Unlabelled,
    /// Some object has one (found by the scan, or set through the mount): answered as stored,
    /// for good.
    Labelled,
}

const UNKNOWN: u8 = 0;
const UNLABELLED: u8 = 1;
const LABELLED: u8 = 2;

/// The label state of one mount, shared by the request handlers and the scan.
#[derive(Debug, Default)]
pub struct Labels {
    state: AtomicU8,
    /// Renames in the upper started and finished: a scan of the upper is good only if none
    /// overlapped it.
    renames_started: AtomicU64,
    renames_finished: AtomicU64,
    /// The mount is gone: a running scan stops.
    stopped: AtomicBool,
}

impl Labels {
    pub fn state(&self) -> LabelState {
        match self.state.load(SeqCst) {
            UNLABELLED => LabelState::Unlabelled,
            LABELLED => LabelState::Labelled,
            _ => LabelState::Unknown,
        }
    }

    /// The answer to a getxattr of `name` that needs no layer: ENOTSUP for `security.selinux`
    /// once the merged view is known to carry none.
    pub fn short_answer(&self, name: &[u8]) -> Option<Errno> {
        (name == SELINUX_XATTR && self.state() == LabelState::Unlabelled).then_some(Errno::ENOTSUP)
    }

    /// `name` is about to be set on an object of the mount. Called before the set, so no
    /// reader is told ENOTSUP while a label exists.
    pub fn note_set(&self, name: &[u8]) {
        if name == SELINUX_XATTR {
            self.state.store(LABELLED, SeqCst);
        }
    }

    /// The scan found no label: ENOTSUP from now on, unless one was set meanwhile.
    fn settle_unlabelled(&self) -> bool {
        self.state.compare_exchange(UNKNOWN, UNLABELLED, SeqCst, SeqCst).is_ok()
    }

    fn settle_labelled(&self) {
        self.state.store(LABELLED, SeqCst);
    }

    /// Held by a rename in the upper for its duration.
    pub fn renaming(&self) -> RenameGuard<'_> {
        self.renames_started.fetch_add(1, SeqCst);
        RenameGuard(self)
    }

    /// Taken before a scan of the upper; see [`Self::renamed_since`].
    fn rename_mark(&self) -> u64 {
        self.renames_finished.load(SeqCst)
    }

    /// Whether a rename overlapped the time since `mark`: every rename started by now had
    /// finished before the mark was taken only if the counts match.
    fn renamed_since(&self, mark: u64) -> bool {
        self.renames_started.load(SeqCst) != mark
    }

    /// The mount is gone: a running scan ends at its next directory.
    pub fn stop(&self) {
        self.stopped.store(true, SeqCst);
    }

    fn is_stopped(&self) -> bool {
        self.stopped.load(SeqCst)
    }
}

/// A rename in progress (see [`Labels::renaming`]).
pub struct RenameGuard<'a>(&'a Labels);

impl Drop for RenameGuard<'_> {
    fn drop(&mut self) {
        self.0.renames_finished.fetch_add(1, SeqCst);
    }
}

/// Scan results kept across mounts, for layers that never change (the store's).
pub trait ScanCache {
    /// The kept result for the lower layer at `layer`: whether it carries labels.
    fn known(&self, layer: &Path) -> Option<bool>;
    /// Keep a complete scan's result, where the layer is one that never changes.
    fn remember(&self, layer: &Path, labelled: bool);
}

/// No layer's result is kept: every one is scanned at each mount.
pub struct NoCache;

impl ScanCache for NoCache {
    fn known(&self, _layer: &Path) -> Option<bool> {
        None
    }
    fn remember(&self, _layer: &Path, _labelled: bool) {}
}

/// What a walk of one layer found.
#[derive(Debug, PartialEq, Eq)]
pub enum Scan {
    /// No object carries a label; how many objects were looked at.
    Clean(u64),
    /// This object (its path in the layer) carries one.
    Labelled(Vec<u8>),
    /// This path could not be read: nothing is known.
    Incomplete(Vec<u8>, Errno),
    /// The mount went away.
    Stopped,
}

/// Walk `layer` (an explicit stack of directories, so depth costs no recursion) and list
/// each object's xattrs, until one carries `security.selinux`.
pub fn scan_layer(layer: &Layer, stopped: impl Fn() -> bool) -> Scan {
    let mut count = 1;
    match carries_label(layer, b".") {
        Ok(false) => {}
        Ok(true) => return Scan::Labelled(b".".to_vec()),
        Err(e) => return Scan::Incomplete(b".".to_vec(), e),
    }
    let mut dirs = vec![b".".to_vec()];
    while let Some(dir) = dirs.pop() {
        let entries = match layer.read_dir(&dir) {
            Ok(entries) => entries,
            // Removed or replaced since its parent was read (the upper changes under a scan).
            Err(Errno::ENOENT) | Err(Errno::ENOTDIR) => continue,
            Err(e) => return Scan::Incomplete(dir, e),
        };
        for (name, kind, _) in entries {
            // Checked per object, so the layers are let go of soon after the mount goes.
            if stopped() {
                return Scan::Stopped;
            }
            let rel = join(&dir, &name);
            count += 1;
            match carries_label(layer, &rel) {
                Ok(false) => {}
                Ok(true) => return Scan::Labelled(rel),
                Err(e) => return Scan::Incomplete(rel, e),
            }
            let kind = match kind {
                0 => sys::cstring(&rel).and_then(|c| layer.stat(&c)).map_or(0, |st| st.st_mode & libc::S_IFMT),
                k => k,
            };
            if kind == libc::S_IFDIR {
                dirs.push(rel);
            }
        }
    }
    Scan::Clean(count)
}

/// Whether the object at `rel` lists `security.selinux` among its xattrs.
fn carries_label(layer: &Layer, rel: &[u8]) -> SysResult<bool> {
    match sys::listxattr_at(layer.fd(), &sys::cstring(rel)?) {
        Ok(names) => Ok(names.split(|&b| b == 0).any(|n| n == SELINUX_XATTR)),
        // A filesystem without xattrs holds no label; an object gone since its directory was
        // read holds none either.
        Err(Errno::ENOTSUP) | Err(Errno::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// How often the upper is scanned again when renames keep overlapping the scan.
const UPPER_ATTEMPTS: usize = 3;

/// A scan of a mount's layers, on duplicates of their root fds, to run in its own thread.
pub struct LabelScan {
    labels: Arc<Labels>,
    lowers: Vec<Layer>,
    upper: Option<Layer>,
}

impl LabelScan {
    pub(super) fn new(labels: Arc<Labels>, lowers: Vec<Layer>, upper: Option<Layer>) -> LabelScan {
        LabelScan { labels, lowers, upper }
    }

    /// Scan every layer (lowers first, kept results used and new ones kept), stopping at the
    /// first label; settle the mount's state when all are clean. Returns the state it leaves.
    pub fn run(self, cache: &dyn ScanCache) -> LabelState {
        let started = std::time::Instant::now();
        let (mut objects, mut kept) = (0, 0);
        for lower in &self.lowers {
            let known = cache.known(&lower.path);
            kept += usize::from(known.is_some());
            let labelled = match known {
                Some(labelled) => labelled,
                None => match self.scan(lower) {
                    Some(Scan::Clean(n)) => {
                        objects += n;
                        cache.remember(&lower.path, false);
                        false
                    }
                    Some(Scan::Labelled(rel)) => {
                        cache.remember(&lower.path, true);
                        found_label(lower, &rel);
                        true
                    }
                    _ => return self.labels.state(),
                },
            };
            if labelled {
                let how = if known.is_some() { " (known from an earlier scan)" } else { "" };
                tracing::info!("lower layer {} carries security.selinux labels{how}: they are answered as stored", lower.path.display());
                self.labels.settle_labelled();
                return self.labels.state();
            }
        }
        if let Some(upper) = &self.upper {
            match self.scan_upper(upper) {
                Some(n) => objects += n,
                None => return self.labels.state(),
            }
        }
        if self.labels.settle_unlabelled() {
            tracing::info!(
                "no layer carries security.selinux labels ({objects} objects scanned in {} ms, {kept} layers known from earlier scans): getxattr of security.selinux answers ENOTSUP",
                started.elapsed().as_millis()
            );
        }
        self.labels.state()
    }

    /// One layer's walk; `None` (logged) when it could not finish.
    fn scan(&self, layer: &Layer) -> Option<Scan> {
        match scan_layer(layer, || self.labels.is_stopped()) {
            Scan::Incomplete(rel, e) => {
                tracing::info!("labels: cannot read {} in {}: {e}; security.selinux is answered as stored", String::from_utf8_lossy(&rel), layer.path.display());
                None
            }
            Scan::Stopped => None,
            done => Some(done),
        }
    }

    /// Scan the upper until no rename overlapped the walk; the number of objects when clean.
    /// Each attempt uses a fresh duplicate of its root, so no directory kept open for a deep
    /// path by an earlier attempt, since moved, is used.
    fn scan_upper(&self, upper: &Layer) -> Option<u64> {
        for _ in 0..UPPER_ATTEMPTS {
            let mark = self.labels.rename_mark();
            let layer = upper.duplicate().ok()?;
            match self.scan(&layer)? {
                Scan::Clean(n) if !self.labels.renamed_since(mark) => return Some(n),
                Scan::Clean(_) => tracing::debug!("labels: the upper changed by renames while scanned; again"),
                Scan::Labelled(rel) => {
                    found_label(&layer, &rel);
                    self.labels.settle_labelled();
                    tracing::info!("the upper {} carries security.selinux labels: they are answered as stored", upper.path.display());
                    return None;
                }
                _ => return None,
            }
        }
        tracing::info!("labels: the upper kept changing by renames while scanned; security.selinux is answered as stored");
        None
    }
}

fn found_label(layer: &Layer, rel: &[u8]) {
    tracing::debug!("labels: {} in {} carries security.selinux", String::from_utf8_lossy(rel), layer.path.display());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selinux_is_enotsup_only_once_known_unlabelled() {
        let l = Labels::default();
        assert_eq!(l.short_answer(SELINUX_XATTR), None);
        assert!(l.settle_unlabelled());
        assert_eq!(l.short_answer(SELINUX_XATTR), Some(Errno::ENOTSUP));
        // Other names are always asked of the layers.
        assert_eq!(l.short_answer(b"security.capability"), None);
        assert_eq!(l.short_answer(b"user.selinux"), None);
        assert_eq!(l.short_answer(b"security.selinux.x"), None);
    }

    #[test]
    fn a_label_set_is_for_good() {
        let l = Labels::default();
        l.note_set(b"user.x");
        assert_eq!(l.state(), LabelState::Unknown);
        l.note_set(SELINUX_XATTR);
        assert_eq!(l.state(), LabelState::Labelled);
        // A scan finishing after the set cannot turn ENOTSUP on.
        assert!(!l.settle_unlabelled());
        assert_eq!(l.short_answer(SELINUX_XATTR), None);
        let l = Labels::default();
        assert!(l.settle_unlabelled());
        l.note_set(SELINUX_XATTR);
        assert_eq!(l.short_answer(SELINUX_XATTR), None);
    }

    #[test]
    fn renames_overlapping_a_scan_are_seen() {
        let l = Labels::default();
        // One that finished before the scan began does not count.
        drop(l.renaming());
        let mark = l.rename_mark();
        assert!(!l.renamed_since(mark));
        // One that starts during it does, finished or not.
        let g = l.renaming();
        assert!(l.renamed_since(mark));
        drop(g);
        assert!(l.renamed_since(mark));
        // One in flight when the scan begins counts even if it ends before the scan.
        let g = l.renaming();
        let mark = l.rename_mark();
        drop(g);
        assert!(l.renamed_since(mark));
    }
}
