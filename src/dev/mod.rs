//! The block device under the page cache: bytes of the image, and the I/O queue whose
//! completion threads finish every request, the way a disk interrupt finishes a bio.
//!
//! `dev` knows nothing of pages, FAT or inodes. A request carries an `end_io` callback; the
//! layer that submitted it (the filesystem's writepage) decides what completion means, e.g.
//! calling `end_page_writeback`. Completion never runs on the submitting thread.

pub mod file;
pub mod mem;
pub mod queue;

pub use file::{FileDevice, Placement};
pub use mem::MemDevice;
pub use queue::{Bio, BioOp, BlkPlug, IoBuf, IoQueue, IoSeg, IoSource, IoSrcSeg};

use crate::error::FsError;

/// Byte-addressed storage the image lives on.
pub trait BlockDevice: Send + Sync {
    /// Read `buf.len()` bytes at `offset`.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), FsError>;
    /// Write `buf` at `offset`.
    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), FsError>;
    /// Read the consecutive bytes at `offset` into `bufs` in order (one merged request); the
    /// default reads each in turn.
    fn read_vectored_at(&self, offset: u64, bufs: &mut [&mut [u8]]) -> Result<(), FsError> {
        let mut at = offset;
        for b in bufs.iter_mut() {
            self.read_at(at, b)?;
            at += b.len() as u64;
        }
        Ok(())
    }
    /// Write `bufs` one after another from `offset` (one merged request); the default writes
    /// each in turn.
    fn write_vectored_at(&self, offset: u64, bufs: &[&[u8]]) -> Result<(), FsError> {
        let mut at = offset;
        for b in bufs {
            self.write_at(at, b)?;
            at += b.len() as u64;
        }
        Ok(())
    }
    /// Make every completed write durable.
    fn flush(&self) -> Result<(), FsError>;
    /// Size in bytes.
    fn size(&self) -> u64;
}
