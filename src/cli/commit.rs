//! `commit`: a container's changes as a new image (one more layer over its image), printed by
//! id. The work is in `archive::pack` (upper → tar) and `store::commit` (layer and records).

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, ValueEnum};

use crate::archive::pack::{TarOptions, Walker, write_tar};
use crate::oci::Reference;
use crate::oci::change::ConfigChange;
use crate::oci::manifest::Compression;
use crate::store::Store;
use crate::store::commit::{ImageMeta, timestamp_from};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum CompressionArg {
    Gzip,
    Zstd,
    None,
}

#[derive(Debug, Args)]
pub struct CommitArgs {
    /// Commit message (the history entry's comment)
    #[arg(short, long)]
    pub message: Option<String>,
    /// Author (e.g. "Jane <jane@example.com>")
    #[arg(short, long)]
    pub author: Option<String>,
    /// A Dockerfile instruction to apply to the config: CMD, ENTRYPOINT, ENV, EXPOSE, LABEL,
    /// USER, VOLUME, WORKDIR, STOPSIGNAL
    #[arg(short = 'c', long = "change", value_name = "INSTRUCTION")]
    pub changes: Vec<String>,
    /// Pause the container's writes while the layer is taken (a point-in-time state)
    #[arg(short, long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub pause: bool,
    /// Compression of the layer blob
    #[arg(long, value_enum, default_value = "gzip")]
    pub compression: CompressionArg,
    /// Clamp every time in the layer and the config to this (seconds since the epoch; default
    /// $SOURCE_DATE_EPOCH): equal content then gives the same layer and image id
    #[arg(long, value_name = "UNIX_SECONDS")]
    pub timestamp: Option<i64>,
    pub container: String,
    /// REPOSITORY[:TAG] to name the image
    pub repository: Option<String>,
}

pub fn run(args: CommitArgs, root: Option<PathBuf>) -> anyhow::Result<()> {
    // Everything the user gave is checked before anything is read or written.
    let changes = args.changes.iter().map(|c| ConfigChange::parse(c)).collect::<anyhow::Result<Vec<_>>>()?;
    let tag = args.repository.as_deref().map(Reference::parse).transpose()?;
    let timestamp = timestamp_from(args.timestamp)?;
    let compression = match args.compression {
        CompressionArg::Gzip => Compression::Gzip,
        CompressionArg::Zstd => Compression::Zstd,
        CompressionArg::None => Compression::None,
    };
    let store = Store::open(&Store::root_from(root.as_deref()))?;
    let c = store.load_container(&args.container)?;
    let parent = store.load_image(&c.image).with_context(|| format!("container {}: its image", c.name))?;
    let source = store.pack_source(&c)?;
    let context = || format!("committing container {}", c.name);
    let frozen = if args.pause { crate::freeze::freeze(&store.container_work(&c.name)).with_context(context)? } else { None };
    if args.pause
        && frozen.is_none()
        && let Some(mp) = super::containers::mountpoints_of(&c.name).first()
    {
        anyhow::bail!(
            "container {} is mounted on {mp} but its daemon does not answer to pause it; unmount it or commit with --pause=false",
            c.name
        );
    }
    let walker = Walker::open(&source).with_context(context)?;
    let ops = walker.ops().with_context(context)?;
    let layer = store
        .build_layer(compression, |out| write_tar(&walker.merged, &ops, out, TarOptions { clamp: timestamp }).map(|_| ()))
        .with_context(context)?;
    if let Some(f) = frozen {
        f.thaw()?;
    }
    let meta = ImageMeta {
        created_by: "shalefs commit".into(),
        comment: args.message,
        author: args.author,
        changes,
        timestamp,
        tag,
    };
    let id = store.record_new_image(Some(&parent), layer, &meta).with_context(context)?;
    println!("{id}");
    Ok(())
}
