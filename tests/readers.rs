//! Tests of the independent readers in `tests/common/readers.rs`, so that the write-side
//! tests can trust them: an image made by mkfs.fat and filled by mtools reads the same through
//! all of them on FAT12, FAT16 and FAT32, and each checker fails when it should: a changed
//! byte, a renamed entry, a corrupted FAT or directory, a dirty volume. Tests print a line
//! and skip when dosfstools or mtools are missing.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::readers::{
    FAT12, FAT16, FAT32, FsckMode, Layout, Node, READERS, Tree, assert_trees_agree, check_trees,
    compare_trees, fsck_clean, fsck_clean_allow_dirty, mkfs_fat, mtools_put_tree, mtools_tree,
    noise,
};
use common::{TempDir, tools};
use fatcache::dev::Placement;
use fatcache::fat::volume::Volume;

/// The prefix of this binary's temporary directories.
const TEMP: &str = "readers";

/// The tools every test here runs.
const TOOLS: [&str; 4] = ["mkfs.fat", "fsck.fat", "mmd", "mcopy"];

/// The non-ASCII long name the trees carry: Latin, a dash outside Latin-1, and CJK.
const UNICODE_NAME: &str = "Grüße – 你好.txt";

/// The big file, and an offset into it past its first cluster.
const BIG: &str = "/dir1/sub/big.bin";
const BIG_LEN: usize = 300_001;
const BIG_PROBE: usize = 200_003;

/// The 8.3 files (no long-name entries) whose directory entries the negative tests patch.
const UPPER: &str = "/UPPER.TXT";
const README: &str = "/README.TXT";

/// The tree every image here holds: nested and empty directories, long and unicode names,
/// pure 8.3 names (upper and lower case), an empty file, a directory spanning several
/// clusters, and a big file of non-trivial bytes.
fn sample_tree() -> Tree {
    let file = |s: &str| Node::File(s.as_bytes().to_vec());
    let mut t = Tree::new();
    t.insert(README.into(), file("an 8.3 name\n"));
    t.insert(UPPER.into(), file("UP"));
    // mtools stores an all-lower-case 8.3 name as a short entry with the lower-case flags.
    t.insert("/lower.txt".into(), file("lower\n"));
    t.insert("/empty".into(), Node::File(Vec::new()));
    t.insert("/dir1".into(), Node::Dir);
    t.insert(format!("/dir1/{UNICODE_NAME}"), file("hallo 你好\n"));
    t.insert("/dir1/sub".into(), Node::Dir);
    t.insert("/dir1/sub/deeper".into(), Node::Dir);
    t.insert(BIG.into(), Node::File(noise(BIG_LEN, 7)));
    t.insert("/Long Directory Name".into(), Node::Dir);
    t.insert(
        "/Long Directory Name/A rather long file name.text".into(),
        file("a long one"),
    );
    t.insert("/Long Directory Name/ünïcödé dir".into(), Node::Dir);
    t.insert("/Long Directory Name/ünïcödé dir/x".into(), file("x"));
    // 20 names of three entries each: 60 entries, several clusters of a directory.
    t.insert("/many".into(), Node::Dir);
    for i in 0..20 {
        let data = noise(100 + i * 37, i as u64 + 100);
        t.insert(
            format!("/many/file number {i:02} has a long name.dat"),
            Node::File(data),
        );
    }
    t
}

/// A scratch directory with `image.img` of `layout` holding [`sample_tree`]; `None` (after
/// printing why) without the tools.
fn build(test: &str, layout: Layout) -> Option<(TempDir, PathBuf, Tree)> {
    tools(test, TOOLS)?;
    let dir = TempDir::new(TEMP, test);
    let img = dir.0.join("image.img");
    let tree = sample_tree();
    let (fat, kib, spc) = (layout.fat, layout.kib, layout.sectors_per_cluster);
    mkfs_fat(&img, fat, kib, spc, "READERS").unwrap_or_else(|e| panic!("{test}: {e}"));
    mtools_put_tree(&img, &tree).unwrap_or_else(|e| panic!("{test}: {e}"));
    let vol = Volume::open(&img, Placement::default(), 64).expect("Volume::open");
    assert_eq!(vol.fat_type(), layout.want, "{test}: FAT type of the image");
    Some((dir, img, tree))
}

/// Builds the sample image of `layout`; fsck and every reader must agree with the tree.
fn check_all_agree(test: &str, layout: Layout) {
    let Some((_dir, img, tree)) = build(test, layout) else {
        return;
    };
    assert_trees_agree(&img, &tree);
}

#[test]
fn readers_agree_on_fat12() {
    check_all_agree("agree_fat12", FAT12);
}

#[test]
fn readers_agree_on_fat16() {
    check_all_agree("agree_fat16", FAT16);
}

#[test]
fn readers_agree_on_fat32() {
    check_all_agree("agree_fat32", FAT32);
}

/// mtools keeps long and unicode names exactly: the copy-out is no lossy round trip (it is
/// under a non-UTF-8 locale, which `mtools_command` rules out).
#[test]
fn mtools_keeps_unicode_names() {
    let Some((_dir, img, _tree)) = build("unicode", FAT12) else {
        return;
    };
    let tree = mtools_tree(&img).expect("mtools_tree");
    let path = format!("/dir1/{UNICODE_NAME}");
    assert!(tree.contains_key(&path), "{path} not in {:?}", tree.keys());
    assert!(tree.contains_key("/Long Directory Name/ünïcödé dir/x"));
}

// ---------------------------------------------------------------------------------------
// The comparison

/// The sample tree with one byte of the big file changed at `at`.
fn one_byte_changed(tree: &Tree, at: usize) -> Tree {
    let mut changed = tree.clone();
    let Some(Node::File(data)) = changed.get_mut(BIG) else {
        panic!("{BIG} is a file of the sample tree");
    };
    data[at] ^= 0x40;
    changed
}

#[test]
fn compare_trees_names_each_difference() {
    let tree = sample_tree();
    assert_eq!(compare_trees(&tree, &tree), Ok(()));

    let err = compare_trees(&tree, &one_byte_changed(&tree, 4097)).expect_err("byte changed");
    let want = format!("{BIG}: file of {BIG_LEN} bytes, expected {BIG_LEN} bytes; first ");
    assert!(err.starts_with(&want), "{err}");
    assert!(err.contains("first difference at byte 4097: "), "{err}");

    let mut shorter = tree.clone();
    shorter.insert("/lower.txt".into(), Node::File(b"lower".to_vec()));
    let err = compare_trees(&tree, &shorter).expect_err("file shorter");
    assert!(
        err.contains("identical for 5 bytes, then ends early"),
        "{err}"
    );

    let mut moved = tree.clone();
    let data = moved.remove(README).expect("in the sample tree");
    moved.insert("/READMF.TXT".into(), data);
    moved.insert("/dir1/sub/deeper".into(), Node::File(Vec::new()));
    let err = compare_trees(&tree, &moved).expect_err("renamed, dir turned file");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(
        lines,
        [
            "/README.TXT: missing (expected file of 12 bytes)",
            "/READMF.TXT: unexpected file of 12 bytes",
            "/dir1/sub/deeper: file of 0 bytes, expected dir",
        ]
    );
}

#[test]
fn compare_trees_caps_long_reports() {
    let tree = sample_tree();
    let err = compare_trees(&tree, &Tree::new()).expect_err("everything missing");
    assert_eq!(err.lines().count(), 21, "{err}");
    let more = tree.len() - 20;
    assert!(err.ends_with(&format!("... and {more} more")), "{err}");
}

/// An expected tree one byte off fails the whole check, and every reader says where.
#[test]
fn check_trees_reports_a_changed_byte_for_every_reader() {
    let Some((_dir, img, tree)) = build("changed_byte", FAT16) else {
        return;
    };
    assert_eq!(check_trees(&img, &tree, FsckMode::Strict), Ok(()));
    let err = check_trees(&img, &one_byte_changed(&tree, BIG_PROBE), FsckMode::Strict)
        .expect_err("one byte off");
    assert!(!err.contains("[fsck.fat]"), "{err}");
    for (name, _) in READERS {
        let want = format!("[{name}] differs from the expected tree:\n{BIG}: file of");
        assert!(err.contains(&want), "{name}: {err}");
    }
    let at = format!("first difference at byte {BIG_PROBE}: ");
    assert_eq!(err.matches(&at).count(), READERS.len(), "{err}");
}

// ---------------------------------------------------------------------------------------
// Each reader sees a change to the image

/// The offset of the one `align`-aligned block of `bytes` that starts with `needle`.
///
/// Directory entries sit at multiples of 32 bytes and clusters at multiples of the 512-byte
/// sector, so aligned blocks suffice, and a search that looks at every offset of a 34 MB image
/// would take seconds in a debug build.
fn find_once(bytes: &[u8], align: usize, needle: &[u8], what: &str) -> usize {
    let mut hits = bytes
        .chunks_exact(align)
        .enumerate()
        .filter(|(_, block)| block.starts_with(needle))
        .map(|(i, _)| i * align);
    let at = hits
        .next()
        .unwrap_or_else(|| panic!("{what} not in the image"));
    assert_eq!(hits.next(), None, "{what} more than once in the image");
    at
}

/// The offset in `img` of the directory entry with the 11-byte short name `short`.
fn entry_offset(image: &[u8], short: &[u8; 11]) -> usize {
    find_once(image, 32, short, &String::from_utf8_lossy(short))
}

/// Applies `edit` to the bytes of the image file `img`.
fn patch(img: &Path, edit: impl FnOnce(&mut Vec<u8>)) {
    let mut bytes = fs::read(img).expect("read image");
    edit(&mut bytes);
    fs::write(img, bytes).expect("write image");
}

/// One byte of file data changed in the image: fsck cannot see it, every reader must.
#[test]
fn every_reader_sees_a_changed_data_byte() {
    let Some((_dir, img, tree)) = build("data_byte", FAT32) else {
        return;
    };
    let Some(Node::File(big)) = tree.get(BIG) else {
        panic!("{BIG} is a file of the sample tree");
    };
    patch(&img, |bytes| {
        // The sector of the file holding the probe: 512 bytes of noise, found once.
        let (sector, within) = (BIG_PROBE / 512 * 512, BIG_PROBE % 512);
        let at = find_once(bytes, 512, &big[sector..sector + 512], "the probe's sector");
        bytes[at + within] ^= 0x40;
    });
    assert_eq!(fsck_clean(&img), Ok(()), "file data is no fsck matter");
    let sizes = format!("{BIG}: file of {BIG_LEN} bytes, expected {BIG_LEN} bytes; ");
    let at = format!("{sizes}first difference at byte {BIG_PROBE}: ");
    for (name, reader) in READERS {
        let got = reader(&img).unwrap_or_else(|e| panic!("{name}: {e}"));
        let err = compare_trees(&tree, &got).expect_err(name);
        assert!(err.starts_with(&at), "{name}: {err}");
        assert_eq!(err.lines().count(), 1, "{name}: {err}");
    }
}

/// A short name changed in its directory entry: still a valid name, so fsck is content,
/// and every reader lists the new name instead of the old.
#[test]
fn every_reader_sees_a_renamed_entry() {
    let Some((_dir, img, tree)) = build("renamed", FAT12) else {
        return;
    };
    patch(&img, |bytes| {
        let at = entry_offset(bytes, b"README  TXT");
        bytes[at + 5] = b'F';
    });
    assert_eq!(fsck_clean(&img), Ok(()), "READMF.TXT is a valid name");
    for (name, reader) in READERS {
        let got = reader(&img).unwrap_or_else(|e| panic!("{name}: {e}"));
        let err = compare_trees(&tree, &got).expect_err(name);
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(
            lines,
            [
                "/README.TXT: missing (expected file of 12 bytes)",
                "/READMF.TXT: unexpected file of 12 bytes",
            ],
            "{name}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// fsck.fat

/// The dirty flag's byte in the boot sector: in the FAT12/16 or the FAT32 extended BPB.
fn dirty_byte(layout: Layout) -> usize {
    if layout.fat == 32 { 0x41 } else { 0x25 }
}

/// Builds the sample image, applies `edit`, and returns what fsck_clean says.
fn fsck_after(test: &str, layout: Layout, edit: impl FnOnce(&mut Vec<u8>)) -> Option<String> {
    let (_dir, img, _tree) = build(test, layout)?;
    assert_eq!(fsck_clean(&img), Ok(()), "{test}: before the edit");
    patch(&img, edit);
    let err = fsck_clean(&img).expect_err(test);
    // The damage is no dirty bit, so allowing one changes nothing.
    assert!(fsck_clean_allow_dirty(&img).is_err(), "{test}");
    Some(err)
}

/// Two files starting at one cluster.
#[test]
fn fsck_finds_cross_linked_files() {
    let Some(err) = fsck_after("crosslink", FAT16, |bytes| {
        let upper = entry_offset(bytes, b"UPPER   TXT");
        let readme = entry_offset(bytes, b"README  TXT");
        // First cluster: high half at 20, low half at 26.
        for field in [20, 26] {
            let (from, to) = (readme + field, upper + field);
            bytes.copy_within(from..from + 2, to);
        }
    }) else {
        return;
    };
    assert!(err.contains("share clusters"), "{err}");
    assert!(err.contains("exit code Some(1)"), "{err}");
}

/// A character no short name may hold.
#[test]
fn fsck_finds_a_bad_short_name() {
    let Some(err) = fsck_after("bad_name", FAT12, |bytes| {
        let at = entry_offset(bytes, b"UPPER   TXT");
        bytes[at + 1] = b'?';
    }) else {
        return;
    };
    assert!(err.contains("Bad short file name"), "{err}");
}

/// A size beyond what the cluster chain holds.
#[test]
fn fsck_finds_a_size_beyond_the_chain() {
    let Some(err) = fsck_after("bad_size", FAT32, |bytes| {
        let at = entry_offset(bytes, b"UPPER   TXT");
        bytes[at + 28..at + 32].copy_from_slice(&100_000u32.to_le_bytes());
    }) else {
        return;
    };
    assert!(err.contains("File size is 100000 bytes"), "{err}");
}

/// The dirty bit fails the strict check and passes the lenient one: on FAT16, and on FAT32
/// where the backup boot sector then differs in that byte.
#[test]
fn fsck_dirty_bit_is_a_complaint_only_when_strict() {
    for (test, layout) in [("dirty16", FAT16), ("dirty32", FAT32)] {
        let Some((_dir, img, tree)) = build(test, layout) else {
            return;
        };
        patch(&img, |bytes| bytes[dirty_byte(layout)] |= 1);
        let err = fsck_clean(&img).expect_err(test);
        assert!(err.contains("Dirty bit is set"), "{test}: {err}");
        assert_eq!(fsck_clean_allow_dirty(&img), Ok(()), "{test}");
        assert_eq!(
            check_trees(&img, &tree, FsckMode::AllowDirty),
            Ok(()),
            "{test}"
        );
        let err = check_trees(&img, &tree, FsckMode::Strict).expect_err(test);
        assert!(err.contains("[fsck.fat]"), "{test}: {err}");
        assert!(!err.contains("[mtools]"), "{test}: {err}");
    }
}

/// Allowing the dirty bit does not let real damage through with it.
#[test]
fn fsck_dirty_and_damaged_still_fails() {
    let Some((_dir, img, _tree)) = build("dirty_damaged", FAT32) else {
        return;
    };
    patch(&img, |bytes| {
        bytes[dirty_byte(FAT32)] |= 1;
        let at = entry_offset(bytes, b"UPPER   TXT");
        bytes[at + 1] = b'?';
    });
    let err = fsck_clean_allow_dirty(&img).expect_err("bad name");
    assert!(err.contains("Bad short file name"), "{err}");
    assert!(!err.contains("\n  Dirty bit is set"), "{err}");
}
