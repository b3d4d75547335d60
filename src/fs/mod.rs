//! Generic filesystem helpers between FAT and the page cache (kernel fs/*.c outside fs/fat).
//!
//! * [`bdev`]: the block-device mapping, through which FAT reads and writes its metadata.

pub mod bdev;
