//! Pulling an image into the store. Each layer is one streaming pass:
//!
//! ```text
//! registry ─► (partial file on disk) ─► sha256 of the blob ─► decompress ─► size bound
//!          ─► sha256 of the tar (the DiffID) ─► safe unpack into tmp/ ─► verify ─► rename
//! ```
//!
//! The downloaded bytes are appended to `tmp/<blob>.partial` as they stream through, so a
//! pull cut off by a dropped connection, Ctrl-C or a kill resumes there with a Range request
//! (the unpack starts again from the partial file; it is never trusted half-done). A layer
//! enters `layers/` only when both digests match. Layers are fetched by a few workers at once;
//! a per-DiffID file lock makes one process fetch a layer while others wait and then reuse it.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, Write};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use anyhow::{Context, anyhow, bail};

use super::image::{ImageLayer, ImageRecord, LayerInfo, TagEntry};
use super::Store;
use crate::archive::compress::{Decompressor, LimitedReader};
use crate::archive::tarsplit::Recorder;
use crate::archive::unpack::{self, Limits};
use crate::oci::digest::{HashingReader, Hasher};
use crate::oci::manifest::{self, Descriptor, ImageConfig, ImageManifest, Manifest, MAX_CONFIG_BYTES};
use crate::oci::platform::{self, Platform};
use crate::oci::{Digest, Reference};
use crate::registry::RepoClient;

pub struct PullOptions {
    pub platform: Platform,
    pub jobs: usize,
    pub keep_blobs: bool,
    /// Most bytes one layer may expand to.
    pub max_layer_size: u64,
}

/// What a pull reports as it goes, for the progress display.
pub enum Event<'a> {
    /// The image's layers, bottom first: (blob digest, compressed size).
    Layers(&'a [(Digest, u64)]),
    Exists(usize),
    Waiting(usize),
    /// Downloading, resumed at this many bytes.
    Started(usize, u64),
    Progress(usize, u64),
    Retrying(usize, &'a str),
    Verifying(usize),
    Complete(usize),
}

pub trait Observer: Sync {
    fn event(&self, e: Event<'_>);
}

#[derive(Debug)]
pub struct PullResult {
    pub image: Digest,
    /// The digest the reference resolved to (an index's, for a multi-platform image).
    pub digest: Digest,
    pub up_to_date: bool,
    pub fetched_layers: usize,
    pub fetched_bytes: u64,
}

pub fn pull(store: &Store, repo: &RepoClient<'_>, r: &Reference, opts: &PullOptions, obs: &dyn Observer) -> anyhow::Result<PullResult> {
    if let Some(result) = already_pulled(store, repo, r, obs)? {
        return Ok(result);
    }
    let (bytes, top_digest, content_type) = repo.get_manifest(&r.manifest_key())?;
    let (manifest, manifest_digest, manifest_bytes) = match Manifest::parse(&bytes, content_type.as_deref())
        .with_context(|| format!("manifest of {r}"))?
    {
        Manifest::Image(m) => (m, top_digest.clone(), bytes.clone()),
        Manifest::Index(index) => {
            let chosen = platform::choose(&index.manifests, &opts.platform)
                .ok_or_else(|| anyhow!("{r} has no image for platform {} (it has: {})", opts.platform, platforms_of(&index.manifests)))?;
            let (bytes, digest, ct) = repo.get_manifest(&chosen.digest.to_string())?;
            match Manifest::parse(&bytes, ct.as_deref()).with_context(|| format!("manifest {digest} of {r}"))? {
                Manifest::Image(m) => (m, digest, bytes),
                Manifest::Index(_) => bail!("{r}: an index inside an index is not supported"),
            }
        }
    };
    let config_bytes = match store.read_blob(&manifest.config.digest) {
        Ok(b) => b,
        Err(_) => repo.get_small_blob(&manifest.config.digest, MAX_CONFIG_BYTES)?,
    };
    let config = ImageConfig::parse(&config_bytes).with_context(|| format!("config {} of {r}", manifest.config.digest))?;
    check_layers(&manifest, &config, r)?;

    let sizes: Vec<(Digest, u64)> = manifest.layers.iter().map(|l| (l.digest.clone(), l.size)).collect();
    obs.event(Event::Layers(&sizes));
    let (fetched_layers, fetched_bytes) = fetch_layers(store, repo, &manifest.layers, &config.rootfs.diff_ids, opts, obs)?;
    store.settle_implicit_dirs(&config.rootfs.diff_ids)?;

    let record = ImageRecord {
        id: manifest.config.digest.clone(),
        manifest_digest: manifest_digest.clone(),
        platform: format!("{}/{}{}", config.os, config.architecture, config.variant.as_ref().map(|v| format!("/{v}")).unwrap_or_default()),
        layers: manifest
            .layers
            .iter()
            .zip(&config.rootfs.diff_ids)
            .map(|(l, d)| ImageLayer { diff_id: d.clone(), digest: l.digest.clone(), media_type: l.media_type.clone(), size: l.size })
            .collect(),
        created: config.created.clone(),
        pulled_at: now(),
    };
    // Only now, with every layer verified, does anything about the image enter the store.
    if top_digest != manifest_digest {
        store.put_blob(&top_digest, &bytes)?;
    }
    store.put_blob(&manifest_digest, &manifest_bytes)?;
    store.put_blob(&manifest.config.digest, &config_bytes)?;
    record_image(store, r, &record, &top_digest, &manifest_digest)?;
    Ok(PullResult { image: record.id, digest: top_digest, up_to_date: false, fetched_layers, fetched_bytes })
}

/// A pull by digest of an image we have costs nothing; a pull by tag costs one HEAD, which
/// tells whether the tag still points where it did.
fn already_pulled(store: &Store, repo: &RepoClient<'_>, r: &Reference, obs: &dyn Observer) -> anyhow::Result<Option<PullResult>> {
    let repos = store.load_repositories()?;
    let Some(id) = repos.lookup(r).cloned() else { return Ok(None) };
    let Ok(rec) = store.load_image(&id) else { return Ok(None) };
    if !store.image_complete(&rec) {
        return Ok(None);
    }
    let digest = match (&r.digest, &r.tag) {
        (Some(d), _) => d.clone(),
        (None, Some(tag)) => {
            let known = repos.repos.get(&r.name()).and_then(|e| e.tags.get(tag)).map(|t| t.digest.clone());
            match (known, repo.head_manifest(tag)?) {
                (Some(k), Some(now)) if k == now => k,
                _ => return Ok(None),
            }
        }
        _ => return Ok(None),
    };
    let sizes: Vec<(Digest, u64)> = rec.layers.iter().map(|l| (l.digest.clone(), l.size)).collect();
    obs.event(Event::Layers(&sizes));
    for i in 0..sizes.len() {
        obs.event(Event::Exists(i));
    }
    Ok(Some(PullResult { image: id, digest, up_to_date: true, fetched_layers: 0, fetched_bytes: 0 }))
}

fn check_layers(m: &ImageManifest, config: &ImageConfig, r: &Reference) -> anyhow::Result<()> {
    if config.rootfs.diff_ids.len() != m.layers.len() {
        bail!(
            "{r}: the manifest lists {} layers but the config has {} diff_ids",
            m.layers.len(),
            config.rootfs.diff_ids.len()
        );
    }
    for l in &m.layers {
        manifest::layer_compression(l)?;
    }
    Ok(())
}

fn platforms_of(list: &[Descriptor]) -> String {
    let names: Vec<String> = list.iter().filter_map(|d| d.platform.as_ref().map(|p| p.to_string())).collect();
    if names.is_empty() { "none listed".into() } else { names.join(", ") }
}

/// What every layer fetch of one pull shares.
struct Fetcher<'a> {
    store: &'a Store,
    repo: &'a RepoClient<'a>,
    opts: &'a PullOptions,
    obs: &'a dyn Observer,
}

/// Fetch the missing layers with up to `jobs` workers. Returns (layers fetched, bytes).
fn fetch_layers(
    store: &Store,
    repo: &RepoClient<'_>,
    layers: &[Descriptor],
    diff_ids: &[Digest],
    opts: &PullOptions,
    obs: &dyn Observer,
) -> anyhow::Result<(usize, u64)> {
    let fetcher = Fetcher { store, repo, opts, obs };
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let fetched = AtomicUsize::new(0);
    let bytes = std::sync::atomic::AtomicU64::new(0);
    let errors = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..opts.jobs.clamp(1, layers.len().max(1)) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= layers.len() || failed.load(Ordering::SeqCst) {
                        break;
                    }
                    match fetcher.fetch_layer(i, &layers[i], &diff_ids[i]) {
                        Ok(Some(n)) => {
                            fetched.fetch_add(1, Ordering::SeqCst);
                            bytes.fetch_add(n, Ordering::SeqCst);
                        }
                        Ok(None) => {}
                        Err(e) => {
                            failed.store(true, Ordering::SeqCst);
                            if let Ok(mut errs) = errors.lock() {
                                errs.push(e);
                            }
                        }
                    }
                }
            });
        }
    });
    let mut errors = errors.into_inner().unwrap_or_default();
    if let Some(e) = errors.drain(..).next() {
        return Err(e);
    }
    Ok((fetched.load(Ordering::SeqCst), bytes.load(Ordering::SeqCst)))
}

impl Fetcher<'_> {
    /// Fetch layer `i` unless the store has it. Returns the bytes downloaded, or None if it was
    /// already there.
    fn fetch_layer(&self, i: usize, desc: &Descriptor, diff_id: &Digest) -> anyhow::Result<Option<u64>> {
        let (store, obs) = (self.store, self.obs);
        if store.has_layer(diff_id) {
            obs.event(Event::Exists(i));
            return Ok(None);
        }
        obs.event(Event::Waiting(i));
        let _lock = store.lock_digest(diff_id)?;
        if store.has_layer(diff_id) {
            // Another process fetched it while we waited for the lock.
            obs.event(Event::Exists(i));
            return Ok(None);
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.fetch_once(i, desc, diff_id) {
                Ok(n) => {
                    obs.event(Event::Complete(i));
                    return Ok(Some(n));
                }
                Err(FetchError::Network(e)) if attempt < 4 => {
                    let msg = format!("{e:#}");
                    tracing::info!("layer {}: {msg}; resuming", desc.digest);
                    obs.event(Event::Retrying(i, &msg));
                    std::thread::sleep(std::time::Duration::from_millis(500 * attempt));
                }
                Err(FetchError::Network(e) | FetchError::Other(e)) => {
                    return Err(e.context(format!("layer {}", desc.digest)));
                }
            }
        }
    }

    /// One try at downloading, verifying and unpacking layer `i`.
    fn fetch_once(&self, i: usize, desc: &Descriptor, diff_id: &Digest) -> Result<u64, FetchError> {
        let (store, repo, opts, obs) = (self.store, self.repo, self.opts, self.obs);
        let other = FetchError::Other;
        let compression = manifest::layer_compression(desc).map_err(|e| other(e.into()))?;
        let partial_path = store.partial_path(&desc.digest);
        let partial = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&partial_path)
            .map_err(|e| other(anyhow!("opening {}: {e}", partial_path.display())))?;
        let mut have = partial.metadata().map_err(|e| other(e.into()))?.len();
        if have > desc.size {
            have = 0;
        }
        let stream = repo.open_blob(&desc.digest, have).map_err(FetchError::Network)?;
        if stream.start != have {
            have = stream.start;
        }
        partial.set_len(have).map_err(|e| other(anyhow!("truncating {}: {e}", partial_path.display())))?;
        if have > 0 {
            tracing::info!("layer {}: resuming the download at byte {have}", desc.digest);
        }
        obs.event(Event::Started(i, have));
        // A second open, so reading what is there and appending what arrives keep their own offsets.
        let existing = File::open(&partial_path).map_err(|e| other(anyhow!("opening {}: {e}", partial_path.display())))?.take(have);
        let mut sink = partial;
        sink.seek(io::SeekFrom::Start(have)).map_err(|e| other(e.into()))?;
        let net_failed = Arc::new(AtomicBool::new(false));
        let source = BlobSource {
            existing: Some(existing),
            network: stream.reader,
            sink,
            hasher: Hasher::new(),
            expected: desc.size,
            net_failed: net_failed.clone(),
            report: &|n| obs.event(Event::Progress(i, n)),
        };
        // A dropped connection keeps the partial file for resuming; anything else (a corrupt or
        // hostile blob) discards it, since fetching the rest would only repeat the failure.
        let classify = |e: anyhow::Error| {
            if net_failed.load(Ordering::SeqCst) {
                FetchError::Network(e)
            } else {
                let _ = std::fs::remove_file(&partial_path);
                other(e)
            }
        };

        let dir = store.new_unpack_dir(diff_id).map_err(other)?;
        let result = unpack_pull_stream(store, source, compression, &dir, opts.max_layer_size);
        let Unpacked { blob, tar, implicit_dirs } = match result {
            Ok(r) => r,
            Err(e) => {
                store.discard_unpack(&dir);
                return Err(classify(e));
            }
        };
        obs.event(Event::Verifying(i));
        let fail = |why: String| {
            store.discard_unpack(&dir);
            // The whole blob arrived and is wrong: resuming from it would only repeat the error.
            let _ = std::fs::remove_file(&partial_path);
            other(anyhow!(why))
        };
        if blob.0 != desc.digest || blob.1 != desc.size {
            return Err(fail(format!("downloaded blob has digest {} and {} bytes; the manifest says {} and {} bytes", blob.0, blob.1, desc.digest, desc.size)));
        }
        if &tar.0 != diff_id {
            return Err(fail(format!("uncompressed layer has digest {}; the image config says {diff_id}", tar.0)));
        }
        let info = LayerInfo {
            diff_id: diff_id.clone(),
            digest: desc.digest.clone(),
            media_type: desc.media_type.clone(),
            compressed_size: desc.size,
            unpacked_size: tar.1,
            implicit_settled: implicit_dirs.is_empty(),
            implicit_dirs,
        };
        if let Err(e) = store.commit_layer(&dir, &info) {
            // A full disk can stop even this last step: leave nothing of the layer behind.
            store.discard_unpack(&dir);
            let _ = std::fs::remove_file(&partial_path);
            return Err(other(e));
        }
        if opts.keep_blobs {
            let _ = std::fs::rename(&partial_path, store.blob_path(&desc.digest));
        } else {
            let _ = std::fs::remove_file(&partial_path);
        }
        Ok(desc.size - have)
    }

}

enum FetchError {
    /// The connection failed mid-way: worth resuming.
    Network(anyhow::Error),
    Other(anyhow::Error),
}

/// What one pass over a layer blob measured.
struct Unpacked {
    blob: (Digest, u64),
    tar: (Digest, u64),
    implicit_dirs: Vec<String>,
}

fn unpack_pull_stream(store: &Store, source: BlobSource<'_>, compression: manifest::Compression, dir: &Path, max: u64) -> anyhow::Result<Unpacked> {
    let (tar, mut source, _) = unpack_stream(store, source, Some(compression), dir, max)?;
    source.sink.flush()?;
    let bytes = source.hasher.bytes;
    Ok(Unpacked { blob: (std::mem::take(&mut source.hasher).finish(), bytes), tar: (tar.digest, tar.size), implicit_dirs: tar.implicit_dirs })
}

/// The tar side of one pass: its digest (the DiffID), length and the directories it left out.
pub struct TarDigest {
    pub digest: Digest,
    pub size: u64,
    pub implicit_dirs: Vec<String>,
}

/// Decompress (by the media type, or by the first bytes when it is not known), hash and
/// unpack, recording the tar for its exact rebuild; then read both streams to their ends so
/// that the digests cover every byte. Gives the blob source back for its own accounting.
fn unpack_stream<S: Read>(
    store: &Store,
    source: S,
    compression: Option<manifest::Compression>,
    dir: &Path,
    max: u64,
) -> anyhow::Result<(TarDigest, S, manifest::Compression)> {
    let mut buffered = BufReader::with_capacity(256 << 10, source);
    let compression = match compression {
        Some(c) => c,
        None => crate::archive::compress::sniff(buffered.fill_buf().context("reading the layer")?),
    };
    let decompressor = Decompressor::new(compression, buffered).context("starting decompression")?;
    let tar = HashingReader::new(LimitedReader::new(decompressor, max));
    let record = Recorder::create(&store.unpack_record_path(dir), &store.unpack_stash_path(dir))?;
    let (stats, mut tar) = unpack::unpack_recorded(tar, dir, Limits::default(), record)?;
    let tar_bytes = tar.hasher.bytes;
    let tar_digest = std::mem::take(&mut tar.hasher).finish();
    let mut blob = tar.inner.inner.into_inner();
    io::copy(&mut blob, &mut io::sink()).context("reading the end of the layer blob")?;
    let source = blob.into_inner();
    Ok((TarDigest { digest: tar_digest, size: tar_bytes, implicit_dirs: stats.implicit_dirs }, source, compression))
}

/// A layer unpacked and verified in `tmp/`, not yet visible; dropped uncommitted, it is removed.
pub struct StagedLayer<'a> {
    store: &'a Store,
    dir: Option<std::path::PathBuf>,
    pub info: LayerInfo,
    _lock: Option<super::Lock>,
}

impl StagedLayer<'_> {
    /// Make it visible in `layers/`.
    pub fn commit(mut self) -> anyhow::Result<()> {
        let Some(dir) = self.dir.take() else { return Ok(()) };
        self.store.commit_layer(&dir, &self.info).inspect_err(|_| self.store.discard_unpack(&dir))
    }
}

impl Drop for StagedLayer<'_> {
    fn drop(&mut self) {
        if let Some(dir) = self.dir.take() {
            self.store.discard_unpack(&dir);
        }
    }
}

/// What a layer read from somewhere other than a registry (an archive, a layout) must be.
pub struct LayerExpect<'a> {
    /// The blob's digest and size, when the source names them.
    pub blob: Option<(&'a Digest, Option<u64>)>,
    /// The DiffID the image config gives, when known before the unpack.
    pub diff_id: Option<&'a Digest>,
    /// The blob's compression, when a media type gives it; else read from its first bytes.
    pub compression: Option<manifest::Compression>,
    /// The media type to record (else one for the compression found).
    pub media_type: Option<&'a str>,
}

/// The pull's streaming pass over a layer blob from any reader: blob digest, decompression,
/// DiffID, safe unpack and tar record in one go, with the same limits and checks; the result
/// stays in `tmp/` until committed. The caller has checked that the store lacks the layer.
pub fn stage_layer<'a, S: Read>(store: &'a Store, blob: S, expect: &LayerExpect<'_>, max: u64) -> anyhow::Result<StagedLayer<'a>> {
    let lock = expect.diff_id.map(|d| store.lock_digest(d)).transpose()?;
    // The unpack directory is named by the DiffID, or for a layer known by less, by a name of
    // its own (two unknown layers of one load must not share a directory).
    static UNKNOWN: AtomicUsize = AtomicUsize::new(0);
    let key = match expect.diff_id {
        Some(d) => d.clone(),
        None => Digest::of_bytes(format!("unknown layer {}", UNKNOWN.fetch_add(1, Ordering::SeqCst)).as_bytes()),
    };
    let dir = store.new_unpack_dir(&key)?;
    let mut staged = StagedLayer {
        store,
        dir: Some(dir.clone()),
        info: LayerInfo {
            diff_id: key.clone(),
            digest: key,
            media_type: String::new(),
            compressed_size: 0,
            unpacked_size: 0,
            implicit_dirs: Vec::new(),
            implicit_settled: false,
        },
        _lock: lock,
    };
    let (tar, source, compression) = unpack_stream(store, HashingReader::new(blob), expect.compression, &dir, max)?;
    let blob_size = source.hasher.bytes;
    let blob_digest = source.hasher.finish();
    if let Some((want, size)) = expect.blob {
        if &blob_digest != want {
            bail!("blob {want} has digest {blob_digest}");
        }
        if size.is_some_and(|s| s != blob_size) {
            bail!("blob {want} has {blob_size} bytes; the manifest says {}", size.unwrap_or(0));
        }
    }
    if let Some(want) = expect.diff_id
        && &tar.digest != want
    {
        bail!("uncompressed layer has digest {}; the image config says {want}", tar.digest);
    }
    // A layer whose DiffID was not known beforehand is not locked: the caller may hold that
    // lock already (the same layer twice in one archive), and a commit that finds the layer
    // committed by someone else keeps theirs.
    let media_type = expect.media_type.map(str::to_string).unwrap_or_else(|| {
        match compression {
            manifest::Compression::None => "application/vnd.oci.image.layer.v1.tar",
            manifest::Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            manifest::Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
        .to_string()
    });
    staged.info = LayerInfo {
        diff_id: tar.digest,
        digest: blob_digest,
        media_type,
        compressed_size: blob_size,
        unpacked_size: tar.size,
        implicit_settled: tar.implicit_dirs.is_empty(),
        implicit_dirs: tar.implicit_dirs,
    };
    Ok(staged)
}

/// The blob's bytes: first what an earlier try left in the partial file, then the network,
/// each network byte appended to the partial file as it passes.
struct BlobSource<'a> {
    existing: Option<io::Take<File>>,
    network: Box<dyn Read + Send + Sync>,
    sink: File,
    hasher: Hasher,
    expected: u64,
    net_failed: Arc<AtomicBool>,
    report: &'a (dyn Fn(u64) + Sync),
}

impl Read for BlobSource<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(existing) = &mut self.existing {
            let n = existing.read(buf)?;
            if n > 0 {
                self.hasher.update(&buf[..n]);
                (self.report)(self.hasher.bytes);
                return Ok(n);
            }
            self.existing = None;
        }
        let n = match self.network.read(buf) {
            Ok(n) => n,
            Err(e) => {
                self.net_failed.store(true, Ordering::SeqCst);
                return Err(e);
            }
        };
        if n == 0 && self.hasher.bytes < self.expected {
            self.net_failed.store(true, Ordering::SeqCst);
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, format!("connection closed after {} of {} bytes", self.hasher.bytes, self.expected)));
        }
        if self.hasher.bytes + n as u64 > self.expected {
            return Err(io::Error::other(format!("the registry sent more than the {} bytes the manifest gives", self.expected)));
        }
        self.sink.write_all(&buf[..n])?;
        self.hasher.update(&buf[..n]);
        (self.report)(self.hasher.bytes);
        Ok(n)
    }
}

/// Record the image and point the reference at it, under the records lock.
pub fn record_image(store: &Store, r: &Reference, rec: &ImageRecord, top: &Digest, manifest: &Digest) -> anyhow::Result<()> {
    let _lock = store.lock_records()?;
    store.save_image(rec)?;
    let mut repos = store.load_repositories()?;
    let entry = repos.repos.entry(r.name()).or_default();
    if let Some(tag) = &r.tag {
        entry.tags.insert(tag.clone(), TagEntry { image: rec.id.clone(), digest: top.clone() });
    }
    entry.digests.insert(top.to_string(), rec.id.clone());
    entry.digests.insert(manifest.to_string(), rec.id.clone());
    store.save_repositories(&repos)
}

pub fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
