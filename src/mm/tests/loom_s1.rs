//! S1, Linus's three-CPU race (SEMANTICS 5): one page, a new writeback started between the
//! clear of PG_writeback and its wake.
//!
//! ```text
//!   CPU1 (end W1)             CPU2 (writer)                     CPU3 (write_cache_pages, ALL)
//!   clear W; ..stall..        lock; clean; start W2; unlock
//!                             redirty
//!                                                               lock; D && W -> wait
//!   wake -> CPU3                                                `if`: BUG_ON(PageWriteback)
//!                             end W2
//! ```
//! Precondition set up before the threads start: P under W1, redirtied (W=1, D=1).

use super::harness::{StartOnly, check_era, eras, explore, model_cache, scenario_bound};
use crate::mm::filemap::{AddressSpace, end_page_writeback, find_or_create_page};
use crate::mm::waitqueue::{lock_page, unlock_page};
use crate::mm::writeback::{
    SyncMode, WritebackControl, clear_page_dirty_for_io, set_page_dirty, set_page_writeback,
    write_cache_page,
};
use crate::mm::{Era, PageRef, Pfn};
use crate::sync::Arc;

fn s1(era: Era) {
    let cache = model_cache(era, 2);
    let m = Arc::new(AddressSpace::new(&cache, Arc::new(StartOnly)));
    let pfn: Pfn = {
        let p = find_or_create_page(&m, 0).expect("page");
        set_page_writeback(p.page()); // W1
        unlock_page(p.page());
        set_page_dirty(&m, p.page()); // redirtied under W1
        // CPU3's reference from its lookup, taken before the race: only a put to zero would
        // matter, and nothing frees the page in S1. Taken here and dropped after the join, it
        // costs the model no steps on the refcount that CPU1's pin also touches.
        let _ = p.get().into_raw();
        p.pfn()
    };
    let c1 = Arc::clone(&cache);
    let cpu1 = loom::thread::spawn(move || end_page_writeback(c1.page(pfn)));
    let (c2, m2) = (Arc::clone(&cache), Arc::clone(&m));
    let cpu2 = loom::thread::spawn(move || {
        let p = c2.page(pfn);
        lock_page(p);
        if p.writeback() || !clear_page_dirty_for_io(p) {
            // W1 still running: a WB_SYNC_NONE writer skips the page.
            unlock_page(p);
            return;
        }
        set_page_writeback(p); // W2
        unlock_page(p);
        set_page_dirty(&m2, p); // redirtied under W2
        end_page_writeback(p); // W2's I/O completes
    });
    let (c3, m3) = (Arc::clone(&cache), Arc::clone(&m));
    let cpu3 = loom::thread::spawn(move || {
        let page = PageRef::from_raw(c3.page(pfn));
        let mut wbc = WritebackControl::range(SyncMode::All, 0, u64::MAX);
        // Past the BUG_ON the outcome is decided; a writepage that only unlocks keeps the
        // model small (no third writeback, no i_pages lock).
        write_cache_page(&m3, &page, &mut wbc, &mut |_, p, _| {
            unlock_page(p.page());
            Ok(())
        });
        let _ = page.into_raw();
    });
    for t in [cpu1, cpu2, cpu3] {
        t.join().expect("model thread");
    }
    drop(PageRef::from_raw(cache.page(pfn)));
}

#[test]
fn s1_all_eras() {
    for era in eras() {
        let bound = scenario_bound(era.has_s1_bug(), 2);
        let found = explore(&format!("S1 {era}"), bound, move || s1(era));
        check_era("S1", era, era.has_s1_bug(), &found);
    }
}
