//! Counters of the page cache, for `user.fatcache.stats`, `fatcache stats` and the repro table.
//!
//! Bookkeeping only: plain counters on `sync::unchecked` atomics with Relaxed ordering. Nothing
//! in the protocol reads them, so no interleaving depends on them and loom need not see them.

use crate::mm::{PG, PageCache};
use crate::sync::unchecked::{AtomicU64, Ordering};

/// One monotonic or up/down counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Add one.
    #[inline]
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    /// Add `n`.
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    /// Subtract one (gauges).
    #[inline]
    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
    /// Current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Live counters of one cache.
#[derive(Debug, Default)]
pub struct Stats {
    pub(crate) frames_free: Counter,
    pub(crate) nr_dirty: Counter,
    pub(crate) nr_writeback: Counter,
    pub(crate) waits_locked: Counter,
    pub(crate) waits_writeback: Counter,
    pub(crate) wakes_locked: Counter,
    pub(crate) wakes_writeback: Counter,
    pub(crate) stale_wakes: Counter,
    pub(crate) wb_starts: Counter,
    pub(crate) wb_ends: Counter,
    pub(crate) reclaimed: Counter,
    pub(crate) alloc_failures: Counter,
    pub(crate) alloc_throttled: Counter,
    pub(crate) bad_pages: Counter,
    pub(crate) throttled: Counter,
}

impl Stats {
    pub(crate) fn waits(&self, bit: PG) -> &Counter {
        if bit == PG::Writeback {
            &self.waits_writeback
        } else {
            &self.waits_locked
        }
    }
    pub(crate) fn wakes(&self, bit: PG) -> &Counter {
        if bit == PG::Writeback {
            &self.wakes_writeback
        } else {
            &self.wakes_locked
        }
    }
    pub(crate) fn snapshot(&self, cache: &PageCache) -> StatsSnapshot {
        StatsSnapshot {
            era: cache.era().name(),
            frames: cache.nr_frames() as u64,
            frames_free: self
                .frames_free
                .get()
                .wrapping_add(cache.nr_frames() as u64),
            nr_dirty: self.nr_dirty.get(),
            nr_writeback: self.nr_writeback.get(),
            waits_locked: self.waits_locked.get(),
            waits_writeback: self.waits_writeback.get(),
            wakes_locked: self.wakes_locked.get(),
            wakes_writeback: self.wakes_writeback.get(),
            stale_wakes: self.stale_wakes.get(),
            wb_starts: self.wb_starts.get(),
            wb_ends: self.wb_ends.get(),
            reclaimed: self.reclaimed.get(),
            alloc_failures: self.alloc_failures.get(),
            alloc_throttled: self.alloc_throttled.get(),
            bad_pages: self.bad_pages.get(),
            throttled: self.throttled.get(),
            bug_hits: cache.bug().total(),
        }
    }
}

/// A copy of the counters at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Era name.
    pub era: &'static str,
    /// Frames in the cache.
    pub frames: u64,
    /// Frames on the free list.
    pub frames_free: u64,
    /// Pages with PG_dirty set.
    pub nr_dirty: u64,
    /// Pages with PG_writeback set.
    pub nr_writeback: u64,
    /// Sleeps on PG_locked.
    pub waits_locked: u64,
    /// Sleeps on PG_writeback.
    pub waits_writeback: u64,
    /// Entries woken for PG_locked.
    pub wakes_locked: u64,
    /// Entries woken for PG_writeback.
    pub wakes_writeback: u64,
    /// Writeback waits woken by a wake from an older writeback epoch while the writeback
    /// waited for was still in flight: `while` eras wait again, `if` eras return on it.
    pub stale_wakes: u64,
    /// Writebacks started.
    pub wb_starts: u64,
    /// Writebacks ended.
    pub wb_ends: u64,
    /// Frames freed by reclaim.
    pub reclaimed: u64,
    /// Allocations that found no frame even after reclaim and waiting (ENOMEM); readahead's,
    /// which never wait, are not counted.
    pub alloc_failures: u64,
    /// Allocations that had to wait for writeback or I/O to free a frame.
    pub alloc_throttled: u64,
    /// Frames leaked because they were freed in a bad state.
    pub bad_pages: u64,
    /// Writers that balance_dirty_pages made pause (over the dirty limit).
    pub throttled: u64,
    /// BUG and VM_BUG hits.
    pub bug_hits: u64,
}
