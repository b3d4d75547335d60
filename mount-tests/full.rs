//! A full volume: several writers at once fill small images (FAT12 floppy, FAT16 of 24 MiB,
//! FAT32) to ENOSPC, each counting the bytes write(2) acknowledged, then fsync. After the
//! unmount the image must hold every acknowledged byte and nothing past it (read by the
//! `fatfs` crate, not by fatcache), the FAT32 FSInfo free count must be the real count, and
//! `fsck.fat -n` must be clean. A full fixed root directory (FAT12/16) must refuse a create
//! and a mkdir with ENOSPC and leave the mount working.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fatcache::fat::bpb::{Bpb, FatType, FsInfo};

use crate::common::TempDir;
use crate::common::readers::{Node, fatfs_tree, mkfs_fat};
use crate::harness::{Fat, Mounted, Rng, Unmounted, fatcache_mkfs};

/// Writers filling the volume at once.
const WRITERS: usize = 4;

/// The byte at `offset` of writer `w`'s file: distinct per writer and per position, so a
/// byte of another file or a stale cluster shows.
fn pattern(w: usize, offset: u64) -> u8 {
    let x = offset.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17)
        ^ (w as u64 + 1).wrapping_mul(0xD6E8_FEB8_6659_FD93);
    (x >> 32) as u8 ^ (offset as u8)
}

/// `len` bytes of writer `w`'s pattern from `offset`.
fn pattern_at(w: usize, offset: u64, len: usize) -> Vec<u8> {
    (0..len as u64).map(|i| pattern(w, offset + i)).collect()
}

/// What one writer saw.
#[derive(Debug)]
struct Written {
    path: String,
    /// Bytes write(2) acknowledged, all at the end of what came before.
    acked: u64,
    /// How the writer stopped: the errno of the last write.
    stop: Option<i32>,
    /// Whether the fsync after ENOSPC returned.
    fsync_ok: bool,
}

/// Writer `w`: appends its pattern in chunks of varied size to `path` until write(2) fails,
/// keeping count of what each call acknowledged; a short write continues where it stopped.
fn writer(root: &Path, rel: &str, w: usize, seed: u64) -> Written {
    let mut rng = Rng::new(seed);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(root.join(rel))
        .unwrap_or_else(|e| panic!("create {rel}: {e}"));
    let mut acked = 0u64;
    let stop = loop {
        let len = 1 + rng.below(48 * 1024) as usize;
        let buf = pattern_at(w, acked, len);
        match f.write(&buf) {
            Ok(0) => break None,
            Ok(n) => acked += n as u64,
            Err(e) => break e.raw_os_error(),
        }
    };
    let fsync_ok = f.sync_all().is_ok();
    Written {
        path: rel.to_owned(),
        acked,
        stop,
        fsync_ok,
    }
}

/// The real free cluster count of `image`, from its first FAT, and the FSInfo free count
/// (FAT32 only).
fn free_counts(image: &Path) -> (u32, Option<u32>) {
    let bytes = fs::read(image).expect("read the image");
    let bpb = Bpb::parse(&bytes[..512]).expect("boot sector");
    let fat = bpb.first_fat_sector() as usize * usize::from(bpb.bytes_per_sector);
    let max = bpb.max_cluster();
    let entry = |c: u32| -> u32 {
        let c = c as usize;
        match bpb.fat_type() {
            FatType::Fat12 => {
                let at = fat + c * 3 / 2;
                let w = u32::from(u16::from_le_bytes([bytes[at], bytes[at + 1]]));
                if c % 2 == 0 { w & 0xFFF } else { w >> 4 }
            }
            FatType::Fat16 => u32::from(u16::from_le_bytes([
                bytes[fat + 2 * c],
                bytes[fat + 2 * c + 1],
            ])),
            FatType::Fat32 => {
                let at = fat + 4 * c;
                u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) & 0x0FFF_FFFF
            }
        }
    };
    let free = (2..=max).filter(|&c| entry(c) == 0).count() as u32;
    let info = bpb.fsinfo_sector().map(|s| {
        let at = s as usize * usize::from(bpb.bytes_per_sector);
        FsInfo::parse(&bytes[at..at + 512])
            .expect("FSInfo parses")
            .free_count
            .expect("FSInfo has a free count")
    });
    (free, info)
}

/// Makes the image of `fat` for this test in `scratch`: the floppy of the harness, FAT16 of
/// 24 MiB with 2 KiB clusters, FAT32 of 40 MiB with 512-byte clusters.
fn make_image(fat: Fat, scratch: &TempDir) -> PathBuf {
    let image = scratch.0.join(format!("{}.img", fat.name()));
    let made = match fat {
        Fat::F12 => mkfs_fat(&image, 12, 1440, 1, "FULL12"),
        Fat::F16 => mkfs_fat(&image, 16, 24 * 1024, 4, "FULL16"),
        Fat::F32 => fatcache_mkfs(&image, "40M", 32),
    };
    made.unwrap_or_else(|e| panic!("make the {} image: {e}", fat.name()));
    image
}

/// Fills `fat` to ENOSPC with [`WRITERS`] writers at once and checks the image after unmount.
fn fill(fat: Fat, seed: u64) {
    crate::harness::require_fuse();
    let scratch = TempDir::new("mount", &format!("full-{}", fat.name()));
    let image = make_image(fat, &scratch);
    let m = Mounted::on(scratch, image, "");
    fs::create_dir(m.path("sub")).expect("mkdir sub");
    let root = Arc::new(m.dir.clone());
    let mut rng = Rng::new(seed);
    let handles: Vec<_> = (0..WRITERS)
        .map(|w| {
            let root = Arc::clone(&root);
            // Half in the root, half in a subdirectory that grows as it fills.
            let rel = if w % 2 == 0 {
                format!("writer {w} with a long name.bin")
            } else {
                format!("sub/W{w}.DAT")
            };
            let s = rng.next();
            std::thread::spawn(move || writer(&root, &rel, w, s))
        })
        .collect();
    let written: Vec<Written> = handles
        .into_iter()
        .map(|h| h.join().expect("a writer"))
        .collect();
    for w in &written {
        assert_eq!(
            w.stop,
            Some(libc::ENOSPC),
            "{}: {}: the writer stopped on something other than ENOSPC ({:?})",
            fat.name(),
            w.path,
            w.stop
        );
        assert!(
            w.fsync_ok,
            "{}: fsync of {} failed on a full volume",
            fat.name(),
            w.path
        );
        let len = fs::metadata(m.path(&w.path)).expect("stat").len();
        assert_eq!(
            len,
            w.acked,
            "{}: {} is {len} bytes through the mount, {} were acknowledged",
            fat.name(),
            w.path,
            w.acked
        );
    }
    // Full, but for less than a page of clusters: each new directory takes one of those, and
    // then mkdir must be refused cleanly.
    let mut dirs = 0;
    let e = loop {
        match fs::create_dir(m.path(&format!("sub/more{dirs}"))) {
            Ok(()) => dirs += 1,
            Err(e) => break e,
        }
        assert!(dirs <= 8, "{}: {dirs} mkdirs on a full volume", fat.name());
    };
    assert_eq!(
        e.raw_os_error(),
        Some(libc::ENOSPC),
        "{}: mkdir on a full volume: {e}",
        fat.name()
    );
    // One file read back through the mount, as a sanity check of the cache's copy.
    let first = &written[0];
    let mut back = Vec::new();
    File::open(m.path(&first.path))
        .and_then(|mut f| f.read_to_end(&mut back))
        .expect("read back");
    assert!(
        back == pattern_at(0, 0, back.len()),
        "{}: read back through the mount differs",
        fat.name()
    );
    let kept = m.finish();
    let tree = fatfs_tree(&kept.image).unwrap_or_else(|e| panic!("{}: fatfs: {e}", fat.name()));
    let total: u64 = written.iter().map(|w| w.acked).sum();
    for (i, w) in written.iter().enumerate() {
        let Some(Node::File(data)) = tree.get(&format!("/{}", w.path)) else {
            panic!("{}: {} missing on the image", fat.name(), w.path);
        };
        assert_eq!(
            data.len() as u64,
            w.acked,
            "{}: {} holds {} bytes on the image, {} were acknowledged",
            fat.name(),
            w.path,
            data.len(),
            w.acked
        );
        if let Some(at) = data
            .iter()
            .enumerate()
            .position(|(o, &b)| b != pattern(i, o as u64))
        {
            panic!(
                "{}: {}: byte {at} is not what was written",
                fat.name(),
                w.path
            );
        }
    }
    let (free, info) = free_counts(&kept.image);
    if let Some(info) = info {
        assert_eq!(
            info,
            free,
            "{}: FSInfo says {info} free clusters after unmount, the FAT has {free}",
            fat.name()
        );
    }
    // Every writer met ENOSPC, each for at most one page of clusters, and nothing was freed
    // since: what is left is less than a page, plus what a failed write gave back.
    let cluster = crate::harness::cluster_size(&kept.image);
    assert!(
        u64::from(free) * cluster < 2 * 4096,
        "{}: {free} clusters of {cluster} bytes still free after every writer met ENOSPC",
        fat.name()
    );
    println!(
        "full {}: {WRITERS} writers, {total} bytes acknowledged, {free} clusters free at the end",
        fat.name()
    );
    refill(fat, &kept, &written);
}

/// Round two on the full image: space freed by an unlink and a truncate, an extending
/// truncate far past what is free (ENOSPC, keeping only what it zero-filled), and a writer
/// filling the rest; after the unmount FSInfo must still count exactly and the files hold
/// what was acknowledged.
fn refill(fat: Fat, kept: &Unmounted, written: &[Written]) {
    let m = Mounted::on_shared(Arc::clone(&kept.scratch), kept.image.clone(), "");
    fs::remove_file(m.path(&written[0].path)).expect("unlink");
    let half = written[1].acked / 2;
    OpenOptions::new()
        .write(true)
        .open(m.path(&written[1].path))
        .and_then(|f| f.set_len(half))
        .expect("truncate to half");
    let big = File::create(m.path("big")).expect("create big");
    let e = big
        .set_len(1 << 30)
        .expect_err("an extending truncate past the free space");
    assert_eq!(
        e.raw_os_error(),
        Some(libc::ENOSPC),
        "{}: extending truncate on a full volume: {e}",
        fat.name()
    );
    drop(big);
    let big_len = fs::metadata(m.path("big")).expect("stat big").len();
    // Whatever the failed truncate left is freed again before the writer runs.
    fs::remove_file(m.path("big")).expect("unlink big");
    let again = writer(&m.dir, "refill.bin", WRITERS + 1, 0x5eed);
    assert_eq!(
        again.stop,
        Some(libc::ENOSPC),
        "{}: refill: {again:?}",
        fat.name()
    );
    assert!(
        again.acked > 0,
        "{}: nothing fitted in the freed space",
        fat.name()
    );
    let kept = m.finish();
    let tree = fatfs_tree(&kept.image).unwrap_or_else(|e| panic!("{}: fatfs: {e}", fat.name()));
    let mut expect: Vec<(String, usize, u64)> = vec![
        (written[1].path.clone(), 1, half),
        (again.path.clone(), WRITERS + 1, again.acked),
    ];
    for (i, w) in written.iter().enumerate().skip(2) {
        expect.push((w.path.clone(), i, w.acked));
    }
    for (path, w, len) in expect {
        let Some(Node::File(data)) = tree.get(&format!("/{path}")) else {
            panic!(
                "{}: {path} missing on the image after the refill",
                fat.name()
            );
        };
        assert_eq!(
            data.len() as u64,
            len,
            "{}: {path}: size after the refill",
            fat.name()
        );
        if let Some(at) = data
            .iter()
            .enumerate()
            .position(|(o, &b)| b != pattern(w, o as u64))
        {
            panic!("{}: {path}: byte {at} is not what was written", fat.name());
        }
    }
    assert!(
        !tree.contains_key(&format!("/{}", written[0].path)) && !tree.contains_key("/big"),
        "{}: an unlinked file is still on the image",
        fat.name()
    );
    let (free, info) = free_counts(&kept.image);
    if let Some(info) = info {
        assert_eq!(
            info,
            free,
            "{}: FSInfo says {info} free clusters after the refill, the FAT has {free}",
            fat.name()
        );
    }
    println!(
        "full {} refill: {} bytes acknowledged, big kept {big_len} bytes before its unlink, \
         {free} clusters free",
        fat.name(),
        again.acked
    );
}

#[test]
fn writers_fill_fat12_to_enospc_and_keep_every_acknowledged_byte() {
    fill(Fat::F12, 12);
}

#[test]
fn writers_fill_fat16_to_enospc_and_keep_every_acknowledged_byte() {
    fill(Fat::F16, 16);
}

#[test]
fn writers_fill_fat32_to_enospc_and_fsinfo_counts_exactly() {
    fill(Fat::F32, 32);
}

/// A full fixed root directory: creates and mkdirs past its last slot get ENOSPC, nothing
/// breaks, and the image stays clean.
#[test]
fn a_full_fixed_root_refuses_create_and_mkdir_with_enospc() {
    let m = Mounted::new(Fat::F12, "fullroot", "");
    let mut made = Vec::new();
    let err = loop {
        // Long names take several slots each, so the last ones may not fit where a short
        // one still would.
        let name = format!("entry number {} with a long name", made.len());
        match File::create(m.path(&name)) {
            Ok(_) => made.push(name),
            Err(e) => break e,
        }
        assert!(made.len() <= 224, "more entries than a 224-slot root holds");
    };
    assert_eq!(
        err.raw_os_error(),
        Some(libc::ENOSPC),
        "create in a full root: {err}"
    );
    // Fill the last slots with short names (one slot each): then the root is full.
    let mut short = 0;
    let e = loop {
        match File::create(m.path(&format!("S{short}"))) {
            Ok(_) => short += 1,
            Err(e) => break e,
        }
        assert!(short <= 224, "more entries than a 224-slot root holds");
    };
    assert_eq!(
        e.raw_os_error(),
        Some(libc::ENOSPC),
        "short create in a full root: {e}"
    );
    // A mkdir (which takes a cluster before it needs a slot) and creates of either kind of
    // name are refused cleanly, and again.
    for _ in 0..2 {
        let e = fs::create_dir(m.path("D")).expect_err("mkdir in a full root");
        assert_eq!(
            e.raw_os_error(),
            Some(libc::ENOSPC),
            "mkdir in a full root: {e}"
        );
        let e = fs::create_dir(m.path("a directory too")).expect_err("mkdir in a full root");
        assert_eq!(
            e.raw_os_error(),
            Some(libc::ENOSPC),
            "mkdir in a full root: {e}"
        );
        let e = File::create(m.path("X")).expect_err("create in a full root");
        assert_eq!(
            e.raw_os_error(),
            Some(libc::ENOSPC),
            "create in a full root: {e}"
        );
    }
    // The mount still works: the names are listed, and a file can be written.
    let listed = crate::harness::names(&m.dir);
    assert_eq!(listed.len(), made.len() + short, "listing of the full root");
    let mut f = OpenOptions::new()
        .write(true)
        .open(m.path(&made[0]))
        .expect("open a file of the full root");
    f.write_all(b"still writable").expect("write");
    drop(f);
    // Removing one makes room for one short name again.
    fs::remove_file(m.path("S0")).expect("unlink");
    File::create(m.path("T0")).expect("create in the freed slot");
    m.finish();
}
