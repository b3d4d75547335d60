//! Read-only mounts: an image the daemon can only open read-only (it sits on a read-only bind
//! mount, which refuses root too, unlike a 0444 mode) and a `-o ro` mount of a writable image.
//! Every write path through the mount fails (EROFS where the kernel says EROFS), reads still
//! work, sync and fsync write nothing, and afterwards the image is byte for byte what it was,
//! the dirty bit included. `mount -o remount,ro` of a read-write mount refuses later writes.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::fcntl::{FallocateFlags, RenameFlags};

use crate::basic::{Model, expect_errno, readers_agree};
use crate::common::TempDir;
use crate::harness::{Fat, Mounted, Unmounted, describe};
use crate::semantics::renameat2;

/// The files and directories every test here starts from.
fn populate(fat: Fat, test: &str) -> (Unmounted, Model) {
    let m = Mounted::new(fat, test, "");
    let mut model = Model::default();
    for dir in ["/dir", "/dir/sub", "/empty", "/other"] {
        fs::create_dir(m.path(&dir[1..])).unwrap_or_else(|e| panic!("mkdir {dir}: {e}"));
        model.dir(dir);
    }
    let big: Vec<u8> = (0..40_000u32).map(|i| (i * 7 % 253) as u8).collect();
    let files: [(&str, &[u8]); 4] = [
        ("/a.txt", b"the contents of a\n"),
        ("/big.bin", &big),
        ("/dir/A long file name.txt", b"long name\n"),
        ("/dir/sub/deep.txt", b"deep\n"),
    ];
    for (path, data) in files {
        fs::write(m.path(&path[1..]), data).unwrap_or_else(|e| panic!("write {path}: {e}"));
        model.file(path, data);
    }
    (m.finish(), model)
}

/// The first byte offset where `a` and `b` differ (or the shorter length).
fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    if a == b {
        return None;
    }
    Some(
        a.iter()
            .zip(b)
            .position(|(x, y)| x != y)
            .unwrap_or(a.len().min(b.len())),
    )
}

/// Fails unless `image` holds exactly `before`.
#[track_caller]
fn assert_unchanged(image: &Path, before: &[u8], what: &str) {
    let after = fs::read(image).expect("read the image");
    if let Some(at) = first_difference(before, &after) {
        panic!(
            "{what}: the image changed at byte {at} (sector {}, {} bytes before, {} after)",
            at / 512,
            before.len(),
            after.len()
        );
    }
}

/// Every file of `model` reads back through the mount, and every directory lists what it
/// should.
fn reads_work(m: &Mounted, model: &Model) {
    for (path, node) in &model.0 {
        let p = m.path(&path[1..]);
        match node {
            crate::common::readers::Node::File(data) => {
                let got = fs::read(&p).unwrap_or_else(|e| panic!("read {path}: {e}"));
                assert!(got == *data, "{path}: read back differs");
                // A positioned read in the middle, as a program seeking around would.
                if data.len() > 1000 {
                    let f = File::open(&p).expect("open for reading");
                    let mut buf = vec![0u8; 700];
                    f.read_exact_at(&mut buf, 300).expect("pread");
                    assert!(buf == data[300..1000], "{path}: pread differs");
                }
            }
            crate::common::readers::Node::Dir => {
                let mut want: Vec<String> = model
                    .0
                    .keys()
                    .filter_map(|k| k.strip_prefix(&format!("{path}/")))
                    .filter(|rest| !rest.contains('/'))
                    .map(str::to_owned)
                    .collect();
                want.sort();
                let got: Vec<String> = crate::harness::names(&p).into_iter().collect();
                assert_eq!(got, want, "readdir {path}");
            }
        }
    }
}

/// Every way to change the volume fails through `m`; `errno` is what each must fail with
/// (EROFS on a read-only mount), except where opening for reading alone decides (an
/// ftruncate or fallocate of a descriptor opened read-only, which the kernel refuses before
/// any filesystem sees it).
fn writes_refused(m: &Mounted, errno: i32) {
    let p = |rel: &str| m.path(rel);
    let open = |rel: &str, o: &mut OpenOptions| o.open(p(rel)).map(|_| ());
    expect_errno(
        open("new.txt", OpenOptions::new().write(true).create(true)),
        errno,
        "create",
    );
    expect_errno(
        open(
            "dir/new.txt",
            OpenOptions::new().write(true).create_new(true),
        ),
        errno,
        "create in a subdirectory",
    );
    expect_errno(fs::create_dir(p("newdir")), errno, "mkdir");
    expect_errno(
        open("a.txt", OpenOptions::new().write(true)),
        errno,
        "open O_WRONLY",
    );
    expect_errno(
        open("a.txt", OpenOptions::new().read(true).write(true)),
        errno,
        "open O_RDWR",
    );
    expect_errno(
        open("a.txt", OpenOptions::new().append(true)),
        errno,
        "open O_APPEND",
    );
    expect_errno(
        open("big.bin", OpenOptions::new().write(true).truncate(true)),
        errno,
        "open O_TRUNC",
    );
    expect_errno(
        nix::unistd::truncate(&p("big.bin"), 10).map_err(io::Error::from),
        errno,
        "truncate down",
    );
    expect_errno(
        nix::unistd::truncate(&p("a.txt"), 100_000).map_err(io::Error::from),
        errno,
        "truncate up",
    );
    let reader = File::open(p("big.bin")).expect("open for reading");
    assert!(reader.set_len(5).is_err(), "ftruncate of a read-only fd");
    assert!(
        nix::fcntl::fallocate(&reader, FallocateFlags::empty(), 0, 1 << 20).is_err(),
        "fallocate of a read-only fd"
    );
    drop(reader);
    expect_errno(fs::remove_file(p("a.txt")), errno, "unlink");
    expect_errno(fs::remove_dir(p("empty")), errno, "rmdir");
    expect_errno(fs::rename(p("a.txt"), p("b.txt")), errno, "rename");
    expect_errno(
        fs::rename(p("a.txt"), p("dir/a.txt")),
        errno,
        "rename across directories",
    );
    expect_errno(
        fs::rename(p("big.bin"), p("a.txt")),
        errno,
        "rename over a file",
    );
    expect_errno(
        fs::rename(p("empty"), p("other")),
        errno,
        "rename a directory",
    );
    expect_errno(
        renameat2(&p("a.txt"), &p("dir"), RenameFlags::RENAME_EXCHANGE),
        errno,
        "RENAME_EXCHANGE",
    );
    expect_errno(
        std::os::unix::fs::symlink("a.txt", p("link")),
        errno,
        "symlink",
    );
    expect_errno(fs::hard_link(p("a.txt"), p("hard")), errno, "link");
    expect_errno(
        fs::set_permissions(p("a.txt"), fs::Permissions::from_mode(0o444)),
        errno,
        "chmod",
    );
    expect_errno(
        std::os::unix::fs::chown(p("a.txt"), Some(1000), Some(1000)),
        errno,
        "chown",
    );
    let when = nix::sys::time::TimeSpec::new(1_000_000_000, 0);
    expect_errno(
        nix::sys::stat::utimensat(
            nix::fcntl::AT_FDCWD,
            &p("a.txt"),
            &when,
            &when,
            nix::sys::stat::UtimensatFlags::FollowSymlink,
        )
        .map_err(io::Error::from),
        errno,
        "utimes",
    );
    expect_errno(xattr::set(p("a.txt"), "user.test", b"x"), errno, "setxattr");
    expect_errno(
        nix::sys::stat::mknod(
            &p("fifo"),
            nix::sys::stat::SFlag::S_IFIFO,
            nix::sys::stat::Mode::from_bits_truncate(0o644),
            0,
        )
        .map_err(io::Error::from),
        errno,
        "mknod",
    );
}

/// sync(2), syncfs(2) and fsync/fdatasync of files and directories opened for reading.
fn syncs(m: &Mounted) {
    let f = File::open(m.path("big.bin")).expect("open for reading");
    f.sync_all().expect("fsync of a read-only fd");
    f.sync_data().expect("fdatasync of a read-only fd");
    nix::unistd::syncfs(&f).expect("syncfs");
    let d = File::open(m.path("dir")).expect("open a directory");
    d.sync_all().expect("fsync of a directory");
    nix::unistd::sync();
}

/// The read-only checks on a mount of a clean image whose bytes were `before`: writes refused,
/// reads work, syncs write nothing; then unmount, and the image is unchanged.
fn check_read_only(m: Mounted, model: &Model, before: &[u8]) {
    reads_work(&m, model);
    writes_refused(&m, libc::EROFS);
    syncs(&m);
    reads_work(&m, model);
    let kept = m.keep();
    let status = m.unmount();
    assert!(status.success(), "the daemon exited with {status}");
    assert_unchanged(&kept.image, before, "after a read-only mount");
    readers_agree(&kept.image, &model.0);
}

/// `dir` bind-mounted read-only onto itself until drop: files in it can only be opened for
/// reading, by root too.
struct ReadOnlyBind(PathBuf);

impl ReadOnlyBind {
    fn new(dir: &Path) -> ReadOnlyBind {
        let run = |args: &[&str]| {
            let out = Command::new("mount")
                .args(args)
                .arg(dir)
                .arg(dir)
                .output()
                .expect("run mount");
            assert!(out.status.success(), "{}", describe("mount", &out));
        };
        run(&["--bind"]);
        let bind = ReadOnlyBind(dir.to_path_buf());
        let out = Command::new("mount")
            .args(["-o", "remount,bind,ro"])
            .arg(dir)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "{}",
            describe("mount -o remount", &out)
        );
        bind
    }
}

impl Drop for ReadOnlyBind {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// An image file the daemon cannot open for writing: it falls back to read-only, with a
/// warning, and the mount is read-only.
fn read_only_image(fat: Fat) {
    let (kept, model) = populate(fat, "roimage");
    let before = fs::read(&kept.image).expect("read the image");
    let scratch = TempDir::new("mount", &format!("roimage-{}-ro", fat.name()));
    let rodir = scratch.0.join("ro");
    fs::create_dir(&rodir).expect("mkdir ro");
    let image = rodir.join("image.img");
    fs::copy(&kept.image, &image).expect("copy the image");
    let bind = ReadOnlyBind::new(&rodir);
    assert!(
        OpenOptions::new().write(true).open(&image).is_err(),
        "the bind mount should refuse writing the image"
    );
    let m = Mounted::on(scratch, image.clone(), "");
    assert!(
        m.log().contains("opening read-only"),
        "the daemon should say it fell back to read-only; log:\n{}",
        m.log()
    );
    let kept_ro = m.keep();
    check_read_only(m, &model, &before);
    drop(bind);
    assert_unchanged(&kept_ro.image, &before, "the read-only image");
}

#[test]
fn read_only_image_fat12() {
    read_only_image(Fat::F12);
}

#[test]
fn read_only_image_fat32() {
    read_only_image(Fat::F32);
}

/// `-o ro` on a writable image: the same refusals, and nothing written, not even the dirty
/// bit a read-write mount sets. With `dirty`, the image comes with its dirty bit set (a
/// volume not cleanly unmounted), and a read-only mount must not clear it either.
fn ro_option(fat: Fat, dirty: bool) {
    let (kept, model) = populate(fat, "ro-option");
    let scratch = TempDir::new("mount", &format!("ro-option-{}-{dirty}", fat.name()));
    let image = scratch.0.join("image.img");
    fs::copy(&kept.image, &image).expect("copy the image");
    if dirty {
        let mut bytes = fs::read(&image).expect("read the image");
        let bpb = fatcache::fat::bpb::Bpb::parse(&bytes[..512]).expect("parse the boot sector");
        bpb.set_dirty(&mut bytes[..512], true);
        fs::write(&image, &bytes).expect("write the image");
    }
    let before = fs::read(&image).expect("read the image");
    let m = Mounted::on(scratch, image, "ro");
    check_read_only(m, &model, &before);
}

#[test]
fn ro_option_fat16() {
    ro_option(Fat::F16, false);
}

#[test]
fn ro_option_fat32() {
    ro_option(Fat::F32, false);
}

#[test]
fn ro_option_keeps_the_dirty_bit_fat32() {
    ro_option(Fat::F32, true);
}

/// `mount -o remount,ro` of a read-write mount: the kernel's FUSE layer takes it without
/// asking the daemon, so later changes get EROFS from the kernel; what was written before it
/// stays readable and reaches the image at unmount, which is clean.
#[test]
fn remount_read_only_fat32() {
    let m = Mounted::new(Fat::F32, "remount-ro", "");
    let mut model = Model::default();
    for dir in ["/dir", "/empty", "/other", "/dir/sub"] {
        fs::create_dir(m.path(&dir[1..])).expect("mkdir");
        model.dir(dir);
    }
    for (path, data) in [
        ("/a.txt", &b"a\n"[..]),
        ("/big.bin", &[9u8; 20_000][..]),
        ("/dir/A long file name.txt", &b"long\n"[..]),
    ] {
        fs::write(m.path(&path[1..]), data).expect("write");
        model.file(path, data);
    }
    // Dirty data still in the daemon's cache at the remount.
    let mut f = OpenOptions::new()
        .append(true)
        .open(m.path("a.txt"))
        .expect("open");
    io::Write::write_all(&mut f, b"more\n").expect("append");
    drop(f);
    model.file("/a.txt", b"a\nmore\n");
    // -i: the remount is the kernel's alone; mount.fuse would try to start a new daemon.
    let out = Command::new("mount")
        .args(["-i", "-o", "remount,ro"])
        .arg(&m.dir)
        .output()
        .expect("run mount");
    assert!(
        out.status.success(),
        "{}",
        describe("mount -o remount,ro", &out)
    );
    writes_refused(&m, libc::EROFS);
    reads_work(&m, &model);
    let mut back = Vec::new();
    File::open(m.path("a.txt"))
        .and_then(|mut f| f.read_to_end(&mut back))
        .expect("read a.txt");
    assert_eq!(back, b"a\nmore\n");
    let kept = m.finish();
    readers_agree(&kept.image, &model.0);
}
