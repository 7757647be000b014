//! Pulling from a real registry (Debian's docker-registry on 127.0.0.1), images built by umoci
//! and skopeo or pushed through the registry's upload API; then mounting what was pulled.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::util::registry::{self, Auth, Proxy, ProxyBehaviour, Registry, UmociImage, listing};
use crate::util::tree::assert_same_content;
use crate::util::{ShaleMount, TestDir, Tree, run, run_ok, shalefs_bin};

pub(crate) fn shalefs(store: &Path) -> Command {
    let mut c = Command::new(shalefs_bin());
    c.arg("--root")
        .arg(store)
        .env_remove("SHALEFS_REGISTRIES_CONF")
        .env_remove("CONTAINERS_REGISTRIES_CONF")
        .env("HOME", store.parent().unwrap_or(store));
    c
}

fn pull(store: &Path, reference: &str, extra: &[&str]) -> Output {
    run(shalefs(store).arg("pull").args(extra).arg(reference))
}

fn pull_ok(store: &Path, reference: &str, extra: &[&str]) -> String {
    let out = pull(store, reference, extra);
    assert!(out.status.success(), "pull {reference} failed: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn pull_err(store: &Path, reference: &str, extra: &[&str]) -> String {
    let out = pull(store, reference, extra);
    assert!(!out.status.success(), "pull {reference} should have failed: {}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn layer_count(store: &Path) -> usize {
    std::fs::read_dir(store.join("layers")).map(|d| d.flatten().filter(|e| e.path().is_dir()).count()).unwrap_or(0)
}

/// Incompressible bytes, so a blob is as big as its content.
fn random_bytes(n: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e3779b97f4a7c15;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn busybox() -> PathBuf {
    ["/bin/busybox", "/usr/bin/busybox"].iter().map(PathBuf::from).find(|p| p.exists()).expect("busybox-static is installed")
}

/// The images every pull test pushes, built once per test run with umoci (an OCI layout under
/// cargo's target tmp dir):
/// - `base`: busybox, /etc files, /data/dir1/{a,b}, /usr/share/doc;
/// - `app`: base + a layer that deletes /etc/remove-me, adds a three-name hard link, an
///   absolute symlink and a set-uid file owned by 1000 + a raw GNU-tar layer that makes
///   /data/dir1 opaque (holding only `c`) and whites out /usr/share/doc.
pub(crate) struct Fixture {
    pub(crate) base: UmociImage,
    pub(crate) app: UmociImage,
    /// `umoci unpack` of app: the oracle for the merged view.
    pub oracle: PathBuf,
}

pub(crate) fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("pull-fixture");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("fixture dir");
        let base = UmociImage::new(&dir, "base");
        base.layer(|root| {
            for d in ["bin", "etc", "data/dir1", "usr/share/doc"] {
                std::fs::create_dir_all(root.join(d)).unwrap();
            }
            std::fs::copy(busybox(), root.join("bin/busybox")).unwrap();
            for applet in ["sh", "ls", "cat", "echo", "test", "stat"] {
                std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
            }
            std::fs::write(root.join("etc/greeting"), "hello\n").unwrap();
            std::fs::write(root.join("etc/remove-me"), "x\n").unwrap();
            std::fs::write(root.join("data/dir1/a"), "a\n").unwrap();
            std::fs::write(root.join("data/dir1/b"), "b\n").unwrap();
            std::fs::write(root.join("usr/share/doc/README"), "docs\n").unwrap();
        });
        base.config(&["--config.cmd", "/bin/sh"]);
        let app = base.tag_as("app");
        app.layer(|root| {
            std::fs::remove_file(root.join("etc/remove-me")).unwrap();
            std::fs::create_dir_all(root.join("srv")).unwrap();
            std::fs::write(root.join("srv/linked"), "three names\n").unwrap();
            std::fs::hard_link(root.join("srv/linked"), root.join("srv/hard2")).unwrap();
            std::fs::hard_link(root.join("srv/linked"), root.join("bin/hard1")).unwrap();
            std::os::unix::fs::symlink("/etc/greeting", root.join("srv/abs")).unwrap();
            let su = root.join("bin/su-test");
            std::fs::write(&su, "#!/bin/sh\n").unwrap();
            std::os::unix::fs::chown(&su, Some(1000), Some(1000)).unwrap();
            std::fs::set_permissions(&su, std::fs::Permissions::from_mode(0o4755)).unwrap();
        });
        let raw = dir.join("raw");
        std::fs::create_dir_all(raw.join("data/dir1")).unwrap();
        std::fs::create_dir_all(raw.join("usr/share")).unwrap();
        std::fs::write(raw.join("data/dir1/.wh..wh..opq"), "").unwrap();
        std::fs::write(raw.join("data/dir1/c"), "c\n").unwrap();
        std::fs::write(raw.join("usr/share/.wh.doc"), "").unwrap();
        let (tar, _) = registry::gnu_tar(&raw);
        std::fs::write(dir.join("raw.tar"), tar).unwrap();
        app.raw_layer(&dir.join("raw.tar"));
        let oracle = app.unpack_to(&dir.join("oracle-app"));
        Fixture { base, app, oracle }
    })
}

/// A tree without what legitimately differs between a mount and an unpacked directory: the
/// root's own attributes and directory link counts.
pub(crate) fn comparable(root: &Path) -> Tree {
    let mut t = Tree::walk(root);
    t.entries.retain(|p, _| !p.is_empty() && p.as_slice() != b"/" && p.as_slice() != b".");
    for e in t.entries.values_mut() {
        if e.mode & libc::S_IFMT == libc::S_IFDIR {
            e.nlink = 0;
        }
    }
    t
}

#[test]
fn pull_then_mount_shows_what_umoci_unpacks_and_chroot_runs() {
    let f = fixture();
    let dir = TestDir::new("pull-mount");
    let reg = Registry::start(dir.path(), Auth::None);
    let image = format!("{}/test/app:1", reg.host());
    f.app.push(&image, &[]);
    let store = dir.path().join("store");
    let out = pull_ok(&store, &image, &[]);
    assert_eq!(out.matches("Pull complete").count(), 3, "{out}");
    assert_eq!(layer_count(&store), 3);
    // Layers are in overlayfs format: the OCI whiteout became a 0/0 character device.
    let inspect: serde_json::Value = serde_json::from_str(&run_ok(shalefs(&store).args(["inspect", &image]))).unwrap();
    let dirs: Vec<PathBuf> = inspect[0]["LayerDirs"].as_array().unwrap().iter().map(|d| PathBuf::from(d.as_str().unwrap())).collect();
    assert_eq!(dirs.len(), 3);
    let wh = std::fs::symlink_metadata(dirs[1].join("etc/remove-me")).unwrap();
    assert_eq!((wh.mode() & libc::S_IFMT, wh.rdev()), (libc::S_IFCHR, 0));

    let mnt = dir.mkdir("mnt");
    let m = ShaleMount::foreground(&["--root".into(), store.clone().into(), image.clone().into(), "--name".into(), "c1".into()], &mnt)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_same_content(&comparable(&mnt), &comparable(&f.oracle));
    let ls = run_ok(Command::new("ls").arg("-la").arg(mnt.join("bin")));
    assert!(ls.contains("busybox") && ls.contains("su-test"), "{ls}");
    let su = std::fs::metadata(mnt.join("bin/su-test")).unwrap();
    assert_eq!((su.mode() & 0o7777, su.uid()), (0o4755, 1000));
    assert_eq!(std::fs::metadata(mnt.join("bin/hard1")).unwrap().ino(), std::fs::metadata(mnt.join("srv/hard2")).unwrap().ino());
    let out = run_ok(Command::new("chroot").arg(&mnt).args([
        "/bin/sh",
        "-c",
        "cat /etc/greeting; test -e /etc/remove-me || echo gone; ls /data/dir1; test -e /usr/share/doc || echo nodoc; cat /srv/abs; echo changed > /etc/greeting",
    ]));
    assert_eq!(out, "hello\ngone\nc\nnodoc\nhello\n");
    drop(m);
    // The container keeps its upper: mounted again, the change is there; the layers are not touched.
    let ps = run_ok(shalefs(&store).arg("ps"));
    assert!(ps.contains("c1") && ps.contains(&image), "{ps}");
    let _m = ShaleMount::foreground(&["--root".into(), store.clone().into(), "--container".into(), "c1".into()], &mnt)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(std::fs::read_to_string(mnt.join("etc/greeting")).unwrap(), "changed\n");
    assert_eq!(std::fs::read_to_string(dirs[2].join("etc/greeting")).unwrap(), "hello\n");
}

#[test]
fn repull_of_an_unchanged_image_is_one_head_request_and_shared_layers_are_stored_once() {
    let f = fixture();
    let dir = TestDir::new("pull-repull");
    let reg = Registry::start(dir.path(), Auth::None);
    let proxy = Proxy::start(reg.port, ProxyBehaviour::default());
    f.base.push(&format!("{}/test/base:1", reg.host()), &[]);
    f.app.push(&format!("{}/test/app:1", reg.host()), &[]);
    let store = dir.path().join("store");
    let base = format!("{}/test/base:1", proxy.host());
    let app = format!("{}/test/app:1", proxy.host());
    pull_ok(&store, &base, &[]);
    // The app shares the base's layer: fetched once, stored once.
    let out = pull_ok(&store, &app, &[]);
    assert_eq!(out.matches("Already exists").count(), 1, "{out}");
    assert_eq!(out.matches("Pull complete").count(), 2, "{out}");
    assert_eq!(layer_count(&store), 3);
    let before = proxy.log().len();
    let out = pull_ok(&store, &app, &[]);
    assert_eq!(out.matches("Already exists").count(), 3, "{out}");
    assert!(out.contains("Image is up to date"), "{out}");
    let log = proxy.log();
    assert_eq!(log[before..].len(), 1, "a re-pull made more than one request: {:?}", &log[before..]);
    assert!(log[before].starts_with("HEAD /v2/test/app/manifests/1"), "{:?}", log[before]);
    // A pull by digest of an image we have asks nothing at all.
    let digest = out.lines().find_map(|l| l.strip_prefix("Digest: ")).expect("digest line").to_string();
    let before = proxy.log().len();
    pull_ok(&store, &format!("{}/test/app@{digest}", proxy.host()), &[]);
    assert_eq!(proxy.log().len(), before);
    // rmi of the app keeps the base's layer, which the base image still uses.
    let out = run_ok(shalefs(&store).args(["rmi", &app]));
    assert_eq!(out.matches("Deleted layer").count(), 2, "{out}");
    assert_eq!(layer_count(&store), 1);
}

#[test]
fn pull_by_digest_into_an_empty_store() {
    let f = fixture();
    let dir = TestDir::new("pull-digest");
    let reg = Registry::start(dir.path(), Auth::None);
    f.app.push(&format!("{}/test/app:1", reg.host()), &[]);
    let first = pull_ok(&dir.path().join("store1"), &format!("{}/test/app:1", reg.host()), &[]);
    let digest = first.lines().find_map(|l| l.strip_prefix("Digest: ")).expect("digest line");
    let by_digest = format!("{}/test/app@{digest}", reg.host());
    let store = dir.path().join("store2");
    pull_ok(&store, &by_digest, &[]);
    let images = run_ok(shalefs(&store).arg("images"));
    assert!(images.contains("test/app"), "{images}");
    let inspect: serde_json::Value = serde_json::from_str(&run_ok(shalefs(&store).args(["inspect", &by_digest]))).unwrap();
    assert_eq!(inspect[0]["ManifestDigest"], digest);
    // A digest the registry does not have is a clear error.
    let missing = format!("{}/test/app@sha256:{}", reg.host(), "0".repeat(64));
    let err = pull_err(&store, &missing, &[]);
    assert!(err.contains("404") && err.contains("MANIFEST_UNKNOWN"), "{err}");
}

/// gzip (umoci), multi-member gzip (two gzip runs concatenated), zstd (the zstd tool) and
/// uncompressed layers, pushed through the upload API, unpack to the same files.
#[test]
fn gzip_multi_member_gzip_zstd_and_plain_layers_all_unpack() {
    let dir = TestDir::new("pull-compression");
    let reg = Registry::start(dir.path(), Auth::None);
    let src = dir.mkdir("src");
    std::fs::create_dir_all(src.join("etc")).unwrap();
    std::fs::write(src.join("etc/data"), "x".repeat(100_000)).unwrap();
    let (tar, diff) = registry::gnu_tar(&src);
    let half = tar.len() / 2;
    let multi = [registry::compress_with("gzip", &["-c"], &tar[..half]), registry::compress_with("gzip", &["-c"], &tar[half..])].concat();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("plain", tar.clone(), "application/vnd.oci.image.layer.v1.tar"),
        ("gzip", registry::compress_with("gzip", &["-c"], &tar), "application/vnd.oci.image.layer.v1.tar+gzip"),
        ("multigzip", multi, "application/vnd.docker.image.rootfs.diff.tar.gzip"),
        ("zstd", registry::compress_with("zstd", &["-c", "-q"], &tar), "application/vnd.oci.image.layer.v1.tar+zstd"),
    ];
    for (name, blob, media_type) in cases {
        registry::push_image(&reg.host(), &format!("test/{name}"), "1", &[(blob, media_type, diff.clone())], "amd64");
        let store = dir.path().join(format!("store-{name}"));
        pull_ok(&store, &format!("{}/test/{name}:1", reg.host()), &[]);
        let layer = store.join("layers").join(&diff);
        assert_eq!(std::fs::read(layer.join("etc/data")).unwrap().len(), 100_000, "{name}");
    }
}

#[test]
fn multi_platform_index_picks_the_host_or_the_asked_platform_and_skips_attestations() {
    let dir = TestDir::new("pull-index");
    let reg = Registry::start(dir.path(), Auth::None);
    let mut entries = Vec::new();
    for arch in ["arm64", "amd64"] {
        let src = dir.mkdir(&format!("src-{arch}"));
        std::fs::write(src.join("arch"), arch).unwrap();
        let (tar, diff) = registry::gnu_tar(&src);
        let digest = registry::push_image(&reg.host(), "test/multi", arch, &[(tar, "application/vnd.oci.image.layer.v1.tar", diff)], arch);
        let manifest = ureq::get(&format!("http://{}/v2/test/multi/manifests/{digest}", reg.host()))
            .set("Accept", "application/vnd.oci.image.manifest.v1+json")
            .call()
            .unwrap();
        let size = manifest.header("Content-Length").unwrap().parse::<u64>().unwrap();
        let variant = if arch == "arm64" { serde_json::json!("v8") } else { serde_json::Value::Null };
        entries.push(serde_json::json!({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest, "size": size,
            "platform": {"architecture": arch, "os": "linux", "variant": variant}}));
        // An attestation manifest claiming the same platform must never be picked.
        entries.push(serde_json::json!({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest, "size": size,
            "platform": {"architecture": "unknown", "os": "unknown"},
            "annotations": {"vnd.docker.reference.type": "attestation-manifest"}}));
    }
    let index = serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": entries})).unwrap();
    registry::put_manifest(&reg.host(), "test/multi", "1", &index, "application/vnd.oci.image.index.v1+json");
    let image = format!("{}/test/multi:1", reg.host());
    let host_arch = if cfg!(target_arch = "x86_64") { "amd64" } else { "arm64" };
    let other = if host_arch == "amd64" { "arm64" } else { "amd64" };
    for (store, platform, want) in [("s-host", None, host_arch), ("s-other", Some(format!("linux/{other}")), other)] {
        let store = dir.path().join(store);
        let extra: Vec<&str> = platform.as_deref().map(|p| vec!["--platform", p]).unwrap_or_default();
        pull_ok(&store, &image, &extra);
        let inspect: serde_json::Value = serde_json::from_str(&run_ok(shalefs(&store).args(["inspect", &image]))).unwrap();
        let layer = PathBuf::from(inspect[0]["LayerDirs"][0].as_str().unwrap());
        assert_eq!(std::fs::read_to_string(layer.join("arch")).unwrap(), want);
        assert_eq!(inspect[0]["Architecture"], want);
    }
    let err = pull_err(&dir.path().join("s-none"), &image, &["--platform", "linux/s390x"]);
    assert!(err.contains("no image for platform linux/s390x") && err.contains("linux/amd64"), "{err}");
}

#[test]
fn a_corrupted_blob_fails_naming_the_layer_and_leaves_the_store_unchanged() {
    let f = fixture();
    let dir = TestDir::new("pull-corrupt");
    let reg = Registry::start(dir.path(), Auth::None);
    f.base.push(&format!("{}/test/base:1", reg.host()), &[]);
    f.app.push(&format!("{}/test/app:1", reg.host()), &[]);
    let store = dir.path().join("store");
    pull_ok(&store, &format!("{}/test/base:1", reg.host()), &[]);
    let before = listing(&store);
    // Flip one byte in the middle of the app's top layer, in the registry's own storage.
    let manifest: serde_json::Value = ureq::get(&format!("http://{}/v2/test/app/manifests/1", reg.host()))
        .set("Accept", "application/vnd.oci.image.manifest.v1+json")
        .call()
        .map(|r| serde_json::from_reader(r.into_reader()).unwrap())
        .unwrap();
    let top = manifest["layers"][2]["digest"].as_str().unwrap().trim_start_matches("sha256:").to_string();
    let blob = reg.blob_file(&top);
    let mut bytes = std::fs::read(&blob).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&blob, bytes).unwrap();
    let err = pull_err(&store, &format!("{}/test/app:1", reg.host()), &[]);
    assert!(err.contains(&top[..12]), "error does not name the layer: {err}");
    // Nothing about the image entered the store, and nothing unverified: only a layer that
    // verified (the middle one, fetched beside the corrupt one) may stay, as docker keeps it.
    let top_diff = manifest_diff_id(&reg, "test/app", 2);
    let middle_diff = manifest_diff_id(&reg, "test/app", 1);
    let unchanged = |p: &String| !p.starts_with("locks/") && !p.starts_with(&format!("layers/{middle_diff}"));
    let after: Vec<String> = listing(&store).into_iter().filter(unchanged).collect();
    let before: Vec<String> = before.into_iter().filter(unchanged).collect();
    assert_eq!(after, before, "a failed pull changed the store");
    assert!(!store.join("layers").join(&top_diff).exists());
    assert!(run_ok(shalefs(&store).arg("images")).lines().count() == 2, "a half-pulled image is listed");
}

/// The DiffID (hex) of layer `i` of a pushed image, from its config.
fn manifest_diff_id(reg: &Registry, repo: &str, i: usize) -> String {
    let get = |path: String, accept: &str| -> serde_json::Value {
        let r = ureq::get(&format!("http://{}/v2/{repo}/{path}", reg.host())).set("Accept", accept).call().unwrap();
        serde_json::from_reader(r.into_reader()).unwrap()
    };
    let manifest = get("manifests/1".into(), "application/vnd.oci.image.manifest.v1+json");
    let config = get(format!("blobs/{}", manifest["config"]["digest"].as_str().unwrap()), "*/*");
    config["rootfs"]["diff_ids"][i].as_str().unwrap().trim_start_matches("sha256:").to_string()
}

struct NoiseImage {
    noise: Vec<u8>,
    diff: String,
    blob_hex: String,
}

/// A registry that wants basic auth, alice:secret (an htpasswd file made by Apache's tool).
fn htpasswd_registry(dir: &TestDir, data: &Path) -> Registry {
    let htpasswd = dir.path().join("htpasswd");
    run_ok(Command::new("htpasswd").args(["-Bbc"]).arg(&htpasswd).args(["alice", "secret"]));
    Registry::start(data, Auth::Htpasswd(htpasswd))
}

/// An image of one gzip layer holding `size` incompressible bytes, so that its blob is big
/// enough to cut or slow down in the middle.
fn push_noise_image(dir: &TestDir, reg: &Registry, repo: &str, size: usize) -> NoiseImage {
    let src = dir.mkdir("src");
    let noise = random_bytes(size);
    std::fs::write(src.join("noise"), &noise).unwrap();
    let (tar, diff) = registry::gnu_tar(&src);
    let blob = registry::compress_with("gzip", &["-c", "-1"], &tar);
    let blob_hex = registry::sha256_hex(&blob);
    registry::push_image(&reg.host(), repo, "1", &[(blob, "application/vnd.oci.image.layer.v1.tar+gzip", diff.clone())], "amd64");
    NoiseImage { noise, diff, blob_hex }
}

#[test]
fn a_connection_dropped_mid_blob_resumes_with_a_range_request() {
    let dir = TestDir::new("pull-drop");
    let reg = Registry::start(dir.path(), Auth::None);
    let NoiseImage { noise, diff, .. } = push_noise_image(&dir, &reg, "test/big", 4_000_000);
    let proxy = Proxy::start(reg.port, ProxyBehaviour { cut_first_blob_after: Some(1_000_000), ..Default::default() });
    let store = dir.path().join("store");
    let out = pull_ok(&store, &format!("{}/test/big:1", proxy.host()), &[]);
    let log = proxy.log();
    let ranged: Vec<&String> = log.iter().filter(|l| l.contains("/blobs/") && l.contains("Range: bytes=")).collect();
    assert_eq!(ranged.len(), 1, "expected one resumed request: {log:?}\n{out}");
    let offset: u64 = ranged[0].split("bytes=").nth(1).unwrap().trim_end_matches(['-', ']']).parse().unwrap();
    assert!(offset > 0 && offset <= 1_000_000, "{offset}");
    assert_eq!(std::fs::read(store.join("layers").join(&diff).join("noise")).unwrap(), noise);
    assert!(!listing(&store.join("tmp")).iter().any(|p| p.ends_with(".partial")), "partial file left behind");
}

#[test]
fn a_killed_pull_resumes_where_it_stopped() {
    let dir = TestDir::new("pull-kill");
    let reg = Registry::start(dir.path(), Auth::None);
    let NoiseImage { noise, diff, blob_hex } = push_noise_image(&dir, &reg, "test/slow", 3_000_000);
    let store = dir.path().join("store");
    {
        // Through a slow proxy, kill -9 the pull once part of the blob is on disk.
        let slow = Proxy::start(reg.port, ProxyBehaviour { slow_blobs: Some(Duration::from_millis(100)), ..Default::default() });
        let mut child = shalefs(&store)
            .args(["pull", &format!("{}/test/slow:1", slow.host())])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let partial = store.join("tmp").join(format!("{blob_hex}.partial"));
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0) < 200_000 {
            assert!(Instant::now() < deadline, "the slow pull never wrote a partial file");
            std::thread::sleep(Duration::from_millis(20));
        }
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!store.join("layers").join(&diff).exists(), "a layer became visible before it was complete");
    }
    let proxy = Proxy::start(reg.port, ProxyBehaviour::default());
    pull_ok(&store, &format!("{}/test/slow:1", proxy.host()), &[]);
    let log = proxy.log();
    assert!(log.iter().any(|l| l.contains(&blob_hex) && l.contains("Range: bytes=")), "no resumed download: {log:?}");
    assert_eq!(std::fs::read(store.join("layers").join(&diff).join("noise")).unwrap(), noise);
}

#[test]
fn a_mirror_that_is_down_falls_back_to_the_origin_and_a_working_mirror_serves_without_origin_credentials() {
    let f = fixture();
    let dir = TestDir::new("pull-mirror");
    let origin = htpasswd_registry(&dir, &dir.mkdir("origin"));
    let origin_proxy = Proxy::start(origin.port, ProxyBehaviour::default());
    f.base.push(&format!("{}/test/base:1", origin.host()), &["--dest-creds", "alice:secret"]);
    let image = format!("{}/test/base:1", origin_proxy.host());

    // A mirror nobody listens on, then a mirror answering 503: both give way to the origin.
    let dead = registry::free_port();
    let failing = Proxy::start(origin.port, ProxyBehaviour { always_503: true, ..Default::default() });
    let conf = dir.path().join("registries.json");
    let mirrors = serde_json::json!({"mirrors": {origin_proxy.host(): [format!("http://127.0.0.1:{dead}"), format!("http://{}", failing.host())]}});
    std::fs::write(&conf, mirrors.to_string()).unwrap();
    let store = dir.path().join("store");
    let conf_arg = conf.to_str().unwrap();
    pull_ok(&store, &image, &["--registries-conf", conf_arg, "--creds", "alice:secret"]);
    assert!(failing.log().iter().all(|l| !l.contains("[auth]")), "origin credentials went to a mirror: {:?}", failing.log());
    assert!(!failing.log().is_empty(), "the failing mirror was never tried");

    // A working mirror (a plain registry holding the same image) serves the whole pull.
    let mirror = Registry::start(&dir.mkdir("mirror"), Auth::None);
    f.base.push(&format!("{}/test/base:1", mirror.host()), &[]);
    let mirror_proxy = Proxy::start(mirror.port, ProxyBehaviour::default());
    let mirrors = serde_json::json!({"mirrors": {origin_proxy.host(): [format!("http://{}", mirror_proxy.host())]}});
    std::fs::write(&conf, mirrors.to_string()).unwrap();
    let before = origin_proxy.log().len();
    let store2 = dir.path().join("store2");
    pull_ok(&store2, &image, &["--registries-conf", conf_arg, "--creds", "alice:secret"]);
    assert_eq!(origin_proxy.log().len(), before, "the origin was asked although the mirror had everything");
    assert!(mirror_proxy.log().iter().all(|l| !l.contains("[auth]")), "origin credentials went to a mirror");

    // The same mirror from podman's registries.conf (TOML, a scheme-less insecure location).
    let toml = dir.path().join("registries.conf");
    std::fs::write(
        &toml,
        format!("[[registry]]\nlocation = \"{}\"\n[[registry.mirror]]\nlocation = \"{}\"\ninsecure = true\n", origin_proxy.host(), mirror_proxy.host()),
    )
    .unwrap();
    let mirror_before = mirror_proxy.log().len();
    let out = run(shalefs(&dir.path().join("store3")).env("CONTAINERS_REGISTRIES_CONF", &toml).args(["pull", &image, "--creds", "alice:secret"]));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(origin_proxy.log().len(), before, "the origin was asked although the mirror had everything");
    assert!(mirror_proxy.log().len() > mirror_before, "the registries.conf mirror was not used");
}

#[test]
fn basic_auth_from_creds_and_from_a_docker_config_file() {
    let f = fixture();
    let dir = TestDir::new("pull-basic");
    let reg = htpasswd_registry(&dir, dir.path());
    f.base.push(&format!("{}/test/base:1", reg.host()), &["--dest-creds", "alice:secret"]);
    let image = format!("{}/test/base:1", reg.host());
    let home = dir.mkdir("home");
    let store = home.join("store");
    let err = pull_err(&store, &image, &[]);
    assert!(err.contains("requires a username and password"), "{err}");
    let err = pull_err(&store, &image, &["--creds", "alice:wrong"]);
    assert!(err.contains("401"), "{err}");
    pull_ok(&store, &image, &["--creds", "alice:secret"]);
    // ~/.docker/config.json, as `docker login` writes it.
    use base64::Engine as _;
    std::fs::create_dir_all(home.join(".docker")).unwrap();
    let auth = base64::engine::general_purpose::STANDARD.encode("alice:secret");
    std::fs::write(home.join(".docker/config.json"), serde_json::json!({"auths": {reg.host(): {"auth": auth}}}).to_string()).unwrap();
    let store2 = home.join("store2");
    pull_ok(&store2, &image, &[]);
    // A credential helper named in credHelpers, speaking docker's helper protocol.
    let bin = dir.mkdir("bin");
    let helper = bin.join("docker-credential-shalefstest");
    std::fs::write(&helper, "#!/bin/sh\nread server\necho \"{\\\"ServerURL\\\":\\\"$server\\\",\\\"Username\\\":\\\"alice\\\",\\\"Secret\\\":\\\"secret\\\"}\"\n").unwrap();
    std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(home.join(".docker/config.json"), serde_json::json!({"credHelpers": {reg.host(): "shalefstest"}}).to_string()).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let out = run(shalefs(&home.join("store3")).env("PATH", &path).args(["pull", &image]));
    assert!(out.status.success(), "credential helper pull: {}", String::from_utf8_lossy(&out.stderr));
    // The same helper as the default store for every registry (`credsStore`).
    std::fs::write(home.join(".docker/config.json"), serde_json::json!({"credsStore": "shalefstest"}).to_string()).unwrap();
    let out = run(shalefs(&home.join("store4")).env("PATH", &path).args(["pull", &image]));
    assert!(out.status.success(), "credsStore pull: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn tag_history_rmi_and_prune_keep_what_containers_use() {
    let f = fixture();
    let dir = TestDir::new("pull-rmi");
    let reg = Registry::start(dir.path(), Auth::None);
    let image = format!("{}/test/app:1", reg.host());
    f.app.push(&image, &[]);
    let store = dir.path().join("store");
    pull_ok(&store, &image, &[]);
    run_ok(shalefs(&store).args(["tag", &image, "localhost/mine:v2"]));
    let images = run_ok(shalefs(&store).arg("images"));
    assert!(images.contains("localhost/mine") && images.contains("v2"), "{images}");
    let history = run_ok(shalefs(&store).args(["history", "localhost/mine:v2"]));
    assert!(history.contains("umoci repack") && history.contains("umoci raw add-layer"), "{history}");
    // With two names, rmi of one only untags.
    let out = run_ok(shalefs(&store).args(["rmi", "localhost/mine:v2"]));
    assert!(out.contains("Untagged") && !out.contains("Deleted"), "{out}");
    assert_eq!(layer_count(&store), 3);
    // A container of the image blocks rmi; --force removes the image, the container keeps its layers.
    let mnt = dir.mkdir("mnt");
    drop(ShaleMount::foreground(&["--root".into(), store.clone().into(), image.clone().into(), "--name".into(), "keep".into()], &mnt)
        .unwrap_or_else(|e| panic!("{e}")));
    let err = run(shalefs(&store).args(["rmi", &image]));
    assert!(!err.status.success() && String::from_utf8_lossy(&err.stderr).contains("used by container(s) keep"));
    run_ok(shalefs(&store).args(["rmi", "--force", &image]));
    assert_eq!(layer_count(&store), 3, "layers a container uses were deleted");
    let _m = ShaleMount::foreground(&["--root".into(), store.clone().into(), "--container".into(), "keep".into()], &mnt)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(std::fs::read_to_string(mnt.join("etc/greeting")).unwrap(), "hello\n");
    drop(_m);
    run_ok(shalefs(&store).args(["rm", "keep"]));
    let out = run_ok(shalefs(&store).arg("prune"));
    assert!(out.contains("Removed 0 images and 3 layers"), "{out}");
    assert_eq!(layer_count(&store), 0);
}

/// Each class of hostile layer fails the pull with an error naming the entry, leaves no layer
/// in the store and writes nothing outside it.
#[test]
fn hostile_layers_are_refused_and_nothing_is_written_outside_the_store() {
    let dir = TestDir::new("pull-hostile");
    let reg = Registry::start(dir.path(), Auth::None);
    let victim = dir.mkdir("victim");
    std::fs::write(victim.join("keep"), "untouched").unwrap();
    let victim_s = victim.to_str().unwrap().to_string();
    // (name, entries as (path, type, link target, data))
    type Entries<'a> = Vec<(&'a [u8], tar::EntryType, Vec<u8>, &'a [u8])>;
    let cases: Vec<(&str, Entries)> = vec![
        ("dotdot", vec![(b"../../../../victim/evil", tar::EntryType::Regular, vec![], b"x")]),
        ("symlink-then-write", vec![
            (b"link", tar::EntryType::Symlink, victim_s.as_bytes().to_vec(), b""),
            (b"link/evil", tar::EntryType::Regular, vec![], b"x"),
        ]),
        ("symlink-slash-dot", vec![
            (b"root", tar::EntryType::Symlink, b"/.".to_vec(), b""),
            (b"root/tmp/evil", tar::EntryType::Regular, vec![], b"x"),
        ]),
        ("hardlink-outside", vec![(b"h", tar::EntryType::Link, format!("{victim_s}/keep").into_bytes(), b"")]),
        ("hardlink-dotdot", vec![(b"h", tar::EntryType::Link, b"../../../victim/keep".to_vec(), b"")]),
        ("whiteout-dotdot", vec![(b"a/.wh...", tar::EntryType::Regular, vec![], b"")]),
        ("bare-whiteout", vec![(b".wh.", tar::EntryType::Regular, vec![], b"")]),
    ];
    for (name, entries) in cases {
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind, link, data) in entries {
            let mut h = tar::Header::new_ustar();
            h.as_old_mut().name[..path.len()].copy_from_slice(path);
            h.as_old_mut().linkname[..link.len()].copy_from_slice(&link);
            h.set_entry_type(kind);
            h.set_mode(0o644);
            h.set_size(data.len() as u64);
            h.set_cksum();
            b.append(&h, data).unwrap();
        }
        let tar = b.into_inner().unwrap();
        let diff = registry::sha256_hex(&tar);
        registry::push_image(&reg.host(), &format!("test/{name}"), "1", &[(tar, "application/vnd.oci.image.layer.v1.tar", diff)], "amd64");
        let store = dir.path().join(format!("store-{name}"));
        let err = pull_err(&store, &format!("{}/test/{name}:1", reg.host()), &[]);
        assert!(err.contains("layer entry"), "{name}: the error does not name the entry: {err}");
        assert_eq!(layer_count(&store), 0, "{name}: a hostile layer entered the store");
        assert_eq!(listing(&victim), vec!["keep".to_string()], "{name}: wrote outside the store");
        assert_eq!(std::fs::read_to_string(victim.join("keep")).unwrap(), "untouched");
        assert!(!Path::new("/tmp/evil").exists(), "{name}: wrote /tmp/evil");
    }
    // A decompression bomb: 64 MiB of zeros in a small gzip, against a 16 MiB limit.
    let src = dir.mkdir("bomb");
    std::fs::write(src.join("zeros"), vec![0u8; 64 << 20]).unwrap();
    let (tar, diff) = registry::gnu_tar(&src);
    let gz = registry::compress_with("gzip", &["-c"], &tar);
    registry::push_image(&reg.host(), "test/bomb", "1", &[(gz, "application/vnd.oci.image.layer.v1.tar+gzip", diff)], "amd64");
    let store = dir.path().join("store-bomb");
    let err = pull_err(&store, &format!("{}/test/bomb:1", reg.host()), &["--max-layer-size", "16M"]);
    assert!(err.contains("decompression bomb"), "{err}");
    assert_eq!(layer_count(&store), 0);
}

#[test]
fn two_concurrent_pulls_of_one_image_both_succeed_and_store_each_layer_once() {
    let f = fixture();
    let dir = TestDir::new("pull-concurrent");
    let reg = Registry::start(dir.path(), Auth::None);
    f.app.push(&format!("{}/test/app:1", reg.host()), &[]);
    let proxy = Proxy::start(reg.port, ProxyBehaviour::default());
    let image = format!("{}/test/app:1", proxy.host());
    let store = dir.path().join("store");
    let children: Vec<_> = (0..2)
        .map(|_| shalefs(&store).args(["pull", &image]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap())
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    assert_eq!(layer_count(&store), 3);
    // One download per layer: the second process waited on the first one's lock, then found
    // the layer there. (The config is small and fetched by both.)
    let manifest: serde_json::Value = ureq::get(&format!("http://{}/v2/test/app/manifests/1", reg.host()))
        .set("Accept", "application/vnd.oci.image.manifest.v1+json")
        .call()
        .map(|r| serde_json::from_reader(r.into_reader()).unwrap())
        .unwrap();
    for layer in manifest["layers"].as_array().unwrap() {
        let digest = layer["digest"].as_str().unwrap();
        let gets = proxy.log().iter().filter(|l| l.starts_with("GET ") && l.contains(digest)).count();
        assert_eq!(gets, 1, "layer {digest} was downloaded {gets} times: {:?}", proxy.log());
    }
    let tmp = listing(&store.join("tmp"));
    assert!(tmp.is_empty(), "left in tmp: {tmp:?}");
    let images = run_ok(shalefs(&store).arg("images"));
    assert_eq!(images.lines().count(), 2, "{images}");
}

#[test]
fn token_auth_gets_an_anonymous_pull_token_and_refuses_bad_credentials() {
    let f = fixture();
    let dir = TestDir::new("pull-token");
    let tokens = crate::util::token::TokenServer::start(dir.path());
    let reg = Registry::start(
        dir.path(),
        Auth::Token {
            realm: tokens.realm(),
            service: crate::util::token::SERVICE.into(),
            issuer: crate::util::token::ISSUER.into(),
            cert: tokens.cert.clone(),
        },
    );
    f.base.push(&format!("{}/test/base:1", reg.host()), &["--dest-creds", "bob:pw"]);
    let image = format!("{}/test/base:1", reg.host());
    let store = dir.path().join("store");
    let before = tokens.log().len();
    pull_ok(&store, &image, &[]);
    let log = tokens.log();
    let ours = &log[before..];
    // One anonymous token for the pull scope serves the manifest, config and layer requests.
    assert_eq!(ours, ["GET anonymous repository:test/base:pull"], "{log:?}");
    let err = pull_err(&dir.path().join("store2"), &image, &["--creds", "bob:wrong"]);
    assert!(err.contains("refused the credentials"), "{err}");
    pull_ok(&dir.path().join("store3"), &image, &["--creds", "bob:pw"]);
    assert!(tokens.log().iter().any(|l| l == "GET bob repository:test/base:pull"), "{:?}", tokens.log());
}

/// A token that expires during a pull is renewed with the refresh token the token server gave
/// for the credentials (OAuth2 `offline_token`), not with the credentials again.
#[test]
fn an_expired_token_is_renewed_with_the_refresh_token() {
    use crate::util::token::{ISSUER, SERVICE, TokenOptions, TokenServer};
    let f = fixture();
    let dir = TestDir::new("pull-refresh");
    let tokens = TokenServer::start_with(dir.path(), TokenOptions { expires_in: 1, refresh_tokens: true });
    let auth = Auth::Token { realm: tokens.realm(), service: SERVICE.into(), issuer: ISSUER.into(), cert: tokens.cert.clone() };
    let reg = Registry::start(dir.path(), auth);
    f.base.push(&format!("{}/test/base:1", reg.host()), &["--dest-creds", "bob:pw"]);
    // The layer download stalls past the token's life (1 s, counted as 10 s with a 5 s margin),
    // then breaks: the resumed request needs a fresh token.
    let behaviour = ProxyBehaviour { cut_first_blob_after: Some(50_000), stall_before_cut: Some(Duration::from_secs(6)), ..Default::default() };
    let proxy = Proxy::start(reg.port, behaviour);
    let before = tokens.log().len();
    let store = dir.path().join("store");
    pull_ok(&store, &format!("{}/test/base:1", proxy.host()), &["--creds", "bob:pw"]);
    let log = tokens.log()[before..].to_vec();
    assert_eq!(log, ["GET bob repository:test/base:pull", "POST refresh bob repository:test/base:pull"]);
    assert!(proxy.log().iter().any(|l| l.contains("[Range: bytes=")), "the download did not resume: {:?}", proxy.log());
    assert_eq!(layer_count(&store), 1);
}

#[test]
fn a_registry_answering_503_and_429_is_retried_with_backoff() {
    let f = fixture();
    let dir = TestDir::new("pull-retry");
    let reg = Registry::start(dir.path(), Auth::None);
    f.base.push(&format!("{}/test/base:1", reg.host()), &[]);
    let proxy = Proxy::start(reg.port, ProxyBehaviour { fail_first: 2, ..Default::default() });
    let store = dir.path().join("store");
    pull_ok(&store, &format!("{}/test/base:1", proxy.host()), &[]);
    let log = proxy.log();
    assert!(log.len() >= 3 && log[0] == log[1] && log[1] == log[2], "the manifest request was not retried: {log:?}");
    assert_eq!(layer_count(&store), 1);
}

#[test]
fn retry_after_of_a_429_is_honoured() {
    let f = fixture();
    let dir = TestDir::new("pull-retry-after");
    let reg = Registry::start(dir.path(), Auth::None);
    f.base.push(&format!("{}/test/base:1", reg.host()), &[]);
    // First a 503 (retried after the backoff, 0.5 s), then a 429 asking for 3 s.
    let proxy = Proxy::start(reg.port, ProxyBehaviour { fail_first: 2, retry_after_secs: Some(3), ..Default::default() });
    pull_ok(&dir.path().join("store"), &format!("{}/test/base:1", proxy.host()), &[]);
    let t = proxy.arrivals();
    assert!(t.len() >= 3, "{:?}", proxy.log());
    assert!(t[2] - t[1] >= Duration::from_secs(3), "retried {:?} after a 429 with Retry-After: 3", t[2] - t[1]);
    assert!(t[1] - t[0] < Duration::from_secs(3), "a 503 without Retry-After waited {:?}", t[1] - t[0]);
}

/// A tmpfs mount for the store, unmounted on drop.
struct Tmpfs(PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_fails_the_pull_clearly_and_records_nothing_unverified() {
    let f = fixture();
    let dir = TestDir::new("pull-full");
    let reg = Registry::start(dir.path(), Auth::None);
    f.app.push(&format!("{}/test/app:1", reg.host()), &[]);
    let store = dir.mkdir("store");
    run_ok(Command::new("mount").args(["-t", "tmpfs", "-o", "size=1m", "shalefs-test-full"]).arg(&store));
    let _guard = Tmpfs(store.clone());
    let err = pull_err(&store, &format!("{}/test/app:1", reg.host()), &[]);
    assert!(err.contains("No space left on device") && err.contains("layer sha256:"), "{err}");
    // The busybox layer did not fit; the small layers that did are verified and may stay.
    assert!(!store.join("layers").join(manifest_diff_id(&reg, "test/app", 0)).exists());
    assert!(listing(&store.join("images")).is_empty());
    assert!(listing(&store.join("tmp")).is_empty(), "{:?}", listing(&store.join("tmp")));
}

#[test]
fn blob_redirects_to_another_host_carry_no_credentials() {
    let f = fixture();
    let dir = TestDir::new("pull-redirect");
    let origin = htpasswd_registry(&dir, &dir.mkdir("origin"));
    f.base.push(&format!("{}/test/base:1", origin.host()), &["--dest-creds", "alice:secret"]);
    // A "storage service": an open registry with the same blobs, behind a recording proxy.
    let storage = Registry::start(&dir.mkdir("storage"), Auth::None);
    f.base.push(&format!("{}/test/base:1", storage.host()), &[]);
    let storage_proxy = Proxy::start(storage.port, ProxyBehaviour::default());
    let front = Proxy::start(origin.port, ProxyBehaviour { redirect_blobs_to: Some(storage_proxy.port), ..Default::default() });
    let store = dir.path().join("store");
    pull_ok(&store, &format!("{}/test/base:1", front.host()), &["--creds", "alice:secret"]);
    assert!(front.log().iter().any(|l| l.contains("/manifests/") && l.contains("[auth]")), "{:?}", front.log());
    let blobs: Vec<String> = storage_proxy.log();
    assert!(blobs.iter().any(|l| l.contains("/blobs/")), "the redirect was not followed: {blobs:?}");
    assert!(blobs.iter().all(|l| !l.contains("[auth]")), "credentials followed a redirect to another host: {blobs:?}");
    assert_eq!(layer_count(&store), 1);
}

#[test]
fn on_a_terminal_the_pull_draws_progress_bars() {
    let f = fixture();
    let dir = TestDir::new("pull-tty");
    let reg = Registry::start(dir.path(), Auth::None);
    let image = format!("{}/test/app:1", reg.host());
    f.app.push(&image, &[]);
    let store = dir.path().join("store");
    // `script` runs the pull on a pseudo-terminal and copies what it drew.
    let cmd = format!("{} --root {} pull {image}", shalefs_bin(), store.display());
    let out = run_ok(Command::new("script").args(["-q", "-e", "-c", &cmd, "/dev/null"]).env("TERM", "xterm"));
    assert!(out.contains("Pull complete"), "{out}");
    // indicatif redraws its lines with terminal escapes; the plain-line mode never does.
    assert!(out.contains("\u{1b}["), "no terminal drawing: {out:?}");
    assert!(out.contains("Status: Downloaded newer image"), "{out}");
}

/// umoci, replacing a lower directory by a file (`rm -rf dir; echo x > dir`), writes the file
/// and then whiteouts below it (`dir/.wh.child`); the pull used to stop at them with
/// `"…/was-dir" is not a directory`.
#[test]
fn pull_of_a_umoci_image_where_a_directory_became_a_file() {
    let dir = TestDir::new("pull-dir-became-file");
    let image = UmociImage::new(dir.path(), "v1");
    image.layer(|root| {
        std::fs::create_dir_all(root.join("usr/share/data/was-dir/sub")).unwrap();
        std::fs::write(root.join("usr/share/data/was-dir/child"), "child\n").unwrap();
        std::fs::write(root.join("usr/share/data/was-dir/sub/deep"), "deep\n").unwrap();
        std::fs::write(root.join("usr/share/data/kept"), "kept\n").unwrap();
    });
    image.layer(|root| {
        std::fs::remove_dir_all(root.join("usr/share/data/was-dir")).unwrap();
        std::fs::write(root.join("usr/share/data/was-dir"), "x\n").unwrap();
    });
    // The image holds the form that was refused: a whiteout below the new file.
    let listed: String = std::fs::read_dir(image.layout.join("blobs/sha256"))
        .unwrap()
        .flatten()
        .filter_map(|b| Command::new("tar").arg("-tzf").arg(b.path()).stderr(Stdio::null()).output().ok())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .collect();
    assert!(listed.contains("usr/share/data/was-dir/.wh."), "umoci wrote no whiteout below the file:\n{listed}");
    let oracle = image.unpack_to(&dir.path().join("oracle"));

    let reg = Registry::start(dir.path(), Auth::None);
    let reference = format!("{}/test/dir-became-file:1", reg.host());
    image.push(&reference, &[]);
    let store = dir.path().join("store");
    pull_ok(&store, &reference, &[]);
    let mnt = dir.mkdir("mnt");
    let _m = ShaleMount::foreground(&["--root".into(), store.clone().into(), reference.clone().into()], &mnt)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(std::fs::read(mnt.join("usr/share/data/was-dir")).unwrap(), b"x\n");
    assert_same_content(&comparable(&mnt), &comparable(&oracle));
}
