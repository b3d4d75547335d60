//! The soak: several threads run random operations on one mount for a while, each checking
//! every read and every directory listing against its own in-memory model, then the mount
//! ends, fsck must be clean and independent readers must see exactly the models' union.
//!
//! Each thread owns a subtree (`/tN`) and its own names (all starting `tN-`) in the shared
//! directory `/shared`, so its model is exact however the threads interleave, while they
//! still create, rename and remove entries of one directory at the same time. Operations:
//! create, write at random offsets, append, read, truncate up and down, fallocate, fsync,
//! rename (within and across directories, over files and empty directories, and the
//! refusals), mkdir, rmdir, unlink and readdir; and files held open across operations, read
//! and written through their descriptors after renames and after their names are gone
//! (unlinked or replaced: the bytes live on until the close). The cache is small (4 MiB), so
//! reclaim runs under the load.
//!
//! A fifth group of threads runs the January 2021 race's workload on `/race/race.bin`,
//! checkably: four writers each own a quarter of its first 1000 bytes, and one thread grows
//! the file (ftruncate, fallocate), checks that the new part reads as zeros, syncs it and
//! shrinks it back.
//!
//! Every era runs. `v6.9` runs with `on_bug=abort` (a BUG ends the daemon, which fails the
//! test) for 30 s asynchronously (small cache, flusher every 50 ms) and 30 s `racy` (`sync`,
//! the race's wake delay and a device latency). The others run `racy` for 10 s with
//! `on_bug=warn`: the BUG may fire under v5.9 and v5.10, and the data must still be right.
//! v5.11 also runs 10 s asynchronously with `cache=kernel`.
//! `FATCACHE_SOAK_SECS` sets every duration (for longer runs) and `FATCACHE_SOAK_SEED` the
//! seed; the seed is printed at the start and in every failure, and each thread's sequence of
//! operations follows from it (the interleaving does not).

use std::collections::{BTreeSet, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::basic::readers_agree;
use crate::common::readers::{Node, Tree};
use crate::harness::{Fat, Mounted, Rng};

/// Worker threads.
const THREADS: usize = 4;

/// Most bytes one thread keeps in its files: four threads stay well inside 64 MiB.
const BUDGET: u64 = 6 << 20;

/// Largest file a thread makes.
const MAX_FILE: u64 = 512 << 10;

/// Operations of a thread's history shown in a failure.
const HISTORY: usize = 25;

/// Longest path the workers make, far below PATH_MAX: renames of directories into each other
/// would otherwise nest them without bound in a long run.
const MAX_PATH: usize = 1500;

/// How often a run prints its progress.
const PROGRESS: Duration = Duration::from_secs(20);

/// The shared directory.
const SHARED: &str = "/shared";

/// The duration: `FATCACHE_SOAK_SECS` if set, else `default`.
fn duration(default: u64) -> Duration {
    let secs = std::env::var("FATCACHE_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default);
    Duration::from_secs(secs)
}

/// The seed: `FATCACHE_SOAK_SEED` if set, else from the clock.
fn seed() -> u64 {
    std::env::var("FATCACHE_SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        })
}

/// A rename's outcome by the rules of rename(2).
fn rename_outcome(model: &Tree, from: &str, to: &str) -> Result<(), i32> {
    let is_dir = |p: &str| matches!(model.get(p), Some(Node::Dir));
    let empty = |p: &str| {
        let below = format!("{p}/");
        !model.keys().any(|k| k.starts_with(&below))
    };
    match (model.get(to).is_some(), is_dir(from), is_dir(to)) {
        (false, _, _) => Ok(()),
        (true, false, false) => Ok(()),
        (true, false, true) => Err(libc::EISDIR),
        (true, true, false) => Err(libc::ENOTDIR),
        (true, true, true) if empty(to) => Ok(()),
        (true, true, true) => Err(libc::ENOTEMPTY),
    }
}

/// Expects `r` to match `want` (Ok or an errno).
fn outcome<T>(r: io::Result<T>, want: Result<(), i32>, what: &str) -> Result<Option<T>, String> {
    match (r, want) {
        (Ok(v), Ok(())) => Ok(Some(v)),
        (Err(e), Err(errno)) if e.raw_os_error() == Some(errno) => Ok(None),
        (Err(e), Ok(())) => Err(format!("{what}: {e}")),
        (Err(e), Err(errno)) => Err(format!(
            "{what}: expected {}, got {e}",
            io::Error::from_raw_os_error(errno)
        )),
        (Ok(_), Err(errno)) => Err(format!(
            "{what}: succeeded, expected {}",
            io::Error::from_raw_os_error(errno)
        )),
    }
}

/// One thread of the soak: its model, its generator and its counters.
struct Worker {
    tid: usize,
    mnt: std::path::PathBuf,
    rng: Rng,
    /// Everything this thread made, by absolute path (its root `/tN` included).
    model: Tree,
    next_name: u64,
    bytes: u64,
    ops: u64,
    history: VecDeque<String>,
    /// Files kept open across operations.
    held: Vec<Held>,
    /// The bytes of unlinked files still held open, by number (several held descriptors may
    /// share one file).
    orphans: std::collections::HashMap<u64, Vec<u8>>,
    next_orphan: u64,
}

/// A file a worker keeps open across operations: it follows its file through renames, and
/// once the name is gone (unlinked, or replaced by a rename) it still reads and writes the
/// file's own bytes, which the worker then keeps here.
struct Held {
    file: File,
    /// The file's path, while it has one.
    path: Option<String>,
    /// Once the path is gone: the file's number in [`Worker::orphans`].
    orphan: u64,
}

/// Files a worker keeps open at most.
const MAX_HELD: usize = 3;

impl Worker {
    fn new(tid: usize, mnt: std::path::PathBuf, seed: u64) -> Worker {
        let mut model = Tree::new();
        model.insert(format!("/t{tid}"), Node::Dir);
        Worker {
            tid,
            mnt,
            rng: Rng::new(seed ^ (tid as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            model,
            next_name: 0,
            bytes: 0,
            ops: 0,
            history: VecDeque::new(),
            held: Vec::new(),
            orphans: std::collections::HashMap::new(),
            next_orphan: 0,
        }
    }

    fn path(&self, p: &str) -> std::path::PathBuf {
        self.mnt.join(p.trim_start_matches('/'))
    }

    fn root(&self) -> String {
        format!("/t{}", self.tid)
    }

    /// A fresh name: short 8.3-style, long with spaces, or long with mixed case.
    fn new_name(&mut self) -> String {
        self.next_name += 1;
        let (t, n) = (self.tid, self.next_name);
        match self.rng.below(3) {
            0 => format!("t{t}-{n}"),
            1 => format!("t{t}-file {n} with a long name.dat"),
            _ => format!("t{t}-Mixed{n}.Txt"),
        }
    }

    /// One of this thread's files, at random; None if it has none. The same draw as a pick
    /// from the list of all its files in model order, without building that list: cloning
    /// every path on every step cost the soak more CPU than the daemon did once the model
    /// held a few thousand paths.
    fn pick_file(&mut self) -> Option<String> {
        let is_file = |n: &Node| matches!(n, Node::File(_));
        let n = self.model.values().filter(|n| is_file(n)).count();
        if n == 0 {
            return None;
        }
        let i = self.rng.below(n as u64) as usize;
        let mut files = self.model.iter().filter(|(_, n)| is_file(n));
        files.nth(i).map(|(p, _)| p.clone())
    }

    /// Directories this thread may put entries in: its own and `/shared`.
    fn parents(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .model
            .iter()
            .filter(|(_, n)| matches!(n, Node::Dir))
            .map(|(p, _)| p.clone())
            .collect();
        v.push(SHARED.to_owned());
        v
    }

    fn pick<T: Clone>(&mut self, v: &[T]) -> Option<T> {
        if v.is_empty() {
            None
        } else {
            Some(v[self.rng.below(v.len() as u64) as usize].clone())
        }
    }

    fn data(&self, p: &str) -> &Vec<u8> {
        match self.model.get(p) {
            Some(Node::File(d)) => d,
            other => panic!("model: {p} is {other:?}"),
        }
    }

    fn set_data(&mut self, p: &str, d: Vec<u8>) {
        let old = self.data(p).len() as u64;
        self.bytes = self.bytes - old + d.len() as u64;
        self.model.insert(p.to_owned(), Node::File(d));
    }

    /// The names this thread has directly in `dir`.
    fn children(&self, dir: &str) -> BTreeSet<String> {
        let prefix = if dir == "/" {
            "/".to_owned()
        } else {
            format!("{dir}/")
        };
        self.model
            .keys()
            .filter_map(|k| k.strip_prefix(&prefix))
            .filter(|rest| !rest.contains('/'))
            .map(str::to_owned)
            .collect()
    }

    /// A length for new data: mostly small, sometimes spanning many pages.
    fn len(&mut self) -> u64 {
        match self.rng.below(10) {
            0..=5 => self.rng.below(3000),
            6..=8 => self.rng.below(40_000),
            _ => self.rng.below(200_000),
        }
    }

    /// Whether growing by `grow` keeps this thread within its budget and `size + grow`
    /// within [`MAX_FILE`].
    fn fits(&self, size: u64, grow: u64) -> bool {
        let orphans: u64 = self.orphans.values().map(|d| d.len() as u64).sum();
        self.bytes + orphans + grow <= BUDGET && size + grow <= MAX_FILE
    }

    /// The held files whose path is `p` lose it: they keep the bytes `p` had.
    fn orphan(&mut self, p: &str) {
        let data = match self.model.get(p) {
            Some(Node::File(d)) => d.clone(),
            _ => return,
        };
        if !self.held.iter().any(|h| h.path.as_deref() == Some(p)) {
            return;
        }
        self.next_orphan += 1;
        self.orphans.insert(self.next_orphan, data);
        for h in self
            .held
            .iter_mut()
            .filter(|h| h.path.as_deref() == Some(p))
        {
            h.path = None;
            h.orphan = self.next_orphan;
        }
    }

    /// Opens a file and keeps it open, or closes one already held.
    fn hold(&mut self) -> Result<(), String> {
        if self.held.len() >= MAX_HELD || (!self.held.is_empty() && self.rng.below(3) == 0) {
            let i = self.rng.below(self.held.len() as u64) as usize;
            let h = self.held.swap_remove(i);
            self.note(format!("close held {:?}", h.path));
            let shared = self
                .held
                .iter()
                .any(|o| o.path.is_none() && o.orphan == h.orphan);
            if h.path.is_none() && !shared {
                // The last descriptor of an unlinked file: its bytes are gone.
                self.orphans.remove(&h.orphan);
            }
            return Ok(());
        }
        let Some(p) = self.pick_file() else {
            return Ok(());
        };
        self.note(format!("hold {p}"));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.path(&p))
            .map_err(|e| format!("open {p} to hold: {e}"))?;
        self.held.push(Held {
            file,
            path: Some(p),
            orphan: 0,
        });
        Ok(())
    }

    /// Writes or reads through a held file, checking what it reads against the model (or,
    /// for an unlinked file, against the bytes it keeps).
    fn use_held(&mut self) -> Result<(), String> {
        if self.held.is_empty() {
            return Ok(());
        }
        let i = self.rng.below(self.held.len() as u64) as usize;
        let what = match &self.held[i].path {
            Some(p) => p.clone(),
            None => format!("unlinked file {}", self.held[i].orphan),
        };
        let want = match &self.held[i].path {
            Some(p) => self.data(p).clone(),
            None => self.orphans[&self.held[i].orphan].clone(),
        };
        if self.rng.below(2) == 0 {
            let size = want.len() as u64;
            let off = self.rng.below(size + 4096);
            let len = 1 + self.rng.below(20_000);
            let grow = (off + len).saturating_sub(size);
            if !self.fits(size, grow) {
                return Ok(());
            }
            let bytes = self.rng.bytes(len as usize);
            self.note(format!(
                "held write {what} at {off}, {len} bytes (size {size})"
            ));
            self.held[i]
                .file
                .write_all_at(&bytes, off)
                .map_err(|e| format!("held pwrite {what} at {off}: {e}"))?;
            let mut d = want;
            let end = (off + len) as usize;
            if d.len() < end {
                d.resize(end, 0);
            }
            d[off as usize..end].copy_from_slice(&bytes);
            match self.held[i].path.clone() {
                Some(p) => self.set_data(&p, d),
                None => {
                    self.orphans.insert(self.held[i].orphan, d);
                }
            }
            return Ok(());
        }
        self.note(format!("held read {what} ({} bytes)", want.len()));
        let mut got = vec![0u8; want.len() + 100];
        let mut n = 0;
        loop {
            let r = self.held[i]
                .file
                .read_at(&mut got[n..], n as u64)
                .map_err(|e| format!("held pread {what} at {n}: {e}"))?;
            if r == 0 || n + r == got.len() {
                n += r;
                break;
            }
            n += r;
        }
        compare(&what, 0, &got[..n], &want)
    }

    /// One random operation; `Err` describes a disagreement with the model.
    fn step(&mut self) -> Result<(), String> {
        let op = self.rng.below(100);
        match op {
            0..=11 => self.create(),
            12..=26 => self.write(),
            27..=33 => self.append(),
            34..=49 => self.read(),
            50..=56 => self.truncate(),
            57..=61 => self.fallocate(),
            62..=65 => self.fsync(),
            66..=73 => self.rename(),
            74..=77 => self.mkdir(),
            78..=80 => self.rmdir(),
            81..=85 => self.unlink(),
            86..=87 => self.hold(),
            88..=93 => self.use_held(),
            _ => self.readdir(),
        }
    }

    fn note(&mut self, what: String) {
        if self.history.len() == HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(what);
    }

    /// A directory for a new entry: `/shared` a third of the time, so it grows large enough
    /// that one listing takes several FUSE requests while other threads change it.
    fn new_parent(&mut self) -> String {
        if self.rng.below(3) == 0 {
            return SHARED.to_owned();
        }
        let parents = self.parents();
        self.pick(&parents).expect("the root is always there")
    }

    fn create(&mut self) -> Result<(), String> {
        let dir = self.new_parent();
        let name = self.new_name();
        let p = format!("{}/{name}", dir.trim_end_matches('/'));
        let mut len = self.len();
        if !self.fits(0, len) {
            len = 0;
        }
        let data = self.rng.bytes(len as usize);
        self.note(format!("create {p} ({len} bytes)"));
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(self.path(&p))
            .map_err(|e| format!("create {p}: {e}"))?;
        f.write_all(&data)
            .map_err(|e| format!("write {len} bytes to new {p}: {e}"))?;
        self.bytes += len;
        self.model.insert(p, Node::File(data));
        Ok(())
    }

    fn write(&mut self) -> Result<(), String> {
        let Some(p) = self.pick_file() else {
            return Ok(());
        };
        let size = self.data(&p).len() as u64;
        let off = self.rng.below(size + 8193);
        let len = self.len().max(1);
        let grow = (off + len).saturating_sub(size);
        if !self.fits(size, grow) {
            return self.truncate_to(&p, size / 2);
        }
        let bytes = self.rng.bytes(len as usize);
        self.note(format!("write {p} at {off}, {len} bytes (size {size})"));
        let f = OpenOptions::new()
            .write(true)
            .open(self.path(&p))
            .map_err(|e| format!("open {p} for writing: {e}"))?;
        f.write_all_at(&bytes, off)
            .map_err(|e| format!("pwrite {p} at {off}: {e}"))?;
        let mut d = self.data(&p).clone();
        let end = (off + len) as usize;
        if d.len() < end {
            d.resize(end, 0);
        }
        d[off as usize..end].copy_from_slice(&bytes);
        self.set_data(&p, d);
        Ok(())
    }

    fn append(&mut self) -> Result<(), String> {
        let Some(p) = self.pick_file() else {
            return Ok(());
        };
        let size = self.data(&p).len() as u64;
        let len = self.len().max(1);
        if !self.fits(size, len) {
            return self.truncate_to(&p, 0);
        }
        let bytes = self.rng.bytes(len as usize);
        self.note(format!("append {len} bytes to {p} (size {size})"));
        let mut f = OpenOptions::new()
            .append(true)
            .open(self.path(&p))
            .map_err(|e| format!("open {p} to append: {e}"))?;
        f.write_all(&bytes)
            .map_err(|e| format!("append to {p}: {e}"))?;
        let mut d = self.data(&p).clone();
        d.extend_from_slice(&bytes);
        self.set_data(&p, d);
        Ok(())
    }

    fn read(&mut self) -> Result<(), String> {
        let Some(p) = self.pick_file() else {
            return Ok(());
        };
        let want = self.data(&p).clone();
        let mut f = File::open(self.path(&p)).map_err(|e| format!("open {p}: {e}"))?;
        let size = f.metadata().map_err(|e| format!("fstat {p}: {e}"))?.len();
        if size != want.len() as u64 {
            return Err(format!("{p}: size {size}, model says {}", want.len()));
        }
        if self.rng.below(2) == 0 {
            self.note(format!("read all of {p} ({size} bytes)"));
            let mut got = Vec::new();
            f.read_to_end(&mut got)
                .map_err(|e| format!("read {p}: {e}"))?;
            return compare(&p, 0, &got, &want);
        }
        let off = self.rng.below(want.len() as u64 + 100);
        let len = self.rng.below(70_000) as usize;
        self.note(format!("read {p} at {off}, {len} bytes (size {size})"));
        let mut buf = vec![0u8; len];
        let mut got = 0;
        while got < len {
            let n = f
                .read_at(&mut buf[got..], off + got as u64)
                .map_err(|e| format!("pread {p} at {}: {e}", off + got as u64))?;
            if n == 0 {
                break;
            }
            got += n;
        }
        let start = (off as usize).min(want.len());
        let end = (off as usize + len).min(want.len());
        compare(&p, off, &buf[..got], &want[start..end])
    }

    fn truncate(&mut self) -> Result<(), String> {
        let Some(p) = self.pick_file() else {
            return Ok(());
        };
        let size = self.data(&p).len() as u64;
        let to = if self.rng.below(2) == 0 {
            self.rng.below(size + 1)
        } else {
            size + self.rng.below(70_000)
        };
        if to > size && !self.fits(size, to - size) {
            return self.truncate_to(&p, size / 3);
        }
        self.truncate_to(&p, to)
    }

    fn truncate_to(&mut self, p: &str, to: u64) -> Result<(), String> {
        let size = self.data(p).len();
        self.note(format!("truncate {p} from {size} to {to}"));
        let f = OpenOptions::new()
            .write(true)
            .open(self.path(p))
            .map_err(|e| format!("open {p} for writing: {e}"))?;
        f.set_len(to)
            .map_err(|e| format!("ftruncate {p} to {to}: {e}"))?;
        let mut d = self.data(p).clone();
        d.resize(to as usize, 0);
        self.set_data(p, d);
        Ok(())
    }

    fn fallocate(&mut self) -> Result<(), String> {
        let Some(p) = self.pick_file() else {
            return Ok(());
        };
        let size = self.data(&p).len() as u64;
        let off = self.rng.below(size + 16_384);
        let len = 1 + self.rng.below(40_000);
        let grow = (off + len).saturating_sub(size);
        if !self.fits(size, grow) {
            return self.truncate_to(&p, size / 2);
        }
        self.note(format!("fallocate {p} {off}+{len} (size {size})"));
        let f = OpenOptions::new()
            .write(true)
            .open(self.path(&p))
            .map_err(|e| format!("open {p} for writing: {e}"))?;
        nix::fcntl::fallocate(
            &f,
            nix::fcntl::FallocateFlags::empty(),
            off as i64,
            len as i64,
        )
        .map_err(|e| format!("fallocate {p} {off}+{len}: {e}"))?;
        let mut d = self.data(&p).clone();
        if (d.len() as u64) < off + len {
            d.resize((off + len) as usize, 0);
        }
        self.set_data(&p, d);
        Ok(())
    }

    fn fsync(&mut self) -> Result<(), String> {
        let Some(p) = self.pick_file() else {
            return Ok(());
        };
        let data_only = self.rng.below(2) == 0;
        self.note(format!("fsync {p} (datasync {data_only})"));
        let f = OpenOptions::new()
            .write(true)
            .open(self.path(&p))
            .map_err(|e| format!("open {p} for writing: {e}"))?;
        let r = if data_only {
            f.sync_data()
        } else {
            f.sync_all()
        };
        r.map_err(|e| format!("fsync {p}: {e}"))
    }

    fn rename(&mut self) -> Result<(), String> {
        let root = self.root();
        let sources: Vec<String> = self.model.keys().filter(|k| **k != root).cloned().collect();
        let Some(from) = self.pick(&sources) else {
            return Ok(());
        };
        let below = format!("{from}/");
        // Not into itself (EINVAL), and not onto an ancestor of the source.
        let parents: Vec<String> = self
            .parents()
            .into_iter()
            .filter(|d| *d != from && !d.starts_with(&below))
            .collect();
        let Some(dir) = self.pick(&parents) else {
            return Ok(());
        };
        let existing: Vec<String> = self
            .children(&dir)
            .into_iter()
            .map(|n| format!("{dir}/{n}"))
            .filter(|t| *t != from && !from.starts_with(&format!("{t}/")))
            .collect();
        let to = if self.rng.below(3) == 0 && !existing.is_empty() {
            self.pick(&existing).expect("not empty")
        } else {
            let name = self.new_name();
            format!("{dir}/{name}")
        };
        let deepest = self
            .model
            .keys()
            .filter(|p| **p == from || p.starts_with(&below))
            .map(|p| to.len() + p.len() - from.len())
            .max()
            .unwrap_or(0);
        if deepest > MAX_PATH {
            // Directories moved into each other nest without bound in a long run.
            return Ok(());
        }
        let want = rename_outcome(&self.model, &from, &to);
        self.note(format!("rename {from} -> {to} (expect {want:?})"));
        let r = fs::rename(self.path(&from), self.path(&to));
        if outcome(r, want, &format!("rename {from} -> {to}"))?.is_some() {
            if let Some(Node::File(d)) = self.model.get(&to) {
                self.bytes -= d.len() as u64;
            }
            // A replaced file that is held open lives on without a name; held files in the
            // moved tree follow it.
            self.orphan(&to);
            for h in &mut self.held {
                if let Some(p) = &h.path
                    && (*p == from || p.starts_with(&below))
                {
                    h.path = Some(format!("{to}{}", &p[from.len()..]));
                }
            }
            let below_to = format!("{to}/");
            self.model
                .retain(|p, _| *p != to && !p.starts_with(&below_to));
            let moved: Vec<(String, Node)> = self
                .model
                .iter()
                .filter(|(p, _)| **p == from || p.starts_with(&below))
                .map(|(p, n)| (format!("{to}{}", &p[from.len()..]), n.clone()))
                .collect();
            self.model
                .retain(|p, _| *p != from && !p.starts_with(&below));
            self.model.extend(moved);
        }
        Ok(())
    }

    fn mkdir(&mut self) -> Result<(), String> {
        let dir = self.new_parent();
        let name = self.new_name();
        let p = format!("{dir}/{name}");
        if p.len() > MAX_PATH {
            return Ok(());
        }
        self.note(format!("mkdir {p}"));
        fs::create_dir(self.path(&p)).map_err(|e| format!("mkdir {p}: {e}"))?;
        self.model.insert(p, Node::Dir);
        Ok(())
    }

    fn rmdir(&mut self) -> Result<(), String> {
        let root = self.root();
        let dirs: Vec<String> = self
            .model
            .iter()
            .filter(|(p, n)| matches!(n, Node::Dir) && **p != root)
            .map(|(p, _)| p.clone())
            .collect();
        let Some(p) = self.pick(&dirs) else {
            return Ok(());
        };
        let want = if self.children(&p).is_empty() {
            Ok(())
        } else {
            Err(libc::ENOTEMPTY)
        };
        self.note(format!("rmdir {p} (expect {want:?})"));
        let r = fs::remove_dir(self.path(&p));
        if outcome(r, want, &format!("rmdir {p}"))?.is_some() {
            self.model.remove(&p);
        }
        Ok(())
    }

    fn unlink(&mut self) -> Result<(), String> {
        // Often a file held open, which must then live on without its name.
        let held: Vec<String> = self.held.iter().filter_map(|h| h.path.clone()).collect();
        let p = if !held.is_empty() && self.rng.below(2) == 0 {
            self.pick(&held)
        } else {
            self.pick_file()
        };
        let Some(p) = p else {
            return Ok(());
        };
        self.note(format!("unlink {p}"));
        fs::remove_file(self.path(&p)).map_err(|e| format!("unlink {p}: {e}"))?;
        self.orphan(&p);
        self.bytes -= self.data(&p).len() as u64;
        self.model.remove(&p);
        Ok(())
    }

    fn readdir(&mut self) -> Result<(), String> {
        let dir = self.new_parent();
        self.note(format!("readdir {dir}"));
        let prefix = format!("t{}-", self.tid);
        let mut got = Vec::new();
        for e in fs::read_dir(self.path(&dir)).map_err(|e| format!("opendir {dir}: {e}"))? {
            let e = e.map_err(|e| format!("readdir {dir}: {e}"))?;
            let name = e.file_name().into_string().map_err(|n| format!("{n:?}"))?;
            if dir != SHARED || name.starts_with(&prefix) {
                got.push(name);
            }
        }
        let want = self.children(&dir);
        let got_set: BTreeSet<String> = got.iter().cloned().collect();
        if got_set.len() != got.len() {
            return Err(format!("readdir {dir}: a name listed twice: {got:?}"));
        }
        if got_set != want {
            let missing: Vec<&String> = want.difference(&got_set).collect();
            let extra: Vec<&String> = got_set.difference(&want).collect();
            return Err(format!(
                "readdir {dir}: missing {missing:?}, unexpected {extra:?}"
            ));
        }
        Ok(())
    }
}

/// Compares bytes read at `off` with the model's.
fn compare(p: &str, off: u64, got: &[u8], want: &[u8]) -> Result<(), String> {
    if got == want {
        return Ok(());
    }
    let at = got
        .iter()
        .zip(want)
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(want.len()));
    Err(format!(
        "{p}: read at {off} got {} bytes, model has {}; first difference at byte {} \
         (got {:?}, want {:?})",
        got.len(),
        want.len(),
        off + at as u64,
        got.get(at),
        want.get(at)
    ))
}

/// What one soak run found.
struct Outcome {
    /// Operations of the model threads.
    ops: u64,
    /// System calls of the race threads.
    race_ops: u64,
    failures: Vec<String>,
    models: Vec<Tree>,
}

/// The race file: writers in page 0 while another thread grows, syncs and shrinks it.
const RACE_FILE: &str = "/race/race.bin";

/// Bytes of the race file each writer owns (writer `w` owns `w * RACE_SPAN..`).
const RACE_SPAN: u64 = 250;

/// Writers of the race file.
const RACE_WRITERS: u64 = 4;

/// What a race thread did: operations, a failure, and for a writer its bytes at the end.
type RaceResult = (u64, Option<String>, Option<Vec<u8>>);

/// The January 2021 race's workload, checkable: each writer writes only its own part of the
/// first 1000 bytes (and reads it back now and then), one thread grows the file, checks
/// that the new part reads as zeros, fsyncs it and shrinks it back to 1000 bytes.
fn start_race(
    m: &Mounted,
    secs: Duration,
    seed: u64,
    stop: &Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<RaceResult>> {
    let path = m.path(&RACE_FILE[1..]);
    fs::create_dir(path.parent().expect("in /race")).expect("mkdir /race");
    let len = (RACE_SPAN * RACE_WRITERS) as usize;
    let start_bytes = vec![b'.'; len];
    fs::write(&path, &start_bytes).expect("create the race file");
    let open = || {
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .expect("open the race file")
    };
    let mut threads = Vec::new();
    for w in 0..RACE_WRITERS {
        let (file, stop) = (open(), Arc::clone(stop));
        let mut rng = Rng::new(seed ^ (0x7ace + w));
        let base = w * RACE_SPAN;
        threads.push(std::thread::spawn(move || {
            let begin = Instant::now();
            let mut mine = vec![b'.'; RACE_SPAN as usize];
            let mut ops = 0u64;
            while !stop.load(Ordering::Relaxed) && begin.elapsed() < secs {
                ops += 1;
                let off = rng.below(RACE_SPAN);
                let n = 1 + rng.below(16.min(RACE_SPAN - off));
                let bytes = rng.bytes(n as usize);
                if let Err(e) = file.write_all_at(&bytes, base + off) {
                    stop.store(true, Ordering::Relaxed);
                    let e = format!("race writer {w}: pwrite at {}: {e}", base + off);
                    return (ops, Some(e), None);
                }
                mine[off as usize..(off + n) as usize].copy_from_slice(&bytes);
                // Paced: on an asynchronous mount these tiny writes would otherwise take the
                // daemon's threads from the model workers (a sync mount paces them itself).
                std::thread::sleep(Duration::from_micros(rng.below(300)));
                if ops % 64 == 0 {
                    let mut back = vec![0u8; RACE_SPAN as usize];
                    let r = file
                        .read_exact_at(&mut back, base)
                        .map_err(|e| e.to_string());
                    let r = r.and_then(|()| compare(RACE_FILE, base, &back, &mine));
                    if let Err(e) = r {
                        stop.store(true, Ordering::Relaxed);
                        return (ops, Some(format!("race writer {w}: {e}")), None);
                    }
                }
            }
            (ops, None, Some(mine))
        }));
    }
    let (file, stop) = (open(), Arc::clone(stop));
    let mut rng = Rng::new(seed ^ 0x512e);
    threads.push(std::thread::spawn(move || {
        let begin = Instant::now();
        let mut ops = 0u64;
        let small = (RACE_SPAN * RACE_WRITERS) as usize;
        while !stop.load(Ordering::Relaxed) && begin.elapsed() < secs {
            ops += 1;
            let grown = 2048 + rng.below(6145) as usize;
            let mut tail = vec![0xffu8; grown - small];
            // ftruncate and fallocate both zero the tail of page 0 and redirty it; fsync and
            // fdatasync then write it back while the writers redirty it: the race's steps.
            // The pauses leave the writers time between the calls that lock them out.
            let by_fallocate = ops % 2 == 0;
            let pause = |rng: &mut Rng| std::thread::sleep(Duration::from_micros(rng.below(4000)));
            let grow = if by_fallocate {
                nix::fcntl::fallocate(&file, nix::fcntl::FallocateFlags::empty(), 0, grown as i64)
                    .map_err(io::Error::from)
            } else {
                file.set_len(grown as u64)
            };
            pause(&mut rng);
            let r = grow
                .and_then(|()| file.read_exact_at(&mut tail, small as u64))
                .map_err(|e| format!("grow to {grown} and read the new part: {e}"))
                .and_then(|()| match tail.iter().position(|&b| b != 0) {
                    Some(at) => Err(format!(
                        "after growing to {grown}, byte {} reads {:#x}, not zero",
                        small + at,
                        tail[at]
                    )),
                    None => Ok(()),
                })
                .and_then(|()| {
                    let synced = if by_fallocate {
                        file.sync_data()
                    } else {
                        file.sync_all()
                    };
                    synced.map_err(|e| format!("fsync: {e}"))
                })
                .and_then(|()| {
                    pause(&mut rng);
                    file.set_len(small as u64)
                        .map_err(|e| format!("shrink to {small}: {e}"))
                });
            pause(&mut rng);
            if let Err(e) = r {
                stop.store(true, Ordering::Relaxed);
                return (ops, Some(format!("race truncater: {e}")), None);
            }
        }
        (ops, None, None)
    }));
    threads
}

/// Prints the model threads' operations every [`PROGRESS`] until they all end, so a long run
/// shows its rate over time.
fn progress<T>(handles: &[std::thread::JoinHandle<T>], done: &std::sync::atomic::AtomicU64) {
    let start = Instant::now();
    let (mut last, mut last_at) = (0, Instant::now());
    while !handles.iter().all(std::thread::JoinHandle::is_finished) {
        std::thread::sleep(Duration::from_millis(100));
        if last_at.elapsed() >= PROGRESS {
            let now = done.load(Ordering::Relaxed);
            println!(
                "soak: {:.0} s, {now} operations ({:.0} ops/s lately)",
                start.elapsed().as_secs_f64(),
                (now - last) as f64 / last_at.elapsed().as_secs_f64()
            );
            (last, last_at) = (now, Instant::now());
        }
    }
}

/// Runs the workers on `m` until `secs` pass or one fails.
fn run_workers(m: &Mounted, secs: Duration, seed: u64) -> Outcome {
    let stop = Arc::new(AtomicBool::new(false));
    let racers = start_race(m, secs, seed, &stop);
    let done = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let handles: Vec<_> = (0..THREADS)
        .map(|tid| {
            let mut w = Worker::new(tid, m.dir.clone(), seed);
            let (stop, done) = (Arc::clone(&stop), Arc::clone(&done));
            std::thread::spawn(move || {
                let start = Instant::now();
                let made = fs::create_dir(w.path(&w.root()));
                let mut failure = made.err().map(|e| format!("mkdir {}: {e}", w.root()));
                while failure.is_none() && !stop.load(Ordering::Relaxed) && start.elapsed() < secs {
                    if let Err(e) = w.step() {
                        stop.store(true, Ordering::Relaxed);
                        let history: Vec<String> = w.history.iter().cloned().collect();
                        failure = Some(format!(
                            "thread {tid}, operation {}: {e}\nlast operations of thread \
                             {tid}:\n  {}",
                            w.ops + 1,
                            history.join("\n  ")
                        ));
                    }
                    w.ops += 1;
                    done.fetch_add(1, Ordering::Relaxed);
                }
                // Closed before the unmount: an unlinked file's clusters are freed now.
                w.held.clear();
                (w.ops, failure, w.model)
            })
        })
        .collect();
    progress(&handles, &done);
    let mut out = Outcome {
        ops: 0,
        race_ops: 0,
        failures: Vec::new(),
        models: Vec::new(),
    };
    for h in handles {
        match h.join() {
            Ok((ops, failure, model)) => {
                out.ops += ops;
                out.failures.extend(failure);
                out.models.push(model);
            }
            Err(_) => out.failures.push("a worker panicked".to_owned()),
        }
    }
    let mut race = Vec::new();
    for h in racers {
        match h.join() {
            Ok((ops, failure, mine)) => {
                out.race_ops += ops;
                out.failures.extend(failure);
                race.extend(mine.unwrap_or_default());
            }
            Err(_) => out.failures.push("a race thread panicked".to_owned()),
        }
    }
    let mut model = Tree::new();
    model.insert("/race".to_owned(), Node::Dir);
    model.insert(RACE_FILE.to_owned(), Node::File(race));
    out.models.push(model);
    out
}

/// The number after `"key":` in the stats JSON.
fn stat(json: &str, key: &str) -> u64 {
    json.split(&format!("\"{key}\":"))
        .nth(1)
        .and_then(|rest| {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .unwrap_or(0)
}

/// How the soak's mount writes back.
#[derive(Clone, Copy, Debug)]
enum Mode {
    /// Asynchronous, with a small cache and a flusher that runs every 50 ms: reclaim and
    /// background writeback race the operations.
    Async,
    /// As `Async`, with `cache=kernel`: the kernel's page cache holds file data in front of
    /// ours.
    KernelCache,
    /// `sync`, with the January 2021 race's stall between clearing PG_writeback and the
    /// wake and a device latency: the window of the BUG is wide open.
    Racy,
}

impl Mode {
    fn opts(self) -> &'static str {
        match self {
            Mode::Async => "writeback_interval_ms=50,dirty_expire_ms=100",
            Mode::KernelCache => "writeback_interval_ms=50,dirty_expire_ms=100,cache=kernel",
            Mode::Racy => "sync,wake_delay_us=1000,io_latency_us=300",
        }
    }
}

/// One soak: mount `fat` under `era` with `on_bug`, run for `secs` (or the environment's),
/// then unmount, fsck and compare every reader's tree with the models.
fn soak(fat: Fat, era: &str, on_bug: &str, mode: Mode, default_secs: u64) {
    let secs = duration(default_secs);
    let seed = seed();
    println!(
        "soak {era} {mode:?} on_bug={on_bug} {}: seed {seed} (FATCACHE_SOAK_SEED={seed} to repeat), \
         {} s",
        fat.name(),
        secs.as_secs()
    );
    let opts = format!(
        "era={era},on_bug={on_bug},threads=12,io_threads=4,cache_mb=4,{}",
        mode.opts()
    );
    let m = Mounted::new_for(fat, &format!("soak-{era}-{mode:?}"), &opts, secs);
    fs::create_dir(m.path(&SHARED[1..])).expect("mkdir /shared");
    let start = Instant::now();
    let out = run_workers(&m, secs, seed);
    let elapsed = start.elapsed().as_secs_f64();
    let stats = xattr::get(&m.dir, "user.fatcache.stats")
        .ok()
        .flatten()
        .map(|v| String::from_utf8_lossy(&v).into_owned())
        .unwrap_or_default();
    println!(
        "soak {era} {mode:?} on_bug={on_bug} {}: {} operations in {elapsed:.1} s ({:.0} ops/s) \
         and {} race calls, {} failures, {} BUG hits, {} pages written back, {} reclaimed",
        fat.name(),
        out.ops,
        out.ops as f64 / elapsed,
        out.race_ops,
        out.failures.len(),
        stat(&stats, "bug_hits"),
        stat(&stats, "flusher_pages"),
        stat(&stats, "reclaimed"),
    );
    assert!(
        out.failures.is_empty(),
        "soak {era} (seed {seed}, FATCACHE_SOAK_SEED={seed} to repeat) failed:\n{}\ndaemon \
         log:\n{}",
        out.failures.join("\n\n"),
        m.log()
    );
    let mut tree = Tree::new();
    tree.insert(SHARED.to_owned(), Node::Dir);
    for model in out.models {
        tree.extend(model);
    }
    let in_shared = tree
        .keys()
        .filter(|p| p.strip_prefix("/shared/").is_some_and(|r| !r.contains('/')))
        .count();
    let bytes: usize = tree
        .values()
        .map(|n| match n {
            Node::File(d) => d.len(),
            Node::Dir => 0,
        })
        .sum();
    println!(
        "soak {era} {mode:?}: at the end {} paths, {in_shared} of them directly in /shared, \
         {bytes} bytes of files; unmounting, fsck and three readers",
        tree.len()
    );
    // An image that fails fsck or the readers is kept for a post-mortem: the scratch
    // directory goes with the test.
    let kept = m.keep();
    let checked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        drop(m.finish());
        readers_agree(&kept.image, &tree);
    }));
    if let Err(panic) = checked {
        let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("soak-failures");
        let to = dir.join(format!("{era}-{mode:?}-{}-seed{seed}.img", fat.name()));
        let saved = fs::create_dir_all(&dir).and_then(|()| fs::copy(&kept.image, &to));
        println!(
            "soak {era} {mode:?}: the image is kept at {} ({saved:?})",
            to.display()
        );
        std::panic::resume_unwind(panic);
    }
}

/// The fixed era, asynchronous: no BUG may fire (`on_bug=abort` would end the daemon and
/// fail the test). With [`soak_v6_9_racy_fat16`], 60 s of v6.9 in all.
#[test]
fn soak_v6_9_async_fat32() {
    soak(Fat::F32, "v6.9", "abort", Mode::Async, 30);
}

/// The fixed era with the race's window wide open: still no BUG.
#[test]
fn soak_v6_9_racy_fat16() {
    soak(Fat::F16, "v6.9", "abort", Mode::Racy, 30);
}

#[test]
fn soak_v5_8_racy_fat16() {
    soak(Fat::F16, "v5.8", "warn", Mode::Racy, 10);
}

/// The BUG may fire here (on_bug=warn reports it and goes on); the data must still be right.
#[test]
fn soak_v5_9_racy_fat16() {
    soak(Fat::F16, "v5.9", "warn", Mode::Racy, 10);
}

/// As v5.9.
#[test]
fn soak_v5_10_racy_fat16() {
    soak(Fat::F16, "v5.10", "warn", Mode::Racy, 10);
}

#[test]
fn soak_v5_11_racy_fat32() {
    soak(Fat::F32, "v5.11", "warn", Mode::Racy, 10);
}

#[test]
fn soak_v5_11_kernel_cache_fat16() {
    soak(Fat::F16, "v5.11", "warn", Mode::KernelCache, 10);
}

#[test]
fn soak_alt_a_racy_fat16() {
    soak(Fat::F16, "alt-a", "warn", Mode::Racy, 10);
}

#[test]
fn soak_alt_b_racy_fat16() {
    soak(Fat::F16, "alt-b", "warn", Mode::Racy, 10);
}

/// What the soak found, pinned down: a listing that takes several FUSE requests, with entries
/// before the resume point removed (and others added) between two of them, returns every
/// entry that stayed exactly once. Readdir offsets were list indices, so each removal made the
/// next request skip one entry (here, before the fix, names from 0511 on went missing).
#[test]
fn readdir_resumes_at_its_entry_when_earlier_ones_go_fat32() {
    const COUNT: usize = 1500;
    let m = Mounted::new(Fat::F32, "readdir-resume", "");
    let dir = m.path("d");
    fs::create_dir(&dir).expect("mkdir");
    let name = |i: usize| format!("entry number {i:04} with a long name.txt");
    // Far more than one request carries (a request fills at most the caller's 32 KiB
    // getdents buffer, some 450 of these names).
    for i in 0..COUNT {
        File::create(dir.join(name(i))).expect("create");
    }
    let mut listing = fs::read_dir(&dir).expect("opendir");
    // The first entry makes the first request; the first 200 names come with it.
    let first = listing
        .next()
        .expect("an entry")
        .expect("readdir")
        .file_name()
        .into_string()
        .expect("UTF-8");
    let mut seen = vec![first];
    let removed: BTreeSet<String> = (0..200).map(name).filter(|n| *n != seen[0]).collect();
    for n in &removed {
        fs::remove_file(dir.join(n)).expect("unlink");
    }
    for e in listing {
        seen.push(
            e.expect("readdir")
                .file_name()
                .into_string()
                .expect("UTF-8"),
        );
    }
    let unique: BTreeSet<String> = seen.iter().cloned().collect();
    assert_eq!(unique.len(), seen.len(), "a name listed twice");
    let missing: Vec<String> = (0..COUNT)
        .map(name)
        .filter(|n| !removed.contains(n) && !unique.contains(n))
        .collect();
    assert!(
        missing.is_empty(),
        "entries that stayed but were not listed: {missing:?}"
    );
    drop(m.finish());
}
