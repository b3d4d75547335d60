//! S2, Hugh's page-reuse variant (SEMANTICS 5): the frame of A's page is freed and handed to B
//! between the clear of PG_writeback and its wake; the wake reaches B's waiter.
//!
//! ```text
//!   CPU1 (end WA)        CPU2 (truncate A)          CPU34 (B: new owner, then wcp ALL)   IO
//!   clear W; ..stall..   lock; W=0; delete; free
//!                                                   frame -> B; start WB; redirty        |
//!                                                   lock; D && W -> wait                 |
//!   wake -> CPU34                                   v5.9: BUG_ON(PageWriteback)          |
//!                                                                            end WB <----+
//! ```
//! One frame in the cache: B can only get the frame A had. Where end_page_writeback pins the
//! frame (v5.10 on), B's allocation fails while the pin is held, which is the fix.

use loom::sync::mpsc;

use super::harness::{StartOnly, check_era, eras, explore, model_cache, scenario_bound};
use crate::error::FsError;
use crate::mm::filemap::{AddressSpace, end_page_writeback, find_or_create_page};
use crate::mm::truncate::truncate_pagecache;
use crate::mm::waitqueue::unlock_page;
use crate::mm::writeback::{
    SyncMode, WritebackControl, clear_page_dirty_for_io, set_page_dirty, set_page_writeback,
    write_cache_page,
};
use crate::mm::{Era, Pfn};
use crate::sync::Arc;

fn s2(era: Era) {
    let cache = model_cache(era, 1);
    let a = Arc::new(AddressSpace::new(&cache, Arc::new(StartOnly)));
    let b = Arc::new(AddressSpace::new(&cache, Arc::new(StartOnly)));
    let pfn: Pfn = {
        let p = find_or_create_page(&a, 0).expect("page");
        set_page_dirty(&a, p.page());
        clear_page_dirty_for_io(p.page());
        set_page_writeback(p.page()); // WA; the page cache holds the only reference
        unlock_page(p.page());
        p.pfn()
    };
    let c1 = Arc::clone(&cache);
    let cpu1 = loom::thread::spawn(move || end_page_writeback(c1.page(pfn)));
    let (tx, rx) = mpsc::channel::<Option<Pfn>>();
    let (a2, c2) = (Arc::clone(&a), Arc::clone(&cache));
    let cpu2 = loom::thread::spawn(move || {
        truncate_pagecache(&a2, 0);
        // The same thread then completes WB's I/O, once it has started.
        if let Some(p) = rx.recv().expect("recv") {
            end_page_writeback(c2.page(p));
        }
    });
    let b3 = Arc::clone(&b);
    let cpu34 = loom::thread::spawn(move || {
        let page = match find_or_create_page(&b3, 0) {
            Ok(p) => p,
            Err(FsError::NoMemory) => {
                // The frame is still A's (or pinned): nothing to reuse in this interleaving.
                tx.send(None).expect("send");
                return;
            }
            Err(e) => panic!("unexpected {e}"),
        };
        set_page_dirty(&b3, page.page());
        clear_page_dirty_for_io(page.page());
        set_page_writeback(page.page()); // WB on the (maybe reused) frame
        unlock_page(page.page());
        set_page_dirty(&b3, page.page());
        tx.send(Some(page.pfn())).expect("send");
        let mut wbc = WritebackControl::range(SyncMode::All, 0, u64::MAX);
        // Past the BUG_ON the outcome is decided; a writepage that only unlocks keeps the
        // model small.
        write_cache_page(&b3, &page, &mut wbc, &mut |_, p, _| {
            unlock_page(p.page());
            Ok(())
        });
    });
    for t in [cpu1, cpu2, cpu34] {
        t.join().expect("model thread");
    }
}

#[test]
fn s2_all_eras() {
    for era in eras() {
        let bound = scenario_bound(era.has_s2_bug());
        let found = explore(&format!("S2 {era}"), bound, move || s2(era));
        check_era("S2", era, era.has_s2_bug(), &found);
    }
}
