//! The one error type of the crate and its errno mapping.
//!
//! Every layer returns [`FsError`]; the detail of a failure is logged where it happens and the
//! variant stays coarse, the way the kernel returns a bare `-EIO` after a `fat_fs_error()` line in
//! the log. Only the FUSE adapter turns it into a reply, through [`FsError::errno`].

use std::fmt;

/// A failure of a filesystem or page-cache operation.
#[derive(Debug)]
#[non_exhaustive]
pub enum FsError {
    /// No such file or directory (ENOENT).
    NotFound,
    /// The name exists already (EEXIST).
    Exists,
    /// A path component is not a directory (ENOTDIR).
    NotDir,
    /// The target is a directory (EISDIR).
    IsDir,
    /// The directory is not empty (ENOTEMPTY).
    NotEmpty,
    /// The name is longer than FAT can hold (ENAMETOOLONG).
    NameTooLong,
    /// The name or an argument is not acceptable (EINVAL).
    Invalid(&'static str),
    /// The volume is full (ENOSPC).
    NoSpace,
    /// The file would pass 4 GiB - 1 bytes (EFBIG).
    FileTooBig,
    /// The volume or image is read-only (EROFS).
    ReadOnly,
    /// On-disk metadata is inconsistent (EIO); the detail was logged at the site.
    Corrupted(&'static str),
    /// No page frame could be had, even after reclaim (ENOMEM).
    NoMemory,
    /// A writeback error recorded on the mapping earlier and reported now (EIO), like AS_EIO.
    PreviousIo,
    /// A writeback error of "no space" recorded on the mapping earlier (ENOSPC), like AS_ENOSPC.
    PreviousNoSpace,
    /// The operation is not supported by FAT or by this build (EOPNOTSUPP).
    NotSupported,
    /// Permission denied (EPERM), for operations FAT cannot represent.
    NotPermitted,
    /// The caller's access rights do not allow it (EACCES).
    AccessDenied,
    /// An I/O error from the image (EIO unless the OS error says otherwise).
    Io(std::io::Error),
}

impl FsError {
    /// The errno a system call should fail with.
    pub fn errno(&self) -> i32 {
        match self {
            FsError::NotFound => libc::ENOENT,
            FsError::Exists => libc::EEXIST,
            FsError::NotDir => libc::ENOTDIR,
            FsError::IsDir => libc::EISDIR,
            FsError::NotEmpty => libc::ENOTEMPTY,
            FsError::NameTooLong => libc::ENAMETOOLONG,
            FsError::Invalid(_) => libc::EINVAL,
            FsError::NoSpace => libc::ENOSPC,
            FsError::FileTooBig => libc::EFBIG,
            FsError::ReadOnly => libc::EROFS,
            FsError::Corrupted(_) => libc::EIO,
            FsError::NoMemory => libc::ENOMEM,
            FsError::PreviousIo => libc::EIO,
            FsError::PreviousNoSpace => libc::ENOSPC,
            FsError::NotSupported => libc::EOPNOTSUPP,
            FsError::NotPermitted => libc::EPERM,
            FsError::AccessDenied => libc::EACCES,
            FsError::Io(e) => e.raw_os_error().unwrap_or(libc::EIO),
        }
    }
}

impl fmt::Display for FsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FsError::NotFound => f.write_str("no such file or directory"),
            FsError::Exists => f.write_str("file exists"),
            FsError::NotDir => f.write_str("not a directory"),
            FsError::IsDir => f.write_str("is a directory"),
            FsError::NotEmpty => f.write_str("directory not empty"),
            FsError::NameTooLong => f.write_str("file name too long"),
            FsError::Invalid(what) => write!(f, "invalid argument: {what}"),
            FsError::NoSpace => f.write_str("no space left on device"),
            FsError::FileTooBig => f.write_str("file too large"),
            FsError::ReadOnly => f.write_str("read-only file system"),
            FsError::Corrupted(what) => write!(f, "corrupted file system: {what}"),
            FsError::NoMemory => f.write_str("out of page frames"),
            FsError::PreviousIo => f.write_str("an earlier writeback failed (EIO)"),
            FsError::PreviousNoSpace => f.write_str("an earlier writeback failed (ENOSPC)"),
            FsError::NotSupported => f.write_str("operation not supported"),
            FsError::NotPermitted => f.write_str("operation not permitted"),
            FsError::AccessDenied => f.write_str("permission denied"),
            FsError::Io(e) => write!(f, "i/o error: {e}"),
        }
    }
}

impl std::error::Error for FsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            FsError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<std::io::Error> for FsError {
    fn from(e: std::io::Error) -> Self {
        FsError::Io(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_mapping_is_the_kernels() {
        assert_eq!(FsError::NoSpace.errno(), libc::ENOSPC);
        assert_eq!(FsError::PreviousIo.errno(), libc::EIO);
        assert_eq!(FsError::FileTooBig.errno(), libc::EFBIG);
        let io = std::io::Error::from_raw_os_error(libc::ENXIO);
        assert_eq!(FsError::from(io).errno(), libc::ENXIO);
        let other = std::io::Error::other("x");
        assert_eq!(FsError::Io(other).errno(), libc::EIO);
    }
}
