//! `fork`: a child address space that copies the parent's VMAs and shares
//! its anonymous pages copy-on-write (`dup_mmap`).
//!
//! # Owns
//! The copy of VMAs and page tables into a new address space
//! ([`AddressSpace::fork`](crate::AddressSpace::fork), mm.rs A14).
//!
//! # Invariants
//! - FK1. Every VMA is copied whole and unmerged, in address order, with
//!   the same range, flags, `pgoff`, backing and name, but for: a
//!   `VM_DONTCOPY` (`MADV_DONTFORK`) VMA, which the child does not get;
//!   `VM_LOCKED`/`VM_LOCKONFAULT`, which the child does not inherit (nor
//!   `mlockall`'s `def_flags`); the `anon_vma`, which is a new one for
//!   each child VMA whose parent had one (`anon_vma_fork()`: so two child
//!   VMAs never share one, and do not merge where their parents would);
//!   and `VM_WIPEONFORK`, whose child VMA starts with no `anon_vma` and
//!   no pages.
//! - FK2. Pages: a VMA's entries are copied only if it has an `anon_vma`
//!   (`vma_needs_copy()`; a child faults the rest in from the page cache
//!   or as fresh zeroes, as the parent would). In a copy-on-write VMA
//!   (private, `VM_MAYWRITE`), both parent and child entries lose write
//!   permission; the anonymous frames are shared, counted (frame.rs F7),
//!   and the first write on either side copies (fault.rs FL11). Shared
//!   mappings map the same page-cache frames on both sides.
//! - FK3. The parent's entries that lost write permission are shot down
//!   before the VMA's copy ends (`flush_tlb_mm`), inside an MMU notifier
//!   bracket (`MMU_NOTIFY_PROTECTION_PAGE`, notifier.rs): after `fork`,
//!   no CPU writes a shared frame through a stale writable entry. A store
//!   through such an entry during the copy lands in the shared frame, so
//!   both sides see it (it raced the fork), and is never lost: see FK4.
//! - FK4. Each parent VMA whose entries are copied is write-locked first
//!   (`vma_write_lock`: detached, strategy.rs S3), as Linux's `dup_mmap`
//!   calls `vma_start_write`, and replaced by an attached copy of itself
//!   after its shootdown. A parent's fault on it meanwhile waits on the
//!   mmap lock (FL7), and one already past its lookup fails its re-check
//!   under the PTL. Why: a review found stores lost under vma-lock,
//!   rcu-sync, rcu-dead and rcu-refcount when faults ran during the copy:
//!   another CPU copied a page while a CPU with a stale writable TLB entry
//!   still wrote the old one, and a fault's `pte_same` passed across a
//!   second fork (ABA). `rcu-refcount` has no re-check (strategy.rs S5):
//!   its faults still race the copy, by design.
//!
//! # Concurrency
//! The parent's mmap write lock for the whole copy (no other mm call of
//! the parent runs); the child's, which no one else can want yet.
//!
//! # Linux
//! `dup_mmap()` in `kernel/fork.c`/`mm/mmap.c`, `anon_vma_fork()` in
//! `mm/rmap.c`, `copy_page_range()`, `copy_present_pte()` and
//! `vma_needs_copy()` in `mm/memory.c`.
//!
//! Not modelled: the charge of each `VM_ACCOUNT` VMA copied (`dup_mmap`
//! fails with `ENOMEM` for one larger than memory, which a moving shrink
//! can leave, mremap.rs R10; rcuvm's `fork` never fails), `MADV_WIPEONFORK` on shared memory (refused anyway),
//! userfaultfd, hugetlb, device mappings (`VM_PFNMAP` ranges are copied
//! as any other with an `anon_vma`), and the `anon_vma` reuse of
//! `anon_vma_clone()` for a grandchild whose parent VMA's `anon_vma` has
//! no VMA left.

use crate::inject::Injection;
use crate::mlock::LOCK_BITS;
use crate::mmap::MmCall;
use crate::notifier::NotifyEvent;
use crate::tlb::MmuGather;
use crate::vma::{AnonVmaId, VmFlags, Vma};

impl MmCall<'_> {
    /// `dup_mmap()` from this (the parent's) call into `child`'s, an
    /// empty address space's (FK1–FK4).
    pub(crate) fn dup_mmap(&mut self, child: &mut MmCall<'_>) {
        let pm = &*self.hw.phys;
        let share = |pfn| pm.frame(pfn).share_if_anon();
        for v in self.entries_in(0, u64::MAX) {
            if v.is_dead() || v.flags.contains(VmFlags::DONTCOPY) {
                continue;
            }
            let wipe = v.flags.contains(VmFlags::WIPEONFORK);
            // Read once: a racing first fault may set it meanwhile (its
            // page is then the parent's alone, as if made after the fork).
            let parent_anon = v.anon();
            let anon = if wipe { None } else { parent_anon.map(|_| AnonVmaId::forked()) };
            let c = Vma::new(
                v.start,
                v.end,
                v.flags - LOCK_BITS,
                v.pgoff,
                v.backing.clone(),
                anon,
                v.name.clone(),
            );
            child.store(v.start..v.end, c);
            if wipe || parent_anon.is_none() {
                continue;
            }
            // FK4: the parent's faults wait for the copy (as Linux's
            // `vma_start_write` in `dup_mmap`).
            let lock = !crate::inject::active(self.hw.inject, Injection::ForkSkipsWriteLock);
            if lock {
                self.vma_write_lock(&v);
            }
            let cow = v.flags & (VmFlags::SHARED | VmFlags::MAYWRITE) == VmFlags::MAYWRITE;
            let mut g = MmuGather::default();
            if cow {
                // FK3: the bracket closes after the shootdown (`finish`).
                g.notify = self.hw.notifiers.start_locked(v.start, v.end, NotifyEvent::ProtectionPage);
            }
            self.hw.pt.copy_range(&child.hw.pt, v.start, v.end, cow, self.hw.inject, &share, &mut g);
            // FK3: no CPU of the parent keeps a writable entry of a shared
            // page (nothing is freed: the gather holds no frame).
            self.finish(g, false);
            // FK4: the detached object is replaced by an attached copy, so
            // that faults go lock-free again (after the mmap lock, under
            // vma-lock, whose write lock the copy keeps until then).
            if lock {
                self.store(v.start..v.end, (*v).clone());
            }
        }
    }
}
