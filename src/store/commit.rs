//! New images made here rather than pulled: `commit` (a container's changes as one more layer
//! over its image) and `import` (a rootfs tar as a one-layer image). Both end as a pulled image
//! does: a layer in `layers/<diffid>` unpacked by the same unpacker, its compressed blob kept in
//! `blobs/sha256/` (so save and push can send it as it is), a config and manifest in `blobs/`,
//! an image record and, if named, a tag.
//!
//! A layer tar is written once: each byte goes to the DiffID hash, through the compressor to
//! the blob file (and its hash), and through a pipe to the unpacker on another thread, which
//! builds the layer directory in `tmp/` — exactly what an unpack of the blob gives, without
//! reading the blob again. Nothing leaves `tmp/` until both digests are known.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, anyhow, bail};
use serde_json::{Map, Value, json};

use super::image::{ImageLayer, ImageRecord, LayerInfo, TagEntry};
use super::{Store, remove_tree};
use crate::archive::compress::{Decompressor, LimitedReader, sniff};
use crate::archive::pack::Source;
use crate::union::layer::Formats;
use crate::archive::unpack::{self, Limits};
use crate::oci::change::ConfigChange;
use crate::oci::digest::{Hasher, HashingReader, HashingWriter};
use crate::oci::manifest::{Compression, Descriptor, ImageManifest, OCI_MANIFEST};
use crate::oci::platform::Platform;
use crate::oci::time::rfc3339;
use crate::oci::{Digest, Reference};

const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";

pub fn layer_media_type(c: Compression) -> &'static str {
    match c {
        Compression::None => "application/vnd.oci.image.layer.v1.tar",
        Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
        Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
    }
}

/// What the image's config and history get besides the layer.
#[derive(Debug, Clone, Default)]
pub struct ImageMeta {
    pub created_by: String,
    pub comment: Option<String>,
    pub author: Option<String>,
    pub changes: Vec<ConfigChange>,
    /// `--timestamp`/`$SOURCE_DATE_EPOCH`: the config's and history's time, and the latest
    /// entry time in the layer.
    pub timestamp: Option<i64>,
    pub tag: Option<Reference>,
}

/// A layer built in `tmp/`, not yet in the store.
pub struct NewLayer {
    dir: PathBuf,
    blob: PathBuf,
    pub info: LayerInfo,
}

impl NewLayer {
    fn discard(&self) {
        let _ = remove_tree(&self.dir);
        let _ = std::fs::remove_file(&self.blob);
    }
}

/// The files of a layer being built; removed on drop unless handed over.
struct TmpLayer {
    dir: PathBuf,
    blob: PathBuf,
    keep: bool,
}

impl Drop for TmpLayer {
    fn drop(&mut self) {
        if !self.keep {
            let _ = remove_tree(&self.dir);
            let _ = std::fs::remove_file(&self.blob);
        }
    }
}

impl Store {
    /// What `diff`, `commit` and `export` read of a container: its upper (in either xattr
    /// form of the overlayfs format) and its layers, top first.
    pub fn pack_source(&self, c: &super::Container) -> anyhow::Result<Source> {
        let lowers = c.layers.iter().rev().map(|d| {
            let dir = self.layer_dir(d);
            if !dir.is_dir() {
                bail!("container {}: layer {d} is missing from the store", c.name);
            }
            Ok(dir)
        });
        Ok(Source {
            upper: self.container_upper(&c.name),
            upper_formats: Formats { oci: false, trusted_xattrs: true, user_xattrs: true },
            lowers: lowers.collect::<anyhow::Result<_>>()?,
        })
    }

    /// `tmp/` names end in `-<pid>`, so `prune` clears those of dead processes.
    fn tmp_layer(&self, what: &str) -> anyhow::Result<TmpLayer> {
        let nonce = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let pid = std::process::id();
        let dir = self.tmp_dir().join(format!("{what}-{nonce}-{pid}"));
        let blob = self.tmp_dir().join(format!("{what}-blob-{nonce}-{pid}"));
        std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(TmpLayer { dir, blob, keep: false })
    }

    /// Build a layer from the tar that `write` produces: one pass, hashed, compressed and
    /// unpacked as it is written.
    pub fn build_layer(&self, compression: Compression, write: impl FnOnce(&mut dyn Write) -> anyhow::Result<()>) -> anyhow::Result<NewLayer> {
        let mut tmp = self.tmp_layer("commit")?;
        let file = File::create(&tmp.blob).with_context(|| format!("creating {}", tmp.blob.display()))?;
        let sink = HashingWriter { inner: BufWriter::with_capacity(1 << 20, file), hasher: Hasher::new() };
        let mut encoder = Encoder::new(compression, sink)?;
        // Three threads: this one walks and hashes the tar, one compresses (the slow part), one
        // unpacks; each gets the tar in 1 MiB chunks.
        let (chunks, received) = std::sync::mpsc::sync_channel::<Arc<Vec<u8>>>(4);
        let compressor = std::thread::Builder::new()
            .name("compress".into())
            .spawn(move || -> anyhow::Result<(Digest, u64)> {
                for chunk in received {
                    encoder.write_all(&chunk).context("writing the layer blob")?;
                }
                let mut sink = encoder.finish().context("finishing the layer blob")?;
                sink.flush().context("writing the layer blob")?;
                let size = sink.hasher.bytes;
                let digest = sink.hasher.clone().finish();
                sink.inner.into_inner().map_err(|e| anyhow!("writing the layer blob: {}", e.error()))?.sync_all().context("writing the layer blob")?;
                Ok((digest, size))
            })
            .context("starting the compressor")?;
        let (reader, writer) = io::pipe().context("making a pipe to the unpacker")?;
        let dir = tmp.dir.clone();
        let unpacker = std::thread::Builder::new()
            .name("unpack".into())
            .spawn(move || -> anyhow::Result<unpack::Stats> {
                let (stats, mut rest) = unpack::unpack(BufReader::with_capacity(1 << 20, reader), &dir, Limits::default())?;
                io::copy(&mut rest, &mut io::sink())?;
                Ok(stats)
            })
            .context("starting the unpacker")?;
        let mut tee = Tee { buf: Vec::with_capacity(CHUNK), diff: Hasher::new(), blob: Some(chunks), pipe: Some(writer) };
        let written = write(&mut tee).and_then(|()| tee.flush().context("writing the layer"));
        let Tee { diff, blob, pipe, .. } = tee;
        drop((blob, pipe));
        let unpacked = unpacker.join().map_err(|_| anyhow!("the unpacker panicked"))?;
        let compressed = compressor.join().map_err(|_| anyhow!("the compressor panicked"))?;
        // A failure of the unpacker or the compressor (a full disk, say) explains a broken
        // pipe or channel on this side.
        let (stats, (digest, compressed_size)) = match (written, unpacked, compressed) {
            (Ok(()), Ok(s), Ok(c)) => (s, c),
            (Err(e), _, _) if !stopped_downstream(&e) => return Err(e),
            (_, Err(e), _) => return Err(e.context("unpacking the new layer")),
            (_, _, Err(e)) => return Err(e),
            (Err(e), _, _) => return Err(e),
        };
        let unpacked_size = diff.bytes;
        let info = new_layer_info((diff.finish(), unpacked_size), (digest, compressed_size), compression, stats);
        tmp.keep = true;
        Ok(NewLayer { dir: tmp.dir.clone(), blob: tmp.blob.clone(), info })
    }

    /// Build a layer from a rootfs tar (plain, gzip or zstd, told by its first bytes),
    /// unpacked with the pull's rules; the input is kept as the blob when it is compressed,
    /// otherwise as it is (an uncompressed layer).
    pub fn import_layer(&self, input: impl Read) -> anyhow::Result<NewLayer> {
        let mut tmp = self.tmp_layer("import")?;
        let file = File::create(&tmp.blob).with_context(|| format!("creating {}", tmp.blob.display()))?;
        let mut input = BufReader::with_capacity(1 << 20, input);
        let head = io::BufRead::fill_buf(&mut input).context("reading the tar")?.to_vec();
        if head.is_empty() {
            bail!("the input is empty, not a tar");
        }
        let compression = sniff(&head);
        let tee = TeeReader { inner: input, out: BufWriter::with_capacity(1 << 20, file), hasher: Hasher::new() };
        let mut decompressor = Decompressor::new(compression, BufReader::new(tee)).context("starting decompression")?;
        let mut first = vec![0u8; 512];
        let got = read_full(&mut decompressor, &mut first).context("reading the tar")?;
        first.truncate(got);
        if !is_tar_header(&first) {
            bail!("not a tar archive (plain, gzip or zstd)");
        }
        let tar = HashingReader::new(LimitedReader::new(io::Cursor::new(first).chain(decompressor), 64 << 30));
        let (stats, mut tar) = unpack::unpack(tar, &tmp.dir, Limits::default()).context("unpacking the tar")?;
        if stats.entries == 0 {
            bail!("the input holds no tar entries");
        }
        io::copy(&mut tar, &mut io::sink()).context("reading the end of the tar")?;
        let unpacked_size = tar.hasher.bytes;
        let diff_id = std::mem::take(&mut tar.hasher).finish();
        let (_, decompressor) = tar.inner.inner.into_inner();
        let mut tee = decompressor.into_inner().into_inner();
        io::copy(&mut tee, &mut io::sink()).context("reading the end of the input")?;
        let compressed_size = tee.hasher.bytes;
        let digest = std::mem::take(&mut tee.hasher).finish();
        tee.out.into_inner().map_err(|e| anyhow!("writing the layer blob: {}", e.error()))?.sync_all().context("writing the layer blob")?;
        let info = new_layer_info((diff_id, unpacked_size), (digest, compressed_size), compression, stats);
        tmp.keep = true;
        Ok(NewLayer { dir: tmp.dir.clone(), blob: tmp.blob.clone(), info })
    }

    /// Record an image of `parent`'s layers (none for an import) plus `layer`, under the
    /// records lock: the layer and its blob move into place, then config, manifest, image
    /// record and tag. Returns the image id.
    pub fn record_new_image(&self, parent: Option<&ImageRecord>, layer: NewLayer, meta: &ImageMeta) -> anyhow::Result<Digest> {
        let result = self.record_new_image_inner(parent, &layer, meta);
        if result.is_err() {
            layer.discard();
        }
        result
    }

    fn record_new_image_inner(&self, parent: Option<&ImageRecord>, layer: &NewLayer, meta: &ImageMeta) -> anyhow::Result<Digest> {
        let info = &layer.info;
        let created = rfc3339(meta.timestamp.unwrap_or_else(|| super::pull::now() as i64));
        let parent_config: Value = match parent {
            Some(p) => serde_json::from_slice(&self.read_blob(&p.id)?).context("reading the parent image's config")?,
            None => {
                let host = Platform::host();
                json!({"architecture": host.architecture, "os": host.os, "config": {}, "rootfs": {"type": "layers", "diff_ids": []}, "history": []})
            }
        };
        let config = new_config(parent_config, info, &created, meta)?;
        let config_bytes = serde_json::to_vec(&config)?;
        let config_digest = Digest::of_bytes(&config_bytes);

        let mut layers: Vec<ImageLayer> = parent.map(|p| p.layers.clone()).unwrap_or_default();
        layers.push(ImageLayer { diff_id: info.diff_id.clone(), digest: info.digest.clone(), media_type: info.media_type.clone(), size: info.compressed_size });
        let manifest = ImageManifest {
            schema_version: 2,
            media_type: OCI_MANIFEST.into(),
            config: descriptor(OCI_CONFIG, &config_digest, config_bytes.len() as u64),
            layers: layers.iter().map(|l| descriptor(&l.media_type, &l.digest, l.size)).collect(),
        };
        let manifest_bytes = serde_json::to_vec(&manifest)?;
        let manifest_digest = Digest::of_bytes(&manifest_bytes);
        let platform = parent.map(|p| p.platform.clone()).unwrap_or_else(|| {
            let h = Platform::host();
            format!("{}/{}{}", h.os, h.architecture, h.variant.map(|v| format!("/{v}")).unwrap_or_default())
        });
        let record = ImageRecord {
            id: config_digest.clone(),
            manifest_digest: manifest_digest.clone(),
            platform,
            layers,
            created: Some(created),
            pulled_at: super::pull::now(),
        };

        let _records = self.lock_records()?;
        {
            let _layer_lock = self.lock_digest(&info.diff_id)?;
            if self.has_layer(&info.diff_id) {
                // The same content is in the store already (a reproducible commit, say).
                let _ = remove_tree(&layer.dir);
            } else {
                self.commit_layer(&layer.dir, info)?;
            }
            std::fs::rename(&layer.blob, self.blob_path(&info.digest)).map_err(|e| anyhow!("keeping the layer blob: {e}"))?;
        }
        let chain: Vec<Digest> = record.layers.iter().map(|l| l.diff_id.clone()).collect();
        self.settle_implicit_dirs(&chain)?;
        self.put_blob(&config_digest, &config_bytes)?;
        self.put_blob(&manifest_digest, &manifest_bytes)?;
        self.save_image(&record)?;
        if let Some(r) = &meta.tag {
            let mut repos = self.load_repositories()?;
            let tag = r.tag.clone().unwrap_or_else(|| "latest".into());
            repos.repos.entry(r.name()).or_default().tags.insert(tag, TagEntry { image: config_digest.clone(), digest: manifest_digest });
            self.save_repositories(&repos)?;
        }
        Ok(config_digest)
    }
}

fn descriptor(media_type: &str, digest: &Digest, size: u64) -> Descriptor {
    Descriptor { media_type: media_type.into(), digest: digest.clone(), size, platform: None, annotations: Default::default(), urls: vec![] }
}

/// The parent's config plus the layer's DiffID, a history entry and the changes.
fn new_config(mut config: Value, info: &LayerInfo, created: &str, meta: &ImageMeta) -> anyhow::Result<Value> {
    let obj = config.as_object_mut().ok_or_else(|| anyhow!("the parent image's config is not a JSON object"))?;
    obj.insert("created".into(), json!(created));
    if let Some(a) = &meta.author {
        obj.insert("author".into(), json!(a));
    }
    let c = obj.entry("config").or_insert_with(|| json!({}));
    if !c.is_object() {
        *c = json!({});
    }
    if let Value::Object(c) = c {
        for change in &meta.changes {
            change.apply(c);
        }
    }
    let rootfs = obj.entry("rootfs").or_insert_with(|| json!({"type": "layers", "diff_ids": []}));
    let ids = rootfs.as_object_mut().and_then(|r| r.entry("diff_ids").or_insert_with(|| json!([])).as_array_mut());
    ids.ok_or_else(|| anyhow!("the parent image's config has no rootfs.diff_ids list"))?.push(json!(info.diff_id.to_string()));
    let mut entry = Map::new();
    entry.insert("created".into(), json!(created));
    entry.insert("created_by".into(), json!(meta.created_by));
    if let Some(a) = &meta.author {
        entry.insert("author".into(), json!(a));
    }
    if let Some(m) = &meta.comment {
        entry.insert("comment".into(), json!(m));
    }
    let history = obj.entry("history").or_insert_with(|| json!([]));
    if !history.is_array() {
        *history = json!([]);
    }
    if let Value::Array(h) = history {
        h.push(Value::Object(entry));
    }
    Ok(config)
}


/// Read until `buf` is full or the input ends; the bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Whether a block is a tar header: its checksum field (octal) matches the sum of its bytes
/// with that field taken as blanks.
fn is_tar_header(block: &[u8]) -> bool {
    if block.len() < 512 {
        return false;
    }
    let field = &block[148..156];
    let text: String = field.iter().map(|&b| b as char).filter(|c| c.is_digit(8)).collect();
    let Ok(want) = u32::from_str_radix(&text, 8) else { return false };
    let sum: u32 = block[..512].iter().enumerate().map(|(i, &b)| if (148..156).contains(&i) { 32 } else { b as u32 }).sum();
    sum == want
}

/// The record of a layer made here: the tar's digest and size, the blob's, and what the unpack
/// found (parents the tar left out settle from the layers below, as for a pulled layer).
fn new_layer_info(tar: (Digest, u64), blob: (Digest, u64), compression: Compression, stats: unpack::Stats) -> LayerInfo {
    LayerInfo {
        diff_id: tar.0,
        digest: blob.0,
        media_type: layer_media_type(compression).to_string(),
        compressed_size: blob.1,
        unpacked_size: tar.1,
        implicit_settled: stats.implicit_dirs.is_empty(),
        implicit_dirs: stats.implicit_dirs,
    }
}

/// The compressor in front of the blob file.
enum Encoder<W: Write> {
    None(W),
    Gzip(flate2::write::GzEncoder<W>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
}

impl<W: Write> Encoder<W> {
    fn new(c: Compression, w: W) -> anyhow::Result<Self> {
        Ok(match c {
            Compression::None => Encoder::None(w),
            // gzip's default level, as docker writes; the header carries no name and no time,
            // so equal tars give equal blobs.
            Compression::Gzip => Encoder::Gzip(flate2::write::GzEncoder::new(w, flate2::Compression::default())),
            Compression::Zstd => Encoder::Zstd(zstd::stream::write::Encoder::new(w, 3).context("starting zstd")?),
        })
    }

    fn finish(self) -> io::Result<W> {
        match self {
            Encoder::None(w) => Ok(w),
            Encoder::Gzip(e) => e.finish(),
            Encoder::Zstd(e) => e.finish(),
        }
    }
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Encoder::None(w) => w.write(buf),
            Encoder::Gzip(e) => e.write(buf),
            Encoder::Zstd(e) => e.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encoder::None(w) => w.flush(),
            Encoder::Gzip(e) => e.flush(),
            Encoder::Zstd(e) => e.flush(),
        }
    }
}

const CHUNK: usize = 1 << 20;
const COMPRESSOR_STOPPED: &str = "the compressor stopped";

/// Whether writing failed only because the unpacker or the compressor had stopped (whose own
/// error then says why).
fn stopped_downstream(e: &anyhow::Error) -> bool {
    e.chain().filter_map(|c| c.downcast_ref::<io::Error>()).any(|io| io.kind() == io::ErrorKind::BrokenPipe || io.to_string() == COMPRESSOR_STOPPED)
}

/// Where a layer tar's bytes go: the DiffID hash here, then in chunks to the compressor's
/// thread and through the pipe to the unpacker.
struct Tee {
    buf: Vec<u8>,
    diff: Hasher,
    blob: Option<std::sync::mpsc::SyncSender<Arc<Vec<u8>>>>,
    pipe: Option<io::PipeWriter>,
}

impl Tee {
    fn ship(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Arc::new(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        if let Some(b) = &self.blob {
            b.send(chunk.clone()).map_err(|_| io::Error::other(COMPRESSOR_STOPPED))?;
        }
        if let Some(p) = &mut self.pipe {
            p.write_all(&chunk)?;
        }
        Ok(())
    }
}

impl Write for Tee {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.diff.update(buf);
        self.buf.extend_from_slice(buf);
        if self.buf.len() >= CHUNK {
            self.ship()?;
        }
        Ok(buf.len())
    }
    /// Hands on what is buffered; the blob is completed when the compressor's channel closes.
    fn flush(&mut self) -> io::Result<()> {
        self.ship()
    }
}

/// Input bytes copied to the blob file and hashed as they are read.
struct TeeReader<R, W> {
    inner: R,
    out: W,
    hasher: Hasher,
}

impl<R: Read, W: Write> Read for TeeReader<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.out.write_all(&buf[..n])?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// The time `--timestamp` or `$SOURCE_DATE_EPOCH` asks for.
pub fn timestamp_from(arg: Option<i64>) -> anyhow::Result<Option<i64>> {
    if arg.is_some() {
        return Ok(arg);
    }
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) if !v.trim().is_empty() => {
            v.trim().parse::<i64>().map(Some).map_err(|_| anyhow!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds"))
        }
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compression_is_told_by_magic() {
        assert_eq!(sniff(&[0x1f, 0x8b, 8]), Compression::Gzip);
        assert_eq!(sniff(&[0x28, 0xb5, 0x2f, 0xfd]), Compression::Zstd);
        assert_eq!(sniff(b"etc/passwd"), Compression::None);
    }
}
