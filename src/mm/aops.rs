//! Address-space operations: the only way `mm` calls into a filesystem.
//!
//! Models: include/linux/fs.h struct address_space_operations (writepage, writepages, and the
//! `__mark_inode_dirty` that `set_page_dirty` reaches through it) (v5.10).

use crate::error::FsError;
use crate::mm::filemap::AddressSpace;
use crate::mm::page::PageRef;
use crate::mm::writeback::{WritebackControl, generic_writepages};

/// What a filesystem provides to write its pages back.
pub trait AddressSpaceOps: Send + Sync {
    /// Write one page.
    ///
    /// # Context
    /// Called with the page locked, PG_dirty just cleared by `clear_page_dirty_for_io`, and a
    /// reference held by the caller. Must either start writeback (`set_page_writeback`), unlock
    /// the page and submit I/O whose completion calls `end_page_writeback`, or redirty it
    /// (`redirty_page_for_writepage`) and unlock it. The page is unlocked on return either way,
    /// errors included. Must not wait for the I/O it submitted.
    fn writepage(
        &self,
        mapping: &AddressSpace,
        page: &PageRef<'_>,
        wbc: &mut WritebackControl,
    ) -> Result<(), FsError>;

    /// Write many pages; the default walks them with `write_cache_pages` and
    /// [`AddressSpaceOps::writepage`] (generic_writepages).
    fn writepages(
        &self,
        mapping: &AddressSpace,
        wbc: &mut WritebackControl,
    ) -> Result<(), FsError> {
        generic_writepages(mapping, wbc)
    }

    /// A page of the mapping went from clean to dirty: put the inode on the flusher's list
    /// (`__mark_inode_dirty(I_DIRTY_PAGES)`). The default keeps no list.
    ///
    /// # Context
    /// Called from `set_page_dirty` with no mm lock held, usually under the page lock; must
    /// not sleep on page state.
    fn dirty_inode(&self) {}
}
