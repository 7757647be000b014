//! `load`: an archive or layout into the store. The input is opened as a [`Source`] (a tar
//! file read in place; stdin or a compressed archive spooled once into `tmp/`), the format is
//! told by its files, every image's metadata is read and checked first, then each missing
//! layer goes through the pull's streaming pass into `tmp/`. Only when every layer of every
//! image has verified are the layers committed and the images and tags recorded, so a load
//! that fails leaves the store as it was.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, Write};
use std::path::PathBuf;

use anyhow::{Context, anyhow, bail};

use super::io::{DirSource, Source, TarSource};
use super::{LoadImage, docker_archive, oci_layout};
use crate::archive::compress::{Decompressor, sniff};
use crate::oci::manifest::{self, Compression, ImageConfig};
use crate::oci::{Digest, Reference};
use crate::store::image::{ImageLayer, ImageRecord};
use crate::store::pull::{self, Event, LayerExpect, Observer, StagedLayer};
use crate::store::{LayerInfo, Store};

pub enum Input {
    Path(PathBuf),
    Stdin,
}

pub struct Loaded {
    pub id: Digest,
    pub tags: Vec<Reference>,
}

/// A file in `tmp/` removed when dropped.
struct Spool(PathBuf);

impl Drop for Spool {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

pub fn load(store: &Store, input: &Input, max_layer_size: u64, obs: &dyn Observer) -> anyhow::Result<Vec<Loaded>> {
    let (src, _spool) = open_input(store, input)?;
    let images = if src.exists("manifest.json") || (!src.exists("index.json") && src.exists("repositories")) {
        docker_archive::read(src.as_ref())?
    } else if src.exists("index.json") {
        oci_layout::read(src.as_ref())?
    } else {
        bail!("not an image archive: it has no manifest.json, index.json or repositories");
    };
    let configs = images.iter().map(check_image).collect::<anyhow::Result<Vec<_>>>()?;

    // Every layer into tmp/, verified; nothing visible yet.
    let mut staged: HashMap<Digest, StagedLayer<'_>> = HashMap::new();
    let mut chains: Vec<Vec<Digest>> = Vec::new();
    for (img, config) in images.iter().zip(&configs) {
        let sizes: Vec<(Digest, u64)> = img
            .layers
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let shown = config.as_ref().map(|c| c.rootfs.diff_ids[i].clone()).or(l.digest.clone()).unwrap_or_else(|| Digest::of_bytes(l.path.as_bytes()));
                (shown, src.size(&l.path).ok().flatten().unwrap_or(0))
            })
            .collect();
        obs.event(Event::Layers(&sizes));
        let mut chain = Vec::new();
        for (i, l) in img.layers.iter().enumerate() {
            let want = config.as_ref().map(|c| &c.rootfs.diff_ids[i]);
            if let Some(d) = want
                && (store.has_layer(d) || staged.contains_key(d))
            {
                obs.event(Event::Exists(i));
                chain.push(d.clone());
                continue;
            }
            obs.event(Event::Started(i, 0));
            let expect = LayerExpect {
                blob: l.digest.as_ref().map(|d| (d, l.size)),
                diff_id: want,
                compression: l.compression,
                media_type: l.media_type.as_deref(),
            };
            let reader = Counting { inner: src.open(&l.path)?, n: 0, report: &|n| obs.event(Event::Progress(i, n)) };
            let layer = pull::stage_layer(store, reader, &expect, max_layer_size).with_context(|| format!("layer {}", l.path))?;
            obs.event(Event::Verifying(i));
            let d = layer.info.diff_id.clone();
            obs.event(Event::Complete(i));
            chain.push(d.clone());
            if store.has_layer(&d) || staged.contains_key(&d) {
                continue; // a legacy layer, known only once read
            }
            staged.insert(d, layer);
        }
        chains.push(chain);
    }

    // Configs of legacy images are made now that their DiffIDs are known.
    let mut finals = Vec::new();
    for ((img, config), chain) in images.iter().zip(configs).zip(&chains) {
        let (bytes, config) = match (config, &img.legacy) {
            (Some(c), _) => (img.config.clone(), c),
            (None, Some(v1s)) => {
                let bytes = serde_json::to_vec(&docker_archive::legacy_config(v1s, chain)?)?;
                let c = ImageConfig::parse(&bytes).context("the config made from the legacy layers")?;
                (bytes, c)
            }
            (None, None) => bail!("an image without a config"),
        };
        finals.push((bytes, config));
    }

    // Everything verified: make it visible.
    for (_, layer) in staged.drain() {
        layer.commit()?;
    }
    let mut out = Vec::new();
    for ((img, (config_bytes, config)), chain) in images.iter().zip(finals).zip(&chains) {
        out.push(record(store, img, &config_bytes, &config, chain)?);
    }
    Ok(out)
}

/// The parsed config, with its diff_ids matching the layers; None for a legacy image.
fn check_image(img: &LoadImage) -> anyhow::Result<Option<ImageConfig>> {
    if img.legacy.is_some() {
        return Ok(None);
    }
    let id = Digest::of_bytes(&img.config);
    let config = ImageConfig::parse(&img.config).with_context(|| format!("config {id}"))?;
    if config.rootfs.diff_ids.len() != img.layers.len() {
        bail!("config {id} has {} diff_ids but the image lists {} layers", config.rootfs.diff_ids.len(), img.layers.len());
    }
    Ok(Some(config))
}

fn record(store: &Store, img: &LoadImage, config_bytes: &[u8], config: &ImageConfig, chain: &[Digest]) -> anyhow::Result<Loaded> {
    store.settle_implicit_dirs(chain)?;
    let id = Digest::of_bytes(config_bytes);
    let infos: Vec<LayerInfo> = chain.iter().map(|d| store.layer_info(d).ok_or_else(|| anyhow!("layer {d} vanished from the store"))).collect::<anyhow::Result<_>>()?;
    let manifest_bytes = match &img.manifest {
        Some(m) => m.clone(),
        None => synthesized_manifest(&id, config_bytes.len(), &infos)?,
    };
    let manifest_digest = Digest::of_bytes(&manifest_bytes);
    let layers = match manifest::Manifest::parse(&manifest_bytes, None)? {
        manifest::Manifest::Image(m) => m
            .layers
            .iter()
            .zip(chain)
            .map(|(l, d)| ImageLayer { diff_id: d.clone(), digest: l.digest.clone(), media_type: l.media_type.clone(), size: l.size })
            .collect(),
        manifest::Manifest::Index(_) => bail!("manifest {manifest_digest} is an index"),
    };
    let rec = ImageRecord {
        id: id.clone(),
        manifest_digest: manifest_digest.clone(),
        platform: format!("{}/{}{}", config.os, config.architecture, config.variant.as_ref().map(|v| format!("/{v}")).unwrap_or_default()),
        layers,
        created: config.created.clone(),
        pulled_at: pull::now(),
    };
    store.put_blob(&manifest_digest, &manifest_bytes)?;
    store.put_blob(&id, config_bytes)?;
    if img.tags.is_empty() {
        let _lock = store.lock_records()?;
        store.save_image(&rec)?;
    }
    for r in &img.tags {
        pull::record_image(store, r, &rec, &manifest_digest, &manifest_digest)?;
    }
    Ok(Loaded { id, tags: img.tags.clone() })
}

/// An OCI manifest for an archive that has none: the config and each layer's blob as read.
fn synthesized_manifest(id: &Digest, config_size: usize, layers: &[LayerInfo]) -> anyhow::Result<Vec<u8>> {
    let m = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": manifest::OCI_MANIFEST,
        "config": {"mediaType": oci_layout::OCI_CONFIG, "digest": id.to_string(), "size": config_size},
        "layers": layers.iter().map(|l| serde_json::json!({"mediaType": l.media_type, "digest": l.digest.to_string(), "size": l.compressed_size})).collect::<Vec<_>>(),
    });
    Ok(serde_json::to_vec(&m)?)
}

/// A directory is an OCI layout; a file (or stdin) a tar, possibly compressed. A plain tar
/// file is read in place; anything else is first spooled, decompressed, into `tmp/`.
fn open_input(store: &Store, input: &Input) -> anyhow::Result<(Box<dyn Source>, Option<Spool>)> {
    let (file, shown) = match input {
        Input::Path(p) if p.is_dir() => return Ok((Box::new(DirSource::open(p)?), None)),
        Input::Path(p) => (File::open(p).with_context(|| format!("opening {}", p.display()))?, p.display().to_string()),
        Input::Stdin => (stdin_file()?, "standard input".to_string()),
    };
    let seekable = file.metadata().map(|m| m.is_file()).unwrap_or(false);
    let mut reader = BufReader::with_capacity(256 << 10, file);
    let compression = sniff(reader.fill_buf().with_context(|| format!("reading {shown}"))?);
    if seekable && compression == Compression::None {
        let mut file = reader.into_inner();
        file.seek(io::SeekFrom::Start(0))?;
        return Ok((Box::new(TarSource::open(file).with_context(|| format!("reading {shown}"))?), None));
    }
    let spool = Spool(store.tmp_dir().join(format!("load-spool-{}", std::process::id())));
    let mut out = File::create(&spool.0).with_context(|| format!("creating {}", spool.0.display()))?;
    let mut data = Decompressor::new(compression, reader)?;
    io::copy(&mut data, &mut out).with_context(|| format!("reading {shown} into {}", spool.0.display()))?;
    out.flush()?;
    let file = File::open(&spool.0)?;
    Ok((Box::new(TarSource::open(file).with_context(|| format!("reading {shown}"))?), Some(spool)))
}

fn stdin_file() -> anyhow::Result<File> {
    use std::os::fd::AsFd;
    let fd = io::stdin().as_fd().try_clone_to_owned().context("standard input")?;
    Ok(File::from(fd))
}

/// Reports the bytes read so far.
struct Counting<'a, R> {
    inner: R,
    n: u64,
    report: &'a dyn Fn(u64),
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.n += n as u64;
        (self.report)(self.n);
        Ok(n)
    }
}
