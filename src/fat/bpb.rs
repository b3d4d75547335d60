//! The boot sector: BIOS parameter block (BPB), the volume-state byte, and FAT32's FSInfo sector.
//!
//! Models: fs/fat/inode.c fat_read_bpb() and the geometry half of fat_fill_super() (v5.10),
//! fs/fat/misc.c fat_clusters_flush() for FSInfo; format from fatgen103.
//!
//! Pure: parses and writes byte slices, never touches the device or the page cache. The mount
//! code reads sector 0, calls [`Bpb::parse`], and keeps the result for the life of the mount.
//!
//! Sector 0 layout (offsets in bytes, all fields little-endian):
//!
//! | offset | size | field | | offset | size | FAT32 only |
//! |---|---|---|---|---|---|---|
//! | 0 | 3 | jump to boot code | | 36 | 4 | sectors per FAT |
//! | 3 | 8 | OEM name | | 40 | 2 | ext flags (mirroring, active FAT) |
//! | 11 | 2 | bytes per sector | | 42 | 2 | version |
//! | 13 | 1 | sectors per cluster | | 44 | 4 | root directory cluster |
//! | 14 | 2 | reserved sectors | | 48 | 2 | FSInfo sector |
//! | 16 | 1 | number of FATs | | 50 | 2 | backup boot sector |
//! | 17 | 2 | root entries (FAT12/16) | | 52 | 12 | reserved |
//! | 19 | 2 | total sectors, 16-bit | | | | |
//! | 21 | 1 | media byte | | | | |
//! | 22 | 2 | sectors per FAT, 16-bit | | | | |
//! | 24 | 2 | sectors per track | | | | |
//! | 26 | 2 | heads | | | | |
//! | 28 | 4 | hidden sectors | | | | |
//! | 32 | 4 | total sectors, 32-bit | | | | |
//!
//! The extended boot record follows at 36 (FAT12/16) or 64 (FAT32): drive number, the state
//! byte, the 0x29 signature, volume id, label and type string. 0x55 0xAA ends the sector at 510.
//!
//! Deviations from the kernel, where fatcache follows fatgen103 because a driver that writes
//! should refuse a volume it cannot lay out exactly, rather than guess and damage it:
//! * The FAT type comes from the cluster count alone (fatgen103). The kernel calls any volume
//!   whose 16-bit FAT size is 0 FAT32; such a volume with fewer than 65525 clusters (mkfs.fat
//!   makes them with `-F 32` on small images, with a warning) is refused here.
//! * A missing 0x55AA signature or an unknown jump instruction is refused; the kernel's
//!   fat_read_bpb() checks neither (it checks the jump only when it falls back to a DOS 1.x
//!   floppy without BPB, which fatcache does not support).
//! * A FAT too small for the cluster count is refused; the kernel shrinks the cluster count
//!   to what the FAT can hold.
//! * FAT12/16 root entries of 0, FAT32 root entries other than 0, and FAT32 root cluster,
//!   FSInfo, backup-boot and active-FAT numbers that point outside their area are refused.

use std::fmt;

use crate::error::FsError;

/// Bytes of the boot sector that carry the BPB and signature, whatever the sector size.
pub const BOOT_SECTOR_SIZE: usize = 512;
/// The extended boot signature saying volume id, label and type string are present.
pub const EXT_BOOT_SIGNATURE: u8 = 0x29;
/// Bit 0 of the state byte: the volume is mounted or was not unmounted cleanly.
pub const FAT_STATE_DIRTY: u8 = 0x01;
/// The most clusters a FAT12 volume has; one more makes it FAT16.
pub const MAX_FAT12_CLUSTERS: u32 = 4084;
/// The most clusters a FAT16 volume has; one more makes it FAT32.
pub const MAX_FAT16_CLUSTERS: u32 = 65_524;
/// The most clusters a FAT32 volume can have: cluster numbers 2..=0x0FFFFFF6, since
/// 0x0FFFFFF7 marks a bad cluster.
pub const MAX_FAT32_CLUSTERS: u32 = 0x0FFF_FFF5;
/// Size of one directory entry in bytes.
const DIR_ENTRY_SIZE: u64 = 32;
/// The first cluster number of the data area.
const FAT_START_ENT: u32 = 2;

const OFF_JUMP: usize = 0;
const OFF_OEM_NAME: usize = 3;
const OFF_BYTES_PER_SECTOR: usize = 11;
const OFF_SECTORS_PER_CLUSTER: usize = 13;
const OFF_RESERVED_SECTORS: usize = 14;
const OFF_NUM_FATS: usize = 16;
const OFF_ROOT_ENTRIES: usize = 17;
const OFF_TOTAL_SECTORS_16: usize = 19;
const OFF_MEDIA: usize = 21;
const OFF_SECTORS_PER_FAT_16: usize = 22;
const OFF_SECTORS_PER_TRACK: usize = 24;
const OFF_NUM_HEADS: usize = 26;
const OFF_HIDDEN_SECTORS: usize = 28;
const OFF_TOTAL_SECTORS_32: usize = 32;
const OFF_SECTORS_PER_FAT_32: usize = 36;
const OFF_EXT_FLAGS: usize = 40;
const OFF_FS_VERSION: usize = 42;
const OFF_ROOT_CLUSTER: usize = 44;
const OFF_FSINFO_SECTOR: usize = 48;
const OFF_BACKUP_BOOT_SECTOR: usize = 50;
/// Start of the extended boot record on FAT12/16.
const OFF_EBR_FAT16: usize = 36;
/// Start of the extended boot record on FAT32.
const OFF_EBR_FAT32: usize = 64;
// Offsets inside the extended boot record.
const EBR_DRIVE_NUMBER: usize = 0;
const EBR_STATE: usize = 1;
const EBR_SIGNATURE: usize = 2;
const EBR_VOLUME_ID: usize = 3;
const EBR_LABEL: usize = 7;
const EBR_FS_TYPE: usize = 18;
const OFF_SIGNATURE: usize = 510;

/// ext flags bit 7: only the active FAT is written, the others are stale.
const EXT_FLAGS_NO_MIRROR: u16 = 0x0080;
/// ext flags bits 0..=3: the active FAT when mirroring is off.
const EXT_FLAGS_ACTIVE_MASK: u16 = 0x000f;

/// The width of the FAT entries, decided by the count of data clusters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FatType {
    /// 12-bit entries: at most 4084 clusters.
    Fat12,
    /// 16-bit entries: 4085..=65524 clusters.
    Fat16,
    /// 32-bit entries of which the low 28 bits count: 65525 clusters or more.
    Fat32,
}

impl FatType {
    /// The type fatgen103 assigns to a volume with `clusters` data clusters.
    pub fn from_clusters(clusters: u32) -> FatType {
        if clusters <= MAX_FAT12_CLUSTERS {
            FatType::Fat12
        } else if clusters <= MAX_FAT16_CLUSTERS {
            FatType::Fat16
        } else {
            FatType::Fat32
        }
    }

    /// Bits one FAT entry takes on disk.
    pub fn entry_bits(self) -> u32 {
        match self {
            FatType::Fat12 => 12,
            FatType::Fat16 => 16,
            FatType::Fat32 => 32,
        }
    }
}

/// The fields only FAT32 has, at offsets 36..64.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fat32Fields {
    /// Sectors per FAT (BPB_FATSz32).
    pub sectors_per_fat_32: u32,
    /// Bit 7: mirroring off; bits 0..=3: the active FAT then.
    pub ext_flags: u16,
    /// Version, high byte major; 0.0 is the only one defined.
    pub fs_version: u16,
    /// First cluster of the root directory.
    pub root_cluster: u32,
    /// Sector of the FSInfo structure in the reserved area; 0 read as 1, as the kernel does.
    pub fsinfo_sector: u16,
    /// Sector of the boot-sector copy in the reserved area; 0 = none.
    pub backup_boot_sector: u16,
}

/// A parsed and validated BIOS parameter block, with the geometry derived from it.
///
/// The raw fields keep their on-disk values so that [`Bpb::serialize`] writes back exactly
/// what was read. The state byte is not among them: it changes while mounted and is read and
/// written only through [`Bpb::dirty`] and [`Bpb::set_dirty`], so a serialize of this struct
/// never undoes a dirty mark.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bpb {
    /// Jump to the boot code: EB xx 90 or E9 xx xx.
    pub jump_boot: [u8; 3],
    /// Name of the formatting system; informational.
    pub oem_name: [u8; 8],
    /// Bytes per logical sector: 512, 1024, 2048 or 4096.
    pub bytes_per_sector: u16,
    /// Sectors per cluster: a power of two, 1..=128.
    pub sectors_per_cluster: u8,
    /// Sectors before the first FAT, boot sector included.
    pub reserved_sectors: u16,
    /// Number of FAT copies.
    pub num_fats: u8,
    /// Entries of the fixed root directory (FAT12/16); 0 on FAT32.
    pub root_entries: u16,
    /// Total sectors if below 65536, else 0.
    pub total_sectors_16: u16,
    /// Media descriptor: 0xF0 or 0xF8..=0xFF; FAT entry 0 repeats it.
    pub media: u8,
    /// Sectors per FAT on FAT12/16; 0 on FAT32.
    pub sectors_per_fat_16: u16,
    /// CHS geometry: sectors per track; informational.
    pub sectors_per_track: u16,
    /// CHS geometry: heads; informational.
    pub num_heads: u16,
    /// Sectors before this volume on the disk; informational.
    pub hidden_sectors: u32,
    /// Total sectors when the 16-bit field is 0.
    pub total_sectors_32: u32,
    /// FAT32's extra fields; `Some` exactly when the volume is FAT32.
    pub fat32: Option<Fat32Fields>,
    /// BIOS drive number (0x00 floppy, 0x80 hard disk); informational.
    pub drive_number: u8,
    /// 0x29 when volume id, label and type string are valid.
    pub ext_boot_signature: u8,
    /// Volume serial number.
    pub volume_id: u32,
    /// Volume label, space padded; the root directory's label entry is the one DOS shows.
    pub volume_label: [u8; 11],
    /// Type string such as "FAT12   "; informational only, never used to pick the type.
    pub fs_type: [u8; 8],
}

/// Sector numbers of the regions, in u64 so that absurd fields cannot overflow.
struct Geometry {
    fat_start: u64,
    root_start: u64,
    data_start: u64,
    total: u64,
}

/// Logs what is wrong with a BPB field and fails with the error naming it.
fn bad_field<T>(field: &'static str, value: impl fmt::Display, why: &str) -> Result<T, FsError> {
    log::error!("fat: bad BPB field {field} = {value}: {why}");
    Err(FsError::Corrupted(field))
}

/// The first 512 bytes of `sector`, or `Invalid` if it is shorter.
fn boot_bytes(sector: &[u8]) -> Result<&[u8; BOOT_SECTOR_SIZE], FsError> {
    sector
        .get(..BOOT_SECTOR_SIZE)
        .and_then(|s| s.try_into().ok())
        .ok_or(FsError::Invalid("boot sector shorter than 512 bytes"))
}

/// The first 512 bytes of `sector` for writing.
///
/// # Panics
/// If `sector` is shorter than 512 bytes: a caller bug, never a property of the image.
fn boot_bytes_mut(sector: &mut [u8]) -> &mut [u8; BOOT_SECTOR_SIZE] {
    assert!(sector.len() >= BOOT_SECTOR_SIZE, "short boot sector");
    let head = &mut sector[..BOOT_SECTOR_SIZE];
    head.try_into().expect("length checked above")
}

/// Checks the 0x55AA signature and the jump instruction, the marks of a boot sector.
fn check_boot_code(s: &[u8; BOOT_SECTOR_SIZE]) -> Result<(), FsError> {
    let sig = [s[OFF_SIGNATURE], s[OFF_SIGNATURE + 1]];
    if sig != [0x55, 0xaa] {
        let text = format!("{:02x} {:02x}", sig[0], sig[1]);
        return bad_field("boot_signature", text, "not 55 aa");
    }
    // EB xx 90 is the short jump and E9 xx xx the near jump fatgen103 allows.
    let jump = [s[OFF_JUMP], s[OFF_JUMP + 1], s[OFF_JUMP + 2]];
    if !matches!(jump, [0xeb, _, 0x90] | [0xe9, _, _]) {
        let text = format!("{:02x} {:02x} {:02x}", jump[0], jump[1], jump[2]);
        return bad_field("jump_boot", text, "not EB xx 90 or E9 xx xx");
    }
    Ok(())
}

fn get16(s: &[u8; BOOT_SECTOR_SIZE], off: usize) -> u16 {
    u16::from_le_bytes([s[off], s[off + 1]])
}

fn get32(s: &[u8; BOOT_SECTOR_SIZE], off: usize) -> u32 {
    u32::from_le_bytes([s[off], s[off + 1], s[off + 2], s[off + 3]])
}

fn get_bytes<const N: usize>(s: &[u8; BOOT_SECTOR_SIZE], off: usize) -> [u8; N] {
    let mut out = [0; N];
    out.copy_from_slice(&s[off..off + N]);
    out
}

fn put16(s: &mut [u8; BOOT_SECTOR_SIZE], off: usize, v: u16) {
    s[off..off + 2].copy_from_slice(&v.to_le_bytes());
}

fn put32(s: &mut [u8; BOOT_SECTOR_SIZE], off: usize, v: u32) {
    s[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

impl Bpb {
    /// Parses and validates sector 0 of a FAT volume.
    ///
    /// Models: fs/fat/inode.c fat_read_bpb() and the geometry checks of fat_fill_super() (v5.10).
    ///
    /// A bad field is logged with its name and value and returned as
    /// `FsError::Corrupted(field name)`; derived quantities are named `cluster_count`.
    /// `sector` may be a whole 4096-byte sector; only its first 512 bytes are read.
    pub fn parse(sector: &[u8]) -> Result<Bpb, FsError> {
        let s = boot_bytes(sector)?;
        check_boot_code(s)?;
        let bpb = Bpb::read_fields(s);
        bpb.validate_fields()?;
        bpb.validate_regions()?;
        bpb.validate_type()?;
        bpb.validate_fat32()?;
        Ok(bpb)
    }

    /// Reads every field without judging it. FAT32's block is read when the 16-bit FAT size
    /// is 0, the one on-disk hint of the layout before the cluster count is known.
    fn read_fields(s: &[u8; BOOT_SECTOR_SIZE]) -> Bpb {
        let sectors_per_fat_16 = get16(s, OFF_SECTORS_PER_FAT_16);
        let fat32 = (sectors_per_fat_16 == 0).then(|| Fat32Fields {
            sectors_per_fat_32: get32(s, OFF_SECTORS_PER_FAT_32),
            ext_flags: get16(s, OFF_EXT_FLAGS),
            fs_version: get16(s, OFF_FS_VERSION),
            root_cluster: get32(s, OFF_ROOT_CLUSTER),
            fsinfo_sector: get16(s, OFF_FSINFO_SECTOR),
            backup_boot_sector: get16(s, OFF_BACKUP_BOOT_SECTOR),
        });
        let ebr = if fat32.is_some() {
            OFF_EBR_FAT32
        } else {
            OFF_EBR_FAT16
        };
        Bpb {
            jump_boot: get_bytes(s, OFF_JUMP),
            oem_name: get_bytes(s, OFF_OEM_NAME),
            bytes_per_sector: get16(s, OFF_BYTES_PER_SECTOR),
            sectors_per_cluster: s[OFF_SECTORS_PER_CLUSTER],
            reserved_sectors: get16(s, OFF_RESERVED_SECTORS),
            num_fats: s[OFF_NUM_FATS],
            root_entries: get16(s, OFF_ROOT_ENTRIES),
            total_sectors_16: get16(s, OFF_TOTAL_SECTORS_16),
            media: s[OFF_MEDIA],
            sectors_per_fat_16,
            sectors_per_track: get16(s, OFF_SECTORS_PER_TRACK),
            num_heads: get16(s, OFF_NUM_HEADS),
            hidden_sectors: get32(s, OFF_HIDDEN_SECTORS),
            total_sectors_32: get32(s, OFF_TOTAL_SECTORS_32),
            fat32,
            drive_number: s[ebr + EBR_DRIVE_NUMBER],
            ext_boot_signature: s[ebr + EBR_SIGNATURE],
            volume_id: get32(s, ebr + EBR_VOLUME_ID),
            volume_label: get_bytes(s, ebr + EBR_LABEL),
            fs_type: get_bytes(s, ebr + EBR_FS_TYPE),
        }
    }

    /// Checks each field on its own: the checks of the kernel's fat_read_bpb() plus the
    /// root-entry granularity fat_fill_super() demands.
    fn validate_fields(&self) -> Result<(), FsError> {
        let bps = self.bytes_per_sector;
        if !bps.is_power_of_two() || !(512..=4096).contains(&bps) {
            return bad_field("bytes_per_sector", bps, "not 512, 1024, 2048 or 4096");
        }
        // Any power of two the byte holds, as the kernel accepts: clusters above 32 KiB break
        // fatgen103 and some DOS versions, but Linux mounts them, so we do too.
        let spc = self.sectors_per_cluster;
        if !spc.is_power_of_two() {
            return bad_field("sectors_per_cluster", spc, "not a power of two");
        }
        if self.reserved_sectors == 0 {
            return bad_field("reserved_sectors", 0, "sector 0 is reserved");
        }
        if self.num_fats == 0 {
            return bad_field("num_fats", 0, "a volume needs a FAT");
        }
        if self.media != 0xf0 && self.media < 0xf8 {
            let media = format!("{:#04x}", self.media);
            return bad_field("media", media, "not 0xf0 or 0xf8..=0xff");
        }
        if self.total_sectors() == 0 {
            return bad_field("total_sectors", 0, "both size fields are 0");
        }
        if self.sectors_per_fat() == 0 {
            return bad_field("sectors_per_fat", 0, "both size fields are 0");
        }
        // The kernel counts root-directory sectors by whole sectors and refuses a remainder.
        let root = self.root_entries;
        if u64::from(root) * DIR_ENTRY_SIZE % u64::from(bps) != 0 {
            return bad_field("root_entries", root, "not whole sectors");
        }
        Ok(())
    }

    /// Checks that the regions fit the volume in the order they lie on it.
    fn validate_regions(&self) -> Result<(), FsError> {
        let g = self.geometry();
        if g.fat_start >= g.total {
            return bad_field("reserved_sectors", g.fat_start, "fill the whole volume");
        }
        let spf = self.sectors_per_fat();
        if g.root_start > g.total {
            return bad_field("sectors_per_fat", spf, "FATs end past the volume");
        }
        let root = self.root_entries;
        if g.data_start > g.total {
            return bad_field("root_entries", root, "root ends past the volume");
        }
        if self.data_clusters() == 0 {
            return bad_field("cluster_count", 0, "no room for data");
        }
        Ok(())
    }

    /// Checks that the layout agrees with the FAT type the cluster count implies, and that
    /// the FAT has an entry for every cluster.
    fn validate_type(&self) -> Result<(), FsError> {
        let clusters = self.data_clusters();
        let ty = self.fat_type();
        let fat16_size = self.sectors_per_fat_16;
        if ty != FatType::Fat32 && fat16_size == 0 {
            return bad_field("sectors_per_fat_16", 0, "0 but clusters say FAT12/16");
        }
        if ty == FatType::Fat32 && fat16_size != 0 {
            return bad_field("sectors_per_fat_16", fat16_size, "not 0 on FAT32");
        }
        if clusters > MAX_FAT32_CLUSTERS {
            return bad_field("cluster_count", clusters, "beyond FAT32");
        }
        let spf = self.sectors_per_fat();
        let fat_bits = u64::from(spf) * u64::from(self.bytes_per_sector) * 8;
        let entries = fat_bits / u64::from(ty.entry_bits());
        if entries < u64::from(clusters) + u64::from(FAT_START_ENT) {
            return bad_field("sectors_per_fat", spf, "FAT too small for the clusters");
        }
        let root = self.root_entries;
        if ty == FatType::Fat32 && root != 0 {
            return bad_field("root_entries", root, "not 0 on FAT32");
        }
        if ty != FatType::Fat32 && root == 0 {
            return bad_field("root_entries", 0, "FAT12/16 need a root directory");
        }
        Ok(())
    }

    /// Checks the FAT32 block against the geometry.
    fn validate_fat32(&self) -> Result<(), FsError> {
        let Some(f) = self.fat32 else {
            return Ok(());
        };
        let root = f.root_cluster;
        if !(FAT_START_ENT..=self.max_cluster()).contains(&root) {
            return bad_field("root_cluster", root, "not a data cluster");
        }
        let rsv = u32::from(self.reserved_sectors);
        let info = self.fsinfo_sector().unwrap_or(1);
        // FSInfo is rewritten on every sync: outside the reserved area that would hit the FAT.
        if info >= rsv {
            return bad_field("fsinfo_sector", info, "outside the reserved area");
        }
        let backup = u32::from(f.backup_boot_sector);
        if backup != 0 && (backup >= rsv || backup == info) {
            return bad_field("backup_boot_sector", backup, "not a free reserved sector");
        }
        if self.active_fat().is_some_and(|n| n >= self.num_fats) {
            let flags = format!("{:#06x}", f.ext_flags);
            return bad_field("ext_flags", flags, "the active FAT does not exist");
        }
        if f.fs_version != 0 {
            // fatgen103 wants newer versions refused; the kernel ignores the field. Follow it.
            log::warn!("fat: FAT32 version {:#06x} is newer than 0.0", f.fs_version);
        }
        Ok(())
    }

    /// The region boundaries in u64 sectors.
    fn geometry(&self) -> Geometry {
        let fat_start = u64::from(self.reserved_sectors);
        let fat_sectors = u64::from(self.num_fats) * u64::from(self.sectors_per_fat());
        let root_start = fat_start + fat_sectors;
        Geometry {
            fat_start,
            root_start,
            data_start: root_start + u64::from(self.root_dir_sectors()),
            total: u64::from(self.total_sectors()),
        }
    }

    /// Sectors of the volume: the 16-bit field unless it is 0.
    pub fn total_sectors(&self) -> u32 {
        match self.total_sectors_16 {
            0 => self.total_sectors_32,
            n => u32::from(n),
        }
    }

    /// Sectors of one FAT: the 16-bit field, or FAT32's field when it is 0.
    pub fn sectors_per_fat(&self) -> u32 {
        match (self.sectors_per_fat_16, self.fat32) {
            (0, Some(f)) => f.sectors_per_fat_32,
            (n, _) => u32::from(n),
        }
    }

    /// Sector of the first FAT.
    pub fn first_fat_sector(&self) -> u64 {
        self.geometry().fat_start
    }

    /// Sectors of the fixed root directory (0 on FAT32).
    pub fn root_dir_sectors(&self) -> u32 {
        let bytes = u32::from(self.root_entries) * DIR_ENTRY_SIZE as u32;
        bytes.div_ceil(u32::from(self.bytes_per_sector).max(1))
    }

    /// Sector of the fixed root directory on FAT12/16; `None` on FAT32, whose root is a chain.
    pub fn first_root_dir_sector(&self) -> Option<u64> {
        self.fat32.is_none().then(|| self.geometry().root_start)
    }

    /// Sector of cluster 2, the first of the data area.
    pub fn first_data_sector(&self) -> u64 {
        self.geometry().data_start
    }

    /// Number of data clusters; a partial cluster at the end of the volume is not counted.
    pub fn data_clusters(&self) -> u32 {
        let g = self.geometry();
        let spc = u64::from(self.sectors_per_cluster);
        let clusters = g
            .total
            .saturating_sub(g.data_start)
            .checked_div(spc)
            .unwrap_or(0);
        // At most total sectors, which is a u32.
        u32::try_from(clusters).unwrap_or(u32::MAX)
    }

    /// The FAT type, from [`Bpb::data_clusters`] alone.
    pub fn fat_type(&self) -> FatType {
        FatType::from_clusters(self.data_clusters())
    }

    /// The highest valid cluster number, `data_clusters + 1`.
    ///
    /// The kernel's `sbi->max_cluster` is one more: the first invalid number.
    pub fn max_cluster(&self) -> u32 {
        self.data_clusters().saturating_add(FAT_START_ENT - 1)
    }

    /// Bytes in one cluster.
    pub fn bytes_per_cluster(&self) -> u32 {
        u32::from(self.bytes_per_sector) * u32::from(self.sectors_per_cluster)
    }

    /// First sector of data cluster `cluster`, or `None` if it is not in 2..=max_cluster.
    pub fn cluster_to_sector(&self, cluster: u32) -> Option<u64> {
        if !(FAT_START_ENT..=self.max_cluster()).contains(&cluster) {
            return None;
        }
        let index = u64::from(cluster - FAT_START_ENT);
        Some(self.first_data_sector() + index * u64::from(self.sectors_per_cluster))
    }

    /// FAT32's root directory cluster; `None` on FAT12/16.
    pub fn root_cluster(&self) -> Option<u32> {
        self.fat32.map(|f| f.root_cluster)
    }

    /// Sector of the FSInfo structure on FAT32 (a stored 0 reads as 1, as in the kernel);
    /// `None` on FAT12/16.
    pub fn fsinfo_sector(&self) -> Option<u32> {
        self.fat32.map(|f| u32::from(f.fsinfo_sector).max(1))
    }

    /// Whether every FAT copy is written (always on FAT12/16).
    pub fn fat_mirroring(&self) -> bool {
        self.fat32
            .is_none_or(|f| f.ext_flags & EXT_FLAGS_NO_MIRROR == 0)
    }

    /// The one FAT in use when FAT32 mirroring is off; `None` while mirroring.
    ///
    /// The kernel (v5.10) ignores these flags and writes every copy; a caller that does the
    /// same should still read from this FAT.
    pub fn active_fat(&self) -> Option<u8> {
        let f = self
            .fat32
            .filter(|f| f.ext_flags & EXT_FLAGS_NO_MIRROR != 0)?;
        Some((f.ext_flags & EXT_FLAGS_ACTIVE_MASK) as u8)
    }

    /// Offset in sector 0 of the extended boot record for this layout.
    fn ebr_offset(&self) -> usize {
        if self.fat32.is_some() {
            OFF_EBR_FAT32
        } else {
            OFF_EBR_FAT16
        }
    }

    /// Writes the fields back into sector 0.
    ///
    /// Owns the BPB, the FAT32 block (not its 12 reserved bytes), the extended boot record but
    /// its state byte, and the 0x55AA signature; boot code and everything else are left alone.
    /// Serializing into the sector the struct was parsed from reproduces it byte for byte.
    ///
    /// # Panics
    /// If `sector` is shorter than 512 bytes.
    pub fn serialize(&self, sector: &mut [u8]) {
        let s = boot_bytes_mut(sector);
        s[OFF_JUMP..OFF_JUMP + 3].copy_from_slice(&self.jump_boot);
        s[OFF_OEM_NAME..OFF_OEM_NAME + 8].copy_from_slice(&self.oem_name);
        put16(s, OFF_BYTES_PER_SECTOR, self.bytes_per_sector);
        s[OFF_SECTORS_PER_CLUSTER] = self.sectors_per_cluster;
        put16(s, OFF_RESERVED_SECTORS, self.reserved_sectors);
        s[OFF_NUM_FATS] = self.num_fats;
        put16(s, OFF_ROOT_ENTRIES, self.root_entries);
        put16(s, OFF_TOTAL_SECTORS_16, self.total_sectors_16);
        s[OFF_MEDIA] = self.media;
        put16(s, OFF_SECTORS_PER_FAT_16, self.sectors_per_fat_16);
        put16(s, OFF_SECTORS_PER_TRACK, self.sectors_per_track);
        put16(s, OFF_NUM_HEADS, self.num_heads);
        put32(s, OFF_HIDDEN_SECTORS, self.hidden_sectors);
        put32(s, OFF_TOTAL_SECTORS_32, self.total_sectors_32);
        if let Some(f) = self.fat32 {
            put32(s, OFF_SECTORS_PER_FAT_32, f.sectors_per_fat_32);
            put16(s, OFF_EXT_FLAGS, f.ext_flags);
            put16(s, OFF_FS_VERSION, f.fs_version);
            put32(s, OFF_ROOT_CLUSTER, f.root_cluster);
            put16(s, OFF_FSINFO_SECTOR, f.fsinfo_sector);
            put16(s, OFF_BACKUP_BOOT_SECTOR, f.backup_boot_sector);
        }
        self.serialize_ebr(s);
        s[OFF_SIGNATURE..OFF_SIGNATURE + 2].copy_from_slice(&[0x55, 0xaa]);
    }

    /// Writes the extended boot record, skipping the state byte.
    fn serialize_ebr(&self, s: &mut [u8; BOOT_SECTOR_SIZE]) {
        let ebr = self.ebr_offset();
        s[ebr + EBR_DRIVE_NUMBER] = self.drive_number;
        s[ebr + EBR_SIGNATURE] = self.ext_boot_signature;
        put32(s, ebr + EBR_VOLUME_ID, self.volume_id);
        s[ebr + EBR_LABEL..ebr + EBR_LABEL + 11].copy_from_slice(&self.volume_label);
        s[ebr + EBR_FS_TYPE..ebr + EBR_FS_TYPE + 8].copy_from_slice(&self.fs_type);
    }

    /// Whether the state byte of sector 0 (offset 37 on FAT12/16, 65 on FAT32) has
    /// [`FAT_STATE_DIRTY`]: the volume is mounted, or was not unmounted cleanly.
    ///
    /// Models: the `state` byte fs/fat/inode.c fat_set_state() keeps (v5.10): set when mounted
    /// read-write, cleared at unmount, and left set (with a warning to run fsck) when the volume
    /// was already dirty at mount.
    ///
    /// FAT16 and FAT32 have a second, older record of the same thing in FAT entry 1: the top
    /// bit (0x8000 / 0x08000000) is set after a clean shutdown, the next one (0x4000 /
    /// 0x04000000) when no disk I/O error was met. The kernel (v5.10) does not use those; they
    /// belong to the FAT table module.
    ///
    /// # Panics
    /// If `sector` is shorter than 512 bytes.
    pub fn dirty(&self, sector: &[u8]) -> bool {
        assert!(sector.len() >= BOOT_SECTOR_SIZE, "short boot sector");
        sector[self.ebr_offset() + EBR_STATE] & FAT_STATE_DIRTY != 0
    }

    /// Sets or clears [`FAT_STATE_DIRTY`] in the state byte of sector 0, keeping its other bits.
    ///
    /// # Panics
    /// If `sector` is shorter than 512 bytes.
    pub fn set_dirty(&self, sector: &mut [u8], dirty: bool) {
        let s = boot_bytes_mut(sector);
        let state = &mut s[self.ebr_offset() + EBR_STATE];
        if dirty {
            *state |= FAT_STATE_DIRTY;
        } else {
            *state &= !FAT_STATE_DIRTY;
        }
    }
}

/// First signature of FSInfo, at offset 0 ("RRaA").
pub const FSINFO_LEAD_SIG: u32 = 0x4161_5252;
/// Second signature of FSInfo, at offset 484 ("rrAa").
pub const FSINFO_STRUCT_SIG: u32 = 0x6141_7272;
/// Last signature of FSInfo, at offset 508 (bytes 00 00 55 AA).
pub const FSINFO_TRAIL_SIG: u32 = 0xAA55_0000;
/// The value of an FSInfo count or hint that is not known.
const FSINFO_UNKNOWN: u32 = 0xFFFF_FFFF;
const OFF_FSINFO_LEAD: usize = 0;
const OFF_FSINFO_STRUCT: usize = 484;
const OFF_FSINFO_FREE: usize = 488;
const OFF_FSINFO_NEXT: usize = 492;
const OFF_FSINFO_TRAIL: usize = 508;

/// FAT32's FSInfo sector: hints that save a scan of the whole FAT; never trusted blindly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsInfo {
    /// Free clusters last known; `None` when stored as 0xFFFFFFFF.
    pub free_count: Option<u32>,
    /// Where the last allocation ended, a hint for the next one; `None` when unknown.
    pub next_free: Option<u32>,
}

impl FsInfo {
    /// Parses an FSInfo sector, checking its three signatures.
    ///
    /// Models: the read of FSInfo in fs/fat/inode.c fat_fill_super() (v5.10).
    ///
    /// A bad signature is logged as a warning and returned as `Corrupted` naming the signature;
    /// the kernel then mounts anyway with the free count unknown, and the caller should too.
    /// The kernel checks the first two signatures only; we check the third as fatgen103 asks.
    pub fn parse(sector: &[u8]) -> Result<FsInfo, FsError> {
        let s = boot_bytes(sector)?;
        #[rustfmt::skip]
        let sigs = [
            ("fsinfo_lead_signature",   OFF_FSINFO_LEAD,   FSINFO_LEAD_SIG),
            ("fsinfo_struct_signature", OFF_FSINFO_STRUCT, FSINFO_STRUCT_SIG),
            ("fsinfo_trail_signature",  OFF_FSINFO_TRAIL,  FSINFO_TRAIL_SIG),
        ];
        for (field, off, want) in sigs {
            let got = get32(s, off);
            if got != want {
                log::warn!("fat: bad FSInfo field {field} = {got:#010x}: expected {want:#010x}");
                return Err(FsError::Corrupted(field));
            }
        }
        let known = |v: u32| (v != FSINFO_UNKNOWN).then_some(v);
        Ok(FsInfo {
            free_count: known(get32(s, OFF_FSINFO_FREE)),
            next_free: known(get32(s, OFF_FSINFO_NEXT)),
        })
    }

    /// Writes the signatures and both fields; the reserved areas are left alone.
    ///
    /// Models: the FSInfo update of fs/fat/misc.c fat_clusters_flush() (v5.10), which writes
    /// only over a sector whose signatures it has just checked; the caller does that check.
    ///
    /// # Panics
    /// If `sector` is shorter than 512 bytes.
    pub fn serialize(&self, sector: &mut [u8]) {
        let s = boot_bytes_mut(sector);
        put32(s, OFF_FSINFO_LEAD, FSINFO_LEAD_SIG);
        put32(s, OFF_FSINFO_STRUCT, FSINFO_STRUCT_SIG);
        let free = self.free_count.unwrap_or(FSINFO_UNKNOWN);
        let next = self.next_free.unwrap_or(FSINFO_UNKNOWN);
        put32(s, OFF_FSINFO_FREE, free);
        put32(s, OFF_FSINFO_NEXT, next);
        put32(s, OFF_FSINFO_TRAIL, FSINFO_TRAIL_SIG);
    }

    /// Drops hints the volume cannot have: a free count above the cluster count, a next-free
    /// outside 2..=max_cluster.
    ///
    /// Models: the sanity checks on free_clusters and prev_free in fs/fat/inode.c
    /// fat_fill_super() (v5.10).
    ///
    /// Deviation: the kernel folds a wild next-free into range with a modulo; a hint that
    /// wrong carries no information, so we forget it and the search starts at cluster 2.
    pub fn sanitize(self, bpb: &Bpb) -> FsInfo {
        let free_count = self.free_count.filter(|&n| n <= bpb.data_clusters());
        let valid = FAT_START_ENT..=bpb.max_cluster();
        let next_free = self.next_free.filter(|n| valid.contains(n));
        FsInfo {
            free_count,
            next_free,
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn init_log() {
        let _ = env_logger::builder().is_test(true).try_init();
    }

    /// The numbers a test boot sector is built from; written at literal offsets so that the
    /// parser's offset constants are checked against the specification, not against themselves.
    #[derive(Clone, Copy)]
    struct Raw {
        bps: u16,
        spc: u8,
        reserved: u16,
        fats: u8,
        root_entries: u16,
        total16: u16,
        media: u8,
        spf16: u16,
        total32: u32,
        /// (sectors per FAT, root cluster) for the FAT32 layout.
        fat32: Option<(u32, u32)>,
    }

    fn put16_at(s: &mut [u8; 512], off: usize, v: u16) {
        s[off..off + 2].copy_from_slice(&v.to_le_bytes());
    }

    fn put32_at(s: &mut [u8; 512], off: usize, v: u32) {
        s[off..off + 4].copy_from_slice(&v.to_le_bytes());
    }

    fn build(r: Raw) -> [u8; 512] {
        let mut s = [0u8; 512];
        s[0..3].copy_from_slice(&[0xeb, 0x3c, 0x90]);
        s[3..11].copy_from_slice(b"MSWIN4.1");
        put16_at(&mut s, 11, r.bps);
        s[13] = r.spc;
        put16_at(&mut s, 14, r.reserved);
        s[16] = r.fats;
        put16_at(&mut s, 17, r.root_entries);
        put16_at(&mut s, 19, r.total16);
        s[21] = r.media;
        put16_at(&mut s, 22, r.spf16);
        put16_at(&mut s, 24, 63);
        put16_at(&mut s, 26, 255);
        put32_at(&mut s, 32, r.total32);
        let (ebr, fs_type) = match r.fat32 {
            Some((spf32, root)) => {
                s[1] = 0x58;
                put32_at(&mut s, 36, spf32);
                put32_at(&mut s, 44, root);
                put16_at(&mut s, 48, 1);
                put16_at(&mut s, 50, 6);
                (64, b"FAT32   ")
            }
            None => (36, b"FAT     "),
        };
        s[ebr] = 0x80;
        s[ebr + 2] = 0x29;
        put32_at(&mut s, ebr + 3, 0x1234_abcd);
        s[ebr + 7..ebr + 18].copy_from_slice(b"FATCACHE   ");
        s[ebr + 18..ebr + 26].copy_from_slice(fs_type);
        // Boot code that serialize must leave alone.
        s[ebr + 26..ebr + 30].copy_from_slice(&[0x0e, 0x1f, 0xbe, 0x5b]);
        s[510] = 0x55;
        s[511] = 0xaa;
        s
    }

    /// A 1.44 MB floppy as DOS and mkfs.fat format it.
    fn floppy() -> Raw {
        Raw {
            bps: 512,
            spc: 1,
            reserved: 1,
            fats: 2,
            root_entries: 224,
            total16: 2880,
            media: 0xf0,
            spf16: 9,
            total32: 0,
            fat32: None,
        }
    }

    /// 40 MiB FAT16 with mkfs.fat's choices: 2 KiB clusters, 4 reserved sectors.
    fn fat16_40m() -> Raw {
        Raw {
            spc: 4,
            reserved: 4,
            root_entries: 512,
            total16: 0,
            media: 0xf8,
            spf16: 80,
            total32: 81_920,
            ..floppy()
        }
    }

    /// 64 MiB FAT32 with 512-byte clusters.
    fn fat32_64m() -> Raw {
        Raw {
            reserved: 32,
            root_entries: 0,
            total16: 0,
            media: 0xf8,
            spf16: 0,
            total32: 131_072,
            fat32: Some((1024, 2)),
            ..floppy()
        }
    }

    /// A volume with exactly `clusters` one-sector clusters and a FAT just big enough.
    fn with_clusters(clusters: u32, fat32_layout: bool) -> Raw {
        let base = Raw {
            fats: 1,
            media: 0xf8,
            ..floppy()
        };
        if fat32_layout {
            let spf = (clusters + 2).div_ceil(128);
            let total = 32 + spf + clusters;
            Raw {
                reserved: 32,
                root_entries: 0,
                total16: 0,
                spf16: 0,
                total32: total,
                fat32: Some((spf, 2)),
                ..base
            }
        } else {
            let spf = (clusters + 2).div_ceil(256);
            let total = 1 + spf + 1 + clusters;
            Raw {
                root_entries: 16,
                total16: u16::try_from(total).unwrap_or(0),
                spf16: spf as u16,
                total32: if total > 0xffff { total } else { 0 },
                ..base
            }
        }
    }

    fn parse_raw(r: Raw) -> Result<Bpb, FsError> {
        Bpb::parse(&build(r))
    }

    #[test]
    fn floppy_1440k_is_fat12() {
        let b = parse_raw(floppy()).expect("floppy parses");
        assert_eq!(b.fat_type(), FatType::Fat12);
        assert_eq!(b.bytes_per_sector, 512);
        assert_eq!(b.total_sectors(), 2880);
        assert_eq!(b.sectors_per_fat(), 9);
        assert_eq!(b.first_fat_sector(), 1);
        assert_eq!(b.first_root_dir_sector(), Some(19));
        assert_eq!(b.root_dir_sectors(), 14);
        assert_eq!(b.first_data_sector(), 33);
        assert_eq!(b.data_clusters(), 2847);
        assert_eq!(b.max_cluster(), 2848);
        assert_eq!(b.bytes_per_cluster(), 512);
        assert_eq!(b.cluster_to_sector(2), Some(33));
        assert_eq!(b.cluster_to_sector(2848), Some(2879));
        assert_eq!(b.cluster_to_sector(1), None);
        assert_eq!(b.cluster_to_sector(2849), None);
        assert_eq!(b.root_cluster(), None);
        assert_eq!(b.fsinfo_sector(), None);
        assert!(b.fat_mirroring());
        assert_eq!(b.volume_id, 0x1234_abcd);
        assert_eq!(&b.volume_label, b"FATCACHE   ");
        assert_eq!(b.ext_boot_signature, EXT_BOOT_SIGNATURE);
        assert_eq!(b.drive_number, 0x80);
    }

    #[test]
    fn fat16_40m_geometry() {
        let b = parse_raw(fat16_40m()).expect("fat16 parses");
        assert_eq!(b.fat_type(), FatType::Fat16);
        assert_eq!(b.total_sectors(), 81_920);
        assert_eq!(b.first_root_dir_sector(), Some(164));
        assert_eq!(b.root_dir_sectors(), 32);
        assert_eq!(b.first_data_sector(), 196);
        assert_eq!(b.data_clusters(), 20_431);
        assert_eq!(b.bytes_per_cluster(), 2048);
        assert_eq!(b.cluster_to_sector(3), Some(200));
    }

    #[test]
    fn fat32_64m_geometry() {
        let b = parse_raw(fat32_64m()).expect("fat32 parses");
        assert_eq!(b.fat_type(), FatType::Fat32);
        assert_eq!(b.sectors_per_fat(), 1024);
        assert_eq!(b.first_root_dir_sector(), None);
        assert_eq!(b.root_dir_sectors(), 0);
        assert_eq!(b.first_data_sector(), 2080);
        assert_eq!(b.data_clusters(), 128_992);
        assert_eq!(b.max_cluster(), 128_993);
        assert_eq!(b.root_cluster(), Some(2));
        assert_eq!(b.fsinfo_sector(), Some(1));
        let f = b.fat32.expect("fat32 block");
        assert_eq!(f.backup_boot_sector, 6);
        assert_eq!(&b.fs_type, b"FAT32   ");
        assert_eq!(b.volume_id, 0x1234_abcd);
    }

    /// A boundary case: name, cluster count, whether FAT32's layout is used, the type expected.
    type TypeCase = (&'static str, u32, bool, FatType);

    #[rustfmt::skip]
    const TYPE_BOUNDARIES: &[TypeCase] = &[
        ("1 cluster",                         1, false, FatType::Fat12),
        ("4084 clusters is the last FAT12",   4084, false, FatType::Fat12),
        ("4085 clusters is the first FAT16",  4085, false, FatType::Fat16),
        ("65524 clusters is the last FAT16",  65_524, false, FatType::Fat16),
        ("65525 clusters is the first FAT32", 65_525, true, FatType::Fat32),
    ];

    #[test]
    fn fat_type_boundaries_follow_the_cluster_count() {
        let cases = TYPE_BOUNDARIES;
        for (name, clusters, fat32, want) in cases {
            let b = parse_raw(with_clusters(*clusters, *fat32)).expect(name);
            assert_eq!(b.data_clusters(), *clusters, "{name}");
            assert_eq!(b.fat_type(), *want, "{name}");
        }
        assert_eq!(FatType::from_clusters(0), FatType::Fat12);
        assert_eq!(FatType::from_clusters(u32::MAX), FatType::Fat32);
    }

    #[test]
    fn the_type_string_never_decides() {
        let mut s = build(floppy());
        s[54..62].copy_from_slice(b"FAT32   ");
        assert_eq!(Bpb::parse(&s).expect("parses").fat_type(), FatType::Fat12);
    }

    type Mutate = fn(&mut [u8; 512]);
    /// A refused sector: name, base volume, the damage done to it, the field the error names.
    type RejectCase = (&'static str, fn() -> Raw, Mutate, &'static str);

    /// Every way a boot sector is refused.
    #[rustfmt::skip]
    const REJECTS: &[RejectCase] = &[
        ("no 55 aa",               floppy, |s| s[510] = 0, "boot_signature"),
        ("55 55",                  floppy, |s| s[511] = 0x55, "boot_signature"),
        ("jump 00",                floppy, |s| s[0] = 0, "jump_boot"),
        ("short jump without nop", floppy, |s| s[2] = 0, "jump_boot"),
        ("513 bytes per sector",   floppy, |s| put16_at(s, 11, 513), "bytes_per_sector"),
        ("256 bytes per sector",   floppy, |s| put16_at(s, 11, 256), "bytes_per_sector"),
        ("8192 bytes per sector",  floppy, |s| put16_at(s, 11, 8192), "bytes_per_sector"),
        ("0 bytes per sector",     floppy, |s| put16_at(s, 11, 0), "bytes_per_sector"),
        ("0 sectors per cluster",  floppy, |s| s[13] = 0, "sectors_per_cluster"),
        ("3 sectors per cluster",  floppy, |s| s[13] = 3, "sectors_per_cluster"),
        ("0 reserved sectors",     floppy, |s| put16_at(s, 14, 0), "reserved_sectors"),
        ("0 FATs",                 floppy, |s| s[16] = 0, "num_fats"),
        ("media 0x12",             floppy, |s| s[21] = 0x12, "media"),
        ("media 0xf1",             floppy, |s| s[21] = 0xf1, "media"),
        ("no total sectors",       floppy, |s| put16_at(s, 19, 0), "total_sectors"),
        ("FAT32 FAT of 0 sectors", fat32_64m, |s| put32_at(s, 36, 0), "sectors_per_fat"),
        ("225 root entries",       floppy, |s| put16_at(s, 17, 225), "root_entries"),
        ("reserved past the end",  floppy, |s| put16_at(s, 14, 3000), "reserved_sectors"),
        ("FAT past the end",       floppy, |s| put16_at(s, 22, 2000), "sectors_per_fat"),
        ("root past the end",      floppy, |s| put16_at(s, 17, 65_520), "root_entries"),
        ("no room for a cluster",  floppy, |s| put16_at(s, 19, 33), "cluster_count"),
        ("FAT too small",          floppy, |s| put16_at(s, 22, 8), "sectors_per_fat"),
        ("FAT12 without root",     floppy, |s| put16_at(s, 17, 0), "root_entries"),
        ("FAT32 with root entries", fat32_64m, |s| put16_at(s, 17, 16), "root_entries"),
        ("FAT32 root cluster 0",   fat32_64m, |s| put32_at(s, 44, 0), "root_cluster"),
        ("FAT32 root cluster 1",   fat32_64m, |s| put32_at(s, 44, 1), "root_cluster"),
        ("FAT32 root past end",    fat32_64m, |s| put32_at(s, 44, 128_994), "root_cluster"),
        ("FSInfo in the FAT",      fat32_64m, |s| put16_at(s, 48, 32), "fsinfo_sector"),
        ("backup in the FAT",      fat32_64m, |s| put16_at(s, 50, 40), "backup_boot_sector"),
        ("backup on FSInfo",       fat32_64m, |s| put16_at(s, 50, 1), "backup_boot_sector"),
        ("active FAT 2 of 2",      fat32_64m, |s| put16_at(s, 40, 0x82), "ext_flags"),
        ("FAT32 layout, FAT16 cluster count (sectors_per_fat_16 == 0 on FAT16)",
            || with_clusters(65_524, true), |_| {}, "sectors_per_fat_16"),
        ("FAT16 layout, FAT32 cluster count",
            || with_clusters(65_525, false), |_| {}, "sectors_per_fat_16"),
        ("more clusters than FAT32 numbers", fat32_64m, |s| {
            put32_at(s, 32, u32::MAX);
            put32_at(s, 36, 1 << 25);
        }, "cluster_count"),
    ];

    #[test]
    fn every_rejection_names_its_field() {
        init_log();
        for (name, base, mutate, field) in REJECTS {
            let mut s = build(base());
            mutate(&mut s);
            match Bpb::parse(&s) {
                Err(e @ FsError::Corrupted(got)) => {
                    assert_eq!(got, *field, "{name}");
                    assert!(e.to_string().contains(field), "{name}: {e}");
                    assert_eq!(e.errno(), libc::EIO, "{name}");
                }
                other => panic!("{name}: expected Corrupted({field}), got {other:?}"),
            }
        }
    }

    #[test]
    fn short_input_is_invalid() {
        let s = build(floppy());
        assert!(matches!(Bpb::parse(&s[..511]), Err(FsError::Invalid(_))));
        assert!(matches!(FsInfo::parse(&s[..100]), Err(FsError::Invalid(_))));
    }

    /// An accepted variant: name, base volume, the change made to it.
    type AcceptCase = (&'static str, fn() -> Raw, Mutate);

    /// Unusual sectors that must still parse.
    #[rustfmt::skip]
    const ACCEPTS: &[AcceptCase] = &[
        ("near jump E9",                  floppy, |s| s[0..3].copy_from_slice(&[0xe9, 0, 1])),
        ("media f0 on a hard disk",       fat16_40m, |s| s[21] = 0xf0),
        ("FAT32 version 1.0 only warns",  fat32_64m, |s| put16_at(s, 42, 0x0100)),
        ("FSInfo sector 0 reads as 1",    fat32_64m, |s| put16_at(s, 48, 0)),
        ("no backup boot sector",         fat32_64m, |s| put16_at(s, 50, 0)),
        ("active FAT 1 of 2",             fat32_64m, |s| put16_at(s, 40, 0x81)),
        ("4096-byte sectors",             fat16_40m, |s| put16_at(s, 11, 4096)),
        ("128 sectors per cluster",       fat32_64m, big_clusters),
        ("16-bit total wins over 32-bit", floppy, |s| put32_at(s, 32, 99)),
    ];

    /// Turns the FAT32 example into one of 128 sectors (64 KiB) per cluster.
    fn big_clusters(s: &mut [u8; 512]) {
        s[13] = 128;
        put32_at(s, 32, 128 * 70_000);
        put32_at(s, 36, 560);
    }

    #[test]
    fn accepted_variants() {
        init_log();
        let cases = ACCEPTS;
        for (name, base, mutate) in cases {
            let mut s = build(base());
            mutate(&mut s);
            assert!(Bpb::parse(&s).is_ok(), "{name}");
        }
    }

    #[test]
    fn fat32_flags_and_defaults() {
        let mut s = build(fat32_64m());
        put16_at(&mut s, 40, 0x81);
        put16_at(&mut s, 48, 0);
        let b = Bpb::parse(&s).expect("parses");
        assert!(!b.fat_mirroring());
        assert_eq!(b.active_fat(), Some(1));
        assert_eq!(b.fsinfo_sector(), Some(1));
        let b = parse_raw(fat32_64m()).expect("parses");
        assert!(b.fat_mirroring());
        assert_eq!(b.active_fat(), None);
        let mut s = build(fat32_64m());
        big_clusters(&mut s);
        let b = Bpb::parse(&s).expect("parses");
        assert_eq!(b.bytes_per_cluster(), 64 * 1024);
        assert_eq!(b.fat_type(), FatType::Fat32);
    }

    #[test]
    fn serialize_round_trips() {
        let raws = [
            floppy(),
            fat16_40m(),
            fat32_64m(),
            with_clusters(4085, false),
        ];
        for raw in raws {
            let original = build(raw);
            let b = Bpb::parse(&original).expect("parses");
            // Over the sector it came from: nothing changes.
            let mut again = original;
            b.serialize(&mut again);
            assert_eq!(again, original);
            // Into a blank sector: parses back to the same struct.
            let mut blank = vec![0u8; 4096];
            b.serialize(&mut blank);
            assert_eq!(Bpb::parse(&blank).expect("reparses"), b);
            assert_eq!(&blank[512..], &[0u8; 3584][..], "bytes past 512 untouched");
        }
    }

    #[test]
    fn serialize_writes_changed_fields() {
        let mut b = parse_raw(fat32_64m()).expect("parses");
        b.volume_id = 0xdead_beef;
        b.volume_label = *b"NEW LABEL  ";
        let mut s = build(fat32_64m());
        b.serialize(&mut s);
        assert_eq!(&s[67..71], &0xdead_beef_u32.to_le_bytes());
        assert_eq!(&s[71..82], b"NEW LABEL  ");
        assert_eq!(Bpb::parse(&s).expect("parses"), b);
    }

    #[test]
    fn dirty_bit_lives_in_the_state_byte() {
        let cases: &[(&str, Raw, usize)] = &[("FAT12", floppy(), 37), ("FAT32", fat32_64m(), 65)];
        for (name, raw, off) in cases {
            let mut s = build(*raw);
            s[*off] = 0x40;
            let b = Bpb::parse(&s).expect("parses");
            assert!(!b.dirty(&s), "{name}");
            b.set_dirty(&mut s, true);
            assert_eq!(s[*off], 0x41, "{name}: other bits kept");
            assert!(b.dirty(&s), "{name}");
            // A serialize of the struct must not clear the mark.
            b.serialize(&mut s);
            assert!(b.dirty(&s), "{name}: survives serialize");
            b.set_dirty(&mut s, false);
            assert_eq!(s[*off], 0x40, "{name}");
            assert!(!b.dirty(&s), "{name}");
        }
    }

    fn fsinfo_sector(free: u32, next: u32) -> [u8; 512] {
        let mut s = [0u8; 512];
        s[0..4].copy_from_slice(b"RRaA");
        s[484..488].copy_from_slice(b"rrAa");
        put32_at(&mut s, 488, free);
        put32_at(&mut s, 492, next);
        s[508..512].copy_from_slice(&[0, 0, 0x55, 0xaa]);
        s
    }

    const fn fsinfo(free_count: Option<u32>, next_free: Option<u32>) -> FsInfo {
        FsInfo {
            free_count,
            next_free,
        }
    }

    /// An FSInfo case: name, stored free count and next free, the parsed value expected.
    type FsInfoCase = (&'static str, u32, u32, FsInfo);

    #[rustfmt::skip]
    const FSINFOS: &[FsInfoCase] = &[
        ("both known",   1000, 17, fsinfo(Some(1000), Some(17))),
        ("both unknown", u32::MAX, u32::MAX, fsinfo(None, None)),
        ("free 0",       0, u32::MAX, fsinfo(Some(0), None)),
    ];

    #[test]
    fn fsinfo_parse_and_round_trip() {
        let cases = FSINFOS;
        for (name, free, next, want) in cases {
            let original = fsinfo_sector(*free, *next);
            let info = FsInfo::parse(&original).expect(name);
            assert_eq!(info, *want, "{name}");
            let mut again = original;
            info.serialize(&mut again);
            assert_eq!(again, original, "{name}");
            let mut blank = [0u8; 512];
            info.serialize(&mut blank);
            assert_eq!(blank, original, "{name}: from blank");
        }
    }

    #[test]
    fn fsinfo_bad_signatures_are_named() {
        init_log();
        let cases: &[(&str, usize, &str)] = &[
            ("lead", 0, "fsinfo_lead_signature"),
            ("struct", 486, "fsinfo_struct_signature"),
            ("trail", 511, "fsinfo_trail_signature"),
        ];
        for (name, off, field) in cases {
            let mut s = fsinfo_sector(5, 5);
            s[*off] ^= 0xff;
            match FsInfo::parse(&s) {
                Err(FsError::Corrupted(got)) => assert_eq!(got, *field, "{name}"),
                other => panic!("{name}: got {other:?}"),
            }
        }
    }

    /// A sanitize case on the 64 MiB FAT32 example (128 992 clusters): name, given, expected.
    type SanitizeCase = (&'static str, FsInfo, FsInfo);

    #[rustfmt::skip]
    const SANITIZE: &[SanitizeCase] = &[
        ("plausible",         fsinfo(Some(5), Some(3)), fsinfo(Some(5), Some(3))),
        ("all free",          fsinfo(Some(128_992), Some(128_993)),
                              fsinfo(Some(128_992), Some(128_993))),
        ("too many free",     fsinfo(Some(128_993), None), fsinfo(None, None)),
        ("next 1",            fsinfo(None, Some(1)), fsinfo(None, None)),
        ("next past the end", fsinfo(None, Some(128_994)), fsinfo(None, None)),
    ];

    #[test]
    fn fsinfo_sanitize_drops_impossible_hints() {
        let b = parse_raw(fat32_64m()).expect("parses");
        let cases = SANITIZE;
        for (name, given, want) in cases {
            assert_eq!(given.sanitize(&b), *want, "{name}");
        }
    }

    /// mkfs.fat from dosfstools, if installed.
    fn mkfs_fat() -> Option<std::path::PathBuf> {
        ["/sbin/mkfs.fat", "/usr/sbin/mkfs.fat", "/usr/bin/mkfs.fat"]
            .iter()
            .map(std::path::PathBuf::from)
            .find(|p| p.exists())
    }

    /// Formats a fresh `kib`-KiB image with `args` and returns its first 8 KiB.
    fn mkfs_image(mkfs: &std::path::Path, tag: &str, args: &[&str], kib: u32) -> Vec<u8> {
        use std::io::Read;
        let dir = std::env::temp_dir().join(format!("fatcache-bpb-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let img = dir.join("fat.img");
        let out = std::process::Command::new(mkfs)
            .args(["-C", "-i", "1234abcd", "-n", "FATCACHE"])
            .args(args)
            .arg(&img)
            .arg(kib.to_string())
            .output()
            .expect("run mkfs.fat");
        assert!(out.status.success(), "mkfs.fat {args:?}: {out:?}");
        let mut head = vec![0u8; 8192];
        let mut file = std::fs::File::open(&img).expect("open image");
        file.read_exact(&mut head).expect("read image");
        std::fs::remove_dir_all(&dir).expect("clean temp dir");
        head
    }

    #[test]
    fn parses_mkfs_fat_images() {
        init_log();
        let Some(mkfs) = mkfs_fat() else {
            println!("skipping parses_mkfs_fat_images: mkfs.fat not found (install dosfstools)");
            return;
        };
        let floppy = Bpb::parse(&mkfs_image(&mkfs, "floppy", &[], 1440)).expect("1.44 MB");
        assert_eq!(floppy.fat_type(), FatType::Fat12);
        assert_eq!(floppy.bytes_per_sector, 512);
        assert_eq!(floppy.sectors_per_cluster, 1);
        assert_eq!(floppy.reserved_sectors, 1);
        assert_eq!(floppy.num_fats, 2);
        assert_eq!(floppy.root_entries, 224);
        assert_eq!(floppy.total_sectors(), 2880);
        assert_eq!(floppy.sectors_per_fat(), 9);
        assert_eq!(floppy.data_clusters(), 2847);
        assert_eq!(floppy.volume_id, 0x1234_abcd);
        assert_eq!(&floppy.volume_label, b"FATCACHE   ");

        let head16 = mkfs_image(&mkfs, "fat16", &[], 40 * 1024);
        let fat16 = Bpb::parse(&head16).expect("40 MB");
        assert_eq!(fat16.fat_type(), FatType::Fat16);
        assert_eq!(fat16.total_sectors(), 81_920);
        assert!(!fat16.dirty(&head16));

        let big4k = Bpb::parse(&mkfs_image(&mkfs, "4k", &["-S", "4096"], 40 * 1024));
        assert_eq!(big4k.expect("4096-byte sectors").bytes_per_sector, 4096);

        let head = mkfs_image(&mkfs, "fat32", &["-F", "32"], 40 * 1024);
        let fat32 = Bpb::parse(&head).expect("40 MB FAT32");
        assert_eq!(fat32.fat_type(), FatType::Fat32);
        assert_eq!(fat32.root_cluster(), Some(2));
        let at = fat32.fsinfo_sector().expect("fsinfo") as usize * 512;
        let info = FsInfo::parse(&head[at..at + 512]).expect("FSInfo");
        // Only the root directory's cluster is in use on a fresh volume.
        assert_eq!(info.free_count, Some(fat32.data_clusters() - 1));
        assert_eq!(info.sanitize(&fat32), info);
    }

    #[test]
    fn refuses_mkfs_fat32_below_65525_clusters() {
        init_log();
        let Some(mkfs) = mkfs_fat() else {
            println!("skipping refuses_mkfs_fat32_below_65525_clusters: mkfs.fat not found");
            return;
        };
        // mkfs.fat only warns here and the kernel would mount it as FAT32; by cluster count it
        // is FAT16 with no 16-bit FAT size, which fatgen103 drivers cannot read.
        let head = mkfs_image(&mkfs, "small32", &["-F", "32"], 8 * 1024);
        let err = Bpb::parse(&head).expect_err("too few clusters for FAT32");
        let named = matches!(err, FsError::Corrupted("sectors_per_fat_16"));
        assert!(named, "{err:?}");
    }
}
