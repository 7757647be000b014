//! `metacopy=on`: a metadata change copies up metadata only, the data follows on the first
//! write. Compared against kernel overlayfs with `metacopy=on`, and each mounts the other's upper.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::util::tree::xattrs;
use crate::util::{Encoding, KernelOverlay, LayerSpec, ShaleMount, TestDir};

const BIG: usize = 8 << 20;

fn big_content() -> Vec<u8> {
    (0..BIG).map(|i| (i % 251) as u8).collect()
}

fn lower_spec() -> LayerSpec {
    LayerSpec::new().file("big", big_content()).file("small", "small data\n").dir("sub").file("kept", "kept\n")
}

/// One lower, an upper and a work dir for one filesystem under test.
struct Dirs {
    dir: TestDir,
    lower: PathBuf,
    upper: PathBuf,
    work: PathBuf,
    mnt: PathBuf,
}

impl Dirs {
    fn new(name: &str) -> Dirs {
        let dir = TestDir::new(name);
        let lower = dir.path().join("lower");
        lower_spec().build(&lower, Encoding::Overlay);
        let (upper, work, mnt) = (dir.mkdir("upper"), dir.mkdir("work"), dir.mkdir("mnt"));
        Dirs { dir, lower, upper, work, mnt }
    }

    fn options(&self, work: &Path) -> String {
        format!("lowerdir={},upperdir={},workdir={},metacopy=on", self.lower.display(), self.upper.display(), work.display())
    }

    fn shalefs(&self, extra: &[&str]) -> ShaleMount {
        let mut args: Vec<OsString> = vec!["-o".into(), self.options(&self.work).into()];
        args.extend(extra.iter().map(OsString::from));
        ShaleMount::foreground(&args, &self.mnt).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Kernel overlayfs with metacopy (which needs redirect_dir) on this upper, with a work
    /// dir of its own.
    fn kernel(&self) -> (KernelOverlay, PathBuf) {
        let (kw, km) = (self.dir.mkdir("kwork"), self.dir.mkdir("kmnt"));
        let opts = format!("{},redirect_dir=on,index=on", self.options(&kw));
        (KernelOverlay::mount(&opts, &km), km)
    }

    /// The overlay's marks on an upper file that say where its data is.
    fn marks(&self, rel: &str) -> Vec<String> {
        xattrs(&self.upper.join(rel))
            .into_iter()
            .filter(|(k, _)| k == b"trusted.overlay.metacopy" || k == b"trusted.overlay.redirect")
            .map(|(k, v)| format!("{}={}", String::from_utf8_lossy(&k), String::from_utf8_lossy(&v)))
            .collect()
    }
}

fn describe(m: &Path, rel: &str) -> String {
    let meta = std::fs::metadata(m.join(rel)).unwrap();
    let data = std::fs::read(m.join(rel)).unwrap();
    let sum: u64 = data.iter().map(|&b| b as u64).sum();
    format!("{rel}: mode {:o} owner {}:{} size {} blocks>0 {} sum {sum}", meta.mode(), meta.uid(), meta.gid(), meta.len(), meta.blocks() > 0)
}

/// Metadata changes, a rename, then the first write, with a reader open from the start.
fn sequence(d: &Dirs, m: &Path) -> Vec<String> {
    let mut seen = Vec::new();
    let reader = std::fs::File::open(m.join("big")).unwrap();
    std::fs::set_permissions(m.join("big"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::chown(m.join("big"), Some(1), Some(2)).unwrap();
    seen.push(describe(m, "big"));
    // An xattr block may count (ext4 puts the overlay's xattrs there); 8 MiB of data would not fit.
    let copied = std::fs::metadata(d.upper.join("big")).unwrap().blocks() * 512 >= BIG as u64 / 2;
    seen.push(format!("upper big: data copied {copied} marks {:?}", d.marks("big")));
    std::fs::set_permissions(m.join("small"), std::fs::Permissions::from_mode(0o640)).unwrap();
    std::fs::rename(m.join("small"), m.join("sub/moved")).unwrap();
    seen.push(describe(m, "sub/moved"));
    seen.push(format!("upper moved: marks {:?}", d.marks("sub/moved")));
    let mut head = [0u8; 4];
    reader.read_exact_at(&mut head, 1000).unwrap();
    seen.push(format!("reader before write: {head:?}"));
    std::fs::OpenOptions::new().append(true).open(m.join("big")).unwrap().write_all(b"tail").unwrap();
    seen.push(describe(m, "big"));
    seen.push(format!("upper big after write: marks {:?}", d.marks("big")));
    let mut tail = Vec::new();
    let mut r = &reader;
    std::io::Seek::seek(&mut r, std::io::SeekFrom::Start(BIG as u64)).unwrap();
    r.read_to_end(&mut tail).unwrap();
    seen.push(format!("reader after write: {:?}", String::from_utf8_lossy(&tail)));
    seen
}

#[test]
fn metacopy_matches_kernel_overlayfs_with_metacopy() {
    let theirs = Dirs::new("metacopy-kernel");
    let seen_kernel = {
        let (_k, km) = theirs.kernel();
        sequence(&theirs, &km)
    };
    // Served by the daemon, the reader open from the start reads the copy, as on the kernel.
    let ours = Dirs::new("metacopy-ours-daemon");
    let seen_daemon = {
        let _m = ours.shalefs(&["--no-passthrough"]);
        sequence(&ours, &ours.mnt)
    };
    assert_eq!(seen_daemon, seen_kernel);
    assert!(seen_daemon[1].starts_with("upper big: data copied false "), "{}", seen_daemon[1]);
    // Passed through, it keeps the lower copy (README, deliberate difference 4); all else alike.
    let ours = Dirs::new("metacopy-ours");
    let mut seen_ours = {
        let _m = ours.shalefs(&[]);
        sequence(&ours, &ours.mnt)
    };
    assert_eq!(seen_ours.pop().as_deref(), Some("reader after write: \"\""));
    assert_eq!(seen_ours, seen_kernel[..seen_kernel.len() - 1]);
}

#[test]
fn kernel_overlayfs_and_shalefs_mount_each_others_metacopy_uppers() {
    // shalefs writes, kernel overlayfs reads.
    let ours = Dirs::new("metacopy-to-kernel");
    {
        let _m = ours.shalefs(&[]);
        std::fs::set_permissions(ours.mnt.join("big"), std::fs::Permissions::from_mode(0o604)).unwrap();
        std::fs::set_permissions(ours.mnt.join("small"), std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::rename(ours.mnt.join("small"), ours.mnt.join("sub/renamed")).unwrap();
    }
    assert_eq!(std::fs::metadata(ours.upper.join("big")).unwrap().blocks(), 0);
    {
        let (_k, km) = ours.kernel();
        assert_eq!(std::fs::read(km.join("big")).unwrap(), big_content());
        assert_eq!(std::fs::metadata(km.join("big")).unwrap().mode() & 0o7777, 0o604);
        assert_eq!(std::fs::read_to_string(km.join("sub/renamed")).unwrap(), "small data\n");
        assert!(!km.join("small").exists());
    }
    // Kernel overlayfs writes, shalefs reads and then completes the copy-up.
    let theirs = Dirs::new("metacopy-from-kernel");
    {
        let (_k, km) = theirs.kernel();
        std::fs::set_permissions(km.join("big"), std::fs::Permissions::from_mode(0o604)).unwrap();
        std::fs::rename(km.join("small"), km.join("sub/renamed")).unwrap();
    }
    assert!(!theirs.marks("big").is_empty(), "kernel overlayfs made a metacopy");
    let _m = theirs.shalefs(&[]);
    assert_eq!(std::fs::read(theirs.mnt.join("big")).unwrap(), big_content());
    assert_eq!(std::fs::metadata(theirs.mnt.join("big")).unwrap().mode() & 0o7777, 0o604);
    assert_eq!(std::fs::read_to_string(theirs.mnt.join("sub/renamed")).unwrap(), "small data\n");
    std::fs::OpenOptions::new().append(true).open(theirs.mnt.join("sub/renamed")).unwrap().write_all(b"more\n").unwrap();
    assert_eq!(std::fs::read_to_string(theirs.mnt.join("sub/renamed")).unwrap(), "small data\nmore\n");
    assert_eq!(std::fs::read_to_string(theirs.upper.join("sub/renamed")).unwrap(), "small data\nmore\n");
    assert!(theirs.marks("sub/renamed").is_empty(), "{:?}", theirs.marks("sub/renamed"));
}

/// Who writes an upper: shalefs or kernel overlayfs, both with `metacopy=on`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Writer {
    Shalefs,
    Kernel,
}

/// Mount `lowers` (top first) with `upper` by `who`, metacopy=on; the guard unmounts.
fn mount_stack(who: Writer, dir: &TestDir, tag: &str, lowers: &[&Path], upper: &Path) -> (Box<dyn std::any::Any>, PathBuf) {
    let work = dir.mkdir(&format!("{tag}-work"));
    let mnt = dir.mkdir(&format!("{tag}-mnt"));
    let lowerdir = lowers.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(":");
    let opts = format!("lowerdir={lowerdir},upperdir={},workdir={},metacopy=on", upper.display(), work.display());
    let guard: Box<dyn std::any::Any> = match who {
        Writer::Shalefs => Box::new(ShaleMount::foreground(&["-o".into(), opts.into()], &mnt).unwrap_or_else(|e| panic!("{e}"))),
        Writer::Kernel => Box::new(KernelOverlay::mount(&format!("{opts},index=on,redirect_dir=on"), &mnt)),
    };
    (guard, mnt)
}

/// An upper file's metacopy mark and redirect, the redirect made absolute (kernel overlayfs
/// writes a rename within one directory as a relative name; both forms mean the same).
fn placeholder_marks(upper: &Path, rel: &str) -> String {
    let x = xattrs(&upper.join(rel));
    let metacopy = x.contains_key(b"trusted.overlay.metacopy".as_slice());
    let redirect = x.get(b"trusted.overlay.redirect".as_slice()).map(|v| {
        let v = String::from_utf8_lossy(v).into_owned();
        if v.starts_with('/') { v } else { format!("/{}", Path::new(rel).with_file_name(v).display()) }
    });
    format!("{rel}: metacopy {metacopy} redirect {redirect:?}")
}

fn read_or_errno(p: &Path) -> String {
    std::fs::read(p).map_or_else(|e| format!("{e}"), |d| format!("{:?}", String::from_utf8_lossy(&d)))
}

/// The middle layer: a metacopy=on upper over the base in which `f` was chmodded and moved to
/// `sub/f1` (a metacopy placeholder with a redirect, and a whiteout at `f`), `k` likewise to
/// `sub/k1`, and `g` chmodded (a placeholder in place).
fn middle_layer(who: Writer, dir: &TestDir, base: &Path) -> PathBuf {
    let upper = dir.mkdir(&format!("middle-{who:?}"));
    let (_m, m) = mount_stack(who, dir, &format!("make-middle-{who:?}"), &[base], &upper);
    std::fs::set_permissions(m.join("f"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::rename(m.join("f"), m.join("sub/f1")).unwrap();
    std::fs::set_permissions(m.join("g"), std::fs::Permissions::from_mode(0o640)).unwrap();
    std::fs::set_permissions(m.join("k"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::rename(m.join("k"), m.join("sub/k1")).unwrap();
    upper
}

/// On a stack whose middle layer holds metacopy placeholders: link (which lost the data:
/// twelve NULs), rename (which wrote a redirect to the data's path, whited out in the middle
/// layer: EIO), a write and a truncation, each compared with kernel overlayfs, with the marks
/// each leaves in the upper; then both read the result after a remount, and with the upper
/// as a third layer.
fn metacopy_lower_sequence(middle_by: Writer) -> Vec<String> {
    let dir = TestDir::new(&format!("metacopy-lower-{middle_by:?}"));
    let base = dir.path().join("base");
    LayerSpec::new().file("f", ":xxx:yyy:zzz").file("g", "gee\n").file("t", "truncate me\n").file("k", "kay\n").dir("sub").build(&base, Encoding::Overlay);
    let middle = middle_layer(middle_by, &dir, &base);
    assert!(placeholder_marks(&middle, "sub/f1").contains("metacopy true"), "{middle_by:?} made a metacopy placeholder");
    let steps = |m: &Path| -> Vec<String> {
        let mut seen = vec![read_or_errno(&m.join("sub/f1")), read_or_errno(&m.join("g"))];
        seen.push(format!("link: {:?}", std::fs::hard_link(m.join("sub/f1"), m.join("h")).map_err(|e| e.to_string())));
        seen.push(read_or_errno(&m.join("h")));
        seen.push(format!("rename: {:?}", std::fs::rename(m.join("g"), m.join("sub/g2")).map_err(|e| e.to_string())));
        seen.push(read_or_errno(&m.join("sub/g2")));
        seen.push(format!("rename: {:?}", std::fs::rename(m.join("sub/k1"), m.join("k2")).map_err(|e| e.to_string())));
        seen.push(read_or_errno(&m.join("k2")));
        std::fs::set_permissions(m.join("t"), std::fs::Permissions::from_mode(0o600)).unwrap();
        seen.push(format!("truncate: {:?}", std::fs::OpenOptions::new().write(true).open(m.join("t")).and_then(|f| f.set_len(5)).map_err(|e| e.to_string())));
        seen.push(read_or_errno(&m.join("t")));
        seen
    };
    let marks = |upper: &Path| ["h", "sub/f1", "sub/g2", "k2", "t"].iter().map(|p| placeholder_marks(upper, p)).collect::<Vec<_>>();
    let mut results = Vec::new();
    for who in [Writer::Shalefs, Writer::Kernel] {
        let upper = dir.mkdir(&format!("top-{who:?}"));
        let seen = {
            let (_m, m) = mount_stack(who, &dir, &format!("top-{who:?}"), &[&middle, &base], &upper);
            steps(&m)
        };
        let again = {
            let (_m, m) = mount_stack(who, &dir, &format!("again-{who:?}"), &[&middle, &base], &upper);
            ["h", "sub/f1", "sub/g2", "k2", "t"].iter().map(|p| read_or_errno(&m.join(p))).collect::<Vec<_>>()
        };
        // The upper as a lower in turn: three layers, and a write through the link's name.
        let third = {
            let top = dir.mkdir(&format!("third-{who:?}"));
            let (_m, m) = mount_stack(who, &dir, &format!("third-{who:?}"), &[&upper, &middle, &base], &top);
            let mut r: Vec<String> = ["h", "sub/f1", "sub/g2", "k2"].iter().map(|p| read_or_errno(&m.join(p))).collect();
            r.push(format!("append: {:?}", std::fs::OpenOptions::new().append(true).open(m.join("h")).and_then(|mut f| f.write_all(b"!")).map_err(|e| e.to_string())));
            r.push(read_or_errno(&m.join("sub/f1")));
            r
        };
        results.push((seen, marks(&upper), again, third));
    }
    let (ours, kernel) = (&results[0], &results[1]);
    assert_eq!(ours.0, kernel.0, "middle layer by {middle_by:?}: the sequence, shalefs vs kernel overlayfs");
    assert_eq!(ours.1, kernel.1, "middle layer by {middle_by:?}: the marks in the upper, shalefs vs kernel overlayfs");
    assert_eq!(ours.2, kernel.2, "middle layer by {middle_by:?}: after a remount");
    assert_eq!(ours.3, kernel.3, "middle layer by {middle_by:?}: with the upper as a lower");
    ours.0.clone()
}

#[test]
fn link_and_rename_of_metacopy_files_in_lower_layers_match_kernel_overlayfs() {
    for middle_by in [Writer::Shalefs, Writer::Kernel] {
        let seen = metacopy_lower_sequence(middle_by);
        assert_eq!(seen[3], "\":xxx:yyy:zzz\"", "the link reads the data, not the placeholder");
    }
}
