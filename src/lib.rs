//! shalefs: container image layer stacks as one merged directory, through FUSE, with the
//! semantics of kernel overlayfs.
//!
//! Dependencies run one way: `cli` → `plan` → `fuse` → `union` → `sys`, and `cli`/`plan` →
//! `transport` → `store` → `archive`/`registry` → `oci`.
//! - [`union`]: the overlay rules on plain directories, testable without FUSE;
//! - [`fuse`]: the thin `fuser::Filesystem` glue and the mount session;
//! - [`plan`]: the mount plan every mounting command goes through: checked, built, served;
//! - [`cli`]: command-line parsing and one module per command;
//! - [`store`]: the content-addressed image store and the pull pipeline;
//! - [`registry`]: the OCI distribution client; [`archive`]: safe layer unpacking, and packing
//!   a container's upper (or a whole merged view, read through [`union::view`]) into a tar;
//! - [`freeze`]: pausing a mount's changes while a commit reads its upper;
//! - [`transport`]: save and load (docker-archive, oci-archive, OCI layout directories);
//! - [`oci`]: digests, references, manifests, platforms, checked at the boundary;
//! - [`sys`]: the raw system calls, and all `unsafe`.

pub mod archive;
pub mod cli;
pub mod freeze;
pub mod fuse;
pub mod oci;
pub mod plan;
pub mod registry;
pub mod store;
pub mod sys;
pub mod transport;
pub mod union;
