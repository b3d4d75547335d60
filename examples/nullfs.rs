//! nullfs: a FUSE filesystem that stores nothing, the ceiling of any FUSE filesystem on this
//! machine, for `benches/mount.sh`.
//!
//! ```sh
//! cargo build --release --example nullfs
//! target/release/examples/nullfs /mnt/null [--direct-io] [--threads N] [--max-files N] &
//! umount /mnt/null        # or SIGINT/SIGTERM to the daemon
//! ```
//!
//! Names and attributes are real (a tree of directories and files, each file a size only);
//! writes are counted and dropped, reads return zeros up to the size. It is mounted the way
//! `fatcache mount` mounts: the same fuser version, worker threads (`--threads`, default 4 as
//! fatcache's `threads=`), one cloned /dev/fuse descriptor per thread, 1 MiB max_write and
//! max_readahead, a 1 s entry and attribute TTL, `default_permissions`. `--direct-io` opens
//! files FOPEN_DIRECT_IO | FOPEN_PARALLEL_DIRECT_WRITES, as fatcache's `cache=direct`; without
//! it the kernel caches pages, as `cache=kernel`, with the 512 KiB readahead fatcache sets
//! there (`--read-ahead-kb`). So the time fatcache spends above nullfs is
//! fatcache's own, not FUSE's.
//!
//! With `--store FILE` it keeps the bytes, in FILE (created, or truncated to empty): file
//! `ino`'s byte `n` at FILE offset `ino * 2^32 + n` (4 GiB per file, FAT's limit; the file is
//! sparse), written with one pwrite per request and read with one pread. That is the ceiling of
//! a FUSE filesystem that must put its data on the same device fatcache writes its image to
//! (`/dev/shm` in the bench): FUSE plus the device, with no cache, no allocation and no
//! metadata of its own.
//!
//! It shares no code with fatcache on purpose: whatever it measures is FUSE and the kernel.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use clap::Parser;
use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    KernelConfig, LockOwner, MountOption, OpenFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow,
    WriteFlags,
};
use parking_lot::RwLock;

/// The attribute and entry TTL, fatcache's.
const TTL: Duration = Duration::from_secs(1);

/// Largest write and readahead request, fatcache's.
const MAX_IO: u32 = 1 << 20;

/// The root directory's inode number, as FUSE wants it.
const ROOT: u64 = 1;

/// Directory cookies: 1 and 2 are "." and "..", children start after them.
const FIRST_COOKIE: u64 = 3;

/// Command line.
#[derive(Parser, Debug)]
#[command(about = "A FUSE filesystem that stores nothing: the FUSE ceiling for benches")]
struct Args {
    /// Where to mount.
    mountpoint: PathBuf,
    /// Open files with direct I/O (as fatcache cache=direct); default: kernel page cache.
    #[arg(long)]
    direct_io: bool,
    /// FUSE worker threads, each with its own cloned /dev/fuse descriptor.
    #[arg(long, default_value_t = 4)]
    threads: usize,
    /// Most files and directories the filesystem holds; creates beyond it get ENOSPC.
    #[arg(long, default_value_t = 10_000_000)]
    max_files: usize,
    /// Keep file data in this file (created or truncated), one 4 GiB region per inode.
    #[arg(long)]
    store: Option<PathBuf>,
    /// The kernel's readahead on the mount in KiB (its bdi's read_ahead_kb, root only);
    /// default 512 without --direct-io, as fatcache sets for cache=kernel, else untouched.
    #[arg(long)]
    read_ahead_kb: Option<u32>,
}

/// Bytes of the store reserved for each inode (its region starts at `ino << STORE_SHIFT`).
const STORE_SHIFT: u32 = 32;

thread_local! {
    /// Each worker's read buffer, as fatcache's read handler keeps one per worker.
    static READ_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A directory's entries, readable from a stable cookie while entries come and go.
#[derive(Debug, Default)]
struct Dir {
    parent: u64,
    by_name: HashMap<OsString, (u64, u64)>,
    by_cookie: BTreeMap<u64, (OsString, u64)>,
    next_cookie: u64,
    subdirs: u32,
}

/// One file or directory.
#[derive(Debug)]
struct Node {
    /// Only the size of a file; an atomic so reads and writes share the table lock.
    size: AtomicU64,
    perm: u16,
    uid: u32,
    gid: u32,
    atime: SystemTime,
    mtime: SystemTime,
    ctime: SystemTime,
    /// 0 once unlinked; the node goes at the last forget.
    nlink: u32,
    lookups: u64,
    dir: Option<Dir>,
}

impl Node {
    fn new(perm: u16, uid: u32, gid: u32, dir: Option<Dir>) -> Node {
        let now = SystemTime::now();
        Node {
            size: AtomicU64::new(0),
            perm,
            uid,
            gid,
            atime: now,
            mtime: now,
            ctime: now,
            nlink: 1,
            lookups: 0,
            dir,
        }
    }

    fn attr(&self, ino: u64) -> FileAttr {
        let (kind, nlink, size) = match &self.dir {
            Some(d) => (FileType::Directory, 2 + d.subdirs, 4096),
            None => (
                FileType::RegularFile,
                self.nlink,
                self.size.load(Ordering::Relaxed),
            ),
        };
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: self.atime,
            mtime: self.mtime,
            ctime: self.ctime,
            crtime: self.ctime,
            kind,
            perm: self.perm,
            nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }
}

/// Every node by inode number.
#[derive(Debug)]
struct Table {
    nodes: HashMap<u64, Node>,
    next_ino: u64,
}

impl Table {
    fn dir(&self, ino: u64) -> Result<&Dir, Errno> {
        let node = self.nodes.get(&ino).ok_or(Errno::ENOENT)?;
        node.dir.as_ref().ok_or(Errno::ENOTDIR)
    }

    fn dir_mut(&mut self, ino: u64) -> Result<&mut Dir, Errno> {
        let node = self.nodes.get_mut(&ino).ok_or(Errno::ENOENT)?;
        node.dir.as_mut().ok_or(Errno::ENOTDIR)
    }

    /// The child `name` of `parent`, counted as one more lookup.
    fn lookup(&mut self, parent: u64, name: &OsStr) -> Result<FileAttr, Errno> {
        let ino = self.dir(parent)?.by_name.get(name).ok_or(Errno::ENOENT)?.0;
        let node = self.nodes.get_mut(&ino).ok_or(Errno::ENOENT)?;
        node.lookups += 1;
        Ok(node.attr(ino))
    }

    /// Adds `node` as `name` in `parent` and counts the lookup the reply gives the kernel.
    fn insert(
        &mut self,
        parent: u64,
        name: &OsStr,
        mut node: Node,
        max: usize,
    ) -> Result<FileAttr, Errno> {
        if self.nodes.len() >= max {
            return Err(Errno::ENOSPC);
        }
        let ino = self.next_ino;
        let is_dir = node.dir.is_some();
        let dir = self.dir_mut(parent)?;
        if dir.by_name.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        let cookie = dir.next_cookie;
        dir.next_cookie += 1;
        dir.by_name.insert(name.to_owned(), (ino, cookie));
        dir.by_cookie.insert(cookie, (name.to_owned(), ino));
        dir.subdirs += u32::from(is_dir);
        self.next_ino += 1;
        node.lookups = 1;
        let attr = node.attr(ino);
        self.nodes.insert(ino, node);
        Ok(attr)
    }

    /// Removes `name` from `parent`; `want_dir` says which kind the caller may remove.
    fn remove(&mut self, parent: u64, name: &OsStr, want_dir: bool) -> Result<(), Errno> {
        let (ino, cookie) = *self.dir(parent)?.by_name.get(name).ok_or(Errno::ENOENT)?;
        let node = self.nodes.get_mut(&ino).ok_or(Errno::ENOENT)?;
        match (&node.dir, want_dir) {
            (Some(d), true) if !d.by_name.is_empty() => return Err(Errno::ENOTEMPTY),
            (Some(_), false) => return Err(Errno::EISDIR),
            (None, true) => return Err(Errno::ENOTDIR),
            _ => {}
        }
        node.nlink = 0;
        let gone = node.lookups == 0;
        let dir = self.dir_mut(parent)?;
        dir.by_name.remove(name);
        dir.by_cookie.remove(&cookie);
        dir.subdirs -= u32::from(want_dir);
        if gone {
            self.nodes.remove(&ino);
        }
        Ok(())
    }

    /// The kernel dropped `n` lookups of `ino`; an unlinked node goes with the last one.
    fn forget(&mut self, ino: u64, n: u64) {
        let Some(node) = self.nodes.get_mut(&ino) else {
            return;
        };
        node.lookups = node.lookups.saturating_sub(n);
        if node.lookups == 0 && node.nlink == 0 && ino != ROOT {
            self.nodes.remove(&ino);
        }
    }
}

/// The filesystem: a table of nodes and the byte counters.
#[derive(Debug)]
struct NullFs {
    table: RwLock<Table>,
    open_flags: FopenFlags,
    max_files: usize,
    written: AtomicU64,
    read: AtomicU64,
    /// What every read returns a slice of.
    zeros: Vec<u8>,
    /// Where data is kept with `--store`.
    store: Option<std::fs::File>,
}

impl NullFs {
    fn new(args: &Args) -> std::io::Result<NullFs> {
        let store = match &args.store {
            Some(path) => Some(
                std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(path)?,
            ),
            None => None,
        };
        let root = Node::new(
            0o755,
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
            Some(Dir {
                parent: ROOT,
                next_cookie: FIRST_COOKIE,
                ..Dir::default()
            }),
        );
        let open_flags = if args.direct_io {
            FopenFlags::FOPEN_DIRECT_IO | FopenFlags::FOPEN_PARALLEL_DIRECT_WRITES
        } else {
            FopenFlags::empty()
        };
        Ok(NullFs {
            table: RwLock::new(Table {
                nodes: HashMap::from([(ROOT, root)]),
                next_ino: ROOT + 1,
            }),
            open_flags,
            max_files: args.max_files,
            written: AtomicU64::new(0),
            read: AtomicU64::new(0),
            zeros: vec![0; MAX_IO as usize],
            store,
        })
    }

    /// Where byte `offset` of inode `ino` lives in the store; EFBIG past a file's region.
    fn store_at(ino: u64, offset: u64, len: u64) -> Result<u64, Errno> {
        if offset.saturating_add(len) > 1 << STORE_SHIFT {
            return Err(Errno::EFBIG);
        }
        Ok((ino << STORE_SHIFT) + offset)
    }

    /// Forget the stored bytes of `ino` from `from` to `to` (a shrink or a removal), so a
    /// later extension reads zeros as it must.
    fn store_discard(&self, ino: u64, from: u64, to: u64) {
        let Some(f) = &self.store else { return };
        if to <= from {
            return;
        }
        let (Ok(at), Ok(len)) = (
            i64::try_from((ino << STORE_SHIFT) + from),
            i64::try_from(to - from),
        ) else {
            return;
        };
        let mode = nix::fcntl::FallocateFlags::FALLOC_FL_PUNCH_HOLE
            | nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE;
        if let Err(e) = nix::fcntl::fallocate(f, mode, at, len) {
            log::warn!("nullfs: cannot discard bytes of inode {ino}: {e}");
        }
    }

    fn attr(&self, ino: INodeNo) -> Result<FileAttr, Errno> {
        let table = self.table.read();
        Ok(table.nodes.get(&ino.0).ok_or(Errno::ENOENT)?.attr(ino.0))
    }

    fn new_node(req: &Request, mode: u32, umask: u32, dir: Option<Dir>) -> Node {
        let perm = u16::try_from(mode & !umask & 0o7777).unwrap_or(0o644);
        Node::new(perm, req.uid(), req.gid(), dir)
    }

    fn reply_entry(r: Result<FileAttr, Errno>, reply: ReplyEntry) {
        match r {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }
}

fn time_of(t: TimeOrNow) -> SystemTime {
    match t {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
    }
}

impl Filesystem for NullFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        if let Err(max) = config.set_max_write(MAX_IO) {
            log::debug!("nullfs: max_write limited to {max}");
        }
        if let Err(max) = config.set_max_readahead(MAX_IO) {
            log::debug!("nullfs: max_readahead limited to {max}");
        }
        Ok(())
    }

    fn destroy(&mut self) {
        let (w, r) = (
            self.written.load(Ordering::Relaxed),
            self.read.load(Ordering::Relaxed),
        );
        if self.store.is_some() {
            eprintln!("nullfs: {w} bytes written to the store, {r} bytes read from it");
        } else {
            eprintln!("nullfs: {w} bytes written and dropped, {r} bytes of zeros read");
        }
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        Self::reply_entry(self.table.write().lookup(parent.0, name), reply);
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.table.write().forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.attr(ino) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut table = self.table.write();
        let Some(node) = table.nodes.get_mut(&ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        if let Some(size) = size {
            if node.dir.is_some() {
                return reply.error(Errno::EISDIR);
            }
            let old = node.size.swap(size, Ordering::Relaxed);
            node.mtime = SystemTime::now();
            self.store_discard(ino.0, size, old);
        }
        if let Some(mode) = mode {
            node.perm = u16::try_from(mode & 0o7777).unwrap_or(node.perm);
        }
        node.uid = uid.unwrap_or(node.uid);
        node.gid = gid.unwrap_or(node.gid);
        node.atime = atime.map_or(node.atime, time_of);
        node.mtime = mtime.map_or(node.mtime, time_of);
        node.ctime = SystemTime::now();
        reply.attr(&TTL, &node.attr(ino.0));
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let dir = Dir {
            parent: parent.0,
            next_cookie: FIRST_COOKIE,
            ..Dir::default()
        };
        let node = Self::new_node(req, mode, umask, Some(dir));
        let r = self
            .table
            .write()
            .insert(parent.0, name, node, self.max_files);
        Self::reply_entry(r, reply);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.table.write().remove(parent.0, name, false) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.table.write().remove(parent.0, name, true) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.attr(ino) {
            Ok(a) if a.kind == FileType::Directory => reply.error(Errno::EISDIR),
            Ok(_) => reply.opened(FileHandle(0), self.open_flags),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let end = {
            let table = self.table.read();
            match table.nodes.get(&ino.0) {
                Some(node) => node.size.load(Ordering::Relaxed),
                None => return reply.error(Errno::ENOENT),
            }
        };
        let want = u64::from(size.min(MAX_IO));
        let n = end.saturating_sub(offset).min(want);
        self.read.fetch_add(n, Ordering::Relaxed);
        // n <= MAX_IO, the length of zeros.
        let n = usize::try_from(n).unwrap_or(0);
        let Some(store) = &self.store else {
            return reply.data(&self.zeros[..n]);
        };
        let at = match Self::store_at(ino.0, offset, n as u64) {
            Ok(at) => at,
            Err(e) => return reply.error(e),
        };
        READ_BUF.with_borrow_mut(|buf| {
            buf.resize(n, 0);
            match std::os::unix::fs::FileExt::read_exact_at(store, &mut buf[..n], at) {
                Ok(()) => reply.data(&buf[..n]),
                // A sparse tail the store file does not reach yet: zeros, as a file's hole.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    let got =
                        std::os::unix::fs::FileExt::read_at(store, &mut buf[..n], at).unwrap_or(0);
                    buf[got..n].fill(0);
                    reply.data(&buf[..n]);
                }
                Err(e) => reply.error(Errno::from_i32(e.raw_os_error().unwrap_or(libc_eio()))),
            }
        });
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let len = data.len() as u64;
        if let Some(store) = &self.store {
            let at = match Self::store_at(ino.0, offset, len) {
                Ok(at) => at,
                Err(e) => return reply.error(e),
            };
            if let Err(e) = std::os::unix::fs::FileExt::write_all_at(store, data, at) {
                return reply.error(Errno::from_i32(e.raw_os_error().unwrap_or(libc_eio())));
            }
        }
        {
            let table = self.table.read();
            match table.nodes.get(&ino.0) {
                Some(node) => node.size.fetch_max(offset + len, Ordering::Relaxed),
                None => return reply.error(Errno::ENOENT),
            };
        }
        self.written.fetch_add(len, Ordering::Relaxed);
        reply.written(u32::try_from(len).unwrap_or(u32::MAX));
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // What fatcache's fsync ends with on its image: the device's flush.
        match self.store.as_ref().map(std::fs::File::sync_data) {
            Some(Err(e)) => reply.error(Errno::from_i32(e.raw_os_error().unwrap_or(libc_eio()))),
            _ => reply.ok(),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let table = self.table.read();
        let dir = match table.dir(ino.0) {
            Ok(d) => d,
            Err(e) => return reply.error(e),
        };
        let dots = [(1, ino.0, "."), (2, dir.parent, "..")];
        for (cookie, n, name) in dots.into_iter().filter(|d| d.0 > offset) {
            if reply.add(INodeNo(n), cookie, FileType::Directory, name) {
                return reply.ok();
            }
        }
        let from = offset.max(FIRST_COOKIE - 1) + 1;
        for (&cookie, (name, child)) in dir.by_cookie.range(from..) {
            let kind = match table.nodes.get(child).map(|c| c.dir.is_some()) {
                Some(true) => FileType::Directory,
                _ => FileType::RegularFile,
            };
            if reply.add(INodeNo(*child), cookie, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // What fatcache's fsync ends with on its image: the device's flush.
        match self.store.as_ref().map(std::fs::File::sync_data) {
            Some(Err(e)) => reply.error(Errno::from_i32(e.raw_os_error().unwrap_or(libc_eio()))),
            _ => reply.ok(),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let files = self.max_files as u64;
        let used = self.table.read().nodes.len() as u64;
        // A terabyte, all free: nothing is ever stored.
        let blocks = 1 << 28;
        reply.statfs(
            blocks,
            blocks,
            blocks,
            files,
            files.saturating_sub(used),
            4096,
            255,
            4096,
        );
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let node = Self::new_node(req, mode, umask, None);
        let r = self
            .table
            .write()
            .insert(parent.0, name, node, self.max_files);
        match r {
            Ok(attr) => reply.created(&TTL, &attr, Generation(0), FileHandle(0), self.open_flags),
            Err(e) => reply.error(e),
        }
    }
}

/// The readahead a cached mount gets unless told otherwise: what `fatcache mount` sets with
/// `cache=kernel`, so the ceiling is mounted as the filesystem it bounds.
const DEFAULT_READ_AHEAD_KB: u32 = 512;

/// Sets the mount's readahead once the kernel has taken the INIT reply (which lowers it to the
/// max_readahead of the reply, never above the kernel's 128 KiB offer): a stat of the mount
/// point waits for that. On a thread, so the main loop keeps watching for signals.
fn set_read_ahead(mountpoint: PathBuf, kb: u32) {
    std::thread::spawn(move || {
        use std::os::unix::fs::MetadataExt;
        let dev = match std::fs::metadata(&mountpoint) {
            Ok(m) => m.dev(),
            Err(e) => return eprintln!("nullfs: read_ahead_kb not set: {e}"),
        };
        let knob = format!(
            "/sys/class/bdi/{}:{}/read_ahead_kb",
            libc::major(dev),
            libc::minor(dev)
        );
        if let Err(e) = std::fs::write(&knob, format!("{kb}\n")) {
            eprintln!("nullfs: read_ahead_kb not set: {knob}: {e}");
        }
    });
}

/// EIO, for an I/O error without an errno.
fn libc_eio() -> i32 {
    nix::errno::Errno::EIO as i32
}

fn main() -> ExitCode {
    env_logger::init();
    let args = Args::parse();
    let fs = match NullFs::new(&args) {
        Ok(fs) => fs,
        Err(e) => {
            eprintln!("nullfs: cannot open the store: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName("nullfs".to_owned()),
        MountOption::Subtype("nullfs".to_owned()),
        MountOption::DefaultPermissions,
    ];
    config.n_threads = Some(args.threads.max(1));
    config.clone_fd = true;
    let mut signals = match signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("nullfs: cannot watch for signals: {e}");
            return ExitCode::FAILURE;
        }
    };
    let session = match fuser::spawn_mount(fs, &args.mountpoint, &config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("nullfs: cannot mount on {}: {e}", args.mountpoint.display());
            return ExitCode::FAILURE;
        }
    };
    let read_ahead = args
        .read_ahead_kb
        .or((!args.direct_io).then_some(DEFAULT_READ_AHEAD_KB));
    if let Some(kb) = read_ahead {
        set_read_ahead(args.mountpoint.clone(), kb);
    }
    // Until an unmount from outside ends the session, or a signal asks us to end it.
    let ended = loop {
        if signals.pending().next().is_some() {
            break session.umount_and_join();
        }
        if session.guard.is_finished() {
            break session.join();
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    match ended {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nullfs: the FUSE session ended with an error: {e}");
            ExitCode::FAILURE
        }
    }
}
