//! Mount options: turns the `-o` strings of `fatcache mount` (and of `mount -t fuse.fatcache`)
//! into one [`FuseOptions`], the FAT layer's [`MountOptions`] inside it.
//!
//! Models: fs/fat/inode.c parse_options() (v5.10), for the vfat options and their meanings.
//!
//! Four families of option are accepted:
//! * vfat's own (`uid=`, `umask=`, `shortname=`, `errors=`, ...), with the kernel's meanings;
//! * fatcache's (`era=`, `cache_mb=`, `wake_delay_us=`, ...), which steer the page-cache model;
//! * FUSE's (`allow_other`, `allow_root`, `default_permissions`, `fsname=`, `subtype=`);
//! * the generic ones mount(8) and mount.fuse3 hand every helper (`defaults`, `nosuid`,
//!   `noatime`, `_netdev`, `x-*`, ...), so fstab entries work.
//!
//! A vfat option whose effect is harmless to lose (`discard`, `usefree`, `debug`, the obsolete
//! `conv=`) is accepted with a log line; one asking for behaviour fatcache lacks (`nfs`,
//! `rodir`, `sys_immutable`, `uni_xlate`, ...) is refused, because a mount that silently
//! behaves differently from what fstab asked for is worse than one that does not mount.
//!
//! Deviations:
//! * `dirsync` is accepted and changes nothing: directory changes follow `sync`/`async` as
//!   file data does. It never turns `sync` on or off.
//! * Without `tz=`/`time_offset=`, vfat uses the kernel's system time zone; fatcache has none
//!   and uses UTC.
//! * `iocharset=` and `codepage=` take only `utf8` and `437`, the two fatcache implements.
//! * `nocase`, msdos's option, means `shortname=win95` here, as vfat keeps it for old fstabs.

use std::fmt;
use std::ops::RangeInclusive;
use std::str::FromStr;
use std::time::Duration;

use crate::error::FsError;
use crate::fat::name::ShortnameMode;
use crate::fat::volume::MountOptions;
use crate::mm::{ALL_ERAS, Era};

/// How file data meets the kernel's page cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CacheMode {
    /// Files are opened direct-I/O: every read and write reaches fatcache's own cache.
    #[default]
    Direct,
    /// The kernel caches file data too (faster reads; fewer requests reach fatcache).
    Kernel,
}

/// The generic VFS mount flags that fatcache passes on to the kernel through FUSE.
///
/// Each is the "no" form; its opposite (`suid`, `dev`, `exec`, `atime`, `relatime`,
/// `strictatime`) clears it, later options winning.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VfsFlags {
    /// `nosuid`: set-user-id bits are ignored.
    pub nosuid: bool,
    /// `nodev`: device nodes cannot be opened.
    pub nodev: bool,
    /// `noexec`: nothing on the mount can be executed.
    pub noexec: bool,
    /// `noatime`: access times are not updated.
    pub noatime: bool,
}

/// Everything `-o` can say.
#[derive(Clone, Debug)]
pub struct FuseOptions {
    /// The FAT layer's options.
    pub volume: MountOptions,
    /// `cache=`: whether the kernel caches file data.
    pub cache: CacheMode,
    /// `threads=`: FUSE worker threads.
    pub threads: usize,
    /// `read_ahead_kb=`: the kernel's readahead on this mount (its bdi's read_ahead_kb), set
    /// once mounted; `None` means [`MAX_READ_AHEAD_KB`] with `cache=kernel` and the kernel's
    /// default with `cache=direct` (see [`FuseOptions::read_ahead_kb`]).
    pub read_ahead_kb: Option<u32>,
    /// `uid=`: owner of every file.
    pub uid: u32,
    /// `gid=`: group of every file.
    pub gid: u32,
    /// `fmask=` (or `umask=`): permission bits cleared on files.
    pub fmask: u32,
    /// `dmask=` (or `umask=`): permission bits cleared on directories.
    pub dmask: u32,
    /// `allow_utime=`: who besides the owner may set times; `None` means vfat's default
    /// (see [`FuseOptions::allow_utime_bits`]). Through FUSE the kernel's own check (with
    /// `default_permissions`) refuses given times to non-owners first, so only the
    /// refusals of this rule show (see `fuse::perm`).
    pub allow_utime: Option<u32>,
    /// `flush`: write a file back early when it is closed.
    pub flush: bool,
    /// `quiet`: chown and chmod that cannot be kept succeed silently instead of failing.
    pub quiet: bool,
    /// `utf8`: recorded only; names are always stored as UTF-16 and shown as UTF-8.
    pub utf8: bool,
    /// `showexec`: only `.EXE`, `.COM` and `.BAT` files get execute bits.
    pub showexec: bool,
    /// `allow_other`: every user may use the mount.
    pub allow_other: bool,
    /// `allow_root`: root may use the mount besides its owner.
    pub allow_root: bool,
    /// `default_permissions`: the kernel checks access from mode, uid and gid.
    pub default_permissions: bool,
    /// `fsname=`: the source shown in /proc/mounts.
    pub fsname: Option<String>,
    /// `log=`: once mounted, the daemon appends its log and BUG reports to this file (the
    /// kernel's would go to dmesg); without it they go to stderr.
    pub log: Option<std::path::PathBuf>,
    /// `subtype=`: the type shown in /proc/mounts after `fuse.` (`fatcache` if unset). Only
    /// mounts made through fusermount3 show it; fuser 0.18's direct mount (as root) always
    /// shows plain `fuse`.
    pub subtype: Option<String>,
    /// `nosuid`, `nodev`, `noexec`, `noatime` and their opposites.
    pub vfs: VfsFlags,
}

/// A refused option, with a message naming it and saying what is accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OptionError(
    /// The whole message, ready for the user.
    pub String,
);

impl fmt::Display for OptionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for OptionError {}

/// Options that take no value, space-separated; used to tell "ro=1" (takes no value) from a
/// typo.
const FLAG_NAMES: &str = "\
ro rw sync async dirsync flush quiet showexec utf8 nocase usefree discard debug posix nfs \
rodir sys_immutable dos1xfloppy uni_xlate nonumtail allow_other allow_root \
default_permissions defaults suid nosuid dev nodev exec noexec atime noatime relatime \
norelatime strictatime nodiratime diratime auto noauto user nouser users _netdev nofail";

/// Options that need a value, space-separated; used to tell a bare "uid" (needs a value) from
/// a typo.
const VALUED_NAMES: &str = "\
uid gid umask fmask dmask allow_utime shortname utf8 iocharset codepage check tz \
time_offset errors nfs uni_xlate nonumtail conv fat blocksize cvf_format cvf_options era \
on_bug history cache_mb cache threads read_ahead_kb io_threads io_latency_us wake_delay_us \
dirty_expire_ms writeback_interval_ms dirty_ratio dirty_background_ratio offset partition \
fsname subtype log";

/// Longest accepted `dirty_expire_ms=` and `writeback_interval_ms=`: a day. Deadlines are
/// computed as `Instant + Duration`, which panics on overflow; a day also catches typos.
const MAX_MS: u64 = 24 * 60 * 60 * 1000;

/// Longest accepted `io_latency_us=` and `wake_delay_us=`: ten seconds. A longer stall per
/// request is more likely a typo (ms for us) than an experiment.
const MAX_DELAY_US: u64 = 10_000_000;

/// Largest `read_ahead_kb=`, and the one `cache=kernel` sets unless told otherwise: fatcache's
/// largest request (FUSE's max_pages), so one readahead is one request. More is refused: the
/// kernel splits a larger window into requests of this size anyway, and 1 and 2 MiB read no
/// faster than 512 KiB here (512 MiB dd reads of 0.33-0.40 s at each).
pub const MAX_READ_AHEAD_KB: u32 = crate::fuse::fs::MAX_WRITE / 1024;

/// 4 KiB frames per MiB of `cache_mb=`.
const FRAMES_PER_MB: usize = 256;

impl Default for FuseOptions {
    /// vfat's defaults where vfat has the option, fatcache's where it does not. Reads the
    /// caller's uid, gid and umask, as vfat takes current_uid(), current_gid() and
    /// current_umask() at mount time.
    fn default() -> Self {
        let ids = ProcIds::current();
        FuseOptions {
            volume: MountOptions::default(),
            cache: CacheMode::Direct,
            threads: 4,
            read_ahead_kb: None,
            uid: ids.uid,
            gid: ids.gid,
            fmask: ids.umask,
            dmask: ids.umask,
            allow_utime: None,
            flush: false,
            quiet: false,
            utf8: false,
            showexec: false,
            allow_other: false,
            allow_root: false,
            default_permissions: false,
            fsname: None,
            log: None,
            subtype: None,
            vfs: VfsFlags::default(),
        }
    }
}

impl FuseOptions {
    /// Applies one comma-separated `-o` string (may be called repeatedly for several -o; later
    /// wins).
    ///
    /// Checks each option on its own; the rules between options (see
    /// [`FuseOptions::validate`]) are left to the end, so that `-o dirty_ratio=5 -o
    /// dirty_background_ratio=2` is not refused halfway.
    pub fn apply(&mut self, opts: &str) -> Result<(), OptionError> {
        // Empty entries (",,", a trailing comma) come from scripts joining lists; mount(8)
        // skips them too.
        opts.split(',')
            .filter(|entry| !entry.is_empty())
            .try_for_each(|entry| self.apply_one(entry))
    }

    /// `FuseOptions::default()` then `apply` each string, then [`FuseOptions::validate`].
    pub fn parse<'a>(opts: impl IntoIterator<Item = &'a str>) -> Result<FuseOptions, OptionError> {
        let mut parsed = FuseOptions::default();
        for o in opts {
            parsed.apply(o)?;
        }
        parsed.validate()?;
        Ok(parsed)
    }

    /// Checks the rules between options: `dirty_background_ratio` below `dirty_ratio`,
    /// `offset=` and `partition=` not both, `allow_other` and `allow_root` not both.
    pub fn validate(&self) -> Result<(), OptionError> {
        let wb = &self.volume.writeback;
        if wb.dirty_background_ratio >= wb.dirty_ratio {
            return Err(OptionError(format!(
                "fatcache: dirty_background_ratio={} must be below dirty_ratio={}",
                wb.dirty_background_ratio, wb.dirty_ratio
            )));
        }
        if self.volume.placement.offset.is_some() && self.volume.placement.partition.is_some() {
            return Err(OptionError(
                "fatcache: offset= and partition= exclude each other".into(),
            ));
        }
        if self.allow_other && self.allow_root {
            // libfuse refuses the pair as well: allow_root is a narrower allow_other.
            return Err(OptionError(
                "fatcache: allow_other and allow_root exclude each other".into(),
            ));
        }
        Ok(())
    }

    /// The readahead to set on the mount once it is up, in KiB, or `None` to leave the
    /// kernel's default (128 KiB for a FUSE mount, whatever fatcache asks at INIT). With
    /// `cache=kernel` the kernel reads ahead of a sequential reader in requests of at most
    /// its readahead, so its default sends a 512 MiB read as 4,096 requests of 128 KiB, which
    /// four workers take out of order; at 512 KiB a `dd` read took 0.35-0.43 s against
    /// 0.45-0.56 s, and the null FUSE filesystem gains as much (benches/mount.sh sets the same
    /// on it). `cache=direct` has no kernel page cache, so nothing to set unless asked.
    pub fn read_ahead_kb(&self) -> Option<u32> {
        match self.cache {
            CacheMode::Kernel => Some(self.read_ahead_kb.unwrap_or(MAX_READ_AHEAD_KB)),
            CacheMode::Direct => self.read_ahead_kb,
        }
    }

    /// The `allow_utime` bits in force: the option's, or vfat's default `~dmask & 022`
    /// (group and others may set times where they may write).
    pub fn allow_utime_bits(&self) -> u32 {
        self.allow_utime.unwrap_or(!self.dmask & 0o022)
    }

    /// The fuser session configuration these options ask for: subtype, fsname, `ro`,
    /// `default_permissions`, the VFS flags, who may use the mount, and the worker threads.
    pub fn fuser_config(&self) -> fuser::Config {
        use fuser::MountOption as M;
        let subtype = self.subtype.clone().unwrap_or_else(|| "fatcache".into());
        let mut opts = vec![M::Subtype(subtype)];
        opts.extend(self.fsname.clone().map(M::FSName));
        let wanted = [
            (self.volume.placement.read_only, M::RO),
            (self.default_permissions, M::DefaultPermissions),
            (self.vfs.nosuid, M::NoSuid),
            (self.vfs.nodev, M::NoDev),
            (self.vfs.noexec, M::NoExec),
            (self.vfs.noatime, M::NoAtime),
        ];
        opts.extend(wanted.into_iter().filter(|(on, _)| *on).map(|(_, o)| o));
        let mut config = fuser::Config::default();
        config.mount_options = opts;
        config.acl = if self.allow_other {
            fuser::SessionACL::All
        } else if self.allow_root {
            fuser::SessionACL::RootAndOwner
        } else {
            fuser::SessionACL::Owner
        };
        config.n_threads = Some(self.threads);
        config
    }

    /// Applies one non-empty entry of an `-o` string.
    fn apply_one(&mut self, entry: &str) -> Result<(), OptionError> {
        // x-* belongs to userspace tools (x-systemd.*, x-gvfs-show); mount(8) passes it on and
        // every helper must ignore it, whatever follows the '='.
        if entry.starts_with("x-") {
            log::debug!("mount option {entry:?} ignored (for userspace tools)");
            return Ok(());
        }
        let known = match entry.split_once('=') {
            None => self.apply_flag(entry)?,
            Some((key, value)) => self.apply_valued(key, value)?,
        };
        if known {
            return Ok(());
        }
        Err(match entry.split_once('=') {
            None if is_listed(VALUED_NAMES, entry) => OptionError(format!(
                "fatcache: mount option '{entry}' needs a value ({entry}=...)"
            )),
            Some((key, _)) if is_listed(FLAG_NAMES, key) => {
                OptionError(format!("fatcache: mount option '{key}' takes no value"))
            }
            _ => OptionError(format!(
                "fatcache: unknown mount option '{entry}' (see fatcache mount --help)"
            )),
        })
    }

    /// Applies an option without a value; `Ok(false)` if there is no such flag.
    fn apply_flag(&mut self, key: &str) -> Result<bool, OptionError> {
        match key {
            "ro" => self.volume.placement.read_only = true,
            "rw" => self.volume.placement.read_only = false,
            "sync" => self.volume.sync = true,
            "async" => self.volume.sync = false,
            "flush" => self.flush = true,
            "quiet" => self.quiet = true,
            "showexec" => self.showexec = true,
            "utf8" => self.utf8 = true,
            "nocase" => self.volume.shortname = ShortnameMode::Win95,
            "allow_other" => self.allow_other = true,
            "allow_root" => self.allow_root = true,
            "default_permissions" => self.default_permissions = true,
            "nfs" => return Err(unsupported(key, "NFS export is not implemented")),
            "rodir" => {
                return Err(unsupported(
                    key,
                    "read-only directories are not implemented",
                ));
            }
            "sys_immutable" => {
                return Err(unsupported(
                    key,
                    "immutable system files are not implemented",
                ));
            }
            "dos1xfloppy" => {
                return Err(unsupported(
                    key,
                    "volumes without a BPB are not implemented",
                ));
            }
            "uni_xlate" | "nonumtail" => return Err(unsupported(key, "only the =0 form is")),
            _ => return Ok(self.apply_vfs_flag(key)),
        }
        Ok(true)
    }

    /// Applies a generic VFS or mount(8) flag, or one vfat accepts without effect here;
    /// `false` if there is no such flag.
    fn apply_vfs_flag(&mut self, key: &str) -> bool {
        let vfs = &mut self.vfs;
        match key {
            "nosuid" | "suid" => vfs.nosuid = key == "nosuid",
            "nodev" | "dev" => vfs.nodev = key == "nodev",
            "noexec" | "exec" => vfs.noexec = key == "noexec",
            "noatime" => vfs.noatime = true,
            "atime" | "relatime" | "strictatime" => vfs.noatime = false,
            // mount(8)'s own (fstab handling, user mounts, boot ordering), directory-only atime
            // variants FUSE does not see, and dirsync (see the module's Deviations).
            "defaults" | "auto" | "noauto" | "user" | "nouser" | "users" | "_netdev" | "nofail"
            | "norelatime" | "nodiratime" | "diratime" | "dirsync" => {
                log::debug!("mount option {key:?} accepted, no effect on fatcache");
            }
            // vfat's: the free count is read from FSInfo anyway; discard is an optimisation;
            // debug only prints the options; posix is obsolete in the kernel too.
            "usefree" | "discard" | "debug" | "posix" => {
                log::info!("mount option {key:?} accepted and ignored");
            }
            _ => return false,
        }
        true
    }

    /// Applies an option with a value; `Ok(false)` if there is no such option.
    fn apply_valued(&mut self, key: &str, v: &str) -> Result<bool, OptionError> {
        if self.apply_vfat(key, v)? || self.apply_ours(key, v)? {
            return Ok(true);
        }
        match key {
            "fsname" => self.fsname = Some(non_empty(key, v)?.to_owned()),
            "subtype" => self.subtype = Some(non_empty(key, v)?.to_owned()),
            "log" => self.log = Some(non_empty(key, v)?.into()),
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Applies a vfat option with a value; `Ok(false)` if vfat has no such option.
    fn apply_vfat(&mut self, key: &str, v: &str) -> Result<bool, OptionError> {
        match key {
            "uid" => self.uid = id(key, v)?,
            "gid" => self.gid = id(key, v)?,
            "umask" => {
                self.fmask = octal(key, v)?;
                self.dmask = self.fmask;
            }
            "fmask" => self.fmask = octal(key, v)?,
            "dmask" => self.dmask = octal(key, v)?,
            "allow_utime" => self.allow_utime = Some(octal(key, v)?),
            "shortname" => self.volume.shortname = from_str(key, v)?,
            "errors" => self.volume.errors = from_str(key, v)?,
            "utf8" => self.utf8 = boolean(key, v)?,
            "tz" if v == "UTC" => self.volume.tz_offset_minutes = 0,
            "tz" => return Err(bad(key, v, "only UTC, as vfat")),
            "time_offset" => self.volume.tz_offset_minutes = minutes(key, v)?,
            "iocharset" if v == "utf8" => {}
            "iocharset" => return Err(bad(key, v, "only utf8 is implemented")),
            "codepage" if v == "437" => {}
            "codepage" => return Err(bad(key, v, "only 437 is implemented")),
            // check= picks msdos's name checking; vfat parses it and never looks at it.
            "check" if matches!(v, "r" | "n" | "s" | "relaxed" | "normal" | "strict") => {}
            "check" => return Err(bad(key, v, "relaxed, normal or strict")),
            // The =0 forms ask for vfat's default, which is what fatcache does.
            "uni_xlate" | "nonumtail" if !boolean(key, v)? => {}
            "uni_xlate" | "nonumtail" => return Err(unsupported(key, "only the =0 form is")),
            "nfs" => return Err(unsupported(key, "NFS export is not implemented")),
            _ => return obsolete(key, v),
        }
        Ok(true)
    }

    /// Applies a fatcache option; `Ok(false)` if there is no such option.
    fn apply_ours(&mut self, key: &str, v: &str) -> Result<bool, OptionError> {
        match key {
            "era" => self.volume.era = era(key, v)?,
            "on_bug" => self.volume.on_bug = from_str(key, v)?,
            "history" => self.volume.history = on_off(key, v)?,
            "cache_mb" => self.volume.cache_frames = number(key, v, 1..=65_536)? * FRAMES_PER_MB,
            "cache" => self.cache = cache_mode(key, v)?,
            "threads" => self.threads = number(key, v, 1..=64)?,
            "read_ahead_kb" => self.read_ahead_kb = Some(number(key, v, 0..=MAX_READ_AHEAD_KB)?),
            "io_threads" => self.volume.io_threads = number(key, v, 1..=64)?,
            "io_latency_us" => self.volume.io_latency = micros(key, v)?,
            "wake_delay_us" => self.volume.wake_delay = micros(key, v)?,
            // writeback_interval_ms=0 turns periodic writeback off, as
            // vm.dirty_writeback_centisecs=0 does.
            "dirty_expire_ms" => self.volume.writeback.expire = millis(key, v)?,
            "writeback_interval_ms" => self.volume.writeback.interval = millis(key, v)?,
            "dirty_ratio" => self.volume.writeback.dirty_ratio = number(key, v, 1..=100)?,
            "dirty_background_ratio" => {
                self.volume.writeback.dirty_background_ratio = number(key, v, 0..=99)?;
            }
            "offset" => self.volume.placement.offset = Some(offset(key, v)?),
            "partition" => self.volume.placement.partition = Some(number(key, v, 1..=u32::MAX)?),
            _ => return Ok(false),
        }
        Ok(true)
    }
}

/// Accepts the options vfat keeps only so that old fstabs still mount; `Ok(false)` if
/// `key` is not one of them.
fn obsolete(key: &str, v: &str) -> Result<bool, OptionError> {
    match key {
        "conv" if matches!(v, "binary" | "text" | "auto" | "b" | "t" | "a") => {}
        "conv" => return Err(bad(key, v, "binary, text or auto")),
        "fat" | "blocksize" => {
            number(key, v, 0..=u32::MAX)?;
        }
        "cvf_format" | "cvf_options" => {}
        _ => return Ok(false),
    }
    log::info!("mount option \"{key}={v}\" is obsolete, ignored");
    Ok(true)
}

/// Whether `name` is one of the space-separated `names`.
fn is_listed(names: &str, name: &str) -> bool {
    names.split_whitespace().any(|n| n == name)
}

/// The refusal of a malformed value: names the option and what it accepts.
fn bad(key: &str, v: &str, accepted: &str) -> OptionError {
    OptionError(format!("fatcache: bad value '{v}' for {key}= ({accepted})"))
}

/// The refusal of an option fatcache knows but does not implement.
fn unsupported(key: &str, why: &str) -> OptionError {
    OptionError(format!(
        "fatcache: mount option '{key}' is not supported ({why})"
    ))
}

/// A decimal number within `range`. Mount options have no signs, spaces or separators, so
/// anything but digits is refused rather than trimmed.
fn number<T>(key: &str, v: &str, range: RangeInclusive<T>) -> Result<T, OptionError>
where
    T: FromStr + PartialOrd + fmt::Display,
{
    let refuse = || {
        bad(
            key,
            v,
            &format!("a number from {} to {}", range.start(), range.end()),
        )
    };
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(refuse());
    }
    match v.parse::<T>() {
        Ok(n) if range.contains(&n) => Ok(n),
        _ => Err(refuse()),
    }
}

/// `uid=`/`gid=`: any id but (u32)-1, which chown reads as "leave unchanged" and the kernel
/// refuses as an invalid id.
fn id(key: &str, v: &str) -> Result<u32, OptionError> {
    number(key, v, 0..=u32::MAX - 1)
}

/// A permission mask in octal, at most 0777.
fn octal(key: &str, v: &str) -> Result<u32, OptionError> {
    let refuse = || bad(key, v, "an octal mask from 0 to 0777");
    if v.is_empty() || !v.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return Err(refuse());
    }
    match u32::from_str_radix(v, 8) {
        Ok(m) if m <= 0o777 => Ok(m),
        _ => Err(refuse()),
    }
}

/// `time_offset=`: minutes east of UTC, within a day either way as vfat allows.
fn minutes(key: &str, v: &str) -> Result<i32, OptionError> {
    let refuse = || bad(key, v, "minutes from -1440 to 1440");
    let digits = v.strip_prefix('-').unwrap_or(v);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(refuse());
    }
    match v.parse::<i32>() {
        Ok(m) if (-1440..=1440).contains(&m) => Ok(m),
        _ => Err(refuse()),
    }
}

/// A delay in microseconds, up to [`MAX_DELAY_US`].
fn micros(key: &str, v: &str) -> Result<Duration, OptionError> {
    number(key, v, 0..=MAX_DELAY_US).map(Duration::from_micros)
}

/// A period or age in milliseconds, up to [`MAX_MS`].
fn millis(key: &str, v: &str) -> Result<Duration, OptionError> {
    number(key, v, 0..=MAX_MS).map(Duration::from_millis)
}

/// `offset=`: bytes, decimal or `0x` hex (what fdisk and partx print).
fn offset(key: &str, v: &str) -> Result<u64, OptionError> {
    let Some(hex) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) else {
        return number(key, v, 0..=u64::MAX);
    };
    let refuse = || bad(key, v, "bytes, decimal or 0x hex");
    if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(refuse());
    }
    u64::from_str_radix(hex, 16).map_err(|_| refuse())
}

/// vfat's boolean spellings: `1|yes|true` and `0|no|false`.
fn boolean(key: &str, v: &str) -> Result<bool, OptionError> {
    match v {
        "1" | "yes" | "true" => Ok(true),
        "0" | "no" | "false" => Ok(false),
        _ => Err(bad(key, v, "1, yes, true, 0, no or false")),
    }
}

/// `on` or `off` (fatcache's own switches).
fn on_off(key: &str, v: &str) -> Result<bool, OptionError> {
    match v {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(bad(key, v, "on or off")),
    }
}

/// A value that must not be empty (`fsname=`, `subtype=`).
fn non_empty<'v>(key: &str, v: &'v str) -> Result<&'v str, OptionError> {
    if v.is_empty() {
        return Err(bad(key, v, "a non-empty name"));
    }
    Ok(v)
}

/// `cache=direct|kernel`.
fn cache_mode(key: &str, v: &str) -> Result<CacheMode, OptionError> {
    match v {
        "direct" => Ok(CacheMode::Direct),
        "kernel" => Ok(CacheMode::Kernel),
        _ => Err(bad(key, v, "direct or kernel")),
    }
}

/// `era=`: looked up by the era's own names, so the list in the message is always complete.
fn era(key: &str, v: &str) -> Result<Era, OptionError> {
    ALL_ERAS
        .iter()
        .copied()
        .find(|e| e.name() == v)
        .ok_or_else(|| {
            let names: Vec<&str> = ALL_ERAS.iter().map(|e| e.name()).collect();
            bad(key, v, &format!("one of {}", names.join(", ")))
        })
}

/// A value parsed by its type's own `FromStr`, whose message says what it accepts.
fn from_str<T: FromStr<Err = FsError>>(key: &str, v: &str) -> Result<T, OptionError> {
    v.parse::<T>().map_err(|e| match e {
        FsError::Invalid(accepted) => bad(key, v, accepted),
        other => bad(key, v, &other.to_string()),
    })
}

/// The caller's ids and umask, as vfat's defaults take them.
///
/// Read from /proc/self/status: libc's getuid(), getgid() and umask() are `unsafe` to call,
/// which the crate forbids, and umask() can only be read by changing it. "Umask:" exists
/// since Linux 4.7.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ProcIds {
    /// Real uid (vfat's current_uid(), libc's getuid()).
    uid: u32,
    /// Real gid.
    gid: u32,
    /// The file-creation mask.
    umask: u32,
}

impl ProcIds {
    /// Without /proc the ids fall back to root's and the umask to 022: files then look
    /// owned by root, which denies an ordinary user rather than granting anyone more.
    const FALLBACK: ProcIds = ProcIds {
        uid: 0,
        gid: 0,
        umask: 0o022,
    };

    /// The running process's.
    fn current() -> ProcIds {
        match std::fs::read_to_string("/proc/self/status") {
            Ok(text) => ProcIds::parse(&text),
            Err(e) => {
                log::warn!("cannot read /proc/self/status: {e}; uid=0,gid=0,umask=022 assumed");
                ProcIds::FALLBACK
            }
        }
    }

    /// Parses a /proc/PID/status text; a missing or odd line keeps its fallback.
    fn parse(text: &str) -> ProcIds {
        let mut ids = ProcIds::FALLBACK;
        for line in text.lines() {
            let Some((name, rest)) = line.split_once(':') else {
                continue;
            };
            // "Uid:" and "Gid:" list real, effective, saved and filesystem ids; the first
            // is the real one.
            let first = rest.split_whitespace().next();
            match name {
                "Uid" => ids.uid = first.and_then(|f| f.parse().ok()).unwrap_or(ids.uid),
                "Gid" => ids.gid = first.and_then(|f| f.parse().ok()).unwrap_or(ids.gid),
                "Umask" => {
                    let mask = first.and_then(|f| u32::from_str_radix(f, 8).ok());
                    ids.umask = mask.map_or(ids.umask, |m| m & 0o777);
                }
                _ => {}
            }
        }
        ids
    }
}

/// Every option with its meaning and default, for `--help` and the README.
pub fn help_text() -> &'static str {
    HELP
}

/// The table [`help_text`] returns; a test checks that it names every accepted option.
const HELP: &str = "\
Mount options (-o, comma-separated; several -o may be given, later ones win)

vfat options (meanings as the kernel's vfat):
  ro | rw                      read-only | read-write                          rw
  sync | async                 every change on disk before the call returns    async
  dirsync                      accepted; directories follow sync/async         -
  flush                        write a file back early when it is closed       off
  uid=N | gid=N                owner | group of every file                     the caller's
  umask=OOO                    sets fmask and dmask (octal, at most 0777)      -
  fmask=OOO | dmask=OOO        bits cleared from file | directory modes        the process umask
  allow_utime=OOO              may set times besides the owner: 020 group,     ~dmask & 022
                               002 others
  quiet                        chown/chmod that cannot be kept succeed         off
  showexec                     execute bits only on .EXE, .COM, .BAT files     off
  shortname=lower|win95|winnt|mixed  how short names show, how new ones form   mixed
  nocase                       old spelling of shortname=win95                 -
  utf8 | utf8=1|yes|true|0|no|false  recorded; names are always UTF-8         off
  iocharset=utf8               the only I/O charset implemented                utf8
  codepage=437                 the only DOS code page implemented              437
  check=relaxed|normal|strict  accepted (r, n, s too); no effect on vfat       -
  tz=UTC                       DOS times are UTC                               UTC
  time_offset=MIN              DOS times are MIN minutes east of UTC,          0
                               -1440 to 1440
  errors=continue|remount-ro|panic  what corrupt metadata does                 remount-ro
  usefree, discard, debug      accepted, no effect                             -
  uni_xlate=0, nonumtail=0     accepted (the default behaviour)                -
  conv=binary|text|auto, fat=N, blocksize=N, cvf_format=S, cvf_options=S, posix
                               obsolete in vfat too; accepted, no effect       -
  refused: nfs, nfs=..., rodir, sys_immutable, dos1xfloppy, uni_xlate, nonumtail

fatcache options:
  era=v5.8|v5.9|v5.10|v5.11|v6.9|alt-a|alt-b  kernel era of the page cache     v5.11
  on_bug=abort|warn|panic      what a failed BUG_ON does                       abort
  history=on|off               per-frame event histories in BUG reports        on
                               (1 KiB of memory per 4 KiB frame)
  cache_mb=N                   page-cache size in MiB, 1 to 65536              64
  cache=direct|kernel          direct: every read/write reaches fatcache's     direct
                               cache; kernel: the kernel caches file data
  threads=N                    FUSE worker threads, 1 to 64                    4
  read_ahead_kb=N              the kernel's readahead on the mount, KiB,       512 (kernel)
                               0 to 512 (root only: set in sysfs)
  io_threads=N                 device completion threads, 1 to 64              2
  io_latency_us=N              simulated device latency per request,           0
                               0 to 10000000
  wake_delay_us=N              stall between clearing PG_writeback and the     0
                               wake, 0 to 10000000
  dirty_expire_ms=N            age at which dirty data is written back,        30000
                               0 to 86400000
  writeback_interval_ms=N      flusher period (0: no periodic writeback),      5000
                               0 to 86400000
  dirty_ratio=N                percent of the cache dirty before writers       20
                               write back, 1 to 100
  dirty_background_ratio=N     percent dirty at which the flusher starts,      10
                               below dirty_ratio
  offset=BYTES                 the volume starts BYTES into the image          0
                               (decimal or 0x hex; excludes partition=)
  partition=N                  the volume is partition N (from 1) of an        -
                               MBR or GPT image

FUSE and mount options:
  allow_other                  every user may use the mount                    off
  allow_root                   root may use it too (excludes allow_other)      off
  default_permissions          the kernel checks modes, uid and gid (always    on
                               on: fatcache asks for it on every mount)
  fsname=NAME | subtype=NAME   source | type shown in /proc/mounts             - | fatcache
  log=FILE                     once mounted, append the log and BUG reports    stderr
                               to FILE (a background mount has no stderr)
  nosuid, nodev, noexec, noatime  passed to the kernel; suid, dev, exec,       off
                               atime, relatime, strictatime undo them
  defaults, auto, noauto, user, nouser, users, _netdev, nofail, norelatime,
  diratime, nodiratime, x-*    for mount(8); accepted, no effect               -
";

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::bug::OnBug;
    use crate::fat::volume::ErrorsPolicy;

    fn init() {
        let _ = env_logger::builder().is_test(true).try_init();
    }

    fn parse(s: &str) -> FuseOptions {
        init();
        FuseOptions::parse([s]).unwrap_or_else(|e| panic!("{s:?} refused: {e}"))
    }

    fn refusal(s: &str) -> String {
        init();
        match FuseOptions::parse([s]) {
            Ok(_) => panic!("{s:?} accepted"),
            Err(e) => e.0,
        }
    }

    #[test]
    fn defaults() {
        init();
        let o = FuseOptions::default();
        let ids = ProcIds::current();
        assert_eq!(o.cache, CacheMode::Direct);
        assert_eq!(o.threads, 4);
        assert_eq!((o.uid, o.gid), (ids.uid, ids.gid));
        assert_eq!(o.allow_utime, None);
        assert!(!o.flush && !o.quiet && !o.utf8 && !o.showexec);
        assert!(!o.allow_other && !o.allow_root && !o.default_permissions);
        assert_eq!((o.fsname.as_deref(), o.subtype.as_deref()), (None, None));
        assert_eq!(o.vfs, VfsFlags::default());
        let wb = &o.volume.writeback;
        assert_eq!(
            (wb.expire.as_millis(), wb.interval.as_millis()),
            (30_000, 5_000)
        );
        assert_eq!((wb.dirty_ratio, wb.dirty_background_ratio), (20, 10));
        // The FAT layer's defaults pass through untouched; help_text quotes these.
        let v = &o.volume;
        assert!(!v.placement.read_only && !v.sync);
        assert_eq!((v.placement.offset, v.placement.partition), (None, None));
        assert_eq!(v.era, Era::V5_11);
        assert_eq!(v.cache_frames, 64 * FRAMES_PER_MB);
        assert_eq!(v.on_bug, OnBug::Abort);
        assert_eq!(v.shortname, ShortnameMode::Mixed);
        assert_eq!(v.errors, ErrorsPolicy::RemountRo);
        assert_eq!((v.tz_offset_minutes, v.io_threads), (0, 2));
        assert_eq!(
            (v.io_latency, v.wake_delay),
            (Duration::ZERO, Duration::ZERO)
        );
        assert!(o.validate().is_ok());
    }

    #[test]
    fn masks_default_to_the_process_umask() {
        init();
        let status = std::fs::read_to_string("/proc/self/status").expect("procfs");
        let line = status
            .lines()
            .find(|l| l.starts_with("Umask:"))
            .expect("Umask line");
        let umask = u32::from_str_radix(line["Umask:".len()..].trim(), 8).expect("octal");
        let o = FuseOptions::default();
        assert_eq!((o.fmask, o.dmask), (umask, umask));
        assert_eq!(o.allow_utime_bits(), !umask & 0o022);
    }

    #[test]
    fn proc_status_takes_real_ids_and_octal_umask() {
        let text = "Name:\tx\nUmask:\t0027\nUid:\t1000\t1001\t1002\t1003\n\
                    Gid:\t2000\t2001\t2002\t2003\n";
        let ids = ProcIds::parse(text);
        assert_eq!(
            ids,
            ProcIds {
                uid: 1000,
                gid: 2000,
                umask: 0o027
            }
        );
        // A status without the lines (a kernel before 4.7 lacks Umask:) keeps the fallback.
        assert_eq!(ProcIds::parse("Name:\tx\nUid:\tbad\n"), ProcIds::FALLBACK);
    }

    /// One string per option, and what it must change.
    type Check = fn(&FuseOptions) -> bool;

    #[test]
    fn each_option_has_its_effect() {
        let cases: &[(&str, Check)] = &[
            ("ro", |o| o.volume.placement.read_only),
            ("ro,rw", |o| !o.volume.placement.read_only),
            ("sync", |o| o.volume.sync),
            ("sync,async", |o| !o.volume.sync),
            ("sync,dirsync", |o| o.volume.sync),
            ("dirsync", |o| !o.volume.sync),
            ("flush", |o| o.flush),
            ("quiet", |o| o.quiet),
            ("showexec", |o| o.showexec),
            ("uid=1234", |o| o.uid == 1234),
            ("gid=4321", |o| o.gid == 4321),
            ("umask=027", |o| o.fmask == 0o027 && o.dmask == 0o027),
            ("umask=0,fmask=133", |o| o.fmask == 0o133 && o.dmask == 0),
            ("dmask=022", |o| o.dmask == 0o022),
            ("allow_utime=20", |o| {
                o.allow_utime == Some(0o020) && o.allow_utime_bits() == 0o20
            }),
            ("shortname=lower", |o| {
                o.volume.shortname == ShortnameMode::Lower
            }),
            ("shortname=win95", |o| {
                o.volume.shortname == ShortnameMode::Win95
            }),
            ("shortname=winnt", |o| {
                o.volume.shortname == ShortnameMode::Winnt
            }),
            ("shortname=lower,shortname=mixed", |o| {
                o.volume.shortname == ShortnameMode::Mixed
            }),
            ("nocase", |o| o.volume.shortname == ShortnameMode::Win95),
            ("utf8", |o| o.utf8),
            ("utf8=yes", |o| o.utf8),
            ("utf8,utf8=false", |o| !o.utf8),
            ("time_offset=60", |o| o.volume.tz_offset_minutes == 60),
            ("time_offset=-90,tz=UTC", |o| {
                o.volume.tz_offset_minutes == 0
            }),
            ("errors=continue", |o| {
                o.volume.errors == ErrorsPolicy::Continue
            }),
            ("errors=panic", |o| o.volume.errors == ErrorsPolicy::Panic),
            ("era=v5.9", |o| o.volume.era == Era::V5_9),
            ("era=alt-b", |o| o.volume.era == Era::AltB),
            ("on_bug=warn", |o| o.volume.on_bug == OnBug::Warn),
            ("on_bug=panic", |o| o.volume.on_bug == OnBug::Panic),
            ("cache=kernel", |o| o.cache == CacheMode::Kernel),
            ("cache=kernel,cache=direct", |o| {
                o.cache == CacheMode::Direct
            }),
            ("threads=16", |o| o.threads == 16),
            ("read_ahead_kb=0", |o| o.read_ahead_kb == Some(0)),
            ("read_ahead_kb=512", |o| o.read_ahead_kb == Some(512)),
            ("io_threads=8", |o| o.volume.io_threads == 8),
            ("io_latency_us=250", |o| {
                o.volume.io_latency == Duration::from_micros(250)
            }),
            ("wake_delay_us=1000", |o| {
                o.volume.wake_delay == Duration::from_millis(1)
            }),
            ("dirty_expire_ms=100", |o| {
                o.volume.writeback.expire == Duration::from_millis(100)
            }),
            ("writeback_interval_ms=0", |o| {
                o.volume.writeback.interval.is_zero()
            }),
            ("dirty_ratio=50,dirty_background_ratio=40", |o| {
                let wb = &o.volume.writeback;
                wb.dirty_ratio == 50 && wb.dirty_background_ratio == 40
            }),
            ("offset=1048576", |o| {
                o.volume.placement.offset == Some(1 << 20)
            }),
            ("partition=2", |o| o.volume.placement.partition == Some(2)),
            ("allow_other", |o| o.allow_other),
            ("allow_root", |o| o.allow_root),
            ("default_permissions", |o| o.default_permissions),
            ("fsname=/img/a.img", |o| {
                o.fsname.as_deref() == Some("/img/a.img")
            }),
            ("subtype=fat", |o| o.subtype.as_deref() == Some("fat")),
            ("nosuid,nodev,noexec,noatime", |o| {
                o.vfs
                    == VfsFlags {
                        nosuid: true,
                        nodev: true,
                        noexec: true,
                        noatime: true,
                    }
            }),
            ("nosuid,suid,nodev,dev,noexec,exec", |o| {
                o.vfs == VfsFlags::default()
            }),
            ("noatime,relatime", |o| !o.vfs.noatime),
            ("noatime,strictatime", |o| !o.vfs.noatime),
        ];
        for (s, check) in cases {
            assert!(check(&parse(s)), "{s:?} did not have its effect");
        }
    }

    #[test]
    fn later_strings_win() {
        init();
        let o = FuseOptions::parse(["uid=5,era=v5.9,ro", "uid=7,rw", "era=v6.9"]).expect("valid");
        assert_eq!(o.uid, 7);
        assert_eq!(o.volume.era, Era::V6_9);
        assert!(!o.volume.placement.read_only);
        // apply on an existing value keeps what the new string does not mention.
        let mut o = parse("threads=2,flush");
        o.apply("threads=3").expect("valid");
        assert_eq!((o.threads, o.flush), (3, true));
    }

    #[test]
    fn rules_between_options_wait_for_the_last_string() {
        init();
        // Lowering dirty_ratio below the default background ratio first is fine, as long as the
        // next string fixes it.
        let o = FuseOptions::parse(["dirty_ratio=5", "dirty_background_ratio=2"]).expect("valid");
        let wb = &o.volume.writeback;
        assert_eq!((wb.dirty_ratio, wb.dirty_background_ratio), (5, 2));
        assert!(refusal("dirty_ratio=5").contains("dirty_background_ratio"));
        assert!(refusal("dirty_ratio=30,dirty_background_ratio=30").contains("dirty_ratio"));
        assert!(refusal("offset=512,partition=1").contains("partition="));
        assert!(refusal("allow_other,allow_root").contains("allow_root"));
    }

    #[test]
    fn every_refusal_names_its_option() {
        let cases: &[(&str, &str)] = &[
            ("bogus", "'bogus'"),
            ("uid=abc", "uid="),
            ("uid=-1", "uid="),
            ("uid=4294967295", "uid="),
            ("gid=", "gid="),
            ("umask=800", "umask="),
            ("fmask=1000", "fmask="),
            ("dmask=+22", "dmask="),
            ("allow_utime=9", "allow_utime="),
            ("shortname=dos", "shortname="),
            ("utf8=maybe", "utf8="),
            ("tz=CET", "tz="),
            ("time_offset=1441", "time_offset="),
            ("errors=ignore", "errors="),
            ("iocharset=iso8859-1", "iocharset="),
            ("codepage=850", "codepage="),
            ("check=x", "check="),
            ("era=v9", "era="),
            ("on_bug=ignore", "on_bug="),
            ("cache_mb=0", "cache_mb="),
            ("cache=none", "cache="),
            ("threads=0", "threads="),
            ("threads=65", "threads="),
            ("read_ahead_kb=513", "read_ahead_kb="),
            ("read_ahead_kb=1M", "read_ahead_kb="),
            ("io_threads=0", "io_threads="),
            ("io_latency_us=10000001", "io_latency_us="),
            ("wake_delay_us=1s", "wake_delay_us="),
            ("dirty_expire_ms=86400001", "dirty_expire_ms="),
            ("writeback_interval_ms=-1", "writeback_interval_ms="),
            ("dirty_ratio=0", "dirty_ratio="),
            ("dirty_ratio=101", "dirty_ratio="),
            ("dirty_background_ratio=100", "dirty_background_ratio="),
            ("offset=0x", "offset="),
            ("offset=12k", "offset="),
            ("partition=0", "partition="),
            ("fsname=", "fsname="),
            ("log=", "log="),
            ("conv=x", "conv="),
            ("fat=twelve", "fat="),
            ("nfs", "'nfs'"),
            ("nfs=stale_rw", "'nfs'"),
            ("rodir", "'rodir'"),
            ("sys_immutable", "'sys_immutable'"),
            ("dos1xfloppy", "'dos1xfloppy'"),
            ("uni_xlate", "'uni_xlate'"),
            ("nonumtail=1", "'nonumtail'"),
            ("ro=1", "'ro'"),
            ("uid", "'uid'"),
            (" ro", "' ro'"),
            ("ro ", "'ro '"),
            ("dots", "'dots'"),
        ];
        for (s, named) in cases {
            let msg = refusal(s);
            assert!(msg.contains(named), "{s:?}: {msg:?} does not name {named}");
            assert!(msg.starts_with("fatcache: "), "{s:?}: {msg:?}");
        }
    }

    #[test]
    fn readahead_is_set_by_default_only_where_the_kernel_caches() {
        assert_eq!(
            parse("cache=kernel").read_ahead_kb(),
            Some(MAX_READ_AHEAD_KB)
        );
        assert_eq!(parse("cache=direct").read_ahead_kb(), None);
        assert_eq!(
            parse("cache=kernel,read_ahead_kb=64").read_ahead_kb(),
            Some(64)
        );
        assert_eq!(parse("read_ahead_kb=0").read_ahead_kb(), Some(0));
        assert!(refusal("read_ahead_kb=4096").contains("from 0 to 512"));
    }

    #[test]
    fn value_refusals_say_what_is_accepted() {
        assert_eq!(
            refusal("era=v9"),
            "fatcache: bad value 'v9' for era= (one of v5.8, v5.9, v5.10, v5.11, v6.9, \
             alt-a, alt-b)"
        );
        assert!(refusal("threads=99").contains("from 1 to 64"));
        assert!(refusal("shortname=dos").contains("lower, win95, winnt or mixed"));
        assert!(refusal("errors=x").contains("remount-ro"));
        assert!(refusal("on_bug=x").contains("abort, warn or panic"));
        assert!(refusal("uid").contains("needs a value"));
        assert!(refusal("flush=1").contains("takes no value"));
    }

    #[test]
    fn generic_mount_options_are_accepted() {
        let generic = "defaults,rw,suid,dev,exec,atime,noatime,relatime,norelatime,\
                       strictatime,nodiratime,diratime,auto,noauto,user,nouser,users,_netdev,\
                       nofail,x-systemd.automount,x-gvfs-show,x-mount.mkdir=0755,allow_other,\
                       default_permissions,fsname=/dev/loop0,subtype=fatcache,dirsync";
        let o = parse(generic);
        // strictatime after noatime: the last atime option wins.
        assert!(!o.vfs.noatime);
        assert!(o.allow_other && o.default_permissions);
        let vfat_ignored = "usefree,discard,debug,posix,check=s,check=relaxed,iocharset=utf8,\
                            codepage=437,uni_xlate=0,nonumtail=no,conv=binary,fat=32,\
                            blocksize=512,cvf_format=x,cvf_options=y";
        let o = parse(vfat_ignored);
        let d = FuseOptions::default();
        assert_eq!((o.utf8, o.fmask, o.vfs), (d.utf8, d.fmask, d.vfs));
    }

    #[test]
    fn empty_entries_are_skipped() {
        assert!(parse(",,ro,,").volume.placement.read_only);
        assert!(!parse("").volume.placement.read_only);
    }

    #[test]
    fn history_switches_the_frame_histories() {
        assert!(parse("").volume.history);
        assert!(!parse("history=off").volume.history);
        assert!(parse("history=on").volume.history);
        assert!(refusal("history=0").contains("on or off"));
    }

    #[test]
    fn cache_mb_sets_frames() {
        assert_eq!(parse("cache_mb=1").volume.cache_frames, 256);
        assert_eq!(parse("cache_mb=128").volume.cache_frames, 128 * 256);
        assert_eq!(parse("cache_mb=65536").volume.cache_frames, 65_536 * 256);
        assert!(refusal("cache_mb=65537").contains("cache_mb="));
    }

    #[test]
    fn time_offset_range() {
        assert_eq!(parse("time_offset=-1440").volume.tz_offset_minutes, -1440);
        assert_eq!(parse("time_offset=1440").volume.tz_offset_minutes, 1440);
        assert_eq!(parse("time_offset=0").volume.tz_offset_minutes, 0);
        for s in [
            "time_offset=-1441",
            "time_offset=1441",
            "time_offset=--5",
            "time_offset=-",
        ] {
            assert!(refusal(s).contains("-1440 to 1440"), "{s}");
        }
    }

    #[test]
    fn offset_hex_and_decimal() {
        assert_eq!(
            parse("offset=0x100000").volume.placement.offset,
            Some(0x10_0000)
        );
        assert_eq!(parse("offset=0XfF").volume.placement.offset, Some(255));
        assert_eq!(parse("offset=0").volume.placement.offset, Some(0));
        assert_eq!(parse("offset=32256").volume.placement.offset, Some(32_256));
        for s in [
            "offset=0xg",
            "offset=0x1_0",
            "offset=-1",
            "offset=0x10000000000000000",
        ] {
            assert!(refusal(s).contains("offset="), "{s}");
        }
    }

    #[test]
    fn table_of_strings() {
        let cases: &[(&str, bool)] = &[
            (
                "ro,uid=1000,gid=1000,umask=022,shortname=mixed,utf8,errors=remount-ro",
                true,
            ),
            ("rw,sync,flush,quiet,showexec,tz=UTC", true),
            (
                "era=v5.10,on_bug=warn,cache_mb=16,cache=direct,threads=8",
                true,
            ),
            (
                "wake_delay_us=500,io_latency_us=100,io_threads=4,partition=1",
                true,
            ),
            (
                "dirty_expire_ms=3000,writeback_interval_ms=500,dirty_ratio=40",
                true,
            ),
            (
                "nosuid,nodev,noexec,relatime,_netdev,nofail,x-systemd.device-timeout=5",
                true,
            ),
            ("allow_root,fsname=img,subtype=fatcache", true),
            ("fmask=0133,dmask=0022,allow_utime=0022", true),
            ("umask=0777", true),
            ("umask=01000", false),
            ("ro,uid=1000,nosuch", false),
            ("uid=1000 ", false),
            ("RO", false),
            ("Era=v5.9", false),
            ("era=V5.9", false),
            ("tz=utc", false),
            ("cache_mb=1.5", false),
            ("threads=4,threads=0", false),
            ("iocharset=utf-8", false),
            ("x-anything=goes,with=", false),
        ];
        init();
        for (s, ok) in cases {
            let got = FuseOptions::parse([*s]);
            assert_eq!(got.is_ok(), *ok, "{s:?}: {got:?}");
        }
    }

    #[test]
    fn help_names_every_option() {
        let help = help_text();
        for name in FLAG_NAMES
            .split_whitespace()
            .chain(VALUED_NAMES.split_whitespace())
        {
            assert!(help.contains(name), "help_text lacks {name}");
        }
        for e in ALL_ERAS {
            assert!(help.contains(e.name()), "help_text lacks era {}", e.name());
        }
        assert!(help.is_ascii());
    }

    #[test]
    fn known_names_are_known_to_the_parser() {
        init();
        // A flag given a value, or a valued option given none, must be told apart from a typo:
        // that only works if the name lists match the parser.
        for name in FLAG_NAMES.split_whitespace() {
            if is_listed(VALUED_NAMES, name) {
                continue;
            }
            let msg = refusal(&format!("{name}=1"));
            assert!(msg.contains("takes no value"), "{name}: {msg}");
        }
        for name in VALUED_NAMES.split_whitespace() {
            if is_listed(FLAG_NAMES, name) {
                continue;
            }
            let msg = refusal(name);
            assert!(msg.contains("needs a value"), "{name}: {msg}");
        }
    }

    #[test]
    fn fuser_config_carries_the_kernel_side() {
        use fuser::MountOption as M;
        let c = parse("ro,allow_root,nosuid,noexec,fsname=img,threads=6").fuser_config();
        assert_eq!(c.acl, fuser::SessionACL::RootAndOwner);
        assert_eq!(c.n_threads, Some(6));
        for want in [
            M::Subtype("fatcache".into()),
            M::FSName("img".into()),
            M::RO,
            M::NoSuid,
        ] {
            assert!(c.mount_options.contains(&want), "{want:?} missing");
        }
        assert!(c.mount_options.contains(&M::NoExec));
        assert!(!c.mount_options.contains(&M::NoDev));
        let c = parse("allow_other,default_permissions").fuser_config();
        assert_eq!(c.acl, fuser::SessionACL::All);
        assert!(c.mount_options.contains(&M::DefaultPermissions));
        assert!(!c.mount_options.contains(&M::RO));
        assert_eq!(parse("").fuser_config().acl, fuser::SessionACL::Owner);
    }
}
