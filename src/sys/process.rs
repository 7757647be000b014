//! The unsafe corners of `run`'s process set-up: the pre-exec hook of the helper (parent-death
//! signal, the control socket on a fixed fd), taking that fd over in the helper, and terminal
//! ioctls. The rest of `run` uses nix's safe wrappers.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};

/// The fd the helper finds its control socket on.
pub const CONTROL_FD: RawFd = 3;

/// Spawn `cmd` with SIGKILL as its parent-death signal (so it dies with this thread even on
/// `kill -9` of ours) and `control` as its fd [`CONTROL_FD`].
pub fn spawn_helper(cmd: &mut Command, control: OwnedFd) -> io::Result<Child> {
    let raw = control.as_raw_fd();
    // SAFETY: the hook runs between fork and exec and calls only async-signal-safe system
    // calls (prctl, dup2, fcntl) on integers captured by value; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            if raw == CONTROL_FD {
                if libc::fcntl(raw, libc::F_SETFD, 0) < 0 {
                    return Err(io::Error::last_os_error());
                }
            } else if libc::dup2(raw, CONTROL_FD) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn();
    drop(control);
    child
}

/// In the helper: take the control socket over (close-on-exec, so a successful exec closes
/// it and the parent reads end-of-file). None when the fd is not open.
pub fn take_control_fd() -> Option<OwnedFd> {
    // SAFETY: fcntl on an integer fd has no memory-safety preconditions.
    if unsafe { libc::fcntl(CONTROL_FD, libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
        return None;
    }
    // SAFETY: the fd is open (fcntl succeeded) and was handed to this process to own.
    Some(unsafe { OwnedFd::from_raw_fd(CONTROL_FD) })
}

/// Make the terminal on `fd` the controlling terminal of this (new) session.
pub fn set_controlling_terminal(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: TIOCSCTTY takes an integer argument.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSCTTY, 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The window size of the terminal on `fd`, if it is one.
pub fn window_size(fd: BorrowedFd<'_>) -> Option<libc::winsize> {
    let mut ws = libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: `ws` is a valid out pointer for one winsize.
    (unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) } == 0).then_some(ws)
}

pub fn set_window_size(fd: BorrowedFd<'_>, ws: &libc::winsize) -> io::Result<()> {
    // SAFETY: `ws` points to one winsize, read by the kernel.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, ws) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Give SIGPIPE its default action back before exec: the Rust runtime ignores it, and an
/// ignored signal stays ignored across exec (`yes | head` must end `yes`).
pub fn default_sigpipe() {
    // SAFETY: setting a signal's disposition to SIG_DFL installs no handler.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Send `fd` over a unix socket (SCM_RIGHTS) with one byte of data, `tag`.
pub fn send_fd(socket: BorrowedFd<'_>, fd: BorrowedFd<'_>, tag: u8) -> io::Result<()> {
    use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
    let data = [tag];
    let iov = [io::IoSlice::new(&data)];
    let fds = [fd.as_raw_fd()];
    sendmsg::<()>(socket.as_raw_fd(), &iov, &[ControlMessage::ScmRights(&fds)], MsgFlags::empty(), None)?;
    Ok(())
}

/// Read from a unix socket until end-of-file: the bytes, and the fds that came with them.
pub fn recv_all_with_fds(socket: BorrowedFd<'_>) -> io::Result<(Vec<u8>, Vec<OwnedFd>)> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    let mut bytes = Vec::new();
    let mut fds = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let mut space = nix::cmsg_space!([RawFd; 4]);
        let mut iov = [io::IoSliceMut::new(&mut buf)];
        let msg = match recvmsg::<()>(socket.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC) {
            Ok(m) => m,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        };
        for cmsg in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(received) = cmsg {
                // SAFETY: the kernel just installed these fds in this process for us to own.
                fds.extend(received.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
            }
        }
        let n = msg.bytes;
        if n == 0 {
            return Ok((bytes, fds));
        }
        bytes.extend_from_slice(&buf[..n]);
    }
}
