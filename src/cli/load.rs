//! `shalefs load [-i FILE]`: images from an archive or OCI layout (stdin without -i).

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use super::progress::Progress;
use crate::store::Store;
use crate::transport::load::{self, Input};

#[derive(Debug, Args)]
pub struct LoadArgs {
    /// A docker-archive, oci-archive (either may be gzip- or zstd-compressed) or OCI layout directory
    #[arg(short, long, value_name = "PATH")]
    pub input: Option<PathBuf>,
    /// Refuse a layer that expands to more than this (e.g. 512M, 64G)
    #[arg(long, default_value = "64G", value_name = "SIZE", value_parser = super::pull::parse_size)]
    pub max_layer_size: u64,
    /// Print only the loaded images
    #[arg(short, long)]
    pub quiet: bool,
}

pub fn run(args: LoadArgs, root: Option<PathBuf>) -> anyhow::Result<()> {
    let store = Store::open(&Store::root_from(root.as_deref()))?;
    let input = args.input.clone().map_or(Input::Stdin, Input::Path);
    let shown = args.input.as_ref().map_or("standard input".to_string(), |p| p.display().to_string());
    let progress = Progress::with_words(args.quiet, "Loading", "Loaded");
    let result = load::load(&store, &input, args.max_layer_size, &progress).with_context(|| format!("loading {shown}"));
    progress.finish();
    for img in result? {
        if img.tags.is_empty() {
            println!("Loaded image ID: {}", img.id);
        }
        for r in &img.tags {
            println!("Loaded image: {r}");
        }
    }
    Ok(())
}
