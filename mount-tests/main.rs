//! Mount tests: real programs on a FAT image mounted through FUSE by `fatcache mount -f`, then
//! unmount, `fsck.fat -n` (strict: the dirty bit cleared) and independent readers of what was
//! written. They need root and /dev/fuse and fail without them; programs a developer machine
//! may lack (git, sqlite3, fio, getfattr) are skipped with a message, CI installs them.

#[path = "../tests/common/mod.rs"]
mod common;

mod basic;
mod cli;
mod harness;
mod lifecycle;
mod programs;
mod reuse;
mod semantics;
