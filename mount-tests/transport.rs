//! Our own FUSE transports end to end, through the transport probe (`shalefs::fuse::probe`):
//! FUSE-over-io_uring where the kernel has it, /dev/fuse always. The probe counts where each
//! request arrived, so a ring test fails if the kernel quietly served it over /dev/fuse.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Mutex;

use shalefs::fuse::probe::{Probe, Transport, Via};
use shalefs::fuse::uring::{EnableUring, kernel_has_uring, read_enable_uring};
use shalefs::fuse::wire::{FUSE_BATCH_FORGET, FUSE_FORGET, FUSE_GETATTR, FUSE_GETXATTR, FUSE_INIT, FUSE_LOOKUP};
use shalefs::sys;

use crate::util::{TestDir, is_mounted};

/// enable_uring is one switch for the whole machine: the tests that turn it take turns.
static PARAM: Mutex<()> = Mutex::new(());

const ROUNDS: u64 = 300;

/// `ROUNDS` lgetxattr and stat of the probe's file, each checked: ENODATA, an empty file.
fn exercise(probe: &Probe) {
    let file = probe.file();
    let cfile = CString::new(file.as_os_str().as_bytes()).unwrap();
    let mut buf = [0u8; 64];
    for _ in 0..ROUNDS {
        assert_eq!(sys::lgetxattr_once(&cfile, c"security.selinux", &mut buf), Err(sys::Errno::ENODATA));
        let m = std::fs::symlink_metadata(&file).expect("stat the probe's file");
        assert!(m.is_file() && m.len() == 0 && m.mode() & 0o777 == 0o644, "{m:?}");
    }
    // Each stat of `fresh` finds a new inode; the kernel forgets the one before.
    let mut inos = std::collections::BTreeSet::new();
    for _ in 0..FRESH_LOOKS {
        inos.insert(std::fs::symlink_metadata(probe.fresh()).expect("stat fresh").ino());
    }
    assert!(inos.len() as u64 >= FRESH_LOOKS, "a new inode at every look: {inos:?}");
}

const FRESH_LOOKS: u64 = 20;

fn forgets(probe_counts: &shalefs::fuse::probe::Counts, via: Via) -> u64 {
    probe_counts.get(via, FUSE_FORGET) + probe_counts.get(via, FUSE_BATCH_FORGET)
}

fn mount_and_exercise(mnt: &Path, transport: Transport) -> Probe {
    let probe = Probe::mount(mnt, transport, 1).unwrap_or_else(|e| panic!("mounting the {} probe: {e:#}", transport.name()));
    assert!(is_mounted(mnt));
    exercise(&probe);
    probe
}

/// The ring is used when the kernel has it: every GETXATTR, GETATTR and LOOKUP arrives on a
/// queue, INIT and the FORGETs on /dev/fuse; unmounting ends every queue cleanly and enable_uring is as it was.
#[test]
fn ring_transport_carries_every_request_when_the_kernel_has_it() {
    let _turn = PARAM.lock().unwrap_or_else(|p| p.into_inner());
    let dir = TestDir::new("ring");
    let mnt = dir.mkdir("mnt");
    if !kernel_has_uring() {
        // No FUSE over io_uring in this kernel: the same requests over /dev/fuse.
        let probe = mount_and_exercise(&mnt, Transport::Classic);
        assert!(probe.counts().get(Via::Dev, FUSE_GETXATTR) >= ROUNDS);
        probe.unmount().expect("unmount the classic probe");
        return;
    }
    let before = read_enable_uring().expect("read enable_uring");
    {
        let _on = EnableUring::set(true).expect("turn enable_uring on");
        let probe = mount_and_exercise(&mnt, Transport::Ring);
        // The kernel sends the FORGETs of the evicted inodes when it gets to them: wait for
        // them (a few ms; under load longer) before the counts are taken at unmount.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while forgets(probe.counts(), Via::Dev) == 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let counts = probe.unmount().expect("unmount the ring probe; every queue ends");
        assert!(!is_mounted(&mnt));
        assert_eq!(counts.get(Via::Dev, FUSE_INIT), 1);
        assert!(counts.get(Via::Ring, FUSE_GETXATTR) >= ROUNDS, "{:?}", counts.table());
        assert!(counts.get(Via::Ring, FUSE_GETATTR) >= ROUNDS, "{:?}", counts.table());
        assert_eq!(counts.get(Via::Dev, FUSE_GETXATTR), 0, "{:?}", counts.table());
        assert_eq!(counts.get(Via::Dev, FUSE_GETATTR), 0, "{:?}", counts.table());
        assert!(counts.get(Via::Ring, FUSE_LOOKUP) >= FRESH_LOOKS, "{:?}", counts.table());
        // FORGETs never come on the ring (fuse_io_uring_ops queue them on /dev/fuse).
        assert!(forgets(&counts, Via::Dev) > 0, "{:?}", counts.table());
        assert_eq!(forgets(&counts, Via::Ring), 0, "{:?}", counts.table());
    }
    assert_eq!(read_enable_uring().unwrap(), before, "enable_uring restored");
}

/// The fallback: with enable_uring off the kernel does not offer the ring at INIT, the ring
/// probe says so and leaves nothing mounted, and /dev/fuse serves the same requests.
#[test]
fn with_enable_uring_off_the_ring_is_refused_and_dev_fuse_serves() {
    let _turn = PARAM.lock().unwrap_or_else(|p| p.into_inner());
    let dir = TestDir::new("classic");
    let mnt = dir.mkdir("mnt");
    let _off = kernel_has_uring().then(|| EnableUring::set(false).expect("turn enable_uring off"));
    let refused = Probe::mount(&mnt, Transport::Ring, 1).err().expect("a ring without enable_uring");
    assert!(format!("{refused:#}").contains("FUSE_OVER_IO_URING"), "{refused:#}");
    assert!(!is_mounted(&mnt), "the refused probe was unmounted");

    let probe = mount_and_exercise(&mnt, Transport::Classic);
    let counts = probe.unmount().expect("unmount the classic probe");
    assert!(counts.get(Via::Dev, FUSE_GETXATTR) >= ROUNDS);
    assert!(counts.get(Via::Dev, FUSE_GETATTR) >= ROUNDS);
    assert_eq!(counts.get(Via::Ring, FUSE_GETXATTR) + counts.get(Via::Ring, FUSE_GETATTR), 0);
    assert!(forgets(&counts, Via::Dev) > 0, "{:?}", counts.table());
}
