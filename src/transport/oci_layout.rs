//! The OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/…`), written and read.
//! oci-archive and oci-dir are this layout in a tar or a directory, and Docker ≥ 25's
//! docker-archive is this layout plus `manifest.json`.
//!
//! Saved layers are written uncompressed, as Docker ≥ 25 does: the blob is the layer's exact
//! tar, so its digest is the DiffID, and the config (so the image id) is the stored one byte
//! for byte. Each manifest is listed in `index.json` once per name, with
//! `org.opencontainers.image.ref.name` set to the tag (what skopeo's `oci:DIR:TAG` and umoci's
//! `--image DIR:TAG` look up) and `io.containerd.image.name` to the full name.

use std::collections::{BTreeMap, HashSet};

use anyhow::{Context, anyhow, bail};
use serde_json::json;

use super::io::{Sink, Source};
use super::{LayerRef, LoadImage, SaveImage, SaveReport};
use crate::oci::manifest::{self, Descriptor, ImageManifest, Index, Manifest, MAX_CONFIG_BYTES, MAX_MANIFEST_BYTES};
use crate::oci::platform::{self, Platform};
use crate::oci::{Digest, Reference};
use crate::store::Store;

pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
const REF_NAME: &str = "org.opencontainers.image.ref.name";
const CONTAINERD_NAME: &str = "io.containerd.image.name";

pub fn blob_path(d: &Digest) -> String {
    format!("blobs/sha256/{}", d.hex())
}

/// The manifest save writes for an image: the stored config, the layers as their tars.
pub fn manifest_for(store: &Store, img: &SaveImage) -> anyhow::Result<Vec<u8>> {
    let mut layers = Vec::new();
    for l in &img.record.layers {
        let info = store.layer_info(&l.diff_id).ok_or_else(|| anyhow!("layer {} is not in the store", l.diff_id))?;
        layers.push(json!({"mediaType": OCI_LAYER_TAR, "digest": l.diff_id.to_string(), "size": info.unpacked_size}));
    }
    let m = json!({
        "schemaVersion": 2,
        "mediaType": manifest::OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": img.record.id.to_string(), "size": img.config.len()},
        "layers": layers,
    });
    Ok(serde_json::to_vec(&m)?)
}

/// Write the layout's small files: `oci-layout` and `index.json` (the caller adds blobs).
pub fn write_index(sink: &mut dyn Sink, images: &[SaveImage], manifests: &[Vec<u8>]) -> anyhow::Result<()> {
    let layout = br#"{"imageLayoutVersion":"1.0.0"}"#;
    sink.file("oci-layout", layout.len() as u64, &mut &layout[..])?;
    let mut entries = Vec::new();
    for (img, m) in images.iter().zip(manifests) {
        let base = json!({"mediaType": manifest::OCI_MANIFEST, "digest": Digest::of_bytes(m).to_string(), "size": m.len()});
        if img.tags.is_empty() {
            entries.push(base.clone());
        }
        for r in &img.tags {
            let mut e = base.clone();
            e["annotations"] = json!({CONTAINERD_NAME: r.to_string(), REF_NAME: r.tag.clone().unwrap_or_else(|| "latest".into())});
            entries.push(e);
        }
    }
    let index = serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": manifest::OCI_INDEX, "manifests": entries}))?;
    sink.file("index.json", index.len() as u64, &mut &index[..])
}

/// Write configs, manifests, then layer tars, each blob once however many images share it.
pub fn write_blobs(store: &Store, sink: &mut dyn Sink, images: &[SaveImage], manifests: &[Vec<u8>], report: &SaveReport) -> anyhow::Result<()> {
    let mut written = HashSet::new();
    for (img, m) in images.iter().zip(manifests) {
        for bytes in [&img.config, m] {
            let d = Digest::of_bytes(bytes);
            if written.insert(d.clone()) {
                sink.file(&blob_path(&d), bytes.len() as u64, &mut &bytes[..])?;
            }
        }
    }
    for img in images {
        for l in &img.record.layers {
            if !written.insert(l.diff_id.clone()) {
                report(&l.diff_id, None);
                continue;
            }
            let mut tar = store.layer_tar(&l.diff_id)?;
            report(&l.diff_id, Some(tar.size));
            let size = tar.size;
            sink.file(&blob_path(&l.diff_id), size, &mut tar)?;
        }
    }
    Ok(())
}

/// Save images as an OCI layout into `sink`.
pub fn save(store: &Store, sink: &mut dyn Sink, images: &[SaveImage], report: &SaveReport) -> anyhow::Result<()> {
    let manifests = images.iter().map(|i| manifest_for(store, i)).collect::<anyhow::Result<Vec<_>>>()?;
    write_index(sink, images, &manifests)?;
    write_blobs(store, sink, images, &manifests, report)?;
    sink.finish()
}

/// The images an OCI layout holds: each manifest of `index.json` (for an index inside, the
/// host platform's), with its config and layer blobs checked to be present.
pub fn read(src: &dyn Source) -> anyhow::Result<Vec<LoadImage>> {
    let index_bytes = src.read_small("index.json", MAX_MANIFEST_BYTES)?;
    let index: Index = serde_json::from_slice(&index_bytes).context("index.json is not an OCI image index")?;
    // One image per manifest, with the names of every index entry that points at it.
    let mut order: Vec<Digest> = Vec::new();
    let mut names: BTreeMap<Digest, Vec<Reference>> = BTreeMap::new();
    let mut descs: BTreeMap<Digest, Descriptor> = BTreeMap::new();
    for d in &index.manifests {
        let chosen = resolve_manifest(src, d)?;
        if !descs.contains_key(&chosen.digest) {
            order.push(chosen.digest.clone());
            descs.insert(chosen.digest.clone(), chosen.clone());
        }
        if let Some(r) = name_of(d) {
            names.entry(chosen.digest.clone()).or_default().push(r);
        }
    }
    let mut out = Vec::new();
    for digest in order {
        let desc = &descs[&digest];
        let bytes = read_blob(src, desc, MAX_MANIFEST_BYTES)?;
        let m = match Manifest::parse(&bytes, Some(&desc.media_type)).with_context(|| format!("manifest {digest}"))? {
            Manifest::Image(m) => m,
            Manifest::Index(_) => bail!("manifest {digest}: an index inside an index inside index.json is not supported"),
        };
        out.push(image_of(src, m, bytes, names.remove(&digest).unwrap_or_default())?);
    }
    if out.is_empty() {
        bail!("index.json lists no images");
    }
    Ok(out)
}

fn resolve_manifest(src: &dyn Source, d: &Descriptor) -> anyhow::Result<Descriptor> {
    if d.media_type != manifest::OCI_INDEX && d.media_type != manifest::DOCKER_LIST {
        return Ok(d.clone());
    }
    let bytes = read_blob(src, d, MAX_MANIFEST_BYTES)?;
    let Manifest::Index(inner) = Manifest::parse(&bytes, Some(&d.media_type))? else {
        bail!("{} is not an index", d.digest);
    };
    let host = Platform::host();
    platform::choose(&inner.manifests, &host)
        .cloned()
        .ok_or_else(|| anyhow!("index {} has no image for platform {host}", d.digest))
}

/// The name an index entry gives: a full reference from containerd's annotation, or the
/// OCI ref name when it is one (a bare tag such as `latest` names no repository).
fn name_of(d: &Descriptor) -> Option<Reference> {
    let full = d.annotations.get(CONTAINERD_NAME).and_then(|n| Reference::parse(n).ok());
    full.or_else(|| {
        let n = d.annotations.get(REF_NAME)?;
        if n.contains('/') || n.contains(':') { Reference::parse(n).ok() } else { None }
    })
}

fn image_of(src: &dyn Source, m: ImageManifest, manifest: Vec<u8>, tags: Vec<Reference>) -> anyhow::Result<LoadImage> {
    let config = read_blob(src, &m.config, MAX_CONFIG_BYTES)?;
    let mut layers = Vec::new();
    for l in &m.layers {
        let compression = manifest::layer_compression(l)?;
        let path = blob_path(&l.digest);
        match src.size(&path)? {
            None => bail!("layer blob {} named by manifest {} is not in the archive", l.digest, Digest::of_bytes(&manifest)),
            Some(s) if s != l.size => bail!("layer blob {} has {s} bytes; the manifest says {}", l.digest, l.size),
            Some(_) => {}
        }
        layers.push(LayerRef { path, digest: Some(l.digest.clone()), size: Some(l.size), compression: Some(compression), media_type: Some(l.media_type.clone()) });
    }
    Ok(LoadImage { config, manifest: Some(manifest), layers, tags, legacy: None })
}

/// A small blob by descriptor, checked against its digest.
pub fn read_blob(src: &dyn Source, d: &Descriptor, max: u64) -> anyhow::Result<Vec<u8>> {
    let path = blob_path(&d.digest);
    if !src.exists(&path) {
        bail!("blob {} is not in the archive", d.digest);
    }
    let bytes = src.read_small(&path, max)?;
    let got = Digest::of_bytes(&bytes);
    if got != d.digest {
        bail!("blob {} has digest {got}", d.digest);
    }
    Ok(bytes)
}
