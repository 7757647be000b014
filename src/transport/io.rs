//! Where archive formats write and read files: a tar stream or a directory on the way out
//! ([`Sink`]), an indexed tar file or a directory on the way in ([`Source`]). The formats see
//! only relative paths; this module keeps them inside: a tar is indexed without writing
//! anything, names with `..` are refused, symlinks between entries (docker's classic
//! archives use them for repeated layers) are resolved inside the archive, and a directory
//! is read with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};

use crate::sys;

/// Where save writes an archive's files.
pub trait Sink {
    /// One file of `size` bytes; `data` must yield exactly that many (and then its end).
    fn file(&mut self, path: &str, size: u64, data: &mut dyn Read) -> anyhow::Result<()>;
    fn finish(&mut self) -> anyhow::Result<()>;
}

/// A tar stream: ustar headers, owner 0, time 0 (the same images give the same bytes).
pub struct TarSink<W: Write> {
    out: W,
    dirs: BTreeSet<String>,
}

impl<W: Write> TarSink<W> {
    pub fn new(out: W) -> Self {
        TarSink { out, dirs: BTreeSet::new() }
    }

    pub fn into_inner(self) -> W {
        self.out
    }

    fn header(&mut self, path: &str, size: u64, dir: bool) -> anyhow::Result<()> {
        let mut h = tar::Header::new_ustar();
        h.set_path(path).with_context(|| format!("archive path {path}"))?;
        h.set_entry_type(if dir { tar::EntryType::Directory } else { tar::EntryType::Regular });
        h.set_mode(if dir { 0o755 } else { 0o644 });
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(size);
        h.set_cksum();
        self.out.write_all(h.as_bytes())?;
        Ok(())
    }
}

impl<W: Write> Sink for TarSink<W> {
    fn file(&mut self, path: &str, size: u64, data: &mut dyn Read) -> anyhow::Result<()> {
        let mut parent = String::new();
        for comp in path.split('/').collect::<Vec<_>>().iter().rev().skip(1).rev() {
            parent.push_str(comp);
            parent.push('/');
            if self.dirs.insert(parent.clone()) {
                let p = parent.clone();
                self.header(&p, 0, true)?;
            }
        }
        self.header(path, size, false)?;
        let n = io::copy(data, &mut self.out).with_context(|| format!("writing {path}"))?;
        if n != size {
            bail!("{path}: {n} bytes where {size} were expected");
        }
        let pad = (512 - size % 512) % 512;
        self.out.write_all(&vec![0u8; pad as usize])?;
        Ok(())
    }

    fn finish(&mut self) -> anyhow::Result<()> {
        self.out.write_all(&[0u8; 1024])?;
        self.out.flush()?;
        Ok(())
    }
}

/// A directory (an OCI layout on disk).
pub struct DirSink {
    root: PathBuf,
}

impl DirSink {
    pub fn new(root: &Path) -> Self {
        DirSink { root: root.to_path_buf() }
    }
}

impl Sink for DirSink {
    fn file(&mut self, path: &str, size: u64, data: &mut dyn Read) -> anyhow::Result<()> {
        let dest = self.root.join(path);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        let mut f = File::create(&dest).with_context(|| format!("creating {}", dest.display()))?;
        let n = io::copy(data, &mut f).with_context(|| format!("writing {}", dest.display()))?;
        if n != size {
            bail!("{path}: {n} bytes where {size} were expected");
        }
        Ok(())
    }

    fn finish(&mut self) -> anyhow::Result<()> {
        Ok(())
    }
}

/// Where load reads an archive's files from.
pub trait Source {
    fn exists(&self, path: &str) -> bool;
    /// A file's size, if present.
    fn size(&self, path: &str) -> anyhow::Result<Option<u64>>;
    fn open(&self, path: &str) -> anyhow::Result<Box<dyn Read + '_>>;
    /// A whole small file (manifests, configs), refused above `max` bytes.
    fn read_small(&self, path: &str, max: u64) -> anyhow::Result<Vec<u8>> {
        let size = self.size(path)?.ok_or_else(|| anyhow!("{path} is not in the archive"))?;
        if size > max {
            bail!("{path} has {size} bytes, more than the {max} a manifest or config may have");
        }
        let mut out = Vec::with_capacity(size as usize);
        self.open(path)?.take(max + 1).read_to_end(&mut out).with_context(|| format!("reading {path}"))?;
        Ok(out)
    }
}

/// A path named inside an archive, made relative and checked: no `..`, no NUL.
pub fn clean_path(raw: &str) -> anyhow::Result<String> {
    let mut out: Vec<&str> = Vec::new();
    for comp in raw.split('/') {
        match comp {
            "" | "." => {}
            ".." => bail!("archive path {raw:?} tries to escape the archive"),
            c if c.contains('\0') => bail!("archive path {raw:?} has a NUL byte"),
            c => out.push(c),
        }
    }
    if out.is_empty() {
        bail!("empty archive path {raw:?}");
    }
    Ok(out.join("/"))
}

enum TarEntry {
    File { offset: u64, size: u64 },
    Link(String),
}

/// An uncompressed tar file, indexed once (headers only, contents skipped by seeking).
pub struct TarSource {
    file: File,
    entries: HashMap<String, TarEntry>,
}

impl TarSource {
    pub fn open(file: File) -> anyhow::Result<TarSource> {
        let len = file.metadata()?.len();
        let mut entries = HashMap::new();
        let mut archive = tar::Archive::new(&file);
        for entry in archive.entries_with_seek().context("reading the archive")? {
            let entry = entry.context("reading the archive (is it truncated, or not a tar?)")?;
            let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let kind = entry.header().entry_type();
            if kind.is_dir() || kind.is_pax_global_extensions() {
                continue;
            }
            let path = clean_path(&raw)?;
            let item = match kind {
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    let (offset, size) = (entry.raw_file_position(), entry.size());
                    if offset + size > len {
                        bail!("the archive is truncated: {path} needs {size} bytes from byte {offset} of a {len}-byte file");
                    }
                    TarEntry::File { offset, size }
                }
                tar::EntryType::Symlink | tar::EntryType::Link => {
                    let target = entry.link_name_bytes().map(|t| String::from_utf8_lossy(&t).into_owned()).unwrap_or_default();
                    let base = if kind == tar::EntryType::Symlink && !target.starts_with('/') {
                        path.rsplit_once('/').map(|(d, _)| format!("{d}/")).unwrap_or_default()
                    } else {
                        String::new()
                    };
                    TarEntry::Link(resolve_dots(&format!("{base}{target}")).with_context(|| format!("link {path}"))?)
                }
                _ => continue,
            };
            entries.insert(path, item);
        }
        Ok(TarSource { file, entries })
    }

    fn find(&self, path: &str) -> anyhow::Result<Option<(u64, u64)>> {
        let mut p = clean_path(path)?;
        for _ in 0..16 {
            match self.entries.get(&p) {
                None => return Ok(None),
                Some(TarEntry::File { offset, size }) => return Ok(Some((*offset, *size))),
                Some(TarEntry::Link(t)) => p = t.clone(),
            }
        }
        bail!("{path}: too many links")
    }
}

/// `a/b/../c` → `a/c`, refusing to climb above the archive's root.
fn resolve_dots(path: &str) -> anyhow::Result<String> {
    let mut out: Vec<&str> = Vec::new();
    for comp in path.split('/') {
        match comp {
            "" | "." => {}
            ".." => {
                if out.pop().is_none() {
                    bail!("{path:?} points outside the archive");
                }
            }
            c => out.push(c),
        }
    }
    Ok(out.join("/"))
}

impl Source for TarSource {
    fn exists(&self, path: &str) -> bool {
        matches!(self.find(path), Ok(Some(_)))
    }

    fn size(&self, path: &str) -> anyhow::Result<Option<u64>> {
        Ok(self.find(path)?.map(|(_, s)| s))
    }

    fn open(&self, path: &str) -> anyhow::Result<Box<dyn Read + '_>> {
        let (offset, size) = self.find(path)?.ok_or_else(|| anyhow!("{path} is not in the archive"))?;
        let mut f = self.file.try_clone()?;
        f.seek(io::SeekFrom::Start(offset))?;
        Ok(Box::new(io::BufReader::with_capacity(256 << 10, f.take(size))))
    }
}

/// A directory (an OCI layout), every file opened beneath it without following symlinks.
pub struct DirSource {
    root: OwnedFd,
    shown: PathBuf,
}

impl DirSource {
    pub fn open(dir: &Path) -> anyhow::Result<DirSource> {
        let root = sys::open_dir(dir).map_err(|e| anyhow!("opening {}: {e}", dir.display()))?;
        Ok(DirSource { root, shown: dir.to_path_buf() })
    }

    fn open_file(&self, path: &str) -> anyhow::Result<Option<File>> {
        let c = sys::cstring(clean_path(path)?.as_bytes())?;
        match sys::open_beneath(self.root.as_fd(), &c, libc::O_RDONLY) {
            Ok(fd) => Ok(Some(File::from(fd))),
            Err(sys::Errno::ENOENT) => Ok(None),
            Err(sys::Errno::ELOOP | sys::Errno::EXDEV) => bail!("{path} in {} goes through a symlink: refusing it", self.shown.display()),
            Err(e) => bail!("opening {path} in {}: {e}", self.shown.display()),
        }
    }
}

impl Source for DirSource {
    fn exists(&self, path: &str) -> bool {
        matches!(self.open_file(path), Ok(Some(_)))
    }

    fn size(&self, path: &str) -> anyhow::Result<Option<u64>> {
        match self.open_file(path)? {
            Some(f) => {
                let md = f.metadata()?;
                if !md.is_file() {
                    bail!("{path} in {} is not a regular file", self.shown.display());
                }
                Ok(Some(md.len()))
            }
            None => Ok(None),
        }
    }

    fn open(&self, path: &str) -> anyhow::Result<Box<dyn Read + '_>> {
        let f = self.open_file(path)?.ok_or_else(|| anyhow!("{path} is not in {}", self.shown.display()))?;
        Ok(Box::new(io::BufReader::with_capacity(256 << 10, f)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_paths_stay_inside() {
        assert_eq!(clean_path("./blobs/sha256/ab").unwrap(), "blobs/sha256/ab");
        assert_eq!(clean_path("/manifest.json").unwrap(), "manifest.json");
        for bad in ["../x", "a/../../x", "", "./", "a\0b"] {
            assert!(clean_path(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(resolve_dots("abc/../def/layer.tar").unwrap(), "def/layer.tar");
        assert!(resolve_dots("abc/../../etc/passwd").is_err());
    }

    #[test]
    fn a_tar_source_follows_links_between_entries_and_notices_truncation() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_size(3);
        h.set_mode(0o644);
        b.append_data(&mut h, "a/layer.tar", &b"abc"[..]).unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, "b/layer.tar", "../a/layer.tar").unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_size(2000);
        h.set_mode(0o644);
        b.append_data(&mut h, "big", &vec![1u8; 2000][..]).unwrap();
        let bytes = b.into_inner().unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("t.tar");
        std::fs::write(&path, &bytes).unwrap();
        let src = TarSource::open(File::open(&path).unwrap()).unwrap();
        let mut got = String::new();
        src.open("b/layer.tar").unwrap().read_to_string(&mut got).unwrap();
        assert_eq!(got, "abc");
        std::fs::write(&path, &bytes[..1536 + 512]).unwrap();
        let err = TarSource::open(File::open(&path).unwrap()).err().unwrap();
        assert!(format!("{err:#}").contains("truncated"), "{err:#}");
    }
}
