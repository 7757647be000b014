//! Tests that mount for real: shalefs through FUSE, compared against kernel overlayfs on the
//! same layers. One binary; each module covers one area. Every mount is made through a guard
//! whose Drop unmounts, so a failing test leaves nothing mounted.

mod chroot;
mod cli;
mod commit;
mod deep_paths;
mod differential;
mod labels;
mod lifecycle;
mod merged_view;
mod metacopy;
mod pjdfstest;
mod power_cut;
mod podman;
mod pull;
mod save_load;
mod push;
mod run;
mod transport;
mod write_path;
mod util;
