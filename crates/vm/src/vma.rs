//! The VMA: one immutable mapping of an address range.
//!
//! # Owns
//! [`Vma`], [`VmFlags`], [`Backing`], [`FileId`], [`AnonVmaId`].
//!
//! # Invariants
//! - V1. A published `Vma` is never changed. A change (split, merge,
//!   mprotect, mremap) builds new `Vma` values and replaces the old ones in
//!   the tree, which retires them through RCU. A lockless reader therefore
//!   never sees a half-updated `vm_start`/`vm_end`: the anomaly where an
//!   mremap made `/proc/pid/maps` go backwards cannot happen.
//! - V2. `start < end`, both page-aligned (4 KiB), `end <= TASK_SIZE`.
//! - V3. `pgoff` is in pages: the file offset of `start` for file mappings;
//!   for anonymous ones the address `>> 12` at mmap time, kept by mremap
//!   (Linux's convention, which decides merging).
//! - V4. What V1 leaves mutable is run-time state, not the mapping: the
//!   per-VMA lock (`VmaRt`'s `lock_seq` and `readers`, used by the
//!   `vma-lock` strategy), and the `anon_vma` a first anonymous fault gives
//!   a VMA built without one (set once, by compare-and-swap, as Linux's
//!   `anon_vma_prepare` sets `vma->anon_vma` under the page-table lock).
//!   A clone copies the lock sequence and the anon_vma, never the readers:
//!   a VMA a writer builds from a write-locked one is write-locked too, as
//!   in Linux, until the writer releases the mmap lock.
//! - V5. A *dead entry* (strategy `rcu-dead`) is a `Vma` whose `rt.dead`
//!   is set: it reserves a range unmapped less than a grace period ago
//!   (the mm state's queue keeps when: strategy.rs `DeadEntry`). It is
//!   never shown to readers nor returned by lookups of mm calls. The flag
//!   is set before the entry is stored and never changes.
//! - V6. `rt.detached` is set, for good, before a writer replaces or
//!   removes the object (unmap.rs `vma_write_lock`, which strategy.rs S3
//!   makes every writer call first), and so before any page-table change
//!   the writer then makes under a PTL. A clone starts attached. Linux's
//!   `vma->detached` (`vma_mark_detached`).
//! - V7. An anon_vma that `fork` gave a child's VMA is marked (its
//!   [`AnonVmaId::had_parents`]): Linux's `anon_vma_chain` of such a VMA
//!   holds the parent's anon_vma too, and a VMA with a longer chain than
//!   one neither merges with a VMA without an anon_vma nor lends its
//!   anon_vma to a neighbour's first fault (`vma_had_uncowed_parents`,
//!   `reusable_anon_vma`). Splits and moves keep the mark with the id.
//!   (Found by kernel_fork.rs: a new mapping beside a child's copied VMA
//!   stayed apart in the kernel.)
//!
//! # Linux
//! `struct vm_area_struct` (`include/linux/mm_types.h`), the `VM_*` bits of
//! `include/linux/mm.h` with their values, `struct anon_vma` reduced to an
//! identity.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

/// Size of a page.
pub const PAGE_SIZE: u64 = 4096;
/// log2 of [`PAGE_SIZE`].
pub const PAGE_SHIFT: u32 = 12;

bitflags::bitflags! {
    /// `vm_flags`, with Linux's bit values.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct VmFlags: u64 {
        /// `VM_READ`
        const READ = 0x0000_0001;
        /// `VM_WRITE`
        const WRITE = 0x0000_0002;
        /// `VM_EXEC`
        const EXEC = 0x0000_0004;
        /// `VM_SHARED`
        const SHARED = 0x0000_0008;
        /// `VM_MAYREAD`
        const MAYREAD = 0x0000_0010;
        /// `VM_MAYWRITE`
        const MAYWRITE = 0x0000_0020;
        /// `VM_MAYEXEC`
        const MAYEXEC = 0x0000_0040;
        /// `VM_MAYSHARE`
        const MAYSHARE = 0x0000_0080;
        /// `VM_GROWSDOWN`
        const GROWSDOWN = 0x0000_0100;
        /// `VM_PFNMAP`
        const PFNMAP = 0x0000_0400;
        /// `VM_LOCKED`
        const LOCKED = 0x0000_2000;
        /// `VM_IO`
        const IO = 0x0000_4000;
        /// `VM_SEQ_READ`
        const SEQ_READ = 0x0000_8000;
        /// `VM_RAND_READ`
        const RAND_READ = 0x0001_0000;
        /// `VM_DONTCOPY` (`MADV_DONTFORK`)
        const DONTCOPY = 0x0002_0000;
        /// `VM_DONTEXPAND`
        const DONTEXPAND = 0x0004_0000;
        /// `VM_LOCKONFAULT`
        const LOCKONFAULT = 0x0008_0000;
        /// `VM_ACCOUNT`: committed memory is charged for it.
        const ACCOUNT = 0x0010_0000;
        /// `VM_NORESERVE`
        const NORESERVE = 0x0020_0000;
        /// `VM_HUGETLB`
        const HUGETLB = 0x0040_0000;
        /// `VM_SYNC`
        const SYNC = 0x0080_0000;
        /// `VM_WIPEONFORK`
        const WIPEONFORK = 0x0200_0000;
        /// `VM_DONTDUMP`
        const DONTDUMP = 0x0400_0000;
        /// `VM_SOFTDIRTY` (ignored when comparing flags for merging)
        const SOFTDIRTY = 0x0800_0000;
        /// `VM_MIXEDMAP`
        const MIXEDMAP = 0x1000_0000;
        /// `VM_HUGEPAGE` (`MADV_HUGEPAGE`)
        const HUGEPAGE = 0x2000_0000;
        /// `VM_NOHUGEPAGE` (`MADV_NOHUGEPAGE`)
        const NOHUGEPAGE = 0x4000_0000;
        /// `VM_MERGEABLE` (`MADV_MERGEABLE`, KSM)
        const MERGEABLE = 0x8000_0000;
        /// `VM_DROPPABLE` (`MAP_DROPPABLE`, Linux 6.11+; `VM_HIGH_ARCH_4`):
        /// memory the kernel may free under pressure. rcuvm has no
        /// pressure, so only its flags and refusals are modelled.
        const DROPPABLE = 1 << 36;
    }
}

impl VmFlags {
    /// `calc_vm_prot_bits()`: the access bits for `PROT_*` (same values).
    pub fn from_prot(prot: crate::uapi::Prot) -> VmFlags {
        VmFlags::from_bits_truncate(u64::from(prot.bits()) & 0x7)
    }
}

/// A file's identity as `/proc/pid/maps` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FileId {
    /// Device major number.
    pub dev_major: u32,
    /// Device minor number.
    pub dev_minor: u32,
    /// Inode number.
    pub inode: u64,
    /// The path, as `d_path` prints it (may end in ` (deleted)`).
    pub path: Arc<str>,
}

/// What a VMA maps.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Backing {
    /// Anonymous memory.
    Anon,
    /// A file, from page `pgoff` of the VMA (V3).
    File(FileId),
}

/// The identity of an `anon_vma`: anonymous pages of VMAs that share one may
/// move between them, so only VMAs with the same (or no) `anon_vma` merge.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AnonVmaId(pub u64);

/// One mapping: `[start, end)` with its flags, backing and name (V1–V3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vma {
    /// First address (`vm_start`).
    pub start: u64,
    /// One past the last address (`vm_end`).
    pub end: u64,
    /// `vm_flags`.
    pub flags: VmFlags,
    /// Offset in pages (V3).
    pub pgoff: u64,
    /// Anonymous or file-backed.
    pub backing: Backing,
    /// Set when the first anonymous page is faulted in (or inherited). In
    /// a VMA in the tree, a fault sets it in place instead (V4: read it
    /// with [`Vma::anon`]); snapshots (`AddressSpace::query`, `vmas`) show
    /// either here.
    pub anon_vma: Option<AnonVmaId>,
    /// `[heap]`, `[stack]`, `[vdso]`, `[anon:name]`…: what maps prints for a
    /// VMA without a file (and for special mappings).
    pub name: Option<Arc<str>>,
    /// Run-time state (V4, V5).
    pub(crate) rt: VmaRt,
}

/// Run-time state of a VMA object (V4, V5).
#[derive(Default)]
pub(crate) struct VmaRt {
    /// `vm_lock_seq`: write-locked while equal to the mm's `mm_lock_seq`.
    pub(crate) lock_seq: AtomicU64,
    /// Read holders of the per-VMA lock.
    pub(crate) readers: AtomicU32,
    /// The anon_vma given by a fault (0: none), when `Vma::anon_vma` is `None`.
    pub(crate) anon: AtomicU64,
    /// Set on a dead entry (V5).
    pub(crate) dead: bool,
    /// Replaced or removed, or about to be (V6).
    pub(crate) detached: AtomicBool,
    /// `rcu-refcount`: the tables its munmap unhooked, freed when the last
    /// reference to this VMA object goes (strategy.rs S5).
    pub(crate) on_last_put: std::sync::OnceLock<Arc<crate::unmap::TablesOnPut>>,
}

impl Clone for VmaRt {
    fn clone(&self) -> Self {
        VmaRt {
            lock_seq: AtomicU64::new(self.lock_seq.load(Ordering::SeqCst)),
            readers: AtomicU32::new(0),
            anon: AtomicU64::new(self.anon.load(Ordering::Acquire)),
            dead: self.dead,
            detached: AtomicBool::new(false),
            on_last_put: std::sync::OnceLock::new(),
        }
    }
}

impl PartialEq for VmaRt {
    fn eq(&self, o: &Self) -> bool {
        self.anon.load(Ordering::Relaxed) == o.anon.load(Ordering::Relaxed) && self.dead == o.dead
    }
}
impl Eq for VmaRt {}

impl fmt::Debug for VmaRt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VmaRt")
            .field("lock_seq", &self.lock_seq.load(Ordering::Relaxed))
            .field("dead", &self.dead)
            .finish_non_exhaustive()
    }
}

/// Source of anon_vma identities: only equality matters, so one counter
/// for every address space keeps them distinct.
static NEXT_ANON_VMA: AtomicU64 = AtomicU64::new(1);

/// The bit of an [`AnonVmaId`] made by `fork` (V7).
const FORKED: u64 = 1 << 63;

impl AnonVmaId {
    /// A new identity, distinct from every other (`anon_vma_alloc`).
    pub(crate) fn fresh() -> AnonVmaId {
        AnonVmaId(NEXT_ANON_VMA.fetch_add(1, Ordering::Relaxed))
    }

    /// A new identity for a VMA that `fork` copied (`anon_vma_fork`): its
    /// chain also holds the parent's (V7).
    pub(crate) fn forked() -> AnonVmaId {
        AnonVmaId(Self::fresh().0 | FORKED)
    }

    /// Whether VMAs with this anon_vma have an `anon_vma_chain` longer
    /// than one: made by `fork` (V7, Linux's `vma_had_uncowed_parents`).
    pub fn had_parents(self) -> bool {
        self.0 & FORKED != 0
    }
}

/// `is_mergeable_anon_vma()`: two VMAs may merge if they share an
/// anon_vma, or if at most one has one and its chain is a single
/// anon_vma (V7).
pub(crate) fn anon_vmas_mergeable(a: Option<AnonVmaId>, b: Option<AnonVmaId>) -> bool {
    match (a, b) {
        (Some(x), Some(y)) => x == y,
        (Some(x), None) | (None, Some(x)) => !x.had_parents(),
        (None, None) => true,
    }
}

/// `anon_vma_compatible()`: `b` directly above `a`, same file, same flags
/// but the access bits, contiguous `pgoff`, so `b` may share `a`'s
/// anon_vma (`find_mergeable_anon_vma`).
pub(crate) fn anon_vma_compatible(a: &Vma, b: &Vma) -> bool {
    let access = VmFlags::READ | VmFlags::WRITE | VmFlags::EXEC | VmFlags::SOFTDIRTY;
    a.end == b.start
        && a.backing == b.backing
        && (a.flags ^ b.flags).difference(access).is_empty()
        && b.pgoff == a.pgoff + ((b.start - a.start) >> PAGE_SHIFT)
}

impl Vma {
    /// A VMA (V1–V3) with no run-time state yet.
    pub fn new(
        start: u64,
        end: u64,
        flags: VmFlags,
        pgoff: u64,
        backing: Backing,
        anon_vma: Option<AnonVmaId>,
        name: Option<Arc<str>>,
    ) -> Vma {
        Vma { start, end, flags, pgoff, backing, anon_vma, name, rt: VmaRt::default() }
    }

    /// The anon_vma: the one it was built with, or the one a fault gave it
    /// since (V4).
    pub fn anon(&self) -> Option<AnonVmaId> {
        self.anon_vma.or_else(|| match self.rt.anon.load(Ordering::Acquire) {
            0 => None,
            id => Some(AnonVmaId(id)),
        })
    }

    /// Sets the anon_vma, forgetting one a fault gave (V4): for a VMA
    /// being built, not yet published.
    pub(crate) fn set_anon(&mut self, a: Option<AnonVmaId>) {
        self.anon_vma = a;
        self.rt.anon = AtomicU64::new(0);
    }

    /// Whether this is a dead entry (V5).
    pub(crate) fn is_dead(&self) -> bool {
        self.rt.dead
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    /// Never true for a valid VMA (V2); for clippy's `len` convention.
    pub fn is_empty(&self) -> bool {
        self.start >= self.end
    }

    /// The page offset of `addr` inside this VMA (V3).
    pub fn pgoff_at(&self, addr: u64) -> u64 {
        self.pgoff + ((addr - self.start) >> PAGE_SHIFT)
    }

    /// This VMA cut down to `[start, end)` (inside it), with `pgoff` moved
    /// along: what a split leaves on each side.
    pub fn slice(&self, start: u64, end: u64) -> Vma {
        debug_assert!(self.start <= start && start < end && end <= self.end);
        Vma { start, end, pgoff: self.pgoff_at(start), ..self.clone() }
    }
}

impl fmt::Display for Vma {
    /// The VMA's `/proc/pid/maps` line, without the newline.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::maps::render_line(self))
    }
}
