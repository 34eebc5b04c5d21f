//! Software page tables: x86-64-style four-level radix tables (4 KiB pages,
//! 512 entries per level), walked without locks.
//!
//! # Owns
//! [`PageTable`]: the root table, the pool of table pages, and every table
//! page hooked under the root.
//!
//! # Invariants
//! - PT1. Table pages are type-stable: an unhooked table goes back to the
//!   pool (its `generation` bumped), never to the allocator, while the `PageTable`
//!   lives. A lagging access that still reads an unhooked leaf table
//!   reads valid atomics; the generation tells that it was freed (the
//!   checker's P3). But a pooled table comes back at any level, so a
//!   walker that follows upper entries of a freed table could read a PTE
//!   as a table pointer: every walk runs where PT5 keeps its tables
//!   (a guard of the VMA or TLB domain, or a counted VMA under
//!   `rcu-refcount`), which is why the walkers are crate-private (a
//!   review made one segfault from safe code through `rss`).
//! - PT2. An upper-level entry is 0 or `ptr | 1` to a child table; it
//!   changes from 0 to a child only under the parent table's lock (`hook`),
//!   and from a child to 0 only under the mmap write lock and the parent's
//!   lock (`free_tables`).
//! - PT3. A leaf entry ([`Pte`]) changes only under its table's lock (the
//!   split page-table lock, PTL), by swaps that return what was there;
//!   the one exception is a CPU's bit ([`Pte::cpus`]), which the MMU's walk
//!   sets by compare-and-swap on the exact entry it read, as x86 sets the
//!   Accessed bit. So a writer's swap returns every CPU that may cache the
//!   entry: a CPU caches an entry only after its bit is in it (PT6).
//! - PT6. A CPU bit once set stays until the entry is swapped out; a zap,
//!   a rights change or a move reports the bits of what it swapped out,
//!   and the shootdown waits only for those CPUs (tlb.rs T5).
//! - PT4. A zap that finds an upper entry empty takes that table's lock
//!   before skipping it, and scans a leaf table's entries holding its PTL.
//!   A fault hooks a new table under the parent's lock and installs a PTE
//!   under the PTL, so either the zap sees (and zaps) the new table or
//!   entry, or the fault's later re-check of the VMA, made under the PTL,
//!   happens after the writer's tree update and sees the VMA gone. This is
//!   what makes the re-check sound when munmap races a fault.
//! - PT5. An unhooked table is freed (to the pool) only after the TLB
//!   shootdown that follows the unhook was acknowledged and, for lockless
//!   software walkers (faults, smaps), after an RCU grace period: the
//!   caller's duty, through [`crate::tlb::MmuGather`].
//! - PT7. Where a walker may still hold a table past those (inject.rs's
//!   `EagerTableFree`, which skips the grace periods), the table is
//!   *quarantined* instead of freed: its generation moves, as a free's
//!   does (so fault.rs FL5 and P3 still see the use after free), but its
//!   memory stays out of the pool until the last handle of the pool goes.
//!   Why: a stale walker's store then lands in a dead table, not in a
//!   live one the pool handed out again, which can crash the process (as
//!   `rcu-refcount` did before strategy.rs S5 kept its tables: a SIGSEGV
//!   in `free_tree`, a table pointer overwritten).
//!
//! # Concurrency
//! `walk`, `rss`, `reachable` (crate-private): lock-free, any thread,
//! under a guard that keeps the tables (PT1, PT5); embedders walk through
//! `AddressSpace::translate`. `pte_table`: any thread, it takes table
//! locks. `zap`, `change_prot`, `move_ptes`,
//! `free_tables`: mmap write lock.
//!
//! # Linux
//! `pgd_t`/`pud_t`/`pmd_t`/`pte_t` and `arch/x86/include/asm/pgtable_types.h`
//! bit positions (`_PAGE_PRESENT`, `_PAGE_RW`, `_PAGE_PROTNONE`);
//! `__pte_alloc`/`pmd_install` (hook under lock), `zap_pte_range`,
//! `change_pte_range`, `move_ptes`, `free_pgd_range` (floor/ceiling),
//! `pte_offset_map_lock`. No huge pages.

use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::frame::Pfn;
use crate::vma::PAGE_SHIFT;

/// Entries per table.
pub const PTRS: usize = 512;
/// One past the highest address the tables map (48-bit).
pub const VA_END: u64 = 1 << 48;

/// A leaf page-table entry: `pfn << 12 | flags`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Pte(pub u64);

impl Pte {
    /// `_PAGE_PRESENT`.
    pub const PRESENT: u64 = 1 << 0;
    /// `_PAGE_RW`.
    pub const WRITE: u64 = 1 << 1;
    /// `_PAGE_USER`.
    pub const USER: u64 = 1 << 2;
    /// `_PAGE_PROTNONE`: mapped but inaccessible (`PROT_NONE`): not present
    /// to the MMU, the frame stays.
    pub const PROTNONE: u64 = 1 << 8;
    const PFN_MASK: u64 = ((1 << 52) - 1) & !0xfff;
    /// First of the CPU bits (x86 leaves bits 52–62 to software).
    pub const CPU_SHIFT: u32 = 52;
    /// CPUs with a bit of their own; others share [`Pte::CPU_OTHER`].
    pub const CPU_SLOTS: u32 = 10;
    /// The bit shared by CPUs beyond the first [`Pte::CPU_SLOTS`].
    pub const CPU_OTHER: u64 = 1 << 62;
    /// Every CPU bit.
    pub const CPU_MASK: u64 = 0x7ff << 52;

    /// An entry mapping `pfn`, present, writable or not.
    pub fn new(pfn: Pfn, write: bool) -> Pte {
        Pte(pfn << PAGE_SHIFT | Pte::PRESENT | Pte::USER | if write { Pte::WRITE } else { 0 })
    }
    /// `pte_none`.
    pub fn is_none(self) -> bool {
        self.0 == 0
    }
    /// Present to the MMU.
    pub fn present(self) -> bool {
        self.0 & Pte::PRESENT != 0
    }
    /// Maps a frame (present or `PROT_NONE`).
    pub fn mapped(self) -> bool {
        self.0 & (Pte::PRESENT | Pte::PROTNONE) != 0
    }
    /// Writable.
    pub fn writable(self) -> bool {
        self.0 & Pte::WRITE != 0
    }
    /// The frame.
    pub fn pfn(self) -> Pfn {
        (self.0 & Pte::PFN_MASK) >> PAGE_SHIFT
    }
    /// The CPUs that may cache this entry (PT3, PT6).
    pub fn cpus(self) -> u64 {
        self.0 & Pte::CPU_MASK
    }
    /// The entry without its CPU bits.
    pub fn sans_cpus(self) -> Pte {
        Pte(self.0 & !Pte::CPU_MASK)
    }
}

/// One table page.
// Aligned to a cache line: the lock and generation of one table never
// share a line with another table's entries (each table is its own
// allocation, and another CPU may be locking its neighbour).
#[repr(C, align(64))]
pub struct Table {
    entries: [AtomicU64; PTRS],
    /// The split page-table lock (PTL) of this table (PT2, PT3).
    lock: parking_lot::Mutex<()>,
    /// Bumped each time the table goes back to the pool (PT1).
    pub generation: AtomicU64,
}

impl Table {
    /// Adds CPU bits to leaf entry `i` (PT6: they stay until a swap takes
    /// them); the caller holds this table's lock.
    pub(crate) fn keep_cpus(&self, _ptl: &parking_lot::MutexGuard<'_, ()>, i: usize, cpus: u64) {
        self.entries[i].fetch_or(cpus & Pte::CPU_MASK, Ordering::AcqRel);
    }

    fn new_boxed() -> Box<Table> {
        Box::new(Table {
            entries: std::array::from_fn(|_| AtomicU64::new(0)),
            lock: parking_lot::Mutex::new(()),
            generation: AtomicU64::new(0),
        })
    }

    /// Entry `i`, read without a lock.
    #[inline]
    pub fn entry(&self, i: usize) -> u64 {
        // ORDERING: Acquire pairs with the Release store that hooked a
        // child (its zeroed entries are visible) or installed a PTE.
        self.entries[i].load(Ordering::Acquire)
    }

    /// Takes this table's lock (the PTL for a leaf table).
    pub(crate) fn lock(&self) -> parking_lot::MutexGuard<'_, ()> {
        self.lock.lock()
    }

    /// Sets leaf entry `i` and returns what it held, with the CPU bits
    /// set until that instant (PT3); the caller holds this table's lock.
    pub(crate) fn set(&self, _ptl: &parking_lot::MutexGuard<'_, ()>, i: usize, pte: Pte) -> Pte {
        // ORDERING: AcqRel: Release publishes the frame's contents
        // (zero-filled or copied) to walkers that Acquire the entry; the
        // swap orders against the walkers' bit-setting CAS (PT3).
        Pte(self.entries[i].swap(pte.0, Ordering::AcqRel))
    }
}

/// An unhooked table awaiting its free (PT5): owned, so `Send`.
#[derive(Debug)]
pub struct UnhookedTable(NonNull<Table>);
// SAFETY: an unhooked table is reachable only through this handle (and by
// lagging walkers, which only read atomics); moving the handle between
// threads moves that ownership.
unsafe impl Send for UnhookedTable {}
// SAFETY: a shared reference to the handle gives no access to the table
// (no method takes `&self`), so sharing it shares nothing.
unsafe impl Sync for UnhookedTable {}

/// Index of `va` in a table of `level` (4 = PGD … 1 = PTE).
#[inline]
fn index(va: u64, level: u32) -> usize {
    ((va >> (PAGE_SHIFT + 9 * (level - 1))) & 511) as usize
}

/// Bytes one entry of a `level` table covers.
#[inline]
fn entry_span(level: u32) -> u64 {
    1 << (PAGE_SHIFT + 9 * (level - 1))
}

/// The slots of a `level` table that maps from `base` which overlap
/// `[start, end)`, with the first address each maps.
fn slots(level: u32, base: u64, start: u64, end: u64) -> impl Iterator<Item = (usize, u64)> {
    let span = entry_span(level);
    let first = if start > base { ((start - base) / span) as usize } else { 0 };
    (first..PTRS).map(move |i| (i, base + i as u64 * span)).take_while(move |&(_, lo)| lo < end)
}

/// The child table an upper-level entry points to.
///
/// # Safety
/// `e` was read from an entry of a table of a live `PageTable` (PT1: every
/// table ever hooked stays allocated while its `PageTable` lives), and the
/// returned reference does not outlive that `PageTable`.
#[inline]
unsafe fn child<'a>(e: u64) -> &'a Table {
    debug_assert!(e & 1 == 1);
    // SAFETY: per the contract, `e & !1` is the address of a live `Table`.
    unsafe { &*((e & !1) as *const Table) }
}

/// What `PageTable::for_leaves` calls for each leaf slot: the table, its
/// held PTL, the index and the address.
type LeafFn<'a> = dyn FnMut(&Table, &parking_lot::MutexGuard<'_, ()>, usize, u64) + 'a;

/// The pool of free table pages (PT1).
#[derive(Default)]
pub(crate) struct TablePool {
    free: Mutex<Vec<Box<Table>>>,
    /// Tables handed out and not returned (hooked or awaiting their free).
    live: AtomicUsize,
    /// PT7: quarantined subtrees, freed when the pool is dropped.
    graveyard: Mutex<Vec<(UnhookedTable, u32)>>,
}

impl Drop for TablePool {
    /// PT7: no walker is left (every handle of the pool is gone).
    fn drop(&mut self) {
        for (t, level) in self.graveyard.get_mut().unwrap_or_else(|e| e.into_inner()).drain(..) {
            // SAFETY: PT7: a quarantined subtree was never returned to the
            // pool; its last handle is this one, and no walker remains.
            unsafe { drop_tree(Box::from_raw(t.0.as_ptr()), level) };
        }
    }
}

/// Drops `t` and every table under it (levels above 1).
///
/// # Safety
/// `t` owns its subtree: every non-zero entry above level 1 is a table
/// that `hook` leaked and nothing else owns.
unsafe fn drop_tree(t: Box<Table>, level: u32) {
    if level > 1 {
        for e in &t.entries {
            let v = e.load(Ordering::Acquire);
            if v != 0 {
                // SAFETY: the caller's: this entry's table is the subtree's.
                unsafe { drop_tree(Box::from_raw((v & !1) as *mut Table), level - 1) };
            }
        }
    }
}

/// PT7: moves the generation of `t` and of every table under it, and
/// counts the leaf entries still set, leaving the memory where it is.
/// Returns how many tables it buried.
fn bury(t: &Table, level: u32, leftover: &mut usize) -> usize {
    let mut tables = 1;
    for e in &t.entries {
        let v = e.load(Ordering::Acquire);
        if v == 0 {
            continue;
        }
        if level > 1 {
            // SAFETY: PT7: quarantined tables are never freed while the
            // pool lives, so a pointer in one is a live allocation.
            tables += bury(unsafe { &*((v & !1) as *const Table) }, level - 1, leftover);
        } else {
            *leftover += 1;
        }
    }
    t.generation.fetch_add(1, Ordering::Release);
    tables
}

impl TablePool {
    fn alloc(&self) -> Box<Table> {
        self.live.fetch_add(1, Ordering::Relaxed);
        let t = self.free.lock().unwrap_or_else(|e| e.into_inner()).pop();
        match t {
            Some(t) => {
                for e in &t.entries {
                    e.store(0, Ordering::Relaxed);
                }
                t
            }
            None => Table::new_boxed(),
        }
    }

    /// Returns `t` and every table under it (levels above 1) to the pool.
    fn free_tree(&self, t: Box<Table>, level: u32, out: &mut Vec<Box<Table>>, leftover: &mut usize) {
        for e in &t.entries {
            let v = e.load(Ordering::Acquire);
            if v == 0 {
                continue;
            }
            if level > 1 {
                // SAFETY: PT1/PT5: the subtree is unhooked and past its grace
                // period; we are its only owner, so we reclaim the Box that
                // `hook` leaked.
                let c = unsafe { Box::from_raw((v & !1) as *mut Table) };
                self.free_tree(c, level - 1, out, leftover);
            } else {
                *leftover += 1;
            }
        }
        t.generation.fetch_add(1, Ordering::Release);
        out.push(t);
    }
}

/// A four-level page table (PT1–PT5).
pub struct PageTable {
    root: Box<Table>,
    pool: Arc<TablePool>,
}

impl std::fmt::Debug for PageTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageTable").field("tables", &self.tables()).finish_non_exhaustive()
    }
}

impl Default for PageTable {
    fn default() -> Self {
        Self::new()
    }
}

/// Something that collects what a page-table change frees: the range to
/// flush, the frames and the unhooked tables ([`crate::tlb::MmuGather`]).
pub(crate) trait Gather {
    /// A mapped entry for `va`, which the CPUs `cpus` may cache (PT6), was
    /// cleared or lost rights: flush it.
    fn flush_page(&mut self, va: u64, cpus: u64);
    /// A frame that was mapped at `va` is no longer mapped.
    fn frame(&mut self, pfn: Pfn);
    /// A table was unhooked; it covered `[lo, hi)`.
    fn table(&mut self, t: UnhookedTable, level: u32, lo: u64, hi: u64);
}

impl PageTable {
    /// An empty page table (just the root).
    pub fn new() -> Self {
        let pool = Arc::new(TablePool::default());
        let root = pool.alloc();
        PageTable { root, pool }
    }

    /// Table pages in use (hooked or awaiting their free), with the root.
    pub fn tables(&self) -> usize {
        self.pool.live.load(Ordering::Relaxed)
    }

    /// Table pages reachable from the root, the root included, counted by
    /// a lockless walk of the upper levels (PT1 makes every pointer it
    /// follows a valid table). Racing writers make it a sample, not an
    /// exact count; under a guard of the VMA domain no table it reaches is
    /// freed meanwhile (PT5). Crate-private, as `walk` and `rss`: a walker
    /// without that guard could follow a table freed and reused at another
    /// level, reading a PTE as a table pointer (PT1); embedders use
    /// `AddressSpace::translate` and `AddressSpace::reachable_tables`,
    /// which take the guard.
    pub(crate) fn reachable(&self) -> usize {
        fn count(t: &Table, level: u32) -> usize {
            1 + if level == 1 {
                0
            } else {
                t.entries
                    .iter()
                    .map(|e| e.load(Ordering::Acquire))
                    .filter(|&e| e != 0)
                    // SAFETY: read from a table of the page table (PT1);
                    // the reference does not outlive this call.
                    .map(|e| count(unsafe { child(e) }, level - 1))
                    .sum()
            }
        }
        count(&self.root, 4)
    }

    /// The PTE for `va`, read without locks (under a guard of the VMA
    /// domain, as `reachable`).
    #[inline]
    pub(crate) fn walk(&self, va: u64) -> Pte {
        debug_assert!(va < VA_END, "a walk of {va:#x}, past the 48 bits the tables map");
        self.leaf_table(va).map_or(Pte(0), |t| Pte(t.entry(index(va, 1))))
    }

    /// The leaf table for `va`, if every level exists (lockless).
    #[inline]
    fn leaf_table(&self, va: u64) -> Option<&Table> {
        let mut t: &Table = &self.root;
        for level in (2..=4).rev() {
            let e = t.entry(index(va, level));
            if e == 0 {
                return None;
            }
            // SAFETY: read from a table of `self` (PT1); the reference does
            // not outlive `&self`.
            t = unsafe { child(e) };
        }
        Some(t)
    }

    /// The MMU's walk for a TLB fill by the CPU whose bit is `cpu`: the PTE
    /// for `va`, with `cpu` set in it (PT3) when it is present. The caller
    /// may cache what this returns until a shootdown that names `cpu`.
    #[inline]
    pub(crate) fn walk_for(&self, va: u64, cpu: u64) -> Pte {
        let Some(t) = self.leaf_table(va) else { return Pte(0) };
        let slot = &t.entries[index(va, 1)];
        // ORDERING: Acquire pairs with the installer's Release (the frame's
        // contents); the CAS is AcqRel against writers' swaps (PT3).
        let mut e = slot.load(Ordering::Acquire);
        loop {
            if e & Pte::PRESENT == 0 || e & cpu != 0 {
                return Pte(e);
            }
            match slot.compare_exchange_weak(e, e | cpu, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Pte(e | cpu),
                Err(now) => e = now,
            }
        }
    }

    /// The leaf table for `va`, allocating missing levels when `alloc`
    /// (each hooked under its parent's lock, PT2/PT4).
    pub(crate) fn pte_table(&self, va: u64, alloc: bool) -> Option<&Table> {
        let mut t: &Table = &self.root;
        for level in (2..=4).rev() {
            let i = index(va, level);
            let mut e = t.entry(i);
            if e == 0 {
                if !alloc {
                    return None;
                }
                let _g = t.lock();
                e = t.entry(i);
                if e == 0 {
                    let new = Box::into_raw(self.pool.alloc());
                    e = new as u64 | 1;
                    // ORDERING: Release publishes the zeroed child (PT2).
                    t.entries[i].store(e, Ordering::Release);
                }
            }
            // SAFETY: read from a table of `self` (PT1).
            t = unsafe { child(e) };
        }
        Some(t)
    }

    /// Index of `va` in its leaf table.
    pub fn pte_index(va: u64) -> usize {
        index(va, 1)
    }

    /// Clears every leaf entry in `[start, end)` (`zap_page_range`):
    /// mapped frames and the pages to flush go to `g`. mmap write lock.
    pub(crate) fn zap(&self, start: u64, end: u64, g: &mut impl Gather) {
        self.zap_some(start, end, &|_| true, g);
    }

    /// [`Self::zap`] of the entries `drop` picks (the others stay).
    pub(crate) fn zap_some(&self, start: u64, end: u64, drop: &dyn Fn(Pte) -> bool, g: &mut impl Gather) {
        self.for_leaves(&self.root, 4, 0, start, end, &mut |t, ptl, i, va| {
            if !drop(Pte(t.entry(i))) {
                return;
            }
            let old = t.set(ptl, i, Pte(0));
            if old.mapped() {
                g.frame(old.pfn());
            }
            if old.present() {
                g.flush_page(va, old.cpus());
            }
        });
    }

    /// Rewrites every mapped leaf entry in `[start, end)` with `f`
    /// (`change_protection`); entries that lose rights are flushed.
    pub(crate) fn change_prot(&self, start: u64, end: u64, f: &dyn Fn(u64, Pte) -> Pte, g: &mut impl Gather) {
        self.for_leaves(&self.root, 4, 0, start, end, &mut |t, ptl, i, va| {
            let old = Pte(t.entry(i));
            if !old.mapped() {
                return;
            }
            let new = f(va, old);
            if new != old.sans_cpus() {
                // PT3: the swap returns the bits set up to now.
                let old = t.set(ptl, i, new);
                if old.present() && (!new.present() || (old.writable() && !new.writable())) {
                    g.flush_page(va, old.cpus());
                }
            }
        });
    }

    /// Moves the leaf entries of `[from, from + len)` to `[to, to + len)`
    /// (`move_ptes`); the destination must hold none. Source pages are
    /// flushed. mmap write lock.
    pub(crate) fn move_ptes(&self, from: u64, to: u64, len: u64, g: &mut impl Gather) {
        let mut moved = Vec::new();
        self.for_leaves(&self.root, 4, 0, from, from + len, &mut |t, _ptl, i, va| {
            let old = Pte(t.entries[i].swap(0, Ordering::AcqRel));
            if old.mapped() {
                moved.push((va - from + to, old));
            }
            if old.present() {
                g.flush_page(va, old.cpus());
            }
        });
        for (va, pte) in moved {
            let t = self.pte_table(va, true).expect("allocating walk");
            let ptl = t.lock();
            // The old bits named TLB entries of the old address, flushed.
            t.set(&ptl, index(va, 1), pte.sans_cpus());
        }
    }

    /// Copies the mapped leaf entries of `[start, end)` into `dst`, an
    /// address space's tables that no CPU uses yet (`copy_page_range` for
    /// `fork`, mm.rs A14). `share` is told each frame copied (it counts
    /// anonymous ones, frame.rs F7) before the entry is; with `cow`, both
    /// copies lose write permission and the source's writable entries are
    /// flushed through `g` (`inject` may break this: inject.rs's
    /// `ForkSkipsShootdown` keeps the entries' CPU bits instead of
    /// flushing, so that later flushes still reach those CPUs;
    /// `ForkSkipsWriteProtect` leaves the source writable). The source
    /// table's lock is held over each entry's copy, so a fault cannot
    /// reuse a page being shared (fault.rs FL11). mmap write lock.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn copy_range(
        &self,
        dst: &PageTable,
        start: u64,
        end: u64,
        cow: bool,
        inject: Option<crate::inject::Injection>,
        share: &dyn Fn(Pfn),
        g: &mut impl Gather,
    ) {
        use crate::inject::{Injection, active};
        let flush = !active(inject, Injection::ForkSkipsShootdown);
        let protect = !active(inject, Injection::ForkSkipsWriteProtect);
        self.for_leaves(&self.root, 4, 0, start, end, &mut |t, ptl, i, va| {
            let mut pte = Pte(t.entry(i)).sans_cpus();
            if !pte.mapped() {
                return;
            }
            share(pte.pfn());
            if cow && pte.writable() && protect {
                pte = Pte(pte.0 & !Pte::WRITE);
                // PT3: the swap returns the CPU bits set up to now.
                let old = t.set(ptl, i, pte);
                if flush {
                    g.flush_page(va, old.cpus());
                } else {
                    t.keep_cpus(ptl, i, old.cpus());
                }
            }
            if cow {
                // (Without `protect`, only the child's copy loses it.)
                pte = Pte(pte.0 & !Pte::WRITE);
            }
            let d = dst.pte_table(va, true).expect("allocating walk");
            let dl = d.lock();
            d.set(&dl, index(va, 1), pte);
        });
    }

    /// Calls `f(table, ptl, index, va)` for each non-empty leaf slot in
    /// `[start, end)`, with the leaf table's lock held for the whole scan
    /// of that table (so a fault cannot install behind the scan: PT4 at
    /// the last level), following PT4 for empty upper entries.
    fn for_leaves(&self, t: &Table, level: u32, base: u64, start: u64, end: u64, f: &mut LeafFn<'_>) {
        let span = entry_span(level);
        if level == 1 {
            let ptl = t.lock();
            for (i, lo) in slots(level, base, start, end) {
                if t.entry(i) != 0 {
                    f(t, &ptl, i, lo);
                }
            }
            return;
        }
        for (i, lo) in slots(level, base, start, end) {
            let mut e = t.entry(i);
            if e == 0 {
                // PT4: serialise with a fault hooking a table here.
                let _g = t.lock();
                e = t.entry(i);
                if e == 0 {
                    continue;
                }
            }
            // SAFETY: read from a table of `self` (PT1).
            let c = unsafe { child(e) };
            self.for_leaves(c, level - 1, lo, start.max(lo), end.min(lo + span), f);
        }
    }

    /// Unhooks every table that maps only addresses in `[floor, ceiling)`
    /// and overlaps `[start, end)` (`free_pgd_range`); they go to `g`
    /// (PT2, PT5). mmap write lock.
    pub(crate) fn free_tables(&self, floor: u64, ceiling: u64, start: u64, end: u64, g: &mut impl Gather) {
        Self::unhook_in(&self.root, 4, 0, floor, ceiling, start, end, g);
    }

    #[allow(clippy::too_many_arguments)]
    fn unhook_in(
        t: &Table,
        level: u32,
        base: u64,
        floor: u64,
        ceiling: u64,
        start: u64,
        end: u64,
        g: &mut impl Gather,
    ) {
        let span = entry_span(level);
        for (i, lo) in slots(level, base, start, end) {
            let e = t.entry(i);
            if e == 0 {
                continue;
            }
            if floor <= lo && lo + span <= ceiling {
                let guard = t.lock();
                // ORDERING: Release orders the unhook before the flush that
                // follows (PT5); the Box was leaked by `pte_table`.
                t.entries[i].store(0, Ordering::Release);
                drop(guard);
                let p = NonNull::new((e & !1) as *mut Table).expect("hooked table");
                g.table(UnhookedTable(p), level - 1, lo, lo + span);
            } else if level > 2 {
                // SAFETY: read from a table of this page table (PT1).
                let c = unsafe { child(e) };
                Self::unhook_in(c, level - 1, lo, floor, ceiling, start.max(lo), end.min(lo + span), g);
            }
        }
    }

    /// A handle that frees unhooked tables later (PT5), usable from an RCU
    /// callback without borrowing the page table.
    pub(crate) fn freer(&self) -> TableFreer {
        TableFreer { pool: self.pool.clone() }
    }

    /// Resident pages in `[start, end)`: `(anonymous, other)`, counted by a
    /// lockless walk (smaps' `Rss`); `kind` says whether a frame is
    /// anonymous, and `None` for frames Rss does not count (the zero page:
    /// `vm_normal_page` is `NULL` for it).
    pub(crate) fn rss(&self, start: u64, end: u64, kind: &dyn Fn(Pfn) -> Option<bool>) -> (u64, u64) {
        // The four levels map 48 bits; above that nothing is mapped (a
        // snapshot's `[vsyscall]`).
        let end = end.min(entry_span(4) * PTRS as u64);
        let mut counts = (0, 0);
        if start < end {
            self.rss_in(&self.root, 4, 0, start, end, kind, &mut counts);
        }
        counts
    }

    /// [`Self::rss`] under one table: only tables that exist are visited,
    /// so an empty range of any size costs one pass over the root. Why:
    /// stepping over every 2 MiB took minutes for a snapshot's mapping of
    /// 2^63 bytes.
    #[allow(clippy::too_many_arguments)]
    fn rss_in(
        &self,
        t: &Table,
        level: u32,
        base: u64,
        start: u64,
        end: u64,
        kind: &dyn Fn(Pfn) -> Option<bool>,
        counts: &mut (u64, u64),
    ) {
        let span = entry_span(level);
        for (i, lo) in slots(level, base, start, end) {
            let e = t.entry(i);
            if level == 1 {
                let p = Pte(e);
                if p.mapped() {
                    match kind(p.pfn()) {
                        Some(true) => counts.0 += 1,
                        Some(false) => counts.1 += 1,
                        None => {}
                    }
                }
            } else if e != 0 {
                // SAFETY: read from a table of `self` (PT1); the reference
                // does not outlive `&self`.
                let c = unsafe { child(e) };
                self.rss_in(c, level - 1, lo, start.max(lo), end.min(lo + span), kind, counts);
            }
        }
    }
}

/// Frees unhooked tables into their pool (PT5).
#[derive(Clone)]
pub(crate) struct TableFreer {
    pool: Arc<TablePool>,
}

impl TableFreer {
    /// Frees each table and the subtree under it. Returns how many leaf
    /// entries were still set (0 unless a fault installed a PTE after the
    /// zap: the bug the re-check under the PTL prevents).
    pub(crate) fn free(&self, tables: Vec<(UnhookedTable, u32)>) -> usize {
        let mut out = Vec::new();
        let mut leftover = 0;
        for (t, level) in tables {
            // SAFETY: PT5: unhooked, flushed and past its grace period; this
            // handle is its only owner and reclaims the Box `pte_table`
            // leaked.
            let b = unsafe { Box::from_raw(t.0.as_ptr()) };
            self.pool.free_tree(b, level, &mut out, &mut leftover);
        }
        self.pool.live.fetch_sub(out.len(), Ordering::Relaxed);
        self.pool.free.lock().unwrap_or_else(|e| e.into_inner()).extend(out);
        leftover
    }

    /// PT7: quarantines each table and the subtree under it: their
    /// generations move and they no longer count as the address space's
    /// (as freed ones), but no table goes back to the pool. Returns how
    /// many leaf entries were still set, as [`Self::free`] does.
    pub(crate) fn quarantine(&self, tables: Vec<(UnhookedTable, u32)>) -> usize {
        let (mut leftover, mut buried) = (0, 0);
        for (t, level) in &tables {
            // SAFETY: PT7: unhooked, and kept allocated by the graveyard
            // from here on; walkers only read and swap atomics.
            buried += bury(unsafe { t.0.as_ref() }, *level, &mut leftover);
        }
        self.pool.live.fetch_sub(buried, Ordering::Relaxed);
        self.pool.graveyard.lock().unwrap_or_else(|e| e.into_inner()).extend(tables);
        leftover
    }
}

impl Drop for PageTable {
    fn drop(&mut self) {
        // `&mut self`: no walker remains. Reclaim every hooked table.
        let mut out = Vec::new();
        let mut leftover = 0;
        let root = std::mem::replace(&mut self.root, Table::new_boxed());
        self.pool.free_tree(root, 4, &mut out, &mut leftover);
        self.pool.live.fetch_sub(out.len(), Ordering::Relaxed);
    }
}

#[cfg(all(test, not(rcuvm_loom)))]
mod tests {
    use super::*;

    #[derive(Default)]
    struct G {
        flushed: Vec<u64>,
        frames: Vec<Pfn>,
        tables: Vec<(UnhookedTable, u32)>,
    }
    impl Gather for G {
        fn flush_page(&mut self, va: u64, _cpus: u64) {
            self.flushed.push(va);
        }
        fn frame(&mut self, pfn: Pfn) {
            self.frames.push(pfn);
        }
        fn table(&mut self, t: UnhookedTable, level: u32, _lo: u64, _hi: u64) {
            self.tables.push((t, level));
        }
    }

    fn install(pt: &PageTable, va: u64, pfn: Pfn) {
        let t = pt.pte_table(va, true).unwrap();
        let ptl = t.lock();
        t.set(&ptl, PageTable::pte_index(va), Pte::new(pfn, true));
    }

    #[test]
    fn install_walk_zap_and_free() {
        let pt = PageTable::new();
        assert_eq!(pt.walk(0x40_0000), Pte(0));
        install(&pt, 0x40_0000, 7);
        install(&pt, 0x7fff_0000_1000, 9);
        assert_eq!(pt.walk(0x40_0000).pfn(), 7);
        assert!(pt.walk(0x40_0000).writable());
        assert_eq!(pt.walk(0x7fff_0000_1000).pfn(), 9);
        assert_eq!(pt.tables(), 1 + 3 + 3);
        let mut g = G::default();
        pt.zap(0x40_0000, 0x40_1000, &mut g);
        assert_eq!(g.frames, vec![7]);
        assert_eq!(g.flushed, vec![0x40_0000]);
        assert!(pt.walk(0x40_0000).is_none());
        // Unhook what maps only [0, 1 GiB): the PUD and below of the low half.
        pt.free_tables(0, 0x7fff_0000_0000, 0x40_0000, 0x40_1000, &mut g);
        assert_eq!(g.tables.len(), 1);
        assert_eq!(g.tables[0].1, 3, "the whole PUD table under PGD entry 0");
        let freed = pt.freer().free(std::mem::take(&mut g.tables));
        assert_eq!(freed, 0);
        assert_eq!(pt.tables(), 1 + 3);
        assert_eq!(pt.walk(0x7fff_0000_1000).pfn(), 9, "the other half is untouched");
    }

    /// PT7: a quarantined table's generation moves and it leaves the
    /// count, but its memory is not handed out again: a stale walker that
    /// still holds it writes a dead table, never a new one.
    #[test]
    fn quarantined_tables_are_never_handed_out_again() {
        let pt = PageTable::new();
        install(&pt, 0x40_0000, 7);
        let leaf = pt.pte_table(0x40_0000, false).unwrap() as *const Table;
        // SAFETY: the test holds no other reference; the table stays
        // allocated (quarantined) for the page table's life.
        let gen0 = unsafe { (*leaf).generation.load(Ordering::Relaxed) };
        let mut g = G::default();
        // Not zapped first: a PTE left in a freed table is counted.
        pt.free_tables(0, 0x7fff_0000_0000, 0x40_0000, 0x40_1000, &mut g);
        let left = pt.freer().quarantine(std::mem::take(&mut g.tables));
        assert_eq!(left, 1, "the PTE still set is counted, as free counts it");
        assert_eq!(pt.tables(), 1, "quarantined tables leave the count");
        // SAFETY: as above.
        assert_eq!(unsafe { (*leaf).generation.load(Ordering::Relaxed) }, gen0 + 1);
        // New tables for the same and other addresses: none is the old one.
        for i in 0..8u64 {
            install(&pt, 0x40_0000 + (i << 21), 1);
            let t = pt.pte_table(0x40_0000 + (i << 21), false).unwrap() as *const Table;
            assert!(!std::ptr::eq(t, leaf), "a quarantined table came back from the pool");
        }
        // What the check above would see without PT7: `free` hands the
        // same memory out again.
        let pt = PageTable::new();
        install(&pt, 0x40_0000, 7);
        let leaf = pt.pte_table(0x40_0000, false).unwrap() as *const Table;
        let mut g = G::default();
        pt.zap(0x40_0000, 0x40_1000, &mut g);
        pt.free_tables(0, 0x7fff_0000_0000, 0x40_0000, 0x40_1000, &mut g);
        assert_eq!(pt.freer().free(std::mem::take(&mut g.tables)), 0);
        install(&pt, 0x40_0000, 1);
        let again = pt.pte_table(0x40_0000, false).unwrap() as *const Table;
        assert!(std::ptr::eq(again, leaf), "the pool reuses a freed table");
    }

    #[test]
    fn tables_shared_with_a_neighbour_stay() {
        let pt = PageTable::new();
        install(&pt, 0x20_0000, 1);
        install(&pt, 0x20_1000, 2);
        let mut g = G::default();
        pt.zap(0x20_1000, 0x20_2000, &mut g);
        // A VMA still covers 0x20_0000: the ceiling keeps its tables.
        pt.free_tables(0x20_1000, 1 << 40, 0x20_1000, 0x20_2000, &mut g);
        assert!(g.tables.is_empty());
        assert_eq!(pt.walk(0x20_0000).pfn(), 1);
    }

    #[test]
    fn change_prot_and_move() {
        let pt = PageTable::new();
        install(&pt, 0x1000, 3);
        install(&pt, 0x2000, 4);
        let mut g = G::default();
        pt.change_prot(0x1000, 0x3000, &|_, p| Pte(p.0 & !Pte::WRITE), &mut g);
        assert!(!pt.walk(0x1000).writable());
        assert_eq!(g.flushed.len(), 2);
        pt.move_ptes(0x1000, 0x4000_0000, 0x2000, &mut g);
        assert!(pt.walk(0x1000).is_none());
        assert_eq!(pt.walk(0x4000_1000).pfn(), 4);
        assert_eq!(pt.rss(0x4000_0000, 0x4000_2000, &|_| Some(true)), (2, 0));
    }

    /// rss visits only tables that exist: the whole 64-bit range (a
    /// snapshot may hold such a VMA) is one pass, and counts what is there.
    #[test]
    fn rss_of_any_range_is_quick_and_exact() {
        let pt = PageTable::new();
        install(&pt, 0x1000, 3);
        install(&pt, 0x7fff_ffff_e000, 4);
        let kind = |pfn: Pfn| Some(pfn == 3);
        let t = std::time::Instant::now();
        assert_eq!(pt.rss(0, u64::MAX, &kind), (1, 1));
        assert_eq!(pt.rss(0x8000_0000_0000_0000, 0xffff_ffff_ffff_e000, &kind), (0, 0));
        assert_eq!(pt.rss(0x2000, 0x7fff_ffff_e000, &kind), (0, 0));
        assert_eq!(pt.rss(0x1000, 0x1001, &kind), (1, 0));
        assert!(t.elapsed() < std::time::Duration::from_secs(1), "{:?}", t.elapsed());
    }
}
