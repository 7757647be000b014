//! The encodings a layer may use to say "this name is deleted" or "nothing below shows through",
//! as pure functions over names, modes and xattr values.
//!
//! Three encodings exist in the wild (Documentation/filesystems/overlayfs.rst, "whiteouts and
//! opaque directories", and the OCI image spec, "Whiteouts"):
//! - overlayfs: a whiteout is a character device 0/0; an opaque directory carries
//!   `trusted.overlay.opaque=y`.
//! - overlayfs xattr form (for nesting, and for `userxattr` mounts): a zero-size regular file with
//!   `overlay.whiteout` set, inside a directory whose `overlay.opaque` is `x` (meaning: "has xattr
//!   whiteouts", not opaque). Either the `trusted.` or the `user.` namespace.
//! - OCI/AUFS: a file `.wh.NAME` deletes NAME in lower layers; `.wh..wh..opq` makes its directory
//!   opaque. Other `.wh..wh.*` names are AUFS bookkeeping and are hidden.

/// Prefix of an OCI/AUFS whiteout file.
pub const OCI_WHITEOUT_PREFIX: &[u8] = b".wh.";
/// The OCI/AUFS opaque-directory marker.
pub const OCI_OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
/// Prefix of AUFS metadata entries (`.wh..wh.plnk`, `.wh..wh.aufs`, ...), never user data.
const AUFS_META_PREFIX: &[u8] = b".wh..wh.";

pub const TRUSTED_PREFIX: &[u8] = b"trusted.overlay.";
pub const USER_PREFIX: &[u8] = b"user.overlay.";

/// What an entry name means in a layer that uses OCI whiteouts.
#[derive(Debug, PartialEq, Eq)]
pub enum OciName<'a> {
    /// An ordinary name.
    Plain,
    /// `.wh.NAME`: NAME is deleted in the layers below.
    Whiteout(&'a [u8]),
    /// `.wh..wh..opq`: the directory holding it hides everything below.
    Opaque,
    /// Other AUFS bookkeeping, or a bare `.wh.`: hidden, means nothing.
    Meta,
}

pub fn classify_oci_name(name: &[u8]) -> OciName<'_> {
    if name == OCI_OPAQUE_MARKER {
        return OciName::Opaque;
    }
    if name.starts_with(AUFS_META_PREFIX) {
        return OciName::Meta;
    }
    match name.strip_prefix(OCI_WHITEOUT_PREFIX) {
        None => OciName::Plain,
        Some(target) if target.is_empty() || target == b"." || target == b".." => OciName::Meta,
        Some(target) => OciName::Whiteout(target),
    }
}

/// The OCI whiteout file name for `name`.
pub fn oci_whiteout_name(name: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(OCI_WHITEOUT_PREFIX.len() + name.len());
    v.extend_from_slice(OCI_WHITEOUT_PREFIX);
    v.extend_from_slice(name);
    v
}

/// A character device with device number 0/0 is overlayfs' whiteout.
pub fn is_whiteout_device(mode: u32, rdev: u64) -> bool {
    mode & libc::S_IFMT == libc::S_IFCHR && rdev == 0
}

/// A zero-size regular file is a candidate for the xattr form of a whiteout; the xattr decides.
pub fn may_be_xattr_whiteout(mode: u32, size: i64) -> bool {
    mode & libc::S_IFMT == libc::S_IFREG && size == 0
}

/// What a directory's `overlay.opaque` xattr value says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DirMarks {
    /// Nothing from the layers below shows through this directory.
    pub opaque: bool,
    /// The directory may contain xattr-form whiteouts (value `x`).
    pub xattr_whiteouts: bool,
}

pub fn parse_opaque_value(value: &[u8]) -> DirMarks {
    match value {
        b"y" => DirMarks { opaque: true, xattr_whiteouts: false },
        b"x" => DirMarks { opaque: false, xattr_whiteouts: true },
        _ => DirMarks::default(),
    }
}

/// Xattrs that belong to the overlay format itself and are never shown in the merged view.
pub fn is_private_xattr(name: &[u8]) -> bool {
    name.starts_with(TRUSTED_PREFIX) || name.starts_with(USER_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oci_names_are_classified() {
        assert_eq!(classify_oci_name(b"etc"), OciName::Plain);
        assert_eq!(classify_oci_name(b".wh.etc"), OciName::Whiteout(b"etc"));
        assert_eq!(classify_oci_name(b".wh..wh..opq"), OciName::Opaque);
        assert_eq!(classify_oci_name(b".wh..wh.plnk"), OciName::Meta);
        assert_eq!(classify_oci_name(b".wh."), OciName::Meta);
        assert_eq!(classify_oci_name(b".wh.."), OciName::Meta);
        assert_eq!(classify_oci_name(b".wh..hidden"), OciName::Whiteout(b".hidden"));
        assert_eq!(classify_oci_name(b"x.wh.y"), OciName::Plain);
    }

    #[test]
    fn whiteout_device_is_char_zero_zero_only() {
        assert!(is_whiteout_device(libc::S_IFCHR, 0));
        assert!(!is_whiteout_device(libc::S_IFCHR | 0o666, libc::makedev(1, 3)));
        assert!(!is_whiteout_device(libc::S_IFBLK, 0));
        assert!(!is_whiteout_device(libc::S_IFREG, 0));
    }

    #[test]
    fn opaque_values() {
        assert!(parse_opaque_value(b"y").opaque);
        assert!(!parse_opaque_value(b"x").opaque);
        assert!(parse_opaque_value(b"x").xattr_whiteouts);
        assert_eq!(parse_opaque_value(b"n"), DirMarks::default());
        assert_eq!(parse_opaque_value(b""), DirMarks::default());
    }

    #[test]
    fn private_xattrs() {
        assert!(is_private_xattr(b"trusted.overlay.opaque"));
        assert!(is_private_xattr(b"user.overlay.whiteout"));
        assert!(!is_private_xattr(b"user.comment"));
        assert!(!is_private_xattr(b"trusted.overlayfoo"));
        assert!(!is_private_xattr(b"security.capability"));
    }

    #[test]
    fn xattr_whiteout_candidates() {
        assert!(may_be_xattr_whiteout(libc::S_IFREG | 0o644, 0));
        assert!(!may_be_xattr_whiteout(libc::S_IFREG | 0o644, 1));
        assert!(!may_be_xattr_whiteout(libc::S_IFDIR | 0o755, 0));
    }
}
