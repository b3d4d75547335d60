//! Removing pages from a mapping.
//!
//! Models: mm/truncate.c truncate_inode_pages_range(), truncate_inode_page(),
//! truncate_cleanup_page(), truncate_pagecache() (v5.10).
//!
//! Truncate is what protects a frame under writeback from being freed: it waits for
//! PG_writeback before deleting. Before 073861ed77b6 that wait was the only protection, and a
//! wait that sees the bit already clear (end_page_writeback's clear done, its wake not yet)
//! lets the frame be freed and reused while the completion still has to touch it (SEMANTICS S2).

use crate::mm::filemap::{AddressSpace, delete_from_page_cache, find_lock_page};
use crate::mm::page::{PageRef, Pfn};
use crate::mm::waitqueue::{lock_page, trylock_page, unlock_page};
use crate::mm::writeback::{cancel_dirty_page, wait_on_page_writeback};
use crate::mm::{HookPoint, PAGE_SHIFT, PAGE_SIZE};

/// truncate_cleanup_page + delete: throw away a locked page's contents and drop it.
fn truncate_inode_page(mapping: &AddressSpace, page: &PageRef<'_>) {
    if page.mapping_id() != mapping.id() {
        return;
    }
    cancel_dirty_page(page.page());
    delete_from_page_cache(mapping, page.page());
}

/// Pages of the mapping with index in `[start, end)`, with references, at most `max`.
fn lookup_range<'m>(
    mapping: &'m AddressSpace,
    start: u64,
    end: u64,
    max: usize,
) -> Vec<PageRef<'m>> {
    let found: Vec<(u64, u32)> = mapping.i_pages_range(start, end, max);
    found
        .into_iter()
        .filter_map(|(idx, pfn)| {
            let p = mapping.cache().page(Pfn(pfn)).try_get()?;
            (p.mapping_id() == mapping.id() && p.index() == idx).then_some(p)
        })
        .collect()
}

/// truncate_inode_pages_range: remove the pages covering bytes `[lstart, lend]` (`lend` =
/// `u64::MAX` for "to the end"), zeroing the partial pages at either edge.
///
/// # Context
/// May sleep: waits for page locks and for writeback of every page it removes.
pub fn truncate_inode_pages_range(mapping: &AddressSpace, lstart: u64, lend: u64) {
    let page_mask = PAGE_SIZE as u64 - 1;
    let partial_start = (lstart & page_mask) as usize;
    let mut partial_end = (lend.wrapping_add(1) & page_mask) as usize;
    let start = lstart.div_ceil(PAGE_SIZE as u64);
    let end = if lend == u64::MAX {
        u64::MAX
    } else {
        (lend + 1) >> PAGE_SHIFT
    };

    // Pass 1: non-blocking. Locked or under-writeback pages are left for pass 2.
    let mut index = start;
    while index < end {
        let batch = lookup_range(mapping, index, end, 15);
        if batch.is_empty() {
            break;
        }
        for page in &batch {
            index = page.index() + 1;
            if !trylock_page(page.page()) {
                continue;
            }
            if page.writeback() || page.mapping_id() != mapping.id() {
                unlock_page(page.page());
                continue;
            }
            truncate_inode_page(mapping, page);
            unlock_page(page.page());
        }
    }

    // The partial pages at the edges keep their outside part and get the inside zeroed.
    if partial_start != 0 {
        if let Some(page) = find_lock_page(mapping, start - 1) {
            let mut top = PAGE_SIZE;
            if start > end {
                // Truncation within a single page.
                top = partial_end;
                partial_end = 0;
            }
            wait_on_page_writeback(page.page());
            page.with_data_mut(|d| d[partial_start..top].fill(0));
            unlock_page(page.page());
        }
    }
    if partial_end != 0 {
        if let Some(page) = find_lock_page(mapping, end) {
            wait_on_page_writeback(page.page());
            page.with_data_mut(|d| d[..partial_end].fill(0));
            unlock_page(page.page());
        }
    }
    if start >= end {
        return;
    }

    // Pass 2: blocking, until a whole pass from `start` finds nothing.
    let mut index = start;
    loop {
        let batch = lookup_range(mapping, index, end, 15);
        if batch.is_empty() {
            if index == start {
                break;
            }
            index = start;
            continue;
        }
        for page in &batch {
            index = page.index() + 1;
            lock_page(page.page());
            wait_on_page_writeback(page.page());
            mapping
                .cache()
                .hook(HookPoint::TruncateAfterWait, page.pfn());
            truncate_inode_page(mapping, page);
            unlock_page(page.page());
        }
    }
}

/// truncate_pagecache: drop every page from byte `newsize` on (the page holding `newsize` keeps
/// its head and has the tail zeroed).
pub fn truncate_pagecache(mapping: &AddressSpace, newsize: u64) {
    truncate_inode_pages_range(mapping, newsize, u64::MAX);
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::mm::filemap::{end_page_writeback, find_get_page, find_or_create_page};
    use crate::mm::testing::{DeferredAops, SyncAops, cache_for};
    use crate::mm::writeback::{set_page_dirty, set_page_writeback};
    use crate::mm::{ALL_ERAS, Era};
    use crate::sync::Arc;

    fn fill(m: &AddressSpace, n: u64) {
        for i in 0..n {
            let p = find_or_create_page(m, i).expect("page");
            p.with_data_mut(|d| d.fill(0xAA));
            set_page_dirty(m, *p);
            unlock_page(*p);
        }
    }

    #[test]
    fn shrink_drops_whole_pages_and_zeroes_the_partial_one() {
        let c = cache_for(Era::V5_10, 16);
        let m = AddressSpace::new(&c, Arc::new(SyncAops::default()));
        fill(&m, 4);
        truncate_pagecache(&m, 4096 + 100);
        assert_eq!(m.nrpages(), 2);
        let p = find_get_page(&m, 1).expect("partial page stays");
        p.with_data(|d| {
            assert!(d[..100].iter().all(|b| *b == 0xAA));
            assert!(d[100..].iter().all(|b| *b == 0));
        });
        assert!(find_get_page(&m, 2).is_none());
        assert_eq!(
            c.stats().nr_dirty,
            2,
            "cancelled pages no longer count as dirty"
        );
        assert_eq!(c.stats().frames_free, 14);
    }

    #[test]
    fn hole_inside_one_page_zeroes_just_that_range() {
        let c = cache_for(Era::V5_10, 4);
        let m = AddressSpace::new(&c, Arc::new(SyncAops::default()));
        fill(&m, 1);
        truncate_inode_pages_range(&m, 10, 19);
        let p = find_get_page(&m, 0).expect("page");
        p.with_data(|d| {
            assert_eq!(d[9], 0xAA);
            assert!(d[10..20].iter().all(|b| *b == 0));
            assert_eq!(d[20], 0xAA);
        });
    }

    #[test]
    fn truncate_waits_for_writeback_in_every_era() {
        for era in ALL_ERAS {
            let c = cache_for(era, 4);
            let aops = Arc::new(DeferredAops::default());
            let m = AddressSpace::new(&c, aops.clone());
            let p = find_or_create_page(&m, 0).expect("page");
            set_page_writeback(*p);
            unlock_page(*p);
            let pfn = p.pfn();
            drop(p);
            std::thread::scope(|s| {
                s.spawn(|| {
                    let page = c.page(pfn);
                    while c
                        .waitq
                        .queued(pfn, c.layout().bit(crate::mm::PG::Writeback))
                        == 0
                    {
                        std::thread::yield_now();
                    }
                    end_page_writeback(page);
                });
                truncate_pagecache(&m, 0);
            });
            assert_eq!(m.nrpages(), 0, "{era}");
            assert_eq!(c.stats().frames_free, 4, "{era}");
            assert_eq!(c.bug().total(), 0, "{era}");
        }
    }
}
