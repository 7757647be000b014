//! Containers: an image's layers plus an upper directory of their own, kept in the store so a
//! container can be mounted again with its changes.

use std::path::PathBuf;

use anyhow::{Context, anyhow, bail};
use serde::{Deserialize, Serialize};

use super::{Store, remove_tree, write_atomic};
use crate::oci::Digest;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Container {
    pub name: String,
    pub image: Digest,
    /// What the user called the image when creating it.
    pub image_name: String,
    /// The image's layers, bottom first, so the container survives `rmi --force`.
    pub layers: Vec<Digest>,
    pub created_at: u64,
}

impl Store {
    fn container_dir(&self, name: &str) -> PathBuf {
        self.root.join("containers").join(name)
    }

    pub fn container_upper(&self, name: &str) -> PathBuf {
        self.container_dir(name).join("upper")
    }

    pub fn container_work(&self, name: &str) -> PathBuf {
        self.container_dir(name).join("work")
    }

    /// `run`'s init layer of a container: the mount points the image lacks.
    pub fn container_init(&self, name: &str) -> PathBuf {
        self.container_dir(name).join("init")
    }

    /// Where `run` mounts a container (in its own mount namespace only), made when missing.
    pub fn container_rootfs(&self, name: &str) -> PathBuf {
        self.container_dir(name).join("rootfs")
    }

    /// Held while `run` uses a container: a second `run` of it is refused, and so is `rm`.
    pub fn lock_container_run(&self, name: &str) -> anyhow::Result<super::Lock> {
        self.load_container(name)?;
        let path = self.container_dir(name).join("run.lock");
        let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).with_context(|| format!("opening {}", path.display()))?;
        if crate::sys::try_flock(std::os::fd::AsFd::as_fd(&file), true).is_err() {
            bail!("container {name} is in use by another `shalefs run`");
        }
        std::fs::create_dir_all(self.container_rootfs(name)).with_context(|| format!("creating {}", self.container_rootfs(name).display()))?;
        Ok(super::Lock { _file: file })
    }

    /// Whether a `run` holds the container now.
    pub fn container_running(&self, name: &str) -> bool {
        let path = self.container_dir(name).join("run.lock");
        match std::fs::File::open(&path) {
            Ok(f) => crate::sys::try_flock(std::os::fd::AsFd::as_fd(&f), false).is_err(),
            Err(_) => false,
        }
    }

    /// Create a container's record and empty upper and work directories (the caller holds the
    /// records lock).
    pub fn create_container(&self, c: &Container) -> anyhow::Result<()> {
        check_container_name(&c.name)?;
        let dir = self.container_dir(&c.name);
        if dir.exists() {
            bail!("a container named {:?} already exists (remove it with `shalefs rm {}`)", c.name, c.name);
        }
        let tmp = self.tmp_dir().join(format!("container-{}-{}", c.name, std::process::id()));
        remove_tree(&tmp)?;
        std::fs::create_dir_all(tmp.join("upper")).with_context(|| format!("creating {}", tmp.display()))?;
        std::fs::create_dir_all(tmp.join("work"))?;
        write_atomic(&tmp.join("container.json"), &serde_json::to_vec_pretty(c)?)?;
        std::fs::rename(&tmp, &dir).map_err(|e| anyhow!("creating container {}: {e}", dir.display()))
    }

    pub fn load_container(&self, name: &str) -> anyhow::Result<Container> {
        check_container_name(name)?;
        let path = self.container_dir(name).join("container.json");
        let bytes = std::fs::read(&path).map_err(|_| anyhow!("no such container: {name} (see `shalefs ps`)"))?;
        serde_json::from_slice(&bytes).with_context(|| format!("reading {}", path.display()))
    }

    pub fn all_containers(&self) -> anyhow::Result<Vec<Container>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(self.root.join("containers"))? {
            let name = entry?.file_name();
            if let Some(name) = name.to_str()
                && let Ok(c) = self.load_container(name) {
                    out.push(c);
                }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    pub fn remove_container(&self, name: &str) -> anyhow::Result<()> {
        self.load_container(name)?;
        let dir = self.container_dir(name);
        let doomed = self.tmp_dir().join(format!("remove-container-{name}-{}", std::process::id()));
        std::fs::rename(&dir, &doomed).map_err(|e| anyhow!("removing container {}: {e}", dir.display()))?;
        remove_tree(&doomed)
    }
}

/// Container names become directory names: docker's rule, `[a-zA-Z0-9][a-zA-Z0-9_.-]*`.
pub fn check_container_name(name: &str) -> anyhow::Result<()> {
    let ok = name.len() <= 128
        && name.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if ok { Ok(()) } else { bail!("invalid container name {name:?}: use [a-zA-Z0-9][a-zA-Z0-9_.-]*") }
}
