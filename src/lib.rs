//! shalefs: container image layer stacks as one merged directory, through FUSE, with the
//! semantics of kernel overlayfs.
//!
//! Dependencies run one way: `cli` → `fuse` → `union` → `sys`.
//! - [`union`]: the overlay rules on plain directories, testable without FUSE;
//! - [`fuse`]: the thin `fuser::Filesystem` glue and the mount session;
//! - [`cli`]: command-line parsing and one module per command;
//! - [`sys`]: the raw system calls, and all `unsafe`.

pub mod archive;
pub mod cli;
pub mod fuse;
pub mod oci;
pub mod registry;
pub mod store;
pub mod sys;
pub mod union;
