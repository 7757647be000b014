//! Tests that mount for real: shalefs through FUSE, compared against kernel overlayfs on the
//! same layers. One binary; each module covers one area. Every mount is made through a guard
//! whose Drop unmounts, so a failing test leaves nothing mounted.

mod chroot;
mod cli;
mod differential;
mod merged_view;
mod metacopy;
mod pjdfstest;
mod pull;
mod run;
mod write_path;
mod util;
