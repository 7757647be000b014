//! Pushing an image from the store to a registry: for each layer, the cheapest way to get its
//! blob there, then the config, then the manifest.
//!
//! ```text
//! HEAD the blob ─► there: nothing to send
//!               ─► another repository of this registry holds it (sources.json): mount it
//!               ─► the store keeps the blob (blobs/sha256/, --keep-blobs or commit): upload it
//!               ─► else compress the layer's tar again (--compression): a new blob digest
//! ```
//!
//! An image whose blobs all went as they were gets its original manifest bytes, so the same
//! manifest digest; a layer compressed again (or `--format` changing the media types) means a
//! manifest written anew, with the same config, so the same image id and DiffIDs.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use anyhow::{Context, anyhow, bail};

use super::Store;
use super::image::{BlobSources, ImageRecord, TagEntry};
use crate::oci::digest::{Hasher, HashingWriter};
use crate::oci::manifest::{self, Compression, DOCKER_MANIFEST, Descriptor, ImageManifest, Manifest, OCI_MANIFEST};
use crate::oci::{Digest, Reference};
use crate::registry::Client;
use crate::registry::push::{BlobBytes, Mount, Upload, UploadEvent};
use crate::registry::RepoClient;

const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// The manifest format pushed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Oci,
    V2s2,
}

pub struct PushOptions {
    /// What a layer is compressed into when the registry has no blob of it and the store kept none.
    pub compression: Compression,
    /// `None`: the format of the stored manifest.
    pub format: Option<Format>,
    /// Blobs up to this size go in one PUT; larger ones in PATCH chunks of this size.
    pub chunk_size: u64,
    pub jobs: usize,
}

/// What a push reports as it goes, for the progress display.
pub enum Event<'a> {
    /// The image's layers, bottom first: (blob digest, size) as stored.
    Layers(&'a [(Digest, u64)]),
    Exists(usize),
    Mounted(usize, &'a str),
    /// Compressing the layer's tar again.
    Compressing(usize),
    /// Uploading, from this byte, of this many.
    Started(usize, u64, u64),
    Progress(usize, u64),
    Retrying(usize, &'a str),
    /// Sent; the blob digest, when it is not the stored one.
    Pushed(usize, Option<&'a Digest>),
}

pub trait Observer: Sync {
    fn event(&self, e: Event<'_>);
}

#[derive(Debug)]
pub struct PushResult {
    pub digest: Digest,
    pub manifest_size: usize,
    pub image: Digest,
    /// Whether the stored manifest went as it was (so its digest is the pulled one).
    pub original_manifest: bool,
    pub stored_manifest: Digest,
    pub existing: usize,
    pub mounted: usize,
    pub uploaded: usize,
    pub recompressed: usize,
    pub bytes: u64,
}

/// How one layer got to the registry.
enum Outcome {
    Existing,
    Mounted,
    Uploaded(u64),
    Recompressed(u64),
}

/// Push the image `name` names to `dest` (a tag; `latest` when none).
pub fn push(store: &Store, client: &Client, name: &str, dest: &Reference, opts: &PushOptions, obs: &dyn Observer) -> anyhow::Result<PushResult> {
    if dest.digest.is_some() {
        bail!("{dest}: a push destination takes a tag, not a digest");
    }
    let id = store.resolve_image(name)?;
    let rec = store.load_image(&id)?;
    let manifest_bytes = store.read_blob(&rec.manifest_digest).with_context(|| format!("the manifest of image {}", id.short()))?;
    let config_bytes = store.read_blob(&rec.id).with_context(|| format!("the config of image {}", id.short()))?;
    let original = match Manifest::parse(&manifest_bytes, None).with_context(|| format!("the manifest of image {}", id.short()))? {
        Manifest::Image(m) => m,
        Manifest::Index(_) => bail!("image {}: its stored manifest is an index", id.short()),
    };
    if original.layers.len() != rec.layers.len() {
        bail!("image {}: the manifest lists {} layers but the image record {}", id.short(), original.layers.len(), rec.layers.len());
    }
    let stored_format = format_of(&original);
    let format = opts.format.unwrap_or(stored_format);
    if format == Format::V2s2 && (opts.compression == Compression::Zstd || original.layers.iter().any(is_zstd)) {
        bail!("zstd layers have no Docker v2 schema 2 media type: push with --format oci");
    }
    let sources = store.load_sources()?;
    let mount_from = mount_candidates(&sources, dest, &original);
    let repo = client.repo_for_push(dest, &mount_from)?;
    let job = Job { store, repo: &repo, dest, sources: &sources, opts, obs, format };

    let sizes: Vec<(Digest, u64)> = original.layers.iter().map(|l| (l.digest.clone(), l.size)).collect();
    obs.event(Event::Layers(&sizes));
    let layers = job.push_layers(&original.layers, &rec)?;
    let config_outcome = job.push_config(&original.config, &config_bytes)?;

    let mut result = PushResult {
        digest: id.clone(),
        manifest_size: 0,
        image: id.clone(),
        original_manifest: false,
        stored_manifest: rec.manifest_digest.clone(),
        existing: 0,
        mounted: 0,
        uploaded: 0,
        recompressed: 0,
        bytes: 0,
    };
    for (_, outcome) in layers.iter().chain([(original.config.clone(), config_outcome)].iter()) {
        match outcome {
            Outcome::Existing => result.existing += 1,
            Outcome::Mounted => result.mounted += 1,
            Outcome::Uploaded(n) => {
                result.uploaded += 1;
                result.bytes += n;
            }
            Outcome::Recompressed(n) => {
                result.recompressed += 1;
                result.bytes += n;
            }
        }
    }
    let descs: Vec<Descriptor> = layers.into_iter().map(|(d, _)| d).collect();
    let unchanged = format == stored_format && descs.iter().zip(&original.layers).all(|(a, b)| a.digest == b.digest);
    let (bytes, media_type) = if unchanged {
        (manifest_bytes, manifest_media_type(stored_format))
    } else {
        (rewrite_manifest(&manifest_bytes, &descs, format)?, manifest_media_type(format))
    };
    let tag = dest.tag.clone().unwrap_or_else(|| "latest".into());
    let digest = repo.put_manifest(&tag, &bytes, media_type).with_context(|| format!("pushing the manifest of {dest}"))?;
    result.digest = digest.clone();
    result.manifest_size = bytes.len();
    result.original_manifest = unchanged;
    record_push(store, dest, &rec, &descs, &original.config, &digest, &bytes)?;
    Ok(result)
}

/// What every layer push shares.
struct Job<'a> {
    store: &'a Store,
    repo: &'a RepoClient<'a>,
    dest: &'a Reference,
    sources: &'a BlobSources,
    opts: &'a PushOptions,
    obs: &'a dyn Observer,
    format: Format,
}

impl Job<'_> {
    /// Push the layers with up to `jobs` workers; returns each layer's descriptor as pushed.
    fn push_layers(&self, layers: &[Descriptor], rec: &ImageRecord) -> anyhow::Result<Vec<(Descriptor, Outcome)>> {
        let next = AtomicUsize::new(0);
        let failed = AtomicBool::new(false);
        let results: Mutex<Vec<Option<(Descriptor, Outcome)>>> = Mutex::new((0..layers.len()).map(|_| None).collect());
        let errors = Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for _ in 0..self.opts.jobs.clamp(1, layers.len().max(1)) {
                s.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, Ordering::SeqCst);
                        if i >= layers.len() || failed.load(Ordering::SeqCst) {
                            break;
                        }
                        match self.push_layer(i, &layers[i], &rec.layers[i].diff_id) {
                            Ok(r) => {
                                if let Ok(mut all) = results.lock() {
                                    all[i] = Some(r);
                                }
                            }
                            Err(e) => {
                                failed.store(true, Ordering::SeqCst);
                                if let Ok(mut errs) = errors.lock() {
                                    errs.push(e.context(format!("layer {}", layers[i].digest)));
                                }
                            }
                        }
                    }
                });
            }
        });
        if let Some(e) = errors.into_inner().unwrap_or_default().into_iter().next() {
            return Err(e);
        }
        results.into_inner().map_err(|_| anyhow!("a push worker panicked"))?.into_iter().map(|r| r.ok_or_else(|| anyhow!("a layer was not pushed"))).collect()
    }

    /// One layer: a HEAD, then a mount, then an upload of the kept blob or of one made anew.
    fn push_layer(&self, i: usize, stored: &Descriptor, diff_id: &Digest) -> anyhow::Result<(Descriptor, Outcome)> {
        let compression = manifest::layer_compression(stored)?;
        let as_stored = Descriptor { media_type: layer_media_type(self.format, compression).to_string(), ..stored.clone() };
        // A blob an earlier push made of this layer, known to be in this repository, is the one to ask for.
        let earlier = self.recompressed_in_dest(diff_id);
        let first = earlier.clone().unwrap_or_else(|| as_stored.clone());
        if self.repo.has_blob(&first.digest)? {
            self.obs.event(Event::Exists(i));
            return Ok((first, Outcome::Existing));
        }
        let mut session = None;
        if let Some(from) = self.mount_source(&as_stored.digest) {
            match self.repo.mount_blob(&as_stored.digest, &from) {
                Ok(Mount::Mounted) => {
                    self.obs.event(Event::Mounted(i, &from));
                    return Ok((as_stored, Outcome::Mounted));
                }
                Ok(Mount::Session(s)) => session = Some(s),
                // A mount we may not make (no pull access there) is not a failed push.
                Err(e) => tracing::info!("mounting {} from {from}: {e:#}; uploading instead", as_stored.digest),
            }
        }
        // A blob of this layer compressed as we would compress it, in another repository here.
        if let Some((desc, from)) = self.recompressed_elsewhere(diff_id, &as_stored.digest)
            && let Ok(Mount::Mounted) = self.repo.mount_blob(&desc.digest, &from).inspect(|m| {
                if let Mount::Session(s) = m {
                    self.repo.cancel_upload(s);
                }
            })
        {
            if let Some(s) = session.take() {
                self.repo.cancel_upload(&s);
            }
            self.obs.event(Event::Mounted(i, &from));
            return Ok((desc, Outcome::Mounted));
        }
        let kept = self.store.blob_path(&stored.digest);
        if let Ok(file) = File::open(&kept)
            && file.metadata().map(|m| m.len()).ok() == Some(stored.size) {
                self.upload(i, &as_stored, &file, session)?;
                self.obs.event(Event::Pushed(i, None));
                return Ok((as_stored, Outcome::Uploaded(stored.size)));
            }
        self.obs.event(Event::Compressing(i));
        let made = compress_layer(self.store, i, diff_id, self.opts.compression)?;
        let desc = Descriptor {
            media_type: layer_media_type(self.format, self.opts.compression).to_string(),
            digest: made.digest.clone(),
            size: made.size,
            ..stored.clone()
        };
        if desc.digest != first.digest && self.repo.has_blob(&desc.digest)? {
            if let Some(s) = session {
                self.repo.cancel_upload(&s);
            }
            self.obs.event(Event::Exists(i));
            return Ok((desc, Outcome::Existing));
        }
        let file = File::open(&made.path).with_context(|| format!("opening {}", made.path.display()))?;
        self.upload(i, &desc, &file, session)?;
        self.obs.event(Event::Pushed(i, Some(&desc.digest)));
        Ok((desc, Outcome::Recompressed(made.size)))
    }

    fn upload(&self, i: usize, desc: &Descriptor, bytes: &dyn BlobBytes, session: Option<String>) -> anyhow::Result<()> {
        let up = Upload { digest: &desc.digest, size: desc.size, bytes, chunk_size: self.opts.chunk_size.max(1), session };
        let report = |e: UploadEvent<'_>| match e {
            UploadEvent::Sending(at) => self.obs.event(Event::Started(i, at, desc.size)),
            UploadEvent::Sent(n) => self.obs.event(Event::Progress(i, n)),
            UploadEvent::Resuming(why) => self.obs.event(Event::Retrying(i, why)),
        };
        self.repo.upload_blob(up, &report)
    }

    /// The config: a HEAD, a mount, or an upload of its bytes (always as they are).
    fn push_config(&self, config: &Descriptor, bytes: &[u8]) -> anyhow::Result<Outcome> {
        let ctx = || format!("config {}", config.digest);
        if self.repo.has_blob(&config.digest).with_context(ctx)? {
            return Ok(Outcome::Existing);
        }
        let mut session = None;
        if let Some(from) = self.mount_source(&config.digest) {
            match self.repo.mount_blob(&config.digest, &from) {
                Ok(Mount::Mounted) => return Ok(Outcome::Mounted),
                Ok(Mount::Session(s)) => session = Some(s),
                Err(e) => tracing::info!("mounting {} from {from}: {e:#}; uploading instead", config.digest),
            }
        }
        let up = Upload { digest: &config.digest, size: bytes.len() as u64, bytes: &bytes, chunk_size: self.opts.chunk_size.max(1), session };
        self.repo.upload_blob(up, &|_| {}).with_context(ctx)?;
        Ok(Outcome::Uploaded(bytes.len() as u64))
    }

    /// A repository of the destination's registry (not the destination) known to hold `digest`.
    fn mount_source(&self, digest: &Digest) -> Option<String> {
        let known = self.sources.blobs.get(&digest.to_string())?;
        known.repos.iter().find_map(|name| other_repo_of(name, self.dest))
    }

    /// The blobs of this layer in the compression a push would make (from earlier pushes, or
    /// pulled so), each with the repositories known to hold it.
    fn known_blobs(&self, diff_id: &Digest) -> Vec<(Descriptor, &[String])> {
        self.sources
            .blobs
            .iter()
            .filter(|(_, b)| b.diff_id.as_ref() == Some(diff_id))
            .filter_map(|(digest, b)| {
                let desc = Descriptor {
                    media_type: b.media_type.clone(),
                    digest: Digest::parse(digest).ok()?,
                    size: b.size,
                    platform: None,
                    annotations: Default::default(),
                    urls: vec![],
                };
                let compression = manifest::layer_compression(&desc).ok()?;
                (compression == self.opts.compression)
                    .then(|| (Descriptor { media_type: layer_media_type(self.format, compression).to_string(), ..desc }, b.repos.as_slice()))
            })
            .collect()
    }

    /// A blob an earlier push compressed this layer into, known to be in the destination.
    fn recompressed_in_dest(&self, diff_id: &Digest) -> Option<Descriptor> {
        let dest = self.dest.name();
        self.known_blobs(diff_id).into_iter().find(|(_, repos)| repos.contains(&dest)).map(|(d, _)| d)
    }

    /// Such a blob in another repository of the destination's registry, to mount.
    fn recompressed_elsewhere(&self, diff_id: &Digest, except: &Digest) -> Option<(Descriptor, String)> {
        self.known_blobs(diff_id)
            .into_iter()
            .filter(|(d, _)| &d.digest != except)
            .find_map(|(d, repos)| repos.iter().find_map(|n| other_repo_of(n, self.dest)).map(|from| (d, from)))
    }
}

/// The repository part of `name` (`registry/repository`) when it is on `dest`'s registry and
/// is not `dest` itself.
fn other_repo_of(name: &str, dest: &Reference) -> Option<String> {
    let (registry, repository) = name.split_once('/')?;
    (registry == dest.registry && repository != dest.repository).then(|| repository.to_string())
}

/// The repositories of the destination's registry a blob of this image may be mounted from
/// (the push token asks for pull access to each; a few at most).
fn mount_candidates(sources: &BlobSources, dest: &Reference, m: &ImageManifest) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for d in m.layers.iter().chain([&m.config]) {
        let Some(known) = sources.blobs.get(&d.digest.to_string()) else { continue };
        if let Some(r) = known.repos.iter().find_map(|n| other_repo_of(n, dest))
            && !out.contains(&r) {
                out.push(r);
            }
    }
    out.truncate(8);
    out
}

fn is_zstd(l: &Descriptor) -> bool {
    manifest::layer_compression(l).ok() == Some(Compression::Zstd)
}

fn format_of(m: &ImageManifest) -> Format {
    match m.media_type.as_str() {
        DOCKER_MANIFEST => Format::V2s2,
        OCI_MANIFEST => Format::Oci,
        _ if m.config.media_type == DOCKER_CONFIG => Format::V2s2,
        _ => Format::Oci,
    }
}

fn manifest_media_type(f: Format) -> &'static str {
    match f {
        Format::Oci => OCI_MANIFEST,
        Format::V2s2 => DOCKER_MANIFEST,
    }
}

fn layer_media_type(f: Format, c: Compression) -> &'static str {
    match (f, c) {
        (Format::Oci, Compression::None) => "application/vnd.oci.image.layer.v1.tar",
        (Format::Oci, Compression::Gzip) => "application/vnd.oci.image.layer.v1.tar+gzip",
        (Format::Oci, Compression::Zstd) => "application/vnd.oci.image.layer.v1.tar+zstd",
        (Format::V2s2, Compression::None) => "application/vnd.docker.image.rootfs.diff.tar",
        (Format::V2s2, _) => "application/vnd.docker.image.rootfs.diff.tar.gzip",
    }
}

/// The stored manifest with new layer descriptors and the format's media types; every other
/// field (annotations, the config descriptor's digest) kept, so the image id stays.
fn rewrite_manifest(stored: &[u8], layers: &[Descriptor], format: Format) -> anyhow::Result<Vec<u8>> {
    let mut m: serde_json::Value = serde_json::from_slice(stored).context("the stored manifest")?;
    let obj = m.as_object_mut().ok_or_else(|| anyhow!("the stored manifest is not a JSON object"))?;
    obj.insert("mediaType".into(), manifest_media_type(format).into());
    if let Some(c) = obj.get_mut("config").and_then(|c| c.as_object_mut()) {
        c.insert("mediaType".into(), match format { Format::Oci => OCI_CONFIG, Format::V2s2 => DOCKER_CONFIG }.into());
    }
    let old = obj.get("layers").and_then(|l| l.as_array()).cloned().unwrap_or_default();
    let new: Vec<serde_json::Value> = layers
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let mut v = old.get(i).cloned().unwrap_or_else(|| serde_json::json!({}));
            if let Some(o) = v.as_object_mut() {
                o.insert("mediaType".into(), d.media_type.clone().into());
                o.insert("digest".into(), d.digest.to_string().into());
                o.insert("size".into(), d.size.into());
            }
            v
        })
        .collect();
    obj.insert("layers".into(), new.into());
    Ok(serde_json::to_vec(&m)?)
}

/// A layer blob made anew in `tmp/`, removed when dropped.
struct MadeBlob {
    path: PathBuf,
    digest: Digest,
    size: u64,
}

impl Drop for MadeBlob {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Compress the layer's exact tar (its DiffID checked as it streams) into a file in `tmp/`,
/// named by the layer's place in the image (a layer may appear twice) and ending in our pid,
/// so that `prune` removes what a killed push left.
fn compress_layer(store: &Store, i: usize, diff_id: &Digest, compression: Compression) -> anyhow::Result<MadeBlob> {
    let mut tar = store.layer_tar(diff_id)?;
    let path = store.tmp_dir().join(format!("push-{}-{i}-{}", diff_id.hex(), std::process::id()));
    let file = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    let mut made = MadeBlob { path, digest: Digest::of_bytes(b""), size: 0 };
    let out = HashingWriter { inner: BufWriter::with_capacity(256 << 10, file), hasher: Hasher::new() };
    let ctx = || format!("compressing layer {diff_id}");
    let out = match compression {
        Compression::None => {
            let mut out = out;
            io::copy(&mut tar, &mut out).with_context(ctx)?;
            out
        }
        Compression::Gzip => {
            let mut enc = flate2::write::GzEncoder::new(out, flate2::Compression::default());
            io::copy(&mut tar, &mut enc).with_context(ctx)?;
            enc.finish().with_context(ctx)?
        }
        Compression::Zstd => {
            let mut enc = zstd::stream::write::Encoder::new(out, 3).with_context(ctx)?;
            io::copy(&mut tar, &mut enc).with_context(ctx)?;
            enc.finish().with_context(ctx)?
        }
    };
    let HashingWriter { mut inner, hasher } = out;
    inner.flush().with_context(ctx)?;
    made.size = hasher.bytes;
    made.digest = hasher.finish();
    Ok(made)
}

/// Record what the push left in the registry: the blobs (for later mounts and HEADs), the
/// manifest, and the destination's tag and digest naming the image (so a pull of it is one HEAD).
fn record_push(store: &Store, dest: &Reference, rec: &ImageRecord, layers: &[Descriptor], config: &Descriptor, digest: &Digest, manifest: &[u8]) -> anyhow::Result<()> {
    store.put_blob(digest, manifest)?;
    let mut blobs: Vec<_> =
        layers.iter().zip(&rec.layers).map(|(d, l)| (d.digest.clone(), d.media_type.clone(), d.size, Some(l.diff_id.clone()))).collect();
    blobs.push((config.digest.clone(), config.media_type.clone(), config.size, None));
    let _lock = store.lock_records()?;
    store.note_sources(&dest.name(), &blobs)?;
    let mut repos = store.load_repositories()?;
    let entry = repos.repos.entry(dest.name()).or_default();
    let tag = dest.tag.clone().unwrap_or_else(|| "latest".into());
    entry.tags.insert(tag, TagEntry { image: rec.id.clone(), digest: digest.clone() });
    entry.digests.insert(digest.to_string(), rec.id.clone());
    store.save_repositories(&repos)
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    #[test]
    fn a_rewritten_manifest_keeps_the_config_and_annotations_and_takes_the_new_layers() {
        let stored = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}","config":{{"mediaType":"{DOCKER_CONFIG}","digest":"{D1}","size":7}},"layers":[{{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","digest":"{D1}","size":3,"annotations":{{"a":"b"}}}}]}}"#
        );
        let layer = Descriptor {
            media_type: layer_media_type(Format::Oci, Compression::Zstd).into(),
            digest: Digest::parse(D2).unwrap(),
            size: 9,
            platform: None,
            annotations: Default::default(),
            urls: vec![],
        };
        let out = rewrite_manifest(stored.as_bytes(), &[layer], Format::Oci).unwrap();
        let Manifest::Image(m) = Manifest::parse(&out, None).unwrap() else { panic!("not an image manifest") };
        assert_eq!(m.media_type, OCI_MANIFEST);
        assert_eq!((m.config.media_type.as_str(), m.config.digest.to_string(), m.config.size), (OCI_CONFIG, D1.to_string(), 7));
        assert_eq!((m.layers[0].digest.to_string(), m.layers[0].size), (D2.to_string(), 9));
        assert_eq!(m.layers[0].media_type, "application/vnd.oci.image.layer.v1.tar+zstd");
        assert_eq!(m.layers[0].annotations.get("a").map(String::as_str), Some("b"));
        assert_eq!(format_of(&m), Format::Oci);
    }

    #[test]
    fn mounts_come_from_other_repositories_of_the_same_registry_only() {
        let dest = Reference::parse("localhost:5000/team/app:1").unwrap();
        assert_eq!(other_repo_of("localhost:5000/team/base", &dest).as_deref(), Some("team/base"));
        assert_eq!(other_repo_of("localhost:5000/team/app", &dest), None);
        assert_eq!(other_repo_of("localhost:5001/team/base", &dest), None);
        let mut sources = BlobSources::default();
        let d = Digest::parse(D1).unwrap();
        sources.note("localhost:5001/x", &[(d.clone(), "t".into(), 1, None)]);
        sources.note("localhost:5000/team/base", &[(d.clone(), "t".into(), 1, None)]);
        sources.note("localhost:5000/team/base", &[(d.clone(), "t".into(), 1, None)]);
        assert_eq!(sources.blobs[D1].repos, ["localhost:5001/x", "localhost:5000/team/base"]);
        let desc = Descriptor { media_type: "t".into(), digest: d, size: 1, platform: None, annotations: Default::default(), urls: vec![] };
        let m = ImageManifest { schema_version: 2, media_type: OCI_MANIFEST.into(), config: desc.clone(), layers: vec![desc] };
        assert_eq!(mount_candidates(&sources, &dest, &m), ["team/base"]);
    }
}
