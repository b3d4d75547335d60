//! An in-memory block device, with read- and write-failure injection for tests.

use crate::dev::BlockDevice;
use crate::error::FsError;
use crate::sync::unchecked::{AtomicU64, Mutex, Ordering, RwLock};

/// A device whose bytes live in memory.
#[derive(Debug)]
pub struct MemDevice {
    bytes: RwLock<Vec<u8>>,
    /// Byte ranges `[start, end)` whose writes fail with EIO.
    failing: Mutex<Vec<(u64, u64)>>,
    /// Byte ranges `[start, end)` whose reads fail with EIO.
    failing_reads: Mutex<Vec<(u64, u64)>>,
    writes: AtomicU64,
    flushes: AtomicU64,
}

impl MemDevice {
    /// A zero-filled device of `size` bytes.
    pub fn new(size: usize) -> Self {
        MemDevice {
            bytes: RwLock::new(vec![0; size]),
            failing: Mutex::new(Vec::new()),
            failing_reads: Mutex::new(Vec::new()),
            writes: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
        }
    }

    /// Make every later write touching `[start, end)` fail with EIO.
    pub fn fail_writes(&self, start: u64, end: u64) {
        self.failing.lock().push((start, end));
    }

    /// Make every later read touching `[start, end)` fail with EIO.
    pub fn fail_reads(&self, start: u64, end: u64) {
        self.failing_reads.lock().push((start, end));
    }

    /// A copy of the device contents.
    pub fn snapshot(&self) -> Vec<u8> {
        self.bytes.read().clone()
    }

    /// Writes performed so far.
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }

    /// Flushes performed so far.
    pub fn flushes(&self) -> u64 {
        self.flushes.load(Ordering::Relaxed)
    }

    fn range(&self, offset: u64, len: usize) -> Result<std::ops::Range<usize>, FsError> {
        let start =
            usize::try_from(offset).map_err(|_| FsError::Invalid("offset past the device"))?;
        let end = start
            .checked_add(len)
            .ok_or(FsError::Invalid("offset past the device"))?;
        if end > self.bytes.read().len() {
            log::error!("mem device: access {start}..{end} past the end");
            return Err(FsError::Io(std::io::Error::from_raw_os_error(libc::EIO)));
        }
        Ok(start..end)
    }
}

/// EIO if `[offset, offset + len)` touches one of the `failing` ranges.
fn injected(failing: &Mutex<Vec<(u64, u64)>>, offset: u64, len: usize) -> Result<(), FsError> {
    let end = offset + len as u64;
    if failing.lock().iter().any(|(s, e)| offset < *e && end > *s) {
        return Err(FsError::Io(std::io::Error::from_raw_os_error(libc::EIO)));
    }
    Ok(())
}

impl BlockDevice for MemDevice {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), FsError> {
        let r = self.range(offset, buf.len())?;
        injected(&self.failing_reads, offset, buf.len())?;
        buf.copy_from_slice(&self.bytes.read()[r]);
        Ok(())
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), FsError> {
        let r = self.range(offset, buf.len())?;
        injected(&self.failing, offset, buf.len())?;
        self.bytes.write()[r].copy_from_slice(buf);
        // Relaxed: a statistic.
        self.writes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn flush(&self) -> Result<(), FsError> {
        self.flushes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn size(&self) -> u64 {
        self.bytes.read().len() as u64
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn reads_back_what_was_written_and_refuses_out_of_range() {
        let d = MemDevice::new(8192);
        d.write_at(4090, b"hello world").expect("write");
        let mut b = [0u8; 11];
        d.read_at(4090, &mut b).expect("read");
        assert_eq!(&b, b"hello world");
        assert_eq!(
            d.read_at(8190, &mut b).expect_err("past end").errno(),
            libc::EIO
        );
        assert_eq!(d.writes(), 1);
    }

    #[test]
    fn injected_failures_hit_only_their_range() {
        let d = MemDevice::new(8192);
        d.fail_writes(4096, 8192);
        assert!(d.write_at(0, &[1; 4096]).is_ok());
        assert!(d.write_at(4000, &[1; 200]).is_err());
        assert_eq!(d.snapshot()[4100], 0, "a failed write changes nothing");
        assert_eq!(d.snapshot()[4000], 1);
    }
}
