//! TLBs and their shootdown: each simulated CPU caches translations; a
//! writer that removes or weakens one flushes every CPU before it frees
//! what the translation reached.
//!
//! # Owns
//! [`Shootdown`] (per address space: the flush generation, the log of
//! flushed ranges, and the TLB domain that plays the role of the IPI),
//! [`Tlb`] (per CPU: the cached translations and the generation they are
//! valid for), and [`MmuGather`] (per writer call: what to flush and free).
//!
//! # Invariants
//! - T1. An access is one read-side section of the address space's *TLB
//!   domain* (a `rcuvm_rcu::Domain` of its own): the CPU enters it, compares
//!   its TLB's generation with `Shootdown::generation` and flushes what the log
//!   says if it is behind, then looks up, walks and touches the frame, then
//!   leaves. A fault is taken outside the section (it is an exception; the
//!   access restarts).
//! - T2. A flush: the writer has already changed the PTEs; it records the
//!   range in the log slot of generation `g + 1`, publishes `generation = g + 1`
//!   (Release), then waits for a grace period of the TLB domain
//!   (`synchronize_expedited`: a `membarrier` IPI and a wait for CPUs inside
//!   an access). After it, every access that could have used or cached the
//!   old translation has ended, and every later access flushes first. This
//!   is x86's `tlb_gen` scheme (`flush_tlb_mm_range`, `flush_tlb_func`).
//! - T3. Frames and table pages that the old translations reached are freed
//!   only after that acknowledgement (`MmuGather::finish`), tables only
//!   after the VMA domain's grace period too (pgtable.rs PT5).
//! - T4. A CPU that is behind by more than the log holds, or whose log
//!   slot was overwritten while it read it, flushes everything.
//! - T5. The wait of T2 is skipped when every CPU that may cache the old
//!   entries (their CPU bits, pgtable.rs PT6) belongs to the calling
//!   thread, which is not inside an access: those CPUs flush before their
//!   next access (T7), and no other CPU can hold the entries. A writer that unmaps what only its own threads touched sends
//!   no IPI (Linux sends one to every CPU in `mm_cpumask`). CPUs beyond the
//!   first [`Pte::CPU_SLOTS`] share one bit, which always waits.
//! - T6. Unhooked tables need no TLB flush (TLBs cache leaf entries only):
//!   they are freed after a grace period of the TLB domain (no MMU walk is
//!   still inside them) that follows one of the VMA domain (no fault or
//!   smaps walk is), both asynchronous.
//! - T7. A flush that T5 spares the wait publishes no generation either:
//!   the range goes to a log of the calling thread's own, which its CPUs
//!   (and only they: a `Cpu` never leaves its thread) read before their
//!   next access, as T1 says of the shared log. Other threads' CPUs hold none of the
//!   entries, so nothing changes for them: churn on one thread no longer
//!   writes a line that every other thread's next access reads.
//!
//! # Concurrency
//! `Shootdown::flush`: any thread outside an access (writers, and faults
//! that copy on write); flushers serialise on a mutex to write the log, then
//! wait for the grace period outside it. `Tlb`: owned by its CPU's thread.
//! The log is a per-slot seqlock.
//!
//! # Linux
//! `arch/x86/mm/tlb.c` (`tlb_gen`, `flush_tlb_mm_range`, partial flushes
//! under `tlb_single_page_flush_ceiling` = 33 pages), `include/asm-generic/tlb.h`
//! (`struct mmu_gather`, `tlb_finish_mmu`, `tlb_remove_table`). The IPI is a
//! grace period of a domain whose sections are single accesses, which is
//! what an IPI waits for: every CPU to reach an instruction boundary.

use std::cell::{Cell, RefCell};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_utils::CachePadded;
use rcuvm_rcu::Domain;

use crate::frame::Pfn;
use crate::pgtable::{Gather, Pte, UnhookedTable};
use crate::vma::PAGE_SHIFT;

/// Log slots of flushed ranges (T4).
const LOG: usize = 16;
/// Pages over which a flush is a full flush (`tlb_single_page_flush_ceiling`).
pub const FLUSH_CEILING: u64 = 33;
/// Entries of a CPU's TLB (direct-mapped).
pub const TLB_ENTRIES: usize = 256;

/// One log slot: `tag` is the generation it describes (seqlock: 0 while
/// being written).
#[derive(Default)]
struct Slot {
    tag: AtomicU64,
    start: AtomicU64,
    end: AtomicU64,
}

/// The address space's side of TLB shootdown (T2).
pub struct Shootdown {
    domain: Arc<Domain>,
    /// Free CPU slots (bit i: slot i free), for [`Shootdown::claim_cpu`].
    free_slots: AtomicU64,
    /// Serialises flushers (writers, and faults that copy on write).
    writer: CachePadded<std::sync::Mutex<()>>,
    generation: CachePadded<AtomicU64>,
    log: CachePadded<[Slot; LOG]>,
    flushes: CachePadded<AtomicU64>,
    /// Flushes that waited for other CPUs (the rest were local, T5).
    remote: CachePadded<AtomicU64>,
    /// inject.rs: `SkipShootdown` makes `flush` do nothing.
    skip: bool,
}

thread_local! {
    /// CPU bits of the `Cpu`s owned by this thread, per shootdown (by the
    /// TLB domain's id): T5's "the calling thread's CPUs".
    static LOCAL_CPUS: RefCell<Vec<(u64, u64)>> = const { RefCell::new(Vec::new()) };
    /// The local flushes of this thread (T7), for its own CPUs.
    static LOCAL_LOG: LocalLog = const {
        LocalLog { generation: Cell::new(0), ring: RefCell::new([LocalFlush { domain: 0, start: 0, end: 0 }; LOG]) }
    };
}

/// A local flush (T7): the TLB domain's id and the range.
#[derive(Clone, Copy)]
struct LocalFlush {
    domain: u64,
    start: u64,
    end: u64,
}

/// A thread's log of local flushes (T7), of every address space the
/// thread has CPUs in: flush `g` is in `ring[g % LOG]`.
struct LocalLog {
    generation: Cell<u64>,
    ring: RefCell<[LocalFlush; LOG]>,
}

/// This thread's local-flush generation (T7): cheap, read on every access.
#[inline]
fn local_generation() -> u64 {
    LOCAL_LOG.with(|l| l.generation.get())
}

impl std::fmt::Debug for Shootdown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shootdown").field("generation", &self.generation()).finish_non_exhaustive()
    }
}

impl Default for Shootdown {
    fn default() -> Self {
        Shootdown {
            domain: Arc::new(Domain::new()),
            free_slots: AtomicU64::new((1 << Pte::CPU_SLOTS) - 1),
            writer: CachePadded::new(std::sync::Mutex::new(())),
            generation: CachePadded::new(AtomicU64::new(0)),
            log: CachePadded::new(Default::default()),
            flushes: CachePadded::new(AtomicU64::new(0)),
            remote: CachePadded::new(AtomicU64::new(0)),
            skip: false,
        }
    }
}

impl Shootdown {
    /// A shootdown with the address space's injection (inject.rs).
    pub(crate) fn with_injection(i: Option<crate::inject::Injection>) -> Shootdown {
        let skip = crate::inject::active(i, crate::inject::Injection::SkipShootdown);
        Shootdown { skip, ..Shootdown::default() }
    }

    /// The TLB domain (T1): accesses are its read-side sections.
    pub fn domain(&self) -> &Arc<Domain> {
        &self.domain
    }

    /// A CPU bit for a new CPU of the calling thread (T5): a slot of its
    /// own while one is free, else the shared [`Pte::CPU_OTHER`].
    pub(crate) fn claim_cpu(&self) -> u64 {
        let mut free = self.free_slots.load(Ordering::Relaxed);
        let bit = loop {
            if free == 0 {
                break Pte::CPU_OTHER;
            }
            let slot = free.trailing_zeros();
            match self.free_slots.compare_exchange_weak(
                free,
                free & !(1 << slot),
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => break 1 << (Pte::CPU_SHIFT + slot),
                Err(now) => free = now,
            }
        };
        let id = self.domain.id();
        LOCAL_CPUS.with(|l| {
            let mut l = l.borrow_mut();
            match l.iter_mut().find(|(d, _)| *d == id) {
                Some((_, bits)) => *bits |= bit & !Pte::CPU_OTHER,
                None => l.push((id, bit & !Pte::CPU_OTHER)),
            }
        });
        bit
    }

    /// Gives back the bit of a CPU of the calling thread that goes away.
    /// Entries may still carry the bit: a later owner of the slot waits
    /// for them like any other CPU's (conservative).
    pub(crate) fn release_cpu(&self, bit: u64) {
        let id = self.domain.id();
        LOCAL_CPUS.with(|l| {
            let mut l = l.borrow_mut();
            if let Some(i) = l.iter().position(|(d, _)| *d == id) {
                l[i].1 &= !bit;
                // An address space this thread no longer has CPUs in
                // leaves the list: a thread that makes and drops many
                // would otherwise scan every one it ever had on each claim
                // and flush (found by a review: 2.3 s, then 3.4 s, per
                // 3,000 address spaces made on one thread).
                if l[i].1 == 0 {
                    l.swap_remove(i);
                }
            }
        });
        if bit != Pte::CPU_OTHER {
            let slot = bit.trailing_zeros() - Pte::CPU_SHIFT;
            // ORDERING: Release: the slot's next owner starts after this
            // CPU's last access.
            self.free_slots.fetch_or(1 << slot, Ordering::Release);
        }
    }

    /// The CPU bits owned by the calling thread (T5).
    fn local_cpus(&self) -> u64 {
        let id = self.domain.id();
        LOCAL_CPUS.with(|l| l.borrow().iter().find(|(d, _)| *d == id).map_or(0, |(_, b)| *b))
    }

    /// Shootdowns that waited for other CPUs (T5).
    pub fn remote_flushes(&self) -> u64 {
        self.remote.load(Ordering::Relaxed)
    }

    /// The current flush generation.
    pub fn generation(&self) -> u64 {
        // ORDERING: Acquire pairs with the Release in `flush`: a CPU that
        // sees generation g sees the PTE changes made before it.
        self.generation.load(Ordering::Acquire)
    }

    /// Shootdowns done.
    pub fn flushes(&self) -> u64 {
        self.flushes.load(Ordering::Relaxed)
    }

    /// Flushes `[start, end)` from every CPU, and waits for the
    /// acknowledgement of the CPUs in `cpus` (the bits of the entries
    /// removed) unless they are all the calling thread's (T2, T5). Any
    /// thread outside an access.
    pub fn flush(&self, start: u64, end: u64, cpus: u64) {
        if self.skip {
            return; // inject.rs: the bug T2 exists to prevent.
        }
        // T5, T7. (Inside an access, synchronize below panics with a clear
        // message: an access must not make mm calls.)
        if cpus & !self.local_cpus() == 0 && !self.domain.in_read_section() {
            let domain = self.domain.id();
            LOCAL_LOG.with(|l| {
                let g = l.generation.get() + 1;
                l.ring.borrow_mut()[(g as usize) % LOG] = LocalFlush { domain, start, end };
                l.generation.set(g);
            });
            self.flushes.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let lock = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let g = self.generation.load(Ordering::Relaxed) + 1;
        let s = &self.log[(g as usize) % LOG];
        s.tag.store(0, Ordering::Relaxed);
        std::sync::atomic::fence(Ordering::Release);
        s.start.store(start, Ordering::Relaxed);
        s.end.store(end, Ordering::Relaxed);
        // ORDERING: Release: a reader that sees the tag sees start and end.
        s.tag.store(g, Ordering::Release);
        // ORDERING: Release publishes the PTE changes and the slot (T2).
        self.generation.store(g, Ordering::Release);
        self.flushes.fetch_add(1, Ordering::Relaxed);
        drop(lock);
        self.remote.fetch_add(1, Ordering::Relaxed);
        self.domain.synchronize_expedited();
    }

    /// The range logged for generation `g`, if the slot still describes it.
    fn logged(&self, g: u64) -> Option<(u64, u64)> {
        let s = &self.log[(g as usize) % LOG];
        // ORDERING: Acquire pairs with the tag's Release store.
        if s.tag.load(Ordering::Acquire) != g {
            return None;
        }
        let r = (s.start.load(Ordering::Relaxed), s.end.load(Ordering::Relaxed));
        std::sync::atomic::fence(Ordering::Acquire);
        (s.tag.load(Ordering::Relaxed) == g).then_some(r)
    }
}

/// A CPU's TLB: a direct-mapped cache of leaf entries, tagged by virtual
/// page number (T1, T4).
pub struct Tlb {
    /// `(vpn + 1, pte)`; tag 0 is an empty entry.
    entries: Box<[(u64, Pte); TLB_ENTRIES]>,
    /// The shootdown generation this TLB is valid for.
    generation: u64,
    /// The owning thread's local-flush generation it is valid for (T7).
    local_generation: u64,
    /// Full and ranged flushes done, for statistics.
    pub full_flushes: u64,
    /// Ranged flushes done.
    pub range_flushes: u64,
}

impl Default for Tlb {
    fn default() -> Self {
        Tlb {
            entries: Box::new([(0, Pte(0)); TLB_ENTRIES]),
            generation: 0,
            // Made on the thread that owns it (a `Cpu` is `!Send`).
            local_generation: local_generation(),
            full_flushes: 0,
            range_flushes: 0,
        }
    }
}

impl std::fmt::Debug for Tlb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tlb").field("generation", &self.generation).finish_non_exhaustive()
    }
}

impl Tlb {
    /// Brings this TLB up to `sd`'s generation (T2, T4). Called at the start
    /// of every access, inside the TLB domain's section.
    #[inline]
    pub fn sync(&mut self, sd: &Shootdown) {
        let now = sd.generation();
        if now != self.generation {
            self.catch_up(sd, now);
        }
        let local = local_generation();
        if local != self.local_generation {
            self.catch_up_local(sd.domain.id(), local);
        }
    }

    /// T7: the local flushes of this thread since the last access, those
    /// of this TLB's address space; everything when the log wrapped.
    #[cold]
    fn catch_up_local(&mut self, domain: u64, now: u64) {
        let mut full = now - self.local_generation >= LOG as u64;
        if !full {
            let ring = LOCAL_LOG.with(|l| *l.ring.borrow());
            for g in self.local_generation + 1..=now {
                let f = ring[(g as usize) % LOG];
                if f.domain != domain {
                    continue;
                }
                if (f.end - f.start) >> PAGE_SHIFT > FLUSH_CEILING {
                    full = true;
                    break;
                }
                self.flush_range(f.start, f.end);
            }
        }
        self.end_catch_up(full);
        self.local_generation = now;
    }

    #[cold]
    fn catch_up(&mut self, sd: &Shootdown, now: u64) {
        let behind = now - self.generation;
        let mut full = behind as usize >= LOG;
        if !full {
            for g in self.generation + 1..=now {
                match sd.logged(g) {
                    Some((s, e)) if (e - s) >> PAGE_SHIFT <= FLUSH_CEILING => self.flush_range(s, e),
                    _ => {
                        full = true;
                        break;
                    }
                }
            }
        }
        self.end_catch_up(full);
        self.generation = now;
    }

    /// Ends a catch-up (T1, T7): everything goes if a range was too large
    /// or the log fell behind (T4); the flush is counted either way.
    fn end_catch_up(&mut self, full: bool) {
        if full {
            self.entries.fill((0, Pte(0)));
            self.full_flushes += 1;
        } else {
            self.range_flushes += 1;
        }
    }

    fn flush_range(&mut self, s: u64, e: u64) {
        let mut va = s;
        while va < e {
            let vpn = va >> PAGE_SHIFT;
            let slot = &mut self.entries[(vpn as usize) % TLB_ENTRIES];
            if slot.0 == vpn + 1 {
                *slot = (0, Pte(0));
            }
            va += 1 << PAGE_SHIFT;
        }
    }

    /// The cached entry for `va`.
    #[inline]
    pub fn lookup(&self, va: u64) -> Option<Pte> {
        let vpn = va >> PAGE_SHIFT;
        let (tag, pte) = self.entries[(vpn as usize) % TLB_ENTRIES];
        (tag == vpn + 1).then_some(pte)
    }

    /// Caches `pte` for `va` (a fill after a walk).
    #[inline]
    pub fn fill(&mut self, va: u64, pte: Pte) {
        let vpn = va >> PAGE_SHIFT;
        self.entries[(vpn as usize) % TLB_ENTRIES] = (vpn + 1, pte);
    }
}

/// What one writer call unmaps or changes: the range to flush, the frames
/// and the tables to free after the flush (`struct mmu_gather`, T3).
#[derive(Debug, Default)]
pub struct MmuGather {
    start: u64,
    end: u64,
    /// The CPUs that may cache what is flushed (PT6).
    cpus: u64,
    /// Frames no longer mapped; freed after the flush.
    pub(crate) frames: Vec<Pfn>,
    /// Tables unhooked, with their level; freed after the flush and a
    /// grace period of the VMA domain.
    pub(crate) tables: Vec<(UnhookedTable, u32)>,
    /// The range notifiers were told of before the change, to end after
    /// the flush (notifier.rs N1).
    pub(crate) notify: Option<crate::notifier::NotifierRange>,
}

impl Gather for MmuGather {
    fn flush_page(&mut self, va: u64, cpus: u64) {
        self.cpus |= cpus;
        if self.start >= self.end {
            (self.start, self.end) = (va, va + (1 << PAGE_SHIFT));
        } else {
            self.start = self.start.min(va);
            self.end = self.end.max(va + (1 << PAGE_SHIFT));
        }
    }
    fn frame(&mut self, pfn: Pfn) {
        self.frames.push(pfn);
    }
    fn table(&mut self, t: UnhookedTable, level: u32, _lo: u64, _hi: u64) {
        // T6: no flush; freed after both grace periods.
        self.tables.push((t, level));
    }
}

impl MmuGather {
    /// Whether anything needs a shootdown.
    pub(crate) fn needs_flush(&self) -> bool {
        self.start < self.end
    }

    /// The range to flush and the CPUs that may cache it.
    pub(crate) fn range(&self) -> (u64, u64, u64) {
        (self.start, self.end, self.cpus)
    }
}

#[cfg(all(test, not(rcuvm_loom)))]
mod tests {
    use super::*;

    #[test]
    fn a_cpu_behind_flushes_the_logged_range_only() {
        let sd = Shootdown::default();
        let mut tlb = Tlb::default();
        tlb.fill(0x1000, Pte::new(1, true));
        tlb.fill(0x9000, Pte::new(2, true));
        sd.flush(0x1000, 0x2000, Pte::CPU_OTHER);
        tlb.sync(&sd);
        assert_eq!(tlb.lookup(0x1000), None);
        assert_eq!(tlb.lookup(0x9000), Some(Pte::new(2, true)));
        assert_eq!(tlb.range_flushes, 1);
    }

    #[test]
    fn far_behind_or_large_flushes_everything() {
        let sd = Shootdown::default();
        let mut tlb = Tlb::default();
        tlb.fill(0x9000, Pte::new(2, true));
        for _ in 0..LOG + 1 {
            sd.flush(0x1000, 0x2000, 0);
        }
        tlb.sync(&sd);
        assert_eq!(tlb.lookup(0x9000), None);
        tlb.fill(0x9000, Pte::new(2, true));
        sd.flush(0, 0x100_0000, 0);
        tlb.sync(&sd);
        assert_eq!(tlb.lookup(0x9000), None);
        assert_eq!(tlb.full_flushes, 2);
    }

    /// A thread that made CPUs in many address spaces and dropped them
    /// keeps no entry for them (`release_cpu`).
    #[test]
    fn a_thread_keeps_no_entry_for_address_spaces_it_left() {
        let kept = std::sync::Arc::new(crate::AddressSpace::new());
        let _cpu = kept.cpu();
        for _ in 0..50 {
            let mm = std::sync::Arc::new(crate::AddressSpace::new());
            drop(mm.cpu());
        }
        LOCAL_CPUS.with(|l| assert_eq!(l.borrow().len(), 1, "only the address space still in use"));
    }
}
