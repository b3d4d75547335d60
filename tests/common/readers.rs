//! Independent readers of a FAT image, for tests that write one through fatcache and check
//! the result: `fsck.fat -n` (dosfstools), mtools, the `fatfs` crate, and fatcache itself.
//!
//! Each reader turns an image into a [`Tree`] (every path with its kind and bytes), and
//! [`check_trees`] runs them all against an expected tree: an image passes only when fsck
//! finds nothing and three implementations that share no code see the same files. Nothing here
//! writes the image it checks: fsck runs with `-n`, mtools only copies out, fatfs gets a
//! handle that refuses writes, and fatcache opens the image read-only.
//!
//! Also here, for building test images: [`mkfs_fat`] and [`mtools_put_tree`].

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use fatcache::dev::Placement;
use fatcache::fat::volume::{Node as VolNode, Volume};

use super::{TempDir, find_tool};

/// A whole directory tree: `/`-separated absolute paths (the root itself not included).
pub(crate) type Tree = BTreeMap<String, Node>;

/// One path of a [`Tree`]: a directory, or a file with all its bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Node {
    /// A directory; its contents are the paths below it.
    Dir,
    /// A regular file and its contents.
    File(Vec<u8>),
}

/// How [`fsck_check`] treats the dirty bit, the one thing a crash leaves that is no damage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FsckMode {
    /// Anything fsck.fat says, the dirty bit included, is a complaint.
    Strict,
    /// The dirty bit (and, on FAT32, the backup boot sector differing in that byte only) is
    /// accepted; anything else is a complaint.
    AllowDirty,
    /// A volume still mounted (or crashed): as [`FsckMode::AllowDirty`], and FAT32's FSInfo
    /// free count may be stale, since the kernel writes that hint only at sync and unmount.
    Live,
}

/// Longest time one external tool may take before it counts as hung (and is killed).
const TOOL_TIMEOUT: Duration = Duration::from_secs(120);

/// Deepest directory nesting a walk follows: deeper means a directory loop in a bad image.
const MAX_DEPTH: usize = 64;

/// Page-cache frames of the fatcache volume [`our_tree`] opens.
const OUR_FRAMES: usize = 1024;

/// Most differences [`compare_trees`] lists before it summarizes the rest.
const MAX_DIFFS: usize = 20;

/// What fsck.fat prints, under `-n`, for a dirty bit (the second line is indented).
const DIRTY_LINES: [&str; 2] = [
    "Dirty bit is set. Fs was not properly unmounted and some data may be corrupt.",
    "Automatically removing dirty bit.",
];

/// Offset of the FAT32 boot sector's dirty byte, the byte the kernel rewrites on mount without
/// updating the backup boot sector.
const FAT32_DIRTY_BYTE: &str = "65";

/// A name no other scratch directory of this process has, for readers running in parallel.
fn scratch(what: &str) -> TempDir {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    TempDir::new(&format!("readers-{what}"), &n.to_string())
}

/// `name`'s path, or an error naming the package it comes with.
fn tool(name: &str, package: &str) -> Result<PathBuf, String> {
    find_tool(name).ok_or_else(|| format!("{name} not found (install {package})"))
}

/// Runs `cmd` with no standard input (so a prompt fails instead of hanging), killing it after
/// [`TOOL_TIMEOUT`].
fn run(cmd: &mut Command) -> Result<Output, String> {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{what}: {e}"))?;
    // Both pipes are drained while the child runs, so a chatty tool cannot block on a full one.
    let mut stdout = child.stdout.take().expect("stdout was piped");
    let mut stderr = child.stderr.take().expect("stderr was piped");
    let out = std::thread::spawn(move || {
        let mut buf = Vec::new();
        stdout.read_to_end(&mut buf).map(|_| buf)
    });
    let err = std::thread::spawn(move || {
        let mut buf = Vec::new();
        stderr.read_to_end(&mut buf).map(|_| buf)
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| format!("{what}: {e}"))? {
            break status;
        }
        if start.elapsed() > TOOL_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "{what}: still running after {TOOL_TIMEOUT:?}, killed"
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let join = |h: std::thread::JoinHandle<io::Result<Vec<u8>>>| {
        h.join()
            .map_err(|_| format!("{what}: pipe reader panicked"))?
            .map_err(|e| format!("{what}: read output: {e}"))
    };
    Ok(Output {
        status,
        stdout: join(out)?,
        stderr: join(err)?,
    })
}

/// The command line, status and both streams of a finished tool, for an error message.
fn describe_run(cmd: &str, out: &Output) -> String {
    format!(
        "{cmd}: {}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

// ---------------------------------------------------------------------------------------
// fsck.fat

/// `fsck.fat -n` finds nothing at all to say about `image`; the `Err` is its whole output.
pub(crate) fn fsck_clean(image: &Path) -> Result<(), String> {
    fsck_check(image, FsckMode::Strict)
}

/// As [`fsck_clean`], but a set dirty bit (a volume not unmounted) is no complaint.
pub(crate) fn fsck_clean_allow_dirty(image: &Path) -> Result<(), String> {
    fsck_check(image, FsckMode::AllowDirty)
}

/// As [`fsck_clean_allow_dirty`], for a volume still mounted: a stale FSInfo free count is
/// no complaint either.
pub(crate) fn fsck_clean_live(image: &Path) -> Result<(), String> {
    fsck_check(image, FsckMode::Live)
}

/// Runs `fsck.fat -n` (which never writes) on `image` and judges its output by `mode`.
pub(crate) fn fsck_check(image: &Path, mode: FsckMode) -> Result<(), String> {
    let fsck = tool("fsck.fat", "dosfstools")?;
    let out = run(Command::new(&fsck).arg("-n").arg(image))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    fsck_verdict(&stdout, &stderr, out.status.code(), mode).map_err(|why| {
        let cmd = format!("fsck.fat -n {}", image.display());
        format!("{why}\n{}", describe_run(&cmd, &out))
    })
}

/// Whether `line` is fsck.fat's closing summary, `IMAGE: 3 files, 12/3943 clusters`.
fn is_fsck_summary(line: &str) -> bool {
    let Some((_, tail)) = line.rsplit_once(": ") else {
        return false;
    };
    let Some((files, clusters)) = tail.split_once(" files, ") else {
        return false;
    };
    let Some((used, total)) = clusters
        .strip_suffix(" clusters")
        .and_then(|c| c.split_once('/'))
    else {
        return false;
    };
    let number = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    number(files) && number(used) && number(total)
}

/// The differences listed after "There are differences between boot sector and its backup."
/// (`65:01/00, 66:...` over one or more lines), as offsets; `None` if a line is not in that
/// form.
fn backup_diff_offsets<'a>(lines: &[&'a str]) -> Option<Vec<&'a str>> {
    let mut offsets = Vec::new();
    for line in lines {
        for item in line.split(", ").map(str::trim).filter(|s| !s.is_empty()) {
            let (offset, _bytes) = item.split_once(':')?;
            offsets.push(offset);
        }
    }
    Some(offsets)
}

/// Judges fsck.fat's output. A clean run prints exactly a version banner and a summary on
/// stdout, nothing on stderr, and exits 0. Some complaints do not change the exit code (a
/// FAT32 volume with too few clusters only warns on stderr), so every line is looked at.
fn fsck_verdict(
    stdout: &str,
    stderr: &str,
    code: Option<i32>,
    mode: FsckMode,
) -> Result<(), String> {
    let lines: Vec<&str> = stdout.lines().collect();
    let last = lines.iter().rposition(|l| !l.trim().is_empty());
    let mut complaints: Vec<String> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| format!("stderr: {l}"))
        .collect();
    let (mut dirty, mut summary, mut unchanged) = (false, false, false);
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        i += 1;
        let allow = mode != FsckMode::Strict;
        if line.trim().is_empty() || (i == 1 && line.starts_with("fsck.fat ")) {
            continue;
        }
        if Some(i - 1) == last && is_fsck_summary(line) {
            summary = true;
        } else if allow && line == DIRTY_LINES[0] {
            dirty = true;
            if lines.get(i).map(|l| l.trim()) == Some(DIRTY_LINES[1]) {
                i += 1;
            }
        } else if mode == FsckMode::Live && line.starts_with("Free cluster summary wrong") {
            if lines.get(i).map(|l| l.trim()) == Some("Auto-correcting.") {
                i += 1;
            }
            // Only the hint: the same -n run still checks every chain and directory.
            dirty = true;
        } else if allow && line == "Leaving filesystem unchanged." {
            // -n's closing words whenever fsck wanted to change anything.
            unchanged = true;
        } else if allow && line == "There are differences between boot sector and its backup." {
            // The kernel sets the dirty bit in the primary boot sector only, so on FAT32 a
            // dirty volume's backup differs in that one byte.
            let block_end = lines[i..]
                .iter()
                .position(|l| l.trim() == "Not automatically fixing this.")
                .map(|n| i + n);
            let header = lines.get(i).copied().unwrap_or_default();
            let diffs = match block_end {
                Some(end) if header.starts_with("This is mostly harmless.") => {
                    backup_diff_offsets(&lines[i + 1..end]).map(|offs| (offs, end))
                }
                _ => None,
            };
            match diffs {
                Some((offsets, end)) if offsets.iter().all(|o| *o == FAT32_DIRTY_BYTE) => {
                    i = end + 1;
                }
                _ => complaints.push(line.to_owned()),
            }
        } else {
            complaints.push(line.to_owned());
        }
    }
    if unchanged && !dirty {
        complaints.push("fsck.fat wanted to change the filesystem".to_owned());
    }
    if !summary {
        complaints.push("no closing summary line (did fsck.fat finish?)".to_owned());
    }
    let code_ok = match code {
        Some(0) => true,
        // -n exits 1 when it would have fixed something: here only the dirty bit.
        Some(1) => mode != FsckMode::Strict && dirty,
        _ => false,
    };
    if !code_ok {
        complaints.push(format!("exit code {code:?}"));
    }
    if complaints.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "fsck.fat complains:\n  {}",
            complaints.join("\n  ")
        ))
    }
}

// ---------------------------------------------------------------------------------------
// mtools

/// An mtools command whose result depends on nothing of the host: no user or site config
/// beyond `/etc/mtools.conf` (the flags it could set are forced here), no geometry check
/// (`mkfs.fat` images need not match a floppy's), VFAT on, and a UTF-8 locale: without it
/// mtools turns every non-ASCII character of a long name into `_`.
fn mtools_command(tool: &Path, scratch: &Path) -> Result<Command, String> {
    let rc = scratch.join("mtoolsrc");
    fs::write(&rc, "").map_err(|e| format!("write {}: {e}", rc.display()))?;
    let mut cmd = Command::new(tool);
    cmd.env("HOME", scratch)
        .env("MTOOLSRC", &rc)
        .env("MTOOLS_SKIP_CHECK", "1")
        .env("MTOOLS_NO_VFAT", "0")
        .env("MTOOLS_LOWER_CASE", "0")
        .env("LC_ALL", "C.UTF-8")
        .env_remove("LANGUAGE");
    Ok(cmd)
}

/// Runs one mtools command on `image`; an error unless it exits 0 and prints no warning.
fn mtools_run(tool: &Path, scratch: &Path, image: &Path, args: &[&OsStr]) -> Result<(), String> {
    let mut cmd = mtools_command(tool, scratch)?;
    cmd.arg("-i").arg(image).args(args);
    let line = format!("{cmd:?}");
    let out = run(&mut cmd)?;
    if out.status.success() && out.stderr.is_empty() {
        Ok(())
    } else {
        Err(describe_run(&line, &out))
    }
}

/// The tree of `image` as mtools sees it: `mcopy -s` copies the whole volume into a scratch
/// directory (bytes verbatim, long names as UTF-8), which is then walked.
pub(crate) fn mtools_tree(image: &Path) -> Result<Tree, String> {
    let mcopy = tool("mcopy", "mtools")?;
    let dir = scratch("mtools");
    let out = dir.0.join("tree");
    fs::create_dir(&out).map_err(|e| format!("mkdir {}: {e}", out.display()))?;
    // -s recursive, -n no question about overwriting, -Q stop at the first failure.
    let args = ["-s", "-n", "-Q", "::/"].map(OsStr::new);
    mtools_run(
        &mcopy,
        &dir.0,
        image,
        &[&args[..], &[out.as_os_str()]].concat(),
    )?;
    let mut tree = Tree::new();
    host_walk(&out, "", 0, &mut tree)?;
    Ok(tree)
}

/// Adds everything under the host directory `dir` (named `prefix` in the tree) to `tree`.
fn host_walk(dir: &Path, prefix: &str, depth: usize, tree: &mut Tree) -> Result<(), String> {
    if depth > MAX_DEPTH {
        return Err(format!("{prefix}: nested deeper than {MAX_DEPTH}"));
    }
    let entries = fs::read_dir(dir).map_err(|e| format!("read_dir {}: {e}", dir.display()))?;
    for entry in entries {
        let entry = entry.map_err(|e| format!("read_dir {}: {e}", dir.display()))?;
        let name = entry
            .file_name()
            .into_string()
            .map_err(|n| format!("{prefix}: name {n:?} is not UTF-8"))?;
        let path = format!("{prefix}/{name}");
        let kind = entry.file_type().map_err(|e| format!("{path}: {e}"))?;
        if kind.is_dir() {
            insert(tree, &path, Node::Dir)?;
            host_walk(&entry.path(), &path, depth + 1, tree)?;
        } else if kind.is_file() {
            let data = fs::read(entry.path()).map_err(|e| format!("read {path}: {e}"))?;
            insert(tree, &path, Node::File(data))?;
        } else {
            return Err(format!("{path}: neither file nor directory ({kind:?})"));
        }
    }
    Ok(())
}

/// Writes `tree` into the FAT volume `image` with mtools (`mmd`, `mcopy`): a way to build test
/// images that owes nothing to fatcache.
pub(crate) fn mtools_put_tree(image: &Path, tree: &Tree) -> Result<(), String> {
    let (mmd, mcopy) = (tool("mmd", "mtools")?, tool("mcopy", "mtools")?);
    let dir = scratch("put");
    let host_file = dir.0.join("data");
    // A BTreeMap lists a directory before anything under it, so parents are made first.
    for (path, node) in tree {
        let target = format!("::{path}");
        let target = OsStr::new(&target);
        match node {
            Node::Dir => mtools_run(&mmd, &dir.0, image, &[target])?,
            Node::File(data) => {
                fs::write(&host_file, data).map_err(|e| format!("write host file: {e}"))?;
                mtools_run(&mcopy, &dir.0, image, &[host_file.as_os_str(), target])?;
            }
        }
    }
    Ok(())
}

/// Formats `image` (created, `kib` KiB) with `mkfs.fat`: FAT type `fat` (12, 16 or 32),
/// `sectors_per_cluster` sectors of 512 bytes, label `label` and a fixed volume id.
pub(crate) fn mkfs_fat(
    image: &Path,
    fat: u8,
    kib: u64,
    sectors_per_cluster: u8,
    label: &str,
) -> Result<(), String> {
    let mkfs = tool("mkfs.fat", "dosfstools")?;
    let mut cmd = Command::new(&mkfs);
    cmd.args(["-C", "-F", &fat.to_string(), "-S", "512"])
        .args(["-s", &sectors_per_cluster.to_string()])
        .args(["-n", label, "-i", "1234abcd"])
        .arg(image)
        .arg(kib.to_string());
    let line = format!("{cmd:?}");
    let out = run(&mut cmd)?;
    // mkfs.fat only warns (on stderr) about a type its cluster count does not match: such an
    // image is not what the caller asked for.
    if out.status.success() && out.stderr.is_empty() {
        Ok(())
    } else {
        Err(describe_run(&line, &out))
    }
}

// ---------------------------------------------------------------------------------------
// fatfs

/// The image file for fatfs, which wants a writable handle but must not change the image:
/// every write fails.
struct ReadOnlyImage(BufReader<File>);

impl Read for ReadOnlyImage {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl Seek for ReadOnlyImage {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.0.seek(pos)
    }
}

impl Write for ReadOnlyImage {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::Error::other("the image is read-only for fatfs_tree"))
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The tree of `image` as the `fatfs` crate sees it (long names, whole files).
pub(crate) fn fatfs_tree(image: &Path) -> Result<Tree, String> {
    let file = File::open(image).map_err(|e| format!("open {}: {e}", image.display()))?;
    let disk = ReadOnlyImage(BufReader::new(file));
    let fs = fatfs::FileSystem::new(disk, fatfs::FsOptions::new())
        .map_err(|e| format!("fatfs: mount {}: {e}", image.display()))?;
    let mut tree = Tree::new();
    fatfs_walk(&fs.root_dir(), "", 0, &mut tree)?;
    Ok(tree)
}

/// Adds everything in the fatfs directory `dir` (named `prefix`) to `tree`.
fn fatfs_walk<T: fatfs::ReadWriteSeek>(
    dir: &fatfs::Dir<'_, T>,
    prefix: &str,
    depth: usize,
    tree: &mut Tree,
) -> Result<(), String> {
    if depth > MAX_DEPTH {
        return Err(format!("fatfs: {prefix}: nested deeper than {MAX_DEPTH}"));
    }
    for entry in dir.iter() {
        let entry = entry.map_err(|e| format!("fatfs: read_dir {prefix}/: {e}"))?;
        let name = entry.file_name();
        if name == "." || name == ".." {
            continue;
        }
        let path = format!("{prefix}/{name}");
        if entry.is_dir() {
            insert(tree, &path, Node::Dir)?;
            fatfs_walk(&entry.to_dir(), &path, depth + 1, tree)?;
        } else {
            let mut data = Vec::new();
            entry
                .to_file()
                .read_to_end(&mut data)
                .map_err(|e| format!("fatfs: read {path}: {e}"))?;
            if data.len() as u64 != entry.len() {
                let (got, size) = (data.len(), entry.len());
                return Err(format!("fatfs: {path}: read {got} bytes of {size}"));
            }
            insert(tree, &path, Node::File(data))?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// fatcache

/// The tree of `image` as fatcache's own `Volume` reads it, opened read-only.
pub(crate) fn our_tree(image: &Path) -> Result<Tree, String> {
    let placement = Placement {
        read_only: true,
        ..Placement::default()
    };
    let vol = Volume::open(image, placement, OUR_FRAMES)
        .map_err(|e| format!("fatcache: Volume::open {}: {e}", image.display()))?;
    let mut tree = Tree::new();
    our_walk(&vol, &vol.root(), "", 0, &mut tree)?;
    Ok(tree)
}

/// Adds everything in fatcache directory `dir` (named `prefix`) to `tree`.
fn our_walk(
    vol: &Volume,
    dir: &VolNode,
    prefix: &str,
    depth: usize,
    tree: &mut Tree,
) -> Result<(), String> {
    if depth > MAX_DEPTH {
        return Err(format!(
            "fatcache: {prefix}: nested deeper than {MAX_DEPTH}"
        ));
    }
    let items = vol
        .read_dir(dir)
        .map_err(|e| format!("fatcache: read_dir {prefix}/: {e}"))?;
    for item in items {
        let path = format!("{prefix}/{}", item.name);
        let node = vol
            .child_at(dir, item.offset)
            .map_err(|e| format!("fatcache: open {path}: {e}"))?;
        if item.entry.is_dir() {
            insert(tree, &path, Node::Dir)?;
            our_walk(vol, &node, &path, depth + 1, tree)?;
        } else {
            let size = item.entry.size as usize;
            let mut data = vec![0u8; size];
            let mut done = 0;
            while done < size {
                let n = vol
                    .read(&node, done as u64, &mut data[done..])
                    .map_err(|e| format!("fatcache: read {path} at {done}: {e}"))?;
                if n == 0 {
                    return Err(format!("fatcache: {path}: read {done} bytes of {size}"));
                }
                done += n;
            }
            insert(tree, &path, Node::File(data))?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Comparison

/// Adds `path` to `tree`; a path a reader lists twice (two entries of one name) is an error.
fn insert(tree: &mut Tree, path: &str, node: Node) -> Result<(), String> {
    match tree.insert(path.to_owned(), node) {
        None => Ok(()),
        Some(_) => Err(format!("{path}: listed twice")),
    }
}

/// `dir`, or `file of N bytes`.
fn describe(node: &Node) -> String {
    match node {
        Node::Dir => "dir".to_owned(),
        Node::File(data) => format!("file of {} bytes", data.len()),
    }
}

/// How file contents `got` differ from `want`: sizes and the first differing byte.
fn describe_bytes(got: &[u8], want: &[u8]) -> String {
    let (g, w) = (got.len(), want.len());
    let first = got.iter().zip(want).position(|(a, b)| a != b);
    let at = match first {
        Some(i) => format!(
            "first difference at byte {i}: 0x{:02x}, expected 0x{:02x}",
            got[i], want[i]
        ),
        None if g < w => format!("identical for {g} bytes, then ends early"),
        None => format!("identical for {w} bytes, then {} extra", g - w),
    };
    format!("file of {g} bytes, expected {w} bytes; {at}")
}

/// `Ok` when `got` equals `expected`; else every differing path (up to [`MAX_DIFFS`]).
pub(crate) fn compare_trees(expected: &Tree, got: &Tree) -> Result<(), String> {
    let mut diffs = Vec::new();
    let paths: BTreeSet<&String> = expected.keys().chain(got.keys()).collect();
    for path in paths {
        let diff = match (expected.get(path), got.get(path)) {
            (Some(want), None) => format!("missing (expected {})", describe(want)),
            (None, Some(got)) => format!("unexpected {}", describe(got)),
            (Some(Node::File(want)), Some(Node::File(got))) if want != got => {
                describe_bytes(got, want)
            }
            (Some(want), Some(got)) if want != got => {
                format!("{}, expected {}", describe(got), describe(want))
            }
            _ => continue,
        };
        diffs.push(format!("{path}: {diff}"));
    }
    if diffs.is_empty() {
        return Ok(());
    }
    let total = diffs.len();
    diffs.truncate(MAX_DIFFS);
    let mut text = diffs.join("\n");
    if total > MAX_DIFFS {
        let _ = write!(text, "\n... and {} more", total - MAX_DIFFS);
    }
    Err(text)
}

/// A reader of an image into a [`Tree`].
type Reader = fn(&Path) -> Result<Tree, String>;

/// The independent readers [`check_trees`] consults, by name.
pub(crate) const READERS: [(&str, Reader); 3] = [
    ("mtools", mtools_tree),
    ("fatfs", fatfs_tree),
    ("fatcache", our_tree),
];

/// fsck (judged by `mode`) finds nothing and every reader of [`READERS`] sees `expected`;
/// the `Err` says, per checker, what went wrong.
pub(crate) fn check_trees(image: &Path, expected: &Tree, mode: FsckMode) -> Result<(), String> {
    let mut failures = Vec::new();
    if let Err(e) = fsck_check(image, mode) {
        failures.push(format!("[fsck.fat] {e}"));
    }
    for (name, reader) in READERS {
        match reader(image) {
            Err(e) => failures.push(format!("[{name}] cannot read the image: {e}")),
            Ok(tree) => {
                if let Err(diff) = compare_trees(expected, &tree) {
                    failures.push(format!("[{name}] differs from the expected tree:\n{diff}"));
                }
            }
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(format!("{}:\n{}", image.display(), failures.join("\n")))
    }
}

/// Panics, with every checker's complaint, unless fsck is clean and all readers see `expected`.
#[track_caller]
pub(crate) fn assert_trees_agree(image: &Path, expected: &Tree) {
    if let Err(e) = check_trees(image, expected, FsckMode::Strict) {
        panic!("readers disagree with the expected tree: {e}");
    }
}

// ---------------------------------------------------------------------------------------
// Test images and test data

/// One FAT type's test image: `mkfs.fat` arguments that give that type.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Layout {
    /// FAT type asked of mkfs.fat: 12, 16 or 32.
    pub(crate) fat: u8,
    /// Image size in KiB.
    pub(crate) kib: u64,
    /// Sectors (of 512 bytes) per cluster.
    pub(crate) sectors_per_cluster: u8,
    /// The type fatcache must find, by cluster count.
    pub(crate) want: fatcache::fat::bpb::FatType,
}

/// FAT12 with 2 KiB clusters (about 990 of them), fixed root.
pub(crate) const FAT12: Layout = Layout {
    fat: 12,
    kib: 2000,
    sectors_per_cluster: 4,
    want: fatcache::fat::bpb::FatType::Fat12,
};

/// FAT16 with 1 KiB clusters (about 7960, above FAT12's 4084), fixed root of 512 entries.
pub(crate) const FAT16: Layout = Layout {
    fat: 16,
    kib: 8000,
    sectors_per_cluster: 2,
    want: fatcache::fat::bpb::FatType::Fat16,
};

/// FAT32 with 512-byte clusters: about 66900, just above the 65525 that fsck.fat and fatcache
/// require of FAT32 (mkfs.fat only warns below it); the root is a cluster chain.
pub(crate) const FAT32: Layout = Layout {
    fat: 32,
    kib: 34_000,
    sectors_per_cluster: 1,
    want: fatcache::fat::bpb::FatType::Fat32,
};

/// `n` bytes of xorshift64* output: no runs or repeats that could hide a misplaced cluster.
pub(crate) fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        })
        .collect()
}

/// `a` and `b`, with everything under them, trade places in the model `t` (RENAME_EXCHANGE).
pub(crate) fn exchange_in_tree(t: &mut Tree, a: &str, b: &str) {
    let take = |t: &mut Tree, from: &str| -> Vec<(String, Node)> {
        let below = format!("{from}/");
        let paths: Vec<String> = t
            .keys()
            .filter(|p| *p == from || p.starts_with(&below))
            .cloned()
            .collect();
        assert!(!paths.is_empty(), "{from} not in the model");
        paths
            .into_iter()
            .map(|p| {
                let n = t.remove(&p).expect("listed");
                (p[from.len()..].to_owned(), n)
            })
            .collect()
    };
    let (under_a, under_b) = (take(t, a), take(t, b));
    for (rest, n) in under_a {
        t.insert(format!("{b}{rest}"), n);
    }
    for (rest, n) in under_b {
        t.insert(format!("{a}{rest}"), n);
    }
}
