//! `mprotect`, with Linux's checks, partial application over holes,
//! `VM_ACCOUNT` on first write permission, and split/merge.
//!
//! # Invariants
//! - Q3. `VM_ACCOUNT` follows `mprotect_fixup`: set when private memory
//!   first becomes writable, cleared when anonymous memory with no
//!   `anon_vma` stops being writable (found by the kernel-differential test
//!   through `/proc/self/smaps`' `VmFlags`). Setting it charges the piece
//!   (mmap.rs P10): over physical memory, `ENOMEM` there, the VMAs before
//!   it changed.
//! - Q1. VMAs are changed in address order; at a hole the call stops with
//!   `ENOMEM`, leaving the VMAs before the hole changed, as Linux does.
//! - Q2. Each changed piece is a new `Vma`: the unchanged remnants of a VMA
//!   are written first, then the piece, merged with its neighbours in one
//!   tree store (mmap.rs P2, P3), so readers never see the range unmapped.
//! - Q4. `set_flags` (shared with madvise and mlock) splits as
//!   `vma_modify()`: a piece at an edge that merges into its neighbour
//!   needs no split and no `max_map_count` room; each split needs
//!   `map_count < max_map_count` (`split_vma()`), else `ENOMEM`, with the
//!   splits already made kept.
//! - Q5. A private `VM_LOCKED` VMA that becomes writable is populated
//!   (`populate_vma_page_range()`), which gives it an `anon_vma` (mlock.rs
//!   L3).
//! - Q6. When the access rights change, the present PTEs follow, after the
//!   tree (`change_protection`); rights removed are shot down before the
//!   call returns (tlb.rs T2). Under `vma-lock`, the VMA is write-locked
//!   first (strategy.rs S3).
//!
//! # Linux
//! `do_mprotect_pkey()` and `mprotect_fixup()` in `mm/mprotect.c`,
//! `vma_modify_flags()` in `mm/vma.c`, `change_protection()`.

use crate::mmap::MmCall;
use crate::pgtable::Pte;
use crate::tlb::MmuGather;
use crate::uapi::{Errno, Prot};
use crate::vma::{Backing, PAGE_SHIFT, PAGE_SIZE, VmFlags, Vma};

impl MmCall<'_> {
    /// `mprotect(2)`.
    pub(crate) fn mprotect(&mut self, start: u64, len: u64, prot: Prot) -> Result<(), Errno> {
        let grows = prot & (Prot::GROWSDOWN | Prot::GROWSUP);
        let prot = prot - grows;
        if grows == Prot::GROWSDOWN | Prot::GROWSUP {
            return Err(Errno::Einval);
        }
        if start % PAGE_SIZE != 0 {
            return Err(Errno::Einval);
        }
        if len == 0 {
            return Ok(());
        }
        let len = len.checked_add(PAGE_SIZE - 1).map_or(0, |l| l & !(PAGE_SIZE - 1));
        let end = start.wrapping_add(len);
        if end <= start {
            return Err(Errno::Enomem);
        }
        // arch_validate_prot(): only READ, WRITE, EXEC and SEM.
        if !(prot - (Prot::READ | Prot::WRITE | Prot::EXEC | Prot::SEM)).is_empty() {
            return Err(Errno::Einval);
        }
        let mut start = start;
        let vmas = self.overlapping(start, end);
        let Some(first) = vmas.first() else { return Err(Errno::Enomem) };
        if grows.contains(Prot::GROWSDOWN) {
            start = first.start;
            if !first.flags.contains(VmFlags::GROWSDOWN) {
                return Err(Errno::Einval);
            }
        } else {
            if first.start > start {
                return Err(Errno::Enomem);
            }
            if grows.contains(Prot::GROWSUP) {
                // x86-64 has no VM_GROWSUP.
                return Err(Errno::Einval);
            }
        }
        let bits = VmFlags::from_prot(prot);
        let access = VmFlags::READ | VmFlags::WRITE | VmFlags::EXEC;
        let mut tmp = first.start;
        for v in vmas {
            if v.start != tmp {
                return Err(Errno::Enomem); // Q1: a hole
            }
            let mut newflags = bits | (v.flags - access);
            // A permission whose VM_MAY* bit is missing.
            let may = VmFlags::from_bits_retain(newflags.bits() >> 4);
            if !(newflags & access).difference(may).is_empty() {
                return Err(Errno::Eacces);
            }
            let (s, e) = (start.max(v.start), end.min(v.end));
            tmp = e;
            if newflags == v.flags {
                continue;
            }
            // mprotect_fixup(), Q3: charge private memory that becomes
            // writable; uncharge anonymous memory that stops being writable
            // while no page has been faulted in (no anon_vma yet).
            let exempt =
                VmFlags::ACCOUNT | VmFlags::WRITE | VmFlags::HUGETLB | VmFlags::SHARED | VmFlags::NORESERVE;
            if newflags.contains(VmFlags::WRITE) {
                if !v.flags.intersects(exempt) {
                    self.vm_enough_memory((e - s) >> PAGE_SHIFT)?; // Q3, mmap.rs P10
                    newflags |= VmFlags::ACCOUNT;
                }
            } else if v.flags.contains(VmFlags::ACCOUNT) && v.backing == Backing::Anon && v.anon().is_none() {
                newflags.remove(VmFlags::ACCOUNT);
            }
            self.set_flags(&v, s, e, newflags)?;
            // Q5: mprotect_fixup() breaks COW of a locked private VMA that
            // becomes writable (its result is ignored).
            let locked_ro = v.flags & (VmFlags::WRITE | VmFlags::SHARED | VmFlags::LOCKED) == VmFlags::LOCKED;
            if locked_ro && newflags.contains(VmFlags::WRITE) {
                let _ = self.populate_vma(s, e);
            }
        }
        if tmp < end {
            return Err(Errno::Enomem);
        }
        Ok(())
    }

    /// Gives `[s, e)` of `v` the flags `newflags`, as `vma_modify_flags`
    /// does (Q2, Q4): a piece at an edge of `v` whose neighbour there can
    /// take it merges into it without a split; otherwise `v` is split at
    /// `s`, then at `e`, each split refused with `ENOMEM` once `map_count`
    /// has reached `max_map_count` (a refused second split leaves the
    /// first one made, as Linux does), and the piece merges with its
    /// neighbours in one store.
    pub(crate) fn set_flags(&mut self, v: &Vma, s: u64, e: u64, newflags: VmFlags) -> Result<(), Errno> {
        self.vma_write_lock(v);
        // mm.rs A5: readers wait while the pieces are being stored.
        self.tree_txn(|c| c.split_and_set(v, s, e, newflags))?;
        let access = VmFlags::READ | VmFlags::WRITE | VmFlags::EXEC;
        if (v.flags ^ newflags).intersects(access) {
            self.change_ptes(s, e, newflags);
        }
        Ok(())
    }

    /// The tree half of `set_flags`.
    fn split_and_set(&mut self, v: &Vma, s: u64, e: u64, newflags: VmFlags) -> Result<(), Errno> {
        let mut piece = v.slice(s, e);
        piece.flags = newflags;
        // vma_merge_existing_range(): only a piece touching an edge of `v`
        // can merge, and only with the neighbour at that edge.
        let prev = if s == v.start && s > 0 { self.vma_at(s - 1) } else { None };
        let next = if e == v.end { self.vma_at(e) } else { None };
        let merges = prev.is_some_and(|p| Self::mergeable(&p, &piece))
            || next.is_some_and(|n| Self::mergeable(&piece, &n));
        if v.start < s {
            // Q4: split_vma() checks `map_count >= max_map_count`.
            if !merges && self.map_count() >= self.cfg.max_map_count {
                return Err(Errno::Enomem);
            }
            self.store(v.start..s, v.slice(v.start, s));
            if !merges {
                self.store(s..v.end, v.slice(s, v.end));
            }
        }
        if e < v.end {
            if !merges && self.map_count() >= self.cfg.max_map_count {
                return Err(Errno::Enomem);
            }
            self.store(e..v.end, v.slice(e, v.end));
        }
        self.insert_merged(piece);
        Ok(())
    }

    /// `change_protection()` (Q6): present entries of `[s, e)` follow
    /// `newflags`. Write permission is only ever removed here; a write
    /// fault grants it back (reusing an exclusive anonymous page, fault.rs
    /// FL4). No access right at all makes the entry `PROT_NONE`, keeping
    /// its frame. Entries that lose rights are shot down.
    fn change_ptes(&mut self, s: u64, e: u64, newflags: VmFlags) {
        let none = !newflags.intersects(VmFlags::READ | VmFlags::WRITE | VmFlags::EXEC);
        let write = newflags.contains(VmFlags::WRITE);
        let mut g = MmuGather::default();
        g.notify = self.hw.notifiers.start_locked(s, e, crate::notifier::NotifyEvent::ProtectionVma);
        self.hw.pt.change_prot(
            s,
            e,
            &|_, old| {
                if none {
                    Pte(old.pfn() << PAGE_SHIFT | Pte::PROTNONE)
                } else {
                    Pte::new(old.pfn(), write && old.writable())
                }
            },
            &mut g,
        );
        self.finish(g, false);
    }
}
