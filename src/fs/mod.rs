//! Generic filesystem helpers between FAT and the page cache (kernel fs/*.c outside fs/fat).
//!
//! * [`bdev`]: the block-device mapping, through which FAT reads and writes its metadata.
//! * [`buffer`]: page I/O and buffered writes driven by a filesystem's block map (get_block).
//! * [`fs_writeback`]: the dirty-inode list and the flusher thread.
//! * [`order`]: write-order constraints between dirty metadata blocks.

pub mod bdev;
pub mod buffer;
pub mod fs_writeback;
pub mod order;
