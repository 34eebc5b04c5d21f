//! `madvise`: the advices that change `vm_flags` (and so split and merge
//! VMAs), what `MADV_DONTNEED`/`MADV_FREE` do to pages, the residency
//! hints, and Linux's treatment of holes.
//!
//! # Invariants
//! - D1. Holes do not stop the walk: every VMA in the range is advised and
//!   the call then returns `ENOMEM` (Linux's `unmapped_error`); a range with
//!   no VMA at or above its start fails at once with `ENOMEM`. An advice
//!   refused for one VMA stops the walk there, VMAs before it changed.
//! - D2. Flag changes go through `set_flags` (mprotect.rs Q2): new VMAs,
//!   merged with their neighbours in one store.
//! - D3. A split refused by `max_map_count` (mprotect.rs Q4) is `EAGAIN`,
//!   as `madvise_vma_behavior()` turns `ENOMEM` into it; the walk stops
//!   there, earlier VMAs changed.
//! - D4. `MADV_DONTNEED`, `MADV_DONTNEED_LOCKED` and `MADV_FREE` zap the
//!   pages of each VMA in the range (`zap_page_range_single`), shot down
//!   before the call returns; the next access faults in zeroes (anonymous)
//!   or the file's data. `MADV_FREE` frees at once (no lazy reclaim) the
//!   anonymous pages that this address space alone maps; pages `fork`
//!   shares and the zero page stay mapped, as `madvise_free_pte_range`
//!   leaves them (a review's probe: a child's `MADV_FREE` of shared pages
//!   kept them through forced reclaim).
//! - D5. `MADV_WILLNEED`, `MADV_COLD` and `MADV_PAGEOUT` leave VMAs and
//!   pages as they are (rcuvm has no swap or LRU); `MADV_MERGEABLE` and
//!   `MADV_UNMERGEABLE` set and clear `VM_MERGEABLE` (KSM never merges
//!   pages here). All drawn by the kernel-differential test.
//! - D6. `MADV_POPULATE_READ` and `MADV_POPULATE_WRITE` fault every page
//!   of the range in (`madvise_populate()`), through the fault path as
//!   `mlock` does (mlock.rs L3, fault.rs FL9): read faults (the zero page
//!   for private anonymous memory) or write faults (copy-on-write
//!   broken), whatever the VMA's flags would have chosen. VMA by VMA in
//!   address order, changing no VMA; the first failure stops it, the pages
//!   before it staying: a hole (no stack grows) is `ENOMEM`; a VMA
//!   without `VM_READ` (for `READ`: x86's rule that any right reads does
//!   not apply, as in GUP's `check_vma_flags()`) or without `VM_WRITE`
//!   (for `WRITE`), or `VM_IO`/`VM_PFNMAP`, is `EINVAL`; out of frames is
//!   `ENOMEM`. Each errno was read off the host kernel (6.18). As in
//!   Linux (`get_lock_mode()`), these advices take only the mmap read
//!   lock (mlock.rs L5): the arguments are checked without a lock, and
//!   the call is not recorded (record.rs H2: it changes no VMA).
//!
//! # Linux
//! `do_madvise()`, `madvise_walk_vmas()`, `madvise_vma_behavior()`,
//! `madvise_update_vma()` in `mm/madvise.c`; `hugepage_madvise()`,
//! `ksm_madvise()`, `can_madv_lru_vma()`.
//!
//! Not modelled yet: the advices that
//! need other subsystems (`REMOVE`: shmem hole punching,
//! `COLLAPSE`, guard regions, `HWPOISON`, `SOFT_OFFLINE`): those return
//! `ENOSYS`, which Linux never does here, so that a replay that meets one
//! says so.

use crate::frame::Owner;
use crate::mmap::{MmCall, VM_SPECIAL};
use crate::pgtable::Pte;
use crate::tlb::MmuGather;
use crate::uapi::{Errno, madv};
use crate::vma::{Backing, PAGE_SIZE, VmFlags, Vma};

/// `do_madvise()`'s checks of its arguments, which need no lock (D1): the
/// range's end, or `None` for an empty range (which succeeds).
pub(crate) fn madvise_range(start: u64, len: u64, advice: i32) -> Result<Option<u64>, Errno> {
    if !valid(advice) || start % PAGE_SIZE != 0 {
        return Err(Errno::Einval);
    }
    let alen = len.checked_add(PAGE_SIZE - 1).map_or(0, |l| l & !(PAGE_SIZE - 1));
    if len != 0 && alen == 0 {
        return Err(Errno::Einval);
    }
    let end = start.checked_add(alen).ok_or(Errno::Einval)?;
    Ok((end != start).then_some(end))
}

/// `MADV_POPULATE_READ` or `MADV_POPULATE_WRITE` (D6).
pub(crate) fn is_populate(advice: i32) -> bool {
    matches!(advice, madv::POPULATE_READ | madv::POPULATE_WRITE)
}

/// Every advice Linux accepts (`madvise_behavior_valid`, x86-64 with THP
/// and KSM).
fn valid(advice: i32) -> bool {
    matches!(advice, 0..=4 | 8..=25 | 100..=103)
}

/// The new flags for one VMA, or the refusal (`madvise_vma_behavior`).
fn advise(v: &Vma, advice: i32) -> Result<VmFlags, Errno> {
    let f = v.flags;
    let anon_private = v.backing == Backing::Anon && !f.contains(VmFlags::SHARED);
    Ok(match advice {
        madv::NORMAL => f - (VmFlags::RAND_READ | VmFlags::SEQ_READ),
        madv::RANDOM => (f - VmFlags::SEQ_READ) | VmFlags::RAND_READ,
        madv::SEQUENTIAL => (f - VmFlags::RAND_READ) | VmFlags::SEQ_READ,
        madv::DONTFORK => f | VmFlags::DONTCOPY,
        madv::DOFORK => {
            if f.contains(VmFlags::IO) {
                return Err(Errno::Einval);
            }
            f - VmFlags::DONTCOPY
        }
        madv::WIPEONFORK => {
            if !anon_private {
                return Err(Errno::Einval);
            }
            f | VmFlags::WIPEONFORK
        }
        // A droppable VMA keeps `VM_WIPEONFORK` and `VM_DONTDUMP`.
        madv::KEEPONFORK => {
            if f.contains(VmFlags::DROPPABLE) {
                return Err(Errno::Einval);
            }
            f - VmFlags::WIPEONFORK
        }
        madv::DONTDUMP => f | VmFlags::DONTDUMP,
        madv::DODUMP => {
            if (!f.contains(VmFlags::HUGETLB) && f.intersects(VM_SPECIAL)) || f.contains(VmFlags::DROPPABLE) {
                return Err(Errno::Einval);
            }
            f - VmFlags::DONTDUMP
        }
        madv::HUGEPAGE => (f - VmFlags::NOHUGEPAGE) | VmFlags::HUGEPAGE,
        madv::NOHUGEPAGE => (f - VmFlags::HUGEPAGE) | VmFlags::NOHUGEPAGE,
        madv::DONTNEED | madv::DONTNEED_LOCKED | madv::FREE => {
            // madvise_dontneed_free_valid_vma(); zapping waits for page tables.
            let locked_ok = advice == madv::DONTNEED_LOCKED;
            if f.intersects(VmFlags::PFNMAP | VmFlags::HUGETLB) || (!locked_ok && f.contains(VmFlags::LOCKED))
            {
                return Err(Errno::Einval);
            }
            if advice == madv::FREE && !(v.backing == Backing::Anon) {
                return Err(Errno::Einval);
            }
            f
        }
        // Hints about residency: no change to the VMA; the LRU ones refuse
        // what `can_madv_lru_vma()` refuses.
        madv::WILLNEED => f,
        madv::COLD | madv::PAGEOUT => {
            if f.intersects(VmFlags::LOCKED | VmFlags::PFNMAP | VmFlags::HUGETLB) {
                return Err(Errno::Einval);
            }
            f
        }
        // ksm_madvise(): an incompatible VMA ignores the advice
        // (`vma_ksm_compatible()`).
        madv::MERGEABLE => {
            let incompatible = VmFlags::MERGEABLE
                | VmFlags::SHARED
                | VmFlags::MAYSHARE
                | VmFlags::PFNMAP
                | VmFlags::IO
                | VmFlags::DONTEXPAND
                | VmFlags::HUGETLB
                | VmFlags::MIXEDMAP;
            if f.intersects(incompatible) { f } else { f | VmFlags::MERGEABLE }
        }
        madv::UNMERGEABLE => f - VmFlags::MERGEABLE,
        _ => return Err(Errno::Enosys),
    })
}

impl MmCall<'_> {
    /// `madvise(2)` (D1, D2).
    pub(crate) fn madvise(&mut self, start: u64, len: u64, advice: i32) -> Result<(), Errno> {
        let Some(end) = madvise_range(start, len, advice)? else { return Ok(()) };
        debug_assert!(!is_populate(advice), "D6: population takes the read lock only (mm.rs)");
        // find_vma(start): no VMA ending above `start` at all.
        if self.w.find(start).is_none() {
            return Err(Errno::Enomem);
        }
        let mut unmapped = false;
        let mut at = start;
        for v in self.overlapping(start, end) {
            if v.start > at {
                unmapped = true;
            }
            let (s, e) = (at.max(v.start), end.min(v.end));
            let newflags = advise(&v, advice)?;
            if newflags != v.flags {
                // madvise_vma_behavior(): a split refused for want of
                // resources (`max_map_count`) is EAGAIN, not ENOMEM (D3).
                self.set_flags(&v, s, e, newflags).map_err(|e| match e {
                    Errno::Enomem => Errno::Eagain,
                    e => e,
                })?;
            }
            if matches!(advice, madv::DONTNEED | madv::DONTNEED_LOCKED | madv::FREE) {
                // D4: the VMA stays; its pages go.
                self.vma_write_lock(&v);
                let mut g = MmuGather::default();
                g.notify = self.hw.notifiers.start_locked(s, e, crate::notifier::NotifyEvent::Clear);
                if advice == madv::FREE {
                    // D4: only pages this address space alone maps.
                    let pm = &*self.hw.phys;
                    let alone = |pte: Pte| {
                        let f = pm.frame(pte.pfn());
                        pte.mapped() && matches!(f.owner(), Owner::Anon { .. }) && f.exclusive()
                    };
                    self.hw.pt.zap_some(s, e, &alone, &mut g);
                } else {
                    self.hw.pt.zap(s, e, &mut g);
                }
                self.finish(g, false);
            }
            at = e;
        }
        if at < end {
            unmapped = true;
        }
        if unmapped { Err(Errno::Enomem) } else { Ok(()) }
    }
}
