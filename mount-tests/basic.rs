//! Everyday file operations through std::fs on a mount, against a model of what was written:
//! create, write, append, overwrite in the middle, truncate down and up, write past the end,
//! rename (files and directories, over existing ones too), remove, nested directories, long,
//! unicode and case-only-different names; the errnos of what FAT cannot do; `df` against the
//! cluster counts fsck sees; the virtual xattrs.

use std::fs::{self, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;

use crate::common::readers::{Node, Tree};
use crate::harness::{Fat, Mounted, Rng, cluster_size, host_tree, names, optional_tool, q, sh};

/// Fails unless `r` is an error with `errno`.
#[track_caller]
pub(crate) fn expect_errno<T: std::fmt::Debug>(r: io::Result<T>, errno: i32, what: &str) {
    match r {
        Err(e) if e.raw_os_error() == Some(errno) => {}
        Err(e) => panic!(
            "{what}: expected errno {errno} ({}), got {e} ({:?})",
            io::Error::from_raw_os_error(errno),
            e.raw_os_error()
        ),
        Ok(v) => panic!(
            "{what}: expected errno {errno} ({}), but it succeeded: {v:?}",
            io::Error::from_raw_os_error(errno)
        ),
    }
}

/// A test's record of what the mount should hold.
#[derive(Default)]
pub(crate) struct Model(pub(crate) Tree);

impl Model {
    pub(crate) fn file(&mut self, path: &str, data: &[u8]) {
        self.0.insert(path.to_owned(), Node::File(data.to_vec()));
    }

    pub(crate) fn dir(&mut self, path: &str) {
        self.0.insert(path.to_owned(), Node::Dir);
    }

    /// Removes `path` and everything under it.
    pub(crate) fn remove(&mut self, path: &str) {
        let below = format!("{path}/");
        self.0.retain(|p, _| p != path && !p.starts_with(&below));
    }

    /// Moves `from` (and everything under it) to `to`, replacing what `to` was.
    pub(crate) fn rename(&mut self, from: &str, to: &str) {
        self.remove(to);
        let below = format!("{from}/");
        let moved: Vec<(String, Node)> = self
            .0
            .iter()
            .filter(|(p, _)| *p == from || p.starts_with(&below))
            .map(|(p, n)| (format!("{to}{}", &p[from.len()..]), n.clone()))
            .collect();
        self.remove(from);
        self.0.extend(moved);
    }

    /// The bytes of the file at `path`.
    pub(crate) fn data(&self, path: &str) -> &[u8] {
        match self.0.get(path) {
            Some(Node::File(d)) => d,
            other => panic!("model: {path} is {other:?}, not a file"),
        }
    }
}

/// Names that need long entries, many of them non-ASCII, and 8.3 names in each case.
const NAMES: [&str; 12] = [
    "A long file name with spaces.text",
    "dots.in.the.name.tar.gz",
    "Ünïcødé ñame.txt",
    "日本語のファイル名.txt",
    "Ελληνικά και русский.md",
    "emoji 😀 outside the BMP.txt",
    ".hidden",
    "UPPER.TXT",
    "lower.txt",
    "Mixed.Txt",
    "name+with=odd;chars[1],2.txt",
    "x",
];

/// Runs the whole basic sequence on a fresh `fat` image mounted with `-o opts`.
pub(crate) fn basic(fat: Fat, opts: &str, era: &str) {
    let m = Mounted::new(fat, "basic", opts);
    let mut model = Model::default();
    let p = |rel: &str| m.path(rel.trim_start_matches('/'));
    let mut rng = Rng::new(0xba51c ^ fat as u64);

    // Create, write, read, append.
    fs::write(p("/hello.txt"), b"hello world\n").expect("write hello.txt");
    assert_eq!(fs::read(p("/hello.txt")).expect("read"), b"hello world\n");
    OpenOptions::new()
        .append(true)
        .open(p("/hello.txt"))
        .and_then(|mut f| f.write_all(b"and more\n"))
        .expect("append");
    model.file("/hello.txt", b"hello world\nand more\n");
    assert_eq!(
        fs::read(p("/hello.txt")).expect("read"),
        model.data("/hello.txt")
    );

    // Overwrite in the middle, shrink, extend (zeros), write past the end (zeros between).
    let mut big = rng.bytes(20_000);
    fs::write(p("/big.bin"), &big).expect("write big.bin");
    {
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(p("/big.bin"))
            .expect("open big.bin rw");
        f.seek(SeekFrom::Start(5_000)).expect("seek");
        f.write_all(&[b'X'; 100]).expect("overwrite");
        big[5_000..5_100].fill(b'X');
        let mut back = Vec::new();
        f.seek(SeekFrom::Start(0)).expect("seek");
        f.read_to_end(&mut back).expect("read back");
        assert!(back == big, "big.bin after the overwrite differs");
        f.set_len(3_000).expect("shrink");
        big.truncate(3_000);
        assert_eq!(f.metadata().expect("stat").len(), 3_000);
        f.set_len(20_000).expect("extend");
        big.resize(20_000, 0);
        f.seek(SeekFrom::Start(30_000)).expect("seek past the end");
        f.write_all(b"tail").expect("write past the end");
        big.resize(30_000, 0);
        big.extend_from_slice(b"tail");
    }
    let back = fs::read(p("/big.bin")).expect("read big.bin");
    assert_eq!(back.len(), big.len(), "big.bin size");
    assert!(
        back[3_000..30_000].iter().all(|&b| b == 0),
        "big.bin: the extension is not zeros"
    );
    assert!(back == big, "big.bin differs from the model");
    model.file("/big.bin", &big);

    // Renames: a file, a file over another, a file into a directory, a directory, a directory
    // over an empty one; over a non-empty one fails.
    fs::rename(p("/hello.txt"), p("/greeting.txt")).expect("rename file");
    model.rename("/hello.txt", "/greeting.txt");
    fs::write(p("/victim.txt"), b"to be replaced").expect("write victim");
    fs::rename(p("/greeting.txt"), p("/victim.txt")).expect("rename over a file");
    model.rename("/greeting.txt", "/victim.txt");
    assert!(
        !p("/greeting.txt").exists(),
        "greeting.txt still there after the rename"
    );
    fs::create_dir(p("/olddir")).expect("mkdir olddir");
    fs::write(p("/olddir/inside.txt"), b"inside").expect("write inside");
    model.dir("/olddir");
    model.file("/olddir/inside.txt", b"inside");
    fs::rename(p("/victim.txt"), p("/olddir/victim.txt")).expect("rename into a directory");
    model.rename("/victim.txt", "/olddir/victim.txt");
    fs::rename(p("/olddir"), p("/newdir")).expect("rename dir");
    model.rename("/olddir", "/newdir");
    fs::create_dir(p("/emptydst")).expect("mkdir emptydst");
    fs::rename(p("/newdir"), p("/emptydst")).expect("rename dir over an empty dir");
    model.rename("/newdir", "/emptydst");
    fs::create_dir(p("/full")).expect("mkdir full");
    fs::write(p("/full/f"), b"f").expect("write full/f");
    model.dir("/full");
    model.file("/full/f", b"f");
    expect_errno(
        fs::rename(p("/emptydst"), p("/full")),
        libc::ENOTEMPTY,
        "rename dir over a non-empty dir",
    );
    expect_errno(
        fs::rename(p("/emptydst"), p("/emptydst/sub")),
        libc::EINVAL,
        "rename a dir into itself",
    );

    // Removes.
    fs::write(p("/gone.txt"), b"short-lived").expect("write gone.txt");
    fs::remove_file(p("/gone.txt")).expect("remove_file");
    fs::create_dir(p("/gonedir")).expect("mkdir gonedir");
    fs::remove_dir(p("/gonedir")).expect("remove_dir");
    assert!(!p("/gone.txt").exists() && !p("/gonedir").exists());

    // Nested directories.
    fs::create_dir_all(p("/deep/a/b/c/d/e")).expect("create_dir_all");
    fs::write(p("/deep/a/b/c/d/e/leaf.txt"), b"leaf").expect("write leaf");
    for d in [
        "/deep",
        "/deep/a",
        "/deep/a/b",
        "/deep/a/b/c",
        "/deep/a/b/c/d",
    ] {
        model.dir(d);
    }
    model.dir("/deep/a/b/c/d/e");
    model.file("/deep/a/b/c/d/e/leaf.txt", b"leaf");

    // Long, unicode and 8.3 names, in a directory (FAT12/16 roots are small).
    fs::create_dir(p("/names")).expect("mkdir names");
    model.dir("/names");
    for name in NAMES {
        let path = format!("/names/{name}");
        fs::write(p(&path), name.as_bytes()).unwrap_or_else(|e| panic!("write {name:?}: {e}"));
        model.file(&path, name.as_bytes());
    }
    let long255 = "L".repeat(250) + ".text";
    fs::write(p(&format!("/names/{long255}")), b"255").expect("a 255-byte name");
    model.file(&format!("/names/{long255}"), b"255");
    // vfat's limit is 255 bytes of UTF-8 (v5.10 vfat_valid_longname), not 255 UTF-16 units:
    // 127 two-byte characters fit, 128 do not.
    let wide = "é".repeat(127);
    fs::write(p(&format!("/names/{wide}")), b"wide").expect("a 127-character, 254-byte name");
    model.file(&format!("/names/{wide}"), b"wide");
    expect_errno(
        fs::write(p(&format!("/names/{}", "é".repeat(128))), b""),
        libc::ENAMETOOLONG,
        "a 128-character, 256-byte name",
    );
    // Trailing dots are dropped, as vfat does: the file is listed without them and found
    // with or without them.
    fs::write(p("/names/trailing dots..."), b"dots").expect("a name ending in dots");
    model.file("/names/trailing dots", b"dots");
    assert_eq!(
        fs::read(p("/names/trailing dots")).expect("read without the dots"),
        b"dots"
    );
    assert_eq!(
        fs::read(p("/names/trailing dots.")).expect("read with a dot"),
        b"dots"
    );
    let want: std::collections::BTreeSet<String> = NAMES
        .iter()
        .map(|n| (*n).to_owned())
        .chain([long255.clone(), wide.clone(), "trailing dots".to_owned()])
        .collect();
    assert_eq!(names(&p("/names")), want, "listing of /names");

    // FAT is case-insensitive: the second create finds the first, which keeps its spelling.
    fs::write(p("/names/MixedCase.Txt"), b"first").expect("write MixedCase.Txt");
    model.file("/names/MixedCase.Txt", b"first");
    expect_errno(
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(p("/names/mixedcase.TXT")),
        libc::EEXIST,
        "create_new of a name differing only in case",
    );
    assert_eq!(
        fs::read(p("/names/MIXEDCASE.TXT")).expect("read by another case"),
        b"first"
    );
    let listed: Vec<String> = names(&p("/names"))
        .into_iter()
        .filter(|n| n.eq_ignore_ascii_case("mixedcase.txt"))
        .collect();
    assert_eq!(
        listed,
        ["MixedCase.Txt"],
        "the case-only twin made a second entry"
    );

    // Errnos of what FAT cannot do, or what is wrong anyway.
    expect_errno(
        fs::hard_link(p("/big.bin"), p("/link")),
        libc::EPERM,
        "link",
    );
    expect_errno(
        std::os::unix::fs::symlink("big.bin", p("/symlink")),
        libc::EPERM,
        "symlink",
    );
    expect_errno(
        fs::remove_dir(p("/full")),
        libc::ENOTEMPTY,
        "rmdir of a non-empty dir",
    );
    expect_errno(
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(p("/big.bin")),
        libc::EEXIST,
        "create_new of an existing file",
    );
    expect_errno(
        fs::create_dir(p("/full")),
        libc::EEXIST,
        "mkdir of an existing dir",
    );
    expect_errno(fs::write(p("/a:b"), b""), libc::EINVAL, "a name with ':'");
    expect_errno(fs::write(p("/a*b"), b""), libc::EINVAL, "a name with '*'");
    expect_errno(
        fs::create_dir(p("/a?b")),
        libc::EINVAL,
        "a directory name with '?'",
    );
    expect_errno(
        fs::write(p(&"N".repeat(256)), b""),
        libc::ENAMETOOLONG,
        "a 256-byte name",
    );
    expect_errno(
        fs::read(p("/nothing-here")),
        libc::ENOENT,
        "open of a missing file",
    );
    expect_errno(
        fs::remove_file(p("/full")),
        libc::EISDIR,
        "unlink of a directory",
    );
    expect_errno(
        fs::remove_dir(p("/big.bin")),
        libc::ENOTDIR,
        "rmdir of a file",
    );
    expect_errno(
        fs::write(p("/big.bin/under"), b""),
        libc::ENOTDIR,
        "a file under a file",
    );
    rename_flags(&m, "/big.bin", "/full");

    // Sizes and kinds as stat shows them, and the whole tree, before unmounting.
    for (path, node) in &model.0 {
        let meta = fs::metadata(p(path)).unwrap_or_else(|e| panic!("stat {path}: {e}"));
        match node {
            Node::Dir => assert!(meta.is_dir(), "{path} is not a directory"),
            Node::File(d) => {
                assert!(meta.is_file(), "{path} is not a file");
                assert_eq!(meta.len(), d.len() as u64, "size of {path}");
            }
        }
    }
    let seen = host_tree(&m.dir);
    if let Err(diff) = crate::common::readers::compare_trees(&model.0, &seen) {
        panic!("the mount differs from the model:\n{diff}");
    }

    xattrs(&m, era);
    let df = df(&m.dir);

    let done = m.finish();
    readers_agree(&done.image, &model.0);
    check_df(&done.image, df);
}

/// A reader of an image into a tree.
type Reader = fn(&Path) -> Result<Tree, String>;

/// fatfs and fatcache's own reader see `model`; mtools sees it too, but spells a character
/// outside the BMP (a UTF-16 surrogate pair) as two `_`, one per unit: an mtools limitation, so
/// its tree is compared with the model spelled that way. (fsck ran in `finish`.)
pub(crate) fn readers_agree(image: &Path, model: &Tree) {
    use crate::common::readers::{compare_trees, fatfs_tree, mtools_tree, our_tree};
    let mtools_spelling = |path: &str| {
        path.chars()
            .map(|c| {
                if c.len_utf16() == 2 {
                    "__".to_owned()
                } else {
                    c.to_string()
                }
            })
            .collect::<String>()
    };
    let for_mtools: Tree = model
        .iter()
        .map(|(p, n)| (mtools_spelling(p), n.clone()))
        .collect();
    let mut failures = Vec::new();
    let readers: [(&str, Reader, &Tree); 3] = [
        ("fatfs", fatfs_tree, model),
        ("fatcache", our_tree, model),
        ("mtools", mtools_tree, &for_mtools),
    ];
    for (name, reader, want) in readers {
        match reader(image).and_then(|got| compare_trees(want, &got)) {
            Ok(()) => {}
            Err(e) => failures.push(format!("[{name}] {e}")),
        }
    }
    assert!(
        failures.is_empty(),
        "readers disagree with the model:\n{}",
        failures.join("\n")
    );
}

/// RENAME_EXCHANGE of a file and a non-empty directory, then back (the exchange itself is
/// tested in `semantics`); RENAME_NOREPLACE onto an existing name is EEXIST.
fn rename_flags(m: &Mounted, file: &str, dir: &str) {
    use crate::semantics::{exchange, renameat2};
    let (f, d) = (
        m.path(file.trim_start_matches('/')),
        m.path(dir.trim_start_matches('/')),
    );
    exchange(&f, &d).expect("exchange a file and a directory");
    assert!(f.is_dir() && d.is_file(), "{file} and {dir} exchanged");
    exchange(&f, &d).expect("exchange them back");
    assert!(f.is_file() && d.is_dir(), "{file} and {dir} back");
    expect_errno(
        renameat2(&f, &d, nix::fcntl::RenameFlags::RENAME_NOREPLACE),
        libc::EEXIST,
        "renameat2(NOREPLACE) onto an existing name",
    );
}

/// `s` as one single-quoted shell word.
pub(crate) fn shell_word(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Reads `user.fatcache.era` on the root (getfattr, else python3, else says why not) and checks
/// that another name gives ENODATA.
fn xattrs(m: &Mounted, era: &str) {
    let dir = q(&m.dir);
    let (got, missing) = if optional_tool("basic: xattr via getfattr", "getfattr").is_some() {
        let got = sh(
            m.scratch(),
            &format!("getfattr --only-values -n user.fatcache.era {dir}"),
        );
        let missing = sh(m.scratch(), &format!("getfattr -n user.nothing {dir}"));
        (got, String::from_utf8_lossy(&missing.stderr).into_owned())
    } else if optional_tool("basic: xattr via python3", "python3").is_some() {
        let got = sh(
            m.scratch(),
            &format!(
                "python3 -c 'import os,sys; sys.stdout.write(os.getxattr(sys.argv[1], \
                 \"user.fatcache.era\").decode())' {dir}"
            ),
        );
        let missing = sh(
            m.scratch(),
            &format!(
                "python3 -c 'import os,sys; os.getxattr(sys.argv[1], \"user.nothing\")' {dir}"
            ),
        );
        (got, String::from_utf8_lossy(&missing.stderr).into_owned())
    } else {
        println!("basic: no getfattr or python3: the xattr check is skipped");
        return;
    };
    assert!(got.status.success(), "read user.fatcache.era: {got:?}");
    assert_eq!(
        String::from_utf8_lossy(&got.stdout),
        era,
        "user.fatcache.era"
    );
    assert!(
        missing.contains("No data available") || missing.contains("No such attribute"),
        "another xattr name must be ENODATA, got: {missing}"
    );
}

/// `df`'s size and available bytes of the mount at `dir`.
fn df(dir: &Path) -> (u64, u64) {
    let out = sh(dir, &format!("df --output=size,avail -B1 {}", q(dir)));
    let text = String::from_utf8_lossy(&out.stdout);
    let nums: Vec<u64> = text
        .lines()
        .nth(1)
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    match nums[..] {
        [size, avail] => (size, avail),
        _ => panic!("cannot read df's output: {text:?} {:?}", out.stderr),
    }
}

/// `df`'s numbers agree with fsck.fat's count of used and total clusters.
fn check_df(image: &Path, (size, avail): (u64, u64)) {
    let out = sh(Path::new("/"), &format!("fsck.fat -n {}", q(image)));
    let text = String::from_utf8_lossy(&out.stdout);
    let summary = text.lines().last().unwrap_or_default();
    let clusters = summary
        .rsplit_once(", ")
        .and_then(|(_, c)| c.strip_suffix(" clusters"))
        .and_then(|c| c.split_once('/'))
        .and_then(|(u, t)| Some((u.parse::<u64>().ok()?, t.parse::<u64>().ok()?)));
    let Some((used, total)) = clusters else {
        panic!("cannot read fsck.fat's summary: {text}");
    };
    let cs = cluster_size(image);
    assert_eq!(
        size,
        total * cs,
        "df size vs fsck's {total} clusters of {cs}"
    );
    assert_eq!(
        avail,
        (total - used) * cs,
        "df avail vs fsck's {used} used of {total} clusters of {cs}"
    );
}

/// FAT16, default options.
#[test]
fn basic_fat16() {
    basic(Fat::F16, "", "v5.11");
}

/// FAT32 (512-byte clusters), another era and one worker thread.
#[test]
fn basic_fat32() {
    basic(Fat::F32, "era=v6.9,threads=1", "v6.9");
}

/// FAT12 on a 1.44 MB floppy image.
#[test]
fn basic_fat12() {
    basic(Fat::F12, "", "v5.11");
}

/// The 8.3 names vfat gives new files under the default `shortname=mixed`, read back with
/// mtools's `mshortname`. Models: fs/fat/namei_vfat.c vfat_create_shortname() (v5.10): a name
/// that converts to 8.3 without loss keeps that 8.3 form as its alias, with no `~N` tail (the
/// `is_shortname && base_info.valid && ext_info.valid` branch returns before the numtail
/// loop; under CREATE_WIN95 it only decides whether long slots are needed, for a name that is
/// not all upper case); a name that does not fit gets `~1`.
#[test]
fn short_aliases_as_vfat_makes_them_fat16() {
    let m = Mounted::new(Fat::F16, "aliases", "");
    let cases = [
        ("UPPER.TXT", "UPPER.TXT"),
        ("readme.txt", "README.TXT"),
        ("Mixed.Txt", "MIXED.TXT"),
        ("full", "FULL"),
        ("A long file name.text", "ALONGF~1.TEX"),
        ("two.dots.tar", "TWODOT~1.TAR"),
    ];
    let mut model = Model::default();
    for (name, _) in cases {
        fs::write(m.path(name), name.as_bytes()).expect("write");
        model.file(&format!("/{name}"), name.as_bytes());
    }
    let done = m.finish();
    readers_agree(&done.image, &model.0);
    let s = &done.scratch.0;
    fs::write(s.join("mtoolsrc"), "").expect("write mtoolsrc");
    let args: Vec<String> = cases
        .iter()
        .map(|(n, _)| shell_word(&format!("::/{n}")))
        .collect();
    let out = crate::harness::sh_ok(
        s,
        &format!(
            "HOME=. MTOOLSRC=./mtoolsrc MTOOLS_SKIP_CHECK=1 mshortname -i {} {}",
            q(&done.image),
            args.join(" ")
        ),
    );
    let got: Vec<&str> = out.lines().map(|l| l.trim_start_matches("::/")).collect();
    let want: Vec<&str> = cases.iter().map(|(_, alias)| *alias).collect();
    assert_eq!(got, want, "8.3 aliases of {:?}", cases.map(|(n, _)| n));
}
