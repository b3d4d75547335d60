//! The flusher: background writeback of dirty inodes, periodic and over the background
//! threshold, and the list of dirty inodes it works from.
//!
//! Models: fs/fs-writeback.c (`__mark_inode_dirty`, `wb_workfn`, `wb_do_writeback`,
//! `wb_check_background_flush`, `wb_check_old_data_flush`, `writeback_sb_inodes`) and
//! mm/backing-dev.c (one `bdi_writeback` per mount) (v5.10).
//!
//! # Model
//! * A [`Bdi`] is one mount's backing device: a list of dirty inodes in the order they were
//!   first dirtied (`b_dirty`, with `dirtied_when`), and one flusher thread.
//! * A filesystem calls [`mark_mapping_dirty`] (or, for a mapping it keeps a [`WbInode`]
//!   for, [`WbInode::mark_dirty`]) from its `AddressSpaceOps::dirty_inode`, which
//!   `set_page_dirty` calls when a page turns dirty. The list holds mappings weakly.
//! * The flusher wakes every `interval` (kupdate): it writes the inodes dirtied more than
//!   `expire` ago, oldest first, then asks the filesystem to write its dirty inodes' metadata
//!   ([`SuperOps`]). When kicked (dirty pages over the background threshold) it writes inodes
//!   oldest first, whatever their age, in slices of [`BACKGROUND_SLICE`] or one round of the
//!   list, until the count is under the threshold at the end of a slice.
//! * Every pass is WB_SYNC_NONE and range-cyclic, at most [`MAX_WRITEBACK_PAGES`] pages per
//!   inode per turn: pages under writeback are skipped, never waited for, as the kernel's
//!   background writeback does. So the flusher is one more thread that can *start* a new
//!   writeback epoch on a page whose old one was just cleared (CPU2 of SEMANTICS S1), and it
//!   is what lets data reach the disk on a mount where nobody calls fsync.
//!
//! # Dirty-list protocol
//! An inode is on the list iff its mapping's `listed` flag ([`AddressSpace::on_dirty_list`])
//! is set; [`mark_mapping_dirty`] sets it and queues the mapping only on a false -> true swap,
//! so an inode is queued once. The flusher takes an inode off, clears `listed`, and only then
//! looks for DIRTY tags: a page dirtied after that clear finds `listed` false and queues the
//! inode again; a page dirtied before it is tagged before its `mark_dirty`, so the pass (or
//! the check after it) sees the tag. Either way no dirty page is left behind on an inode that
//! is off the list. The flag uses SeqCst: the tag is set under the i_pages lock and read under
//! it, and the flag store must not move after that read. The flag lives in the mapping, not in
//! a separate per-inode object, so a file needs no allocation of its own for its list place.
//!
//! Deviations: one list (no b_io / b_more_io split: an inode that still has pages after its
//! turn goes back to the tail, keeping its dirtied_when when the turn ran out of budget);
//! no per-bdi bandwidth estimation; `dirtied_when` is a monotonic instant.

use std::collections::VecDeque;
use std::sync::{OnceLock, Weak};
use std::time::{Duration, Instant};

use crate::error::FsError;
use crate::mm::filemap::{AddressSpace, Tag};
use crate::mm::writeback::{BackgroundWriteback, WritebackControl, do_writepages};
use crate::mm::{PageCache, StatsSnapshot};
use crate::sync::Arc;
use crate::sync::unchecked::{AtomicU64, Condvar, Mutex, Ordering};

/// Pages written from one inode before the flusher turns to the next (MAX_WRITEBACK_PAGES is
/// 1024 in the kernel: 4 MiB).
pub const MAX_WRITEBACK_PAGES: i64 = 1024;

/// How long a background pass writes before it looks at the threshold again: the kernel's
/// writeback_sb_inodes bails out to wb_writeback, which checks wb_over_bg_thresh, only after
/// HZ/10 of writing (or its page budget), not after every inode. Checking after every inode
/// instead kept the count a page over the threshold in a storm of one-page files: one pass,
/// one wake-up of the flusher and one page per file written (9,235 passes for 9,576 pages in
/// 10,000 creates), where the kernel writes the dirty inodes in a few passes.
pub const BACKGROUND_SLICE: Duration = Duration::from_millis(100);

/// The flusher's knobs (vm.dirty_* sysctls, per mount here).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WritebackConfig {
    /// Period of the kupdate pass; zero turns periodic writeback off
    /// (`dirty_writeback_centisecs=0`).
    pub interval: Duration,
    /// Age at which dirty data is written by the kupdate pass (`dirty_expire_centisecs`).
    pub expire: Duration,
    /// Percent of the cache that may be dirty or under writeback before writers pause.
    pub dirty_ratio: u32,
    /// Percent at which background writeback starts.
    pub dirty_background_ratio: u32,
}

impl Default for WritebackConfig {
    /// The kernel's defaults: 5 s, 30 s, 20 %, 10 %.
    fn default() -> Self {
        WritebackConfig {
            interval: Duration::from_secs(5),
            expire: Duration::from_secs(30),
            dirty_ratio: 20,
            dirty_background_ratio: 10,
        }
    }
}

/// What the flusher asks of the filesystem besides writing pages.
pub trait SuperOps: Send + Sync {
    /// Write the metadata of dirty inodes (sizes, first clusters, times) into the filesystem's
    /// own buffers, as the kupdate pass's write_inode calls do. Must not wait for page state
    /// held by a writer.
    fn write_dirty_inodes(&self) -> Result<(), FsError>;
}

/// A mapping's flusher, for an owner that keeps no other handle on both (the block device).
#[derive(Debug)]
pub struct WbInode {
    mapping: OnceLock<Weak<AddressSpace>>,
    bdi: Weak<Bdi>,
}

impl WbInode {
    /// An inode of the mount whose flusher is `bdi` (none: the inode is never queued).
    pub fn new(bdi: Option<&Arc<Bdi>>) -> Arc<WbInode> {
        Arc::new(WbInode {
            mapping: OnceLock::new(),
            bdi: bdi.map_or_else(Weak::new, Arc::downgrade),
        })
    }

    /// Names the mapping this inode writes back; called once, right after the mapping exists.
    pub fn attach(&self, mapping: Weak<AddressSpace>) {
        // A second attach would mean two mappings share one list entry; keep the first.
        let _ = self.mapping.set(mapping);
    }

    /// __mark_inode_dirty(I_DIRTY_PAGES): see [`mark_mapping_dirty`]. Before
    /// [`WbInode::attach`] there is no mapping to queue, so nothing happens.
    pub fn mark_dirty(self: &Arc<Self>) {
        if let Some(mapping) = self.mapping.get() {
            mark_mapping_dirty(&self.bdi, mapping);
        }
    }
}

/// __mark_inode_dirty(I_DIRTY_PAGES): queue `mapping` on `bdi`'s list unless it is there
/// already (its [`AddressSpace::on_dirty_list`] flag is set).
///
/// # Context
/// Called from `dirty_inode`, whose caller holds a reference to the mapping: the strong
/// reference taken here to read the flag is never the last, so the mapping is never dropped
/// (and truncated) from inside `set_page_dirty`. During the mapping's own drop the upgrade
/// fails and nothing is queued, as an evicted inode leaves the list.
pub fn mark_mapping_dirty(bdi: &Weak<Bdi>, mapping: &Weak<AddressSpace>) {
    let Some(m) = mapping.upgrade() else {
        return;
    };
    let listed = m.on_dirty_list();
    if listed.load(Ordering::SeqCst) {
        return;
    }
    if listed.swap(true, Ordering::SeqCst) {
        return;
    }
    // No flusher (read-only use, or the mount is going away): nothing to queue, and the
    // flag stays set so later dirtyings do not retry.
    if let Some(bdi) = bdi.upgrade() {
        bdi.queue(Weak::clone(mapping), Instant::now(), false);
    }
}

/// Counters of one flusher.
#[derive(Debug, Default)]
struct FlusherStats {
    kupdate_passes: AtomicU64,
    background_passes: AtomicU64,
    inodes_written: AtomicU64,
    pages_written: AtomicU64,
    kicks: AtomicU64,
}

/// A copy of the flusher's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlusherSnapshot {
    /// Periodic (kupdate) passes run.
    pub kupdate_passes: u64,
    /// Background passes run (dirty pages over the background threshold).
    pub background_passes: u64,
    /// Inode turns taken.
    pub inodes_written: u64,
    /// Pages the flusher started writeback on.
    pub pages_written: u64,
    /// Kicks received from throttled or over-threshold writers.
    pub kicks: u64,
    /// Inodes on the dirty list now.
    pub dirty_inodes: u64,
}

#[derive(Debug)]
struct Queued {
    since: Instant,
    /// The inode's mapping, weakly: an evicted inode's entry is dropped when it comes up.
    mapping: Weak<AddressSpace>,
}

#[derive(Debug, Default)]
struct State {
    /// b_dirty: oldest first.
    dirty: VecDeque<Queued>,
    kicked: bool,
    stop: bool,
}

/// One mount's backing device: its dirty-inode list and its flusher thread.
pub struct Bdi {
    cache: Arc<PageCache>,
    cfg: WritebackConfig,
    state: Mutex<State>,
    cv: Condvar,
    stats: FlusherStats,
    sb: OnceLock<Weak<dyn SuperOps>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for Bdi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bdi")
            .field("cfg", &self.cfg)
            .field("dirty_inodes", &self.state.lock().dirty.len())
            .finish_non_exhaustive()
    }
}

impl BackgroundWriteback for Bdi {
    /// wb_start_background_writeback: wake the flusher if it sleeps.
    fn kick(&self) {
        self.stats.kicks.fetch_add(1, Ordering::Relaxed);
        let mut st = self.state.lock();
        if !st.kicked {
            st.kicked = true;
            self.cv.notify_one();
        }
    }
}

impl Bdi {
    /// A backing device over `cache` with the flusher's knobs; no thread runs until
    /// [`Bdi::start`].
    pub fn new(cache: &Arc<PageCache>, cfg: WritebackConfig) -> Arc<Bdi> {
        Arc::new(Bdi {
            cache: Arc::clone(cache),
            cfg,
            state: Mutex::new(State::default()),
            cv: Condvar::new(),
            stats: FlusherStats::default(),
            sb: OnceLock::new(),
            thread: Mutex::new(None),
        })
    }

    /// The flusher's knobs.
    pub fn config(&self) -> WritebackConfig {
        self.cfg
    }

    /// Starts the flusher thread, which asks `sb` to write inode metadata on kupdate passes,
    /// and registers it with the page cache for balance_dirty_pages.
    pub fn start(self: &Arc<Self>, sb: Weak<dyn SuperOps>) -> Result<(), FsError> {
        let _ = self.sb.set(sb);
        let me = Arc::clone(self);
        let handle = std::thread::Builder::new()
            .name("fatcache-flush".into())
            .spawn(move || me.run())
            .map_err(FsError::Io)?;
        *self.thread.lock() = Some(handle);
        let weak: Weak<dyn BackgroundWriteback> = Arc::downgrade(self) as Weak<_>;
        self.cache.set_background_writeback(Some(weak));
        Ok(())
    }

    /// Stops the flusher and waits for its current pass to end. Dirty pages stay dirty: the
    /// caller syncs (unmount) or drops them.
    pub fn stop(&self) {
        self.cache.set_background_writeback(None);
        {
            let mut st = self.state.lock();
            st.stop = true;
            self.cv.notify_all();
        }
        let handle = self.thread.lock().take();
        if let Some(h) = handle
            && h.join().is_err()
        {
            log::error!("writeback: the flusher thread panicked");
        }
    }

    /// The flusher's counters and the length of its list.
    pub fn stats(&self) -> FlusherSnapshot {
        let s = &self.stats;
        FlusherSnapshot {
            kupdate_passes: s.kupdate_passes.load(Ordering::Relaxed),
            background_passes: s.background_passes.load(Ordering::Relaxed),
            inodes_written: s.inodes_written.load(Ordering::Relaxed),
            pages_written: s.pages_written.load(Ordering::Relaxed),
            kicks: s.kicks.load(Ordering::Relaxed),
            dirty_inodes: self.state.lock().dirty.len() as u64,
        }
    }

    /// Puts `inode` on the list: at the tail with `since`, or back at the head when `front`
    /// (its turn ran out of budget and it keeps its age).
    fn queue(&self, mapping: Weak<AddressSpace>, since: Instant, front: bool) {
        let mut st = self.state.lock();
        let q = Queued { since, mapping };
        if front {
            st.dirty.push_front(q);
        } else {
            st.dirty.push_back(q);
        }
    }

    /// Dirty pages over the background threshold (wb_over_bg_thresh).
    fn over_background(&self) -> bool {
        let s: StatsSnapshot = self.cache.stats();
        s.nr_dirty > self.cache.dirty_thresholds().0
    }

    /// The thread: sleep until the next kupdate time, a kick or stop; then do the work due.
    fn run(&self) {
        let mut next_kupdate = self.next_kupdate(Instant::now());
        loop {
            let kicked = {
                let mut st = self.state.lock();
                loop {
                    if st.stop {
                        return;
                    }
                    if st.kicked {
                        break;
                    }
                    match next_kupdate {
                        Some(at) if Instant::now() >= at => break,
                        Some(at) => {
                            let _ = self.cv.wait_until(&mut st, at);
                        }
                        None => self.cv.wait(&mut st),
                    }
                }
                std::mem::take(&mut st.kicked)
            };
            if kicked || self.over_background() {
                self.background_pass(next_kupdate);
            }
            if next_kupdate.is_some_and(|at| Instant::now() >= at) {
                self.kupdate_pass();
                next_kupdate = self.next_kupdate(Instant::now());
            }
        }
    }

    fn next_kupdate(&self, now: Instant) -> Option<Instant> {
        (!self.cfg.interval.is_zero()).then(|| now + self.cfg.interval)
    }

    fn stopping(&self) -> bool {
        self.state.lock().stop
    }

    /// wb_check_background_flush: while dirty pages are over the background threshold, write
    /// inodes oldest first for a slice ([`BACKGROUND_SLICE`], or one round of the list, as
    /// the kernel's b_io holds the inodes queued when the slice began); stop when a round
    /// wrote nothing (every page left is under writeback, which WB_SYNC_NONE skips: the next
    /// kick or kupdate comes back to them) or the list is empty.
    ///
    /// It also stops at `kupdate`, when a kupdate pass is due. The kernel's background
    /// writeback writes each inode's metadata with its pages; ours leaves that to the kupdate
    /// pass, which a writer keeping the count over the threshold would otherwise put off for
    /// as long as it writes. The caller runs the kupdate pass, and the writers' kicks (or the
    /// count, looked at after every wake-up) bring the background pass back.
    fn background_pass(&self, kupdate: Option<Instant>) {
        self.stats.background_passes.fetch_add(1, Ordering::Relaxed);
        let due = || kupdate.is_some_and(|at| Instant::now() >= at);
        while self.over_background() && !self.stopping() && !due() {
            let start = Instant::now();
            let mut turns = self.state.lock().dirty.len();
            let mut wrote = 0;
            while turns > 0 && !self.stopping() {
                turns -= 1;
                let Some(q) = self.state.lock().dirty.pop_front() else {
                    break;
                };
                wrote += self.write_inode_pages(q);
                if wrote > 0 && start.elapsed() >= BACKGROUND_SLICE {
                    break;
                }
            }
            if wrote == 0 {
                break;
            }
        }
    }

    /// wb_check_old_data_flush: write the inodes dirtied more than `expire` ago, then the
    /// metadata of dirty inodes.
    fn kupdate_pass(&self) {
        self.stats.kupdate_passes.fetch_add(1, Ordering::Relaxed);
        let cutoff = Instant::now().checked_sub(self.cfg.expire);
        let mut turns = self.state.lock().dirty.len();
        while turns > 0 && !self.stopping() {
            turns -= 1;
            let q = {
                let mut st = self.state.lock();
                match st.dirty.front() {
                    Some(q) if cutoff.is_some_and(|c| q.since <= c) => st.dirty.pop_front(),
                    _ => None,
                }
            };
            let Some(q) = q else { break };
            self.write_inode_pages(q);
        }
        if let Some(sb) = self.sb.get().and_then(Weak::upgrade)
            && let Err(e) = sb.write_dirty_inodes()
        {
            log::warn!("writeback: writing inode metadata failed: {e}");
        }
    }

    /// writeback_single_inode for one list entry: off the list, one WB_SYNC_NONE turn, back
    /// on the list if pages are still dirty. Returns the pages it started writeback on.
    fn write_inode_pages(&self, q: Queued) -> u64 {
        let Some(mapping) = q.mapping.upgrade() else {
            // The inode is gone (evicted): its pages went with it.
            return 0;
        };
        // Off the list before looking at the tags: see the module doc.
        mapping.on_dirty_list().store(false, Ordering::SeqCst);
        let mut wbc = WritebackControl::background(MAX_WRITEBACK_PAGES);
        let r = do_writepages(&mapping, &mut wbc);
        let written = u64::try_from(MAX_WRITEBACK_PAGES - wbc.nr_to_write.max(0)).unwrap_or(0);
        self.stats.inodes_written.fetch_add(1, Ordering::Relaxed);
        self.stats
            .pages_written
            .fetch_add(written, Ordering::Relaxed);
        if let Err(e) = r {
            // The error is on the pages and the mapping for fsync to report; the flusher
            // moves on as the kernel's does.
            log::debug!("writeback: background writeback failed: {e}");
        }
        if mapping.tagged(Tag::Dirty) && !mapping.on_dirty_list().swap(true, Ordering::SeqCst) {
            // Still dirty: out of budget keeps its age (requeue_io); redirtied under
            // writeback, or pages skipped because they were under writeback, go to the
            // tail with a fresh age (redirty_tail).
            let budget_out = wbc.nr_to_write <= 0;
            let since = if budget_out { q.since } else { Instant::now() };
            self.queue(q.mapping, since, budget_out);
        }
        written
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::mm::AddressSpaceOps;
    use crate::mm::filemap::find_or_create_page;
    use crate::mm::page::PageRef;
    use crate::mm::testing::{SyncAops, cache_for};
    use crate::mm::waitqueue::unlock_page;
    use crate::mm::writeback::{balance_dirty_pages_ratelimited, set_page_dirty};
    use crate::mm::{CacheConfig, Era};

    /// SyncAops that also queues its inode, as a filesystem's aops do.
    struct ListedAops {
        inner: SyncAops,
        wb: Arc<WbInode>,
        /// Pages written by a thread other than the flusher.
        not_by_flusher: std::sync::atomic::AtomicUsize,
    }

    impl AddressSpaceOps for ListedAops {
        fn writepage(
            &self,
            mapping: &AddressSpace,
            page: &PageRef<'_>,
            wbc: &mut WritebackControl,
        ) -> Result<(), FsError> {
            if std::thread::current().name() != Some("fatcache-flush") {
                self.not_by_flusher
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            self.inner.writepage(mapping, page, wbc)
        }
        fn dirty_inode(&self) {
            self.wb.mark_dirty();
        }
    }

    fn file(cache: &Arc<PageCache>, bdi: &Arc<Bdi>) -> (Arc<AddressSpace>, Arc<ListedAops>) {
        let wb = WbInode::new(Some(bdi));
        let aops = Arc::new(ListedAops {
            inner: SyncAops::default(),
            wb: Arc::clone(&wb),
            not_by_flusher: std::sync::atomic::AtomicUsize::new(0),
        });
        let mapping = Arc::new(AddressSpace::new(cache, aops.clone()));
        wb.attach(Arc::downgrade(&mapping));
        (mapping, aops)
    }

    fn dirty(m: &AddressSpace, pages: std::ops::Range<u64>) {
        for i in pages {
            let p = find_or_create_page(m, i).expect("page");
            p.with_data_mut(|d| d[0] = 1);
            set_page_dirty(m, *p);
            unlock_page(*p);
        }
    }

    struct NoSuper;
    impl SuperOps for NoSuper {
        fn write_dirty_inodes(&self) -> Result<(), FsError> {
            Ok(())
        }
    }

    fn wait_for(what: &str, f: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// A flusher over `cache` with a kupdate pass every `interval` (zero: none) and the
    /// default knobs otherwise; not started.
    fn flusher_every(cache: &Arc<PageCache>, interval: Duration) -> Arc<Bdi> {
        Bdi::new(
            cache,
            WritebackConfig {
                interval,
                ..WritebackConfig::default()
            },
        )
    }

    fn no_super() -> Weak<dyn SuperOps> {
        Weak::<NoSuper>::new() as Weak<dyn SuperOps>
    }

    #[test]
    fn an_inode_is_listed_once_and_written_when_it_expires() {
        let cache = cache_for(Era::V5_11, 64);
        let bdi = Bdi::new(
            &cache,
            WritebackConfig {
                interval: Duration::from_millis(10),
                expire: Duration::from_millis(50),
                ..WritebackConfig::default()
            },
        );
        let (m, aops) = file(&cache, &bdi);
        dirty(&m, 0..3);
        assert_eq!(bdi.stats().dirty_inodes, 1, "three pages, one list entry");
        let t0 = Instant::now();
        bdi.start(no_super()).expect("start");
        wait_for("expired pages written", || aops.inner.written().len() == 3);
        assert!(
            t0.elapsed() >= Duration::from_millis(50),
            "not before expire"
        );
        wait_for("list empty", || bdi.stats().dirty_inodes == 0);
        // Dirtied again: listed again and written again.
        dirty(&m, 5..6);
        wait_for("redirtied page written", || aops.inner.written().len() == 4);
        bdi.stop();
        assert!(bdi.stats().kupdate_passes >= 1);
    }

    #[test]
    fn periodic_writeback_off_leaves_young_pages_alone_until_kicked() {
        let cache = cache_for(Era::V5_11, 100);
        let bdi = flusher_every(&cache, Duration::ZERO);
        let (m, aops) = file(&cache, &bdi);
        bdi.start(no_super()).expect("start");
        dirty(&m, 0..5);
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            aops.inner.written().is_empty(),
            "under the threshold: nothing"
        );
        // Over the background threshold (10 of 100 frames): balance_dirty_pages kicks.
        dirty(&m, 5..12);
        balance_dirty_pages_ratelimited(&m);
        wait_for("background writeback", || !aops.inner.written().is_empty());
        wait_for("under the threshold", || {
            cache.stats().nr_dirty <= cache.dirty_thresholds().0
        });
        bdi.stop();
        assert!(bdi.stats().background_passes >= 1 && bdi.stats().kicks >= 1);
    }

    #[test]
    fn a_background_pass_writes_a_whole_slice_not_a_page_at_a_time() {
        // 30 one-page files, over the threshold of 10 (of 100 frames). A pass that looked at
        // the threshold after every inode stopped at 10 dirty pages, and the next writer's
        // kick started another pass for one more page; the kernel's writes them all in one
        // slice.
        let cache = cache_for(Era::V5_11, 100);
        let bdi = flusher_every(&cache, Duration::ZERO);
        let files: Vec<_> = (0..30).map(|_| file(&cache, &bdi)).collect();
        for (m, _) in &files {
            dirty(m, 0..1);
        }
        assert_eq!(bdi.stats().dirty_inodes, 30);
        bdi.start(no_super()).expect("start");
        balance_dirty_pages_ratelimited(&files[0].0);
        wait_for("every listed inode written", || cache.stats().nr_dirty == 0);
        bdi.stop();
        let s = bdi.stats();
        assert_eq!((s.background_passes, s.pages_written), (1, 30));
        assert!(files.iter().all(|(_, a)| a.inner.written().len() == 1));
    }

    /// SyncAops whose every writepage dirties a new page of the next file, as a writer that
    /// keeps the dirty count where it is however fast the flusher writes.
    struct RedirtyingAops {
        inner: SyncAops,
        wb: Arc<WbInode>,
        next: OnceLock<Weak<AddressSpace>>,
        next_index: std::sync::atomic::AtomicU64,
    }

    impl AddressSpaceOps for RedirtyingAops {
        fn writepage(
            &self,
            mapping: &AddressSpace,
            page: &PageRef<'_>,
            wbc: &mut WritebackControl,
        ) -> Result<(), FsError> {
            let r = self.inner.writepage(mapping, page, wbc);
            if let Some(next) = self.next.get().and_then(Weak::upgrade) {
                let i = self
                    .next_index
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                dirty(&next, i..i + 1);
            }
            r
        }
        fn dirty_inode(&self) {
            self.wb.mark_dirty();
        }
    }

    #[test]
    fn a_writer_that_keeps_the_count_up_does_not_put_off_kupdate() {
        // Four files in a ring, 20 dirty pages against a threshold of 10, and every page
        // written dirties a new one: the background pass never gets under the threshold. It
        // must still give way to the kupdate pass when one is due, which writes the inodes'
        // metadata (the background pass writes pages only).
        let cache = cache_for(Era::V5_11, 100);
        let bdi = flusher_every(&cache, Duration::from_millis(20));
        let files: Vec<_> = (0..4)
            .map(|_| {
                let wb = WbInode::new(Some(&bdi));
                let aops = Arc::new(RedirtyingAops {
                    inner: SyncAops::default(),
                    wb: Arc::clone(&wb),
                    next: OnceLock::new(),
                    next_index: std::sync::atomic::AtomicU64::new(5),
                });
                let mapping = Arc::new(AddressSpace::new(&cache, aops.clone()));
                wb.attach(Arc::downgrade(&mapping));
                (mapping, aops)
            })
            .collect();
        for (i, (m, aops)) in files.iter().enumerate() {
            let _ = aops
                .next
                .set(Arc::downgrade(&files[(i + 1) % files.len()].0));
            dirty(m, 0..5);
        }
        bdi.start(no_super()).expect("start");
        balance_dirty_pages_ratelimited(&files[0].0);
        wait_for("background writeback", || bdi.stats().pages_written > 100);
        let before = bdi.stats().kupdate_passes;
        wait_for("kupdate passes while the count stays up", || {
            bdi.stats().kupdate_passes >= before + 2
        });
        assert!(
            cache.stats().nr_dirty > cache.dirty_thresholds().0,
            "the writer kept the count over the threshold"
        );
        bdi.stop();
    }

    #[test]
    fn a_writer_over_the_limit_waits_for_the_flusher_not_itself() {
        let cache = PageCache::new(CacheConfig {
            dirty_ratio: 20,
            dirty_background_ratio: 10,
            on_bug: crate::bug::OnBug::Panic,
            ..CacheConfig::new(Era::V5_11, 100)
        })
        .expect("cache");
        let bdi = flusher_every(&cache, Duration::ZERO);
        let (m, aops) = file(&cache, &bdi);
        bdi.start(no_super()).expect("start");
        dirty(&m, 0..30);
        balance_dirty_pages_ratelimited(&m);
        // Whether the writer paused at all depends on how fast the kicked flusher runs on
        // the other core (it may get under the limit between the kick and the writer's next
        // look), so `throttled` is not asserted; what is: the writer returns under the limit
        // and every page was written on the flusher's thread, none by the writer itself.
        let s = cache.stats();
        assert!(
            s.nr_dirty + s.nr_writeback <= 20,
            "returned under the limit"
        );
        wait_for("the flusher wrote them", || bdi.stats().pages_written >= 10);
        assert_eq!(
            aops.not_by_flusher
                .load(std::sync::atomic::Ordering::Relaxed),
            0,
            "the writer wrote pages itself"
        );
        bdi.stop();
        assert!(aops.inner.written().len() >= 10);
    }

    #[test]
    fn a_dropped_mapping_leaves_the_list_quietly() {
        let cache = cache_for(Era::V5_11, 64);
        let bdi = Bdi::new(
            &cache,
            WritebackConfig {
                interval: Duration::from_millis(5),
                expire: Duration::ZERO,
                ..WritebackConfig::default()
            },
        );
        let (m, _aops) = file(&cache, &bdi);
        dirty(&m, 0..2);
        drop(m);
        bdi.start(no_super()).expect("start");
        wait_for("list empty", || bdi.stats().dirty_inodes == 0);
        bdi.stop();
    }

    #[test]
    fn metadata_is_written_on_kupdate_passes() {
        struct Counting(AtomicU64);
        impl SuperOps for Counting {
            fn write_dirty_inodes(&self) -> Result<(), FsError> {
                self.0.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
        }
        let cache = cache_for(Era::V5_11, 16);
        let bdi = flusher_every(&cache, Duration::from_millis(5));
        let sb = Arc::new(Counting(AtomicU64::new(0)));
        let weak: Weak<dyn SuperOps> = Arc::downgrade(&sb) as Weak<dyn SuperOps>;
        bdi.start(weak).expect("start");
        wait_for("two kupdate passes", || sb.0.load(Ordering::Relaxed) >= 2);
        bdi.stop();
    }
}
