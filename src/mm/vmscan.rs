//! The LRU list and reclaim: when no frame is free, evict clean, unlocked, idle pages, oldest
//! first, with a second chance for pages referenced since they were last looked at.
//!
//! Models: mm/swap.c lru_cache_add / rotate_reclaimable_page, mm/vmscan.c shrink_page_list and
//! __remove_mapping (page_ref_freeze) (v5.10), reduced to one list.
//!
//! Deviation: one LRU list with PG_referenced as the second chance, instead of the kernel's
//! active/inactive pair; the order pages are considered in is still least recently added first.
//!
//! Frames are taken off the list (isolated) under the LRU lock and processed without it, so a
//! page lock is only ever tried (never waited for) and never while holding the LRU lock.
//!
//! An allocation that reclaim cannot satisfy at once is throttled ([`Throttle`]), as the
//! kernel's reclaim_throttle / should_reclaim_retry do: when every frame is dirty, under
//! writeback or locked for I/O, a frame will come free as soon as the flusher writes or a
//! completion thread finishes, so the allocator kicks the flusher and sleeps until a frame is
//! freed or a writeback ends, and gives up (ENOMEM) only after [`THROTTLE_PATIENCE`] without
//! either. Readahead's allocations never wait (`__GFP_NORETRY`): readahead is optional work,
//! and a pass holds the pages it added locked until it submits them.

use std::time::{Duration, Instant};

use crate::mm::history::Op;
use crate::mm::page::{NO_MAPPING, Page, PageRef, Pfn};
use crate::mm::waitqueue::{trylock_page, unlock_page};
use crate::mm::{PG, PageCache};
use crate::sync::unchecked;
use crate::sync::{Arc, Ordering};

/// Frames reclaim tries to free per allocation failure.
pub const RECLAIM_BATCH: usize = 32;
const NIL: u32 = u32::MAX;

/// Longest one throttled allocator sleeps before it looks again (reclaim_throttle's timeout;
/// a wake-up it misses costs at most this).
const THROTTLE_NAP: Duration = Duration::from_millis(10);

/// How long a throttled allocator waits while no frame is freed and no writeback ends before
/// it returns ENOMEM (should_reclaim_retry's budget of retries without progress). Long
/// enough for a slow device's writes to finish, short enough that a cache pinned solid by its
/// own callers fails with a clear error rather than hanging.
pub const THROTTLE_PATIENCE: Duration = Duration::from_secs(1);

/// Whether an allocation may wait for reclaim (`gfp` flags reduced to the one choice we model).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gfp {
    /// May kick the flusher and sleep until frames come free (GFP_KERNEL, GFP_NOFS).
    Wait,
    /// One reclaim pass, then fail at once (readahead_gfp_mask: `__GFP_NORETRY`).
    NoRetry,
}

/// Where allocators that found no frame sleep until a frame is freed or a writeback ends.
///
/// Not part of the modelled protocol: a plain (`sync::unchecked`) counter, lock and condition
/// variable, and every wait is bounded by [`THROTTLE_NAP`], so a lost wake-up costs time,
/// never progress. Under loom allocators never sleep here (the models never run out of
/// frames, and a real condition variable would block loom's scheduler).
#[derive(Debug, Default)]
pub(crate) struct Throttle {
    /// Allocators inside [`PageCache::throttle_wait`]; wakers skip the lock when it is zero.
    sleepers: unchecked::AtomicU32,
    lock: unchecked::Mutex<()>,
    cv: unchecked::Condvar,
}

impl PageCache {
    /// A frame was freed or a writeback ended: wake throttled allocators, if any.
    ///
    /// The SeqCst fence pairs with the one in [`PageCache::throttle_wait`] (Dekker's pattern):
    /// either this load sees the sleeper's increment, or the sleeper's look at the free list,
    /// made after its increment, sees the frame pushed before this fence. That rules out a
    /// sleeper that checked an empty list and a freer that saw no sleeper both going on; the
    /// throttle lock held from the sleeper's check into its wait rules out the notify falling
    /// between the two.
    #[inline]
    pub(crate) fn throttle_wake(&self) {
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        if self.throttle.sleepers.load(unchecked::Ordering::Relaxed) != 0 {
            let _g = self.throttle.lock.lock();
            self.throttle.cv.notify_all();
        }
    }

    /// Sleep until a frame is freed or a writeback ends, or [`THROTTLE_NAP`] passes; a frame
    /// found free meanwhile is taken and returned. Returns whether something happened (a
    /// frame, or a wake-up) as opposed to the nap running out.
    fn throttle_wait(&self) -> (Option<Pfn>, bool) {
        let t = &self.throttle;
        let mut g = t.lock.lock();
        t.sleepers.fetch_add(1, unchecked::Ordering::Relaxed);
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        let got = self.pop_free();
        let woken = match got {
            Some(_) => true,
            None => !t.cv.wait_for(&mut g, THROTTLE_NAP).timed_out(),
        };
        t.sleepers.fetch_sub(1, unchecked::Ordering::Relaxed);
        (got, woken)
    }

    /// Allocate a frame (refcount 1, no flags, no owner), reclaiming when none is free and,
    /// with [`Gfp::Wait`], throttling until writeback or I/O frees one.
    pub fn alloc_page_gfp(&self, gfp: Gfp) -> Result<PageRef<'_>, crate::error::FsError> {
        if let Some(p) = self.pop_free() {
            return Ok(self.prep_new_page(p));
        }
        self.shrink_lru(RECLAIM_BATCH);
        if let Some(p) = self.pop_free() {
            return Ok(self.prep_new_page(p));
        }
        if gfp == Gfp::Wait && !cfg!(loom) {
            self.stats.alloc_throttled.inc();
            let mut last_progress = Instant::now();
            let mut wb_ends = self.stats.wb_ends.get();
            while last_progress.elapsed() < THROTTLE_PATIENCE {
                // wakeup_flusher_threads: dirty pages are only reclaimable once written.
                if self.stats.nr_dirty.get() > 0
                    && let Some(f) = self.background_writeback()
                {
                    f.kick();
                }
                let (got, woken) = self.throttle_wait();
                if let Some(p) = got {
                    return Ok(self.prep_new_page(p));
                }
                self.shrink_lru(RECLAIM_BATCH);
                if let Some(p) = self.pop_free() {
                    return Ok(self.prep_new_page(p));
                }
                let ends = self.stats.wb_ends.get();
                if woken || ends != wb_ends {
                    wb_ends = ends;
                    last_progress = Instant::now();
                }
            }
        }
        if gfp == Gfp::Wait {
            // Only these reach a caller as ENOMEM; readahead giving up is routine.
            self.stats.alloc_failures.inc();
            log::warn!(
                "page cache: no frame free or reclaimable among {} (dirty {}, writeback {})",
                self.nr_frames(),
                self.stats.nr_dirty.get(),
                self.stats.nr_writeback.get()
            );
        }
        Err(crate::error::FsError::NoMemory)
    }
}

/// What reclaim did with one page.
enum Reclaimed {
    /// Freed: the frame is on the free list.
    Freed,
    /// Recently used: its PG_referenced was cleared and it goes round once more.
    SecondChance,
    /// Locked, dirty, under writeback or pinned: left as it is.
    Kept,
}

/// An intrusive doubly linked list of frame numbers, head = oldest.
#[derive(Debug)]
pub(crate) struct Lru {
    prev: Vec<u32>,
    next: Vec<u32>,
    on: Vec<bool>,
    head: u32,
    tail: u32,
    len: usize,
}

impl Lru {
    pub(crate) fn new(frames: usize) -> Self {
        Lru {
            prev: vec![NIL; frames],
            next: vec![NIL; frames],
            on: vec![false; frames],
            head: NIL,
            tail: NIL,
            len: 0,
        }
    }

    fn push_tail(&mut self, p: u32) {
        let i = p as usize;
        if self.on[i] {
            return;
        }
        self.on[i] = true;
        self.prev[i] = self.tail;
        self.next[i] = NIL;
        if self.tail == NIL {
            self.head = p;
        } else {
            self.next[self.tail as usize] = p;
        }
        self.tail = p;
        self.len += 1;
    }

    fn push_head(&mut self, p: u32) {
        let i = p as usize;
        if self.on[i] {
            return;
        }
        self.on[i] = true;
        self.next[i] = self.head;
        self.prev[i] = NIL;
        if self.head == NIL {
            self.tail = p;
        } else {
            self.prev[self.head as usize] = p;
        }
        self.head = p;
        self.len += 1;
    }

    fn remove(&mut self, p: u32) -> bool {
        let i = p as usize;
        if !self.on[i] {
            return false;
        }
        let (pr, nx) = (self.prev[i], self.next[i]);
        if pr == NIL {
            self.head = nx
        } else {
            self.next[pr as usize] = nx
        }
        if nx == NIL {
            self.tail = pr
        } else {
            self.prev[nx as usize] = pr
        }
        self.on[i] = false;
        self.len -= 1;
        true
    }

    fn pop_head(&mut self) -> Option<u32> {
        let h = self.head;
        if h == NIL {
            return None;
        }
        self.remove(h);
        Some(h)
    }

    /// Pages on the list.
    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

impl PageCache {
    /// lru_cache_add: a page entering the page cache goes to the young end.
    pub(crate) fn lru_add(&self, page: Page<'_>) {
        let mut lru = self.lru.lock();
        lru.push_tail(page.pfn().0);
        page.frame().flags.set(self.mask(PG::Lru));
    }

    /// Take a page leaving the page cache off the LRU.
    pub(crate) fn lru_del(&self, page: Page<'_>) {
        let mut lru = self.lru.lock();
        if lru.remove(page.pfn().0) {
            page.frame().flags.clear(self.mask(PG::Lru));
        }
    }

    /// rotate_reclaimable_page: writeback of a page reclaim wanted has ended; move it to the old
    /// end so the next scan frees it first.
    pub(crate) fn rotate_reclaimable_page(&self, page: Page<'_>) {
        let mut lru = self.lru.lock();
        if lru.remove(page.pfn().0) {
            lru.push_head(page.pfn().0);
        }
    }

    /// Pages on the LRU.
    pub fn lru_len(&self) -> usize {
        self.lru.lock().len()
    }

    /// Try to free up to `want` frames; returns how many were freed.
    pub fn shrink_lru(&self, want: usize) -> usize {
        let (mut freed, second_chances) = self.shrink_pass(want);
        if freed == 0 && second_chances > 0 {
            // The first pass only took away second chances (cleared PG_referenced and
            // rotated); the kernel's scan then goes round again at a higher priority. Without
            // this a cache whose pages were all touched twice frees nothing. A pass that met
            // only pinned, dirty or locked pages is not repeated: a second look finds the same.
            freed = self.shrink_pass(want).0;
        }
        freed
    }

    /// One look at each page on the LRU at most, until `want` are freed; returns the frames
    /// freed and the second chances taken away.
    fn shrink_pass(&self, want: usize) -> (usize, usize) {
        let mut freed = 0;
        let mut second_chances = 0;
        let mut budget = self.lru_len();
        // The mapping of the last page freed: an LRU holds long runs of one file's pages, and
        // looking each one up took a shared lock and an Arc count that every reclaiming
        // thread touches (a third of this function's time in a 512 MiB cache=kernel read).
        let mut last = None;
        while freed < want && budget > 0 {
            let isolated: Vec<u32> = {
                let mut lru = self.lru.lock();
                let mut v = Vec::with_capacity(RECLAIM_BATCH);
                while v.len() < RECLAIM_BATCH.min(budget) {
                    match lru.pop_head() {
                        Some(p) => {
                            self.frames[p as usize].flags.clear(self.mask(PG::Lru));
                            v.push(p);
                        }
                        None => break,
                    }
                }
                v
            };
            if isolated.is_empty() {
                break;
            }
            budget = budget.saturating_sub(isolated.len());
            for p in isolated {
                // isolate_lru_page holds a reference: the frame cannot be freed (and handed to
                // someone else) while reclaim looks at it, so the putback below can never put
                // a free frame on the LRU. No reference to be had: it is being freed already.
                let Some(page) = self.page(Pfn(p)).try_get() else {
                    continue;
                };
                match self.reclaim_one(page.page(), &mut last) {
                    Reclaimed::Freed => {
                        let _ = page.into_raw(); // frozen and freed: the reference went with it
                        freed += 1;
                        continue;
                    }
                    Reclaimed::SecondChance => second_chances += 1,
                    Reclaimed::Kept => {}
                }
                if page.mapping_id() != NO_MAPPING {
                    self.lru_add(page.page());
                }
            }
        }
        (freed, second_chances)
    }

    /// shrink_page_list for one isolated page whose one reference the caller holds: whether
    /// the frame went back to the free list (the caller's reference with it). `last` is the
    /// mapping the caller's previous page was freed from, kept to look up the next page's
    /// only when it differs. Holding it is safe: ids are never reused, so a core with the
    /// page's id is the page's mapping, and a mapping dropped meanwhile (its pages all truncated
    /// first) only lives until the pass ends.
    fn reclaim_one(
        &self,
        page: Page<'_>,
        last: &mut Option<Arc<crate::mm::filemap::MappingCore>>,
    ) -> Reclaimed {
        if page.frame().flags.test_and_clear(self.mask(PG::Referenced)) {
            return Reclaimed::SecondChance;
        }
        if !trylock_page(page) {
            return Reclaimed::Kept;
        }
        if page.dirty() || page.writeback() || page.mapping_id() == NO_MAPPING {
            if page.writeback() {
                // Ask end_page_writeback to rotate it to the old end when it is done.
                page.frame().flags.set(self.mask(PG::Reclaim));
            }
            unlock_page(page);
            return Reclaimed::Kept;
        }
        // __remove_mapping: only the page cache's reference and ours may exist.
        if !page.ref_freeze(2) {
            unlock_page(page);
            return Reclaimed::Kept;
        }
        let mapping = page.mapping_id();
        if last.as_ref().is_none_or(|c| c.id != mapping) {
            *last = self.mappings.get(&mapping).map(|c| Arc::clone(c.value()));
        }
        if let Some(core) = last {
            core.i_pages.lock().remove(page.index(), page.pfn().0);
        }
        page.frame().mapping.store(NO_MAPPING, Ordering::Release);
        let w = page.flags();
        page.record(Op::Reclaim, 0, w, w, page.index() as u32);
        // Nobody else can hold a reference to a frozen frame: clear PG_locked without a wake
        // (__ClearPageLocked) and free it.
        page.frame().flags.clear_all_pg();
        page.record(Op::Free, 0, w, w & !crate::mm::flags::PG_BITS, 0);
        self.free.lock().push(page.pfn().0);
        self.stats.frames_free.inc();
        self.stats.reclaimed.inc();
        self.throttle_wake();
        Reclaimed::Freed
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::mm::Era;
    use crate::mm::filemap::{AddressSpace, find_get_page, find_or_create_page};
    use crate::mm::testing::{DeferredAops, SyncAops, cache_for};
    use crate::mm::writeback::set_page_dirty;

    #[test]
    fn list_ops_keep_order() {
        let mut l = Lru::new(8);
        for p in [3, 1, 4] {
            l.push_tail(p);
        }
        l.push_head(7);
        assert!(l.remove(1));
        assert!(!l.remove(1));
        let order: Vec<u32> = std::iter::from_fn(|| l.pop_head()).collect();
        assert_eq!(order, vec![7, 3, 4]);
        assert_eq!(l.len(), 0);
    }

    #[test]
    fn a_cache_whose_pages_were_all_touched_again_still_reclaims() {
        let c = cache_for(Era::V5_11, 4);
        let m = AddressSpace::new(&c, Arc::new(SyncAops::default()));
        for i in 0..4 {
            let p = find_or_create_page(&m, i).expect("page");
            unlock_page(*p);
        }
        for i in 0..4 {
            drop(find_get_page(&m, i));
        }
        let p = find_or_create_page(&m, 10).expect("the second look reclaims");
        unlock_page(*p);
    }

    #[test]
    fn full_cache_reclaims_clean_pages_oldest_first() {
        let c = cache_for(Era::V5_11, 4);
        let m = AddressSpace::new(&c, Arc::new(SyncAops::default()));
        for i in 0..4 {
            let p = find_or_create_page(&m, i).expect("page");
            unlock_page(*p);
        }
        // Page 0 referenced again: it gets a second chance; 1 is the oldest idle one.
        drop(find_get_page(&m, 0));
        let p = find_or_create_page(&m, 10).expect("reclaim made room");
        unlock_page(*p);
        assert!(
            find_get_page(&m, 1).is_none(),
            "oldest unreferenced page evicted"
        );
        assert!(find_get_page(&m, 0).is_some(), "referenced page kept");
        assert!(c.stats().reclaimed >= 1);
    }

    /// A cache of `n` frames whose every page is under writeback (DeferredAops), unlocked.
    fn cache_all_under_writeback(
        n: u64,
    ) -> (Arc<crate::mm::PageCache>, Arc<DeferredAops>, AddressSpace) {
        let c = cache_for(Era::V6_9, n as usize);
        let aops = Arc::new(DeferredAops::default());
        let m = AddressSpace::new(&c, aops.clone());
        for i in 0..n {
            let p = find_or_create_page(&m, i).expect("page");
            set_page_dirty(&m, *p);
            unlock_page(*p);
        }
        crate::mm::filemap::filemap_fdatawrite(&m).expect("writeback started");
        assert_eq!(aops.in_flight(), n as usize);
        (c, aops, m)
    }

    #[test]
    fn an_allocation_waits_for_writeback_to_end_instead_of_failing() {
        let (c, aops, m) = cache_all_under_writeback(3);
        std::thread::scope(|s| {
            s.spawn(|| {
                // End the writes only once the allocator below is throttled, so the test
                // checks the wait, whatever the scheduler does.
                while c.stats().alloc_throttled == 0 {
                    std::thread::yield_now();
                }
                aops.complete_all(&c);
            });
            let p = find_or_create_page(&m, 10).expect("a frame once writeback ended");
            unlock_page(*p);
        });
        let st = c.stats();
        assert_eq!(st.alloc_throttled, 1);
        assert_eq!(st.alloc_failures, 0);
    }

    #[test]
    fn readahead_allocations_never_wait() {
        let (c, aops, m) = cache_all_under_writeback(3);
        assert!(matches!(
            crate::mm::filemap::add_new_page(&m, 10),
            Err(crate::error::FsError::NoMemory)
        ));
        assert_eq!(c.stats().alloc_throttled, 0);
        aops.complete_all(&c);
    }

    /// A flusher double: each kick asks its thread to write the mapping back.
    struct KickedWriter {
        kicks: std::sync::mpsc::SyncSender<()>,
    }

    impl crate::mm::BackgroundWriteback for KickedWriter {
        fn kick(&self) {
            let _ = self.kicks.try_send(());
        }
    }

    #[test]
    fn an_allocation_kicks_the_flusher_when_every_frame_is_dirty() {
        let c = cache_for(Era::V6_9, 3);
        let aops = Arc::new(SyncAops::default());
        let m = AddressSpace::new(&c, aops.clone());
        for i in 0..3 {
            let p = find_or_create_page(&m, i).expect("page");
            p.with_data_mut(|d| d[0] = i as u8 + 1);
            set_page_dirty(&m, *p);
            unlock_page(*p);
        }
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let flusher: Arc<dyn crate::mm::BackgroundWriteback> = Arc::new(KickedWriter { kicks: tx });
        c.set_background_writeback(Some(Arc::downgrade(&flusher)));
        std::thread::scope(|s| {
            let m = &m;
            s.spawn(move || {
                if rx.recv().is_ok() {
                    let mut wbc = crate::mm::WritebackControl::background(i64::MAX);
                    crate::mm::writeback::do_writepages(m, &mut wbc).expect("written");
                }
            });
            let p = find_or_create_page(m, 10).expect("a frame once the flusher wrote");
            unlock_page(*p);
            c.set_background_writeback(None);
            drop(flusher);
        });
        assert_eq!(
            aops.written().len(),
            3,
            "every dirty page written, none dropped"
        );
        assert_eq!(c.stats().alloc_failures, 0);
    }

    #[test]
    fn dirty_locked_and_writeback_pages_are_never_evicted() {
        let c = cache_for(Era::V5_11, 3);
        let aops = Arc::new(DeferredAops::default());
        let m = AddressSpace::new(&c, aops.clone());
        let a = find_or_create_page(&m, 0).expect("page"); // stays locked
        let b = find_or_create_page(&m, 1).expect("page");
        set_page_dirty(&m, *b);
        unlock_page(*b);
        let w = find_or_create_page(&m, 2).expect("page");
        crate::mm::writeback::set_page_writeback(*w);
        unlock_page(*w);
        let wpfn = w.pfn();
        drop((b, w));
        assert!(matches!(
            find_or_create_page(&m, 3),
            Err(crate::error::FsError::NoMemory)
        ));
        assert_eq!(m.nrpages(), 3);
        unlock_page(*a);
        drop(a);
        crate::mm::filemap::end_page_writeback(c.page(wpfn));
        assert_eq!(aops.in_flight(), 0);
        // The writeback page was marked PG_reclaim and rotated; the clean page 0 is free game.
        let p = find_or_create_page(&m, 3).expect("room now");
        unlock_page(*p);
    }
}
