//! Decompression of layer blobs by media type. Gzip layers may hold several members (as
//! `pigz` and some registries write them); all are read.

use std::io::{self, BufRead, Read};

use crate::oci::manifest::Compression;

pub fn decompress<'a, R: BufRead + 'a>(compression: Compression, blob: R) -> io::Result<Box<dyn Read + 'a>> {
    Ok(match compression {
        Compression::None => Box::new(blob),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(blob)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(blob)?),
    })
}

/// A reader that fails once more than `limit` bytes have passed: the bound that stops a
/// decompression bomb before it fills the disk.
pub struct LimitedReader<R> {
    inner: R,
    left: u64,
    limit: u64,
}

impl<R> LimitedReader<R> {
    pub fn new(inner: R, limit: u64) -> Self {
        LimitedReader { inner, left: limit, limit }
    }
}

impl<R: Read> Read for LimitedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n as u64 > self.left {
            return Err(io::Error::other(format!(
                "layer expands to more than {} bytes (the --max-layer-size limit): refusing it as a decompression bomb",
                self.limit
            )));
        }
        self.left -= n as u64;
        Ok(n)
    }
}
