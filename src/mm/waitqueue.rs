//! Hashed page wait queues: sleeping on a page bit, waking its waiters, the page lock.
//!
//! Models: mm/filemap.c page_wait_table .. __lock_page (wake_page_function, wake_up_page_bit,
//! wait_on_page_bit_common, lock_page, unlock_page) and kernel/sched/wait.c __wake_up_common,
//! in the era's shape: v5.8 (E0, the looping wait), v5.9+ (E1, WQ_FLAG_WOKEN and lock hand-off
//! after the unfairness budget), with bookmarks up to v6.1 and the ALT-B wake function.
//!
//! 256 buckets hashed by frame number: unrelated frames share buckets, exactly as in the kernel,
//! and a wake is keyed by (frame, bit), never by (file, index).
//!
//! Sleeping is on a per-waiter `Sleeper` (park/unpark in production) beside a WOKEN flag. The
//! waker stores the flag with Release and then wakes the sleeper; the waiter loads it with
//! Acquire around its sleep (pairs with that store), so a waiter that sees WOKEN also sees
//! everything the waker did before waking it, such as DONE (lock handed over). Wake tokens make a
//! wake that lands between "queued" and "sleep" return at once, the role `set_current_state()`
//! plays in the kernel.
//!
//! # Context
//! Waiters may sleep; they hold no spinlock-like lock when they do. A bucket lock is held only
//! across list edits, flag RMWs and unparks.

use std::collections::VecDeque;

use crate::mm::era::{WaiterKind, WakeKind};
use crate::mm::flags::epoch_of;
use crate::mm::history::Op;
use crate::mm::page::{Page, PageRef, Pfn};
use crate::mm::{HookPoint, PG};
use crate::sync::unchecked;
use crate::sync::{Arc, AtomicU32, Mutex, MutexGuard, Ordering, Sleeper, thread_tag};
use crate::vm_bug_on_page;

/// Buckets in the wait table (PAGE_WAIT_TABLE_BITS = 8).
pub const WAIT_TABLE_SIZE: usize = 256;
/// Entries a waker visits before it leaves a bookmark and drops the lock (up to v6.1).
pub const WALK_BREAK_CNT: usize = 64;

/// Wait-entry flag: exclusive waiter (lock_page).
pub const WQ_FLAG_EXCLUSIVE: u32 = 0x01;
/// Wait-entry flag: the waker has woken this entry.
pub const WQ_FLAG_WOKEN: u32 = 0x02;
/// Wait-entry flag: a walk bookmark, not a waiter.
pub const WQ_FLAG_BOOKMARK: u32 = 0x04;
/// Wait-entry flag: the waiter wants the lock handed to it (budget used up).
pub const WQ_FLAG_CUSTOM: u32 = 0x08;
/// Wait-entry flag: the wait is over (lock taken or handed over).
pub const WQ_FLAG_DONE: u32 = 0x10;
/// Model-only: the entry is linked on its bucket list (list_empty_careful's answer).
const WQ_LINKED: u32 = 0x100;

/// How a waiter waits (enum behavior in filemap.c).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behavior {
    /// Wait, then own the bit (lock_page).
    Exclusive,
    /// Wait for the bit to clear (wait_on_page_writeback, wait_on_page_locked).
    Shared,
    /// Drop the page reference before sleeping; never touch the page after
    /// (put_and_wait_on_page_locked).
    Drop,
}

/// One sleeping (or about to sleep) task, or a walk bookmark.
#[derive(Debug)]
pub(crate) struct WaitEntry {
    sleeper: Sleeper,
    pfn: Pfn,
    bit: u8,
    /// WQ_FLAG_* plus WQ_LINKED. Written by the waiter before it links the entry and after it
    /// was unlinked; by the waker only while the entry is linked and the bucket lock is held.
    flags: AtomicU32,
    /// Model-only oracle: who woke us and the writeback epoch the waker ended.
    waker_tag: unchecked::AtomicU32,
    waker_epoch: unchecked::AtomicU32,
}

impl WaitEntry {
    fn new(pfn: Pfn, bit: u8, flags: u32) -> Arc<WaitEntry> {
        Arc::new(WaitEntry {
            sleeper: Sleeper::new(),
            pfn,
            bit,
            flags: AtomicU32::new(flags),
            waker_tag: unchecked::AtomicU32::new(0),
            waker_epoch: unchecked::AtomicU32::new(0),
        })
    }
}

type Bucket = VecDeque<Arc<WaitEntry>>;

/// The page wait table.
#[derive(Debug)]
pub(crate) struct WaitTable {
    buckets: Box<[Mutex<Bucket>]>,
}

impl WaitTable {
    pub(crate) fn new() -> Self {
        WaitTable {
            buckets: (0..WAIT_TABLE_SIZE)
                .map(|_| Mutex::new(VecDeque::new()))
                .collect(),
        }
    }

    /// The bucket of a frame: the kernel's hash_ptr multiplier over the frame number.
    pub(crate) fn bucket_of(pfn: Pfn) -> usize {
        (u64::from(pfn.0).wrapping_mul(0x61C8_8646_80B5_83EB) >> 56) as usize
    }

    fn bucket(&self, pfn: Pfn) -> &Mutex<Bucket> {
        &self.buckets[Self::bucket_of(pfn)]
    }

    /// Entries queued in the bucket of `pfn` for (pfn, bit) (tests and invariant checks).
    pub(crate) fn queued(&self, pfn: Pfn, bit: u8) -> usize {
        self.bucket(pfn)
            .lock()
            .iter()
            .filter(|e| {
                e.pfn == pfn
                    && e.bit == bit
                    && e.flags.load(Ordering::Relaxed) & WQ_FLAG_BOOKMARK == 0
            })
            .count()
    }
}

impl crate::mm::PageCache {
    /// The wait-table invariant (SEMANTICS 6, item 13): a queued entry for a frame implies the
    /// frame's PG_waiters is set (PG_waiters may be set with no entry; never the reverse).
    /// Returns the frames that break it.
    pub fn wait_invariant_violations(&self) -> Vec<Pfn> {
        let waiters = self.mask(PG::Waiters);
        let mut bad = Vec::new();
        for bucket in self.waitq.buckets.iter() {
            let q = bucket.lock();
            for e in q.iter() {
                let f = e.flags.load(Ordering::Relaxed);
                let frame_flags = self.page(e.pfn).flags();
                if f & WQ_FLAG_BOOKMARK == 0 && frame_flags & waiters == 0 && !bad.contains(&e.pfn)
                {
                    bad.push(e.pfn);
                }
            }
        }
        bad
    }
}

/// What a wake is for (struct wait_page_key).
struct WakeKey {
    pfn: Pfn,
    bit: u8,
    mask: u64,
    page_match: bool,
    /// Model-only: the writeback epoch that ended (0 for lock wakes).
    epoch: u32,
    woken: u32,
}

enum WakeRet {
    /// Not ours, or not woken: go on.
    Skip,
    /// Stop the whole walk (bit held again).
    Stop,
    /// Woken and unlinked.
    Woke,
}

/// wake_page_function for this era. Called with the bucket lock held on a linked entry.
fn wake_page_function(page: Page<'_>, e: &WaitEntry, key: &mut WakeKey) -> WakeRet {
    if e.pfn != key.pfn {
        return WakeRet::Skip;
    }
    key.page_match = true;
    if e.bit != key.bit {
        return WakeRet::Skip;
    }
    let frame_flags = &page.frame().flags;
    // Relaxed: the entry's flags change only under this bucket lock while it is linked.
    let mut f = e.flags.load(Ordering::Relaxed);
    match page.cache.switches().wake {
        WakeKind::RefuseIfSet => {
            // E0: the bit was taken again: wake nobody; the next clear will wake them.
            if frame_flags.test(key.mask) {
                return WakeRet::Stop;
            }
        }
        WakeKind::SharedBlind | WakeKind::RefuseAllIfSet => {
            let refuse_all = page.cache.switches().wake == WakeKind::RefuseAllIfSet;
            if f & WQ_FLAG_EXCLUSIVE != 0 || refuse_all {
                if frame_flags.test(key.mask) {
                    return WakeRet::Stop;
                }
                if f & WQ_FLAG_EXCLUSIVE != 0 && f & WQ_FLAG_CUSTOM != 0 {
                    // Hand-off: take the lock on the waiter's behalf.
                    if frame_flags.test_and_set(key.mask) {
                        return WakeRet::Stop;
                    }
                    f |= WQ_FLAG_DONE;
                }
            }
            // E1 shared waiters: no look at the bit at all. This is the whole 2021 race.
        }
    }
    e.waker_tag
        .store(thread_tag(), unchecked::Ordering::Relaxed);
    e.waker_epoch.store(key.epoch, unchecked::Ordering::Relaxed);
    // Release: pairs with the Acquire load in the waiter's sleep loop; the waiter that sees
    // WOKEN sees DONE, the oracle fields above, and the unlink that clears WQ_LINKED with it.
    e.flags
        .store((f | WQ_FLAG_WOKEN) & !WQ_LINKED, Ordering::Release);
    e.sleeper.wake();
    key.woken += 1;
    WakeRet::Woke
}

/// __wake_up_common over one bucket from `start`; returns where to leave a bookmark, if the
/// walk broke off (only when `bookmarks`).
fn walk(
    page: Page<'_>,
    q: &mut Bucket,
    key: &mut WakeKey,
    start: usize,
    bookmarks: bool,
) -> Option<usize> {
    let mut i = start;
    let mut cnt = 0usize;
    let mut nr_exclusive = 1u32;
    while i < q.len() {
        let e = Arc::clone(&q[i]);
        let sampled = e.flags.load(Ordering::Relaxed);
        if sampled & WQ_FLAG_BOOKMARK != 0 {
            i += 1;
            continue;
        }
        match wake_page_function(page, &e, key) {
            WakeRet::Stop => return None,
            WakeRet::Skip => i += 1,
            WakeRet::Woke => {
                q.remove(i);
                if sampled & WQ_FLAG_EXCLUSIVE != 0 {
                    nr_exclusive -= 1;
                    if nr_exclusive == 0 {
                        return None;
                    }
                }
            }
        }
        cnt += 1;
        if bookmarks && cnt > WALK_BREAK_CNT && i < q.len() {
            return Some(i);
        }
    }
    None
}

/// wake_up_page_bit: wake the waiters of (page, bit), then clear PG_waiters if none of this
/// frame's remain. `under_lock` runs first inside the bucket lock (ALT-A's clear).
pub(crate) fn wake_up_page_bit_with(
    page: Page<'_>,
    bit: PG,
    epoch: u32,
    under_lock: impl FnOnce(),
) {
    let cache = page.cache;
    let mask = cache.mask(bit);
    let waiters = cache.mask(PG::Waiters);
    let mut key = WakeKey {
        pfn: page.pfn,
        bit: cache.layout().bit(bit),
        mask,
        page_match: false,
        epoch,
        woken: 0,
    };
    let bucket = cache.waitq.bucket(page.pfn);
    let mut q = bucket.lock();
    under_lock();
    let bookmarks = cache.switches().bookmarks;
    let mut start = 0;
    while let Some(pos) = walk(page, &mut q, &mut key, start, bookmarks) {
        // Leave a bookmark, let other CPUs at the queue, come back to it.
        let bm = WaitEntry::new(page.pfn, key.bit, WQ_FLAG_BOOKMARK | WQ_LINKED);
        q.insert(pos, Arc::clone(&bm));
        drop(q);
        crate::sync::spin_loop();
        q = bucket.lock();
        start = q
            .iter()
            .position(|e| Arc::ptr_eq(e, &bm))
            .unwrap_or(q.len());
        if start < q.len() {
            q.remove(start);
        }
    }
    let before = page.flags_for_record();
    // PG_waiters is cleared only by a waker, under the bucket lock, when no entry of this frame
    // was visited (or none is left at all). A waiter that queues later sets it again under the
    // same lock, so it cannot be lost (SEMANTICS 1.8).
    let after = if q.is_empty() || !key.page_match {
        page.frame().flags.clear(waiters) & !waiters
    } else {
        before
    };
    drop(q);
    cache.stats.wakes(bit).add(u64::from(key.woken));
    page.record(Op::Wake, key.bit, before, after, key.woken);
}

/// wake_up_page_bit with nothing done under the lock first.
pub(crate) fn wake_up_page_bit(page: Page<'_>, bit: PG, epoch: u32) {
    wake_up_page_bit_with(page, bit, epoch, || {});
}

/// wake_up_page: only if PG_waiters says somebody may be sleeping.
pub(crate) fn wake_up_page(page: Page<'_>, bit: PG, epoch: u32) {
    if page.test(PG::Waiters) {
        wake_up_page_bit(page, bit, epoch);
    }
}

/// Outcome of one wait, for the caller's bookkeeping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WaitOutcome {
    /// The task went to sleep (was queued) at least once.
    pub slept: bool,
    /// A wake from an older writeback epoch ended the wait (model-only oracle).
    pub stale: bool,
}

/// wait_on_page_bit_common: wait for `bit` of `page` per `behavior`, in the era's shape.
///
/// Models: mm/filemap.c wait_on_page_bit_common() (v5.8 for E0, v5.10 for E1+).
///
/// # Context
/// May sleep. For `Drop` the caller's reference is consumed (put before sleeping).
pub fn wait_on_page_bit_common(
    page: Page<'_>,
    bit: PG,
    behavior: Behavior,
    drop_ref: Option<PageRef<'_>>,
) -> WaitOutcome {
    let cache = page.cache;
    if bit == PG::Writeback || bit == PG::Locked {
        cache.stats.waits(bit).inc();
    }
    match cache.switches().waiter {
        WaiterKind::Looping => wait_looping(page, bit, behavior, drop_ref),
        WaiterKind::WokenMeansDone => wait_woken(page, bit, behavior, drop_ref),
    }
}

/// E1+ waiter: queue once, sleep until WOKEN; exclusive waiters that were not handed the lock
/// try it and queue again (with a fresh entry state) if they lose.
fn wait_woken(
    page: Page<'_>,
    bit: PG,
    behavior: Behavior,
    mut drop_ref: Option<PageRef<'_>>,
) -> WaitOutcome {
    let cache = page.cache;
    let mask = cache.mask(bit);
    let bitno = cache.layout().bit(bit);
    let bucket = cache.waitq.bucket(page.pfn);
    let entry = WaitEntry::new(page.pfn, bitno, 0);
    let mut budget = cache.switches().unfairness.map(i64::from);
    let mut out = WaitOutcome {
        slept: false,
        stale: false,
    };
    'again: loop {
        let mut f = 0;
        if behavior == Behavior::Exclusive {
            f = WQ_FLAG_EXCLUSIVE;
            if let Some(b) = budget.as_mut() {
                *b -= 1;
                if *b < 0 {
                    f |= WQ_FLAG_CUSTOM;
                }
            }
        }
        let wait_epoch;
        let queued;
        {
            let mut q = bucket.lock();
            // SetPageWaiters before the last test, both under the bucket lock (SEMANTICS 1.8).
            let word = page.frame().flags.set(cache.mask(PG::Waiters));
            let got_it = if behavior == Behavior::Exclusive {
                page.frame().flags.test_and_set_lock(mask) & mask == 0
            } else {
                // The RMW's old word is the freshest value there is: no second load needed.
                word & mask == 0
            };
            // One word gives bit and epoch together: the epoch is that of the writeback whose
            // bit we just saw set.
            wait_epoch = epoch_of(word);
            if got_it {
                // Relaxed: not linked; nobody else looks at the entry.
                entry
                    .flags
                    .store(f | WQ_FLAG_WOKEN | WQ_FLAG_DONE, Ordering::Relaxed);
                queued = false;
            } else {
                entry.flags.store(f | WQ_LINKED, Ordering::Relaxed);
                q.push_back(Arc::clone(&entry));
                queued = true;
            }
        }
        if let Some(r) = drop_ref.take() {
            // DROP: from here on the page may be freed and reused; never touch it again.
            drop(r);
        }
        if queued {
            out.slept = true;
            if behavior != Behavior::Drop {
                page.record(
                    Op::WaitStart,
                    bitno,
                    page.flags_for_record(),
                    page.flags_for_record(),
                    0,
                );
            }
            cache.hook(HookPoint::WaitSleep, page.pfn);
        }
        loop {
            // Acquire: pairs with the Release store of WOKEN in wake_page_function.
            let fl = entry.flags.load(Ordering::Acquire);
            if fl & WQ_FLAG_WOKEN == 0 {
                entry.sleeper.sleep();
                continue;
            }
            if behavior != Behavior::Exclusive || fl & WQ_FLAG_DONE != 0 {
                break;
            }
            // Woken but not handed the lock: try it; on failure queue again.
            if page.frame().flags.test_and_set_lock(mask) & mask != 0 {
                continue 'again;
            }
            entry.flags.store(fl | WQ_FLAG_DONE, Ordering::Relaxed);
            break;
        }
        if queued && behavior != Behavior::Drop {
            out.stale = note_wake(page, &entry, bit, bitno, wait_epoch);
        }
        break;
    }
    finish_wait(bucket, &entry);
    out
}

/// E0 waiter: the loop that re-tests after every wake and re-queues at the tail.
fn wait_looping(
    page: Page<'_>,
    bit: PG,
    behavior: Behavior,
    mut drop_ref: Option<PageRef<'_>>,
) -> WaitOutcome {
    let cache = page.cache;
    let mask = cache.mask(bit);
    let bitno = cache.layout().bit(bit);
    let bucket = cache.waitq.bucket(page.pfn);
    let flags0 = if behavior == Behavior::Exclusive {
        WQ_FLAG_EXCLUSIVE
    } else {
        0
    };
    let entry = WaitEntry::new(page.pfn, bitno, flags0);
    let mut out = WaitOutcome {
        slept: false,
        stale: false,
    };
    loop {
        {
            let mut q = bucket.lock();
            // Relaxed: WQ_LINKED is only changed under this bucket lock.
            if entry.flags.load(Ordering::Relaxed) & WQ_LINKED == 0 {
                entry.flags.store(flags0 | WQ_LINKED, Ordering::Relaxed);
                q.push_back(Arc::clone(&entry));
                page.frame().flags.set(cache.mask(PG::Waiters));
            }
        }
        // set_current_state's full barrier is the RMW on the flags word above (same location
        // as the waker's clear), so this test sees the clear or the waker sees PG_waiters.
        let word = page.flags();
        let was_set = word & mask != 0;
        if let Some(r) = drop_ref.take() {
            drop(r);
        }
        if was_set {
            out.slept = true;
            if behavior != Behavior::Drop {
                page.record(Op::WaitStart, bitno, word, word, 0);
            }
            cache.hook(HookPoint::WaitSleep, page.pfn);
            // May return spuriously (a stale wake token): the re-test below handles it.
            entry.sleeper.sleep();
        }
        let done = match behavior {
            Behavior::Exclusive => page.frame().flags.test_and_set_lock(mask) & mask == 0,
            Behavior::Shared => !page.frame().flags.test(mask),
            Behavior::Drop => true,
        };
        if done {
            if out.slept && behavior != Behavior::Drop {
                out.stale = note_wake(page, &entry, bit, bitno, epoch_of(word));
            }
            break;
        }
        // Still set: go round; if a waker unlinked us we are re-queued at the tail.
    }
    finish_wait(bucket, &entry);
    out
}

/// Record how a wait ended; returns true for a stale wake (woken by an older writeback).
fn note_wake(page: Page<'_>, entry: &WaitEntry, bit: PG, bitno: u8, wait_epoch: u32) -> bool {
    // Relaxed: written by the waker before its Release store of WOKEN, which we acquired.
    let waker = entry.waker_tag.load(unchecked::Ordering::Relaxed);
    let waker_epoch = entry.waker_epoch.load(unchecked::Ordering::Relaxed);
    // Stale: the wake came from an older writeback while the one this thread waits for is
    // still in flight. A late wake that finds the bit clear (E0's re-test loop meeting an
    // old wake after its own writeback ended) did no harm and is not counted. The flags word
    // is read only when the epochs say the wake may be stale (or for the history): a load
    // nothing depends on is one more step for loom to interleave.
    let maybe_stale = bit == PG::Writeback && waker != 0 && waker_epoch < wait_epoch;
    let word = if maybe_stale {
        page.flags()
    } else {
        page.flags_for_record()
    };
    let stale = maybe_stale && word & page.cache.mask(PG::Writeback) != 0;
    if stale {
        page.cache.stats.stale_wakes.inc();
        page.record(Op::StaleWake, bitno, word, word, waker_epoch);
    }
    page.record(Op::WaitEnd, bitno, word, word, waker);
    stale
}

/// finish_wait: make sure the entry is off the list (it may still be linked after a spurious
/// wake or an E0 re-test that found the bit clear).
fn finish_wait(bucket: &Mutex<Bucket>, entry: &Arc<WaitEntry>) {
    // Acquire: pairs with the waker's Release store that cleared WQ_LINKED.
    if entry.flags.load(Ordering::Acquire) & WQ_LINKED == 0 {
        return;
    }
    let mut q: MutexGuard<'_, Bucket> = bucket.lock();
    if let Some(pos) = q.iter().position(|e| Arc::ptr_eq(e, entry)) {
        q.remove(pos);
    }
    entry.flags.fetch_and(!WQ_LINKED, Ordering::Relaxed);
}

/// trylock_page: take PG_locked if it is free.
pub fn trylock_page(page: Page<'_>) -> bool {
    let lk = page.cache.mask(PG::Locked);
    let old = page.frame().flags.test_and_set_lock(lk);
    let got = old & lk == 0;
    if got {
        page.record(Op::Lock, 0, old, old | lk, 0);
    }
    got
}

/// lock_page: take PG_locked, sleeping as long as it takes.
///
/// Models: include/linux/pagemap.h lock_page() + mm/filemap.c __lock_page().
pub fn lock_page(page: Page<'_>) {
    let lk = page.cache.mask(PG::Locked);
    let old = page.frame().flags.test_and_set_lock(lk);
    if old & lk == 0 {
        page.record(Op::Lock, 0, old, old | lk, 0);
        return;
    }
    wait_on_page_bit_common(page, PG::Locked, Behavior::Exclusive, None);
    let now = page.flags_for_record();
    page.record(Op::Lock, 0, now, now, 1);
}

/// unlock_page: clear PG_locked and wake a waiter if PG_waiters was set in the same RMW.
///
/// Models: mm/filemap.c unlock_page() (v5.10), folio_unlock() (v6.9: XOR form).
pub fn unlock_page(page: Page<'_>) {
    let cache = page.cache;
    let lk = cache.mask(PG::Locked);
    vm_bug_on_page!(cache.bug(), !page.locked(), &page);
    let old = if cache.switches().xor_unlock {
        page.frame().flags.xor_unlock(lk)
    } else {
        page.frame().flags.clear_unlock(lk)
    };
    page.record(Op::Unlock, 0, old, old & !lk, 0);
    if old & cache.mask(PG::Waiters) != 0 {
        wake_up_page_bit(page, PG::Locked, 0);
    }
}

/// wait_on_page_bit: shared wait for `bit` to clear.
pub fn wait_on_page_bit(page: Page<'_>, bit: PG) -> WaitOutcome {
    wait_on_page_bit_common(page, bit, Behavior::Shared, None)
}

/// wait_on_page_locked: wait until the page is unlocked, without taking the lock.
pub fn wait_on_page_locked(page: Page<'_>) {
    if page.locked() {
        wait_on_page_bit(page, PG::Locked);
    }
}

/// put_and_wait_on_page_locked: drop our reference and wait for the unlock (DROP behaviour).
pub fn put_and_wait_on_page_locked(page: PageRef<'_>) {
    let p = page.page();
    wait_on_page_bit_common(p, PG::Locked, Behavior::Drop, Some(page));
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::bug::OnBug;
    use crate::mm::{ALL_ERAS, CacheConfig, Era, PageCache};
    use std::sync::atomic::AtomicBool;
    use std::time::Duration;

    fn cache(era: Era, frames: usize) -> Arc<PageCache> {
        let mut cfg = CacheConfig::new(era, frames);
        cfg.on_bug = OnBug::Panic;
        PageCache::new(cfg).expect("cache")
    }

    #[test]
    fn hash_spreads_frames_over_256_buckets() {
        let mut seen = std::collections::HashSet::new();
        for p in 0..4096u32 {
            seen.insert(WaitTable::bucket_of(Pfn(p)));
        }
        assert_eq!(seen.len(), WAIT_TABLE_SIZE);
    }

    #[test]
    fn trylock_and_unlock_uncontended() {
        for era in ALL_ERAS {
            let c = cache(era, 1);
            let p = c.alloc_page().expect("frame");
            assert!(trylock_page(*p));
            assert!(!trylock_page(*p));
            unlock_page(*p);
            assert!(!p.locked());
            assert!(!p.test(PG::Waiters));
        }
    }

    #[test]
    fn lock_page_sleeps_until_unlock_in_every_era() {
        for era in ALL_ERAS {
            let c = cache(era, 1);
            let p = c.alloc_page().expect("frame");
            lock_page(*p);
            let got = AtomicBool::new(false);
            std::thread::scope(|s| {
                s.spawn(|| {
                    lock_page(*p);
                    got.store(true, std::sync::atomic::Ordering::SeqCst);
                    unlock_page(*p);
                });
                while c.waitq.queued(p.pfn(), 0) == 0 {
                    std::thread::yield_now();
                }
                assert!(!got.load(std::sync::atomic::Ordering::SeqCst));
                assert!(p.test(PG::Waiters), "{era}: waiter must set PG_waiters");
                assert!(c.wait_invariant_violations().is_empty(), "{era}");
                unlock_page(*p);
            });
            assert!(got.load(std::sync::atomic::Ordering::SeqCst), "{era}");
            assert!(!p.locked());
            // The last unlock found no waiter left and cleared PG_waiters.
            assert!(!p.test(PG::Waiters), "{era}");
            assert_eq!(c.waitq.queued(p.pfn(), 0), 0);
        }
    }

    #[test]
    fn many_lockers_exclude_each_other() {
        for era in ALL_ERAS {
            let c = cache(era, 1);
            let p = c.alloc_page().expect("frame");
            let inside = std::sync::atomic::AtomicU32::new(0);
            let total = std::sync::atomic::AtomicU32::new(0);
            std::thread::scope(|s| {
                for _ in 0..4 {
                    s.spawn(|| {
                        for _ in 0..300 {
                            lock_page(*p);
                            assert_eq!(inside.fetch_add(1, std::sync::atomic::Ordering::SeqCst), 0);
                            total.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            inside.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                            unlock_page(*p);
                        }
                    });
                }
            });
            assert_eq!(
                total.load(std::sync::atomic::Ordering::SeqCst),
                1200,
                "{era}"
            );
            assert!(!p.locked());
        }
    }

    #[test]
    fn handoff_after_unfairness_budget() {
        // A waiter whose budget is used up asks for hand-off (CUSTOM); the unlocker then takes
        // the lock on its behalf, so a newcomer's trylock fails right after unlock (S5).
        let c = cache(Era::V5_10, 1);
        let p = c.alloc_page().expect("frame");
        let entry = WaitEntry::new(p.pfn(), 0, WQ_FLAG_EXCLUSIVE | WQ_FLAG_CUSTOM | WQ_LINKED);
        lock_page(*p);
        {
            let mut q = c.waitq.bucket(p.pfn()).lock();
            q.push_back(Arc::clone(&entry));
            p.frame().flags.set(c.mask(PG::Waiters));
        }
        unlock_page(*p);
        let f = entry.flags.load(Ordering::Acquire);
        assert_ne!(f & WQ_FLAG_DONE, 0, "lock handed over");
        assert_ne!(f & WQ_FLAG_WOKEN, 0);
        assert!(p.locked(), "the waker set PG_locked for the waiter");
        assert!(!trylock_page(*p));
        unlock_page(*p);
    }

    #[test]
    fn bookmarked_walk_wakes_every_shared_waiter() {
        // 100 entries for other frames in the same bucket force a bookmark (> 64 visited).
        let c = cache(Era::V5_10, 1);
        let p = c.alloc_page().expect("frame");
        let bucket = WaitTable::bucket_of(p.pfn());
        let other = (1..u32::MAX)
            .map(Pfn)
            .find(|q| WaitTable::bucket_of(*q) == bucket)
            .expect("collision");
        let mine: Vec<_> = (0..3)
            .map(|_| WaitEntry::new(p.pfn(), 15, WQ_LINKED))
            .collect();
        {
            let mut q = c.waitq.bucket(p.pfn()).lock();
            for _ in 0..100 {
                q.push_back(WaitEntry::new(other, 15, WQ_LINKED));
            }
            for e in &mine {
                q.push_back(Arc::clone(e));
            }
        }
        p.frame().flags.set(c.mask(PG::Waiters));
        wake_up_page_bit(*p, PG::Writeback, 0);
        for e in &mine {
            assert_ne!(e.flags.load(Ordering::Acquire) & WQ_FLAG_WOKEN, 0);
        }
        let q = c.waitq.bucket(p.pfn()).lock();
        assert_eq!(q.len(), 100, "only our entries unlinked, bookmark removed");
        drop(q);
        // Other frames' waiters remain, but none of ours: PG_waiters cleared (page_match false
        // is not the case here; the queue is non-empty and we matched, so it stays set).
        assert!(p.test(PG::Waiters));
    }

    #[test]
    fn e0_wake_refused_while_bit_set_e1_not() {
        for (era, expect_woken) in [(Era::V5_8, false), (Era::V5_9, true), (Era::AltB, false)] {
            let c = cache(era, 1);
            let p = c.alloc_page().expect("frame");
            let e = WaitEntry::new(p.pfn(), c.layout().bit(PG::Writeback), WQ_LINKED);
            c.waitq.bucket(p.pfn()).lock().push_back(Arc::clone(&e));
            p.frame().flags.set(c.mask(PG::Waiters));
            p.frame()
                .flags
                .test_and_set_writeback(c.mask(PG::Writeback));
            wake_up_page_bit(*p, PG::Writeback, 0);
            let woken = e.flags.load(Ordering::Acquire) & WQ_FLAG_WOKEN != 0;
            assert_eq!(woken, expect_woken, "{era}");
        }
    }

    #[test]
    fn shared_waiter_returns_after_clear_and_wake() {
        for era in ALL_ERAS {
            let c = cache(era, 1);
            let p = c.alloc_page().expect("frame");
            let wb = c.mask(PG::Writeback);
            p.frame().flags.test_and_set_writeback(wb);
            std::thread::scope(|s| {
                let h = s.spawn(|| wait_on_page_bit(*p, PG::Writeback));
                while c.waitq.queued(p.pfn(), c.layout().bit(PG::Writeback)) == 0 {
                    std::thread::sleep(Duration::from_micros(50));
                }
                p.frame().flags.clear(wb);
                wake_up_page(*p, PG::Writeback, 1);
                let out = h.join().expect("waiter");
                assert!(out.slept && !out.stale, "{era}: {out:?}");
            });
        }
    }

    #[test]
    fn put_and_wait_drops_the_reference_first() {
        let c = cache(Era::V5_10, 1);
        let p = c.alloc_page().expect("frame");
        let extra = p.get();
        lock_page(*p);
        std::thread::scope(|s| {
            s.spawn(|| put_and_wait_on_page_locked(extra));
            while c.waitq.queued(p.pfn(), 0) == 0 {
                std::thread::yield_now();
            }
            assert_eq!(
                p.refcount(),
                1,
                "DROP waiter put its reference before sleeping"
            );
            unlock_page(*p);
        });
    }
}
