//! A filesystem of a test's own: an ext4 image on a loop device, mounted under the test's
//! directory. The guard unmounts it and detaches the loop device on every path, panics
//! included; it can also cut the power (`FS_IOC_SHUTDOWN` without a log flush, as xfstests
//! does) and bring the filesystem back with a journal replay.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::{is_mounted, run_ok};

pub struct LoopFs {
    pub image: PathBuf,
    pub mnt: PathBuf,
    dev: Option<String>,
    mount_opts: String,
}

impl LoopFs {
    /// A fresh ext4 of `mib` MiB at `image`, mounted on `mnt` with `mount_opts` (may be empty).
    pub fn ext4(image: &Path, mnt: &Path, mib: u64, mount_opts: &str) -> LoopFs {
        std::fs::File::create(image).and_then(|f| f.set_len(mib << 20)).expect("create the image");
        run_ok(Command::new("mkfs.ext4").args(["-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0"]).arg(image));
        std::fs::create_dir_all(mnt).expect("create the mountpoint");
        let mut fs = LoopFs { image: image.to_path_buf(), mnt: mnt.to_path_buf(), dev: None, mount_opts: mount_opts.into() };
        fs.attach_and_mount();
        fs
    }

    fn attach_and_mount(&mut self) {
        // Direct I/O: what the filesystem wrote reaches the image file, not a second page cache
        // that would survive the "power cut".
        let dev = run_ok(Command::new("losetup").args(["--direct-io=on", "--find", "--show"]).arg(&self.image));
        self.dev = Some(dev.trim().to_string());
        let mut mount = Command::new("mount");
        if !self.mount_opts.is_empty() {
            mount.args(["-o", &self.mount_opts]);
        }
        run_ok(mount.arg(dev.trim()).arg(&self.mnt));
    }

    /// The power cut: the filesystem stops at once, its journal not flushed
    /// (`xfs_io -x -c shutdown` is FS_IOC_SHUTDOWN with FS_GOING_DOWN_NOLOGFLUSH).
    pub fn shutdown(&self) {
        run_ok(Command::new("xfs_io").args(["-x", "-c", "shutdown"]).arg(&self.mnt));
    }

    /// Unmount, detach, attach again and mount: ext4 replays its journal.
    pub fn remount(&mut self) {
        self.unmount().unwrap_or_else(|e| panic!("{e}"));
        self.attach_and_mount();
    }

    /// Unmount only (not lazily: EBUSY is an error), keeping the loop device for [`Self::mount_again`].
    pub fn umount_keeping_device(&self) -> Result<(), String> {
        let out = Command::new("umount").arg(&self.mnt).output().map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!("umount {}: {}", self.mnt.display(), String::from_utf8_lossy(&out.stderr).trim()))
        }
    }

    /// Mount the same loop device again after [`Self::umount_keeping_device`].
    pub fn mount_again(&self) {
        let dev = self.dev.as_deref().expect("the loop device is attached");
        let mut mount = Command::new("mount");
        if !self.mount_opts.is_empty() {
            mount.args(["-o", &self.mount_opts]);
        }
        run_ok(mount.arg(dev).arg(&self.mnt));
    }

    /// Unmount (not lazily: a busy filesystem is an error here) and detach the loop device.
    pub fn unmount(&mut self) -> Result<(), String> {
        if is_mounted(&self.mnt) {
            let out = Command::new("umount").arg(&self.mnt).output().map_err(|e| e.to_string())?;
            if !out.status.success() {
                return Err(format!("umount {}: {}", self.mnt.display(), String::from_utf8_lossy(&out.stderr).trim()));
            }
        }
        self.detach();
        Ok(())
    }

    fn detach(&mut self) {
        if let Some(dev) = self.dev.take() {
            // The kernel may hold the device a moment after the unmount.
            for _ in 0..50 {
                if Command::new("losetup").arg("-d").arg(&dev).stderr(Stdio::null()).status().is_ok_and(|s| s.success()) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            eprintln!("losetup -d {dev} failed");
        }
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        for _ in 0..50 {
            if !is_mounted(&self.mnt) {
                break;
            }
            let _ = Command::new("umount").arg(&self.mnt).stderr(Stdio::null()).status();
            if is_mounted(&self.mnt) {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        if is_mounted(&self.mnt) {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
        self.detach();
        let _ = std::fs::remove_file(&self.image);
    }
}
