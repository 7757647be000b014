//! Shared test harness: temporary directories, mount guards that always unmount, layer builders
//! and tree comparison.

pub mod layers;
pub mod loopfs;
pub mod mounts;
pub mod registry;
pub mod token;
pub mod tree;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub use layers::{Encoding, LayerSpec};
pub use mounts::{KernelOverlay, ShaleMount};
pub use tree::{Tree, assert_same_tree};

/// The shalefs binary cargo built for this test run.
pub fn shalefs_bin() -> &'static str {
    env!("CARGO_BIN_EXE_shalefs")
}

/// A directory under /tmp removed (after unmounting anything left below it) when dropped.
/// With `SHALEFS_KEEP_TEST_DIRS=1`, a failing test's directory is kept for a post-mortem.
pub struct TestDir {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
}

impl TestDir {
    pub fn new(name: &str) -> TestDir {
        let dir = tempfile::Builder::new().prefix(&format!("shalefs-{name}-")).tempdir().expect("create temp dir");
        let path = dir.path().to_path_buf();
        TestDir { dir: Some(dir), path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A new empty subdirectory.
    pub fn mkdir(&self, name: &str) -> PathBuf {
        let p = self.path.join(name);
        std::fs::create_dir_all(&p).expect("create dir");
        p
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::thread::panicking() && std::env::var_os("SHALEFS_KEEP_TEST_DIRS").is_some()
            && let Some(d) = self.dir.take() {
                eprintln!("keeping {}", d.keep().display());
            }
    }
}

/// Run a command, returning its output; panics only if it cannot be started.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Run a command that must succeed; its stdout as a string.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether `path` is a mount point right now (from /proc/self/mountinfo).
pub fn is_mounted(path: &Path) -> bool {
    let Ok(canon) = path.canonicalize() else { return false };
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else { return false };
    let want = canon.to_string_lossy().replace(' ', "\\040");
    info.lines().any(|l| l.split(' ').nth(4) == Some(want.as_str()))
}

/// The mount options field of the mount at `path`.
pub fn mount_options(path: &Path) -> Option<String> {
    let canon = path.canonicalize().ok()?;
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = canon.to_string_lossy().replace(' ', "\\040");
    info.lines().find(|l| l.split(' ').nth(4) == Some(want.as_str())).and_then(|l| l.split(' ').nth(5)).map(String::from)
}
