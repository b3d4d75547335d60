//! VFAT names on disk: 8.3 short names, LFN slots and their checksum, the `shortname=` policy,
//! the checks vfat makes before it creates a name, and FAT's case-insensitive comparison.
//! Pure byte formats: the directory code decides where entries go and which names exist.
//!
//! Models: fs/fat/namei_vfat.c and fs/fat/dir.c (v5.10) for behaviour; Microsoft's FAT
//! specification (fatgen103) for the on-disk layout.
//!
//! Deviation: aliases use printable ASCII only; other UTF-16 units become `_`, as vfat does for
//! units its codepage lacks. Such names need LFN slots in every mode, so only alias bytes differ.
//! Deviation: after `~1`..`~4` an alias takes the Windows form: two base characters, four hex
//! digits of a hash of the long name, `~1`..`~9`; vfat seeds those hex digits from jiffies.
//! The hash keeps images reproducible and the search short however many names share a base
//! (a numeric search would make N creates in one directory cost N^2). Should every hash form
//! be taken, plain numeric tails go on from `~5` to `~999999`.
//! Deviation: short names on disk decode as codepage 437 (the kernel default); lower-case
//! display folds ASCII letters only.

use std::fmt;
use std::str::FromStr;

use crate::error::FsError;

/// Size of one directory entry, short or long, in bytes.
pub const DIR_ENTRY_SIZE: usize = 32;
/// Length of an 8.3 name on disk: base padded to 8 bytes with spaces, extension to 3.
pub const SHORT_NAME_LEN: usize = 11;
/// Attribute byte of an LFN slot (read-only | hidden | system | volume), which DOS skips.
pub const ATTR_LONG_NAME: u8 = 0x0F;
/// Ordinal flag of the slot holding the end of the name, which is the first one on disk.
pub const LFN_LAST_SLOT: u8 = 0x40;
/// UTF-16 units held by one LFN slot.
pub const LFN_CHARS_PER_SLOT: usize = 13;
/// Longest long name, in UTF-16 units.
pub const LFN_MAX_UNITS: usize = 255;
/// Most slots a chain may have: 255 units rounded up to whole slots.
pub const LFN_MAX_SLOTS: u8 = 20;
/// First name byte of a deleted entry.
pub const DIR_ENTRY_DELETED: u8 = 0xE5;
/// First name byte standing for a real 0xE5 (a Kanji lead byte), so it is not read as deleted.
pub const DIR_ENTRY_KANJI_E5: u8 = 0x05;
/// First name byte of a never-used entry; fatgen103 says no used entry follows it.
pub const DIR_ENTRY_FREE: u8 = 0x00;
/// NT case bit (entry byte 12): show the base in lower case.
pub const CASE_LOWER_BASE: u8 = 0x08;
/// NT case bit (entry byte 12): show the extension in lower case.
pub const CASE_LOWER_EXT: u8 = 0x10;

const ATTR_VOLUME: u8 = 0x08; // a volume label never owns a long name
const OFF_ATTR: usize = 11; // attribute byte, in every entry
const OFF_NT_CASE: usize = 12; // NT case byte of a short entry
const OFF_LFN_CHECKSUM: usize = 13; // short-name checksum in an LFN slot
/// Where the 13 units of a slot sit: 5 before the attribute, 6 after the checksum, 2 after
/// the always-zero cluster field.
const LFN_UNIT_OFFSETS: [usize; LFN_CHARS_PER_SLOT] =
    [1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30];
/// Characters no long name may contain, beside controls below 0x20.
const BAD_CHARS: &[char] = &['"', '*', '/', ':', '<', '>', '?', '\\', '|'];
/// Printable ASCII an 8.3 name cannot hold; the alias gets '_' instead.
const NOT_IN_SHORT: &[u8] = b"\"*/:<>?\\|+,;=[]";
/// Largest numeric tail tried: "~999999" leaves one character of base.
const MAX_NUMTAIL: u32 = 999_999;
/// Numeric tails tried before the hash form.
const PLAIN_TAILS: u32 = 4;
/// Hashes of the long name tried (each with `~1`..`~9`) before plain tails from `~5`.
const HASH_ROUNDS: u32 = 16;

/// Unicode for bytes 0x80..=0xFF of codepage 437, the kernel's default `codepage=`.
const CP437_HIGH: [u16; 128] = [
    0x00C7, 0x00FC, 0x00E9, 0x00E2, 0x00E4, 0x00E0, 0x00E5, 0x00E7, 0x00EA, 0x00EB, 0x00E8, 0x00EF,
    0x00EE, 0x00EC, 0x00C4, 0x00C5, 0x00C9, 0x00E6, 0x00C6, 0x00F4, 0x00F6, 0x00F2, 0x00FB, 0x00F9,
    0x00FF, 0x00D6, 0x00DC, 0x00A2, 0x00A3, 0x00A5, 0x20A7, 0x0192, 0x00E1, 0x00ED, 0x00F3, 0x00FA,
    0x00F1, 0x00D1, 0x00AA, 0x00BA, 0x00BF, 0x2310, 0x00AC, 0x00BD, 0x00BC, 0x00A1, 0x00AB, 0x00BB,
    0x2591, 0x2592, 0x2593, 0x2502, 0x2524, 0x2561, 0x2562, 0x2556, 0x2555, 0x2563, 0x2551, 0x2557,
    0x255D, 0x255C, 0x255B, 0x2510, 0x2514, 0x2534, 0x252C, 0x251C, 0x2500, 0x253C, 0x255E, 0x255F,
    0x255A, 0x2554, 0x2569, 0x2566, 0x2560, 0x2550, 0x256C, 0x2567, 0x2568, 0x2564, 0x2565, 0x2559,
    0x2558, 0x2552, 0x2553, 0x256B, 0x256A, 0x2518, 0x250C, 0x2588, 0x2584, 0x258C, 0x2590, 0x2580,
    0x03B1, 0x00DF, 0x0393, 0x03C0, 0x03A3, 0x03C3, 0x00B5, 0x03C4, 0x03A6, 0x0398, 0x03A9, 0x03B4,
    0x221E, 0x03C6, 0x03B5, 0x2229, 0x2261, 0x00B1, 0x2265, 0x2264, 0x2320, 0x2321, 0x00F7, 0x2248,
    0x00B0, 0x2219, 0x00B7, 0x221A, 0x207F, 0x00B2, 0x25A0, 0x00A0,
];

/// The checksum of an 8.3 name that every LFN slot of its long name carries (fatgen103).
/// It orphans slots whose short entry a DOS tool renamed, instead of misnaming the file.
pub fn lfn_checksum(short: &[u8; SHORT_NAME_LEN]) -> u8 {
    short
        .iter()
        .fold(0u8, |sum, &b| sum.rotate_right(1).wrapping_add(b))
}

/// The LFN slots of `name` in on-disk order (end of the name first), each carrying `checksum`.
///
/// The name is stored as UTF-16LE. When it does not fill its last slot it ends in 0x0000 and the
/// rest is 0xFFFF, as fatgen103 asks.
pub fn lfn_slots(name: &str, checksum: u8) -> Result<Vec<[u8; DIR_ENTRY_SIZE]>, FsError> {
    let mut units: Vec<u16> = name.encode_utf16().collect();
    if units.is_empty() {
        return Err(FsError::Invalid("empty long name"));
    }
    if units.len() > LFN_MAX_UNITS {
        return Err(FsError::NameTooLong);
    }
    let nr_slots = units.len().div_ceil(LFN_CHARS_PER_SLOT);
    let padded = nr_slots * LFN_CHARS_PER_SLOT;
    if units.len() < padded {
        units.push(0x0000);
        units.resize(padded, 0xFFFF);
    }
    let slots = (1..=nr_slots)
        .rev()
        .map(|ord| {
            let part = &units[(ord - 1) * LFN_CHARS_PER_SLOT..ord * LFN_CHARS_PER_SLOT];
            lfn_slot(ord, ord == nr_slots, checksum, part)
        })
        .collect();
    Ok(slots)
}

/// One raw LFN slot with ordinal `ord` holding `part`.
fn lfn_slot(ord: usize, last: bool, checksum: u8, part: &[u16]) -> [u8; DIR_ENTRY_SIZE] {
    let mut slot = [0u8; DIR_ENTRY_SIZE];
    let ord = u8::try_from(ord).expect("a name of at most 255 units has at most 20 slots");
    slot[0] = if last { ord | LFN_LAST_SLOT } else { ord };
    slot[OFF_ATTR] = ATTR_LONG_NAME;
    slot[OFF_LFN_CHECKSUM] = checksum;
    for (&off, &unit) in LFN_UNIT_OFFSETS.iter().zip(part) {
        slot[off..off + 2].copy_from_slice(&unit.to_le_bytes());
    }
    slot
}

/// Rebuilds long names from raw entries read in on-disk order, as fat_parse_long() does.
///
/// Feed every entry in order; the short entry after a complete chain with its checksum yields
/// the long name. Anything else (no [`LFN_LAST_SLOT`] first, a skipped ordinal, a changed
/// checksum, a free or deleted entry between, a short entry that does not match) drops the
/// chain and the short entry shows its 8.3 name, as in vfat: damage never hides a file.
#[derive(Debug, Default)]
pub struct LfnAssembler {
    /// Units of the chain so far; slot `n` starts at `(n - 1) * 13`.
    units: Vec<u16>,
    /// Checksum that every slot of the chain carries.
    checksum: u8,
    /// Ordinal the next slot must have; 0 once slot 1 has been taken.
    next: u8,
    /// Whether a chain is being collected.
    active: bool,
}

impl LfnAssembler {
    /// An assembler with no chain in progress.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes the next raw entry; returns the long name if it is the short entry ending a chain.
    pub fn feed(&mut self, entry: &[u8; DIR_ENTRY_SIZE]) -> Option<String> {
        if entry[0] == DIR_ENTRY_FREE || entry[0] == DIR_ENTRY_DELETED {
            self.reset();
            None
        } else if entry[OFF_ATTR] == ATTR_LONG_NAME {
            self.feed_slot(entry);
            None
        } else {
            self.finish(entry)
        }
    }

    /// Whether slots have been taken that still wait for their short entry.
    pub fn pending(&self) -> bool {
        self.active
    }

    /// Drops any chain in progress, e.g. when the caller restarts at another position.
    pub fn reset(&mut self) {
        self.units.clear();
        self.next = 0;
        self.active = false;
    }

    fn feed_slot(&mut self, slot: &[u8; DIR_ENTRY_SIZE]) {
        let ord = slot[0] & !LFN_LAST_SLOT;
        let checksum = slot[OFF_LFN_CHECKSUM];
        // Like vfat, a slot continues the chain on ordinal and checksum alone; only a slot that
        // does not fit may start a new chain, and then only if it is marked as the last one.
        if self.active && self.next != 0 && ord == self.next && checksum == self.checksum {
            self.store(ord, slot);
            self.next -= 1;
        } else if slot[0] & LFN_LAST_SLOT != 0 && (1..=LFN_MAX_SLOTS).contains(&ord) {
            self.units.clear();
            self.units.resize(usize::from(ord) * LFN_CHARS_PER_SLOT, 0);
            self.checksum = checksum;
            self.active = true;
            self.store(ord, slot);
            self.next = ord - 1;
        } else {
            self.reset();
        }
    }

    fn store(&mut self, ord: u8, slot: &[u8; DIR_ENTRY_SIZE]) {
        let at = (usize::from(ord) - 1) * LFN_CHARS_PER_SLOT;
        for (i, &off) in LFN_UNIT_OFFSETS.iter().enumerate() {
            self.units[at + i] = u16::from_le_bytes([slot[off], slot[off + 1]]);
        }
    }

    fn finish(&mut self, entry: &[u8; DIR_ENTRY_SIZE]) -> Option<String> {
        let complete = self.active && self.next == 0;
        let checksum = self.checksum;
        let units = std::mem::take(&mut self.units);
        self.reset();
        if !complete || entry[OFF_ATTR] & ATTR_VOLUME != 0 {
            return None;
        }
        if ShortName::from_entry(entry).checksum() != checksum {
            return None;
        }
        let end = units.iter().position(|&u| u == 0).unwrap_or(units.len());
        // Unpaired surrogates cannot become UTF-8; U+FFFD keeps the rest of the name readable.
        (end > 0).then(|| String::from_utf16_lossy(&units[..end]))
    }
}

/// `name` without the trailing dots vfat ignores, so "foo..." names the file "foo".
pub fn vfat_striptail(name: &str) -> &str {
    name.trim_end_matches('.')
}

/// Checks a new long name the way vfat does on create and returns the name to store.
///
/// Trailing dots are dropped; a trailing space is refused, not stripped, as vfat does, so names
/// of dots and spaces only are refused. The limit is 255 bytes of UTF-8, as v5.10 checks; UTF-8
/// never has fewer bytes than UTF-16 has units, so the name also fits [`LFN_MAX_SLOTS`].
pub fn vfat_valid_longname(name: &str) -> Result<&str, FsError> {
    if name.is_empty() {
        return Err(FsError::Invalid("empty name"));
    }
    if name == "." || name == ".." {
        return Err(FsError::Invalid("'.' and '..' cannot be created"));
    }
    let stored = vfat_striptail(name);
    if stored.is_empty() {
        return Err(FsError::Invalid("name is only dots"));
    }
    if stored.ends_with(' ') {
        return Err(FsError::Invalid("name ends in a space"));
    }
    if stored.len() > LFN_MAX_UNITS {
        return Err(FsError::NameTooLong);
    }
    if stored.chars().any(|c| c < ' ') {
        return Err(FsError::Invalid("control character in name"));
    }
    if stored.contains(BAD_CHARS) {
        return Err(FsError::Invalid("name contains one of \" * / : < > ? \\ |"));
    }
    Ok(stored)
}

/// The `shortname=` mount option: how 8.3 names are shown, and when a new name gets LFN slots.
///
/// Win95 creation rule: only a valid upper-case 8.3 name is stored as a short entry alone;
/// others get LFN slots and a `~N` alias. WinNT rule: a valid 8.3 name whose base and extension
/// are each all lower or all upper case stands alone, NT case bits marking lower-case parts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ShortnameMode {
    /// Shows every short name in lower case, ignoring case bits; creates by the Win95 rule.
    Lower,
    /// Shows short names as stored (upper case), ignoring case bits; creates by the Win95 rule.
    Win95,
    /// Shows short names with the case bits applied; creates by the WinNT rule.
    Winnt,
    /// The kernel default: shows like `Winnt`, creates by the Win95 rule, so names it makes
    /// read the same on Windows 95 and on NT.
    #[default]
    Mixed,
}

impl ShortnameMode {
    /// Whether new names follow the WinNT rule rather than Win95's.
    fn creates_winnt(self) -> bool {
        self == Self::Winnt
    }

    /// Whether base and extension show in lower case, given an entry's NT case byte.
    fn shows_lower(self, nt_case: u8) -> (bool, bool) {
        match self {
            Self::Lower => (true, true),
            Self::Win95 => (false, false),
            Self::Winnt | Self::Mixed => (
                nt_case & CASE_LOWER_BASE != 0,
                nt_case & CASE_LOWER_EXT != 0,
            ),
        }
    }
}

impl FromStr for ShortnameMode {
    type Err = FsError;

    fn from_str(s: &str) -> Result<Self, FsError> {
        match s {
            "lower" => Ok(Self::Lower),
            "win95" => Ok(Self::Win95),
            "winnt" => Ok(Self::Winnt),
            "mixed" => Ok(Self::Mixed),
            _ => {
                log::warn!("unrecognized shortname= value {s:?}");
                Err(FsError::Invalid(
                    "shortname= must be lower, win95, winnt or mixed",
                ))
            }
        }
    }
}

/// An 8.3 name as its 11 on-disk bytes: base padded to 8 with spaces, extension to 3.
///
/// The bytes are kept raw: a first byte of [`DIR_ENTRY_KANJI_E5`] stays 0x05 here and reads as
/// 0xE5 only when shown. Names generated here are ASCII and never start with 0xE5.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ShortName(
    /// The raw name bytes, exactly as in the entry.
    pub [u8; SHORT_NAME_LEN],
);

impl ShortName {
    /// The name field of a raw short directory entry.
    pub fn from_entry(entry: &[u8; DIR_ENTRY_SIZE]) -> Self {
        let mut raw = [0u8; SHORT_NAME_LEN];
        raw.copy_from_slice(&entry[..SHORT_NAME_LEN]);
        Self(raw)
    }

    /// The checksum its LFN slots must carry.
    pub fn checksum(&self) -> u8 {
        lfn_checksum(&self.0)
    }

    /// The name bytes as meant, with a leading 0x05 read back as 0xE5.
    pub fn logical(&self) -> [u8; SHORT_NAME_LEN] {
        let mut name = self.0;
        if name[0] == DIR_ENTRY_KANJI_E5 {
            name[0] = DIR_ENTRY_DELETED;
        }
        name
    }

    /// The name as shown under `mode`, given the entry's NT case byte (`CASE_LOWER_*`).
    pub fn display_name(&self, nt_case: u8, mode: ShortnameMode) -> String {
        let (lower_base, lower_ext) = mode.shows_lower(nt_case);
        let name = self.logical();
        let mut out = String::with_capacity(SHORT_NAME_LEN + 1);
        push_part(&mut out, &name[..8], lower_base);
        if !trim_padding(&name[8..]).is_empty() {
            out.push('.');
            push_part(&mut out, &name[8..], lower_ext);
        }
        out
    }
}

/// Shows the name as stored, without case bits, e.g. `README.TXT`.
impl fmt::Display for ShortName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.display_name(0, ShortnameMode::Win95))
    }
}

impl fmt::Debug for ShortName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ShortName(\"{}\")", self.0.escape_ascii())
    }
}

/// The name a short entry shows, as fat_parse_short() builds it: padding dropped, 0x05 read as
/// 0xE5, the NT case byte applied as `mode` says.
pub fn fat_parse_short(entry: &[u8; DIR_ENTRY_SIZE], mode: ShortnameMode) -> String {
    ShortName::from_entry(entry).display_name(entry[OFF_NT_CASE], mode)
}

fn trim_padding(part: &[u8]) -> &[u8] {
    let end = part.iter().rposition(|&b| b != b' ').map_or(0, |i| i + 1);
    &part[..end]
}

fn push_part(out: &mut String, part: &[u8], lower: bool) {
    for &b in trim_padding(part) {
        out.push(cp437_char(if lower { b.to_ascii_lowercase() } else { b }));
    }
}

fn cp437_char(b: u8) -> char {
    match b.checked_sub(0x80) {
        None => char::from(b),
        Some(i) => char::from_u32(u32::from(CP437_HIGH[usize::from(i)]))
            .unwrap_or(char::REPLACEMENT_CHARACTER),
    }
}

/// A new name stored as a short entry alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShortOnly {
    /// The 8.3 name to write.
    pub short: ShortName,
    /// The NT case byte to write, so the name reads back in the case it was given.
    pub nt_case: u8,
}

/// How a new name is written in its directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameForm {
    /// One short entry, no slots.
    ShortOnly(ShortOnly),
    /// LFN slots for the long name, then a short entry holding `alias` with NT case byte 0.
    Lfn {
        /// The generated 8.3 alias, with its numeric tail.
        alias: ShortName,
    },
}

/// What vfat learns about one part (base or extension) while turning it into 8.3 bytes.
#[derive(Clone, Copy, Debug)]
struct PartCase {
    /// No upper-case letter was seen.
    lower: bool,
    /// No lower-case letter was seen.
    upper: bool,
    /// Nothing was dropped or replaced.
    valid: bool,
}

impl PartCase {
    const NEW: Self = Self {
        lower: true,
        upper: true,
        valid: true,
    };

    /// The NT case bit `bit` if this part is shown in lower case.
    fn lower_bit(self, bit: u8) -> u8 {
        if self.lower && !self.upper { bit } else { 0 }
    }
}

/// A long name cut down to an 8.3 name without tail, and what the cut lost.
#[derive(Debug)]
struct Basis {
    raw: [u8; SHORT_NAME_LEN],
    base_len: usize,
    /// Neither part was truncated.
    whole: bool,
    base: PartCase,
    ext: PartCase,
}

fn is_skipped(unit: u16) -> bool {
    unit == u16::from(b'.') || unit == u16::from(b' ')
}

/// Splits at the last dot. A dot at the end, or with only dots and spaces before it (as in
/// ".hidden"), starts no extension: Win95 then uses the whole name as the base.
fn split_extension(units: &[u16]) -> (&[u16], &[u16]) {
    match units.iter().rposition(|&u| u == u16::from(b'.')) {
        Some(i) if i + 1 < units.len() && !units[..i].iter().all(|&u| is_skipped(u)) => {
            (&units[..i], &units[i + 1..])
        }
        _ => (units, &[]),
    }
}

/// One UTF-16 unit as an upper-case 8.3 byte, or None for the dots and spaces 8.3 leaves out.
fn short_char(unit: u16, case: &mut PartCase) -> Option<u8> {
    if is_skipped(unit) {
        case.valid = false;
        return None;
    }
    let byte = match u8::try_from(unit) {
        Ok(b) if b.is_ascii_graphic() && !NOT_IN_SHORT.contains(&b) => b,
        _ => {
            case.valid = false;
            return Some(b'_');
        }
    };
    if byte.is_ascii_lowercase() {
        case.upper = false;
    } else if byte.is_ascii_uppercase() {
        case.lower = false;
    }
    Some(byte.to_ascii_uppercase())
}

/// Converts one part to at most `max` bytes; the flag says nothing was left over.
fn short_part(units: &[u16], max: usize, case: &mut PartCase) -> (Vec<u8>, bool) {
    let mut out = Vec::with_capacity(max);
    for (i, &unit) in units.iter().enumerate() {
        if let Some(b) = short_char(unit, case) {
            out.push(b);
            if out.len() == max {
                return (out, i + 1 == units.len());
            }
        }
    }
    (out, true)
}

fn build_basis(name: &str) -> Result<Basis, FsError> {
    let units: Vec<u16> = name.encode_utf16().collect();
    let (base_units, ext_units) = split_extension(&units);
    let (mut base, mut ext) = (PartCase::NEW, PartCase::NEW);
    let (base_bytes, base_whole) = short_part(base_units, 8, &mut base);
    let (ext_bytes, ext_whole) = short_part(ext_units, 3, &mut ext);
    if base_bytes.is_empty() {
        return Err(FsError::Invalid(
            "no character of the name fits an 8.3 name",
        ));
    }
    let mut raw = [b' '; SHORT_NAME_LEN];
    raw[..base_bytes.len()].copy_from_slice(&base_bytes);
    raw[8..8 + ext_bytes.len()].copy_from_slice(&ext_bytes);
    let whole = base_whole && ext_whole;
    Ok(Basis {
        raw,
        base_len: base_bytes.len(),
        whole,
        base,
        ext,
    })
}

fn short_only_of(basis: &Basis, mode: ShortnameMode) -> Option<ShortOnly> {
    let (base, ext) = (basis.base, basis.ext);
    if !(basis.whole && base.valid && ext.valid) {
        return None;
    }
    let nt_case = if mode.creates_winnt() {
        if !((base.upper || base.lower) && (ext.upper || ext.lower)) {
            return None;
        }
        base.lower_bit(CASE_LOWER_BASE) | ext.lower_bit(CASE_LOWER_EXT)
    } else {
        if !(base.upper && ext.upper) {
            return None;
        }
        0
    };
    Some(ShortOnly {
        short: ShortName(basis.raw),
        nt_case,
    })
}

/// The basis with tail `~n`, cutting the base so that base and tail fit in 8 bytes.
fn with_numtail(basis: &Basis, n: u32) -> ShortName {
    let tail = format!("~{n}");
    let keep = basis.base_len.min(8 - tail.len());
    let mut raw = basis.raw;
    raw[keep..8].fill(b' ');
    raw[keep..keep + tail.len()].copy_from_slice(tail.as_bytes());
    ShortName(raw)
}

/// The basis cut to two characters, then `hash` in four hex digits and tail `~n` (1..=9).
fn with_hashtail(basis: &Basis, hash: u16, n: u32) -> ShortName {
    let tail = format!("{hash:04X}~{n}");
    let keep = basis.base_len.min(8 - tail.len());
    let mut raw = basis.raw;
    raw[keep..8].fill(b' ');
    raw[keep..keep + tail.len()].copy_from_slice(tail.as_bytes());
    ShortName(raw)
}

/// A 16-bit hash of `name` for round `round`: FNV-1a over the round and the UTF-16 units,
/// folded. Any well-spread hash does; this one is stable, so aliases are reproducible.
fn name_hash(name: &str, round: u32) -> u16 {
    let mut h: u32 = 0x811c_9dc5;
    let units = round
        .to_le_bytes()
        .into_iter()
        .chain(name.encode_utf16().flat_map(u16::to_le_bytes));
    for b in units {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    (h >> 16) as u16 ^ (h as u16)
}

/// The first free alias of `name`: `~1`..`~4`, then the hash forms, then `~5` on.
fn alias_of(
    name: &str,
    basis: &Basis,
    exists: &mut impl FnMut(&ShortName) -> bool,
) -> Result<ShortName, FsError> {
    let plain = (1..=PLAIN_TAILS).map(|n| with_numtail(basis, n));
    let hashed = (0..HASH_ROUNDS)
        .flat_map(|round| (1..=9).map(move |n| (round, n)))
        .map(|(round, n)| with_hashtail(basis, name_hash(name, round), n));
    let rest = (PLAIN_TAILS + 1..=MAX_NUMTAIL).map(|n| with_numtail(basis, n));
    let alias = plain.chain(hashed).chain(rest).find(|s| !exists(s));
    alias.ok_or_else(|| {
        log::warn!("every numeric tail of {:?} is taken", ShortName(basis.raw));
        FsError::Exists
    })
}

/// Whether `name` is stored as a short entry alone under `mode`'s creation rule, and how.
///
/// `name` should have passed [`vfat_valid_longname`]. `None` means it needs LFN slots.
pub fn short_only_form(name: &str, mode: ShortnameMode) -> Result<Option<ShortOnly>, FsError> {
    Ok(short_only_of(&build_basis(name)?, mode))
}

/// The 8.3 alias for a name that needs LFN slots: the first free `BASE~N.EXT` for N up to 4,
/// then `BAHHHH~N.EXT` with a hash of the name (see the module's deviations).
///
/// Upper case; dots and spaces dropped; `+ , ; = [ ]` and non-ASCII become `_`; base up to 8,
/// extension up to 3 from after the last dot (not a leading one). A tail is always added here;
/// [`vfat_create_shortname`] does not call this for a name that fits 8.3 without loss, whose
/// alias is its own 8.3 form ("readme.txt" gets `README.TXT`, as in vfat).
pub fn generate_alias(
    name: &str,
    mut exists: impl FnMut(&ShortName) -> bool,
) -> Result<ShortName, FsError> {
    alias_of(name, &build_basis(name)?, &mut exists)
}

/// How to write the new name `name`: a short entry alone, or LFN slots and a free alias.
///
/// `exists` says whether the directory has an entry with a given 8.3 name. A name fit to stand
/// alone whose 8.3 form is another file's alias fails with [`FsError::Exists`], as in vfat.
pub fn vfat_create_shortname(
    name: &str,
    mode: ShortnameMode,
    mut exists: impl FnMut(&ShortName) -> bool,
) -> Result<NameForm, FsError> {
    let basis = build_basis(name)?;
    if basis.whole && basis.base.valid && basis.ext.valid {
        // The name fits 8.3 without loss. Taken: EEXIST. Right case for the mode: a short
        // entry alone. Otherwise ("readme.txt" under Win95 rules) LFN slots whose alias is the
        // name's own 8.3 form, with no numeric tail: vfat returns before its tail search.
        let short = ShortName(basis.raw);
        if exists(&short) {
            return Err(FsError::Exists);
        }
        return Ok(match short_only_of(&basis, mode) {
            Some(form) => NameForm::ShortOnly(form),
            None => NameForm::Lfn { alias: short },
        });
    }
    alias_of(name, &basis, &mut exists).map(|alias| NameForm::Lfn { alias })
}

/// Whether two names denote the same FAT file, as vfat_cmpi() decides on lookup.
///
/// Trailing dots are ignored; case folds by Unicode simple upper-casing (U+00DF, which has no
/// one-character upper case, stays itself). All-dot names compare exactly: "." is not "..".
pub fn names_equal(a: &str, b: &str) -> bool {
    let (sa, sb) = (vfat_striptail(a), vfat_striptail(b));
    if sa.is_empty() || sb.is_empty() {
        return a == b;
    }
    // Both ASCII: simple upper case is ASCII upper case. (Not when only one is: U+0131 and
    // U+017F upper-case to ASCII 'I' and 'S'.)
    if sa.is_ascii() && sb.is_ascii() {
        return sa.eq_ignore_ascii_case(sb);
    }
    sa.chars()
        .map(simple_upper)
        .eq(sb.chars().map(simple_upper))
}

/// The key under which a name is found: two names have the same key exactly when
/// [`names_equal`] holds (trailing dots dropped, simple upper case).
pub fn fold_name(name: &str) -> String {
    folded_chars(name).collect()
}

/// The characters of [`fold_name`]'s key, without building it: for hashing a name where the
/// key itself is not kept.
pub fn folded_chars(name: &str) -> impl Iterator<Item = char> + '_ {
    let stripped = vfat_striptail(name);
    // All dots: compared exactly, so the key is the name itself.
    let (chars, fold) = if stripped.is_empty() {
        (name, false)
    } else {
        (stripped, true)
    };
    chars
        .chars()
        .map(move |c| if fold { simple_upper(c) } else { c })
}

/// Upper case of one char where Unicode has a one-char form, the folding FAT lookups use.
fn simple_upper(c: char) -> char {
    // ASCII's upper case is Unicode's for ASCII, without the case-mapping tables.
    if c.is_ascii() {
        return c.to_ascii_uppercase();
    }
    let mut upper = c.to_uppercase();
    match (upper.next(), upper.next()) {
        (Some(u), None) => u,
        _ => c,
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use ShortnameMode::*;

    /// Which aliases a test directory already holds.
    type Taken<'a> = &'a dyn Fn(&ShortName) -> bool;
    /// A short-only form as (raw name, NT case byte), or None for "needs LFN slots".
    type Want = Option<(&'static str, u8)>;

    /// A short name from an 11-character ASCII string.
    fn sn(s: &str) -> ShortName {
        ShortName(s.as_bytes().try_into().expect("11 bytes"))
    }

    /// A raw short entry (archive attribute) with the given name and NT case byte.
    fn short_entry(name: &str, nt_case: u8) -> [u8; DIR_ENTRY_SIZE] {
        let mut e = [0u8; DIR_ENTRY_SIZE];
        e[..SHORT_NAME_LEN].copy_from_slice(&sn(name).0);
        e[OFF_ATTR] = 0x20;
        e[OFF_NT_CASE] = nt_case;
        e
    }

    /// `entry` with byte `at` set to `value`.
    fn with(mut entry: [u8; DIR_ENTRY_SIZE], at: usize, value: u8) -> [u8; DIR_ENTRY_SIZE] {
        entry[at] = value;
        entry
    }

    /// What an assembler yields at the last of `entries`.
    fn assemble(entries: &[[u8; DIR_ENTRY_SIZE]]) -> Option<String> {
        let mut asm = LfnAssembler::new();
        let mut last = None;
        for e in entries {
            last = asm.feed(e);
        }
        last
    }

    /// `n` units of varied ASCII, so misplaced slots show.
    fn ascii(n: usize) -> String {
        (0..n).map(|i| char::from(b'a' + (i % 26) as u8)).collect()
    }

    fn unit_at(slot: &[u8; DIR_ENTRY_SIZE], i: usize) -> u16 {
        let off = LFN_UNIT_OFFSETS[i];
        u16::from_le_bytes([slot[off], slot[off + 1]])
    }

    #[test]
    fn checksum_known_answers() {
        // Rechecked with a separate implementation of the fatgen103 formula; the first three
        // are the KUnit vectors of fs/fat/fat_test.c.
        #[rustfmt::skip]
        let cases = [
            ("no extension", "VMLINUX    ", 44),
            ("3-letter extension", "README  TXT", 115),
            ("9 letters, 1 in the extension", "ABCDEFGHA  ", 98),
            ("numeric-tail alias", "LONGFI~1TXT", 212),
        ];
        for (what, name, want) in cases {
            assert_eq!(lfn_checksum(&sn(name).0), want, "{what}");
        }
    }

    #[test]
    fn lfn_slot_layout_of_one_char() {
        let slots = lfn_slots("a", 0x5A).expect("valid");
        let mut want = [0xFFu8; DIR_ENTRY_SIZE];
        want[..5].copy_from_slice(&[0x41, b'a', 0, 0, 0]);
        want[OFF_ATTR..OFF_LFN_CHECKSUM + 1].copy_from_slice(&[ATTR_LONG_NAME, 0, 0x5A]);
        want[26..28].copy_from_slice(&[0, 0]);
        assert_eq!(slots, vec![want]);
    }

    #[test]
    fn lfn_round_trip() {
        #[rustfmt::skip]
        let cases = [
            ("1 unit", "x".to_string()),
            ("13 units, one full slot", ascii(13)),
            ("14 units", ascii(14)),
            ("26 units, two full slots", ascii(26)),
            ("255 units", ascii(255)),
            ("one non-BMP char", "\u{1F600}".to_string()),
            ("surrogate pair split across slots", format!("{}\u{1F600}", ascii(12))),
            ("BMP and non-BMP mixed", "\u{e9}t\u{e9} \u{1D11E} \u{4E2D}.txt".to_string()),
            ("255 units with pairs", format!("a{}", "\u{10400}".repeat(127))),
        ];
        let alias = short_entry("ALIAS~1 TXT", 0);
        let sum = ShortName::from_entry(&alias).checksum();
        for (what, name) in cases {
            let len = name.encode_utf16().count();
            let mut slots = lfn_slots(&name, sum).expect(what);
            let n = len.div_ceil(13);
            assert_eq!(slots.len(), n, "{what}: slot count");
            for (i, slot) in slots.iter().enumerate() {
                let flag = if i == 0 { LFN_LAST_SLOT } else { 0 };
                assert_eq!(slot[0], (n - i) as u8 | flag, "{what}: ordinal");
                assert_eq!(slot[OFF_ATTR..14], [ATTR_LONG_NAME, 0, sum], "{what}");
                assert_eq!(slot[26..28], [0, 0], "{what}: cluster field");
            }
            if len % 13 != 0 {
                assert_eq!(unit_at(&slots[0], len % 13), 0x0000, "{what}: terminator");
                for i in len % 13 + 1..13 {
                    assert_eq!(unit_at(&slots[0], i), 0xFFFF, "{what}: padding");
                }
            }
            slots.push(alias);
            assert_eq!(assemble(&slots).as_deref(), Some(name.as_str()), "{what}");
        }
    }

    #[test]
    fn lfn_slots_refused() {
        assert!(matches!(
            lfn_slots(&ascii(256), 0),
            Err(FsError::NameTooLong)
        ));
        let pairs = "\u{1F600}".repeat(128);
        assert!(matches!(lfn_slots(&pairs, 0), Err(FsError::NameTooLong)));
        assert!(matches!(lfn_slots("", 0), Err(FsError::Invalid(_))));
    }

    #[test]
    fn lfn_broken_sequences() {
        let short = short_entry("THIRTY~1TXT", 0);
        let name = ascii(30);
        let good = lfn_slots(&name, ShortName::from_entry(&short).checksum()).expect("valid");
        let [s3, s2, s1] = [good[0], good[1], good[2]];
        let free = [0u8; DIR_ENTRY_SIZE];
        #[rustfmt::skip]
        let cases: [(&str, Vec<[u8; 32]>, bool); 13] = [
            ("intact chain", vec![s3, s2, s1, short], true),
            ("first slot lacks 0x40", vec![with(s3, 0, 3), s2, s1, short], false),
            ("middle slot missing", vec![s3, s1, short], false),
            ("slots out of order", vec![s3, s1, s2, short], false),
            ("checksum changes along chain", vec![s3, with(s2, 13, 0), s1, short], false),
            ("short entry does not match", vec![s3, s2, s1, short_entry("OTHER   TXT", 0)], false),
            ("deleted slot in chain", vec![s3, with(s2, 0, DIR_ENTRY_DELETED), s1, short], false),
            ("free entry inside chain", vec![s3, s2, free, s1, short], false),
            ("ordinal above 20", vec![with(s3, 0, 0x40 | 21), s2, s1, short], false),
            ("ordinal zero", vec![with(s3, 0, 0x40), s2, s1, short], false),
            ("short entry before slot 1", vec![s3, s2, short], false),
            ("volume label after chain", vec![s3, s2, s1, with(short, OFF_ATTR, 0x08)], false),
            ("orphan slot, then intact chain", vec![s1, s3, s2, s1, short], true),
        ];
        for (what, entries, ok) in cases {
            assert_eq!(assemble(&entries), ok.then(|| name.clone()), "{what}");
        }
        let mut asm = LfnAssembler::new();
        for e in [s3, s1, short, s3, s2] {
            asm.feed(&e);
        }
        assert!(asm.pending(), "a new chain starts after a broken one");
        assert_eq!(asm.feed(&s1), None);
        assert_eq!(asm.feed(&short), Some(name), "and completes");
        assert!(!asm.pending());
    }

    #[test]
    fn alias_generation() {
        #[rustfmt::skip]
        let cases = [
            ("long name with spaces", "Long File Name.txt", "LONGFI~1TXT"),
            ("several dots", "a.b.c", "AB~1    C  "),
            ("leading dot is no extension", ".hidden", "HIDDEN~1   "),
            ("single lower-case letter", "x", "X~1        "),
            ("plus and equals replaced", "a+b=c.txt", "A_B_C~1 TXT"),
            ("brackets, semicolon, comma", "[x];y,z", "_X__Y_~1   "),
            ("embedded space dropped", "my file.txt", "MYFILE~1TXT"),
            ("extension truncated", "index.html", "INDEX~1 HTM"),
            ("dots only before name", "...test", "TEST~1     "),
            ("lower-case 8.3 name", "readme.txt", "README~1TXT"),
            ("leading space", " lead.c", "LEAD~1  C  "),
            ("non-ASCII letter", "caf\u{e9}.txt", "CAF_~1  TXT"),
            ("surrogate pair is two units", "\u{1F600}.txt", "__~1    TXT"),
        ];
        for (what, long, want) in cases {
            assert_eq!(
                generate_alias(long, |_| false).expect(what),
                sn(want),
                "{what}"
            );
        }
    }

    #[test]
    fn numeric_tails() {
        let long = "Long File Name.txt";
        let one = [sn("LONGFI~1TXT")];
        let four: Vec<ShortName> = (1..=4).map(|n| sn(&format!("LONGFI~{n}TXT"))).collect();
        let hashed = |s: &ShortName| s.0[6] == b'~' && s.0[2..6].iter().all(u8::is_ascii_hexdigit);
        #[rustfmt::skip]
        let cases: [(&str, &str, Taken<'_>, &str); 4] = [
            ("~1 taken gives ~2", long, &|s| one.contains(s), "LONGFI~2TXT"),
            ("~4 taken gives the hash form", long, &|s| four.contains(s), "LO8FA1~1TXT"),
            ("hash forms taken give ~5", long, &|s| four.contains(s) || hashed(s), "LONGFI~5TXT"),
            ("~10 shortens the base", long, &|s| s.0[6] == b'~' || hashed(s), "LONGF~10TXT"),
        ];
        for (what, name, taken, want) in cases {
            assert_eq!(generate_alias(name, taken).expect(what), sn(want), "{what}");
        }
        let all = generate_alias("x", |_| true);
        assert!(matches!(all, Err(FsError::Exists)), "every tail taken");
    }

    #[test]
    fn many_names_sharing_a_base_find_an_alias_in_few_tries() {
        // 3,000 names with one basis: each alias search must stay short, or creating N files
        // in a directory costs N^2.
        let mut taken = std::collections::HashSet::new();
        let mut worst = 0;
        for i in 0..3000 {
            let mut tries = 0;
            let alias = generate_alias(&format!("a fairly long file name {i}.txt"), |s| {
                tries += 1;
                taken.contains(s)
            })
            .expect("an alias");
            assert!(taken.insert(alias), "alias {alias} handed out twice");
            worst = worst.max(tries);
        }
        assert!(worst < 200, "an alias search took {worst} tries");
    }

    #[test]
    fn kanji_lead_byte_and_deleted_entries() {
        let entry = short_entry("\u{5}ABC    TXT", 0);
        let short = ShortName::from_entry(&entry);
        assert_eq!(
            (short.0[0], short.logical()[0]),
            (0x05, 0xE5),
            "kept raw, read as 0xE5"
        );
        assert_eq!(
            fat_parse_short(&entry, Win95),
            "\u{3c3}ABC.TXT",
            "cp437 0xE5"
        );
        assert_eq!(fat_parse_short(&entry, Lower), "\u{3c3}abc.txt");
        let slot = lfn_slots("x", short.checksum()).expect("valid")[0];
        assert_eq!(
            assemble(&[slot, entry]).as_deref(),
            Some("x"),
            "0x05 is a live entry"
        );
        let gone = with(entry, 0, DIR_ENTRY_DELETED);
        assert_eq!(assemble(&[slot, gone]), None, "0xE5 is deleted");
    }

    #[test]
    fn case_bit_display() {
        #[rustfmt::skip]
        let cases = [
            ("mixed, lower base", "README  TXT", CASE_LOWER_BASE, Mixed, "readme.TXT"),
            ("mixed, lower ext", "README  TXT", CASE_LOWER_EXT, Mixed, "README.txt"),
            ("mixed, both lower", "README  TXT", 0x18, Mixed, "readme.txt"),
            ("mixed, no bits", "README  TXT", 0, Mixed, "README.TXT"),
            ("winnt, lower base", "README  TXT", CASE_LOWER_BASE, Winnt, "readme.TXT"),
            ("win95 ignores bits", "README  TXT", 0x18, Win95, "README.TXT"),
            ("lower ignores bits", "README  TXT", 0, Lower, "readme.txt"),
            ("no extension, no dot", "MAKEFILE   ", CASE_LOWER_BASE, Mixed, "makefile"),
            ("inner space kept", "A B     C  ", 0, Mixed, "A B.C"),
            ("dot entry", ".          ", 0, Mixed, "."),
            ("dotdot entry", "..         ", 0, Lower, ".."),
        ];
        for (what, raw, bits, mode, want) in cases {
            assert_eq!(
                fat_parse_short(&short_entry(raw, bits), mode),
                want,
                "{what}"
            );
        }
        let high = ShortName::from_entry(&with(short_entry("A       TXT", 0), 1, 0x82));
        assert_eq!(high.to_string(), "A\u{e9}.TXT", "cp437 0x82 is e-acute");
    }

    #[test]
    fn shortname_modes() {
        let up = Some(("README  TXT", 0));
        let lo = |bits| Some(("README  TXT", bits));
        // Columns: lower, win95, winnt, mixed.
        #[rustfmt::skip]
        let cases: [(&str, &str, [Want; 4]); 9] = [
            ("all upper 8.3", "README.TXT", [up, up, up, up]),
            ("all lower 8.3", "readme.txt", [None, None, lo(0x18), None]),
            ("lower base", "readme.TXT", [None, None, lo(0x08), None]),
            ("lower ext", "README.txt", [None, None, lo(0x10), None]),
            ("mixed-case base", "ReadMe.txt", [None; 4]),
            ("too long", "Long File Name.txt", [None; 4]),
            ("digits only", "12345.678", [Some(("12345   678", 0)); 4]),
            ("single lower letter", "x", [None, None, Some(("X          ", 0x08)), None]),
            ("replaced character", "a+b.txt", [None; 4]),
        ];
        for (what, name, wants) in cases {
            for (mode, want) in [Lower, Win95, Winnt, Mixed].into_iter().zip(wants) {
                let want = want.map(|(raw, nt_case)| ShortOnly {
                    short: sn(raw),
                    nt_case,
                });
                assert_eq!(
                    short_only_form(name, mode).expect(what),
                    want,
                    "{what}, {mode:?}"
                );
            }
        }
    }

    #[test]
    fn create_shortname_forms() {
        let alone = |raw, nt_case| {
            NameForm::ShortOnly(ShortOnly {
                short: sn(raw),
                nt_case,
            })
        };
        // vfat keeps a lossless 8.3 form as the alias, with no numeric tail.
        let own_form = NameForm::Lfn {
            alias: sn("README  TXT"),
        };
        let free = |_: &ShortName| false;
        #[rustfmt::skip]
        let cases = [
            ("upper-case 8.3 stands alone", "README.TXT", Mixed, alone("README  TXT", 0)),
            ("Win95 rule adds slots, the alias its 8.3 form", "readme.txt", Mixed, own_form),
            ("WinNT rule uses case bits", "readme.txt", Winnt, alone("README  TXT", 0x18)),
        ];
        for (what, name, mode, want) in cases {
            assert_eq!(
                vfat_create_shortname(name, mode, free).expect(what),
                want,
                "{what}"
            );
        }
        let taken = vfat_create_shortname("README.TXT", Mixed, |s| *s == sn("README  TXT"));
        assert!(
            matches!(taken, Err(FsError::Exists)),
            "8.3 form is another file's alias"
        );
    }

    #[test]
    fn shortname_mode_option() {
        #[rustfmt::skip]
        let cases = [
            ("lower", Some(Lower)), ("win95", Some(Win95)), ("winnt", Some(Winnt)),
            ("mixed", Some(Mixed)), ("WINNT", None), ("", None), ("dos", None),
        ];
        for (text, want) in cases {
            match (text.parse::<ShortnameMode>(), want) {
                (Ok(got), Some(mode)) => assert_eq!(got, mode, "{text:?}"),
                (Err(FsError::Invalid(_)), None) => {}
                (got, _) => panic!("{text:?}: unexpected {got:?}"),
            }
        }
        assert_eq!(ShortnameMode::default(), Mixed);
    }

    #[test]
    fn long_name_validation() {
        let long_ok = ascii(255);
        #[rustfmt::skip]
        let stored = [
            ("plain", "notes.txt", "notes.txt"),
            ("trailing dots stripped", "foo...", "foo"),
            ("leading space kept", " lead", " lead"),
            ("leading dot kept", ".hidden", ".hidden"),
            ("255 bytes", long_ok.as_str(), long_ok.as_str()),
        ];
        for (what, name, want) in stored {
            assert_eq!(vfat_valid_longname(name).expect(what), want, "{what}");
        }
        #[rustfmt::skip]
        let invalid = [
            ("empty", ""), ("dot", "."), ("dotdot", ".."), ("only dots", "..."),
            ("only spaces", "   "), ("trailing space", "foo "),
            ("space before trailing dot", "foo ."), ("control character", "a\u{1}b"),
            ("tab", "a\tb"), ("asterisk", "a*b"), ("question mark", "a?b"), ("colon", "a:b"),
            ("angle brackets", "a<b>"), ("pipe", "a|b"), ("double quote", "a\"b"),
            ("backslash", "a\\b"), ("slash", "a/b"),
        ];
        for (what, name) in invalid {
            let got = vfat_valid_longname(name);
            assert!(matches!(got, Err(FsError::Invalid(_))), "{what}: {got:?}");
        }
        for (what, name) in [
            ("256 ASCII", ascii(256)),
            ("256 bytes", "\u{e9}".repeat(128)),
        ] {
            let got = vfat_valid_longname(&name);
            assert!(matches!(got, Err(FsError::NameTooLong)), "{what}: {got:?}");
        }
    }

    #[test]
    fn names_equal_as_vfat_lookup() {
        #[rustfmt::skip]
        let cases = [
            ("ASCII case", "readme.txt", "README.TXT", true),
            ("trailing dots ignored", "foo.", "FOO", true),
            ("Latin-1 letters fold", "\u{e9}t\u{e9}", "\u{c9}T\u{c9}", true),
            ("non-BMP letters fold", "\u{10428}x", "\u{10400}X", true),
            ("different names", "a", "b", false),
            ("dot and dotdot differ", ".", "..", false),
            ("sharp s is not SS", "\u{df}", "SS", false),
            ("prefix is not equal", "abc", "ab", false),
        ];
        for (what, a, b, want) in cases {
            assert_eq!(names_equal(a, b), want, "{what}");
            assert_eq!(names_equal(b, a), want, "{what}, swapped");
        }
    }
}
