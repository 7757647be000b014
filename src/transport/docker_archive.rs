//! docker-archive (`docker save`): written as Docker ≥ 25 writes it — the OCI layout (see
//! [`super::oci_layout`]) plus the classic `manifest.json` whose `Config` and `Layers` point
//! into `blobs/sha256/`, so old and new `docker load`, `podman load` and skopeo all read it.
//! Read in every form: `manifest.json` with `<id>/layer.tar` or blob paths (a layer
//! compressed or not, told by its first bytes), and the legacy `repositories` file with
//! `<id>/json` + `<id>/layer.tar` when there is no `manifest.json`.

use anyhow::{Context, anyhow, bail};
use serde::Deserialize;
use serde_json::{Value, json};

use super::io::{Sink, Source, clean_path};
use super::oci_layout::{self, blob_path};
use super::{LayerRef, LoadImage, SaveImage, SaveReport};
use crate::oci::manifest::MAX_CONFIG_BYTES;
use crate::oci::{Digest, Reference};
use crate::store::Store;

pub fn save(store: &Store, sink: &mut dyn Sink, images: &[SaveImage], report: &SaveReport) -> anyhow::Result<()> {
    let manifests = images.iter().map(|i| oci_layout::manifest_for(store, i)).collect::<anyhow::Result<Vec<_>>>()?;
    oci_layout::write_index(sink, images, &manifests)?;
    let entries: Vec<Value> = images
        .iter()
        .map(|img| {
            json!({
                "Config": blob_path(&img.record.id),
                "RepoTags": img.tags.iter().map(|r| format!("{}:{}", r.familiar_name(), r.tag.as_deref().unwrap_or("latest"))).collect::<Vec<_>>(),
                "Layers": img.record.layers.iter().map(|l| blob_path(&l.diff_id)).collect::<Vec<_>>(),
            })
        })
        .collect();
    let mj = serde_json::to_vec(&entries)?;
    sink.file("manifest.json", mj.len() as u64, &mut &mj[..])?;
    oci_layout::write_blobs(store, sink, images, &manifests, report)?;
    sink.finish()
}

#[derive(Deserialize)]
struct Entry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers", default)]
    layers: Vec<String>,
}

/// The images of a docker-archive: `manifest.json` if there is one, else `repositories`.
pub fn read(src: &dyn Source) -> anyhow::Result<Vec<LoadImage>> {
    if !src.exists("manifest.json") {
        return read_legacy(src);
    }
    let bytes = src.read_small("manifest.json", MAX_CONFIG_BYTES)?;
    let entries: Vec<Entry> = serde_json::from_slice(&bytes).context("manifest.json is not a docker-archive manifest")?;
    if entries.is_empty() {
        bail!("manifest.json lists no images");
    }
    let mut images: Vec<LoadImage> = entries.into_iter().map(|e| image_of(src, e)).collect::<anyhow::Result<_>>()?;
    // A Docker ≥ 25 archive also holds each image's OCI manifest: keep it (and so its digest)
    // when it describes the same config and layer blobs.
    if src.exists("index.json")
        && let Ok(oci) = oci_layout::read(src)
    {
        for img in &mut images {
            let same = oci.iter().find(|o| o.config == img.config && o.layers.iter().map(|l| &l.path).eq(img.layers.iter().map(|l| &l.path)));
            if let Some(o) = same {
                img.manifest = o.manifest.clone();
            }
        }
    }
    Ok(images)
}

fn image_of(src: &dyn Source, e: Entry) -> anyhow::Result<LoadImage> {
    let config_path = clean_path(&e.config)?;
    if !src.exists(&config_path) {
        bail!("manifest.json names config {}, which is not in the archive", e.config);
    }
    let config = src.read_small(&config_path, MAX_CONFIG_BYTES)?;
    if let Some(named) = digest_in_name(&config_path) {
        let got = Digest::of_bytes(&config);
        if got != named {
            bail!("config {config_path} has digest {got}");
        }
    }
    let mut layers = Vec::new();
    for raw in &e.layers {
        let path = clean_path(raw)?;
        if src.size(&path)?.is_none() {
            bail!("manifest.json names layer {raw}, which is not in the archive");
        }
        // A blob path names the digest; `<id>/layer.tar` names none (the DiffID is checked).
        let digest = path.strip_prefix("blobs/sha256/").and_then(Digest::from_hex);
        layers.push(LayerRef { path, digest, size: None, compression: None, media_type: None });
    }
    let tags = e.repo_tags.unwrap_or_default().iter().map(|t| Reference::parse(t).with_context(|| format!("RepoTags entry {t:?}"))).collect::<anyhow::Result<_>>()?;
    Ok(LoadImage { config, manifest: None, layers, tags, legacy: None })
}

/// `blobs/sha256/<hex>` or `<hex>.json` name the content's digest.
fn digest_in_name(path: &str) -> Option<Digest> {
    path.strip_prefix("blobs/sha256/").and_then(Digest::from_hex).or_else(|| path.strip_suffix(".json").and_then(Digest::from_hex))
}

/// The pre-1.10 form: `repositories` maps `name → tag → top layer id`; each `<id>/json` is
/// a v1 image JSON naming its parent; the config is made from the top one, as docker's
/// legacy load does (its v1 fields, `rootfs` from the layers, a history entry per layer).
/// Its DiffIDs are only known once the layers are read, so the config is finished then.
fn read_legacy(src: &dyn Source) -> anyhow::Result<Vec<LoadImage>> {
    if !src.exists("repositories") {
        bail!("not an image archive: no manifest.json, index.json or repositories");
    }
    let repos: std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>> =
        serde_json::from_slice(&src.read_small("repositories", MAX_CONFIG_BYTES)?).context("repositories is not a docker repositories file")?;
    let mut by_top: std::collections::BTreeMap<String, Vec<Reference>> = Default::default();
    for (name, tags) in repos {
        for (tag, id) in tags {
            let r = Reference::parse(&format!("{name}:{tag}")).with_context(|| format!("repositories entry {name}:{tag}"))?;
            by_top.entry(id).or_default().push(r);
        }
    }
    let mut out = Vec::new();
    for (top, tags) in by_top {
        let mut chain = Vec::new();
        let mut id = Some(top.clone());
        while let Some(cur) = id {
            if chain.len() > 1000 || Digest::from_hex(&cur).is_none() {
                bail!("repositories names layer id {cur:?}, which is not a layer of this archive");
            }
            let v1: Value = serde_json::from_slice(&src.read_small(&format!("{cur}/json"), MAX_CONFIG_BYTES).with_context(|| format!("layer {cur}"))?)
                .with_context(|| format!("{cur}/json is not JSON"))?;
            id = v1.get("parent").and_then(Value::as_str).filter(|p| !p.is_empty()).map(str::to_string);
            chain.push((cur, v1));
        }
        chain.reverse();
        let mut layers = Vec::new();
        for (cur, _) in &chain {
            let path = format!("{cur}/layer.tar");
            if src.size(&path)?.is_none() {
                bail!("layer {cur} has no layer.tar in the archive");
            }
            layers.push(LayerRef { path, digest: None, size: None, compression: None, media_type: None });
        }
        let v1s: Vec<Value> = chain.into_iter().map(|(_, v)| v).collect();
        let config = serde_json::to_vec(&legacy_config(&v1s, &[])?)?;
        out.push(LoadImage { config, manifest: None, layers, tags, legacy: None }.legacy(v1s));
    }
    Ok(out)
}

/// A config from v1 image JSONs (bottom first) and the DiffIDs of their layers.
pub fn legacy_config(v1s: &[Value], diff_ids: &[Digest]) -> anyhow::Result<Value> {
    let mut config = v1s.last().cloned().ok_or_else(|| anyhow!("an image with no layers"))?;
    let obj = config.as_object_mut().ok_or_else(|| anyhow!("a v1 image JSON that is not an object"))?;
    for k in ["id", "parent", "Size", "parent_id", "layer_id", "throwaway"] {
        obj.remove(k);
    }
    let history: Vec<Value> = v1s
        .iter()
        .map(|v| {
            let by = v.pointer("/container_config/Cmd").and_then(Value::as_array).map(|c| {
                c.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(" ")
            });
            let mut h = json!({});
            for (k, val) in [("created", v.get("created").cloned()), ("author", v.get("author").cloned()), ("comment", v.get("comment").cloned()), ("created_by", by.map(Value::from))] {
                if let Some(val) = val.filter(|x| !x.is_null() && x.as_str() != Some("")) {
                    h[k] = val;
                }
            }
            h
        })
        .collect();
    obj.insert("rootfs".into(), json!({"type": "layers", "diff_ids": diff_ids.iter().map(|d| d.to_string()).collect::<Vec<_>>()}));
    obj.insert("history".into(), Value::from(history));
    Ok(config)
}
