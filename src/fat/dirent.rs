//! Directory entries on disk: the 32-byte short entry, walking a directory's bytes into named
//! entries, the search for free slots, the raw entries of a new name, `.` and `..`, and an
//! in-memory name index. Pure byte formats: no page cache, no device, no locks; the caller
//! reads a directory's clusters into one buffer and writes back what these functions return.
//!
//! Models: fs/fat/dir.c (v5.10), fatgen103
//!
//! The short entry layout is fatgen103's; [`DirEntry`] lists its fields in on-disk order, with
//! the first cluster split into a high word (bytes 20..22, FAT32 only) and a low word (26..28).
//!
//! Deviation: a directory ends at its first entry whose first byte is 0x00, as fatgen103 says
//! and DOS and Windows read it; v5.10 skips such an entry alone and reads on. Stale bytes past
//! the marker therefore never surface as files here, and writers keep a marker after new
//! entries (see [`end_marker_after`]).
//! Deviation: all 65,536 entries of a full-size directory are usable. The kernel's free search
//! tests the position past the entry against `FAT_MAX_DIR_SIZE` and so never hands out the
//! last one, although growing the directory can fill it.

use std::collections::BTreeSet;
use std::hash::Hasher;
use std::ops::Range;

use hashbrown::HashTable;

use crate::error::FsError;
use crate::fat::name::{
    ATTR_LONG_NAME, DIR_ENTRY_DELETED, DIR_ENTRY_FREE, DIR_ENTRY_SIZE, LFN_LAST_SLOT,
    LFN_MAX_SLOTS, LfnAssembler, NameForm, SHORT_NAME_LEN, ShortName, ShortnameMode, folded_chars,
    lfn_slots, names_equal, vfat_create_shortname, vfat_valid_longname,
};

/// Attribute: read-only.
pub const ATTR_RO: u8 = 0x01;
/// Attribute: hidden from plain listings.
pub const ATTR_HIDDEN: u8 = 0x02;
/// Attribute: system file.
pub const ATTR_SYS: u8 = 0x04;
/// Attribute: the volume label, an entry with no file behind it.
pub const ATTR_VOLUME: u8 = 0x08;
/// Attribute: a directory.
pub const ATTR_DIR: u8 = 0x10;
/// Attribute: changed since the last backup; set on every new file.
pub const ATTR_ARCH: u8 = 0x20;
/// Most entries one directory may hold (fatgen103; the kernel's `FAT_MAX_DIR_ENTRIES`).
pub const FAT_MAX_DIR_ENTRIES: usize = 65_536;
/// Largest size of a directory in bytes; growing past it fails with [`FsError::NoSpace`].
pub const FAT_MAX_DIR_SIZE: usize = FAT_MAX_DIR_ENTRIES * DIR_ENTRY_SIZE;
/// Name field of the `.` entry.
pub const DOT_NAME: ShortName = ShortName(*b".          ");
/// Name field of the `..` entry.
pub const DOTDOT_NAME: ShortName = ShortName(*b"..         ");

/// Byte offset of a short entry's attribute byte: everything before it is the name.
pub(crate) const OFF_ATTR: usize = 11;
/// Byte offset of a short entry's NT case byte (lower-case base and extension bits).
pub(crate) const OFF_NT_CASE: usize = 12;
const OFF_LFN_CHECKSUM: usize = 13;

/// One raw directory entry.
pub type RawEntry = [u8; DIR_ENTRY_SIZE];

fn get16(raw: &RawEntry, at: usize) -> u16 {
    u16::from_le_bytes([raw[at], raw[at + 1]])
}

fn put16(raw: &mut RawEntry, at: usize, value: u16) {
    raw[at..at + 2].copy_from_slice(&value.to_le_bytes());
}

/// A decoded short directory entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DirEntry {
    /// The 8.3 name, raw (a leading 0x05 stands for 0xE5).
    pub name: ShortName,
    /// The `ATTR_*` bits.
    pub attr: u8,
    /// The NT case byte: which parts of the 8.3 name show in lower case.
    pub nt_case: u8,
    /// Creation time in 10 ms units past `create_time`, 0..=199.
    pub create_centis: u8,
    /// Creation time of day, DOS format.
    pub create_time: u16,
    /// Creation date, DOS format.
    pub create_date: u16,
    /// Last access date, DOS format.
    pub access_date: u16,
    /// First cluster of the contents; 0 for an empty file (and for `..` naming the root).
    pub first_cluster: u32,
    /// Modification time of day, DOS format.
    pub modify_time: u16,
    /// Modification date, DOS format.
    pub modify_date: u16,
    /// Size in bytes; 0 for directories.
    pub size: u32,
}

impl DirEntry {
    /// A blank-named, empty entry whose creation, modification and access times are all `stamp`
    /// (`(date, time, centis)` from [`crate::fat::time::unix_to_fat`]), as vfat creates one.
    pub fn stamped(attr: u8, stamp: (u16, u16, u8)) -> Self {
        let (date, time, centis) = stamp;
        #[rustfmt::skip]
        let entry = Self {
            name: ShortName([b' '; SHORT_NAME_LEN]), attr, nt_case: 0, first_cluster: 0, size: 0,
            create_centis: centis, create_time: time, create_date: date, access_date: date,
            modify_time: time, modify_date: date,
        };
        entry
    }

    /// Decodes a short entry; on FAT12/16 the high cluster word is ignored, as the kernel does.
    pub fn parse(raw: &RawEntry, fat32: bool) -> Self {
        // FAT12/16 never had the high word; OS/2 kept extended-attribute handles there.
        let hi = if fat32 { u32::from(get16(raw, 20)) } else { 0 };
        Self {
            name: ShortName::from_entry(raw),
            attr: raw[OFF_ATTR],
            nt_case: raw[OFF_NT_CASE],
            create_centis: raw[13],
            create_time: get16(raw, 14),
            create_date: get16(raw, 16),
            access_date: get16(raw, 18),
            first_cluster: hi << 16 | u32::from(get16(raw, 26)),
            modify_time: get16(raw, 22),
            modify_date: get16(raw, 24),
            size: u32::from_le_bytes([raw[28], raw[29], raw[30], raw[31]]),
        }
    }

    /// Encodes into all 32 bytes of `raw`; on FAT12/16 the high cluster word is written as 0.
    pub fn serialize(&self, raw: &mut RawEntry, fat32: bool) {
        raw[..SHORT_NAME_LEN].copy_from_slice(&self.name.0);
        raw[OFF_ATTR] = self.attr;
        raw[OFF_NT_CASE] = self.nt_case;
        raw[13] = self.create_centis;
        put16(raw, 14, self.create_time);
        put16(raw, 16, self.create_date);
        put16(raw, 18, self.access_date);
        let [lo0, lo1, hi0, hi1] = self.first_cluster.to_le_bytes();
        let hi = if fat32 { [hi0, hi1] } else { [0, 0] };
        raw[20..22].copy_from_slice(&hi);
        put16(raw, 22, self.modify_time);
        put16(raw, 24, self.modify_date);
        raw[26..28].copy_from_slice(&[lo0, lo1]);
        raw[28..32].copy_from_slice(&self.size.to_le_bytes());
    }

    /// The encoded entry.
    pub fn to_bytes(&self, fat32: bool) -> RawEntry {
        let mut raw = [0u8; DIR_ENTRY_SIZE];
        self.serialize(&mut raw, fat32);
        raw
    }

    /// Whether the entry is a directory.
    pub fn is_dir(&self) -> bool {
        self.attr & ATTR_DIR != 0
    }

    /// Whether the entry is the volume label (an LFN slot, which also has the bit, is not).
    pub fn is_volume_label(&self) -> bool {
        self.attr & ATTR_VOLUME != 0 && self.attr != ATTR_LONG_NAME
    }
}

/// Whether a raw entry is an LFN slot; check [`is_end`] and [`is_free`] first.
pub fn is_lfn_slot(raw: &RawEntry) -> bool {
    // The kernel tests the exact value, not fatgen103's mask, and so does LfnAssembler.
    raw[OFF_ATTR] == ATTR_LONG_NAME
}

/// Whether a raw entry was deleted (first byte 0xE5), short entry or LFN slot alike.
pub fn is_free(raw: &RawEntry) -> bool {
    raw[0] == DIR_ENTRY_DELETED
}

/// Whether a raw entry is the end marker (first byte 0x00): no used entry follows it.
pub fn is_end(raw: &RawEntry) -> bool {
    raw[0] == DIR_ENTRY_FREE
}

/// The raw entries of `dir` with their byte offsets; a partial entry at the end is ignored.
fn raw_entries(dir: &[u8]) -> impl Iterator<Item = (usize, &RawEntry)> {
    dir.chunks_exact(DIR_ENTRY_SIZE)
        .enumerate()
        .map(|(i, chunk)| {
            let raw = <&RawEntry>::try_from(chunk).expect("chunks_exact yields whole entries");
            (i * DIR_ENTRY_SIZE, raw)
        })
}

/// What a live short entry stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotKind {
    /// A file or directory.
    Entry,
    /// The `.` entry of a subdirectory.
    Dot,
    /// The `..` entry of a subdirectory.
    DotDot,
    /// The volume label, which names no file.
    VolumeLabel,
}

/// One live entry found by [`iterate`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slot {
    /// The long name if a valid LFN chain precedes the entry, else the short name as shown
    /// under the mount's `shortname=` mode; for a label, the label without its padding.
    pub name: Box<str>,
    /// The decoded short entry.
    pub entry: DirEntry,
    /// Byte offset of the short entry in the directory.
    pub offset: usize,
    /// Byte offset of the first LFN slot of its chain; equals `offset` when it has none.
    pub lfn_offset: usize,
    /// What the entry stands for.
    pub kind: SlotKind,
}

impl Slot {
    /// The bytes the entry and its LFN chain occupy: what removal marks deleted.
    pub fn span(&self) -> Range<usize> {
        self.lfn_offset..self.offset + DIR_ENTRY_SIZE
    }
}

/// The live entries of a directory, as [`iterate`] reports them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DirScan {
    /// Files, directories, `.` and `..`, in on-disk order.
    pub entries: Vec<Slot>,
    /// Volume labels (normally only in the root directory), in on-disk order.
    pub volume_labels: Vec<Slot>,
}

/// Walks a directory's bytes (all its clusters concatenated) and reports every live entry.
///
/// Models: fs/fat/dir.c fat_search_long() and __fat_readdir() (v5.10).
///
/// A broken LFN chain leaves the short name showing; a short name that shows as nothing is
/// skipped, as in vfat. The walk stops at the end marker (see the deviation note above).
pub fn iterate(dir: &[u8], fat32: bool, mode: ShortnameMode) -> DirScan {
    let mut scan = DirScan::default();
    let mut chains = LfnAssembler::new();
    for (offset, raw) in raw_entries(dir) {
        if is_end(raw) {
            break;
        }
        let long = chains.feed(raw);
        if is_free(raw) || is_lfn_slot(raw) {
            continue;
        }
        match live_slot(dir, offset, DirEntry::parse(raw, fat32), long, mode) {
            Some(slot) if slot.kind == SlotKind::VolumeLabel => scan.volume_labels.push(slot),
            Some(slot) => scan.entries.push(slot),
            None => {}
        }
    }
    scan
}

fn kind_of(entry: &DirEntry) -> SlotKind {
    match entry.name {
        _ if entry.is_volume_label() => SlotKind::VolumeLabel,
        DOT_NAME => SlotKind::Dot,
        DOTDOT_NAME => SlotKind::DotDot,
        _ => SlotKind::Entry,
    }
}

fn live_slot(
    dir: &[u8],
    offset: usize,
    entry: DirEntry,
    long: Option<String>,
    mode: ShortnameMode,
) -> Option<Slot> {
    let kind = kind_of(&entry);
    let short = entry.name.display_name(entry.nt_case, mode);
    let (name, lfn_offset) = match (kind, long) {
        (SlotKind::VolumeLabel, _) => (label_text(&entry.name), offset),
        _ if short.is_empty() => return None,
        (SlotKind::Entry, Some(long)) => (long, chain_start(dir, offset, entry.name.checksum())),
        _ => (short, offset),
    };
    Some(Slot {
        // Boxed to its length: a directory keeps a slot per entry for as long as it is known.
        name: name.into_boxed_str(),
        entry,
        offset,
        lfn_offset,
        kind,
    })
}

/// Where the chain LfnAssembler accepted for the short entry at `offset` begins: among the
/// slots right before it with ordinals 1, 2, ... backwards and its checksum, the farthest one
/// marked last, which is where the assembler took the chain up.
fn chain_start(dir: &[u8], offset: usize, checksum: u8) -> usize {
    let slot_before = |ord: u8| {
        let at = offset.checked_sub(usize::from(ord) * DIR_ENTRY_SIZE)?;
        let (_, raw) = raw_entries(&dir[at..]).next()?;
        let ord_ok = raw[0] & !LFN_LAST_SLOT == ord && raw[OFF_LFN_CHECKSUM] == checksum;
        (is_lfn_slot(raw) && ord_ok).then_some((at, raw[0] & LFN_LAST_SLOT != 0))
    };
    let chain = (1..=LFN_MAX_SLOTS).map_while(slot_before);
    chain
        .filter(|&(_, last)| last)
        .last()
        .map_or(offset, |(at, _)| at)
}

/// A volume label's 11 bytes as text, trailing padding dropped.
fn label_text(name: &ShortName) -> String {
    let shown = |b: u8| {
        // name.rs owns the codepage table; a one-byte name shown through it keeps one copy.
        let mut one = [b' '; SHORT_NAME_LEN];
        one[0] = b;
        if b == b' ' {
            " ".to_string()
        } else {
            ShortName(one).to_string()
        }
    };
    let text: String = name.logical().into_iter().map(shown).collect();
    text.trim_end_matches(' ').to_string()
}

/// Whether each entry is free: deleted, or at or after the end marker.
fn free_flags(dir: &[u8]) -> impl Iterator<Item = bool> + '_ {
    let mut past_end = false;
    raw_entries(dir).map(move |(_, raw)| {
        past_end |= is_end(raw);
        past_end || is_free(raw)
    })
}

/// Byte offset of the end marker, or of the end of the whole entries if there is none.
pub fn end_offset(dir: &[u8]) -> usize {
    raw_entries(dir)
        .find(|(_, raw)| is_end(raw))
        .map_or(dir.len() / DIR_ENTRY_SIZE * DIR_ENTRY_SIZE, |(at, _)| at)
}

/// The first byte offset where `count` consecutive free entries fit within `dir`.
///
/// Models: fs/fat/dir.c fat_add_entries(), first stage (v5.10).
///
/// Free means deleted (0xE5) or at or after the end marker; only the first [`FAT_MAX_DIR_SIZE`]
/// bytes count. On `None` the caller grows the directory ([`clusters_to_grow`]); after writing
/// a run that covers the end marker it applies [`end_marker_after`].
pub fn find_free_run(dir: &[u8], count: usize) -> Option<usize> {
    if count == 0 {
        return Some(0);
    }
    let usable = &dir[..dir.len().min(FAT_MAX_DIR_SIZE)];
    let mut run = 0;
    for (i, free) in free_flags(usable).enumerate() {
        run = if free { run + 1 } else { 0 };
        if run == count {
            return Some((i + 1 - count) * DIR_ENTRY_SIZE);
        }
    }
    None
}

/// How many free entries end the directory; a run of new entries may start in them.
pub fn trailing_free(dir: &[u8]) -> usize {
    free_flags(dir).fold(0, |run, free| if free { run + 1 } else { 0 })
}

/// Fails with [`FsError::NoSpace`] if a directory of `size` bytes would pass the FAT limit.
pub fn check_dir_size(size: usize) -> Result<(), FsError> {
    if size > FAT_MAX_DIR_SIZE {
        log::debug!("directory of {size} bytes would pass the {FAT_MAX_DIR_SIZE}-byte limit");
        return Err(FsError::NoSpace);
    }
    Ok(())
}

/// How many zeroed clusters to append so that `count` new entries fit after the free tail.
///
/// Models: fs/fat/dir.c fat_add_entries(), third stage (v5.10).
///
/// For when [`find_free_run`] found nothing; afterwards it finds a run starting in the old tail.
/// `cluster_size` is in bytes, not 0. [`FsError::NoSpace`] past [`FAT_MAX_DIR_SIZE`]; that a
/// FAT12/16 root cannot grow at all is the caller's check.
pub fn clusters_to_grow(dir: &[u8], count: usize, cluster_size: usize) -> Result<usize, FsError> {
    let missing = count.saturating_sub(trailing_free(dir)) * DIR_ENTRY_SIZE;
    let clusters = missing.div_ceil(cluster_size);
    check_dir_size(dir.len() + clusters * cluster_size)?;
    Ok(clusters)
}

/// Where a new end marker must go after writing `count` entries at `at` (from
/// [`find_free_run`]), or `None` if none is needed.
///
/// fatgen103 wants every entry past the marker zero, but stale bytes are often left there. If
/// the run covers the old marker and the next entry is inside the directory and not 0x00, the
/// caller must zero that entry's first byte (or all of it), or stale entries would turn live.
/// A run ending at the directory's end needs none (it is full); appended clusters are zeroed.
pub fn end_marker_after(dir: &[u8], at: usize, count: usize) -> Option<usize> {
    let after = at + count * DIR_ENTRY_SIZE;
    let inside = after + DIR_ENTRY_SIZE <= dir.len();
    let needed = after > end_offset(dir) && inside && dir[after] != DIR_ENTRY_FREE;
    needed.then_some(after)
}

/// The raw entries for a new name: LFN slots then the short entry, or the short entry alone.
///
/// Models: fs/fat/namei_vfat.c vfat_build_slots() (v5.10).
///
/// The name is checked by [`vfat_valid_longname`], the short form or alias made by
/// [`vfat_create_shortname`] (`exists`: e.g. [`NameIndex::short_exists`]); the short entry is
/// `template` with name and NT case byte set. Whether the long name exists is the caller's check.
pub fn build_entries(
    name: &str,
    mode: ShortnameMode,
    exists: impl FnMut(&ShortName) -> bool,
    template: &DirEntry,
    fat32: bool,
) -> Result<Vec<RawEntry>, FsError> {
    if template.attr & ATTR_VOLUME != 0 {
        return Err(FsError::Invalid("a named entry cannot be a volume label"));
    }
    let stored = vfat_valid_longname(name)?;
    let mut short = *template;
    let mut entries = match vfat_create_shortname(stored, mode, exists)? {
        NameForm::ShortOnly(form) => {
            short.name = form.short;
            short.nt_case = form.nt_case;
            Vec::with_capacity(1)
        }
        NameForm::Lfn { alias } => {
            short.name = alias;
            short.nt_case = 0;
            lfn_slots(stored, alias.checksum())?
        }
    };
    entries.push(short.to_bytes(fat32));
    Ok(entries)
}

/// The `.` and `..` entries that open a new directory's first cluster.
///
/// Models: fs/fat/dir.c fat_alloc_new_dir() (v5.10).
///
/// `parent_cluster` is 0 when the parent is the root, on FAT32 too (fatgen103); `stamp` as for
/// [`DirEntry::stamped`]. The caller zeroes the rest of the cluster: the end marker.
pub fn dot_entries(
    self_cluster: u32,
    parent_cluster: u32,
    stamp: (u16, u16, u8),
    fat32: bool,
) -> [RawEntry; 2] {
    let mut dot = DirEntry::stamped(ATTR_DIR, stamp);
    dot.name = DOT_NAME;
    dot.first_cluster = self_cluster;
    let mut dotdot = dot;
    dotdot.name = DOTDOT_NAME;
    dotdot.first_cluster = parent_cluster;
    [dot.to_bytes(fat32), dotdot.to_bytes(fat32)]
}

/// The names of one directory, so that lookups and alias checks are not linear scans.
///
/// Each entry is found by its long name and by its short name, case-insensitively, as vfat's
/// lookup compares both. When a damaged directory has two entries answering one name, the
/// first on disk wins, as the kernel's linear search finds it first.
///
/// The index keeps no names: only (hash of a key, short-entry offset) pairs, two per entry (one
/// when its name folds to its short name). The names themselves are in the directory's slots,
/// which the caller lends to [`NameIndex::lookup`] and [`NameIndex::short_exists`] to tell a
/// match from a hash collision. Keeping the folded keys as strings (twice, for the ordered sets
/// and for removal) cost ~250 bytes per entry, more than the slot that holds the name.
///
/// The alias check finds an 8.3 name under the key of its text: every entry is entered under
/// its short name as text, so the entries with a given raw short name are among those, and the
/// caller's exact comparison picks them out. A third table keyed by the raw bytes would answer
/// the same at ~14 more bytes per entry.
#[derive(Debug, Default)]
pub struct NameIndex {
    /// The folded long (or shown) name and the folded short name as text of every entry.
    names: Keys,
}

/// (key hash, offset) pairs, found by key in offset order.
///
/// The lowest offset of each key sits in a hash table, 8 bytes a pair; the others of the same
/// key, in an ordered set beside it. Distinct keys are the rule, so the set is normally empty;
/// a damaged directory can hold thousands of entries of one name, and one table slot per key
/// keeps its load O(n log n) where a table of them all probes through every twin (quadratic).
#[derive(Debug, Default)]
struct Keys {
    first: HashTable<(u32, u32)>,
    more: BTreeSet<(u32, u32)>,
}

impl Keys {
    /// Enters `(key, offset)` unless present (a long name that folds to its own short name).
    fn enter(&mut self, key: u32, offset: u32) {
        let hash = spread(key);
        match self.first.find_mut(hash, |e| e.0 == key) {
            None => {
                self.first
                    .insert_unique(hash, (key, offset), |&(k, _)| spread(k));
            }
            Some(e) if e.1 == offset => {}
            Some(e) if offset < e.1 => {
                // The new lowest: the old one moves to the others.
                let old = std::mem::replace(&mut e.1, offset);
                self.more.insert((key, old));
            }
            Some(_) => {
                self.more.insert((key, offset));
            }
        }
    }

    /// Takes `(key, offset)` out; whether it was there.
    fn take(&mut self, key: u32, offset: u32) -> bool {
        if self.more.remove(&(key, offset)) {
            return true;
        }
        let Ok(entry) = self.first.find_entry(spread(key), |&e| e == (key, offset)) else {
            return false;
        };
        // The next lowest of the key, if any, takes its place.
        match self.more.range((key, 0)..=(key, u32::MAX)).next().copied() {
            Some(next) => {
                self.more.remove(&next);
                *entry.into_mut() = next;
            }
            None => {
                entry.remove();
            }
        }
        true
    }

    /// The offsets entered under `key`, lowest first.
    fn offsets(&self, key: u32) -> impl Iterator<Item = usize> + '_ {
        let first = self.first.find(spread(key), |e| e.0 == key);
        let more = first
            .is_some()
            .then(|| self.more.range((key, 0)..=(key, u32::MAX)))
            .into_iter()
            .flatten();
        first.into_iter().chain(more).map(|&(_, o)| o as usize)
    }

    /// Pairs held.
    fn len(&self) -> usize {
        self.first.len() + self.more.len()
    }

    /// Heap bytes held, about: the table's allocation, and the twins at their pair size
    /// (B-tree nodes add some; the set is empty in a healthy directory).
    #[cfg(test)]
    fn heap_bytes(&self) -> usize {
        self.first.allocation_size() + self.more.len() * std::mem::size_of::<(u32, u32)>()
    }
}

/// The 32-bit key hash of a name under [`crate::fat::name::fold_name`]'s folding.
fn name_hash(name: &str) -> u32 {
    let mut h = rustc_hash::FxHasher::default();
    for c in folded_chars(name) {
        h.write_u32(u32::from(c));
    }
    fold64(h.finish())
}

/// A 64-bit hash folded to the 32 bits stored, every bit of it counting.
fn fold64(h: u64) -> u32 {
    (h ^ (h >> 32)) as u32
}

/// The table hash of a stored key hash: spread over all 64 bits, as the table takes its bucket
/// from the low bits and its tag from the top seven.
fn spread(key: u32) -> u64 {
    let h = u64::from(key).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    h ^ (h >> 29)
}

/// A short-entry offset as stored (a directory is at most 2 MiB, so it fits 32 bits).
fn offset32(offset: usize) -> u32 {
    u32::try_from(offset).expect("a directory offset fits 32 bits (FAT_MAX_DIR_SIZE)")
}

impl NameIndex {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// An index of the files and directories of a scan; `.`, `..` and labels are left out,
    /// as vfat's lookup and alias check never match them.
    pub fn build(entries: &[Slot]) -> Self {
        let mut index = Self::new();
        for slot in entries.iter().filter(|s| s.kind == SlotKind::Entry) {
            index.insert(slot);
        }
        index
    }

    /// Enters `slot` under its name (long or shown) and its short name.
    pub fn insert(&mut self, slot: &Slot) {
        let offset = offset32(slot.offset);
        self.names.enter(name_hash(&slot.name), offset);
        self.names
            .enter(name_hash(&slot.entry.name.to_string()), offset);
    }

    /// Forgets `slot` (as it was entered); returns whether it was indexed.
    pub fn remove(&mut self, slot: &Slot) -> bool {
        let offset = offset32(slot.offset);
        let long = self.names.take(name_hash(&slot.name), offset);
        // A long name folding to the short one was entered once, under one key.
        let short = self
            .names
            .take(name_hash(&slot.entry.name.to_string()), offset);
        long | short
    }

    /// The slot of the entry `name` denotes, by long or short name; `slot_at` gives the
    /// indexed slot at an offset.
    pub fn lookup<'s>(
        &self,
        name: &str,
        slot_at: impl Fn(usize) -> Option<&'s Slot>,
    ) -> Option<&'s Slot> {
        let found = self.find(name, |offset| {
            slot_at(offset).is_some_and(|slot| {
                names_equal(name, &slot.name) || names_equal(name, &slot.entry.name.to_string())
            })
        });
        found.and_then(slot_at)
    }

    /// The lowest offset entered under `name`'s key (long or short name) that `matches`
    /// accepts: the caller, who keeps the names, tells a match from a hash collision.
    pub fn find(&self, name: &str, mut matches: impl FnMut(usize) -> bool) -> Option<usize> {
        // Lowest offset first, so the first match is the one on disk first.
        self.names.offsets(name_hash(name)).find(|&o| matches(o))
    }

    /// Whether some entry has exactly this 8.3 name; `slot_at` as for [`NameIndex::lookup`].
    pub fn short_exists<'s>(
        &self,
        short: &ShortName,
        slot_at: impl Fn(usize) -> Option<&'s Slot>,
    ) -> bool {
        let same = |offset| slot_at(offset).is_some_and(|s| s.entry.name == *short);
        self.find_short(short, same).is_some()
    }

    /// The lowest offset entered under the 8.3 name `short` that `matches` accepts, as for
    /// [`NameIndex::find`]: the candidates are those entered under `short` as text, and
    /// `matches` compares the raw names.
    pub fn find_short(
        &self,
        short: &ShortName,
        matches: impl FnMut(usize) -> bool,
    ) -> Option<usize> {
        self.find(&short.to_string(), matches)
    }

    /// Keys held (an entry whose long name folds to its short one holds one, else two).
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Heap bytes held, about (for the memory tests of directories).
    #[cfg(test)]
    pub(crate) fn heap_bytes(&self) -> usize {
        self.names.heap_bytes()
    }

    /// True when no entry is indexed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::fat::name::{CASE_LOWER_BASE, CASE_LOWER_EXT, fold_name};
    use crate::fat::time::{dos_date, dos_time};
    use ShortnameMode::*;

    const E: usize = DIR_ENTRY_SIZE;
    const STAMP: (u16, u16, u8) = (dos_date(2021, 1, 5), dos_time(12, 34, 56), 101);
    /// A built name as (LFN slots, raw short name, NT case byte, name shown), or an errno.
    type Built = Result<(usize, &'static str, u8, &'static str), i32>;

    fn sn(s: &str) -> ShortName {
        ShortName(s.as_bytes().try_into().expect("11 bytes"))
    }

    fn short(name: &str, attr: u8, nt_case: u8, cluster: u32) -> RawEntry {
        let mut e = DirEntry::stamped(attr, STAMP);
        (e.name, e.nt_case, e.first_cluster) = (sn(name), nt_case, cluster);
        e.to_bytes(true)
    }

    fn with(mut raw: RawEntry, at: usize, value: u8) -> RawEntry {
        raw[at] = value;
        raw
    }

    /// (name, kind, entry index, first slot index) of each slot.
    fn listing<'a>(slots: &'a [Slot]) -> Vec<(&'a str, SlotKind, usize, usize)> {
        let row = |s: &'a Slot| (&*s.name, s.kind, s.offset / E, s.lfn_offset / E);
        slots.iter().map(row).collect()
    }

    #[test]
    fn short_entry_round_trip() {
        let mut raw = [0u8; E];
        raw[..11].copy_from_slice(b"DATA    BIN");
        #[rustfmt::skip]
        raw[11..].copy_from_slice(&[
            ATTR_ARCH | ATTR_RO, CASE_LOWER_EXT, 150, 0x21, 0x63, 0x25, 0x52, 0x26, 0x52,
            0x12, 0x00, 0x9e, 0x65, 0x26, 0x52, 0x56, 0x34, 0xef, 0xbe, 0xad, 0xde,
        ]);
        #[rustfmt::skip]
        let want = DirEntry {
            name: sn("DATA    BIN"), attr: 0x21, nt_case: CASE_LOWER_EXT, create_centis: 150,
            create_time: 0x6321, create_date: 0x5225, access_date: 0x5226,
            first_cluster: 0x0012_3456, modify_time: 0x659e, modify_date: 0x5226,
            size: 0xdead_beef,
        };
        let mut fat16 = want;
        fat16.first_cluster = 0x3456;
        #[rustfmt::skip]
        let cases = [
            ("FAT32 keeps the high word", true, want, raw),
            ("FAT16 ignores the high word, writes 0", false, fat16, with(raw, 20, 0)),
        ];
        for (what, fat32, want, written) in cases {
            let e = DirEntry::parse(&raw, fat32);
            assert_eq!((e, e.to_bytes(fat32)), (want, written), "{what}");
        }
        let (t, f) = (true, false);
        #[rustfmt::skip]
        let cases = [
            // what, raw, (is_dir, is_volume_label, is_lfn_slot), is_free, is_end
            ("file", raw, (f, f, f), f, f),
            ("directory", with(raw, 11, ATTR_DIR), (t, f, f), f, f),
            ("label", with(raw, 11, ATTR_VOLUME), (f, t, f), f, f),
            ("lfn slot", with(raw, 11, ATTR_LONG_NAME), (f, f, t), f, f),
            ("deleted", with(raw, 0, 0xE5), (f, f, f), t, f),
            ("end marker", [0u8; E], (f, f, f), f, t),
        ];
        for (what, raw, kind, free, end) in cases {
            let e = DirEntry::parse(&raw, true);
            let got = (e.is_dir(), e.is_volume_label(), is_lfn_slot(&raw));
            assert_eq!(
                (got, is_free(&raw), is_end(&raw)),
                (kind, free, end),
                "{what}"
            );
        }
    }

    #[test]
    fn iterate_hand_built_directory() {
        let long = "Quarterly report, final 2021.ods";
        let alias = short("QUARTE~1ODS", ATTR_ARCH, 0, 9);
        let slots = lfn_slots(long, ShortName::from_entry(&alias).checksum()).expect("valid");
        assert_eq!(slots.len(), 3);
        let gone = short("GONE~1     ", ATTR_ARCH, 0, 0);
        let gone_slot = lfn_slots("gone for good", ShortName::from_entry(&gone).checksum());
        let gone_slot = gone_slot.expect("valid")[0];
        let orphan = lfn_slots("orphan", 0x00).expect("valid")[0];
        #[rustfmt::skip]
        let dir = [
            short(".          ", ATTR_DIR, 0, 0x0001_0005),          // 0
            short("..         ", ATTR_DIR, 0, 0),                    // 1
            short("BACKUP DISK", ATTR_VOLUME | ATTR_ARCH, 0, 0),     // 2
            short("README  TXT", ATTR_ARCH, CASE_LOWER_BASE | CASE_LOWER_EXT, 7), // 3
            slots[0], slots[1], slots[2], alias,                     // 4..=7
            with(gone_slot, 0, 0xE5), with(gone, 0, 0xE5),           // 8, 9
            orphan, short("ORPHAN  TXT", ATTR_ARCH, 0, 11),          // 10, 11: bad checksum
            [0u8; E],                                                // 12: end marker
            short("GHOST   TXT", ATTR_ARCH, 0, 13), slots[0],        // 13, 14: stale bytes
        ].concat();
        let scan = iterate(&dir, true, Mixed);
        #[rustfmt::skip]
        let want = [
            (".", SlotKind::Dot, 0, 0), ("..", SlotKind::DotDot, 1, 1),
            ("readme.txt", SlotKind::Entry, 3, 3), (long, SlotKind::Entry, 7, 4),
            ("ORPHAN.TXT", SlotKind::Entry, 11, 11),
        ];
        assert_eq!(listing(&scan.entries), want);
        let label = ("BACKUP DISK", SlotKind::VolumeLabel, 2, 2);
        assert_eq!(listing(&scan.volume_labels), [label]);
        let (dot, quarterly) = (&scan.entries[0], &scan.entries[3]);
        assert_eq!(dot.entry.first_cluster, 0x0001_0005, "FAT32 high word");
        assert_eq!(quarterly.span(), 4 * E..8 * E, "slots and entry");
        let blank = iterate(&short("           ", ATTR_ARCH, 0, 0), true, Mixed);
        assert_eq!(
            blank,
            DirScan::default(),
            "a name that shows as nothing is skipped"
        );
        let fat16 = iterate(&dir, false, Win95);
        assert_eq!(
            &*fat16.entries[2].name, "README.TXT",
            "win95 ignores case bits"
        );

        let index = NameIndex::build(&scan.entries);
        let upper = long.to_uppercase();
        #[rustfmt::skip]
        let lookups = [
            ("short name, other case", "README.TXT", Some(3)), ("alias", "quarte~1.ods", Some(7)),
            ("long name", upper.as_str(), Some(7)), ("orphan's short name", "orphan.txt", Some(11)),
            ("dot is not indexed", ".", None), ("label is not a file", "BACKUP DISK", None),
            ("deleted", "gone for good", None), ("past the end marker", "GHOST.TXT", None),
        ];
        for (what, name, want) in lookups {
            let slot_at = |o| scan.entries.iter().find(|s: &&Slot| s.offset == o);
            let got = index.lookup(name, slot_at).map(|s| s.offset);
            assert_eq!(got, want.map(|i| i * E), "{what}");
        }
    }

    #[test]
    fn chain_start_edge_cases() {
        let alias = short("THIRTY~1   ", ATTR_ARCH, 0, 0);
        let name = "t".repeat(30);
        let slots = lfn_slots(&name, ShortName::from_entry(&alias).checksum());
        let [s3, s2, s1] = <[RawEntry; 3]>::try_from(slots.expect("valid")).expect("3 slots");
        #[rustfmt::skip]
        let cases = [
            ("orphan slot 1 before the chain", vec![s1, s3, s2, s1, alias], 1),
            ("stray last-flag mid chain", vec![s3, with(s2, 0, 0x42), s1, alias], 0),
            ("restart inside a broken chain", vec![s3, s3, s2, s1, alias], 1),
            ("unmarked slot 4 before the chain", vec![with(s3, 0, 4), s3, s2, s1, alias], 1),
        ];
        for (what, entries, first) in cases {
            let scan = iterate(&entries.concat(), false, Mixed);
            let want = [(name.as_str(), SlotKind::Entry, entries.len() - 1, first)];
            assert_eq!(listing(&scan.entries), want, "{what}");
        }
    }

    #[test]
    fn free_run_search() {
        let used = short("USED       ", ATTR_ARCH, 0, 0);
        let del = with(used, 0, 0xE5);
        // used, del, del, used, del, END, stale, stale
        let dir = [used, del, del, used, del, [0u8; E], used, used].concat();
        let full = [used; 4].concat();
        #[rustfmt::skip]
        let cases = [
            ("one fits in the first hole", &dir[..], 1, Some(E)),
            ("two fit in the first hole", &dir[..], 2, Some(E)),
            ("three span deleted and end", &dir[..], 3, Some(4 * E)),
            ("four run to the last byte", &dir[..], 4, Some(4 * E)),
            ("five do not fit", &dir[..], 5, None),
            ("zero fit anywhere", &dir[..], 0, Some(0)),
            ("empty directory", &[], 1, None),
            ("partial entry ignored", &dir[..7 * E + 31], 4, None),
            ("full directory", &full[..], 1, None),
        ];
        for (what, dir, count, want) in cases {
            assert_eq!(find_free_run(dir, count), want, "{what}");
        }
        assert_eq!((end_offset(&dir), trailing_free(&dir)), (5 * E, 4));
        let grow = |count| clusters_to_grow(&dir, count, 64).ok();
        assert_eq!((grow(5), grow(9)), (Some(1), Some(3)), "1 and 5 short");
        let mut grown = dir.clone();
        grown.resize(dir.len() + 64, 0);
        assert_eq!(find_free_run(&grown, 5), Some(4 * E), "starts in old tail");

        let clean = [used, [0u8; E], [0u8; E], [0u8; E]].concat();
        #[rustfmt::skip]
        let markers = [
            ("run covers the marker, stale after", &dir[..], 4 * E, 2, Some(6 * E)),
            ("run ends before the marker", &dir[..], E, 2, None),
            ("run fills the directory", &dir[..], 4 * E, 4, None),
            ("zeroed tail keeps its marker", &clean[..], E, 1, None),
        ];
        for (what, dir, at, count, want) in markers {
            assert_eq!(end_marker_after(dir, at, count), want, "{what}");
        }
    }

    #[test]
    fn directory_size_limit() {
        assert_eq!(FAT_MAX_DIR_SIZE, 2 << 20);
        assert!(check_dir_size(FAT_MAX_DIR_SIZE).is_ok());
        let over = check_dir_size(FAT_MAX_DIR_SIZE + E);
        assert!(matches!(over, Err(FsError::NoSpace)), "{over:?}");
        let mut dir = short("USED       ", ATTR_ARCH, 0, 0).repeat(FAT_MAX_DIR_ENTRIES);
        let grow = clusters_to_grow(&dir, 1, 4096);
        assert!(matches!(grow, Err(FsError::NoSpace)), "full size: {grow:?}");
        dir[FAT_MAX_DIR_SIZE - E] = 0xE5;
        let last = Some(FAT_MAX_DIR_SIZE - E);
        assert_eq!(find_free_run(&dir, 1), last, "last entry usable");
        dir.resize(FAT_MAX_DIR_SIZE + 2 * E, 0);
        assert_eq!(find_free_run(&dir, 2), None, "past the limit");
    }

    #[test]
    fn build_entries_for_new_names() {
        let mut template = DirEntry::stamped(ATTR_ARCH, STAMP);
        (template.first_cluster, template.size) = (0x0002_0003, 77);
        let free = |_: &ShortName| false;
        let (long, too_long) = ("A name long enough for three slots", "n".repeat(256));
        #[rustfmt::skip]
        let cases: [(&str, &str, ShortnameMode, Built); 9] = [
            ("upper 8.3 alone", "README.TXT", Mixed, Ok((0, "README  TXT", 0, "README.TXT"))),
            ("winnt case bits", "readme.txt", Winnt, Ok((0, "README  TXT", 0x18, "readme.txt"))),
            ("mixed gives lower LFN", "readme.txt", Mixed, Ok((1, "README  TXT", 0, "readme.txt"))),
            ("three slots", long, Mixed, Ok((3, "ANAMEL~1   ", 0, long))),
            ("unicode", "\u{65e5}\u{672c}.txt", Mixed, Ok((1, "__~1    TXT", 0, "\u{65e5}\u{672c}.txt"))),
            ("non-BMP", "\u{1F600} x.md", Winnt, Ok((1, "__X~1   MD ", 0, "\u{1F600} x.md"))),
            ("trailing dots dropped", "notes...", Mixed, Ok((1, "NOTES      ", 0, "notes"))),
            ("name too long", &too_long, Mixed, Err(libc::ENAMETOOLONG)),
            ("bad character", "a*b", Mixed, Err(libc::EINVAL)),
        ];
        for (what, name, mode, want) in cases {
            let got = build_entries(name, mode, free, &template, true);
            let (entries, (nr_slots, raw, nt_case, shown)) = match (got, want) {
                (Err(e), Err(errno)) => {
                    assert_eq!(e.errno(), errno, "{what}");
                    continue;
                }
                (Ok(entries), Ok(w)) => (entries, w),
                (got, want) => panic!("{what}: got {got:?}, want {want:?}"),
            };
            let scan = iterate(&entries.concat(), true, mode);
            let want = [(shown, SlotKind::Entry, nr_slots, 0)];
            assert_eq!(listing(&scan.entries), want, "{what}");
            let mut short_entry = template;
            (short_entry.name, short_entry.nt_case) = (sn(raw), nt_case);
            assert_eq!(scan.entries[0].entry, short_entry, "{what}");
        }
        let readme = |s: &ShortName| *s == sn("README  TXT");
        let taken = build_entries("README.TXT", Mixed, readme, &template, true);
        assert!(matches!(taken, Err(FsError::Exists)), "8.3 form taken");
        let label = DirEntry::stamped(ATTR_VOLUME, STAMP);
        let refused = build_entries("x", Mixed, free, &label, true);
        assert!(matches!(refused, Err(FsError::Invalid(_))));
    }

    #[test]
    fn name_index_two_thousand_names() {
        let template = DirEntry::stamped(ATTR_ARCH, STAMP);
        // The slots the index points into, as a directory keeps them.
        type Slots = std::collections::BTreeMap<usize, Slot>;
        let add = |index: &mut NameIndex, slots: &mut Slots, name: &str, offset: usize| {
            let exists = |s: &ShortName| index.short_exists(s, |o| slots.get(&o));
            let raw = build_entries(name, Mixed, exists, &template, true).expect(name);
            let entry = DirEntry::parse(raw.last().expect("short entry"), true);
            let kind = SlotKind::Entry;
            let name = name.into();
            let slot = Slot {
                name,
                entry,
                offset,
                lfn_offset: offset,
                kind,
            };
            index.insert(&slot);
            slots.insert(offset, slot);
            entry.name
        };
        let (mut index, mut slots) = (NameIndex::new(), Slots::new());
        let mut aliases = Vec::new();
        for i in 0..2000 {
            // Every tenth name shares one alias basis: ~1..~4, then the hash form.
            let name = match i % 10 {
                0 => format!("Shared prefix {i}.txt"),
                _ => format!("{i:04} unique report.txt"),
            };
            aliases.push(add(&mut index, &mut slots, &name, i * E));
        }
        assert_eq!(index.len(), 2 * 2000, "long and short name keys");
        let want = ["SHARED~1TXT", "SHARED~2TXT", "SHF12D~1TXT"].map(sn);
        let got = [aliases[0], aliases[10], aliases[100]];
        assert_eq!(got, want, "~2, then a hash form after ~4");
        #[rustfmt::skip]
        let lookups = [
            ("exact", "0042 unique report.txt", Some(42)),
            ("upper case", "0042 UNIQUE REPORT.TXT", Some(42)),
            ("trailing dots", "Shared prefix 10.txt..", Some(10)),
            ("alias", "shared~2.TXT", Some(10)),
            ("missing", "0042 unique report.txt2", None),
        ];
        for (what, name, want) in lookups {
            let got = index.lookup(name, |o| slots.get(&o)).map(|s| s.offset);
            assert_eq!(got, want.map(|i| i * E), "{what}");
        }
        let gone = slots.remove(&(10 * E)).expect("slot 10");
        assert!(index.remove(&gone) && !index.remove(&gone));
        assert_eq!(index.lookup("SHARED~2.TXT", |o| slots.get(&o)), None);
        assert!(!index.short_exists(&sn("SHARED~2TXT"), |o| slots.get(&o)));
        let reused = add(&mut index, &mut slots, "Shared prefix again.txt", 5000 * E);
        assert_eq!(reused, sn("SHARED~2TXT"), "a freed alias is taken again");
        add(&mut index, &mut slots, "\u{e9}t\u{e9}.txt", 5001 * E);
        let folded = index
            .lookup("\u{c9}T\u{c9}.TXT", |o| slots.get(&o))
            .map(|s| s.offset);
        assert_eq!((folded, index.len()), (Some(5001 * E), 2 * 2001));
        // Two entries answering one name (a damaged directory): the first on disk wins,
        // whichever was entered first.
        let mut twin = slots[&(42 * E)].clone();
        twin.offset = 7000 * E;
        index.insert(&twin);
        slots.insert(twin.offset, twin.clone());
        twin.offset = 41 * E + 1;
        let earlier = twin.clone();
        index.insert(&earlier);
        slots.insert(earlier.offset, earlier);
        let got = index
            .lookup("0042 UNIQUE REPORT.TXT", |o| slots.get(&o))
            .map(|s| s.offset);
        assert_eq!(got, Some(41 * E + 1));
        // Removing the first of the twins hands the name to the next on disk, and so on.
        for (gone, next) in [
            (41 * E + 1, Some(42 * E)),
            (42 * E, Some(7000 * E)),
            (7000 * E, None),
        ] {
            let slot = slots.remove(&gone).expect("indexed twin");
            assert!(index.remove(&slot));
            let got = index
                .lookup("0042 unique report.txt", |o| slots.get(&o))
                .map(|s| s.offset);
            assert_eq!(got, next, "after removing {gone}");
            let alias = index.short_exists(&slot.entry.name, |o| slots.get(&o));
            assert_eq!(alias, next.is_some(), "alias after removing {gone}");
        }
        assert_eq!(index.len(), 2 * 2000, "twins leave no keys behind");
        // A long name that reads as another 8.3 name shares that name's key: the alias check
        // must still answer by the raw short name alone.
        let mut odd = slots[&(43 * E)].clone();
        (odd.name, odd.offset, odd.entry.name) = ("abc~1.txt".into(), 8000 * E, sn("XYZ     TXT"));
        index.insert(&odd);
        slots.insert(odd.offset, odd);
        assert!(!index.short_exists(&sn("ABC~1   TXT"), |o| slots.get(&o)));
        assert!(index.short_exists(&sn("XYZ     TXT"), |o| slots.get(&o)));
        let found = index
            .lookup("ABC~1.TXT", |o| slots.get(&o))
            .map(|s| s.offset);
        assert_eq!(found, Some(8000 * E), "by its long name");
        #[rustfmt::skip]
        let names = [
            "readme.txt", "README.TXT", "foo.", "FOO", "\u{e9}t\u{e9}", "\u{c9}T\u{c9}",
            "\u{10428}x", "\u{10400}X", ".", "..", "...", "\u{df}", "SS", "ab", "abc", "",
            "\u{131}", "I", "i", "\u{17f}", "s",
        ];
        for (a, b) in names.iter().flat_map(|a| names.iter().map(move |b| (a, b))) {
            let same = fold_name(a) == fold_name(b);
            assert_eq!(same, names_equal(a, b), "{a:?}, {b:?}");
        }
        // Non-ASCII letters whose upper case is ASCII: no ASCII-only shortcut may miss them.
        assert!(names_equal("\u{131}.TXT", "i.txt") && names_equal("\u{17f}", "S"));
    }

    #[test]
    fn dot_entries_of_new_directory() {
        #[rustfmt::skip]
        let cases = [
            ("FAT32, parent is root", true, 0x0001_0002, 0, 0x0001_0002),
            ("FAT32, parent has a cluster", true, 70_000, 9, 70_000),
            ("FAT16 drops the high word", false, 0x0001_0002, 3, 2),
        ];
        for (what, fat32, own, parent, own_read) in cases {
            let raw = dot_entries(own, parent, STAMP, fat32);
            let [d, dd] = raw.map(|r| DirEntry::parse(&r, fat32));
            let mut want = DirEntry::stamped(ATTR_DIR, STAMP);
            (want.name, want.first_cluster) = (DOT_NAME, own_read);
            assert_eq!(d, want, "{what}: .");
            (want.name, want.first_cluster) = (DOTDOT_NAME, parent);
            assert_eq!(dd, want, "{what}: ..");
        }
    }
}
