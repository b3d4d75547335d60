//! The `fuser` filesystem: each request becomes a [`Volume`] call, each result a reply.
//!
//! Inode numbers are the volume's node numbers; the root is 1, as FUSE wants. A node the kernel
//! knows (it has seen it in a lookup, create, mkdir or readdirplus reply) is kept here with its
//! lookup count and released at the matching forget, so an unlinked file that is still open
//! keeps its clusters until the kernel lets it go, as on a kernel vfat mount.
//!
//! Errors map through [`FsError::errno`]; what vfat cannot do gets the errno a kernel vfat
//! mount gives: hard links and symlinks EPERM, device nodes and FIFOs EPERM, chown to another
//! owner EPERM (success under `quiet`), setxattr EOPNOTSUPP. rename takes RENAME_NOREPLACE and
//! RENAME_EXCHANGE, as vfat does since v6.0; any other flag is EINVAL.
//!
//! Virtual xattrs on the root: `user.fatcache.era`, `user.fatcache.stats` (JSON) and
//! `user.fatcache.last_bug`; FAT has no xattrs of its own, so every other name is ENODATA.

use std::ffi::OsStr;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs,
    ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use crate::error::FsError;
use crate::fat::dirent::{ATTR_RO, DirEntry};
use crate::fat::time::{fat_date_to_unix, fat_to_unix};
use crate::fat::volume::{DirItem, Node, ROOT_INO, Volume};
use crate::fuse::options::{CacheMode, FuseOptions};
use crate::fuse::perm::{Caller, Owner, TimeChange, may_set_times};
use crate::sync::{Arc, Mutex, unchecked};

/// How long the kernel may cache names and attributes. Every change goes through us, so this
/// only bounds how stale a listing of another mount of the same image could look.
const TTL: Duration = Duration::from_secs(1);

/// Largest write request the kernel sends (FUSE's max_write), and so the reads' and readahead's.
///
/// Every FUSE worker keeps touched as much of its request buffer as the largest request it
/// served, and every read in flight holds a reply buffer of this size: at 1 MiB that was 4 + 2
/// MiB of the daemon's resident set at threads=4 (benches/mount.sh: peak RSS 101.5 -> 98.1 MiB
/// at 512 KiB). Halving it cost no measurable CPU (daemon ticks for a 512 MiB dd write + read,
/// three alternated runs: 101/69/84 + 42/42/53 at 1 MiB, 74/76/68 + 36/47/36 at 512 KiB): the
/// per-request cost is small against copying half a MiB.
pub(crate) const MAX_WRITE: u32 = 1 << 19;

/// The names of the virtual xattrs on the root.
const XATTRS: [&str; 3] = [
    "user.fatcache.era",
    "user.fatcache.stats",
    "user.fatcache.last_bug",
];

/// A FAT volume served to the kernel through FUSE.
#[derive(Debug)]
pub struct FatFuse {
    vol: Arc<Volume>,
    opts: FuseOptions,
    /// Nodes the kernel holds. Fx, not SipHash: the keys are our own inode numbers.
    known: Mutex<rustc_hash::FxHashMap<u64, Known>>,
    /// getxattr requests answered (`"getxattr"` in the stats): the kernel asks one before
    /// every buffered write unless FUSE_HANDLE_KILLPRIV_V2 is in force (see `init`).
    getxattrs: unchecked::AtomicU64,
}

/// A node the kernel holds: by lookups (until forget) and by open files (until release).
///
/// 24 bytes, so an entry with its key is 32: the kernel may hold every file a mount knows.
/// `lookups` stays 64-bit as FUSE's forget counts are; open files are bounded by the
/// kernel's file table, far below 2^32.
#[derive(Debug)]
struct Known {
    node: Arc<Node>,
    lookups: u64,
    opens: u32,
}

/// The errno of a failure, for a reply.
fn errno(e: &FsError) -> Errno {
    Errno::from_i32(e.errno())
}

/// Answers a request that returns nothing: ok, or the failure's errno.
fn reply_empty(r: Result<(), FsError>, reply: ReplyEmpty) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(&e)),
    }
}

/// A Unix time from a FAT (seconds, nanoseconds) pair; before the epoch clamps to it.
fn system_time((secs, nanos): (i64, u32)) -> SystemTime {
    match u64::try_from(secs) {
        Ok(s) => UNIX_EPOCH + Duration::new(s, nanos),
        Err(_) => UNIX_EPOCH,
    }
}

impl FatFuse {
    /// Serves `vol` with the mount options `opts`.
    pub fn new(vol: Arc<Volume>, opts: FuseOptions) -> FatFuse {
        FatFuse {
            vol,
            opts,
            known: Mutex::new(rustc_hash::FxHashMap::default()),
            getxattrs: unchecked::AtomicU64::new(0),
        }
    }

    /// The volume served.
    pub fn volume(&self) -> &Arc<Volume> {
        &self.vol
    }

    /// The node of `ino`: one the kernel holds, else one the volume still has.
    fn node(&self, ino: INodeNo) -> Result<Arc<Node>, FsError> {
        if ino.0 == ROOT_INO {
            return Ok(self.vol.root());
        }
        if let Some(k) = self.known.lock().get(&ino.0) {
            return Ok(Arc::clone(&k.node));
        }
        // ESTALE: the kernel asked for an inode it was told about and then forgot.
        self.vol.node(ino.0).ok_or(FsError::NotFound)
    }

    /// Records one more kernel reference to `node`: a lookup, or with `open` an open file.
    fn remember(&self, node: &Arc<Node>, open: bool) {
        if node.ino() == ROOT_INO {
            return;
        }
        let mut known = self.known.lock();
        let k = known.entry(node.ino()).or_insert_with(|| Known {
            node: Arc::clone(node),
            lookups: 0,
            opens: 0,
        });
        if open {
            k.opens = k.opens.saturating_add(1);
        } else {
            k.lookups += 1;
        }
    }

    /// Lets go of the node of `ino` when nothing keeps it any more: no open file, and no
    /// lookup unless the name is gone (`unlinked`: the kernel forgets such an inode later,
    /// but vfat frees a closed, unlinked file inside the unlink).
    fn release_if_unused(&self, ino: u64, unlinked: bool) {
        let mut known = self.known.lock();
        let unused = known
            .get(&ino)
            .is_some_and(|k| k.opens == 0 && (unlinked || k.lookups == 0));
        if unused {
            // Dropped outside the lock: the last drop of an unlinked file frees its clusters.
            let gone = known.remove(&ino);
            drop(known);
            drop(gone);
        }
    }

    /// The inode number `name` in `parent` has now, if any (before an unlink or rename).
    fn ino_of(&self, parent: INodeNo, name: &OsStr) -> Option<u64> {
        let dir = self.node(parent).ok()?;
        let node = self.vol.lookup(&dir, name.to_str()?).ok()?;
        Some(node.ino())
    }

    /// The attributes of `node`, as a vfat mount shows them.
    ///
    /// Models: fs/fat/inode.c fat_fill_inode() / fat_getattr() (v5.10): modes from the masks
    /// (a read-only attribute takes the write bits away), owner from uid=/gid=, times from
    /// the entry in the mount's time zone, blocks in whole clusters.
    fn attr(&self, node: &Node) -> FileAttr {
        let e: DirEntry = node.entry();
        let tz = self.vol.tz_offset_minutes();
        let cluster = u64::from(self.vol.statfs().cluster_size);
        let kind = if node.is_dir() {
            FileType::Directory
        } else {
            FileType::RegularFile
        };
        let perm = Self::perm(&self.opts, node.is_dir(), e.attr);
        let size = node.size();
        let mtime = system_time(fat_to_unix(e.modify_date, e.modify_time, 0, tz));
        let atime = system_time((fat_date_to_unix(e.access_date, tz), 0));
        let crtime = system_time(fat_to_unix(
            e.create_date,
            e.create_time,
            e.create_centis,
            tz,
        ));
        let (mtime, atime, crtime) = if node.ino() == ROOT_INO {
            // The root has no entry: the kernel shows the epoch (0 in DOS terms) too.
            (UNIX_EPOCH, UNIX_EPOCH, UNIX_EPOCH)
        } else {
            (mtime, atime, crtime)
        };
        FileAttr {
            ino: INodeNo(node.ino()),
            size,
            blocks: size.div_ceil(cluster) * cluster / 512,
            atime,
            mtime,
            ctime: mtime,
            crtime,
            kind,
            perm: u16::try_from(perm).unwrap_or(0o755),
            // A directory's count is exact (2 + subdirectories), as on vfat: find(1) may rely
            // on it to stop looking for subdirectories.
            nlink: node.nlink(),
            uid: self.opts.uid,
            gid: self.opts.gid,
            rdev: 0,
            blksize: u32::try_from(cluster).unwrap_or(4096),
            flags: 0,
        }
    }

    /// The permission bits of a directory or file with attributes `attr`: from the masks, a
    /// read-only attribute taking a file's write bits away (fat_make_mode).
    fn perm(opts: &FuseOptions, is_dir: bool, attr: u8) -> u32 {
        if is_dir {
            0o777 & !opts.dmask
        } else if attr & ATTR_RO != 0 {
            0o777 & !opts.fmask & !0o222
        } else {
            0o777 & !opts.fmask
        }
    }

    /// Checks that the caller of `req` may make `change` to the times of `node`: `Ok(false)`
    /// when the request must then change nothing and succeed (`quiet`).
    ///
    /// Models: fs/fat/file.c fat_setattr() (v5.10); the rule is in `fuse::perm`.
    fn times_allowed(
        &self,
        req: &Request,
        node: &Node,
        change: TimeChange,
    ) -> Result<bool, FsError> {
        // The common case, the owner, needs no look at the caller's process.
        if change == TimeChange::None || req.uid() == self.opts.uid {
            return Ok(true);
        }
        let owner = Owner {
            uid: self.opts.uid,
            gid: self.opts.gid,
            perm: Self::perm(&self.opts, node.is_dir(), node.entry().attr),
        };
        match may_set_times(
            &Caller::of(req),
            owner,
            self.opts.allow_utime_bits(),
            change,
        ) {
            Ok(()) => Ok(true),
            Err(FsError::NotPermitted) if self.opts.quiet => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Replies to an entry-making request with `node` and counts the kernel's reference.
    fn reply_entry(&self, node: Result<Arc<Node>, FsError>, reply: ReplyEntry) {
        match node {
            Ok(node) => {
                let attr = self.attr(&node);
                self.remember(&node, false);
                reply.entry(&TTL, &attr, Generation(0));
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    /// The flags an open file gets: direct I/O unless `cache=kernel`.
    fn open_flags(&self) -> FopenFlags {
        match self.opts.cache {
            CacheMode::Direct => {
                // Our write path takes the inode lock, so the kernel may send writes to one
                // file in parallel.
                FopenFlags::FOPEN_DIRECT_IO | FopenFlags::FOPEN_PARALLEL_DIRECT_WRITES
            }
            CacheMode::Kernel => FopenFlags::empty(),
        }
    }

    /// The value of virtual xattr `name` on the root.
    fn xattr(&self, name: &str) -> Option<Vec<u8>> {
        let cache = self.vol.cache();
        match name {
            "user.fatcache.era" => Some(cache.era().name().as_bytes().to_vec()),
            "user.fatcache.last_bug" => {
                Some(cache.bug().last_report().unwrap_or_default().into_bytes())
            }
            "user.fatcache.stats" => Some(
                // Relaxed: a statistic.
                stats_json(
                    self.vol.as_ref(),
                    self.getxattrs.load(unchecked::Ordering::Relaxed),
                )
                .into_bytes(),
            ),
            _ => None,
        }
    }

    /// Answers a getxattr/listxattr `size` probe or request with `value`.
    fn reply_xattr(value: &[u8], size: u32, reply: ReplyXattr) {
        let len = u32::try_from(value.len()).unwrap_or(u32::MAX);
        if size == 0 {
            reply.size(len);
        } else if len > size {
            reply.error(Errno::from_i32(libc::ERANGE));
        } else {
            reply.data(value);
        }
    }
}

/// The page-cache and volume counters, and the getxattr requests answered, as one JSON object.
fn stats_json(vol: &Volume, getxattrs: u64) -> String {
    let s = vol.cache().stats();
    let f = vol.flusher_stats();
    let io = vol.queue().bytes();
    let fs = vol.statfs();
    let hits: Vec<String> = vol
        .cache()
        .bug()
        .hits()
        .into_iter()
        .map(|(site, n)| format!("{:?}:{n}", site))
        .collect();
    format!(
        concat!(
            "{{\"era\":\"{}\",\"frames\":{},\"frames_free\":{},\"dirty\":{},\"writeback\":{},",
            "\"waits_locked\":{},\"waits_writeback\":{},\"wakes_locked\":{},",
            "\"wakes_writeback\":{},\"stale_wakes\":{},\"wb_starts\":{},\"wb_ends\":{},",
            "\"reclaimed\":{},\"alloc_failures\":{},\"alloc_throttled\":{},\"bad_pages\":{},",
            "\"bug_hits\":{},",
            "\"throttled\":{},\"flusher_kupdate_passes\":{},\"flusher_background_passes\":{},",
            "\"flusher_pages\":{},\"dirty_inodes\":{},\"io_completed\":{},",
            "\"io_read_bytes\":{},\"io_written_bytes\":{},",
            "\"clusters\":{},\"free_clusters\":{},\"getxattr\":{},\"bugs\":{{{}}}}}"
        ),
        s.era,
        s.frames,
        s.frames_free,
        s.nr_dirty,
        s.nr_writeback,
        s.waits_locked,
        s.waits_writeback,
        s.wakes_locked,
        s.wakes_writeback,
        s.stale_wakes,
        s.wb_starts,
        s.wb_ends,
        s.reclaimed,
        s.alloc_failures,
        s.alloc_throttled,
        s.bad_pages,
        s.bug_hits,
        s.throttled,
        f.kupdate_passes,
        f.background_passes,
        f.pages_written,
        f.dirty_inodes,
        vol.queue().completed(),
        io.0,
        io.1,
        fs.clusters,
        fs.free,
        getxattrs,
        hits.join(","),
    )
}

/// The readdir offset after `item`: 1 and 2 are after "." and "..", then the item's byte
/// offset in its directory plus 3. A slot's offset does not change while its entry lives, so
/// a listing that takes several requests resumes after the same entry however other entries
/// come and go meanwhile (an index into the list would skip or repeat entries when an earlier
/// one is removed or added between two requests), as vfat's f_pos does.
fn cookie(item: &DirItem) -> u64 {
    item.offset as u64 + 3
}

/// Items a readdir request builds at a time: about what one reply holds, so a request
/// builds few items it does not send, whatever the directory's size.
const READDIR_BATCH: usize = 64;

/// Calls `f` on each item of `dir` listed after readdir offset `offset` (see [`cookie`]), a
/// batch at a time, until `f` says the reply is full or the directory ends.
fn for_each_item_after(
    vol: &Volume,
    dir: &Node,
    offset: u64,
    f: &mut dyn FnMut(&DirItem) -> Result<bool, FsError>,
) -> Result<(), FsError> {
    // The items after `offset` are those at byte offset - 2 and later (cookie is + 3).
    let mut from = usize::try_from(offset.saturating_sub(2)).unwrap_or(usize::MAX);
    loop {
        let items = vol.read_dir_from(dir, from, READDIR_BATCH)?;
        for item in &items {
            if f(item)? {
                return Ok(());
            }
        }
        match items.last() {
            Some(last) if items.len() == READDIR_BATCH => from = last.offset + 1,
            _ => return Ok(()),
        }
    }
}

/// The inode number readdir shows for a child whose node cannot be built: from the top of
/// the range, far above the volume's counted node numbers, and different per directory
/// and slot.
fn unbuilt_ino(dir: u64, item: &DirItem) -> u64 {
    u64::MAX
        .wrapping_sub(dir.wrapping_shl(24))
        .wrapping_sub(item.offset as u64)
}

/// A name from the kernel as UTF-8; FAT names are Unicode, so anything else is EINVAL.
fn name_of(name: &OsStr) -> Result<&str, FsError> {
    name.to_str()
        .ok_or(FsError::Invalid("a FAT name must be valid UTF-8"))
}

/// Unix (seconds, nanoseconds) of a setattr time.
fn unix_of(t: TimeOrNow) -> (i64, u32) {
    let at = match t {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
    };
    match at.duration_since(UNIX_EPOCH) {
        Ok(d) => (
            i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            d.subsec_nanos(),
        ),
        Err(e) => (
            -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
            0,
        ),
    }
}

impl Filesystem for FatFuse {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Large requests: fewer round trips per byte, as a kernel block device gets.
        if let Err(max) = config.set_max_write(MAX_WRITE) {
            log::debug!("fuse: max_write limited to {max}");
        }
        if let Err(max) = config.set_max_readahead(MAX_WRITE) {
            log::debug!("fuse: max_readahead limited to {max}");
        }
        // cache=direct opens files FOPEN_DIRECT_IO, and without this flag the kernel refuses
        // them a shared writable mapping (ENODEV): sqlite's WAL (it maps the -shm file) failed
        // with "disk I/O error". With it (6.6 and later) the mapped pages live in the kernel's
        // page cache and reach us as WRITEs when the kernel writes them back; the kernel
        // writes them back before a direct read or write of their range and drops them after
        // a direct write, so read(2), write(2) and the mapping agree.
        if config
            .add_capabilities(InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP)
            .is_err()
        {
            log::debug!("fuse: the kernel does not offer FUSE_DIRECT_IO_ALLOW_MMAP");
        }
        // Without it the kernel asks for security.capability before every buffered write
        // (file_remove_privs on a superblock without SB_NOSEC): one GETXATTR round trip per
        // WRITE with cache=kernel, which cut 4 KiB random writes by a third. With it the
        // kernel sets SB_NOSEC and leaves killing privileges on write, truncate and O_TRUNC
        // to us, and FAT has none to kill: modes come from the masks and never carry suid,
        // sgid or sticky bits (`perm`), and no xattr can be set (`setxattr`), so no file ever
        // has a security.capability.
        if let Err(missing) = config.add_capabilities(InitFlags::FUSE_HANDLE_KILLPRIV_V2) {
            log::debug!("fuse: the kernel does not offer {missing:?}");
        }
        Ok(())
    }

    fn destroy(&mut self) {
        // Unmount from outside, Ctrl-C or SIGTERM all end here: write everything back and
        // clear the dirty bit.
        self.known.lock().clear();
        match self.vol.shutdown() {
            Ok(()) => log::info!("fatcache: volume written back and marked clean"),
            Err(e) => log::error!("fatcache: unmount could not write everything back: {e}"),
        }
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let node = self
            .node(parent)
            .and_then(|dir| self.vol.lookup(&dir, name_of(name)?));
        self.reply_entry(node, reply);
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        if let Some(k) = self.known.lock().get_mut(&ino.0) {
            k.lookups = k.lookups.saturating_sub(nlookup);
        }
        self.release_if_unused(ino.0, false);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.node(ino) {
            Ok(node) => reply.attr(&TTL, &self.attr(&node)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn setattr(
        &self,
        req: &Request,
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
        let r = (|| -> Result<Arc<Node>, FsError> {
            let node = self.node(ino)?;
            // Times first, as setattr_prepare() runs before fat_setattr's own checks.
            let change = TimeChange::of(atime, mtime, size.is_some());
            if !self.times_allowed(req, &node, change)? {
                return Ok(node);
            }
            // FAT has one owner for everything: a change of it is EPERM, or silently ignored
            // under `quiet`, as vfat does.
            let owner_change =
                uid.is_some_and(|u| u != self.opts.uid) || gid.is_some_and(|g| g != self.opts.gid);
            if owner_change && !self.opts.quiet {
                return Err(FsError::NotPermitted);
            }
            if let Some(size) = size {
                self.vol.set_size(&node, size)?;
            }
            if atime.is_some() || mtime.is_some() {
                self.vol
                    .set_times(&node, atime.map(unix_of), mtime.map(unix_of))?;
            }
            if let Some(mode) = mode {
                // vfat keeps only "no write bit for anyone" as the read-only attribute; for a
                // directory it keeps nothing.
                if !node.is_dir() {
                    self.vol.set_read_only_attr(&node, mode & 0o222 == 0)?;
                }
            }
            Ok(node)
        })();
        match r {
            Ok(node) => reply.attr(&TTL, &self.attr(&node)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn mknod(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        if mode & libc::S_IFMT != libc::S_IFREG {
            // FAT holds regular files and directories only.
            reply.error(Errno::from_i32(libc::EPERM));
            return;
        }
        let node = self
            .node(parent)
            .and_then(|dir| self.vol.create(&dir, name_of(name)?));
        self.reply_entry(node, reply);
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let node = self
            .node(parent)
            .and_then(|dir| self.vol.mkdir(&dir, name_of(name)?));
        self.reply_entry(node, reply);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let victim = self.ino_of(parent, name);
        let r = self
            .node(parent)
            .and_then(|dir| self.vol.unlink(&dir, name_of(name)?));
        match r {
            Ok(()) => {
                // A closed file's clusters are free when unlink returns, as on vfat.
                if let Some(ino) = victim {
                    self.release_if_unused(ino, true);
                }
                reply.ok()
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let r = self
            .node(parent)
            .and_then(|dir| self.vol.rmdir(&dir, name_of(name)?));
        reply_empty(r, reply);
    }

    fn symlink(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _link_name: &OsStr,
        _target: &Path,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::from_i32(libc::EPERM));
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        // vfat_rename2's flags (the VFS refuses NOREPLACE with EXCHANGE before vfat sees it).
        let known = RenameFlags::RENAME_NOREPLACE | RenameFlags::RENAME_EXCHANGE;
        if !(flags - known).is_empty() || flags.contains(known) {
            reply.error(Errno::from_i32(libc::EINVAL));
            return;
        }
        if flags.contains(RenameFlags::RENAME_EXCHANGE) {
            // Nothing is replaced: both nodes stay known under the inode numbers the kernel
            // has, each now at the other's name (d_exchange).
            let r = self.node(parent).and_then(|old| {
                let new = self.node(newparent)?;
                self.vol
                    .rename_exchange(&old, name_of(name)?, &new, name_of(newname)?)
            });
            reply_empty(r, reply);
            return;
        }
        let replaced = self.ino_of(newparent, newname);
        let r = (|| {
            let (old, new) = (self.node(parent)?, self.node(newparent)?);
            let noreplace = flags.contains(RenameFlags::RENAME_NOREPLACE);
            self.vol
                .rename(&old, name_of(name)?, &new, name_of(newname)?, noreplace)
        })();
        match r {
            Ok(()) => {
                // A replaced target that nobody has open is freed now, as on vfat.
                let moved = self.ino_of(newparent, newname);
                if let Some(ino) = replaced.filter(|&i| Some(i) != moved) {
                    self.release_if_unused(ino, true);
                }
                reply.ok()
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::from_i32(libc::EPERM));
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        // The kernel mount stays read-write when errors=remount-ro takes effect, so the
        // refusal the VFS gives an open for writing on a read-only mount is made here.
        let for_write = flags.0 & libc::O_ACCMODE != libc::O_RDONLY || flags.0 & libc::O_TRUNC != 0;
        match self.node(ino) {
            Ok(node) if node.is_dir() => reply.error(Errno::from_i32(libc::EISDIR)),
            Ok(_) if for_write && !self.vol.writable() => {
                reply.error(Errno::from_i32(libc::EROFS));
            }
            Ok(node) => {
                self.remember(&node, true);
                reply.opened(FileHandle(0), self.open_flags())
            }
            Err(e) => reply.error(errno(&e)),
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
        /// Read buffers, kept between requests (allocating and zeroing a fresh MiB per
        /// request cost as much as the copy out of the page cache) and shared by the workers:
        /// one per read in progress, not one per worker. A lone sequential reader has one or
        /// two requests in flight (the kernel splits a direct read), so it reuses one or two
        /// buffers, where per-worker buffers left a MiB touched in every worker that ever
        /// served a read (4 MiB at threads=4). Last in, first out: a reused buffer is the one
        /// most likely still in cache.
        static READ_BUFS: unchecked::Mutex<Vec<Vec<u8>>> = unchecked::Mutex::new(Vec::new());
        let mut buf = READ_BUFS.lock().pop().unwrap_or_default();
        let size = size as usize;
        if buf.len() < size {
            buf.resize(size, 0);
        }
        let r = self
            .node(ino)
            .and_then(|node| self.vol.read(&node, offset, &mut buf[..size]));
        match r {
            Ok(n) => reply.data(&buf[..n]),
            Err(e) => reply.error(errno(&e)),
        }
        READ_BUFS.lock().push(buf);
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
        let r = self
            .node(ino)
            .and_then(|node| self.vol.write(&node, offset, data));
        match r {
            Ok(n) => reply.written(u32::try_from(n).unwrap_or(u32::MAX)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // vfat has no flush operation; `flush` acts at release.
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let for_write = flags.0 & libc::O_ACCMODE != libc::O_RDONLY;
        if self.opts.flush && for_write {
            if let Err(e) = self.node(ino).and_then(|n| self.vol.release_flush(&n)) {
                // close(2) has no way to report it; the error stays on the mapping for fsync.
                log::warn!("fuse: flush at close of inode {}: {e}", ino.0);
            }
        }
        if let Some(k) = self.known.lock().get_mut(&ino.0) {
            k.opens = k.opens.saturating_sub(1);
        }
        let unlinked = self.node(ino).is_ok_and(|n| n.unlinked());
        self.release_if_unused(ino.0, unlinked);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply_empty(self.node(ino).and_then(|node| self.vol.fsync(&node)), reply);
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.node(ino) {
            Ok(node) if node.is_dir() => reply.opened(FileHandle(0), FopenFlags::empty()),
            Ok(_) => reply.error(Errno::from_i32(libc::ENOTDIR)),
            Err(e) => reply.error(errno(&e)),
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
        let r = (|| {
            let dir = self.node(ino)?;
            let skip = usize::try_from(offset).unwrap_or(usize::MAX);
            let dots = [(ino.0, "."), (self.vol.parent_ino(&dir), "..")];
            for (i, (n, name)) in dots.iter().enumerate().skip(skip) {
                if reply.add(INodeNo(*n), i as u64 + 1, FileType::Directory, name) {
                    return Ok(());
                }
            }
            for_each_item_after(&self.vol, &dir, offset, &mut |item| {
                let kind = if item.entry.is_dir() {
                    FileType::Directory
                } else {
                    FileType::RegularFile
                };
                let ino = match self.vol.child_at(&dir, item.offset) {
                    Ok(child) => child.ino(),
                    Err(e) => {
                        // A child that cannot be built (a directory whose chain is corrupt)
                        // is still listed, as vfat's readdir lists it without reading it:
                        // the error comes when it is looked up. Its number only has to be
                        // nonzero (readdir callers skip 0) and unlike any live node's.
                        log::warn!("fuse: readdir: {:?}: {e}", item.name);
                        unbuilt_ino(ino.0, item)
                    }
                };
                Ok(reply.add(INodeNo(ino), cookie(item), kind, &item.name))
            })
        })();
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let r = (|| {
            let dir = self.node(ino)?;
            let skip = usize::try_from(offset).unwrap_or(usize::MAX);
            // The kernel links neither dot entry (no lookup is counted), but their attr.ino
            // is what getdents shows: the directory's and its parent's.
            let dir_attr = self.attr(&dir);
            let parent = INodeNo(self.vol.parent_ino(&dir));
            let parent_attr = self.node(parent).map_or(
                FileAttr {
                    ino: parent,
                    ..dir_attr
                },
                |p| self.attr(&p),
            );
            let dots = [(".", dir_attr), ("..", parent_attr)];
            for (i, (name, attr)) in dots.iter().enumerate().skip(skip) {
                if reply.add(attr.ino, i as u64 + 1, name, &TTL, attr, Generation(0)) {
                    return Ok(());
                }
            }
            for_each_item_after(&self.vol, &dir, offset, &mut |item| {
                let child = self.vol.child_at(&dir, item.offset)?;
                let attr = self.attr(&child);
                let full = reply.add(
                    INodeNo(child.ino()),
                    cookie(item),
                    &item.name,
                    &TTL,
                    &attr,
                    Generation(0),
                );
                if !full {
                    // An entry that went into the reply counts as a lookup.
                    self.remember(&child, false);
                }
                Ok(full)
            })
        })();
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply_empty(self.node(ino).and_then(|node| self.vol.fsync(&node)), reply);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let s = self.vol.statfs();
        reply.statfs(
            u64::from(s.clusters),
            u64::from(s.free),
            u64::from(s.free),
            0,
            0,
            s.cluster_size,
            s.name_max,
            s.cluster_size,
        );
    }

    /// FAT keeps no extended attributes, and the virtual ones are read-only. ENOSYS, not
    /// EOPNOTSUPP: the kernel answers EOPNOTSUPP to the caller either way, but after ENOSYS
    /// it does so itself from then on (FUSE's no_setxattr), instead of a round trip for each
    /// try: `cp -a` tries once per file, 2,033 of the ~16,000 requests of the bench's tree.
    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::from_i32(libc::ENOSYS));
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        // Relaxed: a statistic.
        self.getxattrs.fetch_add(1, unchecked::Ordering::Relaxed);
        let value = (ino.0 == ROOT_INO)
            .then(|| name.to_str().and_then(|n| self.xattr(n)))
            .flatten();
        match value {
            Some(v) => Self::reply_xattr(&v, size, reply),
            None => reply.error(Errno::from_i32(libc::ENODATA)),
        }
    }

    /// No ioctl is implemented: ENOTTY, as vfat answers one it does not know (fuser's default
    /// would log a warning for every TCGETS a program's open sends, and answer ENOSYS).
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        reply.error(Errno::from_i32(libc::ENOTTY));
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let mut list = Vec::new();
        if ino.0 == ROOT_INO {
            for name in XATTRS {
                list.extend_from_slice(name.as_bytes());
                list.push(0);
            }
        }
        Self::reply_xattr(&list, size, reply);
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let node = self
            .node(parent)
            .and_then(|dir| self.vol.create(&dir, name_of(name)?));
        match node {
            Ok(node) => {
                let attr = self.attr(&node);
                // create is a lookup and an open at once.
                self.remember(&node, false);
                self.remember(&node, true);
                reply.created(&TTL, &attr, Generation(0), FileHandle(0), self.open_flags());
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let r = self
            .node(ino)
            .and_then(|node| self.vol.fallocate(&node, mode, offset, length));
        reply_empty(r, reply);
    }

    fn lseek(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        // FAT has no holes: data runs from 0 to the size, the only hole is at the end.
        let size = match self.node(ino) {
            Ok(node) => i64::try_from(node.size()).unwrap_or(i64::MAX),
            Err(e) => return reply.error(errno(&e)),
        };
        match whence {
            libc::SEEK_DATA if (0..size).contains(&offset) => reply.offset(offset),
            libc::SEEK_HOLE if (0..size).contains(&offset) => reply.offset(size),
            libc::SEEK_DATA | libc::SEEK_HOLE => reply.error(Errno::from_i32(libc::ENXIO)),
            _ => reply.error(Errno::from_i32(libc::EINVAL)),
        }
    }
}
