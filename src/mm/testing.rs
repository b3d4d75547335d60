//! Test helpers for `mm`'s own unit tests: caches, and address-space operations whose I/O is
//! in memory (mm cannot use `dev`, which sits above it).

use std::collections::HashMap;

use crate::bug::OnBug;
use crate::error::FsError;
use crate::mm::aops::AddressSpaceOps;
use crate::mm::filemap::{AddressSpace, end_page_writeback};
use crate::mm::page::{PageRef, Pfn};
use crate::mm::waitqueue::unlock_page;
use crate::mm::writeback::{WritebackControl, set_page_writeback};
use crate::mm::{CacheConfig, Era, PageCache};
use crate::sync::Arc;
use crate::sync::unchecked::Mutex;

/// A cache whose BUGs panic the test.
pub(crate) fn cache_for(era: Era, frames: usize) -> Arc<PageCache> {
    let mut cfg = CacheConfig::new(era, frames);
    cfg.on_bug = OnBug::Panic;
    PageCache::new(cfg).expect("cache")
}

/// Writes complete synchronously on the writing thread: set writeback, copy, unlock, end.
#[derive(Default)]
pub(crate) struct SyncAops {
    store: Mutex<HashMap<u64, Vec<u8>>>,
    fail_at: Option<u64>,
}

impl SyncAops {
    /// Every writepage of page `index` fails with EIO.
    pub(crate) fn failing_at(index: u64) -> Self {
        SyncAops {
            store: Mutex::new(HashMap::new()),
            fail_at: Some(index),
        }
    }

    /// What was written, by page index.
    pub(crate) fn written(&self) -> HashMap<u64, Vec<u8>> {
        self.store.lock().clone()
    }
}

impl AddressSpaceOps for SyncAops {
    fn writepage(
        &self,
        _mapping: &AddressSpace,
        page: &PageRef<'_>,
        _wbc: &mut WritebackControl,
    ) -> Result<(), FsError> {
        if self.fail_at == Some(page.index()) {
            unlock_page(page.page());
            return Err(FsError::Corrupted("injected write failure"));
        }
        set_page_writeback(page.page());
        let data = page.with_data(|d| d.to_vec());
        self.store.lock().insert(page.index(), data);
        unlock_page(page.page());
        end_page_writeback(page.page());
        Ok(())
    }
}

/// Writes stay in flight until the test completes them.
#[derive(Default)]
pub(crate) struct DeferredAops {
    in_flight: Mutex<Vec<Pfn>>,
    started: Mutex<u64>,
}

impl DeferredAops {
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.lock().len()
    }
    pub(crate) fn started(&self) -> u64 {
        *self.started.lock()
    }
    /// End every writeback in flight, in submission order.
    pub(crate) fn complete_all(&self, cache: &PageCache) {
        let v: Vec<Pfn> = std::mem::take(&mut *self.in_flight.lock());
        for pfn in v {
            end_page_writeback(cache.page(pfn));
        }
    }
}

impl AddressSpaceOps for DeferredAops {
    fn writepage(
        &self,
        _mapping: &AddressSpace,
        page: &PageRef<'_>,
        _wbc: &mut WritebackControl,
    ) -> Result<(), FsError> {
        set_page_writeback(page.page());
        unlock_page(page.page());
        self.in_flight.lock().push(page.pfn());
        *self.started.lock() += 1;
        Ok(())
    }
}
