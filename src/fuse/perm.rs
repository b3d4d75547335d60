//! Who may change a file's times on a vfat mount: vfat's `allow_utime=` rule, and the VFS's
//! rule for setting both times to the current time, which runs before it.
//!
//! Models: fs/fat/file.c fat_allow_set_time() and fat_setattr() (v5.10), with fs/attr.c
//! notify_change() and setattr_prepare() (v5.10) for the part the VFS decides.
//!
//! The owner (the mount's `uid=`) and a caller with CAP_FOWNER may always set times. For
//! anyone else:
//! * Both times to now (touch, utimes with no times, UTIME_NOW twice) needs write access by
//!   the file's mode, as the VFS's write-permission test grants it (CAP_DAC_OVERRIDE too);
//!   otherwise EACCES. vfat itself adds nothing here.
//! * Any other change (a given time, or only one of the two times) needs the write bit of
//!   `allow_utime` for the caller's class: 020 for a member of the file's group (the mount's
//!   `gid=`, primary or supplementary), 002 for everyone else; otherwise EPERM, which `quiet`
//!   turns into a success that changes nothing, as it does for every refusal of fat_setattr.
//!
//! Deviation: through FUSE the kernel decides first. With `default_permissions`, which the
//! mount always asks for, the kernel's setattr_prepare() refuses the second kind of change to a
//! non-owner without CAP_FOWNER before the request is sent, so the grant `allow_utime` makes
//! beyond the owner never takes effect (a kernel vfat mount honours it); the refusals are the
//! same. The check here judges the requests that do arrive, by the same rule.

use fuser::{Request, TimeOrNow};

use crate::error::FsError;

/// CAP_DAC_OVERRIDE's bit in the capability sets.
const CAP_DAC_OVERRIDE: u32 = 1;

/// CAP_FOWNER's bit in the capability sets.
const CAP_FOWNER: u32 = 3;

/// The write bit of the "others" class of a mode (MAY_WRITE after the class shift).
const MAY_WRITE: u32 = 0o002;

/// What a setattr asks of the times.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TimeChange {
    /// Nothing, or only the stamp a truncate gives the modification time.
    None,
    /// Both times to now.
    BothNow,
    /// A given time, or one time alone (ATTR_TIMES_SET in the kernel's terms).
    Given,
}

impl TimeChange {
    /// The change a setattr with these fields asks for. A size change may come with the
    /// modification time set to now (truncate by path): that is the truncate's own stamp,
    /// which the right to change the size covers.
    pub(crate) fn of(atime: Option<TimeOrNow>, mtime: Option<TimeOrNow>, size: bool) -> Self {
        let given = |t: Option<TimeOrNow>| matches!(t, Some(TimeOrNow::SpecificTime(_)));
        match (atime, mtime) {
            (None, None) => TimeChange::None,
            _ if given(atime) || given(mtime) => TimeChange::Given,
            _ if size => TimeChange::None,
            (Some(TimeOrNow::Now), Some(TimeOrNow::Now)) => TimeChange::BothNow,
            _ => TimeChange::Given,
        }
    }
}

/// The process behind a request: its filesystem ids, supplementary groups and capabilities.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Caller {
    /// fsuid, as FUSE sends it.
    pub(crate) uid: u32,
    /// fsgid, as FUSE sends it.
    pub(crate) gid: u32,
    /// Supplementary groups.
    pub(crate) groups: Vec<u32>,
    /// Effective capabilities, by bit.
    pub(crate) caps: u64,
}

impl Caller {
    /// The caller of `req`: the ids FUSE sends, the groups and capabilities from the
    /// thread's /proc status. A thread gone by then counts as having no supplementary groups
    /// and, unless it is uid 0, no capabilities.
    pub(crate) fn of(req: &Request) -> Caller {
        let path = format!("/proc/{}/status", req.pid());
        let status = std::fs::read_to_string(&path).ok();
        Caller::from_status(req.uid(), req.gid(), status.as_deref())
    }

    /// The caller with ids `uid` and `gid` whose /proc status reads `status`.
    pub(crate) fn from_status(uid: u32, gid: u32, status: Option<&str>) -> Caller {
        let field = |name: &str| {
            status?
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(str::trim)
        };
        let groups = field("Groups:")
            .map(|g| {
                g.split_whitespace()
                    .filter_map(|n| n.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        let root_caps = if uid == 0 { u64::MAX } else { 0 };
        let caps = field("CapEff:").map_or(root_caps, |c| {
            u64::from_str_radix(c, 16).unwrap_or(root_caps)
        });
        Caller {
            uid,
            gid,
            groups,
            caps,
        }
    }

    fn capable(&self, cap: u32) -> bool {
        self.caps & (1 << cap) != 0
    }

    /// Whether the caller is in group `gid` (in_group_p).
    fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.contains(&gid)
    }
}

/// The owner, group and permission bits a file shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Owner {
    /// `uid=`.
    pub(crate) uid: u32,
    /// `gid=`.
    pub(crate) gid: u32,
    /// The permission bits (0777 at most).
    pub(crate) perm: u32,
}

/// Whether `caller` may make `change` to the times of a file of `owner` under
/// `allow_utime`: `NotPermitted` (EPERM) or `AccessDenied` (EACCES) if not.
///
/// Models: fs/fat/file.c fat_allow_set_time() (v5.10) for `Given`; fs/attr.c
/// notify_change() (v5.10) for `BothNow`.
pub(crate) fn may_set_times(
    caller: &Caller,
    owner: Owner,
    allow_utime: u32,
    change: TimeChange,
) -> Result<(), FsError> {
    if change == TimeChange::None || caller.uid == owner.uid || caller.capable(CAP_FOWNER) {
        return Ok(());
    }
    let in_group = caller.in_group(owner.gid);
    // The class's bits moved down to the "others" place, as the kernel shifts its masks.
    let class = |bits: u32| if in_group { bits >> 3 } else { bits };
    match change {
        TimeChange::BothNow => {
            let writable = class(owner.perm) & MAY_WRITE != 0;
            if writable || caller.capable(CAP_DAC_OVERRIDE) {
                Ok(())
            } else {
                Err(FsError::AccessDenied)
            }
        }
        _ if class(allow_utime) & MAY_WRITE != 0 => Ok(()),
        _ => Err(FsError::NotPermitted),
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::fuse::options::FuseOptions;

    const OWNER: Owner = Owner {
        uid: 1000,
        gid: 100,
        perm: 0o775,
    };

    fn user(uid: u32, gid: u32, groups: &[u32]) -> Caller {
        Caller {
            uid,
            gid,
            groups: groups.to_vec(),
            caps: 0,
        }
    }

    fn errno(r: Result<(), FsError>) -> i32 {
        r.map_or_else(|e| e.errno(), |()| 0)
    }

    #[test]
    fn the_change_a_setattr_asks_for() {
        let at = TimeOrNow::SpecificTime(UNIX_EPOCH + Duration::from_secs(1_000_000_000));
        let now = TimeOrNow::Now;
        #[rustfmt::skip]
        let cases = [
            ("no times", None, None, false, TimeChange::None),
            ("touch", Some(now), Some(now), false, TimeChange::BothNow),
            ("touch -d", Some(at), Some(at), false, TimeChange::Given),
            ("touch -a", Some(now), None, false, TimeChange::Given),
            ("touch -m", None, Some(now), false, TimeChange::Given),
            ("one given, one now", Some(at), Some(now), false, TimeChange::Given),
            ("truncate's stamp", None, Some(now), true, TimeChange::None),
            ("a size and a given time", None, Some(at), true, TimeChange::Given),
        ];
        for (what, atime, mtime, size, want) in cases {
            assert_eq!(TimeChange::of(atime, mtime, size), want, "{what}");
        }
    }

    #[test]
    fn allow_utime_decides_given_times_for_group_and_others() {
        let (member, other) = (user(2000, 100, &[]), user(2000, 200, &[]));
        let supplementary = user(2000, 200, &[7, 100]);
        let given = TimeChange::Given;
        // The bits a mount has without allow_utime=, for a dmask.
        let vfat_default = |dmask| {
            let opts = FuseOptions {
                dmask,
                allow_utime: None,
                ..FuseOptions::default()
            };
            opts.allow_utime_bits()
        };
        #[rustfmt::skip]
        let cases = [
            ("owner, nothing allowed", user(1000, 5, &[]), 0o000, 0),
            ("group member, 020", member.clone(), 0o020, 0),
            ("group member, 002 only", member.clone(), 0o002, libc::EPERM),
            ("supplementary member, 020", supplementary.clone(), 0o020, 0),
            ("other, 002", other.clone(), 0o002, 0),
            ("other, 020 only", other.clone(), 0o020, libc::EPERM),
            ("other, nothing", other.clone(), 0o000, libc::EPERM),
            ("other, vfat's default for dmask 022", other.clone(), vfat_default(0o022), libc::EPERM),
            ("other, vfat's default for dmask 0", other.clone(), vfat_default(0), 0),
            ("member, vfat's default for dmask 002", member.clone(), vfat_default(0o002), 0),
            ("other, vfat's default for dmask 002", other.clone(), vfat_default(0o002), libc::EPERM),
        ];
        for (what, caller, allow, want) in cases {
            assert_eq!(
                errno(may_set_times(&caller, OWNER, allow, given)),
                want,
                "{what}"
            );
        }
    }

    #[test]
    fn both_now_needs_write_access_by_the_mode() {
        let (member, other) = (user(2000, 100, &[]), user(2000, 200, &[]));
        let now = TimeChange::BothNow;
        let with = |perm| Owner { perm, ..OWNER };
        #[rustfmt::skip]
        let cases = [
            ("group member, group-writable", member.clone(), with(0o775), 0),
            ("group member, only others may write", member.clone(), with(0o757), libc::EACCES),
            ("other, others may write", other.clone(), with(0o777), 0),
            ("other, read-only for others", other.clone(), with(0o775), libc::EACCES),
            ("owner, read-only file", user(1000, 100, &[]), with(0o555), 0),
        ];
        for (what, caller, owner, want) in cases {
            // allow_utime has no say in this: 0 and 022 decide alike.
            for allow in [0, 0o022] {
                assert_eq!(
                    errno(may_set_times(&caller, owner, allow, now)),
                    want,
                    "{what}"
                );
            }
        }
        assert_eq!(
            errno(may_set_times(&other, OWNER, 0, TimeChange::None)),
            0,
            "no time change asks for nothing"
        );
    }

    #[test]
    fn capabilities_come_from_proc_status() {
        let status =
            "Name:\ttouch\nUid:\t0\t0\t0\t0\nGroups:\t4 24 100 \nCapEff:\t000001ffffffffff\n";
        let root = Caller::from_status(0, 0, Some(status));
        assert_eq!(root.groups, [4, 24, 100]);
        assert!(root.capable(CAP_FOWNER) && root.capable(CAP_DAC_OVERRIDE));
        let given = TimeChange::Given;
        assert_eq!(
            errno(may_set_times(&root, OWNER, 0, given)),
            0,
            "CAP_FOWNER"
        );
        // A root whose capabilities were dropped is just another user.
        let dropped = "Groups:\t\nCapEff:\t0000000000000000\n";
        let weak = Caller::from_status(0, 0, Some(dropped));
        assert_eq!(weak.groups, Vec::<u32>::new());
        assert_eq!(errno(may_set_times(&weak, OWNER, 0, given)), libc::EPERM);
        assert_eq!(
            errno(may_set_times(&weak, OWNER, 0, TimeChange::BothNow)),
            libc::EACCES
        );
        // A caller already gone: uid 0 keeps root's power, others have none.
        assert!(Caller::from_status(0, 0, None).capable(CAP_FOWNER));
        assert!(!Caller::from_status(5, 5, None).capable(CAP_FOWNER));
    }
}
