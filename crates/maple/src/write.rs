//! The write side: every change is a *store* of one range, done by copying
//! the nodes it touches and publishing them with one atomic root store.
//!
//! # Owns
//! [`Writer`] (the write handle, holding the tree's write lock) and the
//! store algorithm: overwrite, split, rebalance, spanning stores, root growth
//! and collapse, and retirement of what was replaced.
//!
//! # Invariants
//! - R1. Copy-on-write: a store builds new nodes for the leaves it changes
//!   and for the ancestors whose shape changes, then publishes them with a
//!   single Release store: into the parent that keeps its shape (R5), or of
//!   the root pointer. Only then are the replaced nodes marked dead (node.rs
//!   N2) and handed, with the values they dropped, to `Domain::call`, which
//!   frees them after a grace period (N3); nodes go back to the tree's pool.
//! - R2. The one in-place change is an exact-fit replacement of a non-null
//!   value by another (`replace`, or `store` over exactly one entry): a single
//!   atomic store into the leaf slot (N1). It changes no gap.
//! - R3. Every node but the root holds at least `LEAF_MIN`/`INNER_MIN` slots:
//!   a node left short borrows all the slots of a neighbour at the same level
//!   (preferring one with the same parent) and the result is split evenly.
//! - R5. Where one node is replaced by one new node over the same range, the
//!   copy stops: the new node is published by a single atomic store into its
//!   parent's child slot (node.rs N1), and the gaps above are fixed in place
//!   (N6). Only changes of shape (splits, borrows, spanning stores) copy
//!   further up, to the first ancestor whose own range is unchanged.
//! - R4. A store of "empty" first widens itself over the free ranges it
//!   touches, so no two free ranges are ever adjacent, even across leaves
//!   (tree.rs T5).
//! - R7. Each replaced node is retired once, and each value it held is
//!   released once. A short span that borrows a cousin (R3) moves its path
//!   to the cousin's parent, so the parent it leaves lies *between* the new
//!   edges one level up and is retired as an overwritten subtree; the walk
//!   down that subtree skips the nodes consumed at every lower level, whose
//!   items were already moved or released (their leaves' values dropped
//!   twice once: a double free, found by rcuvm's proc-vs-map when dead
//!   entries began to be erased in runs; tests/spanning_erase.rs).
//!
//! - R8. A store works in vectors the writer keeps between stores (its
//!   paths down the tree, the items of each level, the nodes it consumed
//!   and retired), so in steady state it allocates nothing but nodes (from
//!   the pool when it can) and one RCU callback per batch of retired nodes:
//!   0.06 allocations per store or erase, against 7.8 before
//!   (`tests/write_allocs.rs`). Why: each allocation may wait on the
//!   allocator's lock, held by the threads that free the writer's old
//!   nodes and values (the lab's proc-vs-map writer slept there thousands
//!   of times in 2 s under glibc).
//! - R9. Retired nodes and values go to RCU in batches whose vectors are
//!   sized once, below glibc's large-request size ([`LARGE_REQUEST`]), and
//!   never grow: a store that would overflow the batch hands it over
//!   first. Why: a batch's vectors grew by doubling, and each growth past
//!   1 KiB made glibc merge every small free chunk of the arena first
//!   (`malloc_consolidate`): 46,000 times in 8 s of rcuvm's proc-vs-map
//!   (uprobes). A single store that retires more than a batch holds still
//!   grows it.
//! - R10. A batch passes each retired value to the tree's `free` function
//!   after the grace period (`drop` unless the tree was made with
//!   `MapleTree::with_free`): the nodes go back to the tree's pool (A1),
//!   and a user may keep its value objects the same way (rcuvm's VMAs,
//!   as Linux's `vm_area_cachep`).
//!
//! # Concurrency
//! One writer at a time: a [`Writer`] holds the tree's mutex. Readers never
//! wait for it.
//!
//! # Linux
//! `mas_store()` and its cases (`mas_wr_slot_store`, `mas_wr_node_store`,
//! `mas_wr_split`, `mas_wr_spanning_store`, `mas_wr_rebalance`) in RCU mode,
//! where Linux also replaces rather than edits nodes and updates gaps in
//! place (`mas_update_gap`).

use std::ops::Range;
use std::sync::Arc;

use crate::alloc::{Block, Blocks, NodePool};
use crate::node::{self, INNER_MIN, INNER_SLOTS, LEAF_MIN, LEAF_SLOTS, NodePtr, NodeRef};
use crate::sync::{MutexGuard, Ordering};
use crate::tree::{Entry, Error, MapleTree, Raw, check_range};
use crate::value::{Value, Word};

/// One level of a writer's descent: the node, the slot taken in it, and the
/// node's bounds.
#[derive(Debug)]
struct Level<V> {
    node: NodePtr<V>,
    idx: usize,
    min: u64,
    max: u64,
}

impl<V> Clone for Level<V> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<V> Copy for Level<V> {}

/// Nodes and values to free after a grace period.
pub(crate) struct Garbage<V: Value> {
    pub(crate) nodes: Vec<NodePtr<V>>,
    pub(crate) values: Vec<Word>,
    /// Where the nodes go after the grace period (alloc.rs A1).
    pool: Option<Arc<NodePool>>,
    /// What becomes of each value after the grace period (R10; `drop`
    /// unless the tree was made with [`MapleTree::with_free`]).
    free: fn(V),
}

// SAFETY: the nodes are unreachable (R1) and the values are owners of `V`
// (value.rs V2), which may be dropped on any thread as `V: Send + Sync`.
unsafe impl<V: Value> Send for Garbage<V> {}

impl<V: Value> Garbage<V> {
    pub(crate) fn new(pool: Option<Arc<NodePool>>) -> Self {
        Garbage { nodes: Vec::new(), values: Vec::new(), pool, free: drop::<V> }
    }
    /// R9: a batch sized once for [`FLUSH_NODES`] and [`FLUSH_VALUES`].
    fn batch(pool: Option<Arc<NodePool>>, free: fn(V)) -> Self {
        let values = if V::OWNS { Vec::with_capacity(FLUSH_VALUES) } else { Vec::new() };
        Garbage { nodes: Vec::with_capacity(FLUSH_NODES), values, pool, free }
    }
    fn is_empty(&self) -> bool {
        self.nodes.is_empty() && self.values.is_empty()
    }
}

impl<V: Value> Drop for Garbage<V> {
    fn drop(&mut self) {
        for v in self.values.drain(..) {
            // SAFETY: each word here owns its value once (N4), given up by
            // the tree exactly once.
            (self.free)(unsafe { V::from_word(v) });
        }
        let blocks = self.nodes.drain(..).map(|n| {
            // SAFETY: unreachable since before the grace period that ran
            // before this drop (R1), or since the tree was dropped; each node
            // is listed once.
            unsafe { n.into_block() }
        });
        match &self.pool {
            Some(pool) => pool.give(blocks),
            None => blocks.for_each(Block::dealloc),
        }
    }
}

/// Retired nodes are handed to RCU in batches of this many (or of
/// `FLUSH_VALUES` values): one callback per batch, not per store.
const FLUSH_NODES: usize = 120;
const FLUSH_VALUES: usize = 64;

/// R9: glibc serves a request of this many bytes or more from its large
/// bins, and first merges every free chunk of its fast bins
/// (`malloc_consolidate`): 1,024-byte chunks less the 16-byte header.
const LARGE_REQUEST: usize = 1008;
const _: () = assert!(FLUSH_NODES * size_of::<usize>() < LARGE_REQUEST);
const _: () = assert!(FLUSH_VALUES * size_of::<usize>() < LARGE_REQUEST);

/// R8: the vectors a store works in, kept between stores so that a store
/// in steady state allocates nothing but nodes.
struct Scratch<V: Value> {
    pa: Vec<Level<V>>,
    pb: Vec<Level<V>>,
    inner_items: Vec<(u64, NodePtr<V>, u64)>,
    new_nodes: Vec<(u64, NodePtr<V>, u64)>,
    up: Vec<(u64, NodePtr<V>, u64)>,
    consumed: Vec<NodePtr<V>>,
    consumed_below: Vec<NodePtr<V>>,
    between: Vec<NodePtr<V>>,
    /// The path down to a cousin a short span borrows from (R3), and its
    /// items.
    cousin_path: Vec<Level<V>>,
    borrowed_leaf: Vec<(u64, Word)>,
    borrowed_inner: Vec<(u64, NodePtr<V>, u64)>,
    /// What one store replaced; emptied into the writer's pending garbage.
    garbage: Garbage<V>,
}

impl<V: Value> Scratch<V> {
    fn new() -> Self {
        Scratch {
            pa: Vec::new(),
            pb: Vec::new(),
            inner_items: Vec::new(),
            new_nodes: Vec::new(),
            up: Vec::new(),
            consumed: Vec::new(),
            consumed_below: Vec::new(),
            between: Vec::new(),
            cousin_path: Vec::new(),
            borrowed_leaf: Vec::new(),
            borrowed_inner: Vec::new(),
            garbage: Garbage::new(None),
        }
    }
}

/// State kept under the write lock, reused across stores.
pub(crate) struct WriterState<V: Value> {
    leaf_items: Vec<(u64, Word)>,
    /// R8.
    scratch: Option<Scratch<V>>,
    pub(crate) blocks: Blocks,
    /// Nodes reachable from the root (sizes the pool, alloc.rs A2).
    live_nodes: usize,
    /// Retired since the last hand-over to RCU (R1).
    pub(crate) garbage: Garbage<V>,
}

// SAFETY: the raw pointers are only used under the write lock.
unsafe impl<V: Value> Send for WriterState<V> {}

impl<V: Value> WriterState<V> {
    pub(crate) fn new(pool: Arc<NodePool>, free: fn(V)) -> Self {
        WriterState {
            leaf_items: Vec::new(),
            scratch: Some(Scratch::new()),
            blocks: Blocks::default(),
            live_nodes: 1,
            garbage: Garbage::batch(Some(pool), free),
        }
    }
}

/// Exclusive write access to a [`MapleTree`], from [`MapleTree::write`].
///
/// Readers keep running while a writer works; they see each store either
/// entirely or not at all.
pub struct Writer<'t, V: Value> {
    pub(crate) tree: &'t MapleTree<V>,
    pub(crate) state: MutexGuard<'t, WriterState<V>>,
}

impl<V: Value> Writer<'_, V> {
    fn raw(&self) -> &Raw<V> {
        &self.tree.raw
    }

    /// Inserts `value` over `range`, which must be entirely empty.
    ///
    /// # Errors
    /// [`Error::InvalidRange`] for an empty or inverted range;
    /// [`Error::Exists`] if anything is stored in `range`.
    pub fn insert(&mut self, range: Range<u64>, value: V) -> Result<(), Error> {
        let (a, b) = check_range(&range)?;
        if self.raw().find(a).is_some_and(|s| s.lo <= b) {
            return Err(Error::Exists);
        }
        self.store_raw(a, b, value.into_word());
        Ok(())
    }

    /// Stores `value` over `range`, overwriting what was there; entries that
    /// overlap it partly are truncated (their parts outside `range` keep
    /// their value).
    ///
    /// # Errors
    /// [`Error::InvalidRange`] for an empty or inverted range.
    pub fn store(&mut self, range: Range<u64>, value: V) -> Result<(), Error> {
        let (a, b) = check_range(&range)?;
        self.store_raw(a, b, value.into_word());
        Ok(())
    }

    /// Removes everything in `range`, truncating entries that overlap it
    /// partly. Returns how many entries were removed or truncated.
    ///
    /// # Errors
    /// [`Error::InvalidRange`] for an empty or inverted range.
    pub fn erase(&mut self, range: Range<u64>) -> Result<usize, Error> {
        let (a, b) = check_range(&range)?;
        let mut touched = 0;
        let mut at = a;
        while let Some(s) = self.raw().find(at) {
            if s.lo > b {
                break;
            }
            touched += 1;
            if s.hi >= b {
                break;
            }
            at = s.hi + 1;
        }
        if touched > 0 {
            self.store_raw(a, b, std::ptr::null());
        }
        Ok(touched)
    }

    /// Replaces the value of the entry that spans exactly `range`, in place
    /// (one atomic store: write.rs R2). Returns the old value.
    ///
    /// # Errors
    /// [`Error::InvalidRange`]; [`Error::NotFound`] if no entry spans exactly
    /// `range`.
    pub fn replace(&mut self, range: Range<u64>, value: V) -> Result<V, Error> {
        let (a, b) = check_range(&range)?;
        let mut sc = self.state.scratch.take().unwrap_or_else(Scratch::new);
        self.descend_into(a, &mut sc.pa);
        let leaf_level = sc.pa[0];
        self.state.scratch = Some(sc);
        // SAFETY: we hold the write lock: nodes reachable now stay allocated.
        let leaf = unsafe { leaf_level.node.leaf() };
        // SAFETY: as above.
        let cnt = node::count(unsafe { leaf_level.node.meta() }.load());
        let (lo, hi) = node::slot_range(&leaf.pivots, cnt, leaf_level.idx, leaf_level.min, leaf_level.max);
        let cur = leaf.slots[leaf_level.idx].load(Ordering::Relaxed);
        if lo != a || hi != b || cur.is_null() {
            return Err(Error::NotFound);
        }
        let new = value.into_word();
        // ORDERING: Release publishes the new value's contents to readers.
        leaf.slots[leaf_level.idx].store(new.cast_mut(), Ordering::Release);
        let cur = cur.cast_const();
        if V::OWNS {
            // SAFETY: `cur` owned its value once (N4); we make one more owner
            // for the caller and hand the slot's to the grace period, so
            // readers still using it are safe.
            unsafe { V::clone_word(cur) };
            self.flush_before(0, 1);
            self.state.garbage.values.push(cur);
            self.maybe_flush();
        }
        // SAFETY: the owner made above (or, V3, none needed).
        Ok(unsafe { V::from_word(cur) })
    }

    /// The entry covering `addr`, as the writer sees it.
    pub fn load(&self, addr: u64) -> Option<Entry<'_, V>> {
        self.tree.raw.entry_at(addr)
    }

    /// The first entry containing `addr` or above it, as the writer sees it.
    pub fn find(&self, addr: u64) -> Option<Entry<'_, V>> {
        self.tree.raw.first_from(addr)
    }

    /// Number of entries.
    pub fn tree_len(&self) -> usize {
        self.tree.len()
    }

    /// Lowest free `[start, start + size)` inside `[lo, hi)`.
    pub fn empty_area(&self, lo: u64, hi: u64, size: u64) -> Option<u64> {
        self.tree.raw.empty_area_half_open(lo, hi, size, false)
    }

    /// Highest free `[start, start + size)` inside `[lo, hi)`.
    pub fn empty_area_rev(&self, lo: u64, hi: u64, size: u64) -> Option<u64> {
        self.tree.raw.empty_area_half_open(lo, hi, size, true)
    }

    /// Hands the retired nodes and values to RCU once there are enough.
    fn maybe_flush(&mut self) {
        let g = &self.state.garbage;
        if g.nodes.len() >= FLUSH_NODES || g.values.len() >= FLUSH_VALUES {
            self.flush();
        }
    }

    /// Hands the batch to RCU first if `nodes` and `values` more would not
    /// fit in it (R9): it never grows.
    fn flush_before(&mut self, nodes: usize, values: usize) {
        let g = &self.state.garbage;
        if g.nodes.len() + nodes > g.nodes.capacity() || g.values.len() + values > g.values.capacity() {
            self.flush();
        }
    }

    /// Hands everything retired so far to RCU: it is freed (nodes go back
    /// to the pool) after a grace period.
    pub fn flush(&mut self) {
        if self.state.garbage.is_empty() {
            return;
        }
        let fresh = Garbage::batch(self.state.garbage.pool.clone(), self.state.garbage.free);
        let g = std::mem::replace(&mut self.state.garbage, fresh);
        if let Some(pool) = &g.pool {
            pool.retiring(g.nodes.len());
        }
        self.tree.domain.call(move || drop(g));
    }

    /// The writer's descent to the leaf covering `addr`, into `path`
    /// (cleared first, its memory reused: R8): `path[0]` is the leaf,
    /// `path[len - 1]` the root.
    fn descend_into(&self, addr: u64, path: &mut Vec<Level<V>>) {
        path.clear();
        let mut n = self.raw().root();
        let (mut min, mut max) = (0u64, u64::MAX);
        loop {
            // SAFETY: write lock held: reachable nodes stay allocated.
            let meta = unsafe { n.meta() }.load();
            let cnt = node::count(meta);
            // SAFETY: as above.
            match unsafe { n.get() } {
                NodeRef::Leaf(leaf) => {
                    let idx = node::find_slot(&leaf.pivots, cnt, addr);
                    path.push(Level { node: n, idx, min, max });
                    path.reverse();
                    return;
                }
                NodeRef::Inner(inner) => {
                    let idx = node::find_slot(&inner.pivots, cnt, addr);
                    path.push(Level { node: n, idx, min, max });
                    (min, max) = node::slot_range(&inner.pivots, cnt, idx, min, max);
                    n = inner.child(idx);
                }
            }
        }
    }

    /// Stores `v` (an owned count, or null) over `[a, b]` (R1–R4).
    pub(crate) fn store_raw(&mut self, mut a: u64, mut b: u64, v: Word) {
        if v.is_null() {
            // R4: absorb the free ranges next to the one being made.
            if a > 0 {
                let s = self.raw().walk(a - 1);
                if s.value.is_null() {
                    a = s.lo;
                }
            }
            if b < u64::MAX {
                let s = self.raw().walk(b + 1);
                if s.value.is_null() {
                    b = s.hi;
                }
            }
        }
        let mut sc = self.state.scratch.take().unwrap_or_else(Scratch::new);
        self.descend_into(a, &mut sc.pa);
        if b == a {
            sc.pb.clone_from(&sc.pa);
        } else {
            self.descend_into(b, &mut sc.pb);
        }
        let (la, lb) = (sc.pa[0], sc.pb[0]);
        // SAFETY: write lock held.
        let (leaf_a, leaf_b) = unsafe { (la.node.leaf(), lb.node.leaf()) };
        // SAFETY: as above.
        let (cnt_a, cnt_b) =
            unsafe { (node::count(la.node.meta().load()), node::count(lb.node.meta().load())) };
        let slot = |l: &node::Leaf<V>, i: usize| l.slots[i].load(Ordering::Relaxed).cast_const();

        // R2: an exact fit of one non-null entry by another is an in-place store.
        if la.node == lb.node && la.idx == lb.idx && !v.is_null() {
            let (lo, hi) = node::slot_range(&leaf_a.pivots, cnt_a, la.idx, la.min, la.max);
            let cur = slot(leaf_a, la.idx);
            if lo == a && hi == b && !cur.is_null() {
                // ORDERING: Release publishes the value's contents.
                leaf_a.slots[la.idx].store(v.cast_mut(), Ordering::Release);
                self.state.scratch = Some(sc);
                if V::OWNS {
                    self.flush_before(0, 1);
                    self.state.garbage.values.push(cur);
                    self.maybe_flush();
                }
                return;
            }
        }

        let garbage = &mut sc.garbage;
        debug_assert!(garbage.is_empty());
        let mut added = 0usize;
        let mut removed = 0usize;
        // The leaf-level items of the span [la.min, lb.max].
        let mut items = std::mem::take(&mut self.state.leaf_items);
        items.clear();
        for i in 0..la.idx {
            items.push((node::slot_range(&leaf_a.pivots, cnt_a, i, la.min, la.max).1, slot(leaf_a, i)));
        }
        let (lo_a, _) = node::slot_range(&leaf_a.pivots, cnt_a, la.idx, la.min, la.max);
        let va = slot(leaf_a, la.idx);
        let left_kept = lo_a < a;
        if left_kept {
            items.push((a - 1, va));
        }
        items.push((b, v));
        let (_, hi_b) = node::slot_range(&leaf_b.pivots, cnt_b, lb.idx, lb.min, lb.max);
        let vb = slot(leaf_b, lb.idx);
        let right_kept = hi_b > b;
        if right_kept {
            items.push((hi_b, vb));
        }
        for i in lb.idx + 1..cnt_b {
            items.push((node::slot_range(&leaf_b.pivots, cnt_b, i, lb.min, lb.max).1, slot(leaf_b, i)));
        }
        // Values of the overwritten slots in the two edge leaves: moved into a
        // remnant, or released (N4).
        let same_slot = la.node == lb.node && la.idx == lb.idx;
        if same_slot {
            if !va.is_null() {
                match (left_kept, right_kept) {
                    // SAFETY: `va` owns its value; the second remnant needs
                    // one more owner (value.rs V2).
                    (true, true) => unsafe { V::clone_word(va) },
                    (false, false) => garbage.values.push(va),
                    _ => {}
                }
            }
        } else {
            if !va.is_null() && !left_kept {
                garbage.values.push(va);
            }
            if !vb.is_null() && !right_kept {
                garbage.values.push(vb);
            }
            let (mid_a, mid_b) =
                if la.node == lb.node { (la.idx + 1..lb.idx, 0..0) } else { (la.idx + 1..cnt_a, 0..lb.idx) };
            for i in mid_a {
                garbage.values.extend(Some(slot(leaf_a, i)).filter(|p| !p.is_null()));
            }
            for i in mid_b {
                garbage.values.extend(Some(slot(leaf_b, i)).filter(|p| !p.is_null()));
            }
        }
        removed += garbage.values.len();
        if !v.is_null() {
            added += 1;
        }
        if same_slot && left_kept && right_kept && !va.is_null() {
            added += 1; // one entry became two
        }
        // Merge adjacent free items (R4 makes this rare; keep the invariant).
        items.dedup_by(|next, prev| {
            if next.1.is_null() && prev.1.is_null() {
                prev.0 = next.0;
                true
            } else {
                false
            }
        });

        let mut blocks = std::mem::take(&mut self.state.blocks);
        let before = blocks.handed_out;
        let root = self.rebuild(&mut sc, &mut items, &mut removed, &mut blocks);
        let garbage = &mut sc.garbage;
        let built = blocks.handed_out - before;
        self.state.blocks = blocks;
        self.state.live_nodes = self.state.live_nodes + built - garbage.nodes.len();
        self.tree.pool.size_for(self.state.live_nodes);
        // R1: publish (unless R5 already did, in place), then kill, then retire.
        if let Some(root) = root {
            // ORDERING: Release publishes every new node's contents to
            // readers, whose root load is Acquire.
            self.raw().root.store(root.as_raw(), Ordering::Release);
        }
        // Quadratic, but allocation-free, so that debug builds keep R8
        // (tests/write_allocs.rs); a store retires a handful of nodes.
        debug_assert!(
            garbage.nodes.iter().enumerate().all(|(i, n)| !garbage.nodes[..i].contains(n)),
            "R7: a node retired twice"
        );
        for n in &garbage.nodes {
            // SAFETY: write lock held; the node is allocated until retired.
            unsafe { n.meta() }.kill();
        }
        let len = self.raw().len.load(Ordering::Relaxed);
        self.raw().len.store(len + added - removed, Ordering::Relaxed);
        self.state.leaf_items = items;
        let owned = if V::OWNS { garbage.values.len() } else { 0 };
        self.flush_before(garbage.nodes.len(), owned);
        let pending = &mut self.state.garbage;
        pending.nodes.append(&mut garbage.nodes);
        if V::OWNS {
            pending.values.append(&mut garbage.values);
        } else {
            garbage.values.clear(); // V3: counted in `removed`, nothing to free
        }
        self.state.scratch = Some(sc);
        self.maybe_flush();
    }

    /// Rebuilds the levels above a changed span of leaves up to the root and
    /// returns the new root (R1, R3).
    fn rebuild(
        &self,
        sc: &mut Scratch<V>,
        leaf_items: &mut Vec<(u64, Word)>,
        removed: &mut usize,
        blocks: &mut Blocks,
    ) -> Option<NodePtr<V>> {
        let Scratch {
            pa,
            pb,
            inner_items,
            new_nodes,
            up,
            consumed,
            consumed_below,
            between,
            cousin_path,
            borrowed_leaf,
            borrowed_inner,
            garbage,
        } = sc;
        let height = pa.len() - 1;
        let pool = &*self.tree.pool;
        let mut block = || blocks.get(pool);
        inner_items.clear();
        // R7: every level's consumed nodes (`consumed_below`), which no
        // retirement of an overwritten subtree may retire again.
        consumed_below.clear();
        let mut level = 0;
        loop {
            let is_leaf = level == 0;
            let (cap, min_fill) = if is_leaf { (LEAF_SLOTS, LEAF_MIN) } else { (INNER_SLOTS, INNER_MIN) };
            consumed.clear();
            consumed.push(pa[level].node);
            if pb[level].node != pa[level].node {
                consumed.push(pb[level].node);
            }
            // R3: borrow a neighbour while short (the root may be short).
            // Nodes at either end of their level are exempt (T4): appends
            // and top-down placement fill them one slot at a time.
            // R6: a single node that overflows first takes in a sibling of
            // the same parent, so the two (or, if both were full, three)
            // nodes that result are each at least two-thirds full.
            loop {
                let len = if is_leaf { leaf_items.len() } else { inner_items.len() };
                let (span_min, span_max) = (pa[level].min, pb[level].max);
                if level == height || span_min == 0 || span_max == u64::MAX {
                    break;
                }
                let short = len < min_fill;
                let over = len > cap && consumed.len() == 1;
                if !short && !over {
                    break;
                }
                let parent_a = pa[level + 1];
                let parent_b = pb[level + 1];
                // SAFETY: write lock held.
                let cnt_pb = node::count(unsafe { parent_b.node.meta() }.load());
                let left = if parent_a.idx > 0 {
                    true
                } else if parent_b.idx + 1 < cnt_pb {
                    false
                } else if short {
                    // Only a cousin is left; it never is at this point for
                    // an end node, which `span_min`/`span_max` excluded.
                    span_min > 0
                } else {
                    break;
                };
                let addr = if left { span_min - 1 } else { span_max + 1 };
                self.descend_into(addr, cousin_path);
                let nb = cousin_path[level];
                let path = if left { &mut **pa } else { &mut **pb };
                path[level..].copy_from_slice(&cousin_path[level..]);
                consumed.push(nb.node);
                let before = if is_leaf { leaf_items.len() } else { inner_items.len() };
                // SAFETY: write lock held.
                let cnt = node::count(unsafe { nb.node.meta() }.load());
                // SAFETY: as above.
                match unsafe { nb.node.get() } {
                    NodeRef::Leaf(l) => {
                        borrowed_leaf.clear();
                        borrowed_leaf.extend((0..cnt).map(|i| {
                            (
                                node::slot_range(&l.pivots, cnt, i, nb.min, nb.max).1,
                                l.slots[i].load(Ordering::Relaxed).cast_const(),
                            )
                        }));
                        if left {
                            // R8: the two vectors trade places; both keep
                            // their memory for the next store.
                            borrowed_leaf.append(leaf_items);
                            std::mem::swap(leaf_items, borrowed_leaf);
                        } else {
                            leaf_items.append(borrowed_leaf);
                        }
                    }
                    NodeRef::Inner(n) => {
                        borrowed_inner.clear();
                        borrowed_inner.extend((0..cnt).map(|i| {
                            (node::slot_range(&n.pivots, cnt, i, nb.min, nb.max).1, n.child(i), n.gap(i))
                        }));
                        if left {
                            borrowed_inner.append(inner_items);
                            std::mem::swap(inner_items, borrowed_inner);
                        } else {
                            inner_items.append(borrowed_inner);
                        }
                    }
                }
                debug_assert!((if is_leaf { leaf_items.len() } else { inner_items.len() }) > before);
            }
            // Free ranges could now touch across the borrowed boundary.
            if is_leaf {
                leaf_items.dedup_by(|next, prev| {
                    if next.1.is_null() && prev.1.is_null() {
                        prev.0 = next.0;
                        true
                    } else {
                        false
                    }
                });
            }
            garbage.nodes.extend_from_slice(consumed);
            consumed_below.extend_from_slice(consumed);
            // Split the span's items into new nodes.
            let span_min = pa[level].min;
            let edges = (span_min == 0, pb[level].max == u64::MAX);
            new_nodes.clear();
            if is_leaf {
                split_leaves(leaf_items, span_min, cap, edges, &mut block, new_nodes);
            } else {
                split_inners(inner_items, cap, edges, &mut block, new_nodes);
            }
            if level == height {
                return Some(grow_and_collapse(new_nodes, garbage, &mut block));
            }
            if new_nodes.len() == 1 && consumed.len() == 1 {
                // R5: one node replaced by one node over the same range: the
                // parent's pivots still hold, so swap it in place.
                let (_, n, gap) = new_nodes[0];
                let parent = pa[level + 1];
                // SAFETY: write lock held.
                let pn = unsafe { parent.node.inner() };
                pn.set_child(parent.idx, n);
                pn.set_gap(parent.idx, gap);
                fix_gaps(&pa[level + 1..]);
                return None;
            }
            // Move up: the parents' items around the span.
            let (a, b) = (pa[level + 1], pb[level + 1]);
            // SAFETY: write lock held.
            let (na, nb) = unsafe { (a.node.inner(), b.node.inner()) };
            // SAFETY: as above.
            let (ca, cb) = unsafe { (node::count(a.node.meta().load()), node::count(b.node.meta().load())) };
            up.clear();
            for i in 0..a.idx {
                up.push((node::slot_range(&na.pivots, ca, i, a.min, a.max).1, na.child(i), na.gap(i)));
            }
            up.extend_from_slice(new_nodes);
            // Children strictly between the span's edges were overwritten.
            between.clear();
            if a.node == b.node {
                between.extend((a.idx + 1..b.idx).map(|i| na.child(i)));
            } else {
                between.extend((a.idx + 1..ca).map(|i| na.child(i)).chain((0..b.idx).map(|i| nb.child(i))));
            }
            for &c in between.iter() {
                retire_subtree(c, consumed_below, garbage, removed);
            }
            for i in b.idx + 1..cb {
                up.push((node::slot_range(&nb.pivots, cb, i, b.min, b.max).1, nb.child(i), nb.gap(i)));
            }
            std::mem::swap(inner_items, up);
            level += 1;
        }
    }
}

/// Recomputes gaps up the path after child `path[0].idx` of `path[0].node`
/// changed, stopping where the largest gap of a node does not change (N6).
fn fix_gaps<V>(path: &[Level<V>]) {
    for w in path.windows(2) {
        let (n, parent) = (w[0], w[1]);
        // SAFETY: write lock held: nodes on the path stay allocated.
        let cnt = node::count(unsafe { n.node.meta() }.load());
        // SAFETY: as above; internal nodes.
        let (inner, pinner) = unsafe { (n.node.inner(), parent.node.inner()) };
        let g = (0..cnt).map(|i| inner.gap(i)).max().unwrap_or(0);
        if pinner.gap(parent.idx) == g {
            return;
        }
        pinner.set_gap(parent.idx, g);
    }
}

/// Adds levels on top while the root level has more than one node, then
/// drops single-child roots.
fn grow_and_collapse<V: Value>(
    top: &[(u64, NodePtr<V>, u64)],
    garbage: &mut Garbage<V>,
    block: &mut impl FnMut() -> Block,
) -> NodePtr<V> {
    let mut root = top[0].1;
    if top.len() > 1 {
        // Growing a level is rare (the root split): new vectors are fine.
        let mut top = top.to_vec();
        while top.len() > 1 {
            let mut next = Vec::with_capacity(2);
            split_inners(&top, INNER_SLOTS, (true, true), block, &mut next);
            top = next;
        }
        root = top[0].1;
    }
    loop {
        // SAFETY: the node is new or reachable under the write lock.
        let meta = unsafe { root.meta() }.load();
        if node::is_leaf(meta) || node::count(meta) > 1 {
            return root;
        }
        garbage.nodes.push(root);
        // SAFETY: as above; an internal node.
        root = unsafe { root.inner() }.child(0);
    }
}

/// Frees a whole overwritten subtree after the grace period, except nodes
/// whose items were moved elsewhere (`keep`, at any level: R7).
fn retire_subtree<V: Value>(
    n: NodePtr<V>,
    keep: &[NodePtr<V>],
    garbage: &mut Garbage<V>,
    removed: &mut usize,
) {
    if keep.contains(&n) {
        return;
    }
    garbage.nodes.push(n);
    // SAFETY: write lock held: the node is still allocated.
    let cnt = node::count(unsafe { n.meta() }.load());
    // SAFETY: as above.
    match unsafe { n.get() } {
        NodeRef::Leaf(l) => {
            for s in &l.slots[..cnt] {
                let p = s.load(Ordering::Relaxed).cast_const();
                if !p.is_null() {
                    garbage.values.push(p);
                    *removed += 1;
                }
            }
        }
        NodeRef::Inner(i) => {
            for c in (0..cnt).map(|k| i.child(k)) {
                retire_subtree(c, keep, garbage, removed);
            }
        }
    }
}

/// How `n` items are cut into nodes of at most `cap`: evenly, except that a
/// span at one end of its level packs full nodes away from that end and
/// leaves the remainder in the end node (exempt from the minimum, T4), so
/// that appends at either end of the address space fill nodes completely,
/// as Linux's append and split-at-end cases do.
fn chunks(n: usize, cap: usize, (left_edge, right_edge): (bool, bool)) -> impl Iterator<Item = Range<usize>> {
    let k = n.div_ceil(cap).max(1);
    let rem = n - (k - 1) * cap;
    (0..k).map(move |j| match (left_edge, right_edge) {
        (false, true) => j * cap..(j * cap + if j + 1 == k { rem } else { cap }),
        (true, false) if j == 0 => 0..rem,
        (true, false) => rem + (j - 1) * cap..rem + j * cap,
        _ => (j * n / k)..((j + 1) * n / k),
    })
}

/// New leaves for `items` spanning from `min`; appends their inner items
/// to `out`.
fn split_leaves<V>(
    items: &[(u64, Word)],
    mut min: u64,
    cap: usize,
    edges: (bool, bool),
    block: &mut impl FnMut() -> Block,
    out: &mut Vec<(u64, NodePtr<V>, u64)>,
) {
    for r in chunks(items.len(), cap, edges) {
        let part = &items[r];
        let mut gap = 0u64;
        let mut lo = min;
        for &(last, v) in part {
            if v.is_null() {
                gap = gap.max(last - lo);
            }
            lo = last.wrapping_add(1);
        }
        let last = part[part.len() - 1].0;
        out.push((last, NodePtr::new_leaf(block(), part), gap));
        min = last.wrapping_add(1);
    }
}

/// New internal nodes for `items`; appends their items to `out`.
fn split_inners<V>(
    items: &[(u64, NodePtr<V>, u64)],
    cap: usize,
    edges: (bool, bool),
    block: &mut impl FnMut() -> Block,
    out: &mut Vec<(u64, NodePtr<V>, u64)>,
) {
    for r in chunks(items.len(), cap, edges) {
        let part = &items[r];
        let gap = part.iter().map(|it| it.2).max().unwrap_or(0);
        out.push((part[part.len() - 1].0, NodePtr::new_inner(block(), part), gap));
    }
}
