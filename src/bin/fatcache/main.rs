//! The `fatcache` command line.
//!
//! `fatcache mount IMAGE DIR [-o OPTIONS] [-f]` mounts an image through FUSE (also as
//! `mount -t fuse.fatcache IMAGE DIR -o OPTIONS`, the argument order mount.fuse3 uses);
//! `fatcache demo` runs the race interleavings of SEMANTICS section 5 (S1, S2) on the
//! page-cache core with real threads, in every era; `fatcache eras` lists the eras;
//! `fatcache mkfs` makes a new image; `ls` and `cat` read an image without mounting it;
//! `fatcache repro` reproduces the January 2021 writeback BUG through a real mount in each era
//! (see `repro.rs`).

mod repro;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use fatcache::FsError;
use fatcache::dev::Placement;
use fatcache::fat::bpb::FatType;
use fatcache::fat::mkfs::{MkfsOptions, mkfs, parse_size};
use fatcache::fat::volume::Volume;
use fatcache::mm::{ALL_ERAS, Era};
use fatcache::scenario::{self, Scenario};

#[derive(Parser)]
#[command(
    name = "fatcache",
    version,
    about = "FAT over a Linux-like page cache, for writeback races"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Mount an image through FUSE; stays in the background unless -f.
    Mount {
        /// The image file (or block device).
        #[arg(required_unless_present = "help_options")]
        image: Option<PathBuf>,
        /// The directory to mount it on.
        #[arg(required_unless_present = "help_options")]
        mountpoint: Option<PathBuf>,
        /// Mount options, comma-separated (see --help-options); may be given several times.
        #[arg(short = 'o', value_name = "OPTIONS")]
        options: Vec<String>,
        /// Stay in the foreground (logs to standard error; Ctrl-C unmounts).
        #[arg(short = 'f', long)]
        foreground: bool,
        /// List every mount option and exit.
        #[arg(long)]
        help_options: bool,
    },
    /// Run the S1 (three-CPU) and S2 (frame reuse) races on the page cache in each era.
    Demo {
        /// Only this era (v5.8 v5.9 v5.10 v5.11 v6.9 alt-a alt-b); default: all.
        #[arg(long)]
        era: Option<Era>,
        /// Only this scenario (s1 or s2); default: both.
        #[arg(long, value_parser = parse_scenario)]
        scenario: Option<Scenario>,
        /// Print the full BUG report of every hit, not only the first.
        #[arg(long)]
        all_reports: bool,
    },
    /// Reproduce the January 2021 write_cache_pages BUG through a real mount, in each era:
    /// one line per era on stdout, exit status 0 when every era matches kernel history.
    #[command(after_help = "\
Output: one line per era on stdout,
  ERA hits=N first_s=SECONDS|- stale=N ops=N verdict=match|MISMATCH
then the first full BUG report. The BUG must hit in v5.9 and v5.10 and in no other era.
Exit status: 0 when every era matches, 1 otherwise (or a mount ended badly, or interrupted),
2 when the run could not be set up.")]
    Repro(repro::ReproArgs),
    /// Print the page-cache counters of a mounted fatcache (its user.fatcache.* xattrs).
    Stats {
        /// The mount point.
        mountpoint: PathBuf,
    },
    /// List the kernel eras and what each one models.
    Eras,
    /// List a directory of an image, read through fatcache's own page cache (read-only).
    Ls {
        /// The image file (opened read-only).
        image: PathBuf,
        /// The directory; default: the root.
        #[arg(default_value = "/")]
        path: String,
    },
    /// Print a file of an image to standard output, read through the page cache (read-only).
    Cat {
        /// The image file (opened read-only).
        image: PathBuf,
        /// The file.
        path: String,
    },
    /// Make a new FAT12/16/32 image file, with mkfs.fat's default cluster sizes.
    Mkfs {
        /// The image file to create.
        image: PathBuf,
        /// Size in bytes, or with K, M or G (binary units: 1440K, 64M, 1G).
        #[arg(long, value_parser = parse_size_arg)]
        size: u64,
        /// FAT type: 12, 16 or 32; default: chosen by size like mkfs.fat.
        #[arg(long, value_parser = parse_fat_arg)]
        fat: Option<FatType>,
        /// Volume label, up to 11 ASCII characters (stored upper-cased).
        #[arg(long)]
        label: Option<String>,
        /// Volume serial number in hex (1234ABCD or 1234-ABCD), for reproducible images;
        /// default: from the clock.
        #[arg(long, value_parser = parse_volume_id)]
        volume_id: Option<u32>,
        /// Overwrite the file if it exists and is not empty.
        #[arg(long)]
        force: bool,
    },
}

fn parse_scenario(s: &str) -> Result<Scenario, String> {
    match s.to_ascii_lowercase().as_str() {
        "s1" => Ok(Scenario::S1),
        "s2" => Ok(Scenario::S2),
        _ => Err(format!("unknown scenario {s:?}: expected s1 or s2")),
    }
}

fn parse_size_arg(s: &str) -> Result<u64, String> {
    parse_size(s).map_err(|e| match e {
        FsError::Invalid(why) => why.to_string(),
        other => other.to_string(),
    })
}

fn parse_fat_arg(s: &str) -> Result<FatType, String> {
    match s {
        "12" => Ok(FatType::Fat12),
        "16" => Ok(FatType::Fat16),
        "32" => Ok(FatType::Fat32),
        _ => Err(format!("unknown FAT type {s:?}: expected 12, 16 or 32")),
    }
}

fn parse_volume_id(s: &str) -> Result<u32, String> {
    let hex: String = s.chars().filter(|c| *c != '-').collect();
    if hex.is_empty() || hex.len() > 8 {
        return Err(format!("volume id {s:?}: expected up to 8 hex digits"));
    }
    u32::from_str_radix(&hex, 16).map_err(|_| format!("volume id {s:?}: not hexadecimal"))
}

/// mount(8) runs `mount -t fuse.fatcache IMAGE DIR -o OPTS` as `fatcache IMAGE DIR -o OPTS`
/// (through mount.fuse3, as fstab entries do): a first argument that is not a subcommand or a
/// flag is taken as an image, and `mount` is put in front of it.
fn mount_helper_args(mut args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    const COMMANDS: [&str; 9] = [
        "mount", "demo", "eras", "ls", "cat", "mkfs", "stats", "repro", "help",
    ];
    let first = args.get(1).and_then(|a| a.to_str());
    let is_image = first.is_some_and(|a| !a.starts_with('-') && !COMMANDS.contains(&a));
    // Non-UTF-8 image paths are images too: no subcommand is spelled that way.
    let is_image = is_image || (args.len() > 2 && first.is_none());
    if is_image {
        args.insert(1, "mount".into());
    }
    args
}

fn main() -> ExitCode {
    // fuser::mnt warns when it finds its mount already gone after an outside umount, which is
    // how a normal unmount ends; RUST_LOG overrides this.
    let filter = env_logger::Env::default().default_filter_or("warn,fuser::mnt=error");
    env_logger::Builder::from_env(filter).init();
    let cli = Cli::parse_from(mount_helper_args(std::env::args_os().collect()));
    match cli.cmd {
        Cmd::Mount {
            image,
            mountpoint,
            options,
            foreground,
            help_options,
        } => match (image, mountpoint) {
            (Some(image), Some(dir)) if !help_options => mount(&image, &dir, &options, foreground),
            _ => {
                print!("{}", fatcache::fuse::options::help_text());
                ExitCode::SUCCESS
            }
        },
        Cmd::Ls { image, path } => report(ls(&image, &path)),
        Cmd::Cat { image, path } => report(cat(&image, &path)),
        Cmd::Stats { mountpoint } => stats(&mountpoint),
        Cmd::Repro(args) => repro::run(&args),
        Cmd::Eras => {
            for e in ALL_ERAS {
                println!("{:<6} {}", e.name(), e.describe());
            }
            ExitCode::SUCCESS
        }
        Cmd::Demo {
            era,
            scenario,
            all_reports,
        } => demo(era, scenario, all_reports),
        Cmd::Mkfs {
            image,
            size,
            fat,
            label,
            volume_id,
            force,
        } => {
            let opts = MkfsOptions {
                size,
                fat,
                label,
                volume_id,
                force,
            };
            make_image(&image, &opts)
        }
    }
}

fn make_image(image: &Path, opts: &MkfsOptions) -> ExitCode {
    match mkfs(image, opts) {
        Ok(report) => {
            println!("{}: {report}", image.display());
            ExitCode::SUCCESS
        }
        Err(FsError::Exists) => {
            let path = image.display();
            eprintln!("fatcache mkfs: {path} exists and is not empty; --force overwrites it");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("fatcache mkfs: {}: {e}", image.display());
            ExitCode::FAILURE
        }
    }
}

fn demo(era: Option<Era>, which: Option<Scenario>, all_reports: bool) -> ExitCode {
    let eras: Vec<Era> = era.map(|e| vec![e]).unwrap_or_else(|| ALL_ERAS.to_vec());
    let scenarios: Vec<Scenario> = which
        .map(|s| vec![s])
        .unwrap_or_else(|| vec![Scenario::S1, Scenario::S2]);
    let mut all_match = true;
    let mut shown = false;
    let mut lines = Vec::new();
    for s in &scenarios {
        for e in &eras {
            let o = match scenario::run(*s, *e) {
                Ok(o) => o,
                Err(err) => {
                    eprintln!("fatcache: {} in {e}: {err}", s.name());
                    return ExitCode::FAILURE;
                }
            };
            let verdict = if o.matches_history() {
                "match"
            } else {
                "MISMATCH"
            };
            all_match &= o.matches_history();
            lines.push(format!(
                "{:<6} scenario={} hits={} stale={} frame_reused={} expected={} verdict={}",
                e.name(),
                s.name(),
                o.wcp_bugs,
                o.stale_wakes,
                o.frame_reused,
                if s.bug_expected(*e) { "BUG" } else { "clean" },
                verdict
            ));
            if o.wcp_bugs > 0 && (!shown || all_reports) {
                if let Some(r) = &o.report {
                    println!("=== first BUG: {} in era {e} ===\n{r}", s.name());
                    shown = true;
                }
            }
        }
    }
    for l in lines {
        println!("{l}");
    }
    if all_match {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Frames of the page cache `ls` and `cat` read through (16 MiB).
const READ_CACHE_FRAMES: usize = 4096;

fn open_read_only(image: &Path) -> Result<Volume, FsError> {
    let place = Placement {
        read_only: true,
        ..Placement::default()
    };
    Volume::open(image, place, READ_CACHE_FRAMES)
}

fn ls(image: &Path, path: &str) -> Result<(), FsError> {
    let vol = open_read_only(image)?;
    let dir = vol.lookup_path(path)?;
    if !dir.is_dir() {
        return Err(FsError::NotDir);
    }
    let mut out = std::io::stdout().lock();
    for item in vol.read_dir(&dir)? {
        let kind = if item.entry.is_dir() { "d" } else { "-" };
        if !written(writeln!(
            out,
            "{kind} {:>10}  {}",
            item.entry.size, item.name
        ))? {
            break;
        }
    }
    Ok(())
}

/// A write to standard output: Ok(false) once the reader has gone (`| head`), which ends the
/// command quietly as it does for cat(1).
fn written(r: std::io::Result<()>) -> Result<bool, FsError> {
    match r {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e.into()),
    }
}

fn cat(image: &Path, path: &str) -> Result<(), FsError> {
    let vol = open_read_only(image)?;
    let node = vol.lookup_path(path)?;
    let mut out = std::io::stdout().lock();
    let mut buf = vec![0u8; 1 << 16];
    let mut offset = 0u64;
    loop {
        let n = vol.read(&node, offset, &mut buf)?;
        if n == 0 {
            return Ok(());
        }
        if !written(out.write_all(&buf[..n]))? {
            return Ok(());
        }
        offset += n as u64;
    }
}

/// Exit status and message for a command's result, as a shell user expects them.
fn report(r: Result<(), FsError>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fatcache: {e}");
            ExitCode::FAILURE
        }
    }
}

/// How long a background mount may take to appear before the parent gives up.
const MOUNT_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

fn mount(image: &Path, mountpoint: &Path, options: &[String], foreground: bool) -> ExitCode {
    let opts = match fatcache::fuse::options::FuseOptions::parse(options.iter().map(String::as_str))
    {
        Ok(o) => o,
        Err(e) => {
            eprintln!("fatcache mount: {e}");
            return ExitCode::FAILURE;
        }
    };
    if foreground {
        tune_malloc();
        return match fatcache::fuse::serve(image, mountpoint, opts) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("fatcache mount: {e}");
                ExitCode::FAILURE
            }
        };
    }
    background(image, mountpoint, options)
}

/// Runs this program again with `-f` in its own process group, detached from the terminal,
/// and returns once the mount is there (or the child failed), as mount(8) expects.
fn background(image: &Path, mountpoint: &Path, options: &[String]) -> ExitCode {
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("fatcache mount: cannot find this program to run it again: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("mount").arg(image).arg(mountpoint).arg("-f");
    for o in options {
        cmd.arg("-o").arg(o);
    }
    use std::os::unix::process::CommandExt as _;
    // The daemon's errors reach the caller through a pipe until the mount is up; after
    // that nobody reads it and later log lines fail quietly (SIGPIPE is ignored), so a
    // caller capturing our output is not kept waiting until the unmount.
    cmd.process_group(0)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("fatcache mount: cannot start the daemon: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(mut err) = child.stderr.take() {
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut err, &mut std::io::stderr());
        });
    }
    let start = std::time::Instant::now();
    while start.elapsed() < MOUNT_WAIT {
        if let Ok(Some(status)) = child.try_wait() {
            eprintln!("fatcache mount: the daemon exited with {status} before mounting");
            return ExitCode::FAILURE;
        }
        if is_mounted(mountpoint) {
            return ExitCode::SUCCESS;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    eprintln!(
        "fatcache mount: {} did not appear in {MOUNT_WAIT:?}",
        mountpoint.display()
    );
    let _ = child.kill();
    ExitCode::FAILURE
}

/// Whether a fatcache FUSE mount is on `dir` (by /proc/self/mountinfo).
fn is_mounted(dir: &Path) -> bool {
    let Ok(dir) = dir.canonicalize() else {
        return false;
    };
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = dir.to_string_lossy();
    info.lines().any(|l| {
        let mut f = l.split(' ');
        // Field 5 is the mount point; after " - " comes the type: "fuse" when mounted with
        // mount(2) directly, "fuse.fatcache" through fusermount3.
        let at = f.nth(4) == Some(want.as_ref());
        let fstype = l.split(" - ").nth(1).and_then(|t| t.split(' ').next());
        at && fstype.is_some_and(|t| t == "fuse" || t == "fuse.fatcache")
    })
}

/// `fatcache stats DIR`: the counters of the mount on DIR, one per line, then the last BUG
/// report if there was one.
fn stats(dir: &Path) -> ExitCode {
    let get = |name: &str| -> Result<String, String> {
        match xattr::get(dir, name) {
            Ok(Some(v)) => Ok(String::from_utf8_lossy(&v).into_owned()),
            Ok(None) => Err(format!(
                "{}: no {name}: not a fatcache mount?",
                dir.display()
            )),
            Err(e) => Err(format!("{}: {name}: {e}", dir.display())),
        }
    };
    let (json, bug) = match (get("user.fatcache.stats"), get("user.fatcache.last_bug")) {
        (Ok(j), Ok(b)) => (j, b),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("fatcache stats: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The object is flat apart from "bugs"; print it as "key: value" lines.
    let body = json.trim().trim_start_matches('{').trim_end_matches('}');
    let (fields, bugs) = body.split_once(",\"bugs\":{").unwrap_or((body, ""));
    for field in fields.split(',') {
        if let Some((k, v)) = field.split_once(':') {
            println!("{:<16} {}", k.trim_matches('"'), v.trim_matches('"'));
        }
    }
    let bugs = bugs.trim_end_matches('}');
    println!(
        "{:<16} {}",
        "bug sites",
        if bugs.is_empty() { "none" } else { bugs }
    );
    if !bug.is_empty() {
        println!("\nlast BUG report:\n{bug}");
    }
    ExitCode::SUCCESS
}

/// malloc arenas the daemon uses unless MALLOC_ARENA_MAX says otherwise.
#[cfg(target_env = "gnu")]
const DAEMON_MALLOC_ARENAS: libc::c_int = 2;

/// Smallest allocation the daemon's malloc serves by mmap, unless MALLOC_MMAP_THRESHOLD_ says
/// otherwise: above every buffer of the hot paths (a read reply is at most 512 KiB, a merged
/// request's vectors and a metadata write's copy far less), below fuser's 16 MiB receive
/// buffer of each worker.
#[cfg(target_env = "gnu")]
const DAEMON_MMAP_THRESHOLD: libc::c_int = 4 << 20;

/// Free memory at the top of the heap that malloc keeps rather than returning, unless
/// MALLOC_TRIM_THRESHOLD_ says otherwise: twice the mmap threshold, as glibc's own dynamic
/// rule would make it.
#[cfg(target_env = "gnu")]
const DAEMON_TRIM_THRESHOLD: libc::c_int = 8 << 20;

/// Sets glibc's malloc up for the daemon before it starts its threads.
///
/// Arenas: glibc gives a thread that meets contention an arena of its own (up to eight per
/// CPU), and memory freed into an arena serves only allocations from that arena, so each
/// arena keeps its own high-water mark of the daemon's short-lived buffers (directory
/// listings, names, reply vectors): the mount benchmark's peak RSS at cache_mb=64 was 4-5 MiB
/// above what two arenas give, with no change in its times beyond their noise (issue 6's note
/// has the figures). The daemon's hot paths allocate little (frames and read buffers are
/// reused, data is written from the frames), so two arenas are not a point of contention.
///
/// mmap threshold: glibc raises it past any mmapped block that is freed, up to 32 MiB. Once
/// something of 16 MiB or more had been freed, fuser's 16 MiB receive buffers (one per
/// worker, zero-filled, a request uses at most 512 KiB of it) came from the heap, and where
/// such a buffer reused freed heap memory calloc zeroed all of it: 16 MiB more resident from
/// the mount on, in about one mount in eight (80 -> 96.5 MiB idle at cache_mb=64, past the
/// 96 MiB of cache_mb + 32). A fixed threshold keeps them mmapped and untouched: 14 mounts of
/// 14 stayed at 80 MiB. Fixing it also stops the dynamic rule, so the trim threshold is set
/// with it.
///
/// Only the daemon takes these decisions, not the library; an explicit MALLOC_ARENA_MAX,
/// MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_ (or GLIBC_TUNABLES) still wins.
#[cfg(target_env = "gnu")]
#[allow(unsafe_code)] // The crate's one unsafe call; see Cargo.toml's note on nix.
fn tune_malloc() {
    let tunables = std::env::var("GLIBC_TUNABLES").unwrap_or_default();
    let settings = [
        (
            "MALLOC_ARENA_MAX",
            "arena_max",
            libc::M_ARENA_MAX,
            DAEMON_MALLOC_ARENAS,
        ),
        (
            "MALLOC_MMAP_THRESHOLD_",
            "mmap_threshold",
            libc::M_MMAP_THRESHOLD,
            DAEMON_MMAP_THRESHOLD,
        ),
        (
            "MALLOC_TRIM_THRESHOLD_",
            "trim_threshold",
            libc::M_TRIM_THRESHOLD,
            DAEMON_TRIM_THRESHOLD,
        ),
    ];
    for (env, tunable, param, value) in settings {
        if std::env::var_os(env).is_some() || tunables.contains(tunable) {
            continue;
        }
        // SAFETY: mallopt changes an allocator parameter under glibc's own lock and touches
        // no memory of ours; it has no preconditions. A return of 0 means glibc refused,
        // which leaves its default in place.
        if unsafe { libc::mallopt(param, value) } == 0 {
            log::debug!("fatcache: mallopt({env}) refused; keeping glibc's default");
        }
    }
}

/// Other C libraries size their allocators their own way; nothing to set.
#[cfg(not(target_env = "gnu"))]
fn tune_malloc() {}
