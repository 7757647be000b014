//! Setting up and running a FUSE session: mount options, worker threads, and a clean unmount on
//! SIGTERM/SIGINT.

use std::path::{Path, PathBuf};

use anyhow::Context;
use fuser::{Config, MountOption, Session, SessionACL};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use tracing::{info, warn};

use super::ShaleFs;
use crate::sys;

/// Mount flags a user may ask for with `-o`, as for any mount.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MountFlags {
    pub read_only: bool,
    pub nodev: bool,
    pub nosuid: bool,
    pub noexec: bool,
    pub noatime: bool,
}

#[derive(Debug, Clone)]
pub struct SessionOptions {
    pub mountpoint: PathBuf,
    pub fsname: String,
    pub threads: usize,
    pub flags: MountFlags,
}

/// Threads reading /dev/fuse: one per CPU, up to 4. Measured on the 2-CPU VM (a getxattr loop,
/// `scripts/bench-transport` style, quiet machine): 1 reader 76–81 µs per request (the reader
/// always woken on the other CPU), 2 readers 17–18 µs, 3 or 4 readers 20–28 µs.
pub fn session_threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(1, 4)
}

/// Default threads for slow requests: enough that one (a large copy-up) does not stall others.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(2, 8) * 2
}

fn mount_options(opts: &SessionOptions) -> (Vec<MountOption>, SessionACL) {
    let mut o = vec![
        MountOption::FSName(opts.fsname.clone()),
        MountOption::Subtype("shalefs".into()),
        // The kernel checks permissions from the attributes we report, as on any local
        // filesystem; we need not repeat the check.
        MountOption::DefaultPermissions,
    ];
    let f = &opts.flags;
    o.push(if f.read_only { MountOption::RO } else { MountOption::RW });
    o.push(if f.noexec { MountOption::NoExec } else { MountOption::Exec });
    if f.noatime {
        o.push(MountOption::NoAtime);
    }
    // Mounted by root, the tree behaves like a root filesystem: every user may use it, set-uid
    // bits and device nodes work (so `chroot` into an image rootfs does).
    let acl = if sys::geteuid() == 0 {
        o.push(if f.nodev { MountOption::NoDev } else { MountOption::Dev });
        o.push(if f.nosuid { MountOption::NoSuid } else { MountOption::Suid });
        SessionACL::All
    } else {
        o.push(MountOption::NoDev);
        o.push(MountOption::NoSuid);
        SessionACL::Owner
    };
    (o, acl)
}

/// Mount `fs` and complete the FUSE handshake: when this returns, the mount is live.
pub fn mount(mut fs: ShaleFs, opts: &SessionOptions) -> anyhow::Result<Mounted> {
    let (end_tx, ended) = std::sync::mpsc::channel();
    fs.session_end = Some(end_tx);
    let (mount_options, acl) = mount_options(opts);
    let mut config = Config::default();
    config.mount_options = mount_options;
    config.acl = acl;
    // Quick requests are answered by the threads that read them, one per CPU (up to 4); slow
    // ones go to `opts.threads` others (see [`super::offload`]).
    config.n_threads = Some(session_threads());
    fs.slow = super::offload::Pool::start(opts.threads);
    let session = Session::new(fs, &opts.mountpoint, &config).with_context(|| format!("mounting on {}", opts.mountpoint.display()))?;
    Ok(Mounted { session, ended })
}

/// A live mount, and what tells when its session has ended.
pub struct Mounted {
    session: Session<ShaleFs>,
    ended: std::sync::mpsc::Receiver<()>,
}

impl Mounted {
    /// Serve from fuser's background thread instead of [`serve`], for a caller that unmounts
    /// the mount itself (`run`, with `umount_and_join`).
    pub fn spawn(self) -> std::io::Result<fuser::BackgroundSession> {
        self.session.spawn()
    }
}

/// SIGTERM and SIGINT, caught from before the mount is made: one that arrives before [`serve`]
/// starts waits for it (it would otherwise kill a daemon whose mount is live, leaving it dead).
pub struct StopSignals(Signals);

pub fn catch_stop_signals() -> anyhow::Result<StopSignals> {
    Signals::new([SIGTERM, SIGINT]).map(StopSignals).context("installing signal handlers")
}

/// Serve requests until the filesystem is unmounted: by `umount`, `shalefs umount`, or a
/// SIGTERM/SIGINT to this process, which unmounts (lazily if the mount is busy) and so ends the
/// session cleanly.
///
/// fuser 0.18 would unmount the mountpoint by path once its session ends (its check whether the
/// mount is still there reads the device's POLLERR the wrong way round), and by then another
/// mount may sit on that path (`umount M; shalefs mount … M` while this daemon is still closing):
/// it would take that one down. So the session runs in fuser's background thread and its mount
/// handle is never dropped: the kernel ended the session, there is nothing left to unmount.
pub fn serve(mounted: Mounted, mountpoint: &Path, stop: StopSignals) -> anyhow::Result<()> {
    let Mounted { session, ended } = mounted;
    let StopSignals(mut signals) = stop;
    let handle = signals.handle();
    let mp = mountpoint.to_path_buf();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Some(sig) = signals.forever().next() {
                info!(signal = sig, "unmounting {} on signal", mp.display());
                if let Err(e) = sys::umount(&mp, false) {
                    warn!("unmount of {} failed ({e}); detaching it lazily", mp.display());
                    if let Err(e) = sys::umount(&mp, true) {
                        warn!("lazy unmount of {} failed: {e}", mp.display());
                    }
                }
            }
        })
        .context("starting the signal thread")?;
    let mut background = session.spawn().with_context(|| format!("serving {}", mountpoint.display()))?;
    // Nothing is ever sent: the sender goes with the filesystem, when the session is over.
    let _ = ended.recv();
    let finished = std::mem::replace(&mut background.guard, std::thread::spawn(|| Ok(())));
    std::mem::forget(background);
    let result = match finished.join() {
        Ok(r) => r.with_context(|| format!("serving {}", mountpoint.display())),
        Err(_) => Err(anyhow::anyhow!("serving {}: the session thread panicked", mountpoint.display())),
    };
    handle.close();
    info!("{} unmounted", mountpoint.display());
    result
}
