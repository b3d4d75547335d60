//! `fatcache repro`: the January 2021 `BUG_ON(PageWriteback)` of write_cache_pages, reached
//! through a real mount with real system calls, era by era.
//!
//! For each era the image is mounted by a child `fatcache mount -f -o sync,on_bug=warn,...`
//! (its standard error in a log file: a daemon's stderr that nobody reads would block it),
//! and the workload of SEMANTICS S6 runs on the mount: per file, a few threads doing small
//! pwrites inside page 0 (within i_size, so the kernel lets them run in parallel, and on a
//! `sync` mount each one writes back and waits inside the daemon), and one thread that grows
//! the file with ftruncate and fallocate (fat_cont_expand: zeroing, then a WB_SYNC_ALL
//! writeback of page 0), shrinks it again, and calls fsync and fdatasync. The main thread
//! polls the mount's `user.fatcache.stats` to time the first hit.
//!
//! The workload touches the mount only through system calls, never through the library, so
//! what it shows is what any program on the mount could meet.
//!
//! Mounts are always taken down: [`Mount`]'s drop stops the daemon and detaches what it
//! leaves, and SIGINT, SIGTERM and SIGHUP only set a flag that ends the current era early and
//! takes its mount down in order (a second signal quits at once).
//!
//! * [`mount`]: the daemon of one era's mount.
//! * [`workload`]: the threads and their system calls.

use std::fs;
use std::io::{IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

mod mount;
mod workload;

use fatcache::fat::bpb::FatType;
use fatcache::fat::mkfs::{MkfsOptions, mkfs};
use fatcache::mm::{ALL_ERAS, Era};

use mount::{Mount, log_tail};
use workload::Workload;

/// Size of the scratch image: FAT16 with 2 KiB clusters, like `fatcache mkfs --size 64M`.
const SCRATCH_SIZE: u64 = 64 << 20;

/// How often the main thread reads the stats while the workload runs.
const POLL: Duration = Duration::from_millis(50);

/// How often the progress line is redrawn.
const PROGRESS: Duration = Duration::from_millis(250);

/// Options of `fatcache repro`.
#[derive(clap::Args, Debug)]
pub(crate) struct ReproArgs {
    /// Only these eras (repeat the option or separate with commas); default: every era.
    #[arg(
        long,
        value_name = "ERA",
        value_delimiter = ',',
        conflicts_with = "all_eras"
    )]
    era: Vec<Era>,
    /// Every era, in history order: v5.8 v5.9 v5.10 v5.11 v6.9 alt-a alt-b (the default).
    #[arg(long)]
    all_eras: bool,
    /// Seconds of workload per era.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=86400))]
    seconds: u64,
    /// Use this FAT image instead of a scratch one; the workload stays inside a new directory
    /// `fatcache-repro-PID` on it, which is removed at the end.
    #[arg(long, value_name = "PATH")]
    image: Option<PathBuf>,
    /// Keep the temporary directory (scratch image, daemon logs) and print where it is.
    #[arg(long)]
    keep: bool,
    /// End an era as soon as it has hit the BUG instead of running all its seconds (the
    /// racy eras then take only as long as their first hit; hits= is then small).
    #[arg(long)]
    stop_after_hit: bool,
    /// Files the workload works on at once.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=16))]
    files: u64,
    /// Writer threads per file (each file also has one thread that resizes and syncs it).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=16))]
    threads: u64,
    /// The mount's wake_delay_us=: stall between clearing PG_writeback and the wake.
    #[arg(long, default_value_t = 1000)]
    wake_delay_us: u64,
    /// The mount's io_latency_us=: simulated device latency per request.
    #[arg(long, default_value_t = 300)]
    io_latency_us: u64,
}

impl ReproArgs {
    /// The eras to run, in the order given (history order by default).
    fn eras(&self) -> Vec<Era> {
        if self.era.is_empty() {
            ALL_ERAS.to_vec()
        } else {
            self.era.clone()
        }
    }

    /// FUSE worker threads for the mount: one per workload thread and two spare (the stats
    /// poll, the unmount), so no request of the workload queues behind a sleeping one.
    fn fuse_threads(&self) -> u64 {
        (self.files * (self.threads + 1) + 2).min(64)
    }

    /// Completion threads of the mount: one per file and two more. A completion held in
    /// the wake_delay window keeps its thread, as the stalled CPU1 of the race is one CPU;
    /// with too few threads every other completion (the next writeback's, the metadata
    /// writes every sync write waits for) would queue behind it, which no kernel does.
    fn io_threads(&self) -> u64 {
        (self.files + 2).min(64)
    }

    /// The `-o` string of one era's mount.
    fn mount_options(&self, era: Era) -> String {
        format!(
            "sync,era={era},on_bug=warn,wake_delay_us={},io_latency_us={},threads={},\
             io_threads={}",
            self.wake_delay_us,
            self.io_latency_us,
            self.fuse_threads(),
            self.io_threads()
        )
    }
}

/// Why a run stopped before its table was complete.
#[derive(Debug)]
enum Failure {
    /// The machine, the image or the mount is not usable (exit status 2).
    Setup(String),
    /// SIGINT, SIGTERM or SIGHUP (exit status 1 after cleaning up).
    Interrupted,
}

/// What one era's run measured.
#[derive(Debug)]
struct EraOutcome {
    era: Era,
    /// `bug_hits` of the mount at the end.
    hits: u64,
    /// From the start of the workload to the first poll that saw a hit.
    first: Option<Duration>,
    /// `stale_wakes` of the mount at the end.
    stale: u64,
    /// System calls of the workload that succeeded.
    ops: u64,
    /// System calls of the workload that failed, and the first failure.
    errors: u64,
    first_error: Option<String>,
    /// A full BUG report of this mount, if it hit.
    report: Option<String>,
    /// The daemon exited 0 after the unmount.
    daemon_ok: bool,
}

impl EraOutcome {
    /// Whether the hits agree with kernel history: the BUG in v5.9 and v5.10 only.
    fn matches(&self) -> bool {
        self.era.has_s1_bug() == (self.hits > 0)
    }

    /// The table line, one per era, for people and scripts alike.
    fn line(&self) -> String {
        let first = self
            .first
            .map_or("-".to_owned(), |d| format!("{:.1}", d.as_secs_f64()));
        let verdict = if self.matches() { "match" } else { "MISMATCH" };
        format!(
            "{:<5} hits={} first_s={first} stale={} ops={} verdict={verdict}",
            self.era.name(),
            self.hits,
            self.stale,
            self.ops
        )
    }
}

/// Runs `fatcache repro`; the exit status is 0 when every era matches kernel history, 1 when
/// one does not (or a mount ended badly, or the run was interrupted), 2 when the run could not
/// be set up.
pub(crate) fn run(args: &ReproArgs) -> ExitCode {
    let interrupted = match watch_signals() {
        Ok(flag) => flag,
        Err(e) => return setup_error(&e),
    };
    if let Err(e) = preflight() {
        return setup_error(&e);
    }
    let scratch = match Scratch::new(args.keep) {
        Ok(s) => s,
        Err(e) => return setup_error(&e),
    };
    let image = match prepare_image(args, &scratch) {
        Ok(i) => i,
        Err(e) => return setup_error(&e),
    };
    let mut outcomes = Vec::new();
    let mut failure = None;
    for era in args.eras() {
        match run_era(args, era, &image, &scratch, &interrupted) {
            Ok(o) => {
                clear_progress();
                println!("{}", o.line());
                let _ = std::io::stdout().flush();
                explain(&o, &scratch.log(era));
                outcomes.push(o);
            }
            Err(f) => {
                clear_progress();
                failure = Some(f);
                break;
            }
        }
    }
    if let Some(o) = outcomes.iter().find(|o| o.report.is_some()) {
        let report = o.report.as_deref().unwrap_or_default();
        println!("\n=== first BUG report, from era {} ===", o.era);
        print!("{report}");
        if !report.ends_with('\n') {
            println!();
        }
    }
    scratch.announce(image.user.is_none());
    match failure {
        Some(Failure::Setup(why)) => setup_error(&why),
        Some(Failure::Interrupted) => {
            eprintln!("fatcache repro: interrupted; the mount was taken down");
            ExitCode::FAILURE
        }
        None if outcomes.iter().all(|o| o.matches() && o.daemon_ok) => ExitCode::SUCCESS,
        None => ExitCode::FAILURE,
    }
}

/// Prints a usage or setup error and gives exit status 2.
fn setup_error(why: &str) -> ExitCode {
    eprintln!("fatcache repro: {why}");
    ExitCode::from(2)
}

/// Says on stderr what the table line cannot: workload errors, a daemon that did not exit 0.
fn explain(o: &EraOutcome, log: &Path) {
    if o.errors > 0 {
        let first = o.first_error.as_deref().unwrap_or("?");
        eprintln!(
            "{}: {} system calls of the workload failed (first: {first})",
            o.era, o.errors
        );
    }
    if !o.daemon_ok {
        eprintln!(
            "{}: the mount daemon did not exit 0 after the unmount; log tail:\n{}",
            o.era,
            log_tail(log)
        );
    }
}

/// SIGINT, SIGTERM and SIGHUP set the returned flag; a second one ends the process at once
/// (status 130), for when the cleanup itself hangs.
fn watch_signals() -> Result<Arc<AtomicBool>, String> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let flag = Arc::new(AtomicBool::new(false));
    for sig in [SIGINT, SIGTERM, SIGHUP] {
        // The shutdown is registered first, so it looks at the flag before this signal sets it.
        signal_hook::flag::register_conditional_shutdown(sig, 130, Arc::clone(&flag))
            .and_then(|_| signal_hook::flag::register(sig, Arc::clone(&flag)))
            .map_err(|e| format!("cannot watch for signal {sig}: {e}"))?;
    }
    Ok(flag)
}

/// Checks what mounting needs, so a missing piece gives a clear message instead of a failed
/// mount: /dev/fuse, and either root or fusermount3.
fn preflight() -> Result<(), String> {
    if !Path::new("/dev/fuse").exists() {
        return Err(
            "/dev/fuse is missing: load the fuse module (modprobe fuse), or give the container \
             --device /dev/fuse"
                .to_owned(),
        );
    }
    if !is_root() && find_program("fusermount3").is_none() {
        return Err(
            "not root and fusermount3 not found: install fuse3 (it mounts for other users), \
             or run as root"
                .to_owned(),
        );
    }
    Ok(())
}

/// Whether this process runs with effective uid 0.
fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// `name` on PATH or in the sbin directories.
fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/bin", "/bin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// The temporary directory of one run: mount point, daemon logs, the scratch image. Removed
/// when dropped (after every [`Mount`], which are dropped first) unless kept.
struct Scratch {
    dir: PathBuf,
    keep: bool,
}

impl Scratch {
    fn new(keep: bool) -> Result<Scratch, String> {
        let dir = std::env::temp_dir().join(format!("fatcache-repro-{}", std::process::id()));
        fs::create_dir(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let s = Scratch { dir, keep };
        fs::create_dir(s.mountpoint())
            .map_err(|e| format!("cannot create {}: {e}", s.mountpoint().display()))?;
        Ok(s)
    }

    fn mountpoint(&self) -> PathBuf {
        self.dir.join("mnt")
    }

    fn log(&self, era: Era) -> PathBuf {
        self.dir.join(format!("daemon-{era}.log"))
    }

    /// With --keep, says where the kept files are.
    fn announce(&self, scratch_image: bool) {
        if self.keep {
            let image = if scratch_image { "scratch.img, " } else { "" };
            eprintln!(
                "fatcache repro: kept {} ({image}daemon-ERA.log)",
                self.dir.display()
            );
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !self.keep {
            // Never through a mount left behind: remove_dir_all would descend into it.
            if !crate::is_mounted(&self.mountpoint()) {
                let _ = fs::remove_dir_all(&self.dir);
            }
        }
    }
}

/// The image of the run.
struct Image {
    path: PathBuf,
    /// The user's image (`--image`): only a directory of its own is touched on it.
    user: Option<PathBuf>,
}

/// The user's image, or a fresh 64 MiB FAT16 scratch image in the temporary directory.
fn prepare_image(args: &ReproArgs, scratch: &Scratch) -> Result<Image, String> {
    if let Some(path) = &args.image {
        let meta = fs::metadata(path).map_err(|e| format!("--image {}: {e}", path.display()))?;
        if meta.is_dir() {
            return Err(format!("--image {}: is a directory", path.display()));
        }
        let path = path
            .canonicalize()
            .map_err(|e| format!("--image {}: {e}", path.display()))?;
        return Ok(Image {
            path: path.clone(),
            user: Some(path),
        });
    }
    let path = scratch.dir.join("scratch.img");
    let opts = MkfsOptions {
        size: SCRATCH_SIZE,
        fat: Some(FatType::Fat16),
        label: Some("REPRO".to_owned()),
        volume_id: None,
        force: false,
    };
    mkfs(&path, &opts).map_err(|e| format!("cannot make {}: {e}", path.display()))?;
    Ok(Image { path, user: None })
}

/// One era: mount, workload with stats polling, cleanup, unmount.
fn run_era(
    args: &ReproArgs,
    era: Era,
    image: &Image,
    scratch: &Scratch,
    interrupted: &AtomicBool,
) -> Result<EraOutcome, Failure> {
    let log = scratch.log(era);
    let mount = Mount::start(
        &image.path,
        &scratch.mountpoint(),
        &args.mount_options(era),
        &log,
        interrupted,
    )?;
    let shown = read_xattr(&mount.dir, "user.fatcache.era");
    if shown.as_deref() != Some(era.name()) {
        return Err(Failure::Setup(format!(
            "{} answers user.fatcache.era with {shown:?}, not {era}: not a fatcache mount?",
            mount.dir.display()
        )));
    }
    let work = mount
        .dir
        .join(format!("fatcache-repro-{}", std::process::id()));
    let workload = Workload::start(&work, args.files, args.threads).map_err(Failure::Setup)?;
    let polled = poll(args, era, &mount.dir, &workload, interrupted);
    // A workload that cannot stop is stuck in a system call: dropping the mount detaches it
    // and kills the daemon, which ends that call with ENOTCONN.
    let counts = workload.stop().map_err(Failure::Setup)?;
    let stats = read_stats(&mount.dir);
    if let Err(e) = fs::remove_dir_all(&work) {
        eprintln!("{era}: cannot remove {}: {e}", work.display());
    }
    let status = mount.finish();
    let polled = polled?;
    let stats = stats.unwrap_or(polled.last);
    let report = polled.report.or_else(|| first_report(&log));
    Ok(EraOutcome {
        era,
        hits: stats.bug_hits,
        first: polled.first,
        stale: stats.stale_wakes,
        ops: counts.ops,
        errors: counts.errors,
        first_error: counts.first_error,
        report: if stats.bug_hits > 0 { report } else { None },
        daemon_ok: status.is_ok_and(|s| s.success()),
    })
}

/// What the main thread saw while the workload ran.
struct Polled {
    first: Option<Duration>,
    report: Option<String>,
    last: Stats,
}

/// Reads the stats every [`POLL`] until the era's time is up (or it hit, with
/// --stop-after-hit, or a signal came), showing progress on a terminal.
fn poll(
    args: &ReproArgs,
    era: Era,
    dir: &Path,
    workload: &Workload,
    interrupted: &AtomicBool,
) -> Result<Polled, Failure> {
    let length = Duration::from_secs(args.seconds);
    let tty = std::io::stderr().is_terminal();
    let mut drawn = None;
    let mut polled = Polled {
        first: None,
        report: None,
        last: Stats::default(),
    };
    loop {
        std::thread::sleep(POLL);
        // Relaxed: the flag is the only thing the signal handler publishes.
        if interrupted.load(Ordering::Relaxed) {
            return Err(Failure::Interrupted);
        }
        let elapsed = workload.started.elapsed();
        if let Some(s) = read_stats(dir) {
            if s.bug_hits > 0 && polled.first.is_none() {
                polled.first = Some(elapsed);
                // Read at once: the first few reports of a site are full ones, later hits
                // replace this one with a single line.
                polled.report =
                    read_xattr(dir, "user.fatcache.last_bug").filter(|r| r.contains("backtrace:"));
            }
            polled.last = s;
        }
        if tty && drawn.is_none_or(|at: Instant| at.elapsed() >= PROGRESS) {
            drawn = Some(Instant::now());
            let left = length.saturating_sub(elapsed).as_millis().div_ceil(1000);
            eprint!(
                "\r{era}: {left} s left, {} ops, {} hits   ",
                workload.ops(),
                polled.last.bug_hits
            );
        }
        if elapsed >= length || (args.stop_after_hit && polled.first.is_some()) {
            return Ok(polled);
        }
    }
}

/// Blanks the progress line, if one was drawn.
fn clear_progress() {
    if std::io::stderr().is_terminal() {
        eprint!("\r{:60}\r", "");
    }
}

/// The counters of `user.fatcache.stats` that the table shows.
#[derive(Clone, Copy, Debug, Default)]
struct Stats {
    bug_hits: u64,
    stale_wakes: u64,
}

/// The mount's counters, or `None` if the xattr cannot be read.
fn read_stats(dir: &Path) -> Option<Stats> {
    let json = read_xattr(dir, "user.fatcache.stats")?;
    Some(Stats {
        bug_hits: json_u64(&json, "bug_hits")?,
        stale_wakes: json_u64(&json, "stale_wakes")?,
    })
}

/// The value of the virtual xattr `name` on the mount root, as text.
fn read_xattr(dir: &Path, name: &str) -> Option<String> {
    match xattr::get(dir, name) {
        Ok(Some(v)) => Some(String::from_utf8_lossy(&v).into_owned()),
        _ => None,
    }
}

/// The number after `"key":` in the flat stats object.
fn json_u64(json: &str, key: &str) -> Option<u64> {
    let pattern = format!("\"{key}\":");
    let rest = &json[json.find(&pattern)? + pattern.len()..];
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// The first full BUG report in a daemon log.
fn first_report(log: &Path) -> Option<String> {
    const CUT: &str = "------------[ cut here ]------------";
    const END: &str = "---[ end trace ]---";
    let text = fs::read_to_string(log).ok()?;
    text.match_indices(CUT).find_map(|(at, _)| {
        // From the start of the line: the `[ seconds ]` stamp before the cut line says when
        // the hit came, counted from the mount.
        let line = text[..at].rfind('\n').map_or(0, |i| i + 1);
        let report = &text[line..];
        let end = report.find(END)? + END.len();
        let report = &report[..end];
        report.contains("\nBUG").then(|| format!("{report}\n"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_fields_are_found_by_name() {
        let json = r#"{"era":"v5.10","stale_wakes":12,"bug_hits":3,"bugs":{"a:1:x":3}}"#;
        assert_eq!(json_u64(json, "bug_hits"), Some(3));
        assert_eq!(json_u64(json, "stale_wakes"), Some(12));
        assert_eq!(json_u64(json, "missing"), None);
    }

    #[test]
    fn lines_have_the_documented_form() {
        let mut o = EraOutcome {
            era: Era::V5_10,
            hits: 2,
            first: Some(Duration::from_millis(1234)),
            stale: 7,
            ops: 100,
            errors: 0,
            first_error: None,
            report: None,
            daemon_ok: true,
        };
        assert_eq!(
            o.line(),
            "v5.10 hits=2 first_s=1.2 stale=7 ops=100 verdict=match"
        );
        o.era = Era::V5_11;
        o.first = None;
        assert_eq!(
            o.line(),
            "v5.11 hits=2 first_s=- stale=7 ops=100 verdict=MISMATCH"
        );
    }

    #[test]
    fn the_first_bug_report_is_taken_from_a_log() {
        let dir = std::env::temp_dir().join(format!("fatcache-repro-test-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("mkdir");
        let log = dir.join("log");
        let text = "noise\n------------[ cut here ]------------\nWARNING at a:1!\n\
                    ---[ end trace ]---\n------------[ cut here ]------------\n\
                    BUG at src/mm/writeback.rs:260!\nx\n---[ end trace ]---\nmore\n";
        fs::write(&log, text).expect("write");
        let r = first_report(&log).expect("a report");
        assert!(r.starts_with("------------[ cut here ]"), "{r}");
        assert!(r.contains("BUG at src/mm/writeback.rs:260!"), "{r}");
        assert!(r.ends_with("---[ end trace ]---\n"), "{r}");
        let _ = fs::remove_dir_all(&dir);
    }
}
