//! The race workload of SEMANTICS S6, through system calls only: per file, writer threads
//! doing small pwrites inside page 0 and one thread that grows, shrinks and syncs the file.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

/// Size every file of the workload starts at and shrinks back to: less than half a page, so
/// page 0 is the EOF page and an extension to `GROW_MIN` or beyond zeroes part of it.
const BASE_SIZE: u64 = 1000;

/// Smallest size the sizer thread grows a file to (SEMANTICS S6's s1).
const GROW_MIN: u64 = 2048;

/// Largest size the sizer thread grows a file to: two pages, so a growth also allocates.
const GROW_MAX: u64 = 8192;

/// Longest pause of the sizer thread between two of its calls, in microseconds.
const SIZER_PAUSE_US: u64 = 4000;

/// Longest pwrite of a writer thread.
const MAX_WRITE: u64 = 16;

/// Longest wait for the workload threads once told to stop: each is in at most one system
/// call, which a live daemon answers within the injected delays.
const STOP_WAIT: Duration = Duration::from_secs(30);

/// Counts of the workload's system calls.
#[derive(Debug, Default)]
pub(super) struct Counts {
    /// Calls that succeeded.
    pub(super) ops: u64,
    /// Calls that failed.
    pub(super) errors: u64,
    /// The first failure, as `call: error`.
    pub(super) first_error: Option<String>,
}

/// What the workload threads share.
#[derive(Debug, Default)]
struct Shared {
    stop: AtomicBool,
    ops: AtomicU64,
    errors: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl Shared {
    /// Counts one system call's result.
    fn count<T>(&self, what: &str, r: std::io::Result<T>) {
        // Relaxed: plain counters, read once the threads are joined (or for progress only).
        match r {
            Ok(_) => {
                self.ops.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut first) = self.first_error.lock() {
                    first.get_or_insert_with(|| format!("{what}: {e}"));
                }
            }
        }
    }

    /// Whether the threads should end.
    fn stopped(&self) -> bool {
        // Relaxed: a thread that sees the stop late makes one more system call, no more.
        self.stop.load(Ordering::Relaxed)
    }
}

/// The workload threads of one era.
pub(super) struct Workload {
    shared: Arc<Shared>,
    /// When the threads were started.
    pub(super) started: Instant,
    threads: usize,
    /// Each thread sends once when it ends (also by panic), so `stop` can wait with a
    /// deadline.
    done: mpsc::Receiver<()>,
}

/// Sends on drop: a thread's "I am done", however it ends.
struct DoneGuard(mpsc::Sender<()>);

impl Drop for DoneGuard {
    fn drop(&mut self) {
        let _ = self.0.send(());
    }
}

impl Workload {
    /// Creates `files` files of [`BASE_SIZE`] bytes in the new directory `dir` and starts
    /// `threads` writers per file and one sizer per file.
    pub(super) fn start(dir: &Path, files: u64, threads: u64) -> Result<Workload, String> {
        fs::create_dir(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let shared = Arc::new(Shared::default());
        let (tx, done) = mpsc::channel();
        let mut seed = seed();
        let mut count = 0;
        let mut opened = Vec::new();
        for f in 0..files {
            let path = dir.join(format!("race{f}.bin"));
            fs::write(&path, vec![b'.'; BASE_SIZE as usize])
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            let open = || {
                OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&path)
                    .map_err(|e| format!("cannot open {}: {e}", path.display()))
            };
            for t in 0..threads {
                opened.push((format!("repro-w{f}.{t}"), open()?, false));
            }
            opened.push((format!("repro-size{f}"), open()?, true));
        }
        let started = Instant::now();
        for (name, file, sizer) in opened {
            seed = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let rng = Rng::new(seed);
            let mine = Arc::clone(&shared);
            let guard = DoneGuard(tx.clone());
            let body = move || {
                let _guard = guard;
                if sizer {
                    resize_loop(&file, rng, &mine);
                } else {
                    write_loop(&file, rng, &mine);
                }
            };
            if let Err(e) = std::thread::Builder::new().name(name).spawn(body) {
                // Relaxed: see `Shared::stopped`; the threads already started end on their own.
                shared.stop.store(true, Ordering::Relaxed);
                return Err(format!("cannot start a workload thread: {e}"));
            }
            count += 1;
        }
        Ok(Workload {
            shared,
            started,
            threads: count,
            done,
        })
    }

    /// Successful system calls so far.
    pub(super) fn ops(&self) -> u64 {
        // Relaxed: a progress figure.
        self.shared.ops.load(Ordering::Relaxed)
    }

    /// Tells every thread to stop and waits for them, at most [`STOP_WAIT`].
    pub(super) fn stop(self) -> Result<Counts, String> {
        // Relaxed: see `Shared::stopped`.
        self.shared.stop.store(true, Ordering::Relaxed);
        let deadline = Instant::now() + STOP_WAIT;
        for _ in 0..self.threads {
            let left = deadline.saturating_duration_since(Instant::now());
            if self.done.recv_timeout(left).is_err() {
                return Err(format!(
                    "the workload did not stop within {STOP_WAIT:?}: a system call on the \
                     mount hangs (the mount is taken down now)"
                ));
            }
        }
        let first_error = self.shared.first_error.lock().ok().and_then(|f| f.clone());
        Ok(Counts {
            ops: self.shared.ops.load(Ordering::Relaxed),
            errors: self.shared.errors.load(Ordering::Relaxed),
            first_error,
        })
    }
}

/// A writer: 1 to [`MAX_WRITE`]-byte pwrites inside `[0, BASE_SIZE)`, always within i_size,
/// so the kernel runs them in parallel with the other writers of the file (S6 T1, T2).
fn write_loop(file: &File, mut rng: Rng, shared: &Shared) {
    let data = [b'w'; MAX_WRITE as usize];
    while !shared.stopped() {
        let offset = rng.below(BASE_SIZE);
        let len = 1 + rng.below(MAX_WRITE.min(BASE_SIZE - offset));
        let len = usize::try_from(len).unwrap_or(1);
        shared.count("pwrite", file.write_at(&data[..len], offset));
    }
}

/// The sizer of a file: growth by ftruncate and by fallocate (both reach fat_cont_expand,
/// whose zeroing redirties page 0 and whose sync writeback waits on it: S6 T3), shrinks back
/// to [`BASE_SIZE`], and fsync and fdatasync in between.
fn resize_loop(file: &File, mut rng: Rng, shared: &Shared) {
    let mut step = 0u32;
    while !shared.stopped() {
        let grown = GROW_MIN + rng.below(GROW_MAX - GROW_MIN + 1);
        match step % 6 {
            0 => shared.count("ftruncate up", file.set_len(grown)),
            1 => shared.count("fsync", file.sync_all()),
            2 => shared.count("ftruncate down", file.set_len(BASE_SIZE)),
            3 => shared.count("fallocate", fallocate(file, grown)),
            4 => shared.count("fdatasync", file.sync_data()),
            _ => shared.count("ftruncate down", file.set_len(BASE_SIZE)),
        }
        step = step.wrapping_add(1);
        // ftruncate and fsync take the kernel's inode lock exclusively, which keeps every
        // writer of the file out meanwhile: back to back they would leave the writers, whose
        // overlap the race needs, little time to run in parallel.
        std::thread::sleep(Duration::from_micros(rng.below(SIZER_PAUSE_US)));
    }
}

/// fallocate(2) with mode 0 over `[0, len)`: grows the file to `len` if it is shorter.
fn fallocate(file: &File, len: u64) -> std::io::Result<()> {
    let len = i64::try_from(len).map_err(std::io::Error::other)?;
    nix::fcntl::fallocate(file, nix::fcntl::FallocateFlags::empty(), 0, len)
        .map_err(std::io::Error::from)
}

/// A seed that differs between runs, so repeated runs sample different interleavings.
fn seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    (nanos as u64) ^ (u64::from(std::process::id()) << 32)
}

/// xorshift64*: offsets and sizes need no better.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    /// A number in `0..n` (`n` > 0).
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}
