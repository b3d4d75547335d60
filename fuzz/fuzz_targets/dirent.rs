//! Directory entries and VFAT long names. Input: byte 0 picks FAT32 entries and the
//! `shortname=` mode, byte 1 is the length of a name that follows (taken as lossy UTF-8),
//! the rest is directory bytes. The bytes are walked by the pure parsers (`iterate`, the
//! free-run search, `LfnAssembler`), then placed in a small FAT12 volume as its fixed root
//! and as a four-cluster subdirectory, loaded as a `Directory`, and the name is added and
//! removed there. Nothing may panic; every listed name must be found by lookup; an added name
//! must be found after a reload from the bytes and be gone after its removal.
#![no_main]

use fatcache::fat::bpb::{Bpb, FatType};
use fatcache::fat::dir::{DirLocation, Directory};
use fatcache::fat::dirent::{
    ATTR_ARCH, DirEntry, NameIndex, RawEntry, SlotKind, clusters_to_grow, end_marker_after,
    end_offset, find_free_run, is_end, is_free, iterate, trailing_free,
};
use fatcache::fat::name::{
    DIR_ENTRY_SIZE, LfnAssembler, ShortnameMode, fold_name, generate_alias, names_equal,
    short_only_form, vfat_create_shortname, vfat_valid_longname,
};
use fatcache::fat::table::{FatStore, FatTable, MemFat};
use fatcache_fuzz::{SECTOR, Shape, bpb_for};
use libfuzzer_sys::fuzz_target;

const MODES: [ShortnameMode; 4] = [
    ShortnameMode::Lower,
    ShortnameMode::Win95,
    ShortnameMode::Winnt,
    ShortnameMode::Mixed,
];
/// Root entries of the volume: 2 KiB of fixed root.
const ROOT_ENTRIES: u16 = 64;
/// Clusters of the subdirectory: another 2 KiB.
const SUBDIR_CLUSTERS: u32 = 4;

fuzz_target!(|data: &[u8]| {
    let [flags, len, rest @ ..] = data else {
        return;
    };
    let (name, dir) = rest.split_at(rest.len().min(usize::from(*len)));
    let name = String::from_utf8_lossy(name).into_owned();
    let fat32 = flags & 1 != 0;
    let mode = MODES[usize::from(flags >> 1) % MODES.len()];
    pure(dir, fat32, mode, &name);
    names(&name, mode);
    on_volume(dir, mode, &name);
});

/// The parsers over raw bytes.
fn pure(dir: &[u8], fat32: bool, mode: ShortnameMode, name: &str) {
    let end = end_offset(dir);
    assert!(end <= dir.len() && end % DIR_ENTRY_SIZE == 0);
    let scan = iterate(dir, fat32, mode);
    let mut last = None;
    for slot in scan.entries.iter().chain(&scan.volume_labels) {
        assert_eq!(slot.offset % DIR_ENTRY_SIZE, 0);
        assert!(slot.offset < end, "a live entry at or past the end marker");
        assert!(slot.lfn_offset <= slot.offset);
        assert!(slot.span().end <= dir.len());
        assert!(names_equal(&slot.name, &slot.name));
        assert_eq!(
            names_equal(&slot.name, name),
            fold_name(&slot.name) == fold_name(name)
        );
    }
    for slot in &scan.entries {
        assert!(last < Some(slot.offset), "entries out of order");
        last = Some(slot.offset);
    }
    let index = NameIndex::build(&scan.entries);
    // `.` and `..` are left out of the index by design: lookups never match them.
    for slot in scan.entries.iter().filter(|s| s.kind == SlotKind::Entry) {
        assert!(
            index
                .lookup(&slot.name, |o| scan.entries.iter().find(|s| s.offset == o))
                .is_some(),
            "{:?} listed but not found",
            slot.name
        );
    }
    let raws: Vec<&RawEntry> = dir
        .chunks_exact(DIR_ENTRY_SIZE)
        .map(|c| c.try_into().expect("whole entry"))
        .collect();
    let free = |i: usize| i * DIR_ENTRY_SIZE >= end || is_free(raws[i]) || is_end(raws[i]);
    for count in 1..=21 {
        if let Some(at) = find_free_run(dir, count) {
            let first = at / DIR_ENTRY_SIZE;
            assert!(first + count <= raws.len());
            assert!(
                (first..first + count).all(free),
                "run of {count} at {at} not free"
            );
            let _ = end_marker_after(dir, at, count);
        } else {
            let _ = clusters_to_grow(dir, count, SECTOR);
        }
    }
    assert!(trailing_free(dir) <= raws.len());
    let mut lfn = LfnAssembler::new();
    for raw in raws {
        let _ = lfn.feed(raw);
    }
}

/// The name checks and short-name generation on a fuzzed name.
fn names(name: &str, mode: ShortnameMode) {
    let Ok(stored) = vfat_valid_longname(name) else {
        return;
    };
    let _ = short_only_form(stored, mode);
    // The first aliases taken, so the search moves on to hashed and later tails. (All of
    // them taken is a million tries, as in vfat: correct, but too slow for every input.)
    let mut taken = 0;
    let _ = generate_alias(stored, |_| {
        taken += 1;
        taken < 20
    });
    let mut calls = 0;
    let _ = vfat_create_shortname(stored, mode, |_| {
        calls += 1;
        calls < 3
    });
}

/// A FAT12 volume with `dir`'s bytes in its root and in a subdirectory.
fn on_volume(dir: &[u8], mode: ShortnameMode, name: &str) {
    let shape = Shape {
        ty: FatType::Fat12,
        clusters: 64,
        num_fats: 2,
        root_entries: ROOT_ENTRIES,
        ext_flags: 0,
    };
    let bpb = bpb_for(shape);
    let image = vec![0u8; bpb.total_sectors() as usize * SECTOR];
    let table = FatTable::new(&bpb, MemFat::new(image), None).expect("table");
    let Some(DirLocation::Fixed { offset, len }) = DirLocation::root(&bpb).ok() else {
        panic!("FAT12 root is a fixed region");
    };
    let (root_bytes, sub_bytes) = dir.split_at(dir.len().min(len));
    put(&table, offset, root_bytes);
    let sub = table
        .alloc(SUBDIR_CLUSTERS, None)
        .expect("subdirectory clusters");
    let cluster = SECTOR;
    for (i, &c) in sub.iter().enumerate() {
        let from = (i * cluster).min(sub_bytes.len());
        let to = ((i + 1) * cluster).min(sub_bytes.len());
        let at = bpb.cluster_to_sector(c).expect("data cluster") * SECTOR as u64;
        put(&table, at, &sub_bytes[from..to]);
    }
    let root = DirLocation::Fixed { offset, len };
    let chain = DirLocation::Chain { first: sub[0] };
    for loc in [root, chain] {
        one_directory(&table, &bpb, loc, mode, name);
    }
}

/// Writes `bytes` at byte `at` of the image.
fn put(table: &FatTable<MemFat>, at: u64, bytes: &[u8]) {
    table.store().write(at, bytes).expect("inside the image");
}

fn one_directory(
    table: &FatTable<MemFat>,
    bpb: &Bpb,
    loc: DirLocation,
    mode: ShortnameMode,
    name: &str,
) {
    let mut dir = Directory::load(table, bpb, loc, mode).expect("a well-linked directory loads");
    let listed: Vec<(String, usize)> = dir
        .entries()
        .map(|s| (s.name.to_string(), s.offset))
        .collect();
    for (n, offset) in &listed {
        assert!(dir.lookup(n).is_some(), "{n:?} listed but not found");
        assert!(dir.slot_at(*offset).is_some());
        assert!(dir.dev_offset(*offset).is_ok());
    }
    let _ = (dir.is_empty(), dir.subdirs(), dir.labels().len());
    let template = DirEntry::stamped(ATTR_ARCH, (0x21, 0, 0));
    if let Ok(slot) = dir.add(table, name, &template) {
        assert_eq!(dir.lookup(name).map(|s| s.offset), Some(slot.offset));
        let again = Directory::load(table, bpb, loc, mode).expect("reload after add");
        let found = again
            .slot_at(slot.offset)
            .expect("the added entry is on disk");
        assert!(
            names_equal(&found.name, name),
            "added {name:?}, read back {:?}",
            found.name
        );
        assert_eq!(again.lookup(name).map(|s| s.offset), Some(slot.offset));
        dir.remove(table, slot.offset)
            .expect("remove what was added");
        let again = Directory::load(table, bpb, loc, mode).expect("reload after remove");
        assert!(
            again.lookup(name).is_none(),
            "{name:?} still there after its removal"
        );
    }
    if let Some(&(_, offset)) = listed.first() {
        let _ = dir.remove(table, offset);
    }
}
