//! How a mount ends and what it may change: `umount` from outside, SIGTERM, SIGINT and SIGHUP
//! all write everything back, clear the dirty bit and exit 0; the daemonized mount (no `-f`);
//! a read-only mount refuses every change with EROFS and leaves the image's bytes alone; the
//! uid/gid/umask mapping and `chmod a-w` as the read-only attribute.

use std::fs::{self, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::basic::{Model, expect_errno};
use crate::common::readers::{assert_trees_agree, fsck_clean, mtools_put_tree};
use crate::harness::{Fat, Mounted, Rng, is_mounted, q, sh, sh_ok};

/// Writes a few files, some large enough to stay dirty in the cache, and returns the model.
fn write_some(m: &Mounted, seed: u64) -> Model {
    let mut rng = Rng::new(seed);
    let mut model = Model::default();
    fs::create_dir(m.path("dir")).expect("mkdir dir");
    model.dir("/dir");
    for (i, len) in [0usize, 1, 4095, 4096, 70_000, 1 << 20]
        .into_iter()
        .enumerate()
    {
        let path = format!("/dir/file {i} of {len} bytes.bin");
        let data = rng.bytes(len);
        fs::write(m.path(&path[1..]), &data).expect("write");
        model.file(&path, &data);
    }
    fs::write(m.path("top.txt"), b"written just before the end\n").expect("write top.txt");
    model.file("/top.txt", b"written just before the end\n");
    model
}

/// Mounts, writes, ends the mount with `signal` (or umount), and checks status, fsck and data.
fn end_by(fat: Fat, signal: Option<&str>) {
    // Periodic writeback off and a long expiry: the data is still dirty in our cache when the
    // end comes, so the end itself must write it back.
    let m = Mounted::new(
        fat,
        &format!("end-{}", signal.unwrap_or("umount")),
        "writeback_interval_ms=0,dirty_expire_ms=600000",
    );
    let model = write_some(&m, 0xe0d ^ fat as u64);
    let done = m.end_with(signal);
    assert_trees_agree(&done.image, &model.0);
}

#[test]
fn end_by_umount_fat16() {
    end_by(Fat::F16, None);
}

#[test]
fn end_by_umount_fat32() {
    end_by(Fat::F32, None);
}

#[test]
fn end_by_sigterm_fat16() {
    end_by(Fat::F16, Some("TERM"));
}

#[test]
fn end_by_sigterm_fat32() {
    end_by(Fat::F32, Some("TERM"));
}

#[test]
fn end_by_sigint_fat16() {
    end_by(Fat::F16, Some("INT"));
}

#[test]
fn end_by_sigint_fat32() {
    end_by(Fat::F32, Some("INT"));
}

#[test]
fn end_by_sighup_fat32() {
    end_by(Fat::F32, Some("HUP"));
}

/// A signal while a file is still open (as when a shell sits in the mount): the daemon must
/// still unmount (lazily, as libfuse does), write back, clear the dirty bit and exit 0.
#[test]
fn sigterm_with_an_open_file_fat16() {
    let m = Mounted::new(Fat::F16, "end-open", "writeback_interval_ms=0");
    let mut model = write_some(&m, 7);
    let mut f = fs::File::create(m.path("open.txt")).expect("create open.txt");
    std::io::Write::write_all(&mut f, b"still open").expect("write open.txt");
    model.file("/open.txt", b"still open");
    let kept = m.keep();
    // The file stays open across the signal and is closed a little later: a daemon that
    // unmounts lazily and serves until the last close passes, as does one that exits at once.
    let closer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(500));
        drop(f);
    });
    let status = m.terminate();
    closer.join().expect("the closing thread");
    assert!(
        status.success(),
        "the daemon exited with {status} on SIGTERM"
    );
    assert_trees_agree(&kept.image, &model.0);
}

/// Without `-f` the mount command returns once mounted, and the daemon it left behind ends
/// cleanly at `umount`. The command's output streams must reach end-of-file when it returns,
/// as libfuse's daemonize gives: a caller that captures them (`out=$(fatcache mount ...)`,
/// a service manager) would otherwise wait until the unmount.
#[test]
fn daemonized_mount_fat16() {
    crate::harness::require_fuse();
    let scratch = crate::common::TempDir::new("mount", "daemonized");
    let image = scratch.0.join("bg.img");
    crate::common::readers::mkfs_fat(&image, 16, 32 * 1024, 4, "BG").expect("mkfs");
    let dir = scratch.0.join("mnt");
    fs::create_dir(&dir).expect("mkdir mnt");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_fatcache"))
        .arg("mount")
        .arg(&image)
        .arg(&dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run fatcache mount");
    // From here on, a failure must not leave the mount behind.
    let guard = LazyUnmount(&dir);
    let (mut stdout, mut stderr) = (child.stdout.take(), child.stderr.take());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut text = Vec::new();
        for s in [
            stdout.as_mut().map(|s| s as &mut dyn Read),
            stderr.as_mut().map(|s| s as _),
        ]
        .into_iter()
        .flatten()
        {
            let _ = s.read_to_end(&mut text);
        }
        let _ = tx.send(text);
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for fatcache mount") {
            break status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "fatcache mount (no -f) did not return within 30 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    let streams = rx.recv_timeout(Duration::from_secs(5));
    assert!(
        status.success(),
        "fatcache mount exited with {status}: {streams:?}"
    );
    assert!(
        is_mounted(&dir),
        "fatcache mount returned but nothing is mounted"
    );
    fs::write(dir.join("bg.txt"), b"from the background").expect("write bg.txt");
    sh_ok(&scratch.0, &format!("umount {}", q(&dir)));
    // The daemon is no child of ours: wait for the image to become clean.
    let start = Instant::now();
    let mut last = Ok(());
    while start.elapsed() < Duration::from_secs(30) {
        last = fsck_clean(&image);
        if last.is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if let Err(e) = last {
        panic!("the image is not clean 30 s after umount: {e}");
    }
    drop(guard);
    let mut model = Model::default();
    model.file("/bg.txt", b"from the background");
    assert_trees_agree(&image, &model.0);
    assert!(
        streams.is_ok(),
        "fatcache mount returned, but its stdout/stderr stayed open (held by the daemon) until \
         the unmount: a caller capturing its output hangs"
    );
}

/// Unmounts `dir` lazily on drop if it is still mounted.
struct LazyUnmount<'a>(&'a Path);

impl Drop for LazyUnmount<'_> {
    fn drop(&mut self) {
        if is_mounted(self.0) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(self.0)
                .status();
        }
    }
}

/// The image's SHA-256, by sha256sum.
fn sha256(image: &Path) -> String {
    sh_ok(Path::new("/"), &format!("sha256sum {}", q(image)))
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

fn read_only(fat: Fat) {
    crate::harness::require_fuse();
    let scratch = crate::common::TempDir::new("mount", &format!("ro-{}", fat.name()));
    let image = scratch.0.join("ro.img");
    let (bits, kib, spc) = match fat {
        Fat::F12 => (12, 1440, 1),
        Fat::F16 => (16, 64 * 1024, 4),
        Fat::F32 => (32, 64 * 1024, 1),
    };
    crate::common::readers::mkfs_fat(&image, bits, kib, spc, "RO").expect("mkfs");
    let mut model = Model::default();
    model.dir("/sub");
    model.file("/sub/inner.txt", b"inner");
    model.file("/Long name of a file.txt", &Rng::new(3).bytes(9_000));
    mtools_put_tree(&image, &model.0).expect("fill the image with mtools");
    let before = sha256(&image);

    let m = Mounted::on(scratch, image, "ro");
    let p = |rel: &str| m.path(rel);
    assert_eq!(
        fs::read(p("Long name of a file.txt")).expect("read"),
        model.data("/Long name of a file.txt")
    );
    assert_eq!(fs::read(p("sub/inner.txt")).expect("read"), b"inner");
    let erofs = libc::EROFS;
    expect_errno(fs::write(p("new.txt"), b"x"), erofs, "create on ro");
    expect_errno(
        OpenOptions::new().write(true).open(p("sub/inner.txt")),
        erofs,
        "open for write on ro",
    );
    expect_errno(
        OpenOptions::new().append(true).open(p("sub/inner.txt")),
        erofs,
        "open for append on ro",
    );
    expect_errno(fs::create_dir(p("newdir")), erofs, "mkdir on ro");
    expect_errno(fs::remove_file(p("sub/inner.txt")), erofs, "unlink on ro");
    expect_errno(fs::remove_dir(p("sub")), erofs, "rmdir on ro");
    expect_errno(fs::rename(p("sub"), p("sub2")), erofs, "rename on ro");
    expect_errno(
        fs::set_permissions(p("sub/inner.txt"), fs::Permissions::from_mode(0o444)),
        erofs,
        "chmod on ro",
    );
    let touch = sh(
        m.scratch(),
        &format!("truncate -s 0 {}", q(&p("sub/inner.txt"))),
    );
    assert!(!touch.status.success(), "truncate succeeded on a ro mount");
    let done = m.finish();
    assert_eq!(
        sha256(&done.image),
        before,
        "a read-only mount changed the image"
    );
    assert_trees_agree(&done.image, &model.0);
}

#[test]
fn read_only_fat16() {
    read_only(Fat::F16);
}

#[test]
fn read_only_fat32() {
    read_only(Fat::F32);
}

/// `uid=`, `gid=`, `umask=` show in `stat` and `ls -l`; chmod a-w sets the read-only attribute
/// (the write bits go, and stay gone after a remount), chmod u+w clears it; chown to another
/// owner is EPERM.
fn ownership(fat: Fat) {
    let m = Mounted::new(fat, "owner", "uid=1234,gid=2345,umask=027");
    fs::write(m.path("f.txt"), b"f").expect("write");
    fs::write(m.path("ro.txt"), b"ro").expect("write");
    fs::create_dir(m.path("d")).expect("mkdir");
    let meta = fs::metadata(m.path("f.txt")).expect("stat");
    assert_eq!((meta.uid(), meta.gid()), (1234, 2345), "owner of a file");
    assert_eq!(meta.mode() & 0o777, 0o750, "mode of a file under umask=027");
    let meta = fs::metadata(m.path("d")).expect("stat");
    assert_eq!(meta.mode() & 0o777, 0o750, "mode of a dir under umask=027");
    let ls = sh_ok(m.scratch(), &format!("ls -ln {}", q(&m.dir)));
    assert!(
        ls.lines()
            .any(|l| l.starts_with("-rwxr-x--- 1 1234 2345 ") && l.ends_with(" f.txt")),
        "ls -ln: {ls}"
    );
    fs::set_permissions(m.path("ro.txt"), fs::Permissions::from_mode(0o555)).expect("chmod a-w");
    let mode = fs::metadata(m.path("ro.txt")).expect("stat").mode() & 0o777;
    assert_eq!(mode, 0o550, "mode after chmod a-w");
    let chown = sh(m.scratch(), &format!("chown 0 {}", q(&m.path("f.txt"))));
    assert!(
        String::from_utf8_lossy(&chown.stderr).contains("Operation not permitted"),
        "chown to another owner: {chown:?}"
    );
    let mut model = Model::default();
    model.file("/f.txt", b"f");
    model.file("/ro.txt", b"ro");
    model.dir("/d");
    let done = m.finish();
    assert_trees_agree(&done.image, &model.0);
    // The attribute is on disk: a new mount shows the file without write bits.
    let image = done.image.clone();
    let m = Mounted::on_shared(done.scratch, image, "uid=1234,gid=2345,umask=027");
    let mode = fs::metadata(m.path("ro.txt")).expect("stat").mode() & 0o777;
    assert_eq!(mode, 0o550, "mode of the read-only file after a remount");
    fs::set_permissions(m.path("ro.txt"), fs::Permissions::from_mode(0o750)).expect("chmod u+w");
    let mode = fs::metadata(m.path("ro.txt")).expect("stat").mode() & 0o777;
    assert_eq!(mode, 0o750, "mode after chmod u+w");
    m.finish();
}

#[test]
fn ownership_and_modes_fat16() {
    ownership(Fat::F16);
}

#[test]
fn ownership_and_modes_fat32() {
    ownership(Fat::F32);
}

/// Writes 1 MiB chunks to `path` until the volume is full; the failing write must be ENOSPC.
fn fill(path: &Path) -> u64 {
    let mut f = fs::File::create(path).expect("create the filler");
    let chunk = vec![0xa5u8; 1 << 20];
    let mut written = 0u64;
    loop {
        match std::io::Write::write(&mut f, &chunk) {
            Ok(0) => panic!("write returned 0 before the volume was full"),
            Ok(n) => written += n as u64,
            Err(e) => {
                assert_eq!(
                    e.raw_os_error(),
                    Some(libc::ENOSPC),
                    "a write to a full volume: {e}"
                );
                return written;
            }
        }
    }
}

/// Extending a new, still-open file past the free space fails with ENOSPC and must leave a
/// consistent volume: whatever size the mount shows is what the entry says, and no cluster
/// is allocated without a file that owns it.
fn enospc_extend_new_file(fat: Fat) {
    let m = Mounted::new(fat, "enospc-extend", "");
    let f = fs::File::create(m.path("grown")).expect("create grown");
    expect_errno(
        f.set_len(100 << 20),
        libc::ENOSPC,
        "set_len past the free space",
    );
    drop(f);
    // What the mount shows is what must be on the disk.
    let want = crate::harness::host_tree(&m.dir);
    let done = m.finish();
    assert_trees_agree(&done.image, &want);
}

#[test]
fn enospc_extend_new_file_fat16() {
    enospc_extend_new_file(Fat::F16);
}

#[test]
fn enospc_extend_new_file_fat32() {
    enospc_extend_new_file(Fat::F32);
}

/// A full volume: the write that does not fit fails with ENOSPC; once the filler is removed
/// its space is free when unlink returns, as on vfat (which frees at the final iput, inside
/// the unlink), so a new file of the freed size fits at once. Three rounds.
#[test]
fn full_volume_rm_frees_at_once_fat32() {
    let m = Mounted::new(Fat::F32, "full", "");
    let again = Rng::new(5).bytes(16 << 20);
    for round in 0..3 {
        let filled = fill(&m.path("filler"));
        assert!(filled > 32 << 20, "round {round}: only {filled} bytes fit");
        fs::remove_file(m.path("filler")).expect("remove the filler");
        fs::write(m.path("again"), &again).unwrap_or_else(|e| {
            panic!("round {round}: 16 MiB right after removing a {filled}-byte file: {e}")
        });
        fs::remove_file(m.path("again")).expect("remove again");
    }
    fs::write(m.path("again"), &again).expect("the last write");
    let mut model = Model::default();
    model.file("/again", &again);
    let done = m.finish();
    assert_trees_agree(&done.image, &model.0);
}

/// The harness itself: a test that panics while mounted leaves no mount and no daemon behind.
#[test]
fn harness_cleans_up_after_a_panic() {
    let seen = std::sync::Mutex::new(None);
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let m = Mounted::new(Fat::F12, "panic", "");
        fs::write(m.path("f"), b"x").expect("write");
        *seen.lock().expect("lock") = Some((m.dir.clone(), m.pid()));
        panic!("a deliberate panic while mounted");
    }));
    assert!(r.is_err(), "the closure was meant to panic");
    let (dir, pid) = seen
        .lock()
        .expect("lock")
        .take()
        .expect("mounted before the panic");
    assert!(
        !is_mounted(&dir),
        "{} still mounted after the panic",
        dir.display()
    );
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "daemon {pid} still there after the panic"
    );
}
