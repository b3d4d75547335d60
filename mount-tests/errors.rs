//! `errors=` through the mount, on a volume whose metadata is corrupt: one file's FAT chain
//! points past the last cluster, one directory's chain too. Reading either fails with EIO;
//! what follows is the policy's, as vfat documents it:
//!
//! * `continue`: nothing more; other changes still succeed and reach the image.
//! * `remount-ro` (the default): every later change fails with EROFS (an open for writing
//!   too), reads still work, and the image is not written again: the dirty bit stays set for
//!   fsck, and the daemon's exit status says the volume had errors.
//! * `panic`: the kernel panics; the daemon stops at once with a message and a non-zero
//!   status, the mount is dead (ENOTCONN) and nothing more reaches the image.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::Path;
use std::time::Duration;

use fatcache::dev::Placement;
use fatcache::fat::bpb::{Bpb, FatType};
use fatcache::fat::volume::{MountOptions, Volume};

use crate::basic::expect_errno;
use crate::harness::{Fat, Mounted, Unmounted, is_mounted};

/// Size of the file whose chain is broken: several clusters on every FAT type here.
const BAD_LEN: usize = 9000;

/// The good file's contents.
const GOOD: &[u8] = b"a file whose chain is intact\n";

/// A volume with `/good.txt`, `/bad.bin` (its first FAT entry then pointing past the last
/// cluster), `/loop.bin` (its first entry pointing to itself), `/baddir` with enough entries for two clusters (its first entry broken the same
/// way) and an empty `/dir`.
fn corrupt_volume(fat: Fat, test: &str) -> Unmounted {
    let m = Mounted::new(fat, test, "");
    fs::write(m.path("good.txt"), GOOD).expect("write good.txt");
    fs::write(m.path("bad.bin"), vec![0xa5u8; BAD_LEN]).expect("write bad.bin");
    fs::write(m.path("loop.bin"), vec![0x5au8; BAD_LEN]).expect("write loop.bin");
    fs::create_dir(m.path("dir")).expect("mkdir dir");
    fs::create_dir(m.path("baddir")).expect("mkdir baddir");
    for i in 0..100 {
        fs::write(m.path(&format!("baddir/entry number {i:03}.txt")), b"x").expect("write");
    }
    let kept = m.finish();
    let [bad, baddir, looped] = first_clusters(&kept.image, ["/bad.bin", "/baddir", "/loop.bin"]);
    break_chain(&kept.image, bad);
    break_chain(&kept.image, baddir);
    // A chain that comes back to its first cluster: a loop, with the size asking for more.
    set_fat(&kept.image, looped, looped);
    kept
}

/// The first clusters of `paths` in `image`, read through the library on a read-only mount.
fn first_clusters<const N: usize>(image: &Path, paths: [&str; N]) -> [u32; N] {
    let opts = MountOptions {
        placement: Placement {
            read_only: true,
            ..Placement::default()
        },
        ..MountOptions::default()
    };
    let vol = Volume::mount(image, opts).expect("mount the image read-only");
    let out = paths.map(|p| {
        let node = vol
            .lookup_path(p)
            .unwrap_or_else(|e| panic!("lookup {p}: {e}"));
        let first = node.entry().first_cluster;
        assert!(first >= 2, "{p} has no clusters");
        first
    });
    vol.unmount().expect("unmount");
    out
}

/// Sets FAT entry `cluster` in every FAT copy of `image` to a cluster number past the last
/// one of the volume (not a reserved, bad or end-of-chain value).
fn break_chain(image: &Path, cluster: u32) {
    let bytes = fs::read(image).expect("read the image");
    let bpb = Bpb::parse(&bytes[..512]).expect("parse the boot sector");
    set_fat(image, cluster, bpb.data_clusters() + 2 + 5);
}

/// Sets FAT entry `cluster` in every FAT copy of `image` to `past`.
fn set_fat(image: &Path, cluster: u32, past: u32) {
    let mut bytes = fs::read(image).expect("read the image");
    let bpb = Bpb::parse(&bytes[..512]).expect("parse the boot sector");
    let sector = u64::from(bpb.bytes_per_sector);
    let fat_bytes = u64::from(bpb.sectors_per_fat()) * sector;
    for copy in 0..u64::from(bpb.num_fats) {
        let fat = usize::try_from(bpb.first_fat_sector() * sector + copy * fat_bytes)
            .expect("offset fits");
        let n = cluster as usize;
        match bpb.fat_type() {
            FatType::Fat12 => {
                let at = fat + n * 3 / 2;
                let old = u16::from_le_bytes([bytes[at], bytes[at + 1]]);
                let v = (past & 0xfff) as u16;
                let new = if n % 2 == 0 {
                    (old & 0xf000) | v
                } else {
                    (old & 0x000f) | (v << 4)
                };
                bytes[at..at + 2].copy_from_slice(&new.to_le_bytes());
            }
            FatType::Fat16 => {
                let at = fat + n * 2;
                bytes[at..at + 2].copy_from_slice(&(past as u16).to_le_bytes());
            }
            FatType::Fat32 => {
                let at = fat + n * 4;
                let old = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
                let new = (old & 0xf000_0000) | past;
                bytes[at..at + 4].copy_from_slice(&new.to_le_bytes());
            }
        }
    }
    fs::write(image, bytes).expect("write the image");
}

/// Fails, naming the first differing sector, unless the image bytes `a` and `b` are equal.
#[track_caller]
fn assert_same(a: &[u8], b: &[u8], what: &str) {
    if a != b {
        let at = a
            .iter()
            .zip(b)
            .position(|(x, y)| x != y)
            .unwrap_or(a.len().min(b.len()));
        panic!(
            "{what}: first difference at byte {at} (sector {})",
            at / 512
        );
    }
}

/// Mounts the corrupt volume of `kept` with `errors=policy` (none for the default).
fn mount(kept: &Unmounted, policy: Option<&str>) -> Mounted {
    let opts = policy.map_or(String::new(), |p| format!("errors={p}"));
    Mounted::on_shared(kept.scratch.clone(), kept.image.clone(), &opts)
}

/// Reading the broken files and listing the broken directory all fail with EIO.
fn corruption_is_eio(m: &Mounted) {
    expect_errno(
        fs::read(m.path("bad.bin")),
        libc::EIO,
        "read a broken chain",
    );
    expect_errno(
        fs::read(m.path("loop.bin")),
        libc::EIO,
        "read a looping chain",
    );
    expect_errno(
        fs::read_dir(m.path("baddir")).and_then(|d| d.collect::<io::Result<Vec<_>>>()),
        libc::EIO,
        "readdir of a broken directory",
    );
}

/// Every read that does not touch the corruption still works.
fn reads_work(m: &Mounted) {
    assert_eq!(fs::read(m.path("good.txt")).expect("read good.txt"), GOOD);
    assert!(
        fs::read_dir(m.path("dir"))
            .expect("readdir")
            .next()
            .is_none()
    );
    assert!(fs::metadata(m.path("bad.bin")).is_ok_and(|s| s.len() == BAD_LEN as u64));
}

/// The root still lists everything, the broken directory too (vfat's readdir lists a name
/// without reading what it names); looking that directory up is what fails, with EIO.
/// Building its node meets the corruption, so this counts as an error for the policy.
fn parent_of_broken_directory_lists(m: &Mounted) {
    let names = crate::harness::names(&m.dir);
    for want in ["good.txt", "bad.bin", "dir", "baddir"] {
        assert!(names.contains(want), "{want} listed: {names:?}");
    }
    expect_errno(
        fs::metadata(m.path("baddir")),
        libc::EIO,
        "stat of a broken directory",
    );
}

/// `errors=continue`: EIO for the corrupt parts, and the volume stays writable: new files
/// and changes reach the image and read back after a new mount.
fn continue_policy(fat: Fat) {
    let kept = corrupt_volume(fat, "errors-continue");
    let m = mount(&kept, Some("continue"));
    corruption_is_eio(&m);
    reads_work(&m);
    parent_of_broken_directory_lists(&m);
    // Writing where the chain is broken, or past its end, meets the corruption too.
    let bad = OpenOptions::new()
        .write(true)
        .open(m.path("bad.bin"))
        .expect("open the broken file for writing");
    expect_errno(
        std::os::unix::fs::FileExt::write_all_at(&bad, &[1u8; 100], BAD_LEN as u64 - 50),
        libc::EIO,
        "write at the end of a broken chain",
    );
    drop(bad);
    fs::write(m.path("after.txt"), b"written after the error\n").expect("create after EIO");
    fs::create_dir(m.path("dir/sub")).expect("mkdir after EIO");
    fs::write(m.path("dir/sub/f"), vec![3u8; 5000]).expect("write after EIO");
    fs::rename(m.path("good.txt"), m.path("dir/good.txt")).expect("rename after EIO");
    OpenOptions::new()
        .write(true)
        .open(m.path("dir/good.txt"))
        .expect("open for writing after EIO");
    corruption_is_eio(&m);
    let status = m.unmount();
    assert!(status.success(), "errors=continue: exit status {status}");
    let m = mount(&kept, Some("continue"));
    assert_eq!(
        fs::read(m.path("after.txt")).expect("read after.txt"),
        b"written after the error\n"
    );
    assert_eq!(
        fs::read(m.path("dir/sub/f")).expect("read f"),
        vec![3u8; 5000]
    );
    assert_eq!(fs::read(m.path("dir/good.txt")).expect("read good"), GOOD);
    assert!(!m.path("good.txt").exists(), "good.txt was moved");
    let status = m.unmount();
    assert!(status.success(), "second mount: exit status {status}");
}

#[test]
fn errors_continue_fat16() {
    continue_policy(Fat::F16);
}

#[test]
fn errors_continue_fat32() {
    continue_policy(Fat::F32);
}

/// Every change fails with EROFS, reads still work.
fn changes_refused(m: &Mounted) {
    let p = |rel: &str| m.path(rel);
    expect_errno(fs::write(p("new.txt"), b"x"), libc::EROFS, "create");
    expect_errno(fs::create_dir(p("newdir")), libc::EROFS, "mkdir");
    expect_errno(
        OpenOptions::new().write(true).open(p("good.txt")),
        libc::EROFS,
        "open O_WRONLY",
    );
    expect_errno(
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(p("good.txt")),
        libc::EROFS,
        "open O_RDWR",
    );
    expect_errno(
        nix::unistd::truncate(&p("good.txt"), 3).map_err(io::Error::from),
        libc::EROFS,
        "truncate",
    );
    expect_errno(fs::remove_file(p("good.txt")), libc::EROFS, "unlink");
    expect_errno(fs::remove_dir(p("dir")), libc::EROFS, "rmdir");
    expect_errno(
        fs::rename(p("good.txt"), p("dir/good.txt")),
        libc::EROFS,
        "rename",
    );
    expect_errno(
        crate::semantics::exchange(&p("good.txt"), &p("dir")),
        libc::EROFS,
        "RENAME_EXCHANGE",
    );
    let when = nix::sys::time::TimeSpec::new(1_000_000_000, 0);
    expect_errno(
        nix::sys::stat::utimensat(
            nix::fcntl::AT_FDCWD,
            &p("good.txt"),
            &when,
            &when,
            nix::sys::stat::UtimensatFlags::FollowSymlink,
        )
        .map_err(io::Error::from),
        libc::EROFS,
        "utimes",
    );
    expect_errno(
        fs::set_permissions(
            p("good.txt"),
            std::os::unix::fs::PermissionsExt::from_mode(0o444),
        ),
        libc::EROFS,
        "chmod",
    );
}

/// `errors=remount-ro`, given or by default: after the EIO, every change is EROFS, reads
/// work, fsync and sync succeed without writing, and the image is never written again.
fn remount_ro_policy(fat: Fat, policy: Option<&str>) {
    let kept = corrupt_volume(fat, "errors-remount-ro");
    let m = mount(&kept, policy);
    // Changes before the error are fine, and are on the disk once fsync returns.
    let mut before = File::create(m.path("before.txt")).expect("create before the error");
    io::Write::write_all(&mut before, b"written before the error\n").expect("write");
    before.sync_all().expect("fsync before the error");
    drop(before);
    fs::read(m.path("bad.bin")).expect_err("the broken chain");
    nix::unistd::sync();
    let image = fs::read(&kept.image).expect("read the image");
    corruption_is_eio(&m);
    changes_refused(&m);
    reads_work(&m);
    parent_of_broken_directory_lists(&m);
    assert_eq!(
        fs::read(m.path("before.txt")).expect("read before.txt"),
        b"written before the error\n"
    );
    File::open(m.path("good.txt"))
        .and_then(|f| f.sync_all())
        .expect("fsync of a file opened for reading");
    nix::unistd::sync();
    let status = m.unmount();
    let after = fs::read(&kept.image).expect("read the image");
    assert_same(
        &image,
        &after,
        "errors=remount-ro: the image was written after the error",
    );
    assert!(
        !status.success(),
        "errors=remount-ro: the daemon should say the volume had errors (exit status)"
    );
    let boot = &after[..512];
    let bpb = Bpb::parse(boot).expect("parse the boot sector");
    assert!(bpb.dirty(boot), "the dirty bit stays set for fsck");
}

#[test]
fn errors_remount_ro_fat16() {
    remount_ro_policy(Fat::F16, Some("remount-ro"));
}

#[test]
fn errors_remount_ro_is_the_default_fat32() {
    remount_ro_policy(Fat::F32, None);
}

#[test]
fn errors_remount_ro_fat12() {
    remount_ro_policy(Fat::F12, Some("remount-ro"));
}

/// `errors=panic`: the first corruption met stops the daemon with a message and a non-zero
/// status; the read that met it fails, the mount is dead, and the image is not written.
fn panic_policy(fat: Fat) {
    let kept = corrupt_volume(fat, "errors-panic");
    let m = mount(&kept, Some("panic"));
    reads_work(&m);
    let image = fs::read(&kept.image).expect("read the image");
    let r = fs::read(m.path("bad.bin"));
    assert!(
        r.is_err(),
        "errors=panic: the read of a broken chain succeeded"
    );
    // The connection is gone: every access fails at once rather than hanging.
    let after = fs::metadata(m.path("good.txt"));
    assert_eq!(
        after.as_ref().err().and_then(io::Error::raw_os_error),
        Some(libc::ENOTCONN),
        "errors=panic: access after the panic: {after:?}"
    );
    let dir = m.dir.clone();
    let log_before = m.log();
    let (status, _kept) = m.crashed(Duration::from_secs(30));
    assert!(
        !status.success(),
        "errors=panic: the daemon exited with {status}"
    );
    assert!(!is_mounted(&dir), "the dead mount is gone");
    let log = fs::read_to_string(kept.scratch.0.join("daemon.log")).unwrap_or(log_before);
    assert!(
        log.contains("errors=panic"),
        "errors=panic: the daemon should say why it stopped; log:\n{log}"
    );
    let after = fs::read(&kept.image).expect("read the image");
    assert_same(
        &image,
        &after,
        "errors=panic: the image was written after the panic",
    );
}

#[test]
fn errors_panic_fat16() {
    panic_policy(Fat::F16);
}

#[test]
fn errors_panic_fat32() {
    panic_policy(Fat::F32);
}
