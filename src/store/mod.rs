//! The content-addressed store on disk. Layout under the root (default `/var/lib/shalefs`):
//!
//! ```text
//! lock                      flock held while image/tag/container records change
//! blobs/sha256/<hex>        manifests and configs; layer blobs with --keep-blobs, and those of
//!                           committed and imported images (kept for save and push)
//! layers/<diffid-hex>/      one unpacked layer, overlayfs format, keyed by its DiffID;
//!                           present only once fully unpacked and verified
//! layers/<diffid-hex>.json  what the layer came from: blob digest, media type, sizes
//! layers/<diffid-hex>.tarsplit  the record that rebuilds the layer's exact tar
//!                           (archive::tarsplit); written by the unpack, made visible with it
//! layers/<diffid-hex>.stash/  content of entries a later entry of the same tar replaced
//!                           (rare; only the record reads it)
//! layers/<diffid-hex>.labels.json  whether the layer carries SELinux labels, written by the
//!                           first mount's scan (`union::labels`; layers never change)
//! images/<config-hex>.json  one image: its manifest digest, layers (bottom first), platform
//! repositories.json         tags and digests of each repository → image id
//! containers/<name>/        a mounted image's own upper/ and work/, and container.json;
//!                           work/control.sock while mounted (commit's pause, see `freeze`);
//!                           `run` adds init/, rootfs/ and run.lock
//! tmp/                      partial downloads (<blob-hex>.partial, kept for resuming),
//!                           unpacks in progress with their tar records (unpack-*, tarsplit-*,
//!                           stash-*), commits/imports in progress, and load's spooled archives
//!                           (load-spool-*); nothing here is ever read as content
//! sources.json              blob digest → the registry repositories known to hold it
//!                           (recorded by pull and push; push mounts from them)
//! locks/<hex>.lock          one download per digest, across processes
//! ```
//!
//! Everything becomes visible by a rename from `tmp/` or a `.tmp` sibling once complete, so a
//! crash or a kill leaves either the old state or the new one.

pub mod commit;
pub mod container;
pub mod gc;
pub mod image;
pub mod layer_tar;
pub mod pull;
pub mod push;

use std::fs::File;
use std::io::Write;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};

use crate::oci::Digest;
use crate::sys;

pub use container::Container;
pub use image::{BlobSources, ImageRecord, LayerInfo, Repositories};

pub const DEFAULT_ROOT: &str = "/var/lib/shalefs";

pub struct Store {
    root: PathBuf,
}

/// An flock held until dropped.
pub struct Lock {
    _file: File,
}

impl Store {
    /// Open (creating when missing) the store at `root`.
    pub fn open(root: &Path) -> anyhow::Result<Store> {
        for sub in ["blobs/sha256", "layers", "images", "containers", "tmp", "locks"] {
            let dir = root.join(sub);
            std::fs::create_dir_all(&dir).with_context(|| format!("creating store directory {}", dir.display()))?;
        }
        Ok(Store { root: root.to_path_buf() })
    }

    /// The root from `--root`, else `$SHALEFS_ROOT`, else the default.
    pub fn root_from(arg: Option<&Path>) -> PathBuf {
        arg.map(Path::to_path_buf)
            .or_else(|| std::env::var_os("SHALEFS_ROOT").filter(|v| !v.is_empty()).map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from(DEFAULT_ROOT))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    fn lock_file(&self, path: &Path, exclusive: bool) -> anyhow::Result<Lock> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .with_context(|| format!("opening lock {}", path.display()))?;
        sys::flock(file.as_fd(), exclusive).map_err(|e| anyhow!("locking {}: {e}", path.display()))?;
        Ok(Lock { _file: file })
    }

    /// The lock that serializes changes to image, tag and container records.
    pub fn lock_records(&self) -> anyhow::Result<Lock> {
        self.lock_file(&self.root.join("lock"), true)
    }

    /// The lock that makes one process fetch a digest while others wait for its result.
    pub fn lock_digest(&self, digest: &Digest) -> anyhow::Result<Lock> {
        self.lock_file(&self.root.join("locks").join(format!("{}.lock", digest.hex())), true)
    }

    // ---- layers ----

    pub fn layer_dir(&self, diff_id: &Digest) -> PathBuf {
        self.root.join("layers").join(diff_id.hex())
    }

    pub fn has_layer(&self, diff_id: &Digest) -> bool {
        self.layer_dir(diff_id).is_dir()
    }

    pub fn layer_info(&self, diff_id: &Digest) -> Option<LayerInfo> {
        let bytes = std::fs::read(self.root.join("layers").join(format!("{}.json", diff_id.hex()))).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// A fresh, empty directory in `tmp/` to unpack a layer into.
    pub fn new_unpack_dir(&self, diff_id: &Digest) -> anyhow::Result<PathBuf> {
        let dir = self.tmp_dir().join(format!("unpack-{}-{}", diff_id.hex(), std::process::id()));
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
        }
        remove_tree(&self.unpack_stash_path(&dir))?;
        std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(dir)
    }

    /// Where the unpack into `unpack_dir` keeps its tar record, beside it in `tmp/` (the
    /// name ends in the pid, as `prune` expects of leftovers).
    pub fn unpack_record_path(&self, unpack_dir: &Path) -> PathBuf {
        sibling_with_prefix(unpack_dir, "tarsplit-")
    }

    /// Where the unpack into `unpack_dir` keeps the content of replaced entries.
    pub fn unpack_stash_path(&self, unpack_dir: &Path) -> PathBuf {
        sibling_with_prefix(unpack_dir, "stash-")
    }

    /// Remove an unpack that will not be committed, with its record.
    pub fn discard_unpack(&self, unpack_dir: &Path) {
        let _ = remove_tree(unpack_dir);
        let _ = std::fs::remove_file(self.unpack_record_path(unpack_dir));
        let _ = remove_tree(&self.unpack_stash_path(unpack_dir));
    }

    pub fn layer_record_path(&self, diff_id: &Digest) -> PathBuf {
        self.root.join("layers").join(format!("{}.tarsplit", diff_id.hex()))
    }

    pub fn layer_stash_path(&self, diff_id: &Digest) -> PathBuf {
        self.root.join("layers").join(format!("{}.stash", diff_id.hex()))
    }

    /// Where the label scan of a layer is kept (see [`read_layer_labels`]).
    pub fn layer_labels_path(&self, diff_id: &Digest) -> PathBuf {
        self.root.join("layers").join(format!("{}.labels.json", diff_id.hex()))
    }

    /// Make a verified, unpacked layer visible: its records first (the JSON, the tar record
    /// and stash when the unpack kept them), then the directory, by rename.
    pub fn commit_layer(&self, unpacked: &Path, info: &LayerInfo) -> anyhow::Result<()> {
        let json = self.root.join("layers").join(format!("{}.json", info.diff_id.hex()));
        write_atomic(&json, &serde_json::to_vec_pretty(info)?)?;
        let record = self.unpack_record_path(unpacked);
        if record.exists() {
            std::fs::rename(&record, self.layer_record_path(&info.diff_id)).context("moving the layer's tar record into the store")?;
        }
        let stash = self.unpack_stash_path(unpacked);
        if stash.exists() {
            let dest = self.layer_stash_path(&info.diff_id);
            remove_tree(&dest)?;
            std::fs::rename(&stash, &dest).context("moving the layer's stash into the store")?;
        }
        let dest = self.layer_dir(&info.diff_id);
        match std::fs::rename(unpacked, &dest) {
            Ok(()) => Ok(()),
            // Another process committed the same layer first; its copy is as good as ours.
            Err(_) if dest.is_dir() => remove_tree(unpacked),
            Err(e) => {
                let _ = std::fs::remove_file(&json);
                Err(anyhow!("moving layer into {}: {e}", dest.display()))
            }
        }
    }

    /// Remove a layer: renamed away first, so it is never seen half-deleted. Its kept blob
    /// (a committed or imported layer's, or one pulled with --keep-blobs) goes with it.
    pub fn remove_layer(&self, diff_id: &Digest) -> anyhow::Result<()> {
        if let Some(info) = self.layer_info(diff_id) {
            let _ = std::fs::remove_file(self.blob_path(&info.digest));
        }
        let dir = self.layer_dir(diff_id);
        let doomed = self.tmp_dir().join(format!("remove-{}-{}", diff_id.hex(), std::process::id()));
        match std::fs::rename(&dir, &doomed) {
            Ok(()) => remove_tree(&doomed)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => bail!("removing layer {}: {e}", dir.display()),
        }
        let _ = std::fs::remove_file(self.root.join("layers").join(format!("{}.json", diff_id.hex())));
        let _ = std::fs::remove_file(self.layer_record_path(diff_id));
        let _ = std::fs::remove_file(self.layer_labels_path(diff_id));
        remove_tree(&self.layer_stash_path(diff_id))?;
        Ok(())
    }

    pub fn all_layers(&self) -> anyhow::Result<Vec<Digest>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(self.root.join("layers"))? {
            let entry = entry?;
            if let Some(d) = entry.file_name().to_str().and_then(Digest::from_hex) {
                out.push(d);
            }
        }
        Ok(out)
    }

    // ---- blobs (manifests, configs, kept layer blobs) ----

    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(digest.hex())
    }

    /// Store small verified content under its digest.
    pub fn put_blob(&self, digest: &Digest, bytes: &[u8]) -> anyhow::Result<()> {
        if &Digest::of_bytes(bytes) != digest {
            bail!("content does not match its digest {digest}");
        }
        write_atomic(&self.blob_path(digest), bytes)
    }

    pub fn read_blob(&self, digest: &Digest) -> anyhow::Result<Vec<u8>> {
        let path = self.blob_path(digest);
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        if &Digest::of_bytes(&bytes) != digest {
            bail!("stored blob {} is corrupt: its content does not match {digest}", path.display());
        }
        Ok(bytes)
    }

    pub fn partial_path(&self, blob: &Digest) -> PathBuf {
        self.tmp_dir().join(format!("{}.partial", blob.hex()))
    }
}

/// What a scan of a layer found of SELinux labels (`layers/<diffid-hex>.labels.json`).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct LayerLabels {
    /// Some object of the layer carries `security.selinux`.
    selinux: bool,
}

/// The kept label scan of a layer: whether it carries labels; `None` when never scanned (or
/// the record is unreadable, which only costs a scan).
pub fn read_layer_labels(path: &Path) -> Option<bool> {
    let bytes = std::fs::read(path).ok()?;
    serde_json::from_slice::<LayerLabels>(&bytes).ok().map(|l| l.selinux)
}

/// Keep a layer's label scan, atomically.
pub fn write_layer_labels(path: &Path, selinux: bool) -> anyhow::Result<()> {
    write_atomic(path, &serde_json::to_vec(&LayerLabels { selinux })?)
}

/// Write a file so that readers see the old content or the new, never a torn one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let written = File::create(&tmp)
        .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()))
        .and_then(|()| std::fs::rename(&tmp, path));
    written.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        anyhow!("writing {}: {e}", path.display())
    })
}

fn sibling_with_prefix(path: &Path, prefix: &str) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!("{prefix}{name}"))
}

pub fn remove_tree(path: &Path) -> anyhow::Result<()> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(anyhow!("removing {}: {e}", path.display())),
    }
}

impl Store {
    /// Give each directory a layer's tar needed but did not list the mode, owner and times it
    /// has in the layers below (bottom layer first in `chain`), as applying the layers one on
    /// another would leave them: a layer that adds `/tmp/x` must not turn a 1777 `/tmp` into
    /// 0755. Done once per layer, by the first image that brings it, under the layer's lock.
    pub fn settle_implicit_dirs(&self, chain: &[Digest]) -> anyhow::Result<()> {
        for (i, diff_id) in chain.iter().enumerate() {
            let Some(mut info) = self.layer_info(diff_id) else { continue };
            if info.implicit_settled {
                continue;
            }
            let _lock = self.lock_digest(diff_id)?;
            let dir = sys::open_dir(&self.layer_dir(diff_id)).map_err(|e| anyhow!("layer {diff_id}: {e}"))?;
            for path in &info.implicit_dirs {
                let Ok(rel) = sys::cstring(path.as_bytes()) else { continue };
                // The nearest layer below that has this directory decides.
                let below = chain[..i].iter().rev().find_map(|lower| {
                    let ldir = sys::open_dir(&self.layer_dir(lower)).ok()?;
                    let fd = sys::open_beneath(ldir.as_fd(), &rel, libc::O_DIRECTORY | libc::O_RDONLY).ok()?;
                    sys::fstat(fd.as_fd()).ok()
                });
                let Some(st) = below else { continue };
                let Ok(fd) = sys::open_beneath(dir.as_fd(), &rel, libc::O_DIRECTORY | libc::O_RDONLY) else { continue };
                sys::fchown(fd.as_fd(), st.st_uid, st.st_gid).map_err(|e| anyhow!("layer {diff_id}: chown {path}: {e}"))?;
                sys::fchmod(fd.as_fd(), st.st_mode & 0o7777).map_err(|e| anyhow!("layer {diff_id}: chmod {path}: {e}"))?;
                sys::futimens(fd.as_fd(), sys::stat_times(&st)).map_err(|e| anyhow!("layer {diff_id}: times of {path}: {e}"))?;
            }
            info.implicit_settled = true;
            write_atomic(&self.root.join("layers").join(format!("{}.json", diff_id.hex())), &serde_json::to_vec_pretty(&info)?)?;
        }
        Ok(())
    }
}
