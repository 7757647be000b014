//! Pushing to a real registry (Debian's docker-registry on 127.0.0.1) images pulled from it:
//! what goes over the wire (counted at a recording proxy), what comes back when pulled into a
//! fresh store and mounted, auth refusals, and an upload resumed after a dropped connection.

use std::path::Path;
use std::process::Output;

use crate::pull::{comparable, fixture, pull_ok, random_bytes, shalefs};
use crate::util::registry::{self, Auth, Proxy, ProxyBehaviour, Registry, listing};
use crate::util::tree::assert_same_content;
use crate::util::{ShaleMount, TestDir, run, run_ok};

fn push(store: &Path, args: &[&str]) -> Output {
    run(shalefs(store).arg("push").args(args))
}

fn push_ok(store: &Path, args: &[&str]) -> String {
    let out = push(store, args);
    assert!(out.status.success(), "push {args:?} failed: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The stderr of a push that must fail, checked to be one line.
fn push_err(store: &Path, args: &[&str]) -> String {
    let out = push(store, args);
    assert!(!out.status.success(), "push {args:?} should have failed: {}", String::from_utf8_lossy(&out.stdout));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(err.trim_end().lines().count(), 1, "not a one-line error: {err}");
    err
}

fn digest_line(out: &str) -> String {
    out.lines().find_map(|l| l.split_once(": digest: ")).and_then(|(_, r)| r.split_whitespace().next()).unwrap_or_else(|| panic!("no digest line: {out}")).to_string()
}

fn inspect(store: &Path, image: &str) -> serde_json::Value {
    serde_json::from_str::<serde_json::Value>(&run_ok(shalefs(store).args(["inspect", image]))).unwrap()[0].clone()
}

/// The request lines of the proxy log from `from` on, without the HTTP version.
fn requests(proxy: &Proxy, from: usize) -> Vec<String> {
    proxy.log()[from..].iter().map(|l| l.replace(" HTTP/1.1", "")).collect()
}

/// A pulled image pushed to an empty registry: its layers compressed again (new blob digests),
/// the same image id and DiffIDs; pulled by digest into a fresh store and mounted, the same
/// tree as umoci's unpack; skopeo reads it. A second push sends a HEAD per blob and the manifest.
#[test]
fn push_to_a_new_registry_compresses_layers_again_and_pulls_back_by_digest_as_the_same_tree() {
    let f = fixture();
    let dir = TestDir::new("push-new");
    let src = Registry::start(&dir.mkdir("src"), Auth::None);
    let image = format!("{}/test/app:1", src.host());
    f.app.push(&image, &[]);
    let store = dir.path().join("store");
    pull_ok(&store, &image, &[]);
    let dst = Registry::start(&dir.mkdir("dst"), Auth::None);
    let proxy = Proxy::start(dst.port, ProxyBehaviour::default());
    let dest = format!("{}/mirror/app:v1", proxy.host());
    let out = push_ok(&store, &[&image, &dest]);
    assert_eq!(out.matches("(compressed again)").count(), 3, "{out}");
    assert!(out.contains("3 layers compressed again with gzip: new blob digests, the same DiffIDs and image id"), "{out}");
    let digest = digest_line(&out);
    // skopeo, an independent reader, sees the manifest we pushed.
    let skopeo: serde_json::Value = serde_json::from_str(&run_ok(
        std::process::Command::new("skopeo").args(["inspect", "--tls-verify=false"]).arg(format!("docker://{dest}")),
    ))
    .unwrap();
    assert_eq!(skopeo["Digest"], digest.as_str());

    let fresh = dir.path().join("fresh");
    let by_digest = format!("{}/mirror/app@{digest}", dst.host());
    pull_ok(&fresh, &by_digest, &[]);
    let (a, b) = (inspect(&store, &image), inspect(&fresh, &by_digest));
    assert_eq!(a["Id"], b["Id"], "the image id changed");
    assert_eq!(a["RootFS"], b["RootFS"], "the DiffIDs changed");
    let mnt = dir.mkdir("mnt");
    let _m = ShaleMount::foreground(&["--root".into(), fresh.clone().into(), by_digest.clone().into()], &mnt).unwrap_or_else(|e| panic!("{e}"));
    let oracle = f.app.unpack_to(&dir.path().join("oracle"));
    assert_same_content(&comparable(&mnt), &comparable(&oracle));

    // Again: the store remembers the blobs it made, so only a HEAD per blob and the manifest.
    let before = proxy.log().len();
    let again = push_ok(&store, &[&image, &dest]);
    assert_eq!(digest_line(&again), digest);
    let reqs = requests(&proxy, before);
    assert_eq!(reqs.iter().filter(|l| l.starts_with("HEAD ") && l.contains("/blobs/sha256:")).count(), 4, "{reqs:?}");
    assert_eq!(reqs.iter().filter(|l| l.starts_with("PUT ") && l.contains("/manifests/v1")).count(), 1, "{reqs:?}");
    assert_eq!(reqs.len(), 5, "more than a HEAD per blob and the manifest: {reqs:?}");
    // To another repository there: the blobs the first push made are mounted, not made again.
    let before = proxy.log().len();
    let other = format!("{}/mirror/other:v1", proxy.host());
    let out = push_ok(&store, &[&image, &other]);
    assert_eq!(digest_line(&out), digest, "{out}");
    assert_eq!(out.matches("Mounted from mirror/app").count(), 3, "{out}");
    assert!(!requests(&proxy, before).iter().any(|l| l.starts_with("PATCH ") || (l.starts_with("PUT ") && l.contains("/blobs/"))), "{:?}", requests(&proxy, before));
    // --format v2s2: the same blobs under Docker's media types, a new manifest, the same image.
    let docker = format!("{}/mirror/docker:v1", proxy.host());
    let out = push_ok(&store, &["--format", "v2s2", &image, &docker]);
    assert!(out.contains("The manifest was written anew"), "{out}");
    let raw: serde_json::Value = serde_json::from_str(&run_ok(
        std::process::Command::new("skopeo").args(["inspect", "--raw", "--tls-verify=false"]).arg(format!("docker://{docker}")),
    ))
    .unwrap();
    assert_eq!(raw["mediaType"], "application/vnd.docker.distribution.manifest.v2+json");
    assert_eq!(raw["config"]["mediaType"], "application/vnd.docker.container.image.v1+json");
    assert_eq!(raw["config"]["digest"], a["Id"]);
    // --compression zstd: layers compressed again as zstd, which pull reads back.
    let zst = format!("{}/mirror/zstd:v1", dst.host());
    let out = push_ok(&store, &["--compression", "zstd", &image, &zst]);
    assert!(out.contains("3 layers compressed again with zstd"), "{out}");
    let zfresh = dir.path().join("zfresh");
    pull_ok(&zfresh, &zst, &[]);
    assert_eq!(inspect(&zfresh, &zst)["RootFS"], a["RootFS"]);
    assert!(listing(&store.join("tmp")).is_empty(), "left in tmp: {:?}", listing(&store.join("tmp")));
}

/// Pushed back to where it came from: a HEAD per blob and the manifest, the same digest.
/// To another repository of the same registry: every blob mounted, none uploaded.
#[test]
fn a_pulled_image_pushed_back_sends_only_heads_and_the_manifest_and_to_another_repository_mounts() {
    let f = fixture();
    let dir = TestDir::new("push-back");
    let reg = Registry::start(dir.path(), Auth::None);
    let proxy = Proxy::start(reg.port, ProxyBehaviour::default());
    f.app.push(&format!("{}/test/app:1", reg.host()), &[]);
    let store = dir.path().join("store");
    let image = format!("{}/test/app:1", proxy.host());
    let pulled = pull_ok(&store, &image, &[]);
    let pulled_digest = pulled.lines().find_map(|l| l.strip_prefix("Digest: ")).expect("digest line").to_string();

    let before = proxy.log().len();
    let out = push_ok(&store, &[&image]);
    assert_eq!(digest_line(&out), pulled_digest, "{out}");
    assert_eq!(out.matches("Layer already exists").count(), 3, "{out}");
    let reqs = requests(&proxy, before);
    let heads = reqs.iter().filter(|l| l.starts_with("HEAD ") && l.contains("/v2/test/app/blobs/sha256:")).count();
    assert_eq!((heads, reqs.len()), (4, 5), "{reqs:?}");
    assert!(reqs[4].starts_with("PUT /v2/test/app/manifests/1"), "{reqs:?}");

    let before = proxy.log().len();
    let copy = format!("{}/team/copy:latest", proxy.host());
    let out = push_ok(&store, &[&image, &copy]);
    assert_eq!(digest_line(&out), pulled_digest, "{out}");
    assert_eq!(out.matches("Mounted from test/app").count(), 3, "{out}");
    let reqs = requests(&proxy, before);
    let mounts = reqs.iter().filter(|l| l.starts_with("POST /v2/team/copy/blobs/uploads/?mount=sha256:") && l.contains("from=test/app")).count();
    assert_eq!(mounts, 4, "three layers and the config mounted: {reqs:?}");
    assert!(!reqs.iter().any(|l| l.starts_with("PATCH ") || (l.starts_with("PUT ") && l.contains("/blobs/"))), "a blob was uploaded: {reqs:?}");
    // The registry serves the copy whole: pulled into a fresh store, it has the same image id.
    let fresh = dir.path().join("fresh");
    pull_ok(&fresh, &copy, &[]);
    let id = inspect(&store, &image)["Id"].as_str().unwrap().to_string();
    assert_eq!(inspect(&fresh, &copy)["Id"], id.as_str());

    // Mirrors are for pulls: one listed for this registry sees nothing of a push.
    let mirror = Proxy::start(reg.port, ProxyBehaviour::default());
    let conf = dir.path().join("registries.json");
    std::fs::write(&conf, format!(r#"{{"mirrors": {{"{}": ["http://{}"]}}}}"#, proxy.host(), mirror.host())).unwrap();
    push_ok(&store, &["--registries-conf", conf.to_str().unwrap(), &image]);
    assert!(mirror.log().is_empty(), "the push went to a mirror: {:?}", mirror.log());
    // An image id names no repository to push to.
    let err = push_err(&store, &[&id[7..19]]);
    assert!(err.contains("is an image id") && err.contains("give a DESTINATION"), "{err}");
    // On a terminal, a bar per layer (indicatif's drawing), as for pull.
    let cmd = format!("{} --root {} push {image}", crate::util::shalefs_bin(), store.display());
    let out = run_ok(std::process::Command::new("script").args(["-q", "-e", "-c", &cmd, "/dev/null"]).env("TERM", "xterm"));
    assert!(out.contains("Layer already exists") && out.contains("\u{1b}["), "{out:?}");
}

/// Token auth (the pull tests' token endpoint): anonymous pull works, an anonymous push is
/// refused with a one-line message saying what to do, and with credentials it goes through,
/// with one token for the push scope (and pull on the repository blobs are mounted from).
#[test]
fn push_with_token_auth_works_with_credentials_and_is_refused_clearly_without() {
    use crate::util::token::{ISSUER, SERVICE, TokenServer};
    let f = fixture();
    let dir = TestDir::new("push-token");
    let tokens = TokenServer::start(dir.path());
    let auth = Auth::Token { realm: tokens.realm(), service: SERVICE.into(), issuer: ISSUER.into(), cert: tokens.cert.clone() };
    let reg = Registry::start(dir.path(), auth);
    let image = format!("{}/test/base:1", reg.host());
    f.base.push(&image, &["--dest-creds", "bob:pw"]);
    let store = dir.path().join("store");
    pull_ok(&store, &image, &[]);
    let dest = format!("{}/test/new:1", reg.host());
    let err = push_err(&store, &[&image, &dest]);
    assert!(err.contains("refused to let us push to test/new") && err.contains("401") && err.contains("--creds"), "{err}");
    let err = push_err(&store, &["--creds", "bob:wrong", &image, &dest]);
    assert!(err.contains("refused the credentials"), "{err}");
    let before = tokens.log().len();
    let out = push_ok(&store, &["--creds", "bob:pw", &image, &dest]);
    assert!(out.contains("Mounted from test/base"), "{out}");
    assert_eq!(tokens.log()[before..], ["GET bob repository:test/new:pull,push repository:test/base:pull"], "{:?}", tokens.log());
    pull_ok(&dir.path().join("fresh"), &dest, &[]);
}

/// A connection dropped during a chunked upload: the push asks the registry where the upload
/// stands and sends the rest from there, not from the start.
#[test]
fn a_connection_dropped_mid_upload_resumes_from_the_offset_the_registry_reports() {
    let dir = TestDir::new("push-drop");
    let reg = Registry::start(dir.path(), Auth::None);
    let src = dir.mkdir("src");
    std::fs::write(src.join("noise"), random_bytes(300_000)).unwrap();
    let (tar, diff) = registry::gnu_tar(&src);
    let blob = registry::compress_with("gzip", &["-c", "-1"], &tar);
    registry::push_image(&reg.host(), "test/noise", "1", &[(blob.clone(), "application/vnd.oci.image.layer.v1.tar+gzip", diff)], "amd64");
    let store = dir.path().join("store");
    let image = format!("{}/test/noise:1", reg.host());
    // Kept blobs go as they are: the same bytes, the same manifest digest.
    let pulled = pull_ok(&store, &image, &["--keep-blobs"]);
    let pulled_digest = pulled.lines().find_map(|l| l.strip_prefix("Digest: ")).expect("digest line").to_string();
    let other = Registry::start(&dir.mkdir("other"), Auth::None);
    let proxy = Proxy::start(other.port, ProxyBehaviour { drop_patch: Some(2), ..Default::default() });
    let dest = format!("{}/test/noise:1", proxy.host());
    let out = push_ok(&store, &["--chunk-size", "64K", &image, &dest]);
    assert_eq!(digest_line(&out), pulled_digest, "{out}");
    assert!(out.contains("Resuming at byte 65536"), "{out}");
    let log = requests(&proxy, 0);
    let patches: Vec<&String> = log.iter().filter(|l| l.starts_with("PATCH ")).collect();
    let chunks = blob.len().div_ceil(65536);
    assert_eq!(patches.len(), chunks + 1, "one chunk sent twice, no more: {log:?}");
    assert!(patches[1].contains("[Content-Range: 65536-131071]") && patches[2].contains("[Content-Range: 65536-131071]"), "{patches:?}");
    let status = log.iter().position(|l| l.starts_with("GET ") && l.contains("/blobs/uploads/")).expect("no upload status asked");
    assert!(log[status + 1].starts_with("PATCH ") && log[status + 1].contains("65536-"), "{log:?}");
    let fresh = dir.path().join("fresh");
    pull_ok(&fresh, &format!("{}/test/noise@{pulled_digest}", other.host()), &[]);
}

#[test]
fn pushing_an_unknown_image_or_to_a_digest_is_a_one_line_error() {
    let dir = TestDir::new("push-bad");
    let store = dir.path().join("store");
    let err = push_err(&store, &["127.0.0.1:9/none/such:1"]);
    assert!(err.contains("no such image: 127.0.0.1:9/none/such:1"), "{err}");
    let err = push_err(&store, &["sha256:0123456789abcdef", "127.0.0.1:9/x:1"]);
    assert!(err.contains("no such image"), "{err}");
    let err = push_err(&store, &["127.0.0.1:9/x:1", &format!("127.0.0.1:9/y@sha256:{}", "0".repeat(64))]);
    assert!(err.contains("takes a tag, not a digest"), "{err}");
    assert!(listing(&store.join("tmp")).is_empty());
}

/// A committed image (its new layer's blob kept by commit) pushed to the repository its parent
/// came from: the parent's layers exist there already (a HEAD each), only the new layer and the
/// config are uploaded; pulled back into a fresh store it is the same image, with the change.
#[test]
fn a_committed_image_pushes_its_new_layer_and_only_heads_the_rest() {
    let f = fixture();
    let dir = TestDir::new("push-commit");
    let reg = Registry::start(dir.path(), Auth::None);
    let proxy = Proxy::start(reg.port, ProxyBehaviour::default());
    f.app.push(&format!("{}/test/app:1", reg.host()), &[]);
    let store = dir.path().join("store");
    let image = format!("{}/test/app:1", proxy.host());
    pull_ok(&store, &image, &[]);
    let mnt = dir.mkdir("mnt");
    {
        let _m = ShaleMount::foreground(&["--root".into(), store.clone().into(), image.clone().into(), "--name".into(), "pc1".into()], &mnt)
            .unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(mnt.join("committed.txt"), random_bytes(200_000)).unwrap();
    }
    let committed = format!("{}/test/app:committed", proxy.host());
    run_ok(shalefs(&store).args(["commit", "pc1", &committed]));

    let before = proxy.log().len();
    let out = push_ok(&store, &[&committed]);
    assert_eq!(out.matches("Layer already exists").count(), 3, "{out}");
    let reqs = requests(&proxy, before);
    let uploads = reqs.iter().filter(|l| l.starts_with("POST /v2/test/app/blobs/uploads/")).count();
    assert_eq!(uploads, 2, "the new layer and the config are uploaded, nothing else: {reqs:?}");
    assert!(reqs.last().is_some_and(|l| l.starts_with("PUT /v2/test/app/manifests/committed")), "{reqs:?}");

    let fresh = dir.path().join("fresh");
    pull_ok(&fresh, &committed, &[]);
    assert_eq!(inspect(&store, &committed)["Id"], inspect(&fresh, &committed)["Id"], "the image id changed");
    let back = dir.mkdir("back");
    let _m = ShaleMount::foreground(&["--root".into(), fresh.clone().into(), committed.clone().into()], &back).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(std::fs::read(back.join("committed.txt")).unwrap(), random_bytes(200_000));
}
