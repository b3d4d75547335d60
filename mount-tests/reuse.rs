//! Hugh's frame-reuse variant of the race (SEMANTICS S2) through a mount, with real syscalls
//! only: a file's page is written back, its writeback ends on a completion thread that
//! stalls (`wake_delay_us`) between clearing PG_writeback and the wake, the file is truncated
//! in that window so the page leaves the cache, and another file's write takes the freed
//! frame at once (a 1 MiB cache and a LIFO free list). Under v5.9 end_page_writeback holds no
//! reference, so the stalled completion looks at a frame that now belongs to someone else:
//! the VM_BUG_ON_PAGE at the frame-generation check fires (Hugh's VM_BUG_ON(PageTail)).
//! Under v5.10 the completion pins the frame and the same workload never reuses it early.
//!
//! The writeback is started by close() on a `flush` mount (fat_file_release starts writeback
//! without waiting), so nobody waits for it and the kernel's inode lock does not keep the
//! truncate out of the window. Many completion threads keep the stalls from queueing behind
//! each other, which would close the window.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::harness::{Fat, Mounted, Rng, field, stats};

/// Mount options of the scenario (the era is appended).
const OPTS: &str =
    "flush,on_bug=warn,cache_mb=1,wake_delay_us=5000,io_latency_us=200,io_threads=16";

/// Writer threads, one file each.
const WRITERS: usize = 4;

/// Longest a racy era may take to show the reuse.
const MAX_RACY: Duration = Duration::from_secs(20);

/// How long a fixed era runs the same workload.
const FIXED: Duration = Duration::from_secs(5);

/// The frame-generation check in end_page_writeback, as the stats name its site.
const REUSE_SITE: &str = "page.generation() != generation";

/// Hits at the reuse site so far, from the `bugs` object of the stats.
fn reuse_hits(json: &str) -> u64 {
    let Some((_, bugs)) = json.split_once("\"bugs\":{") else {
        return 0;
    };
    bugs.trim_end_matches('}')
        .split("\",\"")
        .chain(std::iter::once(""))
        .flat_map(|s| s.split(','))
        .filter(|entry| entry.contains(REUSE_SITE))
        .filter_map(|entry| entry.rsplit(':').next()?.trim().parse::<u64>().ok())
        .sum()
}

/// Runs the workload for at most `limit`, or until the reuse site fired when `until_hit`;
/// returns (operations, reuse hits, the final stats).
fn workload(m: &Mounted, limit: Duration, until_hit: bool) -> (u64, u64, String) {
    let stop = AtomicBool::new(false);
    let ops = AtomicU64::new(0);
    let start = Instant::now();
    let hits = std::thread::scope(|s| {
        for w in 0..WRITERS {
            let (stop, ops) = (&stop, &ops);
            let path = m.path(&format!("reuse{w}.bin"));
            s.spawn(move || {
                let mut rng = Rng::new(0x5eed + w as u64);
                let page = vec![w as u8 + 1; 4096];
                while !stop.load(Ordering::Relaxed) {
                    let f = OpenOptions::new()
                        .write(true)
                        .create(true)
                        .truncate(false)
                        .open(&path)
                        .expect("open");
                    // Errors are the era's business (a v5.9 mount leaks frames it freed in
                    // a bad state and may run out); the test judges by the BUG counters.
                    let _ = f.write_at(&page, 0);
                    // close() on a `flush` mount starts writeback and does not wait.
                    drop(f);
                    std::thread::sleep(Duration::from_micros(rng.below(1000)));
                    if let Ok(f) = OpenOptions::new().write(true).open(&path) {
                        let _ = f.set_len(0);
                    }
                    ops.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        let mut hits = 0;
        while start.elapsed() < limit {
            std::thread::sleep(Duration::from_millis(50));
            hits = reuse_hits(&stats(m));
            if until_hit && hits > 0 {
                break;
            }
        }
        stop.store(true, Ordering::Relaxed);
        hits
    });
    let json = stats(m);
    (
        ops.load(Ordering::Relaxed),
        hits.max(reuse_hits(&json)),
        json,
    )
}

#[test]
fn frame_reuse_fires_under_v5_9_and_never_under_v5_10() {
    assert!(
        fatcache::bug::debug_vm(),
        "the reuse check is a VM_BUG_ON: run the mount tests in a debug build \
         (or with --features debug_vm)"
    );
    // v5.9: the frame is handed to another file while its old writeback is still ending.
    let m = Mounted::new(Fat::F16, "reuse-v5.9", &format!("{OPTS},era=v5.9"));
    let start = Instant::now();
    let (ops, hits, json) = workload(&m, MAX_RACY, true);
    println!(
        "v5.9: reuse seen after {:?}, {ops} ops, {hits} hits, {} stale wakes",
        start.elapsed(),
        field(&json, "stale_wakes")
    );
    assert!(
        hits > 0,
        "no frame reuse under v5.9 in {MAX_RACY:?} ({ops} ops); stats {json}\nlog:\n{}",
        m.log()
    );
    // The hit is counted before its report is formatted (a symbolized backtrace, slow in a
    // debug build) and written: wait for the report rather than race it.
    let site = "BUG (VM_BUG_ON_PAGE) at src/mm/filemap.rs";
    let asked = Instant::now();
    while !m.log().contains(site) && asked.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        m.log().contains(site),
        "the report names the site; log:\n{}",
        m.log()
    );
    // The era's bug may have leaked frames (freed under writeback), so its unmount is only
    // required to end, not to be clean.
    let _ = m.unmount();

    // v5.10: end_page_writeback holds a reference over the window; the frame cannot go.
    let m = Mounted::new(Fat::F16, "reuse-v5.10", &format!("{OPTS},era=v5.10"));
    let (ops, hits, json) = workload(&m, FIXED, false);
    println!("v5.10: {ops} ops in {FIXED:?}, {hits} hits");
    assert!(ops > 100, "the workload ran ({ops} ops)");
    assert_eq!(hits, 0, "frame reuse under v5.10: stats {json}");
    assert_eq!(
        field(&json, "bug_hits"),
        0,
        "no BUG at all under v5.10: {json}"
    );
    assert_eq!(field(&json, "bad_pages"), 0, "{json}");
    m.finish();
}
