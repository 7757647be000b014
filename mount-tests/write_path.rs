//! The write path, one rule per test: copy-up keeps data and metadata, whiteouts and opaque
//! directories are written in overlayfs format, open files survive copy-up and unlink, inode
//! numbers stay, and kernel overlayfs can mount the upper shalefs wrote.

use std::ffi::OsString;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::util::tree::xattrs;
use crate::util::{Encoding, KernelOverlay, LayerSpec, ShaleMount, TestDir, Tree, run_ok};

/// A lower layer, an empty upper and work dir, and a shalefs mount over them.
struct Rw {
    dir: TestDir,
    lower: PathBuf,
    upper: PathBuf,
    work: PathBuf,
    mnt: PathBuf,
}

impl Rw {
    fn new(name: &str, lower: LayerSpec) -> Rw {
        let dir = TestDir::new(name);
        let l = dir.path().join("lower");
        lower.build(&l, Encoding::Overlay);
        let (upper, work, mnt) = (dir.mkdir("upper"), dir.mkdir("work"), dir.mkdir("mnt"));
        Rw { dir, lower: l, upper, work, mnt }
    }

    fn args(&self) -> Vec<OsString> {
        vec![
            "-o".into(),
            format!("lowerdir={},upperdir={},workdir={}", self.lower.display(), self.upper.display(), self.work.display()).into(),
        ]
    }

    fn mount(&self) -> ShaleMount {
        ShaleMount::foreground(&self.args(), &self.mnt).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Mounted with every read and write served by the daemon (`--no-passthrough`).
    fn mount_without_passthrough(&self) -> ShaleMount {
        let mut args = self.args();
        args.push("--no-passthrough".into());
        ShaleMount::foreground(&args, &self.mnt).unwrap_or_else(|e| panic!("{e}"))
    }

    fn m(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    /// Kernel overlayfs on the same lower and the upper shalefs wrote.
    fn kernel_on_upper(&self) -> (KernelOverlay, PathBuf) {
        let (kw, km) = (self.dir.mkdir("kwork"), self.dir.mkdir("kmnt"));
        let opts = format!(
            "lowerdir={},upperdir={},workdir={},index=on,redirect_dir=on",
            self.lower.display(),
            self.upper.display(),
            kw.display()
        );
        (KernelOverlay::mount(&opts, &km), km)
    }
}

fn upper_kinds(upper: &Path) -> Vec<(String, u32, u64)> {
    let mut out = Vec::new();
    for e in walkdir(upper) {
        let m = std::fs::symlink_metadata(&e).unwrap();
        out.push((e.strip_prefix(upper).unwrap().display().to_string(), m.mode() & libc::S_IFMT, m.rdev()));
    }
    out.sort();
    out
}

fn walkdir(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if std::fs::symlink_metadata(&p).unwrap().is_dir() {
            out.extend(walkdir(&p));
        }
        out.push(p);
    }
    out
}

#[test]
fn copy_up_keeps_data_holes_owner_mode_times_and_xattrs() {
    let rw = Rw::new("copyup-meta", LayerSpec::new().file("dir/f", "original").chown("dir/f", 1000, 1000).chmod("dir/f", 0o4750)
        .xattr("dir/f", "user.note", "kept").chmod("dir", 0o711).chown("dir", 12, 34));
    // A sparse file: 1 MiB of data at 64 MiB, a hole before it.
    let sparse = rw.lower.join("sparse");
    let mut f = std::fs::File::create(&sparse).unwrap();
    f.seek(SeekFrom::Start(64 << 20)).unwrap();
    f.write_all(&vec![7u8; 1 << 20]).unwrap();
    drop(f);
    run_ok(Command::new("touch").args(["-d", "@1500000000"]).arg(rw.lower.join("dir/f")).arg(rw.lower.join("dir")));
    let _m = rw.mount();
    let before = std::fs::metadata(rw.m("dir/f")).unwrap();
    std::fs::OpenOptions::new().append(true).open(rw.m("dir/f")).unwrap().write_all(b"+more").unwrap();
    assert_eq!(std::fs::read_to_string(rw.m("dir/f")).unwrap(), "original+more");
    let up = std::fs::metadata(rw.upper.join("dir/f")).unwrap();
    assert_eq!((up.uid(), up.gid(), up.mode() & 0o7777), (1000, 1000, 0o4750), "owner and set-uid mode survive");
    assert_eq!(xattrs(&rw.upper.join("dir/f")).get(b"user.note".as_slice()).map(|v| v.as_slice()), Some(b"kept".as_slice()));
    let d = std::fs::metadata(rw.upper.join("dir")).unwrap();
    assert_eq!((d.uid(), d.gid(), d.mode() & 0o7777, d.mtime()), (12, 34, 0o711, 1500000000), "parent copied up with its metadata");
    assert_eq!(std::fs::metadata(rw.m("dir/f")).unwrap().ino(), before.ino(), "st_ino stays across copy-up");
    // Sparse: touching the file copies only its data extents.
    std::fs::OpenOptions::new().write(true).open(rw.m("sparse")).unwrap().write_all(b"x").unwrap();
    let s = std::fs::metadata(rw.upper.join("sparse")).unwrap();
    assert_eq!(s.size(), (64 << 20) + (1 << 20));
    assert!(s.blocks() * 512 < 8 << 20, "holes kept: {} bytes allocated", s.blocks() * 512);
    assert!(std::fs::read_dir(rw.work.join("shalefs")).unwrap().next().is_none(), "work dir left empty");
}

/// Read a lower file through a read-only handle, rewrite it in place through a second handle
/// (a copy-up), then read again through the first: what each read saw.
fn read_before_and_after_copy_up(path: &Path) -> Vec<String> {
    use std::os::unix::fs::FileExt;
    let ro = std::fs::File::open(path).unwrap();
    let mut buf = [0u8; 6];
    let n = ro.read_at(&mut buf, 0).unwrap();
    let before = String::from_utf8_lossy(&buf[..n]).into_owned();
    let rw = std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
    rw.write_at(b"NEW", 0).unwrap();
    let n = ro.read_at(&mut buf, 0).unwrap();
    let after = String::from_utf8_lossy(&buf[..n]).into_owned();
    drop((ro, rw));
    vec![before, after, std::fs::read_to_string(path).unwrap()]
}

/// What a handle opened on a lower file before another handle copies it up and writes reads,
/// on kernel overlayfs (which re-opens the real file: the copy) and on shalefs served by the
/// daemon (the copy too). With FUSE passthrough the old handle keeps the lower copy (README,
/// deliberate difference 4): its kernel inode passes through to the lower file, whose backing
/// cannot change under an open handle (fs/fuse/iomode.c); the writer is sent to a new inode.
#[test]
fn a_handle_open_before_a_copy_up_reads_the_copy_unless_it_passes_through() {
    let spec = || LayerSpec::new().file("f", "lower data").file("h", "old h\n");
    let kdir = TestDir::new("openfiles-kernel");
    let kl = kdir.path().join("lower");
    spec().build(&kl, Encoding::Overlay);
    let (ku, kw, km) = (kdir.mkdir("upper"), kdir.mkdir("work"), kdir.mkdir("mnt"));
    let _k = KernelOverlay::mount(&format!("lowerdir={},upperdir={},workdir={}", kl.display(), ku.display(), kw.display()), &km);
    let kernel = read_before_and_after_copy_up(&km.join("h"));
    assert_eq!(kernel, ["old h\n", "NEW h\n", "NEW h\n"]);

    let rw = Rw::new("openfiles-daemon", spec());
    {
        let _m = rw.mount_without_passthrough();
        let mut reader = std::fs::File::open(rw.m("f")).unwrap();
        std::fs::write(rw.m("f"), "upper data").unwrap();
        let mut old = String::new();
        reader.read_to_string(&mut old).unwrap();
        assert_eq!(old, "upper data", "served by the daemon, a file open before copy-up reads the copy");
        assert_eq!(read_before_and_after_copy_up(&rw.m("h")), kernel);
    }

    let rw = Rw::new("openfiles-passthrough", spec());
    let _m = rw.mount();
    let reader = std::fs::File::open(rw.m("h")).unwrap();
    let seen = read_before_and_after_copy_up(&rw.m("h"));
    assert_eq!(seen, ["old h\n", "old h\n", "NEW h\n"], "passed through, the old handle keeps the lower copy; new opens see the copy");
    assert_eq!(reader.metadata().unwrap().ino(), std::fs::metadata(rw.m("h")).unwrap().ino(), "one st_ino for the old handle and the name");
    assert_eq!(std::fs::read(rw.lower.join("h")).unwrap(), b"old h\n", "the lower layer untouched");
    drop(reader);
    // Truncated by name while a reader passes through: the truncate lands, on the copy.
    use std::os::unix::fs::FileExt;
    let reader = std::fs::File::open(rw.m("f")).unwrap();
    let mut buf = [0u8; 4];
    reader.read_exact_at(&mut buf, 0).unwrap();
    truncate_by_name(&rw.m("f"), 3);
    assert_eq!(std::fs::read(rw.m("f")).unwrap(), b"low");
    assert_eq!(std::fs::read(rw.lower.join("f")).unwrap(), b"lower data");
    drop(reader);
}

fn truncate_by_name(path: &Path, len: i64) {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::truncate(c.as_ptr(), len) }, 0, "truncate {}: {}", path.display(), std::io::Error::last_os_error());
}

#[test]
fn open_files_survive_unlink() {
    let rw = Rw::new("openfiles", LayerSpec::new().file("g", "g"));
    let _m = rw.mount();
    let mut w = std::fs::OpenOptions::new().read(true).write(true).open(rw.m("g")).unwrap();
    std::fs::remove_file(rw.m("g")).unwrap();
    assert!(!rw.m("g").exists());
    w.write_all(b"still writable").unwrap();
    w.set_len(5).unwrap();
    w.set_permissions(std::fs::Permissions::from_mode(0o600)).unwrap();
    let meta = w.metadata().unwrap();
    assert_eq!((meta.len(), meta.mode() & 0o777), (5, 0o600));
    let mut s = String::new();
    w.seek(SeekFrom::Start(0)).unwrap();
    w.read_to_string(&mut s).unwrap();
    assert_eq!(s, "still");
    drop(w);
    assert_eq!(upper_kinds(&rw.upper), vec![("g".into(), libc::S_IFCHR, 0)], "the unlinked lower file is a whiteout");
}

#[test]
fn whiteouts_opaque_dirs_and_recreation_follow_overlayfs() {
    let rw = Rw::new("whiteouts", LayerSpec::new().file("d/x", "x").file("d/y", "y").file("f", "f").file("tree/a/b/c", "deep"));
    {
        let _m = rw.mount();
        std::fs::remove_file(rw.m("f")).unwrap();
        std::fs::write(rw.m("f"), "again").unwrap();
        std::fs::remove_file(rw.m("f")).unwrap();
        assert!(!rw.m("f").exists(), "deleted, re-created, deleted: stays deleted");
        assert_eq!(std::fs::remove_dir(rw.m("d")).unwrap_err().raw_os_error(), Some(libc::ENOTEMPTY));
        std::fs::remove_file(rw.m("d/x")).unwrap();
        std::fs::remove_file(rw.m("d/y")).unwrap();
        std::fs::remove_dir(rw.m("d")).unwrap();
        std::fs::create_dir(rw.m("d")).unwrap();
        assert!(std::fs::read_dir(rw.m("d")).unwrap().next().is_none(), "mkdir over a whiteout is opaque");
        run_ok(Command::new("rm").arg("-rf").arg(rw.m("tree")));
        std::fs::write(rw.m("d/.wh.x"), "a user's file").unwrap();
        assert_eq!(std::fs::read_to_string(rw.m("d/.wh.x")).unwrap(), "a user's file");
    }
    let kinds = upper_kinds(&rw.upper);
    assert!(kinds.contains(&("f".into(), libc::S_IFCHR, 0)));
    assert!(kinds.contains(&("tree".into(), libc::S_IFCHR, 0)), "rm -rf of a lower tree leaves one whiteout: {kinds:?}");
    assert!(!kinds.iter().any(|(p, _, _)| p.starts_with("tree/")), "no copies of deleted data: {kinds:?}");
    assert_eq!(xattrs(&rw.upper.join("d")).get(b"trusted.overlay.opaque".as_slice()).map(|v| v.as_slice()), Some(b"y".as_slice()));
    let (_k, km) = rw.kernel_on_upper();
    assert!(!km.join("f").exists() && !km.join("tree").exists());
    assert_eq!(std::fs::read_to_string(km.join("d/.wh.x")).unwrap(), "a user's file");
}

#[test]
fn hard_links_stay_one_file_through_copy_up_and_remount() {
    let rw = Rw::new("hardlinks", LayerSpec::new().file("a/one", "shared").hardlink("a/one", "b/two").hardlink("a/one", "three"));
    let ino = {
        let _m = rw.mount();
        let ino = std::fs::metadata(rw.m("a/one")).unwrap().ino();
        std::fs::OpenOptions::new().append(true).open(rw.m("b/two")).unwrap().write_all(b"+").unwrap();
        for p in ["a/one", "b/two", "three"] {
            let m = std::fs::metadata(rw.m(p)).unwrap();
            assert_eq!((m.ino(), m.nlink()), (ino, 3), "{p}");
            assert_eq!(std::fs::read_to_string(rw.m(p)).unwrap(), "shared+", "{p}");
        }
        std::fs::hard_link(rw.m("three"), rw.m("four")).unwrap();
        assert_eq!(std::fs::metadata(rw.m("four")).unwrap().nlink(), 4);
        ino
    };
    {
        let _m = rw.mount();
        assert_eq!(std::fs::metadata(rw.m("three")).unwrap().ino(), ino, "st_ino stays across remount");
    }
    let (_k, km) = rw.kernel_on_upper();
    for p in ["a/one", "b/two", "three", "four"] {
        assert_eq!(std::fs::read_to_string(km.join(p)).unwrap(), "shared+", "kernel overlayfs sees {p}");
    }
}

#[test]
fn directory_renames_are_recorded_as_redirects() {
    let rw = Rw::new("dirrename", LayerSpec::new().file("src/sub/file", "content").file("src/top", "t"));
    {
        let _m = rw.mount();
        std::fs::rename(rw.m("src"), rw.m("dst")).unwrap();
        std::fs::rename(rw.m("dst/sub"), rw.m("moved")).unwrap();
        assert!(!rw.m("src").exists());
        assert_eq!(std::fs::read_to_string(rw.m("moved/file")).unwrap(), "content");
        assert_eq!(std::fs::read_to_string(rw.m("dst/top")).unwrap(), "t");
    }
    let _m = rw.mount();
    let ours = Tree::walk(&rw.mnt);
    let (_k, km) = rw.kernel_on_upper();
    crate::util::tree::assert_same_content(&Tree::walk(&km), &ours);
    assert!(ours.entries.contains_key(b"moved/file".as_slice()));
}

#[test]
fn umask_and_setgid_directories_are_honoured() {
    let rw = Rw::new("umask", LayerSpec::new().dir("shared").chmod("shared", 0o2775).chown("shared", 0, 50));
    let _m = rw.mount();
    let out = run_ok(Command::new("sh").arg("-c").arg(format!(
        "umask 027 && touch {0}/f && mkdir {0}/d && touch {0}/shared/g && stat -c '%a %g' {0}/f {0}/d {0}/shared/g",
        rw.mnt.display()
    )));
    assert_eq!(out, "640 0\n750 0\n640 50\n");
}

#[test]
fn copy_up_of_a_large_file_does_not_stall_other_files() {
    let rw = Rw::new("stall", LayerSpec::new().file("small", "small"));
    let big = rw.lower.join("big");
    let f = std::fs::File::create(&big).unwrap();
    // Real blocks (not a hole), so the copy has to move them.
    f.set_len(0).unwrap();
    let chunk = vec![0x5au8; 1 << 20];
    let mut w = std::io::BufWriter::new(f);
    for _ in 0..768 {
        w.write_all(&chunk).unwrap();
    }
    drop(w);
    let _m = rw.mount();
    let small = rw.m("small");
    let big_path = rw.m("big");
    let started = Instant::now();
    let copier = std::thread::spawn(move || {
        std::fs::OpenOptions::new().append(true).open(&big_path).unwrap().write_all(b"!").unwrap();
        started.elapsed()
    });
    std::thread::sleep(Duration::from_millis(20));
    let mut others = Vec::new();
    for i in 0..20 {
        let t = Instant::now();
        assert_eq!(std::fs::read_to_string(&small).unwrap(), "small");
        std::fs::write(rw.m(&format!("new{i}")), "n").unwrap();
        others.push(t.elapsed());
    }
    let others_done = started.elapsed();
    let copy_time = copier.join().unwrap();
    eprintln!("copy-up took {copy_time:?}; 20 reads and creates of other files were done after {others_done:?}");
    // Only meaningful when the copy took a while: then the other files were served meanwhile.
    if copy_time > Duration::from_millis(300) {
        assert!(others_done < copy_time, "other files waited for the copy-up: {others_done:?} vs {copy_time:?}");
    }
    assert_eq!(std::fs::metadata(rw.m("big")).unwrap().len(), (768 << 20) + 1);
}

/// A 1 GiB lower file of real blocks, so that copying it up takes a while.
fn write_gib(path: &Path) {
    let mut w = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let chunk = vec![0xa5u8; 1 << 20];
    for _ in 0..1024 {
        w.write_all(&chunk).unwrap();
    }
}

/// Wait (10 s at most) until a copy-up is under way: something appears in the work directory.
fn wait_for_copy_up(work: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_dir(work.join("shalefs")).map(|mut d| d.next().is_none()).unwrap_or(true) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn killed_during_copy_up_leaves_old_or_new_state_and_a_clean_work_dir() {
    let rw = Rw::new("crash", LayerSpec::new().file("keep", "k"));
    write_gib(&rw.lower.join("big"));
    let m = rw.mount();
    let pid = m.pid().expect("pid") as i32;
    let big_path = rw.m("big");
    // The copy-up starts with this open; the writer blocks until the daemon dies.
    let writer = std::thread::spawn(move || {
        let _ = std::fs::OpenOptions::new().append(true).custom_flags(0).open(&big_path).map(|mut f| f.write_all(b"!"));
    });
    wait_for_copy_up(&rw.work);
    // SAFETY: killing the daemon this test started, by its PID.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    drop(m);
    let _ = writer.join();
    let upper_big = rw.upper.join("big");
    if let Ok(meta) = std::fs::metadata(&upper_big) {
        assert!(meta.len() == 1 << 30 || meta.len() == (1 << 30) + 1, "torn copy visible: {} bytes", meta.len());
    }
    let _m = rw.mount();
    assert!(std::fs::read_dir(rw.work.join("shalefs")).unwrap().next().is_none(), "work dir cleaned at mount");
    let len = std::fs::metadata(rw.m("big")).unwrap().len();
    assert!(len == 1 << 30 || len == (1 << 30) + 1);
    assert_eq!(std::fs::read_to_string(rw.m("keep")).unwrap(), "k");
}

#[test]
fn busybox_in_a_chroot_changes_the_tree_as_under_kernel_overlayfs() {
    let busybox = ["/bin/busybox", "/usr/bin/busybox"].into_iter().find(|p| Path::new(p).exists()).expect("busybox-static");
    let mut spec = LayerSpec::new().file("etc/motd", "hello\n").file("etc/old.conf", "old\n").file("var/lib/data/1", "1").file("var/lib/data/2", "2");
    for applet in ["sh", "mv", "rm", "mkdir", "cp", "ln", "echo", "cat", "chmod", "sed", "tar", "touch"] {
        spec = spec.symlink(format!("bin/{applet}"), "busybox");
    }
    let rw = Rw::new("chroot-rw", spec);
    std::fs::copy(busybox, rw.lower.join("bin/busybox")).unwrap();
    let script = "set -e; echo appended >> /etc/motd; mv /etc/old.conf /etc/new.conf; rm -rf /var/lib/data; \
        mkdir -p /opt/app && cd /opt/app && echo one > a && ln a b && cp a c && chmod 700 c; \
        sed -i s/hello/bye/ /etc/motd; mv /opt/app /opt/renamed; tar -cf /opt/etc.tar /etc; cat /etc/motd";
    let out = {
        let _m = rw.mount();
        run_ok(Command::new("chroot").arg(&rw.mnt).args(["/bin/sh", "-c", script]))
    };
    assert_eq!(out, "bye\nappended\n");
    let _m = rw.mount();
    let ours = Tree::walk(&rw.mnt);
    let (_k, km) = rw.kernel_on_upper();
    crate::util::tree::assert_same_content(&Tree::walk(&km), &ours);
    assert!(ours.entries.contains_key(b"opt/renamed/b".as_slice()) && !ours.entries.contains_key(b"var/lib/data".as_slice()));
}

#[test]
fn killed_during_a_rename_leaves_exactly_one_name() {
    let rw = Rw::new("crash-rename", LayerSpec::new().file("keep", "k"));
    write_gib(&rw.lower.join("big"));
    let m = rw.mount();
    let pid = m.pid().expect("pid") as i32;
    let (from, to) = (rw.m("big"), rw.m("renamed"));
    // Renaming a lower file copies it up first; the daemon dies in the middle.
    let mover = std::thread::spawn(move || std::fs::rename(from, to));
    wait_for_copy_up(&rw.work);
    // SAFETY: killing the daemon this test started, by its PID.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    drop(m);
    let _ = mover.join();
    let _m = rw.mount();
    let (old, new) = (rw.m("big").exists(), rw.m("renamed").exists());
    assert!(old != new, "exactly one name after the crash: old {old}, new {new}");
    let len = std::fs::metadata(if old { rw.m("big") } else { rw.m("renamed") }).unwrap().len();
    assert_eq!(len, 1 << 30);
    assert!(std::fs::read_dir(rw.work.join("shalefs")).unwrap().next().is_none());
}

/// A file moved off its passthrough inode by a copy-up (src/fuse/nodeids.rs): its other
/// hard-linked name (whose dentry still names the old inode), a read-only re-open of the old
/// handle through /proc/self/fd (which no lookup can move: served by the daemon, reading the
/// copy), and a writable one there (refused: its mmap would map the lower file).
#[test]
fn names_and_reopens_of_a_file_moved_off_its_passthrough_inode_see_the_copy() {
    use std::os::fd::AsRawFd;
    let rw = Rw::new("splitnames", LayerSpec::new().file("a", "lower").hardlink("a", "b"));
    let _m = rw.mount();
    let reader = std::fs::File::open(rw.m("a")).unwrap();
    assert_eq!(std::fs::read(rw.m("b")).unwrap(), b"lower");
    std::fs::write(rw.m("a"), "upper").unwrap();
    assert_eq!(std::fs::read(rw.m("a")).unwrap(), b"upper");
    assert_eq!(std::fs::read(rw.m("b")).unwrap(), b"upper", "the other name");
    let again = PathBuf::from(format!("/proc/self/fd/{}", reader.as_raw_fd()));
    assert_eq!(std::fs::read(&again).unwrap(), b"upper", "a re-open of the old handle");
    let err = std::fs::OpenOptions::new().write(true).open(&again).expect_err("a writable re-open on the old inode");
    assert_eq!(err.raw_os_error(), Some(libc::ETXTBSY), "{err}");
    let mut old = String::new();
    (&reader).read_to_string(&mut old).unwrap();
    assert_eq!(old, "lower", "the old handle keeps the lower copy (deliberate difference 4)");
    let inos: Vec<u64> = [rw.m("a"), rw.m("b")].iter().map(|p| std::fs::metadata(p).unwrap().ino()).collect();
    assert_eq!(inos, [reader.metadata().unwrap().ino(); 2], "one st_ino");
    drop(reader);
    assert_eq!(std::fs::read(rw.lower.join("a")).unwrap(), b"lower");
    std::fs::write(rw.m("b"), "again").unwrap();
    assert_eq!(std::fs::read(rw.m("a")).unwrap(), b"again", "written through the other name");
}

/// With a read-only handle of a lower file open, open it for writing (a copy-up) and write
/// through a shared mapping of the new handle: what the old handle, the lower layer's file and
/// the merged file then hold.
fn mmap_write_beside_an_older_reader(m: &Path, lower_file: &Path) -> Vec<String> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileExt;
    let path = m.join("mapped");
    let ro = std::fs::File::open(&path).unwrap();
    let mut buf = [0u8; 6];
    ro.read_at(&mut buf, 0).unwrap();
    let rw = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
    // SAFETY: a fresh shared mapping of 4096 bytes of an open file, unmapped before use ends.
    let mapped = unsafe {
        let p = libc::mmap(std::ptr::null_mut(), 4096, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, rw.as_raw_fd(), 0);
        if p != libc::MAP_FAILED {
            std::ptr::copy_nonoverlapping(b"MAP".as_ptr(), p.cast::<u8>(), 3);
            libc::msync(p, 4096, libc::MS_SYNC);
            libc::munmap(p, 4096);
        }
        p != libc::MAP_FAILED
    };
    let n = ro.read_at(&mut buf, 0).unwrap();
    let old = String::from_utf8_lossy(&buf[..n]).into_owned();
    drop((ro, rw));
    let lower = std::fs::read(lower_file).unwrap();
    vec![format!("mapped {mapped}"), old, String::from_utf8_lossy(&lower[..6]).into_owned(), String::from_utf8_lossy(&std::fs::read(&path).unwrap()[..6]).into_owned()]
}

/// Pins why a writer that copies up a file whose readers pass through to its lower copy gets a
/// kernel inode of its own (src/fuse/nodeids.rs): the only open the kernel accepts for it on the
/// old inode maps the lower file, so this mapping wrote the image layer when it was tried.
#[test]
fn mmap_write_after_copy_up_beside_a_reader_leaves_the_lower_layer_alone() {
    let content = format!("lower!{}", "\n".repeat(8000));
    let rw = Rw::new("mmapreader", LayerSpec::new().file("mapped", &content));
    let ours = {
        let _m = rw.mount();
        mmap_write_beside_an_older_reader(&rw.mnt, &rw.lower.join("mapped"))
    };
    // The old handle passes through to the lower copy (deliberate difference 4).
    assert_eq!(ours, ["mapped true", "lower!", "lower!", "MAPer!"]);
    let rw = Rw::new("mmapreader-daemon", LayerSpec::new().file("mapped", &content));
    let ours = {
        let _m = rw.mount_without_passthrough();
        mmap_write_beside_an_older_reader(&rw.mnt, &rw.lower.join("mapped"))
    };
    let kdir = TestDir::new("mmapreader-kernel");
    let kl = kdir.path().join("lower");
    LayerSpec::new().file("mapped", &content).build(&kl, Encoding::Overlay);
    let (ku, kw, km) = (kdir.mkdir("upper"), kdir.mkdir("work"), kdir.mkdir("mnt"));
    let _k = KernelOverlay::mount(&format!("lowerdir={},upperdir={},workdir={}", kl.display(), ku.display(), kw.display()), &km);
    let theirs = mmap_write_beside_an_older_reader(&km, &kl.join("mapped"));
    assert_eq!(theirs, ["mapped true", "MAPer!", "lower!", "MAPer!"]);
    assert_eq!(ours, theirs);
}

/// Writes, appends, a shared writable mmap and a truncate on files shalefs serves by FUSE
/// passthrough (a new file, a copied-up lower file): sizes, contents and attributes seen by
/// other handles and by stat must be what kernel overlayfs shows.
fn passthrough_sequence(m: &Path) -> Vec<String> {
    use std::os::unix::fs::FileExt;
    let mut seen = Vec::new();
    let f = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(m.join("new")).unwrap();
    f.write_all_at(&vec![b'x'; 1_000_000], 0).unwrap();
    seen.push(format!("after write: stat {} fstat {}", std::fs::metadata(m.join("new")).unwrap().len(), f.metadata().unwrap().len()));
    std::fs::OpenOptions::new().append(true).open(m.join("new")).unwrap().write_all(b"tail").unwrap();
    seen.push(format!("after append: stat {} fstat {}", std::fs::metadata(m.join("new")).unwrap().len(), f.metadata().unwrap().len()));
    // SAFETY: a fresh shared mapping of 4096 bytes of an open file, unmapped before use ends.
    unsafe {
        use std::os::fd::AsRawFd;
        let p = libc::mmap(std::ptr::null_mut(), 4096, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, f.as_raw_fd(), 0);
        assert_ne!(p, libc::MAP_FAILED);
        std::ptr::copy_nonoverlapping(b"MMAPD".as_ptr(), p.cast::<u8>(), 5);
        libc::msync(p, 4096, libc::MS_SYNC);
        libc::munmap(p, 4096);
    }
    let mut head = [0u8; 5];
    std::fs::File::open(m.join("new")).unwrap().read_exact(&mut head).unwrap();
    seen.push(format!("after mmap: {}", String::from_utf8_lossy(&head)));
    std::fs::OpenOptions::new().write(true).open(m.join("new")).unwrap().set_len(10).unwrap();
    let mut buf = [0u8; 20];
    let n = f.read_at(&mut buf, 0).unwrap();
    seen.push(format!("after truncate: stat {} read {}", std::fs::metadata(m.join("new")).unwrap().len(), String::from_utf8_lossy(&buf[..n])));
    drop(f);
    std::fs::OpenOptions::new().append(true).open(m.join("lower")).unwrap().write_all(b"more\n").unwrap();
    seen.push(format!("copied up: stat {} content {:?}", std::fs::metadata(m.join("lower")).unwrap().len(), std::fs::read_to_string(m.join("lower")).unwrap()));
    seen
}

#[test]
fn passthrough_io_matches_kernel_overlayfs() {
    let rw = Rw::new("passthrough", LayerSpec::new().file("lower", "lower\n"));
    let ours = {
        let _m = rw.mount();
        passthrough_sequence(&rw.mnt)
    };
    let kdir = TestDir::new("passthrough-kernel");
    let kl = kdir.path().join("lower");
    LayerSpec::new().file("lower", "lower\n").build(&kl, Encoding::Overlay);
    let (ku, kw, km) = (kdir.mkdir("upper"), kdir.mkdir("work"), kdir.mkdir("mnt"));
    let _k = KernelOverlay::mount(&format!("lowerdir={},upperdir={},workdir={}", kl.display(), ku.display(), kw.display()), &km);
    assert_eq!(ours, passthrough_sequence(&km));
}

/// POSIX ACLs of a lower file grant access as on kernel overlayfs, and ACLs set through the
/// mount land on the upper copy.
fn acl_sequence(m: &Path) -> Vec<String> {
    let cat = run_as_nobody(&format!("cat {}", m.join("f").display()));
    run_ok(Command::new("setfacl").args(["-m", "u:nobody:rw"]).arg(m.join("g")));
    let write = run_as_nobody(&format!("echo hi >> {}", m.join("g").display()));
    let acl = run_ok(Command::new("getfacl").args(["-p", "--omit-header"]).arg(m.join("g")));
    vec![cat, write, acl]
}

fn run_as_nobody(script: &str) -> String {
    let out = crate::util::run(Command::new("runuser").args(["-u", "nobody", "--", "/bin/sh", "-c", script]));
    format!("{} {}", out.status.success(), String::from_utf8_lossy(&out.stdout).trim())
}

#[test]
fn posix_acls_are_honoured_as_on_kernel_overlayfs() {
    let build = |dir: &TestDir| {
        let l = dir.path().join("lower");
        LayerSpec::new().file("f", "secret").file("g", "data\n").build(&l, Encoding::Overlay);
        std::fs::set_permissions(l.join("f"), std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::set_permissions(l.join("g"), std::fs::Permissions::from_mode(0o600)).unwrap();
        run_ok(Command::new("setfacl").args(["-m", "u:nobody:r"]).arg(l.join("f")));
        for d in [dir.path(), l.as_path()] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        l
    };
    let sdir = TestDir::new("acl");
    let sl = build(&sdir);
    let (su, sw, sm) = (sdir.mkdir("upper"), sdir.mkdir("work"), sdir.mkdir("mnt"));
    let args: Vec<OsString> =
        vec!["-o".into(), format!("lowerdir={},upperdir={},workdir={}", sl.display(), su.display(), sw.display()).into()];
    let ours = {
        let _m = ShaleMount::foreground(&args, &sm).unwrap_or_else(|e| panic!("{e}"));
        std::fs::set_permissions(&sm, std::fs::Permissions::from_mode(0o755)).unwrap();
        acl_sequence(&sm)
    };
    let kdir = TestDir::new("acl-kernel");
    let kl = build(&kdir);
    let (ku, kw, km) = (kdir.mkdir("upper"), kdir.mkdir("work"), kdir.mkdir("mnt"));
    let _k = KernelOverlay::mount(&format!("lowerdir={},upperdir={},workdir={}", kl.display(), ku.display(), kw.display()), &km);
    std::fs::set_permissions(&km, std::fs::Permissions::from_mode(0o755)).unwrap();
    let theirs = acl_sequence(&km);
    assert_eq!(ours[0], "true secret", "the lower file's ACL did not grant nobody read access");
    assert_eq!(ours, theirs);
}

/// Reading a large merged directory takes several requests; offsets must stay valid across them
/// (telldir/seekdir), and a reader that removes what it reads (rm -r) must see every name once.
#[test]
fn large_directories_read_consistently_while_changing() {
    let mut spec = LayerSpec::new();
    for i in 0..1500 {
        spec = spec.file(format!("big/lower-{i:04}-{}", "x".repeat(40)), "");
    }
    let rw = Rw::new("bigdir-read", spec);
    let _m = rw.mount();
    for i in 0..1500 {
        std::fs::write(rw.m(&format!("big/upper-{i:04}-{}", "y".repeat(40))), "").unwrap();
    }
    let dir = rw.m("big");
    let seek = r#"
        opendir(my $d, $ARGV[0]) or die "$!";
        my @first = map { scalar readdir($d) } 1..1000;
        my $pos = telldir($d);
        my @rest = readdir($d);
        seekdir($d, $pos);
        my @again = readdir($d);
        my %seen; $seen{$_}++ for (@first, @rest);
        print scalar(keys %seen), " ", scalar(@first) + scalar(@rest), " ", (join(",", @rest) eq join(",", @again) ? "same" : "differ"), "\n";
    "#;
    let out = run_ok(Command::new("perl").arg("-e").arg(seek).arg(&dir));
    assert_eq!(out.trim(), "3002 3002 same", "names (with . and ..), entries read, re-read after seekdir");
    let remove = r#"
        my $dir = $ARGV[0]; opendir(my $d, $dir) or die "$!"; my $n = 0;
        while (defined(my $e = readdir($d))) { next if $e eq "." || $e eq ".."; unlink("$dir/$e") or die "$e: $!"; $n++ }
        print "$n\n";
    "#;
    // A change makes the kernel drop its cached listing at the next read from the start, so
    // this reader is served by shalefs, request by request, while it removes what it read.
    std::fs::write(dir.join("one-more"), "").unwrap();
    let out = run_ok(Command::new("perl").arg("-e").arg(remove).arg(&dir));
    assert_eq!(out.trim(), "3001");
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
}

/// Root of a user namespace has no privilege for `trusted.*` xattrs: the upper is written with
/// `user.overlay.*`, as overlayfs' `userxattr` does — which implies redirect_dir=nofollow, so a
/// directory with lower parts cannot be renamed (EXDEV; mv copies it) — and kernel overlayfs
/// mounted with `userxattr` sees the same tree; so does shalefs as real root with `-o userxattr`.
#[test]
fn in_a_user_namespace_the_upper_is_written_as_overlayfs_userxattr() {
    let rw = Rw::new("userns", LayerSpec::new().file("f", "lower").file("d/g", "x").file("keep", "k").file("e/inner", "i"));
    let opts = format!("lowerdir={},upperdir={},workdir={}", rw.lower.display(), rw.upper.display(), rw.work.display());
    let m = rw.mnt.display();
    // The daemon dies with the shell (pdeathsig), and the mount with the namespace: nothing is
    // left behind on any path.
    let script = format!(
        r#"set -e
        trap 'umount {m} 2>/dev/null || true' EXIT
        setpriv --pdeathsig KILL {bin} mount -f --log-level warn -o {opts} {m} 2>{log} &
        for i in $(seq 200); do grep -q " {m} " /proc/self/mounts && break; sleep 0.05; done
        rm {m}/f; rm -r {m}/d; mkdir {m}/d; echo new > {m}/d/h; mv {m}/keep {m}/kept
        perl -e 'rename($ARGV[0], $ARGV[1]) or print "rename errno ", $!+0, "\n"' {m}/e {m}/moved
        mv {m}/e {m}/moved
        ls {m}"#,
        bin = crate::util::shalefs_bin(),
        log = rw.dir.path().join("userns.log").display(),
    );
    let listed = run_ok(Command::new("unshare").args(["--user", "--map-root-user", "--mount", "--kill-child", "sh", "-c", &script]));
    let log = std::fs::read_to_string(rw.dir.path().join("userns.log")).unwrap_or_default();
    assert!(log.contains("user.overlay"), "the daemon did not say it fell back: {log}");
    assert_eq!(listed.split_whitespace().collect::<Vec<_>>(), ["rename", "errno", "18", "d", "kept", "moved"], "EXDEV, then the listing");
    let names = |p: &Path| xattrs(p).into_keys().map(|k| String::from_utf8_lossy(&k).into_owned()).collect::<Vec<_>>();
    assert!(names(&rw.upper.join("d")).contains(&"user.overlay.opaque".to_string()), "{:?}", names(&rw.upper.join("d")));
    let all: Vec<String> = walkdir(&rw.upper).iter().flat_map(|p| names(p)).collect();
    assert!(!all.iter().any(|n| n.starts_with("trusted.") || n.ends_with(".redirect")), "{all:?}");
    let expect = |m: &Path| {
        assert!(!m.join("f").exists() && !m.join("keep").exists() && !m.join("e").exists());
        assert_eq!(std::fs::read_dir(m.join("d")).unwrap().count(), 1, "d is opaque");
        assert_eq!(std::fs::read_to_string(m.join("d/h")).unwrap(), "new\n");
        assert_eq!(std::fs::read_to_string(m.join("kept")).unwrap(), "k");
        assert_eq!(std::fs::read_to_string(m.join("moved/inner")).unwrap(), "i");
    };
    {
        let (kw, km) = (rw.dir.mkdir("kwork"), rw.dir.mkdir("kmnt"));
        let kopts = format!("lowerdir={},upperdir={},workdir={},userxattr", rw.lower.display(), rw.upper.display(), kw.display());
        let _k = KernelOverlay::mount(&kopts, &km);
        expect(&km);
    }
    let mut args = rw.args();
    args.push("-o".into());
    args.push("userxattr".into());
    let _ours = ShaleMount::foreground(&args, &rw.mnt).unwrap_or_else(|e| panic!("{e}"));
    expect(&rw.mnt);
}

/// One step of a hard-link sequence, applied to a mount; what it saw, as text.
fn link_step(m: &Path, step: &str) -> String {
    let words: Vec<&str> = step.split(' ').collect();
    let r = |r: std::io::Result<()>| r.map_or_else(|e| format!("{step}: {e}"), |()| format!("{step}: ok"));
    match words.as_slice() {
        ["stat", p] => std::fs::symlink_metadata(m.join(p)).map_or_else(|e| format!("{step}: {e}"), |s| format!("{step}: nlink {}", s.nlink())),
        ["rm", p] => r(std::fs::remove_file(m.join(p))),
        ["mv", a, b] => r(std::fs::rename(m.join(a), m.join(b))),
        ["mkdir", p] => r(std::fs::create_dir(m.join(p))),
        ["append", p] => r(std::fs::OpenOptions::new().append(true).open(m.join(p)).and_then(|mut f| f.write_all(b"tail\n"))),
        ["truncate", p] => r(std::fs::OpenOptions::new().write(true).open(m.join(p)).and_then(|f| f.set_len(2))),
        ["chmod", p] => r(std::fs::set_permissions(m.join(p), std::fs::Permissions::from_mode(0o600))),
        ["read", p] => std::fs::read_to_string(m.join(p)).map_or_else(|e| format!("{step}: {e}"), |s| format!("{step}: {s:?}")),
        _ => panic!("unknown step {step}"),
    }
}

/// The same steps on shalefs and on kernel overlayfs (index=on, redirect_dir=on) over the same
/// lower: each step's result, then — after a remount of both — `check`'s contents and link
/// counts, must agree.
fn hard_link_sequence_matches_kernel(name: &str, lower: LayerSpec, steps: &[&str], check: &[&str]) {
    let rw = Rw::new(name, lower);
    let (ku, kw, km) = (rw.dir.mkdir("k-upper"), rw.dir.mkdir("k-work"), rw.dir.mkdir("k-mnt"));
    let kopts = format!("lowerdir={},upperdir={},workdir={},index=on,redirect_dir=on", rw.lower.display(), ku.display(), kw.display());
    let after = |m: &Path| check.iter().flat_map(|p| [link_step(m, &format!("read {p}")), link_step(m, &format!("stat {p}"))]).collect::<Vec<_>>();
    let (ours, theirs) = {
        let _s = rw.mount();
        let _k = KernelOverlay::mount(&kopts, &km);
        let ours: Vec<String> = steps.iter().map(|s| link_step(&rw.mnt, s)).collect();
        let theirs: Vec<String> = steps.iter().map(|s| link_step(&km, s)).collect();
        (ours, theirs)
    };
    assert_eq!(ours, theirs, "{name}: shalefs vs kernel overlayfs");
    let _s = rw.mount();
    let _k = KernelOverlay::mount(&kopts, &km);
    assert_eq!(after(&rw.mnt), after(&km), "{name}, after a remount: shalefs vs kernel overlayfs");
}

fn linked_pair() -> LayerSpec {
    LayerSpec::new().file("d/a", "data\n").hardlink("d/a", "d/b").file("d/other", "o\n")
}

/// The node knew the file by the name removed (d/b); its other name moved with its directory.
/// The copy-up looked for d/a, never for e/a: ENOENT.
#[test]
fn write_to_hard_linked_lower_file_after_its_directory_moved() {
    hard_link_sequence_matches_kernel(
        "hl-moved-dir",
        linked_pair(),
        &["stat d/a", "stat d/b", "rm d/b", "mv d e", "stat e/a", "append e/a", "read e/a", "stat e/a"],
        &["e/a"],
    );
}

#[test]
fn write_to_hard_linked_lower_file_moved_before_the_unlink() {
    hard_link_sequence_matches_kernel(
        "hl-move-then-rm",
        linked_pair(),
        &["stat d/b", "mv d e", "stat e/a", "rm e/b", "stat e/a", "truncate e/a", "read e/a"],
        &["e/a"],
    );
}

/// A grandparent moved, then the parent moved out of it, then moved again.
#[test]
fn write_to_hard_linked_lower_file_after_deeper_and_repeated_moves() {
    let lower = LayerSpec::new().file("g/d/a", "deep\n").hardlink("g/d/a", "g/d/b").hardlink("g/d/a", "top");
    hard_link_sequence_matches_kernel(
        "hl-deep-moves",
        lower,
        &["stat g/d/b", "rm g/d/b", "mv g h", "stat h/d/a", "rm top", "mv h/d x", "mkdir y", "mv x y/z", "stat y/z/a", "chmod y/z/a", "append y/z/a", "read y/z/a"],
        &["y/z/a"],
    );
}

/// st_nlink before copy-up: a lower file's names less those removed or renamed over.
#[test]
fn nlink_of_hard_linked_lower_file_counts_removed_names_out() {
    let lower = LayerSpec::new().file("d/a", "x\n").hardlink("d/a", "d/b").hardlink("d/a", "c").file("over", "o\n");
    hard_link_sequence_matches_kernel(
        "hl-nlink",
        lower,
        &["stat d/a", "rm d/b", "stat c", "mv over c", "stat d/a", "mv d e", "stat e/a", "read e/a"],
        &["e/a", "c"],
    );
}
