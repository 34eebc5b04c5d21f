//! Stack growth: an access just below a `VM_GROWSDOWN` VMA extends the VMA
//! down to the page of the access, as the main stack grows.
//!
//! # Invariants
//! - G1. Only a fault at an address no VMA maps grows a stack, and only
//!   the first VMA above the address (`find_vma`), if it has
//!   `VM_GROWSDOWN`. Whether to try is decided without a lock (a tree
//!   lookup under the fault's guard); the growth itself is an mm call,
//!   under the mmap write lock, that looks again (fault.rs FL8).
//! - G2. The growth is refused (the access is then `SEGV_MAPERR`, and
//!   nothing changes but G6's anon_vma) when the page is below `mmap_min_addr`; when the
//!   VMA below is accessible, not `VM_GROWSDOWN`, and would end less than
//!   `stack_guard_gap` below the page; when the VMA's `pgoff` would go
//!   below zero; or when the grown VMA would exceed
//!   [`MmConfig::stack_rlimit`](crate::MmConfig::stack_rlimit)
//!   (`RLIMIT_STACK`).
//! - G3. A grown VMA is a new object (vma.rs V1: a published VMA never
//!   changes): `[page, end)` with `pgoff` lowered by the pages it grew and
//!   an `anon_vma` (`anon_vma_prepare` comes first in Linux); the old
//!   object is write-locked and marked detached before the tree store that
//!   replaces it (strategy.rs S3, vma.rs V6), as every change of a VMA's
//!   range is.
//! - G4. Under `rcu-dead`, dead entries in the range grown over are reaped
//!   first, waiting for their grace period if it has not passed, as
//!   `MAP_FIXED` over a dead entry does (strategy.rs S4): growth never
//!   reuses a range whose stale translations may still be in use.
//! - G5. Growth happens before the access is checked against the VMA's
//!   rights, so a write below a read-only stack grows it and then fails
//!   with `SEGV_ACCERR`, as in Linux.
//! - G6. The VMA gets its anon_vma after the `mmap_min_addr` and guard
//!   gap checks and before the `pgoff` and `RLIMIT_STACK` ones, as
//!   `expand_downwards` calls `anon_vma_prepare`: a growth those refuse
//!   still leaves one, which decides later merges and `mprotect`'s
//!   `VM_ACCOUNT` (found by a review against the host kernel). The last
//!   check charges the growth (mmap.rs P10, `acct_stack_growth`): more
//!   than physical memory is refused (confirmed on the host: a touch 40 GiB
//!   below a stack with no `RLIMIT_STACK` is `SIGSEGV`).
//!
//! # Linux
//! `lock_mm_and_find_vma()` (mm/memory.c, 6.5+: growth under the mmap
//! write lock), `expand_downwards()` and `acct_stack_growth()`
//! (mm/mmap.c). Not modelled: `RLIMIT_AS` and `RLIMIT_MEMLOCK` (rcuvm
//! ignores them everywhere), `VM_GROWSUP`
//! architectures, and `locked_vm` accounting of a locked stack.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::mmap::MmCall;
use crate::vma::{AnonVmaId, PAGE_SHIFT, PAGE_SIZE, VmFlags, Vma};

impl MmCall<'_> {
    /// The first VMA ending above `addr` (`find_vma`; dead entries are
    /// not VMAs, nor is the gate area).
    pub(crate) fn find_vma(&self, addr: u64) -> Option<Arc<Vma>> {
        let mut at = addr;
        loop {
            let e = self.w.find(at)?;
            if e.value.start >= self.cfg.task_size {
                return None;
            }
            if !e.value.is_dead() {
                return Some(e.to_arc());
            }
            at = e.range.end;
        }
    }

    /// The last VMA ending at or below `addr` (`vma_prev`, skipping dead
    /// entries).
    fn vma_before(&self, addr: u64) -> Option<Arc<Vma>> {
        let g = self.domain.read();
        let mut at = addr;
        loop {
            let e = self.tree.prev(at, &g)?;
            if !e.value.is_dead() {
                return Some(e.to_arc());
            }
            at = e.range.start;
        }
    }

    /// Grows the `VM_GROWSDOWN` VMA above `addr` down to `addr`'s page
    /// (G1–G4). Returns whether a VMA now maps `addr`.
    pub(crate) fn expand_stack(&mut self, addr: u64) -> bool {
        let Some(vma) = self.find_vma(addr) else { return false };
        if vma.start <= addr {
            // Another fault grew it, or something mapped it, meanwhile.
            return true;
        }
        if !vma.flags.contains(VmFlags::GROWSDOWN) {
            return false;
        }
        let page = addr & !(PAGE_SIZE - 1);
        if page < self.cfg.mmap_min_addr {
            return false;
        }
        if let Some(prev) = self.vma_before(vma.start) {
            let accessible = prev.flags.intersects(VmFlags::READ | VmFlags::WRITE | VmFlags::EXEC);
            if !prev.flags.contains(VmFlags::GROWSDOWN)
                && accessible
                && page - prev.end < self.cfg.stack_guard_gap
            {
                return false;
            }
        }
        // G6: anon_vma_prepare comes before the last two checks, so a
        // growth they refuse still leaves the VMA an anon_vma (its own, a
        // neighbour's it could share, or a new one), as in Linux: set in
        // place, as a first fault does (vma.rs V4).
        if vma.anon().is_none() {
            let id = crate::fault::find_mergeable_anon_vma(self.tree, &vma).unwrap_or_else(AnonVmaId::fresh);
            let _ = vma.rt.anon.compare_exchange(0, id.0, Ordering::AcqRel, Ordering::Acquire);
        }
        let grow = (vma.start - page) >> PAGE_SHIFT;
        if grow > vma.pgoff || vma.end - page > self.cfg.stack_rlimit {
            return false;
        }
        if self.vm_enough_memory(grow).is_err() {
            return false; // G6: acct_stack_growth's last check
        }
        // G4: no stale translation of a dead entry below may survive.
        self.reap_dead(true, page, vma.start);
        // G3, strategy.rs S3: the object replaced is write-locked first;
        // the copy keeps its anon_vma.
        self.vma_write_lock(&vma);
        let grown = Vma { start: page, pgoff: vma.pgoff - grow, ..(*vma).clone() };
        let end = grown.end;
        self.store(page..end, grown);
        true
    }
}
