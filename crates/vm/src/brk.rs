//! `brk`: growing and shrinking the heap.
//!
//! # Invariants
//! - K1. `brk` never returns an errno: a refused move returns the old break
//!   and changes nothing.
//! - K2. The heap grows only if the page after the new break stays clear of
//!   the next VMA's guard gap; growth extends the VMA that ends at the old
//!   break when it reaches above `start_brk` (it may start below) and
//!   would merge (same flags, anonymous, unnamed, contiguous `pgoff`: not
//!   after an `mremap` moved it), else makes a new anonymous VMA (`pgoff`
//!   = address >> 12), flagged `VM_ACCOUNT`. The growth is charged
//!   (mmap.rs P10): one larger than physical memory is refused (K1).
//! - K3. Shrinking unmaps `[new, old)` (page-aligned) and needs a VMA there.
//!
//! # Linux
//! `SYSCALL_DEFINE1(brk)` and `do_brk_flags()` in `mm/mmap.c`. Not
//! modelled: `RLIMIT_DATA`, brk randomisation.

use std::sync::atomic::Ordering;

use crate::mmap::MmCall;
use crate::vma::{Backing, PAGE_SHIFT, PAGE_SIZE, VmFlags, Vma};

fn page_align(x: u64) -> u64 {
    x.saturating_add(PAGE_SIZE - 1) & !(PAGE_SIZE - 1)
}

impl MmCall<'_> {
    /// `brk(2)` (K1–K3).
    pub(crate) fn brk(&mut self, brk: u64) -> u64 {
        let l = self.layout;
        let (start_brk, orig) = (l.start_brk.load(Ordering::Relaxed), l.brk.load(Ordering::Relaxed));
        if start_brk == 0 || brk < start_brk || brk > self.cfg.task_size {
            return orig;
        }
        let (newbrk, oldbrk) = (page_align(brk), page_align(orig));
        if newbrk == oldbrk {
            l.brk.store(brk, Ordering::Relaxed);
            return brk;
        }
        if brk <= orig {
            // K3: a brk VMA must lie in [newbrk, oldbrk).
            let ok = self.overlapping(newbrk, oldbrk).first().is_some_and(|v| v.start < oldbrk);
            if !ok || self.munmap_range(newbrk, oldbrk).is_err() {
                return orig;
            }
            l.brk.store(brk, Ordering::Relaxed);
            return brk;
        }
        // K2: stay clear of the next VMA (and its guard gap if it grows down).
        let limit = newbrk.saturating_add(PAGE_SIZE);
        // A dead entry (`rcu-dead`) is no mapping: it is reaped below.
        if let Some(next) = self.overlapping(oldbrk, limit.saturating_add(self.cfg.stack_guard_gap)).first() {
            let gap_start = if next.flags.contains(VmFlags::GROWSDOWN) {
                next.start.saturating_sub(self.cfg.stack_guard_gap)
            } else {
                next.start
            };
            if limit > gap_start {
                return orig;
            }
        }
        if self.map_count() > self.cfg.max_map_count {
            return orig;
        }
        // do_brk_flags(): the heap is charged (mmap.rs P10).
        if self.vm_enough_memory((newbrk - oldbrk) >> PAGE_SHIFT).is_err() {
            return orig;
        }
        self.reap_dead(true, oldbrk, newbrk);
        let flags = VmFlags::READ
            | VmFlags::WRITE
            | VmFlags::MAYREAD
            | VmFlags::MAYWRITE
            | VmFlags::MAYEXEC
            | VmFlags::ACCOUNT
            | *self.def_flags;
        let prev = if oldbrk > 0 { self.vma_at(oldbrk - 1) } else { None };
        let v = match prev {
            // do_brk_flags: expand the VMA that ends at the break, if
            // `vma_prev_limit(start_brk)` finds it (it reaches above
            // start_brk, wherever it starts) and `vma_merge_new_range`
            // would merge a new heap VMA into it (contiguous pgoff too).
            Some(p)
                if p.end == oldbrk
                    && p.end > start_brk
                    && p.flags == flags
                    && p.backing == Backing::Anon
                    && p.name.is_none()
                    && p.pgoff + ((p.end - p.start) >> PAGE_SHIFT) == oldbrk >> PAGE_SHIFT =>
            {
                // strategy.rs S3: the VMA replaced is write-locked first.
                self.vma_write_lock(&p);
                Vma { end: newbrk, ..(*p).clone() }
            }
            _ => Vma::new(oldbrk, newbrk, flags, oldbrk >> PAGE_SHIFT, Backing::Anon, None, None),
        };
        let (s, e) = (v.start, v.end);
        self.store(s..e, v);
        l.brk.store(brk, Ordering::Relaxed);
        // After mlockall(MCL_FUTURE) the new heap is faulted in (mlock.rs L3).
        if self.def_flags.contains(VmFlags::LOCKED) {
            self.populate(oldbrk, newbrk, true);
        }
        brk
    }
}
