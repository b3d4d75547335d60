//! The one place that names concurrency primitives.
//!
//! Everything in `mm/` (and every other module that synchronizes) imports its atomics, locks and
//! thread operations from here. A normal build gets the real things (std atomics, std threads and
//! park/unpark, parking_lot locks); a `--cfg loom` build gets loom's, so the model checker explores
//! the production code itself, not a copy of it (see `../shared/MODELCHECK.md`).
//!
//! Two families:
//! * **checked** (the crate root of this module): what the protocol is made of: page flags,
//!   reference counts, wait-queue buckets, the i_pages lock. loom sees and permutes every access.
//! * [`unchecked`]: bookkeeping the protocol never depends on (statistics, the per-frame event
//!   history, diagnostics). These are always the real primitives, invisible to loom. Rule: never
//!   perform a checked operation while holding an unchecked lock, or loom (which runs every model
//!   thread on one OS thread) can block the whole process on it.
//!
//! Sleeping is a per-waiter [`Sleeper`] (park/unpark in production, a loom `Notify` under loom)
//! with a WOKEN flag beside it; parking_lot's own parking is never used by checked code (it hangs
//! loom).

#[cfg(not(loom))]
mod imp {
    pub(crate) use parking_lot::{Mutex, MutexGuard};
    pub(crate) use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
    pub(crate) use std::thread;

    /// A sleeping place for one thread: what a wait-queue entry sleeps on.
    ///
    /// Production: park/unpark of the thread that created it (futex-based in std).
    #[derive(Debug)]
    pub(crate) struct Sleeper(std::thread::Thread);

    impl Sleeper {
        /// A sleeper for the calling thread.
        pub(crate) fn new() -> Self {
            Sleeper(std::thread::current())
        }
        /// Sleep until woken (or spuriously); only the creating thread may call it.
        pub(crate) fn sleep(&self) {
            std::thread::park();
        }
        /// Wake the sleeper, or make its next sleep return at once.
        pub(crate) fn wake(&self) {
            self.0.unpark();
        }
    }

    /// Spin-loop hint; loom turns it into a yield.
    #[inline]
    pub(crate) fn spin_loop() {
        std::hint::spin_loop();
    }
}

#[cfg(loom)]
mod imp {
    pub(crate) use loom::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
    pub(crate) use loom::thread;

    /// A sleeping place for one thread, on a loom `Notify`.
    ///
    /// Why not park/unpark under loom: loom's `unpark` makes a thread runnable even while it is
    /// blocked on a loom mutex, which then fails loom's own lock assertion; a waker can unpark a
    /// thread that has meanwhile gone on to wait for a lock. A `Notify` only wakes a thread
    /// waiting on that very object, and keeps the token semantics of park/unpark.
    #[derive(Debug)]
    pub(crate) struct Sleeper(loom::sync::Notify);

    impl Sleeper {
        pub(crate) fn new() -> Self {
            Sleeper(loom::sync::Notify::new())
        }
        pub(crate) fn sleep(&self) {
            self.0.wait();
        }
        pub(crate) fn wake(&self) {
            self.0.notify();
        }
    }

    /// A loom mutex with parking_lot's API shape (no poisoning), so call sites are identical.
    #[derive(Debug)]
    pub(crate) struct Mutex<T>(loom::sync::Mutex<T>);

    /// Guard of [`Mutex`].
    pub(crate) type MutexGuard<'a, T> = loom::sync::MutexGuard<'a, T>;

    impl<T> Mutex<T> {
        pub(crate) fn new(v: T) -> Self {
            Mutex(loom::sync::Mutex::new(v))
        }
        pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
            // A poisoned lock means a model thread panicked (a BUG under the panic policy);
            // the model is over either way, so hand out the guard and let loom report the panic.
            self.0.lock().unwrap_or_else(|e| e.into_inner())
        }
    }

    /// Spin-loop hint; loom turns it into a yield so spin loops terminate.
    #[inline]
    pub(crate) fn spin_loop() {
        loom::hint::spin_loop();
    }
}

pub(crate) use imp::*;

/// Reference counting is never part of the modelled protocol: always std's `Arc` (loom's Arc
/// aborts the test binary when a model panics; tokio-rs/loom#291).
pub(crate) use std::sync::Arc;

/// Primitives the model checker must not see: statistics, histories, diagnostics.
pub(crate) mod unchecked {
    pub(crate) use parking_lot::MutexGuard;
    pub(crate) use parking_lot::{Condvar, Mutex, RwLock};
    pub(crate) use parking_lot::{
        MappedRwLockReadGuard, MappedRwLockWriteGuard, RwLockReadGuard, RwLockWriteGuard,
    };
    pub(crate) use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
}

/// A small number naming the calling thread in event histories and reports.
///
/// Production threads get consecutive numbers in the order they first record something; the
/// name of each is kept so a report can print `fatcache-io-1 (t7)` instead of a bare number.
pub(crate) fn thread_tag() -> u32 {
    #[cfg(not(loom))]
    {
        use std::cell::Cell;
        std::thread_local! {
            static TAG: Cell<u32> = const { Cell::new(0) };
        }
        TAG.with(|t| {
            if t.get() == 0 {
                t.set(register_thread(std::thread::current().name()));
            }
            t.get()
        })
    }
    #[cfg(loom)]
    {
        // Every loom model thread runs on the same OS thread, so a thread-local cannot tell them
        // apart; loom's ThreadId prints as "ThreadId(N)" and N is what we want.
        let id = format!("{:?}", loom::thread::current().id());
        id.chars()
            .filter(|c| c.is_ascii_digit())
            .collect::<String>()
            .parse()
            .unwrap_or(0)
    }
}

#[cfg(not(loom))]
static THREAD_NAMES: unchecked::Mutex<Vec<String>> = unchecked::Mutex::new(Vec::new());

#[cfg(not(loom))]
fn register_thread(name: Option<&str>) -> u32 {
    let mut names = THREAD_NAMES.lock();
    names.push(name.unwrap_or("unnamed").to_string());
    u32::try_from(names.len()).unwrap_or(u32::MAX)
}

/// The name a thread had when it was given `tag`, for reports.
pub(crate) fn thread_name(tag: u32) -> String {
    #[cfg(not(loom))]
    {
        let names = THREAD_NAMES.lock();
        let idx = tag as usize;
        match names.get(idx.wrapping_sub(1)) {
            Some(n) => format!("{n} (t{tag})"),
            None => format!("t{tag}"),
        }
    }
    #[cfg(loom)]
    {
        format!("loom-thread-{tag}")
    }
}
