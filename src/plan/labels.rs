//! The label scan of a mount (`union::labels`), started once the mount is live: in a thread
//! of its own, so mounting stays instant, with the results of store layers kept in the store
//! (`layers/<diffid-hex>.labels.json`), as those never change.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::store;
use crate::union::labels::{LabelScan, ScanCache};

/// Label scans kept beside the store's layer records.
struct StoreRecords {
    /// Layer directory → its record file.
    records: HashMap<PathBuf, PathBuf>,
}

impl ScanCache for StoreRecords {
    fn known(&self, layer: &Path) -> Option<bool> {
        store::read_layer_labels(self.records.get(layer)?)
    }

    fn remember(&self, layer: &Path, labelled: bool) {
        let Some(record) = self.records.get(layer) else { return };
        // Without the record the next mount scans again: nothing is lost but time.
        if let Err(e) = store::write_layer_labels(record, labelled) {
            tracing::debug!("labels: not kept for {}: {e:#}", layer.display());
        }
    }
}

/// Scans of this process still running: [`finish`] waits for them before the process ends, so
/// that none is cut off while it writes its record.
static RUNNING: std::sync::Mutex<Vec<std::thread::JoinHandle<()>>> = std::sync::Mutex::new(Vec::new());

/// Scan in the background; the mount answers as stored until the scan says otherwise.
pub fn start(scan: LabelScan, records: HashMap<PathBuf, PathBuf>) {
    let started = std::thread::Builder::new().name("label-scan".into()).spawn(move || {
        // Reading every layer's inodes must not slow what the mount is used for meanwhile
        // (measured: a cold 1 GiB read beside the scan took 1.13 s instead of 0.61).
        crate::sys::make_thread_background();
        scan.run(&StoreRecords { records });
    });
    match started {
        Ok(handle) => RUNNING.lock().unwrap_or_else(|p| p.into_inner()).push(handle),
        Err(e) => tracing::warn!("no label scan (security.selinux is answered as stored): {e}"),
    }
}

/// The mount is gone: wait for its scan, which stops at the next object it reads (a record it
/// is writing is finished first, never left half-made in the store).
pub fn finish() {
    let running = std::mem::take(&mut *RUNNING.lock().unwrap_or_else(|p| p.into_inner()));
    for scan in running {
        let _ = scan.join();
    }
}
