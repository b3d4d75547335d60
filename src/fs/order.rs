//! Write-order constraints between dirty metadata blocks: "block A, as it is now, reaches the
//! disk no later than block B".
//!
//! A metadata write sends many blocks at once and the I/O threads land them in any order, so
//! a process killed mid-write can leave any subset of them on the disk. Most of what FAT
//! needs is ordered by the write's phases (the tables before the directories), but some
//! orders run between blocks of one phase: a chain's link into newly allocated clusters must
//! not land before the new clusters' own entries, or the chain runs into clusters that are
//! free on the disk; a truncated chain's new end must land before the freeing of its tail.
//! The filesystem records such an order here as it makes the change, and the next metadata
//! write sends its blocks in waves that respect every order among them (see
//! [`BlockOrder::waves`]), instead of the writer waiting for a whole metadata write between
//! the two changes.
//!
//! The kernel has no such thing: its FAT leaves the order of metadata blocks to the buffer
//! cache and is not crash-safe across them. This is fatcache's own guarantee (README,
//! "Deviations").

use rustc_hash::{FxHashMap, FxHashSet};

/// The most blocks a cycle search visits before it gives up and reports a (possible) cycle:
/// the caller then orders the two changes with a full metadata write, which is always
/// correct, just slower.
const SEARCH_LIMIT: usize = 4096;

/// A directed acyclic graph over block numbers: an edge `a -> b` means block `a` must reach
/// the disk no later than block `b`. Edges leave the graph once a metadata write has put
/// their first block on the disk (see [`BlockOrder::written`]).
#[derive(Debug, Default)]
pub struct BlockOrder {
    /// For each block, the blocks that must land after it.
    after: FxHashMap<u64, Vec<u64>>,
    /// For each block that must land after some other, how many such others.
    preds: FxHashMap<u64, u32>,
}

impl BlockOrder {
    /// Whether no order is recorded.
    pub fn is_empty(&self) -> bool {
        self.after.is_empty()
    }

    /// Records that `first` lands no later than `then`; false (and nothing recorded) if the
    /// graph already requires the reverse, or if finding out took more than
    /// [`SEARCH_LIMIT`] steps. A block is always ordered with itself: it is written whole.
    pub fn add(&mut self, first: u64, then: u64) -> bool {
        if first == then || self.after.get(&first).is_some_and(|v| v.contains(&then)) {
            return true;
        }
        // A cycle through the new edge needs a path then -> ... -> first, so `first` must
        // already have a predecessor; the common case (a freshly allocated block) has none,
        // and pays no search.
        if self.preds.contains_key(&first) && self.reaches(then, first) {
            return false;
        }
        self.after.entry(first).or_default().push(then);
        *self.preds.entry(then).or_insert(0) += 1;
        true
    }

    /// Whether a path `from -> ... -> to` exists; true as well when the search is cut short.
    fn reaches(&self, from: u64, to: u64) -> bool {
        let mut seen = FxHashSet::default();
        seen.insert(from);
        let mut stack = vec![from];
        while let Some(b) = stack.pop() {
            if b == to {
                return true;
            }
            for &n in self.after.get(&b).into_iter().flatten() {
                if seen.insert(n) {
                    if seen.len() > SEARCH_LIMIT {
                        log::debug!("block order: search from {from} cut at {SEARCH_LIMIT}");
                        return true;
                    }
                    stack.push(n);
                }
            }
        }
        false
    }

    /// The wave of each of `blocks` (the blocks one metadata write is about to send): wave 0
    /// first, each wave on the disk before the next is sent; a block is in the wave after the
    /// latest of the blocks among `blocks` that must land before it. Blocks not in the map
    /// are in wave 0. Orders through a block outside `blocks` are not followed: such a block
    /// is either on the disk already or carries a change made after this write's copies (and
    /// so did every change ordered after it).
    pub fn waves(&self, blocks: &FxHashSet<u64>) -> FxHashMap<u64, u32> {
        let mut level: FxHashMap<u64, u32> = FxHashMap::default();
        if self.after.is_empty() {
            return level;
        }
        // Kahn's algorithm over the edges among `blocks`, keeping the longest path to each.
        let mut indeg: FxHashMap<u64, u32> = FxHashMap::default();
        for (&a, next) in self.after.iter().filter(|(a, _)| blocks.contains(a)) {
            indeg.entry(a).or_insert(0);
            for &b in next.iter().filter(|b| blocks.contains(b)) {
                *indeg.entry(b).or_insert(0) += 1;
            }
        }
        let mut ready: Vec<u64> = indeg
            .iter()
            .filter(|&(_, &d)| d == 0)
            .map(|(&b, _)| b)
            .collect();
        let mut placed = 0usize;
        while let Some(a) = ready.pop() {
            placed += 1;
            let la = *level.entry(a).or_insert(0);
            for &b in self.after.get(&a).into_iter().flatten() {
                let Some(d) = indeg.get_mut(&b) else {
                    continue;
                };
                let lb = level.entry(b).or_insert(0);
                *lb = (*lb).max(la + 1);
                *d -= 1;
                if *d == 0 {
                    ready.push(b);
                }
            }
        }
        if placed < indeg.len() {
            // `add` never closes a cycle, so this is a bug; write the blocks left over last
            // rather than not at all.
            let last = level.values().copied().max().unwrap_or(0) + 1;
            log::error!(
                "block order: a cycle among {} blocks; writing them last",
                indeg.len() - placed
            );
            for (&b, &d) in &indeg {
                if d > 0 {
                    level.insert(b, last);
                }
            }
        }
        level
    }

    /// A metadata write has sent `blocks` (successfully or not): every order from one of them
    /// is spent. Its block's change, made before the order was recorded, was in the copy the
    /// write took: the block was dirty then, and stayed locked from the copy to the end of
    /// the write, so it could not change in between.
    pub fn written(&mut self, blocks: &FxHashSet<u64>) {
        if self.after.is_empty() {
            return;
        }
        for b in blocks {
            for n in self.after.remove(b).into_iter().flatten() {
                if let Some(p) = self.preds.get_mut(&n) {
                    *p -= 1;
                    if *p == 0 {
                        self.preds.remove(&n);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(blocks: &[u64]) -> FxHashSet<u64> {
        blocks.iter().copied().collect()
    }

    #[test]
    fn a_chain_of_orders_is_a_wave_per_block_and_unrelated_blocks_go_first() {
        let mut o = BlockOrder::default();
        // An extension per block, each linking from the block before into the next: the
        // newest block first.
        for b in 1..5u64 {
            assert!(o.add(b + 1, b));
        }
        let w = o.waves(&set(&[1, 2, 3, 4, 5, 9]));
        assert_eq!(
            (1..=5).map(|b| w[&b]).collect::<Vec<_>>(),
            [4, 3, 2, 1, 0],
            "{w:?}"
        );
        assert_eq!(w.get(&9), None, "an unordered block is in wave 0");
        // Only orders among the blocks being written count.
        let w = o.waves(&set(&[1, 3, 5]));
        assert!(w.values().all(|&l| l == 0), "{w:?}");
    }

    #[test]
    fn an_order_that_would_close_a_cycle_is_refused_and_written_ones_are_spent() {
        let mut o = BlockOrder::default();
        assert!(o.add(2, 1));
        assert!(o.add(3, 2));
        assert!(!o.add(1, 3), "3 -> 2 -> 1 already");
        assert!(!o.add(1, 2));
        assert!(o.add(2, 1), "a repeat is fine");
        assert!(o.add(1, 1), "a block with itself is fine");
        // Block 2 written: 2 -> 1 is spent, 3 -> 2 stays (3 is not on the disk yet).
        o.written(&set(&[2]));
        assert!(o.add(1, 3), "1 no longer has to wait for anything");
        assert!(!o.add(2, 3), "3 -> 2 still stands");
        o.written(&set(&[1, 3]));
        assert!(o.is_empty());
        assert!(o.preds.is_empty(), "counts go with their edges");
    }

    #[test]
    fn a_search_past_the_limit_counts_as_a_cycle() {
        let mut o = BlockOrder::default();
        // A long chain n -> n-1 -> ... -> 0, and an acyclic order asked from a block with a
        // predecessor to the chain's head: proving it acyclic walks the whole chain.
        let n = SEARCH_LIMIT as u64 + 10;
        for b in 0..n {
            assert!(o.add(b + 1, b));
        }
        assert!(o.add(n + 3, n + 2), "a fresh block pays no search");
        assert!(!o.add(n + 2, n), "too far to prove acyclic");
        assert!(o.add(n + 2, 5), "a short search proves it");
    }
}
