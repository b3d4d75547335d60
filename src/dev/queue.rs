//! The I/O queue: requests go in from any thread and are carried out, after the configured
//! latency, by a pool of completion threads that then run each request's `end_io`.
//!
//! This is where "the I/O completes on another CPU, later" comes from: end_page_writeback runs
//! on a completion thread, never on the thread that started the writeback. One kind of request
//! completes on its submitter instead: a lone page read with no injected latency (see
//! [`IoQueue::submit_batch`]).
//!
//! Like the block layer, the queue merges: a completion thread that takes a read or write
//! also takes the requests queued right behind it that continue it on the device (same
//! direction, next byte), up to 1 MiB, and carries them out as one vectored request with one
//! latency; each still completes on its own `end_io`. A thread can hold its writes back with
//! a plug ([`IoQueue::start_plug`], blk_start_plug) so that a writepages pass reaches the queue
//! as one batch of neighbours instead of a trickle the completion threads take one by one.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::time::Duration;

use crate::dev::BlockDevice;
use crate::error::FsError;
use crate::sync::Arc;
use crate::sync::unchecked::{
    AtomicU64, Condvar, MappedRwLockReadGuard, MappedRwLockWriteGuard, Mutex, MutexGuard, Ordering,
};

/// What a request does.
#[derive(Debug)]
pub enum BioOp {
    /// Read `len` bytes at `offset`; `end_io` gets them.
    Read {
        /// Byte offset.
        offset: u64,
        /// Length in bytes.
        len: usize,
    },
    /// Read `buf.len()` bytes at `offset` straight into `buf` (a page frame); `end_io` gets
    /// an empty vector.
    ReadInto {
        /// Byte offset.
        offset: u64,
        /// Where the bytes go.
        buf: Box<dyn IoBuf>,
    },
    /// Write `data` at `offset`.
    Write {
        /// Byte offset.
        offset: u64,
        /// The bytes.
        data: Vec<u8>,
    },
    /// Write `buf.len()` bytes at `offset` straight out of `buf` (page frames under
    /// writeback), with no copy. `buf` is dropped before `end_io` runs, so whatever it holds
    /// for the transfer (the frames' references) is given back before the writeback ends.
    WriteFrom {
        /// Byte offset.
        offset: u64,
        /// Where the bytes come from.
        buf: Box<dyn IoSource>,
    },
    /// Write each `(offset, data)` part in turn, each on the device before the next starts,
    /// as one request: a process killed meanwhile leaves a prefix of the parts written.
    /// `end_io` gets the first error, and the parts after a failed one are not written.
    /// Never merged with its neighbours. This is fatcache's, not the block layer's: the
    /// ordered metadata write uses it for blocks that must land in a given order, paying one
    /// trip through the queue instead of one per step.
    WriteChain {
        /// The parts, in the order they are written.
        parts: Vec<(u64, Vec<u8>)>,
    },
    /// Make completed writes durable.
    Flush,
}

/// One segment of an [`IoBuf`] borrowed for a transfer: bytes of a frame, held by the frame's
/// data lock until the transfer ends.
pub type IoSeg<'a> = MappedRwLockWriteGuard<'a, [u8]>;

/// Memory a read lands in without a copy: part of a page frame, or whole frames one after
/// another on the device (a multi-page bio). The device borrows it only while the transfer
/// runs, on the completion thread, before `end_io`.
pub trait IoBuf: Send {
    /// Its length in bytes: the sum of its segments'.
    fn len(&self) -> usize;
    /// Whether it is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Borrows the bytes for the transfer: pushes its segments onto `out` in device order.
    /// A segment each, not a box each: a merged request of 256 pages borrows them into one
    /// vector (a boxed guard per page was a malloc and a free per page read).
    fn borrow_segments<'s>(&'s self, out: &mut Vec<IoSeg<'s>>);
}

/// One segment of an [`IoSource`] borrowed for a transfer: bytes of a frame, held by the
/// frame's data lock (shared) until the transfer ends.
pub type IoSrcSeg<'a> = MappedRwLockReadGuard<'a, [u8]>;

/// Memory a write is carried out from without a copy: page frames one after another on the
/// device. The device borrows it only while the transfer runs, on the completion thread.
pub trait IoSource: Send {
    /// Its length in bytes: the sum of its segments'.
    fn len(&self) -> usize;
    /// Whether it is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Borrows the bytes for the transfer: pushes its segments onto `out` in device order.
    fn borrow_segments<'s>(&'s self, out: &mut Vec<IoSrcSeg<'s>>);
}

impl std::fmt::Debug for dyn IoSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IoSource({} bytes)", self.len())
    }
}

impl std::fmt::Debug for dyn IoBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IoBuf({} bytes)", self.len())
    }
}

/// Completion callback: the read data (empty for writes and flushes) or the error.
pub type EndIo = Box<dyn FnOnce(Result<Vec<u8>, FsError>) + Send>;

/// One request.
pub struct Bio {
    /// The operation.
    pub op: BioOp,
    /// Run on a completion thread when the operation is done.
    pub end_io: EndIo,
}

impl std::fmt::Debug for Bio {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bio")
            .field("op", &self.op)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct State {
    queue: VecDeque<Bio>,
    in_flight: usize,
    /// Bytes of the writes queued or running: what [`MAX_WRITE_BYTES`] bounds.
    write_bytes: usize,
    plugged: bool,
    shutdown: bool,
}

struct Shared {
    /// Tells this queue's plug from another queue's.
    id: u64,
    dev: Arc<dyn BlockDevice>,
    state: Mutex<State>,
    work: Condvar,
    idle: Condvar,
    /// Submitters of writes waiting for the queue to drop below [`MAX_WRITE_BYTES`].
    space: Condvar,
    latency_ns: AtomicU64,
    completed: AtomicU64,
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
    /// Requests carried out on the device: a merged run counts once.
    dispatched: AtomicU64,
}

/// Longest read carried out on its submitter (see [`IoQueue::submit_batch`]): a page. A
/// longer one is a readahead bio, which a completion thread carries out while the reader
/// copies what it has.
const INLINE_READ_MAX: usize = 4096;

/// Longest merged request (the order of the block layer's max_sectors_kb).
const MAX_MERGE_BYTES: usize = 1 << 20;

/// Most requests merged into one (a bio's vector is bounded too; IOV_MAX is 1024).
const MAX_MERGE_BIOS: usize = 256;

/// Bytes of writes a plug holds before it queues them on its own, so a long pass keeps the
/// device busy instead of handing it everything at the end (blk_plug's request limit): one
/// full merged request.
const PLUG_MAX_BYTES: usize = MAX_MERGE_BYTES;

/// Bytes of writes a queue holds (queued or running) before a submitter of more waits for
/// some to complete: the block layer's nr_requests, which makes a writer faster than its disk
/// sleep for a request tag. It also bounds the memory of the writes that carry a copy
/// (metadata); a file's data goes out from its frames. Counted in bytes, not requests, because
/// a request is a page (metadata, a page written piece by piece) or up to 64 (a data bio of
/// mpage_writepages).
/// Two full merged requests: one for each of the default two completion threads while the
/// submitter fills the next. Four cost 1.3-1.9 MiB more peak RSS in `cp -a` and `tar x` of
/// 2,000 files, once the flusher wrote whole slices, and wrote no faster (512 MiB dd: 0.556 s
/// either way in cache=direct, 0.75 / 0.73 s in cache=kernel, means of five or six runs).
const MAX_WRITE_BYTES: usize = 2 * MAX_MERGE_BYTES;

/// Source of queue identities for plugs.
static NEXT_QUEUE_ID: AtomicU64 = AtomicU64::new(1);

/// Writes held by this thread's plug, and the queue they are for.
struct Plug {
    id: u64,
    shared: Arc<Shared>,
    bios: Vec<Bio>,
    /// Bytes the held writes carry.
    bytes: usize,
}

thread_local! {
    /// This thread's plug (current->plug in the kernel), if one is active.
    static PLUG: RefCell<Option<Plug>> = const { RefCell::new(None) };
    /// Set on completion threads: an `end_io` that submits must never wait for queue space,
    /// since only completion threads make space.
    static COMPLETING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Bytes a bio writes (what [`MAX_WRITE_BYTES`] counts); 0 for a read or a flush.
fn write_bytes(bio: &Bio) -> usize {
    match &bio.op {
        BioOp::Write { data, .. } => data.len(),
        BioOp::WriteFrom { buf, .. } => buf.len(),
        BioOp::WriteChain { parts } => parts.iter().map(|(_, d)| d.len()).sum(),
        BioOp::Read { .. } | BioOp::ReadInto { .. } | BioOp::Flush => 0,
    }
}

/// An active plug on the current thread; dropping it queues the held writes (blk_finish_plug).
///
/// Only writes are held. A read is queued at once even under a plug: whoever submits a read
/// waits for it (a page lock, a chain walk's FAT sector), and a read held by the plug of the
/// thread waiting for it would never come (the kernel avoids that by flushing the plug when
/// the task sleeps; the page cache here has no such hook into the scheduler). A write
/// submitted under a plug must not be waited for by the same thread before the plug ends;
/// writepages passes never do (each page is visited once and unlocked before its I/O).
#[must_use = "the plug ends, and its writes are queued, when this is dropped"]
pub struct BlkPlug {
    /// False for a nested plug, which leaves the outer one in charge.
    active: bool,
    /// Not Send: the plug belongs to the thread that started it.
    _thread: std::marker::PhantomData<*const ()>,
}

impl std::fmt::Debug for BlkPlug {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlkPlug")
            .field("active", &self.active)
            .finish()
    }
}

impl Drop for BlkPlug {
    fn drop(&mut self) {
        if !self.active {
            return;
        }
        // try_with: during thread teardown the slot may be gone already, and then its Drop
        // has queued the writes. Dropping the taken plug queues them (`Plug`'s Drop).
        let plug = PLUG.try_with(|p| p.borrow_mut().take());
        drop(plug);
    }
}

impl Drop for Plug {
    fn drop(&mut self) {
        // The end of the plug, or the thread-local torn down under an active plug: either
        // way the held writes are queued, since nothing submitted is ever dropped.
        let bios = std::mem::take(&mut self.bios);
        if !bios.is_empty() {
            self.shared.push_batch(bios);
        }
    }
}

impl Shared {
    /// The queue's state, once it has room for `bytes` more bytes of writes: a submitter waits
    /// while [`MAX_WRITE_BYTES`] are queued or running (get_request's sleep for a tag). Never
    /// waits on a completion thread (only those make room), while the queue is held by
    /// [`IoQueue::plug`] (nothing would complete), or at shutdown. A batch may take the count
    /// past the limit by its own size: a plug's or readahead's batch is queued whole so that
    /// it can still merge.
    fn lock_with_room(&self, bytes: usize) -> MutexGuard<'_, State> {
        let mut st = self.state.lock();
        if bytes > 0 && !COMPLETING.with(std::cell::Cell::get) {
            while st.write_bytes >= MAX_WRITE_BYTES && !st.plugged && !st.shutdown {
                self.space.wait(&mut st);
            }
        }
        st.write_bytes += bytes;
        st
    }

    /// Queue `bios` together and wake enough completion threads for them.
    fn push_batch(&self, bios: Vec<Bio>) {
        let n = bios.len();
        if n == 0 {
            return;
        }
        let bytes = bios.iter().map(write_bytes).sum();
        // One completion thread per request the batch merges into: a readahead window of
        // 64 neighbouring pages is one request, and waking every thread for it woke all but
        // one for nothing. Waking fewer cannot strand work: a thread that finishes a request
        // takes the next queued one before it sleeps, so queued work waits at most for a
        // busy thread, and a batch that merges into k requests still gets k threads.
        let requests = requests_in(&bios);
        self.lock_with_room(bytes).queue.extend(bios);
        for _ in 0..requests {
            if !self.work.notify_one() {
                break;
            }
        }
    }
}

/// A device with its completion threads.
pub struct IoQueue {
    shared: Arc<Shared>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for IoQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IoQueue")
            .field("threads", &self.threads.len())
            .finish_non_exhaustive()
    }
}

impl IoQueue {
    /// Start `threads` completion threads over `dev`, each request taking `latency`.
    pub fn new(
        dev: Arc<dyn BlockDevice>,
        threads: usize,
        latency: Duration,
    ) -> Result<Self, FsError> {
        let shared = Arc::new(Shared {
            // Relaxed: a unique number, no other memory depends on it.
            id: NEXT_QUEUE_ID.fetch_add(1, Ordering::Relaxed),
            dev,
            state: Mutex::new(State::default()),
            work: Condvar::new(),
            idle: Condvar::new(),
            space: Condvar::new(),
            latency_ns: AtomicU64::new(u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX)),
            completed: AtomicU64::new(0),
            bytes_read: AtomicU64::new(0),
            bytes_written: AtomicU64::new(0),
            dispatched: AtomicU64::new(0),
        });
        let mut handles = Vec::new();
        for i in 0..threads.max(1) {
            let s = Arc::clone(&shared);
            let h = std::thread::Builder::new()
                .name(format!("fatcache-io-{i}"))
                .spawn(move || completion_thread(&s))
                .map_err(FsError::Io)?;
            handles.push(h);
        }
        Ok(IoQueue {
            shared,
            threads: handles,
        })
    }

    /// The device.
    pub fn device(&self) -> &Arc<dyn BlockDevice> {
        &self.shared.dev
    }

    /// Queue a request; its `end_io` runs later on a completion thread. A write from a thread
    /// with an active plug on this queue waits in the plug until it ends or fills.
    pub fn submit(&self, bio: Bio) {
        let mut bio = Some(bio);
        if matches!(
            bio,
            Some(Bio {
                op: BioOp::Write { .. } | BioOp::WriteFrom { .. },
                ..
            })
        ) {
            let full = PLUG.try_with(|p| {
                let mut p = p.borrow_mut();
                let plug = p.as_mut().filter(|plug| plug.id == self.shared.id)?;
                plug.bytes += bio.as_ref().map_or(0, write_bytes);
                plug.bios.extend(bio.take());
                (plug.bytes >= PLUG_MAX_BYTES).then(|| {
                    plug.bytes = 0;
                    std::mem::take(&mut plug.bios)
                })
            });
            if let Ok(Some(bios)) = full {
                self.shared.push_batch(bios);
            }
        }
        if let Some(bio) = bio {
            let bytes = write_bytes(&bio);
            self.shared.lock_with_room(bytes).queue.push_back(bio);
            self.shared.work.notify_one();
        }
    }

    /// Queue `bios` at once, in order, so that neighbours can be merged (a readahead window).
    ///
    /// A batch of one read of at most a page into caller memory (one page's readpage, a
    /// random reader's miss) on a device with no injected latency is the exception: it is
    /// carried out at once on the calling thread, its `end_io` included, as brd (the RAM
    /// disk) completes a bio within submit_bio. A completion thread would buy nothing for it
    /// (the submitter waits for the page next, and there is nothing to merge it with) and
    /// costs two context switches per read: the thread is woken, preempts the submitter on
    /// its CPU, preads, sleeps again. Those were the largest part of the daemon's CPU per
    /// random 4 KiB read through FUSE (about 40% by perf). Writes, flushes, longer batches
    /// and reads (readahead's multi-page bios), plugged queues and every request under
    /// `io_latency_us` still complete on a completion thread, so end_page_writeback never
    /// runs on the thread that started the writeback.
    ///
    /// Models: drivers/block/brd.c brd_submit_bio() (v5.10) for the inline read.
    pub fn submit_batch(&self, bios: Vec<Bio>) {
        let lone_read = matches!(
            bios.as_slice(),
            [Bio {
                op: BioOp::ReadInto { buf, .. },
                ..
            }] if buf.len() <= INLINE_READ_MAX
        );
        // Relaxed: an injection knob read once per request, as the completion threads do.
        if lone_read
            && self.shared.latency_ns.load(Ordering::Relaxed) == 0
            && !self.shared.state.lock().plugged
        {
            for Bio { op, end_io } in bios {
                let r = carry_out(&self.shared, &op);
                drop(op);
                end_io(r);
                self.shared.completed.fetch_add(1, Ordering::Relaxed);
            }
            return;
        }
        self.shared.push_batch(bios);
    }

    /// Start holding this thread's writes to this queue until the returned plug is dropped
    /// (blk_start_plug); inert when the thread already has a plug.
    pub fn start_plug(&self) -> BlkPlug {
        let active = PLUG
            .try_with(|p| {
                let mut p = p.borrow_mut();
                if p.is_some() {
                    return false;
                }
                *p = Some(Plug {
                    id: self.shared.id,
                    shared: Arc::clone(&self.shared),
                    bios: Vec::new(),
                    bytes: 0,
                });
                true
            })
            .unwrap_or(false);
        BlkPlug {
            active,
            _thread: std::marker::PhantomData,
        }
    }

    /// Change the per-request latency (`io_latency_us`).
    pub fn set_latency(&self, d: Duration) {
        // Relaxed: an injection knob read once per request.
        self.shared.latency_ns.store(
            u64::try_from(d.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// Hold requests in the queue (none starts) until [`IoQueue::unplug`].
    pub fn plug(&self) {
        self.shared.state.lock().plugged = true;
    }

    /// Let held requests run.
    pub fn unplug(&self) {
        self.shared.state.lock().plugged = false;
        self.shared.work.notify_all();
    }

    /// Bytes of the writes queued or running (at most about [`MAX_WRITE_BYTES`] while anyone
    /// submits).
    pub fn write_bytes_pending(&self) -> usize {
        self.shared.state.lock().write_bytes
    }

    /// Requests queued or running.
    pub fn pending(&self) -> usize {
        let st = self.shared.state.lock();
        st.queue.len() + st.in_flight
    }

    /// Requests completed so far, each counted once its end_io has returned: a thread that its
    /// end_io woke (an unlocked page) may not see it counted yet; [`IoQueue::drain`] first.
    pub fn completed(&self) -> u64 {
        self.shared.completed.load(Ordering::Relaxed)
    }

    /// Device requests carried out so far: fewer than [`IoQueue::completed`] by the merges.
    pub fn dispatched(&self) -> u64 {
        self.shared.dispatched.load(Ordering::Relaxed)
    }

    /// Bytes (read, written) that requests have asked of the device so far.
    pub fn bytes(&self) -> (u64, u64) {
        (
            self.shared.bytes_read.load(Ordering::Relaxed),
            self.shared.bytes_written.load(Ordering::Relaxed),
        )
    }

    /// Wait until every request submitted so far has completed (the queue must not be plugged).
    pub fn drain(&self) {
        let mut st = self.shared.state.lock();
        while !st.queue.is_empty() || st.in_flight > 0 {
            self.shared.idle.wait(&mut st);
        }
    }
}

impl Drop for IoQueue {
    fn drop(&mut self) {
        {
            let mut st = self.shared.state.lock();
            // Nothing submitted is ever dropped: completion callbacks may be what frees a
            // writeback, and a lost one would leave a page under writeback for ever.
            st.plugged = false;
            st.shutdown = true;
        }
        self.shared.work.notify_all();
        self.shared.space.notify_all();
        for h in self.threads.drain(..) {
            if h.join().is_err() {
                log::error!("i/o completion thread panicked");
            }
        }
    }
}

fn completion_thread(s: &Shared) {
    COMPLETING.with(|c| c.set(true));
    loop {
        let batch = {
            let mut st = s.state.lock();
            loop {
                if !st.plugged {
                    if let Some(b) = st.queue.pop_front() {
                        let batch = take_merges(&mut st.queue, b);
                        st.in_flight += batch.len();
                        break batch;
                    }
                }
                if st.shutdown && st.queue.is_empty() {
                    return;
                }
                s.work.wait(&mut st);
            }
        };
        let ns = s.latency_ns.load(Ordering::Relaxed);
        if ns != 0 {
            std::thread::sleep(Duration::from_nanos(ns));
        }
        let n = batch.len();
        let bytes: usize = batch.iter().map(write_bytes).sum();
        let results = if n == 1 {
            vec![carry_out(s, &batch[0].op)]
        } else {
            carry_out_merged(s, &batch)
        };
        // Every op goes before the first end_io: a WriteFrom gives its frames' references
        // back once the transfer is over, never after the writeback it belongs to has ended
        // (a reference held across end_page_writeback would hide the eras that drop the last
        // one there, see mm::era).
        let (ops, end_ios): (Vec<BioOp>, Vec<EndIo>) =
            batch.into_iter().map(|b| (b.op, b.end_io)).unzip();
        drop(ops);
        for (end_io, result) in end_ios.into_iter().zip(results) {
            end_io(result);
            s.completed.fetch_add(1, Ordering::Relaxed);
        }
        let mut st = s.state.lock();
        st.in_flight -= n;
        if bytes > 0 {
            let was_full = st.write_bytes >= MAX_WRITE_BYTES;
            st.write_bytes -= bytes;
            if was_full && st.write_bytes < MAX_WRITE_BYTES {
                s.space.notify_all();
            }
        }
        if st.queue.is_empty() && st.in_flight == 0 {
            s.idle.notify_all();
        }
    }
}

/// Direction, device offset and length of a read or write.
fn extent(op: &BioOp) -> Option<(bool, u64, usize)> {
    match op {
        BioOp::Read { offset, len } => Some((false, *offset, *len)),
        BioOp::ReadInto { offset, buf } => Some((false, *offset, buf.len())),
        BioOp::Write { offset, data } => Some((true, *offset, data.len())),
        BioOp::WriteFrom { offset, buf } => Some((true, *offset, buf.len())),
        BioOp::WriteChain { .. } | BioOp::Flush => None,
    }
}

/// `first` and the requests at the head of `queue` that continue it on the device in the same
/// direction (a back merge), within the merge limits. A flush or a chain never merges, and nothing
/// queued behind a request that does not continue the run is taken, so the order of
/// overlapping writes is kept.
fn take_merges(queue: &mut VecDeque<Bio>, first: Bio) -> Vec<Bio> {
    let Some(mut run) = Run::start(&first) else {
        return vec![first];
    };
    let mut batch = vec![first];
    while queue.front().is_some_and(|b| run.extend(b)) {
        batch.extend(queue.pop_front());
    }
    batch
}

/// A merged request being built: what the next bio must be to join it.
struct Run {
    write: bool,
    /// Device byte where the run ends.
    end: u64,
    bytes: usize,
    bios: usize,
}

impl Run {
    /// A run starting with `bio`, or `None` for a bio that never merges (a flush, a chain).
    fn start(bio: &Bio) -> Option<Run> {
        let (write, at, len) = extent(&bio.op)?;
        Some(Run {
            write,
            end: at + len as u64,
            bytes: len,
            bios: 1,
        })
    }

    /// Adds `bio` if it continues the run (same direction, next byte) within the merge
    /// limits; says whether it did.
    fn extend(&mut self, bio: &Bio) -> bool {
        match extent(&bio.op) {
            Some((w, at, len))
                if w == self.write
                    && at == self.end
                    && self.bios < MAX_MERGE_BIOS
                    && self.bytes + len <= MAX_MERGE_BYTES =>
            {
                self.end += len as u64;
                self.bytes += len;
                self.bios += 1;
                true
            }
            _ => false,
        }
    }
}

/// How many requests `bios` makes once merged as the completion threads merge them: the
/// completion threads worth waking for it.
fn requests_in(bios: &[Bio]) -> usize {
    let mut run: Option<Run> = None;
    let mut requests = 0;
    for bio in bios {
        if !run.as_mut().is_some_and(|r| r.extend(bio)) {
            requests += 1;
            run = Run::start(bio);
        }
    }
    requests
}

/// One request on the device.
fn carry_out(s: &Shared, op: &BioOp) -> Result<Vec<u8>, FsError> {
    s.dispatched.fetch_add(1, Ordering::Relaxed);
    match op {
        BioOp::Read { offset, len } => {
            let mut buf = vec![0u8; *len];
            s.bytes_read.fetch_add(*len as u64, Ordering::Relaxed);
            s.dev.read_at(*offset, &mut buf).map(|()| buf)
        }
        BioOp::ReadInto { offset, buf } => {
            s.bytes_read.fetch_add(buf.len() as u64, Ordering::Relaxed);
            let mut segs = Vec::new();
            buf.borrow_segments(&mut segs);
            let r = match segs.as_mut_slice() {
                [one] => s.dev.read_at(*offset, one),
                many => {
                    let mut views: Vec<&mut [u8]> = many.iter_mut().map(|g| &mut **g).collect();
                    s.dev.read_vectored_at(*offset, &mut views)
                }
            };
            r.map(|()| Vec::new())
        }
        BioOp::Write { offset, data } => {
            s.bytes_written
                .fetch_add(data.len() as u64, Ordering::Relaxed);
            s.dev.write_at(*offset, data).map(|()| Vec::new())
        }
        BioOp::WriteFrom { offset, buf } => {
            s.bytes_written
                .fetch_add(buf.len() as u64, Ordering::Relaxed);
            let mut segs = Vec::new();
            buf.borrow_segments(&mut segs);
            let r = match segs.as_slice() {
                [one] => s.dev.write_at(*offset, one),
                many => {
                    let views: Vec<&[u8]> = many.iter().map(|g| &**g).collect();
                    s.dev.write_vectored_at(*offset, &views)
                }
            };
            r.map(|()| Vec::new())
        }
        BioOp::WriteChain { parts } => {
            for (offset, data) in parts {
                s.dev.write_at(*offset, data)?;
                s.bytes_written
                    .fetch_add(data.len() as u64, Ordering::Relaxed);
            }
            Ok(Vec::new())
        }
        BioOp::Flush => s.dev.flush().map(|()| Vec::new()),
    }
}

/// A merged run (all reads or all writes, consecutive on the device) as one vectored request.
/// If it fails, each part is tried on its own, so only the parts that really fail get the
/// error (the block layer, too, retries a failed merged request piece by piece to find the
/// bad sectors).
fn carry_out_merged(s: &Shared, batch: &[Bio]) -> Vec<Result<Vec<u8>, FsError>> {
    let Some((_, offset, _)) = extent(&batch[0].op) else {
        return batch.iter().map(|b| carry_out(s, &b.op)).collect();
    };
    let merged = match &batch[0].op {
        BioOp::Read { .. } | BioOp::ReadInto { .. } => {
            // A buffer of our own for a plain read, the caller's memory for ReadInto; the
            // borrows end before any end_io runs (an end_io may take the same memory).
            let mut own: Vec<Vec<u8>> = batch
                .iter()
                .map(|b| match &b.op {
                    BioOp::Read { len, .. } => vec![0u8; *len],
                    _ => Vec::new(),
                })
                .collect();
            let r = {
                // Every ReadInto's segments in one vector, and the index where each bio's
                // segments end in it.
                let mut segs: Vec<IoSeg<'_>> = Vec::with_capacity(batch.len());
                let mut ends = Vec::with_capacity(batch.len());
                for b in batch {
                    if let BioOp::ReadInto { buf, .. } = &b.op {
                        buf.borrow_segments(&mut segs);
                    }
                    ends.push(segs.len());
                }
                let mut segs = segs.iter_mut();
                let mut views: Vec<&mut [u8]> =
                    Vec::with_capacity(ends.last().map_or(0, |&n| n) + batch.len());
                let mut start = 0;
                for ((b, o), end) in batch.iter().zip(own.iter_mut()).zip(ends) {
                    match &b.op {
                        BioOp::ReadInto { .. } => {
                            views.extend(segs.by_ref().take(end - start).map(|g| &mut **g));
                        }
                        _ => views.push(o.as_mut_slice()),
                    }
                    start = end;
                }
                let total: usize = views.iter().map(|v| v.len()).sum();
                s.dev
                    .read_vectored_at(offset, &mut views)
                    .map(|()| s.bytes_read.fetch_add(total as u64, Ordering::Relaxed))
            };
            r.map(|_| own.into_iter().map(Ok).collect())
        }
        _ => {
            // Every WriteFrom's segments first (borrowed for the whole transfer), then one
            // view per bio's bytes in device order.
            let mut segs: Vec<IoSrcSeg<'_>> = Vec::with_capacity(batch.len());
            let mut ends = Vec::with_capacity(batch.len());
            for b in batch {
                if let BioOp::WriteFrom { buf, .. } = &b.op {
                    buf.borrow_segments(&mut segs);
                }
                ends.push(segs.len());
            }
            let mut views: Vec<&[u8]> = Vec::with_capacity(segs.len() + batch.len());
            let mut start = 0;
            for (b, end) in batch.iter().zip(ends) {
                match &b.op {
                    BioOp::Write { data, .. } => views.push(data.as_slice()),
                    BioOp::WriteFrom { .. } => views.extend(segs[start..end].iter().map(|g| &**g)),
                    _ => {}
                }
                start = end;
            }
            let total: usize = views.iter().map(|v| v.len()).sum();
            s.dev.write_vectored_at(offset, &views).map(|()| {
                s.bytes_written.fetch_add(total as u64, Ordering::Relaxed);
                batch.iter().map(|_| Ok(Vec::new())).collect()
            })
        }
    };
    match merged {
        Ok(results) => {
            s.dispatched.fetch_add(1, Ordering::Relaxed);
            results
        }
        Err(e) => {
            log::debug!(
                "i/o: merged request of {} failed ({e}); retrying each",
                batch.len()
            );
            batch.iter().map(|b| carry_out(s, &b.op)).collect()
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::dev::MemDevice;
    use crate::sync::unchecked::{AtomicBool, RwLock, RwLockReadGuard, RwLockWriteGuard};
    use std::sync::mpsc;

    #[test]
    fn completions_run_on_completion_threads() {
        let dev = Arc::new(MemDevice::new(1 << 16));
        let q = IoQueue::new(dev.clone(), 2, Duration::from_micros(100)).expect("queue");
        let (tx, rx) = mpsc::channel();
        let me = std::thread::current().id();
        for i in 0..8u64 {
            let tx = tx.clone();
            q.submit(Bio {
                op: BioOp::Write {
                    offset: i * 4096,
                    data: vec![i as u8; 4096],
                },
                end_io: Box::new(move |r| {
                    let name = std::thread::current().name().map(str::to_string);
                    tx.send((r.is_ok(), std::thread::current().id() != me, name))
                        .expect("send");
                }),
            });
        }
        for _ in 0..8 {
            let (ok, other, name) = rx.recv().expect("completion");
            assert!(ok && other);
            assert!(name.expect("named").starts_with("fatcache-io-"));
        }
        q.drain();
        assert_eq!(q.completed(), 8);
        assert_eq!(dev.snapshot()[7 * 4096], 7);
    }

    #[test]
    fn plugged_requests_wait_and_errors_reach_end_io() {
        let dev = Arc::new(MemDevice::new(8192));
        dev.fail_writes(0, 4096);
        let q = IoQueue::new(dev, 1, Duration::ZERO).expect("queue");
        q.plug();
        let (tx, rx) = mpsc::channel();
        q.submit(Bio {
            op: BioOp::Write {
                offset: 0,
                data: vec![1; 512],
            },
            end_io: Box::new(move |r| tx.send(r.map(|_| ()).map_err(|e| e.errno())).expect("send")),
        });
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(q.pending(), 1);
        assert!(rx.try_recv().is_err(), "plugged: nothing completes");
        q.unplug();
        assert_eq!(rx.recv().expect("completion"), Err(libc::EIO));
        q.drain();
        assert_eq!(q.pending(), 0);
    }

    /// Bytes of a [`lone_write`].
    const LONE: usize = 4096;

    /// A write of one byte pattern that merges with nothing queued next to it.
    fn lone_write(i: u64, done: mpsc::Sender<()>) -> Bio {
        Bio {
            op: BioOp::Write {
                // Every other 4 KiB block: no two writes continue each other.
                offset: i * 2 * LONE as u64,
                data: vec![i as u8; LONE],
            },
            end_io: Box::new(move |r| {
                r.expect("write");
                let _ = done.send(());
            }),
        }
    }

    #[test]
    fn a_writer_faster_than_the_device_waits_for_queue_space() {
        let n = 3 * (MAX_WRITE_BYTES / LONE) as u64;
        let dev = Arc::new(MemDevice::new(n as usize * 2 * LONE));
        let q = IoQueue::new(dev.clone(), 1, Duration::from_micros(20)).expect("queue");
        let (tx, rx) = mpsc::channel();
        let mut most = 0;
        for i in 0..n {
            q.submit(lone_write(i, tx.clone()));
            most = most.max(q.write_bytes_pending());
        }
        // A submitter waits only once the limit is reached, so one more write may join.
        assert!(
            most < MAX_WRITE_BYTES + LONE,
            "{most} bytes of writes pending at once"
        );
        for _ in 0..n {
            rx.recv_timeout(Duration::from_secs(60))
                .expect("every write completes");
        }
        q.drain();
        assert_eq!(q.write_bytes_pending(), 0);
        let bytes = dev.snapshot();
        for i in 0..n {
            let at = i as usize * 2 * LONE;
            assert_eq!(bytes[at..at + LONE], vec![i as u8; LONE][..], "write {i}");
        }
    }

    #[test]
    fn an_end_io_that_submits_never_waits_for_space() {
        let n = 2 * (MAX_WRITE_BYTES / LONE) as u64;
        let dev = Arc::new(MemDevice::new(2 * n as usize * 2 * LONE));
        let q = Arc::new(IoQueue::new(dev, 1, Duration::ZERO).expect("queue"));
        let (tx, rx) = mpsc::channel();
        // The first write's completion submits n more from the completion thread while this
        // thread keeps the queue at its limit: if the completion thread waited for space,
        // nothing would ever complete again.
        let (q2, tx2) = (Arc::clone(&q), tx.clone());
        q.submit(Bio {
            op: BioOp::Write {
                offset: 0,
                data: vec![9; 512],
            },
            end_io: Box::new(move |r| {
                r.expect("write");
                for i in 0..n {
                    q2.submit(lone_write(n + i, tx2.clone()));
                }
                let _ = tx2.send(());
            }),
        });
        for i in 1..n {
            q.submit(lone_write(i, tx.clone()));
        }
        for _ in 0..2 * n {
            rx.recv_timeout(Duration::from_secs(60))
                .expect("no completion thread stuck waiting for space");
        }
    }

    #[test]
    fn drop_completes_everything_submitted() {
        let dev = Arc::new(MemDevice::new(4096));
        let q = IoQueue::new(dev, 1, Duration::from_millis(1)).expect("queue");
        let (tx, rx) = mpsc::channel();
        for _ in 0..5 {
            let tx = tx.clone();
            q.submit(Bio {
                op: BioOp::Flush,
                end_io: Box::new(move |_| tx.send(()).expect("send")),
            });
        }
        q.plug();
        drop(q);
        assert_eq!(rx.try_iter().count(), 5);
    }

    #[test]
    fn a_plug_holds_writes_not_reads_and_its_batch_is_merged() {
        let dev = Arc::new(MemDevice::new(1 << 16));
        let q = IoQueue::new(dev.clone(), 2, Duration::ZERO).expect("queue");
        let (tx, rx) = mpsc::channel();
        let plug = q.start_plug();
        // Nested plugs leave the outer one in charge.
        drop(q.start_plug());
        for i in 0..8u64 {
            let tx = tx.clone();
            q.submit(Bio {
                op: BioOp::Write {
                    offset: i * 512,
                    data: vec![i as u8 + 1; 512],
                },
                end_io: Box::new(move |r| tx.send(r.is_ok()).expect("send")),
            });
        }
        // A read goes through at once: its submitter may be about to wait for it.
        let (rtx, rrx) = mpsc::channel();
        q.submit(Bio {
            op: BioOp::Read {
                offset: 1 << 15,
                len: 512,
            },
            end_io: Box::new(move |r| rtx.send(r.map(|d| d.len()).ok()).expect("send")),
        });
        assert_eq!(rrx.recv().expect("read completes"), Some(512));
        std::thread::sleep(Duration::from_millis(20));
        assert!(rx.try_recv().is_err(), "writes held by the plug");
        assert_eq!(dev.snapshot()[0], 0);
        drop(plug);
        for _ in 0..8 {
            assert!(rx.recv().expect("completion"));
        }
        q.drain();
        let snap = dev.snapshot();
        for i in 0..8 {
            assert_eq!(snap[i * 512], i as u8 + 1, "sector {i}");
        }
        // 9 requests, the 8 writes queued together and contiguous: merged into one (or two,
        // if the second thread took the head before the first looked behind it: never more).
        assert_eq!(q.completed(), 9);
        assert!(q.dispatched() <= 3, "{} device requests", q.dispatched());
    }

    #[test]
    fn a_failed_merged_write_fails_only_its_bad_part() {
        let dev = Arc::new(MemDevice::new(1 << 16));
        dev.fail_writes(1024, 1536);
        let q = IoQueue::new(dev.clone(), 1, Duration::ZERO).expect("queue");
        let (tx, rx) = mpsc::channel();
        q.submit_batch(
            (0..4u64)
                .map(|i| {
                    let tx = tx.clone();
                    Bio {
                        op: BioOp::Write {
                            offset: i * 512,
                            data: vec![7; 512],
                        },
                        end_io: Box::new(move |r| tx.send((i, r.is_ok())).expect("send")),
                    }
                })
                .collect(),
        );
        let mut got: Vec<(u64, bool)> = (0..4).map(|_| rx.recv().expect("completion")).collect();
        got.sort_unstable();
        assert_eq!(got, vec![(0, true), (1, true), (2, false), (3, true)]);
        q.drain();
        assert_eq!(dev.snapshot()[3 * 512], 7);
    }

    #[test]
    fn writes_that_do_not_continue_the_run_are_not_merged_past() {
        // A write to sector 0, then sector 5, then sector 1: only neighbours in queue order
        // merge, so nothing reorders writes to the same place.
        let mut q = VecDeque::new();
        let bio = |off: u64| Bio {
            op: BioOp::Write {
                offset: off * 512,
                data: vec![0; 512],
            },
            end_io: Box::new(|_| {}),
        };
        q.push_back(bio(5));
        q.push_back(bio(1));
        let batch = take_merges(&mut q, bio(0));
        assert_eq!(batch.len(), 1);
        assert_eq!(q.len(), 2);
        // At most MAX_MERGE_BIOS requests...
        let mut q: VecDeque<Bio> = (1..600).map(bio).collect();
        assert_eq!(take_merges(&mut q, bio(0)).len(), MAX_MERGE_BIOS);
        // ...and at most MAX_MERGE_BYTES.
        let big = |i: u64| Bio {
            op: BioOp::Write {
                offset: i * 8192,
                data: vec![0; 8192],
            },
            end_io: Box::new(|_| {}),
        };
        let mut q: VecDeque<Bio> = (1..600).map(big).collect();
        assert_eq!(take_merges(&mut q, big(0)).len(), MAX_MERGE_BYTES / 8192);
    }

    #[test]
    fn a_batch_wakes_one_completion_thread_per_request_it_merges_into() {
        let write = |sector: u64| Bio {
            op: BioOp::Write {
                offset: sector * 512,
                data: vec![0; 512],
            },
            end_io: Box::new(|_| {}),
        };
        let read = |sector: u64| Bio {
            op: BioOp::Read {
                offset: sector * 512,
                len: 512,
            },
            end_io: Box::new(|_| {}),
        };
        let flush = || Bio {
            op: BioOp::Flush,
            end_io: Box::new(|_| {}),
        };
        let count = |bios: Vec<Bio>| requests_in(&bios);
        assert_eq!(count((0..64).map(read).collect()), 1, "a readahead window");
        assert_eq!(count(vec![read(0), read(1), read(5), read(6)]), 2, "a gap");
        assert_eq!(count(vec![write(0), read(1)]), 2, "a change of direction");
        assert_eq!(
            count(vec![write(0), flush(), write(1)]),
            3,
            "a flush merges with nothing"
        );
        assert_eq!(
            count((0..2 * MAX_MERGE_BIOS as u64).map(write).collect()),
            2,
            "the merge limit"
        );
        // And what take_merges makes of the same batch, request by request.
        let mut q: VecDeque<Bio> = [0, 1, 5, 6, 7].map(read).into_iter().collect();
        let mut taken = Vec::new();
        while let Some(first) = q.pop_front() {
            taken.push(take_merges(&mut q, first).len());
        }
        assert_eq!(taken, [2, 3]);
    }

    #[test]
    fn a_lone_page_read_completes_on_its_submitter_unless_delayed_or_plugged() {
        let dev = Arc::new(MemDevice::new(8192));
        dev.write_at(512, &[9; 512]).expect("seed");
        let q = IoQueue::new(dev, 1, Duration::ZERO).expect("queue");
        let me = std::thread::current().id();
        let (tx, rx) = mpsc::channel();
        let read = |tx: &mpsc::Sender<bool>, buf: &Arc<RwLock<Vec<u8>>>| {
            let tx = tx.clone();
            vec![Bio {
                op: BioOp::ReadInto {
                    offset: 512,
                    buf: SegBuf::of(&[buf]),
                },
                end_io: Box::new(move |r| {
                    assert!(r.is_ok());
                    tx.send(std::thread::current().id() == me).expect("send");
                }),
            }]
        };
        let buf = seg(512);
        // No latency: done (end_io run here) by the time submit_batch returns.
        q.submit_batch(read(&tx, &buf));
        assert_eq!(rx.try_recv(), Ok(true), "completed inline, on this thread");
        assert!(buf.read().iter().all(|&x| x == 9));
        assert_eq!(
            (q.completed(), q.bytes().0),
            (1, 512),
            "counted as any request"
        );
        // Plugged: held like any other request, then completed by a completion thread.
        q.plug();
        q.submit_batch(read(&tx, &buf));
        assert!(rx.try_recv().is_err(), "plugged: nothing completes");
        assert_eq!(q.pending(), 1);
        q.unplug();
        assert_eq!(rx.recv(), Ok(false), "on a completion thread");
        // Injected latency: the device is slow, so the read goes to a completion thread.
        q.set_latency(Duration::from_nanos(1));
        q.submit_batch(read(&tx, &buf));
        assert_eq!(rx.recv(), Ok(false), "on a completion thread");
        // Longer than a page (a readahead bio): on a completion thread even with no latency,
        // so the reader copies out what it has while the device reads on.
        q.set_latency(Duration::ZERO);
        let (p0, p1) = (seg(4096), seg(4096));
        let tx2 = tx.clone();
        q.submit_batch(vec![Bio {
            op: BioOp::ReadInto {
                offset: 0,
                buf: SegBuf::of(&[&p0, &p1]),
            },
            end_io: Box::new(move |r| {
                assert!(r.is_ok());
                tx2.send(std::thread::current().id() == me).expect("send");
            }),
        }]);
        assert_eq!(
            rx.recv(),
            Ok(false),
            "a two-page read: on a completion thread"
        );
        assert!(p0.read()[512..1024].iter().all(|&x| x == 9));
        q.drain();
        assert_eq!(q.completed(), 4);
    }

    /// A caller-owned buffer for ReadInto: one segment per vector, in device order.
    struct SegBuf(Vec<Arc<RwLock<Vec<u8>>>>);

    impl SegBuf {
        fn of(segs: &[&Arc<RwLock<Vec<u8>>>]) -> Box<SegBuf> {
            Box::new(SegBuf(segs.iter().map(|&a| Arc::clone(a)).collect()))
        }
    }

    impl IoBuf for SegBuf {
        fn len(&self) -> usize {
            self.0.iter().map(|v| v.read().len()).sum()
        }

        fn borrow_segments<'s>(&'s self, out: &mut Vec<IoSeg<'s>>) {
            for seg in &self.0 {
                out.push(RwLockWriteGuard::map(seg.write(), |v| v.as_mut_slice()));
            }
        }
    }

    fn seg(len: usize) -> Arc<RwLock<Vec<u8>>> {
        Arc::new(RwLock::new(vec![0u8; len]))
    }

    /// Caller memory for WriteFrom: one segment per vector, in device order; `dropped` is set
    /// when the queue lets go of it.
    struct SrcBuf(Vec<Arc<RwLock<Vec<u8>>>>, Arc<AtomicBool>);

    impl IoSource for SrcBuf {
        fn len(&self) -> usize {
            self.0.iter().map(|v| v.read().len()).sum()
        }

        fn borrow_segments<'s>(&'s self, out: &mut Vec<IoSrcSeg<'s>>) {
            for seg in &self.0 {
                out.push(RwLockReadGuard::map(seg.read(), |v| v.as_slice()));
            }
        }
    }

    impl Drop for SrcBuf {
        fn drop(&mut self) {
            self.1.store(true, Ordering::SeqCst);
        }
    }

    #[test]
    fn writes_from_caller_memory_merge_with_copies_and_let_go_of_it_before_end_io() {
        let dev = Arc::new(MemDevice::new(8192));
        let q = IoQueue::new(dev.clone(), 1, Duration::ZERO).expect("queue");
        let (a, b) = (seg(512), seg(1024));
        a.write().fill(1);
        b.write().fill(2);
        let (tx, rx) = mpsc::channel();
        let dropped = Arc::new(AtomicBool::new(false));
        q.plug();
        let from = |offset, segs: Vec<Arc<RwLock<Vec<u8>>>>| {
            let (tx, dropped) = (tx.clone(), Arc::clone(&dropped));
            Bio {
                op: BioOp::WriteFrom {
                    offset,
                    buf: Box::new(SrcBuf(segs, Arc::clone(&dropped))),
                },
                end_io: Box::new(move |r: Result<Vec<u8>, FsError>| {
                    // Every op of the merged request is gone before the first end_io.
                    tx.send(r.is_ok() && dropped.load(Ordering::SeqCst))
                        .expect("send");
                }),
            }
        };
        // [0, 1536) from caller memory in two segments, [1536, 2048) a copy, [2048, 2560)
        // from caller memory again: one merged request of three bios.
        q.submit_batch(vec![
            from(0, vec![Arc::clone(&a), Arc::clone(&b)]),
            Bio {
                op: BioOp::Write {
                    offset: 1536,
                    data: vec![3; 512],
                },
                end_io: {
                    let tx = tx.clone();
                    Box::new(move |r| tx.send(r.is_ok()).expect("send"))
                },
            },
            from(2048, vec![seg(512)]),
        ]);
        assert_eq!(q.write_bytes_pending(), 2560);
        q.unplug();
        for _ in 0..3 {
            assert_eq!(rx.recv(), Ok(true));
        }
        q.drain();
        assert_eq!(q.dispatched(), 1, "merged into one request");
        assert_eq!(q.bytes().1, 2560);
        let snap = dev.snapshot();
        assert!(snap[..512].iter().all(|&x| x == 1));
        assert!(snap[512..1536].iter().all(|&x| x == 2));
        assert!(snap[1536..2048].iter().all(|&x| x == 3));
        assert!(snap[2048..2560].iter().all(|&x| x == 0));
        // On its own, in one segment.
        a.write().fill(4);
        dropped.store(false, Ordering::SeqCst);
        q.submit(from(4096, vec![Arc::clone(&a)]));
        assert_eq!(rx.recv(), Ok(true));
        q.drain();
        assert!(dev.snapshot()[4096..4608].iter().all(|&x| x == 4));
        assert_eq!(q.write_bytes_pending(), 0);
    }

    #[test]
    fn reads_into_caller_memory_merge_with_plain_reads() {
        let dev = Arc::new(MemDevice::new(4096));
        dev.write_at(0, &[3; 512]).expect("seed");
        dev.write_at(512, &[4; 512]).expect("seed");
        dev.write_at(1024, &[5; 512]).expect("seed");
        dev.write_at(1536, &[6; 512]).expect("seed");
        let q = IoQueue::new(dev, 1, Duration::ZERO).expect("queue");
        let (a, b, c) = (seg(512), seg(512), seg(512));
        let (tx, rx) = mpsc::channel();
        let done = |tx: &mpsc::Sender<usize>| {
            let tx = tx.clone();
            Box::new(move |r: Result<Vec<u8>, FsError>| {
                tx.send(
                    r.map(|d| d.first().map_or(0, |&x| usize::from(x)))
                        .expect("ok"),
                )
                .expect("send");
            }) as EndIo
        };
        q.submit_batch(vec![
            Bio {
                op: BioOp::ReadInto {
                    offset: 0,
                    buf: SegBuf::of(&[&a]),
                },
                end_io: done(&tx),
            },
            Bio {
                op: BioOp::Read {
                    offset: 512,
                    len: 512,
                },
                end_io: done(&tx),
            },
            Bio {
                op: BioOp::ReadInto {
                    offset: 1024,
                    buf: SegBuf::of(&[&b, &c]),
                },
                end_io: done(&tx),
            },
        ]);
        let got: Vec<usize> = (0..3).map(|_| rx.recv().expect("completion")).collect();
        assert_eq!(
            got,
            vec![0, 4, 0],
            "ReadInto completes with an empty vector"
        );
        assert!(a.read().iter().all(|&x| x == 3));
        assert!(b.read().iter().all(|&x| x == 5));
        assert!(
            c.read().iter().all(|&x| x == 6),
            "a buffer's second segment gets the bytes after its first's"
        );
        q.drain();
        assert_eq!(q.dispatched(), 1, "one device request for the three");
    }
}
