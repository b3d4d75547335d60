//! The file allocation table: FAT12/16/32 entries, cluster chains, allocation and freeing.
//!
//! Models: fs/fat/fatent.c (v5.10), fatgen103
//!
//! The FAT is reached through [`FatStore`], byte-addressed from the start of the volume, so this
//! module stays pure: tests run it on a [`MemFat`], the mount on the page cache's block-device
//! mapping. Entries 0 (media byte) and 1 (end of chain; on FAT16/32 also the clean-shutdown and
//! no-hard-error bits) are reserved; chains use clusters 2..=`max_cluster`.
//!
//! Locking: one `fat_lock` (a `crate::sync::Mutex`), like the kernel's `sbi->fat_lock`, guards
//! the free count and the next-free hint and is held across every change of the table (`set`,
//! `alloc`, `extend`, `free_chain`, `truncate_chain`, `set_volume_clean_bit`) and `count_free`.
//! That keeps the free count exact and stops two writers losing each other's nibble in a byte
//! two FAT12 entries share. Reads (`get`, `next_in_chain`, `chain`) take no lock: a writer puts
//! back a shared FAT12 byte with the neighbour's nibble unchanged, so a reader sees the old or
//! the new value of its own entry; a read racing a change of the same chain is excluded by the
//! caller (the inode's lock), as in the kernel. The store's locks nest inside `fat_lock`.
//!
//! Deviations from the kernel:
//! * A bad-cluster mark inside a chain is corruption; the kernel reads it as end of chain and
//!   silently cuts the file short.
//! * Allocation prefers one contiguous run (from the hint, wrapping once), else the first free
//!   clusters; the kernel takes the first free ones after its hint.
//! * A chain is checked whole before any of it is freed, so a corrupt one is left for fsck;
//!   the kernel frees up to the bad entry.
//! * With FAT32 mirroring off only the active FAT is read and written, as fatgen103 asks; the
//!   kernel (v5.10) ignores the ext flags and uses FAT 0 and every copy.
//! * An FSInfo free count that passes [`FsInfo::sanitize`] is trusted; the kernel trusts it
//!   only under `-o usefree` and otherwise recounts. Pass `free_count: None` to recount.
//! * The next-free hint is the kernel's `prev_free`, the last cluster allocated (fatgen103 says
//!   the first to try); the search starts after it.
//! * A freed cluster is not handed out again until the FAT change that freed it is on the
//!   disk (see [`Held`]); the kernel reuses it at once and relies on the buffer cache
//!   writing the FAT sectors before a crash can matter.
//! * A link into new clusters lands no earlier than the new clusters' entries, and the
//!   freeing of a cut-off tail no earlier than the kept part's new end, even when they lie
//!   in different blocks ([`FatStore::order_writes`]; a barrier when the store cannot
//!   promise it). A metadata write sends its FAT blocks all at once, so the order of the
//!   changes in the cache alone says nothing about what a kill lands. The kernel orders
//!   them in the cache only.

use std::fmt;
use std::ops::Range;

use crate::error::FsError;
use crate::fat::bpb::{Bpb, FatType, FsInfo};
use crate::sync::Mutex;

/// The first data cluster; FAT entries 0 and 1 are reserved.
pub const FAT_START_ENT: u32 = 2;
/// The bits of a FAT32 entry that count; the top 4 are reserved and kept as found.
pub const FAT32_ENTRY_MASK: u32 = 0x0FFF_FFFF;
/// Entries decoded per store read when scanning: few reads, a small buffer.
const SCAN_CHUNK: u32 = 4096;
/// Entries the first read of a scan covers (then doubling up to [`SCAN_CHUNK`]).
const FIRST_SCAN_CHUNK: u32 = 64;
/// Most barriers one allocation waits for when only held clusters (see [`Held`]) are left:
/// each lets go of every cluster held when it started, so a second is needed only when
/// others freed and took clusters meanwhile.
const MAX_ALLOC_BARRIERS: usize = 4;

/// Byte access to the volume's FAT region(s).
pub trait FatStore: Send + Sync {
    /// Reads `buf.len()` bytes at byte `offset` of the volume.
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), FsError>;
    /// Writes `buf` at byte `offset` of the volume.
    fn write(&self, offset: u64, buf: &[u8]) -> Result<(), FsError>;
    /// Forgets unwritten changes to bytes `[offset, offset + len)`, which have just become file
    /// data: a stale metadata copy must never be written over the file's bytes
    /// (clean_bdev_aliases). Nothing to do for a store without a write-back cache.
    fn clean_aliases(&self, _offset: u64, _len: u64) {}
    /// Puts every change written so far on the disk, in its crash-safe order, before the
    /// caller makes a change that must not land without them: the entries that stop naming
    /// clusters before the FAT says they are free; a change [`FatStore::order_writes`]
    /// could not order. Nothing to do for a store without a write-back cache.
    fn barrier(&self) -> Result<(), FsError> {
        Ok(())
    }
    /// Promises that bytes `first`, as written so far, reach the disk no later than changes
    /// to bytes `then` written after this call; false when the store cannot promise it
    /// (then the caller takes a [`FatStore::barrier`] in between). A store without a
    /// write-back cache lands writes in the order they are made: true.
    fn order_writes(&self, _first: Range<u64>, _then: Range<u64>) -> bool {
        true
    }
    /// How many crash-safe metadata writes have started so far; every change written before
    /// this call is on the disk once [`FatStore::durable_epoch`] exceeds the value. A store
    /// without a write-back cache puts every change on the disk as it is written: 0.
    fn write_epoch(&self) -> u64 {
        0
    }
    /// The number of the latest crash-safe metadata write that finished (see
    /// [`FatStore::write_epoch`]); `u64::MAX` for a store without a write-back cache.
    fn durable_epoch(&self) -> u64 {
        u64::MAX
    }
}

/// The meaning of one FAT entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FatEntry {
    /// The cluster is free (value 0).
    Free,
    /// The next cluster of the chain; not range-checked when decoded.
    Next(u32),
    /// The last cluster of its chain.
    Eoc,
    /// A cluster marked bad, never to be used.
    Bad,
}

/// The entry values of one FAT type (fatgen103): mask, bad-cluster mark, lowest end-of-chain,
/// end-of-chain written, clean-shutdown bit of entry 1 (0: none).
fn width(ty: FatType) -> (u32, u32, u32, u32, u32) {
    #[rustfmt::skip]
    let w = match ty {
        FatType::Fat12 => (0xFFF,            0xFF7,       0xFF8,       0xFFF,       0),
        FatType::Fat16 => (0xFFFF,           0xFFF7,      0xFFF8,      0xFFFF,      0x8000),
        FatType::Fat32 => (FAT32_ENTRY_MASK, 0x0FFF_FFF7, 0x0FFF_FFF8, 0x0FFF_FFFF, 0x0800_0000),
    };
    w
}

impl FatEntry {
    /// Decodes a value read from a FAT of type `ty`; FAT32's top 4 bits are ignored.
    ///
    /// fatgen103's reserved values just below the bad mark decode as `Next`; no volume has
    /// clusters that high, so a chain walk reports them as out of range.
    pub fn from_raw(ty: FatType, raw: u32) -> FatEntry {
        let (mask, bad, eoc_min, ..) = width(ty);
        match raw & mask {
            0 => FatEntry::Free,
            v if v == bad => FatEntry::Bad,
            v if v >= eoc_min => FatEntry::Eoc,
            v => FatEntry::Next(v),
        }
    }

    /// The value written for this entry: the canonical end-of-chain, the bad mark, or `Next`
    /// masked to the width (the caller checks the range first).
    pub fn to_raw(self, ty: FatType) -> u32 {
        let (mask, bad, _, eoc, _) = width(ty);
        match self {
            FatEntry::Free => 0,
            FatEntry::Next(n) => n & mask,
            FatEntry::Eoc => eoc,
            FatEntry::Bad => bad,
        }
    }
}

/// What `fat_lock` protects.
#[derive(Debug)]
struct AllocState {
    /// Free data clusters, exact (held ones included).
    free_count: u32,
    /// The last cluster allocated, where the next search starts after.
    prev_free: Option<u32>,
    /// Clusters freed in the FAT whose freeing may not be on the disk yet.
    held: Held,
}

/// Clusters freed in the cached FAT and not yet handed out again: the change that freed one
/// may still be only in the cache, and a cluster reused before it reaches the disk can end
/// up in two chains after a crash (the old chain, its end never written, still runs into
/// it; the new owner's links, written by a later metadata write, run into it too). A
/// cluster stays held until an ordered metadata write that started after it was freed has
/// finished ([`FatStore::durable_epoch`]), as jbd2 keeps blocks freed in a running
/// transaction from being reused before that transaction commits.
///
/// Runs of clusters, each with the write epoch read after its freeing: in `order` as freed
/// (epochs never decrease), and in `by_start` for the allocator's lookups.
#[derive(Debug, Default)]
struct Held {
    /// (epoch, first cluster, length), oldest first.
    order: std::collections::VecDeque<(u64, u32, u32)>,
    /// First cluster -> length, the same runs.
    by_start: std::collections::BTreeMap<u32, u32>,
    /// Clusters held, over all runs.
    count: u32,
}

impl Held {
    /// Holds cluster `c`, freed before the store's write epoch was `epoch`.
    fn hold(&mut self, c: u32, epoch: u64) {
        if let Some((e, start, len)) = self.order.back_mut()
            && *e == epoch
            && start.checked_add(*len) == Some(c)
        {
            *len += 1;
            *self.by_start.get_mut(start).expect("a run in both views") += 1;
        } else {
            self.order.push_back((epoch, c, 1));
            self.by_start.insert(c, 1);
        }
        self.count += 1;
    }

    /// Lets go of every run whose freeing is on the disk: an ordered write numbered above
    /// its epoch has finished (`durable`).
    fn release_durable(&mut self, durable: u64) {
        while let Some(&(epoch, start, len)) = self.order.front() {
            if durable <= epoch {
                break;
            }
            self.order.pop_front();
            self.by_start.remove(&start);
            self.count -= len;
        }
    }

    /// Whether cluster `c` is held.
    fn contains(&self, c: u32) -> bool {
        self.by_start
            .range(..=c)
            .next_back()
            .is_some_and(|(&start, &len)| c - start < len)
    }
}

impl AllocState {
    /// Follows one entry changing from `old` to `new`.
    fn account(&mut self, old: FatEntry, new: FatEntry) {
        match (old == FatEntry::Free, new == FatEntry::Free) {
            (true, false) => self.free_count = self.free_count.saturating_sub(1),
            (false, true) => self.free_count = self.free_count.saturating_add(1),
            _ => {}
        }
    }
}

/// Logs a corrupt entry with its cluster and value and fails with `what`.
fn corrupt<T>(what: &'static str, cluster: u32, entry: FatEntry) -> Result<T, FsError> {
    log::error!("fat: {what}: cluster {cluster} holds {entry:?}");
    Err(FsError::Corrupted(what))
}

/// The little-endian value of up to 4 bytes.
fn word(bytes: &[u8]) -> u32 {
    let mut w = [0u8; 4];
    w[..bytes.len()].copy_from_slice(bytes);
    u32::from_le_bytes(w)
}

/// The search for `want` free clusters: the current run of free ones, and the first `want`
/// free ones seen, for when no run is long enough.
struct FreeSearch {
    want: usize,
    run_start: u32,
    run_len: usize,
    first: Vec<u32>,
}

impl FreeSearch {
    /// Looks at one entry; true once a run of `want` is complete.
    fn visit(&mut self, c: u32, entry: FatEntry) -> bool {
        if entry != FatEntry::Free {
            self.run_len = 0;
            return false;
        }
        if self.run_len == 0 {
            self.run_start = c;
        }
        self.run_len += 1;
        if self.first.len() < self.want {
            self.first.push(c);
        }
        self.run_len == self.want
    }

    /// The clusters found, or after a full fruitless scan the number of free ones.
    fn result(self) -> Result<Vec<u32>, usize> {
        if self.run_len == self.want {
            Ok((self.run_start..).take(self.want).collect())
        } else if self.first.len() == self.want {
            Ok(self.first)
        } else {
            Err(self.first.len())
        }
    }
}

/// The FAT of one mounted volume.
#[derive(Debug)]
pub struct FatTable<S: FatStore> {
    store: S,
    ty: FatType,
    max_cluster: u32,
    /// Byte offset of the FAT that is read and written first.
    primary: u64,
    /// Byte offsets of the other FATs written, in order; empty with mirroring off.
    mirrors: Vec<u64>,
    /// Free count and hint; serializes every change of the table (see the module doc).
    fat_lock: Mutex<AllocState>,
}

impl<S: FatStore> FatTable<S> {
    /// The table of the volume `bpb` describes, over `store`.
    ///
    /// `fsinfo` hints are checked with [`FsInfo::sanitize`]; without a plausible free count
    /// the whole FAT is scanned to count the free clusters.
    pub fn new(bpb: &Bpb, store: S, fsinfo: Option<FsInfo>) -> Result<Self, FsError> {
        let bps = u64::from(bpb.bytes_per_sector);
        let spf = u64::from(bpb.sectors_per_fat());
        let fat_at = |n: u8| (bpb.first_fat_sector() + u64::from(n) * spf) * bps;
        let (primary, mirrors) = match bpb.active_fat() {
            Some(n) => (fat_at(n), Vec::new()),
            None => (fat_at(0), (1..bpb.num_fats).map(fat_at).collect()),
        };
        let hints = fsinfo.map(|i| i.sanitize(bpb));
        let state = AllocState {
            free_count: 0,
            prev_free: hints.and_then(|h| h.next_free),
            held: Held::default(),
        };
        let table = FatTable {
            store,
            ty: bpb.fat_type(),
            max_cluster: bpb.max_cluster(),
            primary,
            mirrors,
            fat_lock: Mutex::new(state),
        };
        let free = match hints.and_then(|h| h.free_count) {
            Some(n) => n,
            None => table.scan_free()?,
        };
        table.fat_lock.lock().free_count = free;
        Ok(table)
    }

    /// The store under the table.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The highest valid cluster number.
    pub fn max_cluster(&self) -> u32 {
        self.max_cluster
    }

    /// Free data clusters, kept exact by every change made through this table.
    pub fn free_count(&self) -> u32 {
        self.fat_lock.lock().free_count
    }

    /// The last cluster allocated (the kernel's `prev_free`), for FSInfo's next-free field.
    pub fn next_free(&self) -> Option<u32> {
        self.fat_lock.lock().prev_free
    }

    /// Counts the free clusters by scanning the whole FAT, for tests and fsck.
    pub fn count_free(&self) -> Result<u32, FsError> {
        let _guard = self.fat_lock.lock();
        self.scan_free()
    }

    fn is_data(&self, c: u32) -> bool {
        (FAT_START_ENT..=self.max_cluster).contains(&c)
    }

    /// Fails unless `c` is a data cluster, like the kernel's "invalid access to FAT".
    fn check_cluster(&self, c: u32) -> Result<(), FsError> {
        if self.is_data(c) {
            return Ok(());
        }
        let max = self.max_cluster;
        log::error!("fat: invalid access to fat entry {c}: data clusters are 2..={max}");
        Err(FsError::Corrupted("fat entry out of range"))
    }

    fn decode(&self, raw: u32) -> FatEntry {
        FatEntry::from_raw(self.ty, raw)
    }

    /// Offset of entry `c` inside one FAT: FAT12 packs two entries in three bytes.
    fn entry_offset(&self, c: u32) -> u64 {
        let c = u64::from(c);
        match self.ty {
            FatType::Fat12 => c + c / 2,
            FatType::Fat16 => 2 * c,
            FatType::Fat32 => 4 * c,
        }
    }

    /// Bytes read to get one entry: a FAT12 entry lies within two bytes at its offset.
    fn entry_len(&self) -> usize {
        if self.ty == FatType::Fat32 { 4 } else { 2 }
    }

    /// The value of entry `c` in the word read at its offset (FAT32: all 32 bits).
    fn unpack(&self, c: u32, word: u32) -> u32 {
        match self.ty {
            // An even entry owns the low 12 bits of its two bytes, an odd one the high 12.
            FatType::Fat12 if c % 2 == 0 => word & 0x0FFF,
            FatType::Fat12 => (word >> 4) & 0x0FFF,
            FatType::Fat16 => word & 0xFFFF,
            FatType::Fat32 => word,
        }
    }

    /// `word` with entry `c` replaced by `value`, the bits of its neighbour or of the
    /// reserved FAT32 nibble kept as they are.
    fn repack(&self, c: u32, word: u32, value: u32) -> u32 {
        match self.ty {
            FatType::Fat12 if c % 2 == 0 => (word & 0xF000) | (value & 0x0FFF),
            FatType::Fat12 => (word & 0x000F) | ((value & 0x0FFF) << 4),
            FatType::Fat16 => value & 0xFFFF,
            FatType::Fat32 => (word & !FAT32_ENTRY_MASK) | (value & FAT32_ENTRY_MASK),
        }
    }

    /// Entry `c` of the FAT at byte `base`.
    fn read_raw(&self, base: u64, c: u32) -> Result<u32, FsError> {
        let mut buf = [0u8; 4];
        let buf = &mut buf[..self.entry_len()];
        self.store.read(base + self.entry_offset(c), buf)?;
        Ok(self.unpack(c, word(buf)))
    }

    /// Writes entry `c` in every FAT written, following the free count by the primary FAT.
    ///
    /// # Context
    /// `fat_lock` held (`st` is its guarded state).
    fn put_entry(&self, st: &mut AllocState, c: u32, value: u32) -> Result<(), FsError> {
        self.put_entries(st, c, &[value])
    }

    /// Writes `values[i]` into entry `first + i` in every FAT written, following the free
    /// count by the primary FAT, with one read and one write per FAT instead of one of each
    /// per entry per FAT (a 512 KiB write links 128 clusters: 512 trips through the metadata
    /// cache became 4). Several entries must be whole bytes (FAT16, FAT32) and lie in one
    /// store page in every FAT ([`FatTable::one_page_each`]), so each FAT's change lands in
    /// its page under one page lock: writeback copies all of it or none of it, as it copies
    /// one entry. A lone entry may be any (a FAT12 entry may straddle two pages).
    ///
    /// # Context
    /// `fat_lock` held (`st` is its guarded state).
    fn put_entries(&self, st: &mut AllocState, first: u32, values: &[u32]) -> Result<(), FsError> {
        debug_assert!(
            values.len() == 1
                || (self.ty != FatType::Fat12 && self.one_page_each(first, values.len()))
        );
        let len = self.entry_len();
        let mut buf = vec![0u8; values.len() * len];
        let mut old = Vec::with_capacity(values.len());
        let mut write = |base: u64, old: Option<&mut Vec<u32>>| -> Result<(), FsError> {
            let at = base + self.entry_offset(first);
            self.store.read(at, &mut buf)?;
            let mut old = old;
            for ((bytes, &value), c) in buf.chunks_exact_mut(len).zip(values).zip(first..) {
                let was = word(bytes);
                if let Some(old) = old.as_mut() {
                    old.push(self.unpack(c, was));
                }
                bytes.copy_from_slice(&self.repack(c, was, value).to_le_bytes()[..len]);
            }
            self.store.write(at, &buf)
        };
        write(self.primary, Some(&mut old))?;
        let mut freed = Vec::new();
        for ((&was, &value), c) in old.iter().zip(values).zip(first..) {
            if c >= FAT_START_ENT {
                let (was, new) = (self.decode(was), self.decode(value));
                st.account(was, new);
                if was != FatEntry::Free && new == FatEntry::Free {
                    freed.push(c);
                }
            }
        }
        // Keep trying the other copies after a failure: the fewer that differ, the better.
        let mut result = Ok(());
        for &base in &self.mirrors {
            if let Err(e) = write(base, None) {
                log::error!(
                    "fat: cannot mirror entries {first}+{} to the fat at byte {base}: {e}",
                    values.len()
                );
                result = result.and(Err(e));
            }
        }
        if !freed.is_empty() {
            // The epoch is read after every copy is written: each ordered write numbered
            // above it sees them all.
            let epoch = self.store.write_epoch();
            for c in freed {
                st.held.hold(c, epoch);
            }
        }
        result
    }

    /// Whether the `n` entries from `first` lie in one store page in every FAT written.
    fn one_page_each(&self, first: u32, n: usize) -> bool {
        let page = crate::mm::PAGE_SIZE as u64;
        let (start, end) = (
            self.entry_offset(first),
            self.entry_offset(first) + (n * self.entry_len()) as u64,
        );
        std::iter::once(self.primary)
            .chain(self.mirrors.iter().copied())
            .all(|base| (base + start) / page == (base + end - 1) / page)
    }

    /// `clusters` cut into groups [`FatTable::put_group`] writes at once: runs of
    /// neighbouring clusters whose entries lie in one store page in every FAT (on FAT12,
    /// whose entries share bytes, every cluster on its own).
    fn groups(&self, clusters: &[u32]) -> Vec<Range<usize>> {
        let mut out: Vec<Range<usize>> = Vec::new();
        for (i, &c) in clusters.iter().enumerate() {
            match out.last_mut() {
                Some(g)
                    if self.ty != FatType::Fat12
                        && clusters[i - 1].checked_add(1) == Some(c)
                        && self.one_page_each(clusters[g.start], i + 1 - g.start) =>
                {
                    g.end = i + 1;
                }
                _ => out.push(i..i + 1),
            }
        }
        out
    }

    /// Writes `value_of(i)` into entry `clusters[i]` for each `i` in `group`, one of
    /// [`FatTable::groups`].
    ///
    /// # Context
    /// `fat_lock` held (`st` is its guarded state).
    fn put_group(
        &self,
        st: &mut AllocState,
        clusters: &[u32],
        group: Range<usize>,
        value_of: impl Fn(usize) -> u32,
    ) -> Result<(), FsError> {
        let first = clusters[group.start];
        let values: Vec<u32> = group.map(value_of).collect();
        self.put_entries(st, first, &values)
    }

    /// Calls `f` on the entries `from..=to` of the primary FAT, read a chunk at a time;
    /// returns true as soon as `f` does.
    fn scan(
        &self,
        from: u32,
        to: u32,
        f: &mut dyn FnMut(u32, FatEntry) -> bool,
    ) -> Result<bool, FsError> {
        let len = self.entry_len();
        let mut buf = Vec::new();
        let mut first = from;
        // Start small and double: an allocation usually finds a free entry at once (the
        // next-free hint), and reading a whole chunk for it made every 4 KiB of file growth
        // cost a 16 KiB read and memset; a whole-FAT scan still ends in chunks of SCAN_CHUNK.
        let mut chunk = FIRST_SCAN_CHUNK;
        while first <= to {
            let last = to.min(first.saturating_add(chunk - 1));
            chunk = (chunk * 2).min(SCAN_CHUNK);
            let base = self.entry_offset(first);
            let span = self.entry_offset(last) - base + len as u64;
            buf.resize(usize::try_from(span).expect("a chunk is a few KiB"), 0);
            self.store.read(self.primary + base, &mut buf)?;
            for c in first..=last {
                let at = usize::try_from(self.entry_offset(c) - base).expect("inside the chunk");
                if f(c, self.decode(self.unpack(c, word(&buf[at..at + len])))) {
                    return Ok(true);
                }
            }
            // `last` is at most max_cluster, far below u32::MAX.
            first = last + 1;
        }
        Ok(false)
    }

    fn scan_free(&self) -> Result<u32, FsError> {
        let mut n = 0u32;
        self.scan(FAT_START_ENT, self.max_cluster, &mut |_, e| {
            n += u32::from(e == FatEntry::Free);
            false
        })?;
        Ok(n)
    }

    /// Reads the entry of data cluster `cluster`.
    ///
    /// Models: fs/fat/fatent.c fat_ent_read() (v5.10).
    pub fn get(&self, cluster: u32) -> Result<FatEntry, FsError> {
        self.check_cluster(cluster)?;
        Ok(self.decode(self.read_raw(self.primary, cluster)?))
    }

    /// Writes the entry of data cluster `cluster` in every FAT written, keeping the free count.
    ///
    /// Models: fs/fat/fatent.c fat_ent_write() (v5.10).
    pub fn set(&self, cluster: u32, entry: FatEntry) -> Result<(), FsError> {
        self.check_cluster(cluster)?;
        if matches!(entry, FatEntry::Next(n) if !self.is_data(n)) {
            return Err(FsError::Invalid("next cluster out of range"));
        }
        let mut st = self.fat_lock.lock();
        self.put_entry(&mut st, cluster, entry.to_raw(self.ty))
    }

    /// The cluster after `cluster` in its chain, `None` at the end; anything else a chain
    /// cannot hold (free, bad, outside 2..=max_cluster) is logged and `Corrupted`.
    pub fn next_in_chain(&self, cluster: u32) -> Result<Option<u32>, FsError> {
        match self.get(cluster)? {
            FatEntry::Eoc => Ok(None),
            FatEntry::Next(n) if self.is_data(n) => Ok(Some(n)),
            e @ FatEntry::Next(_) => corrupt("cluster chain leaves the data area", cluster, e),
            e @ FatEntry::Free => corrupt("free cluster inside a chain", cluster, e),
            e @ FatEntry::Bad => corrupt("bad cluster inside a chain", cluster, e),
        }
    }

    /// The clusters of the chain from `start`, checked: a loop, an entry outside the data
    /// area, a free or bad entry are logged and `Corrupted`.
    ///
    /// Models: the chain walk of fs/fat/cache.c fat_get_cluster() (v5.10).
    pub fn chain(&self, start: u32) -> Result<Vec<u32>, FsError> {
        self.check_cluster(start)?;
        let limit = usize::try_from(self.max_cluster - 1).unwrap_or(usize::MAX);
        let mut out = vec![start];
        // Brent's cycle detection: `mark` jumps ahead at powers of two, and a walk in a loop
        // meets it again within a lap; constant memory, unlike a set of visited clusters.
        let (mut mark, mut power, mut steps) = (start, 1usize, 0usize);
        let mut cur = start;
        while let Some(next) = self.next_in_chain(cur)? {
            // No loop-free chain is longer than the data area; Brent usually sees it sooner.
            if next == mark || out.len() >= limit {
                return corrupt("cluster chain loops", cur, FatEntry::Next(next));
            }
            steps += 1;
            if steps == power {
                (mark, power, steps) = (next, power * 2, 0);
            }
            out.push(next);
            cur = next;
        }
        Ok(out)
    }

    /// Allocates `count` clusters linked into one chain ending in end-of-chain, preferring
    /// one contiguous run starting after `hint_after` (else after the next-free hint).
    /// `NoSpace` when too few are free, and then nothing is changed.
    ///
    /// Models: fs/fat/fatent.c fat_alloc_clusters() (v5.10).
    pub fn alloc(&self, count: u32, hint_after: Option<u32>) -> Result<Vec<u32>, FsError> {
        if count == 0 {
            return Ok(Vec::new());
        }
        self.with_barriers(&mut |st| self.alloc_locked(st, count, hint_after))
    }

    /// Runs `f` under `fat_lock` until it answers; `None` means only held clusters would do
    /// (see [`Held`]), and then the store's barrier puts their freeing on the disk before
    /// `f` runs again. `NoSpace` if they are still not enough after [`MAX_ALLOC_BARRIERS`]
    /// barriers (others kept freeing and taking clusters meanwhile).
    fn with_barriers<T>(
        &self,
        f: &mut dyn FnMut(&mut AllocState) -> Result<Option<T>, FsError>,
    ) -> Result<T, FsError> {
        for _ in 0..MAX_ALLOC_BARRIERS {
            if let Some(v) = f(&mut self.fat_lock.lock())? {
                return Ok(v);
            }
            // Outside fat_lock: the ordered write waits for I/O, and every allocation and
            // free would wait behind it.
            self.store.barrier()?;
        }
        f(&mut self.fat_lock.lock())?.ok_or(FsError::NoSpace)
    }

    /// The search of [`FatTable::alloc`]; `None` when there are enough free clusters only
    /// counting the held ones.
    fn alloc_locked(
        &self,
        st: &mut AllocState,
        count: u32,
        after: Option<u32>,
    ) -> Result<Option<Vec<u32>>, FsError> {
        st.held.release_durable(self.store.durable_epoch());
        if st.free_count < count {
            return Err(FsError::NoSpace);
        }
        let from = after.filter(|&c| self.is_data(c)).or(st.prev_free);
        let start = match from {
            Some(c) if c < self.max_cluster => c + 1,
            _ => FAT_START_ENT,
        };
        let want = count as usize;
        let first = Vec::with_capacity(want);
        let (run_start, run_len) = (0, 0);
        let mut search = FreeSearch {
            want,
            run_start,
            run_len,
            first,
        };
        let held = &st.held;
        let mut visit = |c: u32, e: FatEntry| {
            // A held cluster is not free yet, as far as allocation goes.
            let e = if e == FatEntry::Free && held.contains(c) {
                FatEntry::Eoc
            } else {
                e
            };
            search.visit(c, e)
        };
        if !self.scan(start, self.max_cluster, &mut visit)? {
            // A run cannot wrap from max_cluster to cluster 2.
            visit(0, FatEntry::Eoc);
            self.scan(FAT_START_ENT, start - 1, &mut visit)?;
        }
        let clusters = match search.result() {
            Ok(clusters) => clusters,
            Err(found) => {
                let held = st.held.count as usize;
                if held > 0 && found + held >= want {
                    return Ok(None);
                }
                let counted = st.free_count;
                let found = found + held;
                log::warn!("fat: free count {counted} was wrong, the fat has {found} free");
                st.free_count = u32::try_from(found).unwrap_or(counted);
                return Err(FsError::NoSpace);
            }
        };
        self.link_new(st, &clusters)?;
        st.prev_free = clusters.last().copied();
        Ok(Some(clusters))
    }

    /// Writes free `clusters` as one chain from its end backwards, so each entry written
    /// points at one already written: a crash can leak clusters, never link into free ones.
    /// Neighbouring entries are written a page at a time ([`FatTable::groups`]), the groups
    /// from the last: a group lands whole, so each entry still points at one written no later
    /// than itself.
    fn link_new(&self, st: &mut AllocState, clusters: &[u32]) -> Result<(), FsError> {
        let eoc = FatEntry::Eoc.to_raw(self.ty);
        let next = |i: usize| clusters.get(i + 1).copied().unwrap_or(eoc);
        for group in self.groups(clusters).into_iter().rev() {
            let start = group.start;
            if let Err(e) = self.put_group(st, clusters, group, next) {
                self.release(st, &clusters[start..]);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Frees the clusters of a failed allocation, best effort: the first error is the one
    /// the caller gets.
    fn release(&self, st: &mut AllocState, clusters: &[u32]) {
        for &c in clusters {
            if let Err(e) = self.put_entry(st, c, 0) {
                log::error!("fat: cannot release cluster {c} after a failed allocation: {e}");
            }
        }
    }

    /// Allocates `count` clusters and links them after `last`, the end of an existing chain;
    /// returns the new clusters. Nothing changes on `NoSpace`.
    ///
    /// The new clusters' entries land on the disk no later than the link to them (see
    /// [`FatTable::order_entries`]): otherwise a kill could leave the file's chain running
    /// into clusters free on the disk. A crash in between leaks the new clusters instead.
    ///
    /// Models: fs/fat/misc.c fat_chain_add() (v5.10), the allocation done first.
    pub fn extend(&self, last: u32, count: u32) -> Result<Vec<u32>, FsError> {
        if count == 0 {
            return Ok(Vec::new());
        }
        let (new, ordered) = self.with_barriers(&mut |st| {
            let tail = self.get(last)?;
            if tail != FatEntry::Eoc {
                return corrupt("extending a chain from its middle", last, tail);
            }
            let Some(new) = self.alloc_locked(st, count, Some(last))? else {
                return Ok(None);
            };
            if !self.order_entries(&new, &[last]) {
                return Ok(Some((new, false)));
            }
            self.link(st, last, &new)?;
            Ok(Some((new, true)))
        })?;
        if !ordered {
            // Outside fat_lock, as in with_barriers. The caller's lock on the chain keeps
            // `last` its end meanwhile; the new clusters are allocated, so nobody takes them.
            if let Err(e) = self.store.barrier() {
                self.release(&mut self.fat_lock.lock(), &new);
                return Err(e);
            }
            self.link(&mut self.fat_lock.lock(), last, &new)?;
        }
        Ok(new)
    }

    /// Points `last`, a chain's end, at `new`, the chain just allocated for it; on failure
    /// the new clusters are freed again unless the primary FAT has the link.
    fn link(&self, st: &mut AllocState, last: u32, new: &[u32]) -> Result<(), FsError> {
        if let Err(e) = self.put_entry(st, last, new[0]) {
            // Only a failed mirror leaves the primary FAT linked; then the clusters are used.
            if self.get(last).ok() != Some(FatEntry::Next(new[0])) {
                self.release(st, new);
            }
            return Err(e);
        }
        Ok(())
    }

    /// Asks the store to land the entries of `first`, as written so far, no later than the
    /// changes to the entries of `then` made next, in every FAT written; false when it
    /// cannot, and then the caller takes a barrier between the two.
    fn order_entries(&self, first: &[u32], then: &[u32]) -> bool {
        let (first, then) = (self.entry_ranges(first), self.entry_ranges(then));
        std::iter::once(self.primary)
            .chain(self.mirrors.iter().copied())
            .all(|base| {
                first.iter().all(|f| {
                    then.iter().all(|t| {
                        self.store.order_writes(
                            base + f.start..base + f.end,
                            base + t.start..base + t.end,
                        )
                    })
                })
            })
    }

    /// The byte ranges, from a FAT's start, of the entries of `clusters`, neighbours merged.
    fn entry_ranges(&self, clusters: &[u32]) -> Vec<Range<u64>> {
        let len = self.entry_len() as u64;
        let mut out: Vec<Range<u64>> = Vec::new();
        for &c in clusters {
            let at = self.entry_offset(c);
            match out.last_mut() {
                Some(r) if (r.start..=r.end).contains(&at) => r.end = r.end.max(at + len),
                _ => out.push(at..at + len),
            }
        }
        out
    }

    /// Frees the whole chain from `start`, checked first; returns how many were freed.
    ///
    /// Models: fs/fat/fatent.c fat_free_clusters() (v5.10).
    pub fn free_chain(&self, start: u32) -> Result<u32, FsError> {
        self.truncate_chain(start, 0)
    }

    /// Keeps the first `keep` clusters of the chain from `start` (none: the whole chain is
    /// freed), ends it there and frees the rest; returns how many were freed.
    ///
    /// Models: fs/fat/file.c fat_free() (v5.10).
    pub fn truncate_chain(&self, start: u32, keep: u32) -> Result<u32, FsError> {
        let mut st = self.fat_lock.lock();
        let chain = self.chain(start)?;
        let keep = keep as usize;
        if keep >= chain.len() {
            return Ok(0);
        }
        let tail = &chain[keep..];
        if let Some(&end) = keep.checked_sub(1).and_then(|i| chain.get(i)) {
            // End the kept part first, so the chain never runs into freed clusters: on the
            // disk too (see FatTable::order_entries).
            self.put_entry(&mut st, end, FatEntry::Eoc.to_raw(self.ty))?;
            if !self.order_entries(&[end], tail) {
                // Outside fat_lock, as in with_barriers; the caller's lock on the chain keeps
                // the tail, now cut off, from changing meanwhile.
                drop(st);
                self.store.barrier()?;
                st = self.fat_lock.lock();
            }
        }
        // From the first, a page of neighbours at a time ([`FatTable::groups`]).
        for group in self.groups(tail) {
            self.put_group(&mut st, tail, group, |_| 0)?;
        }
        Ok(u32::try_from(tail.len()).expect("a chain fits the volume"))
    }

    /// The clean-shutdown bit of entry 1; FAT12 has none. The bit below it, "no hard
    /// error", is left alone.
    fn clean_bit(&self) -> Option<u32> {
        Some(width(self.ty).4).filter(|&bit| bit != 0)
    }

    /// Whether entry 1 says the volume was shut down cleanly; `None` on FAT12.
    ///
    /// The kernel keeps its dirty flag in the boot sector's state byte (see
    /// [`Bpb::dirty`]) and never reads this bit, but fsck.fat and Windows look at it.
    pub fn volume_clean_bit(&self) -> Result<Option<bool>, FsError> {
        let Some(bit) = self.clean_bit() else {
            return Ok(None);
        };
        Ok(Some((self.read_raw(self.primary, 1)? & bit) != 0))
    }

    /// Sets or clears the clean-shutdown bit of entry 1 in every FAT written, keeping its
    /// other bits; does nothing on FAT12, which has no such bit.
    pub fn set_volume_clean_bit(&self, clean: bool) -> Result<(), FsError> {
        let Some(bit) = self.clean_bit() else {
            return Ok(());
        };
        let mut st = self.fat_lock.lock();
        let old = self.read_raw(self.primary, 1)?;
        let new = if clean { old | bit } else { old & !bit };
        self.put_entry(&mut st, 1, new)
    }
}

/// A volume's first bytes (boot sector, FATs) in memory, for tests and tools.
pub struct MemFat {
    bytes: Mutex<Vec<u8>>,
}

impl fmt::Debug for MemFat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemFat").finish_non_exhaustive()
    }
}

impl MemFat {
    /// A store holding `bytes`, byte 0 being byte 0 of the volume.
    pub fn new(bytes: Vec<u8>) -> Self {
        MemFat {
            bytes: Mutex::new(bytes),
        }
    }

    /// A copy of the bytes.
    pub fn to_vec(&self) -> Vec<u8> {
        self.bytes.lock().clone()
    }
}

/// The index range of `len` bytes at `offset` in a buffer of `size`, if inside it.
fn mem_span(offset: u64, len: usize, size: usize) -> Result<Range<usize>, FsError> {
    let start = usize::try_from(offset).ok();
    let range = start.and_then(|s| Some(s..s.checked_add(len)?));
    range
        .filter(|r| r.end <= size)
        .ok_or(FsError::Invalid("access past the end of the in-memory fat"))
}

impl FatStore for MemFat {
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), FsError> {
        let bytes = self.bytes.lock();
        buf.copy_from_slice(&bytes[mem_span(offset, buf.len(), bytes.len())?]);
        Ok(())
    }

    fn write(&self, offset: u64, buf: &[u8]) -> Result<(), FsError> {
        let mut bytes = self.bytes.lock();
        let range = mem_span(offset, buf.len(), bytes.len())?;
        bytes[range].copy_from_slice(buf);
        Ok(())
    }
}

/// Stores for tests of crash ordering.
#[cfg(all(test, not(loom)))]
pub(crate) mod testing {
    use std::ops::Range;

    use super::{FatStore, MemFat};
    use crate::error::FsError;
    use crate::sync::Mutex;

    /// A write-back store as the mount's block-device mapping is across a kill: writes dirty
    /// 512-byte blocks of a cache, and a barrier sends them all at once, so a kill during it
    /// may land any subset of them that keeps the orders promised by `order_writes` (a block
    /// ordered after another never lands without it). Every image a kill could leave is kept
    /// for the test to judge. `promise: false` makes it refuse every order, as a store whose
    /// recorded orders would form a cycle does.
    pub(crate) struct KillStore {
        pub(crate) cache: MemFat,
        pub(crate) disk: Mutex<Vec<u8>>,
        pub(crate) dirty: Mutex<std::collections::BTreeSet<u64>>,
        /// (first, then): block `then` never lands without block `first`.
        pub(crate) orders: Mutex<Vec<(u64, u64)>>,
        pub(crate) promise: bool,
        /// Every image a kill during a barrier so far could have left.
        pub(crate) seen: Mutex<Vec<Vec<u8>>>,
        pub(crate) barriers: Mutex<usize>,
    }

    /// The unit a kill lands whole (the block-device mapping's dirty block).
    pub(crate) const BLOCK: u64 = 512;

    impl KillStore {
        /// A store over `bytes`, on the disk and in the cache alike.
        pub(crate) fn new(bytes: Vec<u8>, promise: bool) -> Self {
            KillStore {
                cache: MemFat::new(bytes.clone()),
                disk: Mutex::new(bytes),
                dirty: Mutex::new(std::collections::BTreeSet::new()),
                orders: Mutex::new(Vec::new()),
                promise,
                seen: Mutex::new(Vec::new()),
                barriers: Mutex::new(0),
            }
        }

        /// The disk with each subset of the dirty blocks that keeps the orders landed from
        /// the cache.
        pub(crate) fn kill_images(&self) -> Vec<Vec<u8>> {
            let cache = self.cache.to_vec();
            let disk = self.disk.lock().clone();
            let dirty: Vec<u64> = self.dirty.lock().iter().copied().collect();
            let orders = self.orders.lock().clone();
            assert!(dirty.len() < 16, "a few blocks per barrier: {dirty:?}");
            let landed = |subset: u32, b: u64| {
                dirty
                    .iter()
                    .position(|&d| d == b)
                    .is_none_or(|i| subset & 1 << i != 0)
            };
            (0..1u32 << dirty.len())
                .filter(|&subset| {
                    orders
                        .iter()
                        .all(|&(first, then)| !landed(subset, then) || landed(subset, first))
                })
                .map(|subset| {
                    let mut img = disk.clone();
                    for (i, &b) in dirty.iter().enumerate() {
                        if subset & 1 << i != 0 {
                            let r = usize::try_from(b * BLOCK).expect("small")
                                ..usize::try_from((b + 1) * BLOCK).expect("small");
                            img[r.clone()].copy_from_slice(&cache[r]);
                        }
                    }
                    img
                })
                .collect()
        }
    }

    impl FatStore for KillStore {
        fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), FsError> {
            self.cache.read(offset, buf)
        }

        fn write(&self, offset: u64, buf: &[u8]) -> Result<(), FsError> {
            self.cache.write(offset, buf)?;
            let end = offset + buf.len() as u64;
            self.dirty
                .lock()
                .extend(offset / BLOCK..end.div_ceil(BLOCK));
            Ok(())
        }

        fn barrier(&self) -> Result<(), FsError> {
            let images = self.kill_images();
            self.seen.lock().extend(images);
            *self.disk.lock() = self.cache.to_vec();
            self.dirty.lock().clear();
            self.orders.lock().clear();
            *self.barriers.lock() += 1;
            Ok(())
        }

        fn order_writes(&self, first: Range<u64>, then: Range<u64>) -> bool {
            let blocks = |r: &Range<u64>| r.start / BLOCK..r.end.div_ceil(BLOCK);
            let pairs: Vec<(u64, u64)> = blocks(&first)
                .flat_map(|a| blocks(&then).filter(move |&b| b != a).map(move |b| (a, b)))
                .collect();
            // A block is always ordered with itself: it is written whole.
            if !self.promise && !pairs.is_empty() {
                return false;
            }
            self.orders.lock().extend(pairs);
            true
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use FatEntry::{Bad, Eoc, Free, Next};
    use FatType::{Fat12, Fat16, Fat32};

    /// Test volumes, 512-byte sectors and clusters, 2 FATs: F12 has 1000 clusters (max 1001,
    /// FAT at sector 1), F16 5000 (max 5001), F32 65525 (max 65526, FAT at sector 32), and
    /// F32Active1 is F32 with mirroring off and FAT 1 active.
    #[derive(Debug, Clone, Copy)]
    enum Kind {
        F12,
        F16,
        F32,
        F32Active1,
    }

    const KINDS: [Kind; 3] = [Kind::F12, Kind::F16, Kind::F32];

    /// A boot sector built at literal offsets, parsed as the mount would.
    fn bpb_for(kind: Kind) -> Bpb {
        let mut s = [0u8; 512];
        let mut put = |off: usize, v: &[u8]| s[off..off + v.len()].copy_from_slice(v);
        put(0, &[0xeb, 0x3c, 0x90, b'T']);
        put(11, &[0, 2, 1, 1, 0, 2]); // 512 bytes/sector, 1 sector/cluster, 1 reserved, 2 FATs
        put(21, &[0xf8]);
        put(510, &[0x55, 0xaa]);
        let (clusters, ext_flags) = match kind {
            Kind::F12 => (1000u32, None),
            Kind::F16 => (5000, None),
            Kind::F32 => (65_525, Some(0u8)),
            Kind::F32Active1 => (65_525, Some(0x81)),
        };
        let bits = [12, 16, 32][usize::from(clusters > 4084) + usize::from(clusters > 65_524)];
        let spf = ((clusters + 2) * bits).div_ceil(8 * 512);
        if let Some(flags) = ext_flags {
            put(14, &[32]);
            put(32, &(32 + 2 * spf + clusters).to_le_bytes());
            put(36, &spf.to_le_bytes());
            put(40, &[flags]);
            put(44, &[2, 0, 0, 0, 1, 0, 6]); // root cluster 2, FSInfo 1, backup boot 6
        } else {
            let total = u16::try_from(2 + 2 * spf + clusters).expect("small volume");
            put(17, &[16]); // root entries: one sector
            put(19, &total.to_le_bytes());
            put(22, &u16::try_from(spf).expect("small FAT").to_le_bytes());
        }
        Bpb::parse(&s).expect("test boot sector parses")
    }

    /// A zeroed boot area and FATs for `bpb`.
    fn zeroed(bpb: &Bpb) -> MemFat {
        let sectors = bpb.first_fat_sector() + 2 * u64::from(bpb.sectors_per_fat());
        MemFat::new(vec![0; usize::try_from(sectors * 512).expect("small")])
    }

    fn table(kind: Kind) -> (Bpb, FatTable<MemFat>) {
        let _ = env_logger::builder().is_test(true).try_init();
        let bpb = bpb_for(kind);
        let t = FatTable::new(&bpb, zeroed(&bpb), None).expect("table");
        (bpb, t)
    }

    /// Byte offset of FAT copy `n`.
    fn fat_at(bpb: &Bpb, n: u64) -> usize {
        let sector = bpb.first_fat_sector() + n * u64::from(bpb.sectors_per_fat());
        usize::try_from(sector * 512).expect("small")
    }

    /// The bytes of FAT copy `n`.
    fn fat_copy(bpb: &Bpb, t: &FatTable<MemFat>, n: u64) -> Vec<u8> {
        let (start, end) = (fat_at(bpb, n), fat_at(bpb, n + 1));
        t.store().to_vec()[start..end].to_vec()
    }

    /// Writes a raw value, bypassing `set`'s checks, as a damaged volume would hold it.
    fn poke(t: &FatTable<MemFat>, c: u32, raw: u32) {
        t.put_entry(&mut t.fat_lock.lock(), c, raw).expect("poke");
    }

    fn assert_exact<S: FatStore>(t: &FatTable<S>, what: &str) {
        assert_eq!(t.free_count(), t.count_free().expect("scan"), "{what}");
    }

    #[rustfmt::skip]
    const CODEC: &[(&str, FatType, u32, FatEntry)] = &[
        ("fat12 free",           Fat12, 0x000, Free),
        ("fat12 next",           Fat12, 0x123, Next(0x123)),
        ("fat12 reserved 0xff6", Fat12, 0xFF6, Next(0xFF6)),
        ("fat12 bad",            Fat12, 0xFF7, Bad),
        ("fat12 eoc threshold",  Fat12, 0xFF8, Eoc),
        ("fat12 eoc",            Fat12, 0xFFF, Eoc),
        ("fat16 next",           Fat16, 0xFFF6, Next(0xFFF6)),
        ("fat16 bad",            Fat16, 0xFFF7, Bad),
        ("fat16 eoc threshold",  Fat16, 0xFFF8, Eoc),
        ("fat32 next",           Fat32, 0x0FFF_FFF6, Next(0x0FFF_FFF6)),
        ("fat32 bad",            Fat32, 0x0FFF_FFF7, Bad),
        ("fat32 eoc threshold",  Fat32, 0x0FFF_FFF8, Eoc),
        ("fat32 top bits: free", Fat32, 0xF000_0000, Free),
        ("fat32 top bits: next", Fat32, 0x1000_0005, Next(5)),
        ("fat32 top bits: bad",  Fat32, 0xAFFF_FFF7, Bad),
        ("fat32 top bits: eoc",  Fat32, 0xFFFF_FFFF, Eoc),
    ];

    #[rustfmt::skip]
    const CANONICAL: &[(FatType, FatEntry, u32)] = &[
        (Fat12, Eoc, 0xFFF), (Fat16, Eoc, 0xFFFF), (Fat32, Eoc, 0x0FFF_FFFF),
        (Fat12, Bad, 0xFF7), (Fat16, Bad, 0xFFF7), (Fat32, Bad, 0x0FFF_FFF7),
        (Fat32, Free, 0), (Fat32, Next(9), 9),
    ];

    #[test]
    fn entries_decode_and_encode() {
        for (name, ty, raw, want) in CODEC {
            assert_eq!(FatEntry::from_raw(*ty, *raw), *want, "{name}");
        }
        for (ty, entry, raw) in CANONICAL {
            assert_eq!(entry.to_raw(*ty), *raw, "{ty:?} {entry:?}");
        }
    }

    /// A byte-layout case: name, volume, bytes seeded at the offset in both FATs, (cluster,
    /// value) writes, offset in the FAT, the bytes expected there.
    #[rustfmt::skip]
    type LayoutCase = (&'static str, Kind, &'static [u8], &'static [(u32, u32)], usize, &'static [u8]);

    #[rustfmt::skip]
    const LAYOUT: &[LayoutCase] = &[
        ("fat12 clusters 2 (even) and 3 (odd)", Kind::F12, &[], &[(2, 0x123), (3, 0x456)], 3,
            &[0x23, 0x61, 0x45]),
        ("fat12 340..342: 341 straddles sectors 0 and 1", Kind::F12, &[],
            &[(340, 0xABC), (341, 0x123), (342, 0x456)], 510, &[0xBC, 0x3A, 0x12, 0x56, 0x04]),
        ("fat12 341 alone keeps 340 and 342", Kind::F12, &[0x11, 0x00, 0x00, 0x22], &[(341, 0xFFF)],
            510, &[0x11, 0xF0, 0xFF, 0x22]),
        ("fat12 342 keeps 341", Kind::F12, &[], &[(341, 0x987), (342, 0xFFF)], 511,
            &[0x70, 0x98, 0xFF, 0x0F]),
        ("fat16 cluster 5", Kind::F16, &[], &[(5, 0xBEEF)], 10, &[0xEF, 0xBE]),
        ("fat32 cluster 5", Kind::F32, &[], &[(5, 0x0123_4567)], 20, &[0x67, 0x45, 0x23, 0x01]),
        ("fat32 next keeps top bits", Kind::F32, &[0, 0, 0, 0xA0], &[(5, 0x0123_4567)], 20,
            &[0x67, 0x45, 0x23, 0xA1]),
        ("fat32 eoc keeps top bits", Kind::F32, &[0, 0, 0, 0xA0], &[(5, 0x0FFF_FFFF)], 20,
            &[0xFF, 0xFF, 0xFF, 0xAF]),
        ("fat32 free keeps top bits", Kind::F32, &[9, 0, 0, 0x50], &[(5, 0)], 20,
            &[0, 0, 0, 0x50]),
    ];

    #[test]
    fn entry_byte_layout() {
        for (name, kind, seed, writes, off, want) in LAYOUT {
            let bpb = bpb_for(*kind);
            let mut bytes = zeroed(&bpb).to_vec();
            for n in 0..2 {
                let at = fat_at(&bpb, n) + off;
                bytes[at..at + seed.len()].copy_from_slice(seed);
            }
            let t = FatTable::new(&bpb, MemFat::new(bytes), None).expect(name);
            for &(c, v) in *writes {
                poke(&t, c, v);
                assert_eq!(t.get(c).expect(name), FatEntry::from_raw(t.ty, v), "{name}");
            }
            for n in 0..2 {
                let fat = fat_copy(&bpb, &t, n);
                assert_eq!(&fat[*off..*off + want.len()], *want, "{name}: FAT {n}");
            }
            assert_exact(&t, name);
        }
    }

    /// What a chain case writes: a cluster number, or a value relative to the volume.
    #[derive(Clone, Copy)]
    enum W {
        To(u32),
        Eoc,
        Free,
        Bad,
        PastEnd,
    }

    /// A chain case: name, entries written, start, the chain or the `Corrupted` reason.
    type ChainCase = (
        &'static str,
        &'static [(u32, W)],
        u32,
        Result<&'static [u32], &'static str>,
    );

    #[rustfmt::skip]
    const CHAINS: &[ChainCase] = &[
        ("one cluster",            &[(5, W::Eoc)], 5, Ok(&[5])),
        ("three clusters",         &[(5, W::To(9)), (9, W::To(6)), (6, W::Eoc)], 5, Ok(&[5, 9, 6])),
        ("loop a -> b -> a",       &[(5, W::To(9)), (9, W::To(5))], 5, Err("cluster chain loops")),
        ("self loop",              &[(7, W::To(7))], 7, Err("cluster chain loops")),
        ("loop behind a tail",     &[(3, W::To(4)), (4, W::To(5)), (5, W::To(6)), (6, W::To(4))],
            3, Err("cluster chain loops")),
        ("next 1: reserved area",  &[(5, W::To(1))], 5, Err("cluster chain leaves the data area")),
        ("next past the volume",   &[(5, W::To(6)), (6, W::PastEnd)], 5,
            Err("cluster chain leaves the data area")),
        ("free entry in a chain",  &[(5, W::To(6)), (6, W::Free)], 5,
            Err("free cluster inside a chain")),
        ("bad entry in a chain",   &[(5, W::To(6)), (6, W::Bad)], 5,
            Err("bad cluster inside a chain")),
        ("start in reserved area", &[], 1, Err("fat entry out of range")),
        ("start free",             &[], 5, Err("free cluster inside a chain")),
    ];

    #[test]
    fn chain_walks_and_corruption() {
        for kind in KINDS {
            for (name, writes, start, want) in CHAINS {
                let (_, t) = table(kind);
                for &(c, w) in *writes {
                    let raw = match w {
                        W::To(n) => n,
                        W::Eoc => Eoc.to_raw(t.ty),
                        W::Free => 0,
                        W::Bad => Bad.to_raw(t.ty),
                        W::PastEnd => t.max_cluster() + 1,
                    };
                    poke(&t, c, raw);
                }
                let before = t.store().to_vec();
                match (t.chain(*start), want) {
                    (Ok(got), Ok(want)) => assert_eq!(got, *want, "{kind:?} {name}"),
                    (Err(FsError::Corrupted(got)), Err(want)) => {
                        assert_eq!(got, *want, "{kind:?} {name}");
                        // A corrupt chain is left alone for fsck.
                        assert!(t.free_chain(*start).is_err(), "{kind:?} {name}: freed");
                        assert!(t.truncate_chain(*start, 1).is_err(), "{kind:?} {name}");
                        assert_eq!(t.store().to_vec(), before, "{kind:?} {name}: changed");
                    }
                    (got, _) => panic!("{kind:?} {name}: got {got:?}, want {want:?}"),
                }
            }
        }
    }

    #[test]
    fn set_and_get_check_their_arguments() {
        let (_, t) = table(Kind::F16);
        let max = t.max_cluster();
        let outside = |r: Result<(), _>| matches!(r, Err(FsError::Corrupted(_)));
        assert!(outside(t.get(0).map(|_| ())));
        assert!(outside(t.get(max + 1).map(|_| ())));
        assert!(outside(t.set(1, Eoc)));
        for next in [0, 1, max + 1] {
            let r = t.set(5, Next(next));
            assert!(matches!(r, Err(FsError::Invalid(_))), "next {next}");
        }
        assert_eq!(t.get(5).expect("get"), Free, "nothing written");
    }

    #[test]
    fn allocation_prefers_a_contiguous_run() {
        let (_, t) = table(Kind::F16);
        let max = t.max_cluster();
        t.set(3, Eoc).expect("set");
        t.set(6, Eoc).expect("set");
        #[rustfmt::skip]
        let steps: &[(&str, u32, Option<u32>, Vec<u32>)] = &[
            ("skips runs of 1 and 2", 3, None, vec![7, 8, 9]),
            ("goes on after the hint", 2, None, vec![10, 11]),
            ("after the caller's hint", 2, Some(100), vec![101, 102]),
            ("wraps once, skipping short runs", 3, Some(max - 2), vec![12, 13, 14]),
            ("single cluster at the end", 1, Some(max - 1), vec![max]),
        ];
        let mut free = t.free_count();
        for (name, count, hint, want) in steps {
            let got = t.alloc(*count, *hint).expect(name);
            assert_eq!(&got, want, "{name}");
            assert_eq!(&t.chain(got[0]).expect(name), want, "{name}: linked");
            free -= count;
            assert_eq!(t.free_count(), free, "{name}");
            assert_eq!(t.next_free(), want.last().copied(), "{name}: hint");
        }
        assert_eq!(t.alloc(0, None).expect("nothing"), Vec::<u32>::new());
        assert_exact(&t, "after allocations");
    }

    #[test]
    fn fragmented_allocation_when_no_run_exists() {
        let (_, t) = table(Kind::F12);
        for c in (2..=1000).step_by(2) {
            t.set(c, Bad).expect("mark even clusters bad");
        }
        assert_eq!(t.alloc(3, None).expect("three single clusters"), [3, 5, 7]);
        assert_eq!(t.chain(3).expect("chain"), [3, 5, 7]);
        assert_eq!(t.alloc(2, Some(999)).expect("wraps"), [1001, 9]);
        assert_eq!(t.chain(1001).expect("chain"), [1001, 9]);
        assert_eq!(t.free_count(), 500 - 5);
        assert_exact(&t, "fragmented");
    }

    #[test]
    fn no_space_changes_nothing() {
        let (bpb, t) = table(Kind::F12);
        let big = t.alloc(998, None).expect("all but two");
        assert_eq!((big[0], big[997], t.free_count()), (2, 999, 2));
        let before = t.store().to_vec();
        assert!(matches!(t.alloc(3, None), Err(FsError::NoSpace)));
        assert!(matches!(t.extend(999, 3), Err(FsError::NoSpace)));
        assert_eq!((t.store().to_vec() == before, t.free_count()), (true, 2));
        // An FSInfo count that is plausible but wrong: the scan finds out, still no change.
        let fsinfo = |free_count, next_free| {
            Some(FsInfo {
                free_count,
                next_free,
            })
        };
        let hint = fsinfo(Some(500), Some(5));
        let lied = FatTable::new(&bpb, MemFat::new(before.clone()), hint).expect("t");
        assert_eq!(lied.free_count(), 500, "trusted at first");
        assert!(matches!(lied.alloc(3, None), Err(FsError::NoSpace)));
        assert!(lied.store().to_vec() == before, "bytes unchanged");
        assert_eq!(lied.free_count(), 2, "corrected by the scan");
        assert_eq!(lied.alloc(2, None).expect("the last two"), [1000, 1001]);
        assert!(matches!(lied.alloc(1, None), Err(FsError::NoSpace)));
        assert_exact(&lied, "full");
        // Impossible hints are dropped: the count is scanned, the search starts at 2.
        let t = FatTable::new(&bpb, zeroed(&bpb), fsinfo(Some(99_999), Some(1))).expect("t");
        assert_eq!((t.free_count(), t.next_free()), (1000, None));
    }

    /// The chain from `start` of the primary FAT in every image a kill could have left in
    /// `store` (barriers so far and the writes since): never a free cluster.
    fn assert_no_kill_reaches_free(bpb: &Bpb, store: &testing::KillStore, start: u32, what: &str) {
        let mut images = std::mem::take(&mut *store.seen.lock());
        images.extend(store.kill_images());
        for (i, img) in images.into_iter().enumerate() {
            let t = FatTable::new(bpb, MemFat::new(img), None).expect("table");
            if let Err(e) = t.chain(start) {
                panic!("{what}: kill image {i}: the chain from {start} is {e:?}");
            }
        }
    }

    #[test]
    fn a_kill_never_leaves_a_chain_running_into_a_free_cluster() {
        let _ = env_logger::builder().is_test(true).try_init();
        for promise in [true, false] {
            // FAT32: 128 entries a block, the entries of clusters 0..=127 in the FAT's first.
            let bpb = bpb_for(Kind::F32);
            let store = testing::KillStore::new(zeroed(&bpb).to_vec(), promise);
            let t = FatTable::new(&bpb, store, None).expect("t");
            assert_eq!(
                t.alloc(126, None).expect("alloc"),
                (2..128).collect::<Vec<_>>()
            );
            let settle = || {
                t.store().barrier().expect("durable");
                t.store().seen.lock().clear();
                *t.store().barriers.lock() = 0;
            };
            settle();
            // The new clusters' entries lie in the next block, the link in the first.
            assert_eq!(t.extend(127, 2).expect("extend"), [128, 129]);
            assert_no_kill_reaches_free(&bpb, t.store(), 2, "extend across blocks");
            assert_eq!(*t.store().barriers.lock(), usize::from(!promise));
            settle();
            // The new end in the first block, the freed entries in the next.
            assert_eq!(t.truncate_chain(2, 126).expect("truncate"), 2);
            assert_no_kill_reaches_free(&bpb, t.store(), 2, "truncate across blocks");
            assert_eq!(t.chain(2).expect("chain"), (2..128).collect::<Vec<_>>());
            assert_eq!(*t.store().barriers.lock(), usize::from(!promise));
            settle();
            // Within one block the write is whole: nothing to order, no barrier.
            assert_eq!(t.truncate_chain(2, 100).expect("truncate"), 26);
            assert_eq!(t.extend(101, 3).expect("extend"), [102, 103, 104]);
            assert_no_kill_reaches_free(&bpb, t.store(), 2, "inside a block");
            assert_eq!(*t.store().barriers.lock(), 0, "promise: {promise}");
        }
    }

    #[test]
    fn entry_ranges_merge_neighbours_only() {
        let (_, t) = table(Kind::F32);
        assert_eq!(t.entry_ranges(&[5, 6, 7, 3, 9]), [20..32, 12..16, 36..40]);
        let (_, t) = table(Kind::F12);
        // FAT12 entries overlap by a byte: 4 at 6..8, 5 at 7..9.
        assert_eq!(t.entry_ranges(&[4, 5, 2]), [6..9, 3..5]);
    }

    #[test]
    fn extend_and_truncate_chain() {
        let (_, t) = table(Kind::F16);
        assert_eq!(t.alloc(2, None).expect("alloc"), [2, 3]);
        t.set(4, Bad).expect("a bad cluster in the way");
        assert_eq!(t.extend(3, 3).expect("extend"), [5, 6, 7]);
        assert_eq!(t.chain(2).expect("chain"), [2, 3, 5, 6, 7]);
        let middle = t.extend(3, 1);
        assert!(
            matches!(middle, Err(FsError::Corrupted(_))),
            "3 is not the end"
        );
        assert_eq!(t.extend(7, 0).expect("nothing"), Vec::<u32>::new());
        #[rustfmt::skip]
        let steps: &[(&str, u32, u32, &[u32])] = &[
            ("keep more than there is", 9, 0, &[2, 3, 5, 6, 7]),
            ("keep all",                5, 0, &[2, 3, 5, 6, 7]),
            ("keep two",                2, 3, &[2, 3]),
            ("keep one",                1, 1, &[2]),
        ];
        for (name, keep, freed, want) in steps {
            assert_eq!(t.truncate_chain(2, *keep).expect(name), *freed, "{name}");
            assert_eq!(t.chain(2).expect(name), *want, "{name}");
            assert_exact(&t, name);
        }
        assert_eq!(t.get(3).expect("get"), Free);
        assert_eq!(t.truncate_chain(2, 0).expect("keep none"), 1);
        assert_eq!(t.get(2).expect("get"), Free);
        let other = t.alloc(4, None).expect("alloc");
        assert_eq!(t.free_chain(other[0]).expect("free"), 4);
        assert_eq!(t.free_count(), 5000 - 1, "only the bad cluster is used");
        assert_exact(&t, "freed");
    }

    /// A small deterministic generator for the mixed workloads.
    fn lcg(state: &mut u64) -> u32 {
        *state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1);
        (*state >> 33) as u32
    }

    #[test]
    fn free_count_stays_exact_under_mixed_work() {
        for kind in KINDS {
            let (_, t) = table(kind);
            let total = t.free_count() as usize;
            let (mut chains, mut rng) = (Vec::new(), 7u64);
            for step in 0..60 {
                let what = format!("{kind:?} step {step}");
                let n = lcg(&mut rng) % 5 + 1;
                let pick = lcg(&mut rng) as usize;
                match (pick % 4, chains.len()) {
                    (0 | 1, _) | (_, 0) => chains.push(t.alloc(n, None).expect(&what)[0]),
                    (2, len) => {
                        let chain = t.chain(chains[pick % len]).expect(&what);
                        t.extend(*chain.last().expect("non-empty"), n).expect(&what);
                    }
                    (_, len) => {
                        let start = chains.swap_remove(pick % len);
                        t.truncate_chain(start, n % 3).expect(&what);
                        if n % 3 != 0 {
                            chains.push(start);
                        }
                    }
                }
                assert_exact(&t, &what);
                let used: usize = chains.iter().map(|&c| t.chain(c).expect(&what).len()).sum();
                assert_eq!(t.free_count() as usize, total - used, "{what}");
            }
        }
    }

    /// A [`MemFat`] that counts the writes made to it.
    struct Counting(MemFat, std::sync::atomic::AtomicUsize);

    impl FatStore for Counting {
        fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), FsError> {
            self.0.read(offset, buf)
        }

        fn write(&self, offset: u64, buf: &[u8]) -> Result<(), FsError> {
            self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.0.write(offset, buf)
        }
    }

    #[test]
    fn groups_are_neighbours_in_one_page_of_every_fat() {
        let (bpb, t) = table(Kind::F16);
        // FAT16 entries are two bytes; the first FAT starts at byte 512, the second at
        // 10,752 (2,560 into a page): the copies' pages break at entries 1,792 and 768.
        assert_eq!((fat_at(&bpb, 0), fat_at(&bpb, 1)), (512, 10_752));
        let run: Vec<u32> = (700..800).collect();
        assert_eq!(t.groups(&run), [0..68, 68..100], "the second FAT's break");
        let run: Vec<u32> = (1780..1800).collect();
        assert_eq!(t.groups(&run), [0..12, 12..20], "the first FAT's break");
        assert_eq!(
            t.groups(&[5, 6, 7, 9, 10, 4]),
            [0..3, 3..5, 5..6],
            "neighbours only"
        );
        // FAT12 entries share bytes: each is written on its own.
        let (_, t) = table(Kind::F12);
        assert_eq!(t.groups(&[5, 6, 7]), [0..1, 1..2, 2..3]);
    }

    #[test]
    fn linking_and_freeing_write_a_page_of_entries_at_once() {
        let _ = env_logger::builder().is_test(true).try_init();
        let bpb = bpb_for(Kind::F16);
        let store = Counting(zeroed(&bpb), std::sync::atomic::AtomicUsize::new(0));
        let t = FatTable::new(&bpb, store, None).expect("table");
        let writes = || t.store().1.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(t.alloc(1, None).expect("alloc"), [2]);
        let before = writes();
        let new = t.extend(2, 4000).expect("extend");
        assert_eq!(new, (3..4003).collect::<Vec<_>>());
        assert_eq!(t.chain(2).expect("chain"), (2..4003).collect::<Vec<_>>());
        // 8,000 bytes of entries: three pages of each FAT, broken at different entries in
        // the two, so at most five groups, a write in each FAT for each, and the link. One
        // entry at a time it was 8,002.
        let linked = writes() - before;
        assert!(linked <= 2 * 5 + 2, "{linked} writes");
        assert_exact(&t, "after linking");
        let before = writes();
        assert_eq!(t.truncate_chain(2, 1).expect("truncate"), 4000);
        let freed = writes() - before;
        assert!(freed <= 2 * 5 + 2, "{freed} writes");
        assert_eq!(t.chain(2).expect("chain"), [2]);
        assert_exact(&t, "after freeing");
        let bytes = t.store().0.to_vec();
        let copy = |n| bytes[fat_at(&bpb, n)..fat_at(&bpb, n + 1)].to_vec();
        assert_eq!(copy(0), copy(1), "the copies agree");
    }

    #[test]
    fn mirroring_keeps_copies_identical() {
        let (bpb, t) = table(Kind::F16);
        let a = t.alloc(7, None).expect("alloc");
        t.extend(a[6], 3).expect("extend");
        t.truncate_chain(a[0], 4).expect("truncate");
        t.set(4000, Bad).expect("set");
        t.set_volume_clean_bit(true).expect("clean");
        let (fat0, fat1) = (fat_copy(&bpb, &t, 0), fat_copy(&bpb, &t, 1));
        assert!(fat0.iter().any(|&b| b != 0), "something was written");
        assert_eq!(fat0, fat1);
    }

    #[test]
    fn mirroring_off_writes_only_the_active_fat() {
        let (bpb, t) = table(Kind::F32Active1);
        let a = t.alloc(5, None).expect("alloc");
        t.truncate_chain(a[0], 2).expect("truncate");
        t.set_volume_clean_bit(true).expect("clean");
        assert!(
            fat_copy(&bpb, &t, 0).iter().all(|&b| b == 0),
            "FAT 0 untouched"
        );
        assert!(
            fat_copy(&bpb, &t, 1).iter().any(|&b| b != 0),
            "FAT 1 written"
        );
        // Reads come from the active FAT too: garbage in FAT 0 changes nothing.
        let entry2 = (fat_at(&bpb, 0) + 8) as u64;
        t.store().write(entry2, &[0xFF; 16]).expect("scribble");
        assert_eq!(t.chain(a[0]).expect("chain"), &a[..2]);
        assert_exact(&t, "mirroring off");
    }

    /// A clean-bit case: volume, entries 0 and 1 before, after clearing, `volume_clean_bit`.
    type CleanCase = (Kind, &'static [u8], &'static [u8], Option<bool>);

    #[rustfmt::skip]
    const CLEAN: &[CleanCase] = &[
        (Kind::F12, &[0xF8, 0xFF, 0xFF], &[0xF8, 0xFF, 0xFF], None),
        (Kind::F16, &[0xF8, 0xFF, 0xFF, 0xFF], &[0xF8, 0xFF, 0xFF, 0x7F], Some(true)),
        (Kind::F32, &[0xF8, 0xFF, 0xFF, 0x0F, 0xFF, 0xFF, 0xFF, 0xFF],
            &[0xF8, 0xFF, 0xFF, 0x0F, 0xFF, 0xFF, 0xFF, 0xF7], Some(true)),
    ];

    #[test]
    fn volume_clean_bit_lives_in_entry_1() {
        for (kind, before, cleared, clean) in CLEAN {
            let (bpb, t) = table(*kind);
            for n in 0..2 {
                t.store()
                    .write(fat_at(&bpb, n) as u64, before)
                    .expect("seed entries 0, 1");
            }
            assert_eq!(t.volume_clean_bit().expect("read"), *clean, "{kind:?}");
            t.set_volume_clean_bit(false).expect("clear");
            for n in 0..2 {
                assert_eq!(
                    &fat_copy(&bpb, &t, n)[..before.len()],
                    *cleared,
                    "{kind:?} {n}"
                );
            }
            assert_eq!(t.volume_clean_bit().expect("read"), clean.map(|_| false));
            t.set_volume_clean_bit(true).expect("set");
            assert_eq!(&fat_copy(&bpb, &t, 1)[..before.len()], *before, "{kind:?}");
            assert_exact(&t, "entry 1 is not a data cluster");
        }
    }

    #[test]
    fn concurrent_alloc_and_free_keep_the_count() {
        let (_, t) = table(Kind::F16);
        let work = |seed: u64| {
            let (mut rng, mut kept) = (seed, Vec::new());
            for _ in 0..40 {
                let c = t.alloc(lcg(&mut rng) % 4 + 1, None).expect("alloc");
                if lcg(&mut rng) % 2 == 0 {
                    t.free_chain(c[0]).expect("free");
                } else {
                    kept.push(c[0]);
                }
            }
            kept
        };
        let kept: Vec<u32> = crate::sync::thread::scope(|s| {
            let workers: Vec<_> = (1..=4).map(|seed| s.spawn(move || work(seed))).collect();
            workers
                .into_iter()
                .flat_map(|w| w.join().expect("worker"))
                .collect()
        });
        let mut all: Vec<u32> = kept
            .iter()
            .flat_map(|&c| t.chain(c).expect("chain"))
            .collect();
        let used = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), used, "no cluster in two chains");
        assert_eq!(t.free_count() as usize, 5000 - used);
        assert_exact(&t, "after the threads");
    }
}
