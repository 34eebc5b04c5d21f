//! `mprotect`, with Linux's checks, partial application over holes,
//! `VM_ACCOUNT` on first write permission, and split/merge.
//!
//! # Invariants
//! - Q3. `VM_ACCOUNT` follows `mprotect_fixup`: set when private memory
//!   first becomes writable, cleared when anonymous memory with no
//!   `anon_vma` stops being writable (found by the kernel-differential test
//!   through `/proc/self/smaps`' `VmFlags`).
//! - Q1. VMAs are changed in address order; at a hole the call stops with
//!   `ENOMEM`, leaving the VMAs before the hole changed, as Linux does.
//! - Q2. Each changed piece is a new `Vma`: the unchanged remnants of a VMA
//!   are written first, then the piece, merged with its neighbours in one
//!   tree store (mmap.rs P2, P3), so readers never see the range unmapped.
//! - Q4. When the access rights change, the present PTEs follow, after the
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
                    newflags |= VmFlags::ACCOUNT;
                }
            } else if v.flags.contains(VmFlags::ACCOUNT) && v.backing == Backing::Anon && v.anon().is_none() {
                newflags.remove(VmFlags::ACCOUNT);
            }
            self.set_flags(&v, s, e, newflags)?;
        }
        if tmp < end {
            return Err(Errno::Enomem);
        }
        Ok(())
    }

    /// Gives `[s, e)` of `v` the flags `newflags`: remnants first, then the
    /// piece merged with its neighbours in one store (Q2). Refuses with
    /// `ENOMEM` when the split would pass `max_map_count`.
    pub(crate) fn set_flags(&mut self, v: &Vma, s: u64, e: u64, newflags: VmFlags) -> Result<(), Errno> {
        // Splitting adds a VMA per cut edge.
        let cuts = usize::from(v.start < s) + usize::from(e < v.end);
        if cuts > 0 && self.map_count() + cuts > self.cfg.max_map_count {
            return Err(Errno::Enomem);
        }
        self.vma_write_lock(v);
        if v.start < s {
            self.w.store(v.start..s, v.slice(v.start, s)).expect("non-empty range");
        }
        if e < v.end {
            self.w.store(e..v.end, v.slice(e, v.end)).expect("non-empty range");
        }
        let mut piece = v.slice(s, e);
        piece.flags = newflags;
        self.insert_merged(piece);
        let access = VmFlags::READ | VmFlags::WRITE | VmFlags::EXEC;
        if (v.flags ^ newflags).intersects(access) {
            self.change_ptes(s, e, newflags);
        }
        Ok(())
    }

    /// `change_protection()` (Q4): present entries of `[s, e)` follow
    /// `newflags`. Write permission is only ever removed here; a write
    /// fault grants it back (reusing an exclusive anonymous page, fault.rs
    /// FL4). No access right at all makes the entry `PROT_NONE`, keeping
    /// its frame. Entries that lose rights are shot down.
    fn change_ptes(&mut self, s: u64, e: u64, newflags: VmFlags) {
        let none = !newflags.intersects(VmFlags::READ | VmFlags::WRITE | VmFlags::EXEC);
        let write = newflags.contains(VmFlags::WRITE);
        let mut g = MmuGather::default();
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
