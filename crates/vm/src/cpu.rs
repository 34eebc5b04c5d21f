//! Simulated CPUs: memory accesses through a TLB, a page walk, and faults.
//!
//! # Owns
//! [`Cpu`]: one per simulated thread; its TLB, its stock of free frames
//! and its counters.
//!
//! # Invariants
//! - C1. An access is one section of the address space's TLB domain
//!   (tlb.rs T1): sync the TLB with the shootdown generation, look up,
//!   walk on a miss (filling the TLB with present entries only), check the
//!   rights, touch the frame's word, leave. A shootdown that started after
//!   the section began waits for it to end.
//! - C2. A fault runs outside that section (an exception; the access then
//!   restarts from the TLB), so a writer waiting for a shootdown never
//!   waits for a fault that waits for the writer.
//! - C3. Bad accesses return an [`AccessError`] (the signal Linux would
//!   send); they never panic.
//!
//! - C5. Each access re-reads its frame's generation at its end: a change
//!   means the frame was freed while in use (a broken shootdown); it is
//!   counted ([`AddressSpace::use_after_free_accesses`]) and reported in
//!   [`Touched`], never silent.
//! - C6. With the `record` feature and a recorder, each access is timed
//!   around the whole of C1–C5 (faults included) and appended to the
//!   CPU's own log (record.rs H2, H4); a walk also notes its leaf table's
//!   generation, and a table freed before the access ends counts as C5's
//!   use after free (the table is the walk's, until the TLB domain's grace
//!   period: tlb.rs T6). Without the feature the access path is
//!   unchanged.
//! - C7. An access at or above `task_size` is `SEGV_MAPERR` before any
//!   lookup: the page tables map 48 bits and their walk drops the bits
//!   above, so such an address would reach a low page (and keep a TLB
//!   entry a munmap of that page does not flush). A snapshot's gate area
//!   (`[vsyscall]`, mmap.rs P9) is shown by maps, not accessible.
//! - C4. A CPU caches an entry only after its bit is in it
//!   (`PageTable::walk_for`, pgtable.rs PT3), and it belongs to the thread
//!   that made it (`!Send`), so a writer on that thread knows its CPUs are
//!   between accesses (tlb.rs T5).
//!
//! # Concurrency
//! A `Cpu` is neither `Send` nor `Sync`: it belongs to the thread that made
//! it (make one per thread with [`AddressSpace::cpu`] inside the thread).
//!
//! # Linux
//! The MMU: x86-64's TLB lookup, hardware page walk and `#PF` with its
//! error code (present, write), then `exc_page_fault` → `handle_mm_fault`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::fault::{self, AccessError, FaultStats};
use crate::frame::{FrameCache, WORDS};
use crate::mm::AddressSpace;

/// A simulated CPU running threads of one address space.
///
/// Make one per thread, inside the thread ([`AddressSpace::cpu`]); it
/// cannot move to another (C4), so this does not compile:
/// ```compile_fail
/// use std::sync::Arc;
/// let mm = Arc::new(rcuvm::AddressSpace::new());
/// let mut cpu = mm.cpu();
/// std::thread::spawn(move || cpu.read(0x1000)); // `Cpu` is not `Send`
/// ```
pub struct Cpu {
    mm: Arc<AddressSpace>,
    tlb: crate::tlb::Tlb,
    frames: FrameCache,
    /// The last VMA a fault used (fault.rs FL6).
    vmacache: Option<Arc<crate::vma::Vma>>,
    stats: CpuStats,
    /// This CPU's bit in the PTEs it caches (C4).
    bit: u64,
    /// C4: bound to its thread.
    _not_send: std::marker::PhantomData<*const ()>,
    /// C6: this CPU's id and its accesses, merged into the recorder on drop.
    #[cfg(feature = "record")]
    log: Option<(u32, Vec<crate::record::AccessEvent>)>,
}

impl std::fmt::Debug for Cpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cpu").field("stats", &self.stats).finish_non_exhaustive()
    }
}

/// A CPU's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuStats {
    /// Accesses completed.
    pub accesses: u64,
    /// TLB misses (page walks).
    pub tlb_misses: u64,
    /// Fault counters.
    pub fault: FaultStats,
}

/// What one access found (for the checker): the frame and its generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Touched {
    /// The frame accessed.
    pub pfn: u64,
    /// Its generation when the access began.
    pub generation: u64,
    /// The frame was freed while the access used it (its generation moved
    /// between the lookup and the end of the access): a use after free
    /// that a correct shootdown makes impossible (C5).
    pub freed_during: bool,
}

/// Faults one access may take before it is declared livelocked; a safe
/// strategy needs at most a few (a copy-on-write after a read fault, a
/// race lost to a writer).
const MAX_FAULTS: u32 = 1 << 16;

impl Cpu {
    /// A CPU for `mm`.
    pub fn new(mm: Arc<AddressSpace>) -> Cpu {
        let bit = mm.hw().tlb.claim_cpu();
        Cpu {
            tlb: Default::default(),
            frames: FrameCache::default(),
            vmacache: None,
            stats: CpuStats::default(),
            #[cfg(feature = "record")]
            log: mm.recorder().map(|r| (r.cpu_id(), Vec::new())),
            bit,
            _not_send: std::marker::PhantomData,
            mm,
        }
    }

    /// The address space.
    pub fn mm(&self) -> &Arc<AddressSpace> {
        &self.mm
    }

    /// Counters.
    pub fn stats(&self) -> CpuStats {
        self.stats
    }

    /// Reads the word at `va` (8-byte aligned). For bytes at any address,
    /// and copies across pages, see [`Cpu::read_bytes`].
    ///
    /// # Errors
    /// The signal Linux would send (C3).
    pub fn read(&mut self, va: u64) -> Result<u64, AccessError> {
        // H1 costs a clock read: only a CPU that records pays it.
        #[cfg(feature = "record")]
        let start = if self.log.is_some() { crate::record::now() } else { 0 };
        let mut v = 0;
        let r = self.access_unrecorded(va, false, |w| v = w.load(Ordering::Relaxed));
        #[cfg(feature = "record")]
        self.record(va, false, v, r, start);
        r.map(|_| v)
    }

    /// Writes `value` to the word at `va` (8-byte aligned). For bytes at
    /// any address, see [`Cpu::write_bytes`].
    ///
    /// # Errors
    /// The signal Linux would send (C3).
    pub fn write(&mut self, va: u64, value: u64) -> Result<(), AccessError> {
        // H1 costs a clock read: only a CPU that records pays it.
        #[cfg(feature = "record")]
        let start = if self.log.is_some() { crate::record::now() } else { 0 };
        let r = self.access_unrecorded(va, true, |w| w.store(value, Ordering::Relaxed));
        #[cfg(feature = "record")]
        self.record(va, true, value, r, start);
        r.map(|_| ())
    }

    /// Runs `op` on the word at `va` inside one access (C1) and tells
    /// which frame it touched.
    ///
    /// # Errors
    /// The signal Linux would send (C3).
    ///
    /// `op` should not make another access of this address space (through
    /// another `Cpu`): if that one faults and its fault waits for the mmap
    /// lock (always under `mmap-lock`, on contention under the others),
    /// a writer holding the lock may be waiting for this access to end, and
    /// neither returns. Under `rcu-sync`, `rcu-dead` and `rcu-refcount` a
    /// nested access that would grow a stack is refused before it takes
    /// the mmap lock (`SEGV_MAPERR`, fault.rs FL8); under `mmap-lock` and
    /// `vma-lock` its fault takes the lock first.
    ///
    /// # Panics
    /// If `op` makes an mm call (`mmap`, `munmap`…) on this address space:
    /// the call would wait for this access to end (mm.rs A11).
    pub fn access(
        &mut self,
        va: u64,
        write: bool,
        op: impl FnMut(&AtomicU64),
    ) -> Result<Touched, AccessError> {
        // H1 costs a clock read: only a CPU that records pays it.
        #[cfg(feature = "record")]
        let start = if self.log.is_some() { crate::record::now() } else { 0 };
        let r = self.access_unrecorded(va, write, op);
        #[cfg(feature = "record")]
        self.record(va, write, 0, r, start);
        r
    }

    /// The clock at an access's start (H1), read only by a CPU that
    /// records.
    #[cfg(feature = "record")]
    pub(crate) fn record_start(&self) -> u64 {
        if self.log.is_some() { crate::record::now() } else { 0 }
    }

    /// Appends an access to this CPU's log (C6, record.rs H2, H4).
    #[cfg(feature = "record")]
    pub(crate) fn record(
        &mut self,
        va: u64,
        write: bool,
        value: u64,
        result: Result<Touched, AccessError>,
        start: u64,
    ) {
        if let Some((cpu, log)) = &mut self.log {
            let end = crate::record::now();
            log.push(crate::record::AccessEvent { cpu: *cpu, va, write, value, result, start, end });
        }
    }

    /// The access proper (C1–C5), of one word.
    fn access_unrecorded(
        &mut self,
        va: u64,
        write: bool,
        mut op: impl FnMut(&AtomicU64),
    ) -> Result<Touched, AccessError> {
        if va % 8 != 0 {
            return Err(AccessError::Unaligned);
        }
        self.access_page(va, write, |page| op(&page[((va >> 3) & 511) as usize]))
    }

    /// One access (C1–C5) that hands `op` the whole page holding `va`, at
    /// any alignment: the word accesses above and the byte copies
    /// (copy.rs) are made of it.
    #[inline(always)]
    pub(crate) fn access_page(
        &mut self,
        va: u64,
        write: bool,
        mut op: impl FnMut(&[AtomicU64; WORDS]),
    ) -> Result<Touched, AccessError> {
        let mm = &*self.mm;
        // C7: nothing user-accessible lies at or above `task_size` (the
        // tables map 48 bits, and the walk would drop the bits above:
        // found by a review, `va | 1 << 48` read `va`'s page).
        if va >= mm.config().task_size {
            return Err(AccessError::MapErr);
        }
        let hw = mm.hw();
        for _ in 0..MAX_FAULTS {
            {
                let _section = hw.tlb.domain().read();
                self.tlb.sync(&hw.tlb);
                // C6: the leaf table a walk goes through, and its generation.
                #[cfg(feature = "record")]
                let mut walked = None;
                let pte = match self.tlb.lookup(va) {
                    Some(p) if !write || p.writable() => Some(p),
                    _ => {
                        self.stats.tlb_misses += 1;
                        #[cfg(feature = "record")]
                        {
                            // ORDERING: Acquire pairs with free_tree's Release
                            // bump (pgtable.rs PT1), as the frame's generation does.
                            walked =
                                hw.pt.pte_table(va, false).map(|t| (t, t.generation.load(Ordering::Acquire)));
                        }
                        let p = hw.pt.walk_for(va, self.bit);
                        if p.present() {
                            self.tlb.fill(va, p);
                        }
                        p.present().then_some(p).filter(|p| !write || p.writable())
                    }
                };
                if let Some(p) = pte {
                    let f = hw.phys.frame(p.pfn());
                    let generation = f.generation.load(Ordering::Acquire);
                    op(&f.data);
                    // C5: still the same frame at the end of the access?
                    let freed_during = f.generation.load(Ordering::Acquire) != generation;
                    // C6: and the table the walk used (pgtable.rs PT1, PT5).
                    // ORDERING: Acquire, as the frame's generation above.
                    #[cfg(feature = "record")]
                    let freed_during = freed_during
                        || walked.is_some_and(|(t, g)| t.generation.load(Ordering::Acquire) != g);
                    if freed_during {
                        hw.use_after_free.fetch_add(1, Ordering::Relaxed);
                    }
                    self.stats.accesses += 1;
                    return Ok(Touched { pfn: p.pfn(), generation, freed_during });
                }
            }
            // C2: the fault runs outside the section.
            fault::handle_mm_fault(
                mm,
                va,
                write,
                &mut self.frames,
                &mut self.vmacache,
                &mut self.stats.fault,
            )?;
        }
        // C3: never a panic; a fault path that livelocks is a bug the
        // checker reports, the access gives up as a machine would hang.
        Err(AccessError::Livelock)
    }

    /// Drops every cached translation (a context switch to another mm).
    pub fn flush_tlb(&mut self) {
        self.tlb = Default::default();
    }
}

impl Drop for Cpu {
    fn drop(&mut self) {
        #[cfg(feature = "record")]
        if let (Some(rec), Some((_, log))) = (self.mm.recorder(), self.log.take()) {
            rec.merge(log);
        }
        self.frames.drain(&self.mm.hw().phys);
        self.mm.hw().tlb.release_cpu(self.bit);
    }
}
