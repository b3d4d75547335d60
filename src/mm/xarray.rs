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

impl Node {
    fn empty() -> Node {
        Node {
            slot: [0; NODE_SLOTS as usize],
            present: 0,
            marks: [0; 3],
        }
    }

    /// The entry in slot `b` as a [`Repr::One`] of index `(id << NODE_SHIFT) + b`.
    fn lone(&self, id: u64, b: u32) -> Repr {
        let marks = (0..3).fold(0u8, |acc, m| acc | (((self.marks[m] >> b) & 1) as u8) << m);
        Repr::One {
            index: (id << NODE_SHIFT) + u64::from(b),
            pfn: self.slot[b as usize],
            marks,
        }
    }
}

/// The bits of node `id` that fall in `[start, last]` (inclusive); the caller has checked
/// that the node overlaps it.
fn node_span(id: u64, start: u64, last: u64) -> u64 {
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
    span(lo, hi)
}

/// Appends the entries of node `id` in `[start, last]` whose bit is set in `bits` to `out`,
/// until it holds `max`; true once it does.
fn scan_node(
    id: u64,
    node: &Node,
    bits: u64,
    (start, last): (u64, u64),
    max: usize,
    out: &mut Vec<(u64, u32)>,
) -> bool {
    if out.len() >= max {
        return true;
    }
    let mut bits = bits & node_span(id, start, last);
    while bits != 0 {
        let b = u64::from(bits.trailing_zeros());
        out.push(((id << NODE_SHIFT) + b, node.slot[b as usize]));
        if out.len() == max {
            return true;
        }
        bits &= bits - 1;
    }
    false
}

/// Whether node `id` holds indexes in `[start, last]`.
fn node_in(id: u64, start: u64, last: u64) -> bool {
    start <= last && (start >> NODE_SHIFT..=last >> NODE_SHIFT).contains(&id)
}

/// An index -> frame map with marks.
///
/// Empty, it holds nothing on the heap: every file the mount knows has a mapping, and most have
/// no page cached (10,000 known files cost 1.3 MiB of empty maps and sets otherwise). With one
/// entry it still holds nothing on the heap, as the kernel's xarray keeps a lone entry at
/// index 0 in its head: a small file's single page would otherwise cost a node, a hash table
/// and up to four set nodes, ~700 bytes per file, the largest per-file cost of a mount that
/// has just made many small files.
#[derive(Debug, Default)]
pub struct XArray {
    repr: Repr,
}

/// What an [`XArray`] holds, by how many entries.
#[derive(Debug, Default)]
enum Repr {
    #[default]
    Empty,
    /// A single entry, its marks as bits (1 << [`Mark`]).
    One { index: u64, pfn: u32, marks: u8 },
    /// Two or more entries, all in one node: every file of 2 to 64 pages. The node alone,
    /// without the hash table and ordered sets of [`Repr::Many`] (~350 bytes of every such
    /// file's mapping). Boxed with its id so the head stays two words.
    Single(Box<SingleNode>),
    /// Entries in more than one node (or left in one by removals).
    Many(Box<Inner>),
}

/// The node of a [`Repr::Single`] and its id.
#[derive(Debug)]
struct SingleNode {
    id: u64,
    node: Node,
}

/// The nodes and mark sets of an [`XArray`] with two or more entries.
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
        match &self.repr {
            Repr::Empty => 0,
            Repr::One { .. } => 1,
            Repr::Single(s) => s.node.present.count_ones() as usize,
            Repr::Many(i) => i.len,
        }
    }

    /// True when nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// xa_load.
    #[inline]
    pub fn get(&self, index: u64) -> Option<u32> {
        match &self.repr {
            Repr::Empty => None,
            Repr::One { index: i, pfn, .. } => (*i == index).then_some(*pfn),
            Repr::Single(s) => {
                let bit = 1u64 << (index & NODE_MASK);
                (index >> NODE_SHIFT == s.id && s.node.present & bit != 0)
                    .then(|| s.node.slot[(index & NODE_MASK) as usize])
            }
            Repr::Many(inner) => inner.get(index),
        }
    }

    /// Store `pfn` at `index` if the slot is empty; false if it was taken.
    pub fn insert(&mut self, index: u64, pfn: u32) -> bool {
        let (id, b) = (index >> NODE_SHIFT, index & NODE_MASK);
        match &mut self.repr {
            Repr::Empty => {
                self.repr = Repr::One {
                    index,
                    pfn,
                    marks: 0,
                };
                true
            }
            Repr::One { index: i, .. } if *i == index => false,
            Repr::One {
                index: i,
                pfn: p,
                marks,
            } if *i >> NODE_SHIFT == id => {
                // A second entry in the same node: the two share one, marks and all.
                let mut node = Node::empty();
                let ob = *i & NODE_MASK;
                node.present = (1 << ob) | (1 << b);
                node.slot[ob as usize] = *p;
                node.slot[b as usize] = pfn;
                for (m, bits) in node.marks.iter_mut().enumerate() {
                    if *marks & (1 << m) != 0 {
                        *bits = 1 << ob;
                    }
                }
                self.repr = Repr::Single(Box::new(SingleNode { id, node }));
                true
            }
            Repr::One {
                index: i,
                pfn: p,
                marks,
            } => {
                // A second entry elsewhere: the lone one moves into nodes, marks and all.
                let mut inner = Box::<Inner>::default();
                inner.insert(*i, *p);
                for m in [Mark::Dirty, Mark::Writeback, Mark::Towrite] {
                    if *marks & (1 << m as u8) != 0 {
                        inner.set_mark(*i, *p, m, true);
                    }
                }
                inner.insert(index, pfn);
                self.repr = Repr::Many(inner);
                true
            }
            Repr::Single(s) if s.id == id => {
                let bit = 1u64 << b;
                if s.node.present & bit != 0 {
                    return false;
                }
                s.node.present |= bit;
                s.node.slot[b as usize] = pfn;
                true
            }
            Repr::Single(_) => {
                // An entry in another node: the node joins the general form.
                let Repr::Single(s) = std::mem::take(&mut self.repr) else {
                    return false;
                };
                let SingleNode { id: sid, node } = *s;
                let mut inner = Box::<Inner>::default();
                inner.adopt(sid, Box::new(node));
                inner.insert(index, pfn);
                self.repr = Repr::Many(inner);
                true
            }
            Repr::Many(inner) => inner.insert(index, pfn),
        }
    }

    /// Erase the entry at `index` if it is `pfn`, with all its marks; true if it was.
    pub fn remove(&mut self, index: u64, pfn: u32) -> bool {
        match &mut self.repr {
            Repr::Empty => false,
            Repr::One {
                index: i, pfn: p, ..
            } => {
                if *i != index || *p != pfn {
                    return false;
                }
                self.repr = Repr::Empty;
                true
            }
            Repr::Single(s) => {
                let (id, bit) = (index >> NODE_SHIFT, 1u64 << (index & NODE_MASK));
                let n = &mut s.node;
                if id != s.id || n.present & bit == 0 || n.slot[(index & NODE_MASK) as usize] != pfn
                {
                    return false;
                }
                n.present &= !bit;
                for marks in &mut n.marks {
                    *marks &= !bit;
                }
                // Down to one entry: back into the head.
                if n.present.count_ones() == 1 {
                    self.repr = n.lone(s.id, n.present.trailing_zeros());
                }
                true
            }
            Repr::Many(inner) => {
                if !inner.remove(index, pfn) {
                    return false;
                }
                // Down to one entry: back into the head, freeing nodes and sets (the
                // kernel's xas_shrink), so a file truncated to its first page costs what a
                // one-page file does.
                if inner.len == 1 {
                    self.repr = inner.only();
                }
                true
            }
        }
    }

    /// Set or clear `mark` on the entry at `index`, if that entry is `pfn`.
    #[inline]
    pub fn set_mark(&mut self, index: u64, pfn: u32, mark: Mark, on: bool) {
        match &mut self.repr {
            Repr::Empty => {}
            Repr::One {
                index: i,
                pfn: p,
                marks,
            } => {
                if *i == index && *p == pfn {
                    let bit = 1u8 << mark as u8;
                    *marks = if on { *marks | bit } else { *marks & !bit };
                }
            }
            Repr::Single(s) => {
                let bit = 1u64 << (index & NODE_MASK);
                let n = &mut s.node;
                if index >> NODE_SHIFT == s.id
                    && n.present & bit != 0
                    && n.slot[(index & NODE_MASK) as usize] == pfn
                {
                    let m = &mut n.marks[mark as usize];
                    *m = if on { *m | bit } else { *m & !bit };
                }
            }
            Repr::Many(inner) => inner.set_mark(index, pfn, mark, on),
        }
    }

    /// Does any entry carry `mark`?
    pub fn marked(&self, mark: Mark) -> bool {
        match &self.repr {
            Repr::Empty => false,
            Repr::One { marks, .. } => marks & (1 << mark as u8) != 0,
            Repr::Single(s) => s.node.marks[mark as usize] != 0,
            Repr::Many(i) => !i.marked[mark as usize].is_empty(),
        }
    }

    /// Up to `max` (index, frame) pairs carrying `mark` with index in `[start, end]`, in order.
    pub fn find_marked(&self, mark: Mark, start: u64, end: u64, max: usize) -> Vec<(u64, u32)> {
        match &self.repr {
            Repr::Empty => Vec::new(),
            Repr::One { index, pfn, marks } => {
                let hit =
                    max > 0 && marks & (1 << mark as u8) != 0 && (start..=end).contains(index);
                if hit {
                    vec![(*index, *pfn)]
                } else {
                    Vec::new()
                }
            }
            Repr::Single(s) => {
                let mut out = Vec::new();
                if node_in(s.id, start, end) {
                    let bits = s.node.marks[mark as usize];
                    scan_node(s.id, &s.node, bits, (start, end), max, &mut out);
                }
                out
            }
            Repr::Many(i) => i.find_marked(mark, start, end, max),
        }
    }

    /// Up to `max` (index, frame) pairs with index in `[start, end)`, in order.
    pub fn find_range(&self, start: u64, end: u64, max: usize) -> Vec<(u64, u32)> {
        match &self.repr {
            Repr::Empty => Vec::new(),
            Repr::One { index, pfn, .. } => {
                if max > 0 && (start..end).contains(index) {
                    vec![(*index, *pfn)]
                } else {
                    Vec::new()
                }
            }
            Repr::Single(s) => {
                let mut out = Vec::new();
                if start < end && node_in(s.id, start, end - 1) {
                    let bits = s.node.present;
                    scan_node(s.id, &s.node, bits, (start, end - 1), max, &mut out);
                }
                out
            }
            Repr::Many(i) => i.find_range(start, end, max),
        }
    }

    /// Add `to` to every entry in `[start, end]` that carries `from` (tag_pages_for_writeback).
    pub fn copy_mark(&mut self, from: Mark, to: Mark, start: u64, end: u64) {
        match &mut self.repr {
            Repr::Empty => {}
            Repr::One { index, marks, .. } => {
                if *marks & (1 << from as u8) != 0 && (start..=end).contains(index) {
                    *marks |= 1 << to as u8;
                }
            }
            Repr::Single(s) => {
                if node_in(s.id, start, end) {
                    let n = &mut s.node;
                    n.marks[to as usize] |= n.marks[from as usize] & node_span(s.id, start, end);
                }
            }
            Repr::Many(inner) => inner.copy_mark(from, to, start, end),
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
    /// The lone entry of a map holding exactly one, as a [`Repr::One`].
    fn only(&self) -> Repr {
        let Some((&id, node)) = self.nodes.iter().next() else {
            return Repr::Empty;
        };
        node.lone(id, node.present.trailing_zeros())
    }

    /// Takes in node `id` (of a [`Repr::Single`]), entries and marks, into an empty map.
    fn adopt(&mut self, id: u64, node: Box<Node>) {
        self.len += node.present.count_ones() as usize;
        for (m, set) in self.marked.iter_mut().enumerate() {
            if node.marks[m] != 0 {
                set.insert(id);
            }
        }
        self.order.insert(id);
        self.nodes.insert(id, node);
    }

    /// Takes node `id` out of mark `m`'s set; an emptied set gives its node back (a std
    /// `BTreeSet` keeps its last leaf allocated otherwise, ~100 bytes per mark per mapping).
    fn unmark_node(&mut self, m: usize, id: u64) {
        self.marked[m].remove(&id);
        if self.marked[m].is_empty() {
            self.marked[m] = BTreeSet::new();
        }
    }

    fn get(&self, index: u64) -> Option<u32> {
        let node = self.nodes.get(&(index >> NODE_SHIFT))?;
        let bit = 1u64 << (index & NODE_MASK);
        (node.present & bit != 0).then(|| node.slot[(index & NODE_MASK) as usize])
    }

    fn insert(&mut self, index: u64, pfn: u32) -> bool {
        let id = index >> NODE_SHIFT;
        let node = self
            .nodes
            .entry(id)
            .or_insert_with(|| Box::new(Node::empty()));
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
        // The marks whose last entry in this node this was: the node leaves their sets.
        let mut to_unmark = [false; 3];
        for (marks, unmark) in node.marks.iter_mut().zip(&mut to_unmark) {
            if *marks & bit != 0 {
                *marks &= !bit;
                *unmark = *marks == 0;
            }
        }
        self.len -= 1;
        if node.present == 0 {
            self.nodes.remove(&id);
            self.order.remove(&id);
        }
        for (m, _) in to_unmark.iter().enumerate().filter(|(_, u)| **u) {
            self.unmark_node(m, id);
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
            (false, true) => self.unmark_node(m, id),
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
            if scan_node(id, node, bits_of(node), (start, last), max, &mut out) {
                break;
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
            let add = node.marks[f] & node_span(id, start, end);
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
            x.is_empty() && matches!(x.repr, Repr::Empty),
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

    /// Every answer of `x` about indexes 0..8 and all marks, to compare two maps.
    fn answers(x: &XArray) -> Vec<String> {
        let mut out = vec![format!("len {}", x.len())];
        for m in [Mark::Dirty, Mark::Writeback, Mark::Towrite] {
            out.push(format!("{m:?} {} {:?}", x.marked(m), x.marked_indexes(m)));
            out.push(format!("{m:?} 2..=5 {:?}", x.find_marked(m, 2, 5, 10)));
        }
        out.push(format!("range {:?}", x.find_range(0, 8, 10)));
        out.push(format!("range 3..4 {:?}", x.find_range(3, 4, 10)));
        out.extend((0..8).map(|i| format!("get {i} {:?}", x.get(i))));
        out
    }

    #[test]
    fn one_entry_lives_in_the_head_and_moves_to_nodes_and_back_with_its_marks() {
        let mut x = XArray::default();
        assert!(x.insert(3, 30));
        assert!(
            matches!(x.repr, Repr::One { .. }),
            "a lone entry takes no node"
        );
        assert!(!x.insert(3, 31), "slot taken");
        x.set_mark(3, 99, Mark::Dirty, true); // wrong frame: ignored
        assert!(!x.marked(Mark::Dirty));
        x.set_mark(3, 30, Mark::Dirty, true);
        x.copy_mark(Mark::Dirty, Mark::Towrite, 4, 9); // outside: nothing
        assert!(!x.marked(Mark::Towrite));
        x.copy_mark(Mark::Dirty, Mark::Towrite, 0, 3);
        // The same history on a map that already holds nodes (entry 700 added and removed
        // at the end) must answer the same.
        let mut y = XArray::default();
        assert!(y.insert(700, 7) && y.insert(3, 30));
        y.set_mark(3, 30, Mark::Dirty, true);
        y.copy_mark(Mark::Dirty, Mark::Towrite, 0, 3);
        assert!(y.remove(700, 7));
        assert!(
            matches!(y.repr, Repr::One { .. }),
            "down to one: back in the head"
        );
        assert_eq!(answers(&x), answers(&y));
        assert_eq!(x.marked_indexes(Mark::Towrite), vec![3]);
        // A lookup asking for nothing gets nothing, whatever the representation.
        for m in [&x, &y] {
            assert!(
                m.find_range(0, 8, 0).is_empty() && m.find_marked(Mark::Dirty, 0, 8, 0).is_empty()
            );
        }
        // A second entry in the same node moves the first into a lone node with its marks.
        assert!(x.insert(5, 50));
        assert!(matches!(x.repr, Repr::Single(_)));
        assert_eq!(x.marked_indexes(Mark::Dirty), vec![3]);
        assert_eq!(x.marked_indexes(Mark::Towrite), vec![3]);
        assert_eq!(x.find_range(0, 8, 10), vec![(3, 30), (5, 50)]);
        x.set_mark(5, 50, Mark::Writeback, true);
        assert!(!x.remove(3, 31), "only the expected frame is erased");
        assert!(x.remove(3, 30));
        assert!(matches!(
            x.repr,
            Repr::One {
                index: 5,
                pfn: 50,
                ..
            }
        ));
        assert_eq!(x.marked_indexes(Mark::Writeback), vec![5]);
        assert!(!x.marked(Mark::Dirty) && !x.marked(Mark::Towrite));
        x.set_mark(5, 50, Mark::Writeback, false);
        assert!(!x.marked(Mark::Writeback));
        assert!(!x.remove(6, 50) && x.remove(5, 50));
        assert!(matches!(x.repr, Repr::Empty) && x.find_range(0, u64::MAX, 10).is_empty());
    }

    #[test]
    fn one_node_maps_answer_as_the_general_form_and_move_into_it() {
        // x stays in node 0 (a lone node); y has held an entry in another node, so it is in
        // the general form; the same history must give the same answers.
        let mut x = XArray::default();
        let mut y = XArray::default();
        assert!(y.insert(900, 9));
        for m in [&mut x, &mut y] {
            for i in [1u64, 2, 4, 6, 7] {
                assert!(m.insert(i, i as u32 * 10));
            }
            assert!(!m.insert(4, 41), "slot taken");
            m.set_mark(2, 20, Mark::Dirty, true);
            m.set_mark(6, 60, Mark::Dirty, true);
            m.set_mark(7, 71, Mark::Dirty, true); // wrong frame: ignored
            m.copy_mark(Mark::Dirty, Mark::Towrite, 3, 8);
            m.set_mark(4, 40, Mark::Writeback, true);
            assert!(!m.remove(1, 11) && m.remove(1, 10));
        }
        assert!(matches!(x.repr, Repr::Single(_)));
        assert!(y.remove(900, 9));
        assert!(matches!(y.repr, Repr::Many(_)));
        assert_eq!(answers(&x), answers(&y));
        assert_eq!(x.marked_indexes(Mark::Towrite), vec![6]);
        assert_eq!(
            x.find_range(3, 7, 2),
            vec![(4, 40), (6, 60)],
            "max honoured"
        );
        assert!(x.find_marked(Mark::Dirty, 0, 8, 0).is_empty() && y.find_range(0, 8, 0).is_empty());
        // An entry in another node: the node moves into the general form, marks and all.
        assert!(x.insert(700, 70));
        assert!(matches!(x.repr, Repr::Many(_)));
        assert_eq!(x.marked_indexes(Mark::Dirty), vec![2, 6]);
        assert_eq!(x.marked_indexes(Mark::Writeback), vec![4]);
        assert_eq!(x.get(700), Some(70));
        assert!(x.remove(700, 70));
        assert_eq!(answers(&x), answers(&y));
        // Removals down to one entry go back into the head, keeping its marks.
        let mut z = XArray::default();
        assert!(z.insert(10, 1) && z.insert(11, 2));
        z.set_mark(11, 2, Mark::Dirty, true);
        assert!(z.remove(10, 1));
        assert!(matches!(
            z.repr,
            Repr::One {
                index: 11,
                pfn: 2,
                marks: 1
            }
        ));
    }

    #[test]
    fn span_edges() {
        assert_eq!(span(0, 63), u64::MAX);
        assert_eq!(span(0, 0), 1);
        assert_eq!(span(63, 63), 1 << 63);
        assert_eq!(span(2, 4), 0b11100);
    }
}
