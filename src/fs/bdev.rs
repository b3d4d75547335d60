//! The block-device mapping: the volume's bytes as pages of the page cache.
//!
//! Models: fs/block_dev.c (the bdev inode's mapping, blkdev_writepage / blkdev_readpage) and the
//! buffer-head helpers FAT uses for metadata (sb_bread, mark_buffer_dirty, sync_dirty_buffer)
//! (v5.10), reduced to whole pages: page `i` of this mapping holds volume bytes
//! `[i * PAGE_SIZE, (i + 1) * PAGE_SIZE)`.
//!
//! FAT sectors and directory clusters live here, in the same cache and under the same era as
//! file data, so metadata writeback takes part in the races too. Reads and writes go through the
//! device's I/O queue: a page read completes on a completion thread, which fills the page, marks
//! it uptodate and unlocks it (the reader sleeps in lock_page meanwhile); a writeback completes
//! there too, with end_page_writeback.
//!
//! Dirty tracking is per 512-byte block inside a page, as the kernel's buffer heads track it:
//! a bdev page can cover the last sectors of a directory cluster and the first sectors of a
//! file's cluster, whose current bytes live in the file's own mapping. Writing the whole page
//! back would put this page's stale copy of the file's sectors over the file's data, so
//! writepage writes only the blocks [`Bdev::write`] dirtied.

use std::ops::Range;
use std::time::Duration;

use crate::dev::{Bio, BioOp, IoQueue};
use crate::error::FsError;
use crate::fs::fs_writeback::{Bdi, WbInode};
use crate::fs::order::BlockOrder;
use crate::mm::filemap::Tag;
use crate::mm::filemap::{
    AddressSpace, end_page_writeback, filemap_check_errors, filemap_fdatawait_range,
    filemap_fdatawrite_range, find_lock_page, read_cache_page,
};
use crate::mm::waitqueue::{unlock_page, wait_on_page_bit};
use crate::mm::writeback::{
    WritebackControl, generic_writepages, redirty_page_for_writepage, set_page_dirty,
    set_page_writeback, wait_on_page_writeback, write_cache_pages,
};
use crate::mm::{AddressSpaceOps, PAGE_SHIFT, PAGE_SIZE, PG, PageCache, PageRef};
use crate::sync::{Arc, AtomicU32, AtomicU64, Mutex, Ordering};

/// The block size of dirty tracking in the block-device mapping (the smallest sector).
pub const BDEV_BLOCK: usize = 512;

/// Blocks per page.
const BLOCKS_PER_PAGE: usize = PAGE_SIZE / BDEV_BLOCK;

/// writepage and readpage of a mapping laid linearly on the device: page `i` is device bytes
/// `base + i * PAGE_SIZE ..`, straight to the I/O queue. The block-device mapping is the case
/// `base = 0` over the whole device.
#[derive(Debug)]
pub struct BdevAops {
    queue: Arc<IoQueue>,
    base: u64,
    size: u64,
    /// Dirty blocks per page index, one bit per [`BDEV_BLOCK`]; changed under the page lock
    /// (by [`Bdev::write`] and writepage), so the map's lock is only for the map itself. A
    /// dirty page with no entry was dirtied some other way and is written whole.
    dirty_blocks: Mutex<rustc_hash::FxHashMap<u64, u8>>,
    /// The mapping's place on the flusher's list (never queued when there is no flusher).
    wb: Arc<WbInode>,
    /// Device bytes below this are written before the bytes above it in every metadata
    /// write (see [`BdevAops::write_blocks_ordered`]): the boot sector, FSInfo and the FATs.
    order_boundary: AtomicU64,
    /// Writeback sends the dirty blocks in the crash-safe order first (the volume's metadata
    /// mapping); a plain linear mapping (the scenarios' device) keeps generic_writepages.
    ordered: bool,
    /// Held by the one ordered metadata write running (see
    /// [`BdevAops::write_blocks_ordered`]).
    ordered_lock: Mutex<()>,
    /// The count of ordered metadata writes (see [`OrderedEpochs`]).
    epochs: Mutex<OrderedEpochs>,
    /// Orders between dirty blocks that the next ordered metadata write keeps (see
    /// [`Bdev::order_writes`]). A leaf lock: nothing is taken while it is held.
    order: Mutex<BlockOrder>,
}

/// The count of ordered metadata writes, for callers that must know when a change they made
/// is on the disk (the FAT's freed clusters, see [`Bdev::write_epoch`]).
///
/// Under its own lock, not `ordered_lock` (held over a whole write's I/O): a write takes a
/// number under this lock before its first look for dirty pages, so a change made before a
/// caller reads `started` is seen by every write numbered above the value read.
#[derive(Debug, Default)]
struct OrderedEpochs {
    /// Ordered writes started so far; the number of the latest.
    started: u64,
    /// The number of the latest ordered write that finished with every block on the disk.
    done: u64,
    /// An ordered write failed: the blocks it took are not on the disk and will not be
    /// written again (their dirty records are gone), so no later write proves anything.
    failed: bool,
}

/// The order in which a metadata write sends dirty blocks, each group waited for before the
/// next starts (and within a phase, the waves of [`BlockOrder::waves`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    /// The boot sector, FSInfo and FAT region: chains before the entries that name them.
    Tables,
    /// Directories: entries after the chains they point into.
    Entries,
}

impl BdevAops {
    /// Page I/O for the whole device (`size` bytes) behind `queue`, listed through `wb`.
    pub fn new(queue: Arc<IoQueue>, size: u64, wb: Arc<WbInode>) -> Self {
        BdevAops {
            wb,
            ordered: true,
            ..BdevAops::linear(queue, 0, size)
        }
    }

    /// Page I/O for the `size` bytes of the device that start at byte `base`.
    pub fn linear(queue: Arc<IoQueue>, base: u64, size: u64) -> Self {
        BdevAops {
            queue,
            base,
            size,
            dirty_blocks: Mutex::new(rustc_hash::FxHashMap::default()),
            wb: WbInode::new(None),
            order_boundary: AtomicU64::new(0),
            ordered: false,
            ordered_lock: Mutex::new(()),
            epochs: Mutex::new(OrderedEpochs::default()),
            order: Mutex::new(BlockOrder::default()),
        }
    }

    /// The device bytes of page `index` (the last page may be partial).
    fn span(&self, index: u64) -> Result<(u64, usize), FsError> {
        let off = index << PAGE_SHIFT;
        if off >= self.size {
            log::error!(
                "bdev: page {index} is past the end of the range ({} bytes)",
                self.size
            );
            return Err(FsError::Io(std::io::Error::from_raw_os_error(libc::EIO)));
        }
        Ok((
            self.base + off,
            (self.size - off).min(PAGE_SIZE as u64) as usize,
        ))
    }

    /// Marks the blocks under page bytes `[from, to)` of page `index` dirty.
    fn mark_blocks(&self, index: u64, from: usize, to: usize) {
        let first = from / BDEV_BLOCK;
        let last = to.div_ceil(BDEV_BLOCK).min(BLOCKS_PER_PAGE);
        let bits = (first..last).fold(0u8, |b, i| b | 1 << i);
        *self.dirty_blocks.lock().entry(index).or_insert(0) |= bits;
    }

    /// Stops the blocks under page bytes `[from, to)` of the locked page `index` from being
    /// written; a dirty page without a record was dirty whole, so it keeps the other blocks.
    fn clear_blocks(&self, index: u64, from: usize, to: usize, page_dirty: bool) {
        let first = from / BDEV_BLOCK;
        let last = to.div_ceil(BDEV_BLOCK).min(BLOCKS_PER_PAGE);
        let bits = (first..last).fold(0u8, |b, i| b | 1 << i);
        let mut map = self.dirty_blocks.lock();
        match map.get_mut(&index) {
            Some(b) => *b &= !bits,
            None if page_dirty => {
                map.insert(index, !bits);
            }
            None => {}
        }
    }

    /// The runs of dirty blocks of page `index` as (offset in page, length), clipped to
    /// `len`, forgetting them; the whole `len` if none were recorded.
    fn take_dirty_runs(&self, index: u64, len: usize) -> Vec<(usize, usize)> {
        let Some(bits) = self.dirty_blocks.lock().remove(&index) else {
            return vec![(0, len)];
        };
        let mut runs: Vec<(usize, usize)> = Vec::new();
        for i in (0..BLOCKS_PER_PAGE).filter(|i| bits & 1 << i != 0) {
            let at = i * BDEV_BLOCK;
            if at >= len {
                break;
            }
            let n = BDEV_BLOCK.min(len - at);
            match runs.last_mut() {
                Some((start, l)) if *start + *l == at => *l += n,
                _ => runs.push((at, n)),
            }
        }
        runs
    }

    /// As [`BdevAops::take_dirty_runs`], but the page is left with an empty record, so a later
    /// writepage of the still-PG_dirty page writes nothing unless blocks are dirtied again
    /// (the kernel's page whose buffers sync_dirty_buffer already wrote).
    fn take_dirty_runs_keep_record(&self, index: u64, len: usize) -> Vec<(usize, usize)> {
        let runs = self.take_dirty_runs(index, len);
        self.dirty_blocks.lock().insert(index, 0);
        runs
    }

    /// The phase of the block at device byte `at` (see [`Phase`]).
    fn phase(&self, at: u64) -> Phase {
        if at < self.order_boundary.load(Ordering::Relaxed) {
            Phase::Tables
        } else {
            Phase::Entries
        }
    }

    /// Writes the dirty blocks of every dirty page and waits for them, in two phases, the
    /// first waited for before the second is sent: the boot sector, FSInfo and FATs, then
    /// everything else (directories). So a process killed at any moment leaves no entry
    /// naming a chain the FAT on the disk lacks. The other orders the filesystem needs (a
    /// new directory cluster's contents before the FAT links it, an entry's removal before
    /// the FAT frees its chain) it gets by calling this between the two changes (see
    /// `FatStore::barrier`).
    ///
    /// Each page stays locked from before its blocks are copied until all the I/O is done:
    /// the page lock stands in for the locks of the page's buffers, which a buffer write
    /// holds over its I/O, so no writepage can send a newer copy of a block that could
    /// land before this one, and no change can slip in between the phases. A writeback
    /// already in flight on the page is waited for first, re-testing the bit as
    /// `__wait_on_bit` does for a buffer lock, whatever the era's page waits do. PG_dirty
    /// stays set; the next writepage finds no dirty block and writes nothing.
    ///
    /// # Context
    /// May sleep. Locks pages in ascending index order, as write_cache_pages does.
    fn write_blocks_ordered(&self, mapping: &AddressSpace) -> Result<(), FsError> {
        // One ordered write at a time: the later looks below lock pages out of index order,
        // which is safe only because every other locker of these pages holds one page at a
        // time.
        let _one = self.ordered_lock.lock();
        let number = {
            let mut e = self.epochs.lock();
            e.started += 1;
            e.started
        };
        let mut locked: Vec<PageRef<'_>> = Vec::new();
        let mut held = rustc_hash::FxHashSet::default();
        let mut runs: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut first: Result<(), FsError> = Ok(());
        // Every dirty page, then again every page dirtied since the last look, until a look
        // finds none new. A change copied from a locked page was made before the lock, so
        // whatever it depends on and was changed before it (a chain for an entry; a rename's
        // new entry for its old entry's removal) was dirtied before that too: the next look
        // finds it, and it goes out in this write, the tables first. There is no cap on the
        // looks: the pages a look locks may carry changes made after its scan, whose
        // dependencies only a further look finds (a cap of 8 let a directory page copied in
        // the 8th look reach the disk naming a cluster whose FAT change did not: an entry
        // naming a free cluster after a kill, seen once in 300 crash rounds). It ends: a look
        // that holds no page no earlier look held is the last, and the mapping has finitely
        // many. A page a look skips as clean (its tag outlived its dirt) holds no change
        // anything copied depends on: a change made before our scan and gone clean since was
        // written back (we waited for that writeback above).
        loop {
            let new: Vec<u64> = mapping
                .tagged_indexes(Tag::Dirty)
                .into_iter()
                .filter(|i| !held.contains(i))
                .collect();
            let held_before = held.len();
            for index in new {
                let Some(page) = find_lock_page(mapping, index) else {
                    continue;
                };
                while page.writeback() {
                    wait_on_page_bit(page.page(), PG::Writeback);
                }
                let (offset, len) = match self.span(index) {
                    Ok(s) if page.dirty() => s,
                    Ok(_) => {
                        unlock_page(page.page());
                        continue;
                    }
                    Err(e) => {
                        unlock_page(page.page());
                        first = first.and(Err(e));
                        continue;
                    }
                };
                let dirty = self.take_dirty_runs_keep_record(index, len);
                page.with_data(|d| {
                    for (at, n) in dirty {
                        runs.push((offset + at as u64, d[at..at + n].to_vec()));
                    }
                });
                held.insert(index);
                locked.push(page);
            }
            if held.len() == held_before {
                break;
            }
        }
        // The blocks copied, and the wave of each under the orders recorded among them.
        let blocks: rustc_hash::FxHashSet<u64> = runs
            .iter()
            .flat_map(|(start, data)| {
                let first = start / BDEV_BLOCK as u64;
                first..(start + data.len() as u64).div_ceil(BDEV_BLOCK as u64)
            })
            .collect();
        let waves = self.order.lock().waves(&blocks);
        let key = |at: u64| {
            let wave = waves.get(&(at / BDEV_BLOCK as u64)).copied().unwrap_or(0);
            (self.phase(at), wave)
        };
        let mut parts: Vec<((Phase, u32), u64, Vec<u8>)> = Vec::new();
        for (start, data) in runs {
            // Split the run where the phase or the wave changes (runs start on a block).
            let n = data.len();
            let mut from = 0;
            while from < n {
                let k = key(start + from as u64);
                let mut to = (from + BDEV_BLOCK).min(n);
                while to < n && key(start + to as u64) == k {
                    to = (to + BDEV_BLOCK).min(n);
                }
                parts.push((k, start + from as u64, data[from..to].to_vec()));
                from = to;
            }
        }
        let (tables, entries): (Vec<_>, Vec<_>) =
            parts.into_iter().partition(|p| p.0.0 == Phase::Tables);
        for (phase, mut parts) in [(Phase::Tables, tables), (Phase::Entries, entries)] {
            if first.is_err() {
                // A failed phase stops the later ones: they must not land without it.
                break;
            }
            let mut waits = Vec::new();
            let mut submit = |op: BioOp, at: u64| {
                let (tx, rx) = std::sync::mpsc::channel();
                self.queue.submit(Bio {
                    op,
                    end_io: Box::new(move |r| {
                        // The receiver waits below; if it is gone nobody is left to tell.
                        let _ = tx.send(r.map(|_| ()));
                    }),
                });
                waits.push((at, rx));
            };
            // Stable: within a wave the parts keep their (ascending) order.
            parts.sort_by_key(|p| p.0.1);
            let waves = parts.last().map_or(0, |p| p.0.1) + 1;
            if waves > 1 {
                // Blocks ordered among themselves: one chain of writes, wave by wave, instead
                // of a trip through the queue per wave. The writers of these blocks wait on
                // their pages for the whole write, behind whatever data the queue holds, so
                // each trip costs them: a trip per wave (nine per 4 MiB) cost a sequential
                // write a quarter of its speed.
                log::debug!(
                    "bdev: ordered write {number}: {} parts of {phase:?} in {waves} waves",
                    parts.len()
                );
                let at = parts.first().map_or(0, |p| p.1);
                let parts = parts.into_iter().map(|(_, at, data)| (at, data)).collect();
                submit(BioOp::WriteChain { parts }, at);
            } else {
                for (_, offset, data) in parts {
                    submit(BioOp::Write { offset, data }, offset);
                }
            }
            for (at, rx) in waits {
                let r = match rx.recv_timeout(Duration::from_secs(600)) {
                    Ok(r) => r,
                    Err(_) => Err(FsError::Io(std::io::Error::other(
                        "metadata write never completed",
                    ))),
                };
                if let Err(e) = r {
                    log::error!("bdev: metadata write at {at} failed: {e}");
                    first = first.and(Err(e));
                }
            }
        }
        // Spent even if a wave failed: the blocks' dirty records are gone, so no later write
        // carries these changes (and the failure stops durable_epoch for good).
        self.order.lock().written(&blocks);
        {
            let mut e = self.epochs.lock();
            if first.is_ok() && !e.failed {
                e.done = number;
            } else {
                e.failed = true;
            }
        }
        for page in &locked {
            unlock_page(page.page());
        }
        drop(locked);
        first
    }

    /// Whether page `index` has blocks a metadata write has not sent yet (a page without a
    /// record was dirtied whole).
    fn has_dirty_blocks(&self, index: u64) -> bool {
        self.dirty_blocks
            .lock()
            .get(&index)
            .is_none_or(|&bits| bits != 0)
    }

    /// readpage: submit a read of the locked, not-uptodate `page`; the completion fills it,
    /// sets PG_uptodate (or PG_error) and unlocks it.
    /// On an error before anything is submitted the page is marked PG_error and unlocked
    /// here, as the kernel's readpage contract has it, so no reader waits on it for ever.
    pub fn readpage(&self, cache: &Arc<PageCache>, page: &PageRef<'_>) -> Result<(), FsError> {
        let (offset, len) = match self.span(page.index()) {
            Ok(s) => s,
            Err(e) => {
                page.set_error();
                unlock_page(page.page());
                return Err(e);
            }
        };
        let cache = Arc::clone(cache);
        let pfn = page.pfn();
        self.queue.submit(Bio {
            op: BioOp::Read { offset, len },
            end_io: Box::new(move |r| {
                let p = cache.page(pfn);
                match r {
                    Ok(data) => {
                        p.with_data_mut(|d| {
                            d[..data.len()].copy_from_slice(&data);
                            d[data.len()..].fill(0);
                        });
                        p.set_uptodate();
                    }
                    Err(e) => {
                        log::error!("bdev: read of page at {offset} failed: {e}");
                        p.set_error();
                    }
                }
                unlock_page(p);
            }),
        });
        Ok(())
    }
}

impl AddressSpaceOps for BdevAops {
    /// Writes the page's dirty blocks (see the module doc), one bio per run; the last
    /// completion ends the writeback, after recording a failure on the page and mapping.
    fn writepage(
        &self,
        mapping: &AddressSpace,
        page: &PageRef<'_>,
        _wbc: &mut WritebackControl,
    ) -> Result<(), FsError> {
        let (offset, len) = match self.span(page.index()) {
            Ok(s) => s,
            Err(e) => {
                unlock_page(page.page());
                return Err(e);
            }
        };
        let runs = self.take_dirty_runs(page.index(), len);
        set_page_writeback(page.page());
        if runs.is_empty() {
            // No dirty block (its buffers were written by sync_buffers, or lie past the
            // device's end): as __block_write_full_page does with nothing to submit, the
            // writeback starts and ends here, which also clears the page's tags.
            unlock_page(page.page());
            end_page_writeback(page.page());
            return Ok(());
        }
        let parts: Vec<(u64, Vec<u8>)> = page.with_data(|d| {
            runs.iter()
                .map(|&(at, n)| (offset + at as u64, d[at..at + n].to_vec()))
                .collect()
        });
        unlock_page(page.page());
        let left = Arc::new(AtomicU32::new(
            u32::try_from(parts.len()).unwrap_or(u32::MAX),
        ));
        let failed = Arc::new(AtomicU32::new(0));
        let pfn = page.pfn();
        let mapping_id = mapping.id();
        for (at, data) in parts {
            let cache = Arc::clone(mapping.cache());
            let (left, failed) = (Arc::clone(&left), Arc::clone(&failed));
            self.queue.submit(Bio {
                op: BioOp::Write { offset: at, data },
                end_io: Box::new(move |r| {
                    if let Err(e) = r {
                        log::error!("bdev: write at {at} failed: {e}");
                        cache.set_mapping_error(mapping_id, &e);
                        // Relaxed: published to the last part by the AcqRel below.
                        failed.store(1, Ordering::Relaxed);
                    }
                    // AcqRel: the last part sees every other part's failure.
                    if left.fetch_sub(1, Ordering::AcqRel) == 1 {
                        let p = cache.page(pfn);
                        if failed.load(Ordering::Relaxed) != 0 {
                            p.set_error();
                        }
                        end_page_writeback(p);
                    }
                }),
            });
        }
        Ok(())
    }

    /// Writeback of the metadata mapping (the flusher, sync): the dirty blocks go out in the
    /// crash-safe order of [`BdevAops::write_blocks_ordered`]; then write_cache_pages walks
    /// the pages as usual, which now only clears their dirty state (and starts and ends a
    /// writeback on each, so this mapping keeps its part in the page-state races). A block
    /// dirtied between the two is not written out of order by the walk: its page is
    /// redirtied for the next ordered write.
    fn writepages(
        &self,
        mapping: &AddressSpace,
        wbc: &mut WritebackControl,
    ) -> Result<(), FsError> {
        if !self.ordered {
            return generic_writepages(mapping, wbc);
        }
        self.write_blocks_ordered(mapping)?;
        write_cache_pages(mapping, wbc, &mut |m, p, w| {
            if self.has_dirty_blocks(p.index()) {
                redirty_page_for_writepage(m, w, p.page());
                unlock_page(p.page());
                return Ok(());
            }
            self.writepage(m, p, w)
        })
    }

    /// The block-device inode goes on the flusher's list like any other.
    fn dirty_inode(&self) {
        self.wb.mark_dirty();
    }
}

/// The volume seen through the page cache, with byte-level access for metadata.
#[derive(Debug)]
pub struct Bdev {
    /// Shared with the flusher's list, which holds it weakly.
    mapping: Arc<AddressSpace>,
    aops: Arc<BdevAops>,
    queue: Arc<IoQueue>,
}

impl Bdev {
    /// The block-device mapping of the device behind `queue`, in `cache`, written back only
    /// when someone syncs it.
    pub fn new(cache: &Arc<PageCache>, queue: Arc<IoQueue>) -> Self {
        Bdev::with_flusher(cache, queue, None)
    }

    /// [`Bdev::new`] whose dirty pages `bdi`'s flusher also writes in the background, as the
    /// kernel's flusher writes the block-device inode's.
    pub fn with_flusher(
        cache: &Arc<PageCache>,
        queue: Arc<IoQueue>,
        bdi: Option<&Arc<Bdi>>,
    ) -> Self {
        let size = queue.device().size();
        let wb = WbInode::new(bdi);
        let aops = Arc::new(BdevAops::new(Arc::clone(&queue), size, Arc::clone(&wb)));
        let mapping = Arc::new(AddressSpace::new(
            cache,
            Arc::clone(&aops) as Arc<dyn AddressSpaceOps>,
        ));
        wb.attach(Arc::downgrade(&mapping));
        Bdev {
            mapping,
            aops,
            queue,
        }
    }

    /// The mapping (for writeback and truncate).
    pub fn mapping(&self) -> &AddressSpace {
        &self.mapping
    }

    /// Volume size in bytes.
    pub fn size(&self) -> u64 {
        self.queue.device().size()
    }

    /// Page `index`, locked and uptodate (read from the device if it was not cached).
    pub fn read_page_locked(&self, index: u64) -> Result<PageRef<'_>, FsError> {
        read_cache_page(&self.mapping, index, |page| {
            self.aops.readpage(self.mapping.cache(), page)
        })
    }

    /// Read `buf.len()` bytes at volume offset `offset` through the cache.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), FsError> {
        self.for_each_page(offset, buf.len(), |page, in_page, at, len| {
            page.with_data(|d| buf[at..at + len].copy_from_slice(&d[in_page..in_page + len]));
            false
        })
    }

    /// Write `data` at volume offset `offset` into the cache; the pages become dirty and reach
    /// the device at the next writeback (or [`Bdev::sync`]).
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<(), FsError> {
        self.for_each_page(offset, data.len(), |page, in_page, at, len| {
            page.with_data_mut(|d| d[in_page..in_page + len].copy_from_slice(&data[at..at + len]));
            // Under the page lock, before the page is dirtied: a writepage that sees the
            // page dirty also sees these blocks.
            self.aops.mark_blocks(page.index(), in_page, in_page + len);
            true
        })
    }

    /// Visit the pages covering `[offset, offset + len)` locked; `f(page, offset in page,
    /// offset in the caller's buffer, length)` returns whether it dirtied the page.
    fn for_each_page(
        &self,
        offset: u64,
        len: usize,
        mut f: impl FnMut(&PageRef<'_>, usize, usize, usize) -> bool,
    ) -> Result<(), FsError> {
        if offset
            .checked_add(len as u64)
            .is_none_or(|end| end > self.size())
        {
            log::error!(
                "bdev: access {offset}+{len} past the volume ({} bytes)",
                self.size()
            );
            return Err(FsError::Io(std::io::Error::from_raw_os_error(libc::EIO)));
        }
        let mut done = 0usize;
        while done < len {
            let pos = offset + done as u64;
            let in_page = (pos as usize) & (PAGE_SIZE - 1);
            let n = (PAGE_SIZE - in_page).min(len - done);
            let page = self.read_page_locked(pos >> PAGE_SHIFT)?;
            if f(&page, in_page, done, n) {
                set_page_dirty(&self.mapping, page.page());
            }
            unlock_page(page.page());
            done += n;
        }
        Ok(())
    }

    /// clean_bdev_aliases: bytes `[offset, offset + len)` now belong to a file, whose own
    /// mapping writes them; unwritten changes this mapping holds for them (a freed
    /// directory's last updates) are dropped, and a write of them in flight is waited for, so
    /// neither can land over the file's data.
    ///
    /// Models: fs/buffer.c clean_bdev_aliases(), called from __block_write_begin for new
    /// blocks (v5.10).
    pub fn clean_aliases(&self, offset: u64, len: u64) {
        let end = offset.saturating_add(len).min(self.size());
        let mut pos = offset;
        while pos < end {
            let index = pos >> PAGE_SHIFT;
            let page_end = (index + 1) << PAGE_SHIFT;
            let to = end.min(page_end);
            if let Some(page) = find_lock_page(&self.mapping, index) {
                let from_in = (pos - (index << PAGE_SHIFT)) as usize;
                let to_in = (to - (index << PAGE_SHIFT)) as usize;
                self.aops.clear_blocks(index, from_in, to_in, page.dirty());
                wait_on_page_writeback(page.page());
                unlock_page(page.page());
            }
            pos = to;
        }
    }

    /// Write back every dirty page, wait for it, and flush the device: a returned sync is
    /// durable.
    pub fn sync(&self) -> Result<(), FsError> {
        let w = filemap_fdatawrite_range(&self.mapping, 0, u64::MAX);
        let r = filemap_fdatawait_range(&self.mapping, 0, u64::MAX);
        w.and(r)?;
        self.flush_device()
    }

    /// Writes the dirty blocks of every dirty page and waits for them, as FAT writes its
    /// metadata on fsync, on a `sync` mount and for the boot sector's dirty bit
    /// (sync_dirty_buffer, fat_sync_bhs, sync_mapping_buffers): block I/O that never sets
    /// PG_writeback and never goes through write_cache_pages. [`Bdev::sync`], the whole
    /// mapping through write_cache_pages, is what sync(2) and syncfs do to a block device.
    ///
    /// Each page stays locked from before its blocks are copied until their I/O is done:
    /// the page lock stands in for the locks of the page's buffers, which a buffer write
    /// holds over its I/O, so no writepage can send a newer copy of a block that could
    /// land before this one. A writeback already in flight on the page is waited for first,
    /// re-testing the bit as `__wait_on_bit` does for a buffer lock, whatever the era's page
    /// waits do. PG_dirty stays set; the next writepage finds no dirty block and writes
    /// nothing (see [`BdevAops`]).
    ///
    /// # Context
    /// May sleep. Locks pages in ascending index order, as write_cache_pages does.
    pub fn sync_buffers(&self) -> Result<(), FsError> {
        self.write_ordered()?;
        self.flush_device()
    }

    /// [`Bdev::sync_buffers`] without the device flush: every dirty block is written, in
    /// the crash-safe order of [`BdevAops::write_blocks_ordered`], and waited for. What it
    /// wrote survives the death of this process (the image file has it); a power cut needs
    /// the flush as well.
    pub fn write_ordered(&self) -> Result<(), FsError> {
        self.aops.write_blocks_ordered(&self.mapping)
    }

    /// Records that the blocks holding device bytes `first`, as they are now, reach the disk
    /// no later than the blocks holding `then` once the caller has changed them: every
    /// ordered metadata write from now on sends them in that order (see
    /// [`BlockOrder::waves`]). Call it after making the change in `first` and before the one
    /// in `then`. False, with nothing promised, when the orders already recorded require
    /// the reverse; the caller then puts `first` on the disk with [`Bdev::write_ordered`]
    /// before it changes `then`.
    pub fn order_writes(&self, first: Range<u64>, then: Range<u64>) -> bool {
        let blocks =
            |r: &Range<u64>| r.start / BDEV_BLOCK as u64..r.end.div_ceil(BDEV_BLOCK as u64);
        let mut order = self.aops.order.lock();
        let promised = blocks(&first).all(|a| blocks(&then).all(|b| order.add(a, b)));
        if !promised {
            log::debug!("bdev: cannot order {first:?} before {then:?}: it would close a cycle");
        }
        promised
    }

    /// The number of ordered metadata writes started so far ([`Bdev::write_ordered`], or
    /// the flusher's and sync's writeback of this mapping). Every block written through
    /// [`Bdev::write`] before this call is on the disk once [`Bdev::durable_epoch`] exceeds
    /// the value returned.
    pub fn write_epoch(&self) -> u64 {
        self.aops.epochs.lock().started
    }

    /// The number of the latest ordered metadata write that put all its blocks on the disk;
    /// it stops advancing for good once one fails (see [`OrderedEpochs`]).
    pub fn durable_epoch(&self) -> u64 {
        self.aops.epochs.lock().done
    }

    /// Device bytes below `offset` (boot sector, FSInfo, the FATs) are written before those
    /// above it in every metadata write: a chain reaches the disk before an entry naming it.
    pub fn set_order_boundary(&self, offset: u64) {
        self.aops.order_boundary.store(offset, Ordering::Relaxed);
    }

    /// Flush the device's write cache (blkdev_issue_flush).
    pub fn flush_device(&self) -> Result<(), FsError> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.queue.submit(Bio {
            op: BioOp::Flush,
            end_io: Box::new(move |r| {
                // The receiver waits below; if it is gone there is nobody left to tell.
                let _ = tx.send(r.map(|_| ()));
            }),
        });
        match rx.recv_timeout(Duration::from_secs(600)) {
            Ok(r) => r,
            Err(_) => Err(FsError::Io(std::io::Error::other(
                "device flush never completed",
            ))),
        }
    }

    /// Report (and clear) a writeback error recorded on the mapping.
    pub fn check_errors(&self) -> Result<(), FsError> {
        filemap_check_errors(&self.mapping)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::bug::OnBug;
    use crate::dev::{BlockDevice, MemDevice};
    use crate::mm::{CacheConfig, Era};

    fn setup(size: usize, frames: usize) -> (Arc<MemDevice>, Arc<IoQueue>, Arc<PageCache>) {
        let dev = Arc::new(MemDevice::new(size));
        let q = Arc::new(IoQueue::new(dev.clone(), 2, Duration::ZERO).expect("queue"));
        let cfg = CacheConfig {
            on_bug: OnBug::Panic,
            ..CacheConfig::new(Era::V5_11, frames)
        };
        (dev, q, PageCache::new(cfg).expect("cache"))
    }

    #[test]
    fn bytes_across_pages_reach_the_device_on_sync_and_read_back_cold() {
        let (dev, q, cache) = setup(5 * PAGE_SIZE + 512, 16);
        dev.write_at(8000, b"old").expect("seed");
        let b = Bdev::new(&cache, Arc::clone(&q));
        let mut buf = [0u8; 3];
        b.read(8000, &mut buf).expect("read");
        assert_eq!(&buf, b"old", "read through the cache from the device");
        let data: Vec<u8> = (0..6000u32).map(|i| (i % 251) as u8).collect();
        b.write(3000, &data).expect("write");
        assert_eq!(
            dev.snapshot()[3000],
            0,
            "not on the device before writeback"
        );
        b.sync().expect("sync");
        assert_eq!(&dev.snapshot()[3000..9000], &data[..]);
        assert!(dev.flushes() >= 1);
        // A fresh cache reads it all back from the device, last partial page included.
        let (_, _, cache2) = setup(16, 16);
        let b2 = Bdev::new(&cache2, q);
        let mut back = vec![0u8; 6000];
        b2.read(3000, &mut back).expect("read back");
        assert_eq!(back, data);
        let mut tail = [0u8; 512];
        b2.read(5 * PAGE_SIZE as u64, &mut tail)
            .expect("partial last page");
    }

    #[test]
    fn writeback_writes_only_the_blocks_written_not_the_whole_page() {
        let (dev, q, cache) = setup(4 * PAGE_SIZE, 8);
        let b = Bdev::new(&cache, Arc::clone(&q));
        // The page is cached, then another writer (a file's own mapping, in a mount) puts
        // new bytes in blocks 2..8 of it on the device.
        let mut buf = [0u8; 4];
        b.read(PAGE_SIZE as u64, &mut buf).expect("cache the page");
        dev.write_at(PAGE_SIZE as u64 + 1024, &[0xDA; PAGE_SIZE - 1024])
            .expect("file data");
        // Metadata changes in blocks 0 and 1 only (a write straddling them).
        b.write(PAGE_SIZE as u64 + 500, &[0x11; 40]).expect("write");
        b.sync().expect("sync");
        let snap = dev.snapshot();
        let page = &snap[PAGE_SIZE..2 * PAGE_SIZE];
        assert!(
            page[500..540].iter().all(|x| *x == 0x11),
            "the write landed"
        );
        assert!(
            page[1024..].iter().all(|x| *x == 0xDA),
            "the page's stale copy of blocks 2..8 was not written over the device"
        );
    }

    #[test]
    fn sync_buffers_writes_dirty_blocks_without_page_writeback() {
        let (dev, q, cache) = setup(4 * PAGE_SIZE, 8);
        let b = Bdev::new(&cache, Arc::clone(&q));
        let mut buf = [0u8; 4];
        b.read(PAGE_SIZE as u64, &mut buf).expect("cache the page");
        // As above: the device holds newer bytes in blocks 2..8 than the cached page.
        dev.write_at(PAGE_SIZE as u64 + 1024, &[0xDA; PAGE_SIZE - 1024])
            .expect("file data");
        b.write(PAGE_SIZE as u64 + 500, &[0x22; 40]).expect("write");
        let starts = cache.stats().wb_starts;
        let flushes = dev.flushes();
        b.sync_buffers().expect("sync_buffers");
        let snap = dev.snapshot();
        assert!(
            snap[PAGE_SIZE + 500..PAGE_SIZE + 540]
                .iter()
                .all(|x| *x == 0x22)
        );
        assert!(
            snap[PAGE_SIZE + 1024..2 * PAGE_SIZE]
                .iter()
                .all(|x| *x == 0xDA)
        );
        assert_eq!(
            cache.stats().wb_starts,
            starts,
            "no PG_writeback for buffer I/O"
        );
        assert!(dev.flushes() > flushes, "the device cache is flushed");
        // The page is still PG_dirty, as a page whose buffers were written is; the next
        // writeback of the mapping starts and ends at once and writes nothing.
        assert!(b.mapping().tagged(Tag::Dirty));
        dev.write_at(PAGE_SIZE as u64 + 500, &[0x33; 40])
            .expect("a later write by someone else");
        b.sync().expect("sync");
        assert!(
            dev.snapshot()[PAGE_SIZE + 500..PAGE_SIZE + 540]
                .iter()
                .all(|x| *x == 0x33),
            "the clean blocks were not written again"
        );
        assert!(!b.mapping().tagged(Tag::Dirty) && !b.mapping().tagged(Tag::Writeback));
        assert_eq!(cache.stats().nr_dirty, 0);
        // Blocks dirtied again are written again.
        b.write(PAGE_SIZE as u64 + 600, &[0x44; 8]).expect("write");
        b.sync_buffers().expect("sync_buffers");
        assert_eq!(
            &dev.snapshot()[PAGE_SIZE + 600..PAGE_SIZE + 608],
            &[0x44; 8]
        );
    }

    #[test]
    fn sync_buffers_reports_a_failed_write() {
        let (dev, q, cache) = setup(2 * PAGE_SIZE, 4);
        let b = Bdev::new(&cache, q);
        dev.fail_writes(0, PAGE_SIZE as u64);
        b.write(10, b"x").expect("cached write");
        let e = b.sync_buffers().expect_err("the failed block write");
        assert_eq!(e.errno(), libc::EIO);
    }

    #[test]
    fn out_of_range_is_eio_and_write_errors_are_sticky() {
        let (dev, q, cache) = setup(2 * PAGE_SIZE, 4);
        let b = Bdev::new(&cache, q);
        let mut buf = [0u8; 8];
        let e = b
            .read(2 * PAGE_SIZE as u64 - 4, &mut buf)
            .expect_err("past the end");
        assert_eq!(e.errno(), libc::EIO);
        dev.fail_writes(0, PAGE_SIZE as u64);
        b.write(10, b"x").expect("cached write");
        assert!(
            b.sync().is_err(),
            "the failed writeback is reported by sync"
        );
        assert!(b.check_errors().is_ok(), "and only once");
    }

    #[test]
    fn a_page_past_the_device_fails_without_staying_locked() {
        let (_dev, q, cache) = setup(2 * PAGE_SIZE, 4);
        let b = Arc::new(Bdev::new(&cache, q));
        // A second attempt sleeps for ever in lock_page if the first left the page locked, so
        // the attempts run on a thread and a timeout turns that hang into a failure.
        let (tx, rx) = std::sync::mpsc::channel();
        let b2 = Arc::clone(&b);
        std::thread::spawn(move || {
            let errnos: Vec<i32> = (0..2)
                .map(|_| {
                    b2.read_page_locked(5)
                        .map(|_| 0)
                        .unwrap_or_else(|e| e.errno())
                })
                .collect();
            let _ = tx.send(errnos);
        });
        let errnos = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("second read hung");
        assert_eq!(errnos, vec![libc::EIO, libc::EIO]);
    }

    #[test]
    fn concurrent_readers_of_one_page_share_one_read() {
        let (dev, q, cache) = setup(4 * PAGE_SIZE, 8);
        dev.write_at(PAGE_SIZE as u64, &[7u8; PAGE_SIZE])
            .expect("seed");
        q.set_latency(Duration::from_millis(5));
        let b = Bdev::new(&cache, Arc::clone(&q));
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    let mut buf = [0u8; 16];
                    b.read(PAGE_SIZE as u64 + 100, &mut buf).expect("read");
                    assert_eq!(buf, [7u8; 16]);
                });
            }
        });
        // The readers woke on the read's end_io; the request is counted after that returns.
        q.drain();
        assert_eq!(q.completed(), 1, "one read I/O for four readers");
    }

    /// A device that records the offset of every write, in the order they reach it.
    struct Recording(MemDevice, crate::sync::unchecked::Mutex<Vec<u64>>);

    impl BlockDevice for Recording {
        fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), FsError> {
            self.0.read_at(offset, buf)
        }
        fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), FsError> {
            self.1.lock().push(offset);
            self.0.write_at(offset, buf)
        }
        fn flush(&self) -> Result<(), FsError> {
            self.0.flush()
        }
        fn size(&self) -> u64 {
            self.0.size()
        }
    }

    /// An 8-page [`Recording`] device behind `threads` I/O threads, and its block-device
    /// mapping in a 16-frame cache.
    fn recording_bdev(threads: usize) -> (Arc<Recording>, Bdev) {
        let dev = Arc::new(Recording(
            MemDevice::new(8 * PAGE_SIZE),
            crate::sync::unchecked::Mutex::new(Vec::new()),
        ));
        let q = Arc::new(IoQueue::new(dev.clone(), threads, Duration::ZERO).expect("queue"));
        let cache = PageCache::new(CacheConfig {
            on_bug: OnBug::Panic,
            ..CacheConfig::new(Era::V5_11, 16)
        })
        .expect("cache");
        (dev, Bdev::new(&cache, q))
    }

    #[test]
    fn metadata_writeback_sends_the_tables_before_the_directories() {
        let (dev, b) = recording_bdev(4);
        let boundary = 2 * PAGE_SIZE as u64;
        b.set_order_boundary(boundary);
        // An entry (page 5) changed after the FAT sector it depends on (page 0), and a
        // range-cyclic pass that starts at page 5, as the flusher's may: the generic walk
        // would send page 5 first.
        b.write(512, &[1u8; 4]).expect("FAT");
        b.write(5 * PAGE_SIZE as u64 + 64, &[2u8; 32])
            .expect("entry");
        b.write(PAGE_SIZE as u64, &[3u8; 4]).expect("second FAT");
        b.mapping().set_writeback_index(5);
        let mut wbc = WritebackControl::background(1024);
        b.mapping()
            .aops()
            .writepages(b.mapping(), &mut wbc)
            .expect("writeback");
        let order = dev.1.lock().clone();
        assert_eq!(order.len(), 3, "one write per dirty block: {order:?}");
        let first_entry = order
            .iter()
            .position(|&o| o >= boundary)
            .expect("entry written");
        assert!(
            order[..first_entry].len() == 2 && order[first_entry..].iter().all(|&o| o >= boundary),
            "tables first, then entries: {order:?}"
        );
        // Nothing is left dirty to be written again out of order.
        dev.1.lock().clear();
        b.sync().expect("sync");
        assert!(dev.1.lock().is_empty(), "nothing written twice");
    }

    #[test]
    fn an_ordered_block_is_written_after_the_block_it_waits_for() {
        // One I/O thread, first in first out: sent together, the lower block would land
        // first.
        let (dev, b) = recording_bdev(1);
        b.set_order_boundary(4 * PAGE_SIZE as u64);
        // A chain's new entries in block 3, then the link to them in block 0, as FAT's
        // extend does; block 1 is unrelated and goes with the first wave.
        b.write(1536, &[1u8; 8]).expect("new entries");
        assert!(b.order_writes(1536..1544, 16..20));
        b.write(16, &[2u8; 4]).expect("link");
        b.write(600, &[3u8; 4]).expect("unrelated");
        // The reverse would be a cycle: refused, nothing recorded.
        assert!(!b.order_writes(16..20, 1536..1544));
        b.write_ordered().expect("write");
        let order = dev.1.lock().clone();
        assert_eq!(order, [512, 1536, 0], "the link's block last");
        assert!(b.aops.order.lock().is_empty(), "the order is spent");
        // Spent: the same blocks again go in one wave, by address.
        dev.1.lock().clear();
        b.write(1536, &[4u8; 8]).expect("again");
        b.write(16, &[5u8; 4]).expect("again");
        b.write_ordered().expect("write");
        assert_eq!(*dev.1.lock(), [0, 1536]);
        assert_eq!(&dev.0.snapshot()[1536..1544], &[4u8; 8]);
    }
}
