//! Containers back into images: `diff`, `commit`, `export`, `import`, through real mounts. The
//! base is the pull tests' umoci-built `app` image, pulled from a local registry; the
//! committed layer is read back by shalefs and, independently, by GNU tar + kernel overlayfs.

use std::ffi::CString;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::pull::fixture;
use crate::util::registry::{Auth, Registry, listing};
use crate::util::tree::{assert_same_content, xattrs};
use crate::util::{KernelOverlay, ShaleMount, TestDir, Tree, run, run_ok, shalefs_bin};

fn shalefs(store: &Path) -> Command {
    let mut c = Command::new(shalefs_bin());
    c.arg("--root").arg(store).env_remove("SOURCE_DATE_EPOCH").env("HOME", store.parent().unwrap_or(store));
    c
}

/// Run a shalefs command that must fail: its stderr, checked to be one line.
fn fails(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(!out.status.success(), "{cmd:?} should have failed: {}", String::from_utf8_lossy(&out.stdout));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(err.trim_end().lines().count(), 1, "not a one-line error: {err}");
    err
}

/// A store with the `app` image pulled from a registry started for this test.
fn store_with_app(dir: &TestDir) -> (PathBuf, String) {
    let f = fixture();
    let reg = Registry::start(dir.path(), Auth::None);
    let image = format!("{}/test/app:1", reg.host());
    f.app.push(&image, &[]);
    let store = dir.path().join("store");
    run_ok(shalefs(&store).args(["pull", "--quiet", &image]));
    (store, image)
}

/// `mount IMAGE` as a new container (foreground, so the guard reaps it).
fn mount_new(store: &Path, image: &str, name: &str, mnt: &Path, extra: &[&str]) -> ShaleMount {
    let mut args: Vec<std::ffi::OsString> = vec!["--root".into(), store.into(), image.into(), "--name".into(), name.into()];
    args.extend(extra.iter().map(Into::into));
    ShaleMount::foreground(&args, mnt).unwrap_or_else(|e| panic!("{e}"))
}

fn mount_container(store: &Path, name: &str, mnt: &Path) -> ShaleMount {
    ShaleMount::foreground(&["--root".into(), store.into(), "--container".into(), name.into()], mnt).unwrap_or_else(|e| panic!("{e}"))
}

fn inspect(store: &Path, image: &str) -> serde_json::Value {
    let out = run_ok(shalefs(store).args(["inspect", image]));
    let v: serde_json::Value = serde_json::from_str(&out).expect("inspect prints JSON");
    v[0].clone()
}

/// The image's layer directories, top first.
fn layer_dirs(store: &Path, image: &str) -> Vec<PathBuf> {
    inspect(store, image)["LayerDirs"].as_array().expect("LayerDirs").iter().map(|d| PathBuf::from(d.as_str().unwrap())).collect()
}

/// The committed (top) layer's blob file.
fn top_blob(store: &Path, image: &str) -> PathBuf {
    let v = inspect(store, image);
    let digest = v["Layers"].as_array().and_then(|l| l.last()).and_then(|l| l["Digest"].as_str()).expect("a layer").to_string();
    store.join("blobs/sha256").join(digest.trim_start_matches("sha256:"))
}

/// A tree as compared across a mount and another reader: without the root's own attributes
/// (a container's root is its upper's) and directory link counts (a merged directory says 1).
fn comparable(root: &Path) -> Tree {
    let mut t = Tree::walk(root);
    t.entries.retain(|p, _| !p.is_empty());
    for e in t.entries.values_mut() {
        if e.mode & libc::S_IFMT == libc::S_IFDIR {
            e.nlink = 0;
        }
    }
    t
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    let p = CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    // SAFETY: both strings are NUL-terminated; `value` is readable for its length.
    let r = unsafe { libc::lsetxattr(p.as_ptr(), n.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    assert_eq!(r, 0, "setxattr {name} on {}: {}", path.display(), std::io::Error::last_os_error());
}

/// `cap_net_raw+ep`, as `setcap` writes it (VFS_CAP_REVISION_2, effective).
const CAP_NET_RAW_EP: [u8; 20] = [1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

/// Every kind of change a container makes, through the mount: busybox in a chroot for some,
/// plain file operations for the rest.
fn change_everything(mnt: &Path) {
    run_ok(Command::new("chroot").arg(mnt).args([
        "/bin/busybox",
        "sh",
        "-c",
        "echo added > /etc/added && echo more >> /etc/greeting && /bin/busybox mv /data/dir1 /moved && \
         /bin/busybox rm -rf /data && /bin/busybox rm /srv/abs",
    ]));
    // A directory replaced by a file, a file (symlink) by a directory. (Not /srv: removing
    // names of a lower hard-link group changes the count only the container's mount sees.)
    std::fs::remove_dir_all(mnt.join("usr/share")).unwrap();
    std::fs::write(mnt.join("usr/share"), "now a file\n").unwrap();
    std::fs::remove_file(mnt.join("bin/stat")).unwrap();
    std::fs::create_dir(mnt.join("bin/stat")).unwrap();
    std::fs::write(mnt.join("bin/stat/inner"), "inner\n").unwrap();
    // Hard links: among new files, and to a lower file.
    std::fs::hard_link(mnt.join("etc/added"), mnt.join("etc/added-link")).unwrap();
    std::fs::hard_link(mnt.join("etc/greeting"), mnt.join("etc/greeting2")).unwrap();
    // A chmod of a lower file (metadata only on a metacopy=on container).
    std::fs::set_permissions(mnt.join("bin/busybox"), std::fs::Permissions::from_mode(0o750)).unwrap();
    set_xattr(&mnt.join("etc/added"), "user.note", b"kept");
    // A set-uid binary owned by someone else, and a file with a capability.
    std::fs::copy(mnt.join("bin/busybox"), mnt.join("bin/suid-new")).unwrap();
    std::os::unix::fs::chown(mnt.join("bin/suid-new"), Some(1000), Some(1000)).unwrap();
    std::fs::set_permissions(mnt.join("bin/suid-new"), std::fs::Permissions::from_mode(0o4755)).unwrap();
    std::fs::write(mnt.join("etc/capfile"), "cap\n").unwrap();
    set_xattr(&mnt.join("etc/capfile"), "security.capability", &CAP_NET_RAW_EP);
}

const EXPECTED_DIFF: &str = "\
C /bin
C /bin/busybox
C /bin/stat
A /bin/stat/inner
A /bin/suid-new
D /data
C /etc
A /etc/added
A /etc/added-link
A /etc/capfile
C /etc/greeting
A /etc/greeting2
A /moved
A /moved/c
C /srv
D /srv/abs
C /usr
C /usr/share
";

/// GNU tar extracts the layer; the `.wh.` entries are turned into overlayfs' whiteouts and
/// opaque marks by hand (restoring the parents' times), so kernel overlayfs can stack it.
fn gnu_unpack_as_overlay_layer(blob: &Path, dest: &Path) {
    std::fs::create_dir_all(dest).unwrap();
    run_ok(Command::new("tar").args(["--xattrs", "--xattrs-include=*", "--numeric-owner", "-xzf"]).arg(blob).arg("-C").arg(dest));
    fn convert(dir: &Path) {
        let meta = std::fs::symlink_metadata(dir).unwrap();
        let mut changed = false;
        for entry in std::fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name();
            let name = name.as_bytes();
            let path = entry.path();
            if name == b".wh..wh..opq" {
                std::fs::remove_file(&path).unwrap();
                set_xattr(dir, "trusted.overlay.opaque", b"y");
                changed = true;
            } else if let Some(hidden) = name.strip_prefix(b".wh.") {
                std::fs::remove_file(&path).unwrap();
                run_ok(Command::new("mknod").arg(dir.join(std::ffi::OsStr::from_bytes(hidden))).args(["c", "0", "0"]));
                changed = true;
            } else if entry.file_type().unwrap().is_dir() {
                convert(&path);
            }
        }
        if changed {
            let t = |s: i64, ns: i64| format!("@{s}.{ns:09}");
            run_ok(Command::new("touch").args(["-h", "-d", &t(meta.mtime(), meta.mtime_nsec())]).arg(dir));
        }
    }
    convert(dest);
}

#[test]
fn commit_round_trip_diff_lines_and_an_independent_reader_see_the_container() {
    let dir = TestDir::new("commit-round-trip");
    let (store, image) = store_with_app(&dir);
    let mnt = dir.mkdir("mnt");
    let m = mount_new(&store, &image, "rt1", &mnt, &["--metacopy"]);
    change_everything(&mnt);
    // The chmod really made a metadata-only copy: the test covers metacopy files.
    let upper = store.join("containers/rt1/upper");
    assert!(xattrs(&upper.join("bin/busybox")).contains_key(b"trusted.overlay.metacopy".as_slice()), "no metacopy copy-up happened");
    assert!(xattrs(&upper.join("moved")).contains_key(b"trusted.overlay.redirect".as_slice()), "the rename made no redirect");

    let diff = run_ok(shalefs(&store).args(["diff", "rt1"]));
    assert_eq!(diff, EXPECTED_DIFF);

    let container = comparable(&mnt);
    // Committed while mounted (paused by default); the mount keeps working afterwards.
    let id = run_ok(shalefs(&store).args(["commit", "-m", "everything", "rt1", "localhost/committed:1"])).trim().to_string();
    assert!(id.starts_with("sha256:") && id.len() == 71, "{id}");
    std::fs::write(mnt.join("srv-after"), "still writable\n").unwrap();
    assert_eq!(std::fs::read_to_string(mnt.join("srv-after")).unwrap(), "still writable\n");

    // The new image, mounted read-only by shalefs, shows the container's tree.
    let dirs = layer_dirs(&store, "localhost/committed:1");
    let img_mnt = dir.mkdir("image");
    let im = ShaleMount::lowers(&dirs.iter().map(PathBuf::as_path).collect::<Vec<_>>(), &img_mnt);
    let image_tree = comparable(&img_mnt);
    assert_same_content(&image_tree, &container);
    assert_eq!(xattrs(&img_mnt.join("etc/capfile")).get(b"security.capability".as_slice()), Some(&CAP_NET_RAW_EP.to_vec()));
    assert_eq!(std::fs::metadata(img_mnt.join("bin/suid-new")).unwrap().mode() & 0o7777, 0o4755);
    drop(im);

    // GNU tar + kernel overlayfs over the parent's layers read the same tree.
    let unpacked = dir.path().join("gnu-layer");
    gnu_unpack_as_overlay_layer(&top_blob(&store, "localhost/committed:1"), &unpacked);
    let mut lowers: Vec<&Path> = vec![&unpacked];
    lowers.extend(dirs[1..].iter().map(PathBuf::as_path));
    let kmnt = dir.mkdir("kernel");
    let k = KernelOverlay::lowers(&lowers, &kmnt);
    let kernel_tree = comparable(&kmnt);
    assert_same_content(&kernel_tree, &container);
    assert_eq!(xattrs(&kmnt.join("etc/capfile")).get(b"security.capability".as_slice()), Some(&CAP_NET_RAW_EP.to_vec()));
    drop(k);

    // No overlay-private xattr leaked into the layer.
    let listing = run_ok(Command::new("tar").args(["--xattrs", "--xattrs-include=*", "-tvvzf"]).arg(top_blob(&store, "localhost/committed:1")));
    assert!(!listing.contains("overlay"), "{listing}");
    drop(m);
}

/// Make the same small change in a container.
fn change_a_little(mnt: &Path) {
    std::fs::write(mnt.join("etc/new"), "same\n").unwrap();
    std::fs::remove_file(mnt.join("etc/greeting")).unwrap();
    std::fs::create_dir(mnt.join("opt")).unwrap();
    set_xattr(&mnt.join("etc/new"), "user.k", b"v");
}

#[test]
fn commits_of_equal_content_with_a_timestamp_give_the_same_digests() {
    let dir = TestDir::new("commit-reproducible");
    let (store, image) = store_with_app(&dir);
    for name in ["r1", "r2"] {
        let mnt = dir.mkdir(name);
        let _m = mount_new(&store, &image, name, &mnt, &[]);
        change_a_little(&mnt);
    }
    // The containers' files have different times; both are clamped.
    std::thread::sleep(Duration::from_millis(1100));
    let a = run_ok(shalefs(&store).args(["commit", "--timestamp", "1700000000", "-m", "m", "r1"]));
    let b = run_ok(shalefs(&store).args(["commit", "-m", "m", "r2"]).env("SOURCE_DATE_EPOCH", "1700000000"));
    assert_eq!(a, b, "equal content and time gave different image ids");
    let again = run_ok(shalefs(&store).args(["commit", "--timestamp", "1700000000", "-m", "m", "r1"]));
    assert_eq!(a, again);
    let v = inspect(&store, a.trim());
    assert_eq!(v["Created"], "2023-11-14T22:13:20Z");
    // zstd and uncompressed blobs of the same content share the DiffID, not the digest.
    let z = run_ok(shalefs(&store).args(["commit", "--timestamp", "1700000000", "--compression", "zstd", "-m", "m", "r1"]));
    let vz = inspect(&store, z.trim());
    let last = |v: &serde_json::Value| v["Layers"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last(&v)["DiffID"], last(&vz)["DiffID"]);
    assert_ne!(last(&v)["Digest"], last(&vz)["Digest"]);
    assert_eq!(last(&vz)["MediaType"], "application/vnd.oci.image.layer.v1.tar+zstd");
    // Without a timestamp the history time is now, so the id differs.
    let now = run_ok(shalefs(&store).args(["commit", "-m", "m", "r1"]));
    assert_ne!(a, now);
}

const RECORD: usize = 9;

fn record(i: u64) -> Vec<u8> {
    format!("{i:08}\n").into_bytes()
}

fn parse_record(r: &[u8]) -> u64 {
    assert!(r.len() == RECORD && r[8] == b'\n', "torn record {:?}", String::from_utf8_lossy(r));
    std::str::from_utf8(&r[..8]).unwrap().parse().unwrap_or_else(|_| panic!("torn record {:?}", String::from_utf8_lossy(r)))
}

#[test]
fn a_commit_during_writes_takes_one_point_in_time() {
    let dir = TestDir::new("commit-writes");
    let (store, image) = store_with_app(&dir);
    let mnt = dir.mkdir("mnt");
    let _m = mount_new(&store, &image, "w1", &mnt, &[]);
    // A big incompressible file the commit takes a while to compress; the writer stamps its
    // first and last record, so a commit reading it over time would see two different stamps.
    let big_len = 48usize << 20;
    let mut x: u64 = 0x9e3779b97f4a7c15;
    let noise: Vec<u8> = (0..big_len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    std::fs::write(mnt.join("big"), &noise).unwrap();
    drop(noise);
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let writer = {
        let (stop, written, mnt) = (stop.clone(), written.clone(), mnt.clone());
        std::thread::spawn(move || {
            use std::os::unix::fs::FileExt;
            let mut log = std::fs::OpenOptions::new().create(true).append(true).open(mnt.join("log")).unwrap();
            let big = std::fs::OpenOptions::new().write(true).open(mnt.join("big")).unwrap();
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                log.write_all(&record(i)).unwrap();
                big.write_all_at(&record(i), 0).unwrap();
                big.write_all_at(&record(i), (big_len - RECORD) as u64).unwrap();
                i += 1;
                written.store(i, Ordering::SeqCst);
            }
        })
    };
    while written.load(Ordering::SeqCst) < 200 {
        std::thread::sleep(Duration::from_millis(10));
    }
    let id = run_ok(shalefs(&store).args(["commit", "w1"])).trim().to_string();
    let after_commit = written.load(Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::SeqCst);
    writer.join().expect("the writer failed");
    let total = written.load(Ordering::SeqCst);

    let out = dir.path().join("layer");
    std::fs::create_dir_all(&out).unwrap();
    run_ok(Command::new("tar").arg("-xzf").arg(top_blob(&store, &id)).arg("-C").arg(&out));
    let log = std::fs::read(out.join("log")).unwrap();
    assert_eq!(log.len() % RECORD, 0, "the log ends in a torn record");
    let n = (log.len() / RECORD) as u64;
    for (i, r) in log.chunks(RECORD).enumerate() {
        assert_eq!(parse_record(r), i as u64, "records out of order");
    }
    let big = std::fs::read(out.join("big")).unwrap();
    let head = parse_record(&big[..RECORD]);
    let tail = parse_record(&big[big_len - RECORD..]);
    // One instant: the writer does log(i), head(i), tail(i) in that order.
    assert!(n >= 1 && (head == n - 1 || head + 2 == n), "log has {n} records, head stamp {head}");
    assert!(tail == head || tail + 1 == head, "head {head} and tail {tail} are from different moments");
    // Writes waited during the commit and went on after it.
    assert!(total > after_commit && total > n + 10, "the writer stalled: {total} written, {n} committed");
}

#[test]
fn bad_input_fails_in_one_line_and_leaves_the_store_unchanged() {
    let dir = TestDir::new("commit-bad");
    let (store, image) = store_with_app(&dir);
    let mnt = dir.mkdir("mnt");
    // A layer's label record is the mounts' cache, written whenever a mount's background scan
    // completes (the second mount below may finish what the first began): not a commit's doing.
    let layers = |store: &Path| listing(&store.join("layers")).into_iter().filter(|n| !n.ends_with(".labels.json")).collect::<Vec<_>>();
    let snapshot = |store: &Path| (listing(&store.join("images")), layers(store), std::fs::read(store.join("repositories.json")).ok());
    {
        let _m = mount_new(&store, &image, "b1", &mnt, &[]);
        std::fs::write(mnt.join("etc/ok"), "fine\n").unwrap();
    }
    let before = snapshot(&store);
    let err = fails(shalefs(&store).args(["commit", "nosuch"]));
    assert!(err.contains("no such container: nosuch"), "{err}");
    let err = fails(shalefs(&store).args(["commit", "-c", "RUN make", "b1"]));
    assert!(err.contains("unknown instruction RUN"), "{err}");
    let err = fails(shalefs(&store).args(["commit", "-c", "EXPOSE eighty", "b1"]));
    assert!(err.contains("invalid port"), "{err}");
    {
        let _m = mount_container(&store, "b1", &mnt);
        std::fs::write(mnt.join("etc/.wh.sneaky"), "a user's file\n").unwrap();
    }
    let err = fails(shalefs(&store).args(["commit", "b1", "localhost/bad:1"]));
    assert!(err.contains("/etc/.wh.sneaky") && err.contains("whiteout"), "{err}");
    assert_eq!(snapshot(&store), before);
    assert!(listing(&store.join("tmp")).is_empty(), "{:?}", listing(&store.join("tmp")));

    // Imports of a truncated and a corrupt tar.
    let src = dir.mkdir("src");
    std::fs::write(src.join("f"), vec![7u8; 200_000]).unwrap();
    let (tar, _) = crate::util::registry::gnu_tar(&src);
    let cut = dir.path().join("cut.tar");
    std::fs::write(&cut, &tar[..tar.len() / 2]).unwrap();
    let err = fails(shalefs(&store).args(["import"]).arg(&cut));
    assert!(err.contains("cut.tar"), "{err}");
    let gz = crate::util::registry::compress_with("gzip", &[], &tar);
    let cut_gz = dir.path().join("cut.tar.gz");
    std::fs::write(&cut_gz, &gz[..gz.len() / 2]).unwrap();
    let err = fails(shalefs(&store).args(["import"]).arg(&cut_gz));
    assert!(err.contains("cut.tar.gz"), "{err}");
    let junk = dir.path().join("junk");
    std::fs::write(&junk, b"this is not a tar at all, just some text that is long enough ......").unwrap();
    let err = fails(shalefs(&store).args(["import"]).arg(&junk));
    assert!(err.contains("not a tar archive"), "{err}");
    assert_eq!(snapshot(&store), before);
    assert!(listing(&store.join("tmp")).is_empty(), "{:?}", listing(&store.join("tmp")));
}

/// A small filesystem for the store, unmounted on drop.
struct SmallFs(PathBuf);

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_during_commit_fails_clearly_and_leaves_nothing() {
    let dir = TestDir::new("commit-full");
    let store = dir.mkdir("store");
    run_ok(Command::new("mount").args(["-t", "tmpfs", "-o", "size=12m", "shalefs-test-commit-full"]).arg(&store));
    let _fs = SmallFs(store.clone());
    // A base imported from a GNU tar (busybox), then a container that writes 4 MiB of noise:
    // the blob and the unpacked layer (8 MiB more) do not fit.
    let src = dir.mkdir("src");
    std::fs::create_dir(src.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", src.join("bin/busybox")).unwrap();
    let (tar, _) = crate::util::registry::gnu_tar(&src);
    let tar_path = dir.path().join("base.tar.gz");
    std::fs::write(&tar_path, crate::util::registry::compress_with("gzip", &[], &tar)).unwrap();
    run_ok(shalefs(&store).args(["import"]).arg(&tar_path).arg("localhost/base:1"));
    let mnt = dir.mkdir("mnt");
    {
        let _m = mount_new(&store, "localhost/base:1", "full", &mnt, &[]);
        let mut x: u64 = 88172645463325252;
        let noise: Vec<u8> = (0..4 << 20)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        std::fs::write(mnt.join("noise"), noise).unwrap();
    }
    let images = listing(&store.join("images"));
    let layers = listing(&store.join("layers"));
    let err = fails(shalefs(&store).args(["commit", "full", "localhost/full:1"]));
    assert!(err.contains("No space left on device") && err.contains("committing container full"), "{err}");
    assert_eq!(listing(&store.join("images")), images);
    assert_eq!(listing(&store.join("layers")), layers);
    assert!(listing(&store.join("tmp")).is_empty(), "{:?}", listing(&store.join("tmp")));
}

#[test]
fn committed_and_imported_images_list_inspect_remove_and_prune_like_pulled_ones() {
    let dir = TestDir::new("commit-records");
    let (store, image) = store_with_app(&dir);
    let mnt = dir.mkdir("mnt");
    {
        let _m = mount_new(&store, &image, "h1", &mnt, &[]);
        std::fs::write(mnt.join("etc/child"), "child\n").unwrap();
    }
    let id = run_ok(shalefs(&store).args([
        "commit", "-m", "a message", "-a", "Jane <jane@example.com>", "-c", "CMD [\"/bin/sh\",\"-c\",\"echo hi\"]",
        "-c", "ENV MODE=child", "-c", "WORKDIR /srv", "-c", "LABEL tier=test", "-c", "EXPOSE 8080", "-c", "USER 1000",
        "-c", "VOLUME /data", "-c", "STOPSIGNAL SIGINT", "-c", "ENTRYPOINT /bin/sh", "h1", "localhost/child:2",
    ]))
    .trim()
    .to_string();
    let images = run_ok(shalefs(&store).arg("images"));
    assert!(images.contains("localhost/child") && images.contains(" 2 ") && images.contains(&id[7..19]), "{images}");
    let history = run_ok(shalefs(&store).args(["history", "localhost/child:2"]));
    let top = history.lines().nth(1).unwrap_or_default();
    assert!(top.starts_with(&id[7..19]) && top.contains("shalefs commit") && top.contains("a message"), "{history}");
    assert!(history.contains("umoci raw add-layer"), "the parent's history is kept: {history}");
    let v = inspect(&store, "localhost/child:2");
    let c = &v["Config"];
    assert_eq!(c["Cmd"], serde_json::json!(["/bin/sh", "-c", "echo hi"]));
    assert_eq!(c["Entrypoint"], serde_json::json!(["/bin/sh", "-c", "/bin/sh"]));
    assert!(c["Env"].as_array().unwrap().contains(&serde_json::json!("MODE=child")), "{c}");
    assert_eq!((c["WorkingDir"].as_str(), c["User"].as_str(), c["StopSignal"].as_str()), (Some("/srv"), Some("1000"), Some("SIGINT")));
    assert_eq!((&c["Labels"]["tier"], &c["ExposedPorts"]["8080/tcp"], &c["Volumes"]["/data"]), (&serde_json::json!("test"), &serde_json::json!({}), &serde_json::json!({})));
    assert_eq!(v["RootFS"]["diff_ids"].as_array().unwrap().len(), 4);
    // The blob is kept for save and push, and is what the manifest says.
    let blob = top_blob(&store, "localhost/child:2");
    assert_eq!(crate::util::registry::sha256_hex(&std::fs::read(&blob).unwrap()), blob.file_name().unwrap().to_string_lossy());

    // rmi of the parent keeps what the child needs.
    run_ok(shalefs(&store).args(["rm", "h1"]));
    let out = run_ok(shalefs(&store).args(["rmi", &image]));
    assert!(out.contains("Deleted: sha256:") && !out.contains("Deleted layer"), "{out}");
    let cmnt = dir.mkdir("child");
    {
        let _m = mount_new(&store, "localhost/child:2", "h2", &cmnt, &[]);
        assert_eq!(std::fs::read_to_string(cmnt.join("etc/child")).unwrap(), "child\n");
        assert_eq!(std::fs::read_to_string(cmnt.join("etc/greeting")).unwrap(), "hello\n");
    }
    run_ok(shalefs(&store).args(["rm", "h2"]));

    // An import (zstd) of a GNU tar mounts as the tree it came from; unnamed, prune removes it.
    let src = dir.mkdir("src");
    std::fs::create_dir_all(src.join("a/b")).unwrap();
    std::fs::write(src.join("a/b/f"), "imported\n").unwrap();
    std::os::unix::fs::symlink("b/f", src.join("a/link")).unwrap();
    let (tar, _) = crate::util::registry::gnu_tar(&src);
    let zst = dir.path().join("rootfs.tar.zst");
    std::fs::write(&zst, crate::util::registry::compress_with("zstd", &["-q"], &tar)).unwrap();
    let imported = run_ok(shalefs(&store).args(["import", "-m", "from zstd"]).arg(&zst)).trim().to_string();
    let imnt = dir.mkdir("imported");
    let dirs = layer_dirs(&store, &imported);
    {
        let _m = ShaleMount::lowers(&dirs.iter().map(PathBuf::as_path).collect::<Vec<_>>(), &imnt);
        assert_same_content(&comparable(&imnt), &comparable(&src));
    }
    let history = run_ok(shalefs(&store).args(["history", &imported]));
    assert!(history.contains("shalefs import") && history.contains("from zstd"), "{history}");
    let imported_blob = top_blob(&store, &imported);
    assert!(imported_blob.exists());
    let out = run_ok(shalefs(&store).arg("prune"));
    assert!(out.contains(&format!("Deleted image: {imported}")) && out.contains("Removed 1 images and 1 layers"), "{out}");
    assert!(!imported_blob.exists(), "the removed layer's blob stayed");
    run_ok(shalefs(&store).args(["rmi", "localhost/child:2"]));
    assert!(listing(&store.join("layers")).is_empty(), "{:?}", listing(&store.join("layers")));
}

#[test]
fn export_writes_the_merged_view_as_a_plain_tar() {
    let dir = TestDir::new("commit-export");
    let (store, image) = store_with_app(&dir);
    let mnt = dir.mkdir("mnt");
    let m = mount_new(&store, &image, "e1", &mnt, &["--metacopy"]);
    change_everything(&mnt);
    // A tar holds only the names it holds: a lower file's link count is not carried over.
    let loose = |root: &Path| {
        let mut t = comparable(root);
        t.entries.values_mut().for_each(|e| e.nlink = 0);
        t
    };
    let want = loose(&mnt);
    drop(m);
    let file = dir.path().join("e1.tar");
    run_ok(shalefs(&store).args(["export", "e1", "-o"]).arg(&file));
    let out = dir.mkdir("extracted");
    run_ok(Command::new("tar").args(["--xattrs", "--xattrs-include=*", "--numeric-owner", "-xf"]).arg(&file).arg("-C").arg(&out));
    assert_same_content(&loose(&out), &want);
    // To standard output, byte for byte the same.
    let Output { stdout, status, .. } = run(shalefs(&store).args(["export", "e1"]));
    assert!(status.success());
    assert!(stdout == std::fs::read(&file).unwrap(), "export to stdout differs from -o");
}
