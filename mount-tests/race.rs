//! The January 2021 writeback race through a real mount: `fatcache repro` per era must find
//! the write_cache_pages BUG in v5.9 and v5.10 and never in the eras that fixed it (or never
//! had it); a BUG under `on_bug=abort` kills the daemon with the report on its stderr and
//! leaves the volume marked dirty for fsck; `repro --image` leaves the user's files alone.
//!
//! Time budget: a racy era ends at its first hit (`--stop-after-hit`, typically within a
//! second or two, at most [`RACY_SECONDS`]); a fixed era runs [`CLEAN_SECONDS`] of the same
//! workload, many times the racy eras' usual time to a hit.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::TempDir;
use crate::common::readers::{fsck_clean, mkfs_fat, mtools_tree};
use crate::harness::{Fat, Mounted, Rng, require_fuse};

/// Longest run of a racy era; it ends earlier, at its first hit.
const RACY_SECONDS: u64 = 20;

/// Run of an era that must not hit.
const CLEAN_SECONDS: u64 = 10;

/// Longest a `fatcache repro` run may take beyond its workload seconds (mount, unmount,
/// write-back) before the test stops it.
const REPRO_SLACK: Duration = Duration::from_secs(60);

/// One `ERA hits=N first_s=X stale=N ops=N verdict=V` line of `fatcache repro`.
#[derive(Debug)]
struct Line {
    era: String,
    hits: u64,
    first_s: Option<f64>,
    stale: u64,
    ops: u64,
    verdict: String,
}

impl Line {
    /// Parses a table line; `None` if it is not one.
    fn parse(line: &str) -> Option<Line> {
        let mut words = line.split_whitespace();
        let era = words.next()?.to_owned();
        let mut field = |name: &str| {
            let word = words.next()?;
            word.strip_prefix(name)?
                .strip_prefix('=')
                .map(str::to_owned)
        };
        let hits = field("hits")?.parse().ok()?;
        let first = field("first_s")?;
        let first_s = if first == "-" {
            None
        } else {
            Some(first.parse().ok()?)
        };
        let stale = field("stale")?.parse().ok()?;
        let ops = field("ops")?.parse().ok()?;
        let verdict = field("verdict")?;
        words.next().is_none().then_some(Line {
            era,
            hits,
            first_s,
            stale,
            ops,
            verdict,
        })
    }
}

/// A finished `fatcache repro` run.
struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Run {
    fn describe(&self) -> String {
        format!(
            "fatcache repro: {}\n--- stdout\n{}--- stderr\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// Runs `fatcache repro` with `args`, its temporary files in a scratch directory of the test;
/// stops it (SIGTERM, then SIGKILL) if it overruns `seconds` by [`REPRO_SLACK`].
fn repro(test: &str, seconds: u64, args: &[&str]) -> Run {
    require_fuse();
    let scratch = TempDir::new("race", &format!("repro-{test}"));
    let out_path = scratch.0.join("stdout");
    let err_path = scratch.0.join("stderr");
    let mut child = Command::new(env!("CARGO_BIN_EXE_fatcache"))
        .arg("repro")
        .args(["--seconds", &seconds.to_string()])
        .args(args)
        .env("TMPDIR", &scratch.0)
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).expect("create stdout file"))
        .stderr(File::create(&err_path).expect("create stderr file"))
        .spawn()
        .expect("run fatcache repro");
    let limit = Duration::from_secs(seconds) + REPRO_SLACK;
    let start = Instant::now();
    let mut signalled = None;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for fatcache repro") {
            break status;
        }
        let pid = child.id().to_string();
        match signalled {
            None if start.elapsed() > limit => {
                // SIGTERM first: repro takes its mount down before it exits.
                let _ = Command::new("kill").args(["-TERM", &pid]).status();
                signalled = Some(Instant::now());
            }
            Some(at) if at.elapsed() > Duration::from_secs(30) => {
                let _ = child.kill();
            }
            _ => {}
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let run = Run {
        status,
        stdout: fs::read_to_string(&out_path).unwrap_or_default(),
        stderr: fs::read_to_string(&err_path).unwrap_or_default(),
    };
    assert!(
        signalled.is_none(),
        "still running after {limit:?}, stopped\n{}",
        run.describe()
    );
    run
}

/// Runs one era and checks its line: a hit exactly when the era had the BUG, a match verdict,
/// exit status 0.
fn race(era: &str) -> (Line, Run) {
    let racy = matches!(era, "v5.9" | "v5.10");
    let run = if racy {
        repro(era, RACY_SECONDS, &["--era", era, "--stop-after-hit"])
    } else {
        repro(era, CLEAN_SECONDS, &["--era", era])
    };
    let mut table = run.stdout.lines().filter_map(Line::parse);
    let (Some(line), None) = (table.next(), table.next()) else {
        panic!("expected exactly one table line\n{}", run.describe());
    };
    assert_eq!(line.era, era, "{}", run.describe());
    assert!(line.ops > 0, "the workload did nothing\n{}", run.describe());
    if racy {
        assert!(
            line.hits >= 1 && line.first_s.is_some(),
            "{era} had the BUG, but {RACY_SECONDS} s of the race found no hit\n{}",
            run.describe()
        );
        let header = format!("=== first BUG report, from era {era} ===");
        assert!(
            run.stdout.contains(&header) && run.stdout.contains("BUG at src/mm/writeback.rs:"),
            "no BUG report after the table\n{}",
            run.describe()
        );
    } else {
        assert!(
            line.hits == 0 && line.first_s.is_none(),
            "{era} never had the BUG, but the race hit it\n{}",
            run.describe()
        );
    }
    assert_eq!(line.verdict, "match", "{}", run.describe());
    assert!(run.status.success(), "{}", run.describe());
    (line, run)
}

#[test]
fn race_v5_8_never_hits() {
    race("v5.8");
}

#[test]
fn race_v5_9_hits() {
    race("v5.9");
}

#[test]
fn race_v5_10_hits() {
    race("v5.10");
}

/// The window is reached (stale wakes are delivered) and the `while` of c2407cf7d22d absorbs
/// every one: no hit is not for lack of trying.
#[test]
fn race_v5_11_absorbs_stale_wakes() {
    let (line, run) = race("v5.11");
    assert!(line.stale > 0, "no stale wake at all\n{}", run.describe());
}

/// v6.9: the XOR end of writeback samples PG_waiters as it clears the bit, so a stale wake
/// needs a waiter queued before the clear (SEMANTICS S3); they are rare here (1 to 12 in
/// 10 s), so only the verdict is asserted and the count is printed.
#[test]
fn race_v6_9_never_hits() {
    let (line, _run) = race("v6.9");
    println!("v6.9: {} stale wakes absorbed by `while`", line.stale);
}

#[test]
fn race_alt_a_never_hits() {
    race("alt-a");
}

#[test]
fn race_alt_b_never_hits() {
    race("alt-b");
}

/// `repro --image` works inside a directory of its own on the user's image and removes it:
/// the files already there stay, and fsck finds nothing.
#[test]
fn repro_leaves_a_user_image_as_it_was() {
    require_fuse();
    let scratch = TempDir::new("race", "user-image");
    let image = scratch.0.join("user.img");
    mkfs_fat(&image, 16, 32 * 1024, 4, "USER").expect("mkfs.fat");
    let before = {
        let m = Mounted::on(TempDir::new("race", "user-image-fill"), image.clone(), "");
        fs::write(m.path("keep.txt"), b"the user's data\n").expect("write keep.txt");
        fs::create_dir(m.path("dir")).expect("mkdir dir");
        fs::write(m.path("dir/inner.bin"), vec![7u8; 5000]).expect("write inner.bin");
        m.finish();
        mtools_tree(&image).expect("read the image with mtools")
    };
    let image_arg = image.to_str().expect("UTF-8 path");
    let run = repro("user-image", 2, &["--image", image_arg, "--era", "v5.11"]);
    assert!(run.status.success(), "{}", run.describe());
    let after = mtools_tree(&image).expect("read the image with mtools");
    assert_eq!(
        before,
        after,
        "the image's tree changed\n{}",
        run.describe()
    );
    if let Err(e) = fsck_clean(&image) {
        panic!("fsck.fat after repro --image: {e}\n{}", run.describe());
    }
}

/// What the abort test's workload threads share.
#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    ops: AtomicU64,
    /// The first error other than ENOTCONN and ECONNABORTED (which only say the daemon is
    /// gone).
    odd_error: Mutex<Option<String>>,
}

impl Shared {
    /// Counts `r`; false once the thread should end.
    fn count<T>(&self, what: &str, r: std::io::Result<T>) -> bool {
        match r {
            Ok(_) => {
                self.ops.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTCONN | libc::ECONNABORTED)) => {
                return false;
            }
            Err(e) => {
                let mut odd = self.odd_error.lock().unwrap_or_else(|p| p.into_inner());
                odd.get_or_insert_with(|| format!("{what}: {e}"));
            }
        }
        !self.stop.load(Ordering::Relaxed)
    }
}

/// Sets the stop flag when dropped, so a failing test does not leave its threads running.
struct StopOnDrop(Arc<Shared>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stop.store(true, Ordering::Relaxed);
    }
}

/// The race workload of `fatcache repro`, written again here so this test does not depend
/// on it: per file, writers inside page 0 and a thread that grows, shrinks and syncs.
fn start_race_workload(dir: &Path, shared: &Arc<Shared>) -> Vec<std::thread::JoinHandle<()>> {
    let mut threads = Vec::new();
    for f in 0..3u64 {
        let path = dir.join(format!("race{f}.bin"));
        fs::write(&path, vec![b'.'; 1000]).expect("create a race file");
        let open = || {
            OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .expect("open a race file")
        };
        for t in 0..4u64 {
            let (file, shared) = (open(), Arc::clone(shared));
            let mut rng = Rng::new(0xab0 + f * 16 + t);
            threads.push(std::thread::spawn(move || {
                loop {
                    let offset = rng.below(1000);
                    let len = 1 + rng.below(16.min(1000 - offset)) as usize;
                    if !shared.count("pwrite", file.write_at(&[b'w'; 16][..len], offset)) {
                        break;
                    }
                }
            }));
        }
        let (file, shared) = (open(), Arc::clone(shared));
        let mut rng = Rng::new(0x512e + f);
        threads.push(std::thread::spawn(move || {
            loop {
                let grown = 2048 + rng.below(6145);
                let going = shared.count("ftruncate up", file.set_len(grown))
                    && shared.count("fsync", file.sync_all())
                    && shared.count("ftruncate down", file.set_len(1000));
                if !going {
                    break;
                }
                // ftruncate and fsync hold the kernel's inode lock exclusively: back to back
                // they leave the writers, whose overlap with the sync the race needs, little
                // time in between (as repro's sizer pauses).
                std::thread::sleep(Duration::from_micros(rng.below(4000)));
            }
        }));
    }
    threads
}

/// `on_bug=abort`, as the kernel's BUG kills the task: the first hit ends the daemon with a
/// failure status and the report on its stderr; the dead mount is taken down, and the volume
/// is left marked dirty, so fsck.fat says it was not properly unmounted.
#[test]
fn bug_under_on_bug_abort_kills_the_daemon_and_leaves_the_volume_dirty() {
    let m = Mounted::new(
        Fat::F16,
        "bug-abort",
        // As `fatcache repro` mounts for three files: a FUSE worker per workload thread and two
        // spare, and a completion thread per file and two more. With the default two, a
        // completion held in the wake_delay window holds up every other (the next writeback's
        // among them) and the first hit took over 30 s in 5 runs of 6; with five, 1-3 s.
        "sync,era=v5.10,on_bug=abort,wake_delay_us=1000,io_latency_us=300,threads=17,io_threads=5",
    );
    let shared = Arc::new(Shared::default());
    let _stop = StopOnDrop(Arc::clone(&shared));
    fs::create_dir(m.path("race")).expect("mkdir race");
    let threads = start_race_workload(&m.path("race"), &shared);
    let log_path = m.scratch().join("daemon.log");
    let (status, kept) = m.crashed(Duration::from_secs(RACY_SECONDS + 10));
    shared.stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().expect("a workload thread");
    }
    let log = fs::read_to_string(&log_path).unwrap_or_default();
    assert!(
        !status.success(),
        "the daemon exited with {status} after a BUG under on_bug=abort; log:\n{log}"
    );
    assert!(
        log.contains("BUG at src/mm/writeback.rs:") && log.contains("on_bug=abort: aborting"),
        "no BUG report before the abort (daemon exited with {status}); log:\n{log}"
    );
    let odd = shared.odd_error.lock().unwrap_or_else(|p| p.into_inner());
    assert!(
        odd.is_none(),
        "the workload met an error besides the dead connection: {odd:?}; log:\n{log}"
    );
    let fsck = Command::new(crate::common::find_tool("fsck.fat").expect("fsck.fat (dosfstools)"))
        .arg("-n")
        .arg(&kept.image)
        .output()
        .expect("run fsck.fat -n");
    let said = String::from_utf8_lossy(&fsck.stdout);
    assert!(
        fsck.status.code() == Some(1)
            && said.contains("Dirty bit is set. Fs was not properly unmounted"),
        "fsck.fat -n should report the dirty bit (status 1): {}\n{said}",
        fsck.status
    );
}
