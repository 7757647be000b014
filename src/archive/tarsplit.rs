//! The tar-split record of a layer: what it takes to rebuild, byte for byte, the tar a layer
//! was unpacked from, out of the unpacked files (docker and containers/storage keep the same
//! kind of record with tar-split). Written by the unpack pass itself ([`Recorder`]), read back
//! by [`Rebuild`], which the store wraps in a DiffID check.
//!
//! The record is one zstd stream:
//!
//! ```text
//! MAGIC
//! 'R' len bytes          raw bytes of the tar: headers, PAX and GNU long-name records,
//!                        padding, the end-of-archive blocks and anything after them
//! 'F' size pathlen path  the content of a regular file: `size` bytes of `path` in the layer
//! 'E' total              the end, and the tar's length
//! ```
//!
//! (numbers are LEB128). Only the contents of regular files the unpacker wrote are left out;
//! everything else — the contents of entries it skipped, whiteout files' bytes, sparse files —
//! stays raw. A file that a later entry of the same name replaces (or a whiteout removes) is
//! moved into a stash directory beside the layer instead of being deleted, so its bytes are
//! still there; `map` in the stash names, for each such file item (by number), where it went.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::ffi::CStr;
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use anyhow::{Context, anyhow};

use crate::sys::{self, Errno};

const MAGIC: &[u8] = b"shalefs-tarsplit\x01";
/// Raw bytes are flushed as an item once this many are pending.
const RAW_CHUNK: usize = 1 << 20;
const STASH_MAP: &str = "map";

/// Records one tar stream while the unpacker reads it. Cheap to clone: the reader wrapper and
/// the unpacker share one state.
#[derive(Clone)]
pub struct Recorder {
    state: Rc<RefCell<State>>,
}

struct State {
    /// Bytes of the tar read so far.
    pos: u64,
    /// While a file's content streams past: where it ends.
    elide_end: Option<u64>,
    pending: Vec<u8>,
    out: zstd::stream::write::Encoder<'static, BufWriter<File>>,
    /// File items so far.
    files: u64,
    /// Path in the layer → the file item whose content is there now.
    live: BTreeMap<Vec<u8>, u64>,
    /// File items whose file moved into the stash, and their path in it.
    moved: Vec<(u64, Vec<u8>)>,
    stash_dir: PathBuf,
    stash: Option<OwnedFd>,
    stashed: u64,
}

impl Recorder {
    /// Start a record at `path`; displaced files go to `stash_dir` (made when first needed).
    pub fn create(path: &Path, stash_dir: &Path) -> anyhow::Result<Recorder> {
        let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
        let mut out = zstd::stream::write::Encoder::new(BufWriter::with_capacity(64 << 10, file), 3)?;
        out.write_all(MAGIC)?;
        let state = State {
            pos: 0,
            elide_end: None,
            pending: Vec::with_capacity(16 << 10),
            out,
            files: 0,
            live: BTreeMap::new(),
            moved: Vec::new(),
            stash_dir: stash_dir.to_path_buf(),
            stash: None,
            stashed: 0,
        };
        Ok(Recorder { state: Rc::new(RefCell::new(state)) })
    }

    /// The next `size` bytes, from `start`, are the content of the regular file at `path` in
    /// the layer: refer to them instead of keeping them. False (kept raw) when the stream is
    /// not where the entry says its content starts.
    pub fn file_content(&self, start: u64, size: u64, path: &[u8]) -> io::Result<bool> {
        let mut s = self.state.borrow_mut();
        if size == 0 || s.pos != start || s.elide_end.is_some() {
            return Ok(false);
        }
        s.flush_raw()?;
        let item = s.files;
        s.files += 1;
        let out = &mut s.out;
        out.write_all(b"F")?;
        write_varint(out, size)?;
        write_varint(out, path.len() as u64)?;
        out.write_all(path)?;
        s.live.insert(path.to_vec(), item);
        s.elide_end = Some(start + size);
        Ok(true)
    }

    /// The unpacker is about to remove `name` (at `path` in the layer) to make room for a later
    /// entry. If it holds content the record refers to, move it into the stash instead and
    /// return true (the caller then has nothing to remove).
    pub fn displace(&self, parent: BorrowedFd<'_>, name: &CStr, path: &[u8]) -> anyhow::Result<bool> {
        let mut s = self.state.borrow_mut();
        let under: Vec<(Vec<u8>, u64)> = s
            .live
            .range(path.to_vec()..)
            .take_while(|(p, _)| p.starts_with(path))
            .filter(|(p, _)| p.len() == path.len() || p[path.len()] == b'/')
            .map(|(p, i)| (p.clone(), *i))
            .collect();
        if under.is_empty() {
            return Ok(false);
        }
        if s.stash.is_none() {
            std::fs::create_dir(&s.stash_dir).with_context(|| format!("creating {}", s.stash_dir.display()))?;
            s.stash = Some(sys::open_dir(&s.stash_dir).map_err(|e| anyhow!("opening {}: {e}", s.stash_dir.display()))?);
        }
        let slot = s.stashed.to_string();
        s.stashed += 1;
        let cslot = sys::cstring(slot.as_bytes())?;
        let stash = s.stash.as_ref().map(|f| f.as_fd()).ok_or_else(|| anyhow!("no stash"))?;
        sys::renameat2(parent, name, stash, &cslot, 0).map_err(|e| anyhow!("keeping a replaced entry's content: {e}"))?;
        for (p, item) in under {
            s.live.remove(&p);
            let mut rel = slot.as_bytes().to_vec();
            rel.extend_from_slice(&p[path.len()..]);
            s.moved.push((item, rel));
        }
        Ok(true)
    }

    /// Close the record. Returns its compressed size.
    pub fn finish(self) -> anyhow::Result<u64> {
        let state = Rc::try_unwrap(self.state).map_err(|_| anyhow!("tar record still in use"))?;
        let mut s = state.into_inner();
        s.flush_raw()?;
        s.out.write_all(b"E")?;
        let total = s.pos;
        write_varint(&mut s.out, total)?;
        let mut file = s.out.finish()?.into_inner().map_err(|e| e.into_error())?;
        file.flush()?;
        let size = file.metadata()?.len();
        if !s.moved.is_empty() {
            let mut map = Vec::new();
            for (item, rel) in &s.moved {
                write_varint(&mut map, *item)?;
                write_varint(&mut map, rel.len() as u64)?;
                map.extend_from_slice(rel);
            }
            std::fs::write(s.stash_dir.join(STASH_MAP), map).context("writing the stash map")?;
        }
        Ok(size)
    }
}

impl State {
    fn consume(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            match self.elide_end {
                Some(end) => {
                    let k = (end - self.pos).min(data.len() as u64) as usize;
                    self.pos += k as u64;
                    data = &data[k..];
                    if self.pos == end {
                        self.elide_end = None;
                    }
                }
                None => {
                    self.pending.extend_from_slice(data);
                    self.pos += data.len() as u64;
                    data = &[];
                    if self.pending.len() >= RAW_CHUNK {
                        self.flush_raw()?;
                    }
                }
            }
        }
        Ok(())
    }

    fn flush_raw(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.out.write_all(b"R")?;
        write_varint(&mut self.out, self.pending.len() as u64)?;
        self.out.write_all(&self.pending)?;
        self.pending.clear();
        Ok(())
    }
}

/// The tar stream, recorded (when there is a recorder) as it is read.
pub struct RecordingReader<R> {
    inner: R,
    recorder: Option<Recorder>,
}

impl<R> RecordingReader<R> {
    pub fn new(inner: R, recorder: Option<Recorder>) -> Self {
        RecordingReader { inner, recorder }
    }

    pub fn into_inner(self) -> R {
        self.inner
    }
}

impl<R: Read> Read for RecordingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(r) = &self.recorder {
            r.state.borrow_mut().consume(&buf[..n])?;
        }
        Ok(n)
    }
}

/// The original tar, streamed from a record and the layer's files. It checks sizes and the
/// total length; the caller checks the digest.
pub struct Rebuild {
    items: BufReader<zstd::stream::read::Decoder<'static, BufReader<File>>>,
    root: OwnedFd,
    stash: Option<OwnedFd>,
    moved: HashMap<u64, Vec<u8>>,
    current: Current,
    files: u64,
    pos: u64,
}

enum Current {
    Between,
    Raw(u64),
    File { file: io::Take<File>, path: Vec<u8>, left: u64 },
    Done,
}

impl Rebuild {
    pub fn open(record: &Path, layer_dir: &Path, stash_dir: &Path) -> anyhow::Result<Rebuild> {
        let file = File::open(record).with_context(|| format!("opening {}", record.display()))?;
        let mut items = BufReader::new(zstd::stream::read::Decoder::new(file)?);
        let mut magic = vec![0u8; MAGIC.len()];
        items.read_exact(&mut magic).context("reading the tar record")?;
        if magic != MAGIC {
            anyhow::bail!("{} is not a shalefs tar record", record.display());
        }
        let root = sys::open_dir(layer_dir).map_err(|e| anyhow!("opening {}: {e}", layer_dir.display()))?;
        let (stash, moved) = match std::fs::read(stash_dir.join(STASH_MAP)) {
            Ok(map) => (Some(sys::open_dir(stash_dir).map_err(|e| anyhow!("opening {}: {e}", stash_dir.display()))?), parse_map(&map)?),
            Err(e) if e.kind() == io::ErrorKind::NotFound => (None, HashMap::new()),
            Err(e) => return Err(anyhow!("reading {}: {e}", stash_dir.display())),
        };
        Ok(Rebuild { items, root, stash, moved, current: Current::Between, files: 0, pos: 0 })
    }

    fn next_item(&mut self) -> io::Result<()> {
        let mut tag = [0u8; 1];
        self.items.read_exact(&mut tag).map_err(|e| bad_record(&format!("cut short: {e}")))?;
        self.current = match tag[0] {
            b'R' => Current::Raw(read_varint(&mut self.items)?),
            b'F' => {
                let size = read_varint(&mut self.items)?;
                let len = read_varint(&mut self.items)?;
                if len > 1 << 20 {
                    return Err(bad_record("a path longer than 1 MiB"));
                }
                let mut path = vec![0u8; len as usize];
                self.items.read_exact(&mut path)?;
                let item = self.files;
                self.files += 1;
                let file = self.open_file(item, &path, size)?;
                Current::File { file: file.take(size), path, left: size }
            }
            b'E' => {
                let total = read_varint(&mut self.items)?;
                if total != self.pos {
                    return Err(bad_record(&format!("it gives {total} bytes for a tar of {}", self.pos)));
                }
                Current::Done
            }
            t => return Err(bad_record(&format!("unknown item {t:#x}"))),
        };
        Ok(())
    }

    /// Open a file the record refers to, checking it is still a regular file of that size.
    fn open_file(&self, item: u64, path: &[u8], size: u64) -> io::Result<File> {
        let (dir, rel) = match (self.moved.get(&item), &self.stash) {
            (Some(rel), Some(stash)) => (stash.as_fd(), rel.as_slice()),
            _ => (self.root.as_fd(), path),
        };
        let shown = String::from_utf8_lossy(path);
        let c = sys::cstring(rel).map_err(|_| bad_record("a path with a NUL byte"))?;
        let fd = sys::open_beneath(dir, &c, libc::O_RDONLY)
            .map_err(|e: Errno| io::Error::other(format!("{shown:?} cannot be opened any more: {e}")))?;
        let st = sys::fstat(fd.as_fd()).map_err(|e| io::Error::other(format!("{shown:?}: {e}")))?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG || st.st_size as u64 != size {
            return Err(io::Error::other(format!("{shown:?} changed: it had {size} bytes and now has {}", st.st_size)));
        }
        Ok(File::from(fd))
    }
}

impl Read for Rebuild {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let n = match &mut self.current {
                Current::Done => return Ok(0),
                Current::Between => {
                    self.next_item()?;
                    continue;
                }
                Current::Raw(left) => {
                    if *left == 0 {
                        self.current = Current::Between;
                        continue;
                    }
                    let want = (*left).min(buf.len() as u64) as usize;
                    let n = self.items.read(&mut buf[..want])?;
                    if n == 0 {
                        return Err(bad_record("raw bytes cut short"));
                    }
                    *left -= n as u64;
                    n
                }
                Current::File { file, path, left } => {
                    if *left == 0 {
                        self.current = Current::Between;
                        continue;
                    }
                    let n = file.read(buf)?;
                    if n == 0 {
                        return Err(io::Error::other(format!("{:?} changed: it is shorter than it was", String::from_utf8_lossy(path))));
                    }
                    *left -= n as u64;
                    n
                }
            };
            self.pos += n as u64;
            return Ok(n);
        }
    }
}

fn parse_map(mut map: &[u8]) -> anyhow::Result<HashMap<u64, Vec<u8>>> {
    let mut out = HashMap::new();
    while !map.is_empty() {
        let item = read_varint(&mut map)?;
        let len = read_varint(&mut map)? as usize;
        if len > map.len() {
            anyhow::bail!("the stash map is cut short");
        }
        out.insert(item, map[..len].to_vec());
        map = &map[len..];
    }
    Ok(out)
}

fn bad_record(why: &str) -> io::Error {
    io::Error::other(format!("the layer's tar record is damaged: {why}"))
}

fn write_varint(w: &mut impl Write, mut v: u64) -> io::Result<()> {
    let mut buf = [0u8; 10];
    let mut i = 0;
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            buf[i] = b;
            i += 1;
            break;
        }
        buf[i] = b | 0x80;
        i += 1;
    }
    w.write_all(&buf[..i])
}

fn read_varint(r: &mut impl BufRead) -> io::Result<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let mut b = [0u8; 1];
        r.read_exact(&mut b).map_err(|_| bad_record("a number cut short"))?;
        v |= u64::from(b[0] & 0x7f) << shift;
        if b[0] & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(bad_record("a number too long"))
}
