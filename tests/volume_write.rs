//! Write-side image tests of the FAT layer, without FUSE: each scenario is written once and
//! runs on a FAT12, a FAT16 and a FAT32 image made by mkfs.fat. A test mounts the image
//! read-write through `fatcache::fat::volume::Volume`, changes it while keeping the tree it
//! expects, unmounts, and then requires `fsck.fat -n` to be clean (the dirty bit included) and
//! mtools, the `fatfs` crate and fatcache's own read-only reader all to see that tree, byte for
//! byte (`tests/common/readers.rs`). Free-cluster counts are checked against what the
//! operations must have allocated or freed. Tests print a line and skip when dosfstools or
//! mtools are missing.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use common::readers::{
    FAT12, FAT16, FAT32, FsckMode, Layout, Node as TNode, Tree, assert_trees_agree, check_trees,
    compare_trees, exchange_in_tree, fsck_clean, fsck_clean_allow_dirty, mkfs_fat, noise,
};
use common::{TempDir, fnv1a64, tools};
use fatcache::FsError;
use fatcache::dev::Placement;
use fatcache::fat::bpb::Bpb;
use fatcache::fat::volume::{MountOptions, Node, Volume};

/// The prefix of this binary's temporary directories.
const TEMP: &str = "volume_write";

/// The tools every test here runs (mkfs, the fsck check, the mtools reader).
const TOOLS: [&str; 3] = ["mkfs.fat", "fsck.fat", "mcopy"];

/// Page-cache frames of a test mount: small enough that the bigger tests go through
/// writeback and reclaim while they write.
const FRAMES: usize = 2048;

/// Page size of the cache, for offsets that straddle pages.
const PAGE: usize = 4096;

/// Offset of the free-cluster count in the FSInfo sector.
const FSINFO_FREE_COUNT: usize = 488;

/// 4 GiB - 1, the largest FAT file.
const MAX_FILE: u64 = 0xFFFF_FFFF;

/// The non-ASCII name the tests create: Latin, a dash outside Latin-1, and CJK.
const UNICODE_NAME: &str = "Gr\u{fc}\u{df}e \u{2013} \u{4f60}\u{597d}.txt";

/// A fresh image of one FAT type in a private directory, removed on drop.
struct Image {
    _dir: TempDir,
    path: PathBuf,
    fat: Layout,
}

/// A fresh image for `test` on `fat`, or `None` (after a line saying why) without the tools.
fn image(test: &str, fat: Layout) -> Option<Image> {
    let _ = env_logger::builder().is_test(true).try_init();
    let name = format!("{test}-fat{}", fat.fat);
    tools(&name, TOOLS)?;
    let dir = TempDir::new(TEMP, &name);
    let path = dir.0.join("v.img");
    let made = mkfs_fat(&path, fat.fat, fat.kib, fat.sectors_per_cluster, "WTEST");
    made.unwrap_or_else(|e| panic!("mkfs: {e}"));
    Some(Image {
        _dir: dir,
        path,
        fat,
    })
}

/// One `#[test]` per FAT type for each scenario: `<scenario>::fat12`, `::fat16`, `::fat32`.
macro_rules! per_fat {
    ($($test:ident),* $(,)?) => {$(
        mod $test {
            #[test]
            fn fat12() {
                super::run(stringify!($test), super::FAT12, super::$test);
            }
            #[test]
            fn fat16() {
                super::run(stringify!($test), super::FAT16, super::$test);
            }
            #[test]
            fn fat32() {
                super::run(stringify!($test), super::FAT32, super::$test);
            }
        }
    )*};
}

per_fat!(
    write_read,
    dirs,
    rename,
    unlink_rmdir,
    truncate,
    enospc,
    many_files,
    names,
    efbig,
    read_only,
    sync_mount,
    dirty_bit,
    fsync_durability,
    reused_dir_cluster,
    read_past_cache,
    exchange,
    link_counts,
    dir_times,
    rename_crash_order,
);

/// Runs `body` on a fresh image of `fat`, timing it.
fn run(test: &str, fat: Layout, body: fn(&Image)) {
    let Some(img) = image(test, fat) else {
        return;
    };
    let start = Instant::now();
    body(&img);
    println!("{test} on FAT{}: {:?}", fat.fat, start.elapsed());
}

// ---------------------------------------------------------------------------------------
// Helpers

/// The options of a test mount: read-write, a cache of [`FRAMES`].
fn opts() -> MountOptions {
    MountOptions {
        cache_frames: FRAMES,
        ..MountOptions::default()
    }
}

/// Mounts the image read-write.
fn mount(img: &Image) -> Volume {
    let vol = Volume::mount(&img.path, opts()).unwrap_or_else(|e| panic!("mount: {e}"));
    assert!(!vol.read_only(), "a writable image mounted read-only");
    vol
}

/// Opens the image read-only, in a cache of its own.
fn open_ro(path: &Path) -> Volume {
    Volume::open(path, Placement::default(), FRAMES).unwrap_or_else(|e| panic!("open: {e}"))
}

#[track_caller]
fn unmount(vol: Volume) {
    vol.unmount().unwrap_or_else(|e| panic!("unmount: {e}"));
}

/// `r` failed with `errno`.
#[track_caller]
fn assert_errno<T>(r: Result<T, FsError>, errno: i32, what: &str) {
    match r {
        Ok(_) => panic!("{what}: succeeded, expected errno {errno}"),
        Err(e) => assert_eq!(e.errno(), errno, "{what}: {e}"),
    }
}

/// `path` split into its parent directory's path and its last name.
fn split(path: &str) -> (&str, &str) {
    let (parent, name) = path.rsplit_once('/').expect("an absolute path");
    (if parent.is_empty() { "/" } else { parent }, name)
}

#[track_caller]
fn lookup(vol: &Volume, path: &str) -> Arc<Node> {
    vol.lookup_path(path)
        .unwrap_or_else(|e| panic!("lookup {path}: {e}"))
}

/// Creates the file `path` holding `data`, and records it in `t`.
#[track_caller]
fn put(vol: &Volume, t: &mut Tree, path: &str, data: &[u8]) -> Arc<Node> {
    let (parent, name) = split(path);
    let dir = lookup(vol, parent);
    let node = vol
        .create(&dir, name)
        .unwrap_or_else(|e| panic!("create {path}: {e}"));
    write_at(vol, t, path, &node, 0, data);
    assert!(
        t.insert(path.to_owned(), TNode::File(data.to_vec()))
            .is_none()
    );
    node
}

/// Makes the directory `path` and records it in `t`.
#[track_caller]
fn mkdir(vol: &Volume, t: &mut Tree, path: &str) -> Arc<Node> {
    let (parent, name) = split(path);
    let dir = lookup(vol, parent);
    let node = vol
        .mkdir(&dir, name)
        .unwrap_or_else(|e| panic!("mkdir {path}: {e}"));
    assert!(node.is_dir());
    assert!(t.insert(path.to_owned(), TNode::Dir).is_none());
    node
}

/// Writes all of `data` at `off` of `node` (the file `path`), and the same into `t`.
#[track_caller]
fn write_at(vol: &Volume, t: &mut Tree, path: &str, node: &Node, off: u64, data: &[u8]) {
    let n = vol
        .write(node, off, data)
        .unwrap_or_else(|e| panic!("write {path} at {off}: {e}"));
    assert_eq!(n, data.len(), "{path}: short write at {off}");
    if let Some(TNode::File(bytes)) = t.get_mut(path) {
        model_write(bytes, off as usize, data);
    }
}

/// `data` written at `off` of `bytes`, a gap before it filled with zeros.
fn model_write(bytes: &mut Vec<u8>, off: usize, data: &[u8]) {
    if bytes.len() < off + data.len() {
        bytes.resize(off + data.len(), 0);
    }
    bytes[off..off + data.len()].copy_from_slice(data);
}

/// The bytes `t` expects in the file `path`.
fn model<'a>(t: &'a Tree, path: &str) -> &'a [u8] {
    match t.get(path) {
        Some(TNode::File(b)) => b,
        other => panic!("{path}: not a file in the model: {other:?}"),
    }
}

/// The whole file, in reads of an odd size so they straddle pages and clusters; the length
/// must be the node's size.
fn read_all(vol: &Volume, node: &Node) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 1531];
    loop {
        let n = vol
            .read(node, out.len() as u64, &mut buf)
            .unwrap_or_else(|e| panic!("read at {}: {e}", out.len()));
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    assert_eq!(out.len() as u64, node.size(), "bytes read vs size");
    out
}

/// The tree as the mounted volume shows it (listing, child_at, read).
fn vol_tree(vol: &Volume) -> Tree {
    let mut t = Tree::new();
    vol_walk(vol, &vol.root(), "", &mut t);
    t
}

fn vol_walk(vol: &Volume, dir: &Node, prefix: &str, t: &mut Tree) {
    let items = vol
        .read_dir(dir)
        .unwrap_or_else(|e| panic!("read_dir {prefix}/: {e}"));
    for item in items {
        let path = format!("{prefix}/{}", item.name);
        let node = vol
            .child_at(dir, item.offset)
            .unwrap_or_else(|e| panic!("child_at {path}: {e}"));
        assert_eq!(node.is_dir(), item.entry.is_dir(), "{path}: kind");
        let new = if node.is_dir() {
            let new = t.insert(path.clone(), TNode::Dir).is_none();
            vol_walk(vol, &node, &path, t);
            new
        } else {
            let data = read_all(vol, &node);
            assert_eq!(
                data.len() as u64,
                u64::from(item.entry.size),
                "{path}: size"
            );
            t.insert(path.clone(), TNode::File(data)).is_none()
        };
        assert!(new, "{path}: listed twice");
    }
}

/// The mounted volume shows exactly `t`.
#[track_caller]
fn assert_vol_tree(vol: &Volume, t: &Tree, when: &str) {
    if let Err(diff) = compare_trees(t, &vol_tree(vol)) {
        panic!("{when}: the volume differs from the expected tree:\n{diff}");
    }
}

/// Clusters `bytes` of file data take.
fn clusters(bytes: usize, cluster_size: u32) -> u32 {
    u32::try_from(bytes.div_ceil(cluster_size as usize)).expect("cluster count")
}

/// FNV-1a 64 of the whole image file.
fn image_hash(path: &Path) -> u64 {
    fnv1a64(&fs::read(path).expect("read the image"))
}

/// Whether the boot sector on disk has the dirty bit (state byte bit 0: offset 37 on
/// FAT12/16, 65 on FAT32), read from the image file itself.
fn dirty_on_disk(img: &Image) -> bool {
    let boot = fs::read(&img.path).expect("read the image");
    let at = if img.fat.fat == 32 { 65 } else { 37 };
    boot[at] & 1 != 0
}

/// [`check_trees`] with the dirty bit allowed, for a volume still mounted or crashed, run on
/// a copy whose FAT32 FSInfo free count is the true one, counted from the FAT. That count is
/// a hint, which the kernel writes only at sync_fs, unmount and the FSInfo inode's writeback,
/// so a live or crashed volume may carry a stale one, which fsck.fat reports.
fn check_dirty(img: &Image, t: &Tree) -> Result<(), String> {
    let mut bytes = fs::read(&img.path).map_err(|e| format!("read the image: {e}"))?;
    if img.fat.fat == 32 {
        let u16_at = |at: usize| usize::from(u16::from_le_bytes([bytes[at], bytes[at + 1]]));
        let u32_at = |at: usize| {
            let b = [bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]];
            u32::from_le_bytes(b) as usize
        };
        let (bps, spc) = (u16_at(11), usize::from(bytes[13]));
        let (reserved, fats, total) = (u16_at(14), usize::from(bytes[16]), u32_at(32));
        let (fat_sectors, fsinfo) = (u32_at(36), u16_at(48));
        let data_start = reserved + fats * fat_sectors;
        let clusters = (total - data_start) / spc;
        let fat = reserved * bps;
        let free = (2..clusters + 2)
            .filter(|c| u32_at(fat + 4 * c) & 0x0FFF_FFFF == 0)
            .count();
        let at = fsinfo * bps + FSINFO_FREE_COUNT;
        let free = u32::try_from(free).expect("a cluster count");
        bytes[at..at + 4].copy_from_slice(&free.to_le_bytes());
    }
    let copy = img.path.with_extension("check.img");
    fs::write(&copy, &bytes).map_err(|e| format!("write {}: {e}", copy.display()))?;
    let r = check_trees(&copy, t, FsckMode::AllowDirty);
    let _ = fs::remove_file(&copy);
    r
}

/// The first cluster the `..` entry of the directory at `first` names, read from the image
/// file; asserts that `..` is the second entry.
fn dotdot_on_disk(path: &Path, bpb: &Bpb, first: u32) -> u32 {
    let sector = bpb.cluster_to_sector(first).expect("a data cluster");
    let at = (sector * u64::from(bpb.bytes_per_sector)) as usize + 32;
    let image = fs::read(path).expect("read the image");
    let e = &image[at..at + 32];
    assert_eq!(&e[..11], b"..         ", "second entry of cluster {first}");
    let lo = u32::from(u16::from_le_bytes([e[26], e[27]]));
    let hi = u32::from(u16::from_le_bytes([e[20], e[21]]));
    lo | hi << 16
}

// ---------------------------------------------------------------------------------------
// 1. create, write, append, overwrite, read back

fn write_read(img: &Image) {
    let vol = mount(img);
    let cs = vol.statfs().cluster_size;
    let c = cs as usize;
    let root = vol.root();
    let mut t = Tree::new();
    // Sizes at the edges of sectors, clusters and pages, each a file of its own.
    #[rustfmt::skip]
    let sizes = [0, 1, 511, 512, 513, c - 1, c, c + 1, 4095, 4096, 4097, 3 * PAGE + 7];
    let mut files = Vec::new();
    for (i, _) in sizes.iter().enumerate() {
        let path = format!("/size{i:02}.bin");
        files.push(put(&vol, &mut t, &path, &[]));
    }
    let big_path = "/big file.bin";
    let big = put(&vol, &mut t, big_path, &[]);
    // Every entry made: from here on only file data takes clusters.
    let free0 = vol.statfs().free;
    for (i, &n) in sizes.iter().enumerate() {
        let path = format!("/size{i:02}.bin");
        write_at(&vol, &mut t, &path, &files[i], 0, &noise(n, i as u64 + 1));
        assert_eq!(files[i].size(), n as u64, "{path}: size");
        assert_eq!(files[i].entry().size, n as u32, "{path}: entry size");
        assert_eq!(files[i].entry().first_cluster == 0, n == 0, "{path}");
    }
    // 300 KB in writes of an odd length, each straddling page and cluster edges.
    let data = noise(300_017, 99);
    for (k, chunk) in data.chunks(7919).enumerate() {
        write_at(&vol, &mut t, big_path, &big, (k * 7919) as u64, chunk);
    }
    assert_eq!(read_all(&vol, &big), data);
    // Append, then overwrite in the middle across pages 2..5 and several clusters.
    let len = big.size();
    write_at(&vol, &mut t, big_path, &big, len, &noise(12_345, 7));
    write_at(
        &vol,
        &mut t,
        big_path,
        &big,
        3 * PAGE as u64 - 1234,
        &noise(9000, 8),
    );
    // One byte at an odd place, and a write across the end of the file.
    write_at(&vol, &mut t, big_path, &big, 77_777, &[0xA5]);
    let len = big.size();
    write_at(&vol, &mut t, big_path, &big, len - 100, &noise(1000, 9));
    // A write past the end leaves a gap that reads as zeros.
    let len = big.size();
    write_at(&vol, &mut t, big_path, &big, len + 5003, &noise(777, 10));
    let want = model(&t, big_path).to_vec();
    assert_eq!(big.size(), want.len() as u64);
    assert_eq!(read_all(&vol, &big), want, "{big_path} before unmount");
    // Reads at odd offsets and lengths, and past the end.
    for (off, n) in [
        (1usize, 10_000usize),
        (4095, 2),
        (c - 3, 2 * c + 5),
        (want.len() - 5, 100),
    ] {
        let mut buf = vec![0u8; n];
        let got = vol.read(&big, off as u64, &mut buf).expect("read");
        let end = (off + n).min(want.len());
        assert_eq!(&buf[..got], &want[off..end], "read at {off}");
    }
    let mut buf = [0u8; 16];
    assert_eq!(
        vol.read(&big, want.len() as u64, &mut buf).expect("read"),
        0
    );
    assert_eq!(
        vol.read(&big, want.len() as u64 + 9999, &mut buf)
            .expect("read"),
        0
    );
    // Exactly the data's clusters were taken.
    let used: u32 = t
        .values()
        .map(|n| match n {
            TNode::File(b) => clusters(b.len(), cs),
            TNode::Dir => 0,
        })
        .sum();
    assert_eq!(
        vol.statfs().free,
        free0 - used,
        "free clusters after the writes"
    );
    assert_vol_tree(&vol, &t, "before unmount");
    drop((files, big, root));
    unmount(vol);
    assert_trees_agree(&img.path, &t);
    // Again through a new mount; then another unmount leaves it as it was.
    let vol = mount(img);
    assert_vol_tree(&vol, &t, "after remount");
    assert_eq!(
        vol.statfs().free,
        free0 - used,
        "free clusters after remount"
    );
    let big = lookup(&vol, "/BIG FILE.BIN");
    assert_eq!(read_all(&vol, &big), want);
    drop(big);
    unmount(vol);
    assert_trees_agree(&img.path, &t);
}

// ---------------------------------------------------------------------------------------
// 2. directories: nesting, errors, a directory of several clusters

fn dirs(img: &Image) {
    let vol = mount(img);
    let cs = vol.statfs().cluster_size;
    let mut t = Tree::new();
    let free0 = vol.statfs().free;
    let a = mkdir(&vol, &mut t, "/alpha");
    mkdir(&vol, &mut t, "/alpha/Beta dir");
    mkdir(&vol, &mut t, "/alpha/Beta dir/gamma.d");
    mkdir(&vol, &mut t, "/alpha/empty");
    // Each directory takes one cluster, whatever the FAT type.
    assert_eq!(vol.statfs().free, free0 - 4, "four directories");
    put(&vol, &mut t, "/alpha/one.txt", b"one\n");
    put(
        &vol,
        &mut t,
        "/alpha/Beta dir/two.txt",
        &noise(2 * cs as usize - 1, 2),
    );
    let three = "/alpha/Beta dir/gamma.d/three.bin";
    put(&vol, &mut t, three, &noise(3 * cs as usize + 5, 3));
    let n1 = lookup(&vol, three);
    let n2 = lookup(&vol, "/ALPHA/beta DIR/Gamma.D/THREE.BIN");
    assert_eq!(n1.ino(), n2.ino(), "lookup is case-insensitive");
    assert_eq!(read_all(&vol, &n2), model(&t, three));
    // The errors of the namespace.
    let root = vol.root();
    let one = lookup(&vol, "/alpha/one.txt");
    assert_errno(
        vol.mkdir(&root, "ALPHA"),
        libc::EEXIST,
        "mkdir over a directory",
    );
    assert_errno(
        vol.create(&root, "Alpha"),
        libc::EEXIST,
        "create over a directory",
    );
    assert_errno(vol.mkdir(&a, "ONE.TXT"), libc::EEXIST, "mkdir over a file");
    assert_errno(vol.mkdir(&one, "x"), libc::ENOTDIR, "mkdir in a file");
    assert_errno(vol.create(&one, "x"), libc::ENOTDIR, "create in a file");
    assert_errno(vol.lookup(&one, "x"), libc::ENOTDIR, "lookup in a file");
    assert_errno(vol.read_dir(&one), libc::ENOTDIR, "read_dir of a file");
    assert_errno(
        vol.lookup_path("/alpha/one.txt/x"),
        libc::ENOTDIR,
        "path through a file",
    );
    assert_errno(
        vol.lookup_path("/alpha/nothing"),
        libc::ENOENT,
        "missing name",
    );
    assert_errno(
        vol.lookup_path("/nothing/x"),
        libc::ENOENT,
        "missing directory",
    );
    assert_errno(vol.write(&a, 0, b"x"), libc::EISDIR, "write to a directory");
    let mut buf = [0u8; 4];
    assert_errno(
        vol.read(&a, 0, &mut buf),
        libc::EISDIR,
        "read of a directory",
    );
    // A directory of several clusters: 60 names of 43 characters, four long-name slots and a
    // short entry each, 300 entries with `.` and `..`.
    let big = mkdir(&vol, &mut t, "/alpha/big dir");
    let before = vol.statfs().free;
    let name = |i: usize| format!("a rather long file name number {i:03} here.txt");
    for i in 0..60 {
        put(&vol, &mut t, &format!("/alpha/big dir/{}", name(i)), &[]);
    }
    let entries = 2 + 60 * 5;
    let want = clusters(entries * 32, cs) - 1;
    assert_eq!(
        before - vol.statfs().free,
        want,
        "clusters the big directory grew by"
    );
    for i in 0..60 {
        let path = format!("/alpha/big dir/{}", name(i));
        let node = vol.lookup(&big, &name(i).to_uppercase()).expect("lookup");
        write_at(&vol, &mut t, &path, &node, 0, &noise(i * 13, i as u64));
    }
    let listed: Vec<String> = vol
        .read_dir(&big)
        .expect("read_dir")
        .into_iter()
        .map(|i| i.name)
        .collect();
    assert_eq!(
        listed,
        (0..60).map(name).collect::<Vec<_>>(),
        "on-disk order"
    );
    assert_vol_tree(&vol, &t, "before unmount");
    drop((a, n1, n2, root, one, big));
    unmount(vol);
    assert_trees_agree(&img.path, &t);
    let vol = mount(img);
    assert_vol_tree(&vol, &t, "after remount");
    unmount(vol);
}

// ---------------------------------------------------------------------------------------
// 3. rename

fn rename(img: &Image) {
    let vol = mount(img);
    let cs = vol.statfs().cluster_size;
    let bpb = vol.bpb().clone();
    let root = vol.root();
    let mut t = Tree::new();
    let fa = put(&vol, &mut t, "/a.txt", b"contents of a\n");
    let d1 = mkdir(&vol, &mut t, "/d1");
    mkdir(&vol, &mut t, "/d2");
    let sub = mkdir(&vol, &mut t, "/d2/sub");
    put(
        &vol,
        &mut t,
        "/d2/sub/inner.txt",
        &noise(cs as usize + 3, 1),
    );
    put(&vol, &mut t, "/victim.bin", &noise(5 * cs as usize - 7, 2));
    put(&vol, &mut t, "/src.txt", b"the new victim\n");
    put(&vol, &mut t, "/readme.txt", b"readme\n");
    put(&vol, &mut t, "/Mixed Case Name.txt", b"mixed\n");
    put(&vol, &mut t, "/keep1.txt", b"keep 1\n");
    put(&vol, &mut t, "/keep2.txt", b"keep 2\n");
    mkdir(&vol, &mut t, "/p");
    let q = mkdir(&vol, &mut t, "/p/q");
    mkdir(&vol, &mut t, "/empty target");
    mkdir(&vol, &mut t, "/full target");
    put(&vol, &mut t, "/full target/f", b"f");
    let mv = |t: &mut Tree, from: &str, to: &str| {
        let moved: Vec<(String, TNode)> = t
            .range(from.to_owned()..)
            .take_while(|(p, _)| *p == from || p.starts_with(&format!("{from}/")))
            .map(|(p, n)| (p.clone(), n.clone()))
            .collect();
        assert!(!moved.is_empty(), "{from} not in the model");
        for (p, n) in moved {
            t.remove(&p);
            t.insert(format!("{to}{}", &p[from.len()..]), n);
        }
    };

    // A file within a directory; the node keeps working under its new name.
    vol.rename(&root, "a.txt", &root, "b.txt", false)
        .expect("rename a.txt");
    mv(&mut t, "/a.txt", "/b.txt");
    assert_errno(vol.lookup(&root, "a.txt"), libc::ENOENT, "old name");
    assert_eq!(lookup(&vol, "/b.txt").ino(), fa.ino(), "same node");
    write_at(
        &vol,
        &mut t,
        "/b.txt",
        &fa,
        14,
        b"appended after the rename\n",
    );
    // Across directories, then a write through the same node again.
    vol.rename(&root, "b.txt", &d1, "c.txt", false)
        .expect("rename to d1");
    mv(&mut t, "/b.txt", "/d1/c.txt");
    write_at(&vol, &mut t, "/d1/c.txt", &fa, 0, b"CONTENTS");
    assert_eq!(read_all(&vol, &fa), model(&t, "/d1/c.txt"));
    // A directory within its parent, then one across parents (its `..` must follow).
    vol.rename(&root, "d1", &root, "d1 renamed", false)
        .expect("rename d1");
    mv(&mut t, "/d1", "/d1 renamed");
    let d2 = lookup(&vol, "/d2");
    vol.rename(&d2, "sub", &d1, "moved sub", false)
        .expect("move sub");
    mv(&mut t, "/d2/sub", "/d1 renamed/moved sub");
    put(
        &vol,
        &mut t,
        "/d1 renamed/moved sub/new.txt",
        b"made after the move\n",
    );
    assert_errno(
        vol.lookup(&d2, "sub"),
        libc::ENOENT,
        "moved directory's old name",
    );
    // Over an existing file: its clusters come back once nobody holds it.
    let victim_clusters = clusters(model(&t, "/victim.bin").len(), cs);
    let free = vol.statfs().free;
    vol.rename(&root, "src.txt", &root, "victim.bin", false)
        .expect("rename over a file");
    let data = t.remove("/src.txt").expect("src in the model");
    t.insert("/victim.bin".into(), data);
    assert_eq!(
        vol.statfs().free,
        free + victim_clusters,
        "victim's clusters freed"
    );
    assert_eq!(
        read_all(&vol, &lookup(&vol, "/victim.bin")),
        model(&t, "/victim.bin")
    );
    // Case only, for an 8.3 name and for a long one.
    vol.rename(&root, "readme.txt", &root, "README.txt", false)
        .expect("case-only rename");
    mv(&mut t, "/readme.txt", "/README.txt");
    vol.rename(
        &root,
        "Mixed Case Name.txt",
        &root,
        "mixed case NAME.txt",
        false,
    )
    .expect("case-only rename of a long name");
    mv(&mut t, "/Mixed Case Name.txt", "/mixed case NAME.txt");
    let names: Vec<String> = vol
        .read_dir(&root)
        .expect("read_dir")
        .into_iter()
        .map(|i| i.name)
        .collect();
    for (there, gone) in [
        ("README.txt", "readme.txt"),
        ("mixed case NAME.txt", "Mixed Case Name.txt"),
    ] {
        assert!(names.iter().any(|n| n == there), "{there} in {names:?}");
        assert!(!names.iter().any(|n| n == gone), "{gone} in {names:?}");
    }
    // Onto itself: nothing happens.
    vol.rename(&root, "keep1.txt", &root, "keep1.txt", false)
        .expect("rename onto itself");
    // The refusals; none of them changes anything.
    assert_errno(
        vol.rename(&root, "keep1.txt", &root, "KEEP2.TXT", true),
        libc::EEXIST,
        "noreplace onto an existing name",
    );
    let p = lookup(&vol, "/p");
    assert_errno(
        vol.rename(&root, "p", &q, "p2", false),
        libc::EINVAL,
        "a directory into its own subdirectory",
    );
    assert_errno(
        vol.rename(&root, "p", &p, "p2", false),
        libc::EINVAL,
        "a directory into itself",
    );
    assert_errno(
        vol.rename(&root, "keep1.txt", &root, "p", false),
        libc::EISDIR,
        "a file onto a directory",
    );
    assert_errno(
        vol.rename(&root, "p", &root, "keep1.txt", false),
        libc::ENOTDIR,
        "a directory onto a file",
    );
    assert_errno(
        vol.rename(&root, "empty target", &root, "full target", false),
        libc::ENOTEMPTY,
        "onto a non-empty directory",
    );
    assert_errno(
        vol.rename(&root, "nothing", &root, "x", false),
        libc::ENOENT,
        "a missing source",
    );
    assert_errno(
        vol.rename(&root, "keep1.txt", &root, "a*b", false),
        libc::EINVAL,
        "onto an invalid name",
    );
    // A directory over an empty one: the empty one's cluster is freed.
    let free = vol.statfs().free;
    vol.rename(&root, "p", &root, "empty target", false)
        .expect("a directory over an empty one");
    t.remove("/empty target");
    mv(&mut t, "/p", "/empty target");
    assert_eq!(
        vol.statfs().free,
        free + 1,
        "the replaced directory's cluster"
    );
    // noreplace to a free name works.
    vol.rename(&root, "keep2.txt", &d2, "keep2.txt", true)
        .expect("noreplace to a free name");
    mv(&mut t, "/keep2.txt", "/d2/keep2.txt");
    assert_vol_tree(&vol, &t, "before unmount");
    let (sub_first, d1_first) = (sub.entry().first_cluster, d1.entry().first_cluster);
    let q_first = q.entry().first_cluster;
    let moved_dir_first = lookup(&vol, "/empty target").entry().first_cluster;
    drop((fa, d1, d2, sub, p, q, root));
    unmount(vol);
    assert_trees_agree(&img.path, &t);
    // fsck checks `..` too; these name the clusters themselves.
    assert_eq!(
        dotdot_on_disk(&img.path, &bpb, sub_first),
        d1_first,
        "moved sub's .."
    );
    assert_eq!(
        dotdot_on_disk(&img.path, &bpb, d1_first),
        0,
        "d1's .. (the root)"
    );
    assert_eq!(
        dotdot_on_disk(&img.path, &bpb, q_first),
        moved_dir_first,
        "q's .."
    );
    let vol = mount(img);
    assert_vol_tree(&vol, &t, "after remount");
    unmount(vol);
}

// ---------------------------------------------------------------------------------------
// 4. unlink and rmdir

fn unlink_rmdir(img: &Image) {
    let vol = mount(img);
    let cs = vol.statfs().cluster_size as usize;
    let root = vol.root();
    let mut t = Tree::new();
    mkdir(&vol, &mut t, "/dir");
    mkdir(&vol, &mut t, "/dir/empty");
    put(&vol, &mut t, "/dir/keep.txt", b"stays\n");
    put(&vol, &mut t, "/dir/gone.bin", &[]);
    let dir = lookup(&vol, "/dir");
    let free0 = vol.statfs().free;
    // A file of several clusters, unlinked with no holder left: its clusters come back.
    let node = lookup(&vol, "/dir/gone.bin");
    write_at(
        &vol,
        &mut t,
        "/dir/gone.bin",
        &node,
        0,
        &noise(7 * cs + 1, 1),
    );
    assert_eq!(vol.statfs().free, free0 - 8);
    drop(node);
    vol.unlink(&dir, "GONE.BIN").expect("unlink");
    t.remove("/dir/gone.bin");
    assert_eq!(vol.statfs().free, free0, "unlinked file's clusters");
    assert_errno(
        vol.lookup(&dir, "gone.bin"),
        libc::ENOENT,
        "lookup of an unlinked name",
    );
    assert_errno(vol.unlink(&dir, "gone.bin"), libc::ENOENT, "unlink twice");
    // Unlinked while a node is held: the clusters come back when it goes.
    let held = put(&vol, &mut t, "/held.bin", &noise(3 * cs, 2));
    vol.unlink(&root, "held.bin").expect("unlink a held file");
    t.remove("/held.bin");
    assert_errno(
        vol.lookup(&root, "held.bin"),
        libc::ENOENT,
        "lookup of an unlinked name",
    );
    drop(held);
    assert_eq!(
        vol.statfs().free,
        free0,
        "a held file's clusters, after the last holder"
    );
    // The refusals.
    assert_errno(
        vol.unlink(&root, "dir"),
        libc::EISDIR,
        "unlink of a directory",
    );
    assert_errno(
        vol.rmdir(&dir, "keep.txt"),
        libc::ENOTDIR,
        "rmdir of a file",
    );
    assert_errno(
        vol.rmdir(&root, "dir"),
        libc::ENOTEMPTY,
        "rmdir of a non-empty directory",
    );
    assert_errno(
        vol.rmdir(&root, "nothing"),
        libc::ENOENT,
        "rmdir of a missing name",
    );
    // rmdir of an empty directory gives its cluster back; a node of it refuses new entries.
    let empty = lookup(&vol, "/dir/empty");
    vol.rmdir(&dir, "empty").expect("rmdir");
    t.remove("/dir/empty");
    assert_eq!(
        vol.statfs().free,
        free0 + 1,
        "the removed directory's cluster"
    );
    assert_errno(
        vol.lookup(&dir, "empty"),
        libc::ENOENT,
        "lookup of a removed directory",
    );
    assert_errno(
        vol.create(&empty, "x"),
        libc::ENOENT,
        "create in a removed directory",
    );
    assert_errno(
        vol.mkdir(&empty, "x"),
        libc::ENOENT,
        "mkdir in a removed directory",
    );
    drop(empty);
    // Empty it, then it goes too, and a name can be reused.
    vol.unlink(&dir, "keep.txt").expect("unlink");
    vol.rmdir(&root, "DIR")
        .expect("rmdir of the emptied directory");
    t.clear();
    assert_eq!(
        vol.statfs().free,
        free0 + 3,
        "both directories' and keep.txt's clusters"
    );
    drop(dir);
    mkdir(&vol, &mut t, "/dir");
    put(&vol, &mut t, "/dir/keep.txt", b"again\n");
    assert_vol_tree(&vol, &t, "before unmount");
    drop(root);
    unmount(vol);
    assert_trees_agree(&img.path, &t);
}

// ---------------------------------------------------------------------------------------
// 5. truncate and fallocate

fn truncate(img: &Image) {
    let vol = mount(img);
    let cs = vol.statfs().cluster_size;
    let mut t = Tree::new();
    let path = "/t.bin";
    let f = put(&vol, &mut t, path, &[]);
    let free0 = vol.statfs().free;
    let used = |vol: &Volume| free0 - vol.statfs().free;
    let resize = |t: &mut Tree, size: usize| {
        if let Some(TNode::File(b)) = t.get_mut(path) {
            b.resize(size, 0);
        }
    };
    write_at(&vol, &mut t, path, &f, 0, &noise(20_000, 1));
    // Extend: zeros.
    vol.set_size(&f, 50_001).expect("extend");
    resize(&mut t, 50_001);
    assert_eq!(f.size(), 50_001);
    assert_eq!(read_all(&vol, &f), model(&t, path), "after extending");
    assert_eq!(used(&vol), clusters(50_001, cs));
    // Shrink in the middle of a page and of a cluster, then grow again: what was past the
    // cut must not come back.
    let cut = 3 * PAGE + 1000 + 7;
    vol.set_size(&f, cut as u64).expect("shrink");
    resize(&mut t, cut);
    assert_eq!(used(&vol), clusters(cut, cs), "clusters after shrinking");
    assert_eq!(read_all(&vol, &f), model(&t, path), "after shrinking");
    vol.set_size(&f, 20_000).expect("extend after shrink");
    resize(&mut t, 20_000);
    assert_eq!(
        read_all(&vol, &f),
        model(&t, path),
        "the cut-off tail reads as zeros"
    );
    // Shrink to a cluster edge that is not a page edge, then write past the end.
    let edge = if cs as usize % PAGE == 0 {
        2 * cs as usize
    } else {
        5 * cs as usize
    };
    vol.set_size(&f, edge as u64)
        .expect("shrink to a cluster edge");
    resize(&mut t, edge);
    write_at(&vol, &mut t, path, &f, edge as u64 + 333, b"past the end");
    assert_eq!(read_all(&vol, &f), model(&t, path), "gap after shrinking");
    assert_eq!(used(&vol), clusters(model(&t, path).len(), cs));
    // Same size: nothing.
    let size = f.size();
    vol.set_size(&f, size).expect("same size");
    // To zero: every cluster goes.
    vol.set_size(&f, 0).expect("shrink to 0");
    resize(&mut t, 0);
    assert_eq!(used(&vol), 0, "clusters after shrink to 0");
    assert_eq!(
        f.entry().first_cluster,
        0,
        "an empty file has no first cluster"
    );
    assert_eq!(read_all(&vol, &f), b"");
    // Then grow from nothing.
    vol.set_size(&f, 3 * cs as u64 + 1).expect("extend from 0");
    resize(&mut t, 3 * cs as usize + 1);
    assert_eq!(read_all(&vol, &f), model(&t, path));
    // fallocate: mode 0 grows with zeros, keeps a larger size, refuses other modes.
    let g = put(&vol, &mut t, "/fa.bin", b"head");
    vol.fallocate(&g, 0, 0, 10_000).expect("fallocate");
    if let Some(TNode::File(b)) = t.get_mut("/fa.bin") {
        b.resize(10_000, 0);
    }
    assert_eq!(g.size(), 10_000);
    vol.fallocate(&g, 0, 100, 200)
        .expect("fallocate inside the file");
    assert_eq!(g.size(), 10_000, "fallocate inside the file keeps the size");
    vol.fallocate(&g, 0, 12_000, 1)
        .expect("fallocate past the end");
    if let Some(TNode::File(b)) = t.get_mut("/fa.bin") {
        b.resize(12_001, 0);
    }
    assert_eq!(read_all(&vol, &g), model(&t, "/fa.bin"));
    let size = g.size();
    assert_errno(
        vol.fallocate(&g, 1, 0, 100_000),
        libc::EOPNOTSUPP,
        "KEEP_SIZE",
    );
    assert_errno(
        vol.fallocate(&g, 3, 0, 100_000),
        libc::EOPNOTSUPP,
        "PUNCH_HOLE",
    );
    assert_eq!(g.size(), size, "a refused fallocate changes nothing");
    let all: usize = t
        .values()
        .map(|n| match n {
            TNode::File(b) => clusters(b.len(), cs) as usize,
            TNode::Dir => 0,
        })
        .sum();
    assert_eq!(used(&vol) as usize, all, "clusters of both files");
    let root = vol.root();
    assert_errno(
        vol.set_size(&root, 0),
        libc::EISDIR,
        "truncate of a directory",
    );
    assert_vol_tree(&vol, &t, "before unmount");
    drop((f, g, root));
    unmount(vol);
    assert_trees_agree(&img.path, &t);
    let vol = mount(img);
    assert_vol_tree(&vol, &t, "after remount");
    // Extend and shrink of a file loaded from disk (not the node that wrote it).
    let f = lookup(&vol, path);
    vol.set_size(&f, 70_000).expect("extend after remount");
    if let Some(TNode::File(b)) = t.get_mut(path) {
        b.resize(70_000, 0);
    }
    let cut = 2 * PAGE - 5;
    vol.set_size(&f, cut as u64).expect("shrink after remount");
    if let Some(TNode::File(b)) = t.get_mut(path) {
        b.truncate(cut);
    }
    drop(f);
    unmount(vol);
    assert_trees_agree(&img.path, &t);
}

// ---------------------------------------------------------------------------------------
// 6. a full volume

fn enospc(img: &Image) {
    let vol = mount(img);
    let cs = vol.statfs().cluster_size;
    let c = cs as usize;
    let mut t = Tree::new();
    let free0 = vol.statfs().free;
    // One file written in one loop until the volume is full: one contiguous run.
    let path = "/fill.bin";
    let f = put(&vol, &mut t, path, &[]);
    let ended = fill(&vol, &mut t, path, &f);
    let len = model(&t, path).len();
    assert_eq!(f.size(), len as u64, "size after the last write ({ended})");
    // A write fails at the first page whose clusters cannot all be had, as in the kernel
    // (write_begin maps the page's blocks before copying): less than a page may be left.
    let free = vol.statfs().free as usize;
    assert!(free * c < PAGE, "{free} clusters free after {ended}");
    // Writes of at most one cluster take the rest.
    top_up(&vol, &mut t, path, &f, c);
    assert_eq!(vol.statfs().free, 0, "free clusters after filling");
    let taken = clusters(model(&t, path).len(), cs);
    assert_eq!(taken, free0, "the file took every cluster");
    // top_up stops only where a new cluster is needed: nothing more fits.
    let len = f.size();
    assert_eq!(len % u64::from(cs), 0, "the file ends inside a cluster");
    assert_errno(
        vol.write(&f, len, b"x"),
        libc::ENOSPC,
        "a write to a full volume",
    );
    assert_errno(
        vol.write(&f, len + 9000, b"x"),
        libc::ENOSPC,
        "a write past the end",
    );
    assert_errno(
        vol.set_size(&f, len + 1),
        libc::ENOSPC,
        "an extend on a full volume",
    );
    assert_errno(
        vol.fallocate(&f, 0, 0, len + 1),
        libc::ENOSPC,
        "fallocate on a full volume",
    );
    assert_eq!(f.size(), len, "the failed writes changed the size");
    assert_eq!(
        vol.statfs().free,
        0,
        "the failed writes leaked or freed clusters"
    );
    // Overwrites need no cluster and still work.
    write_at(&vol, &mut t, path, &f, 12_345, &noise(9000, 11));
    drop(f);
    unmount(vol);
    assert_trees_agree(&img.path, &t);
    let vol = mount(img);
    assert_vol_tree(&vol, &t, "after remount");
    assert_eq!(vol.statfs().free, 0);
    vol.unlink(&vol.root(), "fill.bin").expect("unlink");
    t.clear();
    assert_eq!(vol.statfs().free, free0, "the space came back");

    // Many small files, each written whole, until something fails for lack of space.
    mkdir(&vol, &mut t, "/many");
    let many = lookup(&vol, "/many");
    let size = (free0 as usize * c) / 150 + 77;
    let mut i = 0;
    let mut ended = None;
    while ended.is_none() {
        let path = format!("/many/file {i:04}.bin");
        let name = &path["/many/".len()..];
        let node = match vol.create(&many, name) {
            Ok(node) => node,
            Err(e) => {
                assert_eq!(e.errno(), libc::ENOSPC, "create {path}: {e}");
                ended = Some(format!("create {i} failed"));
                break;
            }
        };
        let data = noise(size, i as u64);
        let n = match vol.write(&node, 0, &data) {
            Ok(n) => n,
            Err(e) => {
                assert_eq!(e.errno(), libc::ENOSPC, "write {path}: {e}");
                ended = Some(format!("write {i} failed"));
                0
            }
        };
        if n > 0 && n < size {
            ended = Some(format!("write {i} short: {n} of {size}"));
        }
        t.insert(path, TNode::File(data[..n].to_vec()));
        i += 1;
        assert!(i < 1000, "the volume never fills");
    }
    assert!(i > 100, "only {i} files fit ({ended:?})");
    let free = vol.statfs().free as usize;
    assert!(free * c <= PAGE, "{free} clusters free after {ended:?}");
    // Files of one cluster take the rest, until a create or a write fails.
    for k in 0.. {
        let path = format!("/many/top {k}");
        let Ok(node) = vol.create(&many, &path["/many/".len()..]) else {
            break;
        };
        t.insert(path.clone(), TNode::File(Vec::new()));
        if top_up(&vol, &mut t, &path, &node, c) == 0 {
            break;
        }
        assert!(k < 100, "the volume never fills");
    }
    assert_eq!(
        vol.statfs().free,
        0,
        "free clusters after filling ({ended:?})"
    );
    drop(many);
    unmount(vol);
    assert_trees_agree(&img.path, &t);

    // Everything acknowledged is there; every other file goes, and its space comes back.
    let vol = mount(img);
    assert_vol_tree(&vol, &t, "after remount");
    let many = lookup(&vol, "/many");
    let gone: Vec<String> = t
        .keys()
        .filter(|p| p.starts_with("/many/file "))
        .step_by(2)
        .cloned()
        .collect();
    let freed: u32 = gone.iter().map(|p| clusters(model(&t, p).len(), cs)).sum();
    for path in &gone {
        vol.unlink(&many, split(path).1)
            .unwrap_or_else(|e| panic!("unlink {path}: {e}"));
        t.remove(path);
    }
    assert_eq!(vol.statfs().free, freed, "the removed files' clusters");

    // An extend past the free space, which is in holes now: ENOSPC; whatever size it reached
    // holds zeros and exactly its clusters, and less than a page is left.
    let h = put(&vol, &mut t, "/huge.bin", b"start");
    let r = vol.set_size(&h, u64::from(free0) * u64::from(cs) * 2);
    assert_errno(r, libc::ENOSPC, "extend past the volume");
    let size = h.size() as usize;
    if let Some(TNode::File(b)) = t.get_mut("/huge.bin") {
        b.resize(size, 0);
    }
    assert!(size > 5, "the extend stopped at once");
    let free = vol.statfs().free;
    assert_eq!(
        freed - free,
        clusters(size, cs),
        "clusters of the extended file"
    );
    assert!(
        free as usize * c < PAGE,
        "{free} clusters free after the extend"
    );
    assert_eq!(read_all(&vol, &h)[..5], *b"start");
    drop((h, many));
    unmount(vol);
    assert_trees_agree(&img.path, &t);

    // All of it goes: every cluster is free again.
    let vol = mount(img);
    let many = lookup(&vol, "/many");
    for path in t.keys().filter(|p| p.starts_with("/many/")) {
        vol.unlink(&many, split(path).1)
            .unwrap_or_else(|e| panic!("unlink {path}: {e}"));
    }
    drop(many);
    vol.rmdir(&vol.root(), "many").expect("rmdir");
    vol.unlink(&vol.root(), "huge.bin").expect("unlink");
    t.clear();
    assert_eq!(vol.statfs().free, free0, "the space came back");
    unmount(vol);
    assert_trees_agree(&img.path, &t);
}

/// Writes `path` (`node`) in chunks of 61,441 bytes until a write is short or fails with
/// ENOSPC; says which.
fn fill(vol: &Volume, t: &mut Tree, path: &str, node: &Node) -> String {
    for seed in 1..10_000 {
        let chunk = noise(61_441, seed);
        let off = node.size();
        match vol.write(node, off, &chunk) {
            Ok(n) => {
                assert!(n > 0, "{path}: a write of nothing");
                if let Some(TNode::File(b)) = t.get_mut(path) {
                    b.extend_from_slice(&chunk[..n]);
                }
                if n < chunk.len() {
                    return format!("short write, {n} of {}", chunk.len());
                }
            }
            Err(e) => {
                assert_eq!(e.errno(), libc::ENOSPC, "{path}: the write that fills: {e}");
                return "ENOSPC".to_owned();
            }
        }
    }
    panic!("{path}: the volume never fills");
}

/// Writes at most one cluster at a time at the end of `path` (`node`) until ENOSPC: first
/// the rest of the last cluster, then whole clusters. Returns how many writes succeeded.
fn top_up(vol: &Volume, t: &mut Tree, path: &str, node: &Node, cluster: usize) -> usize {
    for done in 0..1000 {
        let len = node.size();
        let room = cluster - len as usize % cluster;
        match vol.write(node, len, &noise(room, len)) {
            Ok(n) => {
                assert_eq!(n, room, "{path}: short write of one cluster at {len}");
                if let Some(TNode::File(b)) = t.get_mut(path) {
                    model_write(b, len as usize, &noise(room, len));
                }
            }
            Err(e) => {
                assert_eq!(e.errno(), libc::ENOSPC, "{path}: write at {len}: {e}");
                return done;
            }
        }
    }
    panic!("{path}: the volume never fills");
}

// ---------------------------------------------------------------------------------------
// 7. 2,000 files in one directory

fn many_files(img: &Image) {
    const N: usize = 2000;
    let vol = mount(img);
    let mut t = Tree::new();
    // Fixed roots hold 512 entries at most: there the files go in a subdirectory.
    let dir_path = if img.fat.fat == 32 { "" } else { "/lots" };
    if !dir_path.is_empty() {
        mkdir(&vol, &mut t, dir_path);
    }
    let dir = lookup(&vol, if dir_path.is_empty() { "/" } else { dir_path });
    let start = Instant::now();
    for i in 0..N {
        let name = format!("file-{i:04}.txt");
        let node = vol
            .create(&dir, &name)
            .unwrap_or_else(|e| panic!("create {name}: {e}"));
        // Every third file has bytes: FAT12 has too few clusters for 2,000.
        let data = if i % 3 == 0 {
            noise(i % 97 + 1, i as u64)
        } else {
            Vec::new()
        };
        assert_eq!(vol.write(&node, 0, &data).expect("write"), data.len());
        t.insert(format!("{dir_path}/{name}"), TNode::File(data));
    }
    println!("FAT{}: {N} creates in {:?}", img.fat.fat, start.elapsed());
    assert_errno(
        vol.create(&dir, "FILE-1234.TXT"),
        libc::EEXIST,
        "a taken name",
    );
    drop(dir);
    unmount(vol);
    let start = Instant::now();
    assert_trees_agree(&img.path, &t);
    println!("FAT{}: readers in {:?}", img.fat.fat, start.elapsed());
    // By name after remount, in another case.
    let vol = mount(img);
    for (path, node) in &t {
        let TNode::File(data) = node else {
            continue;
        };
        let node = lookup(&vol, &path.to_uppercase());
        assert_eq!(&read_all(&vol, &node), data, "{path}");
    }
    unmount(vol);
}

// ---------------------------------------------------------------------------------------
// 8. names

fn names(img: &Image) {
    let vol = mount(img);
    let root = vol.root();
    let mut t = Tree::new();
    mkdir(&vol, &mut t, "/d");
    let d = lookup(&vol, "/d");
    let good = [
        "A rather long file name with spaces.text".to_owned(),
        UNICODE_NAME.to_owned(),
        "Long File Name 1.txt".to_owned(),
        "Long File Name 2.txt".to_owned(),
        "lower.txt".to_owned(),
        "UPPER.TXT".to_owned(),
        "MiXed.TxT".to_owned(),
        ".hidden".to_owned(),
        "many.dots.in.name".to_owned(),
        "x".repeat(255),
        // 85 CJK characters: 255 bytes of UTF-8, 85 UTF-16 units.
        "\u{4f60}".repeat(85),
        "name+with,odd;chars=[1]".to_owned(),
    ];
    for (i, name) in good.iter().enumerate() {
        put(
            &vol,
            &mut t,
            &format!("/d/{name}"),
            format!("file {i}\n").as_bytes(),
        );
    }
    // Trailing dots are dropped, as vfat does.
    vol.create(&d, "trail...")
        .expect("create with trailing dots");
    t.insert("/d/trail".into(), TNode::File(Vec::new()));
    assert!(vol.lookup(&d, "trail").is_ok(), "trail without its dots");
    // The two long names that share a prefix got different aliases; each opens its own file.
    let one = lookup(&vol, "/d/Long File Name 1.txt");
    let two = lookup(&vol, "/d/Long File Name 2.txt");
    assert_ne!(one.ino(), two.ino());
    let (s1, s2) = (one.entry().name.to_string(), two.entry().name.to_string());
    assert_ne!(s1, s2, "aliases");
    for (alias, node) in [(&s1, &one), (&s2, &two)] {
        assert_eq!(
            vol.lookup(&d, alias).expect("lookup by alias").ino(),
            node.ino()
        );
        assert_errno(vol.create(&d, alias), libc::EEXIST, "create over an alias");
    }
    // Refused names.
    for bad in [
        "a*b",
        "a?b",
        "a:b",
        "a<b",
        "a>b",
        "a|b",
        "a\"b",
        "a\\b",
        "a/b",
        "tab\tname",
    ] {
        assert_errno(
            vol.create(&d, bad),
            libc::EINVAL,
            &format!("create {bad:?}"),
        );
        assert_errno(vol.mkdir(&d, bad), libc::EINVAL, &format!("mkdir {bad:?}"));
    }
    for bad in ["", ".", "..", "...", "trailing space ", "   "] {
        assert!(vol.create(&d, bad).is_err(), "create {bad:?} succeeded");
    }
    assert_errno(
        vol.create(&d, "trailing space "),
        libc::EINVAL,
        "a trailing space",
    );
    assert_errno(
        vol.create(&d, &"y".repeat(256)),
        libc::ENAMETOOLONG,
        "256 bytes",
    );
    assert_errno(
        vol.mkdir(&d, &"y".repeat(256)),
        libc::ENAMETOOLONG,
        "256 bytes, mkdir",
    );
    assert_errno(
        vol.create(&d, &"\u{4f60}".repeat(86)),
        libc::ENAMETOOLONG,
        "258 bytes",
    );
    // Taken names, in any case.
    for taken in [
        "LOWER.TXT",
        "upper.txt",
        "mixed.txt",
        "long file name 1.TXT",
        "TRAIL",
    ] {
        assert_errno(
            vol.create(&d, taken),
            libc::EEXIST,
            &format!("create {taken}"),
        );
        assert_errno(
            vol.mkdir(&d, taken),
            libc::EEXIST,
            &format!("mkdir {taken}"),
        );
    }
    // Lookups in another case, and of the unicode name.
    assert_eq!(
        lookup(&vol, "/D/LOWER.TXT").ino(),
        lookup(&vol, "/d/lower.txt").ino()
    );
    let uni = lookup(&vol, &format!("/d/{UNICODE_NAME}"));
    assert_eq!(
        read_all(&vol, &uni),
        model(&t, &format!("/d/{UNICODE_NAME}"))
    );
    // The same names in the root (a fixed one on FAT12/16).
    for name in &good[..4] {
        put(&vol, &mut t, &format!("/{name}"), b"root\n");
    }
    assert_vol_tree(&vol, &t, "before unmount");
    drop((root, d, one, two, uni));
    unmount(vol);
    assert_trees_agree(&img.path, &t);
    let vol = mount(img);
    assert_vol_tree(&vol, &t, "after remount");
    unmount(vol);
}

// ---------------------------------------------------------------------------------------
// 9. EFBIG

fn efbig(img: &Image) {
    let vol = mount(img);
    let mut t = Tree::new();
    let f = put(&vol, &mut t, "/f.bin", b"some bytes");
    let free = vol.statfs().free;
    assert_errno(
        vol.set_size(&f, MAX_FILE + 1),
        libc::EFBIG,
        "truncate past 4 GiB - 1",
    );
    assert_errno(
        vol.set_size(&f, u64::MAX),
        libc::EFBIG,
        "truncate to u64::MAX",
    );
    assert_errno(
        vol.write(&f, MAX_FILE, b"x"),
        libc::EFBIG,
        "write at 4 GiB - 1",
    );
    assert_errno(
        vol.write(&f, MAX_FILE + 10, b"x"),
        libc::EFBIG,
        "write past 4 GiB",
    );
    assert_errno(
        vol.fallocate(&f, 0, MAX_FILE, 1),
        libc::EFBIG,
        "fallocate to 4 GiB",
    );
    assert_errno(
        vol.fallocate(&f, 0, u64::MAX, 2),
        libc::EFBIG,
        "fallocate overflowing",
    );
    assert_eq!(f.size(), 10, "the refusals changed the size");
    assert_eq!(vol.statfs().free, free, "the refusals allocated clusters");
    assert_eq!(read_all(&vol, &f), b"some bytes");
    drop(f);
    unmount(vol);
    assert_trees_agree(&img.path, &t);
}

// ---------------------------------------------------------------------------------------
// 10. read-only mounts

fn read_only(img: &Image) {
    let vol = mount(img);
    let mut t = Tree::new();
    mkdir(&vol, &mut t, "/dir");
    mkdir(&vol, &mut t, "/dir/empty");
    put(&vol, &mut t, "/dir/file.txt", &noise(5000, 1));
    drop(put(&vol, &mut t, "/top.txt", b"top\n"));
    unmount(vol);
    let before = image_hash(&img.path);
    let ro_opts = MountOptions {
        placement: Placement {
            read_only: true,
            ..Placement::default()
        },
        ..opts()
    };
    let mounts: [(&str, Opener); 2] = [
        ("Volume::open", |img, _| open_ro(&img.path)),
        ("ro mount", |img, o| {
            Volume::mount(&img.path, o.clone()).expect("ro mount")
        }),
    ];
    for (how, open) in mounts {
        let vol = open(img, &ro_opts);
        assert!(vol.read_only(), "{how}: not read-only");
        assert_vol_tree(&vol, &t, how);
        let root = vol.root();
        let dir = lookup(&vol, "/dir");
        let file = lookup(&vol, "/dir/file.txt");
        let e = libc::EROFS;
        assert_errno(vol.create(&root, "new"), e, "create");
        assert_errno(vol.mkdir(&root, "new"), e, "mkdir");
        assert_errno(vol.unlink(&dir, "file.txt"), e, "unlink");
        assert_errno(vol.rmdir(&dir, "empty"), e, "rmdir");
        assert_errno(vol.rename(&root, "top.txt", &dir, "t", false), e, "rename");
        assert_errno(
            vol.rename(&root, "top.txt", &root, "TOP.TXT", false),
            e,
            "case rename",
        );
        assert_errno(vol.write(&file, 0, b"x"), e, "overwrite");
        assert_errno(vol.write(&file, 5000, b"x"), e, "append");
        assert_errno(vol.set_size(&file, 0), e, "shrink");
        assert_errno(vol.set_size(&file, 9000), e, "extend");
        assert_errno(vol.fallocate(&file, 0, 0, 100_000), e, "fallocate");
        // Nothing to write: these succeed, and write nothing.
        vol.fsync(&file).expect("fsync on a read-only mount");
        vol.sync_fs().expect("sync_fs on a read-only mount");
        assert_eq!(read_all(&vol, &file), model(&t, "/dir/file.txt"), "{how}");
        assert_vol_tree(&vol, &t, how);
        drop((root, dir, file));
        unmount(vol);
        assert_eq!(image_hash(&img.path), before, "{how}: the image changed");
    }
    assert_trees_agree(&img.path, &t);
}

/// A way to open an image, given the read-only mount options.
type Opener = fn(&Image, &MountOptions) -> Volume;

// ---------------------------------------------------------------------------------------
// 11. sync mounts

fn sync_mount(img: &Image) {
    let vol = Volume::mount(
        &img.path,
        MountOptions {
            sync: true,
            ..opts()
        },
    )
    .expect("sync mount");
    let cs = vol.statfs().cluster_size as usize;
    let mut t = Tree::new();
    // Each step is on the disk when it returns: a separate read-only open sees it, and fsck
    // finds nothing but the dirty bit.
    let check = |t: &Tree, step: &str| {
        let other = open_ro(&img.path);
        if let Err(diff) = compare_trees(t, &vol_tree(&other)) {
            panic!("{step}: a fresh open differs:\n{diff}");
        }
        drop(other);
        if let Err(e) = check_dirty(img, t) {
            panic!("{step}: {e}");
        }
    };
    let f = put(&vol, &mut t, "/synced.bin", &noise(3 * cs + 11, 1));
    check(&t, "create and write");
    write_at(
        &vol,
        &mut t,
        "/synced.bin",
        &f,
        5 * PAGE as u64 + 3,
        &noise(777, 2),
    );
    check(&t, "write past the end");
    write_at(&vol, &mut t, "/synced.bin", &f, 17, b"in the middle");
    check(&t, "overwrite");
    mkdir(&vol, &mut t, "/dir");
    put(&vol, &mut t, "/dir/inner.txt", b"inner\n");
    check(&t, "mkdir and a file in it");
    vol.set_size(&f, 40_000).expect("extend");
    if let Some(TNode::File(b)) = t.get_mut("/synced.bin") {
        b.resize(40_000, 0);
    }
    check(&t, "extend");
    vol.set_size(&f, 1234).expect("shrink");
    if let Some(TNode::File(b)) = t.get_mut("/synced.bin") {
        b.truncate(1234);
    }
    check(&t, "shrink");
    vol.fallocate(&f, 0, 0, 9000).expect("fallocate");
    if let Some(TNode::File(b)) = t.get_mut("/synced.bin") {
        b.resize(9000, 0);
    }
    check(&t, "fallocate");
    let root = vol.root();
    let dir = lookup(&vol, "/dir");
    vol.rename(&root, "synced.bin", &dir, "moved.bin", false)
        .expect("rename");
    let data = t.remove("/synced.bin").expect("in the model");
    t.insert("/dir/moved.bin".into(), data);
    check(&t, "rename");
    vol.unlink(&dir, "inner.txt").expect("unlink");
    t.remove("/dir/inner.txt");
    check(&t, "unlink");
    drop((f, root, dir));
    unmount(vol);
    assert_trees_agree(&img.path, &t);
}

// ---------------------------------------------------------------------------------------
// 12. the dirty bit

fn dirty_bit(img: &Image) {
    assert!(!dirty_on_disk(img), "mkfs left the volume dirty");
    fsck_clean(&img.path).unwrap_or_else(|e| panic!("fresh image: {e}"));
    let vol = mount(img);
    let mut t = Tree::new();
    assert!(
        dirty_on_disk(img),
        "mounted read-write, the dirty bit is not on the disk"
    );
    assert!(
        fsck_clean(&img.path).is_err(),
        "strict fsck accepts a mounted volume"
    );
    fsck_clean_allow_dirty(&img.path).unwrap_or_else(|e| panic!("mounted: {e}"));
    drop(put(&vol, &mut t, "/a.bin", &noise(10_000, 1)));
    vol.sync_fs().expect("sync_fs");
    assert!(dirty_on_disk(img), "sync_fs cleared the dirty bit");
    if let Err(e) = check_dirty(img, &t) {
        panic!("after sync_fs: {e}");
    }
    unmount(vol);
    assert!(!dirty_on_disk(img), "unmount left the dirty bit");
    assert_trees_agree(&img.path, &t);

    // A crash after a sync: the bit stays; the next mount works and its unmount clears it.
    let vol = mount(img);
    drop(put(&vol, &mut t, "/b.bin", &noise(7000, 2)));
    vol.sync_fs().expect("sync_fs");
    drop(vol);
    assert!(
        dirty_on_disk(img),
        "a volume dropped without unmount is not dirty"
    );
    if let Err(e) = check_dirty(img, &t) {
        panic!("after a crash following sync_fs: {e}");
    }
    let vol = mount(img);
    assert_vol_tree(&vol, &t, "mounted dirty");
    drop(put(&vol, &mut t, "/c.bin", b"after the dirty mount"));
    unmount(vol);
    assert!(
        !dirty_on_disk(img),
        "unmount of a dirty-mounted volume left the bit"
    );
    assert_trees_agree(&img.path, &t);

    // A crash with nothing synced: whatever reached the disk, the next mount works and its
    // unmount clears the bit.
    let vol = mount(img);
    drop(put(&vol, &mut t, "/lost.bin", &noise(9000, 3)));
    drop(vol);
    assert!(dirty_on_disk(img));
    if let Err(e) = fsck_clean_allow_dirty(&img.path) {
        println!(
            "FAT{}: fsck after a crash without sync (allowed): {e}",
            img.fat.fat
        );
    }
    let vol = mount(img);
    unmount(vol);
    assert!(!dirty_on_disk(img), "unmount after a crash left the bit");
}

// ---------------------------------------------------------------------------------------
// 13. fsync durability

fn fsync_durability(img: &Image) {
    let vol = mount(img);
    let cs = vol.statfs().cluster_size as usize;
    let mut t = Tree::new();
    // A file in a new directory and one in the root, each written and fsynced.
    mkdir(&vol, &mut t, "/logs");
    let a = put(&vol, &mut t, "/logs/a.log", &noise(4 * cs + 333, 1));
    write_at(
        &vol,
        &mut t,
        "/logs/a.log",
        &a,
        2 * PAGE as u64 - 9,
        &noise(5000, 2),
    );
    vol.fsync(&a).expect("fsync a");
    let b = put(&vol, &mut t, "/top.bin", &noise(123_457, 3));
    vol.set_size(&b, 130_000).expect("extend");
    if let Some(TNode::File(d)) = t.get_mut("/top.bin") {
        d.resize(130_000, 0);
    }
    vol.fsync(&b).expect("fsync b");
    // A crash: no unmount, no sync_fs.
    drop((a, b));
    drop(vol);
    assert!(dirty_on_disk(img), "the crashed volume is not marked dirty");
    let other = open_ro(&img.path);
    let a = lookup(&other, "/logs/a.log");
    assert_eq!(
        a.size(),
        model(&t, "/logs/a.log").len() as u64,
        "a.log size"
    );
    assert_eq!(
        read_all(&other, &a),
        model(&t, "/logs/a.log"),
        "a.log bytes"
    );
    drop(a);
    drop(other);
    if let Err(e) = check_dirty(img, &t) {
        panic!("after a crash following fsync: {e}");
    }
    // The next mount and unmount make it clean.
    let vol = mount(img);
    assert_vol_tree(&vol, &t, "after the crash");
    unmount(vol);
    assert_trees_agree(&img.path, &t);
}

// ---------------------------------------------------------------------------------------
// 14. a freed directory cluster reused for file data

/// A directory whose cluster was changed (an entry marked deleted) and then freed by rmdir;
/// the cluster goes to a new file on an otherwise full volume. The file's bytes must be what
/// reaches the disk, not the directory's old contents from the metadata cache (the kernel
/// drops such aliases when it maps a new block: clean_bdev_aliases in __block_write_begin).
fn reused_dir_cluster(img: &Image) {
    let vol = mount(img);
    let cs = vol.statfs().cluster_size as usize;
    let root = vol.root();
    let mut t = Tree::new();
    let d = mkdir(&vol, &mut t, "/d");
    put(&vol, &mut t, "/d/f.txt", &[]);
    let d_first = d.entry().first_cluster;
    let f = put(&vol, &mut t, "/fill.bin", &[]);
    let ended = fill(&vol, &mut t, "/fill.bin", &f);
    top_up(&vol, &mut t, "/fill.bin", &f, cs);
    assert_eq!(vol.statfs().free, 0, "full after {ended}");
    vol.unlink(&d, "f.txt").expect("unlink");
    t.remove("/d/f.txt");
    drop(d);
    vol.rmdir(&root, "d").expect("rmdir");
    t.remove("/d");
    assert_eq!(vol.statfs().free, 1, "the directory's cluster");
    let data = noise(cs, 7);
    let g = put(&vol, &mut t, "/g.bin", &data);
    assert_eq!(g.entry().first_cluster, d_first, "the one free cluster");
    assert_eq!(read_all(&vol, &g), data, "before unmount");
    drop((f, g, root));
    unmount(vol);
    assert_trees_agree(&img.path, &t);
}

// ---------------------------------------------------------------------------------------
// 15. reading a file bigger than the cache, in small reads

/// Frames of the small cache [`read_past_cache`] reads through.
const SMALL_FRAMES: usize = 64;

/// Names of the empty files [`read_past_cache`] spreads over the root directory.
fn root_name(i: usize) -> String {
    format!("/E{i:03}")
}

/// A volume filled by one contiguous file, its root holding 400 more entries; a mount with a
/// cache of [`SMALL_FRAMES`] looks up every root entry, then reads the file in reads of 1531
/// bytes. Every page then in the cache has been touched twice or more (PG_referenced): the
/// root's pages by load and lookup, the FAT's by the mount's free-cluster scan and the chain
/// walk, the data pages by the small reads. Reclaim must still free clean pages.
fn read_past_cache(img: &Image) {
    let vol = mount(img);
    let cs = vol.statfs().cluster_size as usize;
    let mut t = Tree::new();
    // The entries first: on FAT32 the root is a chain, which a full volume cannot grow.
    for i in 0..400 {
        put(&vol, &mut t, &root_name(i), &[]);
    }
    let f = put(&vol, &mut t, "/big.bin", &[]);
    fill(&vol, &mut t, "/big.bin", &f);
    top_up(&vol, &mut t, "/big.bin", &f, cs);
    drop(f);
    unmount(vol);
    let small = MountOptions {
        cache_frames: SMALL_FRAMES,
        ..opts()
    };
    let vol = Volume::mount(&img.path, small).expect("mount");
    for i in 0..400 {
        lookup(&vol, &root_name(i));
    }
    let f = lookup(&vol, "/big.bin");
    let data = model(&t, "/big.bin");
    let mut out = Vec::new();
    let mut buf = [0u8; 1531];
    loop {
        let n = vol
            .read(&f, out.len() as u64, &mut buf)
            .unwrap_or_else(|e| panic!("read at {} of {}: {e}", out.len(), data.len()));
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    assert!(out == data, "the bytes read differ");
    drop(f);
    unmount(vol);
}

// ---------------------------------------------------------------------------------------
// 16. rename exchange

/// The link count vfat gives the directory `dir` of `t`: 2 and one per subdirectory.
fn model_nlink(t: &Tree, dir: &str) -> u32 {
    let prefix = if dir == "/" {
        "/".to_owned()
    } else {
        format!("{dir}/")
    };
    let subdirs = t
        .iter()
        .filter(|(p, n)| {
            **n == TNode::Dir
                && p.strip_prefix(&prefix)
                    .is_some_and(|rest| !rest.is_empty() && !rest.contains('/'))
        })
        .count();
    2 + u32::try_from(subdirs).expect("a count")
}

/// Every directory of `t` (the root too) has its model link count, every file 1.
#[track_caller]
fn assert_nlinks(vol: &Volume, t: &Tree, when: &str) {
    assert_eq!(vol.root().nlink(), model_nlink(t, "/"), "{when}: / links");
    for (path, node) in t {
        let want = match node {
            TNode::Dir => model_nlink(t, path),
            TNode::File(_) => 1,
        };
        assert_eq!(lookup(vol, path).nlink(), want, "{when}: {path} links");
    }
}

/// The names `dir` lists.
fn listed(vol: &Volume, dir: &Node) -> Vec<String> {
    let items = vol.read_dir(dir).expect("read_dir");
    items.into_iter().map(|i| i.name).collect()
}

fn exchange(img: &Image) {
    let vol = mount(img);
    let cs = vol.statfs().cluster_size as usize;
    let bpb = vol.bpb().clone();
    let root = vol.root();
    let mut t = Tree::new();
    let long = "A long name for b.bin";
    let fa = put(&vol, &mut t, "/a.txt", b"contents of a\n");
    let fb = put(&vol, &mut t, &format!("/{long}"), &noise(3 * cs + 5, 1));
    let d1 = mkdir(&vol, &mut t, "/d1");
    let sub = mkdir(&vol, &mut t, "/d1/sub");
    put(&vol, &mut t, "/d1/sub/inner.txt", &noise(cs + 1, 2));
    put(&vol, &mut t, "/d1/x.txt", b"x in d1\n");
    let d2 = mkdir(&vol, &mut t, "/d2");
    let fy = put(&vol, &mut t, "/d2/y.txt", b"y in d2\n");
    let p = mkdir(&vol, &mut t, "/p");
    let q = mkdir(&vol, &mut t, "/p/q");
    let deep = mkdir(&vol, &mut t, "/p/q/deep");
    put(&vol, &mut t, "/p/q/deep/f", b"deep\n");
    let anc = mkdir(&vol, &mut t, "/anc");
    let mid = mkdir(&vol, &mut t, "/anc/mid");
    mkdir(&vol, &mut t, "/anc/mid/leaf");
    put(&vol, &mut t, "/anc/mid/file", b"z\n");
    let free = vol.statfs().free;
    assert_nlinks(&vol, &t, "before");

    // File and file in one directory, a long name and an 8.3 one: the names stay where they
    // are, the contents and the nodes (inode numbers) trade places.
    vol.rename_exchange(&root, "a.txt", &root, long)
        .expect("file with file");
    exchange_in_tree(&mut t, "/a.txt", &format!("/{long}"));
    let names = listed(&vol, &root);
    assert!(names.iter().any(|n| n == long) && names.iter().any(|n| n == "a.txt"));
    assert_eq!(lookup(&vol, "/a.txt").ino(), fb.ino(), "b's node under a");
    assert_eq!(
        lookup(&vol, &format!("/{long}")).ino(),
        fa.ino(),
        "a's node"
    );
    assert_eq!(read_all(&vol, &fa), model(&t, &format!("/{long}")));
    write_at(&vol, &mut t, &format!("/{long}"), &fa, 3, b"written after");
    // File and file across directories.
    vol.rename_exchange(&root, "a.txt", &d2, "y.txt")
        .expect("file with file across");
    exchange_in_tree(&mut t, "/a.txt", "/d2/y.txt");
    assert_eq!(lookup(&vol, "/a.txt").ino(), fy.ino());
    assert_eq!(lookup(&vol, "/d2/y.txt").ino(), fb.ino());
    // File and directory across directories: the directory's `..` follows it, the link
    // counts of both parents change, and so does the modification time of d1 (the root has
    // no entry to keep one in).
    vol.set_times(&d1, None, Some((978_307_200, 0)))
        .expect("age d1 to 2001-01-01");
    let aged = d1.entry().modify_date;
    vol.rename_exchange(&root, long, &d1, "sub")
        .expect("file with directory");
    exchange_in_tree(&mut t, &format!("/{long}"), "/d1/sub");
    assert_eq!(lookup(&vol, &format!("/{long}")).ino(), sub.ino());
    assert!(lookup(&vol, &format!("/{long}")).is_dir());
    assert_eq!(lookup(&vol, "/d1/sub").ino(), fa.ino());
    assert_eq!(
        read_all(&vol, &lookup(&vol, &format!("/{long}/inner.txt"))),
        model(&t, &format!("/{long}/inner.txt"))
    );
    assert_nlinks(&vol, &t, "file with directory");
    assert_ne!(d1.entry().modify_date, aged, "d1's modification time");
    // Directory and directory across directories, one of them non-empty with a subdirectory.
    vol.rename_exchange(&root, "d2", &p, "q")
        .expect("directory with directory across");
    exchange_in_tree(&mut t, "/d2", "/p/q");
    assert_eq!(lookup(&vol, "/d2").ino(), q.ino());
    assert_eq!(lookup(&vol, "/p/q").ino(), d2.ino());
    assert_eq!(
        lookup(&vol, "/d2/deep").ino(),
        deep.ino(),
        "children come along"
    );
    // Directory and directory in one directory.
    vol.rename_exchange(&root, "d1", &root, "p")
        .expect("directory with directory");
    exchange_in_tree(&mut t, "/d1", "/p");
    // Two spellings of one entry: nothing happens.
    vol.rename_exchange(&root, "d1", &root, "D1")
        .expect("an entry with itself");
    assert_eq!(lookup(&vol, "/d1").ino(), p.ino());
    assert_nlinks(&vol, &t, "after the exchanges");
    assert_vol_tree(&vol, &t, "after the exchanges");

    // The refusals; none of them changes anything.
    assert_errno(
        vol.rename_exchange(&root, "a.txt", &root, "nothing"),
        libc::ENOENT,
        "a missing target",
    );
    assert_errno(
        vol.rename_exchange(&root, "nothing", &root, "a.txt"),
        libc::ENOENT,
        "a missing source",
    );
    assert_errno(
        vol.rename_exchange(&root, "anc", &mid, "leaf"),
        libc::EINVAL,
        "a directory with something below it",
    );
    assert_errno(
        vol.rename_exchange(&mid, "file", &root, "anc"),
        libc::EINVAL,
        "something below a directory with it",
    );
    assert_errno(
        vol.rename_exchange(&root, "anc", &anc, "mid"),
        libc::EINVAL,
        "a directory with its child",
    );
    assert_errno(
        vol.rename_exchange(&anc, "mid", &root, "anc"),
        libc::EINVAL,
        "a child with its directory",
    );
    assert_eq!(vol.statfs().free, free, "an exchange allocates nothing");
    assert_vol_tree(&vol, &t, "after the refusals");
    put(&vol, &mut t, &format!("/{long}/made after.txt"), b"new\n");
    let firsts =
        |vol: &Volume, paths: [&str; 5]| paths.map(|p| lookup(vol, p).entry().first_cluster);
    let moved = ["/d1/q", "/d1", &format!("/{long}"), "/d2", "/d2/deep"];
    let [q_at, d1_at, long_at, d2_at, deep_at] = firsts(&vol, moved);
    drop((fa, fb, d1, sub, d2, fy, p, q, deep, anc, mid, root));
    unmount(vol);
    assert_trees_agree(&img.path, &t);
    let dotdot = |first| dotdot_on_disk(&img.path, &bpb, first);
    assert_eq!(
        dotdot(q_at),
        d1_at,
        "/d1/q's .. (moved under p's old directory)"
    );
    assert_eq!(dotdot(d1_at), 0, "/d1's ..");
    assert_eq!(dotdot(long_at), 0, "a directory moved up to the root");
    assert_eq!(
        dotdot(d2_at),
        0,
        "a directory moved up to the root, with its children"
    );
    assert_eq!(dotdot(deep_at), d2_at, "a child of a moved directory");

    // On a `sync` mount each exchange is on the disk when it returns: a file with a
    // directory across parents, then back.
    let vol = Volume::mount(
        &img.path,
        MountOptions {
            sync: true,
            ..opts()
        },
    )
    .expect("sync mount");
    assert_nlinks(&vol, &t, "after remount");
    // d1's node went to /p in the exchange of siblings; its new time went with it.
    assert_ne!(lookup(&vol, "/p").entry().modify_date, aged, "on the disk");
    let (root, d1) = (vol.root(), lookup(&vol, "/d1"));
    vol.rename_exchange(&d1, "q", &root, "a.txt")
        .expect("exchange on a sync mount");
    exchange_in_tree(&mut t, "/d1/q", "/a.txt");
    if let Err(e) = check_dirty(img, &t) {
        panic!("sync exchange: {e}");
    }
    vol.rename_exchange(&root, "a.txt", &d1, "q")
        .expect("and back");
    exchange_in_tree(&mut t, "/d1/q", "/a.txt");
    if let Err(e) = check_dirty(img, &t) {
        panic!("sync exchange back: {e}");
    }
    drop((root, d1));
    unmount(vol);
    assert_trees_agree(&img.path, &t);
    let vol = mount(img);
    assert_vol_tree(&vol, &t, "after remount");
    unmount(vol);
}

// ---------------------------------------------------------------------------------------
// 17. directory link counts

fn link_counts(img: &Image) {
    let vol = mount(img);
    let root = vol.root();
    let mut t = Tree::new();
    assert_eq!(root.nlink(), 2, "an empty root");
    let a = mkdir(&vol, &mut t, "/a");
    mkdir(&vol, &mut t, "/a/b");
    mkdir(&vol, &mut t, "/a/c");
    let f = put(&vol, &mut t, "/a/f.txt", b"f\n");
    assert_nlinks(&vol, &t, "after mkdir");
    assert_eq!((root.nlink(), a.nlink(), f.nlink()), (3, 4, 1));
    // A directory moved up; a directory over an empty one; a file moved: each parent counts.
    vol.rename(&a, "c", &root, "c", false).expect("move c up");
    let c = t.remove("/a/c").expect("c");
    t.insert("/c".into(), c);
    assert_eq!((root.nlink(), a.nlink()), (4, 3));
    vol.rename(&a, "b", &root, "c", false)
        .expect("b over the empty c");
    t.remove("/a/b");
    assert_eq!((root.nlink(), a.nlink()), (4, 2));
    vol.rename(&a, "f.txt", &root, "f.txt", false)
        .expect("move a file");
    let data = t.remove("/a/f.txt").expect("f");
    t.insert("/f.txt".into(), data);
    assert_eq!((root.nlink(), a.nlink()), (4, 2), "a file is not counted");
    assert_nlinks(&vol, &t, "after the renames");
    // A removed directory and an unlinked file still held have no links left.
    let c = lookup(&vol, "/c");
    vol.rmdir(&root, "c").expect("rmdir c");
    t.remove("/c");
    assert_eq!((root.nlink(), c.nlink()), (3, 0));
    vol.unlink(&root, "f.txt").expect("unlink f");
    t.remove("/f.txt");
    assert_eq!(f.nlink(), 0, "an unlinked file still open");
    assert_nlinks(&vol, &t, "after rmdir and unlink");
    drop((root, a, c, f));
    unmount(vol);
    assert_trees_agree(&img.path, &t);
    let vol = mount(img);
    assert_nlinks(&vol, &t, "after remount");
    unmount(vol);
}

/// A directory's modification time follows its entries, as vfat_add_entry and
/// vfat_remove_entries set it: create, mkdir, unlink, rmdir and rename (both parents) each
/// give it a new one, and it reaches the disk.
fn dir_times(img: &Image) {
    let vol = mount(img);
    let root = vol.root();
    let d = vol.mkdir(&root, "d").expect("mkdir d");
    let e = vol.mkdir(&root, "e").expect("mkdir e");
    let age = |n: &Node| {
        vol.set_times(n, None, Some((978_307_200, 0)))
            .expect("age to 2001-01-01");
        n.entry().modify_date
    };
    let changed = |n: &Node, aged: u16, what: &str| {
        assert_ne!(
            n.entry().modify_date,
            aged,
            "{what}: no new modification time"
        );
    };
    let aged = age(&d);
    let f = vol.create(&d, "f.txt").expect("create");
    changed(&d, aged, "create");
    let aged = age(&d);
    vol.mkdir(&d, "sub").expect("mkdir");
    changed(&d, aged, "mkdir");
    let aged = age(&d);
    vol.rmdir(&d, "sub").expect("rmdir");
    changed(&d, aged, "rmdir");
    let (aged_d, aged_e) = (age(&d), age(&e));
    vol.rename(&d, "f.txt", &e, "g.txt", false).expect("rename");
    changed(&d, aged_d, "rename, old parent");
    changed(&e, aged_e, "rename, new parent");
    let aged = age(&e);
    drop(f);
    vol.unlink(&e, "g.txt").expect("unlink");
    changed(&e, aged, "unlink");
    let (now_d, now_e) = (d.entry().modify_date, e.entry().modify_date);
    drop((d, e));
    vol.unmount().expect("unmount");
    let ro = open_ro(&img.path);
    assert_eq!(lookup(&ro, "/d").entry().modify_date, now_d, "on the disk");
    assert_eq!(lookup(&ro, "/e").entry().modify_date, now_e, "on the disk");
    drop(ro);
    fsck_clean(&img.path).unwrap_or_else(|e| panic!("{e}"));
}

// ---------------------------------------------------------------------------------------
// rename and a crash

/// A rename's two directory changes, the old entry's removal and the new entry, are not
/// atomic on the disk, so the removal must reach it first: a crash may then lose the name
/// (the chain leaks), but never leaves both names on one chain (shared clusters). Right
/// after a rename, with nothing synced, the image no longer has the old name; it never has
/// both.
fn rename_crash_order(img: &Image) {
    let vol = mount(img);
    let mut t = Tree::new();
    mkdir(&vol, &mut t, "/from");
    mkdir(&vol, &mut t, "/to");
    let f = put(&vol, &mut t, "/from/a file.txt", &noise(9000, 7));
    vol.fsync(&f).expect("fsync");
    let (from, to) = (lookup(&vol, "/from"), lookup(&vol, "/to"));
    vol.rename(&from, "a file.txt", &to, "renamed.bin", false)
        .expect("rename");
    // A crash: no unmount, no sync.
    drop((f, from, to));
    drop(vol);
    let other = open_ro(&img.path);
    let old = other.lookup_path("/from/a file.txt").is_ok();
    let new = other.lookup_path("/to/renamed.bin").is_ok();
    assert!(!(old && new), "both names on the image: shared clusters");
    assert!(
        !old,
        "the old name is still on the image after the rename returned: its removal was not \
         written first"
    );
}
