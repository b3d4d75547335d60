//! A mounted FAT volume, read-only: the boot sector, the FAT and directories read through the
//! page cache's block-device mapping ([`Bdev`]); file data through each file's own mapping
//! ([`FatInode`], pages mapped by `get_block`).
//!
//! Owns the stack of one mount: the image file, its I/O queue, the page cache, the `Bdev`, the
//! [`FatTable`] over it and the inode cache (files keyed by first cluster; an empty file has
//! no cluster and needs no mapping). Directory data still goes through the `Bdev` path for now;
//! moving it to directory inodes' mappings comes later. Directories are read whole (root region
//! or cluster chain) and walked with [`iterate`]; each directory's scan and [`NameIndex`] are
//! cached, which is sound only because nothing here writes. Writes (create, extend, rename,
//! unlink) come in a later slice, together with invalidation of that cache (and of the inodes'
//! cluster caches).

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use crate::dev::{FileDevice, IoQueue, Placement};
use crate::error::FsError;
use crate::fat::bpb::{Bpb, FatType};
use crate::fat::dirent::{ATTR_DIR, DirEntry, NameIndex, Slot, SlotKind, iterate};
use crate::fat::inode::{FatInode, cluster_offset};
use crate::fat::name::ShortnameMode;
use crate::fat::table::FatTable;
use crate::fs::bdev::Bdev;
use crate::mm::waitqueue::unlock_page;
use crate::mm::{CacheConfig, Era, PAGE_SHIFT, PAGE_SIZE, PageCache};
use crate::sync::{Arc, Mutex};

/// Completion threads of the I/O queue of a volume.
const IO_THREADS: usize = 2;

/// Size of the boot sector read before the geometry is known.
const BOOT_SECTOR: usize = 512;

/// Which directory to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DirRef {
    /// The root directory (fixed region on FAT12/16, a cluster chain on FAT32).
    Root,
    /// A sub-directory, by its first cluster.
    Cluster(u32),
}

/// One file or directory of a directory listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirItem {
    /// The long name, or the short name as the `shortname=` mode shows it.
    pub name: String,
    /// The decoded short entry.
    pub entry: DirEntry,
}

/// One directory's live entries and their name index, as last read.
#[derive(Debug)]
struct CachedDir {
    /// Files, directories, `.` and `..` in on-disk order (so sorted by offset).
    slots: Vec<Slot>,
    /// Volume labels found in the directory.
    labels: Vec<Slot>,
    /// Case-insensitive lookup by long or short name.
    index: NameIndex,
}

impl CachedDir {
    /// The slot whose short entry sits at `offset`.
    fn slot_at(&self, offset: usize) -> Option<&Slot> {
        let i = self
            .slots
            .binary_search_by_key(&offset, |s| s.offset)
            .ok()?;
        self.slots.get(i)
    }
}

/// A FAT volume mounted read-only.
#[derive(Debug)]
pub struct Volume {
    cache: Arc<PageCache>,
    queue: Arc<IoQueue>,
    bdev: Arc<Bdev>,
    table: Arc<FatTable<Arc<Bdev>>>,
    bpb: Bpb,
    mode: ShortnameMode,
    dirs: Mutex<HashMap<DirRef, Arc<CachedDir>>>,
    /// File inodes by first cluster.
    inodes: Mutex<HashMap<u32, Arc<FatInode<Arc<Bdev>>>>>,
}

impl Volume {
    /// Opens the image at `path`, with a page cache of `cache_frames` frames (era v5.11).
    pub fn open(path: &Path, placement: Placement, cache_frames: usize) -> Result<Volume, FsError> {
        let dev = Arc::new(FileDevice::open(path, placement)?);
        let queue = Arc::new(IoQueue::new(dev, IO_THREADS, Duration::ZERO)?);
        let cache = PageCache::new(CacheConfig::new(Era::V5_11, cache_frames))?;
        let bdev = Arc::new(Bdev::new(&cache, Arc::clone(&queue)));
        let mut boot = [0u8; BOOT_SECTOR];
        bdev.read(0, &mut boot)?;
        let bpb = Bpb::parse(&boot)?;
        let table = Arc::new(FatTable::new(&bpb, Arc::clone(&bdev), None)?);
        Ok(Volume {
            cache,
            queue,
            bdev,
            table,
            bpb,
            mode: ShortnameMode::default(),
            dirs: Mutex::new(HashMap::new()),
            inodes: Mutex::new(HashMap::new()),
        })
    }

    /// The parsed boot sector.
    pub fn bpb(&self) -> &Bpb {
        &self.bpb
    }

    /// The FAT type of the volume.
    pub fn fat_type(&self) -> FatType {
        self.bpb.fat_type()
    }

    /// The entry standing for the root directory (it has none on disk).
    pub fn root_entry(&self) -> DirEntry {
        let mut entry = DirEntry::stamped(ATTR_DIR, (0, 0, 0));
        entry.first_cluster = self.bpb.root_cluster().unwrap_or(0);
        entry
    }

    /// The directory `entry` names; `NotDir` for a file. Cluster 0 is the root, as in `..`.
    pub fn dir_ref(&self, entry: &DirEntry) -> Result<DirRef, FsError> {
        if !entry.is_dir() {
            return Err(FsError::NotDir);
        }
        let root = self.bpb.root_cluster();
        Ok(match entry.first_cluster {
            0 => DirRef::Root,
            c if Some(c) == root => DirRef::Root,
            c => DirRef::Cluster(c),
        })
    }

    /// The files and directories of `dir`, in on-disk order, without `.`, `..` and labels.
    pub fn read_dir(&self, dir: DirRef) -> Result<Vec<DirItem>, FsError> {
        let cached = self.cached_dir(dir)?;
        let items = cached.slots.iter().filter(|s| s.kind == SlotKind::Entry);
        Ok(items
            .map(|s| DirItem {
                name: s.name.clone(),
                entry: s.entry,
            })
            .collect())
    }

    /// The entry `name` denotes in `dir`, by long or short name, case-insensitively.
    pub fn lookup(&self, dir: DirRef, name: &str) -> Result<DirEntry, FsError> {
        let cached = self.cached_dir(dir)?;
        let offset = cached.index.lookup(name).ok_or(FsError::NotFound)?;
        let slot = cached.slot_at(offset).ok_or(FsError::NotFound)?;
        Ok(slot.entry)
    }

    /// The entry of an absolute or root-relative `/`-separated path; `/` is the root.
    ///
    /// `NotFound` for a missing component, `NotDir` when a non-final component is a file,
    /// as path walks in the kernel fail with ENOENT and ENOTDIR.
    pub fn lookup_path(&self, path: &str) -> Result<DirEntry, FsError> {
        // The walk keeps the directories above it, so ".." goes back up the way a path walk
        // does (the root's parent is the root) without trusting the on-disk ".." entries.
        let mut stack = vec![self.root_entry()];
        for part in path.split('/').filter(|p| !p.is_empty() && *p != ".") {
            let here = stack.last().expect("the root never leaves the stack");
            let dir = self.dir_ref(here)?;
            if part == ".." {
                if stack.len() > 1 {
                    stack.pop();
                }
                continue;
            }
            stack.push(self.lookup(dir, part)?);
        }
        let entry = stack.pop().expect("the root never leaves the stack");
        // "file/" names a directory that is not one.
        if path.ends_with('/') && !entry.is_dir() {
            return Err(FsError::NotDir);
        }
        Ok(entry)
    }

    /// The volume label: the root's label entry, else the boot sector's; `None` if unset.
    pub fn label(&self) -> Result<Option<String>, FsError> {
        let root = self.cached_dir(DirRef::Root)?;
        if let Some(slot) = root.labels.first() {
            return Ok(Some(slot.name.clone()));
        }
        let bpb_label = String::from_utf8_lossy(&self.bpb.volume_label);
        let bpb_label = bpb_label.trim_end();
        // mkfs.fat writes "NO NAME" when no label was asked for.
        Ok((!bpb_label.is_empty() && bpb_label != "NO NAME").then(|| bpb_label.to_owned()))
    }

    /// Reads file data at `offset` into `buf`; returns the bytes read, short at end of file.
    ///
    /// Through the file's page-cache mapping: a cached page is served without I/O. A chain
    /// shorter than the size says is `Corrupted` (EIO), as in the kernel.
    pub fn read_file(
        &self,
        entry: &DirEntry,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<usize, FsError> {
        if entry.is_dir() {
            return Err(FsError::IsDir);
        }
        let size = u64::from(entry.size);
        if offset >= size || buf.is_empty() {
            return Ok(0);
        }
        let want = usize::try_from(size - offset).map_or(buf.len(), |left| left.min(buf.len()));
        let inode = self.inode(entry)?;
        let mut done = 0;
        while done < want {
            let pos = offset + done as u64;
            let in_page = (pos as usize) & (PAGE_SIZE - 1);
            let n = (PAGE_SIZE - in_page).min(want - done);
            let page = inode.read_page_locked(pos >> PAGE_SHIFT)?;
            page.with_data(|d| buf[done..done + n].copy_from_slice(&d[in_page..in_page + n]));
            unlock_page(page.page());
            done += n;
        }
        Ok(done)
    }

    /// The inode of the non-empty file `entry`, from the cache or made now.
    fn inode(&self, entry: &DirEntry) -> Result<Arc<FatInode<Arc<Bdev>>>, FsError> {
        let (first, size) = (entry.first_cluster, u64::from(entry.size));
        if first == 0 {
            log::error!("fat: file of {size} bytes has no first cluster");
            return Err(FsError::Corrupted("file data without a cluster"));
        }
        let mut inodes = self.inodes.lock();
        let inode = inodes.entry(first).or_insert_with(|| {
            let key = (first, size, false);
            let (table, queue) = (Arc::clone(&self.table), Arc::clone(&self.queue));
            Arc::new(FatInode::new(&self.cache, table, queue, &self.bpb, key))
        });
        if inode.size() != size {
            // Two entries sharing one chain: cross-linked files, which fsck repairs.
            log::error!(
                "fat: cluster {first} starts files of {} and {size} bytes",
                inode.size()
            );
            return Err(FsError::Corrupted("cross-linked files"));
        }
        Ok(Arc::clone(inode))
    }

    /// The scan of `dir`, from the cache or read now.
    fn cached_dir(&self, dir: DirRef) -> Result<Arc<CachedDir>, FsError> {
        if let Some(found) = self.dirs.lock().get(&dir) {
            return Ok(Arc::clone(found));
        }
        // Read without the lock held: a racing reader builds an equal scan, and either wins.
        let bytes = self.dir_bytes(dir)?;
        let scan = iterate(&bytes, self.fat_type() == FatType::Fat32, self.mode);
        let cached = Arc::new(CachedDir {
            index: NameIndex::build(&scan.entries),
            slots: scan.entries,
            labels: scan.volume_labels,
        });
        let mut dirs = self.dirs.lock();
        Ok(Arc::clone(dirs.entry(dir).or_insert(cached)))
    }

    /// All bytes of directory `dir`: the fixed root region, or every cluster of its chain.
    fn dir_bytes(&self, dir: DirRef) -> Result<Vec<u8>, FsError> {
        let start = match (dir, self.bpb.first_root_dir_sector()) {
            (DirRef::Root, Some(sector)) => return self.fixed_root(sector),
            (DirRef::Root, None) => self
                .bpb
                .root_cluster()
                .ok_or(FsError::Corrupted("FAT32 volume without a root cluster"))?,
            (DirRef::Cluster(c), _) => c,
        };
        let chain = self.table.chain(start)?;
        let cluster_bytes = usize::try_from(self.bpb.bytes_per_cluster())
            .map_err(|_| FsError::Corrupted("cluster size"))?;
        let mut bytes = vec![0u8; chain.len() * cluster_bytes];
        for (cluster, chunk) in chain.iter().zip(bytes.chunks_exact_mut(cluster_bytes)) {
            self.bdev
                .read(cluster_offset(&self.bpb, *cluster)?, chunk)?;
        }
        Ok(bytes)
    }

    /// The FAT12/16 root directory region starting at `sector`.
    fn fixed_root(&self, sector: u64) -> Result<Vec<u8>, FsError> {
        let bps = u64::from(self.bpb.bytes_per_sector);
        let len = u64::from(self.bpb.root_dir_sectors()) * bps;
        let len = usize::try_from(len).map_err(|_| FsError::Corrupted("root directory size"))?;
        let mut bytes = vec![0u8; len];
        self.bdev.read(sector * bps, &mut bytes)?;
        Ok(bytes)
    }
}
