//! The mount harness: a scratch FAT image mounted by a real `fatcache mount -f` child process,
//! with its standard error in a log file, and a guard that leaves no mount behind.
//!
//! [`Mounted::new`] makes the image, starts the daemon and waits for the mount to appear in
//! `/proc/self/mountinfo`. A test ends with [`Mounted::finish`] (or [`Mounted::unmount`] /
//! [`Mounted::terminate`] for the other ways out), which checks that the daemon exited 0 and
//! that `fsck.fat -n` finds nothing, the dirty bit included. If the test panics first, `Drop`
//! unmounts lazily and kills the daemon. A watchdog kills a daemon that is still serving long
//! after the test should have ended, so a hung request fails the test instead of hanging it.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::common::TempDir;
use crate::common::readers::{Node, Tree, fsck_clean};

/// Longest wait for the mount to appear.
pub(crate) const MOUNT_TIMEOUT: Duration = Duration::from_secs(20);

/// Longest wait for the daemon to exit once unmounted or signalled: it writes everything back
/// first.
const EXIT_TIMEOUT: Duration = Duration::from_secs(60);

/// Longest a mount may serve before the watchdog kills its daemon: far beyond what any test
/// here needs, so only a hang reaches it.
const WATCHDOG: Duration = Duration::from_secs(240);

/// Longest one shell command of a test may run.
const SHELL_TIMEOUT: Duration = Duration::from_secs(180);

/// Fails the test unless it can mount: root and `/dev/fuse` (CI has both).
pub(crate) fn require_fuse() {
    assert!(
        Path::new("/dev/fuse").exists(),
        "the mount tests need /dev/fuse (modprobe fuse, or run in a container with \
         --device /dev/fuse); they do not skip"
    );
    let uid = fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        })
        .unwrap_or_default();
    assert_eq!(
        uid, "0",
        "the mount tests must run as root (they mount with mount(2) and umount(8)); they do \
         not skip"
    );
}

/// The FAT type of a scratch image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fat {
    /// A 1.44 MB floppy made by mkfs.fat: 512-byte clusters, a 224-entry root.
    F12,
    /// 64 MiB made by mkfs.fat: 2 KiB clusters, a 512-entry root.
    F16,
    /// 64 MiB made by `fatcache mkfs`: 512-byte clusters, so a 4 KiB page spans eight.
    F32,
}

impl Fat {
    /// A short name for file and directory names.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Fat::F12 => "fat12",
            Fat::F16 => "fat16",
            Fat::F32 => "fat32",
        }
    }

    /// Makes a fresh image of this type at `image`.
    fn make(self, image: &Path) {
        let made = match self {
            Fat::F12 => crate::common::readers::mkfs_fat(image, 12, 1440, 1, "MOUNT12"),
            Fat::F16 => crate::common::readers::mkfs_fat(image, 16, 64 * 1024, 4, "MOUNT16"),
            Fat::F32 => fatcache_mkfs(image, "64M", 32),
        };
        if let Err(e) = made {
            panic!("cannot make a {} image: {e}", self.name());
        }
    }
}

/// Makes a FAT`bits` image of `size` (`64M`) at `image` with `fatcache mkfs`.
pub(crate) fn fatcache_mkfs(image: &Path, size: &str, bits: u8) -> Result<(), String> {
    let out = Command::new(env!("CARGO_BIN_EXE_fatcache"))
        .arg("mkfs")
        .arg(image)
        .args([
            "--size",
            size,
            "--fat",
            &bits.to_string(),
            "--label",
            "MOUNT",
        ])
        .args(["--volume-id", "1234abcd"])
        .output()
        .map_err(|e| format!("run fatcache mkfs: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(describe("fatcache mkfs", &out))
    }
}

/// The bytes per cluster of the FAT image `image`, from its boot sector.
pub(crate) fn cluster_size(image: &Path) -> u64 {
    let mut boot = [0u8; 14];
    File::open(image)
        .and_then(|mut f| f.read_exact(&mut boot))
        .expect("read the boot sector");
    u64::from(u16::from_le_bytes([boot[11], boot[12]])) * u64::from(boot[13])
}

/// A mount of a scratch image by a `fatcache mount -f` child.
pub(crate) struct Mounted {
    /// The mount point.
    pub(crate) dir: PathBuf,
    /// The image file.
    pub(crate) image: PathBuf,
    /// The daemon's standard error.
    log: PathBuf,
    /// The daemon, until it has been waited for.
    child: Option<Child>,
    /// Stops the watchdog (by dropping the sender) before the daemon is waited for.
    watchdog: Option<(mpsc::Sender<()>, JoinHandle<()>)>,
    /// Holds the image, the mount point and the log; released only once nothing is mounted
    /// (a [`Mounted::keep`] handle keeps it beyond that).
    scratch: Option<Arc<TempDir>>,
}

/// An image after its mount ended: the scratch directory stays until this is dropped.
pub(crate) struct Unmounted {
    /// The image file.
    pub(crate) image: PathBuf,
    /// The scratch directory that holds the image.
    pub(crate) scratch: Arc<TempDir>,
}

/// A scratch directory no other mount of this process uses.
fn scratch_dir(test: &str) -> TempDir {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    TempDir::new("mount", &format!("{test}-{n}"))
}

impl Mounted {
    /// Makes a fresh `fat` image and mounts it with `-o opts` (none if empty).
    pub(crate) fn new(fat: Fat, test: &str, opts: &str) -> Mounted {
        require_fuse();
        let scratch = scratch_dir(&format!("{test}-{}", fat.name()));
        let image = scratch.0.join(format!("{}.img", fat.name()));
        fat.make(&image);
        Mounted::on(scratch, image, opts)
    }

    /// Mounts the existing image `image` (inside `scratch`) with `-o opts`.
    pub(crate) fn on(scratch: TempDir, image: PathBuf, opts: &str) -> Mounted {
        Mounted::on_shared(Arc::new(scratch), image, opts)
    }

    /// As [`Mounted::new`], for a test that keeps the mount busy for `runs`: the watchdog
    /// waits that long beyond its usual [`WATCHDOG`] (a soak of many minutes).
    pub(crate) fn new_for(fat: Fat, test: &str, opts: &str, runs: Duration) -> Mounted {
        require_fuse();
        let scratch = scratch_dir(&format!("{test}-{}", fat.name()));
        let image = scratch.0.join(format!("{}.img", fat.name()));
        fat.make(&image);
        Mounted::start(Arc::new(scratch), image, opts, WATCHDOG + runs)
    }

    /// As [`Mounted::on`], in a scratch directory another handle may hold too.
    pub(crate) fn on_shared(scratch: Arc<TempDir>, image: PathBuf, opts: &str) -> Mounted {
        Mounted::start(scratch, image, opts, WATCHDOG)
    }

    /// Starts the daemon and waits for the mount; the watchdog kills it after `watchdog`.
    fn start(scratch: Arc<TempDir>, image: PathBuf, opts: &str, watchdog: Duration) -> Mounted {
        require_fuse();
        let dir = scratch.0.join("mnt");
        fs::create_dir_all(&dir).expect("create the mount point");
        let log = scratch.0.join("daemon.log");
        let log_file = File::create(&log).expect("create the daemon log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_fatcache"));
        cmd.arg("mount").arg(&image).arg(&dir).arg("-f");
        if !opts.is_empty() {
            cmd.args(["-o", opts]);
        }
        cmd.env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log_file));
        let child = cmd.spawn().expect("start fatcache mount");
        let mut m = Mounted {
            dir,
            image,
            log,
            child: Some(child),
            watchdog: None,
            scratch: Some(scratch),
        };
        m.wait_mounted();
        m.start_watchdog(watchdog);
        m
    }

    /// The daemon's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// What the daemon has written to standard error so far.
    pub(crate) fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_else(|e| format!("(no log: {e})"))
    }

    /// `rel` inside the mount.
    pub(crate) fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    /// The scratch directory (outside the mount), for host-side files of the test.
    pub(crate) fn scratch(&self) -> &Path {
        &self.scratch.as_ref().expect("scratch is kept until drop").0
    }

    /// A handle that keeps the scratch directory (image, log) after this mount is gone, for
    /// a test that ends it with [`Mounted::unmount`] or [`Mounted::terminate`].
    pub(crate) fn keep(&self) -> Unmounted {
        Unmounted {
            image: self.image.clone(),
            scratch: Arc::clone(self.scratch.as_ref().expect("scratch is kept until drop")),
        }
    }

    fn wait_mounted(&mut self) {
        let start = Instant::now();
        loop {
            if is_mounted(&self.dir) {
                return;
            }
            let child = self.child.as_mut().expect("the daemon was started");
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "fatcache mount exited with {status} before mounting {}; log:\n{}",
                    self.dir.display(),
                    self.log()
                );
            }
            if start.elapsed() > MOUNT_TIMEOUT {
                panic!(
                    "{} did not appear in /proc/self/mountinfo within {MOUNT_TIMEOUT:?}; log:\n{}",
                    self.dir.display(),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kills the daemon if the mount is still up after `limit` ([`WATCHDOG`] unless a test
    /// says it runs longer): whatever waits on it then fails with ENOTCONN instead of hanging
    /// the test run.
    fn start_watchdog(&mut self, limit: Duration) {
        let (tx, rx) = mpsc::channel::<()>();
        let pid = self.pid().to_string();
        let dir = self.dir.display().to_string();
        let handle = std::thread::spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
                eprintln!("watchdog: {dir} still mounted after {limit:?}: killing {pid}");
                let _ = Command::new("kill").args(["-KILL", &pid]).status();
            }
        });
        self.watchdog = Some((tx, handle));
    }

    fn stop_watchdog(&mut self) {
        if let Some((tx, handle)) = self.watchdog.take() {
            drop(tx);
            let _ = handle.join();
        }
    }

    /// Waits for the daemon to exit, at most [`EXIT_TIMEOUT`]; kills it after that and fails.
    fn wait_exit(&mut self, how: &str) -> ExitStatus {
        let mut child = self.child.take().expect("the daemon is waited for once");
        let start = Instant::now();
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return status,
                Ok(None) if start.elapsed() < EXIT_TIMEOUT => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                result => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
                    panic!(
                        "the daemon did not exit within {EXIT_TIMEOUT:?} after {how} ({result:?}); \
                         killed; log:\n{}",
                        self.log()
                    );
                }
            }
        }
    }

    /// Unmounts with `umount DIR` and returns the daemon's exit status.
    pub(crate) fn unmount(mut self) -> ExitStatus {
        self.stop_watchdog();
        let mut tries = 0;
        loop {
            let out = Command::new("umount")
                .arg(&self.dir)
                .output()
                .expect("run umount");
            if out.status.success() {
                break;
            }
            // A process of the test that just exited may still hold a file for a moment.
            tries += 1;
            let busy = String::from_utf8_lossy(&out.stderr).contains("busy");
            if !busy || tries > 100 {
                panic!(
                    "{}\ndaemon log:\n{}",
                    describe(&format!("umount {}", self.dir.display()), &out),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let status = self.wait_exit("umount");
        assert!(
            !is_mounted(&self.dir),
            "{} still mounted after umount",
            self.dir.display()
        );
        status
    }

    /// Sends `signal` (`TERM`, `INT`, `HUP`) with `kill` and returns the daemon's exit status;
    /// the daemon must have unmounted itself.
    pub(crate) fn terminate_with(mut self, signal: &str) -> ExitStatus {
        self.stop_watchdog();
        let pid = self.pid().to_string();
        let sent = Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -{signal} {pid}: {sent}");
        let status = self.wait_exit(&format!("SIG{signal}"));
        if !status.success() {
            // The caller's assertion on the status cannot show why: the log goes with `self`.
            eprintln!(
                "the daemon exited with {status} on SIG{signal}; log:\n{}",
                self.log()
            );
        }
        assert!(
            !is_mounted(&self.dir),
            "{} still mounted after the daemon exited with {status} on SIG{signal}; log:\n{}",
            self.dir.display(),
            self.log()
        );
        status
    }

    /// Waits up to `within` for the daemon to end by itself (as a BUG under `on_bug=abort`
    /// ends it), then takes down the dead mount it leaves (`umount`, lazily if a file is still
    /// open on it); the daemon's exit status and the kept image. Fails the test if the daemon
    /// is still serving after `within`.
    pub(crate) fn crashed(mut self, within: Duration) -> (ExitStatus, Unmounted) {
        self.stop_watchdog();
        let kept = self.keep();
        let start = Instant::now();
        let status = loop {
            let child = self.child.as_mut().expect("the daemon is waited for once");
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                break status;
            }
            assert!(
                start.elapsed() < within,
                "the daemon still runs after {within:?}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        let plain = Command::new("umount").arg(&self.dir).output();
        if !plain.is_ok_and(|o| o.status.success()) {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
        assert!(
            !is_mounted(&self.dir),
            "{} still mounted after its daemon died and umount",
            self.dir.display()
        );
        (status, kept)
    }

    /// SIGTERM, as `terminate_with("TERM")`.
    pub(crate) fn terminate(self) -> ExitStatus {
        self.terminate_with("TERM")
    }

    /// Ends the mount with `umount`, then checks that the daemon exited 0 and that
    /// `fsck.fat -n` is clean (the dirty bit cleared).
    pub(crate) fn finish(self) -> Unmounted {
        self.end_with(None)
    }

    /// Ends the mount with `signal` (or `umount` for `None`) and checks as [`Mounted::finish`].
    pub(crate) fn end_with(self, signal: Option<&str>) -> Unmounted {
        let kept = self.keep();
        let log_path = self.log.clone();
        let how = signal.map_or("umount".to_owned(), |s| format!("SIG{s}"));
        let status = match signal {
            None => self.unmount(),
            Some(s) => self.terminate_with(s),
        };
        let log = fs::read_to_string(&log_path).unwrap_or_default();
        assert!(
            status.success(),
            "the daemon exited with {status} after {how}; log:\n{log}"
        );
        if let Err(e) = fsck_clean(&kept.image) {
            panic!("fsck.fat after {how}: {e}\ndaemon log:\n{log}");
        }
        kept
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        self.stop_watchdog();
        if let Some(mut child) = self.child.take() {
            if std::thread::panicking() {
                eprintln!(
                    "--- daemon log of {} (test failed)\n{}--- end of log",
                    self.dir.display(),
                    self.log()
                );
            }
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(10) {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if is_mounted(&self.dir) {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
        // Only now may the scratch directory (with the mount point in it) go.
        self.scratch.take();
    }
}

/// The mount's stats JSON (`user.fatcache.stats`).
pub(crate) fn stats(m: &Mounted) -> String {
    let v = xattr::get(&m.dir, "user.fatcache.stats")
        .expect("getxattr user.fatcache.stats")
        .expect("user.fatcache.stats is there");
    String::from_utf8(v).expect("stats are UTF-8")
}

/// A numeric field of the stats JSON.
pub(crate) fn field(json: &str, name: &str) -> u64 {
    let key = format!("\"{name}\":");
    json.split_once(&key)
        .and_then(|(_, rest)| rest.split([',', '}']).next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {json}"))
}

/// Whether something is mounted on `dir`, by `/proc/self/mountinfo`.
pub(crate) fn is_mounted(dir: &Path) -> bool {
    let want = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let want = want.to_string_lossy();
    let info = fs::read_to_string("/proc/self/mountinfo").expect("read /proc/self/mountinfo");
    info.lines().any(|l| {
        let point = l.split(' ').nth(4).unwrap_or_default();
        unescape_mountinfo(point) == want.as_ref()
    })
}

/// The filesystem type `/proc/self/mountinfo` shows for the mount on `dir`.
pub(crate) fn mount_type(dir: &Path) -> Option<String> {
    mountinfo_line(dir)?
        .split(" - ")
        .nth(1)?
        .split(' ')
        .next()
        .map(str::to_owned)
}

/// The `major:minor` of the mount on `dir` (its backing device, as in /sys/class/bdi).
pub(crate) fn mount_device(dir: &Path) -> Option<String> {
    mountinfo_line(dir)?.split(' ').nth(2).map(str::to_owned)
}

/// The last (topmost) `/proc/self/mountinfo` line of a mount on `dir`.
fn mountinfo_line(dir: &Path) -> Option<String> {
    let want = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let want = want.to_string_lossy();
    let info = fs::read_to_string("/proc/self/mountinfo").expect("read /proc/self/mountinfo");
    info.lines()
        .rfind(|l| unescape_mountinfo(l.split(' ').nth(4).unwrap_or_default()) == want.as_ref())
        .map(str::to_owned)
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape_mountinfo(s: &str) -> String {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            let digits = std::str::from_utf8(&b[i + 1..i + 4]).unwrap_or("x");
            if let Ok(v) = u8::from_str_radix(digits, 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The command, status and both streams of a finished program, for a failure message.
pub(crate) fn describe(cmd: &str, out: &Output) -> String {
    format!(
        "{cmd}: {}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `script` with `sh -c` in `cwd`, with no standard input, killed after
/// [`SHELL_TIMEOUT`].
pub(crate) fn sh(cwd: &Path, script: &str) -> Output {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(cwd)
        .env("LC_ALL", "C.UTF-8")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start sh");
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stdout.read_to_end(&mut v);
        v
    });
    let err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stderr.read_to_end(&mut v);
        v
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for sh") {
            break status;
        }
        if start.elapsed() > SHELL_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = err.join().unwrap_or_default();
            panic!(
                "sh -c {script:?} still running after {SHELL_TIMEOUT:?}, killed; stderr:\n{}",
                String::from_utf8_lossy(&stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// Runs `script` as [`sh`] and fails the test unless it exits 0; returns its stdout.
#[track_caller]
pub(crate) fn sh_ok(cwd: &Path, script: &str) -> String {
    let out = sh(cwd, script);
    assert!(
        out.status.success(),
        "{}",
        describe(&format!("sh -c {script:?} (in {})", cwd.display()), &out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The shell-quoted form of `p`.
pub(crate) fn q(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', r"'\''"))
}

/// The tree under the host directory `dir`, as the readers give it (every file's bytes).
pub(crate) fn host_tree(dir: &Path) -> Tree {
    let mut tree = Tree::new();
    host_walk(dir, "", &mut tree);
    tree
}

fn host_walk(dir: &Path, prefix: &str, tree: &mut Tree) {
    let entries = fs::read_dir(dir).unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()));
    for entry in entries {
        let entry = entry.unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()));
        let name = entry.file_name().into_string().expect("UTF-8 name");
        let path = format!("{prefix}/{name}");
        let kind = entry.file_type().expect("file type");
        if kind.is_dir() {
            tree.insert(path.clone(), Node::Dir);
            host_walk(&entry.path(), &path, tree);
        } else if kind.is_file() {
            let data = fs::read(entry.path()).unwrap_or_else(|e| panic!("read {path}: {e}"));
            tree.insert(path, Node::File(data));
        } else {
            panic!("{path}: neither file nor directory ({kind:?})");
        }
    }
}

/// `tree` with every path put under `/prefix` (and `/prefix` itself as a directory).
pub(crate) fn under(prefix: &str, tree: &Tree) -> Tree {
    let mut out = Tree::new();
    out.insert(format!("/{prefix}"), Node::Dir);
    for (path, node) in tree {
        out.insert(format!("/{prefix}{path}"), node.clone());
    }
    out
}

/// The names in the directory `dir`.
pub(crate) fn names(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
        .map(|e| {
            e.expect("read_dir entry")
                .file_name()
                .into_string()
                .expect("UTF-8 name")
        })
        .collect()
}

/// A small deterministic generator (xorshift64*), so every run writes the same bytes.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n`.
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// `len` pseudo-random bytes.
    pub(crate) fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(len + 8);
        while v.len() < len {
            v.extend_from_slice(&self.next().to_le_bytes());
        }
        v.truncate(len);
        v
    }
}

/// Finds `program` or prints why `test` skips that part: for the programs CI installs but a
/// developer's machine may lack (git, sqlite3, fio, getfattr).
pub(crate) fn optional_tool(test: &str, program: &str) -> Option<PathBuf> {
    let found = crate::common::find_tool(program);
    if found.is_none() {
        println!("skipping {test}: {program} not found (CI installs it)");
    }
    found
}
