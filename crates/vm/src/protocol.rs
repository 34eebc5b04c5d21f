//! Steps of the lockless protocols that the loom models (tests/loom_vm.rs)
//! run as they are, on loom's primitives, rather than mirror.
//!
//! # Owns
//! Nothing. Each function here is one step of a protocol that a module of
//! this crate runs on its own types: generic over the tree's value type
//! (and, for [`read_stable`], over how the seqcount is loaded and how the
//! reader waits or locks), so that the same code runs on `Vma`s with std
//! atomics here and on a model's values with loom's there. Under
//! `--cfg rcuvm_loom` the tree (`rcuvm-maple`) and the domain
//! (`rcuvm-rcu`) are built on loom.
//!
//! # Invariants
//! - PR1. [`vma_still_mapped`]: fault.rs FL1 / strategy.rs S4's re-check,
//!   run under the PTL by `rcu-sync` and `rcu-dead` faults (and by the
//!   `vma-lock` fault's detached check).
//! - PR2. [`entries_in`]: what placement (`MmCall::unoccupied`) and the
//!   reaping of dead entries (`MmCall::reap_dead`) look at: every entry
//!   overlapping a range, dead entries included (strategy.rs S4).
//! - PR3. [`read_stable`]: the lockless reader of mm.rs A2 and A5
//!   (`AddressSpace::read_stable`). An entry whose tree range is not its
//!   VMA's own range is a read torn like any other: every change stores a
//!   VMA over exactly its range, so such an entry was cut by a store of a
//!   change under way, and the change's range (A6) need not cover it yet.
//!   Found in the suite's `maps-race` under `vma-lock` (one read in about
//!   a million): a shrink after an in-place expand (`tree_txn { store the
//!   remnant; erase the tail }`) cut the grown VMA to the tail, and a
//!   reader whose earlier line was the VMA before the expand read that tail
//!   as a VMA of its own; the change's range then held only the remnant.
//!   The loom model `maps_vs_shrink_after_expand` finds it without this
//!   check.

use std::sync::Arc;

use rcuvm_maple::{Entry, MapleTree, Writer};

/// Torn reads of one entry before a lockless reader takes the mmap lock
/// for read (mm.rs A5).
pub const READ_RETRIES: u32 = 8;

/// Changes of several stores whose ranges the writer keeps (mm.rs A6):
/// change `k` (the one that made `write_seq` `2k + 1`) is in slot
/// `k % TXN_LOG`. A reader that overlapped more changes than this retries.
pub const TXN_LOG: u64 = 16;

/// Whether `tree` still maps `va` to the very value `seen` (the object a
/// fault found under the same guard): FL1's re-check under the PTL (PR1).
/// A replacement by an equal-looking object (a split's slice, a dead
/// entry, a new mapping) is a change: VMAs are immutable, so a new object
/// is a new state.
pub fn vma_still_mapped<T: Send + Sync + 'static>(
    tree: &MapleTree<Arc<T>>,
    va: u64,
    seen: &T,
    g: &rcuvm_rcu::Guard<'_>,
) -> bool {
    tree.load(va, g).is_some_and(|e| std::ptr::eq(e.value, seen))
}

/// What [`entries_in`] finds: kept inline up to two entries, the common
/// case (one VMA, or a VMA and its neighbour), so that an mm call's lookup
/// allocates nothing (mm.rs A9). The `smallvec` 1.x type is part of this
/// module's API (it exists for the loom models and the mm calls); it
/// derefs to a slice and iterates like a `Vec`.
pub type Entries<T> = smallvec::SmallVec<[Arc<T>; 2]>;

/// Entries (live and dead) overlapping `[start, end)`, in order, as the
/// writer sees them (PR2).
pub fn entries_in<T: Send + Sync + 'static>(w: &Writer<'_, Arc<T>>, start: u64, end: u64) -> Entries<T> {
    let mut out = Entries::new();
    let mut at = start;
    while at < end {
        let Some(e) = w.find(at) else { break };
        if e.range.start >= end {
            break;
        }
        at = e.range.end;
        out.push(e.to_arc());
    }
    out
}

/// The reader's side of the writers' seqcount and of the mmap lock, for
/// [`read_stable`].
pub trait ReadSide<T> {
    /// The mmap read lock's guard.
    type Lock<'a>
    where
        Self: 'a;
    /// A SeqCst load of `write_seq` (odd while a writer makes a change of
    /// several tree stores, mm.rs A5).
    fn seq(&self) -> u64;
    /// What the reader does while `write_seq` stays odd, the `n`th time in
    /// a row (spin briefly, then yield).
    fn relax(&self, n: u32);
    /// Takes the mmap lock for read (the fallback after [`READ_RETRIES`]).
    fn lock(&self) -> Self::Lock<'_>;
    /// The range `[lo, hi)` that change `k` has stored into so far (mm.rs
    /// A6), or `None` when its slot no longer holds it (a later change
    /// took it: the reader must assume the worst).
    fn txn_range(&self, k: u64) -> Option<(u64, u64)>;
    /// Whether the whole read runs under the mmap read lock already
    /// (`mmap-lock`): then no seqcount is needed.
    fn whole_locked(&self) -> bool;
    /// Whether `v` is a dead entry (vma.rs V5), which readers skip.
    fn is_dead(&self, v: &T) -> bool;
    /// Whether the entry over `range` holding `v` was cut: its tree range
    /// is not `v`'s own. Every change stores a VMA over exactly its own
    /// range, so such an entry was cut by a later store of a change still
    /// under way (PR3).
    fn cut(&self, range: &std::ops::Range<u64>, v: &T) -> bool;
}

/// Calls `collect` on each live entry from `from` up, in address order,
/// and returns what it made (at most `limit` items), each from a state of
/// the tree with no change of several stores half done (mm.rs A2, A5).
///
/// Each entry is read under its own guard between two loads of the
/// seqcount; a read that overlapped a change of several stores that
/// stored into what the read depends on (from the address it started at
/// to the end of the entry it found: mm.rs A6) is redone, from outside the
/// read-side section (the writer may be waiting for a grace period). An
/// entry that begins below the end of the previous line is newer (a merge
/// over what was read): the lines it covers are taken back.
pub fn read_stable<T, R, S>(
    tree: &MapleTree<Arc<T>>,
    side: &S,
    from: u64,
    limit: usize,
    mut collect: impl FnMut(&Entry<'_, Arc<T>>) -> Option<R>,
) -> Vec<R>
where
    T: Send + Sync + 'static,
    S: ReadSide<T>,
{
    let whole = side.whole_locked();
    // Sized for every entry up front (dead ones included): growing it by
    // doubling costs a dozen reallocations per read of a big address space.
    let mut out: Vec<(u64, u64, R)> = Vec::with_capacity(limit.min(tree.len()));
    let mut at = from;
    let mut torn = 0;
    loop {
        let fallback = (!whole && torn >= READ_RETRIES).then(|| side.lock());
        let locked = whole || fallback.is_some();
        let s1 = side.seq();
        let g = tree.domain().read();
        let mut next = tree.find(at, &g);
        while let Some(e) = next.as_ref().filter(|e| side.is_dead(e.value)) {
            next = tree.find(e.range.end, &g);
        }
        // PR3: an entry cut short by a store of a change under way.
        let cut = next.as_ref().is_some_and(|e| side.cut(&e.range, e.value));
        let item = next.map(|e| (e.range.clone(), collect(&e)));
        drop(g);
        debug_assert!(!(locked && cut), "PR3: a cut entry under the mmap lock");
        if !locked {
            let s2 = side.seq();
            // What the read depends on: from `at` to the end of the entry
            // found (everything above `at` when none was).
            let upto = item.as_ref().map_or(u64::MAX, |(r, _)| r.end);
            if cut || touched(side, s1, s2, at, upto) {
                torn += 1;
                // Wait out the change under way, if any, before reading
                // again (the next read would only see it again).
                let mut n = 0;
                while side.seq() & 1 == 1 {
                    side.relax(n);
                    n = n.saturating_add(1);
                }
                continue;
            }
        }
        torn = 0;
        let Some((range, Some(t))) = item else { break };
        while out.last().is_some_and(|l| l.1 > range.start) {
            out.pop();
        }
        at = range.end;
        out.push((range.start, range.end, t));
        if out.len() == limit {
            break;
        }
    }
    out.into_iter().map(|(_, _, t)| t).collect()
}

/// Whether a change of several stores that ran while the seqcount went
/// from `s1` to `s2` stored into `[at, upto)`, or may have (mm.rs A6).
/// Change `k` runs while `write_seq` is `2k + 1`: the changes under way
/// at `s1` or begun by `s2` are `s1 / 2 ..= (s2 - 1) / 2`.
fn touched<T, S: ReadSide<T>>(side: &S, s1: u64, s2: u64, at: u64, upto: u64) -> bool {
    if s1 == s2 && s1 & 1 == 0 {
        return false; // no change ran
    }
    let (first, last) = (s1 / 2, (s2 - 1) / 2);
    if last - first >= TXN_LOG {
        return true; // more changes than the log keeps
    }
    (first..=last).any(|k| side.txn_range(k).is_none_or(|(lo, hi)| lo < upto && at < hi))
}
