//! Pausing a mount's writes, so `commit --pause` reads one point-in-time state of an upper
//! while the mount stays live: the daemon's changing requests each hold a [`Gate`] shared,
//! and a freeze holds it exclusive. Writes that arrive meanwhile wait and then go on; reads
//! are never held.
//!
//! A freeze is asked for over a unix socket in the mount's work directory
//! (`WORK/control.sock`, mode 0600): the client sends `freeze`, the daemon answers `frozen`
//! once every change in flight has finished, and thaws when the client sends `thaw` or its
//! connection closes — so a commit that dies never leaves the mount frozen.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, RwLockReadGuard};

use anyhow::{Context, anyhow, bail};

/// Held shared by each change to the mount, exclusive by a freeze.
#[derive(Debug, Default, Clone)]
pub struct Gate {
    lock: Arc<RwLock<()>>,
}

impl Gate {
    /// Enter for one changing request; waits while the mount is frozen.
    pub fn enter(&self) -> RwLockReadGuard<'_, ()> {
        self.lock.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a commit holds the mount frozen now.
    pub fn is_frozen(&self) -> bool {
        matches!(self.lock.try_read(), Err(std::sync::TryLockError::WouldBlock))
    }
}

/// The control socket of a mount whose upper and work directories are these.
pub fn socket_path(work: &Path) -> PathBuf {
    work.join("control.sock")
}

/// A socket address is at most 108 bytes, a store path may be longer: the socket is named
/// through its directory's fd (`/proc/self/fd/N/NAME`), which the kernel resolves as any path.
fn short_path(dir: &std::fs::File, name: &std::ffi::OsStr) -> PathBuf {
    use std::os::fd::AsRawFd;
    Path::new(&format!("/proc/self/fd/{}", dir.as_raw_fd())).join(name)
}

fn open_parent(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::File::open(path.parent().unwrap_or(Path::new(".")))
}

/// Listen on `path` for freeze requests, on a thread of its own, for the life of the daemon.
pub fn serve(path: &Path, gate: Gate) -> anyhow::Result<()> {
    let _ = std::fs::remove_file(path);
    // Bound under a temporary name, made private, then renamed: never reachable by others.
    let tmp = path.with_extension(format!("sock.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let dir = open_parent(path).with_context(|| format!("opening the directory of {}", path.display()))?;
    let listener = UnixListener::bind(short_path(&dir, tmp.file_name().unwrap_or_default())).with_context(|| format!("binding {}", tmp.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).with_context(|| format!("chmod {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("placing {}", path.display()))?;
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let gate = gate.clone();
                let _ = std::thread::Builder::new().name("freeze".into()).spawn(move || handle(conn, &gate));
            }
        })
        .context("starting the control thread")?;
    Ok(())
}

fn handle(conn: UnixStream, gate: &Gate) {
    let Ok(mut out) = conn.try_clone() else { return };
    let mut lines = BufReader::new(conn).lines();
    match lines.next() {
        Some(Ok(cmd)) if cmd.trim() == "freeze" => {
            let frozen = gate.lock.write().unwrap_or_else(|p| p.into_inner());
            tracing::info!("frozen for a commit");
            if out.write_all(b"frozen\n").is_err() {
                return;
            }
            // Held until the client says thaw or goes away.
            for line in lines {
                match line {
                    Ok(l) if l.trim() == "thaw" => break,
                    Ok(_) => continue,
                    Err(_) => break,
                }
            }
            drop(frozen);
            tracing::info!("thawed");
            let _ = out.write_all(b"thawed\n");
        }
        _ => {
            let _ = out.write_all(b"error: unknown request\n");
        }
    }
}

/// A mount held frozen until this is dropped (or [`Frozen::thaw`]).
pub struct Frozen {
    conn: Option<UnixStream>,
}

impl Frozen {
    pub fn thaw(mut self) -> anyhow::Result<()> {
        self.thaw_inner()
    }

    fn thaw_inner(&mut self) -> anyhow::Result<()> {
        let Some(mut conn) = self.conn.take() else { return Ok(()) };
        conn.write_all(b"thaw\n").context("thawing the mount")?;
        let mut line = String::new();
        BufReader::new(conn).read_line(&mut line).context("thawing the mount")?;
        Ok(())
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = self.thaw_inner();
    }
}

/// Freeze the mount whose work directory is `work`. `None` when it is not mounted (no
/// daemon answers), so there is nothing to pause.
pub fn freeze(work: &Path) -> anyhow::Result<Option<Frozen>> {
    let path = socket_path(work);
    let dir = match open_parent(&path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(anyhow!("opening {}: {e}", work.display())),
    };
    let mut conn = match UnixStream::connect(short_path(&dir, path.file_name().unwrap_or_default())) {
        Ok(c) => c,
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ECONNREFUSED)) => return Ok(None),
        Err(e) => return Err(anyhow!("connecting to the mount daemon at {}: {e}", path.display())),
    };
    conn.write_all(b"freeze\n").context("asking the mount daemon to pause")?;
    let mut line = String::new();
    BufReader::new(conn.try_clone()?).read_line(&mut line).context("waiting for the mount daemon to pause")?;
    if line.trim() != "frozen" {
        bail!("the mount daemon did not pause: {:?}", line.trim());
    }
    Ok(Some(Frozen { conn: Some(conn) }))
}
