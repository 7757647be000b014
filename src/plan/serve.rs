//! Making a plan's mount live and serving it until it is unmounted.

use crate::fuse::ShaleFs;
use crate::fuse::session::{self, Mounted, SessionOptions};
use crate::sys;

use super::MountPlan;

/// How long the kernel may cache entries and attributes. Lowers never change under a mount, and
/// every change to the upper goes through this daemon, whose replies carry the new attributes
/// (and the kernel invalidates what a change makes stale), so nothing expires by time: a day.
fn cache_ttl(_plan: &MountPlan) -> std::time::Duration {
    std::time::Duration::from_secs(86400)
}

/// Build the union and mount it: when this returns, the mount is live (the FUSE handshake is
/// done) and requests wait for [`serve`].
pub fn mount(plan: &MountPlan) -> anyhow::Result<Mounted> {
    // The kernel applies the caller's umask before a create reaches us; ours must not apply
    // a second time.
    sys::set_umask(0);
    let union = super::build::build_union(plan)?;
    // Taken before the union goes to the session; run once the mount is live.
    let label_scan = union.label_scan().map_err(|e| tracing::warn!("no label scan (security.selinux is answered as stored): {e}")).ok();
    let mut fs = ShaleFs::new(union, cache_ttl(plan), plan.passthrough);
    // A store container can be committed while mounted: its changes pass a gate a commit
    // may close (`commit --pause`), asked for over a socket in its work directory.
    let control = plan.upper.as_ref().filter(|_| plan.fsname.starts_with("shalefs:")).map(|u| crate::freeze::socket_path(&u.work));
    let gate = crate::freeze::Gate::default();
    if control.is_some() {
        fs = fs.with_gate(gate.clone());
    }
    let opts = SessionOptions {
        mountpoint: plan.mountpoint.clone(),
        fsname: plan.fsname.clone(),
        threads: plan.threads,
        flags: plan.flags.clone(),
    };
    let session = session::mount(fs, &opts)?;
    if let Some(scan) = label_scan {
        super::labels::start(scan, plan.label_records.clone());
    }
    // Without it the mount still works; `commit --pause` then refuses a mounted container.
    if let Some(path) = &control
        && let Err(e) = crate::freeze::serve(path, gate)
    {
        tracing::warn!("no control socket for commit --pause: {e:#}");
    }
    tracing::info!(lowers = plan.lowers.len(), upper = plan.upper.is_some(), "mounted on {}", plan.mountpoint.display());
    Ok(session)
}

/// Serve until unmounted (`umount`, `fusermount3 -u`, `shalefs umount`, SIGTERM/SIGINT).
pub fn serve(session: Mounted, plan: &MountPlan, stop: session::StopSignals) -> anyhow::Result<()> {
    session::serve(session, &plan.mountpoint, stop)
}

/// Mount and serve in this process. `on_live` runs once the mount is live, before serving (a
/// daemon tells its parent there).
pub fn mount_and_serve(plan: &MountPlan, on_live: impl FnOnce()) -> anyhow::Result<()> {
    let stop = session::catch_stop_signals()?;
    let session = mount(plan)?;
    on_live();
    let served = serve(session, plan, stop);
    super::labels::finish();
    served
}
