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
//! Each exploration prints `RESULT <name> bound=N iterations=N time=Ns FOUND|clean`. To narrate
//! a failing schedule, set `FATCACHE_LOOM_MODEL=1 LOOM_LOG=trace` (the harness then runs
//! `loom::model`, which installs loom's log subscriber).

#![cfg(loom)]

mod harness;
mod loom_lock;
mod loom_s1;
mod loom_s2;
