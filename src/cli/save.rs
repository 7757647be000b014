//! `shalefs save [-o FILE] [--format F] IMAGE...`: images to an archive (stdout without -o)
//! or, for oci-dir, a directory.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::bail;
use clap::Args;

use crate::oci::Reference;
use crate::store::Store;
use crate::transport::{self, Format, Output, SaveImage};

#[derive(Debug, Args)]
pub struct SaveArgs {
    /// Images: names (each saved under that name) or ids
    #[arg(required = true)]
    pub images: Vec<String>,
    /// Write to this file (this directory for oci-dir) instead of standard output
    #[arg(short, long, value_name = "PATH")]
    pub output: Option<PathBuf>,
    /// docker-archive (as Docker ≥ 25 writes it), oci-archive, or oci-dir
    #[arg(long, value_enum, default_value = "docker-archive")]
    pub format: Format,
    /// No per-layer lines on standard error
    #[arg(short, long)]
    pub quiet: bool,
}

pub fn run(args: SaveArgs, root: Option<PathBuf>) -> anyhow::Result<()> {
    let store = Store::open(&Store::root_from(root.as_deref()))?;
    let repos = store.load_repositories()?;
    let mut images: Vec<SaveImage> = Vec::new();
    for name in &args.images {
        let id = store.resolve_image(name)?;
        // Saved under the name given, as docker does; an id names no tag.
        let tag = Reference::parse(name).ok().filter(|r| r.digest.is_none() && repos.lookup(r) == Some(&id));
        if let Some(img) = images.iter_mut().find(|i| i.record.id == id) {
            img.tags.extend(tag);
            continue;
        }
        let record = store.load_image(&id)?;
        let config = store.read_blob(&id)?;
        images.push(SaveImage { record, config, tags: tag.into_iter().collect() });
    }
    let out = match (&args.output, args.format) {
        (Some(p), Format::OciDir) => Output::Dir(p),
        (None, Format::OciDir) => bail!("--format oci-dir needs -o DIR"),
        (Some(p), _) => Output::File(p),
        (None, _) if std::io::stdout().is_terminal() => bail!("refusing to write an archive to a terminal: use -o FILE or redirect standard output"),
        (None, _) => Output::Stdout,
    };
    let quiet = args.quiet;
    let report = move |d: &crate::oci::Digest, size: Option<u64>| {
        if quiet {
            return;
        }
        match size {
            Some(n) => eprintln!("{}: Saving layer ({:.1} MB)", d.short(), n as f64 / 1e6),
            None => eprintln!("{}: Already saved", d.short()),
        }
    };
    transport::save(&store, args.format, &images, out, &report)
}
