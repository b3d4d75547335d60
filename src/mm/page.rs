//! Page frames: flags, reference count, owner, generation, data; get_page / put_page.
//!
//! Models: include/linux/mm.h get_page/put_page, include/linux/page_ref.h
//! (page_ref_freeze, get_page_unless_zero), mm/page_alloc.c free-time checks (v5.10).
//!
//! A frame's identity is its number, not the (file, index) it holds: the wait-table bucket and the
//! wake key are the frame, so a wake meant for one owner can reach the next (SEMANTICS S2).
//!
//! Reference counting: the page cache holds one reference while a page is in a mapping; each
//! lookup takes one more. When the count drops to zero the frame goes back to the free list and
//! can be handed to another mapping at once. Writeback holds no reference of its own (it relies
//! on truncate waiting for PG_writeback) except where the era says end_page_writeback pins it.

use std::fmt::Write as _;
use std::ops::Deref;

use crate::bug::Dump;
use crate::mm::flags::{Flags, PG_BITS, epoch_of};
use crate::mm::history::{Op, Rec, explain_stale_wake, render_events};
use crate::mm::{PAGE_SIZE, PG, PageCache};
use crate::sync::unchecked;
use crate::sync::{AtomicU32, AtomicU64, Ordering, thread_tag};
use crate::{vm_bug_on_page, warn_on_once};

/// A frame number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pfn(pub u32);

/// Mapping id meaning "in no mapping".
pub(crate) const NO_MAPPING: u64 = 0;

/// One page frame (a `struct page` plus its memory).
#[derive(Debug)]
pub(crate) struct Frame {
    pub(crate) flags: Flags,
    pub(crate) refcount: AtomicU32,
    /// Owning mapping id, [`NO_MAPPING`] when not in the page cache. Written under the page lock
    /// and the mapping's i_pages lock.
    pub(crate) mapping: AtomicU64,
    /// Page index within the owner. Written with `mapping`.
    pub(crate) index: AtomicU64,
    /// Bumped on every allocation; diagnostics and the reused-frame check only.
    pub(crate) generation: unchecked::AtomicU64,
    /// Events recorded in this frame's history so far (see `History::record` for why the
    /// count lives here and not in the ring; `History::events` reads it back for the bits of
    /// each event's number that a slot does not keep).
    hist_seq: unchecked::AtomicU32,
    data: unchecked::RwLock<Box<[u8]>>,
}

impl Frame {
    pub(crate) fn new() -> Self {
        Frame {
            flags: Flags::new(),
            refcount: AtomicU32::new(0),
            mapping: AtomicU64::new(NO_MAPPING),
            index: AtomicU64::new(0),
            generation: unchecked::AtomicU64::new(0),
            hist_seq: unchecked::AtomicU32::new(0),
            data: unchecked::RwLock::new(vec![0u8; PAGE_SIZE].into_boxed_slice()),
        }
    }
}

/// A frame, named by number, with no reference held: what a `struct page *` is to code that
/// knows the page cannot go away under it (or, in E0/E1's end_page_writeback, hopes so).
#[derive(Clone, Copy)]
pub struct Page<'a> {
    pub(crate) cache: &'a PageCache,
    pub(crate) pfn: Pfn,
}

impl std::fmt::Debug for Page<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Page({})", self.pfn.0)
    }
}

impl<'a> Page<'a> {
    pub(crate) fn new(cache: &'a PageCache, pfn: Pfn) -> Self {
        Page { cache, pfn }
    }

    #[inline]
    pub(crate) fn frame(&self) -> &'a Frame {
        &self.cache.frames[self.pfn.0 as usize]
    }

    /// The frame number.
    pub fn pfn(&self) -> Pfn {
        self.pfn
    }

    /// The cache this frame belongs to.
    pub fn cache(&self) -> &'a PageCache {
        self.cache
    }

    /// The whole flags word (PG bits and epoch).
    #[inline]
    pub fn flags(&self) -> u64 {
        self.frame().flags.load()
    }

    /// The flags word for a history record, or 0 when the cache keeps no histories.
    ///
    /// Without a history nothing reads the value, so the load is skipped: it steers nothing,
    /// and under loom every load of the flags word is one more step to interleave (and one more
    /// choice of which store it reads). Dropping an unused Acquire load only removes
    /// happens-before edges, so a model without it explores every behaviour of the code with it.
    #[inline]
    pub(crate) fn flags_for_record(&self) -> u64 {
        if self.cache.history(self.pfn).is_some() {
            self.flags()
        } else {
            0
        }
    }

    /// Test one flag.
    #[inline]
    pub fn test(&self, f: PG) -> bool {
        self.frame().flags.test(self.cache.mask(f))
    }

    /// PageLocked.
    pub fn locked(&self) -> bool {
        self.test(PG::Locked)
    }

    /// PageDirty.
    pub fn dirty(&self) -> bool {
        self.test(PG::Dirty)
    }

    /// PageWriteback.
    pub fn writeback(&self) -> bool {
        self.test(PG::Writeback)
    }

    /// PageUptodate.
    pub fn uptodate(&self) -> bool {
        self.test(PG::Uptodate)
    }

    /// PageError.
    pub fn error(&self) -> bool {
        self.test(PG::Error)
    }

    /// SetPageUptodate (the caller holds the page lock, or owns the page exclusively).
    pub fn set_uptodate(&self) {
        self.frame().flags.set(self.cache.mask(PG::Uptodate));
    }

    /// SetPageError (an I/O completion recording a failed write).
    pub fn set_error(&self) {
        self.frame().flags.set(self.cache.mask(PG::Error));
    }

    /// ClearPageError.
    pub fn clear_error(&self) {
        self.frame().flags.clear(self.cache.mask(PG::Error));
    }

    /// The current writeback epoch (number of writebacks ever started on this frame).
    pub fn wb_epoch(&self) -> u32 {
        epoch_of(self.flags())
    }

    /// Owning mapping id (0 when not in the page cache).
    pub fn mapping_id(&self) -> u64 {
        self.frame().mapping.load(Ordering::Acquire)
    }

    /// Index within the owning mapping.
    pub fn index(&self) -> u64 {
        self.frame().index.load(Ordering::Acquire)
    }

    /// How many times this frame has been allocated.
    pub fn generation(&self) -> u64 {
        // Relaxed: diagnostics only; written once per allocation by the allocating thread.
        self.frame().generation.load(unchecked::Ordering::Relaxed)
    }

    /// Current reference count.
    pub fn refcount(&self) -> u32 {
        self.frame().refcount.load(Ordering::Acquire)
    }

    /// Read the page contents. Readers and write I/O out of the frame run concurrently with
    /// each other; writers hold the page lock (the kernel's rule), so the contents are stable
    /// enough.
    pub fn with_data<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R {
        f(&self.frame().data.read())
    }

    /// Change the page contents. The caller holds the page lock.
    pub fn with_data_mut<R>(&self, f: impl FnOnce(&mut [u8]) -> R) -> R {
        vm_bug_on_page!(self.cache.bug(), !self.locked(), self);
        f(&mut self.frame().data.write())
    }

    /// The bytes `range` of the page borrowed for a read I/O into them (the device fills the frame
    /// itself instead of a buffer that is then copied in). The page must be locked and not
    /// uptodate, as it is from readpage until the read's completion: then nobody else reads
    /// or writes its bytes, and neither truncate (which takes the page lock) nor reclaim
    /// (which only trylocks) can free it under the I/O.
    pub fn data_for_read_io(
        &self,
        range: std::ops::Range<usize>,
    ) -> crate::sync::unchecked::MappedRwLockWriteGuard<'a, [u8]> {
        vm_bug_on_page!(self.cache.bug(), !self.locked() || self.uptodate(), self);
        crate::sync::unchecked::RwLockWriteGuard::map(self.frame().data.write(), |d| &mut d[range])
    }

    /// The bytes `range` of the page borrowed for a write I/O out of them (the device writes the
    /// frame itself instead of a copy). The caller holds a reference for the transfer, taken
    /// when it set PG_writeback under the page lock, so the frame cannot be freed and handed
    /// to another file while the device reads it, even where a waiter has wrongly taken the
    /// writeback for ended; writers of the page wait for the borrow to end (this is a read
    /// lock on the frame's bytes), so the device never sees half of one copy into it.
    pub fn data_for_write_io(
        &self,
        range: std::ops::Range<usize>,
    ) -> crate::sync::unchecked::MappedRwLockReadGuard<'a, [u8]> {
        vm_bug_on_page!(self.cache.bug(), self.refcount() == 0, self);
        crate::sync::unchecked::RwLockReadGuard::map(self.frame().data.read(), |d| &d[range])
    }

    /// get_page: take one more reference; the caller already holds one.
    pub fn get(&self) -> PageRef<'a> {
        let old = self.frame().refcount.fetch_add(1, Ordering::AcqRel);
        vm_bug_on_page!(self.cache.bug(), old == 0 || old > u32::MAX / 2, self);
        PageRef { page: *self }
    }

    /// get_page_unless_zero: take a reference unless the frame is free (or frozen by reclaim).
    pub fn try_get(&self) -> Option<PageRef<'a>> {
        let rc = &self.frame().refcount;
        let mut cur = rc.load(Ordering::Acquire);
        loop {
            if cur == 0 {
                return None;
            }
            // AcqRel: the Acquire pairs with the Release of the put that published the frame's
            // owner fields; a successful get must see the owner the frame had at that time.
            match rc.compare_exchange_weak(cur, cur + 1, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Some(PageRef { page: *self }),
                Err(now) => cur = now,
            }
        }
    }

    /// put_page: drop a reference; the last one frees the frame.
    pub(crate) fn put(&self) {
        // Release: everything this holder did to the frame happens before the free that the
        // last putter performs; AcqRel so the last putter also sees the others' work.
        let old = self.frame().refcount.fetch_sub(1, Ordering::AcqRel);
        vm_bug_on_page!(self.cache.bug(), old == 0, self);
        if old == 1 {
            self.cache.free_frame(*self);
        }
    }

    /// page_ref_freeze: turn `expected` references into zero if nobody else holds one.
    pub(crate) fn ref_freeze(&self, expected: u32) -> bool {
        self.frame()
            .refcount
            .compare_exchange(expected, 0, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Append an event to the frame's history.
    #[inline]
    pub(crate) fn record(&self, op: Op, bit: u8, before: u64, after: u64, arg: u32) {
        if let Some(h) = self.cache.history(self.pfn) {
            // Relaxed: the count only numbers events and spreads writers over slots; the
            // slot header's Release store publishes the event to readers.
            let seq = self
                .frame()
                .hist_seq
                .fetch_add(1, unchecked::Ordering::Relaxed)
                .wrapping_add(1);
            h.record(
                seq,
                Rec {
                    op,
                    bit,
                    before,
                    after,
                    arg,
                },
                thread_tag(),
                self.cache.now_raw(),
            );
        }
    }

    /// The recorded events of this frame, oldest first.
    pub fn history(&self) -> Vec<crate::mm::history::Event> {
        self.cache
            .history(self.pfn)
            .map(|h| self.events(h))
            .unwrap_or_default()
    }

    /// The events of `h`, this frame's ring, read against the frame's event counter and the
    /// cache's clock (both read after the ring, as `History::events` needs).
    fn events(&self, h: &crate::mm::history::History) -> Vec<crate::mm::history::Event> {
        h.events(self.cache.hist_pack(), &self.frame().hist_seq, &|| {
            self.cache.now_raw()
        })
    }
}

impl Dump for Page<'_> {
    fn dump(&self) -> String {
        let mut s = String::new();
        let word = self.flags();
        let layout = self.cache.layout();
        let _ = writeln!(
            s,
            "page: frame {} mapping {} index {} refcount {} generation {}",
            self.pfn.0,
            self.mapping_id(),
            self.index(),
            self.refcount(),
            self.generation(),
        );
        let _ = writeln!(
            s,
            "flags: {:#x}({}) writeback-epoch {} era {} ({})",
            word & PG_BITS,
            layout.describe(word),
            epoch_of(word),
            self.cache.era(),
            layout.name,
        );
        if let Some(h) = self.cache.history(self.pfn) {
            let _ = writeln!(
                s,
                "history of frame {} (oldest first; epochs modulo 2^16):",
                self.pfn.0
            );
            let to_ns = |raw| self.cache.raw_to_ns(raw);
            let events = self.events(h);
            s.push_str(&render_events(&events, layout, &to_ns));
            let wb = layout.bit(PG::Writeback);
            if let Some(why) = explain_stale_wake(&events, thread_tag(), wb, &to_ns) {
                s.push_str(&why);
            }
        } else {
            let _ = writeln!(s, "history: off");
        }
        s
    }
}

/// A frame with one reference held; dropping it is put_page.
pub struct PageRef<'a> {
    page: Page<'a>,
}

impl std::fmt::Debug for PageRef<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PageRef({})", self.page.pfn.0)
    }
}

impl<'a> Deref for PageRef<'a> {
    type Target = Page<'a>;
    fn deref(&self) -> &Page<'a> {
        &self.page
    }
}

impl<'a> PageRef<'a> {
    /// Give up the handle without dropping the reference (it now belongs to whoever keeps the
    /// frame number, e.g. the page cache slot). Pair with [`PageRef::from_raw`].
    pub fn into_raw(self) -> Page<'a> {
        let p = self.page;
        std::mem::forget(self);
        p
    }

    /// Take over a reference that was leaked with [`PageRef::into_raw`].
    pub fn from_raw(page: Page<'a>) -> Self {
        PageRef { page }
    }

    /// The page, without the reference.
    pub fn page(&self) -> Page<'a> {
        self.page
    }
}

impl Drop for PageRef<'_> {
    fn drop(&mut self) {
        self.page.put();
    }
}

impl PageCache {
    /// Allocate a frame: refcount 1, no flags, no owner. Reclaims clean pages when none is
    /// free and waits for writeback to free one ([`crate::mm::vmscan::Gfp::Wait`]).
    pub fn alloc_page(&self) -> Result<PageRef<'_>, crate::error::FsError> {
        self.alloc_page_gfp(crate::mm::vmscan::Gfp::Wait)
    }

    /// Hand out frame `pfn`, just taken off the free list, with one reference.
    pub(crate) fn prep_new_page(&self, pfn: Pfn) -> PageRef<'_> {
        let page = Page::new(self, pfn);
        let f = page.frame();
        // CHECK_AT_PREP: a frame on the free list carries no flags and no references.
        let word = f.flags.load();
        warn_on_once!(
            self.bug(),
            word & PG_BITS != 0 || page.refcount() != 0,
            &page
        );
        // Relaxed: generation is diagnostics, read under no ordering assumptions.
        let generation = f.generation.fetch_add(1, unchecked::Ordering::Relaxed) + 1;
        f.refcount.store(1, Ordering::Release);
        page.record(Op::Alloc, 0, word, word, generation as u32);
        PageRef { page }
    }

    pub(crate) fn pop_free(&self) -> Option<Pfn> {
        let p = self.free.lock().pop().map(Pfn);
        if p.is_some() {
            self.stats.frames_free.dec();
        }
        p
    }

    /// The last reference went: check the frame (PAGE_FLAGS_CHECK_AT_FREE) and free it.
    fn free_frame(&self, page: Page<'_>) {
        let f = page.frame();
        // __page_cache_release: a page reclaim put back on the LRU after it left the page
        // cache leaves the LRU here.
        if f.flags.test(self.mask(PG::Lru)) {
            self.lru_del(page);
        }
        let bad = self.mask(PG::Locked) | self.mask(PG::Writeback) | self.mask(PG::Lru);
        let word = f.flags.load();
        if warn_on_once!(self.bug(), word & bad != 0, &page) {
            // "Bad page state": the kernel reports and leaks the frame rather than reuse it.
            log::error!(
                "bad page state: frame {} freed with flags {:#x}",
                page.pfn.0,
                word
            );
            self.stats.bad_pages.inc();
            return;
        }
        f.mapping.store(super::page::NO_MAPPING, Ordering::Release);
        f.index.store(0, Ordering::Release);
        let before = f.flags.clear_all_pg();
        page.record(Op::Free, 0, before, before & !PG_BITS, 0);
        self.free.lock().push(page.pfn.0);
        self.stats.frames_free.inc();
        self.throttle_wake();
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::mm::{CacheConfig, Era};

    #[test]
    fn alloc_get_put_free_reuse() {
        let c = PageCache::new(CacheConfig::new(Era::V5_10, 2)).expect("cache");
        let a = c.alloc_page().expect("frame");
        let pfn = a.pfn();
        assert_eq!(a.refcount(), 1);
        let a2 = a.get();
        assert_eq!(a.refcount(), 2);
        drop(a2);
        let generation = a.generation();
        drop(a);
        // LIFO: the frame just freed is the next handed out, with a new generation.
        let b = c.alloc_page().expect("frame");
        assert_eq!(b.pfn(), pfn);
        assert_eq!(b.generation(), generation + 1);
        let ops: Vec<Op> = b.history().iter().map(|e| e.op).collect();
        assert_eq!(ops, vec![Op::Alloc, Op::Free, Op::Alloc]);
    }

    #[test]
    fn try_get_fails_on_free_frame_and_freeze_blocks_it() {
        let c = PageCache::new(CacheConfig::new(Era::V5_10, 1)).expect("cache");
        let p = c.page(Pfn(0));
        assert!(p.try_get().is_none());
        let a = c.alloc_page().expect("frame");
        let extra = a.try_get().expect("live frame");
        assert!(!a.ref_freeze(1));
        drop(extra);
        assert!(a.ref_freeze(1));
        assert!(a.try_get().is_none());
        // Frozen frames are owned by the freezer; hand it back for the test's drop.
        a.frame().refcount.store(1, Ordering::Release);
    }

    #[test]
    fn out_of_frames_is_an_error_not_a_hang() {
        let c = PageCache::new(CacheConfig::new(Era::V5_10, 1)).expect("cache");
        let _a = c.alloc_page().expect("frame");
        assert!(matches!(
            c.alloc_page(),
            Err(crate::error::FsError::NoMemory)
        ));
        assert_eq!(c.stats().alloc_failures, 1);
    }

    #[test]
    fn dump_names_owner_flags_and_history() {
        let c = PageCache::new(CacheConfig::new(Era::V5_9, 1)).expect("cache");
        let a = c.alloc_page().expect("frame");
        let d = a.dump();
        assert!(d.contains("page: frame 0"), "{d}");
        assert!(d.contains("era v5.9"), "{d}");
        assert!(d.contains("alloc"), "{d}");
    }
}
