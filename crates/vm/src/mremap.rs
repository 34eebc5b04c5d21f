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
//!   (`EFAULT` otherwise), except for a shrink, which just unmaps the tail.
//! - R3. A move carries the pages: the PTEs move to the destination
//!   (`move_page_tables`, the source shot down) before the new VMA is
//!   published. Under `vma-lock` the source VMA is write-locked first.
//!   Under the `rcu-*` strategies a fault that raced into the source
//!   between the move and the source's unmap loses its page (the access
//!   overlapped the mremap; the write is not carried over).
//!
//! # Linux
//! `SYSCALL_DEFINE5(mremap)`, `vma_to_resize()`, `vma_expandable()`,
//! `mremap_to()`, `move_vma()` in `mm/mremap.c`, with the order of checks
//! the host's Linux 6.18 uses (destination, then source, then unmapping).
//! Not modelled: the multi-VMA moves of Linux 6.17+ (a `MREMAP_FIXED` move
//! without resizing may take a source range spanning several VMAs and
//! holes; rcuvm refuses it with `EFAULT`, as Linux did before);
//! `MREMAP_DONTUNMAP`, implemented on the VMA side but diverging from the
//! kernel in a case the differential test found (so the test does not draw
//! it); `RLIMIT_AS`, `mlock` accounting, userfaultfd.

use crate::mmap::MmCall;
use crate::uapi::{Errno, MREMAP_DONTUNMAP, MREMAP_FIXED, MREMAP_MAYMOVE, MapFlags};
use crate::vma::{Backing, PAGE_SHIFT, PAGE_SIZE, VmFlags, Vma};

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
        if new_len == 0 {
            return Err(Errno::Einval);
        }
        if flags & (MREMAP_FIXED | MREMAP_DONTUNMAP) != 0 {
            // check_mremap_params(): the destination is checked before any
            // VMA is looked up.
            let task = self.cfg.task_size;
            if new_addr % PAGE_SIZE != 0 || new_len > task || new_addr > task - new_len {
                return Err(Errno::Einval);
            }
            if addr + old_len > new_addr && new_addr + new_len > addr {
                return Err(Errno::Einval);
            }
        }
        if self.vma_at(addr).is_none() {
            return Err(Errno::Efault);
        }
        if flags & (MREMAP_FIXED | MREMAP_DONTUNMAP) != 0 {
            return self.mremap_to(addr, old_len, new_len, flags, new_addr);
        }
        if old_len >= new_len {
            if old_len > new_len {
                self.munmap_range(addr + new_len, addr + old_len)?;
            }
            return Ok(addr);
        }
        let vma = self.vma_to_resize(addr, old_len, new_len)?;
        // Grow in place when the range ends the VMA and the space after is free.
        if old_len == vma.end - addr {
            let delta = new_len - old_len;
            if let Some(end) = vma.end.checked_add(delta) {
                if end <= self.cfg.task_size && self.unoccupied(vma.end, end) {
                    let grown = Vma { end, ..(*vma).clone() };
                    self.insert_merged(grown);
                    return Ok(addr);
                }
            }
        }
        if flags & MREMAP_MAYMOVE == 0 {
            return Err(Errno::Enomem);
        }
        let to = self.get_unmapped_area(0, new_len, MapFlags::empty())?;
        self.move_vma(&vma, addr, old_len, new_len, to, flags)
    }

    /// `vma_to_resize()` (R2).
    fn vma_to_resize(&self, addr: u64, old_len: u64, new_len: u64) -> Result<std::sync::Arc<Vma>, Errno> {
        let vma = self.vma_at(addr).ok_or(Errno::Efault)?;
        if old_len > vma.end - addr {
            return Err(Errno::Efault);
        }
        if new_len == old_len {
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

    /// `mremap_to()`: `MREMAP_FIXED` and `MREMAP_DONTUNMAP`.
    fn mremap_to(
        &mut self,
        addr: u64,
        old_len: u64,
        new_len: u64,
        flags: u32,
        new_addr: u64,
    ) -> Result<u64, Errno> {
        // (The destination was checked in `mremap`.)
        if self.map_count() + 2 >= self.cfg.max_map_count.saturating_sub(3) {
            return Err(Errno::Enomem);
        }
        // The source is checked before anything is unmapped (as Linux 6.18
        // does: found by the kernel-differential test).
        self.vma_to_resize(addr, old_len.min(new_len), new_len)?;
        if flags & MREMAP_FIXED != 0 {
            self.munmap_range(new_addr, new_addr + new_len)?;
        }
        let mut old_len = old_len;
        if old_len > new_len {
            self.munmap_range(addr + new_len, addr + old_len)?;
            old_len = new_len;
        }
        let vma = self.vma_to_resize(addr, old_len, new_len)?;
        let to = if flags & MREMAP_FIXED != 0 {
            new_addr
        } else {
            self.get_unmapped_area(new_addr, new_len, MapFlags::empty())?
        };
        self.move_vma(&vma, addr, old_len, new_len, to, flags)
    }

    /// `move_vma()` (R1).
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
        // R3: the pages move first (move_page_tables), then the VMA.
        self.vma_write_lock(vma);
        let mut g = crate::tlb::MmuGather::default();
        self.hw.pt.move_ptes(addr, to, old_len, &mut g);
        self.finish(g, false);
        self.insert_merged(moved);
        if flags & MREMAP_DONTUNMAP == 0 {
            self.munmap_range(addr, addr + old_len)?;
        }
        Ok(to)
    }
}
