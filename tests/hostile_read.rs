//! Reads deliberately corrupted copies of `fat-images/floppy-fat12.img` through
//! `fatcache::fat::volume::Volume`: cyclic and out-of-range FAT chains, entries pointing
//! past the volume, sizes longer than their chains, absurd BPB fields, directories made of
//! garbage, a truncated image and random byte flips. Each case must end in a refusal to open
//! or an error (EIO, or ENOENT/ENOTDIR where that is right), never in a panic or a hang:
//! every operation runs on a helper thread with a timeout.
//!
//! Layout of the image (see `fat-images/MANIFEST.md`): 512-byte sectors, 1 reserved sector,
//! two FATs of 9 sectors (FAT12), 224 root entries at sector 19, data at sector 33 (cluster
//! 2). README.TXT is cluster 2, DATA.BIN clusters 3..=42, ODD.TXT 43..=52, EMPTYDIR 53 and
//! DIR1 54.

mod common;

use std::any::Any;
use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use common::TempDir;
use fatcache::FsError;
use fatcache::dev::Placement;
use fatcache::fat::volume::{Node, Volume};

/// The prefix of this binary's temporary directories.
const TEMP: &str = "hostile_read";
const IMAGE: &str = "floppy-fat12.img";
const CACHE_FRAMES: usize = 256;
const TIMEOUT: Duration = Duration::from_secs(20);

const SECTOR: u64 = 512;
/// Byte offsets of the two FAT copies.
const FATS: [u64; 2] = [SECTOR, 10 * SECTOR];
const ROOT: u64 = 19 * SECTOR;
/// Byte offsets of root directory entries.
const README_ENTRY: u64 = ROOT + 32;
const DATA_ENTRY: u64 = ROOT + 2 * 32;
const DIR1_ENTRY: u64 = ROOT + 6 * 32;
const DATA_FIRST: u32 = 3;
const DIR1_CLUSTER: u32 = 54;
/// One past the last cluster of the volume (2847 data clusters from cluster 2).
const PAST_VOLUME: u32 = 2849;

/// A private copy of the image; the directory goes on drop.
struct Img {
    _dir: TempDir,
    path: PathBuf,
}

fn image(test: &str) -> Img {
    let dir = TempDir::new(TEMP, test);
    let path = dir.copy_of(IMAGE);
    Img { _dir: dir, path }
}

fn poke(path: &Path, offset: u64, bytes: &[u8]) {
    let mut f = OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open image");
    f.seek(SeekFrom::Start(offset)).expect("seek");
    f.write_all(bytes).expect("write image");
}

fn peek<const N: usize>(path: &Path, offset: u64) -> [u8; N] {
    let mut f = fs::File::open(path).expect("open image");
    f.seek(SeekFrom::Start(offset)).expect("seek");
    let mut out = [0u8; N];
    f.read_exact(&mut out).expect("read image");
    out
}

/// Sets FAT12 entry `n` to `v` in both FAT copies.
fn set_fat12(path: &Path, n: u32, v: u16) {
    for fat in FATS {
        let off = fat + u64::from(n) * 3 / 2;
        let old = u16::from_le_bytes(peek::<2>(path, off));
        let new = if n % 2 == 1 {
            (old & 0x000f) | (v << 4)
        } else {
            (old & 0xf000) | (v & 0x0fff)
        };
        poke(path, off, &new.to_le_bytes());
    }
}

fn set_first_cluster(path: &Path, entry: u64, cluster: u32) {
    let [a, b, c, d] = cluster.to_le_bytes();
    poke(path, entry + 26, &[a, b]);
    poke(path, entry + 20, &[c, d]);
}

fn set_size(path: &Path, entry: u64, size: u32) {
    poke(path, entry + 28, &size.to_le_bytes());
}

fn panic_text(p: &(dyn Any + Send)) -> String {
    let s = p.downcast_ref::<&str>().map(|s| (*s).to_owned());
    s.or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic".to_owned())
}

/// Runs `f` on a helper thread: a panic there fails with "panic", no answer within
/// `TIMEOUT` with "hang".
fn guarded<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    let handle = thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(TIMEOUT) {
        Ok(v) => {
            let _ = handle.join();
            v
        }
        Err(RecvTimeoutError::Timeout) => panic!("{what}: hang (no answer in {TIMEOUT:?})"),
        Err(RecvTimeoutError::Disconnected) => match handle.join() {
            Err(p) => panic!("{what}: panic: {}", panic_text(p.as_ref())),
            Ok(()) => panic!("{what}: helper ended without an answer"),
        },
    }
}

fn open(path: &Path) -> Result<Volume, FsError> {
    Volume::open(path, Placement::default(), CACHE_FRAMES)
}

/// Up to `limit` bytes of the file from offset 0, in page-sized reads.
fn read_upto(vol: &Volume, node: &Node, limit: usize) -> Result<Vec<u8>, FsError> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while out.len() < limit {
        let n = vol.read(node, out.len() as u64, &mut buf)?;
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    Ok(out)
}

/// Opens the image at `path` and reads the whole file at `file`.
fn read_path(path: PathBuf, file: &'static str) -> Result<Vec<u8>, FsError> {
    let vol = open(&path)?;
    let node = vol.lookup_path(file)?;
    read_upto(&vol, &node, usize::MAX)
}

/// Opens the image and lists the directory at `dir`. A directory's node loads the whole
/// directory, so a damaged one may fail at the lookup of `dir` as well as at `read_dir`.
fn list_path(path: PathBuf, dir: &'static str) -> Result<Vec<String>, FsError> {
    let vol = open(&path)?;
    let node = vol.lookup_path(dir)?;
    let items = vol.read_dir(&node)?;
    Ok(items.into_iter().map(|i| i.name).collect())
}

#[track_caller]
fn assert_errno<T: std::fmt::Debug>(r: Result<T, FsError>, errno: i32, what: &str) {
    match r {
        Ok(v) => panic!("{what}: succeeded ({v:?}), expected errno {errno}"),
        Err(e) => assert_eq!(e.errno(), errno, "{what}: {e}"),
    }
}

#[track_caller]
fn assert_eio<T: std::fmt::Debug>(r: Result<T, FsError>, what: &str) {
    assert_errno(r, libc::EIO, what);
}

/// The first `len` bytes of DATA.BIN as the shipped image stores them (contiguous clusters).
fn data_bin_prefix(len: usize) -> Vec<u8> {
    let img = fs::read(common::repo_path("fat-images").join(IMAGE)).expect("read image");
    let start = (33 + u64::from(DATA_FIRST - 2)) * SECTOR;
    let start = usize::try_from(start).expect("offset");
    img[start..start + len].to_vec()
}

#[test]
fn cyclic_file_chain_reads_eio() {
    let img = image("cyclic");
    set_fat12(&img.path, DATA_FIRST + 1, DATA_FIRST as u16);
    let path = img.path.clone();
    let r = guarded("read DATA.BIN", move || read_path(path, "/DATA.BIN"));
    if let Ok(data) = &r {
        // Clusters 3, 4, 3, 4, ...: the third cluster read repeats the first.
        let repeats = data.len() >= 1536 && data[..512] == data[1024..1536];
        println!(
            "cyclic chain read {} bytes; cluster 3 repeated: {repeats}",
            data.len()
        );
    }
    assert_eio(r.map(|d| d.len()), "DATA.BIN with a cyclic chain");
}

#[test]
fn chain_into_reserved_cluster_reads_eio() {
    let img = image("reserved");
    set_fat12(&img.path, DATA_FIRST, 1);
    let path = img.path.clone();
    let r = guarded("read DATA.BIN", move || read_path(path, "/DATA.BIN"));
    assert_eio(r.map(|d| d.len()), "DATA.BIN chained to cluster 1");
}

#[test]
fn chain_past_volume_reads_eio() {
    for next in [0xff0, 0xff6, PAST_VOLUME as u16, 0xfef] {
        let img = image(&format!("past-{next:x}"));
        set_fat12(&img.path, DATA_FIRST, next);
        let path = img.path.clone();
        let r = guarded("read DATA.BIN", move || read_path(path, "/DATA.BIN"));
        assert_eio(
            r.map(|d| d.len()),
            &format!("DATA.BIN chained to {next:#x}"),
        );
    }
}

#[test]
fn first_cluster_past_volume_is_eio_others_readable() {
    let img = image("first-past");
    set_first_cluster(&img.path, DATA_ENTRY, PAST_VOLUME + 100);
    set_first_cluster(&img.path, DIR1_ENTRY, PAST_VOLUME);
    let path = img.path.clone();
    let (data, dir1, readme, one) = guarded("read files", move || {
        let data = read_path(path.clone(), "/DATA.BIN").map(|d| d.len());
        let dir1 = list_path(path.clone(), "/DIR1");
        let readme = read_path(path.clone(), "/README.TXT");
        let one = read_path(path, "/ODD.TXT").map(|d| d.len());
        (data, dir1, readme, one)
    });
    assert_eio(data, "DATA.BIN starting past the volume");
    assert_eio(dir1, "DIR1 starting past the volume");
    assert_eq!(readme.expect("README.TXT still readable").len(), 61);
    assert_eq!(one.expect("ODD.TXT still readable"), 5000);
}

#[test]
fn size_longer_than_chain_is_eio_past_chain() {
    let img = image("short-chain");
    // Cut DATA.BIN's chain after 16 clusters (8 KiB, two pages) of its 40.
    set_fat12(&img.path, DATA_FIRST + 15, 0xfff);
    let path = img.path.clone();
    let (head, tail) = guarded("read DATA.BIN", move || {
        let vol = open(&path)?;
        let node = vol.lookup_path("/DATA.BIN")?;
        let mut head = vec![0u8; 8192];
        let n = vol.read(&node, 0, &mut head)?;
        head.truncate(n);
        let mut tail = [0u8; 100];
        Ok::<_, FsError>((head, vol.read(&node, 8192, &mut tail)))
    })
    .expect("open, lookup and the read within the chain");
    assert_eq!(head, data_bin_prefix(8192), "bytes within the chain");
    assert_eio(tail, "read past the end of the chain");
}

#[test]
fn size_longer_than_one_cluster_chain_is_eio_past_page() {
    let img = image("long-size");
    // README.TXT: one cluster (512 bytes) but a size of 5000, two pages.
    set_size(&img.path, README_ENTRY, 5000);
    let path = img.path.clone();
    let (head, tail) = guarded("read README.TXT", move || {
        let vol = open(&path).expect("open");
        let node = vol.lookup_path("/README.TXT").expect("lookup");
        let (mut head, mut tail) = ([0u8; 61], [0u8; 100]);
        let head = vol.read(&node, 0, &mut head).map(|n| head[..n].to_vec());
        (head, vol.read(&node, 4096, &mut tail))
    });
    // The first page holds bytes past the chain too: like the kernel's readpage, fatcache
    // may fail the whole page; either way it must not invent bytes.
    println!(
        "README.TXT sized 5000, first 61 bytes: {:?}",
        head.as_ref().map(Vec::len)
    );
    if let Err(e) = &head {
        assert_eq!(e.errno(), libc::EIO, "{e}");
    }
    assert_eio(tail, "read in a page wholly past the chain");
}

/// Boot sector patches that `Volume::open` must refuse, each with the field it should name.
const BAD_BPB: &[(&str, usize, &[u8])] = &[
    ("bytes_per_sector", 11, &[0, 0]),
    ("bytes_per_sector", 11, &[0x01, 0x02]),
    ("sectors_per_cluster", 13, &[0]),
    ("sectors_per_cluster", 13, &[3]),
    ("num_fats", 16, &[0]),
    ("reserved_sectors", 14, &[0, 0]),
    ("root_entries", 17, &[0, 0]),
];

#[test]
fn absurd_bpb_fields_are_refused() {
    for &(field, offset, bytes) in BAD_BPB {
        let img = image(&format!("bpb-{field}-{offset}-{}", bytes[0]));
        poke(&img.path, offset as u64, bytes);
        let path = img.path.clone();
        let r = guarded(field, move || open(&path).map(|_| ()));
        let err = r.expect_err(field);
        let text = err.to_string();
        println!("{field} = {bytes:?}: refused: {text}");
        assert!(text.contains(field), "{field}={bytes:?}: error {text:?}");
    }
}

/// total_sectors 200 sectors past the end of the image (the FAT still covers the clusters):
/// open may refuse it; if it opens, a file placed in the missing tail must read EIO.
#[test]
fn total_sectors_past_image_refused_or_eio() {
    let img = image("bpb-total");
    poke(&img.path, 19, &(2880u16 + 200).to_le_bytes());
    // README.TXT moved to the last cluster the BPB claims, which the image lacks.
    set_first_cluster(&img.path, README_ENTRY, 3048);
    set_fat12(&img.path, 3048, 0xfff);
    let path = img.path.clone();
    let r = guarded("open and read", move || {
        let vol = open(&path)?;
        println!("total_sectors past the image: opened");
        let node = vol.lookup_path("/README.TXT")?;
        read_upto(&vol, &node, usize::MAX)
    });
    match r {
        Err(e) => {
            println!("total_sectors past the image: {e}");
            assert_eq!(e.errno(), libc::EIO, "refusal or read error: {e}");
        }
        Ok(d) => panic!("read {} bytes past the end of the image", d.len()),
    }
}

#[test]
fn garbage_directory_never_panics() {
    let img = image("garbage-dir");
    // DIR1's entry now points at DATA.BIN's bytes (a pattern cycling 0..250).
    set_first_cluster(&img.path, DIR1_ENTRY, DATA_FIRST + 2);
    let path = img.path.clone();
    let r = guarded("read_dir of garbage", move || {
        let listed = list_path(path.clone(), "/DIR1");
        let walked = walk_image(&path);
        (listed.map(|l| l.len()), walked)
    });
    println!("garbage DIR1: read_dir {:?}, walk {:?}", r.0, r.1);
}

#[test]
fn looping_directory_chain_is_eio() {
    let img = image("dir-loop");
    set_fat12(&img.path, DIR1_CLUSTER, DIR1_CLUSTER as u16);
    let path = img.path.clone();
    let (listed, looked) = guarded("read_dir of a loop", move || {
        let looked = read_path(path.clone(), "/DIR1/ONE.TXT").map(|d| d.len());
        (list_path(path, "/DIR1"), looked)
    });
    assert_eio(listed, "read_dir of a directory whose chain loops");
    assert_eio(looked, "lookup through a directory whose chain loops");
}

#[test]
fn truncated_image_refused_or_eio() {
    let img = image("truncated");
    let f = OpenOptions::new()
        .write(true)
        .open(&img.path)
        .expect("open");
    f.set_len(20 * 1024).expect("truncate");
    drop(f);
    let path = img.path.clone();
    let (data, dir1) = guarded("read truncated", move || {
        let data = read_path(path.clone(), "/DATA.BIN").map(|d| d.len());
        (data, list_path(path, "/DIR1"))
    });
    println!("truncated image: DATA.BIN {data:?}, DIR1 {dir1:?}");
    assert_eio(data, "DATA.BIN beyond the end of a truncated image");
    assert_eio(dir1, "DIR1 beyond the end of a truncated image");
}

/// What one hostile image came to.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Tally {
    refused: u32,
    eio: u32,
    other_err: u32,
    ok: u32,
}

impl Tally {
    fn note<T>(&mut self, r: &Result<T, FsError>) {
        match r {
            Ok(_) => self.ok += 1,
            Err(e) if e.errno() == libc::EIO => self.eio += 1,
            Err(_) => self.other_err += 1,
        }
    }
}

/// Maximum directory depth and number of entries a walk visits.
const MAX_DEPTH: usize = 8;
const MAX_ENTRIES: usize = 2000;
/// Bytes read of one file at most.
const MAX_FILE: usize = 2 << 20;

/// Opens the image, walks the tree and reads every file, tallying each operation.
fn walk_image(path: &Path) -> Tally {
    let mut tally = Tally::default();
    let vol = match open(path) {
        Ok(vol) => vol,
        Err(_) => {
            tally.refused = 1;
            return tally;
        }
    };
    let mut budget = MAX_ENTRIES;
    tally.note(&vol.label());
    walk(&vol, &vol.root(), 0, &mut budget, &mut tally);
    tally
}

/// Lists `dir` and visits each item: a directory's node is one operation (it loads the
/// directory) and its walk more; a file's node and its read are one.
fn walk(vol: &Volume, dir: &Node, depth: usize, budget: &mut usize, tally: &mut Tally) {
    let listed = vol.read_dir(dir);
    tally.note(&listed);
    let Ok(items) = listed else { return };
    for item in items {
        if *budget == 0 {
            return;
        }
        *budget -= 1;
        if item.entry.is_dir() {
            let sub = vol.child_at(dir, item.offset);
            tally.note(&sub);
            if let (Ok(sub), true) = (sub, depth < MAX_DEPTH) {
                walk(vol, &sub, depth + 1, budget, tally);
            }
        } else {
            let node = vol.child_at(dir, item.offset);
            tally.note(&node.and_then(|n| read_upto(vol, &n, MAX_FILE)));
        }
    }
}

/// xorshift64, fixed seed: the same images on every run.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

const FLIP_IMAGES: usize = 200;
const FLIPS: usize = 8;
const FLIP_SPAN: usize = 40 * 1024;

/// Flips `FLIPS` random bytes in the first `span` bytes of `FLIP_IMAGES` copies, walks
/// each and prints what they came to; panics only on a panic or hang of a walk.
fn flip_run(test: &str, span: usize, seed: u64) {
    let img = image(test);
    let pristine = fs::read(&img.path).expect("read copy");
    let mut rng = XorShift(seed);
    let (mut images, mut total) = ([0u32; 4], Tally::default());
    let started = Instant::now();
    for i in 0..FLIP_IMAGES {
        let mut head = pristine[..span].to_vec();
        for _ in 0..FLIPS {
            let at = (rng.next() % span as u64) as usize;
            head[at] ^= (rng.next() % 255 + 1) as u8;
        }
        poke(&img.path, 0, &head);
        let path = img.path.clone();
        let t = guarded(&format!("{test}: image {i}"), move || walk_image(&path));
        images[image_outcome(&t)] += 1;
        (total.refused, total.eio) = (total.refused + t.refused, total.eio + t.eio);
        (total.other_err, total.ok) = (total.other_err + t.other_err, total.ok + t.ok);
    }
    println!(
        "{test}: {FLIP_IMAGES} images, {FLIPS} flips in the first {span} bytes, {:?}: \
         {} refused to open, {} with some EIO, {} with other errors only, {} clean; \
         operations {total:?}",
        started.elapsed(),
        images[0],
        images[1],
        images[2],
        images[3],
    );
}

#[test]
fn random_byte_flips_never_panic_or_hang() {
    flip_run("flips", FLIP_SPAN, 0x9e37_79b9_7f4a_7c15);
}

/// The same over the metadata only: boot sector, both FATs and the root directory.
#[test]
fn random_metadata_flips_never_panic_or_hang() {
    flip_run("meta-flips", 33 * SECTOR as usize, 0x2545_f491_4f6c_dd1d);
}

/// Index into the per-image counts: 0 refused, 1 some EIO, 2 other errors only, 3 clean.
fn image_outcome(t: &Tally) -> usize {
    match t {
        t if t.refused > 0 => 0,
        t if t.eio > 0 => 1,
        t if t.other_err > 0 => 2,
        _ => 3,
    }
}
