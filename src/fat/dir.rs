//! One directory, readable and writable: its entries on disk kept in step with an index in
//! memory, and the making of a new directory's first cluster.
//!
//! Models: fs/fat/dir.c fat_add_entries(), fat_remove_entries(), fat_alloc_new_dir(),
//! fat_dir_empty() and fs/fat/namei_vfat.c vfat_add_entry() (v5.10)
//!
//! A [`Directory`] reads its bytes once, in [`Directory::load`], walks them with [`iterate`] and
//! keeps only bookkeeping: the live slots by offset, the [`NameIndex`], the offset of the end
//! marker, the holes (runs of deleted entries before the end marker) by start, and the cluster
//! list. Every change writes the few bytes it touches through the table's store (in the mount,
//! the page cache's block-device mapping, which holds the bytes) and updates that bookkeeping,
//! so adding, removing and looking up cost no rescan and no copy of the directory.
//!
//! The slots are kept packed (see `SlotTable`): a directory stays in memory as long as it is
//! known, ~100 bytes per entry. So [`Directory::lookup`], [`Directory::slot_at`] and
//! [`Directory::entries`] build the [`Slot`]s they hand out, each with its own copy of the name.
//!
//! Locking: none inside. Changes take `&mut self`, so the caller's lock on the directory (the
//! kernel's i_rwsem on the parent) serializes them and excludes readers of the same object;
//! the FAT's own lock is taken inside [`FatTable`] calls.
//!
//! Write order, as handed to the cache (the cache may write pages back in any order, as the
//! kernel's buffer cache does without `dirsync`, so this is best effort across pages):
//! * A new run of entries goes after zeroing the entry that follows it when the run covers the
//!   end marker, so stale bytes past the marker never turn live; LFN slots go before their
//!   short entry, so a torn add leaves orphan slots, which readers skip.
//! * Growth allocates the new clusters (an unlinked chain), zeroes them, and only then links
//!   them after the last cluster: a crash leaks clusters at worst and never shows stale data
//!   as entries.
//! * Removal marks the short entry first and its LFN slots after it, backwards: the name goes
//!   in one write, and slots left by a crash are orphans.
//!
//! Deviation: the kernel writes the new entries into appended clusters before linking them;
//! here appended clusters are zeroed, linked, and then written like any other free run, which
//! gives the same crash guarantees with one write path.
//! Deviation: the kernel lets `.` and `..` be removed like any entry; [`Directory::remove`]
//! refuses them, as no caller has reason to.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;

use crate::error::FsError;
use crate::fat::bpb::{Bpb, FatType};
use crate::fat::dirent::{
    ATTR_VOLUME, DirEntry, FAT_MAX_DIR_SIZE, NameIndex, Slot, SlotKind, build_entries,
    check_dir_size, dot_entries, end_offset, iterate,
};
use crate::fat::inode::cluster_offset;
use crate::fat::name::{
    DIR_ENTRY_DELETED, DIR_ENTRY_FREE, DIR_ENTRY_SIZE, ShortName, ShortnameMode, names_equal,
};
use crate::fat::table::{FatEntry, FatStore, FatTable};

/// Bytes of one entry, short for the offset arithmetic below.
const E: usize = DIR_ENTRY_SIZE;

/// Where a directory's bytes are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DirLocation {
    /// The FAT12/16 root region: `len` bytes at device byte `offset`; it cannot grow.
    Fixed {
        /// Device byte offset of the region.
        offset: u64,
        /// Length of the region in bytes, a multiple of 32.
        len: usize,
    },
    /// A cluster chain (the FAT32 root and every subdirectory), which grows by clusters.
    Chain {
        /// The first cluster of the chain.
        first: u32,
    },
}

impl DirLocation {
    /// The root directory of the volume `bpb` describes: the fixed region, or FAT32's chain.
    pub fn root(bpb: &Bpb) -> Result<DirLocation, FsError> {
        if let Some(first) = bpb.root_cluster() {
            return Ok(DirLocation::Chain { first });
        }
        let bps = u64::from(bpb.bytes_per_sector);
        let sector = bpb.first_root_dir_sector().unwrap_or(0);
        let len = u64::from(bpb.root_dir_sectors()) * bps;
        let len = usize::try_from(len).map_err(|_| FsError::Corrupted("root directory size"))?;
        Ok(DirLocation::Fixed {
            offset: sector * bps,
            len,
        })
    }
}

impl fmt::Display for DirLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DirLocation::Fixed { offset, .. } => write!(f, "root region at byte {offset}"),
            DirLocation::Chain { first } => write!(f, "directory at cluster {first}"),
        }
    }
}

/// One directory: its location, live entries by offset, name index, free space.
#[derive(Debug)]
pub struct Directory {
    loc: DirLocation,
    /// For the device offsets of clusters appended later.
    bpb: Bpb,
    fat32: bool,
    mode: ShortnameMode,
    cluster_size: usize,
    /// The chain, in order; empty for a fixed root.
    clusters: Vec<u32>,
    len: usize,
    /// Offset of the end marker, or `len` when the directory has none.
    end: usize,
    /// Files, directories, `.` and `..` by short-entry offset.
    slots: SlotTable,
    labels: Vec<Slot>,
    index: NameIndex,
    /// Maximal runs of deleted entries before `end`: start offset -> count of entries.
    holes: BTreeMap<usize, usize>,
    /// Live entries that are directories, `.` and `..` left out: what the directory's link
    /// count adds to its own 2.
    subdirs: usize,
}

impl Directory {
    /// Reads the whole directory through `table.store()` and indexes it.
    pub fn load<S: FatStore>(
        table: &FatTable<S>,
        bpb: &Bpb,
        loc: DirLocation,
        mode: ShortnameMode,
    ) -> Result<Directory, FsError> {
        let cluster_size = bpb.bytes_per_cluster() as usize;
        let (clusters, len) = match loc {
            DirLocation::Fixed { len, .. } if len % E != 0 => {
                return Err(FsError::Invalid(
                    "fixed directory not a multiple of 32 bytes",
                ));
            }
            DirLocation::Fixed { len, .. } => (Vec::new(), len),
            DirLocation::Chain { first } => {
                let clusters = table.chain(first)?;
                let len = clusters.len() * cluster_size;
                (clusters, len)
            }
        };
        #[rustfmt::skip]
        let mut dir = Directory {
            loc, bpb: bpb.clone(), fat32: bpb.fat_type() == FatType::Fat32, mode, cluster_size,
            clusters, len, end: len, slots: SlotTable::new(len), labels: Vec::new(),
            index: NameIndex::new(), holes: BTreeMap::new(), subdirs: 0,
        };
        // The one full read; the bytes are dropped once indexed, the cache keeps them.
        let mut bytes = vec![0u8; len];
        dir.read_bytes(table.store(), 0, &mut bytes)?;
        let scan = iterate(&bytes, dir.fat32, mode);
        dir.end = end_offset(&bytes);
        dir.holes = deleted_runs(&bytes[..dir.end]);
        dir.index = NameIndex::build(&scan.entries);
        for slot in &scan.entries {
            dir.slots.insert(slot, mode);
        }
        dir.labels = scan.volume_labels;
        let counted = |r: &&Packed| r.kind == SlotKind::Entry && r.entry.is_dir();
        dir.subdirs = dir.slots.iter().filter(counted).count();
        Ok(dir)
    }

    /// The location (first cluster for a chain).
    pub fn location(&self) -> &DirLocation {
        &self.loc
    }

    /// The live file/dir entry named `name` (long or short, case-insensitive); None if absent.
    pub fn lookup(&self, name: &str) -> Option<Slot> {
        let offset = self.lookup_offset(name)?;
        self.slot_at(offset)
    }

    /// Whether a live file/dir entry is named `name` (as [`Directory::lookup`], without building
    /// the slot).
    pub fn contains(&self, name: &str) -> bool {
        self.lookup_offset(name).is_some()
    }

    /// The offset of the live file/dir entry named `name`.
    fn lookup_offset(&self, name: &str) -> Option<usize> {
        let slots = &self.slots;
        self.index.find(name, |o| {
            slots.get(o).is_some_and(|rec| {
                names_equal(name, &slots.name_of(rec, self.mode))
                    || names_equal(name, &rec.entry.name.to_string())
            })
        })
    }

    /// The live slot whose short entry is at `offset`.
    pub fn slot_at(&self, offset: usize) -> Option<Slot> {
        self.slots
            .get(offset)
            .map(|r| self.slots.slot(r, self.mode))
    }

    /// Files and directories in on-disk order (no `.`, `..`, labels).
    pub fn entries(&self) -> impl Iterator<Item = Slot> + '_ {
        self.entries_from(0)
    }

    /// [`Directory::entries`] whose short entry is at `offset` or later: a listing resumed
    /// where it stopped costs the entries it returns and the positions it passes, not those
    /// before them.
    pub fn entries_from(&self, offset: usize) -> impl Iterator<Item = Slot> + '_ {
        self.slots
            .from(offset)
            .filter(|r| r.kind == SlotKind::Entry)
            .map(|r| self.slots.slot(r, self.mode))
    }

    /// Volume label slots found.
    pub fn labels(&self) -> &[Slot] {
        &self.labels
    }

    /// True when it holds nothing but `.`, `..` (and labels): for rmdir (fat_dir_empty).
    ///
    /// Models: fs/fat/dir.c fat_dir_empty() (v5.10).
    pub fn is_empty(&self) -> bool {
        // Records in no order, but only `.` and `..` are not entries: three looks at most.
        self.slots.iter().all(|r| r.kind != SlotKind::Entry)
    }

    /// How many of its entries are directories (`.` and `..` not counted).
    ///
    /// Models: fs/fat/inode.c fat_subdirs() (v5.10), less the two dot entries, which every
    /// subdirectory has and a root lacks.
    pub fn subdirs(&self) -> usize {
        self.subdirs
    }

    /// Directory size in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Device (volume) byte offset of directory byte `at`.
    pub fn dev_offset(&self, at: usize) -> Result<u64, FsError> {
        if at >= self.len {
            return Err(FsError::Invalid("offset past the end of the directory"));
        }
        match self.loc {
            DirLocation::Fixed { offset, .. } => Ok(offset + at as u64),
            DirLocation::Chain { .. } => {
                let cluster = self.clusters[at / self.cluster_size];
                Ok(cluster_offset(&self.bpb, cluster)? + (at % self.cluster_size) as u64)
            }
        }
    }

    /// Adds `name` with the short entry `template` (attr, times, first cluster, size; its name
    /// field is ignored) and returns the new slot (offset = short entry's offset).
    ///
    /// Models: fs/fat/namei_vfat.c vfat_add_entry() and fs/fat/dir.c fat_add_entries() (v5.10).
    ///
    /// `Exists` if the name (long or short) is taken; name errors from [`build_entries`]. The
    /// run goes in the first hole that fits, else after the end marker, else in clusters
    /// appended to the chain; `NoSpace` for a full fixed root, past [`FAT_MAX_DIR_SIZE`] or on
    /// a full volume, and then nothing on disk or in memory has changed. An I/O error while
    /// the run is written can leave orphan LFN slots, which readers skip.
    pub fn add<S: FatStore>(
        &mut self,
        table: &FatTable<S>,
        name: &str,
        template: &DirEntry,
    ) -> Result<Slot, FsError> {
        if self.contains(name) {
            return Err(FsError::Exists);
        }
        let (index, slots) = (&self.index, &self.slots);
        let exists = |short: &ShortName| {
            let found = index.find_short(short, |o| {
                slots.get(o).is_some_and(|r| r.entry.name == *short)
            });
            found.is_some()
        };
        let run = build_entries(name, self.mode, exists, template, self.fat32)?.concat();
        // Decoded before anything is written, so the slot is what a reload would find.
        let mut slot = self.decode_run(&run)?;
        let count = run.len() / E;
        let at = match self.find_run(count) {
            Some(at) => at,
            None => {
                self.grow(table, count)?;
                self.find_run(count).ok_or_else(|| {
                    log::error!("fat: {}: no free run of {count} after growing", self.loc);
                    FsError::Corrupted("directory free space lost")
                })?
            }
        };
        self.write_run(table.store(), at, &run)?;
        self.note_used(at, count);
        slot.offset += at;
        slot.lfn_offset += at;
        self.index.insert(&slot);
        self.slots.insert(&slot, self.mode);
        if slot.entry.is_dir() {
            self.subdirs += 1;
        }
        Ok(slot)
    }

    /// Removes the entry whose short entry is at `offset`: each 32-byte slot of its span gets
    /// 0xE5 in its first byte, the long-name slots first; index and free-space bookkeeping
    /// follow.
    ///
    /// Models: fs/fat/dir.c fat_remove_entries() (v5.10).
    ///
    /// `NotFound` if no live entry is there, `Invalid` for `.` and `..`. A failure on its LFN
    /// slots is logged, not returned (the kernel does the same), and the short entry is
    /// marked all the same, so the caller goes on to free the clusters; a failure on the
    /// short entry is returned, with the long name put back.
    pub fn remove<S: FatStore>(
        &mut self,
        table: &FatTable<S>,
        offset: usize,
    ) -> Result<Slot, FsError> {
        match self.slots.get(offset).map(|s| s.kind) {
            None => return Err(FsError::NotFound),
            Some(SlotKind::Entry) => {}
            Some(_) => return Err(FsError::Invalid("'.' and '..' cannot be removed")),
        }
        let store = table.store();
        let lfn_slots = self
            .slots
            .get(offset)
            .map_or(0, |r| usize::from(r.lfn_slots));
        let lfn_offset = offset - lfn_slots * E;
        // The long-name slots go first, and land on the disk no later than the short entry's
        // deletion even in another block: a kill in between leaves the entry under its short
        // name, never long-name slots without their entry (which fsck reports as orphans).
        // The kernel marks the short entry first; both are fine in the cache, only the disk
        // order matters. The bytes are read first, which also brings both blocks into the
        // cache, so the short entry's write cannot fail on a read.
        let mut old = vec![0u8; offset + E - lfn_offset];
        self.read_bytes(store, lfn_offset, &mut old)?;
        let mut freed = offset;
        for at in (lfn_offset..offset).step_by(E).rev() {
            if let Err(e) = self.write_bytes(store, at, &[DIR_ENTRY_DELETED]) {
                log::warn!("fat: {}: orphan long-name slots at {at}: {e}", self.loc);
                break;
            }
            freed = at;
        }
        let marked = self
            .order(store, freed..offset, offset..offset + E)
            .and_then(|()| self.write_bytes(store, offset, &[DIR_ENTRY_DELETED]));
        if let Err(e) = marked {
            // Put the long name back (best effort): the entry is still there.
            if let Err(e2) = self.write_bytes(store, lfn_offset, &old[..offset - lfn_offset]) {
                log::error!("fat: {}: cannot restore long-name slots: {e2}", self.loc);
            }
            return Err(e);
        }
        let slot = self
            .slots
            .remove(offset, self.mode)
            .ok_or(FsError::NotFound)?;
        self.index.remove(&slot);
        if slot.entry.is_dir() {
            self.subdirs = self.subdirs.saturating_sub(1);
        }
        self.free_span(freed..offset + E);
        Ok(slot)
    }

    /// Rewrites the short entry at `offset` from `entry` (all fields except the name and NT
    /// case byte, which stay as on disk): sizes, first cluster, attributes, times. The entry
    /// may change kind (a rename exchange puts a directory where a file was).
    ///
    /// `NotFound` if no live entry is there; `Invalid` if `entry` has the volume-label bit.
    pub fn update<S: FatStore>(
        &mut self,
        table: &FatTable<S>,
        offset: usize,
        entry: &DirEntry,
    ) -> Result<(), FsError> {
        if entry.attr & ATTR_VOLUME != 0 {
            return Err(FsError::Invalid("an entry cannot become a volume label"));
        }
        let old = self.slots.get(offset).ok_or(FsError::NotFound)?.entry;
        let mut new = *entry;
        (new.name, new.nt_case) = (old.name, old.nt_case);
        let raw = new.to_bytes(self.fat32);
        self.write_bytes(table.store(), offset, &raw)?;
        let parsed = DirEntry::parse(&raw, self.fat32);
        if let Some(slot) = self.slots.get_mut(offset) {
            let counted = slot.kind == SlotKind::Entry;
            match (old.is_dir(), parsed.is_dir()) {
                (false, true) if counted => self.subdirs += 1,
                (true, false) if counted => self.subdirs = self.subdirs.saturating_sub(1),
                _ => {}
            }
            slot.entry = parsed;
        }
        Ok(())
    }

    /// Points this directory's `..` entry at `parent_cluster` (0 = root), for rename across dirs.
    ///
    /// FAT32's root cluster is written as 0 too, as fatgen103 wants for `..`. `Invalid` for a
    /// root directory, which has no `..`; `Corrupted` for a subdirectory without one.
    pub fn set_dotdot<S: FatStore>(
        &mut self,
        table: &FatTable<S>,
        parent_cluster: u32,
    ) -> Result<(), FsError> {
        let is_root = match self.loc {
            DirLocation::Fixed { .. } => true,
            DirLocation::Chain { first } => Some(first) == self.bpb.root_cluster(),
        };
        if is_root {
            return Err(FsError::Invalid("the root directory has no '..'"));
        }
        // Normally the second entry; the kernel's fat_get_dotdot_entry() also searches.
        let dotdot = self.slots.from(0).find(|s| s.kind == SlotKind::DotDot);
        let Some(slot) = dotdot else {
            log::error!("fat: {}: no '..' entry", self.loc);
            return Err(FsError::Corrupted("directory without '..'"));
        };
        let (offset, mut entry) = (slot.offset as usize, slot.entry);
        entry.first_cluster = parent_for_dotdot(&self.bpb, parent_cluster);
        self.update(table, offset, &entry)
    }

    /// The slot `run` (built entries, LFN slots then short entry) decodes to at offset 0.
    fn decode_run(&self, run: &[u8]) -> Result<Slot, FsError> {
        let slot = iterate(run, self.fat32, self.mode)
            .entries
            .into_iter()
            .next();
        let whole = |s: &Slot| s.kind == SlotKind::Entry && s.lfn_offset == 0;
        // A name that would not read back as itself must not be written.
        slot.filter(|s| whole(s) && s.offset + E == run.len())
            .ok_or(FsError::Invalid("the name would not read back"))
    }

    /// Where the free space ending the directory starts: a hole touching the end marker, or
    /// the marker.
    fn tail_start(&self) -> usize {
        match self.holes.last_key_value() {
            Some((&start, &n)) if start + n * E == self.end => start,
            _ => self.end,
        }
    }

    /// The first offset where `count` free entries fit: a hole, first fit by offset, else the
    /// tail; within the first [`FAT_MAX_DIR_SIZE`] bytes. Linear in the holes only.
    fn find_run(&self, count: usize) -> Option<usize> {
        let limit = self.len.min(FAT_MAX_DIR_SIZE);
        let need = count * E;
        let tail = self.tail_start();
        let fits = |(&start, &n): (&usize, &usize)| n >= count && start + need <= limit;
        let mut holes = self.holes.iter().take_while(|(start, _)| **start < tail);
        match holes.find(|&h| fits(h)) {
            Some((&start, _)) => Some(start),
            None => (tail + need <= limit).then_some(tail),
        }
    }

    /// Appends enough zeroed clusters to the chain for `count` entries after the tail.
    ///
    /// Models: fs/fat/dir.c fat_add_new_entries() and fs/fat/misc.c fat_chain_add() (v5.10).
    fn grow<S: FatStore>(&mut self, table: &FatTable<S>, count: usize) -> Result<(), FsError> {
        let DirLocation::Chain { .. } = self.loc else {
            log::debug!("fat: {}: fixed root full", self.loc);
            return Err(FsError::NoSpace);
        };
        let trailing = (self.len - self.tail_start()) / E;
        // At least one: only a directory already past the limit has room it may not use.
        let n = (count.saturating_sub(trailing) * E)
            .div_ceil(self.cluster_size)
            .max(1);
        check_dir_size(self.len + n * self.cluster_size)?;
        let last = *self
            .clusters
            .last()
            .ok_or(FsError::Corrupted("empty chain"))?;
        let tail = table.get(last)?;
        if tail != FatEntry::Eoc {
            log::error!("fat: {}: last cluster {last} holds {tail:?}", self.loc);
            return Err(FsError::Corrupted("directory chain changed under its lock"));
        }
        let new = table.alloc(u32::try_from(n).map_err(|_| FsError::NoSpace)?, Some(last))?;
        // Zeroed while unlinked: only zeroed clusters ever become directory content.
        let zeroes = vec![0u8; self.cluster_size];
        let zeroed = new.iter().try_for_each(|&c| {
            let at = cluster_offset(&self.bpb, c)?;
            table.store().write(at, &zeroes)
        });
        // The zeros reach the disk before the link does: a crash never leaves a directory
        // chain running into an old cluster's bytes.
        let zeroed = zeroed.and_then(|()| table.store().barrier());
        let linked = zeroed.and_then(|()| table.set(last, FatEntry::Next(new[0])));
        if let Err(e) = linked {
            // A failed mirror write can leave the primary FAT linked; then the clusters stay.
            if table.get(last).ok() == Some(FatEntry::Next(new[0])) {
                self.adopt(&new);
            } else {
                release(table, new[0]);
            }
            return Err(e);
        }
        self.adopt(&new);
        Ok(())
    }

    /// Takes clusters now linked after the last one into the directory.
    fn adopt(&mut self, new: &[u32]) {
        self.clusters.extend_from_slice(new);
        self.len += new.len() * self.cluster_size;
        self.slots.resize(self.len);
    }

    /// Writes a run at `at`, keeping an end marker after it (see `end_marker_after`).
    fn write_run<S: FatStore>(&self, store: &S, at: usize, run: &[u8]) -> Result<(), FsError> {
        let after = at + run.len();
        if after > self.end && after + E <= self.len {
            let mut first = [0u8; 1];
            self.read_bytes(store, after, &mut first)?;
            if first[0] != DIR_ENTRY_FREE {
                // Before the run covers the old marker, or stale entries would turn live; on
                // the disk too.
                self.write_bytes(store, after, &[0u8; E])?;
                self.order(store, after..after + E, at..after)?;
            }
        }
        // The short entry before the long-name slots, on the disk too: a kill in between
        // leaves the entry under its short name (or, past the old end marker, not there at
        // all, its clusters leaked), never long-name slots without their entry, which fsck
        // reports as orphans. The kernel writes the run in one go.
        let short = after - E;
        self.write_bytes(store, short, &run[short - at..])?;
        if short > at {
            let lfn = self
                .order(store, short..after, at..short)
                .and_then(|()| self.write_bytes(store, at, &run[..short - at]));
            if let Err(e) = lfn {
                // The caller keeps nothing of the entry: take the short entry back too.
                if let Err(e2) = self.write_bytes(store, short, &[DIR_ENTRY_DELETED]) {
                    log::error!(
                        "fat: {}: cannot take back a short entry at {short}: {e2}",
                        self.loc
                    );
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// Directory bytes `first`, as written so far, reach the disk no later than the changes
    /// to bytes `then` made next: the store promises it (a metadata write sends the blocks
    /// in that order), or else everything written so far goes to the disk now.
    fn order<S: FatStore>(
        &self,
        store: &S,
        first: Range<usize>,
        then: Range<usize>,
    ) -> Result<(), FsError> {
        let pieces = |r: Range<usize>| {
            let mut out: Vec<Range<u64>> = Vec::new();
            self.each_piece(r.start, r.len(), |dev, p| {
                out.push(dev..dev + p.len() as u64);
                Ok(())
            })
            .map(|()| out)
        };
        let (first, then) = (pieces(first)?, pieces(then)?);
        let promised = first.iter().all(|f| {
            then.iter()
                .all(|t| store.order_writes(f.clone(), t.clone()))
        });
        if promised { Ok(()) } else { store.barrier() }
    }

    /// Bookkeeping for `count` entries now used at `at`, a hole's start or the tail.
    fn note_used(&mut self, at: usize, count: usize) {
        let run_end = at + count * E;
        if let Some(n) = self.holes.remove(&at) {
            let hole_end = at + n * E;
            if hole_end > run_end {
                self.holes.insert(run_end, (hole_end - run_end) / E);
            }
        }
        self.end = self.end.max(run_end);
    }

    /// Bookkeeping for `span` now deleted: one hole, merged with its neighbours.
    fn free_span(&mut self, span: Range<usize>) {
        let (mut start, mut n) = (span.start, span.len() / E);
        if let Some((&s, &c)) = self.holes.range(..start).next_back() {
            if s + c * E == start {
                self.holes.remove(&s);
                (start, n) = (s, n + c);
            }
        }
        if let Some(c) = self.holes.remove(&span.end) {
            n += c;
        }
        self.holes.insert(start, n);
    }

    /// Calls `f` with the device offset and buffer range of each piece of directory bytes
    /// `at..at + len` that is contiguous on the device: one per cluster of a chain.
    fn each_piece(
        &self,
        at: usize,
        len: usize,
        mut f: impl FnMut(u64, Range<usize>) -> Result<(), FsError>,
    ) -> Result<(), FsError> {
        if at.checked_add(len).is_none_or(|end| end > self.len) {
            return Err(FsError::Invalid("access past the end of the directory"));
        }
        let mut done = 0;
        while done < len {
            let pos = at + done;
            let room = match self.loc {
                DirLocation::Fixed { .. } => len - done,
                DirLocation::Chain { .. } => self.cluster_size - pos % self.cluster_size,
            };
            let n = room.min(len - done);
            f(self.dev_offset(pos)?, done..done + n)?;
            done += n;
        }
        Ok(())
    }

    fn read_bytes<S: FatStore>(&self, store: &S, at: usize, buf: &mut [u8]) -> Result<(), FsError> {
        self.each_piece(at, buf.len(), |dev, r| store.read(dev, &mut buf[r]))
    }

    fn write_bytes<S: FatStore>(&self, store: &S, at: usize, buf: &[u8]) -> Result<(), FsError> {
        self.each_piece(at, buf.len(), |dev, r| store.write(dev, &buf[r]))
    }
}

/// The live slots of a directory (files, directories, `.` and `..`), packed: what a [`Slot`]
/// holds, in [`Packed`] records of 44 bytes, with long names in one shared buffer.
///
/// A `BTreeMap<usize, Slot>` cost ~150 bytes per entry (a 72-byte slot and its key in leaves
/// left half full by in-order appends) plus a heap block per name. Here an entry costs its
/// record, 4 bytes in the position table per 32-byte directory position, and the bytes of its
/// long name, if it has one that differs from its short name as shown (the name of an entry
/// without one is rebuilt from the short entry on demand, which is cheap).
///
/// Records sit in `recs` in no order: a removal moves the last record into the hole, so the
/// vector stays dense and every change is O(1) (amortized: growth and shrinking of the
/// vectors, and the compaction of `names`, are geometric). Order comes from `at`, the position
/// table, so a listing walks positions from where it resumes.
#[derive(Debug, Default)]
struct SlotTable {
    recs: Vec<Packed>,
    /// Per 32-byte position of the directory: 1 + the index in `recs` of the slot whose short
    /// entry is there, or 0.
    at: Vec<u32>,
    /// The long names, back to back; removed ones stay as garbage until compacted.
    names: String,
    /// Bytes of `names` no record refers to.
    garbage: usize,
}

/// One live slot, packed (see [`SlotTable`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Packed {
    entry: DirEntry,
    /// Offset of the short entry.
    offset: u32,
    /// Where its name is in [`SlotTable::names`]; `name_len` 0: the short name as shown (no
    /// name shows as nothing, so a long name is never empty).
    name_start: u32,
    name_len: u16,
    /// LFN slots before the short entry (at most [`crate::fat::name::LFN_MAX_SLOTS`]).
    lfn_slots: u8,
    kind: SlotKind,
}

// What the record costs per entry is the point of it: keep it from growing unnoticed.
const _: () = assert!(std::mem::size_of::<Packed>() == 44);

/// Below this many garbage bytes the name buffer is never compacted (not worth a pass).
const MIN_COMPACT: usize = 4096;

/// Reserves room for `extra` more items, growing by a quarter at least: a directory's vectors
/// live as long as it is known, and doubling would leave up to half of them unused.
fn reserve_gently<T>(v: &mut Vec<T>, extra: usize) {
    if v.capacity() - v.len() < extra {
        v.reserve_exact(extra.max(v.capacity() / 4).max(8));
    }
}

/// Gives back the memory of a vector that fell under a quarter used, keeping some room.
fn shrink_gently<T>(v: &mut Vec<T>) {
    if v.capacity() > 64 && v.len() < v.capacity() / 4 {
        v.shrink_to(v.len() * 2);
    }
}

/// A directory offset as stored (a directory is at most 2 MiB, so it fits 32 bits).
fn offset32(offset: usize) -> u32 {
    u32::try_from(offset).expect("a directory offset fits 32 bits (FAT_MAX_DIR_SIZE)")
}

impl SlotTable {
    /// An empty table for a directory of `len` bytes.
    fn new(len: usize) -> SlotTable {
        let mut table = SlotTable::default();
        table.resize(len);
        table
    }

    /// Follows the directory to `len` bytes (it only grows).
    fn resize(&mut self, len: usize) {
        let positions = len / E;
        if positions > self.at.len() {
            let extra = positions - self.at.len();
            reserve_gently(&mut self.at, extra);
            self.at.resize(positions, 0);
        }
    }

    /// The record index of the slot whose short entry is at `offset`.
    fn index_of(&self, offset: usize) -> Option<usize> {
        if offset % E != 0 {
            return None;
        }
        match self.at.get(offset / E) {
            Some(&i) if i != 0 => Some(i as usize - 1),
            _ => None,
        }
    }

    /// The record of the slot whose short entry is at `offset`.
    fn get(&self, offset: usize) -> Option<&Packed> {
        self.index_of(offset).map(|i| &self.recs[i])
    }

    /// The name of `rec`: borrowed from the buffer, or its short name as shown under `mode`.
    fn name_of(&self, rec: &Packed, mode: ShortnameMode) -> Cow<'_, str> {
        if rec.name_len == 0 {
            return Cow::Owned(rec.entry.name.display_name(rec.entry.nt_case, mode));
        }
        let start = rec.name_start as usize;
        Cow::Borrowed(&self.names[start..start + usize::from(rec.name_len)])
    }

    /// The [`Slot`] `rec` stands for.
    fn slot(&self, rec: &Packed, mode: ShortnameMode) -> Slot {
        let offset = rec.offset as usize;
        Slot {
            name: self.name_of(rec, mode).into(),
            entry: rec.entry,
            offset,
            lfn_offset: offset - usize::from(rec.lfn_slots) * E,
            kind: rec.kind,
        }
    }

    /// Enters `slot`, whose short entry position must be free and inside the directory.
    fn insert(&mut self, slot: &Slot, mode: ShortnameMode) {
        let pos = slot.offset / E;
        debug_assert!(slot.offset % E == 0 && self.at[pos] == 0, "position taken");
        let lfn_slots = (slot.offset - slot.lfn_offset) / E;
        let shown = slot.entry.name.display_name(slot.entry.nt_case, mode);
        let (name_start, name_len) = if *slot.name == *shown {
            (0, 0)
        } else {
            let start = offset32(self.names.len());
            let room = self.names.capacity() - self.names.len();
            if room < slot.name.len() {
                // As reserve_gently: the buffer lives as long as the directory is known.
                let more = slot.name.len().max(self.names.capacity() / 4).max(64);
                self.names.reserve_exact(more);
            }
            self.names.push_str(&slot.name);
            let len = u16::try_from(slot.name.len()).expect("a long name is under 64 KiB");
            (start, len)
        };
        reserve_gently(&mut self.recs, 1);
        self.recs.push(Packed {
            entry: slot.entry,
            offset: offset32(slot.offset),
            name_start,
            name_len,
            lfn_slots: u8::try_from(lfn_slots).expect("an LFN chain is at most 20 slots"),
            kind: slot.kind,
        });
        self.at[pos] = u32::try_from(self.recs.len()).expect("at most 65,536 slots per 2 MiB");
    }

    /// Takes out the slot whose short entry is at `offset`.
    fn remove(&mut self, offset: usize, mode: ShortnameMode) -> Option<Slot> {
        let i = self.index_of(offset)?;
        let slot = self.slot(&self.recs[i], mode);
        self.at[offset / E] = 0;
        let rec = self.recs.swap_remove(i);
        if let Some(moved) = self.recs.get(i) {
            self.at[moved.offset as usize / E] = i as u32 + 1;
        }
        shrink_gently(&mut self.recs);
        self.garbage += usize::from(rec.name_len);
        if self.garbage >= MIN_COMPACT && self.garbage * 2 > self.names.len() {
            self.compact();
        }
        Some(slot)
    }

    /// Rewrites the name buffer without its garbage: O(live names), done once the garbage is
    /// half the buffer, so its cost is spread over the removals that made the garbage.
    fn compact(&mut self) {
        let mut names = String::with_capacity(self.names.len() - self.garbage);
        for rec in self.recs.iter_mut().filter(|r| r.name_len != 0) {
            let start = rec.name_start as usize;
            let name = &self.names[start..start + usize::from(rec.name_len)];
            rec.name_start = offset32(names.len());
            names.push_str(name);
        }
        self.names = names;
        self.garbage = 0;
    }

    /// The records whose short entry is at `offset` or later, in offset order.
    fn from(&self, offset: usize) -> impl Iterator<Item = &Packed> + '_ {
        let first = offset.div_ceil(E).min(self.at.len());
        self.at[first..]
            .iter()
            .filter(|&&i| i != 0)
            .map(|&i| &self.recs[i as usize - 1])
    }

    /// Every record, in no particular order.
    fn iter(&self) -> impl Iterator<Item = &Packed> + '_ {
        self.recs.iter()
    }

    /// Heap bytes held (for the memory tests).
    #[cfg(test)]
    fn heap_bytes(&self) -> usize {
        let recs = self.recs.capacity() * std::mem::size_of::<Packed>();
        recs + self.at.capacity() * std::mem::size_of::<u32>() + self.names.capacity()
    }

    /// Panics unless positions, records and name buffer agree (for tests).
    #[cfg(test)]
    fn check(&self) {
        let marked = self.at.iter().filter(|&&i| i != 0).count();
        assert_eq!(marked, self.recs.len(), "one position per record");
        for (i, rec) in self.recs.iter().enumerate() {
            assert_eq!(
                self.at[rec.offset as usize / E] as usize,
                i + 1,
                "position of {i}"
            );
        }
        let named: usize = self.recs.iter().map(|r| usize::from(r.name_len)).sum();
        assert_eq!(named + self.garbage, self.names.len(), "name bytes");
    }

    /// The record at `offset`, to change its entry in place.
    fn get_mut(&mut self, offset: usize) -> Option<&mut Packed> {
        self.index_of(offset).map(|i| &mut self.recs[i])
    }
}

/// The maximal runs of deleted entries in `bytes`: start offset -> count of entries.
fn deleted_runs(bytes: &[u8]) -> BTreeMap<usize, usize> {
    let mut holes = BTreeMap::new();
    let mut run: Option<(usize, usize)> = None;
    for (i, raw) in bytes.chunks_exact(E).enumerate() {
        if raw[0] != DIR_ENTRY_DELETED {
            holes.extend(run.take());
        } else if let Some((_, n)) = &mut run {
            *n += 1;
        } else {
            run = Some((i * E, 1));
        }
    }
    holes.extend(run);
    holes
}

/// What `..` holds for a parent: 0 for the root, FAT32's root cluster included.
fn parent_for_dotdot(bpb: &Bpb, parent_cluster: u32) -> u32 {
    if Some(parent_cluster) == bpb.root_cluster() {
        0
    } else {
        parent_cluster
    }
}

/// Frees the clusters of a failed growth or new directory, best effort: the caller returns
/// the first error.
fn release<S: FatStore>(table: &FatTable<S>, first: u32) {
    if let Err(e) = table.free_chain(first) {
        log::error!("fat: cannot free clusters from {first} after a failed write: {e}");
    }
}

/// fat_alloc_new_dir: allocates one cluster (hint: after `parent_cluster`), zeroes it, writes
/// `.` and `..` (parent 0 when the parent is the root, also on FAT32), returns the cluster.
/// NoSpace when full.
///
/// Models: fs/fat/dir.c fat_alloc_new_dir() (v5.10).
///
/// The cluster is allocated and written before any entry names it: a crash leaks it at worst.
pub fn alloc_new_dir<S: FatStore>(
    table: &FatTable<S>,
    bpb: &Bpb,
    parent_cluster: u32,
    stamp: (u16, u16, u8),
) -> Result<u32, FsError> {
    let hint = (parent_cluster != 0).then_some(parent_cluster);
    let cluster = *table.alloc(1, hint)?.first().ok_or(FsError::NoSpace)?;
    let parent = parent_for_dotdot(bpb, parent_cluster);
    let fat32 = bpb.fat_type() == FatType::Fat32;
    let mut buf = vec![0u8; bpb.bytes_per_cluster() as usize];
    let dots = dot_entries(cluster, parent, stamp, fat32).concat();
    buf[..dots.len()].copy_from_slice(&dots);
    // On the disk before any entry names it (the caller adds the entry after this returns).
    let written = cluster_offset(bpb, cluster)
        .and_then(|at| table.store().write(at, &buf))
        .and_then(|()| table.store().barrier());
    if let Err(e) = written {
        release(table, cluster);
        return Err(e);
    }
    Ok(cluster)
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::fat::dirent::{ATTR_ARCH, ATTR_DIR, ATTR_RO, DOT_NAME, DOTDOT_NAME};
    use crate::fat::name::ShortName;
    use crate::fat::table::MemFat;
    use crate::fat::table::testing::KillStore;
    use crate::fat::time::{dos_date, dos_time};
    use crate::sync::Mutex;
    use ShortnameMode::Mixed;

    const STAMP: (u16, u16, u8) = (dos_date(2021, 1, 5), dos_time(12, 34, 56), 101);
    /// Bytes per cluster of the test volumes: one 512-byte sector.
    const CS: usize = 512;

    /// Test volumes of 512-byte sectors and clusters, 2 FATs: FAT16 has 5000 clusters and a
    /// one-sector (16-entry) root region; FAT32 has 70000 clusters, so cluster numbers pass
    /// 0xFFFF, and its root is cluster 2.
    #[derive(Clone, Copy)]
    enum Kind {
        Fat16,
        Fat32,
    }

    /// A boot sector built at literal offsets, parsed as the mount would.
    fn bpb_for(kind: Kind) -> Bpb {
        let mut s = [0u8; 512];
        let mut put = |off: usize, v: &[u8]| s[off..off + v.len()].copy_from_slice(v);
        put(0, &[0xeb, 0x3c, 0x90, b'T']);
        put(11, &[0, 2, 1, 1, 0, 2]); // 512 bytes/sector, 1 sector/cluster, 1 reserved, 2 FATs
        put(21, &[0xf8]);
        put(510, &[0x55, 0xaa]);
        match kind {
            Kind::Fat16 => {
                let (clusters, spf) = (5000u16, 20u16);
                put(17, &[16]); // 16 root entries: one sector
                put(19, &(2 + 2 * spf + clusters).to_le_bytes());
                put(22, &spf.to_le_bytes());
            }
            Kind::Fat32 => {
                let (clusters, spf) = (70_000u32, 547u32);
                put(14, &[32]);
                put(32, &(32 + 2 * spf + clusters).to_le_bytes());
                put(36, &spf.to_le_bytes());
                put(44, &[2, 0, 0, 0, 1, 0, 6]); // root cluster 2, FSInfo 1, backup boot 6
            }
        }
        Bpb::parse(&s).expect("test boot sector parses")
    }

    /// A whole zeroed volume in memory and its FAT; on FAT32 the root cluster is in use.
    fn volume(kind: Kind) -> (Bpb, FatTable<MemFat>) {
        let _ = env_logger::builder().is_test(true).try_init();
        let bpb = bpb_for(kind);
        let bytes = vec![0; bpb.total_sectors() as usize * 512];
        let table = FatTable::new(&bpb, MemFat::new(bytes), None).expect("table");
        if let Some(root) = bpb.root_cluster() {
            table.set(root, FatEntry::Eoc).expect("root cluster");
        }
        (bpb, table)
    }

    fn file(first_cluster: u32, size: u32) -> DirEntry {
        let mut e = DirEntry::stamped(ATTR_ARCH, STAMP);
        (e.first_cluster, e.size) = (first_cluster, size);
        e
    }

    /// A new subdirectory of the root, loaded.
    fn subdir<S: FatStore>(bpb: &Bpb, table: &FatTable<S>) -> Directory {
        let first = alloc_new_dir(table, bpb, 0, STAMP).expect("new dir");
        Directory::load(table, bpb, DirLocation::Chain { first }, Mixed).expect("load")
    }

    fn add<S: FatStore>(dir: &mut Directory, table: &FatTable<S>, name: &str) -> Slot {
        dir.add(table, name, &file(0, 0)).expect(name)
    }

    /// Every byte of the directory, read through the store.
    fn raw_bytes(dir: &Directory, table: &FatTable<MemFat>) -> Vec<u8> {
        let mut bytes = vec![0; dir.len()];
        dir.read_bytes(table.store(), 0, &mut bytes).expect("read");
        bytes
    }

    /// Every live slot, `.` and `..` included, in offset order.
    fn all_slots(dir: &Directory) -> Vec<Slot> {
        let slots = &dir.slots;
        slots.from(0).map(|r| slots.slot(r, dir.mode)).collect()
    }

    /// A fresh load of the same directory has the same slots and the same bookkeeping.
    fn assert_round_trip<S: FatStore>(dir: &Directory, bpb: &Bpb, table: &FatTable<S>) {
        let again = Directory::load(table, bpb, dir.loc, dir.mode).expect("reload");
        dir.slots.check();
        assert_eq!(all_slots(&again), all_slots(dir), "slots");
        assert_eq!(
            (again.len, again.end),
            (dir.len, dir.end),
            "size and end marker"
        );
        assert_eq!(again.holes, dir.holes, "holes");
        assert_eq!(again.clusters, dir.clusters, "chain");
        assert_eq!(again.subdirs, dir.subdirs, "subdirectory count");
        for slot in dir.entries() {
            assert_eq!(
                again.lookup(&slot.name).as_ref(),
                Some(&slot),
                "{}",
                slot.name
            );
            assert_eq!(
                again.lookup_offset(&slot.entry.name.to_string()),
                Some(slot.offset)
            );
        }
    }

    #[test]
    fn add_finds_short_and_long_names_by_both() {
        let (bpb, table) = volume(Kind::Fat16);
        let mut dir = subdir(&bpb, &table);
        assert!(dir.is_empty());
        let readme = add(&mut dir, &table, "README.TXT");
        assert_eq!(
            (readme.lfn_offset, readme.offset),
            (2 * E, 2 * E),
            "after . and .."
        );
        let long = "Quarterly report, final.ods";
        let q = dir.add(&table, long, &file(7, 1234)).expect("long");
        assert_eq!(
            (q.lfn_offset, q.offset),
            (3 * E, 6 * E),
            "three slots, then the alias"
        );
        assert_eq!(
            (q.entry.name, q.entry.size),
            (ShortName(*b"QUARTE~1ODS"), 1234)
        );
        let upper = long.to_uppercase();
        #[rustfmt::skip]
        let lookups = [
            ("short name, other case", "readme.txt", Some(2)), ("long name", long, Some(6)),
            ("long name, upper case", &upper, Some(6)), ("alias", "quarte~1.ods", Some(6)),
            ("trailing dots", "README.TXT..", Some(2)), ("prefix", "Quarterly", None),
            ("dot is not an entry", ".", None),
        ];
        for (what, name, want) in lookups {
            let got = dir.lookup(name).map(|s| s.offset);
            assert_eq!(got, want.map(|i| i * E), "{what}");
        }
        for taken in ["readme.txt", "QUARTERLY REPORT, FINAL.ODS", "QUARTE~1.ODS"] {
            let e = dir.add(&table, taken, &file(0, 0));
            assert!(matches!(e, Err(FsError::Exists)), "{taken}: {e:?}");
        }
        let e = dir.add(&table, "a*b", &file(0, 0));
        assert!(matches!(e, Err(FsError::Invalid(_))), "{e:?}");
        let e = dir.add(&table, "label", &DirEntry::stamped(ATTR_VOLUME, STAMP));
        assert!(matches!(e, Err(FsError::Invalid(_))), "{e:?}");
        let shown: Vec<String> = dir.entries().map(|s| s.name.into()).collect();
        assert_eq!(shown, ["README.TXT", long]);
        assert!(!dir.is_empty());
        assert_eq!(dir.slot_at(6 * E), Some(q));
        assert_eq!(dir.slot_at(5 * E), None, "an LFN slot is not a slot");
        let scan = iterate(&raw_bytes(&dir, &table), false, Mixed);
        assert_eq!(scan.entries, all_slots(&dir));
        assert_round_trip(&dir, &bpb, &table);
    }

    #[test]
    fn remove_then_add_reuses_the_hole() {
        let (bpb, table) = volume(Kind::Fat16);
        let mut dir = subdir(&bpb, &table);
        let a = add(&mut dir, &table, "A.TXT");
        let b = add(&mut dir, &table, "Second file name.txt");
        let c = add(&mut dir, &table, "C.TXT");
        assert_eq!((a.offset, b.span(), c.offset), (2 * E, 3 * E..6 * E, 6 * E));
        assert_eq!(dir.remove(&table, b.offset).expect("remove"), b);
        let bytes = raw_bytes(&dir, &table);
        let firsts: Vec<u8> = (2..7).map(|i| bytes[i * E]).collect();
        assert_eq!(
            firsts,
            [b'A', 0xE5, 0xE5, 0xE5, b'C'],
            "every slot of the span"
        );
        assert!(dir.lookup("second file name.txt").is_none());
        assert!(
            dir.lookup(&b.entry.name.to_string()).is_none(),
            "alias gone"
        );
        assert_round_trip(&dir, &bpb, &table);
        #[rustfmt::skip]
        let refused = [
            ("removed already", b.offset, "NotFound"), ("not an entry's start", 4 * E, "NotFound"),
            ("dot", 0, "Invalid"), ("past the end", 1 << 20, "NotFound"),
        ];
        for (what, offset, want) in refused {
            let e = dir.remove(&table, offset).expect_err(what);
            assert!(format!("{e:?}").starts_with(want), "{what}: {e:?}");
        }
        let d = add(&mut dir, &table, "D.TXT");
        assert_eq!(d.offset, 3 * E, "first fit: the hole's start");
        let fourth = add(&mut dir, &table, "Fourth.txt");
        assert_eq!(fourth.span(), 4 * E..6 * E, "the rest of the hole");
        let e = add(&mut dir, &table, "E.TXT");
        assert_eq!(e.offset, 7 * E, "no hole left: after C");
        // Removing D then A leaves one hole of two, merged with the hole after A.
        dir.remove(&table, d.offset).expect("remove D");
        dir.remove(&table, a.offset).expect("remove A");
        assert_eq!(dir.holes, BTreeMap::from([(2 * E, 2)]));
        assert_round_trip(&dir, &bpb, &table);
        let merged = add(&mut dir, &table, "Merged.txt");
        assert_eq!(merged.span(), 2 * E..4 * E, "fits the merged hole");
        assert!(dir.holes.is_empty());
        assert_round_trip(&dir, &bpb, &table);
        // Merged then Fourth: the second merges with the hole before it.
        dir.remove(&table, merged.offset).expect("remove merged");
        dir.remove(&table, fourth.offset).expect("remove fourth");
        assert_eq!(dir.holes, BTreeMap::from([(2 * E, 4)]));
        // E was last: its hole touches the end marker, and a longer run starts in it.
        dir.remove(&table, e.offset).expect("remove E");
        let five = "A name long enough to need four slots, sure.txt"; // five: more than the hole
        let tail = add(&mut dir, &table, five);
        assert_eq!(
            tail.span(),
            7 * E..12 * E,
            "from the tail hole past the marker"
        );
        assert_round_trip(&dir, &bpb, &table);
    }

    #[test]
    fn chain_grows_across_clusters_and_reloads_the_same() {
        let (bpb, table) = volume(Kind::Fat16);
        let first = alloc_new_dir(&table, &bpb, 0, STAMP).expect("new dir");
        // A used cluster right after the first, so the chain is not contiguous.
        let blocker = table.alloc(1, Some(first)).expect("blocker")[0];
        assert_eq!(blocker, first + 1);
        let loc = DirLocation::Chain { first };
        // The clusters growth will take, dirty from an earlier life.
        for c in blocker + 1..blocker + 12 {
            let at = cluster_offset(&bpb, c).expect("offset");
            table.store().write(at, &[0xAA; CS]).expect("junk");
        }
        let mut dir = Directory::load(&table, &bpb, loc, Mixed).expect("load");
        let names: Vec<String> = (0..40)
            .map(|i| format!("Growing entry number {i:02}.dat"))
            .collect();
        for name in &names {
            add(&mut dir, &table, name);
        }
        let chain = table.chain(first).expect("chain");
        assert_eq!(
            (chain.len(), dir.len()),
            (11, 11 * CS),
            "2 + 40 * 4 entries, 16 a cluster"
        );
        assert!(
            !chain.contains(&blocker) && chain[1] != first + 1,
            "{chain:?}"
        );
        let second = cluster_offset(&bpb, chain[1]).expect("offset");
        assert_eq!(dir.dev_offset(CS + 5).expect("inside"), second + 5);
        assert!(dir.dev_offset(dir.len()).is_err(), "past the end");
        let crossing = dir.entries().filter(|s| s.lfn_offset / CS != s.offset / CS);
        assert!(crossing.count() > 0, "some run spans two clusters");
        for name in &names {
            assert!(dir.lookup(name).is_some(), "{name}");
        }
        let mut junk = vec![0xAA; CS];
        let at = cluster_offset(&bpb, blocker).expect("offset");
        table.store().read(at, &mut junk).expect("read");
        assert!(
            junk.iter().all(|&b| b == 0),
            "nothing written into the blocker"
        );
        let bytes = raw_bytes(&dir, &table);
        assert!(
            bytes[dir.end..].iter().all(|&b| b == 0),
            "appended clusters were zeroed"
        );
        assert_round_trip(&dir, &bpb, &table);
    }

    #[test]
    fn full_fixed_root_is_nospace_and_changes_nothing() {
        let (bpb, table) = volume(Kind::Fat16);
        let loc = DirLocation::root(&bpb).expect("root");
        assert!(matches!(loc, DirLocation::Fixed { len: CS, .. }), "{loc:?}");
        let mut dir = Directory::load(&table, &bpb, loc, Mixed).expect("load");
        for i in 0..14 {
            add(&mut dir, &table, &format!("F{i:02}.TXT"));
        }
        let last = add(&mut dir, &table, "Long name.txt");
        assert_eq!(last.span(), 14 * E..16 * E);
        let (bytes, free) = (table.store().to_vec(), table.free_count());
        let slots = all_slots(&dir);
        for name in ["ONE.TXT", "Another long one.txt"] {
            let e = dir.add(&table, name, &file(0, 0));
            assert!(matches!(e, Err(FsError::NoSpace)), "{name}: {e:?}");
        }
        assert!(table.store().to_vec() == bytes, "the volume is unchanged");
        assert_eq!(
            (table.free_count(), all_slots(&dir), dir.end),
            (free, slots, dir.len())
        );
        let f03 = dir.lookup("F03.TXT").expect("F03").offset;
        dir.remove(&table, f03).expect("remove");
        let e = dir.add(&table, "Too long for one.txt", &file(0, 0));
        assert!(
            matches!(e, Err(FsError::NoSpace)),
            "a one-entry hole: {e:?}"
        );
        assert_eq!(add(&mut dir, &table, "TWO.TXT").offset, f03);
        assert_round_trip(&dir, &bpb, &table);
    }

    #[test]
    fn chain_past_the_size_limit_is_nospace() {
        let (bpb, table) = volume(Kind::Fat16);
        let clusters = FAT_MAX_DIR_SIZE / CS;
        let chain = table.alloc(clusters as u32, None).expect("chain");
        let mut used = file(0, 0);
        used.name = ShortName(*b"SAME    TXT");
        let mut cluster = used.to_bytes(false).repeat(CS / E);
        for (i, &c) in chain.iter().enumerate() {
            if i + 1 == clusters {
                cluster[CS - E] = DIR_ENTRY_DELETED;
            }
            let at = cluster_offset(&bpb, c).expect("offset");
            table.store().write(at, &cluster).expect("fill");
        }
        let loc = DirLocation::Chain { first: chain[0] };
        let mut dir = Directory::load(&table, &bpb, loc, Mixed).expect("load");
        assert_eq!(
            (dir.len(), dir.entries().count()),
            (FAT_MAX_DIR_SIZE, 65_535)
        );
        let (bytes, free) = (table.store().to_vec(), table.free_count());
        let e = dir.add(&table, "two entries.txt", &file(0, 0));
        assert!(matches!(e, Err(FsError::NoSpace)), "{e:?}");
        assert!(table.store().to_vec() == bytes, "the volume is unchanged");
        assert_eq!((table.free_count(), dir.len()), (free, FAT_MAX_DIR_SIZE));
        let last = add(&mut dir, &table, "LAST.TXT");
        assert_eq!(
            last.offset,
            FAT_MAX_DIR_SIZE - E,
            "the last entry is usable"
        );
        let e = dir.add(&table, "NEXT.TXT", &file(0, 0));
        assert!(matches!(e, Err(FsError::NoSpace)), "{e:?}");
        assert_eq!(table.chain(chain[0]).expect("chain").len(), clusters);
    }

    #[test]
    fn end_marker_kept_when_stale_bytes_follow() {
        let (bpb, table) = volume(Kind::Fat16);
        let loc = DirLocation::root(&bpb).expect("root");
        let DirLocation::Fixed { offset: root, .. } = loc else {
            panic!("FAT16 root is fixed")
        };
        let entry = |name: &[u8; 11]| {
            let mut e = file(0, 0);
            e.name = ShortName(*name);
            e.to_bytes(false)
        };
        // A, end marker, then two stale entries a careless writer left.
        let region = [
            entry(b"A       TXT"),
            [0; E],
            entry(b"GHOST   TXT"),
            entry(b"GHOST2  TXT"),
        ];
        table.store().write(root, &region.concat()).expect("seed");
        let mut dir = Directory::load(&table, &bpb, loc, Mixed).expect("load");
        assert_eq!(
            dir.entries().count(),
            1,
            "stale entries are past the marker"
        );
        assert_eq!(add(&mut dir, &table, "B.TXT").offset, E);
        let bytes = raw_bytes(&dir, &table);
        assert!(
            bytes[2 * E..3 * E].iter().all(|&b| b == 0),
            "new marker, whole entry"
        );
        assert_eq!(&bytes[3 * E..3 * E + 6], b"GHOST2", "only the next entry");
        let shown: Vec<String> = dir.entries().map(|s| s.name.into()).collect();
        assert_eq!(shown, ["A.TXT", "B.TXT"]);
        assert_round_trip(&dir, &bpb, &table);
        let c = add(&mut dir, &table, "Long c.txt");
        assert_eq!(c.span(), 2 * E..4 * E, "over the marker and GHOST2");
        assert_eq!(raw_bytes(&dir, &table)[4 * E], 0, "marker after the run");
        assert_round_trip(&dir, &bpb, &table);
    }

    #[test]
    fn update_keeps_the_name() {
        let (bpb, table) = volume(Kind::Fat16);
        let mut dir = subdir(&bpb, &table);
        let s = dir.add(&table, "Mixed Case.txt", &file(0, 0)).expect("add");
        let mut new = DirEntry::stamped(ATTR_ARCH | ATTR_RO, (dos_date(2022, 2, 2), 0x1234, 7));
        (new.name, new.nt_case) = (ShortName(*b"OTHER   BIN"), 0x18);
        (new.first_cluster, new.size) = (0x0001_0009, 4321);
        dir.update(&table, s.offset, &new).expect("update");
        let mut want = new;
        (want.name, want.nt_case, want.first_cluster) = (s.entry.name, s.entry.nt_case, 9);
        let got = dir.slot_at(s.offset).expect("slot");
        assert_eq!(
            (got.entry, &*got.name),
            (want, "Mixed Case.txt"),
            "FAT16: low word"
        );
        let raw = raw_bytes(&dir, &table);
        let on_disk = <&[u8; 32]>::try_from(&raw[s.offset..s.offset + E]).expect("32");
        assert_eq!(DirEntry::parse(on_disk, false), want);
        assert_round_trip(&dir, &bpb, &table);
        let e = dir.update(&table, s.offset + E, &new);
        assert!(matches!(e, Err(FsError::NotFound)), "{e:?}");
        let e = dir.update(&table, s.offset, &DirEntry::stamped(ATTR_VOLUME, STAMP));
        assert!(matches!(e, Err(FsError::Invalid(_))), "{e:?}");
    }

    #[test]
    fn subdirectory_count_follows_adds_removes_and_kind_changes() {
        let (bpb, table) = volume(Kind::Fat16);
        let mut dir = subdir(&bpb, &table);
        assert_eq!(dir.subdirs(), 0, "the dot entries are not counted");
        let as_dir = |first| {
            let mut e = DirEntry::stamped(ATTR_DIR, STAMP);
            e.first_cluster = first;
            e
        };
        let d1 = dir.add(&table, "first dir", &as_dir(40)).expect("d1");
        dir.add(&table, "SECOND", &as_dir(41)).expect("d2");
        let f = add(&mut dir, &table, "a file.txt");
        assert_eq!(dir.subdirs(), 2);
        assert_round_trip(&dir, &bpb, &table);
        // A kind change in place, either way (what an exchange does).
        dir.update(&table, f.offset, &as_dir(42))
            .expect("file to dir");
        assert_eq!(dir.subdirs(), 3);
        dir.update(&table, d1.offset, &file(7, 10))
            .expect("dir to file");
        assert_eq!(dir.subdirs(), 2);
        dir.update(&table, f.offset, &as_dir(43))
            .expect("dir stays dir");
        assert_eq!(dir.subdirs(), 2);
        assert_round_trip(&dir, &bpb, &table);
        dir.remove(&table, f.offset).expect("remove a dir");
        dir.remove(&table, d1.offset).expect("remove a file");
        assert_eq!(dir.subdirs(), 1);
        // `..` changing cluster is not an entry of this directory's count.
        dir.set_dotdot(&table, 44).expect("..");
        assert_eq!(dir.subdirs(), 1);
        assert_round_trip(&dir, &bpb, &table);
    }

    #[test]
    fn alloc_new_dir_writes_dot_entries_on_a_zeroed_cluster() {
        let (bpb, table) = volume(Kind::Fat16);
        // The first free cluster, dirty from an earlier life.
        let at = cluster_offset(&bpb, 2).expect("offset");
        table.store().write(at, &[0xAA; CS]).expect("junk");
        let free = table.free_count();
        let c = alloc_new_dir(&table, &bpb, 0, STAMP).expect("new dir");
        assert_eq!(
            (c, table.get(c).expect("entry"), table.free_count()),
            (2, FatEntry::Eoc, free - 1)
        );
        let mut raw = vec![0; CS];
        table.store().read(at, &mut raw).expect("read");
        let parse = |i: usize| DirEntry::parse(raw[i * E..][..E].try_into().expect("32"), false);
        let (dot, dotdot) = (parse(0), parse(1));
        assert_eq!(
            (dot.name, dot.first_cluster, dot.attr),
            (DOT_NAME, c, ATTR_DIR)
        );
        assert_eq!((dotdot.name, dotdot.first_cluster), (DOTDOT_NAME, 0));
        assert!(
            raw[2 * E..].iter().all(|&b| b == 0),
            "zeroed: an end marker"
        );
        let mut dir =
            Directory::load(&table, &bpb, DirLocation::Chain { first: c }, Mixed).expect("load");
        let kinds: Vec<_> = all_slots(&dir).iter().map(|s| s.kind).collect();
        assert_eq!(kinds, [SlotKind::Dot, SlotKind::DotDot]);
        assert!(dir.is_empty() && dir.entries().next().is_none());
        let f = add(&mut dir, &table, "F.TXT");
        assert!(!dir.is_empty());
        dir.remove(&table, f.offset).expect("remove");
        assert!(dir.is_empty(), "a deleted entry does not count");
        table
            .alloc(table.free_count(), None)
            .expect("fill the volume");
        let e = alloc_new_dir(&table, &bpb, c, STAMP);
        assert!(matches!(e, Err(FsError::NoSpace)), "{e:?}");
    }

    #[test]
    fn fat32_root_chain_high_cluster_words_and_dotdot() {
        let (bpb, table) = volume(Kind::Fat32);
        let loc = DirLocation::root(&bpb).expect("root");
        assert_eq!(loc, DirLocation::Chain { first: 2 });
        let mut root = Directory::load(&table, &bpb, loc, Mixed).expect("load");
        let big = root
            .add(&table, "big.bin", &file(0x0001_2345, 9))
            .expect("add");
        for i in 0..20 {
            add(&mut root, &table, &format!("Root entry {i}.txt"));
        }
        assert!(root.len() > CS, "the root chain grew");
        let e = root.set_dotdot(&table, 5);
        assert!(
            matches!(e, Err(FsError::Invalid(_))),
            "the root has no '..': {e:?}"
        );
        assert_round_trip(&root, &bpb, &table);
        let again = Directory::load(&table, &bpb, loc, Mixed).expect("reload");
        let found = again.lookup("BIG.BIN").expect("big");
        assert_eq!(
            (found.offset, found.entry.first_cluster),
            (big.offset, 0x0001_2345)
        );

        table.alloc(1, Some(65_599)).expect("a parent above 0xFFFF");
        let sub = alloc_new_dir(&table, &bpb, 65_600, STAMP).expect("new dir");
        assert_eq!(sub, 65_601);
        let mut dir =
            Directory::load(&table, &bpb, DirLocation::Chain { first: sub }, Mixed).expect("load");
        let cluster_of = |dir: &Directory, kind| {
            all_slots(dir)
                .into_iter()
                .find(|s| s.kind == kind)
                .map(|s| s.entry.first_cluster)
        };
        assert_eq!(
            cluster_of(&dir, SlotKind::Dot),
            Some(65_601),
            "high word kept"
        );
        assert_eq!(cluster_of(&dir, SlotKind::DotDot), Some(65_600));
        for (parent, want) in [(70_000, 70_000), (2, 0), (0, 0)] {
            dir.set_dotdot(&table, parent).expect("set_dotdot");
            let again = Directory::load(&table, &bpb, dir.loc, Mixed).expect("reload");
            assert_eq!(
                cluster_of(&again, SlotKind::DotDot),
                Some(want),
                "parent {parent}"
            );
        }
        let child = alloc_new_dir(&table, &bpb, 2, STAMP).expect("child of the root");
        let child = Directory::load(&table, &bpb, DirLocation::Chain { first: child }, Mixed);
        let child = child.expect("load");
        assert_eq!(
            cluster_of(&child, SlotKind::DotDot),
            Some(0),
            "root parent is 0 on FAT32"
        );
    }

    /// Heap bytes of a directory's in-memory state per file in it: slots, name index, chain
    /// and holes (their pairs at their size).
    fn bytes_per_entry(dir: &Directory) -> usize {
        let pair = std::mem::size_of::<(usize, usize)>();
        let bytes = dir.slots.heap_bytes()
            + dir.index.heap_bytes()
            + dir.clusters.capacity() * std::mem::size_of::<u32>()
            + dir.holes.len() * pair;
        bytes / dir.entries().count()
    }

    #[test]
    fn ten_thousand_entries_cost_under_120_bytes_each() {
        // The mount bench's files: "small1.txt" to "small999.txt" fit 8.3 (a lower-case
        // short entry, no name kept), the others take one LFN slot and keep 13 or 14 bytes.
        // A BTreeMap of 72-byte slots, a heap block per name and a third index table cost
        // ~209 bytes an entry here (heaptrack, in the mount).
        let (bpb, table) = volume(Kind::Fat32);
        let mut dir = subdir(&bpb, &table);
        for i in 1..=10_000 {
            add(&mut dir, &table, &format!("small{i}.txt"));
        }
        let (added, loaded) = (bytes_per_entry(&dir), {
            let again = Directory::load(&table, &bpb, dir.loc, Mixed).expect("reload");
            bytes_per_entry(&again)
        });
        assert!(
            added < 120 && loaded < 120,
            "added {added}, loaded {loaded}"
        );
    }

    #[test]
    fn slot_table_stays_packed_through_removals_in_any_order() {
        let (bpb, table) = volume(Kind::Fat32);
        let mut dir = subdir(&bpb, &table);
        // Long names (stored), 8.3 names shown as they are (rebuilt) and lower-case 8.3 names
        // (rebuilt from the case byte), so every kind of record moves about.
        let name = |i: usize| match i % 3 {
            0 => format!("A fairly long name, number {i}.txt"),
            1 => format!("S{i}.TXT"),
            _ => format!("l{i}.txt"),
        };
        let n = 1500;
        let offsets: Vec<usize> = (0..n)
            .map(|i| add(&mut dir, &table, &name(i)).offset)
            .collect();
        dir.slots.check();
        let stored = dir.slots.names.len();
        assert!(stored >= 500 * 30, "long names stored: {stored}");
        // Every third entry from the middle outwards, then the rest in listing order (rm -rf).
        let mut gone = vec![false; n];
        for i in (0..n).step_by(3).rev() {
            let slot = dir.remove(&table, offsets[i]).expect("remove");
            assert_eq!(&*slot.name, name(i), "the removed slot is whole");
            gone[i] = true;
        }
        dir.slots.check();
        assert!(
            dir.slots.garbage < MIN_COMPACT,
            "compacted: {}",
            dir.slots.garbage
        );
        for (i, &g) in gone.iter().enumerate() {
            let found = dir.lookup(&name(i)).map(|s| s.offset);
            assert_eq!(found, (!g).then_some(offsets[i]), "{}", name(i));
        }
        assert_round_trip(&dir, &bpb, &table);
        let listed: Vec<usize> = dir.entries().map(|s| s.offset).collect();
        assert_eq!(listed.len(), n - n.div_ceil(3));
        for offset in listed {
            dir.remove(&table, offset).expect("remove in listing order");
        }
        dir.slots.check();
        assert!(dir.is_empty() && dir.slots.recs.capacity() <= 64);
        assert_eq!(dir.entries_from(E + 1).count(), 0, "resumed past '..'");
        assert_round_trip(&dir, &bpb, &table);
        // The holes take new entries again, long names included.
        for i in 0..30 {
            let slot = add(&mut dir, &table, &name(i));
            assert!(slot.offset < offsets[n - 1], "{}: reuses a hole", slot.name);
        }
        assert_round_trip(&dir, &bpb, &table);
    }

    #[test]
    fn two_thousand_adds_in_one_directory() {
        let (bpb, table) = volume(Kind::Fat16);
        let mut dir = subdir(&bpb, &table);
        let name = |i: usize| match i % 10 {
            0 => format!("Shared prefix {i}.txt"),
            _ => format!("{i:04} unique report.txt"),
        };
        let offsets: Vec<usize> = (0..2000)
            .map(|i| add(&mut dir, &table, &name(i)).offset)
            .collect();
        assert!(offsets.windows(2).all(|w| w[0] < w[1]), "appended in order");
        assert_eq!(dir.entries().count(), 2000);
        for i in (0..2000).step_by(3) {
            let offset = dir.lookup(&name(i).to_uppercase()).expect("found").offset;
            assert_eq!(offset, offsets[i]);
            dir.remove(&table, offset).expect("remove");
        }
        for i in 2000..2100 {
            let slot = add(&mut dir, &table, &name(i));
            assert!(slot.offset < offsets[1999], "{}: reuses a hole", slot.name);
        }
        assert_eq!(dir.entries().count(), 2000 - 667 + 100);
        assert_round_trip(&dir, &bpb, &table);
    }

    /// A volume whose writes fail inside one range of device bytes, for the error paths.
    #[derive(Debug)]
    struct Flaky {
        mem: MemFat,
        fail: Mutex<Range<u64>>,
    }

    impl FatStore for Flaky {
        fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), FsError> {
            self.mem.read(offset, buf)
        }

        fn write(&self, offset: u64, buf: &[u8]) -> Result<(), FsError> {
            let fail = self.fail.lock().clone();
            if offset < fail.end && fail.start < offset + buf.len() as u64 {
                return Err(FsError::Io(std::io::Error::other("injected write failure")));
            }
            self.mem.write(offset, buf)
        }
    }

    /// Every image a kill could have left in `store` so far: no live long-name slot of `dir`
    /// is followed by anything but its live short entry.
    fn assert_no_kill_orphans_a_long_name(dir: &Directory, store: &KillStore, what: &str) {
        let mut images = std::mem::take(&mut *store.seen.lock());
        images.extend(store.kill_images());
        let at = |img: &[u8], pos: usize| {
            let dev = usize::try_from(dir.dev_offset(pos).expect("offset")).expect("small");
            img[dev..dev + E].to_vec()
        };
        for (i, img) in images.iter().enumerate() {
            let mut in_lfn = false;
            for pos in (0..dir.len()).step_by(E) {
                let e = at(img, pos);
                let live = e[0] != DIR_ENTRY_FREE && e[0] != DIR_ENTRY_DELETED;
                let lfn = e[11] == 0x0F;
                if in_lfn && !lfn {
                    assert!(
                        live,
                        "{what}: kill image {i}: long name before {pos} orphaned"
                    );
                }
                in_lfn = live && lfn;
            }
            assert!(
                !in_lfn,
                "{what}: kill image {i}: long name at the end orphaned"
            );
        }
    }

    #[test]
    fn a_kill_never_leaves_long_name_slots_without_their_entry() {
        let _ = env_logger::builder().is_test(true).try_init();
        for promise in [true, false] {
            let bpb = bpb_for(Kind::Fat16);
            let bytes = vec![0; bpb.total_sectors() as usize * 512];
            let table = FatTable::new(&bpb, KillStore::new(bytes, promise), None).expect("t");
            let mut dir = subdir(&bpb, &table);
            for i in 0..4 {
                add(&mut dir, &table, &format!("Name number {i}.txt"));
            }
            let settle = || {
                table.store().barrier().expect("durable");
                table.store().seen.lock().clear();
            };
            settle();
            // Slots 14 and 15 of the first 512-byte cluster for the long name, the short
            // entry in the cluster the directory grows by.
            let slot = add(&mut dir, &table, "Across a block.txt");
            assert_eq!((slot.lfn_offset, slot.offset), (14 * E, 16 * E));
            assert_no_kill_orphans_a_long_name(&dir, table.store(), "add");
            settle();
            dir.remove(&table, slot.offset).expect("remove");
            assert_no_kill_orphans_a_long_name(&dir, table.store(), "remove");
            assert_round_trip(&dir, &bpb, &table);
        }
    }

    #[test]
    fn failed_writes_leave_memory_in_step_with_disk() {
        let _ = env_logger::builder().is_test(true).try_init();
        let bpb = bpb_for(Kind::Fat16);
        let mem = MemFat::new(vec![0; bpb.total_sectors() as usize * 512]);
        let store = Flaky {
            mem,
            fail: Mutex::new(0..0),
        };
        let table = FatTable::new(&bpb, store, None).expect("table");
        let mut dir = subdir(&bpb, &table);
        let first = dir.clusters[0];
        let slots: Vec<Slot> = (0..4)
            .map(|i| add(&mut dir, &table, &format!("Name number {i}.txt")))
            .collect();
        assert_eq!(dir.end, 14 * E, "2 + 4 * 3 entries");
        // Growth takes the cluster after the first; zeroing it fails.
        let grown = cluster_offset(&bpb, first + 1).expect("offset");
        *table.store().fail.lock() = grown..grown + CS as u64;
        let free = table.free_count();
        let e = dir.add(&table, "Needs growth.txt", &file(0, 0));
        assert!(matches!(e, Err(FsError::Io(_))), "{e:?}");
        assert_eq!(
            (table.free_count(), table.get(first + 1).expect("entry")),
            (free, FatEntry::Free)
        );
        assert_eq!(
            (table.chain(first).expect("chain"), dir.len()),
            (vec![first], CS)
        );
        assert_round_trip(&dir, &bpb, &table);
        // The short entry goes, the first LFN slot cannot: an orphan, not free space.
        let victim = &slots[1];
        let lfn = dir.dev_offset(victim.lfn_offset).expect("offset");
        *table.store().fail.lock() = lfn..lfn + 1;
        assert_eq!(dir.remove(&table, victim.offset).expect("gone"), *victim);
        assert!(dir.lookup(&victim.name).is_none());
        assert_eq!(dir.holes, BTreeMap::from([(victim.lfn_offset + E, 2)]));
        assert_round_trip(&dir, &bpb, &table);
        // The short entry cannot be marked: the entry stays, long name and all.
        let kept = &slots[2];
        let short = dir.dev_offset(kept.offset).expect("offset");
        *table.store().fail.lock() = short..short + 1;
        let e = dir.remove(&table, kept.offset);
        assert!(matches!(e, Err(FsError::Io(_))), "{e:?}");
        assert_eq!(dir.lookup(&kept.name).as_ref(), Some(kept));
        assert_round_trip(&dir, &bpb, &table);
        *table.store().fail.lock() = 0..0;
        add(&mut dir, &table, "Needs growth.txt");
        assert_eq!(table.chain(first).expect("chain").len(), 2);
        assert_round_trip(&dir, &bpb, &table);
    }
}
