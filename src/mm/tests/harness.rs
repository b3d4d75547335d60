//! Running a loom model with a default bound, counting iterations, expecting or refusing a BUG.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use crate::bug::OnBug;
use crate::mm::{CacheConfig, Era, PageCache};
use crate::sync::Arc;

/// The preemption bound: `LOOM_MAX_PREEMPTIONS`, else 3.
fn bound() -> usize {
    std::env::var("LOOM_MAX_PREEMPTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
}

/// A cache for a model: BUGs panic (so loom reports the interleaving), no history (it is
/// invisible to loom anyway and costs time per iteration).
pub(super) fn model_cache(era: Era, frames: usize) -> Arc<PageCache> {
    let mut cfg = CacheConfig::new(era, frames);
    cfg.on_bug = OnBug::Panic;
    cfg.history = false;
    PageCache::new(cfg).expect("cache")
}

/// What one exploration found.
#[derive(Debug)]
pub(super) struct Found {
    /// Iterations run (up to and including the failing one).
    pub(super) iterations: usize,
    /// The panic message of the failing iteration, if one failed.
    pub(super) failure: Option<String>,
}

/// Explore `f` at the default bound; a panic in any interleaving ends the search.
pub(super) fn explore<F>(name: &str, f: F) -> Found
where
    F: Fn() + Sync + Send + 'static,
{
    let iterations = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = std::sync::Arc::clone(&iterations);
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(bound());
    b.max_branches = 20_000;
    let start = Instant::now();
    let r = catch_unwind(AssertUnwindSafe(move || {
        if std::env::var("FATCACHE_LOOM_MODEL").is_ok() {
            loom::model(move || {
                counter.fetch_add(1, Ordering::Relaxed);
                f();
            });
            return;
        }
        b.check(move || {
            counter.fetch_add(1, Ordering::Relaxed);
            f();
        })
    }));
    let failure = r.err().map(|e| {
        e.downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "non-string panic".to_string())
    });
    let found = Found {
        iterations: iterations.load(Ordering::Relaxed),
        failure,
    };
    // The figures the issue notes ask for: interleavings and time per era and scenario.
    println!(
        "RESULT {name} bound={} iterations={} time={:.2}s {}",
        bound(),
        found.iterations,
        start.elapsed().as_secs_f64(),
        if found.failure.is_some() {
            "FOUND"
        } else {
            "clean"
        }
    );
    found
}

/// Assert the model reaches the write_cache_pages BUG (`expect_bug`) or never does.
pub(super) fn check_era(name: &str, era: Era, expect_bug: bool, found: &Found) {
    match (&found.failure, expect_bug) {
        (Some(msg), true) => assert!(
            msg.contains("BUG at src/mm/writeback.rs") && msg.contains("p.writeback()"),
            "{name} {era}: a failure, but not the write_cache_pages BUG:\n{msg}"
        ),
        (None, true) => panic!(
            "{name} {era}: the BUG was not found in {} iterations",
            found.iterations
        ),
        (Some(msg), false) => panic!("{name} {era}: unexpected failure:\n{msg}"),
        (None, false) => {}
    }
}
