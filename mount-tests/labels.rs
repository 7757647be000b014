//! SELinux labels (`security.selinux`). Once shalefs' scan found no label in any layer, a
//! getxattr of it is ENOTSUP, so `ls -l` asks once per mount instead of once per file; every
//! tool of this machine that reads labels or xattrs (ls -l/-Z, cp -a, tar --selinux, rsync -X,
//! getfattr) must print and exit as it does on kernel overlayfs over the same layers. A stack
//! with a label — in a lower, or set through the mount after the scan — answers as stored,
//! as the kernel does. The requests are counted in the daemon's debug log (one line per FUSE
//! request, written by fuser as it reads the request), never inferred from timing.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::util::{Encoding, KernelOverlay, LayerSpec, ShaleMount, TestDir, run_ok};

const LABEL: &str = "system_u:object_r:etc_t:s0";
const UNLABELLED: &str = "no layer carries security.selinux labels";
const LABELLED: &str = "carries security.selinux labels";

/// Two layers and their tree: files, a hard link pair, a symlink, a FIFO, user and trusted
/// xattrs, a whiteout, an opaque directory; `label` puts a label on `tree/etc/passwd`.
fn layers(dir: &TestDir, label: bool) -> (PathBuf, PathBuf) {
    let (top, bottom) = (dir.path().join("top"), dir.path().join("bottom"));
    let mut b = LayerSpec::new()
        .file("tree/etc/passwd", "root:x:0:0:root:/root:/bin/sh\n")
        .file("tree/etc/hosts", "127.0.0.1 localhost\n")
        .file("tree/etc/gone", "whited out above\n")
        .hardlink("tree/etc/passwd", "tree/etc/passwd.link")
        .symlink("tree/etc/motd", "hosts")
        .fifo("tree/run/fifo")
        .dir("tree/var/empty")
        .file("tree/opt/old", "hidden by an opaque dir\n")
        .xattr("tree/etc/passwd", "user.note", "kept")
        .xattr("tree/etc/passwd", "trusted.note", "root only")
        .chmod("tree/etc/passwd", 0o644);
    for i in 0..30 {
        b = b.file(format!("tree/usr/lib/lib{i:02}.so"), format!("library {i}\n"));
    }
    if label {
        b = b.xattr("tree/etc/passwd", "security.selinux", LABEL);
    }
    b.build(&bottom, Encoding::Overlay);
    LayerSpec::new()
        .file("tree/etc/hosts", "127.0.0.1 localhost top\n")
        .whiteout("tree/etc/gone")
        .opaque("tree/opt")
        .file("tree/opt/new", "from the top layer\n")
        .build(&top, Encoding::Overlay);
    (top, bottom)
}

/// shalefs (logging every request) and kernel overlayfs over the same lowers, each with an
/// upper of its own.
struct Pair {
    shale: ShaleMount,
    _kernel: KernelOverlay,
    kmnt: PathBuf,
    runs: std::cell::Cell<u32>,
    /// Last: removed only after both mounts are gone.
    dir: TestDir,
}

impl Pair {
    fn new(name: &str, label: bool) -> Pair {
        let dir = TestDir::new(name);
        let (top, bottom) = layers(&dir, label);
        let [su, sw, ku, kw, smnt, kmnt] = ["s-upper", "s-work", "k-upper", "k-work", "s-mnt", "k-mnt"].map(|d| dir.mkdir(d));
        let args: Vec<OsString> =
            vec!["--lower".into(), top.clone().into(), "--lower".into(), bottom.clone().into(), "--upper".into(), su.into(), "--work".into(), sw.into()];
        let shale = ShaleMount::foreground_logging(&args, &smnt, "debug").unwrap_or_else(|e| panic!("{e}"));
        let opts = format!("lowerdir={}:{},upperdir={},workdir={}", top.display(), bottom.display(), ku.display(), kw.display());
        let kernel = KernelOverlay::mount(&opts, &kmnt);
        Pair { shale, _kernel: kernel, kmnt, runs: std::cell::Cell::new(0), dir }
    }

    /// Wait for the label scan's verdict in the log.
    fn scanned(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let log = std::fs::read_to_string(&self.shale.log).unwrap_or_default();
            if let Some(line) = log.lines().find(|l| l.contains(UNLABELLED) || l.contains(LABELLED)) {
                return line.to_string();
            }
            assert!(Instant::now() < deadline, "no label scan result in the log within 20 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// GETXATTR requests for security.selinux the daemon has received so far.
    fn selinux_requests(&self) -> usize {
        let log = std::fs::read(&self.shale.log).unwrap_or_default();
        String::from_utf8_lossy(&log).lines().filter(|l| l.contains(r#"GETXATTR name "security.selinux""#)).count()
    }

    /// `sh -c SCRIPT` in both mounts; the same status, stdout and stderr (mount and output
    /// paths replaced) on both, returned.
    fn same(&self, script: &str) -> String {
        self.same_but(script, |s| s)
    }

    /// As [`Self::same`], both outputs passed through `clean` first.
    fn same_but(&self, script: &str, clean: impl Fn(String) -> String) -> String {
        let n = self.runs.get();
        self.runs.set(n + 1);
        let ours = clean(on(&self.shale.mnt, &self.dir.path().join(format!("out-s-{n}")), script));
        let kernel = clean(on(&self.kmnt, &self.dir.path().join(format!("out-k-{n}")), script));
        assert_eq!(ours, kernel, "`{script}` differs: shalefs first, kernel overlayfs second");
        ours
    }

    /// Requests for security.selinux made by `ls -lR .` in shalefs, and the entries it listed.
    fn ls_lr_requests(&self) -> (usize, usize) {
        let before = self.selinux_requests();
        let out = on(&self.shale.mnt, &self.dir.path().join("out-count"), "ls -lR .");
        let entries = out.lines().filter(|l| l.starts_with(['-', 'd', 'l', 'p'])).count();
        (self.selinux_requests() - before, entries)
    }
}

/// Run `script` in `mnt` with `$OUT` a fresh directory: "status N", stdout and stderr, with the
/// two paths replaced by MNT and OUT, and output records (see [`sorted_records`]) sorted.
fn on(mnt: &Path, out: &Path, script: &str) -> String {
    std::fs::create_dir_all(out).expect("output dir");
    let o = Command::new("sh").arg("-c").arg(script).current_dir(mnt).env("OUT", out).env("LC_ALL", "C").output().expect("run sh");
    let clean = |b: &[u8]| {
        let s = String::from_utf8_lossy(b).replace(&*out.to_string_lossy(), "OUT").replace(&*mnt.to_string_lossy(), "MNT");
        sorted_records(&s)
    };
    format!("status {:?}\nstdout:\n{}stderr:\n{}", o.status.code(), clean(&o.stdout), clean(&o.stderr))
}

/// Directory order is each filesystem's own (`ls` and `rsync` sort; `tar`, `cp` and
/// `getfattr -R` do not), so records are sorted: paragraphs (between blank lines; a getfattr
/// `# file:` block is one, its attribute lines sorted), and within a paragraph the lines with
/// their indented continuation lines (tar's `  x:` lines).
fn sorted_records(text: &str) -> String {
    let mut paras: Vec<String> = text
        .split("\n\n")
        .filter(|p| !p.trim().is_empty())
        .map(|para| {
            let lines: Vec<&str> = para.lines().collect();
            if lines.first().is_some_and(|l| l.starts_with("# file:")) {
                let mut attrs = lines[1..].to_vec();
                attrs.sort();
                return std::iter::once(lines[0]).chain(attrs).collect::<Vec<_>>().join("\n");
            }
            let mut records: Vec<String> = Vec::new();
            for line in lines {
                match records.last_mut() {
                    Some(r) if line.starts_with(' ') => {
                        r.push('\n');
                        r.push_str(line);
                    }
                    _ => records.push(line.to_string()),
                }
            }
            records.sort();
            records.join("\n")
        })
        .collect();
    paras.sort();
    paras.join("\n\n") + "\n"
}

/// What the tools of this machine print on an unlabelled stack: ls (-l, -lR, -Z), cp -a, tar
/// --xattrs --selinux (made and listed back), rsync -aX and getfattr -d -m -.
fn tool_scripts() -> Vec<&'static str> {
    vec![
        "ls -l tree/etc",
        "ls -lR .",
        "ls -ZR .",
        "ls -lZd tree tree/etc/passwd tree/etc/motd tree/run/fifo",
        r#"cp -a tree "$OUT/cp" && cd "$OUT/cp" && ls -lR --time-style=full-iso . && getfattr -R -h -d -m - . 2>&1 && find . -type f -exec md5sum {} +"#,
        r#"tar --xattrs --xattrs-include='*' --selinux -cf "$OUT/t.tar" tree && tar --xattrs --xattrs-include='*' --selinux -tvvf "$OUT/t.tar""#,
        // rsync gives symlinks and some directories the copy's own time: no times here.
        r#"rsync -aX tree/ "$OUT/rs/" && cd "$OUT/rs" && ls -lR --time-style=+ . && getfattr -R -h -d -m - . 2>&1 && find . -type f -exec md5sum {} +"#,
        "getfattr -R -h -d -m - tree 2>&1",
    ]
}

#[test]
fn unlabelled_stack_answers_selinux_enotsup_and_tools_print_what_they_print_on_kernel_overlayfs() {
    let p = Pair::new("labels-none", false);
    let verdict = p.scanned();
    assert!(verdict.contains(UNLABELLED), "{verdict}");
    for script in tool_scripts() {
        p.same(script);
    }
    // ls -lR asks once for the whole tree, not once per entry.
    let (asked, entries) = p.ls_lr_requests();
    assert!(entries >= 40, "ls -lR listed {entries} entries");
    assert_eq!(asked, 1, "ls -lR of {entries} entries asked {asked} times for security.selinux");
    // The answer the README names as the one difference a person can see.
    let ours = on(&p.shale.mnt, &p.dir.path().join("out-g"), "getfattr -n security.selinux tree/etc/passwd");
    let kernel = on(&p.kmnt, &p.dir.path().join("out-gk"), "getfattr -n security.selinux tree/etc/passwd");
    assert!(ours.contains("tree/etc/passwd: security.selinux: Operation not supported"), "{ours}");
    assert!(kernel.contains("tree/etc/passwd: security.selinux: No such attribute"), "{kernel}");
}

#[test]
fn labelled_lower_answers_its_label_and_enodata_for_the_rest_as_kernel_overlayfs() {
    let p = Pair::new("labels-lower", true);
    let verdict = p.scanned();
    assert!(verdict.contains(LABELLED) && !verdict.contains(UNLABELLED), "{verdict}");
    let got = p.same("getfattr -n security.selinux tree/etc/passwd; echo $?; getfattr -n security.selinux tree/etc/hosts; echo $?");
    assert!(got.contains(&format!("security.selinux=\"{LABEL}\"")), "{got}");
    assert!(got.contains("tree/etc/hosts: security.selinux: No such attribute"), "{got}");
    for script in tool_scripts() {
        p.same(script);
    }
    let listed = p.same("ls -Z tree/etc/passwd tree/etc/hosts");
    assert!(listed.contains(&format!("{LABEL} tree/etc/passwd")), "{listed}");
    // Every entry is asked (and `.` itself), as on any filesystem whose files answer ENODATA.
    let (asked, entries) = p.ls_lr_requests();
    assert_eq!(asked, entries + 1, "ls -lR asked {asked} times for security.selinux over {entries} entries");
}

#[test]
fn a_label_set_through_the_mount_after_the_scan_is_read_back_and_the_rest_answer_as_on_kernel_overlayfs() {
    let p = Pair::new("labels-set", false);
    assert!(p.scanned().contains(UNLABELLED));
    // A copy-up of a lower file with a new label, and a label on a file made in the upper.
    // (The new file's time is set, so listings match to the nanosecond; not a hard-linked
    // file, whose other names kernel overlayfs without an index leaves below.)
    p.same(&format!("setfattr -n security.selinux -v {LABEL} tree/etc/hosts && echo new > new && touch -d @1700000000 new && setfattr -n security.selinux -v {LABEL} new; echo $?"));
    let got = p.same("getfattr -n security.selinux tree/etc/hosts new; echo $?; getfattr -n security.selinux tree/etc/passwd tree/etc/motd; echo $?");
    assert!(got.contains(&format!("# file: new\nsecurity.selinux=\"{LABEL}\"")), "{got}");
    assert!(got.contains(&format!("# file: tree/etc/hosts\nsecurity.selinux=\"{LABEL}\"")), "{got}");
    assert!(got.contains("tree/etc/passwd: security.selinux: No such attribute"), "{got}");
    // `ls -l`'s totals are left out: a copied-up object's st_blocks count the overlay xattrs
    // each writes into the upper (kernel overlayfs' origin and impure push the label out of
    // the inode into a block of its own; shalefs writes fewer).
    let no_totals = |s: String| s.lines().filter(|l| !l.starts_with("total ")).collect::<Vec<_>>().join("\n");
    for script in tool_scripts() {
        p.same_but(script, no_totals);
    }
    let (asked, entries) = p.ls_lr_requests();
    assert_eq!(asked, entries + 1, "after a label was set, ls -lR asked {asked} times over {entries} entries");
}

/// The scan of a store layer is kept in the store (`layers/<hex>.labels.json`) and used by the
/// next mount instead of scanning again; it goes with the layer.
#[test]
fn a_store_layer_is_scanned_once_and_its_result_kept_with_it() {
    let dir = TestDir::new("labels-store");
    let store = dir.mkdir("store");
    let src = dir.mkdir("src");
    for i in 0..20 {
        std::fs::create_dir_all(src.join(format!("d{i}"))).unwrap();
        std::fs::write(src.join(format!("d{i}/f")), "x\n").unwrap();
    }
    let tar = dir.path().join("rootfs.tar");
    run_ok(Command::new("tar").arg("-C").arg(&src).arg("-cf").arg(&tar).arg("."));
    let shalefs = || {
        let mut c = Command::new(crate::util::shalefs_bin());
        c.arg("--root").arg(&store);
        c
    };
    run_ok(shalefs().arg("import").arg(&tar).arg("localhost/labels:1"));
    let records = || -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(store.join("layers")).unwrap().map(|e| e.unwrap().path()).filter(|p| p.to_string_lossy().ends_with(".labels.json")).collect();
        v.sort();
        v
    };
    assert!(records().is_empty());
    let mount = |name: &str| {
        let mnt = dir.mkdir(&format!("mnt-{name}"));
        let args: Vec<OsString> = vec!["--root".into(), store.clone().into(), "localhost/labels:1".into(), "--name".into(), name.into()];
        ShaleMount::foreground(&args, &mnt).unwrap_or_else(|e| panic!("{e}"))
    };
    let verdict = |m: &ShaleMount| {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let log = std::fs::read_to_string(&m.log).unwrap_or_default();
            if let Some(l) = log.lines().find(|l| l.contains(UNLABELLED) || l.contains(LABELLED)) {
                return l.to_string();
            }
            assert!(Instant::now() < deadline, "no label scan result within 20 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let getfattr = |m: &ShaleMount| String::from_utf8_lossy(&Command::new("getfattr").args(["-n", "security.selinux", "d0/f"]).current_dir(&m.mnt).output().unwrap().stderr).into_owned();
    {
        let m = mount("c1");
        let v = verdict(&m);
        assert!(v.contains(UNLABELLED) && v.contains("0 layers known from earlier scans"), "{v}");
        assert!(getfattr(&m).contains("Operation not supported"));
    }
    let kept = records();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(std::fs::read_to_string(&kept[0]).unwrap(), r#"{"selinux":false}"#);
    {
        // Only the new container's upper root is scanned.
        let m = mount("c2");
        let v = verdict(&m);
        assert!(v.contains("(1 objects scanned") && v.contains("1 layers known from earlier scans"), "{v}");
    }
    // The kept record decides (layers never change): one saying "labelled" keeps ENODATA.
    std::fs::write(&kept[0], r#"{"selinux":true}"#).unwrap();
    {
        let m = mount("c3");
        let v = verdict(&m);
        assert!(v.contains("(known from an earlier scan)"), "{v}");
        assert!(getfattr(&m).contains("No such attribute"));
    }
    run_ok(shalefs().args(["rm", "c1", "c2", "c3"]));
    run_ok(shalefs().args(["rmi", "localhost/labels:1"]));
    assert!(records().is_empty(), "{:?}", records());
}
