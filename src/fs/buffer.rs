//! Page I/O driven by a filesystem's block map: readpage, writepage, and the buffered-write
//! pair write_begin / write_end with the zero-filling "cont" expansion FAT needs.
//!
//! Models: fs/buffer.c block_read_full_page(), block_write_full_page(), cont_write_begin(),
//! cont_expand_zero(), block_write_begin(), generic_write_end(), generic_cont_expand_simple()
//! (v5.10), without buffer heads: a page's blocks are tracked as device extents found through
//! [`BlockMap`] when the page is read or written, not as a list hanging off the page.
//!
//! What is kept from the kernel, because the race depends on it:
//! * write_begin locks the page and never waits for writeback on it (FAT's backing device has
//!   no stable pages), so a page under writeback is redirtied freely;
//! * writepage sets PG_writeback while holding the page lock, unlocks, and submits; the I/O
//!   completion (a device thread) calls end_page_writeback without the lock;
//! * an expansion zero-fills every page between the allocated end (`mmu_private`) and the new
//!   size through write_begin / write_end, each page locked, zeroed, dirtied and unlocked in
//!   turn, growing i_size page by page.
//!
//! Readahead's reads and writepages' writes go out as the kernel's fs/mpage.c sends them
//! ([`MpageRead`], [`mpage_writepages`]): whole pages that follow one another on the device
//! share one bio; a page that does not fit is read or written on its own, one bio per
//! contiguous device extent (the last part's completion ends its I/O).

use crate::dev::{Bio, BioOp, IoBuf, IoQueue, IoSeg, IoSource, IoSrcSeg};
use crate::error::FsError;
use crate::mm::filemap::{AddressSpace, end_page_writeback, grab_cache_page_write_begin};
use crate::mm::waitqueue::{lock_page, unlock_page};
use crate::mm::writeback::{
    WritebackControl, balance_dirty_pages_ratelimited, set_page_dirty, set_page_writeback,
    write_cache_pages,
};
use crate::mm::{PAGE_SHIFT, PAGE_SIZE, PageCache, PageRef, Pfn};
use crate::sync::{Arc, AtomicU32, Ordering};

/// A file's map from byte offsets to device bytes, as a filesystem provides it (get_block).
pub trait BlockMap: Send + Sync {
    /// The device byte holding file byte `offset` and how many bytes from there are
    /// contiguous on the device; `None` where nothing is allocated.
    fn map(&self, offset: u64) -> Result<Option<(u64, u64)>, FsError>;
    /// Allocates so that every byte below `end` is mapped, with `*allocated` (mmu_private) the
    /// end of what was mapped for writing so far; moves `*allocated` up to `end` rounded to a
    /// block. Allocation is sequential: it continues from `*allocated`.
    fn allocate(&self, allocated: &mut u64, end: u64) -> Result<(), FsError>;
    /// i_size.
    fn size(&self) -> u64;
    /// Sets i_size (under the inode's lock and the lock of the page written last).
    fn set_size(&self, size: u64);
    /// The block size: the unit of allocation and of device writes.
    fn block_size(&self) -> u64;
    /// The device queue the file's pages are read and written through.
    fn queue(&self) -> &Arc<IoQueue>;
}

/// One piece of a page's I/O: `len` device bytes at `dev` are page bytes from `at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Extent {
    dev: u64,
    at: usize,
    len: usize,
}

/// The device extents of page `index`'s bytes below file byte `end`, merged where adjacent;
/// a hole below `end` is `Corrupted` (FAT has no holes).
fn page_extents(map: &dyn BlockMap, index: u64, end: u64) -> Result<Vec<Extent>, FsError> {
    let start = index << PAGE_SHIFT;
    let end = end.min(start + PAGE_SIZE as u64);
    let mut out: Vec<Extent> = Vec::new();
    let mut pos = start;
    while pos < end {
        let (dev, run) = map.map(pos)?.ok_or_else(|| {
            log::error!("buffer: file byte {pos} below {end} is not mapped");
            FsError::Corrupted("cluster chain shorter than file size")
        })?;
        if run == 0 {
            return Err(FsError::Corrupted("empty block mapping"));
        }
        // Both are at most a page here, so the casts cannot truncate.
        let len = run.min(end - pos) as usize;
        let at = (pos - start) as usize;
        match out.last_mut() {
            Some(last) if last.dev + last.len as u64 == dev => last.len += len,
            _ => out.push(Extent { dev, at, len }),
        }
        pos += len as u64;
    }
    Ok(out)
}

/// Bytes `[at, at + len)` of a page under a read: the device reads straight into the frame.
/// The reader holds the page locked and not uptodate until the last part completes, so the
/// frame stays this page's for the whole transfer (see `Page::data_for_read_io`).
struct PageSpan {
    cache: Arc<PageCache>,
    pfn: Pfn,
    at: usize,
    len: usize,
}

impl IoBuf for PageSpan {
    fn len(&self) -> usize {
        self.len
    }

    fn borrow_segments<'s>(&'s self, out: &mut Vec<IoSeg<'s>>) {
        out.push(
            self.cache
                .page(self.pfn)
                .data_for_read_io(self.at..self.at + self.len),
        );
    }
}

/// Whole pages under a read whose bytes follow one another on the device: one bio for all of
/// them, as do_mpage_readpage builds. Each page stays locked and not uptodate until the bio's
/// completion, so every frame stays its page's for the transfer (see `PageSpan`).
struct PageRun {
    cache: Arc<PageCache>,
    pfns: Vec<Pfn>,
}

impl IoBuf for PageRun {
    fn len(&self) -> usize {
        self.pfns.len() * PAGE_SIZE
    }

    fn borrow_segments<'s>(&'s self, out: &mut Vec<IoSeg<'s>>) {
        out.extend(
            self.pfns
                .iter()
                .map(|&pfn| self.cache.page(pfn).data_for_read_io(0..PAGE_SIZE)),
        );
    }
}

/// Bytes of frames under writeback, one after another on the device: what a write bio is
/// carried out from, with no copy. It holds a reference to each frame, taken under the page
/// lock when PG_writeback was set, and puts them when dropped, which the queue does once the
/// transfer is over and before the bio's completion ends the writeback.
///
/// Why a reference, when the kernel's bio holds none: PG_writeback pins the page there (reclaim
/// skips it, truncate waits for it), but where a waiter takes a stale wake-up for the end of a
/// writeback (v5.9, v5.10: S1's stale wake, seen by truncate's `if` wait instead of
/// write_cache_pages'), truncate goes on while the page's next writeback is in flight and
/// drops the page cache's reference. The frame is then only kept from reuse by the bad-page
/// check that leaks a frame freed under writeback; with this reference, the bytes the device
/// is about to read cannot become another file's, whatever a diagnostic does (the bad-page
/// report of that case then comes from the completion thread that drops this reference, not
/// from truncate). It is given back before end_page_writeback, so who drops the last
/// reference there (Hugh's frame reuse, S2) is as in each era.
struct FrameRun {
    cache: Arc<PageCache>,
    /// Each frame and the bytes of it to write, in device order.
    segs: Vec<(Pfn, std::ops::Range<usize>)>,
    len: usize,
}

impl FrameRun {
    fn new(cache: &Arc<PageCache>, capacity: usize) -> Self {
        FrameRun {
            cache: Arc::clone(cache),
            segs: Vec::with_capacity(capacity),
            len: 0,
        }
    }

    /// Appends bytes `range` of `page` (locked, under writeback), taking a reference to it.
    fn push(&mut self, page: &PageRef<'_>, range: std::ops::Range<usize>) {
        let _ = page.get().into_raw(); // put back in Drop
        self.len += range.len();
        self.segs.push((page.pfn(), range));
    }
}

impl IoSource for FrameRun {
    fn len(&self) -> usize {
        self.len
    }

    fn borrow_segments<'s>(&'s self, out: &mut Vec<IoSrcSeg<'s>>) {
        out.extend(
            self.segs
                .iter()
                .map(|(pfn, range)| self.cache.page(*pfn).data_for_write_io(range.clone())),
        );
    }
}

impl Drop for FrameRun {
    fn drop(&mut self) {
        for (pfn, _) in self.segs.drain(..) {
            drop(PageRef::from_raw(self.cache.page(pfn)));
        }
    }
}

/// Completion bookkeeping shared by the bios of one page.
struct PartState {
    /// Bios not yet completed.
    left: AtomicU32,
    /// Nonzero once any bio failed.
    failed: AtomicU32,
}

impl PartState {
    fn new(parts: usize) -> Arc<PartState> {
        Arc::new(PartState {
            left: AtomicU32::new(u32::try_from(parts).unwrap_or(u32::MAX)),
            failed: AtomicU32::new(0),
        })
    }

    /// Records one finished part; true for the last one, which then sees every part's
    /// outcome (the AcqRel chain on `left` orders the earlier parts' `failed` stores and page
    /// data before the last part's loads).
    fn finish(&self, ok: bool) -> bool {
        if !ok {
            // Relaxed: published to the last part by the AcqRel below.
            self.failed.store(1, Ordering::Relaxed);
        }
        self.left.fetch_sub(1, Ordering::AcqRel) == 1
    }

    fn failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed) != 0
    }
}

/// readpage: submit the reads of the locked, not-uptodate `page`, one bio per contiguous
/// extent below i_size; the last completion sets PG_uptodate (or PG_error) and unlocks it.
/// The bytes past i_size are zeroed, as the kernel zeroes the tail of the EOF page.
///
/// The page is unlocked on return when nothing was submitted, errors included (the
/// readpage contract), so the caller's lock_page wait works either way.
///
/// Models: fs/buffer.c block_read_full_page() (v5.10).
pub fn block_read_full_page(
    map: &dyn BlockMap,
    cache: &Arc<PageCache>,
    page: &PageRef<'_>,
) -> Result<(), FsError> {
    let mut bios = Vec::new();
    let r = block_read_full_page_into(map, cache, page, &mut bios);
    map.queue().submit_batch(bios);
    r
}

/// [`block_read_full_page`] that leaves its bios in `bios` for the caller to submit (with
/// [`MpageRead`]'s, for a page it cannot add to its bio). Bytes no bio covers are zeroed here,
/// so the page needs no zeroing when it is allocated.
fn block_read_full_page_into(
    map: &dyn BlockMap,
    cache: &Arc<PageCache>,
    page: &PageRef<'_>,
    bios: &mut Vec<Bio>,
) -> Result<(), FsError> {
    let extents = match page_extents(map, page.index(), map.size()) {
        Ok(e) => e,
        Err(e) => {
            page.set_error();
            unlock_page(page.page());
            return Err(e);
        }
    };
    // No bio touches the gaps or the tail, so zero them now, before any completion can see
    // the page. A page the extents cover whole (every page of a file but its last) skips
    // the frame's data lock altogether.
    let covered: usize = extents.iter().map(|e| e.len).sum();
    if covered < PAGE_SIZE {
        page.with_data_mut(|d| {
            let mut at = 0;
            for e in &extents {
                if e.at > at {
                    d[at..e.at].fill(0);
                }
                at = at.max(e.at + e.len);
            }
            d[at..].fill(0);
        });
    }
    if extents.is_empty() {
        page.set_uptodate();
        unlock_page(page.page());
        return Ok(());
    }
    // A page read by one bio (every page of a file whose clusters are at least a page) needs
    // no count of parts: its bio is the last.
    let state = (extents.len() > 1).then(|| PartState::new(extents.len()));
    let pfn = page.pfn();
    for ext in extents {
        let (cache, state) = (Arc::clone(cache), state.clone());
        bios.push(Bio {
            op: BioOp::ReadInto {
                offset: ext.dev,
                buf: Box::new(PageSpan {
                    cache: Arc::clone(&cache),
                    pfn,
                    at: ext.at,
                    len: ext.len,
                }),
            },
            end_io: Box::new(move |r| {
                let p = cache.page(pfn);
                if let Err(e) = &r {
                    log::error!(
                        "buffer: read of {} bytes at {} failed: {e}",
                        ext.len,
                        ext.dev
                    );
                }
                let last = state.as_ref().is_none_or(|s| s.finish(r.is_ok()));
                if last {
                    if state.as_ref().map_or(r.is_err(), |s| s.failed()) {
                        p.set_error();
                    } else {
                        p.set_uptodate();
                    }
                    unlock_page(p);
                }
            }),
        });
    }
    Ok(())
}

/// Pages per multi-page bio: a readahead window of 64 pages (256 KiB) is one bio, which a
/// completion thread starts on while the next is built, and a writeback pass's pages go to
/// the queue 256 KiB at a time. The kernel's limit is BIO_MAX_PAGES (256); the
/// queue merges neighbouring bios up to its own request limit anyway.
const MPAGE_MAX_PAGES: usize = 64;

/// A readahead pass's reads being built. A whole page whose bytes continue the bio being built
/// on the device joins it; any other page (one whose blocks are split on the device, the page
/// at i_size, one the map cannot place) is read by bios of its own, as block_read_full_page
/// reads it. One bio per 64 pages instead of one per page: a read of 512 MiB made 131,072
/// bios, each with a boxed buffer, a boxed completion and two reference counts taken.
///
/// Dropping it submits what is built (so no page it took is left locked with no read coming);
/// [`MpageRead::finish`] says so at the call site.
///
/// Models: fs/mpage.c mpage_readahead() / do_mpage_readpage() / mpage_end_io() (v5.10): the
/// mapping found for one page is kept for the next (the kernel's map_bh), and a page that does
/// not fit the bio is "confused" and read the buffer-head way.
pub struct MpageRead<'a> {
    map: &'a dyn BlockMap,
    cache: &'a Arc<PageCache>,
    /// The last mapping found: file byte, its device byte, and how many bytes from there are
    /// contiguous on the device.
    mapped: Option<(u64, u64, u64)>,
    /// The bio being built: where it starts on the device, and its pages in order.
    run: Option<(u64, Vec<Pfn>)>,
    /// Built bios not yet submitted.
    bios: Vec<Bio>,
}

impl std::fmt::Debug for MpageRead<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MpageRead")
            .field("mapped", &self.mapped)
            .field("run", &self.run)
            .field("bios", &self.bios.len())
            .finish_non_exhaustive()
    }
}

impl<'a> MpageRead<'a> {
    /// Reads of pages of the file `map` maps, into frames of `cache`.
    pub fn new(map: &'a dyn BlockMap, cache: &'a Arc<PageCache>) -> Self {
        MpageRead {
            map,
            cache,
            mapped: None,
            run: None,
            bios: Vec::new(),
        }
    }

    /// Adds the locked, not-uptodate `page` (just added to the cache, frame not zeroed) to
    /// the reads; its completion sets PG_uptodate (or PG_error) and unlocks it. On an error
    /// the page is unlocked with PG_error and the error returned (the readpage contract);
    /// the pages added before it are still read.
    pub fn add(&mut self, page: &PageRef<'_>) -> Result<(), FsError> {
        let start = page.index() << PAGE_SHIFT;
        let Some(dev) = self.whole_page_on_device(start) else {
            // Confused: its own bios, after the run so far (device order helps the merge).
            self.close_run();
            let r = block_read_full_page_into(self.map, self.cache, page, &mut self.bios);
            if self.bios.len() >= MPAGE_MAX_PAGES {
                self.submit();
            }
            return r;
        };
        match &mut self.run {
            Some((first, pfns)) if *first + (pfns.len() * PAGE_SIZE) as u64 == dev => {
                pfns.push(page.pfn());
            }
            _ => {
                self.close_run();
                let mut pfns = Vec::with_capacity(MPAGE_MAX_PAGES);
                pfns.push(page.pfn());
                self.run = Some((dev, pfns));
            }
        }
        if self
            .run
            .as_ref()
            .is_some_and(|(_, p)| p.len() >= MPAGE_MAX_PAGES)
        {
            self.close_run();
            self.submit();
        }
        Ok(())
    }

    /// Submits everything built so far.
    pub fn finish(self) {}

    /// The device byte of file byte `start` when the whole page from there is below i_size
    /// and contiguous on the device; `None` for a page that must be read piece by piece (or
    /// whose mapping fails, which block_read_full_page then reports on the page).
    fn whole_page_on_device(&mut self, start: u64) -> Option<u64> {
        let end = start + PAGE_SIZE as u64;
        if end > self.map.size() {
            return None;
        }
        let known = self
            .mapped
            .filter(|&(file, _, len)| start >= file && end <= file + len);
        let (file, dev, len) = match known {
            Some(m) => m,
            None => {
                let (dev, len) = self.map.map(start).ok().flatten()?;
                self.mapped = Some((start, dev, len));
                (start, dev, len)
            }
        };
        (end <= file + len).then_some(dev + (start - file))
    }

    /// Turns the run being built into a bio.
    fn close_run(&mut self) {
        let Some((dev, pfns)) = self.run.take() else {
            return;
        };
        let cache = Arc::clone(self.cache);
        let done = pfns.clone();
        self.bios.push(Bio {
            op: BioOp::ReadInto {
                offset: dev,
                buf: Box::new(PageRun {
                    cache: Arc::clone(&cache),
                    pfns,
                }),
            },
            end_io: Box::new(move |r| {
                if let Err(e) = &r {
                    log::error!("buffer: read of {} pages at {dev} failed: {e}", done.len());
                }
                for pfn in done {
                    let p = cache.page(pfn);
                    if r.is_ok() {
                        p.set_uptodate();
                    } else {
                        p.set_error();
                    }
                    unlock_page(p);
                }
            }),
        });
    }

    fn submit(&mut self) {
        self.map
            .queue()
            .submit_batch(std::mem::take(&mut self.bios));
    }
}

impl Drop for MpageRead<'_> {
    fn drop(&mut self) {
        self.close_run();
        self.submit();
    }
}

/// writepage: write the locked, just-cleaned `page` through `map`.
///
/// A page wholly past i_size belongs to a truncate in progress: it is unlocked and left
/// (the kernel does the same). A page straddling i_size has its tail zeroed and is written up
/// to i_size rounded to a block. Otherwise PG_writeback is set under the page lock, the page
/// unlocked, and one write bio per contiguous extent submitted; the last completion ends the
/// writeback, recording a failure on the page and the mapping (AS_EIO) first.
///
/// Models: fs/buffer.c block_write_full_page() / __block_write_full_page() (v5.10).
pub fn block_write_full_page(
    map: &dyn BlockMap,
    mapping: &AddressSpace,
    page: &PageRef<'_>,
    _wbc: &mut WritebackControl,
) -> Result<(), FsError> {
    let start = page.index() << PAGE_SHIFT;
    let Some((in_page, len)) = write_len(map, start, map.size()) else {
        unlock_page(page.page());
        return Ok(());
    };
    if in_page < PAGE_SIZE {
        // Bytes past i_size are written as zeros: a stale tail must not reach the disk.
        page.with_data_mut(|d| d[in_page..].fill(0));
    }
    let extents = match page_extents(map, page.index(), start + len as u64) {
        Ok(e) => e,
        Err(e) => {
            page.set_error();
            mapping.cache().set_mapping_error(mapping.id(), &e);
            unlock_page(page.page());
            return Err(e);
        }
    };
    set_page_writeback(page.page());
    // The bios write from the frame (see `FrameRun`): a redirty before the device reads it
    // (write_begin does not wait for writeback) goes out with this I/O and again with the
    // next pass, as in the kernel without stable pages.
    let bufs: Vec<(Extent, FrameRun)> = extents
        .iter()
        .map(|e| {
            let mut run = FrameRun::new(mapping.cache(), 1);
            run.push(page, e.at..e.at + e.len);
            (*e, run)
        })
        .collect();
    unlock_page(page.page());
    // One bio (the usual case): its completion is the last, no count of parts needed.
    let state = (bufs.len() > 1).then(|| PartState::new(bufs.len()));
    let (pfn, mapping_id) = (page.pfn(), mapping.id());
    for (ext, run) in bufs {
        let (cache, state) = (Arc::clone(mapping.cache()), state.clone());
        map.queue().submit(Bio {
            op: BioOp::WriteFrom {
                offset: ext.dev,
                buf: Box::new(run),
            },
            end_io: Box::new(move |r| {
                let ok = match r {
                    Ok(_) => true,
                    Err(e) => {
                        log::error!(
                            "buffer: write of {} bytes at {} failed: {e}",
                            ext.len,
                            ext.dev
                        );
                        cache.set_mapping_error(mapping_id, &e);
                        false
                    }
                };
                if state.as_ref().is_none_or(|s| s.finish(ok)) {
                    let p = cache.page(pfn);
                    if state.as_ref().map_or(!ok, |s| s.failed()) {
                        p.set_error();
                    }
                    end_page_writeback(p);
                }
            }),
        });
    }
    Ok(())
}

/// For the page starting at file byte `start` of a file of `size` bytes: how many of its bytes
/// lie below `size`, and how many a write of it covers (those, to the end of their block);
/// `None` for a page wholly past `size`.
fn write_len(map: &dyn BlockMap, start: u64, size: u64) -> Option<(usize, usize)> {
    if start >= size {
        return None;
    }
    // Both at most a page, so the casts cannot truncate.
    let in_page = (size - start).min(PAGE_SIZE as u64);
    let bs = map.block_size().max(1);
    let len = in_page
        .div_ceil(bs)
        .saturating_mul(bs)
        .min(PAGE_SIZE as u64);
    Some((in_page as usize, len as usize))
}

/// mpage_writepages: a writepages pass whose pages go out as multi-page bios. A page whose
/// bytes up to i_size (rounded to a block) are contiguous on the device joins the bio being
/// built when they continue it there; any other page ("confused": split on the device, past
/// i_size, unmappable) is written by [`block_write_full_page`] after the bio so far is
/// submitted, as the kernel hands it to the mapping's writepage. A bio ends at
/// [`MPAGE_MAX_PAGES`] pages, at a break on the device and after the page at i_size; the rest
/// are submitted when the pass ends, so a caller's plug still sees them together.
///
/// One bio per 64 pages instead of one per page: writing back 512 MiB made 131,072 bios, each
/// with its own buffer, boxed completion and reference count.
///
/// Models: fs/mpage.c mpage_writepages() / __mpage_writepage() / mpage_end_io() (v5.10). The
/// device mapping is looked up afresh for every page under its lock, as the kernel asks
/// get_block per page (a mapping kept across pages could name clusters a truncate has freed
/// since). Failure is per bio, as in the kernel: every page of a failed bio gets PG_error.
pub fn mpage_writepages(
    map: &dyn BlockMap,
    mapping: &AddressSpace,
    wbc: &mut WritebackControl,
) -> Result<(), FsError> {
    let mut mpd = MpageWrite {
        map,
        mapping,
        run: None,
    };
    write_cache_pages(mapping, wbc, &mut |m, page, wbc| {
        mpd.writepage(m, page, wbc)
    })
    // `mpd` is dropped here, which submits the last bio.
}

/// The bio a writepages pass is building (the kernel's mpage_data).
struct MpageWrite<'a> {
    map: &'a dyn BlockMap,
    mapping: &'a AddressSpace,
    run: Option<WriteRun>,
}

/// Pages under writeback whose bytes follow one another on the device from `dev` on.
struct WriteRun {
    dev: u64,
    frames: FrameRun,
}

impl MpageWrite<'_> {
    /// __mpage_writepage for the locked, just-cleaned `page`.
    fn writepage(
        &mut self,
        mapping: &AddressSpace,
        page: &PageRef<'_>,
        wbc: &mut WritebackControl,
    ) -> Result<(), FsError> {
        let size = self.map.size();
        let start = page.index() << PAGE_SHIFT;
        let Some((dev, in_page, len)) = self.whole_on_device(start, size) else {
            // Confused: the bio so far first, so the device sees the writes in page order.
            self.submit();
            return block_write_full_page(self.map, mapping, page, wbc);
        };
        let joins = self
            .run
            .as_ref()
            .is_some_and(|r| r.dev + r.frames.len() as u64 == dev);
        if !joins {
            self.submit();
        }
        let run = self.run.get_or_insert_with(|| {
            // Room for a bio's worth of pages, never past i_size: a few bytes a page.
            let to_eof = (size - start).div_ceil(PAGE_SIZE as u64);
            let room = usize::try_from(to_eof).map_or(MPAGE_MAX_PAGES, |n| n.min(MPAGE_MAX_PAGES));
            WriteRun {
                dev,
                frames: FrameRun::new(mapping.cache(), room),
            }
        });
        if in_page < PAGE_SIZE {
            // Bytes past i_size are written as zeros: a stale tail must not reach the disk.
            page.with_data_mut(|d| d[in_page..].fill(0));
        }
        set_page_writeback(page.page());
        run.frames.push(page, 0..len);
        unlock_page(page.page());
        if len < PAGE_SIZE || run.frames.segs.len() >= MPAGE_MAX_PAGES {
            // The page at i_size ends its bio (the next block on the device is not the next
            // page's), as does a full one.
            self.submit();
        }
        Ok(())
    }

    /// For a page starting at file byte `start` that lies (partly) below `size` and whose
    /// bytes up to `size` rounded to a block are contiguous on the device: the device byte
    /// it starts at, how many of its bytes are below `size`, and how many to write.
    fn whole_on_device(&self, start: u64, size: u64) -> Option<(u64, usize, usize)> {
        let (in_page, len) = write_len(self.map, start, size)?;
        let (dev, run) = self.map.map(start).ok().flatten()?;
        (run >= len as u64).then_some((dev, in_page, len))
    }

    /// Submits the bio being built: its completion ends the writeback of every page in it,
    /// with PG_error on each (and the error on the mapping) if it failed, as page_endio does.
    fn submit(&mut self) {
        let Some(WriteRun { dev, frames }) = self.run.take() else {
            return;
        };
        // The completion's own list: the frames' references are gone by the time it runs.
        let pfns: Vec<Pfn> = frames.segs.iter().map(|(pfn, _)| *pfn).collect();
        let (cache, mapping_id) = (Arc::clone(self.mapping.cache()), self.mapping.id());
        self.map.queue().submit(Bio {
            op: BioOp::WriteFrom {
                offset: dev,
                buf: Box::new(frames),
            },
            end_io: Box::new(move |r| {
                if let Err(e) = &r {
                    log::error!("buffer: write of {} pages at {dev} failed: {e}", pfns.len());
                    cache.set_mapping_error(mapping_id, e);
                }
                for pfn in pfns {
                    let p = cache.page(pfn);
                    if r.is_err() {
                        p.set_error();
                    }
                    end_page_writeback(p);
                }
            }),
        });
    }
}

impl Drop for MpageWrite<'_> {
    fn drop(&mut self) {
        // Every page in the run is under writeback: its bio must go out, or the writeback
        // would never end.
        self.submit();
    }
}

/// block_write_begin: page `pos >> PAGE_SHIFT`, locked, uptodate, with every block under
/// `[pos, pos + len)` allocated. Never waits for writeback on the page.
///
/// Models: fs/buffer.c block_write_begin() / __block_write_begin() (v5.10).
fn block_write_begin<'m>(
    map: &dyn BlockMap,
    mapping: &'m AddressSpace,
    pos: u64,
    len: usize,
    allocated: &mut u64,
) -> Result<PageRef<'m>, FsError> {
    let index = pos >> PAGE_SHIFT;
    let page = grab_cache_page_write_begin(mapping, index)?;
    // Allocate before reading, as __block_write_begin maps the buffers first; a failure
    // leaves the page as it was (unlocked), and nothing was allocated (allocation is
    // all-or-nothing).
    if let Err(e) = map.allocate(allocated, pos + len as u64) {
        unlock_page(page.page());
        return Err(e);
    }
    let whole = pos & (PAGE_SIZE as u64 - 1) == 0 && len == PAGE_SIZE;
    if page.uptodate() || whole {
        return Ok(page);
    }
    // A partial write of a page not in memory: read what is below i_size (the rest reads as
    // zeros), then take the lock back. The caller holds the inode lock, so no truncate can
    // take the page meanwhile; reclaim cannot either while we hold our reference.
    page.clear_error();
    block_read_full_page(map, mapping.cache(), &page)?;
    lock_page(page.page());
    if !page.uptodate() {
        unlock_page(page.page());
        return Err(FsError::Io(std::io::Error::from_raw_os_error(libc::EIO)));
    }
    Ok(page)
}

/// block_write_end + generic_write_end: after `copied` bytes were copied into the page at
/// `pos`, mark it uptodate and dirty, grow i_size under the page lock if the write passed it,
/// unlock. Returns whether i_size grew (the inode then needs writing).
///
/// Models: fs/buffer.c block_write_end() / generic_write_end() (v5.10).
pub fn write_end(
    map: &dyn BlockMap,
    mapping: &AddressSpace,
    pos: u64,
    copied: usize,
    page: PageRef<'_>,
) -> bool {
    if copied > 0 {
        // A whole-page copy into a page never read makes it uptodate; a partial one found it
        // uptodate already (write_begin read it).
        page.set_uptodate();
        set_page_dirty(mapping, page.page());
    }
    let end = pos + copied as u64;
    // i_size moves while the page lock is held, so a writepage of this page (which takes
    // the lock) never sees new data with the old size and drops its tail.
    let grew = end > map.size();
    if grew {
        map.set_size(end);
    }
    unlock_page(page.page());
    grew
}

/// cont_write_begin: zero-fill from the allocated end (`*allocated`, mmu_private) up to
/// `pos`, then return page `pos >> PAGE_SHIFT` locked with `[pos, pos + len)` allocated.
///
/// # Context
/// The caller holds the inode's lock (i_rwsem), which also guards `*allocated`.
///
/// Models: fs/buffer.c cont_write_begin() (v5.10).
pub fn cont_write_begin<'m>(
    map: &dyn BlockMap,
    mapping: &'m AddressSpace,
    pos: u64,
    len: usize,
    allocated: &mut u64,
) -> Result<PageRef<'m>, FsError> {
    cont_expand_zero(map, mapping, pos, allocated)?;
    let bs = map.block_size().max(1);
    if pos + len as u64 > *allocated && *allocated % bs != 0 {
        // The rest of the last allocated block is already ours: start the new data's blocks
        // at the next boundary, as the kernel rounds mmu_private up here.
        *allocated = allocated.div_ceil(bs) * bs;
    }
    block_write_begin(map, mapping, pos, len, allocated)
}

/// Zero-fills `[*allocated, pos)` page by page through write_begin / write_end, dirtying
/// each page and growing i_size as it goes; nothing waits for writeback.
///
/// Models: fs/buffer.c cont_expand_zero() (v5.10).
fn cont_expand_zero(
    map: &dyn BlockMap,
    mapping: &AddressSpace,
    pos: u64,
    allocated: &mut u64,
) -> Result<(), FsError> {
    let page_mask = PAGE_SIZE as u64 - 1;
    let bs = map.block_size().max(1);
    let index = pos >> PAGE_SHIFT;
    // Whole pages from the allocated end to the page before `pos`'s.
    while index > *allocated >> PAGE_SHIFT {
        let cur = *allocated;
        let zerofrom = (cur & page_mask) as usize;
        if cur % bs != 0 {
            *allocated = cur.div_ceil(bs) * bs;
        }
        let len = PAGE_SIZE - zerofrom;
        zero_range(map, mapping, cur, len, allocated)?;
    }
    // The page holding both the allocated end and `pos`: zero the gap between them.
    if index == *allocated >> PAGE_SHIFT {
        let cur = *allocated;
        let zerofrom = (cur & page_mask) as usize;
        let offset = (pos & page_mask) as usize;
        if offset <= zerofrom {
            return Ok(());
        }
        if cur % bs != 0 {
            *allocated = cur.div_ceil(bs) * bs;
        }
        zero_range(map, mapping, cur, offset - zerofrom, allocated)?;
    }
    Ok(())
}

/// One step of cont_expand_zero: `len` zero bytes written at `pos` through the write path.
fn zero_range(
    map: &dyn BlockMap,
    mapping: &AddressSpace,
    pos: u64,
    len: usize,
    allocated: &mut u64,
) -> Result<(), FsError> {
    let page = block_write_begin(map, mapping, pos, len, allocated)?;
    let at = (pos & (PAGE_SIZE as u64 - 1)) as usize;
    page.with_data_mut(|d| d[at..at + len].fill(0));
    write_end(map, mapping, pos, len, page);
    balance_dirty_pages_ratelimited(mapping);
    Ok(())
}

/// generic_cont_expand_simple: grow the file to `size`, zero-filled through the page cache.
/// Returns with i_size = `size`; the pages are dirty, nothing is written yet.
///
/// Models: fs/buffer.c generic_cont_expand_simple() (v5.10).
pub fn generic_cont_expand_simple(
    map: &dyn BlockMap,
    mapping: &AddressSpace,
    size: u64,
    allocated: &mut u64,
) -> Result<(), FsError> {
    let page = cont_write_begin(map, mapping, size, 0, allocated)?;
    write_end(map, mapping, size, 0, page);
    Ok(())
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::bug::OnBug;
    use crate::dev::{BlockDevice, MemDevice};
    use crate::mm::filemap::{
        add_new_page, filemap_fdatawait_range, filemap_fdatawrite_range, find_get_page,
    };
    use crate::mm::writeback::WritebackControl;
    use crate::mm::{AddressSpaceOps, CacheConfig, Era};
    use crate::sync::Mutex;

    /// A file laid out in fixed 512-byte blocks, block `i` at device byte
    /// `base + stride * i * 512`: with stride 2 every other block, so no two are contiguous
    /// and every page splits into 8 extents; with stride 1 contiguous, a page one extent.
    /// Blocks from `break_at` on lie a further [`BREAK_GAP`] bytes on: the device run ends
    /// there.
    struct Striped {
        queue: Arc<IoQueue>,
        base: u64,
        stride: u64,
        break_at: u64,
        blocks: Mutex<u64>,
        size: crate::sync::AtomicU64,
        cap: u64,
    }

    /// How far the blocks from `Striped::break_at` on are moved.
    const BREAK_GAP: u64 = 8192;

    impl BlockMap for Striped {
        fn map(&self, offset: u64) -> Result<Option<(u64, u64)>, FsError> {
            let b = offset / 512;
            let blocks = *self.blocks.lock();
            if b >= blocks {
                return Ok(None);
            }
            let gap = if b >= self.break_at { BREAK_GAP } else { 0 };
            // Contiguous: the run goes to the break or the last allocated block.
            let run_end = if b < self.break_at {
                blocks.min(self.break_at)
            } else {
                blocks
            };
            Ok(Some((
                self.base + gap + self.stride * b * 512 + offset % 512,
                if self.stride == 1 {
                    (run_end - b) * 512 - offset % 512
                } else {
                    512 - offset % 512
                },
            )))
        }
        fn allocate(&self, allocated: &mut u64, end: u64) -> Result<(), FsError> {
            let want = end.div_ceil(512);
            if want > self.cap {
                return Err(FsError::NoSpace);
            }
            let mut blocks = self.blocks.lock();
            *blocks = (*blocks).max(want);
            *allocated = (*allocated).max(want * 512);
            Ok(())
        }
        fn size(&self) -> u64 {
            self.size.load(Ordering::Acquire)
        }
        fn set_size(&self, size: u64) {
            self.size.store(size, Ordering::Release);
        }
        fn block_size(&self) -> u64 {
            512
        }
        fn queue(&self) -> &Arc<IoQueue> {
            &self.queue
        }
    }

    /// The file's operations: writepages is generic_writepages (a page at a time) or, with
    /// `mpage`, [`mpage_writepages`].
    struct Aops(Arc<Striped>, bool);

    impl AddressSpaceOps for Aops {
        fn writepage(
            &self,
            mapping: &AddressSpace,
            page: &PageRef<'_>,
            wbc: &mut WritebackControl,
        ) -> Result<(), FsError> {
            block_write_full_page(&*self.0, mapping, page, wbc)
        }

        fn writepages(
            &self,
            mapping: &AddressSpace,
            wbc: &mut WritebackControl,
        ) -> Result<(), FsError> {
            if self.1 {
                mpage_writepages(&*self.0, mapping, wbc)
            } else {
                crate::mm::writeback::generic_writepages(mapping, wbc)
            }
        }
    }

    struct Fixture {
        dev: Arc<MemDevice>,
        map: Arc<Striped>,
        mapping: AddressSpace,
    }

    fn fixture() -> Fixture {
        fixture_with(2)
    }

    fn fixture_with(stride: u64) -> Fixture {
        fixture_sized(stride, 32, 200, u64::MAX)
    }

    /// A cache of `frames`, a file of at most `cap` blocks, its device run broken at block
    /// `break_at`.
    fn fixture_sized(stride: u64, frames: usize, cap: u64, break_at: u64) -> Fixture {
        fixture_aops(stride, frames, cap, break_at, false)
    }

    /// As [`fixture_sized`], written back by [`mpage_writepages`] when `mpage`.
    fn fixture_aops(stride: u64, frames: usize, cap: u64, break_at: u64, mpage: bool) -> Fixture {
        let dev = Arc::new(MemDevice::new(1 << 20));
        let queue = Arc::new(IoQueue::new(dev.clone(), 2, Duration::ZERO).expect("queue"));
        let cfg = CacheConfig {
            on_bug: OnBug::Panic,
            ..CacheConfig::new(Era::V5_11, frames)
        };
        let cache = PageCache::new(cfg).expect("cache");
        let map = Arc::new(Striped {
            queue,
            base: 4096,
            stride,
            break_at,
            blocks: Mutex::new(0),
            size: crate::sync::AtomicU64::new(0),
            cap,
        });
        let mapping = AddressSpace::new(&cache, Arc::new(Aops(Arc::clone(&map), mpage)));
        Fixture { dev, map, mapping }
    }

    impl Fixture {
        fn write(&self, pos: u64, data: &[u8], allocated: &mut u64) -> Result<(), FsError> {
            let mut done = 0;
            while done < data.len() {
                let p = pos + done as u64;
                let at = (p & (PAGE_SIZE as u64 - 1)) as usize;
                let n = (PAGE_SIZE - at).min(data.len() - done);
                let page = cont_write_begin(&*self.map, &self.mapping, p, n, allocated)?;
                page.with_data_mut(|d| d[at..at + n].copy_from_slice(&data[done..done + n]));
                write_end(&*self.map, &self.mapping, p, n, page);
                done += n;
            }
            Ok(())
        }

        fn sync(&self) {
            filemap_fdatawrite_range(&self.mapping, 0, u64::MAX).expect("write");
            filemap_fdatawait_range(&self.mapping, 0, u64::MAX).expect("wait");
        }

        /// File bytes `[0, len)` as the device holds them.
        fn on_device(&self, len: u64) -> Vec<u8> {
            let snap = self.dev.snapshot();
            (0..len)
                .map(|o| {
                    let (dev, _) = self.map.map(o).expect("map").expect("mapped");
                    snap[dev as usize]
                })
                .collect()
        }
    }

    #[test]
    fn a_write_past_the_end_zero_fills_the_gap_and_reaches_the_device() {
        let f = fixture();
        let mut allocated = 0;
        f.write(0, b"head", &mut allocated).expect("first write");
        assert_eq!(f.map.size(), 4);
        assert_eq!(allocated, 512, "one block mapped");
        // A write at 9000 must zero [4, 9000) through two more pages.
        f.dev
            .write_at(4096, &[0xAA; 64 * 1024])
            .expect("stale bytes");
        f.write(9000, b"tail", &mut allocated)
            .expect("second write");
        assert_eq!(f.map.size(), 9004);
        assert_eq!(allocated, 9216, "blocks up to the one holding byte 9003");
        f.sync();
        let got = f.on_device(9004);
        assert_eq!(&got[..4], b"head");
        assert!(got[4..9000].iter().all(|b| *b == 0), "the gap reads zero");
        assert_eq!(&got[9000..], b"tail");
    }

    #[test]
    fn expansion_grows_the_size_and_dirties_every_page_of_the_gap() {
        let f = fixture();
        let mut allocated = 0;
        f.write(0, b"x", &mut allocated).expect("write");
        generic_cont_expand_simple(
            &*f.map,
            &f.mapping,
            3 * PAGE_SIZE as u64 + 7,
            &mut allocated,
        )
        .expect("expand");
        assert_eq!(f.map.size(), 3 * PAGE_SIZE as u64 + 7);
        for index in 0..4 {
            let page = find_get_page(&f.mapping, index).expect("cached");
            assert!(page.dirty() && page.uptodate(), "page {index}");
        }
        f.sync();
        let got = f.on_device(f.map.size());
        assert_eq!(got[0], b'x');
        assert!(got[1..].iter().all(|b| *b == 0));
    }

    #[test]
    fn a_partial_write_to_an_uncached_page_reads_the_rest_first() {
        let f = fixture();
        let mut allocated = 0;
        let data: Vec<u8> = (0..5000u32).map(|i| (i % 253) as u8).collect();
        f.write(0, &data, &mut allocated).expect("write");
        f.sync();
        // Drop the cache's copy, then overwrite three bytes in the middle of page 0.
        crate::mm::truncate::truncate_pagecache(&f.mapping, 0);
        f.write(100, b"new", &mut allocated).expect("overwrite");
        f.sync();
        let mut want = data.clone();
        want[100..103].copy_from_slice(b"new");
        assert_eq!(f.on_device(5000), want);
    }

    /// A fixture whose file is two pages of 7s, dirty in the cache.
    fn two_pages_of_sevens(stride: u64) -> Fixture {
        let f = fixture_with(stride);
        let mut allocated = 0;
        f.write(0, &[7; 2 * PAGE_SIZE], &mut allocated)
            .expect("write");
        f
    }

    #[test]
    fn a_failed_write_marks_its_page_and_the_mapping_whether_one_bio_or_many() {
        for stride in [1, 2] {
            let f = two_pages_of_sevens(stride);
            // One block of page 0 fails: with stride 1 its only bio, with stride 2 one of 8.
            let (dev, _) = f.map.map(1024).expect("map").expect("mapped");
            f.dev.fail_writes(dev, dev + 512);
            filemap_fdatawrite_range(&f.mapping, 0, u64::MAX).expect("writeback started");
            // Waited for page by page: fdatawait would clear the PG_error it reports.
            let p0 = find_get_page(&f.mapping, 0).expect("page 0");
            let p1 = find_get_page(&f.mapping, 1).expect("page 1");
            crate::mm::writeback::wait_on_page_writeback(p0.page());
            crate::mm::writeback::wait_on_page_writeback(p1.page());
            assert!(p0.error() && !p1.error(), "stride {stride}");
            let e = filemap_fdatawait_range(&f.mapping, 0, u64::MAX)
                .expect_err("the mapping's error reaches fdatawait");
            assert_eq!(e.errno(), libc::EIO, "stride {stride}");
        }
    }

    #[test]
    fn a_failed_read_leaves_its_page_not_uptodate_with_pg_error_whether_one_bio_or_many() {
        for stride in [1, 2] {
            let f = two_pages_of_sevens(stride);
            f.sync();
            crate::mm::truncate::truncate_pagecache(&f.mapping, 0);
            let (dev, _) = f.map.map(3072).expect("map").expect("mapped");
            f.dev.fail_reads(dev, dev + 512);
            let cache = Arc::clone(f.mapping.cache());
            let read = |i| {
                crate::mm::filemap::read_cache_page(&f.mapping, i, |p| {
                    block_read_full_page(&*f.map, &cache, p)
                })
            };
            let e = read(0).expect_err("page 0's read fails");
            assert_eq!(e.errno(), libc::EIO, "stride {stride}");
            let p0 = find_get_page(&f.mapping, 0).expect("page 0 stays cached");
            assert!(
                p0.error() && !p0.uptodate() && !p0.locked(),
                "stride {stride}"
            );
            let p1 = read(1).expect("page 1 reads");
            assert!(p1.uptodate() && p1.with_data(|d| d.iter().all(|b| *b == 7)));
            crate::mm::waitqueue::unlock_page(p1.page());
        }
    }

    /// Writes `pages` pages and a 100-byte tail of numbered bytes through `f`, writes them
    /// back, and returns the bytes and a mapping of the same file with nothing cached.
    fn written_and_uncached(f: &Fixture, pages: usize) -> (Vec<u8>, AddressSpace) {
        let (data, _) = written_back(f, pages);
        let fresh = AddressSpace::new(f.mapping.cache(), Arc::new(Aops(Arc::clone(&f.map), false)));
        (data, fresh)
    }

    /// Reads every page of `fresh` through one [`MpageRead`]; returns the bios it took.
    fn mpage_read_all(f: &Fixture, fresh: &AddressSpace, pages: u64) -> u64 {
        f.map.queue.drain();
        let before = f.map.queue.completed();
        let mut reads = MpageRead::new(&*f.map, fresh.cache());
        for i in 0..pages {
            let page = add_new_page(fresh, i)
                .expect("a frame")
                .expect("not cached");
            reads.add(&page).expect("add");
        }
        reads.finish();
        f.map.queue.drain();
        f.map.queue.completed() - before
    }

    /// Every page of `fresh` is uptodate, unlocked and holds its part of `data`.
    fn assert_read_back(fresh: &AddressSpace, data: &[u8], what: &str) {
        for (i, want) in data.chunks(PAGE_SIZE).enumerate() {
            let p = find_get_page(fresh, i as u64).expect("cached");
            crate::mm::waitqueue::lock_page(p.page());
            assert!(p.uptodate() && !p.error(), "{what}: page {i}");
            p.with_data(|d| {
                assert_eq!(&d[..want.len()], want, "{what}: page {i}'s bytes");
                assert!(d[want.len()..].iter().all(|&b| b == 0), "{what}: tail {i}");
            });
            crate::mm::waitqueue::unlock_page(p.page());
        }
    }

    #[test]
    fn readahead_reads_pages_contiguous_on_the_device_as_one_bio_each_run() {
        // 70 whole pages and a tail; the device run breaks after page 66.
        let f = fixture_sized(1, 256, 1200, 66 * 8);
        let (data, fresh) = written_and_uncached(&f, 70);
        let bios = mpage_read_all(&f, &fresh, 71);
        // Pages 0-63 (a full bio), 64-65 (up to the break), 66-69, and the tail page read
        // the buffer-head way (one extent): four, where a bio per page made 71.
        assert_eq!(bios, 4);
        assert_read_back(&fresh, &data, "contiguous");
    }

    #[test]
    fn readahead_reads_pages_split_on_the_device_piece_by_piece() {
        // Every 512-byte block apart from the next: each page is read in eight pieces.
        let f = fixture_sized(2, 64, 1200, u64::MAX);
        let (data, fresh) = written_and_uncached(&f, 5);
        assert_eq!(mpage_read_all(&f, &fresh, 6), 5 * 8 + 1);
        assert_read_back(&fresh, &data, "striped");
    }

    #[test]
    fn a_failed_multi_page_read_fails_every_page_of_its_bio_and_unlocks_them() {
        let f = fixture_sized(1, 64, 1200, u64::MAX);
        let (_, fresh) = written_and_uncached(&f, 8);
        let (dev, _) = f.map.map(5 * 4096).expect("map").expect("mapped");
        f.dev.fail_reads(dev, dev + 512);
        assert_eq!(
            mpage_read_all(&f, &fresh, 9),
            2,
            "one bio of eight, and the tail"
        );
        for i in 0..8 {
            let p = find_get_page(&fresh, i).expect("cached");
            assert!(p.error() && !p.uptodate() && !p.locked(), "page {i}");
        }
        let tail = find_get_page(&fresh, 8).expect("cached");
        assert!(tail.uptodate() && !tail.locked());
    }

    /// Writes `pages` pages and a 100-byte tail of numbered bytes through `f` and writes
    /// them back; returns the bytes and the bios the writeback took.
    fn written_back(f: &Fixture, pages: usize) -> (Vec<u8>, u64) {
        let data: Vec<u8> = (0..pages * PAGE_SIZE + 100)
            .map(|i| (i % 251) as u8)
            .collect();
        let mut allocated = 0;
        f.write(0, &data, &mut allocated).expect("write");
        f.map.queue.drain();
        let before = f.map.queue.completed();
        f.sync();
        f.map.queue.drain();
        (data, f.map.queue.completed() - before)
    }

    #[test]
    fn writeback_writes_pages_contiguous_on_the_device_as_one_bio_each_run() {
        // 70 whole pages and a tail; the device run breaks after page 66.
        let f = fixture_aops(1, 256, 1200, 66 * 8, true);
        let (data, bios) = written_back(&f, 70);
        // Pages 0-63 (a full bio), 64-65 (up to the break), 66-69 with the tail page (its
        // block up to i_size continues the run and ends it): three, where a bio per page
        // made 71.
        assert_eq!(bios, 3);
        assert_eq!(f.on_device(data.len() as u64), data);
        for i in 0..71 {
            let p = find_get_page(&f.mapping, i).expect("cached");
            assert!(
                !p.dirty() && !p.writeback() && !p.locked() && !p.error(),
                "page {i}"
            );
        }
        // The tail page's bytes past i_size went out as zeros, up to its block's end.
        let (dev, _) = f.map.map(70 * 4096).expect("map").expect("mapped");
        let snap = f.dev.snapshot();
        assert!(
            snap[dev as usize + 100..dev as usize + 512]
                .iter()
                .all(|&b| b == 0)
        );
    }

    #[test]
    fn writeback_writes_pages_split_on_the_device_piece_by_piece() {
        // Every 512-byte block apart from the next: each page is confused and written in
        // eight pieces by block_write_full_page, the tail page in one.
        let f = fixture_aops(2, 64, 1200, u64::MAX, true);
        let (data, bios) = written_back(&f, 5);
        assert_eq!(bios, 5 * 8 + 1);
        assert_eq!(f.on_device(data.len() as u64), data);
    }

    #[test]
    fn a_failed_multi_page_write_fails_every_page_of_its_bio_and_ends_their_writeback() {
        let f = fixture_aops(1, 64, 1200, u64::MAX, true);
        let mut allocated = 0;
        f.write(0, &[7; 8 * PAGE_SIZE], &mut allocated)
            .expect("write");
        let (dev, _) = f.map.map(5 * 4096).expect("map").expect("mapped");
        f.dev.fail_writes(dev, dev + 512);
        filemap_fdatawrite_range(&f.mapping, 0, u64::MAX).expect("writeback started");
        // Waited for page by page: fdatawait would clear the PG_error it reports.
        for i in 0..8 {
            let p = find_get_page(&f.mapping, i).expect("cached");
            crate::mm::writeback::wait_on_page_writeback(p.page());
            assert!(p.error() && !p.writeback() && !p.locked(), "page {i}");
        }
        let e = filemap_fdatawait_range(&f.mapping, 0, u64::MAX)
            .expect_err("the mapping's error reaches fdatawait");
        assert_eq!(e.errno(), libc::EIO);
    }

    #[test]
    fn writeback_pins_each_frame_while_the_device_reads_it_and_no_longer() {
        // Contiguous (one multi-page bio) and split on the device (block_write_full_page, a
        // bio per extent, each with its own reference).
        for (stride, refs_in_flight) in [(1, 1), (2, 8)] {
            let f = fixture_aops(stride, 64, 1200, u64::MAX, true);
            let mut allocated = 0;
            let data: Vec<u8> = (0..4 * PAGE_SIZE).map(|i| (i % 253) as u8).collect();
            f.write(0, &data, &mut allocated).expect("write");
            let pages: Vec<_> = (0..4)
                .map(|i| find_get_page(&f.mapping, i).expect("cached"))
                .collect();
            let idle: Vec<u32> = pages.iter().map(|p| p.refcount()).collect();
            f.map.queue.plug();
            filemap_fdatawrite_range(&f.mapping, 0, u64::MAX).expect("writeback started");
            for (p, &n) in pages.iter().zip(&idle) {
                assert!(p.writeback() && !p.locked());
                assert_eq!(p.refcount(), n + refs_in_flight, "stride {stride}: pinned");
            }
            // Written after the writeback started, before the device read it: the device gets
            // the frame as it is then (no copy was taken), and the page is dirty again.
            let page = pages[1].get();
            lock_page(page.page());
            page.with_data_mut(|d| d[..4].copy_from_slice(b"late"));
            set_page_dirty(&f.mapping, page.page());
            unlock_page(page.page());
            drop(page);
            f.map.queue.unplug();
            // Every completion returned: end_page_writeback (v5.11) holds a reference of its
            // own across the clear and the wake, so a woken waiter can still see it.
            f.map.queue.drain();
            for (p, &n) in pages.iter().zip(&idle) {
                assert!(!p.writeback());
                assert_eq!(p.refcount(), n, "stride {stride}: given back");
            }
            let mut want = data.clone();
            want[PAGE_SIZE..PAGE_SIZE + 4].copy_from_slice(b"late");
            assert_eq!(f.on_device(want.len() as u64), want, "stride {stride}");
            assert!(pages[1].dirty());
        }
    }

    #[test]
    fn writeback_zeroes_the_tail_of_the_page_at_the_size_and_skips_a_page_past_it() {
        let f = fixture_aops(1, 64, 1200, u64::MAX, true);
        let mut allocated = 0;
        f.write(0, &[1; 3 * PAGE_SIZE], &mut allocated)
            .expect("write");
        f.sync();
        let before = f.dev.snapshot();
        // Pages 0 and 2 dirty again, the size then cut to 10 bytes without truncating the
        // cache (a truncate in progress): page 0 goes out with zeros past byte 10 up to its
        // block's end, page 2 not at all.
        for i in [0, 2] {
            let page = find_get_page(&f.mapping, i).expect("cached");
            crate::mm::waitqueue::lock_page(page.page());
            set_page_dirty(&f.mapping, page.page());
            crate::mm::waitqueue::unlock_page(page.page());
        }
        f.map.set_size(10);
        f.sync();
        let mut want = before.clone();
        let (dev, _) = f.map.map(0).expect("map").expect("mapped");
        want[dev as usize + 10..dev as usize + 512].fill(0);
        assert_eq!(f.dev.snapshot(), want);
    }

    #[test]
    fn no_space_leaves_size_and_allocation_alone() {
        let f = fixture();
        let mut allocated = 0;
        f.write(0, b"abc", &mut allocated).expect("write");
        let e = f
            .write(200 * 512, b"too far", &mut allocated)
            .expect_err("past the capacity");
        assert!(matches!(e, FsError::NoSpace));
        // The zero-fill before the failing page happened (as in the kernel, whose
        // fat_write_failed then truncates back); the size never covers unallocated bytes.
        assert_eq!(f.map.size(), 200 * 512, "zero-filled up to the capacity");
        assert_eq!(allocated, 200 * 512, "and not a block more");
    }

    #[test]
    fn writepage_of_a_page_past_the_size_writes_nothing() {
        let f = fixture();
        let mut allocated = 0;
        f.write(0, &[1; PAGE_SIZE + 10], &mut allocated)
            .expect("write");
        f.sync();
        let before = f.dev.snapshot();
        // Shrink the size below page 1 without truncating the cache: writeback must skip it.
        let page = find_get_page(&f.mapping, 1).expect("page 1");
        crate::mm::waitqueue::lock_page(page.page());
        set_page_dirty(&f.mapping, page.page());
        crate::mm::waitqueue::unlock_page(page.page());
        drop(page);
        f.map.set_size(100);
        f.sync();
        assert_eq!(f.dev.snapshot(), before, "nothing written past the size");
    }
}
