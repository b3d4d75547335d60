//! The minimal interleavings of SEMANTICS section 5, driven with real threads.
//!
//! Each scenario builds a page cache of one era over an in-memory device with completion
//! threads, and steers the threads through the race with the cache's hook points: the I/O queue
//! is plugged to keep a writeback in flight, the completion thread is held in the window between
//! clearing PG_writeback and the wake, and the waiter is known to be asleep before the held wake
//! is let go. Nothing is simulated: the writeback is a real bio completed on a completion thread,
//! the waiter is a real `write_cache_pages`, the BUG is the real `bug_on!`.
//!
//! * **S1** (Linus, January 2021): one page, a new writeback started in the window; the stale
//!   wake releases a WB_SYNC_ALL waiter whose writeback is still running. BUG in v5.9, v5.10.
//! * **S2** (Hugh, November 2020): the frame is truncated, freed and reused by another file in
//!   the window; the stale wake reaches the new owner's waiter. BUG in v5.9 only (v5.10 pins the
//!   frame; v5.8 refuses wakes while the bit is set).
//!
//! The cache runs with `on_bug=warn`, so a BUG is counted, reported, and the waiter recovers by
//! waiting for the writeback it skipped; the scenario then finishes cleanly in every era.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::bug::OnBug;
use crate::dev::{IoQueue, MemDevice};
use crate::error::FsError;
use crate::fs::bdev::BdevAops;
use crate::mm::filemap::{
    AddressSpace, filemap_fdatawrite_range, filemap_flush, find_or_create_page,
};
use crate::mm::truncate::truncate_pagecache;
use crate::mm::waitqueue::unlock_page;
use crate::mm::writeback::set_page_dirty;
use crate::mm::{CacheConfig, Era, HookPoint, PAGE_SIZE, PageCache, Pfn};
use crate::sync::Arc;
use crate::sync::unchecked::{Condvar, Mutex};

/// Which interleaving.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// Same page, new writeback epoch (the syzbot BUG).
    S1,
    /// Frame freed and reused by another mapping in the window.
    S2,
}

impl Scenario {
    /// Kernel history: does `era` reach the write_cache_pages BUG in this scenario?
    pub fn bug_expected(self, era: Era) -> bool {
        match self {
            Scenario::S1 => era.has_s1_bug(),
            Scenario::S2 => era.has_s2_bug(),
        }
    }

    /// Short name.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::S1 => "S1",
            Scenario::S2 => "S2",
        }
    }
}

/// What one run of a scenario observed.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// The era.
    pub era: Era,
    /// The scenario.
    pub scenario: Scenario,
    /// BUG_ON(PageWriteback) hits in write_cache_pages.
    pub wcp_bugs: u64,
    /// Every BUG / VM_BUG hit (S2 also trips the reused-frame check where the frame is reused).
    pub all_bugs: u64,
    /// Writeback waits ended by a wake from an older writeback.
    pub stale_wakes: u64,
    /// S2: the frame really went to the other mapping inside the window.
    pub frame_reused: bool,
    /// The last full report (the write_cache_pages BUG when there was one).
    pub report: Option<String>,
}

impl Outcome {
    /// Does the observation agree with kernel history?
    pub fn matches_history(&self) -> bool {
        (self.wcp_bugs > 0) == self.scenario.bug_expected(self.era)
    }
}

/// Hold threads at hook points and count arrivals, for steering a scenario.
#[derive(Default)]
struct Pauser {
    state: Mutex<PauseState>,
    cv: Condvar,
}

#[derive(Default)]
struct PauseState {
    arrived: HashMap<&'static str, u64>,
    armed: HashMap<&'static str, u64>,
    released: HashMap<&'static str, u64>,
}

const TIMEOUT: Duration = Duration::from_secs(10);

fn point_name(p: HookPoint) -> &'static str {
    match p {
        HookPoint::EndWritebackWindow => "end-writeback-window",
        HookPoint::WaitSleep => "wait-sleep",
        HookPoint::WcpAfterTag => "wcp-after-tag",
        HookPoint::WcpBeforeLock => "wcp-before-lock",
        HookPoint::TruncateAfterWait => "truncate-after-wait",
    }
}

impl Pauser {
    fn hit(&self, point: HookPoint) {
        let name = point_name(point);
        let mut st = self.state.lock();
        *st.arrived.entry(name).or_insert(0) += 1;
        self.cv.notify_all();
        let armed = st.armed.get(name).copied().unwrap_or(0);
        if armed == 0 {
            return;
        }
        st.armed.insert(name, armed - 1);
        let ticket = st.released.get(name).copied().unwrap_or(0);
        let deadline = Instant::now() + TIMEOUT;
        // Bounded: a scenario that goes wrong must not hang the thread it holds.
        while st.released.get(name).copied().unwrap_or(0) == ticket {
            if self.cv.wait_until(&mut st, deadline).timed_out() {
                log::error!("scenario: {name} held for too long, letting go");
                break;
            }
        }
    }

    fn arm(&self, point: HookPoint) {
        *self
            .state
            .lock()
            .armed
            .entry(point_name(point))
            .or_insert(0) += 1;
    }

    fn release(&self, point: HookPoint) {
        *self
            .state
            .lock()
            .released
            .entry(point_name(point))
            .or_insert(0) += 1;
        self.cv.notify_all();
    }

    fn arrivals(&self, point: HookPoint) -> u64 {
        self.state
            .lock()
            .arrived
            .get(point_name(point))
            .copied()
            .unwrap_or(0)
    }

    fn wait_arrivals(&self, point: HookPoint, n: u64) -> Result<(), FsError> {
        let name = point_name(point);
        let deadline = Instant::now() + TIMEOUT;
        let mut st = self.state.lock();
        while st.arrived.get(name).copied().unwrap_or(0) < n {
            if self.cv.wait_until(&mut st, deadline).timed_out() {
                log::error!("scenario: gave up waiting for {name} #{n}");
                return Err(FsError::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "scenario step timed out",
                )));
            }
        }
        Ok(())
    }
}

struct Env {
    cache: Arc<PageCache>,
    queue: Arc<IoQueue>,
    pauser: Arc<Pauser>,
    target: Arc<Mutex<Option<Pfn>>>,
}

impl Env {
    fn new(era: Era, frames: usize) -> Result<Env, FsError> {
        let pauser = Arc::new(Pauser::default());
        let target: Arc<Mutex<Option<Pfn>>> = Arc::new(Mutex::new(None));
        let (p, t) = (Arc::clone(&pauser), Arc::clone(&target));
        let mut cfg = CacheConfig::new(era, frames);
        cfg.on_bug = OnBug::Warn;
        cfg.hook = Some(Arc::new(move |point, pfn| {
            if *t.lock() == Some(pfn) {
                p.hit(point);
            }
        }));
        let cache = PageCache::new(cfg)?;
        let dev = Arc::new(MemDevice::new(16 * PAGE_SIZE));
        let queue = Arc::new(IoQueue::new(dev, 2, Duration::ZERO)?);
        Ok(Env {
            cache,
            queue,
            pauser,
            target,
        })
    }

    /// A file mapping laid on eight pages of the device from page `base` on.
    fn mapping(&self, base: u64) -> AddressSpace {
        let range = 8 * PAGE_SIZE as u64;
        let aops = BdevAops::linear(Arc::clone(&self.queue), base * PAGE_SIZE as u64, range);
        AddressSpace::new(&self.cache, Arc::new(aops))
    }

    /// A write() into page `index`: lock (no writeback wait: FAT has no stable pages), copy,
    /// dirty, unlock.
    fn write(&self, m: &AddressSpace, index: u64, byte: u8) -> Result<Pfn, FsError> {
        let p = find_or_create_page(m, index)?;
        p.with_data_mut(|d| d.fill(byte));
        p.set_uptodate();
        set_page_dirty(m, p.page());
        unlock_page(p.page());
        Ok(p.pfn())
    }

    fn outcome(&self, era: Era, scenario: Scenario, frame_reused: bool) -> Outcome {
        let bug = self.cache.bug();
        Outcome {
            era,
            scenario,
            wcp_bugs: bug.hits_matching("mm/writeback.rs", "p.writeback()"),
            all_bugs: bug.total(),
            stale_wakes: self.cache.stats().stale_wakes,
            frame_reused,
            report: bug.last_report(),
        }
    }

    /// SEMANTICS 6 item 13 while a waiter sleeps: its frame must show PG_waiters.
    fn check_invariant(&self) -> Result<(), FsError> {
        let bad = self.cache.wait_invariant_violations();
        if bad.is_empty() {
            Ok(())
        } else {
            log::error!("scenario: queued waiters on frames without PG_waiters: {bad:?}");
            Err(FsError::Corrupted("wait-table invariant broken"))
        }
    }

    /// CPU3: a WB_SYNC_ALL writer of `m` on its own thread. Once it sleeps on the page, let
    /// the held completion go, settle, finish the second writeback, and drain the device.
    fn cpu3_integrity_writeback(&self, m: &AddressSpace) -> Result<(), FsError> {
        let woken_before = self.cache.stats().wakes_writeback;
        std::thread::scope(|s| -> Result<(), FsError> {
            let cpu3 = std::thread::Builder::new()
                .name("cpu3-fdatawrite".into())
                .spawn_scoped(s, || filemap_fdatawrite_range(m, 0, u64::MAX))
                .map_err(FsError::Io)?;
            self.pauser.wait_arrivals(HookPoint::WaitSleep, 1)?; // asleep on the new writeback
            self.check_invariant()?;
            self.release_window_then_finish(woken_before)?;
            cpu3.join()
                .map_err(|_| FsError::Io(std::io::Error::other("cpu3 panicked")))??;
            Ok(())
        })?;
        self.queue.drain();
        Ok(())
    }

    /// The waiter (CPU3) is asleep on the page and the held completion (CPU1) is let go; wait
    /// until whatever its wake did has settled, then let the second writeback finish.
    fn release_window_then_finish(&self, woken_before: u64) -> Result<(), FsError> {
        let sleeps = self.pauser.arrivals(HookPoint::WaitSleep);
        self.pauser.release(HookPoint::EndWritebackWindow);
        let deadline = Instant::now() + TIMEOUT;
        // W1's completion is done when its bio is counted complete.
        while self.queue.completed() < 1 {
            if Instant::now() > deadline {
                return Err(FsError::Io(std::io::Error::other(
                    "completion never finished",
                )));
            }
            std::thread::sleep(Duration::from_micros(100));
        }
        if self.cache.stats().wakes_writeback > woken_before {
            // The waiter was woken: let it act on the wake (BUG + recovery wait, or `while`)
            // before W2 can end, or the window would close under it.
            self.pauser
                .wait_arrivals(HookPoint::WaitSleep, sleeps + 1)?;
        }
        self.queue.unplug();
        Ok(())
    }
}

/// Run one scenario in one era.
pub fn run(scenario: Scenario, era: Era) -> Result<Outcome, FsError> {
    match scenario {
        Scenario::S1 => run_s1(era),
        Scenario::S2 => run_s2(era),
    }
}

/// S1: CPU1 = completion of W1 (held in the window), CPU2 = this thread (starts W2 and keeps it
/// in flight), CPU3 = a WB_SYNC_ALL writer that finds the page dirty and under writeback.
fn run_s1(era: Era) -> Result<Outcome, FsError> {
    let env = Env::new(era, 4)?;
    let m = env.mapping(0);
    let pfn = env.write(&m, 0, b'A')?;
    *env.target.lock() = Some(pfn);
    env.queue.plug();
    filemap_flush(&m)?; // W1 in flight
    env.write(&m, 0, b'B')?; // redirtied under W1
    env.pauser.arm(HookPoint::EndWritebackWindow);
    env.queue.unplug();
    env.pauser.wait_arrivals(HookPoint::EndWritebackWindow, 1)?; // CPU1: W=0, stalled
    env.queue.plug();
    filemap_flush(&m)?; // CPU2: lock, clean, W2 starts, unlock
    env.write(&m, 0, b'C')?; // redirtied under W2
    env.cpu3_integrity_writeback(&m)?;
    Ok(env.outcome(era, Scenario::S1, false))
}

/// S2: CPU1 = completion of A's writeback (held in the window), CPU2 = truncate of A,
/// CPU4 = B takes the frame and starts its own writeback, CPU3 = WB_SYNC_ALL writer of B.
fn run_s2(era: Era) -> Result<Outcome, FsError> {
    // One frame: B can only get the very frame A had.
    let env = Env::new(era, 1)?;
    let a = env.mapping(0);
    let b = env.mapping(8);
    let pfn = env.write(&a, 0, b'A')?;
    *env.target.lock() = Some(pfn);
    env.queue.plug();
    filemap_flush(&a)?; // WA in flight
    env.pauser.arm(HookPoint::EndWritebackWindow);
    env.queue.unplug();
    env.pauser.wait_arrivals(HookPoint::EndWritebackWindow, 1)?; // CPU1: W=0, stalled
    env.queue.plug();
    truncate_pagecache(&a, 0); // CPU2: W clear, so the page goes at once
    let reused = match env.write(&b, 0, b'B') {
        Ok(p) => p == pfn,
        Err(FsError::NoMemory) => false, // pinned by end_page_writeback (073861ed77b6)
        Err(e) => return Err(e),
    };
    if !reused {
        env.pauser.release(HookPoint::EndWritebackWindow);
        env.queue.unplug();
        env.queue.drain();
        return Ok(env.outcome(era, Scenario::S2, false));
    }
    filemap_flush(&b)?; // CPU4: WB starts on the reused frame
    env.write(&b, 0, b'C')?; // redirtied under WB
    env.cpu3_integrity_writeback(&b)?;
    Ok(env.outcome(era, Scenario::S2, true))
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::mm::ALL_ERAS;

    #[test]
    fn s1_bug_exactly_in_the_eras_that_had_it() {
        for era in ALL_ERAS {
            let o = run(Scenario::S1, era).expect("scenario runs");
            assert_eq!(o.wcp_bugs > 0, era.has_s1_bug(), "{era}: {o:?}");
            if o.wcp_bugs > 0 {
                assert_eq!(o.wcp_bugs, 1, "{era}");
                let r = o.report.as_deref().expect("a report");
                assert!(r.contains("BUG at src/mm/writeback.rs:"), "{r}");
                assert!(
                    r.contains("STALE WAKE"),
                    "the history shows the stale wake:\n{r}"
                );
                assert!(r.contains("set_page_writeback"), "{r}");
                // The roles of S1 are named from the history, each with its thread.
                let why = r
                    .split("interleaving (SEMANTICS S1)")
                    .nth(1)
                    .unwrap_or_else(|| panic!("{era}: no interleaving section:\n{r}"));
                for role in ["CPU1", "CPU2", "CPU3", "starts writeback", "a stale wake"] {
                    assert!(why.contains(role), "{era}: {role} missing:\n{r}");
                }
            }
        }
    }

    #[test]
    fn s1_stale_wake_is_absorbed_by_while() {
        let o = run(Scenario::S1, Era::V5_11).expect("scenario runs");
        assert_eq!((o.wcp_bugs, o.stale_wakes), (0, 1), "{o:?}");
        for era in [Era::V5_8, Era::V6_9, Era::AltA, Era::AltB] {
            let o = run(Scenario::S1, era).expect("scenario runs");
            assert_eq!(o.stale_wakes, 0, "{era}: no stale wake is delivered at all");
        }
    }

    #[test]
    fn s2_bug_only_without_pin_and_with_woken_means_done() {
        for era in ALL_ERAS {
            let o = run(Scenario::S2, era).expect("scenario runs");
            assert_eq!(o.wcp_bugs > 0, era.has_s2_bug(), "{era}: {o:?}");
            let unpinned = matches!(era, Era::V5_8 | Era::V5_9);
            assert_eq!(
                o.frame_reused, unpinned,
                "{era}: frame reuse needs an unpinned frame"
            );
            if unpinned && crate::bug::debug_vm() {
                // Hugh's VM_BUG_ON(PageTail) analogue: the wake looked at a reused frame.
                assert!(o.all_bugs > o.wcp_bugs, "{era}: {o:?}");
            }
        }
    }
}
