//! Differential testing against kernel overlayfs (`index=on,redirect_dir=on`): random lower
//! stacks, random operation sequences, applied to both mounts. Every operation's result (value
//! or errno) must agree, and so must the whole tree after the sequence, after a remount of
//! shalefs, and when kernel overlayfs mounts the upper shalefs wrote.
//!
//! nlink is compared too, except where shalefs differs on purpose; every fourth sequence (every
//! other with metacopy) is followed by a second one over a stack topped by its upper.
//!
//! Seeds are reproducible: `SHALEFS_DIFF_SEEDS=N` runs more sequences, `SHALEFS_DIFF_SEED=S`
//! runs one.

use std::ffi::{CString, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::util::tree::assert_same_content;
use crate::util::{Encoding, KernelOverlay, LayerSpec, ShaleMount, TestDir, Tree, assert_same_tree};

/// xorshift64*: small, seeded, reproducible.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len() as u64) as usize]
    }
}

const NAMES: [&str; 3] = ["a", "b", "c"];

fn random_path(rng: &mut Rng) -> String {
    let depth = 1 + rng.below(3);
    (0..depth).map(|_| *rng.pick(&NAMES)).collect::<Vec<_>>().join("/")
}

fn parent(path: &str) -> Option<&str> {
    path.rsplit_once('/').map(|(p, _)| p)
}

/// A random layer over the small name space.
fn random_layer(rng: &mut Rng) -> LayerSpec {
    let mut spec = LayerSpec::new();
    let mut kinds: std::collections::BTreeMap<String, &str> = Default::default();
    for _ in 0..10 {
        let path = random_path(rng);
        // Parents must be directories in this layer too.
        let mut ok = true;
        let mut p = parent(&path);
        while let Some(dir) = p {
            match kinds.get(dir) {
                Some(&"dir") => {}
                Some(_) => ok = false,
                None => {}
            }
            p = parent(dir);
        }
        if !ok || kinds.contains_key(&path) || kinds.keys().any(|k| k.starts_with(&format!("{path}/"))) {
            continue;
        }
        let mut p = parent(&path);
        while let Some(dir) = p {
            kinds.insert(dir.to_string(), "dir");
            spec = spec.dir(dir);
            p = parent(dir);
        }
        let roll = rng.below(100);
        let kind = match roll {
            0..=34 => {
                spec = spec.file(&path, format!("{path} {}\n", rng.below(1000)));
                if rng.below(4) == 0 {
                    spec = spec.xattr(&path, "user.tag", format!("v{}", rng.below(10)));
                }
                "file"
            }
            35..=52 => {
                spec = spec.dir(&path);
                "dir"
            }
            53..=59 => {
                spec = spec.opaque(&path);
                "dir"
            }
            60..=67 => {
                spec = spec.symlink(&path, *rng.pick(&NAMES));
                "symlink"
            }
            68..=79 => {
                spec = spec.whiteout(&path);
                "whiteout"
            }
            _ => {
                let files: Vec<String> = kinds.iter().filter(|(_, k)| **k == "file").map(|(p, _)| p.clone()).collect();
                if files.is_empty() {
                    continue;
                }
                spec = spec.hardlink(rng.pick(&files).clone(), &path);
                "file"
            }
        };
        kinds.insert(path, kind);
    }
    spec
}

#[derive(Debug, Clone)]
enum Op {
    Write { path: String, data: String, append: bool, excl: bool },
    Read(String),
    Stat(String),
    Mkdir(String),
    Rmdir(String),
    Unlink(String),
    Rename { from: String, to: String, flags: u32 },
    Link { from: String, to: String },
    Symlink { target: String, path: String },
    Chmod(String, u32),
    Chown(String, u32, u32),
    Truncate(String, u64),
    SetXattr(String, String),
    RemoveXattr(String),
    Mkfifo(String),
    List(String),
}

fn random_op(rng: &mut Rng) -> Op {
    let p = random_path(rng);
    random_op_at(rng, p)
}

/// With metacopy, what matters is what follows a metadata change of a lower file: half the time
/// a chmod, chown or xattr change of one of `lower_files` comes first, then any operation on the
/// same path.
fn random_ops(rng: &mut Rng, n: usize, metacopy: bool, lower_files: &[String]) -> Vec<Op> {
    let mut ops = Vec::with_capacity(n);
    while ops.len() < n {
        if !lower_files.is_empty() && rng.below(3) == 0 {
            ops.extend(lookup_then_change(rng, lower_files));
        } else if metacopy && !lower_files.is_empty() && rng.below(2) == 0 {
            let p = rng.pick(lower_files).clone();
            ops.push(match rng.below(3) {
                0 => Op::Chmod(p.clone(), *rng.pick(&[0o600, 0o755, 0o640])),
                1 => Op::Chown(p.clone(), *rng.pick(&[1000, 65534]), 1000),
                _ => Op::SetXattr(p.clone(), format!("m{}", rng.below(5))),
            });
            ops.push(random_op_at(rng, p));
        } else {
            ops.push(random_op(rng));
        }
    }
    ops
}

/// The kernel's node for a file remembers the name it was looked up by: look a lower file (a
/// hard link, often) up, remove or move it, its directory or another name, then change it
/// through a name that may be left. A write after such moves once found no name to copy up.
fn lookup_then_change(rng: &mut Rng, lower_files: &[String]) -> Vec<Op> {
    let (first, second) = (rng.pick(lower_files).clone(), rng.pick(lower_files).clone());
    let mut ops = vec![Op::Stat(first.clone())];
    ops.push(match rng.below(4) {
        0 => Op::Unlink(second.clone()),
        1 => Op::Rename { from: second.clone(), to: random_path(rng), flags: 0 },
        _ => Op::Rename { from: parent(&second).unwrap_or(&second).to_string(), to: random_path(rng), flags: 0 },
    });
    if rng.below(2) == 0 {
        ops.push(Op::Rename { from: parent(&first).unwrap_or(&first).to_string(), to: random_path(rng), flags: 0 });
    }
    let target = if rng.below(2) == 0 { rng.pick(lower_files).clone() } else { random_path(rng) };
    ops.push(Op::Stat(target.clone()));
    ops.push(match rng.below(3) {
        0 => Op::Write { path: target, data: "appended\n".into(), append: true, excl: false },
        1 => Op::Truncate(target, 2),
        _ => Op::Chmod(target, 0o600),
    });
    ops
}

fn random_op_at(rng: &mut Rng, p: String) -> Op {
    match rng.below(17) {
        0 | 1 => Op::Write { path: p, data: format!("w{}\n", rng.below(100)), append: rng.below(2) == 0, excl: rng.below(5) == 0 },
        2 => Op::Read(p),
        3 => Op::Stat(p),
        4 => Op::Mkdir(p),
        5 => Op::Rmdir(p),
        6 | 7 => Op::Unlink(p),
        8 | 9 => {
            let flags = match rng.below(6) {
                0 => libc::RENAME_NOREPLACE,
                1 => libc::RENAME_EXCHANGE,
                _ => 0,
            };
            Op::Rename { from: p, to: random_path(rng), flags }
        }
        10 => Op::Link { from: p, to: random_path(rng) },
        11 => Op::Symlink { target: rng.pick(&NAMES).to_string(), path: p },
        12 => Op::Chmod(p, *rng.pick(&[0o600, 0o755, 0o4755, 0o640])),
        13 => Op::Chown(p, *rng.pick(&[0, 1000, 65534]), *rng.pick(&[0, 1000])),
        14 => Op::Truncate(p, rng.below(3) * 3),
        15 => if rng.below(2) == 0 { Op::SetXattr(p, format!("x{}", rng.below(5))) } else { Op::RemoveXattr(p) },
        _ => if rng.below(2) == 0 { Op::Mkfifo(p) } else { Op::List(p) },
    }
}

fn cpath(root: &Path, rel: &str) -> CString {
    CString::new(root.join(rel).as_os_str().as_bytes()).unwrap_or_default()
}

fn errno<T>(r: std::io::Result<T>) -> Result<T, i32> {
    r.map_err(|e| e.raw_os_error().unwrap_or(-1))
}

fn libc_result(ret: libc::c_int) -> Result<String, i32> {
    if ret < 0 { Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)) } else { Ok(String::new()) }
}

/// Apply one operation under `root`; what it returned, as a comparable string or errno.
fn apply(root: &Path, op: &Op) -> Result<String, i32> {
    use std::io::{Read, Write};
    match op {
        Op::Write { path, data, append, excl } => {
            let mut o = std::fs::OpenOptions::new();
            o.write(true).custom_flags(libc::O_NONBLOCK);
            match (append, excl) {
                (_, true) => o.create_new(true),
                (true, false) => o.append(true).create(true),
                (false, false) => o.truncate(true).create(true),
            };
            let mut f = errno(o.open(root.join(path)))?;
            errno(f.write_all(data.as_bytes()))?;
            Ok(String::new())
        }
        Op::Read(path) => {
            let mut f = errno(std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(root.join(path)))?;
            let mut s = Vec::new();
            errno(f.read_to_end(&mut s))?;
            Ok(String::from_utf8_lossy(&s).into_owned())
        }
        Op::Stat(path) => {
            let m = errno(std::fs::symlink_metadata(root.join(path)))?;
            if m.is_dir() {
                return Ok(format!("mode={:o} uid={} gid={}", m.mode(), m.uid(), m.gid()));
            }
            Ok(format!("mode={:o} uid={} gid={} size={} nlink={}", m.mode(), m.uid(), m.gid(), m.size(), m.nlink()))
        }
        Op::Mkdir(path) => errno(std::fs::create_dir(root.join(path))).map(|_| String::new()),
        Op::Rmdir(path) => errno(std::fs::remove_dir(root.join(path))).map(|_| String::new()),
        Op::Unlink(path) => errno(std::fs::remove_file(root.join(path))).map(|_| String::new()),
        Op::Rename { from, to, flags } => {
            let (a, b) = (cpath(root, from), cpath(root, to));
            // SAFETY: both paths are NUL-terminated C strings.
            libc_result(unsafe { libc::renameat2(libc::AT_FDCWD, a.as_ptr(), libc::AT_FDCWD, b.as_ptr(), *flags) })
        }
        Op::Link { from, to } => errno(std::fs::hard_link(root.join(from), root.join(to))).map(|_| String::new()),
        Op::Symlink { target, path } => errno(std::os::unix::fs::symlink(target, root.join(path))).map(|_| String::new()),
        Op::Chmod(path, mode) => {
            let c = cpath(root, path);
            // SAFETY: `c` is NUL-terminated.
            libc_result(unsafe { libc::chmod(c.as_ptr(), *mode) })
        }
        Op::Chown(path, uid, gid) => errno(std::os::unix::fs::lchown(root.join(path), Some(*uid), Some(*gid))).map(|_| String::new()),
        Op::Truncate(path, len) => {
            let c = cpath(root, path);
            // SAFETY: `c` is NUL-terminated.
            libc_result(unsafe { libc::truncate(c.as_ptr(), *len as i64) })
        }
        Op::SetXattr(path, value) => {
            let c = cpath(root, path);
            // SAFETY: all pointers are valid for the lengths given.
            libc_result(unsafe { libc::lsetxattr(c.as_ptr(), c"user.tag".as_ptr(), value.as_ptr().cast(), value.len(), 0) })
        }
        Op::RemoveXattr(path) => {
            let c = cpath(root, path);
            // SAFETY: both strings are NUL-terminated.
            libc_result(unsafe { libc::lremovexattr(c.as_ptr(), c"user.tag".as_ptr()) })
        }
        Op::Mkfifo(path) => {
            let c = cpath(root, path);
            // SAFETY: `c` is NUL-terminated.
            libc_result(unsafe { libc::mkfifo(c.as_ptr(), 0o644) })
        }
        Op::List(path) => {
            let mut names: Vec<String> = errno(std::fs::read_dir(root.join(path)))?
                .filter_map(|e| e.ok())
                .filter(|e| std::fs::symlink_metadata(e.path()).is_ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            Ok(names.join(","))
        }
    }
}

/// Times are left out of the comparison: the two mounts ran the same operations at slightly
/// different moments.
fn timeless(mut t: Tree) -> Tree {
    for e in t.entries.values_mut() {
        e.mtime = (0, 0);
    }
    t
}

/// Where st_nlink differs on purpose (README, "Deliberate differences"), and nowhere else.
/// 2: a file some of whose lower names the lowers themselves hide: after its copy-up shalefs
/// counts the names the merged view has, overlayfs' index the hidden ones too. 3: the other
/// names of a hard-linked file are copied up at once, so their directories become merged
/// (st_nlink 1) sooner.
#[derive(Debug, Default)]
struct NlinkExcuses {
    /// Kernel inode numbers of lower files some of whose names the lowers hide.
    partly_hidden: std::collections::BTreeSet<u64>,
    /// The lowers have hard-linked files.
    any_links: bool,
}

impl NlinkExcuses {
    /// From the kernel's view of the lowers before the sequence.
    fn of(initial: &Tree) -> NlinkExcuses {
        let mut names: std::collections::BTreeMap<u64, u64> = Default::default();
        for (p, e) in &initial.entries {
            if e.mode & libc::S_IFMT != libc::S_IFDIR {
                *names.entry(initial.inos[p]).or_default() += 1;
            }
        }
        let mut x = NlinkExcuses::default();
        for (p, e) in &initial.entries {
            if e.mode & libc::S_IFMT != libc::S_IFDIR && e.nlink > 1 {
                x.any_links = true;
                if names[&initial.inos[p]] != e.nlink {
                    x.partly_hidden.insert(initial.inos[p]);
                }
            }
        }
        x
    }

    fn excused(&self, is_dir: bool, kernel_ino: u64, ours: u64, kernel: u64) -> bool {
        if is_dir { self.any_links && (ours == 1 || kernel == 1) } else { self.partly_hidden.contains(&kernel_ino) }
    }

    /// Blank the link counts of `ours` and `kernel` where they may differ on purpose.
    fn apply(&self, ours: &mut Tree, kernel: &mut Tree) {
        for (p, k) in kernel.entries.iter_mut() {
            let Some(o) = ours.entries.get_mut(p) else { continue };
            if self.excused(k.mode & libc::S_IFMT == libc::S_IFDIR, kernel.inos[p], o.nlink, k.nlink) {
                (o.nlink, k.nlink) = (0, 0);
            }
        }
    }

    /// An operation's results agree, or differ only in a link count that may.
    fn results_agree(&self, op: &Op, kernel_root: &Path, got: &Result<String, i32>, want: &Result<String, i32>) -> bool {
        if got == want {
            return true;
        }
        let (Op::Stat(path), Ok(g), Ok(w)) = (op, got, want) else { return false };
        let strip = |s: &str| s.split(" nlink=").next().unwrap_or_default().to_string();
        let ino = std::fs::symlink_metadata(kernel_root.join(path)).map_or(0, |m| m.ino());
        strip(g) == strip(w) && self.partly_hidden.contains(&ino)
    }
}

/// The mount options both filesystems get besides the layers: nothing, or `metacopy=on`.
fn extra(metacopy: bool) -> &'static str {
    if metacopy { ",metacopy=on" } else { "" }
}

fn upper_args(lowers: &[PathBuf], upper: &Path, work: &Path, metacopy: bool) -> Vec<OsString> {
    let lowerdir = lowers.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(":");
    let opts = format!("lowerdir={lowerdir},upperdir={},workdir={}{}", upper.display(), work.display(), extra(metacopy));
    vec!["-o".into(), opts.into()]
}

fn kernel_options(lowers: &[PathBuf], upper: &Path, work: &Path, metacopy: bool) -> String {
    let lowerdir = lowers.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(":");
    format!("lowerdir={lowerdir},upperdir={},workdir={},index=on,redirect_dir=on{}", upper.display(), work.display(), extra(metacopy))
}

fn run_sequence(seed: u64) {
    run_sequence_with(seed, false);
}

/// One sequence over random lowers; for every other seed (every fourth without metacopy) a
/// second one follows over a stack whose top lower is the first one's upper — kernel
/// overlayfs' or shalefs', in turn — as a committed container or a rotated stack would be.
fn run_sequence_with(seed: u64, metacopy: bool) {
    let mut rng = Rng::new(seed);
    let tag = format!("{seed}{}", if metacopy { "-metacopy" } else { "" });
    let dir = TestDir::new(&format!("diff{tag}"));
    let lowers: Vec<PathBuf> = (0..3)
        .map(|i| {
            let p = dir.path().join(format!("l{i}"));
            random_layer(&mut rng).build(&p, Encoding::Overlay);
            p
        })
        .collect();
    // How a failure names this run: SHALEFS_DIFF_SEED=N reruns it.
    let name = format!("seed {seed}{}", extra(metacopy));
    let (ku, su) = run_stage(&name, &dir, "s1", &lowers, &mut rng, metacopy);
    // Seeds are split across the tests by `seed % 4`: pick by the rest, so each test gets some.
    if !(seed / 4).is_multiple_of(if metacopy { 2 } else { 4 }) {
        return;
    }
    let (by, earlier) = if seed.is_multiple_of(2) { ("kernel overlayfs", ku) } else { ("shalefs", su) };
    // A copy (xattrs, hard links and devices kept): kernel overlayfs refuses a lower that is
    // still marked in use as an upper while its last mount is going away.
    let copy = dir.path().join("s1-upper-as-lower");
    crate::util::run_ok(std::process::Command::new("cp").arg("-a").arg(&earlier).arg(&copy));
    let stacked: Vec<PathBuf> = std::iter::once(copy).chain(lowers).collect();
    run_stage(&format!("{name}, second sequence over {by}' upper"), &dir, "s2", &stacked, &mut rng, metacopy);
}

/// Apply 25 random operations to shalefs and kernel overlayfs over `lowers`, each with an
/// upper of its own, and compare; returns the two uppers (kernel overlayfs', shalefs').
fn run_stage(name: &str, dir: &TestDir, stage: &str, lowers: &[PathBuf], rng: &mut Rng, metacopy: bool) -> (PathBuf, PathBuf) {
    let mk = |what: &str| dir.mkdir(&format!("{stage}-{what}"));
    let (ku, kw, km) = (mk("k-upper"), mk("k-work"), mk("k-mnt"));
    let (su, sw, sm) = (mk("s-upper"), mk("s-work"), mk("s-mnt"));
    let lower_files: Vec<String> = lowers
        .iter()
        .flat_map(|l| Tree::walk(l).entries.into_iter().filter(|(_, e)| e.mode & libc::S_IFMT == libc::S_IFREG).map(|(p, _)| String::from_utf8_lossy(&p).into_owned()))
        .collect();
    let ops = random_ops(rng, 25, metacopy, &lower_files);
    let (mut kernel_tree, excuses);
    {
        let _k = KernelOverlay::mount(&kernel_options(lowers, &ku, &kw, metacopy), &km);
        excuses = NlinkExcuses::of(&Tree::walk(&km));
        let s = ShaleMount::foreground(&upper_args(lowers, &su, &sw, metacopy), &sm).unwrap_or_else(|e| panic!("{name}: {e}"));
        for (i, op) in ops.iter().enumerate() {
            let want = apply(&km, op);
            let got = apply(&sm, op);
            assert!(
                excuses.results_agree(op, &km, &got, &want),
                "{name}, op {i} {op:?}: shalefs {got:?} vs kernel {want:?}\nops so far: {:?}",
                &ops[..=i]
            );
        }
        kernel_tree = timeless(Tree::walk(&km));
        let mut ours = timeless(Tree::walk(&sm));
        excuses.apply(&mut ours, &mut kernel_tree);
        assert_same_or_explain(name, "after the sequence", &ours, &kernel_tree, &ops);
        drop(s);
    }
    {
        let _s = ShaleMount::foreground(&upper_args(lowers, &su, &sw, metacopy), &sm).unwrap_or_else(|e| panic!("{name}: {e}"));
        let mut ours = timeless(Tree::walk(&sm));
        excuses.apply(&mut ours, &mut kernel_tree);
        assert_same_or_explain(name, "after a remount", &ours, &kernel_tree, &ops);
    }
    let kw2 = mk("k-work2");
    {
        let _k = KernelOverlay::mount(&kernel_options(lowers, &su, &kw2, metacopy), &km);
        // Without its index, kernel overlayfs counts the links of copied-up files its own way.
        let mut kernel_on_ours = timeless(Tree::walk(&km));
        for t in [&mut kernel_on_ours, &mut kernel_tree] {
            t.entries.values_mut().for_each(|e| e.nlink = 0);
        }
        explain(name, "with kernel overlayfs on shalefs' upper", &ops, || assert_same_content(&kernel_on_ours, &kernel_tree));
    }
    (ku, su)
}

fn assert_same_or_explain(name: &str, when: &str, ours: &Tree, oracle: &Tree, ops: &[Op]) {
    explain(name, when, ops, || assert_same_tree(ours, oracle));
}

fn explain(name: &str, when: &str, ops: &[Op], check: impl FnOnce()) {
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(check));
    if let Err(e) = r {
        let msg = e.downcast_ref::<String>().cloned().unwrap_or_default();
        panic!("{name}, {when}: {msg}\nops: {ops:#?}");
    }
}

fn seeds(part: u64, parts: u64) -> Vec<u64> {
    if let Some(one) = std::env::var("SHALEFS_DIFF_SEED").ok().and_then(|s| s.parse().ok()) {
        return if part == 0 { vec![one] } else { vec![] };
    }
    let total: u64 = std::env::var("SHALEFS_DIFF_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(200);
    (0..total).filter(|s| s % parts == part).collect()
}

#[test]
fn random_sequences_match_kernel_overlayfs_part0() {
    seeds(0, 4).into_iter().for_each(run_sequence);
}

#[test]
fn random_sequences_match_kernel_overlayfs_part1() {
    seeds(1, 4).into_iter().for_each(run_sequence);
}

#[test]
fn random_sequences_match_kernel_overlayfs_part2() {
    seeds(2, 4).into_iter().for_each(run_sequence);
}

#[test]
fn random_sequences_match_kernel_overlayfs_part3() {
    seeds(3, 4).into_iter().for_each(run_sequence);
}

/// The same against kernel overlayfs with `metacopy=on`, shalefs too: metadata changes leave
/// the data below until a write, through renames, links, truncations and removals.
#[test]
fn random_sequences_match_kernel_overlayfs_with_metacopy_part0() {
    seeds(0, 4).into_iter().for_each(|s| run_sequence_with(s, true));
}

#[test]
fn random_sequences_match_kernel_overlayfs_with_metacopy_part1() {
    seeds(1, 4).into_iter().for_each(|s| run_sequence_with(s, true));
}
