//! `export`: a container's merged view as one plain tar, as `docker export` writes it.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use crate::archive::pack::{TarOptions, whole_view, write_tar};
use crate::store::Store;
use crate::union::view::View;

#[derive(Debug, Args)]
pub struct ExportArgs {
    pub container: String,
    /// Write to FILE instead of standard output
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

pub fn run(args: ExportArgs, root: Option<PathBuf>) -> anyhow::Result<()> {
    let store = Store::open(&Store::root_from(root.as_deref()))?;
    let c = store.load_container(&args.container)?;
    let source = store.pack_source(&c)?;
    let mut layers = vec![(source.upper.clone(), source.upper_formats)];
    layers.extend(source.lowers.iter().map(|l| (l.clone(), crate::union::layer::Formats::LOWER)));
    let view = View::open(&layers)?;
    let ops = whole_view(&view).with_context(|| format!("exporting container {}", c.name))?;
    match &args.output {
        None => {
            let out = std::io::BufWriter::with_capacity(1 << 20, std::io::stdout().lock());
            let mut out = write_tar(&view, &ops, out, TarOptions::default()).with_context(|| format!("exporting container {}", c.name))?;
            out.flush().context("writing the tar")?;
        }
        Some(path) => {
            let file = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
            let written = write_tar(&view, &ops, std::io::BufWriter::with_capacity(1 << 20, file), TarOptions::default())
                .and_then(|mut w| w.flush().context("writing the tar"));
            if let Err(e) = written {
                let _ = std::fs::remove_file(path);
                return Err(e.context(format!("exporting container {} to {}", c.name, path.display())));
            }
        }
    }
    Ok(())
}
