//! `USER[:GROUP]` resolved as docker (runc's GetExecUser) does, through the image's own
//! /etc/passwd and /etc/group: names are looked up, numbers are taken as they are (and looked up
//! for a home and primary group when the passwd file has them). The supplementary groups are the
//! primary one and, without an explicit group, those that list the user as a member. Pure
//! parsing: the helper reads the files inside the container's root.

use anyhow::bail;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecUser {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub home: String,
}

struct Passwd<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

struct Group<'a> {
    name: &'a str,
    gid: u32,
    members: Vec<&'a str>,
}

fn passwd_entries(text: &str) -> impl Iterator<Item = Passwd<'_>> {
    text.lines().filter(|l| !l.starts_with('#')).filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        Some(Passwd { name: f.first()?, uid: f.get(2)?.parse().ok()?, gid: f.get(3)?.parse().ok()?, home: f.get(5).copied().unwrap_or("") })
    })
}

fn group_entries(text: &str) -> impl Iterator<Item = Group<'_>> {
    text.lines().filter(|l| !l.starts_with('#')).filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        let members = f.get(3).map(|m| m.split(',').map(str::trim).filter(|m| !m.is_empty()).collect()).unwrap_or_default();
        Some(Group { name: f.first()?, gid: f.get(2)?.parse().ok()?, members })
    })
}

/// Resolve `spec` ("" = root) against the files' contents (None when a file is missing).
pub fn resolve(spec: &str, passwd: Option<&str>, group: Option<&str>) -> anyhow::Result<ExecUser> {
    let (user, group_arg) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let user = if user.is_empty() { "0" } else { user };
    let numeric = user.parse::<u32>().ok();
    let entry = passwd.and_then(|p| passwd_entries(p).find(|e| e.name == user || Some(e.uid) == numeric));
    let (uid, mut gid, home, name) = match (entry, numeric) {
        (Some(e), _) => (e.uid, e.gid, e.home.to_string(), Some(e.name.to_string())),
        (None, Some(uid)) => (uid, 0, "/".to_string(), None),
        (None, None) => bail!("unable to find user {user}: no matching entries in passwd file"),
    };
    let mut groups = Vec::new();
    match group_arg.filter(|g| !g.is_empty()) {
        Some(g) => {
            let numeric = g.parse::<u32>().ok();
            gid = match (group.and_then(|t| group_entries(t).find(|e| e.name == g || Some(e.gid) == numeric)), numeric) {
                (Some(e), _) => e.gid,
                (None, Some(n)) => n,
                (None, None) => bail!("unable to find group {g}: no matching entries in group file"),
            };
        }
        // Supplementary groups only make sense in the implicit form (as runc).
        None => {
            if let (Some(name), Some(text)) = (&name, group) {
                groups = group_entries(text).filter(|e| e.members.contains(&name.as_str())).map(|e| e.gid).collect();
                groups.dedup();
            }
        }
    }
    // The primary group leads the supplementary list, as docker (containerd) sets it.
    groups.retain(|&g| g != gid);
    groups.insert(0, gid);
    let home = if home.is_empty() { "/".to_string() } else { home };
    Ok(ExecUser { uid, gid, groups, home })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:App:/home/app:/bin/sh\nnohome:x:1001:100::\n";
    const GROUP: &str = "root:x:0:\napp:x:1000:\nwheel:x:10:root,app\naudio:x:29:app\nstaff:x:50:other\n";

    fn r(spec: &str) -> anyhow::Result<ExecUser> {
        resolve(spec, Some(PASSWD), Some(GROUP))
    }

    #[test]
    fn names_resolve_with_home_and_supplementary_groups() {
        assert_eq!(r("app").unwrap(), ExecUser { uid: 1000, gid: 1000, groups: vec![1000, 10, 29], home: "/home/app".into() });
        assert_eq!(r("").unwrap(), ExecUser { uid: 0, gid: 0, groups: vec![0, 10], home: "/root".into() });
        // A number in the passwd file gets that entry's group and home.
        assert_eq!(r("1000").unwrap().home, "/home/app");
        assert_eq!(r("nohome").unwrap().home, "/");
    }

    #[test]
    fn numbers_are_taken_as_they_are_and_explicit_groups_drop_supplementary_ones() {
        assert_eq!(r("4242").unwrap(), ExecUser { uid: 4242, gid: 0, groups: vec![0], home: "/".into() });
        assert_eq!(r("4242:77").unwrap().gid, 77);
        assert_eq!(r("app:audio").unwrap(), ExecUser { uid: 1000, gid: 29, groups: vec![29], home: "/home/app".into() });
        assert_eq!(resolve("5", None, None).unwrap().uid, 5);
    }

    #[test]
    fn unknown_names_are_clear_errors() {
        assert!(r("ghost").unwrap_err().to_string().contains("unable to find user ghost"));
        assert!(r("app:ghosts").unwrap_err().to_string().contains("unable to find group ghosts"));
        assert!(resolve("app", None, None).is_err());
    }
}
