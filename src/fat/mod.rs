//! The FAT12/16/32 + VFAT filesystem (kernel fs/fat), on the page cache of `mm`.
//!
//! Models: fs/fat (v5.10) for behaviour; Microsoft's FAT specification (fatgen103) for the
//! on-disk format.
//!
//! The modules:
//! * [`bpb`]: boot sector, BIOS parameter block, FSInfo.
//! * [`dir`]: one directory read and written: add, remove, update entries; new directories.
//! * [`dirent`]: directory entries: the short entry, directory walks, free slots, name index.
//! * [`inode`]: a file's data mapping: get_block, the cluster cache, write, truncate, expand.
//! * [`mkfs`]: a new, empty volume in an image file, with mkfs.fat's defaults (this one writes).
//! * [`name`]: VFAT long names and 8.3 short names.
//! * [`store`]: the FAT of a mounted volume, in the page cache's block-device mapping.
//! * [`table`]: the file allocation table: entries, cluster chains, allocation and freeing.
//! * [`time`]: DOS date and time.
//! * [`volume`]: a mounted volume: nodes, lookup, create, unlink, rename, read, write,
//!   truncate, fsync, sync, unmount, `errors=`.

pub mod bpb;
pub mod dir;
pub mod dirent;
pub mod inode;
pub mod mkfs;
pub mod name;
pub mod store;
pub mod table;
pub mod time;
pub mod volume;
