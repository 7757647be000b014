//! Images as files: `save` writes store images as a docker-archive, an oci-archive or an OCI
//! layout directory; `load` reads any of those (and the classic and legacy docker-archive
//! forms, gzip- or zstd-compressed or not) into the store. One module per format, over one
//! pair of file abstractions ([`io`]); layers go out through the store's exact tar rebuild
//! (`Store::layer_tar`, checked against each DiffID) and come in through the pull's streaming
//! pass (`store::pull::stage_layer`: blob digest, decompression, DiffID, safe unpack, tar
//! record), so a saved and loaded image keeps its id and DiffIDs.

pub mod docker_archive;
pub mod io;
pub mod load;
pub mod oci_archive;
pub mod oci_layout;

use crate::oci::manifest::Compression;
use crate::oci::{Digest, Reference};
use crate::store::ImageRecord;

/// The archive formats, as docker, podman and skopeo name them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    DockerArchive,
    OciArchive,
    OciDir,
}

/// One image to save: its record, its config bytes and the names it is saved under.
pub struct SaveImage {
    pub record: ImageRecord,
    pub config: Vec<u8>,
    pub tags: Vec<Reference>,
}

/// Told about each layer as it is written: its size, or None when an earlier image of the
/// same archive wrote it.
pub type SaveReport<'a> = dyn Fn(&Digest, Option<u64>) + 'a;

/// One image as an archive describes it, before any layer is read.
pub struct LoadImage {
    pub config: Vec<u8>,
    /// The manifest, byte for byte, when the archive holds one (OCI layouts).
    pub manifest: Option<Vec<u8>>,
    /// Bottom first.
    pub layers: Vec<LayerRef>,
    pub tags: Vec<Reference>,
    /// For the legacy form: the v1 JSONs the config is made from once the DiffIDs are known.
    pub legacy: Option<Vec<serde_json::Value>>,
}

impl LoadImage {
    fn legacy(mut self, v1s: Vec<serde_json::Value>) -> Self {
        self.legacy = Some(v1s);
        self
    }
}

/// Where a layer's blob is in the archive and what it must be.
pub struct LayerRef {
    pub path: String,
    pub digest: Option<Digest>,
    pub size: Option<u64>,
    pub compression: Option<Compression>,
    pub media_type: Option<String>,
}

/// Where save writes.
pub enum Output<'a> {
    /// A file, written beside its final name and renamed into place when complete.
    File(&'a std::path::Path),
    /// A directory (oci-dir), built beside it and renamed into place when complete.
    Dir(&'a std::path::Path),
    Stdout,
}

/// Save `images` in `format`. Nothing is left at the destination if it fails (on stdout, what
/// was written stays written, and the error says why it stopped).
pub fn save(store: &crate::store::Store, format: Format, images: &[SaveImage], out: Output<'_>, report: &SaveReport) -> anyhow::Result<()> {
    use anyhow::Context;
    let write_tar = |w: &mut dyn std::io::Write| -> anyhow::Result<()> {
        match format {
            Format::DockerArchive => docker_archive::save(store, &mut io::TarSink::new(w), images, report),
            Format::OciArchive => oci_archive::save(store, w, images, report).map(|_| ()),
            Format::OciDir => anyhow::bail!("oci-dir needs a directory (-o DIR)"),
        }
    };
    match out {
        Output::Stdout => {
            let stdout = std::io::stdout();
            let mut w = std::io::BufWriter::with_capacity(1 << 20, stdout.lock());
            write_tar(&mut w)?;
            std::io::Write::flush(&mut w).context("writing to standard output")
        }
        Output::File(path) => {
            let tmp = sibling_tmp(path);
            let result = (|| {
                let f = std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
                let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
                write_tar(&mut w)?;
                let f = w.into_inner().map_err(|e| e.into_error())?;
                f.sync_all()?;
                std::fs::rename(&tmp, path).with_context(|| format!("renaming into {}", path.display()))
            })();
            if result.is_err() {
                let _ = std::fs::remove_file(&tmp);
            }
            result
        }
        Output::Dir(path) => {
            if std::fs::read_dir(path).map(|mut d| d.next().is_some()).unwrap_or(false) {
                anyhow::bail!("{} exists and is not empty: oci-dir writes a new layout", path.display());
            }
            let tmp = sibling_tmp(path);
            let result = (|| {
                std::fs::create_dir(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
                oci_layout::save(store, &mut io::DirSink::new(&tmp), images, report)?;
                if path.exists() {
                    std::fs::remove_dir(path).with_context(|| format!("replacing the empty {}", path.display()))?;
                }
                std::fs::rename(&tmp, path).with_context(|| format!("renaming into {}", path.display()))
            })();
            if result.is_err() {
                let _ = std::fs::remove_dir_all(&tmp);
            }
            result
        }
    }
}

fn sibling_tmp(path: &std::path::Path) -> std::path::PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "out".into());
    path.with_file_name(format!(".{name}.shalefs-tmp-{}", std::process::id()))
}
