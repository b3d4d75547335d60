//! Dirty and writeback transitions, and the walk that writes a mapping back.
//!
//! Models: mm/page-writeback.c (v5.10): __set_page_dirty_nobuffers, redirty_page_for_writepage,
//! clear_page_dirty_for_io, __test_set_page_writeback, test_clear_page_writeback,
//! wait_on_page_writeback (v5.8 `if` / v5.11 `while`), write_cache_pages, generic_writepages,
//! do_writepages.
//!
//! The split that makes the 2021 race possible lives here: write_cache_pages waits for
//! PG_writeback to clear and asserts it is clear while holding the page lock, but sets it again
//! only later, inside the filesystem's writepage; the clear (end_page_writeback) takes no lock.

use crate::error::FsError;
use crate::mm::era::WritebackWait;
use crate::mm::filemap::{
    AddressSpace, PAGEVEC_SIZE, Tag, find_get_pages_range_tag, tag_pages_for_writeback,
};
use crate::mm::flags::epoch_of;
use crate::mm::history::Op;
use crate::mm::page::{Page, PageRef};
use crate::mm::waitqueue::{unlock_page, wait_on_page_bit};
use crate::mm::{HookPoint, PAGE_SHIFT, PG};
use crate::{bug_on, vm_bug_on_page};

/// WB_SYNC_NONE or WB_SYNC_ALL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncMode {
    /// Background: skip pages under writeback, stop at the first error or at nr_to_write.
    None,
    /// Data integrity: wait for pages under writeback, write everything tagged.
    All,
}

/// struct writeback_control: what a writeback pass should do.
#[derive(Clone, Debug)]
pub struct WritebackControl {
    /// WB_SYNC_NONE / WB_SYNC_ALL.
    pub sync_mode: SyncMode,
    /// Pages still to write (WB_SYNC_NONE stops at zero).
    pub nr_to_write: i64,
    /// First byte of the range.
    pub range_start: u64,
    /// Last byte of the range (inclusive).
    pub range_end: u64,
    /// Resume at the mapping's writeback_index and ignore the range.
    pub range_cyclic: bool,
    /// Tag TOWRITE first even for WB_SYNC_NONE (livelock avoidance).
    pub tagged_writepages: bool,
    /// Pages redirtied instead of written.
    pub pages_skipped: u64,
}

impl WritebackControl {
    /// A pass over bytes `[start, end]` with no page limit.
    pub fn range(sync_mode: SyncMode, start: u64, end: u64) -> Self {
        WritebackControl {
            sync_mode,
            nr_to_write: i64::MAX,
            range_start: start,
            range_end: end,
            range_cyclic: false,
            tagged_writepages: false,
            pages_skipped: 0,
        }
    }

    /// A range-cyclic WB_SYNC_NONE pass of at most `nr` pages (the flusher's).
    pub fn background(nr: i64) -> Self {
        WritebackControl {
            nr_to_write: nr,
            range_cyclic: true,
            ..WritebackControl::range(SyncMode::None, 0, u64::MAX)
        }
    }
}

/// set_page_dirty (`__set_page_dirty_nobuffers`): mark the page dirty and tag it; returns true
/// if it was clean before.
///
/// # Context
/// The caller holds a reference; usually the page lock too (write_end). FAT never waits for
/// writeback before redirtying, so this may run while PG_writeback is set.
pub fn set_page_dirty(mapping: &AddressSpace, page: Page<'_>) -> bool {
    let cache = page.cache;
    let dirty = cache.mask(PG::Dirty);
    let old = page.frame().flags.set(dirty);
    if old & dirty != 0 {
        return false;
    }
    cache.stats.nr_dirty.inc();
    page.record(Op::SetDirty, 0, old, old | dirty, 0);
    if page.mapping_id() == mapping.id() {
        mapping
            .i_pages()
            .set_mark(page.index(), page.pfn().0, Tag::Dirty, true);
        // After the tag: a flusher that takes the inode off its list and then looks for
        // DIRTY tags either sees this page or is told again here (see fs_writeback).
        mapping.aops().dirty_inode();
    }
    true
}

/// redirty_page_for_writepage: a writepage that cannot write the page now keeps it dirty.
pub fn redirty_page_for_writepage(
    mapping: &AddressSpace,
    wbc: &mut WritebackControl,
    page: Page<'_>,
) {
    wbc.pages_skipped += 1;
    set_page_dirty(mapping, page);
}

/// clear_page_dirty_for_io: the page is about to be written; clear PG_dirty (the DIRTY tag stays
/// until set_page_writeback resynchronises it). Returns true if it was dirty.
pub fn clear_page_dirty_for_io(page: Page<'_>) -> bool {
    let cache = page.cache;
    vm_bug_on_page!(cache.bug(), !page.locked(), &page);
    let dirty = cache.mask(PG::Dirty);
    let old = page.frame().flags.clear(dirty);
    if old & dirty == 0 {
        return false;
    }
    cache.stats.nr_dirty.dec();
    page.record(Op::ClearDirtyForIo, 0, old, old & !dirty, 0);
    true
}

/// cancel_dirty_page: truncate throws the dirty contents away.
pub fn cancel_dirty_page(page: Page<'_>) {
    let cache = page.cache;
    let dirty = cache.mask(PG::Dirty);
    let old = page.frame().flags.clear(dirty);
    if old & dirty != 0 {
        cache.stats.nr_dirty.dec();
        page.record(Op::CancelDirty, 0, old, old & !dirty, 0);
    }
}

/// __test_set_page_writeback: set PG_writeback (starting a new writeback epoch) and resync the
/// tags; returns true if it was already set (nothing changed then).
///
/// # Context
/// The caller holds the page lock: every setter does, which is what makes "I saw it clear while
/// holding the lock" stable until unlock (SEMANTICS 1.5).
pub fn test_set_page_writeback(
    mapping_hint: Option<&AddressSpace>,
    page: Page<'_>,
    keep_write: bool,
) -> bool {
    let cache = page.cache;
    let wb = cache.mask(PG::Writeback);
    // Recommended in every era (LT0 suggested it; v6.18 has it as VM_BUG_ON_FOLIO): the setter
    // holds the page lock.
    vm_bug_on_page!(cache.bug(), !page.locked(), &page);
    if cache.era() == crate::mm::Era::V6_9 {
        vm_bug_on_page!(cache.bug(), page.writeback(), &page);
    }
    let core = match mapping_hint {
        Some(_) => None,
        None => cache
            .mappings
            .get(&page.mapping_id())
            .map(|c| crate::sync::Arc::clone(c.value())),
    };
    let mut guard = match (mapping_hint, &core) {
        (Some(m), _) if m.id() == page.mapping_id() => Some(m.i_pages()),
        (None, Some(c)) => Some(c.i_pages.lock()),
        _ => None,
    };
    let old = page.frame().flags.test_and_set_writeback(wb);
    let was = old & wb != 0;
    if let Some(ip) = guard.as_mut() {
        let (idx, pfn) = (page.index(), page.pfn());
        if !was {
            ip.set_mark(idx, pfn.0, Tag::Writeback, true);
        }
        if !page.dirty() {
            ip.set_mark(idx, pfn.0, Tag::Dirty, false);
        }
        if !keep_write {
            ip.set_mark(idx, pfn.0, Tag::Towrite, false);
        }
    }
    drop(guard);
    if !was {
        cache.stats.wb_starts.inc();
        cache.stats.nr_writeback.inc();
        let new = (old | wb).wrapping_add(1 << crate::mm::flags::EPOCH_SHIFT);
        page.record(Op::SetWriteback, 0, old, new, epoch_of(new));
    }
    was
}

/// set_page_writeback: start writeback of a locked page.
pub fn set_page_writeback(page: Page<'_>) {
    test_set_page_writeback(None, page, false);
}

/// set_page_writeback_keepwrite: start writeback but leave TOWRITE so an integrity pass still
/// visits the page.
pub fn set_page_writeback_keepwrite(page: Page<'_>) {
    test_set_page_writeback(None, page, true);
}

/// wait_on_page_writeback: `if` up to v5.10, `while` from c2407cf7d22d on.
///
/// Models: mm/page-writeback.c wait_on_page_writeback() (v5.9 `if`, v5.11 `while`).
pub fn wait_on_page_writeback(page: Page<'_>) {
    match page.cache.switches().wb_wait {
        WritebackWait::If => {
            if page.writeback() {
                wait_on_page_bit(page, PG::Writeback);
            }
        }
        WritebackWait::While => {
            while page.writeback() {
                wait_on_page_bit(page, PG::Writeback);
            }
        }
    }
}

/// A writepage callback as write_cache_pages takes it.
pub type Writepage<'w> =
    dyn FnMut(&AddressSpace, &PageRef<'_>, &mut WritebackControl) -> Result<(), FsError> + 'w;

/// What write_cache_pages did with one page.
#[derive(Debug)]
pub enum PageStep {
    /// Skipped (truncated, clean, or under writeback in WB_SYNC_NONE); the page is unlocked.
    Skipped,
    /// Handed to writepage, with its result.
    Written(Result<(), FsError>),
}

/// The per-page body of write_cache_pages, from lock_page to the writepage call: lock, recheck
/// owner and dirtiness, wait for writeback in integrity mode, BUG_ON(PageWriteback), clean,
/// write.
///
/// Models: mm/page-writeback.c write_cache_pages() loop body (v5.10 lines 2216-2252).
pub fn write_cache_page(
    mapping: &AddressSpace,
    page: &PageRef<'_>,
    wbc: &mut WritebackControl,
    writepage: &mut Writepage<'_>,
) -> PageStep {
    let cache = &**mapping.cache();
    let p = page.page();
    cache.hook(HookPoint::WcpBeforeLock, p.pfn());
    crate::mm::waitqueue::lock_page(p);
    if p.mapping_id() != mapping.id() || !p.dirty() {
        // Truncated, or somebody already wrote it: skip, even for data integrity.
        unlock_page(p);
        return PageStep::Skipped;
    }
    if p.writeback() {
        if wbc.sync_mode == SyncMode::None {
            unlock_page(p);
            return PageStep::Skipped;
        }
        wait_on_page_writeback(p);
    }
    // mm/page-writeback.c:2241 in v5.9..v5.11 - the BUG syzbot hit in January 2021.
    if bug_on!(cache.bug(), p.writeback(), &p) {
        // on_bug=warn: the kernel would have died here. Wait for the writeback the stale wake
        // skipped (what `while` does), so the model stays consistent and can go on counting.
        let w = p.flags();
        p.record(Op::Bug, 0, w, w, 0);
        while p.writeback() {
            wait_on_page_bit(p, PG::Writeback);
        }
    }
    if !clear_page_dirty_for_io(p) {
        unlock_page(p);
        return PageStep::Skipped;
    }
    PageStep::Written(writepage(mapping, page, wbc))
}

/// write_cache_pages: walk the dirty (or TOWRITE) pages of a range and write each with
/// `writepage`.
///
/// Models: mm/page-writeback.c write_cache_pages() (v5.10; identical in v5.8..v6.1).
///
/// # Context
/// May sleep (page lock, writeback wait). Locks pages one at a time in ascending index order.
pub fn write_cache_pages(
    mapping: &AddressSpace,
    wbc: &mut WritebackControl,
    writepage: &mut Writepage<'_>,
) -> Result<(), FsError> {
    let mut ret: Result<(), FsError> = Ok(());
    let mut done = false;
    let (mut index, end, range_whole) = if wbc.range_cyclic {
        (mapping.writeback_index(), u64::MAX, false)
    } else {
        (
            wbc.range_start >> PAGE_SHIFT,
            wbc.range_end >> PAGE_SHIFT,
            wbc.range_start == 0 && wbc.range_end == u64::MAX,
        )
    };
    let tag = if wbc.sync_mode == SyncMode::All || wbc.tagged_writepages {
        tag_pages_for_writeback(mapping, index, end);
        Tag::Towrite
    } else {
        Tag::Dirty
    };
    mapping
        .cache()
        .hook(HookPoint::WcpAfterTag, crate::mm::Pfn(u32::MAX));
    let mut done_index = index;
    while !done && index <= end {
        let batch = find_get_pages_range_tag(mapping, &mut index, end, tag, PAGEVEC_SIZE);
        if batch.is_empty() {
            break;
        }
        for page in &batch {
            done_index = page.index();
            let err = match write_cache_page(mapping, page, wbc, writepage) {
                PageStep::Skipped => continue,
                PageStep::Written(r) => r,
            };
            if let Err(e) = err {
                if wbc.sync_mode != SyncMode::All {
                    // Background writeback stops at the first error.
                    ret = Err(e);
                    done_index = page.index() + 1;
                    done = true;
                    break;
                }
                // Data integrity: keep going, report the first error.
                if ret.is_ok() {
                    ret = Err(e);
                }
            }
            wbc.nr_to_write -= 1;
            if wbc.nr_to_write <= 0 && wbc.sync_mode == SyncMode::None {
                done = true;
                break;
            }
        }
    }
    if wbc.range_cyclic && !done {
        // Wrap: the next cyclic pass starts from the beginning.
        done_index = 0;
    }
    if wbc.range_cyclic || (range_whole && wbc.nr_to_write > 0) {
        mapping.set_writeback_index(done_index);
    }
    ret
}

/// generic_writepages: write_cache_pages with the mapping's own writepage.
pub fn generic_writepages(
    mapping: &AddressSpace,
    wbc: &mut WritebackControl,
) -> Result<(), FsError> {
    let aops = std::sync::Arc::clone(mapping.aops());
    write_cache_pages(mapping, wbc, &mut |m, p, w| aops.writepage(m, p, w))
}

/// do_writepages: the mapping's writepages, retried on ENOMEM for data integrity.
pub fn do_writepages(mapping: &AddressSpace, wbc: &mut WritebackControl) -> Result<(), FsError> {
    if wbc.nr_to_write <= 0 {
        return Ok(());
    }
    loop {
        let r = mapping.aops().writepages(mapping, wbc);
        match r {
            Err(FsError::NoMemory) if wbc.sync_mode == SyncMode::All => {
                // congestion_wait: let completions and reclaim free frames, then retry.
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            other => return other,
        }
    }
}

/// The writer that balance_dirty_pages wakes and waits for: the flusher of the backing
/// device (`wb_start_background_writeback`).
pub trait BackgroundWriteback: Send + Sync {
    /// Dirty pages are over the background threshold: start background writeback now, or
    /// keep it going, without waiting for it.
    fn kick(&self);
}

/// Longest single pause of a throttled writer (MAX_PAUSE is 200 ms in the kernel; ours is
/// shorter because our "disk" is a file and the flusher catches up in milliseconds).
const MAX_PAUSE: std::time::Duration = std::time::Duration::from_millis(50);

/// Pauses after which a throttled writer stops trusting the flusher and writes its own pages.
const PAUSES_BEFORE_SELF_WRITE: u32 = 20;

/// balance_dirty_pages_ratelimited: keep the cache's dirty and writeback pages under the
/// limits after a write dirtied a page of `mapping`.
///
/// Over the background threshold the flusher is kicked; over the dirty limit the writer
/// sleeps (doubling pauses up to [`MAX_PAUSE`]) until the flusher has brought the count
/// under it, kicking it again on every pause. It never spins and holds no page lock while it
/// sleeps, so reclaim and writeback proceed; only if the flusher makes no room for many
/// pauses (or there is none: the library used without a mount) does the writer write a batch
/// of its own mapping itself, as every writer did before v3.2, so it cannot wait forever on
/// pages nobody will write.
///
/// Models: mm/page-writeback.c balance_dirty_pages() (v5.10), without the per-bdi bandwidth
/// estimation: the kernel's pause grows with how far over the limit the dirtier is and how
/// fast the device writes; ours doubles from 500 us.
pub fn balance_dirty_pages_ratelimited(mapping: &AddressSpace) {
    let cache = mapping.cache();
    let (background, limit) = cache.dirty_thresholds();
    let stats = &cache.stats;
    let dirty = || stats.nr_dirty.get() + stats.nr_writeback.get();
    if dirty() <= background {
        return;
    }
    let flusher = cache.background_writeback();
    if let Some(f) = &flusher {
        f.kick();
    }
    if dirty() <= limit {
        return;
    }
    stats.throttled.inc();
    let mut pause = std::time::Duration::from_micros(500);
    if let Some(f) = &flusher {
        for _ in 0..PAUSES_BEFORE_SELF_WRITE {
            std::thread::sleep(pause);
            if dirty() <= limit {
                return;
            }
            f.kick();
            pause = (pause * 2).min(MAX_PAUSE);
        }
    }
    let mut wbc = WritebackControl::background(i64::try_from(limit).unwrap_or(i64::MAX));
    if let Err(e) = do_writepages(mapping, &mut wbc) {
        // The page and the mapping carry the error for fsync; the writer goes on, as the
        // kernel's throttled writer does.
        log::debug!("balance_dirty_pages: writeback failed: {e}");
    }
    // io_schedule_timeout: pause while the writes just started are in flight.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    while stats.nr_writeback.get() > limit / 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(pause);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::mm::filemap::{end_page_writeback, find_or_create_page};
    use crate::mm::testing::{DeferredAops, SyncAops, cache_for};
    use crate::mm::{ALL_ERAS, Era};
    use crate::sync::Arc;

    fn dirty_pages(m: &AddressSpace, n: u64) {
        for i in 0..n {
            let p = find_or_create_page(m, i).expect("page");
            p.with_data_mut(|d| d[0] = i as u8 + 1);
            set_page_dirty(m, *p);
            unlock_page(*p);
        }
    }

    #[test]
    fn integrity_writeback_writes_every_dirty_page_once() {
        for era in ALL_ERAS {
            let c = cache_for(era, 64);
            let aops = Arc::new(SyncAops::default());
            let m = AddressSpace::new(&c, aops.clone());
            dirty_pages(&m, 40);
            crate::mm::filemap::filemap_fdatawrite_range(&m, 0, u64::MAX).expect("write");
            assert_eq!(aops.written().len(), 40, "{era}");
            assert!(!m.tagged(Tag::Dirty) && !m.tagged(Tag::Towrite) && !m.tagged(Tag::Writeback));
            assert_eq!(aops.written()[&5][0], 6);
            let s = c.stats();
            assert_eq!(
                (s.nr_dirty, s.nr_writeback, s.wb_starts, s.wb_ends),
                (0, 0, 40, 40)
            );
        }
    }

    #[test]
    fn background_writeback_respects_nr_to_write_and_cycles() {
        let c = cache_for(Era::V5_11, 64);
        let aops = Arc::new(SyncAops::default());
        let m = AddressSpace::new(&c, aops.clone());
        dirty_pages(&m, 20);
        let mut wbc = WritebackControl::background(8);
        generic_writepages(&m, &mut wbc).expect("write");
        assert_eq!(aops.written().len(), 8);
        assert_eq!(m.writeback_index(), 7, "resumes where it stopped");
        let mut wbc = WritebackControl::background(100);
        generic_writepages(&m, &mut wbc).expect("write");
        assert_eq!(aops.written().len(), 20);
        assert_eq!(m.writeback_index(), 0, "wrapped");
    }

    #[test]
    fn background_skips_pages_under_writeback_integrity_waits() {
        let c = cache_for(Era::V5_11, 8);
        let aops = Arc::new(DeferredAops::default());
        let m = AddressSpace::new(&c, aops.clone());
        dirty_pages(&m, 1);
        crate::mm::filemap::filemap_flush(&m).expect("flush");
        assert_eq!(aops.in_flight(), 1);
        // Redirty while under writeback (FAT has no stable pages).
        let p = crate::mm::filemap::find_lock_page(&m, 0).expect("page");
        set_page_dirty(&m, *p);
        unlock_page(*p);
        crate::mm::filemap::filemap_flush(&m).expect("flush");
        assert_eq!(
            aops.in_flight(),
            1,
            "WB_SYNC_NONE skips a page under writeback"
        );
        std::thread::scope(|s| {
            s.spawn(|| {
                while c.waitq.queued(p.pfn(), c.layout().bit(PG::Writeback)) == 0 {
                    std::thread::yield_now();
                }
                aops.complete_all(&c);
            });
            crate::mm::filemap::filemap_fdatawrite_range(&m, 0, u64::MAX).expect("write");
        });
        assert_eq!(
            aops.started(),
            2,
            "integrity pass waited, then wrote it again"
        );
        aops.complete_all(&c);
        assert_eq!(c.bug().total(), 0);
    }

    #[test]
    fn clear_page_dirty_for_io_needs_the_lock_and_reports_dirtiness() {
        let c = cache_for(Era::V5_10, 2);
        let m = AddressSpace::new(&c, Arc::new(SyncAops::default()));
        let p = find_or_create_page(&m, 0).expect("page");
        assert!(!clear_page_dirty_for_io(*p));
        set_page_dirty(&m, *p);
        assert!(clear_page_dirty_for_io(*p));
        assert_eq!(
            m.tagged_indexes(Tag::Dirty),
            vec![0],
            "tag stays until set_page_writeback"
        );
        set_page_writeback(*p);
        assert!(m.tagged_indexes(Tag::Dirty).is_empty());
        unlock_page(*p);
        end_page_writeback(*p);
    }

    #[test]
    fn keepwrite_leaves_towrite_and_redirty_counts_a_skip() {
        let c = cache_for(Era::V5_10, 2);
        let m = AddressSpace::new(&c, Arc::new(SyncAops::default()));
        let p = find_or_create_page(&m, 0).expect("page");
        set_page_dirty(&m, *p);
        tag_pages_for_writeback(&m, 0, 0);
        assert!(clear_page_dirty_for_io(*p));
        set_page_writeback_keepwrite(*p);
        assert_eq!(
            m.tagged_indexes(Tag::Towrite),
            vec![0],
            "keepwrite keeps TOWRITE"
        );
        let mut wbc = WritebackControl::range(SyncMode::All, 0, u64::MAX);
        redirty_page_for_writepage(&m, &mut wbc, *p);
        assert_eq!(wbc.pages_skipped, 1);
        assert!(
            p.dirty() && p.writeback(),
            "dirty and under writeback at once"
        );
        unlock_page(*p);
        assert!(crate::mm::filemap::test_clear_page_writeback(*p));
        assert!(!crate::mm::filemap::test_clear_page_writeback(*p));
        assert!(m.tagged_indexes(Tag::Writeback).is_empty());
    }

    #[test]
    fn writepage_error_is_sticky_for_integrity_and_stops_background() {
        let c = cache_for(Era::V5_11, 16);
        let aops = Arc::new(SyncAops::failing_at(2));
        let m = AddressSpace::new(&c, aops.clone());
        dirty_pages(&m, 5);
        let r = crate::mm::filemap::filemap_fdatawrite_range(&m, 0, u64::MAX);
        assert!(r.is_err());
        assert_eq!(aops.written().len(), 4, "integrity pass writes the others");
        let m2 = AddressSpace::new(&c, Arc::new(SyncAops::failing_at(2)));
        dirty_pages(&m2, 5);
        let mut wbc = WritebackControl::background(100);
        assert!(generic_writepages(&m2, &mut wbc).is_err());
        assert_eq!(m2.writeback_index(), 3, "stops right after the failed page");
    }
}
