//! `shalefs pull REF`: fetch an image from a registry into the store.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use super::progress::Progress;
use crate::oci::Reference;
use crate::oci::platform::Platform;
use crate::registry::auth::Credentials;
use crate::registry::{Client, RegistriesConfig};
use crate::store::Store;
use crate::store::pull::{self, PullOptions};

#[derive(Debug, Args)]
pub struct PullArgs {
    /// The image: `alpine`, `library/alpine:3.20`, `localhost:5000/app:1`, `…@sha256:…`
    pub reference: String,
    /// os/arch[/variant] to pick from a multi-platform image (default: this host's)
    #[arg(long, value_name = "PLATFORM")]
    pub platform: Option<String>,
    /// Credentials for the image's registry (instead of ~/.docker/config.json or auth.json)
    #[arg(long, value_name = "USER:PASSWORD")]
    pub creds: Option<String>,
    /// Allow plain HTTP to this registry (always allowed for localhost and 127.0.0.1)
    #[arg(long)]
    pub insecure: bool,
    /// Mirrors file: shalefs' JSON or podman's registries.conf (default: $SHALEFS_REGISTRIES_CONF,
    /// $CONTAINERS_REGISTRIES_CONF, /etc/shalefs/registries.json, /etc/containers/registries.conf)
    #[arg(long, value_name = "FILE")]
    pub registries_conf: Option<PathBuf>,
    /// Layers fetched at once
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub jobs: usize,
    /// Keep the compressed layer blobs in the store after unpacking
    #[arg(long)]
    pub keep_blobs: bool,
    /// Refuse a layer that expands to more than this (e.g. 512M, 64G)
    #[arg(long, default_value = "64G", value_name = "SIZE", value_parser = parse_size)]
    pub max_layer_size: u64,
    /// Print only the image reference at the end
    #[arg(short, long)]
    pub quiet: bool,
}

pub fn parse_size(s: &str) -> Result<u64, String> {
    let (num, mult) = match s.trim().to_ascii_uppercase().chars().last() {
        Some('K') => (&s[..s.len() - 1], 1u64 << 10),
        Some('M') => (&s[..s.len() - 1], 1 << 20),
        Some('G') => (&s[..s.len() - 1], 1 << 30),
        Some('T') => (&s[..s.len() - 1], 1 << 40),
        _ => (s, 1),
    };
    let n: u64 = num.trim().parse().map_err(|_| format!("invalid size {s:?}: use a number with K, M, G or T"))?;
    n.checked_mul(mult).ok_or_else(|| format!("size {s:?} is too large"))
}

pub fn run(args: PullArgs, root: Option<PathBuf>) -> anyhow::Result<()> {
    let r = Reference::parse(&args.reference)?;
    let platform = match &args.platform {
        Some(p) => Platform::parse(p).map_err(anyhow::Error::msg)?,
        None => Platform::host(),
    };
    let creds = args.creds.as_deref().map(Credentials::parse).transpose()?;
    let conf = RegistriesConfig::load(args.registries_conf.as_deref())?;
    let store = Store::open(&Store::root_from(root.as_deref()))?;
    let client = Client::new(conf, args.insecure, creds);
    let repo = client.repo(&r)?;
    let opts = PullOptions { platform, jobs: args.jobs, keep_blobs: args.keep_blobs, max_layer_size: args.max_layer_size };
    let progress = Progress::new(args.quiet);
    if !args.quiet {
        println!("{}: Pulling from {}", r.tag.as_deref().or(r.digest.as_ref().map(|_| "digest")).unwrap_or("latest"), r.repository);
    }
    let started = std::time::Instant::now();
    let result = pull::pull(&store, &repo, &r, &opts, &progress).with_context(|| format!("pulling {r}"));
    progress.finish();
    let result = result?;
    if !args.quiet {
        println!("Digest: {}", result.digest);
        let shown = format!("{}{}", r.familiar_name(), r.tag.as_ref().map(|t| format!(":{t}")).unwrap_or_default());
        if result.up_to_date {
            println!("Status: Image is up to date for {shown}");
        } else {
            println!(
                "Status: Downloaded newer image for {shown} ({} layers, {:.1} MB in {:.1}s)",
                result.fetched_layers,
                result.fetched_bytes as f64 / 1e6,
                started.elapsed().as_secs_f64()
            );
        }
    }
    println!("{r}");
    Ok(())
}
