//! A layer's exact uncompressed tar, given back from the store: rebuilt from the unpacked
//! files and the tar record the unpack kept (`archive::tarsplit`), or decompressed from the
//! layer's blob when the store kept it. Either way the bytes are hashed as they stream and the
//! reader fails at the end unless they hash to the DiffID, so a layer changed behind the
//! store's back is reported, never handed on under a digest it no longer has. This is what
//! save and push read layers through.

use std::fs::File;
use std::io::{self, BufReader, Read};

use anyhow::bail;

use super::Store;
use crate::archive::compress::Decompressor;
use crate::archive::tarsplit::Rebuild;
use crate::oci::digest::Hasher;
use crate::oci::manifest::{self, Descriptor};
use crate::oci::Digest;

/// The original tar of a layer. `size` is known before the first byte (archive headers need it).
pub struct LayerTar {
    inner: Box<dyn Read + Send>,
    hasher: Hasher,
    diff_id: Digest,
    pub size: u64,
    finished: bool,
}

impl Store {
    /// The exact tar a layer was unpacked from, checked against its DiffID as it streams.
    pub fn layer_tar(&self, diff_id: &Digest) -> anyhow::Result<LayerTar> {
        let Some(info) = self.layer_info(diff_id).filter(|_| self.has_layer(diff_id)) else {
            bail!("layer {diff_id} is not in the store");
        };
        let record = self.layer_record_path(diff_id);
        let inner: Box<dyn Read + Send> = if record.exists() {
            Box::new(Rebuild::open(&record, &self.layer_dir(diff_id), &self.layer_stash_path(diff_id))?)
        } else if let Some(blob) = self.kept_layer_blob(diff_id) {
            let desc = Descriptor {
                media_type: info.media_type.clone(),
                digest: info.digest.clone(),
                size: info.compressed_size,
                platform: None,
                annotations: Default::default(),
                urls: Vec::new(),
            };
            let compression = manifest::layer_compression(&desc)?;
            Box::new(Decompressor::new(compression, BufReader::with_capacity(256 << 10, File::open(blob)?))?)
        } else {
            bail!(
                "layer {diff_id} was unpacked before shalefs kept tar records, so its exact tar cannot be rebuilt: remove the image (shalefs rmi) and pull it again"
            );
        };
        Ok(LayerTar { inner, hasher: Hasher::new(), diff_id: diff_id.clone(), size: info.unpacked_size, finished: false })
    }

    /// The path of the layer's compressed blob, when the store has it (`pull --keep-blobs`,
    /// or a layer made by `commit`), whole and under its digest.
    pub fn kept_layer_blob(&self, diff_id: &Digest) -> Option<std::path::PathBuf> {
        let info = self.layer_info(diff_id)?;
        let path = self.blob_path(&info.digest);
        let len = std::fs::metadata(&path).ok()?.len();
        (len == info.compressed_size).then_some(path)
    }
}

impl Read for LayerTar {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.finished {
            return Ok(0);
        }
        let n = self.inner.read(buf).map_err(|e| io::Error::other(format!("layer {}: {e}", self.diff_id)))?;
        self.hasher.update(&buf[..n]);
        if self.hasher.bytes > self.size {
            return Err(self.changed());
        }
        if n == 0 {
            let got = std::mem::take(&mut self.hasher);
            let bytes = got.bytes;
            if bytes != self.size || got.finish() != self.diff_id {
                return Err(self.changed());
            }
            self.finished = true;
        }
        Ok(n)
    }
}

impl LayerTar {
    fn changed(&self) -> io::Error {
        io::Error::other(format!(
            "layer {} no longer matches its DiffID: its files were changed behind the store's back (refusing to write it under a wrong digest)",
            self.diff_id
        ))
    }
}
