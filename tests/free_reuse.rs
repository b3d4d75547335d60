//! Reuse of freed clusters through the page cache, as a mount allocates them: a cluster
//! freed in the cached FAT may be handed out again only once the change that freed it is on
//! the disk. Otherwise a crash can leave the old chain (whose new end never reached the
//! disk) still running into a cluster that the new owner's chain, written later, names too:
//! two files sharing clusters, which the crash mount test saw once in 300 kills.
//!
//! "On the disk" is the image file as a FAT reader over its bytes sees it. Each check runs on
//! a FAT12, a FAT16 and a FAT32 volume made by fatcache's own mkfs, with two FATs.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fatcache::bug::OnBug;
use fatcache::dev::{FileDevice, IoQueue, Placement};
use fatcache::fat::bpb::{Bpb, FatType};
use fatcache::fat::mkfs::{MkfsOptions, mkfs};
use fatcache::fat::table::{FatEntry, FatStore, FatTable, MemFat};
use fatcache::fs::bdev::Bdev;
use fatcache::mm::{CacheConfig, Era, PageCache};

/// A scratch image, removed on drop.
struct Img(PathBuf);

impl Drop for Img {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The volumes each check runs on: type and image size.
const VOLUMES: [(FatType, u64); 3] = [
    (FatType::Fat12, 1440 * 1024),
    (FatType::Fat16, 32 << 20),
    (FatType::Fat32, 64 << 20),
];

/// A fresh image of `fat`, named after `test`.
fn image(test: &str, fat: FatType, size: u64) -> Img {
    let img = Img(std::env::temp_dir().join(format!(
        "fatcache-free-reuse-{}-{test}-{fat:?}.img",
        std::process::id()
    )));
    let opts = MkfsOptions {
        size,
        fat: Some(fat),
        ..MkfsOptions::default()
    };
    mkfs(&img.0, &opts).expect("mkfs");
    img
}

/// The volume's FAT over the page cache's block-device mapping, as a mount has it (the
/// tables written before the directories).
fn mount(path: &Path) -> (Bpb, FatTable<Bdev>) {
    let dev = Arc::new(FileDevice::open(path, Placement::default()).expect("open"));
    let q = Arc::new(IoQueue::new(dev, 2, Duration::ZERO).expect("queue"));
    let cfg = CacheConfig {
        on_bug: OnBug::Panic,
        ..CacheConfig::new(Era::V5_11, 512)
    };
    let bdev = Bdev::new(&PageCache::new(cfg).expect("cache"), q);
    let mut boot = [0u8; 512];
    bdev.read(0, &mut boot).expect("boot sector");
    let bpb = Bpb::parse(&boot).expect("bpb");
    bdev.set_order_boundary(bpb.first_fat_sector() * u64::from(bpb.bytes_per_sector));
    let table = FatTable::new(&bpb, bdev, None).expect("table");
    (bpb, table)
}

/// Each FAT on the image file now, as tables over its bytes (the copy at `n` moved to the
/// place of the first, so one reader serves them all).
fn on_disk(path: &Path, bpb: &Bpb) -> Vec<FatTable<MemFat>> {
    let bytes = std::fs::read(path).expect("read image");
    let bps = u64::from(bpb.bytes_per_sector);
    let len = usize::try_from(u64::from(bpb.sectors_per_fat()) * bps).expect("fat size");
    let first = usize::try_from(bpb.first_fat_sector() * bps).expect("fat offset");
    (0..usize::from(bpb.num_fats))
        .map(|n| {
            let mut b = bytes.clone();
            b.copy_within(first + n * len..first + (n + 1) * len, first);
            FatTable::new(bpb, MemFat::new(b), None).expect("table over the image")
        })
        .collect()
}

/// Every cluster in `handed_out` reads as free in every FAT of the image file: its freeing
/// (if it was ever used) reached the disk before the allocator gave it away. If it took a
/// cluster `end`'s chain lost, `end` reads as the end of that chain there too.
fn assert_free_on_disk(path: &Path, bpb: &Bpb, handed_out: &[u32], end: u32, what: &str) {
    for (n, fat) in on_disk(path, bpb).iter().enumerate() {
        for &c in handed_out {
            assert_eq!(
                fat.get(c).expect("entry"),
                FatEntry::Free,
                "{what}: cluster {c} was handed out while FAT {n} on the disk still had it used"
            );
        }
        if fat.get(end).expect("entry") != FatEntry::Eoc {
            let next = fat.chain(end).expect("the old chain, whole on the disk");
            assert!(
                !next.iter().any(|c| handed_out.contains(c)),
                "{what}: FAT {n} on the disk still runs from {end} into a cluster handed out"
            );
        }
    }
}

#[test]
fn a_chain_regrown_after_a_shrink_takes_its_freed_clusters_only_once_the_shrink_is_on_disk() {
    for (fat, size) in VOLUMES {
        let img = image("regrow", fat, size);
        let (bpb, table) = mount(&img.0);
        let chain = table.alloc(8, None).expect("alloc");
        table.store().sync().expect("sync");
        // A truncate to two clusters, then the file grows again: the allocator prefers the
        // clusters right after the chain's end, which are the ones just freed.
        assert_eq!(table.truncate_chain(chain[0], 2).expect("truncate"), 6);
        let grown = table.extend(chain[1], 6).expect("extend");
        let what = format!("{fat:?}, extend after truncate");
        assert_free_on_disk(&img.0, &bpb, &grown, chain[1], &what);
        assert!(
            !grown.iter().any(|c| chain[2..].contains(c)),
            "{what}: took clusters whose freeing is only in the cache"
        );
        // Once the shrink is on the disk, its clusters are the allocator's again.
        table.store().sync().expect("sync");
        assert_eq!(table.truncate_chain(chain[0], 2).expect("truncate"), 6);
        table.store().barrier().expect("barrier");
        let again = table.alloc(6, Some(chain[1])).expect("alloc");
        assert_eq!(
            again,
            chain[2..],
            "{fat:?}: the run freed first is taken once its freeing is on the disk"
        );
        assert_free_on_disk(&img.0, &bpb, &again, chain[1], &format!("{fat:?}, alloc"));
    }
}

#[test]
fn a_full_volume_puts_the_freeing_on_disk_and_then_reuses_the_clusters() {
    for (fat, size) in VOLUMES {
        let img = image("full", fat, size);
        let (bpb, table) = mount(&img.0);
        let all = table.free_count();
        let chain = table.alloc(all, None).expect("fill the volume");
        table.store().sync().expect("sync");
        assert_eq!(table.free_count(), 0);
        // Every free cluster now is one the truncate freed: the allocation must not fail, and
        // must not take them before the truncate is on the disk.
        table.truncate_chain(chain[0], 1).expect("truncate");
        let want = all / 2;
        let got = table
            .alloc(want, None)
            .expect("the freed clusters serve an allocation");
        assert_eq!(got.len(), want as usize);
        assert_free_on_disk(&img.0, &bpb, &got, chain[0], &format!("{fat:?}, full"));
        assert_eq!(table.free_count(), all - 1 - want);
        assert_eq!(table.count_free().expect("count"), all - 1 - want);
    }
}
