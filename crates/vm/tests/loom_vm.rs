//! Loom models of the address space's two critical races (issue 6): a page
//! fault against `munmap` followed by `mmap` at the same address, and a
//! maps reader against a split or an `mremap` move; of the reaper of
//! dead entries against a writer (model 4, mm.rs A10); and of a write
//! fault's reuse of a page against `fork` (model 5, fault.rs FL11, fork.rs
//! FK4).
//!
//! Run with `ci/loom.sh`, i.e. `RUSTFLAGS="--cfg rcuvm_loom"
//! LOOM_MAX_PREEMPTIONS=3 CARGO_TARGET_DIR=target/loom cargo test -p rcuvm
//! --release --test loom_vm` (`-- --nocapture` shows iterations and times).
//!
//! # What is real and what is mirrored
//! The VMA tree is the real `rcuvm-maple` tree and both RCU domains (the
//! VMA domain and the per-mm TLB domain) are real `rcuvm-rcu` domains, all
//! on loom's primitives under `--cfg rcuvm_loom`. Three protocol steps are
//! the vm crate's own code (src/protocol.rs), which vm runs on `Vma`s with
//! std atomics and these models run on loom: the fault's re-check under the
//! PTL (`protocol::vma_still_mapped`, fault.rs FL1), the look at the
//! entries of a range that placement and the reaping of dead entries make
//! (`protocol::entries_in`, mmap.rs `MmCall::entries_in`), and the whole
//! lockless maps reader (`protocol::read_stable`, mm.rs
//! `AddressSpace::read_stable`). The rest, which vm runs on its std and
//! parking_lot types (page tables, PTL, TLBs, frames, the mm calls' order
//! of steps), is mirrored on loom atomics and mutexes; each mirrored step
//! names the vm function it mirrors, file and name, so a reviewer can hold
//! one against the other.
//!
//! # Model 1: fault against munmap, then mmap at the same address
//! One CPU thread accesses a page twice (`Cpu::access`: a TLB-domain read
//! section, the TLB, the MMU walk, then outside the section the fault:
//! lockless VMA lookup under the VMA domain's guard, allocating walk, PTL,
//! `pte_same` and the re-check, install). Meanwhile the mm thread unmaps
//! the VMA (`rcu-dead`: bury it under a dead entry, zap under the PTL,
//! shoot down, free the frame; `rcu-sync`: erase, zap, unhook the table,
//! shoot down, free the frame, synchronize, free the table after a TLB
//! grace period), then maps a new VMA at the same address
//! with `MAP_FIXED` (`rcu-dead`: the dead entry is live, so it tries to end
//! its grace period without blocking and waits for one if a reader is in
//! the way, unmap.rs U8; then erases it and frees its table after a TLB
//! grace period),
//! then accesses the page itself from a CPU of its own.
//!
//! The `_vmacache` variants run the same race with fault.rs FL6: the CPU
//! starts with the old VMA in its vmacache (as after a fault on another of
//! its pages) and its faults take it from there while it is attached,
//! re-checking "still attached" under the PTL; munmap marks the VMA
//! detached first (unmap.rs `vma_write_lock`, vma.rs V6).
//!
//! Invariants, and how a violation shows:
//! - F1. No access that starts after munmap returned reaches the old VMA's
//!   frame, and one that starts after the new mmap returned reaches the new
//!   VMA's frame (assertions on the frame's owner, which the frame's word
//!   holds).
//! - F2. No access reads a frame after it was freed, and no fault or MMU
//!   walk touches a page table after it was freed: frames and tables are
//!   loom `UnsafeCell`s that freeing poisons, so loom reports a causality
//!   violation for a read concurrent with the free, and the poison fails a
//!   check for a read after it.
//!
//! A failed check records the first violation; the model fails with it at
//! the end of the schedule, once the CPU thread has ended (a panic in
//! loom's main thread while another of its threads lives aborts the test).
//! - F3. No page table is freed with a present PTE in it (a PTE installed
//!   after its zap: vm counts those in `ptes_in_freed_tables`).
//!
//! # Model 2: maps reader against a split or an mremap move
//! The reader is `protocol::read_stable` itself, with a `ReadSide` on loom:
//! a SeqCst load of the loom `write_seq`, a loom yield, the loom mmap lock.
//! The writer mirrors `MmCall::set_flags` (an mprotect of the top half of a
//! VMA: three tree stores inside `MmCall::tree_txn`) or `move_vma` (an
//! mremap that moves a VMA next to its neighbour, merging with it, then
//! buries the source). Invariants (the checker's P4), checked on the
//! reader's lines: addresses go strictly up, lines never overlap, each line
//! is a whole VMA state that existed before or after a call (its tree range
//! is its own range and it is not a split's intermediate piece), and the
//! VMAs that exist throughout (or whose range stays mapped throughout) are
//! shown.
//!
//! # Mutations
//! Each model can fail: the `mutation_*` tests run a model with one
//! protocol step removed and pass only if the model fails with the expected
//! kind of report. They search with a small fixed preemption bound that
//! finds their bug (2 for (a), (b) and (b'), which a bound of 1 does not
//! find; 1 for (c)), whatever `LOOM_MAX_PREEMPTIONS` says, and loom stops
//! at the first failing schedule, so they fail in well under a second:
//! - (a) a fault without the re-check under the PTL (`rcu-dead`): a stale
//!   PTE, seen by an access after munmap (F1) or left in a table when it
//!   is freed (F3);
//! - (b) `MAP_FIXED` that reaps the dead entry without its grace period
//!   (placement reusing the address too early): the table is freed under
//!   the racing fault, which still uses it (F2: loom reports the causality
//!   violation at `Table::free`);
//! - (b') vm's own injection `PlacementIgnoresDead` (inject.rs): `MAP_FIXED`
//!   stores the new VMA over the dead entry without reaping it; the next
//!   mm call after the dead entry's grace period reaps it, erasing the live
//!   VMA and freeing the table under it with the new VMA's PTE (F3);
//! - (c) the maps reader without the seqcount check (`ReadSide::seq` reads
//!   a constant): a line of a half-done split (P4);
//! - (a') the vmacache's fault without its "still attached" re-check: a
//!   stale PTE, as (a);
//! - (d) munmap without the detached mark (V6): the CPU's vmacache keeps
//!   the unmapped VMA, and an access after the new mmap reaches the old
//!   VMA's frame (F1);
//! - (g) a reaper (model 4) that finds the mmap lock taken and does not
//!   queue itself again: dead entries left in an idle address space (R2);
//! - (h) a call that queues a reaper though one is queued (R1);
//! - (i) a write fault with neither of its re-checks against `fork` (the
//!   VMA still attached, the page still exclusive): the parent maps
//!   writable a frame the child shares (model 5, FL11).
//!
//! Each model also counts, across its iterations, that the interesting
//! interleaving was explored (a fault that found the old VMA and was
//! saved by its re-check; a grace period that waited for such a fault; a
//! reader that read an entry in the middle of a split) and asserts it was.
//!
//! Not modelled: the mmap lock and the seqcount in model 1 (one mm thread,
//! no maps reader), the TLB log and partial flushes (a CPU that is behind
//! flushes its whole TLB, which is what T4 falls back to), T5's local
//! flush (every shootdown waits), CPU bits in PTEs, copy-on-write, the RCU
//! callbacks (a callback's work is done by the writer after a synchronize:
//! one of the callback's schedules, and a later run would only free later;
//! a dead entry "expires" when `poll_state` says its grace period passed,
//! as the vm checks it too (strategy.rs `DeadEntry`)).

#![cfg(rcuvm_loom)]

use std::cell::Cell;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{
    AtomicBool as StdAtomicBool, AtomicUsize as StdAtomicUsize, Ordering as StdOrdering,
};
use std::time::Instant;

use loom::cell::UnsafeCell;
use loom::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use loom::sync::{Arc, Mutex, MutexGuard};
use loom::thread;
use rcuvm::maple::{Entry, MapleTree};
use rcuvm::protocol::{self, ReadSide};
use rcuvm::rcu::Domain;

/// How deep a model searches.
#[derive(Clone, Copy)]
enum Bound {
    /// This preemption bound, unless `LOOM_MAX_PREEMPTIONS` says otherwise
    /// (the models proper: CI may search deeper).
    Default(usize),
    /// This bound whatever the environment says: the mutation checks, which
    /// need only a bound that finds their bug, so that they fail fast.
    Fixed(usize),
}

/// Runs `f` under loom with the preemption bound `bound` says and reports
/// the iterations and the time taken.
fn check<F>(name: &str, bound: Bound, f: F)
where
    F: Fn() + Send + Sync + 'static,
{
    let mut b = loom::model::Builder::new();
    match bound {
        Bound::Default(n) => {
            if b.preemption_bound.is_none() {
                b.preemption_bound = Some(n);
            }
        }
        Bound::Fixed(n) => b.preemption_bound = Some(n),
    }
    let iterations = std::sync::Arc::new(StdAtomicUsize::new(0));
    let n = iterations.clone();
    let t0 = Instant::now();
    b.check(move || {
        n.fetch_add(1, StdOrdering::Relaxed);
        f();
    });
    eprintln!(
        "loom model {name}: {} iterations in {:.2?} (preemption bound {:?})",
        iterations.load(StdOrdering::Relaxed),
        t0.elapsed(),
        b.preemption_bound
    );
}

/// Runs a model with a protocol step removed: passes only if the model
/// fails, with a report containing one of `expected` (so a model that fails
/// for an unrelated reason does not count as a caught mutation).
fn expect_caught(name: &str, expected: &[&str], model: impl FnOnce()) {
    let t0 = Instant::now();
    let Err(e) = std::panic::catch_unwind(AssertUnwindSafe(model)) else {
        panic!("mutation {name}: the model passed, it cannot see this bug");
    };
    let msg = e
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default();
    assert!(
        expected.iter().any(|x| msg.contains(x)),
        "mutation {name}: the model failed, but not with {expected:?}: {msg}"
    );
    eprintln!("loom mutation {name}: caught in {:.2?}: {msg}", t0.elapsed());
}

/// What a word of freed memory holds (frames and tables), standing for
/// the free.
const POISON: u64 = 0xdead;

// ---------------------------------------------------------------------------
// Model 1: fault against munmap, then mmap at the same address.
// ---------------------------------------------------------------------------

const PAGE: u64 = 0x1000;
/// The page that is unmapped and mapped again.
const VA: u64 = 0x10_000;
/// The VMA munmap removes, and the one the MAP_FIXED mmap puts there.
const OLD: u64 = 1;
const NEW: u64 = 2;
/// A table word while the table is allocated.
const TABLE_LIVE: u64 = 0x7ab1e;
/// The upper entry (`pmd`) with no leaf table hooked.
const NO_TABLE: usize = usize::MAX;
/// Faults one access may take before giving up (cpu.rs `MAX_FAULTS`, cut
/// down: a fault loses at most two races here, the vmacache's re-check and
/// then the tree's while munmap is between its detached mark and its tree
/// store).
const MAX_FAULTS: usize = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Strategy {
    RcuSync,
    RcuDead,
}

/// A protocol step removed (the mutation checks).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mutation {
    None,
    /// (a) fault.rs `do_fault` installs without `live()`.
    NoRecheck,
    /// (b) unmap.rs `reap_dead` with `force` reaps a live dead entry
    /// without `synchronize`.
    ReapWithoutGracePeriod,
    /// (b') inject.rs `PlacementIgnoresDead`: `reap_dead` without `force`,
    /// so `MAP_FIXED` stores over the dead entry, which stays queued.
    PlacementIgnoresDead,
    /// (d) unmap.rs `vma_write_lock` without the detached mark (V6): a
    /// CPU's vmacache keeps using the unmapped VMA.
    NoDetachMark,
}

/// A tree value: a VMA (vma.rs `Vma`, reduced to its identity) or a dead
/// entry (vma.rs V5).
#[derive(Debug)]
struct Vma1 {
    id: u64,
    dead: bool,
    /// vma.rs V6: set by a writer before it replaces or removes the object.
    detached: AtomicBool,
}

impl Vma1 {
    fn new(id: u64, dead: bool) -> Self {
        Vma1 { id, dead, detached: AtomicBool::new(false) }
    }
    /// fault.rs FL6: the cached object may be used (and re-checked) while
    /// attached. ORDERING: Acquire, as fault.rs (the PTL orders it).
    fn attached(&self) -> bool {
        !self.detached.load(Ordering::Acquire)
    }
}

/// A leaf page table (pgtable.rs `Table`) with one entry.
struct Table {
    /// The split page-table lock (pgtable.rs `Table::lock`).
    ptl: Mutex<()>,
    /// The leaf entry: 0 for none, else the frame's index + 1.
    pte: AtomicUsize,
    /// The table page's memory: `TABLE_LIVE`, `POISON` once freed.
    mem: UnsafeCell<u64>,
}

impl Table {
    fn new() -> Self {
        Table { ptl: Mutex::new(()), pte: AtomicUsize::new(0), mem: UnsafeCell::new(TABLE_LIVE) }
    }
    /// A use of the table's memory (a walk or a fault in it): F2.
    fn touch(&self) -> u64 {
        // SAFETY: loom checks that this read does not race with `free`.
        self.mem.with(|p| unsafe { *p })
    }
    /// pgtable.rs `TableFreer::free`: returns the entry left in it (F3).
    fn free(&self) -> usize {
        let left = self.pte.load(Ordering::Relaxed);
        // SAFETY: loom checks that this write does not race with `touch`.
        self.mem.with_mut(|p| unsafe { *p = POISON });
        left
    }
}

/// A physical frame (frame.rs `Frame`): its word holds the id of the VMA it
/// was allocated for, `POISON` once freed, 0 while in a CPU's cache.
struct Frame {
    word: UnsafeCell<u64>,
}

impl Frame {
    /// An access's use of the frame (F2): its word.
    fn read(&self) -> u64 {
        // SAFETY: loom checks that this read does not race with `free`.
        self.word.with(|p| unsafe { *p })
    }
    fn alloc(&self, owner: u64) {
        // SAFETY: the frame is this CPU's (from its cache) until installed.
        self.word.with_mut(|p| unsafe { *p = owner });
    }
    fn unused(&self) {
        // SAFETY: as `alloc`: never published.
        self.word.with_mut(|p| unsafe { *p = 0 });
    }
    /// frame.rs `PhysMem::free`, after the shootdown (tlb.rs T3).
    fn free(&self) {
        // SAFETY: loom checks that this write does not race with `read`.
        self.word.with_mut(|p| unsafe { *p = POISON });
    }
}

/// The parts of `AddressSpace` and `Hw` (mm.rs) the race goes through.
struct Mm {
    /// The VMA tree; its domain is the VMA domain.
    tree: MapleTree<std::sync::Arc<Vma1>>,
    /// The per-mm TLB domain (tlb.rs `Shootdown::domain`).
    tlb: Domain,
    /// tlb.rs `Shootdown::generation`.
    tlb_gen: AtomicU64,
    /// The upper table's entry for `VA`'s leaf table, and its lock
    /// (pgtable.rs: the parent `Table`'s entry and lock).
    pmd: AtomicUsize,
    pmd_lock: Mutex<()>,
    /// Table 0 is hooked at the start; 1 and 2 are the CPU's and the mm
    /// thread's spare for an allocating walk.
    tables: [Table; 3],
    /// Frames 0..3 are the CPU thread's cache, 3..6 the mm thread's.
    frames: [Frame; 6],
    /// How far the mm thread got: `UNMAPPED` once munmap returned, `MAPPED`
    /// once the new mmap did. A loom atomic, so that an access that reads
    /// it is ordered after the call (happens-before), as a user thread that
    /// learnt of the call's return is.
    phase: AtomicUsize,
    /// The first violation of F1-F3 seen (a std mutex: loom runs one thread
    /// at a time, and this is the model's report, not part of the protocol).
    violation: std::sync::Mutex<Option<String>>,
}

impl Mm {
    /// Records a violation unless `ok`; the model fails with the first one
    /// at its end (see `fault_model`).
    fn expect(&self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.violation.lock().unwrap().get_or_insert_with(what);
        }
    }
    /// A walk or a fault using table `t` (F2).
    fn touch_table(&self, t: usize, who: &str) {
        let w = self.tables[t].touch();
        self.expect(w == TABLE_LIVE, || format!("{who} used a freed page table"));
    }
    /// Frees table `t` (F3, F2).
    fn free_table(&self, t: usize) {
        let left = self.tables[t].free();
        self.expect(left == 0, || {
            "a page table was freed with a present PTE (a PTE installed after its zap)".to_string()
        });
    }
    /// An access reaching frame `f` (F2): its owner.
    fn read_frame(&self, f: usize) -> u64 {
        let w = self.frames[f].read();
        self.expect(w != POISON && w != 0, || format!("an access reached a freed frame ({w:#x})"));
        w
    }
}

const UNMAPPED: usize = 1;
const MAPPED: usize = 2;

/// What the schedules of one model did, across its iterations (std atomics:
/// loom runs its threads one at a time, so these record the order in which
/// the explored schedule ran the steps).
struct Cov1 {
    /// A fault holds the old VMA under its guard now.
    fault_holds_old: StdAtomicBool,
    /// Iterations in which a fault that found the old VMA backed off on
    /// its re-check under the PTL.
    recheck_saved: StdAtomicUsize,
    /// Iterations in which the mm thread began a grace period of the VMA
    /// domain while a fault held the old VMA.
    gp_waited_for_fault: StdAtomicUsize,
    /// Faults that took the old VMA from the vmacache (FL6).
    cache_used_old: StdAtomicUsize,
    /// Of those, the ones that backed off on the "still attached" re-check.
    cache_recheck_saved: StdAtomicUsize,
}

impl Cov1 {
    const fn new() -> Self {
        Cov1 {
            fault_holds_old: StdAtomicBool::new(false),
            recheck_saved: StdAtomicUsize::new(0),
            gp_waited_for_fault: StdAtomicUsize::new(0),
            cache_used_old: StdAtomicUsize::new(0),
            cache_recheck_saved: StdAtomicUsize::new(0),
        }
    }
    fn start_iteration(&self) {
        self.fault_holds_old.store(false, StdOrdering::Relaxed);
    }
    fn vma_gp_begins(&self) {
        if self.fault_holds_old.load(StdOrdering::Relaxed) {
            self.gp_waited_for_fault.fetch_add(1, StdOrdering::Relaxed);
        }
    }
    fn assert_explored(&self, name: &str) {
        let (r, g) = (
            self.recheck_saved.load(StdOrdering::Relaxed),
            self.gp_waited_for_fault.load(StdOrdering::Relaxed),
        );
        eprintln!(
            "loom model {name}: {r} iterations had a fault saved by its re-check, {g} a grace period wait for a fault"
        );
        assert!(r > 0, "{name}: no schedule had a fault find the old VMA and back off on the re-check");
        assert!(g > 0, "{name}: no schedule had a grace period wait for a fault holding the old VMA");
    }
    /// For the vmacache variants: the cached old VMA was used, and its
    /// re-check under the PTL saved a fault.
    fn assert_cache_explored(&self, name: &str) {
        let (u, r) = (
            self.cache_used_old.load(StdOrdering::Relaxed),
            self.cache_recheck_saved.load(StdOrdering::Relaxed),
        );
        eprintln!(
            "loom model {name}: {u} faults took the old VMA from the vmacache, {r} backed off on its re-check"
        );
        assert!(u > 0, "{name}: no fault took the old VMA from the vmacache");
        assert!(r > 0, "{name}: no cached fault backed off on the re-check under the PTL");
    }
}

/// A simulated CPU (cpu.rs `Cpu`): its TLB of one entry and its frame cache.
struct Cpu1 {
    /// tlb.rs `Tlb::generation`.
    tlb_gen: u64,
    /// The cached leaf entry.
    tlb: Option<usize>,
    /// frame.rs `FrameCache`: indices of free frames.
    frames: Vec<usize>,
    /// A zeroed table page for an allocating walk.
    spare_table: Option<usize>,
    /// fault.rs FL6: the last VMA a fault used, when the model runs with
    /// the vmacache (`None` for good otherwise).
    vmacache: Option<std::sync::Arc<Vma1>>,
    /// Whether faults use the vmacache.
    use_vmacache: bool,
}

#[derive(Debug, PartialEq, Eq)]
enum Fail {
    /// SIGSEGV (fault.rs `AccessError::MapErr`).
    MapErr,
    /// fault.rs `AccessError::Livelock`.
    Livelock,
}

/// cpu.rs `Cpu::access_unrecorded`: returns the owner of the frame reached.
fn access(mm: &Mm, cpu: &mut Cpu1, m: Mutation, cov: &Cov1) -> Result<u64, Fail> {
    for _ in 0..MAX_FAULTS {
        {
            // tlb.rs T1: an access is one read-side section of the TLB domain.
            let _section = mm.tlb.read();
            // tlb.rs `Tlb::sync`: behind the shootdown generation, flush.
            let now = mm.tlb_gen.load(Ordering::Acquire);
            if now != cpu.tlb_gen {
                cpu.tlb = None;
                cpu.tlb_gen = now;
            }
            let pte = match cpu.tlb {
                Some(p) => p,
                None => {
                    // pgtable.rs `PageTable::walk_for`, then `Tlb::fill`.
                    let p = walk(mm, "an MMU walk");
                    if p != 0 {
                        cpu.tlb = Some(p);
                    }
                    p
                }
            };
            if pte != 0 {
                return Ok(mm.read_frame(pte - 1));
            }
        }
        // C2: the fault runs outside the section.
        fault(mm, cpu, m, cov)?;
    }
    Err(Fail::Livelock)
}

/// pgtable.rs `PageTable::walk`: the leaf entry for `VA`, 0 if none.
fn walk(mm: &Mm, who: &str) -> usize {
    let t = mm.pmd.load(Ordering::Acquire);
    if t == NO_TABLE {
        return 0;
    }
    mm.touch_table(t, who);
    mm.tables[t].pte.load(Ordering::Acquire)
}

/// pgtable.rs `PageTable::pte_table(va, true)`: the leaf table, hooking a
/// new one under the upper table's lock if there is none.
fn pte_table(mm: &Mm, cpu: &mut Cpu1) -> usize {
    let t = mm.pmd.load(Ordering::Acquire);
    if t != NO_TABLE {
        return t;
    }
    let _g = mm.pmd_lock.lock().unwrap();
    let t = mm.pmd.load(Ordering::Relaxed);
    if t != NO_TABLE {
        return t;
    }
    let new = cpu.spare_table.take().expect("one new table per CPU is enough here");
    // ORDERING: Release publishes the zeroed table (PT2).
    mm.pmd.store(new, Ordering::Release);
    new
}

/// fault.rs `handle_mm_fault` for `rcu-sync` and `rcu-dead`, with
/// `do_fault` for an anonymous write fault on an empty entry.
fn fault(mm: &Mm, cpu: &mut Cpu1, m: Mutation, cov: &Cov1) -> Result<(), Fail> {
    let g = mm.tree.domain().read();
    // FL6: the CPU's last VMA while attached, re-checked "still attached"
    // under the PTL; else FL3: the lockless lookup, re-checked by PR1.
    let cached = cpu.vmacache.clone().filter(|v| v.attached());
    let (vma, from_cache): (&Vma1, bool) = match &cached {
        Some(v) => (v, true),
        None => {
            let Some(e) = mm.tree.load(VA, &g) else { return Err(Fail::MapErr) };
            if e.value.dead {
                return Err(Fail::MapErr);
            }
            if cpu.use_vmacache && e.value.attached() {
                cpu.vmacache = Some(e.to_arc());
            }
            (e.value, false)
        }
    };
    let found_old = vma.id == OLD;
    if from_cache && found_old {
        cov.cache_used_old.fetch_add(1, StdOrdering::Relaxed);
    }
    cov.fault_holds_old.store(found_old, StdOrdering::Relaxed);
    // do_fault: `hw.pt.walk(page)`.
    let seen = walk(mm, "a fault's walk");
    let r = if seen != 0 {
        Ok(()) // another CPU got there first
    } else {
        // `cache.alloc`: a fresh frame for this VMA.
        let f = cpu.frames.pop().expect("the CPU's frame cache is large enough");
        mm.frames[f].alloc(vma.id);
        let t = pte_table(mm, cpu);
        let table = &mm.tables[t];
        let ptl = table.ptl.lock().unwrap();
        mm.touch_table(t, "a fault under the PTL");
        // pte_same.
        let same = table.pte.load(Ordering::Relaxed) == seen;
        // FL1: the re-check, the vm's own code (protocol.rs PR1), or FL6's.
        let live = m == Mutation::NoRecheck
            || if from_cache { vma.attached() } else { protocol::vma_still_mapped(&mm.tree, VA, vma, &g) };
        if same && live {
            // pgtable.rs `Table::set`: a swap, AcqRel as there.
            table.pte.swap(f + 1, Ordering::AcqRel);
            drop(ptl);
        } else {
            drop(ptl);
            if found_old && !live {
                cov.recheck_saved.fetch_add(1, StdOrdering::Relaxed);
                if from_cache {
                    cov.cache_recheck_saved.fetch_add(1, StdOrdering::Relaxed);
                }
            }
            // `cache.unused`.
            mm.frames[f].unused();
            cpu.frames.push(f);
        }
        Ok(())
    };
    cov.fault_holds_old.store(false, StdOrdering::Relaxed);
    drop(g);
    r
}

/// tlb.rs `Shootdown::flush`: publish a new generation, then wait for every
/// access that may use the old one (T2). The log of ranges is not modelled:
/// a CPU behind flushes its whole TLB.
fn shootdown(mm: &Mm) {
    // ORDERING: Release publishes the PTE changes (T2).
    mm.tlb_gen.fetch_add(1, Ordering::Release);
    mm.tlb.synchronize_expedited();
}

/// mmap.rs `MmCall::munmap_range` of the whole VMA: `bury` (unmap.rs), then
/// `unmap_pages`, `finish` and `after_unmap` (unmap.rs).
fn munmap(mm: &Mm, s: Strategy, m: Mutation, cov: &Cov1) -> Option<rcuvm::rcu::GpState> {
    let mut w = mm.tree.write();
    // unmap.rs `vma_write_lock` on every VMA hit, before the tree changes:
    // the detached mark (vma.rs V6).
    if m != Mutation::NoDetachMark {
        for v in protocol::entries_in(&w, VA, VA + PAGE) {
            v.detached.store(true, Ordering::Release);
        }
    }
    // tree_txn { bury }: (the seqcount is model 2's; no reader here.)
    let dead = match s {
        Strategy::RcuDead => {
            // unmap.rs `bury`: a dead entry over the range; its RCU callback
            // would mark it expired after a grace period (`poll_state`).
            w.store(VA..VA + PAGE, std::sync::Arc::new(Vma1::new(OLD, true))).unwrap();
            Some(mm.tree.domain().get_state())
        }
        Strategy::RcuSync => {
            w.erase(VA..VA + PAGE).unwrap();
            None
        }
    };
    // unmap.rs `unmap_pages`: pgtable.rs `zap`, each entry under its PTL.
    let mut frames = Vec::new();
    let t = mm.pmd.load(Ordering::Acquire);
    if t != NO_TABLE {
        let _ptl = mm.tables[t].ptl.lock().unwrap();
        let old = mm.tables[t].pte.swap(0, Ordering::AcqRel);
        if old != 0 {
            frames.push(old - 1);
        }
    }
    // `free_tables` (not under rcu-dead, U2): unhook the gap's table.
    let unhooked = if s == Strategy::RcuSync {
        let _g = mm.pmd_lock.lock().unwrap();
        let t = mm.pmd.swap(NO_TABLE, Ordering::AcqRel);
        (t != NO_TABLE).then_some(t)
    } else {
        None
    };
    // unmap.rs `finish`: one shootdown, then the frames (T3).
    if !frames.is_empty() {
        shootdown(mm);
    }
    for f in frames {
        mm.frames[f].free();
    }
    // `after_unmap` (U3): rcu-sync waits for a grace period. It also stands
    // for the one the table's callback waits for (`domain.call`), which
    // then waits for the TLB domain (T6) before freeing the table.
    if s == Strategy::RcuSync {
        cov.vma_gp_begins();
        mm.tree.domain().synchronize();
        if let Some(t) = unhooked {
            mm.tlb.synchronize();
            mm.free_table(t);
        }
    }
    dead
}

/// mmap.rs `MmCall::mmap` with `MAP_FIXED` over `VA`: `munmap_range` finds
/// no live VMA, then `insert_merged`: unmap.rs `reap_dead(true, ..)`, then
/// `store_merged`. `dead` is the mm's queue of dead entries (`MmCall::dead`,
/// at most the one munmap left); returns what is left in it.
fn mmap_fixed(
    mm: &Mm,
    dead: Option<rcuvm::rcu::GpState>,
    m: Mutation,
    cov: &Cov1,
) -> Option<rcuvm::rcu::GpState> {
    let mut w = mm.tree.write();
    let mut dead = dead;
    if let Some(s) = dead {
        // reap_dead: the expired entries first (strategy.rs `DeadEntry`:
        // a grace period has passed the state the munmap took, as the vm
        // checks it too), then with `force` (which
        // inject.rs `PlacementIgnoresDead` turns off) every dead entry in
        // the range, found by the vm's own look at it (protocol.rs PR2).
        let expired = mm.tree.domain().poll_state(s);
        let force = m != Mutation::PlacementIgnoresDead;
        if expired || (force && protocol::entries_in(&w, VA, VA + PAGE).iter().any(|v| v.dead)) {
            // unmap.rs U8: first a try that never blocks (`try_complete`),
            // then a wait only if a reader is in the way.
            if !expired && m != Mutation::ReapWithoutGracePeriod && !mm.tree.domain().try_complete(s) {
                cov.vma_gp_begins();
                mm.tree.domain().synchronize();
            }
            reap(mm, &mut w);
            dead = None;
        }
    }
    // store_merged.
    w.store(VA..VA + PAGE, std::sync::Arc::new(Vma1::new(NEW, false))).unwrap();
    dead
}

/// The end of unmap.rs `reap_dead` for the dead entry at `VA`: erase its
/// range, then `free_tables` of the gap and `finish(g, vma_gp_passed =
/// true)`: the table after a grace period of the TLB domain only (T6).
fn reap(mm: &Mm, w: &mut rcuvm::maple::Writer<'_, std::sync::Arc<Vma1>>) {
    w.erase(VA..VA + PAGE).unwrap();
    let t = {
        let _g = mm.pmd_lock.lock().unwrap();
        mm.pmd.swap(NO_TABLE, Ordering::AcqRel)
    };
    if t != NO_TABLE {
        mm.tlb.synchronize();
        mm.free_table(t);
    }
}

fn fault_model(name: &'static str, s: Strategy, vmacache: bool, m: Mutation, cov: &'static Cov1) {
    // Bound 1 does not find (a) or (b); 2 finds (a), (b) and (b').
    let bound = if m == Mutation::None { Bound::Default(3) } else { Bound::Fixed(2) };
    check(name, bound, move || {
        cov.start_iteration();
        let mm = Arc::new(Mm {
            tree: MapleTree::new(std::sync::Arc::new(Domain::new())),
            tlb: Domain::new(),
            tlb_gen: AtomicU64::new(0),
            pmd: AtomicUsize::new(0),
            pmd_lock: Mutex::new(()),
            tables: [Table::new(), Table::new(), Table::new()],
            frames: std::array::from_fn(|_| Frame { word: UnsafeCell::new(0) }),
            phase: AtomicUsize::new(0),
            violation: std::sync::Mutex::new(None),
        });
        mm.tree.write().insert(VA..VA + PAGE, std::sync::Arc::new(Vma1::new(OLD, false))).unwrap();
        // With the vmacache, the CPU starts with the old VMA cached, as
        // after a fault on another of its pages: its first fault here takes
        // it from the cache, racing with munmap's detached mark.
        let warm = vmacache.then(|| {
            let g = mm.tree.domain().read();
            mm.tree.load(VA, &g).expect("the old VMA").to_arc()
        });
        let cpu = {
            let mm = mm.clone();
            thread::spawn(move || {
                let mut cpu = Cpu1 {
                    tlb_gen: 0,
                    tlb: None,
                    frames: vec![0, 1, 2],
                    spare_table: Some(1),
                    vmacache: warm,
                    use_vmacache: vmacache,
                };
                for _ in 0..2 {
                    // ORDERING: Acquire pairs with the mm thread's Release.
                    let phase = mm.phase.load(Ordering::Acquire);
                    let (after_unmap, after_map) = (phase >= UNMAPPED, phase >= MAPPED);
                    let r = access(&mm, &mut cpu, m, cov);
                    // F1.
                    if after_map {
                        mm.expect(r == Ok(NEW), || {
                            format!("an access after the new mmap did not reach the new VMA's frame: {r:?}")
                        });
                    } else if after_unmap {
                        mm.expect(r != Ok(OLD), || {
                            "an access after munmap reached the old VMA's frame (a stale PTE)".to_string()
                        });
                    }
                    mm.expect(r != Err(Fail::Livelock), || "an access livelocked".to_string());
                }
            })
        };
        let dead = munmap(&mm, s, m, cov);
        mm.phase.store(UNMAPPED, Ordering::Release);
        let dead = mmap_fixed(&mm, dead, m, cov);
        mm.phase.store(MAPPED, Ordering::Release);
        // A CPU of the mm thread's own: F1 for the new mapping.
        let mut own = Cpu1 {
            tlb_gen: 0,
            tlb: None,
            frames: vec![3, 4, 5],
            spare_table: Some(2),
            vmacache: None,
            use_vmacache: vmacache,
        };
        let r = access(&mm, &mut own, m, cov);
        mm.expect(r == Ok(NEW), || {
            format!("an access after the new mmap did not reach the new VMA's frame: {r:?}")
        });
        if let Some(s) = dead {
            // A dead entry left in the queue (only when MAP_FIXED did not reap
            // it): the next mm call after its callback ran reaps it
            // (`reap_dead`'s expired path). The synchronize stands for the
            // time until the callback's grace period ended.
            mm.tree.domain().synchronize();
            mm.expect(mm.tree.domain().poll_state(s), || {
                "a grace period did not expire the dead entry".to_string()
            });
            reap(&mm, &mut mm.tree.write());
        }
        cpu.join().unwrap();
        // F1-F3 are checked here, once the CPU thread has ended, and after
        // the last loom object is gone: a panic in the model's main thread
        // while another loom thread lives, or while loom objects are dropped
        // by the unwinding, leaves loom's state behind (and aborts).
        let violation = mm.violation.lock().unwrap().take();
        drop(mm);
        if let Some(v) = violation {
            panic!("{v}");
        }
    });
}

// Checks F1-F3 for rcu-dead: munmap leaves a dead entry, MAP_FIXED waits for its grace period.
#[test]
fn fault_vs_munmap_then_mmap_rcu_dead() {
    static COV: Cov1 = Cov1::new();
    fault_model("fault_vs_munmap_then_mmap_rcu_dead", Strategy::RcuDead, false, Mutation::None, &COV);
    COV.assert_explored("fault_vs_munmap_then_mmap_rcu_dead");
}

// Checks F1-F3 for rcu-sync: munmap erases, unhooks the table and synchronizes.
#[test]
fn fault_vs_munmap_then_mmap_rcu_sync() {
    static COV: Cov1 = Cov1::new();
    fault_model("fault_vs_munmap_then_mmap_rcu_sync", Strategy::RcuSync, false, Mutation::None, &COV);
    COV.assert_explored("fault_vs_munmap_then_mmap_rcu_sync");
}

// Checks that model 1 catches (a): a fault installing without the re-check under the PTL.
#[test]
fn mutation_fault_without_recheck() {
    static COV: Cov1 = Cov1::new();
    expect_caught("fault_without_recheck", &["stale PTE", "present PTE", "old VMA's frame"], || {
        fault_model("mutation_fault_without_recheck", Strategy::RcuDead, false, Mutation::NoRecheck, &COV)
    });
}

// Checks that model 1 catches (b): MAP_FIXED reaping a live dead entry without its grace period.
#[test]
fn mutation_map_fixed_ignores_dead_entry() {
    static COV: Cov1 = Cov1::new();
    expect_caught("map_fixed_ignores_dead_entry", &["freed page table", "Causality violation"], || {
        fault_model(
            "mutation_map_fixed_ignores_dead_entry",
            Strategy::RcuDead,
            false,
            Mutation::ReapWithoutGracePeriod,
            &COV,
        )
    });
}

// Checks that model 1 catches (b'), vm's own injection: MAP_FIXED storing over a live dead entry.
#[test]
fn mutation_placement_ignores_dead_entry() {
    static COV: Cov1 = Cov1::new();
    expect_caught(
        "placement_ignores_dead_entry",
        &["present PTE", "freed page table", "Causality violation"],
        || {
            fault_model(
                "mutation_placement_ignores_dead_entry",
                Strategy::RcuDead,
                false,
                Mutation::PlacementIgnoresDead,
                &COV,
            )
        },
    );
}

// Checks F1-F3 for rcu-dead with the vmacache (fault.rs FL6): the CPU's
// second fault takes the VMA its first one cached, and re-checks it is
// still attached under the PTL.
#[test]
fn fault_vs_munmap_then_mmap_rcu_dead_vmacache() {
    static COV: Cov1 = Cov1::new();
    fault_model("fault_vs_munmap_then_mmap_rcu_dead_vmacache", Strategy::RcuDead, true, Mutation::None, &COV);
    COV.assert_explored("fault_vs_munmap_then_mmap_rcu_dead_vmacache");
    COV.assert_cache_explored("fault_vs_munmap_then_mmap_rcu_dead_vmacache");
}

// The same for rcu-sync.
#[test]
fn fault_vs_munmap_then_mmap_rcu_sync_vmacache() {
    static COV: Cov1 = Cov1::new();
    fault_model("fault_vs_munmap_then_mmap_rcu_sync_vmacache", Strategy::RcuSync, true, Mutation::None, &COV);
    COV.assert_explored("fault_vs_munmap_then_mmap_rcu_sync_vmacache");
    COV.assert_cache_explored("fault_vs_munmap_then_mmap_rcu_sync_vmacache");
}

// Checks that the vmacache variant catches (a) on its own path: a cached
// fault installing without the "still attached" re-check.
#[test]
fn mutation_vmacache_without_recheck() {
    static COV: Cov1 = Cov1::new();
    expect_caught("vmacache_without_recheck", &["stale PTE", "present PTE", "old VMA's frame"], || {
        fault_model("mutation_vmacache_without_recheck", Strategy::RcuDead, true, Mutation::NoRecheck, &COV)
    });
}

// Checks that it catches (d): a writer that does not mark the VMA
// detached (vma.rs V6) before unmapping it.
#[test]
fn mutation_no_detach_mark() {
    static COV: Cov1 = Cov1::new();
    let expected =
        ["stale PTE", "present PTE", "old VMA's frame", "did not reach the new VMA's frame: Ok(1)"];
    expect_caught("no_detach_mark", &expected, || {
        fault_model("mutation_no_detach_mark", Strategy::RcuDead, true, Mutation::NoDetachMark, &COV)
    });
}

// ---------------------------------------------------------------------------
// Model 2: maps reader against a split or an mremap move.
// ---------------------------------------------------------------------------

/// A tree value: a VMA's range and which state of the address space it is
/// (`id`), or a dead entry.
#[derive(Debug)]
struct Vma2 {
    start: u64,
    end: u64,
    id: u32,
    dead: bool,
}

// The states. A: [0x10, 0x30) (split model) or [0x10, 0x20) (mremap
// model); C: [0x80, 0x90), untouched.
const A: u32 = 1;
const C: u32 = 2;
/// The split's pieces: the bottom half, the top half with the old flags (a
/// state inside `tree_txn` only), the top half with the new flags.
const A_LO: u32 = 3;
const A_HI_OLD: u32 = 4;
const A_HI_NEW: u32 = 5;
/// mremap: B at [0x40, 0x50) moves to [0x20, 0x30) and merges with A into M.
const B: u32 = 6;
const M: u32 = 7;

/// mm.rs `TxnSlot` (A6): a change's range, a seqlock per slot.
struct TxnSlot {
    tag: AtomicU64,
    lo: AtomicU64,
    hi: AtomicU64,
}

/// The parts of `AddressSpace`/`Hw` the reader goes through.
struct Maps {
    tree: MapleTree<std::sync::Arc<Vma2>>,
    /// mm.rs `Hw::write_seq` (A5).
    write_seq: AtomicU64,
    /// mm.rs `Hw::txn_log` (A6), cut down to two slots (the models make
    /// one change each).
    txn_log: [TxnSlot; 2],
    /// The writer's own note of the change it is making (`MmCall::txn`,
    /// `txn_depth`): not shared state, a std atomic.
    txn: StdAtomicUsize,
    /// (e): without the widening before each store, a change's range stays
    /// empty.
    widen: bool,
    /// The mmap lock (the reader's fallback after `READ_RETRIES`).
    mmap_lock: Mutex<()>,
}

impl Maps {
    fn new(vmas: &[(u64, u64, u32)]) -> Self {
        let m = Maps {
            tree: MapleTree::new(std::sync::Arc::new(Domain::new())),
            write_seq: AtomicU64::new(0),
            txn_log: std::array::from_fn(|_| TxnSlot {
                tag: AtomicU64::new(u64::MAX),
                lo: AtomicU64::new(u64::MAX),
                hi: AtomicU64::new(0),
            }),
            txn: StdAtomicUsize::new(usize::MAX),
            widen: true,
            mmap_lock: Mutex::new(()),
        };
        let mut w = m.tree.write();
        for &(start, end, id) in vmas {
            w.insert(start..end, std::sync::Arc::new(Vma2 { start, end, id, dead: false })).unwrap();
        }
        drop(w);
        m
    }
    /// mmap.rs `MmCall::store`: inside a change, `widen_txn` first.
    fn store(
        &self,
        w: &mut rcuvm::maple::Writer<'_, std::sync::Arc<Vma2>>,
        start: u64,
        end: u64,
        id: u32,
        dead: bool,
    ) {
        self.widen_txn(start, end);
        w.store(start..end, std::sync::Arc::new(Vma2 { start, end, id, dead })).unwrap();
    }
    /// mmap.rs `MmCall::erase`: inside a change, `widen_txn` first.
    fn erase(&self, w: &mut rcuvm::maple::Writer<'_, std::sync::Arc<Vma2>>, start: u64, end: u64) {
        self.widen_txn(start, end);
        w.erase(start..end).unwrap();
    }
    /// mmap.rs `MmCall::widen_txn` (A6), unless the model turns it off (e).
    fn widen_txn(&self, start: u64, end: u64) {
        let k = self.txn.load(StdOrdering::Relaxed);
        if k != usize::MAX && self.widen {
            let slot = &self.txn_log[k % 2];
            if start < slot.lo.load(Ordering::Relaxed) {
                slot.lo.store(start, Ordering::Relaxed);
            }
            if end > slot.hi.load(Ordering::Relaxed) {
                slot.hi.store(end, Ordering::Relaxed);
            }
        }
    }
    /// mmap.rs `MmCall::tree_txn`: take the change's slot (A6), then
    /// `write_seq` odd around `f`.
    fn tree_txn(&self, cov: &Cov2, f: impl FnOnce()) {
        let k = self.write_seq.load(Ordering::Relaxed) / 2;
        let slot = &self.txn_log[(k % 2) as usize];
        slot.tag.store(u64::MAX, Ordering::Relaxed);
        loom::sync::atomic::fence(Ordering::Release);
        slot.lo.store(u64::MAX, Ordering::Relaxed);
        slot.hi.store(0, Ordering::Relaxed);
        slot.tag.store(k, Ordering::Release);
        self.txn.store(k as usize, StdOrdering::Relaxed);
        // ORDERING: SeqCst, the write side of the readers' seqcount.
        self.write_seq.fetch_add(1, Ordering::SeqCst);
        cov.open.store(true, StdOrdering::Relaxed);
        f();
        cov.open.store(false, StdOrdering::Relaxed);
        self.txn.store(usize::MAX, StdOrdering::Relaxed);
        self.write_seq.fetch_add(1, Ordering::SeqCst);
    }
}

/// The reader's `ReadSide` on loom (mm.rs `Side`, on std and parking_lot).
struct LoomSide<'a> {
    maps: &'a Maps,
    /// (c): without the seqcount check, `seq` reads a constant.
    seqcount: bool,
    /// (f): without protocol.rs PR3's check, no entry counts as cut.
    extent: bool,
}

impl ReadSide<Vma2> for LoomSide<'_> {
    type Lock<'b>
        = MutexGuard<'b, ()>
    where
        Self: 'b;
    fn seq(&self) -> u64 {
        if self.seqcount { self.maps.write_seq.load(Ordering::SeqCst) } else { 0 }
    }
    fn relax(&self, _n: u32) {
        // loom explores a spin only if it yields.
        thread::yield_now();
    }
    fn lock(&self) -> Self::Lock<'_> {
        self.maps.mmap_lock.lock().unwrap()
    }
    /// mm.rs `Side::txn_range` (A6), on the model's two slots.
    fn txn_range(&self, k: u64) -> Option<(u64, u64)> {
        if k >= 2 {
            return None; // the models make at most two changes
        }
        let slot = &self.maps.txn_log[k as usize];
        let t1 = slot.tag.load(Ordering::Acquire);
        let (lo, hi) = (slot.lo.load(Ordering::Relaxed), slot.hi.load(Ordering::Relaxed));
        loom::sync::atomic::fence(Ordering::Acquire);
        (t1 == k && slot.tag.load(Ordering::Relaxed) == k).then_some((lo, hi))
    }
    fn whole_locked(&self) -> bool {
        false
    }
    fn is_dead(&self, v: &Vma2) -> bool {
        v.dead
    }
    fn cut(&self, range: &std::ops::Range<u64>, v: &Vma2) -> bool {
        self.extent && (v.start, v.end) != (range.start, range.end)
    }
}

/// One line of the reader: the entry's tree range, and the VMA in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Line {
    start: u64,
    end: u64,
    vma: (u64, u64),
    id: u32,
}

struct Cov2 {
    /// The writer's `tree_txn` is open (reset each iteration).
    open: StdAtomicBool,
    /// Iterations in which the reader read an entry while it was open.
    read_inside_txn: StdAtomicUsize,
    /// Iterations in which the reader took back a line (a merge over it).
    took_back: StdAtomicUsize,
    /// Whether this iteration's reader was inside a txn / took back.
    this_inside: StdAtomicBool,
}

impl Cov2 {
    const fn new() -> Self {
        Cov2 {
            open: StdAtomicBool::new(false),
            read_inside_txn: StdAtomicUsize::new(0),
            took_back: StdAtomicUsize::new(0),
            this_inside: StdAtomicBool::new(false),
        }
    }
    fn start_iteration(&self) {
        self.open.store(false, StdOrdering::Relaxed);
        self.this_inside.store(false, StdOrdering::Relaxed);
    }
}

/// The reader: `protocol::read_stable` itself (mm.rs `read_stable`), then
/// the checks common to both models (P4).
fn read_maps(maps: &Maps, seqcount: bool, cov: &Cov2) -> Vec<Line> {
    read_maps_with(maps, seqcount, true, cov)
}

/// [`read_maps`], with PR3's check of cut entries on or off (f).
fn read_maps_with(maps: &Maps, seqcount: bool, extent: bool, cov: &Cov2) -> Vec<Line> {
    let side = LoomSide { maps, seqcount, extent };
    // The last entry collected: one that begins below its end, at another
    // start, makes the reader take lines back (a redone read begins at the
    // same start).
    let last = Cell::new(None::<(u64, u64)>);
    let took_back = Cell::new(false);
    let lines =
        protocol::read_stable(&maps.tree, &side, 0, usize::MAX, |e: &Entry<'_, std::sync::Arc<Vma2>>| {
            if last.get().is_some_and(|(s, end)| e.range.start < end && e.range.start != s) {
                took_back.set(true);
            }
            last.set(Some((e.range.start, e.range.end)));
            if cov.open.load(StdOrdering::Relaxed) && !cov.this_inside.swap(true, StdOrdering::Relaxed) {
                cov.read_inside_txn.fetch_add(1, StdOrdering::Relaxed);
            }
            Some(Line {
                start: e.range.start,
                end: e.range.end,
                vma: (e.value.start, e.value.end),
                id: e.value.id,
            })
        });
    if took_back.get() {
        cov.took_back.fetch_add(1, StdOrdering::Relaxed);
    }
    for l in &lines {
        assert_eq!(
            (l.start, l.end),
            l.vma,
            "a line shows a half-updated VMA (its tree range is not its range): {lines:?}"
        );
    }
    for w in lines.windows(2) {
        assert!(w[0].start < w[1].start, "the lines went backwards: {lines:?}");
        assert!(w[0].end <= w[1].start, "the lines overlap: {lines:?}");
    }
    assert!(lines.iter().any(|l| l.id == C), "a VMA that existed throughout is missing: {lines:?}");
    lines
}

/// The ids of the lines that start in `[lo, hi)`.
fn ids_in(lines: &[Line], lo: u64, hi: u64) -> Vec<u32> {
    lines.iter().filter(|l| lo <= l.start && l.start < hi).map(|l| l.id).collect()
}

fn split_model(name: &'static str, seqcount: bool, widen: bool, cov: &'static Cov2) {
    // Bound 1 finds (c) and (e) already.
    let bound = if seqcount && widen { Bound::Default(3) } else { Bound::Fixed(1) };
    check(name, bound, move || {
        cov.start_iteration();
        let maps = Arc::new(Maps { widen, ..Maps::new(&[(0x10, 0x30, A), (0x80, 0x90, C)]) });
        let reader = {
            let maps = maps.clone();
            thread::spawn(move || {
                let lines = read_maps(&maps, seqcount, cov);
                // P4: the range of A is mapped throughout, in one state.
                let a = ids_in(&lines, 0x10, 0x30);
                assert!(a == [A] || a == [A_LO, A_HI_NEW], "a split shown half done: {lines:?}");
            })
        };
        {
            // mprotect.rs `MmCall::set_flags` of [0x20, 0x30): mmap write lock,
            // then `tree_txn(split_and_set)`.
            let _mmap_lock = maps.mmap_lock.lock().unwrap();
            let mut w = maps.tree.write();
            maps.tree_txn(cov, || {
                // `split_and_set`: the pieces of `v`, then `insert_merged(piece)`.
                maps.store(&mut w, 0x10, 0x20, A_LO, false);
                maps.store(&mut w, 0x20, 0x30, A_HI_OLD, false);
                maps.store(&mut w, 0x20, 0x30, A_HI_NEW, false);
            });
        }
        reader.join().unwrap();
    });
}

// Checks P4 for a maps reader against a split (three tree stores in one tree_txn).
#[test]
fn maps_vs_split() {
    static COV: Cov2 = Cov2::new();
    split_model("maps_vs_split", true, true, &COV);
    let n = COV.read_inside_txn.load(StdOrdering::Relaxed);
    eprintln!(
        "loom model maps_vs_split: {n} iterations had the reader read an entry in the middle of the split"
    );
    assert!(n > 0, "maps_vs_split: no schedule had the reader read inside the split's tree_txn");
}

// Checks P4 for a maps reader against an mremap move that merges and buries the source.
#[test]
fn maps_vs_mremap() {
    static COV: Cov2 = Cov2::new();
    check("maps_vs_mremap", Bound::Default(3), || {
        COV.start_iteration();
        let maps = Arc::new(Maps::new(&[(0x10, 0x20, A), (0x40, 0x50, B), (0x80, 0x90, C)]));
        let reader = {
            let maps = maps.clone();
            thread::spawn(move || {
                let lines = read_maps(&maps, true, &COV);
                // A's range stays mapped throughout: as A, or merged into M.
                let a = ids_in(&lines, 0x10, 0x20);
                assert!(a == [A] || a == [M], "A's range shown as {a:?}: {lines:?}");
                for l in &lines {
                    assert!([A, B, M, C].contains(&l.id), "a line of no VMA state: {lines:?}");
                }
            })
        };
        {
            // mremap.rs `move_vma` of B to 0x20 under `rcu-dead`: mmap write lock;
            // `reap_dead` at the destination (nothing); the pages move
            // (not modelled); `store_merged(moved)`: B at 0x20 merges with A;
            // then `munmap_range` of the source: `tree_txn { bury }`.
            let _mmap_lock = maps.mmap_lock.lock().unwrap();
            let mut w = maps.tree.write();
            maps.store(&mut w, 0x10, 0x30, M, false);
            maps.tree_txn(&COV, || maps.store(&mut w, 0x40, 0x50, B, true));
        }
        reader.join().unwrap();
    });
    let n = COV.took_back.load(StdOrdering::Relaxed);
    eprintln!("loom model maps_vs_mremap: {n} iterations had the reader take back a line");
    assert!(n > 0, "maps_vs_mremap: no schedule had the reader take back a line the merge covered");
}

const A_SMALL: u32 = 8;
const A_BIG: u32 = 9;
const A_SMALL2: u32 = 10;

/// A maps reader against an in-place expand (one store, no change of
/// several stores: mm.rs A5b) and then a shrink of the same VMA
/// (`tree_txn { store the remnant; erase the tail }`), with PR3's check on
/// or off.
fn shrink_model(name: &'static str, extent: bool, cov: &'static Cov2) {
    // Bound 2 finds (f); 3 takes about 3 minutes here (2.9 M schedules, passed).
    let bound = Bound::Fixed(2);
    check(name, bound, move || {
        cov.start_iteration();
        let maps = Arc::new(Maps::new(&[(0x10, 0x20, A_SMALL), (0x80, 0x90, C)]));
        let reader = {
            let maps = maps.clone();
            thread::spawn(move || {
                let lines = read_maps_with(&maps, true, extent, cov);
                // P4: A's range shows one of its states, whole.
                let a: Vec<_> =
                    lines.iter().filter(|l| 0x10 <= l.start && l.start < 0x30).map(|l| l.id).collect();
                assert!(a == [A_SMALL] || a == [A_BIG] || a == [A_SMALL2], "A shown half shrunk: {lines:?}");
            })
        };
        {
            // mremap.rs: grow in place (one store), then shrink (munmap of
            // the tail: a remnant, so a change of two stores).
            let _mmap_lock = maps.mmap_lock.lock().unwrap();
            let mut w = maps.tree.write();
            maps.store(&mut w, 0x10, 0x30, A_BIG, false);
            maps.tree_txn(cov, || {
                maps.store(&mut w, 0x10, 0x20, A_SMALL2, false);
                maps.erase(&mut w, 0x20, 0x30);
            });
        }
        reader.join().unwrap();
    });
}

// Checks P4 for a maps reader against a shrink after an in-place expand:
// the shrink's first store cuts the grown VMA to its tail (protocol.rs PR3).
#[test]
fn maps_vs_shrink_after_expand() {
    static COV: Cov2 = Cov2::new();
    shrink_model("maps_vs_shrink_after_expand", true, &COV);
}

// Checks that the shrink model catches (f): a reader that takes a cut
// entry for a VMA (protocol.rs PR3 off).
#[test]
fn mutation_cut_entries_not_torn() {
    static COV: Cov2 = Cov2::new();
    expect_caught("cut_entries_not_torn", &["half-updated", "half shrunk", "overlap", "backwards"], || {
        shrink_model("mutation_cut_entries_not_torn", false, &COV)
    });
}

// Checks that model 2 catches (c): the maps reader without the seqcount check.
#[test]
fn mutation_maps_without_seqcount() {
    static COV: Cov2 = Cov2::new();
    expect_caught(
        "maps_without_seqcount",
        &["half-updated", "half done", "backwards", "overlap", "missing"],
        || split_model("mutation_maps_without_seqcount", false, true, &COV),
    );
}

// Checks that model 2 catches (e): a change whose range is not widened
// before its stores (mm.rs A6), so that the reader's range check lets a
// half-done split through.
#[test]
fn mutation_txn_range_not_widened() {
    static COV: Cov2 = Cov2::new();
    expect_caught(
        "txn_range_not_widened",
        &["half-updated", "half done", "backwards", "overlap", "missing"],
        || split_model("mutation_txn_range_not_widened", true, false, &COV),
    );
}

// ---------------------------------------------------------------------------
// Model 4: the reaper of dead entries (mm.rs A10) against a writer.
// ---------------------------------------------------------------------------
//
// Mirrored, all of it, on loom mutexes: the mm state behind the mmap lock
// (`MmState`: the dead entries' queue, `calls`, `reaper_saw`,
// `reaper_queued`), an mm call's reaping and its end (`Mm::locked_call`,
// `Mm::call_in`, unmap.rs `reap_dead` without `force`), the reaper
// (`Mm::reap`) and rcuvm-rcu's callback queue, FIFO, run by a reclaimer
// thread. Grace periods are abstract: a dead entry buried before the k-th
// reaper was queued has expired once that reaper runs (a grace period
// that began after it was queued has passed), and calls reap only
// entries known expired that way. Invariants:
// - R1. At most one reaper is queued or running: none is queued when one
//   is queued (the queue is empty at every push).
// - R2. Once the writer has stopped and the queue has run dry, no dead
//   entry is left: no reaper was lost while the writer held the lock.

/// Reaper model: expired entries a call erases (unmap.rs U5's `REAP_BATCH`).
const REAP_BATCH_MODEL: usize = 1;

struct ReapMm {
    /// The mmap lock and what it guards.
    st: Mutex<ReapSt>,
    /// The domain's callbacks: the queue number of each queued reaper.
    cbq: Mutex<(std::collections::VecDeque<u64>, u64)>,
    /// The highest queue number whose grace period has passed.
    gp_done: AtomicU64,
    /// Mutation: a reaper that finds the lock taken does not come back.
    lose_on_contention: bool,
    /// Mutation: a call queues a reaper whether or not one is queued.
    ignore_queued: bool,
}

struct ReapSt {
    /// Dead entries, oldest first: the queue count when each was buried.
    dead: std::collections::VecDeque<u64>,
    calls: u64,
    saw: u64,
    queued: bool,
}

impl ReapMm {
    /// `Domain::call(reaper)`: R1 checked at the push.
    fn queue_reaper(&self) {
        let mut q = self.cbq.lock().unwrap();
        assert!(q.0.is_empty(), "R1: a second reaper queued");
        q.1 += 1;
        let k = q.1;
        q.0.push_back(k);
    }
    /// unmap.rs `reap_dead(false, ..)`: up to `budget` expired entries.
    fn reap_expired(&self, st: &mut ReapSt, budget: usize) {
        let done = self.gp_done.load(Ordering::SeqCst);
        let mut n = 0;
        while n < budget && st.dead.front().is_some_and(|&seq| seq < done) {
            st.dead.pop_front();
            n += 1;
        }
    }
    /// `Mm::locked_call` with `bury`: an munmap that leaves a dead entry.
    fn call(&self, bury: bool) {
        let mut st = self.st.lock().unwrap();
        st.calls += 1;
        self.reap_expired(&mut st, REAP_BATCH_MODEL);
        if bury {
            let seq = self.cbq.lock().unwrap().1;
            st.dead.push_back(seq);
        }
        if !st.dead.is_empty() && (!st.queued || self.ignore_queued) {
            st.queued = true;
            self.queue_reaper();
        }
    }
    /// `Mm::reap`, run as the `k`-th queued callback.
    fn reap(&self, k: u64) {
        // The grace period before this callback has passed.
        self.gp_done.fetch_max(k, Ordering::SeqCst);
        loop {
            let Ok(mut st) = self.st.try_lock() else {
                if !self.lose_on_contention {
                    self.queue_reaper();
                }
                return;
            };
            let idle = st.calls == st.saw;
            st.saw = st.calls;
            self.reap_expired(&mut st, if idle { usize::MAX } else { REAP_BATCH_MODEL });
            if st.dead.is_empty() {
                st.queued = false;
                return;
            }
            let done = self.gp_done.load(Ordering::SeqCst);
            let more = idle && st.dead.front().is_some_and(|&seq| seq < done);
            drop(st);
            if !more {
                self.queue_reaper();
                return;
            }
        }
    }
    /// The reclaimer (or a caller's `run_ready`): runs the next queued
    /// callback, if any.
    fn run_one(&self) -> bool {
        let next = self.cbq.lock().unwrap().0.pop_front();
        match next {
            Some(k) => {
                self.reap(k);
                true
            }
            None => false,
        }
    }
}

fn reaper_model(name: &'static str, lose_on_contention: bool, ignore_queued: bool, bound: Bound) {
    check(name, bound, move || {
        let mm = Arc::new(ReapMm {
            st: Mutex::new(ReapSt { dead: Default::default(), calls: 0, saw: 0, queued: false }),
            cbq: Mutex::new((Default::default(), 0)),
            gp_done: AtomicU64::new(0),
            lose_on_contention,
            ignore_queued,
        });
        let w = {
            let mm = mm.clone();
            thread::spawn(move || {
                // munmap, munmap, then a call that buries nothing.
                mm.call(true);
                mm.call(true);
                mm.call(false);
            })
        };
        let r = {
            let mm = mm.clone();
            thread::spawn(move || {
                for _ in 0..2 {
                    if !mm.run_one() {
                        thread::yield_now();
                    }
                }
            })
        };
        w.join().unwrap();
        r.join().unwrap();
        // Idle: the callbacks run until none is queued.
        let mut runs = 0;
        while mm.run_one() {
            runs += 1;
            assert!(runs < 10, "the reaper never stops queueing itself");
        }
        let st = mm.st.lock().unwrap();
        assert!(st.dead.is_empty(), "R2: {} dead entries left in an idle address space", st.dead.len());
        assert!(!st.queued, "R2: marked queued with no reaper queued");
    });
}

#[test]
fn reaper_vs_writer() {
    reaper_model("reaper_vs_writer", false, false, Bound::Default(3));
}

// Checks that model 4 catches (g): a reaper that finds the mmap lock taken
// and does not queue itself again.
#[test]
fn mutation_reaper_lost_on_contention() {
    expect_caught("reaper_lost_on_contention", &["R2"], || {
        reaper_model("mutation_reaper_lost_on_contention", true, false, Bound::Fixed(2))
    });
}

// Checks that model 4 catches (h): a call that queues a reaper while one is
// queued already (the flag `reaper_queued` ignored).
#[test]
fn mutation_second_reaper() {
    expect_caught("second_reaper", &["R1"], || {
        reaper_model("mutation_second_reaper", false, true, Bound::Fixed(2))
    });
}

// ---------------------------------------------------------------------
// Model 5: a write fault's reuse of an anonymous page against `fork`
// (fault.rs FL11, fork.rs FK4, frame.rs F7). Mirrored on loom atomics and
// a loom mutex: one PTE of the parent, read-only over frame X (as after an
// mprotect), X's mapping count 1. The CPU thread write-faults it
// (`do_fault`: a page it alone maps is reused, made writable in place;
// a shared one is copied to Y, and X loses the parent's count), with its
// re-checks under the PTL: the entry unchanged (`pte_same`), the VMA
// still attached (FL7, V6), a reused page still exclusive (FL11). The
// fork thread marks the VMA detached (`dup_mmap`'s `vma_write_lock`,
// FK4), then under the PTL raises X's count and gives the child a
// read-only copy of the entry (`PageTable::copy_range`). Invariants: the
// parent never maps a frame writable that the child maps too, and every
// frame's count is the number of tables that map it. Either re-check
// alone keeps them (both are in vm: FK4 for every strategy with a
// re-check, FL11 as the PTL's own rule); the mutation without both is
// caught. Not modelled: TLBs (model 1 has them) and the shootdown.

/// A model PTE's write bit; the frame is `pte >> 1`.
const PTE_W: u64 = 1;
/// Frame X (the parent's page) and Y (its copy), as model PTEs.
const PTE_X: u64 = 1 << 1;
const PTE_Y: u64 = 2 << 1;

struct ForkMm {
    pte: AtomicU64,
    ptl: Mutex<()>,
    /// frame.rs F7 per frame (index = the PTE's frame; 0 unused).
    count: [AtomicU64; 3],
    /// vma.rs V6 on the parent's VMA object.
    detached: AtomicBool,
    /// The child's copy of the entry (0: none yet).
    child: AtomicU64,
}

fn frame_of(pte: u64) -> usize {
    (pte >> 1) as usize
}

/// fault.rs `do_fault`, a write to the read-only entry (mirrored).
fn cow_fault(mm: &ForkMm, recheck_detached: bool, recheck_count: bool) {
    // FL7: a fault that finds its VMA detached waits on the mmap lock,
    // which the fork holds: it takes no step here.
    if mm.detached.load(Ordering::Acquire) {
        return;
    }
    let seen = mm.pte.load(Ordering::Acquire);
    if seen & PTE_W != 0 {
        return;
    }
    let x = frame_of(seen);
    let reuse = mm.count[x].load(Ordering::Acquire) == 1;
    let new = if reuse {
        seen | PTE_W
    } else {
        mm.count[frame_of(PTE_Y)].store(1, Ordering::Relaxed);
        PTE_Y | PTE_W
    };
    let ptl = mm.ptl.lock().unwrap();
    let same = mm.pte.load(Ordering::Relaxed) == seen
        && !(recheck_detached && mm.detached.load(Ordering::Acquire))
        && !(reuse && recheck_count && mm.count[x].load(Ordering::Acquire) != 1);
    if same {
        mm.pte.store(new, Ordering::Relaxed);
    }
    drop(ptl);
    if same && !reuse {
        // The copy replaced X here: this table's count goes (F7).
        mm.count[x].fetch_sub(1, Ordering::AcqRel);
    } else if !same && !reuse {
        mm.count[frame_of(PTE_Y)].store(0, Ordering::Relaxed); // the unused copy
    }
}

/// fork.rs `dup_mmap` for the VMA (mirrored).
fn fork_copy(mm: &ForkMm) {
    mm.detached.store(true, Ordering::Release);
    let _ptl = mm.ptl.lock().unwrap();
    let e = mm.pte.load(Ordering::Relaxed);
    mm.count[frame_of(e)].fetch_add(1, Ordering::Relaxed);
    mm.pte.store(e & !PTE_W, Ordering::Relaxed);
    mm.child.store(e & !PTE_W, Ordering::Relaxed);
}

fn fork_model(name: &'static str, recheck_detached: bool, recheck_count: bool, bound: Bound) {
    check(name, bound, move || {
        let mm = Arc::new(ForkMm {
            pte: AtomicU64::new(PTE_X),
            ptl: Mutex::new(()),
            count: [AtomicU64::new(0), AtomicU64::new(1), AtomicU64::new(0)],
            detached: AtomicBool::new(false),
            child: AtomicU64::new(0),
        });
        let cpu = {
            let mm = mm.clone();
            thread::spawn(move || cow_fault(&mm, recheck_detached, recheck_count))
        };
        fork_copy(&mm);
        cpu.join().unwrap();
        let (p, c) = (mm.pte.load(Ordering::Acquire), mm.child.load(Ordering::Acquire));
        assert!(
            !(p & PTE_W != 0 && frame_of(p) == frame_of(c)),
            "FL11: the parent maps frame {} writable, which the child maps too",
            frame_of(p)
        );
        for f in 1..3 {
            let maps = [p, c].iter().filter(|&&e| e != 0 && frame_of(e) == f).count() as u64;
            let count = mm.count[f].load(Ordering::Acquire);
            assert_eq!(count, maps, "F7: frame {f} counts {count} tables, {maps} map it");
        }
    });
}

#[test]
fn fork_vs_cow_fault() {
    fork_model("fork_vs_cow_fault", true, true, Bound::Default(3));
    fork_model("fork_vs_cow_fault_detach_only", true, false, Bound::Default(3));
    fork_model("fork_vs_cow_fault_count_only", false, true, Bound::Default(3));
}

// Checks that model 5 catches a fault with neither re-check: it makes the
// page the fork just shared writable in the parent.
#[test]
fn mutation_cow_fault_without_rechecks() {
    expect_caught("cow_fault_without_rechecks", &["FL11"], || {
        fork_model("mutation_cow_fault_without_rechecks", false, false, Bound::Fixed(2))
    });
}
