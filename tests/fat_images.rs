//! Checks the FAT images of `fat-images/` against `fat-images/MANIFEST.md`.
//!
//! The boot sector of each image goes through `fatcache::fat::bpb::Bpb`; files are read back
//! with mtools (`mtype`, `mdir`) and compared by size and FNV-1a 64; `fsck.fat -n` must find
//! nothing. The FAT32 image is not shipped: `make-images.sh fat32` makes it here, and it must
//! hold the tree of `small-fat16.img`. Checks that need dosfstools or mtools print a line and
//! skip when the tools are missing.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Output};

use common::{Entry, Image, TempDir, find_image, fnv1a64, manifest, repo_path, tools, tree_of};
use fatcache::fat::bpb::Bpb;

/// The prefix of this binary's temporary directories.
const TEMP: &str = "fat_images";
const SCRIPT: &str = "fat-images/make-images.sh";
const FAT16_IMAGE: &str = "small-fat16.img";
const FAT32_IMAGE: &str = "fat32-64m.img";

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
    let tmp = TempDir::new(TEMP, "read");
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
    let tmp = TempDir::new(TEMP, "fsck");
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
    let tmp = TempDir::new(TEMP, "fat32");
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
    let entries = tree_of(&images, fat32);
    assert_eq!(entries.len() + 1, source.entries.len(), "one path left out");
    check_tree(&mdir, &mtype, &img, fat32, &entries);
}
