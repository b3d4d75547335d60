//! Mount tests: real programs on a FAT image mounted through FUSE by `fatcache mount -f`, then
//! unmount, `fsck.fat -n` (strict: the dirty bit cleared) and independent readers of what was
//! written. They need root and /dev/fuse and fail without them; programs a developer machine
//! may lack (git, sqlite3, fio, getfattr) are skipped with a message, CI installs them.
//! `race` runs `fatcache repro` per era: the January 2021 writeback BUG must hit in v5.9 and
//! v5.10 only.

#[path = "../tests/common/mod.rs"]
mod common;

mod basic;
mod cli;
mod crash;
mod errors;
mod full;
mod harness;
mod lifecycle;
mod programs;
mod race;
mod readonly;
mod reuse;
mod semantics;
mod soak;
