//! mkfs: lays out a new, empty FAT12/16/32 volume in an image file.
//!
//! Models: no kernel file (Linux does not format); the on-disk layout of fatgen103 ("FAT Type
//! Determination", "FAT Volume Initialization") and the defaults of mkfs.fat.
//!
//! Defaults of mkfs.fat (dosfstools 4.2), measured on this machine with `mkfs.fat -C IMG KIB`
//! (and `-F 12|16|32`) on sizes from 64 KiB to 64 GiB, reading back the BPB:
//!
//! | size              | type  | cluster                  | root entries | media |
//! |-------------------|-------|--------------------------|--------------|-------|
//! | 360 KiB (floppy)  | FAT12 | 1 KiB                    | 112          | 0xFD  |
//! | 720 KiB (floppy)  | FAT12 | 1 KiB                    | 112          | 0xF9  |
//! | 1200 KiB (floppy) | FAT12 | 512 B                    | 224          | 0xF9  |
//! | 1440 KiB (floppy) | FAT12 | 512 B                    | 224          | 0xF0  |
//! | 2880 KiB (floppy) | FAT12 | 1 KiB                    | 224          | 0xF0  |
//! | other, < 512 MiB  | FAT12 | 2 KiB, if < 4085 of them | 512          | 0xF8  |
//! | other, < 512 MiB  | FAT16 | 2 KiB, doubled to fit    | 512          | 0xF8  |
//! | 512 MiB and more  | FAT32 | see FAT32 clusters       | 0            | 0xF8  |
//!
//! * Floppy sizes have 2 heads and 9, 9, 15, 18, 36 sectors per track, drive number 0x00.
//! * FAT32 clusters: up to 260 MiB 512 B, up to 8 GiB 4 KiB, up to 16 GiB 8 KiB, up to 32 GiB
//!   16 KiB, above that 32 KiB (so `-F 32` gives 64 MiB 512 B and 300 MiB 4 KiB clusters).
//! * `-F 12` and `-F 16` start at 2 KiB and double while the count is too big for the type,
//!   up to 64 KiB (FAT16 2 GiB: 64 KiB; FAT12 128 MiB: 64 KiB, 256 MiB refused).
//! * Other sizes, sectors per track x heads by total sectors: up to 4096 16 x 2; up to 32768
//!   32 x 2; 65536 32 x 4; 262144 32 x 8; 524288 32 x 16; 1032192 63 x 16; 2064384 63 x 32;
//!   4128768 63 x 64; 8257536 63 x 128; beyond 63 x 255. Drive number 0x80.
//! * FAT entry 0 is the media byte with all higher bits set, entry 1 all ones (FAT32: 28 bits);
//!   FAT32's FSInfo holds the exact free count and next-free 2 (the root cluster).
//!
//! Where fatcache differs, all within what fatgen103 and `fsck.fat` accept:
//! * Reserved sectors are fatgen103's 1 (FAT12/16) and 32 (FAT32); mkfs.fat pads the reserved
//!   area so the data area starts on a cluster boundary, so its cluster counts are a little
//!   lower, and at the very edges of a type (about 8 MiB) the two can pick different types.
//! * The root directory stays 512 entries with big clusters; mkfs.fat rounds it up to a cluster.
//! * A type given explicitly on a volume too small for it at the default cluster size gets
//!   smaller clusters (FAT16 down to about 2 MiB); mkfs.fat refuses FAT16 below about 8 MiB.
//! * FAT32 below 65525 clusters is refused; mkfs.fat only warns, and `Bpb::parse` refuses it.
//! * FAT32's root cluster ends with 0x0FFFFFFF, the end-of-chain the kernel writes; mkfs.fat
//!   writes 0x0FFFFFF8. Both are end-of-chain.
//! * The boot code is `int 18h` (no bootable disk) and an endless loop, not a printed message.

use std::cmp::Ordering;
use std::fmt;
use std::fs::OpenOptions;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::dev::{BlockDevice, FileDevice, Placement};
use crate::error::FsError;
use crate::fat::bpb::FatType::{Fat12, Fat16, Fat32};
use crate::fat::bpb::{
    BOOT_SECTOR_SIZE, Bpb, EXT_BOOT_SIGNATURE, Fat32Fields, FatType, FsInfo, MAX_FAT12_CLUSTERS,
    MAX_FAT16_CLUSTERS, MAX_FAT32_CLUSTERS,
};
use crate::fat::name::{DIR_ENTRY_SIZE, SHORT_NAME_LEN};
use crate::fat::time::unix_to_fat;

/// Bytes per sector of every volume mkfs makes.
pub const SECTOR_SIZE: u64 = 512;
/// The label a volume without one carries in its boot sector.
pub const NO_NAME: [u8; SHORT_NAME_LEN] = *b"NO NAME    ";
/// The most sectors per cluster mkfs uses (64 KiB clusters, as mkfs.fat allows).
pub const MAX_SECTORS_PER_CLUSTER: u8 = 128;
/// From this size on, a volume of no given type is FAT32 (mkfs.fat's threshold).
pub const FAT32_AUTO_BYTES: u64 = 512 << 20;

/// Sectors per cluster FAT12/16 start from on a non-floppy size (2 KiB).
const HARD_DISK_SPC: u8 = 4;
const NUM_FATS: u8 = 2;
const HARD_DISK_ROOT_ENTRIES: u16 = 512;
const HARD_DISK_MEDIA: u8 = 0xF8;
const HARD_DISK_DRIVE: u8 = 0x80;
const FLOPPY_DRIVE: u8 = 0x00;
const FLOPPY_HEADS: u16 = 2;
const FAT16_RESERVED: u16 = 1;
const FAT32_RESERVED: u16 = 32;
const FSINFO_SECTOR: u16 = 1;
const BACKUP_BOOT_SECTOR: u16 = 6;
const ROOT_CLUSTER: u32 = 2;
/// End of chain as the kernel writes it; as entry 1 it also has both clean-shutdown bits set.
const FAT32_EOC: u32 = 0x0FFF_FFFF;
const FAT16_EOC: u16 = 0xFFFF;
const FAT12_EOC: u32 = 0xFFF;
const ATTR_VOLUME_ID: u8 = 0x08;
/// One boot or FSInfo sector.
type Sector = [u8; BOOT_SECTOR_SIZE];
/// Bytes of zeros written per call when clearing a region.
const ZERO_CHUNK: usize = 1 << 20;
/// `int 18h` (tell the BIOS there is nothing to boot) then `jmp $`: a machine that boots the
/// image by mistake stops cleanly instead of running whatever the zeros decode to.
const BOOT_CODE: [u8; 4] = [0xCD, 0x18, 0xEB, 0xFE];

/// What the caller asks of a new volume.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MkfsOptions {
    /// Size of the image in bytes; the volume covers its whole 512-byte sectors.
    pub size: u64,
    /// FAT type; `None` chooses by size as mkfs.fat does.
    pub fat: Option<FatType>,
    /// Volume label, up to 11 ASCII characters; stored upper-cased.
    pub label: Option<String>,
    /// Volume serial number; `None` takes one from the clock.
    pub volume_id: Option<u32>,
    /// Overwrite an existing non-empty file.
    pub force: bool,
}

/// What mkfs made, for the summary line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MkfsReport {
    /// FAT type, by cluster count.
    pub fat_type: FatType,
    /// Bytes per cluster.
    pub cluster_bytes: u32,
    /// Data clusters.
    pub clusters: u32,
    /// Sectors of one FAT (there are two).
    pub sectors_per_fat: u32,
    /// Sectors of the volume.
    pub total_sectors: u32,
    /// Volume serial number.
    pub volume_id: u32,
    /// The label as stored, without padding; `None` for none.
    pub label: Option<String>,
}

impl fmt::Display for MkfsReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bits = self.fat_type.entry_bits();
        let (sectors, fat) = (self.total_sectors, self.sectors_per_fat);
        write!(f, "FAT{bits}, {sectors} sectors of {SECTOR_SIZE} bytes, ")?;
        write!(f, "{NUM_FATS} FATs of {fat} sectors, ")?;
        let (clusters, bytes) = (self.clusters, self.cluster_bytes);
        write!(f, "{clusters} clusters of {bytes} bytes, ")?;
        let id = self.volume_id;
        write!(f, "volume id {:04x}-{:04x}, ", id >> 16, id & 0xFFFF)?;
        match &self.label {
            Some(l) => write!(f, "label \"{l}\""),
            None => f.write_str("no label"),
        }
    }
}

/// Parses a size: bytes, or a number with K, M or G (binary units: 1K = 1024), optionally
/// followed by "iB" or "B" (so 64M, 64MiB and 64MB are the same 64 * 2^20 bytes).
pub fn parse_size(text: &str) -> Result<u64, FsError> {
    const BAD: FsError =
        FsError::Invalid("size: expected bytes or a number with K, M or G, like 1440K or 64M");
    let s = text.trim();
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(digits);
    let number: u64 = number.parse().map_err(|_| BAD)?;
    let unit = unit.to_ascii_uppercase();
    let bare = unit.strip_suffix("IB").or(unit.strip_suffix('B'));
    let shift = match bare.unwrap_or(&unit) {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        _ => return Err(BAD),
    };
    let too_big = FsError::Invalid("size: does not fit in 64 bits");
    number.checked_mul(1 << shift).ok_or(too_big)
}

/// A floppy format mkfs.fat uses when the size is exactly its own: KiB, sectors per cluster,
/// root entries, media byte, sectors per track (all have 2 heads).
type Floppy = (u64, u8, u16, u8, u16);

/// The floppy rows of the module table.
#[rustfmt::skip]
const FLOPPIES: [Floppy; 5] = [
    (360, 2, 112, 0xFD, 9), (720, 2, 112, 0xF9, 9), (1200, 1, 224, 0xF9, 15),
    (1440, 1, 224, 0xF0, 18), (2880, 2, 224, 0xF0, 36),
];

/// mkfs.fat's CHS geometry of an image with no device geometry: (up to this many sectors,
/// sectors per track, heads); beyond the last row 63 x 255.
#[rustfmt::skip]
const HARD_DISK_GEOMETRY: [(u64, u16, u16); 9] = [
    (4096, 16, 2), (32_768, 32, 2), (65_536, 32, 4), (262_144, 32, 8), (524_288, 32, 16),
    (1_032_192, 63, 16), (2_064_384, 63, 32), (4_128_768, 63, 64), (8_257_536, 63, 128),
];

/// Sectors per track and heads for a non-floppy volume of `sectors`.
fn hard_disk_geometry(sectors: u64) -> (u16, u16) {
    let row = HARD_DISK_GEOMETRY
        .iter()
        .find(|(max, _, _)| sectors <= *max);
    row.map_or((63, 255), |&(_, spt, heads)| (spt, heads))
}

/// mkfs.fat's FAT32 cluster size for a volume of `bytes` (the module's FAT32 list).
fn fat32_default_spc(bytes: u64) -> u8 {
    const MIB: u64 = 1 << 20;
    match bytes {
        b if b <= 260 * MIB => 1,
        b if b <= 8192 * MIB => 8,
        b if b <= 16_384 * MIB => 16,
        b if b <= 32_768 * MIB => 32,
        _ => 64,
    }
}

/// The informational type string of the extended boot record.
fn fs_type_string(ty: FatType) -> [u8; 8] {
    match ty {
        Fat12 => *b"FAT12   ",
        Fat16 => *b"FAT16   ",
        Fat32 => *b"FAT32   ",
    }
}

/// The BPB of a volume of `total` sectors and type `ty`, its clusters not sized yet: reserved
/// area, root directory and geometry by type, or by the floppy format when one matches.
fn skeleton(ty: FatType, total: u32, floppy: Option<Floppy>) -> Bpb {
    let fat32 = ty == Fat32;
    let (spt, heads) = hard_disk_geometry(u64::from(total));
    let small = u16::try_from(total).ok().filter(|_| !fat32);
    let mut b = Bpb {
        jump_boot: if fat32 {
            [0xEB, 0x58, 0x90]
        } else {
            [0xEB, 0x3C, 0x90]
        },
        // fatgen103 calls this the most compatible OEM name; drivers should ignore it.
        oem_name: *b"MSWIN4.1",
        bytes_per_sector: SECTOR_SIZE as u16,
        sectors_per_cluster: HARD_DISK_SPC,
        reserved_sectors: if fat32 {
            FAT32_RESERVED
        } else {
            FAT16_RESERVED
        },
        num_fats: NUM_FATS,
        root_entries: if fat32 { 0 } else { HARD_DISK_ROOT_ENTRIES },
        total_sectors_16: small.unwrap_or(0),
        media: HARD_DISK_MEDIA,
        sectors_per_fat_16: 0,
        sectors_per_track: spt,
        num_heads: heads,
        hidden_sectors: 0,
        total_sectors_32: if small.is_some() { 0 } else { total },
        fat32: fat32.then_some(Fat32Fields {
            sectors_per_fat_32: 0,
            ext_flags: 0,
            fs_version: 0,
            root_cluster: ROOT_CLUSTER,
            fsinfo_sector: FSINFO_SECTOR,
            backup_boot_sector: BACKUP_BOOT_SECTOR,
        }),
        drive_number: HARD_DISK_DRIVE,
        ext_boot_signature: EXT_BOOT_SIGNATURE,
        volume_id: 0,
        volume_label: NO_NAME,
        fs_type: fs_type_string(ty),
    };
    if let Some((_, spc, root, media, spt)) = floppy {
        (b.sectors_per_cluster, b.root_entries, b.media) = (spc, root, media);
        (b.sectors_per_track, b.num_heads, b.drive_number) = (spt, FLOPPY_HEADS, FLOPPY_DRIVE);
    }
    b
}

/// Sets the cluster size of `b` and the FAT size that goes with it; returns the cluster count.
///
/// The FAT size is fatgen103's computation, with the entry width of `ty` and the two reserved
/// entries counted so that it is exact for FAT12 too: the fewest sectors `f` with
/// `f * 512 * 8 / bits >= clusters + 2`, the clusters being what is left after the reserved
/// area, both FATs and the root directory. Solved for `f`, that is
/// `ceil((avail + 2 * spc) * bits / (4096 * spc + fats * bits))`; like fatgen103's, it may
/// come out one sector more than the least that would do.
fn set_cluster_size(b: &mut Bpb, ty: FatType, spc: u8) -> u64 {
    let bits = u64::from(ty.entry_bits());
    let (spc64, fats) = (u64::from(spc), u64::from(b.num_fats));
    let overhead = u64::from(b.reserved_sectors) + u64::from(b.root_dir_sectors());
    let avail = u64::from(b.total_sectors()).saturating_sub(overhead);
    let fat = ((avail + 2 * spc64) * bits).div_ceil(SECTOR_SIZE * 8 * spc64 + fats * bits);
    b.sectors_per_cluster = spc;
    match &mut b.fat32 {
        Some(f) => f.sectors_per_fat_32 = u32::try_from(fat).unwrap_or(u32::MAX),
        // Saturates only for a cluster size far too small, whose count then exceeds FAT16's
        // and is refused anyway.
        None => b.sectors_per_fat_16 = u16::try_from(fat).unwrap_or(u16::MAX),
    }
    avail.saturating_sub(fats * fat) / spc64
}

/// How a cluster count sits against the range of a FAT type.
fn verdict(ty: FatType, clusters: u64) -> Ordering {
    let (min, max) = match ty {
        Fat12 => (1, MAX_FAT12_CLUSTERS),
        Fat16 => (MAX_FAT12_CLUSTERS + 1, MAX_FAT16_CLUSTERS),
        Fat32 => (MAX_FAT16_CLUSTERS + 1, MAX_FAT32_CLUSTERS),
    };
    if clusters < u64::from(min) {
        Ordering::Less
    } else if clusters > u64::from(max) {
        Ordering::Greater
    } else {
        Ordering::Equal
    }
}

/// Sizes the clusters of `b` for `ty`, starting from its cluster size: doubled while there
/// are too many clusters for the type, halved while too few (a type asked for on a small
/// volume). Never both, so it ends; `Err` says which way no cluster size would do.
fn fit(mut b: Bpb, ty: FatType) -> Result<Bpb, Ordering> {
    let start = b.sectors_per_cluster;
    let mut spc = start;
    loop {
        match verdict(ty, set_cluster_size(&mut b, ty, spc)) {
            Ordering::Equal => return Ok(b),
            Ordering::Greater if spc >= start && spc < MAX_SECTORS_PER_CLUSTER => spc *= 2,
            Ordering::Less if spc <= start && spc > 1 => spc /= 2,
            v => return Err(v),
        }
    }
}

/// Chooses type and layout for a volume of `size` bytes, as the module table says.
fn plan(size: u64, fat: Option<FatType>) -> Result<Bpb, FsError> {
    let Ok(total) = u32::try_from(size / SECTOR_SIZE) else {
        log::error!("mkfs: {size} bytes is more than 2^32 - 1 sectors of {SECTOR_SIZE} bytes");
        return Err(FsError::Invalid(
            "size too big for FAT: over 2 TiB (2^32 - 1 sectors)",
        ));
    };
    let floppy = FLOPPIES.into_iter().find(|f| f.0 * 1024 == size);
    let result = match fat {
        Some(Fat32) => fat32_plan(size, total),
        Some(ty) => fit(skeleton(ty, total, floppy.filter(|_| ty == Fat12)), ty),
        None if size >= FAT32_AUTO_BYTES => fat32_plan(size, total),
        None if floppy.is_some() => fit(skeleton(Fat12, total, floppy), Fat12),
        None => auto_small(total),
    };
    result.map_err(|v| refusal(size, fat, v))
}

/// FAT32 with mkfs.fat's cluster size for `size`.
fn fat32_plan(size: u64, total: u32) -> Result<Bpb, Ordering> {
    let mut b = skeleton(Fat32, total, None);
    b.sectors_per_cluster = fat32_default_spc(size);
    fit(b, Fat32)
}

/// Below 512 MiB with no type given: FAT12 if it holds the volume with 2 KiB clusters or
/// smaller, else FAT16 (whose clusters grow from 2 KiB).
fn auto_small(total: u32) -> Result<Bpb, Ordering> {
    match fit(skeleton(Fat12, total, None), Fat12) {
        Ok(b) if b.sectors_per_cluster <= HARD_DISK_SPC => Ok(b),
        Err(Ordering::Less) => Err(Ordering::Less),
        _ => fit(skeleton(Fat16, total, None), Fat16),
    }
}

/// The error for a size no cluster size fits, with the numbers logged.
fn refusal(size: u64, fat: Option<FatType>, v: Ordering) -> FsError {
    let small = v == Ordering::Less;
    let what = if small { "small" } else { "big" };
    let bits = fat.map_or(String::new(), |t| t.entry_bits().to_string());
    log::error!(
        "mkfs: {size} bytes is too {what} for FAT{bits}: no cluster size from 512 B to 64 KiB \
         gives a cluster count in the type's range"
    );
    FsError::Invalid(match (fat, small) {
        (None, _) => "size too small for a FAT volume (no room for a data cluster)",
        (Some(Fat12), true) => "size too small for FAT12 (no room for a data cluster)",
        (Some(Fat12), false) => "size too big for FAT12 (over 4084 clusters of 64 KiB)",
        (Some(Fat16), true) => "size too small for FAT16 (under 4085 clusters of 512 B)",
        (Some(Fat16), false) => "size too big for FAT16 (over 65524 clusters of 64 KiB)",
        (Some(Fat32), _) => "size too small for FAT32 (under 65525 clusters of 512 B)",
    })
}

/// Whether a label may hold `b`: printable ASCII that a short name allows.
fn label_byte_ok(b: u8) -> bool {
    (0x20..0x7F).contains(&b) && !b"\"*+,./:;<=>?[\\]|".contains(&b)
}

/// Checks and pads a label: ASCII, 1 to 11 characters, none that a short name forbids;
/// lower case becomes upper case, as DOS stores labels.
fn volume_label(text: &str) -> Result<[u8; SHORT_NAME_LEN], FsError> {
    let bytes = text.trim_end_matches(' ').as_bytes();
    let bad = match bytes {
        [] => Some("label is empty"),
        // fsck.fat drops a label that starts with a space as invalid.
        [b' ', ..] => Some("label starts with a space"),
        b if b.len() > SHORT_NAME_LEN => Some("label is longer than 11 characters"),
        b if !b.iter().all(|c| label_byte_ok(*c)) => Some(
            "label has a character FAT forbids: not printable ASCII, or one of \"*+,./:;<=>?[\\]|",
        ),
        _ => None,
    };
    if let Some(why) = bad {
        return Err(FsError::Invalid(why));
    }
    let mut label = [b' '; SHORT_NAME_LEN];
    label[..bytes.len()].copy_from_slice(bytes);
    label.make_ascii_uppercase();
    Ok(label)
}

/// A serial number from the clock: seconds in the low bits, the sub-second part rotated into
/// the high ones, so two images made in the same second still differ.
fn volume_id_from(now: Duration) -> u32 {
    // Truncation is the point: only the changing low bits of the seconds matter.
    (now.as_secs() as u32) ^ now.subsec_nanos().rotate_left(16)
}

/// Sector 0 for `bpb`, parsed back as a mount would parse it, so that a layout bug refuses
/// to write an image the rest of fatcache would refuse to read.
fn boot_sector(bpb: &Bpb) -> Result<Sector, FsError> {
    let mut s = [0u8; BOOT_SECTOR_SIZE];
    bpb.serialize(&mut s);
    // EB xx jumps xx bytes past the end of its own two bytes.
    let code = usize::from(bpb.jump_boot[1]) + 2;
    s[code..code + BOOT_CODE.len()].copy_from_slice(&BOOT_CODE);
    let back = Bpb::parse(&s)?;
    if back != *bpb || fs_type_string(back.fat_type()) != bpb.fs_type {
        log::error!("mkfs: planned {bpb:?}, the boot sector reads differently");
        return Err(FsError::Invalid("mkfs made an inconsistent boot sector"));
    }
    Ok(s)
}

/// The reserved area: the boot sector, and on FAT32 FSInfo and both their copies at 6 and 7.
fn reserved_area(bpb: &Bpb, boot: &Sector) -> Vec<u8> {
    let sector = BOOT_SECTOR_SIZE;
    let mut area = vec![0u8; usize::from(bpb.reserved_sectors) * sector];
    area[..sector].copy_from_slice(boot);
    if bpb.fat32.is_some() {
        let info = FsInfo {
            // Every cluster is free but the root directory's.
            free_count: Some(bpb.data_clusters() - 1),
            // The kernel reads this as the last cluster allocated, as mkfs.fat writes it.
            next_free: Some(ROOT_CLUSTER),
        };
        let (backup, info_at) = (usize::from(BACKUP_BOOT_SECTOR), usize::from(FSINFO_SECTOR));
        area.copy_within(..sector, backup * sector);
        for at in [info_at, backup + info_at] {
            info.serialize(&mut area[at * sector..(at + 1) * sector]);
        }
    }
    area
}

/// The first bytes of each FAT: entry 0 the media byte with all higher bits set, entry 1
/// end-of-chain (its clean-shutdown bits set), and on FAT32 cluster 2, the root, end-of-chain.
fn fat_head(bpb: &Bpb) -> Vec<u8> {
    let (m16, m32) = (u16::from(bpb.media), u32::from(bpb.media));
    match bpb.fat_type() {
        // Two 12-bit entries share three bytes.
        Fat12 => (0xF00 | m32 | FAT12_EOC << 12).to_le_bytes()[..3].to_vec(),
        Fat16 => [0xFF00 | m16, FAT16_EOC].map(u16::to_le_bytes).concat(),
        Fat32 => [0x0FFF_FF00 | m32, FAT32_EOC, FAT32_EOC]
            .map(u32::to_le_bytes)
            .concat(),
    }
}

/// The volume-label entry of the root directory, stamped with `now` (as UTC: mkfs has no
/// time zone to go by).
fn label_entry(label: [u8; SHORT_NAME_LEN], now: Duration) -> [u8; DIR_ENTRY_SIZE] {
    let secs = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
    let (date, time, centis) = unix_to_fat(secs, now.subsec_nanos(), 0);
    let mut e = [0u8; DIR_ENTRY_SIZE];
    e[..SHORT_NAME_LEN].copy_from_slice(&label);
    e[11] = ATTR_VOLUME_ID;
    e[13] = centis;
    // Creation time and date, access date, write time and date.
    for (off, v) in [(14, time), (16, date), (18, date), (22, time), (24, date)] {
        e[off..off + 2].copy_from_slice(&v.to_le_bytes());
    }
    e
}

/// Creates `path`, or empties it when it exists and may be overwritten, and sizes it.
///
/// The one place outside `dev` that opens an image: `FileDevice` opens existing images, and
/// a new one must first exist at its final length. Emptying before growing leaves a sparse
/// file whose data area reads as zeros without being written, so a 1 GiB image is quick.
fn create_image(path: &Path, size: u64, force: bool) -> Result<(), FsError> {
    let mut opts = OpenOptions::new();
    opts.write(true);
    let shown = path.display();
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => opts.create_new(true),
        Err(e) => return Err(e.into()),
        Ok(m) if !m.is_file() => {
            log::error!("mkfs: {shown} exists and is not a regular file");
            return Err(FsError::Invalid("image exists and is not a regular file"));
        }
        Ok(m) if m.len() > 0 && !force => {
            log::error!("mkfs: {shown} has {} bytes; --force overwrites it", m.len());
            return Err(FsError::Exists);
        }
        Ok(_) => opts.truncate(true),
    };
    opts.open(path)?.set_len(size)?;
    Ok(())
}

/// Writes `head` at `offset` and zeros after it up to `len` bytes.
///
/// A new image reads as zeros already; the zeros are written anyway so that the metadata's
/// blocks are allocated now (a full host disk fails mkfs, not a later mount) and so that no
/// stale bytes can survive in a region the driver will read.
fn write_region(dev: &FileDevice, offset: u64, len: u64, head: &[u8]) -> Result<(), FsError> {
    dev.write_at(offset, head)?;
    let zeros = vec![0u8; len.min(ZERO_CHUNK as u64) as usize];
    let mut at = head.len() as u64;
    while at < len {
        let n = (len - at).min(zeros.len() as u64) as usize;
        dev.write_at(offset + at, &zeros[..n])?;
        at += n as u64;
    }
    Ok(())
}

/// Writes the reserved area, the FATs and the root directory (`root` at its start).
fn write_volume(dev: &FileDevice, bpb: &Bpb, boot: &Sector, root: &[u8]) -> Result<(), FsError> {
    dev.write_at(0, &reserved_area(bpb, boot))?;
    let fat_bytes = u64::from(bpb.sectors_per_fat()) * SECTOR_SIZE;
    let head = fat_head(bpb);
    for n in 0..u64::from(bpb.num_fats) {
        let at = bpb.first_fat_sector() * SECTOR_SIZE + n * fat_bytes;
        write_region(dev, at, fat_bytes, &head)?;
    }
    // FAT12/16 have a fixed root region; FAT32's root is cluster 2, which plan() always has.
    let (root_sector, root_bytes) = match bpb.first_root_dir_sector() {
        Some(s) => (s, u64::from(bpb.root_dir_sectors()) * SECTOR_SIZE),
        None => (bpb.first_data_sector(), u64::from(bpb.bytes_per_cluster())),
    };
    write_region(dev, root_sector * SECTOR_SIZE, root_bytes, root)?;
    dev.flush()
}

/// Makes a new FAT volume in the image file `path` (created, or emptied with `force`).
///
/// Everything is checked before the file is touched: a refused size or label leaves an
/// existing file as it was. Only the reserved area, the FATs and the root directory are
/// written; the data area of the new file stays a hole.
pub fn mkfs(path: &Path, opts: &MkfsOptions) -> Result<MkfsReport, FsError> {
    let label = opts.label.as_deref().map(volume_label).transpose()?;
    let mut bpb = plan(opts.size, opts.fat)?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH);
    let now = now.unwrap_or_default();
    bpb.volume_id = opts.volume_id.unwrap_or_else(|| volume_id_from(now));
    bpb.volume_label = label.unwrap_or(NO_NAME);
    let boot = boot_sector(&bpb)?;
    let root = label.map(|l| label_entry(l, now).to_vec());
    create_image(path, opts.size, opts.force)?;
    let dev = FileDevice::open(path, Placement::default())?;
    if dev.read_only() {
        return Err(FsError::ReadOnly);
    }
    write_volume(&dev, &bpb, &boot, &root.unwrap_or_default())?;
    Ok(MkfsReport {
        fat_type: bpb.fat_type(),
        cluster_bytes: bpb.bytes_per_cluster(),
        clusters: bpb.data_clusters(),
        sectors_per_fat: bpb.sectors_per_fat(),
        total_sectors: bpb.total_sectors(),
        volume_id: bpb.volume_id,
        label: label.map(|l| String::from_utf8_lossy(&l).trim_end().to_string()),
    })
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileExt, MetadataExt};
    use std::path::PathBuf;
    use std::process::Command;

    const K: u64 = 1 << 10;
    const M: u64 = 1 << 20;
    const G: u64 = 1 << 30;

    /// A directory of the test's own under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            let name = format!("fatcache-mkfs-{}-{tag}", std::process::id());
            let dir = std::env::temp_dir().join(name);
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("temp dir");
            TempDir(dir)
        }

        fn img(&self) -> PathBuf {
            self.0.join("fat.img")
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn opts(size: u64, fat: Option<FatType>, label: Option<&str>) -> MkfsOptions {
        let label = label.map(str::to_string);
        let volume_id = Some(0x1234_abcd);
        let force = false;
        MkfsOptions {
            size,
            fat,
            label,
            volume_id,
            force,
        }
    }

    /// An installed tool, looked for in PATH and the sbin directories (fsck.fat lives there).
    fn tool(name: &str) -> Option<PathBuf> {
        let path = std::env::var("PATH").unwrap_or_default();
        let dirs = path.split(':').chain(["/usr/sbin", "/sbin"]);
        dirs.map(|d| Path::new(d).join(name)).find(|p| p.is_file())
    }

    fn read_at(img: &Path, offset: u64, len: u64) -> Vec<u8> {
        let mut buf = vec![0u8; len as usize];
        let file = std::fs::File::open(img).expect("open image");
        file.read_exact_at(&mut buf, offset).expect("read image");
        buf
    }

    #[test]
    fn parse_size_units() {
        #[rustfmt::skip]
        let good = [("512", 512), ("1440K", 1440 * K), ("1440k", 1440 * K), ("64M", 64 * M),
            ("64MiB", 64 * M), ("64mb", 64 * M), (" 1G ", G), ("0", 0)];
        for (text, want) in good {
            assert_eq!(parse_size(text).expect(text), want, "{text}");
        }
        for text in ["", "K", "12X", "-1", "1.5M", "64 M", "1T", "17179869184G"] {
            let refused = matches!(parse_size(text), Err(FsError::Invalid(_)));
            assert!(refused, "{text:?}");
        }
    }

    /// Size, type asked, then mkfs.fat's choice: type, sectors per cluster, root entries,
    /// media, sectors per track, heads.
    type PlanCase = (u64, Option<FatType>, FatType, u8, u16, u8, u16, u16);

    /// The module table, row by row, as mkfs.fat 4.2 made these sizes.
    #[rustfmt::skip]
    const PLANS: &[PlanCase] = &[
        (360 * K,  None, Fat12, 2, 112, 0xFD, 9, 2),
        (720 * K,  None, Fat12, 2, 112, 0xF9, 9, 2),
        (1200 * K, None, Fat12, 1, 224, 0xF9, 15, 2),
        (1440 * K, None, Fat12, 1, 224, 0xF0, 18, 2),
        (2880 * K, None, Fat12, 2, 224, 0xF0, 36, 2),
        (1440 * K, Some(Fat12), Fat12, 1, 224, 0xF0, 18, 2),
        (64 * K,   None, Fat12, 4, 512, 0xF8, 16, 2),
        (4 * M,    None, Fat12, 4, 512, 0xF8, 32, 2),
        (16 * M,   None, Fat16, 4, 512, 0xF8, 32, 2),
        (32 * M,   None, Fat16, 4, 512, 0xF8, 32, 4),
        (64 * M,   None, Fat16, 4, 512, 0xF8, 32, 8),
        (256 * M,  None, Fat16, 8, 512, 0xF8, 32, 16),
        (511 * M,  None, Fat16, 16, 512, 0xF8, 63, 32),
        (512 * M,  None, Fat32, 8, 0, 0xF8, 63, 32),
        (G,        None, Fat32, 8, 0, 0xF8, 63, 64),
        (16 * G,   None, Fat32, 16, 0, 0xF8, 63, 255),
        (32 * G,   None, Fat32, 32, 0, 0xF8, 63, 255),
        (64 * G,   None, Fat32, 64, 0, 0xF8, 63, 255),
        (64 * M,   Some(Fat32), Fat32, 1, 0, 0xF8, 32, 8),
        (300 * M,  Some(Fat32), Fat32, 8, 0, 0xF8, 63, 16),
        (16 * M,   Some(Fat12), Fat12, 16, 512, 0xF8, 32, 2),
        (128 * M,  Some(Fat12), Fat12, 128, 512, 0xF8, 32, 8),
        (2 * G,    Some(Fat16), Fat16, 128, 512, 0xF8, 63, 128),
    ];

    /// What a plan is compared on: the columns of `PLANS` after the type asked.
    fn key(b: &Bpb) -> (FatType, u8, u16, u8, u16, u16) {
        let geometry = (b.media, b.sectors_per_track, b.num_heads);
        let (spc, root) = (b.sectors_per_cluster, b.root_entries);
        (b.fat_type(), spc, root, geometry.0, geometry.1, geometry.2)
    }

    #[test]
    fn plan_follows_mkfs_fat_defaults() {
        for &(size, fat, ty, spc, root, media, spt, heads) in PLANS {
            let got = key(&plan(size, fat).expect("plans"));
            assert_eq!(got, (ty, spc, root, media, spt, heads), "{size} {fat:?}");
        }
    }

    #[test]
    fn plan_matches_installed_mkfs_fat() {
        let Some(mkfs_fat) = tool("mkfs.fat") else {
            println!("skipping plan_matches_installed_mkfs_fat: mkfs.fat not found");
            return;
        };
        let dir = TempDir::new("vs-mkfs-fat");
        for &(size, fat, ..) in PLANS.iter().filter(|c| c.0 <= 2 * G) {
            let _ = std::fs::remove_file(dir.img());
            let mut cmd = Command::new(&mkfs_fat);
            if let Some(ty) = fat {
                cmd.args(["-F", &ty.entry_bits().to_string()]);
            }
            let kib = (size / K).to_string();
            let out = cmd.arg("-C").arg(dir.img()).arg(kib).output();
            assert!(out.expect("mkfs.fat").status.success(), "mkfs.fat {size}");
            let mut theirs = Bpb::parse(&read_at(&dir.img(), 0, 512)).expect("parses");
            let ours = plan(size, fat).expect("plans");
            // mkfs.fat rounds the root directory up to whole clusters (see the module doc).
            theirs.root_entries = ours.root_entries;
            assert_eq!(key(&theirs), key(&ours), "{size} {fat:?}");
        }
    }

    #[test]
    fn refusals() {
        #[rustfmt::skip]
        let cases = [
            (10 * K, None, "too small"), (8 * M, Some(Fat32), "FAT32"),
            (256 * M, Some(Fat12), "FAT12"), (M, Some(Fat16), "FAT16"),
            (5 * G, Some(Fat16), "FAT16"), (3 << 40, None, "2 TiB"),
        ];
        let dir = TempDir::new("refusals");
        for (size, fat, says) in cases {
            match mkfs(&dir.img(), &opts(size, fat, None)) {
                Err(e @ FsError::Invalid(_)) => assert!(e.to_string().contains(says), "{e}"),
                other => panic!("{size} {fat:?}: {other:?}"),
            }
            assert!(!dir.img().exists(), "a refused size creates no file");
        }
    }

    #[test]
    fn labels() {
        let l = volume_label("my disk").expect("valid");
        assert_eq!(&l, b"MY DISK    ");
        assert_eq!(&volume_label("X!#$%&'()-@").expect("valid"), b"X!#$%&'()-@");
        #[rustfmt::skip]
        let bad = ["", "   ", " LEAD", "TWELVE CHARS", "A.B", "A*", "TAB\t", "caf\u{e9}"];
        for text in bad {
            let refused = matches!(volume_label(text), Err(FsError::Invalid(_)));
            assert!(refused, "{text:?}");
        }
    }

    #[test]
    fn existing_file_needs_force() {
        let dir = TempDir::new("force");
        let img = dir.img();
        std::fs::write(&img, b"precious").expect("write");
        let err = mkfs(&img, &opts(1440 * K, None, None)).expect_err("refused");
        assert!(matches!(err, FsError::Exists), "{err:?}");
        assert_eq!(std::fs::read(&img).expect("read"), b"precious");
        let mut forced = opts(1440 * K, None, None);
        forced.force = true;
        mkfs(&img, &forced).expect("with force");
        Bpb::parse(&read_at(&img, 0, 512)).expect("a FAT volume now");
        std::fs::write(&img, b"").expect("empty it");
        mkfs(&img, &opts(1440 * K, None, None)).expect("an empty file needs no force");
    }

    #[test]
    fn volume_id_makes_images_reproducible() {
        let (a, b) = (TempDir::new("repro-a"), TempDir::new("repro-b"));
        for dir in [&a, &b] {
            mkfs(&dir.img(), &opts(2 * M, None, None)).expect("mkfs");
        }
        let read = |d: &TempDir| std::fs::read(d.img()).expect("read");
        assert!(read(&a) == read(&b), "same options, same bytes");
    }

    #[test]
    fn big_image_stays_sparse() {
        let dir = TempDir::new("sparse");
        let started = std::time::Instant::now();
        let report = mkfs(&dir.img(), &opts(G, None, None)).expect("mkfs");
        assert_eq!(report.fat_type, Fat32);
        let meta = std::fs::metadata(dir.img()).expect("stat");
        assert_eq!(meta.len(), G);
        // Two FATs of 2044 sectors, the reserved area and one cluster: about 2 MiB written.
        let (allocated, took) = (meta.blocks() * 512, started.elapsed());
        assert!(allocated < 16 * M, "{allocated} bytes allocated");
        assert!(took.as_secs() < 10, "took {took:?}");
    }

    /// Checks the FATs' first entries and, on FAT32, FSInfo and the backup boot sector.
    fn check_metadata(img: &Path, bpb: &Bpb, media: u8) {
        let fat = read_at(img, bpb.first_fat_sector() * 512, 12);
        let want: &[u8] = match bpb.fat_type() {
            Fat12 => &[media, 0xFF, 0xFF, 0],
            Fat16 => &[media, 0xFF, 0xFF, 0xFF, 0, 0],
            Fat32 => &[
                media, 0xFF, 0xFF, 0x0F, 0xFF, 0xFF, 0xFF, 0x0F, 0xFF, 0xFF, 0xFF, 0x0F,
            ],
        };
        assert_eq!(&fat[..want.len()], want);
        if bpb.fat_type() != Fat32 {
            return;
        }
        let reserved = read_at(img, 0, 8 * 512);
        assert_eq!(reserved[..512], reserved[6 * 512..7 * 512], "backup");
        for at in [1, 7] {
            let info = FsInfo::parse(&reserved[at * 512..]).expect("FSInfo");
            assert_eq!(info.free_count, Some(bpb.data_clusters() - 1));
            assert_eq!(info.next_free, Some(2));
        }
    }

    /// `fsck.fat -n` must pass without a word beyond its banner and summary.
    fn fsck_clean(img: &Path, what: &str) {
        let Some(fsck) = tool("fsck.fat") else {
            println!("skipping fsck.fat check of {what}: fsck.fat not found (install dosfstools)");
            return;
        };
        let out = Command::new(fsck).arg("-n").arg(img).output();
        let out = out.expect("run fsck.fat");
        let text = String::from_utf8_lossy(&out.stdout);
        let summary = |l: &str| l.starts_with("fsck.fat ") || l.contains(" files, ");
        let complaints: Vec<&str> = text.lines().filter(|l| !summary(l)).collect();
        assert!(out.status.success(), "{what}: fsck.fat failed: {text}");
        let quiet = complaints.is_empty() && out.stderr.is_empty();
        assert!(quiet, "{what}: {out:?}");
    }

    /// mtools must read the root directory and show the label.
    fn mdir_reads(img: &Path, label: Option<&str>, what: &str) {
        let Some(mdir) = tool("mdir") else {
            println!("skipping mdir check of {what}: mdir not found (install mtools)");
            return;
        };
        let mut cmd = Command::new(mdir);
        cmd.env("MTOOLS_SKIP_CHECK", "1");
        let out = cmd.arg("-i").arg(img).arg("::").output().expect("run mdir");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{what}: mdir failed: {out:?}");
        let want = label.map_or("has no label".to_string(), |l| format!("is {l}"));
        assert!(text.contains(&want), "{what}: {text}");
    }

    /// Makes an image with and without a label and checks it every way there is.
    fn check_image(tag: &str, size: u64, fat: Option<FatType>, ty: FatType, cluster: u32) {
        for label in [None, Some("Fat Cache")] {
            let what = format!("{tag} label {label:?}");
            let dir = TempDir::new(&format!("{tag}-{}", label.is_some()));
            let report = mkfs(&dir.img(), &opts(size, fat, label)).expect(&what);
            let bpb = Bpb::parse(&read_at(&dir.img(), 0, 512)).expect(&what);
            let got = (bpb.fat_type(), bpb.bytes_per_cluster(), bpb.volume_id);
            assert_eq!(got, (ty, cluster, 0x1234_abcd), "{what}");
            assert_eq!(report.clusters, bpb.data_clusters(), "{what}");
            let stored = label.map_or(NO_NAME, |l| volume_label(l).expect("valid"));
            assert_eq!(bpb.volume_label, stored, "{what}");
            check_metadata(&dir.img(), &bpb, bpb.media);
            fsck_clean(&dir.img(), &what);
            mdir_reads(&dir.img(), label.map(|_| "FAT CACHE"), &what);
        }
    }

    #[test]
    fn fat12_floppy_image() {
        check_image("fat12", 1440 * K, None, Fat12, 512);
    }

    #[test]
    fn fat16_32m_image() {
        check_image("fat16", 32 * M, None, Fat16, 2048);
    }

    #[test]
    fn fat32_64m_image() {
        check_image("fat32-64m", 64 * M, Some(Fat32), Fat32, 512);
    }

    #[test]
    fn fat32_300m_image() {
        check_image("fat32-300m", 300 * M, Some(Fat32), Fat32, 4096);
    }
}
