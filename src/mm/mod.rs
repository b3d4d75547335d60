//! The page cache: frames, flags, wait queues, mappings, writeback, truncate, reclaim.
//!
//! Models: mm/filemap.c, mm/page-writeback.c, mm/truncate.c, include/linux/page-flags.h,
//! include/linux/pagemap.h, of the kernel era chosen at construction ([`Era`]).
//!
//! `mm` knows nothing of FAT, FUSE or files: it reaches a filesystem only through
//! [`AddressSpaceOps`], the way the kernel calls `mapping->a_ops`.
//!
//! # Objects
//! * [`PageCache`]: the "kernel": a fixed array of frames (like `mem_map`), the free list, the
//!   LRU, the 256-bucket wait table, the era, the BUG reporter, statistics and test hooks.
//! * [`Page`]: a frame, named by number, with no reference held (a `struct page *`).
//!   [`PageRef`]: the same with a reference held, dropped (`put_page`) when it goes.
//! * [`AddressSpace`]: one file's (or the block device's) index -> frame map with
//!   DIRTY / WRITEBACK / TOWRITE tags and sticky errors.
//!
//! # Lock ordering
//! ```text
//! PG_locked (page lock, may sleep)
//!   i_pages lock (AddressSpace)           test_set/test_clear_page_writeback, tags, delete
//!     wait-table bucket lock              ALT-A only: clear+wake inside i_pages
//!     LRU lock                            delete_from_page_cache -> lru_del
//!       free-list lock
//! wait-table bucket lock                  waiters and wakers; nothing nests inside it except
//!                                         flag RMWs and unpark
//! ```
//! Nobody takes a page lock, an i_pages lock or the LRU lock while holding a bucket lock, so the
//! ALT-A nesting cannot deadlock. Reclaim takes page locks only with trylock, while holding no
//! other lock.

pub mod aops;
pub mod era;
pub mod filemap;
pub mod flags;
pub mod history;
pub mod page;
pub mod stats;
pub mod truncate;
pub mod vmscan;
pub mod waitqueue;
pub mod writeback;
pub mod xarray;

#[cfg(all(test, not(loom)))]
pub(crate) mod testing;
#[cfg(test)]
mod tests;

use std::time::Duration;

pub use aops::AddressSpaceOps;
pub use era::{ALL_ERAS, Era, EraSwitches};
pub use filemap::AddressSpace;
pub use flags::PG;
pub use page::{Page, PageRef, Pfn};
pub use stats::StatsSnapshot;
pub use writeback::{BackgroundWriteback, SyncMode, WritebackControl};

use crate::bug::{BugReporter, OnBug};
use crate::mm::filemap::MappingTable;
use crate::mm::flags::FlagLayout;
use crate::mm::history::{FlagPack, History};
use crate::mm::page::Frame;
use crate::mm::stats::Stats;
use crate::mm::vmscan::{Lru, Throttle};
use crate::mm::waitqueue::WaitTable;
use crate::sync::unchecked;
use crate::sync::{Arc, Mutex};

/// Bytes in a page.
pub const PAGE_SIZE: usize = 4096;
/// log2 of [`PAGE_SIZE`].
pub const PAGE_SHIFT: u32 = 12;

/// Named places where a test (or the mount's injection options) can stall a thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookPoint {
    /// end_page_writeback, after PG_writeback is clear and before the wake: the race window.
    /// Also where `wake_delay` sleeps.
    EndWritebackWindow,
    /// A waiter is queued on (frame, bit) and about to sleep.
    WaitSleep,
    /// write_cache_pages: after tagging TOWRITE, before the first lookup (no frame yet: the
    /// hook gets `Pfn(u32::MAX)`).
    WcpAfterTag,
    /// write_cache_pages: a page was looked up, before lock_page.
    WcpBeforeLock,
    /// truncate pass 2: after the writeback wait, before the page is deleted.
    TruncateAfterWait,
}

/// A test hook: called with the point and the frame.
pub type Hook = Arc<dyn Fn(HookPoint, Pfn) + Send + Sync>;

/// How to build a [`PageCache`].
#[derive(Clone)]
pub struct CacheConfig {
    /// Kernel era.
    pub era: Era,
    /// Number of page frames (cache size / 4 KiB).
    pub frames: usize,
    /// What a failed BUG_ON does.
    pub on_bug: OnBug,
    /// Record per-frame event histories (costs a few ns per flag change).
    pub history: bool,
    /// Stall between clearing PG_writeback and the wake (`wake_delay_us`).
    pub wake_delay: Duration,
    /// Test hook, called at every [`HookPoint`].
    pub hook: Option<Hook>,
    /// Percent of the frames that may be dirty or under writeback before writers are
    /// throttled (vm.dirty_ratio).
    pub dirty_ratio: u32,
    /// Percent at which background writeback starts (vm.dirty_background_ratio).
    pub dirty_background_ratio: u32,
}

impl std::fmt::Debug for CacheConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheConfig")
            .field("era", &self.era)
            .field("frames", &self.frames)
            .field("on_bug", &self.on_bug)
            .field("history", &self.history)
            .field("wake_delay", &self.wake_delay)
            .field("hook", &self.hook.is_some())
            .field("dirty_ratio", &self.dirty_ratio)
            .field("dirty_background_ratio", &self.dirty_background_ratio)
            .finish()
    }
}

impl CacheConfig {
    /// Defaults: the given era and size, `on_bug=abort`, histories on, no delay, no hook,
    /// the kernel's default dirty ratios (20 and 10).
    pub fn new(era: Era, frames: usize) -> Self {
        CacheConfig {
            era,
            frames,
            on_bug: OnBug::Abort,
            history: true,
            wake_delay: Duration::ZERO,
            hook: None,
            dirty_ratio: 20,
            dirty_background_ratio: 10,
        }
    }
}

/// The page cache of one mount: frames, wait table, era, reporter.
pub struct PageCache {
    era: Era,
    sw: EraSwitches,
    pub(crate) frames: Box<[Frame]>,
    pub(crate) free: Mutex<Vec<u32>>,
    pub(crate) lru: Mutex<Lru>,
    /// Allocators waiting for reclaim to free a frame.
    pub(crate) throttle: Throttle,
    pub(crate) waitq: WaitTable,
    pub(crate) mappings: MappingTable,
    next_mapping: unchecked::AtomicU64,
    bug: BugReporter,
    pub(crate) stats: Stats,
    hook: Option<Hook>,
    wake_delay_ns: unchecked::AtomicU64,
    /// (background, limit) thresholds in pages, from the dirty ratios.
    dirty_thresholds: (u64, u64),
    /// The flusher balance_dirty_pages kicks, once a mount has started one.
    flusher: unchecked::RwLock<Option<std::sync::Weak<dyn BackgroundWriteback>>>,
    /// Per-frame event rings, apart from the frames so that a frame stays a few cache lines.
    histories: Option<Box<[History]>>,
    /// How the histories keep this era's flags.
    hist_pack: FlagPack,
    clock: quanta::Clock,
    start_raw: u64,
}

/// The background and hard limits of `frames` frames: at least one page each, and the
/// background one below the hard one, as domain_dirty_limits() keeps them.
fn dirty_thresholds(frames: usize, background_ratio: u32, ratio: u32) -> (u64, u64) {
    let frames = frames as u64;
    let limit = (frames * u64::from(ratio.min(100)) / 100).max(2);
    let background = (frames * u64::from(background_ratio) / 100).clamp(1, limit - 1);
    (background, limit)
}

impl std::fmt::Debug for PageCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageCache")
            .field("era", &self.era)
            .field("frames", &self.frames.len())
            .finish_non_exhaustive()
    }
}

impl PageCache {
    /// Build a cache with `cfg.frames` free frames.
    pub fn new(cfg: CacheConfig) -> Result<Arc<PageCache>, crate::error::FsError> {
        if cfg.frames == 0 || cfg.frames >= u32::MAX as usize {
            return Err(crate::error::FsError::Invalid(
                "cache size must be 1 .. 2^32-1 frames",
            ));
        }
        let sw = cfg.era.switches();
        let frames: Box<[Frame]> = (0..cfg.frames).map(|_| Frame::new()).collect();
        // LIFO free list, lowest frame on top: a freed frame is the next one handed out, which
        // is what lets a just-freed frame go to another mapping at once (SEMANTICS S2).
        let free: Vec<u32> = (0..cfg.frames as u32).rev().collect();
        // A TSC-based clock: reading it costs a few ns where clock_gettime costs 20+, and every
        // flag change records a timestamp. Calibrating one costs far more than a small cache
        // (a loom model builds a cache per interleaving), so the process calibrates once and
        // every cache gets a copy.
        static CLOCK: std::sync::OnceLock<quanta::Clock> = std::sync::OnceLock::new();
        let clock = CLOCK.get_or_init(quanta::Clock::new).clone();
        Ok(Arc::new(PageCache {
            era: cfg.era,
            sw,
            lru: Mutex::new(Lru::new(cfg.frames)),
            throttle: Throttle::default(),
            frames,
            free: Mutex::new(free),
            waitq: WaitTable::new(),
            mappings: MappingTable::default(),
            next_mapping: unchecked::AtomicU64::new(1),
            bug: BugReporter::new(cfg.on_bug),
            stats: Stats::default(),
            hook: cfg.hook,
            wake_delay_ns: unchecked::AtomicU64::new(
                u64::try_from(cfg.wake_delay.as_nanos()).unwrap_or(u64::MAX),
            ),
            dirty_thresholds: dirty_thresholds(
                cfg.frames,
                cfg.dirty_background_ratio,
                cfg.dirty_ratio,
            ),
            flusher: unchecked::RwLock::new(None),
            histories: cfg
                .history
                .then(|| (0..cfg.frames).map(|_| History::default()).collect()),
            hist_pack: FlagPack::new(sw.layout),
            start_raw: clock.raw(),
            clock,
        }))
    }

    /// The era this cache follows.
    pub fn era(&self) -> Era {
        self.era
    }

    /// The era's switches.
    pub fn switches(&self) -> &EraSwitches {
        &self.sw
    }

    /// The era's flag bit positions.
    pub fn layout(&self) -> &'static FlagLayout {
        self.sw.layout
    }

    /// Mask of one flag in this era's layout.
    #[inline]
    pub fn mask(&self, f: PG) -> u64 {
        self.sw.layout.mask(f)
    }

    /// The BUG reporter (hit counts, last report, policy).
    pub fn bug(&self) -> &BugReporter {
        &self.bug
    }

    /// Number of frames.
    pub fn nr_frames(&self) -> usize {
        self.frames.len()
    }

    /// A frame by number, with no reference taken (the caller knows it is safe to look at).
    pub fn page(&self, pfn: Pfn) -> Page<'_> {
        Page::new(self, pfn)
    }

    /// Waiters queued on (frame, bit) right now.
    pub fn queued_waiters(&self, pfn: Pfn, bit: PG) -> usize {
        self.waitq.queued(pfn, self.layout().bit(bit))
    }

    /// Change the stall between clearing PG_writeback and the wake.
    pub fn set_wake_delay(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        // Relaxed: an injection knob; a thread seeing the old value for a while is harmless.
        self.wake_delay_ns.store(ns, unchecked::Ordering::Relaxed);
    }

    /// Background and hard dirty thresholds, in pages (dirty plus writeback).
    pub fn dirty_thresholds(&self) -> (u64, u64) {
        self.dirty_thresholds
    }

    /// Sets (or with `None` clears) the flusher that throttled writers kick and wait for.
    pub fn set_background_writeback(&self, f: Option<std::sync::Weak<dyn BackgroundWriteback>>) {
        *self.flusher.write() = f;
    }

    /// The flusher, if one is running.
    pub(crate) fn background_writeback(&self) -> Option<Arc<dyn BackgroundWriteback>> {
        self.flusher
            .read()
            .as_ref()
            .and_then(std::sync::Weak::upgrade)
    }

    /// A consistent-enough copy of the counters.
    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot(self)
    }

    pub(crate) fn new_mapping_id(&self) -> u64 {
        // Relaxed: ids only need to be unique.
        self.next_mapping.fetch_add(1, unchecked::Ordering::Relaxed)
    }

    /// Run the test hook and the configured stall at `point`.
    #[inline]
    pub(crate) fn hook(&self, point: HookPoint, pfn: Pfn) {
        if point == HookPoint::EndWritebackWindow {
            let ns = self.wake_delay_ns.load(unchecked::Ordering::Relaxed);
            if ns != 0 {
                std::thread::sleep(Duration::from_nanos(ns));
            }
        }
        if let Some(h) = &self.hook {
            h(point, pfn);
        }
    }

    /// The event ring of a frame, when histories are on.
    #[inline]
    pub(crate) fn history(&self, pfn: Pfn) -> Option<&History> {
        self.histories.as_ref().map(|h| &h[pfn.0 as usize])
    }

    /// How the histories keep this era's flags.
    #[inline]
    pub(crate) fn hist_pack(&self) -> &FlagPack {
        &self.hist_pack
    }

    /// A raw timestamp for the history (convert with [`PageCache::raw_to_ns`]).
    #[inline]
    pub(crate) fn now_raw(&self) -> u64 {
        self.clock.raw()
    }

    /// Nanoseconds since the cache was built, from a raw timestamp.
    pub(crate) fn raw_to_ns(&self, raw: u64) -> u64 {
        self.clock.delta_as_nanos(self.start_raw, raw)
    }
}
