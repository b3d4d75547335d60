//! Background writeback through the library: the flusher puts data and entries on the disk
//! of a mount where nobody syncs, does nothing when periodic writeback is off, and throttled
//! writers finish through it on a small cache.
//!
//! "On the disk" is judged by a second, read-only [`Volume::open`] of the image file, which
//! sees only what reached the file, and by `fsck.fat -n` (the dirty bit is set while mounted).

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::readers::{FAT16, FAT32, Layout, fsck_clean, fsck_clean_live, mkfs_fat};
use common::{TempDir, tools};
use fatcache::dev::Placement;
use fatcache::fat::volume::{MountOptions, Volume};
use fatcache::fs::fs_writeback::WritebackConfig;

const TEMP: &str = "writeback";

/// Bytes of the test file: several clusters and pages, not a multiple of either.
const FILE_BYTES: usize = 300_000;

fn image(test: &str, fat: Layout) -> Option<(TempDir, PathBuf)> {
    let _ = env_logger::builder().is_test(true).try_init();
    let name = format!("{test}-fat{}", fat.fat);
    tools(&name, ["mkfs.fat", "fsck.fat"])?;
    let dir = TempDir::new(TEMP, &name);
    let path = dir.0.join("v.img");
    mkfs_fat(&path, fat.fat, fat.kib, fat.sectors_per_cluster, "WBTEST")
        .unwrap_or_else(|e| panic!("mkfs: {e}"));
    Some((dir, path))
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 4096) as u8).collect()
}

/// What the image file holds now for `path`: its bytes, or None if it is not there (yet).
fn on_disk(image: &Path, path: &str) -> Option<Vec<u8>> {
    let vol = Volume::open(image, Placement::default(), 256).ok()?;
    let node = vol.lookup_path(path).ok()?;
    let mut buf = vec![0u8; FILE_BYTES + 1];
    let n = vol.read(&node, 0, &mut buf).ok()?;
    buf.truncate(n);
    Some(buf)
}

fn opts(writeback: WritebackConfig, frames: usize) -> MountOptions {
    MountOptions {
        cache_frames: frames,
        writeback,
        ..MountOptions::default()
    }
}

/// Writes `sub/data.bin` with the pattern and never syncs.
fn write_unsynced(vol: &Volume, data: &[u8]) {
    let sub = vol.mkdir(&vol.root(), "sub").expect("mkdir");
    let f = vol.create(&sub, "data.bin").expect("create");
    let mut at = 0;
    for chunk in data.chunks(10_000) {
        let n = vol.write(&f, at as u64, chunk).expect("write");
        assert_eq!(n, chunk.len());
        at += n;
    }
}

fn flusher_writes_without_sync(fat: Layout) {
    let Some((_dir, img)) = image("flusher_writes", fat) else {
        return;
    };
    let fast = WritebackConfig {
        interval: Duration::from_millis(20),
        expire: Duration::from_millis(50),
        ..WritebackConfig::default()
    };
    let vol = Volume::mount(&img, opts(fast, 2048)).expect("mount");
    let data = pattern(FILE_BYTES);
    write_unsynced(&vol, &data);
    let start = Instant::now();
    loop {
        if on_disk(&img, "sub/data.bin").as_deref() == Some(&data[..]) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the flusher did not put the file on the disk in 20 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    println!("FAT{}: on the disk after {:?}", fat.fat, start.elapsed());
    // Data, chain, entry and directory are consistent on the disk while still mounted (the
    // FSInfo free count is a hint written only at sync, as the kernel does). The entry may
    // be written a pass before the bdev pages that hold it reach the disk, so wait for fsck
    // to agree too.
    let start = Instant::now();
    while let Err(e) = fsck_clean_live(&img) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "fsck while mounted: {e}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let f = vol.flusher_stats();
    assert!(
        f.kupdate_passes >= 1 && f.pages_written >= (FILE_BYTES / 4096) as u64,
        "{f:?}"
    );
    vol.unmount().expect("unmount");
    fsck_clean(&img).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn flusher_writes_without_sync_fat16() {
    flusher_writes_without_sync(FAT16);
}

#[test]
fn flusher_writes_without_sync_fat32() {
    flusher_writes_without_sync(FAT32);
}

#[test]
fn without_periodic_writeback_nothing_reaches_the_disk_until_unmount() {
    let Some((_dir, img)) = image("no_periodic", FAT16) else {
        return;
    };
    let off = WritebackConfig {
        interval: Duration::ZERO,
        ..WritebackConfig::default()
    };
    let vol = Volume::mount(&img, opts(off, 2048)).expect("mount");
    let data = pattern(FILE_BYTES);
    write_unsynced(&vol, &data);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        on_disk(&img, "sub/data.bin"),
        None,
        "nothing dirty may reach the disk: no sync, no periodic writeback, under the thresholds"
    );
    assert_eq!(vol.flusher_stats().kupdate_passes, 0);
    vol.unmount().expect("unmount");
    assert_eq!(on_disk(&img, "sub/data.bin").as_deref(), Some(&data[..]));
    fsck_clean(&img).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn a_writer_over_the_dirty_limit_is_throttled_and_finishes() {
    let Some((_dir, img)) = image("throttled", FAT32) else {
        return;
    };
    // 1 MiB of cache, periodic writeback off: only the thresholds start writeback.
    let cfg = WritebackConfig {
        interval: Duration::ZERO,
        ..WritebackConfig::default()
    };
    let vol = Volume::mount(&img, opts(cfg, 256)).expect("mount");
    let f = vol.create(&vol.root(), "big.bin").expect("create");
    let chunk = pattern(64 * 1024);
    let total = 8 * 1024 * 1024;
    let mut at = 0u64;
    while at < total {
        assert_eq!(vol.write(&f, at, &chunk).expect("write"), chunk.len());
        at += chunk.len() as u64;
    }
    let s = vol.cache().stats();
    let fl = vol.flusher_stats();
    println!("cache {s:?}\nflusher {fl:?}");
    assert!(s.throttled >= 1, "8 MiB through 1 MiB of cache: {s:?}");
    assert!(fl.background_passes >= 1 && fl.pages_written > 0, "{fl:?}");
    assert_eq!(s.alloc_failures, 0, "{s:?}");
    drop(f);
    vol.unmount().expect("unmount");
    let check = Volume::open(&img, Placement::default(), 256).expect("open");
    let node = check.lookup_path("big.bin").expect("lookup");
    let mut buf = vec![0u8; chunk.len()];
    for i in 0..(total / chunk.len() as u64) {
        let n = check
            .read(&node, i * chunk.len() as u64, &mut buf)
            .expect("read");
        assert_eq!(n, chunk.len());
        assert!(buf == chunk, "chunk {i} differs");
    }
    fsck_clean(&img).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn readers_and_writers_on_a_cache_smaller_than_their_io_wait_instead_of_enomem() {
    let Some((_dir, img)) = image("tiny-cache", FAT32) else {
        return;
    };
    // 48 frames (192 KiB) against six threads each with up to 128 KiB in flight, on a device
    // that takes 200 us per request: every frame is often locked for a read or under
    // writeback at once, and an allocation must wait for one instead of failing.
    let mut o = opts(WritebackConfig::default(), 48);
    o.io_latency = Duration::from_micros(200);
    let vol = Volume::mount(&img, o).expect("mount");
    const FILE: usize = 1024 * 1024;
    let data: Vec<Vec<u8>> = (0..6u8)
        .map(|k| {
            (0..FILE)
                .map(|i| (i * 13 + usize::from(k) * 101 + i / 4096) as u8)
                .collect()
        })
        .collect();
    // Files 0-2 written first, then read back while files 3-5 are written.
    let files: Vec<_> = (0..6)
        .map(|k| {
            vol.create(&vol.root(), &format!("f{k}.bin"))
                .expect("create")
        })
        .collect();
    let write = |k: usize| {
        for (i, chunk) in data[k].chunks(128 * 1024).enumerate() {
            let n = vol
                .write(&files[k], (i * 128 * 1024) as u64, chunk)
                .unwrap_or_else(|e| panic!("write of file {k} chunk {i}: {e}"));
            assert_eq!(n, chunk.len());
        }
    };
    std::thread::scope(|s| {
        for k in 0..3 {
            s.spawn(move || write(k));
        }
    });
    vol.sync_fs().expect("sync");
    std::thread::scope(|s| {
        for k in 0..6 {
            let (vol, files, data) = (&vol, &files, &data);
            s.spawn(move || {
                if k >= 3 {
                    return write(k);
                }
                for round in 0..3 {
                    let mut buf = vec![0u8; 128 * 1024];
                    for at in (0..FILE).step_by(buf.len()) {
                        let n = vol
                            .read(&files[k], at as u64, &mut buf)
                            .unwrap_or_else(|e| panic!("read of file {k} at {at}: {e}"));
                        assert_eq!(n, buf.len());
                        assert!(
                            buf[..] == data[k][at..at + n],
                            "file {k} at {at}, round {round}"
                        );
                    }
                }
            });
        }
    });
    let s = vol.cache().stats();
    println!("cache {s:?}");
    assert_eq!(s.alloc_failures, 0, "{s:?}");
    drop(files);
    vol.unmount().expect("unmount");
    let check = Volume::open(&img, Placement::default(), 256).expect("open");
    for (k, want) in data.iter().enumerate() {
        let node = check.lookup_path(&format!("f{k}.bin")).expect("lookup");
        let mut buf = vec![0u8; FILE + 1];
        assert_eq!(check.read(&node, 0, &mut buf).expect("read"), FILE);
        assert!(buf[..FILE] == want[..], "file {k} on disk");
    }
    fsck_clean(&img).unwrap_or_else(|e| panic!("{e}"));
}
