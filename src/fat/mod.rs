//! The FAT12/16/32 + VFAT filesystem (kernel fs/fat), on the page cache of `mm`.
//!
//! Models: fs/fat (v5.10) for behaviour; Microsoft's FAT specification (fatgen103) for the
//! on-disk format.
//!
//! So far the pure on-disk formats, which touch neither the cache nor the device:
//! * [`bpb`]: boot sector, BIOS parameter block, FSInfo.
//! * [`name`]: VFAT long names and 8.3 short names.
//! * [`time`]: DOS date and time.

pub mod bpb;
pub mod name;
pub mod time;
