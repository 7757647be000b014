//! `ps` and `rm`: the containers in the store, where each is mounted, and removing them.

use std::path::PathBuf;

use anyhow::bail;
use clap::Args;

use crate::store::Store;

pub use crate::plan::container::fsname_of;

/// Where a container is mounted, from /proc/self/mounts.
pub fn mountpoints_of(container: &str) -> Vec<String> {
    let want = fsname_of(container);
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else { return Vec::new() };
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split(' ');
            let (src, mp) = (f.next()?, f.next()?);
            (unescape(src) == want).then(|| unescape(mp))
        })
        .collect()
}

/// Whether the mount at `mp` lost its daemon (killed, crashed): the kernel answers ENOTCONN.
pub fn is_dead(mp: &str) -> bool {
    std::fs::metadata(mp).is_err_and(|e| e.raw_os_error() == Some(libc::ENOTCONN))
}

/// Detach the dead mounts of a container (lazily: a process may still sit in one), so it can be
/// mounted again. Live mounts are left alone; an error says what to run.
pub fn detach_dead_mounts(container: &str) -> anyhow::Result<()> {
    for mp in mountpoints_of(container).into_iter().filter(|mp| is_dead(mp)) {
        match crate::sys::umount(std::path::Path::new(&mp), true) {
            Ok(()) => eprintln!("container {container}: detached its dead mount on {mp} (the daemon serving it had died)"),
            Err(e) => bail!("container {container}: its mount on {mp} is dead (its daemon died) and detaching it failed ({e}): run `umount -l {mp}`"),
        }
    }
    Ok(())
}

/// /proc/mounts writes space, tab, newline and backslash as octal escapes.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn ps(root: Option<PathBuf>) -> anyhow::Result<()> {
    let store = Store::open(&Store::root_from(root.as_deref()))?;
    println!("{:<24} {:<40} {:<14} {:<24} MOUNTED ON", "NAME", "IMAGE", "IMAGE ID", "CREATED");
    for c in store.all_containers()? {
        let created = super::images::human_age(Some(&crate::oci::time::rfc3339(c.created_at as i64)));
        let mut places: Vec<String> =
            mountpoints_of(&c.name).into_iter().map(|mp| if is_dead(&mp) { format!("{mp} (dead: daemon gone)") } else { mp }).collect();
        // A run's mount lives in its own namespace; the lock says it is there.
        if store.container_running(&c.name) {
            places.push("(shalefs run)".into());
        }
        let mounted = places.join(",");
        println!("{:<24} {:<40} {:<14} {created:<24} {mounted}", c.name, c.image_name, c.image.short());
    }
    Ok(())
}


#[derive(Debug, Args)]
pub struct RmArgs {
    #[arg(required = true)]
    pub names: Vec<String>,
}

pub fn rm(args: RmArgs, root: Option<PathBuf>) -> anyhow::Result<()> {
    let store = Store::open(&Store::root_from(root.as_deref()))?;
    for name in &args.names {
        let _lock = store.lock_records()?;
        let mounted = mountpoints_of(name);
        if !mounted.is_empty() {
            bail!("container {name} is mounted on {}: unmount it first", mounted.join(", "));
        }
        if store.container_running(name) {
            bail!("container {name} is in use by `shalefs run`: let the command end first");
        }
        store.remove_container(name)?;
        println!("{name}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn dates_round_trip() {
        assert_eq!(super::unescape("/a\\040b"), "/a b");
    }
}
