//! `shalefs push IMAGE [DESTINATION]`: send an image from the store to a registry.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, ValueEnum};

use super::progress::Progress;
use super::pull::parse_size;
use crate::oci::Reference;
use crate::oci::manifest::Compression;
use crate::registry::auth::Credentials;
use crate::registry::{Client, RegistriesConfig};
use crate::store::Store;
use crate::store::push::{self, Format, PushOptions};

#[derive(Debug, Args)]
pub struct PushArgs {
    /// The image in the store: a name it was pulled or tagged as, or an image id
    pub image: String,
    /// Where to push it (`registry/repository[:tag]`); default: IMAGE itself
    pub destination: Option<String>,
    /// Credentials for the destination registry (instead of ~/.docker/config.json or auth.json)
    #[arg(long, value_name = "USER:PASSWORD")]
    pub creds: Option<String>,
    /// What a layer is compressed into when the registry lacks its blob and the store kept none
    #[arg(long, value_enum, default_value_t = CompressionArg::Gzip)]
    pub compression: CompressionArg,
    /// Manifest format (default: the stored manifest's); changing it writes a new manifest
    #[arg(long, value_enum)]
    pub format: Option<FormatArg>,
    /// Allow plain HTTP to this registry (always allowed for localhost and 127.0.0.1)
    #[arg(long)]
    pub insecure: bool,
    /// The registries file, for its `insecure` list (mirrors are never used for a push)
    #[arg(long, value_name = "FILE")]
    pub registries_conf: Option<PathBuf>,
    /// Blobs up to this size go in one request; larger ones in chunks of this size
    #[arg(long, default_value = "16M", value_name = "SIZE", value_parser = parse_size)]
    pub chunk_size: u64,
    /// Layers pushed at once
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub jobs: usize,
    /// Print only the manifest digest at the end
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum CompressionArg {
    Gzip,
    Zstd,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum FormatArg {
    Oci,
    V2s2,
}

pub fn run(args: PushArgs, root: Option<PathBuf>) -> anyhow::Result<()> {
    let store = Store::open(&Store::root_from(root.as_deref()))?;
    let dest_name = args.destination.as_deref().unwrap_or(&args.image);
    let dest = Reference::parse(dest_name).with_context(|| match &args.destination {
        Some(_) => "the push destination".to_string(),
        None => format!("{} is not a registry reference: give a DESTINATION", args.image),
    })?;
    if dest.digest.is_some() {
        anyhow::bail!("{dest}: a push destination takes a tag, not a digest");
    }
    let creds = args.creds.as_deref().map(Credentials::parse).transpose()?;
    let conf = RegistriesConfig::load(args.registries_conf.as_deref())?;
    let client = Client::new(conf, args.insecure, creds);
    let opts = PushOptions {
        compression: match args.compression {
            CompressionArg::Gzip => Compression::Gzip,
            CompressionArg::Zstd => Compression::Zstd,
        },
        format: args.format.map(|f| match f {
            FormatArg::Oci => Format::Oci,
            FormatArg::V2s2 => Format::V2s2,
        }),
        chunk_size: args.chunk_size,
        jobs: args.jobs,
    };
    // A name the store does not know is an error before anything is said about the push; an
    // image id (which would parse as a Docker Hub name) needs a destination.
    let id = store.resolve_image(&args.image)?;
    if args.destination.is_none() && store.load_repositories()?.lookup(&dest) != Some(&id) {
        anyhow::bail!("{} is an image id, not a name it was pulled or tagged as: give a DESTINATION", args.image);
    }
    let progress = Progress::new(args.quiet);
    if !args.quiet {
        println!("The push refers to repository [{}]", dest.name());
    }
    let started = std::time::Instant::now();
    let result = push::push(&store, &client, &args.image, &dest, &opts, &progress).with_context(|| format!("pushing {} to {dest}", args.image));
    progress.finish();
    let result = result?;
    if args.quiet {
        println!("{}", result.digest);
        return Ok(());
    }
    let tag = dest.tag.as_deref().unwrap_or("latest");
    println!("{tag}: digest: {} size: {}", result.digest, result.manifest_size);
    println!(
        "Blobs: {} already there, {} mounted, {} uploaded, {} compressed again ({:.1} MB sent in {:.1}s)",
        result.existing,
        result.mounted,
        result.uploaded,
        result.recompressed,
        result.bytes as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );
    if result.recompressed > 0 {
        println!(
            "{} layers compressed again with {}: new blob digests, the same DiffIDs and image id {}",
            result.recompressed,
            args.compression.name(),
            result.image
        );
    }
    if !result.original_manifest {
        println!("The manifest was written anew (the stored one is {}): the same config and image id", result.stored_manifest);
    }
    Ok(())
}

impl CompressionArg {
    fn name(self) -> &'static str {
        match self {
            CompressionArg::Gzip => "gzip",
            CompressionArg::Zstd => "zstd",
        }
    }
}
