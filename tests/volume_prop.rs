//! A property test of the read-write [`Volume`] against an in-memory model of a vfat tree.
//!
//! proptest generates random operation sequences over a small namespace (long names, case
//! variants that must collide, a pure 8.3 name, non-ASCII names) and applies each operation to a
//! fresh FAT12, FAT16 or FAT32 image through the `Volume` API and to [`Model`], which encodes
//! what vfat must do: case-insensitive names, and the errno of every operation that must fail.
//! A failing operation must fail with exactly the model's errno and change nothing; a
//! successful one changes both. After every operation the whole tree is read back through the
//! live volume (names as `read_dir` shows them, kinds, sizes and every byte) and compared with
//! the model; at the end the volume is unmounted and `fsck.fat -n` (strict), mtools, the
//! `fatfs` crate and our read-only reader must all see the model's tree.
//!
//! Names: the default `shortname=mixed` creates by the Win95 rule, so every name here that is
//! not a valid upper-case 8.3 name gets LFN slots and reads back exactly as created; the one
//! 8.3 name of the pool (`README.TXT`) is upper case and reads back as stored. So `read_dir` is
//! compared exactly (case-sensitively), while lookups are case-insensitive through
//! [`fold`], which is vfat's comparison: Unicode simple upper-casing per character (so `ß`
//! stays `ß`, and `Grüße.txt` and `GRÜßE.TXT` are one name). No name has a trailing dot or a
//! `~`, so neither vfat's tail stripping nor alias look-alikes need modelling.
//!
//! The "VFS" part is this file's harness: a path's parent is found with `lookup_path` (ENOENT
//! for a missing component, ENOTDIR for a file in the middle), then the `Volume` operation is
//! called on that node, which answers ENOTDIR itself when the parent is a file. Deviations from
//! Linux that the model follows, because the `Volume` documents them:
//! * a rename to another spelling of the same entry ("File.txt" to "file.TXT") re-spells it,
//!   `noreplace` or not (Linux's VFS sees one dentry: a no-op, or EEXIST with NOREPLACE); a
//!   rename whose two names are the same string is a no-op, whatever the stored spelling;
//! * both parents of a rename are looked up before the volume refuses one that is a file, so
//!   a missing new parent is ENOENT even when the old parent is a file (Linux: ENOTDIR);
//! * fallocate of a directory is EOPNOTSUPP (fat_fallocate's answer; Linux cannot open a
//!   directory for writing in the first place). Lengths are never 0 here.
//!
//! Generator: 1 to 80 operations; a target is mostly an existing node of the kind the operation
//! wants or a pool name inside an existing directory (resolved against the model when the
//! operation runs, so shrinking keeps it meaningful), sometimes a literal path of 1 to 3 pool
//! names (mostly the error cases). Sizes and offsets are uniform or on sector, cluster and page
//! boundaries; each case also picks `sync` or not and a 64- or 1024-frame page cache.
//!
//! Each case runs on a worker thread that reports every operation as it starts and returns; one
//! that does not return within [`OP_TIMEOUT`] is reported as a hang (a deadlock), and the
//! worker is left blocked.
//!
//! Runs `FATCACHE_PROP_CASES` cases per FAT type (default [`DEFAULT_CASES`]) from a fixed seed
//! (`FATCACHE_PROP_SEED` changes it), with no failure persistence, so CI is deterministic. A
//! failure prints the shrunk sequence as the operations the model resolved, each with what the
//! volume returned, then the first disagreement. Tests print a line and skip without dosfstools
//! or mtools.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{RecvTimeoutError, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::readers::{
    FAT12, FAT16, FAT32, FsckMode, Layout, Node as TreeNode, Tree, check_trees, compare_trees,
    mkfs_fat,
};
use common::{TempDir, tools};
use fatcache::FsError;
use fatcache::bug::OnBug;
use fatcache::fat::volume::{MountOptions, Node as VolNode, Volume};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::{Config, RngAlgorithm, TestError, TestRng, TestRunner};

/// The prefix of this binary's temporary directories.
const TEMP: &str = "volume_prop";

/// The tools a case needs: the image is made by mkfs.fat, the end checked by fsck and mtools.
const TOOLS: [&str; 3] = ["mkfs.fat", "fsck.fat", "mcopy"];

/// Cases per FAT type unless `FATCACHE_PROP_CASES` says otherwise.
const DEFAULT_CASES: u32 = 128;

/// The seed unless `FATCACHE_PROP_SEED` says otherwise.
const DEFAULT_SEED: u64 = 0x00fa_7cac_4e5e_ed01;

/// Most operations of one sequence.
const MAX_OPS: usize = 80;

/// An operation that takes longer than this hangs: the slowest here take about 20 ms in a
/// debug build (the passing run prints its slowest).
const OP_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest wait between operations and for the readers at the end (fsck.fat, mtools).
const END_TIMEOUT: Duration = Duration::from_secs(300);

/// Largest write, and largest offset of a write or fallocate.
const MAX_WRITE: u64 = 20 * 1024;
const MAX_OFFSET: u64 = 40 * 1024;
/// Largest size `set_size` asks for.
const MAX_SET_SIZE: u64 = 64 * 1024;

/// The namespace. Pairs that fold to one name: 0 and 1, 5 and 6. 2 is upper-case 8.3 (a short
/// entry alone); 3 and 4 share the alias basis `LONGDI` (numeric tails); 7 is lower-case 8.3
/// (LFN slots under the Win95 rule).
const NAMES: [&str; 8] = [
    "File.txt",
    "file.TXT",
    "README.TXT",
    "Long Directory Name",
    "Long Directory Name 2",
    "Grüße.txt",
    "GRÜßE.TXT",
    "sub",
];

/// Sizes around sector, cluster (512 B to 2 KiB here) and page boundaries.
const BOUNDARIES: [u64; 22] = [
    0, 1, 511, 512, 513, 1023, 1024, 1025, 2047, 2048, 2049, 4095, 4096, 4097, 8191, 8192, 8193,
    16383, 16384, 16385, 32768, 40960,
];

// ---------------------------------------------------------------------------------------
// Layouts

// ---------------------------------------------------------------------------------------
// Operations

/// Which path an operation acts on.
#[derive(Clone)]
enum Target {
    /// The n-th (modulo their count) existing file or directory of the model, of the kind the
    /// operation prefers; a root name from the pool when there is none.
    Existing(u8),
    /// A pool name in the n-th (modulo) existing directory, the root counting as the first.
    Under(u8, &'static str),
    /// A literal path of pool names, which may or may not exist.
    Path(Vec<&'static str>),
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Existing(i) => write!(f, "existing#{i}"),
            Target::Under(i, name) => write!(f, "dir#{i}/{name:?}"),
            Target::Path(p) => write!(f, "/{}", p.join("/")),
        }
    }
}

/// One operation as generated (targets not yet resolved against the model).
#[derive(Clone, Debug)]
enum Op {
    Create(Target),
    Mkdir(Target),
    Write {
        t: Target,
        off: u64,
        len: u64,
    },
    SetSize {
        t: Target,
        size: u64,
    },
    Fallocate {
        t: Target,
        off: u64,
        len: u64,
    },
    Unlink(Target),
    Rmdir(Target),
    Rename {
        from: Target,
        to: Target,
        noreplace: bool,
    },
    Fsync(Target),
    SyncFs,
    Remount,
}

/// One generated case: mount options and the operations.
#[derive(Clone)]
struct Case {
    /// Mount with `sync` (every change on the disk when the call returns).
    sync: bool,
    /// A page cache of 64 frames instead of 1024: reclaim and writeback under pressure.
    small_cache: bool,
    ops: Vec<Op>,
}

impl fmt::Debug for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "sync={} small_cache={}", self.sync, self.small_cache)?;
        for (i, op) in self.ops.iter().enumerate() {
            writeln!(f, "  {i:2}: {op:?}")?;
        }
        Ok(())
    }
}

/// Sizes: uniform up to `max`, or a boundary value (capped at `max`).
fn size_upto(max: u64) -> impl Strategy<Value = u64> {
    prop_oneof![
        2 => 0..=max,
        1 => select(&BOUNDARIES[..]).prop_map(move |b| b.min(max)),
    ]
}

fn name() -> impl Strategy<Value = &'static str> {
    select(&NAMES[..])
}

fn literal() -> impl Strategy<Value = Target> {
    vec(name(), 1..=3).prop_map(Target::Path)
}

fn existing() -> impl Strategy<Value = Target> {
    any::<u8>().prop_map(Target::Existing)
}

fn under() -> impl Strategy<Value = Target> {
    (any::<u8>(), name()).prop_map(|(i, n)| Target::Under(i, n))
}

/// An existing node mostly, sometimes any path (for the error cases).
fn mostly_existing() -> impl Strategy<Value = Target> {
    prop_oneof![4 => existing(), 1 => literal()]
}

/// A new name in an existing directory mostly, sometimes any path.
fn mostly_under() -> impl Strategy<Value = Target> {
    prop_oneof![3 => under(), 1 => literal()]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => mostly_under().prop_map(Op::Create),
        3 => mostly_under().prop_map(Op::Mkdir),
        6 => (mostly_existing(), size_upto(MAX_OFFSET), size_upto(MAX_WRITE))
            .prop_map(|(t, off, len)| Op::Write { t, off, len }),
        3 => (mostly_existing(), size_upto(MAX_SET_SIZE)).prop_map(|(t, size)| Op::SetSize { t, size }),
        2 => (mostly_existing(), size_upto(MAX_OFFSET), size_upto(MAX_WRITE))
            .prop_map(|(t, off, len)| Op::Fallocate { t, off, len: len.max(1) }),
        2 => mostly_existing().prop_map(Op::Unlink),
        2 => mostly_existing().prop_map(Op::Rmdir),
        4 => (mostly_existing(), prop_oneof![3 => under(), 1 => existing(), 1 => literal()], any::<bool>())
            .prop_map(|(from, to, noreplace)| Op::Rename { from, to, noreplace }),
        1 => mostly_existing().prop_map(Op::Fsync),
        1 => Just(Op::SyncFs),
        1 => Just(Op::Remount),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    (any::<bool>(), any::<bool>(), vec(op(), 1..=MAX_OPS)).prop_map(|(sync, small_cache, ops)| {
        Case {
            sync,
            small_cache,
            ops,
        }
    })
}

// ---------------------------------------------------------------------------------------
// The model

/// vfat's name comparison key: per-character Unicode simple upper case (a character whose
/// upper case is several characters, like `ß`, stays itself). No generated name has the
/// trailing dots vfat would also strip.
fn fold(name: &str) -> String {
    name.chars()
        .map(|c| {
            let mut up = c.to_uppercase();
            match (up.next(), up.next()) {
                (Some(u), None) => u,
                _ => c,
            }
        })
        .collect()
}

fn fold_path(path: &[String]) -> Vec<String> {
    path.iter().map(|c| fold(c)).collect()
}

/// A directory's entries: folded name to (name as created, node).
type Children = BTreeMap<String, (String, MNode)>;

#[derive(Clone, Debug)]
enum MNode {
    File(Vec<u8>),
    Dir(Children),
}

/// What a `Volume` operation may answer: nothing, or a byte count (write).
type Outcome = Result<Option<u64>, i32>;

/// The expected tree, with vfat semantics. Every operation returns the outcome the volume must
/// give; a failing one leaves the model as it was.
#[derive(Debug)]
struct Model {
    root: MNode,
}

/// Which kind of existing node an operation prefers for [`Target::Existing`].
#[derive(Clone, Copy, PartialEq, Eq)]
enum Want {
    File,
    Dir,
    Any,
}

impl Model {
    fn new() -> Model {
        Model {
            root: MNode::Dir(Children::new()),
        }
    }

    /// The node at `path`, as `lookup_path` walks: ENOTDIR for a file with more to come,
    /// ENOENT for a missing name.
    fn get(&self, path: &[String]) -> Result<&MNode, i32> {
        let mut cur = &self.root;
        for c in path {
            let MNode::Dir(ch) = cur else {
                return Err(libc::ENOTDIR);
            };
            cur = &ch.get(&fold(c)).ok_or(libc::ENOENT)?.1;
        }
        Ok(cur)
    }

    fn get_mut(&mut self, path: &[String]) -> Result<&mut MNode, i32> {
        let mut cur = &mut self.root;
        for c in path {
            let MNode::Dir(ch) = cur else {
                return Err(libc::ENOTDIR);
            };
            cur = &mut ch.get_mut(&fold(c)).ok_or(libc::ENOENT)?.1;
        }
        Ok(cur)
    }

    /// The children of the directory at `path`; ENOTDIR when it is a file.
    fn dir_mut(&mut self, path: &[String]) -> Result<&mut Children, i32> {
        match self.get_mut(path)? {
            MNode::Dir(ch) => Ok(ch),
            MNode::File(_) => Err(libc::ENOTDIR),
        }
    }

    /// Every node below the root (paths with the names as created), in a stable order.
    fn nodes(&self, want: Want) -> Vec<Vec<String>> {
        fn walk(ch: &Children, prefix: &[String], want: Want, out: &mut Vec<Vec<String>>) {
            for (name, node) in ch.values() {
                let mut p = prefix.to_vec();
                p.push(name.clone());
                let ok = matches!(
                    (want, node),
                    (Want::Any, _) | (Want::File, MNode::File(_)) | (Want::Dir, MNode::Dir(_))
                );
                if ok {
                    out.push(p.clone());
                }
                if let MNode::Dir(sub) = node {
                    walk(sub, &p, want, out);
                }
            }
        }
        let mut out = Vec::new();
        if let MNode::Dir(ch) = &self.root {
            walk(ch, &[], want, &mut out);
        }
        out
    }

    /// The path a target names now.
    fn resolve(&self, t: &Target, want: Want) -> Vec<String> {
        match t {
            Target::Existing(i) => {
                let all = self.nodes(want);
                if all.is_empty() {
                    vec![NAMES[usize::from(*i) % NAMES.len()].to_owned()]
                } else {
                    all[usize::from(*i) % all.len()].clone()
                }
            }
            Target::Under(i, name) => {
                let mut dirs = vec![Vec::new()];
                dirs.extend(self.nodes(Want::Dir));
                let mut p = dirs[usize::from(*i) % dirs.len()].clone();
                p.push((*name).to_owned());
                p
            }
            Target::Path(p) => p.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    /// The tree as the readers report it.
    fn tree(&self) -> Tree {
        fn walk(ch: &Children, prefix: &str, out: &mut Tree) {
            for (name, node) in ch.values() {
                let path = format!("{prefix}/{name}");
                match node {
                    MNode::File(data) => {
                        out.insert(path, TreeNode::File(data.clone()));
                    }
                    MNode::Dir(sub) => {
                        out.insert(path.clone(), TreeNode::Dir);
                        walk(sub, &path, out);
                    }
                }
            }
        }
        let mut t = Tree::new();
        if let MNode::Dir(ch) = &self.root {
            walk(ch, "", &mut t);
        }
        t
    }

    fn add(&mut self, path: &[String], node: MNode) -> Outcome {
        let (name, parent) = path.split_last().expect("paths have a name");
        let ch = self.dir_mut(parent)?;
        if ch.contains_key(&fold(name)) {
            return Err(libc::EEXIST);
        }
        ch.insert(fold(name), (name.clone(), node));
        Ok(None)
    }

    fn unlink(&mut self, path: &[String]) -> Outcome {
        let (name, parent) = path.split_last().expect("paths have a name");
        let ch = self.dir_mut(parent)?;
        match ch.get(&fold(name)) {
            None => Err(libc::ENOENT),
            Some((_, MNode::Dir(_))) => Err(libc::EISDIR),
            Some((_, MNode::File(_))) => {
                ch.remove(&fold(name));
                Ok(None)
            }
        }
    }

    fn rmdir(&mut self, path: &[String]) -> Outcome {
        let (name, parent) = path.split_last().expect("paths have a name");
        let ch = self.dir_mut(parent)?;
        match ch.get(&fold(name)) {
            None => Err(libc::ENOENT),
            Some((_, MNode::File(_))) => Err(libc::ENOTDIR),
            Some((_, MNode::Dir(sub))) if !sub.is_empty() => Err(libc::ENOTEMPTY),
            Some((_, MNode::Dir(_))) => {
                ch.remove(&fold(name));
                Ok(None)
            }
        }
    }

    /// The file at `path`; `dir_errno` when it is a directory.
    fn file_mut(&mut self, path: &[String], dir_errno: i32) -> Result<&mut Vec<u8>, i32> {
        match self.get_mut(path)? {
            MNode::File(data) => Ok(data),
            MNode::Dir(_) => Err(dir_errno),
        }
    }

    fn write(&mut self, path: &[String], off: u64, data: &[u8]) -> Outcome {
        let f = self.file_mut(path, libc::EISDIR)?;
        if !data.is_empty() {
            let off = off as usize;
            if f.len() < off + data.len() {
                f.resize(off + data.len(), 0);
            }
            f[off..off + data.len()].copy_from_slice(data);
        }
        Ok(Some(data.len() as u64))
    }

    fn set_size(&mut self, path: &[String], size: u64) -> Outcome {
        self.file_mut(path, libc::EISDIR)?.resize(size as usize, 0);
        Ok(None)
    }

    fn fallocate(&mut self, path: &[String], off: u64, len: u64) -> Outcome {
        let f = self.file_mut(path, libc::EOPNOTSUPP)?;
        let end = (off + len) as usize;
        if end > f.len() {
            f.resize(end, 0);
        }
        Ok(None)
    }

    fn rename(&mut self, from: &[String], to: &[String], noreplace: bool) -> Outcome {
        let (fname, fparent) = from.split_last().expect("paths have a name");
        let (tname, tparent) = to.split_last().expect("paths have a name");
        // The harness looks both parents up first, then the volume refuses a file parent.
        let fp = self.get(fparent)?;
        let tp = self.get(tparent)?;
        let (MNode::Dir(fch), MNode::Dir(tch)) = (fp, tp) else {
            return Err(libc::ENOTDIR);
        };
        let (fkey, tkey) = (fold(fname), fold(tname));
        let src_is_dir = match fch.get(&fkey) {
            None => return Err(libc::ENOENT),
            Some((_, node)) => matches!(node, MNode::Dir(_)),
        };
        let (ffold, tpfold) = (fold_path(from), fold_path(tparent));
        if src_is_dir && tpfold.starts_with(&ffold) {
            return Err(libc::EINVAL);
        }
        let same_entry = fold_path(fparent) == tpfold && fkey == tkey;
        if same_entry {
            // The same name as given is a no-op even when the entry is spelled otherwise;
            // another spelling replaces the stored one.
            if fname != tname {
                let ch = self.dir_mut(fparent)?;
                let entry = ch.get_mut(&fkey).expect("looked up above");
                entry.0 = tname.clone();
            }
            return Ok(None);
        }
        if let Some((_, target)) = tch.get(&tkey) {
            if noreplace {
                return Err(libc::EEXIST);
            }
            match (src_is_dir, target) {
                (true, MNode::File(_)) => return Err(libc::ENOTDIR),
                (false, MNode::Dir(_)) => return Err(libc::EISDIR),
                (true, MNode::Dir(sub)) if !sub.is_empty() => return Err(libc::ENOTEMPTY),
                _ => {}
            }
        }
        let (_, node) = self
            .dir_mut(fparent)?
            .remove(&fkey)
            .expect("looked up above");
        self.dir_mut(tparent)?.insert(tkey, (tname.clone(), node));
        Ok(None)
    }
}

// ---------------------------------------------------------------------------------------
// The harness

/// `n` bytes for the write of operation `op` at `off`: xorshift64* noise, never zero, so a
/// zero-filled gap or a lost write shows.
fn data_for(op: usize, off: u64, n: u64) -> Vec<u8> {
    let mut x = (op as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ off ^ 0x5555;
    x |= 1;
    (0..n)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            ((x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8).max(1)
        })
        .collect()
}

fn show(path: &[String]) -> String {
    format!("/{}", path.join("/"))
}

fn last(path: &[String]) -> &str {
    path.last().expect("paths have a name")
}

fn errno_name(e: i32) -> String {
    let name = match e {
        libc::ENOENT => "ENOENT",
        libc::EEXIST => "EEXIST",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::EINVAL => "EINVAL",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ENOSPC => "ENOSPC",
        libc::EIO => "EIO",
        libc::EFBIG => "EFBIG",
        libc::EROFS => "EROFS",
        libc::ENOMEM => "ENOMEM",
        _ => return format!("errno {e}"),
    };
    name.to_owned()
}

fn show_outcome(o: &Outcome) -> String {
    match o {
        Ok(None) => "Ok".to_owned(),
        Ok(Some(n)) => format!("Ok({n})"),
        Err(e) => errno_name(*e),
    }
}

/// An operation with its paths resolved against the model as it stands before it.
#[derive(Clone, Debug)]
enum Resolved {
    Create(Vec<String>),
    Mkdir(Vec<String>),
    Write(Vec<String>, u64, u64),
    SetSize(Vec<String>, u64),
    Fallocate(Vec<String>, u64, u64),
    Unlink(Vec<String>),
    Rmdir(Vec<String>),
    Rename(Vec<String>, Vec<String>, bool),
    Fsync(Vec<String>),
    SyncFs,
    Remount,
}

impl fmt::Display for Resolved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Resolved::Create(p) => write!(f, "create {}", show(p)),
            Resolved::Mkdir(p) => write!(f, "mkdir {}", show(p)),
            Resolved::Write(p, off, len) => write!(f, "write {} off={off} len={len}", show(p)),
            Resolved::SetSize(p, size) => write!(f, "set_size {} {size}", show(p)),
            Resolved::Fallocate(p, off, len) => {
                write!(f, "fallocate {} off={off} len={len}", show(p))
            }
            Resolved::Unlink(p) => write!(f, "unlink {}", show(p)),
            Resolved::Rmdir(p) => write!(f, "rmdir {}", show(p)),
            Resolved::Rename(a, b, noreplace) => {
                let flag = if *noreplace { " (noreplace)" } else { "" };
                write!(f, "rename {} -> {}{flag}", show(a), show(b))
            }
            Resolved::Fsync(p) => write!(f, "fsync {}", show(p)),
            Resolved::SyncFs => f.write_str("sync_fs"),
            Resolved::Remount => f.write_str("remount (unmount, mount)"),
        }
    }
}

impl Model {
    /// `op`'s paths as they resolve now.
    fn resolve_op(&self, op: &Op) -> Resolved {
        match op {
            Op::Create(t) => Resolved::Create(self.resolve(t, Want::Any)),
            Op::Mkdir(t) => Resolved::Mkdir(self.resolve(t, Want::Any)),
            Op::Write { t, off, len } => Resolved::Write(self.resolve(t, Want::File), *off, *len),
            Op::SetSize { t, size } => Resolved::SetSize(self.resolve(t, Want::File), *size),
            Op::Fallocate { t, off, len } => {
                Resolved::Fallocate(self.resolve(t, Want::File), *off, *len)
            }
            Op::Unlink(t) => Resolved::Unlink(self.resolve(t, Want::File)),
            Op::Rmdir(t) => Resolved::Rmdir(self.resolve(t, Want::Dir)),
            Op::Rename {
                from,
                to,
                noreplace,
            } => Resolved::Rename(
                self.resolve(from, Want::Any),
                self.resolve(to, Want::Any),
                *noreplace,
            ),
            Op::Fsync(t) => Resolved::Fsync(self.resolve(t, Want::Any)),
            Op::SyncFs => Resolved::SyncFs,
            Op::Remount => Resolved::Remount,
        }
    }

    /// Applies `r` (number `i`, for the written bytes) to the model: the outcome the volume
    /// must give.
    fn apply(&mut self, i: usize, r: &Resolved) -> Outcome {
        match r {
            Resolved::Create(p) => self.add(p, MNode::File(Vec::new())),
            Resolved::Mkdir(p) => self.add(p, MNode::Dir(Children::new())),
            Resolved::Write(p, off, len) => self.write(p, *off, &data_for(i, *off, *len)),
            Resolved::SetSize(p, size) => self.set_size(p, *size),
            Resolved::Fallocate(p, off, len) => self.fallocate(p, *off, *len),
            Resolved::Unlink(p) => self.unlink(p),
            Resolved::Rmdir(p) => self.rmdir(p),
            Resolved::Rename(a, b, noreplace) => self.rename(a, b, *noreplace),
            Resolved::Fsync(p) => self.get(p).map(|_| None),
            Resolved::SyncFs | Resolved::Remount => Ok(None),
        }
    }
}

/// What the worker running a case tells the test thread.
enum Progress {
    /// Operation `i` starts: its description.
    Start(usize, String),
    /// The last started operation returned: its trace line.
    Done(String),
    /// The case is over: the report of the first disagreement, if any.
    End(Result<(), String>),
}

/// What the cases of one test share: the operation prefixes (mount options, then each
/// operation as resolved) whose last operation hung. The volume is deterministic, so a shrink candidate that repeats such a prefix
/// fails at once instead of waiting [`OP_TIMEOUT`] again: without this, each of the hundreds of
/// candidates that keep a hang would cost the timeout.
#[derive(Debug, Default)]
struct Watch {
    hangs: Mutex<HashSet<Vec<String>>>,
    /// The longest any operation took to return, in microseconds (reported on success, to
    /// show how far below [`OP_TIMEOUT`] the operations stay).
    slowest_us: AtomicU64,
}

/// The report of a hang at operation `i`.
fn hang_message(i: usize, what: &str) -> String {
    format!("op {i} ({what}) hangs: no return after {OP_TIMEOUT:?} (deadlock?)")
}

/// One case's image, mount and model.
struct Harness {
    img: PathBuf,
    opts: MountOptions,
    vol: Option<Volume>,
    model: Model,
    /// The key of [`Watch::hangs`] so far.
    prefix: Vec<String>,
    watch: Arc<Watch>,
}

impl Harness {
    fn vol(&self) -> &Volume {
        self.vol.as_ref().expect("mounted")
    }

    fn mount(&mut self) -> Result<(), String> {
        let vol = Volume::mount(&self.img, self.opts.clone()).map_err(|e| format!("mount: {e}"))?;
        self.vol = Some(vol);
        Ok(())
    }

    fn unmount(&mut self) -> Result<(), String> {
        let vol = self.vol.take().expect("mounted");
        vol.unmount().map_err(|e| format!("unmount: {e}"))
    }

    fn node(&self, path: &[String]) -> Result<Arc<VolNode>, FsError> {
        self.vol().lookup_path(&show(path))
    }

    fn parent(&self, path: &[String]) -> Result<Arc<VolNode>, FsError> {
        self.node(&path[..path.len() - 1])
    }

    /// Runs `r` (number `i`) on the volume, as the VFS would: parents by path first.
    fn execute(&mut self, i: usize, r: &Resolved) -> Result<Option<u64>, FsError> {
        match r {
            Resolved::Create(p) => self.vol().create(&*self.parent(p)?, last(p)).map(|_| None),
            Resolved::Mkdir(p) => self.vol().mkdir(&*self.parent(p)?, last(p)).map(|_| None),
            Resolved::Write(p, off, len) => {
                let data = data_for(i, *off, *len);
                let n = self.vol().write(&*self.node(p)?, *off, &data)?;
                Ok(Some(n as u64))
            }
            Resolved::SetSize(p, size) => {
                self.vol().set_size(&*self.node(p)?, *size).map(|()| None)
            }
            Resolved::Fallocate(p, off, len) => self
                .vol()
                .fallocate(&*self.node(p)?, 0, *off, *len)
                .map(|()| None),
            Resolved::Unlink(p) => self.vol().unlink(&*self.parent(p)?, last(p)).map(|()| None),
            Resolved::Rmdir(p) => self.vol().rmdir(&*self.parent(p)?, last(p)).map(|()| None),
            Resolved::Rename(a, b, noreplace) => {
                let (ad, bd) = (self.parent(a)?, self.parent(b)?);
                self.vol()
                    .rename(&ad, last(a), &bd, last(b), *noreplace)
                    .map(|()| None)
            }
            Resolved::Fsync(p) => self.vol().fsync(&*self.node(p)?).map(|()| None),
            Resolved::SyncFs => self.vol().sync_fs().map(|()| None),
            Resolved::Remount => {
                let vol = self.vol.take().expect("mounted");
                vol.unmount()?;
                self.vol = Some(Volume::mount(&self.img, self.opts.clone())?);
                Ok(None)
            }
        }
    }

    /// Applies `op` (number `i`) to the volume and the model; an error when they disagree.
    fn step(&mut self, i: usize, op: &Op, tell: &Sender<Progress>) -> Result<(), String> {
        let r = self.model.resolve_op(op);
        let what = r.to_string();
        let _ = tell.send(Progress::Start(i, what.clone()));
        self.prefix.push(what.clone());
        if self
            .watch
            .hangs
            .lock()
            .expect("hangs")
            .contains(&self.prefix)
        {
            return Err(hang_message(i, &what));
        }
        let got = self.execute(i, &r);
        let detail = match &got {
            Err(e) => format!(" ({e})"),
            Ok(_) => String::new(),
        };
        let got: Outcome = got.map_err(|e| e.errno());
        let want = self.model.apply(i, &r);
        let _ = tell.send(Progress::Done(format!(
            "{i:3}. {what} -> {}{detail}",
            show_outcome(&got)
        )));
        if got != want {
            return Err(format!(
                "op {i} ({what}): the volume answered {}{detail}, the model expects {}",
                show_outcome(&got),
                show_outcome(&want)
            ));
        }
        self.compare_live().map_err(|e| {
            format!("after op {i} ({what}), the live volume differs from the model:\n{e}")
        })
    }

    /// The whole tree as the mounted volume reads it: `read_dir` names, sizes, every byte.
    fn live_tree(&self) -> Result<Tree, String> {
        fn walk(vol: &Volume, dir: &VolNode, prefix: &str, out: &mut Tree) -> Result<(), String> {
            let items = vol
                .read_dir(dir)
                .map_err(|e| format!("read_dir {prefix}/: {e}"))?;
            for item in items {
                let path = format!("{prefix}/{}", item.name);
                let node = vol
                    .child_at(dir, item.offset)
                    .map_err(|e| format!("child_at {path}: {e}"))?;
                let seen = if node.is_dir() {
                    walk(vol, &node, &path, out)?;
                    TreeNode::Dir
                } else {
                    let size = node.size();
                    if u64::from(item.entry.size) != size {
                        return Err(format!(
                            "{path}: read_dir says {} bytes, the node {size}",
                            item.entry.size
                        ));
                    }
                    // One byte more than the size, to see that the read stops there.
                    let mut data = vec![0u8; size as usize + 1];
                    let mut done = 0;
                    loop {
                        let n = vol
                            .read(&node, done as u64, &mut data[done..])
                            .map_err(|e| format!("read {path} at {done}: {e}"))?;
                        if n == 0 {
                            break;
                        }
                        done += n;
                        if done > size as usize {
                            return Err(format!("{path}: read past the size {size}"));
                        }
                    }
                    data.truncate(done);
                    TreeNode::File(data)
                };
                if out.insert(path.clone(), seen).is_some() {
                    return Err(format!("{path}: listed twice"));
                }
            }
            Ok(())
        }
        let mut t = Tree::new();
        walk(self.vol(), &self.vol().root(), "", &mut t)?;
        Ok(t)
    }

    fn compare_live(&self) -> Result<(), String> {
        compare_trees(&self.model.tree(), &self.live_tree()?)
    }

    /// Every operation, then unmount and the independent readers.
    fn run(&mut self, ops: &[Op], tell: &Sender<Progress>) -> Result<(), String> {
        self.mount()?;
        for (i, op) in ops.iter().enumerate() {
            self.step(i, op, tell)?;
        }
        let _ = tell.send(Progress::Start(
            ops.len(),
            "unmount; fsck.fat -n, mtools, fatfs, fatcache".to_owned(),
        ));
        self.unmount()?;
        let _ = tell.send(Progress::Done(
            "     unmount; fsck.fat -n (strict), mtools, fatfs, fatcache read the image".to_owned(),
        ));
        check_trees(&self.img, &self.model.tree(), FsckMode::Strict)
            .map_err(|e| format!("after the final unmount, the readers disagree: {e}"))
    }
}

/// The text of a caught panic.
fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "(no message)".to_owned())
}

/// Runs one case on a fresh image of `layout`, on a worker thread watched by this one: an
/// operation that does not return within [`OP_TIMEOUT`] is a hang (the worker is left blocked).
/// The error is the whole report.
fn run_case(layout: Layout, case: &Case, watch: &Arc<Watch>) -> Result<(), String> {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = TempDir::new(TEMP, &format!("fat{}-{n}", layout.fat));
    let img = dir.0.join("image.img");
    mkfs_fat(
        &img,
        layout.fat,
        layout.kib,
        layout.sectors_per_cluster,
        "PROP",
    )?;
    let opts = MountOptions {
        sync: case.sync,
        cache_frames: if case.small_cache { 64 } else { 1024 },
        on_bug: OnBug::Panic,
        ..MountOptions::default()
    };
    check_type(&img, &opts, layout)?;
    let options = format!("sync={} small_cache={}", case.sync, case.small_cache);
    let mut h = Harness {
        img,
        opts,
        vol: None,
        model: Model::new(),
        prefix: vec![options.clone()],
        watch: Arc::clone(watch),
    };
    let (tell, hear) = channel();
    let ops = case.ops.clone();
    std::thread::Builder::new()
        .name(format!("prop-fat{}-{n}", layout.fat))
        .spawn(move || {
            let r = catch_unwind(AssertUnwindSafe(|| h.run(&ops, &tell)));
            let r = r.unwrap_or_else(|p| Err(format!("panicked: {}", panic_text(&*p))));
            let _ = tell.send(Progress::End(r));
        })
        .map_err(|e| format!("spawn: {e}"))?;
    let mut trace = Vec::new();
    let mut prefix = vec![options];
    let mut current = None;
    let mut started = Instant::now();
    let result = loop {
        // The final readers run external tools: their own timeout is longer.
        let wait = if current.is_some() {
            OP_TIMEOUT
        } else {
            END_TIMEOUT
        };
        match hear.recv_timeout(wait) {
            Ok(Progress::Start(i, what)) => {
                prefix.push(what.clone());
                current = Some((i, what));
                started = Instant::now();
            }
            Ok(Progress::Done(line)) => {
                let took = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                watch.slowest_us.fetch_max(took, Ordering::Relaxed);
                trace.push(line);
                current = None;
            }
            Ok(Progress::End(r)) => break r,
            Err(RecvTimeoutError::Timeout) => {
                let Some((i, what)) = current else {
                    break Err(format!("no progress for {END_TIMEOUT:?}"));
                };
                watch.hangs.lock().expect("hangs").insert(prefix);
                break Err(hang_message(i, &what));
            }
            Err(RecvTimeoutError::Disconnected) => break Err("the worker vanished".to_owned()),
        }
    };
    result.map_err(|e| {
        format!(
            "FAT{} sync={} small_cache={}\n{}\n=> {e}",
            layout.fat,
            case.sync,
            case.small_cache,
            trace.join("\n")
        )
    })
}

/// The image is of the type the layout promises.
fn check_type(img: &Path, opts: &MountOptions, layout: Layout) -> Result<(), String> {
    let ro = MountOptions {
        placement: fatcache::dev::Placement {
            read_only: true,
            ..opts.placement
        },
        ..opts.clone()
    };
    let vol = Volume::mount(img, ro).map_err(|e| format!("mount: {e}"))?;
    if vol.fat_type() != layout.want {
        return Err(format!(
            "mkfs made {:?}, not {:?}",
            vol.fat_type(),
            layout.want
        ));
    }
    Ok(())
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    let parsed = match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => v.parse(),
    };
    Some(parsed.unwrap_or_else(|_| panic!("{name}={v:?} is not a number")))
}

/// Whether `line` of a report is an operation's trace line (`  3. write ...`).
fn is_trace_line(line: &str) -> bool {
    let t = line.trim_start();
    let digits = t.chars().take_while(char::is_ascii_digit).count();
    digits > 0 && t[digits..].starts_with(". ")
}

/// Runs the property on `layout`: a fixed number of cases from a fixed seed.
fn check_layout(test: &str, layout: Layout) {
    if tools(test, TOOLS).is_none() {
        return;
    }
    let cases = env_u64("FATCACHE_PROP_CASES").map_or(DEFAULT_CASES, |n| n as u32);
    let seed = env_u64("FATCACHE_PROP_SEED").unwrap_or(DEFAULT_SEED) ^ u64::from(layout.fat);
    let mut seed_bytes = [0u8; 32];
    for (i, chunk) in seed_bytes.chunks_mut(8).enumerate() {
        chunk.copy_from_slice(&seed.rotate_left(i as u32 * 16).to_le_bytes());
    }
    let config = Config {
        cases,
        failure_persistence: None,
        rng_algorithm: RngAlgorithm::ChaCha,
        // Each shrink step replays a whole case (and the readers at its end), and a hanging
        // one waits OP_TIMEOUT: bounded, so a failure is reported within minutes.
        max_shrink_iters: 1000,
        max_shrink_time: 120_000,
        ..Config::default()
    };
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes);
    let mut runner = TestRunner::new_with_rng(config, rng);
    let watch = Arc::new(Watch::default());
    let start = Instant::now();
    let result = runner.run(&case(), |c| {
        run_case(layout, &c, &watch).map_err(TestCaseError::fail)
    });
    match result {
        Ok(()) => println!(
            "{test}: {cases} cases passed in {:.1} s (seed {seed:#x}); slowest operation {} ms",
            start.elapsed().as_secs_f64(),
            watch.slowest_us.load(Ordering::Relaxed) / 1000
        ),
        Err(TestError::Fail(reason, mut minimal)) => {
            // The operations after the failing one never ran: the report leaves them out.
            let ran = reason
                .message()
                .lines()
                .filter(|l| is_trace_line(l))
                .count()
                + 1;
            minimal.ops.truncate(ran);
            panic!(
                "{test}: the volume disagrees with the model (seed {seed:#x}).\n\
                 Minimal failing case, as the model resolved it, each op with the volume's \
                 answer:\n{reason}\n\nAs generated (up to the failing op):\n{minimal:?}"
            )
        }
        Err(TestError::Abort(reason)) => panic!("{test}: aborted: {reason}"),
    }
}

#[test]
fn volume_matches_the_model_on_fat12() {
    check_layout("volume_matches_the_model_on_fat12", FAT12);
}

#[test]
fn volume_matches_the_model_on_fat16() {
    check_layout("volume_matches_the_model_on_fat16", FAT16);
}

#[test]
fn volume_matches_the_model_on_fat32() {
    check_layout("volume_matches_the_model_on_fat32", FAT32);
}
