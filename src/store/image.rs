//! Image records and the tags and digests that name them.

use std::collections::BTreeMap;

use anyhow::{Context, anyhow, bail};
use serde::{Deserialize, Serialize};

use super::{Store, write_atomic};
use crate::oci::{Digest, Reference};

/// One unpacked layer and the blob it came from.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LayerInfo {
    pub diff_id: Digest,
    pub digest: Digest,
    pub media_type: String,
    pub compressed_size: u64,
    pub unpacked_size: u64,
    /// Directories the tar did not list (see `archive::unpack::Stats`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub implicit_dirs: Vec<String>,
    /// Whether they have taken their attributes from the layers below.
    #[serde(default)]
    pub implicit_settled: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ImageLayer {
    pub diff_id: Digest,
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
}

/// One image: its id is the digest of its config, as with docker.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ImageRecord {
    pub id: Digest,
    pub manifest_digest: Digest,
    pub platform: String,
    /// Bottom layer first, as in the config's `rootfs.diff_ids`.
    pub layers: Vec<ImageLayer>,
    pub created: Option<String>,
    /// Seconds since the epoch when it was pulled.
    pub pulled_at: u64,
}

/// What a tag resolved to when it was last pulled: the image, and the digest the registry gave
/// for the tag (an index's digest for a multi-platform image), which a re-pull compares with
/// one HEAD request.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TagEntry {
    pub image: Digest,
    pub digest: Digest,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RepoEntry {
    #[serde(default)]
    pub tags: BTreeMap<String, TagEntry>,
    /// Manifest (or index) digest → image.
    #[serde(default)]
    pub digests: BTreeMap<String, Digest>,
}

/// `repositories.json`: `registry/repository` → its tags and digests.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Repositories {
    #[serde(default)]
    pub repos: BTreeMap<String, RepoEntry>,
}

impl Repositories {
    /// The image a reference names, if pulled.
    pub fn lookup(&self, r: &Reference) -> Option<&Digest> {
        let repo = self.repos.get(&r.name())?;
        match (&r.digest, &r.tag) {
            (Some(d), _) => repo.digests.get(&d.to_string()),
            (None, Some(t)) => repo.tags.get(t).map(|t| &t.image),
            _ => None,
        }
    }

    /// Every (name, tag-or-none, image) row, for `images`.
    pub fn names_of(&self, id: &Digest) -> (Vec<String>, Vec<String>) {
        let mut tags = Vec::new();
        let mut digests = Vec::new();
        for (name, repo) in &self.repos {
            for (tag, e) in &repo.tags {
                if &e.image == id {
                    tags.push(format!("{name}:{tag}"));
                }
            }
            for (digest, image) in &repo.digests {
                if image == id {
                    digests.push(format!("{name}@{digest}"));
                }
            }
        }
        (tags, digests)
    }

    /// Remove every name of an image.
    pub fn forget_image(&mut self, id: &Digest) {
        for repo in self.repos.values_mut() {
            repo.tags.retain(|_, e| &e.image != id);
            repo.digests.retain(|_, image| image != id);
        }
        self.repos.retain(|_, r| !r.tags.is_empty() || !r.digests.is_empty());
    }
}

/// `sources.json`: what the store knows of where blobs are in registries, recorded by pull and
/// push, so a push can mount a blob from another repository of the same registry instead of
/// uploading it, and find the blob an earlier push compressed a layer into.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct BlobSources {
    /// Blob digest → what it is and where it is.
    #[serde(default)]
    pub blobs: BTreeMap<String, KnownBlob>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KnownBlob {
    pub media_type: String,
    pub size: u64,
    /// The layer it holds, by DiffID; none for a config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diff_id: Option<Digest>,
    /// `registry/repository` names known to hold it.
    #[serde(default)]
    pub repos: Vec<String>,
}

impl BlobSources {
    /// Note that `repo` (`registry/repository`) holds these blobs: (digest, media type, size, DiffID).
    pub fn note(&mut self, repo: &str, blobs: &[(Digest, String, u64, Option<Digest>)]) {
        for (digest, media_type, size, diff_id) in blobs {
            let entry = self.blobs.entry(digest.to_string()).or_insert_with(|| KnownBlob {
                media_type: media_type.clone(),
                size: *size,
                diff_id: diff_id.clone(),
                repos: Vec::new(),
            });
            if !entry.repos.iter().any(|r| r == repo) {
                entry.repos.push(repo.to_string());
            }
        }
    }
}

impl Store {
    pub fn load_sources(&self) -> anyhow::Result<BlobSources> {
        let path = self.root.join("sources.json");
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| format!("reading {}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BlobSources::default()),
            Err(e) => Err(anyhow!("reading {}: {e}", path.display())),
        }
    }

    /// Record where blobs are, under the records lock (the caller holds it).
    pub fn note_sources(&self, repo: &str, blobs: &[(Digest, String, u64, Option<Digest>)]) -> anyhow::Result<()> {
        let mut sources = self.load_sources()?;
        let before = sources.blobs.values().map(|b| b.repos.len()).sum::<usize>() + sources.blobs.len();
        sources.note(repo, blobs);
        if sources.blobs.values().map(|b| b.repos.len()).sum::<usize>() + sources.blobs.len() != before {
            write_atomic(&self.root.join("sources.json"), &serde_json::to_vec_pretty(&sources)?)?;
        }
        Ok(())
    }

    pub fn save_image(&self, rec: &ImageRecord) -> anyhow::Result<()> {
        let path = self.root.join("images").join(format!("{}.json", rec.id.hex()));
        write_atomic(&path, &serde_json::to_vec_pretty(rec)?)
    }

    pub fn load_image(&self, id: &Digest) -> anyhow::Result<ImageRecord> {
        let path = self.root.join("images").join(format!("{}.json", id.hex()));
        let bytes = std::fs::read(&path).with_context(|| format!("image {} is not in the store", id.short()))?;
        serde_json::from_slice(&bytes).with_context(|| format!("reading {}", path.display()))
    }

    pub fn remove_image_record(&self, id: &Digest) -> anyhow::Result<()> {
        let path = self.root.join("images").join(format!("{}.json", id.hex()));
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(anyhow!("removing {}: {e}", path.display())),
            _ => Ok(()),
        }
    }

    pub fn all_images(&self) -> anyhow::Result<Vec<ImageRecord>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(self.root.join("images"))? {
            let name = entry?.file_name();
            let Some(hex) = name.to_str().and_then(|n| n.strip_suffix(".json")) else { continue };
            if let Some(id) = Digest::from_hex(hex) {
                out.push(self.load_image(&id)?);
            }
        }
        out.sort_by_key(|r| std::cmp::Reverse(r.pulled_at));
        Ok(out)
    }

    /// Whether every layer of an image is in the store.
    pub fn image_complete(&self, rec: &ImageRecord) -> bool {
        rec.layers.iter().all(|l| self.has_layer(&l.diff_id))
    }

    pub fn load_repositories(&self) -> anyhow::Result<Repositories> {
        let path = self.root.join("repositories.json");
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| format!("reading {}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Repositories::default()),
            Err(e) => Err(anyhow!("reading {}: {e}", path.display())),
        }
    }

    /// Change the tags under the records lock (the caller holds it).
    pub fn save_repositories(&self, repos: &Repositories) -> anyhow::Result<()> {
        write_atomic(&self.root.join("repositories.json"), &serde_json::to_vec_pretty(repos)?)
    }

    /// The image a user named: a reference that was pulled or tagged, or an image id (full,
    /// `sha256:`-prefixed, or a unique prefix of at least 4 hex digits), as docker accepts.
    pub fn resolve_image(&self, name: &str) -> anyhow::Result<Digest> {
        let repos = self.load_repositories()?;
        if let Ok(r) = Reference::parse(name)
            && let Some(id) = repos.lookup(&r) {
                return Ok(id.clone());
            }
        let hex = name.strip_prefix("sha256:").unwrap_or(name);
        if hex.len() >= 4 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            let matches: Vec<Digest> =
                self.all_images()?.into_iter().map(|r| r.id).filter(|id| id.hex().starts_with(hex)).collect();
            match matches.len() {
                1 => return Ok(matches[0].clone()),
                0 => {}
                _ => bail!("image id prefix {hex} is ambiguous"),
            }
        }
        bail!("no such image: {name} (see `shalefs images`)")
    }
}
