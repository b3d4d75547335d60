//! RENAME_EXCHANGE: two existing names swap what they stand for, in one step.
//!
//! Models: fs/fat/namei_vfat.c vfat_rename_exchange() (v6.0, where vfat gained the flag), with
//! the checks fs/namei.c do_renameat2() makes before it: both names must exist, and neither
//! may be a directory that would end up inside itself (EINVAL on either side).
//!
//! What moves: the names stay in their slots, each with its long name, short alias and case
//! byte; the rest of the two short entries (attributes, first cluster, size, creation,
//! modification and access times) trade places. Identity follows the contents: the node that
//! was under the old name is attached at the new name's i_pos and keeps its inode number, as
//! the kernel moves i_pos between the two inodes (fat_detach, fat_attach). That is also what
//! the kernel's dentry cache expects of a FUSE filesystem, since d_exchange() leaves the inode
//! that was at the old name under the new one: an open file keeps its data, a directory keeps
//! its children, and no inode number changes meaning.
//!
//! A directory moved to another parent gets its `..` pointed there; each parent gets a new
//! modification time (vfat_update_dir_metadata; FAT has no ctime); the subdirectory counts
//! behind the parents' link counts follow from the entries themselves ([`Directory::update`]).
//!
//! Locking: as rename (the parent module's order): `rename_lock`, the parent directories,
//! then `ihash` across both entry writes and the swap of the two i_pos, so that a
//! write_inode of either node finds it at one position whose entry already holds its
//! contents, never at its old one after the other node's contents went there. The `..` of
//! an exchanged directory is then written under that directory's own lock, below its parent
//! (neither exchanged directory is an ancestor of a locked parent: checked first).

use super::{Node, Pos, Volume};
use crate::error::FsError;
use crate::fat::dir::Directory;
use crate::fat::dirent::DirEntry;
use crate::sync::{Arc, MutexGuard};

/// One side of an exchange: the node and where its entry is before the exchange.
struct Side {
    node: Arc<Node>,
    pos: Pos,
}

/// The locked parents of an exchange, found by inode number.
struct Parents<'a> {
    old: (u64, MutexGuard<'a, Directory>),
    new: Option<(u64, MutexGuard<'a, Directory>)>,
}

impl Parents<'_> {
    /// The locked directory `parent` (the old one unless it names the new one).
    fn dir(&mut self, parent: u64) -> &mut Directory {
        match &mut self.new {
            Some((ino, d)) if *ino == parent => d,
            _ => &mut self.old.1,
        }
    }
}

impl Volume {
    /// Exchanges `old_name` in `old_dir` and `new_name` in `new_dir` (renameat2 with
    /// RENAME_EXCHANGE): each name then stands for what the other did, files and directories
    /// alike, a non-empty directory included. `NotFound` unless both exist; `Invalid` when a
    /// directory would move into itself or below itself; two names of one entry are a no-op.
    ///
    /// Order: both entries are rewritten in place (the second failing puts the first back),
    /// then the `..` of a directory that changed parent; a crash between the two entry
    /// writes leaves both names on one contents, which fsck reports as a shared chain.
    ///
    /// Models: fs/fat/namei_vfat.c vfat_rename_exchange() (v6.0).
    pub fn rename_exchange(
        &self,
        old_dir: &Node,
        old_name: &str,
        new_dir: &Node,
        new_name: &str,
    ) -> Result<(), FsError> {
        self.fs_error(self.exchange_inner(old_dir, old_name, new_dir, new_name))
    }

    fn exchange_inner(
        &self,
        old_dir: &Node,
        old_name: &str,
        new_dir: &Node,
        new_name: &str,
    ) -> Result<(), FsError> {
        self.check_writable()?;
        let _serial = self.rename_lock.lock();
        let (od, nd) = self.lock_parents(old_dir, new_dir)?;
        let mut parents = Parents {
            old: (old_dir.ino, od),
            new: nd.map(|d| (new_dir.ino, d)),
        };
        let a = self.side(old_dir, &mut parents, old_name)?;
        let b = self.side(new_dir, &mut parents, new_name)?;
        if a.node.ino == b.node.ino {
            // Two spellings of one entry: the VFS sees one inode and does nothing.
            return Ok(());
        }
        for (moving, dest) in [(&a.node, new_dir), (&b.node, old_dir)] {
            if moving.is_dir() && (moving.ino == dest.ino || self.is_ancestor(moving.ino, dest.ino))
            {
                return Err(FsError::Invalid(
                    "exchange would put a directory inside itself",
                ));
            }
        }
        self.swap_entries(&mut parents, &a, &b)?;
        if old_dir.ino != new_dir.ino {
            if let Err(e) = self.swap_dotdots(&a.node, new_dir, &b.node, old_dir) {
                let back = (
                    Side {
                        node: Arc::clone(&a.node),
                        pos: b.pos,
                    },
                    Side {
                        node: Arc::clone(&b.node),
                        pos: a.pos,
                    },
                );
                if let Err(undo) = self.swap_entries(&mut parents, &back.0, &back.1) {
                    log::error!("fat: exchange: cannot swap the entries back: {undo}");
                }
                return Err(e);
            }
        }
        self.dir_changed(old_dir)?;
        if old_dir.ino != new_dir.ino {
            self.dir_changed(new_dir)?;
        }
        drop(parents);
        self.dir_sync()
    }

    /// The node `name` names in `dir` (locked in `parents`), with where its entry is.
    fn side(&self, dir: &Node, parents: &mut Parents<'_>, name: &str) -> Result<Side, FsError> {
        let d = parents.dir(dir.ino);
        let slot = d.lookup(name).ok_or(FsError::NotFound)?;
        let pos = Pos {
            parent: dir.ino,
            offset: slot.offset,
            dev: d.dev_offset(slot.offset)?,
        };
        let node = self.node_for(dir, d, &slot)?;
        Ok(Side { node, pos })
    }

    /// Writes `a`'s contents into `b`'s entry and `b`'s into `a`'s, then attaches each node
    /// at the other's position; on a failed second write the first is put back.
    fn swap_entries(&self, parents: &mut Parents<'_>, a: &Side, b: &Side) -> Result<(), FsError> {
        let mut nodes = self.ihash.lock();
        let (ea, eb) = (
            self.contents(&a.node, a.pos)?,
            self.contents(&b.node, b.pos)?,
        );
        let table = &self.table;
        parents.dir(a.pos.parent).update(table, a.pos.offset, &eb)?;
        if let Err(e) = parents.dir(b.pos.parent).update(table, b.pos.offset, &ea) {
            if let Err(undo) = parents.dir(a.pos.parent).update(table, a.pos.offset, &ea) {
                log::error!(
                    "fat: exchange: entry at {} holds the other's contents: {undo}",
                    a.pos.dev
                );
                return Err(FsError::Corrupted(
                    "exchange left two entries on one contents",
                ));
            }
            return Err(e);
        }
        // Both out before either goes in: each takes the other's i_pos.
        nodes.detach(&a.node);
        nodes.detach(&b.node);
        nodes.attach(&a.node, b.pos);
        nodes.attach(&b.node, a.pos);
        Ok(())
    }

    /// What `node`'s entry at `pos` must hold: the node's own state if it has changes not yet
    /// written (write_inode's view), else the entry as it is on the disk. Called with `ihash`
    /// held, so no write_inode of the node runs meanwhile.
    fn contents(&self, node: &Node, pos: Pos) -> Result<DirEntry, FsError> {
        if node.meta.lock().dirty {
            return Ok(node.entry());
        }
        self.read_entry(pos.dev)
    }

    /// Points the `..` of `a` (if a directory) at `a_parent` and of `b` at `b_parent`, each
    /// under its own lock; a failure on `b` puts `a`'s back.
    fn swap_dotdots(
        &self,
        a: &Node,
        a_parent: &Node,
        b: &Node,
        b_parent: &Node,
    ) -> Result<(), FsError> {
        let point = |node: &Node, parent: &Node| -> Result<(), FsError> {
            if !node.is_dir() {
                return Ok(());
            }
            node.dir()?.set_dotdot(&self.table, parent.dotdot_cluster())
        };
        point(a, a_parent)?;
        if let Err(e) = point(b, b_parent) {
            // a's old parent is b's new one.
            if let Err(undo) = point(a, b_parent) {
                log::error!("fat: exchange: '..' of inode {} left moved: {undo}", a.ino);
            }
            return Err(e);
        }
        Ok(())
    }
}
