//! Decompression of layer blobs by media type. Gzip layers may hold several members (as
//! `pigz` and some registries write them); zstd layers several frames; all are read.

use std::io::{self, BufRead, Read};

use crate::oci::manifest::Compression;

/// The compression of a blob, told by its first bytes (gzip and zstd magic numbers), for
/// layers whose media type does not say (a docker-archive's layer.tar).
pub fn sniff(head: &[u8]) -> Compression {
    if head.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::None
    }
}

/// A decompressing reader that gives its source back, so the caller can read the source to
/// its end (the blob digest covers every byte, even after the compressed stream ends). One
/// exists per layer being pulled, so the sizes of its variants do not matter.
#[allow(clippy::large_enum_variant)]
pub enum Decompressor<R: BufRead> {
    None(R),
    Gzip(flate2::bufread::MultiGzDecoder<R>),
    Zstd(zstd::stream::read::Decoder<'static, R>),
}

impl<R: BufRead> Decompressor<R> {
    pub fn new(compression: Compression, blob: R) -> io::Result<Self> {
        Ok(match compression {
            Compression::None => Decompressor::None(blob),
            Compression::Gzip => Decompressor::Gzip(flate2::bufread::MultiGzDecoder::new(blob)),
            Compression::Zstd => Decompressor::Zstd(zstd::stream::read::Decoder::with_buffer(blob)?),
        })
    }

    pub fn into_inner(self) -> R {
        match self {
            Decompressor::None(r) => r,
            Decompressor::Gzip(d) => d.into_inner(),
            Decompressor::Zstd(d) => d.finish(),
        }
    }
}

impl<R: BufRead> Read for Decompressor<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Decompressor::None(r) => r.read(buf),
            Decompressor::Gzip(d) => d.read(buf),
            Decompressor::Zstd(d) => d.read(buf),
        }
    }
}

/// A reader that fails once more than `limit` bytes have passed: the bound that stops a
/// decompression bomb before it fills the disk.
pub struct LimitedReader<R> {
    pub inner: R,
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
