//! `run -t`: the command gets a pseudo-terminal of the container's own devpts (made by the
//! helper, its master sent here); the parent puts the host terminal in raw mode
//! (restored on drop), copies host stdin to the pty and the pty to host stdout, and passes the
//! window size on at start and on every SIGWINCH.

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};

use nix::sys::termios::{self, SetArg, Termios};

use crate::sys::process as sysproc;

/// The host terminal's window size (rows, columns), from stdin or else stdout.
pub fn host_window() -> Option<(u16, u16)> {
    sysproc::window_size(std::io::stdin().as_fd()).or_else(|| sysproc::window_size(std::io::stdout().as_fd())).map(|w| (w.ws_row, w.ws_col))
}

/// The host terminal's window size, onto the pty.
pub fn resize(master: &OwnedFd) {
    if let Some(ws) = sysproc::window_size(std::io::stdin().as_fd()).or_else(|| sysproc::window_size(std::io::stdout().as_fd())) {
        let _ = sysproc::set_window_size(master.as_fd(), &ws);
    }
}

/// Raw mode on the host's stdin while it lives, when stdin is a terminal.
pub struct RawMode {
    saved: Option<Termios>,
}

impl RawMode {
    pub fn enter() -> RawMode {
        let stdin = std::io::stdin();
        let Ok(saved) = termios::tcgetattr(stdin.as_fd()) else { return RawMode { saved: None } };
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        let ok = termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw).is_ok();
        RawMode { saved: ok.then_some(saved) }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(t) = &self.saved {
            let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSADRAIN, t);
        }
    }
}

/// Copy host stdin to the pty (when `input`) and the pty to host stdout. The returned thread
/// ends when the pty has no writer left (EIO once the command and everything it started are
/// gone).
pub fn start_copying(master: &OwnedFd, input: bool) -> anyhow::Result<std::thread::JoinHandle<()>> {
    if input {
        let mut to_pty = std::fs::File::from(master.try_clone()?);
        std::thread::Builder::new().name("pty-in".into()).spawn(move || {
            let _ = std::io::copy(&mut std::io::stdin().lock(), &mut to_pty);
        })?;
    }
    let mut from_pty = std::fs::File::from(master.try_clone()?);
    Ok(std::thread::Builder::new().name("pty-out".into()).spawn(move || {
        let mut buf = [0u8; 16 << 10];
        let mut out = std::io::stdout();
        while let Ok(n) = from_pty.read(&mut buf) {
            if n == 0 || out.write_all(&buf[..n]).and_then(|_| out.flush()).is_err() {
                break;
            }
        }
    })?)
}
