//! Helpers shared by the integration tests that check the FAT images of `fat-images/`:
//! repository paths, FNV-1a 64, the model of `fat-images/MANIFEST.md`, the lookup of
//! dosfstools and mtools, and a temporary directory removed on drop. `readers` holds the
//! independent readers (fsck.fat, mtools, fatfs, fatcache) that check a written image.

// Each integration test compiles this module into its own binary and uses a different subset
// of it, so an item one binary leaves unused is not dead code.
#![allow(dead_code)]

pub(crate) mod readers;

use std::fs;
use std::path::{Path, PathBuf};

use fatcache::fat::bpb::FatType;

pub(crate) const MANIFEST: &str = "fat-images/MANIFEST.md";

pub(crate) fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// The texts between pairs of backticks in `s`.
pub(crate) fn backticked(s: &str) -> Vec<&str> {
    s.split('`').skip(1).step_by(2).collect()
}

/// The one backticked text in `s`.
pub(crate) fn one_backticked<'a>(s: &'a str, what: &str) -> &'a str {
    match backticked(s)[..] {
        [v] => v,
        _ => panic!("{what}: expected one `...` value in {s:?}"),
    }
}

/// 64-bit FNV-1a, the checksum the manifest carries.
pub(crate) fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// One file or directory of an image, as the manifest lists it.
#[derive(Debug)]
pub(crate) struct Entry {
    /// Absolute path inside the image, `/` separated.
    pub(crate) path: String,
    /// Size in bytes and FNV-1a 64 of a file; `None` for a directory.
    pub(crate) file: Option<(u64, u64)>,
}

/// One `## Image` section of the manifest.
#[derive(Debug)]
pub(crate) struct Image {
    pub(crate) name: String,
    pub(crate) shipped: bool,
    pub(crate) image_bytes: u64,
    pub(crate) fat_type: FatType,
    pub(crate) bytes_per_cluster: u32,
    pub(crate) label: String,
    pub(crate) volume_id: u32,
    /// Names deleted after they were written: their entries remain, marked 0xE5.
    pub(crate) deleted: Vec<String>,
    /// The image whose table this one repeats (`tree: same as ...`), for an image without
    /// its own table.
    pub(crate) tree_of: Option<String>,
    /// Paths of `tree_of`'s table that this image lacks.
    pub(crate) not_in_image: Vec<String>,
    /// The image's own table: empty when it repeats `tree_of`'s.
    pub(crate) entries: Vec<Entry>,
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
pub(crate) fn manifest() -> Vec<Image> {
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

pub(crate) fn find_image<'a>(images: &'a [Image], name: &str) -> &'a Image {
    images
        .iter()
        .find(|i| i.name == name)
        .unwrap_or_else(|| panic!("no image {name} in the manifest"))
}

/// The whole tree of `image`: its own table, or for `tree: same as` the other image's table
/// without the paths this one lacks, each of which must be in that table.
pub(crate) fn tree_of<'a>(images: &'a [Image], image: &'a Image) -> Vec<&'a Entry> {
    let Some(of) = image.tree_of.as_deref() else {
        return image.entries.iter().collect();
    };
    let source = find_image(images, of);
    for gone in &image.not_in_image {
        let listed = source.entries.iter().any(|e| e.path == *gone);
        assert!(listed, "{gone} not in {of}");
    }
    source
        .entries
        .iter()
        .filter(|e| !image.not_in_image.contains(&e.path))
        .collect()
}

/// `name` on PATH or in the sbin directories, where dosfstools installs.
pub(crate) fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// All of `names`, or `None` after printing why `test` skips.
pub(crate) fn tools<const N: usize>(test: &str, names: [&str; N]) -> Option<[PathBuf; N]> {
    let found = names.map(find_tool);
    if let Some(i) = found.iter().position(Option::is_none) {
        let name = names[i];
        println!("skipping {test}: {name} not found (needs dosfstools and mtools)");
        return None;
    }
    Some(found.map(|p| p.expect("checked above")))
}

/// A directory under `target/` removed on drop, so a failing test leaves nothing behind.
pub(crate) struct TempDir(pub(crate) PathBuf);

impl TempDir {
    /// `<prefix>-<test>-<pid>`: `prefix` names the test binary, `test` the test in it.
    pub(crate) fn new(prefix: &str, test: &str) -> TempDir {
        let name = format!("{prefix}-{test}-{}", std::process::id());
        let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    /// A private copy of a shipped image, so no tool can touch the one in git.
    pub(crate) fn copy_of(&self, image: &str) -> PathBuf {
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
