//! The [`Union`] a plan describes: lowers opened, the upper's xattr format probed, shalefs'
//! corner of the work directory made and cleaned.

use std::path::Path;

use crate::sys;
use crate::union::Union;
use crate::union::layer::{Formats, Layer, LayerStack, Role};

use super::MountPlan;

/// Which xattr namespace the upper can hold the overlay format in: `trusted.` when privileged
/// (unless `userxattr` asks for `user.`), else `user.` (as overlayfs' `userxattr`); an error
/// when neither works.
fn probe_upper_format(work: &Path, userxattr: bool) -> anyhow::Result<Formats> {
    let dir = sys::open_dir(work).map_err(|e| anyhow::anyhow!("work directory {}: {e}", work.display()))?;
    use std::os::fd::AsFd;
    let probe = c"shalefs-probe";
    let _ = sys::unlinkat(dir.as_fd(), probe, 0);
    sys::mknodat(dir.as_fd(), probe, libc::S_IFREG | 0o600, 0)
        .map_err(|e| anyhow::anyhow!("work directory {}: cannot create files: {e}", work.display()))?;
    let path = sys::fd_relative_path(dir.as_fd(), probe.to_bytes())?;
    let trusted = if userxattr { Err(sys::Errno(libc::EPERM)) } else { sys::lsetxattr(&path, c"trusted.overlay.shalefs-probe", b"y") };
    let user = trusted.is_err().then(|| sys::lsetxattr(&path, c"user.overlay.shalefs-probe", b"y"));
    let _ = sys::unlinkat(dir.as_fd(), probe, 0);
    match (trusted, user) {
        (Ok(()), _) => Ok(Formats::UPPER_TRUSTED),
        (Err(_), Some(Ok(()))) if userxattr => Ok(Formats::UPPER_USER),
        (Err(_), Some(Ok(()))) => {
            tracing::warn!("no privilege for trusted.* xattrs on {}: the upper uses user.overlay.* (as overlayfs' userxattr)", work.display());
            Ok(Formats::UPPER_USER)
        }
        (Err(e), _) => anyhow::bail!(
            "upper filesystem of {} cannot hold whiteouts and opaque directories: setting an xattr failed: {e}",
            work.display()
        ),
    }
}

/// shalefs' own corner of the work directory. Kernel overlayfs keeps its `work` and `index`
/// beside it, so the same upper and work directories can be mounted by either.
const WORK_SUBDIR: &str = "shalefs";

fn open_work(work: &Path) -> anyhow::Result<Layer> {
    let dir = work.join(WORK_SUBDIR);
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => anyhow::bail!("work directory {}: {e}", dir.display()),
    }
    let layer = Layer::open(&dir, Role::Work, Formats::UPPER_TRUSTED)?;
    // Anything left here is from a crash: half-built copies, removed trees. None is visible.
    crate::union::util::clean_work_dir(&layer);
    Ok(layer)
}

pub fn build_union(plan: &MountPlan) -> anyhow::Result<Union> {
    let (upper, work) = match &plan.upper {
        Some(u) => (Some(Layer::open(&u.upper, Role::Upper, probe_upper_format(&u.work, plan.userxattr)?)?), Some(open_work(&u.work)?)),
        None => (None, None),
    };
    let lowers = plan.lowers.iter().map(|p| Layer::open(p, Role::Lower, Formats::LOWER)).collect::<anyhow::Result<Vec<_>>>()?;
    if plan.metacopy && upper.as_ref().is_some_and(|u| !u.formats.trusted_xattrs) {
        anyhow::bail!("metacopy=on needs the upper in trusted.overlay.* form (overlayfs refuses metacopy with userxattr, which a mount without that privilege implies)");
    }
    let stack = LayerStack::with_work(upper, work, lowers)?;
    let mut union = Union::new(stack).map_err(|e| anyhow::anyhow!("reading the root of the layers: {e}"))?;
    union.set_metacopy(plan.metacopy);
    union.set_id_mapping(plan.ids.clone());
    if plan.volatile {
        union.set_volatile();
    }
    log_durability(&union);
    Ok(union)
}

fn log_durability(union: &Union) {
    use crate::union::copy_up::Durability;
    match union.durability() {
        _ if union.is_read_only() => {}
        Durability::Volatile => tracing::warn!("volatile: copy-ups are not synced; a crash or power cut can leave copies that hide their lower data"),
        Durability::Ordered => tracing::info!("copy-ups are written out before they become visible; the upper's journal orders the rest"),
        Durability::Synced => tracing::info!("copy-ups are fsynced before they become visible"),
    }
}
