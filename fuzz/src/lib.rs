//! Shared by the fuzz targets: well-formed small volumes for the fuzzed bytes to go in.

use fatcache::fat::bpb::{Bpb, FatType};

/// Bytes per sector of every volume built here.
pub const SECTOR: usize = 512;

/// The shape of a test volume: 512-byte sectors and clusters.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// FAT type; `clusters` must agree with it.
    pub ty: FatType,
    /// Data clusters.
    pub clusters: u32,
    /// FAT copies.
    pub num_fats: u8,
    /// Root entries of a FAT12/16 volume (a multiple of 16); ignored on FAT32.
    pub root_entries: u16,
    /// FAT32 ext flags (0x80 | n: mirroring off, FAT n active).
    pub ext_flags: u16,
}

/// Sector 0 of a volume of `shape`, parsed: a panic here is a mistake in the target.
pub fn bpb_for(shape: Shape) -> Bpb {
    let mut s = [0u8; SECTOR];
    let mut put = |off: usize, v: &[u8]| s[off..off + v.len()].copy_from_slice(v);
    put(0, &[0xeb, 0x3c, 0x90]);
    put(11, &(SECTOR as u16).to_le_bytes());
    put(13, &[1]);
    put(16, &[shape.num_fats]);
    put(21, &[0xf8]);
    put(510, &[0x55, 0xaa]);
    let entries = u64::from(shape.clusters) + 2;
    let fat_bytes = match shape.ty {
        FatType::Fat12 => entries * 3 / 2 + 1,
        FatType::Fat16 => entries * 2,
        FatType::Fat32 => entries * 4,
    };
    let spf = fat_bytes.div_ceil(SECTOR as u64) as u32;
    let fats = u32::from(shape.num_fats) * spf;
    if shape.ty == FatType::Fat32 {
        let reserved = 32u32;
        put(14, &(reserved as u16).to_le_bytes());
        put(32, &(reserved + fats + shape.clusters).to_le_bytes());
        put(36, &spf.to_le_bytes());
        put(40, &shape.ext_flags.to_le_bytes());
        put(44, &[2, 0, 0, 0, 1, 0, 6]); // root cluster 2, FSInfo 1, backup boot 6
    } else {
        put(14, &1u16.to_le_bytes());
        put(17, &shape.root_entries.to_le_bytes());
        let root = u32::from(shape.root_entries) * 32 / SECTOR as u32;
        let total = 1 + fats + root + shape.clusters;
        match u16::try_from(total) {
            Ok(t) => put(19, &t.to_le_bytes()),
            Err(_) => put(32, &total.to_le_bytes()),
        }
        put(22, &(spf as u16).to_le_bytes());
    }
    Bpb::parse(&s).expect("the target's own boot sector parses")
}

/// The boot sector bytes of `bpb`, for an image.
pub fn boot_bytes(bpb: &Bpb) -> [u8; SECTOR] {
    let mut s = [0u8; SECTOR];
    bpb.serialize(&mut s);
    s
}
