//! The union rules on plain directories, without FUSE: build small layers, then ask the union.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use super::Union;
use super::ino::ROOT_INO;
use super::layer::{Formats, Layer, LayerStack, Role};
use crate::sys;

struct Layers {
    _dir: tempfile::TempDir,
    roots: Vec<PathBuf>,
}

impl Layers {
    fn new(n: usize) -> Layers {
        let dir = tempfile::tempdir().expect("tempdir");
        let roots = (0..n).map(|i| dir.path().join(format!("l{i}"))).collect::<Vec<_>>();
        for r in &roots {
            std::fs::create_dir(r).expect("mkdir");
        }
        Layers { _dir: dir, roots }
    }

    fn file(&self, layer: usize, rel: &str, content: &str) -> &Self {
        let p = self.roots[layer].join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, content).expect("write");
        self
    }

    fn dir(&self, layer: usize, rel: &str) -> &Self {
        std::fs::create_dir_all(self.roots[layer].join(rel)).expect("mkdir");
        self
    }

    fn whiteout(&self, layer: usize, rel: &str) -> &Self {
        let p = self.roots[layer].join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        let dir = sys::open_dir(p.parent().expect("parent")).expect("open");
        let name = sys::cstring(p.file_name().expect("name").as_encoded_bytes()).expect("name");
        sys::mknodat(dir.as_fd(), &name, libc::S_IFCHR, 0).expect("mknod 0/0 (needs root)");
        self
    }

    fn xattr(&self, layer: usize, rel: &str, name: &str, value: &[u8]) -> &Self {
        let p = sys::path_cstring(&self.roots[layer].join(rel)).expect("path");
        sys::lsetxattr(&p, &sys::cstring(name.as_bytes()).expect("name"), value).expect("setxattr (needs root)");
        self
    }

    /// All layers as lowers, top (index 0) first.
    fn union(&self) -> Union {
        let lowers = self.roots.iter().map(|r| Layer::open(r, Role::Lower, Formats::LOWER).expect("layer")).collect();
        Union::new(LayerStack::new(None, lowers).expect("stack")).expect("union")
    }

    /// Layer 0 as the upper (with a work dir beside it), the rest as lowers.
    fn union_with_upper(&self) -> Union {
        self.union_with_upper_in(Formats::UPPER_TRUSTED)
    }

    fn union_with_upper_in(&self, format: Formats) -> Union {
        let upper = Layer::open(&self.roots[0], Role::Upper, format).expect("upper");
        let work_dir = self._dir.path().join("work");
        std::fs::create_dir_all(&work_dir).expect("work");
        let work = Layer::open(&work_dir, Role::Work, Formats::UPPER_TRUSTED).expect("work");
        let lowers = self.roots[1..].iter().map(|r| Layer::open(r, Role::Lower, Formats::LOWER).expect("layer")).collect();
        Union::new(LayerStack::with_work(Some(upper), Some(work), lowers).expect("stack")).expect("union")
    }
}

fn names(u: &Union, path: &str) -> Vec<String> {
    let ino = resolve(u, path);
    let node = u.node(ino).expect("node");
    let mut v: Vec<String> = u.list_dir(&node).expect("list").into_iter().map(|l| String::from_utf8_lossy(&l.name).into_owned()).collect();
    v.sort();
    v
}

fn resolve(u: &Union, path: &str) -> u64 {
    let mut ino = ROOT_INO;
    for part in Path::new(path).iter() {
        ino = u.lookup(ino, part.as_encoded_bytes()).unwrap_or_else(|e| panic!("lookup {path}: {e}")).stat.st_ino;
    }
    ino
}

fn exists(u: &Union, path: &str) -> bool {
    let mut ino = ROOT_INO;
    for part in Path::new(path).iter() {
        match u.lookup(ino, part.as_encoded_bytes()) {
            Ok(e) => ino = e.stat.st_ino,
            Err(e) if e == sys::Errno::ENOENT => return false,
            Err(e) => panic!("lookup {path}: {e}"),
        }
    }
    true
}

fn read(u: &Union, path: &str) -> String {
    let fh = u.open(resolve(u, path), libc::O_RDONLY).expect("open");
    let data = u.read(fh, 0, 4096).expect("read");
    u.release(fh);
    String::from_utf8(data).expect("utf8")
}

#[test]
fn upper_layers_win_over_lower_ones() {
    let l = Layers::new(3);
    l.file(2, "etc/a", "bottom").file(1, "etc/a", "middle").file(2, "etc/b", "bottom b");
    let u = l.union();
    assert_eq!(read(&u, "etc/a"), "middle");
    assert_eq!(read(&u, "etc/b"), "bottom b");
    assert_eq!(names(&u, "etc"), ["a", "b"]);
}

#[test]
fn char_device_whiteout_hides_lower_names() {
    let l = Layers::new(2);
    l.file(1, "etc/gone", "x").file(1, "etc/kept", "y").whiteout(0, "etc/gone");
    let u = l.union();
    assert!(!exists(&u, "etc/gone"));
    assert_eq!(names(&u, "etc"), ["kept"]);
}

#[test]
fn oci_whiteout_hides_below_but_not_its_own_sibling() {
    let l = Layers::new(2);
    l.file(1, "d/x", "lower").file(1, "d/y", "lower y").file(0, "d/.wh.x", "").file(0, "d/.wh.y", "").file(0, "d/y", "same layer");
    let u = l.union();
    assert!(!exists(&u, "d/x"));
    assert_eq!(read(&u, "d/y"), "same layer");
    assert_eq!(names(&u, "d"), ["y"]);
}

#[test]
fn opaque_directory_hides_everything_below_in_both_encodings() {
    let l = Layers::new(3);
    l.file(2, "a/old", "x").file(2, "b/old", "x");
    l.file(1, "a/new", "n").xattr(1, "a", "trusted.overlay.opaque", b"y");
    l.file(1, "b/new", "n").file(1, "b/.wh..wh..opq", "");
    let u = l.union();
    assert_eq!(names(&u, "a"), ["new"]);
    assert_eq!(names(&u, "b"), ["new"]);
}

#[test]
fn a_non_directory_ends_the_merge() {
    let l = Layers::new(3);
    l.file(2, "d/deep", "x").file(1, "d", "a file").file(0, "d/top", "t");
    let u = l.union();
    assert_eq!(names(&u, "d"), ["top"]);
    let l = Layers::new(2);
    l.file(1, "f", "file below").file(0, "f/inside", "dir above");
    let u = l.union();
    assert_eq!(names(&u, "f"), ["inside"]);
}

#[test]
fn xattr_whiteouts_count_only_in_marked_directories() {
    let l = Layers::new(2);
    l.file(1, "m/x", "lower").file(1, "n/x", "lower");
    l.file(0, "m/x", "").xattr(0, "m/x", "user.overlay.whiteout", b"").xattr(0, "m", "user.overlay.opaque", b"x");
    // Same file, but the directory is not marked: an ordinary empty file.
    l.file(0, "n/x", "").xattr(0, "n/x", "user.overlay.whiteout", b"");
    let u = l.union();
    assert!(!exists(&u, "m/x"));
    assert_eq!(read(&u, "n/x"), "");
}

#[test]
fn the_upper_reads_only_the_overlay_format() {
    let l = Layers::new(2);
    l.file(1, "d/x", "lower").file(0, "d/.wh.x", "a user's file named .wh.x");
    let u = l.union_with_upper();
    assert!(exists(&u, "d/x"));
    assert_eq!(read(&u, "d/.wh.x"), "a user's file named .wh.x");
}

#[test]
fn merged_directories_report_one_link_and_a_stable_number() {
    let l = Layers::new(2);
    l.dir(1, "d/sub").dir(0, "d").dir(1, "only");
    let u = l.union();
    let st = u.lookup(ROOT_INO, b"d").expect("lookup").stat;
    assert_eq!(st.st_nlink, 1);
    let only = u.lookup(ROOT_INO, b"only").expect("lookup").stat;
    assert_eq!(only.st_nlink, 2);
    // The number comes from the lowest directory of the merge.
    let lower = std::fs::metadata(l.roots[1].join("d")).expect("stat");
    assert_eq!(st.st_ino & ((1 << 48) - 1), std::os::unix::fs::MetadataExt::ino(&lower));
}

#[test]
fn hard_links_share_a_number_and_listing_numbers_match_lookup() {
    let l = Layers::new(1);
    l.file(0, "a", "data");
    std::fs::hard_link(l.roots[0].join("a"), l.roots[0].join("b")).expect("link");
    let u = l.union();
    let a = u.lookup(ROOT_INO, b"a").expect("a").stat;
    let b = u.lookup(ROOT_INO, b"b").expect("b").stat;
    assert_eq!(a.st_ino, b.st_ino);
    assert_eq!(a.st_nlink, 2);
    let root = u.node(ROOT_INO).expect("root");
    for entry in u.list_dir(&root).expect("list") {
        assert_eq!(entry.found.ino, u.lookup(ROOT_INO, &entry.name).expect("lookup").stat.st_ino);
    }
}

#[test]
fn forgotten_nodes_leave_the_table() {
    let l = Layers::new(1);
    l.file(0, "a", "data");
    let u = l.union();
    let before = u.live_nodes();
    let ino = u.lookup(ROOT_INO, b"a").expect("a").stat.st_ino;
    u.lookup(ROOT_INO, b"a").expect("a");
    assert_eq!(u.live_nodes(), before + 1);
    u.forget(ino, 2);
    assert_eq!(u.live_nodes(), before);
}

#[test]
fn writes_land_in_the_upper_with_whiteouts_for_lower_names() {
    let l = Layers::new(2);
    l.file(1, "d/x", "lower").file(1, "d/y", "lower y");
    let u = l.union_with_upper();
    let caller = super::dir::Caller { uid: 0, gid: 0 };
    let d = resolve(&u, "d");
    u.unlink(d, b"x").expect("unlink");
    assert!(!exists(&u, "d/x"));
    let wh = std::fs::symlink_metadata(l.roots[0].join("d/x")).expect("whiteout in the upper");
    assert!(super::whiteout::is_whiteout_device(std::os::unix::fs::MetadataExt::mode(&wh), std::os::unix::fs::MetadataExt::rdev(&wh)));
    let (_, fh) = u.create(d, b"x", 0o644, libc::O_WRONLY, caller).expect("create over the whiteout");
    u.write(fh, 0, b"new").expect("write");
    u.release(fh);
    assert_eq!(read(&u, "d/x"), "new");
    u.rename(d, b"y", ROOT_INO, b"moved", 0).expect("rename a lower file");
    assert_eq!(read(&u, "moved"), "lower y");
    assert!(!exists(&u, "d/y"));
    assert_eq!(names(&u, "d"), ["x"]);
}

#[test]
fn long_names_are_enametoolong() {
    let l = Layers::new(1);
    let u = l.union();
    assert_eq!(u.lookup(ROOT_INO, &[b'x'; 256]).unwrap_err(), sys::Errno::ENAMETOOLONG);
}

fn xattr_of(path: &Path, name: &str) -> Option<Vec<u8>> {
    let p = sys::path_cstring(path).expect("path");
    sys::lgetxattr(&p, &sys::cstring(name.as_bytes()).expect("name")).ok()
}

fn chmod(u: &Union, path: &str, mode: u32) {
    let change = super::attr::SetAttr { mode: Some(mode), ..Default::default() };
    u.setattr(resolve(u, path), change, None).expect("chmod");
}

/// A file of `len` bytes of data (not a hole), so that its blocks show.
fn big_file(l: &Layers, layer: usize, rel: &str, len: usize) {
    let data: String = (0..len).map(|i| (b'a' + (i % 26) as u8) as char).collect();
    l.file(layer, rel, &data);
}

#[test]
fn metacopy_chmod_copies_metadata_and_leaves_the_data_below() {
    let l = Layers::new(2);
    big_file(&l, 1, "d/big", 64 << 10);
    let mut u = l.union_with_upper();
    u.set_metacopy(true);
    chmod(&u, "d/big", 0o600);
    let copy = l.roots[0].join("d/big");
    assert_eq!(xattr_of(&copy, "trusted.overlay.metacopy"), Some(vec![]));
    let meta = std::fs::metadata(&copy).expect("upper copy");
    use std::os::unix::fs::MetadataExt;
    assert_eq!((meta.len(), meta.blocks(), meta.mode() & 0o7777), (64 << 10, 0, 0o600));
    // The merged view: the copy's attributes, the lower's data and space.
    let st = u.getattr(resolve(&u, "d/big"), None).expect("getattr");
    let lower = std::fs::metadata(l.roots[1].join("d/big")).expect("lower");
    assert_eq!((st.st_mode & 0o7777, st.st_size, st.st_blocks as u64), (0o600, 64 << 10, lower.blocks()));
    assert_eq!(read(&u, "d/big"), std::fs::read_to_string(l.roots[1].join("d/big")).expect("lower")[..4096]);
}

#[test]
fn metacopy_data_follows_on_the_first_write_and_keeps_the_times() {
    let l = Layers::new(2);
    big_file(&l, 1, "f", 10_000);
    let mut u = l.union_with_upper();
    u.set_metacopy(true);
    chmod(&u, "f", 0o640);
    let before = u.getattr(resolve(&u, "f"), None).expect("getattr");
    let reader = u.open(resolve(&u, "f"), libc::O_RDONLY).expect("open for reading");
    let fh = u.open(resolve(&u, "f"), libc::O_WRONLY).expect("open for writing");
    u.write(fh, 0, b"XY").expect("write");
    u.release(fh);
    let copy = l.roots[0].join("f");
    assert_eq!(xattr_of(&copy, "trusted.overlay.metacopy"), None);
    let mut want = std::fs::read(l.roots[1].join("f")).expect("lower");
    want[..2].copy_from_slice(b"XY");
    assert_eq!(std::fs::read(&copy).expect("upper"), want);
    // A handle opened before the data came up reads the copy, as on overlayfs.
    assert_eq!(u.read(reader, 0, 4).expect("read"), b"XYcd");
    u.release(reader);
    let after = std::fs::metadata(&copy).expect("upper");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(after.mode() & 0o7777, 0o640);
    assert!(after.mtime() >= before.st_mtime);
}

#[test]
fn metacopy_survives_a_rename_through_a_redirect() {
    let l = Layers::new(2);
    l.file(1, "a/f", "lower data");
    let mut u = l.union_with_upper();
    u.set_metacopy(true);
    chmod(&u, "a/f", 0o600);
    u.rename(resolve(&u, "a"), b"f", ROOT_INO, b"g", 0).expect("rename");
    let moved = l.roots[0].join("g");
    assert_eq!(xattr_of(&moved, "trusted.overlay.redirect"), Some(b"/a/f".to_vec()));
    assert_eq!(xattr_of(&moved, "trusted.overlay.metacopy"), Some(vec![]));
    assert_eq!(read(&u, "g"), "lower data");
    assert!(!exists(&u, "a/f"));
    // A fresh mount of the same upper finds the data through the redirect; one without
    // metacopy=on refuses the file, as overlayfs does.
    drop(u);
    let u = l.union_with_upper();
    assert_eq!(u.lookup(ROOT_INO, b"g").unwrap_err(), sys::Errno::EPERM);
    let mut u = l.union_with_upper();
    u.set_metacopy(true);
    assert_eq!(read(&u, "g"), "lower data");
    assert_eq!(u.getattr(resolve(&u, "g"), None).expect("getattr").st_mode & 0o7777, 0o600);
}

#[test]
fn metacopy_truncated_to_zero_needs_no_data_and_is_off_by_default() {
    let l = Layers::new(2);
    l.file(1, "t", "lower data").file(1, "plain", "lower data");
    let mut u = l.union_with_upper();
    chmod(&u, "plain", 0o600);
    assert_eq!(xattr_of(&l.roots[0].join("plain"), "trusted.overlay.metacopy"), None);
    assert_eq!(std::fs::read_to_string(l.roots[0].join("plain")).expect("full copy"), "lower data");
    u.set_metacopy(true);
    chmod(&u, "t", 0o600);
    let change = super::attr::SetAttr { size: Some(0), ..Default::default() };
    u.setattr(resolve(&u, "t"), change, None).expect("truncate");
    assert_eq!(xattr_of(&l.roots[0].join("t"), "trusted.overlay.metacopy"), None);
    assert_eq!(read(&u, "t"), "");
}

#[test]
fn metacopy_without_its_data_is_eio() {
    let l = Layers::new(2);
    l.file(0, "lost", "").xattr(0, "lost", "trusted.overlay.metacopy", b"");
    l.dir(1, "other");
    let mut u = l.union_with_upper();
    u.set_metacopy(true);
    assert_eq!(u.lookup(ROOT_INO, b"lost").unwrap_err(), sys::Errno::EIO);
}

#[test]
fn an_upper_in_user_xattr_form_moves_no_directory_with_lower_parts() {
    let l = Layers::new(2);
    l.file(1, "lowerdir/f", "x");
    let u = l.union_with_upper_in(Formats::UPPER_USER);
    let caller = super::dir::Caller { uid: 0, gid: 0 };
    assert_eq!(u.rename(ROOT_INO, b"lowerdir", ROOT_INO, b"moved", 0).unwrap_err(), sys::Errno(libc::EXDEV));
    assert!(exists(&u, "lowerdir/f"));
    u.create_object(ROOT_INO, b"fresh", super::dir::NewObject::Dir { mode: 0o755 }, caller).expect("mkdir");
    u.rename(ROOT_INO, b"fresh", ROOT_INO, b"renamed", 0).expect("an upper-only directory moves");
    assert!(exists(&u, "renamed") && !exists(&u, "fresh"));
}

/// overlayfs writes a rename within one directory as a relative redirect: a name in the same
/// parent as each layer below finds that parent, here through the parent's own redirect.
#[test]
fn relative_redirect_under_a_moved_parent_names_a_sibling_below() {
    let l = Layers::new(2);
    l.file(1, "d/s/f", "deep");
    l.dir(0, "e/t").xattr(0, "e", "trusted.overlay.redirect", b"d").xattr(0, "e/t", "trusted.overlay.redirect", b"s");
    let u = l.union();
    assert_eq!(read(&u, "e/t/f"), "deep");
}

/// An absolute redirect is read from each layer's root, and a directory on its way that moved
/// in a middle layer (an earlier upper) gives the path for the layers below it.
#[test]
fn absolute_redirect_follows_a_middle_layers_moved_directory() {
    let l = Layers::new(3);
    l.file(2, "b/c/f", "found");
    l.dir(1, "a").xattr(1, "a", "trusted.overlay.redirect", b"/b").whiteout(1, "b");
    l.dir(0, "x").xattr(0, "x", "trusted.overlay.redirect", b"/a/c");
    let u = l.union();
    assert_eq!(read(&u, "x/f"), "found");
}

/// A rename writes the redirect as the next layer down spells the directory, not as the layer
/// holding its lower part does (there the path may be whited out).
#[test]
fn rename_writes_the_redirect_as_the_next_layer_down_spells_it() {
    let l = Layers::new(3);
    l.file(2, "b/c/f", "moved twice");
    l.dir(1, "a").xattr(1, "a", "trusted.overlay.redirect", b"/b").whiteout(1, "b");
    let u = l.union_with_upper();
    u.rename(resolve(&u, "a"), b"c", ROOT_INO, b"x", 0).expect("rename");
    assert_eq!(xattr_of(&l.roots[0].join("x"), "trusted.overlay.redirect"), Some(b"/a/c".to_vec()));
    drop(u);
    let u = l.union_with_upper();
    assert_eq!(read(&u, "x/f"), "moved twice");
}

// ---- SELinux labels: ENOTSUP for security.selinux only once no layer carries one ----

mod labels {
    use std::collections::HashMap;
    use std::os::fd::AsFd;
    use std::path::PathBuf;
    use std::sync::Mutex;

    use super::super::labels::{LabelState, NoCache, ScanCache};
    use super::*;

    const LABEL: &[u8] = b"system_u:object_r:etc_t:s0";

    fn selinux(u: &Union, path: &str) -> Result<Vec<u8>, sys::Errno> {
        u.getxattr(resolve(u, path), b"security.selinux")
    }

    fn scan(u: &Union) -> LabelState {
        u.label_scan().expect("scan").run(&NoCache)
    }

    /// Kept results given up front; what the scan asks to keep, recorded.
    #[derive(Default)]
    struct Kept {
        known: HashMap<PathBuf, bool>,
        remembered: Mutex<Vec<(PathBuf, bool)>>,
    }

    impl ScanCache for Kept {
        fn known(&self, layer: &std::path::Path) -> Option<bool> {
            self.known.get(layer).copied()
        }
        fn remember(&self, layer: &std::path::Path, labelled: bool) {
            self.remembered.lock().unwrap().push((layer.to_path_buf(), labelled));
        }
    }

    fn stack() -> Layers {
        let l = Layers::new(3);
        l.file(0, "up/new", "u").file(1, "etc/mid", "m").file(2, "etc/passwd", "root").dir(2, "var/empty");
        l.xattr(2, "etc/passwd", "user.keep", b"v");
        l
    }

    #[test]
    fn an_unlabelled_stack_answers_enotsup_for_selinux_once_scanned() {
        let l = stack();
        let u = l.union_with_upper();
        // Until the scan says so: as stored.
        assert_eq!(selinux(&u, "etc/passwd"), Err(sys::Errno::ENODATA));
        assert_eq!(scan(&u), LabelState::Unlabelled);
        for path in ["etc/passwd", "etc/mid", "up/new", "var/empty", "etc"] {
            assert_eq!(selinux(&u, path), Err(sys::Errno::ENOTSUP), "{path}");
        }
        assert_eq!(u.getxattr(ROOT_INO, b"security.selinux"), Err(sys::Errno::ENOTSUP));
        // Every other name is still asked of the layers, and the lists are unchanged.
        let passwd = resolve(&u, "etc/passwd");
        assert_eq!(u.getxattr(passwd, b"user.keep"), Ok(b"v".to_vec()));
        assert_eq!(u.getxattr(passwd, b"security.capability"), Err(sys::Errno::ENODATA));
        assert_eq!(u.listxattr(passwd), Ok(b"user.keep\0".to_vec()));
    }

    #[test]
    fn a_label_in_any_layer_keeps_every_answer_as_stored() {
        for layer in 0..3 {
            let l = stack();
            l.file(layer, "deep/er/labelled", "x").xattr(layer, "deep/er/labelled", "security.selinux", LABEL);
            let u = l.union_with_upper();
            assert_eq!(scan(&u), LabelState::Labelled, "label in layer {layer}");
            assert_eq!(selinux(&u, "deep/er/labelled"), Ok(LABEL.to_vec()));
            assert_eq!(selinux(&u, "etc/passwd"), Err(sys::Errno::ENODATA));
        }
        // A label on a layer's root directory counts too.
        let l = stack();
        l.xattr(2, ".", "security.selinux", LABEL);
        assert_eq!(scan(&l.union()), LabelState::Labelled);
    }

    /// A label below PATH_MAX's reach is found (the walk goes through `sys`' deep paths), and
    /// a deep tree without one scans clean, not "unreadable".
    #[test]
    fn a_label_deeper_than_path_max_is_found() {
        for labelled in [false, true] {
            let l = stack();
            let root = sys::open_dir(&l.roots[2]).expect("open");
            let comp = vec![b'd'; 250];
            let mut path = Vec::new();
            for _ in 0..20 {
                if !path.is_empty() {
                    path.push(b'/');
                }
                path.extend_from_slice(&comp);
                sys::mkdirat(root.as_fd(), &sys::cstring(&path).unwrap(), 0o755).expect("mkdir deep");
            }
            let file = sys::cstring(&[path.as_slice(), b"/f"].concat()).unwrap();
            assert!(file.to_bytes().len() > libc::PATH_MAX as usize);
            drop(sys::open_beneath_mode(root.as_fd(), &file, libc::O_CREAT | libc::O_WRONLY, 0o644).expect("create deep"));
            if labelled {
                let p = sys::fd_relative_path(root.as_fd(), file.to_bytes()).expect("proc path");
                sys::lsetxattr(&p, c"security.selinux", LABEL).expect("label deep (needs root)");
            }
            let expected = if labelled { LabelState::Labelled } else { LabelState::Unlabelled };
            assert_eq!(scan(&l.union_with_upper()), expected);
        }
    }

    #[test]
    fn a_label_set_through_the_mount_after_the_scan_turns_enotsup_off_for_good() {
        let l = stack();
        let u = l.union_with_upper();
        assert_eq!(scan(&u), LabelState::Unlabelled);
        let passwd = resolve(&u, "etc/passwd");
        u.setxattr(passwd, b"security.selinux", LABEL, 0).expect("setxattr (copies up)");
        assert_eq!(selinux(&u, "etc/passwd"), Ok(LABEL.to_vec()));
        assert_eq!(selinux(&u, "etc/mid"), Err(sys::Errno::ENODATA));
        // Removing it again does not bring ENOTSUP back.
        u.removexattr(passwd, b"security.selinux").expect("removexattr");
        assert_eq!(selinux(&u, "etc/passwd"), Err(sys::Errno::ENODATA));
        // Nor does another scan.
        assert_eq!(scan(&u), LabelState::Labelled);
        assert_eq!(selinux(&u, "etc/mid"), Err(sys::Errno::ENODATA));
    }

    #[test]
    fn other_xattrs_set_through_the_mount_change_nothing() {
        let l = stack();
        let u = l.union_with_upper();
        u.setxattr(resolve(&u, "etc/passwd"), b"user.other", b"1", 0).expect("setxattr");
        assert_eq!(scan(&u), LabelState::Unlabelled);
        assert_eq!(selinux(&u, "etc/passwd"), Err(sys::Errno::ENOTSUP));
    }

    #[test]
    fn kept_results_spare_the_scan_and_new_ones_are_kept() {
        let l = stack();
        // Layer 1 carries a label, but its kept result says clean: it is not scanned again.
        l.xattr(1, "etc/mid", "security.selinux", LABEL);
        let kept = Kept { known: [(l.roots[1].clone(), false)].into(), ..Default::default() };
        assert_eq!(l.union_with_upper().label_scan().unwrap().run(&kept), LabelState::Unlabelled);
        // The other lower was scanned and its result kept; the upper never is (it changes).
        assert_eq!(*kept.remembered.lock().unwrap(), vec![(l.roots[2].clone(), false)]);
        // A kept "labelled" settles at once, scanning nothing.
        let kept = Kept { known: [(l.roots[1].clone(), true)].into(), ..Default::default() };
        assert_eq!(l.union_with_upper().label_scan().unwrap().run(&kept), LabelState::Labelled);
        assert!(kept.remembered.lock().unwrap().is_empty());
        // A labelled layer scanned is kept as labelled.
        let kept = Kept::default();
        assert_eq!(l.union_with_upper().label_scan().unwrap().run(&kept), LabelState::Labelled);
        assert_eq!(*kept.remembered.lock().unwrap(), vec![(l.roots[1].clone(), true)]);
    }

    /// A copy-up carrying a label into the upper turns ENOTSUP off, whatever a scan says.
    #[test]
    fn a_copy_up_carrying_a_label_turns_enotsup_off() {
        let l = stack();
        l.xattr(1, "etc/mid", "security.selinux", LABEL);
        let u = l.union_with_upper();
        let mid = resolve(&u, "etc/mid");
        u.setxattr(mid, b"user.touch", b"1", 0).expect("setxattr (copies up)");
        assert_eq!(u.labels().state(), LabelState::Labelled);
        // Even a kept result that (wrongly) calls every lower clean cannot settle ENOTSUP.
        let kept = Kept { known: [(l.roots[1].clone(), false), (l.roots[2].clone(), false)].into(), ..Default::default() };
        assert_eq!(u.label_scan().unwrap().run(&kept), LabelState::Labelled);
        assert_eq!(selinux(&u, "etc/mid"), Ok(LABEL.to_vec()));
    }

    /// A rename in the upper overlapping every attempt at its scan leaves the answers as
    /// stored (a moved tree may have slipped past the walk); one before the scan does not.
    #[test]
    fn renames_during_the_upper_scan_keep_the_answers_as_stored() {
        let l = stack();
        let u = l.union_with_upper();
        let renaming = u.labels().renaming();
        assert_eq!(scan(&u), LabelState::Unknown);
        assert_eq!(selinux(&u, "etc/passwd"), Err(sys::Errno::ENODATA));
        drop(renaming);
        u.rename(ROOT_INO, b"up", ROOT_INO, b"moved", 0).expect("rename");
        assert_eq!(scan(&u), LabelState::Unlabelled);
    }

    #[test]
    fn a_scan_of_a_mount_gone_settles_nothing() {
        let l = stack();
        let mut u = l.union_with_upper();
        let scan = u.label_scan().expect("scan");
        u.release_all();
        assert_eq!(scan.run(&NoCache), LabelState::Unknown);
        assert_eq!(u.labels().state(), LabelState::Unknown);
    }
}

/// What the FUSE glue hands to its pool: a change that copies a file up (or, for a metacopy
/// file, its data) first; a file already up, a directory and a read-only stack need none.
#[test]
fn needs_copy_up_says_which_changes_copy_a_file_up_first() {
    let l = Layers::new(2);
    l.file(1, "f", "lower data").file(1, "g", "g").dir(1, "d");
    let mut u = l.union_with_upper();
    assert!(u.needs_copy_up(resolve(&u, "f")));
    assert!(!u.needs_copy_up(resolve(&u, "d")), "a directory copies up no data");
    chmod(&u, "f", 0o600);
    assert!(!u.needs_copy_up(resolve(&u, "f")), "copied up");
    u.set_metacopy(true);
    chmod(&u, "g", 0o600);
    assert!(u.needs_copy_up(resolve(&u, "g")), "a metacopy file's data is still below");
    let ro = l.union();
    assert!(!ro.needs_copy_up(resolve(&ro, "f")), "a read-only stack copies nothing up");
}
