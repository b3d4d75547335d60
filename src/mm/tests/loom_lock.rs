//! The page lock and the writeback wait on their own: mutual exclusion and no lost wake-up, in
//! every era (loom fails a model that deadlocks, i.e. a waiter nobody wakes).

use super::harness::{bound, eras, explore, model_cache};
use crate::mm::PG;
use crate::mm::filemap::end_page_writeback;
use crate::mm::waitqueue::{lock_page, unlock_page, wait_on_page_bit};
use crate::mm::writeback::set_page_writeback;
use crate::sync::{Arc, AtomicU32, Ordering};

#[test]
fn lock_page_excludes_and_never_loses_a_wakeup() {
    for era in eras() {
        let found = explore(&format!("lock {era}"), bound(2), move || {
            let cache = model_cache(era, 1);
            let pfn = cache.alloc_page().expect("frame").into_raw().pfn();
            let inside = Arc::new(AtomicU32::new(0));
            let threads: Vec<_> = (0..3)
                .map(|_| {
                    let (c, n) = (Arc::clone(&cache), Arc::clone(&inside));
                    loom::thread::spawn(move || {
                        let p = c.page(pfn);
                        lock_page(p);
                        assert_eq!(n.fetch_add(1, Ordering::AcqRel), 0, "two lock holders");
                        n.fetch_sub(1, Ordering::AcqRel);
                        unlock_page(p);
                    })
                })
                .collect();
            for t in threads {
                t.join().expect("model thread");
            }
            assert!(!cache.page(pfn).locked());
        });
        assert!(found.failure.is_none(), "{era}: {:?}", found.failure);
    }
}

#[test]
fn writeback_waiter_is_always_woken() {
    for era in eras() {
        let found = explore(&format!("wb-wait {era}"), bound(3), move || {
            let cache = model_cache(era, 1);
            let p = cache.alloc_page().expect("frame").into_raw();
            lock_page(p);
            set_page_writeback(p);
            unlock_page(p);
            let pfn = p.pfn();
            let c = Arc::clone(&cache);
            let waiter = loom::thread::spawn(move || {
                let p = c.page(pfn);
                while p.writeback() {
                    wait_on_page_bit(p, PG::Writeback);
                }
            });
            let c = Arc::clone(&cache);
            let ender = loom::thread::spawn(move || end_page_writeback(c.page(pfn)));
            waiter.join().expect("waiter");
            ender.join().expect("ender");
        });
        assert!(found.failure.is_none(), "{era}: {:?}", found.failure);
    }
}

/// The shim's checked mutex itself: no lost update, no deadlock.
#[test]
fn shim_mutex_counts() {
    let found = explore("shim-mutex", bound(3), || {
        let m = Arc::new(crate::sync::Mutex::new(0u32));
        let ts: Vec<_> = (0..3)
            .map(|_| {
                let m = Arc::clone(&m);
                loom::thread::spawn(move || {
                    for _ in 0..2 {
                        *m.lock() += 1;
                    }
                })
            })
            .collect();
        for t in ts {
            t.join().expect("t");
        }
        assert_eq!(*m.lock(), 6);
    });
    assert!(found.failure.is_none(), "{:?}", found.failure);
}
