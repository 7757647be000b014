//! Build layer directories from a description, in a chosen whiteout encoding, with ordinary
//! tools (std::fs, `mknod`, `setfattr`) — never with shalefs' own code.

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::run_ok;

/// How whiteouts and opaque directories are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// Character device 0/0 and `trusted.overlay.opaque=y` (kernel overlayfs' own).
    Overlay,
    /// `.wh.NAME` and `.wh..wh..opq` files (OCI image layers, podman's storage).
    Oci,
    /// Zero-size files with `<ns>.overlay.whiteout` in a directory marked `<ns>.overlay.opaque=x`,
    /// and `<ns>.overlay.opaque=y`; `ns` is `trusted` or `user`.
    Xattr(&'static str),
}

/// One step of building a layer; paths are relative to the layer root, as bytes.
#[derive(Debug, Clone)]
pub enum Op {
    Dir(Vec<u8>),
    File(Vec<u8>, Vec<u8>),
    Chmod(Vec<u8>, u32),
    Chown(Vec<u8>, u32, u32),
    Symlink(Vec<u8>, Vec<u8>),
    HardLink(Vec<u8>, Vec<u8>),
    Xattr(Vec<u8>, String, Vec<u8>),
    Fifo(Vec<u8>),
    CharDev(Vec<u8>, u32, u32),
    Whiteout(Vec<u8>),
    Opaque(Vec<u8>),
}

#[derive(Debug, Clone, Default)]
pub struct LayerSpec {
    pub ops: Vec<Op>,
}

fn b(s: impl AsRef<[u8]>) -> Vec<u8> {
    s.as_ref().to_vec()
}

impl LayerSpec {
    pub fn new() -> LayerSpec {
        LayerSpec::default()
    }
    pub fn dir(mut self, p: impl AsRef<[u8]>) -> Self {
        self.ops.push(Op::Dir(b(p)));
        self
    }
    pub fn file(mut self, p: impl AsRef<[u8]>, content: impl AsRef<[u8]>) -> Self {
        self.ops.push(Op::File(b(p), b(content)));
        self
    }
    pub fn chmod(mut self, p: impl AsRef<[u8]>, mode: u32) -> Self {
        self.ops.push(Op::Chmod(b(p), mode));
        self
    }
    pub fn chown(mut self, p: impl AsRef<[u8]>, uid: u32, gid: u32) -> Self {
        self.ops.push(Op::Chown(b(p), uid, gid));
        self
    }
    pub fn symlink(mut self, p: impl AsRef<[u8]>, target: impl AsRef<[u8]>) -> Self {
        self.ops.push(Op::Symlink(b(p), b(target)));
        self
    }
    pub fn hardlink(mut self, existing: impl AsRef<[u8]>, new: impl AsRef<[u8]>) -> Self {
        self.ops.push(Op::HardLink(b(existing), b(new)));
        self
    }
    pub fn xattr(mut self, p: impl AsRef<[u8]>, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.ops.push(Op::Xattr(b(p), name.to_string(), b(value)));
        self
    }
    pub fn fifo(mut self, p: impl AsRef<[u8]>) -> Self {
        self.ops.push(Op::Fifo(b(p)));
        self
    }
    pub fn chardev(mut self, p: impl AsRef<[u8]>, major: u32, minor: u32) -> Self {
        self.ops.push(Op::CharDev(b(p), major, minor));
        self
    }
    pub fn whiteout(mut self, p: impl AsRef<[u8]>) -> Self {
        self.ops.push(Op::Whiteout(b(p)));
        self
    }
    pub fn opaque(mut self, p: impl AsRef<[u8]>) -> Self {
        self.ops.push(Op::Opaque(b(p)));
        self
    }

    /// Write the layer into `root` (created if missing) in `enc`.
    pub fn build(&self, root: &Path, enc: Encoding) {
        std::fs::create_dir_all(root).expect("layer root");
        for op in &self.ops {
            apply(root, op, enc);
        }
    }
}

fn at(root: &Path, rel: &[u8]) -> PathBuf {
    root.join(std::ffi::OsStr::from_bytes(rel))
}

fn parent_of(p: &Path) -> &Path {
    p.parent().expect("a path below the layer root")
}

fn setfattr(path: &Path, name: &str, value: &[u8]) {
    let mut cmd = Command::new("setfattr");
    cmd.arg("-h").arg("-n").arg(name);
    // `0s` + base64 carries any bytes through setfattr unchanged; no -v sets an empty value.
    if !value.is_empty() {
        cmd.arg("-v").arg(format!("0s{}", base64(value)));
    }
    run_ok(cmd.arg(path));
}

fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |acc, (i, &x)| acc | (x as u32) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn mknod(path: &Path, kind: &str, major: u32, minor: u32) {
    run_ok(Command::new("mknod").arg(path).arg(kind).arg(major.to_string()).arg(minor.to_string()));
}

fn make_parent(root: &Path, rel: &[u8]) {
    std::fs::create_dir_all(parent_of(&at(root, rel))).expect("mkdir parent");
}

fn apply(root: &Path, op: &Op, enc: Encoding) {
    match op {
        Op::Fifo(p) | Op::CharDev(p, ..) | Op::Symlink(p, _) | Op::File(p, _) => make_parent(root, p),
        Op::HardLink(_, p) => make_parent(root, p),
        _ => {}
    }
    match op {
        Op::Dir(p) => std::fs::create_dir_all(at(root, p)).expect("mkdir"),
        Op::File(p, content) => std::fs::write(at(root, p), content).expect("write file"),
        Op::Chmod(p, mode) => {
            std::fs::set_permissions(at(root, p), std::fs::Permissions::from_mode(*mode)).expect("chmod")
        }
        Op::Chown(p, uid, gid) => std::os::unix::fs::lchown(at(root, p), Some(*uid), Some(*gid)).expect("chown"),
        Op::Symlink(p, target) => {
            std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(target), at(root, p)).expect("symlink")
        }
        Op::HardLink(existing, new) => std::fs::hard_link(at(root, existing), at(root, new)).expect("link"),
        Op::Xattr(p, name, value) => setfattr(&at(root, p), name, value),
        Op::Fifo(p) => {
            run_ok(Command::new("mkfifo").arg(at(root, p)));
        }
        Op::CharDev(p, major, minor) => mknod(&at(root, p), "c", *major, *minor),
        Op::Whiteout(p) => write_whiteout(root, p, enc),
        Op::Opaque(p) => write_opaque(root, p, enc),
    }
}

fn write_whiteout(root: &Path, rel: &[u8], enc: Encoding) {
    let path = at(root, rel);
    let parent = parent_of(&path).to_path_buf();
    std::fs::create_dir_all(&parent).expect("mkdir parent");
    match enc {
        Encoding::Overlay => mknod(&path, "c", 0, 0),
        Encoding::Oci => {
            let name = path.file_name().expect("a name").as_bytes();
            let wh = parent.join(std::ffi::OsStr::from_bytes(&[b".wh.".as_slice(), name].concat()));
            std::fs::write(wh, b"").expect("write .wh. file");
        }
        Encoding::Xattr(ns) => {
            std::fs::write(&path, b"").expect("write whiteout file");
            setfattr(&path, &format!("{ns}.overlay.whiteout"), b"");
            // Only an opaque=x directory is searched for xattr whiteouts; do not weaken a `y`.
            let opaque = format!("{ns}.overlay.opaque");
            if xattr_value(&parent, &opaque).as_deref() != Some(b"y".as_slice()) {
                setfattr(&parent, &opaque, b"x");
            }
        }
    }
}

fn write_opaque(root: &Path, rel: &[u8], enc: Encoding) {
    let path = at(root, rel);
    std::fs::create_dir_all(&path).expect("mkdir");
    match enc {
        Encoding::Overlay => setfattr(&path, "trusted.overlay.opaque", b"y"),
        Encoding::Oci => std::fs::write(path.join(".wh..wh..opq"), b"").expect("write opaque marker"),
        Encoding::Xattr(ns) => setfattr(&path, &format!("{ns}.overlay.opaque"), b"y"),
    }
}

fn xattr_value(path: &Path, name: &str) -> Option<Vec<u8>> {
    super::tree::xattrs(path).remove(name.as_bytes())
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_matches_rfc4648() {
        assert_eq!(super::base64(b""), "");
        assert_eq!(super::base64(b"f"), "Zg==");
        assert_eq!(super::base64(b"fo"), "Zm8=");
        assert_eq!(super::base64(b"foobar"), "Zm9vYmFy");
    }
}
