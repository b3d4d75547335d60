//! Mappings: the index -> frame map of one file, its tags and sticky errors; lookup, insert,
//! delete; fdatawrite / fdatawait; end_page_writeback in every era.
//!
//! Models: mm/filemap.c (v5.10; end_page_writeback also v5.8, v6.9 folio_end_writeback, and
//! the never-merged ALT-A).
//!
//! The index lives under the mapping's i_pages lock: a `BTreeMap` from page index to frame, and
//! one ordered set per tag, so a tagged lookup costs O(log n + pages returned) - it grows with
//! the pages tagged, never with the pages cached.

use crate::error::FsError;
use crate::mm::aops::AddressSpaceOps;
use crate::mm::era::EndWriteback;
use crate::mm::flags::epoch_of;
use crate::mm::history::Op;
use crate::mm::page::{NO_MAPPING, Page, PageRef, Pfn};
use crate::mm::waitqueue::{lock_page, unlock_page, wake_up_page, wake_up_page_bit_with};
use crate::mm::writeback::{SyncMode, WritebackControl, do_writepages, wait_on_page_writeback};
use crate::mm::xarray::XArray;
use crate::mm::{HookPoint, PAGE_SHIFT, PG, PageCache};
use crate::sync::{Arc, AtomicU32, Mutex, MutexGuard, Ordering, unchecked};
use crate::{bug_on, vm_bug_on_page, warn_on_once};

/// Page-cache index tags (xarray marks).
pub use crate::mm::xarray::Mark as Tag;

/// AS_EIO: a writeback failed with EIO since the last check.
const AS_EIO: u32 = 1;
/// AS_ENOSPC: a writeback failed with ENOSPC since the last check.
const AS_ENOSPC: u32 = 2;

/// Lookups per batch (PAGEVEC_SIZE).
pub const PAGEVEC_SIZE: usize = 15;

/// The part of a mapping that I/O completion reaches through the frame's owner id.
#[derive(Debug)]
pub(crate) struct MappingCore {
    /// The mapping's id, unique for the life of the cache (never reused).
    pub(crate) id: u64,
    pub(crate) i_pages: Mutex<XArray>,
    /// AS_EIO | AS_ENOSPC.
    errors: AtomicU32,
    /// Where range-cyclic writeback resumes (a hint; racing updates are harmless). 32 bits:
    /// a page index of any file or FAT volume below 16 TiB fits, and beyond that a saturated
    /// hint only starts a cyclic pass earlier. With the 64-bit form the core was 48 bytes, one
    /// malloc size class (16 bytes) more for every mapping, and every known file has one.
    writeback_index: unchecked::AtomicU32,
}

/// Shards of a [`MappingTable`]: as many as a DashMap takes on a few cores, so lookups from
/// I/O completions on different mappings rarely meet on one lock.
const MAPPING_SHARDS: usize = 16;

/// The page cache's registry of live mappings by id (what a frame records as its owner), for
/// I/O completion and reclaim, which hold only a frame.
///
/// Sharded hash tables of core pointers, 8 bytes a slot, the key read from the core itself:
/// the DashMap of (id, pointer) pairs this replaces spent 16 bytes a slot, ~28 bytes of every
/// mapping, and every file the mount knows has a mapping. Its calls keep the DashMap's shape
/// (`get(&id)` and `.value()`). The locks are unchecked (the model checker never sees them):
/// nothing but the table is touched under one, no checked operation included.
pub(crate) struct MappingTable {
    shards: [unchecked::RwLock<hashbrown::HashTable<Arc<MappingCore>>>; MAPPING_SHARDS],
}

/// A mapping found in a [`MappingTable`].
pub(crate) struct MappingRef(Arc<MappingCore>);

impl MappingRef {
    /// The mapping's core.
    pub(crate) fn value(&self) -> &Arc<MappingCore> {
        &self.0
    }
}

impl std::fmt::Debug for MappingTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n: usize = self.shards.iter().map(|s| s.read().len()).sum();
        f.debug_struct("MappingTable")
            .field("mappings", &n)
            .finish()
    }
}

impl Default for MappingTable {
    fn default() -> Self {
        MappingTable {
            shards: std::array::from_fn(|_| unchecked::RwLock::new(hashbrown::HashTable::new())),
        }
    }
}

impl MappingTable {
    fn hash(id: u64) -> u64 {
        use std::hash::BuildHasher;
        rustc_hash::FxBuildHasher.hash_one(id)
    }

    fn shard(&self, hash: u64) -> &unchecked::RwLock<hashbrown::HashTable<Arc<MappingCore>>> {
        // The top bits pick the shard; the table uses the low ones for its buckets.
        &self.shards[(hash >> 60) as usize % MAPPING_SHARDS]
    }

    /// The mapping with id `id`, if it is registered.
    pub(crate) fn get(&self, id: &u64) -> Option<MappingRef> {
        let h = Self::hash(*id);
        let shard = self.shard(h).read();
        shard
            .find(h, |c| c.id == *id)
            .map(|c| MappingRef(Arc::clone(c)))
    }

    /// Registers `core` under `id` (its own id), replacing a core of that id.
    pub(crate) fn insert(&self, id: u64, core: Arc<MappingCore>) {
        debug_assert_eq!(id, core.id, "a mapping is registered under its own id");
        let h = Self::hash(id);
        let mut shard = self.shard(h).write();
        match shard.entry(h, |c| c.id == id, |c| Self::hash(c.id)) {
            hashbrown::hash_table::Entry::Occupied(mut e) => *e.get_mut() = core,
            hashbrown::hash_table::Entry::Vacant(e) => {
                e.insert(core);
            }
        }
    }

    /// Unregisters the mapping with id `id`.
    pub(crate) fn remove(&self, id: &u64) {
        let h = Self::hash(*id);
        let removed = {
            let mut shard = self.shard(h).write();
            shard
                .find_entry(h, |c| c.id == *id)
                .ok()
                .map(|e| e.remove().0)
        };
        // The core (maybe its last reference) goes after the shard's lock, as DashMap's
        // remove hands it back.
        drop(removed);
    }
}

/// One file's (or the block device's) page cache.
pub struct AddressSpace {
    cache: Arc<PageCache>,
    core: Arc<MappingCore>,
    aops: Arc<dyn AddressSpaceOps>,
    /// On its flusher's dirty list (see [`AddressSpace::on_dirty_list`]). Here rather than in a
    /// per-inode object of the writeback layer: the mapping's allocation has room for it (same
    /// malloc size class), and a file then needs no separate list-place allocation. Unchecked:
    /// the flusher's bookkeeping, which the mm models never exercise.
    on_dirty_list: unchecked::AtomicBool,
}

impl std::fmt::Debug for AddressSpace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AddressSpace({})", self.core.id)
    }
}

impl AddressSpace {
    /// A new, empty mapping in `cache`, written back through `aops`.
    pub fn new(cache: &Arc<PageCache>, aops: Arc<dyn AddressSpaceOps>) -> Self {
        let id = cache.new_mapping_id();
        let core = Arc::new(MappingCore {
            id,
            i_pages: Mutex::new(XArray::default()),
            errors: AtomicU32::new(0),
            writeback_index: unchecked::AtomicU32::new(0),
        });
        cache.mappings.insert(id, Arc::clone(&core));
        AddressSpace {
            cache: Arc::clone(cache),
            core,
            aops,
            on_dirty_list: unchecked::AtomicBool::new(false),
        }
    }

    /// Whether the inode is on its flusher's dirty list (I_DIRTY_PAGES list membership); the
    /// writeback layer above sets and clears it.
    pub fn on_dirty_list(&self) -> &unchecked::AtomicBool {
        &self.on_dirty_list
    }

    /// The mapping id frames record as their owner.
    pub fn id(&self) -> u64 {
        self.core.id
    }

    /// The page cache.
    pub fn cache(&self) -> &Arc<PageCache> {
        &self.cache
    }

    /// The filesystem's operations.
    pub fn aops(&self) -> &Arc<dyn AddressSpaceOps> {
        &self.aops
    }

    pub(crate) fn i_pages(&self) -> MutexGuard<'_, XArray> {
        self.core.i_pages.lock()
    }

    /// Pages in the mapping.
    pub fn nrpages(&self) -> usize {
        self.i_pages().len()
    }

    /// mapping_tagged: does any page carry `tag`?
    pub fn tagged(&self, tag: Tag) -> bool {
        self.i_pages().marked(tag)
    }

    /// Indexes carrying `tag` (tests and diagnostics).
    pub fn tagged_indexes(&self, tag: Tag) -> Vec<u64> {
        self.i_pages().marked_indexes(tag)
    }

    /// Up to `max` (index, frame) pairs with index in `[start, end)`.
    pub(crate) fn i_pages_range(&self, start: u64, end: u64, max: usize) -> Vec<(u64, u32)> {
        self.i_pages().find_range(start, end, max)
    }

    /// Where range-cyclic writeback resumes.
    pub fn writeback_index(&self) -> u64 {
        u64::from(self.core.writeback_index.load(unchecked::Ordering::Relaxed))
    }

    pub(crate) fn set_writeback_index(&self, idx: u64) {
        // Relaxed: a resume hint; two flushers racing on it only change where one starts.
        self.core.writeback_index.store(
            u32::try_from(idx).unwrap_or(u32::MAX),
            unchecked::Ordering::Relaxed,
        );
    }
}

impl Drop for AddressSpace {
    fn drop(&mut self) {
        // Like evicting an inode: every page goes, waiting for writeback first; then the id
        // stops resolving for completions.
        crate::mm::truncate::truncate_inode_pages_range(self, 0, u64::MAX);
        self.cache.mappings.remove(&self.core.id);
    }
}

/// find_get_page: the page at `index` with a reference, if cached.
///
/// Models: mm/filemap.c find_get_page() (pagecache_get_page without flags) (v5.10).
pub fn find_get_page(mapping: &AddressSpace, index: u64) -> Option<PageRef<'_>> {
    let cache = &*mapping.cache;
    let pfn = mapping.i_pages().get(index)?;
    // The reference is taken after the i_pages lock is dropped, like the kernel's RCU lookup:
    // the frame may be freed and reused meanwhile, so check its owner once we hold it.
    let page = cache.page(Pfn(pfn)).try_get()?;
    if page.mapping_id() != mapping.id() || page.index() != index {
        return None;
    }
    // mark_page_accessed, cheapest form: only write the line if the bit is not set yet.
    let referenced = cache.mask(PG::Referenced);
    if !page.frame().flags.test(referenced) {
        page.frame().flags.set(referenced);
    }
    Some(page)
}

/// find_lock_page: the page at `index`, locked and still in this mapping.
pub fn find_lock_page(mapping: &AddressSpace, index: u64) -> Option<PageRef<'_>> {
    loop {
        let page = find_get_page(mapping, index)?;
        lock_page(*page);
        if page.mapping_id() == mapping.id() && page.index() == index {
            return Some(page);
        }
        // Truncated (and maybe reused) while we slept on the lock: look again.
        unlock_page(*page);
    }
}

/// find_or_create_page: the page at `index`, locked; a new one (not uptodate, zeroed) is
/// allocated and inserted locked when none is cached.
pub fn find_or_create_page(mapping: &AddressSpace, index: u64) -> Result<PageRef<'_>, FsError> {
    find_or_create(mapping, index, true)
}

/// grab_cache_page_write_begin: [`find_or_create_page`] without zeroing a new page, for
/// write_begin, which either overwrites the whole page or reads it in first (and the read
/// zeroes what it does not fill). A new page is not uptodate, so nothing reads its stale
/// bytes meanwhile.
pub fn grab_cache_page_write_begin(
    mapping: &AddressSpace,
    index: u64,
) -> Result<PageRef<'_>, FsError> {
    find_or_create(mapping, index, false)
}

fn find_or_create(mapping: &AddressSpace, index: u64, zero: bool) -> Result<PageRef<'_>, FsError> {
    loop {
        if let Some(p) = find_lock_page(mapping, index) {
            return Ok(p);
        }
        let page = mapping.cache.alloc_page()?;
        // __SetPageLocked on a page nobody else can see yet.
        crate::mm::waitqueue::trylock_page(*page);
        if zero {
            page.with_data_mut(|d| d.fill(0));
        }
        match add_to_page_cache_lru(mapping, &page, index) {
            Ok(()) => return Ok(page),
            Err(()) => {
                // Lost a race with another inserter (or a reclaim still removing the old page).
                unlock_page(*page);
                drop(page);
                crate::sync::thread::yield_now();
            }
        }
    }
}

/// The readahead form of page allocation (page_cache_ra_unbounded): a new page at `index`,
/// locked, not uptodate and *not zeroed* (the readpage that follows fills it), or `None` when
/// a page is cached there already. Never sleeps on another page: a readahead pass holds the
/// pages it has added locked until it submits their reads, so waiting here for a page another
/// pass holds the same way could deadlock the two. For the same reason its allocation never
/// waits for reclaim ([`crate::mm::vmscan::Gfp::NoRetry`]): no frame, no readahead.
pub fn add_new_page(mapping: &AddressSpace, index: u64) -> Result<Option<PageRef<'_>>, FsError> {
    let page = mapping
        .cache
        .alloc_page_gfp(crate::mm::vmscan::Gfp::NoRetry)?;
    // __SetPageLocked on a page nobody else can see yet.
    crate::mm::waitqueue::trylock_page(*page);
    match add_to_page_cache_lru(mapping, &page, index) {
        Ok(()) => Ok(Some(page)),
        Err(()) => {
            unlock_page(*page);
            Ok(None)
        }
    }
}

/// read_cache_page: page `index`, locked and uptodate, read with `readpage` if it was not.
///
/// `readpage` gets the page locked and not uptodate; it must unlock it when the read is done
/// (from the I/O completion) or at once on failure, the readpage contract. Taking the lock
/// again is the wait for the read.
///
/// Models: mm/filemap.c do_read_cache_page() (v5.10).
pub fn read_cache_page<'m>(
    mapping: &'m AddressSpace,
    index: u64,
    readpage: impl FnOnce(&PageRef<'m>) -> Result<(), FsError>,
) -> Result<PageRef<'m>, FsError> {
    let page = find_or_create_page(mapping, index)?;
    if page.uptodate() {
        return Ok(page);
    }
    page.clear_error();
    readpage(&page)?;
    lock_page(page.page());
    if !page.uptodate() {
        unlock_page(page.page());
        return Err(FsError::Io(std::io::Error::from_raw_os_error(libc::EIO)));
    }
    Ok(page)
}

/// add_to_page_cache_lru: insert a locked page at `index`; Err if the slot is taken.
fn add_to_page_cache_lru(mapping: &AddressSpace, page: &PageRef<'_>, index: u64) -> Result<(), ()> {
    let cache = &*mapping.cache;
    vm_bug_on_page!(cache.bug(), !page.locked(), &**page);
    {
        let mut ip = mapping.i_pages();
        if !ip.insert(index, page.pfn().0) {
            return Err(());
        }
        page.frame().index.store(index, Ordering::Release);
        page.frame().mapping.store(mapping.id(), Ordering::Release);
    }
    // The page cache's own reference.
    let cache_ref = page.get();
    let _ = cache_ref.into_raw();
    let w = page.flags_for_record();
    page.record(Op::AddToCache, 0, w, w, index as u32);
    cache.lru_add(page.page());
    Ok(())
}

/// delete_from_page_cache: remove a locked page from its mapping and drop the cache's reference.
///
/// Models: mm/filemap.c delete_from_page_cache() (v5.10).
pub fn delete_from_page_cache(mapping: &AddressSpace, page: Page<'_>) {
    let cache = &*mapping.cache;
    bug_on!(cache.bug(), !page.locked(), &page);
    let index = page.index();
    {
        mapping.i_pages().remove(index, page.pfn().0);
        page.frame().mapping.store(NO_MAPPING, Ordering::Release);
    }
    // A dirty page leaving the cache loses data unless the caller cancelled it on purpose
    // (truncate does): the kernel warns and fixes the accounting.
    if warn_on_once!(cache.bug(), page.dirty(), &page)
        && page.frame().flags.test_and_clear(cache.mask(PG::Dirty))
    {
        cache.stats.nr_dirty.dec();
    }
    let w = page.flags_for_record();
    page.record(Op::DeleteFromCache, 0, w, w, index as u32);
    cache.lru_del(page);
    drop(PageRef::from_raw(page));
}

/// Up to `max` pages tagged `tag` in `[*index, end]`, with references; moves `*index` past the
/// last one found (find_get_pages_range_tag).
pub fn find_get_pages_range_tag<'m>(
    mapping: &'m AddressSpace,
    index: &mut u64,
    end: u64,
    tag: Tag,
    max: usize,
) -> Vec<PageRef<'m>> {
    let mut out = Vec::with_capacity(max);
    if *index > end {
        return out;
    }
    let found = mapping.i_pages().find_marked(tag, *index, end, max);
    for (idx, pfn) in found {
        *index = idx.saturating_add(1);
        if let Some(p) = mapping.cache.page(Pfn(pfn)).try_get() {
            if p.mapping_id() == mapping.id() && p.index() == idx {
                out.push(p);
            }
        }
    }
    if out.is_empty() && *index <= end {
        // Everything found was being freed; nothing else is tagged in range.
        *index = end.saturating_add(1);
    }
    out
}

/// tag_pages_for_writeback: copy DIRTY to TOWRITE for every index in `[start, end]`.
pub fn tag_pages_for_writeback(mapping: &AddressSpace, start: u64, end: u64) {
    mapping
        .i_pages()
        .copy_mark(Tag::Dirty, Tag::Towrite, start, end);
}

/// mapping_set_error: remember a writeback error for the next fsync.
pub fn mapping_set_error(mapping: &AddressSpace, err: &FsError) {
    set_error_bit(&mapping.core, err);
}

fn set_error_bit(core: &MappingCore, err: &FsError) {
    let bit = match err {
        FsError::NoSpace | FsError::PreviousNoSpace => AS_ENOSPC,
        _ => AS_EIO,
    };
    // AcqRel: pairs with the swap in filemap_check_errors; whoever sees the bit sees it once.
    core.errors.fetch_or(bit, Ordering::AcqRel);
}

impl PageCache {
    /// mapping_set_error for an I/O completion that kept only the mapping id (the mapping may
    /// be gone by then; the error then has nobody left to report to).
    pub fn set_mapping_error(&self, mapping_id: u64, err: &FsError) {
        if let Some(core) = self
            .mappings
            .get(&mapping_id)
            .map(|c| Arc::clone(c.value()))
        {
            set_error_bit(&core, err);
        }
    }
}

/// filemap_check_errors: report (and clear) a remembered writeback error, ENOSPC first.
pub fn filemap_check_errors(mapping: &AddressSpace) -> Result<(), FsError> {
    let e = mapping.core.errors.swap(0, Ordering::AcqRel);
    if e & AS_ENOSPC != 0 {
        Err(FsError::PreviousNoSpace)
    } else if e & AS_EIO != 0 {
        Err(FsError::PreviousIo)
    } else {
        Ok(())
    }
}

/// __filemap_fdatawrite_range: start writeback of the dirty pages in bytes `[start, end]`.
pub fn filemap_fdatawrite_range_mode(
    mapping: &AddressSpace,
    start: u64,
    end: u64,
    mode: SyncMode,
) -> Result<(), FsError> {
    if !mapping.tagged(Tag::Dirty) {
        return Ok(());
    }
    let mut wbc = WritebackControl::range(mode, start, end);
    do_writepages(mapping, &mut wbc)
}

/// filemap_fdatawrite_range: data-integrity writeback (WB_SYNC_ALL) of bytes `[start, end]`.
pub fn filemap_fdatawrite_range(
    mapping: &AddressSpace,
    start: u64,
    end: u64,
) -> Result<(), FsError> {
    filemap_fdatawrite_range_mode(mapping, start, end, SyncMode::All)
}

/// filemap_fdatawrite: WB_SYNC_ALL writeback of the whole mapping.
pub fn filemap_fdatawrite(mapping: &AddressSpace) -> Result<(), FsError> {
    filemap_fdatawrite_range(mapping, 0, u64::MAX)
}

/// filemap_flush: WB_SYNC_NONE writeback of the whole mapping.
pub fn filemap_flush(mapping: &AddressSpace) -> Result<(), FsError> {
    filemap_fdatawrite_range_mode(mapping, 0, u64::MAX, SyncMode::None)
}

/// filemap_fdatawait_range: wait for writeback of bytes `[start, end]` to end, without the
/// page lock, then report a remembered error.
///
/// Models: mm/filemap.c __filemap_fdatawait_range() + filemap_check_errors() (v5.10).
pub fn filemap_fdatawait_range(
    mapping: &AddressSpace,
    start: u64,
    end: u64,
) -> Result<(), FsError> {
    let mut index = start >> PAGE_SHIFT;
    let end = end >> PAGE_SHIFT;
    loop {
        let batch =
            find_get_pages_range_tag(mapping, &mut index, end, Tag::Writeback, PAGEVEC_SIZE);
        if batch.is_empty() {
            break;
        }
        for page in &batch {
            wait_on_page_writeback(page.page());
            page.clear_error();
        }
    }
    filemap_check_errors(mapping)
}

/// filemap_write_and_wait_range: fdatawrite then fdatawait (unless the write failed with EIO).
pub fn filemap_write_and_wait_range(
    mapping: &AddressSpace,
    start: u64,
    end: u64,
) -> Result<(), FsError> {
    let w = filemap_fdatawrite_range(mapping, start, end);
    if matches!(w, Err(FsError::Io(_)) | Err(FsError::PreviousIo)) {
        return w;
    }
    let r = filemap_fdatawait_range(mapping, start, end);
    w.and(r)
}

/// Clear PG_writeback with `rmw` (returns the old word) under the owning mapping's i_pages lock,
/// keeping the WRITEBACK tag and the counters in step: the bookkeeping half of
/// test_clear_page_writeback / __folio_end_writeback.
pub(crate) fn clear_writeback_bookkeeping(page: Page<'_>, rmw: impl FnOnce() -> u64) -> u64 {
    let cache = page.cache;
    let wb = cache.mask(PG::Writeback);
    let core = cache
        .mappings
        .get(&page.mapping_id())
        .map(|c| Arc::clone(c.value()));
    let old = match core {
        Some(core) => {
            let mut ip = core.i_pages.lock();
            let old = rmw();
            if old & wb != 0 {
                ip.set_mark(page.index(), page.pfn().0, Tag::Writeback, false);
            }
            old
        }
        // Not in any mapping (truncated while under writeback): only the bit.
        None => rmw(),
    };
    if old & wb != 0 {
        cache.stats.wb_ends.inc();
        cache.stats.nr_writeback.dec();
        page.record(Op::ClearWriteback, 0, old, old & !wb, 0);
        // A page whose writeback ended is reclaimable once clean and unlocked.
        cache.throttle_wake();
    }
    old
}

/// test_clear_page_writeback: clear PG_writeback and the WRITEBACK tag; true if it was set.
///
/// Models: mm/page-writeback.c test_clear_page_writeback() (v5.10).
pub fn test_clear_page_writeback(page: Page<'_>) -> bool {
    let wb = page.cache.mask(PG::Writeback);
    clear_page_writeback_word(page) & wb != 0
}

/// test_clear_page_writeback returning the old flags word (bit and epoch of the writeback that
/// ended, from the clearing RMW itself).
fn clear_page_writeback_word(page: Page<'_>) -> u64 {
    let wb = page.cache.mask(PG::Writeback);
    clear_writeback_bookkeeping(page, || page.frame().flags.clear(wb))
}

/// end_page_writeback: the I/O of a writeback is complete; clear PG_writeback and wake waiters,
/// in the shape of the cache's era.
///
/// Models: mm/filemap.c end_page_writeback() (v5.8, v5.9: no reference; v5.10/v5.11: pinned,
/// 073861ed77b6), folio_end_writeback() (v6.9: XOR), and ALT-A (never merged, SEMANTICS 1.6).
///
/// # Context
/// Runs on an I/O completion thread. Holds no page lock; before 073861ed77b6 holds no reference
/// either, so the frame may be freed and reused by the time the wake runs (SEMANTICS S2).
///
/// ```text
///   CPU1 (this function)           CPU2                          CPU3 (write_cache_pages)
///   clear PG_writeback (W1 ends)
///   ...stalls...                   lock; start W2; unlock
///                                  redirty
///                                                                lock; dirty && W -> sleep
///   wake: CPU3 woken by W1's end                                 `if`: BUG_ON(PageWriteback)
/// ```
pub fn end_page_writeback(page: Page<'_>) {
    let cache = page.cache;
    let wb = cache.mask(PG::Writeback);
    let waiters = cache.mask(PG::Waiters);
    let mode = cache.switches().end_wb;
    if page.test(PG::Reclaim) {
        page.frame().flags.clear(cache.mask(PG::Reclaim));
        cache.rotate_reclaimable_page(page);
    }
    let pin = match mode {
        EndWriteback::NoRef => None,
        _ => Some(page.get()),
    };
    // Diagnostics for the reused-frame check (S2t): which allocation of the frame we are ending.
    let generation = page.generation();
    match mode {
        EndWriteback::NoRef | EndWriteback::Ref => {
            let old = clear_page_writeback_word(page);
            if bug_on!(cache.bug(), old & wb == 0, &page) {
                return;
            }
            // smp_mb__after_atomic(): implied, PG_waiters is in the word we just changed.
            cache.hook(HookPoint::EndWritebackWindow, page.pfn());
            // Hugh's VM_BUG_ON(PageTail): looking at PG_waiters of a frame that has since been
            // freed and handed to someone else. Only possible without the pin.
            vm_bug_on_page!(cache.bug(), page.generation() != generation, &page);
            wake_up_page(page, PG::Writeback, epoch_of(old));
        }
        EndWriteback::Xor => {
            if vm_bug_on_page!(cache.bug(), !page.writeback(), &page) {
                return;
            }
            let old = clear_writeback_bookkeeping(page, || page.frame().flags.xor(wb));
            cache.hook(HookPoint::EndWritebackWindow, page.pfn());
            if old & waiters != 0 {
                crate::mm::waitqueue::wake_up_page_bit(page, PG::Writeback, epoch_of(old));
            }
        }
        EndWriteback::ClearUnderLock => {
            let old = clear_writeback_bookkeeping(page, || {
                let (old, done) = page.frame().flags.clear_unless(wb, waiters);
                if done || old & wb == 0 {
                    return old;
                }
                // Waiters: clear and wake in one bucket-locked section, so no waiter for a
                // newer writeback can be queued between the clear and the wake.
                let mut cleared = old;
                // The epoch of the writeback that ends comes from the word the CAS loop read
                // (W still set), like the other shapes take it from their clearing RMW.
                wake_up_page_bit_with(page, PG::Writeback, epoch_of(old), || {
                    cleared = page.frame().flags.clear(wb);
                });
                cleared
            });
            bug_on!(cache.bug(), old & wb == 0, &page);
            cache.hook(HookPoint::EndWritebackWindow, page.pfn());
        }
    }
    drop(pin);
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::mm::testing::{SyncAops, cache_for};
    use crate::mm::writeback::set_page_dirty;
    use crate::mm::{ALL_ERAS, Era};

    #[test]
    fn find_or_create_inserts_locked_and_finds_again() {
        let c = cache_for(Era::V5_10, 8);
        let m = AddressSpace::new(&c, Arc::new(SyncAops::default()));
        let p = find_or_create_page(&m, 7).expect("page");
        assert!(p.locked());
        assert_eq!(p.index(), 7);
        assert_eq!(p.refcount(), 2, "cache + caller");
        unlock_page(*p);
        let pfn = p.pfn();
        drop(p);
        let q = find_get_page(&m, 7).expect("cached");
        assert_eq!(q.pfn(), pfn);
        assert!(find_get_page(&m, 8).is_none());
        assert_eq!(m.nrpages(), 1);
    }

    #[test]
    fn delete_frees_the_frame_for_another_mapping() {
        let c = cache_for(Era::V5_9, 1);
        let a = AddressSpace::new(&c, Arc::new(SyncAops::default()));
        let b = AddressSpace::new(&c, Arc::new(SyncAops::default()));
        let p = find_or_create_page(&a, 0).expect("page");
        let pfn = p.pfn();
        delete_from_page_cache(&a, *p);
        unlock_page(*p);
        drop(p);
        assert_eq!(a.nrpages(), 0);
        let q = find_or_create_page(&b, 3).expect("the one frame, reused");
        assert_eq!(q.pfn(), pfn);
        assert_eq!(q.mapping_id(), b.id());
        unlock_page(*q);
    }

    #[test]
    fn tagged_lookup_returns_only_tagged_pages_in_batches() {
        let c = cache_for(Era::V5_11, 64);
        let m = AddressSpace::new(&c, Arc::new(SyncAops::default()));
        for i in 0..40u64 {
            let p = find_or_create_page(&m, i).expect("page");
            if i % 2 == 0 {
                set_page_dirty(&m, *p);
            }
            unlock_page(*p);
        }
        let mut index = 0;
        let first = find_get_pages_range_tag(&m, &mut index, u64::MAX, Tag::Dirty, PAGEVEC_SIZE);
        assert_eq!(first.len(), PAGEVEC_SIZE);
        assert!(first.iter().all(|p| p.index() % 2 == 0));
        assert_eq!(index, 29);
        let rest = find_get_pages_range_tag(&m, &mut index, u64::MAX, Tag::Dirty, PAGEVEC_SIZE);
        assert_eq!(rest.len(), 5);
        let none = find_get_pages_range_tag(&m, &mut index, u64::MAX, Tag::Dirty, PAGEVEC_SIZE);
        assert!(none.is_empty());
    }

    #[test]
    fn sticky_errors_are_reported_once() {
        let c = cache_for(Era::V5_10, 1);
        let m = AddressSpace::new(&c, Arc::new(SyncAops::default()));
        assert!(filemap_check_errors(&m).is_ok());
        mapping_set_error(&m, &FsError::NoSpace);
        mapping_set_error(&m, &FsError::Corrupted("x"));
        assert!(matches!(
            filemap_check_errors(&m),
            Err(FsError::PreviousNoSpace)
        ));
        assert!(filemap_check_errors(&m).is_ok());
    }

    #[test]
    fn end_page_writeback_clears_tag_and_bit_in_every_era() {
        for era in ALL_ERAS {
            let c = cache_for(era, 2);
            let m = AddressSpace::new(&c, Arc::new(SyncAops::default()));
            let p = find_or_create_page(&m, 0).expect("page");
            crate::mm::writeback::set_page_writeback(*p);
            assert_eq!(m.tagged_indexes(Tag::Writeback), vec![0]);
            unlock_page(*p);
            end_page_writeback(*p);
            assert!(!p.writeback(), "{era}");
            assert!(m.tagged_indexes(Tag::Writeback).is_empty(), "{era}");
            assert_eq!(c.stats().wb_ends, 1);
            assert_eq!(p.refcount(), 2, "{era}: a pin, if taken, is dropped");
        }
    }

    #[test]
    fn end_page_writeback_of_a_clean_page_is_a_bug() {
        for era in ALL_ERAS {
            let mut cfg = crate::mm::CacheConfig::new(era, 1);
            cfg.on_bug = crate::bug::OnBug::Warn;
            let c = PageCache::new(cfg).expect("cache");
            let p = c.alloc_page().expect("page");
            end_page_writeback(*p);
            let expect = u64::from(era != Era::V6_9 || crate::bug::debug_vm());
            assert_eq!(c.bug().total(), expect, "{era}");
        }
    }

    #[test]
    fn fdatawait_waits_for_writeback_and_reports_errors() {
        let c = cache_for(Era::V5_11, 2);
        let m = AddressSpace::new(&c, Arc::new(SyncAops::default()));
        let p = find_or_create_page(&m, 0).expect("page");
        crate::mm::writeback::set_page_writeback(*p);
        unlock_page(*p);
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(std::time::Duration::from_millis(20));
                p.set_error();
                mapping_set_error(&m, &FsError::Corrupted("test"));
                end_page_writeback(*p);
            });
            assert!(matches!(
                filemap_fdatawait_range(&m, 0, u64::MAX),
                Err(FsError::PreviousIo)
            ));
        });
        assert!(!p.writeback());
        assert!(!p.error(), "fdatawait clears PG_error");
    }
}
