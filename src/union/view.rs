//! A read-only merged view for walkers other than the kernel (diff, commit, export): a union of
//! layer directories, top first, with a container's upper read as the top layer in the format
//! shalefs writes it (overlayfs'), walked by inode number as the kernel would, so redirects,
//! opaque directories, whiteouts and metacopy files mean exactly what they mean in a mount.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::PathBuf;

use crate::sys::{Errno, SysResult};

use super::Union;
use super::ino::ROOT_INO;
use super::layer::{Formats, Layer, LayerStack, Role};

/// One object of the view: its merged inode number (equal for hard links) and attributes.
#[derive(Debug, Clone, Copy)]
pub struct Obj {
    pub ino: u64,
    pub stat: libc::stat,
}

impl Obj {
    pub fn kind(&self) -> u32 {
        self.stat.st_mode & libc::S_IFMT
    }

    pub fn is_dir(&self) -> bool {
        self.kind() == libc::S_IFDIR
    }
}

pub struct View {
    union: Union,
}

impl View {
    /// A view of `layers`, top first. Every layer is read-only here; an upper is given with
    /// its own formats (so a user's `.wh.x` in it is a file, as in the mount).
    pub fn open(layers: &[(PathBuf, Formats)]) -> anyhow::Result<View> {
        let layers = layers.iter().map(|(p, f)| Layer::open(p, Role::Lower, *f)).collect::<anyhow::Result<Vec<_>>>()?;
        let mut union = Union::new(LayerStack::new(None, layers)?).map_err(|e| anyhow::anyhow!("reading the root of the layers: {e}"))?;
        // A container made with metacopy=on has metacopy files in its upper; a view follows them.
        union.set_metacopy(true);
        Ok(View { union })
    }

    pub fn root(&self) -> SysResult<Obj> {
        Ok(Obj { ino: ROOT_INO, stat: self.union.getattr(ROOT_INO, None)? })
    }

    /// `name` in directory `dir`, or `None` when the merged view has no such name.
    pub fn lookup(&self, dir: u64, name: &[u8]) -> SysResult<Option<Obj>> {
        match self.union.lookup(dir, name) {
            Ok(e) => Ok(Some(Obj { ino: e.stat.st_ino, stat: e.stat })),
            Err(Errno::ENOENT) | Err(Errno::ENOTDIR) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The entries of a directory, sorted by name (byte order), so walks are reproducible.
    pub fn children(&self, dir: u64) -> SysResult<Vec<(Vec<u8>, Obj)>> {
        let node = self.union.node(dir)?;
        let mut out: Vec<(Vec<u8>, Obj)> = self
            .union
            .list_dir(&node)?
            .into_iter()
            .map(|l| {
                self.union.remember(dir, &l.found);
                (l.name, Obj { ino: l.found.stat.st_ino, stat: l.found.stat })
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    pub fn readlink(&self, ino: u64) -> SysResult<Vec<u8>> {
        self.union.readlink(ino)
    }

    /// The visible xattrs (the overlay's own never are), names and values.
    pub fn xattrs(&self, ino: u64) -> SysResult<Vec<(Vec<u8>, Vec<u8>)>> {
        let names = self.union.listxattr(ino)?;
        let mut out = Vec::new();
        for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
            match self.union.getxattr(ino, name) {
                Ok(v) => out.push((name.to_vec(), v)),
                Err(Errno::ENODATA) => {}
                Err(e) => return Err(e),
            }
        }
        out.sort();
        Ok(out)
    }

    /// The file holding a regular file's data (for a metacopy file, the layer below).
    pub fn open_data(&self, ino: u64) -> SysResult<File> {
        let fh = self.union.open(ino, libc::O_RDONLY)?;
        let file = self.union.open_file(fh).and_then(|open| {
            let fd = self.union.current_fd(&open)?;
            fd.as_fd().try_clone_to_owned().map(File::from).map_err(|e| Errno(e.raw_os_error().unwrap_or(libc::EIO)))
        });
        self.union.release(fh);
        file
    }
}
