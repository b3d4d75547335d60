//! A FAT file's data mapping: one [`AddressSpace`] per inode, its pages mapped to device bytes
//! through [`FatInode::get_block`] (a cluster chain walk with a per-inode cluster cache).
//!
//! Models: fs/fat/inode.c fat_get_block / fs/fat/cache.c (v5.10)
//!
//! The cluster cache is the chain prefix walked so far, filled lazily from the [`FatTable`]: a
//! read at offset `o` walks only up to the cluster holding `o`, as fat_get_cluster does. A page
//! may span several clusters (512-byte clusters, maybe not contiguous) or lie inside one; a
//! page read submits one bio per contiguous extent and completes the page when the last one
//! is done. Reads only: writes, and so invalidation of the cluster cache, come in a later slice.

use crate::dev::{Bio, BioOp, IoQueue};
use crate::error::FsError;
use crate::fat::bpb::Bpb;
use crate::fat::table::{FatStore, FatTable};
use crate::mm::filemap::{AddressSpace, read_cache_page};
use crate::mm::waitqueue::unlock_page;
use crate::mm::{AddressSpaceOps, PAGE_SHIFT, PAGE_SIZE, PageCache, PageRef, WritebackControl};
use crate::sync::{Arc, AtomicU32, Mutex, Ordering};

/// One piece of a page read: `len` device bytes at `dev` land at `at` in the page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Extent {
    dev: u64,
    at: usize,
    len: usize,
}

/// The address-space operations of a file mapping: reads through `get_block`.
///
/// Holds everything the mapping needs (geometry, chain, cluster cache), so the mapping does
/// not point back at its inode.
pub struct FileAops<S: FatStore + 'static> {
    table: Arc<FatTable<S>>,
    bpb: Bpb,
    queue: Arc<IoQueue>,
    first_cluster: u32,
    size: u64,
    /// The chain's clusters walked so far, in file order (the cluster cache).
    clusters: Mutex<ChainCache>,
}

impl<S: FatStore + 'static> std::fmt::Debug for FileAops<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileAops")
            .field("first_cluster", &self.first_cluster)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl<S: FatStore + 'static> FileAops<S> {
    /// Bytes per cluster, as a `u64`.
    fn cluster_bytes(&self) -> u64 {
        u64::from(self.bpb.bytes_per_cluster())
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
            return self.past_chain(offset, cache.clusters.len());
        }
        let run = self.extend_run(&mut cache, index)?;
        let clusters = &cache.clusters;
        let within = offset % cb;
        let dev = cluster_offset(&self.bpb, clusters[index])? + within;
        Ok(Some((dev, run as u64 * cb - within)))
    }

    /// Extend the cached chain prefix until it holds cluster number `index`; false if the
    /// chain ends first.
    fn walk_to(&self, cache: &mut ChainCache, index: usize) -> Result<bool, FsError> {
        // No loop-free chain is longer than the data area (fat_get_cluster's limit).
        let limit = usize::try_from(self.table.max_cluster()).unwrap_or(usize::MAX);
        let clusters = &mut cache.clusters;
        while clusters.len() <= index {
            let next = match clusters.last() {
                None if self.first_cluster == 0 => None,
                None => Some(self.first_cluster),
                Some(&last) => self.table.next_in_chain(last)?,
            };
            let Some(next) = next else {
                return Ok(false);
            };
            // A loop shorter than the file would otherwise hand out the same clusters again as
            // later parts of the file (the kernel's walk has the same blind spot): a cluster
            // seen before on this chain is a loop, whatever the length.
            if clusters.len() >= limit || !cache.seen.insert(next) {
                log::error!(
                    "fat: chain from cluster {} loops at {next}",
                    self.first_cluster
                );
                return Err(FsError::Corrupted("cluster chain loops"));
            }
            clusters.push(next);
        }
        Ok(true)
    }

    /// The length in clusters of the contiguous run from cluster number `index` (held), walking
    /// on while it stays contiguous and inside the size: those entries are needed anyway.
    fn extend_run(&self, cache: &mut ChainCache, index: usize) -> Result<usize, FsError> {
        loop {
            let held = cache.clusters.len();
            let run = contiguous_run(&cache.clusters[index..]);
            let walked = held as u64 * self.cluster_bytes();
            if index + run < held || walked >= self.size {
                return Ok(run);
            }
            // A chain ending short is reported when an offset past its end is asked for.
            if !self.walk_to(cache, held)? {
                return Ok(run);
            }
        }
    }

    /// The answer for `offset` when the chain has only `held` clusters.
    fn past_chain(&self, offset: u64, held: usize) -> Result<Option<(u64, u64)>, FsError> {
        if offset < self.size {
            log::error!(
                "fat: file of {} bytes from cluster {} has {held} clusters",
                self.size,
                self.first_cluster
            );
            return Err(FsError::Corrupted("cluster chain shorter than file size"));
        }
        Ok(None)
    }

    /// The device extents of page `index`'s bytes below the file size, merged where adjacent.
    fn extents(&self, index: u64) -> Result<Vec<Extent>, FsError> {
        let start = index << PAGE_SHIFT;
        let end = self.size.min(start + PAGE_SIZE as u64);
        let mut out: Vec<Extent> = Vec::new();
        let mut pos = start;
        while pos < end {
            let (dev, run) = self
                .get_block(pos)?
                .ok_or(FsError::Corrupted("cluster chain shorter than file size"))?;
            // Both are at most a page here, so the casts cannot truncate.
            let len = run.min(end - pos) as usize;
            let at = (pos - start) as usize;
            match out.last_mut() {
                Some(last) if last.dev + last.len as u64 == dev => last.len += len,
                _ => out.push(Extent { dev, at, len }),
            }
            pos += len as u64;
        }
        Ok(out)
    }

    /// readpage: submit the reads of the locked, not-uptodate `page`, one bio per contiguous
    /// extent; the last completion sets PG_uptodate (or PG_error) and unlocks it. The bytes
    /// past the file size are zeroed, as the kernel zeroes the tail past i_size.
    ///
    /// The page is unlocked on return when nothing was submitted, errors included (the
    /// kernel's readpage contract), so the caller's `lock_page` wait works either way.
    pub fn readpage(&self, cache: &Arc<PageCache>, page: &PageRef<'_>) -> Result<(), FsError> {
        let extents = match self.extents(page.index()) {
            Ok(e) => e,
            Err(e) => {
                page.set_error();
                unlock_page(page.page());
                return Err(e);
            }
        };
        let filled = extents.iter().map(|e| e.at + e.len).max().unwrap_or(0);
        // No bio touches the tail, so zero it now, before any completion can see the page.
        page.with_data_mut(|d| d[filled..].fill(0));
        if extents.is_empty() {
            page.set_uptodate();
            unlock_page(page.page());
            return Ok(());
        }
        self.submit_parts(cache, page, extents);
        Ok(())
    }

    /// One read bio per extent; a shared count of outstanding parts finds the last one.
    fn submit_parts(&self, cache: &Arc<PageCache>, page: &PageRef<'_>, extents: Vec<Extent>) {
        let parts = u32::try_from(extents.len()).unwrap_or(u32::MAX);
        let state = Arc::new(PartState {
            left: AtomicU32::new(parts),
            failed: AtomicU32::new(0),
        });
        let pfn = page.pfn();
        for ext in extents {
            let (cache, state) = (Arc::clone(cache), Arc::clone(&state));
            self.queue.submit(Bio {
                op: BioOp::Read {
                    offset: ext.dev,
                    len: ext.len,
                },
                end_io: Box::new(move |r| {
                    let p = cache.page(pfn);
                    match r {
                        Ok(data) => p.with_data_mut(|d| {
                            let n = data.len().min(ext.len);
                            d[ext.at..ext.at + n].copy_from_slice(&data[..n]);
                        }),
                        Err(e) => {
                            log::error!(
                                "fat: read of {} bytes at {} failed: {e}",
                                ext.len,
                                ext.dev
                            );
                            // Relaxed: published to the last part by the AcqRel below.
                            state.failed.store(1, Ordering::Relaxed);
                        }
                    }
                    // AcqRel: the last part sees every other part's data and failure.
                    if state.left.fetch_sub(1, Ordering::AcqRel) == 1 {
                        if state.failed.load(Ordering::Relaxed) != 0 {
                            p.set_error();
                        } else {
                            p.set_uptodate();
                        }
                        unlock_page(p);
                    }
                }),
            });
        }
    }
}

/// Completion bookkeeping shared by the bios of one page read.
struct PartState {
    /// Bios not yet completed.
    left: AtomicU32,
    /// Nonzero once any bio failed.
    failed: AtomicU32,
}

/// The volume byte offset of `cluster`'s data; EIO for a cluster outside the data area.
pub(crate) fn cluster_offset(bpb: &Bpb, cluster: u32) -> Result<u64, FsError> {
    let sector = bpb.cluster_to_sector(cluster).ok_or_else(|| {
        log::error!("fat: cluster {cluster} outside the data area");
        FsError::Corrupted("cluster outside the data area")
    })?;
    Ok(sector * u64::from(bpb.bytes_per_sector))
}

/// The walked prefix of a file's chain, and the set of its clusters for loop detection.
#[derive(Debug, Default)]
struct ChainCache {
    clusters: Vec<u32>,
    seen: rustc_hash::FxHashSet<u32>,
}

/// How many clusters from the start of `clusters` are consecutive on disk (at least 1).
fn contiguous_run(clusters: &[u32]) -> usize {
    1 + clusters
        .windows(2)
        .take_while(|w| w[0].checked_add(1) == Some(w[1]))
        .count()
}

impl<S: FatStore + 'static> AddressSpaceOps for FileAops<S> {
    /// Read-only for now: writes (and so writepage) come in a later slice. Unlocks the page
    /// and refuses, as the contract requires the page unlocked on return.
    fn writepage(
        &self,
        _mapping: &AddressSpace,
        page: &PageRef<'_>,
        _wbc: &mut WritebackControl,
    ) -> Result<(), FsError> {
        unlock_page(page.page());
        Err(FsError::ReadOnly)
    }
}

/// One file or directory: its first cluster, size, data mapping and cluster cache.
#[derive(Debug)]
pub struct FatInode<S: FatStore + 'static> {
    is_dir: bool,
    aops: Arc<FileAops<S>>,
    mapping: AddressSpace,
}

impl<S: FatStore + 'static> FatInode<S> {
    /// The inode of a file (or directory) starting at `first_cluster` with `size` bytes, its
    /// data read through `queue`, its chain from `table`, its pages in `cache`.
    pub fn new(
        cache: &Arc<PageCache>,
        table: Arc<FatTable<S>>,
        queue: Arc<IoQueue>,
        bpb: &Bpb,
        (first_cluster, size, is_dir): (u32, u64, bool),
    ) -> Self {
        let aops = Arc::new(FileAops {
            table,
            bpb: bpb.clone(),
            queue,
            first_cluster,
            size,
            clusters: Mutex::new(ChainCache::default()),
        });
        let mapping = AddressSpace::new(cache, Arc::clone(&aops) as Arc<dyn AddressSpaceOps>);
        FatInode {
            is_dir,
            aops,
            mapping,
        }
    }

    /// The first cluster (0 for an empty file).
    pub fn first_cluster(&self) -> u32 {
        self.aops.first_cluster
    }

    /// The size in bytes.
    pub fn size(&self) -> u64 {
        self.aops.size
    }

    /// Whether this is a directory.
    pub fn is_dir(&self) -> bool {
        self.is_dir
    }

    /// The data mapping.
    pub fn mapping(&self) -> &AddressSpace {
        &self.mapping
    }

    /// The mapping's operations (readpage).
    pub fn aops(&self) -> &FileAops<S> {
        &self.aops
    }

    /// Page `index` of the data mapping, locked and uptodate (read if it was not cached).
    pub fn read_page_locked(&self, index: u64) -> Result<PageRef<'_>, FsError> {
        read_cache_page(&self.mapping, index, |page| {
            self.aops.readpage(self.mapping.cache(), page)
        })
    }

    /// See [`FileAops::get_block`].
    pub fn get_block(&self, offset: u64) -> Result<Option<(u64, u64)>, FsError> {
        self.aops.get_block(offset)
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
        bpb: Bpb,
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
            bpb,
            table,
            dev,
            queue,
            cache,
        }
    }

    impl Fixture {
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
            FatInode::new(&self.cache, t, q, &self.bpb, (first, size, false))
        }
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
        ino.aops().readpage(&f.cache, &page).expect("readpage");
        lock_page(page.page());
        assert!(page.uptodate());
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
    fn writepage_refuses_and_unlocks() {
        let f = fixture();
        f.link(&[50]);
        let ino = f.inode(50, 10);
        let page = find_or_create_page(ino.mapping(), 0).expect("page");
        let mut wbc = WritebackControl::background(1);
        let e = ino.aops().writepage(ino.mapping(), &page, &mut wbc);
        assert!(matches!(e, Err(FsError::ReadOnly)));
        assert!(!page.locked());
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
            assert_eq!(f.queue.completed(), 1, "one read, round {round}");
        }
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
        assert_eq!(f.queue.completed(), 2, "one bio per page");
    }
}
