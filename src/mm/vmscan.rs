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

use crate::mm::history::Op;
use crate::mm::page::{NO_MAPPING, Page, Pfn};
use crate::mm::waitqueue::{trylock_page, unlock_page};
use crate::mm::{PG, PageCache};
use crate::sync::{Arc, Ordering};

/// Frames reclaim tries to free per allocation failure.
pub const RECLAIM_BATCH: usize = 32;
const NIL: u32 = u32::MAX;

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
                match self.reclaim_one(page.page()) {
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
    /// the frame went back to the free list (the caller's reference with it).
    fn reclaim_one(&self, page: Page<'_>) -> Reclaimed {
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
        if let Some(core) = self.mappings.get(&mapping).map(|c| Arc::clone(c.value())) {
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
