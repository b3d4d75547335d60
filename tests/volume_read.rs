//! Reads the FAT images of `fat-images/` through `fatcache::fat::volume::Volume` and checks
//! them against `fat-images/MANIFEST.md`: the whole tree by `read_dir` and `child_at`, every
//! file's bytes by `read` (size and FNV-1a 64), the label, path lookup and its errors, and
//! reads at odd offsets across cluster boundaries. Each image is read from a private copy in
//! a temporary directory. The FAT32 image is made by `make-images.sh fat32`; that test prints
//! a line and skips when dosfstools or mtools are missing.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use common::{Image, TempDir, find_image, fnv1a64, manifest, repo_path, tools, tree_of};
use fatcache::FsError;
use fatcache::dev::Placement;
use fatcache::fat::volume::{Node, Volume};

/// The prefix of this binary's temporary directories.
const TEMP: &str = "volume_read";
const CACHE_FRAMES: usize = 512;

/// Size and FNV-1a 64 of a file; `None` for a directory.
type Kind = Option<(u64, u64)>;

/// The image `name` of the manifest and its whole tree, each path with its kind; an image
/// with `tree: same as` gets the other's tree minus its absentees.
fn image(name: &str) -> (Image, BTreeMap<String, Kind>) {
    let images = manifest();
    let tree = tree_of(&images, find_image(&images, name))
        .into_iter()
        .map(|e| (e.path.clone(), e.file))
        .collect();
    let found = images.into_iter().find(|i| i.name == name);
    (found.expect("found above"), tree)
}

fn open(path: &Path) -> Volume {
    Volume::open(path, Placement::default(), CACHE_FRAMES).expect("Volume::open")
}

/// The whole file through `read`, in reads of an odd size so they straddle clusters.
fn read_all(vol: &Volume, node: &Node) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 1531];
    loop {
        let n = vol.read(node, out.len() as u64, &mut buf).expect("read");
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&buf[..n]);
    }
}

/// Walks the tree from `dir` (named `prefix`), recording every path with its kind.
fn walk(vol: &Volume, dir: &Node, prefix: &str, out: &mut BTreeMap<String, Kind>) {
    for item in vol.read_dir(dir).expect("read_dir") {
        let path = format!("{prefix}/{}", item.name);
        assert!(!item.entry.is_volume_label(), "{path}: label listed");
        let node = vol
            .child_at(dir, item.offset)
            .unwrap_or_else(|e| panic!("{path}: child_at: {e}"));
        assert_eq!(node.is_dir(), item.entry.is_dir(), "{path}: kind of node");
        assert_eq!(node.entry(), item.entry, "{path}: node's entry");
        if node.is_dir() {
            out.insert(path.clone(), None);
            walk(vol, &node, &path, out);
        } else {
            let data = read_all(vol, &node);
            assert_eq!(data.len() as u64, u64::from(item.entry.size), "{path}");
            assert_eq!(node.size(), u64::from(item.entry.size), "{path}: node size");
            out.insert(path.clone(), Some((data.len() as u64, fnv1a64(&data))));
        }
        check_lookups(vol, dir, &item.name, &node);
    }
}

/// `name` is found in `dir` in other cases and by its short name, always as `node` (the same
/// node, with the same entry).
fn check_lookups(vol: &Volume, dir: &Node, name: &str, node: &Arc<Node>) {
    let entry = node.entry();
    let short = entry.name.to_string();
    for alt in [
        name.to_ascii_uppercase(),
        name.to_ascii_lowercase(),
        short.clone(),
        short.to_ascii_lowercase(),
    ] {
        let found = vol
            .lookup(dir, &alt)
            .unwrap_or_else(|e| panic!("{alt}: {e}"));
        assert!(
            Arc::ptr_eq(&found, node),
            "lookup of {alt:?} (for {name:?}): another node (ino {} for {})",
            found.ino(),
            node.ino()
        );
        assert_eq!(found.entry(), entry, "lookup of {alt:?} (for {name:?})");
    }
}

/// Walks the whole image and compares it with the manifest.
fn check_image(img: &Image, want: &BTreeMap<String, Kind>, path: &Path) -> Volume {
    let vol = open(path);
    let mut tree = BTreeMap::new();
    walk(&vol, &vol.root(), "", &mut tree);
    let (paths, got): (Vec<_>, Vec<_>) = (want.keys().collect(), tree.keys().collect());
    assert_eq!(got, paths, "{}: paths", img.name);
    assert_eq!(tree, *want, "{}: kinds, sizes, checksums", img.name);
    let label = vol.label().expect("label");
    assert_eq!(
        label.as_deref(),
        Some(img.label.as_str()),
        "{}: label",
        img.name
    );
    for gone in &img.deleted {
        assert!(
            matches!(vol.lookup_path(gone), Err(FsError::NotFound)),
            "{gone}"
        );
    }
    vol
}

fn file(vol: &Volume, path: &str) -> Arc<Node> {
    vol.lookup_path(path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Reads of `len` at `offset` equal the matching slice of the whole file.
fn check_odd_reads(vol: &Volume, path: &str, cases: &[(u64, usize)]) {
    let node = file(vol, path);
    let whole = read_all(vol, &node);
    for &(offset, len) in cases {
        let mut buf = vec![0xAAu8; len];
        let n = vol.read(&node, offset, &mut buf).expect("read");
        let start = usize::try_from(offset).expect("offset").min(whole.len());
        let end = (start + len).min(whole.len());
        assert_eq!(n, end - start, "{path} at {offset} len {len}");
        assert_eq!(buf[..n], whole[start..end], "{path} at {offset} len {len}");
    }
}

fn assert_err(vol: &Volume, path: &str, errno: i32) {
    match vol.lookup_path(path) {
        Err(e) => assert_eq!(e.errno(), errno, "{path}: {e}"),
        Ok(node) => panic!("{path}: found {:?}", node.entry()),
    }
}

#[test]
fn volume_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Volume>();
}

#[test]
fn fat12_floppy_reads_as_the_manifest_says() {
    let tmp = TempDir::new(TEMP, "fat12");
    let (img, tree) = image("floppy-fat12.img");
    let vol = check_image(&img, &tree, &tmp.copy_of(&img.name));
    let three = file(&vol, "/dir1/Dir2/dir3/three.TXT");
    assert_eq!(three.entry().size, 1000);
    assert_eq!(three.size(), 1000);
    assert!(file(&vol, "/").is_dir());
    assert!(file(&vol, "/Dir1//").is_dir());
    assert_eq!(vol.read_dir(&vol.root()).expect("root").len(), 6);
    assert_err(&vol, "/DIR1/MISSING.TXT", libc::ENOENT);
    assert_err(&vol, "/NOSUCH/ONE.TXT", libc::ENOENT);
    assert_err(&vol, "/README.TXT/ONE.TXT", libc::ENOTDIR);
    assert_err(&vol, "/DIR1/ONE.TXT/x", libc::ENOTDIR);
    assert_err(&vol, "/README.TXT/", libc::ENOTDIR);
    assert_err(&vol, "/README.TXT/..", libc::ENOTDIR);
    let one = file(&vol, "/DIR1/ONE.TXT");
    assert_same(&file(&vol, "/DIR1/DIR2/../ONE.TXT"), &one, "'..' goes up");
    assert_same(
        &file(&vol, "/../../DIR1/./DIR2/DIR3/../../ONE.TXT"),
        &one,
        "root's parent",
    );
    assert!(file(&vol, "/DIR1/..").is_dir());
    let cases = [
        (0, 1),
        (511, 2),
        (1023, 1027),
        (4095, 4099),
        (20473, 100),
        (20480, 10),
        (30000, 10),
    ];
    check_odd_reads(&vol, "/data.bin", &cases);
    check_odd_reads(&vol, "/odd.txt", &[(511, 513), (4999, 7), (777, 3333)]);
    let empty = file(&vol, "/EMPTY.TXT");
    assert_eq!(vol.read(&empty, 0, &mut [0u8; 8]).expect("read"), 0);
    let dir = file(&vol, "/DIR1");
    assert!(matches!(
        vol.read(&dir, 0, &mut [0u8; 8]),
        Err(FsError::IsDir)
    ));
    // A size past what the chain holds is a corrupted volume (EIO), not a short read. A node
    // takes its size from the disk, so the lie is written into a second copy of the image.
    let tmp_lying = TempDir::new(TEMP, "fat12-lying");
    let lying_path = tmp_lying.copy_of(&img.name);
    set_size_on_disk(&lying_path, b"README  TXT", 5000);
    let lying_vol = open(&lying_path);
    let lying = file(&lying_vol, "/README.TXT");
    assert_eq!(lying.size(), 5000, "README.TXT's size as written");
    let err = lying_vol
        .read(&lying, 1000, &mut [0u8; 8])
        .expect_err("chain too short");
    assert!(matches!(err, FsError::Corrupted(_)), "{err}");
    assert_eq!(err.errno(), libc::EIO);
}

/// `got` is the node `want` is: the same node, with the same entry.
#[track_caller]
fn assert_same(got: &Arc<Node>, want: &Arc<Node>, what: &str) {
    assert!(
        Arc::ptr_eq(got, want),
        "{what}: ino {} instead of {}",
        got.ino(),
        want.ino()
    );
    assert_eq!(got.entry(), want.entry(), "{what}");
}

/// Byte offset of the FAT12 floppy's root directory (sector 19) and its size (224 entries).
const FLOPPY_ROOT: usize = 19 * 512;
const FLOPPY_ROOT_LEN: usize = 224 * 32;

/// Sets the size field of the root entry whose 8.3 name is `short` in the FAT12 floppy
/// image at `path`.
fn set_size_on_disk(path: &Path, short: &[u8; 11], size: u32) {
    let mut bytes = fs::read(path).expect("read image copy");
    let root = &bytes[FLOPPY_ROOT..FLOPPY_ROOT + FLOPPY_ROOT_LEN];
    let at = root
        .chunks_exact(32)
        .position(|e| e[..11] == short[..] && e[11] & 0x08 == 0)
        .unwrap_or_else(|| panic!("{:?} not in the root", String::from_utf8_lossy(short)));
    let field = FLOPPY_ROOT + at * 32 + 28;
    bytes[field..field + 4].copy_from_slice(&size.to_le_bytes());
    fs::write(path, &bytes).expect("write image copy");
}

#[test]
fn fat16_small_reads_as_the_manifest_says() {
    let tmp = TempDir::new(TEMP, "fat16");
    let (img, tree) = image("small-fat16.img");
    let vol = check_image(&img, &tree, &tmp.copy_of(&img.name));
    check_fat16_tree(&vol);
}

/// Lookups and odd reads that `small-fat16.img` and the FAT32 image share.
fn check_fat16_tree(vol: &Volume) {
    let deep = "/LONG DIRECTORY NAME for nested tests/Level 2/LEVEL THREE/Deep File.TXT";
    assert_eq!(file(vol, deep).entry().size, 2900);
    assert_eq!(file(vol, deep).size(), 2900);
    assert_eq!(file(vol, "/mixedcase.TXT").entry().size, 71);
    assert_err(vol, "/many/file-301.txt", libc::ENOENT);
    assert_err(vol, "/makefile/x", libc::ENOTDIR);
    check_odd_reads(
        vol,
        "/frag/fragmented.bin",
        &[(1000, 100), (1023, 2), (4097, 999)],
    );
    check_odd_reads(
        vol,
        "/many-clusters.txt",
        &[(511, 65537), (329_999, 9), (12345, 1)],
    );
    assert_eq!(vol.read_dir(&file(vol, "/many")).expect("many").len(), 300);
}

#[test]
fn fat32_made_here_reads_as_the_manifest_says() {
    let test = "fat32_made_here_reads_as_the_manifest_says";
    let Some(_) = tools(test, ["mkfs.fat", "mcopy", "mmd", "mdel"]) else {
        return;
    };
    let tmp = TempDir::new(TEMP, "fat32");
    let status = Command::new("bash")
        .arg(repo_path("fat-images/make-images.sh"))
        .arg("fat32")
        .arg(&tmp.0)
        .status()
        .expect("run make-images.sh");
    assert!(status.success(), "make-images.sh fat32: {status}");
    let (img, tree) = image("fat32-64m.img");
    let vol = check_image(&img, &tree, &tmp.0.join(&img.name));
    check_fat16_tree(&vol);
}
