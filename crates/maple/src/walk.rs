//! The read side: lock-free walks from the root under a guard.
//!
//! # Owns
//! Every read operation: `load`, `find` (first entry at or above an
//! address), `next`, `prev`, `empty_area`, `empty_area_rev`.
//!
//! # Invariants
//! - W1. A walk reads the root, descends by pivots, reads the value in a
//!   leaf slot, then re-reads that leaf's `meta`: if the leaf is dead the
//!   walk starts again from the root. A live leaf was current when its slot
//!   was read (liveness only goes from alive to dead), so every entry a
//!   walk returns was in the tree at some moment during the call. A walk
//!   that crosses leaves (W3) answers "the first entry at or above",
//!   "the lowest free range" from what each leaf held when it read it:
//!   the entry existed, but it need not have been the first at any one
//!   moment if a writer stored below it meanwhile (as with Linux's maple
//!   tree under RCU; found by a review).
//! - W2. Walks write no shared memory and take no lock.
//! - W3. A walk that crosses into another leaf (`find`, `next`, `prev`,
//!   gap searches) resumes *by address* from the root, never from a saved
//!   node (tree.rs T5 guarantees no two free ranges touch, even across
//!   leaves, so one leaf's free ranges are whole free ranges).
//!
//! # Concurrency
//! RCU read side: the caller holds a guard of the tree's domain (or the write
//! lock, under which the tree does not change).
//!
//! # Linux
//! `mas_walk()`, `mas_find()`, `mas_next()`, `mas_prev()`, `mas_empty_area()`,
//! `mas_empty_area_rev()`; the restart on `ma_dead_node()`.

use crate::node::{self, Leaf, NodePtr, NodeRef};
use crate::sync::Ordering;
use crate::tree::Raw;
use crate::value::Word;

/// One leaf slot as a walk saw it: `[lo, hi]` inclusive, `value` may be null.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SlotView {
    pub(crate) lo: u64,
    pub(crate) hi: u64,
    pub(crate) value: Word,
}

impl<T> Raw<T> {
    /// Descends from the root to the leaf covering `addr`: the leaf, its
    /// slot count and its bounds. Prefetches each node on the way.
    #[inline(always)]
    fn leaf_for<'a>(&self, addr: u64) -> (&'a Leaf<T>, usize, u64, u64) {
        let mut n = self.root();
        node::prefetch(n);
        let (mut min, mut max) = (0u64, u64::MAX);
        loop {
            // SAFETY: the caller holds a guard or the write lock, so no node
            // reachable during the walk is freed (node.rs N3).
            let meta = unsafe { n.meta() }.load();
            let cnt = node::count(meta);
            if node::is_leaf(meta) {
                // SAFETY: as above, and the LEAF bit says it is a leaf.
                return (unsafe { n.leaf() }, cnt, min, max);
            }
            // SAFETY: as above; internal node.
            let inner = unsafe { n.inner() };
            let i = node::find_slot(&inner.pivots, cnt, addr);
            n = inner.child(i);
            node::prefetch(n);
            (min, max) = node::slot_range(&inner.pivots, cnt, i, min, max);
        }
    }

    /// The leaf slot covering `addr` (W1).
    #[inline]
    pub(crate) fn walk(&self, addr: u64) -> SlotView {
        loop {
            let (leaf, cnt, min, max) = self.leaf_for(addr);
            let i = node::find_slot(&leaf.pivots, cnt, addr);
            // ORDERING: Acquire pairs with the Release publication of a value
            // (write.rs): its contents are visible.
            let value = leaf.slots[i].load(Ordering::Acquire).cast_const();
            let (lo, hi) = node::slot_range(&leaf.pivots, cnt, i, min, max);
            if !node::is_dead(leaf.meta.load()) {
                return SlotView { lo, hi, value };
            }
            // W1: the leaf was replaced under us; walk again.
        }
    }

    /// The first non-empty slot whose range ends at or above `addr`.
    pub(crate) fn find(&self, mut addr: u64) -> Option<SlotView> {
        loop {
            let (found, leaf_max) = self.scan_leaf(addr, true);
            if found.is_some() {
                return found;
            }
            if leaf_max == u64::MAX {
                return None;
            }
            addr = leaf_max + 1; // W3: resume by address
        }
    }

    /// The last non-empty slot whose range starts at or below `addr`.
    pub(crate) fn find_rev(&self, mut addr: u64) -> Option<SlotView> {
        loop {
            let (found, leaf_min) = self.scan_leaf(addr, false);
            if found.is_some() {
                return found;
            }
            if leaf_min == 0 {
                return None;
            }
            addr = leaf_min - 1; // W3
        }
    }

    /// Scans the leaf covering `addr` from `addr`'s slot upwards (or
    /// downwards) for a non-empty slot. Returns it, and the leaf's max (min).
    fn scan_leaf(&self, addr: u64, up: bool) -> (Option<SlotView>, u64) {
        loop {
            let (leaf, cnt, min, max) = self.leaf_for(addr);
            let start = node::find_slot(&leaf.pivots, cnt, addr);
            let mut found = None;
            let mut visit = |i: usize| {
                // ORDERING: as in `walk`.
                let value = leaf.slots[i].load(Ordering::Acquire).cast_const();
                if value.is_null() {
                    return false;
                }
                let (lo, hi) = node::slot_range(&leaf.pivots, cnt, i, min, max);
                found = Some(SlotView { lo, hi, value });
                true
            };
            if up {
                let _ = (start..cnt).any(&mut visit);
            } else {
                let _ = (0..=start).rev().any(&mut visit);
            }
            if !node::is_dead(leaf.meta.load()) {
                return (found, if up { max } else { min });
            }
            // W1: walk again.
        }
    }

    /// The lowest (or, `rev`, highest) `start` with `[start, start + size)`
    /// free and inside `[lo, hi]` (inclusive bounds; `size >= 1`).
    pub(crate) fn empty_area(&self, lo: u64, hi: u64, size: u64, rev: bool) -> Option<u64> {
        if size == 0 || lo > hi || hi - lo < size - 1 {
            return None;
        }
        'restart: loop {
            let root = self.root();
            match self.gap_search(root, 0, u64::MAX, lo, hi, size, rev) {
                Search::Found(s) => return Some(s),
                Search::None => return None,
                Search::Restart => continue 'restart,
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn gap_search(
        &self,
        n: NodePtr<T>,
        min: u64,
        max: u64,
        lo: u64,
        hi: u64,
        size: u64,
        rev: bool,
    ) -> Search {
        // SAFETY: as in `walk`.
        let meta = unsafe { n.meta() }.load();
        let cnt = node::count(meta);
        let need = size - 1; // gaps are stored as `last - first`
        // SAFETY: as in `walk`.
        match unsafe { n.get() } {
            NodeRef::Leaf(leaf) => {
                let mut best = None;
                let order: &mut dyn Iterator<Item = usize> =
                    if rev { &mut (0..cnt).rev() } else { &mut (0..cnt) };
                for i in order {
                    let (a, b) = node::slot_range(&leaf.pivots, cnt, i, min, max);
                    if b < lo || a > hi {
                        continue;
                    }
                    // ORDERING: as in `walk`.
                    if !leaf.slots[i].load(Ordering::Acquire).is_null() {
                        continue;
                    }
                    let (a, b) = (a.max(lo), b.min(hi));
                    if b - a >= need {
                        best = Some(if rev { b - need } else { a });
                        break;
                    }
                }
                if node::is_dead(leaf.meta.load()) {
                    return Search::Restart;
                }
                best.map_or(Search::None, Search::Found)
            }
            NodeRef::Inner(inner) => {
                let order: &mut dyn Iterator<Item = usize> =
                    if rev { &mut (0..cnt).rev() } else { &mut (0..cnt) };
                for i in order {
                    let (a, b) = node::slot_range(&inner.pivots, cnt, i, min, max);
                    if b < lo || a > hi || inner.gap(i) < need {
                        continue;
                    }
                    match self.gap_search(inner.child(i), a, b, lo, hi, size, rev) {
                        Search::None => continue,
                        other => return other,
                    }
                }
                Search::None
            }
        }
    }
}

enum Search {
    Found(u64),
    None,
    Restart,
}
