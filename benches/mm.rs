//! Criterion benchmarks of the page-cache hot paths in `fatcache::mm`.
//!
//! What is measured, and the target for each:
//!
//! * `lock_unlock/uncontended/{history_on,history_off}`: `lock_page` + `unlock_page` of one
//!   uncontended frame, era v5.10 (clear-bit unlock), with and without per-frame event
//!   histories; `lock_unlock/uncontended_xor/...` is the same in era v6.9 (XOR unlock).
//!   Target: <= 15 ns.
//! * `find_get_page/hit`: looking up a cached page among 10,000 and dropping the reference.
//!   Target: <= 60 ns.
//! * `tagged_lookup/1k_dirty_of_{1k,100k}_cached`: one batch of 15 DIRTY-tagged pages from index
//!   0, with 1,000 dirty pages among 1,000 or 100,000 cached. The cost should follow the tagged
//!   pages, not the cached ones: both figures should be about the same.
//! * `write_cache_pages/100k_dirty`: `filemap_fdatawrite_range` (WB_SYNC_ALL, through
//!   `write_cache_pages`) over 100,000 dirty pages whose writepage completes at once on the
//!   calling thread. Re-dirtying the pages is setup, outside the timing. Target: <= 20 ms.
//! * `end_page_writeback/{no_waiter,one_waiter}`: ending writeback of one page, with nobody
//!   waiting, or with one other thread asleep in `wait_on_page_bit(PG::Writeback)`; the second
//!   includes waking that thread. Only the `end_page_writeback` call is timed.
//!
//! Unless stated otherwise caches use era v5.10 and `CacheConfig::new`'s defaults (histories
//! on), and are large enough that nothing is ever reclaimed.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::thread;
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{BatchSize, BenchmarkGroup, BenchmarkId, Criterion};
use fatcache::FsError;
use fatcache::mm::filemap::{
    PAGEVEC_SIZE, Tag, end_page_writeback, filemap_fdatawrite_range, find_get_page,
    find_get_pages_range_tag, find_or_create_page,
};
use fatcache::mm::waitqueue::{lock_page, unlock_page, wait_on_page_bit};
use fatcache::mm::writeback::{set_page_dirty, set_page_writeback};
use fatcache::mm::{
    AddressSpace, AddressSpaceOps, CacheConfig, Era, PG, Page, PageCache, PageRef, Pfn,
    WritebackControl,
};

/// Pages cached for `find_get_page/hit`.
const LOOKUP_PAGES: u64 = 10_000;
/// Step between looked-up indexes: a prime, so the walk visits every page before repeating.
const LOOKUP_STRIDE: u64 = 7919;
/// Dirty pages in each `tagged_lookup` mapping.
const TAGGED_DIRTY: u64 = 1_000;
/// Dirty pages written back by `write_cache_pages/100k_dirty`.
const WRITEBACK_PAGES: u64 = 100_000;
/// Pages the `no_waiter` case puts under writeback before timing their ends as one batch.
const END_BATCH: u64 = 1_024;
/// Frames beyond the pages a bench caches, so no allocation ever has to reclaim.
const SPARE_FRAMES: usize = 1_024;

/// A filesystem whose writes complete at once, on the thread that submits them.
struct CompleteAtOnce;

impl AddressSpaceOps for CompleteAtOnce {
    fn writepage(
        &self,
        _mapping: &AddressSpace,
        page: &PageRef<'_>,
        _wbc: &mut WritebackControl,
    ) -> Result<(), FsError> {
        set_page_writeback(page.page());
        unlock_page(page.page());
        end_page_writeback(page.page());
        Ok(())
    }
}

/// A cache of `frames` frames in `era`, with or without event histories.
fn new_cache(era: Era, frames: usize, history: bool) -> Arc<PageCache> {
    let cfg = CacheConfig {
        history,
        ..CacheConfig::new(era, frames)
    };
    PageCache::new(cfg).expect("frame count is within 1 .. 2^32-1")
}

/// A v5.10 cache (histories on) with room for `pages` pages and some spare frames.
fn cache_for_pages(pages: u64) -> Arc<PageCache> {
    let pages = usize::try_from(pages).expect("page count fits in usize");
    new_cache(Era::V5_10, pages + SPARE_FRAMES, true)
}

/// An empty mapping written back by [`CompleteAtOnce`].
fn new_mapping(cache: &Arc<PageCache>) -> AddressSpace {
    AddressSpace::new(cache, Arc::new(CompleteAtOnce))
}

/// Cache pages `0..pages` (clean, unlocked); their frames in index order.
fn populate(mapping: &AddressSpace, pages: u64) -> Vec<Pfn> {
    (0..pages)
        .map(|index| {
            let page = find_or_create_page(mapping, index).expect("the cache has a free frame");
            unlock_page(*page);
            page.pfn()
        })
        .collect()
}

/// Mark every page in `pfns` dirty (a no-op for those already dirty).
fn dirty<'p>(mapping: &AddressSpace, pfns: impl IntoIterator<Item = &'p Pfn>) {
    let cache = mapping.cache();
    for &pfn in pfns {
        set_page_dirty(mapping, cache.page(pfn));
    }
}

/// Start writeback of an unlocked, idle page, the way writepage does: locked, then unlocked.
fn start_writeback(page: Page<'_>) {
    lock_page(page);
    set_page_writeback(page);
    unlock_page(page);
}

/// The routine of `lock_unlock`.
fn lock_unlock(page: Page<'_>) {
    lock_page(page);
    unlock_page(page);
}

/// One `lock_unlock` case: a fresh 16-frame cache in `era`, one allocated frame.
fn lock_unlock_case(g: &mut BenchmarkGroup<'_, WallTime>, name: &str, era: Era, history: bool) {
    let cache = new_cache(era, 16, history);
    let page = cache.alloc_page().expect("a new cache has free frames");
    let param = if history { "history_on" } else { "history_off" };
    g.bench_function(BenchmarkId::new(name, param), |b| {
        b.iter(|| lock_unlock(black_box(*page)));
    });
}

fn bench_lock_unlock(c: &mut Criterion) {
    let mut g = c.benchmark_group("lock_unlock");
    g.warm_up_time(Duration::from_millis(500));
    g.measurement_time(Duration::from_secs(2));
    for (name, era) in [("uncontended", Era::V5_10), ("uncontended_xor", Era::V6_9)] {
        for history in [true, false] {
            lock_unlock_case(&mut g, name, era, history);
        }
    }
    g.finish();
}

/// The next index of the rotating lookup.
fn next_lookup_index(index: u64) -> u64 {
    (index + LOOKUP_STRIDE) % LOOKUP_PAGES
}

fn bench_find_get_page(c: &mut Criterion) {
    let cache = cache_for_pages(LOOKUP_PAGES);
    let mapping = new_mapping(&cache);
    populate(&mapping, LOOKUP_PAGES);
    let mut g = c.benchmark_group("find_get_page");
    g.warm_up_time(Duration::from_millis(500));
    g.measurement_time(Duration::from_secs(2));
    let mut index = 0;
    g.bench_function("hit", |b| {
        b.iter(|| {
            index = next_lookup_index(index);
            // The PageRef is dropped (put_page) inside the timed loop.
            find_get_page(&mapping, black_box(index)).expect("every index is cached")
        });
    });
    g.finish();
}

/// The first batch of DIRTY pages, from index 0 (what each `tagged_lookup` iteration does).
fn first_dirty_batch(mapping: &AddressSpace) -> Vec<PageRef<'_>> {
    let mut index = 0;
    find_get_pages_range_tag(mapping, &mut index, u64::MAX, Tag::Dirty, PAGEVEC_SIZE)
}

/// One `tagged_lookup` case: [`TAGGED_DIRTY`] dirty pages spread evenly over `cached`.
fn tagged_lookup_case(g: &mut BenchmarkGroup<'_, WallTime>, name: &str, cached: u64) {
    let cache = cache_for_pages(cached);
    let mapping = new_mapping(&cache);
    let pfns = populate(&mapping, cached);
    let stride = usize::try_from(cached / TAGGED_DIRTY).expect("stride fits in usize");
    dirty(&mapping, pfns.iter().step_by(stride));
    assert_eq!(first_dirty_batch(&mapping).len(), PAGEVEC_SIZE);
    g.bench_function(name, |b| b.iter(|| first_dirty_batch(&mapping)));
}

fn bench_tagged_lookup(c: &mut Criterion) {
    let mut g = c.benchmark_group("tagged_lookup");
    g.warm_up_time(Duration::from_millis(500));
    g.measurement_time(Duration::from_secs(2));
    tagged_lookup_case(&mut g, "1k_dirty_of_1k_cached", TAGGED_DIRTY);
    tagged_lookup_case(&mut g, "1k_dirty_of_100k_cached", 100 * TAGGED_DIRTY);
    g.finish();
}

/// Integrity writeback of the whole mapping (the timed routine of `write_cache_pages`).
fn write_back_all(mapping: &AddressSpace) {
    filemap_fdatawrite_range(mapping, 0, u64::MAX).expect("writepage never fails");
}

/// Check once that a writeback pass cleans every page, so the bench measures real work.
fn check_write_back_cleans(mapping: &AddressSpace, pfns: &[Pfn]) {
    dirty(mapping, pfns);
    let before = mapping.cache().stats().wb_ends;
    write_back_all(mapping);
    assert!(!mapping.tagged(Tag::Dirty), "writeback left dirty pages");
    assert_eq!(mapping.cache().stats().wb_ends - before, WRITEBACK_PAGES);
}

fn write_cache_pages_case(g: &mut BenchmarkGroup<'_, WallTime>, name: &str, history: bool) {
    let frames = usize::try_from(WRITEBACK_PAGES).expect("fits") + SPARE_FRAMES;
    let cache = new_cache(Era::V5_10, frames, history);
    let mapping = new_mapping(&cache);
    let pfns = populate(&mapping, WRITEBACK_PAGES);
    check_write_back_cleans(&mapping, &pfns);
    g.bench_function(name, |b| {
        b.iter_batched(
            || dirty(&mapping, &pfns),
            |()| write_back_all(&mapping),
            BatchSize::PerIteration,
        );
    });
}

fn bench_write_cache_pages(c: &mut Criterion) {
    let mut g = c.benchmark_group("write_cache_pages");
    g.sample_size(10);
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(10));
    write_cache_pages_case(&mut g, "100k_dirty", true);
    write_cache_pages_case(&mut g, "100k_dirty/history_off", false);
    g.finish();
}

/// Time ending writeback of `pages` pages back to back, after starting it on each untimed.
fn time_end_batch(cache: &PageCache, pages: &[Pfn]) -> Duration {
    for &pfn in pages {
        start_writeback(cache.page(pfn));
    }
    let start = Instant::now();
    for &pfn in pages {
        end_page_writeback(cache.page(pfn));
    }
    start.elapsed()
}

/// `iters` ends of writeback with nobody waiting, in batches over `pfns`.
fn time_no_waiter(cache: &PageCache, pfns: &[Pfn], iters: u64) -> Duration {
    let mut left = usize::try_from(iters).expect("iteration count fits in usize");
    let mut total = Duration::ZERO;
    while left > 0 {
        let n = left.min(pfns.len());
        total += time_end_batch(cache, &pfns[..n]);
        left -= n;
    }
    total
}

/// The waiter thread: for each go signal, sleep until PG_writeback clears, then report back.
fn waiter_loop(page: Page<'_>, go: Receiver<()>, done: Sender<()>) {
    while go.recv().is_ok() {
        wait_on_page_bit(page, PG::Writeback);
        done.send(())
            .expect("the bench thread waits for this report");
    }
}

/// Spin (yielding the CPU) until the waiter is queued on `page`'s writeback bit, then yield a
/// few more times so it gets from "queued" to actually parked.
fn wait_until_asleep(page: Page<'_>) {
    let cache = page.cache();
    while cache.queued_waiters(page.pfn(), PG::Writeback) == 0 {
        thread::yield_now();
    }
    for _ in 0..4 {
        thread::yield_now();
    }
}

/// One `one_waiter` iteration: only the `end_page_writeback` call is timed.
fn one_waiter_round(page: Page<'_>, go: &Sender<()>, done: &Receiver<()>) -> Duration {
    start_writeback(page);
    go.send(()).expect("the waiter thread is alive");
    wait_until_asleep(page);
    let start = Instant::now();
    end_page_writeback(page);
    let elapsed = start.elapsed();
    done.recv().expect("the waiter returns once woken");
    elapsed
}

/// `iters` ends of writeback, each waking one waiter thread spawned for this sample.
fn time_one_waiter(page: Page<'_>, iters: u64) -> Duration {
    let (go_tx, go_rx) = channel();
    let (done_tx, done_rx) = channel();
    thread::scope(|s| {
        s.spawn(move || waiter_loop(page, go_rx, done_tx));
        let total = (0..iters)
            .map(|_| one_waiter_round(page, &go_tx, &done_rx))
            .sum();
        drop(go_tx);
        total
    })
}

fn bench_end_page_writeback(c: &mut Criterion) {
    let cache = cache_for_pages(END_BATCH);
    let mapping = new_mapping(&cache);
    let pfns = populate(&mapping, END_BATCH);
    let mut g = c.benchmark_group("end_page_writeback");
    g.warm_up_time(Duration::from_millis(500));
    g.measurement_time(Duration::from_secs(2));
    g.bench_function("no_waiter", |b| {
        b.iter_custom(|iters| time_no_waiter(&cache, &pfns, iters));
    });
    // Each iteration also hands off to the waiter thread (untimed, but real time): a shorter
    // measurement keeps the wall-clock cost of this case to a few seconds.
    g.measurement_time(Duration::from_secs(1));
    g.bench_function("one_waiter", |b| {
        b.iter_custom(|iters| time_one_waiter(cache.page(pfns[0]), iters));
    });
    g.finish();
}

/// Run every group; what `criterion_group!` + `criterion_main!` expand to, written out because
/// the macro's generated `pub fn` has no doc comment and the crate denies missing docs.
fn main() {
    let mut c = Criterion::default().configure_from_args();
    bench_lock_unlock(&mut c);
    bench_find_get_page(&mut c);
    bench_tagged_lookup(&mut c);
    bench_write_cache_pages(&mut c);
    bench_end_page_writeback(&mut c);
    c.final_summary();
}
