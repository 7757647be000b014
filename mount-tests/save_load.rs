//! save and load, checked by independent tools: skopeo inspects and copies what shalefs saves,
//! umoci unpacks it, podman loads and runs it; shalefs loads what skopeo writes (and a classic
//! archive written by hand) and mounts it, compared with umoci's unpack. Digests survive a
//! round trip; a layer changed in the store is refused; bad archives leave the store as it was.

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::pull::{comparable, fixture, shalefs};
use crate::util::registry::{Auth, Registry, listing, sha256_hex};
use crate::util::tree::assert_same_content;
use crate::util::{ShaleMount, TestDir, run, run_ok};

/// A store holding the fixture's `app` image, pulled from a registry (3 layers); the registry
/// runs while the returned guard lives.
fn pulled_store(dir: &TestDir) -> (Registry, PathBuf, String) {
    let f = fixture();
    let reg = Registry::start(dir.path(), Auth::None);
    let image = format!("{}/test/app:1", reg.host());
    f.app.push(&image, &[]);
    let store = dir.path().join("store");
    run_ok(shalefs(&store).args(["pull", "-q", &image]));
    (reg, store, image)
}

fn inspect(store: &Path, image: &str) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_str(&run_ok(shalefs(store).args(["inspect", image]))).unwrap();
    v[0].clone()
}

/// (image id, DiffIDs) as the store has them.
fn ids(store: &Path, image: &str) -> (String, Vec<String>) {
    let v = inspect(store, image);
    let id = v["Id"].as_str().unwrap().to_string();
    let diffs = v["RootFS"]["diff_ids"].as_array().unwrap().iter().map(|d| d.as_str().unwrap().to_string()).collect();
    (id, diffs)
}

fn save(store: &Path, args: &[&str]) -> std::process::Output {
    run(shalefs(store).arg("save").args(args))
}

fn load_ok(store: &Path, input: &Path) -> String {
    let out = run(shalefs(store).args(["load", "-i"]).arg(input));
    assert!(out.status.success(), "load {input:?}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Mount an image of the store (as a new container) and compare it with umoci's unpack.
fn assert_mount_matches(store: &Path, image: &str, oracle: &Path, dir: &TestDir, name: &str) {
    let mnt = dir.mkdir(&format!("mnt-{name}"));
    let _m = ShaleMount::foreground(&["--root".into(), store.into(), image.into(), "--name".into(), name.into()], &mnt)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_same_content(&comparable(&mnt), &comparable(oracle));
}

fn umoci_unpack(layout: &Path, tag: &str, bundle: &Path) -> PathBuf {
    run_ok(Command::new("umoci").args(["unpack", "--image"]).arg(format!("{}:{tag}", layout.display())).arg(bundle));
    bundle.join("rootfs")
}

fn skopeo(args: &[&str]) -> String {
    run_ok(Command::new("skopeo").args(args))
}

#[test]
fn save_in_each_format_is_read_by_skopeo_umoci_and_podman() {
    let dir = TestDir::new("save-formats");
    let (_reg, store, image) = pulled_store(&dir);
    let (id, diffs) = ids(&store, &image);
    let mut oracles = Vec::new();
    for (format, transport) in [("docker-archive", "docker-archive"), ("oci-archive", "oci-archive"), ("oci-dir", "oci")] {
        let out = dir.path().join(format!("saved-{format}"));
        let o = save(&store, &["--format", format, "-o", out.to_str().unwrap(), &image]);
        assert!(o.status.success(), "{format}: {}", String::from_utf8_lossy(&o.stderr));
        let src = format!("{transport}:{}", out.display());
        let inspected: serde_json::Value = serde_json::from_str(&skopeo(&["inspect", &src])).unwrap();
        // Uncompressed layers: each blob is the layer's exact tar, so its digest is the DiffID.
        let layers: Vec<String> = inspected["Layers"].as_array().unwrap().iter().map(|l| l.as_str().unwrap().to_string()).collect();
        assert_eq!(layers, diffs, "{format}");
        let config: serde_json::Value = serde_json::from_str(&skopeo(&["inspect", "--config", "--raw", &src])).unwrap();
        assert_eq!(config["rootfs"]["diff_ids"].as_array().unwrap().len(), 3);
        let layout = dir.path().join(format!("copied-{format}"));
        skopeo(&["copy", "--quiet", &src, &format!("oci:{}:t", layout.display())]);
        let cfg_digest = run_ok(Command::new("skopeo").args(["inspect", "--format", "{{.Digest}}", &format!("oci:{}:t", layout.display())]));
        assert!(!cfg_digest.is_empty());
        oracles.push(umoci_unpack(&layout, "t", &dir.path().join(format!("bundle-{format}"))));
    }
    // The config (so the image id) went out byte for byte.
    let saved_config = run_ok(Command::new("tar").args(["-xOf"]).arg(dir.path().join("saved-docker-archive")).arg(format!("blobs/sha256/{}", id.trim_start_matches("sha256:"))));
    assert_eq!(format!("sha256:{}", sha256_hex(saved_config.as_bytes())), id);
    for (i, oracle) in oracles.iter().enumerate() {
        assert_mount_matches(&store, &image, oracle, &dir, &format!("c{i}"));
    }

    // podman loads the docker-archive with the same image id and runs a command in it.
    let pod = Podman::new(&dir);
    let loaded = pod.run(&["load", "-i", dir.path().join("saved-docker-archive").to_str().unwrap()]);
    assert!(loaded.contains(&image), "{loaded}");
    let pid = pod.run(&["image", "inspect", "--format", "{{.Id}}", &image]);
    assert_eq!(format!("sha256:{}", pid.trim()), id);
    let said = pod.run(&["run", "--rm", "--network", "none", &image, "/bin/cat", "/etc/greeting"]);
    assert_eq!(said, "hello\n");
}

/// Rootful podman with its own storage under the test directory.
struct Podman {
    env: Vec<(String, PathBuf)>,
}

impl Podman {
    fn new(dir: &TestDir) -> Podman {
        let d = dir.mkdir("podman");
        // podman's default limits may exceed this machine's hard limits, which runc cannot raise.
        let hard = |flag: &str| run_ok(Command::new("bash").args(["-c", &format!("ulimit -H{flag}")])).trim().parse::<u64>().unwrap_or(1024).min(1024);
        let (nofile, nproc) = (hard("n"), hard("u"));
        std::fs::write(
            d.join("storage.conf"),
            format!("[storage]\ndriver = \"vfs\"\ngraphroot = \"{0}/graph\"\nrunroot = \"{0}/run\"\n", d.display()),
        )
        .unwrap();
        std::fs::write(
            d.join("containers.conf"),
            format!(
                "[containers]\ndefault_ulimits = [\"nofile={nofile}:{nofile}\", \"nproc={nproc}:{nproc}\"]\n[engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\nevents_logfile_path = \"{0}/events\"\ntmp_dir = \"{0}/tmp\"\n",
                d.display()
            ),
        )
        .unwrap();
        Podman { env: vec![("CONTAINERS_STORAGE_CONF".into(), d.join("storage.conf")), ("CONTAINERS_CONF".into(), d.join("containers.conf"))] }
    }

    fn run(&self, args: &[&str]) -> String {
        let mut c = Command::new("podman");
        c.args(args);
        for (k, v) in &self.env {
            c.env(k, v);
        }
        run_ok(&mut c)
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let mut c = Command::new("podman");
        c.args(["rm", "-af"]).stdout(Stdio::null()).stderr(Stdio::null());
        for (k, v) in &self.env {
            c.env(k, v);
        }
        let _ = c.status();
    }
}

#[test]
fn load_of_skopeo_archives_layouts_and_a_hand_written_classic_archive_mounts_as_umoci_unpacks() {
    let f = fixture();
    let dir = TestDir::new("load-formats");
    let src = format!("oci:{}:app", f.app.layout.display());
    let docker = dir.path().join("skopeo-docker.tar");
    skopeo(&["copy", "--quiet", &src, &format!("docker-archive:{}:test/app:1", docker.display())]);
    let oci_archive = dir.path().join("skopeo-oci.tar");
    skopeo(&["copy", "--quiet", &src, &format!("oci-archive:{}:example.com/test/app:2", oci_archive.display())]);
    let oci_dir = dir.path().join("skopeo-oci");
    skopeo(&["copy", "--quiet", &src, &format!("oci:{}:app", oci_dir.display())]);
    let classic = classic_archive(&dir, &docker);
    let legacy = legacy_archive(&dir);
    let gz = dir.path().join("skopeo-docker.tar.gz");
    run_ok(Command::new("sh").arg("-c").arg(format!("gzip -c {} > {}", docker.display(), gz.display())));

    let mut ids = Vec::new();
    for (i, input) in [&docker, &oci_archive, &oci_dir, &classic, &gz, &legacy].into_iter().enumerate() {
        let store = dir.path().join(format!("store{i}"));
        let out = load_ok(&store, input);
        let line = out.lines().find(|l| l.starts_with("Loaded image")).unwrap_or_else(|| panic!("{out}"));
        let name = line.rsplit(' ').next().unwrap().to_string();
        assert_eq!(out.matches(": Loaded").count(), 3, "{out}");
        let (id, diffs) = self::ids(&store, &name);
        assert_eq!(diffs.len(), 3);
        // The legacy form has no config: one is made from its v1 JSON, so its id is its own.
        if input != &legacy {
            ids.push(id);
        }
        assert_mount_matches(&store, &name, &f.oracle, &dir, &format!("l{i}"));
    }
    assert!(ids.windows(2).all(|w| w[0] == w[1]), "image ids differ: {ids:?}");
    // Names: skopeo's docker-archive tag, the OCI ref name, and the classic archive's.
    let tags = run_ok(shalefs(&dir.path().join("store1")).arg("images"));
    assert!(tags.contains("example.com/test/app") && tags.contains(" 2 "), "{tags}");
    // Loading again: every layer is already there.
    let again = load_ok(&dir.path().join("store0"), &docker);
    assert_eq!(again.matches("Already exists").count(), 3, "{again}");
}

/// The pre-OCI form, by hand: `manifest.json` + `repositories` + `<id>/layer.tar` + `<id>.json`,
/// from the layers and config of skopeo's archive.
fn classic_archive(dir: &TestDir, docker: &Path) -> PathBuf {
    let x = dir.mkdir("classic-src");
    run_ok(Command::new("tar").arg("-xf").arg(docker).arg("-C").arg(&x));
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(x.join("manifest.json")).unwrap()).unwrap();
    let root = dir.mkdir("classic");
    let config = std::fs::read(x.join(m[0]["Config"].as_str().unwrap())).unwrap();
    let config_name = format!("{}.json", sha256_hex(&config));
    std::fs::write(root.join(&config_name), &config).unwrap();
    let mut layers = Vec::new();
    let mut last = String::new();
    for (i, l) in m[0]["Layers"].as_array().unwrap().iter().enumerate() {
        let tar = std::fs::read(x.join(l.as_str().unwrap())).unwrap();
        let id = sha256_hex(format!("layer {i} {}", sha256_hex(&tar)).as_bytes());
        std::fs::create_dir(root.join(&id)).unwrap();
        std::fs::write(root.join(&id).join("layer.tar"), &tar).unwrap();
        std::fs::write(root.join(&id).join("VERSION"), "1.0").unwrap();
        layers.push(format!("{id}/layer.tar"));
        last = id;
    }
    let manifest = serde_json::json!([{"Config": config_name, "RepoTags": ["classic/app:old"], "Layers": layers}]);
    std::fs::write(root.join("manifest.json"), serde_json::to_vec(&manifest).unwrap()).unwrap();
    std::fs::write(root.join("repositories"), serde_json::to_vec(&serde_json::json!({"classic/app": {"old": last}})).unwrap()).unwrap();
    let out = dir.path().join("classic.tar");
    run_ok(Command::new("tar").arg("-cf").arg(&out).arg("-C").arg(&root).arg("."));
    out
}

/// The pre-1.10 form: no manifest.json; `repositories` names the top layer, each `<id>/json`
/// its parent. Made from the classic archive's layers.
fn legacy_archive(dir: &TestDir) -> PathBuf {
    let classic = dir.path().join("classic");
    let root = dir.mkdir("legacy");
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(classic.join("manifest.json")).unwrap()).unwrap();
    let mut parent: Option<String> = None;
    for l in m[0]["Layers"].as_array().unwrap() {
        let id = l.as_str().unwrap().trim_end_matches("/layer.tar").to_string();
        std::fs::create_dir(root.join(&id)).unwrap();
        std::fs::copy(classic.join(&id).join("layer.tar"), root.join(&id).join("layer.tar")).unwrap();
        let mut v1 = serde_json::json!({"id": id, "created": "2020-01-01T00:00:00Z", "os": "linux", "architecture": "amd64",
            "config": {"Cmd": ["/bin/sh"]}, "container_config": {"Cmd": ["/bin/sh", "-c", "#(nop) layer"]}});
        if let Some(p) = &parent {
            v1["parent"] = serde_json::json!(p);
        }
        std::fs::write(root.join(&id).join("json"), serde_json::to_vec(&v1).unwrap()).unwrap();
        parent = Some(id);
    }
    std::fs::write(root.join("repositories"), serde_json::to_vec(&serde_json::json!({"legacy/app": {"v1": parent}})).unwrap()).unwrap();
    let out = dir.path().join("legacy.tar");
    run_ok(Command::new("tar").arg("-cf").arg(&out).arg("-C").arg(&root).arg("."));
    out
}

#[test]
fn a_pulled_image_saved_and_loaded_into_a_fresh_store_keeps_its_id_and_diff_ids() {
    let dir = TestDir::new("save-roundtrip");
    let (_reg, store, image) = pulled_store(&dir);
    let before = ids(&store, &image);
    for format in ["docker-archive", "oci-archive", "oci-dir"] {
        let out = dir.path().join(format!("rt-{format}"));
        let o = save(&store, &["--format", format, "-o", out.to_str().unwrap(), &image]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let fresh = dir.path().join(format!("fresh-{format}"));
        let said = load_ok(&fresh, &out);
        assert!(said.contains(&format!("Loaded image: {image}")), "{said}");
        assert_eq!(ids(&fresh, &image), before, "{format}");
        // The manifest save wrote is the one recorded (the archive's own, by digest).
        let saved_index = if format == "oci-dir" {
            std::fs::read_to_string(out.join("index.json")).unwrap()
        } else {
            run_ok(Command::new("tar").arg("-xOf").arg(&out).arg("index.json"))
        };
        let manifest_digest = inspect(&fresh, &image)["ManifestDigest"].as_str().unwrap_or_default().to_string();
        assert!(!manifest_digest.is_empty() && saved_index.contains(&manifest_digest), "{format}: {manifest_digest} not in {saved_index}");
        // And out again from the fresh store: the same bytes for each layer.
        let again = dir.path().join(format!("rt2-{format}"));
        let o = save(&fresh, &["--format", format, "-o", again.to_str().unwrap(), &image]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    // To stdout, then from stdin.
    let saved = Command::new(crate::util::shalefs_bin()).arg("--root").arg(&store).args(["save", &image]).output().unwrap();
    assert!(saved.status.success());
    assert_eq!(saved.stdout, std::fs::read(dir.path().join("rt-docker-archive")).unwrap(), "save is not deterministic");
    let fresh = dir.path().join("fresh-stdin");
    let mut child = shalefs(&fresh).arg("load").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let data = saved.stdout.clone();
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(ids(&fresh, &image), before);
    assert!(listing(&fresh.join("tmp")).is_empty(), "{:?}", listing(&fresh.join("tmp")));
}

#[test]
fn a_layer_changed_behind_the_stores_back_is_refused_on_save() {
    let dir = TestDir::new("save-changed");
    let (_reg, store, image) = pulled_store(&dir);
    let v = inspect(&store, &image);
    let base = v["LayerDirs"].as_array().unwrap().iter().map(|d| PathBuf::from(d.as_str().unwrap())).find(|d| d.join("etc/greeting").is_file()).unwrap();
    let out = dir.path().join("out.tar");
    // Same size, other bytes: only the DiffID check can tell.
    std::fs::write(base.join("etc/greeting"), "jello\n").unwrap();
    let o = save(&store, &["-o", out.to_str().unwrap(), &image]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("no longer matches its DiffID") && err.contains("layer sha256:"), "{err}");
    assert_eq!(err.trim().lines().filter(|l| l.starts_with("shalefs:")).count(), 1, "{err}");
    assert!(!out.exists() && listing(dir.path()).iter().all(|p| !p.contains("shalefs-tmp")), "a partial archive was left");
    // Another size: the rebuild stops at that file.
    std::fs::write(base.join("etc/greeting"), "hello, longer\n").unwrap();
    let o = save(&store, &["-o", out.to_str().unwrap(), &image]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("etc/greeting") && err.contains("changed"), "{err}");
    assert!(!out.exists());
}

#[test]
fn a_layer_without_a_tar_record_is_saved_from_its_kept_blob_or_refused_saying_to_pull_again() {
    let dir = TestDir::new("save-no-record");
    let (_reg, store, image) = pulled_store(&dir);
    let (id, diffs) = ids(&store, &image);
    let record = store.join("layers").join(format!("{}.tarsplit", diffs[0].trim_start_matches("sha256:")));
    std::fs::remove_file(&record).unwrap();
    let out = dir.path().join("out.tar");
    let o = save(&store, &["-o", out.to_str().unwrap(), &image]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains(&diffs[0]) && err.contains("pull it again"), "{err}");
    assert!(!out.exists());
    // With the blobs kept, the tar comes from the blob, still checked against the DiffID.
    let kept = dir.path().join("kept");
    run_ok(shalefs(&kept).args(["pull", "-q", "--keep-blobs", &image]));
    std::fs::remove_file(kept.join("layers").join(format!("{}.tarsplit", diffs[0].trim_start_matches("sha256:")))).unwrap();
    let o = save(&kept, &["-o", out.to_str().unwrap(), &image]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let fresh = dir.path().join("fresh");
    load_ok(&fresh, &out);
    assert_eq!(ids(&fresh, &image), (id, diffs));
}

/// The store's images, layers and tmp/: what a failed load must leave as it was.
fn store_state(store: &Path) -> Vec<String> {
    let mut v = Vec::new();
    for sub in ["images", "layers", "tmp", "repositories.json"] {
        v.extend(listing(&store.join(sub)).into_iter().map(|p| format!("{sub}/{p}")));
        if store.join(sub).is_file() {
            v.push(format!("{sub}: {}", std::fs::read_to_string(store.join(sub)).unwrap()));
        }
    }
    v
}

fn load_err(store: &Path, input: &Path) -> String {
    let before = store_state(store);
    let out = run(shalefs(store).args(["load", "-i"]).arg(input));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "load of {input:?} succeeded");
    assert_eq!(err.trim().lines().count(), 1, "not one line: {err}");
    assert_eq!(store_state(store), before, "the store changed: {err}");
    err
}

/// A docker-archive (skopeo's) unpacked into a directory, edited, and tarred again.
fn edited_archive(dir: &TestDir, name: &str, edit: impl FnOnce(&Path, &serde_json::Value)) -> PathBuf {
    let f = fixture();
    let src = dir.path().join("pristine.tar");
    if !src.exists() {
        skopeo(&["copy", "--quiet", &format!("oci:{}:app", f.app.layout.display()), &format!("docker-archive:{}:test/app:1", src.display())]);
    }
    let root = dir.mkdir(&format!("edit-{name}"));
    run_ok(Command::new("tar").arg("-xf").arg(&src).arg("-C").arg(&root));
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(root.join("manifest.json")).unwrap()).unwrap();
    edit(&root, &m);
    let out = dir.path().join(format!("{name}.tar"));
    run_ok(Command::new("tar").arg("-cf").arg(&out).arg("-C").arg(&root).arg("."));
    out
}

#[test]
fn bad_archives_are_refused_in_one_line_and_leave_the_store_unchanged() {
    let dir = TestDir::new("load-bad");
    let store = dir.path().join("store");
    // A store with something in it already (the base image), so "unchanged" means something.
    let f = fixture();
    let base = dir.path().join("base.tar");
    skopeo(&["copy", "--quiet", &format!("oci:{}:base", f.base.layout.display()), &format!("docker-archive:{}:test/base:1", base.display())]);
    load_ok(&store, &base);
    let layer_of = |m: &serde_json::Value, i: usize| m[0]["Layers"][i].as_str().unwrap().to_string();

    let good = edited_archive(&dir, "good", |_, _| {});
    let bytes = std::fs::read(&good).unwrap();
    let truncated = dir.path().join("truncated.tar");
    std::fs::write(&truncated, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let err = load_err(&store, &truncated);
    assert!(err.contains("truncated") || err.contains("not in the archive"), "{err}");

    let wrong = edited_archive(&dir, "wrong-digest", |root, m| {
        // The last layer's bytes changed (its tar still parses): neither digest can match.
        let p = root.join(layer_of(m, 2));
        let mut t = std::fs::read(&p).unwrap();
        let n = t.len();
        t[n - 2000] ^= 0x55;
        std::fs::write(&p, t).unwrap();
    });
    let err = load_err(&store, &wrong);
    assert!(err.contains("digest"), "{err}");

    let missing = edited_archive(&dir, "missing-blob", |root, m| std::fs::remove_file(root.join(layer_of(m, 1))).unwrap());
    let err = load_err(&store, &missing);
    assert!(err.contains("not in the archive"), "{err}");

    let absent = edited_archive(&dir, "absent-layer", |root, m| {
        let mut m = m.clone();
        m[0]["Layers"][1] = serde_json::json!("no/such/layer.tar");
        std::fs::write(root.join("manifest.json"), serde_json::to_vec(&m).unwrap()).unwrap();
    });
    let err = load_err(&store, &absent);
    assert!(err.contains("no/such/layer.tar") && err.contains("not in the archive"), "{err}");

    let diffs = edited_archive(&dir, "diff-ids", |root, m| {
        // A config whose diff_ids name other layers (and whose name is its new digest).
        let cpath = root.join(m[0]["Config"].as_str().unwrap());
        let mut c: serde_json::Value = serde_json::from_slice(&std::fs::read(&cpath).unwrap()).unwrap();
        c["rootfs"]["diff_ids"][2] = serde_json::json!(format!("sha256:{}", "ab".repeat(32)));
        let bytes = serde_json::to_vec(&c).unwrap();
        let name = format!("{}.json", sha256_hex(&bytes));
        std::fs::write(root.join(&name), bytes).unwrap();
        let mut m = m.clone();
        m[0]["Config"] = serde_json::json!(name);
        std::fs::write(root.join("manifest.json"), serde_json::to_vec(&m).unwrap()).unwrap();
    });
    let err = load_err(&store, &diffs);
    assert!(err.contains("the image config says"), "{err}");

    let escape = edited_archive(&dir, "escape", |root, m| {
        let mut m = m.clone();
        m[0]["Layers"][0] = serde_json::json!("../../../etc/passwd");
        std::fs::write(root.join("manifest.json"), serde_json::to_vec(&m).unwrap()).unwrap();
    });
    let err = load_err(&store, &escape);
    assert!(err.contains("escape"), "{err}");
    // A layer whose own entries escape: the pull's hostile-layer rules apply.
    let hostile = edited_archive(&dir, "hostile", |root, m| {
        let evil = root.join("evil");
        std::fs::create_dir(&evil).unwrap();
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..9].copy_from_slice(b"../escape");
        h.set_size(1);
        h.set_mode(0o644);
        h.set_cksum();
        b.append(&h, &b"x"[..]).unwrap();
        let tar = b.into_inner().unwrap();
        let tar_digest = sha256_hex(&tar);
        std::fs::write(root.join(layer_of(m, 2)), &tar).unwrap();
        let cpath = root.join(m[0]["Config"].as_str().unwrap());
        let mut c: serde_json::Value = serde_json::from_slice(&std::fs::read(&cpath).unwrap()).unwrap();
        c["rootfs"]["diff_ids"][2] = serde_json::json!(format!("sha256:{tar_digest}"));
        std::fs::write(&cpath, serde_json::to_vec(&c).unwrap()).unwrap();
        let mut m = m.clone();
        let name = format!("{}.json", sha256_hex(&std::fs::read(&cpath).unwrap()));
        std::fs::rename(&cpath, root.join(&name)).unwrap();
        m[0]["Config"] = serde_json::json!(name);
        std::fs::write(root.join("manifest.json"), serde_json::to_vec(&m).unwrap()).unwrap();
    });
    let err = load_err(&store, &hostile);
    assert!(err.contains("'..'"), "{err}");
    assert!(!dir.path().join("escape").exists());
}

/// A small ext4 on a loop device, unmounted (and the device freed) when dropped.
struct LoopFs(PathBuf);

impl Drop for LoopFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_during_load_fails_clearly_and_leaves_the_store_unchanged() {
    let dir = TestDir::new("load-full");
    let f = fixture();
    let archive = dir.path().join("app.tar");
    skopeo(&["copy", "--quiet", &format!("oci:{}:app", f.app.layout.display()), &format!("docker-archive:{}:test/app:1", archive.display())]);
    // Half of busybox: its layer cannot fit.
    let busybox = std::fs::metadata("/bin/busybox").or_else(|_| std::fs::metadata("/usr/bin/busybox")).unwrap().size();
    let img = dir.path().join("fs.img");
    run_ok(Command::new("truncate").args(["-s", &format!("{}K", (busybox / 2048).max(512))]).arg(&img));
    run_ok(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&img));
    let store = dir.mkdir("store");
    // `-o loop` sets autoclear: the umount of the guard frees the loop device.
    run_ok(Command::new("mount").args(["-o", "loop"]).arg(&img).arg(&store));
    let _guard = LoopFs(store.clone());
    let _ = std::fs::remove_dir(store.join("lost+found"));
    let err = load_err(&store, &archive);
    assert!(err.contains("No space left on device"), "{err}");
    assert!(listing(&store.join("layers")).is_empty());
}
