//! Layer archives: the decompressing, verifying reader of a layer blob ([`compress`]) and the
//! safe unpacker that turns an OCI layer tar into a directory in overlayfs format ([`unpack`]).

pub mod compress;
pub mod pack;
pub mod unpack;

#[cfg(test)]
mod tests;
