//! The content-addressed store on disk. Layout under the root (default `/var/lib/shalefs`):
//!
//! ```text
//! lock                      flock held while image/tag/container records change
//! blobs/sha256/<hex>        manifests and configs (and layer blobs only with --keep-blobs)
//! layers/<diffid-hex>/      one unpacked layer, overlayfs format, keyed by its DiffID;
//!                           present only once fully unpacked and verified
//! layers/<diffid-hex>.json  what the layer came from: blob digest, media type, sizes
//! images/<config-hex>.json  one image: its manifest digest, layers (bottom first), platform
//! repositories.json         tags and digests of each repository → image id
//! containers/<name>/        a mounted image's own upper/ and work/, and container.json
//!                           (`run` adds init/, rootfs/ and run.lock)
//! tmp/                      partial downloads (<blob-hex>.partial, kept for resuming) and
//!                           unpacks in progress; nothing here is ever read as content
//! locks/<hex>.lock          one download per digest, across processes
//! ```
//!
//! Everything becomes visible by a rename from `tmp/` or a `.tmp` sibling once complete, so a
//! crash or a kill leaves either the old state or the new one.

pub mod container;
pub mod gc;
pub mod image;
pub mod pull;

use std::fs::File;
use std::io::Write;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};

use crate::oci::Digest;
use crate::sys;

pub use container::Container;
pub use image::{ImageRecord, LayerInfo, Repositories};

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
        std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(dir)
    }

    /// Make a verified, unpacked layer visible: its record first, then the directory, by rename.
    pub fn commit_layer(&self, unpacked: &Path, info: &LayerInfo) -> anyhow::Result<()> {
        let json = self.root.join("layers").join(format!("{}.json", info.diff_id.hex()));
        write_atomic(&json, &serde_json::to_vec_pretty(info)?)?;
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

    /// Remove a layer: renamed away first, so it is never seen half-deleted.
    pub fn remove_layer(&self, diff_id: &Digest) -> anyhow::Result<()> {
        let dir = self.layer_dir(diff_id);
        let doomed = self.tmp_dir().join(format!("remove-{}-{}", diff_id.hex(), std::process::id()));
        match std::fs::rename(&dir, &doomed) {
            Ok(()) => remove_tree(&doomed)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => bail!("removing layer {}: {e}", dir.display()),
        }
        let _ = std::fs::remove_file(self.root.join("layers").join(format!("{}.json", diff_id.hex())));
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
