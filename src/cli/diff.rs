//! `diff`: what a container changed, as `docker diff` prints it (A/C/D lines, sorted).

use std::io::Write;
use std::path::PathBuf;

use clap::Args;

use crate::archive::pack::{Walker, changes};
use crate::store::Store;

#[derive(Debug, Args)]
pub struct DiffArgs {
    pub container: String,
}

pub fn run(args: DiffArgs, root: Option<PathBuf>) -> anyhow::Result<()> {
    let store = Store::open(&Store::root_from(root.as_deref()))?;
    let c = store.load_container(&args.container)?;
    let walker = Walker::open(&store.pack_source(&c)?)?;
    let mut out = std::io::stdout().lock();
    for (change, path) in changes(&walker.ops()?) {
        writeln!(out, "{} {path}", change.letter())?;
    }
    Ok(())
}
