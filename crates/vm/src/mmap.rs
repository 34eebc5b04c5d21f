//! `mmap` and `munmap`, with Linux's checks, placement, accounting flags and
//! merging.
//!
//! # Invariants
//! - P1. Checks run in Linux's order (`do_mmap`, `__get_unmapped_area`,
//!   `mmap_region`, `do_vmi_munmap`), so the same bad call gets the same
//!   errno; a refused call changes nothing.
//! - P2. Every VMA written to the tree is a new, complete `Vma` whose range
//!   equals its tree range; a VMA that loses part of its range is replaced
//!   by a slice of it (vma.rs V1). Remnants are written before the middle is
//!   erased, so a reader never sees a hole that was not unmapped.
//! - P3. A new mapping merges with its neighbours exactly when Linux's
//!   `vma_merge_new_range` would: same file (or both anonymous), same flags
//!   but `VM_SOFTDIRTY`, compatible `anon_vma`, contiguous `pgoff`, same
//!   `[anon:…]` name, no `VM_SPECIAL` flag.
//! - P4. `calc_vm_flag_bits`: `MAP_GROWSDOWN`, `MAP_LOCKED`, `MAP_SYNC` and
//!   `MAP_STACK` (`VM_NOHUGEPAGE`, as since Linux 6.7) become VMA flags,
//!   whatever the map type.
//! - P5. The map type is the low four bits (`MAP_TYPE`): a file takes
//!   `MAP_SHARED`, `MAP_SHARED_VALIDATE` (which refuses flags outside
//!   `LEGACY_MAP_MASK` with `EOPNOTSUPP`) or `MAP_PRIVATE`; anonymous
//!   memory `MAP_SHARED`, `MAP_PRIVATE` or `MAP_DROPPABLE`
//!   (`VM_DROPPABLE | VM_NORESERVE | VM_WIPEONFORK | VM_DONTDUMP`; not
//!   with `MAP_LOCKED`, `MAP_HUGETLB` or `MAP_GROWSDOWN`); anything else
//!   is `EINVAL`, as is `MAP_GROWSDOWN` on a file or shared anonymous
//!   memory, and `MAP_HUGETLB` on a file (`ksys_mmap_pgoff`: no rcuvm
//!   file is on hugetlbfs).
//! - P6. Private anonymous memory whose length is a multiple of 2 MiB,
//!   mapped with no hint, is placed on a 2 MiB boundary
//!   (`thp_get_unmapped_area_vmflags`; only whole multiples of `PMD_SIZE`,
//!   as this machine's 6.18 does); `mremap` moves of such memory too. Files and
//!   shared anonymous memory are placed as any mapping (their
//!   filesystem's own `get_unmapped_area` is not modelled; shmem's does
//!   not align with `shmem_enabled=never`, the default).
//! - P7. `MAP_HUGETLB` on anonymous memory is refused as a machine with
//!   no huge pages reserved (`vm.nr_hugepages = 0`, this one's setting)
//!   refuses it: `EINVAL` for a page size x86-64 lacks (2 MiB and 1 GiB
//!   exist) or a fixed address not aligned to it, else `ENOMEM` unless
//!   `MAP_NORESERVE`. With `MAP_NORESERVE` Linux maps a hugetlbfs file
//!   (`/anon_hugepage`), which rcuvm does not model: it maps ordinary
//!   memory (docs/design.md §10), which population and faults then fill
//!   with small pages where Linux, with no huge page reserved, fails
//!   (`EFAULT` from `MADV_POPULATE_*`, `SIGBUS`).
//! - P8. `MAP_32BIT` (x86-64) places bottom-up in `[1 GiB, 2 GiB)`, as
//!   Linux does with address randomisation off (rcuvm never randomises);
//!   a hint is kept only if free and below 2 GiB; a full window is
//!   `ENOMEM`. With `MAP_FIXED` it does nothing.
//! - P9. VMAs at or above `TASK_SIZE` (a snapshot's `[vsyscall]`, the
//!   gate area) are in the tree for maps to show, but no mm call finds
//!   or changes them, as `vma_lookup` never returns the gate VMA.
//! - P10. Overcommit, as Linux's default heuristic (`OVERCOMMIT_GUESS`)
//!   has it: memory that may need frames of its own is charged, and one
//!   charge larger than physical memory (the [`PhysMem`](crate::frame::PhysMem)'s capacity;
//!   rcuvm has no swap) is refused, each caller its own way (as Linux
//!   does): `mmap`, `mprotect` and `mremap` return `ENOMEM`, `brk` keeps
//!   the old break, a stack growth is `SEGV_MAPERR`. A refused `mmap`
//!   changes nothing, but for a `MAP_FIXED` one, which leaves what Linux
//!   leaves: the VMAs it overlaps split at its edges (private), or
//!   unmapped (shared memory, charged after the old pages are cleared);
//!   confirmed on the host. `mprotect` keeps the VMAs it changed before
//!   the refusal (Q3), `mremap` the unmaps it made before it (R10).
//!   Charged: a
//!   private writable mapping without `MAP_NORESERVE` (the pages it
//!   replaces under `MAP_FIXED` that were charged are not charged again),
//!   a shared anonymous mapping without `MAP_NORESERVE`, private memory
//!   that `mprotect` makes writable (mprotect.rs Q3), the heap `brk` adds,
//!   a stack's growth (stack.rs G6) and what `mremap` changes in a charged
//!   VMA (mremap.rs R10). Why: without
//!   it rcuvm accepted a private writable mapping of 128 TiB, which
//!   `mlock` then populated until memory ran out; Linux refuses the
//!   mapping.
//!
//! # Concurrency
//! mmap write lock (taken by the `AddressSpace` methods).
//!
//! # Linux
//! `mm/mmap.c` (`do_mmap`, `arch_get_unmapped_area_topdown`,
//! `round_hint_to_min`), `mm/vma.c` (`mmap_region`, `vma_merge_new_range`,
//! `is_mergeable_vma`, `is_mergeable_anon_vma`, `vms_gather_munmap_vmas`).
//!
//! `[heap]` and `[stack]` are not stored names: they are derived from `brk`
//! and `start_stack` when maps is read (mm.rs `Layout`), so those VMAs merge
//! like any anonymous memory. Other bracketed names (`[vdso]`, `[vvar]`…)
//! are special mappings that never merge.
//!
//! Not modelled yet: hugetlb pages (P7), and the stack guard gap in placement other
//! than below `VM_GROWSDOWN` VMAs.

use std::sync::Arc;

use rcuvm_maple::{MapleTree, Writer};
use rcuvm_rcu::Domain;

use crate::uapi::{Errno, MapFlags, Prot};
use crate::vma::{Backing, FileId, PAGE_SHIFT, PAGE_SIZE, VmFlags, Vma};

/// `PMD_SIZE`: the span of a huge page, to which Linux aligns large
/// anonymous mappings (P6).
const PMD_SIZE: u64 = 2 << 20;

/// `MAP_TYPE`: the bits of `mmap`'s flags that say the mapping's type.
const MAP_TYPE: u32 = 0x0f;

/// `MAP_HUGE_SHIFT`: where `MAP_HUGETLB`'s page size (log2) sits in the flags.
const MAP_HUGE_SHIFT: u32 = 26;

/// `MAP_DROPPABLE`, a map type of its own (Linux 6.11+).
const MAP_DROPPABLE: u32 = MapFlags::DROPPABLE.bits();

/// `LEGACY_MAP_MASK`: the flags every kernel accepted; `MAP_SHARED_VALIDATE`
/// refuses the others on a file (`EOPNOTSUPP`). Includes `MAP_32BIT`
/// and the `MAP_HUGE_*` size bits.
const LEGACY_MAP_MASK: u32 = MapFlags::SHARED_VALIDATE.bits()
    | MapFlags::FIXED.bits()
    | MapFlags::ANONYMOUS.bits()
    | MapFlags::DENYWRITE.bits()
    | MapFlags::EXECUTABLE.bits()
    | MapFlags::UNINITIALIZED.bits()
    | MapFlags::GROWSDOWN.bits()
    | MapFlags::LOCKED.bits()
    | MapFlags::NORESERVE.bits()
    | MapFlags::POPULATE.bits()
    | MapFlags::NONBLOCK.bits()
    | MapFlags::STACK.bits()
    | MapFlags::HUGETLB.bits()
    | MapFlags::BIT32.bits()
    | (0x3f << MAP_HUGE_SHIFT);

/// The tunables of an address space.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct MmConfig {
    /// `TASK_SIZE`: one past the highest user address.
    pub task_size: u64,
    /// `mm->mmap_base`: top-down placement starts below it.
    pub mmap_base: u64,
    /// The kernel's effective `mmap_min_addr`: the larger of the sysctl
    /// `vm.mmap_min_addr` and `CONFIG_LSM_MMAP_MIN_ADDR` (65536 on common
    /// distributions, where the sysctl often reads 4096). Placement, hints
    /// and stack growth keep above it; `MAP_FIXED` below it succeeds (rcuvm
    /// acts as root, design.md §10).
    pub mmap_min_addr: u64,
    /// `vm.max_map_count`.
    pub max_map_count: usize,
    /// `stack_guard_gap` in bytes (kept free below `VM_GROWSDOWN` VMAs).
    pub stack_guard_gap: u64,
    /// `RLIMIT_STACK` in bytes: the most a `VM_GROWSDOWN` VMA grows to on
    /// faults (stack.rs G2); `u64::MAX` is unlimited.
    pub stack_rlimit: u64,
}

impl MmConfig {
    /// The highest `task_size`: what the four levels of page tables map
    /// (48 bits). Above it two addresses would share a page.
    pub const TASK_SIZE_LIMIT: u64 = 1 << 48;

    /// Whether these tunables describe an address space rcuvm can keep:
    /// page-aligned bounds, `mmap_min_addr < mmap_base <= task_size <=`
    /// [`Self::TASK_SIZE_LIMIT`]. The message names the first that fails.
    pub fn check(&self) -> Result<(), String> {
        let aligned = |name: &str, v: u64| {
            if v % PAGE_SIZE == 0 { Ok(()) } else { Err(format!("{name} {v:#x} is not page-aligned")) }
        };
        aligned("task_size", self.task_size)?;
        aligned("mmap_base", self.mmap_base)?;
        aligned("mmap_min_addr", self.mmap_min_addr)?;
        aligned("stack_guard_gap", self.stack_guard_gap)?;
        if self.task_size == 0 || self.task_size > Self::TASK_SIZE_LIMIT {
            return Err(format!(
                "task_size {:#x} is not in (0, 2^48]: page tables map 48 bits",
                self.task_size
            ));
        }
        if self.mmap_base > self.task_size || self.mmap_base <= self.mmap_min_addr {
            return Err(format!(
                "mmap_base {:#x} is not in (mmap_min_addr {:#x}, task_size {:#x}]",
                self.mmap_base, self.mmap_min_addr, self.task_size
            ));
        }
        Ok(())
    }
}

impl Default for MmConfig {
    fn default() -> Self {
        let task_size = 0x7fff_ffff_f000;
        MmConfig {
            task_size,
            // TASK_SIZE minus the minimum 128 MiB stack gap, no randomisation.
            mmap_base: task_size - (128 << 20),
            mmap_min_addr: 0x1_0000,
            max_map_count: 65530,
            stack_guard_gap: 256 * PAGE_SIZE,
            // `ulimit -s`'s usual 8192 KiB.
            stack_rlimit: 8 << 20,
        }
    }
}

/// A file to map: its identity and the mode its descriptor was opened with.
///
/// rcuvm reads no file: a page's contents are a deterministic function of
/// the file's identity and the page offset ([`crate::frame::file_word`]),
/// and a file has no size (no `SIGBUS` past its end). Shared mappings of
/// the same file share page-cache frames.
#[derive(Clone, Debug)]
pub struct MapFile {
    /// What maps shows.
    pub id: FileId,
    /// Opened for reading.
    pub readable: bool,
    /// Opened for writing.
    pub writable: bool,
}

/// `VM_SPECIAL`: VMAs that never merge (and that mlock skips, madvise DODUMP refuses).
pub(crate) const VM_SPECIAL: VmFlags =
    VmFlags::IO.union(VmFlags::DONTEXPAND).union(VmFlags::PFNMAP).union(VmFlags::MIXEDMAP);

fn page_align(x: u64) -> Option<u64> {
    x.checked_add(PAGE_SIZE - 1).map(|v| v & !(PAGE_SIZE - 1))
}

/// The state an mm call works on, under the mmap lock.
pub(crate) struct MmCall<'a> {
    pub(crate) w: Writer<'a, Arc<Vma>>,
    /// The tree `w` writes (for lookups that need a guard).
    pub(crate) tree: &'a MapleTree<Arc<Vma>>,
    /// The VMA domain.
    pub(crate) domain: &'a Domain,
    pub(crate) cfg: &'a MmConfig,
    /// brk and stack bounds (mm.rs `Layout`).
    pub(crate) layout: &'a crate::mm::Layout,
    /// Page tables, frames, TLBs and the strategy (mm.rs A3).
    pub(crate) hw: &'a crate::mm::Hw,
    /// `mm->def_flags`: `VM_LOCKED` (and `VM_LOCKONFAULT`) after
    /// `mlockall(MCL_FUTURE)`, given to every new mapping (mlock.rs).
    pub(crate) def_flags: &'a mut VmFlags,
    /// Nesting of `tree_txn` (mm.rs A5).
    pub(crate) txn_depth: u32,
    /// The number of the change `tree_txn` is making (mm.rs A6).
    pub(crate) txn: u64,
    /// Expired dead entries this call may still erase beyond those it
    /// needs (unmap.rs U5).
    pub(crate) reap_budget: usize,
    /// Dead entries (`rcu-dead`, strategy.rs S4).
    pub(crate) dead: &'a mut std::collections::VecDeque<crate::strategy::DeadEntry>,
    /// Scratch for the runs `reap_dead` erases (unmap.rs U7).
    pub(crate) reap_runs: &'a mut Vec<(u64, u64)>,
    /// The population this call asks for, run after its write lock is
    /// dropped (mlock.rs L5).
    pub(crate) populate: &'a mut Option<crate::mlock::Populate>,
}

impl MmCall<'_> {
    /// Runs `f`, a change of the tree made of several stores, as one change
    /// to lockless readers: `write_seq` is odd from the outermost begin to
    /// its end (mm.rs A5).
    pub(crate) fn tree_txn<R>(&mut self, f: impl FnOnce(&mut Self) -> R) -> R {
        use std::sync::atomic::{Ordering, fence};
        if self.txn_depth == 0 {
            // mm.rs A6: take the change's slot (a seqlock write: the tag
            // says "being taken" before the range changes, then the
            // change's number), then make the seqcount odd.
            let k = self.hw.write_seq.load(Ordering::Relaxed) / 2;
            let slot = &self.hw.txn_log[(k % crate::protocol::TXN_LOG) as usize];
            slot.tag.store(u64::MAX, Ordering::Relaxed);
            // ORDERING: Release: a reader that sees the new range sees the
            // tag change too (its Acquire fence pairs with this one).
            fence(Ordering::Release);
            slot.lo.store(u64::MAX, Ordering::Relaxed);
            slot.hi.store(0, Ordering::Relaxed);
            slot.tag.store(k, Ordering::Release);
            self.txn = k;
            // ORDERING: SeqCst, the write side of the readers' seqcount.
            self.hw.write_seq.fetch_add(1, Ordering::SeqCst);
        }
        self.txn_depth += 1;
        let r = f(self);
        self.txn_depth -= 1;
        if self.txn_depth == 0 {
            self.hw.write_seq.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        r
    }

    /// A tree store of `v` over `r`; inside a `tree_txn`, the change's range
    /// is widened first (mm.rs A6).
    pub(crate) fn store(&mut self, r: std::ops::Range<u64>, v: Vma) {
        self.widen_txn(r.start, r.end);
        self.w.store(r, crate::vma_cache::vm_area_alloc(v)).expect("a VMA's range is never empty");
    }

    /// A tree erase of `r`, widening as [`MmCall::store`] does.
    pub(crate) fn erase(&mut self, r: std::ops::Range<u64>) {
        self.widen_txn(r.start, r.end);
        self.w.erase(r).expect("a non-empty range");
    }

    /// mm.rs A6: before a store of `[s, e)` inside a change, the change's
    /// range covers it. (Its Relaxed stores are ordered before the tree's
    /// Release store that follows.)
    fn widen_txn(&self, s: u64, e: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        if self.txn_depth == 0 {
            return;
        }
        let slot = &self.hw.txn_log[(self.txn % crate::protocol::TXN_LOG) as usize];
        if s < slot.lo.load(Relaxed) {
            slot.lo.store(s, Relaxed);
        }
        if e > slot.hi.load(Relaxed) {
            slot.hi.store(e, Relaxed);
        }
    }

    /// `map_count`: entries of the tree that are VMAs (not dead entries).
    pub(crate) fn map_count(&self) -> usize {
        // P9: the gate area is in the tree, not in map_count.
        self.w.tree_len() - self.dead.len() - self.layout.gate_vmas.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Entries (VMAs and dead entries) overlapping `[start, end)`, in order.
    pub(crate) fn entries_in(&self, start: u64, end: u64) -> crate::protocol::Entries<Vma> {
        // protocol.rs PR2, the step the loom model's placement runs too.
        crate::protocol::entries_in(&self.w, start, end)
    }

    /// VMAs overlapping `[start, end)`, in order (dead entries are not
    /// VMAs: vma.rs V5). P9: nor is a snapshot's `[vsyscall]`, above
    /// `TASK_SIZE`: Linux's gate area, which maps shows and no mm call
    /// finds (`vma_lookup`).
    pub(crate) fn overlapping(&self, start: u64, end: u64) -> crate::protocol::Entries<Vma> {
        let mut v = self.entries_in(start, end);
        v.retain(|v| !v.is_dead() && v.start < self.cfg.task_size);
        v
    }

    /// Whether nothing, not even a dead entry, occupies `[start, end)`:
    /// what placement and growth need (strategy.rs S4).
    pub(crate) fn unoccupied(&self, start: u64, end: u64) -> bool {
        self.entries_in(start, end).is_empty()
    }

    /// The VMA holding `addr` (not a dead entry, not the gate area: P9).
    pub(crate) fn vma_at(&self, addr: u64) -> Option<Arc<Vma>> {
        self.w
            .load(addr)
            .filter(|e| !e.value.is_dead() && e.value.start < self.cfg.task_size)
            .map(|e| e.to_arc())
    }

    /// `__vm_enough_memory()` under `OVERCOMMIT_GUESS` (P10): a charge of
    /// more pages than physical memory holds is refused (`ENOMEM`). rcuvm's
    /// RAM is its [`PhysMem`](crate::frame::PhysMem), with no swap.
    pub(crate) fn vm_enough_memory(&self, pages: u64) -> Result<(), Errno> {
        if pages > self.hw.phys.capacity() as u64 { Err(Errno::Enomem) } else { Ok(()) }
    }

    /// `do_mmap`.
    pub(crate) fn mmap(
        &mut self,
        addr: u64,
        len: u64,
        prot: Prot,
        mut flags: MapFlags,
        file: Option<&MapFile>,
        offset: u64,
    ) -> Result<u64, Errno> {
        // The x86-64 syscall checks the byte offset first.
        if offset % PAGE_SIZE != 0 {
            return Err(Errno::Einval);
        }
        // ksys_mmap_pgoff(): MAP_HUGETLB needs a hugetlbfs file, or makes
        // one of a huge page size the machine has (P7).
        let hugetlb = flags.contains(MapFlags::HUGETLB);
        let huge_page = if !hugetlb {
            None
        } else if file.is_some() && !flags.contains(MapFlags::ANONYMOUS) {
            return Err(Errno::Einval);
        } else {
            match (flags.bits() >> MAP_HUGE_SHIFT) & 0x3f {
                0 | 21 => Some(PMD_SIZE),
                30 => Some(1 << 30),
                _ => return Err(Errno::Einval),
            }
        };
        let pgoff = offset >> PAGE_SHIFT;
        if len == 0 {
            return Err(Errno::Einval);
        }
        if flags.contains(MapFlags::FIXED_NOREPLACE) {
            flags |= MapFlags::FIXED;
        }
        let mut addr = addr;
        if !flags.contains(MapFlags::FIXED) {
            // round_hint_to_min
            addr &= !(PAGE_SIZE - 1);
            if addr != 0 && addr < self.cfg.mmap_min_addr {
                addr = self.cfg.mmap_min_addr;
            }
        }
        let len = match page_align(len) {
            Some(l) if l != 0 => l,
            _ => return Err(Errno::Enomem),
        };
        // Unreachable from 64-bit byte offsets (kept for Linux's order).
        if pgoff.checked_add(len >> PAGE_SHIFT).is_none() {
            return Err(Errno::Eoverflow);
        }
        if self.map_count() > self.cfg.max_map_count {
            return Err(Errno::Enomem);
        }
        let anon = file.is_none() || flags.contains(MapFlags::ANONYMOUS);
        let file = if anon { None } else { file };
        // P4: `calc_vm_flag_bits`, before placement (which reads them).
        let mut vm = VmFlags::from_prot(prot)
            | *self.def_flags
            | VmFlags::MAYREAD
            | VmFlags::MAYWRITE
            | VmFlags::MAYEXEC;
        for (map, vm_flag) in [
            (MapFlags::GROWSDOWN, VmFlags::GROWSDOWN),
            (MapFlags::LOCKED, VmFlags::LOCKED),
            (MapFlags::SYNC, VmFlags::SYNC),
            (MapFlags::STACK, VmFlags::NOHUGEPAGE),
        ] {
            if flags.contains(map) {
                vm |= vm_flag;
            }
        }
        let thp = anon && flags.bits() & MapFlags::SHARED.bits() == 0;
        let addr = self.get_unmapped_area(addr, len, flags, thp)?;
        // P7: hugetlbfs's get_unmapped_area wants a huge-page-aligned fixed
        // address, and its mmap reserves the pages, which rcuvm has none of.
        if let Some(huge) = huge_page {
            if flags.contains(MapFlags::FIXED) && addr % huge != 0 {
                return Err(Errno::Einval);
            }
            if !flags.contains(MapFlags::NORESERVE) {
                return Err(Errno::Enomem);
            }
        }
        if flags.contains(MapFlags::FIXED_NOREPLACE) && !self.overlapping(addr, addr + len).is_empty() {
            return Err(Errno::Eexist);
        }

        // P5: the map type, after placement as in `do_mmap` (a refused
        // type under `MAP_FIXED` unmaps nothing).
        let kind = flags.bits() & MAP_TYPE;
        let growsdown = vm.contains(VmFlags::GROWSDOWN);
        let shared = match (file.is_some(), kind) {
            (true, 0x01 | 0x03) | (false, 0x01) => true,
            (_, 0x02) => false,
            // MAP_DROPPABLE: private anonymous memory that may vanish, so
            // neither locked, nor a stack, nor kept by fork or a core dump.
            (false, MAP_DROPPABLE) => {
                if flags.intersects(MapFlags::LOCKED | MapFlags::HUGETLB) || growsdown {
                    return Err(Errno::Einval);
                }
                vm |= VmFlags::DROPPABLE | VmFlags::NORESERVE | VmFlags::WIPEONFORK | VmFlags::DONTDUMP;
                false
            }
            _ => return Err(Errno::Einval),
        };
        let mut pgoff = pgoff;
        let backing;
        if let Some(f) = file {
            // file_mmap_ok(): a regular file's offsets end at MAX_LFS_FILESIZE.
            if (i64::MAX as u64 - len) >> PAGE_SHIFT < pgoff {
                return Err(Errno::Eoverflow);
            }
            // MAP_SHARED_VALIDATE refuses what legacy MAP_SHARED ignores
            // (MAP_SYNC too: no rcuvm file is DAX).
            if kind == 0x03 && flags.bits() & !LEGACY_MAP_MASK != 0 {
                return Err(Errno::Eopnotsupp);
            }
            if shared {
                if prot.contains(Prot::WRITE) && !f.writable {
                    return Err(Errno::Eacces);
                }
                vm |= VmFlags::SHARED | VmFlags::MAYSHARE;
                if !f.writable {
                    vm.remove(VmFlags::MAYWRITE | VmFlags::SHARED);
                }
            }
            if !f.readable {
                return Err(Errno::Eacces);
            }
            if growsdown {
                return Err(Errno::Einval);
            }
            backing = Backing::File(f.id.clone());
        } else if shared {
            if growsdown {
                return Err(Errno::Einval);
            }
            vm |= VmFlags::SHARED | VmFlags::MAYSHARE;
            pgoff = 0;
            // shmem_acct_size(): shared memory is charged unless
            // MAP_NORESERVE (P10).
            if !flags.contains(MapFlags::NORESERVE) && self.vm_enough_memory(len >> PAGE_SHIFT).is_err() {
                // Linux charges shared memory after it cleared what a
                // MAP_FIXED mapping replaces: that stays unmapped.
                if flags.contains(MapFlags::FIXED) {
                    self.munmap_range(addr, addr + len)?;
                }
                return Err(Errno::Enomem);
            }
            // shmem_zero_setup: each shared anonymous mapping is its own file.
            let ino = self.hw.phys.next_shmem_ino();
            backing = Backing::File(FileId {
                dev_major: 0,
                dev_minor: 1,
                inode: ino,
                path: Arc::from("/dev/zero (deleted)"),
            });
        } else {
            pgoff = addr >> PAGE_SHIFT;
            backing = Backing::Anon;
        }
        if flags.contains(MapFlags::NORESERVE) {
            vm |= VmFlags::NORESERVE;
        }
        // accountable_mapping()
        if vm & (VmFlags::NORESERVE | VmFlags::SHARED | VmFlags::WRITE) == VmFlags::WRITE {
            // P10: charged, less what the VMAs it replaces were charged.
            let replaced: u64 = if flags.contains(MapFlags::FIXED) {
                self.overlapping(addr, addr + len)
                    .iter()
                    .filter(|o| o.flags.contains(VmFlags::ACCOUNT))
                    .map(|o| (o.end.min(addr + len) - o.start.max(addr)) >> PAGE_SHIFT)
                    .sum()
            } else {
                0
            };
            if self.vm_enough_memory((len >> PAGE_SHIFT).saturating_sub(replaced)).is_err() {
                // Linux charges after it gathered (split) what a MAP_FIXED
                // mapping replaces, and the splits stay.
                if flags.contains(MapFlags::FIXED) {
                    self.split_at(addr);
                    self.split_at(addr + len);
                }
                return Err(Errno::Enomem);
            }
            vm |= VmFlags::ACCOUNT;
        }
        // mmap_region: unmap what MAP_FIXED overlaps, then map.
        let v = Vma::new(addr, addr + len, vm, pgoff, backing, None, None);
        // mm.rs A5: a MAP_FIXED replacement is one change to readers (no
        // hole between the old mapping's removal and the new one). Over no
        // VMA, the mapping is one store (dead entries it reaps first are
        // not shown to readers), which readers see whole without the
        // seqcount (A5b).
        if self.overlapping(addr, addr + len).is_empty() {
            self.insert_merged(v);
        } else {
            self.tree_txn(|c| {
                c.munmap_range(addr, addr + len)?;
                c.insert_merged(v);
                Ok::<(), Errno>(())
            })?;
        }
        // vm_mmap_pgoff(): locked (or MAP_POPULATE) mappings are faulted
        // in, errors ignored (mlock.rs L3).
        let populate = MapFlags::POPULATE | MapFlags::NONBLOCK;
        if vm.contains(VmFlags::LOCKED) || flags & populate == MapFlags::POPULATE {
            self.populate(addr, addr + len, true);
        }
        Ok(addr)
    }

    /// `__get_unmapped_area` with `arch_get_unmapped_area_topdown`. `thp`:
    /// the mapping is private anonymous memory, which Linux places on a
    /// 2 MiB boundary when its length is a multiple of 2 MiB and there is
    /// no hint (P6).
    pub(crate) fn get_unmapped_area(
        &self,
        addr: u64,
        len: u64,
        flags: MapFlags,
        thp: bool,
    ) -> Result<u64, Errno> {
        let task = self.cfg.task_size;
        if len > task {
            return Err(Errno::Enomem);
        }
        let low32 = flags.contains(MapFlags::BIT32);
        let addr = if flags.contains(MapFlags::FIXED) {
            addr
        } else if thp && addr == 0 && len % PMD_SIZE == 0 {
            self.thp_get_unmapped_area(len, low32)?
        } else if low32 {
            self.find_32bit(addr, len)?
        } else {
            let hint_ok = addr != 0
                && task - len >= addr
                && addr >= self.cfg.mmap_min_addr
                && self.is_free_for(addr, len);
            if hint_ok { addr } else { self.find_topdown(len)? }
        };
        if addr > task - len {
            return Err(Errno::Enomem);
        }
        if addr % PAGE_SIZE != 0 {
            return Err(Errno::Einval);
        }
        Ok(addr)
    }

    /// `thp_get_unmapped_area_vmflags` for anonymous memory (offset 0): a
    /// gap 2 MiB longer than `len`, then the 2 MiB boundary in it, one
    /// boundary up if the gap starts on one (top-down). Without such a
    /// gap, the plain search.
    /// `low32`: `MAP_32BIT`'s bottom-up search, and yet one boundary up
    /// when the gap starts on one (Linux tests the mm's top-down flag,
    /// not the search it made).
    fn thp_get_unmapped_area(&self, len: u64, low32: bool) -> Result<u64, Errno> {
        let search = |len| if low32 { self.find_32bit(0, len) } else { self.find_topdown(len) };
        if let Some(padded) = len.checked_add(PMD_SIZE).filter(|&p| p <= self.cfg.task_size) {
            if let Ok(ret) = search(padded) {
                let off_sub = ret.wrapping_neg() & (PMD_SIZE - 1);
                return Ok(if off_sub == 0 { ret + PMD_SIZE } else { ret + off_sub });
            }
        }
        search(len)
    }

    /// x86-64's `MAP_32BIT` (P8): `arch_get_unmapped_area` bottom-up in
    /// `[1 GiB, 2 GiB)` (`find_start_end`, without its randomisation), a
    /// hint kept when free and below 2 GiB; nothing free is `ENOMEM`.
    fn find_32bit(&self, hint: u64, len: u64) -> Result<u64, Errno> {
        const BEGIN: u64 = 0x4000_0000;
        const END: u64 = 0x8000_0000;
        if len > END {
            return Err(Errno::Enomem);
        }
        if hint != 0 {
            let a = hint.next_multiple_of(PAGE_SIZE);
            if END - len >= a && self.is_free_for(a, len) {
                return Ok(a);
            }
        }
        let mut low = BEGIN;
        while let Some(a) = self.w.empty_area(low, END, len) {
            if self.is_free_for(a, len) {
                return Ok(a);
            }
            // Too close under a stack: look above it.
            low = a + PAGE_SIZE;
        }
        Err(Errno::Enomem)
    }

    /// Whether `[addr, addr + len)` is free, keeping the guard gap below a
    /// `VM_GROWSDOWN` VMA above it.
    fn is_free_for(&self, addr: u64, len: u64) -> bool {
        // inject.rs: placement that ignores dead entries (breaks S4).
        let free = if crate::inject::active(self.hw.inject, crate::inject::Injection::PlacementIgnoresDead) {
            self.overlapping(addr, addr + len).is_empty()
        } else {
            self.unoccupied(addr, addr + len)
        };
        if !free {
            return false;
        }
        // `vm_start_gap` of the next VMA, past dead entries (a dead entry
        // is none, and must not hide a stack's gap). Only entries that
        // start within the gap can matter, so the walk stops there: under
        // `rcu-dead` thousands of dead entries may lie above (mmap1's
        // pairs fell from 400 k to 160 k a second when it walked them all).
        let end = addr + len;
        let gap = self.cfg.stack_guard_gap;
        let limit = end.saturating_add(gap);
        let mut at = end;
        loop {
            let Some(e) = self.w.find(at) else { return true };
            if e.range.start >= limit || e.value.start >= self.cfg.task_size {
                return true;
            }
            if !e.value.is_dead() {
                return !e.value.flags.contains(VmFlags::GROWSDOWN)
                    || end <= e.range.start.saturating_sub(gap);
            }
            at = e.range.end;
        }
    }

    /// `vm_unmapped_area` top-down below `mmap_base`, then bottom-up above it.
    fn find_topdown(&self, len: u64) -> Result<u64, Errno> {
        let low = self.cfg.mmap_min_addr.max(PAGE_SIZE);
        let mut hi = self.cfg.mmap_base;
        while let Some(a) = self.w.empty_area_rev(low, hi, len) {
            if self.is_free_for(a, len) {
                return Ok(a);
            }
            // Too close under a stack: look below its guard gap.
            hi = a + len - PAGE_SIZE;
            if hi <= low {
                break;
            }
        }
        self.w.empty_area(self.cfg.mmap_base, self.cfg.task_size, len).ok_or(Errno::Enomem)
    }

    /// Whether `a` (below) and `b` (above, adjacent) may become one VMA (P3).
    pub(crate) fn mergeable(a: &Vma, b: &Vma) -> bool {
        let special = |v: &Vma| {
            v.flags.intersects(VM_SPECIAL) || v.name.as_deref().is_some_and(|n| !n.starts_with("[anon:"))
        };
        a.end == b.start
            && a.backing == b.backing
            && (a.flags ^ b.flags).difference(VmFlags::SOFTDIRTY).is_empty()
            && !special(a)
            && !special(b)
            && a.name == b.name
            && crate::vma::anon_vmas_mergeable(a.anon(), b.anon())
            && a.pgoff + ((a.end - a.start) >> PAGE_SHIFT) == b.pgoff
    }

    /// Inserts `v` into a free range, merging with its neighbours (P3).
    /// A dead entry in the range (left by this very call's unmap, under
    /// `MAP_FIXED`) is reaped first, after a grace period (strategy.rs S4).
    pub(crate) fn insert_merged(&mut self, v: Vma) {
        self.reap_dead(true, v.start, v.end);
        self.store_merged(v);
    }

    /// `insert_merged` without the reaping: for a caller that reaped the
    /// range already and has put pages there meanwhile (an mremap move),
    /// which a reaping of other, expired dead entries now could free with
    /// the tables around them (their gap would include this range, still
    /// without a VMA).
    pub(crate) fn store_merged(&mut self, v: Vma) {
        let prev = if v.start > 0 { self.vma_at(v.start - 1) } else { None };
        let next = self.vma_at(v.end);
        let mut merged = v;
        if let Some(p) = prev.as_ref().filter(|p| Self::mergeable(p, &merged)) {
            merged = Vma { start: p.start, pgoff: p.pgoff, anon_vma: p.anon().or(merged.anon()), ..merged };
        }
        if let Some(n) = next.as_ref().filter(|n| Self::mergeable(&merged, n)) {
            merged = Vma { end: n.end, anon_vma: merged.anon().or(n.anon()), ..merged };
        }
        let (s, e) = (merged.start, merged.end);
        // S3: every VMA the store replaces (merged neighbours, the VMA an
        // mremap grows) is write-locked first, as `vma_merge_new_range`'s
        // `vma_start_write` does: a fault still holding one must finish
        // before a later call of this write cycle changes its pages.
        for old in self.overlapping(s, e) {
            self.vma_write_lock(&old);
        }
        self.store(s..e, merged);
    }

    /// `munmap(2)`.
    pub(crate) fn munmap(&mut self, start: u64, len: u64) -> Result<(), Errno> {
        let task = self.cfg.task_size;
        if start % PAGE_SIZE != 0 || start > task || len > task - start {
            return Err(Errno::Einval);
        }
        let len = page_align(len).ok_or(Errno::Einval)?;
        if len == 0 {
            return Err(Errno::Einval);
        }
        self.munmap_range(start, start + len)
    }

    /// `split_vma()` at `x` of the VMA around it, if one spans it and
    /// `max_map_count` allows (P10's refused `MAP_FIXED`).
    pub(crate) fn split_at(&mut self, x: u64) {
        let Some(v) = self.vma_at(x).filter(|v| v.start < x) else { return };
        if self.map_count() >= self.cfg.max_map_count {
            return;
        }
        self.vma_write_lock(&v);
        self.tree_txn(|c| {
            c.store(v.start..x, v.slice(v.start, x));
            c.store(x..v.end, v.slice(x, v.end));
        });
    }

    /// Unmaps `[start, end)` (page-aligned), splitting VMAs at the edges
    /// (P2), then tears down its pages as the strategy says (mm.rs A3).
    pub(crate) fn munmap_range(&mut self, start: u64, end: u64) -> Result<(), Errno> {
        let hit = self.overlapping(start, end);
        // Dead entries in the range stay: they are unmapped already. A
        // call that maps over them reaps them first (`insert_merged`).
        let Some(first) = hit.first() else { return Ok(()) };
        // vms_gather_munmap_vmas: a hole punched inside one VMA adds one.
        if first.start < start && end < first.end && self.map_count() >= self.cfg.max_map_count {
            return Err(Errno::Enomem);
        }
        for v in &hit {
            self.vma_write_lock(v);
        }
        let last = hit.last().expect("non-empty");
        let (first, last) = (first.clone(), last.clone());
        // mm.rs A5: the remnants and the removal are one change to readers.
        // With no remnant, the removal is one store (an erase of the whole
        // range, or one dead entry over one VMA), seen whole without the
        // seqcount (A5b).
        let one_store = first.start >= start
            && last.end <= end
            && (hit.len() == 1 || self.hw.strategy != crate::Strategy::RcuDead);
        let dead = if one_store {
            self.bury(&hit, start, end)
        } else {
            self.tree_txn(|c| {
                if first.start < start {
                    c.store(first.start..start, first.slice(first.start, start));
                }
                if last.end > end {
                    c.store(end..last.end, last.slice(end, last.end));
                }
                c.bury(&hit, start, end)
            })
        };
        self.unmap_pages(start, end, !dead, &hit);
        self.after_unmap();
        Ok(())
    }
}
