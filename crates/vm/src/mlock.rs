//! `mlock`, `mlock2`, `munlock`, `mlockall`, `munlockall`: `VM_LOCKED` and
//! `VM_LOCKONFAULT` on VMAs, with Linux's checks, splits and merges, and
//! the population of locked ranges through the fault path.
//!
//! # Owns
//! The `VM_LOCKED`/`VM_LOCKONFAULT` bits of `vm_flags`, `mm->def_flags`
//! (`MmCall::def_flags`), and population (`fault_in`, shared with madvise).
//!
//! # Invariants
//! - L1. `mlock`/`munlock` round the start down to its page and the length
//!   up (`len + offset_in_page(start)`); a range that wraps is `EINVAL`, an
//!   empty one succeeds. VMAs are changed in address order and a hole stops
//!   the walk with `ENOMEM`, the VMAs before it changed (as `mprotect`,
//!   mprotect.rs Q1; the host kernel confirmed it: no whole-range check
//!   first).
//! - L2. A VMA whose lock bits already match, or that is `VM_SPECIAL`,
//!   hugetlb or droppable, is left alone (`mlock_fixup()`); others go through
//!   `set_flags` (mprotect.rs Q2, Q4), so a refused split is `ENOMEM` with
//!   the splits made before it kept.
//! - L3. Population (`__mm_populate()`) runs after the flags are set (and
//!   after the call, L5) and faults the pages in through the fault path
//!   (fault.rs FL9): a private
//!   writable VMA takes write faults (a new anonymous page each, copied
//!   from the zero page or the file, or its own page reused), any other
//!   accessible VMA read faults (the zero page for private anonymous
//!   memory, the page cache for files and shared memory). The first write
//!   fault gives the VMA its `anon_vma`, a compatible neighbour's if it
//!   has one (next first, then prev), as `find_mergeable_anon_vma()`
//!   does. `VM_LOCKONFAULT` VMAs fault nothing; a VMA with no access bit
//!   cannot be faulted (`EFAULT`, which `mlock` returns as `ENOMEM` after
//!   locking it, and which stops the walk); out of frames is `ENOMEM`
//!   (`EAGAIN` from `mlock`). Pages faulted in before an error stay.
//! - L4. `mlockall(MCL_FUTURE)` puts `VM_LOCKED` (and with `MCL_ONFAULT`
//!   `VM_LOCKONFAULT`) into `def_flags`, which every later `mmap` and `brk`
//!   VMA takes; any other `mlockall` and `munlockall` clear it first.
//!   `mlockall` ignores a VMA it cannot change (a refused split).
//! - L5. Population runs after the call, under the mmap *read* lock, as
//!   Linux's `mm_populate()` after `mmap_write_unlock()` (`mmap`, `brk`,
//!   `mremap`, `mlock`, `mlockall`) and `madvise_populate()` under the
//!   read lock: a call asks for it ([`Populate`]) and the `AddressSpace`
//!   method runs it once the write lock is dropped. No mm call runs
//!   meanwhile; CPUs' faults do (and under `mmap-lock`, maps readers), as
//!   in Linux. Between the two locks another call may change the range:
//!   population finds the VMAs afresh (holes skipped, `MADV_POPULATE_*`'s
//!   `ENOMEM`), as `__mm_populate()` does. The exception is `mprotect` of a
//!   locked read-only VMA to writable (mprotect.rs Q5), populated under its
//!   write lock, as in `mprotect_fixup()`. `MADV_POPULATE_*` takes no write
//!   lock at all (madvise.rs D6). Two populations may run at once; their
//!   faults settle as CPUs' do (the PTL, fault.rs FL1). Why: under
//!   `mmap-lock` a large `MAP_POPULATE` held every other thread's faults
//!   for its whole length. Not modelled: Linux may drop the lock in the
//!   middle (`VM_FAULT_RETRY`, then finds the VMAs again); rcuvm holds it
//!   to the end.
//!
//! # Concurrency
//! The flags: mmap write lock (taken by the `AddressSpace` methods).
//! Population ([`Populator`]): the mmap read or write lock, beside CPUs'
//! faults (fault.rs FL9).
//!
//! # Linux
//! `mm/mlock.c`: `do_mlock()`, `apply_vma_lock_flags()`, `mlock_fixup()`,
//! `apply_mlockall_flags()`, the syscalls; `__mm_populate()` and
//! `populate_vma_page_range()` in `mm/gup.c`; `anon_vma_prepare()` and
//! `find_mergeable_anon_vma()` in `mm/rmap.c`, `mm/vma.c`.
//!
//! Not modelled: keeping locked pages resident (nothing in rcuvm evicts a
//! page, locked or not) and `locked_vm`; `RLIMIT_MEMLOCK` (rcuvm acts as
//! a process with `CAP_IPC_LOCK`, as root is); population errors other
//! than an inaccessible VMA and out of frames (a file shorter than its
//! mapping: rcuvm's files have no end).

use std::sync::Arc;

use rcuvm_maple::MapleTree;

use crate::fault::AccessError;
use crate::frame::FrameCache;
use crate::mm::Hw;
use crate::mmap::{MmCall, VM_SPECIAL};
use crate::uapi::{Errno, MCL_CURRENT, MCL_FUTURE, MCL_ONFAULT, MLOCK_ONFAULT};
use crate::vma::{PAGE_SIZE, VmFlags, Vma};

/// `VM_LOCKED_MASK`.
pub(crate) const LOCK_BITS: VmFlags = VmFlags::LOCKED.union(VmFlags::LOCKONFAULT);

impl MmCall<'_> {
    /// `do_mlock()` with `VM_LOCKED` or `VM_LOCKED | VM_LOCKONFAULT` (L1–L3).
    pub(crate) fn mlock(&mut self, start: u64, len: u64, lock: VmFlags) -> Result<(), Errno> {
        let (start, len) = round(start, len);
        self.apply_vma_lock_flags(start, len, lock)?;
        self.populate(start, start.wrapping_add(len), false);
        Ok(())
    }

    /// `mlock2(2)`.
    pub(crate) fn mlock2(&mut self, start: u64, len: u64, flags: u32) -> Result<(), Errno> {
        if flags & !MLOCK_ONFAULT != 0 {
            return Err(Errno::Einval);
        }
        let lock = if flags & MLOCK_ONFAULT != 0 { LOCK_BITS } else { VmFlags::LOCKED };
        self.mlock(start, len, lock)
    }

    /// `munlock(2)`.
    pub(crate) fn munlock(&mut self, start: u64, len: u64) -> Result<(), Errno> {
        let (start, len) = round(start, len);
        self.apply_vma_lock_flags(start, len, VmFlags::empty())
    }

    /// `apply_vma_lock_flags()` (L1, L2).
    fn apply_vma_lock_flags(&mut self, start: u64, len: u64, lock: VmFlags) -> Result<(), Errno> {
        let Some(end) = start.checked_add(len) else { return Err(Errno::Einval) };
        if end == start {
            return Ok(());
        }
        let Some(first) = self.vma_at(start) else { return Err(Errno::Enomem) };
        let mut tmp = first.start;
        for v in self.overlapping(start, end) {
            if v.start != tmp {
                return Err(Errno::Enomem); // L1: a hole
            }
            let (s, e) = (start.max(v.start), end.min(v.end));
            self.mlock_fixup(&v, s, e, (v.flags - LOCK_BITS) | lock)?;
            tmp = e;
        }
        if tmp < end {
            return Err(Errno::Enomem);
        }
        Ok(())
    }

    /// `mlock_fixup()` (L2).
    fn mlock_fixup(&mut self, v: &Vma, s: u64, e: u64, newflags: VmFlags) -> Result<(), Errno> {
        if newflags == v.flags || v.flags.intersects(VM_SPECIAL | VmFlags::HUGETLB | VmFlags::DROPPABLE) {
            return Ok(());
        }
        self.set_flags(v, s, e, newflags)
    }

    /// `mlockall(2)` (L4).
    pub(crate) fn mlockall(&mut self, flags: u32) -> Result<(), Errno> {
        let known = MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT;
        if flags == 0 || flags & !known != 0 || flags == MCL_ONFAULT {
            return Err(Errno::Einval);
        }
        self.apply_mlockall_flags(flags);
        if flags & MCL_CURRENT != 0 {
            self.populate(0, self.cfg.task_size, true);
        }
        Ok(())
    }

    /// `munlockall(2)` (L4).
    pub(crate) fn munlockall(&mut self) {
        self.apply_mlockall_flags(0);
    }

    /// `apply_mlockall_flags()` (L4).
    fn apply_mlockall_flags(&mut self, flags: u32) {
        let onfault = if flags & MCL_ONFAULT != 0 { VmFlags::LOCKONFAULT } else { VmFlags::empty() };
        self.def_flags.remove(LOCK_BITS);
        if flags & MCL_FUTURE != 0 {
            *self.def_flags |= VmFlags::LOCKED | onfault;
            if flags & MCL_CURRENT == 0 {
                return;
            }
        }
        let add = if flags & MCL_CURRENT != 0 { VmFlags::LOCKED | onfault } else { VmFlags::empty() };
        for v in self.overlapping(0, u64::MAX) {
            // A VMA merged into its predecessor in this walk is stale here,
            // but then its flags already match and it is skipped (L2).
            // Errors are ignored, as Linux does.
            let _ = self.mlock_fixup(&v, v.start, v.end, (v.flags - LOCK_BITS) | add);
        }
    }

    /// Asks for `[start, end)` to be populated after this call's write
    /// lock is dropped (L3, L5): `__mm_populate()`, errors ignored unless
    /// `ignore_errors` is false (then they are the caller's: `mlock`).
    pub(crate) fn populate(&mut self, start: u64, end: u64, ignore_errors: bool) {
        self.request_population(Populate::Range { start, end, ignore_errors });
    }

    /// L5: one population per call, run by the `AddressSpace` method once
    /// the call's write lock is dropped.
    pub(crate) fn request_population(&mut self, p: Populate) {
        debug_assert!(self.populate.is_none(), "one population per mm call");
        *self.populate = Some(p);
    }

    /// `populate_vma_page_range()` for `[s, e)`, inside one VMA, under
    /// this call's write lock: `mprotect_fixup()`'s population of a locked
    /// VMA made writable (mprotect.rs Q5).
    pub(crate) fn populate_vma(&mut self, s: u64, e: u64) -> Result<(), Errno> {
        Populator::new(self.hw, self.tree, self.cfg.task_size).populate_vma(s, e)
    }
}

/// A population an mm call asks for (L5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Populate {
    /// `__mm_populate(start, end - start, ignore_errors)` (L3).
    Range {
        /// First byte.
        start: u64,
        /// End (exclusive).
        end: u64,
        /// mmap, brk, mremap and `mlockall` ignore failures; `mlock` does not.
        ignore_errors: bool,
    },
    /// `madvise_populate()` (madvise.rs D6).
    Advice {
        /// First byte.
        start: u64,
        /// End (exclusive).
        end: u64,
        /// `MADV_POPULATE_WRITE` (else `MADV_POPULATE_READ`).
        write: bool,
    },
}

/// Population (L3, L5, madvise.rs D6) over an address space's VMAs, by a
/// thread that holds its mmap lock (read or write), so that no VMA in the
/// range changes while it faults pages in; CPUs' faults may run meanwhile
/// (the fault path's PTL settles them, fault.rs FL9).
pub(crate) struct Populator<'a> {
    hw: &'a Hw,
    tree: &'a MapleTree<Arc<Vma>>,
    task_size: u64,
}

impl<'a> Populator<'a> {
    pub(crate) fn new(hw: &'a Hw, tree: &'a MapleTree<Arc<Vma>>, task_size: u64) -> Self {
        Populator { hw, tree, task_size }
    }

    /// Runs `p`, one tree lookup per VMA.
    pub(crate) fn run(&self, p: Populate) -> Result<(), Errno> {
        match p {
            Populate::Range { start, end, ignore_errors } => self.mm_populate(start, end, ignore_errors),
            Populate::Advice { start, end, write } => self.madvise_populate(start, end, write),
        }
    }

    /// The first VMA (not a dead entry, not the gate area) that ends above
    /// `at`, if it starts below `end`.
    fn next_vma(&self, at: u64, end: u64) -> Option<Arc<Vma>> {
        let g = self.tree.domain().read();
        let mut at = at;
        loop {
            let e = self.tree.find(at, &g)?;
            if e.range.start >= end || e.value.start >= self.task_size {
                return None;
            }
            if !e.value.is_dead() {
                return Some(e.to_arc());
            }
            at = e.range.end;
        }
    }

    /// `__mm_populate()` over `[start, end)` (L3): each VMA in turn, holes
    /// skipped; the first error stops the walk unless `ignore_errors`.
    fn mm_populate(&self, start: u64, end: u64, ignore_errors: bool) -> Result<(), Errno> {
        let mut at = start;
        while at < end {
            let Some(v) = self.next_vma(at, end) else { break };
            let (s, e) = (at.max(v.start), end.min(v.end));
            at = e;
            if v.flags.intersects(VmFlags::IO | VmFlags::PFNMAP) {
                continue;
            }
            if let Err(err) = self.populate_in(&v, s, e) {
                if !ignore_errors {
                    return Err(err);
                }
            }
        }
        Ok(())
    }

    /// `populate_vma_page_range()` for `[s, e)`, inside one VMA (L3): a
    /// write fault for a private writable VMA (which breaks copy-on-write),
    /// a read fault for any other accessible one (`FOLL_FORCE`: x86 reads
    /// with any right), page by page.
    fn populate_vma(&self, s: u64, e: u64) -> Result<(), Errno> {
        let Some(v) = self.next_vma(s, s + 1).filter(|v| v.start <= s) else { return Err(Errno::Efault) };
        self.populate_in(&v, s, e)
    }

    /// [`Self::populate_vma`] with the VMA found.
    fn populate_in(&self, v: &Vma, s: u64, e: u64) -> Result<(), Errno> {
        debug_assert!(s < e && s % PAGE_SIZE == 0 && v.start <= s);
        if v.flags.contains(VmFlags::LOCKONFAULT) {
            return Ok(());
        }
        if !v.flags.intersects(VmFlags::READ | VmFlags::WRITE | VmFlags::EXEC) {
            // check_vma_flags(): no FOLL_FORCE for an inaccessible VMA.
            return Err(Errno::Efault);
        }
        let write = v.flags & (VmFlags::WRITE | VmFlags::SHARED) == VmFlags::WRITE;
        self.fault_in(v, s, e.min(v.end), write)
    }

    /// `madvise_populate()` over `[start, end)` (madvise.rs D6).
    fn madvise_populate(&self, start: u64, end: u64, write: bool) -> Result<(), Errno> {
        let need = if write { VmFlags::WRITE } else { VmFlags::READ };
        let mut at = start;
        while at < end {
            let Some(v) = self.next_vma(at, at + 1).filter(|v| v.start <= at) else {
                return Err(Errno::Enomem);
            };
            if !v.flags.contains(need) || v.flags.intersects(VmFlags::IO | VmFlags::PFNMAP) {
                return Err(Errno::Einval);
            }
            let e = end.min(v.end);
            self.fault_in(&v, at, e, write)?;
            at = e;
        }
        Ok(())
    }

    /// Faults `[s, e)` of `v` (in the tree) in, page by page, as accesses
    /// would (fault.rs FL9). The first page that cannot be faulted in
    /// stops it: out of frames is `ENOMEM`, anything else `EFAULT`; the
    /// pages before it stay.
    fn fault_in(&self, v: &Vma, s: u64, e: u64, write: bool) -> Result<(), Errno> {
        let mut cache = FrameCache::default();
        let mut res = Ok(());
        let mut page = s;
        while page < e {
            if let Err(err) = crate::fault::fault_in_page(self.hw, self.tree, v, page, write, &mut cache) {
                res = Err(if err == AccessError::Oom { Errno::Enomem } else { Errno::Efault });
                break;
            }
            page += PAGE_SIZE;
        }
        // Frames the faults took for their per-CPU cache go back.
        cache.drain(&self.hw.phys);
        res
    }
}

/// `start` rounded down to its page, `len + offset_in_page(start)` rounded
/// up, wrapping as the kernel's `size_t` arithmetic does (L1).
fn round(start: u64, len: u64) -> (u64, u64) {
    let off = start % PAGE_SIZE;
    let len = len.wrapping_add(off).wrapping_add(PAGE_SIZE - 1) & !(PAGE_SIZE - 1);
    (start - off, len)
}

/// `__mlock_posix_error_return()`: what `mlock` returns for a population
/// error (L3).
pub(crate) fn mlock_error(e: Errno) -> Errno {
    match e {
        Errno::Efault => Errno::Enomem,
        Errno::Enomem => Errno::Eagain,
        e => e,
    }
}
