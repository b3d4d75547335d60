//! Checks the FAT images of `fat-images/` against `fat-images/MANIFEST.md`.
//!
//! The boot sector of each image goes through `fatcache::fat::bpb::Bpb`; files are read back
//! with mtools (`mtype`, `mdir`) and compared by size and FNV-1a 64; `fsck.fat -n` must find
//! nothing. The FAT32 image is not shipped: `make-images.sh fat32` makes it here, and it must
//! hold the tree of `small-fat16.img`. Checks that need dosfstools or mtools print a line and
//! skip when the tools are missing.

use std::collections::BTreeSet;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use fatcache::fat::bpb::{Bpb, FatType};

const MANIFEST: &str = "fat-images/MANIFEST.md";
const SCRIPT: &str = "fat-images/make-images.sh";
const FAT16_IMAGE: &str = "small-fat16.img";
const FAT32_IMAGE: &str = "fat32-64m.img";

/// One file or directory of an image, as the manifest lists it.
#[derive(Debug)]
struct Entry {
    /// Absolute path inside the image, `/` separated.
    path: String,
    /// Size in bytes and FNV-1a 64 of a file; `None` for a directory.
    file: Option<(u64, u64)>,
}

/// One `## Image` section of the manifest.
#[derive(Debug)]
struct Image {
    name: String,
    shipped: bool,
    image_bytes: u64,
    fat_type: FatType,
    bytes_per_cluster: u32,
    label: String,
    volume_id: u32,
    /// Names deleted after they were written: their entries remain, marked 0xE5.
    deleted: Vec<String>,
    /// The image whose table this one repeats, for an image without its own table.
    tree_of: Option<String>,
    /// Paths of `tree_of`'s table that this image lacks.
    not_in_image: Vec<String>,
    entries: Vec<Entry>,
}

fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// The texts between pairs of backticks in `s`.
fn backticked(s: &str) -> Vec<&str> {
    s.split('`').skip(1).step_by(2).collect()
}

/// The one backticked text in `s`.
fn one_backticked<'a>(s: &'a str, what: &str) -> &'a str {
    match backticked(s)[..] {
        [v] => v,
        _ => panic!("{what}: expected one `...` value in {s:?}"),
    }
}

/// 64-bit FNV-1a, the checksum the manifest carries.
fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn parse_fat_type(s: &str) -> FatType {
    match s {
        "FAT12" => FatType::Fat12,
        "FAT16" => FatType::Fat16,
        "FAT32" => FatType::Fat32,
        _ => panic!("unknown FAT type {s:?} in the manifest"),
    }
}

/// A table row: `` | `/path` | file | 123 | `fnv` | `sha256` | `` or `` | `/path` | dir | ... ``.
fn parse_row(line: &str) -> Entry {
    let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
    let [path, kind, size, fnv, _sha256] = cells[..] else {
        panic!("manifest row without five cells: {line:?}");
    };
    let path = one_backticked(path, "path").to_owned();
    let file = match kind {
        "dir" => None,
        "file" => {
            let size = size.parse().expect("manifest file size");
            let fnv = one_backticked(fnv, "fnv1a64");
            Some((size, u64::from_str_radix(fnv, 16).expect("fnv1a64 in hex")))
        }
        _ => panic!("manifest row of unknown kind: {line:?}"),
    };
    Entry { path, file }
}

/// The lines of one `## Image` section, before interpretation.
#[derive(Debug, Default)]
struct Section {
    name: String,
    /// The `- key: value` lines, in order; a key may repeat.
    keys: Vec<(String, String)>,
    entries: Vec<Entry>,
}

/// Builds one image's description from its `- key: value` lines and table rows.
fn image_from(section: Section) -> Image {
    let Section {
        name,
        keys,
        entries,
    } = section;
    let get = |key: &str| -> &str {
        keys.iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("{name}: no '- {key}:' line in the manifest"))
    };
    let id = one_backticked(get("volume id"), "volume id");
    let id = id.strip_prefix("0x").expect("volume id starts with 0x");
    let tree = get("tree");
    let tree_of = (tree != "listed below").then(|| one_backticked(tree, "tree").to_owned());
    let not_in_image = keys
        .iter()
        .filter(|(k, _)| k == "not in this image")
        .flat_map(|(_, v)| backticked(v))
        .map(str::to_owned)
        .collect();
    Image {
        shipped: get("shipped") == "yes",
        image_bytes: get("image bytes").parse().expect("image bytes"),
        fat_type: parse_fat_type(get("FAT type")),
        bytes_per_cluster: get("bytes per cluster").parse().expect("bytes per cluster"),
        label: one_backticked(get("volume label"), "volume label").to_owned(),
        volume_id: u32::from_str_radix(id, 16).expect("volume id in hex"),
        deleted: backticked(get("deleted entries"))
            .into_iter()
            .map(str::to_owned)
            .collect(),
        tree_of,
        not_in_image,
        entries,
        name,
    }
}

/// Reads the manifest: one `Image` per `` ## Image `name` `` section.
fn manifest() -> Vec<Image> {
    let text = fs::read_to_string(repo_path(MANIFEST)).expect("read fat-images/MANIFEST.md");
    let mut sections: Vec<Section> = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("## Image ") {
            let name = one_backticked(rest, "image name").to_owned();
            sections.push(Section {
                name,
                ..Section::default()
            });
        } else if let Some(section) = sections.last_mut() {
            if let Some((key, value)) = line.strip_prefix("- ").and_then(|l| l.split_once(": ")) {
                section.keys.push((key.to_owned(), value.to_owned()));
            } else if line.starts_with("| `/") {
                section.entries.push(parse_row(line));
            }
        }
    }
    sections.into_iter().map(image_from).collect()
}

fn find_image<'a>(images: &'a [Image], name: &str) -> &'a Image {
    images
        .iter()
        .find(|i| i.name == name)
        .unwrap_or_else(|| panic!("no image {name} in the manifest"))
}

/// `name` on PATH or in the sbin directories, where dosfstools installs.
fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// All of `names`, or `None` after printing why `test` skips.
fn tools<const N: usize>(test: &str, names: [&str; N]) -> Option<[PathBuf; N]> {
    let found = names.map(find_tool);
    if let Some(i) = found.iter().position(Option::is_none) {
        let name = names[i];
        println!("skipping {test}: {name} not found (needs dosfstools and mtools)");
        return None;
    }
    Some(found.map(|p| p.expect("checked above")))
}

/// A directory under `target/` removed on drop, so a failing test leaves nothing behind.
struct TempDir(PathBuf);

impl TempDir {
    fn new(test: &str) -> TempDir {
        let name = format!("fat_images-{test}-{}", std::process::id());
        let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    /// A private copy of a shipped image, so no tool can touch the one in git.
    fn copy_of(&self, image: &str) -> PathBuf {
        let to = self.0.join(image);
        let from = repo_path("fat-images").join(image);
        fs::copy(&from, &to).unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
        to
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Runs an mtools command: no geometry check, and a UTF-8 locale so that non-ASCII
/// arguments become the right long names.
fn mtools(tool: &Path, args: &[&str]) -> Output {
    Command::new(tool)
        .args(args)
        .env("MTOOLS_SKIP_CHECK", "1")
        .env("LC_ALL", "C.UTF-8")
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", tool.display()))
}

fn read_bpb(img: &Path) -> Bpb {
    let mut sector = [0u8; 512];
    let mut file = fs::File::open(img).expect("open image");
    file.read_exact(&mut sector).expect("read boot sector");
    Bpb::parse(&sector).unwrap_or_else(|e| panic!("{}: Bpb::parse: {e}", img.display()))
}

fn check_bpb(image: &Image, img: &Path) {
    let bpb = read_bpb(img);
    let name = &image.name;
    assert_eq!(bpb.fat_type(), image.fat_type, "{name}: FAT type");
    let cluster = bpb.bytes_per_cluster();
    assert_eq!(
        cluster, image.bytes_per_cluster,
        "{name}: bytes per cluster"
    );
    let label = String::from_utf8_lossy(&bpb.volume_label);
    assert_eq!(label.trim_end(), image.label, "{name}: volume label");
    assert_eq!(bpb.volume_id, image.volume_id, "{name}: volume id");
}

/// `fsck.fat -n` must succeed and print only its version line and its summary.
fn check_fsck_clean(fsck: &Path, img: &Path) {
    let out = Command::new(fsck)
        .arg("-n")
        .arg(img)
        .output()
        .expect("run fsck.fat");
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    let report = format!("fsck.fat -n {}:\n{text}{err}", img.display());
    assert!(out.status.success(), "{report}");
    assert_eq!(text.lines().count(), 2, "{report}");
    assert!(err.trim().is_empty(), "{report}");
}

/// Every path mtools lists in `img`, directories included, without the `::` prefix or a
/// trailing `/`.
fn mtools_listing(mdir: &Path, img: &str) -> BTreeSet<String> {
    let out = mtools(mdir, &["-/", "-b", "-i", img, "::/"]);
    assert!(out.status.success(), "mdir -/ -b {img}: {out:?}");
    let text = String::from_utf8(out.stdout).expect("mdir prints UTF-8 under C.UTF-8");
    text.lines()
        .map(|l| {
            let path = l.strip_prefix("::").expect("mdir -b lines start with ::");
            path.trim_end_matches('/').to_owned()
        })
        .collect()
}

/// Reads each file of `entries` from `img` with mtype and compares size and FNV-1a 64.
fn check_files(mtype: &Path, img: &Path, what: &str, entries: &[&Entry]) {
    let img = img.to_str().expect("temp path is UTF-8");
    for entry in entries {
        let Some((size, fnv)) = entry.file else {
            continue;
        };
        let path = &entry.path;
        let out = mtools(mtype, &["-i", img, &format!("::{path}")]);
        assert!(out.status.success(), "{what}: mtype {path}: {out:?}");
        assert_eq!(out.stdout.len() as u64, size, "{what}: size of {path}");
        let got = fnv1a64(&out.stdout);
        assert_eq!(
            got, fnv,
            "{what}: fnv1a64 of {path}: {got:016x}, manifest {fnv:016x}"
        );
    }
}

/// The whole tree of `img` is `entries`: nothing missing, nothing extra, same contents, and
/// the deleted names are gone.
fn check_tree(mdir: &Path, mtype: &Path, img: &Path, image: &Image, entries: &[&Entry]) {
    let name = &image.name;
    let img_str = img.to_str().expect("temp path is UTF-8");
    let listed = mtools_listing(mdir, img_str);
    let expected: BTreeSet<String> = entries.iter().map(|e| e.path.clone()).collect();
    let missing: Vec<_> = expected.difference(&listed).collect();
    let extra: Vec<_> = listed.difference(&expected).collect();
    assert!(
        missing.is_empty(),
        "{name}: in the manifest, not in the image: {missing:?}"
    );
    assert!(
        extra.is_empty(),
        "{name}: in the image, not in the manifest: {extra:?}"
    );
    check_files(mtype, img, name, entries);
    for path in &image.deleted {
        let out = mtools(mtype, &["-i", img_str, &format!("::{path}")]);
        assert!(!out.status.success(), "{name}: deleted {path} still reads");
    }
}

fn shipped(images: &[Image]) -> Vec<&Image> {
    images.iter().filter(|i| i.shipped).collect()
}

#[test]
fn fnv1a64_matches_published_vectors() {
    assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
    assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
}

#[test]
fn manifest_lists_each_shipped_image_with_its_size_and_tree() {
    let images = manifest();
    let names: Vec<&str> = shipped(&images).iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["floppy-fat12.img", FAT16_IMAGE]);
    for image in shipped(&images) {
        let name = &image.name;
        let meta = fs::metadata(repo_path("fat-images").join(name)).expect("shipped image");
        assert_eq!(meta.len(), image.image_bytes, "{name}: image size");
        assert!(
            image.tree_of.is_none(),
            "{name}: a shipped image lists its own tree"
        );
        let files = image.entries.iter().filter(|e| e.file.is_some()).count();
        assert!(files >= 5, "{name}: only {files} files in the manifest");
    }
    let fat16 = find_image(&images, FAT16_IMAGE);
    let many = fat16
        .entries
        .iter()
        .filter(|e| e.path.starts_with("/many/"));
    assert_eq!(many.count(), 300, "the directory of 300 files");
    assert_eq!(fat16.deleted.len(), 3, "deleted entries of {FAT16_IMAGE}");
    let fat32 = find_image(&images, FAT32_IMAGE);
    assert!(!fat32.shipped, "the FAT32 image is made at test time");
    assert_eq!(fat32.tree_of.as_deref(), Some(FAT16_IMAGE));
    assert!(
        fat32.entries.is_empty(),
        "{FAT32_IMAGE} repeats a tree, it lists none"
    );
}

#[test]
fn shipped_boot_sectors_match_manifest_type_cluster_size_label_and_id() {
    let images = manifest();
    for image in shipped(&images) {
        check_bpb(image, &repo_path("fat-images").join(&image.name));
    }
}

#[test]
fn shipped_files_read_by_mtools_match_manifest_sizes_and_checksums() {
    let test = "shipped_files_read_by_mtools_match_manifest_sizes_and_checksums";
    let Some([mtype, mdir]) = tools(test, ["mtype", "mdir"]) else {
        return;
    };
    let images = manifest();
    let tmp = TempDir::new("read");
    for image in shipped(&images) {
        let img = tmp.copy_of(&image.name);
        let entries: Vec<&Entry> = image.entries.iter().collect();
        check_tree(&mdir, &mtype, &img, image, &entries);
    }
}

#[test]
fn shipped_images_pass_fsck_fat() {
    let Some([fsck]) = tools("shipped_images_pass_fsck_fat", ["fsck.fat"]) else {
        return;
    };
    let images = manifest();
    let tmp = TempDir::new("fsck");
    for image in shipped(&images) {
        check_fsck_clean(&fsck, &tmp.copy_of(&image.name));
    }
}

#[test]
fn fat32_image_made_at_test_time_passes_fsck_and_holds_the_fat16_tree() {
    let test = "fat32_image_made_at_test_time_passes_fsck_and_holds_the_fat16_tree";
    let needed = ["bash", "mkfs.fat", "fsck.fat", "mcopy", "mtype", "mdir"];
    let Some([bash, _, fsck, _, mtype, mdir]) = tools(test, needed) else {
        return;
    };
    let images = manifest();
    let fat32 = find_image(&images, FAT32_IMAGE);
    let tmp = TempDir::new("fat32");
    let out = Command::new(bash)
        .arg(repo_path(SCRIPT))
        .arg("fat32")
        .arg(&tmp.0)
        .output()
        .expect("run make-images.sh fat32");
    assert!(out.status.success(), "make-images.sh fat32: {out:?}");
    let img = tmp.0.join(FAT32_IMAGE);
    let len = fs::metadata(&img).expect("made image").len();
    assert_eq!(len, fat32.image_bytes, "{FAT32_IMAGE}: image size");
    check_bpb(fat32, &img);
    check_fsck_clean(&fsck, &img);

    let of = fat32
        .tree_of
        .as_deref()
        .expect("the FAT32 image repeats a tree");
    let source = find_image(&images, of);
    let entries: Vec<&Entry> = source
        .entries
        .iter()
        .filter(|e| !fat32.not_in_image.contains(&e.path))
        .collect();
    assert_eq!(entries.len() + 1, source.entries.len(), "one path left out");
    check_tree(&mdir, &mtype, &img, fat32, &entries);
}
