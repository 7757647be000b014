//! The overlayfs spelling of a mount: `-o lowerdir=A:B:C,upperdir=U,workdir=W,...`, as
//! `mount -t overlay` and fuse-overlayfs take it, so container tools can call shalefs as their
//! mount program.

use std::path::PathBuf;

use crate::fuse::session::MountFlags;
use crate::union::idmap::{IdMap, IdMapping};

/// What the `-o` strings asked for.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct OverlayOptions {
    /// Lowers, top first.
    pub lowers: Vec<PathBuf>,
    pub upper: Option<PathBuf>,
    pub work: Option<PathBuf>,
    pub fsname: Option<String>,
    pub flags: MountFlags,
    /// `metacopy=on`: metadata-only copy-up of regular files.
    pub metacopy: bool,
    /// `userxattr`: the upper's format in `user.overlay.*`, as overlayfs' option.
    pub userxattr: bool,
    /// `volatile`: copy-ups are not synced before they become visible (overlayfs' option).
    pub volatile: bool,
    /// `uidmapping=`, `gidmapping=`, `squash_to_uid=`, `squash_to_gid=`, `squash_to_root`
    /// (fuse-overlayfs' options, which podman passes its mount program).
    pub ids: IdMapping,
}

/// Split on `sep`, where a backslash escapes the next character (overlayfs allows `\,` and `\:`
/// in layer paths).
fn split_escaped(s: &str, sep: char) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let (Some(next), Some(p)) = (chars.next(), parts.last_mut()) {
                    p.push(next);
                }
            }
            c if c == sep => parts.push(String::new()),
            c => {
                if let Some(p) = parts.last_mut() { p.push(c) }
            }
        }
    }
    parts
}

/// Split an option list on unescaped commas outside double quotes (podman writes SELinux
/// labels as `context="a:b:c:s0:c1,c2"`), keeping escapes and quotes for the value parser;
/// empty elements (`workdir=X,,volatile`) are dropped.
fn split_options(s: &str) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut escaped = false;
    let mut quoted = false;
    for c in s.chars() {
        let cur = parts.last_mut();
        match (escaped, c) {
            (true, c) => {
                if let Some(p) = cur { p.push(c) }
                escaped = false;
            }
            (false, '\\') => {
                if let Some(p) = cur { p.push('\\') }
                escaped = true;
            }
            (false, '"') => {
                if let Some(p) = cur { p.push('"') }
                quoted = !quoted;
            }
            (false, ',') if !quoted => parts.push(String::new()),
            (false, c) => {
                if let Some(p) = cur { p.push(c) }
            }
        }
    }
    parts.into_iter().filter(|p| !p.is_empty()).collect()
}

fn one_path(key: &str, value: &str) -> anyhow::Result<PathBuf> {
    let parts = split_escaped(value, '\u{0}');
    match parts.as_slice() {
        [p] if !p.is_empty() => Ok(PathBuf::from(p)),
        _ => anyhow::bail!("-o {key}= needs a directory"),
    }
}

/// Options kernel overlayfs or fuse-overlayfs accept that shalefs has no use for: accepted so an
/// existing command line works, and said in the log.
const IGNORED: &[&str] = &[
    "index", "redirect_dir", "xino", "nfs_export", "uuid", "verity",
    "default_permissions", "allow_other", "allow_root", "fsync", "noacl", "static_nlink", "threaded", "context", "fscontext", "defcontext", "rootcontext", "dev",
    "suid", "exec", "atime", "relatime", "strictatime", "sync", "async", "rw",
];

/// The value of an on/off option, spelled as overlayfs spells it.
fn on_or_off(key: &str, value: &str) -> anyhow::Result<bool> {
    match value {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => anyhow::bail!("-o {key}= takes on or off, not {value:?}"),
    }
}

fn id_value(key: &str, value: &str) -> anyhow::Result<u32> {
    value.parse().map_err(|_| anyhow::anyhow!("-o {key}= takes a numeric id, not {value:?}"))
}

fn id_map(key: &str, value: &str) -> anyhow::Result<IdMap> {
    IdMap::parse(value).map_err(|e| anyhow::anyhow!("-o {key}={e}"))
}

/// Parse, refusing any option shalefs does not know (what a person typed): the options, and
/// those accepted without effect.
pub fn parse(option_strings: &[String]) -> anyhow::Result<(OverlayOptions, Vec<String>)> {
    let (out, ignored, _) = parse_with(option_strings, false)?;
    Ok((out, ignored))
}

/// Parse as fuse-overlayfs does for the container tools that call it: an unknown option is
/// returned in the third list (for a warning) instead of failing. Malformed values of known
/// options still fail.
pub fn parse_lenient(option_strings: &[String]) -> anyhow::Result<(OverlayOptions, Vec<String>, Vec<String>)> {
    parse_with(option_strings, true)
}

fn parse_with(option_strings: &[String], lenient: bool) -> anyhow::Result<(OverlayOptions, Vec<String>, Vec<String>)> {
    let mut out = OverlayOptions::default();
    let mut ignored = Vec::new();
    let mut unknown = Vec::new();
    for opt in option_strings.iter().flat_map(|s| split_options(s)) {
        let (key, value) = match opt.split_once('=') {
            Some((k, v)) => (k.to_string(), Some(v.to_string())),
            None => (opt.clone(), None),
        };
        match (key.as_str(), value.as_deref()) {
            ("lowerdir", Some(v)) => {
                out.lowers = split_escaped(v, ':').into_iter().filter(|p| !p.is_empty()).map(PathBuf::from).collect();
                if out.lowers.is_empty() {
                    anyhow::bail!("-o lowerdir= names no directory");
                }
            }
            // Linux 6.8's form: one lower per option, appended below those given so far.
            ("lowerdir+", Some(v)) => out.lowers.push(one_path("lowerdir+", v)?),
            ("upperdir", Some(v)) => out.upper = Some(one_path("upperdir", v)?),
            ("workdir", Some(v)) => out.work = Some(one_path("workdir", v)?),
            ("fsname", Some(v)) => out.fsname = Some(v.to_string()),
            ("metacopy", Some(v)) => out.metacopy = on_or_off("metacopy", v)?,
            ("userxattr", None) => out.userxattr = true,
            ("volatile", None) => out.volatile = true,
            ("ro", None) => out.flags.read_only = true,
            ("nodev", None) => out.flags.nodev = true,
            ("nosuid", None) => out.flags.nosuid = true,
            ("noexec", None) => out.flags.noexec = true,
            ("noatime", None) => out.flags.noatime = true,
            ("uidmapping", Some(v)) => out.ids.uids = id_map("uidmapping", v)?,
            ("gidmapping", Some(v)) => out.ids.gids = id_map("gidmapping", v)?,
            ("squash_to_uid", Some(v)) => out.ids.squash_uid = Some(id_value("squash_to_uid", v)?),
            ("squash_to_gid", Some(v)) => out.ids.squash_gid = Some(id_value("squash_to_gid", v)?),
            // squash_to_uid/gid take precedence over it (fuse-overlayfs(1)).
            ("squash_to_root", None) => {
                out.ids.squash_uid.get_or_insert(0);
                out.ids.squash_gid.get_or_insert(0);
            }
            // fuse-overlayfs keeps owners and modes in an xattr when it cannot chown (1: its own
            // name, 2: user.containers.override_stat). shalefs writes them on the files, so 0 is
            // the only value it honours; any other is said and ignored.
            ("xattr_permissions", Some("0")) => ignored.push(opt.clone()),
            ("xattr_permissions", Some(_)) if lenient => unknown.push(opt.clone()),
            (k, _) if IGNORED.contains(&k) => ignored.push(opt.clone()),
            _ if lenient => unknown.push(opt.clone()),
            (k, Some(_)) => anyhow::bail!("unknown mount option {k:?} in {opt:?}"),
            (k, None) => anyhow::bail!("unknown mount option {k:?}"),
        }
    }
    Ok((out, ignored, unknown))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> OverlayOptions {
        parse(&[s.to_string()]).unwrap().0
    }

    #[test]
    fn overlay_spelling() {
        let o = p("lowerdir=/a:/b:/c,upperdir=/u,workdir=/w");
        assert_eq!(o.lowers, vec![PathBuf::from("/a"), PathBuf::from("/b"), PathBuf::from("/c")]);
        assert_eq!(o.upper, Some(PathBuf::from("/u")));
        assert_eq!(o.work, Some(PathBuf::from("/w")));
    }

    #[test]
    fn escapes_in_paths() {
        let o = p(r"lowerdir=/a\:b:/c\,d");
        assert_eq!(o.lowers, vec![PathBuf::from("/a:b"), PathBuf::from("/c,d")]);
    }

    #[test]
    fn lowerdir_plus_appends() {
        let o = parse(&["lowerdir+=/a,lowerdir+=/b".into()]).unwrap().0;
        assert_eq!(o.lowers, vec![PathBuf::from("/a"), PathBuf::from("/b")]);
    }

    #[test]
    fn flags_and_ignored() {
        let (o, ignored) = parse(&["lowerdir=/a,ro,nodev,index=on,redirect_dir=on".into()]).unwrap();
        assert!(o.flags.read_only && o.flags.nodev);
        assert_eq!(ignored, vec!["index=on".to_string(), "redirect_dir=on".to_string()]);
    }

    #[test]
    fn volatile_is_a_flag() {
        assert!(p("lowerdir=/a,volatile").volatile);
        assert!(!p("lowerdir=/a").volatile);
        assert!(parse(&["lowerdir=/a,volatile=on".into()]).is_err());
    }

    #[test]
    fn metacopy_is_on_or_off() {
        assert!(p("lowerdir=/a,metacopy=on").metacopy);
        assert!(!p("lowerdir=/a,metacopy=on,metacopy=off").metacopy);
        assert!(parse(&["lowerdir=/a,metacopy=yes".into()]).is_err());
        assert!(p("lowerdir=/a,userxattr").userxattr);
    }

    #[test]
    fn unknown_is_an_error() {
        assert!(parse(&["lowerdir=/a,bogus=1".into()]).is_err());
        assert!(parse(&["lowerdir=".into()]).is_err());
    }

    #[test]
    fn podman_mount_program_options() {
        let opts = r#"lowerdir=l/AAA:l/BBB,upperdir=/g/overlay/x/diff,workdir=/g/overlay/x/work,,volatile,context="system_u:object_r:container_file_t:s0:c1,c2",uidmapping=:0:100000:65536,gidmapping=:0:100000:65536,nodev,nosuid"#;
        let (o, ignored, unknown) = parse_lenient(&[opts.to_string()]).unwrap();
        assert_eq!(o.lowers, vec![PathBuf::from("l/AAA"), PathBuf::from("l/BBB")]);
        assert_eq!(o.work, Some(PathBuf::from("/g/overlay/x/work")));
        assert!(o.flags.nodev && o.flags.nosuid && !o.flags.read_only);
        assert_eq!(o.ids.uids.to_kernel(0), 100000);
        assert_eq!(o.ids.gids.to_disk(100001), Some(1));
        assert!(o.volatile);
        assert_eq!(ignored, vec![r#"context="system_u:object_r:container_file_t:s0:c1,c2""#.to_string()]);
        assert!(unknown.is_empty());
    }

    #[test]
    fn lenient_parse_returns_unknown_options_instead_of_failing() {
        let (_, _, unknown) = parse_lenient(&["lowerdir=/a,bogus=1,xattr_permissions=2,frob".into()]).unwrap();
        assert_eq!(unknown, vec!["bogus=1".to_string(), "xattr_permissions=2".to_string(), "frob".to_string()]);
        assert!(parse(&["lowerdir=/a,xattr_permissions=2".into()]).is_err());
        // A known option with a bad value is still an error.
        assert!(parse_lenient(&["lowerdir=/a,uidmapping=0:1".into()]).is_err());
    }

    #[test]
    fn squash_to_uid_wins_over_squash_to_root() {
        let o = p("lowerdir=/a,squash_to_root,squash_to_uid=5");
        assert_eq!((o.ids.squash_uid, o.ids.squash_gid), (Some(5), Some(0)));
        let o = p("lowerdir=/a,squash_to_gid=7,squash_to_root");
        assert_eq!((o.ids.squash_uid, o.ids.squash_gid), (Some(0), Some(7)));
    }
}
