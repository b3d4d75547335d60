//! Running a loom model with a default bound, counting iterations, expecting or refusing a BUG.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use crate::bug::OnBug;
use crate::error::FsError;
use crate::mm::aops::AddressSpaceOps;
use crate::mm::filemap::AddressSpace;
use crate::mm::waitqueue::unlock_page;
use crate::mm::writeback::{WritebackControl, set_page_writeback};
use crate::mm::{CacheConfig, Era, PageCache, PageRef};
use crate::sync::Arc;

/// writepage that starts writeback and leaves its completion to the model.
pub(super) struct StartOnly;

impl AddressSpaceOps for StartOnly {
    fn writepage(
        &self,
        _m: &AddressSpace,
        page: &PageRef<'_>,
        _wbc: &mut WritebackControl,
    ) -> Result<(), FsError> {
        set_page_writeback(page.page());
        unlock_page(page.page());
        Ok(())
    }
}

/// The preemption bound: `LOOM_MAX_PREEMPTIONS` when set, else `default`.
///
/// Defaults are what fits CI (10 minutes for the loom step on the shared 2-core machine); deeper
/// runs are a matter of setting the variable. The figures per scenario, era and bound are in
/// the README (section 9).
pub(super) fn bound(default: usize) -> usize {
    std::env::var("LOOM_MAX_PREEMPTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The default bound for an S1/S2 exploration: 2 where the BUG is expected (found within a few
/// thousand interleavings), `clean` for the exhaustive clean proofs (what the scenario's state
/// space allows in CI).
pub(super) fn scenario_bound(expect_bug: bool, clean: usize) -> usize {
    bound(if expect_bug { 2 } else { clean })
}

/// The eras to explore: `FATCACHE_LOOM_ERAS=v5.10,v5.11` narrows a run; default all.
pub(super) fn eras() -> Vec<Era> {
    match std::env::var("FATCACHE_LOOM_ERAS") {
        Ok(list) => list
            .split(',')
            .map(|e| e.trim().parse().expect("known era"))
            .collect(),
        Err(_) => crate::mm::ALL_ERAS.to_vec(),
    }
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

/// Explore `f` up to `bound` preemptions; a panic in any interleaving ends the search.
pub(super) fn explore<F>(name: &str, bound: usize, f: F) -> Found
where
    F: Fn() + Sync + Send + 'static,
{
    let iterations = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = std::sync::Arc::clone(&iterations);
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(bound);
    b.max_branches = 20_000;
    // loom stops early, silently and without a failure, when LOOM_MAX_PERMUTATIONS or
    // LOOM_MAX_DURATION runs out, and a run that starts from an existing LOOM_CHECKPOINT_FILE
    // counts only the iterations after it: say so, so neither passes for a complete proof.
    let partial = if b.max_permutations.is_some() || b.max_duration.is_some() {
        " (capped by LOOM_MAX_PERMUTATIONS/LOOM_MAX_DURATION: not a complete exploration)"
    } else if b.checkpoint_file.as_ref().is_some_and(|f| f.exists()) {
        " (resumed from LOOM_CHECKPOINT_FILE: iterations since the checkpoint)"
    } else {
        ""
    };
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
        "RESULT {name} bound={} iterations={} time={:.2}s {}{partial}",
        bound,
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
