//! The address space: VMAs in an RCU-safe maple tree, behind the mmap lock.
//!
//! # Owns
//! [`AddressSpace`]: its RCU domain, its VMA tree and its mmap lock.
//!
//! # Invariants
//! - A1. The tree holds non-overlapping VMAs keyed by `[start, end)`; each
//!   value is an immutable `Vma` (vma.rs V1). Writers hold the mmap lock
//!   (then the tree's own write lock); readers hold only an RCU guard.
//! - A2. Every reader sees each VMA whole: a line of `maps()` is a real state
//!   of one VMA at some moment of the read, lines never overlap and never go
//!   backwards (each entry is found from the root at the previous line's
//!   end, and a newer entry reaching below it takes back the lines it
//!   covers, A5), and a VMA that exists for the whole read is shown.
//! - A3. The hardware half ([`Hw`]): page tables, physical memory, TLB
//!   shootdown and the strategy. Page-table changes follow the tree's:
//!   a writer first makes the tree stop mapping a range (erase, dead entry
//!   or replacement), then zaps or rewrites its PTEs, flushes TLBs, and
//!   frees what they reached (tlb.rs T2–T3, strategy.rs S1–S5).
//! - A4. `mm_lock_seq` moves on when a writer releases the mmap lock
//!   (`vma_end_write_all`): every VMA it write-locked is unlocked at once.
//! - A5. Lockless readers (`maps`, `smaps`, `query`, `vmas`) see each
//!   stretch of the address space in one state: `write_seq` is odd while
//!   a writer makes a change of several tree stores (`MmCall::tree_txn`:
//!   a split and its pieces, munmap's remnants and removal, a `MAP_FIXED`
//!   replacement; not the zaps, shootdowns or grace periods after them,
//!   except in a `MAP_FIXED` replacement of a mapping, whose unmapping,
//!   with its zap, shootdown and any grace period it waits for, runs
//!   inside the change: readers wait, then take the mmap lock),
//!   and a reader reads each entry between two loads of it, again if such
//!   a change ran meanwhile; an entry that begins below the previous line's end is a
//!   newer merge, and the lines it covers are taken back. So no line mixes
//!   two states of a VMA and the lines at a boundary show the VMAs before
//!   or after a call, never a half-done split, merge or `MAP_FIXED`
//!   replacement (what the kernel selftest `proc-maps-race` checks). A
//!   reader torn [`READ_RETRIES`](crate::protocol::READ_RETRIES) times on
//!   one entry takes the mmap lock for read to read it, as Linux 6.17's
//!   lock-free reading falls back to the lock, so writers cannot starve it.
//!   The reader is protocol.rs `read_stable`, which the loom model
//!   (tests/loom_vm.rs) runs too.
//! - A5b. A call whose change to what readers show is a single tree store
//!   does not make `write_seq` odd: a mapping placed over no VMA (the dead
//!   entries it reaps first are not shown), an unmapping with no remnant
//!   of one VMA (one dead entry) or, without dead entries, of any number
//!   (one erase). Readers see a single store whole (maple walk.rs W1), and
//!   a merge it makes is taken back as A2 says. Why: in `proc-vs-map`
//!   under `rcu-dead` the writer's mmap and munmap, back to back, tore a
//!   maps reader's read of the stretch below the first VMA (all dead
//!   entries) about 14,000 times in a run, and the reader took the mmap
//!   lock about 1,450 times, at the start of almost every scan: the writer
//!   then waited for it.
//! - A6. Such a change keeps, in the slot of a small log (`txn_log`), the
//!   range it has stored into so far, widened before each store; a read
//!   is redone only if a change that ran during it stored into what the
//!   read depends on (from the address it started at to the end of the
//!   entry it found), or if the change's slot was reused meanwhile. A
//!   reader observing a store of the change also observes the widening
//!   before it (the tree's stores are Release, its loads Acquire), so a
//!   change elsewhere in the address space (a mapper at one end, a maps
//!   reader scanning the rest) no longer tears every read.
//! - A7. A writer that finds the mmap lock taken spins, polling it, for up
//!   to [`MMAP_LOCK_SPIN`] before it sleeps (Linux's rwsem optimistic
//!   spinning, `rwsem_optimistic_spin`). Why: mm calls hold the lock for a
//!   few microseconds, and a thread that sleeps on it is woken only after
//!   the holder, still running, has taken it again and again; parking_lot
//!   then hands it over only after its 0.5 ms fairness timeout. Measured in
//!   `fault-churn` (rcu-dead, a 16 KiB churner beside the faulter): the
//!   faulter's `mmap` waited 403 µs on average, 7% of its time. Waiting
//!   writers are counted, so a long operation under the lock can stop for
//!   them (the reaper, A10; Linux's `mmap_lock_is_contended`). Spinning
//!   alone did not fix it (the churner sometimes held the lock for hundreds
//!   of µs, unmap.rs U5); with U5 too, the faulter's time asleep on the lock
//!   fell from 183 to 62 ms in 3 s, and fault-churn's kept fraction rose
//!   from 70–83% (mean 74%) to 84–94% (mean 90%), four runs each.
//! - A8. After each mm call, with the mmap lock released, the calling thread
//!   runs up to [`RUN_READY`] callbacks of each of the address space's two
//!   domains whose grace period has passed (rcuvm-rcu's
//!   `Domain::run_ready`, callback.rs C6): the frees of the VMAs, dead
//!   entries, tree nodes and tables its calls retired, on the thread that
//!   allocated them, as Linux runs RCU callbacks on the CPU that queued
//!   them. The reclaimer threads run what is left after 1 ms. Why: run on
//!   the reclaimer, these frees took a CPU from the workload's threads for
//!   up to a scheduler tick at a time (4 ms), and with glibc's allocator the
//!   writer and the reclaimer fought over the arena lock (in `proc-vs-map`
//!   the writer slept 8,337 times in 4 s, in `malloc`). Measured: see
//!   docs/benchmarks.md (proc-vs-map). Tried and not kept: a time bound
//!   (no more callbacks once 20 µs have passed, as Linux's
//!   `rcu_do_batch()` stops at `rcu_resched_ns`): `proc-vs-map`'s writer
//!   had fewer calls over 250 µs, but `fault-churn`'s faulters, which make
//!   two mm calls per 64 MiB cycle, left their heavy callbacks to the
//!   reclaimer, which took a CPU from them: 2.7–2.8 M faults/s alone
//!   against 3.45–3.54 M.
//! - A9. An `rcu-dead` mmap+munmap pair makes no small allocation in steady
//!   state (`tests/mm_allocs.rs`): the dead entry is a flag in its VMA
//!   object and a range and grace period state in the mm state's queue
//!   (strategy.rs `DeadEntry`), no callback is queued per entry (one
//!   reaper per address space, A10, whose closure rcuvm-rcu keeps without
//!   boxing: deferred.rs D3), lookups return up to
//!   two entries inline (protocol.rs `Entries`), reaping reuses its vector
//!   (unmap.rs U7), and `run_ready` allocates nothing (callback.rs C11).
//!   What is left per pair is, rarely, a tree node (maple alloc.rs A3)
//!   and the VMA objects the thread's cache of them could not give
//!   (vma_cache.rs: 0.30–0.57 of two). Why: under glibc, small chunks freed in
//!   bulk (callbacks run a few at a time) collect in the arena's fast bins
//!   until an allocation that needs a large or fresh chunk merges them
//!   all (`malloc_consolidate`). Before: 3.8 small allocations and 2.06
//!   node allocations per pair, and the `proc-vs-map` writer's slowest
//!   calls were those merges (uprobes: 64,007 in 8 s, 174 ms in all; after
//!   the first half of this work, fewer but longer, up to 0.9 ms). After:
//!   1,640 merges, 3.6 ms in all, the longest 0.19 ms (`vma-lock`:
//!   95,724 and 173 ms before, 1,876 and 4.2 ms after).
//! - A10. The reaper: while an `rcu-dead` address space has dead entries,
//!   exactly one RCU callback that erases them is queued or running
//!   (`MmState::reaper_queued`, set and cleared under the mmap lock). The
//!   call that leaves the first one queues it; each run tries the mmap
//!   lock and, if it is free, makes an empty mm call (which erases up to
//!   [`REAP_BATCH`](crate::strategy::REAP_BATCH) expired entries, unmap.rs
//!   U5). If no mm call was made since its previous run (the address
//!   space is idle), it goes on in batches of [`REAPER_IDLE_BATCH`],
//!   releasing the lock between them, until none is expired or a writer
//!   waits (A7). It queues itself again while any entry is left, and that
//!   keeps grace periods running until every entry's state is passed:
//!   no callback per entry is needed. If the lock is taken, it comes back
//!   after another grace period (a callback must not sleep on the mmap
//!   lock: it may run on a thread that holds it). It holds a count of
//!   the address space's state, so the teardown erases every dead entry
//!   and runs barriers until that count is back (`Drop`). Why: with every
//!   call's reaping bounded (unmap.rs U5), nothing else would erase the
//!   expired entries of an address space that went idle, and with expiry
//!   by grace-period state (strategy.rs `DeadEntry`) a munmap queues no
//!   callback of its own. Measured in `proc-vs-map` (rcu-dead, alternated
//!   with the build before): docs/benchmarks.md.
//! - A11. No mm call is made from inside a `Cpu::access` of the same
//!   address space: it panics before taking anything. Why: its shootdown
//!   would wait for that access, or (found by a review) it would wait for
//!   the mmap lock held by another thread's call that waits for the
//!   access: a silent deadlock in every strategy.
//! - A13. The last `AddressSpace` handle may be dropped anywhere, also in
//!   a callback or a read-side section of its own domains: the teardown
//!   (which waits for their grace periods and callbacks) then runs on a
//!   thread of its own instead of waiting for itself. It used to panic in
//!   the barrier and leave the teardown undone.
//! - A14. `fork` makes a new address space on the same `PhysMem`, with the
//!   parent's strategy, tunables, RCU configuration and layout (`brk`,
//!   stack), and copies the VMAs and pages into it under the parent's mmap
//!   write lock (fork.rs FK1–FK4). Nothing else is inherited: no notifier,
//!   recorder or injection, no `mlockall(MCL_FUTURE)`.
//!
//! # Concurrency
//! `maps`, `smaps`, `query`, `vmas`: RCU read side, lock-free (under the
//! `mmap-lock` strategy, the mmap read lock). Building (`from_maps`) and
//! every mm call: mmap write lock; then a call's population (mlock.rs L5)
//! and `MADV_POPULATE_*` alone: the mmap read lock (two may run at once,
//! beside faults). Faults: as the strategy says.
//!
//! # Linux
//! `struct mm_struct` (`mm_mt`, `mmap_lock`, `map_count`, `mm_lock_seq`,
//! `pgd`); lock-free `/proc/pid/maps` reading as in Linux 6.17.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

use crossbeam_utils::CachePadded;
use rcuvm_maple::{Entry, MapleTree};
use rcuvm_rcu::Domain;

use crate::cpu::Cpu;
use crate::frame::{Owner, PhysMem};
use crate::inject::Injection;
use crate::maps::{self, MapsError};
use crate::mmap::{MapFile, MmCall, MmConfig};
use crate::pgtable::PageTable;
use crate::record::{Outcome, Recorder};
use crate::strace::MmOp as Op;
use crate::strategy::Strategy;
use crate::tlb::Shootdown;
use crate::uapi::{Errno, MapFlags, Prot};
use crate::vma::{Backing, PAGE_SHIFT, VmFlags, Vma};

/// How long a writer spins for a taken mmap lock before it sleeps (A7):
/// longer than any mm call on a small range holds it, much shorter than
/// parking_lot's fairness timeout.
pub const MMAP_LOCK_SPIN: std::time::Duration = std::time::Duration::from_micros(50);

/// Callbacks of each domain an mm call runs after it (A8). Linux's
/// `blimit` is 10; each call queues about one (the tree's garbage batch
/// of what it replaced, its share of table frees), so 4 keeps up with the
/// calls, and a late grace period's batch is run a few callbacks a call
/// rather than 32 in one pair. It bounds the count, not the work: one of
/// the tree's batches frees up to 64 values and their nodes. Measured
/// (docs/benchmarks.md, 2026-12-07): with 16, proc-vs-map's writer had
/// 32 calls over 250 µs on its CPU with readers in twelve runs, against
/// 16 with 4 (Mann-Whitney p ≈ 0.02); fault-churn kept as much with
/// either (98.9–101.9% against 99.8–102.3%, six runs each).
pub const RUN_READY: usize = 4;

/// Most expired dead entries the reaper erases per hold of the mmap lock
/// when the address space is idle (A10): about 40 µs, which a writer that
/// comes meanwhile waits for at most (it spins that long, A7).
pub const REAPER_IDLE_BATCH: usize = 256;

/// The mmap lock, and how many writers are waiting for it (A7).
struct MmapLock {
    rw: parking_lot::RwLock<MmState>,
    /// Writers between a failed first try and getting the lock: what
    /// `MmCall::lock_contended` reads (Linux's `mmap_lock_is_contended`).
    waiters: AtomicU32,
}

impl std::ops::Deref for MmapLock {
    type Target = parking_lot::RwLock<MmState>;
    fn deref(&self) -> &Self::Target {
        &self.rw
    }
}

/// A process's address space.
///
/// Share it between threads in an `Arc`; each simulated thread accesses
/// memory through its own [`Cpu`] ([`AddressSpace::cpu`]).
pub struct AddressSpace {
    /// Everything but the teardown: shared with the reaper of dead
    /// entries (A10), whose queued callback holds a count of it.
    mm: Arc<Mm>,
}

/// An address space's state (`struct mm_struct`), behind the handle that
/// tears it down when dropped.
pub(crate) struct Mm {
    domain: Arc<Domain>,
    vmas: CachePadded<MapleTree<Arc<Vma>>>,
    cfg: MmConfig,
    layout: Layout,
    /// The mmap lock: writers always; faults and readers only under
    /// [`Strategy::MmapLock`] (and `vma-lock`'s fallback).
    mmap_lock: CachePadded<MmapLock>,
    hw: Hw,
}

/// State behind the mmap lock.
#[derive(Debug)]
pub(crate) struct MmState {
    /// `mm->def_flags` (mlock.rs L4).
    def_flags: VmFlags,
    /// Dead entries in the tree (`rcu-dead`), oldest first: the order in
    /// which grace periods pass their states.
    pub(crate) dead: std::collections::VecDeque<crate::strategy::DeadEntry>,
    /// The runs of dead entries a call erases, kept between calls so that
    /// reaping does not allocate (unmap.rs U7).
    reap_runs: Vec<(u64, u64)>,
    /// mm calls made so far, and as many as the reaper saw when it last
    /// ran (A10: equal means the address space was idle meanwhile).
    calls: u64,
    reaper_saw: u64,
    /// The reaper is queued or running (A10): exactly one is, while set.
    reaper_queued: bool,
    /// The population the call holding the lock asks for (mlock.rs L5),
    /// taken before the lock is released.
    populate: Option<crate::mlock::Populate>,
}

/// The hardware half of an address space (A3).
pub(crate) struct Hw {
    pub(crate) strategy: Strategy,
    pub(crate) pt: PageTable,
    pub(crate) phys: Arc<PhysMem>,
    pub(crate) tlb: Shootdown,
    /// `mm_lock_seq` (A4); starts at 1 so that new VMAs (0) are unlocked.
    pub(crate) mm_lock_seq: CachePadded<AtomicU64>,
    /// Identity of this address space in frame owner tags.
    pub(crate) id: u32,
    /// Dead entries in the tree (not counted in `map_count`).
    pub(crate) dead: CachePadded<AtomicUsize>,
    /// Nanoseconds munmap spent waiting for grace periods (`rcu-sync`).
    pub(crate) sync_ns: CachePadded<AtomicU64>,
    /// Grace periods munmap waited for.
    pub(crate) syncs: AtomicU64,
    /// Grace periods of dead entries that calls completed without
    /// blocking (unmap.rs U8).
    pub(crate) dead_helps: AtomicU64,
    /// Accesses whose frame was freed while they used it (cpu.rs C5).
    pub(crate) use_after_free: AtomicU64,
    /// Odd while a writer makes a change of several tree stores (A5).
    pub(crate) write_seq: CachePadded<AtomicU64>,
    /// The ranges of the latest changes of several stores (A6).
    pub(crate) txn_log: CachePadded<[TxnSlot; crate::protocol::TXN_LOG as usize]>,
    /// Grace periods waited for by calls that reused a dead range
    /// (`rcu-dead`: `MAP_FIXED`, a move or a growth over a dead entry).
    pub(crate) reuse_syncs: AtomicU64,
    /// Nanoseconds spent in them.
    pub(crate) reuse_sync_ns: AtomicU64,
    /// The deliberate bug of this address space (inject.rs; none without
    /// the `inject` feature).
    pub(crate) inject: Option<Injection>,
    /// Leaf entries still set in table pages when they were freed (a PTE
    /// installed after its zap: the stale PTE of strategy.rs S5).
    pub(crate) ptes_in_freed_tables: Arc<CachePadded<AtomicU64>>,
    /// Secondary MMUs to tell of invalidations (notifier.rs).
    pub(crate) notifiers: crate::notifier::Notifiers,
    /// Where calls, reads and copies are recorded (record.rs), if anywhere.
    #[cfg(feature = "record")]
    pub(crate) recorder: Option<Arc<Recorder>>,
}

/// The reader's side of `write_seq` and of the mmap lock (protocol.rs
/// `ReadSide`), for `AddressSpace::read_stable`.
struct Side<'a> {
    mm: &'a Mm,
    /// The mmap read lock is held for the whole read (`mmap-lock`).
    whole: bool,
}

/// One change's range in `Hw::txn_log` (A6), a seqlock per slot: `tag` is
/// the change's number while `lo..hi` are its, `u64::MAX` while the slot
/// is being taken by a later change.
#[derive(Debug)]
pub(crate) struct TxnSlot {
    pub(crate) tag: AtomicU64,
    pub(crate) lo: AtomicU64,
    pub(crate) hi: AtomicU64,
}

impl Default for TxnSlot {
    fn default() -> Self {
        TxnSlot { tag: AtomicU64::new(u64::MAX), lo: AtomicU64::new(u64::MAX), hi: AtomicU64::new(0) }
    }
}

impl crate::protocol::ReadSide<Vma> for Side<'_> {
    type Lock<'b>
        = parking_lot::RwLockReadGuard<'b, MmState>
    where
        Self: 'b;
    fn seq(&self) -> u64 {
        // ORDERING: SeqCst loads pair with the writer's SeqCst bumps
        // around its tree changes (a seqcount read side).
        self.mm.hw.write_seq.load(Ordering::SeqCst)
    }
    fn relax(&self, n: u32) {
        // A change of several stores takes a microsecond or two on a CPU
        // that is running: spin that long before a system call (a yield
        // costs as much, and the reader then comes back late).
        if n < RELAX_SPINS {
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
    fn lock(&self) -> Self::Lock<'_> {
        crate::notifier::assert_not_in_callback("maps, smaps or vmas (falling back to the mmap lock)");
        self.mm.mmap_lock.read()
    }
    fn txn_range(&self, k: u64) -> Option<(u64, u64)> {
        let slot = &self.mm.hw.txn_log[(k % crate::protocol::TXN_LOG) as usize];
        // ORDERING: a seqlock read: Acquire pairs with the tag's Release
        // store; the fence orders the range loads before the second tag
        // load (which a slot taken meanwhile changed).
        let t1 = slot.tag.load(Ordering::Acquire);
        let (lo, hi) = (slot.lo.load(Ordering::Relaxed), slot.hi.load(Ordering::Relaxed));
        std::sync::atomic::fence(Ordering::Acquire);
        (t1 == k && slot.tag.load(Ordering::Relaxed) == k).then_some((lo, hi))
    }
    fn whole_locked(&self) -> bool {
        self.whole
    }
    fn is_dead(&self, v: &Vma) -> bool {
        v.is_dead()
    }
    fn cut(&self, range: &std::ops::Range<u64>, v: &Vma) -> bool {
        (v.start, v.end) != (range.start, range.end)
    }
}

/// Spins of a lockless reader waiting for a writer's change to end before
/// it yields (about 2 µs).
const RELAX_SPINS: u32 = 256;

static NEXT_MM_ID: AtomicU32 = AtomicU32::new(1);

/// How to build an [`AddressSpace`].
///
/// # Examples
/// Many guests on one machine's memory, each with the tunables it runs
/// with:
/// ```
/// use std::sync::Arc;
/// use rcuvm::{AddressSpace, MmConfig, PhysMem, Strategy};
///
/// let machine = Arc::new(PhysMem::new(1 << 18)); // up to 1 GiB of frames
/// let mut cfg = MmConfig::default();
/// cfg.max_map_count = 1024;
/// let guests: Vec<_> = (0..4)
///     .map(|_| AddressSpace::builder().strategy(Strategy::RcuDead).phys(machine.clone()).config(cfg.clone()).build())
///     .collect();
/// assert_eq!(guests[3].config().max_map_count, 1024);
/// // Bad tunables are an error, not a broken address space.
/// cfg.task_size = 1 << 60;
/// assert!(AddressSpace::builder().config(cfg).try_build().is_err());
/// ```
#[derive(Clone, Debug, Default)]
pub struct MmBuilder {
    cfg: MmConfig,
    strategy: Strategy,
    phys: Option<Arc<PhysMem>>,
    rcu: rcuvm_rcu::Config,
    recorder: Option<Arc<Recorder>>,
    inject: Option<Injection>,
}

impl MmBuilder {
    /// The tunables.
    pub fn config(mut self, cfg: MmConfig) -> Self {
        self.cfg = cfg;
        self
    }
    /// The fault strategy (default [`Strategy::VmaLock`]).
    pub fn strategy(mut self, s: Strategy) -> Self {
        self.strategy = s;
        self
    }
    /// Physical memory to share with other address spaces (default: its
    /// own, of up to 16 GiB allocated on demand).
    pub fn phys(mut self, p: Arc<PhysMem>) -> Self {
        self.phys = Some(p);
        self
    }
    /// Tuning of the VMA domain (callback backlog bound, batching delay).
    pub fn rcu_config(mut self, c: rcuvm_rcu::Config) -> Self {
        self.rcu = c;
        self
    }
    /// Records every access, mm call and read into `r` (record.rs). Only
    /// with the `record` feature; without it, nothing is recorded.
    pub fn recorder(mut self, r: Arc<Recorder>) -> Self {
        self.recorder = Some(r);
        self
    }
    /// Gives the address space a deliberate bug (inject.rs). Only with the
    /// `inject` feature ([`crate::inject::AVAILABLE`]); without it, none.
    pub fn inject(mut self, i: Option<Injection>) -> Self {
        self.inject = i;
        self
    }
    /// The address space, or why its tunables cannot be kept
    /// ([`MmConfig::check`]).
    pub fn try_build(self) -> Result<AddressSpace, String> {
        self.cfg.check()?;
        Ok(self.build_checked())
    }

    /// The address space.
    ///
    /// # Panics
    /// If the tunables fail [`MmConfig::check`] (a `task_size` past what
    /// the page tables map made distinct addresses share pages): use
    /// [`Self::try_build`] to get the reason as an error instead.
    pub fn build(self) -> AddressSpace {
        self.try_build().unwrap_or_else(|e| panic!("rcuvm: MmBuilder::build: {e}"))
    }

    /// The address space, holding the VMAs of a `/proc/pid/maps` snapshot
    /// (as [`AddressSpace::from_maps`], with this builder's strategy,
    /// physical memory and tunables); `source` names it in errors.
    ///
    /// # Errors
    /// The first malformed line, with its number (maps.rs M2).
    ///
    /// # Panics
    /// As [`Self::build`].
    pub fn build_from_maps(self, text: &str, source: &str) -> Result<AddressSpace, MapsError> {
        let vmas = maps::parse(text, source)?;
        let mm = self.build();
        mm.fill_from_maps(vmas);
        Ok(mm)
    }

    fn build_checked(self) -> AddressSpace {
        #[cfg(not(feature = "record"))]
        let _ = self.recorder;
        let domain = Arc::new(Domain::with_config(self.rcu));
        let mm = Mm {
            vmas: CachePadded::new(MapleTree::with_free(domain.clone(), crate::vma_cache::vm_area_free)),
            domain,
            cfg: self.cfg,
            layout: Layout::default(),
            mmap_lock: CachePadded::new(MmapLock {
                rw: parking_lot::RwLock::new(MmState {
                    def_flags: VmFlags::empty(),
                    dead: Default::default(),
                    reap_runs: Vec::new(),
                    calls: 0,
                    reaper_saw: 0,
                    reaper_queued: false,
                    populate: None,
                }),
                waiters: AtomicU32::new(0),
            }),
            hw: Hw {
                strategy: self.strategy,
                pt: PageTable::new(),
                phys: self.phys.unwrap_or_else(|| Arc::new(PhysMem::new(4 << 20))),
                tlb: Shootdown::with_injection(self.inject),
                mm_lock_seq: CachePadded::new(AtomicU64::new(1)),
                id: NEXT_MM_ID.fetch_add(1, Ordering::Relaxed) & 0x3f_ffff,
                dead: CachePadded::new(AtomicUsize::new(0)),
                sync_ns: CachePadded::new(AtomicU64::new(0)),
                syncs: AtomicU64::new(0),
                dead_helps: AtomicU64::new(0),
                use_after_free: AtomicU64::new(0),
                write_seq: CachePadded::new(AtomicU64::new(0)),
                txn_log: CachePadded::new(std::array::from_fn(|_| TxnSlot::default())),
                reuse_syncs: AtomicU64::new(0),
                reuse_sync_ns: AtomicU64::new(0),
                inject: self.inject,
                ptes_in_freed_tables: Arc::default(),
                notifiers: Default::default(),
                #[cfg(feature = "record")]
                recorder: self.recorder,
            },
        };
        AddressSpace { mm: Arc::new(mm) }
    }
}

/// `start_brk`, `brk` and `start_stack`: written under the mmap lock, read
/// by maps readers without it (as Linux's `show_map_vma` reads `mm->brk`),
/// to name `[heap]` and `[stack]`. Zero: none. And the gate area's VMAs.
#[derive(Debug, Default)]
pub(crate) struct Layout {
    pub(crate) start_brk: AtomicU64,
    pub(crate) brk: AtomicU64,
    pub(crate) start_stack: AtomicU64,
    /// VMAs at or above `TASK_SIZE` (a snapshot's `[vsyscall]`, mmap.rs
    /// P9): in the tree for maps, not in `map_count`, as Linux's gate VMA
    /// is not. Set once, when a snapshot is loaded.
    pub(crate) gate_vmas: AtomicUsize,
}

impl Layout {
    /// The name Linux derives for an anonymous VMA without one:
    /// `vma_is_initial_heap()`, then `vma_is_initial_stack()`.
    fn derived_name(&self, v: &Vma) -> Option<&'static str> {
        let (sb, b) = (self.start_brk.load(Ordering::Relaxed), self.brk.load(Ordering::Relaxed));
        let st = self.start_stack.load(Ordering::Relaxed);
        // Strict since Linux 6.6: a VMA that only touches the heap's ends
        // is not the heap.
        if sb != 0 && v.start < b && v.end > sb {
            Some("[heap]")
        } else if st != 0 && v.start <= st && v.end >= st {
            Some("[stack]")
        } else {
            None
        }
    }
}

impl std::fmt::Debug for AddressSpace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AddressSpace").field("map_count", &self.map_count()).finish_non_exhaustive()
    }
}

impl Default for AddressSpace {
    fn default() -> Self {
        Self::new()
    }
}

impl AddressSpace {
    /// An empty address space with its own RCU domain.
    pub fn new() -> Self {
        Self::with_config(MmConfig::default())
    }

    /// An empty address space with the given tunables.
    ///
    /// # Panics
    /// If `cfg` fails [`MmConfig::check`]; [`MmBuilder::try_build`] returns
    /// the reason instead.
    pub fn with_config(cfg: MmConfig) -> Self {
        MmBuilder::default().config(cfg).build()
    }

    /// An empty address space with the given fault strategy.
    pub fn with_strategy(s: Strategy) -> Self {
        MmBuilder::default().strategy(s).build()
    }

    /// A builder for the less common options.
    pub fn builder() -> MmBuilder {
        MmBuilder::default()
    }

    /// The fault strategy.
    pub fn strategy(&self) -> Strategy {
        self.mm.hw.strategy
    }

    /// A simulated CPU that runs threads of this address space.
    pub fn cpu(self: &Arc<Self>) -> Cpu {
        Cpu::new(self.clone())
    }

    /// The physical memory.
    pub fn phys(&self) -> &Arc<PhysMem> {
        &self.mm.hw.phys
    }

    /// The page tables (their counts; walks are [`Self::translate`] and
    /// [`Self::reachable_tables`]).
    pub fn page_table(&self) -> &PageTable {
        &self.mm.hw.pt
    }

    /// The PTE that maps `va` now: a software walk of the page tables, as
    /// the MMU makes (no fault, no TLB), under a guard of the VMA domain
    /// that keeps every table it reaches from being freed (pgtable.rs
    /// PT1, PT5). A racing mm call makes it a sample.
    pub fn translate(&self, va: u64) -> crate::pgtable::Pte {
        // cpu.rs C7: nothing is mapped at or above `task_size`.
        if va >= self.mm.cfg.task_size {
            return crate::pgtable::Pte(0);
        }
        let _g = self.mm.domain.read();
        self.mm.hw.pt.walk(va)
    }

    /// Page-table pages reachable from the root now, the root included
    /// (under a guard, as [`Self::translate`]).
    pub fn reachable_tables(&self) -> usize {
        let _g = self.mm.domain.read();
        self.mm.hw.pt.reachable()
    }

    /// Registers a secondary MMU's hooks (notifier.rs N1–N6); the id
    /// unregisters it.
    pub fn register_notifier(&self, n: Arc<dyn crate::notifier::MmuNotifier>) -> u64 {
        // Under the mmap write lock, as Linux's `mmu_notifier_register`
        // takes it: no mm call is between a start and its end meanwhile.
        let _l = self.mm.mmap_write_lock();
        self.mm.hw.notifiers.register(n)
    }

    /// Unregisters the notifier `id` ([`Self::register_notifier`]);
    /// whether it was registered.
    pub fn unregister_notifier(&self, id: u64) -> bool {
        let _l = self.mm.mmap_write_lock();
        self.mm.hw.notifiers.unregister(id)
    }

    /// The TLB shootdown machinery.
    pub fn shootdown(&self) -> &Shootdown {
        &self.mm.hw.tlb
    }

    /// Grace periods munmap waited for, and the nanoseconds it spent
    /// (`rcu-sync`'s every munmap; `rcu-dead`'s only past the dead-entry
    /// bound).
    pub fn munmap_syncs(&self) -> (u64, u64) {
        (self.mm.hw.syncs.load(Ordering::Relaxed), self.mm.hw.sync_ns.load(Ordering::Relaxed))
    }

    /// Grace periods of dead entries that mm calls completed themselves,
    /// without blocking, because the entries piled up (`rcu-dead`, unmap.rs
    /// U8).
    pub fn dead_helps(&self) -> u64 {
        self.mm.hw.dead_helps.load(Ordering::Relaxed)
    }

    /// Page-table pages unhooked and not yet freed: waiting for their grace
    /// periods (unmap.rs U1), or, under `rcu-refcount`, for the last
    /// reference to their VMA. A sample: writers may run meanwhile.
    pub fn deferred_tables(&self) -> usize {
        let _g = self.mm.domain.read();
        self.mm.hw.pt.tables().saturating_sub(self.mm.hw.pt.reachable())
    }

    /// Grace periods waited for by calls that reused a range unmapped less
    /// than a grace period before (`rcu-dead`: `MAP_FIXED`, an mremap move
    /// or growth, a brk growth over a dead entry), and the nanoseconds.
    pub fn reuse_syncs(&self) -> (u64, u64) {
        (self.mm.hw.reuse_syncs.load(Ordering::Relaxed), self.mm.hw.reuse_sync_ns.load(Ordering::Relaxed))
    }

    /// Accesses that used a frame while it was freed (cpu.rs C5): always 0
    /// unless the shootdown is broken.
    pub fn use_after_free_accesses(&self) -> u64 {
        self.mm.hw.use_after_free.load(Ordering::Relaxed)
    }

    /// The recorder, if this address space has one (record.rs).
    #[cfg(feature = "record")]
    pub(crate) fn recorder(&self) -> Option<&Arc<Recorder>> {
        self.mm.hw.recorder.as_ref()
    }

    /// Leaf entries that were still set in table pages freed by mm calls:
    /// always 0 unless a fault installed a PTE after its range was zapped
    /// (the stale PTE that `rcu-refcount` allows, strategy.rs S5).
    pub fn ptes_in_freed_tables(&self) -> u64 {
        self.mm.hw.ptes_in_freed_tables.load(Ordering::Relaxed)
    }

    pub(crate) fn hw(&self) -> &Hw {
        &self.mm.hw
    }

    pub(crate) fn vmas_tree(&self) -> &MapleTree<Arc<Vma>> {
        &self.mm.vmas
    }

    pub(crate) fn mmap_read(&self) -> parking_lot::RwLockReadGuard<'_, MmState> {
        // notifier.rs N6: a callback runs under the write lock.
        crate::notifier::assert_not_in_callback(
            "a call that takes the mmap lock (maps, vmas, query, a fault)",
        );
        self.mm.mmap_lock.read()
    }

    /// The tunables.
    pub fn config(&self) -> &MmConfig {
        &self.mm.cfg
    }

    fn call<R>(&self, f: impl FnOnce(&mut MmCall<'_>) -> R) -> R {
        self.call_then(f, |_, _| ()).0
    }

    /// An mm call `op`, recorded when the address space has a recorder
    /// (record.rs H2, H3). A population it asks for (mlock.rs L5) runs
    /// after it, its failure ignored (as `mmap`, `brk` and `mremap`
    /// ignore it).
    fn logged<R: Outcome>(&self, op: impl FnOnce() -> Op, f: impl FnOnce(&mut MmCall<'_>) -> R) -> R {
        #[cfg(feature = "record")]
        if let Some(rec) = &self.mm.hw.recorder {
            return self
                .call_then(f, |r, start| {
                    let (result, after) = (r.outcome(), self.state());
                    let end = crate::record::now();
                    rec.call(crate::record::CallEvent { op: op(), result, start, end, after });
                })
                .0;
        }
        let _ = op;
        self.call(f)
    }

    /// A11: a call from inside a `Cpu::access` of this address space (a
    /// read-side section of its TLB domain) would wait in its shootdown
    /// for that very access, or take the mmap lock that another thread's
    /// call holds while it waits for the access: a deadlock in every
    /// strategy. Refused before anything is taken or changed.
    fn assert_not_in_access(&self) {
        assert!(
            !self.mm.hw.tlb.domain().in_read_section(),
            "rcuvm: an mm call (mmap, munmap, mprotect...) was made inside a Cpu::access of the same address \
             space; it would wait for that access to end. Make it after the access returns."
        );
    }

    /// L5 (mlock.rs): a call's population, under the mmap read lock, as
    /// Linux's `mm_populate()` runs after `mmap_write_unlock()` and
    /// `madvise_populate()` under the read lock: faults of other CPUs (and
    /// under `mmap-lock`, maps readers) go on meanwhile; mm calls wait.
    fn populate(&self, p: crate::mlock::Populate) -> Result<(), Errno> {
        let _lock = self.mmap_read();
        crate::mlock::Populator::new(&self.mm.hw, &self.mm.vmas, self.mm.cfg.task_size).run(p)
    }

    /// The VMAs as the recorder keeps them (record.rs H3): under the mmap
    /// write lock, so exact.
    #[cfg(feature = "record")]
    fn state(&self) -> Vec<crate::record::VmaState> {
        let g = self.mm.domain.read();
        self.mm
            .vmas
            .iter_from(0, &g)
            .filter(|e| !e.value.is_dead())
            .map(|e| crate::record::VmaState {
                start: e.range.start,
                end: e.range.end,
                flags: e.value.flags,
                pgoff: e.value.pgoff_at(e.range.start),
            })
            .collect()
    }

    /// The mm call `f`; `done` runs on its result under the mmap lock, told
    /// when the lock was taken (0 without the `record` feature).
    /// Then the population the call asked for, and its result (L5).
    fn call_then<R>(
        &self,
        f: impl FnOnce(&mut MmCall<'_>) -> R,
        done: impl FnOnce(&R, u64),
    ) -> (R, Result<(), Errno>) {
        self.assert_not_in_access();
        let (r, populate) = self.mm.locked_call(f, done);
        let populated = populate.map_or(Ok(()), |p| self.populate(p));
        // A8: the lock is released; run some of the callbacks this address
        // space's calls queued whose grace period has passed.
        self.mm.domain.run_ready(RUN_READY);
        self.mm.hw.tlb.domain().run_ready(RUN_READY);
        (r, populated)
    }

    /// `mmap(2)`: returns the address mapped, or Linux's errno with the
    /// address space unchanged. `file` is ignored with `MAP_ANONYMOUS`;
    /// without it and without a file the mapping is anonymous.
    ///
    /// # Examples
    /// ```
    /// use rcuvm::{AddressSpace, Errno, MapFlags, Prot};
    ///
    /// let mm = AddressSpace::new();
    /// let anon = MapFlags::PRIVATE | MapFlags::ANONYMOUS;
    /// let a = mm.mmap(0, 1 << 20, Prot::READ | Prot::WRITE, anon, None, 0).unwrap();
    /// // Top-down below mmap_base, as Linux places it.
    /// assert!(a < mm.config().mmap_base);
    /// // An errno leaves the address space as it was.
    /// let again = anon | MapFlags::FIXED_NOREPLACE;
    /// assert_eq!(mm.mmap(a, 4096, Prot::READ, again, None, 0), Err(Errno::Eexist));
    /// assert_eq!(mm.mmap(a + 1, 4096, Prot::READ, anon | MapFlags::FIXED, None, 0), Err(Errno::Einval));
    /// assert_eq!(mm.map_count(), 1);
    /// ```
    ///
    /// # Errors
    /// `EINVAL`, `ENOMEM`, `EEXIST`, `EACCES`, `EOVERFLOW`, `EOPNOTSUPP`
    /// (`MAP_SHARED_VALIDATE` with an unknown flag) as Linux returns them.
    pub fn mmap(
        &self,
        addr: u64,
        len: u64,
        prot: Prot,
        flags: MapFlags,
        file: Option<&MapFile>,
        offset: u64,
    ) -> Result<u64, Errno> {
        self.logged(
            || Op::Mmap {
                addr,
                len,
                prot,
                flags,
                fd: file.map(|f| (-1, Some(f.id.path.to_string()))),
                offset,
            },
            |c| c.mmap(addr, len, prot, flags, file, offset),
        )
    }

    /// `fork(2)`'s copy of the address space (`dup_mmap`, A14): a new
    /// address space on the same [`PhysMem`] with this one's VMAs, but for
    /// `MADV_DONTFORK` ones, unlocked, and its anonymous pages shared
    /// copy-on-write: after `fork` returns, a write to private memory on
    /// either side is seen by that side alone, while shared mappings stay
    /// shared (fork.rs FK1–FK4).
    ///
    /// # Examples
    /// ```
    /// use std::sync::Arc;
    /// use rcuvm::{AddressSpace, MapFlags, Prot};
    ///
    /// let parent = Arc::new(AddressSpace::new());
    /// let anon = MapFlags::PRIVATE | MapFlags::ANONYMOUS;
    /// let a = parent.mmap(0, 4096, Prot::READ | Prot::WRITE, anon, None, 0).unwrap();
    /// let mut p = parent.cpu();
    /// p.write(a, 1).unwrap();
    /// let child = Arc::new(parent.fork());
    /// let mut c = child.cpu();
    /// assert_eq!(c.read(a), Ok(1));  // the page is shared...
    /// c.write(a, 2).unwrap();        // ...until a write copies it
    /// assert_eq!((p.read(a), c.read(a)), (Ok(1), Ok(2)));
    /// assert_eq!(child.maps(), parent.maps());
    /// ```
    pub fn fork(&self) -> AddressSpace {
        let child = AddressSpace::builder()
            .config(self.mm.cfg.clone())
            .strategy(self.mm.hw.strategy)
            .phys(self.mm.hw.phys.clone())
            .rcu_config(self.mm.domain.config().clone())
            .build();
        self.call(|parent| {
            let (from, to) = (&self.mm.layout, &child.mm.layout);
            for (f, t) in
                [(&from.start_brk, &to.start_brk), (&from.brk, &to.brk), (&from.start_stack, &to.start_stack)]
            {
                t.store(f.load(Ordering::Relaxed), Ordering::Relaxed);
            }
            to.gate_vmas.store(from.gate_vmas.load(Ordering::Relaxed), Ordering::Relaxed);
            child.call(|c| parent.dup_mmap(c));
        });
        child
    }

    /// `mprotect(2)`: changes VMAs in order and stops with `ENOMEM` at a
    /// hole, keeping the changes made before it, as Linux does.
    ///
    /// # Errors
    /// `EINVAL`, `ENOMEM`, `EACCES` as Linux returns them.
    pub fn mprotect(&self, addr: u64, len: u64, prot: Prot) -> Result<(), Errno> {
        self.logged(
            || Op::Mprotect { addr, len, prot },
            |c| {
                if crate::inject::active(self.mm.hw.inject, Injection::HalfUpdatedVma) {
                    c.publish_half_updated(addr, len, prot);
                }
                c.mprotect(addr, len, prot)
            },
        )
    }

    /// `madvise(2)`: advices that change `vm_flags` split and merge VMAs;
    /// holes give `ENOMEM` after the rest of the range was advised.
    ///
    /// # Errors
    /// `EINVAL`, `ENOMEM` as Linux returns them; `ENOSYS` for advices rcuvm
    /// does not model yet (see madvise.rs).
    pub fn madvise(&self, addr: u64, len: u64, advice: i32) -> Result<(), Errno> {
        if crate::madvise::is_populate(advice) {
            // madvise.rs D6: the mmap read lock alone, as Linux.
            self.assert_not_in_access();
            let Some(end) = crate::madvise::madvise_range(addr, len, advice)? else { return Ok(()) };
            let write = advice == crate::uapi::madv::POPULATE_WRITE;
            return self.populate(crate::mlock::Populate::Advice { start: addr, end, write });
        }
        self.logged(|| Op::Madvise { addr, len, advice }, |c| c.madvise(addr, len, advice))
    }

    /// `brk(2)`: moves the program break; returns the new break, or the
    /// old one when the move is refused (Linux's brk never fails with an
    /// errno). An address space has no heap until [`Self::set_start_brk`]
    /// (the ELF loader's part) or a snapshot's `[heap]` line gives it one:
    /// until then every move is refused and the break reads 0.
    pub fn brk(&self, addr: u64) -> u64 {
        self.logged(|| Op::Brk { addr }, |c| c.brk(addr))
    }

    /// The current program break and its start (`mm->brk`, `mm->start_brk`).
    pub fn brk_range(&self) -> (u64, u64) {
        (self.mm.layout.start_brk.load(Ordering::Relaxed), self.mm.layout.brk.load(Ordering::Relaxed))
    }

    /// Grows the `VM_GROWSDOWN` VMA above `addr` down to it, for a fault
    /// (fault.rs FL8, stack.rs G1–G5): an mm call of its own, not recorded
    /// (the checker's workloads make no such VMA).
    pub(crate) fn expand_stack(&self, addr: u64) -> bool {
        self.call(|c| c.expand_stack(addr))
    }

    /// Sets where the heap starts (what the ELF loader does): `brk` starts
    /// there too.
    ///
    /// # Errors
    /// `EINVAL`, changing nothing, if `addr` is not page-aligned, not in
    /// `[mmap_min_addr, task_size)`, or if the heap has grown already
    /// (`brk` past `start_brk`: its VMA would no longer be the heap's).
    pub fn set_start_brk(&self, addr: u64) -> Result<(), Errno> {
        let _lock = self.mm.mmap_write_lock();
        let l = &self.mm.layout;
        let (start, brk) = (l.start_brk.load(Ordering::Relaxed), l.brk.load(Ordering::Relaxed));
        let cfg = &self.mm.cfg;
        if addr % crate::PAGE_SIZE != 0 || addr < cfg.mmap_min_addr || addr >= cfg.task_size || brk > start {
            return Err(Errno::Einval);
        }
        l.start_brk.store(addr, Ordering::Relaxed);
        l.brk.store(addr, Ordering::Relaxed);
        Ok(())
    }

    /// `mremap(2)`; `new_addr` is used with `MREMAP_FIXED` (flags as in
    /// [`uapi`](crate::uapi)'s `MREMAP_*`).
    ///
    /// # Errors
    /// `EINVAL`, `EFAULT`, `ENOMEM` as Linux returns them.
    pub fn mremap(
        &self,
        addr: u64,
        old_len: u64,
        new_len: u64,
        flags: u32,
        new_addr: u64,
    ) -> Result<u64, Errno> {
        self.logged(
            || Op::Mremap {
                old_addr: addr,
                old_len,
                new_len,
                flags,
                new_addr: (flags & crate::uapi::MREMAP_FIXED != 0).then_some(new_addr),
            },
            |c| c.mremap(addr, old_len, new_len, flags, new_addr),
        )
    }

    /// `munmap(2)`.
    ///
    /// Blocking: it waits for the TLB shootdown (CPUs of other threads
    /// inside an access of the range); under `rcu-sync` for a grace period
    /// of the VMA domain too, and under `rcu-dead` only when 8,192 dead
    /// entries are still pending ([`Strategy`] S4). Never call it inside a
    /// read-side section of [`Self::domain`] or a [`Cpu::access`](crate::Cpu::access)
    /// closure (it would wait for itself: it panics instead).
    ///
    /// # Errors
    /// `EINVAL` for a misaligned, empty or out-of-range request; `ENOMEM`
    /// when punching a hole would pass `max_map_count`.
    pub fn munmap(&self, addr: u64, len: u64) -> Result<(), Errno> {
        self.logged(|| Op::Munmap { addr, len }, |c| c.munmap(addr, len))
    }

    /// `mlock(2)`: locks the VMAs over `[addr, addr + len)` (`addr` rounded
    /// down to its page), splitting and merging them; stops with `ENOMEM` at
    /// a hole, keeping what it locked before it, as Linux does.
    ///
    /// # Errors
    /// `EINVAL` when the range wraps; `ENOMEM` for a hole, a split past
    /// `max_map_count`, or a VMA that cannot be faulted in (`PROT_NONE`),
    /// after locking it (see mlock.rs).
    pub fn mlock(&self, addr: u64, len: u64) -> Result<(), Errno> {
        let (r, populated) = self.call_then(|c| c.mlock(addr, len, VmFlags::LOCKED), |_, _| ());
        r.and(populated.map_err(crate::mlock::mlock_error))
    }

    /// `mlock2(2)`: `mlock` with `MLOCK_ONFAULT` (`VM_LOCKONFAULT`: no page
    /// is faulted in, so `PROT_NONE` memory locks without error).
    ///
    /// # Errors
    /// `EINVAL` for a flag other than [`MLOCK_ONFAULT`](crate::uapi::MLOCK_ONFAULT),
    /// then as [`mlock`](Self::mlock).
    pub fn mlock2(&self, addr: u64, len: u64, flags: u32) -> Result<(), Errno> {
        let (r, populated) = self.call_then(|c| c.mlock2(addr, len, flags), |_, _| ());
        r.and(populated.map_err(crate::mlock::mlock_error))
    }

    /// `munlock(2)`: clears `VM_LOCKED` and `VM_LOCKONFAULT` over the range.
    ///
    /// # Errors
    /// `EINVAL` when the range wraps; `ENOMEM` for a hole or a split past
    /// `max_map_count`.
    pub fn munlock(&self, addr: u64, len: u64) -> Result<(), Errno> {
        self.call(|c| c.munlock(addr, len))
    }

    /// `mlockall(2)` with `MCL_CURRENT`, `MCL_FUTURE` and `MCL_ONFAULT`
    /// ([`uapi`](crate::uapi)).
    ///
    /// # Errors
    /// `EINVAL` for no flag, an unknown flag, or `MCL_ONFAULT` alone.
    pub fn mlockall(&self, flags: u32) -> Result<(), Errno> {
        self.call(|c| c.mlockall(flags))
    }

    /// `munlockall(2)`: unlocks every VMA and clears `MCL_FUTURE`.
    pub fn munlockall(&self) {
        self.call(|c| c.munlockall());
    }

    /// An address space holding the VMAs of a `/proc/pid/maps` snapshot;
    /// `source` names the snapshot in errors.
    ///
    /// # Examples
    /// ```
    /// use rcuvm::AddressSpace;
    ///
    /// let text = "00400000-00452000 r-xp 00000000 08:02 173521    /usr/bin/dbus-daemon\n\
    ///             7ffd1b2a4000-7ffd1b2c5000 rw-p 00000000 00:00 0         [stack]\n";
    /// let mm = AddressSpace::from_maps(text, "snapshot").unwrap();
    /// assert_eq!(mm.map_count(), 2);
    /// assert_eq!(mm.query(0x401000).unwrap().pgoff, 0);
    /// let e = AddressSpace::from_maps("00400000-zz r-xp\n", "bad").unwrap_err();
    /// assert!(e.to_string().contains("bad"), "{e}");
    /// ```
    ///
    /// # Errors
    /// The first malformed line, with its number (maps.rs M2).
    pub fn from_maps(text: &str, source: &str) -> Result<Self, MapsError> {
        MmBuilder::default().build_from_maps(text, source)
    }

    /// Loads the VMAs of a parsed snapshot into this (empty) address space.
    fn fill_from_maps(&self, mut vmas: Vec<Vma>) {
        let mm = &*self.mm;
        let gate = vmas.iter().filter(|v| v.start >= mm.cfg.task_size).count();
        mm.layout.gate_vmas.store(gate, Ordering::Relaxed);
        // `[heap]` and `[stack]` are derived from brk and start_stack, not
        // stored (mm.rs Layout): recover those and drop the names.
        let heap: Vec<(u64, u64)> =
            vmas.iter().filter(|v| v.name.as_deref() == Some("[heap]")).map(|v| (v.start, v.end)).collect();
        if let (Some(first), Some(last)) = (heap.first(), heap.last()) {
            // Every [heap] line satisfies `start < brk && end > start_brk`
            // (vma_is_initial_heap): the heap starts at the first one.
            mm.layout.start_brk.store(first.0, Ordering::Relaxed);
            mm.layout.brk.store(last.1, Ordering::Relaxed);
        }
        if let Some(st) = vmas.iter().find(|v| v.name.as_deref() == Some("[stack]")) {
            mm.layout.start_stack.store(st.end - 8, Ordering::Relaxed);
        }
        for v in &mut vmas {
            if matches!(v.name.as_deref(), Some("[heap]" | "[stack]")) {
                v.name = None;
            }
        }
        {
            let _lock = mm.mmap_write_lock();
            let mut w = mm.vmas.write();
            for v in vmas {
                // `parse` rejected overlaps, so this cannot fail.
                w.insert(v.start..v.end, Arc::new(v)).expect("parse() checked that lines do not overlap");
            }
        }
    }

    /// The RCU domain readers of this address space use.
    pub fn domain(&self) -> &Arc<Domain> {
        &self.mm.domain
    }

    /// Number of VMAs (`map_count`; dead entries and the gate area are not
    /// counted: mmap.rs P9).
    pub fn map_count(&self) -> usize {
        self.mm.vmas.len()
            - self.mm.hw.dead.load(Ordering::Relaxed)
            - self.mm.layout.gate_vmas.load(Ordering::Relaxed)
    }

    /// Dead entries counted in the tree (`rcu-dead`, strategy.rs S4).
    pub fn dead_entries(&self) -> usize {
        self.mm.hw.dead.load(Ordering::Relaxed)
    }

    /// Entries in the VMA tree: VMAs and (`rcu-dead`) dead entries.
    pub fn vmas_in_tree(&self) -> usize {
        self.mm.vmas.len()
    }

    /// The mmap read lock, under the `mmap-lock` strategy only (S2).
    fn reader_lock(&self) -> Option<parking_lot::RwLockReadGuard<'_, MmState>> {
        (self.mm.hw.strategy == Strategy::MmapLock).then(|| {
            crate::notifier::assert_not_in_callback("maps, smaps, vmas or query under mmap-lock");
            self.mm.mmap_lock.read()
        })
    }

    /// `/proc/pid/maps`, read under RCU without the mmap lock (A2).
    pub fn maps(&self) -> String {
        #[cfg(feature = "record")]
        let start = crate::record::now();
        // Every line renders into one buffer; `read_stable` keeps the range
        // of each line it keeps. A torn read or a take-back leaves its text
        // behind, so the kept lines are copied out unless (as almost always)
        // they are the whole buffer in order. Sized up front for lines of
        // 64 bytes (most are shorter), so that a read does not grow its
        // buffer a dozen times.
        let mut text = String::with_capacity(self.mm.vmas.len() * 64);
        let lines = self.read_stable(0, usize::MAX, |e| {
            let at = text.len();
            maps::write_line(&mut text, &view(e, &self.mm.layout));
            text.push('\n');
            Some(at..text.len())
        });
        let out = kept_lines(text, &lines);
        #[cfg(feature = "record")]
        self.record_read(crate::record::ReadKind::Maps, &out, start);
        out
    }

    /// Calls `collect` on each VMA from `from` up, in address order, and
    /// returns what it made, each from a state of the tree with no mm call
    /// in the middle of changing it (A5). `collect` runs under the VMA
    /// domain's guard; it returns `None` to stop.
    ///
    /// An entry is read between two loads of `write_seq`; if a writer's
    /// call was running or ran meanwhile, the entry is read again (from
    /// outside the read-side section: the writer may be waiting for a
    /// grace period). An entry that begins below the end of the previous
    /// one is newer (a merge over what was read): the lines it covers are
    /// taken back, so lines never overlap and each stretch shows one state.
    /// After [`READ_RETRIES`](crate::protocol::READ_RETRIES) torn reads of
    /// one entry, the reader takes the mmap lock for read to read it (Linux
    /// 6.17's fallback), so a stream of writers cannot starve it.
    fn read_stable<T>(
        &self,
        from: u64,
        limit: usize,
        collect: impl FnMut(&Entry<'_, Arc<Vma>>) -> Option<T>,
    ) -> Vec<T> {
        let whole = self.reader_lock();
        let side = Side { mm: &self.mm, whole: whole.is_some() };
        // protocol.rs PR3: the loom model of this reader runs the same code.
        crate::protocol::read_stable(&self.mm.vmas, &side, from, limit, collect)
    }

    /// Records a maps, smaps or query read (record.rs H2).
    #[cfg(feature = "record")]
    fn record_read(&self, kind: crate::record::ReadKind, text: &str, start: u64) {
        if let Some(rec) = &self.mm.hw.recorder {
            rec.read(kind, text.to_string(), start);
        }
    }

    /// `/proc/pid/smaps`: each maps line followed by its sizes, `Rss` from a
    /// lockless page-table walk (under the VMA domain's guard, which keeps
    /// the tables: pgtable.rs PT5), and `VmFlags`. Fields rcuvm does not
    /// model (dirty/clean, swap, huge pages) are left out.
    pub fn smaps(&self) -> String {
        #[cfg(feature = "record")]
        let start = crate::record::now();
        let pm = &*self.mm.hw.phys;
        let kind = |pfn| match pm.frame(pfn).owner() {
            Owner::Anon { .. } => Some(true),
            Owner::PageCache => Some(false),
            Owner::Zero | Owner::Free => None,
        };
        // One buffer, as in `maps` (an entry renders to about 500 bytes).
        let mut text = String::with_capacity(self.mm.vmas.len() * 512);
        let entries = self.read_stable(0, usize::MAX, |e| {
            // The walk runs under the guard, which keeps the tables (PT5).
            let v = view(e, &self.mm.layout);
            let (a, f) = self.mm.hw.pt.rss(v.start, v.end, &kind);
            let at = text.len();
            let kb = |pages: u64| pages << (PAGE_SHIFT - 10);
            maps::write_line(&mut text, &v);
            text.push('\n');
            for (name, val) in [
                ("Size:", v.len() >> 10),
                ("KernelPageSize:", 4),
                ("MMUPageSize:", 4),
                ("Rss:", kb(a + f)),
                ("Anonymous:", kb(a)),
            ] {
                let _ = writeln!(text, "{name:<16}{val:>8} kB");
            }
            let _ = writeln!(text, "VmFlags: {}", maps::vm_flags_mnemonics(v.flags));
            Some(at..text.len())
        });
        let out = kept_lines(text, &entries);
        #[cfg(feature = "record")]
        self.record_read(crate::record::ReadKind::Smaps, &out, start);
        out
    }

    /// The VMA containing `addr`, like `PROCMAP_QUERY` without flags.
    pub fn query(&self, addr: u64) -> Option<Arc<Vma>> {
        #[cfg(feature = "record")]
        let start = crate::record::now();
        let found = self.read_stable(addr, 1, |e| {
            Some((e.range.start <= addr).then(|| Arc::new(view(e, &self.mm.layout))))
        });
        let r = found.into_iter().next().flatten();
        #[cfg(feature = "record")]
        {
            let line = r.as_ref().map(|v| maps::render_line(v)).unwrap_or_default();
            self.record_read(crate::record::ReadKind::Query(addr), &line, start);
        }
        r
    }

    /// A snapshot of every VMA, in address order.
    pub fn vmas(&self) -> Vec<Arc<Vma>> {
        self.read_stable(0, usize::MAX, |e| Some(Arc::new(view(e, &self.mm.layout))))
    }
}

impl Drop for AddressSpace {
    fn drop(&mut self) {
        // A13: the teardown waits for grace periods and callbacks of both
        // domains; from inside a callback or a read-side section of one it
        // would wait for itself (the barrier panicked, and the teardown was
        // abandoned). A thread of its own does it then.
        let (vd, td) = (&self.mm.domain, self.mm.hw.tlb.domain());
        if vd.in_callback() || td.in_callback() || vd.in_read_section() || td.in_read_section() {
            let rest = AddressSpace { mm: self.mm.clone() };
            std::thread::Builder::new()
                .name("rcuvm-teardown".into())
                .spawn(move || drop(rest))
                .expect("a thread for the teardown");
            return;
        }
        // Teardown (`exit_mmap`): unmap everything, so every frame goes
        // back and every table is freed; then run the callbacks that free
        // them.
        let all = self.mm.cfg.task_size;
        // notifier.rs N4: secondary MMUs go first; the teardown's unmaps
        // tell no one.
        self.mm.hw.notifiers.release();
        self.call(|c| {
            c.reap_dead(true, 0, u64::MAX);
            let _ = c.munmap_range(0, all);
            // Under `rcu-dead` the unmapping left dead entries: erase them
            // too (after a grace period), so that the reaper, which the
            // barrier below runs if it is queued, finds none and does not
            // queue itself again (A10).
            c.reap_dead(true, 0, u64::MAX);
        });
        // Tables wait for the VMA domain, then the TLB domain (tlb.rs T6).
        // A10: a queued reaper holds a count of the state; the barrier
        // runs it, and it finds no dead entry and ends. Again while one is
        // left (a reaper that found the lock taken by the teardown queued
        // itself again, maybe after the barrier began), so that the last
        // count is dropped here, not in a callback of the domain it owns.
        loop {
            self.mm.domain.barrier();
            if Arc::strong_count(&self.mm) == 1 {
                break;
            }
        }
        if self.mm.hw.strategy == Strategy::RcuRefcount {
            // strategy.rs S5: the last puts (run by the barrier above)
            // queued the tables' free behind one more VMA grace period.
            self.mm.domain.barrier();
        }
        self.mm.hw.tlb.domain().barrier();
    }
}

impl Mm {
    /// The mmap lock for writing, spinning before sleeping (A7).
    pub(crate) fn mmap_write_lock(&self) -> parking_lot::RwLockWriteGuard<'_, MmState> {
        // notifier.rs N6: a callback runs under this lock (or under the
        // read side of it): taking it would wait forever.
        crate::notifier::assert_not_in_callback("an mm call");
        if let Some(g) = self.mmap_lock.try_write() {
            return g;
        }
        let waiters = &self.mmap_lock.waiters;
        waiters.fetch_add(1, Ordering::Relaxed);
        let t0 = std::time::Instant::now();
        let g = 'spin: loop {
            // Poll with loads, not read-modify-writes, while it is taken:
            // the holder's cache line stays put until it unlocks.
            for _ in 0..64 {
                if !self.mmap_lock.is_locked() {
                    if let Some(g) = self.mmap_lock.try_write() {
                        break 'spin g;
                    }
                }
                std::hint::spin_loop();
            }
            if t0.elapsed() >= MMAP_LOCK_SPIN {
                break self.mmap_lock.write();
            }
        };
        waiters.fetch_sub(1, Ordering::Relaxed);
        g
    }

    /// `call_then` under the mmap lock; also the population the call asked
    /// for (mlock.rs L5), for the caller to run once the lock is released.
    pub(crate) fn locked_call<R>(
        self: &Arc<Self>,
        f: impl FnOnce(&mut MmCall<'_>) -> R,
        done: impl FnOnce(&R, u64),
    ) -> (R, Option<crate::mlock::Populate>) {
        let mut st = self.mmap_write_lock();
        #[cfg(feature = "record")]
        let start = crate::record::now();
        #[cfg(not(feature = "record"))]
        let start = 0;
        st.calls += 1;
        let r = self.call_in(&mut st, crate::strategy::REAP_BATCH, f);
        done(&r, start);
        // A10: dead entries left behind are the reaper's to finish.
        if !st.dead.is_empty() && !st.reaper_queued {
            st.reaper_queued = true;
            self.queue_reaper();
        }
        (r, st.populate.take())
    }

    /// The body of an mm call, under the mmap lock: reaps up to `budget`
    /// expired dead entries (unmap.rs U5), runs `f`, and ends the call's
    /// write locks of VMAs (A4).
    fn call_in<R>(&self, st: &mut MmState, budget: usize, f: impl FnOnce(&mut MmCall<'_>) -> R) -> R {
        // L5: a request left by a call that panicked is not this call's.
        st.populate = None;
        let mut c = MmCall {
            w: self.vmas.write(),
            tree: &self.vmas,
            domain: &self.domain,
            cfg: &self.cfg,
            layout: &self.layout,
            hw: &self.hw,
            dead: &mut st.dead,
            reap_runs: &mut st.reap_runs,
            def_flags: &mut st.def_flags,
            populate: &mut st.populate,
            txn_depth: 0,
            txn: 0,
            reap_budget: budget,
        };
        c.reap_dead(false, 0, u64::MAX);
        let r = f(&mut c);
        debug_assert_eq!(c.txn_depth, 0, "A5: every tree_txn ended");
        drop(c);
        // A4: vma_end_write_all(), before the mmap lock is released.
        self.hw.mm_lock_seq.fetch_add(1, Ordering::SeqCst);
        r
    }

    /// Queues the reaper (A10) to run after a grace period. Its closure is
    /// one `Arc`, which rcuvm-rcu keeps without allocating (deferred.rs D3).
    fn queue_reaper(self: &Arc<Self>) {
        let mm = Arc::clone(self);
        self.domain.call(move || mm.reap());
    }

    /// The reaper (A10): erases expired dead entries that no mm call has,
    /// a batch at a time, and queues itself again while any are left.
    fn reap(self: Arc<Self>) {
        loop {
            let Some(mut st) = self.mmap_lock.try_write() else {
                // A call holds the lock (or a reader fell back to it):
                // come back after another grace period.
                return self.queue_reaper();
            };
            // Idle: no mm call since the reaper last ran.
            let idle = st.calls == st.reaper_saw;
            st.reaper_saw = st.calls;
            let budget = if idle { REAPER_IDLE_BATCH } else { crate::strategy::REAP_BATCH };
            self.call_in(&mut st, budget, |_| ());
            if st.dead.is_empty() {
                st.reaper_queued = false;
                return;
            }
            let more = idle
                && self.mmap_lock.waiters.load(Ordering::Relaxed) == 0
                && st.dead.front().is_some_and(|d| self.domain.poll_state(d.gp));
            drop(st);
            if !more {
                return self.queue_reaper();
            }
        }
    }
}

/// The text of the `kept` ranges of `text`, in order: `text` itself when
/// they cover it whole and in order (no copy).
fn kept_lines(text: String, kept: &[std::ops::Range<usize>]) -> String {
    let whole = kept.iter().try_fold(0, |end, r| (r.start == end).then_some(r.end)) == Some(text.len());
    if whole { text } else { kept.iter().map(|r| &text[r.clone()]).collect() }
}

/// A VMA as a reader sees it. Its tree range is its own range whenever no
/// change of several stores is under way (A5), which is when readers keep
/// what they read; the slice below only covers a read that A5 then throws
/// away (the old VMA over part of its old range during a split). Anonymous
/// VMAs without a name get `[heap]`/`[stack]` as Linux derives them.
fn view(e: &Entry<'_, Arc<Vma>>, layout: &Layout) -> Vma {
    let v = e.value;
    let mut out = if v.start == e.range.start && v.end == e.range.end {
        v.clone()
    } else {
        Vma { start: e.range.start, end: e.range.end, pgoff: v.pgoff_at(e.range.start), ..v.clone() }
    };
    if out.name.is_none() && out.backing == Backing::Anon {
        out.name = layout.derived_name(&out).map(Arc::from);
    }
    // A snapshot shows the anon_vma a fault gave the VMA too (vma.rs V4).
    out.anon_vma = v.anon();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strategy::REAP_BATCH;
    use crate::vma::PAGE_SIZE;
    use std::time::Duration;

    /// `maps()` renders every read of an entry into one buffer; the lines
    /// a torn read or a take-back dropped must not reach the output.
    #[test]
    fn maps_keeps_only_the_kept_lines_of_its_buffer() {
        let text = "a\nb\nstale\nc\n".to_string();
        assert_eq!(kept_lines(text.clone(), &[0..2, 2..4, 10..12]), "a\nb\nc\n");
        assert_eq!(kept_lines(text.clone(), &[0..2, 2..4, 4..10, 10..12]), text, "whole, in order");
        assert_eq!(kept_lines(text.clone(), &[0..2, 2..4]), "a\nb\n", "a dropped tail");
        assert_eq!(kept_lines(String::new(), &[]), "");
    }

    /// unmap.rs U5: an mm call erases at most `REAP_BATCH` expired dead
    /// entries beyond those it needs; A10: the reaper erases the rest of an
    /// idle address space's, with no mm call.
    #[test]
    fn dead_entries_are_erased_in_batches_and_by_the_reaper_when_idle() {
        // Nothing expires until `barrier()` asks for the grace period.
        let rcu = rcuvm_rcu::Config::default().batch_delay(Duration::from_secs(60));
        let mm = AddressSpace::builder().strategy(Strategy::RcuDead).rcu_config(rcu).build();
        let anon = MapFlags::PRIVATE | MapFlags::ANONYMOUS | MapFlags::FIXED;
        let rw = Prot::READ | Prot::WRITE;
        let n = 5 * REAP_BATCH + 3;
        let unmap_all = |base: u64| {
            let many = mm.mmap(base, n as u64 * PAGE_SIZE, rw, anon, None, 0).unwrap();
            for i in 0..n as u64 {
                mm.munmap(many + i * PAGE_SIZE, PAGE_SIZE).unwrap();
            }
            assert_eq!(mm.dead_entries(), n, "nothing expired yet");
        };

        // U5: the body of a call, as `locked_call` runs it (without the
        // callbacks after it, among which the reaper may be).
        unmap_all(0x10_0000_0000);
        let gp = mm.domain().get_state();
        mm.domain().synchronize();
        assert!(mm.domain().poll_state(gp), "every dead entry's grace period has passed");
        let mut calls = 0;
        while mm.dead_entries() > 0 {
            let before = mm.dead_entries();
            let mut st = mm.mm.mmap_write_lock();
            mm.mm.call_in(&mut st, REAP_BATCH, |_| ());
            drop(st);
            calls += 1;
            assert_eq!(before - mm.dead_entries(), before.min(REAP_BATCH), "call {calls}: one batch");
            assert!(calls <= n, "dead entries never drained");
        }
        assert_eq!(calls, n.div_ceil(REAP_BATCH));

        // A10: the reaper, queued by the munmaps, drains them with no
        // further call: a batch on its first run (calls were made since it
        // last ran), the rest on the next (idle).
        unmap_all(0x30_0000_0000);
        let mut barriers = 0;
        while mm.dead_entries() > 0 && barriers < 4 {
            mm.domain().barrier();
            barriers += 1;
        }
        assert_eq!(mm.dead_entries(), 0, "the reaper left {} dead entries", mm.dead_entries());
        assert_eq!(mm.vmas_in_tree(), mm.map_count());
    }
}
