//! The image as a file or a block device: positioned reads and writes, fdatasync, and the
//! byte range of one partition for whole-disk images (MBR or GPT).
//!
//! This is the only code that opens the image. A file that cannot be opened for writing is
//! opened read-only, with a warning, the way the kernel mounts a write-protected device
//! read-only; every write to it then fails with EROFS.

use std::fs::{File, OpenOptions};
use std::io::{IoSlice, IoSliceMut, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::Path;

use nix::sys::uio;

use crate::dev::BlockDevice;
use crate::error::FsError;

/// Where the filesystem starts inside the image.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Placement {
    /// Open read-only even if the image is writable (`ro`).
    pub read_only: bool,
    /// Byte offset of the filesystem (`offset=`).
    pub offset: Option<u64>,
    /// 1-based partition number in an MBR or GPT partition table (`partition=`).
    pub partition: Option<u32>,
}

/// An image file (or block device) holding a FAT volume.
#[derive(Debug)]
pub struct FileDevice {
    file: File,
    start: u64,
    size: u64,
    read_only: bool,
}

impl FileDevice {
    /// Open `path` and find the filesystem's byte range in it.
    pub fn open(path: &Path, place: Placement) -> Result<Self, FsError> {
        if place.offset.is_some() && place.partition.is_some() {
            return Err(FsError::Invalid(
                "offset= and partition= exclude each other",
            ));
        }
        let (file, read_only) = open_file(path, place.read_only)?;
        let total = image_size(&file)?;
        let (start, size) = match (place.offset, place.partition) {
            (Some(off), _) if off >= total => {
                log::error!(
                    "{}: offset {off} is past the end ({total} bytes)",
                    path.display()
                );
                return Err(FsError::Invalid("offset= is past the end of the image"));
            }
            (Some(off), _) => (off, total - off),
            (None, Some(n)) => find_partition(&file, total, n)?,
            (None, None) => (0, total),
        };
        Ok(FileDevice {
            file,
            start,
            size,
            read_only,
        })
    }

    /// The device was opened read-only (asked for, or the image is not writable).
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// Byte offset of the filesystem inside the image.
    pub fn start(&self) -> u64 {
        self.start
    }

    fn check(&self, offset: u64, len: usize) -> Result<u64, FsError> {
        let end = offset.checked_add(len as u64);
        match end {
            Some(e) if e <= self.size => Ok(self.start + offset),
            _ => {
                log::error!(
                    "image: access {offset}+{len} past the volume end {}",
                    self.size
                );
                Err(FsError::Io(std::io::Error::from_raw_os_error(libc::EIO)))
            }
        }
    }
}

fn open_file(path: &Path, read_only: bool) -> Result<(File, bool), FsError> {
    if read_only {
        return Ok((File::open(path)?, true));
    }
    match OpenOptions::new().read(true).write(true).open(path) {
        Ok(f) => Ok((f, false)),
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EACCES | libc::EROFS | libc::EPERM)
            ) =>
        {
            log::warn!("{}: not writable ({e}), opening read-only", path.display());
            Ok((File::open(path)?, true))
        }
        Err(e) => Err(e.into()),
    }
}

fn image_size(file: &File) -> Result<u64, FsError> {
    // Works for regular files and block devices alike (metadata().len() is 0 for devices).
    let mut f = file;
    Ok(f.seek(SeekFrom::End(0))?)
}

/// MBR partition type of a protective MBR: the real table is a GPT.
const MBR_TYPE_GPT: u8 = 0xEE;
/// MBR partition types of extended partitions (logical partitions are not supported).
const MBR_TYPES_EXTENDED: [u8; 3] = [0x05, 0x0F, 0x85];
const SECTOR: u64 = 512;
/// Most iovecs one preadv/pwritev takes (Linux's UIO_MAXIOV); a longer request is carried out
/// in several calls, each continuing where the last stopped.
const IOV_MAX: usize = 1024;

fn read_sector(file: &File, lba: u64, size: u64) -> Result<Vec<u8>, FsError> {
    let mut buf = vec![0u8; size as usize];
    file.read_exact_at(&mut buf, lba * size)?;
    Ok(buf)
}

fn le32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Byte range of partition `n` (1-based).
fn find_partition(file: &File, total: u64, n: u32) -> Result<(u64, u64), FsError> {
    if n == 0 {
        return Err(FsError::Invalid("partition= counts from 1"));
    }
    let mbr = read_sector(file, 0, SECTOR)?;
    if mbr[510] != 0x55 || mbr[511] != 0xAA {
        log::error!("image: no partition table (no 0x55AA signature in sector 0)");
        return Err(FsError::Invalid(
            "partition= given but the image has no partition table",
        ));
    }
    let entry = |i: usize| &mbr[446 + 16 * i..446 + 16 * (i + 1)];
    let range = if (0..4).any(|i| entry(i)[4] == MBR_TYPE_GPT) {
        gpt_partition(file, total, n)?
    } else {
        let idx = (n - 1) as usize;
        if idx >= 4 {
            log::error!("image: partition {n} asked, an MBR has 4 primary partitions");
            return Err(FsError::Invalid(
                "no such partition (MBR: primary partitions 1-4 only)",
            ));
        }
        let e = entry(idx);
        if e[4] == 0 {
            return Err(FsError::Invalid(
                "no such partition: that MBR slot is empty",
            ));
        }
        if MBR_TYPES_EXTENDED.contains(&e[4]) {
            return Err(FsError::Invalid("partition= names an extended partition"));
        }
        (
            u64::from(le32(e, 8)) * SECTOR,
            u64::from(le32(e, 12)) * SECTOR,
        )
    };
    let (start, len) = range;
    if len == 0 || start.checked_add(len).is_none_or(|end| end > total) {
        log::error!("image: partition {n} ({start}+{len}) lies outside the image ({total})");
        return Err(FsError::Corrupted("partition lies outside the image"));
    }
    Ok(range)
}

/// Byte range of GPT partition `n`, trying 512- and 4096-byte logical sectors.
fn gpt_partition(file: &File, total: u64, n: u32) -> Result<(u64, u64), FsError> {
    for sector in [SECTOR, 4096] {
        if sector * 2 > total {
            continue;
        }
        let hdr = read_sector(file, 1, sector)?;
        if &hdr[0..8] != b"EFI PART" {
            continue;
        }
        let entries_lba = le64(&hdr, 72);
        let count = le32(&hdr, 80);
        let esize = u64::from(le32(&hdr, 84));
        if n > count || esize < 128 {
            return Err(FsError::Invalid("no such partition in the GPT"));
        }
        let mut e = vec![0u8; esize as usize];
        file.read_exact_at(&mut e, entries_lba * sector + u64::from(n - 1) * esize)?;
        if e[0..16].iter().all(|b| *b == 0) {
            return Err(FsError::Invalid(
                "no such partition: that GPT entry is unused",
            ));
        }
        let (first, last) = (le64(&e, 32), le64(&e, 40));
        if last < first {
            return Err(FsError::Corrupted("GPT entry ends before it starts"));
        }
        return Ok((first * sector, (last - first + 1) * sector));
    }
    log::error!("image: protective MBR but no GPT header at LBA 1");
    Err(FsError::Corrupted("protective MBR without a GPT header"))
}

/// The file offset `at` as off_t.
fn to_off(at: u64) -> Result<libc::off_t, FsError> {
    libc::off_t::try_from(at).map_err(|_| FsError::Invalid("offset past off_t"))
}

/// Bytes a vectored call moved; `None` to retry it (EINTR); `at_zero` when it moved
/// nothing (the end of the file, or a device that takes no more).
fn moved(r: nix::Result<usize>, at_zero: std::io::ErrorKind) -> Result<Option<usize>, FsError> {
    match r {
        Ok(0) => Err(FsError::Io(at_zero.into())),
        Ok(n) => Ok(Some(n)),
        Err(nix::errno::Errno::EINTR) => Ok(None),
        Err(e) => Err(FsError::Io(e.into())),
    }
}

/// Where a vectored transfer resumes after `n` more bytes: (buffer, offset in it), given the
/// buffers' lengths and the position `(first, skip)` it started from. Empty buffers are
/// stepped over so the loop always ends.
fn advance(
    lens: impl Iterator<Item = usize>,
    first: usize,
    skip: usize,
    n: usize,
) -> (usize, usize) {
    // Bytes moved counted from the start of buffer `first`.
    let mut n = n + skip;
    let mut i = first;
    for len in lens.skip(first) {
        if n < len {
            return (i, n);
        }
        n -= len;
        i += 1;
    }
    (i, 0)
}

impl BlockDevice for FileDevice {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), FsError> {
        let at = self.check(offset, buf.len())?;
        Ok(self.file.read_exact_at(buf, at)?)
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), FsError> {
        if self.read_only {
            return Err(FsError::ReadOnly);
        }
        let at = self.check(offset, buf.len())?;
        Ok(self.file.write_all_at(buf, at)?)
    }

    /// One preadv(2) for a merged request instead of a pread per page; short transfers
    /// (signals, the end of a sparse file's written part) continue where they stopped.
    fn read_vectored_at(&self, offset: u64, bufs: &mut [&mut [u8]]) -> Result<(), FsError> {
        let total = bufs.iter().map(|b| b.len()).sum();
        let mut at = self.check(offset, total)?;
        if total == 0 {
            return Ok(());
        }
        let (mut first, mut skip) = (0, 0);
        while first < bufs.len() {
            let mut iov: Vec<IoSliceMut<'_>> =
                Vec::with_capacity((bufs.len() - first).min(IOV_MAX));
            if let Some((head, tail)) = bufs[first..].split_first_mut() {
                iov.push(IoSliceMut::new(&mut head[skip..]));
                iov.extend(
                    tail.iter_mut()
                        .take(IOV_MAX - 1)
                        .map(|b| IoSliceMut::new(b)),
                );
            }
            let r = uio::preadv(&self.file, &mut iov, to_off(at)?);
            let Some(n) = moved(r, std::io::ErrorKind::UnexpectedEof)? else {
                continue;
            };
            drop(iov);
            at += n as u64;
            (first, skip) = advance(bufs.iter().map(|b| b.len()), first, skip, n);
        }
        Ok(())
    }

    /// One pwritev(2) for a merged request; short writes continue where they stopped.
    fn write_vectored_at(&self, offset: u64, bufs: &[&[u8]]) -> Result<(), FsError> {
        if self.read_only {
            return Err(FsError::ReadOnly);
        }
        let total = bufs.iter().map(|b| b.len()).sum();
        let mut at = self.check(offset, total)?;
        if total == 0 {
            return Ok(());
        }
        let (mut first, mut skip) = (0, 0);
        while first < bufs.len() {
            let mut iov: Vec<IoSlice<'_>> = Vec::with_capacity((bufs.len() - first).min(IOV_MAX));
            iov.push(IoSlice::new(&bufs[first][skip..]));
            iov.extend(
                bufs[first + 1..]
                    .iter()
                    .take(IOV_MAX - 1)
                    .map(|b| IoSlice::new(b)),
            );
            let r = uio::pwritev(&self.file, &iov, to_off(at)?);
            let Some(n) = moved(r, std::io::ErrorKind::WriteZero)? else {
                continue;
            };
            at += n as u64;
            (first, skip) = advance(bufs.iter().map(|b| b.len()), first, skip, n);
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), FsError> {
        if self.read_only {
            return Ok(());
        }
        Ok(self.file.sync_data()?)
    }

    fn size(&self) -> u64 {
        self.size
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    struct TempImage(std::path::PathBuf);

    impl TempImage {
        fn new(name: &str, bytes: &[u8]) -> Self {
            let dir = std::env::temp_dir().join(format!("fatcache-dev-{}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("temp dir");
            let p = dir.join(name);
            std::fs::write(&p, bytes).expect("write image");
            TempImage(p)
        }
    }

    impl Drop for TempImage {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn mbr(parts: &[(u8, u32, u32)], size: usize) -> Vec<u8> {
        let mut img = vec![0u8; size];
        for (i, (ty, lba, count)) in parts.iter().enumerate() {
            let e = 446 + 16 * i;
            img[e + 4] = *ty;
            img[e + 8..e + 12].copy_from_slice(&lba.to_le_bytes());
            img[e + 12..e + 16].copy_from_slice(&count.to_le_bytes());
        }
        img[510] = 0x55;
        img[511] = 0xAA;
        img
    }

    #[test]
    fn whole_image_and_offset() {
        let mut bytes = vec![0u8; 8192];
        bytes[4096] = 7;
        let t = TempImage::new("plain.img", &bytes);
        let d = FileDevice::open(&t.0, Placement::default()).expect("open");
        assert_eq!((d.size(), d.start(), d.read_only()), (8192, 0, false));
        let place = Placement {
            offset: Some(4096),
            ..Placement::default()
        };
        let d = FileDevice::open(&t.0, place).expect("open");
        let mut b = [0u8; 1];
        d.read_at(0, &mut b).expect("read");
        assert_eq!((b[0], d.size()), (7, 4096));
        d.write_at(4095, &[9]).expect("write last byte");
        assert!(d.write_at(4095, &[9, 9]).is_err(), "past the volume");
        let bad = Placement {
            offset: Some(9000),
            ..Placement::default()
        };
        assert!(FileDevice::open(&t.0, bad).is_err());
    }

    #[test]
    fn mbr_partitions() {
        let img = mbr(&[(0x0C, 8, 8), (0x05, 16, 4), (0x06, 20, 4)], 12 * 1024);
        let t = TempImage::new("mbr.img", &img);
        let p = |n| Placement {
            partition: Some(n),
            ..Placement::default()
        };
        let d = FileDevice::open(&t.0, p(1)).expect("partition 1");
        assert_eq!((d.start(), d.size()), (4096, 4096));
        assert!(FileDevice::open(&t.0, p(2)).is_err(), "extended");
        assert_eq!(FileDevice::open(&t.0, p(3)).expect("p3").start(), 20 * 512);
        assert!(FileDevice::open(&t.0, p(4)).is_err(), "empty slot");
        assert!(FileDevice::open(&t.0, p(5)).is_err());
        assert!(FileDevice::open(&t.0, p(0)).is_err());
        let outside = mbr(&[(0x0C, 8, 1000)], 8192);
        let t2 = TempImage::new("outside.img", &outside);
        assert!(matches!(
            FileDevice::open(&t2.0, p(1)),
            Err(FsError::Corrupted(_))
        ));
    }

    #[test]
    fn gpt_partition_found_through_protective_mbr() {
        let mut img = mbr(&[(MBR_TYPE_GPT, 1, 200)], 100 * 512);
        img[512..520].copy_from_slice(b"EFI PART");
        img[512 + 72..512 + 80].copy_from_slice(&2u64.to_le_bytes());
        img[512 + 80..512 + 84].copy_from_slice(&4u32.to_le_bytes());
        img[512 + 84..512 + 88].copy_from_slice(&128u32.to_le_bytes());
        let e = 2 * 512 + 128; // entry 2
        img[e] = 0x28; // any non-zero type GUID
        img[e + 32..e + 40].copy_from_slice(&40u64.to_le_bytes());
        img[e + 40..e + 48].copy_from_slice(&59u64.to_le_bytes());
        let t = TempImage::new("gpt.img", &img);
        let p = |n| Placement {
            partition: Some(n),
            ..Placement::default()
        };
        let d = FileDevice::open(&t.0, p(2)).expect("gpt partition 2");
        assert_eq!((d.start(), d.size()), (40 * 512, 20 * 512));
        assert!(FileDevice::open(&t.0, p(1)).is_err(), "unused entry");
        assert!(
            FileDevice::open(&t.0, p(9)).is_err(),
            "beyond the entry count"
        );
    }

    #[test]
    fn read_only_refuses_writes() {
        let t = TempImage::new("ro.img", &[1u8; 1024]);
        let place = Placement {
            read_only: true,
            ..Placement::default()
        };
        let d = FileDevice::open(&t.0, place).expect("open ro");
        assert!(matches!(d.write_at(0, &[0]), Err(FsError::ReadOnly)));
        assert!(d.flush().is_ok());
        assert_eq!(
            std::fs::read(&t.0).expect("read back")[0],
            1,
            "nothing written"
        );
    }

    #[test]
    fn vectored_requests_land_where_single_ones_would() {
        let t = TempImage::new("vec.img", &[0u8; 8192]);
        let place = Placement {
            offset: Some(512),
            ..Placement::default()
        };
        let d = FileDevice::open(&t.0, place).expect("open");
        let (a, b) = ([1u8; 1000], [2u8; 3000]);
        d.write_vectored_at(100, &[&a, &[], &b]).expect("pwritev");
        let raw = std::fs::read(&t.0).expect("read back");
        assert!(raw[612..1612].iter().all(|&x| x == 1));
        assert!(raw[1612..4612].iter().all(|&x| x == 2));
        assert_eq!((raw[611], raw[4612]), (0, 0));
        let (mut x, mut y) = (vec![0u8; 1500], vec![0u8; 2500]);
        d.read_vectored_at(100, &mut [&mut x, &mut [], &mut y])
            .expect("preadv");
        assert!(x[..1000].iter().all(|&v| v == 1) && x[1000..].iter().all(|&v| v == 2));
        assert!(y[..2500].iter().all(|&v| v == 2));
        // Past the filesystem's end: refused before any byte moves.
        let mut z = vec![0u8; 8000];
        assert!(d.read_vectored_at(0, &mut [&mut z]).is_err());
    }

    #[test]
    fn a_request_of_more_buffers_than_one_call_takes_is_carried_out_whole() {
        let t = TempImage::new("manyvec.img", &[0u8; 8192]);
        let d = FileDevice::open(&t.0, Placement::default()).expect("open");
        // 2.5 times UIO_MAXIOV buffers of two bytes: one pwritev/preadv would be EINVAL.
        let n = IOV_MAX * 5 / 2;
        let data: Vec<[u8; 2]> = (0..n).map(|i| [(i % 251) as u8, (i % 13) as u8]).collect();
        let views: Vec<&[u8]> = data.iter().map(|b| &b[..]).collect();
        d.write_vectored_at(0, &views)
            .expect("pwritev of many buffers");
        let raw = std::fs::read(&t.0).expect("read back");
        assert_eq!(&raw[..2 * n], data.concat().as_slice());
        let mut back = vec![[0u8; 2]; n];
        let mut views: Vec<&mut [u8]> = back.iter_mut().map(|b| &mut b[..]).collect();
        d.read_vectored_at(0, &mut views)
            .expect("preadv of many buffers");
        assert_eq!(back, data);
    }

    #[test]
    fn a_short_transfer_resumes_inside_the_right_buffer() {
        let lens = [4usize, 0, 6, 2];
        assert_eq!(advance(lens.iter().copied(), 0, 0, 3), (0, 3));
        // Past the first and the empty one, into the third.
        assert_eq!(advance(lens.iter().copied(), 0, 0, 5), (2, 1));
        assert_eq!(advance(lens.iter().copied(), 2, 1, 5), (3, 0));
        assert_eq!(advance(lens.iter().copied(), 0, 0, 12), (4, 0));
    }
}
