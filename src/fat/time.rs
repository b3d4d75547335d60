//! DOS timestamps: the 16-bit date and time fields of a directory entry, the creation-time
//! hundredths byte, and their conversion to and from Unix time.
//!
//! Models: fs/fat/misc.c fat_time_fat2unix(), fat_time_unix2fat(), fat_truncate_atime(),
//! fat_truncate_time() (v5.10). Format: fatgen103, "Date and Time Formats".
//!
//! On disk (little-endian 16-bit words):
//!
//! | word | bits   | holds                        |
//! |------|--------|------------------------------|
//! | date | 15..9  | years since 1980, 0..=127    |
//! | date | 8..5   | month, 1..=12                |
//! | date | 4..0   | day of the month, 1..=31     |
//! | time | 15..11 | hours, 0..=23                |
//! | time | 10..5  | minutes, 0..=59              |
//! | time | 4..0   | seconds in 2 s units, 0..=29 |
//!
//! The creation time also has a byte of hundredths of a second, 0..=199, so it carries the odd
//! second the time word cannot. Access times have a date word only.
//!
//! FAT stores local time. `tz_offset_minutes` is how far local time is ahead of UTC (east
//! positive: +60 for UTC+1). `tz=UTC` is offset 0 and the `time_offset=` mount option gives the
//! offset in minutes. When neither is given the kernel uses the system timezone (`sys_tz`, set
//! by settimeofday); fatcache has no such global, so its caller decides the offset and passes it.
//!
//! All calendar arithmetic is done here (proleptic Gregorian day counts), with no date crate.
//! Pure functions: no locks, no I/O, cannot fail.

/// Seconds in a day.
const SECS_PER_DAY: i64 = 86_400;
/// Nanoseconds in one unit of the hundredths byte.
const NANOS_PER_CENTI: u32 = 10_000_000;
/// The first year a DOS date can hold.
const FAT_EPOCH_YEAR: i64 = 1980;
/// The last year a DOS date can hold (1980 + 127).
const FAT_LAST_YEAR: i64 = 2107;

/// The DOS date 1980-01-01, the earliest representable.
pub const FAT_DATE_MIN: u16 = dos_date(1980, 1, 1);
/// The DOS date 2107-12-31, the latest representable.
pub const FAT_DATE_MAX: u16 = dos_date(2107, 12, 31);
/// The DOS time 23:59:58, the latest representable.
pub const FAT_TIME_MAX: u16 = dos_time(23, 59, 58);
/// The largest valid hundredths byte: 1.99 s past the time word.
pub const FAT_CENTIS_MAX: u8 = 199;
/// Unix seconds of 1980-01-01 00:00:00 UTC.
pub const FAT_UNIX_MIN: i64 = 315_532_800;
/// Unix seconds of 2107-12-31 23:59:58 UTC.
pub const FAT_UNIX_MAX: i64 = 4_354_819_198;

/// Packs a calendar date (year 1980..=2107) into a DOS date word; fields are masked, not checked.
pub const fn dos_date(year: u16, month: u8, day: u8) -> u16 {
    (year.wrapping_sub(1980) & 0x7f) << 9 | ((month as u16) & 0xf) << 5 | ((day as u16) & 0x1f)
}

/// Packs a time of day into a DOS time word; odd seconds round down, fields are masked.
pub const fn dos_time(hour: u8, minute: u8, second: u8) -> u16 {
    ((hour as u16) & 0x1f) << 11 | ((minute as u16) & 0x3f) << 5 | ((second as u16 / 2) & 0x1f)
}

/// Days from 1970-01-01 to `year-month-day` in the proleptic Gregorian calendar.
///
/// Counts in 400-year eras of 146097 days, with years starting in March so that the leap day
/// is the last day of its year and month lengths follow a fixed pattern.
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = i64::from((month + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The calendar date `(year, month, day)` of a day count from 1970-01-01; inverse of
/// [`days_from_civil`].
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    // Both fit: the day is 1..=31 and the March-based month 0..=11.
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Whether `year` has a February 29th.
fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

/// Days from 1970-01-01 to the first of the month of a DOS date, as the kernel reads it.
///
/// The kernel reads month 0 as January and months 13..=15 through the zero entries of its
/// cumulative-days table, i.e. as January, yet still adds the leap day it adds to any month
/// past February in a leap year. We read them the same way so that both drivers show the
/// same time for a damaged entry.
fn month_start_days(year: i64, month: u32) -> i64 {
    match month {
        1..=12 => days_from_civil(year, month, 1),
        0 => days_from_civil(year, 1, 1),
        _ => days_from_civil(year, 1, 1) + i64::from(is_leap(year)),
    }
}

/// Local seconds since the Unix epoch of a DOS date word at midnight.
fn date_to_local_secs(date: u16) -> i64 {
    let year = FAT_EPOCH_YEAR + i64::from(date >> 9);
    let month = u32::from((date >> 5) & 0xf);
    // Day 0 reads as the 1st; days past the month's end run on into the next month.
    let day = i64::from((date & 0x1f).max(1));
    (month_start_days(year, month) + day - 1) * SECS_PER_DAY
}

/// Seconds since midnight of a DOS time word. Out-of-range hours or minutes are not clamped,
/// they simply add up, as in the kernel.
fn time_to_secs(time: u16) -> i64 {
    let two_secs = i64::from(time & 0x1f);
    let minutes = i64::from((time >> 5) & 0x3f);
    let hours = i64::from(time >> 11);
    hours * 3600 + minutes * 60 + two_secs * 2
}

/// Converts a DOS date, time and hundredths byte in local time to Unix `(seconds, nanoseconds)`.
///
/// Models: fs/fat/misc.c fat_time_fat2unix() (v5.10).
///
/// `centis` adds whole seconds for its hundreds and 10 ms units for the rest, unchecked, so a
/// corrupt 255 reads as 2.55 s like the kernel reads it. Pass 0 for fields that have no
/// hundredths byte (modification time).
pub fn fat_to_unix(date: u16, time: u16, centis: u8, tz_offset_minutes: i32) -> (i64, u32) {
    let local = date_to_local_secs(date) + time_to_secs(time);
    let secs = local - i64::from(tz_offset_minutes) * 60 + i64::from(centis / 100);
    (secs, u32::from(centis % 100) * NANOS_PER_CENTI)
}

/// Converts Unix `(seconds, nanoseconds)` to a DOS `(date, time, hundredths)` in local time.
///
/// Models: fs/fat/misc.c fat_time_unix2fat() (v5.10).
///
/// Times before 1980-01-01 00:00:00 local become exactly that, with hundredths 0. Times after
/// 2107 become 2107-12-31 23:59:58 with hundredths 199, i.e. the last representable instant
/// 23:59:59.99, as the kernel clamps. The hundredths byte carries the odd second plus the
/// 10 ms units of `nanos`; `nanos` above one second counts as 999 999 999.
pub fn unix_to_fat(secs: i64, nanos: u32, tz_offset_minutes: i32) -> (u16, u16, u8) {
    let local = secs.saturating_add(i64::from(tz_offset_minutes) * 60);
    let (year, month, day) = civil_from_days(local.div_euclid(SECS_PER_DAY));
    if year < FAT_EPOCH_YEAR {
        return (FAT_DATE_MIN, 0, 0);
    }
    if year > FAT_LAST_YEAR {
        return (FAT_DATE_MAX, FAT_TIME_MAX, FAT_CENTIS_MAX);
    }
    let tod = local.rem_euclid(SECS_PER_DAY);
    // In range by the checks above: year - 1980 is 0..=127, tod is 0..86400.
    let date = ((year - FAT_EPOCH_YEAR) as u16) << 9 | (month as u16) << 5 | day as u16;
    let time = dos_time((tod / 3600) as u8, (tod / 60 % 60) as u8, (tod % 60) as u8);
    // Time offsets are whole minutes, so the local odd second is the UTC odd second.
    let odd = (tod % 2) as u8;
    let centis = odd * 100 + (nanos.min(999_999_999) / NANOS_PER_CENTI) as u8;
    (date, time, centis)
}

/// Converts an access-date word (local midnight) to Unix seconds.
///
/// Models: the kernel's read of `adate` through fat_time_fat2unix() with time and hundredths 0.
pub fn fat_date_to_unix(date: u16, tz_offset_minutes: i32) -> i64 {
    fat_to_unix(date, 0, 0, tz_offset_minutes).0
}

/// Converts Unix seconds to an access-date word (the local calendar day), clamped as
/// [`unix_to_fat`] clamps.
pub fn unix_to_fat_date(secs: i64, tz_offset_minutes: i32) -> u16 {
    unix_to_fat(secs, 0, tz_offset_minutes).0
}

/// Truncates an access time to local midnight, the only precision the access date keeps.
///
/// Models: fs/fat/misc.c fat_truncate_atime() (v5.10).
///
/// Deviation: the day boundary is found with a floor, where the kernel's truncating division
/// rounds times before 1970 up; FAT cannot store those anyway.
pub fn fat_truncate_atime(secs: i64, tz_offset_minutes: i32) -> i64 {
    let offset = i64::from(tz_offset_minutes) * 60;
    let local = secs.saturating_add(offset);
    let midnight = local.saturating_sub(local.rem_euclid(SECS_PER_DAY));
    midnight.saturating_sub(offset)
}

/// Truncates a modification time to the 2 s the time word keeps; takes and returns
/// `(seconds, nanoseconds)` like its siblings, though the nanoseconds always go.
///
/// Models: the 2-second truncation fs/fat/misc.c fat_truncate_time() applies to mtime (v5.10).
pub fn fat_truncate_mtime(secs: i64, _nanos: u32) -> (i64, u32) {
    (secs & !1, 0)
}

/// Truncates a creation time to the 10 ms the time word plus hundredths byte keep.
///
/// Models: the 10 ms truncation fs/fat/misc.c fat_truncate_time() applies to vfat ctime (v5.10).
pub fn fat_truncate_crtime(secs: i64, nanos: u32) -> (i64, u32) {
    let nanos = nanos.min(999_999_999);
    (secs, nanos - nanos % NANOS_PER_CENTI)
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    /// One known answer: name, Unix (seconds, nanoseconds), DOS (date, time, hundredths), and
    /// the local offset in minutes.
    type Case = (&'static str, (i64, u32), (u16, u16, u8), i32);

    /// Instants FAT holds exactly, so each must convert both ways.
    #[rustfmt::skip]
    const EXACT: &[Case] = &[
        ("1980-01-01 00:00:00 UTC, the earliest",
            (315_532_800, 0), (0x0021, 0, 0), 0),
        ("2107-12-31 23:59:58 UTC, the latest even second",
            (4_354_819_198, 0), (0xff9f, 0xbf7d, 0), 0),
        ("1980-01-01 00:00:00 at UTC+11 is 1979-12-31 13:00 UTC",
            (315_493_200, 0), (0x0021, 0, 0), 660),
        ("leap day 2000-02-29 00:00:00",
            (951_782_400, 0), (dos_date(2000, 2, 29), 0, 0), 0),
        ("leap day 2004-02-29 00:00:00",
            (1_078_012_800, 0), (dos_date(2004, 2, 29), 0, 0), 0),
        ("leap day 1996-02-29 00:00:00",
            (825_552_000, 0), (dos_date(1996, 2, 29), 0, 0), 0),
        ("2100-02-28 00:00:00",
            (4_107_456_000, 0), (dos_date(2100, 2, 28), 0, 0), 0),
        ("2100 is not leap: 03-01 follows 02-28",
            (4_107_542_400, 0), (dos_date(2100, 3, 1), 0, 0), 0),
        ("odd second 1999-12-31 23:59:59 goes to the hundredths",
            (946_684_799, 0), (dos_date(1999, 12, 31), dos_time(23, 59, 58), 100), 0),
        ("10 ms field: 1980-01-01 00:00:01.99 is 2 s units 0 plus 199",
            (315_532_801, 990_000_000), (0x0021, 0, 199), 0),
        ("10 ms field: 1980-01-01 00:00:00.01",
            (315_532_800, 10_000_000), (0x0021, 0, 1), 0),
        ("UTC+1: 2004-02-29 00:30 UTC is 01:30 local",
            (1_078_014_600, 0), (dos_date(2004, 2, 29), dos_time(1, 30, 0), 0), 60),
        ("UTC-2: 2004-03-01 01:00 UTC is 02-29 23:00 local",
            (1_078_102_800, 0), (dos_date(2004, 2, 29), dos_time(23, 0, 0), 0), -120),
        ("2022-06-15 13:45:30.5",
            (1_655_300_730, 500_000_000), (dos_date(2022, 6, 15), dos_time(13, 45, 30), 50), 0),
    ];

    #[test]
    fn unix_to_fat_known_answers() {
        for (name, (secs, nanos), dos, tz) in EXACT {
            assert_eq!(unix_to_fat(*secs, *nanos, *tz), *dos, "{name}");
        }
    }

    #[test]
    fn fat_to_unix_known_answers() {
        for (name, unix, (date, time, centis), tz) in EXACT {
            assert_eq!(fat_to_unix(*date, *time, *centis, *tz), *unix, "{name}");
        }
    }

    /// A clamping case: name, Unix (seconds, nanoseconds), offset, the DOS fields expected.
    type ClampCase = (&'static str, (i64, u32), i32, (u16, u16, u8));

    const LOW: (u16, u16, u8) = (FAT_DATE_MIN, 0, 0);
    const HIGH: (u16, u16, u8) = (FAT_DATE_MAX, FAT_TIME_MAX, FAT_CENTIS_MAX);

    #[rustfmt::skip]
    const CLAMPS: &[ClampCase] = &[
        ("one second before 1980",                (FAT_UNIX_MIN - 1, 999_999_999), 0, LOW),
        ("the Unix epoch",                        (0, 0), 0, LOW),
        ("far past",                              (i64::MIN, 0), 0, LOW),
        ("1980 UTC is still 1979 at UTC-2",       (FAT_UNIX_MIN, 0), -120, LOW),
        ("2108-01-01 00:00:00",                   (4_354_819_200, 0), 0, HIGH),
        ("far future",                            (i64::MAX, 0), 0, HIGH),
        ("2107-12-31 23:30 UTC is 2108 at UTC+1", (4_354_817_400, 0), 60, HIGH),
        ("2107-12-31 23:59:59.99 is kept",        (FAT_UNIX_MAX + 1, 990_000_000), 0, HIGH),
        ("2107-12-31 23:59:58 is kept",           (FAT_UNIX_MAX, 0), 0, (0xff9f, 0xbf7d, 0)),
    ];

    #[test]
    fn clamping_at_the_ends_of_the_range() {
        for (name, (secs, nanos), tz, want) in CLAMPS {
            assert_eq!(unix_to_fat(*secs, *nanos, *tz), *want, "{name}");
        }
        assert_eq!(FAT_DATE_MIN, 0x0021);
        assert_eq!(FAT_DATE_MAX, 0xff9f);
        assert_eq!(FAT_TIME_MAX, 0xbf7d);
    }

    /// A corrupt-field case: name, DOS (date, time, hundredths), the Unix time expected.
    type CorruptCase = (&'static str, (u16, u16, u8), (i64, u32));

    /// 1984-01-01 00:00:00 UTC, a leap year.
    const JAN1_1984: i64 = 441_763_200;

    #[rustfmt::skip]
    const CORRUPT: &[CorruptCase] = &[
        ("day 0 reads as the 1st",           (4 << 9 | 1 << 5, 0, 0), (JAN1_1984, 0)),
        ("month 0 reads as January",         (4 << 9 | 1, 0, 0), (JAN1_1984, 0)),
        ("month 13 of a leap year reads as January plus the leap day",
                                             (4 << 9 | 13 << 5 | 1, 0, 0), (JAN1_1984 + 86_400, 0)),
        ("February 31st runs on into March", (dos_date(1985, 2, 31), 0, 0), (478_656_000, 0)),
        ("minute 63 adds up",
            (dos_date(1984, 1, 1), 63 << 5, 0), (JAN1_1984 + 3780, 0)),
        ("hour 31 adds up",
            (dos_date(1984, 1, 1), 31 << 11, 0), (JAN1_1984 + 111_600, 0)),
        ("hundredths 255 is 2.55 s",
            (dos_date(1984, 1, 1), 0, 255), (JAN1_1984 + 2, 550_000_000)),
    ];

    #[test]
    fn corrupt_fields_read_like_the_kernel() {
        for (name, (date, time, centis), want) in CORRUPT {
            assert_eq!(fat_to_unix(*date, *time, *centis, 0), *want, "{name}");
        }
    }

    #[test]
    fn access_date_keeps_the_local_day() {
        // 2004-02-29 23:30 UTC is already 03-01 at UTC+1.
        let secs = 1_078_097_400;
        assert_eq!(unix_to_fat_date(secs, 0), dos_date(2004, 2, 29), "UTC");
        assert_eq!(unix_to_fat_date(secs, 60), dos_date(2004, 3, 1), "UTC+1");
        assert_eq!(
            fat_date_to_unix(dos_date(2004, 3, 1), 60),
            1_078_095_600,
            "local midnight"
        );
        assert_eq!(unix_to_fat_date(0, 0), FAT_DATE_MIN, "clamped");
    }

    #[test]
    fn truncation_matches_what_is_stored() {
        assert_eq!(
            fat_truncate_atime(1_078_097_400, 0),
            1_078_012_800,
            "atime UTC"
        );
        assert_eq!(
            fat_truncate_atime(1_078_097_400, 60),
            1_078_095_600,
            "atime UTC+1"
        );
        assert_eq!(
            fat_truncate_atime(1_078_012_800, -120),
            1_077_933_600,
            "atime UTC-2"
        );
        assert_eq!(
            fat_truncate_mtime(946_684_799, 5),
            (946_684_798, 0),
            "mtime odd"
        );
        assert_eq!(
            fat_truncate_mtime(946_684_798, 5),
            (946_684_798, 0),
            "mtime even"
        );
        assert_eq!(
            fat_truncate_crtime(7, 123_456_789),
            (7, 120_000_000),
            "crtime"
        );
        assert_eq!(
            fat_truncate_crtime(7, u32::MAX),
            (7, 990_000_000),
            "crtime overlong nanos"
        );
        let far_past = fat_truncate_atime(i64::MIN, -60);
        assert!(far_past <= i64::MIN + SECS_PER_DAY, "atime far past");
        assert!(fat_truncate_atime(i64::MAX, 60) > 0, "atime far future");
    }

    #[test]
    fn round_trips_over_a_sweep() {
        let offsets = [0, 60, -120, 330, -660, 840];
        let mut secs = FAT_UNIX_MIN + 14 * 3600;
        // A step that is odd and not a divisor of a day walks every field through its range.
        while secs < FAT_UNIX_MAX - 14 * 3600 {
            for tz in offsets {
                let nanos = (secs % 1000) as u32 * 1_000_000;
                let (date, time, centis) = unix_to_fat(secs, nanos, tz);
                let want = fat_truncate_crtime(secs, nanos);
                assert_eq!(fat_to_unix(date, time, centis, tz), want, "{secs} tz {tz}");
                let (ms, _) = fat_truncate_mtime(secs, nanos);
                assert_eq!(
                    fat_to_unix(date, time, 0, tz),
                    (ms, 0),
                    "mtime {secs} tz {tz}"
                );
                let day = fat_truncate_atime(secs, tz);
                assert_eq!(fat_date_to_unix(date, tz), day, "atime {secs} tz {tz}");
            }
            secs += 1_234_567;
        }
    }

    /// A calendar case: name, (year, month, day), days since 1970-01-01.
    type CivilCase = (&'static str, (i64, u32, u32), i64);

    #[rustfmt::skip]
    const CIVIL: &[CivilCase] = &[
        ("unix epoch",       (1970, 1, 1), 0),
        ("fat epoch",        (1980, 1, 1), 3652),
        ("y2k leap day",     (2000, 2, 29), 11_016),
        ("before the epoch", (1969, 12, 31), -1),
        ("2100-03-01",       (2100, 3, 1), 47_541),
    ];

    #[test]
    fn calendar_helpers_agree() {
        for (name, (y, m, d), days) in CIVIL {
            assert_eq!(days_from_civil(*y, *m, *d), *days, "{name}");
            assert_eq!(civil_from_days(*days), (*y, *m, *d), "{name}");
        }
        for days in (-800_000..800_000).step_by(997) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days, "day {days}");
        }
        assert!(is_leap(2000) && is_leap(2004) && !is_leap(2100) && !is_leap(1900));
    }
}
