//! A FAT file's data: one [`AddressSpace`] per inode, its pages mapped to device bytes through
//! get_block (a cluster chain walk with a per-inode cluster cache), written through the
//! page cache with the buffered-write path of [`crate::fs::buffer`].
//!
//! Models: fs/fat/inode.c fat_get_block() / fat_write_begin() / fat_write_end() /
//! fat_writepage(), fs/fat/cache.c fat_get_cluster(), fs/fat/file.c fat_truncate_blocks() (v5.10)
//!
//! The cluster cache is the chain prefix walked so far, filled lazily from the [`FatTable`]: a
//! read at offset `o` walks only up to the cluster holding `o`, as fat_get_cluster does. A page
//! may span several clusters (512-byte clusters, maybe not contiguous) or lie inside one; a
//! page read or write submits one bio per contiguous extent.
//!
//! Sizes: `size` is i_size; `mmu_private` (in [`InodeIo`], under the inode lock) is how far
//! blocks have been allocated and zero-filled or written, the kernel's "physically allocated
//! size". Allocation happens in write_begin (so ENOSPC reaches write(2), not writeback) and is
//! sequential from mmu_private, in whole clusters; writepage only maps.
//!
//! Locks, outermost first: the inode lock ([`FatInode::lock`], the kernel's i_rwsem), held by
//! writers, truncate and expand; a page lock; the cluster cache's lock; the FAT's `fat_lock`.
//! Readers and writeback take no inode lock, as in the kernel.

use crate::dev::IoQueue;
use crate::error::FsError;
use crate::fat::bpb::Bpb;
use crate::fat::table::{FatStore, FatTable};
use crate::fs::buffer::{
    BlockMap, MpageRead, block_read_full_page, block_write_full_page, cont_write_begin,
    generic_cont_expand_simple, mpage_writepages, write_end,
};
use crate::fs::fs_writeback::{Bdi, mark_mapping_dirty};
use crate::mm::filemap::{AddressSpace, add_new_page, find_get_page, read_cache_page};
use crate::mm::truncate::truncate_pagecache;
use crate::mm::waitqueue::unlock_page;
use crate::mm::writeback::{balance_dirty_pages_ratelimited, generic_writepages};
use crate::mm::{AddressSpaceOps, PAGE_SHIFT, PAGE_SIZE, PageCache, PageRef, WritebackControl};
use std::sync::Weak;

use crate::sync::{Arc, AtomicU32, AtomicU64, Mutex, MutexGuard, Ordering};

/// The largest FAT file: sizes are 32-bit (the kernel's s_maxbytes for FAT).
pub const FAT_MAX_FILE_SIZE: u64 = 0xFFFF_FFFF;

/// What every file of a volume shares: the FAT, the geometry, the device queue, the flusher,
/// whether writes are refused, and the count of unlinked files not yet freed. One allocation
/// per volume and one pointer per file: a handle per file for each of these was 40 bytes of
/// every known file.
#[derive(Debug)]
pub struct FileShared<S: FatStore + 'static> {
    table: Arc<FatTable<S>>,
    bpb: Arc<Bpb>,
    queue: Arc<IoQueue>,
    /// The flusher, weakly as each inode's list place held it before: once the mount lets go
    /// of it (unmount, shutdown), dirtied files have nothing to queue on.
    bdi: Weak<Bdi>,
    /// Writes are refused (read-only image or mount).
    read_only: bool,
    /// Unlinked files whose last holder has not let go yet: their clusters are still used.
    /// Here, where a file's drop can reach it, rather than a pointer in every node.
    orphans: AtomicU64,
}

impl<S: FatStore + 'static> FileShared<S> {
    /// The shared side of a volume's files: chains in `table`, data through `queue`, dirty
    /// pages written in the background by `bdi`'s flusher when there is one; `read_only`
    /// refuses every change.
    pub fn new(
        table: Arc<FatTable<S>>,
        bpb: &Arc<Bpb>,
        queue: Arc<IoQueue>,
        bdi: Option<&Arc<Bdi>>,
        read_only: bool,
    ) -> Arc<Self> {
        Arc::new(FileShared {
            table,
            bpb: Arc::clone(bpb),
            queue,
            bdi: bdi.map_or_else(Weak::new, Arc::downgrade),
            read_only,
            orphans: AtomicU64::new(0),
        })
    }

    /// The volume's count of unlinked files whose clusters are not freed yet.
    pub fn orphans(&self) -> &AtomicU64 {
        &self.orphans
    }
}

/// The data side of one file: chain, cluster cache and i_size, and the volume's shared
/// handles. The mapping's operations hold it, so the mapping never points back at its inode
/// (but weakly, to queue it on the flusher's list).
pub struct FileData<S: FatStore + 'static> {
    shared: Arc<FileShared<S>>,
    /// The file's mapping, weakly (it holds this as its operations): what the flusher's list
    /// gets when a page turns dirty. Set once, when the mapping is made around this.
    mapping: Weak<AddressSpace>,
    /// First cluster; 0 while the file has none. Written under the inode lock and the
    /// cluster cache's lock; Acquire/Release so a reader that sees a cluster also sees it
    /// linked in the FAT (allocation links before it stores).
    first_cluster: AtomicU32,
    /// i_size. Raised by write_end under the page lock; readers load it without locks.
    size: AtomicU64,
    /// The chain's clusters walked so far, in file order (the cluster cache).
    clusters: Mutex<ChainCache>,
}

impl<S: FatStore + 'static> std::fmt::Debug for FileData<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileData")
            .field("first_cluster", &self.first_cluster())
            .field("size", &self.size.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl<S: FatStore + 'static> FileData<S> {
    /// Bytes per cluster, as a `u64`.
    fn cluster_bytes(&self) -> u64 {
        u64::from(self.shared.bpb.bytes_per_cluster())
    }

    /// The first cluster (0 for an empty file).
    pub fn first_cluster(&self) -> u32 {
        self.first_cluster.load(Ordering::Acquire)
    }

    /// fat_get_block for reads: the device bytes holding file byte `offset`, with how many
    /// bytes from there are contiguous on the device (within the chain walked so far).
    ///
    /// `None` past the chain's end when that is at or past the size (FAT has no holes);
    /// `Corrupted` when the chain ends before the size does, or loops.
    pub fn get_block(&self, offset: u64) -> Result<Option<(u64, u64)>, FsError> {
        let cb = self.cluster_bytes();
        let Ok(index) = usize::try_from(offset / cb) else {
            return Ok(None);
        };
        let mut cache = self.clusters.lock();
        if !self.walk_to(&mut cache, index)? {
            return self.past_chain(offset, cache.len());
        }
        let (cluster, run) = self.extend_run(&mut cache, index)?;
        let within = offset % cb;
        let dev = cluster_offset(&self.shared.bpb, cluster)? + within;
        Ok(Some((dev, run as u64 * cb - within)))
    }

    /// Extend the cached chain prefix until it holds cluster number `index`; false if the
    /// chain ends first.
    fn walk_to(&self, cache: &mut ChainCache, index: usize) -> Result<bool, FsError> {
        // Held already: every warm get_block.
        if cache.len() > index {
            return Ok(true);
        }
        // No loop-free chain is longer than the data area (fat_get_cluster's limit).
        let limit = usize::try_from(self.shared.table.max_cluster()).unwrap_or(usize::MAX);
        let first = self.first_cluster();
        while cache.len() <= index {
            let next = match cache.last() {
                None if first == 0 => None,
                None => Some(first),
                Some(last) => self.shared.table.next_in_chain(last)?,
            };
            let Some(next) = next else {
                return Ok(false);
            };
            // A loop shorter than the file would otherwise hand out the same clusters again as
            // later parts of the file (the kernel's walk has the same blind spot): a cluster
            // seen before on this chain is a loop, whatever the length.
            if cache.len() >= limit || cache.contains(next) {
                log::error!("fat: chain from cluster {first} loops at {next}");
                return Err(FsError::Corrupted("cluster chain loops"));
            }
            cache.push(next);
        }
        Ok(true)
    }

    /// Cluster number `index` (held) and the length in clusters of the contiguous run from
    /// it, walking on while the run stays contiguous and inside the size: those entries are
    /// needed anyway.
    fn extend_run(&self, cache: &mut ChainCache, index: usize) -> Result<(u32, usize), FsError> {
        let size = self.size.load(Ordering::Acquire);
        loop {
            let held = cache.len();
            let (cluster, run) = cache
                .locate(index)
                .ok_or(FsError::Corrupted("cluster cache lost a run"))?;
            let walked = held as u64 * self.cluster_bytes();
            if index + run < held || walked >= size {
                return Ok((cluster, run));
            }
            // A chain ending short is reported when an offset past its end is asked for.
            if !self.walk_to(cache, held)? {
                return Ok((cluster, run));
            }
        }
    }

    /// Links whole clusters after the chain's end (or as its start) until every byte below
    /// `end` is mapped; `*allocated` (mmu_private) is the caller's business. All or nothing:
    /// on ENOSPC the chain is as it was.
    pub(crate) fn extend_chain(&self, end: u64) -> Result<(), FsError> {
        let cb = self.cluster_bytes();
        let need = usize::try_from(end.div_ceil(cb)).map_err(|_| FsError::FileTooBig)?;
        let mut cache = self.clusters.lock();
        let have = if need == 0 || self.walk_to(&mut cache, need - 1)? {
            need
        } else {
            cache.len()
        };
        if have < need {
            let count = u32::try_from(need - have).map_err(|_| FsError::FileTooBig)?;
            let new = match cache.last() {
                // Prefer to continue from the volume's next-free hint: a new file lands
                // after the one written last.
                None => self.shared.table.alloc(count, None)?,
                Some(last) => self.shared.table.extend(last, count)?,
            };
            // The new clusters may have been a directory's, whose last changes can still sit
            // unwritten in the metadata cache: drop them before this file's data goes there.
            for run in new.chunk_by(|a, b| a.checked_add(1) == Some(*b)) {
                let at = cluster_offset(&self.shared.bpb, run[0])?;
                self.shared
                    .table
                    .store()
                    .clean_aliases(at, run.len() as u64 * cb);
            }
            if cache.is_empty() {
                // Release: the chain is linked in the FAT before anyone can see its start.
                self.first_cluster.store(new[0], Ordering::Release);
            }
            for c in new {
                cache.push(c);
            }
        }
        Ok(())
    }

    /// Whether the chain (as far as walked) holds clusters past those `bytes` bytes need: a
    /// write's reserved clusters it did not use.
    fn linked_past(&self, bytes: u64) -> bool {
        self.clusters.lock().len() as u64 > bytes.div_ceil(self.cluster_bytes())
    }

    /// The answer for `offset` when the chain has only `held` clusters.
    fn past_chain(&self, offset: u64, held: usize) -> Result<Option<(u64, u64)>, FsError> {
        let size = self.size.load(Ordering::Acquire);
        if offset < size {
            log::error!(
                "fat: file of {size} bytes from cluster {} has {held} clusters",
                self.first_cluster()
            );
            return Err(FsError::Corrupted("cluster chain shorter than file size"));
        }
        Ok(None)
    }

    /// fat_truncate_blocks: keep the clusters holding the first `size` bytes, free the rest
    /// of the chain, and lower `*allocated` (mmu_private) to `size`.
    ///
    /// The entry goes first: `write_entry` puts the file's entry (the new size, and no first
    /// cluster when nothing is kept) into the metadata cache, and the store's barrier puts it
    /// on the disk before the FAT frees anything. A crash in between leaves a chain longer
    /// than the size (lost clusters for fsck), never a size or an entry naming freed clusters.
    ///
    /// # Context
    /// The inode lock is held and the page cache past `size` is gone already.
    fn truncate_blocks(
        &self,
        allocated: &mut u64,
        size: u64,
        write_entry: &mut dyn FnMut() -> Result<(), FsError>,
    ) -> Result<(), FsError> {
        *allocated = (*allocated).min(size);
        let first = self.first_cluster();
        if first == 0 {
            return Ok(());
        }
        let keep = size.div_ceil(self.cluster_bytes());
        let keep = u32::try_from(keep).map_err(|_| FsError::FileTooBig)?;
        if keep == 0 {
            // The file forgets the chain before it is freed, so no reader maps a freed cluster
            // and the entry written below names no cluster.
            self.first_cluster.store(0, Ordering::Release);
            self.clusters.lock().truncate(0);
            write_entry()?;
            self.shared.table.store().barrier()?;
            self.shared.table.free_chain(first)?;
            return Ok(());
        }
        write_entry()?;
        self.shared.table.store().barrier()?;
        let mut cache = self.clusters.lock();
        self.shared.table.truncate_chain(first, keep)?;
        cache.truncate(keep as usize);
        Ok(())
    }
}

impl<S: FatStore + 'static> BlockMap for FileData<S> {
    fn map(&self, offset: u64) -> Result<Option<(u64, u64)>, FsError> {
        self.get_block(offset)
    }

    /// fat_get_block for writes: whole clusters, linked after the chain's end (or made the
    /// first cluster), enough to map every byte below `end`.
    fn allocate(&self, allocated: &mut u64, end: u64) -> Result<(), FsError> {
        if self.shared.read_only {
            return Err(FsError::ReadOnly);
        }
        if end <= *allocated {
            return Ok(());
        }
        self.extend_chain(end)?;
        let bs = self.block_size();
        *allocated = (*allocated).max(end.div_ceil(bs) * bs);
        Ok(())
    }

    fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }

    fn set_size(&self, size: u64) {
        // Release pairs with the Acquire loads of readers and writeback: whoever sees the
        // new size also sees the allocation that preceded it.
        self.size.store(size, Ordering::Release);
    }

    fn block_size(&self) -> u64 {
        u64::from(self.shared.bpb.bytes_per_sector)
    }

    fn queue(&self) -> &Arc<IoQueue> {
        &self.shared.queue
    }
}

/// The volume byte offset of `cluster`'s data; EIO for a cluster outside the data area.
pub(crate) fn cluster_offset(bpb: &Bpb, cluster: u32) -> Result<u64, FsError> {
    let sector = bpb.cluster_to_sector(cluster).ok_or_else(|| {
        log::error!("fat: cluster {cluster} outside the data area");
        FsError::Corrupted("cluster outside the data area")
    })?;
    Ok(sector * u64::from(bpb.bytes_per_sector))
}

/// One run of consecutive clusters of a chain: `len` clusters from `first`, the first of them
/// being cluster number `start` of the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Run {
    start: u32,
    first: u32,
    len: u32,
}

impl Run {
    /// The file cluster number after the run.
    fn end(&self) -> usize {
        self.start as usize + self.len as usize
    }

    /// Whether volume cluster `c` is in the run.
    fn holds(&self, c: u32) -> bool {
        c >= self.first && u64::from(c) < u64::from(self.first) + u64::from(self.len)
    }
}

/// Runs past which membership goes through the span map instead of a scan of the runs.
const SCAN_RUNS: usize = 8;

/// Runs by first cluster: first cluster -> length.
type Spans = std::collections::BTreeMap<u32, u32>;

/// The walked prefix of a file's chain as its contiguous runs, so the cluster at any index and
/// the run from it are found in O(log runs) however long the chain is, and whether a cluster is
/// already on the chain (loop detection) in O(log runs) too.
///
/// Only the runs are kept, not every cluster: a contiguous file of any length is one run,
/// held inline, so a small file's cache costs no allocation (a cluster list, run list and span
/// map cost ~180 bytes per one-cluster file, most of a file's data side). Two words inline:
/// a fragmented file's runs and span map share one box, where an inline-or-heap vector and a
/// separate map pointer took four words of every file.
#[derive(Debug, Default)]
enum ChainCache {
    /// Nothing walked yet (or an empty file).
    #[default]
    Empty,
    /// One run: every contiguous file.
    One(Run),
    /// Two or more runs.
    Many(Box<ManyRuns>),
}

/// The runs of a chain that has more than one.
#[derive(Debug)]
struct ManyRuns {
    /// In file order.
    runs: Vec<Run>,
    /// The runs by first cluster (first cluster -> length), once there are more than
    /// [`SCAN_RUNS`]; none before. Membership by interval rather than a set of every cluster:
    /// a write that allocates a cluster per page extends an entry instead of hashing an insert.
    spans: Option<Spans>,
}

impl ChainCache {
    /// The runs, in file order.
    fn runs(&self) -> &[Run] {
        match self {
            ChainCache::Empty => &[],
            ChainCache::One(r) => std::slice::from_ref(r),
            ChainCache::Many(m) => &m.runs,
        }
    }

    /// The span map, when there are enough runs to keep one.
    #[cfg(test)]
    fn spans(&self) -> Option<&Spans> {
        match self {
            ChainCache::Many(m) => m.spans.as_ref(),
            _ => None,
        }
    }

    /// Clusters held.
    fn len(&self) -> usize {
        self.runs().last().map_or(0, Run::end)
    }

    /// True when no cluster is held.
    fn is_empty(&self) -> bool {
        self.runs().is_empty()
    }

    /// The last cluster held.
    fn last(&self) -> Option<u32> {
        self.runs().last().map(|r| r.first + (r.len - 1))
    }

    /// The run holding cluster number `index`, if held.
    #[inline]
    fn run_at(&self, index: usize) -> Option<&Run> {
        // One look at where the runs are (inline or on the heap) for the whole search.
        let runs: &[Run] = self.runs();
        // The last run first: the only one of a contiguous file, and where a sequential
        // reader or writer is.
        let (last, before) = runs.split_last()?;
        if last.start as usize <= index {
            return (index < last.end()).then_some(last);
        }
        let i = before.partition_point(|r| r.start as usize <= index);
        let r = &before[i.checked_sub(1)?];
        (index < r.end()).then_some(r)
    }

    /// The volume cluster that is cluster number `index` of the file, and how many clusters
    /// from it on are consecutive on disk; `None` if not held. One search for both: this is
    /// every warm get_block.
    #[inline]
    fn locate(&self, index: usize) -> Option<(u32, usize)> {
        let r = self.run_at(index)?;
        // In the run, so the difference is below its u32 length.
        let into = index - r.start as usize;
        Some((r.first + into as u32, r.len as usize - into))
    }

    /// The volume cluster that is cluster number `index` of the file, if held.
    #[cfg(test)]
    fn get(&self, index: usize) -> Option<u32> {
        self.locate(index).map(|(c, _)| c)
    }

    /// Appends the next cluster of the chain.
    fn push(&mut self, c: u32) {
        let follows = self.last().and_then(|l| l.checked_add(1)) == Some(c);
        // A chain is shorter than 2^32 clusters (walk_to stops at the data area).
        let start = self.len() as u32;
        let new = Run {
            start,
            first: c,
            len: 1,
        };
        match self {
            ChainCache::Empty => *self = ChainCache::One(new),
            ChainCache::One(r) if follows => r.len += 1,
            ChainCache::One(r) => {
                *self = ChainCache::Many(Box::new(ManyRuns {
                    runs: vec![*r, new],
                    spans: None,
                }));
            }
            ChainCache::Many(m) => m.push(new, follows),
        }
    }

    /// Whether cluster `c` is on the walked chain already.
    fn contains(&self, c: u32) -> bool {
        let spans = match self {
            ChainCache::Many(m) => m.spans.as_ref(),
            _ => None,
        };
        let Some(spans) = spans else {
            return self.runs().iter().any(|r| r.holds(c));
        };
        spans
            .range(..=c)
            .next_back()
            .is_some_and(|(&first, &len)| u64::from(c) < u64::from(first) + u64::from(len))
    }

    /// Keeps the first `keep` clusters.
    fn truncate(&mut self, keep: usize) {
        if keep >= self.len() {
            return;
        }
        let mut runs: Vec<Run> = self.runs().to_vec();
        runs.retain(|r| (r.start as usize) < keep);
        if let Some(r) = runs.last_mut() {
            // keep is below the old length, so it fits u32 like every index held.
            r.len = r.len.min(keep as u32 - r.start);
        }
        // Rebuilt from the runs left: truncation is rare and the runs are few. A chain cut
        // back to one run (or none) goes back inline.
        *self = match runs.as_slice() {
            [] => ChainCache::Empty,
            [r] => ChainCache::One(*r),
            _ => {
                let spans = (runs.len() > SCAN_RUNS).then(|| span_map(&runs));
                ChainCache::Many(Box::new(ManyRuns { runs, spans }))
            }
        };
    }

    /// How many clusters from number `index` (held) on are consecutive on disk (at least 1).
    #[cfg(test)]
    fn run_from(&self, index: usize) -> usize {
        self.locate(index).map_or(1, |(_, run)| run)
    }
}

impl ManyRuns {
    /// Appends `new` (a one-cluster run), or extends the last run when it `follows` it.
    fn push(&mut self, new: Run, follows: bool) {
        match self.runs.last_mut() {
            Some(r) if follows => {
                r.len += 1;
                if let Some(span) = self.spans.as_mut().and_then(|s| s.get_mut(&r.first)) {
                    *span += 1;
                }
            }
            _ => {
                self.runs.push(new);
                if self.runs.len() == SCAN_RUNS + 1 {
                    self.spans = Some(span_map(&self.runs));
                } else if let Some(spans) = self.spans.as_mut() {
                    // A run starting where an earlier one did is a loop, which `contains`
                    // turns away before any push; keep the longer span all the same.
                    let span = spans.entry(new.first).or_insert(0);
                    *span = (*span).max(1);
                }
            }
        }
    }
}

/// The runs by first cluster; of two starting at one cluster, the longer.
fn span_map(runs: &[Run]) -> Spans {
    let mut spans = Spans::new();
    for r in runs {
        let span = spans.entry(r.first).or_insert(0);
        *span = (*span).max(r.len);
    }
    spans
}

/// The address-space operations of a file mapping (fat_aops) are its [`FileData`]'s: one
/// allocation per file less than a separate operations object holding the data and the
/// inode's dirty-list place.
impl<S: FatStore + 'static> AddressSpaceOps for FileData<S> {
    /// fat_writepage = block_write_full_page with fat_get_block; refused on a read-only volume
    /// (the page is unlocked, as the contract requires).
    fn writepage(
        &self,
        mapping: &AddressSpace,
        page: &PageRef<'_>,
        wbc: &mut WritebackControl,
    ) -> Result<(), FsError> {
        if self.shared.read_only {
            unlock_page(page.page());
            return Err(FsError::ReadOnly);
        }
        block_write_full_page(self, mapping, page, wbc)
    }

    /// fat_writepages = mpage_writepages, which plugs the queue for the pass: neighbouring
    /// pages go out as multi-page bios, which reach the device merged. On a read-only volume
    /// every page goes to writepage, which refuses it.
    fn writepages(
        &self,
        mapping: &AddressSpace,
        wbc: &mut WritebackControl,
    ) -> Result<(), FsError> {
        if self.shared.read_only {
            return generic_writepages(mapping, wbc);
        }
        let _plug = self.shared.queue.start_plug();
        mpage_writepages(self, mapping, wbc)
    }

    /// __mark_inode_dirty(I_DIRTY_PAGES): onto the flusher's list.
    fn dirty_inode(&self) {
        mark_mapping_dirty(&self.shared.bdi, &self.mapping);
    }
}

/// What the inode lock (i_rwsem) guards besides serializing writers: mmu_private.
#[derive(Debug)]
pub struct InodeIo {
    /// Bytes allocated and zero-filled or written (mmu_private); at least i_size.
    mmu_private: u64,
}

impl InodeIo {
    /// mmu_private: how far the file is allocated and initialised.
    pub fn allocated(&self) -> u64 {
        self.mmu_private
    }
}

/// One regular file: its data mapping, sizes and cluster cache.
#[derive(Debug)]
pub struct FatInode<S: FatStore + 'static> {
    data: Arc<FileData<S>>,
    /// Shared with the flusher's list, which holds it weakly: an evicted inode leaves it.
    mapping: Arc<AddressSpace>,
    io: Mutex<InodeIo>,
    /// The page after the last one read (file_ra_state's idea of where a sequential reader
    /// goes next); a hint, so racing readers only change how much is read ahead.
    ///
    /// Both hints are page numbers of a file below 4 GiB, so below 2^20: 32 bits hold them,
    /// and the node of every known file is 8 bytes (one malloc size class) smaller.
    ra_next: crate::sync::unchecked::AtomicU32,
    /// The page after the last one readahead has started (the end of file_ra_state's window);
    /// a hint like `ra_next`.
    ra_issued: crate::sync::unchecked::AtomicU32,
}

/// A page number as a readahead hint holds it (exact below 2^32 pages, which every FAT file is).
fn page_hint(page: u64) -> u32 {
    u32::try_from(page).unwrap_or(u32::MAX)
}

/// Pages read ahead of a sequential reader beyond its request (read_ahead_kb's default of
/// 128 KiB).
const RA_PAGES: u64 = 32;

impl<S: FatStore + 'static> FatInode<S> {
    /// The inode of a file starting at `first_cluster` with `size` bytes, its pages in
    /// `cache`, the rest (table, queue, flusher, read-only) from its volume's `shared`.
    pub fn new(
        cache: &Arc<PageCache>,
        shared: &Arc<FileShared<S>>,
        (first_cluster, size): (u32, u64),
    ) -> Self {
        // The mapping is made around the data side, which needs a weak handle on the mapping
        // first (for the flusher's list): new_cyclic hands that out before the mapping exists.
        let mut data = None;
        let mapping = Arc::new_cyclic(|mapping: &Weak<AddressSpace>| {
            let d = Arc::new(FileData {
                shared: Arc::clone(shared),
                mapping: Weak::clone(mapping),
                first_cluster: AtomicU32::new(first_cluster),
                size: AtomicU64::new(size),
                clusters: Mutex::new(ChainCache::default()),
            });
            data = Some(Arc::clone(&d));
            AddressSpace::new(cache, d as Arc<dyn AddressSpaceOps>)
        });
        // An inode is loaded with mmu_private = i_size (fat_fill_inode).
        let io = Mutex::new(InodeIo { mmu_private: size });
        FatInode {
            data: data.expect("new_cyclic runs its closure before returning"),
            mapping,
            io,
            ra_next: crate::sync::unchecked::AtomicU32::new(0),
            ra_issued: crate::sync::unchecked::AtomicU32::new(0),
        }
    }

    /// What the file shares with the rest of its volume's files.
    pub fn shared(&self) -> &Arc<FileShared<S>> {
        &self.data.shared
    }

    /// The first cluster (0 for an empty file).
    pub fn first_cluster(&self) -> u32 {
        self.data.first_cluster()
    }

    /// i_size in bytes.
    pub fn size(&self) -> u64 {
        self.data.size()
    }

    /// The data mapping.
    pub fn mapping(&self) -> &AddressSpace {
        &self.mapping
    }

    /// The data side (block map) of the file.
    pub fn data(&self) -> &Arc<FileData<S>> {
        &self.data
    }

    /// Takes the inode lock (i_rwsem) for a write, truncate or expand.
    pub fn lock(&self) -> MutexGuard<'_, InodeIo> {
        self.io.lock()
    }

    /// Page `index` of the data mapping, locked and uptodate (read if it was not cached).
    pub fn read_page_locked(&self, index: u64) -> Result<PageRef<'_>, FsError> {
        read_cache_page(&self.mapping, index, |page| {
            block_read_full_page(&*self.data, self.mapping.cache(), page)
        })
    }

    /// See [`FileData::get_block`].
    pub fn get_block(&self, offset: u64) -> Result<Option<(u64, u64)>, FsError> {
        self.data.get_block(offset)
    }

    /// Reads at `offset` into `buf`; returns the bytes read, short at end of file. A cached
    /// page is served without I/O.
    ///
    /// Models: mm/filemap.c generic_file_buffered_read() (v5.10), with a simple form of
    /// readahead (see [`FatInode::readahead`]).
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<usize, FsError> {
        let size = self.size();
        if offset >= size || buf.is_empty() {
            return Ok(0);
        }
        let want = usize::try_from(size - offset).map_or(buf.len(), |left| left.min(buf.len()));
        use crate::sync::unchecked::Ordering as Hint;
        let first = offset >> PAGE_SHIFT;
        let end = (offset + want as u64).div_ceil(PAGE_SIZE as u64);
        let eof = size.div_ceil(PAGE_SIZE as u64);
        // Relaxed: a hint (see `ra_next`).
        let sequential =
            first == 0 || first == u64::from(self.ra_next.swap(page_hint(end), Hint::Relaxed));
        // The window: the request, at least RA_PAGES, at most a quarter of the cache.
        let cap = (self.mapping.cache().nr_frames() as u64 / 4).max(1);
        let window = (end - first).max(RA_PAGES).min(cap);
        let mut ahead_started = !sequential;
        let mut done = 0;
        while done < want {
            let pos = offset + done as u64;
            let in_page = (pos as usize) & (PAGE_SIZE - 1);
            let n = (PAGE_SIZE - in_page).min(want - done);
            let index = pos >> PAGE_SHIFT;
            if find_get_page(&self.mapping, index).is_none() {
                // page_cache_sync_readahead: the rest of the request, in one batch.
                self.readahead(index, end.min(index + window));
            }
            if !ahead_started {
                // page_cache_async_readahead: before waiting for the request's own pages,
                // start the next window, so the reader's next request finds it read.
                ahead_started = true;
                self.readahead_ahead(first == 0, end, window, eof);
            }
            let page = self.read_page_locked(index)?;
            page.with_data(|d| buf[done..done + n].copy_from_slice(&d[in_page..in_page + n]));
            unlock_page(page.page());
            done += n;
        }
        Ok(done)
    }

    /// The asynchronous part of readahead for a sequential reader whose request ends at page
    /// `end`: once the reader is within half a `window` of where readahead has got to, the
    /// next stretch up to `end + window` is started (the kernel's PG_readahead marker, kept
    /// as a position). `restart` (a read from the start of the file) forgets the old
    /// position, which an earlier pass left at the end of the file.
    fn readahead_ahead(&self, restart: bool, end: u64, window: u64, eof: u64) {
        use crate::sync::unchecked::Ordering as Hint;
        let target = (end + window).min(eof);
        // Relaxed: a hint (see `ra_issued`); racing readers at worst read a window twice,
        // which the page cache turns into no I/O.
        let issued = u64::from(self.ra_issued.load(Hint::Relaxed));
        let from = if restart || issued < end || issued > target {
            end
        } else {
            issued
        };
        if from >= target || (from > end && from > end + window / 2) {
            return;
        }
        self.ra_issued.store(page_hint(target), Hint::Relaxed);
        self.readahead(from, target);
    }

    /// Starts reads of the pages in `[start, stop)` that are not cached, never past the end
    /// of the file, as multi-page bios the device can merge further. The reader then waits
    /// for each page's lock as usual: the pages are in flight together instead of one sleep
    /// per page.
    ///
    /// Models: mm/readahead.c page_cache_ra_unbounded() + read_pages() with fat_readahead's
    /// mpage_readahead() (v5.10), reduced: the window is sized by the caller, with no
    /// ramp-up. Readahead is a hint: it stops at the first page it cannot allocate, skips a
    /// page someone else is adding, and a failed read is left for the reader's own read to
    /// meet.
    fn readahead(&self, start: u64, stop: u64) {
        let stop = stop.min(self.size().div_ceil(PAGE_SIZE as u64));
        // Pages whose bytes follow one another on the device share a bio of up to 64 pages,
        // submitted as soon as it is full: the device starts on the first part of a long
        // window while the rest is still being set up.
        let mut reads = MpageRead::new(&*self.data, self.mapping.cache());
        for i in start..stop {
            if find_get_page(&self.mapping, i).is_some() {
                continue;
            }
            let page = match add_new_page(&self.mapping, i) {
                Ok(Some(page)) => page,
                Ok(None) => continue,
                Err(_) => break,
            };
            // The read's completion unlocks the page (with PG_error on a failure).
            if reads.add(&page).is_err() {
                break;
            }
        }
        reads.finish();
    }

    /// Buffered write of `data` at `pos` through write_begin / write_end, page by page;
    /// returns the bytes written. A gap between the allocated end and `pos` is zero-filled
    /// first. Stops short at 4 GiB - 1 (`FileTooBig` if nothing fits) and at a full volume
    /// (`NoSpace` if nothing was written; what was written stays).
    ///
    /// Models: mm/filemap.c generic_perform_write() with fat_write_begin / fat_write_end
    /// (v5.10).
    pub fn write(&self, io: &mut InodeIo, pos: u64, data: &[u8]) -> Result<usize, FsError> {
        if self.data.shared.read_only {
            return Err(FsError::ReadOnly);
        }
        if data.is_empty() {
            return Ok(0);
        }
        if pos >= FAT_MAX_FILE_SIZE {
            return Err(FsError::FileTooBig);
        }
        let len =
            usize::try_from(FAT_MAX_FILE_SIZE - pos).map_or(data.len(), |m| m.min(data.len()));
        let map = &*self.data;
        if pos + len as u64 > io.mmu_private {
            // Link the whole request's clusters in one FAT pass instead of one cluster per
            // page as fat_get_block does (three metadata page round trips per cluster, 13% of
            // a sequential writer's CPU). The pages still go through write_begin, which finds
            // them mapped; mmu_private still only moves as pages are written, so no byte past
            // it is ever exposed. Best effort: on ENOSPC (nothing linked) or a corrupt chain,
            // the page-by-page allocation below writes what fits and reports the error where
            // the kernel would. Unused clusters of a failed write go in write_failed.
            if let Err(e) = self.data.extend_chain(pos + len as u64) {
                log::debug!("fat: reserving clusters for a {len}-byte write failed: {e}");
            }
        }
        let mut done = 0;
        while done < len {
            let p = pos + done as u64;
            let at = (p & (PAGE_SIZE as u64 - 1)) as usize;
            let n = (PAGE_SIZE - at).min(len - done);
            let page = match cont_write_begin(map, &self.mapping, p, n, &mut io.mmu_private) {
                Ok(page) => page,
                Err(e) => {
                    self.write_failed(io);
                    return if done > 0 { Ok(done) } else { Err(e) };
                }
            };
            page.with_data_mut(|d| d[at..at + n].copy_from_slice(&data[done..done + n]));
            write_end(map, &self.mapping, p, n, page);
            balance_dirty_pages_ratelimited(&self.mapping);
            done += n;
        }
        Ok(done)
    }

    /// fat_write_failed: blocks allocated past i_size by a failed write are given back.
    fn write_failed(&self, io: &mut InodeIo) {
        let size = self.size();
        if io.mmu_private > size || self.data.linked_past(size) {
            truncate_pagecache(&self.mapping, size);
            // The entry never covered these clusters (the size did not grow past them).
            if let Err(e) = self
                .data
                .truncate_blocks(&mut io.mmu_private, size, &mut || Ok(()))
            {
                log::error!("fat: cannot free clusters after a failed write: {e}");
            }
        }
    }

    /// Grows the file to `size` bytes of zeros through the page cache (the data part of
    /// fat_cont_expand: generic_cont_expand_simple); the pages are left dirty. On failure the
    /// file keeps what was zero-filled before it, as in the kernel.
    pub fn expand(&self, io: &mut InodeIo, size: u64) -> Result<(), FsError> {
        if self.data.shared.read_only {
            return Err(FsError::ReadOnly);
        }
        if size > FAT_MAX_FILE_SIZE {
            return Err(FsError::FileTooBig);
        }
        if size <= self.size() {
            return Ok(());
        }
        let r = generic_cont_expand_simple(&*self.data, &self.mapping, size, &mut io.mmu_private);
        if r.is_err() {
            self.write_failed(io);
        }
        r
    }

    /// Shrinks the file to `size`: i_size first, then the page cache past it (waiting for
    /// writeback on each page), then `write_entry` (the caller puts the file's entry with the
    /// new size into the metadata cache) and the clusters past it (see
    /// [`FileData::truncate_blocks`] for the order on the disk).
    ///
    /// Models: fs/fat/file.c fat_setattr() shrink path: truncate_setsize() +
    /// fat_truncate_blocks() (v5.10).
    pub fn shrink(
        &self,
        io: &mut InodeIo,
        size: u64,
        write_entry: &mut dyn FnMut() -> Result<(), FsError>,
    ) -> Result<(), FsError> {
        if self.data.shared.read_only {
            return Err(FsError::ReadOnly);
        }
        if size >= self.size() {
            return Ok(());
        }
        self.data.set_size(size);
        truncate_pagecache(&self.mapping, size);
        self.data
            .truncate_blocks(&mut io.mmu_private, size, write_entry)
    }

    /// Forgets the whole chain (the file was unlinked and its last user is gone): drops every
    /// page (waiting for writeback) and frees the clusters.
    ///
    /// Models: fs/fat/inode.c fat_evict_inode() for an unlinked file (v5.10).
    pub fn evict(&self) -> Result<(), FsError> {
        let mut io = self.lock();
        self.data.set_size(0);
        truncate_pagecache(&self.mapping, 0);
        if self.data.shared.read_only {
            return Ok(());
        }
        // The entry is gone from its directory already (the barrier puts that on the disk).
        self.data
            .truncate_blocks(&mut io.mmu_private, 0, &mut || Ok(()))
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::bug::OnBug;
    use crate::dev::{BlockDevice, MemDevice};
    use crate::fat::table::{FatEntry, MemFat};
    use crate::mm::filemap::find_or_create_page;
    use crate::mm::waitqueue::lock_page;
    use crate::mm::{CacheConfig, Era};

    /// Sectors before the data area of the test volume: boot, 2 FATs of 3, one root sector.
    const DATA_SECTOR: u64 = 8;
    const CLUSTERS: u32 = 1000;

    /// A FAT12 boot sector: 512-byte sectors, `spc` per cluster, 1000 clusters, 2 FATs of 3
    /// sectors.
    fn fat12_bpb(spc: u8) -> Bpb {
        let mut s = [0u8; 512];
        let mut put = |off: usize, v: &[u8]| s[off..off + v.len()].copy_from_slice(v);
        put(0, &[0xeb, 0x3c, 0x90, b'T']);
        put(11, &[0, 2, spc, 1, 0, 2]); // 512 bytes/sector, 1 reserved sector, 2 FATs
        put(17, &[16]); // 16 root entries: one sector
        put(
            19,
            &u16::try_from(DATA_SECTOR + u64::from(CLUSTERS) * u64::from(spc))
                .expect("small")
                .to_le_bytes(),
        );
        put(21, &[0xf8]);
        put(22, &[3, 0]);
        put(510, &[0x55, 0xaa]);
        Bpb::parse(&s).expect("test boot sector parses")
    }

    /// The device byte offset of data cluster `c` of one-sector clusters.
    fn data(c: u32) -> u64 {
        data_in(1, c)
    }

    /// The device byte offset of data cluster `c` of `spc`-sector clusters.
    fn data_in(spc: u8, c: u32) -> u64 {
        (DATA_SECTOR + (u64::from(c) - 2) * u64::from(spc)) * 512
    }

    struct Fixture {
        bpb: Arc<Bpb>,
        table: Arc<FatTable<MemFat>>,
        dev: Arc<MemDevice>,
        queue: Arc<IoQueue>,
        cache: Arc<PageCache>,
    }

    fn fixture() -> Fixture {
        fixture_with(1)
    }

    /// A volume of `spc`-sector clusters: the FAT in memory, the data on a `MemDevice`.
    fn fixture_with(spc: u8) -> Fixture {
        let _ = env_logger::builder().is_test(true).try_init();
        let bpb = fat12_bpb(spc);
        let fat = MemFat::new(vec![0; 7 * 512]);
        let table = Arc::new(FatTable::new(&bpb, fat, None).expect("table"));
        let size = usize::try_from(data_in(spc, CLUSTERS + 2)).expect("small");
        let dev = Arc::new(MemDevice::new(size));
        let queue = Arc::new(IoQueue::new(dev.clone(), 2, Duration::ZERO).expect("queue"));
        let cfg = CacheConfig {
            on_bug: OnBug::Panic,
            ..CacheConfig::new(Era::V5_11, 16)
        };
        let cache = PageCache::new(cfg).expect("cache");
        Fixture {
            bpb: Arc::new(bpb),
            table,
            dev,
            queue,
            cache,
        }
    }

    impl Fixture {
        /// A file of `pages` pages on the contiguous clusters from `first` (one-sector
        /// clusters: eight a page), page `p` starting with `fill` bytes of `p + 1`.
        fn paged_file(&self, first: u32, pages: u32, fill: usize) -> FatInode<MemFat> {
            let chain: Vec<u32> = (first..first + 8 * pages).collect();
            self.link(&chain);
            for p in 0..pages {
                self.dev
                    .write_at(data(first + 8 * p), &vec![p as u8 + 1; fill])
                    .expect("seed");
            }
            self.inode(first, u64::from(pages) * PAGE_SIZE as u64)
        }

        /// Links `chain` in the FAT, ending it.
        fn link(&self, chain: &[u32]) {
            for w in chain.windows(2) {
                self.table.set(w[0], FatEntry::Next(w[1])).expect("link");
            }
            let last = *chain.last().expect("non-empty chain");
            self.table.set(last, FatEntry::Eoc).expect("end");
        }

        fn inode(&self, first: u32, size: u64) -> FatInode<MemFat> {
            let (t, q) = (Arc::clone(&self.table), Arc::clone(&self.queue));
            let shared = FileShared::new(t, &self.bpb, q, None, false);
            FatInode::new(&self.cache, &shared, (first, size))
        }
    }

    #[test]
    fn a_failed_write_gives_back_the_clusters_reserved_for_it() {
        let f = fixture();
        f.link(&[2]);
        f.dev.write_at(data(2), &[9; 100]).expect("seed");
        let ino = f.inode(2, 100);
        let free = f.table.count_free().expect("count");
        // Page 0 holds the file's 100 bytes and must be read before the write can fill the
        // rest of it; that read fails after the whole request's clusters were linked.
        f.dev.fail_reads(data(2), data(2) + 512);
        let mut io = ino.lock();
        let e = ino.write(&mut io, 100, &[1; 64 * 1024]).expect_err("EIO");
        assert_eq!(e.errno(), libc::EIO);
        assert_eq!(f.table.count_free().expect("count"), free, "nothing leaked");
        assert_eq!(f.table.chain(2).expect("walk"), vec![2]);
        assert_eq!((ino.size(), io.allocated()), (100, 100));
    }

    #[test]
    fn a_write_failing_before_its_first_page_gives_back_its_reservation() {
        let f = fixture();
        f.link(&[2]);
        // A size that ends on a cluster boundary: a write from there does not round
        // mmu_private up to a block before its first page, which would free the clusters
        // by the other condition of write_failed.
        let ino = f.inode(2, 512);
        let free = f.table.count_free().expect("count");
        // Every frame pinned: the first page of the write cannot be had (ENOMEM after the
        // allocator's throttled wait), so block_write_begin never runs and mmu_private stays
        // at the size; only the chain shows the clusters the request linked up front.
        let no_wait = || f.cache.alloc_page_gfp(crate::mm::vmscan::Gfp::NoRetry).ok();
        let pinned: Vec<_> = std::iter::from_fn(no_wait).collect();
        assert!(!pinned.is_empty());
        let mut io = ino.lock();
        let e = ino
            .write(&mut io, 512, &[1; 64 * 1024])
            .expect_err("ENOMEM");
        assert_eq!(e.errno(), libc::ENOMEM);
        assert_eq!(f.table.count_free().expect("count"), free, "nothing leaked");
        assert_eq!(f.table.chain(2).expect("walk"), vec![2]);
        assert_eq!((ino.size(), io.allocated()), (512, 512));
        drop(pinned);
    }

    #[test]
    fn chain_cache_runs_follow_pushes_and_truncation() {
        let mut c = ChainCache::default();
        for cl in (100..110).chain(200..205) {
            c.push(cl);
        }
        assert_eq!(
            (c.run_from(0), c.run_from(9), c.run_from(10), c.run_from(12)),
            (10, 1, 5, 3)
        );
        c.truncate(12);
        assert_eq!((c.run_from(10), c.len()), (2, 12));
        assert_eq!(
            (c.get(9), c.get(10), c.get(11), c.get(12)),
            (Some(109), Some(200), Some(201), None)
        );
        assert!(!c.contains(204) && c.contains(201) && c.contains(100) && !c.contains(99));
        c.truncate(5);
        assert_eq!((c.run_from(0), c.run_from(4), c.runs().len()), (5, 1, 1));
        c.push(105);
        assert_eq!(c.run_from(0), 6, "a push that continues the run extends it");
        // Past SCAN_RUNS runs membership goes through the span map; truncation back below
        // that goes back to scanning. Both must answer alike.
        let mut f = ChainCache::default();
        let frag: Vec<u32> = (1..=20u32).flat_map(|k| [k * 10, k * 10 + 1]).collect();
        for (i, &cl) in frag.iter().enumerate() {
            assert!(!f.contains(cl), "{cl} not yet pushed");
            f.push(cl);
            assert_eq!((f.len(), f.get(i), f.run_from(i)), (i + 1, Some(cl), 1));
        }
        assert_eq!((f.runs().len(), f.spans().map(|s| s.len())), (20, Some(20)));
        for probe in 0..215u32 {
            let want = frag.contains(&probe);
            assert_eq!(f.contains(probe), want, "{probe} with spans");
        }
        f.truncate(9);
        assert_eq!((f.runs().len(), f.spans().is_none(), f.len()), (5, true, 9));
        for probe in 0..215u32 {
            let want = frag[..9].contains(&probe);
            assert_eq!(f.contains(probe), want, "{probe} by scan");
        }
        assert_eq!((f.run_from(8), f.get(8), f.get(9)), (1, Some(50), None));
    }

    /// 10 11 | 20 21 22 | 5: three extents, the last cluster partly used.
    const FRAGMENTED: [u32; 6] = [10, 11, 20, 21, 22, 5];
    const FRAGMENTED_SIZE: u64 = 6 * 512 - 100;

    #[test]
    fn get_block_follows_a_fragmented_chain_of_small_clusters() {
        let f = fixture();
        f.link(&FRAGMENTED);
        let ino = f.inode(10, FRAGMENTED_SIZE);
        let at = |o| ino.get_block(o).expect("get_block");
        assert_eq!(at(0), Some((data(10), 1024)), "10 and 11 are one run");
        assert_eq!(at(700), Some((data(11) + 188, 324)));
        assert_eq!(at(1024), Some((data(20), 1536)), "20, 21, 22");
        assert_eq!(at(2600), Some((data(5) + 40, 472)), "the last cluster");
        assert_eq!(at(3072), None, "past the chain and the size");
        assert_eq!(
            at(0),
            Some((data(10), 1024)),
            "again, from the cluster cache"
        );
    }

    #[test]
    fn a_chain_shorter_than_the_size_is_eio() {
        let f = fixture();
        f.link(&[30, 31]);
        let ino = f.inode(30, 3000);
        assert_eq!(
            ino.get_block(600).expect("inside"),
            Some((data(31) + 88, 424))
        );
        let e = ino.get_block(1100).expect_err("the chain ends at 1024");
        assert_eq!(e.errno(), libc::EIO);
        assert_eq!(ino.get_block(3000).expect("past the size"), None);
    }

    #[test]
    fn a_looping_chain_is_eio() {
        let f = fixture();
        f.table.set(40, FatEntry::Next(41)).expect("link");
        f.table.set(41, FatEntry::Next(40)).expect("loop");
        let ino = f.inode(40, u64::from(u32::MAX));
        let e = ino.get_block(2_000_000).expect_err("loops");
        assert_eq!(e.errno(), libc::EIO);
    }

    #[test]
    fn readpage_gathers_the_extents_of_a_page_and_zeroes_the_tail() {
        let f = fixture();
        f.link(&FRAGMENTED);
        // Every cluster of the device filled with its own number's low byte.
        for c in 2..CLUSTERS + 2 {
            f.dev.write_at(data(c), &[c as u8; 512]).expect("seed");
        }
        let ino = f.inode(10, FRAGMENTED_SIZE);
        let page = find_or_create_page(ino.mapping(), 0).expect("page");
        block_read_full_page(&**ino.data(), &f.cache, &page).expect("readpage");
        lock_page(page.page());
        assert!(page.uptodate());
        // A request is counted complete after its end_io returns, and the last end_io's unlock
        // is what let us in: wait for the completions to finish before counting them.
        f.queue.drain();
        assert_eq!(f.queue.completed(), 3, "one bio per contiguous extent");
        let got = page.with_data(|d| d.to_vec());
        unlock_page(page.page());
        for (i, c) in FRAGMENTED.iter().enumerate() {
            let end = (512 * (i + 1)).min(FRAGMENTED_SIZE as usize);
            assert!(
                got[512 * i..end].iter().all(|b| *b == *c as u8),
                "cluster {c}"
            );
        }
        let tail = &got[FRAGMENTED_SIZE as usize..];
        assert!(tail.iter().all(|b| *b == 0), "zeroed past the size");
    }

    #[test]
    fn writepage_on_a_read_only_volume_refuses_and_unlocks() {
        let f = fixture();
        f.link(&[50]);
        let (t, q) = (Arc::clone(&f.table), Arc::clone(&f.queue));
        let shared = FileShared::new(t, &f.bpb, q, None, true);
        let ino = FatInode::new(&f.cache, &shared, (50, 10));
        let page = find_or_create_page(ino.mapping(), 0).expect("page");
        let mut wbc = WritebackControl::background(1);
        let e = ino
            .mapping()
            .aops()
            .writepage(ino.mapping(), &page, &mut wbc);
        assert!(matches!(e, Err(FsError::ReadOnly)));
        assert!(!page.locked());
        let mut io = ino.lock();
        assert!(matches!(
            ino.write(&mut io, 0, b"x"),
            Err(FsError::ReadOnly)
        ));
        assert!(matches!(
            ino.shrink(&mut io, 0, &mut || Ok(())),
            Err(FsError::ReadOnly)
        ));
        assert!(matches!(ino.expand(&mut io, 100), Err(FsError::ReadOnly)));
    }

    /// Writes back and waits for every dirty page of `ino`.
    fn sync(ino: &FatInode<MemFat>) {
        use crate::mm::filemap::{filemap_fdatawait_range, filemap_fdatawrite_range};
        filemap_fdatawrite_range(ino.mapping(), 0, u64::MAX).expect("writeback");
        filemap_fdatawait_range(ino.mapping(), 0, u64::MAX).expect("wait");
    }

    #[test]
    fn a_new_file_allocates_whole_clusters_as_it_grows_and_writes_through_them() {
        let f = fixture();
        // Cluster 2 is taken, so the file cannot start there.
        f.link(&[2]);
        let ino = f.inode(0, 0);
        let bytes: Vec<u8> = (0..3000u32).map(|i| (i * 7 % 256) as u8).collect();
        let mut io = ino.lock();
        assert_eq!(ino.write(&mut io, 0, &bytes).expect("write"), 3000);
        assert_eq!(ino.size(), 3000);
        assert_eq!(io.allocated(), 3072, "rounded to the 512-byte block");
        let first = ino.first_cluster();
        assert_ne!(first, 0);
        let chain = f.table.chain(first).expect("chain");
        assert_eq!(chain.len(), 6, "3000 bytes in 512-byte clusters");
        assert!(!chain.contains(&2));
        drop(io);
        sync(&ino);
        let snap = f.dev.snapshot();
        for (i, c) in chain.iter().enumerate() {
            let at = usize::try_from(data(*c)).expect("small");
            let end = (512 * (i + 1)).min(3000);
            assert_eq!(
                &snap[at..at + end - 512 * i],
                &bytes[512 * i..end],
                "cluster {c}"
            );
        }
        // The tail of the last block was written as zeros.
        let last = usize::try_from(data(chain[5])).expect("small");
        assert!(snap[last + 440..last + 512].iter().all(|b| *b == 0));
    }

    #[test]
    fn shrink_frees_clusters_and_expand_reads_back_zeros() {
        let f = fixture();
        let ino = f.inode(0, 0);
        let mut io = ino.lock();
        ino.write(&mut io, 0, &[0xEE; 2048]).expect("write");
        let free_before = f.table.free_count();
        ino.shrink(&mut io, 700, &mut || Ok(())).expect("shrink");
        assert_eq!(ino.size(), 700);
        assert_eq!(
            f.table.free_count(),
            free_before + 2,
            "clusters 3 and 4 freed"
        );
        assert_eq!(f.table.chain(ino.first_cluster()).expect("chain").len(), 2);
        ino.expand(&mut io, 5000).expect("expand");
        assert_eq!(ino.size(), 5000);
        drop(io);
        sync(&ino);
        let mut back = vec![1u8; 5000];
        // A cold read, from the device.
        crate::mm::truncate::truncate_pagecache(ino.mapping(), 0);
        assert_eq!(ino.read(0, &mut back).expect("read"), 5000);
        assert!(back[..700].iter().all(|b| *b == 0xEE), "kept head");
        assert!(
            back[700..].iter().all(|b| *b == 0),
            "the old tail does not come back"
        );
        let mut io = ino.lock();
        ino.shrink(&mut io, 0, &mut || Ok(())).expect("to nothing");
        assert_eq!(ino.first_cluster(), 0);
        assert_eq!(f.table.free_count(), CLUSTERS, "everything free again");
    }

    #[test]
    fn a_full_volume_fails_the_write_and_keeps_what_was_written() {
        let f = fixture();
        let ino = f.inode(0, 0);
        let mut io = ino.lock();
        let room = u64::from(CLUSTERS) * 512;
        let big = vec![5u8; usize::try_from(room).expect("small") + 4096];
        let n = ino.write(&mut io, 0, &big).expect("a short write");
        assert_eq!(n as u64, room, "stops at the last free byte");
        assert_eq!(f.table.free_count(), 0);
        let e = ino.write(&mut io, room, b"more").expect_err("full");
        assert!(matches!(e, FsError::NoSpace));
        assert_eq!(ino.size(), room);
        drop(io);
        let mut back = vec![0u8; 100];
        ino.read(room - 100, &mut back).expect("read");
        assert!(back.iter().all(|b| *b == 5));
    }

    #[test]
    fn a_cached_page_is_read_once() {
        let f = fixture();
        f.link(&[60, 61, 62, 63, 64, 65, 66, 67, 68]);
        f.dev.write_at(data(68), b"last").expect("seed");
        let ino = f.inode(60, 4096 + 4);
        for round in 0..2 {
            let page = ino.read_page_locked(1).expect("page 1");
            assert_eq!(
                page.with_data(|d| d[..5].to_vec()),
                b"last\0",
                "round {round}"
            );
            unlock_page(page.page());
            // Counted after its end_io, whose unlock let read_page_locked in: see
            // readpage_gathers_the_extents_of_a_page_and_zeroes_the_tail.
            f.queue.drain();
            assert_eq!(f.queue.completed(), 1, "one read, round {round}");
        }
    }

    #[test]
    fn readahead_follows_a_sequential_reader_and_not_a_random_one() {
        let f = fixture();
        let ino = f.paged_file(100, 12, 4);
        let read = |page: u64| {
            let mut b = [0u8; 4];
            assert_eq!(ino.read(page * PAGE_SIZE as u64, &mut b).expect("read"), 4);
            f.queue.drain();
            assert_eq!(b, [page as u8 + 1; 4], "page {page}");
            f.queue.bytes().0
        };
        // A first read in the middle: random, so only its own page.
        assert_eq!(read(6), 4096);
        // From the start: sequential, so its own page and the next window (capped at a
        // quarter of the 16-frame cache: pages 1..5) in flight behind it.
        assert_eq!(read(0), 6 * 4096);
        // Inside the window, more than half of it still ahead: no I/O.
        assert_eq!(read(1), 6 * 4096);
        // A skip to page 3 is not sequential, and page 3 is cached: no I/O.
        assert_eq!(read(3), 6 * 4096);
        // Sequential again at 4, within half a window of where readahead got to (5): the
        // next stretch up to 5 + 4 starts; page 6 is cached already, so pages 5, 7, 8.
        assert_eq!(read(4), 9 * 4096);
        assert_eq!(read(5), 9 * 4096);
        // At 6: pages 9 and 10 (up to 7 + 4 = 11).
        assert_eq!(read(6), 11 * 4096);
        assert_eq!(read(7), 11 * 4096);
        // Never past the end of the file (12 pages): only page 11.
        assert_eq!(read(8), 12 * 4096);
        assert_eq!(read(11), 12 * 4096);
    }

    #[test]
    fn random_reads_through_a_smaller_cache_read_only_their_own_pages() {
        let f = fixture();
        // 40 pages through the 16-frame cache: misses reclaim, as the mount benchmark's
        // 256 MiB file does in a 64 MiB cache.
        let ino = f.paged_file(100, 40, 4);
        // From page 5 in steps of 17 (mod 40): every page once, never the page after the
        // last one read, and stopping before page 0 (a read from the start is sequential).
        let order: Vec<u64> = std::iter::successors(Some(5u64), |p| Some((p + 17) % 40))
            .take_while(|&p| p != 0)
            .collect();
        assert_eq!(order.len(), 35);
        for (i, &page) in order.iter().enumerate() {
            let mut b = [0u8; 4];
            assert_eq!(ino.read(page * PAGE_SIZE as u64, &mut b).expect("read"), 4);
            f.queue.drain();
            assert_eq!(b, [page as u8 + 1; 4], "page {page}");
            // Each read is a miss that reads its own page and nothing more: no readahead on
            // a random pattern, as the kernel's ondemand readahead does none there either.
            assert_eq!(
                f.queue.bytes().0,
                (i as u64 + 1) * 4096,
                "after page {page}"
            );
        }
        assert!(ino.mapping().nrpages() <= 16);
        assert!(
            f.cache.stats().reclaimed > 0,
            "the file does not fit the cache"
        );
    }

    #[test]
    fn readahead_reads_a_window_as_merged_requests() {
        let f = fixture();
        // One contiguous run of clusters: the window is one stretch of the device.
        let ino = f.paged_file(200, 8, 4096);
        let mut buf = vec![0u8; 4 * PAGE_SIZE];
        assert_eq!(ino.read(0, &mut buf).expect("read"), buf.len());
        f.queue.drain();
        for (p, chunk) in buf.chunks(PAGE_SIZE).enumerate() {
            assert!(chunk.iter().all(|&b| b == p as u8 + 1), "page {p}");
        }
        // 8 pages read (the request and a 4-page window behind it) as two multi-page bios,
        // one per readahead pass, where a bio per page made 8.
        assert_eq!(f.queue.bytes().0, 8 * 4096);
        assert_eq!(f.queue.completed(), 2);
        assert!(f.queue.dispatched() <= 2);
    }

    #[test]
    fn clusters_larger_than_a_page_hold_several_pages() {
        let f = fixture_with(16);
        f.link(&[3, 7]);
        let size = 3 * PAGE_SIZE as u64 + 100;
        f.dev
            .write_at(data_in(16, 3) + 4096, b"page1")
            .expect("seed");
        f.dev
            .write_at(data_in(16, 7) + 4096, &[9; 4096])
            .expect("seed");
        let ino = f.inode(3, size);
        let at = |o| ino.get_block(o).expect("get_block");
        assert_eq!(at(0), Some((data_in(16, 3), 8192)));
        assert_eq!(at(5000), Some((data_in(16, 3) + 5000, 3192)));
        assert_eq!(
            at(8192),
            Some((data_in(16, 7), 8192)),
            "not contiguous with 3"
        );
        let page = ino.read_page_locked(1).expect("page 1");
        assert_eq!(page.with_data(|d| d[..5].to_vec()), b"page1");
        unlock_page(page.page());
        let page = ino.read_page_locked(3).expect("page 3");
        let got = page.with_data(|d| d.to_vec());
        unlock_page(page.page());
        assert!(got[..100].iter().all(|b| *b == 9), "inside the size");
        assert!(got[100..].iter().all(|b| *b == 0), "zeroed past the size");
        // Counted after their end_io: see readpage_gathers_the_extents_of_a_page_and_zeroes_the_tail.
        f.queue.drain();
        assert_eq!(f.queue.completed(), 2, "one bio per page");
    }
}
