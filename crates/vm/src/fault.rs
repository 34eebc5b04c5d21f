//! The page-fault handler: find the VMA, check the access, walk or build
//! the tables, pick the frame, install the PTE under the PTL.
//!
//! # Invariants
//! - FL1. A PTE is installed only under its table's lock, only if the slot
//!   still holds what the fault saw (`pte_same`), and, under the `rcu-sync`
//!   and `rcu-dead` strategies, only if the tree still maps the address to
//!   the VMA the fault found (strategy.rs S4). Otherwise the fault backs
//!   off: it frees the frame it allocated and the access retries.
//! - FL2. The VMA is found and held as the strategy says (strategy.rs
//!   S2–S5): under the mmap read lock, a per-VMA read lock, an RCU guard
//!   of the VMA domain, or a counted reference.
//! - FL3. Under `rcu-sync` and `rcu-dead`, the path from the TLB miss to
//!   the VMA found writes no shared cache line. The argument, step by step
//!   (`Cpu::access` then `handle_mm_fault`): leaving the TLB domain's
//!   section and entering the VMA domain's writes only this thread's
//!   reader slots (rcu crate R2: per-thread, cache-padded, no
//!   read-modify-write); the TLB and the fault counters are the CPU's own
//!   (`&mut self`); the MMU walk and the maple walk (`MapleTree::load`)
//!   only load; the strategy, the tree's root and the domain are read
//!   through `&self`. The first shared write is the frame allocation,
//!   after the VMA is in hand. `rcu-refcount` is the exception by design:
//!   taking the counted reference is an atomic increment on the VMA's
//!   shared count, the cache-line bouncing that solution 2 also costs.
//!   `vma-lock` increments the VMA's reader count, as Linux does.
//! - FL6. Under `rcu-sync` and `rcu-dead`, a CPU keeps the last VMA its
//!   faults used (its `vmacache`) and uses it again, without a tree walk,
//!   while it covers the address and is not detached (vma.rs V6); the
//!   re-check under the PTL is then "still not detached" instead of a
//!   second walk. Sound for the same reason as S4's re-check: a writer
//!   marks the object detached before it changes the tree and before the
//!   page-table pass (zap, change of protection) it then makes under the
//!   PTL, so a fault that holds the PTL and sees the object attached
//!   installs a PTE that pass will find. The tables are safe too: they are
//!   freed only a grace period of the VMA domain after the mark, so a
//!   fault whose guard began after that grace period sees the mark. Why:
//!   under mapping churn elsewhere in the mm, every tree store replaces
//!   the root's node, and two walks per fault each missed on it.
//! - FL7. Under `rcu-sync` and `rcu-dead`, a fault that finds its VMA
//!   detached (a writer is changing it, V6) waits for that writer on the
//!   mmap read lock, as `vma-lock`'s fallback does, and one that finds it
//!   attached re-checks "still attached" under the PTL besides "still the
//!   tree's" (S4). Why: an `mremap` move takes the source's PTEs and only
//!   then unmaps the source VMA; a fault in between saw the source still
//!   in the tree, installed a PTE the move had passed, and the unmap threw
//!   its write away (an access that returned Ok lost its store: found by a
//!   review, 5% of a counter's increments across a moving mremap).
//! - FL5. (With the `record` feature, for the checker.) The leaf table a
//!   fault starts with is not freed before the fault ends; if it is, a use
//!   after free is counted (cpu.rs C5).
//! - FL8. A fault at an address no VMA maps, below a `VM_GROWSDOWN` VMA
//!   (the first VMA above it), grows that stack (stack.rs G1–G5): every
//!   strategy takes the mmap lock for it, as Linux's
//!   `lock_vma_under_rcu` gives up and `lock_mm_and_find_vma` grows the
//!   stack under the write lock; the access then retries. Any other fault
//!   at an unmapped address stays lock-free under `rcu-*` (a lookup of
//!   the next entry, under the same guard). A nested access (made inside
//!   another access's closure, or under a guard of the VMA domain) does
//!   not grow a stack: it is `SEGV_MAPERR`, since the growth would wait
//!   for the section it is made in.
//! - FL9. Population (`mlock`, `MAP_POPULATE`, `MADV_POPULATE_*`: mlock.rs
//!   L3, L5, madvise.rs D6) faults pages in through the same `do_fault`,
//!   by a holder of the mmap lock (read after a call, write in
//!   `mprotect`), with the VMA it found, which no call can change: so a
//!   populated page is exactly the page an access would have faulted in
//!   (the zero page for a read of private anonymous memory, a copy for a
//!   write), and racing faults of other CPUs back off as against each
//!   other (FL1).
//! - FL10. Page tables are memory too: a fault that needs a new table
//!   when this address space's tables and the frames in use fill the
//!   [`PhysMem`](crate::frame::PhysMem)'s capacity is out of memory, as a
//!   frame it cannot get is. A bound, not an account: the check leaves
//!   room for one table where a fault may make up to three, other address
//!   spaces' tables on the same memory are not counted, and frames are
//!   allocated without looking at tables. Why: population (FL9) of a huge read-only
//!   mapping maps only the zero page, and its tables alone (one per
//!   2 MiB) would grow without bound.
//! - FL11. A write fault reuses an anonymous page in place only while no
//!   other address space maps it (frame.rs F7: `fork` shares pages
//!   copy-on-write); the count is checked again under the PTL, where
//!   `fork` raises it. A shared page is copied, and the old frame loses
//!   this table's count once the CPUs no longer cache it (freed by
//!   whichever address space drops it last). Linux's `wp_can_reuse_anon_folio`
//!   decides by the folio's reference count the same way.
//! - FL4. Anonymous private memory: a read fault maps the zero page
//!   read-only; a write fault maps a new zeroed frame, or reuses the
//!   frame in place when it is an anonymous page no other address space
//!   maps (FL11), or copies the zero page, a page-cache page or an
//!   anonymous page `fork` shares (copy-on-write). Shared
//!   mappings (files and `/dev/zero`) map the page-cache frame, writable
//!   when the VMA is. A first anonymous page gives the VMA an anon_vma,
//!   reusing a mergeable neighbour's (`find_mergeable_anon_vma`).
//!
//! # Linux
//! `mm/memory.c`: `handle_mm_fault`, `do_anonymous_page`, `do_read_fault`,
//! `do_cow_fault`, `do_shared_fault`, `do_wp_page` (reuse of an exclusive
//! anonymous page); `mm/rmap.c`: `__anon_vma_prepare`,
//! `find_mergeable_anon_vma`; `arch/x86/mm/fault.c`: `access_error`
//! (x86 cannot map write-only or exec-only pages: any access right allows
//! reads), `lock_vma_under_rcu` then `lock_mm_and_find_vma`. The vmacache
//! (FL6) is Linux's per-thread `vmacache` (removed in 6.1), validated by
//! the VMA's own detached mark instead of an mm-wide sequence number.
//!
//! Not modelled: `userfaultfd`, NUMA, huge pages, swap.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use rcuvm_maple::MapleTree;

use crate::frame::{FrameCache, Owner};
use crate::mm::{AddressSpace, Hw};
use crate::pgtable::{PageTable, Pte};
use crate::strategy::{self, Strategy};
use crate::vma::{AnonVmaId, Backing, PAGE_SHIFT, VmFlags, Vma, anon_vma_compatible};

/// Why an access failed: the signal Linux would send.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AccessError {
    /// `SIGSEGV`/`SEGV_MAPERR`: no VMA maps the address.
    MapErr,
    /// `SIGSEGV`/`SEGV_ACCERR`: the VMA does not allow the access.
    AccErr,
    /// `SIGBUS`/`BUS_ADRALN`: the address is not 8-byte aligned (rcuvm
    /// accesses whole words).
    Unaligned,
    /// Out of physical memory (`VM_FAULT_OOM`).
    Oom,
    /// The access faulted over and over without progress: a bug of the
    /// fault path (reported, not hidden in a hang).
    Livelock,
}

impl std::fmt::Display for AccessError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AccessError::MapErr => "SIGSEGV (SEGV_MAPERR)",
            AccessError::AccErr => "SIGSEGV (SEGV_ACCERR)",
            AccessError::Unaligned => "SIGBUS (BUS_ADRALN)",
            AccessError::Oom => "out of memory",
            AccessError::Livelock => "livelock in the fault path",
        })
    }
}

impl std::error::Error for AccessError {}

/// What one fault did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// A PTE was installed or upgraded.
    Installed,
    /// Nothing to do or lost a race: the access retries (FL1).
    Retry,
}

/// Per-CPU fault counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultStats {
    /// Faults handled (installed a PTE).
    pub faults: u64,
    /// Faults that backed off and retried (FL1).
    pub retries: u64,
    /// `vma-lock`: faults that fell back to the mmap lock.
    pub fallbacks: u64,
}

/// Handles a fault at `va` (FL1–FL4).
pub(crate) fn handle_mm_fault(
    mm: &AddressSpace,
    va: u64,
    write: bool,
    cache: &mut FrameCache,
    vmacache: &mut Option<Arc<Vma>>,
    stats: &mut FaultStats,
) -> Result<Outcome, AccessError> {
    let hw = mm.hw();
    let out = match hw.strategy {
        Strategy::MmapLock => fault_mmap_locked(mm, va, write, cache),
        Strategy::VmaLock => {
            let g = mm.domain().read();
            let found = mm.vmas_tree().load(va, &g).filter(|e| !e.value.is_dead());
            let Some(e) = found else {
                // No VMA under RCU: Linux retries under the mmap lock (the
                // stack may need expanding); so do we, for the errno.
                drop(g);
                stats.fallbacks += 1;
                return count(fault_mmap_locked(mm, va, write, cache), stats);
            };
            let vma = e.to_arc();
            let mut locked = strategy::vma_start_read(&vma, &hw.mm_lock_seq);
            // The detached check: still the tree's VMA for `va`?
            if locked && !crate::protocol::vma_still_mapped(mm.vmas_tree(), va, e.value, &g) {
                strategy::vma_end_read(&vma);
                locked = false;
            }
            drop(g);
            if !locked {
                stats.fallbacks += 1;
                // A writer holds it: wait for the writer on the mmap lock.
                return count(fault_mmap_locked(mm, va, write, cache), stats);
            }
            let r = do_fault(mm.hw(), mm.vmas_tree(), &vma, va, write, cache, None);
            strategy::vma_end_read(&vma);
            r
        }
        Strategy::RcuSync | Strategy::RcuDead => {
            let g = mm.domain().read();
            // FL6: the last VMA, while attached. ORDERING: Acquire, as in
            // the re-check (the PTL is what orders it against a writer).
            let attached = |v: &Vma| !v.rt.detached.load(Ordering::Acquire);
            if let Some(v) = vmacache.as_deref().filter(|v| v.start <= va && va < v.end && attached(v)) {
                let out = do_fault(mm.hw(), mm.vmas_tree(), v, va, write, cache, Some(&|| attached(v)));
                drop(g);
                return count(out, stats);
            }
            // FL3: from here to the VMA, nothing shared is written.
            let e = match mm.vmas_tree().load(va, &g) {
                Some(e) if !e.value.is_dead() => e,
                _ if stack_above(mm, va, &g) => {
                    drop(g);
                    return fault_below_stack(mm, va, write, cache, stats);
                }
                _ => return Err(AccessError::MapErr),
            };
            if !attached(e.value) {
                // FL7: a writer is changing this VMA; wait for it on the
                // mmap lock, as vma-lock's fallback does.
                drop(g);
                stats.fallbacks += 1;
                return count(fault_mmap_locked(mm, va, write, cache), stats);
            }
            *vmacache = Some(e.to_arc());
            do_fault(
                mm.hw(),
                mm.vmas_tree(),
                e.value,
                va,
                write,
                cache,
                // protocol.rs PR1, the re-check the loom model runs too,
                // and FL7's: still attached.
                Some(&|| {
                    attached(e.value) && crate::protocol::vma_still_mapped(mm.vmas_tree(), va, e.value, &g)
                }),
            )
        }
        Strategy::RcuRefcount => {
            // The section lasts the whole fault, as the other rcu-*
            // strategies' do: it keeps the page tables the walk goes
            // through (unmap.rs `TablesOnPut`), not the VMA's mapping.
            let g = mm.domain().read();
            let vma: Arc<Vma> = match mm.vmas_tree().load(va, &g) {
                Some(e) => e.to_arc(),
                None if stack_above(mm, va, &g) => {
                    drop(g);
                    return fault_below_stack(mm, va, write, cache, stats);
                }
                None => return Err(AccessError::MapErr),
            };
            // S5: the counted reference "keeps the VMA valid"; no re-check.
            let r = do_fault(mm.hw(), mm.vmas_tree(), &vma, va, write, cache, None);
            drop(g);
            r
        }
    };
    count(out, stats)
}

fn count(r: Result<Outcome, AccessError>, stats: &mut FaultStats) -> Result<Outcome, AccessError> {
    match r {
        Ok(Outcome::Installed) => stats.faults += 1,
        Ok(Outcome::Retry) => stats.retries += 1,
        Err(_) => {}
    }
    r
}

/// The fault under the mmap read lock (S2, and `vma-lock`'s fallback).
fn fault_mmap_locked(
    mm: &AddressSpace,
    va: u64,
    write: bool,
    cache: &mut FrameCache,
) -> Result<Outcome, AccessError> {
    let r = mm.mmap_read();
    let g = mm.domain().read();
    match mm.vmas_tree().load(va, &g) {
        Some(e) if !e.value.is_dead() => do_fault(mm.hw(), mm.vmas_tree(), e.value, va, write, cache, None),
        // FL8: grow the stack above under the mmap write lock (stack.rs
        // G1), then the access retries and faults in the grown VMA.
        _ if stack_above(mm, va, &g) => {
            drop((g, r));
            if nested(mm) {
                return Err(AccessError::MapErr);
            }
            if mm.expand_stack(va) { Ok(Outcome::Retry) } else { Err(AccessError::MapErr) }
        }
        _ => Err(AccessError::MapErr),
    }
}

/// FL8 from a lock-free strategy: a stack to grow is grown under the
/// mmap lock, except by a nested access, which is refused before it
/// takes that lock (it must not wait for it).
fn fault_below_stack(
    mm: &AddressSpace,
    va: u64,
    write: bool,
    cache: &mut FrameCache,
    stats: &mut FaultStats,
) -> Result<Outcome, AccessError> {
    if nested(mm) {
        return Err(AccessError::MapErr);
    }
    count(fault_mmap_locked(mm, va, write, cache), stats)
}

/// FL8: whether this fault is a nested access (inside another access's
/// closure, or a read-side section of the VMA domain), which must not
/// grow a stack: the growth's mm call would wait for that very section
/// (mm.rs A11), as would the mmap lock it takes first.
fn nested(mm: &AddressSpace) -> bool {
    mm.hw().tlb.domain().in_read_section() || mm.domain().in_read_section()
}

/// Whether the first VMA above `va` (`find_vma`, past dead entries) grows
/// down: a stack that a fault at `va` may grow (FL8, stack.rs G1). Only
/// one starting within `stack_rlimit` of `va` could grow that far, so the
/// walk past dead entries stops there.
fn stack_above(mm: &AddressSpace, va: u64, g: &rcuvm_rcu::Guard<'_>) -> bool {
    let tree = mm.vmas_tree();
    let limit = va.saturating_add(mm.config().stack_rlimit);
    let mut at = va;
    loop {
        let Some(e) = tree.find(at, g) else { return false };
        if e.range.start > limit {
            return false;
        }
        if !e.value.is_dead() {
            return e.value.flags.contains(VmFlags::GROWSDOWN) && e.value.start > va;
        }
        at = e.range.end;
    }
}

/// FL9: one page of `__get_user_pages()` for population (mlock.rs L3,
/// madvise.rs D6), made by a holder of the mmap lock (read or write): the
/// fault an access would take, with the VMA the caller found (no call can
/// change it while the lock is held, so no re-check). A fault another CPU races
/// with (FL1's back-off) is made again; one that finds the page already
/// mapped as the access needs is done.
pub(crate) fn fault_in_page(
    hw: &Hw,
    tree: &MapleTree<Arc<Vma>>,
    vma: &Vma,
    page: u64,
    write: bool,
    cache: &mut FrameCache,
) -> Result<(), AccessError> {
    // Each back-off is a CPU's fault installing this very page: a handful
    // at most, since nothing can zap it while the lock is held.
    for _ in 0..64 {
        if do_fault(hw, tree, vma, page, write, cache, None)? == Outcome::Installed {
            return Ok(());
        }
        let seen = hw.pt.walk(page);
        if seen.present() && (!write || seen.writable()) {
            return Ok(());
        }
    }
    Err(AccessError::Livelock)
}

/// The leaf table for `page`, made if missing, unless the tables would
/// take physical memory that is not there (FL10).
fn leaf_table(hw: &Hw, page: u64) -> Option<&crate::pgtable::Table> {
    hw.pt.pte_table(page, false).or_else(|| {
        let pm = &*hw.phys;
        (hw.pt.tables() + pm.in_use() < pm.capacity())
            .then(|| hw.pt.pte_table(page, true).expect("allocating walk"))
    })
}

/// `access_error()` for x86: writes need `VM_WRITE`; any right allows reads.
fn access_ok(vma: &Vma, write: bool) -> bool {
    if write {
        vma.flags.contains(VmFlags::WRITE)
    } else {
        vma.flags.intersects(VmFlags::READ | VmFlags::WRITE | VmFlags::EXEC)
    }
}

/// `__anon_vma_prepare()`: gives `vma` an anon_vma if it has none (FL4).
fn anon_vma_prepare(tree: &MapleTree<Arc<Vma>>, vma: &Vma) {
    if vma.anon().is_some() {
        return;
    }
    let id = find_mergeable_anon_vma(tree, vma).unwrap_or_else(AnonVmaId::fresh);
    // V4: set once; a racing fault may have set it first.
    let _ = vma.rt.anon.compare_exchange(0, id.0, Ordering::AcqRel, Ordering::Acquire);
}

/// `find_mergeable_anon_vma()`: a neighbour's anon_vma that `vma` could
/// share (`reusable_anon_vma`: not one a fork made, vma.rs V7; and
/// `anon_vma_compatible`).
pub(crate) fn find_mergeable_anon_vma(tree: &MapleTree<Arc<Vma>>, vma: &Vma) -> Option<AnonVmaId> {
    let g = tree.domain().read();
    let reusable = |a: Option<AnonVmaId>| a.filter(|a| !a.had_parents());
    if let Some(n) = tree.load(vma.end, &g).filter(|n| !n.value.is_dead()) {
        if anon_vma_compatible(vma, n.value) {
            if let Some(id) = reusable(n.value.anon()) {
                return Some(id);
            }
        }
    }
    if vma.start > 0 {
        if let Some(p) = tree.load(vma.start - 1, &g).filter(|p| !p.value.is_dead()) {
            if anon_vma_compatible(p.value, vma) {
                return reusable(p.value.anon());
            }
        }
    }
    None
}

/// FL5 (with the `record` feature): the leaf table for `va`, if it exists
/// when the fault starts, must not be freed before the fault ends (the
/// strategy's hold on the VMA keeps it: pgtable.rs PT5); if it is, the
/// fault counts a use after free (cpu.rs C5) for the checker.
#[cfg(feature = "record")]
struct TableHeld<'a> {
    hw: &'a Hw,
    table: Option<(&'a crate::pgtable::Table, u64)>,
}

#[cfg(feature = "record")]
impl<'a> TableHeld<'a> {
    fn new(hw: &'a Hw, va: u64) -> Self {
        // ORDERING: Acquire pairs with free_tree's Release bump (pgtable.rs
        // PT1); so does the load in `drop`.
        let table = hw.pt.pte_table(va, false).map(|t| (t, t.generation.load(Ordering::Acquire)));
        TableHeld { hw, table }
    }
}

#[cfg(feature = "record")]
impl Drop for TableHeld<'_> {
    fn drop(&mut self) {
        if self.table.is_some_and(|(t, g)| t.generation.load(Ordering::Acquire) != g) {
            self.hw.use_after_free.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The fault proper, once the VMA is held (FL1, FL4, FL5). `live` is the
/// re-check of S4, run under the PTL.
fn do_fault(
    hw: &Hw,
    tree: &MapleTree<Arc<Vma>>,
    vma: &Vma,
    va: u64,
    write: bool,
    cache: &mut FrameCache,
    live: Option<&dyn Fn() -> bool>,
) -> Result<Outcome, AccessError> {
    #[cfg(feature = "record")]
    let _fl5 = TableHeld::new(hw, va);
    if !access_ok(vma, write) {
        return Err(AccessError::AccErr);
    }
    let pm = &*hw.phys;
    let page = va & !((1 << PAGE_SHIFT) - 1);
    let seen = hw.pt.walk(page);
    let writable_vma = vma.flags.contains(VmFlags::WRITE);
    if seen.present() && (!write || seen.writable()) {
        return Ok(Outcome::Retry); // another CPU got there first
    }
    let shared = vma.flags.contains(VmFlags::SHARED);
    let pgoff = vma.pgoff_at(page);
    // Decide the new PTE, allocating a frame when needed.
    let mut fresh = None;
    // record.rs H5: the incarnation a copy-on-write copies, for the checker.
    #[cfg(feature = "record")]
    let mut copied_from = None;
    let new = match (&vma.backing, shared) {
        (Backing::File(f), true) => {
            let pfn = pm.page_cache(f, pgoff).ok_or(AccessError::Oom)?;
            Pte::new(pfn, writable_vma)
        }
        // (A shared VMA without a file comes only from a snapshot: treated as private.)
        (backing, _) => {
            // FL11: only a page no other address space maps is reused.
            let reuse = seen.mapped()
                && matches!(pm.frame(seen.pfn()).owner(), Owner::Anon { .. })
                && pm.frame(seen.pfn()).exclusive();
            if !write {
                if seen.mapped() {
                    // A PROT_NONE entry made accessible again by a racing
                    // mprotect: map its frame as it is.
                    Pte::new(seen.pfn(), reuse && writable_vma)
                } else {
                    match backing {
                        Backing::Anon => Pte::new(pm.zero_pfn(), false),
                        Backing::File(f) => Pte::new(pm.page_cache(f, pgoff).ok_or(AccessError::Oom)?, false),
                    }
                }
            } else if reuse {
                Pte::new(seen.pfn(), true) // do_wp_page: reuse our own page
            } else {
                anon_vma_prepare(tree, vma);
                let pfn = cache
                    .alloc(pm, Owner::Anon { mm: hw.id, vpn: page >> PAGE_SHIFT })
                    .ok_or(AccessError::Oom)?;
                fresh = Some(pfn);
                let src = if seen.mapped() {
                    Some(seen.pfn())
                } else if let Backing::File(f) = backing {
                    Some(pm.page_cache(f, pgoff).ok_or(AccessError::Oom)?)
                } else {
                    None
                };
                if let Some(s) = src.filter(|&s| s != pm.zero_pfn()) {
                    // record.rs H5: copies of anonymous frames. The new
                    // frame's generation is read before the PTE is set:
                    // once it is, a racing zap may free the frame.
                    #[cfg(feature = "record")]
                    if matches!(pm.frame(s).owner(), Owner::Anon { .. }) {
                        let g = |p: u64| pm.frame(p).generation.load(Ordering::Acquire);
                        copied_from = Some(((s, g(s)), (pfn, g(pfn))));
                    }
                    pm.frame(pfn).copy_from(pm.frame(s));
                }
                Pte::new(pfn, true)
            }
        }
    };
    // notifier.rs N1: a copy-on-write replaces a present entry's frame
    // (`wp_page_copy`'s MMU_NOTIFY_CLEAR), told before the PTL is taken.
    let replacing = seen.present() && seen.pfn() != new.pfn();
    let notified = if replacing {
        hw.notifiers.start(page, page + (1 << PAGE_SHIFT), crate::notifier::NotifyEvent::Clear)
    } else {
        None
    };
    let Some(t) = leaf_table(hw, page) else {
        hw.notifiers.end(notified);
        if let Some(p) = fresh {
            cache.unused(pm, p);
        }
        return Err(AccessError::Oom);
    };
    let i = PageTable::pte_index(page);
    let ptl = t.lock();
    // pte_same (CPU bits aside: a walk may have added one since, PT3).
    // FL11: a page reused for writing must still be exclusive: `fork`
    // shares it under this lock.
    let reused = new.writable() && seen.mapped() && new.pfn() == seen.pfn();
    let same =
        Pte(t.entry(i)).sans_cpus() == seen.sans_cpus() && (!reused || pm.frame(new.pfn()).exclusive());
    // inject.rs: the FL1 re-check can be skipped to prove the checker sees it.
    let live = live.filter(|_| !crate::inject::active(hw.inject, crate::inject::Injection::SkipRecheck));
    if same && live.is_none_or(|f| f()) {
        let old = t.set(&ptl, i, new);
        if old.present() && old.pfn() == new.pfn() {
            // An upgrade in place: CPUs may still cache the read-only
            // entry of the same frame, and a later zap must wait for them.
            t.keep_cpus(&ptl, i, old.cpus());
        }
        drop(ptl);
        if seen.present() && seen.pfn() != new.pfn() {
            // Copy-on-write replaced the frame of a present read-only entry
            // that other CPUs may cache: they must stop reading the old
            // frame (`ptep_clear_flush`). A permission upgrade of the same
            // frame needs no flush (a stale read-only entry faults and is
            // refilled).
            hw.tlb.flush(page, page + (1 << PAGE_SHIFT), old.cpus());
        }
        hw.notifiers.end(notified);
        #[cfg(feature = "record")]
        if let (Some(rec), Some((from, to))) = (&hw.recorder, copied_from) {
            rec.copied(from, to);
        }
        if seen.mapped() && seen.pfn() != new.pfn() {
            // FL11: the old frame was the zero page, a page-cache page, or
            // an anonymous page `fork` shared: this table drops its count
            // (F7; freed if the other address space dropped its own since).
            pm.free([seen.pfn()]);
        }
        return Ok(Outcome::Installed);
    }
    drop(ptl);
    hw.notifiers.end(notified);
    if let Some(p) = fresh {
        cache.unused(pm, p);
    }
    Ok(Outcome::Retry)
}
