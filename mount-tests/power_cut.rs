//! A power cut after copy-ups (issue 14.1): the upper and work dirs sit on an ext4 of their own,
//! which is shut down without flushing its journal once the journal holds the copy-ups' renames.
//! After the journal replay no copy may hide the lower data it copied (the appended byte may be
//! lost; the caller never synced), and whatever was fsynced must read back whole. shalefs and
//! kernel overlayfs run side by side on the same ext4.

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::util::loopfs::LoopFs;
use crate::util::{KernelOverlay, ShaleMount, TestDir};

const FILES: usize = 200;
const SIZE: usize = 64 << 10;

fn lower_content(i: usize) -> Vec<u8> {
    (0..SIZE).map(|j| (j.wrapping_mul(31) ^ i.wrapping_mul(7919)) as u8 | 1).collect()
}

fn fsynced_content() -> Vec<u8> {
    (0..(1 << 20)).map(|j: usize| (j % 251) as u8).collect()
}

/// What a file read back as after the cut.
#[derive(Debug, Default, PartialEq, Eq)]
struct Count {
    original: usize,
    original_and_byte: usize,
    torn: usize,
}

/// One side of the comparison: its upper and work on the shared ext4, a mountpoint outside it.
struct Side {
    name: &'static str,
    /// Mounted with `metacopy=on`, each file chmodded (a metadata-only copy-up) before its append
    /// (the data copy into that upper file, then the mark's removal).
    metacopy: bool,
    upper: PathBuf,
    work: PathBuf,
    mnt: PathBuf,
}

/// A live mount of one side, held only for its guard's Drop (which unmounts).
enum Mounted {
    Shale(#[allow(dead_code)] ShaleMount),
    Kernel(#[allow(dead_code)] KernelOverlay),
}

impl Side {
    fn new(name: &'static str, metacopy: bool, fs: &Path, dir: &TestDir) -> Side {
        let (upper, work) = (fs.join(name).join("upper"), fs.join(name).join("work"));
        std::fs::create_dir_all(&upper).expect("upper");
        std::fs::create_dir_all(&work).expect("work");
        Side { name, metacopy, upper, work, mnt: dir.mkdir(&format!("mnt-{name}")) }
    }

    fn mount(&self, lower: &Path) -> Mounted {
        let mut opts = format!("lowerdir={},upperdir={},workdir={}", lower.display(), self.upper.display(), self.work.display());
        if self.metacopy {
            opts.push_str(",metacopy=on");
        }
        if self.name.starts_with("kernel") {
            Mounted::Kernel(KernelOverlay::mount(&format!("{opts},index=on,redirect_dir=on"), &self.mnt))
        } else {
            let args: Vec<OsString> = vec!["-o".into(), opts.into()];
            Mounted::Shale(ShaleMount::foreground(&args, &self.mnt).unwrap_or_else(|e| panic!("{e}")))
        }
    }

    /// The changes, none of them synced but the fsynced ones.
    fn change(&self) {
        let m = &self.mnt;
        for i in 0..FILES {
            if self.metacopy {
                std::fs::set_permissions(m.join(format!("files/f{i:03}")), std::fs::Permissions::from_mode(0o640)).expect("chmod");
            }
            let mut f = std::fs::OpenOptions::new().append(true).open(m.join(format!("files/f{i:03}"))).expect("open lower file");
            f.write_all(b"!").expect("append");
        }
        let mut f = std::fs::OpenOptions::new().create_new(true).write(true).mode(0o644).open(m.join("new-fsynced")).expect("create");
        f.write_all(&fsynced_content()).expect("write");
        f.sync_all().expect("fsync the new file");
        let mut f = std::fs::OpenOptions::new().append(true).open(m.join("appended-fsynced")).expect("open");
        f.write_all(b"!").expect("append");
        f.sync_data().expect("fdatasync the copied-up file");
        std::fs::rename(m.join("dir"), m.join("dir-renamed")).expect("rename the lower directory");
    }

    fn count(&self) -> Count {
        let mut c = Count::default();
        for i in 0..FILES {
            let got = std::fs::read(self.mnt.join(format!("files/f{i:03}"))).unwrap_or_default();
            let want = lower_content(i);
            if got == want {
                c.original += 1;
            } else if got.len() == SIZE + 1 && got[..SIZE] == want[..] && got[SIZE] == b'!' {
                c.original_and_byte += 1;
            } else {
                c.torn += 1;
            }
        }
        c
    }

    /// The fsynced files, and the renamed directory (at either name, never lost or torn).
    fn check_synced(&self) -> Vec<String> {
        let m = &self.mnt;
        let mut bad = Vec::new();
        if std::fs::read(m.join("new-fsynced")).ok() != Some(fsynced_content()) {
            bad.push("new-fsynced is not whole".to_string());
        }
        let mut appended = lower_content(FILES);
        appended.push(b'!');
        if std::fs::read(m.join("appended-fsynced")).ok() != Some(appended) {
            bad.push("appended-fsynced lost its data or its byte".to_string());
        }
        let dir = if m.join("dir-renamed").is_dir() { m.join("dir-renamed") } else { m.join("dir") };
        for i in 0..3 {
            if std::fs::read(dir.join(format!("g{i}"))).ok() != Some(lower_content(1000 + i)) {
                bad.push(format!("{}/g{i} is not the lower file", dir.display()));
            }
        }
        bad
    }
}

fn build_lower(lower: &Path) {
    std::fs::create_dir_all(lower.join("files")).expect("lower");
    std::fs::create_dir_all(lower.join("dir")).expect("lower dir");
    for i in 0..FILES {
        std::fs::write(lower.join(format!("files/f{i:03}")), lower_content(i)).expect("lower file");
    }
    std::fs::write(lower.join("appended-fsynced"), lower_content(FILES)).expect("lower file");
    for i in 0..3 {
        std::fs::write(lower.join(format!("dir/g{i}")), lower_content(1000 + i)).expect("lower file");
    }
}

/// Issue 14.1: before the fix, all 200 copies hid their lower file after the cut.
#[test]
fn power_cut_after_copy_up_loses_no_lower_data() {
    let dir = TestDir::new("power-cut");
    let lower = dir.path().join("lower");
    build_lower(&lower);
    // commit=1: ext4 commits its journal every second instead of every 5 s, so 3 s later the
    // journal surely holds the renames, and the data of anything not synced is still only in
    // the page cache (its writeback starts after 30 s, dirty_expire_centisecs).
    let mut fs = LoopFs::ext4(&dir.path().join("upper.img"), &dir.path().join("upperfs"), 256, "commit=1");
    let sides = [
        Side::new("kernel", false, &fs.mnt, &dir),
        Side::new("shalefs", false, &fs.mnt, &dir),
        Side::new("kernel-metacopy", true, &fs.mnt, &dir),
        Side::new("shalefs-metacopy", true, &fs.mnt, &dir),
    ];
    {
        let mounts: Vec<Mounted> = sides.iter().map(|s| s.mount(&lower)).collect();
        for s in &sides {
            s.change();
        }
        std::thread::sleep(Duration::from_secs(3));
        fs.shutdown();
        drop(mounts);
    }
    fs.remount();
    let mut report = Vec::new();
    let mut failures = Vec::new();
    for s in &sides {
        let _m = s.mount(&lower);
        let c = s.count();
        let bad = s.check_synced();
        report.push(format!(
            "{:16} original {:3}  original+byte {:3}  torn {:3}  fsynced intact: {}",
            s.name,
            c.original,
            c.original_and_byte,
            c.torn,
            if bad.is_empty() { "yes".into() } else { bad.join("; ") }
        ));
        if c.torn != 0 || !bad.is_empty() {
            failures.push(s.name);
        }
    }
    eprintln!("power cut after {FILES} copy-ups:\n{}", report.join("\n"));
    assert!(failures.is_empty(), "data lost on {failures:?}:\n{}", report.join("\n"));
    fs.unmount().unwrap_or_else(|e| panic!("{e}"));
}

/// `-o volatile` (overlayfs' option) turns the syncs off, and the mount log says what that risks.
#[test]
fn volatile_mount_logs_that_a_crash_can_hide_lower_data() {
    let dir = TestDir::new("volatile");
    let lower = dir.path().join("lower");
    build_lower(&lower);
    let (upper, work, mnt) = (dir.mkdir("upper"), dir.mkdir("work"), dir.mkdir("mnt"));
    let opts = format!("lowerdir={},upperdir={},workdir={},volatile", lower.display(), upper.display(), work.display());
    let m = ShaleMount::foreground(&["-o".into(), opts.into()], &mnt).unwrap_or_else(|e| panic!("{e}"));
    std::fs::OpenOptions::new().append(true).open(mnt.join("files/f000")).and_then(|mut f| f.write_all(b"!")).expect("append");
    let log = std::fs::read_to_string(&m.log).unwrap_or_default();
    assert!(log.contains("a crash or power cut can leave copies that hide their lower data"), "{log}");
}
