//! Node layouts: 256-byte leaves and internal nodes, and the raw pointers
//! between them.
//!
//! # Owns
//! [`Leaf`], [`Inner`], [`NodePtr`], node allocation and freeing.
//!
//! # Invariants
//! - N1. A node is immutable once published (reachable from the root) except
//!   for single atomic slot stores: a leaf's `slots` (exact-fit replacement
//!   of one non-null value by another), an internal node's `children` (a
//!   child replaced by one new node covering the same range), and the gap
//!   words of N6; and the `DEAD` bit of `meta`.
//! - N2. `meta` = `DEAD` (bit 0) | `LEAF` (bit 1) | `count << 8`. `count` is the
//!   number of slots in use (1..=capacity); slot `i` covers
//!   `[pivot[i-1] + 1, pivot[i]]`, with `pivot[-1] + 1` the node's minimum and
//!   `pivot[count-1]` implicitly its maximum (both come from the parent, so
//!   only `count - 1` pivots are stored).
//! - N3. A node is freed only after it was marked dead, unlinked, and a grace
//!   period of the tree's domain passed (write.rs hands it to `Domain::call`).
//! - N5. Pivots past `count - 1` hold `u64::MAX`, which no used pivot can be
//!   (a used pivot is below the node's maximum), so a slot search can count
//!   pivots below an address without knowing `count`.
//! - N6. Gaps are updated in place (relaxed atomic stores) when a store
//!   changes the largest free range under a child without changing the
//!   tree's shape. Readers use them only to skip subtrees; the leaf a gap
//!   search ends in is authoritative. Under the write lock they are exact
//!   (tree.rs T3).
//! - N4. Leaf slots hold value words (value.rs; null = empty range); each
//!   non-null slot owns its value once (value.rs V2).
//!
//! # Linux
//! `struct maple_range_64` (leaf: 15 pivots, 16 slots) and
//! `struct maple_arange_64` (internal: 9 pivots, 10 slots, 10 gaps);
//! `ma_dead_node()`. The parent pointer is not stored: writers walk down and
//! keep the path, so readers never need it, and its 8 bytes hold `meta`.

use std::marker::PhantomData;
use std::ptr::NonNull;

use crate::alloc::{Block, NODE_LAYOUT};
use crate::sync::{AtomicPtr, AtomicU64, Ordering};
use crate::value::Word;

/// Slots in a leaf.
pub(crate) const LEAF_SLOTS: usize = 16;
/// Slots (children) in an internal node.
pub(crate) const INNER_SLOTS: usize = 10;
/// The fewest slots a non-root leaf keeps.
pub(crate) const LEAF_MIN: usize = 6;
/// The fewest children a non-root internal node keeps.
pub(crate) const INNER_MIN: usize = 4;

const DEAD: u64 = 1;
const LEAF: u64 = 2;

/// The header every node starts with (N2).
#[repr(C)]
pub(crate) struct Meta(AtomicU64);

impl Meta {
    fn new(leaf: bool, count: usize) -> Self {
        Meta(AtomicU64::new(if leaf { LEAF } else { 0 } | ((count as u64) << 8)))
    }
    /// ORDERING: Acquire pairs with `kill`'s Release: a reader that sees a
    /// node alive after reading a slot read the slot while it was current.
    #[inline(always)]
    pub(crate) fn load(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }
    pub(crate) fn kill(&self) {
        // ORDERING: Release, after the replacement was published (write.rs).
        self.0.fetch_or(DEAD, Ordering::Release);
    }
}

#[inline(always)]
pub(crate) fn is_dead(meta: u64) -> bool {
    meta & DEAD != 0
}
#[inline(always)]
pub(crate) fn is_leaf(meta: u64) -> bool {
    meta & LEAF != 0
}
#[inline(always)]
pub(crate) fn count(meta: u64) -> usize {
    ((meta >> 8) & 0xff) as usize
}

/// A leaf: 8 + 120 + 128 = 256 bytes.
#[repr(C, align(64))]
pub(crate) struct Leaf<T> {
    pub(crate) meta: Meta,
    pub(crate) pivots: [u64; LEAF_SLOTS - 1],
    pub(crate) slots: [AtomicPtr<()>; LEAF_SLOTS],
    _t: PhantomData<*const T>,
}

/// An internal node: 8 + 72 + 80 + 80 = 240 bytes, padded to 256.
#[repr(C, align(64))]
pub(crate) struct Inner<T> {
    pub(crate) meta: Meta,
    pub(crate) pivots: [u64; INNER_SLOTS - 1],
    /// The largest gap (`last - first` of a free range) under each child
    /// (N6: updated in place by the writer).
    gaps: [AtomicU64; INNER_SLOTS],
    /// N1: replaced in place by a single atomic store when a child is
    /// replaced by one node covering the same range.
    children: [AtomicPtr<Meta>; INNER_SLOTS],
    _t: PhantomData<*const T>,
}

impl<T> Inner<T> {
    /// Child `i`.
    #[inline(always)]
    pub(crate) fn child(&self, i: usize) -> NodePtr<T> {
        // ORDERING: Acquire pairs with `set_child`'s Release: the new child's
        // contents are visible.
        let p = self.children[i].load(Ordering::Acquire);
        // SAFETY: slots below `count` always hold a node; the rest repeat
        // child 0 (see `new_inner`), so the pointer is never null.
        unsafe { NodePtr::from_raw(p) }
    }

    /// Publishes `n` as child `i` (writer only, N1).
    pub(crate) fn set_child(&self, i: usize, n: NodePtr<T>) {
        // ORDERING: Release publishes `n`'s contents to readers.
        self.children[i].store(n.as_raw(), Ordering::Release);
    }

    /// The largest gap under child `i` (N6).
    #[inline(always)]
    pub(crate) fn gap(&self, i: usize) -> u64 {
        self.gaps[i].load(Ordering::Relaxed)
    }

    /// Sets the gap of child `i` (writer only, N6).
    pub(crate) fn set_gap(&self, i: usize, g: u64) {
        self.gaps[i].store(g, Ordering::Relaxed);
    }
}

const _: () = assert!(std::mem::size_of::<Leaf<u8>>() == NODE_LAYOUT.size());
const _: () = assert!(std::mem::size_of::<Inner<u8>>() == NODE_LAYOUT.size());
const _: () = assert!(std::mem::align_of::<Leaf<u8>>() <= NODE_LAYOUT.align());
const _: () = assert!(std::mem::align_of::<Inner<u8>>() <= NODE_LAYOUT.align());

/// A pointer to a leaf or an internal node; which one is in its `meta`.
pub(crate) struct NodePtr<T> {
    ptr: NonNull<Meta>,
    _t: PhantomData<*const T>,
}

impl<T> Clone for NodePtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for NodePtr<T> {}
impl<T> PartialEq for NodePtr<T> {
    fn eq(&self, o: &Self) -> bool {
        self.ptr == o.ptr
    }
}
impl<T> Eq for NodePtr<T> {}
impl<T> std::fmt::Debug for NodePtr<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:p}", self.ptr)
    }
}

// SAFETY: a NodePtr is a plain address; what may be done through it is
// governed by N1/N3 and the tree's locks, not by which thread holds it.
unsafe impl<T> Send for NodePtr<T> {}
// SAFETY: as above.
unsafe impl<T> Sync for NodePtr<T> {}

/// What a node is, seen through a [`NodePtr`].
pub(crate) enum NodeRef<'a, T> {
    Leaf(&'a Leaf<T>),
    Inner(&'a Inner<T>),
}

impl<T> NodePtr<T> {
    /// The node's header.
    ///
    /// # Safety
    /// The node must not have been freed (N3): the caller holds a guard of
    /// the tree's domain, or the write lock, or owns the tree.
    #[inline(always)]
    pub(crate) unsafe fn meta<'a>(self) -> &'a Meta {
        // SAFETY: by the caller's contract the node is allocated.
        unsafe { self.ptr.as_ref() }
    }

    /// The node, typed.
    ///
    /// # Safety
    /// As for [`meta`](Self::meta).
    #[inline(always)]
    pub(crate) unsafe fn get<'a>(self) -> NodeRef<'a, T> {
        // SAFETY: allocated by contract; `meta` is the first field of both
        // `#[repr(C)]` layouts, and its LEAF bit says which one this is (N2).
        unsafe {
            if is_leaf(self.meta().load()) {
                NodeRef::Leaf(self.ptr.cast::<Leaf<T>>().as_ref())
            } else {
                NodeRef::Inner(self.ptr.cast::<Inner<T>>().as_ref())
            }
        }
    }

    /// As a leaf, when the caller already read `meta`.
    ///
    /// # Safety
    /// As for [`meta`](Self::meta), and the node is a leaf.
    #[inline(always)]
    pub(crate) unsafe fn leaf<'a>(self) -> &'a Leaf<T> {
        // SAFETY: by contract.
        unsafe { self.ptr.cast::<Leaf<T>>().as_ref() }
    }

    /// As an internal node, when the caller already read `meta`.
    ///
    /// # Safety
    /// As for [`meta`](Self::meta), and the node is internal.
    #[inline(always)]
    pub(crate) unsafe fn inner<'a>(self) -> &'a Inner<T> {
        // SAFETY: by contract.
        unsafe { self.ptr.cast::<Inner<T>>().as_ref() }
    }

    pub(crate) fn as_raw(self) -> *mut Meta {
        self.ptr.as_ptr()
    }

    /// # Safety
    /// `p` must be a live node pointer from [`as_raw`](Self::as_raw).
    pub(crate) unsafe fn from_raw(p: *mut Meta) -> Self {
        // SAFETY: non-null by contract.
        NodePtr { ptr: unsafe { NonNull::new_unchecked(p) }, _t: PhantomData }
    }

    /// Builds, in `block`, a leaf holding `items` (`(last, value)`; the last
    /// item's `last` is the node maximum and is not stored).
    pub(crate) fn new_leaf(block: Block, items: &[(u64, Word)]) -> Self {
        debug_assert!((1..=LEAF_SLOTS).contains(&items.len()));
        let mut pivots = [u64::MAX; LEAF_SLOTS - 1];
        for (p, it) in pivots.iter_mut().zip(&items[..items.len() - 1]) {
            *p = it.0;
        }
        let slots = std::array::from_fn(|i| {
            AtomicPtr::new(items.get(i).map_or(std::ptr::null_mut(), |it| it.1.cast_mut()))
        });
        let p = block.as_ptr().cast::<Leaf<T>>();
        // SAFETY: the block is NODE_LAYOUT-sized and aligned (asserted below)
        // and unused (alloc.rs A1).
        unsafe { p.write(Leaf { meta: Meta::new(true, items.len()), pivots, slots, _t: PhantomData }) };
        // SAFETY: `p` is non-null: it came from a `Block`.
        NodePtr { ptr: unsafe { NonNull::new_unchecked(p.cast()) }, _t: PhantomData }
    }

    /// Builds, in `block`, an internal node holding `items`
    /// (`(last, child, gap)`).
    pub(crate) fn new_inner(block: Block, items: &[(u64, NodePtr<T>, u64)]) -> Self {
        debug_assert!((1..=INNER_SLOTS).contains(&items.len()));
        let mut pivots = [u64::MAX; INNER_SLOTS - 1];
        for (p, it) in pivots.iter_mut().zip(&items[..items.len() - 1]) {
            *p = it.0;
        }
        let gaps = std::array::from_fn(|i| AtomicU64::new(items.get(i).map_or(0, |it| it.2)));
        let children =
            std::array::from_fn(|i| AtomicPtr::new(items.get(i).map_or(items[0].1, |it| it.1).as_raw()));
        let p = block.as_ptr().cast::<Inner<T>>();
        // SAFETY: as in `new_leaf`.
        unsafe {
            p.write(Inner { meta: Meta::new(false, items.len()), pivots, gaps, children, _t: PhantomData })
        };
        // SAFETY: `p` is non-null: it came from a `Block`.
        NodePtr { ptr: unsafe { NonNull::new_unchecked(p.cast()) }, _t: PhantomData }
    }

    /// The node's memory, to reuse or free (not its children or values;
    /// nodes have no drop glue).
    ///
    /// # Safety
    /// The node is unreachable by any reader (N3) and given up once.
    pub(crate) unsafe fn into_block(self) -> Block {
        // SAFETY: nodes live in `Block`s (see the constructors); the caller
        // gives up the only claim on this one.
        unsafe { Block::from_raw(self.ptr.cast()) }
    }
}

/// The slot bounds of slot `i` of a node spanning `[min, max]` (N2).
#[inline(always)]
pub(crate) fn slot_range(pivots: &[u64], count: usize, i: usize, min: u64, max: u64) -> (u64, u64) {
    let lo = if i == 0 { min } else { pivots[i - 1] + 1 };
    let hi = if i + 1 == count { max } else { pivots[i] };
    (lo, hi)
}

/// The slot of a node that covers `addr` (N2): the number of pivots below
/// `addr`. Unused pivots hold `u64::MAX` (N5), so the search needs no bound
/// but the array's. A branch-free binary search (conditional moves, four
/// steps for a leaf): a linear scan mispredicts its exit once per level.
#[inline(always)]
pub(crate) fn find_slot<const P: usize>(pivots: &[u64; P], _count: usize, addr: u64) -> usize {
    let mut i = 0usize;
    let mut step = (P + 1).next_power_of_two() / 2;
    while step > 0 {
        let j = i + step - 1;
        // `j < P` folds away for leaves (P = 15); past the end counts as MAX.
        let below = j < P && pivots[j.min(P - 1)] < addr;
        i += if below { step } else { 0 };
        step /= 2;
    }
    i
}

/// Asks the CPU to start loading all four cache lines of a node, so a walk
/// pays one memory round trip per level instead of two (header and pivots,
/// then the slot the pivots choose).
#[inline(always)]
pub(crate) fn prefetch<T>(n: NodePtr<T>) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        let p = n.as_raw().cast::<i8>();
        // SAFETY: prefetch is a hint that never faults, whatever the address;
        // `wrapping_add` keeps the pointer arithmetic defined.
        unsafe {
            _mm_prefetch::<_MM_HINT_T0>(p);
            _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(64));
            _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(128));
            _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(192));
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = n;
}
