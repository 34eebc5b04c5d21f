//! `mremap`: shrink, grow in place, move (`MREMAP_MAYMOVE`), move to a fixed
//! place (`MREMAP_FIXED`), with Linux's checks.
//!
//! # Invariants
//! - R1. A moved range becomes a new VMA at its destination with the same
//!   flags, backing and `anon_vma`; it keeps its `pgoff` (so it merges only
//!   where that is contiguous), except anonymous memory never faulted in,
//!   which takes its new address's `pgoff` (`copy_vma`). It is inserted
//!   before the source is unmapped, so the mapping is never absent for a
//!   reader.
//! - R2. A resize never crosses VMAs: the source must lie in one VMA
//!   (`EFAULT` otherwise), except for a shrink, which just unmaps the tail,
//!   and a move without resizing (R3).
//! - R3. A move without resizing (`MREMAP_FIXED`, `old_len == new_len`)
//!   may span several VMAs and holes (Linux 6.17+ `remap_move()`): the
//!   start must be mapped (`EFAULT`); each VMA's part is moved in address
//!   order by the single-VMA path, to the destination plus its distance
//!   from the first part, so gaps are kept (and what lies in the
//!   destination's gaps is not unmapped); an error stops the walk, the
//!   parts moved before it stay moved.
//! - R4. `MREMAP_DONTUNMAP` leaves the source VMA in place, clears its
//!   `VM_LOCKED`/`VM_LOCKONFAULT` over the whole VMA (not just the moved
//!   part) without splitting or merging it, and drops its `anon_vma` when
//!   the whole VMA moved (`dontunmap_complete()`; found against the host
//!   kernel).
//! - R5. `max_map_count`: a call with a new address needs
//!   `map_count + 2 < max_map_count - 3` before any VMA is looked up, a
//!   move `map_count < max_map_count - 3` (`prep_move_vma()`), else
//!   `ENOMEM`; measured against the host kernel at 65530 VMAs.
//! - R6. A locked VMA that grows is populated over its new part (mlock.rs
//!   L3), errors ignored.
//! - R7. Growing in place merges the VMA with the next one when they are
//!   compatible, never with the previous one (`vma_merge_extend()`): two
//!   compatible VMAs left apart (by `MREMAP_DONTUNMAP`, R4) stay apart
//!   (found by the kernel-differential test).
//! - R8. Before any VMA is looked up, a new length past `TASK_SIZE` is
//!   `EINVAL` whatever the flags; after, `old_len == 0` is `EINVAL` unless
//!   the VMA is shared (then the call maps it a second time); a shrink
//!   unmaps its tail with munmap's checks (`EINVAL` past `TASK_SIZE`).
//!   All probed on the host kernel.
//! - R9. A move carries the pages: the PTEs move to the destination
//!   (`move_page_tables`, the source shot down) before the new VMA is
//!   published, after any dead entry at the destination was reaped (its
//!   tables are freed by the reaping). The source VMA is write-locked
//!   (marked detached) first, so a fault into the source from then on
//!   waits for the mremap (fault.rs FL7) rather than filling a page the
//!   unmap would drop.
//! - R10. A charged (`VM_ACCOUNT`) VMA's resize is charged (`vrm_charge`,
//!   mmap.rs P10): the size difference, a shrink's too when it moves (as
//!   Linux 6.18 charges `vrm->delta`; confirmed on the host), or under
//!   `MREMAP_DONTUNMAP` the whole new copy. A refusal is `ENOMEM` before
//!   any page moves, after the destination's unmap and a moving shrink's
//!   unmap of the tail, which stay (as in Linux).
//!
//! # Linux
//! `SYSCALL_DEFINE5(mremap)`, `check_mremap_params()`, `remap_move()`,
//! `check_prep_vma()`, `mremap_to()`, `move_vma()`, `dontunmap_complete()`
//! in `mm/mremap.c` as of Linux 6.18, with its order of checks
//! (parameters, destination, `max_map_count`, then source, then
//! unmapping). Every VMA may take part in a multi-VMA move
//! (`vma_multi_allowed()` refuses only userfaultfd-armed VMAs and files
//! with their own `get_unmapped_area`, which rcuvm does not model).
//! Not modelled: `RLIMIT_AS`, `RLIMIT_MEMLOCK`, userfaultfd, mseal.

use crate::mlock::LOCK_BITS;
use crate::mmap::MmCall;
use crate::uapi::{Errno, MREMAP_DONTUNMAP, MREMAP_FIXED, MREMAP_MAYMOVE, MapFlags};
use crate::vma::{Backing, PAGE_SHIFT, PAGE_SIZE, VmFlags, Vma};

/// Whether a move of `vma` may be placed on a 2 MiB boundary (mmap.rs P6):
/// `vrm_set_new_addr` passes the VMA's file, and `MAP_SHARED` for a
/// `VM_MAYSHARE` one, so only private anonymous memory is.
fn thp_movable(vma: &Vma) -> bool {
    vma.backing == Backing::Anon && !vma.flags.contains(VmFlags::MAYSHARE)
}

fn align(x: u64) -> u64 {
    x.checked_add(PAGE_SIZE - 1).map_or(0, |v| v & !(PAGE_SIZE - 1))
}

impl MmCall<'_> {
    /// `mremap(2)`.
    pub(crate) fn mremap(
        &mut self,
        addr: u64,
        old_len: u64,
        new_len: u64,
        flags: u32,
        new_addr: u64,
    ) -> Result<u64, Errno> {
        if flags & !(MREMAP_FIXED | MREMAP_MAYMOVE | MREMAP_DONTUNMAP) != 0 {
            return Err(Errno::Einval);
        }
        if flags & MREMAP_FIXED != 0 && flags & MREMAP_MAYMOVE == 0 {
            return Err(Errno::Einval);
        }
        if flags & MREMAP_DONTUNMAP != 0 && (flags & MREMAP_MAYMOVE == 0 || old_len != new_len) {
            return Err(Errno::Einval);
        }
        if addr % PAGE_SIZE != 0 {
            return Err(Errno::Einval);
        }
        let (old_len, new_len) = (align(old_len), align(new_len));
        let task = self.cfg.task_size;
        // R8, check_mremap_params(): a new length past TASK_SIZE is refused
        // whatever the flags, before any VMA is looked up.
        if new_len == 0 || new_len > task {
            return Err(Errno::Einval);
        }
        if flags & (MREMAP_FIXED | MREMAP_DONTUNMAP) != 0 {
            // The destination too is checked before any VMA is looked up.
            if new_addr % PAGE_SIZE != 0 || new_addr > task - new_len {
                return Err(Errno::Einval);
            }
            if addr.wrapping_add(old_len) > new_addr && new_addr + new_len > addr {
                return Err(Errno::Einval);
            }
            // R5: room for splitting both ends of source and destination.
            if self.map_count() + 2 >= self.cfg.max_map_count.saturating_sub(3) {
                return Err(Errno::Enomem);
            }
        }
        if flags & MREMAP_FIXED != 0 && old_len == new_len {
            return self.remap_move(addr, old_len, flags, new_addr);
        }
        let Some(vma) = self.vma_at(addr) else { return Err(Errno::Efault) };
        // R8, check_prep_vma(): old_len 0 duplicates a shared mapping; a private
        // one would get a fresh, unrelated copy, which Linux refuses.
        if old_len == 0 && !vma.flags.intersects(VmFlags::SHARED | VmFlags::MAYSHARE) {
            return Err(Errno::Einval);
        }
        if flags & (MREMAP_FIXED | MREMAP_DONTUNMAP) != 0 {
            return self.mremap_to(addr, old_len, new_len, flags, new_addr);
        }
        if old_len >= new_len {
            if old_len > new_len {
                self.shrink(addr, old_len, new_len)?;
            }
            return Ok(addr);
        }
        let vma = self.vma_to_resize(addr, old_len, new_len, false)?;
        // Grow in place when the range ends the VMA and the space after is free.
        if old_len == vma.end - addr {
            let delta = new_len - old_len;
            if let Some(end) = vma.end.checked_add(delta) {
                if end <= self.cfg.task_size && self.overlapping(vma.end, end).is_empty() {
                    self.vrm_charge(&vma, delta)?;
                    // A dead entry there is no mapping (S4): reap it first.
                    self.reap_dead(true, vma.end, end);
                    // R7: vma_merge_extend() merges the grown VMA with the
                    // next one only, never with the one before it.
                    // strategy.rs S3: the VMAs replaced are write-locked
                    // first (found by rcuvm check: a fault holding the
                    // VMA before its growth installed a PTE after a later
                    // munmap of the grown one).
                    self.vma_write_lock(&vma);
                    let mut grown = Vma { end, ..(*vma).clone() };
                    if let Some(n) = self.vma_at(end).filter(|n| Self::mergeable(&grown, n)) {
                        self.vma_write_lock(&n);
                        grown = Vma { end: n.end, anon_vma: grown.anon().or(n.anon()), ..grown };
                    }
                    self.store(grown.start..grown.end, grown);
                    if vma.flags.contains(VmFlags::LOCKED) {
                        self.populate(addr + old_len, addr + new_len, true); // R6
                    }
                    return Ok(addr);
                }
            }
        }
        if flags & MREMAP_MAYMOVE == 0 {
            return Err(Errno::Enomem);
        }
        let to = self.get_unmapped_area(0, new_len, MapFlags::empty(), thp_movable(&vma))?;
        self.vrm_charge(&vma, new_len - old_len)?; // R10
        self.move_vma(&vma, addr, old_len, new_len, to, flags)
    }

    /// `vrm_charge()` (R10): an accounted VMA's size change is charged
    /// (mmap.rs P10).
    fn vrm_charge(&self, vma: &Vma, bytes: u64) -> Result<(), Errno> {
        if vma.flags.contains(VmFlags::ACCOUNT) { self.vm_enough_memory(bytes >> PAGE_SHIFT) } else { Ok(()) }
    }

    /// `shrink_vma()`: unmaps the tail `[addr + new_len, addr + old_len)`
    /// with munmap's checks (`EINVAL` for a tail past `TASK_SIZE`).
    fn shrink(&mut self, addr: u64, old_len: u64, new_len: u64) -> Result<(), Errno> {
        self.munmap(addr + new_len, old_len - new_len)
    }

    /// `check_prep_vma()` (R2): the VMA holding `[addr, addr + old_len)`,
    /// checked for growing or moving when `moves` or the range grows.
    fn vma_to_resize(
        &self,
        addr: u64,
        old_len: u64,
        new_len: u64,
        moves: bool,
    ) -> Result<std::sync::Arc<Vma>, Errno> {
        let vma = self.vma_at(addr).ok_or(Errno::Efault)?;
        if old_len > vma.end - addr {
            return Err(Errno::Efault);
        }
        if new_len == old_len && !moves {
            return Ok(vma);
        }
        if vma.pgoff_at(addr).checked_add(new_len >> PAGE_SHIFT).is_none() {
            return Err(Errno::Einval);
        }
        if vma.flags.intersects(VmFlags::DONTEXPAND | VmFlags::PFNMAP) {
            return Err(Errno::Efault);
        }
        Ok(vma)
    }

    /// `remap_move()` (R3): `[start, start + len)` moved to `new_addr`,
    /// VMA by VMA.
    fn remap_move(&mut self, start: u64, len: u64, flags: u32, new_addr: u64) -> Result<u64, Errno> {
        let end = start.wrapping_add(len);
        let mut first = None;
        let (mut last_end, mut target, mut at) = (0, new_addr, start);
        while at < end {
            let Some(v) = self.overlapping(at, end).into_iter().next() else { break };
            if first.is_none() && v.start > start {
                return Err(Errno::Efault); // R3: the start is a hole
            }
            let (a, l) = (v.start.max(start), end.min(v.end) - v.start.max(start));
            // Keep the gap between this VMA and the previous one.
            let to = if first.is_some() { target + (v.start - last_end) } else { target };
            last_end = v.end;
            let moved = self.mremap_to(a, l, l, flags, to)?;
            first.get_or_insert(moved);
            target = moved + l;
            // The walk resumes after the VMA as it was found.
            at = v.end;
        }
        first.ok_or(Errno::Efault)
    }

    /// `mremap_to()`: `MREMAP_FIXED` and `MREMAP_DONTUNMAP`, for a source
    /// in one VMA.
    fn mremap_to(
        &mut self,
        addr: u64,
        old_len: u64,
        new_len: u64,
        flags: u32,
        new_addr: u64,
    ) -> Result<u64, Errno> {
        // (The destination and map count were checked in `mremap`.)
        // The source is checked before anything is unmapped (as Linux 6.18
        // does: found by the kernel-differential test).
        self.vma_to_resize(addr, old_len.min(new_len), new_len, true)?;
        if flags & MREMAP_FIXED != 0 {
            self.munmap_range(new_addr, new_addr + new_len)?;
        }
        // R10: the size change is charged, a shrink's too (Linux 6.18's
        // `vrm->delta`, taken before the shrink).
        let charge = if flags & MREMAP_DONTUNMAP != 0 { new_len } else { old_len.abs_diff(new_len) };
        let mut old_len = old_len;
        if old_len > new_len {
            self.shrink(addr, old_len, new_len)?;
            old_len = new_len;
        }
        let vma = self.vma_to_resize(addr, old_len, new_len, true)?;
        let to = if flags & MREMAP_FIXED != 0 {
            new_addr
        } else {
            self.get_unmapped_area(new_addr, new_len, MapFlags::empty(), thp_movable(&vma))?
        };
        self.vrm_charge(&vma, charge)?; // R10
        self.move_vma(&vma, addr, old_len, new_len, to, flags)
    }

    /// `move_vma()` (R1, R4, R5, R6).
    fn move_vma(
        &mut self,
        vma: &Vma,
        addr: u64,
        old_len: u64,
        new_len: u64,
        to: u64,
        flags: u32,
    ) -> Result<u64, Errno> {
        if self.map_count() >= self.cfg.max_map_count.saturating_sub(3) {
            return Err(Errno::Enomem);
        }
        // copy_vma(): anonymous memory never faulted in (no anon_vma) takes
        // the pgoff of its new address; anything else keeps its own.
        let pgoff = if vma.backing == Backing::Anon && vma.anon().is_none() {
            to >> PAGE_SHIFT
        } else {
            vma.pgoff_at(addr)
        };
        let moved = Vma { start: to, end: to + new_len, pgoff, ..vma.clone() };
        // R9: the pages move first (move_page_tables), then the VMA. A
        // dead entry left at the destination (by this call's own unmap of
        // it, under rcu-dead) is reaped before: reaping frees the tables
        // under it, which would take the moved entries with them (found by
        // `rcuvm check`).
        self.reap_dead(true, to, to + new_len);
        self.vma_write_lock(vma);
        let mut g = crate::tlb::MmuGather::default();
        g.notify = self.hw.notifiers.start_locked(addr, addr + old_len, crate::notifier::NotifyEvent::Unmap);
        self.hw.pt.move_ptes(addr, to, old_len, &mut g);
        self.finish(g, false);
        self.store_merged(moved);
        if flags & MREMAP_DONTUNMAP == 0 {
            self.munmap_range(addr, addr + old_len)?;
        } else {
            self.dontunmap_complete(addr, old_len, to);
        }
        if vma.flags.contains(VmFlags::LOCKED) && new_len > old_len {
            self.populate(to + old_len, to + new_len, true); // R6
        }
        Ok(to)
    }

    /// `dontunmap_complete()` (R4): the source VMA (the one holding `addr`,
    /// which the moved VMA may have merged into) loses its lock bits in
    /// place, and its `anon_vma` if it was moved whole.
    fn dontunmap_complete(&mut self, addr: u64, len: u64, to: u64) {
        let Some(src) = self.vma_at(addr) else { return };
        let merged_with_new = src.start <= to && to < src.end;
        let whole = src.start == addr && src.end == addr + len && !merged_with_new;
        let flags = src.flags - LOCK_BITS;
        let anon_vma = if whole { None } else { src.anon() };
        if flags != src.flags || anon_vma != src.anon() {
            self.vma_write_lock(&src);
            let mut v = Vma { flags, ..(*src).clone() };
            v.set_anon(anon_vma);
            self.store(v.start..v.end, v);
        }
    }
}
