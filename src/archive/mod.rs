//! Layer archives: the decompressing, verifying reader of a layer blob ([`compress`]) and the
//! safe unpacker that turns an OCI layer tar into a directory in overlayfs format ([`unpack`]),
//! and the record it keeps to give the exact tar back ([`tarsplit`]).

pub mod compress;
pub mod pack;
pub mod tarsplit;
pub mod unpack;

#[cfg(test)]
mod tests;
