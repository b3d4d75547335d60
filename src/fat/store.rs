//! Where a mounted volume's FAT lives: the page cache's block-device mapping.
//!
//! FAT sectors are read and written through [`Bdev`], so they are cached, dirtied and written
//! back like any other page, in the cache's era.

use std::ops::Range;

use crate::error::FsError;
use crate::fat::table::FatStore;
use crate::fs::bdev::Bdev;
use crate::sync::Arc;

impl FatStore for Bdev {
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), FsError> {
        Bdev::read(self, offset, buf)
    }

    fn write(&self, offset: u64, buf: &[u8]) -> Result<(), FsError> {
        Bdev::write(self, offset, buf)
    }

    fn clean_aliases(&self, offset: u64, len: u64) {
        Bdev::clean_aliases(self, offset, len);
    }

    fn barrier(&self) -> Result<(), FsError> {
        Bdev::write_ordered(self)
    }

    fn order_writes(&self, first: Range<u64>, then: Range<u64>) -> bool {
        Bdev::order_writes(self, first, then)
    }

    fn write_epoch(&self) -> u64 {
        Bdev::write_epoch(self)
    }

    fn durable_epoch(&self) -> u64 {
        Bdev::durable_epoch(self)
    }
}

/// A shared store is a store: a mount shares one block-device mapping between the FAT and the
/// directories, so both see the same cached pages.
impl<T: FatStore + ?Sized> FatStore for Arc<T> {
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), FsError> {
        T::read(self, offset, buf)
    }

    fn write(&self, offset: u64, buf: &[u8]) -> Result<(), FsError> {
        T::write(self, offset, buf)
    }

    fn clean_aliases(&self, offset: u64, len: u64) {
        T::clean_aliases(self, offset, len);
    }

    fn barrier(&self) -> Result<(), FsError> {
        T::barrier(self)
    }

    fn order_writes(&self, first: Range<u64>, then: Range<u64>) -> bool {
        T::order_writes(self, first, then)
    }

    fn write_epoch(&self) -> u64 {
        T::write_epoch(self)
    }

    fn durable_epoch(&self) -> u64 {
        T::durable_epoch(self)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::path::{Path, PathBuf};
    use std::time::Duration;

    use crate::bug::OnBug;
    use crate::dev::{FileDevice, IoQueue, Placement};
    use crate::fat::bpb::{Bpb, FatType};
    use crate::fat::mkfs::{MkfsOptions, mkfs};
    use crate::fat::table::{FatEntry, FatTable};
    use crate::fs::bdev::Bdev;
    use crate::mm::{CacheConfig, Era, PageCache};
    use crate::sync::Arc;

    struct Img(PathBuf);
    impl Drop for Img {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn mount_bdev(path: &Path) -> Bdev {
        let dev = Arc::new(FileDevice::open(path, Placement::default()).expect("open"));
        let q = Arc::new(IoQueue::new(dev, 2, Duration::ZERO).expect("queue"));
        let cfg = CacheConfig {
            on_bug: OnBug::Panic,
            ..CacheConfig::new(Era::V5_11, 256)
        };
        Bdev::new(&PageCache::new(cfg).expect("cache"), q)
    }

    #[test]
    fn fat_chains_written_through_the_cache_survive_a_cold_remount() {
        for (fat, size) in [(FatType::Fat12, 1440 * 1024), (FatType::Fat16, 32 << 20)] {
            let img = Img(std::env::temp_dir().join(format!(
                "fatcache-store-{}-{:?}.img",
                std::process::id(),
                fat
            )));
            let opts = MkfsOptions {
                size,
                fat: Some(fat),
                ..MkfsOptions::default()
            };
            mkfs(&img.0, &opts).expect("mkfs");
            let chain = {
                let bdev = mount_bdev(&img.0);
                let mut boot = [0u8; 512];
                bdev.read(0, &mut boot).expect("boot sector");
                let bpb = Bpb::parse(&boot).expect("bpb");
                let table = FatTable::new(&bpb, bdev, None).expect("table");
                let before = table.free_count();
                let chain = table.alloc(5, None).expect("alloc");
                assert_eq!(table.free_count(), before - 5);
                table.store().sync().expect("sync");
                chain
            };
            let bdev = mount_bdev(&img.0);
            let mut boot = [0u8; 512];
            bdev.read(0, &mut boot).expect("boot sector");
            let bpb = Bpb::parse(&boot).expect("bpb");
            let table = FatTable::new(&bpb, bdev, None).expect("table");
            assert_eq!(table.chain(chain[0]).expect("chain"), chain, "{fat:?}");
            assert_eq!(table.get(chain[4]).expect("entry"), FatEntry::Eoc);
        }
    }
}
