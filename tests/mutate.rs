//! The mutation harness: 1,000 hostile images made from the shipped FAT12 and FAT16 images and
//! a FAT32 image made at test time, each with a few bytes of its boot sector (and FSInfo),
//! FATs or directories flipped or overwritten. Each is mounted read-write through
//! `fatcache::fat::volume::Volume`, walked, every file read, then written (create, write,
//! extend, truncate, mkdir, rename, unlink, rmdir, fsync, syncfs), unmounted and mounted once
//! more read-only and listed again.
//!
//! Pass: the mount refuses with an error or succeeds; every operation returns, with a result
//! or an `FsError`; no panic but a modelled `bug_on!` (counted and shown, not failed); no hang
//! (the operations run on a helper thread, and the test thread fails the image when no
//! operation has finished for `OP_TIMEOUT`). A failure
//! names its seed: `MUTATE_SEED=<seed> cargo test --test mutate -- --nocapture` replays that
//! image alone and prints each operation as it goes; `MUTATE_IMAGES=N` tries N images
//! instead of 1,000 (the seeds of the first 1,000 stay the same).
//!
//! Seeds: image `i` uses seed `BASE_SEED + i` for a ChaCha8 generator (rand_chacha, already in
//! the tree through proptest: its output for a seed is fixed by the algorithm, so a seed names
//! the same image on every machine and every version of the crate).

mod common;

use std::any::Any;
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::TempDir;
use fatcache::FsError;
use fatcache::bug::OnBug;
use fatcache::dev::Placement;
use fatcache::fat::bpb::{Bpb, FatType};
use fatcache::fat::dir::{DirLocation, Directory};
use fatcache::fat::dirent::SlotKind;
use fatcache::fat::mkfs::{MkfsOptions, mkfs};
use fatcache::fat::name::ShortnameMode;
use fatcache::fat::table::{FatEntry, FatTable, MemFat};
use fatcache::fat::volume::{ErrorsPolicy, MountOptions, Node, Volume};
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};

const TEMP: &str = "mutate";
/// Mutated images in all, shared out over the three base images in turn.
const IMAGES: u64 = 1000;
const BASE_SEED: u64 = 0x6d75_7461_7465_0000;
/// The longest one operation may take before it counts as a hang: far above any real
/// operation on these small images, even on a loaded machine.
const OP_TIMEOUT: Duration = Duration::from_secs(30);
const CACHE_FRAMES: usize = 256;
/// Limits of one walk: depth, entries visited, bytes read of one file.
const MAX_DEPTH: usize = 6;
const MAX_ENTRIES: usize = 300;
const MAX_FILE: usize = 256 << 10;
/// Bytes of the image files written per chunk; only chunks with data are written.
const CHUNK: usize = 4096;
const FAT32_BYTES: u64 = 34 << 20;

/// A base image, its bytes and where its metadata lies.
struct Base {
    name: &'static str,
    bytes: Vec<u8>,
    /// Chunks holding any non-zero byte: the rest of the image file stays a hole.
    data_chunks: BTreeSet<usize>,
    layout: Layout,
}

/// Byte ranges of the metadata, from the pristine image.
struct Layout {
    ty: FatType,
    max_cluster: u32,
    /// Byte offsets of the boot sector, and on FAT32 of FSInfo and the backup boot sector.
    boot: Vec<usize>,
    /// Byte offset of each FAT copy.
    fats: Vec<usize>,
    /// Entries of the FAT worth mutating: up to a little past the last cluster in use.
    fat_entries: u32,
    /// Clusters in use, for values that make chains cross and loop.
    used: Vec<u32>,
    /// The bytes of every directory: the fixed root's used part, every directory cluster.
    dirs: Vec<std::ops::Range<usize>>,
}

impl Layout {
    fn of(bytes: &[u8]) -> Layout {
        let bpb = Bpb::parse(&bytes[..512]).expect("base image parses");
        let bps = usize::from(bpb.bytes_per_sector);
        let table = FatTable::new(&bpb, MemFat::new(bytes.to_vec()), None).expect("fat");
        let spf = bpb.sectors_per_fat() as usize * bps;
        let first = bpb.first_fat_sector() as usize * bps;
        let fats = (0..usize::from(bpb.num_fats))
            .map(|n| first + n * spf)
            .collect();
        let mut boot = vec![0];
        if let (Some(info), Some(f32)) = (bpb.fsinfo_sector(), bpb.fat32) {
            boot.push(info as usize * bps);
            boot.push(usize::from(f32.backup_boot_sector) * bps);
        }
        let used: Vec<u32> = (2..=bpb.max_cluster())
            .filter(|&c| table.get(c).is_ok_and(|e| e != FatEntry::Free))
            .collect();
        let fat_entries = used.last().copied().unwrap_or(2) + 16;
        let mut dirs = Vec::new();
        let root = DirLocation::root(&bpb).expect("root");
        collect_dirs(&table, &bpb, root, &mut dirs, 0);
        Layout {
            ty: bpb.fat_type(),
            max_cluster: bpb.max_cluster(),
            boot,
            fats,
            fat_entries: fat_entries.min(bpb.max_cluster() + 1),
            used,
            dirs,
        }
    }
}

/// Adds the byte ranges of the directory at `loc` and of every directory below it.
fn collect_dirs(
    table: &FatTable<MemFat>,
    bpb: &Bpb,
    loc: DirLocation,
    out: &mut Vec<std::ops::Range<usize>>,
    depth: usize,
) {
    let dir = Directory::load(table, bpb, loc, ShortnameMode::Mixed).expect("base dir loads");
    match loc {
        DirLocation::Fixed { offset, len } => {
            // The used part and a few free entries after it; the rest is zeros.
            let hi = dir
                .entries()
                .chain(dir.labels().iter().cloned())
                .map(|s| s.offset)
                .max();
            let used = hi.map_or(0, |h| h + 32) + 4 * 32;
            let start = offset as usize;
            out.push(start..start + used.min(len));
        }
        DirLocation::Chain { first } => {
            let cluster = bpb.bytes_per_cluster() as usize;
            for c in table.chain(first).expect("base chain") {
                let sector = bpb.cluster_to_sector(c).expect("cluster") as usize;
                let at = sector * usize::from(bpb.bytes_per_sector);
                out.push(at..at + cluster);
            }
        }
    }
    if depth >= MAX_DEPTH {
        return;
    }
    for slot in dir.entries() {
        if slot.kind == SlotKind::Entry && slot.entry.is_dir() && slot.entry.first_cluster >= 2 {
            let sub = DirLocation::Chain {
                first: slot.entry.first_cluster,
            };
            collect_dirs(table, bpb, sub, out, depth + 1);
        }
    }
}

impl Base {
    fn new(name: &'static str, bytes: Vec<u8>) -> Base {
        let data_chunks = bytes
            .chunks(CHUNK)
            .enumerate()
            .filter(|(_, c)| c.iter().any(|&b| b != 0))
            .map(|(i, _)| i)
            .collect();
        let layout = Layout::of(&bytes);
        Base {
            name,
            bytes,
            data_chunks,
            layout,
        }
    }
}

/// A FAT32 volume made with `mkfs` and filled through the library: nested directories, long
/// and short names, files of one and of many clusters, a deleted entry.
fn fat32_base(dir: &TempDir) -> Vec<u8> {
    let path = dir.0.join("base32.img");
    let opts = MkfsOptions {
        size: FAT32_BYTES,
        fat: Some(FatType::Fat32),
        label: Some("MUTATE".into()),
        volume_id: Some(0x1234_5678),
        force: true,
    };
    mkfs(&path, &opts).expect("mkfs FAT32");
    let vol = Volume::mount(&path, mount_options(0)).expect("mount new FAT32");
    let root = vol.root();
    let pattern = |n: usize| (0..n).map(|i| (i * 7 % 251) as u8).collect::<Vec<_>>();
    let one = vol.mkdir(&root, "Directory One").expect("mkdir");
    let two = vol.mkdir(&one, "SUB").expect("mkdir");
    for (dir, name, len) in [
        (&root, "README.TXT", 300),
        (&root, "A file with a long name.bin", 20_000),
        (&one, "inner.txt", 5000),
        (&two, "DEEP.DAT", 1500),
        (&root, "gone.tmp", 100),
    ] {
        let f = vol.create(dir, name).expect("create");
        vol.write(&f, 0, &pattern(len)).expect("write");
    }
    vol.unlink(&root, "gone.tmp").expect("unlink");
    for i in 0..20 {
        vol.create(&one, &format!("many-{i:02}.txt"))
            .expect("create");
    }
    vol.unmount().expect("unmount");
    fs::read(&path).expect("read FAT32 image")
}

fn mount_options(seed: u64) -> MountOptions {
    MountOptions {
        cache_frames: CACHE_FRAMES,
        on_bug: OnBug::Panic,
        // Both policies that carry on: `continue` lets the write operations meet the damage,
        // `remount-ro` (the default) checks that the switch to read-only holds up.
        errors: if seed % 2 == 0 {
            ErrorsPolicy::Continue
        } else {
            ErrorsPolicy::RemountRo
        },
        ..MountOptions::default()
    }
}

/// The changed bytes of one image over its base.
#[derive(Default)]
struct Patch {
    bytes: BTreeMap<usize, u8>,
    what: Vec<String>,
}

impl Patch {
    fn get(&self, base: &Base, at: usize) -> u8 {
        self.bytes.get(&at).copied().unwrap_or(base.bytes[at])
    }

    fn put(&mut self, at: usize, b: u8) {
        self.bytes.insert(at, b);
    }

    fn put_le(&mut self, at: usize, v: u32, len: usize) {
        for (i, b) in v.to_le_bytes().into_iter().take(len).enumerate() {
            self.put(at + i, b);
        }
    }

    /// Writes the mutated image to `path`: only chunks with data, the rest a hole.
    fn write(&self, base: &Base, path: &Path) {
        let f = File::create(path).expect("create image");
        f.set_len(base.bytes.len() as u64).expect("size image");
        let touched = self.bytes.keys().map(|&at| at / CHUNK);
        let chunks: BTreeSet<usize> = base.data_chunks.iter().copied().chain(touched).collect();
        for c in chunks {
            let start = c * CHUNK;
            let end = (start + CHUNK).min(base.bytes.len());
            let mut buf = base.bytes[start..end].to_vec();
            for (&at, &b) in self.bytes.range(start..end) {
                buf[at - start] = b;
            }
            f.write_all_at(&buf, start as u64).expect("write image");
        }
    }
}

struct Rng(ChaCha8Rng);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        (self.0.next_u64() % n.max(1) as u64) as usize
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
}

/// A cluster number a chain or entry could be damaged with: in use (crossing and looping
/// chains), free, reserved, just past the end, the markers, or anything.
fn cluster_value(rng: &mut Rng, l: &Layout) -> u32 {
    let (bad, eoc) = match l.ty {
        FatType::Fat12 => (0xff7, 0xfff),
        FatType::Fat16 => (0xfff7, 0xffff),
        FatType::Fat32 => (0x0fff_fff7, 0x0fff_ffff),
    };
    match rng.below(8) {
        0 | 1 => {
            let used = if l.used.is_empty() { &[2][..] } else { &l.used };
            rng.pick(used)
        }
        2 => rng.pick(&[0, 1]),
        3 => l.max_cluster + 1 + rng.below(3) as u32,
        4 => rng.pick(&[bad, eoc, eoc - 7]),
        5 => l.max_cluster,
        6 => 2 + rng.below(l.fat_entries as usize) as u32,
        _ => rng.0.next_u32(),
    }
}

/// Damages a FAT entry in the used part of one FAT (mostly the first).
fn mutate_fat(rng: &mut Rng, base: &Base, p: &mut Patch) {
    let l = &base.layout;
    let fat = if rng.chance(85) {
        l.fats[0]
    } else {
        rng.pick(&l.fats)
    };
    let c = rng.below(l.fat_entries as usize + 1) as u32;
    if rng.chance(25) {
        let at = fat + rng.below(l.fat_entries as usize * 4 / 2);
        let b = p.get(base, at) ^ (1 << rng.below(8));
        p.put(at, b);
        p.what.push(format!("fat byte {at:#x} ^= bit"));
        return;
    }
    let v = cluster_value(rng, l);
    match l.ty {
        FatType::Fat12 => {
            let at = fat + (c as usize) * 3 / 2;
            let old = u16::from_le_bytes([p.get(base, at), p.get(base, at + 1)]);
            let v = (v & 0xfff) as u16;
            let new = if c % 2 == 1 {
                (old & 0x000f) | (v << 4)
            } else {
                (old & 0xf000) | v
            };
            p.put_le(at, u32::from(new), 2);
        }
        FatType::Fat16 => p.put_le(fat + 2 * c as usize, v, 2),
        FatType::Fat32 => p.put_le(fat + 4 * c as usize, v, 4),
    }
    p.what.push(format!("fat {fat:#x} entry {c} = {v:#x}"));
}

/// Damages one field of one directory entry, or a random byte of a directory.
fn mutate_dir(rng: &mut Rng, base: &Base, p: &mut Patch) {
    let l = &base.layout;
    let range = rng.pick(&l.dirs.iter().map(|r| (r.start, r.end)).collect::<Vec<_>>());
    let entries = (range.1 - range.0) / 32;
    let entry = range.0 + 32 * rng.below(entries);
    match rng.below(9) {
        0 => {
            let b = rng.pick(&[0x00, 0xe5, 0x05, b'.', b' ', 0x41, 0x01, 0x7f, 0xff]);
            p.put(entry, b);
            p.what.push(format!("dirent {entry:#x} name[0] = {b:#x}"));
        }
        1 => {
            let b = rng.pick(&[0x0f, 0x10, 0x08, 0x18, 0x20, 0x3f, 0xff, 0x00]);
            p.put(entry + 11, b);
            p.what.push(format!("dirent {entry:#x} attr = {b:#x}"));
        }
        2 | 3 => {
            let v = cluster_value(rng, l);
            p.put_le(entry + 26, v & 0xffff, 2);
            p.put_le(entry + 20, v >> 16, 2);
            p.what.push(format!("dirent {entry:#x} cluster = {v:#x}"));
        }
        4 => {
            let v = match rng.below(4) {
                0 => 0,
                1 => u32::MAX,
                2 => rng.0.next_u32() % (4 << 20),
                _ => rng.0.next_u32(),
            };
            p.put_le(entry + 28, v, 4);
            p.what.push(format!("dirent {entry:#x} size = {v}"));
        }
        5 => {
            // An LFN slot's ordinal or checksum.
            let at = entry + rng.pick(&[0, 13]);
            let b = rng.pick(&[0x41, 0x42, 0x01, 0x54, 0x40]) ^ (rng.below(2) as u8);
            p.put(at, b);
            p.what.push(format!("dirent byte {at:#x} = {b:#x} (lfn)"));
        }
        _ => {
            let at = entry + rng.below(32);
            let b = if rng.chance(50) {
                p.get(base, at) ^ (1 << rng.below(8))
            } else {
                rng.0.next_u32() as u8
            };
            p.put(at, b);
            p.what.push(format!("dir byte {at:#x} = {b:#x}"));
        }
    }
}

/// Damages the boot sector (mostly the BPB), FSInfo or the backup boot sector.
fn mutate_boot(rng: &mut Rng, base: &Base, p: &mut Patch) {
    let l = &base.layout;
    // Sector 0 mostly; on FAT32 also FSInfo (index 1) and the backup boot sector (index 2).
    let sector = if rng.chance(80) {
        0
    } else {
        rng.below(l.boot.len())
    };
    let start = l.boot[sector];
    let at = if sector == 1 {
        // FSInfo: its signatures, free count and next-free hint.
        start + rng.pick(&[0, 1, 484, 488, 489, 490, 491, 492, 493, 495, 508, 511])
    } else if rng.chance(90) {
        // The BPB and extended boot record are the first 90 bytes.
        start + rng.below(90)
    } else {
        start + 510 + rng.below(2)
    };
    let b = match rng.below(3) {
        0 => p.get(base, at) ^ (1 << rng.below(8)),
        1 => rng.pick(&[0x00, 0xff, 0x01, 0x80, 0x02]),
        _ => rng.0.next_u32() as u8,
    };
    p.put(at, b);
    p.what.push(format!("boot byte {at:#x} = {b:#x}"));
}

/// The damage of image `seed`: one to six changes, a fifth in the boot area, the rest in
/// FATs and directories.
fn mutate(base: &Base, seed: u64) -> Patch {
    let mut rng = Rng(ChaCha8Rng::seed_from_u64(seed));
    let mut p = Patch::default();
    for _ in 0..1 + rng.below(6) {
        match rng.below(10) {
            0 | 1 => mutate_boot(&mut rng, base, &mut p),
            2..=5 => mutate_fat(&mut rng, base, &mut p),
            _ => mutate_dir(&mut rng, base, &mut p),
        }
    }
    p
}

/// What one image came to, counted on its helper thread.
#[derive(Default)]
struct Tally {
    /// The mount's errno if it refused.
    refused: Option<i32>,
    ops: u64,
    /// Failed operations counted by errno and by operation and errno.
    errors: BTreeMap<i32, u64>,
    by_op: BTreeMap<(&'static str, i32), u64>,
}

/// Where the helper thread is: the watchdog sees it move without being woken per operation.
#[derive(Default)]
struct Progress {
    ops: AtomicU64,
    last: Mutex<&'static str>,
}

/// Counts operations as they finish and shows them when replaying one seed.
struct Reporter {
    progress: Arc<Progress>,
    tally: RefCell<Tally>,
    verbose: bool,
}

impl Reporter {
    fn op<T>(&self, what: &'static str, r: Result<T, FsError>) -> Option<T> {
        *self.progress.last.lock().expect("progress lock") = what;
        self.progress.ops.fetch_add(1, Ordering::Relaxed);
        let mut t = self.tally.borrow_mut();
        t.ops += 1;
        if let Err(e) = &r {
            *t.errors.entry(e.errno()).or_default() += 1;
            *t.by_op.entry((what, e.errno())).or_default() += 1;
        }
        if self.verbose {
            match &r {
                Ok(_) => println!("  {what}: ok"),
                Err(e) => println!("  {what}: {e} ({})", errno_name(e.errno())),
            }
        }
        r.ok()
    }
}

/// What a walk met first, for the write phase: a file and a directory of the root (with
/// their names), a file further down.
#[derive(Default)]
struct Found {
    file: Option<(Arc<Node>, String)>,
    dir: Option<(Arc<Node>, String)>,
    deep: Option<Arc<Node>>,
}

/// Walks the tree below `dir`, reading every file up to `MAX_FILE` bytes if `read`; notes
/// in `found` what the write phase works on.
fn walk(
    vol: &Volume,
    dir: &Node,
    depth: usize,
    budget: &mut usize,
    rep: &Reporter,
    read: bool,
    found: &mut Found,
) {
    let Some(items) = rep.op("read_dir", vol.read_dir(dir)) else {
        return;
    };
    for item in items {
        if *budget == 0 {
            return;
        }
        *budget -= 1;
        let Some(node) = rep.op("child_at", vol.child_at(dir, item.offset)) else {
            continue;
        };
        if node.is_dir() {
            if found.dir.is_none() && depth == 0 {
                found.dir = Some((node.clone(), item.name.clone()));
            }
            if depth < MAX_DEPTH {
                walk(vol, &node, depth + 1, budget, rep, read, found);
            }
        } else if read {
            rep.op("lookup", vol.lookup(dir, &item.name));
            let mut buf = vec![0u8; 64 << 10];
            let mut at = 0u64;
            while (at as usize) < MAX_FILE {
                match rep.op("read", vol.read(&node, at, &mut buf)) {
                    Some(0) | None => break,
                    Some(n) => at += n as u64,
                }
            }
            if found.file.is_none() && depth == 0 {
                found.file = Some((node, item.name.clone()));
            } else if found.deep.is_none() && depth > 0 {
                found.deep = Some(node);
            }
        }
    }
}

/// Mounts, walks, reads, writes and unmounts the image at `path`, then mounts it read-only
/// and walks it again.
fn exercise(path: &Path, seed: u64, rep: &Reporter) {
    let vol = match Volume::mount(path, mount_options(seed)) {
        Ok(vol) => vol,
        Err(e) => {
            if rep.verbose {
                println!("  mount refused: {e}");
            }
            rep.tally.borrow_mut().refused = Some(e.errno());
            return;
        }
    };
    rep.op("label", vol.label());
    let _ = vol.statfs();
    let root = vol.root();
    let mut found = Found::default();
    let mut budget = MAX_ENTRIES;
    walk(&vol, &root, 0, &mut budget, rep, true, &mut found);
    write_phase(&vol, &root, found, rep);
    rep.op("unmount", vol.unmount());
    // What the writes left must mount (or be refused) and list without harm too.
    let ro = MountOptions {
        placement: Placement {
            read_only: true,
            ..Placement::default()
        },
        ..mount_options(seed)
    };
    if let Some(vol) = rep.op("remount", Volume::mount(path, ro)) {
        let root = vol.root();
        let mut budget = MAX_ENTRIES;
        walk(
            &vol,
            &root,
            0,
            &mut budget,
            rep,
            false,
            &mut Found::default(),
        );
        rep.op("unmount", vol.unmount());
    }
}

fn write_phase(vol: &Volume, root: &Node, found: Found, rep: &Reporter) {
    let data: Vec<u8> = (0..12_000).map(|i| (i % 253) as u8).collect();
    if let Some(f) = rep.op("create", vol.create(root, "mutate new file.txt")) {
        rep.op("write", vol.write(&f, 0, &data));
        // Extend past the end: a hole, then more clusters.
        rep.op("write", vol.write(&f, 40_000, &data[..3000]));
        rep.op("truncate", vol.set_size(&f, 5000));
        rep.op("truncate", vol.set_size(&f, 9000));
        rep.op("fsync", vol.fsync(&f));
    }
    let sub = rep.op("mkdir", vol.mkdir(root, "Mutate Dir"));
    if let Some(sub) = &sub {
        if let Some(g) = rep.op("create", vol.create(sub, "inner.bin")) {
            rep.op("write", vol.write(&g, 0, &data[..700]));
        }
        rep.op(
            "rename",
            vol.rename(root, "mutate new file.txt", sub, "moved.txt", false),
        );
        rep.op("unlink", vol.unlink(sub, "moved.txt"));
        rep.op("unlink", vol.unlink(sub, "inner.bin"));
        rep.op("rmdir", vol.rmdir(root, "Mutate Dir"));
    }
    // A file that was on the damaged image: grow it, cut it, rename it, remove it.
    if let Some((node, name)) = found.file {
        let size = node.size();
        rep.op("write", vol.write(&node, size, &data[..2000]));
        rep.op("fallocate", vol.fallocate(&node, 0, 0, size + 20_000));
        rep.op("truncate", vol.set_size(&node, size / 2));
        rep.op(
            "rename",
            vol.rename(root, &name, root, "renamed.old", false),
        );
        rep.op("unlink", vol.unlink(root, "renamed.old"));
    }
    // One further down: overwrite it in place (its clusters may be anyone's now).
    if let Some(node) = found.deep {
        rep.op("write", vol.write(&node, 0, &data[..1000]));
        rep.op("fsync", vol.fsync(&node));
    }
    // A directory that was on it: add a file there, move it under a new directory and back,
    // try to remove it.
    if let Some((dir, name)) = found.dir {
        if let Some(h) = rep.op("create", vol.create(&dir, "added in old dir.txt")) {
            rep.op("write", vol.write(&h, 0, &data[..100]));
        }
        if let Some(new) = rep.op("mkdir", vol.mkdir(root, "Mutate Parent")) {
            rep.op("rename", vol.rename(root, &name, &new, "moved dir", false));
            rep.op("rename", vol.rename(&new, "moved dir", root, &name, false));
            rep.op("rmdir", vol.rmdir(root, "Mutate Parent"));
        }
        rep.op("rmdir", vol.rmdir(root, &name));
    }
    rep.op("sync_fs", vol.sync_fs());
}

/// What all the images came to.
#[derive(Default)]
struct Totals {
    tried: u64,
    refused: BTreeMap<String, u64>,
    ops: u64,
    op_errors: BTreeMap<String, u64>,
    /// Per operation and errno: how often, and the first seed that met it.
    by_op: BTreeMap<(&'static str, String), (u64, u64)>,
    bug_hits: Vec<(u64, String)>,
    failures: Vec<String>,
}

fn errno_name(errno: i32) -> String {
    let known = [
        (libc::EIO, "EIO"),
        (libc::ENOSPC, "ENOSPC"),
        (libc::ENOENT, "ENOENT"),
        (libc::EEXIST, "EEXIST"),
        (libc::ENOTDIR, "ENOTDIR"),
        (libc::EISDIR, "EISDIR"),
        (libc::ENOTEMPTY, "ENOTEMPTY"),
        (libc::EINVAL, "EINVAL"),
        (libc::EROFS, "EROFS"),
        (libc::EFBIG, "EFBIG"),
        (libc::ENOMEM, "ENOMEM"),
        (libc::ENAMETOOLONG, "ENAMETOOLONG"),
        (libc::EPERM, "EPERM"),
        (libc::EACCES, "EACCES"),
        (libc::EOPNOTSUPP, "EOPNOTSUPP"),
    ];
    known
        .iter()
        .find(|(e, _)| *e == errno)
        .map_or_else(|| format!("errno {errno}"), |(_, n)| (*n).to_owned())
}

fn panic_text(p: &(dyn Any + Send)) -> String {
    let s = p.downcast_ref::<&str>().map(|s| (*s).to_owned());
    s.or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic".to_owned())
}

/// How often the watchdog looks at the helper's progress.
const POLL: Duration = Duration::from_millis(250);

/// Runs one image on a helper thread; a hang is no progress for `OP_TIMEOUT`.
fn run_one(base: &Base, seed: u64, path: &Path, verbose: bool, t: &mut Totals) {
    let patch = mutate(base, seed);
    if verbose {
        println!("seed {seed:#x} on {}: {}", base.name, patch.what.join("; "));
    }
    patch.write(base, path);
    let (tx, rx) = mpsc::channel();
    let owned: PathBuf = path.to_owned();
    let progress = Arc::new(Progress::default());
    let theirs = Arc::clone(&progress);
    let handle = thread::spawn(move || {
        let rep = Reporter {
            progress: theirs,
            tally: RefCell::default(),
            verbose,
        };
        exercise(&owned, seed, &rep);
        let _ = tx.send(rep.tally.into_inner());
    });
    t.tried += 1;
    let what = || format!("seed {seed:#x} ({}: {})", base.name, patch.what.join("; "));
    let last = || *progress.last.lock().expect("progress lock");
    let (mut seen, mut since) = (0, Instant::now());
    loop {
        match rx.recv_timeout(POLL) {
            Ok(tally) => {
                let _ = handle.join();
                if let Some(errno) = tally.refused {
                    *t.refused.entry(errno_name(errno)).or_default() += 1;
                }
                t.ops += tally.ops;
                for (errno, n) in tally.errors {
                    *t.op_errors.entry(errno_name(errno)).or_default() += n;
                }
                for ((what, errno), n) in tally.by_op {
                    let e = t
                        .by_op
                        .entry((what, errno_name(errno)))
                        .or_insert((0, seed));
                    e.0 += n;
                }
                return;
            }
            Err(RecvTimeoutError::Timeout) => {
                let now = progress.ops.load(Ordering::Relaxed);
                if now != seen {
                    (seen, since) = (now, Instant::now());
                } else if since.elapsed() > OP_TIMEOUT {
                    // The thread is left behind; the next image uses another file.
                    let (what, last) = (what(), last());
                    t.failures.push(format!(
                        "{what}: hang after {last} (no progress in {OP_TIMEOUT:?})"
                    ));
                    return;
                }
            }
            Err(RecvTimeoutError::Disconnected) => {
                let text = match handle.join() {
                    Err(p) => panic_text(p.as_ref()),
                    Ok(()) => "helper ended without an answer".to_owned(),
                };
                if text.contains("BUG at ") {
                    t.bug_hits
                        .push((seed, text.lines().next().unwrap_or("").to_owned()));
                } else {
                    let (what, last) = (what(), last());
                    t.failures
                        .push(format!("{what}: panic after {last}: {text}"));
                }
                return;
            }
        }
    }
}

#[test]
fn mutated_images_never_panic_or_hang() {
    let dir = TempDir::new(TEMP, "images");
    let bases = [
        Base::new(
            "floppy-fat12.img",
            fs::read(common::repo_path("fat-images/floppy-fat12.img")).expect("read FAT12"),
        ),
        Base::new(
            "small-fat16.img",
            fs::read(common::repo_path("fat-images/small-fat16.img")).expect("read FAT16"),
        ),
        Base::new("mkfs-fat32", fat32_base(&dir)),
    ];
    let only: Option<u64> = std::env::var("MUTATE_SEED").ok().map(|s| {
        let s = s.trim_start_matches("0x");
        u64::from_str_radix(s, 16).expect("MUTATE_SEED in hex, as failures print it")
    });
    // A longer search by option; CI runs the default.
    let images = std::env::var("MUTATE_IMAGES").map_or(IMAGES, |n| {
        n.parse().expect("MUTATE_IMAGES: a number of images")
    });
    let mut totals = Totals::default();
    let started = Instant::now();
    // One seed replayed, whichever run printed it; else the first `images`.
    let indices = match only {
        Some(seed) => {
            let i = seed
                .checked_sub(BASE_SEED)
                .expect("a seed this test printed");
            i..i + 1
        }
        None => 0..images,
    };
    for i in indices {
        let seed = BASE_SEED + i;
        let base = &bases[(i % bases.len() as u64) as usize];
        let path = dir.0.join(format!("m{i}.img"));
        run_one(base, seed, &path, only.is_some(), &mut totals);
        let _ = fs::remove_file(&path);
    }
    let refused: u64 = totals.refused.values().sum();
    let erred: u64 = totals.op_errors.values().sum();
    println!(
        "mutate: {} images in {:?}: {refused} refused at mount {:?}; {} operations, {erred} \
         erred {:?}; {} modelled BUG hits; {} failures",
        totals.tried,
        started.elapsed(),
        totals.refused,
        totals.ops,
        totals.op_errors,
        totals.bug_hits.len(),
        totals.failures.len(),
    );
    for ((what, errno), (n, first)) in &totals.by_op {
        println!("  {what}: {errno} x{n} (first: seed {first:#x})");
    }
    for (seed, line) in &totals.bug_hits {
        println!("seed {seed:#x}: modelled BUG: {line}");
    }
    assert!(
        totals.failures.is_empty(),
        "{} of {} images failed:\n{}",
        totals.failures.len(),
        totals.tried,
        totals.failures.join("\n")
    );
}
