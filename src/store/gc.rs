//! Removing images and the layers nothing uses any more.

use std::collections::HashSet;

use anyhow::bail;

use super::Store;
use crate::oci::{Digest, Reference};

/// What `rmi` did.
#[derive(Debug, Default)]
pub struct Removed {
    pub untagged: Vec<String>,
    pub deleted_image: Option<Digest>,
    pub deleted_layers: Vec<Digest>,
}

impl Store {
    /// `rmi`: by a tagged name with other names left, only untag (as docker does); otherwise
    /// delete the image and the layers no image or container uses. A container made from the
    /// image blocks this unless `force` (the container keeps its layers either way).
    pub fn remove_image(&self, name: &str, force: bool) -> anyhow::Result<Removed> {
        let _lock = self.lock_records()?;
        let id = self.resolve_image(name)?;
        let mut repos = self.load_repositories()?;
        let mut removed = Removed::default();
        let (tags, digests) = repos.names_of(&id);
        let by_tag = Reference::parse(name).ok().filter(|r| r.digest.is_none() && repos.lookup(r) == Some(&id));
        if let Some(r) = by_tag.filter(|_| tags.len() > 1) {
            if let (Some(entry), Some(tag)) = (repos.repos.get_mut(&r.name()), &r.tag) {
                entry.tags.remove(tag);
            }
            self.save_repositories(&repos)?;
            removed.untagged.push(r.to_string());
            return Ok(removed);
        }
        let users: Vec<String> = self.all_containers()?.into_iter().filter(|c| c.image == id).map(|c| c.name).collect();
        if !users.is_empty() && !force {
            bail!("image {} is used by container(s) {}: remove them first or use --force", id.short(), users.join(", "));
        }
        repos.forget_image(&id);
        self.save_repositories(&repos)?;
        removed.untagged = tags.into_iter().chain(digests).collect();
        self.remove_image_record(&id)?;
        removed.deleted_image = Some(id);
        removed.deleted_layers = self.remove_unused_layers()?;
        Ok(removed)
    }

    /// Delete images with no name and no container, then layers nothing refers to. Partial
    /// downloads stay (a later pull resumes them); stale unpack directories of dead
    /// processes go. The caller holds the records lock.
    pub fn prune(&self) -> anyhow::Result<(Vec<Digest>, Vec<Digest>)> {
        let repos = self.load_repositories()?;
        let used_by_containers: HashSet<Digest> = self.all_containers()?.into_iter().map(|c| c.image).collect();
        let mut images = Vec::new();
        for rec in self.all_images()? {
            let (tags, digests) = repos.names_of(&rec.id);
            if tags.is_empty() && digests.is_empty() && !used_by_containers.contains(&rec.id) {
                self.remove_image_record(&rec.id)?;
                images.push(rec.id);
            }
        }
        self.remove_stale_tmp()?;
        Ok((images, self.remove_unused_layers()?))
    }

    fn remove_unused_layers(&self) -> anyhow::Result<Vec<Digest>> {
        let mut used: HashSet<Digest> = HashSet::new();
        for rec in self.all_images()? {
            used.extend(rec.layers.into_iter().map(|l| l.diff_id));
        }
        for c in self.all_containers()? {
            used.extend(c.layers);
        }
        let mut removed = Vec::new();
        for layer in self.all_layers()? {
            if used.contains(&layer) {
                continue;
            }
            // A pull of this layer may be committing right now; its lock says so.
            let _busy = self.lock_digest(&layer)?;
            self.remove_layer(&layer)?;
            removed.push(layer);
        }
        Ok(removed)
    }

    fn remove_stale_tmp(&self) -> anyhow::Result<()> {
        for entry in std::fs::read_dir(self.tmp_dir())? {
            let name = entry?.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.ends_with(".partial") {
                continue;
            }
            let pid = name.rsplit('-').next().and_then(|p| p.parse::<u32>().ok());
            if pid.is_some_and(|p| !std::path::Path::new(&format!("/proc/{p}")).exists()) {
                super::remove_tree(&self.tmp_dir().join(name))?;
            }
        }
        Ok(())
    }
}
