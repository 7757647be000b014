//! The merged view against the oracle: kernel overlayfs mounted on the same layers, walked and
//! compared entry by entry (type, mode, owner, size, content, symlink target, user xattrs,
//! link groups, d_ino = st_ino).

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use crate::util::{Encoding, KernelOverlay, LayerSpec, ShaleMount, TestDir, Tree, assert_same_tree};

const BIG: usize = 10_000;

/// Three layers (top first) exercising every rule of the merged view.
fn rich_stack() -> Vec<LayerSpec> {
    let mut bottom = LayerSpec::new()
        .file("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n")
        .xattr("etc/passwd", "user.comment", "from the bottom")
        .file("etc/group", "root:x:0:\n")
        .file("etc/hostname", "bottom\n")
        .file("bin/tool", "#!/bin/sh\necho tool\n")
        .chmod("bin/tool", 0o755)
        .file("bin/su", "setuid\n")
        .chmod("bin/su", 0o4755)
        .file("secret", "only root\n")
        .chmod("secret", 0o600)
        .file("owned", "by 1000\n")
        .chown("owned", 1000, 1000)
        .file("usr/share/doc/pkg/README", "docs\n")
        .file("usr/share/doc/pkg2/changelog", "changes\n")
        .dir("usr/lib")
        .symlink("lib", "usr/lib")
        .symlink("abs", "/etc/passwd")
        .symlink("dangling", "does/not/exist")
        .file("data/h1", "linked data\n")
        .hardlink("data/h1", "data/h2")
        .hardlink("data/h1", "data/h3")
        .file("swap/inner", "under the file\n")
        .file("f2d", "a file below a dir\n")
        .file("opq/a", "hidden by opaque\n")
        .file("opq/b", "hidden by opaque\n")
        .file("solo/kept", "only layer\n")
        .whiteout("solo/ghost")
        .file("dir with space/file name.txt", "spaces\n")
        .file(b"bytes\xff\xfe".as_slice(), "non-utf8 name\n")
        .fifo("dev/fifo")
        .chardev("dev/null", 1, 3)
        .dir("esc-target-not-used");
    for i in 0..BIG / 2 {
        bottom = bottom.file(format!("big/f{i:05}"), "");
    }
    let mut middle = LayerSpec::new()
        .file("etc/hostname", "middle\n")
        .xattr("etc", "user.layer", "middle")
        .file("swap", "a file over a dir\n")
        .file("f2d/x", "a dir over a file\n")
        .opaque("opq")
        .file("opq/c", "above the opaque line\n")
        .whiteout("usr/share/doc")
        .symlink("esc", "/etc")
        .file("dir with space/second file", "more spaces\n");
    for i in BIG / 2..BIG {
        middle = middle.file(format!("big/f{i:05}"), "m");
    }
    for i in (0..BIG / 2).step_by(500) {
        middle = middle.whiteout(format!("big/f{i:05}"));
    }
    let top = LayerSpec::new()
        .whiteout("etc/group")
        .file("etc/motd", "welcome\n")
        .file("swap/new", "a dir over the file\n")
        .whiteout("data/h3")
        .file("esc/inside", "a dir above a symlink to outside\n")
        .file(b"top \xc3\xa9 \xff".as_slice(), "latin and bytes\n");
    vec![top, middle, bottom]
}

fn build(dir: &TestDir, prefix: &str, specs: &[LayerSpec], enc: Encoding) -> Vec<PathBuf> {
    specs
        .iter()
        .enumerate()
        .map(|(i, spec)| {
            let p = dir.path().join(format!("{prefix}{i}"));
            spec.build(&p, enc);
            // Layers built at different moments (or in two encodings) must still agree on
            // times, so that mtimes can be compared between the two mounts.
            crate::util::run_ok(
                std::process::Command::new("find").arg(&p).args(["-exec", "touch", "-h", "-d", "@1600000000", "{}", "+"]),
            );
            p
        })
        .collect()
}

fn refs(v: &[PathBuf]) -> Vec<&std::path::Path> {
    v.iter().map(|p| p.as_path()).collect()
}

/// Mount shalefs over `ours` (encoded as `enc`) and the kernel over the overlay-encoded layers,
/// and compare.
fn compare_with_kernel(name: &str, specs: &[LayerSpec], enc: Encoding) {
    let dir = TestDir::new(name);
    let kernel_layers = build(&dir, "k", specs, Encoding::Overlay);
    let our_layers = if enc == Encoding::Overlay { kernel_layers.clone() } else { build(&dir, "s", specs, enc) };
    let kmnt = dir.mkdir("kernel");
    let smnt = dir.mkdir("shalefs");
    let _k = KernelOverlay::lowers(&refs(&kernel_layers), &kmnt);
    let _s = ShaleMount::lowers(&refs(&our_layers), &smnt);
    let oracle = Tree::walk(&kmnt);
    let ours = Tree::walk(&smnt);
    assert!(oracle.entries.len() > BIG, "the oracle tree is suspiciously small");
    assert_same_tree(&ours, &oracle);
}

#[test]
fn overlay_encoded_layers_match_kernel_overlayfs() {
    compare_with_kernel("overlay-enc", &rich_stack(), Encoding::Overlay);
}

#[test]
fn oci_encoded_layers_match_kernel_overlayfs() {
    compare_with_kernel("oci-enc", &rich_stack(), Encoding::Oci);
}

#[test]
fn trusted_xattr_whiteouts_match_kernel_overlayfs() {
    compare_with_kernel("xattr-trusted", &rich_stack(), Encoding::Xattr("trusted"));
}

#[test]
fn user_xattr_whiteouts_match_kernel_overlayfs() {
    compare_with_kernel("xattr-user", &rich_stack(), Encoding::Xattr("user"));
}

#[test]
fn whiteout_markers_and_private_xattrs_never_show() {
    let dir = TestDir::new("markers");
    let layers = build(&dir, "s", &rich_stack(), Encoding::Oci);
    let mnt = dir.mkdir("mnt");
    let _m = ShaleMount::lowers(&refs(&layers), &mnt);
    let tree = Tree::walk(&mnt);
    for path in tree.entries.keys() {
        let name = path.rsplit(|&b| b == b'/').next().unwrap_or_default();
        assert!(!name.starts_with(b".wh."), "marker visible: {}", String::from_utf8_lossy(path));
    }
    assert!(!tree.entries.contains_key(b"solo/ghost".as_slice()));
    let all = crate::util::tree::xattrs(&mnt.join("opq"));
    assert!(all.keys().all(|k| !k.starts_with(b"trusted.overlay.") && !k.starts_with(b"user.overlay.")), "{all:?}");
}

#[test]
fn inode_numbers_are_stable_across_remount_and_hard_links_share_one() {
    let dir = TestDir::new("ino");
    let layers = build(&dir, "s", &rich_stack(), Encoding::Overlay);
    let mnt = dir.mkdir("mnt");
    let first = {
        let _m = ShaleMount::lowers(&refs(&layers), &mnt);
        let t = Tree::walk(&mnt);
        let h1 = std::fs::metadata(mnt.join("data/h1")).unwrap();
        let h2 = std::fs::metadata(mnt.join("data/h2")).unwrap();
        assert_eq!(h1.ino(), h2.ino());
        assert_eq!(h1.nlink(), 3, "nlink of a lower file counts its hidden name too, as in overlayfs");
        let root_dev = std::fs::metadata(&mnt).unwrap().dev();
        assert_eq!(std::fs::metadata(mnt.join("big/f09999")).unwrap().dev(), root_dev);
        t.inos
    };
    let _m = ShaleMount::lowers(&refs(&layers), &mnt);
    assert_eq!(Tree::walk(&mnt).inos, first);
}

#[test]
fn layers_on_different_filesystems_get_distinct_inode_numbers() {
    let dir = TestDir::new("xdev");
    let tmpfs = dir.mkdir("tmpfs");
    let out = std::process::Command::new("mount").args(["-t", "tmpfs", "tmpfs"]).arg(&tmpfs).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _t = Unmount(tmpfs.clone());
    let a = tmpfs.join("a");
    let b = dir.mkdir("b");
    let mut specs_a = LayerSpec::new();
    let mut specs_b = LayerSpec::new();
    for i in 0..200 {
        specs_a = specs_a.file(format!("a{i}"), "a");
        specs_b = specs_b.file(format!("b{i}"), "b");
    }
    specs_a.build(&a, Encoding::Overlay);
    specs_b.build(&b, Encoding::Overlay);
    let mnt = dir.mkdir("mnt");
    let _m = ShaleMount::lowers(&[a.as_path(), b.as_path()], &mnt);
    let tree = Tree::walk(&mnt);
    let mut inos: Vec<u64> = tree.inos.values().copied().collect();
    inos.sort();
    inos.dedup();
    assert_eq!(inos.len(), 400);
    assert!(tree.dino_mismatches.is_empty());
}

#[test]
fn names_longer_than_255_bytes_are_enametoolong() {
    let dir = TestDir::new("longname");
    let layers = build(&dir, "s", &[LayerSpec::new().file("x", "x")], Encoding::Overlay);
    let mnt = dir.mkdir("mnt");
    let _m = ShaleMount::lowers(&refs(&layers), &mnt);
    let err = std::fs::metadata(mnt.join("a".repeat(256))).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENAMETOOLONG));
    let err = std::fs::metadata(mnt.join("a".repeat(255))).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
}

#[test]
fn read_only_mount_refuses_writes_with_erofs() {
    let dir = TestDir::new("erofs");
    let layers = build(&dir, "s", &[LayerSpec::new().file("f", "x")], Encoding::Overlay);
    let mnt = dir.mkdir("mnt");
    let _m = ShaleMount::lowers(&refs(&layers), &mnt);
    let err = std::fs::write(mnt.join("new"), "x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    let err = std::fs::OpenOptions::new().append(true).open(mnt.join("f")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    let err = std::fs::create_dir(mnt.join("d")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    assert_eq!(std::fs::read(layers[0].join("f")).unwrap(), b"x");
}

#[test]
fn symlinks_are_returned_not_followed_by_the_daemon() {
    let dir = TestDir::new("symlink");
    let outside = dir.mkdir("outside");
    std::fs::write(outside.join("secret"), "outside the layers").unwrap();
    let spec_top = LayerSpec::new().file("d/inside", "in");
    let spec_bottom = LayerSpec::new().symlink("d", outside.as_os_str().as_encoded_bytes()).symlink("link", "/nonexistent/x");
    let layers = build(&dir, "s", &[spec_top, spec_bottom], Encoding::Overlay);
    let mnt = dir.mkdir("mnt");
    let _m = ShaleMount::lowers(&refs(&layers), &mnt);
    let names: Vec<_> = std::fs::read_dir(mnt.join("d")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, vec![std::ffi::OsString::from("inside")]);
    assert_eq!(std::fs::read_link(mnt.join("link")).unwrap(), PathBuf::from("/nonexistent/x"));
}

#[test]
fn statfs_reports_the_top_layer_filesystem() {
    let dir = TestDir::new("statfs");
    let layers = build(&dir, "s", &[LayerSpec::new().file("f", "x")], Encoding::Overlay);
    let mnt = dir.mkdir("mnt");
    let _m = ShaleMount::lowers(&refs(&layers), &mnt);
    let ours = crate::util::run_ok(std::process::Command::new("stat").args(["-f", "-c", "%b %l"]).arg(&mnt));
    let real = crate::util::run_ok(std::process::Command::new("stat").args(["-f", "-c", "%b %l"]).arg(&layers[0]));
    assert_eq!(ours, real);
}
