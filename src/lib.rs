//! fatcache: a userspace FAT filesystem over its own Linux-like page cache, built to reproduce
//! and study page-cache writeback races (above all the January 2021
//! `BUG_ON(PageWriteback(page))` in `write_cache_pages`) with real programs.
//!
//! Layers, dependencies pointing one way: `fuse -> fat -> fs -> mm -> {sync, bug, error}`, with
//! `dev` beside `mm` for the image:
//!
//! * [`fuse`]: the FUSE mount (fuser), its options, the virtual xattrs.
//! * [`fat`]: FAT12/16/32 + VFAT: on-disk formats, the FAT, directories, files, a mounted
//!   volume, mkfs.
//! * [`fs`]: generic helpers between FAT and the cache: get_block page I/O, the block-device
//!   mapping, the flusher.
//! * [`mm`]: the page cache: frames, flags, wait queues, mappings, writeback, truncate, reclaim,
//!   in the semantics of a selectable kernel era.
//! * [`dev`]: the block device under the cache: an image file or memory, with I/O completion
//!   threads.
//! * [`bug`]: BUG_ON / VM_BUG_ON_PAGE / WARN_ON_ONCE with kernel-style reports and page history.
//! * [`error`]: the one error type and its errno mapping.
//! * [`scenario`]: the race interleavings of SEMANTICS section 5, driven with real threads.

pub mod bug;
pub mod dev;
pub mod error;
pub mod fat;
pub mod fs;
pub mod fuse;
pub mod mm;
pub mod scenario;
pub(crate) mod sync;

pub use error::FsError;
