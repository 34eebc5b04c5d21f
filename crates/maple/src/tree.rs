//! The tree's public API: [`MapleTree`], its read operations and [`Entry`].
//!
//! # Owns
//! The root pointer, the entry count, the write lock and the RCU domain the
//! tree frees its nodes through.
//!
//! # Invariants
//! - T1. The tree partitions `[0, u64::MAX]`: every address is in exactly one
//!   leaf slot, empty (null) or holding a value. An empty tree is one leaf
//!   with one empty slot.
//! - T2. All leaves are at the same depth. Pivots strictly increase inside a
//!   node and lie within the bounds the parent gives it.
//! - T3. Each internal node's `gaps[i]` is exactly the largest free range
//!   (as `last - first`) in child `i`'s subtree.
//! - T4. Fill: every node but the root has at least `LEAF_MIN`/`INNER_MIN`
//!   slots; an internal root has at least 2.
//! - T5. No two free ranges are adjacent, also across leaves.
//! - T6. `len` is the number of non-empty slots.
//!
//! `validate.rs` checks T1–T6.
//!
//! # Concurrency
//! Read operations take a [`Guard`] of the tree's domain and are lock-free.
//! Writes go through a [`Writer`] from [`MapleTree::write`], which holds the
//! tree's mutex; one writer at a time, never blocking readers.
//!
//! # Linux
//! `struct maple_tree` with `MT_FLAGS_ALLOC_RANGE | MT_FLAGS_USE_RCU`;
//! Linux's ranges are inclusive `[index, last]`, this API's are half-open
//! `start..end` as VMAs are (the conversion is `last = end - 1`).

use std::fmt;
use std::marker::PhantomData;
use std::ops::Range;
use std::sync::Arc;

use rcuvm_rcu::{Domain, Guard};

use crate::alloc::{Block, NodePool};
use crate::node::{self, Meta, NodePtr, NodeRef};
use crate::sync::{AtomicPtr, AtomicUsize, Mutex, Ordering};
use crate::value::{Value, Word};
use crate::walk::SlotView;
use crate::write::{Garbage, Writer, WriterState};

/// Why a tree operation was refused. The tree is unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Error {
    /// The range is empty or inverted (`start >= end`).
    InvalidRange,
    /// `insert` found something stored in the range.
    Exists,
    /// `replace` found no entry spanning exactly the range.
    NotFound,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Error::InvalidRange => "empty or inverted range",
            Error::Exists => "range already occupied",
            Error::NotFound => "no entry spans exactly this range",
        })
    }
}

impl std::error::Error for Error {}

/// `start..end` as inclusive `[first, last]`, or `InvalidRange`.
pub(crate) fn check_range(r: &Range<u64>) -> Result<(u64, u64), Error> {
    if r.start >= r.end { Err(Error::InvalidRange) } else { Ok((r.start, r.end - 1)) }
}

/// A stored range and its value, borrowed for as long as the read lasts.
pub struct Entry<'a, V: Value> {
    /// The entry's half-open range.
    pub range: Range<u64>,
    /// The value: `&T` for an `Arc<T>` tree, a copy for integers kept in the
    /// slot (value.rs).
    pub value: V::Ref<'a>,
    word: Word,
}

impl<V: Value> Entry<'_, V> {
    /// An owner of the value, usable after the read ends (a new `Arc`
    /// count, or a copy).
    pub fn to_owned_value(&self) -> V {
        // SAFETY: the slot still owns `word` while this entry's borrow (a
        // guard or the write lock) lasts, so one more owner may be made and
        // taken (value.rs V2).
        unsafe {
            V::clone_word(self.word);
            V::from_word(self.word)
        }
    }
}

impl<T: Send + Sync + 'static> Entry<'_, Arc<T>> {
    /// A counted reference to the value, usable after the read ends.
    pub fn to_arc(&self) -> Arc<T> {
        self.to_owned_value()
    }
}

impl<V: Value> Clone for Entry<'_, V> {
    fn clone(&self) -> Self {
        Entry { range: self.range.clone(), value: self.value, word: self.word }
    }
}

impl<'a, V: Value> fmt::Debug for Entry<'a, V>
where
    V::Ref<'a>: fmt::Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}..{:#x} => {:?}", self.range.start, self.range.end, self.value)
    }
}

/// The lock-free core: the root and what readers need.
pub(crate) struct Raw<V> {
    pub(crate) root: AtomicPtr<Meta>,
    pub(crate) len: AtomicUsize,
    _t: PhantomData<*const V>,
}

impl<V> Raw<V> {
    /// The current root (T1).
    #[inline(always)]
    pub(crate) fn root(&self) -> NodePtr<V> {
        // ORDERING: Acquire pairs with the writer's Release root store: the
        // new nodes' contents are visible.
        let p = self.root.load(Ordering::Acquire);
        // SAFETY: the root is never null (T1) and was made by `as_raw`.
        unsafe { NodePtr::from_raw(p) }
    }
}

impl<V: Value> Raw<V> {
    fn to_entry<'a>(s: SlotView) -> Option<Entry<'a, V>> {
        if s.value.is_null() {
            return None;
        }
        // SAFETY: a non-null slot word owns its value (node.rs N4), which is
        // released only after a grace period, or under the write lock; `'a`
        // is bounded by the caller's guard or write-lock borrow.
        let value = unsafe { V::borrow(s.value) };
        Some(Entry { range: s.lo..s.hi + 1, value, word: s.value })
    }

    pub(crate) fn entry_at<'a>(&self, addr: u64) -> Option<Entry<'a, V>> {
        if addr == u64::MAX {
            return None; // never stored: ranges end at u64::MAX at most
        }
        Self::to_entry(self.walk(addr))
    }

    pub(crate) fn first_from<'a>(&self, addr: u64) -> Option<Entry<'a, V>> {
        self.find(addr).and_then(Self::to_entry)
    }

    pub(crate) fn last_before<'a>(&self, addr: u64) -> Option<Entry<'a, V>> {
        self.find_rev(addr).and_then(Self::to_entry)
    }

    pub(crate) fn empty_area_half_open(&self, lo: u64, hi: u64, size: u64, rev: bool) -> Option<u64> {
        if lo >= hi || size == 0 {
            return None;
        }
        self.empty_area(lo, hi - 1, size, rev)
    }
}

/// An RCU-safe map from non-overlapping half-open `u64` ranges to values,
/// with the largest free gap of every subtree tracked for placement.
///
/// Readers ([`load`](Self::load), [`find`](Self::find), [`next`](Self::next),
/// [`prev`](Self::prev), [`iter_from`](Self::iter_from),
/// [`empty_area`](Self::empty_area), [`empty_area_rev`](Self::empty_area_rev))
/// run under a [`Guard`] of the tree's domain without locks; a
/// [`Writer`] changes the tree while they run.
///
/// # Examples
/// ```
/// use std::sync::Arc;
/// use rcuvm_maple::MapleTree;
/// use rcuvm_rcu::Domain;
///
/// let tree = MapleTree::new(Arc::new(Domain::new()));
/// {
///     let mut w = tree.write();
///     w.insert(0x1000..0x3000, Arc::new("text")).unwrap();
///     w.insert(0x5000..0x6000, Arc::new("heap")).unwrap();
///     assert!(w.insert(0x2000..0x4000, Arc::new("clash")).is_err());
/// }
/// let g = tree.domain().read();
/// let e = tree.load(0x2fff, &g).unwrap();
/// assert_eq!((e.range.clone(), *e.value), (0x1000..0x3000, "text"));
/// assert_eq!(tree.empty_area(0, 1 << 20, 0x2000, &g), Some(0x3000));
/// let all: Vec<_> = tree.iter_from(0, &g).map(|e| *e.value).collect();
/// assert_eq!(all, ["text", "heap"]);
/// ```
///
/// Small integers are kept in the slot itself (see [`Value`]), and a read
/// returns a copy:
/// ```
/// # use std::sync::Arc;
/// # use rcuvm_maple::MapleTree;
/// # use rcuvm_rcu::Domain;
/// let tree: MapleTree<u32> = MapleTree::new(Arc::new(Domain::new()));
/// tree.write().insert(0x1000..0x2000, 7).unwrap();
/// let g = tree.domain().read();
/// assert_eq!(tree.load(0x1800, &g).map(|e| e.value), Some(7));
/// ```
pub struct MapleTree<V: Value> {
    pub(crate) raw: Raw<V>,
    pub(crate) domain: Arc<Domain>,
    /// `domain.id()`, kept here so checking a guard costs no pointer chase.
    domain_id: u64,
    pub(crate) pool: Arc<NodePool>,
    writer: Mutex<WriterState<V>>,
}

// SAFETY: the raw pointers inside are nodes and slot words, each owning
// its value once (value.rs V2); the tree hands out reads of values to many
// threads (V: Sync) and drops values on the reclaimer thread (V: Send).
unsafe impl<V: Value> Send for MapleTree<V> {}
// SAFETY: as above; shared access is the RCU read side or the write lock.
unsafe impl<V: Value> Sync for MapleTree<V> {}

impl<V: Value> MapleTree<V> {
    /// An empty tree whose nodes are freed through `domain`'s grace periods.
    pub fn new(domain: Arc<Domain>) -> Self {
        Self::with_free(domain, drop::<V>)
    }

    /// An empty tree that passes each value a store or erase retired to
    /// `free` once a grace period has passed, instead of dropping it
    /// (write.rs R10): a user's own cache of value objects, as Linux's
    /// mm frees VMAs to `vm_area_cachep`. `free` runs where RCU callbacks
    /// run; values still in the tree when it is dropped are dropped.
    /// Retired values are handed to RCU in batches (write.rs R9: 64 values
    /// or 120 nodes), not when a `Writer` is dropped: call
    /// [`Writer::flush`] to hand over what is pending, or a value may wait
    /// for later stores (or the tree's drop) before `free` sees it.
    pub fn with_free(domain: Arc<Domain>, free: fn(V)) -> Self {
        let root = NodePtr::<V>::new_leaf(Block::alloc(), &[(u64::MAX, std::ptr::null())]);
        let pool = Arc::new(NodePool::new());
        MapleTree {
            raw: Raw { root: AtomicPtr::new(root.as_raw()), len: AtomicUsize::new(0), _t: PhantomData },
            domain_id: domain.id(),
            domain,
            writer: Mutex::new(WriterState::new(pool.clone(), free)),
            pool,
        }
    }

    /// The RCU domain readers must hold a guard of.
    pub fn domain(&self) -> &Arc<Domain> {
        &self.domain
    }

    /// Takes the write lock.
    ///
    /// Context: may block on another writer; never inside a section that
    /// another writer's caller waits on.
    pub fn write(&self) -> Writer<'_, V> {
        Writer { tree: self, state: self.writer.lock() }
    }

    #[inline(always)]
    fn check_guard(&self, g: &Guard<'_>) {
        assert_eq!(g.domain_id(), self.domain_id, "rcuvm-maple: guard of another domain than the tree's");
    }

    /// The entry containing `addr`.
    ///
    /// Context: RCU read side (`guard` of [`domain`](Self::domain)); lock-free.
    #[inline]
    pub fn load<'a>(&'a self, addr: u64, guard: &'a Guard<'_>) -> Option<Entry<'a, V>> {
        self.check_guard(guard);
        self.raw.entry_at(addr)
    }

    /// The first entry that contains `addr` or lies above it.
    pub fn find<'a>(&'a self, addr: u64, guard: &'a Guard<'_>) -> Option<Entry<'a, V>> {
        self.check_guard(guard);
        self.raw.first_from(addr)
    }

    /// The first entry entirely above `addr` (starting after it).
    pub fn next<'a>(&'a self, addr: u64, guard: &'a Guard<'_>) -> Option<Entry<'a, V>> {
        self.check_guard(guard);
        if addr == u64::MAX {
            return None;
        }
        let mut at = addr + 1;
        loop {
            let e = self.raw.first_from(at)?;
            if e.range.start > addr {
                return Some(e);
            }
            // It also holds `addr` (or, under a concurrent writer, a newer
            // entry does): look past it. `at` strictly grows.
            at = e.range.end;
            if at == u64::MAX {
                return None;
            }
        }
    }

    /// The last entry entirely below `addr` (ending at or before it).
    pub fn prev<'a>(&'a self, addr: u64, guard: &'a Guard<'_>) -> Option<Entry<'a, V>> {
        self.check_guard(guard);
        if addr == 0 {
            return None;
        }
        let mut at = addr - 1;
        loop {
            let e = self.raw.last_before(at)?;
            if e.range.end <= addr {
                return Some(e);
            }
            // It also holds `addr`: look below it. `at` strictly shrinks.
            if e.range.start == 0 {
                return None;
            }
            at = e.range.start - 1;
        }
    }

    /// Entries in address order from the one containing or above `addr`.
    /// Each step walks from the root to the address where the last one
    /// ended, so the iteration never goes backwards, never yields two
    /// overlapping entries, never follows a stale node, and yields every
    /// entry that exists for the whole iteration.
    pub fn iter_from<'a>(&'a self, addr: u64, guard: &'a Guard<'_>) -> Iter<'a, V> {
        self.check_guard(guard);
        Iter { raw: &self.raw, next: Some(addr), resumed: false }
    }

    /// The lowest `start` such that `[start, start + size)` is free and
    /// inside `[lo, hi)`.
    pub fn empty_area(&self, lo: u64, hi: u64, size: u64, guard: &Guard<'_>) -> Option<u64> {
        self.check_guard(guard);
        self.raw.empty_area_half_open(lo, hi, size, false)
    }

    /// The highest `start` such that `[start, start + size)` is free and
    /// inside `[lo, hi)` (top-down placement).
    pub fn empty_area_rev(&self, lo: u64, hi: u64, size: u64, guard: &Guard<'_>) -> Option<u64> {
        self.check_guard(guard);
        self.raw.empty_area_half_open(lo, hi, size, true)
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.raw.len.load(Ordering::Relaxed)
    }

    /// Whether the tree has no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Node counts and memory, taken under the write lock.
    pub fn stats(&self) -> TreeStats {
        let _w = self.write();
        let mut s = TreeStats { entries: self.len(), ..TreeStats::default() };
        fn visit<V>(n: NodePtr<V>, depth: usize, s: &mut TreeStats) {
            s.height = s.height.max(depth + 1);
            // SAFETY: write lock held: reachable nodes stay allocated.
            let cnt = node::count(unsafe { n.meta() }.load());
            // SAFETY: as above.
            match unsafe { n.get() } {
                NodeRef::Leaf(_) => {
                    s.leaves += 1;
                    s.leaf_slots += cnt;
                }
                NodeRef::Inner(i) => {
                    s.inners += 1;
                    for c in (0..cnt).map(|k| i.child(k)) {
                        visit(c, depth + 1, s);
                    }
                }
            }
        }
        visit(self.raw.root(), 0, &mut s);
        s.bytes = (s.leaves + s.inners) * 256;
        s
    }
}

impl<V: Value> Drop for MapleTree<V> {
    fn drop(&mut self) {
        // No reader can exist: every read borrows the tree. Free at once,
        // including what the writer retired and had not handed to RCU yet.
        {
            let mut w = self.writer.lock();
            let pending = std::mem::replace(&mut w.garbage, Garbage::new(None));
            drop(pending);
            w.blocks.release();
        }
        fn free<V: Value>(n: NodePtr<V>) {
            // SAFETY: `&mut` tree: nothing else reaches these nodes.
            let cnt = node::count(unsafe { n.meta() }.load());
            // SAFETY: as above.
            match unsafe { n.get() } {
                NodeRef::Leaf(l) if V::OWNS => {
                    for s in &l.slots[..cnt] {
                        let p = s.load(Ordering::Relaxed).cast_const();
                        if !p.is_null() {
                            // SAFETY: each non-null slot owns its value once
                            // (N4), given up here once.
                            drop(unsafe { V::from_word(p) });
                        }
                    }
                }
                NodeRef::Leaf(_) => {}
                NodeRef::Inner(i) => {
                    for c in (0..cnt).map(|k| i.child(k)) {
                        free(c);
                    }
                }
            }
            // SAFETY: as above; each node is reachable once.
            unsafe { n.into_block() }.dealloc();
        }
        free(self.raw.root());
    }
}

impl<V: Value> fmt::Debug for MapleTree<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MapleTree").field("len", &self.len()).finish_non_exhaustive()
    }
}

/// Shape and memory of a tree, from [`MapleTree::stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TreeStats {
    /// Entries (non-empty ranges).
    pub entries: usize,
    /// Leaf nodes.
    pub leaves: usize,
    /// Internal nodes.
    pub inners: usize,
    /// Levels, leaves included.
    pub height: usize,
    /// Slots used in leaves (entries and free ranges).
    pub leaf_slots: usize,
    /// Bytes of node memory (256 per node).
    pub bytes: usize,
}

/// Iterator from [`MapleTree::iter_from`].
pub struct Iter<'a, V: Value> {
    raw: &'a Raw<V>,
    next: Option<u64>,
    /// Whether an entry was yielded (the first may contain the start address).
    resumed: bool,
}

impl<'a, V: Value> Iterator for Iter<'a, V> {
    type Item = Entry<'a, V>;
    fn next(&mut self) -> Option<Entry<'a, V>> {
        loop {
            let at = self.next?;
            let e = self.raw.first_from(at)?;
            self.next = Some(e.range.end).filter(|&end| end != u64::MAX);
            // An entry that starts below where the last one ended was stored
            // after that one was read (they would overlap otherwise), so it
            // did not exist for the whole iteration: skip it rather than
            // report overlapping entries.
            if self.resumed && e.range.start < at {
                continue;
            }
            self.resumed = true;
            return Some(e);
        }
    }
}
