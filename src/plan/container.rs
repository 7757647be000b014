//! A container of the store as the parts of a mount: its image's layers (top first), its upper
//! and work directories, and the mount source name that `ps` and `rm` find it by.

use std::path::PathBuf;

use crate::store::{Container, Store};

/// The mount source a container's mount carries, so `ps` and `rm` can find it.
pub fn fsname_of(container: &str) -> String {
    format!("shalefs:{container}")
}

/// The parts of a [`super::MountSpec`] a container supplies.
#[derive(Debug, Default, Clone)]
pub struct ContainerLayers {
    pub lowers: Vec<PathBuf>,
    pub upper: PathBuf,
    pub work: PathBuf,
    pub fsname: String,
    /// Each lower → where its label scan is kept (see `MountSpec::label_records`).
    pub label_records: std::collections::HashMap<PathBuf, PathBuf>,
}

/// The layers of a container (top first), its upper and work, and its mount source name.
pub fn container_layers(store: &Store, name: &str) -> anyhow::Result<ContainerLayers> {
    let c = store.load_container(name)?;
    let lowers = c.layers.iter().rev().map(|d| {
        let dir = store.layer_dir(d);
        if !dir.is_dir() {
            anyhow::bail!("container {name}: layer {d} is missing from the store");
        }
        Ok(dir)
    });
    let lowers: Vec<PathBuf> = lowers.collect::<anyhow::Result<_>>()?;
    let label_records = c.layers.iter().map(|d| (store.layer_dir(d), store.layer_labels_path(d))).collect();
    Ok(ContainerLayers {
        lowers,
        label_records,
        upper: store.container_upper(name),
        work: store.container_work(name),
        fsname: fsname_of(name),
    })
}

/// A new container of `image` with an empty upper, made under the records lock; its name is
/// `name` or one made from the image's name and a random suffix.
pub fn new_container(store: &Store, image: &str, name: Option<&str>) -> anyhow::Result<String> {
    let _lock = store.lock_records()?;
    let id = store.resolve_image(image)?;
    let rec = store.load_image(&id)?;
    if let Some(missing) = rec.layers.iter().find(|l| !store.has_layer(&l.diff_id)) {
        anyhow::bail!("image {image}: layer {} is missing from the store; pull the image again", missing.diff_id);
    }
    let name = match name {
        Some(n) => n.to_string(),
        None => generated_name(image),
    };
    store.create_container(&Container {
        name: name.clone(),
        image: id,
        image_name: image.to_string(),
        layers: rec.layers.iter().map(|l| l.diff_id.clone()).collect(),
        created_at: crate::store::pull::now(),
    })?;
    Ok(name)
}

/// `alpine-3f9a1c`: the image's last path component and a random suffix.
fn generated_name(image: &str) -> String {
    let base = image.rsplit('/').next().unwrap_or(image);
    let base: String = base.split([':', '@']).next().unwrap_or("c").chars().filter(|c| c.is_ascii_alphanumeric() || "_.-".contains(*c)).collect();
    let mut seed = [0u8; 3];
    let _ = std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut seed));
    let base = if base.is_empty() { "container".to_string() } else { base };
    format!("{base}-{:02x}{:02x}{:02x}", seed[0], seed[1], seed[2])
}
