//! Guards for the mounts a test makes. Drop always unmounts (lazily if busy) and reaps the
//! process the guard started, by its PID, even when the test panics.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{is_mounted, shalefs_bin};

fn umount(path: &Path) {
    for _ in 0..50 {
        if !is_mounted(path) {
            return;
        }
        let _ = Command::new("umount").arg(path).stderr(Stdio::null()).status();
        if !is_mounted(path) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = Command::new("umount").arg("-l").arg(path).status();
}

/// A shalefs mount served by a process this guard started.
pub struct ShaleMount {
    pub mnt: PathBuf,
    child: Option<Child>,
    pub log: PathBuf,
}

impl ShaleMount {
    /// `shalefs mount -f ARGS MNT`, waiting until the mount is live.
    pub fn foreground(args: &[OsString], mnt: &Path) -> Result<ShaleMount, String> {
        let level = std::env::var("SHALEFS_TEST_LOG_LEVEL").unwrap_or_else(|_| "info".into());
        Self::foreground_logging(args, mnt, &level)
    }

    /// As [`Self::foreground`], logging at `level` (`debug` logs every FUSE request).
    pub fn foreground_logging(args: &[OsString], mnt: &Path, level: &str) -> Result<ShaleMount, String> {
        let log = mnt.with_extension("log");
        let log_file = std::fs::File::create(&log).map_err(|e| e.to_string())?;
        let child = Command::new(shalefs_bin())
            .arg("mount")
            .arg("-f")
            .arg("--log-level")
            .arg(level)
            .args(args)
            .arg(mnt)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .map_err(|e| format!("spawn shalefs: {e}"))?;
        let mut guard = ShaleMount { mnt: mnt.to_path_buf(), child: Some(child), log };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !is_mounted(mnt) {
            if let Some(Ok(Some(status))) = guard.child.as_mut().map(|c| c.try_wait()) {
                let log = std::fs::read_to_string(&guard.log).unwrap_or_default();
                return Err(format!("shalefs exited ({status}) before mounting: {log}"));
            }
            if Instant::now() > deadline {
                return Err("shalefs did not mount within 20s".into());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(guard)
    }

    /// Mount lowers (top first) read-only.
    pub fn lowers(lowers: &[&Path], mnt: &Path) -> ShaleMount {
        let mut args = Vec::new();
        for l in lowers {
            args.push("--lower".into());
            args.push(l.as_os_str().to_owned());
        }
        ShaleMount::foreground(&args, mnt).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The PID of the serving process this guard started.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Wait for the serving process to end (after an unmount), at most `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ShaleMount {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(400).collect();
            eprintln!("--- shalefs log (last lines) for {}:", self.mnt.display());
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
        umount(&self.mnt);
        if self.wait_exit(Duration::from_secs(10)).is_none()
            && let Some(child) = self.child.as_mut() {
                let _ = child.kill();
                let _ = child.wait();
            }
    }
}

/// A mount made by `shalefs mount` in its default daemon mode; the daemon exits by itself once
/// the guard unmounts.
pub struct DaemonMount {
    pub mnt: PathBuf,
}

impl Drop for DaemonMount {
    fn drop(&mut self) {
        umount(&self.mnt);
    }
}

/// Kernel overlayfs on the same layers: the semantic oracle.
pub struct KernelOverlay {
    pub mnt: PathBuf,
}

impl KernelOverlay {
    /// Read-only kernel overlay of `lowers` (top first).
    pub fn lowers(lowers: &[&Path], mnt: &Path) -> KernelOverlay {
        let joined: Vec<String> = lowers.iter().map(|p| p.to_string_lossy().replace(':', "\\:")).collect();
        Self::mount(&format!("lowerdir={}", joined.join(":")), mnt)
    }

    pub fn mount(options: &str, mnt: &Path) -> KernelOverlay {
        let out = Command::new("mount").args(["-t", "overlay", "overlay", "-o", options]).arg(mnt).output();
        match out {
            Ok(o) if o.status.success() => KernelOverlay { mnt: mnt.to_path_buf() },
            Ok(o) => panic!("kernel overlay mount failed: {}", String::from_utf8_lossy(&o.stderr)),
            Err(e) => panic!("cannot run mount: {e}"),
        }
    }
}

impl Drop for KernelOverlay {
    fn drop(&mut self) {
        umount(&self.mnt);
    }
}
