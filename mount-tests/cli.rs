//! The command line around a mount: `--help-options`, refused options, how the mount shows in
//! mountinfo, and what the daemon sets up with the kernel (readahead, killpriv).

use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::{
    Fat, MOUNT_TIMEOUT, Mounted, describe, field, is_mounted, mount_device, mount_type, stats,
};

/// `fatcache mount --help-options` lists the options without an image or mount point, as its
/// help text says ("List every mount option and exit").
#[test]
fn help_options_needs_no_arguments() {
    let out = Command::new(env!("CARGO_BIN_EXE_fatcache"))
        .args(["mount", "--help-options"])
        .output()
        .expect("run fatcache");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("era=") && text.contains("cache_mb="),
        "{}",
        describe("fatcache mount --help-options", &out)
    );
}

/// An unknown or malformed option is refused with a message that names it, and nothing is
/// mounted.
#[test]
fn bad_options_are_refused_by_name() {
    crate::harness::require_fuse();
    let scratch = crate::common::TempDir::new("mount", "badopt");
    let image = scratch.0.join("img");
    crate::common::readers::mkfs_fat(&image, 12, 1440, 1, "BAD").expect("mkfs");
    let dir = scratch.0.join("mnt");
    std::fs::create_dir(&dir).expect("mkdir");
    for (opts, named) in [
        ("no_such_option", "no_such_option"),
        ("era=v1.0", "era"),
        ("cache_mb=0", "cache_mb"),
        ("uid", "uid"),
        ("ro=1", "ro"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_fatcache"))
            .arg("mount")
            .arg(&image)
            .arg(&dir)
            .args(["-f", "-o", opts])
            .output()
            .expect("run fatcache mount");
        let mounted = is_mounted(&dir);
        if mounted {
            let _ = Command::new("umount").arg("-l").arg(&dir).status();
        }
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && !mounted && err.contains(named),
            "-o {opts}: {}",
            describe("fatcache mount", &out)
        );
    }
}

/// The mount shows as a FUSE mount in /proc/self/mountinfo. Through fusermount3 (a user's
/// mount) its type is `fuse.fatcache`; as root fuser 0.18 calls mount(2) itself and always
/// passes the type `fuse` (its direct path drops `subtype=`), which this test accepts and
/// the option's documentation states.
#[test]
fn mountinfo_type_is_fuse() {
    let m = Mounted::new(Fat::F12, "fstype", "");
    let shown = mount_type(&m.dir);
    m.finish();
    assert!(
        matches!(shown.as_deref(), Some("fuse" | "fuse.fatcache")),
        "type in /proc/self/mountinfo: {shown:?}"
    );
}

/// The kernel's readahead on the mount (its bdi's read_ahead_kb) is fatcache's largest request
/// with `cache=kernel`, and what `read_ahead_kb=` says when given, in either cache mode. The
/// daemon sets it once the kernel has taken the INIT reply, which may be a moment after the
/// mount appears, so this waits for it (up to the harness's mount timeout).
#[test]
fn readahead_is_set_on_the_mount() {
    for (i, (opts, want)) in [
        ("cache=kernel", "512"),
        ("cache=kernel,read_ahead_kb=64", "64"),
        ("read_ahead_kb=0", "0"),
    ]
    .into_iter()
    .enumerate()
    {
        let m = Mounted::new(Fat::F12, &format!("readahead{i}"), opts);
        let dev = mount_device(&m.dir).expect("the mount is in mountinfo");
        let knob = format!("/sys/class/bdi/{dev}/read_ahead_kb");
        let start = Instant::now();
        let got = loop {
            let got = std::fs::read_to_string(&knob).expect("read read_ahead_kb");
            if got.trim() == want || start.elapsed() > MOUNT_TIMEOUT {
                break got;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let log = m.log();
        m.finish();
        assert_eq!(got.trim(), want, "-o {opts}: {knob}; log:\n{log}");
    }
}

/// Buffered writes (`cache=kernel`) do not each cost a getxattr of security.capability: the
/// mount takes FUSE_HANDLE_KILLPRIV_V2 (FAT has no suid bits or capabilities to kill), so the
/// kernel stops asking. Without it every one of these 200 writes brought one.
#[test]
fn buffered_writes_ask_for_no_xattr() {
    use std::os::unix::fs::FileExt;
    const WRITES: u64 = 200;
    let m = Mounted::new(Fat::F32, "killpriv", "cache=kernel");
    let f = std::fs::File::create(m.path("f")).expect("create");
    for i in 0..WRITES {
        f.write_all_at(&[i as u8; 4096], i * 4096).expect("write");
    }
    drop(f);
    let json = stats(&m);
    m.finish();
    let asked = field(&json, "getxattr");
    assert!(
        asked < WRITES / 10,
        "{asked} getxattr requests for {WRITES} writes: {json}"
    );
}

/// Setting an extended attribute fails with EOPNOTSUPP, the first time (the daemon answers
/// ENOSYS, which the kernel turns into EOPNOTSUPP and remembers) and every time after (the
/// kernel answers by itself), on files and directories alike.
#[test]
fn setting_an_xattr_is_not_supported_every_time() {
    let m = Mounted::new(Fat::F16, "setxattr", "");
    std::fs::write(m.path("f"), b"x").expect("create");
    std::fs::create_dir(m.path("d")).expect("mkdir");
    let tries: Vec<(String, Option<i32>)> = ["f", "d", "f", "."]
        .iter()
        .map(|p| {
            let r = xattr::set(m.path(p), "user.test", b"x");
            ((*p).to_owned(), r.err().and_then(|e| e.raw_os_error()))
        })
        .collect();
    m.finish();
    for (p, errno) in tries {
        assert_eq!(errno, Some(libc::EOPNOTSUPP), "setxattr on {p}");
    }
}
