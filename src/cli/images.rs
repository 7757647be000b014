//! `images`, `inspect`, `history`, `tag`, `rmi` and `prune`: reading and changing the image
//! records in the store, with docker's output shapes.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use serde_json::json;

use crate::oci::manifest::ImageConfig;
use crate::oci::{Reference, reference};
use crate::store::Store;
use crate::store::image::{ImageRecord, TagEntry};

fn open(root: Option<PathBuf>) -> anyhow::Result<Store> {
    Store::open(&Store::root_from(root.as_deref()))
}

/// Unpacked size of an image: the sum of its layers' tar sizes.
fn image_size(store: &Store, rec: &ImageRecord) -> u64 {
    rec.layers.iter().filter_map(|l| store.layer_info(&l.diff_id)).map(|i| i.unpacked_size).sum()
}

pub fn human_size(bytes: u64) -> String {
    match bytes {
        b if b >= 1_000_000_000 => format!("{:.2}GB", b as f64 / 1e9),
        b if b >= 1_000_000 => format!("{:.1}MB", b as f64 / 1e6),
        b if b >= 1_000 => format!("{:.1}kB", b as f64 / 1e3),
        b => format!("{b}B"),
    }
}

/// "3 days ago", from an RFC 3339 time as in image configs.
pub fn human_age(rfc3339: Option<&str>) -> String {
    let Some(secs) = rfc3339.and_then(parse_rfc3339) else { return "N/A".into() };
    let age = crate::store::pull::now() as i64 - secs;
    let (n, unit) = match age {
        a if a < 60 => return "Less than a minute ago".into(),
        a if a < 3600 => (a / 60, "minute"),
        a if a < 86400 => (a / 3600, "hour"),
        a if a < 86400 * 14 => (a / 86400, "day"),
        a if a < 86400 * 60 => (a / (86400 * 7), "week"),
        a if a < 86400 * 365 * 2 => (a / (86400 * 30), "month"),
        a => (a / (86400 * 365), "year"),
    };
    format!("{n} {unit}{} ago", if n == 1 { "" } else { "s" })
}

/// Seconds since the epoch of `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`.
fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 19 {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d, h, mi, se) = (num(0..4)?, num(5..7)?, num(8..10)?, num(11..13)?, num(14..16)?, num(17..19)?);
    // Days from the civil date (Howard Hinnant's algorithm).
    let y2 = if mo <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * (mo + if mo > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    let mut t = days * 86400 + h * 3600 + mi * 60 + se;
    let rest = &s[19..];
    let tz = rest.trim_start_matches(|c: char| c == '.' || c.is_ascii_digit());
    if let Some(off) = tz.strip_prefix('+').or_else(|| tz.strip_prefix('-')) {
        let sign = if tz.starts_with('+') { 1 } else { -1 };
        let oh: i64 = off.get(0..2)?.parse().ok()?;
        let om: i64 = off.get(3..5)?.parse().ok()?;
        t -= sign * (oh * 3600 + om * 60);
    }
    Some(t)
}

#[derive(Debug, Args)]
pub struct ImagesArgs {
    /// Show full image ids
    #[arg(long)]
    pub no_trunc: bool,
}

pub fn images(args: ImagesArgs, root: Option<PathBuf>) -> anyhow::Result<()> {
    let store = open(root)?;
    let repos = store.load_repositories()?;
    println!("{:<40} {:<20} {:<14} {:<24} SIZE", "REPOSITORY", "TAG", "IMAGE ID", "CREATED");
    for rec in store.all_images()? {
        let id = if args.no_trunc { rec.id.to_string() } else { rec.id.short().to_string() };
        let size = human_size(image_size(&store, &rec));
        let created = human_age(rec.created.as_deref());
        let mut rows = Vec::new();
        for (name, entry) in &repos.repos {
            let (registry, repository) = name.split_once('/').unwrap_or(("", name));
            let mut tagged = false;
            for (tag, t) in &entry.tags {
                if t.image == rec.id {
                    rows.push((reference::familiar(registry, repository), tag.clone()));
                    tagged = true;
                }
            }
            // Pulled by digest only: the repository is known, the tag is not (as docker shows).
            if !tagged && entry.digests.values().any(|id| id == &rec.id) {
                rows.push((reference::familiar(registry, repository), "<none>".into()));
            }
        }
        if rows.is_empty() {
            rows.push(("<none>".into(), "<none>".into()));
        }
        for (repo, tag) in rows {
            println!("{repo:<40} {tag:<20} {id:<14} {created:<24} {size}");
        }
    }
    Ok(())
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Image names or ids
    #[arg(required = true)]
    pub images: Vec<String>,
}

pub fn inspect(args: InspectArgs, root: Option<PathBuf>) -> anyhow::Result<()> {
    let store = open(root)?;
    let repos = store.load_repositories()?;
    let mut out = Vec::new();
    for name in &args.images {
        let id = store.resolve_image(name)?;
        let rec = store.load_image(&id)?;
        let raw: serde_json::Value = serde_json::from_slice(&store.read_blob(&id)?).context("reading the image config")?;
        let (tags, digests) = repos.names_of(&id);
        let dirs: Vec<String> = rec.layers.iter().rev().map(|l| store.layer_dir(&l.diff_id).display().to_string()).collect();
        out.push(json!({
            "Id": id.to_string(),
            "RepoTags": tags,
            "RepoDigests": digests,
            "ManifestDigest": rec.manifest_digest.to_string(),
            "Created": raw.get("created"),
            "Architecture": raw.get("architecture"),
            "Os": raw.get("os"),
            "Variant": raw.get("variant"),
            "Config": raw.get("config"),
            "RootFS": raw.get("rootfs"),
            "Layers": rec.layers.iter().map(|l| json!({"DiffID": l.diff_id.to_string(), "Digest": l.digest.to_string(), "MediaType": l.media_type, "Size": l.size})).collect::<Vec<_>>(),
            "LayerDirs": dirs,
            "Size": image_size(&store, &rec),
        }));
    }
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    pub image: String,
    /// Do not shorten the CREATED BY column
    #[arg(long)]
    pub no_trunc: bool,
}

pub fn history(args: HistoryArgs, root: Option<PathBuf>) -> anyhow::Result<()> {
    let store = open(root)?;
    let id = store.resolve_image(&args.image)?;
    let rec = store.load_image(&id)?;
    let config = ImageConfig::parse(&store.read_blob(&id)?).context("reading the image config")?;
    // Each non-empty history entry matches the next layer, bottom first.
    let mut layers = rec.layers.iter();
    let mut rows = Vec::new();
    for h in &config.history {
        let size = if h.empty_layer { 0 } else { layers.next().and_then(|l| store.layer_info(&l.diff_id)).map_or(0, |i| i.unpacked_size) };
        rows.push((h.created.clone(), h.created_by.clone().unwrap_or_default(), size, h.comment.clone().unwrap_or_default()));
    }
    println!("{:<14} {:<24} {:<50} {:<10} COMMENT", "IMAGE", "CREATED", "CREATED BY", "SIZE");
    for (i, (created, by, size, comment)) in rows.iter().rev().enumerate() {
        let image = if i == 0 { id.short().to_string() } else { "<missing>".into() };
        let by = if args.no_trunc || by.chars().count() <= 47 { by.clone() } else { format!("{}...", by.chars().take(47).collect::<String>()) };
        println!("{image:<14} {:<24} {by:<50} {:<10} {comment}", human_age(created.as_deref()), human_size(*size));
    }
    Ok(())
}

#[derive(Debug, Args)]
pub struct TagArgs {
    pub source: String,
    pub target: String,
}

pub fn tag(args: TagArgs, root: Option<PathBuf>) -> anyhow::Result<()> {
    let store = open(root)?;
    let target = Reference::parse(&args.target)?;
    let (Some(tag), None) = (&target.tag, &target.digest) else { bail!("tag target {} must have a tag, not a digest", args.target) };
    let _lock = store.lock_records()?;
    let id = store.resolve_image(&args.source)?;
    let rec = store.load_image(&id)?;
    let mut repos = store.load_repositories()?;
    repos.repos.entry(target.name()).or_default().tags.insert(tag.clone(), TagEntry { image: id, digest: rec.manifest_digest });
    store.save_repositories(&repos)
}

#[derive(Debug, Args)]
pub struct RmiArgs {
    #[arg(required = true)]
    pub images: Vec<String>,
    /// Remove even if a container uses it (the container keeps its layers)
    #[arg(short, long)]
    pub force: bool,
}

pub fn rmi(args: RmiArgs, root: Option<PathBuf>) -> anyhow::Result<()> {
    let store = open(root)?;
    for name in &args.images {
        let removed = store.remove_image(name, args.force)?;
        for u in removed.untagged {
            println!("Untagged: {u}");
        }
        if let Some(id) = removed.deleted_image {
            println!("Deleted: {id}");
        }
        for l in removed.deleted_layers {
            println!("Deleted layer: {l}");
        }
    }
    Ok(())
}

pub fn prune(root: Option<PathBuf>) -> anyhow::Result<()> {
    let store = open(root)?;
    let _lock = store.lock_records()?;
    let (images, layers) = store.prune()?;
    for i in &images {
        println!("Deleted image: {i}");
    }
    for l in &layers {
        println!("Deleted layer: {l}");
    }
    println!("Removed {} images and {} layers", images.len(), layers.len());
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_times_parse() {
        assert_eq!(super::parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(super::parse_rfc3339("2024-02-29T12:00:00.123456789Z"), Some(1709208000));
        assert_eq!(super::parse_rfc3339("2024-02-29T14:00:00+02:00"), Some(1709208000));
    }
}
