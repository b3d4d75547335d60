//! The page-cache index: page index -> frame, with three marks (tags) per entry.
//!
//! Models: lib/xarray.c as the page cache uses it (xa_load, xa_store, xa_erase, xa_set_mark,
//! xa_clear_mark, xa_find_marked via find_get_pages_range_tag) (v5.10), reduced to one level of
//! 64-slot nodes.
//!
//! Nodes are found by hash (O(1) for a lookup); each node keeps a bitmap per mark, and for each
//! mark an ordered set holds the nodes that have that mark anywhere, updated only when a node's
//! mark bitmap turns empty or non-empty - the role of the xarray's mark propagation up the tree.
//! So a marked lookup visits only nodes that hold marked entries: its cost grows with the
//! entries marked, never with the entries stored.

use std::collections::BTreeSet;

use rustc_hash::FxHashMap;

/// Entries per node.
const NODE_SHIFT: u32 = 6;
const NODE_SLOTS: u64 = 1 << NODE_SHIFT;
const NODE_MASK: u64 = NODE_SLOTS - 1;

/// The three page-cache marks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mark {
    /// PAGECACHE_TAG_DIRTY.
    Dirty = 0,
    /// PAGECACHE_TAG_WRITEBACK.
    Writeback = 1,
    /// PAGECACHE_TAG_TOWRITE.
    Towrite = 2,
}

#[derive(Debug)]
struct Node {
    slot: [u32; NODE_SLOTS as usize],
    present: u64,
    marks: [u64; 3],
}

/// An index -> frame map with marks.
///
/// Empty, it is one null pointer: every file the mount knows has a mapping, and most have no
/// page cached (10,000 known files cost 1.3 MiB of empty maps and sets otherwise).
#[derive(Debug, Default)]
pub struct XArray {
    inner: Option<Box<Inner>>,
}

/// The nodes and mark sets of a non-empty [`XArray`].
#[derive(Debug, Default)]
struct Inner {
    nodes: FxHashMap<u64, Box<Node>>,
    /// Node ids holding entries, in order (range scans, truncate).
    order: BTreeSet<u64>,
    /// Per mark, node ids holding an entry with that mark.
    marked: [BTreeSet<u64>; 3],
    len: usize,
}

/// Bits of the slots `[from, to]` (node-relative, inclusive) of one node.
fn span(from: u64, to: u64) -> u64 {
    let hi = if to >= NODE_MASK {
        u64::MAX
    } else {
        (1u64 << (to + 1)) - 1
    };
    hi & !((1u64 << from) - 1)
}

impl XArray {
    /// Entries stored.
    pub fn len(&self) -> usize {
        self.inner.as_ref().map_or(0, |i| i.len)
    }

    /// True when nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// xa_load.
    #[inline]
    pub fn get(&self, index: u64) -> Option<u32> {
        self.inner.as_ref()?.get(index)
    }

    /// Store `pfn` at `index` if the slot is empty; false if it was taken.
    pub fn insert(&mut self, index: u64, pfn: u32) -> bool {
        self.inner.get_or_insert_default().insert(index, pfn)
    }

    /// Erase the entry at `index` if it is `pfn`, with all its marks; true if it was.
    pub fn remove(&mut self, index: u64, pfn: u32) -> bool {
        let Some(inner) = self.inner.as_mut() else {
            return false;
        };
        let removed = inner.remove(index, pfn);
        if inner.len == 0 {
            self.inner = None;
        }
        removed
    }

    /// Set or clear `mark` on the entry at `index`, if that entry is `pfn`.
    #[inline]
    pub fn set_mark(&mut self, index: u64, pfn: u32, mark: Mark, on: bool) {
        if let Some(inner) = self.inner.as_mut() {
            inner.set_mark(index, pfn, mark, on);
        }
    }

    /// Does any entry carry `mark`?
    pub fn marked(&self, mark: Mark) -> bool {
        self.inner
            .as_ref()
            .is_some_and(|i| !i.marked[mark as usize].is_empty())
    }

    /// Up to `max` (index, frame) pairs carrying `mark` with index in `[start, end]`, in order.
    pub fn find_marked(&self, mark: Mark, start: u64, end: u64, max: usize) -> Vec<(u64, u32)> {
        self.inner
            .as_ref()
            .map_or_else(Vec::new, |i| i.find_marked(mark, start, end, max))
    }

    /// Up to `max` (index, frame) pairs with index in `[start, end)`, in order.
    pub fn find_range(&self, start: u64, end: u64, max: usize) -> Vec<(u64, u32)> {
        self.inner
            .as_ref()
            .map_or_else(Vec::new, |i| i.find_range(start, end, max))
    }

    /// Add `to` to every entry in `[start, end]` that carries `from` (tag_pages_for_writeback).
    pub fn copy_mark(&mut self, from: Mark, to: Mark, start: u64, end: u64) {
        if let Some(inner) = self.inner.as_mut() {
            inner.copy_mark(from, to, start, end);
        }
    }

    /// Every index carrying `mark` (tests and diagnostics).
    pub fn marked_indexes(&self, mark: Mark) -> Vec<u64> {
        self.find_marked(mark, 0, u64::MAX, usize::MAX)
            .into_iter()
            .map(|(i, _)| i)
            .collect()
    }
}

/// The operations of [`XArray`] on a map holding entries, each as documented there.
impl Inner {
    fn get(&self, index: u64) -> Option<u32> {
        let node = self.nodes.get(&(index >> NODE_SHIFT))?;
        let bit = 1u64 << (index & NODE_MASK);
        (node.present & bit != 0).then(|| node.slot[(index & NODE_MASK) as usize])
    }

    fn insert(&mut self, index: u64, pfn: u32) -> bool {
        let id = index >> NODE_SHIFT;
        let node = self.nodes.entry(id).or_insert_with(|| {
            Box::new(Node {
                slot: [0; NODE_SLOTS as usize],
                present: 0,
                marks: [0; 3],
            })
        });
        let bit = 1u64 << (index & NODE_MASK);
        if node.present & bit != 0 {
            return false;
        }
        if node.present == 0 {
            self.order.insert(id);
        }
        node.present |= bit;
        node.slot[(index & NODE_MASK) as usize] = pfn;
        self.len += 1;
        true
    }

    fn remove(&mut self, index: u64, pfn: u32) -> bool {
        let id = index >> NODE_SHIFT;
        let Some(node) = self.nodes.get_mut(&id) else {
            return false;
        };
        let bit = 1u64 << (index & NODE_MASK);
        if node.present & bit == 0 || node.slot[(index & NODE_MASK) as usize] != pfn {
            return false;
        }
        node.present &= !bit;
        for m in 0..3 {
            if node.marks[m] & bit != 0 {
                node.marks[m] &= !bit;
                if node.marks[m] == 0 {
                    self.marked[m].remove(&id);
                }
            }
        }
        self.len -= 1;
        if node.present == 0 {
            self.nodes.remove(&id);
            self.order.remove(&id);
        }
        true
    }

    #[inline]
    fn set_mark(&mut self, index: u64, pfn: u32, mark: Mark, on: bool) {
        let id = index >> NODE_SHIFT;
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        let bit = 1u64 << (index & NODE_MASK);
        if node.present & bit == 0 || node.slot[(index & NODE_MASK) as usize] != pfn {
            return;
        }
        let m = mark as usize;
        let was = node.marks[m];
        node.marks[m] = if on { was | bit } else { was & !bit };
        match (was == 0, node.marks[m] == 0) {
            (true, false) => {
                self.marked[m].insert(id);
            }
            (false, true) => {
                self.marked[m].remove(&id);
            }
            _ => {}
        }
    }

    fn find_marked(&self, mark: Mark, start: u64, end: u64, max: usize) -> Vec<(u64, u32)> {
        let m = mark as usize;
        self.scan(&self.marked[m], start, end, max, |node| node.marks[m])
    }

    fn find_range(&self, start: u64, end: u64, max: usize) -> Vec<(u64, u32)> {
        if start >= end {
            return Vec::new();
        }
        self.scan(&self.order, start, end - 1, max, |node| node.present)
    }

    /// Entries in `[start, last]` of the nodes listed in `ids` whose bit is set in `bits_of`.
    fn scan(
        &self,
        ids: &BTreeSet<u64>,
        start: u64,
        last: u64,
        max: usize,
        bits_of: impl Fn(&Node) -> u64,
    ) -> Vec<(u64, u32)> {
        let mut out = Vec::new();
        if start > last {
            return out;
        }
        for &id in ids.range(start >> NODE_SHIFT..=last >> NODE_SHIFT) {
            let node = &self.nodes[&id];
            let lo = if id == start >> NODE_SHIFT {
                start & NODE_MASK
            } else {
                0
            };
            let hi = if id == last >> NODE_SHIFT {
                last & NODE_MASK
            } else {
                NODE_MASK
            };
            let mut bits = bits_of(node) & span(lo, hi);
            while bits != 0 {
                let b = u64::from(bits.trailing_zeros());
                out.push(((id << NODE_SHIFT) + b, node.slot[b as usize]));
                if out.len() == max {
                    return out;
                }
                bits &= bits - 1;
            }
        }
        out
    }

    fn copy_mark(&mut self, from: Mark, to: Mark, start: u64, end: u64) {
        if start > end {
            return;
        }
        let (f, t) = (from as usize, to as usize);
        let ids: Vec<u64> = self.marked[f]
            .range(start >> NODE_SHIFT..=end >> NODE_SHIFT)
            .copied()
            .collect();
        for id in ids {
            let Some(node) = self.nodes.get_mut(&id) else {
                continue;
            };
            let lo = if id == start >> NODE_SHIFT {
                start & NODE_MASK
            } else {
                0
            };
            let hi = if id == end >> NODE_SHIFT {
                end & NODE_MASK
            } else {
                NODE_MASK
            };
            let add = node.marks[f] & span(lo, hi);
            if add != 0 {
                if node.marks[t] == 0 {
                    self.marked[t].insert(id);
                }
                node.marks[t] |= add;
            }
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn insert_get_remove() {
        let mut x = XArray::default();
        assert!(x.insert(5, 50));
        assert!(!x.insert(5, 51), "slot taken");
        assert!(x.insert(700, 70));
        assert_eq!((x.get(5), x.get(6), x.get(700)), (Some(50), None, Some(70)));
        assert!(!x.remove(5, 99), "only the expected frame is erased");
        assert!(x.remove(5, 50));
        assert_eq!(x.get(5), None);
        assert_eq!(x.len(), 1);
        assert!(x.remove(700, 70));
        assert!(
            x.is_empty() && x.inner.is_none(),
            "an emptied map frees its nodes and sets"
        );
    }

    #[test]
    fn marks_follow_entries_and_ranges() {
        let mut x = XArray::default();
        for i in 0..300u64 {
            x.insert(i, i as u32 + 1000);
            if i % 3 == 0 {
                x.set_mark(i, i as u32 + 1000, Mark::Dirty, true);
            }
        }
        x.set_mark(1, 1, Mark::Dirty, true); // wrong frame: ignored
        let all = x.marked_indexes(Mark::Dirty);
        assert_eq!(all.len(), 100);
        assert!(all.iter().all(|i| i % 3 == 0));
        let batch = x.find_marked(Mark::Dirty, 62, 200, 5);
        assert_eq!(
            batch.iter().map(|p| p.0).collect::<Vec<_>>(),
            vec![63, 66, 69, 72, 75]
        );
        assert_eq!(batch[0].1, 1063);
        x.copy_mark(Mark::Dirty, Mark::Towrite, 64, 127);
        let tw = x.marked_indexes(Mark::Towrite);
        assert_eq!(tw.first(), Some(&66));
        assert_eq!(tw.last(), Some(&126));
        for i in tw.clone() {
            x.set_mark(i, i as u32 + 1000, Mark::Towrite, false);
        }
        assert!(!x.marked(Mark::Towrite));
        assert!(x.remove(3, 1003));
        assert!(!x.marked_indexes(Mark::Dirty).contains(&3));
        let r = x.find_range(60, 70, 100);
        assert_eq!(r.len(), 10);
        assert_eq!(r[0], (60, 1060));
    }

    #[test]
    fn span_edges() {
        assert_eq!(span(0, 63), u64::MAX);
        assert_eq!(span(0, 0), 1);
        assert_eq!(span(63, 63), 1 << 63);
        assert_eq!(span(2, 4), 0b11100);
    }
}
