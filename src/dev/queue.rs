//! The I/O queue: requests go in from any thread and are carried out, after the configured
//! latency, by a pool of completion threads that then run each request's `end_io`.
//!
//! This is where "the I/O completes on another CPU, later" comes from: end_page_writeback runs
//! on a completion thread, never on the thread that started the writeback.

use std::collections::VecDeque;
use std::time::Duration;

use crate::dev::BlockDevice;
use crate::error::FsError;
use crate::sync::Arc;
use crate::sync::unchecked::{AtomicU64, Condvar, Mutex, Ordering};

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
    /// Write `data` at `offset`.
    Write {
        /// Byte offset.
        offset: u64,
        /// The bytes.
        data: Vec<u8>,
    },
    /// Make completed writes durable.
    Flush,
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
    plugged: bool,
    shutdown: bool,
}

struct Shared {
    dev: Arc<dyn BlockDevice>,
    state: Mutex<State>,
    work: Condvar,
    idle: Condvar,
    latency_ns: AtomicU64,
    completed: AtomicU64,
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
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
            dev,
            state: Mutex::new(State::default()),
            work: Condvar::new(),
            idle: Condvar::new(),
            latency_ns: AtomicU64::new(u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX)),
            completed: AtomicU64::new(0),
            bytes_read: AtomicU64::new(0),
            bytes_written: AtomicU64::new(0),
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

    /// Queue a request; its `end_io` runs later on a completion thread.
    pub fn submit(&self, bio: Bio) {
        let mut st = self.shared.state.lock();
        st.queue.push_back(bio);
        drop(st);
        self.shared.work.notify_one();
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

    /// Requests queued or running.
    pub fn pending(&self) -> usize {
        let st = self.shared.state.lock();
        st.queue.len() + st.in_flight
    }

    /// Requests completed so far.
    pub fn completed(&self) -> u64 {
        self.shared.completed.load(Ordering::Relaxed)
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
        for h in self.threads.drain(..) {
            if h.join().is_err() {
                log::error!("i/o completion thread panicked");
            }
        }
    }
}

fn completion_thread(s: &Shared) {
    loop {
        let bio = {
            let mut st = s.state.lock();
            loop {
                if !st.plugged {
                    if let Some(b) = st.queue.pop_front() {
                        st.in_flight += 1;
                        break b;
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
        let result = match &bio.op {
            BioOp::Read { offset, len } => {
                let mut buf = vec![0u8; *len];
                s.bytes_read.fetch_add(*len as u64, Ordering::Relaxed);
                s.dev.read_at(*offset, &mut buf).map(|()| buf)
            }
            BioOp::Write { offset, data } => {
                s.bytes_written
                    .fetch_add(data.len() as u64, Ordering::Relaxed);
                s.dev.write_at(*offset, data).map(|()| Vec::new())
            }
            BioOp::Flush => s.dev.flush().map(|()| Vec::new()),
        };
        (bio.end_io)(result);
        s.completed.fetch_add(1, Ordering::Relaxed);
        let mut st = s.state.lock();
        st.in_flight -= 1;
        if st.queue.is_empty() && st.in_flight == 0 {
            s.idle.notify_all();
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::dev::MemDevice;
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
}
