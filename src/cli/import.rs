//! `import`: a rootfs tar (plain, gzip or zstd) as a one-layer image, printed by id.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use crate::oci::Reference;
use crate::oci::change::ConfigChange;
use crate::store::Store;
use crate::store::commit::ImageMeta;

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The tar, or - for standard input
    pub file: String,
    /// REPOSITORY[:TAG] to name the image
    pub repository: Option<String>,
    /// A Dockerfile instruction to apply to the config (as for commit)
    #[arg(short = 'c', long = "change", value_name = "INSTRUCTION")]
    pub changes: Vec<String>,
    /// Commit message (the history entry's comment)
    #[arg(short, long)]
    pub message: Option<String>,
}

pub fn run(args: ImportArgs, root: Option<PathBuf>) -> anyhow::Result<()> {
    let changes = args.changes.iter().map(|c| ConfigChange::parse(c)).collect::<anyhow::Result<Vec<_>>>()?;
    let tag = args.repository.as_deref().map(Reference::parse).transpose()?;
    let store = Store::open(&Store::root_from(root.as_deref()))?;
    let context = || format!("importing {}", args.file);
    let layer = if args.file == "-" {
        store.import_layer(std::io::stdin().lock())
    } else {
        let file = std::fs::File::open(&args.file).with_context(|| format!("opening {}", args.file))?;
        store.import_layer(file)
    }
    .with_context(context)?;
    let meta = ImageMeta {
        created_by: "shalefs import".into(),
        comment: Some(args.message.clone().unwrap_or_else(|| format!("Imported from {}", args.file))),
        author: None,
        changes,
        timestamp: crate::store::commit::timestamp_from(None)?,
        tag,
    };
    let id = store.record_new_image(None, layer, &meta).with_context(context)?;
    println!("{id}");
    Ok(())
}
