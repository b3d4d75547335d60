//! Criterion benchmarks of the FAT engine in `fatcache::fat`, without FUSE: volumes made by the
//! library's own mkfs in a private temporary directory, mounted with `Volume::mount`, or a FAT
//! held in memory (`MemFat`) for the table alone.
//!
//! What is measured, and the target for each. Unless stated otherwise volumes are FAT32 with
//! 4 KiB clusters (mkfs's default at 512 MiB and 1 GiB), mounted read-write with
//! `MountOptions::default()` (64 MiB of cache, 20 % dirty limit), and "16k" clusters are the
//! 64 MiB a file grows by.
//!
//! * `alloc/table/contiguous_16k`: `FatTable::alloc` of 16,384 clusters in one call on an empty
//!   in-memory FAT (the run is found at once, then linked). Target: <= 2 ms.
//! * `alloc/table/contiguous_16k_by_one`: the same clusters the way the write path asks for
//!   them, one at a time (`alloc(1)`, then `extend(last, 1)` 16,383 times). Target: <= 10 ms.
//! * `alloc/table/fragmented_16k` and `.../fragmented_16k_by_one`: the same two on a FAT whose
//!   every other data cluster is used, so no run longer than one cluster exists (one call scans
//!   the whole FAT for a run before it takes the first free ones). Target: <= 10 ms each.
//! * `alloc/grow_64m/{empty,fragmented}`: `Volume::set_size` growing an empty file to 64 MiB
//!   (fat_cont_expand: each page zeroed and dirtied, its cluster allocated), on an empty
//!   volume and on one whose every other cluster is used; a 256 MiB cache with a 50 % dirty
//!   limit, so no writeback throttles the growth. Target: >= 1 GB/s, fragmented within 1.5x
//!   of empty.
//! * `chain/read_last_page/cold`: reading the last 4 KiB of a 256 MiB contiguous file on a new
//!   read-only mount (cluster cache and FAT pages cold: 65,536 chain entries walked, the FAT
//!   read from the image). Target: <= 20 ms.
//! * `chain/read_last_page/warm`: the same read again (page and cluster cache warm). Target:
//!   <= 5 us.
//! * `chain/map_last/warm`: `FatInode::get_block` of the last byte, cluster cache warm.
//!   Target: <= 200 ns.
//! * `chain/map_random/{contiguous,fragmented}`: `get_block` of random offsets of a 256 MiB
//!   file, warm, one run of 65,536 clusters or 65,536 runs of one (every other cluster): the
//!   run cache finds the run in O(log n). Target: <= 200 ns each, fragmented within 3x of
//!   contiguous.
//! * `dir/lookup/{1k,10k}`: `Volume::lookup` of a long name (33 characters: three LFN slots
//!   and a short entry) in a directory of 1,000 or 10,000 such entries, the node already
//!   known. Target: <= 5 us each, 10k within 2x of 1k.
//! * `dir/create_one/{in_1k,in_10k}`: `Volume::create` of the 1,001st or 10,001st entry (it is
//!   unlinked again, untimed). Target: <= 50 us each, 10k within 2x of 1k.
//! * `dir/read_dir/{1k,10k}`: `Volume::read_dir` of the whole directory. Target: 10k <= 10 ms
//!   and within 12x of 1k (linear).
//! * `dir/list_paged/{1k,10k}`: the whole directory through `Volume::read_dir_from` in pages
//!   of 64 items, each resuming after the last (what a FUSE readdir request builds). Target:
//!   within 2x of `read_dir` (linear: a page costs its own items, not the directory's).
//! * `dir/create_many/{1k,10k}`: creating 1,000 or 10,000 long names in a new, empty
//!   directory (fresh volume each time, made untimed). Target (the issue's): 10k takes no more
//!   than 12x the time of 1k.
//! * `dir/remove_all/{1k,10k}`: unlinking every entry of a directory of 1,000 or 10,000 long
//!   names in listing order, as `rm -rf` does (the directory filled on a fresh volume,
//!   untimed). Target: 10k takes no more than 12x the time of 1k (no removal costs the
//!   directory's size).
//! * `seq/write_64m_fsync`: 512 `Volume::write` calls of 128 KiB from offset 0 of an empty
//!   file, then `Volume::fsync` (data, entry, FAT, a device flush of the image file). Target:
//!   >= 150 MB/s.
//! * `seq/read_64m/{warm,cold}`: 512 `Volume::read` calls of 128 KiB over that file, every page
//!   cached (warm), or on a new read-only mount each time (cold: pages read from the image).
//!   Target: warm >= 1 GB/s, cold >= 300 MB/s.
//!
//! Setup (mkfs, mounts, filling directories, writing the 256 MiB files, truncating a grown
//! file back) is outside the timing; images are removed at the end. Setup takes longer than
//! some benches, so a filter naming a group (`alloc/table`, `alloc/grow_64m`, `chain`, `dir`,
//! `seq`) skips the setup of the others: `cargo bench --bench fat -- dir/lookup`.

use std::fs;
use std::hint::black_box;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{BatchSize, BenchmarkGroup, Criterion, SamplingMode, Throughput};
use fatcache::dev::Placement;
use fatcache::fat::bpb::{Bpb, FatType};
use fatcache::fat::mkfs::{MkfsOptions, mkfs};
use fatcache::fat::table::{FatEntry, FatTable, MemFat};
use fatcache::fat::volume::{MountOptions, Node, Volume};
use fatcache::fs::fs_writeback::WritebackConfig;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
/// Size of the volumes the benches make: FAT32 with 4 KiB clusters.
const VOLUME: u64 = 512 * MIB;
/// Size of the volume holding the two 256 MiB files of `chain`.
const CHAIN_VOLUME: u64 = 1024 * MIB;
/// Cluster size every bench volume must have.
const CLUSTER: u64 = 4 * KIB;
/// Clusters allocated by the `alloc` benches: 64 MiB of 4 KiB clusters.
const ALLOC_CLUSTERS: u32 = 16 * 1024;
/// Bytes a file grows by in `alloc/grow_64m`, and the size of the `seq` file.
const BIG: u64 = 64 * MIB;
/// Size of the long files of `chain`.
const LONG: u64 = 256 * MIB;
/// Bytes per `Volume::write` / `Volume::read` call in `seq`.
const IO_CALL: usize = 128 * 1024;
/// Frames of a 256 MiB page cache.
const FRAMES_256M: usize = 64 * 1024;
/// Frames of a 128 MiB page cache: a whole 64 MiB file plus its metadata stays cached.
const FRAMES_128M: usize = 32 * 1024;
/// Frames of a small cache for cold reads of one page: the FAT pages walked fit easily.
const FRAMES_COLD: usize = 1024;
/// The first cluster marked used when a volume is fragmented: 2 is FAT32's root directory.
const FRAG_FROM: u32 = 4;
/// Step between looked-up names: a prime, so the walk visits every name before repeating.
const NAME_STRIDE: usize = 7919;

/// A directory of this process's own under the system temporary directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        let dir = std::env::temp_dir().join(format!("fatcache-bench-fat-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("the temporary directory is writable");
        Scratch(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Makes (or remakes) an empty FAT32 volume of `size` bytes with 4 KiB clusters at `path`.
fn make_volume(path: &Path, size: u64) {
    let opts = MkfsOptions {
        size,
        fat: Some(FatType::Fat32),
        volume_id: Some(0x1234_5678),
        force: true,
        ..MkfsOptions::default()
    };
    let report = mkfs(path, &opts).expect("mkfs of a bench volume");
    assert_eq!(u64::from(report.cluster_bytes), CLUSTER, "{report}");
}

/// Mount options: the defaults, with a cache of `frames`; `roomy` raises the dirty limits
/// to 50 % / 40 % so a 64 MiB growth in a 256 MiB cache is never throttled.
fn mount_opts(frames: usize, roomy: bool) -> MountOptions {
    let mut opts = MountOptions {
        cache_frames: frames,
        ..MountOptions::default()
    };
    if roomy {
        opts.writeback = WritebackConfig {
            dirty_ratio: 50,
            dirty_background_ratio: 40,
            ..WritebackConfig::default()
        };
    }
    opts
}

/// Mounts `path` read-write with `opts`.
fn mount(path: &Path, opts: MountOptions) -> Volume {
    Volume::mount(path, opts).expect("mount of a bench volume")
}

/// Mounts `path` read-only with a cache of `frames`: no dirty bit, no flusher, no flush.
fn mount_ro(path: &Path, frames: usize) -> Volume {
    Volume::open(path, Placement::default(), frames).expect("read-only mount of a bench volume")
}

// ---- the FAT alone -------------------------------------------------------------------------

/// The volume's bytes up to the end of its FATs (boot sector, reserved area, both FATs), and
/// its parsed boot sector.
fn fat_region(path: &Path) -> (Vec<u8>, Bpb) {
    let image = fs::File::open(path).expect("the image is readable");
    let mut boot = [0u8; 512];
    image.read_exact_at(&mut boot, 0).expect("a boot sector");
    let bpb = Bpb::parse(&boot).expect("mkfs wrote a valid boot sector");
    let fats = u64::from(bpb.num_fats) * u64::from(bpb.sectors_per_fat());
    let end = (bpb.first_fat_sector() + fats) * u64::from(bpb.bytes_per_sector);
    let mut bytes = vec![0u8; usize::try_from(end).expect("the FAT region fits in memory")];
    image.read_exact_at(&mut bytes, 0).expect("the FATs");
    (bytes, bpb)
}

/// Marks every other data cluster from [`FRAG_FROM`] to `to` (inclusive) used, as a
/// one-cluster chain each (lost clusters to fsck): the odd ones stay free, none next to
/// another.
fn fragment(table: &FatTable<MemFat>, to: u32) {
    for c in (FRAG_FROM..=to).step_by(2) {
        table.set(c, FatEntry::Eoc).expect("a data cluster");
    }
}

/// A table over a copy of `bytes` (the free count is recounted, untimed).
fn table_of(bytes: &[u8], bpb: &Bpb) -> FatTable<MemFat> {
    FatTable::new(bpb, MemFat::new(bytes.to_vec()), None).expect("a valid FAT")
}

/// Allocates [`ALLOC_CLUSTERS`] one at a time, as a file's writes do; returns the last.
fn alloc_by_one(table: &FatTable<MemFat>) -> u32 {
    let mut last = table.alloc(1, None).expect("free clusters")[0];
    for _ in 1..ALLOC_CLUSTERS {
        last = table.extend(last, 1).expect("free clusters")[0];
    }
    last
}

/// One table case: `routine` on a fresh table over `bytes` each iteration.
fn table_case(
    g: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    (bytes, bpb): (&[u8], &Bpb),
    routine: fn(&FatTable<MemFat>) -> u32,
) {
    g.bench_function(name, |b| {
        b.iter_batched(
            || table_of(bytes, bpb),
            |table| routine(&table),
            BatchSize::LargeInput,
        );
    });
}

/// `alloc(ALLOC_CLUSTERS)` in one call; returns the last cluster.
fn alloc_one_call(table: &FatTable<MemFat>) -> u32 {
    let clusters = table.alloc(ALLOC_CLUSTERS, None).expect("free clusters");
    *clusters.last().expect("a non-empty allocation")
}

fn bench_alloc_table(c: &mut Criterion, scratch: &Scratch) {
    let path = scratch.path("table.img");
    make_volume(&path, VOLUME);
    let (empty, bpb) = fat_region(&path);
    let frag = table_of(&empty, &bpb);
    fragment(&frag, bpb.max_cluster());
    let frag = frag.store().to_vec();
    // Every other cluster used: a run-preferring allocator finds no run longer than one.
    assert!(table_of(&frag, &bpb).free_count() > 2 * ALLOC_CLUSTERS);
    let mut g = c.benchmark_group("alloc/table");
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(3));
    table_case(&mut g, "contiguous_16k", (&empty, &bpb), alloc_one_call);
    table_case(
        &mut g,
        "contiguous_16k_by_one",
        (&empty, &bpb),
        alloc_by_one,
    );
    table_case(&mut g, "fragmented_16k", (&frag, &bpb), alloc_one_call);
    table_case(&mut g, "fragmented_16k_by_one", (&frag, &bpb), alloc_by_one);
    g.finish();
    let _ = fs::remove_file(&path);
}

// ---- allocation through the volume ---------------------------------------------------------

/// Fragments the FAT of the image at `path` in place: every other cluster from
/// [`FRAG_FROM`] to `to` used (see [`fragment`]).
fn fragment_image(path: &Path, to: u32) {
    let (bytes, bpb) = fat_region(path);
    let table = table_of(&bytes, &bpb);
    fragment(&table, to.min(bpb.max_cluster()));
    let bytes = table.store().to_vec();
    let image = fs::OpenOptions::new().write(true).open(path);
    let image = image.expect("the image is writable");
    image
        .write_all_at(&bytes, 0)
        .expect("the FAT is written back");
}

/// `iters` growths of the empty file `node` to [`BIG`] (timed), each truncated back to 0.
fn time_grow(vol: &Volume, node: &Node, iters: u64) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let start = Instant::now();
        vol.set_size(node, BIG).expect("the volume has room");
        total += start.elapsed();
        // Truncation drops the dirty pages unwritten and frees the clusters.
        vol.set_size(node, 0).expect("truncate to 0");
    }
    total
}

/// One `grow_64m` case on a fresh volume, fragmented first if asked.
fn grow_case(g: &mut BenchmarkGroup<'_, WallTime>, scratch: &Scratch, name: &str, frag: bool) {
    let path = scratch.path(&format!("grow-{name}.img"));
    make_volume(&path, VOLUME);
    if frag {
        fragment_image(&path, u32::MAX);
    }
    let vol = mount(&path, mount_opts(FRAMES_256M, true));
    let file = vol.create(&vol.root(), "grown.bin").expect("create");
    g.bench_function(name, |b| {
        b.iter_custom(|iters| time_grow(&vol, &file, iters));
    });
    drop(file);
    drop(vol);
    let _ = fs::remove_file(&path);
}

fn bench_alloc_grow(c: &mut Criterion, scratch: &Scratch) {
    let mut g = c.benchmark_group("alloc/grow_64m");
    g.sampling_mode(SamplingMode::Flat);
    g.sample_size(10);
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(3));
    g.throughput(Throughput::Bytes(BIG));
    grow_case(&mut g, scratch, "empty", false);
    grow_case(&mut g, scratch, "fragmented", true);
    g.finish();
}

// ---- chain walks ---------------------------------------------------------------------------

/// The `chain` image: "frag.bin" (256 MiB, every other cluster) then "contig.bin" (256 MiB,
/// one run), written out and unmounted cleanly.
fn make_chain_image(path: &Path) {
    make_volume(path, CHAIN_VOLUME);
    let clusters = u32::try_from(LONG / CLUSTER).expect("fits");
    // The fragmented file takes the free odd clusters 3, 5, ...; the contiguous one follows.
    fragment_image(path, FRAG_FROM + 2 * clusters);
    let vol = mount(path, mount_opts(FRAMES_128M, false));
    let root = vol.root();
    for name in ["frag.bin", "contig.bin"] {
        let file = vol.create(&root, name).expect("create");
        vol.set_size(&file, LONG).expect("the volume has room");
        vol.fsync(&file).expect("fsync");
    }
    vol.unmount().expect("unmount");
}

/// `iters` reads of the last page of "contig.bin", each on a new read-only mount (untimed).
fn time_read_last_cold(path: &Path, iters: u64) -> Duration {
    let mut buf = vec![0u8; 4096];
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let vol = mount_ro(path, FRAMES_COLD);
        let file = vol.lookup(&vol.root(), "contig.bin").expect("lookup");
        let start = Instant::now();
        let n = vol.read(&file, LONG - 4096, &mut buf).expect("read");
        total += start.elapsed();
        assert_eq!(n, buf.len());
    }
    total
}

/// A xorshift64 step: a cheap, repeatable stream of offsets.
fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// `get_block` of random offsets of `file`, after one walk of the whole chain.
fn map_random_case(g: &mut BenchmarkGroup<'_, WallTime>, name: &str, file: &Node) {
    let inode = file.file().expect("a file");
    inode
        .get_block(LONG - 1)
        .expect("mapped")
        .expect("inside the file");
    let mut state = 0x9E37_79B9_7F4A_7C15;
    g.bench_function(name, |b| {
        b.iter(|| inode.get_block(black_box(xorshift(&mut state) % LONG)));
    });
}

fn bench_chain(c: &mut Criterion, scratch: &Scratch) {
    let path = scratch.path("chain.img");
    make_chain_image(&path);
    let mut g = c.benchmark_group("chain");
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(3));
    g.bench_function("read_last_page/cold", |b| {
        b.iter_custom(|iters| time_read_last_cold(&path, iters));
    });
    let vol = mount_ro(&path, FRAMES_COLD);
    let contig = vol.lookup(&vol.root(), "contig.bin").expect("lookup");
    let frag = vol.lookup(&vol.root(), "frag.bin").expect("lookup");
    let mut buf = vec![0u8; 4096];
    g.bench_function("read_last_page/warm", |b| {
        b.iter(|| vol.read(&contig, black_box(LONG - 4096), &mut buf));
    });
    let inode = contig.file().expect("a file");
    g.bench_function("map_last/warm", |b| {
        b.iter(|| inode.get_block(black_box(LONG - 1)));
    });
    map_random_case(&mut g, "map_random/contiguous", &contig);
    map_random_case(&mut g, "map_random/fragmented", &frag);
    g.finish();
    drop((contig, frag));
    drop(vol);
    let _ = fs::remove_file(&path);
}

// ---- directories ---------------------------------------------------------------------------

/// The `i`th long name: 33 characters, three LFN slots and a short entry.
fn long_name(i: usize) -> String {
    format!("a_rather_long_file_name_{i:05}.txt")
}

/// Creates `n` long names in `dir`.
fn fill(vol: &Volume, dir: &Node, n: usize) {
    for i in 0..n {
        vol.create(dir, &long_name(i)).expect("create");
    }
}

/// Lookups of the names of a directory of `n`, in a rotating order.
fn lookup_case(g: &mut BenchmarkGroup<'_, WallTime>, vol: &Volume, dir: &Node, n: usize) {
    let names: Vec<String> = (0..n).map(long_name).collect();
    let mut i = 0;
    g.bench_function(format!("lookup/{}k", n / 1000), |b| {
        b.iter(|| {
            i = (i + NAME_STRIDE) % n;
            vol.lookup(dir, black_box(&names[i]))
                .expect("the name exists")
        });
    });
}

/// `iters` creates of one more name in `dir` (timed), each unlinked again.
fn time_create_one(vol: &Volume, dir: &Node, iters: u64) -> Duration {
    let name = "the_one_more_entry_than_counted.txt";
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let start = Instant::now();
        let node = vol.create(dir, black_box(name)).expect("create");
        total += start.elapsed();
        drop(node);
        vol.unlink(dir, name).expect("unlink");
    }
    total
}

/// `iters` times: a fresh volume and an empty directory (untimed), `n` creates in it (timed).
fn time_create_many(path: &Path, n: usize, iters: u64) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        make_volume(path, VOLUME);
        let vol = mount(path, MountOptions::default());
        let dir = vol.mkdir(&vol.root(), "many").expect("mkdir");
        let start = Instant::now();
        fill(&vol, &dir, n);
        total += start.elapsed();
    }
    total
}

/// `iters` times: a fresh volume with a directory of `n` (untimed), every entry unlinked in
/// listing order (timed).
fn time_remove_all(path: &Path, n: usize, iters: u64) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        make_volume(path, VOLUME);
        let vol = mount(path, MountOptions::default());
        let dir = vol.mkdir(&vol.root(), "many").expect("mkdir");
        fill(&vol, &dir, n);
        let names: Vec<String> = vol
            .read_dir(&dir)
            .expect("read_dir")
            .into_iter()
            .map(|item| item.name)
            .collect();
        assert_eq!(names.len(), n, "the directory is full");
        let start = Instant::now();
        for name in &names {
            vol.unlink(&dir, black_box(name)).expect("unlink");
        }
        total += start.elapsed();
    }
    total
}

/// Items per page of [`list_paged`]: what one 4 KiB FUSE readdir reply holds of
/// [`long_name`]s, about.
const PAGE_ITEMS: usize = 64;

/// Lists `dir` a page at a time, each page resuming after the last item of the one before
/// (the daemon's readdir); returns the items seen.
fn list_paged(vol: &Volume, dir: &Node) -> usize {
    let (mut from, mut seen) = (0, 0);
    loop {
        let page = vol
            .read_dir_from(dir, from, PAGE_ITEMS)
            .expect("read_dir_from");
        seen += page.len();
        match page.last() {
            Some(last) if page.len() == PAGE_ITEMS => from = last.offset + 1,
            _ => return black_box(seen),
        }
    }
}

fn bench_dir(c: &mut Criterion, scratch: &Scratch) {
    let path = scratch.path("dir.img");
    make_volume(&path, VOLUME);
    let vol = mount(&path, MountOptions::default());
    let dirs: Vec<(usize, Arc<Node>)> = [1_000, 10_000]
        .into_iter()
        .map(|n| {
            let dir = vol.mkdir(&vol.root(), &format!("d{n}")).expect("mkdir");
            fill(&vol, &dir, n);
            (n, dir)
        })
        .collect();
    let mut g = c.benchmark_group("dir");
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(3));
    for (n, dir) in &dirs {
        lookup_case(&mut g, &vol, dir, *n);
    }
    for (n, dir) in &dirs {
        g.bench_function(format!("create_one/in_{}k", n / 1000), |b| {
            b.iter_custom(|iters| time_create_one(&vol, dir, iters));
        });
    }
    for (n, dir) in &dirs {
        g.bench_function(format!("read_dir/{}k", n / 1000), |b| {
            b.iter(|| vol.read_dir(dir).expect("read_dir"));
        });
    }
    for (n, dir) in &dirs {
        // A whole listing as FUSE asks for it, a page of PAGE_ITEMS items per request.
        g.bench_function(format!("list_paged/{}k", n / 1000), |b| {
            b.iter(|| list_paged(&vol, dir));
        });
    }
    drop(dirs);
    drop(vol);
    g.sampling_mode(SamplingMode::Flat);
    g.sample_size(10);
    let many = scratch.path("many.img");
    for n in [1_000, 10_000] {
        g.bench_function(format!("create_many/{}k", n / 1000), |b| {
            b.iter_custom(|iters| time_create_many(&many, n, iters));
        });
    }
    for n in [1_000, 10_000] {
        g.bench_function(format!("remove_all/{}k", n / 1000), |b| {
            b.iter_custom(|iters| time_remove_all(&many, n, iters));
        });
    }
    g.finish();
    let _ = fs::remove_file(&path);
    let _ = fs::remove_file(&many);
}

// ---- sequential throughput -----------------------------------------------------------------

/// Writes [`BIG`] bytes from offset 0 in [`IO_CALL`] calls, then fsyncs.
fn write_big(vol: &Volume, file: &Node, chunk: &[u8]) {
    let mut pos = 0;
    while pos < BIG {
        let n = vol.write(file, pos, chunk).expect("write");
        assert_eq!(n, chunk.len());
        pos += n as u64;
    }
    vol.fsync(file).expect("fsync");
}

/// Reads [`BIG`] bytes from offset 0 in [`IO_CALL`] calls; returns a byte, to be used.
fn read_big(vol: &Volume, file: &Node, buf: &mut [u8]) -> u8 {
    let mut pos = 0;
    while pos < BIG {
        let n = vol.read(file, pos, buf).expect("read");
        assert_eq!(n, buf.len());
        pos += n as u64;
    }
    buf[0]
}

/// `iters` writes of the whole file (timed), each after truncating it to 0 (untimed).
fn time_write(vol: &Volume, file: &Node, iters: u64) -> Duration {
    let chunk = vec![0xA5u8; IO_CALL];
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        vol.set_size(file, 0).expect("truncate to 0");
        vol.fsync(file).expect("fsync");
        let start = Instant::now();
        write_big(vol, file, &chunk);
        total += start.elapsed();
    }
    total
}

/// `iters` reads of the whole file, each on a new read-only mount (untimed).
fn time_read_cold(path: &Path, iters: u64) -> Duration {
    let mut buf = vec![0u8; IO_CALL];
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let vol = mount_ro(path, FRAMES_128M);
        let file = vol.lookup(&vol.root(), "seq.bin").expect("lookup");
        let start = Instant::now();
        black_box(read_big(&vol, &file, &mut buf));
        total += start.elapsed();
    }
    total
}

fn bench_seq(c: &mut Criterion, scratch: &Scratch) {
    let path = scratch.path("seq.img");
    make_volume(&path, VOLUME);
    let vol = mount(&path, MountOptions::default());
    let file = vol.create(&vol.root(), "seq.bin").expect("create");
    let mut g = c.benchmark_group("seq");
    g.sampling_mode(SamplingMode::Flat);
    g.sample_size(10);
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(3));
    g.throughput(Throughput::Bytes(BIG));
    g.bench_function("write_64m_fsync", |b| {
        b.iter_custom(|iters| time_write(&vol, &file, iters));
    });
    // The read benches need the whole file even when a filter skipped the write bench.
    if file.size() != BIG {
        write_big(&vol, &file, &vec![0xA5u8; IO_CALL]);
    }
    drop(file);
    vol.unmount().expect("unmount");
    let vol = mount_ro(&path, FRAMES_128M);
    let file = vol.lookup(&vol.root(), "seq.bin").expect("lookup");
    assert_eq!(file.size(), BIG);
    let mut buf = vec![0u8; IO_CALL];
    g.bench_function("read_64m/warm", |b| {
        b.iter(|| read_big(&vol, &file, &mut buf));
    });
    drop(file);
    drop(vol);
    g.bench_function("read_64m/cold", |b| {
        b.iter_custom(|iters| time_read_cold(&path, iters));
    });
    g.finish();
    let _ = fs::remove_file(&path);
}

/// Criterion options whose value is a word, which must not be taken for a filter.
const WORD_OPTIONS: [&str; 7] = [
    "--save-baseline",
    "--baseline",
    "--baseline-lenient",
    "--load-baseline",
    "--color",
    "--output-format",
    "--plotting-backend",
];

/// The benchmark filters on the command line: words that are neither options, nor numbers
/// given to options, nor the value of a [`WORD_OPTIONS`] option.
fn filters() -> Vec<String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut out = Vec::new();
    for (i, arg) in args.iter().enumerate() {
        let after_word_option = i > 0 && WORD_OPTIONS.contains(&args[i - 1].as_str());
        let word = arg.chars().any(|ch| ch.is_ascii_alphabetic());
        if !arg.starts_with('-') && word && !after_word_option {
            out.push(arg.clone());
        }
    }
    out
}

/// The groups to set up: those a filter names, or all when no filter names one.
fn wanted_groups<'g>(groups: &[&'g str]) -> Vec<&'g str> {
    let filters = filters();
    let named: Vec<&str> = groups
        .iter()
        .copied()
        .filter(|g| filters.iter().any(|f| f.contains(g)))
        .collect();
    if named.is_empty() {
        groups.to_vec()
    } else {
        named
    }
}

/// Run every group; what `criterion_group!` + `criterion_main!` expand to, written out because
/// the macro's generated `pub fn` has no doc comment and the crate denies missing docs.
fn main() {
    let mut c = Criterion::default().configure_from_args();
    let scratch = Scratch::new();
    type Group = fn(&mut Criterion, &Scratch);
    let groups: [(&str, Group); 5] = [
        ("alloc/table", bench_alloc_table),
        ("alloc/grow_64m", bench_alloc_grow),
        ("chain", bench_chain),
        ("dir", bench_dir),
        ("seq", bench_seq),
    ];
    let names: Vec<&str> = groups.iter().map(|(name, _)| *name).collect();
    let wanted = wanted_groups(&names);
    for (name, run) in groups {
        if wanted.contains(&name) {
            run(&mut c, &scratch);
        }
    }
    c.final_summary();
}
