//! FAT chain walking over a fuzzed FAT: input byte 0 picks the FAT type and mirroring, bytes
//! 1..3 the cluster count, bytes 3..7 the next-free hint, the next 32 bytes eight operations
//! (walk, truncate, free, allocate, extend, set, clean bit), the rest the start of the
//! primary FAT. Every walk must end; a cycle, a free or bad entry, or an entry outside the
//! data area is an error, never a hang or a panic; what a walk returns is a real chain; the
//! free count stays exact through every change.
#![no_main]

use std::collections::HashSet;

use fatcache::fat::bpb::{FatType, FsInfo};
use fatcache::fat::table::{FAT_START_ENT, FatEntry, FatTable, MemFat};
use fatcache_fuzz::{SECTOR, Shape, bpb_for};
use libfuzzer_sys::fuzz_target;

const HEADER: usize = 7;
const OPS: usize = 8;
/// Starts walked before the operations: the first clusters, where the fuzzed bytes are.
const WALKS: u32 = 64;

fuzz_target!(|data: &[u8]| {
    if data.len() < HEADER + OPS * 4 {
        return;
    }
    let (head, rest) = data.split_at(HEADER);
    let (ops, fat) = rest.split_at(OPS * 4);
    let pick = u32::from(u16::from_le_bytes([head[1], head[2]]));
    // FAT32 in one input of eight: its smallest FAT has 65,527 entries, and every scan of
    // them under the fuzzer's instrumentation costs as much as hundreds of FAT12 inputs.
    let (ty, clusters) = match head[0] % 8 {
        0..=3 => (FatType::Fat12, 1 + pick % 4084),
        4..=6 => (FatType::Fat16, 4085 + pick % 512),
        _ => (FatType::Fat32, 65_525 + pick % 512),
    };
    let ext_flags = match head[0] / 8 % 3 {
        0 => 0,
        n => 0x80 | u16::from(n - 1),
    };
    let num_fats = 2;
    let shape = Shape {
        ty,
        clusters,
        num_fats,
        root_entries: 16,
        ext_flags,
    };
    let bpb = bpb_for(shape);
    // The store holds the reserved sectors and the FATs; nothing past them is read.
    let spf = bpb.sectors_per_fat() as usize;
    let first_fat = bpb.first_fat_sector() as usize * SECTOR;
    let mut bytes = vec![0u8; first_fat + usize::from(num_fats) * spf * SECTOR];
    let active = bpb.active_fat().map_or(0, usize::from);
    let primary = first_fat + active * spf * SECTOR;
    let n = fat.len().min(spf * SECTOR);
    bytes[primary..primary + n].copy_from_slice(&fat[..n]);
    let hint = u32::from_le_bytes([head[3], head[4], head[5], head[6]]);
    let fsinfo = FsInfo {
        free_count: None,
        next_free: Some(hint),
    };
    let table = FatTable::new(&bpb, MemFat::new(bytes), Some(fsinfo)).expect("table");
    let max = table.max_cluster();
    assert_eq!(max, clusters + 1);
    for start in FAT_START_ENT..=max.min(FAT_START_ENT + WALKS) {
        walk(&table, start);
    }
    for op in ops.chunks_exact(4) {
        let arg = u32::from(u16::from_le_bytes([op[2], op[3]]));
        // Includes 0, 1 and two clusters past the end.
        let c = arg % (max + 3);
        let small = u32::from(op[1] % 9);
        match op[0] % 8 {
            0 => walk(&table, c),
            1 => {
                let _ = table.truncate_chain(c, small);
            }
            2 => {
                let _ = table.free_chain(c);
            }
            3 => {
                if let Ok(new) = table.alloc(small, Some(c)) {
                    assert_eq!(new.len(), small as usize);
                    if let Some(&first) = new.first() {
                        assert_eq!(table.chain(first).expect("a new chain walks"), new);
                    }
                }
            }
            4 => {
                let before = table.chain(c).ok();
                if let Ok(new) = table.extend(c, small)
                    && !new.is_empty()
                {
                    let mut whole = vec![c];
                    whole.extend(&new);
                    assert!(before.is_some(), "extended from a cluster that is no chain");
                    assert_eq!(table.chain(c).expect("an extended chain walks"), whole);
                }
            }
            5 => {
                let entry = match op[1] % 4 {
                    0 => FatEntry::Free,
                    1 => FatEntry::Eoc,
                    2 => FatEntry::Bad,
                    _ => FatEntry::Next(u32::from(op[1]) * 7 % (max + 3)),
                };
                let _ = table.set(c, entry);
            }
            6 => {
                let _ = table.next_in_chain(c);
                let _ = table.get(c);
            }
            _ => {
                let clean = op[1] & 1 != 0;
                if table.set_volume_clean_bit(clean).is_ok() && ty != FatType::Fat12 {
                    assert_eq!(table.volume_clean_bit().expect("clean bit"), Some(clean));
                }
            }
        }
        // A FAT32 scan is 65,525 entries: there, count once at the end.
        if ty != FatType::Fat32 {
            check_free(&table);
        }
    }
    check_free(&table);
});

/// The free count kept through the changes is the one a scan of the FAT finds.
fn check_free<S: fatcache::fat::table::FatStore>(table: &FatTable<S>) {
    if let Ok(counted) = table.count_free() {
        assert_eq!(table.free_count(), counted, "free count drifted");
    }
}

/// Walks the chain from `start`; what it returns must be a chain: distinct data clusters,
/// each the next of the one before, ending at end-of-chain.
fn walk<S: fatcache::fat::table::FatStore>(table: &FatTable<S>, start: u32) {
    let Ok(chain) = table.chain(start) else {
        return;
    };
    let mut seen = HashSet::new();
    for (i, &c) in chain.iter().enumerate() {
        assert!((FAT_START_ENT..=table.max_cluster()).contains(&c));
        assert!(seen.insert(c), "cluster {c} twice in a chain");
        let next = table.next_in_chain(c).expect("walked once already");
        assert_eq!(next, chain.get(i + 1).copied());
    }
}
