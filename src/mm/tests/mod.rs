//! Model-checked tests of the page-cache protocol.
//!
//! Run with `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=3 cargo test --release
//! --target-dir target/loom --lib mm::tests -- --test-threads=1`.
//!
//! loom runs the production code of `mm/` (every flag RMW, reference count, bucket lock,
//! i_pages lock and park/unpark goes through `crate::sync`) over every interleaving up to the
//! preemption bound. The scenarios are SEMANTICS section 5's S1 and S2; each test asserts that
//! the write_cache_pages BUG is found under the eras kernel history says had it, and that no
//! interleaving reaches it under the others. loom also fails a model on a deadlock, so the
//! clean runs prove no lost wake-up as well.
//!
//! S2 has two models: the concurrent one (truncate and B's owner on separate threads, so reclaim
//! can take the frame too), clean-checked at bound 1, and `S2min`, S2 in exactly SEMANTICS 5's
//! order on two threads, clean-checked at bound 3 (see `loom_s2.rs`).
//!
//! What keeps the models small: the caches keep no event history, so no flags load feeds one
//! (`Page::flags_for_record`); statistics, the history and the stale-wake oracle's fields are
//! `sync::unchecked` (invisible to loom); the oracle reads the flags word only for a wake that
//! may be stale. None of these steers the protocol. Everything that does (flags, reference
//! counts, owner fields, bucket, i_pages, LRU and free-list locks, sleepers) stays modelled.
//!
//! Each exploration prints `RESULT <name> bound=N iterations=N time=Ns FOUND|clean`. To narrate
//! a failing schedule, set `FATCACHE_LOOM_MODEL=1 LOOM_LOG=trace` (the harness then runs
//! `loom::model`, which installs loom's log subscriber).

#![cfg(loom)]

mod harness;
mod loom_lock;
mod loom_s1;
mod loom_s2;
