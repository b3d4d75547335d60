//! A mounted FAT volume: the inode table, and the operations a mount performs (lookup,
//! create, mkdir, unlink, rmdir, rename, rename exchange (in `exchange`), read, write,
//! truncate, fallocate, fsync, sync, unmount), each as the kernel's vfat does it.
//!
//! Models: fs/fat/namei_vfat.c, fs/fat/file.c (fat_setattr, fat_cont_expand, fat_fallocate,
//! fat_file_fsync), fs/fat/inode.c (fat_write_inode, fat_set_state, fat_iget) (v5.10)
//!
//! Owns the stack of one mount: the image file, its I/O queue, the page cache, the block-device
//! mapping ([`Bdev`]), the [`FatTable`] over it, and the nodes (files and directories the
//! mount has looked at). Metadata (FAT, directories, the boot sector) goes through the `Bdev`;
//! file data through each file's own mapping ([`FatInode`]).
//!
//! Identity: a node is found by its i_pos, the device byte offset of its short entry, as the
//! kernel hashes FAT inodes; rename moves the i_pos, unlink drops it. Inode numbers are handed
//! out from 2 up (1 is the root) and stay with the node for its life.
//!
//! Lock order, outermost first:
//! 1. `rename_lock` (the kernel's s_vfs_rename_mutex), only in rename and rename exchange;
//! 2. directory locks (the parent's i_rwsem), an ancestor before its descendants, else by
//!    inode number;
//! 3. a file's inode lock ([`FatInode::lock`], its i_rwsem);
//! 4. `ihash` (the kernel's inode_hash_lock): the node table and every node's i_pos (and a
//!    directory's parent), which live in the node but are only read and written under it;
//! 5. a node's `meta`;
//! 6. page locks, the cluster cache, `fat_lock`.
//!
//! write_inode takes only 4, 5 and 6, never a directory lock, as fat_write_inode updates the
//! entry through the buffer at i_pos: a writer holding its inode lock can write its entry
//! while another thread holds the parent directory and waits for that inode lock (unlink).
//!
//! Deviations:
//! * An unlinked file's clusters are freed at unlink, not when the last user lets go of it
//!   (the kernel's evict); a reader that still has the node then reads nothing. The FUSE layer
//!   keeps nodes alive across unlink when it adds lookup counts.
//! * A rename to another spelling of the same name ("File.txt" to "file.TXT") re-spells the
//!   entry, as Windows does; Linux's VFS sees one inode on both sides and does nothing.
//! * fallocate supports mode 0 only (growing through fat_cont_expand); FALLOC_FL_KEEP_SIZE,
//!   which the kernel accepts, is EOPNOTSUPP here.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::bug::OnBug;
use crate::dev::{FileDevice, IoQueue, Placement};
use crate::error::FsError;
use crate::fat::bpb::{Bpb, FatType, FsInfo};
use crate::fat::dir::{DirLocation, Directory, alloc_new_dir};
use crate::fat::dirent::{
    ATTR_ARCH, ATTR_DIR, DirEntry, OFF_ATTR, OFF_NT_CASE, RawEntry, Slot, SlotKind,
};
use crate::fat::inode::{FAT_MAX_FILE_SIZE, FatInode, FileShared};
use crate::fat::name::{DIR_ENTRY_SIZE, ShortnameMode, vfat_valid_longname};
use crate::fat::table::FatTable;
use crate::fat::time::unix_to_fat;
use crate::fs::bdev::Bdev;
use crate::fs::fs_writeback::{Bdi, FlusherSnapshot, SuperOps, WritebackConfig};
use crate::mm::filemap::{
    filemap_fdatawait_range, filemap_fdatawrite_range, filemap_write_and_wait_range,
};
use crate::mm::{CacheConfig, Era, PageCache};
use crate::sync::{Arc, AtomicBool, AtomicU64, Mutex, MutexGuard, Ordering};

mod exchange;

/// The inode number of the root directory (FUSE_ROOT_ID).
pub const ROOT_INO: u64 = 1;

/// Size of the boot sector read before the geometry is known.
const BOOT_SECTOR: usize = 512;

/// What a mount does when it finds its metadata corrupt (`errors=`).
///
/// Models: fs/fat/misc.c __fat_fs_error() (v5.10).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ErrorsPolicy {
    /// Log it and go on; the operation that met it fails with EIO.
    Continue,
    /// Log it and refuse every later change with EROFS (the vfat default).
    #[default]
    RemountRo,
    /// Log it and stop the process, as the kernel panics.
    Panic,
}

/// The payload of the panic `errors=panic` raises, so a program serving the volume can tell
/// it from a bug and stop the whole process, as the kernel stops the machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FsPanic(pub String);

impl std::str::FromStr for ErrorsPolicy {
    type Err = FsError;

    /// Parses `continue`, `remount-ro` or `panic`.
    fn from_str(s: &str) -> Result<Self, FsError> {
        match s {
            "continue" => Ok(ErrorsPolicy::Continue),
            "remount-ro" => Ok(ErrorsPolicy::RemountRo),
            "panic" => Ok(ErrorsPolicy::Panic),
            _ => Err(FsError::Invalid(
                "errors= takes continue, remount-ro or panic",
            )),
        }
    }
}

/// What a mount is asked to be: the vfat options that reach the FAT layer, and ours.
#[derive(Clone, Debug)]
pub struct MountOptions {
    /// Where the volume is in the image, and `ro`.
    pub placement: Placement,
    /// `sync`: every write and directory change is on the disk when the call returns.
    pub sync: bool,
    /// The kernel era the page cache follows.
    pub era: Era,
    /// Page-cache size in 4 KiB frames.
    pub cache_frames: usize,
    /// What a failed BUG_ON does.
    pub on_bug: OnBug,
    /// Keep per-frame event histories for BUG reports (`history=`; 512 bytes per frame).
    pub history: bool,
    /// How short names are shown and created (`shortname=`).
    pub shortname: ShortnameMode,
    /// Minutes east of UTC that DOS times are in (`tz=UTC` is 0, `time_offset=`).
    pub tz_offset_minutes: i32,
    /// Completion threads of the device queue.
    pub io_threads: usize,
    /// Simulated device latency per request (`io_latency_us=`).
    pub io_latency: Duration,
    /// Stall between clearing PG_writeback and the wake (`wake_delay_us=`).
    pub wake_delay: Duration,
    /// What corrupt metadata found at run time does (`errors=`).
    pub errors: ErrorsPolicy,
    /// The flusher's period and expiry, and the dirty limits (`writeback_interval_ms=`,
    /// `dirty_expire_ms=`, `dirty_ratio=`, `dirty_background_ratio=`).
    pub writeback: WritebackConfig,
}

impl Default for MountOptions {
    /// Read-write, not `sync`, era v5.11, 64 MiB of cache, `on_bug=abort`, UTC.
    fn default() -> Self {
        MountOptions {
            placement: Placement::default(),
            sync: false,
            era: Era::V5_11,
            cache_frames: 16 * 1024,
            on_bug: OnBug::Abort,
            history: true,
            shortname: ShortnameMode::default(),
            tz_offset_minutes: 0,
            io_threads: 2,
            io_latency: Duration::ZERO,
            wake_delay: Duration::ZERO,
            errors: ErrorsPolicy::default(),
            writeback: WritebackConfig::default(),
        }
    }
}

/// One file or directory of a directory listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirItem {
    /// The long name, or the short name as the `shortname=` mode shows it.
    pub name: String,
    /// The short entry, with the size and first cluster a live node has now.
    pub entry: DirEntry,
    /// Byte offset of the short entry in its directory (for [`Volume::child_at`]).
    pub offset: usize,
}

/// File system statistics (statfs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatFs {
    /// Bytes per cluster: the allocation unit.
    pub cluster_size: u32,
    /// Data clusters of the volume.
    pub clusters: u32,
    /// Free clusters.
    pub free: u32,
    /// The longest name, in bytes (vfat's 255).
    pub name_max: u32,
}

/// What a node is.
#[derive(Debug)]
enum Kind {
    File(FatInode<Arc<Bdev>>),
    /// Boxed: a directory's bookkeeping is several times a file inode's size.
    Dir(Box<DirNode>),
}

/// A directory node's own part.
#[derive(Debug)]
struct DirNode {
    /// The inode number of the directory holding its entry, while it is in the node table
    /// (unused for the root). Only a directory's is kept: the ancestor walk of rename
    /// ([`Volume::is_ancestor`]) starts at a directory and only ever meets directories.
    /// Read and written only under `ihash`, whose lock orders the accesses (hence Relaxed);
    /// an atomic because the node is shared.
    parent: AtomicU64,
    dir: Mutex<Directory>,
}

impl DirNode {
    fn new(dir: Directory) -> Box<DirNode> {
        Box::new(DirNode {
            parent: AtomicU64::new(ROOT_INO),
            dir: Mutex::new(dir),
        })
    }
}

/// `Node::i_pos` of a node that is not in the table by position (the root, a removed node).
const NO_POS: u64 = u64::MAX;

/// What `meta` guards: the short entry as the node sees it, and whether it needs writing.
#[derive(Debug)]
struct Meta {
    /// Attributes and times; for a file, size and first cluster are taken from its inode
    /// when written.
    entry: DirEntry,
    /// Changed since last written (mark_inode_dirty).
    dirty: bool,
}

/// A file or directory the mount knows.
///
/// Its size is watched: 104 bytes, one 128-byte malloc chunk with the Arc's counts, for
/// every file the mount has looked at. Anything added here should come out elsewhere.
#[derive(Debug)]
pub struct Node {
    ino: u64,
    kind: Kind,
    meta: Mutex<Meta>,
    /// The i_pos: device byte offset of its short entry, [`NO_POS`] when the node is not in
    /// the table by position. Kept here (the kernel keeps i_pos in the inode too) instead of
    /// in a table of its own keyed by inode number: read and written only under `ihash`,
    /// whose lock orders the accesses (hence Relaxed), so it moves with the table's
    /// `by_pos` entry as one change (rename, exchange, unlink).
    i_pos: AtomicU64,
    /// Its entry is gone (unlink, rmdir, replaced by rename). A file's clusters are freed
    /// when the last holder lets go of the node (the kernel's evict); a removed directory
    /// refuses new entries (the kernel's S_DEAD).
    unlinked: AtomicBool,
}

impl Drop for Node {
    fn drop(&mut self) {
        // Relaxed: whoever unlinked the node handed it over through the Arc, whose release
        // on drop orders the store before this load.
        if !self.unlinked.load(Ordering::Relaxed) {
            return;
        }
        if let Kind::File(f) = &self.kind {
            if let Err(e) = f.evict() {
                log::error!(
                    "fat: cannot free the clusters of unlinked inode {}: {e}",
                    self.ino
                );
            }
            // Release: a writer that sees the count drop also sees the clusters free.
            f.shared().orphans().fetch_sub(1, Ordering::Release);
        }
    }
}

impl Node {
    /// The inode number.
    pub fn ino(&self) -> u64 {
        self.ino
    }

    /// Whether this is a directory.
    pub fn is_dir(&self) -> bool {
        matches!(self.kind, Kind::Dir(_))
    }

    /// The short entry as it stands now (size and first cluster live for a file).
    pub fn entry(&self) -> DirEntry {
        let mut e = self.meta.lock().entry;
        if let Kind::File(f) = &self.kind {
            e.first_cluster = f.first_cluster();
            // FAT sizes are 32-bit; write refuses to pass 4 GiB - 1.
            e.size = u32::try_from(f.size()).unwrap_or(u32::MAX);
        }
        e
    }

    /// Size in bytes (0 for a directory, as FAT records it).
    pub fn size(&self) -> u64 {
        match &self.kind {
            Kind::File(f) => f.size(),
            Kind::Dir(_) => 0,
        }
    }

    /// The file's inode; `IsDir` for a directory.
    pub fn file(&self) -> Result<&FatInode<Arc<Bdev>>, FsError> {
        match &self.kind {
            Kind::File(f) => Ok(f),
            Kind::Dir(_) => Err(FsError::IsDir),
        }
    }

    /// The directory, locked; `NotDir` for a file.
    fn dir(&self) -> Result<MutexGuard<'_, Directory>, FsError> {
        match &self.kind {
            Kind::Dir(d) => Ok(d.dir.lock()),
            Kind::File(_) => Err(FsError::NotDir),
        }
    }

    /// The directory, locked, to add entries to: `NotFound` once it was removed.
    fn live_dir(&self) -> Result<MutexGuard<'_, Directory>, FsError> {
        let d = self.dir()?;
        // Relaxed: rmdir sets the flag under this directory's lock, which we now hold.
        if self.unlinked.load(Ordering::Relaxed) {
            return Err(FsError::NotFound);
        }
        Ok(d)
    }

    /// Whether its entry is gone.
    pub fn unlinked(&self) -> bool {
        self.unlinked.load(Ordering::Relaxed)
    }

    /// The link count vfat shows: 1 for a file; for a directory 2 (its entry and its `.`)
    /// plus one per subdirectory (each child's `..`); 0 once the entry is gone.
    ///
    /// Models: fs/fat/inode.c fat_fill_inode() and fat_read_root() set_nlink(), kept up by
    /// vfat_mkdir/vfat_rmdir/vfat_rename, and clear_nlink() in vfat_unlink/vfat_rmdir (v5.10).
    ///
    /// # Context
    /// Takes a directory's lock: never call it holding that lock.
    pub fn nlink(&self) -> u32 {
        if self.unlinked() {
            return 0;
        }
        match &self.kind {
            Kind::File(_) => 1,
            Kind::Dir(d) => u32::try_from(d.dir.lock().subdirs())
                .unwrap_or(u32::MAX - 2)
                .saturating_add(2),
        }
    }

    /// The cluster a `..` entry uses to name this directory: 0 for the root.
    fn dotdot_cluster(&self) -> u32 {
        if self.ino == ROOT_INO {
            0
        } else {
            self.meta.lock().entry.first_cluster
        }
    }
}

/// Where a node's short entry is (what a node is attached at: its i_pos, and for a directory
/// its parent; the offset serves rename exchange, which rewrites the entry).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Pos {
    /// The directory holding the entry.
    parent: u64,
    /// Byte offset of the short entry in that directory.
    offset: usize,
    /// Device byte offset of the short entry: the i_pos.
    dev: u64,
}

/// The locked parent directories of a rename: the old one, and the new one if it differs.
type ParentLocks<'a> = (MutexGuard<'a, Directory>, Option<MutexGuard<'a, Directory>>);

/// The hash of a node table key (an inode number or an i_pos).
fn key_hash(key: u64) -> u64 {
    use std::hash::BuildHasher;
    rustc_hash::FxBuildHasher.hash_one(key)
}

/// The node table (under `ihash`).
///
/// Two hash tables of node pointers, 8 bytes a slot: the keys (inode number, i_pos) are read
/// from the nodes themselves, where the i_pos lives under this same lock. Three maps keyed
/// by number (inode -> node, i_pos -> inode, inode -> position) were ~110 bytes of every
/// known node.
#[derive(Debug, Default)]
struct Nodes {
    // Fx, not SipHash: the keys are our own numbers and device offsets, not input an
    // attacker picks, and read_dir looks up every entry here (helper's callgrind: the two
    // SipHash lookups were 45% of a read_dir).
    /// Every live node (the root too), by inode number.
    by_ino: hashbrown::HashTable<Arc<Node>>,
    /// Every node but the root, by i_pos.
    by_pos: hashbrown::HashTable<Arc<Node>>,
    next_ino: u64,
}

impl Nodes {
    /// The node with inode number `ino`.
    fn get(&self, ino: u64) -> Option<&Arc<Node>> {
        self.by_ino.find(key_hash(ino), |n| n.ino == ino)
    }

    /// The node whose short entry is at device byte `dev`.
    fn at(&self, dev: u64) -> Option<&Arc<Node>> {
        self.by_pos
            .find(key_hash(dev), |n| n.i_pos.load(Ordering::Relaxed) == dev)
    }

    /// The i_pos of `node`, if it is attached (not the root, not removed).
    fn pos_of(&self, node: &Node) -> Option<u64> {
        // Relaxed: `ihash` is held (`&self` is under it), which orders every i_pos access.
        let dev = node.i_pos.load(Ordering::Relaxed);
        (dev != NO_POS).then_some(dev)
    }

    /// The parent recorded for directory `ino`, if it is attached.
    fn parent_of(&self, ino: u64) -> Option<u64> {
        let node = self.get(ino)?;
        self.pos_of(node)?;
        match &node.kind {
            // Relaxed: under `ihash`, as for i_pos.
            Kind::Dir(d) => Some(d.parent.load(Ordering::Relaxed)),
            Kind::File(_) => None,
        }
    }

    /// Adds `node` by inode number (replacing a node of that number).
    fn insert(&mut self, node: &Arc<Node>) {
        let ino = node.ino;
        match self
            .by_ino
            .entry(key_hash(ino), |n| n.ino == ino, |n| key_hash(n.ino))
        {
            hashbrown::hash_table::Entry::Occupied(mut e) => *e.get_mut() = Arc::clone(node),
            hashbrown::hash_table::Entry::Vacant(e) => {
                e.insert(Arc::clone(node));
            }
        }
    }

    /// Takes the node with inode number `ino` out by number.
    fn remove(&mut self, ino: u64) {
        if let Ok(e) = self.by_ino.find_entry(key_hash(ino), |n| n.ino == ino) {
            e.remove();
        }
    }

    /// Files `node` at `pos` (and by inode number), out of wherever it was filed before.
    fn attach(&mut self, node: &Arc<Node>, pos: Pos) {
        // Out first: its old entry is found by the i_pos it is filed under.
        self.detach(node);
        // Relaxed: under `ihash` (`&mut self`), as every i_pos and parent access. Stored
        // before the insert: a resize during it rehashes every entry by its i_pos.
        node.i_pos.store(pos.dev, Ordering::Relaxed);
        if let Kind::Dir(d) = &node.kind {
            d.parent.store(pos.parent, Ordering::Relaxed);
        }
        let dev = pos.dev;
        match self.by_pos.entry(
            key_hash(dev),
            |n| !Arc::ptr_eq(n, node) && n.i_pos.load(Ordering::Relaxed) == dev,
            |n| key_hash(n.i_pos.load(Ordering::Relaxed)),
        ) {
            // Another node still filed at this i_pos: the new one takes the place, as the
            // map from i_pos to inode number did. The old one keeps its i_pos, as its entry
            // in the position map did, but is no longer found by it.
            hashbrown::hash_table::Entry::Occupied(mut e) => *e.get_mut() = Arc::clone(node),
            hashbrown::hash_table::Entry::Vacant(e) => {
                e.insert(Arc::clone(node));
            }
        }
        self.insert(node);
    }

    /// Takes `node` out of the table by position; it stays by inode number.
    fn detach(&mut self, node: &Node) {
        let Some(dev) = self.pos_of(node) else {
            return;
        };
        // Only this node's own entry: a node that took its i_pos stays filed.
        if let Ok(e) = self
            .by_pos
            .find_entry(key_hash(dev), |n| std::ptr::eq(&**n, node))
        {
            e.remove();
        }
        node.i_pos.store(NO_POS, Ordering::Relaxed);
    }
}

/// A mounted FAT volume.
#[derive(Debug)]
pub struct Volume {
    cache: Arc<PageCache>,
    bdev: Arc<Bdev>,
    table: Arc<FatTable<Arc<Bdev>>>,
    queue: Arc<IoQueue>,
    /// Shared with every file's data side.
    bpb: Arc<Bpb>,
    opts: MountOptions,
    read_only: bool,
    /// What every file shares, the count of unlinked files not yet freed among it.
    files: Arc<FileShared<Arc<Bdev>>>,
    /// Set by `errors=remount-ro` on corruption: every later change is refused.
    remounted_ro: AtomicBool,
    /// Set by [`Volume::shutdown`]: every later change is refused.
    closed: AtomicBool,
    /// The last shutdown wrote everything back and cleared the dirty bit.
    clean: AtomicBool,
    root: Arc<Node>,
    /// Shared with the flusher's [`InodeWriter`].
    ihash: Arc<Mutex<Nodes>>,
    rename_lock: Mutex<()>,
    /// The flusher (none on a read-only mount), and what it calls to write entries.
    writeback: Option<(Arc<Bdi>, Arc<InodeWriter>)>,
}

/// What the flusher's kupdate pass calls to write the entries of dirty inodes.
#[derive(Debug)]
struct InodeWriter {
    ihash: Arc<Mutex<Nodes>>,
    bdev: Arc<Bdev>,
    fat32: bool,
}

impl SuperOps for InodeWriter {
    /// write_inode for every node whose entry changed since it was last written.
    fn write_dirty_inodes(&self) -> Result<(), FsError> {
        let dirty: Vec<Arc<Node>> = self
            .ihash
            .lock()
            .by_ino
            .iter()
            .filter(|n| n.meta.lock().dirty)
            .cloned()
            .collect();
        for node in dirty {
            let nodes = self.ihash.lock();
            write_inode_locked(&self.bdev, self.fat32, &nodes, &node)?;
        }
        Ok(())
    }
}

impl Drop for Volume {
    /// A volume dropped without an unmount (an error path, a test) still stops its flusher,
    /// whose thread would otherwise keep the cache alive.
    fn drop(&mut self) {
        self.stop_flusher();
    }
}

/// fat_write_inode: writes `node`'s entry at its i_pos if it changed, every field but the
/// name and case byte. The caller holds `ihash`, which keeps the i_pos from moving (rename)
/// while the entry is written.
///
/// Models: fs/fat/inode.c __fat_write_inode() (v5.10).
fn write_inode_locked(bdev: &Bdev, fat32: bool, nodes: &Nodes, node: &Node) -> Result<(), FsError> {
    let Some(dev) = nodes.pos_of(node) else {
        node.meta.lock().dirty = false;
        return Ok(());
    };
    // The dirty flag is cleared *before* the entry is read, as __writeback_single_inode
    // clears I_DIRTY before write_inode: a change made after the clear marks the node dirty
    // again and is written next time. Clearing after the write (as this did) lost a size
    // that grew between the read and the clear: the soak found chains longer than their
    // sizes after a clean unmount. Changers update the size before they mark the node dirty
    // (write_end, then touch), so a read after the clear sees every change marked before it.
    {
        let mut meta = node.meta.lock();
        if !meta.dirty {
            return Ok(());
        }
        meta.dirty = false;
    }
    // Every field but the name (bytes 0-10) and the case byte (12), as fat_write_inode sets
    // the fields one by one and never the name. Not a read of the whole entry and a write of
    // it back: a rename or unlink that marked the entry deleted between the two had its mark
    // overwritten by the live name read before it (two entries on one chain after a clean
    // unmount). The two writes are in one 512-byte block (entries never straddle one).
    let written = (|| {
        let mut raw: RawEntry = [0; DIR_ENTRY_SIZE];
        node.entry().serialize(&mut raw, fat32);
        bdev.write(dev + OFF_ATTR as u64, &raw[OFF_ATTR..OFF_NT_CASE])?;
        bdev.write(dev + OFF_NT_CASE as u64 + 1, &raw[OFF_NT_CASE + 1..])
    })();
    if written.is_err() {
        // Not written: still dirty, for the next try (and unmount's check).
        node.meta.lock().dirty = true;
    }
    written
}

impl Volume {
    /// Opens the image at `path` read-only, with a page cache of `cache_frames` frames.
    pub fn open(path: &Path, placement: Placement, cache_frames: usize) -> Result<Volume, FsError> {
        let placement = Placement {
            read_only: true,
            ..placement
        };
        Volume::mount(
            path,
            MountOptions {
                placement,
                cache_frames,
                ..MountOptions::default()
            },
        )
    }

    /// Mounts the image at `path`. Read-write unless `ro` was asked or the image cannot be
    /// written; then the volume's dirty bit is set (a volume found dirty is reported in the
    /// log and mounted anyway, as the kernel does).
    ///
    /// Models: fs/fat/inode.c fat_fill_super() and fat_set_state() (v5.10).
    pub fn mount(path: &Path, opts: MountOptions) -> Result<Volume, FsError> {
        let dev = Arc::new(FileDevice::open(path, opts.placement)?);
        let read_only = dev.read_only();
        let queue = Arc::new(IoQueue::new(dev, opts.io_threads.max(1), opts.io_latency)?);
        let cache = PageCache::new(CacheConfig {
            on_bug: opts.on_bug,
            history: opts.history,
            wake_delay: opts.wake_delay,
            dirty_ratio: opts.writeback.dirty_ratio,
            dirty_background_ratio: opts.writeback.dirty_background_ratio,
            ..CacheConfig::new(opts.era, opts.cache_frames)
        })?;
        // A read-only mount dirties nothing and gets no flusher.
        let bdi = (!read_only).then(|| Bdi::new(&cache, opts.writeback));
        let bdev = Arc::new(Bdev::with_flusher(&cache, Arc::clone(&queue), bdi.as_ref()));
        let mut boot = [0u8; BOOT_SECTOR];
        bdev.read(0, &mut boot)?;
        let bpb = Bpb::parse(&boot)?;
        // Boot sector, FSInfo and FATs reach the disk before the directories in every
        // metadata write: a crash never leaves an entry naming a chain the FAT lacks.
        let tables_end = bpb
            .first_root_dir_sector()
            .unwrap_or_else(|| bpb.first_data_sector());
        bdev.set_order_boundary(tables_end * u64::from(bpb.bytes_per_sector));
        let table = Arc::new(FatTable::new(&bpb, Arc::clone(&bdev), None)?);
        let root_dir = Directory::load(&table, &bpb, DirLocation::root(&bpb)?, opts.shortname)?;
        let mut root_entry = DirEntry::stamped(ATTR_DIR, (0, 0, 0));
        root_entry.first_cluster = bpb.root_cluster().unwrap_or(0);
        let root = Arc::new(Node {
            ino: ROOT_INO,
            kind: Kind::Dir(DirNode::new(root_dir)),
            meta: Mutex::new(Meta {
                entry: root_entry,
                dirty: false,
            }),
            i_pos: AtomicU64::new(NO_POS),
            unlinked: AtomicBool::new(false),
        });
        let mut nodes = Nodes {
            next_ino: ROOT_INO + 1,
            ..Nodes::default()
        };
        nodes.insert(&root);
        let ihash = Arc::new(Mutex::new(nodes));
        let writeback = bdi.map(|bdi| {
            let writer = Arc::new(InodeWriter {
                ihash: Arc::clone(&ihash),
                bdev: Arc::clone(&bdev),
                fat32: bpb.fat_type() == FatType::Fat32,
            });
            (bdi, writer)
        });
        let bpb = Arc::new(bpb);
        let files = FileShared::new(
            Arc::clone(&table),
            &bpb,
            Arc::clone(&queue),
            writeback.as_ref().map(|(bdi, _)| bdi),
            read_only,
        );
        let vol = Volume {
            cache,
            bdev,
            table,
            queue,
            bpb,
            opts,
            read_only,
            files,
            remounted_ro: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            clean: AtomicBool::new(false),
            root,
            ihash,
            rename_lock: Mutex::new(()),
            writeback,
        };
        if !read_only {
            if vol.bpb.dirty(&boot) {
                log::warn!(
                    "fat: volume was not properly unmounted; some data may be corrupt, run fsck"
                );
            }
            vol.set_state(true)?;
        }
        if let Some((bdi, writer)) = &vol.writeback {
            let sb: std::sync::Weak<dyn SuperOps> = Arc::downgrade(writer) as std::sync::Weak<_>;
            bdi.start(sb)?;
        }
        Ok(vol)
    }

    /// Sets or clears the dirty bit in the boot sector and writes it through to the disk.
    ///
    /// Models: fs/fat/inode.c fat_set_state() (v5.10).
    fn set_state(&self, dirty: bool) -> Result<(), FsError> {
        let mut boot = [0u8; BOOT_SECTOR];
        self.bdev.read(0, &mut boot)?;
        self.bpb.set_dirty(&mut boot, dirty);
        self.bdev.write(0, &boot)?;
        self.bdev.sync_buffers()
    }

    /// The parsed boot sector.
    pub fn bpb(&self) -> &Bpb {
        &self.bpb
    }

    /// The FAT type of the volume.
    pub fn fat_type(&self) -> FatType {
        self.bpb.fat_type()
    }

    /// Whether the mount refuses changes (`ro`, or the image is not writable).
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// The page cache (statistics, BUG reports).
    pub fn cache(&self) -> &Arc<PageCache> {
        &self.cache
    }

    /// The device queue (latency, completions).
    pub fn queue(&self) -> &Arc<IoQueue> {
        &self.queue
    }

    /// The root directory.
    pub fn root(&self) -> Arc<Node> {
        Arc::clone(&self.root)
    }

    /// The node with inode number `ino`, if the mount knows it.
    pub fn node(&self, ino: u64) -> Option<Arc<Node>> {
        self.ihash.lock().get(ino).cloned()
    }

    /// The volume label: the root's label entry, else the boot sector's; `None` if unset.
    pub fn label(&self) -> Result<Option<String>, FsError> {
        if let Some(slot) = self.root.dir()?.labels().first() {
            return Ok(Some(slot.name.to_string()));
        }
        let bpb_label = String::from_utf8_lossy(&self.bpb.volume_label);
        let bpb_label = bpb_label.trim_end();
        // mkfs.fat writes "NO NAME" when no label was asked for.
        Ok((!bpb_label.is_empty() && bpb_label != "NO NAME").then(|| bpb_label.to_owned()))
    }

    /// statfs.
    pub fn statfs(&self) -> StatFs {
        StatFs {
            cluster_size: self.bpb.bytes_per_cluster(),
            clusters: self.bpb.data_clusters(),
            free: self.table.free_count(),
            name_max: 255,
        }
    }

    fn fat32(&self) -> bool {
        self.bpb.fat_type() == FatType::Fat32
    }

    fn check_writable(&self) -> Result<(), FsError> {
        // Relaxed: a change racing the remount may still go through, as in the kernel,
        // where the check is a plain flag test too.
        if self.read_only
            || self.remounted_ro.load(Ordering::Relaxed)
            || self.closed.load(Ordering::Relaxed)
        {
            return Err(FsError::ReadOnly);
        }
        Ok(())
    }

    /// Applies the `errors=` policy to corruption an operation met; the result is passed on.
    ///
    /// Models: fs/fat/misc.c __fat_fs_error() (v5.10).
    fn fs_error<T>(&self, r: Result<T, FsError>) -> Result<T, FsError> {
        let Err(FsError::Corrupted(what)) = &r else {
            return r;
        };
        log::error!("FAT-fs: {what}");
        match self.opts.errors {
            ErrorsPolicy::Continue => {}
            ErrorsPolicy::RemountRo => {
                if !self.read_only && !self.remounted_ro.swap(true, Ordering::Relaxed) {
                    log::error!("FAT-fs: filesystem has been set read-only");
                }
            }
            ErrorsPolicy::Panic => std::panic::panic_any(FsPanic(format!(
                "FAT-fs: fs panic from previous error: {what}"
            ))),
        }
        r
    }

    /// Whether changes are still taken: false on a read-only mount, after `errors=remount-ro`
    /// met corruption and after shutdown. An open for writing checks it, as the kernel's
    /// open refuses write access on a read-only superblock.
    pub fn writable(&self) -> bool {
        self.check_writable().is_ok()
    }

    /// Whether `errors=remount-ro` has made the mount read-only.
    pub fn remounted_read_only(&self) -> bool {
        self.remounted_ro.load(Ordering::Relaxed)
    }

    /// The DOS `(date, time, centis)` of now, in the mount's time zone.
    fn now_stamp(&self) -> (u16, u16, u8) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        let secs = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
        unix_to_fat(secs, now.subsec_nanos(), self.opts.tz_offset_minutes)
    }

    /// The short entry at device byte `dev`, read through the cache.
    fn read_entry(&self, dev: u64) -> Result<DirEntry, FsError> {
        let mut raw: RawEntry = [0; DIR_ENTRY_SIZE];
        self.bdev.read(dev, &mut raw)?;
        Ok(DirEntry::parse(&raw, self.fat32()))
    }

    // ---- lookup ----------------------------------------------------------------------------

    /// The node of `slot` in directory `dir` (locked by the caller as `d`), from the table or
    /// made now from the entry on disk.
    ///
    /// Models: fs/fat/inode.c fat_build_inode() / fat_iget() (v5.10).
    fn node_for(&self, dir: &Node, d: &Directory, slot: &Slot) -> Result<Arc<Node>, FsError> {
        let dev = d.dev_offset(slot.offset)?;
        if let Some(node) = self.node_at(dev) {
            return Ok(node);
        }
        // Built without `ihash` held (a directory load reads the whole directory); a racing
        // builder of the same entry loses below and its node is dropped unused.
        let entry = self.read_entry(dev)?;
        let kind = if entry.is_dir() {
            if entry.first_cluster == 0 {
                log::error!("fat: directory {:?} has no first cluster", slot.name);
                return Err(FsError::Corrupted("directory without a cluster"));
            }
            let loc = DirLocation::Chain {
                first: entry.first_cluster,
            };
            Kind::Dir(DirNode::new(Directory::load(
                &self.table,
                &self.bpb,
                loc,
                self.opts.shortname,
            )?))
        } else {
            Kind::File(self.file_inode(&entry))
        };
        let pos = Pos {
            parent: dir.ino,
            offset: slot.offset,
            dev,
        };
        let mut nodes = self.ihash.lock();
        if let Some(found) = nodes.at(dev) {
            // The table files nodes by i_pos and by number together, so the one found by
            // i_pos is always live by number too (the old two-step lookup's "out of step"
            // case cannot arise).
            return Ok(Arc::clone(found));
        }
        let node = Arc::new(Node {
            ino: nodes.next_ino,
            kind,
            meta: Mutex::new(Meta {
                entry,
                dirty: false,
            }),
            i_pos: AtomicU64::new(NO_POS),
            unlinked: AtomicBool::new(false),
        });
        nodes.next_ino += 1;
        nodes.attach(&node, pos);
        Ok(node)
    }

    /// The live node whose short entry is at device byte `dev`.
    fn node_at(&self, dev: u64) -> Option<Arc<Node>> {
        self.ihash.lock().at(dev).cloned()
    }

    /// A file inode for `entry` (mmu_private = i_size, as fat_fill_inode loads it).
    fn file_inode(&self, entry: &DirEntry) -> FatInode<Arc<Bdev>> {
        FatInode::new(
            &self.cache,
            &self.files,
            (entry.first_cluster, u64::from(entry.size)),
        )
    }

    fn lookup_inner(&self, dir: &Node, name: &str) -> Result<Arc<Node>, FsError> {
        let d = dir.dir()?;
        let slot = d.lookup(name).ok_or(FsError::NotFound)?;
        self.node_for(dir, &d, &slot)
    }

    fn child_at_inner(&self, dir: &Node, offset: usize) -> Result<Arc<Node>, FsError> {
        let d = dir.dir()?;
        let slot = d.slot_at(offset).ok_or(FsError::NotFound)?;
        if slot.kind != SlotKind::Entry {
            return Err(FsError::NotFound);
        }
        self.node_for(dir, &d, &slot)
    }

    /// The node of an absolute or root-relative `/`-separated path; `/` is the root.
    ///
    /// `NotFound` for a missing component, `NotDir` when a non-final component is a file, as
    /// path walks in the kernel fail with ENOENT and ENOTDIR.
    pub fn lookup_path(&self, path: &str) -> Result<Arc<Node>, FsError> {
        // The walk keeps the directories above it, so ".." goes back up the way a path walk
        // does (the root's parent is the root) without trusting the on-disk ".." entries.
        let mut stack = vec![self.root()];
        for part in path.split('/').filter(|p| !p.is_empty() && *p != ".") {
            if !stack.last().is_some_and(|n| n.is_dir()) {
                // A path goes on past a file ("file/..", "file/x").
                return Err(FsError::NotDir);
            }
            if part == ".." {
                if stack.len() > 1 {
                    stack.pop();
                }
                continue;
            }
            let here = stack.last().expect("the root never leaves the stack");
            let next = self.lookup(here, part)?;
            stack.push(next);
        }
        let node = stack.pop().expect("the root never leaves the stack");
        // "file/" names a directory that is not one.
        if path.ends_with('/') && !node.is_dir() {
            return Err(FsError::NotDir);
        }
        Ok(node)
    }

    fn read_dir_inner(&self, dir: &Node, from: usize, max: usize) -> Result<Vec<DirItem>, FsError> {
        let d = dir.dir()?;
        let mut items = Vec::new();
        for slot in d.entries_from(from).take(max) {
            // A node the mount has may be newer than its entry on disk (size, times).
            let live = d
                .dev_offset(slot.offset)
                .ok()
                .and_then(|dev| self.node_at(dev));
            items.push(DirItem {
                name: slot.name.to_string(),
                entry: live.map_or(slot.entry, |n| n.entry()),
                offset: slot.offset,
            });
        }
        Ok(items)
    }

    // ---- data ------------------------------------------------------------------------------

    fn read_inner(&self, node: &Node, offset: u64, buf: &mut [u8]) -> Result<usize, FsError> {
        node.file()?.read(offset, buf)
    }

    fn write_inner(&self, node: &Node, offset: u64, data: &[u8]) -> Result<usize, FsError> {
        match self.write_once(node, offset, data) {
            Err(FsError::NoSpace) if self.wait_for_orphans() => self.write_once(node, offset, data),
            r => r,
        }
    }

    /// Waits a little for unlinked files still held to be freed, when there are any; true if
    /// clusters are free now, so an operation that met a full volume is worth trying again.
    ///
    /// Through FUSE a closed file's release reaches us after close(2) returned, so `rm`
    /// followed at once by a write may find the clusters of the removed file still in use;
    /// on a kernel vfat mount the last close has freed them already.
    fn wait_for_orphans(&self) -> bool {
        // Acquire pairs with the Release in Node's drop: the freed clusters are visible.
        let before = self.files.orphans().load(Ordering::Acquire);
        let deadline = std::time::Instant::now() + Duration::from_millis(500);
        while before > 0
            && self.files.orphans().load(Ordering::Acquire) >= before
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        // Worth another try if anything is free now, also when an orphan was freed between
        // the failure and this look.
        self.table.free_count() > 0
    }

    fn write_once(&self, node: &Node, offset: u64, data: &[u8]) -> Result<usize, FsError> {
        self.check_writable()?;
        let file = node.file()?;
        let n = {
            let mut io = file.lock();
            let (size, first) = (file.size(), file.first_cluster());
            let r = file.write(&mut io, offset, data);
            // A failed write may still have grown the file (the zero fill before it) and
            // given it its first cluster: the entry must say so, or those clusters leak.
            if r.is_ok() || file.size() != size || file.first_cluster() != first {
                self.touch(node, r.is_ok());
            }
            r?
        };
        if self.opts.sync && n > 0 {
            self.fsync_range(node, offset, offset + n as u64 - 1)?;
        }
        Ok(n)
    }

    fn set_size_inner(&self, node: &Node, size: u64) -> Result<(), FsError> {
        match self.set_size_once(node, size) {
            Err(FsError::NoSpace) if self.wait_for_orphans() => self.set_size_once(node, size),
            r => r,
        }
    }

    fn set_size_once(&self, node: &Node, size: u64) -> Result<(), FsError> {
        self.check_writable()?;
        let file = node.file()?;
        if size > FAT_MAX_FILE_SIZE {
            return Err(FsError::FileTooBig);
        }
        let mut io = file.lock();
        let old = file.size();
        if size > old {
            return self.cont_expand(node, file, &mut io, size);
        }
        if size < old {
            // The smaller size reaches the disk before the freed clusters do.
            file.shrink(&mut io, size, &mut || {
                node.meta.lock().dirty = true;
                self.write_inode(node)
            })?;
        }
        self.touch(node, true);
        if self.opts.sync {
            // IS_DIRSYNC (a `sync` mount has it too): fat_free syncs the inode.
            self.write_inode(node)?;
            self.bdev.sync_buffers()?;
        }
        Ok(())
    }

    /// fat_cont_expand, called with the inode lock held.
    fn cont_expand(
        &self,
        node: &Node,
        file: &FatInode<Arc<Bdev>>,
        io: &mut crate::fat::inode::InodeIo,
        size: u64,
    ) -> Result<(), FsError> {
        let (start, first) = (file.size(), file.first_cluster());
        let r = file.expand(io, size);
        // A failed expansion keeps what it zero-filled (as the kernel's does): the entry must
        // record that size and first cluster, or the clusters leak.
        if r.is_ok() || file.size() != start || file.first_cluster() != first {
            self.touch(node, true);
        }
        r?;
        if !self.opts.sync {
            return Ok(());
        }
        // The fsync sequence written out by hand (no struct file here): the range, then the
        // entry (write_inode_now), then the wait; the first error wins.
        let mapping = file.mapping();
        let err = filemap_fdatawrite_range(mapping, start, size - 1);
        let err2 = self
            .write_inode(node)
            .and_then(|()| self.bdev.sync_buffers());
        let err = match err {
            Ok(()) => filemap_fdatawait_range(mapping, start, size - 1),
            e => e,
        };
        err.and(err2)
    }

    fn fallocate_inner(
        &self,
        node: &Node,
        mode: i32,
        offset: u64,
        len: u64,
    ) -> Result<(), FsError> {
        match self.fallocate_once(node, mode, offset, len) {
            Err(FsError::NoSpace) if self.wait_for_orphans() => {
                self.fallocate_once(node, mode, offset, len)
            }
            r => r,
        }
    }

    fn fallocate_once(&self, node: &Node, mode: i32, offset: u64, len: u64) -> Result<(), FsError> {
        if mode != 0 {
            return Err(FsError::NotSupported);
        }
        self.check_writable()?;
        let file = node.file().map_err(|_| FsError::NotSupported)?;
        let end = offset.checked_add(len).ok_or(FsError::FileTooBig)?;
        if len == 0 {
            return Err(FsError::Invalid("fallocate of zero bytes"));
        }
        if end > FAT_MAX_FILE_SIZE {
            return Err(FsError::FileTooBig);
        }
        let mut io = file.lock();
        if end <= file.size() {
            return Ok(());
        }
        self.cont_expand(node, file, &mut io, end)
    }

    fn fsync_inner(&self, node: &Node) -> Result<(), FsError> {
        self.fsync_range(node, 0, u64::MAX)
    }

    /// fsync of bytes `[start, end]` of the file (the whole entry and metadata either way).
    fn fsync_range(&self, node: &Node, start: u64, end: u64) -> Result<(), FsError> {
        let data = match &node.kind {
            Kind::File(f) => filemap_write_and_wait_range(f.mapping(), start, end),
            Kind::Dir(_) => Ok(()),
        };
        let meta = self.write_inode(node);
        let sync = self.bdev.sync_buffers();
        data.and(meta).and(sync)
    }

    /// Marks `node` changed; with `modified`, stamps its modification time and sets the
    /// archive bit, as a write or truncate does.
    fn touch(&self, node: &Node, modified: bool) {
        let stamp = modified.then(|| self.now_stamp());
        let mut meta = node.meta.lock();
        if let Some((date, time, _)) = stamp {
            meta.entry.modify_date = date;
            meta.entry.modify_time = time;
            meta.entry.access_date = date;
            if !node.is_dir() {
                meta.entry.attr |= ATTR_ARCH;
            }
        }
        meta.dirty = true;
    }

    /// A directory whose entries changed gets a new modification time (written at once on a
    /// `sync` mount, which is also `dirsync`). The root has no entry to keep one in.
    ///
    /// Models: fs/fat/namei_vfat.c vfat_update_dir_metadata() (v6.0), and vfat_add_entry /
    /// vfat_remove_entries before it (v5.10).
    fn dir_changed(&self, dir: &Node) -> Result<(), FsError> {
        if dir.ino == ROOT_INO {
            return Ok(());
        }
        let (date, time, _) = self.now_stamp();
        {
            let mut meta = dir.meta.lock();
            meta.entry.modify_date = date;
            meta.entry.modify_time = time;
            meta.dirty = true;
        }
        if self.opts.sync {
            self.write_inode(dir)?;
        }
        Ok(())
    }

    /// Writes `node`'s entry (size, first cluster, attributes, times) into its directory's
    /// bytes at i_pos, keeping the name there; nothing for the root or an unlinked node.
    ///
    /// Models: fs/fat/inode.c __fat_write_inode() (v5.10).
    fn write_inode(&self, node: &Node) -> Result<(), FsError> {
        let nodes = self.ihash.lock();
        write_inode_locked(&self.bdev, self.fat32(), &nodes, node)
    }

    // ---- namespace -------------------------------------------------------------------------

    fn create_inner(&self, dir: &Node, name: &str) -> Result<Arc<Node>, FsError> {
        self.check_writable()?;
        let mut d = dir.live_dir()?;
        if d.contains(name) {
            return Err(FsError::Exists);
        }
        let template = DirEntry::stamped(ATTR_ARCH, self.now_stamp());
        let slot = d.add(&self.table, name, &template)?;
        let node = self.node_for(dir, &d, &slot)?;
        self.dir_changed(dir)?;
        drop(d);
        self.dir_sync()?;
        Ok(node)
    }

    fn mkdir_inner(&self, dir: &Node, name: &str) -> Result<Arc<Node>, FsError> {
        self.check_writable()?;
        let mut d = dir.live_dir()?;
        if d.contains(name) {
            return Err(FsError::Exists);
        }
        // A bad name fails before a cluster is spent on it.
        vfat_valid_longname(name)?;
        let stamp = self.now_stamp();
        let cluster = alloc_new_dir(&self.table, &self.bpb, dir.dotdot_cluster(), stamp)?;
        let mut template = DirEntry::stamped(ATTR_DIR, stamp);
        template.first_cluster = cluster;
        let slot = match d.add(&self.table, name, &template) {
            Ok(slot) => slot,
            Err(e) => {
                if let Err(free) = self.table.free_chain(cluster) {
                    log::error!("fat: cannot free cluster {cluster} of a failed mkdir: {free}");
                }
                return Err(e);
            }
        };
        let node = self.node_for(dir, &d, &slot)?;
        self.dir_changed(dir)?;
        drop(d);
        self.dir_sync()?;
        Ok(node)
    }

    fn unlink_inner(&self, dir: &Node, name: &str) -> Result<(), FsError> {
        self.check_writable()?;
        let mut d = dir.dir()?;
        let slot = d.lookup(name).ok_or(FsError::NotFound)?;
        if slot.entry.is_dir() {
            return Err(FsError::IsDir);
        }
        let node = self.node_for(dir, &d, &slot)?;
        d.remove(&self.table, slot.offset)?;
        self.forget_unlinked(&node)?;
        self.dir_changed(dir)?;
        drop(d);
        // If nobody else holds the file, its clusters are freed here, before the sync, so a
        // `sync` mount has the freeing on the disk too.
        drop(node);
        self.dir_sync()
    }

    fn rmdir_inner(&self, dir: &Node, name: &str) -> Result<(), FsError> {
        self.check_writable()?;
        let mut d = dir.dir()?;
        let slot = d.lookup(name).ok_or(FsError::NotFound)?;
        if !slot.entry.is_dir() {
            return Err(FsError::NotDir);
        }
        let node = self.node_for(dir, &d, &slot)?;
        // Parent before child: the ancestor-first rule of the lock order.
        let child = node.dir()?;
        if !child.is_empty() {
            return Err(FsError::NotEmpty);
        }
        d.remove(&self.table, slot.offset)?;
        // Set under the child's lock, so a create that takes it next sees the flag.
        node.unlinked.store(true, Ordering::Relaxed);
        let first = match child.location() {
            DirLocation::Chain { first } => *first,
            DirLocation::Fixed { .. } => return Err(FsError::Invalid("rmdir of the root")),
        };
        drop(child);
        self.forget_unlinked(&node)?;
        // The entry's removal reaches the disk before the chain is freed there.
        self.bdev.write_ordered()?;
        self.table.free_chain(first)?;
        self.dir_changed(dir)?;
        drop(d);
        self.dir_sync()
    }

    /// Takes a node whose entry is gone out of the table; a file's clusters go when the
    /// last holder drops it (see [`Node`]'s Drop).
    fn forget_unlinked(&self, node: &Node) -> Result<(), FsError> {
        if !node.is_dir() && !node.unlinked.swap(true, Ordering::Relaxed) {
            self.files.orphans().fetch_add(1, Ordering::Relaxed);
        }
        node.unlinked.store(true, Ordering::Relaxed);
        let mut nodes = self.ihash.lock();
        nodes.detach(node);
        nodes.remove(node.ino);
        Ok(())
    }

    /// Files `node` in the node table under its entry's new place: the short entry at byte
    /// `offset` of `dir`, directory `parent`.
    fn rehome(
        &self,
        node: &Arc<Node>,
        parent: u64,
        dir: &Directory,
        offset: usize,
    ) -> Result<(), FsError> {
        let pos = Pos {
            parent,
            offset,
            dev: dir.dev_offset(offset)?,
        };
        self.ihash.lock().attach(node, pos);
        Ok(())
    }

    fn rename_inner(
        &self,
        old_dir: &Node,
        old_name: &str,
        new_dir: &Node,
        new_name: &str,
        noreplace: bool,
    ) -> Result<(), FsError> {
        self.check_writable()?;
        vfat_valid_longname(new_name)?;
        let _serial = self.rename_lock.lock();
        let same = old_dir.ino == new_dir.ino;
        let (mut od, mut nd) = self.lock_parents(old_dir, new_dir)?;
        let oslot = od.lookup(old_name).ok_or(FsError::NotFound)?;
        let node = self.node_for(old_dir, &od, &oslot)?;
        if node.is_dir() && (node.ino == new_dir.ino || self.is_ancestor(node.ino, new_dir.ino)) {
            // A directory cannot move into itself.
            return Err(FsError::Invalid("rename of a directory into itself"));
        }
        let target = {
            let ndir: &Directory = nd.as_deref().unwrap_or(&od);
            ndir.lookup(new_name)
        };
        // The same entry under another case or spelling is a rename onto itself.
        let target = target.filter(|t| !(same && t.offset == oslot.offset));
        if let Some(t) = &target {
            if noreplace {
                return Err(FsError::Exists);
            }
            let ndir: &Directory = nd.as_deref().unwrap_or(&od);
            let tnode = self.node_for(new_dir, ndir, t)?;
            match (node.is_dir(), tnode.is_dir()) {
                (true, false) => return Err(FsError::NotDir),
                (false, true) => return Err(FsError::IsDir),
                // The target holds the source: not empty, as Linux answers. (Its lock is
                // held already, as the old directory or above it, so it must not be taken.)
                (true, true)
                    if tnode.ino == old_dir.ino || self.is_ancestor(tnode.ino, old_dir.ino) =>
                {
                    return Err(FsError::NotEmpty);
                }
                (true, true) if !tnode.dir()?.is_empty() => return Err(FsError::NotEmpty),
                _ => {}
            }
            let ndir: &mut Directory = nd.as_deref_mut().unwrap_or(&mut od);
            ndir.remove(&self.table, t.offset)?;
            if let Kind::Dir(td) = &tnode.kind {
                // An empty directory replaced: its chain goes now, as rmdir's does.
                let first = match td.dir.lock().location() {
                    DirLocation::Chain { first } => *first,
                    DirLocation::Fixed { .. } => return Err(FsError::Invalid("the root")),
                };
                // The entry's removal reaches the disk before the chain is freed there.
                self.bdev.write_ordered()?;
                self.table.free_chain(first)?;
            }
            self.forget_unlinked(&tnode)?;
        } else if same && old_name == new_name {
            return Ok(());
        }
        // The entry on disk, brought up to date first, is what moves.
        self.write_inode(&node)?;
        let mut entry = self.read_entry(od.dev_offset(oslot.offset)?)?;
        if !node.is_dir() {
            entry.attr |= ATTR_ARCH;
            // The node's copy too, or its next write_inode would clear the bit again.
            node.meta.lock().entry.attr |= ATTR_ARCH;
        }
        // Out of the table by position before the old entry goes, as vfat_rename moves
        // i_pos before it removes the old slots: a write_inode (the flusher's, an fsync's)
        // holds `ihash` over its write and finds the node nowhere until `rehome` files it at
        // its new entry, so nothing is written at the old place once its removal has begun.
        // Attached, a racing write_inode put the entry's fields over the long-name slots a
        // same-directory rename had just put there. A write_inode meanwhile only clears the
        // dirty flag; it is set again, and the entry written, below.
        self.ihash.lock().detach(&node);
        // The old entry goes first, and is on the disk before the new one is written. vfat
        // has no journal, and the two changes are in different directory blocks (often
        // different directories), which a kill can split. Old first, a split loses the name
        // (the chain leaks: lost clusters for fsck); new first, it left two entries naming
        // one chain, shared clusters, which fsck repairs by cutting one of them to nothing
        // (the crash test, FATCACHE_CRASH_SEED=2024, round 90: both names on the image, the
        // old one's removal lost). A new spelling of the same name (case) needs the old
        // entry gone first anyway, or the two would clash. If the add fails, the old name
        // comes back.
        if let Err(e) = od.remove(&self.table, oslot.offset) {
            // A failed remove leaves the short entry where it was.
            self.rehome(&node, old_dir.ino, &od, oslot.offset)?;
            node.meta.lock().dirty = true;
            return Err(e);
        }
        let added = self.bdev.write_ordered().and_then(|()| {
            let ndir: &mut Directory = nd.as_deref_mut().unwrap_or(&mut od);
            ndir.add(&self.table, new_name, &entry)
        });
        let nslot = match added {
            Ok(slot) => slot,
            Err(e) => {
                let back = od.add(&self.table, old_name, &entry)?;
                self.rehome(&node, old_dir.ino, &od, back.offset)?;
                node.meta.lock().dirty = true;
                return Err(e);
            }
        };
        let ndir: &Directory = nd.as_deref().unwrap_or(&od);
        self.rehome(&node, new_dir.ino, ndir, nslot.offset)?;
        // A writer of the file may have changed its size after the write_inode above, and
        // a write_inode while the node was detached called it clean without writing: write
        // the node again, now at its new position.
        node.meta.lock().dirty = true;
        self.write_inode(&node)?;
        if node.is_dir() && !same {
            node.dir()?
                .set_dotdot(&self.table, new_dir.dotdot_cluster())?;
        }
        self.dir_changed(old_dir)?;
        if !same {
            self.dir_changed(new_dir)?;
        }
        drop(nd);
        drop(od);
        self.dir_sync()
    }

    /// The directory locks of a rename: `old_dir`'s, and `new_dir`'s when that is another
    /// directory, taken in the lock order (an ancestor before its descendant). Called under
    /// `rename_lock`, which keeps the tree's shape from changing between the ancestor test and
    /// the locking. `NotFound` once `new_dir` was removed.
    fn lock_parents<'a>(
        &self,
        old_dir: &'a Node,
        new_dir: &'a Node,
    ) -> Result<ParentLocks<'a>, FsError> {
        let locks = if old_dir.ino == new_dir.ino {
            (old_dir.dir()?, None)
        } else if !self.is_ancestor(new_dir.ino, old_dir.ino) {
            let od = old_dir.dir()?;
            (od, Some(new_dir.dir()?))
        } else {
            let nd = new_dir.dir()?;
            (old_dir.dir()?, Some(nd))
        };
        // Relaxed: rmdir sets the flag under the directory's lock, held here.
        if new_dir.unlinked.load(Ordering::Relaxed) {
            return Err(FsError::NotFound);
        }
        Ok(locks)
    }

    /// Whether directory `a` is an ancestor of node `b` (by the parents the table records).
    fn is_ancestor(&self, a: u64, b: u64) -> bool {
        let nodes = self.ihash.lock();
        let mut cur = b;
        // Bounded by the table's size: a damaged volume cannot make this loop for ever.
        for _ in 0..=nodes.by_pos.len() {
            // Only directories record a parent: every caller starts at a directory, and
            // every parent on the way up is one.
            let Some(parent) = nodes.parent_of(cur) else {
                return false;
            };
            if parent == a {
                return true;
            }
            cur = parent;
        }
        false
    }

    /// After a directory change on a `sync` mount (which is also `dirsync`), the metadata is
    /// written and flushed before the call returns.
    fn dir_sync(&self) -> Result<(), FsError> {
        if self.opts.sync {
            self.bdev.sync_buffers()?;
        }
        Ok(())
    }

    // ---- sync and unmount ------------------------------------------------------------------

    fn sync_fs_inner(&self) -> Result<(), FsError> {
        if self.read_only {
            return Ok(());
        }
        let nodes: Vec<Arc<Node>> = self.ihash.lock().by_ino.iter().cloned().collect();
        let mut first: Result<(), FsError> = Ok(());
        let mut keep = |r: Result<(), FsError>| {
            if let Err(e) = r {
                log::error!("fat: sync: {e}");
                if first.is_ok() {
                    first = Err(e);
                }
            }
        };
        for node in &nodes {
            if let Kind::File(f) = &node.kind {
                keep(filemap_write_and_wait_range(f.mapping(), 0, u64::MAX));
            }
        }
        for node in &nodes {
            keep(self.write_inode(node));
        }
        // After errors=remount-ro the FSInfo hints stay as they are: the kernel never syncs a
        // read-only superblock, the dirty bit stays set, and fsck recounts them. What was
        // changed before the error (data, entries, FAT) is still written back above.
        if !self.remounted_read_only() {
            keep(self.write_fsinfo());
        }
        keep(self.bdev.sync());
        first
    }

    /// Writes the free count and next-free hint into FAT32's FSInfo sector, if it has a valid
    /// one (a sector whose signatures do not check is left alone, as the kernel does).
    ///
    /// Models: fs/fat/misc.c fat_clusters_flush() (v5.10).
    fn write_fsinfo(&self) -> Result<(), FsError> {
        let Some(sector) = self.bpb.fsinfo_sector() else {
            return Ok(());
        };
        let at = u64::from(sector) * u64::from(self.bpb.bytes_per_sector);
        let mut raw = [0u8; BOOT_SECTOR];
        self.bdev.read(at, &mut raw)?;
        if FsInfo::parse(&raw).is_err() {
            log::warn!("fat: FSInfo sector {sector} is invalid; not updated");
            return Ok(());
        }
        let info = FsInfo {
            free_count: Some(self.table.free_count()),
            next_free: self.table.next_free(),
        };
        info.serialize(&mut raw);
        self.bdev.write(at, &raw)
    }

    /// Unmounts: syncs everything and clears the dirty bit. On an error the bit stays set and
    /// the error is returned, so the next mount (and fsck) knows.
    ///
    /// Models: fs/fat/inode.c fat_put_super() (v5.10).
    pub fn unmount(self) -> Result<(), FsError> {
        self.shutdown()
    }

    /// [`Volume::unmount`] for a volume still shared (the FUSE session's destroy): syncs,
    /// clears the dirty bit, and refuses every later change with EROFS.
    pub fn shutdown(&self) -> Result<(), FsError> {
        if self.read_only {
            return Ok(());
        }
        self.sync_fs()?;
        // Relaxed: nothing may change the volume from here on; the sync above saw everything
        // that returned before this call.
        self.closed.store(true, Ordering::Relaxed);
        // Nothing is dirty and nothing can be dirtied: the flusher has no more work, and must
        // not touch the device once the dirty bit is clear.
        self.stop_flusher();
        if self.remounted_read_only() {
            // The volume met corruption: the dirty bit stays so the next mount and fsck know.
            return Ok(());
        }
        self.set_state(false)?;
        self.clean.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Stops the flusher thread (idempotent); later dirty pages wait for a sync.
    fn stop_flusher(&self) {
        if let Some((bdi, _)) = &self.writeback {
            bdi.stop();
        }
    }

    /// The flusher's counters (all zero on a read-only mount).
    pub fn flusher_stats(&self) -> FlusherSnapshot {
        self.writeback
            .as_ref()
            .map(|(bdi, _)| bdi.stats())
            .unwrap_or_default()
    }

    /// Whether the last [`Volume::shutdown`] wrote everything back and cleared the dirty bit
    /// (always true for a read-only mount, which changes nothing).
    pub fn cleanly_shut_down(&self) -> bool {
        self.read_only || self.clean.load(Ordering::Relaxed)
    }

    /// close() of a file opened for writing on a `flush` mount: start writing its data, its
    /// entry and the metadata, without waiting (fat_flush_inodes).
    ///
    /// Models: fs/fat/file.c fat_file_release() with `flush` (v5.10).
    pub fn release_flush(&self, node: &Node) -> Result<(), FsError> {
        if self.read_only {
            return Ok(());
        }
        let data = match &node.kind {
            Kind::File(f) => crate::mm::filemap::filemap_fdatawrite(f.mapping()),
            Kind::Dir(_) => Ok(()),
        };
        let meta = self.write_inode(node);
        let bdev = crate::mm::filemap::filemap_flush(self.bdev.mapping());
        data.and(meta).and(bdev)
    }

    /// Sets the modification and/or access time (utimes), as Unix seconds and nanoseconds.
    ///
    /// Models: fs/fat/file.c fat_setattr() ATTR_MTIME / ATTR_ATIME (v5.10): FAT keeps 2-second
    /// modification times and access dates only.
    pub fn set_times(
        &self,
        node: &Node,
        atime: Option<(i64, u32)>,
        mtime: Option<(i64, u32)>,
    ) -> Result<(), FsError> {
        self.check_writable()?;
        if node.ino == ROOT_INO {
            // The root has no entry to keep times in; the kernel accepts and forgets them.
            return Ok(());
        }
        let tz = self.opts.tz_offset_minutes;
        {
            let mut meta = node.meta.lock();
            if let Some((secs, nanos)) = mtime {
                let (date, time, _) = unix_to_fat(secs, nanos, tz);
                meta.entry.modify_date = date;
                meta.entry.modify_time = time;
            }
            if let Some((secs, nanos)) = atime {
                meta.entry.access_date = unix_to_fat(secs, nanos, tz).0;
            }
            meta.dirty = true;
        }
        if self.opts.sync {
            self.write_inode(node)?;
            self.bdev.sync_buffers()?;
        }
        Ok(())
    }

    /// Sets or clears the read-only attribute (chmod without write bits, as vfat maps it).
    pub fn set_read_only_attr(&self, node: &Node, read_only: bool) -> Result<(), FsError> {
        self.check_writable()?;
        if node.ino == ROOT_INO {
            return Ok(());
        }
        {
            let mut meta = node.meta.lock();
            if read_only {
                meta.entry.attr |= crate::fat::dirent::ATTR_RO;
            } else {
                meta.entry.attr &= !crate::fat::dirent::ATTR_RO;
            }
            meta.dirty = true;
        }
        if self.opts.sync {
            self.write_inode(node)?;
            self.bdev.sync_buffers()?;
        }
        Ok(())
    }

    /// The time zone offset DOS times are in (minutes east of UTC).
    pub fn tz_offset_minutes(&self) -> i32 {
        self.opts.tz_offset_minutes
    }
}

/// The public operations: each passes corruption it meets to the `errors=` policy.
impl Volume {
    /// The node `name` denotes in `dir`, by long or short name, case-insensitively.
    ///
    /// Models: fs/fat/namei_vfat.c vfat_lookup() (v5.10).
    pub fn lookup(&self, dir: &Node, name: &str) -> Result<Arc<Node>, FsError> {
        self.fs_error(self.lookup_inner(dir, name))
    }

    /// The inode number of the directory holding `dir`'s entry, what its ".." names: the
    /// root's own for the root (and for a directory already removed, whose ".." leads
    /// nowhere).
    pub fn parent_ino(&self, dir: &Node) -> u64 {
        self.ihash.lock().parent_of(dir.ino).unwrap_or(ROOT_INO)
    }

    /// The node whose short entry is at `offset` in `dir` (from a [`DirItem`]).
    pub fn child_at(&self, dir: &Node, offset: usize) -> Result<Arc<Node>, FsError> {
        self.fs_error(self.child_at_inner(dir, offset))
    }

    /// The files and directories of `dir`, in on-disk order, without `.`, `..` and labels.
    ///
    /// Models: fs/fat/dir.c fat_readdir() (v5.10).
    pub fn read_dir(&self, dir: &Node) -> Result<Vec<DirItem>, FsError> {
        self.fs_error(self.read_dir_inner(dir, 0, usize::MAX))
    }

    /// At most `max` items of [`Volume::read_dir`], those whose short entry is at byte
    /// `from` of `dir` or later: one page of a listing, costing the items it returns (a
    /// listing of n entries in pages of k was O(n * n / k) when every page built them all).
    pub fn read_dir_from(
        &self,
        dir: &Node,
        from: usize,
        max: usize,
    ) -> Result<Vec<DirItem>, FsError> {
        self.fs_error(self.read_dir_inner(dir, from, max))
    }

    /// Reads file data at `offset` into `buf`; returns the bytes read, short at end of file.
    pub fn read(&self, node: &Node, offset: u64, buf: &mut [u8]) -> Result<usize, FsError> {
        self.fs_error(self.read_inner(node, offset, buf))
    }

    /// Writes `data` at `offset`; returns the bytes written (short at 4 GiB - 1 or a full
    /// volume). On a `sync` mount the written range, the entry and the FAT are on the disk
    /// when it returns (IOCB_DSYNC: generic_write_sync after the inode lock is dropped).
    ///
    /// Models: mm/filemap.c generic_file_write_iter() with fat_write_begin/fat_write_end
    /// (v5.10).
    pub fn write(&self, node: &Node, offset: u64, data: &[u8]) -> Result<usize, FsError> {
        self.fs_error(self.write_inner(node, offset, data))
    }

    /// Sets the size (truncate / ftruncate): growth zero-fills through the page cache
    /// (fat_cont_expand, which on a `sync` mount writes the new range, the entry and the FAT
    /// and waits, all under the inode lock); shrinking drops the cache past the size, waiting
    /// for writeback, and frees the clusters past it.
    ///
    /// Models: fs/fat/file.c fat_setattr() with ATTR_SIZE, fat_cont_expand() (v5.10).
    pub fn set_size(&self, node: &Node, size: u64) -> Result<(), FsError> {
        self.fs_error(self.set_size_inner(node, size))
    }

    /// fallocate: mode 0 grows the file to `offset + len` through fat_cont_expand; every
    /// other mode is EOPNOTSUPP (see the module's deviations).
    ///
    /// Models: fs/fat/file.c fat_fallocate() (v5.10).
    pub fn fallocate(&self, node: &Node, mode: i32, offset: u64, len: u64) -> Result<(), FsError> {
        self.fs_error(self.fallocate_inner(node, mode, offset, len))
    }

    /// fsync / fdatasync: the file's data, then its entry, then every dirty metadata page
    /// (FAT, directories), then a device flush; a returned fsync is durable.
    ///
    /// Models: fs/fat/file.c fat_file_fsync() (v5.10).
    pub fn fsync(&self, node: &Node) -> Result<(), FsError> {
        self.fs_error(self.fsync_inner(node))
    }

    /// Creates an empty file `name` in `dir`.
    ///
    /// Models: fs/fat/namei_vfat.c vfat_create() (v5.10).
    pub fn create(&self, dir: &Node, name: &str) -> Result<Arc<Node>, FsError> {
        self.fs_error(self.create_inner(dir, name))
    }

    /// Creates the directory `name` in `dir`: a zeroed cluster with `.` and `..`, then its
    /// entry; the cluster is freed again if the entry cannot be added.
    ///
    /// Models: fs/fat/namei_vfat.c vfat_mkdir() (v5.10).
    pub fn mkdir(&self, dir: &Node, name: &str) -> Result<Arc<Node>, FsError> {
        self.fs_error(self.mkdir_inner(dir, name))
    }

    /// Removes the file `name` from `dir` and frees its clusters.
    ///
    /// Models: fs/fat/namei_vfat.c vfat_unlink() (v5.10).
    pub fn unlink(&self, dir: &Node, name: &str) -> Result<(), FsError> {
        self.fs_error(self.unlink_inner(dir, name))
    }

    /// Removes the empty directory `name` from `dir` and frees its clusters.
    ///
    /// Models: fs/fat/namei_vfat.c vfat_rmdir() (v5.10).
    pub fn rmdir(&self, dir: &Node, name: &str) -> Result<(), FsError> {
        self.fs_error(self.rmdir_inner(dir, name))
    }

    /// Renames `old_name` in `old_dir` to `new_name` in `new_dir`, replacing a target of the
    /// same kind (an empty directory only) unless `noreplace`.
    ///
    /// Order: the target's entry goes, the new entry is written, then the old one is removed,
    /// so a crash leaves the file under one name or both, never none.
    ///
    /// Models: fs/fat/namei_vfat.c vfat_rename() (v5.10).
    pub fn rename(
        &self,
        old_dir: &Node,
        old_name: &str,
        new_dir: &Node,
        new_name: &str,
        noreplace: bool,
    ) -> Result<(), FsError> {
        self.fs_error(self.rename_inner(old_dir, old_name, new_dir, new_name, noreplace))
    }

    /// syncfs: every file's data, every changed entry, the FSInfo hints, then every metadata
    /// page, then a device flush. The first error is returned after all of it was tried.
    pub fn sync_fs(&self) -> Result<(), FsError> {
        self.fs_error(self.sync_fs_inner())
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::fat::mkfs::{MkfsOptions, mkfs};
    use crate::fat::table::FatEntry;

    /// A fresh 8 MiB FAT16 image in a private temporary directory, removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(test: &str) -> Scratch {
            let dir =
                std::env::temp_dir().join(format!("fatcache-vol-{test}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("temp dir");
            let img = dir.join("v.img");
            let opts = MkfsOptions {
                size: 8 << 20,
                volume_id: Some(0x1234_5678),
                ..MkfsOptions::default()
            };
            mkfs(&img, &opts).expect("mkfs");
            Scratch(dir)
        }

        fn img(&self) -> PathBuf {
            self.0.join("v.img")
        }

        /// Whether the boot sector on the disk has the dirty bit set.
        fn dirty_on_disk(&self) -> bool {
            let boot = std::fs::read(self.img()).expect("read image");
            let bpb = Bpb::parse(&boot[..512]).expect("bpb");
            bpb.dirty(&boot[..512])
        }

        fn mount(&self, errors: ErrorsPolicy) -> Volume {
            self.mount_with(MountOptions {
                errors,
                ..MountOptions::default()
            })
        }

        /// Mounts with `opts`, a small cache and BUG_ON as a panic.
        fn mount_with(&self, opts: MountOptions) -> Volume {
            let opts = MountOptions {
                cache_frames: 256,
                on_bug: OnBug::Panic,
                ..opts
            };
            Volume::mount(&self.img(), opts).expect("mount")
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A file of 5000 bytes whose chain is then broken: its second cluster marked free.
    fn broken_file(s: &Scratch) {
        let vol = s.mount(ErrorsPolicy::Continue);
        let f = vol.create(&vol.root(), "broken.bin").expect("create");
        vol.write(&f, 0, &[7u8; 5000]).expect("write");
        let first = f.entry().first_cluster;
        let second = vol.table.next_in_chain(first).expect("chain").expect("two");
        drop(f);
        vol.unmount().expect("unmount");
        let vol = s.mount(ErrorsPolicy::Continue);
        vol.table
            .set(second, FatEntry::Free)
            .expect("break the chain");
        vol.unmount().expect("unmount");
    }

    #[test]
    fn files_round_trip_through_unmount_and_the_dirty_bit_follows_the_mount() {
        let s = Scratch::new("round");
        let vol = s.mount(ErrorsPolicy::default());
        assert!(s.dirty_on_disk(), "set and written at mount");
        let d = vol.mkdir(&vol.root(), "Sub Dir").expect("mkdir");
        let f = vol.create(&d, "a long file name.txt").expect("create");
        let data: Vec<u8> = (0..70_000u32).map(|i| (i * 31 % 251) as u8).collect();
        assert_eq!(vol.write(&f, 0, &data).expect("write"), data.len());
        drop((d, f));
        vol.unmount().expect("unmount");
        let vol = s.mount(ErrorsPolicy::default());
        let f = vol
            .lookup_path("/sub dir/A LONG FILE NAME.TXT")
            .expect("lookup");
        assert_eq!(f.size(), 70_000);
        let mut back = vec![0u8; 70_000];
        assert_eq!(vol.read(&f, 0, &mut back).expect("read"), 70_000);
        let bad: Vec<usize> = (0..70_000).filter(|&i| back[i] != data[i]).collect();
        assert!(
            bad.is_empty(),
            "{} bytes differ, from {:?} to {:?}",
            bad.len(),
            bad.first(),
            bad.last()
        );
        drop(f);
        vol.unmount().expect("unmount");
        assert!(!s.dirty_on_disk(), "cleared by the clean unmount");
    }

    #[test]
    fn read_dir_from_pages_through_the_listing_and_resumes_after_a_removed_entry() {
        let s = Scratch::new("pages");
        let vol = s.mount(ErrorsPolicy::default());
        let d = vol.mkdir(&vol.root(), "big").expect("mkdir");
        for i in 0..150 {
            vol.create(&d, &format!("a long enough name {i}.txt"))
                .expect("create");
        }
        let whole = vol.read_dir(&d).expect("read_dir");
        assert_eq!(whole.len(), 150);
        let mut paged = Vec::new();
        let mut from = 0;
        loop {
            let page = vol.read_dir_from(&d, from, 64).expect("page");
            assert!(page.len() <= 64);
            paged.extend(page.iter().cloned());
            match page.last() {
                Some(last) if page.len() == 64 => from = last.offset + 1,
                _ => break,
            }
        }
        assert_eq!(paged, whole, "the pages make up the listing, in order");
        // A page that resumes at the offset of an entry removed since starts at the next.
        vol.unlink(&d, &whole[70].name).expect("unlink");
        let page = vol.read_dir_from(&d, whole[70].offset, 3).expect("page");
        assert_eq!(page, whole[71..74]);
        assert!(
            vol.read_dir_from(&d, usize::MAX, 64)
                .expect("past the end")
                .is_empty()
        );
        drop(d);
        vol.unmount().expect("unmount");
    }

    #[test]
    fn errors_remount_ro_refuses_changes_after_corruption() {
        let s = Scratch::new("remount");
        broken_file(&s);
        let vol = s.mount(ErrorsPolicy::RemountRo);
        let f = vol.lookup_path("/broken.bin").expect("lookup");
        let mut buf = vec![0u8; 5000];
        let e = vol.read(&f, 0, &mut buf).expect_err("the chain is broken");
        assert_eq!(e.errno(), libc::EIO);
        assert!(vol.remounted_read_only());
        let e = vol.create(&vol.root(), "new").expect_err("read-only now");
        assert_eq!(e.errno(), libc::EROFS);
        drop(f);
        vol.unmount().expect("unmount");
        assert!(s.dirty_on_disk(), "the dirty bit stays after an error");
    }

    #[test]
    fn errors_continue_fails_the_operation_only() {
        let s = Scratch::new("continue");
        broken_file(&s);
        let vol = s.mount(ErrorsPolicy::Continue);
        let f = vol.lookup_path("/broken.bin").expect("lookup");
        let mut buf = vec![0u8; 5000];
        let e = vol.read(&f, 0, &mut buf).expect_err("the chain is broken");
        assert_eq!(e.errno(), libc::EIO);
        assert!(!vol.remounted_read_only());
        vol.create(&vol.root(), "still writable").expect("create");
    }

    #[test]
    fn errors_panic_panics() {
        let s = Scratch::new("panic");
        broken_file(&s);
        let vol = s.mount(ErrorsPolicy::Panic);
        let f = vol.lookup_path("/broken.bin").expect("lookup");
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut buf = vec![0u8; 5000];
            let _ = vol.read(&f, 0, &mut buf);
        }));
        let payload = r.expect_err("errors=panic must panic");
        let msg = payload
            .downcast_ref::<FsPanic>()
            .expect("an FsPanic payload");
        assert!(msg.0.contains("fs panic"), "{msg:?}");
    }

    #[test]
    fn errors_option_parses_the_three_policies_and_names_a_bad_one() {
        assert_eq!(
            "continue".parse::<ErrorsPolicy>().ok(),
            Some(ErrorsPolicy::Continue)
        );
        assert_eq!(
            "remount-ro".parse::<ErrorsPolicy>().ok(),
            Some(ErrorsPolicy::RemountRo)
        );
        assert_eq!(
            "panic".parse::<ErrorsPolicy>().ok(),
            Some(ErrorsPolicy::Panic)
        );
        let e = "ignore".parse::<ErrorsPolicy>().expect_err("unknown");
        assert!(e.to_string().contains("errors="), "{e}");
    }

    /// Runs `work` on its own thread and fails the test if it has not finished in time: a
    /// lock-order mistake shows up as a hang, which a timeout turns into a failure.
    fn within(secs: u64, what: &str, work: impl FnOnce() + Send + 'static) {
        let (tx, rx) = std::sync::mpsc::channel();
        let handle = std::thread::spawn(move || {
            work();
            let _ = tx.send(());
        });
        match rx.recv_timeout(std::time::Duration::from_secs(secs)) {
            Ok(()) => handle.join().expect("worker"),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                // The worker panicked: pass its panic on.
                if let Err(p) = handle.join() {
                    std::panic::resume_unwind(p);
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                panic!("{what} did not finish in {secs} s: a deadlock?")
            }
        }
    }

    /// Four threads at once on one volume: writers and truncaters of their own and a shared
    /// file, a renamer moving files between two directories, creators and unlinkers, and a
    /// syncer. Nothing may hang; afterwards the free count is exact and every surviving file
    /// reads back as its last writer left it.
    fn stress(sync: bool) {
        let s = Scratch::new(if sync { "stress-sync" } else { "stress" });
        let vol = Arc::new(s.mount_with(MountOptions {
            sync,
            ..MountOptions::default()
        }));
        let a = vol.mkdir(&vol.root(), "a").expect("mkdir a");
        let b = vol.mkdir(&vol.root(), "b").expect("mkdir b");
        let shared = vol.create(&vol.root(), "shared.bin").expect("shared");
        drop((a, b, shared));
        let rounds = 60;
        let v = Arc::clone(&vol);
        within(120, "the stress threads", move || {
            std::thread::scope(|sc| {
                // Writer/truncater of its own file and of the shared one.
                sc.spawn(|| {
                    let own = v.create(&v.root(), "own.bin").expect("own");
                    let shared = v.lookup_path("/shared.bin").expect("shared");
                    for i in 0..rounds {
                        let len = 1000 + i * 977 % 20_000;
                        v.write(&own, (i * 3001 % 9000) as u64, &vec![i as u8; len])
                            .expect("write own");
                        v.set_size(&own, (i * 7919 % 30_000) as u64)
                            .expect("size own");
                        v.write(&shared, (i * 1237 % 12_000) as u64, &[0xAB; 3000])
                            .expect("write shared");
                    }
                });
                // Extender/shrinker of the shared file, with fsync.
                sc.spawn(|| {
                    let shared = v.lookup_path("/shared.bin").expect("shared");
                    for i in 0..rounds {
                        v.set_size(&shared, (i * 5003 % 40_000) as u64)
                            .expect("size shared");
                        if i % 5 == 0 {
                            v.fsync(&shared).expect("fsync shared");
                        }
                    }
                });
                // Renamer and creator/unlinker across two directories.
                sc.spawn(|| {
                    let (a, b) = (
                        v.lookup_path("/a").expect("a"),
                        v.lookup_path("/b").expect("b"),
                    );
                    for i in 0..rounds {
                        let name = format!("moving file {i}.txt");
                        let f = v.create(&a, &name).expect("create");
                        v.write(&f, 0, name.as_bytes()).expect("write name");
                        v.rename(&a, &name, &b, &name, false).expect("rename");
                        if i % 2 == 0 {
                            v.unlink(&b, &name).expect("unlink");
                        }
                    }
                });
                // Syncer.
                sc.spawn(|| {
                    for _ in 0..rounds / 4 {
                        v.sync_fs().expect("sync_fs");
                    }
                });
            });
        });
        assert_eq!(
            vol.table.count_free().expect("count"),
            vol.table.free_count(),
            "the free count stayed exact"
        );
        let b = vol.lookup_path("/b").expect("b");
        let names: Vec<String> = vol
            .read_dir(&b)
            .expect("list")
            .into_iter()
            .map(|i| i.name)
            .collect();
        assert_eq!(
            names.len(),
            rounds / 2,
            "the odd-numbered files stay: {names:?}"
        );
        for name in &names {
            let f = vol.lookup(&b, name).expect("lookup");
            let mut buf = vec![0u8; 64];
            let n = vol.read(&f, 0, &mut buf).expect("read");
            assert_eq!(&buf[..n], name.as_bytes(), "{name} reads back");
        }
        drop(b);
        let vol = Arc::into_inner(vol).expect("the threads are done");
        vol.unmount().expect("unmount");
    }

    #[test]
    fn concurrent_operations_neither_hang_nor_lose_count() {
        stress(false);
    }

    #[test]
    fn concurrent_operations_on_a_sync_mount_neither_hang_nor_lose_count() {
        stress(true);
    }

    mod entry_vs_write_inode {
        use super::*;
        use crate::fat::name::{ATTR_LONG_NAME, DIR_ENTRY_DELETED};

        /// Renames or unlinks per test, each racing a thread that writes the file's entry back
        /// as fast as it can: the window is a few microseconds each.
        const ROUNDS: usize = 3000;

        /// What takes the entry away from its place.
        #[derive(Clone, Copy, PartialEq)]
        enum Move {
            /// A rename to another directory.
            Across,
            /// A rename within the directory, between a short name and a long one, whose slots
            /// then land where the short entry was.
            Within,
            /// An unlink (of a file created again each round).
            Unlink,
        }

        /// A write_inode (the flusher's, an fsync's) racing a rename or unlink of the same file
        /// must not write anything at the entry's old place once it is being taken away: not the
        /// live name over its deletion mark (two entries on one chain after a clean unmount: the
        /// soak's "share clusters", v6.9 async, seen once; or an entry naming freed clusters),
        /// and not the entry's fields over long-name slots the new name put in that place.
        /// After each round the old place must hold a deletion mark, a long-name slot, or the
        /// moved entry itself.
        fn race(how: Move) {
            let s = Scratch::new(&format!("revive-{}", how as u8));
            let vol = s.mount(ErrorsPolicy::default());
            let root = vol.root();
            let a = vol.mkdir(&root, "a").expect("mkdir a");
            let b = vol.mkdir(&root, "b").expect("mkdir b");
            let names = match how {
                Move::Within => ["f", "a name long enough for slots.txt"],
                Move::Across | Move::Unlink => ["f", "f"],
            };
            let make = || {
                let f = vol.create(&a, names[0]).expect("create");
                vol.write(&f, 0, &[1u8; 3000]).expect("write");
                f
            };
            let current = Mutex::new(make());
            let stop = AtomicBool::new(false);
            let bad = std::thread::scope(|sc| {
                sc.spawn(|| {
                    // Relaxed: a stop flag; the scope's join orders everything else.
                    while !stop.load(Ordering::Relaxed) {
                        let f = Arc::clone(&current.lock());
                        f.meta.lock().dirty = true;
                        vol.write_inode(&f).expect("write_inode");
                    }
                });
                let mut bad = None;
                for i in 0..ROUNDS {
                    let f = Arc::clone(&current.lock());
                    let old = vol.ihash.lock().pos_of(&f).expect("attached");
                    let (from, to) = match (how, i % 2) {
                        (Move::Across, 0) => (&a, &b),
                        (Move::Across, _) => (&b, &a),
                        _ => (&a, &a),
                    };
                    if how == Move::Unlink {
                        vol.unlink(from, names[0]).expect("unlink");
                    } else {
                        let (old_name, new_name) = (names[i % 2], names[(i + 1) % 2]);
                        vol.rename(from, old_name, to, new_name, false)
                            .expect("rename");
                    }
                    let new = vol.ihash.lock().pos_of(&f);
                    let mut raw: RawEntry = [0; DIR_ENTRY_SIZE];
                    vol.bdev.read(old, &mut raw).expect("read the old place");
                    let fine = raw[0] == DIR_ENTRY_DELETED
                        || raw[OFF_ATTR] == ATTR_LONG_NAME
                        || new == Some(old);
                    if !fine {
                        bad = Some((i, raw));
                        break;
                    }
                    if how == Move::Unlink {
                        *current.lock() = make();
                    }
                }
                stop.store(true, Ordering::Relaxed);
                bad
            });
            drop((current, a, b, root));
            let _ = vol.unmount();
            if let Some((i, raw)) = bad {
                panic!("round {i} left the old place holding {raw:02x?}");
            }
        }

        #[test]
        fn a_racing_write_inode_never_revives_an_entry_renamed_to_another_directory() {
            race(Move::Across);
        }

        #[test]
        fn a_racing_write_inode_never_writes_over_the_slots_of_the_new_name() {
            race(Move::Within);
        }

        #[test]
        fn a_racing_write_inode_never_revives_an_unlinked_entry() {
            race(Move::Unlink);
        }
    }
}
