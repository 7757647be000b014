//! Unpacking real and hostile tars into plain directories, without a registry or a mount.

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use super::unpack::{Limits, unpack};

/// One tar entry, with its name written raw into the header so that hostile names survive.
struct E {
    name: &'static [u8],
    kind: tar::EntryType,
    link: &'static [u8],
    data: &'static [u8],
    mode: u32,
    uid: u64,
}

fn e(name: &'static [u8], kind: tar::EntryType) -> E {
    E { name, kind, link: b"", data: b"", mode: if kind.is_dir() { 0o755 } else { 0o644 }, uid: 0 }
}

fn file(name: &'static [u8], data: &'static [u8]) -> E {
    E { data, ..e(name, tar::EntryType::Regular) }
}

fn link(name: &'static [u8], kind: tar::EntryType, target: &'static [u8]) -> E {
    E { link: target, ..e(name, kind) }
}

fn build(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for en in entries {
        let mut h = tar::Header::new_ustar();
        h.as_old_mut().name[..en.name.len()].copy_from_slice(en.name);
        h.as_old_mut().linkname[..en.link.len()].copy_from_slice(en.link);
        h.set_entry_type(en.kind);
        h.set_mode(en.mode);
        h.set_uid(en.uid);
        h.set_gid(0);
        h.set_mtime(1_000_000);
        h.set_size(en.data.len() as u64);
        h.set_cksum();
        b.append(&h, en.data).unwrap();
    }
    b.into_inner().unwrap()
}

/// Unpack into `<tmp>/layer`; returns the temp dir, so a test can check nothing escaped it.
fn unpack_into(entries: &[E]) -> (tempfile::TempDir, anyhow::Result<()>) {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir(tmp.path().join("layer")).unwrap();
    let tar = build(entries);
    let r = unpack(&tar[..], &tmp.path().join("layer"), Limits::default()).map(|_| ());
    (tmp, r)
}

fn only_layer_in(tmp: &Path) {
    let names: Vec<_> = std::fs::read_dir(tmp).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, vec![std::ffi::OsString::from("layer")], "something was written beside the layer");
}

#[test]
fn oci_whiteouts_become_overlay_whiteouts_and_metadata_survives() {
    use tar::EntryType::*;
    let (tmp, r) = unpack_into(&[
        e(b"./", Directory),
        e(b"etc/", Directory),
        file(b"etc/passwd", b"root:x:0:0"),
        // The opaque marker after its directory's entries still applies to the directory.
        file(b"etc/.wh..wh..opq", b""),
        file(b".wh.gone", b""),
        link(b"etc/passwd-hard", Link, b"etc/passwd"),
        link(b"etc/sym", Symlink, b"/etc/passwd"),
        E { mode: 0o4755, uid: 1000, ..file(b"bin/su", b"#!") },
        file(b".wh..wh.plnk", b""),
    ]);
    r.unwrap();
    let l = tmp.path().join("layer");
    let gone = std::fs::symlink_metadata(l.join("gone")).unwrap();
    assert!(gone.file_type().is_char_device() && gone.rdev() == 0);
    let opaque = crate::sys::lgetxattr(&crate::sys::path_cstring(&l.join("etc")).unwrap(), c"trusted.overlay.opaque");
    assert_eq!(opaque.unwrap(), b"y");
    assert_eq!(std::fs::metadata(l.join("etc/passwd-hard")).unwrap().ino(), std::fs::metadata(l.join("etc/passwd")).unwrap().ino());
    assert_eq!(std::fs::read_link(l.join("etc/sym")).unwrap(), Path::new("/etc/passwd"));
    let su = std::fs::metadata(l.join("bin/su")).unwrap();
    assert_eq!((su.permissions().mode() & 0o7777, su.uid()), (0o4755, 1000));
    assert_eq!(std::fs::metadata(l.join("etc")).unwrap().mtime(), 1_000_000);
    assert!(!l.join(".wh..wh.plnk").exists() && !l.join(".wh.gone").exists());
}

#[test]
fn hostile_layers_are_refused_naming_the_entry() {
    use tar::EntryType::*;
    let cases: Vec<(&str, Vec<E>)> = vec![
        ("dotdot", vec![file(b"../evil", b"x")]),
        ("dotdot inside", vec![file(b"a/../../evil", b"x")]),
        ("through a relative symlink", vec![link(b"up", Symlink, b".."), file(b"up/evil", b"x")]),
        ("through an absolute symlink", vec![link(b"abs", Symlink, b"/tmp"), file(b"abs/evil", b"x")]),
        ("through a symlink to /.", vec![link(b"slash", Symlink, b"/."), file(b"slash/evil", b"x")]),
        ("symlink as the file itself", vec![link(b"f", Symlink, b"../evil"), file(b"f", b"x")]),
        ("hard link outside", vec![link(b"h", Link, b"../evil")]),
        ("hard link through a symlink", vec![link(b"up", Symlink, b".."), link(b"h", Link, b"up/evil")]),
        ("hard link to a missing file", vec![link(b"h", Link, b"/etc/passwd")]),
        ("whiteout of ..", vec![file(b".wh...", b"")]),
        ("bare whiteout", vec![file(b"a/.wh.", b"")]),
    ];
    for (what, entries) in cases {
        // Put a file beside the layer where an escape would land, and check it is untouched.
        let (tmp, r) = unpack_into(&entries);
        let written_outside = tmp.path().join("evil").exists();
        match r {
            Err(e) => assert!(format!("{e:#}").contains("layer entry"), "{what}: error does not name the entry: {e:#}"),
            // Replacing a symlink by a file is allowed, as long as the file lands in the layer.
            Ok(()) => assert_eq!(what, "symlink as the file itself", "{what}: accepted"),
        }
        assert!(!written_outside, "{what}: wrote outside the layer");
        only_layer_in(tmp.path());
    }
}

#[test]
fn absolute_names_stay_inside_and_later_entries_replace_earlier() {
    use tar::EntryType::*;
    let (tmp, r) = unpack_into(&[
        file(b"/abs/file", b"1"),
        file(b"dup", b"first"),
        file(b"dup", b"second"),
        file(b"d", b"file"),
        e(b"d/", Directory),
        file(b"d/x", b"in dir"),
        e(b"gone/", Directory),
        file(b"gone/x", b""),
        file(b"gone", b"now a file"),
    ]);
    r.unwrap();
    let l = tmp.path().join("layer");
    assert_eq!(std::fs::read(l.join("abs/file")).unwrap(), b"1");
    assert_eq!(std::fs::read(l.join("dup")).unwrap(), b"second");
    assert_eq!(std::fs::read(l.join("d/x")).unwrap(), b"in dir");
    assert_eq!(std::fs::read(l.join("gone")).unwrap(), b"now a file");
    only_layer_in(tmp.path());
}

/// umoci's form of a directory that became a file: the file, then a whiteout below it.
#[test]
fn umoci_whiteout_under_a_file_that_replaced_a_directory_is_skipped() {
    let (tmp, r) = unpack_into(&[
        file(b"usr/share/data/was-dir", b"x\n"),
        file(b"usr/share/data/was-dir/.wh.child", b""),
        file(b"usr/share/data/was-dir/.wh..wh..opq", b""),
        file(b"usr/share/data/was-dir/deeper/.wh.child", b""),
    ]);
    r.unwrap();
    let l = tmp.path().join("layer");
    assert_eq!(std::fs::read(l.join("usr/share/data/was-dir")).unwrap(), b"x\n");
    assert_eq!(std::fs::read_dir(l.join("usr/share/data")).unwrap().count(), 1);
    only_layer_in(tmp.path());
}

/// The same whiteout below a symlink would be written through it: still refused.
#[test]
fn whiteout_below_a_symlink_is_still_refused() {
    use tar::EntryType::*;
    for target in [b"..".as_slice(), b"/tmp", b"file"] {
        let entries = [file(b"file", b"x"), E { link: leak(target), ..e(b"up", Symlink) }, file(b"up/.wh.evil", b"")];
        let (tmp, r) = unpack_into(&entries);
        let err = r.expect_err("a whiteout through a symlink was accepted");
        assert!(format!("{err:#}").contains("layer entry \"up/.wh.evil\""), "{err:#}");
        assert!(!tmp.path().join("evil").exists() && !tmp.path().join("layer/evil").exists());
        only_layer_in(tmp.path());
    }
}

fn leak(b: &[u8]) -> &'static [u8] {
    Box::leak(b.to_vec().into_boxed_slice())
}

#[test]
fn entry_count_is_bounded() {
    let entries: Vec<E> = (0..5).map(|_| file(b"f", b"")).collect();
    let tmp = tempfile::tempdir().unwrap();
    let tar = build(&entries);
    let r = unpack(&tar[..], tmp.path(), Limits { max_entries: 3 });
    assert!(r.unwrap_err().to_string().contains("more than 3 entries"));
}

#[test]
fn a_pax_path_record_cannot_smuggle_a_dotdot_name() {
    // The ustar name is harmless; the PAX `path` record that overrides it is not.
    let mut b = tar::Builder::new(Vec::new());
    b.append_pax_extensions([("path", b"../evil".as_slice())]).unwrap();
    let mut h = tar::Header::new_ustar();
    h.set_path("harmless").unwrap();
    h.set_size(1);
    h.set_mode(0o644);
    h.set_cksum();
    b.append(&h, &b"x"[..]).unwrap();
    let tar = b.into_inner().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir(tmp.path().join("layer")).unwrap();
    let err = unpack(&tar[..], &tmp.path().join("layer"), Limits::default()).unwrap_err();
    assert!(format!("{err:#}").contains("'..'"), "{err:#}");
    only_layer_in(tmp.path());
}

/// Unpack `tar` with a record into `<tmp>/layer`, then rebuild it.
fn record_and_rebuild(tar: &[u8]) -> (tempfile::TempDir, std::io::Result<Vec<u8>>) {
    use super::tarsplit::{Rebuild, Recorder};
    let tmp = tempfile::tempdir().unwrap();
    let (layer, record, stash) = (tmp.path().join("layer"), tmp.path().join("record"), tmp.path().join("stash"));
    std::fs::create_dir(&layer).unwrap();
    let rec = Recorder::create(&record, &stash).unwrap();
    super::unpack::unpack_recorded(tar, &layer, Limits::default(), rec).unwrap();
    let mut out = Vec::new();
    let r = std::io::Read::read_to_end(&mut Rebuild::open(&record, &layer, &stash).unwrap(), &mut out).map(|_| out);
    (tmp, r)
}

#[test]
fn tar_record_rebuilds_the_exact_stream_with_long_names_pax_records_and_trailing_bytes() {
    use tar::EntryType::Symlink;
    let mut b = tar::Builder::new(Vec::new());
    let hdr = |mut h: tar::Header, size: u64, mode: u32| {
        h.set_size(size);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1);
        h
    };
    let long = format!("{}/file-with-a-long-name", "d".repeat(150));
    let mut h = hdr(tar::Header::new_gnu(), 5, 0o644);
    b.append_data(&mut h, &long, &b"hello"[..]).unwrap();
    b.append_pax_extensions([("SCHILY.xattr.user.k", b"v".as_slice()), ("mtime", b"1.5")]).unwrap();
    let mut h = hdr(tar::Header::new_ustar(), 1000, 0o755);
    b.append_data(&mut h, "bin/big", &vec![7u8; 1000][..]).unwrap();
    let mut h = hdr(tar::Header::new_ustar(), 0, 0o777);
    h.set_entry_type(Symlink);
    b.append_link(&mut h, "bin/link", "big").unwrap();
    let mut h = hdr(tar::Header::new_ustar(), 0, 0o644);
    b.append_data(&mut h, ".wh.gone", &b""[..]).unwrap();
    let mut tar = b.into_inner().unwrap();
    // Trailing bytes after the end-of-archive blocks count in a DiffID: they must come back.
    tar.extend_from_slice(&[0u8; 4096]);
    tar.extend_from_slice(b"trailing junk");
    let (tmp, r) = record_and_rebuild(&tar);
    assert!(r.unwrap() == tar, "rebuilt tar differs");
    let record = std::fs::metadata(tmp.path().join("record")).unwrap().len();
    assert!(record < 600, "record of {record} bytes for 6 entries");
}

#[test]
fn tar_record_keeps_the_content_of_entries_a_later_one_replaced() {
    use tar::EntryType::*;
    let tar = build(&[
        file(b"dup", b"first"),
        link(b"dup-link", Link, b"dup"),
        file(b"dup", b"second"),
        e(b"d/", Directory),
        file(b"d/x", b"in dir"),
        file(b"d", b"now a file"),
        file(b"gone", b"whited out"),
        file(b".wh.gone", b""),
    ]);
    let (tmp, r) = record_and_rebuild(&tar);
    assert!(r.unwrap() == tar, "rebuilt tar differs");
    assert_eq!(std::fs::read(tmp.path().join("layer/dup")).unwrap(), b"second");
    assert!(tmp.path().join("stash/map").exists());
}

#[test]
fn tar_record_rebuild_fails_when_a_file_changed_size() {
    let tar = build(&[file(b"a", b"12345"), file(b"b", b"x")]);
    let tmp = tempfile::tempdir().unwrap();
    let (layer, record, stash) = (tmp.path().join("layer"), tmp.path().join("record"), tmp.path().join("stash"));
    std::fs::create_dir(&layer).unwrap();
    let rec = super::tarsplit::Recorder::create(&record, &stash).unwrap();
    super::unpack::unpack_recorded(&tar[..], &layer, Limits::default(), rec).unwrap();
    std::fs::write(layer.join("a"), b"123").unwrap();
    let mut out = Vec::new();
    let err = std::io::Read::read_to_end(&mut super::tarsplit::Rebuild::open(&record, &layer, &stash).unwrap(), &mut out).unwrap_err();
    assert!(err.to_string().contains("\"a\" changed"), "{err}");
}
