//! S2, Hugh's page-reuse variant (SEMANTICS 5): the frame of A's page is freed and handed to B
//! between the clear of PG_writeback and its wake; the wake reaches B's waiter.
//!
//! ```text
//!   CPU1 (end WA)        CPU2 (truncate A)          CPU34 (B: new owner, then wcp ALL)
//!   clear W; ..stall..   lock; W=0; delete; free
//!                                                   frame -> B; start WB; redirty
//!                                                   lock; D && W -> wait
//!   wake -> CPU34                                   v5.9: BUG_ON(PageWriteback)
//!                        end WB (its I/O) ...
//! ```
//! One frame in the cache: B can only get the frame A had. Where end_page_writeback pins the
//! frame (v5.10 on), B's allocation fails while the pin is held, which is the fix.
//!
//! Two models, both running the production truncate, allocation, writeback and wait code:
//! * [`s2`]: truncate and B's owner on threads of their own, so B's allocation also races with
//!   truncate (and may reclaim A's page instead). WB's I/O completes on the truncating thread
//!   once B has started it: a fourth thread only for that completion multiplied the state space
//!   by 4-5 and adds no interleaving S2 needs (WB's end is a legitimate wake that can only close
//!   the window a stale wake needs). Checked at bound 1 for the fixed eras (bound 2 is already
//!   2.5 M iterations for v6.9).
//! * [`s2_min`]: S2 exactly as SEMANTICS 5 orders it, two threads; the bound-3 proofs.

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

/// The precondition of S2: a one-frame cache, mappings A and B, and A's page 0 under
/// writeback WA with the page cache's reference the only one.
fn precondition(
    era: Era,
) -> (
    Arc<crate::mm::PageCache>,
    Arc<AddressSpace>,
    Arc<AddressSpace>,
    Pfn,
) {
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
    (cache, a, b, pfn)
}

/// B's side (CPU4 then CPU3): take a frame for page 0, start WB on it and redirty it, tell
/// the completion side which frame WB is on (`None`: no frame to reuse in this interleaving),
/// then write_cache_pages(WB_SYNC_ALL), whose BUG_ON is S2's.
fn new_owner_writes(b: &AddressSpace, tx: &mpsc::Sender<Option<Pfn>>) {
    let page = match find_or_create_page(b, 0) {
        Ok(p) => p,
        Err(FsError::NoMemory) => {
            // The frame is still A's (or pinned by WA's end): nothing to reuse.
            tx.send(None).expect("send");
            return;
        }
        Err(e) => panic!("unexpected {e}"),
    };
    set_page_dirty(b, page.page());
    clear_page_dirty_for_io(page.page());
    set_page_writeback(page.page()); // WB on the (maybe reused) frame
    unlock_page(page.page());
    set_page_dirty(b, page.page());
    tx.send(Some(page.pfn())).expect("send");
    let mut wbc = WritebackControl::range(SyncMode::All, 0, u64::MAX);
    // Past the BUG_ON the outcome is decided; a writepage that only unlocks keeps the model
    // small.
    write_cache_page(b, &page, &mut wbc, &mut |_, p, _| {
        unlock_page(p.page());
        Ok(())
    });
}

fn s2(era: Era) {
    let (cache, a, b, pfn) = precondition(era);
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
    let cpu34 = loom::thread::spawn(move || new_owner_writes(&b3, &tx));
    for t in [cpu1, cpu2, cpu34] {
        t.join().expect("model thread");
    }
}

/// The shortest form of S2: the steps of CPU2, CPU4 and CPU3 run in the order SEMANTICS 5 lists
/// them on one thread (truncate A, then B takes the frame, starts WB and redirties, then wcp),
/// and the completion thread that ends WA later ends WB too, as one device completion thread
/// would. CPU1's whole end_page_writeback still races with every step of the other thread.
///
/// What it leaves out, and why that hides nothing S2 is about: B allocating before truncate is
/// done (the allocation then fails, or reclaim takes the frame: a different freer, which
/// [`s2`] still models), and WB ending while WA's end is still running (WB's end is a legitimate
/// wake; it can only shorten the window in which a stale one finds WB set).
fn s2_min(era: Era) {
    let (cache, a, b, pfn) = precondition(era);
    let (tx, rx) = mpsc::channel::<Option<Pfn>>();
    let c1 = Arc::clone(&cache);
    let cpu1 = loom::thread::spawn(move || {
        end_page_writeback(c1.page(pfn)); // WA's I/O completes
        if let Some(p) = rx.recv().expect("recv") {
            end_page_writeback(c1.page(p)); // then WB's, on the same completion thread
        }
    });
    let (a2, b2) = (Arc::clone(&a), Arc::clone(&b));
    let cpu234 = loom::thread::spawn(move || {
        truncate_pagecache(&a2, 0);
        new_owner_writes(&b2, &tx);
    });
    for t in [cpu1, cpu234] {
        t.join().expect("model thread");
    }
}

#[test]
fn s2_min_all_eras() {
    for era in eras() {
        let bound = scenario_bound(era.has_s2_bug(), 3);
        let found = explore(&format!("S2min {era}"), bound, move || s2_min(era));
        check_era("S2min", era, era.has_s2_bug(), &found);
    }
}

#[test]
fn s2_all_eras() {
    for era in eras() {
        let bound = scenario_bound(era.has_s2_bug(), 1);
        let found = explore(&format!("S2 {era}"), bound, move || s2(era));
        check_era("S2", era, era.has_s2_bug(), &found);
    }
}
