//! The OCI image model, parsed and checked at the boundary: digests, image references,
//! manifests, indexes, configs and platforms, and the `--change` edits of a config. Nothing
//! else in the crate reads raw JSON or a raw reference string.

pub mod change;
pub mod digest;
pub mod manifest;
pub mod platform;
pub mod reference;
pub mod time;

pub use digest::Digest;
pub use reference::Reference;
