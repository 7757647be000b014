//! oci-archive: the OCI layout ([`super::oci_layout`]) as one tar, as skopeo's and podman's
//! `oci-archive:` transport writes it (the layout's files at the tar's root).

use super::io::TarSink;
use super::{SaveImage, SaveReport};
use crate::store::Store;

pub fn save<W: std::io::Write>(store: &Store, out: W, images: &[SaveImage], report: &SaveReport) -> anyhow::Result<W> {
    let mut sink = TarSink::new(out);
    super::oci_layout::save(store, &mut sink, images, report)?;
    Ok(sink.into_inner())
}
