//! What a kernel vfat mount does that programs notice, through the FUSE mount: renameat2 with
//! RENAME_EXCHANGE (vfat since v6.0), directory link counts that `find` and `ls -ld` can
//! trust, who may set a file's times (`allow_utime=`, checked as other users), and ENOTTY for
//! ioctls, as vfat answers the ones it does not know.

use std::fs::{self, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use nix::dir::Dir;
use nix::fcntl::{AT_FDCWD, OFlag, RenameFlags};
use nix::sys::stat::Mode;

use crate::basic::{Model, expect_errno, readers_agree};
use crate::common::readers::{Node, Tree, exchange_in_tree};
use crate::harness::{Fat, Mounted, host_tree, optional_tool, q, sh, sh_ok};

/// renameat2(2) of `from` to `to` with `flags`.
pub(crate) fn renameat2(from: &Path, to: &Path, flags: RenameFlags) -> io::Result<()> {
    nix::fcntl::renameat2(AT_FDCWD, from, AT_FDCWD, to, flags).map_err(io::Error::from)
}

/// renameat2(2) with RENAME_EXCHANGE.
pub(crate) fn exchange(a: &Path, b: &Path) -> io::Result<()> {
    renameat2(a, b, RenameFlags::RENAME_EXCHANGE)
}

/// Files and directories of all kinds trade places; the inode numbers go with the contents
/// (an open file keeps reading and writing its own data under its new name); `..` and the
/// parents' link counts follow a directory to its new parent; the refusals are the kernel's.
#[test]
fn rename_exchange_fat32() {
    let m = Mounted::new(Fat::F32, "exchange", "");
    let p = |rel: &str| m.path(rel.trim_start_matches('/'));
    let mut model = Model::default();
    let long = "/A long name, with spaces.bin";
    let files: [(&str, &[u8]); 6] = [
        ("/a.txt", b"contents of a\n"),
        (long, &[0x5a; 3000]),
        ("/dir1/x.txt", b"x in dir1\n"),
        ("/dir1/sub/inner.txt", b"inner\n"),
        ("/dir2/deep/f", b"deep\n"),
        ("/anc/mid/f", b"below\n"),
    ];
    for dir in [
        "/dir1",
        "/dir1/sub",
        "/dir2",
        "/dir2/deep",
        "/anc",
        "/anc/mid",
    ] {
        fs::create_dir(p(dir)).unwrap_or_else(|e| panic!("mkdir {dir}: {e}"));
        model.dir(dir);
    }
    for (path, data) in files {
        fs::write(p(path), data).unwrap_or_else(|e| panic!("write {path}: {e}"));
        model.file(path, data);
    }
    let meta = |rel: &str| fs::metadata(p(rel)).unwrap_or_else(|e| panic!("stat {rel}: {e}"));
    let mut held = OpenOptions::new()
        .read(true)
        .write(true)
        .open(p("/a.txt"))
        .expect("open a.txt");
    let (ino_a, ino_sub) = (meta("/a.txt").ino(), meta("/dir1/sub").ino());
    let (root_links, dir1_links) = (meta("/").nlink(), meta("/dir1").nlink());
    assert_eq!(
        (root_links, dir1_links),
        (2 + 3, 2 + 1),
        "link counts before"
    );

    // A file and a non-empty directory in another directory.
    exchange(&p("/a.txt"), &p("/dir1/sub")).expect("exchange a file and a directory");
    exchange_in_tree(&mut model.0, "/a.txt", "/dir1/sub");
    assert!(meta("/a.txt").is_dir() && meta("/dir1/sub").is_file());
    assert_eq!(
        meta("/a.txt").ino(),
        ino_sub,
        "the directory's inode at the file's name"
    );
    assert_eq!(
        meta("/dir1/sub").ino(),
        ino_a,
        "the file's inode at the directory's name"
    );
    assert_eq!(
        (meta("/").nlink(), meta("/dir1").nlink()),
        (root_links + 1, dir1_links - 1),
        "the subdirectory moved from dir1 to the root"
    );
    assert_eq!(
        meta("/a.txt/..").ino(),
        meta("/").ino(),
        "the moved directory's parent"
    );
    assert_eq!(fs::read(p("/a.txt/inner.txt")).expect("read"), b"inner\n");
    let mut back = Vec::new();
    held.read_to_end(&mut back).expect("read the held file");
    assert_eq!(back, b"contents of a\n", "an open file keeps its data");
    held.seek(SeekFrom::Start(0)).expect("seek");
    held.write_all(b"CONTENTS").expect("write the held file");
    drop(held);
    model.file("/dir1/sub", b"CONTENTS of a\n");
    // Two files in different directories, a long name and an 8.3 one.
    exchange(&p(long), &p("/dir1/x.txt")).expect("exchange two files");
    exchange_in_tree(&mut model.0, long, "/dir1/x.txt");
    // Two directories in different directories.
    exchange(&p("/dir2/deep"), &p("/a.txt")).expect("exchange two directories");
    exchange_in_tree(&mut model.0, "/dir2/deep", "/a.txt");
    assert_eq!(meta("/dir2/deep").ino(), ino_sub);
    // Two directories in one directory; a name with itself.
    exchange(&p("/dir1"), &p("/dir2")).expect("exchange siblings");
    exchange_in_tree(&mut model.0, "/dir1", "/dir2");
    exchange(&p("/dir1"), &p("/dir1")).expect("exchange a name with itself");

    // The refusals.
    expect_errno(
        exchange(&p("/dir1"), &p("/nothing")),
        libc::ENOENT,
        "exchange with a missing name",
    );
    expect_errno(
        exchange(&p("/anc"), &p("/anc/mid/f")),
        libc::EINVAL,
        "exchange of a directory with something below it",
    );
    expect_errno(
        exchange(&p("/anc/mid"), &p("/anc")),
        libc::EINVAL,
        "exchange of a directory with its parent",
    );
    let both = RenameFlags::RENAME_EXCHANGE | RenameFlags::RENAME_NOREPLACE;
    expect_errno(
        renameat2(&p("/dir1"), &p("/dir2"), both),
        libc::EINVAL,
        "EXCHANGE with NOREPLACE",
    );
    expect_errno(
        renameat2(&p("/dir1"), &p("/dir2"), RenameFlags::RENAME_WHITEOUT),
        libc::EINVAL,
        "WHITEOUT, which vfat does not take",
    );
    expect_errno(
        renameat2(&p("/dir1"), &p("/dir2"), RenameFlags::RENAME_NOREPLACE),
        libc::EEXIST,
        "NOREPLACE onto an existing name",
    );

    let seen = host_tree(&m.dir);
    if let Err(diff) = crate::common::readers::compare_trees(&model.0, &seen) {
        panic!("the mount differs from the model:\n{diff}");
    }
    assert_links(&m, &model.0, "after the exchanges");
    let done = m.finish();
    readers_agree(&done.image, &model.0);
}

/// The link count vfat gives the directory `dir` of `t`: 2 and one per subdirectory.
fn model_nlink(t: &Tree, dir: &str) -> u64 {
    let prefix = format!("{}/", dir.trim_end_matches('/'));
    let subdirs = t.iter().filter(|(p, n)| {
        **n == Node::Dir
            && p.strip_prefix(&prefix)
                .is_some_and(|rest| !rest.is_empty() && !rest.contains('/'))
    });
    2 + subdirs.count() as u64
}

/// stat and `ls -ld` show every directory of `t` (the root too) with its vfat link count,
/// every file with 1; `find -type d`, which may trust the counts, lists every directory, and
/// lists the same as `find -noleaf`, which does not.
#[track_caller]
fn assert_links(m: &Mounted, t: &Tree, when: &str) {
    let mut want = vec![("/".to_owned(), model_nlink(t, "/"))];
    for (path, node) in t {
        let links = match node {
            Node::Dir => model_nlink(t, path),
            Node::File(_) => 1,
        };
        want.push((path.clone(), links));
    }
    for (path, links) in &want {
        let at = m.path(path.trim_start_matches('/'));
        let meta = fs::metadata(&at).unwrap_or_else(|e| panic!("stat {path}: {e}"));
        assert_eq!(meta.nlink(), *links, "{when}: links of {path}");
        let ls = sh_ok(&m.dir, &format!("ls -ld {}", q(&at)));
        let column = ls.split_whitespace().nth(1).unwrap_or_default();
        assert_eq!(column, links.to_string(), "{when}: ls -ld {path}: {ls}");
    }
    let dirs: Vec<String> = std::iter::once(String::new())
        .chain(
            t.iter()
                .filter(|(_, n)| **n == Node::Dir)
                .map(|(p, _)| p.clone()),
        )
        .map(|p| format!(".{p}"))
        .collect();
    let mut dirs = dirs;
    dirs.sort();
    for find in ["find . -type d", "find . -noleaf -type d"] {
        let out = sh_ok(&m.dir, &format!("{find} | LC_ALL=C sort"));
        let got: Vec<&str> = out.lines().collect();
        assert_eq!(got, dirs, "{when}: {find}");
    }
}

/// getdents names a directory's "." and ".." by the inode numbers stat gives the directory
/// and its parent, and ".." follows the directory when a rename moves it.
#[test]
fn dot_and_dotdot_carry_the_directory_and_its_parent_fat32() {
    let m = Mounted::new(Fat::F32, "dots", "");
    for d in ["a", "a/b", "c"] {
        fs::create_dir(m.path(d)).unwrap_or_else(|e| panic!("mkdir {d}: {e}"));
    }
    let ino = |rel: &str| fs::metadata(m.path(rel)).expect("stat").ino();
    // From getdents itself: `ls -ai` stats "." and ".." instead of trusting it.
    let dots = |rel: &str| {
        let mut dir = Dir::open(
            &m.path(rel),
            OFlag::O_RDONLY | OFlag::O_DIRECTORY,
            Mode::empty(),
        )
        .unwrap_or_else(|e| panic!("opendir {rel}: {e}"));
        let mut found = (None, None);
        for e in dir.iter() {
            let e = e.unwrap_or_else(|err| panic!("readdir {rel}: {err}"));
            match e.file_name().to_bytes() {
                b"." => found.0 = Some(e.ino()),
                b".." => found.1 = Some(e.ino()),
                _ => {}
            }
        }
        (found.0.expect("a \".\""), found.1.expect("a \"..\""))
    };
    assert_eq!(dots("a"), (ino("a"), ino("")), "a");
    assert_eq!(dots("a/b"), (ino("a/b"), ino("a")), "a/b");
    fs::rename(m.path("a/b"), m.path("c/b")).expect("rename a/b c/b");
    assert_eq!(dots("c/b"), (ino("c/b"), ino("c")), "c/b after the move");
    drop(m.finish());
}

/// Link counts follow mkdir, rmdir, rename and exchange, as stat, `ls -ld` and `find` see
/// them (the kernel drops its cached attributes of a changed directory).
#[test]
fn directory_link_counts_fat16() {
    let m = Mounted::new(Fat::F16, "links", "");
    let p = |rel: &str| m.path(rel.trim_start_matches('/'));
    let mut model = Model::default();
    assert_links(&m, &model.0, "empty");
    for dir in ["/a", "/a/b", "/a/b/c", "/a/d", "/e", "/e/f", "/e/f/g"] {
        fs::create_dir(p(dir)).unwrap_or_else(|e| panic!("mkdir {dir}: {e}"));
        model.dir(dir);
    }
    fs::write(p("/a/file"), b"f").expect("write a/file");
    model.file("/a/file", b"f");
    assert_links(&m, &model.0, "after mkdir");
    fs::remove_dir(p("/a/d")).expect("rmdir a/d");
    model.remove("/a/d");
    fs::rename(p("/a/b"), p("/e/b")).expect("move a/b under e");
    model.rename("/a/b", "/e/b");
    fs::rename(p("/a/file"), p("/e/f/g/file")).expect("move a file");
    model.rename("/a/file", "/e/f/g/file");
    assert_links(&m, &model.0, "after rmdir and rename");
    exchange(&p("/a"), &p("/e/f/g/file")).expect("exchange");
    exchange_in_tree(&mut model.0, "/a", "/e/f/g/file");
    assert_links(&m, &model.0, "after an exchange");
    let done = m.finish();
    readers_agree(&done.image, &model.0);
}

/// How `touch -c` (utimensat on the path, so the error is the time change's own, not an
/// open's) ended as the user `uid`:`gid`: "ok", or the error it printed.
fn touch_as(m: &Mounted, uid: u32, gid: u32, args: &str) -> String {
    let script = format!(
        "setpriv --reuid={uid} --regid={gid} --clear-groups -- touch -c {args} {}",
        q(&m.path("f"))
    );
    let out = sh(&m.dir, &script);
    if out.status.success() {
        return "ok".into();
    }
    let err = String::from_utf8_lossy(&out.stderr);
    for known in ["Operation not permitted", "Permission denied"] {
        if err.contains(known) {
            return known.into();
        }
    }
    panic!("touch as {uid}:{gid} failed otherwise: {err}");
}

/// Who may set times: the owner (`uid=`) and root anything; the group (`gid=`, mode 0775
/// with umask=002) may touch to now by its write access; others may do neither. The allow_utime
/// default here is 020, which on a kernel vfat mount also lets the group set given times; the
/// FUSE kernel module refuses that before the request reaches fatcache (see `fuse::perm`),
/// which this test pins.
#[test]
fn allow_utime_as_other_users_fat16() {
    if optional_tool("allow_utime as other users", "setpriv").is_none() {
        return;
    }
    let m = Mounted::new(
        Fat::F16,
        "utime",
        "allow_other,uid=65534,gid=65534,umask=002",
    );
    fs::write(m.path("f"), b"times\n").expect("write f");
    let mtime = || fs::metadata(m.path("f")).expect("stat f").mtime();
    let (owner, member, other) = ((65534, 65534), (1000, 65534), (1000, 1000));
    let given = "-d @1000000000";
    let cases = [
        ("the owner, a given time", owner, given, "ok"),
        ("a group member, now", member, "", "ok"),
        (
            "a group member, a given time",
            member,
            given,
            "Operation not permitted",
        ),
        ("another user, now", other, "", "Permission denied"),
        (
            "another user, a given time",
            other,
            given,
            "Operation not permitted",
        ),
    ];
    for (who, (uid, gid), args, want) in cases {
        let before = mtime();
        let got = touch_as(&m, uid, gid, args);
        assert_eq!(got, want, "{who}");
        if want != "ok" {
            assert_eq!(mtime(), before, "{who}: a refusal changes nothing");
        } else if args == given {
            assert_eq!(mtime(), 1_000_000_000, "{who}: the time given");
        }
    }
    sh_ok(&m.dir, &format!("touch -d @1000000002 {}", q(&m.path("f"))));
    assert_eq!(mtime(), 1_000_000_002, "root sets a given time");
    let mut model = Model::default();
    model.file("/f", b"times\n");
    let done = m.finish();
    readers_agree(&done.image, &model.0);
}

/// isatty(3) on a file of the mount sends TCGETS down to the daemon: it must say ENOTTY (not a
/// terminal) quietly, as vfat does, not log a warning per call.
#[test]
fn ioctl_is_enotty_and_quiet_fat16() {
    use std::io::IsTerminal as _;
    let m = Mounted::new(Fat::F16, "ioctl", "");
    let path = m.path("tty.txt");
    fs::write(&path, b"not a terminal\n").expect("write");
    for _ in 0..20 {
        let f = fs::File::open(&path).expect("open");
        assert!(!f.is_terminal(), "a FAT file is no terminal");
    }
    let log = m.log();
    assert!(
        !log.contains("Not Implemented"),
        "the daemon logged about ioctls:\n{log}"
    );
    m.finish();
}
